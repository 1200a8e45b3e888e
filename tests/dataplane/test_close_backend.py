"""close_backend_sessions(): the sessions and flows of one backend end at once, the others stay."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import pytest

from .clients import closed_within, connect, recv_exact, udp_ask, udp_socket, wait_for
from .conftest import LB, SVC, MakeLB, Servers
from .tables import BackendSpec, ServiceSpec

HOST = "127.0.0.1"


def backend_of(lb: LB, client: socket.socket) -> int:
    """backend_id of the session of this client socket (from sessions())."""
    port = client.getsockname()[1]
    found = [s["backend_id"] for s in lb.dp.sessions() if s["client"][1] == port]
    assert len(found) == 1, (port, lb.dp.sessions())
    backend_id: int = found[0]
    return backend_id


def sees_reset(sock: socket.socket, seconds: float = 2.0) -> bool:
    """True once a send or recv on sock fails because the peer reset (or closed) it."""

    def failed() -> bool:
        try:
            sock.send(b"?")
            sock.settimeout(0.05)
            data = sock.recv(1)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        return data == b""

    return wait_for(failed, seconds)


def test_closes_exactly_the_sessions_of_that_backend(make_lb: MakeLB, servers: Servers) -> None:
    a, b = servers.start("a", "echo"), servers.start("b", "echo")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("a", HOST, a.port),
                                    BackendSpec("b", HOST, b.port)))])
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(connect(lb.addr())) for _ in range(6)]
        for i, client in enumerate(clients):  # every session established and relaying
            client.sendall(b"ping%d" % i)
            assert recv_exact(client, 5) == b"ping%d" % i
        owner = {client: backend_of(lb, client) for client in clients}
        id_a = lb.backend_id("a")
        doomed = [c for c in clients if owner[c] == id_a]
        kept = [c for c in clients if owner[c] != id_a]
        assert doomed and kept  # round robin spread them over both
        assert lb.svc_stats()["conns_active"] == 6

        assert lb.dp.close_backend_sessions(id_a) == len(doomed)

        for client in doomed:
            assert closed_within(client, 2.0) == "reset"
        for client in kept:  # the others keep streaming, both ways
            payload = bytes(range(256)) * 64
            client.sendall(payload)
            assert recv_exact(client, len(payload)) == payload
        assert lb.svc_stats()["conns_active"] == len(kept)
        assert lb.be_stats("a").get("conns_active", 0) == 0
        assert lb.be_stats("b")["conns_active"] == len(kept)
        assert sorted(s["backend_id"] for s in lb.dp.sessions()) == [lb.backend_id("b")] * len(
            kept)
        assert wait_for(lambda: len(a.ended()) == len(doomed), 5)
        assert all(r.end == "reset" for r in a.ended())  # the backend side was reset too
        assert lb.dp.close_backend_sessions(id_a) == 0  # nothing left of it
    assert wait_for(lambda: lb.svc_stats()["conns_active"] == 0, 5)


def test_connecting_and_half_closed_sessions_are_closed(make_lb: MakeLB,
                                                        servers: Servers) -> None:
    hole = servers.black_hole()
    greeter = servers.start("g", "greet_shut")
    lb = make_lb([
        ServiceSpec(SVC, (BackendSpec("hole", HOST, hole.port),), connect_timeout_ms=10_000,
                    retries=0),
        ServiceSpec(2, (BackendSpec("g", HOST, greeter.port),)),
    ])
    with connect(lb.addr()) as waiting, connect(lb.addr(2)) as half:
        assert half.recv(16) == b"g\n"
        assert half.recv(16) == b""  # the backend's FIN came through: half-closed
        assert wait_for(lambda: sorted(s["state"] for s in lb.dp.sessions())
                        == ["connecting", "half_closed"], 5), lb.dp.sessions()

        assert lb.dp.close_backend_sessions(lb.backend_id("hole")) == 1
        assert closed_within(waiting, 2.0) == "reset"
        assert [s["state"] for s in lb.dp.sessions()] == ["half_closed"]
        assert lb.be_stats("hole").get("connect_failures", 0) == 0  # not the backend's fault

        assert lb.dp.close_backend_sessions(lb.backend_id("g")) == 1
        assert sees_reset(half)
    assert lb.dp.sessions() == []
    assert lb.svc_stats(SVC)["conns_active"] == 0 and lb.svc_stats(2)["conns_active"] == 0


def test_udp_flows_of_the_backend_end_and_the_next_datagram_opens_a_new_flow(
        make_lb: MakeLB, servers: Servers) -> None:
    a, b = servers.udp("a", "echo"), servers.udp("b", "echo", index=2)
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("a", HOST, a.port),
                                    BackendSpec("b", HOST, b.port)),
                              protocol="udp", idle_timeout_ms=30_000)])
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(udp_socket(HOST)) for _ in range(6)]
        for i, sock in enumerate(socks):
            assert udp_ask(sock, lb.addr(), b"hello%d" % i)[0] == b"hello%d" % i
        flows = {f["client"][1]: f["backend_id"] for f in lb.flows()}
        id_a = lb.backend_id("a")
        doomed = [s for s in socks if flows[s.getsockname()[1]] == id_a]
        assert doomed and len(doomed) < len(socks)
        created = lb.svc_stats()["flows_created"]

        assert lb.dp.close_backend_sessions(id_a) == len(doomed)

        assert all(f["backend_id"] != id_a for f in lb.flows())
        assert len(lb.flows()) == len(socks) - len(doomed)
        stats = lb.svc_stats()
        assert stats["flows_active"] == len(socks) - len(doomed)
        assert stats["flows_expired"] == len(doomed)
        assert lb.be_stats("a")["flows_active"] == 0
        for sock in socks:  # everyone is served; the doomed clients through new flows
            assert udp_ask(sock, lb.addr(), b"again")[0] == b"again"
        assert lb.svc_stats()["flows_created"] == created + len(doomed)
        assert len(lb.flows()) == len(socks)


def test_unknown_and_bad_backend_ids(dp_impl: type[Any]) -> None:
    dp = dp_impl(2)
    try:
        assert dp.close_backend_sessions(7) == 0  # before start: nothing to close
        dp.start()
        assert dp.close_backend_sessions(0) == 0
        assert dp.close_backend_sessions(65535) == 0
        for bad in (-1, 65536):
            with pytest.raises(ValueError):
                dp.close_backend_sessions(bad)
    finally:
        dp.stop(0)
    assert dp.close_backend_sessions(3) == 0  # stopped: nothing left either
