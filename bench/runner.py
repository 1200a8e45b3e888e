"""Carry out a plan: backends, then each block's balancer and runs, then the table rebuild.

One pinning mode at a time: the harness pins itself to the load CPU (pinned mode) so that every
child it starts inherits that, starts the backends, and runs the blocks in plan order; each block
starts its target, runs its workloads, stops it. Every record is appended to a JSON-lines file
under results/raw/ as soon as it exists, so an interrupted run keeps what it measured. A time
budget stops further blocks (noted in the report) rather than letting a slow machine run on.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import aggregate, backends, native, peers, procfs, procs, targets, workloads
from bench.plan import L4LB_VARIANTS, LB_CPU, LOAD_CPU, TARGET_LABELS, Plan

TOOLS = {"haproxy": "haproxy", "haproxy-auto": "haproxy", "nginx": "nginx"}
LOAD_TOOLS = {"bulk": "iperf3", "newconn": "wrk", "keepalive": "wrk"}


def free_ports(n: int, start: int = 21000, stop: int = 32000) -> list[int]:
    """n ports below the ephemeral range that are free for both TCP and UDP on 127.0.0.1."""
    out: list[int] = []
    for port in range(start, stop):
        ok = True
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(socket.AF_INET, kind)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            out.append(port)
            if len(out) == n:
                return out
    raise RuntimeError(f"fewer than {n} free ports in {start}..{stop}")


def _version(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return "missing"
    m = re.search(r"\d+\.\d+(\.\d+)?", res.stdout + res.stderr)
    return m.group(0) if m else "?"


def versions() -> dict[str, str]:
    """First line of each tool's version output."""
    return {"haproxy": _version(["haproxy", "-v"]), "nginx": _version(["nginx", "-v"]),
            "iperf3": _version(["iperf3", "--version"]), "wrk": _version(["wrk", "-v"])}


def _set_affinity(cpus: set[int]) -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cpus)


QUIET_PCT = 20.0  # "quiet": other processes use less than this share of one CPU


def wait_quiet(limit: float, ours: list[int]) -> tuple[float, float]:
    """Wait up to limit seconds until the CPU use outside `ours` (PIDs) and interrupts falls
    below QUIET_PCT over a 0.25 s window; returns (seconds waited, last measured other %)."""
    t0 = time.monotonic()
    other = 0.0
    while True:
        a, ta, ca = procfs.cpu_times(), time.monotonic(), procfs.cpu_ticks_of(ours)
        time.sleep(0.25)
        b, tb, cb = procfs.cpu_times(), time.monotonic(), procfs.cpu_ticks_of(ours)
        busy = sum(procfs.busy_percent(a, b).values()) - sum(
            procfs.busy_percent(a, b, column=2).values())
        other = max(0.0, busy - 100.0 * procfs.ticks_to_seconds(cb - ca) / (tb - ta))
        if other < QUIET_PCT or time.monotonic() - t0 >= limit:
            return time.monotonic() - t0, other


