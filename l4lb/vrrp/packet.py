"""Encode and decode VRRP advertisements (RFC 5798 v3 over IPv4/IPv6, RFC 3768 v2 over IPv4).

Pure bytes in, pure bytes out: no sockets here. The I/O layer sends what `encode_ipv4` returns on
an IPv4 raw socket with IP_HDRINCL (as keepalived does), or what `encode_vrrp` returns on an IPv6
raw socket (the kernel writes the IPv6 header), and hands every received datagram to
`decode_ipv4` / `decode_ipv6`. Decoding performs every check RFC 5798 7.1 / RFC 3768 7.1 asks of
a receiver and either returns a frozen `Advert` or raises `PacketError`, whose `reason` is one of
`REASONS` (a short machine-readable word for drop counters).

Wire layout (network byte order)::

    v3: | ver=3 type=1 | VRID | Priority | Count | rsvd(4) Max Adver Int(12, centiseconds) |
        | Checksum | Count x IPv4 (4 bytes) or IPv6 (16 bytes) addresses |
    v2: | ver=2 type=1 | VRID | Priority | Count | Auth Type | Adver Int (seconds) |
        | Checksum | Count x IPv4 addresses | Authentication Data (8 bytes) |

Checksums: v2 sums the VRRP message alone; v3 (over IPv4 and IPv6) prepends the pseudo-header of
the IP layer (RFC 5798 5.2.8). The IPv4 header is built the way keepalived 2.2 builds it, which
the reference captures confirm: TOS 0xc0, TTL 255, protocol 112, DF clear, IP id counting from 1
per instance (`next_ip_id`). Interval is carried as centiseconds in `Advert` for both versions;
v2 can only express whole seconds. Authentication (v2 only): type 0 is the norm; type 1 (simple
password, cleartext, what keepalived calls `auth_type PASS`) is decoded, reported in `Advert` and
checked against `Expect.password`; type 2 (IPsec AH) and anything else is refused ("auth").
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

IPPROTO_VRRP: Final = 112
VRRP_TTL: Final = 255  # RFC 5798 5.1.1.3 / 5.1.2.3: TTL / hop limit MUST be 255
VRRP_TOS: Final = 0xC0  # DSCP CS6 "network control", as keepalived sets it (captures: 0xc0)
VRRP_GROUP_V4: Final = ipaddress.IPv4Address("224.0.0.18")
VRRP_GROUP_V6: Final = ipaddress.IPv6Address("ff02::12")
TYPE_ADVERTISEMENT: Final = 1
AUTH_NONE: Final = 0
AUTH_SIMPLE: Final = 1  # RFC 2338 simple text password; RFC 3768 reserves it, keepalived speaks it
AUTH_DATA_LEN: Final = 8
V3_MAX_INTERVAL_CS: Final = 0x0FFF  # 12 bits of centiseconds: 40.95 s
V2_MAX_INTERVAL_S: Final = 255

_FIXED = struct.Struct("!BBBBHH")  # ver/type, vrid, priority, count, (auth|rsvd+interval), cksum
_IPV4_MIN_HEADER = 20
_IPV6_HEADER = 40
_IP_MF = 0x2000
_IP_DF = 0x4000
_IP_OFFSET_MASK = 0x1FFF

# Every value PacketError.reason can take, for pre-creating drop counters.
REASONS: Final = frozenset({
    "truncated",  # fewer bytes than a header or the declared lengths need
    "length",  # lengths disagree (trailing bytes, IP total length, address count vs. size)
    "ip_header",  # bad IPv4/IPv6 header: version, IHL, header checksum, a fragment
    "protocol",  # IP protocol / next header is not 112
    "ttl",  # IP TTL / hop limit is not 255
    "version",  # VRRP version not 2 or 3, not the expected one, or v2 over IPv6
    "type",  # VRRP type is not 1 (advertisement)
    "checksum",  # VRRP checksum wrong
    "vrid",  # VRID 0, or not the expected instance
    "interval",  # advertisement interval 0, or (v2) not the locally configured one
    "addr_count",  # no addresses, or not as many as the instance has
    "addr_list",  # the addresses differ from the instance's
    "auth",  # v2 auth type unknown or not the configured one, or wrong password
})


class PacketError(ValueError):
    """A received packet that must be dropped; `reason` (one of REASONS) names the failed check."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise AssertionError(f"unknown PacketError reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason  # machine-readable check name, for drop counters
        self.detail = detail  # human-readable explanation, for debug logs


