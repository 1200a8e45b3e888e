"""Unit tests of the pure half of the SYN probes: checksums, SYN building, reply parsing and
matching, and the BPF program (run by a small classic-BPF interpreter written here)."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from l4lb.config import ConfigError, load_text
from l4lb.health import HealthSettings, HealthSettingsError, ProbeSpec
from l4lb.health.synprobe import (
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    Reply,
    bpf_program,
    build_syn,
    match_key,
    ones_sum,
    parse_reply,
    probe_key,
    pseudo_header,
    reply_verdict,
    syn_partial_sum,
    tcp_checksum,
)

from .fakehost import FakeHost

V4 = socket.inet_pton(socket.AF_INET, "127.0.0.1")
V6 = socket.inet_pton(socket.AF_INET6, "::1")
A4 = socket.inet_pton(socket.AF_INET, "10.1.2.3")
A6 = socket.inet_pton(socket.AF_INET6, "2001:db8::7")


def rfc1071(data: bytes) -> int:
    """Reference checksum: RFC 1071's loop, written independently of the module."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_segment(sport: int, dport: int, seq: int, ack: int, flags: int,
                options: bytes = b"", window: int = 1000) -> bytes:
    """A TCP header with `options` (padded to whole words), checksum 0."""
    options += b"\0" * (-len(options) % 4)
    doff = 5 + len(options) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, window, 0,
                       0) + options


def ipv4_header(src: bytes, dst: bytes, payload_len: int, proto: int = 6,
                options: bytes = b"", frag: int = 0x4000) -> bytes:
    """An IPv4 header (checksum left 0: nothing here verifies it). frag: flags+offset."""
    ihl = 5 + len(options) // 4
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + payload_len, 1, frag, 64,
                       proto, 0, src, dst) + options


# -- checksums ------------------------------------------------------------------------------

def test_checksum_matches_packets_tcpdump_called_correct() -> None:
    # Two SYNs this module sent on loopback; tcpdump -vv verified both checksums as "correct".
    syn4 = build_syn(syn_partial_sum(V4, V4, 56099), 34535, 56099, 4225471575)
    assert struct.unpack("!H", syn4[16:18])[0] == 0xC4B0
    syn6 = build_syn(syn_partial_sum(V6, V6, 50045), 47123, 50045, 2157444476)
    assert struct.unpack("!H", syn6[16:18])[0] == 0xBB4A


@given(st.binary(max_size=80))
def test_ones_sum_agrees_with_rfc1071(data: bytes) -> None:
    assert ~ones_sum(data) & 0xFFFF == rfc1071(data)


def test_pseudo_headers() -> None:
    assert pseudo_header(A4, V4, 20) == A4 + V4 + b"\x00\x06\x00\x14"
    assert pseudo_header(A6, V6, 20) == A6 + V6 + b"\x00\x00\x00\x14\x00\x00\x00\x06"
    with pytest.raises(ValueError):
        pseudo_header(A4, V6, 20)
    with pytest.raises(ValueError):
        pseudo_header(b"\x01\x02", b"\x01\x02", 20)


addresses = st.one_of(
    st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)),
    st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16)))


@given(addresses, st.integers(1, 65535), st.integers(1, 65535), st.integers(0, 2**32 - 1),
       st.integers(0, 65535))
def test_incremental_syn_checksum_equals_full_recompute(
        addrs: tuple[bytes, bytes], sport: int, dport: int, seq: int, window: int) -> None:
    src, dst = addrs
    syn = build_syn(syn_partial_sum(src, dst, dport, window), sport, dport, seq, window)
    assert len(syn) == 20
    zeroed = syn[:16] + b"\0\0" + syn[18:]
    assert struct.unpack("!H", syn[16:18])[0] == rfc1071(pseudo_header(src, dst, 20) + zeroed)
    assert tcp_checksum(src, dst, zeroed) == struct.unpack("!H", syn[16:18])[0]
    # a receiver's check: the sum over the segment with its checksum is all ones
    assert ones_sum(pseudo_header(src, dst, 20) + syn) == 0xFFFF
    fields = struct.unpack("!HHIIBBHHH", syn)
    assert fields[:6] == (sport, dport, seq, 0, 0x50, TCP_SYN)
    assert fields[6] == window and fields[8] == 0


