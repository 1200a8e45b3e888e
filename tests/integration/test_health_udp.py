"""Integration tests of `kind = "udp"` probes against real loopback sockets.

Targets: a UDP responder thread that answers every datagram (or answers wrongly, stays
silent, drops the first datagram of each probe), a UDP port nothing is bound to (the kernel
answers with ICMP port unreachable, which loopback never rate-limits), IPv6 ::1, a bound
`source`, and the checker taking such a backend DOWN and UP. Every test is bounded by
asyncio.wait_for and closes its sockets; the responder threads stop in `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

from l4lb.health import (
    HealthChecker,
    HealthSettings,
    ProbeEngine,
    ProbeSpec,
    Transition,
    probe_once,
    run_probe,
)
from l4lb.health.probe import UDP_RESEND_AT

from .test_health_probes import open_fds

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")
Answer = Callable[[bytes, int], bytes | None]  # (datagram, n-th of its sender) -> reply or None


def run(coro: Awaitable[T], limit: float = 10.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, limit)
    return asyncio.run(bounded())


def udp(send: bytes = b"ping", expect: bytes | re.Pattern[bytes] | None = None,
        timeout: float = 0.3, **kw: object) -> HealthSettings:
    return HealthSettings(kind="udp", send=send, expect=expect, interval=1.0, timeout=timeout,
                          **kw)  # type: ignore[arg-type]


class Responder:
    """A UDP server thread. `answer(datagram, n)` (n: how many datagrams this sender sent so
    far, from 1) gives the reply, or None for silence. Records (datagram, sender) pairs."""

    def __init__(self, answer: Answer, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self.answer = answer
        self.seen: list[tuple[bytes, tuple[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        counts: dict[object, int] = {}
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.seen.append((data, peer[:2]))
            counts[peer] = counts.get(peer, 0) + 1
            reply = self.answer(data, counts[peer])
            if reply is not None:
                self.sock.sendto(reply, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@contextlib.contextmanager
def responder(answer: Answer, host: str = "127.0.0.1") -> Iterator[Responder]:
    r = Responder(answer, host)
    try:
        yield r
    finally:
        r.close()


def echo(prefix: bytes) -> Answer:
    return lambda data, n: prefix + data


def closed_port(host: str = "127.0.0.1") -> int:
    """A UDP port nothing is bound to a moment ago (the kernel answers ICMP port unreachable)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# -- single probes -------------------------------------------------------------------------


@pytest.mark.parametrize("expect, ok, reason", [
    (None, True, "reply received"),
    (b"PONG ping", True, "reply matched"),
    (re.compile(rb"\APONG p.ng\Z"), True, "reply matched"),
    (b"PONG pong", False, "expect mismatch: got b'PONG ping'"),
    (re.compile(rb"^HELLO"), False, "expect mismatch: got b'PONG ping'"),
])
def test_udp_probe_verdicts(expect: bytes | re.Pattern[bytes] | None, ok: bool,
                            reason: str) -> None:
    with responder(echo(b"PONG ")) as r:
        res = run(probe_once("127.0.0.1", r.port, udp(expect=expect)))
        assert (res.ok, res.reason, res.conclusive) == (ok, reason, True)
        assert res.latency < 0.2  # the first reply decides, no waiting for the timeout
        assert [data for data, _ in r.seen] == [b"ping"]  # one datagram: no resend needed


def test_empty_reply_datagram_is_a_reply() -> None:
    with responder(lambda data, n: b"") as r:
        res = run(probe_once("127.0.0.1", r.port, udp()))
        assert (res.ok, res.reason) == (True, "reply received")
        res = run(probe_once("127.0.0.1", r.port, udp(expect=b"x")))
        assert (res.ok, res.reason) == (False, "expect mismatch: got b''")


def test_closed_port_is_icmp_port_unreachable() -> None:
    started = time.monotonic()
    res = run(probe_once("127.0.0.1", closed_port(), udp(timeout=1.0)))
    assert (res.ok, res.reason, res.conclusive) == (False, "port unreachable (ICMP)", True)
    assert time.monotonic() - started < 0.5  # the ICMP error decides, not the timeout


def test_silent_backend_times_out_after_one_resend() -> None:
    with responder(lambda data, n: None) as r:
        started = time.monotonic()
        res = run(probe_once("127.0.0.1", r.port, udp(timeout=0.3)))
        took = time.monotonic() - started
        assert (res.ok, res.reason, res.conclusive) == (False, "no reply (timeout)", True)
        assert 0.29 <= took < 0.6
        time.sleep(0.05)  # the responder thread records the second datagram
        assert [data for data, _ in r.seen] == [b"ping", b"ping"]  # sent, and resent once
        assert len({peer for _, peer in r.seen}) == 1  # from the probe's one socket


def test_a_lost_datagram_is_covered_by_the_resend() -> None:
    """The first datagram of each probe is dropped (the responder ignores it): the resend at
    half the timeout gets the answer, and the latency shows the wait."""
    with responder(lambda data, n: None if n == 1 else b"late " + data) as r:
        res = run(probe_once("127.0.0.1", r.port, udp(timeout=0.4)))
        assert (res.ok, res.reason) == (True, "reply received")
        assert 0.4 * UDP_RESEND_AT - 0.01 <= res.latency < 0.4


