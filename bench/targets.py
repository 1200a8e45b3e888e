"""Start and stop one target of the comparison: direct, l4lb, HAProxy or nginx.

A target is what sits between the load generator and the backends. `direct` is nothing (the
load goes straight to the backends); the others are one balancer process started with the
configuration from bench/peers.py, pinned to the balancer CPU when asked, and stopped by PID.
For l4lb the harness also checks, once per invocation, that the compiled data plane is built and
whether UDP services are accepted yet, and after each start that the compiled module is really
mapped into the process: an l4lb figure is only ever one of the compiled data plane.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench import peers, plan, procfs, procs

NO_EXT = "L4LB_NO_EXTENSIONS"


@dataclass(frozen=True)
class L4lbSetup:
    """How to run l4lb here, and what it can do."""

    argv: tuple[str, ...]  # command prefix, e.g. (".venv/bin/l4lb",) or (python, "-m", "l4lb")
    python: str  # the interpreter l4lb runs on
    cwd: str  # the repository root
    compiled: bool  # the compiled data plane imports
    compiled_note: str  # why not, when it does not
    udp: bool  # `l4lb check` accepts protocol = "udp"
    udp_note: str  # what it said when it does not


def _env(reference: bool, repo: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(NO_EXT, None)
    if reference:
        env[NO_EXT] = "1"
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def l4lb_command(repo: Path) -> tuple[tuple[str, ...], str]:
    """(argv prefix, python): the project's .venv when present, else this python -m l4lb."""
    venv = repo / ".venv" / "bin"
    if (venv / "l4lb").exists() and (venv / "python").exists():
        return (str(venv / "l4lb"),), str(venv / "python")
    return (sys.executable, "-m", "l4lb"), sys.executable


def detect_l4lb(repo: Path, workdir: Path, reference: bool = False) -> L4lbSetup:
    """Check the compiled data plane and UDP support, without starting a balancer."""
    argv, python = l4lb_command(repo)
    env = _env(reference, str(repo))
    probe = subprocess.run(
        [python, "-c", "from l4lb._dataplane import Dataplane"], capture_output=True,
        text=True, cwd=repo, env=_env(False, str(repo)), timeout=60, check=False)
    compiled = probe.returncode == 0
    note = "" if compiled else (probe.stderr.strip().splitlines() or ["import failed"])[-1]
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "l4lb-udp-probe.toml"
    cfg.write_text(peers.l4lb_udp_probe_config(str(workdir / "probe.sock"), 1, 2))
    check = subprocess.run([*argv, "check", "-c", str(cfg)], capture_output=True, text=True,
                           cwd=repo, env=env, timeout=60, check=False)
    udp = check.returncode == 0
    said = " ".join((check.stderr or check.stdout).split())
    m = re.search(r"error: (.*?)(?: \d+ errors?)?$", said)
    udp_note = "" if udp else "not supported yet (l4lb check: " + (m.group(1) if m else said)[
        :200] + ")"
    return L4lbSetup(argv=argv, python=python, cwd=str(repo), compiled=compiled,
                     compiled_note=note, udp=udp, udp_note=udp_note)


@dataclass
class Running:
    """A started target."""

    target: str  # its name
    front: peers.Ports  # where the load generators connect
    daemon: procs.Daemon | None  # the balancer (None for direct)
    udp: bool  # whether front.udp is served
    udp_note: str = ""  # why not
    info: dict[str, str] = field(default_factory=dict)  # e.g. {"dataplane": "compiled"}

    def pids(self) -> list[int]:
        """The balancer's live PID tree (empty for direct)."""
        return self.daemon.tree() if self.daemon is not None else []


