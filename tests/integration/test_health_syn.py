"""Integration tests of the half-open (SYN) probes on loopback: verdicts, cleanliness, filter.

Needs a raw socket (root or CAP_NET_RAW); skipped otherwise. Targets: a listener (UP), a port
bound without listen() (RST: "connect refused"), and a listener whose socket filter drops every
segment (the kernel runs a listener's SO_ATTACH_FILTER before it handles the SYN, so the SYN is
discarded without an answer: a reliable, self-cleaning stand-in for a host behind a DROP rule).
Every test is bounded by asyncio.wait_for and closes its sockets and engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from l4lb.health import (
    Health,
    HealthChecker,
    HealthSettings,
    ProbeEngine,
    ProbeResult,
    ProbeSpec,
    SynProbeEngine,
    Transition,
    run_probe,
)
from l4lb.health.synprobe import (
    TCP_RST,
    TCP_SYN,
    Reply,
    _Lane,
    attach_filter,
    drain_unfiltered,
    parse_reply,
    raw_socket_problem,
)

from .procs import NameServer, child_env, free_port, l4lb_cmd, stop_process, wait_listening
from .test_cli import write_config

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.root,
    pytest.mark.skipif(raw_socket_problem() is not None,
                       reason="needs a raw socket (root or CAP_NET_RAW)"),
]

T = TypeVar("T")
SYN = HealthSettings(kind="syn", interval=1.0, timeout=0.3)
HOSTS = ["127.0.0.1", "::1"]


def run(coro: Awaitable[T], limit: float = 10.0) -> T:
    """Run a coroutine on a fresh loop, bounded in time."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro, limit)
    return asyncio.run(bounded())


