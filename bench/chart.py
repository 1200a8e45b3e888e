"""Draw the benchmark's PNG chart: one panel per workload figure, one bar per target.

Bars are medians over all repetitions of one pinning mode with min-max whiskers; a black dot
marks the median of the close repetitions (vCPUs near each other) where there are any; a target
that cannot run the workload (HAProxy and, for now, l4lb with UDP) is marked n/a. A last
panel shows the forwarding-table rebuild + publish time by number of backends. matplotlib is
imported here only, so planning and dry runs never need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.aggregate import HEADLINE

COLORS = {"direct": "#888888", "l4lb": "#d62728", "l4lb-cubic": "#ff7f0e", "l4lb-tfo": "#9467bd",
          "l4lb-nogro": "#e377c2",
          "haproxy": "#1f77b4", "haproxy-auto": "#aec7e8",
          "nginx": "#2ca02c", "l4lb-ref": "#ff9896"}


def draw(doc: dict[str, Any], path: Path, pin: str | None = None) -> bool:
    """Write the chart of one pinning mode (default: the first one measured); False if there is
    nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pins = [p for p in doc["meta"]["options"]["pins"] if p in doc["summary"]]
    if not pins:
        return False
    pin = pin or pins[0]
    summary = doc["summary"][pin]
    order = doc["meta"]["targets"]
    panels: list[tuple[str, Any, dict[str, Any]]] = []
    for wl, per_t in summary.items():
        kind = next(iter(per_t.values()))["kind"]
        for m in HEADLINE.get(kind, ()):
            panels.append((wl, m, per_t))
    table = (doc.get("table") or {}).get("l4lb") or (doc.get("table") or {}).get("l4lb-ref")
    extra = 1 if table and table.get("results") else 0
    n = len(panels) + extra
    if n == 0:
        return False
    ncols = 4
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), squeeze=False)
    for i, (wl, m, per_t) in enumerate(panels):
        ax = axes[i // ncols][i % ncols]
        names, meds, lo, hi, close = [], [], [], [], []
        na: list[str] = []  # targets that cannot run this workload (e.g. no UDP): shown as n/a
        for t in order:
            cell = per_t.get(t)
            if cell is None:
                continue
            if cell.get("skipped"):
                names.append(t)
                na.append(t)
                meds.append(0.0)
                lo.append(0.0)
                hi.append(0.0)
                close.append(None)
                continue
            s = cell["all"].get(m.key)
            if s is None:
                continue
            names.append(t)
            meds.append(s["median"])
            lo.append(s["median"] - s["min"])
            hi.append(s["max"] - s["median"])
            c = cell["close"].get(m.key)
            close.append(c["median"] if c else None)
        if len(names) == len(na):
            ax.set_axis_off()
            continue
        xs = list(range(len(names)))
        ax.bar(xs, meds, yerr=[lo, hi], capsize=3,
               color=[COLORS.get(t, "#9467bd") for t in names])
        for x, t, c, v in zip(xs, names, close, meds, strict=True):
            if t in na:
                ax.annotate("n/a", (x, 0), textcoords="offset points", xytext=(0, 4),
                            ha="center", fontsize=8, color="#555555")
                continue
            if c is not None:
                ax.plot([x], [c], "ko", markersize=3)
            ax.annotate(m.fmt.format(v), (x, v), textcoords="offset points", xytext=(6, 2),
                        fontsize=7)
        ax.set_xticks(xs, names, rotation=20, fontsize=8)
        better = {"higher": "↑ better", "lower": "↓ better"}.get(m.better, "")
        ax.set_title(f"{wl}: {m.label} ({m.unit}) {better}", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    if extra and table is not None:
        ax = axes[len(panels) // ncols][len(panels) % ncols]
        for sched, style in (("round_robin", "o-"), ("maglev", "s-")):
            rows = [r for r in table["results"] if r["scheduler"] == sched]
            key = "total_ms" if rows and "total_ms" in rows[0] else "build_ms"
            ax.plot([r["backends"] for r in rows], [r[key]["median"] for r in rows], style,
                    label=f"{sched} ({key.split('_')[0]})")
        ax.axhline(20, color="r", linestyle=":", linewidth=1, label="target 20 ms")
        ax.set_xscale("log")
        ax.set_xlabel("backends", fontsize=8)
        ax.set_title("table rebuild + publish (ms) ↓ better", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_axis_off()
    meta = doc["meta"]
    fig.suptitle(f"l4lb benchmark, {meta['mode']} run {meta['started']} - {pin}, "
                 f"{meta['options']['reps']} reps, bars: median (min-max), dots: close reps",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
