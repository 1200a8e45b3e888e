"""Run one workload against one started target and account for it: the measured run.

Around the load generator the harness snapshots the balancer's and the backend's CPU ticks,
the kernel's TCP/UDP counters and the per-CPU busy time, and probes the vCPU distance just
before. From those it derives the figures of PERF.md: LB CPU per GB / per connection / per
request / per echo, RSS per idle connection, plus the load generator's and the backend's CPU
share (to show neither was the bottleneck), the interrupt + softirq time (loopback networking
that no process is charged for) and the CPU time of every other process ("other": the shared
machine's noise, in percent of one CPU), summed per process from /proc/PID/stat. Deriving
"other" from /proc/stat as busy - softirq - ours undercounts it to 0 %: the kernel also charges
much of that softirq time to the processes that were running when it struck.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import backends, loadgen, procfs, procs, udploss, vcpu
from bench.plan import Options, Step
from bench.targets import Running

SLACK = 15.0  # seconds a load generator may overrun its nominal duration before it is killed


@dataclass
class Context:
    """What every run of one pinning mode shares."""

    options: Options  # durations, rates, thresholds
    bins: dict[str, Path]  # compiled helpers: pingpong, udpgen, udpecho
    workdir: Path  # raw files of this pinning mode
    backends: backends.Backends  # running backends
    load_cpu: int | None  # CPU of load generators (None: unpinned)
    repo: Path  # repository root (for python -m bench.idle)


def _snapshot(pids_lb: list[int], pids_be: list[int]) -> dict[str, Any]:
    return {"t": time.monotonic(), "lb": procfs.cpu_ticks_of(pids_lb),
            "be": procfs.cpu_ticks_of(pids_be), "net": procfs.net_counters(),
            "cpus": procfs.cpu_times(), "all": _all_ticks()}


def _ours(ctx: Context, lb_pids: list[int], *more: int) -> set[int]:
    """The benchmark's own processes: the harness, the balancer, every backend, and `more`
    (load generators still alive at the second snapshot; reaped ones are gone from it)."""
    be = [p for kind in ("bulk", "newconn", "udp") for p in ctx.backends.pids_for(kind)]
    return {os.getpid(), *lb_pids, *be, *more}


def _account(rec: dict[str, Any], a: dict[str, Any], b: dict[str, Any],
             loadgen_cpu: float, has_lb: bool, ours: set[int]) -> None:
    wall = b["t"] - a["t"]
    lb = procfs.ticks_to_seconds(b["lb"] - a["lb"])
    be = procfs.ticks_to_seconds(b["be"] - a["be"])
    busy = procfs.busy_percent(a["cpus"], b["cpus"])
    irq = procfs.busy_percent(a["cpus"], b["cpus"], column=2)
    irq_s = sum(irq.values()) / 100.0 * wall
    rec.update({
        "wall_s": round(wall, 3),
        "lb_cpu_s": round(lb, 3) if has_lb else None,
        "lb_cpu_pct": round(100 * lb / wall, 1) if has_lb and wall > 0 else None,
        "backend_cpu_s": round(be, 3),
        "backend_cpu_pct": round(100 * be / wall, 1) if wall > 0 else 0.0,
        "loadgen_cpu_s": round(loadgen_cpu, 3),
        "loadgen_cpu_pct": round(100 * loadgen_cpu / wall, 1) if wall > 0 else 0.0,
        "cpu_busy_pct": busy,
        "softirq_cpu_pct": round(100 * irq_s / wall, 1) if wall > 0 else 0.0,
        # every process that is not the benchmark's, counted per process (see the docstring)
        "other_cpu_pct": _others_pct(a["all"], b["all"], ours, wall),
        "net": procfs.counter_delta(a["net"], b["net"]),
    })


def run_step(ctx: Context, run: Running, step: Step) -> dict[str, Any]:
    """Run one step; returns its record (ok False with an error when it failed)."""
    wl = step.workload
    rec: dict[str, Any] = {"pin": step.pin, "rep": step.rep, "target": step.target,
                           "workload": wl.name, "kind": wl.kind, "ok": False, "error": None,
                           "metrics": {}}
    if wl.kind == "udp" and not run.udp:
        rec["skipped"] = run.udp_note or "no UDP"
        return rec
    dist = vcpu.probe(ctx.bins["pingpong"])
    rec["vcpu_rtt_ns"] = dist.rtt_ns
    rec["close"] = vcpu.is_close(dist.rtt_ns, ctx.options.close_ns)
    try:
        if wl.kind == "idle":
            _idle(ctx, run, step, rec)
        else:
            _traffic(ctx, run, step, rec)
        rec["ok"] = True
    except (RuntimeError, ValueError, OSError) as exc:
        rec["error"] = str(exc)[:2000]
    if run.daemon is not None and not run.daemon.alive():
        rec["ok"] = False
        rec["error"] = (rec["error"] or "") + f" | balancer died: {run.daemon.log_tail()}"
    return rec


def _traffic(ctx: Context, run: Running, step: Step, rec: dict[str, Any]) -> None:
    o, wl = ctx.options, step.workload
    udp_before: list[udploss.UdpSocket] = []
    steal_before: dict[str, int] = {}
    if wl.kind == "bulk":
        argv = loadgen.iperf3_argv(run.front.bulk, o.bulk_seconds, wl.streams)
        nominal = float(o.bulk_seconds)
    elif wl.kind in ("newconn", "keepalive"):
        argv = loadgen.wrk_argv(run.front.http, o.http_seconds, wl.streams,
                                close=wl.kind == "newconn")
        nominal = float(o.http_seconds)
    elif wl.kind == "udp":
        argv = loadgen.udpgen_argv(str(ctx.bins["udpgen"]), run.front.udp, wl.streams, 64,
                                   wl.rate, o.udp_ms)
        nominal = o.udp_ms / 1000
        udp_before = _udp_sockets()
        steal_before = _steal_ticks()
    else:
        raise ValueError(f"unknown workload kind {wl.kind}")
    lb_pids = run.pids()
    be_pids = ctx.backends.pids_for(wl.kind)
    a = _snapshot(lb_pids, be_pids)
    fin = procs.run_bounded(argv, timeout=nominal + SLACK, cpu=ctx.load_cpu,
                            workdir=ctx.workdir)
    b = _snapshot(lb_pids, be_pids)
    udp_after = _udp_sockets() if wl.kind == "udp" else []
    if wl.kind == "udp":
        # time the hypervisor ran something else on our vCPUs (a stall no process sees)
        wall = b["t"] - a["t"]
        rec["steal_pct"] = {cpu: round(100 * procfs.ticks_to_seconds(t - steal_before.get(cpu, 0))
                                       / wall, 1) if wall > 0 else 0.0
                            for cpu, t in _steal_ticks().items()}
    rec["argv"] = fin.argv
    _account(rec, a, b, fin.cpu, has_lb=run.daemon is not None, ours=_ours(ctx, lb_pids))
    if fin.timed_out:
        raise RuntimeError(f"{argv[0]} killed after {nominal + SLACK:.0f}s")
    if fin.returncode != 0 and wl.kind != "bulk":
        raise RuntimeError(f"{argv[0]} exited {fin.returncode}: {fin.stderr.strip()[-500:]}")
    lb_s = rec["lb_cpu_s"]
    m: dict[str, float | None] = {}
    if wl.kind == "bulk":
        out = loadgen.parse_iperf3(fin.stdout)
        rec["raw"] = out
        m["gbps"] = out["gbps"]
        m["lb_ms_per_gb"] = lb_s * 1e3 / (out["bytes"] / 1e9) if lb_s is not None else None
        m["retransmits"] = out["retransmits"]
        m["errors"] = 0.0
    elif wl.kind in ("newconn", "keepalive"):
        out = loadgen.parse_wrk(fin.stdout)
        rec["raw"] = out
        m["krps"] = out["rps"] / 1e3
        m["p99_ms"] = out["p99_ms"]
        m["p50_ms"] = out["p50_ms"]
        m["lb_us_per_unit"] = (lb_s * 1e6 / out["requests"]
                               if lb_s is not None and out["requests"] else None)
        m["errors"] = out["errors"]
        m["retransmits"] = float(rec["net"]["Tcp.RetransSegs"])
        if wl.kind == "newconn" and out["requests"]:
            # backend connections that carried the request in the SYN (the -tfo targets)
            m["tfo_per_conn"] = rec["net"].get("TcpExt.TCPFastOpenActive", 0) / out["requests"]
    else:
        out = loadgen.parse_udpgen(fin.stdout)
        rec["raw"] = out
        m["loss_pct"] = out["loss_pct"]
        m["echo_kpps"] = out["received"] / out["seconds"] / 1e3 if out["seconds"] else 0.0
        m["lb_us_per_unit"] = (lb_s * 1e6 / out["received"]
                               if lb_s is not None and out["received"] else None)
        m["rtt_p99_us"] = out["rtt_p99_us"]
        m["errors"] = out["send_errors"] + out["blocked"]
        m["drops"] = float(rec["net"]["Udp.RcvbufErrors"] + rec["net"]["Udp.InErrors"])
        # where the lost datagrams were lost (bench/udploss.py), and whether udpgen kept pace
        rec["udp_loss"] = udploss.attribute(out, udploss.socket_drops(
            udp_before, udp_after, run.front.udp, ctx.backends.ports.udp))
        m["skipped_pct"] = (100.0 * out.get("skipped", 0.0) / (out["offered"] + out["skipped"])
                            if out["offered"] + out.get("skipped", 0.0) else 0.0)
    m["loadgen_cpu_pct"] = rec["loadgen_cpu_pct"]
    m["backend_cpu_pct"] = rec["backend_cpu_pct"]
    m["other_cpu_pct"] = rec["other_cpu_pct"]
    m["softirq_cpu_pct"] = rec["softirq_cpu_pct"]
    rec["metrics"] = m


def _steal_ticks() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0].startswith("cpu") and parts[0] != "cpu" and len(parts) > 8:
                out[parts[0]] = int(parts[8])
    return out


def _all_ticks() -> dict[int, int]:
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            out[int(name)] = procfs.cpu_ticks(int(name))
    return out


def _others_pct(before: dict[int, int], after: dict[int, int], ours: set[int],
                wall: float) -> float:
    """CPU % of one CPU taken by the processes not in `ours` between two _all_ticks() maps.
    A process born during the run counts in full; one that ended during it is missed."""
    ticks = sum(t - before.get(pid, 0) for pid, t in after.items() if pid not in ours)
    return round(100 * procfs.ticks_to_seconds(ticks) / wall, 1) if wall > 0 else 0.0


def _udp_sockets() -> list[udploss.UdpSocket]:
    out: list[udploss.UdpSocket] = []
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path) as f:
                out += udploss.parse_udp_table(f.read())
        except OSError:
            continue
    return out


_LAST_NUMBER = re.compile(r"(accepted|connected) (\d+)\s*$")


def _progress(log: Path, word: str) -> int:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        m = _LAST_NUMBER.search(line)
        if m and m.group(1) == word:
            return int(m.group(2))
    return 0


def _idle(ctx: Context, run: Running, step: Step, rec: dict[str, Any]) -> None:
    n = step.workload.count
    py = sys.executable
    back_port = ctx.backends.ports.idle
    tag = f"{step.pin}-{step.rep}-{step.target}"
    sink_log = ctx.workdir / f"idle-sink-{tag}.log"
    hold_log = ctx.workdir / f"idle-hold-{tag}.log"
    sink = procs.start("idle-sink", [py, "-m", "bench.idle", "sink", str(back_port), str(n)],
                       sink_log, cpu=ctx.load_cpu, cwd=str(ctx.repo), stdin_pipe=True)
    hold: procs.Daemon | None = None
    try:
        procs.wait_ready(sink, tcp_ports=[back_port])
        time.sleep(0.2)  # let the balancer settle after its start
        lb_pids = run.pids()
        rss0 = procfs.rss_kb_of(lb_pids)
        a = _snapshot(lb_pids, [])
        hold = procs.start("idle-hold", [py, "-m", "bench.idle", "hold", str(run.front.idle),
                                         str(n)],
                           hold_log, cpu=ctx.load_cpu, cwd=str(ctx.repo), stdin_pipe=True)
        deadline = time.monotonic() + 30.0
        while True:
            got_sink, got_hold = _progress(sink_log, "accepted"), _progress(hold_log, "connected")
            if got_sink >= n and got_hold >= n:
                break
            if not hold.alive():
                raise RuntimeError(f"idle client exited: {hold.log_tail(3)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"idle: only {got_hold} connected, {got_sink} reached the "
                                   f"backend after 30s")
            time.sleep(0.05)
        time.sleep(0.3)  # the balancer finishes its bookkeeping for the last connections
        lb_pids = run.pids()
        rss1 = procfs.rss_kb_of(lb_pids)
        b = _snapshot(lb_pids, [])
        ours = _ours(ctx, lb_pids, sink.pid, hold.pid)
        loadgen_cpu = procfs.ticks_to_seconds(procfs.cpu_ticks(hold.pid) +
                                              procfs.cpu_ticks(sink.pid))
    finally:
        if hold is not None:
            procs.stop(hold)
        procs.stop(sink)
        time.sleep(0.3)  # the balancer closes its side before the next workload is timed
    _account(rec, a, b, loadgen_cpu, has_lb=run.daemon is not None, ours=ours)
    rec["raw"] = {"rss_before_kb": rss0, "rss_after_kb": rss1, "held": n}
    lb_s = rec["lb_cpu_s"]
    rec["metrics"] = {
        "kb_per_conn": (rss1 - rss0) / n,
        "lb_us_per_unit": lb_s * 1e6 / n if lb_s is not None else None,
        "rss_after_mb": rss1 / 1024,
        "errors": 0.0,
        "retransmits": float(rec["net"]["Tcp.RetransSegs"]),
        "loadgen_cpu_pct": rec["loadgen_cpu_pct"],
        "other_cpu_pct": rec["other_cpu_pct"],
    }
