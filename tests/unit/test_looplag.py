"""LoopLag counts how late the loop ran its samples, and which were stalls (no clock, no loop)."""

from __future__ import annotations

import pytest

from l4lb.looplag import LoopLag


def test_on_time_samples_are_not_stalls() -> None:
    lag = LoopLag(stall=0.25)
    assert lag.observe(10.0, 10.001) is None
    assert lag.observe(10.1, 10.099) is None  # early (clock granularity): lateness 0
    assert lag.status() == {"lag_max_ms": 1.0, "lag_last_ms": 0.0, "stalls": 0, "stall_ms": 250}


def test_a_stall_is_returned_counted_and_kept_as_the_maximum() -> None:
    lag = LoopLag(stall=0.25)
    assert lag.observe(1.0, 1.667) == pytest.approx(0.667)
    assert lag.observe(2.0, 2.01) is None
    status = lag.status()
    assert status["stalls"] == 1 and status["lag_max_ms"] == 667.0 and status["lag_last_ms"] == 10.0
    assert lag.samples == 2
