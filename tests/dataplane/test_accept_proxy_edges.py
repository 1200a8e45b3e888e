"""PROXY protocol from the clients (set_accept_proxy): the relay's edges, against both data
planes. A header with a FIN and nothing else, header + payload + FIN in one segment, a header
split at every byte, a reset in the middle of one, the deadline during a long version 2
header's TLVs, many clients waiting at once, a stop while they wait."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import pytest

from l4lb import proxyproto

from .clients import closed_within, connect, read_to_end, recv_exact, reset_close, wait_for
from .conftest import SVC, MakeLB, Servers
from .proxy_backend import Header, ProxyBackend
from .tables import BackendSpec, ServiceSpec
from .test_scale import nofile_at_least

SRC4, DST4 = ("203.0.113.7", 40001), ("198.51.100.10", 443)
SRC6, DST6 = ("2001:db8::7", 40002), ("2001:db8::10", 8443)
WAITING = 2000  # clients waiting for their header at once


def start_lb(make_lb: MakeLB, backends: list[tuple[str, int]], host: str = "127.0.0.1",
             timeout_ms: int = 2000, workers: int = 1, **service: Any) -> Any:
    specs = tuple(BackendSpec(f"b{i}", h, port) for i, (h, port) in enumerate(backends))
    lb = make_lb([ServiceSpec(SVC, specs, **service)], workers=workers, host=host)
    lb.dp.set_accept_proxy(SVC, timeout_ms)
    return lb


def long_v2(tlv_bytes: int) -> bytes:
    base = proxyproto.build(2, SRC4, DST4)
    tlv = b"\xee" + struct.pack("!H", tlv_bytes) + b"t" * tlv_bytes
    return base[:14] + struct.pack("!H", 12 + len(tlv)) + base[16:] + tlv


@pytest.mark.parametrize("version", [1, 2])
def test_fin_right_after_the_header(make_lb: MakeLB, servers: Servers, version: int) -> None:
    """Header, then the client's FIN, no payload: the backend still gets a connection and the
    FIN (half-close), and its answer reaches the client."""
    backend = servers.start("b0", "greet_shut")
    lb = start_lb(make_lb, [backend.addr])
    sock = connect(lb.addr())
    sock.sendall(proxyproto.build(version, SRC4, DST4))
    sock.shutdown(socket.SHUT_WR)
    assert read_to_end(sock, 5.0) == (b"b0\n", "eof")
    sock.close()
    assert wait_for(lambda: backend.ended(), 5.0)
    assert [(r.bytes_in, r.end) for r in backend.ended()] == [(0, "eof")]
    assert wait_for(lambda: lb.svc_stats().get("conns_active", 0) == 0, 5.0)
    assert lb.svc_stats().get("proxy_header_errors", 0) == 0


@pytest.mark.parametrize("version", [1, 2])
def test_header_payload_and_fin_in_one_segment(make_lb: MakeLB, servers: Servers,
                                               version: int) -> None:
    backend = servers.start("echo")
    lb = start_lb(make_lb, [backend.addr])
    sock = connect(lb.addr())
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    sock.sendall(proxyproto.build(version, SRC4, DST4) + b"request")
    sock.shutdown(socket.SHUT_WR)  # the FIN leaves with the corked bytes
    assert read_to_end(sock, 5.0) == (b"request", "eof")
    sock.close()
    assert wait_for(lambda: backend.ended(), 5.0)
    assert [(r.bytes_in, r.end) for r in backend.ended()] == [(7, "eof")]


@pytest.mark.parametrize("header", [proxyproto.build(1, SRC6, DST6), long_v2(40)],
                         ids=["v1", "v2-tlv"])
def test_header_split_at_every_byte(make_lb: MakeLB, servers: Servers, header: bytes) -> None:
    backend = servers.start("echo")
    lb = start_lb(make_lb, [backend.addr])
    for cut in range(1, len(header)):
        with connect(lb.addr()) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(header[:cut])
            time.sleep(0.003)
            sock.sendall(header[cut:] + b"x%d" % cut)
            want = b"x%d" % cut
            assert recv_exact(sock, len(want)) == want, cut
    assert lb.svc_stats().get("proxy_header_errors", 0) == 0


def test_reset_in_the_middle_of_a_header(make_lb: MakeLB, servers: Servers) -> None:
    backend = servers.start("echo")
    lb = start_lb(make_lb, [backend.addr])
    lb.dp.set_connection_log(True, 64)
    sock = connect(lb.addr())
    sock.sendall(b"PROXY TCP4 1.2.")
    assert wait_for(lambda: len(lb.dp.sessions()) == 1, 5.0)
    time.sleep(0.05)
    reset_close(sock)
    assert wait_for(lambda: lb.svc_stats().get("conns_active", 0) == 0, 5.0)
    stats = lb.svc_stats()
    assert stats.get("proxy_header_errors", 0) == 0 and stats.get("proxy_header_timeouts", 0) == 0
    assert [r["reason"] for r in lb.dp.closed_sessions()] == ["client_reset"]
    assert backend.records() == []


def test_deadline_during_the_tlvs(make_lb: MakeLB, servers: Servers) -> None:
    """The header's addresses were read, its TLVs are still being discarded: a timeout."""
    backend = servers.start("echo")
    lb = start_lb(make_lb, [backend.addr], timeout_ms=400)
    lb.dp.set_connection_log(True, 64)
    header = long_v2(60000)
    sock = connect(lb.addr())
    sock.sendall(header[:2000])
    time.sleep(0.1)
    sock.sendall(header[2000:30000])
    assert closed_within(sock, 3.0) == "reset"
    sock.close()
    assert wait_for(lambda: lb.svc_stats().get("proxy_header_timeouts") == 1, 5.0)
    assert [(r["reason"], r["client"]) for r in lb.dp.closed_sessions()] == \
        [("proxy_header_timeout", SRC4)]
    assert backend.records() == []