def family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@contextlib.contextmanager
def listener(host: str, drop_all: bool = False) -> Iterator[socket.socket]:
    """A listening socket; drop_all: with a socket filter that discards every segment."""
    s = socket.socket(family(host), socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        if drop_all:
            attach_filter(s, [(0x06, 0, 0, 0)])  # ret #0
        s.listen(128)
        s.setblocking(False)
        yield s
    finally:
        s.close()


@contextlib.contextmanager
def refusing_port(host: str) -> Iterator[int]:
    """A port bound but not listening: the kernel answers SYN with RST."""
    s = socket.socket(family(host), socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        yield s.getsockname()[1]
    finally:
        s.close()


def syn_recv_count(port: int) -> int:
    """Half-open (SYN-RECV) connections on local port `port`, by ss."""
    out = subprocess.run(["ss", "-Htan", "state", "syn-recv", f"( sport = :{port} )"],
                         capture_output=True, text=True, timeout=5, check=True).stdout
    return len([line for line in out.splitlines() if line.strip()])


def wait_no_syn_recv(port: int, limit: float = 2.0) -> int:
    """Poll (bounded) until no half-open connection is left on `port`; the last count."""
    deadline = time.monotonic() + limit
    while True:
        n = syn_recv_count(port)
        if n == 0 or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


def assert_never_accepted(lst: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        conn, _ = lst.accept()
        conn.close()


# -- single probes -------------------------------------------------------------------------

@pytest.mark.parametrize("host", HOSTS)
def test_listening_port_is_up_and_leaves_nothing_behind(host: str) -> None:
    with listener(host) as lst:
        port = lst.getsockname()[1]
        spec = ProbeSpec.build(host, port, SYN)

        async def probe_three() -> list[ProbeResult]:
            engine = ProbeEngine()
            try:
                return [await run_probe(spec, engine) for _ in range(3)]
            finally:
                engine.close()

        results = run(probe_three())
        assert [(r.ok, r.reason, r.conclusive) for r in results] == [(True, "syn-ack", True)] * 3
        assert all(0 <= r.latency < SYN.timeout for r in results)
        # our kernel answered the SYN-ACK with RST: no half-open entry stays on the backend
        assert wait_no_syn_recv(port) == 0
        assert_never_accepted(lst)


@pytest.mark.parametrize("host", HOSTS)
def test_closed_port_is_refused(host: str) -> None:
    with refusing_port(host) as port:
        res = run(run_probe(ProbeSpec.build(host, port, SYN)))
    assert (res.ok, res.reason, res.conclusive) == (False, "connect refused", True)


@pytest.mark.parametrize("host", HOSTS)
def test_dropped_syn_times_out(host: str) -> None:
    with listener(host, drop_all=True) as lst:
        port = lst.getsockname()[1]
        t0 = time.monotonic()
        res = run(run_probe(ProbeSpec.build(host, port, SYN)))
        took = time.monotonic() - t0
        assert (res.ok, res.reason, res.conclusive) == (False, "connect timeout", True)
        assert SYN.timeout <= took < SYN.timeout + 0.5
        assert syn_recv_count(port) == 0  # the SYN never reached the listener
        assert_never_accepted(lst)


def test_source_address_is_used() -> None:
    settings = HealthSettings(kind="syn", interval=1.0, timeout=0.3, source="127.0.0.1")
    with listener("127.0.0.1") as lst:
        res = run(run_probe(ProbeSpec.build("127.0.0.1", lst.getsockname()[1], settings)))
    assert (res.ok, res.reason) == (True, "syn-ack")


def test_unroutable_source_is_inconclusive() -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface: the probe cannot be made at all
    settings = HealthSettings(kind="syn", interval=1.0, timeout=0.3, source="192.0.2.1")
    res = run(run_probe(ProbeSpec.build("127.0.0.1", 9, settings)))
    assert not res.ok and not res.conclusive
    assert "cannot" in res.reason


# -- the engine ----------------------------------------------------------------------------

def test_reserved_ports_are_owned_and_released() -> None:
    async def scenario() -> dict[Any, list[int]]:
        engine = SynProbeEngine()
        try:
            with listener("127.0.0.1") as lst:
                spec = ProbeSpec.build("127.0.0.1", lst.getsockname()[1], SYN)
                done: asyncio.Future[ProbeResult] = asyncio.get_running_loop().create_future()
                engine.start(spec, lambda _t, r: done.set_result(r), None)
                assert (await done).ok
            ports = engine.reserved_ports()
            for port in ports[socket.AF_INET, None]:
                s = socket.socket()
                with pytest.raises(OSError) as exc:
                    s.bind(("127.0.0.1", port))
                s.close()
                assert exc.value.errno == errno.EADDRINUSE
            return ports
        finally:
            engine.close()

    ports = run(scenario())
    assert len(ports[socket.AF_INET, None]) >= 1
    for port in ports[socket.AF_INET, None]:  # free again after close()
        s = socket.socket()
        s.bind(("127.0.0.1", port))
        s.close()


def test_cancelled_probe_never_calls_back() -> None:
    async def scenario() -> list[ProbeResult]:
        engine = SynProbeEngine()
        got: list[ProbeResult] = []
        try:
            with listener("127.0.0.1", drop_all=True) as hole:
                handle = engine.start(ProbeSpec.build("127.0.0.1", hole.getsockname()[1], SYN),
                                      lambda _t, r: got.append(r), None)
                assert engine.in_flight == 1
                handle.cancel()
                assert engine.in_flight == 0
                await asyncio.sleep(SYN.timeout + 0.1)  # past the deadline: still no callback
                return got
        finally:
            engine.close()

    assert run(scenario()) == []


@pytest.mark.parametrize("host", HOSTS)
def test_filter_keeps_other_traffic_away_from_the_raw_socket(host: str) -> None:
    # A lane without an engine: nothing reads its raw socket, so whatever passes the filter
    # stays queued there. Unrelated loopback TCP traffic (handshakes with SYN, data, RST
    # because the server closes with unread data) must leave nothing. (Another program on
    # this host may still send a SYN to one of our ports, e.g. one that picked it as a "free
    # port" before we bound it; such segments are legitimately let through, so they are told
    # apart by port rather than counted.)
    fam = family(host)
    lane = _Lane(fam, None, 2)
    raw = lane.raw
    assert raw is not None
    try:
        with listener(host) as lst:
            lst.setblocking(True)
            port = lst.getsockname()[1]
            for _ in range(20):
                c = socket.create_connection((host, port), timeout=2)
                conn, _ = lst.accept()
                c.sendall(b"x" * 1000)
                conn.close()  # unread data: the server sends RST
                c.close()
            c = socket.create_connection((host, port), timeout=2)  # a last one that stays
            conn, peer = lst.accept()
            client_ports = {peer[1]}
            conn.close()
            c.close()
        raw.setblocking(False)
        seen: list[Reply] = []
        with contextlib.suppress(BlockingIOError):
            while True:
                data, addr = raw.recvfrom(256)
                peer_ip = socket.inet_pton(fam, addr[0].split("%", 1)[0])
                reply = parse_reply(data, fam, peer_ip)
                assert reply is not None
                seen.append(reply)
    finally:
        lane.close()
    assert all(r.our_port in lane.ports and r.flags & (TCP_SYN | TCP_RST) for r in seen), seen
    assert not [r for r in seen if port in (r.peer_port, r.our_port) or
                client_ports & {r.peer_port, r.our_port}], seen


@pytest.mark.parametrize("host", HOSTS)
def test_drain_unfiltered_empties_a_raw_socket_without_filter(host: str) -> None:
    # What a new lane's raw socket queued before its filter was attached: here a raw socket
    # that never gets one, and loopback traffic that it copies. _Lane drains right after
    # attaching its filter, so these would otherwise be counted as strays.
    fam = family(host)
    raw = socket.socket(fam, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.IPPROTO_TCP)
    try:
        with listener(host) as lst:
            lst.setblocking(True)
            for _ in range(3):
                c = socket.create_connection((host, lst.getsockname()[1]), timeout=2)
                conn, _ = lst.accept()
                conn.close()
                c.close()
        time.sleep(0.05)  # the last FIN/ACKs are delivered in softirq
        assert drain_unfiltered(raw) >= 9  # 3 x (SYN, SYN-ACK, ACK) at least
        with pytest.raises(BlockingIOError):
            raw.recv(256)
    finally:
        raw.close()


def test_many_probes_in_flight_all_answered() -> None:
    async def scenario() -> list[ProbeResult]:
        engine = ProbeEngine()
        results: list[ProbeResult] = []
        try:
            with listener("127.0.0.1") as lst, refusing_port("127.0.0.1") as closed:
                up = ProbeSpec.build("127.0.0.1", lst.getsockname()[1], SYN)
                down = ProbeSpec.build("127.0.0.1", closed, SYN)
                done = asyncio.Event()

                def cb(_t: None, r: ProbeResult) -> None:
                    results.append(r)
                    if len(results) == 400:
                        done.set()

                for i in range(400):
                    engine.start(up if i % 2 else down, cb, None)
                await asyncio.wait_for(done.wait(), 5)
                assert wait_no_syn_recv(lst.getsockname()[1]) == 0
                assert_never_accepted(lst)
                return results
        finally:
            engine.close()

    results = run(scenario())
    assert sorted({r.reason for r in results}) == ["connect refused", "syn-ack"]
    assert sum(r.ok for r in results) == 200


# -- through the checker -------------------------------------------------------------------

def test_checker_with_syn_probes_reports_up_and_down() -> None:
    settings = HealthSettings(kind="syn", interval=0.05, timeout=0.04, rise=1, fall=1,
                              jitter=0.0, initial_state="down")

    async def scenario() -> tuple[dict[str, list[Transition]], dict[str, Health]]:
        seen: dict[str, list[Transition]] = {}
        checker: HealthChecker[str] = HealthChecker(
            lambda k, t: seen.setdefault(k, []).append(t))
        with listener("127.0.0.1") as up, refusing_port("127.0.0.1") as closed, \
                listener("::1", drop_all=True) as hole:
            checker.add("up", "127.0.0.1", up.getsockname()[1], settings)
            checker.add("closed", "127.0.0.1", closed, settings)
            checker.add("hole", "::1", hole.getsockname()[1],
                        HealthSettings(kind="syn", interval=0.05, timeout=0.04, rise=1,
                                       fall=1, jitter=0.0))
            checker.start()
            try:
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline and \
                        ("up" not in seen or "hole" not in seen or
                         checker.stats().probes < 12):
                    await asyncio.sleep(0.02)
                states = {k: checker.state(k) for k in ("up", "closed", "hole")}
                stats = checker.stats()
            finally:
                checker.stop()
            assert stats.inconclusive == 0
            assert_never_accepted(up)
            return seen, states

    seen, states = run(scenario())
    assert states == {"up": Health.UP, "closed": Health.DOWN, "hole": Health.DOWN}
    assert seen["up"][0].new is Health.UP and seen["up"][0].reason.startswith("syn-ack")
    assert seen["hole"][0].new is Health.DOWN
    assert seen["hole"][0].reason.startswith("connect timeout")
    assert "closed" not in seen  # started DOWN, stayed DOWN


# -- in the daemon -------------------------------------------------------------------------

def test_daemon_takes_a_dead_backend_out_with_syn_probes(
        tmp_path: Path, name_servers: list[NameServer]) -> None:
    health = """
  [services.health]
  kind = "syn"
  interval = "100ms"
  timeout = "50ms"
  rise = 2
  fall = 2
  jitter = 0.0
"""
    port = free_port()
    cfg = write_config(tmp_path, port, [s.port for s in name_servers], extra=health)
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        b2 = f"127.0.0.1:{name_servers[1].port}"
        name_servers[1].close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            res = subprocess.run(l4lb_cmd("backends", "web", "--json", "-c", str(cfg)),
                                 capture_output=True, text=True, env=child_env(), timeout=30)
            if f'"{b2}"' in res.stdout and '"down"' in res.stdout:
                break
            time.sleep(0.05)
        assert stop_process(proc, signal.SIGTERM) == 0
    finally:
        stop_process(proc, signal.SIGKILL)
    err = proc.stderr.read().decode() if proc.stderr else ""
    # "(2/2 probes failed)", or "(no probe has passed yet)" if it died before its first probe
    assert f"backend web/{b2} is DOWN: connect refused (" in err, err
    for s in (name_servers[0], name_servers[2]):
        assert f"backend web/127.0.0.1:{s.port} is DOWN" not in err, err
