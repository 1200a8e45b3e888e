"""The one dynamic-weight path (l4lb.health.dynamic) and its precedence, alone and through
l4lb.weights.compute: the operator's admin state against the agent's, the agent's health words
against the health check, percentages of the base weight (cap, floor, 0%), misc_dynamic
weights, and what a reply leaves as it was."""

from __future__ import annotations

from typing import Any

import pytest

from l4lb.config.load import load_text
from l4lb.health.agentreply import parse_line
from l4lb.health.dynamic import (
    MAX_WEIGHT,
    NEUTRAL,
    Dynamic,
    agent_words,
    apply_reply,
    combined_admin,
    combined_health,
    combined_weight,
    pool_admin,
)
from l4lb.state import Runtime
from l4lb.weights import compute


def said(*lines: str, start: Dynamic = NEUTRAL) -> Dynamic:
    state = start
    for line in lines:
        state = apply_reply(state, parse_line(line))
    return state


# (operator admin, agent's admin word) -> the admin state the pool sees
ADMIN_TABLE = [
    ("up", "ready", "up"), ("up", "drain", "drain"), ("up", "maint", "maint"),
    ("drain", "ready", "drain"), ("drain", "drain", "drain"), ("drain", "maint", "maint"),
    ("maint", "ready", "maint"), ("maint", "drain", "maint"), ("maint", "maint", "maint"),
]


@pytest.mark.parametrize(("operator", "agent", "want"), ADMIN_TABLE)
def test_admin_precedence_the_stricter_flag_holds(operator: Any, agent: str,
                                                  want: str) -> None:
    assert combined_admin(operator, said(agent)) == want


def test_agent_ready_clears_only_its_own_flag() -> None:
    state = said("maint", "ready")
    assert state.admin == "ready"
    assert combined_admin("maint", state) == "maint"  # the operator's maint stays
    assert combined_admin("up", said("drain")) == "drain"  # `l4lb enable` cannot undo it


@pytest.mark.parametrize(("checked", "agent", "want"), [
    ("up", "up", "up"), ("up", "down", "down"), ("up", "fail", "down"),
    ("up", "stopped", "down"), ("down", "up", "down"), ("down", "down", "down"),
])
def test_health_down_when_either_says_so(checked: Any, agent: str, want: str) -> None:
    assert combined_health(checked, said(agent)) == want


def test_down_lasts_until_up_or_ready() -> None:
    state = said("stopped #deploy")
    assert state.health == "stopped" and state.reason == "deploy"
    assert said("50%", start=state).health == "stopped"  # a reply without a health word
    assert said("drain", start=state).health == "stopped"
    assert said("up", start=state).health == "up"
    assert said("ready", start=state).health == "up"


def test_what_a_reply_does_not_say_stays() -> None:
    state = said("drain 40% #window")
    state = said("", start=state)  # an empty line
    assert (state.admin, state.percent, state.reason) == ("drain", 40, "window")
    state = said("75%", start=state)
    assert (state.admin, state.percent) == ("drain", 75)
    assert said("bogus", start=state) == state  # malformed: ignored as a whole


@pytest.mark.parametrize(("base", "percent", "want"), [
    (10, None, 10), (10, 100, 10), (10, 50, 5), (10, 0, 0), (10, 1, 1), (1, 50, 1),
    (3, 33, 1), (100, 150, 150), (100, 300, MAX_WEIGHT), (256, 100, 256), (0, 50, 0),
])
def test_percentage_of_the_base_weight(base: int, percent: int | None, want: int) -> None:
    assert combined_weight(base, Dynamic(percent=percent)) == want


@pytest.mark.parametrize(("base", "exec_weight", "percent", "want"), [
    (10, 50, None, 50), (10, 0, None, 0), (10, 253, 200, MAX_WEIGHT), (10, 40, 50, 20),
    (10, None, 50, 5),
])
def test_misc_dynamic_replaces_the_base_and_the_agent_scales_it(
        base: int, exec_weight: int | None, percent: int | None, want: int) -> None:
    assert combined_weight(base, Dynamic(percent=percent, exec_weight=exec_weight)) == want


def test_agent_words() -> None:
    assert agent_words(NEUTRAL) == ""
    assert agent_words(said("100% ready up")) == ""
    assert agent_words(said("drain 50% #window")) == "drain 50% (#window)"
    assert agent_words(said("fail")) == "fail"


CONFIG = """
[[services]]
name = "web"
listen = ["127.0.0.1:18080"]
scheduler = "weighted_round_robin"
backends = [{ address = "127.0.0.1:9001", weight = 10 },
            { address = "127.0.0.1:9002", weight = 10 },
            { address = "127.0.0.1:9003", weight = 10 },
            { address = "127.0.0.1:9004", weight = 10, backup = true }]
health = { min_healthy = 0.0 }
agent = { port = 9777 }
"""


