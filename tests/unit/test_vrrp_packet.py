"""Test the VRRP codec: keepalived capture known answers, every drop reason, and fuzzing.

The known answers come from tests/data/keepalived-vrrp-captures.json (keepalived 2.2.7, two
nodes, VRID 51): each captured advert must decode to its recorded fields and re-encode to the
captured bytes exactly, Ethernet and IP headers included.
"""

from __future__ import annotations

import ipaddress
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l4lb.vrrp.announce import ETH_P_IP, ETH_P_IPV6, ethernet_header, multicast_mac
from l4lb.vrrp.packet import (
    ANY,
    AUTH_SIMPLE,
    REASONS,
    VRRP_GROUP_V4,
    VRRP_GROUP_V6,
    Advert,
    Expect,
    IPAddress,
    PacketError,
    decode_ipv4,
    decode_ipv6,
    decode_ipv6_packet,
    decode_vrrp,
    encode_ipv4,
    encode_ipv6,
    encode_vrrp,
    internet_checksum,
    ipv4_header,
    next_ip_id,
    parse_ipv4_header,
    parse_ipv6_header,
    password_bytes,
)

CAPTURES = Path(__file__).resolve().parent.parent / "data" / "keepalived-vrrp-captures.json"
ALL_SAMPLES: list[dict[str, Any]] = json.loads(CAPTURES.read_text())["samples"]
VRRP_SAMPLES = [s for s in ALL_SAMPLES if "vrrp" in s]
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

SRC4 = ipaddress.IPv4Address("10.99.0.11")
SRC6 = ipaddress.IPv6Address("fe80::99:ff:fe00:11")
VIP4 = ipaddress.IPv4Address("10.99.0.100")
VIP6 = ipaddress.IPv6Address("fd00:99::100")


def _frame(sample: dict[str, Any]) -> bytes:
    return bytes.fromhex(sample["frame_hex"])


def _ip_part(sample: dict[str, Any]) -> bytes:
    return _frame(sample)[14:]


def _decode_frame(sample: dict[str, Any], expect: Expect = ANY) -> Advert:
    ip = _ip_part(sample)
    if sample["ip"]["version"] == 4:
        return decode_ipv4(ip, expect)
    return decode_ipv6_packet(ip, expect)


# --- known answers from the keepalived captures -------------------------------------------


def test_captures_hold_every_kind_of_advert() -> None:
    kinds = {(s["vrrp"]["version"], s["ip"]["version"], s["vrrp"]["priority"] == 0)
             for s in VRRP_SAMPLES}
    assert kinds == {(2, 4, False), (2, 4, True), (3, 4, False), (3, 4, True),
                     (3, 6, False), (3, 6, True)}


@pytest.mark.parametrize("sample", VRRP_SAMPLES, ids=lambda s: f"n{s['n']}")
def test_capture_decodes_to_recorded_fields(sample: dict[str, Any]) -> None:
    rec = sample["vrrp"]
    expect = Expect(vrid=51, version=rec["version"],
                    interval_cs=100 if rec["version"] == 2 else None,
                    addresses=frozenset(ipaddress.ip_address(a) for a in rec["ip_addrs"]))
    advert = _decode_frame(sample, expect)
    assert advert.version == rec["version"]
    assert advert.vrid == rec["vrid"]
    assert advert.priority == rec["priority"]
    assert [str(a) for a in advert.addresses] == rec["ip_addrs"]
    assert len(advert.addresses) == rec["count_ip_addrs"]
    assert str(advert.src) == sample["ip"]["src"]
    assert str(advert.dst) == sample["ip"]["dst"]
    if rec["version"] == 2:
        assert advert.interval_cs == rec["advert_int_s"] * 100
        assert advert.auth_type == rec["auth_type"]
        assert advert.auth_data.hex() == rec["auth_data_hex"]
        assert advert.password is None
    else:
        assert advert.interval_cs == rec["max_advert_int_cs"]
    message = encode_vrrp(advert)
    assert len(message) == rec["vrrp_len"]
    assert struct.unpack("!H", message[6:8])[0] == rec["checksum"]


