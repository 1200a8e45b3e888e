"""PROXY protocol header builders: golden vectors from the specification, and the C builder
(src_ext/core/proxyhdr.c, through l4lb._dataplane) held to its Python twin (l4lb.proxyproto)
byte for byte over addresses chosen to hit every formatting rule."""

from __future__ import annotations

import ipaddress
import random
import socket
import types

import pytest

from l4lb import proxyproto

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def test_v1_ipv4_golden() -> None:
    assert proxyproto.build(1, ("192.0.2.7", 51234), ("198.51.100.10", 443)) == \
        b"PROXY TCP4 192.0.2.7 198.51.100.10 51234 443\r\n"


def test_v1_ipv6_golden_rfc5952_text() -> None:
    # the first longest zero run is compressed; a single zero group is not; lowercase hex
    assert proxyproto.build(1, ("2001:DB8:0:0:1:0:0:1", 0), ("2001:db8:0:1:1:1:1:1", 65535)) == \
        b"PROXY TCP6 2001:db8::1:0:0:1 2001:db8:0:1:1:1:1:1 0 65535\r\n"
    assert proxyproto.build(1, ("::1", 1), ("::", 2)) == b"PROXY TCP6 ::1 :: 1 2\r\n"
    # glibc's inet_ntop would print ::1.2.3.4 here; both builders print hex
    assert proxyproto.build(1, ("::102:304", 1), ("fe80::", 2)) == \
        b"PROXY TCP6 ::102:304 fe80:: 1 2\r\n"


def test_v2_golden() -> None:
    assert proxyproto.build(2, ("192.0.2.7", 0x1234), ("198.51.100.10", 443)) == (
        SIG + b"\x21\x11\x00\x0c" + bytes([192, 0, 2, 7, 198, 51, 100, 10])
        + b"\x12\x34\x01\xbb")
    v6 = proxyproto.build(2, ("2001:db8::1", 1), ("2001:db8::2", 2))
    assert v6[:16] == SIG + b"\x21\x21\x00\x24" and len(v6) == 52
    assert v6[16:32] == ipaddress.IPv6Address("2001:db8::1").packed
    assert v6[48:] == b"\x00\x01\x00\x02"


def test_mapped_pairs_are_written_as_ipv4() -> None:
    assert proxyproto.build(1, ("::ffff:10.0.0.1", 5), ("::ffff:10.0.0.2", 6)) == \
        b"PROXY TCP4 10.0.0.1 10.0.0.2 5 6\r\n"
    assert proxyproto.build(2, ("::ffff:10.0.0.1", 5), ("::ffff:10.0.0.2", 6)) == \
        proxyproto.build(2, ("10.0.0.1", 5), ("10.0.0.2", 6))


def test_mixed_families_say_unknown() -> None:
    assert proxyproto.build(1, ("::ffff:10.0.0.1", 5), ("2001:db8::2", 6)) == \
        b"PROXY UNKNOWN\r\n"
    assert proxyproto.build(2, ("::ffff:10.0.0.1", 5), ("2001:db8::2", 6)) == \
        SIG + b"\x21\x00\x00\x00"


def test_local_headers() -> None:
    assert proxyproto.local(1) == b"PROXY UNKNOWN\r\n"
    assert proxyproto.local(2) == SIG + b"\x20\x00\x00\x00"


@pytest.mark.parametrize("args", [
    (3, ("10.0.0.1", 1), ("10.0.0.2", 2)),
    (1, ("10.0.0.1", 65536), ("10.0.0.2", 2)),
    (1, ("10.0.0.1", -1), ("10.0.0.2", 2)),
    (2, ("not-an-ip", 1), ("10.0.0.2", 2)),
])
def test_bad_arguments(args: tuple[int, tuple[str, int], tuple[str, int]]) -> None:
    with pytest.raises(ValueError):
        proxyproto.build(*args)


def test_longest_v1_header_fits_the_bound() -> None:
    longest = proxyproto.build(1, ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 65535),
                               ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd", 65535))
    assert len(longest) == 104 <= proxyproto.V1_MAX


def _addresses(rng: random.Random) -> list[bytes]:
    """IPv6 addresses that exercise zero-run compression, plus mapped and random ones."""
    out = [bytes(16), bytes(15) + b"\x01", b"\xfe\x80" + bytes(14),
           bytes(10) + b"\xff\xff" + bytes([1, 2, 3, 4]), bytes(12) + bytes([1, 2, 3, 4])]
    for _ in range(400):
        groups = [rng.choice([0, 0, 0, 1, 0xABCD, rng.randrange(65536)]) for _ in range(8)]
        out.append(b"".join(g.to_bytes(2, "big") for g in groups))
    return out


def _c_build(cdp: types.ModuleType, version: int, family: int, src: bytes, sport: int,
             dst: bytes, dport: int) -> bytes:
    got: bytes = cdp.proxy_header(version, family, src, sport, dst, dport)
    return got


def test_c_builder_matches_the_python_twin(cdp: types.ModuleType) -> None:
    rng = random.Random(20261122)
    v6 = _addresses(rng)
    for version in (1, 2):
        for i, a in enumerate(v6):
            b = v6[(i * 7 + 3) % len(v6)]
            sport, dport = rng.randrange(65536), rng.randrange(65536)
            want = proxyproto.build(version, (str(ipaddress.IPv6Address(a)), sport),
                                    (str(ipaddress.IPv6Address(b)), dport))
            assert _c_build(cdp, version, 6, a, sport, b, dport) == want, (a, b)
        for _ in range(200):
            a4, b4 = rng.randbytes(4), rng.randbytes(4)
            sport, dport = rng.randrange(65536), rng.randrange(65536)
            want = proxyproto.build(version, (socket.inet_ntoa(a4), sport),
                                    (socket.inet_ntoa(b4), dport))
            assert _c_build(cdp, version, 4, a4, sport, b4, dport) == want
        assert cdp.proxy_local_header(version) == proxyproto.local(version)


def test_c_builder_rejects_bad_arguments(cdp: types.ModuleType) -> None:
    with pytest.raises(ValueError):
        cdp.proxy_header(3, 4, bytes(4), 1, bytes(4), 2)
    with pytest.raises(ValueError):
        cdp.proxy_header(1, 5, bytes(4), 1, bytes(4), 2)
    with pytest.raises(ValueError):
        cdp.proxy_header(1, 4, bytes(16), 1, bytes(4), 2)
    with pytest.raises(ValueError):
        cdp.proxy_local_header(0)
