"""Measure the health checker's CPU cost per probe against a minimal syscall floor, same run.

Run from the repository root: `python bench/probebench.py [--quick] [--backends 1000,10000]`.
It is a reproducible script, not a test: it holds `flock /tmp/l4lb-bench.lock` while it makes
load, and prints one table plus (with `--json`) one JSON object.

What it does:

1. A child process (started by PID, stopped by PID) owns `--listeners` loopback listeners and
   accepts + closes in an epoll loop, so the backends' user-space work is not billed to the
   checker. The kernel still runs both halves of each loopback handshake in the process that
   calls connect(), which is the checker: that is part of the measured sys time.
2. For every size B: a `HealthChecker` on a fresh asyncio loop probes B backends (spread over
   the listeners) at a 1 s interval, 0.5 s timeout, jitter 0.1. After `--warmup` seconds it
   measures a `--window`: getrusage(RUSAGE_SELF) user/sys, probes finished (checker stats), the
   lag of a 5 ms sleeper task (p50/p99/max) and the run-queue wait of this process
   (/proc/self/schedstat, to tell a noisy run from a slow checker).
3. The floor at the same rate: a plain loop (no asyncio, no scheduling, no result objects)
   that makes the same system calls per probe (socket, SO_LINGER, connect, epoll_ctl ADD,
   epoll_wait share, close), paced in 5 ms slices.
4. The apparatus alone: the asyncio loop with the sleeper and no checker.
5. `syn`: the checker phase again with `kind = "syn"` (half-open probes through a raw socket;
   needs root or CAP_NET_RAW, skipped otherwise). The checker hands these backends to the C SYN
   fleet (l4lb/health/synfleet.py, src_ext/core/synprobe.c). Not run by default (`--only`):
   `synpy`, the same through the fleet's pure-Python twin, and `synold`, the same through the
   per-probe `SynProbeEngine` (l4lb/health/synprobe.py, the checker's heap; the path before the
   fleet). The backends' kernel
   answers in softirq context on loopback, which is billed to this process as sys time, as in
   the checker phase; the child process does no work (nothing is accepted).
6. `synfloor`: the kernel floor of SYN probing at the same rate: a plain paced loop that sends
   prebuilt SYNs from a raw socket (one sendto each) and drains the replies, no matching.
7. `hole` (not run by default; `--only hole`): the floor's system calls towards a loopback
   "black hole" (a backlog-0 listener whose accept queue is full, so the kernel drops the SYN),
   each socket closed after one slice. No handshake completes, so no backend-side work is
   billed here: it approximates the prober's own share of a probe to a remote backend, minus
   the receive of its SYN-ACK and the send of its ACK.

8. `http` (not run by default; `--only http`): the checker phase with `kind = "http"` (connect,
   send a GET, read and judge the response head) against a second child process whose
   listeners read each request and answer `200 OK` with a 3-byte body before closing.
9. `udp` (not run by default; `--only udp`): the checker phase with `kind = "udp"` (send a
   4-byte datagram, receive the reply) against a third child process whose UDP sockets answer
   every datagram with `pong`.
10. `exec` (not run by default; `--only exec`): the checker phase with `kind = "exec"`, each
   probe running `/bin/true` (fork, exec, pidfd, reap). The CPU figures are the checker's own
   process; the commands' CPU (RUSAGE_CHILDREN) is printed apart. Use small `--backends`
   (100): every probe is a process.
11. `tls` (not run by default; `--only tls`): the checker phase with `kind = "tls"` (connect, a
   full TLS 1.3 handshake, the certificate verified against a CA file and a server name)
   against a fourth child process whose listeners are asyncio TLS servers. The certificates
   are made by trustme (the test extra) in a temporary directory. Use small `--backends`
   (200): the backends' process pays a handshake per probe too, on the same machine.

Per-probe figures are CPU microseconds per probe; `ratio` is checker (or syn) / floor; `quiet%`
is the share of a syn phase's probes that the fleet kept as quiet passes (passes of backends
that are UP with nothing pending: counted in C, never handed to Python one by one).
`--only checker` runs only the checker phase (for `py-spy record -- python bench/probebench.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LOCK_PATH = "/tmp/l4lb-bench.lock"
_LINGER_RST = struct.pack("ii", 1, 0)
_SLEEP = 0.005  # the lag sleeper's period


@dataclass
class Window:
    """CPU and progress of one measured window."""

    phase: str  # "checker", "syn", "synpy", "synold", "floor", "synfloor", "hole" or "idle"
    backends: int  # backends probed (0 for idle)
    seconds: float  # wall length of the window
    probes: int  # probes finished in the window
    user: float  # CPU seconds, user
    sys: float  # CPU seconds, system
    runq_wait: float  # seconds this thread waited for a CPU during the window
    lag_p50_ms: float  # sleeper lag percentiles (checker and idle phases)
    lag_p99_ms: float
    lag_max_ms: float
    quiet: int = 0  # syn phases: passes the fleet kept (quiet passes), never seen by Python

    @property
    def rate(self) -> float:
        """Probes per second."""
        return self.probes / self.seconds if self.seconds else 0.0

    @property
    def cpu_pct(self) -> float:
        """Percent of one core."""
        return 100.0 * (self.user + self.sys) / self.seconds

    def per_probe_us(self) -> tuple[float, float]:
        """(user, sys) microseconds per probe."""
        if not self.probes:
            return (0.0, 0.0)
        return (1e6 * self.user / self.probes, 1e6 * self.sys / self.probes)


def _runq_wait() -> float:
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _rusage() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def _pct(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return 0.0
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


# -- the backends' process ------------------------------------------------------------------

_HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"


def _serve(listeners: list[socket.socket], stop_fd: int, http: bool = False) -> None:
    """Child: accept and close on every listener until stop_fd becomes readable; with http,
    read each connection's request first and answer it with _HTTP_OK."""
    ep = select.epoll()
    by_fd = {s.fileno(): s for s in listeners}
    conns: dict[int, socket.socket] = {}
    for s in listeners:
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
    ep.register(stop_fd, select.EPOLLIN)
    while True:
        for fd, _ev in ep.poll(1.0, 256):
            if fd == stop_fd:
                return
            conn_r = conns.pop(fd, None)
            if conn_r is not None:  # http: the request (or its end) arrived
                try:
                    if conn_r.recv(4096):
                        conn_r.send(_HTTP_OK)
                except OSError:
                    pass
                conn_r.close()  # also leaves the epoll set
                continue
            lst = by_fd[fd]
            for _ in range(64):
                try:
                    conn, _addr = lst.accept()
                except (BlockingIOError, ConnectionAbortedError):
                    break
                except OSError:
                    break
                if http:
                    conn.setblocking(False)
                    conns[conn.fileno()] = conn
                    ep.register(conn.fileno(), select.EPOLLIN)
                else:
                    conn.close()