@pytest.mark.parametrize("sample", VRRP_SAMPLES, ids=lambda s: f"n{s['n']}")
def test_capture_reencodes_byte_for_byte(sample: dict[str, Any]) -> None:
    frame = _frame(sample)
    ip = frame[14:]
    advert = _decode_frame(sample)
    src_mac = bytes.fromhex(sample["eth"]["src"].replace(":", ""))
    assert encode_vrrp(advert).hex() == sample["vrrp_hex"]
    if sample["ip"]["version"] == 4:
        header = parse_ipv4_header(ip)
        packet = encode_ipv4(advert, ident=header.ident)
        ethertype = ETH_P_IP
    else:
        header6 = parse_ipv6_header(ip)
        packet = encode_ipv6(advert, flow_label=header6.flow_label)
        ethertype = ETH_P_IPV6
    assert packet == ip
    assert ethernet_header(multicast_mac(advert.dst), src_mac, ethertype) + packet == frame


@pytest.mark.parametrize("sample", [s for s in VRRP_SAMPLES if s["ip"]["version"] == 4],
                         ids=lambda s: f"n{s['n']}")
def test_capture_ipv4_header_is_keepalived_style(sample: dict[str, Any]) -> None:
    """TOS 0xc0, TTL 255, protocol 112, DF clear, no options; the id is per-instance."""
    header = parse_ipv4_header(_ip_part(sample))
    rec = sample["ip"]
    assert header.tos == int(rec["tos"], 16) == 0xC0
    assert header.ttl == rec["ttl"] == 255
    assert header.protocol == rec["proto"] == 112
    assert header.flags_frag == int(rec["flags_frag"], 16) == 0  # DF is NOT set
    assert header.header_length == rec["ihl"] == 20
    assert header.ident == rec["id"]
    assert header.total_length == rec["total_len"]


def test_capture_ipv6_header_uses_tc_c0_and_hop_limit_255() -> None:
    for sample in (s for s in VRRP_SAMPLES if s["ip"]["version"] == 6):
        header = parse_ipv6_header(_ip_part(sample))
        assert header.traffic_class == int(sample["ip"]["traffic_class"], 16) == 0xC0
        assert header.hop_limit == 255
        assert header.flow_label == sample["ip"]["flow_label"]
        assert header.src.is_link_local  # v3 over IPv6 speaks from the link-local address


def test_v3_ipv4_checksum_covers_the_pseudo_header_and_v2_does_not() -> None:
    """The two prio-0 adverts differ only in source address: v3 checksums differ, v2 do not."""
    def checksums(version: int, family: int) -> set[int]:
        return {s["vrrp"]["checksum"] for s in VRRP_SAMPLES
                if s["vrrp"]["priority"] == 0 and s["vrrp"]["version"] == version
                and s["ip"]["version"] == family}
    assert len(checksums(2, 4)) == 1
    assert len(checksums(3, 4)) == 2
    assert len(checksums(3, 6)) == 2


# --- ip id, checksum helpers ----------------------------------------------------------------


def test_next_ip_id_counts_from_one_and_skips_zero() -> None:
    assert next_ip_id(0) == 1
    assert next_ip_id(1) == 2
    assert next_ip_id(0xFFFE) == 0xFFFF
    assert next_ip_id(0xFFFF) == 1


def test_internet_checksum_known_values() -> None:
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(b"\x00\x01\xf2\x03\xf4\xf5\xf6\xf7") == 0x220D  # RFC 1071 example
    assert internet_checksum(b"\xff") == 0x00FF  # odd length pads with a zero byte


# --- every drop reason ----------------------------------------------------------------------


def _v3() -> Advert:
    return Advert(version=3, vrid=51, priority=100, interval_cs=100, addresses=(VIP4,),
                  src=SRC4, dst=VRRP_GROUP_V4)


def _v2() -> Advert:
    return Advert(version=2, vrid=51, priority=100, interval_cs=100, addresses=(VIP4,),
                  src=SRC4, dst=VRRP_GROUP_V4)


def _v6() -> Advert:
    return Advert(version=3, vrid=51, priority=100, interval_cs=100, addresses=(VIP6,),
                  src=SRC6, dst=VRRP_GROUP_V6)


def _reframe(message: bytes, *, ttl: int = 255, protocol: int = 112) -> bytes:
    """`message` behind a fresh, correct IPv4 header."""
    return ipv4_header(SRC4, VRRP_GROUP_V4, len(message), ident=1, ttl=ttl,
                       protocol=protocol) + message


