"""PROXY protocol headers (HAProxy's proxy-protocol.txt, versions 1 and 2): builder and parser twin.

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

A TCP service with `accept_proxy = true` expects such a header at the start of every client
connection (another balancer in front of l4lb). `parse()` is the twin of the C pp_parse()
(src_ext/core/proxyhdr.c, whose comment has the rules): it follows the same steps, written
from the specification, so that both give the same verdict, length and addresses for any input
(tests/unit/test_proxyproto_parse.py holds them to it, fuzzing included). It does not use
`ipaddress` to read text addresses, whose rules are not inet_pton's (zones, for one).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
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


V1_SIGNATURE = b"PROXY "  # what every version 1 header starts with
V2_HEADER = 16  # the fixed part of a version 2 header: signature, version/command, family, length
PARSE_MIN = V1_MAX  # parse() decides on at most this many bytes (C: PP_PARSE_MIN)
_V2_BLOCK = {0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}  # PROXY family
#            byte -> the address block length it needs (0x00 UNSPEC needs none)
_HEX = frozenset("0123456789abcdefABCDEF")
_DIGITS = frozenset("0123456789")


class ProxyHeaderError(ValueError):
    """The bytes cannot begin a valid PROXY protocol header."""


@dataclass(frozen=True)
class ParsedHeader:
    """A complete, valid header (C: struct pp_info)."""

    length: int  # bytes the whole header occupies (version 2: 16 + its length field, TLVs too)
    version: int  # 1 or 2
    src: tuple[str, int] | None  # the original client's (address, port); None: use the real
    #                              connection's (LOCAL, UNKNOWN, a family without TCP addresses)
    dst: tuple[str, int] | None  # the address and port the client originally connected to

    @property
    def family(self) -> int:
        """4 or 6 for a header with addresses, 0 without (C: pp_info.family)."""
        if self.src is None:
            return 0
        return 6 if ":" in self.src[0] else 4


def _parse_v4(text: str) -> bytes | None:
    """A dotted quad of decimal octets without leading zeros, packed; None when it is not."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    out = bytearray()
    for part in parts:
        if not 1 <= len(part) <= 3 or not set(part) <= _DIGITS:
            return None
        if len(part) > 1 and part[0] == "0":
            return None
        if int(part) > 255:
            return None
        out.append(int(part))
    return bytes(out)


def _parse_v6(text: str) -> bytes | None:
    """RFC 4291 IPv6 text (no zone), packed; None when it is not."""
    groups: list[int] = []
    gap = -1
    i, n = 0, len(text)
    if text.startswith("::"):
        gap, i = 0, 2
    while i < n or (gap < 0 and not groups):
        end = text.find(":", i)
        end = n if end < 0 else end
        token = text[i:end]
        if "." in token:
            quad = _parse_v4(token)
            if end != n or len(groups) > 6 or quad is None:
                return None
            groups += [quad[0] << 8 | quad[1], quad[2] << 8 | quad[3]]
            break
        if not 1 <= len(token) <= 4 or len(groups) >= 8 or not set(token) <= _HEX:
            return None
        groups.append(int(token, 16))
        if end == n:
            break
        if end + 1 < n and text[end + 1] == ":":
            if gap >= 0:
                return None
            gap, i = len(groups), end + 2
            continue
        i = end + 1
        if i == n:
            return None  # a single trailing colon
    if (len(groups) > 7) if gap >= 0 else (len(groups) != 8):
        return None
    if gap >= 0:
        groups = groups[:gap] + [0] * (8 - len(groups)) + groups[gap:]
    return b"".join(struct.pack("!H", g) for g in groups)


def _parse_port(text: str) -> int | None:
    """A decimal port 0..65535 without leading zeros; None when it is not."""
    if not 1 <= len(text) <= 5 or not set(text) <= _DIGITS or (len(text) > 1 and text[0] == "0"):
        return None
    value = int(text)
    return value if value <= 65535 else None


def _text(family: int, packed: bytes) -> str:
    return str(ipaddress.IPv4Address(packed) if family == 4 else ipaddress.IPv6Address(packed))