def _serve_udp(socks: list[socket.socket], stop_fd: int) -> None:
    """Child (phase udp): answer every datagram on every socket with b"pong", until stop_fd
    becomes readable."""
    ep = select.epoll()
    by_fd = {s.fileno(): s for s in socks}
    for s in socks:
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
    ep.register(stop_fd, select.EPOLLIN)
    while True:
        for fd, _ev in ep.poll(1.0, 256):
            if fd == stop_fd:
                return
            s = by_fd[fd]
            for _ in range(64):
                try:
                    _data, peer = s.recvfrom(2048)
                    s.sendto(b"pong", peer)
                except OSError:  # EAGAIN: drained; ECONNREFUSED: a probe that went away
                    break


def _serve_tls(listeners: list[socket.socket], stop_fd: int, cert: str, key: str) -> None:
    """Child (phase tls): a TLS server on every listener (asyncio, one handshake per
    connection, then wait for the client to go), until stop_fd becomes readable."""
    import ssl

    async def serve() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_reader(stop_fd, stop.set)

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):  # ssl.SSLError included
                await r.read(1)
            w.close()
        servers = [await asyncio.start_server(handler, sock=s, ssl=ctx, backlog=4096)
                   for s in listeners]
        await stop.wait()
        for srv in servers:
            srv.close()
    asyncio.run(serve())


