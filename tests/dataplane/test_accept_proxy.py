"""PROXY protocol from the clients (set_accept_proxy), against both data planes.

The "client" here plays the balancer in front: it writes a header naming some other client, then
its payload. The backends check that no header byte reaches them, that nothing connects to them
before the header is whole (or at all when it is bad), and the data plane's sessions, log and
counters say whose connection it was. The fast-open test runs in a private network namespace
(fast_open_env.private_netns) so that the kernel's TFO counters count only its connections.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from l4lb import proxyproto

from .backends import BackendServer
from .clients import closed_within, connect, read_to_end, recv_exact, recv_line, wait_for
from .conftest import LB, SVC, MakeLB, Servers
from .fast_open_env import FoBackend, tcp_ext
from .proxy_backend import Header, ProxyBackend
from .tables import BackendSpec, ServiceSpec, expected_backend

SRC4, DST4 = ("203.0.113.7", 40001), ("198.51.100.10", 443)
SRC6, DST6 = ("2001:db8::7", 40002), ("2001:db8::10", 8443)
TIMEOUT_MS = 2000  # plenty for every test but the timeout test itself


@pytest.fixture
def pp_backends() -> Iterator[list[ProxyBackend]]:
    """ProxyBackends a test starts (append them); all closed afterwards."""
    owned: list[ProxyBackend] = []
    yield owned
    for backend in owned:
        backend.close()


def start_lb(make_lb: MakeLB, backends: list[tuple[str, int]], host: str = "127.0.0.1",
             timeout_ms: int = TIMEOUT_MS, workers: int = 1, **service: Any) -> LB:
    specs = tuple(BackendSpec(f"b{i}", h, port) for i, (h, port) in enumerate(backends))
    lb = make_lb([ServiceSpec(SVC, specs, **service)], workers=workers, host=host)
    lb.dp.set_accept_proxy(SVC, timeout_ms)
    return lb


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def session_of(lb: LB, peer: tuple[str, int]) -> dict[str, Any]:
    """The open session whose real peer (or, before its header, client) is `peer`."""
    found: list[dict[str, Any]] = []

    def look() -> bool:
        found[:] = [s for s in lb.dp.sessions() if s["peer"] == peer]
        return bool(found) and found[0]["state"] != "connecting"
    assert wait_for(look, 5.0), lb.dp.sessions()
    return found[0]


def test_set_accept_proxy_api(dp_impl: type[Any]) -> None:
    dp = dp_impl(1)
    try:
        assert dp.accept_proxy(SVC) == 0
        dp.set_accept_proxy(SVC, 5000)
        assert dp.accept_proxy(SVC) == 5000
        assert dp.accept_proxy(SVC + 1) == 0
        dp.set_accept_proxy(SVC, 0)
        assert dp.accept_proxy(SVC) == 0
        for bad_id in (-1, 1024):
            with pytest.raises(ValueError):
                dp.set_accept_proxy(bad_id, 1)
            with pytest.raises(ValueError):
                dp.accept_proxy(bad_id)
        with pytest.raises(ValueError):
            dp.set_accept_proxy(SVC, -1)
        with pytest.raises(TypeError):
            dp.set_accept_proxy(SVC, 1.5)
    finally:
        dp.stop(0.0)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_header_becomes_the_client(make_lb: MakeLB, servers: Servers, version: int,
                                   host: str) -> None:
    """Header and payload in one send: the backend gets the payload intact and not one header
    byte; sessions() and the connection log name the header's client and the real peer."""
    backend = servers.start("echo", host=host)
    lb = start_lb(make_lb, [backend.addr], host=host)
    lb.dp.set_connection_log(True, 64)
    src, dst = (SRC4, DST4) if host == "127.0.0.1" else (SRC6, DST6)
    payload = bytes(range(256)) * 400  # 100 KiB: much more than any peek
    sock = connect(lb.addr())
    me = sock.getsockname()[:2]
    sock.sendall(proxyproto.build(version, src, dst) + payload)
    assert recv_exact(sock, len(payload)) == payload
    sess = session_of(lb, me)
    assert sess["client"] == src and sess["backend_id"] == lb.backend_id("b0")
    sock.shutdown(socket.SHUT_WR)
    assert read_to_end(sock, 5.0) == (b"", "eof")
    sock.close()
    assert wait_for(lambda: backend.ended(), 5.0)
    record = backend.ended()[0]
    assert (record.bytes_in, record.sha_in) == (len(payload), sha(payload))
    assert lb.svc_stats()["bytes_to_backend"] == len(payload)
    logged: list[dict[str, Any]] = []
    assert wait_for(lambda: bool(logged.extend(lb.dp.closed_sessions()) or logged), 5.0)
    assert logged[0]["client"] == src and logged[0]["peer"] == me
    assert logged[0]["reason"] in ("client_closed", "backend_closed")


