"""stats() and sessions() report what happened: bytes, states, backend ids, per service."""

from __future__ import annotations

import hashlib
import socket
import time

from . import patterns
from .clients import connect, read_to_end, recv_exact, recv_line, wait_for
from .conftest import SVC, MakeLB, Servers
from .tables import BackendSpec, ServiceSpec

HOST = "127.0.0.1"
# every service and backend has every counter; TCP moves these, UDP the others
TCP_SERVICE_KEYS = {"conns_total", "conns_active", "rejected", "no_backend", "bytes_to_backend",
                    "bytes_to_client", "accept_errors", "proxy_header_errors",
                    "proxy_header_timeouts", "proxy_direct", "queued_now", "queued_total",
                    "queue_timeouts", "queue_wait_ms"}
SERVICE_KEYS = TCP_SERVICE_KEYS | {"datagrams_in", "datagrams_out", "flows_created",
                                   "flows_expired", "flows_active", "drops_max_flows",
                                   "drops_no_backend", "drops_truncated", "drops_send",
                                   "drops_max_udp_flows"}
TCP_BACKEND_KEYS = {"conns_total", "conns_active", "connect_failures", "bytes_to_backend",
                    "bytes_to_client"}
BACKEND_KEYS = TCP_BACKEND_KEYS | {"datagrams_to_backend", "datagrams_to_client",
                                   "flows_active", "flows_total"}
SESSION_KEYS = {"service_id", "backend_id", "client", "started", "bytes_to_backend",
                "bytes_to_client", "state", "peer"}


def test_sessions_report_an_established_session(make_lb: MakeLB, servers: Servers) -> None:
    echo = servers.start("echo", "echo")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port),))])
    assert lb.dp.sessions() == []
    before = time.time()
    with connect(lb.addr()) as client:
        client.sendall(b"x" * 1000)
        assert recv_exact(client, 1000) == b"x" * 1000
        assert wait_for(lambda: [s["bytes_to_client"] for s in lb.dp.sessions()] == [1000], 5)
        (session,) = lb.dp.sessions()
        assert set(session) == SESSION_KEYS
        assert session["service_id"] == SVC
        assert session["backend_id"] == lb.backend_id("echo")
        assert tuple(session["client"]) == client.getsockname()
        assert before - 1 <= session["started"] <= time.time() + 1
        assert session["bytes_to_backend"] == 1000
        assert session["state"] == "established"
    assert wait_for(lambda: lb.dp.sessions() == [], 5)


def test_sessions_report_a_connecting_session(make_lb: MakeLB, servers: Servers) -> None:
    hole = servers.black_hole()
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("hole", HOST, hole.port),),
                              connect_timeout_ms=3000, retries=0)])
    with connect(lb.addr()) as client:
        assert wait_for(lambda: len(lb.dp.sessions()) == 1, 5)
        (session,) = lb.dp.sessions()
        assert session["state"] == "connecting"
        assert session["backend_id"] == lb.backend_id("hole")
        assert tuple(session["client"]) == client.getsockname()
        assert (session["bytes_to_backend"], session["bytes_to_client"]) == (0, 0)
        stats = lb.dp.stats()
        assert stats["services"][SVC]["conns_active"] == 1
        assert stats["backends"][lb.backend_id("hole")]["conns_active"] == 1  # assigned
        assert stats["backends"][lb.backend_id("hole")]["conns_total"] == 0  # not connected


