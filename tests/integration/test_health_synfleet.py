"""One test suite for both SYN fleets (the C `SynFleet` and the Python twin `PySynFleet`).

Every fleet test runs twice (`impl`: "c" and "py"). The clock is fake (`run(now_ns)` takes the
time; nothing sleeps) while the packets are real: loopback SYNs from a BPF-filtered raw socket
(root or CAP_NET_RAW; skipped otherwise). Replies of a run are waited for with select() on the
lane socket, bounded. Targets: a listener (UP), a port bound without listen() (RST), a listener
whose socket filter drops every segment (no answer: timeouts, and a quiet target for forged
replies). "c" FAILS when the extension does not import, unless L4LB_NO_EXTENSIONS=1 (then it
skips), like tests/dataplane.
"""

from __future__ import annotations

import asyncio
import errno
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from l4lb.dataplane import NO_EXTENSIONS_ENV, reference_requested
from l4lb.health import Health, HealthChecker, HealthSettings, Transition
from l4lb.health.synfleet import (
    LOCAL_ERROR,
    NO_EVENT,
    QUIET,
    REFUSED,
    RESULT,
    TIMEOUT,
    UP,
    Fleet,
    make_fleet,
    scaled_interval,
    splitmix64,
)
from l4lb.health.synprobe import (
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    _Lane,
    attach_filter,
    bpf_program,
    drain_unfiltered,
    tcp_checksum,
)

from .test_health_syn import listener, pytestmark, refusing_port, run  # noqa: F401 (markers)

LO = socket.inet_aton("127.0.0.1")
LO6 = socket.inet_pton(socket.AF_INET6, "::1")
T0 = 1_000_000_000_000  # fake clock start, ns
MS = 1_000_000


def _check_impl(impl: str) -> None:
    if impl == "c":
        if reference_requested():
            pytest.skip(f"{NO_EXTENSIONS_ENV}=1: the compiled fleet is not tested")
        try:
            from l4lb._dataplane import SynFleet  # noqa: F401
        except ImportError as exc:
            pytest.fail(f"l4lb._dataplane.SynFleet does not import ({exc})", pytrace=False)


class Rig:
    """A fleet with one IPv4 lane (id 0) and one IPv6 lane (id 1) on loopback."""

    def __init__(self, impl: str, seed: int = 7, max_results: int = 1024) -> None:
        self.lanes = [_Lane(socket.AF_INET, None, 4), _Lane(socket.AF_INET6, None, 4)]
        self.fleet: Fleet = make_fleet(impl, seed, max_results)
        for i, lane in enumerate(self.lanes):
            assert lane.raw is not None  # _Lane drained what came before its filter
            self.fleet.add_lane(i, lane.family, lane.raw.fileno(), lane.ports)

    def add(self, tid: int, port: int, *, v6: bool = False, timeout_ms: int = 300,
            interval_ms: int = 1000, jitter_ppm: int = 0, due: int = T0,
            dst: bytes | None = None) -> None:
        addr = LO6 if v6 else LO
        self.fleet.add_target(tid, 1 if v6 else 0, dst or addr, port, addr, 0, timeout_ms,
                              interval_ms, jitter_ppm, due)

    def run(self, now: int, wait: bool = False) -> list[tuple[int, int, int, int]]:
        """One run; wait: first wait (bounded) until a lane socket is readable."""
        if wait:
            fds = [lane.raw.fileno() for lane in self.lanes if lane.raw is not None]
            select.select(fds, [], [], 2.0)
        buf, self.next_due = self.fleet.run(now)
        return list(RESULT.iter_unpack(buf))

    def close(self) -> None:
        self.fleet.close()
        for lane in self.lanes:
            lane.close()


