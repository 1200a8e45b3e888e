"""Unit tests: a waiting probe follows a change of its backend's interval at once, on the heap and
on the SYN fleet alike.

The interval in effect for a backend (`Dampener.interval`) can change outside a probe result:
passive failures (`max_fails`) take it DOWN, so `down_interval` applies; a reload changes its
settings. Either way its waiting probe is moved to `previous start + new interval` (same jitter
draw), never before now, earlier or later than it was, and not at all while a probe is in
flight (its result picks the interval then in effect) or when nothing that schedules changed.

Each scenario runs against both schedulers under one fake clock, never sleeping and never
touching the network: the checker's heap (`kind = "tcp"`, a scripted engine in place of
`ProbeEngine`) and the SYN fleet (`kind = "syn"`, the Python twin with a scripted network, the
rig of test_health_quiet.py), and both must give the same probe starts and transitions. The
clock moves on a grid of 2**-9 s, so every time of the scenarios is exact in float seconds
(the heap's clock) and in integer nanoseconds (the fleet's), and the two paths cannot drift
apart by rounding.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

import l4lb.health.checker as checker_mod
import l4lb.health.synfleet as synfleet
from l4lb.health import HealthChecker, HealthSettings
from l4lb.health.probe import ProbeResult, ProbeSpec
from l4lb.health.synfleet import NO_EVENT

from .test_health_quiet import START_NS, ScriptFleet, _FakeLane

S = 1_000_000_000
STEP = 1_953_125  # ns: 2**-9 s, the fake clock's grid
PORT = 2000

# seconds since the start, at the probe's start -> (passes, seconds until its answer)
Answer = Callable[[float], tuple[bool, float]]
# (seconds since the start, ("passive", count), ("reload", settings) or ("read", None))
Event = tuple[float, tuple[str, Any]]


def _always_up(_t: float) -> tuple[bool, float]:
    return True, STEP / S


class _FirstAtOnce(random.Random):
    """The first probe at once (on the grid); the jitter draws as random.Random's."""

    def uniform(self, a: float, b: float) -> float:
        return a


class _FirstHalfway(_FirstAtOnce):
    """The first probe half way through its first interval."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


class _Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Engine:
    """Stands in for ProbeEngine: records each probe's start, answers it by the script."""

    syn_engine = None

    def __init__(self, clock: list[int], answer: Answer) -> None:
        self.clock = clock
        self.answer = answer
        self.starts: list[int] = []
        self.keys: list[Any] = []  # the backend of each start
        self.pending: list[tuple[int, Callable[[Any, ProbeResult], None], Any, bool,
                                 _Handle]] = []
        self.most_in_flight = 0

    def start(self, spec: ProbeSpec, cb: Callable[[Any, ProbeResult], None],
              entry: Any) -> _Handle:
        now = self.clock[0]
        ok, latency = self.answer((now - START_NS) / S)
        handle = _Handle()
        self.starts.append(now)
        self.keys.append(entry.key)
        self.pending.append((now + round(latency * S), cb, entry, ok, handle))
        self.most_in_flight = max(self.most_in_flight, len(self.pending))
        return handle

    def deliver(self) -> None:
        now = self.clock[0]
        due = [p for p in self.pending if p[0] <= now]
        self.pending = [p for p in self.pending if p[0] > now]
        for at, cb, entry, ok, handle in due:
            if not handle.cancelled:
                cb(entry, ProbeResult(ok, "ok" if ok else "connect refused",
                                      (at - now) / S, True))

    def close(self) -> None:
        pass


@dataclass
class Ctx:
    """One scenario's run on one path."""

    path: str  # "heap" or "fleet"
    clock: list[int] = field(default_factory=lambda: [START_NS])
    starts: list[float] = field(default_factory=list)  # seconds since the start
    changes: list[tuple[float, str]] = field(default_factory=list)  # (seconds, UP/DOWN)
    most_in_flight: int = 0  # most probes of the backend in flight at once

    def settings(self, hs: HealthSettings) -> HealthSettings:
        return dataclasses.replace(hs, kind="tcp" if self.path == "heap" else "syn")


