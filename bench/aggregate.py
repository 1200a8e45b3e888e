"""Reduce the runs' records to medians (min-max) per target, and ratios between targets. Pure.

Groups are (pinning mode, workload, target). Each group is summarised twice: over every
successful run ("all") and over the runs whose vCPU probe said the two CPUs were close
("close"): far runs halve every figure through a balancer, so they are shown, not mixed in
silently. Ratios are of medians of the same subset, measured in the same invocation. A UDP run
whose generator skipped more than SKIPPED_LIMIT % of the rate (it fell behind: its CPU was
taken) did not offer the nominal rate; each cell counts such runs ("behind") for the report.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    """A figure reported for a workload kind."""

    key: str  # key in a record's "metrics"
    label: str  # column title
    unit: str  # unit text
    better: str  # "higher" | "lower" | "" (informational)
    fmt: str = "{:.1f}"  # number format


HEADLINE: dict[str, tuple[Metric, ...]] = {
    "bulk": (Metric("gbps", "throughput", "Gbit/s", "higher"),
             Metric("lb_ms_per_gb", "LB CPU", "ms/GB", "lower", "{:.0f}")),
    "newconn": (Metric("krps", "rate", "k/s", "higher"),
                Metric("p99_ms", "p99", "ms", "lower", "{:.2f}"),
                Metric("lb_us_per_unit", "LB CPU", "µs/conn", "lower")),
    "keepalive": (Metric("krps", "rate", "k/s", "higher", "{:.0f}"),
                  Metric("p99_ms", "p99", "ms", "lower", "{:.2f}"),
                  Metric("lb_us_per_unit", "LB CPU", "µs/req", "lower", "{:.2f}")),
    "udp": (Metric("loss_pct", "loss", "%", "lower", "{:.2f}"),
            Metric("lb_us_per_unit", "LB CPU", "µs/echo", "lower", "{:.2f}")),
    "idle": (Metric("kb_per_conn", "RSS", "KB/conn", "lower"),
             Metric("rss_after_mb", "RSS while held", "MB", "")),
}
DIAGNOSTICS = (
    Metric("loadgen_cpu_pct", "load gen CPU", "%", ""),
    Metric("backend_cpu_pct", "backend CPU", "%", ""),
    Metric("softirq_cpu_pct", "softirq CPU", "%", ""),
    Metric("other_cpu_pct", "other procs CPU", "%", ""),
    Metric("skipped_pct", "udpgen skipped", "%", "", "{:.2f}"),
    Metric("retransmits", "retransmits", "", "", "{:.0f}"),
    Metric("tfo_per_conn", "SYN-data per conn", "", "", "{:.2f}"),
    Metric("drops", "UDP drops", "", "", "{:.0f}"),
    Metric("errors", "errors", "", "", "{:.0f}"),
)
SUBSETS = ("all", "close")
SKIPPED_LIMIT = 1.0  # % of the offered rate udpgen may skip before a run is marked "behind"


def stats(xs: list[float]) -> dict[str, float]:
    """median, min, max and n of a non-empty list."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """{pin: {workload: {target: {"all"|"close": {metric: stats}, "runs", "failed", "behind",
    ...}}}}; "behind" counts the successful runs whose skipped_pct exceeds SKIPPED_LIMIT."""
    out: dict[str, Any] = {}
    for rec in records:
        cell = (out.setdefault(rec["pin"], {}).setdefault(rec["workload"], {})
                .setdefault(rec["target"], {"kind": rec["kind"], "runs": 0, "failed": 0,
                                            "errors": [], "skipped": None, "vcpu_rtt_ns": [],
                                            "behind": 0,
                                            "_vals": {s: {} for s in SUBSETS}}))
        if rec.get("skipped"):
            cell["skipped"] = rec["skipped"]
            continue
        cell["runs"] += 1
        if "vcpu_rtt_ns" in rec:
            cell["vcpu_rtt_ns"].append(rec["vcpu_rtt_ns"])
        if not rec["ok"]:
            cell["failed"] += 1
            cell["errors"].append(rec.get("error") or "unknown error")
            continue
        if (rec["metrics"].get("skipped_pct") or 0.0) > SKIPPED_LIMIT:
            cell["behind"] += 1
        subsets = ("all", "close") if rec.get("close") else ("all",)
        for key, value in rec["metrics"].items():
            if value is None:
                continue
            for s in subsets:
                cell["_vals"][s].setdefault(key, []).append(float(value))
    for per_wl in out.values():
        for per_target in per_wl.values():
            for cell in per_target.values():
                vals = cell.pop("_vals")
                for s in SUBSETS:
                    cell[s] = {k: stats(v) for k, v in vals[s].items() if v}
    return out


def ratio(summary: dict[str, Any], pin: str, workload: str, metric: str, a: str, b: str,
          subset: str = "all") -> float | None:
    """median(a) / median(b) of one metric, or None when either is missing or b is 0."""
    cells = summary.get(pin, {}).get(workload, {})
    try:
        va = cells[a][subset][metric]["median"]
        vb = cells[b][subset][metric]["median"]
    except KeyError:
        return None
    return va / vb if vb else None


def ratios(summary: dict[str, Any], targets: list[str]) -> dict[str, Any]:
    """{pin: {workload: {metric: {subset: {"a/b": ratio}}}}} for every pair of targets, where
    the metric exists for both (throughput ratios include direct; CPU ratios cannot)."""
    out: dict[str, Any] = {}
    for pin, per_wl in summary.items():
        for wl, per_target in per_wl.items():
            kinds = {c["kind"] for c in per_target.values()}
            for kind in kinds:
                for m in HEADLINE.get(kind, ()):
                    for subset in SUBSETS:
                        pairs: dict[str, float] = {}
                        for a in targets:
                            for b in targets:
                                if a == b:
                                    continue
                                r = ratio(summary, pin, wl, m.key, a, b, subset)
                                if r is not None:
                                    pairs[f"{a}/{b}"] = r
                        if pairs:
                            (out.setdefault(pin, {}).setdefault(wl, {})
                             .setdefault(m.key, {})[subset]) = pairs
    return out
