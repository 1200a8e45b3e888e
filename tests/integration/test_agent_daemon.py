"""Agent checks ([services.agent]) in the running daemon, against real agents: tiny asyncio TCP
servers in this process, one per backend, each answering the line the test sets.

What an agent says moves the backend's effective weight in the published table (the control
API's `effective_weight` is the weight the table was built with) and where new connections
go; the operator's disable beats the agent's `ready`; `stopped` takes a backend out and `up`
brings it back; an unreachable agent changes nothing but is counted; a malformed reply is
ignored and counted; the log names the backend first; a reload keeps what the agent said for
a backend that stays and drops it for one that leaves; `l4lb backends` shows it all."""

from __future__ import annotations

import asyncio
import collections
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from l4lb.control import ControlError, request

from .procs import (
    NameServer,
    child_env,
    fetch,
    free_port,
    l4lb_cmd,
    reload_ok,
    stop_process,
    wait_listening,
)

pytestmark = pytest.mark.timeout(90)


class Agents:
    """Agent servers on loopback, on a loop in a thread of their own. `lines[port]` is what
    the agent on `port` answers (None: it closes at once without a word); `received` counts
    what they were sent. `close(port)` stops one (connections are then refused)."""

    def __init__(self, ports: list[int]) -> None:
        self.lines: dict[int, bytes | None] = {p: b"up ready 100%\n" for p in ports}
        self.received: collections.Counter[bytes] = collections.Counter()
        self.loop = asyncio.new_event_loop()
        self.servers: dict[int, asyncio.Server] = {}
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        for port in ports:
            self.open(port)

    def _call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return await fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=5)

    def open(self, port: int) -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                with_send = await asyncio.wait_for(reader.read(64), 0.05)
            except TimeoutError:
                with_send = b""
            self.received[with_send] += 1
            line = self.lines[port]
            if line is not None:
                writer.write(line)
                await writer.drain()
            writer.close()

        async def start() -> asyncio.Server:
            return await asyncio.start_server(serve, "127.0.0.1", port, reuse_address=True)
        self.servers[port] = self._call(start)

    def close(self, port: int) -> None:
        server = self.servers.pop(port)

        async def stop() -> None:
            server.close()
            await server.wait_closed()
        self._call(stop)

    def shutdown(self) -> None:
        for port in list(self.servers):
            self.close(port)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


@pytest.fixture
def backends() -> Iterator[list[NameServer]]:
    servers = [NameServer(n) for n in ("a", "b", "c")]
    yield servers
    for s in servers:
        s.close()


def config(tmp_path: Path, listen: int, servers: list[NameServer], agent_ports: list[int],
           interval: str = "100ms", agent: bool = True) -> str:
    rows = ",\n            ".join(
        f'{{ address = "127.0.0.1:{s.port}", name = "{s.name}", weight = 10'
        + (f", agent_port = {p}" if agent else "") + " }"
        for s, p in zip(servers, agent_ports, strict=True))
    text = f"""\
[global]
control_socket = "{tmp_path}/ctl.sock"
workers = 1

[[services]]
name = "web"
listen = ["127.0.0.1:{listen}"]
scheduler = "weighted_round_robin"
backends = [{rows}]
health = {{ interval = "200ms", timeout = "100ms", min_healthy = 0.0 }}
"""
    if agent:
        text += (f'agent = {{ interval = "{interval}", timeout = "100ms", '
                 'send = "{service}/{name}\\n" }\n')
    return text


def views(sock: str) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in request(sock, "backends", service="web")}


def wait_for(sock: str, pred: Callable[[dict[str, dict[str, Any]]], bool],
             timeout: float = 8.0) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = views(sock)
        if pred(got):
            return got
        assert time.monotonic() < deadline, {n: (b["state"], b["effective_weight"], b["agent"])
                                             for n, b in got.items()}
        time.sleep(0.03)


