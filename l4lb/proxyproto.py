"""PROXY protocol headers (HAProxy's proxy-protocol.txt, versions 1 and 2): the reference twin.

A TCP service with `proxy_protocol = "v1"` or `"v2"` makes the data plane write one header to
each backend connection before any byte of the client's: the client's address and port and the
address and port it connected to, so that a backend behind the balancer still sees who its
client is. The C data plane builds the same bytes in src_ext/core/proxyhdr.c; this module is its
pure-Python twin (the refdp data plane and the health probes use it, and the tests hold the two
to the same output byte for byte).

Rules both builders follow:
- An IPv4-mapped IPv6 pair (a dual-stack listener's IPv4 client) is written as IPv4, as the
  backend would have seen it without the balancer. A pair that mixes an IPv4 and a non-mapped
  IPv6 address cannot be written as addresses: version 1 says `UNKNOWN`, version 2 `AF_UNSPEC`
  (the receiver then uses the connection's own addresses), as the specification asks.
- Version 1 writes IPv6 addresses in RFC 5952's text form (lowercase, no leading zeros, the
  first longest run of two or more zero groups as `::`), which is also Python's `str()` of an
  IPv6Address. glibc's inet_ntop would differ for `::a.b.c.d`, so neither side uses it.
- Version 2 carries no TLV: nothing more than the addresses is promised.
- A health probe is not a relayed client: it sends LOCAL (version 2) or `PROXY UNKNOWN`
  (version 1), which tells the backend to use the connection's own addresses.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Literal

ProxyVersion = Literal["off", "v1", "v2"]
PROXY_VERSIONS: tuple[ProxyVersion, ...] = ("off", "v1", "v2")

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # the 12 bytes every version 2 header starts with
V2_PROXY = 0x21  # version 2, command PROXY (a relayed connection)
V2_LOCAL = 0x20  # version 2, command LOCAL (the proxy's own connection: health probes)
V2_TCP4 = 0x11  # AF_INET, SOCK_STREAM
V2_TCP6 = 0x21  # AF_INET6, SOCK_STREAM
V2_UNSPEC = 0x00  # AF_UNSPEC: no addresses
V1_MAX = 107  # the longest version 1 header, CRLF included (the specification's bound)
V2_MAX = 16 + 36  # the longest version 2 header this builder writes (TCP over IPv6)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def version_number(version: ProxyVersion) -> int:
    """0 for "off", 1 or 2: what the data planes' set_proxy_protocol() takes."""
    return PROXY_VERSIONS.index(version)


def _unmap(addr: Address) -> Address:
    """An IPv4-mapped IPv6 address as IPv4; any other address as it is."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def build(version: int, src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """The header of a relayed connection from src (the client's address and port) to dst
    (the address and port the client connected to). version 1 or 2. ValueError: a bad version,
    address or port."""
    if version not in (1, 2):
        raise ValueError(f"PROXY protocol version {version!r} is not 1 or 2")
    s_addr, d_addr = _unmap(ipaddress.ip_address(src[0])), _unmap(ipaddress.ip_address(dst[0]))
    s_port, d_port = src[1], dst[1]
    for port in (s_port, d_port):
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port {port!r} out of range 0..65535")
    same = s_addr.version == d_addr.version
    if version == 1:
        if not same:
            return b"PROXY UNKNOWN\r\n"
        proto = "TCP4" if s_addr.version == 4 else "TCP6"
        return f"PROXY {proto} {s_addr} {d_addr} {s_port} {d_port}\r\n".encode("ascii")
    if not same:
        return V2_SIGNATURE + struct.pack("!BBH", V2_PROXY, V2_UNSPEC, 0)
    fam = V2_TCP4 if s_addr.version == 4 else V2_TCP6
    body = s_addr.packed + d_addr.packed + struct.pack("!HH", s_port, d_port)
    return V2_SIGNATURE + struct.pack("!BBH", V2_PROXY, fam, len(body)) + body


def local(version: int) -> bytes:
    """The header a health probe sends: LOCAL (version 2) or PROXY UNKNOWN (version 1)."""
    if version == 1:
        return b"PROXY UNKNOWN\r\n"
    if version == 2:
        return V2_SIGNATURE + struct.pack("!BBH", V2_LOCAL, V2_UNSPEC, 0)
    raise ValueError(f"PROXY protocol version {version!r} is not 1 or 2")
