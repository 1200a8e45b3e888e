"""Measure whether forwarding pauses while forwarding tables are published, under steady traffic.

PERF.md's target is "forwarding-table rebuild + publish, 1,000 backends, 65,537 slots: < 20 ms,
forwarding never pauses"; bench/tablebench.py times the rebuild with no traffic, this script
measures the second half. It is a reproducible script, not a test, and not part of bench/run.py.
It holds `flock /tmp/l4lb-bench.lock` while it makes load.

    python -m bench.publishbench                 # about 40 s; prints Markdown, --json for JSON
    python -m bench.publishbench --dry-run       # print the plan only: nothing starts

What runs (all on loopback, every process started here is stopped by its PID):

- backend process (CPU --load-cpu): one selectors loop that listens on 1,000 ports
  127.0.0.1:BASE..BASE+999 and echoes every byte back, so every backend of the service is real.
- this process (CPU --lb-cpu): the compiled data plane with one worker, one TCP Maglev service
  (65,537 slots) on 127.0.0.1:--listen-port with those 1,000 backends, and the publisher (the main
  thread, on the same CPU as the worker, as in the daemon).
- load process (CPU --load-cpu): a fixed-rate generator. --ka-rate requests/s over --ka-conns
  persistent connections, and --new-rate requests/s that each open a new connection, send one
  request, read the echo and close. Each request is due at a fixed time; its latency runs from
  that time (not from when it was sent) to the last byte of the echo, so a stall delays every
  request due during it and cannot hide (no coordinated omission). Every completion, failure
  (refused, reset, early EOF, 2 s timeout) and its timestamps (CLOCK_MONOTONIC, shared by the
  processes) is recorded.

The timeline of one run has these phases, in order, each --phase-seconds long (c, d, s shorter):
  a   no publishes (the baseline)
  b   one rebuild + publish every 100 ms; the weights alternate between the configured ones and
      every 10th backend at 0, so the Maglev ring really changes (about 10 % of slots move)
  c   back-to-back publishes of two prebuilt blobs (the same two tables), for --burst-seconds:
      the most publishes the data plane can take, each one waking the worker
  d   back-to-back rebuild + publish, for --burst-seconds (the publisher's CPU competes with the
      worker's, which shares its CPU)
  s   control: the publisher thread spins on its CPU for --burst-seconds without publishing, so
      c and d can be told apart from plain CPU sharing between the publisher and the worker
  a2  no publishes again (shows drift over the run)
The publisher shares the worker's CPU by default (--publisher-cpu moves it; --publisher-sched
idle runs it under SCHED_IDLE, so the worker always preempts it; --publisher-nice N renices it).
For every phase it reports requests/s, latency p50/p99/p99.9/max by kind, the longest gap between
two completed requests (any kind), failures, and the build and publish durations, then the ratios
of b, c, d to a. The load generator is Python: its own timing noise (tens to hundreds of µs,
more when the garbage collector or another process takes its CPU) is in phase a as well.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import itertools
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

LOCK_PATH = "/tmp/l4lb-bench.lock"
REQ_BYTES = 64  # request size; the echo has the same size
REQ_TIMEOUT = 2.0  # seconds before a request counts as failed ("timeout")
START_SLACK = 1.0  # seconds between spawning the load process and its first due request
DRAIN_SECONDS = 3.0  # how long the load process waits for outstanding requests after the end
REC = struct.Struct("<BBddd")  # kind (0 ka, 1 new), ok (1) or failure code, due, sent, done
FAIL_NAMES = {2: "refused", 3: "reset", 4: "eof", 5: "timeout", 6: "other"}


@dataclass(frozen=True)
class Phase:
    """One phase of the timeline."""

    name: str  # a, b, c, d, s, a2
    seconds: float  # its length
    mode: str  # idle | periodic | burst_prebuilt | burst_rebuild | spin
    what: str  # one line for the report


@dataclass
class Plan:
    """Everything a run does, from the arguments (pure)."""

    backends: int
    slots: int
    ka_rate: float
    ka_conns: int
    new_rate: float
    period_ms: float
    phases: list[Phase] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """The length of the timeline."""
        return sum(p.seconds for p in self.phases)


def make_plan(args: argparse.Namespace) -> Plan:
    """The phases and rates; raises ValueError on arguments that cannot make a sane run."""
    if args.backends < 1 or args.backends > 4000:
        raise ValueError("--backends must be 1..4000")
    if args.ka_rate < 0 or args.new_rate < 0 or args.ka_rate + args.new_rate <= 0:
        raise ValueError("--ka-rate and --new-rate must be >= 0 and not both 0")
    if args.ka_rate > 0 and args.ka_conns < 1:
        raise ValueError("--ka-conns must be >= 1 when --ka-rate > 0")
    if args.phase_seconds <= 0 or args.burst_seconds <= 0 or args.period_ms <= 0:
        raise ValueError("--phase-seconds, --burst-seconds and --period-ms must be > 0")
    ps, bs = float(args.phase_seconds), float(args.burst_seconds)
    phases = [
        Phase("a", ps, "idle", "no publishes"),
        Phase("b", ps, "periodic", f"rebuild + publish every {args.period_ms:g} ms"),
        Phase("c", bs, "burst_prebuilt", "back-to-back publishes of 2 prebuilt blobs"),
        Phase("d", bs, "burst_rebuild", "back-to-back rebuild + publish"),
        Phase("s", bs, "spin", "control: the publisher thread spins, no publish"),
        Phase("a2", ps, "idle", "no publishes (again)"),
    ]
    wanted = [p for p in args.phases.split(",") if p]
    unknown = set(wanted) - {p.name for p in phases}
    if unknown or "a" not in wanted:
        raise ValueError(f"--phases: unknown {sorted(unknown)} or no baseline 'a'")
    plan = Plan(backends=args.backends, slots=args.slots, ka_rate=args.ka_rate,
                ka_conns=args.ka_conns, new_rate=args.new_rate, period_ms=args.period_ms,
                phases=[p for p in phases if p.name in wanted])
    if plan.seconds > 110:
        raise ValueError(f"the timeline is {plan.seconds:g} s; keep it under 110 s")
    return plan


def _pin(cpu: int) -> None:
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})


# ---------------------------------------------------------------------------------------------
# backend process: echo on many ports

def backend_main(base: int, count: int, cpu: int, seconds: float) -> int:
    """Echo every byte on 127.0.0.1:base..base+count-1 until killed or `seconds` pass."""
    _pin(cpu)
    sel = selectors.DefaultSelector()
    listeners: list[socket.socket] = []
    for port in range(base, base + count):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", port))
        ls.listen(1024)
        ls.setblocking(False)
        sel.register(ls, selectors.EVENT_READ, None)
        listeners.append(ls)
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, _ in sel.select(0.5):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if key.data is None:
                for _i in range(64):
                    try:
                        c, _a = s.accept()
                    except (BlockingIOError, ConnectionAbortedError):
                        break
                    c.setblocking(False)
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sel.register(c, selectors.EVENT_READ, 1)
                continue
            try:
                data = s.recv(65536)
                if data:
                    s.send(data)  # tiny echoes on loopback: the buffer has room
                    continue
            except OSError:
                pass
            sel.unregister(s)
            s.close()
    return 0


# ---------------------------------------------------------------------------------------------
# load process: fixed-rate requests, every one recorded

class _Conn:
    """One client connection (persistent or one-shot) and the request it carries."""

    __slots__ = ("due", "got", "kind", "sent", "sock", "state")

    def __init__(self, sock: socket.socket, kind: int) -> None:
        self.sock = sock  # the nonblocking client socket
        self.kind = kind  # 0 persistent, 1 new connection per request
        self.state = "connecting"  # connecting | idle | busy
        self.due = 0.0  # when the current request was due (monotonic)
        self.sent = 0.0  # when it was written
        self.got = 0  # echo bytes received so far


def _fail_code(exc: BaseException) -> int:
    if isinstance(exc, ConnectionRefusedError):
        return 2
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return 3
    return 6


def load_main(port: int, cpu: int, t0: float, seconds: float, ka_rate: float, ka_conns: int,
              new_rate: float, out_path: str) -> int:
    """Drive the service from t0 for `seconds`, then write every record to out_path."""
    _pin(cpu)
    addr = ("127.0.0.1", port)
    payload = b"x" * REQ_BYTES
    sel = selectors.DefaultSelector()
    recs: list[bytes] = []
    idle: list[_Conn] = []
    busy: set[_Conn] = set()
    backlog: list[float] = []  # due times of persistent requests waiting for an idle conn

    def record(c: _Conn, code: int, now: float) -> None:
        recs.append(REC.pack(c.kind, code, c.due, c.sent, now))

    def close(c: _Conn) -> None:
        busy.discard(c)
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(c.sock)
        c.sock.close()

    def new_sock() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rc = s.connect_ex(addr)
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            raise OSError(rc, os.strerror(rc))
        return s

    def send(c: _Conn, due: float, now: float) -> None:
        c.due, c.sent, c.got, c.state = due, now, 0, "busy"
        busy.add(c)
        try:
            c.sock.send(payload)
        except OSError as exc:
            record(c, _fail_code(exc), now)
            close(c)
            return
        sel.modify(c.sock, selectors.EVENT_READ, c)

    # persistent connections, opened before t0
    for _i in range(ka_conns if ka_rate > 0 else 0):
        s = socket.create_connection(addr, timeout=2.0)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = _Conn(s, 0)
        c.state = "idle"
        sel.register(s, selectors.EVENT_READ, c)
        idle.append(c)

    end = t0 + seconds
    ka_i = new_i = 0
    ka_next = t0 if ka_rate > 0 else float("inf")
    new_next = t0 if new_rate > 0 else float("inf")
    hard_end = end + DRAIN_SECONDS
    while True:
        now = time.monotonic()
        if now >= hard_end or (now >= end and not busy and not backlog):
            break
        # issue what is due
        while ka_next <= now and ka_next < end:
            backlog.append(ka_next)
            ka_i += 1
            ka_next = t0 + ka_i / ka_rate
        while backlog and idle:
            c = idle.pop()
            send(c, backlog.pop(0), now)
        while new_next <= now and new_next < end:
            due = new_next
            new_i += 1
            new_next = t0 + new_i / new_rate
            try:
                s = new_sock()
            except OSError as exc:
                recs.append(REC.pack(1, _fail_code(exc), due, now, now))
                continue
            c = _Conn(s, 1)
            c.due, c.sent = due, now
            busy.add(c)
            sel.register(s, selectors.EVENT_WRITE, c)
        nxt = min(ka_next, new_next, end if busy or backlog else hard_end)
        timeout = max(0.0, min(nxt - time.monotonic(), 0.05))
        for key, _ev in sel.select(timeout):
            c = key.data
            now = time.monotonic()
            if c.state == "connecting":
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    record(c, 2 if err == errno.ECONNREFUSED else
                           3 if err == errno.ECONNRESET else 6, now)
                    close(c)
                    continue
                send(c, c.due, c.sent)
                continue
            try:
                data = c.sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                record(c, _fail_code(exc), now)
                close(c)
                continue
            if not data:
                if c.state == "busy":
                    record(c, 4, now)
                if c in idle:
                    idle.remove(c)
                close(c)  # a persistent connection closed by the far end is not reopened
                continue
            c.got += len(data)
            if c.got >= REQ_BYTES and c.state == "busy":
                record(c, 1, now)
                if c.kind == 1:
                    close(c)
                else:
                    busy.discard(c)
                    c.state = "idle"
                    idle.append(c)
                    if backlog:
                        send(c, backlog.pop(0), now)
        # time out stuck requests
        now = time.monotonic()
        for c in [c for c in busy if now - c.due > REQ_TIMEOUT]:
            record(c, 5, now)
            close(c)
    now = time.monotonic()
    for due in backlog:  # never sent: every connection was stuck or gone
        recs.append(REC.pack(0, 5, due, now, now))
    for c in list(busy):
        record(c, 5, now)
        close(c)
    for c in idle:
        close(c)
    with open(out_path, "wb") as f:
        f.write(b"".join(recs))
    return 0


# ---------------------------------------------------------------------------------------------
# the coordinator: data plane, publisher, phases, report

def _config(n: int, slots: int, listen_port: int, base: int) -> Any:
    from l4lb.config.model import Backend, Config, Endpoint, GlobalSettings, Service

    backends = []
    for i in range(n):
        ep = Endpoint(host="127.0.0.1", port=base + i, text=f"127.0.0.1:{base + i}")
        backends.append(Backend(address=ep, name=ep.text))
    svc = Service(name="svc", protocol="tcp",
                  listen=(Endpoint(host="127.0.0.1", port=listen_port,
                                   text=f"127.0.0.1:{listen_port}"),),
                  backends=tuple(backends), scheduler="maglev", maglev_table_size=slots)
    return Config(path="<publishbench>", global_=GlobalSettings(workers=1), services=(svc,))


def weights_for(cfg: Any, flip: bool) -> dict[tuple[str, str], int]:
    """The alternate weight set: every 10th backend at 0 (when flip), else none overridden."""
    if not flip:
        return {}
    return {("svc", b.address.text): 0 for i, b in enumerate(cfg.services[0].backends)
            if i % 10 == 0}


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))
    return xs[k]


def _dist(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {"n": len(s), "p50": _pct(s, 0.5), "p99": _pct(s, 0.99), "p999": _pct(s, 0.999),
            "max": s[-1] if s else float("nan")}


def summarize(records: list[tuple[int, int, float, float, float]],
              windows: list[tuple[str, float, float]],
              publishes: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    """Per-phase figures from the raw records (pure). Latencies in ms; a record belongs to the
    phase its due time falls in; gaps are between completions that fall in the phase."""
    out: dict[str, Any] = {}
    for name, start, end in windows:
        rows = [r for r in records if start <= r[2] < end]
        done = sorted(r[4] for r in records if r[1] == 1 and start <= r[4] < end)
        gaps = [b - a for a, b in itertools.pairwise(done)]
        if done:
            gaps += [done[0] - start, end - done[-1]]
        ph: dict[str, Any] = {"seconds": end - start, "requests": len(rows)}
        for kind, label in ((0, "ka"), (1, "new")):
            ok = [(r[4] - r[2]) * 1e3 for r in rows if r[0] == kind and r[1] == 1]
            ph[label] = {"ok": len(ok), "per_s": len(ok) / (end - start), **_dist(ok)}
        fails: dict[str, int] = {}
        for r in rows:
            if r[1] != 1:
                fails[FAIL_NAMES.get(r[1], "other")] = fails.get(FAIL_NAMES.get(r[1], "other"),
                                                                 0) + 1
        ph["failures"] = fails
        ph["failed"] = sum(fails.values())
        ph["ok_per_s"] = (ph["ka"]["ok"] + ph["new"]["ok"]) / (end - start)
        ph["max_gap_ms"] = max(gaps) * 1e3 if gaps else float("nan")
        ph["all"] = _dist([(r[4] - r[2]) * 1e3 for r in rows if r[1] == 1])
        pubs = publishes.get(name, [])
        ph["publishes"] = len(pubs)
        if pubs:
            ph["build_ms"] = _dist([b * 1e3 for b, _p in pubs if b > 0] or [0.0])
            ph["publish_ms"] = _dist([p * 1e3 for _b, p in pubs])
        out[name] = ph
    return out


def ratios(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each phase's figures over phase a's (pure)."""
    base = summary["a"]
    out: dict[str, dict[str, float]] = {}

    def r(x: float, y: float) -> float:
        return x / y if y else float("nan")

    for name, ph in summary.items():
        if name == "a":
            continue
        out[name] = {"ok_per_s": r(ph["ok_per_s"], base["ok_per_s"]),
                     "p50": r(ph["all"]["p50"], base["all"]["p50"]),
                     "p99": r(ph["all"]["p99"], base["all"]["p99"]),
                     "p999": r(ph["all"]["p999"], base["all"]["p999"]),
                     "max": r(ph["all"]["max"], base["all"]["max"]),
                     "max_gap": r(ph["max_gap_ms"], base["max_gap_ms"])}
    return out