def eff(got: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {name: b["effective_weight"] for name, b in got.items()}


def spread(port: int, n: int) -> collections.Counter[str]:
    return collections.Counter(fetch(port).decode() for _ in range(n))


def test_agent_replies_move_weights_state_and_traffic(tmp_path: Path,
                                                      backends: list[NameServer]) -> None:
    ports = [free_port() for _ in backends]
    agents = Agents(ports)
    pa, pb, pc = ports
    listen = free_port()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(config(tmp_path, listen, backends, ports).replace(
        'name = "c", weight = 10', 'name = "c", weight = 10, agent_send = "c: own\\n"'))
    sock = str(tmp_path / "ctl.sock")
    log = tmp_path / "l4lb.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(),
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_listening(listen, proc)
        got = wait_for(sock, lambda g: all(b["agent"]["last_reply"] == "up ready 100%"
                                           for b in g.values()))
        assert eff(got) == {"a": 10, "b": 10, "c": 10}
        # `send` reached the agents, expanded for each backend; c's own agent_send wins
        assert agents.received[b"web/a\n"] >= 1 and agents.received[b"web/b\n"] >= 1
        assert agents.received[b"c: own\n"] >= 1 and b"web/c\n" not in agents.received

        # a percentage of the base weight, and where the connections go
        agents.lines[pa] = b"50%\n"
        got = wait_for(sock, lambda g: g["a"]["effective_weight"] == 5)
        assert got["a"]["agent"]["weight_percent"] == 50 and got["a"]["state"] == "up"
        counts = spread(listen, 50)  # 1:2:2 (a table change may shift the rotation by one)
        assert 9 <= counts["a"] <= 11 and 19 <= counts["b"] <= 21, counts

        # the agent drains b: no new connections for it
        agents.lines[pb] = b"drain #maintenance window\n"
        got = wait_for(sock, lambda g: g["b"]["state"] == "drain")
        assert eff(got) == {"a": 5, "b": 0, "c": 10}
        assert got["b"]["admin"] == "up"  # the operator's own flag is untouched
        assert got["b"]["agent"]["holds"] == "drain (#maintenance window)"
        counts = spread(listen, 30)
        assert set(counts) == {"a", "c"} and 9 <= counts["a"] <= 11, counts

        # the operator's enable is a separate flag: it cannot undo the agent's drain
        reply = request(sock, "enable", service="web", backend="b")
        assert (reply["state"], reply["agent"]) == ("drain", "drain (#maintenance window)")
        # the operator's disable is a separate flag: the agent's ready does not undo it
        request(sock, "disable", service="web", backend="b")
        agents.lines[pb] = b"ready\n"
        wait_for(sock, lambda g: g["b"]["agent"]["admin"] == "ready")
        time.sleep(0.3)  # several more polls
        got = views(sock)
        assert (got["b"]["state"], got["b"]["effective_weight"]) == ("maint", 0)
        request(sock, "enable", service="web", backend="b")
        got = wait_for(sock, lambda g: g["b"]["effective_weight"] == 10)
        assert got["b"]["state"] == "up"

        # stopped takes c out until its agent says up; a dead agent changes nothing
        agents.lines[pc] = b"stopped #deploying v2\n"
        got = wait_for(sock, lambda g: g["c"]["state"] == "down")
        assert got["c"]["effective_weight"] == 0 and got["c"]["check"]["health"] == "up"
        agents.close(pc)
        got = wait_for(sock, lambda g: g["c"]["agent"]["consecutive_failures"] >= 3)
        assert (got["c"]["state"], got["c"]["agent"]["last_error"]) == ("down",
                                                                         "connect refused")
        agents.lines[pc] = b"up\n"
        agents.open(pc)
        got = wait_for(sock, lambda g: g["c"]["state"] == "up")
        assert got["c"]["effective_weight"] == 10 and got["c"]["agent"]["failures"] >= 3

        # a malformed reply is ignored as a whole and counted
        agents.lines[pa] = b"drian 20%\n"
        got = wait_for(sock, lambda g: g["a"]["agent"]["errors"] >= 2)
        assert got["a"]["effective_weight"] == 5
        assert got["a"]["agent"]["last_error"] == "unknown word 'drian'"

        # the CLI shows it
        res = subprocess.run(l4lb_cmd("backends", "web", "-c", str(cfg)), capture_output=True,
                             text=True, env=child_env(), timeout=30, check=False)
        assert res.returncode == 0, res.stderr
        assert f"127.0.0.1:{backends[0].port}: agent 127.0.0.1:{pa}: holds 50%" in res.stdout
        assert "unknown word 'drian'" in res.stdout
    finally:
        stop_process(proc)
        agents.shutdown()
    text = log.read_text()
    a, b, c = (f"127.0.0.1:{s.port}" for s in backends)
    assert f"backend web/{a}: agent says 50%" in text, text
    assert f"backend web/{b}: agent says drain (#maintenance window)" in text
    assert f"backend web/{b}: agent says ready" in text
    assert f"backend web/{c}: agent says stopped (#deploying v2)" in text
    assert f"backend web/{c}: agent 127.0.0.1:{pc} not answering: connect refused" in text
    assert f"backend web/{c}: agent 127.0.0.1:{pc} answers again" in text
    assert f"backend web/{a}: agent reply ignored: unknown word 'drian'" in text


def test_reload_keeps_what_the_agent_said_for_backends_that_stay(
        tmp_path: Path, backends: list[NameServer]) -> None:
    ports = [free_port() for _ in backends]
    agents = Agents(ports)
    pa, _, pc = ports
    listen = free_port()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(config(tmp_path, listen, backends, ports))
    sock = str(tmp_path / "ctl.sock")
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(listen, proc)
        agents.lines[pa] = b"30%\n"
        agents.lines[pc] = b"drain\n"
        wait_for(sock, lambda g: eff(g) == {"a": 3, "b": 10, "c": 0})
        # a's agent goes away: after the reload only the state it had can explain 30%
        agents.close(pa)
        cfg.write_text(config(tmp_path, listen, backends[:2], ports[:2], interval="150ms"))
        reload_ok(cfg)
        got = views(sock)
        assert eff(got) == {"a": 3, "b": 10}
        assert got["a"]["agent"]["weight_percent"] == 30
        wait_for(sock, lambda g: g["a"]["agent"]["consecutive_failures"] >= 2)
        assert eff(views(sock)) == {"a": 3, "b": 10}
        # c comes back: its agent's drain was dropped with it, so it starts from nothing
        agents.lines[pc] = None  # closes without a word: c's agent cannot drain it again
        cfg.write_text(config(tmp_path, listen, backends, ports))
        reload_ok(cfg)
        got = views(sock)
        assert got["c"]["state"] == "up" and got["c"]["effective_weight"] == 10
        assert got["c"]["agent"]["last_reply"] is None
        # a runtime backend would have no agent port ([services.agent] has none): refused
        with pytest.raises(ControlError, match=re.escape(
                "no agent port ([services.agent] has no port and the backend no agent_port)")):
            request(sock, "add-backend", service="web", address="127.0.0.1:1")
        assert set(views(sock)) == {"a", "b", "c"}
        # no [services.agent]: nothing is polled, the base weights again
        cfg.write_text(config(tmp_path, listen, backends, ports, agent=False))
        reload_ok(cfg)
        got = views(sock)
        assert eff(got) == {"a": 10, "b": 10, "c": 10}
        assert all(b["agent"] is None for b in got.values())
    finally:
        stop_process(proc)
        agents.shutdown()
