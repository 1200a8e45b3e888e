"""PROXY protocol header parser (accept_proxy): golden vectors written from the specification,
and the C parser (src_ext/core/proxyhdr.c, through l4lb._dataplane.proxy_parse) held to its
Python twin (l4lb.proxyproto.parse) verdict for verdict over those vectors, every truncation of
them, and hypothesis-generated inputs (random bytes, mutated valid headers)."""

from __future__ import annotations

import ipaddress
import struct
import types
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l4lb import proxyproto
from l4lb.proxyproto import ParsedHeader, ProxyHeaderError

SIG = proxyproto.V2_SIGNATURE


def _v2(cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    return SIG + bytes([cmd, fam]) + struct.pack("!H", len(body) if length is None
                                                 else length) + body


def _v2_tcp4(src: str, sport: int, dst: str, dport: int, tlv: bytes = b"") -> bytes:
    body = (ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
            + struct.pack("!HH", sport, dport) + tlv)
    return _v2(0x21, 0x11, body)


def _v2_tcp6(src: str, sport: int, dst: str, dport: int, tlv: bytes = b"") -> bytes:
    body = (ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
            + struct.pack("!HH", sport, dport) + tlv)
    return _v2(0x21, 0x21, body)


# (header bytes, expected ParsedHeader) for complete, valid headers; a length of 0 stands for
# len(header) (version 1 vectors, whose length is easy to get wrong by hand)
_VALID: list[tuple[bytes, ParsedHeader]] = [
    (b"PROXY TCP4 192.0.2.7 198.51.100.10 51234 443\r\n",
     ParsedHeader(0, 1, ("192.0.2.7", 51234), ("198.51.100.10", 443))),
    (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
     ParsedHeader(0, 1, ("0.0.0.0", 0), ("255.255.255.255", 65535))),
    (b"PROXY TCP6 2001:db8::1 2001:DB8:0:0:0:0:0:2 1 2\r\n",
     ParsedHeader(0, 1, ("2001:db8::1", 1), ("2001:db8::2", 2))),
    (b"PROXY TCP6 :: ::ffff:192.0.2.1 10 20\r\n",
     ParsedHeader(0, 1, ("::", 10), ("::ffff:c000:201", 20))),
    (b"PROXY TCP6 1:2:3:4:5:6:7:: 0001:02:3:4:5:6:1.2.3.4 1 1\r\n",
     ParsedHeader(0, 1, ("1:2:3:4:5:6:7:0", 1), ("1:2:3:4:5:6:102:304", 1))),
    (b"PROXY UNKNOWN\r\n", ParsedHeader(0, 1, None, None)),
    (b"PROXY UNKNOWN anything at all \x00\xff goes\r\n", ParsedHeader(0, 1, None, None)),
    (b"PROXY TCP6 " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7 + b"ffff 65535 65535\r\n",
     ParsedHeader(0, 1, ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
                  ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535))),
    # the specification's worst case: 107 bytes
    (b"PROXY UNKNOWN " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7 + b"ffff 65535 65535\r\n",
     ParsedHeader(0, 1, None, None)),
    (_v2_tcp4("192.0.2.7", 0x1234, "198.51.100.10", 443),
     ParsedHeader(28, 2, ("192.0.2.7", 0x1234), ("198.51.100.10", 443))),
    (_v2_tcp6("2001:db8::1", 1, "2001:db8::2", 2),
     ParsedHeader(52, 2, ("2001:db8::1", 1), ("2001:db8::2", 2))),
    # TLVs (here a PP2_TYPE_ALPN and a NOOP) are covered by the length and skipped
    (_v2_tcp4("10.0.0.1", 5, "10.0.0.2", 6, b"\x01\x00\x02h2\x04\x00\x00"),
     ParsedHeader(16 + 12 + 8, 2, ("10.0.0.1", 5), ("10.0.0.2", 6))),
    (_v2(0x20, 0x00, b""), ParsedHeader(16, 2, None, None)),  # LOCAL (health check)
    (_v2(0x20, 0x11, b"\x00" * 12), ParsedHeader(28, 2, None, None)),  # LOCAL ignores the block
    (_v2(0x20, 0xff, b"x"), ParsedHeader(17, 2, None, None)),  # ... and the family byte
    (_v2(0x21, 0x00, b""), ParsedHeader(16, 2, None, None)),  # PROXY UNSPEC: real addresses
    (_v2(0x21, 0x12, b"\x00" * 12), ParsedHeader(28, 2, None, None)),  # UDP4: real addresses
    (_v2(0x21, 0x31, b"\x00" * 216), ParsedHeader(232, 2, None, None)),  # UNIX: real addresses
    (_v2(0x21, 0x11, b"\x00" * 12, length=65535), ParsedHeader(16 + 65535, 2,
                                                               ("0.0.0.0", 0), ("0.0.0.0", 0))),
]

