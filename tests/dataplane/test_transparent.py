"""Transparent mode (source = "client", BackendRec.source_family 1), against both data planes.

Each connection (UDP: each flow's socket) to a transparent backend sets IP_TRANSPARENT /
IPV6_TRANSPARENT and binds the session's client address, port 0, before it connects, so the
backend sees the client as its peer. Replies to the client's address must come back to the
balancer and be delivered locally there; the topology is the recipe of docs/configuration.md
("Transparent mode"):

    client ns  c0 10.77.1.2/24 fd77:1::2/64 ── lc 10.77.1.1 fd77:1::1  balancer  (the test
    thread's private namespace, fast_open_env.private_netns)  lb 10.77.2.1 fd77:2::1 ── b0
    10.77.2.2/24 fd77:2::2/64  backend ns, default route via the balancer

with `ip rule add iif lb lookup 100` + `ip route add local 0.0.0.0/0 dev lo table 100` (and the
IPv6 twins) on the balancer. The client and backend sockets are made inside their namespaces by
this thread (setns there and back), so every test stays single-threaded. Root only; the named
namespaces (and with them the veths) are deleted whatever the test did.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import os
import select
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from l4lb.table.hashing import flow_hash

from .clients import wait_for
from .conftest import LB, SVC, MakeLB
from .tables import BackendSpec, ServiceSpec

CLONE_NEWNET = 0x40000000  # linux/sched.h
_libc = ctypes.CDLL(None, use_errno=True)
_names = itertools.count(1)
CLIENT4, LB4_C, LB4_B, BACKEND4 = "10.77.1.2", "10.77.1.1", "10.77.2.1", "10.77.2.2"
CLIENT6, LB6_C, LB6_B, BACKEND6 = "fd77:1::2", "fd77:1::1", "fd77:2::1", "fd77:2::2"
TIMEOUT = 5.0


def ip(*argv: str) -> None:
    """Run `ip ...` in this thread's namespace; a failure names stderr."""
    proc = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {proc.stderr.strip()}")


