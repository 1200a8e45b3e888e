"""Unit tests of `fast_interval` (HAProxy's fastinter): the interval of a backend in transition.

The scheduling rule is pure (`dampener.probe_interval`, `Dampener.interval`), so most tests feed
a dampener with a fake clock (a float) and read the interval it asks for. Two checker-level
tests run the real scheduler under a fake clock, never sleeping and never touching the network:
the heap path (`kind = "tcp"`) with a scripted probe engine in place of `ProbeEngine`, and the
SYN fleet path (`kind = "syn"`) on the Python twin with a scripted network (the rig of
test_health_quiet.py). Both check the gaps between probe starts through a whole UP -> DOWN -> UP
cycle.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import l4lb.health.checker as checker_mod
import l4lb.health.synfleet as synfleet
from l4lb.config import load_text
from l4lb.health import Health, HealthChecker, HealthSettings
from l4lb.health.dampener import Dampener, probe_interval
from l4lb.health.probe import ProbeResult, ProbeSpec
from l4lb.health.settings import HealthSettingsError

from .fakehost import ExampleHost
from .test_health_quiet import START_NS, Rig, ScriptFleet, _FakeLane

REFUSED = "connect refused"
OK = "connect ok"

# interval 1 s while UP, 3 s while DOWN, 0.25 s in transition
HS = HealthSettings(interval=1.0, down_interval=3.0, fast_interval=0.25, timeout=0.2,
                    rise=2, fall=3, jitter=0.0)
UP, DOWN, FAST = 1.0, 3.0, 0.25


# -- settings -------------------------------------------------------------------------------


def test_without_fast_interval_nothing_changes() -> None:
    assert HealthSettings().fast_interval is None
    # every state probes at interval / down_interval, as before the key existed: going up
    # stays at down_interval (HAProxy without fastinter would use inter there)
    d = Dampener(HealthSettings(interval=1.0, down_interval=3.0, jitter=0.0), now=0.0)
    d.probe(True, OK, 0.0)
    d.probe(False, REFUSED, 1.0)
    assert d.interval == 1.0  # going down 1/3
    d.probe(False, REFUSED, 2.0)
    d.probe(False, REFUSED, 3.0)
    d.probe(True, OK, 6.0)
    assert (d.state, d.interval) == (Health.DOWN, 3.0)  # going up 1/2
    d.probe(True, OK, 9.0)
    assert (d.state, d.interval) == (Health.UP, 1.0)
    plain = HealthSettings(interval=2.0)
    assert [probe_interval(plain, st, s, f) for st, s, f in (
        (Health.UP, 0, 0), (Health.UP, 0, 2), (Health.DOWN, 0, 0), (Health.DOWN, 1, 0))] == \
        [2.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize("kwargs, problem", [
    ({"fast_interval": 0.0}, "health.fast_interval: 0s must be at least 0.01s"),
    ({"fast_interval": 0.005}, "health.fast_interval: 0.005s must be at least 0.01s"),
    ({"fast_interval": float("nan")}, "health.fast_interval: nan is not a duration"),
    ({"fast_interval": 0.5}, "health.timeout: 1s must not exceed fast_interval 0.5s"),
    ({"fast_interval": 0.5, "down_interval": 0.5},
     "health.timeout: 1s must not exceed down_interval 0.5s"),
])
def test_fast_interval_is_validated_like_the_other_intervals(kwargs: dict[str, Any],
                                                             problem: str) -> None:
    with pytest.raises(HealthSettingsError) as info:
        HealthSettings(**kwargs)
    assert problem in info.value.problems


def test_every_interval_problem_is_reported_at_once() -> None:
    with pytest.raises(HealthSettingsError) as info:
        HealthSettings(interval=0.5, down_interval=0.4, fast_interval=0.3, timeout=0.6)
    assert info.value.problems == [
        "health.timeout: 0.6s must not exceed interval 0.5s",
        "health.timeout: 0.6s must not exceed down_interval 0.4s",
        "health.timeout: 0.6s must not exceed fast_interval 0.3s",
    ]


# -- the pure rule --------------------------------------------------------------------------


@pytest.mark.parametrize("state, successes, failures, expected", [
    (Health.UP, 0, 0, UP),  # steady (or unconfirmed: no failure counted yet)
    (Health.UP, 0, 1, FAST),  # going down 1/3
    (Health.UP, 0, 2, FAST),  # going down 2/3
    (Health.DOWN, 0, 0, DOWN),  # just taken DOWN
    (Health.DOWN, 0, 4, DOWN),  # DOWN and still failing
    (Health.DOWN, 1, 0, FAST),  # going up 1/2
])
def test_probe_interval_by_state(state: Health, successes: int, failures: int,
                                 expected: float) -> None:
    assert probe_interval(HS, state, successes, failures) == expected


def test_interval_through_a_whole_cycle() -> None:
    """The interval after each result, as the checker reads it right after the dampener."""
    d = Dampener(HS, now=0.0)
    seen: list[tuple[str, float]] = []
    t = 0.0
    for ok in (True, True, False, False, False, False, True, True, True):
        d.probe(ok, OK if ok else REFUSED, t)
        seen.append((d.snapshot(t).describe(), d.interval))
        t += d.interval
    assert seen == [
        ("UP", UP),
        ("UP", UP),
        ("UP, going down (1/3)", FAST),  # the NEXT probe after the first failure is fast
        ("UP, going down (2/3)", FAST),
        ("DOWN", DOWN),  # the transition resets the counts: down_interval
        ("DOWN", DOWN),  # failures while DOWN change nothing
        ("DOWN, going up (1/2)", FAST),
        ("UP", UP),  # rise reached: back to interval
        ("UP", UP),
    ]


def test_a_pass_while_going_down_ends_the_fast_probes() -> None:
    d = Dampener(HS, now=0.0)
    d.probe(True, OK, 0.0)
    d.probe(False, REFUSED, 1.0)
    assert d.interval == FAST
    d.probe(True, OK, 1.25)
    assert d.interval == UP


def test_a_failure_while_going_up_ends_the_fast_probes() -> None:
    d = Dampener(HealthSettings(interval=1.0, down_interval=3.0, fast_interval=0.25,
                                timeout=0.2, rise=3, initial_state="down"), now=0.0)
    assert d.interval == DOWN  # unproven, DOWN by initial_state
    d.probe(True, OK, 0.0)
    d.probe(True, OK, 0.25)
    assert (d.state, d.interval) == (Health.DOWN, FAST)  # going up 2/3
    d.probe(False, REFUSED, 0.5)
    assert (d.state, d.interval) == (Health.DOWN, DOWN)


def test_unconfirmed_backend_goes_down_at_its_first_failure_so_never_probes_fast() -> None:
    d = Dampener(HS, now=0.0)
    assert d.snapshot(0.0).describe() == "UP (unconfirmed)" and d.interval == UP
    d.probe(False, REFUSED, 0.0)
    assert (d.state, d.interval) == (Health.DOWN, DOWN)


def test_failures_ignored_in_the_start_period_do_not_make_it_fast() -> None:
    hs = HealthSettings(interval=1.0, down_interval=3.0, fast_interval=0.25, timeout=0.2,
                        start_period=10.0)
    d = Dampener(hs, now=0.0)
    d.probe(False, REFUSED, 1.0)
    d.probe(False, REFUSED, 2.0)
    assert (d.snapshot(2.0).describe(), d.interval) == ("UP (unconfirmed)", UP)
    d.probe(True, OK, 3.0)  # ends the start period
    d.probe(False, REFUSED, 4.0)
    assert (d.snapshot(4.0).describe(), d.interval) == ("UP, going down (1/3)", FAST)


def test_passes_in_the_start_period_of_a_down_backend_count_and_make_it_fast() -> None:
    hs = HealthSettings(interval=1.0, down_interval=3.0, fast_interval=0.25, timeout=0.2,
                        start_period=10.0, initial_state="down")
    d = Dampener(hs, now=0.0)
    d.probe(False, REFUSED, 1.0)  # ignored
    assert d.interval == DOWN
    d.probe(True, OK, 2.0)
    assert (d.snapshot(2.0).describe(), d.interval) == ("DOWN, going up (1/2)", FAST)


def test_passive_failures_never_make_it_fast() -> None:
    hs = HealthSettings(interval=1.0, down_interval=3.0, fast_interval=0.25, timeout=0.2,
                        max_fails=5, fail_timeout=10.0)
    d = Dampener(hs, now=0.0)
    d.probe(True, OK, 0.0)
    d.passive_failures(4, 1.0)  # below max_fails: counted in the window, not toward fall
    assert (d.state, d.interval) == (Health.UP, UP)
    d.passive_failures(1, 2.0)  # DOWN at once
    assert (d.state, d.interval) == (Health.DOWN, DOWN)
    d.probe(True, OK, 5.0)  # comes back through probes, fast on its way up
    assert d.interval == FAST


def test_a_reload_applies_the_new_fast_interval_to_the_current_state() -> None:
    d = Dampener(HS, now=0.0)
    d.probe(True, OK, 0.0)
    d.probe(False, REFUSED, 1.0)
    d.reconfigure(HealthSettings(interval=1.0, fast_interval=0.1, timeout=0.1, jitter=0.0))
    assert d.interval == 0.1
    d.reconfigure(HealthSettings(interval=1.0, timeout=0.1))
    assert d.interval == 1.0  # fast_interval left out: = interval


# -- the checker's heap (every kind but "syn") under a fake clock -----------------------------


class _FirstAtOnce(random.Random):
    """The first probe at once (so every start falls on the fake clock's 1 ms grid)."""

    def uniform(self, a: float, b: float) -> float:
        return a


class _Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ScriptEngine:
    """Stands in for ProbeEngine: records each probe's start and answers it `LATENCY` later
    with `answer(seconds since the start of the run)` (True: pass, False: refused)."""

    LATENCY = 0.002

    def __init__(self, clock: list[float], answer: Callable[[float], bool]) -> None:
        self.clock = clock
        self.answer = answer
        self.starts: list[float] = []
        self.pending: list[tuple[float, Callable[[Any, ProbeResult], None], Any, bool]] = []
        self.syn_engine = None

    def start(self, spec: ProbeSpec, cb: Callable[[Any, ProbeResult], None],
              entry: Any) -> _Handle:
        now = self.clock[0]
        self.starts.append(now)
        self.pending.append((now + self.LATENCY, cb, entry, self.answer(now)))
        return _Handle()

    def deliver(self) -> None:
        now = self.clock[0]
        due = [p for p in self.pending if p[0] <= now]
        self.pending = [p for p in self.pending if p[0] > now]
        for _at, cb, entry, ok in due:
            cb(entry, ProbeResult(ok, OK if ok else REFUSED, self.LATENCY, True))

    def close(self) -> None:
        pass


def _heap_run(monkeypatch: pytest.MonkeyPatch, hs: HealthSettings, answer: Callable[[float], bool],
              seconds: float) -> tuple[list[float], list[tuple[float, Health]]]:
    """Probe starts and transitions (times from the start) of one backend over `seconds`."""
    clock = [1000.0]
    engines: list[ScriptEngine] = []

    def make(_loop: object) -> ScriptEngine:
        engines.append(ScriptEngine(clock, lambda t: answer(t - 1000.0)))
        return engines[-1]

    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(checker_mod, "ProbeEngine", make)
    changes: list[tuple[float, Health]] = []

    async def scenario() -> None:
        # no await: the loop never runs its timers, the test calls the scheduler by hand
        chk: HealthChecker[str] = HealthChecker(
            lambda _k, tr: changes.append((round(tr.at - 1000.0, 3), tr.new)),
            rng=_FirstAtOnce(7), tick=0.0)
        chk.add("b", "127.0.0.1", 9, hs)
        chk.start()
        try:
            while clock[0] < 1000.0 + seconds:
                clock[0] = round(clock[0] + 0.001, 6)
                engines[0].deliver()
                heap = chk._heap
                if heap and heap[0][0] <= clock[0]:
                    chk._run()
        finally:
            chk.stop()

    asyncio.run(scenario())
    return [round(t - 1000.0, 3) for t in engines[0].starts], changes


def _gaps(starts: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in itertools.pairwise(starts)]


def _cycle(t: float) -> bool:
    """Passes, refused from 5 s to 14 s, passes again."""
    return not 5.0 <= t < 14.0


def test_heap_checker_probes_at_fast_interval_while_in_transition(
        monkeypatch: pytest.MonkeyPatch) -> None:
    starts, changes = _heap_run(monkeypatch, HS, _cycle, 22.0)
    gaps = _gaps(starts)
    first_fail = next(i for i, t in enumerate(starts) if _cycle(t) is False)
    first_pass_again = next(i for i, t in enumerate(starts) if t >= 14.0)
    lat = ScriptEngine.LATENCY
    assert changes == [(round(starts[first_fail + 2] + lat, 3), Health.DOWN),
                       (round(starts[first_pass_again + 1] + lat, 3), Health.UP)]
    # the start is within the first interval, then steady UP: interval
    assert set(gaps[:first_fail]) == {UP}
    # after the 1st and 2nd failure: fast; after the 3rd (DOWN): down_interval
    assert gaps[first_fail:first_fail + 3] == [FAST, FAST, DOWN]
    assert set(gaps[first_fail + 2:first_pass_again]) == {DOWN}
    # after the first pass while DOWN: fast; after the second (UP): interval again
    assert gaps[first_pass_again:] == [FAST] + [UP] * (len(gaps) - first_pass_again - 1)
    assert len(gaps) - first_pass_again - 1 >= 3


def test_heap_checker_without_fast_interval_is_unchanged(
        monkeypatch: pytest.MonkeyPatch) -> None:
    hs = HealthSettings(interval=1.0, down_interval=3.0, timeout=0.2, jitter=0.0)
    starts, _changes = _heap_run(monkeypatch, hs, _cycle, 22.0)
    first_fail = next(i for i, t in enumerate(starts) if _cycle(t) is False)
    gaps = _gaps(starts)
    assert gaps[first_fail:first_fail + 3] == [UP, UP, DOWN]


# -- the SYN fleet (kind = "syn") under a fake clock -----------------------------------------


@pytest.fixture
def fleet_rig(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    r = Rig()
    monkeypatch.setattr(time, "monotonic_ns", lambda: r.clock[0])
    monkeypatch.setattr(time, "monotonic", lambda: r.clock[0] / 1e9)
    monkeypatch.setattr(synfleet, "_Lane", _FakeLane)
    monkeypatch.setattr(synfleet, "learn_source", lambda _spec: socket.inet_aton("127.0.0.1"))
    yield r


def _fleet_run(rig: Rig, monkeypatch: pytest.MonkeyPatch, hs: HealthSettings,
               answer: Callable[[float], bool], seconds: float,
               quiet: bool = True) -> tuple[list[float], list[tuple[float, Health]]]:
    """Like _heap_run, on the SYN fleet's Python twin: SYN send times and transitions."""
    sends: set[int] = set()

    def script(_name: str, sent: int) -> tuple[bool, int]:
        sends.add(sent)
        return answer((sent - START_NS) / 1e9), 2_000_000  # answered 2 ms later

    def make(_impl: str, seed: int, max_results: int = 1024) -> ScriptFleet:
        fleet = ScriptFleet(seed, max_results, script)
        fleet.ports = {2000: "b"}
        rig.fleets.append(fleet)
        return fleet

    monkeypatch.setattr(synfleet, "make_fleet", make)
    changes: list[tuple[float, Health]] = []

    async def scenario() -> None:
        chk: HealthChecker[str] = HealthChecker(
            lambda _k, tr: changes.append((round(tr.at - START_NS / 1e9, 3), tr.new)),
            rng=random.Random(7), syn_fleet="py", quiet_passes=quiet)
        chk.add("b", "127.0.0.1", 2000, hs)
        chk.start()
        try:
            assert chk._entries["b"].fleet_id is not None  # on the fleet, not in the heap
            while rig.clock[0] < START_NS + int(seconds * 1e9):
                rig.clock[0] += 1_000_000
                runner = chk._fleet
                assert runner is not None
                runner._run()
        finally:
            chk.stop()

    asyncio.run(scenario())
    return [round((s - START_NS) / 1e9, 3) for s in sorted(sends)], changes


@pytest.mark.parametrize("quiet", [True, False])
def test_syn_fleet_probes_at_fast_interval_while_in_transition(
        fleet_rig: Rig, monkeypatch: pytest.MonkeyPatch, quiet: bool) -> None:
    hs = HealthSettings(kind="syn", interval=1.0, down_interval=3.0, fast_interval=0.25,
                        timeout=0.2, rise=2, fall=3, jitter=0.0)
    starts, changes = _fleet_run(fleet_rig, monkeypatch, hs, _cycle, 22.0, quiet)
    gaps = _gaps(starts)
    first_fail = next(i for i, t in enumerate(starts) if _cycle(t) is False)
    first_pass_again = next(i for i, t in enumerate(starts) if t >= 14.0)
    assert [st for _t, st in changes] == [Health.DOWN, Health.UP]
    assert set(gaps[:first_fail]) == {UP}
    assert gaps[first_fail:first_fail + 3] == [FAST, FAST, DOWN]
    assert set(gaps[first_fail + 2:first_pass_again]) == {DOWN}
    assert gaps[first_pass_again:] == [FAST] + [UP] * (len(gaps) - first_pass_again - 1)
    assert len(gaps) - first_pass_again - 1 >= 3


def test_syn_fleet_going_down_then_recovering_returns_to_interval(
        fleet_rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """One failure, then passes: fast once, then interval again (the inlined pass path)."""
    hs = HealthSettings(kind="syn", interval=1.0, down_interval=3.0, fast_interval=0.25,
                        timeout=0.2, rise=2, fall=3, jitter=0.0)
    failed: list[float] = []

    def once(t: float) -> bool:  # the first probe sent at 5 s or later fails, no other
        if t >= 5.0 and (not failed or failed[0] == t):
            failed[:1] = [t]
            return False
        return True

    starts, changes = _fleet_run(fleet_rig, monkeypatch, hs, once, 12.0)
    gaps = _gaps(starts)
    first_fail = starts.index(failed[0])
    assert changes == []
    assert gaps[first_fail:] == [FAST] + [UP] * (len(gaps) - first_fail - 1)


# -- the config file ------------------------------------------------------------------------


def test_config_reads_fast_interval_and_leaves_it_unset_by_default() -> None:
    def health(lines: str) -> HealthSettings:
        text = ('[[services]]\nname = "web"\nlisten = ["127.0.0.1:8080"]\n'
                'backends = [{ address = "127.0.0.1:9001" }]\n'
                f'[services.health]\n{lines}\n')
        hs = load_text(text, "t.toml", host=ExampleHost()).services[0].health
        assert hs is not None
        return hs

    hs = health('interval = "2s"\nfast_interval = "500ms"\ndown_interval = "5s"\n'
                'timeout = "500ms"')
    assert (hs.interval, hs.fast_interval, hs.down_interval) == (2.0, 0.5, 5.0)
    assert probe_interval(hs, Health.UP, 0, 1) == 0.5
    hs = health('interval = "3s"')
    assert hs.fast_interval is None and probe_interval(hs, Health.UP, 0, 1) == 3.0