# -- parsing --------------------------------------------------------------------------------

def test_parse_ipv4_synack_with_ip_and_tcp_options() -> None:
    seg = tcp_segment(80, 40000, 7, 1001, TCP_SYN | TCP_ACK, options=b"\x02\x04\x05\xb4")
    pkt = ipv4_header(A4, V4, len(seg), options=b"\x01\x01\x01\x00") + seg
    assert parse_reply(pkt, socket.AF_INET) == Reply(A4, 80, 40000, 7, 1001,
                                                     TCP_SYN | TCP_ACK)


def test_parse_ipv6_segment_takes_peer_from_recvfrom() -> None:
    seg = tcp_segment(443, 40001, 9, 5, TCP_RST | TCP_ACK)
    assert parse_reply(seg, socket.AF_INET6, A6) == Reply(A6, 443, 40001, 9, 5,
                                                          TCP_RST | TCP_ACK)
    assert parse_reply(seg, socket.AF_INET6, None) is None
    assert parse_reply(seg, socket.AF_INET6, A4) is None  # a 4-byte "peer" for IPv6
    assert parse_reply(seg, socket.AF_UNIX) is None


def test_every_truncation_of_a_reply_is_rejected() -> None:
    seg = tcp_segment(80, 40000, 1, 2, TCP_SYN | TCP_ACK, options=b"\x02\x04\x05\xb4")
    pkt = ipv4_header(A4, V4, len(seg)) + seg
    for n in range(len(pkt)):
        assert parse_reply(pkt[:n], socket.AF_INET) is None, n
    for n in range(len(seg)):
        assert parse_reply(seg[:n], socket.AF_INET6, A6) is None, n
    assert parse_reply(pkt, socket.AF_INET) is not None
    assert parse_reply(seg, socket.AF_INET6, A6) is not None


def test_truncated_options_bad_offsets_and_non_tcp_are_rejected() -> None:
    seg = tcp_segment(80, 40000, 1, 2, TCP_SYN | TCP_ACK)
    # data offset says 8 words (12 bytes of options) but the segment ends after 4 of them
    long_doff = seg[:12] + bytes([8 << 4]) + seg[13:] + b"\x02\x04\x05\xb4"
    assert parse_reply(long_doff, socket.AF_INET6, A6) is None
    assert parse_reply(ipv4_header(A4, V4, len(long_doff)) + long_doff, socket.AF_INET) is None
    # data offset below the minimum
    short_doff = seg[:12] + bytes([4 << 4]) + seg[13:]
    assert parse_reply(short_doff, socket.AF_INET6, A6) is None
    # IPv4: header length below 20, another protocol, not version 4, fragments
    bad_ihl = bytearray(ipv4_header(A4, V4, len(seg)) + seg)
    bad_ihl[0] = 0x44
    assert parse_reply(bytes(bad_ihl), socket.AF_INET) is None
    assert parse_reply(ipv4_header(A4, V4, len(seg), proto=17) + seg, socket.AF_INET) is None
    v6_in_v4 = bytearray(ipv4_header(A4, V4, len(seg)) + seg)
    v6_in_v4[0] = 0x65
    assert parse_reply(bytes(v6_in_v4), socket.AF_INET) is None
    for frag in (0x2000, 0x0001, 0x2010):  # MF, an offset, both
        assert parse_reply(ipv4_header(A4, V4, len(seg), frag=frag) + seg,
                           socket.AF_INET) is None
    assert parse_reply(ipv4_header(A4, V4, len(seg), frag=0x4000) + seg,
                       socket.AF_INET) is not None  # DF alone is fine


# -- matching -------------------------------------------------------------------------------

