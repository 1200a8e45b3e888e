"""A two-legged l4lb pair: the frontend VIP on eth0, a gateway VIP `dev eth1` on the backend side.

client, lb1 and lb2 share the bridge of tests/netns/conftest.py (eth0). Each balancer also has
an eth1 into a second bridge, in namespace `bk`, where the backends live; the gateway VIP
(their default route in a two-legged setup) is `dev eth1`. Both nodes run `l4lb run` with one
[[vrrp]] instance (lb1 priority 100, lb2 90, 100 ms adverts). Checked:

- the gateway VIP is on the master's eth1 only (never on eth0, never on the backup), and the
  frontend VIPs on its eth0 only; `l4lb vrrp status` shows the dev;
- a graceful stop of the master moves both to lb2; lb2's gratuitous ARP / unsolicited NA for
  the gateway VIPs is seen on the backend bridge with lb2's eth1 MAC, and not on the client
  side, where its frontend VIP is announced;
- lb1 comes back and preempts; then its backend-side link loses carrier: lb1 goes FAULT
  (eth1 is tracked because it carries a VIP) and lb2 takes both VIPs.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .conftest import VIP4, VIP6
from .topo import Node, Topology, child_env, sh

GW4, GW6 = "198.51.100.1/24", "2001:db8:2::1/64"
LEG = {"lb1": ("198.51.100.11/24", "02:00:00:00:01:11"),
       "lb2": ("198.51.100.12/24", "02:00:00:00:01:12")}
BACKEND4 = "198.51.100.21/24"
FRONT = {VIP4, VIP6}
GATEWAY = {GW4, GW6}


def l4lb(*args: str) -> list[str]:
    return [sys.executable, "-m", "l4lb", *args]


WEB = f"""
[[services]]
name = "web"
listen = ["{VIP4.split('/')[0]}:8080"]

  [[services.backends]]
  address = "{BACKEND4.split('/')[0]}:9000"
"""


def config(tmp_path: Path, host: str, priority: int, services: str = WEB) -> Path:
    """Node `host`'s file: `services`, and VI_1 with the frontend VIPs on eth0 and the
    gateway VIPs on eth1."""
    path = tmp_path / f"{host}.toml"
    path.write_text(f"""