_TLS: dict[str, str] = {}  # phase tls: the files trustme made (ca, cert, key)


def _make_tls_files(directory: str) -> None:
    import trustme  # the test extra

    ca = trustme.CA()
    leaf = ca.issue_cert("backend.bench.invalid")
    _TLS.update(ca=os.path.join(directory, "ca.pem"), cert=os.path.join(directory, "leaf.pem"),
                key=os.path.join(directory, "leaf.key"))
    ca.cert_pem.write_to_path(_TLS["ca"])
    leaf.cert_chain_pems[0].write_to_path(_TLS["cert"])
    leaf.private_key_pem.write_to_path(_TLS["key"])


def start_backends(n: int, http: bool = False, udp: bool = False,
                   tls: bool = False) -> tuple[int, int, list[int]]:
    """Fork the backends' process; returns (pid, write end of its stop pipe, ports)."""
    listeners = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        if not udp:
            s.listen(4096)
        listeners.append(s)
    ports = [s.getsockname()[1] for s in listeners]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(w)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if udp:
                _serve_udp(listeners, r)
            elif tls:
                _serve_tls(listeners, r, _TLS["cert"], _TLS["key"])
            else:
                _serve(listeners, r, http)
        finally:
            os._exit(0)
    os.close(r)
    for s in listeners:
        s.close()
    return pid, w, ports


def stop_backends(pid: int, stop_w: int) -> None:
    """Stop the backends' process (by PID) and reap it."""
    os.close(stop_w)  # EOF on the pipe ends its loop
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


# -- checker phase -----------------------------------------------------------------------------

_SYN_PHASES = {"syn": "c", "synpy": "py", "synold": "off"}  # phase -> checker's syn_fleet


def _quiet(checker: Any) -> int:
    """Quiet passes so far (passes the SYN fleet counted instead of reporting them)."""
    fleet = getattr(checker, "_fleet", None)
    return int(getattr(fleet, "quiet_passes", 0)) if fleet is not None else 0


