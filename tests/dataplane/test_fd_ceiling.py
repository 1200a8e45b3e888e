"""The descriptor ceiling (set_fd_ceiling): descriptors from the ceiling up are the control
plane's. With a ceiling of 1 every new descriptor is "up there": the client in hand is served,
the rest wait in the backlog, a new UDP flow is dropped and counted, and everything moves again
once the ceiling is lifted. A listener handed over while every descriptor below the ceiling is
taken puts none up there. Both data planes."""

from __future__ import annotations

import contextlib
import os
import socket

import pytest

from .clients import connect, recv_line, udp_ask, udp_silent, udp_socket, wait_for
from .conftest import SVC, MakeLB, Servers, open_listeners, open_udp_listeners
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


def fill_below(ceiling: int) -> list[int]:
    """Take every free descriptor below `ceiling` (/dev/null), so that the next one the process
    opens is numbered at or above it: the process as a flood leaves it."""
    taken: list[int] = []
    try:
        while True:
            fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            if fd >= ceiling:
                os.close(fd)
                return taken
            taken.append(fd)
    except BaseException:
        for fd in taken:
            os.close(fd)
        raise


def copies_of(sock: socket.socket, at_least: int) -> list[int]:
    """This process's descriptors numbered `at_least` and up that refer to sock's socket."""
    inode = os.fstat(sock.fileno()).st_ino
    found = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            if int(name) >= at_least and os.stat(f"/proc/self/fd/{name}").st_ino == inode:
                found.append(int(name))
    return found


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_a_listener_added_at_the_ceiling_takes_no_descriptor_up_there(
        make_lb: MakeLB, servers: Servers, protocol: str) -> None:
    """A reload during a flood: every descriptor below the ceiling is taken when a new listener
    is handed over. The data plane polls the caller's fd and puts nothing of it in the control
    plane's part (the reference data plane did put a dup of it there), and the listener serves
    once the flood is over. Both data planes."""
    if protocol == "udp":
        backend = servers.udp("echo", "echo")
        spec = ServiceSpec(SVC, (BackendSpec("echo", HOST, backend.port),), protocol="udp",
                           idle_timeout_ms=30_000)
        new = open_udp_listeners(HOST, 1)[0]
    else:
        backend = servers.start("a", "name")
        spec = ServiceSpec(SVC, (BackendSpec("a", HOST, backend.port),))
        new = open_listeners(HOST, 1)[0]
    lb = make_lb([spec], workers=1)
    added = False
    try:
        probe = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        os.close(probe)
        ceiling = probe + 16  # a little room below, which the flood takes
        lb.dp.set_fd_ceiling(ceiling)
        flood = fill_below(ceiling)
        try:
            lb.dp.add_listener(SVC, new.fileno(), 0)
            added = True
            assert copies_of(new, ceiling) == []
        finally:
            for fd in flood:
                os.close(fd)
        if protocol == "udp":
            with udp_socket(HOST) as client:
                assert udp_ask(client, new.getsockname(), b"x")[0] == b"x"
        else:
            with connect(new.getsockname()) as client:
                assert recv_line(client) == "a"
        lb.dp.remove_listener(new.fileno())
        added = False
        assert new.getsockname()[1] > 0  # still open: the caller's to close
    finally:
        if added:
            lb.dp.remove_listener(new.fileno())
        new.close()
