"""Unit tests of the benchmark's diagnostics: udpgen's skipped share and the other-process CPU.

They build records by hand (no process runs) and check that aggregate.summarize counts the UDP
runs whose generator fell behind, that the Markdown report marks them, and that the per-process
"other CPU" figure sums only the processes that are not the benchmark's.
"""

from __future__ import annotations

from typing import Any

from bench import aggregate, procfs, report
from bench.workloads import _others_pct


def _udp_rec(rep: int, skipped_pct: float, target: str = "l4lb") -> dict[str, Any]:
    return {"pin": "pinned", "rep": rep, "target": target, "workload": "udp300k", "kind": "udp",
            "ok": True, "error": None, "close": True, "vcpu_rtt_ns": 200.0,
            "lb_cpu_pct": 40.0, "loadgen_cpu_pct": 30.0, "other_cpu_pct": 12.0,
            "raw": {"offered": 600_000, "skipped": 6_000 * skipped_pct, "loss_pct": 0.5},
            "udp_loss": {"backend": 10.0},
            "metrics": {"loss_pct": 0.5, "lb_us_per_unit": 2.5, "skipped_pct": skipped_pct,
                        "other_cpu_pct": 12.0}}


def _doc(records: list[dict[str, Any]]) -> dict[str, Any]:
    summary = aggregate.summarize(records)
    return {
        "meta": {"mode": "quick", "started": "t0", "command": "bench/run.py", "duration_s": 1.0,
                 "host": {"cpus": 2, "kernel": "6.1"}, "versions": {},
                 "options": {"reps": 3, "pins": ["pinned"], "bulk_seconds": 2,
                             "http_seconds": 2, "udp_ms": 2000, "close_ns": 350.0},
                 "targets": ["l4lb", "nginx"], "target_labels": {},
                 "workloads": [{"name": "udp300k", "label": "UDP 300k/s"}], "notes": []},
        "records": records, "summary": summary,
        "ratios": aggregate.ratios(summary, ["l4lb", "nginx"]), "table": None,
    }


def test_summarize_counts_runs_whose_generator_fell_behind() -> None:
    recs = [_udp_rec(0, 0.2), _udp_rec(1, 3.5), _udp_rec(2, 1.0), _udp_rec(0, 0.0, "nginx")]
    cells = aggregate.summarize(recs)["pinned"]["udp300k"]
    assert cells["l4lb"]["behind"] == 1  # 1.0 is at the limit, not above it
    assert cells["nginx"]["behind"] == 0
    assert cells["l4lb"]["all"]["skipped_pct"]["median"] == 1.0
    assert cells["l4lb"]["all"]["skipped_pct"]["max"] == 3.5
    assert "skipped_pct" in {m.key for m in aggregate.DIAGNOSTICS}


def test_report_marks_runs_whose_generator_fell_behind() -> None:
    md = report.markdown(_doc([_udp_rec(0, 0.2), _udp_rec(1, 3.5),
                               _udp_rec(0, 0.1, "nginx")]))
    lines = md.splitlines()
    main = [ln for ln in lines if ln.startswith("| UDP 300k/s |")]
    assert main and "**1/2 generator behind**" in main[0]
    assert "generator behind" not in main[0].split("|")[3]  # nginx column stays clean
    diag = [ln for ln in lines if ln.startswith("| udp300k | l4lb |")]
    assert len(diag) == 1 and "**(1 runs > 1 %)**" in diag[0]
    per_run = [ln for ln in lines if ln.startswith("| 1 | l4lb | udp300k |")]
    assert len(per_run) == 1 and "**3.50 behind**" in per_run[0]
    quiet = [ln for ln in lines if ln.startswith("| 0 | l4lb | udp300k |")]
    assert len(quiet) == 1 and "behind" not in quiet[0] and "| 0.20 |" in quiet[0]
    assert "udpgen skipped %" in md


def test_report_without_skipped_metric_shows_a_dash() -> None:
    rec = _udp_rec(0, 0.0)
    del rec["metrics"]["skipped_pct"]
    md = report.markdown(_doc([rec]))
    row = next(ln for ln in md.splitlines() if ln.startswith("| 0 | l4lb | udp300k |"))
    assert "generator behind" not in md and "runs > 1 %" not in md
    assert "| 0 | - |" in row  # skipped (raw count) 0, skipped % unknown


def test_others_pct_sums_only_processes_that_are_not_ours() -> None:
    hz = procfs.CLK_TCK
    before = {1: 100, 2: 50, 3: 0}
    after = {1: 100 + hz, 2: 50 + 4 * hz, 3: 7 * hz, 4: hz // 2}  # 4 was born during the run
    # ours = {2, 3}: others are 1 (1 s) and 4 (0.5 s, counted in full) over 3 s of wall time
    assert _others_pct(before, after, {2, 3}, 3.0) == 50.0
    assert _others_pct(before, after, {1, 2, 3, 4}, 3.0) == 0.0
    assert _others_pct(before, after, set(), 0.0) == 0.0
