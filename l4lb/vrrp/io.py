"""VRRP sockets: raw IP protocol 112 for adverts (IPv4 and IPv6), AF_PACKET for GARP/NA frames.

Every socket here is non-blocking and bound to one interface (SO_BINDTODEVICE), so an instance
only hears adverts that arrived on its own interface and only sends there. The instance
registers `fileno()` with the event loop and drains `receive()` when it is readable.

IPv4 (`Ipv4Socket`): sends with IP_HDRINCL the datagram `packet.encode_ipv4` builds, so TOS
0xc0, TTL 255, DF clear and the IP id sequence match keepalived's adverts byte for byte.
Multicast: the socket joins 224.0.0.18 on the interface (ip_mreqn with the ifindex),
IP_MULTICAST_IF names the interface, the multicast TTL is 255 and loopback is off (a node never
hears itself). Unicast: the same socket sends one datagram per peer (the v3 checksum covers the
destination, so each is encoded for its peer) and receives whatever protocol-112 datagram
reaches the interface. A raw IPv4 socket delivers the IP header, which `decode_ipv4` checks.

IPv6 (`Ipv6Socket`): the kernel writes the IPv6 header, so the socket is set up to write it the
way keepalived's is: hop limit 255 (unicast and multicast), traffic class 0xc0, loopback off,
joined to ff02::12 on the interface. The source address (the interface's link-local address,
the v3 tie-breaker) is chosen per datagram with IPV6_PKTINFO, because the checksum we compute
covers it. The kernel does NOT verify checksums on this socket (no IPV6_CHECKSUM): a bad one
must reach `decode_ipv6` so it is counted as a "checksum" drop. Received datagrams come with
IPV6_HOPLIMIT and IPV6_PKTINFO ancillary data (asked for with IPV6_RECVHOPLIMIT and
IPV6_RECVPKTINFO): the hop limit for the TTL check, the destination for the checksum.

`FrameSocket` writes whole Ethernet frames (gratuitous ARP, unsolicited NA from
`l4lb.vrrp.announce`) on an AF_PACKET socket bound to the interface; protocol 0 means it
receives nothing.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Final, Protocol

from l4lb.vrrp.packet import (
    IPPROTO_VRRP,
    VRRP_GROUP_V4,
    VRRP_GROUP_V6,
    VRRP_TOS,
    VRRP_TTL,
    Advert,
    Expect,
    IPAddress,
    decode_ipv4,
    decode_ipv6,
    encode_ipv4,
    encode_vrrp,
    next_ip_id,
)

SO_BINDTODEVICE: Final = getattr(socket, "SO_BINDTODEVICE", 25)
RCVBUF: Final = 256 * 1024  # a burst of hostile packets must not crowd out the real adverts
MAX_DATAGRAM: Final = 65535
_CMSG_SPACE: Final = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(4) + 64  # pktinfo + hoplimit


@dataclass(frozen=True)
class Datagram:
    """One received datagram with what the socket knew about it."""

    data: bytes  # IPv4: the whole IP datagram; IPv6: the VRRP message only
    src: IPAddress  # sender
    dst: IPAddress | None  # IPv6: destination from IPV6_PKTINFO (IPv4: in `data`)
    hop_limit: int | None  # IPv6: from IPV6_HOPLIMIT (IPv4: the TTL is in `data`)

    def decode(self, expect: Expect) -> Advert:
        """The validated advert, or PacketError naming the failed check."""
        if self.hop_limit is None:
            return decode_ipv4(self.data, expect)
        if not isinstance(self.src, ipaddress.IPv6Address) or \
                not isinstance(self.dst, ipaddress.IPv6Address):
            raise ValueError("an IPv6 datagram needs IPv6 source and destination")
        return decode_ipv6(self.data, src=self.src, dst=self.dst, hop_limit=self.hop_limit,
                           expect=expect)


class AdvertSocket(Protocol):
    """What the instance needs from an advert socket (IPv4 or IPv6)."""

    def fileno(self) -> int: ...

    def send(self, advert: Advert) -> None: ...

    def receive(self) -> Datagram | None: ...

    def close(self) -> None: ...


def _bind_device(sock: socket.socket, ifname: str) -> None:
    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode() + b"\0")


class Ipv4Socket:
    """Raw IPv4 protocol-112 socket on one interface (multicast group joined if `multicast`)."""

    def __init__(self, ifname: str, ifindex: int, *, multicast: bool = True) -> None:
        self.ifname = ifname  # interface name
        self.ifindex = ifindex  # its index
        self.ip_id = 0  # IP id of the last datagram sent (keepalived's sequence starts at 1)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_VRRP)
        try:
            sock = self._sock
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            _bind_device(sock, ifname)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, VRRP_TOS)
            mreqn_if = struct.pack("=4s4si", bytes(4), bytes(4), ifindex)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn_if)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, VRRP_TTL)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            if multicast:
                mreqn = struct.pack("=4s4si", VRRP_GROUP_V4.packed, bytes(4), ifindex)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        except BaseException:
            self._sock.close()
            raise

    def fileno(self) -> int:
        """The socket's fd, for the event loop."""
        return self._sock.fileno()

    def send(self, advert: Advert) -> None:
        """Send `advert` to its `dst` (OSError if the kernel refuses, e.g. interface down)."""
        ident = next_ip_id(self.ip_id)
        self._sock.sendto(encode_ipv4(advert, ident=ident), (str(advert.dst), 0))
        self.ip_id = ident

    def receive(self) -> Datagram | None:
        """The next datagram, or None when none is waiting."""
        try:
            data, addr = self._sock.recvfrom(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return None
        return Datagram(data, ipaddress.IPv4Address(addr[0]), None, None)

    def close(self) -> None:
        """Close the socket (leaves the group)."""
        self._sock.close()


class Ipv6Socket:
    """Raw IPv6 protocol-112 socket on one interface, source `src` on every datagram."""

    def __init__(self, ifname: str, ifindex: int, src: ipaddress.IPv6Address, *,
                 multicast: bool = True) -> None:
        self.ifname = ifname  # interface name
        self.ifindex = ifindex  # its index
        self.src = src  # source address of every advert (the v3 tie-breaker)
        self._sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, IPPROTO_VRRP)
        try:
            sock = self._sock
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            _bind_device(sock, ifname)
            v6 = socket.IPPROTO_IPV6
            sock.setsockopt(v6, socket.IPV6_MULTICAST_IF, ifindex)
            sock.setsockopt(v6, socket.IPV6_MULTICAST_HOPS, VRRP_TTL)
            sock.setsockopt(v6, socket.IPV6_UNICAST_HOPS, VRRP_TTL)
            sock.setsockopt(v6, socket.IPV6_MULTICAST_LOOP, 0)
            sock.setsockopt(v6, socket.IPV6_TCLASS, VRRP_TOS)
            sock.setsockopt(v6, socket.IPV6_RECVHOPLIMIT, 1)
            sock.setsockopt(v6, socket.IPV6_RECVPKTINFO, 1)
            if multicast:
                mreq = VRRP_GROUP_V6.packed + struct.pack("=I", ifindex)
                sock.setsockopt(v6, socket.IPV6_JOIN_GROUP, mreq)
        except BaseException:
            self._sock.close()
            raise
        self._pktinfo = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO,
                          src.packed + struct.pack("=I", ifindex))]

    def fileno(self) -> int:
        """The socket's fd, for the event loop."""
        return self._sock.fileno()

    def send(self, advert: Advert) -> None:
        """Send `advert` (VRRP message only; the kernel adds the IPv6 header)."""
        if advert.src != self.src:
            raise ValueError(f"advert source {advert.src} is not the socket's {self.src}")
        dst = advert.dst
        scope = self.ifindex if isinstance(dst, ipaddress.IPv6Address) and \
            (dst.is_link_local or dst.is_multicast) else 0
        self._sock.sendmsg([encode_vrrp(advert)], self._pktinfo, 0, (str(dst), 0, 0, scope))

    def receive(self) -> Datagram | None:
        """The next datagram with its hop limit and destination, or None when none is waiting."""
        try:
            data, ancdata, _flags, addr = self._sock.recvmsg(MAX_DATAGRAM, _CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return None
        hop_limit = -1  # missing ancillary data: fails the TTL check rather than passing it
        dst: ipaddress.IPv6Address = ipaddress.IPv6Address(0)
        for level, kind, value in ancdata:
            if level != socket.IPPROTO_IPV6:
                continue
            if kind == socket.IPV6_HOPLIMIT and len(value) >= 4:
                hop_limit = struct.unpack("=i", value[:4])[0]
            elif kind == socket.IPV6_PKTINFO and len(value) >= 16:
                dst = ipaddress.IPv6Address(value[:16])
        src = ipaddress.IPv6Address(str(addr[0]).split("%", 1)[0])
        return Datagram(data, src, dst, hop_limit)

    def close(self) -> None:
        """Close the socket (leaves the group)."""
        self._sock.close()


class FrameSocket:
    """AF_PACKET socket that writes whole Ethernet frames on one interface (never receives)."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname  # interface name
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self._sock.setblocking(False)
            self._sock.bind((ifname, 0))
        except BaseException:
            self._sock.close()
            raise

    def send(self, frame: bytes) -> None:
        """Write one frame (OSError if the kernel refuses, e.g. interface down or queue full)."""
        self._sock.send(frame)

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()


def ipv6_forwarding(ifname: str) -> bool:
    """True when the interface forwards IPv6 (the NA Router flag, as keepalived sets it)."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/forwarding", encoding="ascii") as f:
            return f.read().strip() not in ("", "0")
    except OSError:
        return False
