"""Run kind = "exec" health probes: one command per probe, whose exit status is the verdict.

This is keepalived's MISC_CHECK. A probe is

    Popen(argv, new session, stdin /dev/null, stdout+stderr -> one pipe, cwd /, fixed env,
          [user, its primary group, no supplementary groups])
    -> pidfd_open(pid) and the pipe's read end, both watched by the asyncio loop (add_reader)
    -> pipe readable: read, keep the first OUTPUT_KEEP bytes, discard the rest
    -> pidfd readable (the command exited; a zombie until reaped): SIGKILL its process group
       (whatever it left running), reap it, read what is left in the pipe, close -> verdict
    -> or the timeout: SIGKILL the process group, reap -> "timed out after 2s (killed)"

No thread, no asyncio child watcher and no coroutine: two fds on the loop and one timer per
probe. The group is killed while its leader is still an unreaped zombie, so the group id cannot
have been reused by another process. The verdict never waits for the end of the output: a
grandchild that keeps the pipe open (`sleep 60 &`) is killed with the group when the command
exits, and cannot hold the probe past its timeout either.

Verdicts: exit status 0 passes; N != 0 fails with "exit status N: <first non-empty line of
the output>" (at most REASON_CHARS characters, unprintable ones as "?"), "killed by signal
SIGSEGV", "timed out after 2s (killed)", and "cannot run /path: <strerror>" when the program
cannot be started (it vanished since the configuration was loaded, EACCES, ENOEXEC, the user
cannot be switched to): a failure, as in keepalived. Only a shortage of this host (no fd, no
memory, no process slot: EMFILE, ENFILE, ENOMEM, EAGAIN) is inconclusive.

Cost: Popen forks (vfork where it can) and waits for the exec on the loop, which takes a
fraction of a millisecond of the loop's time per probe; see docs/health.md's measured cost.

`cancel()` (a reload that drops the backend) kills the group at once and reaps it when the
pidfd says it exited, without a result. `close()` (the daemon's shutdown) kills every group
and reaps each leader, waiting at most REAP_WAIT seconds in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from l4lb.health.probe import ProbeResult
    from l4lb.health.settings import HealthSettings

log = logging.getLogger("l4lb.health")

T = TypeVar("T")

EXEC_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # the command's PATH (nothing else is inherited)
OUTPUT_KEEP = 4096  # bytes of output kept for the reason; the rest is read and discarded
REASON_CHARS = 120  # characters of the output's first line in a reason
REAP_WAIT = 1.0  # seconds close() waits in all for killed commands to be reaped
REAP_GRACE = 1.0  # seconds after a timeout's kill before the verdict goes out unreaped
_READ_CHUNK = 65536  # bytes per read()
_READS_PER_CALLBACK = 16  # reads per loop callback (1 MiB), so a chatty command cannot hog it
# Local shortages: the command was not started for want of a resource of this host.
_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN})


@dataclass(frozen=True)
class ExecCommand:
    """What one backend's exec probes run: the argv, the whole environment, the user."""

    argv: tuple[str, ...]  # argv[0] an absolute path
    env: tuple[tuple[str, str], ...]  # the command's entire environment
    uid: int | None = None  # run as this user and group (no supplementary groups); None: ours
    gid: int | None = None
    dynamic: bool = False  # misc_dynamic: exit status 2..255 passes and sets a weight

    @classmethod
    def build(cls, settings: HealthSettings, host: str, port: int,
              probe_port: int) -> ExecCommand:
        """The command for backend host:port (probed at probe_port). ValueError when
        command_user is no user of this host (any more)."""
        uid = gid = None
        if settings.command_user is not None:
            try:
                entry = pwd.getpwnam(settings.command_user)
            except KeyError:
                raise ValueError(f"health.command_user: no user "
                                 f"{settings.command_user!r} on this host") from None
            uid, gid = entry.pw_uid, entry.pw_gid
        name = f"[{host}]" if ":" in host else host
        env = (("PATH", EXEC_PATH), ("L4LB_SERVICE", settings.service),
               ("L4LB_BACKEND", f"{name}:{port}"), ("L4LB_BACKEND_ADDRESS", host),
               ("L4LB_BACKEND_PORT", str(probe_port)), ("L4LB_PROTOCOL", settings.protocol))
        return cls(argv=settings.command, env=env, uid=uid, gid=gid, dynamic=settings.dynamic)


def first_line(output: bytes) -> str:
    """The first non-empty line of a command's output, stripped, printable, at most
    REASON_CHARS characters ("" when there is none)."""
    for raw in output.splitlines():
        line = raw.decode("utf-8", "replace").strip()
        if line:
            line = "".join(c if c.isprintable() else "?" for c in line)
            return line[:REASON_CHARS]
    return ""