def _with_checksum(message: bytes, *, pseudo: bool = True) -> bytes:
    """`message` with its v3-over-IPv4 (or v2, pseudo=False) checksum recomputed."""
    zeroed = message[:6] + b"\0\0" + message[8:]
    prefix = (SRC4.packed + VRRP_GROUP_V4.packed + struct.pack("!BBH", 0, 112, len(message))
              if pseudo else b"")
    return zeroed[:6] + struct.pack("!H", internet_checksum(prefix + zeroed)) + zeroed[8:]


def _patch(message: bytes, offset: int, value: bytes, *, pseudo: bool = True) -> bytes:
    return _with_checksum(message[:offset] + value + message[offset + len(value):],
                          pseudo=pseudo)


def _flip_checksum(message: bytes) -> bytes:
    return message[:7] + bytes([message[7] ^ 0x01]) + message[8:]


def _bad_ip_checksum() -> bytes:
    packet = bytearray(encode_ipv4(_v3(), ident=7))
    packet[10] ^= 0x01
    return bytes(packet)


def _fragment() -> bytes:
    message = encode_vrrp(_v3())
    head = bytearray(_reframe(message)[:20])
    head[6] = 0x20  # MF
    head[10:12] = b"\0\0"
    head[10:12] = struct.pack("!H", internet_checksum(bytes(head)))
    return bytes(head) + message


def _ipv4_version_6() -> bytes:
    head = bytearray(_reframe(encode_vrrp(_v3()))[:20])
    head[0] = 0x65
    head[10:12] = b"\0\0"
    head[10:12] = struct.pack("!H", internet_checksum(bytes(head)))
    return bytes(head) + encode_vrrp(_v3())


def _total_length(total: int) -> bytes:
    message = encode_vrrp(_v3())
    head = bytearray(_reframe(message)[:20])
    head[2:4] = struct.pack("!H", total)
    head[10:12] = b"\0\0"
    head[10:12] = struct.pack("!H", internet_checksum(bytes(head)))
    return bytes(head) + message


PASSWORD = Expect(password=b"s3cret")
INSTANCE = Expect(vrid=51, version=3, addresses=frozenset({VIP4}))
V2_INSTANCE = Expect(vrid=51, version=2, interval_cs=100)

