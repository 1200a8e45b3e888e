"""The table digest check between two VRRP nodes in namespaces: agree, differ, agree again.

Each node (tests/netns/digest_node.py) runs one real VRRP instance (100 ms adverts, lb1
priority 100, lb2 90) and a DigestCheck with a short interval and grace, with a table digest the
test sets through stdin (what a publication does in the daemon). Checked, for a multicast IPv4
instance (where the master only learns the backup from the backup's messages), a unicast one
and a multicast IPv6 one (link-local sources):

- equal digests: both nodes report agreement and log no warning, even after several graces;
- one node changes its digest: BOTH warn, no sooner than the grace and within grace plus one
  interval (plus scheduling slack), once each, naming the peer and both digests;
- the digests are equal again: both log the info line at once (the change is sent at once);
- garbage and foreign datagrams to the port are counted by reason and change nothing.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from l4lb.vrrp.digestcheck import PORT, Message

from .conftest import CLIENT4, LB1_4, LB2_4, VIP4, VIP6, vrrp
from .topo import Event, Node, Topology, child_env

INTERVAL = 0.25  # seconds between two messages
GRACE = 1.0  # seconds a difference must last to be a warning
SLACK = 0.6  # scheduling and start-up slack on top of the protocol's own bound
A, B = "3f0c9a1e22b4d6f1", "8a1b2c3d4e5f6071"


def start(topo: Topology, host: str, instance: dict[str, Any], digest: str,
          generation: int = 1) -> Node:
    spec = {"instance": instance, "generation": generation, "digest": digest,
            "check": {"interval": INTERVAL, "grace": GRACE}}
    node = topo.python(host, "digest_node.py", json.dumps(spec), name=host)
    node.wait_for(lambda e: e.get("event") in ("ready", "error"), 15)
    errors = [e for e in node.events if e.get("event") == "error"]
    assert not errors, f"{host}: {errors[0]['message']}\n{node.stderr()}"
    return node


def status(node: Node) -> dict[str, Any]:
    since = len(node.events)
    node.send("status")
    event = node.wait_for(lambda e: e.get("event") == "status", 5, since)
    check: dict[str, Any] = event["check"]
    return check


def wait_check(node: Node, match: Callable[[dict[str, Any]], bool], timeout: float) -> \
        dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        check = status(node)
        if match(check):
            return check
        if time.monotonic() >= deadline:
            raise AssertionError(f"{node.name}: digest check never matched: {check}")
        time.sleep(0.05)


def agreeing(peer: str) -> Callable[[dict[str, Any]], bool]:
    def match(check: dict[str, Any]) -> bool:
        view = check["instances"]["VI_1"]
        return bool(view["agreement"] == "yes" and
                    [p["address"] for p in view["peers"]] == [peer])
    return match


def logs(node: Node, text: str, level: str | None = None, since: int = 0) -> list[Event]:
    """The node's log lines so far (from event index `since`) containing `text`."""
    node.drain()
    return [e for e in node.events[since:] if e.get("event") == "log" and text in e["message"]
            and (level is None or e["level"] == level)]


def wait_log(node: Node, text: str, timeout: float, since: int = 0) -> Event:
    return node.wait_for(lambda e: e.get("event") == "log" and text in e["message"], timeout,
                         since)


def publish(node: Node, generation: int, digest: str) -> float:
    """Set the node's digest; the node's monotonic time of the publication."""
    since = len(node.events)
    node.send(f"digest {generation} {digest}")
    event = node.wait_for(lambda e: e.get("event") == "published", 5, since)
    return float(event["t"])


def differ_then_agree(lb1: Node, lb2: Node, peer1: str, peer2: str,
                      measure: Callable[[str, str], None], label: str) -> None:
    """lb2 changes its digest: both warn within the bound, once; then it changes back."""
    marks = (len(lb1.events), len(lb2.events))
    t0 = publish(lb2, 8, B)
    bound = GRACE + INTERVAL + SLACK
    w1 = wait_log(lb1, "table digest differs", bound + 1, marks[0])
    w2 = wait_log(lb2, "table digest differs", bound + 1, marks[1])
    late = [w1["t"] - t0, w2["t"] - t0]
    measure(f"digest check ({label}): warning after a change on lb2 (grace {GRACE}s, "
            f"interval {INTERVAL}s)", f"lb1 {late[0]:.2f}s, lb2 {late[1]:.2f}s")
    for delay in late:
        assert GRACE - 0.05 <= delay <= bound, late
    assert w1["level"] == w2["level"] == "WARNING"
    assert w1["message"] == (f"vrrp VI_1: table digest differs from peer {peer2} (ours {A} "
                             f"generation 1, theirs {B} generation 8): the nodes may send "
                             "clients to different backends")
    assert f"from peer {peer1} (ours {B} generation 8, theirs {A} generation 1)" in \
        w2["message"]
    time.sleep(GRACE + 2 * INTERVAL)  # the same difference: no second warning
    for node, mark in zip((lb1, lb2), marks, strict=True):
        assert len(logs(node, "table digest differs", since=mark)) == 1
        assert status(node)["instances"]["VI_1"]["agreement"] == "no"
    marks = (len(lb1.events), len(lb2.events))
    t1 = publish(lb2, 9, A)
    i1 = wait_log(lb1, "table digest matches peer", INTERVAL + SLACK + 1, marks[0])
    i2 = wait_log(lb2, "table digest matches peer", INTERVAL + SLACK + 1, marks[1])
    assert i1["level"] == i2["level"] == "INFO"
    assert peer2 in i1["message"] and peer1 in i2["message"]
    back = [i1["t"] - t1, i2["t"] - t1]
    measure(f"digest check ({label}): info line after the digests agree again",
            f"lb1 {back[0]:.2f}s, lb2 {back[1]:.2f}s")
    assert max(back) <= INTERVAL + SLACK, back
    for node, peer in ((lb1, peer2), (lb2, peer1)):
        wait_check(node, agreeing(peer), 2)


