"""The metrics HTTP listener under a slowloris: per-address cap, 503 instead of a reset, a short
head timeout, and the count of refused connections."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from l4lb import httpserver
from l4lb.httpserver import HttpServer
from l4lb.metrics import Exporter

from ..integration.loopthread import GrowingStatus
from .test_review7_control import until

T = TypeVar("T")
WAIT = 5.0  # seconds any single wait in these tests may take before it counts as a failure
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def run(scenario: Callable[[HttpServer, int], Awaitable[T]]) -> T:
    """Run `scenario(server, port)` against a listener on 127.0.0.1, on one loop."""
    async def main() -> T:
        server = await httpserver.start("127.0.0.1:0", GrowingStatus(), process_metrics=False)
        try:
            async with asyncio.timeout(4 * WAIT):
                return await scenario(server, server.addresses[0][1])
        finally:
            await server.close()
    return asyncio.run(main())


async def connect(port: int, source: str = "127.0.0.1") -> Conn:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def reply_of(conn: Conn, send: bytes = b"") -> bytes:
    """Send `send`, then read the reply until the server closes ("" on a reset)."""
    reader, writer = conn
    try:
        if send:
            writer.write(send)
        async with asyncio.timeout(WAIT):
            return await reader.read()
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def status_of(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1.1 "), reply[:80]
    return int(reply.split(b" ", 2)[1])


GET = b"GET /status.json HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Held connections keep their slots however slowly the machine runs the test."""
    monkeypatch.setattr(httpserver, "HEAD_TIMEOUT", 3 * WAIT)


@pytest.mark.usefixtures("patient")
def test_ninth_connection_from_one_address_gets_503_another_address_200() -> None:
    async def scenario(server: HttpServer, port: int) -> tuple[bytes, bytes, int]:
        held = [await connect(port) for _ in range(8)]
        try:
            for _, w in held:
                w.write(b"G")  # an unfinished head holds a slot
            await until(lambda: server.connections == 8, "8 served connections")
            ninth = await reply_of(await connect(port), GET)
            other = await reply_of(await connect(port, "127.0.0.2"), GET)
            return ninth, other, server.refused_total()
        finally:
            for _, w in held:
                w.close()

    ninth, other, refused = run(scenario)
    assert status_of(ninth) == 503
    assert b"Retry-After: 1\r\n" in ninth and b"Connection: close\r\n" in ninth
    assert ninth.endswith(b"too many connections from 127.0.0.1 (8); try again later\n")
    assert status_of(other) == 200
    assert refused == 1


@pytest.mark.usefixtures("patient")
def test_a_slowloris_from_one_address_does_not_lock_out_another() -> None:
    """70 connections that each sent b"G" (the reviewer's attack): Prometheus elsewhere gets in."""
    async def scenario(server: HttpServer, port: int) -> tuple[list[int], int, int]:
        conns = [await connect(port) for _ in range(70)]
        for _, w in conns:
            w.write(b"G")
        await until(lambda: server.connections == 8, "8 served connections")
        try:
            scraped = await reply_of(await connect(port, "127.0.0.2"),
                                     b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            refusals = [status_of(await reply_of(c)) for c in conns[8:]]
            return refusals, status_of(scraped), server.refused_total()
        finally:
            for _, w in conns:
                w.close()

    refusals, scraped, refused = run(scenario)
    assert refusals == [503] * 62
    assert scraped == 200
    assert refused == 62


@pytest.mark.usefixtures("patient")
def test_connections_beyond_the_total_cap_get_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpserver, "MAX_CLIENTS", 2)

    async def scenario(server: HttpServer, port: int) -> tuple[bytes, int, int]:
        held = [await connect(port, "127.0.0.2"), await connect(port, "127.0.0.3")]
        try:
            for _, w in held:
                w.write(b"GET / HTTP/1.1\r\n")
            await until(lambda: server.connections == 2, "2 served connections")
            extra = await reply_of(await connect(port, "127.0.0.4"), GET)
        finally:
            for _, w in held:
                w.close()
        await until(lambda: server.connections == 0, "the slots to come back")
        again = await reply_of(await connect(port), GET)
        return extra, status_of(again), server.refused_total()

    extra, again, refused = run(scenario)
    assert status_of(extra) == 503
    assert extra.endswith(b"too many connections (2); try again later\n")
    assert again == 200
    assert refused == 1