# reason -> list of (label, packet builder, expectation); decode_ipv4 must raise that reason.
BAD: list[tuple[str, str, Callable[[], bytes], Expect]] = [
    ("truncated", "short IP header", lambda: encode_ipv4(_v3(), ident=1)[:19], ANY),
    ("truncated", "IP total length beyond the data", lambda: _total_length(40), ANY),
    ("truncated", "short VRRP header", lambda: _reframe(encode_vrrp(_v3())[:7]), ANY),
    ("truncated", "count says 2, one address",
     lambda: _reframe(_patch(encode_vrrp(_v3()), 3, b"\x02")), ANY),
    ("length", "trailing bytes", lambda: _reframe(encode_vrrp(_v3()) + b"\0\0\0\0"), ANY),
    ("length", "IP total length short of the data", lambda: _total_length(30), ANY),
    ("ip_header", "IPv4 header checksum", _bad_ip_checksum, ANY),
    ("ip_header", "a fragment", _fragment, ANY),
    ("ip_header", "IP version 6 in an IPv4 header", _ipv4_version_6, ANY),
    ("protocol", "protocol 51 (AH)", lambda: _reframe(encode_vrrp(_v3()), protocol=51), ANY),
    ("ttl", "TTL 254", lambda: _reframe(encode_vrrp(_v3()), ttl=254), ANY),
    ("version", "version 1", lambda: _reframe(_patch(encode_vrrp(_v3()), 0, b"\x11")), ANY),
    ("version", "v2 packet, v3 instance", lambda: encode_ipv4(_v2(), ident=1), INSTANCE),
    ("type", "type 2", lambda: _reframe(_patch(encode_vrrp(_v3()), 0, b"\x32")), ANY),
    ("checksum", "v3 checksum off by one bit",
     lambda: _reframe(_flip_checksum(encode_vrrp(_v3()))), ANY),
    ("checksum", "v2 checksum off by one bit",
     lambda: _reframe(_flip_checksum(encode_vrrp(_v2()))), ANY),
    ("checksum", "v3 over IPv4 summed without the pseudo-header",
     lambda: _reframe(_with_checksum(encode_vrrp(_v3()), pseudo=False)), ANY),
    ("vrid", "VRID 0", lambda: _reframe(_patch(encode_vrrp(_v3()), 1, b"\x00")), ANY),
    ("vrid", "another instance", lambda: encode_ipv4(_v3(), ident=1), Expect(vrid=52)),
    ("interval", "v3 interval 0",
     lambda: _reframe(_patch(encode_vrrp(_v3()), 4, b"\x00\x00")), ANY),
    ("interval", "v2 interval 0",
     lambda: _reframe(_patch(encode_vrrp(_v2()), 5, b"\x00", pseudo=False)), ANY),
    ("interval", "v2 interval differs from the instance's",
     lambda: encode_ipv4(Advert(version=2, vrid=51, priority=100, interval_cs=300,
                                addresses=(VIP4,), src=SRC4, dst=VRRP_GROUP_V4), ident=1),
     V2_INSTANCE),
    ("addr_count", "count 0",
     lambda: _reframe(_patch(encode_vrrp(_v3())[:8], 3, b"\x00")), ANY),
    ("addr_count", "one address, instance has two",
     lambda: encode_ipv4(_v3(), ident=1),
     Expect(addresses=frozenset({VIP4, ipaddress.IPv4Address("10.99.0.101")}))),
    ("addr_list", "another address",
     lambda: encode_ipv4(_v3(), ident=1),
     Expect(addresses=frozenset({ipaddress.IPv4Address("10.99.0.101")}))),
    ("auth", "auth type 2 (AH) over protocol 112",
     lambda: _reframe(_patch(encode_vrrp(_v2()), 4, b"\x02", pseudo=False)), ANY),
    ("auth", "password advert, instance without auth",
     lambda: encode_ipv4(Advert(version=2, vrid=51, priority=100, interval_cs=100,
                                addresses=(VIP4,), src=SRC4, dst=VRRP_GROUP_V4,
                                auth_type=AUTH_SIMPLE, auth_data=password_bytes(b"s3cret")),
                         ident=1), ANY),
    ("auth", "no auth, instance expects a password",
     lambda: encode_ipv4(_v2(), ident=1), PASSWORD),
    ("auth", "wrong password",
     lambda: encode_ipv4(Advert(version=2, vrid=51, priority=100, interval_cs=100,
                                addresses=(VIP4,), src=SRC4, dst=VRRP_GROUP_V4,
                                auth_type=AUTH_SIMPLE, auth_data=password_bytes(b"guess")),
                         ident=1), PASSWORD),
]


def test_bad_table_covers_every_reason() -> None:
    assert {reason for reason, *_ in BAD} == REASONS


@pytest.mark.parametrize(("reason", "label", "build", "expect"), BAD,
                         ids=[f"{r}-{label}" for r, label, *_ in BAD])
def test_decode_drops_with_reason(reason: str, label: str, build: Callable[[], bytes],
                                  expect: Expect) -> None:
    packet = build()
    with pytest.raises(PacketError) as info:
        decode_ipv4(packet, expect)
    assert info.value.reason == reason, f"{label}: {info.value}"
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"{reason}: ")


def test_instance_rows_are_otherwise_well_formed() -> None:
    """Guard the table: rows that fail an instance check decode fine without that check."""
    rows = [(label, build) for _, label, build, expect in BAD if expect is not ANY]
    assert len(rows) >= 7
    for label, build in rows:
        assert decode_ipv4(build(), Expect(check_auth=False)).vrid == 51, label


def test_ipv6_hop_limit_and_v2_over_ipv6_are_refused() -> None:
    message = encode_vrrp(_v6())
    with pytest.raises(PacketError) as info:
        decode_ipv6(message, src=SRC6, dst=VRRP_GROUP_V6, hop_limit=64)
    assert info.value.reason == "ttl"
    assert decode_ipv6(message, src=SRC6, dst=VRRP_GROUP_V6, hop_limit=64,
                       expect=Expect(check_ttl=False)) == _v6()
    v2ish = bytes([0x21]) + message[1:]
    with pytest.raises(PacketError) as info:
        decode_ipv6(v2ish, src=SRC6, dst=VRRP_GROUP_V6, hop_limit=255)
    assert info.value.reason == "version"
    wrong_dst = ipaddress.IPv6Address("ff02::1")
    with pytest.raises(PacketError) as info:
        decode_ipv6(message, src=SRC6, dst=wrong_dst, hop_limit=255)
    assert info.value.reason == "checksum"  # the pseudo-header binds the destination


