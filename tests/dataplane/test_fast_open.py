"""TCP Fast Open towards the backends (set_fast_open), against both data planes.

Each test that moves traffic runs in a private network namespace of its own thread
(fast_open_env.private_netns: net.ipv4.tcp_fastopen = 3, lo with MTU 1500), so the TFO cookie
cache starts empty and the kernel's TcpExt counters there count only this test's connections:
TCPFastOpenActive (SYNs whose data the backend acknowledged), TCPFastOpenPassive (connections
the backend accepted with SYN data) and TCPFastOpenCookieReqd (SYNs that asked the backend for
a cookie). They are the kernel's word, not the data plane's. The LB's listeners get
TCP_DEFER_ACCEPT where a test needs the client's first bytes to be waiting when the relay
accepts (otherwise that is a race with the client's first write); the server-speaks-first test
does not set it. Every backend keeps each byte it received per connection, so "exactly once" is
checked byte for byte. The C data plane's own fast-open counters (_internals) are checked too.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from . import clients
from .clients import connect, read_to_end, recv_exact, wait_for
from .conftest import LB, SVC, MakeLB, Servers, load_impl
from .fast_open_env import GREETING, FoBackend, private_netns, tcp_ext
from .tables import BackendSpec, ServiceSpec

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a network namespace)")


@pytest.fixture
def backends(fo_ns: None) -> Iterator[list[FoBackend]]:
    """FoBackends a test starts (append them); all closed afterwards, inside fo_ns."""
    owned: list[FoBackend] = []
    yield owned
    for backend in owned:
        backend.close()


def start_lb(make_lb: MakeLB, targets: list[tuple[str, int]], fast_open: bool = True,
             defer: bool = True, workers: int = 1, host: str = "127.0.0.1") -> LB:
    specs = [BackendSpec(f"b{i}", h, port) for i, (h, port) in enumerate(targets)]
    lb = make_lb([ServiceSpec(SVC, tuple(specs), retries=2)], workers=workers, host=host)
    if fast_open:
        lb.dp.set_fast_open(SVC, True)
    if defer:  # accept only once the client's first bytes are there
        for sock in lb.listeners[SVC]:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
    return lb


def echo_trip(lb: LB, payload: bytes) -> bytes:
    """Send payload (then FIN) through lb and read the echo up to the LB's close."""
    return clients.echo_trip(lb.addr(), payload)[0]


def fo_counts(lb: LB) -> dict[str, int] | None:
    """The C data plane's fast-open counters; None for the reference (it keeps none)."""
    internals = getattr(lb.dp, "_internals", None)
    if internals is None:
        return None
    got: dict[str, Any] = internals()
    return {k: int(got[f"fast_open_{k}"]) for k in ("attempts", "syn_data", "syn_bytes")}


def payloads(n: int, size: int, tag: str) -> list[bytes]:
    """n distinct payloads of `size` bytes."""
    return [(f"{tag}-{i:04d}:".encode() * size)[:size] for i in range(n)]


def wait_received(backend: FoBackend, n: int) -> list[bytes]:
    assert wait_for(lambda: len(backend.received()) >= n, 5.0), backend.received()
    return backend.received()


def test_set_fast_open_api(dp_impl: type[Any]) -> None:
    dp = dp_impl(1)
    try:
        assert dp.fast_open(SVC) is False
        dp.set_fast_open(SVC, True)
        assert dp.fast_open(SVC) is True
        assert dp.fast_open(SVC + 1) is False
        dp.set_fast_open(SVC, False)
        assert dp.fast_open(SVC) is False
        dp.set_fast_open(1023, True)
        assert dp.fast_open(1023) is True
        for bad in (-1, 1024):
            with pytest.raises(ValueError):
                dp.set_fast_open(bad, True)
            with pytest.raises(ValueError):
                dp.fast_open(bad)
        with pytest.raises(TypeError):
            dp.set_fast_open(SVC, 1)
    finally:
        dp.stop(0.0)


