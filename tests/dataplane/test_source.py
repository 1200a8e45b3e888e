"""A backend's source address (BackendRec.source_family / source_addr), against both data planes.

Each connection (UDP: each flow's socket) to a backend with a source address is bound to it
(port 0, IP_BIND_ADDRESS_NO_PORT) before it connects, on every connect path: the first pick,
the retries, fast open. A bind that fails is a failed connect attempt of that backend: counted in
its connect_failures, and the next backend is tried within `retries` (docs/configuration.md,
"Source address"). 127.0.0.0/8 is all on lo, so 127.0.0.2 is a second IPv4 source on any host;
the tests that need an address that cannot be bound (192.0.2.1, TEST-NET-1) or a second IPv6
loopback address (::2) run in a private network namespace of the test's thread
(fast_open_env.private_netns, root only): nothing there routes off the host, whatever the
host's ip_nonlocal_bind says.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from .backends import BackendServer
from .clients import connect, echo_trip, fate, recv_exact, wait_for
from .conftest import LB, SVC, MakeLB, Servers
from .tables import BackendSpec, ServiceSpec

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a network namespace)")
UNBINDABLE = "192.0.2.1"  # TEST-NET-1: on no interface (of the private namespace either)


def spec(server: BackendServer, source: str | None = None, **fields: Any) -> BackendSpec:
    return BackendSpec(server.name, server.host, server.port, source=source, **fields)


def peers(server: BackendServer, n: int) -> list[str]:
    """The source addresses of the first n connections server saw (waits for them)."""
    assert wait_for(lambda: len(server.records()) >= n, 5.0), server.records()
    return [r.peer[0] for r in server.records()[:n]]


def trip(lb: LB, payload: bytes = b"ping") -> None:
    assert echo_trip(lb.addr(), payload)[0] == payload


def test_source_is_the_backends_peer(make_lb: MakeLB, servers: Servers) -> None:
    plain = servers.start("plain")
    sourced = servers.start("sourced")
    lb = make_lb([ServiceSpec(SVC, (spec(plain), spec(sourced, "127.0.0.2")))])
    for _ in range(4):  # round robin: two each
        trip(lb)
    assert peers(plain, 2) == ["127.0.0.1"] * 2  # the kernel's choice: the route's address
    assert peers(sourced, 2) == ["127.0.0.2"] * 2
    # bound with port 0: every connection still got its own ephemeral port
    assert len({r.peer[1] for r in sourced.records()}) == 2
    assert lb.be_stats("sourced")["connect_failures"] == 0


def test_retry_to_a_sourced_backend(make_lb: MakeLB, servers: Servers) -> None:
    """A refused first backend, then the retry binds the next backend's source."""
    refusing = servers.refusing()
    good = servers.start("good")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("refusing", refusing.host, refusing.port),
                                    spec(good, "127.0.0.3")), retries=1)])
    for _ in range(2):
        trip(lb)
    assert peers(good, 2) == ["127.0.0.3"] * 2
    assert lb.be_stats("refusing")["connect_failures"] >= 1  # round robin: 1 or 2 retries


def test_udp_flows_leave_from_the_source(make_lb: MakeLB) -> None:
    backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        backend.bind(("127.0.0.1", 0))
        backend.settimeout(5.0)
        client.settimeout(5.0)
        port = backend.getsockname()[1]
        lb = make_lb([ServiceSpec(SVC, (BackendSpec("b", "127.0.0.1", port, source="127.0.0.4"),),
                                  protocol="udp", idle_timeout_ms=30_000)])
        client.sendto(b"q1", lb.addr())
        data, peer = backend.recvfrom(100)
        assert data == b"q1" and peer[0] == "127.0.0.4"
        backend.sendto(b"a1", peer)  # the reply goes back through the flow
        assert client.recvfrom(100)[0] == b"a1"
        client.sendto(b"q2", lb.addr())  # same flow, same socket, same source
        assert backend.recvfrom(100) == (b"q2", peer)
        assert lb.be_stats("b")["connect_failures"] == 0
    finally:
        backend.close()
        client.close()


# --- private namespace: an address that cannot be bound, a second IPv6 loopback ----------


@pytest.fixture
def ns_servers(fo_ns: None) -> Iterator[Servers]:
    """Backends created inside the test's private namespace, closed there."""
    owner = Servers()
    yield owner
    owner.close()


