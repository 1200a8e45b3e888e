"""Review of the heap's rescheduling (`HealthChecker._retime`): the cases the first tests left
out. A transition callback that re-adds its backend (a resync from inside the callback) must
not leave the backend with two probe chains; a probe that `_retime` took out of the queue of
due probes and that comes due again while the slots are still busy joins the queue at its end,
once (not ahead of probes that waited longer, and counted once in `stats().waiting`).

Fake clock and scripted engine of test_health_resched.py; nothing sleeps."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import l4lb.health.checker as checker_mod
from l4lb.health import HealthChecker, HealthSettings, Transition

from .test_health_quiet import START_NS
from .test_health_resched import FAST, LAT, STEP, S, _Engine, _FirstAtOnce, _rel

# UP, one failure takes it DOWN; 60 s while UP, 5 s while DOWN
ONE_FALL = HealthSettings(interval=60.0, down_interval=5.0, timeout=1.0, rise=1, fall=1,
                          jitter=0.0)


def test_callback_that_re_adds_its_backend_leaves_one_probe_chain(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """b fails its probe at 0 s (DOWN, 5 s in effect); the transition callback re-adds b with
    the same settings, as a resync of every backend would. _retime sees the interval in effect
    change (60 -> 5 s) and schedules the next probe at 0 + 5 s; the result path must not push
    a second one: one probe every 5 s, never two at once."""
    clock = [START_NS]
    monkeypatch.setattr(time, "monotonic_ns", lambda: clock[0])
    monkeypatch.setattr(time, "monotonic", lambda: clock[0] / S)
    engines: list[_Engine] = []

    def make_engine(_loop: object) -> _Engine:
        engines.append(_Engine(clock, lambda _t: (False, LAT)))
        return engines[-1]
    monkeypatch.setattr(checker_mod, "ProbeEngine", make_engine)
    chk_box: list[HealthChecker[str]] = []

    def on_transition(key: str, _tr: Transition) -> None:
        chk_box[0].add(key, "127.0.0.1", 2, ONE_FALL)  # a resync from inside the callback

    async def go() -> None:
        chk: HealthChecker[str] = HealthChecker(on_transition, rng=_FirstAtOnce(1), tick=0.0)
        chk_box.append(chk)
        chk.add("b", "127.0.0.1", 2, ONE_FALL)
        chk.start()
        try:
            while clock[0] <= START_NS + 16 * S:
                engines[0].deliver()
                chk._run()
                clock[0] += STEP * 64
            live.extend(i for _d, i in chk._heap if i in chk._by_ident)
        finally:
            chk.stop()

    live: list[int] = []
    asyncio.run(go())
    engine = engines[0]
    assert [_rel(t) for t in engine.starts] == [0.0, 5.0, 10.0, 15.0]
    assert engine.most_in_flight == 1
    assert len(live) == 1  # one heap reference, under its current ident


def _requeue_run(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """max_in_flight 1: b (2 s) probes at 0 s, c (2 s) is added at 0.25 s and probes at once;
    a (added at 1 s) probes at once for 3 s. b's probe due at 2 s and c's due at 2.25 s wait
    (b first). At 2.5 s b is reloaded to 3.5 s: 0 + 3.5 s is ahead, b leaves the queue. At
    3.5 s b is due again and the slot is still a's: b waits again, behind c, which has waited
    since 2.25 s."""
    clock = [START_NS]
    monkeypatch.setattr(time, "monotonic_ns", lambda: clock[0])
    monkeypatch.setattr(time, "monotonic", lambda: clock[0] / S)
    engines: list[_Engine] = []

    def make_engine(_loop: object) -> _Engine:
        engines.append(_Engine(clock, lambda t: (True, 3.0 if t == 1.0 else LAT)))
        return engines[-1]
    monkeypatch.setattr(checker_mod, "ProbeEngine", make_engine)
    out: dict[str, Any] = {}
    later = HealthSettings(interval=3.5, timeout=1.0, jitter=0.0)

    async def go() -> None:
        chk: HealthChecker[str] = HealthChecker(lambda _k, _t: None, rng=_FirstAtOnce(1),
                                                tick=0.0, max_in_flight=1)
        chk.add("b", "127.0.0.1", 2, FAST)
        chk.start()
        try:
            while clock[0] <= START_NS + 5 * S:
                t = _rel(clock[0])
                if t == 0.25:
                    chk.add("c", "127.0.0.1", 3, FAST)
                if t == 1.0:
                    chk.add("a", "127.0.0.1", 1, HealthSettings(interval=10.0, timeout=4.0,
                                                                jitter=0.0))
                if t == 2.5:
                    chk.add("b", "127.0.0.1", 2, later)
                engines[0].deliver()
                chk._run()
                if t == 3.75:
                    out["stats_waiting"] = chk.stats().waiting
                clock[0] += STEP * 64
        finally:
            chk.stop()

    asyncio.run(go())
    engine = engines[0]
    out["starts"] = [(_rel(t), key) for t, key in zip(engine.starts, engine.keys, strict=True)]
    return out


def test_a_probe_that_left_the_queue_rejoins_it_at_the_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = _requeue_run(monkeypatch)
    assert out["starts"][:5] == [(0.0, "b"), (0.25, "c"), (1.0, "a"), (4.0, "c"),
                                 (4.125, "b")]


def test_a_probe_that_left_the_queue_and_rejoined_it_counts_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """At 3.75 s two probes wait (c's and b's), not three."""
    assert _requeue_run(monkeypatch)["stats_waiting"] == 2


def test_the_slot_freed_by_a_re_added_backend_serves_the_queue(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """max_in_flight 1: b's probe (0 s, 1 s long) fails, c's (due at 0.5 s) waits for the slot.
    b's result frees it and its transition callback re-adds b: the checker must still run its
    queue at once (a kick), not leave c waiting for the next due time of the heap (b's, 5 s)."""
    clock = [START_NS]
    monkeypatch.setattr(time, "monotonic_ns", lambda: clock[0])
    monkeypatch.setattr(time, "monotonic", lambda: clock[0] / S)
    engines: list[_Engine] = []

    def make_engine(_loop: object) -> _Engine:
        engines.append(_Engine(clock, lambda t: (False, 1.0) if t == 0.0 else (True, LAT)))
        return engines[-1]
    monkeypatch.setattr(checker_mod, "ProbeEngine", make_engine)
    chk_box: list[HealthChecker[str]] = []

    def on_transition(key: str, _tr: Transition) -> None:
        if key == "b":
            chk_box[0].add(key, "127.0.0.1", 2, ONE_FALL)

    kicked: list[bool] = []

    async def go() -> None:
        chk: HealthChecker[str] = HealthChecker(on_transition, rng=_FirstAtOnce(1), tick=0.0,
                                                max_in_flight=1)
        chk_box.append(chk)
        chk.add("b", "127.0.0.1", 2, ONE_FALL)
        chk.start()
        try:
            chk._run()  # b starts at 0 s
            clock[0] += S // 2
            chk.add("c", "127.0.0.1", 3, ONE_FALL)  # due at once: waits for b's slot
            chk._run()
            assert [e.key for e in chk._waiting if e.waiting] == ["c"]
            clock[0] += S // 2
            chk._kick_pending = False
            engines[0].deliver()  # b fails: DOWN, the callback re-adds b
            kicked.append(chk._kick_pending)
        finally:
            chk.stop()

    asyncio.run(go())
    assert kicked == [True]
