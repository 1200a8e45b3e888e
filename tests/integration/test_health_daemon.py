"""Health checks in the running daemon: a dead backend leaves rotation by itself and returns."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .procs import NameServer, child_env, fetch, free_port, l4lb_cmd, stop_process, wait_listening
from .test_cli import write_config

HEALTH = """
  [services.health]
  interval = "100ms"
  timeout = "50ms"
  rise = 2
  fall = 2
  jitter = 0.0
"""


def states(cfg: Path) -> dict[str, str]:
    res = subprocess.run(l4lb_cmd("backends", "web", "--json", "-c", str(cfg)),
                         capture_output=True, text=True, env=child_env(), timeout=30)
    assert res.returncode == 0, res.stderr
    return {b["address"]: b["state"] for b in json.loads(res.stdout)}


def cli(cfg: Path, *args: str) -> str:
    res = subprocess.run(l4lb_cmd(*args, "-c", str(cfg)), capture_output=True, text=True,
                         env=child_env(), timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout


def check_of(cfg: Path, address: str) -> dict[str, Any]:
    """The `check` detail of one backend of "web", from `l4lb backends --json`."""
    found = {b["address"]: b["check"] for b in json.loads(cli(cfg, "backends", "web", "--json"))}
    check: dict[str, Any] = found[address]
    return check


def wait_state(cfg: Path, address: str, want: str, timeout: float = 5.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if states(cfg)[address] == want:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{address} not {want} after {timeout}s: {states(cfg)}")


def test_dead_backend_goes_down_and_comes_back(tmp_path: Path,
                                               name_servers: list[NameServer]) -> None:
    port = free_port()
    cfg = write_config(tmp_path, port, [s.port for s in name_servers], extra=HEALTH)
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    revived: NameServer | None = None
    try:
        wait_listening(port, proc)
        b2 = f"127.0.0.1:{name_servers[1].port}"
        assert set(states(cfg).values()) == {"up"}
        name_servers[1].close()
        took = wait_state(cfg, b2, "down")
        assert took < 2.0  # fall 2 x interval 100 ms, plus polling
        # why it is DOWN, in the control API and under the table of `l4lb status`
        check = check_of(cfg, b2)
        assert (check["health"], check["change_reason"], check["last_result"],
                check["last_reason"]) == ("down", "connect refused (2/2 probes failed)",
                                          "failed", "connect refused")
        assert abs(check["since"] - time.time()) < 5 and check["last_probe"] >= check["since"]
        assert check_of(cfg, f"127.0.0.1:{name_servers[0].port}")["status"] == "UP"
        text = cli(cfg, "status")
        assert f"\n  {b2}: DOWN for 0m" in text, text
        assert ": connect refused (2/2 probes failed); last probe 0m" in text, text
        seen = Counter(fetch(port).decode() for _ in range(20))
        assert set(seen) == {"b1", "b3"} and sum(seen.values()) == 20
        revived = NameServer("b2-again", port=name_servers[1].port)
        wait_state(cfg, b2, "up")
        check = check_of(cfg, b2)
        assert (check["status"], check["change_reason"], check["last_result"]) == \
            ("UP", "connect ok (2/2 probes passed)", "passed")
        assert f"{b2}: " not in cli(cfg, "status")  # a healthy backend gets no line
        time.sleep(0.1)  # the re-publish is queued on the loop right after the transition
        seen = Counter(fetch(port).decode() for _ in range(30))
        assert seen["b2-again"] == 10, seen
        assert stop_process(proc, signal.SIGTERM) == 0
    finally:
        stop_process(proc, signal.SIGKILL)
        if revived is not None:
            revived.close()
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert f"backend web/{b2} is DOWN: connect refused (2/2 probes failed)" in err, err
    assert f"backend web/{b2} is UP: " in err, err
