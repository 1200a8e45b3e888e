"""misc_dynamic weights in the checker: a result of a probe that ran under `dynamic = true`
and comes after a reload turned it off sets no weight (no sockets, no commands run: the
results are handed to the checker's accounting as the engine would)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from l4lb.health import HealthChecker, HealthSettings
from l4lb.health.probe import ProbeResult

ON = HealthSettings(kind="exec", command=("/bin/true",), service="web", dynamic=True)


def test_a_weight_that_comes_after_dynamic_was_turned_off_is_dropped() -> None:
    weights: list[tuple[Any, ...]] = []
    checker: HealthChecker[str] = HealthChecker(lambda key, t: None,
                                                on_weight=lambda *a: weights.append(a))
    checker.add("b", "127.0.0.1", 1, ON)
    entry = checker._entries["b"]
    result = ProbeResult(True, "exit status 52 (weight 50)", 0.01, True, 50)
    checker._account(entry, result, time.monotonic())
    assert checker.dynamic_weights() == {"b": 50} and len(weights) == 1
    checker.add("b", "127.0.0.1", 1, dataclasses.replace(ON, dynamic=False))  # a reload
    assert checker.dynamic_weights() == {}
    # the probe in flight during the reload ran the command with dynamic on; it ends now
    checker._account(entry, result._replace(weight=60), time.monotonic())
    assert checker.dynamic_weights() == {}  # else a reload turning it on again revives it
    assert len(weights) == 1  # and no "weight 60 from the check (misc_dynamic)" line
    checker.add("b", "127.0.0.1", 1, ON)
    assert checker.dynamic_weights() == {}  # nothing set until a probe sets one
