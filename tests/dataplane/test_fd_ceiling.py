"""The descriptor ceiling (set_fd_ceiling): descriptors from the ceiling up are the control
plane's. With a ceiling of 1 every new descriptor is "up there": the client in hand is served,
the rest wait in the backlog, a new UDP flow is dropped and counted, and everything moves again
once the ceiling is lifted. Both data planes."""

from __future__ import annotations

import contextlib

import pytest

from .clients import connect, recv_line, udp_ask, udp_silent, udp_socket, wait_for
from .conftest import SVC, MakeLB, Servers
from .tables import BackendSpec, ServiceSpec

HOST = "127.0.0.1"


def test_at_the_ceiling_the_client_in_hand_is_served_and_the_rest_wait(
        make_lb: MakeLB, servers: Servers) -> None:
    name = servers.start("a", "name")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("a", HOST, name.port),))], workers=1)
    assert lb.dp.fd_ceiling() == 0
    with connect(lb.addr()) as before:  # no ceiling yet
        assert recv_line(before) == "a"
    lb.dp.set_fd_ceiling(1)
    assert lb.dp.fd_ceiling() == 1
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(connect(lb.addr()))
        assert recv_line(first) == "a"  # accepted at the ceiling: served all the same
        waiting = [stack.enter_context(connect(lb.addr())) for _ in range(3)]  # backlog
        for sock in waiting:
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(1)
        assert lb.svc_stats()["conns_total"] == 2
        lb.dp.set_fd_ceiling(0)
        for sock in waiting:
            sock.settimeout(5)
            assert recv_line(sock) == "a"
    assert wait_for(lambda: lb.svc_stats().get("conns_total") == 5, 5)
    assert lb.svc_stats()["accept_errors"] == 0
    with pytest.raises(ValueError):
        lb.dp.set_fd_ceiling(-1)
    with pytest.raises(TypeError):
        lb.dp.set_fd_ceiling(2.0)


def test_at_the_ceiling_a_new_udp_flow_is_dropped_and_counted(make_lb: MakeLB,
                                                              servers: Servers) -> None:
    echo = servers.udp("echo", "echo")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port),), protocol="udp",
                              idle_timeout_ms=30_000)], workers=1)
    with udp_socket(HOST) as old, udp_socket(HOST) as new:
        assert udp_ask(old, lb.addr(), b"1")[0] == b"1"  # a flow opened before the ceiling
        lb.dp.set_fd_ceiling(1)
        new.sendto(b"2", lb.addr())
        assert udp_silent(new, 0.3)
        assert wait_for(lambda: lb.svc_stats().get("accept_errors") == 1, 5)
        assert udp_ask(old, lb.addr(), b"3")[0] == b"3"  # open flows need no new descriptor
        lb.dp.set_fd_ceiling(0)
        assert udp_ask(new, lb.addr(), b"4")[0] == b"4"
    assert lb.svc_stats()["flows_created"] == 2
    assert lb.dp.udp_flows()[1] == 2
