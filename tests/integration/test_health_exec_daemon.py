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


DYNAMIC = """#!/bin/sh
exit "$(cat {flags}/status-$L4LB_BACKEND_PORT)"
"""


def test_misc_dynamic_sets_the_weight_in_the_table(tmp_path: Path) -> None:
    """keepalived's misc_dynamic through the daemon: exit 2..255 sets the weight the table
    uses (status - 2), exit 0 keeps it, exit 1 takes the backend DOWN."""
    flags = tmp_path / "flags"
    flags.mkdir()
    check = tmp_path / "check-dyn"
    check.write_text(DYNAMIC.format(flags=flags))
    check.chmod(0o755)
    b1, b2 = free_port(), free_port()
    (flags / f"status-{b1}").write_text("0")
    (flags / f"status-{b2}").write_text("0")
    cfg = tmp_path / "dyn.toml"
    cfg.write_text(f"""\
[global]
control_socket = "{tmp_path}/ctl.sock"

[[services]]
name = "web"
listen = ["127.0.0.1:{free_port()}"]
scheduler = "weighted_round_robin"
backends = [{{ address = "127.0.0.1:{b1}", weight = 10 }},
            {{ address = "127.0.0.1:{b2}", weight = 10 }}]
  [services.health]
  kind = "exec"
  command = ["{check}"]
  dynamic = true
  interval = "100ms"
  timeout = "100ms"
  jitter = 0.0
  fall = 1
  min_healthy = 0.0
""")
    log = tmp_path / "l4lb.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(),
                                stdout=subprocess.DEVNULL, stderr=err)
    a1, a2 = f"127.0.0.1:{b1}", f"127.0.0.1:{b2}"

    def wait_eff(want: dict[str, int]) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + 8
        while True:
            got = backends(cfg, "web") if (tmp_path / "ctl.sock").exists() else {}
            if got and {a: b["effective_weight"] for a, b in got.items()} == want:
                return got
            assert proc.poll() is None and time.monotonic() < deadline, got
            time.sleep(0.05)

    try:
        wait_eff({a1: 10, a2: 10})
        (flags / f"status-{b1}").write_text("27")
        got = wait_eff({a1: 25, a2: 10})
        assert got[a1]["dynamic_weight"] == 25 and got[a1]["state"] == "up"
        assert got[a1]["check"]["last_reason"] == "exit status 27 (weight 25)"
        (flags / f"status-{b1}").write_text("0")  # keeps 25
        time.sleep(0.4)
        wait_eff({a1: 25, a2: 10})
        (flags / f"status-{b2}").write_text("1")
        got = wait_eff({a1: 25, a2: 0})
        assert got[a2]["state"] == "down"
        (flags / f"status-{b1}").write_text("2")  # weight 0: no new sessions, still UP
        got = wait_eff({a1: 0, a2: 0})
        assert got[a1]["state"] == "up" and got[a1]["dynamic_weight"] == 0
    finally:
        stop_process(proc, signal.SIGTERM)
    text = log.read_text()
    assert f"backend web/{a1}: weight 25 from the check: exit status 27 (weight 25) " \
           "(misc_dynamic; was the base weight 10)" in text, text
    assert f"backend web/{a1}: weight 0 from the check: exit status 2 (weight 0) " \
           "(misc_dynamic; was 25)" in text, text