def test_stats_count_per_service_and_backend(make_lb: MakeLB, servers: Servers) -> None:
    a, b, c = (servers.start(n, "echo") for n in ("a", "b", "c"))
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("a", HOST, a.port),
                                    BackendSpec("b", HOST, b.port))),
                  ServiceSpec(7, (BackendSpec("c", HOST, c.port),))])
    sizes = [100, 2000, 30000, 400000]
    for size in sizes:
        with connect(lb.addr(SVC)) as client:
            client.sendall(b"y" * size)
            client.shutdown(socket.SHUT_WR)
            assert recv_exact(client, size) == b"y" * size
    with connect(lb.addr(7)) as client:
        client.sendall(b"z" * 5)
        assert recv_exact(client, 5) == b"z" * 5
    assert wait_for(lambda: lb.svc_stats(SVC).get("conns_active") == 0
                    and lb.svc_stats(7).get("conns_active") == 0, 5)
    stats = lb.dp.stats()
    assert set(stats) >= {"generation", "services", "backends"}
    assert stats["generation"] == 1
    for counters in stats["services"].values():
        assert set(counters) == SERVICE_KEYS
        assert all(type(v) is int for v in counters.values())
    for counters in stats["backends"].values():
        assert set(counters) == BACKEND_KEYS
        assert all(type(v) is int for v in counters.values())
    svc = stats["services"][SVC]
    assert {k: svc[k] for k in TCP_SERVICE_KEYS} == {
        "conns_total": 4, "conns_active": 0, "rejected": 0, "no_backend": 0,
        "bytes_to_backend": sum(sizes), "bytes_to_client": sum(sizes), "accept_errors": 0,
        "proxy_header_errors": 0, "proxy_header_timeouts": 0, "proxy_direct": 0,
        "queued_now": 0, "queued_total": 0, "queue_timeouts": 0, "queue_wait_ms": 0}
    for counters in list(stats["services"].values()) + list(stats["backends"].values()):
        udp_only = set(counters) - TCP_SERVICE_KEYS - TCP_BACKEND_KEYS
        assert {counters[k] for k in udp_only} == {0}  # no datagram, no flow
    svc7 = stats["services"][7]
    assert (svc7["conns_total"], svc7["bytes_to_backend"], svc7["bytes_to_client"]) == (1, 5, 5)
    per_backend = {n: stats["backends"][lb.backend_id(n)] for n in ("a", "b", "c")}
    # round robin over a and b: each got two of the four sessions
    assert per_backend["a"]["conns_total"] == per_backend["b"]["conns_total"] == 2
    assert per_backend["a"]["bytes_to_backend"] + per_backend["b"]["bytes_to_backend"] \
        == sum(sizes)
    assert per_backend["a"]["bytes_to_client"] == per_backend["a"]["bytes_to_backend"]
    assert {k: per_backend["c"][k] for k in TCP_BACKEND_KEYS} == {
        "conns_total": 1, "conns_active": 0, "connect_failures": 0, "bytes_to_backend": 5,
        "bytes_to_client": 5}


def test_counters_survive_a_table_swap(make_lb: MakeLB, servers: Servers) -> None:
    """Counters are keyed by backend id, so a new table does not reset them."""
    name = servers.start("n", "name")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("n", HOST, name.port),))])
    for _ in range(2):
        with connect(lb.addr()) as client:
            assert recv_line(client) == "n"
    lb.publish([ServiceSpec(SVC, (BackendSpec("n", HOST, name.port, weight=3),))])
    with connect(lb.addr()) as client:
        assert recv_line(client) == "n"
    assert wait_for(lambda: lb.svc_stats().get("conns_active") == 0, 5)
    assert lb.svc_stats()["conns_total"] == 3
    assert lb.be_stats("n")["conns_total"] == 3
    assert lb.be_stats("n")["bytes_to_client"] == 3 * len(b"n\n")


def test_stats_reach_the_highest_backend_id_and_keep_it_after_it_left(
        make_lb: MakeLB, servers: Servers) -> None:
    """The C stats() reads only ids a table ever named (their high-water mark): the last id
    possible is counted, and so are ids that left the table again."""
    name = servers.start("n", "name")
    top = BackendSpec("top", HOST, name.port, backend_id=65535)
    low = BackendSpec("low", HOST, name.port, backend_id=3)
    lb = make_lb([ServiceSpec(SVC, (top,))])
    with connect(lb.addr()) as client:
        assert recv_line(client) == "n"
    lb.publish([ServiceSpec(SVC, (low,))])  # 65535 leaves the table; its counters stay
    with connect(lb.addr()) as client:
        assert recv_line(client) == "n"
    assert wait_for(lambda: lb.svc_stats().get("conns_active") == 0, 5)
    backends = lb.dp.stats()["backends"]
    assert backends[65535]["conns_total"] == 1 and backends[3]["conns_total"] == 1
    assert set(backends) == {3, 65535}


def test_sessions_report_half_closed_after_client_fin(make_lb: MakeLB, servers: Servers) -> None:
    """The client's FIN is passed on while the backend keeps sending: "half_closed"."""
    total = 32 << 20
    backend = servers.start("bulk", "stream", send_total=total, seed=12)
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("bulk", HOST, backend.port),))])
    with connect(lb.addr()) as client:
        head = recv_exact(client, 1 << 20)
        client.shutdown(socket.SHUT_WR)
        assert wait_for(lambda: [s["state"] for s in lb.dp.sessions()] == ["half_closed"], 5), \
            lb.dp.sessions()
        rest, how = read_to_end(client, 30)
    assert how == "eof"
    assert hashlib.sha256(head + rest).hexdigest() == patterns.digest(total, 12)
    assert wait_for(lambda: len(backend.ended()) == 1, 5)
    assert backend.ended()[0].end == "eof"
    assert wait_for(lambda: lb.dp.sessions() == [], 5)
