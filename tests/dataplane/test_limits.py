"""Limits: max_connections per service and per backend, and the idle timeout."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from collections.abc import Iterator

from .clients import closed_within, connect, fate, recv_exact, recv_line, wait_for
from .conftest import SVC, MakeLB, Servers
from .tables import BackendSpec, ServiceSpec

HOST = "127.0.0.1"


def test_service_max_connections_rejects_the_excess(make_lb: MakeLB, servers: Servers) -> None:
    names = servers.start("a", "name"), servers.start("b", "name")
    lb = make_lb([ServiceSpec(SVC, tuple(BackendSpec(s.name, HOST, s.port) for s in names),
                              max_connections=3)])
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(connect(lb.addr())) for _ in range(3)]
        for client in held:
            assert recv_line(client) in ("a", "b")
        start = time.monotonic()
        assert fate(lb.addr(), 1.0) == "reset"
        assert fate(lb.addr(), 1.0) == "reset"
        assert time.monotonic() - start < 1.0
        assert wait_for(lambda: lb.svc_stats().get("rejected") == 2, 2)
        for client in held:  # the held sessions are untouched
            client.sendall(b"x")
        held.pop().close()
        assert wait_for(lambda: lb.svc_stats().get("conns_active") == 2, 5)
        with connect(lb.addr()) as again:  # room again
            assert recv_line(again) in ("a", "b")
    stats = lb.svc_stats()
    assert stats["rejected"] == 2
    assert stats["no_backend"] == 0
    assert stats["conns_total"] == 4  # rejected connections are not admitted
    assert sum(len(s.records()) for s in names) == 4


def test_backend_max_connections(make_lb: MakeLB, servers: Servers) -> None:
    """Full backends are skipped; when every backend is full the client is rejected at once."""
    a, b = servers.start("a", "name"), servers.start("b", "name")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("a", HOST, a.port, max_connections=1),
                                    BackendSpec("b", HOST, b.port, max_connections=2)))])
    with contextlib.ExitStack() as stack:
        got = []
        for _ in range(3):
            client = stack.enter_context(connect(lb.addr()))
            got.append(recv_line(client))
        assert sorted(got) == ["a", "b", "b"]
        assert fate(lb.addr(), 1.0) == "reset"
        assert wait_for(lambda: lb.svc_stats().get("rejected") == 1, 2)
        assert lb.svc_stats().get("no_backend", 0) == 0
        assert (len(a.records()), len(b.records())) == (1, 2)


def test_idle_timeout_closes_a_silent_session(make_lb: MakeLB, servers: Servers) -> None:
    echo = servers.start("echo", "echo")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port),),
                              idle_timeout_ms=400)])
    with connect(lb.addr()) as busy, connect(lb.addr()) as silent:
        silent.sendall(b"hi")
        assert recv_exact(silent, 2) == b"hi"
        start = time.monotonic()
        for _ in range(8):  # busy talks every 0.1 s for 0.8 s: twice the idle timeout
            busy.sendall(b"tick")
            assert recv_exact(busy, 4) == b"tick"
            time.sleep(0.1)
        # silent was idle for 0.8 s: it must be gone, busy must not
        assert closed_within(silent, 1.0) in ("eof", "reset")
        assert time.monotonic() - start >= 0.35
        busy.sendall(b"tock")
        assert recv_exact(busy, 4) == b"tock"
    assert wait_for(lambda: len(echo.ended()) == 2, 5)


def test_idle_timeout_fires_in_time(make_lb: MakeLB, servers: Servers) -> None:
    echo = servers.start("echo", "echo")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port),),
                              idle_timeout_ms=300)])
    with connect(lb.addr()) as client:
        client.sendall(b"hi")
        assert recv_exact(client, 2) == b"hi"
        start = time.monotonic()
        how = closed_within(client, 3.0)
        took = time.monotonic() - start
    assert how in ("eof", "reset")
    assert 0.2 <= took < 1.5, took
    assert wait_for(lambda: lb.svc_stats().get("conns_active") == 0, 2)


@contextlib.contextmanager
def no_free_fds() -> Iterator[None]:
    """Lower RLIMIT_NOFILE so that this process cannot open one more fd, then restore it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    try:
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        while True:  # fill every hole below the highest fd: new fds take the lowest number
            fd = os.open(os.devnull, os.O_RDONLY)
            fillers.append(fd)
            if fd > highest:
                break
        os.close(fillers.pop())
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd, hard))
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fillers:
            os.close(fd)


def test_fd_exhaustion_pauses_accepting_without_spinning(make_lb: MakeLB,
                                                         servers: Servers) -> None:
    echo = servers.start("echo", "echo")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port),))], workers=1)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # fd made before the limit drops
    with client:
        client.settimeout(5)
        with no_free_fds():
            client.connect(lb.addr())  # accepted by the kernel; accept4() gets EMFILE
            cpu = time.process_time()
            time.sleep(0.5)
            spent = time.process_time() - cpu
            errors = lb.svc_stats().get("accept_errors", 0)
        assert spent < 0.25, f"{spent:.2f} s of CPU in 0.5 s: the data plane spins on EMFILE"
        assert 1 <= errors <= 50, errors  # counted, and not retried in a tight loop
        client.sendall(b"late")  # fds are back: the listener resumes and serves us
        assert recv_exact(client, 4) == b"late"