@dataclass(frozen=True)
class Advert:
    """One VRRP advertisement as sent from `src` to `dst` (the IP addresses frame the checksum).

    Construction validates the fields a sender controls and raises plain ValueError on nonsense
    (this is about building packets; received packets fail with PacketError before getting here).
    """

    version: int  # 2 (RFC 3768, IPv4 only) or 3 (RFC 5798)
    vrid: int  # virtual router id, 1..255
    priority: int  # 0 (master resigning) .. 255 (address owner)
    interval_cs: int  # advertisement interval in centiseconds (v2: a multiple of 100)
    addresses: tuple[IPAddress, ...]  # the virtual addresses, all of src's family, 1..255 of them
    src: IPAddress  # IP source: the sender's primary address (breaks priority ties)
    dst: IPAddress  # IP destination: the VRRP group, or a unicast peer
    auth_type: int = AUTH_NONE  # v2 only: 0 none, 1 simple password
    auth_data: bytes = bytes(AUTH_DATA_LEN)  # v2 only: the 8 authentication bytes as on the wire

    def __post_init__(self) -> None:
        if self.version not in (2, 3):
            raise ValueError(f"VRRP version must be 2 or 3, not {self.version}")
        if not 1 <= self.vrid <= 255:
            raise ValueError(f"VRID must be 1..255, not {self.vrid}")
        if not 0 <= self.priority <= 255:
            raise ValueError(f"priority must be 0..255, not {self.priority}")
        if self.src.version != self.dst.version:
            raise ValueError("src and dst must be of the same address family")
        if not 1 <= len(self.addresses) <= 255:
            raise ValueError(f"an advert carries 1..255 addresses, not {len(self.addresses)}")
        if any(a.version != self.src.version for a in self.addresses):
            raise ValueError(f"all addresses must be IPv{self.src.version}, like src")
        if self.version == 3:
            if not 1 <= self.interval_cs <= V3_MAX_INTERVAL_CS:
                raise ValueError(f"v3 interval must be 1..4095 cs, not {self.interval_cs}")
            if self.auth_type != AUTH_NONE or self.auth_data != bytes(AUTH_DATA_LEN):
                raise ValueError("VRRPv3 has no authentication")
        else:
            if self.src.version != 4:
                raise ValueError("VRRPv2 is IPv4 only (RFC 3768)")
            if self.interval_cs % 100 or not 1 <= self.interval_cs // 100 <= V2_MAX_INTERVAL_S:
                raise ValueError(f"v2 interval must be 1..255 whole seconds, not "
                                 f"{self.interval_cs} cs")
            if self.auth_type not in (AUTH_NONE, AUTH_SIMPLE):
                raise ValueError(f"auth type must be 0 or 1, not {self.auth_type}")
            if len(self.auth_data) != AUTH_DATA_LEN:
                raise ValueError(f"auth data is {AUTH_DATA_LEN} bytes, not {len(self.auth_data)}")

    @property
    def family(self) -> int:
        """4 or 6: the IP version this advert travels over."""
        return self.src.version

    @property
    def password(self) -> bytes | None:
        """The simple-auth password (NUL padding stripped), or None when auth type is not 1."""
        if self.auth_type != AUTH_SIMPLE:
            return None
        return self.auth_data.rstrip(b"\0")


@dataclass(frozen=True)
class Expect:
    """What the receiving instance knows, so decode can apply the per-instance checks of 7.1.

    Leave a field None to skip that check (e.g. a sniffer). `check_ttl=False` is for unicast peers
    across routers, where keepalived skips the TTL check too.
    """

    vrid: int | None = None  # the instance's VRID ("vrid" otherwise)
    version: int | None = None  # the instance's VRRP version ("version" otherwise)
    interval_cs: int | None = None  # v2 only: MUST equal the local interval ("interval")
    addresses: frozenset[IPAddress] | None = None  # MAY check: the VIP set ("addr_count/list")
    password: bytes | None = None  # v2: None = expect auth type 0; bytes = type 1 with this pw
    check_ttl: bool = True  # TTL / hop limit must be 255
    check_auth: bool = True  # False: accept any auth type 0/1 without checking (sniffing)