def exit_verdict(returncode: int, output: bytes) -> tuple[bool, str]:
    """(ok, reason) for a command that ended with Popen's `returncode` (-N: signal N)."""
    if returncode == 0:
        return True, "exit status 0"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return False, f"killed by signal {name}"
    line = first_line(output)
    return False, f"exit status {returncode}: {line}" if line else f"exit status {returncode}"


def dynamic_verdict(returncode: int, output: bytes,
                    dynamic: bool) -> tuple[bool, str, int | None]:
    """(ok, reason, weight): exit_verdict(), and with `dynamic` (keepalived's misc_dynamic)
    an exit status 2..255 passes and sets the weight status - 2 (0..253). Exit status 0 passes
    and sets no weight (a weight set before stays, as in keepalived); 1 fails."""
    if dynamic and 2 <= returncode <= 255:
        weight = returncode - 2
        return True, f"exit status {returncode} (weight {weight})", weight
    ok, reason = exit_verdict(returncode, output)
    return ok, reason, None


def _cancelled(token: Any, result: ProbeResult) -> None:
    """The callback of a probe whose result must not be delivered."""


class ExecProbe:
    """One command in flight (the handle ExecProbeEngine.start returns)."""

    __slots__ = ("callback", "command", "discarded", "engine", "grace", "output", "pidfd",
                 "proc", "started", "timed_out", "timeout", "timer", "token")

    def __init__(self, engine: ExecProbeEngine, callback: Callable[[Any, ProbeResult], None],
                 token: Any, timeout: float) -> None:
        self.engine = engine
        self.callback = callback  # called once with (token, result) unless cancelled
        self.token = token
        self.timeout = timeout  # seconds
        self.started = time.monotonic()
        self.proc: subprocess.Popen[bytes] | None = None  # None once reaped (or never started)
        self.pidfd = -1  # watched by the loop until the command is reaped
        self.output = bytearray()  # the first OUTPUT_KEEP bytes of the output
        self.discarded = 0  # bytes read beyond those
        self.timer: asyncio.TimerHandle | None = None  # the timeout, then the reap grace
        self.grace = False  # the timer is the reap grace, not the timeout
        self.timed_out = False  # the timeout killed the group
        self.command: ExecCommand | None = None  # what runs (None: nothing was started)

    @property
    def pid(self) -> int | None:
        """The command's process id (its process group's too) until it is reaped."""
        return self.proc.pid if self.proc is not None else None

    def cancel(self) -> None:
        """Abandon the probe: kill the command's process group; no callback. It is reaped
        once it has exited."""
        self.callback = _cancelled
        self.engine._kill(self)


