"""Measure close_backend_sessions for many backends: one call per backend against one batched call.

The daemon's on_down ("shutdown_sessions"), drain deadlines and stop_now close the sessions of
several backends at once, on the asyncio loop thread. Each call is one round trip to every
worker, and each worker scans all its session slots, so N backends closed one by one cost N
scans; batched, they cost one. This script measures both on the compiled data plane. It is a
reproducible script, not a test, and not part of bench/run.py. It holds `flock
/tmp/l4lb-bench.lock` while it measures.

    python -m bench.closebench                     # 4,000 sessions, 100 backends, close 50
    python -m bench.closebench --sessions 8000 --json

Everything runs in this process, on loopback: --backends listening sockets that never accept
(a connect completes in the kernel's accept queue, so a backend costs no thread and its side of a
session no descriptor), the data plane with --workers workers and one round-robin TCP service
over those backends, and --sessions client connections opened from here and left idle. Two
scenarios, each timed one by one (one call per backend, in a loop, as the daemon did) and batched
(one call with every id), --rounds times alternately; the figures are medians and minimums:

  scan   the --close backends closed have weight 0, so every session is on the others: each call
         finds nothing and the time is the round trips and the scans alone (the cost a loop over
         idle backends pays);
  close  every backend has weight 1 (sessions spread evenly), the --close backends closed hold
         about close/backends of the sessions, which are reset; the sessions are opened again
         before each timing.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import resource
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

LOCK_PATH = "/tmp/l4lb-bench.lock"


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    with open(LOCK_PATH, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _config(ports: list[int], listen_port: int) -> Any:
    from l4lb.config.model import Backend, Config, Endpoint, GlobalSettings, Service

    backends = tuple(Backend(address=Endpoint(host="127.0.0.1", port=p, text=f"127.0.0.1:{p}"),
                             name=f"127.0.0.1:{p}") for p in ports)
    svc = Service(name="svc", protocol="tcp",
                  listen=(Endpoint(host="127.0.0.1", port=listen_port,
                                   text=f"127.0.0.1:{listen_port}"),),
                  backends=backends, scheduler="round_robin")
    return Config(path="<closebench>", global_=GlobalSettings(workers=1), services=(svc,))


def _wait(pred: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _open_sessions(dp: Any, addr: tuple[str, int], n: int) -> list[socket.socket]:
    """n client connections, each relayed to an (accept-queued) backend."""
    clients = []
    for _ in range(n):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(addr)
        clients.append(c)
    _wait(lambda: sum(s["state"] == "established" for s in dp.sessions()) >= n, 60,
          f"{n} established sessions")
    return clients


def _close_all(dp: Any, clients: list[socket.socket]) -> None:
    for c in clients:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()
    _wait(lambda: not dp.sessions(), 60, "the sessions to end")


def _one_by_one(dp: Any, ids: list[int]) -> tuple[float, int]:
    t = time.perf_counter()
    closed = sum(int(dp.close_backend_sessions(b, reason="backend_down")) for b in ids)
    return time.perf_counter() - t, closed


def _batched(dp: Any, ids: list[int]) -> tuple[float, int]:
    t = time.perf_counter()
    closed = sum(dp.close_backend_sessions(ids, reason="backend_down").values())
    return time.perf_counter() - t, closed


def run(args: argparse.Namespace) -> dict[str, Any]:
    from l4lb._dataplane import Dataplane

    from l4lb.table.builder import TableBuilder

    need = 3 * args.sessions + args.backends + 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
    backends = []
    for _ in range(args.backends):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen(4096)
        backends.append(s)
    listeners = []  # one SO_REUSEPORT listener per worker, as the daemon gives them
    port = 0
    for _ in range(args.workers):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        ls.bind(("127.0.0.1", port))
        ls.listen(4096)
        ls.setblocking(False)
        port = ls.getsockname()[1]
        listeners.append(ls)
    addr = ("127.0.0.1", port)
    cfg = _config([s.getsockname()[1] for s in backends], addr[1])
    builder = TableBuilder()
    keys = [("svc", b.address.text) for b in cfg.services[0].backends]
    doomed_keys = keys[:args.close]
    all_up = builder.build(cfg, {})
    doomed_idle = builder.build(cfg, dict.fromkeys(doomed_keys, 0))
    ids = builder.backend_ids()
    doomed = [ids[k] for k in doomed_keys]
    dp = Dataplane(args.workers)
    out: dict[str, Any] = {"sessions": args.sessions, "backends": args.backends,
                           "closing": args.close, "workers": args.workers, "rounds": args.rounds}
    try:
        dp.start()
        dp.publish(doomed_idle)
        for w, ls in enumerate(listeners):
            dp.add_listener(builder.service_ids()["svc"], ls.fileno(), w)
        # scan: nothing to close, the same sessions throughout
        clients = _open_sessions(dp, addr, args.sessions)
        loop_t, batch_t = [], []
        for _ in range(args.rounds):
            t, n = _one_by_one(dp, doomed)
            assert n == 0
            loop_t.append(t)
            t, n = _batched(dp, doomed)
            assert n == 0
            batch_t.append(t)
        out["scan"] = _figures(loop_t, batch_t, 0)
        _close_all(dp, clients)
        # close: the doomed backends hold their share of the sessions
        dp.publish(all_up)
        loop_t, batch_t, counts = [], [], []
        for _ in range(args.rounds):
            for timer, times in ((_one_by_one, loop_t), (_batched, batch_t)):
                clients = _open_sessions(dp, addr, args.sessions)
                t, n = timer(dp, doomed)
                times.append(t)
                counts.append(n)
                _close_all(dp, clients)
        out["close"] = _figures(loop_t, batch_t, int(statistics.median(counts)))
    finally:
        dp.stop(0)
        for ls in listeners:
            ls.close()
        for s in backends:
            s.close()
    return out


def _figures(loop_t: list[float], batch_t: list[float], closed: int) -> dict[str, Any]:
    ms = 1e3
    return {"closed": closed,
            "one_by_one_ms": {"median": statistics.median(loop_t) * ms, "min": min(loop_t) * ms},
            "batched_ms": {"median": statistics.median(batch_t) * ms, "min": min(batch_t) * ms}}


def markdown(r: dict[str, Any]) -> str:
    lines = [f"{r['sessions']} sessions over {r['backends']} backends, {r['workers']} workers, "
             f"closing {r['closing']} backends; medians (min) of {r['rounds']} rounds",
             "", "| scenario | sessions closed | one call per backend, ms | one batched call, ms "
             "| ratio |", "|---|---|---|---|---|"]
    for name in ("scan", "close"):
        f = r[name]
        a, b = f["one_by_one_ms"], f["batched_ms"]
        lines.append(f"| {name} | {f['closed']} | {a['median']:.2f} ({a['min']:.2f}) | "
                     f"{b['median']:.2f} ({b['min']:.2f}) | {a['median'] / b['median']:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=4000)
    ap.add_argument("--backends", type=int, default=100)
    ap.add_argument("--close", type=int, default=50, help="backends closed (the first ones)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not 0 < args.close <= args.backends:
        ap.error("--close must be in 1..--backends")
    with bench_lock():
        result = run(args)
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