ANY: Final = Expect()  # no per-instance checks: structure, TTL, checksum and sanity only


@dataclass(frozen=True)
class Ipv4Header:
    """The IPv4 header fields of a received packet (what `parse_ipv4_header` found)."""

    tos: int  # type of service byte
    total_length: int  # header + payload, bytes
    ident: int  # identification
    flags_frag: int  # 3 flag bits and 13-bit fragment offset, as on the wire
    ttl: int  # time to live
    protocol: int  # payload protocol number
    src: ipaddress.IPv4Address  # source address
    dst: ipaddress.IPv4Address  # destination address
    header_length: int  # IHL x 4, bytes (options included)


@dataclass(frozen=True)
class Ipv6Header:
    """The fixed IPv6 header fields of a received packet (what `parse_ipv6_header` found)."""

    traffic_class: int  # 8-bit traffic class
    flow_label: int  # 20-bit flow label
    payload_length: int  # bytes after the fixed header
    next_header: int  # payload protocol number (no extension headers are followed)
    hop_limit: int  # hop limit
    src: ipaddress.IPv6Address  # source address
    dst: ipaddress.IPv6Address  # destination address


# --- checksums ------------------------------------------------------------------------------


def internet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement sum of 16-bit words, complemented (0 over data that checks)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_pseudo_header(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address,
                       protocol: int, length: int) -> bytes:
    """The 12-byte IPv4 pseudo-header (RFC 768 style) that v3 over IPv4 checksums first."""
    return src.packed + dst.packed + struct.pack("!BBH", 0, protocol, length)


def ipv6_pseudo_header(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address,
                       next_header: int, length: int) -> bytes:
    """The 40-byte IPv6 pseudo-header (RFC 8200 8.1) for upper-layer checksums (VRRP, ICMPv6)."""
    return src.packed + dst.packed + struct.pack("!I3xB", length, next_header)


def _pseudo_header(src: IPAddress, dst: IPAddress, length: int) -> bytes:
    if isinstance(src, ipaddress.IPv4Address) and isinstance(dst, ipaddress.IPv4Address):
        return ipv4_pseudo_header(src, dst, IPPROTO_VRRP, length)
    if isinstance(src, ipaddress.IPv6Address) and isinstance(dst, ipaddress.IPv6Address):
        return ipv6_pseudo_header(src, dst, IPPROTO_VRRP, length)
    raise ValueError("src and dst must be of the same address family")


# --- encoding -------------------------------------------------------------------------------