class ExecProbeEngine:
    """Runs kind = "exec" probes on one asyncio loop (ProbeEngine hands them here)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._procs: dict[int, ExecProbe] = {}  # pid -> probe, until reaped
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Probes whose result is still to come."""
        return sum(1 for p in self._procs.values() if p.callback is not _cancelled)

    @property
    def running(self) -> int:
        """Commands started and not reaped yet (cancelled ones included)."""
        return len(self._procs)

    def start(self, command: ExecCommand, timeout: float,
              callback: Callable[[T, ProbeResult], None], token: T) -> ExecProbe:
        """Run `command` once; `callback(token, result)` runs later on the loop, exactly once
        unless the returned handle is cancelled."""
        if self._closed:
            raise RuntimeError("exec probe engine is closed")
        probe = ExecProbe(self, callback, token, timeout)
        stuck = next((p for p in self._procs.values() if p.command == command), None)
        if stuck is not None and stuck.pid is not None:
            # the same backend's previous command survived its SIGKILL (uninterruptible
            # sleep, e.g. on a hung NFS mount): no second one, or they would pile up
            self._loop.call_soon(self._deliver, probe, (
                False, f"previous command (pid {stuck.pid}) still not reaped after SIGKILL",
                True))
            return probe
        probe.command = command
        uid = command.uid
        try:
            proc = subprocess.Popen(
                command.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, cwd="/", env=dict(command.env),
                start_new_session=True, close_fds=True, bufsize=0, user=uid, group=command.gid,
                extra_groups=[] if uid is not None else None)
        except OSError as exc:
            err = exc.errno or 0
            text = (exc.strerror or str(exc)).lower()
            local = err in _LOCAL_ERRNOS
            verb = "cannot start" if local else "cannot run"
            self._loop.call_soon(self._deliver, probe,
                                 (False, f"{verb} {command.argv[0]}: {text}", not local))
            return probe
        probe.proc = proc
        self._procs[proc.pid] = probe
        out = proc.stdout
        assert out is not None
        try:
            probe.pidfd = os.pidfd_open(proc.pid)
            os.set_blocking(out.fileno(), False)
            self._loop.add_reader(out.fileno(), self._on_output, probe)
            self._loop.add_reader(probe.pidfd, self._on_exit, probe)
        except OSError as exc:  # no fd left for the pidfd: give the command up
            self._killpg(proc.pid)
            proc.wait()  # SIGKILL makes this short
            self._reaped(probe)
            text = (exc.strerror or str(exc)).lower()
            self._loop.call_soon(self._deliver, probe,
                                 (False, f"cannot watch {command.argv[0]}: {text}", False))
            return probe
        probe.timer = self._loop.call_at(probe.started + timeout, self._on_timeout, probe)
        return probe

    # -- output --------------------------------------------------------------------------

    def _on_output(self, probe: ExecProbe) -> None:
        self._read(probe, _READS_PER_CALLBACK)

    def _read(self, probe: ExecProbe, reads: int) -> None:
        """Read up to `reads` chunks of output: keep the first OUTPUT_KEEP bytes, count the
        rest; at the end of the output stop watching the pipe."""
        proc = probe.proc
        out = proc.stdout if proc is not None else None
        if out is None or out.closed:
            return
        fd = out.fileno()
        for _ in range(reads):
            try:
                data = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_output(probe)
                return
            room = OUTPUT_KEEP - len(probe.output)
            if room > 0:
                probe.output += data[:room]
            probe.discarded += max(0, len(data) - max(room, 0))

    def _close_output(self, probe: ExecProbe) -> None:
        proc = probe.proc
        out = proc.stdout if proc is not None else None
        if out is not None and not out.closed:
            self._loop.remove_reader(out.fileno())
            out.close()

    # -- the end -------------------------------------------------------------------------

    def _on_exit(self, probe: ExecProbe) -> None:
        """The pidfd is readable: the command exited (it is a zombie until reaped)."""
        proc = probe.proc
        if proc is None:
            return
        self._killpg(proc.pid)  # what it left running in its group
        if proc.poll() is None:  # cannot happen after a readable pidfd; wait for another
            return
        self._read(probe, 64)  # what it wrote before it exited (grandchildren are dead now)
        self._reaped(probe)
        if probe.timed_out:
            self._deliver(probe, (False, f"timed out after {probe.timeout:g}s (killed)", True))
        else:
            ok, reason, weight = dynamic_verdict(proc.returncode, bytes(probe.output),
                                                 probe.command is not None
                                                 and probe.command.dynamic)
            self._deliver(probe, (ok, reason, True), weight)

    def _on_timeout(self, probe: ExecProbe) -> None:
        probe.timer = None
        if probe.grace:  # killed at the timeout, still not reaped: answer anyway
            self._deliver(probe, (False, f"timed out after {probe.timeout:g}s (killed; not "
                                         "reaped yet)", True))
            return
        probe.timed_out = True
        if probe.proc is not None:
            self._killpg(probe.proc.pid)
            probe.grace = True
            probe.timer = self._loop.call_later(REAP_GRACE, self._on_timeout, probe)

    def _kill(self, probe: ExecProbe) -> None:
        """Kill the probe's process group now; the pidfd's event reaps it."""
        if probe.timer is not None:
            probe.timer.cancel()
            probe.timer = None
        proc = probe.proc
        if proc is None:
            return
        self._killpg(proc.pid)
        self._close_output(probe)

    @staticmethod
    def _killpg(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def _reaped(self, probe: ExecProbe) -> None:
        """The command was reaped: release its fds and timer."""
        if probe.timer is not None:
            probe.timer.cancel()
            probe.timer = None
        self._close_output(probe)
        if probe.pidfd >= 0:
            self._loop.remove_reader(probe.pidfd)
            os.close(probe.pidfd)
            probe.pidfd = -1
        proc = probe.proc
        if proc is not None:
            self._procs.pop(proc.pid, None)
            probe.proc = None

    def _deliver(self, probe: ExecProbe, verdict: tuple[bool, str, bool],
                 weight: int | None = None) -> None:
        from l4lb.health.probe import ProbeResult
        callback, token = probe.callback, probe.token
        if callback is _cancelled:
            return
        probe.callback = _cancelled
        ok, reason, conclusive = verdict
        result = ProbeResult(ok, reason, time.monotonic() - probe.started, conclusive, weight)
        try:
            callback(token, result)
        except Exception:  # a broken callback must not stop the other probes
            log.exception("health: exec probe callback failed")

    def close(self) -> None:
        """Kill every command's process group and reap them (waiting at most REAP_WAIT
        seconds in all); no more callbacks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        probes = list(self._procs.values())
        for probe in probes:
            probe.cancel()
        deadline = time.monotonic() + REAP_WAIT
        for probe in probes:
            proc = probe.proc
            if proc is None:
                continue
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
            if proc.returncode is None:
                log.warning("health: exec probe command %s (pid %d) did not die within %gs "
                            "of SIGKILL", proc.args, proc.pid, REAP_WAIT)
            self._reaped(probe)
