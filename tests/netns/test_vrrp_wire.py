"""What a VRRP node puts on the wire, captured from the client namespace: GARP/NA bursts on
takeover, and the timing and IP header of its adverts while its event loop is busy."""

from __future__ import annotations

import ipaddress
import itertools
import os
import shutil
import statistics
import struct
from collections.abc import Callable

import pytest

from l4lb.vrrp.announce import announce, parse_mac
from l4lb.vrrp.fsm import master_down_interval_us
from l4lb.vrrp.packet import decode_ipv4

from .conftest import LB1_4, MACS, VIP4, VIP6, start_node, vrrp
from .topo import Event, Node, Topology

LB1_MAC = parse_mac(MACS["lb1"])
# The timed node runs with SCHED_FIFO priority 10: this 2-CPU machine is shared with other
# work, and the test measures the node's event loop (its own probes included), not how long
# the kernel lets other processes hold the CPU. Without chrt the node runs normally.
REALTIME = ("chrt", "--fifo", "10") if shutil.which("chrt") else ()


def start_capture(topo: Topology, seconds: float) -> Node:
    cap = topo.python("client", "capture.py", "eth0", str(seconds), name="capture")
    cap.wait_for(lambda e: e.get("event") == "ready", 10)
    return cap


def frames(cap: Node) -> list[tuple[float, bytes]]:
    cap.drain()
    return [(e["ts"], bytes.fromhex(e["hex"])) for e in cap.events if e.get("event") == "frame"]


def test_garp_and_na_bursts_on_takeover(pair: Topology) -> None:
    vip2 = "192.0.2.101/24"
    repeat = 3
    cap = start_capture(pair, 12)
    lb1 = start_node(pair, "lb1", vrrp(vips=[VIP4, vip2, VIP6], garp_repeat=repeat,
                                       advert_interval=0.1))
    lb1.state_event("MASTER", 3)
    expected = {announce(LB1_MAC, ipaddress.ip_interface(v).ip): v for v in (VIP4, vip2, VIP6)}

    def announcements() -> list[tuple[float, bytes]]:
        return [(ts, f) for ts, f in frames(cap) if
                any(f[:len(a)] == a and not any(f[len(a):]) for a in expected)]

    # Two bursts: at takeover and garp_master_delay (5 s) later, `repeat` frames per VIP each.
    cap.wait_for(lambda e: len(announcements()) >= 2 * repeat * len(expected), 9)
    seen = announcements()
    assert len(seen) == 2 * repeat * len(expected), len(seen)
    for announcement, vip in expected.items():
        times = sorted(ts for ts, f in seen if f[:len(announcement)] == announcement)
        assert len(times) == 2 * repeat, vip
        first, second = times[:repeat], times[repeat:]
        assert first[-1] - first[0] < 0.05 and second[-1] - second[0] < 0.05, vip
        assert 4.9 <= second[0] - first[0] <= 5.2, (vip, second[0] - first[0])
    garps = [f for _, f in seen if f[12:14] == b"\x08\x06"]
    nas = [f for _, f in seen if f[12:14] == b"\x86\xdd"]
    assert len(garps) == 2 * 2 * repeat and len(nas) == 2 * repeat
    counters = lb1.request_status()["instances"][0]["counters"]
    assert counters["garp_sent"] == 2 * 2 * repeat and counters["na_sent"] == 2 * repeat


def _p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))]


def _steal_ms() -> float:
    """CPU time the hypervisor took from this machine's vCPUs so far (/proc/stat), in ms."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) * 1000 / os.sysconf("SC_CLK_TCK")


def _adverts_from_lb1(cap: Node) -> list[tuple[float, bytes]]:
    out = []
    for ts, f in frames(cap):
        if f[6:12] == LB1_MAC and f[12:14] == b"\x08\x00" and f[23] == 112:
            total = struct.unpack("!H", f[16:18])[0]
            out.append((ts, f[14:14 + total]))
    return out


@pytest.mark.parametrize("load", [None, {"backends": 1000, "interval": 0.1}],
                         ids=["idle", "10k-health-probes-per-s"])
def test_advert_timing(pair: Topology, load: dict[str, float] | None,
                       measure: Callable[[str, str], None]) -> None:
    interval = 0.1
    seconds = 3.0
    lb1 = start_node(pair, "lb1", vrrp(advert_interval=interval), load=load,
                     prefix=REALTIME)
    lb1.state_event("MASTER", master_down_interval_us(3, 100, 100_000) / 1e6 + 2)
    steal_before = _steal_ms()
    cap = start_capture(pair, seconds)
    cap.wait_for(lambda e: e.get("event") == "done", seconds + 5)
    steal = _steal_ms() - steal_before
    adverts = _adverts_from_lb1(cap)
    assert len(adverts) >= seconds / interval - 2, len(adverts)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(adverts)]
    errors = [abs(g - interval) for g in gaps]
    status: Event = lb1.request_status()
    if load is not None:
        probes = status["checker"]["probes"]
        # the loop really was busy: at least half the probes the schedule asks for
        assert probes >= seconds / load["interval"] * load["backends"] / 2, status["checker"]
    what = "idle" if load is None else f"1000 backends probed every {load['interval']:g}s"
    measure(f"advert intervals at 100 ms, {what}",
            f"n={len(gaps)}, median {statistics.median(gaps) * 1000:.2f} ms, "
            f"90th percentile {_p90(errors) * 1000:.2f} ms, "
            f"worst deviation {max(errors) * 1000:.2f} ms, "
            f"timer late max {status['instances'][0]['timer_late_max_ms']:.2f} ms, "
            f"CPU stolen by the hypervisor {steal:.0f} ms")
    shown = ([round(g * 1000, 2) for g in gaps], f"steal {steal:.0f} ms")
    # The schedule holds (no drift), and the loop answers its timer within a few ms nearly every
    # time, even while it runs 10,000 probes a second.
    assert abs(statistics.median(gaps) - interval) <= 0.003, shown
    assert _p90(errors) <= 0.008, shown
    # A single late advert is bounded by what the loop does, not by the host: on a shared VM a
    # stalled vCPU (steal, which SCHED_FIFO cannot prevent) once delayed one advert by 23 ms in CI
    # while our callbacks stay below about 5 ms each. 50 ms is half an interval: far inside the
    # master-down window (3 intervals + skew), which is what a late advert puts at risk.
    assert max(errors) <= 0.050, shown
    # Every advert is keepalived's IPv4 framing: TOS 0xc0, TTL 255, DF clear, ids counting up.
    idents = []
    for _, packet in adverts:
        advert = decode_ipv4(packet)
        assert advert.src == ipaddress.IPv4Address(LB1_4) and advert.priority == 100
        assert packet[1] == 0xC0 and packet[8] == 255 and packet[6:8] == b"\0\0"
        idents.append(struct.unpack("!H", packet[4:6])[0])
    assert all(b == a + 1 for a, b in itertools.pairwise(idents)), idents


def test_garp_refresh_while_master(pair: Topology) -> None:
    lb1 = start_node(pair, "lb1", vrrp(vips=[VIP4], garp_repeat=1, garp_refresh=0.2,
                                       advert_interval=0.1))
    lb1.state_event("MASTER", 3)
    cap = start_capture(pair, 1.5)
    cap.wait_for(lambda e: e.get("event") == "done", 5)
    garp = announce(LB1_MAC, ipaddress.ip_interface(VIP4).ip)
    times = [ts for ts, f in frames(cap) if f[:len(garp)] == garp]
    assert 6 <= len(times) <= 8, times  # one every 0.2 s for 1.5 s
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.18 <= g <= 0.25 for g in gaps), gaps
