"""Unit tests of the effective-weight computation: health, admin state, backups, panic, slow start.

Pure: time is a float argument; nothing sleeps.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l4lb.health.dampener import Health
from l4lb.health.pool import AdminState, PoolMember, effective_weights, ramp_weight

UP, DOWN = Health.UP, Health.DOWN


def m(key: str, health: Health = UP, weight: int = 10, admin: AdminState = "up",
      backup: bool = False, ramp_start: float | None = None) -> PoolMember[str]:
    return PoolMember(key=key, weight=weight, health=health, admin=admin, backup=backup,
                      ramp_start=ramp_start)


def test_all_up_keep_their_configured_weights() -> None:
    r = effective_weights([m("a", weight=1), m("b", weight=5), m("c", weight=256)], now=0.0)
    assert r.weights == {"a": 1, "b": 5, "c": 256}
    assert (r.tier, r.panic, r.tier_up, r.tier_enabled, r.up, r.enabled, r.next_change) == (
        "primary", False, 3, 3, 3, 3, None)


def test_down_backends_get_weight_zero() -> None:
    r = effective_weights([m("a"), m("b", DOWN), m("c")], now=0.0, min_healthy=0.5)
    assert r.weights == {"a": 10, "b": 0, "c": 10}
    assert (r.panic, r.tier_up, r.tier_enabled) == (False, 2, 3)


@pytest.mark.parametrize("admin", ["drain", "maint"])
def test_drain_and_maint_get_zero_and_do_not_count(admin: AdminState) -> None:
    r = effective_weights([m("a"), m("b", admin=admin), m("c", DOWN, admin=admin)], now=0.0,
                          min_healthy=1.0)
    assert r.weights == {"a": 10, "b": 0, "c": 0}
    # only "a" is enabled, and it is UP: 1 of 1 is not below min_healthy 100 %
    assert (r.panic, r.tier_up, r.tier_enabled, r.enabled) == (False, 1, 1, 1)


def test_runtime_weight_zero_is_not_enabled() -> None:
    r = effective_weights([m("a"), m("b", weight=0)], now=0.0, min_healthy=1.0)
    assert r.weights == {"a": 10, "b": 0}
    assert (r.enabled, r.panic) == (1, False)


def test_backups_idle_while_a_primary_is_up() -> None:
    r = effective_weights([m("p1"), m("p2", DOWN), m("b1", backup=True, weight=3)], now=0.0)
    assert r.weights == {"p1": 10, "p2": 0, "b1": 0}
    assert r.tier == "primary"
    assert (r.up, r.enabled) == (2, 3)


def test_backups_serve_when_no_primary_is_up() -> None:
    r = effective_weights([m("p1", DOWN), m("p2", DOWN), m("b1", backup=True, weight=3),
                           m("b2", DOWN, backup=True)], now=0.0, min_healthy=0.5)
    assert r.weights == {"p1": 0, "p2": 0, "b1": 3, "b2": 0}
    assert (r.tier, r.panic, r.tier_up, r.tier_enabled) == ("backup", False, 1, 2)


def test_backups_serve_when_every_primary_is_drained() -> None:
    r = effective_weights([m("p1", admin="drain"), m("b1", backup=True)], now=0.0)
    assert r.weights == {"p1": 0, "b1": 10}
    assert r.tier == "backup"


def test_panic_keeps_every_enabled_backend_of_the_tier() -> None:
    members = [m("a"), m("b", DOWN, weight=4), m("c", DOWN, weight=7), m("d", admin="maint")]
    r = effective_weights(members, now=0.0, min_healthy=0.5)
    assert r.panic
    assert r.weights == {"a": 10, "b": 4, "c": 7, "d": 0}
    assert r.panic_reason == "1 of 3 enabled primary backends are UP"


def test_default_guard_panics_only_when_none_is_up_in_small_pools() -> None:
    members = [m(f"b{i}", DOWN) for i in range(9)] + [m("up")]
    assert not effective_weights(members, now=0.0, min_healthy=0.1).panic
    all_down = [m(f"b{i}", DOWN) for i in range(10)]
    r = effective_weights(all_down, now=0.0, min_healthy=0.1)
    assert r.panic and set(r.weights.values()) == {10}


def test_min_healthy_zero_lets_the_pool_empty() -> None:
    r = effective_weights([m("a", DOWN), m("b", DOWN)], now=0.0, min_healthy=0.0)
    assert r.weights == {"a": 0, "b": 0}
    assert (r.tier, r.panic, r.tier_up, r.up) == ("primary", False, 0, 0)


@pytest.mark.parametrize("up, panic", [(3, False), (2, True)])
def test_min_healthy_is_exact_at_the_boundary(up: int, panic: bool) -> None:
    # 0.3 * 10 is 3.0000000000000004 in binary floating point: 3 of 10 must not panic
    members = [m(f"u{i}") for i in range(up)] + [m(f"d{i}", DOWN) for i in range(10 - up)]
    assert effective_weights(members, now=0.0, min_healthy=0.3).panic is panic


def test_nothing_enabled() -> None:
    r = effective_weights([m("a", admin="maint"), m("b", backup=True, admin="drain")], now=0.0,
                          min_healthy=1.0)
    assert r.weights == {"a": 0, "b": 0}
    assert (r.tier, r.panic, r.enabled) == ("none", False, 0)
    assert effective_weights([], now=0.0).weights == {}


# -- slow start ----------------------------------------------------------------------------


def test_slow_start_ramps_from_one_to_the_weight() -> None:
    # weight 11 over 10 s: steps of one every second, 1 at t=0, 11 at t=10
    seen = []
    for t in [0.0, 0.5, 1.0, 4.99, 5.0, 9.999, 10.0, 50.0]:
        r = effective_weights([m("a", weight=11, ramp_start=100.0), m("b", weight=11)],
                              now=100.0 + t, slow_start=10.0)
        seen.append((r.weights["a"], r.next_change))
        assert r.weights["b"] == 11
    assert seen == [(1, 101.0), (1, 101.0), (2, 102.0), (5, 105.0), (6, 106.0), (10, 110.0),
                    (11, None), (11, None)]


def test_slow_start_changes_a_weight_at_most_20_times_and_once_a_second() -> None:
    """Weight 256 over 60 s: 20 steps of 3 s (one table rebuild each), not 255 of 0.24 s;
    weight 100 over 4 s: 4 steps of 1 s, not 99."""
    for weight, period, tick in ((256, 60.0, 3.0), (100, 4.0, 1.0)):
        t, changes, last = 1000.0, [], 1
        w, nxt = ramp_weight(weight, 1000.0, period, t)
        assert w == 1
        while nxt is not None:
            t = nxt
            w, nxt = ramp_weight(weight, 1000.0, period, t)
            assert w > last
            changes.append(t - 1000.0)
            last = w
        assert w == weight
        assert len(changes) == round(period / tick)
        assert changes == pytest.approx([tick * k for k in range(1, len(changes) + 1)])


def test_slow_start_needs_weights_above_one_and_a_ramp_start() -> None:
    r = effective_weights([m("a", weight=1, ramp_start=0.0), m("b", ramp_start=None)],
                          now=1.0, slow_start=10.0)
    assert r.weights == {"a": 1, "b": 10}
    assert r.next_change is None
    r = effective_weights([m("a", ramp_start=0.0)], now=1.0, slow_start=0.0)
    assert r.weights == {"a": 10}


def test_slow_start_next_change_is_the_earliest_step() -> None:
    r = effective_weights([m("a", weight=3, ramp_start=0.0), m("b", weight=5, ramp_start=1.0)],
                          now=1.5, slow_start=4.0)
    # a: steps at 2.0 and 4.0; b: steps at 2.0, 3.0, 4.0, 5.0
    assert r.weights == {"a": 1, "b": 1}
    assert r.next_change == 2.0


def test_slow_start_is_not_applied_in_panic_or_to_down_backends() -> None:
    r = effective_weights([m("a", weight=10, ramp_start=0.0), m("b", DOWN), m("c", DOWN)],
                          now=1.0, min_healthy=0.5, slow_start=10.0)
    assert r.panic
    assert r.weights == {"a": 10, "b": 10, "c": 10}
    assert r.next_change is None
    r = effective_weights([m("a", DOWN, ramp_start=0.0), m("b")], now=1.0, slow_start=10.0)
    assert r.weights == {"a": 0, "b": 10} and r.next_change is None


@settings(max_examples=300, deadline=None)
@given(weight=st.integers(1, 256), start=st.floats(0, 1e6), period=st.floats(0.001, 3600),
       offsets=st.lists(st.floats(-10, 4000), min_size=1, max_size=20))
def test_ramp_is_monotonic_bounded_and_announces_its_steps(weight: int, start: float,
                                                           period: float,
                                                           offsets: list[float]) -> None:
    last = 0
    for off in sorted(offsets):
        now = start + off
        w, nxt = ramp_weight(weight, start, period, now)
        assert 1 <= w <= weight
        assert w >= last
        last = w
        if now >= start + period:
            assert (w, nxt) == (weight, None)
        if nxt is None:
            assert w == weight
        else:
            assert nxt > now
            assert nxt <= start + period + 1e-6
            assert ramp_weight(weight, start, period, nxt)[0] > w