def execute(plan: Plan, repo: Path, rawdir: Path, max_seconds: float,
            echo: Callable[[str], None]) -> dict[str, Any]:
    """Run everything; returns the document (meta, records, summary, ratios, table)."""
    t_start = time.monotonic()
    o = plan.options
    rawdir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    all_cpus = set(range(os.cpu_count() or 1))
    bins = native.build_all()
    missing_tools = {t for t in {*TOOLS.values(), *LOAD_TOOLS.values()} if not shutil.which(t)}
    for t in sorted(missing_tools):
        notes.append(f"{t} is not installed (bench/install.sh installs it): its runs failed")
    l4lb_setup = None
    if any(t.startswith("l4lb") for t in o.targets):
        l4lb_setup = targets.detect_l4lb(repo, rawdir / "l4lb-detect",
                                         reference="l4lb-ref" in o.targets)
        if any(t in o.targets for t in L4LB_VARIANTS) and not l4lb_setup.compiled:
            notes.append("l4lb: not run: the compiled data plane is not available "
                         f"({l4lb_setup.compiled_note})")
        if not l4lb_setup.udp:
            notes.append(f"l4lb UDP: {l4lb_setup.udp_note}")
    ports = free_ports(8)
    front = peers.Ports(bulk=ports[0], http=ports[1], idle=ports[2], udp=ports[3])
    back = peers.Ports(bulk=ports[4], http=ports[5], idle=ports[6], udp=ports[7])
    records: list[dict[str, Any]] = []
    runs_file = rawdir / "runs.jsonl"
    stopped_early = False
    for pin in o.pins:
        pinned = pin == "pinned"
        load_cpu = LOAD_CPU if pinned else None
        lb_cpu = LB_CPU if pinned else None
        _set_affinity({LOAD_CPU} if pinned else all_cpus)
        pindir = rawdir / pin
        be = backends.start(back, pindir / "backends", load_cpu, bins["udpecho"])
        ctx = workloads.Context(options=o, bins=bins, workdir=pindir, backends=be,
                                load_cpu=load_cpu, repo=repo)
        try:
            for block in (b for b in plan.blocks if b.pin == pin):
                if time.monotonic() - t_start > max_seconds:
                    stopped_early = True
                    break
                if o.wait_quiet > 0:
                    waited, other = wait_quiet(o.wait_quiet, [os.getpid(), *be.iperf.tree(),
                                                              *be.http.tree()])
                    if other >= QUIET_PCT:
                        echo(f"(machine still busy after {waited:.0f} s: other processes "
                             f"{other:.0f}% of a CPU)")
                tool = TOOLS.get(block.target)
                reason = None
                if tool in missing_tools:
                    reason = f"{tool} is not installed"
                elif block.target in L4LB_VARIANTS and l4lb_setup is not None \
                        and not l4lb_setup.compiled:
                    reason = "compiled data plane not available"
                run = None
                if reason is None:
                    try:
                        run = targets.start(block.target, front, back,
                                            pindir / f"rep{block.rep}-{block.target}", lb_cpu,
                                            l4lb_setup)
                    except (RuntimeError, OSError) as exc:
                        reason = f"could not start: {exc}"
                try:
                    for step in block.steps:
                        if run is None:
                            rec: dict[str, Any] = {
                                "pin": step.pin, "rep": step.rep, "target": step.target,
                                "workload": step.workload.name, "kind": step.workload.kind,
                                "ok": False, "metrics": {}, "skipped": None, "error": None}
                            if block.target in L4LB_VARIANTS and reason \
                                    and "compiled" in reason:
                                rec["skipped"] = reason
                            else:
                                rec["error"] = reason
                        else:
                            rec = workloads.run_step(ctx, run, step)
                            rec["info"] = dict(run.info)
                        records.append(rec)
                        with open(runs_file, "a") as f:
                            f.write(json.dumps(rec, default=str) + "\n")
                        echo(_progress_line(rec, o.reps))
                finally:
                    if run is not None:
                        targets.stop(run)
        finally:
            be.stop()
            _set_affinity(all_cpus)
        if stopped_early:
            break
    if stopped_early:
        notes.append(f"stopped early: the time budget of {max_seconds:.0f} s ran out; "
                     "later blocks were not run")
    table: dict[str, Any] = {}
    if plan.table_sizes and l4lb_setup is not None:
        for side in ("l4lb", "l4lb-ref"):
            if side not in o.targets:
                continue
            table[side] = run_tablebench(plan, l4lb_setup, rawdir, reference=side == "l4lb-ref",
                                         cpu=LB_CPU if "pinned" in o.pins else None)
            echo(f"table rebuild ({side}): " + _table_line(table[side]))
    elif plan.table_sizes:
        notes.append("forwarding-table rebuild: not run (no l4lb target selected)")
    summary = aggregate.summarize(records)
    return {
        "meta": {
            "mode": "quick" if o.quick else "full",
            "options": {**o.__dict__, "pins": list(o.pins), "targets": list(o.targets)},
            "targets": list(o.targets),
            "target_labels": {t: TARGET_LABELS[t] for t in o.targets},
            "workloads": [w.__dict__ for w in plan.workloads],
            "host": {"cpus": os.cpu_count(), "cpu_model": cpu_model(),
                     "kernel": os.uname().release, "python": sys.version.split()[0]},
            "versions": versions(),
            "l4lb": None if l4lb_setup is None else l4lb_setup.__dict__,
            "ports": {"front": front.__dict__, "back": back.__dict__},
            "notes": notes,
            "raw": str(rawdir),
            "duration_s": time.monotonic() - t_start,
        },
        "records": records,
        "summary": summary,
        "ratios": aggregate.ratios(summary, list(o.targets)),
        "table": table,
    }


def run_tablebench(plan: Plan, setup: targets.L4lbSetup, rawdir: Path, reference: bool,
                   cpu: int | None) -> dict[str, Any]:
    """The in-process table rebuild benchmark in l4lb's interpreter; its JSON or an error."""
    env = dict(os.environ)
    env.pop(targets.NO_EXT, None)
    if reference:
        env[targets.NO_EXT] = "1"
    env["PYTHONPATH"] = setup.cwd
    sizes = ",".join(str(n) for n in plan.table_sizes)
    fin = procs.run_bounded([setup.python, "-m", "bench.tablebench", "--sizes", sizes,
                             "--reps", str(plan.options.table_reps)], timeout=120.0, cpu=cpu,
                            workdir=rawdir, cwd=setup.cwd, env=env)
    if fin.returncode != 0:
        return {"error": f"tablebench exited {fin.returncode}: {fin.stderr.strip()[-500:]}"}
    try:
        result: dict[str, Any] = json.loads(fin.stdout)
    except json.JSONDecodeError:
        return {"error": f"tablebench printed no JSON: {fin.stdout[:200]!r}"}
    return result


def _table_line(res: dict[str, Any]) -> str:
    if res.get("error"):
        return str(res["error"])
    parts = []
    for row in res.get("results", []):
        key = "total_ms" if "total_ms" in row else "build_ms"
        parts.append(f"{row['backends']} {row['scheduler']} {row[key]['median']:.2f} ms")
    if res.get("publish_error"):
        parts.append(res["publish_error"])
    return "; ".join(parts)


def _progress_line(rec: dict[str, Any], reps: int) -> str:
    head = f"[{rec['pin']} {rec['rep'] + 1}/{reps}] {rec['target']:<12} {rec['workload']:<10}"
    if rec.get("skipped"):
        return f"{head} n/a: {rec['skipped']}"
    if not rec["ok"]:
        return f"{head} FAILED: {(rec.get('error') or '')[:200]}"
    kind = rec["kind"]
    bits = []
    for m in aggregate.HEADLINE.get(kind, ()):
        v = rec["metrics"].get(m.key)
        if v is not None:
            bits.append(f"{m.fmt.format(v)} {m.unit}")
    bits.append(f"loadgen {rec.get('loadgen_cpu_pct', 0):.0f}%")
    if rec.get("lb_cpu_pct") is not None:
        bits.append(f"LB {rec['lb_cpu_pct']:.0f}%")
    bits.append(f"other {rec.get('other_cpu_pct', 0):.0f}%")
    bits.append(f"vCPU {rec.get('vcpu_rtt_ns', -1):.0f} ns")
    return f"{head} " + " · ".join(bits)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" when it does not say)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return ""