VALID = [(data, want if want.length else ParsedHeader(len(data), want.version, want.src,
                                                       want.dst)) for data, want in _VALID]
assert max(len(d) for d, w in VALID if w.version == 1) == proxyproto.V1_MAX

INVALID: list[bytes] = [
    b"GET / HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01",  # a TLS ClientHello
    b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",  # two spaces
    b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",  # a trailing space
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",  # three fields
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF without CR
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",  # CR without LF
    b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # a leading zero in an octet
    b"PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 ::1 ::1 1 2\r\n",  # IPv6 in TCP4
    b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",  # IPv4 in TCP6
    b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",  # a zone
    b"PROXY TCP6 1::2::3 ::1 1 2\r\n",
    b"PROXY TCP6 12345::1 ::1 1 2\r\n",
    b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",
    b"PROXY TCP6 1:2:3:4:5:6:7:8:: ::1 1 2\r\n",
    b"PROXY TCP6 :1:2:3:4:5:6:7 ::1 1 2\r\n",
    b"PROXY TCP6 1:2:3:4:5:6:7: ::1 1 2\r\n",
    b"PROXY TCP6 ::1.2.3.4:1 ::1 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",  # a leading zero in a port
    b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
    b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY UNKNOWNX\r\n",
    b"PROXY \r\n",
    b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n",  # 108 bytes
    b"PROXY UNKNOWN " + b"x" * 100,  # no CRLF within 107 bytes
    SIG[:11] + b"X",
    SIG + b"\x11\x11\x00\x0c",  # version 1 in a version 2 header
    SIG + b"\x22\x11\x00\x0c",  # command 2
    SIG + b"\x21\x13\x00\x0c",  # transport 3
    SIG + b"\x21\x41\x00\x0c",  # family 4
    SIG + b"\x21\x01\x00\x0c",  # UNSPEC family with a transport
    SIG + b"\x21\x11\x00\x0b",  # too short for IPv4 addresses
    SIG + b"\x21\x21\x00\x23",  # too short for IPv6 addresses
    SIG + b"\x21\x31\x00\xd7",  # too short for UNIX addresses
]

# valid beginnings that need more bytes
INCOMPLETE: list[bytes] = [b"", b"P", b"PROXY", b"PROXY ", b"PROXY TCP4 1.2.3.4",
                           b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", SIG[:1], SIG, SIG + b"\x21",
                           SIG + b"\x21\x11\x00", SIG + b"\x21\x11\x00\x0c" + b"\x00" * 11,
                           SIG + b"\x21\x21\x00\x24" + b"\x00" * 35]


def _c_verdict(cdp: types.ModuleType, data: bytes) -> Any:
    try:
        return cdp.proxy_parse(data)
    except ValueError:
        return "invalid"


def _py_verdict(data: bytes) -> Any:
    """parse()'s verdict in the C wrapper's shape."""
    try:
        got = proxyproto.parse(data)
    except ProxyHeaderError:
        return "invalid"
    if got is None:
        return None
    if got.src is None or got.dst is None:
        return (got.length, got.version, 0, b"", 0, b"", 0)
    packed = [ipaddress.ip_address(a).packed for a in (got.src[0], got.dst[0])]
    return (got.length, got.version, got.family, packed[0], got.src[1], packed[1], got.dst[1])


@pytest.mark.parametrize(("data", "want"), VALID)
def test_valid_headers(data: bytes, want: ParsedHeader) -> None:
    assert proxyproto.parse(data) == want
    # what follows the header is not the parser's business
    assert proxyproto.parse(data + b"GET / HTTP/1.1\r\n") == want


