"""Write a benchmark invocation's results: the JSON document and its Markdown tables.

The JSON keeps everything (meta, plan, every run's record, summaries, ratios, table rebuild);
the Markdown shows, per pinning mode: medians (min-max) over all repetitions, the same over the
close repetitions only, the ratios between targets, and the diagnostics that say whether a
figure can be trusted (load generator and backend CPU, the machine's other load, retransmits,
errors, vCPU distance, how much of the rate the UDP generator skipped). UDP runs whose generator
fell behind (skipped more than SKIPPED_LIMIT % of the rate) are marked in bold wherever they
count: the main tables, the diagnostics and the per-run UDP table. PERF.md's earlier peer
figures are repeated at the end for orientation; only ratios measured in the same run are
comparable.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench.aggregate import DIAGNOSTICS, HEADLINE, SKIPPED_LIMIT, Metric
from bench.plan import L4LB_VARIANTS

PERF_MD_REFERENCE = (
    ("bulk1", "92.0 Gbit/s", "70.3 Gbit/s · 62 ms/GB", "39.0 Gbit/s · 202 ms/GB"),
    ("bulk8", "60.7 Gbit/s", "41.5 Gbit/s · 65 ms/GB", "33.4 Gbit/s · 239 ms/GB"),
    ("newconn", "55.0k/s · p99 0.95 ms", "50.5k/s · p99 1.62 ms · 19.3 µs/conn",
     "51.4k/s · p99 1.39 ms · 18.0 µs/conn"),
    ("keepalive", "243k/s · p99 0.19 ms", "208k/s · p99 0.32 ms · 4.71 µs/req",
     "183k/s · p99 0.30 ms · 4.06 µs/req"),
    ("udp300k", "0 % loss", "(no UDP)", "0.09 % loss · 3.2 µs/echo"),
    ("idle", "-", "3.3 KB/conn", "9.6 KB/conn"),
)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """The whole document, indented."""
    path.write_text(json.dumps(doc, indent=1, sort_keys=False, default=str) + "\n")


def _num(m: Metric, v: float) -> str:
    return m.fmt.format(v)


def _cell(cell: dict[str, Any] | None, subset: str, kind: str) -> str:
    if cell is None:
        return "-"
    if cell.get("skipped"):
        return "n/a"
    figs = cell.get(subset, {})
    parts = []
    for m in HEADLINE.get(kind, ()):
        s = figs.get(m.key)
        if s is None:
            continue
        rng = "" if s["n"] < 2 else f" ({_num(m, s['min'])}-{_num(m, s['max'])})"
        parts.append(f"{_num(m, s['median'])} {m.unit}{rng}")
    text = " · ".join(parts) if parts else ("no close run" if subset == "close" else "-")
    if cell.get("failed"):
        text += f" · **{cell['failed']}/{cell['runs']} failed**"
    if cell.get("behind"):
        text += f" · **{cell['behind']}/{cell['runs']} generator behind**"
    return text


def _targets(summary_pin: dict[str, Any], order: list[str]) -> list[str]:
    seen = {t for per_t in summary_pin.values() for t in per_t}
    return [t for t in order if t in seen]


def _main_table(doc: dict[str, Any], pin: str, subset: str) -> list[str]:
    summary_pin = doc["summary"].get(pin, {})
    targets = _targets(summary_pin, doc["meta"]["targets"])
    labels = {w["name"]: w["label"] for w in doc["meta"]["workloads"]}
    lines = ["| workload | " + " | ".join(targets) + " |",
             "|---|" + "---|" * len(targets)]
    for wl, per_t in summary_pin.items():
        kind = next(iter(per_t.values()))["kind"]
        row = [_cell(per_t.get(t), subset, kind) for t in targets]
        lines.append(f"| {labels.get(wl, wl)} | " + " | ".join(row) + " |")
    return lines


def _ratio_table(doc: dict[str, Any], pin: str) -> list[str]:
    summary_pin = doc["summary"].get(pin, {})
    rpin = doc["ratios"].get(pin, {})
    targets = _targets(summary_pin, doc["meta"]["targets"])
    ours = [t for t in L4LB_VARIANTS if t in targets]
    peers = [t for t in targets if t not in ("direct", *L4LB_VARIANTS)]
    cols = [f"{t}/{p}" for t in ours for p in peers]
    cols += [f"{t}/direct" for t in targets if t != "direct" and "direct" in targets]
    if not cols:
        return []
    lines = ["| workload | figure | " + " | ".join(cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for wl, per_t in summary_pin.items():
        kind = next(iter(per_t.values()))["kind"]
        for m in HEADLINE.get(kind, ()):
            if not m.better:
                continue
            by_subset = rpin.get(wl, {}).get(m.key, {})
            row = []
            for c in cols:
                a = by_subset.get("all", {}).get(c)
                cl = by_subset.get("close", {}).get(c)
                if a is None:
                    row.append("-")
                else:
                    row.append(f"{a:.2f}" + (f" ({cl:.2f})" if cl is not None else ""))
            if any(x != "-" for x in row):
                lines.append(f"| {wl} | {m.label} ({m.unit}, {m.better} is better) | "
                             + " | ".join(row) + " |")
    return lines


def _diag_table(doc: dict[str, Any], pin: str) -> list[str]:
    summary_pin = doc["summary"].get(pin, {})
    targets = _targets(summary_pin, doc["meta"]["targets"])
    head = ["workload", "target", "runs ok", "close", "vCPU rtt ns", "LB CPU %",
            *[m.label + (f" {m.unit}" if m.unit else "") for m in DIAGNOSTICS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    recs = doc["records"]
    for wl, per_t in summary_pin.items():
        for t in targets:
            cell = per_t.get(t)
            if cell is None or cell.get("skipped"):
                continue
            mine = [r for r in recs if r["pin"] == pin and r["workload"] == wl
                    and r["target"] == t and not r.get("skipped")]
            rtts = [r["vcpu_rtt_ns"] for r in mine if "vcpu_rtt_ns" in r]
            lbp = [r["lb_cpu_pct"] for r in mine if r.get("lb_cpu_pct") is not None]
            row = [wl, t, f"{cell['runs'] - cell['failed']}/{cell['runs']}",
                   str(sum(1 for r in mine if r.get("close") and r["ok"])),
                   (f"{statistics.median(rtts):.0f} ({min(rtts):.0f}-{max(rtts):.0f})"
                    if rtts else "-"),
                   f"{statistics.median(lbp):.0f}" if lbp else "-"]
            for m in DIAGNOSTICS:
                s = cell["all"].get(m.key)
                text = ("-" if s is None else
                        (f"{s['median'] * s['n']:.0f} total" if m.key == "errors"
                         and s["n"] else m.fmt.format(s["median"])))
                if m.key == "skipped_pct" and cell.get("behind"):
                    text += f" **({cell['behind']} runs > {SKIPPED_LIMIT:g} %)**"
                row.append(text)
            lines.append("| " + " | ".join(row) + " |")
    return lines


def _skipped_text(rec: dict[str, Any]) -> str:
    """A UDP run's skipped share of the rate; bold with a warning when the generator fell
    behind."""
    pct = (rec.get("metrics") or {}).get("skipped_pct")
    if pct is None:
        return "-"
    if pct > SKIPPED_LIMIT:
        return f"**{pct:.2f} behind**"
    return f"{pct:.2f}"


def _udp_loss_table(doc: dict[str, Any], pin: str) -> list[str]:
    """One row per UDP run: where its lost datagrams were lost (bench/udploss.py) and whether
    the generator kept its pace (skipped: not offered because udpgen woke too late)."""
    recs = [r for r in doc["records"] if r["pin"] == pin and r.get("kind") == "udp"
            and r.get("udp_loss")]
    if not recs:
        return []
    where = ("generator_send", "lb_listener", "lb_upstream", "backend", "generator_receive",
             "unaccounted")
    lines = ["| rep | target | workload | offered | loss % | " + " | ".join(where)
             + " | skipped | skipped % | late ticks | max/tick | loadgen CPU % | "
             "other procs CPU % | steal % |",
             "|" + "---|" * (12 + len(where))]
    for r in sorted(recs, key=lambda r: (r["workload"], r["target"], r["rep"])):
        raw, loss = r.get("raw", {}), r["udp_loss"]
        lines.append(
            f"| {r['rep']} | {r['target']} | {r['workload']} | {raw.get('offered', 0):,.0f} | "
            f"{raw.get('loss_pct', 0):.3f} | "
            + " | ".join(f"{loss.get(k, 0):,.0f}" for k in where)
            + f" | {raw.get('skipped', 0):,.0f} | {_skipped_text(r)} | "
            f"{raw.get('late_ticks', 0):,.0f} | "
            f"{raw.get('max_tick', 0):,.0f} | {r.get('loadgen_cpu_pct', 0):.0f} | "
            f"{r.get('other_cpu_pct', 0):.0f} | "
            + "/".join(str(v) for v in (r.get("steal_pct") or {}).values()) + " |")
    return lines


def _table_rebuild(doc: dict[str, Any]) -> list[str]:
    tb = doc.get("table")
    if not tb:
        return ["Not run."]
    lines: list[str] = []
    for side in ("l4lb", "l4lb-ref"):
        res = tb.get(side)
        if res is None:
            continue
        lines.append(f"**{side}** (data plane: {res.get('dataplane', 'n/a')}, "
                     f"{res.get('slots', '?')} Maglev slots, {res.get('reps', '?')} rebuilds "
                     "each; target: < 20 ms for 1,000 backends)")
        lines.append("")
        for key in ("error", "publish_error"):
            if res.get(key):
                lines.append(f"- {res[key]}")
        if res.get("results"):
            lines += ["| backends | scheduler | blob bytes | build ms | publish ms | total ms |",
                      "|---|---|---|---|---|---|"]
            for row in res["results"]:
                def f(k: str, row: dict[str, Any] = row) -> str:
                    s = row.get(k)
                    return "-" if s is None else (
                        f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})")
                lines.append(f"| {row['backends']:,} | {row['scheduler']} | {row['blob_bytes']:,}"
                             f" | {f('build_ms')} | {f('publish_ms')} | {f('total_ms')} |")
        lines.append("")
    return lines or ["Not run."]


def markdown(doc: dict[str, Any]) -> str:
    """The Markdown report of a document."""
    meta = doc["meta"]
    o = meta["options"]
    out = [f"# l4lb comparative benchmark: {meta['mode']} run, {meta['started']}", ""]
    out += [f"- Command: `{meta['command']}`; {meta['duration_s']:.0f} s.",
            f"- Machine: {meta['host']['cpus']} CPUs"
            + (f" ({meta['host']['cpu_model']})" if meta["host"].get("cpu_model") else "")
            + f", kernel {meta['host']['kernel']}; "
            + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
            f"- Repetitions: {o['reps']}; pinning: {', '.join(o['pins'])} (pinned: balancer "
            "on CPU 1, load generators and backends on CPU 0); durations: iperf3 "
            f"{o['bulk_seconds']} s, wrk {o['http_seconds']} s, UDP {o['udp_ms'] / 1000:g} s.",
            f"- A run is *close* when the vCPU ping-pong probe taken just before it was below "
            f"{o['close_ns']:.0f} ns round trip; far runs halve every figure through a "
            "balancer.",
            "- Cells: median (min-max) over the repetitions. LB CPU = utime+stime of the "
            "balancer's processes per unit of work. Absolute figures swing up to 2x between "
            "runs on this machine: compare ratios within this run.", ""]
    others = [r["other_cpu_pct"] for r in doc["records"]
              if r.get("ok") and r.get("kind") != "idle" and r.get("other_cpu_pct") is not None]
    if others:
        busy = sum(1 for x in others if x > 50)
        out += [f"- Machine noise: processes other than the benchmark's used a median "
                f"{statistics.median(others):.0f} % of a CPU during the traffic runs (max "
                f"{max(others):.0f} %); {busy} of {len(others)} runs had more than 50 %, and "
                "their throughput and latency figures understate every target. CPU per unit "
                "of work suffers less.", ""]
    for t in meta["targets"]:
        out.append(f"- **{t}**: {meta['target_labels'].get(t, t)}")
    out.append("")
    for pin in o["pins"]:
        if pin not in doc["summary"]:
            continue
        n_all = sum(1 for r in doc["records"] if r["pin"] == pin and r["ok"])
        n_close = sum(1 for r in doc["records"] if r["pin"] == pin and r["ok"] and r.get("close"))
        out += [f"## {pin}: all repetitions ({n_all} successful runs)", "",
                *_main_table(doc, pin, "all"), "",
                f"## {pin}: close repetitions only ({n_close} of {n_all} runs)", "",
                *_main_table(doc, pin, "close"), "",
                f"## {pin}: ratios of medians, all repetitions (close only in parentheses)", "",
                *(_ratio_table(doc, pin) or ["No pair to compare."]), "",
                f"## {pin}: diagnostics (medians over all repetitions)", "",
                *_diag_table(doc, pin), ""]
        udp = _udp_loss_table(doc, pin)
        if udp:
            out += [f"## {pin}: UDP, where the lost datagrams were lost (every run)", "",
                    "Datagrams dropped by the kernel at each socket (its drops counter in "
                    "/proc/net/udp, udpgen's own sockets by SO_MEMINFO), the generator's failed "
                    "sends, and the rest (unaccounted: dropped by the balancer itself or still "
                    "in flight when udpgen stopped waiting). skipped = not offered because "
                    "udpgen woke more than 10 ticks late (its CPU was taken); max/tick = most "
                    "datagrams offered in one 100 µs tick. skipped % = skipped / (offered + "
                    f"skipped); above {SKIPPED_LIMIT:g} % the run is marked **behind**: the "
                    "generator did not offer the nominal rate. other procs = CPU time of "
                    "every process that is not the benchmark's, summed per process over the "
                    "run (processes that ended during it are missed); steal = time the "
                    "hypervisor took from each vCPU (cpu0/cpu1).", "", *udp, ""]
    out += ["## Forwarding-table rebuild + publish (in-process)", "", *_table_rebuild(doc), ""]
    out += ["## PERF.md's earlier figures for the peers (other runs: orientation only)", "",
            "| workload | direct | HAProxy (splice forced) | nginx stream |", "|---|---|---|---|"]
    out += [f"| {w} | {d} | {h} | {n} |" for w, d, h, n in PERF_MD_REFERENCE]
    out += ["", "## Not run, not supported, failed", ""]
    notes = list(meta.get("notes", []))
    for pin, per_wl in doc["summary"].items():
        for wl, per_t in per_wl.items():
            for t, cell in per_t.items():
                if cell.get("skipped"):
                    notes.append(f"{pin} {wl} {t}: {cell['skipped']}")
                for err in sorted(set(cell.get("errors", [])))[:3]:
                    notes.append(f"{pin} {wl} {t}: failed: {err[:300]}")
    out += [f"- {n}" for n in notes] or ["- Nothing."]
    for png in doc.get("charts", []):
        out += ["", f"![chart]({png})"]
    return "\n".join(out) + "\n"


def write_markdown(path: Path, doc: dict[str, Any]) -> None:
    """The Markdown report."""
    path.write_text(markdown(doc))
