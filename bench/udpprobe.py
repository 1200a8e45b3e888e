"""Profile the compiled UDP relay in-process: CPU per echo and the worker's datagram counters.

Not part of the comparative harness (bench/run.py): the UDP twin of bench/tcpprobe.py, used for
the UDP figures in docs/performance.md. It starts the compiled data plane with one worker in
this process, pinned to --lb-cpu, publishes one UDP service that forwards --listen-port to
--backend (an already running echo server, e.g. the harness's udpecho), runs the harness's
udpgen on --load-cpu at a fixed offered rate, and prints one JSON object: echoes received and
lost, the worker thread's CPU time (from /proc/self/task/TID/schedstat) per echo, its epoll
loop iterations and poll-mode sleeps per echo, the system calls per datagram on each side, and
how many datagrams moved inside GSO runs (sent) and GRO buffers (received).

    python -m bench.udpprobe --backend 127.0.0.1:8404 --rate 300000
    python -m bench.udpprobe --backend 127.0.0.1:8404 --rate 300000 --no-gro
    python -m bench.udpprobe --backend 127.0.0.1:8404 --rate 300000 --gen-singles

--poll-us sets the worker's poll-mode sleep (Dataplane._udp_tune(poll_us=...); 50 is the
default, 0 never sleeps). --no-gro turns the relay's GRO buffers off
(Dataplane._udp_tune(gro=False)). --gen-singles makes udpgen send every datagram on its own
instead of one GSO packet per flow and tick; on loopback nothing is merged then, so the relay's
GRO has nothing to work with (a NIC's GRO would merge what arrives back to back).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from bench import loadgen, native
from bench.tcpprobe import _thread_cpu, _worker_tids

TIMEOUT_SLACK = 20.0  # seconds udpgen may overrun --seconds before it is killed
SO_RCVBUFFORCE = 33  # as l4lb/net/listen.py: the listener's 4 MiB receive buffer
LISTENER_RCVBUF = 4 << 20


def _config(listen_port: int, backend: str) -> Any:
    from l4lb.config.model import Backend, Config, Endpoint, GlobalSettings, Service

    host, port = backend.rsplit(":", 1)
    be = Endpoint(host=host, port=int(port), text=backend)
    svc = Service(name="probe", protocol="udp",
                  listen=(Endpoint(host="127.0.0.1", port=listen_port,
                                   text=f"127.0.0.1:{listen_port}"),),
                  backends=(Backend(address=be, name=backend),), scheduler="round_robin")
    return Config(path="<udpprobe>", global_=GlobalSettings(workers=1), services=(svc,))


def _listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, LISTENER_RCVBUF)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LISTENER_RCVBUF)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the data plane, drive it, return the figures."""
    from l4lb._dataplane import Dataplane

    from l4lb.table.builder import TableBuilder

    udpgen = str(native.build("udpgen"))
    os.sched_setaffinity(0, {args.lb_cpu} if args.lb_cpu >= 0 else set(range(os.cpu_count() or 1)))
    before = {int(t) for t in os.listdir("/proc/self/task")}
    dp = Dataplane(1)
    dp._udp_tune(gro=not args.no_gro, poll_us=args.poll_us)
    builder = TableBuilder()
    blob = builder.build(_config(args.listen_port, args.backend))
    sid = builder.service_ids()["probe"]
    ls = _listener(args.listen_port)
    dp.start()
    try:
        dp.publish(blob)
        dp.add_listener(sid, ls.fileno(), 0)
        tids = _worker_tids(before | {threading.get_native_id()})
        in0, (ns0, cx0) = dp._internals(), _thread_cpu(tids)
        argv = loadgen.udpgen_argv(udpgen, args.listen_port, args.flows, args.size, args.rate,
                                   args.seconds * 1000, gso=not args.gen_singles)
        pin = ["taskset", "-c", str(args.load_cpu)] if args.load_cpu >= 0 else []
        t0 = time.monotonic()
        proc = subprocess.run([*pin, *argv], capture_output=True, text=True, check=False,
                              timeout=args.seconds + TIMEOUT_SLACK)
        wall = time.monotonic() - t0
        in1, (ns1, cx1) = dp._internals(), _thread_cpu(tids)
        gen = loadgen.parse_udpgen(proc.stdout)
        echoes = gen.get("received", 0.0)
        if echoes <= 0:
            raise RuntimeError(f"no echoes: {proc.stdout[-300:]} {proc.stderr[-300:]}")

        def d(key: str) -> float:
            return float(in1[key] - in0[key])

        rx, up = d("udp_rx_datagrams"), d("udp_up_datagrams")
        return {
            "rate": args.rate, "poll_us": args.poll_us, "gro": not args.no_gro,
            "gen_gso": not args.gen_singles,
            "echoes": echoes, "loss_pct": gen.get("loss_pct"),
            "rtt_p50_us": gen.get("rtt_p50_us"), "rtt_p99_us": gen.get("rtt_p99_us"),
            "gen_skipped": gen.get("skipped"),
            "cpu_us_per_echo": round((ns1 - ns0) / 1e3 / echoes, 3),
            "cpu_pct": round(100 * (ns1 - ns0) / 1e9 / wall, 1),
            "ctxsw_per_echo": round((cx1 - cx0) / echoes, 4),
            "loops_per_echo": round(d("loop_iterations") / echoes, 4),
            "poll_sleeps_per_echo": round(d("udp_poll_sleeps") / echoes, 4),
            "listener_reads_per_dgram": round(d("udp_rx_calls") / rx, 4) if rx else None,
            "upstream_reads_per_dgram": round(d("udp_up_calls") / up, 4) if up else None,
            "sends_per_dgram": round((d("udp_tx_calls") + d("udp_out_calls"))
                                     / max(1.0, d("udp_tx_datagrams") + d("udp_out_datagrams")),
                                     4),
            "gro_share": round(d("udp_gro_datagrams") / max(1.0, rx + up), 4),
            "gso_share": round(d("udp_gso_datagrams")
                               / max(1.0, d("udp_tx_datagrams") + d("udp_out_datagrams")), 4),
        }
    finally:
        dp.stop(1.0)
        ls.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point: prints one JSON object."""
    ap = argparse.ArgumentParser(prog="python -m bench.udpprobe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", required=True, help="HOST:PORT of a running UDP echo server")
    ap.add_argument("--listen-port", type=int, default=23051)
    ap.add_argument("--rate", type=int, default=300_000, help="datagrams per second offered")
    ap.add_argument("--flows", type=int, default=8)
    ap.add_argument("--size", type=int, default=64, help="payload bytes per datagram")
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--lb-cpu", type=int, default=1, help="-1: not pinned")
    ap.add_argument("--load-cpu", type=int, default=0, help="-1: not pinned")
    ap.add_argument("--no-gro", action="store_true", help="the relay asks for no GRO buffers")
    ap.add_argument("--gen-singles", action="store_true",
                    help="udpgen sends datagram by datagram (no GSO packets)")
    ap.add_argument("--poll-us", type=int, default=50,
                    help="poll-mode sleep of the worker in us (0: block in epoll_wait)")
    args = ap.parse_args(argv)
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