@pytest.fixture(params=["c", "py"])
def impl(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    _check_impl(name)
    return name


@pytest.fixture
def rig(impl: str) -> Iterator[Rig]:
    r = Rig(impl)
    try:
        yield r
    finally:
        r.close()


def forged(src_port: int, dst_port: int, seq: int, ack: int, flags: int) -> bytes:
    """A TCP header from 127.0.0.1:src_port to 127.0.0.1:dst_port with a correct checksum."""
    hdr = struct.pack("!HHIIBBHHH", src_port, dst_port, seq, ack, 5 << 4, flags, 1024, 0, 0)
    csum = tcp_checksum(LO, LO, hdr)
    return hdr[:16] + struct.pack("!H", csum) + hdr[18:]


# -- pure pieces -------------------------------------------------------------------------------

def test_prng_and_scaling_agree_with_the_c_code() -> None:
    _check_impl("c")
    from l4lb._dataplane import sp_scaled, sp_splitmix_next
    state = 12345
    for _ in range(100):
        assert sp_splitmix_next(state) == splitmix64(state)
        state, out = splitmix64(state)
        r = out >> 32
        for iv, j in ((1000 * MS, 100_000), (3600_000 * MS, 1_000_000), (7 * MS, 0),
                      (0xFFFFFFFF * MS, 1_000_000)):  # the longest interval: no overflow
            got = scaled_interval(iv, j, r)
            assert got == sp_scaled(iv, j, r)
            assert iv - iv * j // 1_000_000 <= got <= iv + iv * j // 1_000_000
    # splitmix64 reference values for seed 0 (the published first outputs)
    s, a = splitmix64(0)
    _, b = splitmix64(s)
    assert (a, b) == (0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4)


# -- verdicts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("v6", [False, True])
def test_listener_is_up_and_closed_port_refused(rig: Rig, v6: bool) -> None:
    host = "::1" if v6 else "127.0.0.1"
    with listener(host) as lst, refusing_port(host) as closed:
        rig.add(0, lst.getsockname()[1], v6=v6)
        rig.add(1, closed, v6=v6)
        assert rig.run(T0) == []
        assert rig.fleet.in_flight == 2
        assert rig.next_due == T0 + 300 * MS  # the earlier deadline
        got = rig.run(T0 + 2 * MS, wait=True)
        if len(got) < 2:
            got += rig.run(T0 + 2 * MS, wait=True)
        assert sorted(got) == [(0, UP, 0, 2000), (1, REFUSED, 0, 2000)]
        assert rig.fleet.in_flight == 0
        with pytest.raises(BlockingIOError):
            lst.accept()


def test_timeout_comes_at_the_deadline_not_before(rig: Rig) -> None:
    with listener("127.0.0.1", drop_all=True) as hole:
        rig.add(0, hole.getsockname()[1], timeout_ms=250)
        assert rig.run(T0) == []
        assert rig.run(T0 + 250 * MS - 1) == []
        assert rig.fleet.target(0)[5] is True
        assert rig.run(T0 + 250 * MS) == [(0, TIMEOUT, 0, 250_000)]
        assert rig.fleet.target(0)[5] is False


def test_replies_with_wrong_ack_port_or_flags_are_ignored(rig: Rig) -> None:
    with listener("127.0.0.1", drop_all=True) as hole:
        hport = hole.getsockname()[1]
        rig.add(0, hport)
        rig.run(T0)
        _due, _start, _dl, seq, sport, flying = rig.fleet.target(0)
        assert flying
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        try:
            sa = TCP_SYN | TCP_ACK
            bad = [forged(hport, sport, 99, (seq + 2) & 0xFFFFFFFF, sa),  # wrong ack
                   forged(hport + 1 if hport < 65535 else 1, sport, 99, seq + 1, sa),  # port
                   forged(hport, sport, 99, (seq + 1) & 0xFFFFFFFF, TCP_RST)]  # RST without ACK
            for pkt in bad:
                raw.sendto(pkt, ("127.0.0.1", 0))
            stray0 = rig.fleet.stray
            assert rig.run(T0 + MS, wait=True) == []
            # all three were seen and none matched (the wait may return after the first)
            deadline = time.monotonic() + 2
            while rig.fleet.stray < stray0 + 3 and time.monotonic() < deadline:
                assert rig.run(T0 + MS, wait=True) == []
            assert rig.fleet.stray == stray0 + 3
            raw.sendto(forged(hport, sport, 99, (seq + 1) & 0xFFFFFFFF, sa), ("127.0.0.1", 0))
            assert rig.run(T0 + 3 * MS, wait=True) == [(0, UP, 0, 3000)]
        finally:
            raw.close()


def test_removed_while_in_flight_reports_nothing(rig: Rig) -> None:
    with refusing_port("127.0.0.1") as closed:
        rig.add(0, closed)
        rig.run(T0)
        rig.fleet.remove_target(0)
        assert rig.fleet.in_flight == 0
        assert rig.run(T0 + MS, wait=True) == []
        assert rig.fleet.stray >= 1  # the RST arrived and matched nothing
        assert rig.next_due == NO_EVENT
        with pytest.raises(OSError) as exc:
            rig.fleet.remove_target(0)
        assert exc.value.errno == errno.ENOENT
        rig.add(0, closed, due=T0 + 5 * MS)  # the id is free again
        assert rig.run(T0 + 5 * MS) == []
        assert rig.run(T0 + 6 * MS, wait=True) == [(0, REFUSED, 0, 1000)]


def test_local_send_error_is_reported_with_its_errno(rig: Rig) -> None:
    # a raw socket without SO_BROADCAST may not send to the broadcast address: EACCES
    rig.add(0, 80, dst=socket.inet_aton("255.255.255.255"))
    assert rig.run(T0) == [(0, LOCAL_ERROR, errno.EACCES, 0)]
    assert rig.fleet.in_flight == 0
    assert rig.next_due == T0 + 1000 * MS


def test_results_beyond_max_results_wait_for_the_next_call(impl: str) -> None:
    r = Rig(impl, max_results=3)
    try:
        with listener("127.0.0.1", drop_all=True) as hole:
            for tid in range(8):
                r.add(tid, hole.getsockname()[1], timeout_ms=10)
            sends = 0
            while r.fleet.in_flight < 8 and sends < 8:
                assert r.run(T0) == []  # a result slot is kept for every SYN sent
                sends += 1
                assert r.next_due == (T0 if r.fleet.in_flight < 8 else T0 + 10 * MS)
            assert sends == 3
            got: list[int] = []
            for _ in range(8):
                batch = r.run(T0 + 10 * MS)
                assert 1 <= len(batch) <= 3
                assert all(verdict == TIMEOUT for _t, verdict, _e, _l in batch)
                got += [tid for tid, _v, _e, _l in batch]
                if r.next_due > T0 + 10 * MS:
                    break
                assert r.next_due == T0 + 10 * MS  # cut short: call again
            assert got == list(range(8))  # in (deadline, id) order
    finally:
        r.close()


def _sniff_syn(sniffer: socket.socket, dport: int) -> bytes:
    """The TCP header of the next SYN to `dport` the sniffer sees (bounded wait)."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if not select.select([sniffer], [], [], 0.5)[0]:
            continue
        pkt = sniffer.recv(256)
        ihl = (pkt[0] & 0x0F) * 4
        seg = pkt[ihl:ihl + 20]
        if len(seg) == 20 and struct.unpack_from("!H", seg, 2)[0] == dport and \
                seg[13] == TCP_SYN:
            return seg
    raise AssertionError("no SYN seen")


def test_set_source_fixes_the_checksum(rig: Rig) -> None:
    sniffer = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    try:
        with listener("127.0.0.1", drop_all=True) as hole:
            hport = hole.getsockname()[1]
            rig.fleet.add_target(0, 0, LO, hport, socket.inet_aton("127.0.0.2"), 0, 100, 1000,
                                 0, T0)
            rig.run(T0)
            assert tcp_checksum(LO, LO, _sniff_syn(sniffer, hport)) != 0  # wrong source
            with pytest.raises(OSError):
                rig.fleet.set_source(0, LO6)  # another family
            rig.fleet.set_source(0, LO)
            rig.run(T0 + 100 * MS)  # the timeout
            rig.run(rig.fleet.next_due())
            assert tcp_checksum(LO, LO, _sniff_syn(sniffer, hport)) == 0
    finally:
        sniffer.close()


# -- quiet passes ----------------------------------------------------------------------------------

def test_quiet_passes_are_counted_not_reported(rig: Rig) -> None:
    with listener("127.0.0.1") as lst:
        rig.add(0, lst.getsockname()[1], interval_ms=100)
        rig.add(1, lst.getsockname()[1], interval_ms=100, due=T0 + 50 * MS)
        rig.fleet.set_quiet(0, True)
        assert rig.fleet.collect(0) == (0, 0, 0)
        rig.run(T0)
        assert rig.run(T0 + 2 * MS, wait=True) == []  # target 0 passed, quietly
        assert rig.fleet.in_flight == 0
        assert rig.fleet.quiet_passes == 1
        assert rig.fleet.collect(0) == (1, T0 + 2 * MS, 2000)
        assert rig.fleet.collect(0) == (0, 0, 0)  # collected: reset
        # the schedule is the same as without quiet: next probe interval after the send
        _, out = splitmix64(7)
        assert rig.fleet.target(0)[0] == T0 + scaled_interval(100 * MS, 0, out >> 32)
        rig.run(T0 + 50 * MS)  # target 1, not quiet
        assert rig.run(T0 + 53 * MS, wait=True) == [(1, UP, 0, 3000)]
        for k in range(1, 4):  # three more passes of target 0, one of target 1
            now = T0 + k * 100 * MS
            rig.run(now)
            got = rig.run(now + MS, wait=True)
            rig.run(now + 50 * MS)
            got += rig.run(now + 51 * MS, wait=True)
            assert got == [(1, UP, 0, 1000)]
        assert rig.fleet.quiet_passes == 4
        peek = rig.fleet.collect_all(False)  # read only
        assert list(QUIET.iter_unpack(peek)) == [(0, 1000, 3, T0 + 301 * MS)]
        recs = list(QUIET.iter_unpack(rig.fleet.collect_all()))
        assert recs == [(0, 1000, 3, T0 + 301 * MS)]  # (id, latency us, count, last ns)
        assert rig.fleet.collect_all() == b""
        assert rig.fleet.quiet_passes == 4  # the fleet-wide count is never reset


def test_quiet_target_reports_every_other_verdict(rig: Rig) -> None:
    with refusing_port("127.0.0.1") as closed, listener("127.0.0.1", drop_all=True) as hole:
        rig.add(0, closed, timeout_ms=100)
        rig.add(1, hole.getsockname()[1], timeout_ms=100)
        rig.add(2, 80, dst=socket.inet_aton("255.255.255.255"))
        for tid in range(3):
            rig.fleet.set_quiet(tid, True)
        got = rig.run(T0)
        assert got == [(2, LOCAL_ERROR, errno.EACCES, 0)]
        assert rig.run(T0 + 2 * MS, wait=True) == [(0, REFUSED, 0, 2000)]
        assert rig.run(T0 + 100 * MS) == [(1, TIMEOUT, 0, 100_000)]
        assert rig.fleet.quiet_passes == 0
        assert rig.fleet.collect_all() == b""


def test_quiet_off_keeps_pending_passes_and_reports_again(rig: Rig) -> None:
    with listener("127.0.0.1") as lst:
        rig.add(0, lst.getsockname()[1], interval_ms=100)
        rig.fleet.set_quiet(0, True)
        rig.run(T0)
        assert rig.run(T0 + MS, wait=True) == []
        rig.fleet.set_quiet(0, False)
        rig.run(T0 + 100 * MS)
        assert rig.run(T0 + 101 * MS, wait=True) == [(0, UP, 0, 1000)]
        assert rig.fleet.collect(0) == (1, T0 + MS, 1000)


def test_removed_quiet_target_forgets_its_passes(rig: Rig) -> None:
    with listener("127.0.0.1") as lst:
        rig.add(0, lst.getsockname()[1])
        rig.fleet.set_quiet(0, True)
        rig.run(T0)
        assert rig.run(T0 + MS, wait=True) == []
        rig.fleet.remove_target(0)
        for call in (lambda: rig.fleet.collect(0), lambda: rig.fleet.set_quiet(0, True)):
            with pytest.raises(OSError) as exc:
                call()
            assert exc.value.errno == errno.ENOENT
        assert rig.fleet.collect_all() == b""
        assert rig.fleet.quiet_passes == 1  # it did pass
        rig.add(0, lst.getsockname()[1], due=T0 + 10 * MS)  # the id again: a fresh target
        assert rig.fleet.collect(0) == (0, 0, 0)
        rig.run(T0 + 10 * MS)
        assert rig.run(T0 + 11 * MS, wait=True) == [(0, UP, 0, 1000)]  # not quiet


# -- schedule ------------------------------------------------------------------------------------

def _timeout_schedule(impl: str, seed: int, rounds: int) -> list[tuple[int, int, int]]:
    """(target, send time, next due) for `rounds` timeouts of 3 black-hole targets."""
    r = Rig(impl, seed=seed)
    out: list[tuple[int, int, int]] = []
    try:
        with listener("127.0.0.1", drop_all=True) as hole:
            for tid in range(3):
                r.add(tid, hole.getsockname()[1], timeout_ms=100, interval_ms=1000,
                      jitter_ppm=200_000, due=T0 + tid * MS)
            now = T0
            for _ in range(rounds * 6):  # one event per run: sends and timeouts of 3 targets
                results = r.run(now)
                for tid, verdict, _e, _l in results:
                    assert verdict == TIMEOUT
                    due, start, _dl, _s, _p, _f = r.fleet.target(tid)
                    out.append((tid, start, due))
                now = r.next_due
    finally:
        r.close()
    return out


def test_schedule_follows_the_seed_and_the_interval_rule(impl: str) -> None:
    sched = _timeout_schedule(impl, seed=99, rounds=6)
    assert len(sched) >= 12
    assert sched == _timeout_schedule(impl, seed=99, rounds=6)  # same seed, same schedule
    assert sched != _timeout_schedule(impl, seed=100, rounds=6)
    # the rule, with the draws recomputed: due = start + interval * factor(draw), draws taken
    # in result order from the jitter stream
    state = 99
    for _tid, start, due in sched:
        state, out = splitmix64(state)
        assert due == max(start + scaled_interval(1000 * MS, 200_000, out >> 32),
                          start + 100 * MS)
        assert 800 * MS <= due - start <= 1200 * MS


def test_both_twins_produce_the_same_schedule() -> None:
    _check_impl("c")
    assert _timeout_schedule("c", 5, 5) == _timeout_schedule("py", 5, 5)


def test_interval_change_reschedules_a_waiting_target_with_the_same_draw(rig: Rig) -> None:
    with refusing_port("127.0.0.1") as closed:
        rig.add(0, closed, interval_ms=10_000, jitter_ppm=100_000)
        rig.run(T0)
        assert rig.run(T0 + 2 * MS, wait=True) == [(0, REFUSED, 0, 2000)]
        due, start, *_ = rig.fleet.target(0)
        _, out = splitmix64(7)  # the rig's seed: the first draw
        assert due == start + scaled_interval(10_000 * MS, 100_000, out >> 32)
        rig.fleet.set_timing(0, 2000, 300, 100_000)
        due2 = rig.fleet.target(0)[0]
        assert due2 == start + scaled_interval(2000 * MS, 100_000, out >> 32)
        rig.fleet.set_timing(0, 1, 300, 0)  # never before the verdict
        assert rig.fleet.target(0)[0] == T0 + 2 * MS
        assert rig.fleet.next_due() == T0 + 2 * MS


def test_set_timing_while_in_flight_applies_after_the_verdict(rig: Rig) -> None:
    with listener("127.0.0.1", drop_all=True) as hole:
        rig.add(0, hole.getsockname()[1], timeout_ms=100, interval_ms=1000)
        rig.run(T0)
        rig.fleet.set_timing(0, 5000, 50, 0)
        assert rig.fleet.target(0)[2] == T0 + 100 * MS  # the running probe keeps its deadline
        assert rig.run(T0 + 100 * MS) == [(0, TIMEOUT, 0, 100_000)]
        assert rig.fleet.target(0)[0] == T0 + 5000 * MS
        rig.run(T0 + 5000 * MS)
        assert rig.fleet.target(0)[2] == T0 + 5050 * MS  # the new timeout


# -- the runner ------------------------------------------------------------------------------

def test_runner_learns_source_addresses_again(impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import l4lb.health.synfleet as synfleet
    from l4lb.health import ProbeResult, ProbeSpec

    monkeypatch.setattr(synfleet, "SOURCE_TTL", 0.0)
    monkeypatch.setattr(synfleet, "_RELEARN_EVERY", 0.01)
    answers = iter([LO, socket.inet_aton("127.0.0.9")])
    real = synfleet.learn_source
    monkeypatch.setattr(synfleet, "learn_source",
                        lambda spec: next(answers, None) or real(spec))

    async def scenario() -> tuple[int, list[ProbeResult]]:
        got: list[ProbeResult] = []
        runner = synfleet.SynFleetRunner(
            asyncio.get_running_loop(),
            lambda buf: got.extend(res for _tid, res in synfleet.results(buf)), impl=impl,
            tick=0.05)
        try:
            with refusing_port("127.0.0.1") as closed:
                spec = ProbeSpec.build("127.0.0.1", closed, HealthSettings(kind="syn"))
                runner.add(spec, 0.02, 0.0, time.monotonic())
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline and (runner.relearned < 2 or len(got) < 2):
                    await asyncio.sleep(0.01)
        finally:
            runner.close()
        return runner.relearned, got

    relearned, got = run(scenario())
    assert relearned == 2  # to 127.0.0.9, then back to the real 127.0.0.1
    assert got and all(r.reason == "connect refused" and r.conclusive for r in got)
    # drained every 50 ms, yet the latency ends at the kernel's receive time (SO_TIMESTAMPNS)
    assert all(0 <= r.latency < 0.02 for r in got)


# -- through the checker -----------------------------------------------------------------------

def test_checker_runs_syn_backends_on_the_fleet(impl: str) -> None:
    settings = HealthSettings(kind="syn", interval=0.05, timeout=0.02, rise=1, fall=1,
                              jitter=0.0, initial_state="down", down_interval=0.03)

    async def scenario() -> tuple[dict[str, Health], list[Transition], str, int]:
        seen: list[Transition] = []
        checker: HealthChecker[str] = HealthChecker(lambda _k, t: seen.append(t),
                                                    syn_fleet=impl)
        with listener("127.0.0.1") as up, refusing_port("127.0.0.1") as closed, \
                listener("127.0.0.1", drop_all=True) as hole:
            checker.add("up", "127.0.0.1", up.getsockname()[1], settings)
            checker.add("closed", "127.0.0.1", closed, settings)
            checker.add("hole", "127.0.0.1", hole.getsockname()[1], settings)
            checker.add("tcp", "127.0.0.1", up.getsockname()[1],
                        HealthSettings(interval=0.05, timeout=0.04, rise=1, fall=1))
            checker.start()
            try:
                fleet = checker._fleet
                assert fleet is not None
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline and checker.stats().probes < 20:
                    await asyncio.sleep(0.02)
                checker.remove("closed")
                states = {k: checker.state(k) for k in ("up", "hole", "tcp")}
                assert sorted(checker.keys()) == ["hole", "tcp", "up"]
                lat = checker.latency("up")
                assert lat is not None and lat < 0.04
                probes = checker.stats().probes
            finally:
                checker.stop()
            return states, seen, fleet.impl, probes

    states, seen, used, probes = run(scenario())
    assert used == impl
    assert probes >= 20
    assert states == {"up": Health.UP, "hole": Health.DOWN, "tcp": Health.UP}
    assert [t.reason.split(" ")[0] for t in seen if t.new is Health.UP] == ["syn-ack"]


@pytest.mark.parametrize("fleet", ["c", "py", "off"])
def test_checker_counts_stray_segments_for_metrics(fleet: str) -> None:
    """Forged SYN-ACKs to the reserved ports of the checker's SYN lane (the fleet's or, with
    the fleet off, the per-probe engine's) match no probe: CheckerStats.stray counts them, and
    keeps them after stop(). This is l4lb_health_syn_stray_segments."""
    if fleet == "c":
        _check_impl(fleet)
    # probes stay in flight most of the time (the fleet drains its lanes only then)
    settings = HealthSettings(kind="syn", interval=0.05, timeout=0.045, rise=1, fall=1,
                              jitter=0.0)

    async def scenario() -> tuple[int, int, int]:
        checker: HealthChecker[str] = HealthChecker(lambda _k, _t: None, syn_fleet=fleet)
        with listener("127.0.0.1") as up:
            checker.add("up", "127.0.0.1", up.getsockname()[1], settings)
            checker.start()
            try:
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline and checker.stats().probes < 1:
                    await asyncio.sleep(0.01)
                if fleet == "off":
                    engine = checker._engine.syn_engine if checker._engine else None
                    assert engine is not None
                    ports = next(iter(engine.reserved_ports().values()))
                else:
                    runner = checker._fleet
                    assert runner is not None
                    ports = next(iter(runner._lanes.values()))[1].ports
                before = checker.stats().stray
                raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
                try:
                    for port in ports[:3]:  # from port 9, with an ack no probe has
                        raw.sendto(forged(9, port, 99, 12345, TCP_SYN | TCP_ACK),
                                   ("127.0.0.1", 0))
                finally:
                    raw.close()
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline and checker.stats().stray < before + 3:
                    await asyncio.sleep(0.01)
                during = checker.stats().stray
            finally:
                checker.stop()
            return before, during, checker.stats().stray

    before, during, after = run(scenario())
    assert during >= before + 3  # (a real reply after its timeout would be one more)
    assert after >= during


def test_reload_moves_a_backend_between_fleet_and_heap() -> None:
    syn = HealthSettings(kind="syn", interval=0.03, timeout=0.02, rise=1, fall=1, jitter=0.0)
    tcp = HealthSettings(kind="tcp", interval=0.03, timeout=0.02, rise=1, fall=1, jitter=0.0)

    async def reasons_after(checker: HealthChecker[str], settings: HealthSettings,
                            port: int) -> tuple[str, int]:
        checker.add("b", "127.0.0.1", port, settings)  # a reload with another kind
        start = checker.stats().probes
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and checker.stats().probes < start + 4:
            await asyncio.sleep(0.01)
        return checker.snapshot("b").last_reason, len(checker._by_fleet_id)

    async def scenario() -> list[tuple[str, int]]:
        checker: HealthChecker[str] = HealthChecker(lambda _k, _t: None)
        with listener("127.0.0.1") as lst:
            port = lst.getsockname()[1]
            checker.add("b", "127.0.0.1", port, syn)
            checker.start()
            try:
                seen = [await reasons_after(checker, s, port) for s in (syn, tcp, syn)]
                assert checker.stats().inconclusive == 0
                assert checker.state("b") is Health.UP
            finally:
                checker.stop()
        return seen

    seen = run(scenario())
    assert seen == [("syn-ack", 1), ("connect ok", 0), ("syn-ack", 1)]


def _syn_ack_waiter(make_rig: Callable[[], Rig]) -> tuple[
        Rig, socket.socket, Callable[[set[tuple[int, int]]], None]]:
    """A rig, a sniffer on its IPv4 ports and wait(want): return once a SYN-ACK to every
    (our port, ack) in `want` was seen (bounded). The sniffer is opened before the rig's lanes:
    the kernel hands a segment to the newest raw socket first, so once the sniffer has a
    SYN-ACK the lane has it too, and a run that follows drains it."""
    sniffer = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                            socket.IPPROTO_TCP)
    try:
        rig = make_rig()
    except BaseException:
        sniffer.close()
        raise
    attach_filter(sniffer, bpf_program(socket.AF_INET, rig.lanes[0].ports))
    drain_unfiltered(sniffer)

    def wait(want: set[tuple[int, int]]) -> None:
        deadline = time.monotonic() + 2
        while want and time.monotonic() < deadline:
            if not select.select([sniffer], [], [], 0.2)[0]:
                continue
            pkt = sniffer.recv(256)
            ihl = (pkt[0] & 0x0F) * 4
            dport, ack = struct.unpack_from("!H", pkt, ihl + 2)[0], \
                struct.unpack_from("!I", pkt, ihl + 8)[0]
            want.discard((dport, ack))
        assert not want, "SYN-ACKs not seen"

    return rig, sniffer, wait


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_operations_give_the_same_results_in_both_twins(seed: int) -> None:
    """Differential: the same random add/remove/set_timing/set_quiet/collect/run sequence on
    both fleets gives the same results and states. Targets: a black hole (timeouts), the
    broadcast address (a local send error) and a listener (passes, quiet or reported); after
    each run the test waits until the listener's SYN-ACKs to that run's SYNs have arrived, so
    no verdict depends on packet timing."""
    _check_impl("c")
    import random

    def trace(impl: str, hole: int, up: int) -> list[object]:
        rng = random.Random(seed)
        max_results = rng.randint(1, 8)
        r, sniffer, wait = _syn_ack_waiter(lambda: Rig(impl, seed=seed, max_results=max_results))
        out: list[object] = []
        live: set[int] = set()
        answering: set[int] = set()  # live targets on the listener
        now = T0
        try:
            for _ in range(400):
                op = rng.random()
                tid = rng.randrange(12)
                if op < 0.25 and tid not in live:
                    kind = rng.random()
                    dst = socket.inet_aton("255.255.255.255") if kind < 0.2 else None
                    r.add(tid, up if 0.2 <= kind < 0.5 else hole, timeout_ms=rng.randint(1, 50),
                          interval_ms=rng.randint(1, 200), jitter_ppm=rng.randint(0, 1_000_000),
                          due=now + rng.randint(0, 100) * MS, dst=dst)
                    live.add(tid)
                    if 0.2 <= kind < 0.5:
                        answering.add(tid)
                        r.fleet.set_quiet(tid, rng.random() < 0.5)
                elif op < 0.35 and tid in live:
                    r.fleet.remove_target(tid)
                    live.discard(tid)
                    answering.discard(tid)
                elif op < 0.45 and tid in live:
                    r.fleet.set_timing(tid, rng.randint(1, 300), rng.randint(1, 50),
                                       rng.randint(0, 1_000_000))
                elif op < 0.53 and tid in live:
                    r.fleet.set_quiet(tid, rng.random() < 0.7)
                elif op < 0.58 and tid in live:
                    out.append(("collect", tid, r.fleet.collect(tid)))
                elif op < 0.61:
                    reset = rng.random() < 0.5
                    out.append(("collect_all", reset,
                                list(QUIET.iter_unpack(r.fleet.collect_all(reset)))))
                else:
                    now += rng.randint(0, 30) * MS
                    out.append(("run", now, r.run(now), r.next_due))
                    infos = {t: r.fleet.target(t) for t in answering}
                    wait({(i[4], (i[3] + 1) & 0xFFFFFFFF) for i in infos.values()
                          if i[5] and i[1] == now})
                out.append(sorted((t, *r.fleet.target(t)[:4], r.fleet.target(t)[5])
                                  for t in live))  # sport differs: the lanes' own ports
                out.append((r.fleet.in_flight, r.fleet.quiet_passes))
        finally:
            sniffer.close()
            r.close()
        return out

    with listener("127.0.0.1", drop_all=True) as hole, listener("127.0.0.1") as up:
        c_trace = trace("c", hole.getsockname()[1], up.getsockname()[1])
        py_trace = trace("py", hole.getsockname()[1], up.getsockname()[1])
    verdicts = [rec[1] for x in c_trace if isinstance(x, tuple) and x[0] == "run"
                for rec in x[2]]  # type: ignore[attr-defined]
    assert verdicts.count(TIMEOUT) > 20 and verdicts.count(LOCAL_ERROR) > 0
    assert verdicts.count(UP) > 5
    collected = [x for x in c_trace if isinstance(x, tuple) and
                 ((x[0] == "collect" and x[2][0]) or (x[0] == "collect_all" and x[2]))]
    assert collected  # quiet passes were counted and handed over
    assert c_trace == py_trace