def _worker_ns(tids: list[int]) -> int:
    """CPU time (ns) of the data plane's worker threads, from schedstat."""
    ns = 0
    for t in tids:
        with open(f"/proc/self/task/{t}/schedstat") as f:
            ns += int(f.read().split()[0])
    return ns


def _spawn(argv: list[str]) -> subprocess.Popen[str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.Popen([sys.executable, "-m", "bench.publishbench", *argv], cwd=root,
                            stdout=subprocess.PIPE, text=True)


def _stop(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.terminate()  # by PID
        try:
            p.wait(3.0)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(3.0)


def run(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    """Start everything, run the timeline, stop everything; return the figures."""
    from l4lb.dataplane import load_dataplane_class, reference_requested
    from l4lb.table.builder import TableBuilder

    out_path = f"/tmp/publishbench-{os.getpid()}.bin"
    procs: list[subprocess.Popen[str]] = []
    dp: Any = None
    ls: socket.socket | None = None
    try:
        be = _spawn(["--role", "backend", "--backend-base", str(args.backend_base),
                     "--backends", str(plan.backends), "--cpu", str(args.load_cpu),
                     "--seconds", str(plan.seconds + 60)])
        procs.append(be)
        assert be.stdout is not None
        if be.stdout.readline().strip() != "ready":
            raise RuntimeError("the backend process did not start")
        _pin(args.lb_cpu)  # the worker thread inherits it; the publisher is this thread
        cfg = _config(plan.backends, plan.slots, args.listen_port, args.backend_base)
        builder = TableBuilder()
        blobs = [builder.build(cfg, weights_for(cfg, False)),
                 builder.build(cfg, weights_for(cfg, True))]
        sid = builder.service_ids()["svc"]
        dp = load_dataplane_class()(1)
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", args.listen_port))
        ls.listen(4096)
        ls.setblocking(False)
        before = {int(t) for t in os.listdir("/proc/self/task")}
        dp.start()
        tids = sorted({int(t) for t in os.listdir("/proc/self/task")} - before)
        _pin(args.lb_cpu if args.publisher_cpu < 0 else args.publisher_cpu)  # this thread only
        if args.publisher_sched == "idle":  # this thread only (pid 0 = the calling thread)
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        if args.publisher_nice:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), args.publisher_nice)
        dp.publish(blobs[0])
        dp.add_listener(sid, ls.fileno(), 0)
        st0 = dp.stats()
        t0 = time.monotonic() + START_SLACK + 0.05 * plan.ka_conns
        lg = _spawn(["--role", "load", "--listen-port", str(args.listen_port),
                     "--cpu", str(args.load_cpu), "--t0", repr(t0),
                     "--seconds", str(plan.seconds), "--ka-rate", str(plan.ka_rate),
                     "--ka-conns", str(plan.ka_conns), "--new-rate", str(plan.new_rate),
                     "--out", out_path])
        procs.append(lg)
        while time.monotonic() < t0:
            time.sleep(min(0.05, max(0.0, t0 - time.monotonic())))
        windows: list[tuple[str, float, float]] = []
        publishes: dict[str, list[tuple[float, float]]] = {}
        flip = False
        start = t0
        worker: dict[str, dict[str, float]] = {}
        for ph in plan.phases:
            end = start + ph.seconds
            ns0, it0 = _worker_ns(tids), dp._internals()["loop_iterations"]
            pubs: list[tuple[float, float]] = publishes.setdefault(ph.name, [])
            nxt = start
            while True:
                now = time.monotonic()
                if now >= end:
                    break
                if ph.mode == "idle":
                    time.sleep(min(0.05, end - now))
                    continue
                if ph.mode == "spin":
                    while time.monotonic() < end:
                        pass
                    continue
                if ph.mode == "periodic" and now < nxt:
                    time.sleep(min(nxt - now, end - now))
                    continue
                flip = not flip
                if ph.mode == "burst_prebuilt":
                    ta = time.perf_counter()
                    dp.publish(blobs[int(flip)])
                    pubs.append((0.0, time.perf_counter() - ta))
                else:
                    ta = time.perf_counter()
                    blob = builder.build(cfg, weights_for(cfg, flip))
                    tb = time.perf_counter()
                    dp.publish(blob)
                    pubs.append((tb - ta, time.perf_counter() - tb))
                nxt += plan.period_ms / 1e3
            windows.append((ph.name, start, end))
            ns1, it1 = _worker_ns(tids), dp._internals()["loop_iterations"]
            worker[ph.name] = {"cpu_pct": 100 * (ns1 - ns0) / 1e9 / ph.seconds,
                               "loops_per_s": (it1 - it0) / ph.seconds}
            start = end
        try:
            lg.wait(DRAIN_SECONDS + 10.0)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError("the load process did not finish") from exc
        if lg.returncode != 0:
            raise RuntimeError(f"the load process failed with {lg.returncode}")
        st1 = dp.stats()
        with open(out_path, "rb") as f:
            raw = f.read()
        records = [REC.unpack_from(raw, i) for i in range(0, len(raw), REC.size)]
        summary = summarize(records, windows, publishes)
        for name, w in worker.items():
            summary[name]["worker"] = w
        s0, s1 = st0["services"].get(sid, {}), st1["services"].get(sid, {})
        b_fail = sum(v.get("connect_failures", 0) for v in st1["backends"].values()) - sum(
            v.get("connect_failures", 0) for v in st0["backends"].values())
        return {
            "plan": {**asdict(plan), "seconds": plan.seconds},
            "dataplane": "reference" if reference_requested() else "compiled",
            "generation": dp.generation,
            "cpus": {"worker": args.lb_cpu, "load_and_backends": args.load_cpu,
                     "publisher": args.lb_cpu if args.publisher_cpu < 0 else args.publisher_cpu},
            "publisher_sched": args.publisher_sched
                               + (f", nice {args.publisher_nice}" if args.publisher_nice else ""),
            "lb_counters": {k: s1.get(k, 0) - s0.get(k, 0)
                            for k in ("conns_total", "no_backend", "rejected", "accept_errors")}
                           | {"backend_connect_failures": b_fail},
            "phases": summary,
            "ratios": ratios(summary),
        }
    finally:
        if dp is not None:
            dp.stop(1.0)
        if ls is not None:
            ls.close()
        for p in reversed(procs):
            _stop(p)
        if os.path.exists(out_path):
            os.unlink(out_path)


def _f(x: float, nd: int = 2) -> str:
    return "n/a" if x != x else f"{x:.{nd}f}"


def markdown(res: dict[str, Any], plan: Plan) -> str:
    """The result as Markdown tables."""
    cpus = res["cpus"]
    lines = [f"CPUs: worker {cpus['worker']}, publisher {cpus['publisher']} "
             f"({res['publisher_sched']} scheduling), load generator "
             f"and backends {cpus['load_and_backends']}. "
             f"Data plane: {res['dataplane']}, 1 worker, maglev {plan.slots} slots, "
             f"{plan.backends} backends (all real echo listeners). Load: {plan.ka_rate:g} req/s "
             f"over {plan.ka_conns} persistent connections + {plan.new_rate:g} new connections/s "
             f"(one {REQ_BYTES}-byte request each). Latency from the due time, in ms. "
             f"Final table generation {res['generation']}. LB counters over the run: "
             f"{json.dumps(res['lb_counters'])}.", "",
             "| phase | what | ok req/s | ka p50 / p99 / p99.9 / max | "
             "new p50 / p99 / p99.9 / max | longest gap | failed | publishes | "
             "build ms p50 / max | publish ms p50 / p99 / max | worker CPU % | loops/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    whats = {p.name: p.what for p in plan.phases}
    nan = float("nan")
    for name, ph in res["phases"].items():
        ka, nw = ph["ka"], ph["new"]
        b = ph.get("build_ms")
        p = ph.get("publish_ms")
        w = ph.get("worker", {})
        fails = ", ".join(f"{k} {v}" for k, v in sorted(ph["failures"].items())) or "0"
        lines.append(
            f"| {name} | {whats[name]} | {ph['ok_per_s']:.0f} | "
            f"{_f(ka['p50'])} / {_f(ka['p99'])} / {_f(ka['p999'])} / {_f(ka['max'])} | "
            f"{_f(nw['p50'])} / {_f(nw['p99'])} / {_f(nw['p999'])} / {_f(nw['max'])} | "
            f"{_f(ph['max_gap_ms'])} | {fails} | {ph['publishes']} | "
            + (f"{_f(b['p50'])} / {_f(b['max'])}" if b and b['max'] > 0 else "-") + " | "
            + (f"{_f(p['p50'], 3)} / {_f(p['p99'], 3)} / {_f(p['max'], 3)}" if p else "-")
            + f" | {_f(w.get('cpu_pct', nan), 1)} | {w.get('loops_per_s', nan):.0f} |")
    lines += ["", "Ratios to phase a (all requests; same run):", "",
              "| phase | ok req/s | p50 | p99 | p99.9 | max | longest gap |",
              "|---|---|---|---|---|---|---|"]
    for name, r in res["ratios"].items():
        lines.append(f"| {name} | {_f(r['ok_per_s'])} | {_f(r['p50'])} | {_f(r['p99'])} | "
                     f"{_f(r['p999'])} | {_f(r['max'])} | {_f(r['max_gap'])} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.publishbench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", type=int, default=1000)
    ap.add_argument("--slots", type=int, default=65537)
    ap.add_argument("--ka-rate", type=float, default=3000.0, help="persistent requests/s")
    ap.add_argument("--ka-conns", type=int, default=16)
    ap.add_argument("--new-rate", type=float, default=300.0, help="new connections/s")
    ap.add_argument("--phase-seconds", type=float, default=8.0, help="phases a, b, a2")
    ap.add_argument("--burst-seconds", type=float, default=5.0, help="phases c, d, s")
    ap.add_argument("--period-ms", type=float, default=100.0, help="phase b's publish period")
    ap.add_argument("--phases", default="a,b,c,d,s,a2")
    ap.add_argument("--listen-port", type=int, default=23051)
    ap.add_argument("--backend-base", type=int, default=31000)
    ap.add_argument("--lb-cpu", type=int, default=1)
    ap.add_argument("--load-cpu", type=int, default=0)
    ap.add_argument("--publisher-cpu", type=int, default=-1,
                    help="CPU of the publishing thread (default: --lb-cpu, as in the daemon)")
    ap.add_argument("--publisher-sched", choices=["normal", "idle"], default="normal",
                    help="idle: the publishing thread runs under SCHED_IDLE")
    ap.add_argument("--publisher-nice", type=int, default=0,
                    help="nice value of the publishing thread only")
    ap.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    ap.add_argument("--save", action="store_true",
                    help="also write bench/results/custom-publish-<UTC>.{md,json}")
    ap.add_argument("--dry-run", action="store_true", help="print the plan; start nothing")
    ap.add_argument("--no-lock", action="store_true", help="do not take " + LOCK_PATH)
    # internal: the child processes
    ap.add_argument("--role", choices=["main", "backend", "load"], default="main",
                    help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, default=-1, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--t0", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = _parser().parse_args(argv)
    if args.role == "backend":
        return backend_main(args.backend_base, args.backends, args.cpu, args.seconds)
    if args.role == "load":
        return load_main(args.listen_port, args.cpu, args.t0, args.seconds, args.ka_rate,
                         args.ka_conns, args.new_rate, args.out)
    try:
        plan = make_plan(args)
    except ValueError as exc:
        print(f"publishbench: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps({"plan": {**asdict(plan), "seconds": plan.seconds}}, indent=1))
        return 0
    lock_fd = -1
    if not args.no_lock:
        lock_fd = os.open(LOCK_PATH, os.O_CREAT | os.O_RDWR, 0o666)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        load0 = os.getloadavg()
        res = run(args, plan)
        res["started_utc"], res["loadavg_before_after"] = stamp, [load0, os.getloadavg()]
        res["command"] = "python -m bench.publishbench " + " ".join(sys.argv[1:] if argv is None
                                                                    else argv)
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
    md = markdown(res, plan)
    print(json.dumps(res, indent=1) if args.json else md)
    if args.save:
        base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                            f"custom-publish-{stamp}")
        with open(base + ".md", "w") as f:
            f.write(f"# Table publish under load, {stamp}\n\n`{res['command']}`; load average "
                    f"before / after: {load0[0]:.2f} / {os.getloadavg()[0]:.2f}\n\n{md}\n")
        with open(base + ".json", "w") as f:
            json.dump(res, f, indent=1)
        print(f"saved {base}.md and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
