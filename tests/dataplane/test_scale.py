"""Many concurrent connections, and IPv6 end to end."""

from __future__ import annotations

import contextlib
import resource
import socket
from collections.abc import Iterator

import pytest

from . import patterns
from .clients import connect, echo_many, exchange, wait_for
from .conftest import SVC, MakeLB, Servers
from .tables import BackendSpec, ServiceSpec

CONCURRENT = 2000
FDS_NEEDED = CONCURRENT * 4 + 1000  # client, two data-plane sockets and backend side, + slack


@contextlib.contextmanager
def nofile_at_least(n: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= n:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < n:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
        except (ValueError, OSError):
            pytest.fail(f"RLIMIT_NOFILE hard limit {hard} < {n} and it cannot be raised")
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_2000_concurrent_connections_all_echo(make_lb: MakeLB, servers: Servers) -> None:
    with nofile_at_least(FDS_NEEDED):
        echoes = [servers.start(f"e{i}", "echo") for i in range(2)]
        lb = make_lb([ServiceSpec(SVC, tuple(BackendSpec(e.name, "127.0.0.1", e.port)
                                             for e in echoes))])
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(connect(lb.addr(), timeout=10))
                       for _ in range(CONCURRENT)]
            assert wait_for(lambda: lb.svc_stats().get("conns_active") == CONCURRENT, 30), \
                lb.svc_stats()
            assert len(lb.dp.sessions()) == CONCURRENT
            outcome = echo_many(clients, size=2000, timeout=60)
            assert outcome.failures == []
            assert outcome.ok == CONCURRENT
        assert wait_for(lambda: lb.svc_stats().get("conns_active") == 0, 30), lb.svc_stats()
        stats = lb.svc_stats()
        assert stats["conns_total"] == CONCURRENT
        assert stats["bytes_to_backend"] == stats["bytes_to_client"] == CONCURRENT * 2000
        assert sum(len(e.records()) for e in echoes) == CONCURRENT
        assert all(len(e.records()) == CONCURRENT // 2 for e in echoes)  # round robin


def test_ipv6_end_to_end(make_lb: MakeLB, servers: Servers) -> None:
    if not socket.has_ipv6:
        pytest.fail("this suite needs IPv6 on loopback (::1)")
    backend = servers.start("six", "stream", host="::1", send_total=3 << 20, seed=9)
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("six", "::1", backend.port),))], host="::1")
    with connect(lb.addr()) as client:
        local = client.getsockname()
        assert wait_for(lambda: len(lb.dp.sessions()) == 1, 5)
        session = lb.dp.sessions()[0]
        assert tuple(session["client"]) == ("::1", local[1])
        result = exchange(client, 2 << 20, seed=8, timeout=20)
    assert (result.end, result.received) == ("eof", 3 << 20)
    assert result.sha_received == patterns.digest(3 << 20, 9)
    assert wait_for(lambda: len(backend.ended()) == 1, 5)
    record = backend.ended()[0]
    assert record.peer[0] == "::1"
    assert (record.bytes_in, record.sha_in) == (2 << 20, patterns.digest(2 << 20, 8))
