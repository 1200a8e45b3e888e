"""Graceful stop and listener removal: what keeps running, what is closed, what is not accepted."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from .clients import closed_within, connect, recv_exact, wait_for
from .conftest import LB, SVC, MakeLB, Servers, open_listeners
from .tables import BackendSpec, ServiceSpec

HOST = "127.0.0.1"


def echo_lb(make_lb: MakeLB, servers: Servers, workers: int = 2) -> tuple[LB, Any]:
    echo = servers.start("echo", "echo")
    return make_lb([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port),))],
                   workers=workers), echo


def stop_in_background(lb: LB, timeout: float) -> tuple[threading.Thread, list[float]]:
    took: list[float] = []

    def run() -> None:
        start = time.monotonic()
        lb.stop(timeout)
        took.append(time.monotonic() - start)

    thread = threading.Thread(target=run, name="stopper", daemon=True)
    thread.start()
    return thread, took


def test_stop_lets_open_sessions_finish(make_lb: MakeLB, servers: Servers) -> None:
    lb, echo = echo_lb(make_lb, servers)
    with connect(lb.addr()) as client:
        client.sendall(b"before")
        assert recv_exact(client, 6) == b"before"
        stopper, took = stop_in_background(lb, timeout=5.0)
        time.sleep(0.2)  # let stop begin
        assert stopper.is_alive()  # waiting for our session
        client.sendall(b"during the drain")
        assert recv_exact(client, 16) == b"during the drain"
    stopper.join(5)
    assert not stopper.is_alive()
    assert took[0] < 2.0, took  # returned when the last session ended, not at the deadline
    assert wait_for(lambda: len(echo.ended()) == 1, 5)
    assert echo.ended()[0].end == "eof"


def test_stop_deadline_closes_what_is_left(make_lb: MakeLB, servers: Servers) -> None:
    lb, echo = echo_lb(make_lb, servers)
    with connect(lb.addr()) as client:
        client.sendall(b"hi")
        assert recv_exact(client, 2) == b"hi"
        start = time.monotonic()
        lb.stop(0.5)
        took = time.monotonic() - start
        assert 0.4 <= took < 2.0, took
        assert closed_within(client, 1.0) in ("eof", "reset")
    assert wait_for(lambda: len(echo.ended()) == 1, 5)
    lb.stop(0.5)  # idempotent: returns at once
    assert lb.dp.sessions() == []


def test_no_new_connections_once_stop_starts(make_lb: MakeLB, servers: Servers) -> None:
    lb, echo = echo_lb(make_lb, servers)
    with connect(lb.addr()) as held:
        held.sendall(b"hold")
        assert recv_exact(held, 4) == b"hold"
        before = lb.svc_stats()["conns_total"]
        stopper, _ = stop_in_background(lb, timeout=5.0)
        time.sleep(0.2)  # let stop begin
        # the kernel may still complete the handshake (the caller's socket listens on), but
        # nobody accepts it: nothing is relayed and nothing is counted
        with connect(lb.addr()) as late:
            late.sendall(b"anyone?")
            assert closed_within(late, 0.5) == "open"
        assert len(echo.records()) == 1
        assert lb.svc_stats()["conns_total"] == before
    stopper.join(5)
    assert not stopper.is_alive()


def test_remove_listener_stops_accepting_and_add_resumes(make_lb: MakeLB,
                                                         servers: Servers) -> None:
    lb, echo = echo_lb(make_lb, servers, workers=1)
    (sock,) = lb.listeners[SVC]
    lb.dp.remove_listener(sock.fileno())
    with connect(lb.addr()) as waiting:
        waiting.sendall(b"queued")
        assert closed_within(waiting, 0.3) == "open"  # sits in the accept queue
        assert echo.records() == []
        lb.dp.add_listener(SVC, sock.fileno(), 0)  # polled again: the queued one is accepted
        assert recv_exact(waiting, 6) == b"queued"
    with pytest.raises(ValueError):
        lb.dp.remove_listener(12345)  # not a listener


def test_listener_api_misuse_is_refused(dp_impl: type[Any]) -> None:
    with pytest.raises(ValueError):
        dp_impl(0)
    dp = dp_impl(2)
    socks = open_listeners(HOST, 1)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    idle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # bound, never listening
    try:
        udp.bind((HOST, 0))
        idle.bind((HOST, 0))
        dp.start()
        with pytest.raises(RuntimeError):
            dp.start()
        fd = socks[0].fileno()
        with pytest.raises(ValueError):
            dp.add_listener(SVC, fd, 2)  # worker out of range
        with pytest.raises(ValueError):
            dp.add_listener(1024, fd, 0)  # service id out of range
        with pytest.raises(ValueError):
            dp.add_listener(SVC, udp.fileno(), 0)
        with pytest.raises(ValueError):
            dp.add_listener(SVC, idle.fileno(), 0)
        blocking = open_listeners(HOST, 1)
        socks.extend(blocking)
        blocking[0].setblocking(True)
        with pytest.raises(ValueError, match="blocking"):
            dp.add_listener(SVC, blocking[0].fileno(), 0)  # would stall a worker in accept()
        dp.add_listener(SVC, fd, 0)
        with pytest.raises(ValueError):
            dp.add_listener(SVC, fd, 1)  # already added
        dp.remove_listener(fd)
        with pytest.raises(ValueError):
            dp.remove_listener(fd)  # not a listener any more
    finally:
        dp.stop(0)
        for sock in (*socks, udp, idle):
            sock.close()
    with pytest.raises(RuntimeError):
        dp.start()  # stopped for good


def test_lifecycle_without_traffic(dp_impl: type[Any]) -> None:
    idle = dp_impl(1)
    assert idle.generation == 0
    idle.stop(0)  # never started
    idle.stop(0)
    dp = dp_impl(3)
    assert dp.workers == 3
    dp.start()
    assert dp.sessions() == []
    assert dp.stats()["generation"] == 0
    dp.stop(1.0)
    dp.stop(1.0)
