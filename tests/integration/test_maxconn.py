"""Runtime connection limits end to end: `l4lb run` (a subprocess, on either data plane) with a
queue, one echo backend without a limit in the file, and a real agent. `l4lb maxconn` sets a
limit that the data plane enforces at once (a second client waits in the queue), `l4lb
backends` shows it as ACTIVE/limit, lifting it serves the waiting client while the first one
stays, and the agent's `maxconn:N` limits the backend the same way until it says `maxconn:0`."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .procs import child_env, free_port, l4lb_cmd, running, stop_process, wait_until
from .test_agent_daemon import Agents
from .test_queue_daemon import echo_port  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(90)

def cli(cfg: Path, *args: str) -> str:
    res = subprocess.run(l4lb_cmd(*args, "-c", str(cfg)), capture_output=True, text=True,
                         env=child_env(), timeout=30, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout


def service(cfg: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cli(cfg, "status", "--json"))["services"][0]
    return found


def queued(cfg: Path) -> int:
    return int(service(cfg)["counters"].get("queued_now", 0))


def limit(cfg: Path) -> int:
    return int(service(cfg)["backends"][0]["max_connections"])


def echoed(conn: socket.socket, data: bytes) -> bool:
    conn.sendall(data)
    return conn.recv(len(data)) == data


@pytest.mark.parametrize("impl", ["c", "ref"])
def test_runtime_and_agent_limits_hold_clients_in_the_queue(
        tmp_path: Path, echo_port: int, impl: str) -> None:  # noqa: F811
    port, agent_port = free_port(), free_port()
    backend = f"127.0.0.1:{echo_port}"
    agents = Agents([agent_port])
    agents.lines[agent_port] = b"up\n"
    cfg = tmp_path / "l4lb.toml"
    cfg.write_text(
        f'[global]\nworkers = 1\nshutdown_timeout = "0s"\ncontrol_socket = "{tmp_path}/ctl.sock"'
        f'\n\n[[services]]\nname = "db"\nlisten = ["127.0.0.1:{port}"]\nqueue_timeout = "10s"\n'
        f'backends = [{{ address = "{backend}", agent_port = {agent_port} }}]\n'
        'agent = { interval = "100ms", timeout = "100ms" }\n')
    try:
        with running(cfg, impl, port) as proc:
            assert wait_until(lambda: service(cfg)["counters"].get("conns_active") == 0, 10)
            assert cli(cfg, "maxconn", "db", backend, "1").startswith(
                f"db/{backend}: max_connections 1, state up (table generation ")
            with socket.create_connection(("127.0.0.1", port), timeout=5) as holder, \
                    socket.create_connection(("127.0.0.1", port), timeout=5) as waiter:
                assert echoed(holder, b"a")
                waiter.sendall(b"b")
                assert wait_until(lambda: queued(cfg) == 1, 10)
                row = next(line for line in cli(cfg, "backends", "db").splitlines()
                           if line.startswith(backend))
                assert " 1/1 " in row, row
                cli(cfg, "maxconn", "db", backend, "0")  # no limit: served, the holder stays
                assert waiter.recv(1) == b"b"
                assert queued(cfg) == 0 and echoed(holder, b"c")

                agents.lines[agent_port] = b"maxconn:2\n"
                assert wait_until(lambda: limit(cfg) == 2, 10)
                with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
                    third.sendall(b"d")
                    assert wait_until(lambda: queued(cfg) == 1, 10)
                    status = cli(cfg, "status")
                    assert "agent: maxconn:2" in status, status
                    agents.lines[agent_port] = b"maxconn:0\n"  # the agent lifts its limit
                    assert third.recv(1) == b"d"
                    assert limit(cfg) == 0
            assert stop_process(proc) == 0
    finally:
        agents.shutdown()
