"""Integration tests of the health probes and the checker against real loopback sockets.

Targets: a listener that accepts (UP), a port bound without listen() (connection refused), a
"black hole" (a listener with backlog 0 whose accept queue is full, so the kernel drops further
SYNs and connect() hangs: an unprivileged stand-in for a host that does not answer), and small
asyncio servers for send/expect. Every test is bounded by asyncio.wait_for and closes its sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

from l4lb.health import (
    Health,
    HealthChecker,
    HealthSettings,
    ProbeEngine,
    ProbeSpec,
    Transition,
    probe_once,
    run_probe,
)

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")
TCP = HealthSettings(interval=1.0, timeout=0.3)


def run(coro: Awaitable[T], limit: float = 10.0) -> T:
    """Run a coroutine on a fresh loop, bounded in time."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro, limit)
    return asyncio.run(bounded())


def open_fds() -> frozenset[tuple[int, str]]:
    """This process's descriptors with what each is ("socket:[inode]", a path, ...). Compared
    as sets: a descriptor a test opened and left open shows up as a new pair, while one that
    another thread of the test process closed meanwhile (a lingering server of an earlier
    test) does not make the test fail, as a plain count did."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed while we looked
            out.add((int(name), os.readlink(f"/proc/self/fd/{name}")))
    return frozenset(out)


@contextlib.contextmanager
def listener(host: str = "127.0.0.1", backlog: int = 128) -> Iterator[socket.socket]:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen(backlog)
    try:
        yield s
    finally:
        s.close()


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port bound but not listening: the kernel answers SYN with RST."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port whose SYNs are dropped: backlog-0 listener, accept queue filled, never accepted."""
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):  # more than the queue holds; the extra ones hang in SYN_SENT too
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        time.sleep(0.05)  # let the fillers' handshakes settle (setup only, not a test wait)
        yield port
    finally:
        for c in fillers:
            c.close()
        lst.close()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[int]:
    async def wrapped(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await handler(r, w)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()
    srv = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        await srv.wait_closed()


def send_expect(expect: bytes | re.Pattern[bytes], send: bytes = b"PING\r\n",
                timeout: float = 0.3) -> HealthSettings:
    return HealthSettings(kind="send_expect", send=send, expect=expect, interval=1.0,
                          timeout=timeout)


# -- single probes -------------------------------------------------------------------------


def test_tcp_probe_up() -> None:
    with listener() as lst:
        res = run(probe_once("127.0.0.1", lst.getsockname()[1], TCP))
    assert res.ok and res.conclusive
    assert res.reason == "connect ok"
    assert 0 <= res.latency < 0.3


def test_tcp_probe_refused() -> None:
    with refusing_port() as port:
        res = run(probe_once("127.0.0.1", port, TCP))
    assert (res.ok, res.reason, res.conclusive) == (False, "connect refused", True)


def test_tcp_probe_timeout_on_black_hole() -> None:
    with black_hole() as port:
        t0 = time.monotonic()
        res = run(probe_once("127.0.0.1", port, HealthSettings(interval=1.0, timeout=0.2)))
        took = time.monotonic() - t0
    assert (res.ok, res.reason) == (False, "connect timeout")
    assert 0.2 <= res.latency < 0.5  # the timeout resolution is 10 ms
    assert took < 1.0


def test_tcp_probe_ipv6_and_port_override() -> None:
    try:
        cm = listener("::1")
        lst = cm.__enter__()
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    try:
        port = lst.getsockname()[1]
        with refusing_port() as closed:
            # the backend's own port refuses; the health port override points at the listener
            res = run(probe_once("::1", closed, HealthSettings(port=port, timeout=0.3)))
        assert res.ok, res
        spec = ProbeSpec.build("::1", closed, HealthSettings(port=port))
        assert str(spec) == f"[::1]:{port}"
    finally:
        cm.__exit__(None, None, None)


def test_source_address_is_used() -> None:
    with listener() as lst:
        port = lst.getsockname()[1]
        res = run(probe_once("127.0.0.1", port, HealthSettings(source="127.0.0.2")))
        assert res.ok, res
        conn, peer = lst.accept()
        conn.close()
    assert peer[0] == "127.0.0.2"


def test_missing_source_address_is_inconclusive() -> None:
    # 192.0.2.1 (TEST-NET-1) is not on this host: bind() fails before any packet is sent
    with listener() as lst:
        res = run(probe_once("127.0.0.1", lst.getsockname()[1],
                             HealthSettings(source="192.0.2.1")))
    assert not res.ok
    assert not res.conclusive
    assert "192.0.2.1" in res.reason


def test_source_family_must_match() -> None:
    with pytest.raises(ValueError, match="IPv6"):
        ProbeSpec.build("127.0.0.1", 80, HealthSettings(source="::1"))


# -- send / expect -------------------------------------------------------------------------


async def pong(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    line = await r.readline()
    w.write(b"+PONG\r\n" if line == b"PING\r\n" else b"-ERR unknown\r\n")
    await w.drain()
    await r.read()  # keep the connection until the prober closes it


async def slow_pong(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await r.readline()
    for chunk in (b"+P", b"ON", b"G\r\n"):  # the reply arrives in pieces
        w.write(chunk)
        await w.drain()
        await asyncio.sleep(0.01)
    await r.read()


async def banner(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(b"220 mail.example ESMTP ready\r\n")
    await w.drain()
    await r.read()


async def closer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await r.readline()  # read the request, then close without a word (FIN, not RST)


async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await r.read()  # read, never answer


async def partial(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await r.readline()
    w.write(b"+PO")
    await w.drain()
    await r.read()


@pytest.mark.parametrize("handler, settings, ok, reason", [
    (pong, send_expect(b"+PONG"), True, "expect matched"),
    (slow_pong, send_expect(b"+PONG\r\n"), True, "expect matched"),
    (pong, send_expect(b"+PONG", send=b"HELLO\r\n"), False,
     "expect mismatch: got b'-ERR unknown\\r\\n'"),
    (banner, send_expect(re.compile(rb"^220 .*ESMTP"), send=b""), True, "expect matched"),
    (banner, send_expect(re.compile(rb"^421 "), send=b""), False, None),
    (closer, send_expect(b"+PONG"), False, "connection closed"),
    (silent, send_expect(b"+PONG", timeout=0.2), False, "read timeout"),
    (partial, send_expect(b"+PONG", timeout=0.2), False, "read timeout (got b'+PO')"),
])
def test_send_expect(handler: Handler, settings: HealthSettings, ok: bool,
                     reason: str | None) -> None:
    async def go() -> tuple[bool, str]:
        async with server(handler) as port:
            res = await probe_once("127.0.0.1", port, settings)
            return res.ok, res.reason
    got_ok, got_reason = run(go())
    assert got_ok is ok, got_reason
    if reason is not None:
        assert got_reason == reason
    else:
        # regex mismatch: only seen when the server closes or the read limit is reached; this
        # server keeps the connection open, so the probe ends by timing out with what it got
        assert got_reason.startswith("read timeout (got b'220 mail"), got_reason


def test_send_expect_refused_is_a_connect_failure() -> None:
    with refusing_port() as port:
        res = run(probe_once("127.0.0.1", port, send_expect(b"+PONG")))
    assert (res.ok, res.reason) == (False, "connect refused")


def test_engine_runs_many_probes_and_closes_every_socket() -> None:
    before = open_fds()

    async def go() -> list[str]:
        engine = ProbeEngine()
        try:
            with listener() as up, refusing_port() as down:
                specs = [ProbeSpec.build("127.0.0.1", up.getsockname()[1], TCP),
                         ProbeSpec.build("127.0.0.1", down, TCP)] * 100
                results = await asyncio.gather(*(run_probe(s, engine) for s in specs))
        finally:
            engine.close()
        return [r.reason for r in results]

    reasons = run(go())
    assert reasons == ["connect ok", "connect refused"] * 100
    assert open_fds() <= before


def test_engine_times_out_each_probe_by_its_own_timeout() -> None:
    """Deadlines sit in one FIFO per timeout value: a short-timeout probe started after a
    long-timeout one still times out first, and finished queues are dropped."""
    before = open_fds()

    async def go() -> tuple[list[tuple[str, float]], int]:
        engine = ProbeEngine()
        got: list[tuple[str, float]] = []
        done = asyncio.Event()

        def record(name: str, res: object) -> None:
            assert isinstance(res, tuple)
            got.append((name, res[2]))
            if len(got) == 3:
                done.set()

        with black_hole() as port:
            slow = HealthSettings(interval=1.0, timeout=0.4)
            fast = HealthSettings(interval=1.0, timeout=0.1)
            engine.start(ProbeSpec.build("127.0.0.1", port, slow), record, "slow")
            engine.start(ProbeSpec.build("127.0.0.1", port, fast), record, "fast1")
            engine.start(ProbeSpec.build("127.0.0.1", port, fast), record, "fast2")
            await asyncio.wait_for(done.wait(), 3.0)
            queues = len(engine._deadlines)
        engine.close()
        return got, queues

    got, queues = run(go())
    assert [name for name, _ in got] == ["fast1", "fast2", "slow"]
    assert 0.1 <= got[0][1] < 0.3
    assert 0.4 <= got[2][1] < 0.6
    assert queues == 0  # every queue emptied and dropped
    assert open_fds() <= before


def test_a_raising_callback_does_not_stop_the_other_probes(
        caplog: pytest.LogCaptureFixture) -> None:
    """Results of completed tcp handshakes are delivered inline in the epoll callback; one
    callback that raises is logged and the probes of the same batch still report."""
    before = open_fds()

    async def go() -> list[str]:
        engine = ProbeEngine()
        got: list[str] = []
        done = asyncio.Event()

        def record(name: str, res: object) -> None:
            assert isinstance(res, tuple)
            if name == "bad":
                raise RuntimeError("broken callback")
            got.append(f"{name}: {res[1]}")
            if len(got) == 4:
                done.set()

        with listener() as lst:
            spec = ProbeSpec.build("127.0.0.1", lst.getsockname()[1], TCP)
            for name in ("a", "b", "bad", "c", "d"):
                engine.start(spec, record, name)
            await asyncio.wait_for(done.wait(), 3.0)
            left = engine.in_flight
        engine.close()
        return [*sorted(got), f"in flight {left}"]

    assert run(go()) == ["a: connect ok", "b: connect ok", "c: connect ok", "d: connect ok",
                         "in flight 0"]
    assert "health probe callback failed" in caplog.text
    assert open_fds() <= before


def test_cancelled_probe_never_reports_and_frees_its_socket() -> None:
    before = open_fds()

    async def go() -> list[object]:
        engine = ProbeEngine()
        got: list[object] = []
        with black_hole() as port:
            handle = engine.start(ProbeSpec.build("127.0.0.1", port, TCP),
                                  lambda tok, res: got.append(res), None)
            assert engine.in_flight == 1
            handle.cancel()
            assert engine.in_flight == 0
            await asyncio.sleep(0.4)  # past the 0.3 s timeout: no late result either
        engine.close()
        return got

    assert run(go()) == []
    assert open_fds() <= before


# -- the checker ---------------------------------------------------------------------------


def test_checker_takes_dead_backends_down_after_fall_and_back_up_after_rise() -> None:
    """50 backends; 10 of them stop listening, go DOWN after `fall` failed probes, start
    listening again on the same ports and come back UP after `rise` passed probes."""
    st = HealthSettings(interval=0.1, timeout=0.05, rise=2, fall=3, jitter=0.1)
    before = open_fds()

    async def go() -> dict[str, object]:
        listeners = []
        for _ in range(50):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            s.listen(64)
            listeners.append(s)
        ports = [s.getsockname()[1] for s in listeners]
        events: list[tuple[int, Transition]] = []
        changed = asyncio.Event()

        def on_transition(key: int, tr: Transition) -> None:
            events.append((key, tr))
            changed.set()

        chk: HealthChecker[int] = HealthChecker(on_transition)
        for i, port in enumerate(ports):
            chk.add(i, "127.0.0.1", port, st)
        chk.start()
        try:
            # let every backend pass a probe first (confirmed UP: now `fall` applies)
            deadline = time.monotonic() + 3.0
            while not all(chk.snapshot(i).confirmed for i in range(50)):
                assert time.monotonic() < deadline, "backends never confirmed"
                await asyncio.sleep(0.02)
            assert events == []
            dead = set(range(0, 50, 5))
            for i in dead:
                listeners[i].close()  # now the port refuses
            killed_at = time.monotonic()
            while len(events) < len(dead):
                await asyncio.wait_for(changed.wait(), 3.0)
                changed.clear()
            down_after = time.monotonic() - killed_at
            downs = list(events)
            events.clear()
            for i in dead:  # listen again on the same port
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", ports[i]))
                s.listen(64)
                listeners[i] = s
            revived_at = time.monotonic()
            while len(events) < len(dead):
                await asyncio.wait_for(changed.wait(), 3.0)
                changed.clear()
            up_after = time.monotonic() - revived_at
            await asyncio.sleep(0.3)  # three more intervals: nothing else may change
            return {"downs": downs, "ups": list(events), "down_after": down_after,
                    "up_after": up_after, "states": [chk.state(i) for i in range(50)],
                    "dead": dead, "stats": chk.stats()}
        finally:
            chk.stop()
            for s in listeners:
                s.close()

    r = run(go(), limit=15.0)
    dead = r["dead"]
    downs = r["downs"]
    ups = r["ups"]
    assert isinstance(downs, list) and isinstance(ups, list) and isinstance(dead, set)
    assert sorted(k for k, _ in downs) == sorted(dead)
    for _, tr in downs:
        assert (tr.old, tr.new) == (Health.UP, Health.DOWN)
        assert tr.reason == "connect refused (3/3 probes failed)"
    assert sorted(k for k, _ in ups) == sorted(dead)
    for _, tr in ups:
        assert tr.reason == "connect ok (2/2 probes passed)"
    assert r["states"] == [Health.UP] * 50
    # 3 failures need at least 2 full intervals (x 0.9 jitter) after the first one
    assert isinstance(r["down_after"], float) and 0.18 <= r["down_after"] < 2.0
    assert isinstance(r["up_after"], float) and 0.09 <= r["up_after"] < 2.0
    assert open_fds() <= before


class NoJitter(random.Random):
    """First probes due at once, intervals exactly as configured."""

    def uniform(self, a: float, b: float) -> float:
        return a

    def random(self) -> float:
        return 0.5


def test_checker_passive_failures_and_remove() -> None:
    st = HealthSettings(interval=0.2, timeout=0.1, max_fails=3, fail_timeout=5.0)
    slow = HealthSettings(interval=2.0, timeout=2.0)  # its probe stays in flight for 2 s

    async def go() -> tuple[list[tuple[str, Transition]], int, int]:
        events: list[tuple[str, Transition]] = []
        chk: HealthChecker[str] = HealthChecker(lambda k, t: events.append((k, t)),
                                                rng=NoJitter())
        with listener() as a, black_hole() as hole:
            chk.add("a", "127.0.0.1", a.getsockname()[1], st)
            chk.add("hole", "127.0.0.1", hole, slow)
            chk.start()
            chk.passive_failures("a", 2)
            chk.passive_failures("unknown", 5)  # ignored
            assert events == []
            chk.passive_failures("a", 1)
            await asyncio.sleep(0.05)  # both first probes started; the hole's one hangs
            in_flight_before = chk.stats().in_flight
            chk.remove("hole")
            in_flight_after = chk.stats().in_flight
            await asyncio.sleep(0.5)
            chk.stop()
            return events, in_flight_before, in_flight_after

    events, before, after = run(go())
    key, tr = events[0]
    assert key == "a"
    assert tr.passive and tr.new is Health.DOWN
    assert tr.reason == "3 failed connects within 5s (passive, max_fails 3)"
    # "a" is really alive: active probes bring it back; "hole" was removed, reports nothing
    assert [(k, t.new) for k, t in events[1:]] == [("a", Health.UP)]
    assert before - after == 1


def test_checker_spreads_probes_and_keeps_the_loop_responsive() -> None:
    """500 backends at a 0.5 s interval for 1.5 s: every backend is probed, none flips, and the
    checker's own callbacks leave a 5 ms sleeper on time (generous bound for shared CI)."""
    st = HealthSettings(interval=0.5, timeout=0.25)

    async def go() -> tuple[int, int, float, int]:
        events: list[object] = []
        chk: HealthChecker[int] = HealthChecker(lambda k, t: events.append(t))
        with listener(backlog=4096) as lst:
            port = lst.getsockname()[1]
            lst.setblocking(False)
            loop = asyncio.get_running_loop()

            def drain() -> None:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        lst.accept()[0].close()
            loop.add_reader(lst.fileno(), drain)
            for i in range(500):
                chk.add(i, "127.0.0.1", port, st)
            chk.start()
            lags = []
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                t0 = time.monotonic()
                await asyncio.sleep(0.005)
                lags.append(time.monotonic() - t0 - 0.005)
            stats = chk.stats()
            probed = sum(1 for i in range(500) if chk.snapshot(i).last_probe_at is not None)
            chk.stop()
            loop.remove_reader(lst.fileno())
        lags.sort()
        return stats.probes, probed, lags[len(lags) // 2], len(events)

    probes, probed, median_lag, transitions = run(go())
    assert probed == 500
    assert 1000 <= probes <= 2000  # ~3 intervals x 500, first interval spread at random
    assert transitions == 0
    assert median_lag < 0.02


def test_checker_reload_keeps_state_and_a_new_target_starts_afresh() -> None:
    async def go() -> list[object]:
        events: list[tuple[str, Transition]] = []
        chk: HealthChecker[str] = HealthChecker(lambda k, t: events.append((k, t)),
                                                rng=NoJitter())
        out: list[object] = []
        with refusing_port() as closed, listener() as lst:
            chk.add("b", "127.0.0.1", closed, HealthSettings(interval=0.1, timeout=0.05))
            chk.start()
            await asyncio.sleep(0.05)
            out.append(chk.state("b"))  # first probe refused: DOWN at once
            # reload with other settings, same target: state and schedule are kept
            chk.add("b", "127.0.0.1", closed, HealthSettings(interval=0.2, timeout=0.05, rise=5))
            out.append(chk.state("b"))
            out.append(chk.snapshot("b").rise)
            # the backend moved to another port: a new backend, UP (unconfirmed) again
            chk.add("b", "127.0.0.1", lst.getsockname()[1], HealthSettings(interval=0.1,
                                                                            timeout=0.05))
            out.append(chk.snapshot("b").describe())
            await asyncio.sleep(0.05)
            out.append(chk.snapshot("b").describe())
            chk.stop()
        out.append([(k, t.new, t.reason) for k, t in events])
        return out

    assert run(go()) == [
        Health.DOWN, Health.DOWN, 5, "UP (unconfirmed)", "UP",
        [("b", Health.DOWN, "connect refused (no probe has passed yet)")],
    ]


def test_checker_probes_down_backends_at_down_interval() -> None:
    async def go() -> tuple[int, int]:
        chk: HealthChecker[str] = HealthChecker(lambda k, t: None, rng=NoJitter())
        with refusing_port() as a, refusing_port() as b:
            chk.add("slow", "127.0.0.1", a,
                    HealthSettings(interval=0.05, timeout=0.04, down_interval=1.0))
            chk.add("fast", "127.0.0.1", b, HealthSettings(interval=0.05, timeout=0.04))
            chk.start()
            await asyncio.sleep(0.3)
            # failures go on counting while DOWN (the transition itself reset the count)
            slow, fast = chk.snapshot("slow").failures, chk.snapshot("fast").failures
            chk.stop()
        return slow, fast

    slow, fast = run(go())
    assert slow == 0  # DOWN after its first probe; the next one is due only after 1 s
    assert fast >= 3  # probed every 50 ms while DOWN


def test_checker_never_counts_inconclusive_probes() -> None:
    async def go() -> tuple[str, int, int]:
        chk: HealthChecker[str] = HealthChecker(lambda k, t: None, rng=NoJitter())
        with listener() as lst:
            # the source address is not on this host: every probe fails locally
            chk.add("b", "127.0.0.1", lst.getsockname()[1],
                    HealthSettings(interval=0.05, timeout=0.04, source="192.0.2.1"))
            chk.start()
            await asyncio.sleep(0.3)
            stats = chk.stats()
            desc = chk.snapshot("b").describe()
            chk.stop()
        return desc, stats.inconclusive, stats.transitions

    desc, inconclusive, transitions = run(go())
    assert desc == "UP (unconfirmed)"
    assert inconclusive >= 3
    assert transitions == 0


def test_inconclusive_probe_warning_names_the_backend_first(
        caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        chk: HealthChecker[tuple[str, str]] = HealthChecker(lambda k, t: None, rng=NoJitter())
        with listener() as lst:
            port = lst.getsockname()[1]
            chk.add(("web", "127.0.0.1:80"), "127.0.0.1", port,
                    HealthSettings(interval=0.05, timeout=0.04, source="192.0.2.1"))
            chk.start()
            await asyncio.sleep(0.2)
            chk.stop()

    with caplog.at_level(logging.WARNING):
        run(go())
    lines = [r.getMessage() for r in caplog.records if "could not be made" in r.getMessage()]
    assert lines and lines[0].startswith("backend web/127.0.0.1:80: probe of 127.0.0.1:")


def test_checker_keeps_the_last_conclusive_probe_latency() -> None:
    async def go() -> tuple[dict[str, float], float | None, float | None]:
        chk: HealthChecker[str] = HealthChecker(lambda k, t: None, rng=NoJitter())
        with listener() as lst, black_hole() as hole:
            chk.add("up", "127.0.0.1", lst.getsockname()[1],
                    HealthSettings(interval=0.1, timeout=0.1))
            chk.add("hole", "127.0.0.1", hole, HealthSettings(interval=0.1, timeout=0.1))
            chk.add("local", "127.0.0.1", lst.getsockname()[1],
                    HealthSettings(interval=0.1, timeout=0.1, source="192.0.2.1"))
            before = chk.latency("up")
            chk.start()
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline and len(chk.latencies()) < 2:
                await asyncio.sleep(0.02)
            latencies = chk.latencies()
            local = chk.latency("local")
            chk.stop()
        return latencies, before, local

    latencies, before, local = run(go())
    assert before is None  # nothing before the first probe
    assert set(latencies) == {"up", "hole"}  # inconclusive probes leave "local" without one
    assert local is None
    assert 0.0 < latencies["up"] < 0.1
    assert 0.09 <= latencies["hole"] < 1.0  # a timeout counts: its latency is the timeout