def test_multicast_pair_agrees_then_both_warn_then_recover(
        pair: Topology, measure: Callable[[str, str], None]) -> None:
    settings = vrrp(advert_interval=0.1)
    lb1 = start(pair, "lb1", {**settings, "priority": 100}, A)
    lb2 = start(pair, "lb2", {**settings, "priority": 90}, A)
    lb1.wait_for(lambda e: e.get("event") == "state" and e["state"] == "MASTER", 5)
    # the backup sends to the master it hears; the master learns the backup from that
    c1 = wait_check(lb1, agreeing(LB2_4), 3)
    c2 = wait_check(lb2, agreeing(LB1_4), 3)
    assert c1["instances"]["VI_1"]["targets"] == [LB2_4]
    assert LB1_4 in c2["instances"]["VI_1"]["targets"]
    assert c1["counters"]["replies"] >= 1
    time.sleep(GRACE + 2 * INTERVAL)  # equal digests: still no warning after the grace
    for node in (lb1, lb2):
        assert logs(node, "differs") == []
        assert logs(node, "", "WARNING") == []
        assert status(node)["instances"]["VI_1"]["agreement"] == "yes"
    differ_then_agree(lb1, lb2, LB1_4, LB2_4, measure, "multicast IPv4")

    # garbage and a foreign-version message from the client: counted, ignored
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for payload in (b'x', b'l4dg' + bytes(60), bytes.fromhex(sys.argv[1]), b'z' * 900):\n"
        f"    s.sendto(payload, ('{LB1_4}', {PORT}))\n")
    v2 = bytearray(Message(51, "VI_1", ipaddress.ip_address(CLIENT4), 1, A).encode())
    v2[4] = 2
    proc = subprocess.run(["ip", "netns", "exec", pair.ns("client"), sys.executable, "-c",
                           code, v2.hex()], capture_output=True, text=True, timeout=10,
                          env=child_env())
    assert proc.returncode == 0, proc.stderr
    check = wait_check(lb1, lambda c: sum(c["counters"]["drops"].values()) >= 4, 3)
    drops = {k: v for k, v in check["counters"]["drops"].items() if v}
    assert drops == {"size": 2, "version": 2}, drops  # b'l4dg'+60 zeros: version 0
    assert [p["address"] for p in check["instances"]["VI_1"]["peers"]] == [LB2_4]
    assert check["instances"]["VI_1"]["agreement"] == "yes"
    assert lb1.proc.poll() is None


def test_unicast_pair_that_starts_different_warns_on_both(
        pair: Topology, measure: Callable[[str, str], None]) -> None:
    settings = vrrp(advert_interval=0.1, vips=[VIP4])
    lb1 = start(pair, "lb1", {**settings, "priority": 100, "unicast_peers": [LB2_4]}, A)
    lb2 = start(pair, "lb2", {**settings, "priority": 90, "unicast_peers": [LB1_4]}, B, 3)
    t0 = time.monotonic()
    for node, peer, ours, theirs in ((lb1, LB2_4, A, B), (lb2, LB1_4, B, A)):
        warn = wait_log(node, "table digest differs", GRACE + INTERVAL + SLACK + 1)
        assert f"from peer {peer} (ours {ours}" in warn["message"]
        assert f"theirs {theirs}" in warn["message"]
    measure("digest check (unicast): warning on both after both started different",
            f"{time.monotonic() - t0:.2f}s after both were ready")
    # a well-formed message from an address not in unicast_peers is refused
    foreign = Message(51, "VI_1", ipaddress.ip_address(CLIENT4), 1, A).encode()
    sock_code = ("import socket, sys\n"
                 "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                 f"s.sendto(bytes.fromhex(sys.argv[1]), ('{LB1_4}', {PORT}))\n")
    subprocess.run(["ip", "netns", "exec", pair.ns("client"), sys.executable, "-c", sock_code,
                    foreign.hex()], check=True, timeout=10, env=child_env())
    check = wait_check(lb1, lambda c: c["counters"]["drops"]["source"] == 1, 3)
    assert [p["address"] for p in check["instances"]["VI_1"]["peers"]] == [LB2_4]
    since = len(lb1.events), len(lb2.events)
    publish(lb2, 4, A)
    wait_log(lb1, "table digest matches peer 192.0.2.12 again", INTERVAL + SLACK + 1, since[0])
    wait_log(lb2, "table digest matches peer 192.0.2.11 again", INTERVAL + SLACK + 1, since[1])


def test_ipv6_multicast_pair_over_link_local_addresses(
        pair: Topology, measure: Callable[[str, str], None]) -> None:
    settings = vrrp(advert_interval=0.1, vips=[VIP6])
    lb1 = start(pair, "lb1", {**settings, "priority": 100}, A)
    lb2 = start(pair, "lb2", {**settings, "priority": 90}, A)
    lb1.wait_for(lambda e: e.get("event") == "state" and e["state"] == "MASTER", 5)
    v1, v2 = source_address(lb1), source_address(lb2)  # link-local, as the peers see them
    assert v1.startswith("fe80::") and v2.startswith("fe80::")
    wait_check(lb1, agreeing(v2), 3)
    wait_check(lb2, agreeing(v1), 3)
    differ_then_agree(lb1, lb2, v1, v2, measure, "multicast IPv6")


def source_address(node: Node) -> str:
    """The VRRP source address of the node's instance."""
    since = len(node.events)
    node.send("status")
    event = node.wait_for(lambda e: e.get("event") == "status", 5, since)
    return str(event["vrrp"]["address"])