@root_only
def test_unbindable_source_counts_and_moves_on(fo_make_lb: MakeLB,
                                               ns_servers: Servers) -> None:
    bad = ns_servers.start("bad")
    good = ns_servers.start("good")
    # round robin over both: every second pick is the bad one, and its retry is the good one
    lb = fo_make_lb([ServiceSpec(SVC, (spec(bad, UNBINDABLE), spec(good)), retries=1)])
    for _ in range(4):
        trip(lb)
    assert bad.records() == []  # no connection ever reached it
    assert peers(good, 4) == ["127.0.0.1"] * 4
    assert lb.be_stats("bad")["connect_failures"] >= 2
    assert lb.be_stats("good")["conns_total"] == 4
    assert lb.svc_stats()["no_backend"] == 0
    assert lb.svc_stats()["accept_errors"] == 0  # the backend's failure, not a local one


@root_only
def test_unbindable_source_without_retries_left(fo_make_lb: MakeLB,
                                                ns_servers: Servers) -> None:
    bad = ns_servers.start("bad")
    lb = fo_make_lb([ServiceSpec(SVC, (spec(bad, UNBINDABLE),), retries=2)])
    assert fate(lb.addr(), 5.0) == "reset"
    assert wait_for(lambda: lb.svc_stats().get("no_backend", 0) == 1, 5.0), lb.svc_stats()
    assert lb.be_stats("bad")["connect_failures"] == 1  # tried once: no other candidate
    assert lb.svc_stats()["accept_errors"] == 0


@root_only
def test_unbindable_source_udp(fo_make_lb: MakeLB) -> None:
    backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        backend.bind(("127.0.0.1", 0))
        port = backend.getsockname()[1]
        lb = fo_make_lb([ServiceSpec(SVC, (BackendSpec("b", "127.0.0.1", port,
                                                       source=UNBINDABLE),),
                                     protocol="udp", idle_timeout_ms=30_000)])
        client.sendto(b"q", lb.addr())
        assert wait_for(lambda: lb.be_stats("b").get("connect_failures", 0) == 1, 5.0)
        stats = lb.svc_stats()
        assert stats["drops_send"] == 1 and stats["accept_errors"] == 0
        assert stats["flows_created"] == 0
        backend.settimeout(0.2)
        with pytest.raises(TimeoutError):
            backend.recvfrom(100)
    finally:
        backend.close()
        client.close()


@root_only
def test_fast_open_binds_the_source(fo_make_lb: MakeLB, ns_servers: Servers) -> None:
    """The fast-open path (sendto(MSG_FASTOPEN) on the fresh socket) binds first too, and a
    bad source there is retried on the next backend as well."""
    bad = ns_servers.start("bad")
    good = ns_servers.start("good")
    lb = fo_make_lb([ServiceSpec(SVC, (spec(bad, UNBINDABLE), spec(good, "127.0.0.5")),
                                 retries=1)], workers=1)
    lb.dp.set_fast_open(SVC, True)
    for sock in lb.listeners[SVC]:  # the client's bytes wait at accept: fast open is tried
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
    for i in range(4):
        with connect(lb.addr()) as sock:
            sock.sendall(b"hello %d" % i)
            assert recv_exact(sock, 7) == b"hello %d" % i
    assert peers(good, 4) == ["127.0.0.5"] * 4
    assert bad.records() == []
    assert lb.be_stats("bad")["connect_failures"] >= 2
    internals = getattr(lb.dp, "_internals", None)
    if internals is not None:  # the C relay counts its fast-open attempts
        assert internals()["fast_open_attempts"] >= 4


@root_only
def test_ipv6_source(fo_make_lb: MakeLB, ns_servers: Servers) -> None:
    subprocess.run(["ip", "-6", "addr", "add", "::2/128", "dev", "lo", "nodad"], check=True,
                   capture_output=True, timeout=10)
    plain = ns_servers.start("plain", host="::1")
    sourced = ns_servers.start("sourced", host="::1")
    lb = fo_make_lb([ServiceSpec(SVC, (spec(plain), spec(sourced, "::2")))], host="::1")
    for _ in range(4):
        trip(lb)
    assert peers(plain, 2) == ["::1"] * 2
    assert peers(sourced, 2) == ["::2"] * 2
