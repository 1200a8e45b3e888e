"""Connect failures: refused and timed-out backends are retried elsewhere; none left means RST."""

from __future__ import annotations

import socket
import time

from .clients import connect, fate, read_to_end, recv_exact, recv_line, reset_close, wait_for
from .conftest import SVC, MakeLB, Servers
from .tables import BackendSpec, ServiceSpec

HOST = "127.0.0.1"


def test_refused_backend_is_retried_on_another(make_lb: MakeLB, servers: Servers) -> None:
    dead = servers.refusing()
    alive = servers.start("alive", "name")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("dead", HOST, dead.port),
                                    BackendSpec("alive", HOST, alive.port)), retries=1)])
    for _ in range(4):  # round robin: at least two of these try "dead" first
        with connect(lb.addr()) as client:
            assert recv_line(client) == "alive"
    assert wait_for(lambda: lb.svc_stats().get("conns_active") == 0, 5)
    assert lb.be_stats("dead")["connect_failures"] >= 2
    assert lb.be_stats("dead").get("conns_total", 0) == 0
    alive_stats = lb.be_stats("alive")
    assert (alive_stats["conns_total"], alive_stats["connect_failures"]) == (4, 0)
    svc = lb.svc_stats()
    assert (svc["conns_total"], svc["no_backend"]) == (4, 0)


def test_connect_timeout_then_retry_succeeds(make_lb: MakeLB, servers: Servers) -> None:
    hole = servers.black_hole()
    alive = servers.start("alive", "name")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("hole", HOST, hole.port),
                                    BackendSpec("alive", HOST, alive.port)),
                              connect_timeout_ms=300, retries=1)])
    took = []
    for _ in range(2):  # round robin: one of the two tries the black hole first
        start = time.monotonic()
        with connect(lb.addr()) as client:
            assert recv_line(client) == "alive"
        took.append(time.monotonic() - start)
    assert lb.be_stats("hole")["connect_failures"] >= 1
    assert max(took) >= 0.25, took  # waited for the connect timeout ...
    assert max(took) < 2.0, took  # ... and not much longer
    assert lb.be_stats("alive")["conns_total"] == 2


def test_all_backends_down_client_reset_promptly(make_lb: MakeLB, servers: Servers) -> None:
    dead = [servers.refusing() for _ in range(3)]
    lb = make_lb([ServiceSpec(SVC, tuple(BackendSpec(f"dead{i}", HOST, d.port)
                                         for i, d in enumerate(dead)), retries=5)])
    start = time.monotonic()
    assert fate(lb.addr(), 1.0) == "reset"  # RST (SO_LINGER 0), not a FIN
    assert time.monotonic() - start < 1.0
    assert wait_for(lambda: lb.svc_stats().get("no_backend") == 1, 2)
    for i in range(3):  # every backend tried once, none twice
        assert lb.be_stats(f"dead{i}")["connect_failures"] == 1
    # no_backend is counted just before the session is closed: a snapshot can fall in between
    assert wait_for(lambda: lb.svc_stats()["conns_active"] == 0, 2)


def test_retries_are_bounded(make_lb: MakeLB, servers: Servers) -> None:
    dead = [servers.refusing() for _ in range(3)]
    lb = make_lb([ServiceSpec(SVC, tuple(BackendSpec(f"dead{i}", HOST, d.port)
                                         for i, d in enumerate(dead)), retries=1)])
    assert fate(lb.addr(), 1.0) == "reset"
    assert wait_for(lambda: lb.svc_stats().get("no_backend") == 1, 2)
    failures = sum(lb.be_stats(f"dead{i}").get("connect_failures", 0) for i in range(3))
    assert failures == 2  # the first attempt and one retry


def test_no_eligible_backend_is_no_backend(make_lb: MakeLB, servers: Servers) -> None:
    """Every backend has weight 0 (down): nothing is even tried."""
    alive = servers.start("alive", "echo")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("alive", HOST, alive.port, weight=0),))])
    assert fate(lb.addr(), 1.0) == "reset"
    assert wait_for(lambda: lb.svc_stats().get("no_backend") == 1, 2)
    assert alive.records() == []
    assert lb.svc_stats().get("rejected", 0) == 0


def test_weight_zero_backend_gets_no_new_connections(make_lb: MakeLB, servers: Servers) -> None:
    up = servers.start("up", "name")
    down = servers.start("down", "name")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("up", HOST, up.port),
                                    BackendSpec("down", HOST, down.port, weight=0)))])
    for _ in range(4):
        with connect(lb.addr()) as client:
            assert recv_line(client) == "up"
    assert down.records() == []
    with connect(lb.addr()) as client:  # still relays both ways
        assert recv_exact(client, 3) == b"up\n"


def test_client_reset_while_connecting_frees_the_session(make_lb: MakeLB,
                                                         servers: Servers) -> None:
    hole = servers.black_hole()
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("hole", HOST, hole.port),),
                              connect_timeout_ms=5000, retries=0)])
    client = connect(lb.addr())
    assert wait_for(lambda: [s["state"] for s in lb.dp.sessions()] == ["connecting"], 5)
    start = time.monotonic()
    reset_close(client)
    assert wait_for(lambda: lb.dp.sessions() == [], 2)
    assert time.monotonic() - start < 2.0  # long before the 5 s connect deadline
    assert lb.svc_stats()["conns_active"] == 0
    assert lb.be_stats("hole").get("conns_active", 0) == 0
    assert lb.svc_stats()["no_backend"] == 0


def test_client_data_and_fin_while_connecting_are_delivered(make_lb: MakeLB,
                                                            servers: Servers) -> None:
    """A request sent (and the write side shut) before the backend is up still arrives."""
    hole = servers.black_hole()
    echo = servers.start("echo", "echo")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("hole", HOST, hole.port),
                                    BackendSpec("echo", HOST, echo.port)),
                              scheduler="round_robin", connect_timeout_ms=300, retries=1)])
    for _ in range(2):  # round robin: one of the two waits on the black hole first
        with connect(lb.addr()) as client:
            client.sendall(b"early request")
            client.shutdown(socket.SHUT_WR)
            data, how = read_to_end(client, 5)
        assert (data, how) == (b"early request", "eof")
    assert lb.be_stats("hole")["connect_failures"] >= 1


def test_retry_after_a_table_swap_uses_the_new_table(make_lb: MakeLB, servers: Servers) -> None:
    """A session still connecting when a new table arrives retries from the new table, and the
    backend it already tried stays excluded (tried backends are remembered by id)."""
    hole = servers.black_hole()
    alive = servers.start("alive", "name")
    only_hole = (BackendSpec("hole", HOST, hole.port),
                 BackendSpec("alive", HOST, alive.port, weight=0))
    lb = make_lb([ServiceSpec(SVC, only_hole, connect_timeout_ms=500, retries=2)])
    with connect(lb.addr()) as client:
        assert wait_for(lambda: [s["state"] for s in lb.dp.sessions()] == ["connecting"], 5)
        both = (BackendSpec("hole", HOST, hole.port), BackendSpec("alive", HOST, alive.port))
        lb.publish([ServiceSpec(SVC, both, connect_timeout_ms=500, retries=2)])
        assert recv_line(client) == "alive"
    assert lb.be_stats("hole")["connect_failures"] == 1  # tried once, never again