def keys() -> list[tuple[str, str]]:
    return [("web", f"127.0.0.1:{p}") for p in (9001, 9002, 9003, 9004)]


def test_compute_applies_the_dynamic_records() -> None:
    config = load_text(CONFIG)
    runtime = Runtime.from_config(config)
    a, b, c, d = keys()
    plain = compute(config, runtime, 0.0)
    assert plain.weights == {a: 10, b: 10, c: 10, d: 0}
    dynamic = {a: said("50%"), b: said("drain"), c: Dynamic(exec_weight=3)}
    w = compute(config, runtime, 0.0, dynamic=dynamic)
    assert w.weights == {a: 5, b: 0, c: 3, d: 0}
    # the operator's weight is the base the percentage scales
    runtime.set_weight("web", a[1], 40)
    assert compute(config, runtime, 0.0, dynamic=dynamic).weights[a] == 20
    # agent down on every primary: the backup serves (the pool's tiers see the agent's health)
    down = {k: said("down") for k in (a, b, c)}
    w = compute(config, runtime, 0.0, dynamic=down)
    assert w.weights == {a: 0, b: 0, c: 0, d: 10} and w.up["web"] == 1
    # 0% is like a drain: not enabled, so the backup does not take over for it alone
    zero = {a: said("0%"), b: said("0%")}
    assert compute(config, runtime, 0.0, dynamic=zero).weights == {a: 0, b: 0, c: 10, d: 0}


def test_operator_maint_beats_agent_ready_in_compute() -> None:
    config = load_text(CONFIG)
    runtime = Runtime.from_config(config)
    a = keys()[0]
    runtime.set_admin("web", a[1], "maint")
    w = compute(config, runtime, 0.0, dynamic={a: said("maint", "ready 100% up")})
    assert w.weights[a] == 0
    runtime.set_admin("web", a[1], "up")
    assert compute(config, runtime, 0.0, dynamic={a: said("maint", "ready")}).weights[a] == 10
    assert compute(config, runtime, 0.0, dynamic={a: said("ready", "maint")}).weights[a] == 0


PANIC_CONFIG = """
[[services]]
name = "web"
listen = ["127.0.0.1:18080"]
scheduler = "weighted_round_robin"
backends = [{ address = "127.0.0.1:9001", weight = 10 },
            { address = "127.0.0.1:9002", weight = 10 },
            { address = "127.0.0.1:9003", weight = 10 },
            { address = "127.0.0.1:9004", weight = 10 }]
health = { min_healthy = 0.5 }
agent = { port = 9777 }
"""


def test_agent_stopped_counts_like_maint_and_panic_never_puts_it_back() -> None:
    config = load_text(PANIC_CONFIG)
    runtime = Runtime.from_config(config)
    a, b, c, d = keys()
    # 3 of 4 stopped for a deploy: not enabled, so 1 of 1 is UP, no panic, d alone serves
    deploy = {k: said("stopped #deploying") for k in (a, b, c)}
    w = compute(config, runtime, 0.0, dynamic=deploy)
    assert w.panic == {} and w.weights == {a: 0, b: 0, c: 0, d: 10}
    # all four stopped: nothing is enabled, nothing panics, nothing serves
    w = compute(config, runtime, 0.0, dynamic={k: said("stopped") for k in keys()})
    assert w.panic == {} and set(w.weights.values()) == {0}
    # stopped beside a probe's DOWN: the panic puts back the probed one only
    runtime.backends[d].health = "down"
    w = compute(config, runtime, 0.0, dynamic=deploy)
    assert w.panic == {"web": "0 of 1 enabled primary backends are UP"}
    assert w.weights == {a: 0, b: 0, c: 0, d: 10}


@pytest.mark.parametrize("word", ["down", "fail"])
def test_agent_down_and_fail_count_like_a_probe_down_and_panic_may_override(word: str) -> None:
    config = load_text(PANIC_CONFIG)
    runtime = Runtime.from_config(config)
    a, b, c, d = keys()
    w = compute(config, runtime, 0.0, dynamic={k: said(word) for k in (a, b, c)})
    assert w.panic == {"web": "1 of 4 enabled primary backends are UP"}
    assert w.weights == {a: 10, b: 10, c: 10, d: 10}
    assert w.up["web"] == 1  # tracking sees the real health, panic or not


def test_pool_admin_is_combined_admin_but_maint_for_stopped() -> None:
    assert pool_admin("up", said("stopped")) == "maint"
    assert pool_admin("drain", said("down")) == "drain"
    assert pool_admin("up", said("fail")) == "up"
    assert pool_admin("up", said("stopped", "up")) == "up"
    assert combined_admin("up", said("stopped")) == "up"  # what operators see: DOWN, not maint
