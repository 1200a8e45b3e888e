"""PROXY protocol towards the backends (set_proxy_protocol), against both data planes.

Each backend here parses the header with its own strict parser (proxy_backend.py) and checks
the addresses against what the client socket itself says; one test also compares the wire bytes
with l4lb.proxyproto.build. The fast-open tests run in a private network namespace
(fast_open_env.private_netns) so that the kernel's TFO counters count only their connections.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from l4lb import proxyproto

from .clients import connect, read_to_end, recv_exact, wait_for
from .clients import echo_trip as trip
from .conftest import LB, SVC, MakeLB, Servers
from .fast_open_env import FoBackend, tcp_ext
from .proxy_backend import GREETING, Conn, ProxyBackend
from .tables import BackendSpec, ServiceSpec


@pytest.fixture
def pp_backends() -> Iterator[list[ProxyBackend]]:
    """ProxyBackends a test starts (append them); all closed afterwards."""
    owned: list[ProxyBackend] = []
    yield owned
    for backend in owned:
        backend.close()


def start_lb(make_lb: MakeLB, targets: list[tuple[str, int]], version: int,
             host: str = "127.0.0.1", workers: int = 1, retries: int = 2) -> LB:
    specs = [BackendSpec(f"b{i}", h, port) for i, (h, port) in enumerate(targets)]
    lb = make_lb([ServiceSpec(SVC, tuple(specs), retries=retries)], workers=workers, host=host)
    lb.dp.set_proxy_protocol(SVC, version)
    return lb


def finished(backend: ProxyBackend, n: int) -> list[Conn]:
    assert wait_for(lambda: len(backend.done()) >= n, 5.0), backend.done()
    return backend.done()


def test_set_proxy_protocol_api(dp_impl: type[Any]) -> None:
    dp = dp_impl(1)
    try:
        assert dp.proxy_protocol(SVC) == 0
        dp.set_proxy_protocol(SVC, 2)
        assert dp.proxy_protocol(SVC) == 2
        dp.set_proxy_protocol(SVC, 1)
        assert dp.proxy_protocol(SVC) == 1
        assert dp.proxy_protocol(SVC + 1) == 0
        dp.set_fast_open(SVC, True)  # another option bit of the same service survives
        dp.set_proxy_protocol(SVC, 0)
        assert dp.proxy_protocol(SVC) == 0
        assert dp.fast_open(SVC) is True
        dp.set_proxy_protocol(1023, 2)
        assert dp.proxy_protocol(1023) == 2
        for bad_id in (-1, 1024):
            with pytest.raises(ValueError):
                dp.set_proxy_protocol(bad_id, 1)
            with pytest.raises(ValueError):
                dp.proxy_protocol(bad_id)
        for bad_version in (-1, 3):
            with pytest.raises(ValueError):
                dp.set_proxy_protocol(SVC, bad_version)
        with pytest.raises(TypeError):
            dp.set_proxy_protocol(SVC, "v1")
    finally:
        dp.stop(0.0)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_header_names_the_client(make_lb: MakeLB, pp_backends: list[ProxyBackend],
                                 version: int, host: str) -> None:
    backend = ProxyBackend(version, host=host)
    pp_backends.append(backend)
    lb = start_lb(make_lb, [backend.addr], version, host=host, workers=2)
    clients = []
    for i in range(6):
        payload = f"request {i}\n".encode() * (i + 1)
        echo, me = trip(lb.addr(), payload)
        assert echo == payload  # the backend took the header off: the client never sees it
        clients.append((me, payload))
    done = finished(backend, 6)
    assert all(c.error == "" for c in done), [c.error for c in done]
    family = "TCP4" if host == "127.0.0.1" else "TCP6"
    by_src = {c.header.src: c for c in done if c.header is not None}
    for me, payload in clients:
        conn = by_src[me]
        assert conn.header == proxy_header(version, family, me, (host, lb.port()))
        assert conn.payload == payload
    # the header is the balancer's, not the client's: not in bytes_to_backend
    assert lb.svc_stats()["bytes_to_backend"] == sum(len(p) for _, p in clients)


def proxy_header(version: int, family: str, src: tuple[str, int],
                 dst: tuple[str, int]) -> Any:
    from .proxy_backend import Header
    return Header(version, "PROXY", family, src, dst)


@pytest.mark.parametrize("version", [1, 2])
def test_wildcard_dual_stack_listener(make_lb: MakeLB, pp_backends: list[ProxyBackend],
                                      version: int) -> None:
    """A [::] listener takes IPv4 clients as ::ffff:a.b.c.d: the header says TCP4 with the
    plain addresses, and the destination is the address the client reached (getsockname),
    not the wildcard."""
    backend = ProxyBackend(version)
    pp_backends.append(backend)
    lb = start_lb(make_lb, [backend.addr], version, host="::")
    port = lb.port()
    echo4, me4 = trip(("127.0.0.1", port), b"over ipv4")
    echo6, me6 = trip(("::1", port), b"over ipv6")
    assert (echo4, echo6) == (b"over ipv4", b"over ipv6")
    headers = {c.header.family: c.header for c in finished(backend, 2) if c.header is not None}
    assert headers["TCP4"] == proxy_header(version, "TCP4", me4, ("127.0.0.1", port))
    assert headers["TCP6"] == proxy_header(version, "TCP6", me6, ("::1", port))


@pytest.mark.parametrize("version", [1, 2])
def test_wire_bytes_match_the_python_builder(make_lb: MakeLB, version: int) -> None:
    """Byte for byte: what reaches a backend is proxyproto.build(...) and then the payload;
    turning the option off again sends no header to the next connection."""
    backend = FoBackend("echo", fastopen=False)
    try:
        lb = start_lb(make_lb, [backend.addr], version)
        sock = connect(lb.addr())
        me = sock.getsockname()[:2]
        header = proxyproto.build(version, me, lb.addr())
        sock.sendall(b"payload")
        # the raw backend echoes the header too: it comes back first
        assert recv_exact(sock, len(header) + 7) == header + b"payload"
        sock.close()
        lb.dp.set_proxy_protocol(SVC, 0)
        echo, _ = trip(lb.addr(), b"no header now")
        assert echo == b"no header now"
        assert wait_for(lambda: len(backend.received()) >= 2, 5.0)
        assert sorted(backend.received()) == sorted([header + b"payload", b"no header now"])
    finally:
        backend.close()


def test_retry_sends_one_header_to_the_backend_that_answers(
        make_lb: MakeLB, servers: Servers, pp_backends: list[ProxyBackend]) -> None:
    backend = ProxyBackend(2)
    pp_backends.append(backend)
    refusing = servers.refusing()
    lb = start_lb(make_lb, [(refusing.host, refusing.port), backend.addr], 2)
    mine = []
    for i in range(6):
        echo, me = trip(lb.addr(), b"retry %d" % i)
        assert echo == b"retry %d" % i
        mine.append(me)
    done = finished(backend, 6)
    assert all(c.error == "" for c in done), [c.error for c in done]
    assert sorted(c.header.src for c in done if c.header) == sorted(mine)
    assert lb.be_stats("b0").get("connect_failures", 0) >= 1  # the refused one was tried


@pytest.mark.parametrize("version", [1, 2])
def test_server_speaks_first(make_lb: MakeLB, pp_backends: list[ProxyBackend],
                             version: int) -> None:
    """The client sends nothing until it has the greeting: the header alone must reach the
    backend (which, like Postfix, greets only after reading it)."""
    backend = ProxyBackend(version, mode="greet")
    pp_backends.append(backend)
    lb = start_lb(make_lb, [backend.addr], version)
    sock = connect(lb.addr())
    try:
        assert recv_exact(sock, len(GREETING)) == GREETING
        sock.sendall(b"HELO x\r\n")
        assert recv_exact(sock, 8) == b"HELO x\r\n"
    finally:
        sock.close()
    conn = finished(backend, 1)[0]
    assert conn.error == "" and conn.header is not None and conn.header.command == "PROXY"


# --- with TCP Fast Open towards the backends ------------------------------------------------

@pytest.mark.parametrize("version", [1, 2])
def test_fast_open_syn_leads_with_the_header(fo_make_lb: MakeLB,
                                             pp_backends: list[ProxyBackend],
                                             version: int) -> None:
    backend = ProxyBackend(version, fastopen=True)
    pp_backends.append(backend)
    lb = start_lb(fo_make_lb, [backend.addr], version)
    lb.dp.set_fast_open(SVC, True)
    for sock in lb.listeners[SVC]:  # the request waits when the relay accepts
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
    assert trip(lb.addr(), b"warm: fetches the cookie")[0] == b"warm: fetches the cookie"
    before = tcp_ext()
    internals = getattr(lb.dp, "_internals", None)
    counts_before = internals() if internals else None
    sent = [b"fo %d " % i * 20 for i in range(4)]
    for payload in sent:
        assert trip(lb.addr(), payload)[0] == payload
    done = finished(backend, 5)
    assert all(c.error == "" for c in done), [c.error for c in done]
    assert sorted(c.payload for c in done[1:]) == sorted(sent)
    after = tcp_ext()
    assert after["TCPFastOpenActive"] - before["TCPFastOpenActive"] == 4  # header + data in SYNs
    if counts_before is not None:  # syn_bytes counts the client's bytes only, not the header's
        counts = internals()
        assert counts["fast_open_syn_bytes"] - counts_before["fast_open_syn_bytes"] == \
            sum(len(p) for p in sent)
        assert counts["fast_open_syn_data"] - counts_before["fast_open_syn_data"] == 4


def test_fast_open_server_speaks_first_syn_carries_the_header(
        fo_make_lb: MakeLB, pp_backends: list[ProxyBackend]) -> None:
    """Nothing from the client waits, yet the SYN carries the header (after the cookie)."""
    backend = ProxyBackend(2, mode="greet", fastopen=True)
    pp_backends.append(backend)
    lb = start_lb(fo_make_lb, [backend.addr], 2)
    lb.dp.set_fast_open(SVC, True)
    for i in range(3):
        if i == 1:
            before = tcp_ext()
        sock = connect(lb.addr())
        try:
            assert recv_exact(sock, len(GREETING)) == GREETING
            sock.sendall(b"QUIT\r\n")
            sock.shutdown(socket.SHUT_WR)
            data, how = read_to_end(sock, 5.0)
            assert (data, how) == (b"QUIT\r\n", "eof")
        finally:
            sock.close()
    assert tcp_ext()["TCPFastOpenActive"] - before["TCPFastOpenActive"] == 2
    internals = getattr(lb.dp, "_internals", None)
    if internals is not None:  # header-only SYNs are attempts, not SYNs with client data
        counts = internals()
        assert counts["fast_open_attempts"] == 3
        assert (counts["fast_open_syn_data"], counts["fast_open_syn_bytes"]) == (0, 0)
    done = finished(backend, 3)
    assert all(c.error == "" and c.payload == b"QUIT\r\n" for c in done), done
