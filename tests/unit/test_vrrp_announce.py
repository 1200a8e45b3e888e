"""Test the GARP and unsolicited NA builders against keepalived's captured frames, byte-exact."""

from __future__ import annotations

import ipaddress
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from l4lb.vrrp.announce import (
    BROADCAST_MAC,
    announce,
    ethernet_header,
    format_mac,
    gratuitous_arp,
    multicast_mac,
    parse_mac,
    unsolicited_na,
)
from l4lb.vrrp.packet import internet_checksum, ipv6_pseudo_header

CAPTURES = Path(__file__).resolve().parent.parent / "data" / "keepalived-vrrp-captures.json"
SAMPLES: list[dict[str, Any]] = json.loads(CAPTURES.read_text())["samples"]
GARPS = [s for s in SAMPLES if "arp" in s]
NAS = [s for s in SAMPLES if "icmp6" in s]
MAC = parse_mac("02:99:00:00:00:11")
VIP4 = ipaddress.IPv4Address("10.99.0.100")
VIP6 = ipaddress.IPv6Address("fd00:99::100")


def test_captures_hold_garps_from_both_pcaps_and_nas() -> None:
    assert {s["pcap"] for s in GARPS} == {"vrrp_v2.pcap", "vrrp_v3.pcap"}
    assert len(GARPS) == 4
    assert len(NAS) == 2


@pytest.mark.parametrize("sample", GARPS, ids=lambda s: f"n{s['n']}")
def test_gratuitous_arp_matches_capture(sample: dict[str, Any]) -> None:
    arp = sample["arp"]
    assert arp["op_name"] == "request" and arp["gratuitous"]
    frame = gratuitous_arp(parse_mac(arp["sha"]), ipaddress.IPv4Address(arp["spa"]))
    assert frame.hex() == sample["frame_hex"]
    assert len(frame) == 42


@pytest.mark.parametrize("sample", NAS, ids=lambda s: f"n{s['n']}")
def test_unsolicited_na_matches_capture(sample: dict[str, Any]) -> None:
    icmp = sample["icmp6"]
    assert icmp["flags"] == {"O": True, "R": False, "S": False}
    mac = parse_mac(icmp["options"][0]["lladdr"])
    frame = unsolicited_na(mac, ipaddress.IPv6Address(icmp["target"]))
    assert frame.hex() == sample["frame_hex"]
    assert struct.unpack("!H", frame[56:58])[0] == icmp["checksum"]


def test_garp_fields() -> None:
    frame = gratuitous_arp(MAC, VIP4)
    assert frame[:6] == BROADCAST_MAC and frame[6:12] == MAC
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    assert frame[22:28] == MAC and frame[28:32] == VIP4.packed  # sender = us, the VIP
    assert frame[32:38] == BROADCAST_MAC  # keepalived's target MAC (RFC 5227 would use zeros)
    assert frame[38:42] == VIP4.packed


def test_na_router_flag_and_checksum() -> None:
    plain = unsolicited_na(MAC, VIP6)
    router = unsolicited_na(MAC, VIP6, router=True)
    assert struct.unpack("!I", plain[58:62])[0] == 0x20000000  # Override only
    assert struct.unpack("!I", router[58:62])[0] == 0xA0000000  # Router + Override
    for frame in (plain, router):
        icmp = frame[54:]
        src = ipaddress.IPv6Address(frame[22:38])
        dst = ipaddress.IPv6Address(frame[38:54])
        assert src == VIP6 and dst == ipaddress.IPv6Address("ff02::1")
        assert frame[21] == 255  # hop limit: RFC 4861 receivers drop anything else
        assert internet_checksum(ipv6_pseudo_header(src, dst, 58, len(icmp)) + icmp) == 0
    assert plain[56:58] != router[56:58]


def test_announce_dispatches_by_family() -> None:
    assert announce(MAC, VIP4) == gratuitous_arp(MAC, VIP4)
    assert announce(MAC, VIP6, router=True) == unsolicited_na(MAC, VIP6, router=True)


def test_multicast_mac_mapping() -> None:
    assert format_mac(multicast_mac(ipaddress.IPv4Address("224.0.0.18"))) == "01:00:5e:00:00:12"
    assert format_mac(multicast_mac(ipaddress.IPv4Address("239.255.128.1"))) == \
        "01:00:5e:7f:80:01"  # only the low 23 bits map
    assert format_mac(multicast_mac(ipaddress.IPv6Address("ff02::12"))) == "33:33:00:00:00:12"
    assert format_mac(multicast_mac(ipaddress.IPv6Address("ff02::1"))) == "33:33:00:00:00:01"
    with pytest.raises(ValueError, match="not a multicast"):
        multicast_mac(VIP4)


def test_mac_parsing_and_validation() -> None:
    assert parse_mac("02:99:00:00:00:1A") == bytes.fromhex("02990000001a")
    assert format_mac(parse_mac("02:99:00:00:00:1a")) == "02:99:00:00:00:1a"
    for bad in ("02:99:00:00:00", "02-99-00-00-00-11", "0299.0000.0011", "zz:99:00:00:00:11"):
        with pytest.raises(ValueError):
            parse_mac(bad)
    with pytest.raises(ValueError, match="6 bytes"):
        gratuitous_arp(b"\x02\x99", VIP4)
    with pytest.raises(ValueError, match="6 bytes"):
        unsolicited_na(b"\x02" * 7, VIP6)
    with pytest.raises(ValueError, match="6 bytes"):
        ethernet_header(BROADCAST_MAC, b"", 0x0806)