def _parse_v1(data: bytes) -> ParsedHeader | None:
    n = len(data)
    limit = min(n, V1_MAX)
    i = 0
    while i < limit:
        if data[i] == 0x0A:
            raise ProxyHeaderError("version 1: a LF without its CR")
        if data[i] == 0x0D:
            break
        i += 1
    if i == limit:
        if n >= V1_MAX:
            raise ProxyHeaderError("version 1: no CRLF within 107 bytes")
        return None
    if i + 2 > V1_MAX:
        raise ProxyHeaderError("version 1: longer than 107 bytes")
    if i + 1 == n:
        return None
    if data[i + 1] != 0x0A:
        raise ProxyHeaderError("version 1: a CR without its LF")
    line = data[len(V1_SIGNATURE):i].decode("latin-1")
    length = i + 2
    if line == "UNKNOWN" or line.startswith("UNKNOWN "):
        return ParsedHeader(length, 1, None, None)
    if not line.startswith(("TCP4 ", "TCP6 ")):
        raise ProxyHeaderError("version 1: the protocol is not TCP4, TCP6 or UNKNOWN")
    fields = line[5:].split(" ")
    if len(fields) != 4:
        raise ProxyHeaderError("version 1: not four fields separated by single spaces")
    family = 4 if line[3] == "4" else 6
    reader = _parse_v4 if family == 4 else _parse_v6
    src, dst = reader(fields[0]), reader(fields[1])
    sport, dport = _parse_port(fields[2]), _parse_port(fields[3])
    if src is None or dst is None:
        raise ProxyHeaderError(f"version 1: an address that is not IPv{family}")
    if sport is None or dport is None:
        raise ProxyHeaderError("version 1: a port that is not 0..65535 in decimal")
    return ParsedHeader(length, 1, (_text(family, src), sport), (_text(family, dst), dport))


def _parse_v2(data: bytes) -> ParsedHeader | None:
    n = len(data)
    if data[:12] != V2_SIGNATURE[:n]:
        raise ProxyHeaderError("version 2: not the signature")
    if n > 12 and (data[12] >> 4 != 2 or data[12] & 0x0F > 1):
        raise ProxyHeaderError("version 2: not version 2 with command LOCAL or PROXY")
    if n < V2_HEADER:
        return None
    fam = data[13]
    (blen,) = struct.unpack("!H", data[14:16])
    length = V2_HEADER + blen
    if data[12] & 0x0F == 0 or fam == 0x00:
        return ParsedHeader(length, 2, None, None)  # LOCAL, or PROXY of an unspecified family
    block = _V2_BLOCK.get(fam)
    if block is None:
        raise ProxyHeaderError(f"version 2: family/transport 0x{fam:02x} is not defined")
    if blen < block:
        raise ProxyHeaderError("version 2: the length does not cover the address block")
    if fam not in (0x11, 0x21):
        return ParsedHeader(length, 2, None, None)  # no TCP address: the connection's own
    if n < V2_HEADER + block:
        return None
    alen = 4 if fam == 0x11 else 16
    family = 4 if fam == 0x11 else 6
    at = V2_HEADER
    src, dst = data[at:at + alen], data[at + alen:at + 2 * alen]
    sport, dport = struct.unpack("!HH", data[at + 2 * alen:at + 2 * alen + 4])
    return ParsedHeader(length, 2, (_text(family, src), sport), (_text(family, dst), dport))


def parse(data: bytes) -> ParsedHeader | None:
    """The PROXY protocol header at the start of `data` (the bytes a client sent so far):
    a ParsedHeader when it is complete (its length may exceed len(data) for a version 2 header
    whose TLVs have not all arrived), None when `data` is a valid beginning and more bytes are
    needed (never once len(data) >= PARSE_MIN), ProxyHeaderError when it cannot begin a valid
    header. The version is told by the first byte."""
    if not data:
        return None
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(data)
    if data[:len(V1_SIGNATURE)] != V1_SIGNATURE[:len(data)]:
        raise ProxyHeaderError("neither a version 1 nor a version 2 header")
    if len(data) < len(V1_SIGNATURE):
        return None
    return _parse_v1(data)
