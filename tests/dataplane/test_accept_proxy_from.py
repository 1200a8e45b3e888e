"""accept_proxy_from: only the listed sources owe a PROXY header, against both data planes.

The list travels in the forwarding table (ServiceSpec.proxy_from); accept_proxy itself is still
switched on out of band (set_accept_proxy). Loopback gives two sources on one host: 127.0.0.2
(a client bound to it) plays the balancer in front, 127.0.0.1 a direct client. For IPv6 there
is only ::1, so the list names it or not. A dual-stack listener ("::") sees IPv4 clients as
::ffff:127.0.0.x, which must match IPv4 entries.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from l4lb import proxyproto

from .clients import closed_within, connect, read_to_end, recv_exact, wait_for
from .conftest import LB, SVC, MakeLB, Servers
from .tables import BackendSpec, ServiceSpec

SRC4, DST4 = ("203.0.113.7", 40001), ("198.51.100.10", 443)
BALANCER, DIRECT = "127.0.0.2", "127.0.0.1"
TIMEOUT_MS = 2000
# bytes a direct client may legitimately send that look like a header: they are payload
LOOKALIKE = proxyproto.build(1, ("192.0.2.1", 1), ("192.0.2.2", 2)) + b"GET / HTTP/1.0\r\n\r\n"


def spec(backend: tuple[str, int], proxy_from: tuple[str, ...]) -> ServiceSpec:
    return ServiceSpec(SVC, (BackendSpec("b0", *backend),), proxy_from=proxy_from)


def start_lb(make_lb: MakeLB, backend: tuple[str, int], proxy_from: tuple[str, ...],
             host: str = "127.0.0.1") -> LB:
    lb = make_lb([spec(backend, proxy_from)], workers=1, host=host)
    lb.dp.set_accept_proxy(SVC, TIMEOUT_MS)
    lb.dp.set_connection_log(True, 64)
    return lb


def echo_once(addr: tuple[str, int], data: bytes, source: str | None = None) -> bytes:
    """Send data, half-close, read everything back (an echo backend returns it)."""
    with connect(addr, source) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        got, how = read_to_end(sock, 5.0)
        assert how == "eof"
        return got


def sessions_by_peer(lb: LB, peer: tuple[str, int]) -> list[dict[str, Any]]:
    return [s for s in lb.dp.sessions() if s["peer"] == peer]


def logged(lb: LB, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    assert wait_for(lambda: bool(out.extend(lb.dp.closed_sessions())) or len(out) >= n, 5.0)
    return out


def test_listed_sends_a_header_unlisted_connects_directly(make_lb: MakeLB,
                                                          servers: Servers) -> None:
    backend = servers.start("echo")
    lb = start_lb(make_lb, backend.addr, ("127.0.0.2/32", "10.0.0.0/8"))
    # the balancer in front: its header names the real client, which sessions() shows
    with connect(lb.addr(), BALANCER) as front:
        me = front.getsockname()[:2]
        front.sendall(proxyproto.build(2, SRC4, DST4) + b"via the balancer")
        assert recv_exact(front, 16) == b"via the balancer"
        found = sessions_by_peer(lb, me)
        assert [s["client"] for s in found] == [SRC4]
    # a direct client: no header expected, its bytes (a header lookalike too) reach the
    # backend untouched, and its peer is itself
    with connect(lb.addr(), DIRECT) as plain:
        me2 = plain.getsockname()[:2]
        plain.sendall(LOOKALIKE)
        assert recv_exact(plain, len(LOOKALIKE)) == LOOKALIKE
        assert [s["client"] for s in sessions_by_peer(lb, me2)] == [me2]
    records = logged(lb, 2)
    assert sorted((r["client"], r["peer"]) for r in records) == sorted([(SRC4, me), (me2, me2)])
    assert all(r["backend_id"] == lb.backend_id("b0") for r in records)
    assert wait_for(lambda: lb.svc_stats().get("conns_active") == 0, 5.0)
    stats = lb.svc_stats()
    assert stats["proxy_direct"] == 1 and stats["conns_total"] == 2
    assert stats["proxy_header_errors"] == 0
    assert stats["bytes_to_backend"] == 16 + len(LOOKALIKE)


def test_a_listed_source_still_must_send_one(make_lb: MakeLB, servers: Servers) -> None:
    backend = servers.start("echo")
    lb = start_lb(make_lb, backend.addr, ("127.0.0.2",))
    with connect(lb.addr(), BALANCER) as front:
        front.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert closed_within(front, 3.0) == "reset"
    assert wait_for(lambda: lb.svc_stats().get("proxy_header_errors") == 1, 5.0)
    assert lb.svc_stats().get("proxy_direct", 0) == 0
    assert backend.records() == []


def test_direct_client_connects_before_sending(make_lb: MakeLB, servers: Servers) -> None:
    """No header wait at all for a direct client: the backend connection opens at accept,
    before the client sent a byte (a server-speaks-first protocol works)."""
    backend = servers.start("echo")
    lb = start_lb(make_lb, backend.addr, ("127.0.0.2",))
    with connect(lb.addr(), DIRECT) as plain:
        assert wait_for(lambda: len(backend.records()) == 1, 3.0)
        assert wait_for(lambda: [s["state"] for s in lb.dp.sessions()] == ["established"], 3.0)
        plain.sendall(b"x")
        assert recv_exact(plain, 1) == b"x"


def test_big_direct_payload_is_intact(make_lb: MakeLB, servers: Servers) -> None:
    backend = servers.start("echo")
    lb = start_lb(make_lb, backend.addr, ("127.0.0.2",))
    payload = LOOKALIKE + bytes(range(256)) * 400
    assert echo_once(lb.addr(), payload, DIRECT) == payload


def test_a_new_list_applies_to_new_connections_only(make_lb: MakeLB, servers: Servers) -> None:
    backend = servers.start("echo")
    lb = start_lb(make_lb, backend.addr, ("127.0.0.2",))
    early = connect(lb.addr(), DIRECT)
    try:
        early.sendall(b"one")
        assert recv_exact(early, 3) == b"one"
        # the new table lists 127.0.0.1 too: a new client from there must send a header ...
        lb.publish([spec(backend.addr, ("127.0.0.0/8",))])
        with connect(lb.addr(), DIRECT) as late:
            late.sendall(proxyproto.build(1, SRC4, DST4) + b"two")
            assert recv_exact(late, 3) == b"two"
        # ... while the session accepted before it goes on as it was
        early.sendall(LOOKALIKE)
        assert recv_exact(early, len(LOOKALIKE)) == LOOKALIKE
    finally:
        early.close()
    # and back: a table without 127.0.0.1 makes it direct again
    lb.publish([spec(backend.addr, ("127.0.0.2",))])
    assert echo_once(lb.addr(), LOOKALIKE, DIRECT) == LOOKALIKE
    assert wait_for(lambda: lb.svc_stats().get("proxy_direct") == 2, 5.0)
    assert lb.svc_stats()["proxy_header_errors"] == 0


def test_no_list_keeps_every_client_strict(make_lb: MakeLB, servers: Servers) -> None:
    """The default: without a list every client owes a header, wherever it comes from."""
    backend = servers.start("echo")
    lb = start_lb(make_lb, backend.addr, ())
    with connect(lb.addr(), DIRECT) as plain:
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert closed_within(plain, 3.0) == "reset"
    assert wait_for(lambda: lb.svc_stats().get("proxy_header_errors") == 1, 5.0)


def test_the_list_needs_accept_proxy(make_lb: MakeLB, servers: Servers) -> None:
    """A list in the table means nothing while accept_proxy is off: headers are payload."""
    backend = servers.start("echo")
    lb = start_lb(make_lb, backend.addr, ("127.0.0.0/8",))
    lb.dp.set_accept_proxy(SVC, 0)
    assert echo_once(lb.addr(), LOOKALIKE, BALANCER) == LOOKALIKE
    assert lb.svc_stats().get("proxy_direct", 0) == 0


@pytest.mark.parametrize("listed", [False, True])
def test_ipv6(make_lb: MakeLB, servers: Servers, listed: bool) -> None:
    backend = servers.start("echo", host="::1")
    lb = start_lb(make_lb, backend.addr, ("::1",) if listed else ("2001:db8::/32", "127.0.0.1"),
                  host="::1")
    if listed:
        header = proxyproto.build(1, SRC4, DST4)
        assert echo_once(lb.addr(), header + b"six") == b"six"
        assert lb.svc_stats().get("proxy_direct", 0) == 0
    else:
        assert echo_once(lb.addr(), LOOKALIKE) == LOOKALIKE
        assert lb.svc_stats()["proxy_direct"] == 1


def test_ipv4_mapped_clients_match_ipv4_entries(make_lb: MakeLB, servers: Servers) -> None:
    """A dual-stack listener sees 127.0.0.2 as ::ffff:127.0.0.2: the entry 127.0.0.2 lists it
    (and does not list ::ffff:127.0.0.1)."""
    backend = servers.start("echo")
    lb = start_lb(make_lb, backend.addr, ("127.0.0.2",), host="::")
    port = lb.port()
    with connect(("127.0.0.1", port), BALANCER) as front:
        me = front.getsockname()[:2]
        front.sendall(proxyproto.build(1, SRC4, DST4) + b"mapped")
        assert recv_exact(front, 6) == b"mapped"
        assert [s["client"] for s in lb.dp.sessions()] == [SRC4]
        assert lb.dp.sessions()[0]["peer"] == ("::ffff:" + me[0], me[1])
    assert echo_once(("127.0.0.1", port), LOOKALIKE, DIRECT) == LOOKALIKE
    assert wait_for(lambda: lb.svc_stats().get("proxy_direct") == 1, 5.0)
    assert lb.svc_stats()["proxy_header_errors"] == 0