async def _sleeper(lags: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t0 = loop.time()
        await asyncio.sleep(_SLEEP)
        lags.append(loop.time() - t0 - _SLEEP)


async def _measure_loop(phase: str, backends: int, ports: list[int], warmup: float,
                        window: float) -> Window:
    from l4lb.health import HealthChecker, HealthSettings

    kind = "syn" if phase in _SYN_PHASES else phase if phase in ("http", "udp", "exec", "tls") \
        else "tcp"
    tls: dict[str, Any] = dict(tls_ca_file=_TLS["ca"], tls_server_name="backend.bench.invalid") \
        if kind == "tls" else {}
    settings = HealthSettings(kind=kind, interval=1.0, timeout=0.5, jitter=0.1,
                              send=b"ping" if kind == "udp" else b"",
                              command=("/bin/true",) if kind == "exec" else (), **tls)
    checker: HealthChecker[int] | None = None
    if backends:
        checker = HealthChecker(lambda _k, _t: None, max_in_flight=4096,
                                syn_fleet=_SYN_PHASES.get(phase, "off"))
        for i in range(backends):
            checker.add(i, "127.0.0.1", ports[i % len(ports)], settings)
        checker.start()
    lags: list[float] = []
    stop = asyncio.Event()
    task = asyncio.create_task(_sleeper(lags, stop))
    try:
        await asyncio.sleep(warmup)
        lags.clear()
        p0 = checker.stats().probes if checker else 0
        k0 = _quiet(checker)
        u0, s0 = _rusage()
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        q0 = _runq_wait()
        t0 = time.monotonic()
        await asyncio.sleep(window)
        t1 = time.monotonic()
        u1, s1 = _rusage()
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        q1 = _runq_wait()
        p1 = checker.stats().probes if checker else 0
        k1 = _quiet(checker)
        snap = sorted(lags)
    finally:
        stop.set()
        await task
        if checker is not None:
            failed = checker.stats().failed
            checker.stop()
            if failed:
                print(f"  note: {failed} probes failed during the run", file=sys.stderr)
    if phase == "exec" and p1 > p0:
        child_us = 1e6 * ((c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)) / (p1 - p0)
        print(f"  exec: the commands themselves: {child_us:.0f} us CPU per probe "
              "(RUSAGE_CHILDREN)", file=sys.stderr)
    return Window(phase, backends, t1 - t0, p1 - p0, u1 - u0, s1 - s0, q1 - q0,
                  1e3 * _pct(snap, 0.5), 1e3 * _pct(snap, 0.99), 1e3 * (snap[-1] if snap else 0),
                  k1 - k0)


# -- floor phase -------------------------------------------------------------------------------

def make_black_hole() -> tuple[socket.socket, list[socket.socket]]:
    """A loopback port whose SYNs are dropped: backlog-0 listener with a full accept queue."""
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    fillers = []
    for _ in range(3):  # more than the queue holds
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setblocking(False)
        c.connect_ex(lst.getsockname())
        fillers.append(c)
    time.sleep(0.05)  # let the fillers' handshakes settle
    return lst, fillers


def measure_floor(rate: int, ports: list[int], warmup: float, window: float,
                  hole: bool = False) -> Window:
    """The same system calls per probe as the checker, in a plain paced loop.

    hole: towards a black hole; every socket is closed one slice after its connect.
    """
    ep = select.epoll()
    hole_lst: socket.socket | None = None
    fillers: list[socket.socket] = []
    previous: list[socket.socket] = []  # hole: the sockets of the last slice
    if hole:
        hole_lst, fillers = make_black_hole()
        ports = [hole_lst.getsockname()[1]]
    slice_s = 0.005
    owed = 0.0  # probes owed to the rate (fractions carry over between slices)
    live: dict[int, socket.socket] = {}
    sock_type = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    targets = [("127.0.0.1", p) for p in ports]
    nt = len(targets)
    i = 0
    done = 0
    start = time.monotonic()
    t_measure = start + warmup
    t_end = t_measure + window
    measuring = False
    u0 = s0 = q0 = 0.0
    p0 = 0
    next_slice = start
    while True:
        now = time.monotonic()
        if not measuring and now >= t_measure:
            measuring = True
            u0, s0 = _rusage()
            q0 = _runq_wait()
            p0 = done
            t_measure = now
        if now >= t_end:
            break
        if now >= next_slice:
            next_slice += slice_s
            owed += rate * slice_s
            n, owed = int(owed), owed - int(owed)
            if hole:
                for s in previous:
                    live.pop(s.fileno(), None)
                    s.close()
                done += len(previous)
                previous = []
            for _ in range(n):
                s = socket.socket(socket.AF_INET, sock_type)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
                s.connect_ex(targets[i % nt])
                i += 1
                fd = s.fileno()
                live[fd] = s
                ep.register(fd, select.EPOLLOUT)
                if hole:
                    previous.append(s)
        for fd, _ev in ep.poll(max(0.0, next_slice - time.monotonic()), 256):
            s = live.pop(fd)
            s.close()
            done += 1
    u1, s1 = _rusage()
    q1 = _runq_wait()
    t1 = time.monotonic()
    for s in live.values():
        s.close()
    ep.close()
    if hole_lst is not None:
        for c in fillers:
            c.close()
        hole_lst.close()
    return Window("hole" if hole else "floor", rate, t1 - t_measure, done - p0, u1 - u0,
                  s1 - s0, q1 - q0, 0.0, 0.0, 0.0)


def measure_syn_floor(rate: int, ports: list[int], warmup: float, window: float) -> Window:
    """The kernel floor of SYN probing: prebuilt SYNs from a raw socket, replies drained."""
    from l4lb.health.synprobe import attach_filter, bpf_program, build_syn, syn_partial_sum

    reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserved.bind(("0.0.0.0", 0))
    sport = reserved.getsockname()[1]
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                        socket.IPPROTO_TCP)
    attach_filter(raw, bpf_program(socket.AF_INET, [sport]))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    lo = socket.inet_aton("127.0.0.1")
    packets = [build_syn(syn_partial_sum(lo, lo, p), sport, p, 1000 + i)
               for i, p in enumerate(ports)]
    ep = select.epoll()
    ep.register(raw.fileno(), select.EPOLLIN)
    slice_s = 0.005
    owed = 0.0
    dst = ("127.0.0.1", 0)
    n_pk = len(packets)
    i = done = p0 = 0
    start = time.monotonic()
    t_measure = start + warmup
    t_end = t_measure + window
    measuring = False
    u0 = s0 = q0 = 0.0
    next_slice = start
    recv = raw.recv
    send = raw.sendto
    while True:
        now = time.monotonic()
        if not measuring and now >= t_measure:
            measuring = True
            u0, s0 = _rusage()
            q0 = _runq_wait()
            p0 = done
            t_measure = now
        if now >= t_end:
            break
        if now >= next_slice:
            next_slice += slice_s
            owed += rate * slice_s
            n, owed = int(owed), owed - int(owed)
            for _ in range(n):
                send(packets[i % n_pk], dst)
                i += 1
        if ep.poll(max(0.0, next_slice - time.monotonic()), 1):
            while True:
                try:
                    recv(256)
                except BlockingIOError:
                    break
                done += 1
    u1, s1 = _rusage()
    q1 = _runq_wait()
    t1 = time.monotonic()
    ep.close()
    raw.close()
    reserved.close()
    return Window("synfloor", rate, t1 - t_measure, done - p0, u1 - u0, s1 - s0, q1 - q0,
                  0.0, 0.0, 0.0)


