"""Measure a kernel-side (SOCKMAP) relay: keep-alive CPU against l4lb and nginx, and backpressure.

An experiment behind one sentence of docs/performance.md: the one lever left for keep-alive CPU
is not waking the balancer for each message, with a SOCKMAP verdict program that redirects the
bytes between the two sockets of a session (bench/csrc/sockmaprelay.c). The kernel sends a
redirected skb from a kworker, whose CPU is not the balancer process's, so /proc/PID/stat of
the relay says almost nothing. This script therefore measures the whole machine's busy time per
request (/proc/stat, every CPU, irq and softirq included) next to each balancer process's own
CPU, and subtracts what `direct` (wrk straight to the backend) costs in the same run: the
difference is what putting a balancer in the path adds, wherever the kernel does the work.

Layout as in bench/run.py's pinned mode: the nginx HTTP backend and wrk on CPU 0, the balancer
on CPU 1. All targets run at once on their own ports (idle ones cost nothing) and the runs are
interleaved (direct, l4lb, nginx, sockmap, direct, ...) so that a slow phase of the host hits
every target. Traffic stays on loopback.

`--backpressure` checks instead what the relay holds when the backend reads nothing: one
client sends as fast as the kernel takes its bytes, for at most --seconds and at most
--cap-mb, and the script prints how much the client could send, how far MemAvailable fell,
and whether the backend then reads every byte. A relay with flow control stops the client
after a few socket buffers (a few MB).

    python -m bench.sockmap_experiment --reps 5 --seconds 5
    python -m bench.sockmap_experiment --backpressure --seconds 4 --cap-mb 2000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import backends, loadgen, native, peers, procfs, procs, targets

HERE = Path(__file__).resolve().parent
TARGETS = ("direct", "l4lb", "nginx", "sockmap")
BACK = peers.Ports(bulk=8521, http=8522, idle=8523, udp=8524)
FRONT = {"l4lb": peers.Ports(bulk=8531, http=8532, idle=8533, udp=8534),
         "nginx": peers.Ports(bulk=8541, http=8542, idle=8543, udp=8544),
         "sockmap": peers.Ports(bulk=8551, http=8552, idle=8553, udp=8554)}
LB_CPU, LOAD_CPU = 1, 0


def _start_sockmap(rundir: Path) -> procs.Daemon:
    binary = native.build("sockmaprelay")
    d = procs.start("sockmaprelay", [str(binary), str(FRONT["sockmap"].http), str(BACK.http)],
                    rundir / "sockmaprelay.log", cpu=LB_CPU)
    procs.wait_ready(d, tcp_ports=[FRONT["sockmap"].http], timeout=10.0)
    return d


def _busy_ticks() -> tuple[int, int]:
    """(busy, irq + softirq) ticks of the whole machine."""
    snap = procfs.cpu_times().values()
    return sum(s[0] for s in snap), sum(s[2] for s in snap)


def _kernel_thread_ticks() -> dict[int, int]:
    """CPU ticks of every kworker and ksoftirqd thread, by PID: the kernel's redirected sends,
    and softirq work deferred out of the processes' own system calls."""
    out: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().startswith(("kworker", "ksoftirqd")):
                out[int(entry.name)] = procfs.cpu_ticks(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return out


def _one(port: int, pids: list[int], backend: list[int], seconds: int, connections: int,
         workdir: Path) -> dict[str, float]:
    """One wrk run. `accounted` sums the CPU of what serves the requests: wrk, backend,
    balancer, kworkers and ksoftirqd, so other processes on the host do not count. This
    kernel accounts time by ticks without IRQ_TIME_ACCOUNTING: softirq work done at the end
    of a system call is part of that process's time, and only softirq on an idle CPU is
    missing. `machine` is every CPU's busy time, which is the fairer figure on a quiet host."""
    lb0, be0, (m0, irq0), kw0 = (procfs.cpu_ticks_of(pids), procfs.cpu_ticks_of(backend),
                                  _busy_ticks(), _kernel_thread_ticks())
    fin = procs.run_bounded(loadgen.wrk_argv(port, seconds, connections, close=False),
                            timeout=seconds + 20, cpu=LOAD_CPU, workdir=workdir)
    lb1, be1, (m1, irq1), kw1 = (procfs.cpu_ticks_of(pids), procfs.cpu_ticks_of(backend),
                                  _busy_ticks(), _kernel_thread_ticks())
    kw = sum(t - kw0.get(pid, 0) for pid, t in kw1.items())
    if fin.returncode != 0 or fin.timed_out:
        raise RuntimeError(f"wrk on port {port} failed: {fin.stderr[-300:]}")
    w = loadgen.parse_wrk(fin.stdout)
    n = max(w["requests"], 1.0)

    def per_req(ticks: int) -> float:
        return procfs.ticks_to_seconds(ticks) * 1e6 / n

    accounted = per_req(lb1 - lb0 + be1 - be0 + kw) + fin.cpu * 1e6 / n
    return {"requests": w["requests"], "rps": w["rps"], "errors": w["errors"],
            "p99_ms": w["p99_ms"], "lb_us": per_req(lb1 - lb0), "kworker_us": per_req(kw),
            "irq_us": per_req(irq1 - irq0), "accounted_us": accounted,
            "machine_us": per_req(m1 - m0)}


def _mem_available_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def backpressure(seconds: float, cap_mb: int) -> dict[str, float]:
    """Send to the SOCKMAP relay while the backend reads nothing; then read it all back."""
    back = socket.socket()
    back.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    back.bind(("127.0.0.1", BACK.idle))
    back.listen(8)
    binary = native.build("sockmaprelay")
    rundir = Path("/tmp") / f"l4lb-sockmap-bp-{os.getpid()}"
    rundir.mkdir(parents=True, exist_ok=True)
    relay = procs.start("sockmaprelay", [str(binary), str(FRONT["sockmap"].idle),
                                         str(BACK.idle)], rundir / "sockmaprelay.log")
    try:
        procs.wait_ready(relay, tcp_ports=[FRONT["sockmap"].idle], timeout=10.0)
        client = socket.create_connection(("127.0.0.1", FRONT["sockmap"].idle), timeout=5)
        client.setblocking(False)
        server, _ = back.accept()
        avail0, sent, chunk = _mem_available_kib(), 0, b"x" * 65536
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds and sent < cap_mb * 1_000_000:
            try:
                sent += client.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
        held_mib = (avail0 - _mem_available_kib()) / 1024
        server.settimeout(5)
        got = 0
        while got < sent:
            data = server.recv(1 << 20)
            if not data:
                break
            got += len(data)
        client.close()
        server.close()
    finally:
        procs.stop(relay)
        back.close()
    return {"sent_mb": sent / 1e6, "mem_available_fell_mib": held_mib,
            "backend_read_mb": got / 1e6, "seconds": seconds}


def _med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def report(runs: dict[str, list[dict[str, float]]]) -> str:
    """A Markdown table: per target the medians (min-max) and the cost added over direct."""
    direct = _med(runs["direct"], "accounted_us") if runs.get("direct") else 0.0
    lines = ["| target | requests/s | balancer process µs/req | kworkers, ksoftirqd µs/req "
             "| irq+softirq µs/req | accounted µs/req | added over direct µs/req "
             "| machine µs/req | p99 ms | errors |", "|---|---|---|---|---|---|---|---|---|---|"]
    for t, rows in runs.items():
        if not rows:
            continue
        acc = [r["accounted_us"] for r in rows]
        lines.append(
            f"| {t} | {_med(rows, 'rps'):,.0f} | {_med(rows, 'lb_us'):.2f} | "
            f"{_med(rows, 'kworker_us'):.2f} | {_med(rows, 'irq_us'):.2f} | "
            f"{statistics.median(acc):.2f} ({min(acc):.2f}-{max(acc):.2f}) | "
            f"{statistics.median(acc) - direct:.2f} | {_med(rows, 'machine_us'):.2f} | "
            f"{_med(rows, 'p99_ms'):.2f} | {sum(r['errors'] for r in rows):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--backpressure", action="store_true",
                    help="check flow control instead (a backend that reads nothing)")
    ap.add_argument("--cap-mb", type=int, default=2000,
                    help="--backpressure: stop sending after this many MB")
    a = ap.parse_args(argv)
    if a.backpressure:
        r = backpressure(float(a.seconds), a.cap_mb)
        print(f"client sent {r['sent_mb']:,.0f} MB in at most {a.seconds} s while the backend "
              f"read nothing; MemAvailable fell by {r['mem_available_fell_mib']:,.0f} MiB; the "
              f"backend then read {r['backend_read_mb']:,.0f} MB")
        return 0
    wanted = [t for t in a.targets.split(",") if t]
    for t in wanted:
        if t not in TARGETS:
            ap.error(f"--targets: unknown target {t!r} (known: {', '.join(TARGETS)})")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    rundir = Path("/tmp") / f"l4lb-sockmap-{stamp}"
    be = backends.start(BACK, rundir / "backends", cpu=LOAD_CPU, udpecho=None)
    started: dict[str, targets.Running] = {}
    daemons: list[procs.Daemon] = []
    pids: dict[str, list[int]] = {"direct": []}
    ports = {"direct": BACK.http, **{t: FRONT[t].http for t in FRONT}}
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in wanted}
    try:
        setup = targets.detect_l4lb(HERE.parent, rundir)
        for t in wanted:
            if t in ("l4lb", "nginx"):
                started[t] = targets.start(t, FRONT[t], BACK, rundir / t, LB_CPU, setup)
                pids[t] = started[t].pids()
            elif t == "sockmap":
                d = _start_sockmap(rundir)
                daemons.append(d)
                pids[t] = d.tree()
        for rep in range(a.reps):
            for t in wanted:
                r = _one(ports[t], pids[t], be.http.tree(), a.seconds, a.connections, rundir)
                runs[t].append(r)
                print(f"rep {rep + 1} {t}: {r['rps']:,.0f} req/s, balancer "
                      f"{r['lb_us']:.2f}, kworkers {r['kworker_us']:.2f}, accounted "
                      f"{r['accounted_us']:.2f} µs/req",
                      file=sys.stderr, flush=True)
    finally:
        for run in started.values():
            targets.stop(run)
        for d in daemons:
            procs.stop(d)
        be.stop()
    table = report(runs)
    print(table)
    a.out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"stamp": stamp, "reps": a.reps, "seconds": a.seconds,
                           "connections": a.connections, "runs": runs}
    (a.out / f"sockmap-keepalive-{stamp}.json").write_text(json.dumps(doc, indent=1))
    (a.out / f"sockmap-keepalive-{stamp}.md").write_text(
        f"# Keep-alive through a SOCKMAP relay ({stamp})\n\n"
        f"`python -m bench.sockmap_experiment --reps {a.reps} --seconds {a.seconds}`, "
        f"{a.connections} connections, backend and wrk on CPU {LOAD_CPU}, balancer on CPU "
        f"{LB_CPU}.\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
