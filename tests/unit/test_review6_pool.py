"""Unit tests of the pool rule for unproven backends (initial_state "down", no verdict yet).

Review 6, item 1: a pool of new `initial_state = "down"` backends panicked at once and sent
traffic to backends that were meant to prove themselves first. Pure: no clock, no sleep.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from l4lb.health.dampener import Health, Transition, transition_log_line
from l4lb.health.pool import PoolMember, effective_weights

UP, DOWN = Health.UP, Health.DOWN
DOCS = Path(__file__).resolve().parents[2] / "docs"


def m(key: str, health: Health = UP, weight: int = 10, backup: bool = False,
      unproven: bool = False) -> PoolMember[str]:
    return PoolMember(key=key, weight=weight, health=health, backup=backup, unproven=unproven)


def test_a_single_unproven_backend_does_not_panic() -> None:
    # the reviewer's case: one backend, initial_state "down", default min_healthy 0.1
    r = effective_weights([m("a", DOWN, unproven=True)], now=0.0, min_healthy=0.1)
    assert not r.panic
    assert r.weights == {"a": 0}
    assert (r.tier, r.tier_up, r.tier_enabled, r.tier_unproven) == ("primary", 0, 0, 1)


def test_a_pool_of_new_backends_carries_no_traffic_until_one_comes_up() -> None:
    new = [m(f"b{i}", DOWN, unproven=True) for i in range(5)]
    r = effective_weights(new, now=0.0, min_healthy=0.1)
    assert not r.panic and set(r.weights.values()) == {0}
    # the first one passes `rise` probes: it alone serves, the rest are still unproven
    r = effective_weights([m("b0"), *new[1:]], now=0.0, min_healthy=0.5)
    assert not r.panic
    assert r.weights == {"b0": 10, "b1": 0, "b2": 0, "b3": 0, "b4": 0}
    assert (r.tier_up, r.tier_enabled, r.tier_unproven) == (1, 1, 4)


def test_unproven_backends_neither_count_nor_join_a_panic() -> None:
    # one backend known bad (it failed probes), two unproven: the known one panics alone
    members = [m("bad", DOWN, weight=4), m("new1", DOWN, unproven=True),
               m("new2", DOWN, unproven=True)]
    r = effective_weights(members, now=0.0, min_healthy=0.5)
    assert r.panic
    assert r.weights == {"bad": 4, "new1": 0, "new2": 0}
    assert r.panic_reason == "0 of 1 enabled primary backends are UP; 2 unproven left out"


def test_the_reason_is_unchanged_without_unproven_backends() -> None:
    r = effective_weights([m("a", DOWN), m("b", DOWN)], now=0.0, min_healthy=0.5)
    assert r.panic and r.tier_unproven == 0
    assert r.panic_reason == "0 of 2 enabled primary backends are UP"


def test_an_up_backend_is_proven_whatever_the_flag_says() -> None:
    r = effective_weights([m("a", UP, unproven=True), m("b", DOWN)], now=0.0, min_healthy=1.0)
    assert r.panic  # 1 of 2 UP is below 100 %: "a" counts as UP and as enabled
    assert (r.tier_up, r.tier_enabled, r.tier_unproven) == (1, 2, 0)
    assert r.weights == {"a": 10, "b": 10}


def test_unproven_primaries_leave_the_panic_to_known_backups() -> None:
    members = [m("p1", DOWN, unproven=True), m("p2", DOWN, unproven=True),
               m("b1", DOWN, backup=True, weight=3)]
    r = effective_weights(members, now=0.0, min_healthy=0.1)
    assert (r.tier, r.panic) == ("backup", True)
    assert r.weights == {"p1": 0, "p2": 0, "b1": 3}


def test_up_backups_serve_while_the_primaries_are_unproven() -> None:
    members = [m("p1", DOWN, unproven=True), m("b1", backup=True, weight=3)]
    r = effective_weights(members, now=0.0, min_healthy=0.1)
    assert (r.tier, r.panic) == ("backup", False)
    assert r.weights == {"p1": 0, "b1": 3}


def test_nothing_proven_anywhere_nothing_panics() -> None:
    members = [m("p1", DOWN, unproven=True), m("b1", DOWN, backup=True, unproven=True)]
    r = effective_weights(members, now=0.0, min_healthy=1.0)
    assert (r.tier, r.panic, r.tier_unproven) == ("primary", False, 1)
    assert r.weights == {"p1": 0, "b1": 0}
    assert (r.up, r.enabled) == (0, 2)  # VRRP tracking still sees both as enabled, none UP


def test_known_primaries_panic_before_unproven_backups() -> None:
    members = [m("p1", DOWN), m("b1", DOWN, backup=True, unproven=True)]
    r = effective_weights(members, now=0.0, min_healthy=0.1)
    assert (r.tier, r.panic) == ("primary", True)
    assert r.weights == {"p1": 10, "b1": 0}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans(),
                          st.integers(min_value=0, max_value=5)), max_size=8),
       st.sampled_from([0.0, 0.1, 0.5, 1.0]))
def test_an_unproven_down_backend_never_gets_traffic(
        spec: list[tuple[bool, bool, bool, int]], min_healthy: float) -> None:
    members = [m(f"k{i}", UP if up else DOWN, weight=w, backup=backup, unproven=unproven)
               for i, (up, backup, unproven, w) in enumerate(spec)]
    r = effective_weights(members, now=0.0, min_healthy=min_healthy)
    for member in members:
        if member.unproven and member.health is DOWN:
            assert r.weights[member.key] == 0
    # the counts describe the tier: UP ones are a part of the counted ones
    assert 0 <= r.tier_up <= r.tier_enabled
    # dropping the unproven DOWN members changes no weight of the others
    known = [x for x in members if not (x.unproven and x.health is DOWN)]
    alone = effective_weights(known, now=0.0, min_healthy=min_healthy)
    assert {k: v for k, v in r.weights.items() if k in alone.weights} == alone.weights
    assert r.panic == alone.panic


# -- the docs show the lines the code writes (review 6, items 1, 4, 5) ----------------------


def test_health_docs_show_the_real_transition_lines() -> None:
    doc = (DOCS / "health.md").read_text()
    down = Transition(UP, DOWN, "connect refused (3/3 probes failed)", at=0.0)
    assert transition_log_line("backend web/10.0.0.1:80", down) in doc
    up = Transition(DOWN, UP, "connect ok (2/2 probes passed)", at=0.0)
    assert transition_log_line("backend web/10.0.0.1:80", up) in doc
    assert "service web: backend app1" not in doc
    assert "not wired to them yet" not in doc
    assert "ignoring health checks" not in doc


def test_health_docs_show_the_real_panic_reasons() -> None:
    doc = " ".join((DOCS / "health.md").read_text().split())  # lines folded
    plain = effective_weights([m("a", DOWN), m("b", DOWN), m("c", DOWN)], now=0.0,
                              min_healthy=0.1)
    assert f"service web: panic: {plain.panic_reason} (below min_healthy)" in doc
    mixed = effective_weights([m("a", DOWN), m("b", DOWN, unproven=True),
                               m("c", DOWN, unproven=True)], now=0.0, min_healthy=0.1)
    assert f"`{mixed.panic_reason}`" in doc
    assert "open tcp sessions to a backend that goes down are not closed" in doc.lower()
    assert "connect error: invalid argument" in doc


def test_observability_docs_know_the_cli_runs_top() -> None:
    doc = (DOCS / "observability.md").read_text()
    assert "once the CLI registers it" not in doc
    assert "l4lb top [-c FILE | --socket PATH] [--interval 1]" in doc
