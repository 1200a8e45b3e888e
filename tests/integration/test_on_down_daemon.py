"""health.on_down in the running daemon, on both data planes: a long-lived session to a backend
whose health checks then fail is reset soon after the backend goes DOWN with
on_down = "shutdown_sessions" (logged, counted, close reason backend_down, and a client that
reconnects at once lands on the other backend), and carries on with the default "keep". An
agent's `fail` resets it the same way."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .procs import child_env, free_port, l4lb_cmd, running, stop_process, wait_until
from .test_cli import write_config

IMPLS = ["c", "ref"]
pytestmark = pytest.mark.timeout(90)

HEALTH = """
  [services.health]
  interval = "100ms"
  timeout = "50ms"
  rise = 2
  fall = 2
  jitter = 0.0
"""


class NamedEcho:
    """A TCP backend that greets each connection with its name and a newline, then echoes.
    stop_listening() closes the listening socket only (health probes are refused from then on)
    while the connections already accepted keep echoing."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._listening = True
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while self._listening and not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.conns.append(conn)
            t = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        # probes and resets end connections any way; a client's FIN is answered with ours
        with contextlib.suppress(OSError), conn:
            conn.sendall(self.name.encode() + b"\n")
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                conn.sendall(data)

    def stop_listening(self) -> None:
        self._listening = False
        self.threads[0].join(timeout=2)
        self.sock.close()

    def close(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=2)
        for c in self.conns:
            c.close()
        self.sock.close()


def backends(cfg: Path) -> dict[str, dict[str, Any]]:
    res = subprocess.run(l4lb_cmd("backends", "web", "--json", "-c", str(cfg)),
                         capture_output=True, text=True, env=child_env(), timeout=30)
    assert res.returncode == 0, res.stderr
    return {b["address"]: b for b in json.loads(res.stdout)}


def session(port: int) -> tuple[socket.socket, str]:
    """A connection through the balancer and the name of the backend it reached."""
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    name = b""
    while not name.endswith(b"\n"):
        chunk = client.recv(1)
        assert chunk, "the balancer closed the connection"
        name += chunk
    return client, name.decode().strip()


def echoes(client: socket.socket, payload: bytes) -> bool:
    client.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = client.recv(65536)
        if not chunk:
            return False
        got += chunk
    return got == payload


@contextlib.contextmanager
def sessions_on_both(port: int) -> Iterator[dict[str, socket.socket]]:
    """One open session to each backend ("a" and "b"); extra connections are closed."""
    found: dict[str, socket.socket] = {}
    extra: list[socket.socket] = []
    try:
        for _ in range(20):
            client, name = session(port)
            if name in found:
                extra.append(client)
            else:
                found[name] = client
            if len(found) == 2:
                break
        assert set(found) == {"a", "b"}, found
        for client in extra:
            client.close()
        yield found
    finally:
        for client in [*found.values(), *extra]:
            client.close()


def setup(tmp_path: Path, on_down: str) -> tuple[Path, int, NamedEcho, NamedEcho, Path]:
    dying, spare = NamedEcho("a"), NamedEcho("b")
    port = free_port()
    log = tmp_path / "conn.jsonl"
    extra = HEALTH + (f'  on_down = "{on_down}"\n' if on_down else "")
    cfg = write_config(tmp_path, port, [dying.port, spare.port], extra=extra)
    cfg.write_text(cfg.read_text().replace(
        "[global]\n", f'[global]\nconnection_log = "{log}"\n'))
    return cfg, port, dying, spare, log


