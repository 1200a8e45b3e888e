"""Datagram I/O of UDP listeners: receive with the address the client sent to, reply from it.

A listener bound to a wildcard address (0.0.0.0 or ::) receives datagrams for every local
address; its replies must leave from the very address each client sent to, or the client (which
matches replies by source) drops them. The kernel reports that address per datagram in an
IP_PKTINFO / IPV6_PKTINFO control message when the listener has IP_PKTINFO / IPV6_RECVPKTINFO
set (the data plane sets them on a wildcard listener it is given), and takes the same message
on sendmsg() to pick the source address. A listener bound to a specific address needs none of
this: its replies leave from that address anyway.

Datagrams are read into one reused buffer of RECV_MAX bytes (the largest UDP payload over IPv4).
A larger one (IPv6 allows 65,527 bytes) comes back with MSG_TRUNC: the caller counts and drops
it, it never forwards a cut datagram.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Any

IP_PKTINFO = 8  # linux/in.h (the socket module lacks the name): per-datagram local address
RECV_MAX = 65507  # bytes: the largest UDP payload over IPv4; larger datagrams are truncated
WILDCARDS = ("0.0.0.0", "::")
_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, spec_dst, addr (struct in_pktinfo)
_IN6_PKTINFO = struct.Struct("=16sI")  # addr, ifindex (struct in6_pktinfo)
ANC_SIZE = socket.CMSG_SPACE(_IN6_PKTINFO.size)  # room for the larger of the two


@dataclass(frozen=True, slots=True)
class Received:
    """One datagram read from a listener (its bytes are in the caller's buffer)."""

    size: int  # payload bytes in the buffer
    truncated: bool  # MSG_TRUNC: the datagram was larger than the buffer
    peer: Any  # the sender's address tuple, as sendmsg() takes it back
    local: bytes  # packed address the client sent to (4 or 16 bytes), b"" when not reported
    ifindex: int  # interface it arrived on (0 when not reported)


def is_wildcard(sock: socket.socket) -> bool:
    """True when sock is bound to 0.0.0.0 or :: (it needs pktinfo to reply correctly)."""
    return str(sock.getsockname()[0]) in WILDCARDS


def enable_pktinfo(sock: socket.socket) -> None:
    """Make the kernel report each datagram's local address on sock (a dual-stack IPv6
    socket reports IPv4 ones as ::ffff:a.b.c.d through IPV6_PKTINFO)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def receive(sock: socket.socket, buf: memoryview) -> Received:
    """Read one datagram into buf; raises BlockingIOError when there is none."""
    size, ancdata, flags, peer = sock.recvmsg_into([buf], ANC_SIZE)
    local = b""
    ifindex = 0
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
            ifindex, _, local = _IN_PKTINFO.unpack_from(data)
        elif (level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO
              and len(data) >= _IN6_PKTINFO.size):
            local, ifindex = _IN6_PKTINFO.unpack_from(data)
    return Received(size, bool(flags & socket.MSG_TRUNC), peer, local, ifindex)


def reply(sock: socket.socket, data: bytes | memoryview, peer: Any, local: bytes,
          ifindex: int) -> int:
    """Send data to peer from the local address it wrote to (when known); returns bytes sent.

    Raises BlockingIOError when the socket's buffer is full and OSError on other failures."""
    if not local:
        return sock.sendto(data, peer)
    if len(local) == 4:
        cmsg = (socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, local, bytes(4)))
    else:
        # the interface matters for link-local sources only; 0 lets the route decide
        link_local = ipaddress.IPv6Address(local).is_link_local
        cmsg = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO,
                _IN6_PKTINFO.pack(local, ifindex if link_local else 0))
    return sock.sendmsg([data], [cmsg], 0, peer)