@contextlib.contextmanager
def in_ns(name: str) -> Iterator[None]:
    """This thread in the named namespace `name`, then back where it was."""
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        there = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(there, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {name}")
        finally:
            os.close(there)
        try:
            yield
        finally:
            if _libc.setns(back, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(back)


def no_dad(name: str | None) -> None:
    """IPv6 duplicate address detection off for new interfaces of a namespace (None: this
    thread's)."""
    for conf in ("default", "all"):
        key = f"net.ipv6.conf.{conf}.accept_dad=0"
        argv = ["sysctl", "-qw", key] if name is None else \
            ["ip", "netns", "exec", name, "sysctl", "-qw", key]
        subprocess.run(argv, check=True, capture_output=True, timeout=10)


@dataclass
class Topo:
    """The client and backend namespaces around the balancer (this thread's namespace)."""

    client: str  # namespace names
    backend: str

    def client_socket(self, family: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
        with in_ns(self.client):
            sock = socket.socket(family, kind)
        sock.settimeout(TIMEOUT)
        return sock

    def backend_socket(self, family: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A backend socket bound to the backend's address (listening, for TCP)."""
        with in_ns(self.backend):
            sock = socket.socket(family, kind)
        sock.settimeout(TIMEOUT)
        sock.bind((BACKEND6 if family == socket.AF_INET6 else BACKEND4, 0))
        if kind == socket.SOCK_STREAM:
            sock.listen(16)
        return sock


@pytest.fixture
def topo(fo_ns: None) -> Iterator[Topo]:
    n = next(_names)
    names = Topo(f"l4tr-{os.getpid()}-{n}-c", f"l4tr-{os.getpid()}-{n}-b")
    made: list[str] = []
    no_dad(None)  # link-local addresses usable at once (neighbour discovery needs one)
    try:
        for name, here, there, mine, peer, mine6, peer6 in (
                (names.client, "lc", "c0", LB4_C, CLIENT4, LB6_C, CLIENT6),
                (names.backend, "lb", "b0", LB4_B, BACKEND4, LB6_B, BACKEND6)):
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True,
                           timeout=10)
            made.append(name)
            no_dad(name)
            ip("link", "add", here, "type", "veth", "peer", "name", there)
            ip("link", "set", there, "netns", name)
            ip("addr", "add", f"{mine}/24", "dev", here)
            ip("-6", "addr", "add", f"{mine6}/64", "dev", here, "nodad")
            ip("link", "set", here, "up")
            for argv in (("addr", "add", f"{peer}/24", "dev", there),
                         ("-6", "addr", "add", f"{peer6}/64", "dev", there, "nodad"),
                         ("link", "set", there, "up"), ("link", "set", "lo", "up"),
                         ("route", "add", "default", "via", mine),
                         ("-6", "route", "add", "default", "via", mine6)):
                ip("-n", name, *argv)
        # replies to a client's address arriving from the backends: delivered here
        ip("rule", "add", "iif", "lb", "lookup", "100")
        ip("route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
        ip("-6", "rule", "add", "iif", "lb", "lookup", "100")
        ip("-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100")
        yield names
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def tcp_trip(topo: Topo, lb: LB, backend: socket.socket, family: int = socket.AF_INET,
             lb_host: str = LB4_C, header: bytes = b"") -> tuple[str, int]:
    """One client connection through lb to backend: data both ways; the backend's peer."""
    client = topo.client_socket(family)
    try:
        client.connect((lb_host, lb.port()))
        client.sendall(header + b"ping")
        conn, _ = backend.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            peer = conn.getpeername()
            assert conn.recv(100) == b"ping"
            conn.sendall(b"pong")
            assert client.recv(100) == b"pong"
        return str(peer[0]), int(peer[1])
    finally:
        client.close()


def spec(backend: socket.socket, name: str = "b", source: str | None = "client") -> BackendSpec:
    host, port = backend.getsockname()[:2]
    return BackendSpec(name, host, port, source=source)


def test_tcp_backend_sees_the_client(fo_make_lb: MakeLB, topo: Topo) -> None:
    with topo.backend_socket(socket.AF_INET) as backend:
        lb = fo_make_lb([ServiceSpec(SVC, (spec(backend),))], host=LB4_C)
        peers = [tcp_trip(topo, lb, backend) for _ in range(2)]
        assert [p[0] for p in peers] == [CLIENT4] * 2
        assert peers[0][1] != peers[1][1]  # the kernel's port each time (port 0)
        assert lb.be_stats("b")["connect_failures"] == 0


def test_tcp_without_client_source_is_the_balancer(fo_make_lb: MakeLB, topo: Topo) -> None:
    """The control: the same topology without source = "client" shows the balancer."""
    with topo.backend_socket(socket.AF_INET) as backend:
        lb = fo_make_lb([ServiceSpec(SVC, (spec(backend, source=None),))], host=LB4_C)
        assert tcp_trip(topo, lb, backend)[0] == LB4_B


def test_tcp_ipv6_backend_sees_the_client(fo_make_lb: MakeLB, topo: Topo) -> None:
    with topo.backend_socket(socket.AF_INET6) as backend:
        lb = fo_make_lb([ServiceSpec(SVC, (spec(backend),))], host=LB6_C)
        assert tcp_trip(topo, lb, backend, socket.AF_INET6, LB6_C)[0] == CLIENT6
        assert lb.be_stats("b")["connect_failures"] == 0


def test_udp_flow_leaves_from_the_client(fo_make_lb: MakeLB, topo: Topo) -> None:
    with topo.backend_socket(socket.AF_INET, socket.SOCK_DGRAM) as backend, \
            topo.client_socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        lb = fo_make_lb([ServiceSpec(SVC, (spec(backend),), protocol="udp",
                                     idle_timeout_ms=30_000)], host=LB4_C)
        client.sendto(b"q1", (LB4_C, lb.port()))
        data, peer = backend.recvfrom(100)
        assert (data, peer[0]) == (b"q1", CLIENT4)
        backend.sendto(b"a1", peer)  # to the client's address: back through the balancer
        assert client.recvfrom(100) == (b"a1", (LB4_C, lb.port()))
        client.sendto(b"q2", (LB4_C, lb.port()))  # the same flow, the same bound socket
        assert backend.recvfrom(100) == (b"q2", peer)
        assert lb.be_stats("b")["connect_failures"] == 0


def test_udp_ipv4_client_of_a_dual_stack_listener_is_ipv4(fo_make_lb: MakeLB,
                                                         topo: Topo) -> None:
    """On a dual-stack :: listener an IPv4 client is ::ffff:10.77.1.2: its IPv4 address is
    bound, towards an IPv4 backend."""
    with topo.backend_socket(socket.AF_INET, socket.SOCK_DGRAM) as backend, \
            topo.client_socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        lb = fo_make_lb([ServiceSpec(SVC, (spec(backend),), protocol="udp",
                                     idle_timeout_ms=30_000)], host="::", v6only=False)
        client.sendto(b"q1", (LB4_C, lb.port()))
        data, peer = backend.recvfrom(100)
        assert (data, peer[0]) == (b"q1", CLIENT4)
        backend.sendto(b"a1", peer)
        assert client.recvfrom(100)[0] == b"a1"
        assert lb.be_stats("b")["connect_failures"] == 0


def refused(topo: Topo, lb: LB, family: int = socket.AF_INET, lb_host: str = LB4_C) -> None:
    """One client connection that lb accepts and resets, never relaying a byte."""
    # reset at once: at the send or at the read, as the race goes
    with topo.client_socket(family) as client, contextlib.suppress(ConnectionResetError):
        client.connect((lb_host, lb.port()))
        client.sendall(b"ping")
        assert client.recv(100) == b""


def nothing_reached(backend: socket.socket) -> None:
    """No connection (TCP) or datagram (UDP) ever reached backend."""
    backend.settimeout(0.2)
    with pytest.raises(TimeoutError):
        if backend.type == socket.SOCK_STREAM:
            backend.accept()
        else:
            backend.recvfrom(100)


def ring_walk(lb: LB, client: tuple[str, int]) -> list[str]:
    """The backends of service SVC in the order a hashing scheduler's walk meets them for
    client, from its home slot on (each once): the first pick, then a retry's."""
    assert lb.built is not None
    table = lb.built.table
    svc = table.service(SVC)
    assert svc is not None and svc.ring_size > 0
    addr = ipaddress.ip_address(client[0])
    h = flow_hash(table.hash_seed, addr.version, addr.packed.ljust(16, b"\0"), client[1],
                  svc.hash_key)
    names: list[str] = []
    for k in range(svc.ring_size):
        rel = table.ring[svc.ring_first + (h + k) % svc.ring_size]
        name = lb.built.names[table.backends[svc.backend_first + rel].backend_id]
        if name not in names:
            names.append(name)
    return names


def test_family_mismatch_is_no_candidate(fo_make_lb: MakeLB, topo: Topo) -> None:
    """An IPv4 client cannot leave from its address towards an IPv6 backend: that backend is
    no candidate for it, left out by the scheduler (no socket, connect failure or retry),
    and the IPv4 one takes the connection. Never the balancer's own address instead."""
    with topo.backend_socket(socket.AF_INET6) as six, \
            topo.backend_socket(socket.AF_INET) as four:
        lb = fo_make_lb([ServiceSpec(SVC, (spec(four, "four"), spec(six, "six")), retries=1)],
                        host=LB4_C)
        for _ in range(4):  # round robin: every second first pick is the IPv6 backend
            assert tcp_trip(topo, lb, four)[0] == CLIENT4
        nothing_reached(six)
        assert lb.be_stats("six").get("connect_failures", 0) == 0  # (C: no counter yet)
        assert lb.be_stats("four")["connect_failures"] == 0
        assert lb.be_stats("four")["conns_total"] == 4
        assert lb.svc_stats()["conns_total"] == 4
        assert lb.svc_stats()["no_backend"] == 0
        assert lb.svc_stats()["accept_errors"] == 0


def test_family_mismatch_costs_no_retry(fo_make_lb: MakeLB, topo: Topo) -> None:
    """retries = 0: an IPv4 client whose pick is the IPv6 backend still reaches the IPv4 one
    (passing a backend over is no failed attempt), every time."""
    with topo.backend_socket(socket.AF_INET6) as six, \
            topo.backend_socket(socket.AF_INET) as four:
        lb = fo_make_lb([ServiceSpec(SVC, (spec(six, "six"), spec(four, "four")), retries=0)],
                        host=LB4_C)
        for _ in range(6):
            assert tcp_trip(topo, lb, four)[0] == CLIENT4
        nothing_reached(six)
        assert lb.be_stats("six").get("connect_failures", 0) == 0
        assert lb.be_stats("four")["connect_failures"] == 0
        assert lb.be_stats("four")["conns_total"] == 6
        assert lb.svc_stats()["no_backend"] == 0


def test_only_other_family_backends_is_no_backend(fo_make_lb: MakeLB, topo: Topo) -> None:
    """A service whose backends are all of the other family has no candidate for the
    client: no_backend, close reason no_backend (not connect_failed), no backend charged
    and no backend named in the log."""
    with topo.backend_socket(socket.AF_INET6) as one, topo.backend_socket(socket.AF_INET6) as two:
        lb = fo_make_lb([ServiceSpec(SVC, (spec(one, "one"), spec(two, "two")))], host=LB4_C)
        lb.dp.set_connection_log(True, 64)
        for _ in range(2):
            refused(topo, lb)
        assert wait_for(lambda: lb.svc_stats().get("no_backend", 0) == 2, TIMEOUT), \
            lb.svc_stats()
        records: list[dict[str, Any]] = []

        def two_records() -> bool:
            records.extend(lb.dp.closed_sessions())
            return len(records) >= 2

        assert wait_for(two_records, TIMEOUT)
        assert [(r["reason"], r["backend_id"]) for r in records] == [("no_backend", -1)] * 2
        for name in ("one", "two"):
            assert lb.be_stats(name).get("connect_failures", 0) == 0
        assert lb.svc_stats()["conns_total"] == 2
        assert lb.svc_stats()["rejected"] == 0
        assert lb.svc_stats()["accept_errors"] == 0
        nothing_reached(one)
        nothing_reached(two)


def test_full_own_family_is_a_refusal(fo_make_lb: MakeLB, topo: Topo) -> None:
    """The client's own-family backend at its max_connections, the other-family one free:
    a capacity refusal (rejected), as if the other-family backend did not exist."""
    with topo.backend_socket(socket.AF_INET6) as six, \
            topo.backend_socket(socket.AF_INET) as four:
        lb = fo_make_lb([ServiceSpec(SVC, (
            BackendSpec("four", BACKEND4, four.getsockname()[1], max_connections=1,
                        source="client"),
            spec(six, "six")))], host=LB4_C)
        held = topo.client_socket(socket.AF_INET)
        with held:
            held.connect((LB4_C, lb.port()))
            conn, _ = four.accept()
            with conn:
                refused(topo, lb)
                assert wait_for(lambda: lb.svc_stats().get("rejected", 0) == 1, TIMEOUT), \
                    lb.svc_stats()
        assert lb.svc_stats()["no_backend"] == 0
        assert lb.svc_stats()["conns_total"] == 1
        assert lb.be_stats("six").get("connect_failures", 0) == 0


def test_maglev_walks_on_past_the_other_family(fo_make_lb: MakeLB, topo: Topo) -> None:
    """maglev, backends of both families, retries = 0: a client whose home slot is an IPv6
    backend gets the first IPv4 backend of its ring walk (the order a retry follows), so the
    choice stays deterministic; the IPv6 backends are never charged."""
    with topo.backend_socket(socket.AF_INET6) as s1, topo.backend_socket(socket.AF_INET6) as s2, \
            topo.backend_socket(socket.AF_INET) as f1, topo.backend_socket(socket.AF_INET) as f2:
        fours = {"f1": f1, "f2": f2}
        lb = fo_make_lb([ServiceSpec(SVC, (spec(s1, "s1"), spec(s2, "s2"), spec(f1, "f1"),
                                           spec(f2, "f2")),
                                     scheduler="maglev", hash_key="src_ip_port", retries=0,
                                     maglev_size=251)], host=LB4_C)
        walks = {port: ring_walk(lb, (CLIENT4, port)) for port in range(41000, 41200)}
        ports = [p for p, walk in walks.items() if walk[0].startswith("s")][:6]
        assert len(ports) == 6
        for port in ports:
            want = next(name for name in walks[port] if name.startswith("f"))
            client = topo.client_socket(socket.AF_INET)
            with client:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                client.bind((CLIENT4, port))
                client.connect((LB4_C, lb.port()))
                client.sendall(b"ping")
                conn, peer = fours[want].accept()
                with conn:
                    conn.settimeout(TIMEOUT)
                    assert peer[0] == CLIENT4
                    assert conn.recv(100) == b"ping"
                    conn.sendall(b"pong")
                    assert client.recv(100) == b"pong"
        for name in ("s1", "s2", "f1", "f2"):
            assert lb.be_stats(name).get("connect_failures", 0) == 0
        assert lb.svc_stats()["no_backend"] == 0
        nothing_reached(s1)
        nothing_reached(s2)


def test_udp_family_mismatch_is_no_candidate(fo_make_lb: MakeLB, topo: Topo) -> None:
    """A new flow of an IPv4 client picks again past an IPv6 backend: every flow reaches the
    IPv4 backend, from the client's address; nothing is dropped or charged."""
    with topo.backend_socket(socket.AF_INET6, socket.SOCK_DGRAM) as six, \
            topo.backend_socket(socket.AF_INET, socket.SOCK_DGRAM) as four:
        lb = fo_make_lb([ServiceSpec(SVC, (spec(six, "six"), spec(four, "four")),
                                     protocol="udp", idle_timeout_ms=30_000)], host=LB4_C)
        for k in range(4):  # four flows (four client ports): round robin meets six twice
            with topo.client_socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(b"q%d" % k, (LB4_C, lb.port()))
                data, peer = four.recvfrom(100)
                assert (data, peer[0]) == (b"q%d" % k, CLIENT4)
                four.sendto(b"a", peer)
                assert client.recvfrom(100)[0] == b"a"
        nothing_reached(six)
        assert lb.be_stats("six").get("connect_failures", 0) == 0
        assert lb.be_stats("four")["flows_total"] == 4
        stats = lb.svc_stats()
        assert (stats["drops_send"], stats["drops_no_backend"], stats["accept_errors"]) == (
            0, 0, 0)


def test_udp_only_other_family_backends_drops_no_backend(fo_make_lb: MakeLB,
                                                        topo: Topo) -> None:
    with topo.backend_socket(socket.AF_INET6, socket.SOCK_DGRAM) as six, \
            topo.client_socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        lb = fo_make_lb([ServiceSpec(SVC, (spec(six, "six"),), protocol="udp",
                                     idle_timeout_ms=30_000)], host=LB4_C)
        client.sendto(b"q1", (LB4_C, lb.port()))
        assert wait_for(lambda: lb.svc_stats().get("drops_no_backend", 0) == 1, TIMEOUT), \
            lb.svc_stats()
        assert lb.svc_stats()["drops_send"] == 0
        assert lb.svc_stats()["accept_errors"] == 0
        assert lb.be_stats("six").get("connect_failures", 0) == 0
        nothing_reached(six)


def test_udp_maglev_walks_on_past_the_other_family(fo_make_lb: MakeLB, topo: Topo) -> None:
    """The UDP twin of the maglev test: a flow whose home slot is an IPv6 backend goes to the
    first IPv4 backend of its ring walk."""
    with topo.backend_socket(socket.AF_INET6, socket.SOCK_DGRAM) as s1, \
            topo.backend_socket(socket.AF_INET6, socket.SOCK_DGRAM) as s2, \
            topo.backend_socket(socket.AF_INET, socket.SOCK_DGRAM) as f1, \
            topo.backend_socket(socket.AF_INET, socket.SOCK_DGRAM) as f2:
        fours = {"f1": f1, "f2": f2}
        lb = fo_make_lb([ServiceSpec(SVC, (spec(s1, "s1"), spec(s2, "s2"), spec(f1, "f1"),
                                           spec(f2, "f2")),
                                     scheduler="maglev", hash_key="src_ip_port",
                                     maglev_size=251, protocol="udp", idle_timeout_ms=30_000)],
                        host=LB4_C)
        walks = {port: ring_walk(lb, (CLIENT4, port)) for port in range(42000, 42200)}
        ports = [p for p, walk in walks.items() if walk[0].startswith("s")][:6]
        assert len(ports) == 6
        for port in ports:
            want = next(name for name in walks[port] if name.startswith("f"))
            with topo.client_socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.bind((CLIENT4, port))
                client.sendto(b"q", (LB4_C, lb.port()))
                data, peer = fours[want].recvfrom(100)
                assert (data, tuple(peer[:1])) == (b"q", (CLIENT4,))
        for name in ("s1", "s2", "f1", "f2"):
            assert lb.be_stats(name).get("connect_failures", 0) == 0
        stats = lb.svc_stats()
        assert (stats["drops_send"], stats["drops_no_backend"]) == (0, 0)
        nothing_reached(s1)
        nothing_reached(s2)


def test_accept_proxy_binds_the_headers_client(fo_make_lb: MakeLB, topo: Topo) -> None:
    """Under accept_proxy the client is the PROXY header's: its address is bound (the real
    peer, 10.77.1.2, is another balancer), and replies to it come back all the same."""
    with topo.backend_socket(socket.AF_INET) as backend:
        lb = fo_make_lb([ServiceSpec(SVC, (spec(backend),))], host=LB4_C)
        lb.dp.set_accept_proxy(SVC, 5000)
        header = f"PROXY TCP4 10.77.1.9 {LB4_C} 40000 {lb.port()}\r\n".encode()
        assert tcp_trip(topo, lb, backend, header=header)[0] == "10.77.1.9"
        assert lb.be_stats("b")["connect_failures"] == 0


def test_link_local_client_is_not_the_backends_failure(fo_make_lb: MakeLB, topo: Topo) -> None:
    """review12: an IPv6 link-local client (fe80::/10; here from a PROXY header, the same as a
    direct one on a wildcard listener) has no scope in the session key, so its address can
    never be bound (EINVAL) towards any backend. That is the client's doing, not the
    backends': the session ends as a local error (accept_errors), and no backend gets a
    connect failure (they feed max_fails, so one such client could take every backend DOWN)."""
    with topo.backend_socket(socket.AF_INET6) as one, topo.backend_socket(socket.AF_INET6) as two:
        lb = fo_make_lb([ServiceSpec(SVC, (spec(one, "one"), spec(two, "two")), retries=1)],
                        host=LB6_C)
        lb.dp.set_accept_proxy(SVC, 5000)
        for _ in range(2):
            client = topo.client_socket(socket.AF_INET6)
            with client:
                client.connect((LB6_C, lb.port()))
                client.sendall(f"PROXY TCP6 fe80::9 {LB6_C} 40000 {lb.port()}\r\n".encode()
                               + b"ping")
                with contextlib.suppress(ConnectionResetError):
                    assert client.recv(100) == b""  # closed, never relayed
        assert wait_for(lambda: lb.svc_stats()["accept_errors"] == 2, TIMEOUT), \
            (lb.svc_stats(), lb.be_stats("one"), lb.be_stats("two"))
        assert lb.be_stats("one").get("connect_failures", 0) == 0  # (C: no counter yet)
        assert lb.be_stats("two").get("connect_failures", 0) == 0
        assert lb.svc_stats()["no_backend"] == 0


def test_loopback_client_towards_a_remote_backend_is_a_local_error(fo_make_lb: MakeLB,
                                                                   topo: Topo) -> None:
    """review12: a local client through a wildcard listener is 127.0.0.1. Its address binds
    under IP_TRANSPARENT, but connect() towards a backend off the host fails (EINVAL): the
    kernel never routes a loopback source out. That is the client's doing, so the session is
    a local error (accept_errors), and the backends get no connect failure."""
    with topo.backend_socket(socket.AF_INET) as one:
        lb = fo_make_lb([ServiceSpec(SVC, (spec(one, "one"),))], host="0.0.0.0")
        for _ in range(2):
            # reset at once: at connect, at the send or at the read, as the race goes
            with contextlib.suppress(ConnectionResetError), \
                    socket.create_connection(("127.0.0.1", lb.port()), timeout=TIMEOUT) as client:
                client.sendall(b"ping")
                assert client.recv(100) == b""  # closed, never relayed
        assert wait_for(lambda: lb.svc_stats()["accept_errors"] == 2, TIMEOUT), \
            (lb.svc_stats(), lb.be_stats("one"))
        assert lb.be_stats("one").get("connect_failures", 0) == 0
        assert lb.svc_stats()["no_backend"] == 0
        # a client from the client namespace still goes through, from its own address
        assert tcp_trip(topo, lb, one)[0] == CLIENT4


def test_loopback_client_towards_a_loopback_backend_is_transparent(fo_make_lb: MakeLB,
                                                                   topo: Topo) -> None:
    """A loopback client of a backend that is on loopback too is bound as any other: the
    backend sees 127.0.0.2, not the balancer's 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as backend:
        backend.settimeout(TIMEOUT)
        backend.bind(("127.0.0.1", 0))
        backend.listen(4)
        lb = fo_make_lb([ServiceSpec(SVC, (spec(backend),))], host="127.0.0.1")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            client.settimeout(TIMEOUT)
            client.bind(("127.0.0.2", 0))
            client.connect(("127.0.0.1", lb.port()))
            client.sendall(b"ping")
            conn, peer = backend.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                assert conn.recv(100) == b"ping"
                conn.sendall(b"pong")
                assert client.recv(100) == b"pong"
        assert peer[0] == "127.0.0.2"
        assert lb.be_stats("b").get("connect_failures", 0) == 0


@pytest.mark.parametrize("scheduler", ["round_robin", "least_conn"])
def test_passing_over_the_other_family_keeps_the_rotation_even(fo_make_lb: MakeLB, topo: Topo,
                                                               scheduler: str) -> None:
    """review12b: two IPv4 backends of equal weight around an IPv6 one, IPv4 clients only, one
    connection at a time: the IPv4 backends share the connections evenly, as if the IPv6 one
    were not there. A pick that passes over the IPv6 backend must not spend a second turn of
    the rotation (round_robin's counter, least_conn's tie rotation), or the IPv4 backend
    after it in the order gets one connection in four instead of one in two."""
    with topo.backend_socket(socket.AF_INET) as f1, topo.backend_socket(socket.AF_INET6) as six, \
            topo.backend_socket(socket.AF_INET) as f2:
        lb = fo_make_lb([ServiceSpec(SVC, (spec(f1, "f1"), spec(six, "six"), spec(f2, "f2")),
                                     scheduler=scheduler)], host=LB4_C)
        got = {"f1": 0, "f2": 0}
        for _ in range(8):
            client = topo.client_socket(socket.AF_INET)
            with client:
                client.connect((LB4_C, lb.port()))
                client.sendall(b"ping")
                ready, _, _ = select.select([f1, f2], [], [], TIMEOUT)
                assert ready
                conn, _peer = ready[0].accept()
                with conn:
                    got["f1" if ready[0] is f1 else "f2"] += 1
            # one at a time: least_conn sees no load, only its tie rotation decides
            assert wait_for(lambda: lb.svc_stats().get("conns_active", 0) == 0, TIMEOUT)
        nothing_reached(six)
        assert got == {"f1": 4, "f2": 4}
