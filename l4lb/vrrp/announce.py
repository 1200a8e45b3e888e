"""Build the Ethernet frames that announce a VIP after takeover: gratuitous ARP and unsolicited NA.

Pure bytes: the I/O layer writes these frames to an AF_PACKET socket on the VIP's interface.
Both builders reproduce, byte for byte, the frames keepalived 2.2.7 sends (see the reference
captures in tests/data/keepalived-vrrp-captures.json):

- Gratuitous ARP, 42 bytes (the NIC pads to 60): broadcast destination, ARP *request* (op 1)
  with sender and target protocol address both the VIP, sender hardware address the interface
  MAC, and target hardware address ff:ff:ff:ff:ff:ff (keepalived's choice; RFC 5227 ARP
  announcements use 00:00:00:00:00:00 there, receivers ignore it either way).
- Unsolicited neighbour advertisement, 86 bytes: to 33:33:00:00:00:01 / ff02::1 (all nodes),
  IPv6 source = the VIP itself, traffic class 0, flow label 0, hop limit 255 (RFC 4861 7.1.2),
  ICMPv6 type 136 code 0 with the Override flag, Solicited clear, Router set only when the node
  forwards IPv6 (keepalived asks the kernel), the VIP as target and a target link-layer address
  option (type 2, length 1 x 8 bytes) carrying the MAC.

The source MAC is the interface's own: keepalived without `use_vmac` never uses the VRRP virtual
MAC 00:00:5e:00:01:{VRID}, and neither does l4lb.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import Final

from l4lb.vrrp.packet import internet_checksum, ipv6_header, ipv6_pseudo_header

ETH_P_IP: Final = 0x0800
ETH_P_ARP: Final = 0x0806
ETH_P_IPV6: Final = 0x86DD
IPPROTO_ICMPV6: Final = 58
ICMPV6_NEIGHBOR_ADVERT: Final = 136
ND_OPT_TARGET_LLADDR: Final = 2
ALL_NODES: Final = ipaddress.IPv6Address("ff02::1")
BROADCAST_MAC: Final = b"\xff" * 6
_NA_ROUTER: Final = 0x80000000
_NA_SOLICITED: Final = 0x40000000
_NA_OVERRIDE: Final = 0x20000000
_MAC_TEXT = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")


def parse_mac(text: str) -> bytes:
    """'02:99:00:00:00:11' as 6 bytes; ValueError if it is not that form."""
    if not _MAC_TEXT.fullmatch(text):
        raise ValueError(f"{text!r} is not a MAC address like 02:00:00:00:00:01")
    return bytes.fromhex(text.replace(":", ""))


def format_mac(mac: bytes) -> str:
    """6 bytes as 'aa:bb:cc:dd:ee:ff'."""
    _check_mac(mac)
    return ":".join(f"{b:02x}" for b in mac)


def _check_mac(mac: bytes) -> None:
    if len(mac) != 6:
        raise ValueError(f"a MAC address is 6 bytes, not {len(mac)}")


def multicast_mac(group: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """The Ethernet address a multicast IP maps to (RFC 1112 6.4, RFC 2464 7)."""
    if not group.is_multicast:
        raise ValueError(f"{group} is not a multicast address")
    if isinstance(group, ipaddress.IPv4Address):
        return b"\x01\x00\x5e" + (int(group) & 0x7FFFFF).to_bytes(3, "big")
    return b"\x33\x33" + group.packed[12:]


def ethernet_header(dst: bytes, src: bytes, ethertype: int) -> bytes:
    """A 14-byte Ethernet II header (no VLAN tag)."""
    _check_mac(dst)
    _check_mac(src)
    return dst + src + struct.pack("!H", ethertype)


def gratuitous_arp(src_mac: bytes, vip: ipaddress.IPv4Address) -> bytes:
    """The 42-byte broadcast ARP request that claims `vip` for `src_mac` (keepalived's form)."""
    _check_mac(src_mac)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, 1, src_mac, vip.packed,
                      BROADCAST_MAC, vip.packed)
    return ethernet_header(BROADCAST_MAC, src_mac, ETH_P_ARP) + arp


def unsolicited_na(src_mac: bytes, vip: ipaddress.IPv6Address, *, router: bool = False) -> bytes:
    """The 86-byte all-nodes neighbour advertisement that claims `vip` for `src_mac`.

    `router` sets the R flag: pass True when the interface forwards IPv6, as keepalived does
    (otherwise neighbours would drop this node from their default router lists).
    """
    _check_mac(src_mac)
    flags = _NA_OVERRIDE | (_NA_ROUTER if router else 0)
    option = struct.pack("!BB6s", ND_OPT_TARGET_LLADDR, 1, src_mac)
    body = struct.pack("!I16s", flags, vip.packed) + option
    icmp = struct.pack("!BBH", ICMPV6_NEIGHBOR_ADVERT, 0, 0) + body
    checksum = internet_checksum(
        ipv6_pseudo_header(vip, ALL_NODES, IPPROTO_ICMPV6, len(icmp)) + icmp)
    icmp = icmp[:2] + struct.pack("!H", checksum) + icmp[4:]
    ip = ipv6_header(vip, ALL_NODES, len(icmp), next_header=IPPROTO_ICMPV6, hop_limit=255,
                     traffic_class=0, flow_label=0)
    return ethernet_header(multicast_mac(ALL_NODES), src_mac, ETH_P_IPV6) + ip + icmp


def announce(src_mac: bytes, vip: ipaddress.IPv4Address | ipaddress.IPv6Address, *,
             router: bool = False) -> bytes:
    """The announcement frame for `vip`: gratuitous ARP for IPv4, unsolicited NA for IPv6."""
    if isinstance(vip, ipaddress.IPv4Address):
        return gratuitous_arp(src_mac, vip)
    return unsolicited_na(src_mac, vip, router=router)
