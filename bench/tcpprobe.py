"""Profile the compiled TCP relay in-process: CPU per unit of work plus the worker's own counters.

Not part of the comparative harness (bench/run.py): a tool for attributing the relay's cost while
optimising it, used for the figures in docs/performance.md. It starts the compiled data plane with
one worker in this process, pinned to --lb-cpu, publishes one TCP service that forwards
--listen-port to --backend (an already running server, e.g. the harness's nginx HTTP backend or
`iperf3 -s`), runs one bounded load generator on --load-cpu, and prints one JSON object with:
the worker thread's CPU time (from /proc/self/task/TID/schedstat, in ns) per request or per GB,
its voluntary context switches and epoll loop iterations per unit of work, the copy/splice chunk
counts, the pipe pool figures, and the TCP segments the host sent per unit of work.

    python -m bench.tcpprobe --backend 127.0.0.1:8080 --load wrk-close --seconds 4
    python -m bench.tcpprobe --backend 127.0.0.1:5201 --load iperf1 --pipe-size 1048576
    python -m bench.tcpprobe --backend 127.0.0.1:5201 --load iperf1 --congestion-control cubic
    python -m bench.tcpprobe --backend 127.0.0.1:8099 --load wrk-close --backend-fast-open

--backend-fast-open turns on the service's backend_fast_open (Dataplane.set_fast_open); the
backend must enable TFO itself (e.g. nginx `listen ... fastopen=4096`, net.ipv4.tcp_fastopen
with bit 0x2). The output then also counts the backend connects opened with MSG_FASTOPEN and
those whose SYN carried the client's bytes (fo_attempts, fo_syn_data, per unit of work): only
connections whose request is already waiting when the relay connects use it, which
--defer-accept SECONDS (TCP_DEFER_ACCEPT on the listener) makes every client-speaks-first one.
--proxy-protocol 1|2 sends that PROXY protocol header first (set_proxy_protocol); the backend
must expect it (nginx `listen ... proxy_protocol`).
--source IP binds each backend connection to IP (port 0) before it connects, as the service
key `source` does.
--accept-proxy turns on the service's accept_proxy (set_accept_proxy, 5 s) and, with
wrk-close only, has wrk start every connection with a PROXY v1 header in the same write as its
request (a Lua script: each request goes on a new connection, so each header is the first bytes
of its connection, as a balancer in front sends it). --wrk-script-baseline runs the same script
without the header and without accept_proxy, so that a pair differs only in the header.

Loads: wrk-close (new connection per request, 50 concurrent), wrk-ka (keep-alive, 50
connections), iperf1 / iperf8 (iperf3 -P 1 / -P 8, client to server). Traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Any

TIMEOUT_SLACK = 20.0  # seconds a load generator may overrun --seconds before it is killed


def _config(listen_port: int, backend: str, source: str | None = None) -> Any:
    from l4lb.config.model import Backend, Config, Endpoint, GlobalSettings, Service

    host, port = backend.rsplit(":", 1)
    be = Endpoint(host=host, port=int(port), text=backend)
    svc = Service(name="probe", protocol="tcp",
                  listen=(Endpoint(host="127.0.0.1", port=listen_port,
                                   text=f"127.0.0.1:{listen_port}"),),
                  backends=(Backend(address=be, name=backend, source=source),),
                  scheduler="round_robin", source=source)
    return Config(path="<tcpprobe>", global_=GlobalSettings(workers=1), services=(svc,))


def _worker_tids(before: set[int]) -> list[int]:
    return sorted({int(t) for t in os.listdir("/proc/self/task")} - before)


def _thread_cpu(tids: list[int]) -> tuple[int, int]:
    """(CPU ns, voluntary context switches) of the given threads."""
    ns = ctx = 0
    for t in tids:
        with open(f"/proc/self/task/{t}/schedstat") as f:
            ns += int(f.read().split()[0])
        with open(f"/proc/self/task/{t}/status") as f:
            m = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", f.read(), re.M)
            ctx += int(m.group(1)) if m else 0
    return ns, ctx


def _out_segs() -> int:
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(dict(zip(rows[0], rows[1], strict=True))["OutSegs"])


# wrk checks that request() returns valid HTTP by calling it once, after init(), in its first
# thread's Lua state (the one thread, -t1); that first answer is never sent
WRK_PROXY_LUA = """-- bench/tcpprobe.py: each request, on its own connection, led by a PROXY header
wrk.headers["Host"] = "127.0.0.1"
wrk.headers["Connection"] = "close"
local plain = wrk.format("GET", "/")
local req = "{prefix}" .. plain
local calls = 0
request = function()
  calls = calls + 1
  if calls == 1 then return plain end
  return req