[global]
workers = 1
control_socket = "{tmp_path / f'{host}.sock'}"
shutdown_timeout = "1s"
{services}
[[vrrp]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = {priority}
advert_interval = "100ms"
vips = ["{VIP4}", "{GW4} dev eth1", "{GW6} dev eth1", "{VIP6}"]
""")
    return path


def backend_side(topo: Topology) -> str:
    """Namespace `bk` with bridge br1; each balancer's eth1 is a port of it (port `<lb>b`)."""
    bk = topo.ns("bk")
    sh("ip", "netns", "add", bk)
    topo.namespaces.append(bk)
    topo.exec(bk, "sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0",
              "net.ipv6.conf.default.accept_dad=0")
    sh("ip", "-n", bk, "link", "add", "br1", "type", "bridge", "mcast_snooping", "0",
       "forward_delay", "0", "stp_state", "0")
    sh("ip", "-n", bk, "addr", "add", BACKEND4, "dev", "br1")
    sh("ip", "-n", bk, "link", "set", "br1", "up")
    for host, (address, mac) in LEG.items():
        ns = topo.ns(host)
        sh("ip", "-n", ns, "link", "add", "eth1", "address", mac, "type", "veth", "peer",
           "name", f"{host}b", "netns", bk)
        sh("ip", "-n", bk, "link", "set", f"{host}b", "master", "br1", "up")
        topo.exec(ns, "sysctl", "-q", "-w", "net.ipv6.conf.eth1.accept_dad=0")
        sh("ip", "-n", ns, "addr", "add", address, "dev", "eth1")
        sh("ip", "-n", ns, "link", "set", "eth1", "up")
    return bk


def wait_placement(topo: Topology, owner: str, other: str, timeout: float) -> None:
    """Until the frontend VIPs are on owner's eth0 only, the gateway VIPs on its eth1 only,
    and `other` holds none of them anywhere."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {(h, i): topo.addresses(h, i) for h in (owner, other) for i in ("eth0", "eth1")}
        if seen[owner, "eth0"] >= FRONT and seen[owner, "eth1"] >= GATEWAY and \
                not GATEWAY & seen[owner, "eth0"] and not FRONT & seen[owner, "eth1"] and \
                not (FRONT | GATEWAY) & (seen[other, "eth0"] | seen[other, "eth1"]):
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"VIPs not on {owner} as configured: {seen}")
        time.sleep(0.02)


def status(path: Path, check: bool = True) -> dict[str, Any]:
    """`l4lb vrrp status --json` of the node running `path`: its instance ({} when not
    `check` and the daemon does not answer yet, or answers before its instance has started:
    the control socket opens first)."""
    res = subprocess.run(l4lb("vrrp", "status", "--json", "-c", str(path)),
                         capture_output=True, text=True, env=child_env(), timeout=30)
    if res.returncode != 0 and not check:
        return {}
    assert res.returncode == 0, res.stderr
    instances: list[dict[str, Any]] = json.loads(res.stdout)["instances"]
    if not instances and not check:
        return {}
    assert len(instances) == 1, instances
    return instances[0]


def wait_state(path: Path, state: str, timeout: float) -> dict[str, Any]:
    """Poll the node's status (it may still be starting) until it is in `state`."""
    deadline = time.monotonic() + timeout
    while True:
        st = status(path, check=False)
        if st.get("state") == state:
            return st
        if time.monotonic() >= deadline:
            raise AssertionError(f"{path.name}: wanted {state}: {st}")
        time.sleep(0.05)


def announcements(capture: Node) -> list[tuple[str, str]]:
    """(announced address, sender MAC) of every GARP / NA the capture saw."""
    capture.drain()
    out = []
    for e in capture.events:
        if e.get("event") != "frame":
            continue
        frame = bytes.fromhex(e["hex"])
        ethertype = struct.unpack("!H", frame[12:14])[0]
        if ethertype == 0x0806:  # ARP: sender hardware 22..28, sender protocol 28..32
            out.append((".".join(str(b) for b in frame[28:32]), frame[22:28].hex(":")))
        elif ethertype == 0x86DD and frame[20] == 58 and frame[54] == 136:
            out.append((str(ipaddress.IPv6Address(frame[62:78])), frame[80:86].hex(":")))
    return out


def test_gateway_vip_on_the_backend_side(pair: Topology, tmp_path: Path) -> None:
    bk = backend_side(pair)
    conf1, conf2 = config(tmp_path, "lb1", 100), config(tmp_path, "lb2", 90)
    lb1 = pair.start("lb1", l4lb("run", "-c", str(conf1)), name="lb1-l4lb", stdin=False)
    wait_state(conf1, "MASTER", 10)
    pair.start("lb2", l4lb("run", "-c", str(conf2)), name="lb2-l4lb", stdin=False)
    wait_state(conf2, "BACKUP", 10)
    wait_placement(pair, "lb1", "lb2", 3)
    st = status(conf1)
    assert st["vips"] == [VIP4, f"{GW4} dev eth1", f"{GW6} dev eth1", VIP6]
    assert st["tracking"]["interfaces"] == {"eth0": True, "eth1": True}
    text = subprocess.run(l4lb("vrrp", "status", "-c", str(conf1)), capture_output=True,
                          text=True, env=child_env(), timeout=30).stdout
    assert f"{GW4} dev eth1" in text, text

    # Graceful stop of lb1: lb2 takes both; it announces the gateway VIPs on the backend side.
    back = pair.python("bk", "capture.py", "br1", "30", name="capture-bk")
    front = pair.python("client", "capture.py", "eth0", "30", name="capture-client")
    for cap in (back, front):
        cap.wait_for(lambda e: e.get("event") == "ready", 10)
    lb1.signal(signal.SIGTERM)
    assert lb1.proc.wait(15) == 0, lb1.stderr()
    wait_placement(pair, "lb2", "lb1", 3)
    lb2_eth1, lb2_eth0 = LEG["lb2"][1], "02:00:00:00:00:12"
    gw_ips = {GW4.split("/")[0], GW6.split("/")[0]}
    front_ips = {VIP4.split("/")[0], VIP6.split("/")[0]}
    deadline = time.monotonic() + 3
    while not gw_ips <= {a for a, _ in announcements(back)} and time.monotonic() < deadline:
        time.sleep(0.05)
    seen_back, seen_front = announcements(back), announcements(front)
    assert {(a, mac) for a, mac in seen_back if a in gw_ips} == \
        {(a, lb2_eth1) for a in gw_ips}, seen_back
    assert not front_ips & {a for a, _ in seen_back}, seen_back
    assert {(a, mac) for a, mac in seen_front if a in front_ips} == \
        {(a, lb2_eth0) for a in front_ips}, seen_front
    assert not gw_ips & {a for a, _ in seen_front}, seen_front
    for cap in (back, front):
        cap.signal(signal.SIGTERM)

    # lb1 comes back and preempts; then its backend-side link loses carrier: FAULT, and lb2
    # takes the gateway and the frontend VIPs.
    pair.start("lb1", l4lb("run", "-c", str(conf1)), name="lb1-l4lb2", stdin=False)
    wait_state(conf1, "MASTER", 10)
    wait_placement(pair, "lb1", "lb2", 3)
    sh("ip", "-n", bk, "link", "set", "lb1b", "down")
    st = wait_state(conf1, "FAULT", 3)
    assert st["faults"] == ["interface eth1 down"], st
    wait_state(conf2, "MASTER", 3)
    deadline = time.monotonic() + 3
    while True:
        on2 = pair.addresses("lb2", "eth0") | pair.addresses("lb2", "eth1")
        on1 = pair.addresses("lb1", "eth0") | pair.addresses("lb1", "eth1")
        if on2 >= (FRONT | GATEWAY) and not (FRONT | GATEWAY) & on1:
            break
        assert time.monotonic() < deadline, (on1, on2)
        time.sleep(0.02)
    # the link back: lb1 leaves FAULT and preempts again
    sh("ip", "-n", bk, "link", "set", "lb1b", "up")
    wait_state(conf1, "MASTER", 5)
    wait_placement(pair, "lb1", "lb2", 3)


def test_start_fails_without_a_vip_interface(pair: Topology) -> None:
    """The instance itself refuses a VIP dev the host lacks (the loader checks it first)."""
    node = pair.python("lb1", "vrrp_node.py", json.dumps({"instances": [
        {"name": "VI_1", "interface": "eth0", "virtual_router_id": 51,
         "vips": [VIP4, f"{GW4} dev nosuch1"]}]}))
    ev = node.wait_for(lambda e: e.get("event") in ("ready", "error"), 10)
    assert ev["event"] == "error", ev
    assert "no interface named nosuch1 (a VIP's dev)" in ev["message"]
    assert node.proc.wait(5) == 1
    assert not pair.addresses("lb1") & FRONT
