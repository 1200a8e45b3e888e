"""The agent poller (l4lb.health.agent) against asyncio agents on loopback, in one loop: replies
written in pieces, the timeout with and without a partial line, an over-long line, the bound on
polls in flight, answering agents keeping their pace while many hang, the interval between
polls, and add/remove keeping or dropping the state."""

from __future__ import annotations

import asyncio
import functools
import random
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from l4lb.config.model import AgentSettings
from l4lb.health.agent import AgentPoller
from l4lb.health.agentreply import MAX_LINE, AgentReply
from l4lb.health.dynamic import Dynamic

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 30.0))
    return run


async def agent(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


def replying(*pieces: bytes, pause: float = 0.0) -> Handler:
    async def handle(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        writer.close()
    return handle


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[Any, Dynamic, Dynamic, AgentReply]] = []

    def __call__(self, key: Any, old: Dynamic, new: Dynamic, reply: AgentReply) -> None:
        self.changes.append((key, old, new, reply))


async def until(pred: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not pred():
        assert loop.time() < deadline
        await asyncio.sleep(0.01)


FAST = AgentSettings(port=1, interval=0.05, timeout=0.2)


@sync
async def test_a_reply_in_pieces_is_joined() -> None:
    server, port = await agent(replying(b"dr", b"ain 4", b"0% #slo", b"wly\nignored",
                                        pause=0.02))
    rec = Recorder()
    poller: AgentPoller[str] = AgentPoller(rec, rng=random.Random(1))
    poller.add("b", "127.0.0.1", port, FAST)
    poller.start()
    try:
        await until(lambda: bool(rec.changes))
        key, old, new, reply = rec.changes[0]
        assert old == Dynamic()
        assert (key, new.admin, new.percent, new.reason) == ("b", "drain", 40, "slowly")
        assert reply.said() == "drain 40% (#slowly)"
        view = poller.views()["b"]
        assert view["last_reply"] == "drain 40% #slowly" and view["errors"] == 0
    finally:
        poller.stop()
        server.close()


@sync
async def test_timeouts_and_over_long_lines_change_nothing_and_are_counted() -> None:
    hang, hang_port = await agent(replying(b"drain", pause=1.0))  # no line end in time
    long, long_port = await agent(replying(b"up " * (MAX_LINE // 3 + 1) + b"\n"))
    rec = Recorder()
    poller: AgentPoller[str] = AgentPoller(rec, rng=random.Random(2))
    poller.add("hang", "127.0.0.1", hang_port, FAST)
    poller.add("long", "127.0.0.1", long_port, FAST)
    poller.start()
    try:
        await until(lambda: poller.views()["hang"]["failures"] >= 2
                    and poller.views()["long"]["errors"] >= 2)
        views = poller.views()
        assert views["hang"]["last_error"] == "timeout after 5 bytes without a line end"
        assert views["long"]["last_error"] == f"line longer than {MAX_LINE - 1} bytes"
        assert views["long"]["failures"] == 0 and views["hang"]["errors"] == 0
        assert rec.changes == [] and poller.states() == {"hang": Dynamic(), "long": Dynamic()}
    finally:
        poller.stop()
        hang.close()
        long.close()


@sync
async def test_polls_in_flight_are_bounded() -> None:
    now = [0]
    peak = [0]

    async def slow(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        now[0] += 1
        peak[0] = max(peak[0], now[0])
        await asyncio.sleep(0.05)
        now[0] -= 1
        writer.write(b"up\n")
        writer.close()

    server, port = await agent(slow)
    poller: AgentPoller[int] = AgentPoller(Recorder(), max_in_flight=2, rng=random.Random(3))
    for k in range(6):
        poller.add(k, "127.0.0.1", port, AgentSettings(port=port, interval=0.02,
                                                       timeout=0.02 * 10))
    poller.start()
    try:
        await until(lambda: all(v["replies"] >= 2 for v in poller.views().values()))
        assert peak[0] == 2
    finally:
        poller.stop()
        server.close()


@sync
async def test_interval_paces_the_polls() -> None:
    server, port = await agent(replying(b"up\n"))
    poller: AgentPoller[str] = AgentPoller(Recorder(), rng=random.Random(4))
    poller.add("b", "127.0.0.1", port, AgentSettings(port=port, interval=0.1, timeout=0.1))
    poller.start()
    try:
        await asyncio.sleep(1.05)
        polls = poller.views()["b"]["polls"]
        # first poll within the first interval, then every 0.09..0.11 s
        assert 8 <= polls <= 12, polls
    finally:
        poller.stop()
        server.close()


@sync
async def test_add_keeps_the_state_and_remove_drops_it() -> None:
    server, port = await agent(replying(b"maint 20%\n"))
    rec = Recorder()
    poller: AgentPoller[str] = AgentPoller(rec, rng=random.Random(5))
    poller.add("b", "127.0.0.1", port, FAST)
    poller.start()
    try:
        await until(lambda: poller.state("b").admin == "maint")
        server.close()
        await server.wait_closed()
        # a reload: another port (refused), another interval; what the agent said stays
        poller.add("b", "127.0.0.1", port, AgentSettings(port=port, interval=0.06,
                                                         timeout=0.05))
        await until(lambda: poller.views()["b"]["consecutive_failures"] >= 2)
        assert (poller.state("b").admin, poller.state("b").percent) == ("maint", 20)
        poller.remove("b")
        assert poller.states() == {} and poller.keys() == []
        poller.add("b", "127.0.0.1", port, FAST)
        assert poller.state("b") == Dynamic()
    finally:
        poller.stop()


@sync
async def test_answering_agents_keep_their_pace_while_many_agents_hang() -> None:
    """24 agents that accept and never answer hold each of the 3 slots for their whole
    timeout; answering agents, of another service and of theirs, are still polled about
    every interval (l4lb.health.fairslots), not once per trip through the hanging ones."""
    server, port = await agent(replying(b"up\n"))
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(1024)  # never accepted: connects complete (or wait), no byte ever comes
    hang_port = int(hang.getsockname()[1])
    settings = AgentSettings(port=1, interval=0.15, timeout=0.1)
    poller: AgentPoller[tuple[str, str]] = AgentPoller(Recorder(), max_in_flight=3,
                                                       rng=random.Random(5))
    for i in range(24):
        poller.add(("hang", f"h{i}"), "127.0.0.1", hang_port, settings)
    poller.add(("hang", "ok"), "127.0.0.1", port, settings)
    poller.add(("web", "ok"), "127.0.0.1", port, settings)
    poller.start()
    try:
        await asyncio.sleep(1.0)  # every hanging agent has failed once by now
        before = {k: poller._agents[k].polls for k in (("hang", "ok"), ("web", "ok"))}
        await asyncio.sleep(1.5)  # 10 intervals
        polls = {k: poller._agents[k].polls - n for k, n in before.items()}
        assert all(n >= 6 for n in polls.values()), polls
        assert poller._agents[("hang", "h0")].failures >= 2  # the hanging ones are polled too
    finally:
        poller.stop()
        server.close()
        hang.close()


@sync
async def test_polls_leave_from_the_source_address() -> None:
    """`source` (the service's health.source, as its probes) is bound before connecting."""
    peers: list[str] = []

    async def handle(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername")[0])
        writer.write(b"up\n")
        writer.close()
    server, port = await agent(handle)
    poller: AgentPoller[str] = AgentPoller(Recorder(), rng=random.Random(6))
    poller.add("from", "127.0.0.1", port, FAST, source="127.0.0.2")
    poller.add("plain", "127.0.0.1", port, FAST)
    poller.start()
    try:
        await until(lambda: {"127.0.0.2", "127.0.0.1"} <= set(peers))
        poller.add("from", "127.0.0.1", port, FAST, source="127.0.0.3")  # a reload changes it
        await until(lambda: "127.0.0.3" in peers)
    finally:
        poller.stop()
        server.close()
