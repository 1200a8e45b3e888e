"""Unit tests of the checker's quiet passes: what an operator reads is the same with them on or off.

The checker runs its `kind = "syn"` backends on a scripted fleet: the Python twin `PySynFleet`
(the real schedule, jitter, result buffers and quiet-pass bookkeeping) with its packet I/O
replaced by a script that answers each SYN from (backend, send time). The clock is fake
(time.monotonic and time.monotonic_ns are patched; the runner is driven by hand, so no asyncio
timer ever fires), nothing sleeps and nothing touches the network. The main test runs one
schedule twice, with quiet passes on and off, reading snapshots, latencies and counters along
the way, and requires identical readings.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import l4lb.health.synfleet as synfleet
from l4lb.health import Health, HealthChecker, HealthSettings, Transition
from l4lb.health.synfleet import REFUSED, UP, PySynFleet, SynFleetRunner

MS = 1_000_000
START_NS = 5_000 * 1_000_000_000  # the fake clock's start (far from the real monotonic clock)

# (backend, send time in ns) -> None: no answer (a timeout), or (passed, latency in ns)
Script = Callable[[str, int], tuple[bool, int] | None]


class _NoRaw:
    """Stands in for a lane's raw socket: nothing to read, options accepted."""

    def setsockopt(self, *_args: Any) -> None:
        pass

    def recv(self, *_args: Any) -> bytes:
        raise BlockingIOError

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


class _FakeLane:
    """Stands in for synprobe._Lane (no raw socket, no reserved ports)."""

    def __init__(self, family: int, source: str | None, nports: int) -> None:
        self.family = family
        self.raw = _NoRaw()
        self.ports = list(range(40_000, 40_000 + nports))

    def close(self) -> None:
        pass


class ScriptFleet(PySynFleet):
    """PySynFleet whose SYNs go to a script instead of the network (see the module doc)."""

    def __init__(self, seed: int, max_results: int, script: Script) -> None:
        super().__init__(seed, max_results)
        self.script = script
        self.names: dict[int, str] = {}  # fleet id -> backend (by the port it probes)
        self.ports: dict[int, str] = {}  # port -> backend
        self.sent: list[tuple[int, int, int]] = []  # (id, send time, seq) awaiting an answer
        self.reported = 0  # results written to run()'s buffer

    def add_lane(self, lane: int, family: int, fd: int, ports: Any) -> None:
        self._lanes[lane] = synfleet._PyLane(family, _NoRaw(), list(ports))  # type: ignore

    def add_target(self, tid: int, lane: int, dst: bytes, port: int, src: bytes, scope_id: int,
                   timeout_ms: int, interval_ms: int, jitter_ppm: int,
                   first_due_ns: int) -> None:
        super().add_target(tid, lane, dst, port, src, scope_id, timeout_ms, interval_ms,
                           jitter_ppm, first_due_ns)
        self.names[tid] = self.ports[port]

    def _flush(self, lane: Any, now: int, out: list[bytes]) -> None:
        for tid, _pkt in lane.pend:
            t = self._targets.get(tid)
            if t is not None and t.in_flight:
                self.sent.append((tid, now, t.seq))
        lane.pend.clear()

    def _drain(self, lane: Any, now: int, out: list[bytes]) -> bool:
        keep = []
        for tid, start, seq in self.sent:
            t = self._targets.get(tid)
            if t is None or not t.in_flight or t.seq != seq or t.start != start:
                continue  # removed, or timed out
            answer = self.script(self.names[tid], start)
            if answer is None:
                continue
            ok, latency = answer
            if start + latency > now:
                keep.append((tid, start, seq))
                continue
            self._finish(tid, t, now, UP if ok else REFUSED, 0, out, start + latency)
        self.sent = keep
        return False

    def run(self, now_ns: int) -> tuple[bytes, int]:
        buf, nxt = super().run(now_ns)
        self.reported += len(buf) // synfleet.RESULT.size
        return buf, nxt


