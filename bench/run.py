#!/usr/bin/env python3
"""The one command of the comparative benchmark: plan, run, and report l4lb vs its peers.

    python bench/run.py --quick            # < 3 minutes: pinned, 3 repetitions, short runs
    python bench/run.py                    # < 15 minutes: pinned and unpinned, longer runs
    python bench/run.py --quick --dry-run  # print the plan only: nothing started, no load

Targets: direct, l4lb, l4lb-cubic (bulk only: the bulk service with congestion_control =
"cubic"), l4lb-tfo (new connections only: backend_fast_open and defer_accept), l4lb-nogro (UDP
300k/s only: udp_gro = false on the UDP service), haproxy (splice
forced), haproxy-auto, nginx (and l4lb-ref, the pure-Python data plane, only as a smoke test of
the harness). l4lb-tfo needs root: the run sets the server bit of net.ipv4.tcp_fastopen and
restores it afterwards.
Workloads and measurement rules:
shared/PERF.md and bench/README.md.
Results: bench/results/<kind>-<time>.{json,md,png} (kind: quick, full; custom when targets,
workloads, pins or reps were narrowed; smoke with l4lb-ref); complete quick and full runs are
also copied to latest-<mode>.*; raw per-run data: bench/results/raw/<time>/ (git-ignored).
Exit status: 0 when the benchmark ran (failed runs are data, shown in the report), 2 on bad
arguments, 1 when it could not run at all (e.g. a helper does not compile).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == REPO / "bench":
    sys.path.pop(0)  # bench/ itself must not shadow anything: import it as the package `bench`
sys.path.insert(0, str(REPO))

from bench import loadgen, peers  # noqa: E402
from bench.plan import (  # noqa: E402
    LB_CPU,
    LOAD_CPU,
    TARGET_LABELS,
    TARGETS,
    TFO_TARGETS,
    Options,
    Plan,
    make_plan,
)
from bench.procs import pinned  # noqa: E402

EXAMPLE_FRONT = peers.Ports(bulk=21000, http=21001, idle=21002, udp=21003)
EXAMPLE_BACK = peers.Ports(bulk=21004, http=21005, idle=21006, udp=21007)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Options]:
    """Command line -> (namespace, Options)."""
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the short mode (< 3 minutes)")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the plan and exit: start nothing, generate no load")
    ap.add_argument("--json-plan", action="store_true", help="with --dry-run: print JSON")
    ap.add_argument("--reps", type=int, help="repetitions (default 3)")
    ap.add_argument("--targets", type=_csv, help=f"comma-separated, from {', '.join(TARGETS)}")
    ap.add_argument("--only", type=_csv, help="comma-separated workload names (and/or 'table')")
    ap.add_argument("--pins", type=_csv, help="pinned,unpinned (default: quick pinned; full both)")
    ap.add_argument("--l4lb-reference", action="store_true",
                    help="add target l4lb-ref (L4LB_NO_EXTENSIONS=1): a harness smoke test only")
    ap.add_argument("--idle-conns", type=int, help="idle connections held (default 9000)")
    ap.add_argument("--close-ns", type=float, help="vCPU probe threshold for 'close' (350)")
    ap.add_argument("--wait-quiet", type=float,
                    help="before each block wait up to this many seconds until other processes "
                         "use < 20%% of a CPU (default 0: do not wait)")
    ap.add_argument("--max-seconds", type=float,
                    help="time budget: later blocks are skipped past it (quick 170, full 870)")
    ap.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    o = Options.for_mode(args.quick)
    changes: dict[str, object] = {}
    if args.reps is not None:
        changes["reps"] = args.reps
    if args.targets:
        changes["targets"] = args.targets
    if args.only:
        changes["only"] = args.only
    if args.pins:
        changes["pins"] = args.pins
    if args.idle_conns is not None:
        changes["idle_conns"] = args.idle_conns
    if args.close_ns is not None:
        changes["close_ns"] = args.close_ns
    if args.wait_quiet is not None:
        changes["wait_quiet"] = args.wait_quiet
    if args.l4lb_reference:
        base = changes.get("targets", o.targets)
        assert isinstance(base, tuple)
        if "l4lb-ref" not in base:
            changes["targets"] = (*base, "l4lb-ref")
    o = Options(**{**o.__dict__, **changes})
    return args, o


def describe(plan: Plan) -> str:
    """The human-readable plan: options, every block with its commands, the estimate."""
    o = plan.options
    lines = [f"plan: {'quick' if o.quick else 'full'} mode, {o.reps} repetitions, "
             f"pinning {', '.join(o.pins)}, {len(plan.blocks)} balancer lifetimes, "
             f"{len(plan.steps)} measured runs, about {plan.estimate_seconds():.0f} s",
             "targets:"]
    lines += [f"  {t:<13} {TARGET_LABELS[t]}" for t in o.targets]
    lines.append("workloads:")
    lines += [f"  {w.name:<10} {w.label}" for w in plan.workloads]
    lines.append("pinning: pinned = balancer on CPU 1, load generators and backends on CPU 0; "
                 "unpinned = no taskset")
    lines.append("backends (per pinning mode): iperf3 -s, nginx HTTP (fixed 200), udpecho; "
                 "example ports shown, real ones are picked free at run time")
    for block in plan.blocks:
        lb = LB_CPU if block.pin == "pinned" else None
        ld = LOAD_CPU if block.pin == "pinned" else None
        env = "L4LB_NO_EXTENSIONS=1 " if block.target == "l4lb-ref" else ""
        start = ("nothing in between: the load goes straight to the backends"
                 if block.target == "direct"
                 else env + shlex.join(pinned(_start_argv(block.target), lb)))
        lines.append(f"[{block.pin} rep {block.rep + 1}/{o.reps}] {block.target}: {start}")
        for step in block.steps:
            lines.append(f"    {step.workload.name:<10} "
                         + shlex.join(pinned(_load_argv(step.workload, o), ld)))
    if plan.table_sizes:
        lines.append("table rebuild + publish (l4lb, in-process): python -m bench.tablebench "
                     f"--sizes {','.join(map(str, plan.table_sizes))} --reps {o.table_reps}")
    return "\n".join(lines)


def _start_argv(target: str) -> list[str]:
    if target.startswith("haproxy"):
        return peers.haproxy_argv(f"<raw>/{target}.cfg")
    if target == "nginx":
        return peers.nginx_argv("<raw>/nginx-stream", "<raw>/nginx-stream/nginx.conf")
    return ["l4lb", "run", "-c", f"<raw>/{target}.toml"]


def _load_argv(w: object, o: Options) -> list[str]:
    from bench.plan import Workload

    assert isinstance(w, Workload)
    f = EXAMPLE_FRONT
    if w.kind == "bulk":
        return loadgen.iperf3_argv(f.bulk, o.bulk_seconds, w.streams)
    if w.kind in ("newconn", "keepalive"):
        return loadgen.wrk_argv(f.http, o.http_seconds, w.streams, close=w.kind == "newconn")
    if w.kind == "udp":
        return loadgen.udpgen_argv("bench/build/udpgen-*", f.udp, w.streams, 64, w.rate,
                                   o.udp_ms)
    return [sys.executable, "-m", "bench.idle", "hold", str(f.idle), str(w.count)]


def plan_json(plan: Plan) -> str:
    """The plan as JSON (for tests and tools)."""
    return json.dumps({
        "options": {**plan.options.__dict__},
        "estimate_seconds": plan.estimate_seconds(),
        "workloads": [w.__dict__ for w in plan.workloads],
        "table_sizes": list(plan.table_sizes),
        "blocks": [{"pin": b.pin, "rep": b.rep, "target": b.target,
                    "steps": [s.workload.name for s in b.steps]} for b in plan.blocks],
    }, default=list)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args, options = parse_args(argv)
    try:
        plan = make_plan(options)
    except ValueError as exc:
        print(f"bench/run.py: error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(plan_json(plan) if args.json_plan else describe(plan))
        if not args.json_plan:
            print("dry run: nothing started, no load generated")
        return 0
    if options.reps < 3:
        print(f"bench/run.py: warning: {options.reps} repetitions; PERF.md asks for >= 3",
              file=sys.stderr)
    from bench import chart, fastopen, report, runner

    print(describe(plan).splitlines()[0], flush=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    results = args.results_dir
    rawdir = results / "raw" / stamp
    budget = args.max_seconds or (170.0 if options.quick else 870.0)

    def echo(line: str) -> None:
        print(line, flush=True)

    try:
        with fastopen.server_bit(any(t in TFO_TARGETS for t in options.targets)) as tfo_notes:
            doc = runner.execute(plan, REPO, rawdir, budget, echo)
    except RuntimeError as exc:
        print(f"bench/run.py: error: {exc}", file=sys.stderr)
        return 1
    doc["meta"]["notes"].extend(tfo_notes)
    mode = doc["meta"]["mode"]
    smoke = "l4lb-ref" in options.targets
    custom = any(x is not None for x in (args.targets, args.only, args.pins, args.reps,
                                          args.idle_conns))
    kind = "smoke" if smoke else "custom" if custom else mode
    stem = f"{kind}-{stamp}"
    doc["meta"]["started"] = stamp
    doc["meta"]["command"] = shlex.join(["python", "bench/run.py", *(argv or sys.argv[1:])])
    written: list[Path] = []
    try:
        for i, pin in enumerate(p for p in options.pins if p in doc["summary"]):
            png = results / (f"{stem}.png" if i == 0 else f"{stem}-{pin}.png")
            if chart.draw(doc, png, pin):
                doc.setdefault("charts", []).append(png.name)
                written.append(png)
    except ImportError:
        doc["meta"]["notes"].append("no PNG: matplotlib is not installed (bench/install.sh)")
    report.write_json(results / f"{stem}.json", doc)
    report.write_markdown(results / f"{stem}.md", doc)
    written = [results / f"{stem}.json", results / f"{stem}.md", *written]
    if kind in ("quick", "full"):  # only complete default runs become latest-<mode>
        for src in written:
            dst = results / src.name.replace(stem, f"latest-{mode}")
            if src.suffix == ".md":
                dst.write_text(src.read_text().replace(f"]({stem}", f"](latest-{mode}"))
            else:
                shutil.copyfile(src, dst)
    print("results: " + ", ".join(str(p) for p in written if p.exists()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