@pytest.mark.usefixtures("patient")
def test_refusals_lingering_at_once_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond MAX_CLIENTS lingering refusals, a connection is dropped without a reply."""
    monkeypatch.setattr(httpserver, "MAX_CLIENTS", 1)
    monkeypatch.setattr(httpserver, "MAX_PER_PEER", 1)
    monkeypatch.setattr(httpserver, "LINGER_TIME", 3 * WAIT)  # the first refusal stays

    async def scenario(server: HttpServer, port: int) -> tuple[int, bytes, int]:
        held = await connect(port)
        held[1].write(b"G")
        await until(lambda: server.connections == 1, "1 served connection")
        first = await connect(port)  # refused, lingering: we neither read nor close yet
        await until(lambda: server.refused_total() == 1, "the first refusal")
        dropped = await reply_of(await connect(port), GET)
        head = await first[0].readuntil(b"\r\n")
        first[1].close()
        held[1].close()
        return status_of(head + b" "), dropped, server.refused_total()

    first, dropped, refused = run(scenario)
    assert first == 503
    assert dropped == b""
    assert refused == 2


def test_the_head_timeout_is_short_and_closes_an_unfinished_head(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert httpserver.HEAD_TIMEOUT <= 3.0  # a scraper sends its head at once
    monkeypatch.setattr(httpserver, "HEAD_TIMEOUT", 0.05)

    async def scenario(server: HttpServer, port: int) -> tuple[bytes, int]:
        reply = await reply_of(await connect(port), b"G")  # and nothing more
        await until(lambda: server.connections == 0, "the slot to come back")
        return reply, server.refused_total()

    reply, refused = run(scenario)
    assert status_of(reply) == 408
    assert refused == 0  # a timeout is not a refusal


@pytest.mark.parametrize(("host", "peer", "prefix"), [
    ("192.0.2.7", "192.0.2.7", None),
    ("::ffff:192.0.2.7", "192.0.2.7", None),               # a dual-stack listener's IPv4 client
    ("2001:db8:1:2::7", "2001:db8:1:2::7", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:1", "2001:db8:1:2:ffff:ffff:ffff:1", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::7", "2001:db8:1:3::7", "2001:db8:1:3::/64"),  # the next /64: another
    ("fe80::1%eth0", "fe80::1%eth0", None),                 # link-local: every host shares it
    ("::1", "::1", "::/64"),
    ("", "", None),                                         # no peer address (unix socket)
])
def test_the_caps_count_by_address_and_by_ipv6_64(host: str, peer: str,
                                                   prefix: str | None) -> None:
    assert httpserver.peer_key(host) == peer
    assert httpserver.prefix_key(host) == prefix


@pytest.mark.usefixtures("patient")
def test_one_ipv6_64_has_a_cap_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """On ::1 (a /64 of one address here) the /64's cap is what a fourth connection meets when
    it is the smaller one; the message names the /64."""
    monkeypatch.setattr(httpserver, "MAX_PER_PEER", 100)
    monkeypatch.setattr(httpserver, "MAX_PER_PREFIX", 3)

    async def scenario(server: HttpServer, port: int) -> bytes:
        held = [await asyncio.open_connection("::1", port) for _ in range(3)]
        try:
            for _, w in held:
                w.write(b"G")  # an unfinished head holds a slot
            await until(lambda: server.connections == 3, "3 served connections")
            return await reply_of(await asyncio.open_connection("::1", port), GET)
        finally:
            for _, w in held:
                w.close()

    async def main() -> bytes:
        server = await httpserver.start("[::1]:0", GrowingStatus(), process_metrics=False)
        try:
            async with asyncio.timeout(4 * WAIT):
                return await scenario(server, server.addresses[0][1])
        finally:
            await server.close()

    fourth = asyncio.run(main())
    assert status_of(fourth) == 503
    assert fourth.endswith(b"too many connections from ::/64 (3); try again later\n")


class ResetWriter:
    """The writer side of a client that reset right after the reply went out: the kernel then
    refuses the shutdown of our sending side with ENOTCONN."""

    def __init__(self) -> None:
        self.sent = b""
        self.aborted = False
        self.transport = self

    def write(self, data: bytes) -> None:
        self.sent += data

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # the transport's: drain() waits until the kernel has everything

    async def drain(self) -> None:
        return None

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))

    def abort(self) -> None:
        self.aborted = True


def test_a_client_gone_before_the_shutdown_is_dropped_quietly() -> None:
    """ENOTCONN is no ConnectionError: it used to end the connection with a logged traceback
    ("http: connection failed"), one per such client of a flood."""
    async def main() -> ResetWriter:
        server = HttpServer(Exporter(GrowingStatus(), process=False))
        reader = asyncio.StreamReader()
        reader.feed_data(GET)
        writer = ResetWriter()
        await server._serve(reader, writer)  # type: ignore[arg-type]
        return writer

    writer = asyncio.run(main())
    assert status_of(writer.sent) == 200
    assert writer.aborted