end
"""


def _wrk_script(port: int, header: bool) -> str:
    """Write the Lua script of --accept-proxy / --wrk-script-baseline; returns its path."""
    prefix = f"PROXY TCP4 192.0.2.7 127.0.0.1 40000 {port}\\r\\n" if header else ""
    path = f"/tmp/l4lb-tcpprobe-{os.getpid()}.lua"
    with open(path, "w") as f:
        f.write(WRK_PROXY_LUA.replace("{prefix}", prefix))
    return path


def _load_argv(kind: str, port: int, seconds: int, cpu: int,
               script: str | None = None) -> list[str]:
    pin = ["taskset", "-c", str(cpu)] if cpu >= 0 else []
    url = f"http://127.0.0.1:{port}/"
    if kind == "wrk-close":
        lua = ["-s", script] if script else []
        return [*pin, "wrk", "-t1", "-c50", f"-d{seconds}s", "--latency", "--timeout", "2s",
                *lua, "-H", "Connection: close", url]
    if kind == "wrk-ka":
        return [*pin, "wrk", "-t1", "-c50", f"-d{seconds}s", "--latency", "--timeout", "2s", url]
    if kind in ("iperf1", "iperf8"):
        return [*pin, "iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds),
                "-P", kind[-1], "-J", "--connect-timeout", "3000"]
    raise ValueError(f"unknown load {kind!r}")


def _units(kind: str, text: str) -> tuple[float, str, dict[str, Any]]:
    """(units of work, unit name, extra figures) from the load generator's output."""
    if kind.startswith("wrk"):
        m = re.search(r"(\d+) requests in", text)
        p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
        errs = re.search(r"Socket errors:.*", text)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        extra = {"p99": p99.group(1) if p99 else None, "errors": errs.group(0) if errs else "",
                 "non_2xx": int(non2xx.group(1)) if non2xx else 0}
        return float(m.group(1)) if m else 0.0, "req", extra
    data = json.loads(text)
    sent = float(data["end"]["sum_received"]["bytes"])
    extra = {"gbit_s": round(data["end"]["sum_received"]["bits_per_second"] / 1e9, 2),
             "retransmits": data["end"].get("sum_sent", {}).get("retransmits")}
    return sent / 1e9, "GB", extra