@dataclass
class Rig:
    """A checker on a ScriptFleet under a fake clock."""

    clock: list[int] = field(default_factory=lambda: [START_NS])
    fleets: list[ScriptFleet] = field(default_factory=list)

    @property
    def now(self) -> float:
        return self.clock[0] / 1e9


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    r = Rig()
    monkeypatch.setattr(time, "monotonic_ns", lambda: r.clock[0])
    monkeypatch.setattr(time, "monotonic", lambda: r.clock[0] / 1e9)
    monkeypatch.setattr(synfleet, "_Lane", _FakeLane)
    monkeypatch.setattr(synfleet, "learn_source", lambda _spec: socket.inet_aton("127.0.0.1"))
    yield r


def _use_script(monkeypatch: pytest.MonkeyPatch, rig: Rig, script: Script,
                ports: dict[int, str]) -> None:
    def make(_impl: str, seed: int, max_results: int = 1024) -> ScriptFleet:
        fleet = ScriptFleet(seed, max_results, script)
        fleet.ports = ports
        rig.fleets.append(fleet)
        return fleet
    monkeypatch.setattr(synfleet, "make_fleet", make)


def _advance(rig: Rig, checker: HealthChecker[str], until_ns: int, step_ns: int = 5 * MS) -> None:
    """Move the fake clock to until_ns in steps, running the fleet at each (as its timer
    would)."""
    while rig.clock[0] < until_ns:
        rig.clock[0] = min(until_ns, rig.clock[0] + step_ns)
        runner = checker._fleet
        assert runner is not None
        runner._run()


def _runner(checker: HealthChecker[str]) -> SynFleetRunner:
    assert checker._fleet is not None
    return checker._fleet


# -- the differential test -----------------------------------------------------------------------

S = 1_000_000_000
BASE = HealthSettings(kind="syn", interval=1.0, timeout=0.5, jitter=0.1, rise=2, fall=3)
BACKENDS = {  # name -> (port, settings)
    "steady": (1001, BASE),
    "outage": (1002, BASE),
    "blackhole": (1003, BASE),
    "flaky": (1004, BASE),
    "late": (1005, HealthSettings(kind="syn", interval=1.0, timeout=0.5, jitter=0.1,
                                  initial_state="down", start_period=3.0)),
    "dead": (1006, BASE),
    "passive": (1007, HealthSettings(kind="syn", interval=1.0, timeout=0.5, jitter=0.1,
                                     max_fails=3, fail_timeout=5.0)),
}
PORTS = {port: name for name, (port, _s) in BACKENDS.items()}


