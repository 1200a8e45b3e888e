"""The queue for full backends end to end: `l4lb run` (a subprocess, on either data plane) with
`queue_timeout` keeps a client waiting while the backend's only slot is taken, `l4lb status`
and /metrics show it waiting, it is served when the slot frees, and the connection log says how
long it waited."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .procs import child_env, free_port, l4lb_cmd, running, stop_process, wait_until

ECHO = Path(__file__).with_name("echo_backends.py")


@pytest.fixture
def echo_port() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, str(ECHO), "1"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(timeout=10)


def status(cfg: Path, *extra: str) -> str:
    res = subprocess.run(l4lb_cmd("status", *extra, "-c", str(cfg)), capture_output=True,
                         text=True, env=child_env(), timeout=30, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout


def counters(cfg: Path) -> dict[str, int]:
    found: dict[str, int] = json.loads(status(cfg, "--json"))["services"][0]["counters"]
    return found


@pytest.mark.parametrize("impl", ["c", "ref"])
def test_a_client_waits_for_the_slot_and_every_view_shows_it(tmp_path: Path, echo_port: int,
                                                              impl: str) -> None:
    port, metrics = free_port(), free_port()
    log = tmp_path / "conn.jsonl"
    cfg = tmp_path / "l4lb.toml"
    cfg.write_text(
        f'[global]\nworkers = 1\nshutdown_timeout = "0s"\ncontrol_socket = "{tmp_path}/ctl.sock"'
        f'\nconnection_log = "{log}"\n\n[metrics]\nlisten = "127.0.0.1:{metrics}"\n\n'
        f'[[services]]\nname = "db"\nlisten = ["127.0.0.1:{port}"]\nqueue_timeout = "5s"\n'
        f'max_queue = 4\nbackends = [{{ address = "127.0.0.1:{echo_port}", '
        f"max_connections = 1 }}]\n")
    with running(cfg, impl, port) as proc:
        # wait_listening's probe held the slot for a moment: let it go first
        assert wait_until(lambda: counters(cfg).get("conns_active") == 0, 10)
        base = counters(cfg)["queued_total"]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as holder:
            holder.sendall(b"a")
            assert holder.recv(1) == b"a"
            with socket.create_connection(("127.0.0.1", port), timeout=5) as waiter:
                waiter.sendall(b"b")
                assert wait_until(lambda: counters(cfg).get("queued_now") == 1, 10)
                text = status(cfg)
                assert "queue for full backends (up to 4 clients, 5s each)" in text
                assert f"  queue 1 waiting, {base + 1} queued in all, 0 timed out" in text, text
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics",
                                            timeout=5) as reply:
                    page = reply.read().decode()
                assert 'l4lb_service_queued{service="db"} 1.0' in page
                time.sleep(0.2)
                holder.close()
                assert waiter.recv(1) == b"b"
        assert wait_until(lambda: counters(cfg).get("conns_active") == 0, 10)
        got = counters(cfg)
        assert (got["queued_now"], got["queued_total"], got["queue_timeouts"]) == (0, base + 1, 0)
        assert got["queue_wait_ms"] >= 150
        assert stop_process(proc) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    waited = [r for r in lines if r.get("queued", 0) >= 0.15]
    assert len(waited) == 1, lines
    assert waited[0]["backend"] == f"127.0.0.1:{echo_port}"
    assert waited[0]["duration"] >= waited[0]["queued"]
