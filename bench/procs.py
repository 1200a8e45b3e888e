"""Start, watch and stop the benchmark's own processes, each pinned with taskset when asked.

Every process the harness starts goes through this module and is recorded in a registry, so that
an interrupted run still ends exactly the processes it started, by PID (never by name). Short
commands (load generators) run bounded in time and are reaped with wait4(2), whose rusage gives
their own CPU time; `taskset -c N prog` execs prog in place, so the PID and rusage are prog's.
Children get a raised RLIMIT_NOFILE (9,000 idle connections through a proxy take 18,000 fds).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import resource
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import procfs

NOFILE = 65536
POLL = 0.01


def pinned(argv: Sequence[str], cpu: int | None) -> list[str]:
    """argv prefixed with `taskset -c cpu` when cpu is not None."""
    return ["taskset", "-c", str(cpu), *argv] if cpu is not None else list(argv)


def nofile_limit() -> int:
    """The fd limit children get: NOFILE, or the hard limit when it cannot be raised (as in a
    container without CAP_SYS_RESOURCE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= NOFILE:
        return NOFILE
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, NOFILE))
    except (ValueError, OSError):
        return int(hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))  # only probed: put it back
    return NOFILE


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Daemon:
    """A long-running process of the benchmark (backend or balancer)."""

    name: str  # short label for logs and reports
    argv: list[str]  # what was executed (with the taskset prefix)
    popen: subprocess.Popen[bytes]  # the process
    log: Path  # its stdout+stderr

    @property
    def pid(self) -> int:
        """The PID (the program itself: taskset execs it)."""
        return self.popen.pid

    def alive(self) -> bool:
        """True while it has not exited."""
        return self.popen.poll() is None

    def tree(self) -> list[int]:
        """Its PID and its live descendants (nginx workers)."""
        return procfs.tree(self.pid) if self.alive() else []

    def log_tail(self, n: int = 10) -> str:
        """The last n lines of its log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class Registry:
    """Every Daemon started and not yet stopped, so a failure or ^C still ends them."""

    live: dict[int, Daemon] = field(default_factory=dict)  # pid -> daemon

    def stop_all(self) -> None:
        """Stop every live daemon, newest first."""
        for pid in sorted(self.live, reverse=True):
            stop(self.live[pid])


REGISTRY = Registry()
atexit.register(REGISTRY.stop_all)


def start(name: str, argv: Sequence[str], log: Path, cpu: int | None = None,
          env: Mapping[str, str] | None = None, cwd: str | None = None,
          stdin_pipe: bool = False) -> Daemon:
    """Start a long-running process, output to log; it is registered until stop()."""
    full = pinned(argv, cpu)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            full, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            env=dict(env) if env is not None else None, cwd=cwd,
            preexec_fn=_raise_nofile, start_new_session=True,
        )
    daemon = Daemon(name=name, argv=full, popen=popen, log=log)
    REGISTRY.live[popen.pid] = daemon
    return daemon


def stop(daemon: Daemon, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int | None:
    """Signal the daemon by PID, wait up to timeout, then SIGKILL it; returns its exit code."""
    REGISTRY.live.pop(daemon.pid, None)
    if daemon.popen.stdin is not None:
        with contextlib.suppress(OSError):
            daemon.popen.stdin.close()
    if daemon.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon.pid, sig)
        try:
            daemon.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon.pid, signal.SIGKILL)
            daemon.popen.wait(5.0)
    return daemon.popen.returncode


def wait_ready(daemon: Daemon, tcp_ports: Sequence[int] = (), udp_ports: Sequence[int] = (),
               timeout: float = 10.0) -> None:
    """Wait until every port is bound (TCP: LISTEN), read from /proc/net without connecting.

    Raises RuntimeError with the tail of the daemon's log when it exits or the time runs out.
    """
    deadline = time.monotonic() + timeout
    while True:
        if not daemon.alive():
            raise RuntimeError(f"{daemon.name} exited with {daemon.popen.returncode}:\n"
                               f"{daemon.log_tail()}")
        if (all(procfs.listening(p, "tcp") for p in tcp_ports)
                and all(procfs.listening(p, "udp") for p in udp_ports)):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{daemon.name} not listening on {list(tcp_ports)} tcp / "
                               f"{list(udp_ports)} udp after {timeout}s:\n{daemon.log_tail()}")
        time.sleep(POLL)


@dataclass(frozen=True)
class Finished:
    """What a bounded command left behind."""

    argv: list[str]  # what was executed
    returncode: int  # exit code; -N when killed by signal N
    stdout: str  # its standard output
    stderr: str  # its standard error
    wall: float  # seconds from start to exit
    cpu: float  # its user + system CPU seconds (wait4 rusage)
    timed_out: bool  # True when it was killed at the deadline


def run_bounded(argv: Sequence[str], timeout: float, cpu: int | None = None,
                workdir: Path | None = None, cwd: str | None = None,
                env: Mapping[str, str] | None = None) -> Finished:
    """Run a command to completion, killed by PID at the deadline; reaped with wait4."""
    full = pinned(argv, cpu)
    workdir = workdir or Path("/tmp")
    workdir.mkdir(parents=True, exist_ok=True)
    out_path = workdir / f"cmd-{os.getpid()}-{time.monotonic_ns()}.out"
    err_path = out_path.with_suffix(".err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.monotonic()
        popen = subprocess.Popen(full, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                 cwd=cwd, env=dict(env) if env is not None else None,
                                 preexec_fn=_raise_nofile, start_new_session=True)
    timed_out = False
    status = 0
    usage: resource.struct_rusage | None = None
    while True:
        pid, status, usage = os.wait4(popen.pid, os.WNOHANG)
        if pid == popen.pid:
            break
        if time.monotonic() - t0 > timeout and not timed_out:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(popen.pid, signal.SIGKILL)
        time.sleep(POLL)
    wall = time.monotonic() - t0
    popen.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    out_path.unlink(missing_ok=True)
    err_path.unlink(missing_ok=True)
    cpu_s = (usage.ru_utime + usage.ru_stime) if usage is not None else 0.0
    return Finished(argv=full, returncode=popen.returncode, stdout=stdout, stderr=stderr,
                    wall=wall, cpu=cpu_s, timed_out=timed_out)
