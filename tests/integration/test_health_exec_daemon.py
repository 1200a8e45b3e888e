"""`kind = "exec"` health checks in the running daemon: a backend whose script fails goes DOWN
with the script's exit status and first line (log, `check.last_reason`), comes back UP when
the script passes again, and the daemon's shutdown kills a script that is still running."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .procs import child_env, free_port, l4lb_cmd, stop_process

pytestmark = pytest.mark.timeout(60)

# passes while the flag file of the checked port exists (the environment names the port)
CHECK = """#!/bin/sh
[ -e "{flags}/ok-$L4LB_BACKEND_PORT" ] && exit 0
echo "db unreachable ($L4LB_SERVICE $L4LB_BACKEND $L4LB_PROTOCOL)"
exit 2
"""
# records its pid, then outlives its timeout unless killed
SLOW = """#!/bin/sh
echo $$ >> {pids}
exec sleep 60
"""


def backends(cfg: Path, service: str) -> dict[str, dict[str, Any]]:
    res = subprocess.run(l4lb_cmd("backends", service, "--json", "-c", str(cfg)),
                         capture_output=True, text=True, env=child_env(), timeout=30)
    assert res.returncode == 0, res.stderr
    return {b["address"]: b for b in json.loads(res.stdout)}


def wait_state(cfg: Path, address: str, want: str, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while backends(cfg, "web")[address]["state"] != want:
        assert time.monotonic() < deadline, f"{address} not {want}: {backends(cfg, 'web')}"
        time.sleep(0.05)


def dead(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return text.rsplit(")", 1)[1].split()[0] == "Z"


def test_exec_check_down_with_the_reason_up_again_and_killed_at_shutdown(
        tmp_path: Path) -> None:
    flags = tmp_path / "flags"
    flags.mkdir()
    check = tmp_path / "check-web"
    check.write_text(CHECK.format(flags=flags))
    check.chmod(0o755)
    pids = tmp_path / "slow.pids"
    slow = tmp_path / "slow"
    slow.write_text(SLOW.format(pids=pids))
    slow.chmod(0o755)
    b1, b2 = free_port(), free_port()
    (flags / f"ok-{b1}").touch()
    (flags / f"ok-{b2}").touch()
    cfg = tmp_path / "exec.toml"
    cfg.write_text(f"""\
[global]
control_socket = "{tmp_path}/ctl.sock"

[[services]]
name = "web"
listen = ["127.0.0.1:{free_port()}"]
backends = [{{ address = "127.0.0.1:{b1}" }}, {{ address = "127.0.0.1:{b2}" }}]

  [services.health]
  kind = "exec"
  command = ["{check}", "--deep"]
  interval = "100ms"
  timeout = "100ms"
  rise = 2
  fall = 3
  jitter = 0.0

[[services]]
name = "slow"
listen = ["127.0.0.1:{free_port()}"]
backends = [{{ address = "127.0.0.1:{free_port()}" }}]
health = {{ kind = "exec", command = ["{slow}"], interval = "4s", timeout = "4s" }}
""")
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    a2 = f"127.0.0.1:{b2}"
    try:
        deadline = time.monotonic() + 15
        while not (tmp_path / "ctl.sock").exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while not all(b["check"]["last_result"] == "passed"
                      for b in backends(cfg, "web").values()):
            assert time.monotonic() < deadline, backends(cfg, "web")
            time.sleep(0.05)
        (flags / f"ok-{b2}").unlink()
        wait_state(cfg, a2, "down")
        check_view = backends(cfg, "web")[a2]["check"]
        reason = f"exit status 2: db unreachable (web {a2} tcp)"
        assert (check_view["change_reason"], check_view["last_reason"]) == \
            (f"{reason} (3/3 probes failed)", reason)
        assert backends(cfg, "web")[f"127.0.0.1:{b1}"]["state"] == "up"
        (flags / f"ok-{b2}").touch()
        wait_state(cfg, a2, "up")
        assert backends(cfg, "web")[a2]["check"]["change_reason"] == \
            "exit status 0 (2/2 probes passed)"
        deadline = time.monotonic() + 6  # the slow service's first probe: within 4 s
        while not pids.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        slow_pids = [int(p) for p in pids.read_text().split()]
        assert not dead(slow_pids[-1])  # running (the earlier ones timed out)
        assert stop_process(proc, signal.SIGTERM) == 0
        deadline = time.monotonic() + 3
        while not all(dead(pid) for pid in slow_pids):  # killed at shutdown, not left behind
            assert time.monotonic() < deadline, f"slow scripts {slow_pids} outlived the daemon"
            time.sleep(0.02)
    finally:
        stop_process(proc, signal.SIGKILL)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert f"backend web/{a2} is DOWN: exit status 2: db unreachable (web {a2} tcp) " \
           "(3/3 probes failed)" in err, err
    assert f"backend web/{a2} is UP: exit status 0 (2/2 probes passed)" in err, err
