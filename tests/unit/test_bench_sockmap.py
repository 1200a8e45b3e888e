"""Tests of bench/sockmap_experiment.py's report and of its C relay's build (no traffic)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from bench import native, sockmap_experiment


def _row(rps: float, lb: float, kw: float, acc: float, mach: float) -> dict[str, float]:
    return {"requests": rps * 5, "rps": rps, "errors": 0.0, "p99_ms": 1.0, "lb_us": lb,
            "kworker_us": kw, "irq_us": 0.5, "accounted_us": acc, "machine_us": mach}


def test_report_subtracts_direct_from_each_target() -> None:
    table = sockmap_experiment.report({
        "direct": [_row(100_000, 0, 0, 8.0, 9.0), _row(100_000, 0, 0, 10.0, 11.0)],
        "l4lb": [_row(70_000, 9.0, 0.0, 22.0, 24.0)],
        "sockmap": [_row(80_000, 0.0, 4.0, 13.0, 17.0), _row(80_000, 0.0, 4.0, 15.0, 19.0)],
    }).splitlines()
    assert len(table) == 5
    l4lb = [c.strip() for c in table[3].split("|")]
    # accounted median 22.0, direct median 9.0: 13.00 added
    assert l4lb[1] == "l4lb" and l4lb[6] == "22.00 (22.00-22.00)" and l4lb[7] == "13.00"
    sm = [c.strip() for c in table[4].split("|")]
    assert sm[4] == "4.00" and sm[6] == "14.00 (13.00-15.00)" and sm[7] == "5.00"


def test_report_skips_targets_without_runs() -> None:
    table = sockmap_experiment.report({"direct": [_row(1, 0, 0, 1, 1)], "nginx": []})
    assert "nginx" not in table


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_the_relay_compiles_without_warnings() -> None:
    res = subprocess.run(["gcc", *native.CFLAGS, "-Werror", "-fsyntax-only",
                          str(native.source("sockmaprelay"))],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