def encode_vrrp(advert: Advert) -> bytes:
    """The VRRP message of `advert` (no IP header), checksum filled in."""
    count = len(advert.addresses)
    if advert.version == 3:
        word = advert.interval_cs & V3_MAX_INTERVAL_CS  # the 4 reserved bits are sent as zero
    else:
        word = (advert.auth_type << 8) | (advert.interval_cs // 100)
    body = b"".join(a.packed for a in advert.addresses)
    if advert.version == 2:
        body += advert.auth_data
    head = _FIXED.pack((advert.version << 4) | TYPE_ADVERTISEMENT, advert.vrid,
                       advert.priority, count, word, 0)
    message = head + body
    if advert.version == 3:
        checksum = internet_checksum(_pseudo_header(advert.src, advert.dst, len(message))
                                     + message)
    else:
        checksum = internet_checksum(message)
    return message[:6] + struct.pack("!H", checksum) + message[8:]


def ipv4_header(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, payload_length: int,
                *, ident: int, protocol: int = IPPROTO_VRRP, ttl: int = VRRP_TTL,
                tos: int = VRRP_TOS, df: bool = False) -> bytes:
    """A 20-byte IPv4 header (no options) with its header checksum filled in."""
    if not 0 <= ident <= 0xFFFF:
        raise ValueError(f"IP id must be 0..65535, not {ident}")
    total = _IPV4_MIN_HEADER + payload_length
    if total > 0xFFFF:
        raise ValueError(f"IPv4 packet of {total} bytes is too long")
    head = struct.pack("!BBHHHBBH4s4s", 0x45, tos, total, ident, _IP_DF if df else 0, ttl,
                       protocol, 0, src.packed, dst.packed)
    return head[:10] + struct.pack("!H", internet_checksum(head)) + head[12:]


def ipv6_header(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, payload_length: int,
                *, next_header: int = IPPROTO_VRRP, hop_limit: int = VRRP_TTL,
                traffic_class: int = VRRP_TOS, flow_label: int = 0) -> bytes:
    """A 40-byte IPv6 header (the kernel writes this on a raw socket; tests and frames use it)."""
    if not 0 <= flow_label <= 0xFFFFF:
        raise ValueError(f"flow label must fit 20 bits, not {flow_label}")
    first = (6 << 28) | (traffic_class << 20) | flow_label
    return struct.pack("!IHBB", first, payload_length, next_header, hop_limit) + src.packed \
        + dst.packed


def next_ip_id(previous: int) -> int:
    """keepalived's IP id sequence: previous + 1, skipping 0 (the kernel would fill 0 in)."""
    return previous % 0xFFFF + 1


def encode_ipv4(advert: Advert, *, ident: int, ttl: int = VRRP_TTL, tos: int = VRRP_TOS,
                df: bool = False) -> bytes:
    """IPv4 header + VRRP message, for an IP_HDRINCL raw socket (keepalived's framing)."""
    if not isinstance(advert.src, ipaddress.IPv4Address) or \
            not isinstance(advert.dst, ipaddress.IPv4Address):
        raise ValueError("encode_ipv4 needs an IPv4 advert")
    message = encode_vrrp(advert)
    return ipv4_header(advert.src, advert.dst, len(message), ident=ident, ttl=ttl, tos=tos,
                       df=df) + message


def encode_ipv6(advert: Advert, *, flow_label: int = 0, traffic_class: int = VRRP_TOS,
                hop_limit: int = VRRP_TTL) -> bytes:
    """IPv6 header + VRRP message (what goes on the wire; a raw socket takes `encode_vrrp`)."""
    if not isinstance(advert.src, ipaddress.IPv6Address) or \
            not isinstance(advert.dst, ipaddress.IPv6Address):
        raise ValueError("encode_ipv6 needs an IPv6 advert")
    message = encode_vrrp(advert)
    return ipv6_header(advert.src, advert.dst, len(message), hop_limit=hop_limit,
                       traffic_class=traffic_class, flow_label=flow_label) + message


# --- decoding -------------------------------------------------------------------------------


def parse_ipv4_header(packet: bytes) -> Ipv4Header:
    """The IPv4 header of `packet`, checked for version, IHL, lengths, checksum and fragments."""
    if len(packet) < _IPV4_MIN_HEADER:
        raise PacketError("truncated", f"{len(packet)} bytes is shorter than an IPv4 header")
    vihl, tos, total, ident, flags_frag, ttl, proto, _, src, dst = struct.unpack(
        "!BBHHHBBH4s4s", packet[:_IPV4_MIN_HEADER])
    if vihl >> 4 != 4:
        raise PacketError("ip_header", f"IP version {vihl >> 4}, expected 4")
    header_length = (vihl & 0x0F) * 4
    if header_length < _IPV4_MIN_HEADER:
        raise PacketError("ip_header", f"IHL of {header_length} bytes is below 20")
    if len(packet) < header_length:
        raise PacketError("truncated", f"{len(packet)} bytes, IPv4 header says {header_length}")
    if internet_checksum(packet[:header_length]) != 0:
        raise PacketError("ip_header", "IPv4 header checksum is wrong")
    if total < header_length:
        raise PacketError("length", f"IP total length {total} is below the header length")
    if total > len(packet):
        raise PacketError("truncated", f"IP total length {total}, only {len(packet)} bytes")
    if total < len(packet):
        raise PacketError("length", f"IP total length {total}, but {len(packet)} bytes arrived")
    if flags_frag & (_IP_MF | _IP_OFFSET_MASK):
        raise PacketError("ip_header", "the packet is a fragment")
    return Ipv4Header(tos=tos, total_length=total, ident=ident, flags_frag=flags_frag, ttl=ttl,
                      protocol=proto, src=ipaddress.IPv4Address(src),
                      dst=ipaddress.IPv4Address(dst), header_length=header_length)


def parse_ipv6_header(packet: bytes) -> Ipv6Header:
    """The fixed IPv6 header of `packet`, checked for version and payload length."""
    if len(packet) < _IPV6_HEADER:
        raise PacketError("truncated", f"{len(packet)} bytes is shorter than an IPv6 header")
    first, payload_length, next_header, hop_limit = struct.unpack("!IHBB", packet[:8])
    if first >> 28 != 6:
        raise PacketError("ip_header", f"IP version {first >> 28}, expected 6")
    actual = len(packet) - _IPV6_HEADER
    if payload_length > actual:
        raise PacketError("truncated", f"IPv6 payload length {payload_length}, only {actual}")
    if payload_length < actual:
        raise PacketError("length", f"IPv6 payload length {payload_length}, but {actual} arrived")
    return Ipv6Header(traffic_class=(first >> 20) & 0xFF, flow_label=first & 0xFFFFF,
                      payload_length=payload_length, next_header=next_header,
                      hop_limit=hop_limit, src=ipaddress.IPv6Address(packet[8:24]),
                      dst=ipaddress.IPv6Address(packet[24:40]))


def decode_vrrp(message: bytes, *, src: IPAddress, dst: IPAddress,
                expect: Expect = ANY) -> Advert:
    """Validate a VRRP message (no IP header) received from `src` for `dst`; the Advert or raise.

    The caller has already checked the TTL / hop limit. Order: structure (truncated, version,
    type, length), then the checksum, then the instance checks (vrid, interval, count,
    addresses, auth), so a corrupted packet is counted as "checksum", not as a wrong VRID.
    """
    if src.version != dst.version:
        raise ValueError("src and dst must be of the same address family")
    if len(message) < _FIXED.size:
        raise PacketError("truncated", f"{len(message)} bytes is shorter than a VRRP header")
    vt, vrid, priority, count, word, _ = _FIXED.unpack(message[:_FIXED.size])
    version, kind = vt >> 4, vt & 0x0F
    if version not in (2, 3):
        raise PacketError("version", f"VRRP version {version}")
    if version == 2 and src.version == 6:
        raise PacketError("version", "VRRPv2 over IPv6 is not standard (RFC 3768 is IPv4 only)")
    if expect.version is not None and version != expect.version:
        raise PacketError("version", f"VRRP version {version}, instance runs {expect.version}")
    if kind != TYPE_ADVERTISEMENT:
        raise PacketError("type", f"VRRP type {kind}, only 1 (advertisement) exists")
    addr_len = 4 if src.version == 4 else 16
    needed = _FIXED.size + count * addr_len + (AUTH_DATA_LEN if version == 2 else 0)
    if len(message) < needed:
        raise PacketError("truncated", f"{count} addresses need {needed} bytes, "
                                       f"got {len(message)}")
    if len(message) > needed:
        raise PacketError("length", f"{count} addresses need {needed} bytes, "
                                    f"got {len(message)}")
    pseudo = _pseudo_header(src, dst, len(message)) if version == 3 else b""
    if internet_checksum(pseudo + message) != 0:
        raise PacketError("checksum", "VRRP checksum is wrong")
    if vrid == 0:
        raise PacketError("vrid", "VRID 0 is not valid")
    if expect.vrid is not None and vrid != expect.vrid:
        raise PacketError("vrid", f"VRID {vrid}, instance has {expect.vrid}")
    if version == 3:
        interval_cs = word & V3_MAX_INTERVAL_CS
        auth_type, auth_data = AUTH_NONE, bytes(AUTH_DATA_LEN)
    else:
        interval_cs = (word & 0xFF) * 100
        auth_type = word >> 8
        auth_data = message[needed - AUTH_DATA_LEN:needed]
    if interval_cs == 0:
        raise PacketError("interval", "advertisement interval is 0")
    if version == 2 and expect.interval_cs is not None and interval_cs != expect.interval_cs:
        raise PacketError("interval", f"v2 interval {interval_cs // 100} s, instance uses "
                                      f"{expect.interval_cs / 100:g} s")
    if count == 0:
        raise PacketError("addr_count", "the advert carries no address")
    raw = message[_FIXED.size:_FIXED.size + count * addr_len]
    addresses: tuple[IPAddress, ...]
    if addr_len == 4:
        addresses = tuple(ipaddress.IPv4Address(raw[i:i + 4]) for i in range(0, len(raw), 4))
    else:
        addresses = tuple(ipaddress.IPv6Address(raw[i:i + 16]) for i in range(0, len(raw), 16))
    if expect.addresses is not None:
        if count != len(expect.addresses):
            raise PacketError("addr_count", f"{count} addresses, instance has "
                                            f"{len(expect.addresses)}")
        if frozenset(addresses) != expect.addresses:
            missing = sorted(str(a) for a in expect.addresses - frozenset(addresses))
            raise PacketError("addr_list", f"addresses differ (missing {', '.join(missing)})")
    if version == 2:
        _check_auth(auth_type, auth_data, expect)
    return Advert(version=version, vrid=vrid, priority=priority, interval_cs=interval_cs,
                  addresses=addresses, src=src, dst=dst, auth_type=auth_type,
                  auth_data=auth_data)


def _check_auth(auth_type: int, auth_data: bytes, expect: Expect) -> None:
    if auth_type not in (AUTH_NONE, AUTH_SIMPLE):
        raise PacketError("auth", f"auth type {auth_type} is not supported (0 or 1)")
    if not expect.check_auth:
        return
    if expect.password is None:
        if auth_type != AUTH_NONE:
            raise PacketError("auth", "simple-password advert, instance has no authentication")
        return
    if auth_type != AUTH_SIMPLE:
        raise PacketError("auth", "advert has no authentication, instance expects a password")
    if auth_data != password_bytes(expect.password):
        raise PacketError("auth", "wrong simple-auth password")


def password_bytes(password: bytes) -> bytes:
    """A simple-auth password as the 8 wire bytes (keepalived: truncated to 8, NUL padded)."""
    return password[:AUTH_DATA_LEN].ljust(AUTH_DATA_LEN, b"\0")


def decode_ipv4(packet: bytes, expect: Expect = ANY) -> Advert:
    """Validate an IPv4 datagram (header included, as an IPv4 raw socket delivers it)."""
    header = parse_ipv4_header(packet)
    if header.protocol != IPPROTO_VRRP:
        raise PacketError("protocol", f"IP protocol {header.protocol}, expected 112")
    if expect.check_ttl and header.ttl != VRRP_TTL:
        raise PacketError("ttl", f"TTL {header.ttl}, must be 255")
    return decode_vrrp(packet[header.header_length:], src=header.src, dst=header.dst,
                       expect=expect)


def decode_ipv6(message: bytes, *, src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address,
                hop_limit: int, expect: Expect = ANY) -> Advert:
    """Validate a VRRP message from an IPv6 raw socket (payload only).

    `src` is recvfrom's address, `dst` comes from IPV6_PKTINFO and `hop_limit` from
    IPV6_HOPLIMIT ancillary data; the I/O layer must ask for both.
    """
    if expect.check_ttl and hop_limit != VRRP_TTL:
        raise PacketError("ttl", f"hop limit {hop_limit}, must be 255")
    return decode_vrrp(message, src=src, dst=dst, expect=expect)


def decode_ipv6_packet(packet: bytes, expect: Expect = ANY) -> Advert:
    """Validate a whole IPv6 packet (fixed header + VRRP, no extension headers)."""
    header = parse_ipv6_header(packet)
    if header.next_header != IPPROTO_VRRP:
        raise PacketError("protocol", f"next header {header.next_header}, expected 112")
    return decode_ipv6(packet[_IPV6_HEADER:], src=header.src, dst=header.dst,
                       hop_limit=header.hop_limit, expect=expect)
