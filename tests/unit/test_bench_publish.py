"""Unit tests of bench/publishbench.py's plan, dry run and per-phase arithmetic (nothing starts).

They check that the arguments become the documented timeline (and bad ones are refused), that the
dry run prints the plan without starting anything, and that summarize/ratios put records in the
phase of their due time, find the longest gap between completions and count failures by kind.
"""

from __future__ import annotations

import json

import pytest

from bench import publishbench as pb


def _plan(*argv: str) -> pb.Plan:
    return pb.make_plan(pb._parser().parse_args(list(argv)))


def test_default_plan_is_the_documented_timeline() -> None:
    plan = _plan()
    assert [p.name for p in plan.phases] == ["a", "b", "c", "d", "s", "a2"]
    assert [p.mode for p in plan.phases] == ["idle", "periodic", "burst_prebuilt",
                                             "burst_rebuild", "spin", "idle"]
    assert plan.seconds == 8 + 8 + 5 + 5 + 5 + 8
    assert (plan.backends, plan.slots, plan.period_ms) == (1000, 65537, 100.0)


def test_phases_can_be_narrowed_but_need_the_baseline() -> None:
    assert [p.name for p in _plan("--phases", "a,c").phases] == ["a", "c"]
    for bad in (["--phases", "b,c"], ["--phases", "a,x"], ["--backends", "0"],
                ["--ka-rate", "0", "--new-rate", "0"], ["--phase-seconds", "40"],
                ["--period-ms", "0"]):
        with pytest.raises(ValueError):
            _plan(*bad)


def test_dry_run_prints_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert pb.main(["--dry-run", "--phases", "a,b", "--phase-seconds", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plan"]["seconds"] == 4
    assert [p["name"] for p in out["plan"]["phases"]] == ["a", "b"]
    assert pb.main(["--dry-run", "--phases", "b"]) == 2


def test_weights_flip_every_tenth_backend() -> None:
    cfg = pb._config(25, 65537, 23051, 31000)
    assert pb.weights_for(cfg, False) == {}
    assert sorted(pb.weights_for(cfg, True)) == [("svc", f"127.0.0.1:{31000 + i}")
                                                 for i in (0, 10, 20)]


def test_summarize_assigns_by_due_time_and_finds_the_gap() -> None:
    # phase a = [0, 1), phase b = [1, 2); completions every 0.1 s except a 0.5 s hole in b
    recs: list[tuple[int, int, float, float, float]] = []
    for i in range(10):
        t = i * 0.1
        recs.append((0, 1, t, t, t + 0.001))
    for t in (1.0, 1.1, 1.6, 1.7, 1.8, 1.9):
        recs.append((0, 1, t, t, t + 0.002))
    recs.append((1, 3, 1.2, 1.2, 1.25))  # a reset new connection, due in b
    recs.append((1, 1, 0.95, 0.95, 1.05))  # due in a, completes in b: latency counts in a
    s = pb.summarize(recs, [("a", 0.0, 1.0), ("b", 1.0, 2.0)],
                     {"b": [(0.010, 0.0002), (0.012, 0.0004)]})
    a, b = s["a"], s["b"]
    assert a["ka"]["ok"] == 10 and a["new"]["ok"] == 1 and a["failed"] == 0
    assert a["new"]["max"] == pytest.approx(100.0)
    assert b["failures"] == {"reset": 1} and b["new"]["ok"] == 0
    assert b["max_gap_ms"] == pytest.approx(500.0)
    assert b["publishes"] == 2 and b["publish_ms"]["max"] == pytest.approx(0.4)
    r = pb.ratios(s)["b"]
    assert r["max_gap"] == pytest.approx(500.0 / a["max_gap_ms"])
    assert r["ok_per_s"] == pytest.approx(6 / 11)