def _can_raw() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).close()
    except OSError:
        return False
    return True


# -- main --------------------------------------------------------------------------------------

def _print(rows: list[Window], floors: dict[int, Window]) -> None:
    hdr = (f"{'phase':8} {'backends':>8} {'probes/s':>9} {'cpu%':>6} {'user%':>6} {'sys%':>6} "
           f"{'us/probe u+s':>14} {'ratio':>6} {'lag p50/p99/max ms':>20} {'runq s':>7} "
           f"{'quiet%':>6}")
    print(hdr)
    for w in rows:
        u, s = w.per_probe_us()
        ratio = ""
        if w.phase in ("checker", "http", "udp", "exec", "tls", *_SYN_PHASES) \
                and w.backends in floors:
            fu, fs = floors[w.backends].per_probe_us()
            if fu + fs:
                ratio = f"{(u + s) / (fu + fs):.2f}"
        lag = (f"{w.lag_p50_ms:.2f}/{w.lag_p99_ms:.2f}/{w.lag_max_ms:.2f}"
               if w.phase in ("checker", "http", "udp", "exec", "tls", "idle", *_SYN_PHASES)
               else "-")
        print(f"{w.phase:8} {w.backends:>8} {w.rate:>9.0f} {w.cpu_pct:>6.1f} "
              f"{100 * w.user / w.seconds:>6.1f} {100 * w.sys / w.seconds:>6.1f} "
              f"{u:>6.1f}+{s:<6.1f} {ratio:>6} {lag:>20} {w.runq_wait:>7.2f} "
              f"{100 * w.quiet / w.probes if w.phase in _SYN_PHASES and w.probes else 0:>6.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="1000,10000", help="comma-separated sizes")
    ap.add_argument("--listeners", type=int, default=50)
    ap.add_argument("--warmup", type=float, default=1.5)
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--reps", type=int, default=1, help="repetitions of every phase")
    ap.add_argument("--quick", action="store_true", help="10,000 backends only, 3 s windows")
    ap.add_argument("--only", choices=["checker", "floor", "idle", "hole", "syn", "synpy",
                                       "synold", "synfloor", "http", "udp", "exec", "tls"],
                    action="append",
                    help="run only these phases (repeatable)")
    ap.add_argument("--nice", type=int, default=0, help="os.nice() increment (e.g. -15)")
    ap.add_argument("--no-lock", action="store_true", help="do not take " + LOCK_PATH)
    ap.add_argument("--json", action="store_true", help="also print one JSON object")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.backends.split(",") if x]
    if args.quick:
        sizes, args.window = [10000], 3.0
    phases = args.only or ["idle", "floor", "checker", "syn", "synfloor"]
    if {"synfloor", *_SYN_PHASES} & set(phases) and not _can_raw():
        print("no raw socket (needs root or CAP_NET_RAW): skipping the syn phases",
              file=sys.stderr)
        phases = [p for p in phases if p != "synfloor" and p not in _SYN_PHASES]
    if args.nice:
        os.nice(args.nice)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (8192, hard))

    lock_fd = -1
    if not args.no_lock:
        lock_fd = os.open(LOCK_PATH, os.O_CREAT | os.O_RDWR, 0o666)
        t = time.monotonic()
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        if time.monotonic() - t > 0.5:
            print(f"waited {time.monotonic() - t:.0f}s for {LOCK_PATH}", file=sys.stderr)
    pid, stop_w, ports = start_backends(args.listeners)
    http_pid, http_stop_w, http_ports = (start_backends(args.listeners, http=True)
                                         if "http" in phases else (0, -1, []))
    udp_pid, udp_stop_w, udp_ports = (start_backends(args.listeners, udp=True)
                                      if "udp" in phases else (0, -1, []))
    tls_dir = tempfile.TemporaryDirectory(prefix="l4lb-bench-tls-") if "tls" in phases else None
    if tls_dir is not None:
        _make_tls_files(tls_dir.name)
    tls_pid, tls_stop_w, tls_ports = (start_backends(args.listeners, tls=True)
                                      if "tls" in phases else (0, -1, []))
    rows: list[Window] = []
    floors: dict[int, Window] = {}
    try:
        for _rep in range(args.reps):
            if "idle" in phases:
                rows.append(asyncio.run(_measure_loop("idle", 0, ports, args.warmup,
                                                      args.window)))
            for b in sizes:
                if "floor" in phases:
                    w = measure_floor(b, ports, args.warmup, args.window)
                    floors[b] = w
                    rows.append(w)
                if "hole" in phases:
                    rows.append(measure_floor(b, ports, args.warmup, args.window, hole=True))
                if "checker" in phases:
                    rows.append(asyncio.run(_measure_loop("checker", b, ports, args.warmup,
                                                          args.window)))
                for phase in _SYN_PHASES:
                    if phase in phases:
                        rows.append(asyncio.run(_measure_loop(phase, b, ports, args.warmup,
                                                              args.window)))
                if "synfloor" in phases:
                    rows.append(measure_syn_floor(b, ports, args.warmup, args.window))
                if "http" in phases:
                    rows.append(asyncio.run(_measure_loop("http", b, http_ports, args.warmup,
                                                          args.window)))
                if "udp" in phases:
                    rows.append(asyncio.run(_measure_loop("udp", b, udp_ports, args.warmup,
                                                          args.window)))
                if "exec" in phases:
                    rows.append(asyncio.run(_measure_loop("exec", b, ports, args.warmup,
                                                          args.window)))
                if "tls" in phases:
                    rows.append(asyncio.run(_measure_loop("tls", b, tls_ports, args.warmup,
                                                          args.window)))
    finally:
        stop_backends(pid, stop_w)
        if http_pid:
            stop_backends(http_pid, http_stop_w)
        if udp_pid:
            stop_backends(udp_pid, udp_stop_w)
        if tls_pid:
            stop_backends(tls_pid, tls_stop_w)
        if tls_dir is not None:
            tls_dir.cleanup()
        if lock_fd >= 0:
            os.close(lock_fd)
    _print(rows, floors)
    if args.json:
        out: list[dict[str, Any]] = []
        for w in rows:
            d = asdict(w)
            d["rate"], d["cpu_pct"] = w.rate, w.cpu_pct
            d["user_us_per_probe"], d["sys_us_per_probe"] = w.per_probe_us()
            out.append(d)
        print(json.dumps({"python": sys.version.split()[0], "windows": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
