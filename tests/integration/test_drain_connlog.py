"""`l4lb drain --timeout`, the connection log (with SIGUSR1 rotation) and probe latency through
a real `l4lb run`, on both data planes (close_backend_sessions() and the closed-session record
ring of docs/architecture.md's data-plane API)."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .procs import (
    NameServer,
    child_env,
    free_port,
    l4lb_cmd,
    running,
    stop_process,
)
from .test_cli import write_config
from .test_udp_daemon import UdpNamer, ask

IMPLS = ["c", "ref"]
pytestmark = pytest.mark.timeout(60)


class HoldServer:
    """A TCP backend that keeps each connection open, reading, until the client closes it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.received = 0  # bytes read from all connections
        self.conns: list[socket.socket] = []
        self._stop = False
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.conns.append(conn)
            t = threading.Thread(target=self._read, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _read(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        while not self._stop:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                conn.close()  # the client closed (wait_listening's probe): close too
                return
            self.received += len(data)

    def close(self) -> None:
        self._stop = True
        for t in self.threads:
            t.join(timeout=2)
        for c in self.conns:
            c.close()
        self.sock.close()


def ctl(cfg: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(l4lb_cmd(*args, "-c", str(cfg)), capture_output=True, text=True,
                          env=child_env(), timeout=timeout)


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    # the writer may be half-way through a batch: only complete lines count
    complete = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in complete]


def wait_for_lines(path: Path, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    lines = read_log(path)
    while len(lines) < n and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = read_log(path)
    return lines


def fetch_from(port: int) -> tuple[bytes, int]:
    """Connect, read to EOF; return what came and the client's local port."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        local = int(s.getsockname()[1])
        out = b""
        while chunk := s.recv(4096):
            out += chunk
    return out, local


@pytest.mark.parametrize("impl", IMPLS)
def test_drain_timeout_counts_down_then_resets_the_session(impl: str, tmp_path: Path) -> None:
    backend = HoldServer()
    port = free_port()
    log = tmp_path / "conn.jsonl"
    cfg = write_config(tmp_path, port, [backend.port])
    cfg.write_text(cfg.read_text().replace(
        "[global]\n", f'[global]\nconnection_log = "{log}"\n'))
    address = f"127.0.0.1:{backend.port}"
    try:
        with running(cfg, impl, port) as proc, \
                socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"hello")
            deadline = time.monotonic() + 5
            while backend.received < 5 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert backend.received == 5  # the session is established end to end
            started = time.monotonic()
            res = ctl(cfg, "drain", "web", address, "--timeout", "2s")
            took = time.monotonic() - started
            assert res.returncode == 0, res.stderr
            out = res.stdout.splitlines()
            assert out[0].startswith(f"web/{address}: state drain")
            countdown = [line for line in out[1:-1]
                         if re.fullmatch(rf"web/{re.escape(address)}: 1 session left, "
                                         r"[0-2]s to the deadline", line)]
            assert countdown, out
            assert out[-1] == f"web/{address}: deadline reached, closed 1 session"
            assert 1.8 <= took < 8.0
            client.settimeout(3)
            with pytest.raises(ConnectionResetError):
                while client.recv(4096):
                    pass
            backends = json.loads(ctl(cfg, "backends", "web", "--json").stdout)
            assert backends[0]["state"] == "drain" and backends[0]["conns_active"] == 0
            assert backends[0]["drain_deadline"] is None
            assert stop_process(proc, signal.SIGTERM) == 0
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert f"backend web/{address}: drain deadline reached, closed 1 session" in err
        reasons = [r["reason"] for r in read_log(log) if r["backend"] == address]
        assert "drain_timeout" in reasons
    finally:
        backend.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_drain_timeout_with_no_sessions_returns_at_once(impl: str, tmp_path: Path) -> None:
    backends = [NameServer("b1"), NameServer("b2")]
    port = free_port()
    cfg = write_config(tmp_path, port, [b.port for b in backends])
    try:
        with running(cfg, impl, port):
            address = f"127.0.0.1:{backends[1].port}"
            started = time.monotonic()
            res = ctl(cfg, "drain", "web", address, "--timeout", "5m")
            assert res.returncode == 0, res.stderr
            assert res.stdout.splitlines()[-1] == f"web/{address}: drained, no sessions left"
            assert time.monotonic() - started < 5.0  # not the 5 minutes
            view = json.loads(ctl(cfg, "backends", "web", "--json").stdout)[1]
            assert view["state"] == "drain" and view["drain_deadline"] is None
    finally:
        for b in backends:
            b.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_connection_log_lines_and_reopen_on_sigusr1(impl: str, tmp_path: Path) -> None:
    names = [NameServer("b1"), NameServer("b2")]
    udp = UdpNamer("u1")
    port, uport = free_port(), free_port()
    log = tmp_path / "conn.jsonl"
    cfg = write_config(tmp_path, port, [n.port for n in names])
    cfg.write_text(cfg.read_text().replace("[global]\n", f'[global]\nconnection_log = "{log}"\n')
                   + f'\n[[services]]\nname = "dns"\nprotocol = "udp"\n'
                   f'listen = ["127.0.0.1:{uport}"]\nresponses = 1\n\n'
                   f'  [[services.backends]]\n  address = "127.0.0.1:{udp.port}"\n')
    n = 5
    try:
        with running(cfg, impl, port) as proc:
            ours = {}
            for _ in range(n):
                data, local = fetch_from(port)
                ours[local] = data
            assert ask(uport, 7) == b"u1"
            # wait_listening's probe is a session too: n + 1 TCP lines and 1 UDP line
            lines = wait_for_lines(log, n + 2)
            assert len(lines) == n + 2, lines
            tcp = [r for r in lines if r["protocol"] == "tcp"]
            udp_lines = [r for r in lines if r["protocol"] == "udp"]
            assert len(tcp) == n + 1 and len(udp_lines) == 1
            mine = [r for r in tcp if int(r["client"].rsplit(":", 1)[1]) in ours]
            assert len(mine) == n
            backend_names = {f"127.0.0.1:{s.port}": s.name.encode() for s in names}
            for r in mine:
                assert r["service"] == "web" and r["client"].startswith("127.0.0.1:")
                local = int(r["client"].rsplit(":", 1)[1])
                assert backend_names[r["backend"]] == ours[local]
                assert r["bytes_to_client"] == 2 and r["bytes_to_backend"] == 0
                assert r["reason"] == "backend_closed"
                assert 0 <= r["duration"] < 5 and r["start"].endswith("Z")
            u = udp_lines[0]
            assert (u["service"], u["backend"], u["reason"]) == \
                ("dns", f"127.0.0.1:{udp.port}", "responses")
            assert u["bytes_to_backend"] == 7 and u["bytes_to_client"] == 4
            # logrotate: rename, then SIGUSR1; new lines go to a new file at the same path
            rotated = tmp_path / "conn.jsonl.1"
            log.rename(rotated)
            proc.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 5
            while not log.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert log.exists()
            for _ in range(3):
                fetch_from(port)
            assert len(wait_for_lines(log, 3)) == 3
            assert len(read_log(rotated)) == n + 2
            res = ctl(cfg, "reopen-logs")
            assert res.returncode == 0 and res.stdout.strip() == f"reopened {log}"
            # a reopen that fails is an error (logrotate's postrotate sees exit 1)
            log.rename(tmp_path / "conn.jsonl.2")
            log.mkdir()
            res = ctl(cfg, "reopen-logs")
            assert res.returncode == 1, res.stdout + res.stderr
            assert res.stderr.startswith(f"l4lb: error: cannot reopen {log}"), res.stderr
            assert stop_process(proc, signal.SIGTERM) == 0
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert f"connlog: reopening {log} (SIGUSR1)" in err
        assert f"connlog: writing closed sessions to {log}" in err
    finally:
        for s in names:
            s.close()
        udp.close()


def test_a_missing_connection_log_directory_is_a_config_error(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, port, [free_port()])
    cfg.write_text(cfg.read_text().replace(
        "[global]\n", f'[global]\nconnection_log = "{tmp_path}/nope/conn.jsonl"\n'))
    want = (f"{cfg}:2:18: error: global.connection_log: directory "
            f'"{tmp_path}/nope" does not exist')
    for command in ("check", "run"):
        res = ctl(cfg, command, timeout=30)
        assert res.returncode == 1
        assert res.stderr.splitlines()[0] == want, res.stderr


@pytest.mark.parametrize("impl", IMPLS)
def test_probe_latency_in_metrics_and_backends(impl: str, tmp_path: Path) -> None:
    names = [NameServer("b1")]
    port, mport = free_port(), free_port()
    cfg = write_config(tmp_path, port, [names[0].port],
                       extra='\n  [services.health]\n  interval = "200ms"\n  timeout = "100ms"\n')
    cfg.write_text(cfg.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{mport}"\n')
    try:
        with running(cfg, impl, port):
            pattern = re.compile(r'^l4lb_backend_probe_latency_seconds\{backend="127\.0\.0\.1:'
                                 rf'{names[0].port}",name="[^"]+",service="web"\}} (\S+)$', re.M)
            found = None
            deadline = time.monotonic() + 10
            while found is None and time.monotonic() < deadline:
                try:  # the HTTP listener starts a moment after the service listener
                    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics",
                                                timeout=5) as r:
                        found = pattern.search(r.read().decode())
                except OSError:
                    pass
                if found is None:
                    time.sleep(0.1)
            assert found is not None
            assert 0.0 < float(found.group(1)) < 0.1
            view = json.loads(ctl(cfg, "backends", "web", "--json").stdout)[0]
            assert 0.0 < view["probe_latency"] < 0.1
            row = ctl(cfg, "backends", "web").stdout.splitlines()
            assert row[0].endswith("PROBE") and row[1].endswith("ms")
    finally:
        names[0].close()


def open_session(port: int, backend: HoldServer) -> socket.socket:
    """A client session through l4lb that the backend has seen data on."""
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    before = backend.received
    client.sendall(b"hi")
    deadline = time.monotonic() + 5
    while backend.received < before + 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert backend.received == before + 2
    return client


@pytest.mark.parametrize("impl", IMPLS)
def test_ctrl_c_leaves_the_deadline_armed_in_the_daemon(impl: str, tmp_path: Path) -> None:
    backend = HoldServer()
    port = free_port()
    cfg = write_config(tmp_path, port, [backend.port])
    address = f"127.0.0.1:{backend.port}"
    master, slave = os.openpty()
    try:
        with running(cfg, impl, port), open_session(port, backend) as client:
            cli = subprocess.Popen(l4lb_cmd("drain", "web", address, "--timeout", "3s",
                                            "-c", str(cfg)),
                                   env=child_env(), stdout=slave, stderr=subprocess.PIPE)
            seen = b""
            deadline = time.monotonic() + 10
            while b"1 session left" not in seen and time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.2)
                if ready:
                    seen += os.read(master, 4096)
            # on a terminal the countdown is one line, rewritten in place
            assert b"\r\x1b[Kweb/" + address.encode() + b": 1 session left" in seen, seen
            cli.send_signal(signal.SIGINT)
            assert cli.wait(timeout=10) == 130
            err = cli.stderr.read().decode() if cli.stderr else ""
            assert "interrupted: the drain deadline stays armed in the daemon" in err
            view = json.loads(ctl(cfg, "backends", "web", "--json").stdout)[0]
            assert view["drain_deadline"] is not None and view["conns_active"] == 1
            # the daemon still closes the session at the deadline
            client.settimeout(8)
            with pytest.raises(ConnectionResetError):
                while client.recv(4096):
                    pass
            view = json.loads(ctl(cfg, "backends", "web", "--json").stdout)[0]
            assert view["drain_deadline"] is None and view["conns_active"] == 0
    finally:
        os.close(master)
        os.close(slave)
        backend.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_enable_cancels_the_deadline_and_shutdown_is_logged(impl: str, tmp_path: Path) -> None:
    backend = HoldServer()
    port = free_port()
    log = tmp_path / "conn.jsonl"
    cfg = write_config(tmp_path, port, [backend.port])
    cfg.write_text(cfg.read_text().replace("[global]\n", f'[global]\nconnection_log = "{log}"\n'))
    address = f"127.0.0.1:{backend.port}"
    try:
        with running(cfg, impl, port) as proc, open_session(port, backend) as client:
            cli = subprocess.Popen(l4lb_cmd("drain", "web", address, "--timeout", "30s",
                                            "-c", str(cfg)), env=child_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                view = json.loads(ctl(cfg, "backends", "web", "--json").stdout)[0]
                if view["drain_deadline"] is not None:
                    break
                time.sleep(0.05)
            assert re.search(r"drain, (30|29|28)s left", ctl(cfg, "backends", "web").stdout)
            assert ctl(cfg, "enable", "web", address).returncode == 0
            out, err = cli.communicate(timeout=10)
            assert cli.returncode == 1
            assert f"web/{address}: 1 session left, " in out  # counted down until cancelled
            assert err.strip() == f"web/{address}: drain deadline cancelled: backend state " \
                "is now up"
            client.sendall(b"still here")  # the session was not closed
            deadline = time.monotonic() + 5
            while backend.received < 12 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert backend.received == 12
            assert stop_process(proc, signal.SIGINT) == 0
        shutdown = [r for r in read_log(log) if r["reason"] == "shutdown"]
        assert len(shutdown) == 1 and shutdown[0]["backend"] == address
        assert shutdown[0]["bytes_to_backend"] == 12
    finally:
        backend.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_drain_timeout_ends_udp_flows(impl: str, tmp_path: Path) -> None:
    udp = UdpNamer("u1")
    tcp = NameServer("b1")
    port, uport = free_port(), free_port()
    cfg = write_config(tmp_path, port, [tcp.port])
    cfg.write_text(cfg.read_text() + f'\n[[services]]\nname = "dns"\nprotocol = "udp"\n'
                   f'listen = ["127.0.0.1:{uport}"]\n\n'
                   f'  [[services.backends]]\n  address = "127.0.0.1:{udp.port}"\n')
    address = f"127.0.0.1:{udp.port}"
    try:
        with running(cfg, impl, port):
            assert ask(uport, 1) == b"u1"  # one flow, idle for up to udp_idle_timeout (30 s)
            res = ctl(cfg, "drain", "dns", address, "--timeout", "1s")
            assert res.returncode == 0, res.stderr
            out = res.stdout.splitlines()
            assert any(line.startswith(f"dns/{address}: 1 flow left, ") for line in out), out
            assert out[-1] == f"dns/{address}: deadline reached, closed 1 flow"
            flows = json.loads(ctl(cfg, "flows", "dns", "--json").stdout)
            assert flows == []
    finally:
        udp.close()
        tcp.close()
