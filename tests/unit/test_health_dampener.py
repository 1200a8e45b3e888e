"""Unit tests of the health dampener (rise/fall state machine) and of HealthSettings validation.

Pure: a fake clock is a float passed to every call; nothing sleeps, nothing touches a socket.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l4lb.health.dampener import Dampener, Health, Transition, transition_log_line
from l4lb.health.settings import DEFAULT_SETTINGS, HealthSettings, HealthSettingsError

REFUSED = "connect refused"
OK = "connect ok"


def fails(d: Dampener, n: int, t: float, step: float = 1.0) -> tuple[list[Transition], float]:
    """Feed n failed probes starting at time t; returns the transitions and the next time."""
    out = []
    for _ in range(n):
        tr = d.probe(False, REFUSED, t)
        if tr is not None:
            out.append(tr)
        t += step
    return out, t


def passes(d: Dampener, n: int, t: float, step: float = 1.0) -> tuple[list[Transition], float]:
    out = []
    for _ in range(n):
        tr = d.probe(True, OK, t)
        if tr is not None:
            out.append(tr)
        t += step
    return out, t


# -- settings ------------------------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    s = DEFAULT_SETTINGS
    assert (s.kind, s.interval, s.timeout, s.rise, s.fall) == ("tcp", 2.0, 1.0, 2, 3)
    assert (s.initial_state, s.start_period, s.jitter) == ("up", 0.0, 0.1)
    assert (s.max_fails, s.fail_timeout, s.min_healthy, s.slow_start) == (0, 10.0, 0.1, 0.0)
    assert s.effective_down_interval == 2.0
    assert HealthSettings(down_interval=10.0).effective_down_interval == 10.0


def test_settings_collect_every_problem_with_field_names() -> None:
    with pytest.raises(HealthSettingsError) as info:
        HealthSettings(interval=1.0, timeout=3.0, rise=0, jitter=0.9, port=70000,
                       source="not-an-ip")
    problems = info.value.problems
    assert "health.timeout: 3s must not exceed interval 1s" in problems
    assert any(p.startswith("health.rise:") for p in problems)
    assert any(p.startswith("health.jitter:") for p in problems)
    assert any(p.startswith("health.port:") for p in problems)
    assert any(p.startswith("health.source:") for p in problems)
    assert len(problems) == 5
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("kwargs, field", [
    ({"kind": "send_expect"}, "health.expect"),
    ({"kind": "tcp", "send": b"PING\r\n"}, "health.send/expect"),
    ({"kind": "ftp"}, "health.kind"),
    ({"interval": 0.0}, "health.interval"),
    ({"timeout": 0.5, "down_interval": 0.2}, "health.timeout"),
    ({"min_healthy": 1.5}, "health.min_healthy"),
    ({"max_fails": -1}, "health.max_fails"),
    ({"initial_state": "maybe"}, "health.initial_state"),
    ({"kind": "send_expect", "expect": "text"}, "health.expect"),
    ({"kind": "send_expect", "expect": re.compile("text")}, "health.expect"),
    ({"start_period": -1.0}, "health.start_period"),
])
def test_settings_reject(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(HealthSettingsError) as info:
        HealthSettings(**kwargs)  # type: ignore[arg-type]
    assert any(p.startswith(field + ":") for p in info.value.problems), info.value.problems


def test_settings_accept_send_expect_with_prefix_or_regex() -> None:
    a = HealthSettings(kind="send_expect", send=b"PING\r\n", expect=b"+PONG")
    b = HealthSettings(kind="send_expect", expect=re.compile(rb"^220 "))
    assert a.expect == b"+PONG"
    assert isinstance(b.expect, re.Pattern)


# -- initial state -------------------------------------------------------------------------


def test_starts_up_unconfirmed_and_first_failure_takes_it_down_at_once() -> None:
    d = Dampener(HealthSettings(), now=0.0)
    assert d.state is Health.UP
    assert d.snapshot(0.0).describe() == "UP (unconfirmed)"
    tr = d.probe(False, REFUSED, 1.0)
    assert tr == Transition(Health.UP, Health.DOWN, "connect refused (no probe has passed yet)",
                            1.0)
    assert d.snapshot(1.0).state is Health.DOWN


def test_confirmed_up_needs_fall_consecutive_failures() -> None:
    d = Dampener(HealthSettings(fall=3), now=0.0)
    assert d.probe(True, OK, 1.0) is None
    assert d.snapshot(1.0).describe() == "UP"
    got, t = fails(d, 2, 2.0)
    assert got == [] and d.state is Health.UP
    assert d.snapshot(t).describe() == "UP, going down (2/3)"
    tr = d.probe(False, REFUSED, t)
    assert tr is not None
    assert (tr.old, tr.new, tr.reason, tr.at, tr.passive) == (
        Health.UP, Health.DOWN, "connect refused (3/3 probes failed)", t, False)


def test_a_pass_resets_the_failure_count() -> None:
    d = Dampener(HealthSettings(fall=3), now=0.0)
    passes(d, 1, 0.0)
    t = 1.0
    for _ in range(5):  # fail, fail, pass: never three in a row
        got, t = fails(d, 2, t)
        assert got == []
        got, t = passes(d, 1, t)
        assert got == []
    assert d.state is Health.UP


def test_down_needs_rise_consecutive_passes_and_a_failure_resets_them() -> None:
    d = Dampener(HealthSettings(rise=3), now=0.0)
    fails(d, 1, 0.0)  # unconfirmed -> DOWN
    got, t = passes(d, 2, 1.0)
    assert got == [] and d.state is Health.DOWN
    assert d.snapshot(t).describe() == "DOWN, going up (2/3)"
    got, t = fails(d, 1, t)
    assert d.snapshot(t).describe() == "DOWN"
    got, t = passes(d, 2, t)
    assert got == []
    tr = d.probe(True, "expect matched", t)
    assert tr is not None
    assert (tr.old, tr.new, tr.reason) == (Health.DOWN, Health.UP,
                                           "expect matched (3/3 probes passed)")
    assert d.up_since == t


def test_initial_down_waits_for_rise() -> None:
    d = Dampener(HealthSettings(initial_state="down", rise=2), now=0.0)
    assert d.state is Health.DOWN
    assert d.up_since is None
    assert d.probe(True, OK, 1.0) is None
    tr = d.probe(True, OK, 2.0)
    assert tr is not None and tr.new is Health.UP
    assert tr.reason == "connect ok (2/2 probes passed)"
    # now confirmed: one failure is not enough any more
    assert d.probe(False, REFUSED, 3.0) is None


# -- start period --------------------------------------------------------------------------


def test_start_period_ignores_failures_until_it_ends() -> None:
    d = Dampener(HealthSettings(start_period=10.0, fall=3), now=100.0)
    got, _ = fails(d, 8, 101.0)  # 101..108, all inside the period
    assert got == [] and d.state is Health.UP
    snap = d.snapshot(108.5)
    assert snap.in_start_period and snap.failures == 0
    assert snap.last_ok is False and snap.last_reason == REFUSED
    # the period is over at 110: the backend is still unconfirmed, so one failure is enough
    tr = d.probe(False, REFUSED, 110.0)
    assert tr is not None and tr.new is Health.DOWN


def test_a_pass_ends_the_start_period_early() -> None:
    d = Dampener(HealthSettings(start_period=60.0, fall=2), now=0.0)
    assert d.probe(True, OK, 5.0) is None
    assert not d.snapshot(5.0).in_start_period
    assert d.probe(False, REFUSED, 6.0) is None
    tr = d.probe(False, REFUSED, 7.0)
    assert tr is not None and tr.reason == "connect refused (2/2 probes failed)"


# -- passive -------------------------------------------------------------------------------


def test_passive_failures_within_the_window_take_it_down_at_once() -> None:
    d = Dampener(HealthSettings(max_fails=5, fail_timeout=10.0), now=0.0)
    passes(d, 1, 0.0)
    assert d.passive_failures(2, 1.0) is None
    assert d.passive_failures(2, 5.0) is None
    tr = d.passive_failures(1, 9.0)
    assert tr is not None
    assert (tr.new, tr.passive, tr.at) == (Health.DOWN, True, 9.0)
    assert tr.reason == "5 failed connects within 10s (passive, max_fails 5)"


def test_passive_failures_outside_the_window_expire() -> None:
    d = Dampener(HealthSettings(max_fails=3, fail_timeout=10.0), now=0.0)
    passes(d, 1, 0.0)
    assert d.passive_failures(2, 1.0) is None
    assert d.passive_failures(1, 11.0) is None  # the two at t=1 left the window at t=11
    assert d.passive_failures(1, 12.0) is None
    assert d.passive_failures(1, 13.0) is not None  # 1 + 1 + 1 within (3, 13]


@pytest.mark.parametrize("kwargs, first_probe", [
    ({"max_fails": 0}, True),  # passive checks off
    ({"max_fails": 1, "start_period": 30.0}, False),  # inside the start period
])
def test_passive_failures_ignored(kwargs: dict[str, float], first_probe: bool) -> None:
    d = Dampener(HealthSettings(**kwargs), now=0.0)  # type: ignore[arg-type]
    if first_probe:
        passes(d, 1, 0.0)
    assert d.passive_failures(1000, 1.0) is None
    assert d.state is Health.UP


def test_passive_down_comes_back_through_active_probes() -> None:
    d = Dampener(HealthSettings(max_fails=3, rise=2), now=0.0)
    passes(d, 1, 0.0)
    assert d.passive_failures(3, 1.0) is not None
    assert d.passive_failures(50, 2.0) is None  # already DOWN: not counted
    got, _ = passes(d, 2, 3.0)
    assert [t.new for t in got] == [Health.UP]
    # neither the failures that tripped it nor those seen while DOWN count any more
    assert d.passive_failures(2, 6.0) is None
    tr = d.passive_failures(1, 7.0)
    assert tr is not None and tr.reason.startswith("3 failed connects")


def test_reconfigure_keeps_state_and_counts() -> None:
    d = Dampener(HealthSettings(fall=5, max_fails=10), now=0.0)
    passes(d, 1, 0.0)
    fails(d, 2, 1.0)
    d.passive_failures(9, 3.0)
    d.reconfigure(HealthSettings(fall=3, max_fails=0))
    assert d.state is Health.UP
    assert d.snapshot(3.0).failures == 2
    assert d.passive_failures(100, 4.0) is None  # passive now off
    tr = d.probe(False, REFUSED, 5.0)
    assert tr is not None and tr.reason == "connect refused (3/3 probes failed)"


def test_log_line() -> None:
    tr = Transition(Health.UP, Health.DOWN, "connect refused (3/3 probes failed)", 1.0)
    assert transition_log_line("service web: backend app1 (10.0.0.1:80)", tr) == \
        "service web: backend app1 (10.0.0.1:80) is DOWN: connect refused (3/3 probes failed)"


# -- model check ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(rise=st.integers(1, 4), fall=st.integers(1, 4), initial=st.sampled_from(["up", "down"]),
       results=st.lists(st.booleans(), max_size=40))
def test_matches_a_simple_model(rise: int, fall: int, initial: str,
                                results: list[bool]) -> None:
    """Against an independent model: the state flips exactly when the run of equal results
    reaches the threshold (1 for an unconfirmed initial UP)."""
    d = Dampener(HealthSettings(rise=rise, fall=fall, initial_state=initial),  # type: ignore
                 now=0.0)
    up = initial == "up"
    confirmed = initial == "down"
    run_ok = run_fail = 0
    for i, ok in enumerate(results):
        tr = d.probe(ok, OK if ok else REFUSED, float(i))
        expect_flip = False
        if ok:
            run_ok, run_fail = run_ok + 1, 0
            if up:
                confirmed = True
            elif run_ok >= rise:
                expect_flip, up, confirmed, run_ok = True, True, True, 0
        else:
            run_fail, run_ok = run_fail + 1, 0
            if up and (not confirmed or run_fail >= fall):
                expect_flip, up, confirmed, run_fail = True, False, True, 0
        assert (tr is not None) == expect_flip, (i, results)
        assert d.state is (Health.UP if up else Health.DOWN)


# -- steady, and passes handed over in bulk (the SYN fleet's quiet passes) ------------------

def _history(d: Dampener, ops: list[tuple[str, int]]) -> float:
    """Apply ops (probe pass/fail, passive failures) one second apart; returns the next time."""
    t = 1.0
    for kind, n in ops:
        if kind == "pass":
            d.probe(True, OK, t)
        elif kind == "fail":
            d.probe(False, REFUSED, t)
        else:
            d.passive_failures(n, t)
        t += 1.0
    return t


_OPS = st.lists(st.tuples(st.sampled_from(["pass", "fail", "passive"]), st.integers(1, 3)),
                max_size=12)
_SETTINGS = st.builds(HealthSettings, rise=st.integers(1, 3), fall=st.integers(1, 3),
                      initial_state=st.sampled_from(["up", "down"]),
                      start_period=st.sampled_from([0.0, 2.5, 100.0]),
                      max_fails=st.sampled_from([0, 2]))


@settings(max_examples=300, deadline=None)
@given(hs=_SETTINGS, ops=_OPS, count=st.integers(0, 5))
def test_passes_equal_that_many_probe_calls(hs: HealthSettings, ops: list[tuple[str, int]],
                                            count: int) -> None:
    """passes(n, reason, t) leaves the dampener exactly as n probe(True, reason, t) calls do,
    and returns the transition they caused, from any history (DOWN included)."""
    bulk, single = Dampener(hs, 0.0), Dampener(hs, 0.0)
    t = _history(bulk, ops)
    _history(single, ops)
    got = bulk.passes(count, "syn-ack", t)
    want = [tr for tr in (single.probe(True, "syn-ack", t) for _ in range(count)) if tr]
    assert got == (want[0] if want else None)
    assert bulk.snapshot(t + 1) == single.snapshot(t + 1)
    assert bulk.steady == single.steady


@settings(max_examples=300, deadline=None)
@given(hs=_SETTINGS, ops=_OPS)
def test_a_pass_of_a_steady_backend_changes_only_the_last_probe(
        hs: HealthSettings, ops: list[tuple[str, int]]) -> None:
    """The promise the checker's quiet passes rest on: while `steady`, a pass changes nothing
    but last_ok, last_reason and last_probe_at, and the backend stays steady."""
    d = Dampener(hs, 0.0)
    t = _history(d, ops)
    if not d.steady:
        return
    before = d.snapshot(t)
    assert d.probe(True, "syn-ack", t) is None
    after = d.snapshot(t)
    assert d.steady
    assert after == dataclasses.replace(before, last_ok=True, last_reason="syn-ack",
                                        last_probe_at=t)


def test_steady_means_up_confirmed_no_failure_and_started() -> None:
    hs = HealthSettings(fall=3, start_period=10.0)
    d = Dampener(hs, 0.0)
    assert d.state is Health.UP and not d.steady  # unconfirmed, in its start period
    d.probe(True, OK, 1.0)
    assert d.steady
    d.probe(False, REFUSED, 2.0)
    assert not d.steady  # UP, going down (1/3)
    d.probe(True, OK, 3.0)
    assert d.steady
    fails(d, 3, 4.0)
    assert d.state is Health.DOWN and not d.steady
    passes(d, 2, 8.0)
    assert d.state is Health.UP and d.steady  # came back: rise passes
    down = Dampener(HealthSettings(initial_state="down", rise=1), 0.0)
    assert not down.steady
    assert down.passes(3, OK, 5.0) is not None  # the first of three brings it UP
    assert down.steady and down.snapshot(6.0).last_probe_at == 5.0