def test_ipv6_packet_next_header_must_be_112() -> None:
    packet = bytearray(encode_ipv6(_v6()))
    packet[6] = 58
    with pytest.raises(PacketError) as info:
        decode_ipv6_packet(bytes(packet))
    assert info.value.reason == "protocol"


def test_unicast_mode_may_skip_the_ttl_check() -> None:
    packet = _reframe(encode_vrrp(_v3()), ttl=61)
    assert decode_ipv4(packet, Expect(check_ttl=False)) == _v3()


# --- simple password authentication (v2 type 1) --------------------------------------------


def test_simple_password_round_trip_and_report() -> None:
    advert = Advert(version=2, vrid=51, priority=100, interval_cs=100, addresses=(VIP4,),
                    src=SRC4, dst=VRRP_GROUP_V4, auth_type=AUTH_SIMPLE,
                    auth_data=password_bytes(b"s3cret"))
    packet = encode_ipv4(advert, ident=3)
    assert packet.endswith(b"s3cret\0\0")  # cleartext on the wire, as keepalived sends it
    assert decode_ipv4(packet, PASSWORD) == advert
    sniffed = decode_ipv4(packet, Expect(check_auth=False))
    assert sniffed.auth_type == AUTH_SIMPLE
    assert sniffed.password == b"s3cret"


def test_password_is_truncated_to_eight_bytes_like_keepalived() -> None:
    assert password_bytes(b"0123456789") == b"01234567"
    assert password_bytes(b"ab") == b"ab\0\0\0\0\0\0"
    long_pw = Expect(password=b"0123456789")
    advert = Advert(version=2, vrid=51, priority=100, interval_cs=100, addresses=(VIP4,),
                    src=SRC4, dst=VRRP_GROUP_V4, auth_type=AUTH_SIMPLE,
                    auth_data=password_bytes(b"01234567"))
    assert decode_ipv4(encode_ipv4(advert, ident=1), long_pw).password == b"01234567"


# --- construction errors are ValueError, not PacketError ------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"version": 4}, {"vrid": 0}, {"vrid": 256}, {"priority": 256}, {"priority": -1},
    {"interval_cs": 0}, {"interval_cs": 4096}, {"addresses": ()},
    {"addresses": (VIP6,)}, {"dst": VRRP_GROUP_V6}, {"auth_type": 1},
    {"version": 2, "interval_cs": 150}, {"version": 2, "interval_cs": 25600},
    {"version": 2, "auth_type": 2}, {"version": 2, "auth_data": b"short"},
    {"addresses": (VIP4,) * 256},
])
def test_advert_rejects_impossible_fields(kwargs: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"version": 3, "vrid": 51, "priority": 100, "interval_cs": 100,
                              "addresses": (VIP4,), "src": SRC4, "dst": VRRP_GROUP_V4}
    fields.update(kwargs)
    with pytest.raises(ValueError) as info:
        Advert(**fields)
    assert not isinstance(info.value, PacketError)


def test_v2_over_ipv6_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="IPv4 only"):
        Advert(version=2, vrid=1, priority=1, interval_cs=100, addresses=(VIP6,), src=SRC6,
               dst=VRRP_GROUP_V6)


# --- hypothesis: round trips and fuzzing ----------------------------------------------------

ipv4s = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ipv6s = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


@st.composite
def adverts(draw: st.DrawFn) -> Advert:
    kind = draw(st.sampled_from(["v2", "v3-4", "v3-6"]))
    addrs: st.SearchStrategy[IPAddress] = ipv6s if kind == "v3-6" else ipv4s
    src, dst = draw(addrs), draw(addrs)
    addresses = tuple(draw(st.lists(addrs, min_size=1, max_size=20)))
    common: dict[str, Any] = {"vrid": draw(st.integers(1, 255)),
                              "priority": draw(st.integers(0, 255)),
                              "addresses": addresses, "src": src, "dst": dst}
    if kind == "v2":
        auth = draw(st.sampled_from([0, 1]))
        data = draw(st.binary(min_size=8, max_size=8)) if auth else bytes(8)
        return Advert(version=2, interval_cs=100 * draw(st.integers(1, 255)), auth_type=auth,
                      auth_data=data, **common)
    return Advert(version=3, interval_cs=draw(st.integers(1, 4095)), **common)