def start(target: str, front: peers.Ports, back: peers.Ports, rundir: Path, cpu: int | None,
          l4lb: L4lbSetup | None) -> Running:
    """Start a target and wait until it listens; RuntimeError (with its log) when it cannot."""
    if target == "direct":
        return Running(target, back, None, udp=True)
    rundir.mkdir(parents=True, exist_ok=True)
    if target.startswith("haproxy"):
        conf = rundir / f"{target}.cfg"
        conf.write_text(peers.haproxy_config(front, back,
                                             "auto" if target == "haproxy-auto" else "forced",
                                             procs.nofile_limit()))
        d = procs.start(target, peers.haproxy_argv(str(conf)), rundir / f"{target}.log", cpu=cpu)
        run = Running(target, front, d, udp=False, udp_note="HAProxy has no UDP proxying")
        _ready(run, front, udp=False)
        return run
    if target == "nginx":
        prefix = rundir / "nginx-stream"
        if prefix.exists():
            shutil.rmtree(prefix)
        prefix.mkdir(parents=True)
        conf = prefix / "nginx.conf"
        conf.write_text(peers.nginx_stream_config(front, back, str(prefix), stream_module(),
                                                  nofile=procs.nofile_limit()))
        d = procs.start("nginx", peers.nginx_argv(str(prefix), str(conf)),
                        rundir / "nginx.log", cpu=cpu)
        run = Running(target, front, d, udp=True)
        _ready(run, front, udp=True)
        return run
    if target in (*plan.L4LB_VARIANTS, "l4lb-ref"):
        if l4lb is None:
            raise RuntimeError("l4lb was not detected")
        reference = target == "l4lb-ref"
        if not reference and not l4lb.compiled:
            raise RuntimeError(f"compiled data plane not available: {l4lb.compiled_note}")
        conf = rundir / f"{target}.toml"
        conf.write_text(peers.l4lb_config(
            front, back, str(rundir / f"{target}.sock"), udp=l4lb.udp,
            bulk_congestion_control=plan.CUBIC if target == "l4lb-cubic" else None,
            http_fast_open=target == "l4lb-tfo", udp_gro=target != "l4lb-nogro"))
        d = procs.start(target, [*l4lb.argv, "run", "-c", str(conf)], rundir / f"{target}.log",
                        cpu=cpu, env=_env(reference, l4lb.cwd), cwd=l4lb.cwd)
        run = Running(target, front, d, udp=l4lb.udp, udp_note=l4lb.udp_note)
        _ready(run, front, udp=l4lb.udp, timeout=30.0)
        mapped = procfs.maps_mention(d.pid, "l4lb/_dataplane")
        if reference:
            run.info["dataplane"] = "pure-Python reference (L4LB_NO_EXTENSIONS=1)"
        elif mapped:
            run.info["dataplane"] = "compiled"
        else:
            stop(run)
            raise RuntimeError("l4lb started but l4lb/_dataplane is not mapped into it: "
                               "refusing to report its figures as the compiled data plane's")
        return run
    raise ValueError(f"unknown target {target!r}")


def _ready(run: Running, front: peers.Ports, udp: bool, timeout: float = 10.0) -> None:
    assert run.daemon is not None
    try:
        procs.wait_ready(run.daemon, tcp_ports=front.tcp(),
                         udp_ports=[front.udp] if udp else [], timeout=timeout)
    except RuntimeError:
        stop(run)
        raise


def stop(run: Running) -> None:
    """Stop the balancer by PID (SIGINT for l4lb: stop now; SIGTERM for the others)."""
    if run.daemon is None:
        return
    sig = signal.SIGINT if run.target.startswith("l4lb") else signal.SIGTERM
    procs.stop(run.daemon, sig=sig)


def stream_module() -> str | None:
    """The path of nginx's dynamic stream module when nginx was built with it as a module."""
    try:
        res = subprocess.run(["nginx", "-V"], capture_output=True, text=True, timeout=10,
                             check=False)
    except FileNotFoundError:
        return None
    if "--with-stream=dynamic" not in res.stderr + res.stdout:
        return None
    for path in ("/usr/lib/nginx/modules/ngx_stream_module.so",
                 "/usr/lib64/nginx/modules/ngx_stream_module.so"):
        if Path(path).exists():
            return path
    return None