def _rel(ns: int) -> float:
    return round((ns - START_NS) / S, 9)


def _grid_after(ns: float, now: int) -> int:
    """The first grid point at or after `ns` (1 us tolerance for float rounding), > now."""
    steps = math.ceil((ns - START_NS - 1000) / STEP)
    return max(START_NS + steps * STEP, now + STEP)


def pending(chk: HealthChecker[str]) -> tuple[float, float]:
    """(start of the last probe, due time of the waiting one) of the backend, monotonic
    seconds, as its scheduler holds them."""
    entry = chk._entries["b"]
    if entry.fleet_id is None:
        assert entry.probe is None
        return entry.last_start, entry.due
    runner = chk._fleet
    assert runner is not None
    due_ns, start_ns, _deadline, _seq, _sport, in_flight = runner._fleet.target(entry.fleet_id)
    assert not in_flight
    return start_ns / S, due_ns / S


def run(monkeypatch: pytest.MonkeyPatch, path: str, hs: HealthSettings, seconds: float,
        events: Sequence[Event] = (), answer: Answer = _always_up, *, quiet: bool = True,
        rng: random.Random | None = None,
        probe: Callable[[Ctx, HealthChecker[str], float], None] | None = None) -> Ctx:
    """Run one backend `b` for `seconds` on `path` ("heap" or "fleet"), applying `events` at
    their times; `probe(ctx, checker, t)` is called after each event (for readings)."""
    ctx = Ctx(path)
    clock = ctx.clock
    monkeypatch.setattr(time, "monotonic_ns", lambda: clock[0])
    monkeypatch.setattr(time, "monotonic", lambda: clock[0] / S)
    engines: list[_Engine] = []
    fleets: list[ScriptFleet] = []
    if path == "heap":
        def make_engine(_loop: object) -> _Engine:
            engines.append(_Engine(clock, answer))
            return engines[-1]
        monkeypatch.setattr(checker_mod, "ProbeEngine", make_engine)
    else:
        sends: set[int] = set()  # send times

        def script(_name: str, sent: int) -> tuple[bool, int]:
            ok, latency = answer((sent - START_NS) / S)
            return ok, round(latency * S)

        def make_fleet(_impl: str, seed: int, max_results: int = 1024) -> ScriptFleet:
            fleet = ScriptFleet(seed, max_results, script)
            fleet.ports = {PORT: "b"}
            fleets.append(fleet)
            return fleet
        monkeypatch.setattr(synfleet, "make_fleet", make_fleet)
        monkeypatch.setattr(synfleet, "_Lane", _FakeLane)
        monkeypatch.setattr(synfleet, "learn_source",
                            lambda _spec: socket.inet_aton("127.0.0.1"))
    end = START_NS + round(seconds * S)
    todo = sorted(events, key=lambda e: e[0])

    async def scenario() -> None:
        chk: HealthChecker[str] = HealthChecker(
            lambda _k, tr: ctx.changes.append((_rel(round(tr.at * S)), tr.new.name)),
            rng=rng if rng is not None else _FirstAtOnce(7), tick=0.0, syn_fleet="py",
            quiet_passes=quiet)
        chk.add("b", "127.0.0.1", PORT, ctx.settings(hs))
        chk.start()
        assert (chk._entries["b"].fleet_id is None) == (path == "heap")
        try:
            while clock[0] <= end:
                now = clock[0]
                while todo and START_NS + round(todo[0][0] * S) <= now:
                    at, (what, arg) = todo.pop(0)
                    if what == "passive":
                        chk.passive_failures("b", arg)
                    elif what == "reload":
                        chk.add("b", "127.0.0.1", PORT, ctx.settings(arg))
                    if probe is not None:
                        probe(ctx, chk, at)
                if path == "heap":
                    engines[0].deliver()
                    chk._run()
                    in_flight = bool(engines[0].pending)
                    heap = chk._heap
                    nxt = heap[0][0] * S if heap else float(NO_EVENT)
                else:
                    runner = chk._fleet
                    assert runner is not None
                    runner._run()
                    fleet = fleets[0]
                    in_flight = bool(fleet.in_flight)
                    nxt = float(fleet.next_due())
                    sends.update(sent for _tid, sent, _seq in fleet.sent)
                    ctx.most_in_flight = max(ctx.most_in_flight, fleet.in_flight)
                if todo:
                    nxt = min(nxt, START_NS + round(todo[0][0] * S))
                clock[0] = now + STEP if in_flight else _grid_after(nxt, now)
        finally:
            chk.stop()

    asyncio.run(scenario())
    if path == "heap":
        ctx.starts = [_rel(t) for t in engines[0].starts]
        ctx.most_in_flight = engines[0].most_in_flight
    else:
        ctx.starts = [_rel(t) for t in sorted(sends)]
    return ctx