@root_only
def test_syn_carries_the_first_bytes_once(fo_make_lb: MakeLB,
                                          backends: list[FoBackend]) -> None:
    backend = FoBackend("echo")
    backends.append(backend)
    lb = start_lb(fo_make_lb, [backend.addr])
    warm = b"first connection: fetches the cookie"
    assert echo_trip(lb, warm) == warm
    before = tcp_ext()
    sent = payloads(5, 100, "small")
    for p in sent:
        assert echo_trip(lb, p) == p
    got = wait_received(backend, 6)
    assert sorted(got) == sorted([warm, *sent])  # each request exactly once, nothing lost
    after = tcp_ext()
    assert after["TCPFastOpenActive"] - before["TCPFastOpenActive"] == 5
    assert after["TCPFastOpenPassive"] - before["TCPFastOpenPassive"] == 5
    assert lb.svc_stats()["bytes_to_backend"] == len(warm) + 500
    counts = fo_counts(lb)
    if counts is not None:
        assert counts == {"attempts": 6, "syn_data": 5, "syn_bytes": 500}


@root_only
def test_ipv6_backend(fo_make_lb: MakeLB, backends: list[FoBackend]) -> None:
    backend = FoBackend("echo", host="::1")
    backends.append(backend)
    lb = start_lb(fo_make_lb, [backend.addr], host="::1", workers=2)
    sent = [b"warm", *payloads(4, 200, "six")]
    for p in sent:
        assert echo_trip(lb, p) == p
    assert sorted(wait_received(backend, 5)) == sorted(sent)
    # two workers share the kernel's cookie cache: only the first connection fetched one
    assert tcp_ext()["TCPFastOpenActive"] == 4


@pytest.mark.parametrize("size", [70_000, 300_000])
@root_only
def test_large_first_write(fo_make_lb: MakeLB, backends: list[FoBackend], size: int) -> None:
    backend = FoBackend("echo")
    backends.append(backend)
    lb = start_lb(fo_make_lb, [backend.addr])
    assert echo_trip(lb, b"warm") == b"warm"
    before = tcp_ext()
    big = os.urandom(size)
    assert echo_trip(lb, big) == big
    got = wait_received(backend, 2)
    assert sorted(got) == sorted([b"warm", big])
    assert tcp_ext()["TCPFastOpenActive"] - before["TCPFastOpenActive"] == 1
    counts = fo_counts(lb)
    if counts is not None:  # the SYN took part of it (MTU 1500), the relay the rest
        assert counts["syn_data"] == 1
        assert 0 < counts["syn_bytes"] < 2000


@root_only
def test_refused_backend_is_retried_with_the_data(fo_make_lb: MakeLB, servers: Servers,
                                                  backends: list[FoBackend]) -> None:
    backend = FoBackend("echo")
    backends.append(backend)
    refusing = servers.refusing()
    lb = start_lb(fo_make_lb, [(refusing.host, refusing.port), backend.addr])
    warm = payloads(2, 50, "warm")
    for p in warm:  # the cookie is cached per address: it serves both ports
        assert echo_trip(lb, p) == p
    before_fail = lb.be_stats("b0").get("connect_failures", 0)
    before = fo_counts(lb)
    sent = payloads(4, 100, "retry")
    for p in sent:
        assert echo_trip(lb, p) == p
    got = wait_received(backend, 6)
    assert sorted(got) == sorted([*warm, *sent])
    refused = lb.be_stats("b0")["connect_failures"] - before_fail
    assert refused >= 1  # round robin sent some first attempts to the refusing port
    after = fo_counts(lb)
    if after is not None and before is not None:
        # the refused attempts carried the data in their SYN too, and were retried with it
        assert after["syn_data"] - before["syn_data"] == 4 + refused
    assert lb.svc_stats()["no_backend"] == 0


@root_only
def test_backend_without_fast_open(fo_make_lb: MakeLB, backends: list[FoBackend]) -> None:
    backend = FoBackend("echo", fastopen=False)
    backends.append(backend)
    lb = start_lb(fo_make_lb, [backend.addr])
    before = tcp_ext()
    sent = payloads(4, 300, "plain")
    for p in sent:
        assert echo_trip(lb, p) == p
    assert sorted(wait_received(backend, 4)) == sorted(sent)
    after = tcp_ext()
    assert after["TCPFastOpenActive"] == before["TCPFastOpenActive"]
    counts = fo_counts(lb)
    if counts is not None:  # asked every time, never got a cookie
        assert counts == {"attempts": 4, "syn_data": 0, "syn_bytes": 0}


