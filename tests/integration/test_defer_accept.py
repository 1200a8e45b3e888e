"""`defer_accept` end to end: with it, the daemon (a subprocess, on either data plane) takes a
client's connection only once the client has sent something, so a silent client never reaches
the backend; a reload turns it off and on again on the running listeners; `l4lb status` says
which is in effect."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .procs import child_env, free_port, l4lb_cmd, reload_ok, stop_process, wait_listening

SILENT_WAIT = 0.5  # how long a silent client is watched: well below the 1 s deferral


class RecordingServer:
    """A backend that counts the connections it accepted and keeps what each one sent."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.received: list[bytes] = []  # first bytes of each accepted connection (b"": none yet)
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:  # counted at once: a silent client's connection sends nothing
                self.conns.append(conn)
                self.received.append(b"")
                index = len(self.received) - 1
            conn.settimeout(2.0)
            try:
                data = conn.recv(64)
            except OSError:
                data = b""
            with self.lock:
                self.received[index] = data

    def count(self) -> int:
        with self.lock:
            return len(self.received)

    def wait_for(self, n: int, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.count() < n:
            time.sleep(0.01)
        with self.lock:
            return list(self.received)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=2)
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def backend() -> Iterator[RecordingServer]:
    server = RecordingServer()
    yield server
    server.close()


def config(tmp: Path, port: int, backend: int, keys: str) -> str:
    return (f'[global]\nworkers = 1\nshutdown_timeout = "0s"\ncontrol_socket = "{tmp}/ctl.sock"\n'
            f'\n[[services]]\nname = "web"\nlisten = ["127.0.0.1:{port}"]\n{keys}\n'
            f'  [[services.backends]]\n  address = "127.0.0.1:{backend}"\n')


def tcp_options(cfg: Path) -> dict[str, object]:
    res = subprocess.run(l4lb_cmd("status", "--json", "-c", str(cfg)), capture_output=True,
                         text=True, env=child_env(), timeout=30, check=False)
    assert res.returncode == 0, res.stderr
    options: dict[str, object] = json.loads(res.stdout)["services"][0]["tcp_options"]
    return options


def settle(server: RecordingServer) -> int:
    """The backend's connection count once nothing else is arriving (wait_listening's probe
    closes at once, and a FIN counts as data for a deferred listener: it is forwarded)."""
    while True:
        n = server.count()
        time.sleep(0.2)
        if server.count() == n:
            return n


def silent_client_reaches_backend(port: int, server: RecordingServer,
                                  clients: list[socket.socket]) -> bool:
    """Connect without sending; True when the backend got a connection within SILENT_WAIT.
    If not, send b"ping" and check that it then arrives, with the ping, at once."""
    before = settle(server)
    client = socket.create_connection(("127.0.0.1", port), timeout=5.0)
    clients.append(client)
    if server.wait_for(before + 1, SILENT_WAIT)[before:]:
        return True
    client.sendall(b"ping")
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and server.wait_for(before + 1, 2.0)[before:] != [b"ping"]:
        time.sleep(0.01)
    got = server.wait_for(before + 1, 0.0)[before:]
    assert got == [b"ping"], got
    return False


@pytest.mark.parametrize("reference", [False, True], ids=["c", "ref"])
def test_a_silent_client_waits_until_it_speaks_and_reload_toggles_it(
        tmp_path: Path, backend: RecordingServer, reference: bool) -> None:
    port = free_port()
    cfg = tmp_path / "l4lb.toml"
    cfg.write_text(config(tmp_path, port, backend.port, "defer_accept = true"))
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(reference),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    clients: list[socket.socket] = []
    try:
        wait_listening(port, proc)
        assert not silent_client_reaches_backend(port, backend, clients)
        assert tcp_options(cfg)["defer_accept"] is True

        cfg.write_text(config(tmp_path, port, backend.port, ""))
        reload_ok(cfg)
        assert silent_client_reaches_backend(port, backend, clients)
        assert tcp_options(cfg)["defer_accept"] is False

        cfg.write_text(config(tmp_path, port, backend.port, "defer_accept = true"))
        reload_ok(cfg)
        assert not silent_client_reaches_backend(port, backend, clients)
    finally:
        for client in clients:
            client.close()
        code = stop_process(proc)
        err = proc.stderr.read().decode() if proc.stderr else ""
    assert code == 0, err
    assert (f"service web: listener 127.0.0.1:{port} accepts a connection once its first bytes "
            "arrived (defer_accept)") in err
    assert f"service web: listener 127.0.0.1:{port} accepts connections at once" in err