def _wire(advert: Advert, ident: int = 1) -> bytes:
    """The packet as a receiver gets it: IPv4 with header, IPv6 with header (for the fuzzers)."""
    if advert.family == 4:
        return encode_ipv4(advert, ident=ident)
    return encode_ipv6(advert)


@SETTINGS
@given(adverts(), st.integers(0, 0xFFFF))
def test_round_trip(advert: Advert, ident: int) -> None:
    message = encode_vrrp(advert)
    assert decode_vrrp(message, src=advert.src, dst=advert.dst,
                       expect=Expect(check_auth=False)) == advert
    packet = _wire(advert, ident)
    if advert.family == 4:
        assert decode_ipv4(packet, Expect(check_auth=False)) == advert
        assert parse_ipv4_header(packet).ident == ident
    else:
        assert decode_ipv6_packet(packet) == advert


@SETTINGS
@given(st.binary(max_size=120))
def test_random_bytes_only_raise_packet_error(data: bytes) -> None:
    decoders: list[Callable[[], Advert]] = [
        lambda: decode_ipv4(data),
        lambda: decode_ipv6_packet(data),
        lambda: decode_vrrp(data, src=SRC4, dst=VRRP_GROUP_V4),
        lambda: decode_ipv6(data, src=SRC6, dst=VRRP_GROUP_V6, hop_limit=255),
    ]
    for decode in decoders:
        try:
            advert = decode()
        except PacketError as exc:
            assert exc.reason in REASONS
        else:
            assert isinstance(advert, Advert)


@st.composite
def versioned_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes that start like VRRP (version 2/3, type 1): the fuzzer gets past byte 0."""
    head = draw(st.sampled_from([0x21, 0x31]))
    return bytes([head]) + draw(st.binary(min_size=7, max_size=80))


@SETTINGS
@given(versioned_bytes(), st.sampled_from([4, 6]))
def test_random_vrrp_like_messages_only_raise_packet_error(data: bytes, family: int) -> None:
    src: IPAddress = SRC4 if family == 4 else SRC6
    dst: IPAddress = VRRP_GROUP_V4 if family == 4 else VRRP_GROUP_V6
    try:
        decode_vrrp(data, src=src, dst=dst)
    except PacketError as exc:
        assert exc.reason in REASONS


@SETTINGS
@given(adverts(), st.data())
def test_any_single_byte_change_of_an_ipv4_packet_is_dropped(advert: Advert,
                                                             data: st.DataObject) -> None:
    """Every byte of an IPv4 VRRP packet is covered by the IP or the VRRP checksum."""
    if advert.family != 4:
        advert = Advert(version=3, vrid=advert.vrid, priority=advert.priority,
                        interval_cs=advert.interval_cs, addresses=(VIP4,), src=SRC4,
                        dst=VRRP_GROUP_V4)
    packet = bytearray(encode_ipv4(advert, ident=9))
    at = data.draw(st.integers(0, len(packet) - 1))
    packet[at] ^= data.draw(st.integers(1, 255))
    with pytest.raises(PacketError):
        decode_ipv4(bytes(packet), Expect(check_auth=False))


@SETTINGS
@given(adverts(), st.data())
def test_mutated_packets_drop_or_decode_to_the_same_advert(advert: Advert,
                                                           data: st.DataObject) -> None:
    """Flip, truncate or extend: PacketError, or (IPv6 TC/flow label) the very same advert."""
    packet = bytearray(_wire(advert))
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "flip2"]))
    if how in ("flip", "flip2"):
        for _ in range(1 if how == "flip" else 2):
            at = data.draw(st.integers(0, len(packet) - 1))
            packet[at] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del packet[data.draw(st.integers(0, len(packet) - 1)):]
    else:
        packet += data.draw(st.binary(min_size=1, max_size=20))
    try:
        decoded = decode_ipv4(bytes(packet), Expect(check_auth=False)) if advert.family == 4 \
            else decode_ipv6_packet(bytes(packet))
    except PacketError as exc:
        assert exc.reason in REASONS
    else:
        # Two flips can cancel out in a one's-complement sum (0x0000 <-> 0xffff words), so only
        # demand the same advert where the checksums guarantee it.
        if how != "flip2":
            assert decoded == advert