PATHS = ["heap", "fleet"]
LAT = STEP / S  # seconds a probe takes unless a scenario says otherwise

# interval 60 s while UP, 5 s while DOWN, 1 s in transition; passive checks on
PASSIVE = HealthSettings(interval=60.0, down_interval=5.0, fast_interval=1.0, timeout=0.5,
                         rise=2, fall=3, jitter=0.0, max_fails=3, fail_timeout=10.0)


def _dead_from_3_to_12(t: float) -> tuple[bool, float]:
    return not 3.0 <= t < 12.0, LAT


# -- passive failures -------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_passive_down_moves_the_waiting_probe_to_down_interval_from_the_previous_start(
        monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """DOWN by passive failures at 3 s: the probe due at 60 s comes at 0 + 5 s; the backend
    then recovers through fast_interval as usual."""
    ctx = run(monkeypatch, path, PASSIVE, 80.0, [(3.0, ("passive", 3))], _dead_from_3_to_12)
    assert ctx.starts == [0.0, 5.0, 10.0, 15.0, 16.0, 76.0]
    assert ctx.changes == [(3.0, "DOWN"), (16.0 + LAT, "UP")]


@pytest.mark.parametrize("path", PATHS)
def test_passive_down_after_down_interval_has_passed_probes_at_once(
        monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """0 + 5 s is past at 20 s: the probe comes now, not in the past and not at 60 s."""
    ctx = run(monkeypatch, path, PASSIVE, 40.0, [(20.0, ("passive", 3))],
              lambda t: (t < 3.0, LAT))
    assert ctx.starts == [0.0, 20.0, 25.0, 30.0, 35.0, 40.0]
    assert ctx.changes == [(20.0, "DOWN")]


@pytest.mark.parametrize("path", PATHS)
def test_passive_failures_below_max_fails_move_nothing(monkeypatch: pytest.MonkeyPatch,
                                                       path: str) -> None:
    ctx = run(monkeypatch, path, PASSIVE, 61.0, [(3.0, ("passive", 2))])
    assert ctx.starts == [0.0, 60.0]
    assert ctx.changes == []


# -- reloads ------------------------------------------------------------------------------------

SLOW = HealthSettings(interval=60.0, timeout=1.0, jitter=0.0)
FAST = HealthSettings(interval=2.0, timeout=1.0, jitter=0.0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("at, starts", [
    (1.0, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]),  # 0 + 2 s is still ahead
    (7.0, [0.0, 7.0, 9.0]),  # 0 + 2 s has passed: now
])
def test_reload_to_a_shorter_interval_moves_the_waiting_probe(
        monkeypatch: pytest.MonkeyPatch, path: str, at: float, starts: list[float]) -> None:
    ctx = run(monkeypatch, path, SLOW, 10.0, [(at, ("reload", FAST))])
    assert ctx.starts == starts


@pytest.mark.parametrize("path", PATHS)
def test_reload_to_a_longer_interval_moves_the_waiting_probe_later(
        monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """The same rule when the interval grows: 0 + 60 s, not the 2 s it was due at."""
    ctx = run(monkeypatch, path, FAST, 121.0, [(1.0, ("reload", SLOW))])
    assert ctx.starts == [0.0, 60.0, 120.0]


@pytest.mark.parametrize("path", PATHS)
def test_reload_of_the_interval_in_effect_only_counts(monkeypatch: pytest.MonkeyPatch,
                                                      path: str) -> None:
    """DOWN, down_interval 5 s in effect: a reload that changes `interval` (60 -> 2 s) moves
    nothing; one that changes down_interval (5 -> 3 s) does."""
    other = dataclasses.replace(PASSIVE, interval=2.0)
    shorter = dataclasses.replace(other, down_interval=3.0)
    ctx = run(monkeypatch, path, PASSIVE, 12.0,
              [(1.0, ("passive", 3)), (6.0, ("reload", other)), (7.0, ("reload", shorter))],
              lambda _t: (False, LAT))
    assert ctx.starts == [0.0, 5.0, 8.0, 11.0]


@pytest.mark.parametrize("path", PATHS)
def test_reload_without_a_change_of_schedule_moves_nothing(monkeypatch: pytest.MonkeyPatch,
                                                           path: str) -> None:
    """Equal settings, then settings that change only what a probe does (timeout, rise, fall):
    the due time stays exactly where it was, with jitter on (a new draw would move it)."""
    hs = dataclasses.replace(SLOW, jitter=0.5)
    same = HealthSettings(interval=60.0, timeout=1.0, jitter=0.5)
    probe_only = dataclasses.replace(same, timeout=0.5, rise=5, fall=1)
    reading: list[float] = []
    idents: set[int] = set()

    def before_and_after(ctx: Ctx, chk: HealthChecker[str], at: float) -> None:
        reading.append(pending(chk)[1])
        idents.add(chk._entries["b"].ident)  # the heap's: a new one when it is rescheduled

    events: list[Event] = [(1.0, ("read", None)), (2.0, ("reload", same)),
                           (3.0, ("reload", probe_only))]
    ctx = run(monkeypatch, path, hs, 4.0, events, rng=_FirstAtOnce(11),
              probe=before_and_after)
    assert len(reading) == 3 and reading[0] == reading[1] == reading[2]
    assert len(idents) == 1  # (on the fleet: the same draw and interval, the same due time)
    assert reading[0] - START_NS / S > 30.0  # with the jitter draw, between 30 and 90 s
    assert len(ctx.starts) == 1


@pytest.mark.parametrize("path", PATHS)
def test_reload_keeps_the_jitter_draw(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """Jitter 0.5: 60 -> 2 s keeps the factor the pending probe was scheduled with."""
    hs = dataclasses.replace(SLOW, jitter=0.5)
    fast = dataclasses.replace(FAST, jitter=0.5)
    starts: list[float] = []
    reading: list[float] = []

    def read(ctx: Ctx, chk: HealthChecker[str], at: float) -> None:
        start, due = pending(chk)
        starts.append(start)
        reading.append(due)

    run(monkeypatch, path, hs, 1.5, [(0.5, ("read", None)), (1.0, ("reload", fast))],
        rng=_FirstAtOnce(5), probe=read)
    start = starts[0]
    assert starts == [start, start] and start == START_NS / S
    before, after = (reading[0] - start) / 60.0, (reading[1] - start) / 2.0
    assert 0.5 <= before <= 1.5 and before != 1.0
    assert after == pytest.approx(before, rel=1e-6)


def _refused(_t: float) -> tuple[bool, float]:
    return False, LAT


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("hs, event, answer, starts", [
    (SLOW, ("reload", FAST), _always_up, [30.0, 32.0, 34.0]),
    (PASSIVE, ("passive", 3), _refused, [30.0, 35.0]),
])
def test_a_change_before_the_first_probe_leaves_it_where_it_is(
        monkeypatch: pytest.MonkeyPatch, path: str, hs: HealthSettings, event: tuple[str, Any],
        answer: Answer, starts: list[float]) -> None:
    """No previous start: the first probe stays at its random point of the first interval
    (30 s of 60 s here), as on the fleet; the change applies from its result on."""
    ctx = run(monkeypatch, path, hs, 35.0, [(10.0, event)], answer, rng=_FirstHalfway(3))
    assert ctx.starts == starts


# -- a probe in flight during the change ----------------------------------------------------


def _slow_answer(t: float) -> tuple[bool, float]:
    return True, 0.25  # every probe takes 250 ms


@pytest.mark.parametrize("path", PATHS)
def test_reload_while_a_probe_is_in_flight_waits_for_its_result(
        monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """The probe started at 0 s answers at 0.25 s; the reload at 0.125 s starts nothing
    beside it, and its result schedules the next one at the new interval."""
    ctx = run(monkeypatch, path, SLOW, 6.5, [(0.125, ("reload", FAST))], _slow_answer)
    assert ctx.starts == [0.0, 2.0, 4.0, 6.0]
    assert ctx.most_in_flight == 1


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("quiet", [True, False])
def test_passive_down_while_a_probe_is_in_flight_waits_for_its_result(
        monkeypatch: pytest.MonkeyPatch, path: str, quiet: bool) -> None:
    """DOWN at 60.125 s with the probe of 60 s in flight; it passes at 60.25 s (DOWN, going
    up 1/2: fast_interval), the next one at 61 s takes it UP."""
    ctx = run(monkeypatch, path, PASSIVE, 122.0, [(60.125, ("passive", 3))], _slow_answer,
              quiet=quiet)
    assert ctx.starts == [0.0, 60.0, 61.0, 121.0]
    assert ctx.changes == [(60.125, "DOWN"), (61.25, "UP")]
    assert ctx.most_in_flight == 1


# -- the heap's queue of due probes waiting for a free slot ----------------------------------


def _queue_run(monkeypatch: pytest.MonkeyPatch, new: HealthSettings, until: float,
               with_c: bool = False) -> dict[str, Any]:
    """max_in_flight 1, heap only: b (interval 2 s) probes at 0 s; a, added at 1 s, probes at
    once and takes 3 s, so b's probe due at 2 s waits for the slot (and c's, added at 0.25 s,
    due at 2.25 s, behind it); b is reloaded to `new` at 2.5 s. The clock moves by 0.125 s."""
    clock = [START_NS]
    monkeypatch.setattr(time, "monotonic_ns", lambda: clock[0])
    monkeypatch.setattr(time, "monotonic", lambda: clock[0] / S)
    engines: list[_Engine] = []

    def make_engine(_loop: object) -> _Engine:
        engines.append(_Engine(clock, lambda t: (True, 3.0 if t == 1.0 else LAT)))
        return engines[-1]
    monkeypatch.setattr(checker_mod, "ProbeEngine", make_engine)
    out: dict[str, Any] = {}

    async def go() -> None:
        chk: HealthChecker[str] = HealthChecker(lambda _k, _t: None, rng=_FirstAtOnce(1),
                                                tick=0.0, max_in_flight=1)
        chk.add("b", "127.0.0.1", 2, FAST)
        chk.start()
        try:
            while clock[0] <= START_NS + until * S:
                t = _rel(clock[0])
                if t == 0.25 and with_c:
                    chk.add("c", "127.0.0.1", 3, FAST)
                if t == 1.0:
                    chk.add("a", "127.0.0.1", 1, HealthSettings(interval=10.0, timeout=4.0,
                                                                jitter=0.0))
                if t == 2.5:
                    out["waiting_before"] = [e.key for e in chk._waiting if e.waiting]
                    chk.add("b", "127.0.0.1", 2, new)
                    out["waiting_after"] = [e.key for e in chk._waiting if e.waiting]
                    out["stats_waiting"] = chk.stats().waiting
                engines[0].deliver()
                chk._run()
                clock[0] += STEP * 64
        finally:
            chk.stop()

    asyncio.run(go())
    engine = engines[0]
    out["starts"] = [(_rel(t), key) for t, key in zip(engine.starts, engine.keys, strict=True)]
    out["most_in_flight"] = engine.most_in_flight
    return out


def test_waiting_probe_moved_later_leaves_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload at 2.5 s to 60 s takes b out of the queue: when a's slot frees at 4 s nothing
    starts; b's next probe comes at 0 + 60 s."""
    out = _queue_run(monkeypatch, SLOW, 60.5)
    assert out["waiting_before"] == ["b"] and out["waiting_after"] == []
    assert out["stats_waiting"] == 0  # its reference left in the queue is not counted
    assert out["starts"] == [(0.0, "b"), (1.0, "a"), (11.0, "a"), (21.0, "a"), (31.0, "a"),
                             (41.0, "a"), (51.0, "a"), (60.0, "b")]
    assert out["most_in_flight"] == 1


def test_waiting_probe_still_due_keeps_its_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload at 2.5 s to 1 s: 0 + 1 s is past, so b stays queued and starts when a's probe
    ends at 4 s; then every second."""
    out = _queue_run(monkeypatch, HealthSettings(interval=1.0, timeout=0.5, jitter=0.0), 6.0)
    assert out["waiting_before"] == ["b"] and out["waiting_after"] == ["b"]
    assert out["starts"] == [(0.0, "b"), (1.0, "a"), (4.0, "b"), (5.0, "b"), (6.0, "b")]
    assert out["most_in_flight"] == 1


def test_waiting_probe_still_due_keeps_its_place_ahead_of_later_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """b and c wait (in that order); b's reload keeps it first: b at 4 s, c when b's probe
    ends (the next step, 4.125 s)."""
    out = _queue_run(monkeypatch, HealthSettings(interval=1.0, timeout=0.5, jitter=0.0), 6.0,
                     with_c=True)
    assert out["waiting_before"] == ["b", "c"] and out["waiting_after"] == ["b", "c"]
    assert out["stats_waiting"] == 2
    assert out["starts"] == [(0.0, "b"), (0.25, "c"), (1.0, "a"), (4.0, "b"), (4.125, "c"),
                             (5.0, "b"), (6.0, "b")]


# -- many backends --------------------------------------------------------------------------


def test_reloads_of_many_backends_leave_a_bounded_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    """300 backends probed once, then reloaded to ever shorter intervals (60 s down to 2 s):
    every reload moves every waiting probe earlier, leaving a stale heap reference behind at
    the later time; those are dropped, so the heap stays within twice the backends (plus a
    little), and every backend keeps exactly one live reference, at its current due time."""
    clock = [START_NS]
    monkeypatch.setattr(time, "monotonic_ns", lambda: clock[0])
    monkeypatch.setattr(time, "monotonic", lambda: clock[0] / S)
    engines: list[_Engine] = []

    def make_engine(_loop: object) -> _Engine:
        engines.append(_Engine(clock, _always_up))
        return engines[-1]
    monkeypatch.setattr(checker_mod, "ProbeEngine", make_engine)
    names = [f"b{i}" for i in range(300)]
    intervals = [50.0, 40.0, 30.0, 20.0, 10.0, 5.0, 4.0, 3.0, 2.0]

    async def go() -> None:
        chk: HealthChecker[str] = HealthChecker(lambda _k, _t: None, rng=_FirstAtOnce(1),
                                                tick=0.0, batch=1000)
        for i, name in enumerate(names):
            chk.add(name, "127.0.0.1", 1000 + i, SLOW)
        chk.start()
        try:
            chk._run()
            clock[0] += STEP
            engines[0].deliver()
            assert len(engines[0].starts) == 300 and not engines[0].pending
            most = 0
            for interval in intervals:
                clock[0] += STEP
                hs = HealthSettings(interval=interval, timeout=1.0, jitter=0.0)
                for i, name in enumerate(names):
                    chk.add(name, "127.0.0.1", 1000 + i, hs)
                    most = max(most, len(chk._heap))
            assert most <= 2 * 300 + 64 + 1
            live = [item for item in chk._heap if item[1] in chk._by_ident]
            assert sorted(i for _d, i in live) == sorted(e.ident for e in chk._entries.values())
            assert {d for d, _i in live} == {START_NS / S + 2.0}  # 0 + the last interval
        finally:
            chk.stop()

    asyncio.run(go())