@pytest.mark.parametrize("version", [1, 2])
def test_header_split_across_sends(make_lb: MakeLB, servers: Servers, version: int) -> None:
    """No backend is picked (nothing connects to it) until the last piece of the header."""
    backend = servers.start("echo")
    lb = start_lb(make_lb, [backend.addr])
    header = proxyproto.build(version, SRC4, DST4)
    sock = connect(lb.addr())
    cuts = [0, 1, 7, 13, len(header) - 1, len(header)]
    for a, b in itertools.pairwise(cuts):
        sock.sendall(header[a:b])
        time.sleep(0.05)
        if b < len(header):
            assert backend.records() == []
            assert [s["state"] for s in lb.dp.sessions()] == ["connecting"]
            assert lb.svc_stats().get("conns_total", 0) == 0
    sock.sendall(b"ping")
    assert recv_exact(sock, 4) == b"ping"
    assert lb.dp.sessions()[0]["client"] == SRC4
    sock.close()
    assert wait_for(lambda: backend.ended(), 5.0)
    assert backend.ended()[0].bytes_in == 4


def test_long_v2_header_with_tlvs_in_pieces(make_lb: MakeLB, servers: Servers) -> None:
    """A version 2 header whose TLVs outgrow every peek is discarded by count, in pieces."""
    backend = servers.start("echo")
    lb = start_lb(make_lb, [backend.addr])
    base = proxyproto.build(2, SRC4, DST4)
    tlv = b"\xee" + struct.pack("!H", 5000) + b"t" * 5000  # an unknown type: skipped
    header = base[:14] + struct.pack("!H", 12 + len(tlv)) + base[16:] + tlv
    sock = connect(lb.addr())
    for at in range(0, len(header), 1500):
        sock.sendall(header[at:at + 1500])
        time.sleep(0.02)
    sock.sendall(b"after the TLVs")
    assert recv_exact(sock, 14) == b"after the TLVs"
    assert lb.dp.sessions()[0]["client"] == SRC4
    sock.close()
    assert wait_for(lambda: backend.ended(), 5.0)
    assert backend.ended()[0].bytes_in == 14


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\nhello",
    proxyproto.V2_SIGNATURE + b"\x21\x11\x00\x08" + b"\x00" * 8,
], ids=["http", "v1-bad-port", "v2-short-block"])
def test_bad_header_resets_before_any_backend(make_lb: MakeLB, servers: Servers,
                                              garbage: bytes) -> None:
    backend = servers.start("echo")
    lb = start_lb(make_lb, [backend.addr])
    lb.dp.set_connection_log(True, 64)
    sock = connect(lb.addr())
    me = sock.getsockname()[:2]
    sock.sendall(garbage)
    assert closed_within(sock, 3.0) == "reset"
    sock.close()
    assert wait_for(lambda: lb.svc_stats().get("proxy_header_errors") == 1
                    and lb.svc_stats()["conns_active"] == 0, 5.0)
    stats = lb.svc_stats()
    assert stats.get("conns_total", 0) == 0
    assert stats.get("proxy_header_timeouts", 0) == 0
    assert backend.records() == []  # the backend never saw a connection
    logged = lb.dp.closed_sessions()
    assert [(r["reason"], r["backend_id"], r["client"], r["peer"]) for r in logged] == \
        [("proxy_header", -1, me, me)]


def test_header_cut_short_by_fin_is_an_error(make_lb: MakeLB, servers: Servers) -> None:
    backend = servers.start("echo")
    lb = start_lb(make_lb, [backend.addr])
    sock = connect(lb.addr())
    sock.sendall(b"PROXY TCP4 1.2.3.4 ")
    sock.shutdown(socket.SHUT_WR)
    assert closed_within(sock, 3.0) == "reset"
    sock.close()
    assert wait_for(lambda: lb.svc_stats().get("proxy_header_errors") == 1, 5.0)
    assert backend.records() == []