@pytest.mark.parametrize("impl", IMPLS)
def test_shutdown_sessions_resets_the_session_of_the_down_backend(impl: str,
                                                                  tmp_path: Path) -> None:
    cfg, port, dying, spare, log = setup(tmp_path, "shutdown_sessions")
    a = f"127.0.0.1:{dying.port}"
    try:
        with running(cfg, impl, port) as proc:
            with sessions_on_both(port) as open_:
                assert echoes(open_["a"], b"before") and echoes(open_["b"], b"before")
                host, cport = open_["a"].getsockname()
                me = f"{host}:{cport}"
                open_["a"].settimeout(10)
                dying.stop_listening()  # its probes are refused from now on
                started = time.monotonic()
                with pytest.raises(ConnectionResetError):
                    while open_["a"].recv(65536):
                        pass
                took = time.monotonic() - started
                assert took < 5.0  # fall 2 x interval 100 ms, then the publish and the close
                # the table without it was out first: a client that reconnects at once is
                # served by the other backend
                again, name = session(port)
                with again:
                    assert name == "b" and echoes(again, b"moved on")
                assert echoes(open_["b"], b"still here")  # the other backend's session stays
                view = backends(cfg)
                assert view[a]["state"] == "down" and view[a]["conns_active"] == 0
                assert view[a]["sessions_shut_down"] == 1
                assert view[f"127.0.0.1:{spare.port}"]["sessions_shut_down"] == 0
            assert stop_process(proc, signal.SIGTERM) == 0
        err = proc.stderr.read().decode() if proc.stderr else ""
        down = err.index(f"backend web/{a} is DOWN")
        closed = err.index(f'backend web/{a}: closed 1 session (on_down = "shutdown_sessions")')
        assert down < closed, err
        records = [json.loads(line) for line in log.read_text().splitlines()]
        mine = [(r["backend"], r["reason"]) for r in records if r["client"] == me]
        assert mine == [(a, "backend_down")], records
    finally:
        dying.close()
        spare.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_by_default_the_session_of_the_down_backend_carries_on(impl: str,
                                                               tmp_path: Path) -> None:
    cfg, port, dying, spare, log = setup(tmp_path, "")
    a = f"127.0.0.1:{dying.port}"
    try:
        with running(cfg, impl, port) as proc:
            with sessions_on_both(port) as open_:
                assert echoes(open_["a"], b"before")
                dying.stop_listening()
                # DOWN and out of the live table: the daemon would have closed the session by
                # the time `backends` answers (the close follows the publish in the same step)
                assert wait_until(lambda: backends(cfg)[a]["effective_weight"] == 0, 10)
                assert backends(cfg)[a]["state"] == "down"
                open_["a"].settimeout(5)
                assert echoes(open_["a"], b"still relayed after DOWN")
                again, name = session(port)
                with again:
                    assert name == "b"
                # the other connections to it ended by themselves; this one is still open
                assert wait_until(lambda: backends(cfg)[a]["conns_active"] == 1, 10)
                assert backends(cfg)[a]["sessions_shut_down"] == 0
            assert stop_process(proc, signal.SIGTERM) == 0
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert f"backend web/{a} is DOWN" in err and "on_down" not in err, err
        assert "backend_down" not in log.read_text()
    finally:
        dying.close()
        spare.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_shutdown_sessions_follows_the_agent_down(impl: str, tmp_path: Path) -> None:
    """The agent of a healthy backend says `fail`: with on_down = "shutdown_sessions" its
    session is reset as for a health DOWN (logged, counted, reason backend_down), the other
    backend's session carries on."""
    from .test_agent_daemon import Agents
    cfg, port, dying, spare, log = setup(tmp_path, "")
    ports = {"a": free_port(), "b": free_port()}
    agents = Agents(list(ports.values()))
    lines = [line for line in cfg.read_text().splitlines() if "[[services.backends]]" not in
             line and "address =" not in line]
    # the test agents wait 50 ms for a `send` before they answer
    lines += ['  on_down = "shutdown_sessions"', "", "  [services.agent]",
              '  interval = "300ms"', '  timeout = "250ms"']
    for server, name in ((dying, "a"), (spare, "b")):
        lines += ["", "  [[services.backends]]", f'  address = "127.0.0.1:{server.port}"',
                  f"  agent_port = {ports[name]}"]
    cfg.write_text("\n".join(lines) + "\n")
    a = f"127.0.0.1:{dying.port}"
    try:
        with running(cfg, impl, port) as proc:
            with sessions_on_both(port) as open_:
                assert echoes(open_["a"], b"before") and echoes(open_["b"], b"before")
                host, cport = open_["a"].getsockname()
                me = f"{host}:{cport}"
                open_["a"].settimeout(10)
                agents.lines[ports["a"]] = b"fail #disk full\n"
                with pytest.raises(ConnectionResetError):
                    while open_["a"].recv(65536):
                        pass
                again, name = session(port)
                with again:
                    assert name == "b"
                assert echoes(open_["b"], b"still here")
                view = backends(cfg)
                assert view[a]["state"] == "down" and view[a]["sessions_shut_down"] == 1
            assert stop_process(proc, signal.SIGTERM) == 0
        err = proc.stderr.read().decode() if proc.stderr else ""
        said = err.index(f"backend web/{a}: agent says fail (#disk full)")
        closed = err.index(f'backend web/{a}: closed 1 session (on_down = "shutdown_sessions")')
        assert said < closed, err
        records = [json.loads(line) for line in log.read_text().splitlines()]
        assert [(r["backend"], r["reason"]) for r in records if r["client"] == me] == \
            [(a, "backend_down")], records
    finally:
        agents.shutdown()
        dying.close()
        spare.close()
