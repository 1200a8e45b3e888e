"""Panic (min_healthy) in the running daemon: it really reaches the table, and unproven backends
(initial_state = "down", no verdict yet) neither trigger it nor get traffic."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from .procs import (
    NameServer,
    child_env,
    free_port,
    l4lb_cmd,
    stop_process,
    wait_listening,
    wait_until,
)
from .test_cli import write_config


def status(cfg: Path) -> dict[str, Any]:
    res = subprocess.run(l4lb_cmd("status", "--json", "-c", str(cfg)), capture_output=True,
                         text=True, env=child_env(), timeout=30)
    assert res.returncode == 0, res.stderr
    service: dict[str, Any] = json.loads(res.stdout)["services"][0]
    return service


def knock(port: int) -> bytes:
    """Connect and read until the balancer closes: b"" when it had nowhere to send us."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            return s.recv(64)
    except ConnectionResetError:  # the balancer's reset may already be there at connect
        return b""


def test_panic_keeps_a_down_backend_in_the_table(tmp_path: Path) -> None:
    port, dead = free_port(), free_port()  # nothing listens on `dead`
    cfg = write_config(tmp_path, port, [dead], extra="""
  [services.health]
  interval = "100ms"
  timeout = "50ms"
  fall = 1
  jitter = 0.0
""")
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        assert wait_until(lambda: status(cfg)["panic"] is not None)
        svc = status(cfg)
        assert svc["backends"][0]["state"] == "down"
        assert svc["backends"][0]["effective_weight"] > 0  # panic: still in rotation
        for _ in range(5):
            assert knock(port) == b""
        svc = status(cfg)
        # the table has the backend: every client was tried on it (and refused there); without
        # the backend in the table the balancer would not even try (connect_failures 0)
        assert svc["backends"][0]["connect_failures"] >= 5, svc
        assert stop_process(proc, signal.SIGTERM) == 0
    finally:
        stop_process(proc, signal.SIGKILL)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert ("service web: panic: 0 of 1 enabled primary backends are UP (below min_healthy): "
            "health checks are ignored, DOWN backends stay in rotation") in err, err


def test_unproven_backends_get_no_traffic_and_no_panic(tmp_path: Path) -> None:
    port = free_port()
    backend = NameServer("b1")
    cfg = write_config(tmp_path, port, [backend.port], extra="""
  [services.health]
  interval = "5s"
  timeout = "1s"
  rise = 2
  initial_state = "down"
  jitter = 0.0
""")
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        # the first probe passed, the second is 5 s away: the backend is still unproven
        svc = status(cfg)
        assert svc["backends"][0]["state"] == "down"
        assert svc["panic"] is None
        before = svc["counters"]["no_backend"]  # wait_listening's own connect is one
        assert knock(port) == b""  # refused by the balancer, not sent to the backend
        assert status(cfg)["counters"]["no_backend"] == before + 1
        assert status(cfg)["backends"][0]["conns_total"] == 0
        assert stop_process(proc, signal.SIGTERM) == 0
    finally:
        stop_process(proc, signal.SIGKILL)
        backend.close()
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert "panic" not in err, err
