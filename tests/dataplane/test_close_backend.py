"""close_backend_sessions(): the sessions and flows of a backend (or of several, in one call) end
at once, the others stay."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
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


def pass_counter(dp: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """How many close-by-backend passes the workers of dp have made so far: the C module's
    internals counter, the reference's calls of Worker.close_backends."""
    internals = getattr(dp, "_internals", None)
    if internals is not None:
        return lambda: int(internals()["close_passes"])
    from l4lb.refdp.worker import Worker

    calls = [0]
    original = Worker.close_backends

    def counting(self: Worker, *args: Any, **kwargs: Any) -> dict[int, int]:
        calls[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Worker, "close_backends", counting)
    return lambda: calls[0]


def test_several_backends_in_one_call(make_lb: MakeLB, servers: Servers,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """One call, one pass per worker: exactly the sessions and flows of the ids named end,
    counted per backend; the others keep relaying."""
    tcp = [servers.start(name, "echo") for name in "abcd"]
    u1, u2 = servers.udp("u1", "echo"), servers.udp("u2", "echo", index=2)
    lb = make_lb([ServiceSpec(SVC, tuple(BackendSpec(name, HOST, s.port)
                                         for name, s in zip("abcd", tcp, strict=True))),
                  ServiceSpec(2, (BackendSpec("u1", HOST, u1.port), BackendSpec("u2", HOST,
                                                                                u2.port)),
                              protocol="udp", idle_timeout_ms=30_000)])
    passes = pass_counter(lb.dp, monkeypatch)
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(connect(lb.addr())) for _ in range(12)]
        for i, client in enumerate(clients):
            client.sendall(b"ping%02d" % i)
            assert recv_exact(client, 6) == b"ping%02d" % i
        socks = [stack.enter_context(udp_socket(HOST)) for _ in range(6)]
        for i, sock in enumerate(socks):
            assert udp_ask(sock, lb.addr(2), b"hello%d" % i)[0] == b"hello%d" % i
        owner = {client: backend_of(lb, client) for client in clients}
        flows = {f["client"][1]: f["backend_id"] for f in lb.flows()}
        id_a, id_c, id_u1 = lb.backend_id("a"), lb.backend_id("c"), lb.backend_id("u1")
        doomed = [c for c in clients if owner[c] in (id_a, id_c)]
        kept = [c for c in clients if owner[c] not in (id_a, id_c)]
        gone = [s for s in socks if flows[s.getsockname()[1]] == id_u1]
        assert doomed and kept and gone and len(gone) < len(socks)
        expected = {id_a: sum(owner[c] == id_a for c in clients),
                    id_c: sum(owner[c] == id_c for c in clients), id_u1: len(gone)}
        before = passes()

        got = lb.dp.close_backend_sessions([id_a, id_c, id_u1, id_a])  # a duplicate, too

        assert got == expected
        assert passes() - before == lb.workers  # one command per worker for all the ids
        for client in doomed:
            assert closed_within(client, 2.0) == "reset"
        for client in kept:
            client.sendall(b"still")
            assert recv_exact(client, 5) == b"still"
        for name in ("a", "c", "u1"):
            stats = lb.be_stats(name)
            assert stats.get("conns_active", 0) == stats.get("flows_active", 0) == 0, name
        for name in ("b", "d"):
            assert lb.be_stats(name)["conns_active"] == sum(
                owner[c] == lb.backend_id(name) for c in clients)
        assert sorted({s["backend_id"] for s in lb.dp.sessions()}) == sorted(
            {owner[c] for c in kept})
        assert {f["backend_id"] for f in lb.flows()} == {lb.backend_id("u2")}
        assert len(lb.flows()) == len(socks) - len(gone)
        assert lb.svc_stats(2)["flows_expired"] == len(gone)
        # nothing left of them: every id still answers, with 0
        assert lb.dp.close_backend_sessions((id_a, id_c, id_u1)) == dict.fromkeys(
            (id_a, id_c, id_u1), 0)
    assert wait_for(lambda: lb.svc_stats()["conns_active"] == 0, 5)


def test_empty_duplicate_and_bad_id_sets(dp_impl: type[Any],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    dp = dp_impl(2)
    passes = pass_counter(dp, monkeypatch)
    try:
        assert dp.close_backend_sessions([]) == {}  # before start: nothing to close
        assert dp.close_backend_sessions([3, 3]) == {3: 0}
        dp.start()
        before = passes()
        assert dp.close_backend_sessions([]) == {}
        assert dp.close_backend_sessions(iter(())) == {}
        assert passes() == before  # an empty set asks nothing of the workers
        assert dp.close_backend_sessions(b for b in (0, 65535, 0)) == {0: 0, 65535: 0}
        assert passes() == before + dp.workers
        everything = dp.close_backend_sessions(range(65536))  # the whole id space at once
        assert len(everything) == 65536 and not any(everything.values())
        single = dp.close_backend_sessions(5)  # the int form still answers an int
        assert single == 0 and isinstance(single, int)
        for bad in ([-1], [65536], [0, 70000], (7, -3)):
            with pytest.raises(ValueError, match=r"backend_id -?\d+ out of range 0\.\.65535"):
                dp.close_backend_sessions(bad)
        with pytest.raises(ValueError, match="65537 ids, at most 65536 in one call"):
            dp.close_backend_sessions([0] * 65537)
        for wrong in (["1"], [1.5], [True], "12", b"\x01", 1.5, None):
            with pytest.raises(TypeError, match="must be an int"):
                dp.close_backend_sessions(wrong)
        with pytest.raises(ValueError, match="reason"):
            dp.close_backend_sessions([1, 2], reason="moved")
    finally:
        dp.stop(0)
    assert dp.close_backend_sessions([1, 2]) == {1: 0, 2: 0}  # stopped: nothing left either