@pytest.mark.parametrize("data", INVALID)
def test_invalid_headers(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        proxyproto.parse(data)


@pytest.mark.parametrize("data", INCOMPLETE)
def test_incomplete_headers(data: bytes) -> None:
    assert proxyproto.parse(data) is None


def test_every_prefix_of_a_valid_header_needs_more() -> None:
    # a version 1 prefix always needs more; a version 2 one is complete once its fixed part
    # and addresses are in (TLVs are skipped by count), and then says the same as the whole
    for data, want in VALID:
        for cut in range(len(data)):
            got = proxyproto.parse(data[:cut])
            assert got is None or (want.version == 2 and got == want), (data, cut)


def test_parsed_addresses_agree_with_ipaddress() -> None:
    # the hand-written text readers accept what ipaddress accepts (without zones)
    for data, want in VALID:
        if want.src is not None and want.dst is not None and data.startswith(b"PROXY"):
            fields = data.split(b" ")
            for field, got in ((fields[2], want.src[0]), (fields[3], want.dst[0])):
                assert ipaddress.ip_address(field.decode()) == ipaddress.ip_address(got)


def test_c_parser_matches_golden_vectors(cdp: types.ModuleType) -> None:
    for data, _ in VALID:
        for cut in range(len(data) + 1):
            assert _c_verdict(cdp, data[:cut]) == _py_verdict(data[:cut]), (data, cut)
    for data in INVALID + INCOMPLETE:
        assert _c_verdict(cdp, data) == _py_verdict(data), data


_FIELD_TEXT = st.sampled_from(
    ["0", "1", "01", "255", "256", "65535", "65536", "1.2.3.4", "01.2.3.4", "::", "::1", ":::",
     "1::", "::ffff:1.2.3.4", "fe80::1%lo", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "g::1",
     "12345::", "1.2.3", "", "UNKNOWN", "TCP4", "TCP6", " ", "\r", "\n", "\r\n",
     "0:0:0:0:0:0:1.2.3.4", "ABCD:ef01::", "1::2:3:4:5:6:7", "1::2:3:4:5:6:7:8", "::1.2.3.4:5",
     "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:7:1.2.3.4", "00000::", "0000::", "192.168.001.1"])
_LATIN1 = st.text(alphabet=st.characters(max_codepoint=255), max_size=4)
_V1_LINES = st.builds(lambda parts: ("PROXY " + "".join(parts)).encode("latin-1"),
                      st.lists(st.one_of(_FIELD_TEXT, _LATIN1), max_size=10))
_V1_FIELDS = st.builds(
    lambda proto, fields, end: (f"PROXY {proto} " + " ".join(fields) + end).encode("latin-1"),
    st.sampled_from(["TCP4", "TCP6", "UNKNOWN"]), st.lists(_FIELD_TEXT, min_size=3, max_size=5),
    st.sampled_from(["\r\n", "\r", "\n", " \r\n", "", "\r\nGET"]))

_ADDR_TEXT = st.sampled_from(
    ["1.2.3.4", "0.0.0.0", "255.255.255.255", "01.2.3.4", "1.2.3.04", "256.1.1.1", "1.2.3",
     "1.2.3.4.5", "::", "::1", "2001:db8::1", "::ffff:1.2.3.4", "1:2:3:4:5:6:7:8", "1::2::3",
     "fe80::1%lo", "12345::", "g::", ":1", "1:", "1.2.3.4:"])
_PORT_TEXT = st.sampled_from(["0", "1", "80", "65535", "65536", "00", "01", "0080", "-1", "+1",
                              "1e3", "123456", ""])
_V1_STRUCTURED = st.builds(
    lambda proto, a, b, p, q: f"PROXY {proto} {a} {b} {p} {q}\r\n".encode(),
    st.sampled_from(["TCP4", "TCP6"]), _ADDR_TEXT, _ADDR_TEXT, _PORT_TEXT, _PORT_TEXT)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([d for d, _ in VALID])))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.integers(0, 2))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == 0 and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == 1:
            data.insert(at, draw(st.integers(0, 255)))
        elif data:
            del data[at]
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut] if draw(st.booleans()) else data)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=140), _V1_LINES, _V1_FIELDS, _V1_STRUCTURED,
                      _mutated(),
                      st.builds(lambda tail: SIG + tail, st.binary(max_size=60))))
def test_c_parser_matches_the_python_twin(cdp: types.ModuleType, data: bytes) -> None:
    want = _py_verdict(data)
    assert _c_verdict(cdp, data) == want
    if want is None:
        assert len(data) < proxyproto.PARSE_MIN  # the relay never waits beyond a full peek


@settings(max_examples=500, deadline=None)
@given(a=st.ip_addresses(v=6), b=st.ip_addresses(v=4), form=st.integers(0, 2),
       ports=st.tuples(st.integers(0, 65535), st.integers(0, 65535)))
def test_any_address_text_reads_back(cdp: types.ModuleType, a: ipaddress.IPv6Address,
                                     b: ipaddress.IPv4Address, form: int,
                                     ports: tuple[int, int]) -> None:
    quad = ":".join(a.exploded.split(":")[:6]) + ":" + str(ipaddress.IPv4Address(a.packed[12:]))
    text = [str(a), a.exploded, quad][form]  # compressed, full, last 32 bits dotted
    data = f"PROXY TCP6 {text} ::1 {ports[0]} {ports[1]}\r\n".encode()
    want = ParsedHeader(len(data), 1, (str(a), ports[0]), ("::1", ports[1]))
    assert proxyproto.parse(data) == want
    assert _c_verdict(cdp, data) == _py_verdict(data)
    v4 = f"PROXY TCP4 {b} {b} {ports[0]} {ports[1]}\r\n".encode()
    assert proxyproto.parse(v4) == ParsedHeader(len(v4), 1, (str(b), ports[0]), (str(b), ports[1]))
    assert _c_verdict(cdp, v4) == _py_verdict(v4)