def test_fin_before_any_byte_is_a_quiet_close(make_lb: MakeLB, servers: Servers) -> None:
    """A plain TCP check of the balancer in front (connect, close) is not a header error."""
    backend = servers.start("echo")
    lb = start_lb(make_lb, [backend.addr])
    lb.dp.set_connection_log(True, 64)
    sock = connect(lb.addr())
    sock.shutdown(socket.SHUT_WR)
    assert read_to_end(sock, 3.0) == (b"", "eof")
    sock.close()
    logged: list[dict[str, Any]] = []
    assert wait_for(lambda: bool(logged.extend(lb.dp.closed_sessions()) or logged), 5.0)
    assert [r["reason"] for r in logged] == ["client_closed"]
    assert lb.svc_stats().get("conns_active", 0) == 0
    assert lb.svc_stats().get("proxy_header_errors", 0) == 0
    assert backend.records() == []


@pytest.mark.parametrize("partial", [b"", b"PROXY TCP4 ", proxyproto.V2_SIGNATURE[:5]],
                         ids=["silent", "v1-part", "v2-part"])
def test_header_timeout(make_lb: MakeLB, servers: Servers, partial: bytes) -> None:
    backend = servers.start("echo")
    lb = start_lb(make_lb, [backend.addr], timeout_ms=300)
    lb.dp.set_connection_log(True, 64)
    sock = connect(lb.addr())
    started = time.monotonic()
    if partial:
        sock.sendall(partial)
    assert closed_within(sock, 3.0) == "reset"
    assert 0.25 <= time.monotonic() - started <= 2.0
    sock.close()
    assert wait_for(lambda: lb.svc_stats().get("proxy_header_timeouts") == 1, 5.0)
    assert lb.svc_stats().get("proxy_header_errors", 0) == 0
    assert [r["reason"] for r in lb.dp.closed_sessions()] == ["proxy_header_timeout"]
    assert backend.records() == []


@pytest.mark.parametrize("header", [proxyproto.local(2), proxyproto.local(1),
                                    proxyproto.V2_SIGNATURE + b"\x21\x00\x00\x00"],
                         ids=["v2-local", "v1-unknown", "v2-proxy-unspec"])
def test_header_without_a_client_keeps_the_real_address(make_lb: MakeLB, servers: Servers,
                                                        header: bytes) -> None:
    backend = servers.start("echo")
    lb = start_lb(make_lb, [backend.addr])
    sock = connect(lb.addr())
    me = sock.getsockname()[:2]
    sock.sendall(header + b"check")
    assert recv_exact(sock, 5) == b"check"
    sess = session_of(lb, me)
    assert sess["client"] == me
    sock.close()


def test_ipv4_client_over_an_ipv6_connection(make_lb: MakeLB, servers: Servers) -> None:
    backend = servers.start("echo", host="::1")
    lb = start_lb(make_lb, [backend.addr], host="::1")
    sock = connect(lb.addr())
    me = sock.getsockname()[:2]
    sock.sendall(proxyproto.build(2, SRC4, DST4) + b"mixed")
    assert recv_exact(sock, 5) == b"mixed"
    assert session_of(lb, me)["client"] == SRC4
    sock.close()


@pytest.mark.parametrize(("scheduler", "hash_key"), [("source_hash", "src_ip"),
                                                      ("maglev", "src_ip"),
                                                      ("maglev", "src_ip_port")])
def test_hashing_schedulers_pick_by_the_header(make_lb: MakeLB, servers: Servers,
                                               scheduler: str, hash_key: str) -> None:
    """From one real client, headers naming different clients go where the table's Python
    lookup sends those clients."""
    started = [servers.start(f"b{i}", "name") for i in range(3)]
    specs = tuple(BackendSpec(s.name, "127.0.0.1", s.port) for s in started)
    lb = make_lb([ServiceSpec(SVC, specs, scheduler=scheduler, hash_key=hash_key,
                              maglev_size=251)], workers=1, hash_seed=5)
    lb.dp.set_accept_proxy(SVC, TIMEOUT_MS)
    assert lb.built is not None
    got: collections.Counter[str] = collections.Counter()
    for i in range(24):
        src = (f"10.{i}.{i * 7 % 256}.{1 + i}", 1000 + 37 * i)
        with connect(lb.addr()) as sock:
            sock.sendall(proxyproto.build(1 + i % 2, src, DST4))
            name = recv_line(sock)
        assert name == expected_backend(lb.built, SVC, src), src
        got[name] += 1
    assert len(got) >= 2, got  # all on one backend would mean the real address was hashed