@pytest.mark.parametrize(("flags", "verdict"), [
    (TCP_SYN | TCP_ACK, True),
    (TCP_RST | TCP_ACK, False),
    (TCP_RST, None),  # a RST that acknowledges nothing cannot be matched to our SYN
    (TCP_SYN, None),  # a simultaneous open is not an answer
    (TCP_ACK, None),
    (TCP_FIN | TCP_ACK, None),
    (TCP_SYN | TCP_ACK | TCP_RST, False),  # RST wins
])
def test_reply_verdict(flags: int, verdict: bool | None) -> None:
    assert reply_verdict(flags) is verdict


def test_match_key_is_the_probe_key_only_for_the_right_reply() -> None:
    ours = probe_key(A4, 80, 40000, 1000)
    good = Reply(A4, 80, 40000, 555, 1001, TCP_SYN | TCP_ACK)
    assert match_key(good) == ours
    assert match_key(good._replace(ack=1000)) != ours  # wrong ack
    assert match_key(good._replace(ack=1002)) != ours
    assert match_key(good._replace(peer_port=81)) != ours  # wrong backend port
    assert match_key(good._replace(our_port=40001)) != ours  # wrong local port
    assert match_key(good._replace(peer=V4)) != ours  # wrong backend
    # seq 2**32 - 1 is acknowledged with 0
    assert match_key(good._replace(ack=0)) == probe_key(A4, 80, 40000, 0xFFFFFFFF)


# -- the BPF program ------------------------------------------------------------------------

def run_bpf(prog: list[tuple[int, int, int, int]], pkt: bytes) -> int:
    """A classic BPF interpreter for the opcodes the module uses; out-of-bounds loads drop."""
    a = x = pc = 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == 0x28:  # ldh [k]
            if k + 2 > len(pkt):
                return 0
            a = int.from_bytes(pkt[k:k + 2], "big")
        elif code == 0x30:  # ldb [k]
            if k >= len(pkt):
                return 0
            a = pkt[k]
        elif code == 0x48:  # ldh [x + k]
            if x + k + 2 > len(pkt):
                return 0
            a = int.from_bytes(pkt[x + k:x + k + 2], "big")
        elif code == 0x50:  # ldb [x + k]
            if x + k >= len(pkt):
                return 0
            a = pkt[x + k]
        elif code == 0xB1:  # ldxb 4 * ([k] & 0xf)
            if k >= len(pkt):
                return 0
            x = 4 * (pkt[k] & 0x0F)
        elif code == 0x15:  # jeq #k
            pc += jt if a == k else jf
        elif code == 0x45:  # jset #k
            pc += jt if a & k else jf
        elif code == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


@pytest.mark.parametrize("nports", [1, 2, 4, 7])
def test_bpf_jumps_stay_inside_the_program(nports: int) -> None:
    for family in (socket.AF_INET, socket.AF_INET6):
        prog = bpf_program(family, list(range(1000, 1000 + nports)))
        for pc, (code, jt, jf, _k) in enumerate(prog):
            if code in (0x15, 0x45):
                assert pc + 1 + jt < len(prog) and pc + 1 + jf < len(prog)
        assert prog[-1] == (0x06, 0, 0, 0)


@pytest.mark.parametrize("ports", [[40000], [40000, 40001, 40005, 50000]])
def test_bpf_ipv4_keeps_only_syn_or_rst_to_our_ports(ports: list[int]) -> None:
    prog = bpf_program(socket.AF_INET, ports)

    def v4(dport: int, flags: int, ip_options: bytes = b"", frag: int = 0x4000) -> int:
        seg = tcp_segment(80, dport, 1, 2, flags)
        return run_bpf(prog, ipv4_header(A4, V4, len(seg), options=ip_options, frag=frag) +
                       seg)

    for port in ports:
        assert v4(port, TCP_SYN | TCP_ACK) > 0
        assert v4(port, TCP_RST | TCP_ACK) > 0
        assert v4(port, TCP_RST | TCP_ACK, ip_options=b"\x01" * 8) > 0  # IP options shift x
        assert v4(port, TCP_ACK) == 0  # data and plain ACKs of other traffic
        assert v4(port, TCP_FIN | TCP_ACK) == 0
        assert v4(port, TCP_SYN | TCP_ACK, frag=0x2000) == 0
        assert v4(port, TCP_SYN | TCP_ACK, frag=0x0010) == 0
    assert v4(max(ports) + 1, TCP_SYN | TCP_ACK) == 0
    assert v4(80, TCP_SYN) == 0  # e.g. our own SYN looping back on lo
    assert run_bpf(prog, b"\x45\x00") == 0  # short packet


