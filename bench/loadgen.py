"""The load generators' command lines and the parsers of what they print. Pure: no I/O.

bulk: iperf3 -J (JSON). HTTP: wrk with --latency (text). UDP: bench/csrc/udpgen (JSON).
Each parser returns plain numbers; a parser never guesses: output it cannot read raises
ValueError, which the harness records as a failed run.
"""

from __future__ import annotations

import json
import re
from typing import Any

HOST = "127.0.0.1"

_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def iperf3_argv(port: int, seconds: int, streams: int) -> list[str]:
    """iperf3 client: JSON output, bounded connect."""
    return ["iperf3", "-c", HOST, "-p", str(port), "-t", str(seconds), "-P", str(streams), "-J",
            "--connect-timeout", "3000"]


def iperf3_server_argv(port: int) -> list[str]:
    """iperf3 server bound to loopback."""
    return ["iperf3", "-s", "-B", HOST, "-p", str(port)]


def parse_iperf3(text: str) -> dict[str, float]:
    """bytes, seconds, gbps (received), retransmits (sender side), sender/receiver CPU %."""
    try:
        data: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"iperf3 printed no JSON: {text[:200]!r}") from exc
    if "error" in data:
        raise ValueError(f"iperf3: {data['error']}")
    end = data.get("end") or {}
    recv = end.get("sum_received")
    sent = end.get("sum_sent") or {}
    if not recv:
        raise ValueError("iperf3 JSON has no end.sum_received")
    cpu = end.get("cpu_utilization_percent") or {}
    return {
        "bytes": float(recv["bytes"]),
        "seconds": float(recv["seconds"]),
        "gbps": float(recv["bits_per_second"]) / 1e9,
        "retransmits": float(sent.get("retransmits", 0)),
        "client_cpu_pct": float(cpu.get("host_total", 0.0)),
        "server_cpu_pct": float(cpu.get("remote_total", 0.0)),
    }


def wrk_argv(port: int, seconds: int, connections: int, close: bool) -> list[str]:
    """wrk, 1 thread, --latency; close=True sends Connection: close (a new connection per
    request)."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "2s"]
    if close:
        argv += ["-H", "Connection: close"]
    return [*argv, f"http://{HOST}:{port}/"]


def _seconds(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if not m:
        raise ValueError(f"wrk: cannot read duration {value!r}")
    return float(m.group(1)) * _UNITS_S[m.group(2)]


def parse_wrk(text: str) -> dict[str, float]:
    """requests, seconds, rps, p50/p99 latency (ms), socket errors, non-2xx responses."""
    m = re.search(r"(\d+) requests in ([\d.]+\w+), ([\d.]+)(\w+) read", text)
    if not m:
        raise ValueError(f"wrk: no request count in its output: {text[-300:]!r}")
    requests = float(m.group(1))
    seconds = _seconds(m.group(2))
    out = {"requests": requests, "seconds": seconds,
           "rps": requests / seconds if seconds > 0 else 0.0}
    for q in ("50", "99"):
        lm = re.search(rf"^\s+{q}%\s+([\d.]+\w+)\s*$", text, re.M)
        if not lm:
            raise ValueError(f"wrk: no {q}% latency in its output (was --latency given?)")
        out[f"p{q}_ms"] = _seconds(lm.group(1)) * 1e3
    errors = 0.0
    em = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if em:
        out.update({"err_connect": float(em.group(1)), "err_read": float(em.group(2)),
                    "err_write": float(em.group(3)), "err_timeout": float(em.group(4))})
        errors += sum(float(em.group(i)) for i in range(1, 5))
    nm = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non2xx"] = float(nm.group(1)) if nm else 0.0
    out["errors"] = errors + out["non2xx"]
    return out


UDP_TICK_US = 100  # udpgen's pacing tick: 30 datagrams per tick at 300k/s


def udpgen_argv(binary: str, port: int, flows: int, size: int, rate: int,
                duration_ms: int, tick_us: int = UDP_TICK_US, gso: bool = True) -> list[str]:
    """The UDP generator: flows sockets, size-byte datagrams at rate/s for duration_ms, paced
    every tick_us; gso sends each flow's share of a tick as one GSO packet (the receiver still
    gets one datagram each: see bench/csrc/udpgen.c)."""
    return [binary, HOST, str(port), str(flows), str(size), str(rate), str(duration_ms),
            str(tick_us), "1" if gso else "0"]


def parse_udpgen(text: str) -> dict[str, float]:
    """Every number udpgen prints (offered, sent, received, loss_pct, rtt_p50_us, rx_drops,
    skipped, late_ticks, max_tick, ...)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"udpgen printed no JSON: {text[:200]!r}") from exc
    return {k: float(v) for k, v in data.items()}


def udpecho_argv(binary: str, port: int, gso: bool = True) -> list[str]:
    """The UDP echo backend; gso sends a batch's replies to one peer as one GSO packet."""
    return [binary, HOST, str(port), "1" if gso else "0"]