@pytest.mark.parametrize("version", [1, 2])
def test_header_forwarded_names_the_original_client_and_destination(
        make_lb: MakeLB, pp_backends: list[ProxyBackend], version: int) -> None:
    """accept_proxy + proxy_protocol: the backend's header is the one l4lb received (HAProxy's
    accept-proxy + send-proxy), in the version the service sends."""
    backend = ProxyBackend(version)
    pp_backends.append(backend)
    lb = start_lb(make_lb, [backend.addr])
    lb.dp.set_proxy_protocol(SVC, version)
    for inbound, src, dst in ((3 - version, SRC4, DST4), (version, SRC6, DST6)):
        with connect(lb.addr()) as sock:
            sock.sendall(proxyproto.build(inbound, src, dst) + b"payload")
            assert recv_exact(sock, 7) == b"payload"
    assert wait_for(lambda: len(backend.done()) >= 2, 5.0), backend.done()
    done = backend.done()
    assert all(c.error == "" and c.payload == b"payload" for c in done), done
    assert sorted((c.header for c in done), key=repr) == sorted(
        [Header(version, "PROXY", "TCP4", SRC4, DST4),
         Header(version, "PROXY", "TCP6", SRC6, DST6)], key=repr)


def test_fast_open_syn_carries_the_payload_not_the_header(fo_make_lb: MakeLB) -> None:
    """backend_fast_open peeks the client's first bytes for the SYN: with accept_proxy those
    are the payload after the header, never the header."""
    backend = FoBackend("echo", fastopen=True)
    try:
        lb = start_lb(fo_make_lb, [backend.addr])
        lb.dp.set_fast_open(SVC, True)
        for sock in lb.listeners[SVC]:  # header and request wait when the relay accepts
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)

        def trip(payload: bytes, version: int) -> None:
            with connect(lb.addr()) as sock:
                sock.sendall(proxyproto.build(version, SRC4, DST4) + payload)
                assert recv_exact(sock, len(payload)) == payload
                sock.shutdown(socket.SHUT_WR)
                assert read_to_end(sock, 5.0) == (b"", "eof")

        trip(b"warm: fetches the cookie", 1)
        before = tcp_ext()
        internals = getattr(lb.dp, "_internals", None)
        counts_before = internals() if internals else None
        sent = [b"fast open %d " % i * 10 for i in range(4)]
        for i, payload in enumerate(sent):
            trip(payload, 1 + i % 2)
        assert wait_for(lambda: len(backend.received()) >= 5, 5.0)
        assert sorted(backend.received()[1:]) == sorted(sent)  # no header byte
        assert tcp_ext()["TCPFastOpenActive"] - before["TCPFastOpenActive"] == 4
        if counts_before is not None:  # the SYNs carried exactly the payloads
            counts = internals()
            assert counts["fast_open_syn_bytes"] - counts_before["fast_open_syn_bytes"] == \
                sum(len(p) for p in sent)
    finally:
        backend.close()


def test_switching_off_applies_to_new_clients_only(make_lb: MakeLB, servers: Servers) -> None:
    """A client accepted while the option was on still owes its header after it is switched
    off (a reload); the next client needs none."""
    backend = servers.start("echo")
    lb = start_lb(make_lb, [backend.addr])
    waiting = connect(lb.addr())
    assert wait_for(lambda: len(lb.dp.sessions()) == 1, 5.0)
    lb.dp.set_accept_proxy(SVC, 0)
    with connect(lb.addr()) as plain:
        plain.sendall(b"no header")
        assert recv_exact(plain, 9) == b"no header"
    waiting.sendall(proxyproto.build(1, SRC4, DST4) + b"late")
    assert recv_exact(waiting, 4) == b"late"
    waiting.close()
    assert lb.svc_stats().get("proxy_header_errors", 0) == 0


def test_services_without_it_see_headers_as_payload(make_lb: MakeLB,
                                                    servers: Servers) -> None:
    backend: BackendServer = servers.start("echo")
    lb = start_lb(make_lb, [backend.addr], timeout_ms=0)
    header = proxyproto.build(1, SRC4, DST4)
    with connect(lb.addr()) as sock:
        sock.sendall(header)
        assert recv_exact(sock, len(header)) == header
        assert lb.dp.sessions()[0]["peer"] is None
