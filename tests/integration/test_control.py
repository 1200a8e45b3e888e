"""The control socket end to end: `l4lb run` plus the CLI clients, on the compiled data plane."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from .procs import NameServer, child_env, fetch, free_port, l4lb_cmd, stop_process, wait_listening
from .test_cli import write_config


@pytest.fixture
def daemon(tmp_path: Path, name_servers: list[NameServer]) -> Iterator[tuple[int, Path]]:
    port = free_port()
    cfg = write_config(tmp_path, port, [s.port for s in name_servers])
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        yield port, cfg
        assert stop_process(proc, signal.SIGTERM) == 0
    finally:
        stop_process(proc, signal.SIGKILL)


def ctl(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(l4lb_cmd(*args, "-c", str(cfg)), capture_output=True, text=True,
                          env=child_env(), timeout=30)


def test_status_and_backends(daemon: tuple[int, Path], name_servers: list[NameServer]) -> None:
    port, cfg = daemon
    for _ in range(6):
        fetch(port)
    sock = cfg.parent / "l4lb.sock"
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    res = ctl(cfg, "status", "--json")
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout)
    assert status["table"]["generation"] == 1 and len(status["table"]["digest"]) == 16
    svc = status["services"][0]
    assert svc["name"] == "web" and svc["listen"] == [f"127.0.0.1:{port}"]
    # 7 connections: the 6 above and wait_listening's readiness probe
    assert svc["counters"]["conns_total"] == 7
    assert [b["address"] for b in svc["backends"]] == [f"127.0.0.1:{s.port}" for s in name_servers]
    assert sorted(b["conns_total"] for b in svc["backends"]) == [2, 2, 3]
    assert all(b["state"] == "up" for b in svc["backends"])
    text = ctl(cfg, "status").stdout
    assert "service web (tcp, round_robin)" in text and "BACKEND" in text
    assert f"127.0.0.1:{name_servers[0].port}" in ctl(cfg, "backends", "web").stdout


def test_disable_weight_enable_change_where_connections_go(
        daemon: tuple[int, Path], name_servers: list[NameServer]) -> None:
    port, cfg = daemon
    b2 = f"127.0.0.1:{name_servers[1].port}"
    res = ctl(cfg, "disable", "web", b2)
    assert res.returncode == 0, res.stderr
    assert f"web/{b2}: state maint, weight 1 (table generation 2)" in res.stdout
    seen = Counter(fetch(port).decode() for _ in range(20))
    assert seen == {"b1": 10, "b3": 10}
    assert ctl(cfg, "enable", "web", b2).returncode == 0
    assert ctl(cfg, "weight", "web", b2, "0").returncode == 0
    assert set(Counter(fetch(port).decode() for _ in range(10))) == {"b1", "b3"}
    ctl(cfg, "weight", "web", b2, "1")
    assert set(Counter(fetch(port).decode() for _ in range(12))) == {"b1", "b2", "b3"}
    backends = json.loads(ctl(cfg, "backends", "web", "--json").stdout)
    assert [b["state"] for b in backends] == ["up", "up", "up"]


def test_client_errors_are_one_line_and_exit_1(daemon: tuple[int, Path]) -> None:
    _, cfg = daemon
    res = ctl(cfg, "drain", "web", "10.9.9.9:1")
    assert res.returncode == 1
    assert res.stderr.startswith("l4lb: error: service 'web' has no backend '10.9.9.9:1'")
    res = ctl(cfg, "backends", "api")
    assert res.returncode == 1 and "no service named 'api' (services: web)" in res.stderr


def test_add_and_remove_backend_at_run_time(daemon: tuple[int, Path],
                                            name_servers: list[NameServer]) -> None:
    port, cfg = daemon
    extra = NameServer("b4")
    try:
        res = ctl(cfg, "add-backend", "web", f"127.0.0.1:{extra.port}", "--name", "four")
        assert res.returncode == 0, res.stderr
        assert "generation 2" in res.stdout
        seen = Counter(fetch(port).decode() for _ in range(16))
        assert seen == {"b1": 4, "b2": 4, "b3": 4, "b4": 4}, seen
        b1 = f"127.0.0.1:{name_servers[0].port}"
        assert ctl(cfg, "remove-backend", "web", b1).returncode == 0
        seen = Counter(fetch(port).decode() for _ in range(9))
        assert seen == {"b2": 3, "b3": 3, "b4": 3}, seen
        status = json.loads(ctl(cfg, "status", "--json").stdout)["services"][0]
        assert status["differences_from_file"] == {"added": [f"127.0.0.1:{extra.port}"],
                                                   "removed": [b1]}
        assert "differs from the file: added at run time" in ctl(cfg, "status").stdout
        res = ctl(cfg, "add-backend", "web", "localhost:80")
        assert res.returncode == 1 and "IP address" in res.stderr
    finally:
        extra.close()