def test_bpf_ipv6_sees_the_tcp_header_first() -> None:
    prog = bpf_program(socket.AF_INET6, [40000, 40001])
    assert run_bpf(prog, tcp_segment(80, 40001, 1, 2, TCP_SYN | TCP_ACK)) > 0
    assert run_bpf(prog, tcp_segment(80, 40000, 1, 2, TCP_RST | TCP_ACK)) > 0
    assert run_bpf(prog, tcp_segment(80, 40002, 1, 2, TCP_SYN | TCP_ACK)) == 0
    assert run_bpf(prog, tcp_segment(80, 40000, 1, 2, TCP_ACK)) == 0
    assert run_bpf(prog, b"\x00\x50\x9c") == 0


def test_bpf_program_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        bpf_program(socket.AF_INET, [])
    with pytest.raises(ValueError):
        bpf_program(socket.AF_INET, [0])
    with pytest.raises(ValueError):
        bpf_program(socket.AF_UNIX, [1])


# -- settings and specs ---------------------------------------------------------------------

def test_syn_kind_settings_and_spec() -> None:
    settings = HealthSettings(kind="syn")
    spec = ProbeSpec.build("2001:db8::7", 443, settings)
    assert spec.syn and spec.family == socket.AF_INET6 and spec.port == 443
    assert not ProbeSpec.build("10.1.2.3", 80, HealthSettings()).syn
    with pytest.raises(HealthSettingsError, match="send/expect"):
        HealthSettings(kind="syn", send=b"PING")
    with pytest.raises(HealthSettingsError, match="send/expect"):
        HealthSettings(kind="syn", expect=b"+OK")


@given(st.binary(min_size=4, max_size=4), st.integers(0, 65535), st.integers(0, 65535),
       st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 255),
       st.sampled_from([b"", b"\x02\x04\x05\xb4"]), st.sampled_from([b"", b"\x01\x01\x01\x00"]))
def test_ipv4_fields_round_trip_with_and_without_ip_options(
        src: bytes, sport: int, dport: int, seq: int, ack: int, flags: int, tcp_options: bytes,
        ip_options: bytes) -> None:
    seg = tcp_segment(sport, dport, seq, ack, flags, options=tcp_options)
    pkt = ipv4_header(src, V4, len(seg), options=ip_options) + seg
    assert parse_reply(pkt, socket.AF_INET) == Reply(src, sport, dport, seq, ack, flags)
    assert parse_reply(pkt[:-1], socket.AF_INET) is None


SYN_CONFIG = """
[[services]]
name = "web"
listen = ["127.0.0.1:8080"]
backends = [{ address = "127.0.0.1:9001" }]
[services.health]
kind = "syn"
"""


def test_syn_config_without_raw_socket_fails_at_kind() -> None:
    host = FakeHost(raw_error="operation not permitted")
    with pytest.raises(ConfigError) as exc:
        load_text(SYN_CONFIG, "l4lb.toml", host=host)
    text = str(exc.value)
    assert 'l4lb.toml:7:8: error: services[0] ("web"): health.kind: "syn" probes need a raw ' \
        "socket, which this process cannot open (operation not permitted)" in text
    # without a host the file is only validated, not checked against one
    assert load_text(SYN_CONFIG, "l4lb.toml", host=None).services[0].health is not None
    health = load_text(SYN_CONFIG, "l4lb.toml", host=FakeHost()).services[0].health
    assert health is not None and health.kind == "syn"