def test_fin_during_the_tlvs(make_lb: MakeLB, servers: Servers) -> None:
    backend = servers.start("echo")
    lb = start_lb(make_lb, [backend.addr])
    header = long_v2(60000)
    sock = connect(lb.addr())
    sock.sendall(header[:30000])
    time.sleep(0.05)
    sock.shutdown(socket.SHUT_WR)
    assert closed_within(sock, 3.0) == "reset"
    sock.close()
    assert wait_for(lambda: lb.svc_stats().get("proxy_header_errors") == 1, 5.0)
    assert backend.records() == []


def test_many_clients_waiting(make_lb: MakeLB, servers: Servers) -> None:
    """2,000 clients waiting for their header at once: each is a session without a backend
    (conns_active, sessions()); half send one and are served; the gauge returns to 0."""
    with nofile_at_least(WAITING * 4 + 1000):
        backend = servers.start("echo")
        lb = start_lb(make_lb, [backend.addr], workers=2)
        socks = [connect(lb.addr()) for _ in range(WAITING)]
        try:
            assert wait_for(lambda: lb.svc_stats().get("conns_active", 0) == WAITING, 10.0)
            sessions = lb.dp.sessions()
            assert len(sessions) == WAITING
            assert {s["state"] for s in sessions} == {"connecting"}
            assert {s["backend_id"] for s in sessions} == {-1}
            for i, sock in enumerate(socks):
                if i % 2:
                    sock.sendall(proxyproto.build(1, ("10.0.0.1", 1000 + i), DST4) + b"x")
            for i, sock in enumerate(socks):
                if i % 2:
                    assert recv_exact(sock, 1) == b"x"
        finally:
            for sock in socks:
                sock.close()
        assert wait_for(lambda: lb.svc_stats().get("conns_active", 0) == 0, 10.0)
        stats = lb.svc_stats()
        assert stats.get("conns_total", 0) == WAITING // 2
        assert stats.get("proxy_header_errors", 0) == 0


def test_stop_while_clients_wait(make_lb: MakeLB, servers: Servers) -> None:
    """A graceful stop does not wait for headers that would only ever reach a stopping data
    plane: those clients are reset, like any session at the end of the stop."""
    backend = servers.start("echo")
    lb = start_lb(make_lb, [backend.addr], timeout_ms=60000)
    lb.dp.set_connection_log(True, 64)
    sock = connect(lb.addr())
    sock.sendall(b"PROXY ")
    assert wait_for(lambda: len(lb.dp.sessions()) == 1, 5.0)
    started = time.monotonic()
    lb.stop(1.0)
    took = time.monotonic() - started
    assert closed_within(sock, 3.0) == "reset"
    sock.close()
    assert took < 3.0


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_header_of_the_other_family_sent_onwards(make_lb: MakeLB, host: str) -> None:
    backend = ProxyBackend(1)
    try:
        lb = start_lb(make_lb, [backend.addr], host=host)
        lb.dp.set_proxy_protocol(SVC, 1)
        src, dst = (SRC6, DST6) if host == "127.0.0.1" else (SRC4, DST4)
        with connect(lb.addr()) as sock:
            sock.sendall(proxyproto.build(2, src, dst) + b"payload")
            assert recv_exact(sock, 7) == b"payload"
        assert wait_for(lambda: len(backend.done()) >= 1, 5.0)
        done = backend.done()[0]
        assert done.header == Header(1, "PROXY", "TCP6" if ":" in src[0] else "TCP4", src, dst)
    finally:
        backend.close()


@pytest.mark.parametrize("total", [107, 108, 109])
def test_v2_header_as_long_as_the_peek(make_lb: MakeLB, servers: Servers, total: int) -> None:
    """A version 2 header that exactly fills the relay's peek (PP_PARSE_MIN + 1 = 108 bytes),
    payload in the same segment: the payload beyond the peek must still be relayed."""
    backend = servers.start("echo")
    lb = start_lb(make_lb, [backend.addr])
    header = long_v2(total - 28 - 3)
    assert len(header) == total
    with connect(lb.addr()) as sock:
        sock.sendall(header + b"request")
        assert recv_exact(sock, 7, timeout=3.0) == b"request"