def _svc_counter(dp: Any, sid: int, name: str) -> int:
    """One counter of service sid from the data plane's stats (0 when it has none yet)."""
    return int(dp.stats()["services"].get(sid, {}).get(name, 0))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the data plane, drive it, return the figures."""
    from l4lb._dataplane import Dataplane

    from l4lb.table.builder import TableBuilder

    os.sched_setaffinity(0, {args.lb_cpu} if args.lb_cpu >= 0 else set(range(os.cpu_count() or 1)))
    before = {int(t) for t in os.listdir("/proc/self/task")}
    dp = Dataplane(1)
    script: str | None = None  # wrk's Lua script (--accept-proxy, --wrk-script-baseline)
    if args.pipe_size is not None or args.copy_threshold is not None:
        dp._tune(16384 if args.copy_threshold is None else args.copy_threshold,
                 args.pipe_size or 0)
    builder = TableBuilder()
    blob = builder.build(_config(args.listen_port, args.backend, args.source))
    sid = builder.service_ids()["probe"]
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", args.listen_port))
    if args.congestion_control:  # client leg: accepted sockets inherit it from the listener
        ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION,
                      args.congestion_control.encode())
    ls.listen(4096)
    if args.defer_accept:  # accept only once the client's first bytes are there
        ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, args.defer_accept)
    ls.setblocking(False)
    dp.start()
    try:
        dp.publish(blob)
        backend_cc = args.backend_congestion_control or args.congestion_control
        if backend_cc:  # backend leg
            dp.set_congestion_control(sid, backend_cc)
        if args.backend_fast_open:
            dp.set_fast_open(sid, True)
        if args.proxy_protocol:
            dp.set_proxy_protocol(sid, args.proxy_protocol)
        if args.accept_proxy or args.wrk_script_baseline:
            script = _wrk_script(args.listen_port, header=args.accept_proxy)
        if args.accept_proxy:
            dp.set_accept_proxy(sid, 5000)
        dp.add_listener(sid, ls.fileno(), 0)
        tids = _worker_tids(before | {threading.get_native_id()})
        in0, (ns0, cx0), sg0 = dp._internals(), _thread_cpu(tids), _out_segs()
        t0 = time.monotonic()
        proc = subprocess.run(_load_argv(args.load, args.listen_port, args.seconds,
                                         args.load_cpu, script),
                              capture_output=True, text=True, check=False,
                              timeout=args.seconds + TIMEOUT_SLACK)
        wall = time.monotonic() - t0
        in1, (ns1, cx1), sg1 = dp._internals(), _thread_cpu(tids), _out_segs()
        units, unit, extra = _units(args.load, proc.stdout)
        if units <= 0:
            raise RuntimeError(f"no work measured: {proc.stdout[-300:]} {proc.stderr[-300:]}")
        scale = 1e3 if unit == "req" else 1e6  # us per request, ms per GB
        out: dict[str, Any] = {
            "load": args.load, "unit": unit, "units": units, "wall_s": round(wall, 3),
            "rate_per_s": round(units / wall, 1),
            f"cpu_{'us_per_req' if unit == 'req' else 'ms_per_GB'}":
                round((ns1 - ns0) / scale / units, 3),
            "cpu_pct": round(100 * (ns1 - ns0) / 1e9 / wall, 1),
            f"ctxsw_per_{unit}": round((cx1 - cx0) / units, 4),
            f"loops_per_{unit}": round((in1["loop_iterations"] - in0["loop_iterations"]) / units,
                                       4),
            f"segments_per_{unit}": round((sg1 - sg0) / units, 3),
            "copy_sends": in1["copy_sends"] - in0["copy_sends"],
            "splice_moves": in1["splice_moves"] - in0["splice_moves"],
            "pipes_created": in1["pipes_created"] - in0["pipes_created"],
            "pipe_size": in1["pipe_size"],
            "congestion_control": args.congestion_control or "",
            "backend_congestion_control": args.backend_congestion_control or "",
            "backend_fast_open": bool(args.backend_fast_open),
            "proxy_protocol": args.proxy_protocol,
            "defer_accept": args.defer_accept,
            "accept_proxy": bool(args.accept_proxy),
            "source": args.source or "",
            "proxy_header_errors": _svc_counter(dp, sid, "proxy_header_errors"),
            f"fo_attempts_per_{unit}": round(
                (in1["fast_open_attempts"] - in0["fast_open_attempts"]) / units, 4),
            f"fo_syn_data_per_{unit}": round(
                (in1["fast_open_syn_data"] - in0["fast_open_syn_data"]) / units, 4),
            **extra,
        }
        return out
    finally:
        dp.stop(1.0)
        if script:
            os.unlink(script)
        ls.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point: prints one JSON object."""
    ap = argparse.ArgumentParser(prog="python -m bench.tcpprobe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", required=True, help="HOST:PORT of a running server")
    ap.add_argument("--listen-port", type=int, default=23041)
    ap.add_argument("--load", default="wrk-close",
                    choices=["wrk-close", "wrk-ka", "iperf1", "iperf8"])
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--lb-cpu", type=int, default=1, help="-1: not pinned")
    ap.add_argument("--load-cpu", type=int, default=0, help="-1: not pinned")
    ap.add_argument("--pipe-size", type=int, default=None, help="bytes (Dataplane._tune)")
    ap.add_argument("--copy-threshold", type=int, default=None, help="bytes (Dataplane._tune)")
    ap.add_argument("--congestion-control", default=None, metavar="NAME",
                    help="TCP congestion control of both legs, as a service's "
                         "congestion_control key (listener + set_congestion_control); "
                         "default: the system's")
    ap.add_argument("--backend-congestion-control", default=None, metavar="NAME",
                    help="the backend leg's alone, as backend_congestion_control "
                         "(set_congestion_control; wins over --congestion-control there)")
    ap.add_argument("--backend-fast-open", action="store_true",
                    help="TCP Fast Open towards the backend, as a service's backend_fast_open "
                         "(set_fast_open)")
    ap.add_argument("--proxy-protocol", type=int, default=0, choices=(0, 1, 2),
                    help="a PROXY protocol header of this version ahead of each backend "
                         "connection, as a service's proxy_protocol (set_proxy_protocol); the "
                         "backend must expect it (nginx `listen ... proxy_protocol`)")
    ap.add_argument("--defer-accept", type=int, default=0, metavar="SECONDS",
                    help="TCP_DEFER_ACCEPT on the listener (0: off): connections are accepted "
                         "once the client's first bytes arrived, so fast open always has them")
    ap.add_argument("--accept-proxy", action="store_true",
                    help="accept_proxy on the service (set_accept_proxy), and wrk leads every "
                         "connection with a PROXY v1 header (wrk-close only)")
    ap.add_argument("--wrk-script-baseline", action="store_true",
                    help="wrk through the same Lua script, without the header (the pair of "
                         "--accept-proxy)")
    ap.add_argument("--source", metavar="IP",
                    help="bind every backend connection to this address first, as a service's "
                         "source key (IP_BIND_ADDRESS_NO_PORT + bind, two system calls per "
                         "connection); e.g. 127.0.0.2 for a backend on 127.0.0.1; 'client' "
                         "for transparent mode (IP_TRANSPARENT first: three system calls; wrk "
                         "on 127.0.0.1 and a loopback backend, so no routing is needed)")
    args = ap.parse_args(argv)
    if (args.accept_proxy or args.wrk_script_baseline) and args.load != "wrk-close":
        ap.error("--accept-proxy and --wrk-script-baseline need --load wrk-close")
    if args.accept_proxy and args.wrk_script_baseline:
        ap.error("--accept-proxy and --wrk-script-baseline exclude each other")
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