def test_udp_probe_ipv6() -> None:
    with responder(echo(b"six "), host="::1") as r:
        res = run(probe_once("::1", r.port, udp(expect=b"six ping")))
        assert (res.ok, res.reason) == (True, "reply matched")
        assert r.seen[0][1][0] == "::1"
    res = run(probe_once("::1", closed_port("::1"), udp()))
    assert (res.ok, res.reason) == (False, "port unreachable (ICMP)")


def test_udp_probe_port_override_and_source_address() -> None:
    with responder(echo(b"")) as r:
        res = run(probe_once("127.0.0.1", 9, udp(port=r.port, source="127.0.0.2")))
        assert (res.ok, res.reason) == (True, "reply received")
        assert r.seen[0][1][0] == "127.0.0.2"


def test_unbindable_source_is_inconclusive() -> None:
    with responder(echo(b"")) as r:
        res = run(probe_once("127.0.0.1", r.port, udp(source="192.0.2.1")))
        assert not res.ok and not res.conclusive
        assert res.reason.startswith("cannot set up probe socket (192.0.2.1): ")
        assert r.seen == []


def test_source_family_must_match() -> None:
    with pytest.raises(ValueError, match=r"IPv6 but backend 127\.0\.0\.1 is IPv4"):
        ProbeSpec.build("127.0.0.1", 53, udp(source="::1"))


def test_many_udp_probes_close_every_socket() -> None:
    """Answered, refused, silent and cancelled probes on one engine leave no descriptor."""
    before = open_fds()

    async def go() -> list[str]:
        engine = ProbeEngine()
        results: list[str] = []
        done = asyncio.Event()
        with responder(echo(b"")) as up, responder(lambda d, n: None) as silent:
            specs = [ProbeSpec.build("127.0.0.1", port, udp(timeout=0.2))
                     for port in (up.port, closed_port(), silent.port) for _ in range(20)]

            def cb(_token: None, res: object) -> None:
                results.append(res.reason)  # type: ignore[attr-defined]
                if len(results) == len(specs):
                    done.set()
            handles = [engine.start(spec, cb, None) for spec in specs]
            extra = engine.start(specs[-1], cb, None)
            extra.cancel()  # never reports
            await done.wait()
            await asyncio.sleep(0.25)  # the cancelled probe's timers pass
            assert engine.in_flight == 0
            del handles
        engine.close()
        return results

    results = run(go())
    assert sorted(set(results)) == ["no reply (timeout)", "port unreachable (ICMP)",
                                    "reply received"]
    assert len(results) == 60
    assert open_fds() <= before


def test_checker_takes_a_stopped_udp_backend_down_and_back_up() -> None:
    st = HealthSettings(kind="udp", send=b"ping", expect=b"pong", interval=0.1, timeout=0.05,
                        rise=2, fall=2, jitter=0.0)

    async def go() -> list[tuple[str, str]]:
        events: list[tuple[str, str]] = []
        changed = asyncio.Event()

        def on_transition(key: int, tr: Transition) -> None:
            events.append((tr.new.value, tr.reason))
            changed.set()

        async def wait_for(n: int) -> None:
            while len(events) < n:
                changed.clear()
                await asyncio.wait_for(changed.wait(), 3.0)

        r = Responder(lambda data, n: b"pong")
        port = r.port
        chk: HealthChecker[int] = HealthChecker(on_transition)
        chk.add(0, "127.0.0.1", port, st)
        chk.start()
        try:
            deadline = time.monotonic() + 3.0
            while not chk.snapshot(0).confirmed:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            r.close()
            await wait_for(1)
            r2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            r2.bind(("127.0.0.1", port))
            r2.setblocking(False)
            loop = asyncio.get_running_loop()

            def answer() -> None:
                with contextlib.suppress(OSError):
                    _data, peer = r2.recvfrom(100)
                    r2.sendto(b"pong", peer)
            loop.add_reader(r2.fileno(), answer)
            try:
                await wait_for(2)
            finally:
                loop.remove_reader(r2.fileno())
                r2.close()
        finally:
            chk.stop()
        return events

    events = run(go())
    assert events == [("down", "port unreachable (ICMP) (2/2 probes failed)"),
                      ("up", "reply matched (2/2 probes passed)")]


def test_run_probe_with_a_shared_engine() -> None:
    async def go() -> tuple[str, str]:
        engine = ProbeEngine()
        try:
            with responder(echo(b"")) as r:
                spec = ProbeSpec.build("127.0.0.1", r.port, udp())
                a = await run_probe(spec, engine)
                b = await run_probe(ProbeSpec.build("127.0.0.1", closed_port(), udp()), engine)
            return a.reason, b.reason
        finally:
            engine.close()
    assert run(go()) == ("reply received", "port unreachable (ICMP)")
