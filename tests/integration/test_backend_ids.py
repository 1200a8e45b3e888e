"""A backend added after another was removed never inherits its counters, sessions or log lines
(docs/forwarding-table.md, "Ids that leave the table"), through a real `l4lb run` on both planes."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from .procs import free_port, wait_until
from .test_cli import write_config
from .test_drain_connlog import IMPLS, HoldServer, ctl, running, wait_for_lines

pytestmark = pytest.mark.timeout(60)


def backends(cfg: Path) -> dict[str, dict[str, Any]]:
    res = ctl(cfg, "backends", "web", "--json")
    assert res.returncode == 0, res.stderr
    return {b["address"]: b for b in json.loads(res.stdout)}


def sessions(cfg: Path) -> list[dict[str, Any]]:
    res = ctl(cfg, "sessions", "web", "--json")
    assert res.returncode == 0, res.stderr
    found: list[dict[str, Any]] = json.loads(res.stdout)
    return found


def ok(cfg: Path, *args: str) -> None:
    res = ctl(cfg, *args)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("impl", IMPLS)
def test_new_backend_does_not_inherit_a_removed_ones_sessions(tmp_path: Path,
                                                              impl: str) -> None:
    port = free_port()
    a, b, c = HoldServer(), HoldServer(), HoldServer()
    log_path = tmp_path / "conn.log"
    cfg = write_config(tmp_path, port, [a.port, b.port], scheduler="least_conn")
    text = cfg.read_text().replace("workers = 2", f'workers = 1\nconnection_log = "{log_path}"')
    cfg.write_text(text)
    addr = {s: f"127.0.0.1:{s.port}" for s in (a, b, c)}
    held: list[socket.socket] = []
    try:
        with running(cfg, impl, port) as proc:
            for _ in range(2):  # least_conn: one session on each backend
                s = socket.create_connection(("127.0.0.1", port), timeout=3)
                s.sendall(b"x" * 100)
                held.append(s)
            assert wait_until(lambda: all(b["conns_active"] == 1
                                          for b in backends(cfg).values()))
            ok(cfg, "remove-backend", "web", addr[b])  # one table without b...
            ok(cfg, "add-backend", "web", addr[c])  # ...and the next one adds c

            view = backends(cfg)
            assert view[addr[c]]["conns_active"] == 0 and view[addr[c]]["conns_total"] == 0
            assert view[addr[c]]["bytes_to_backend"] == 0
            # the session to the removed backend is still named after it
            assert sorted(s["backend"] for s in sessions(cfg)) == sorted([addr[a], addr[b]])
            # least_conn: the new backend has no session, so it takes the next client
            s = socket.create_connection(("127.0.0.1", port), timeout=3)
            s.sendall(b"y")
            held.append(s)
            assert wait_until(lambda: backends(cfg)[addr[c]]["conns_active"] == 1), backends(cfg)
            assert len(c.conns) == 1  # it went to c

            for s in held:
                s.close()
            held.clear()
            lines = wait_for_lines(log_path, 4)  # wait_listening's probe is one more
            ours = [line for line in lines if line["bytes_to_backend"] > 0]
            assert sorted(line["backend"] for line in ours) == sorted(
                [addr[a], addr[b], addr[c]]), lines
            # once nothing counts on the removed backend's id, a newcomer may get it back,
            # starting from 0 (the daemon releases ids about once a second)
            time.sleep(2.5)
            ok(cfg, "remove-backend", "web", addr[c])
            ok(cfg, "add-backend", "web", addr[b])
            again = backends(cfg)[addr[b]]
            assert again["conns_total"] == 0 and again["bytes_to_backend"] == 0
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert "table: released 0 service and 1 backend ids" in err, err
    finally:
        for s in held:
            s.close()
        for server in (a, b, c):
            server.close()


def test_a_backend_added_back_keeps_its_open_sessions(tmp_path: Path) -> None:
    port = free_port()
    a, b = HoldServer(), HoldServer()
    cfg = write_config(tmp_path, port, [a.port, b.port])
    addr_b = f"127.0.0.1:{b.port}"
    held: list[socket.socket] = []
    try:
        with running(cfg, "c", port):
            # round robin per worker: each worker's clients alternate, so b gets 1 to 3 of 4
            for _ in range(4):
                s = socket.create_connection(("127.0.0.1", port), timeout=3)
                s.sendall(b"z")
                held.append(s)
            assert wait_until(lambda: sum(v["conns_active"] for v in backends(cfg).values()) == 4)
            on_b = backends(cfg)[addr_b]["conns_active"]
            assert on_b >= 1
            ok(cfg, "remove-backend", "web", addr_b)
            ok(cfg, "add-backend", "web", addr_b)  # back while its sessions are open
            assert backends(cfg)[addr_b]["conns_active"] == on_b
            assert [s["backend"] for s in sessions(cfg)].count(addr_b) == on_b
            res = ctl(cfg, "drain", "web", addr_b, "--timeout", "1s")
            assert f"closed {on_b}" in res.stdout, res.stdout + res.stderr
            assert wait_until(lambda: backends(cfg)[addr_b]["conns_active"] == 0)
    finally:
        for s in held:
            s.close()
        a.close()
        b.close()