def script(name: str, sent: int) -> tuple[bool, int] | None:
    """The backends' behaviour by send time (seconds since the fake clock's start)."""
    t = (sent - START_NS) / S
    latency = 200_000 + (sent // MS) % 7 * 10_000  # 200-260 us, varies by probe
    if name == "outage" and 10 <= t < 20:
        return False, latency  # refused for ten seconds
    if name == "blackhole" and 6 <= t < 9:
        return None  # silent: timeouts
    if name == "flaky" and t >= 5 and t % 5 < 0.3:
        return False, latency  # a single failure every 5 s (at most one probe in 0.3 s)
    if name == "dead":
        return False, latency
    return True, latency


def _differential_run(rig: Rig, monkeypatch: pytest.MonkeyPatch,
                      quiet: bool) -> tuple[list[object], int, int]:
    """(readings, results the fleet reported, quiet passes) of one scripted 40 s run."""
    _use_script(monkeypatch, rig, script, PORTS)
    rig.clock[0] = START_NS
    readings: list[object] = []

    def on_transition(key: str, tr: Transition) -> None:
        readings.append(("transition", key, tr))

    async def scenario() -> tuple[list[object], int, int]:
        checker: HealthChecker[str] = HealthChecker(on_transition, rng=random.Random(3),
                                                    syn_fleet="py", quiet_passes=quiet)
        for name, (port, hs) in BACKENDS.items():
            checker.add(name, "127.0.0.1", port, hs)
        checker.start()
        try:
            for second in range(1, 41):
                _advance(rig, checker, START_NS + second * S)
                if second == 15:  # data-plane connect failures: DOWN at once (max_fails 3)
                    checker.passive_failures("passive", 3)
                if second == 12:  # a few, not enough: stays UP
                    checker.passive_failures("passive", 1)
                if second == 25:  # reload: new fall and interval for two backends
                    hs = HealthSettings(kind="syn", interval=0.5, timeout=0.25, jitter=0.1,
                                        fall=2)
                    checker.add("steady", "127.0.0.1", 1001, hs)
                    checker.add("flaky", "127.0.0.1", 1004, hs)
                if second == 30:
                    checker.remove("outage")
                if second == 32:
                    checker.add("outage", "127.0.0.1", 1002, BASE)
                # read like an operator would: sometimes one backend, sometimes all of them
                if second % 3 == 0:
                    readings.append(("stats", second, checker.stats()))
                if second % 4 == 0:
                    readings.append(("latencies", second, checker.latencies()))
                if second % 2 == 0:  # the bulk read for display, which collects nothing
                    readings.append(("views", second, checker.views(0.0)))
                if second % 5 == 0:
                    for name in sorted(checker.keys()):
                        readings.append(("snapshot", second, name, checker.snapshot(name),
                                         checker.latency(name)))
            names = checker.keys()
            readings.append(("end", checker.stats(), {k: checker.snapshot(k) for k in names},
                             checker.latencies()))
            runner = _runner(checker)
            reported, quiet_passes = rig.fleets[-1].reported, runner.quiet_passes
        finally:
            checker.stop()
        readings.append(("stopped", checker.stats(), {k: checker.snapshot(k) for k in names},
                         checker.latencies()))
        return readings, reported, quiet_passes

    return asyncio.run(scenario())


def test_readings_are_the_same_with_quiet_passes_on_and_off(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    loud, loud_reported, loud_quiet = _differential_run(rig, monkeypatch, quiet=False)
    quiet, quiet_reported, quiet_quiet = _differential_run(rig, monkeypatch, quiet=True)
    assert loud_quiet == 0
    assert quiet_quiet > 150  # most passes stayed in the fleet ...
    assert quiet_reported + quiet_quiet == loud_reported  # ... and every probe still counts
    assert quiet_reported < loud_reported / 3
    assert quiet == loud
    # the scenario did what it says (so the comparison covered those paths)
    transitions = [(r[1], r[2].new) for r in loud if r[0] == "transition"]  # type: ignore
    assert ("outage", Health.DOWN) in transitions and ("outage", Health.UP) in transitions
    assert ("blackhole", Health.DOWN) in transitions
    assert ("passive", Health.DOWN) in transitions and ("passive", Health.UP) in transitions
    assert ("late", Health.UP) in transitions and ("dead", Health.DOWN) in transitions
    assert ("flaky", Health.DOWN) not in transitions  # single failures never reach fall
    end_snaps = loud[-2][2]  # type: ignore
    assert end_snaps["steady"].last_reason == "syn-ack"  # type: ignore


# -- when a backend goes quiet ----------------------------------------------------------------

def _single(rig: Rig, monkeypatch: pytest.MonkeyPatch, behaviour: Callable[[float], bool | None],
            hs: HealthSettings) -> tuple[HealthChecker[str], list[Transition]]:
    """A started checker with one backend "b" whose answer is behaviour(seconds) (None: none)."""
    def one(_name: str, sent: int) -> tuple[bool, int] | None:
        ok = behaviour((sent - START_NS) / S)
        return None if ok is None else (ok, 100_000)

    _use_script(monkeypatch, rig, one, {2000: "b"})
    seen: list[Transition] = []
    checker: HealthChecker[str] = HealthChecker(lambda _k, tr: seen.append(tr),
                                                rng=random.Random(1), syn_fleet="py")
    checker.add("b", "127.0.0.1", 2000, hs)
    checker.start()
    return checker, seen


def _quiet(checker: HealthChecker[str]) -> bool:
    return checker._entries["b"].quiet


HS = HealthSettings(kind="syn", interval=1.0, timeout=0.5, jitter=0.0, rise=2, fall=2)


def test_up_down_up_is_quiet_only_while_steady(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> list[tuple[int, Health, bool]]:
        # up until 5 s, refused from 5 s to 9 s, up again
        checker, _seen = _single(rig, monkeypatch, lambda t: not 5 <= t < 9, HS)
        states = []
        try:
            for second in range(1, 14):
                _advance(rig, checker, START_NS + second * S)
                states.append((second, checker.state("b"), _quiet(checker)))
        finally:
            checker.stop()
        return states

    states = asyncio.run(scenario())
    quiet = {second for second, _st, q in states if q}
    down = {second for second, st, _q in states if st is Health.DOWN}
    # one probe a second, at the same fraction of each second: passes until 4.x, failures at
    # 5.x (UP, going down: not quiet any more) and 6.x (DOWN), passes again at 9.x and 10.x
    # (rise 2: UP, quiet again)
    assert quiet == {1, 2, 3, 4, 5, 11, 12, 13}
    assert down == {7, 8, 9, 10}


def test_first_failure_of_a_quiet_backend_is_reported_and_counted(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        checker, _seen = _single(rig, monkeypatch, lambda t: t < 6, HS)
        try:
            _advance(rig, checker, START_NS + 5 * S + 900 * MS)
            assert _quiet(checker)
            fleet = rig.fleets[-1]
            reported = fleet.reported
            _advance(rig, checker, START_NS + 7 * S)
            assert fleet.reported == reported + 1  # the failure reached the checker
            assert not _quiet(checker)
            snap = checker.snapshot("b")
            assert (snap.state, snap.failures, snap.last_ok) == (Health.UP, 1, False)
            assert snap.describe() == "UP, going down (1/2)"
            stats = checker.stats()
            assert stats.failed == 1 and stats.probes == 7  # one first probe per second
        finally:
            checker.stop()

    asyncio.run(scenario())


def test_snapshot_after_quiet_passes_shows_the_last_one(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        checker, _seen = _single(rig, monkeypatch, lambda _t: True, HS)
        try:
            _advance(rig, checker, START_NS + 10 * S)
            runner = _runner(checker)
            assert runner.quiet_passes >= 8
            fid = checker._entries["b"].fleet_id
            assert fid is not None
            start = rig.fleets[-1].target(fid)[1]  # send time of the last probe
            snap = checker.snapshot("b")
            # its verdict: the fleet's first run after the answer (100 us later; runs every 5 ms)
            assert snap.last_probe_at == (start + 5 * MS) / 1e9
            assert checker.latency("b") == 100e-6
            assert checker.stats().probes == 10
            assert runner.collect(fid) == (0, 0.0, 0)  # the snapshot collected them
        finally:
            checker.stop()

    asyncio.run(scenario())


def test_bulk_snapshots_read_quiet_passes_without_collecting_them(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        checker, _seen = _single(rig, monkeypatch, lambda _t: True, HS)
        try:
            _advance(rig, checker, START_NS + 10 * S)
            runner = _runner(checker)
            fid = checker._entries["b"].fleet_id
            assert fid is not None
            dampener = checker._entries["b"].dampener
            before = dampener.view(rig.now, 0.0)
            bulk = checker.views(0.0)["b"]
            # the fleet's time is monotonic: the view adds to_wall to it, as to the others
            wall = checker.views(1e9)["b"]
            assert (wall["last_probe"], wall["since"]) == \
                (bulk["last_probe"] + 1e9, bulk["since"] + 1e9)
            # the dampener itself still has the last pass it was handed (before going quiet)
            assert bulk["last_probe"] > before["last_probe"]
            assert runner.collect_all(False)  # nothing was collected ...
            snap = checker.snapshot("b")  # ... and collecting gives the same reading
            assert dampener.view(rig.now, 0.0) == bulk
            assert (bulk["last_probe"], bulk["last_reason"], bulk["last_result"]) == \
                (snap.last_probe_at, "syn-ack", "passed")
        finally:
            checker.stop()

    asyncio.run(scenario())


def test_removal_and_reload_of_a_quiet_backend(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        checker, _seen = _single(rig, monkeypatch, lambda _t: True, HS)
        try:
            _advance(rig, checker, START_NS + 5 * S)
            assert _quiet(checker)
            fid = checker._entries["b"].fleet_id
            # a reload that keeps the target keeps quiet (no setting changes what a pass does to
            # a steady backend); the passes so far are handed over first
            faster = HealthSettings(kind="syn", interval=0.5, timeout=0.25, jitter=0.0, rise=3,
                                    fall=1, max_fails=2)
            checker.add("b", "127.0.0.1", 2000, faster)
            entry = checker._entries["b"]
            assert entry.fleet_id == fid and entry.quiet
            assert entry.dampener.snapshot(rig.now).last_probe_at is not None
            _advance(rig, checker, START_NS + 8 * S)
            assert checker.stats().probes == 5 + 6  # twice a second after the reload
            # a reload that changes the probe's source: a new fleet target, not quiet yet
            moved = HealthSettings(kind="syn", interval=0.5, timeout=0.25, jitter=0.0,
                                   source="127.0.0.1")
            checker.add("b", "127.0.0.1", 2000, moved)
            assert not checker._entries["b"].quiet
            assert checker._entries["b"].fleet_id is not None
            _advance(rig, checker, START_NS + 10 * S)
            assert checker._entries["b"].quiet
            probes = checker.stats().probes
            before = checker.snapshot("b")
            _advance(rig, checker, START_NS + 11 * S)
            checker.remove("b")  # while quiet, with passes pending
            assert checker.keys() == []
            assert checker.stats().probes == probes + 2  # they still count
            assert before.state is Health.UP
        finally:
            checker.stop()

    asyncio.run(scenario())


def test_passive_failures_of_a_quiet_backend_come_after_its_passes(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        hs = HealthSettings(kind="syn", interval=1.0, timeout=0.5, jitter=0.0, rise=2,
                            max_fails=2, fail_timeout=10.0)
        checker, seen = _single(rig, monkeypatch, lambda _t: True, hs)
        try:
            _advance(rig, checker, START_NS + 4 * S)
            assert _quiet(checker)
            checker.passive_failures("b", 1)  # below max_fails: still steady
            assert _quiet(checker)
            checker.passive_failures("b", 1)
            assert checker.state("b") is Health.DOWN and seen[-1].passive
            assert not _quiet(checker)
            snap = checker.snapshot("b")
            assert snap.successes == 0  # the passes before were not counted towards rise
            _advance(rig, checker, START_NS + 7 * S)
            assert checker.state("b") is Health.UP and _quiet(checker)
        finally:
            checker.stop()

    asyncio.run(scenario())


def test_stop_hands_the_passes_over(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        checker, _seen = _single(rig, monkeypatch, lambda _t: True, HS)
        _advance(rig, checker, START_NS + 6 * S)
        assert _quiet(checker)
        checker.stop()
        assert checker.stats().probes == 6
        assert not checker._entries["b"].quiet
        snap = checker.snapshot("b")
        assert snap.last_probe_at is not None and snap.last_probe_at > START_NS / S + 5
        checker.start()  # and again: a new fleet; the counts go on
        _advance(rig, checker, START_NS + 9 * S)
        assert checker.stats().probes >= 8
        checker.stop()

    asyncio.run(scenario())
