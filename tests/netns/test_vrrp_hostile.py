"""Hostile input at a running VRRP node: nothing but a valid advert may change its state.

lb1 runs two masters, VI_4 (VRRPv3 over IPv4, VRID 51) and VI_6 (VRRPv3 over IPv6, VRID 52).
From the client namespace, raw Ethernet frames carry adverts with priority 254 (which would make
lb1 step down if accepted) broken in one way each: truncated, wrong checksum, TTL / hop limit
64, wrong VRID, wrong address list, wrong version, and random payloads. lb1 must stay MASTER and
count every one of them as a drop under the right reason. A final valid priority-254 advert
proves the frames do reach the node: that one makes it step down.
"""

from __future__ import annotations

import ipaddress
import json
import random
import struct
import time
from pathlib import Path

from l4lb.vrrp.announce import ETH_P_IP, ETH_P_IPV6, ethernet_header, multicast_mac, parse_mac
from l4lb.vrrp.fsm import master_down_interval_us
from l4lb.vrrp.packet import (
    VRRP_GROUP_V4,
    VRRP_GROUP_V6,
    Advert,
    encode_vrrp,
    ipv4_header,
    ipv6_header,
)

from .conftest import CLIENT4, CLIENT6, MACS, VIP4, VIP6, start_node, vrrp
from .topo import Topology

SRC4 = ipaddress.IPv4Address(CLIENT4)
SRC6 = ipaddress.IPv6Address(CLIENT6)
MAC = parse_mac(MACS["client"])


def frame4(message: bytes, ttl: int = 255, ident: int = 1) -> bytes:
    ip = ipv4_header(SRC4, VRRP_GROUP_V4, len(message), ident=ident, ttl=ttl)
    return ethernet_header(multicast_mac(VRRP_GROUP_V4), MAC, ETH_P_IP) + ip + message


def frame6(message: bytes, hop_limit: int = 255) -> bytes:
    ip = ipv6_header(SRC6, VRRP_GROUP_V6, len(message), hop_limit=hop_limit)
    return ethernet_header(multicast_mac(VRRP_GROUP_V6), MAC, ETH_P_IPV6) + ip + message


def advert4(**kw: object) -> bytes:
    fields: dict[str, object] = {"version": 3, "vrid": 51, "priority": 254, "interval_cs": 10,
                                 "addresses": (ipaddress.IPv4Address("192.0.2.100"),),
                                 "src": SRC4, "dst": VRRP_GROUP_V4}
    fields.update(kw)
    return encode_vrrp(Advert(**fields))  # type: ignore[arg-type]


def advert6(**kw: object) -> bytes:
    fields: dict[str, object] = {"version": 3, "vrid": 52, "priority": 254, "interval_cs": 10,
                                 "addresses": (ipaddress.IPv6Address("2001:db8::100"),),
                                 "src": SRC6, "dst": VRRP_GROUP_V6}
    fields.update(kw)
    return encode_vrrp(Advert(**fields))  # type: ignore[arg-type]


def bad_checksum(message: bytes) -> bytes:
    checksum = struct.unpack("!H", message[6:8])[0] ^ 0x0101
    return message[:6] + struct.pack("!H", checksum) + message[8:]


def inject(topo: Topology, frames: list[bytes], tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps([f.hex() for f in frames]))
    node = topo.python("client", "inject.py", "eth0", str(path), name=f"inject-{name}")
    ev = node.wait_for(lambda e: e.get("event") == "sent", 20)
    assert ev["count"] == len(frames)


def test_hostile_packets_are_counted_and_ignored(pair: Topology, tmp_path: Path) -> None:
    interval = 0.1
    lb1 = start_node(pair, "lb1",
                     vrrp(name="VI_4", virtual_router_id=51, vips=[VIP4],
                          advert_interval=interval),
                     vrrp(name="VI_6", virtual_router_id=52, vips=[VIP6],
                          advert_interval=interval))
    down = master_down_interval_us(3, 100, 100_000) / 1e6
    for name in ("VI_4", "VI_6"):
        lb1.wait_for(lambda e, n=name: e.get("event") == "state" and e.get("name") == n
                     and e.get("state") == "MASTER", down + 2)
    rng = random.Random(5798)
    expected4 = {"truncated": 5, "checksum": 5, "ttl": 5, "vrid": 5, "addr_list": 5,
                 "version": 5}
    frames4: list[bytes] = []
    frames4 += [frame4(advert4()[:6]) for _ in range(5)]
    frames4 += [frame4(bad_checksum(advert4())) for _ in range(5)]
    frames4 += [frame4(advert4(), ttl=64) for _ in range(5)]
    frames4 += [frame4(advert4(vrid=52)) for _ in range(5)]
    frames4 += [frame4(advert4(addresses=(ipaddress.IPv4Address("192.0.2.99"),)))
                for _ in range(5)]
    frames4 += [frame4(advert4(version=2, interval_cs=100)) for _ in range(5)]
    randoms4 = [frame4(rng.randbytes(rng.randrange(0, 64))) for _ in range(30)]
    expected6 = {"truncated": 5, "checksum": 5, "ttl": 5, "vrid": 5}
    frames6: list[bytes] = []
    frames6 += [frame6(advert6()[:7]) for _ in range(5)]
    frames6 += [frame6(bad_checksum(advert6())) for _ in range(5)]
    frames6 += [frame6(advert6(), hop_limit=64) for _ in range(5)]
    frames6 += [frame6(advert6(vrid=53)) for _ in range(5)]
    randoms6 = [frame6(rng.randbytes(rng.randrange(0, 64))) for _ in range(30)]
    since = len(lb1.events)
    inject(pair, frames4 + randoms4 + frames6 + randoms6, tmp_path, "hostile")
    time.sleep(0.3)
    status = {s["name"]: s for s in lb1.request_status()["instances"]}
    lb1.drain()
    assert not [e for e in lb1.events[since:] if e.get("event") == "state"], \
        "a hostile packet changed the state"
    for name, expected, total in (("VI_4", expected4, len(frames4) + len(randoms4)),
                                  ("VI_6", expected6, len(frames6) + len(randoms6))):
        st = status[name]
        assert st["state"] == "MASTER"
        assert st["counters"]["adverts_received"] == 0
        drops = st["counters"]["drops"]
        for reason, count in expected.items():
            assert drops[reason] >= count, (name, reason, drops)
        assert sum(drops.values()) == total, (name, drops)

    # The control: one valid priority-254 advert per family makes each instance step down.
    since = len(lb1.events)
    inject(pair, [frame4(advert4()), frame6(advert6())], tmp_path, "valid")
    for name in ("VI_4", "VI_6"):
        ev = lb1.wait_for(lambda e, n=name: e.get("event") == "state" and e.get("name") == n
                          and e.get("state") == "BACKUP", 2, since)
        assert "higher priority advert" in ev["reason"] and "(254 > 100)" in ev["reason"]
    status = {s["name"]: s for s in lb1.request_status()["instances"]}
    assert status["VI_4"]["counters"]["adverts_received"] == 1
    assert status["VI_6"]["counters"]["adverts_received"] == 1
    # ... and, hearing nothing more, take over again after Master_Down_Interval.
    for name in ("VI_4", "VI_6"):
        lb1.wait_for(lambda e, n=name: e.get("event") == "state" and e.get("name") == n
                     and e.get("state") == "MASTER", down + 2, since)