@root_only
def test_server_speaks_first(fo_make_lb: MakeLB, backends: list[FoBackend]) -> None:
    backend = FoBackend("greet")
    backends.append(backend)
    lb = start_lb(fo_make_lb, [backend.addr], defer=False)
    for i in range(3):  # the first one would also have fetched a cookie, had it sent data
        with connect(lb.addr()) as sock:
            assert recv_exact(sock, len(GREETING)) == GREETING  # without sending anything
            sock.sendall(b"HELO %d\r\n" % i)
            assert recv_exact(sock, 8) == b"HELO %d\r\n" % i
    counts = fo_counts(lb)
    if counts is not None:
        assert counts["attempts"] == 0


@root_only
def test_half_close(fo_make_lb: MakeLB, backends: list[FoBackend]) -> None:
    backend = FoBackend("eof_reply")
    backends.append(backend)
    lb = start_lb(fo_make_lb, [backend.addr])
    for payload in (b"warm-up", b"x" * 1000, b"y" * 5000):
        sock = connect(lb.addr())
        with sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # the backend answers only after our FIN
            data, how = read_to_end(sock, 5.0)
        assert (data, how) == (b"got %d\n" % len(payload), "eof")
    assert sorted(wait_received(backend, 3)) == sorted([b"warm-up", b"x" * 1000, b"y" * 5000])
    assert tcp_ext()["TCPFastOpenActive"] == 2


@root_only
def test_off_makes_no_fast_open_attempt(fo_make_lb: MakeLB, backends: list[FoBackend]) -> None:
    backend = FoBackend("echo")
    backends.append(backend)
    lb = start_lb(fo_make_lb, [backend.addr], fast_open=False)
    assert lb.dp.fast_open(SVC) is False
    before = tcp_ext()
    sent = payloads(4, 100, "off")
    for p in sent:
        assert echo_trip(lb, p) == p
    assert sorted(wait_received(backend, 4)) == sorted(sent)
    after = tcp_ext()
    for key in ("TCPFastOpenActive", "TCPFastOpenPassive", "TCPFastOpenCookieReqd"):
        assert after[key] == before[key], key
    counts = fo_counts(lb)
    if counts is not None:
        assert counts["attempts"] == 0


@root_only
def test_kernel_without_the_client_bit(make_lb: MakeLB) -> None:
    """net.ipv4.tcp_fastopen = 2 (server only): MSG_FASTOPEN is refused, connect() instead."""
    with private_netns(2):
        backend = FoBackend("echo")
        try:
            lb = start_lb(make_lb, [backend.addr])
            sent = payloads(3, 100, "nobit")
            for p in sent:
                assert echo_trip(lb, p) == p
            assert sorted(wait_received(backend, 3)) == sorted(sent)
            assert tcp_ext()["TCPFastOpenCookieReqd"] == 0
        finally:
            backend.close()


@pytest.mark.parametrize("copy_threshold", [0, 1024])
@root_only
def test_c_relay_without_room_in_the_copy_buffer(fo_ns: None, backends: list[FoBackend],
                                                 copy_threshold: int) -> None:
    """C only: always splicing (0), or a copy buffer smaller than the SYN's data (1024 < about
    1.4 KB): the relay peeks into its own stack buffer and drops what the SYN carried with one
    recv(MSG_TRUNC) instead of skipping it in the pump's first copy read."""
    impl = load_impl("c")
    backend = FoBackend("echo")
    backends.append(backend)
    lb = LB(impl, 1, "127.0.0.1")
    try:
        lb.dp._tune(copy_threshold, 0)
        lb.dp.start()
        lb.listen(SVC)
        lb.publish([ServiceSpec(SVC, (BackendSpec("b0", *backend.addr),))])
        lb.dp.set_fast_open(SVC, True)
        for sock in lb.listeners[SVC]:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
        sent = [b"warm", *payloads(3, 3000, "tuned")]
        for p in sent:
            assert echo_trip(lb, p) == p
        assert sorted(wait_received(backend, 4)) == sorted(sent)
        counts = fo_counts(lb)
        assert counts is not None and counts["syn_data"] == 3
        assert 1024 < counts["syn_bytes"] / 3 <= 2048  # the SYN took more than the buffer
    finally:
        lb.close()
