"""Two l4lb VRRP nodes in namespaces: election, VIP ownership, failover, preemption, tracking.

lb1 (priority 100) and lb2 (priority 90) run tests/netns/vrrp_node.py, each in its own
namespace on one bridge. Failover times are measured against the state machine's own numbers:
a killed master is replaced Master_Down_Interval after the last advert the backup heard, a
gracefully stopped one Skew_Time after its priority-0 advert.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from l4lb.vrrp.fsm import master_down_interval_us, skew_time_us

from .conftest import LB1_4, LB2_4, VIP4, VIP6, start_node, vrrp
from .topo import Topology

VIPS = {VIP4, VIP6}
SLACK = 0.06  # seconds: loop wake-up + process scheduling on a busy 2-CPU machine


def mdi(priority: int, interval: float, version: int = 3) -> float:
    return master_down_interval_us(version, priority, round(interval * 1e6)) / 1e6


def skew(priority: int, interval: float, version: int = 3) -> float:
    return skew_time_us(version, priority, round(interval * 1e6)) / 1e6


def only_on(topo: Topology, owner: str, other: str, timeout: float) -> None:
    """Wait until the VIPs are on `owner` and not on `other`."""
    topo.wait_addresses(owner, VIPS, set(), timeout)
    topo.wait_addresses(other, set(), VIPS, timeout)


@pytest.mark.parametrize("interval", [1.0, 0.1], ids=["1s", "100ms"])
def test_election_kill_preempt_graceful(pair: Topology, interval: float,
                                        measure: Callable[[str, str], None]) -> None:
    # Election: both start together, the higher priority wins, VIPs only on the master.
    n1 = start_node(pair, "lb1", vrrp(priority=100, advert_interval=interval))
    n2 = start_node(pair, "lb2", vrrp(priority=90, advert_interval=interval))
    n1.state_event("MASTER", mdi(100, interval) + 2)
    only_on(pair, "lb1", "lb2", 2)
    # (lb2 may have started after lb1 took over: wait for the first advert it hears)
    status2 = n2.wait_status(lambda st: st["master"] is not None, 3 * interval + 1)
    assert status2["state"] == "BACKUP"
    assert status2["master"] == LB1_4

    # SIGKILL the master: lb2 takes over Master_Down_Interval after the last advert it heard.
    since = len(n2.events)
    killed = time.monotonic()
    n1.kill()
    ev = n2.state_event("MASTER", mdi(90, interval) + 2, since)
    after_last = ev["t"] - ev["last_advert_at"]
    assert mdi(90, interval) - 0.002 <= after_last <= mdi(90, interval) + SLACK, after_last
    assert ev["t"] - killed <= mdi(90, interval) + SLACK
    measure(f"l4lb-l4lb kill failover, {interval:g}s adverts",
            f"{ev['t'] - killed:.3f}s after SIGKILL, {after_last:.3f}s after the last advert "
            f"(Master_Down_Interval {mdi(90, interval):.3f}s)")
    pair.wait_addresses("lb2", VIPS, set(), 1)

    # Restart lb1: it clears the VIPs the killed process left, then preempts lb2.
    since2 = len(n2.events)
    n1 = start_node(pair, "lb1", vrrp(priority=100, advert_interval=interval), name="lb1b")
    ev1 = n1.state_event("MASTER", mdi(100, interval) + 2)
    assert "preempting lower priority" in ev1["reason"]
    back = n2.state_event("BACKUP", 2, since2)
    assert "higher priority" in back["reason"]
    only_on(pair, "lb1", "lb2", 2)

    # Graceful stop (SIGTERM -> priority 0): lb2 takes over after Skew_Time.
    since = len(n2.events)
    n1.signal(signal.SIGTERM)
    ev = n2.state_event("MASTER", 3, since)
    assert ev["last_advert_priority"] == 0
    after_zero = ev["t"] - ev["last_advert_at"]
    assert skew(90, interval) - 0.002 <= after_zero <= skew(90, interval) + SLACK, after_zero
    n1.wait_for(lambda e: e.get("event") == "stopped", 5)
    assert n1.proc.wait(5) == 0
    only_on(pair, "lb2", "lb1", 2)
    measure(f"l4lb-l4lb graceful failover, {interval:g}s adverts",
            f"{after_zero:.3f}s after the priority-0 advert (Skew_Time {skew(90, interval):.3f}s)")


def test_no_preempt(pair: Topology) -> None:
    interval = 0.1
    n2 = start_node(pair, "lb2", vrrp(priority=90, advert_interval=interval))
    n2.state_event("MASTER", mdi(90, interval) + 2)
    n1 = start_node(pair, "lb1", vrrp(priority=100, advert_interval=interval, preempt=False))
    n1.state_event("BACKUP", 2)
    time.sleep(3 * mdi(100, interval))  # three times what a preempting node would wait
    status = n1.request_status()["instances"][0]
    assert status["state"] == "BACKUP" and status["master"] == LB2_4
    assert status["counters"]["adverts_received"] >= 8
    assert n2.request_status()["instances"][0]["state"] == "MASTER"
    only_on(pair, "lb2", "lb1", 1)


def test_ipv6_instance(pair: Topology) -> None:
    """VRRPv3 over IPv6: link-local sources, ff02::12, the IPv6 VIP advertised."""
    interval = 0.1
    cfg = {"vips": [VIP6, VIP4], "advert_interval": interval}
    n1 = start_node(pair, "lb1", vrrp(priority=100, **cfg))
    n2 = start_node(pair, "lb2", vrrp(priority=90, **cfg))
    n1.state_event("MASTER", mdi(100, interval) + 2)
    only_on(pair, "lb1", "lb2", 2)
    status2 = n2.wait_status(lambda st: st["master"] is not None, 1)
    assert status2["family"] == 6 and status2["master"].startswith("fe80::")
    assert status2["counters"]["adverts_received"] > 0
    since = len(n2.events)
    n1.kill()
    n2.state_event("MASTER", mdi(90, interval) + 2, since)
    pair.wait_addresses("lb2", VIPS, set(), 1)


def test_unicast_peers(pair: Topology) -> None:
    interval = 0.1
    n1 = start_node(pair, "lb1", vrrp(priority=100, advert_interval=interval,
                                      unicast_peers=[LB2_4]))
    n2 = start_node(pair, "lb2", vrrp(priority=90, advert_interval=interval,
                                      unicast_peers=[LB1_4]))
    n1.state_event("MASTER", mdi(100, interval) + 2)
    only_on(pair, "lb1", "lb2", 2)
    status2 = n2.wait_status(lambda st: st["master"] is not None, 1)
    assert status2["mode"] == "unicast" and status2["master"] == LB1_4
    since = len(n2.events)
    n1.signal(signal.SIGTERM)
    ev = n2.state_event("MASTER", 2, since)
    assert ev["last_advert_priority"] == 0
    pair.wait_addresses("lb2", VIPS, set(), 1)


def _second_link(topo: Topology, host: str) -> None:
    """A veth pair eth1/eth1p inside host's namespace (a tracked link we can pull)."""
    ns = topo.ns(host)
    topo.exec(ns, "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
    topo.exec(ns, "ip", "link", "set", "eth1", "up")
    topo.exec(ns, "ip", "link", "set", "eth1p", "up")


def test_interface_tracking(pair: Topology) -> None:
    interval = 0.1
    _second_link(pair, "lb1")
    n1 = start_node(pair, "lb1", vrrp(priority=100, advert_interval=interval,
                                      track_interfaces=["eth1"]))
    n2 = start_node(pair, "lb2", vrrp(priority=90, advert_interval=interval))
    n1.state_event("MASTER", mdi(100, interval) + 2)
    since1, since2 = len(n1.events), len(n2.events)
    pair.exec(pair.ns("lb1"), "ip", "link", "set", "eth1p", "down")  # eth1 loses carrier
    fault = n1.state_event("FAULT", 3, since1)
    assert "interface eth1 down" in fault["reason"]
    ev = n2.state_event("MASTER", 2, since2)
    assert ev["last_advert_priority"] == 0  # the master resigned on its way into FAULT
    only_on(pair, "lb2", "lb1", 2)
    since1 = len(n1.events)
    pair.exec(pair.ns("lb1"), "ip", "link", "set", "eth1p", "up")
    n1.state_event("BACKUP", 3, since1)
    n1.state_event("MASTER", mdi(100, interval) + 2, since1)  # and preempts again
    only_on(pair, "lb1", "lb2", 2)
    status = n1.request_status()["instances"][0]
    assert status["tracking"]["interfaces"] == {"eth0": True, "eth1": True}
    assert status["faults"] == []


def test_service_tracking_and_notify(pair: Topology, tmp_path: Path) -> None:
    interval = 0.1
    log = f"{tmp_path}/notify.log"
    script = f"{tmp_path}/notify.sh"
    with open(script, "w") as f:
        f.write(f'#!/bin/sh\necho "$@" >> {log}\n')
    os.chmod(script, 0o755)
    track = [{"service": "web", "weight": -50}]
    n1 = start_node(pair, "lb1", vrrp(priority=100, advert_interval=interval,
                                      track_services=track, notify=script))
    n2 = start_node(pair, "lb2", vrrp(priority=90, advert_interval=interval))
    n1.state_event("MASTER", mdi(100, interval) + 2)
    since1 = len(n1.events)
    n1.send("track web 0")  # web has no healthy backend: 100 - 50 = 50 < 90
    n2.state_event("MASTER", 2)
    n1.state_event("BACKUP", 2, since1)
    only_on(pair, "lb2", "lb1", 2)
    status = n1.request_status()["instances"][0]
    assert status["effective_priority"] == 50
    assert status["tracking"]["services"] == {"web": {"healthy": False, "weight": -50}}
    n1.send("track web 1")
    n1.state_event("MASTER", mdi(100, interval) + 2, since1 + 1)
    only_on(pair, "lb1", "lb2", 2)
    n1.signal(signal.SIGTERM)
    n1.wait_for(lambda e: e.get("event") == "stopped", 5)
    with open(log) as f:
        lines = f.read().splitlines()
    assert lines == ["INSTANCE VI_1 BACKUP 100", "INSTANCE VI_1 MASTER 100",
                     "INSTANCE VI_1 BACKUP 50", "INSTANCE VI_1 MASTER 100",
                     "INSTANCE VI_1 STOP 100"], lines


def test_start_fails_without_the_interface(pair: Topology) -> None:
    node = pair.python("lb1", "vrrp_node.py",
                       '{"instances": [{"name": "VI_1", "interface": "nosuch0", '
                       '"virtual_router_id": 51, "vips": ["192.0.2.100/24"]}]}')
    ev = node.wait_for(lambda e: e.get("event") in ("ready", "error"), 10)
    assert ev["event"] == "error" and "no interface named nosuch0" in ev["message"]
    assert node.proc.wait(5) == 1
