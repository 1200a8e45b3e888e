"""UDP services through both data planes: flows, replies, limits, moves and counters.

The contract is docs/forwarding-table.md, "UDP services (protocol 1)". Every test runs against
the C module and the Python reference (`dp_impl`, through make_lb). The scale tests (10,000
concurrent flows per scheduler, 100,000 short flows) are in test_udp_scale.py.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import pytest

from . import patterns
from .backends import (
    DNS_QR,
    DNS_RA,
    DNS_RD,
    UDP_OVERSIZE,
    UdpBackend,
    dns_parse_answer,
    dns_query,
)
from .clients import UDP_RECV_MAX, udp_ask, udp_silent, udp_socket, wait_for
from .conftest import LB, SVC, MakeLB, Servers
from .tables import BackendSpec, ServiceSpec

HOST = "127.0.0.1"
IDLE_LONG = 30_000  # ms: flows that must outlive the test
UDP_SERVICE_KEYS = {"datagrams_in", "datagrams_out", "flows_created", "flows_expired",
                    "flows_active", "drops_max_flows", "drops_no_backend", "drops_truncated",
                    "drops_send", "drops_max_udp_flows", "bytes_to_backend", "bytes_to_client",
                    "accept_errors"}
UDP_BACKEND_KEYS = {"datagrams_to_backend", "datagrams_to_client", "flows_active",
                    "flows_total", "bytes_to_backend", "bytes_to_client", "connect_failures"}
FLOW_KEYS = {"service_id", "backend_id", "client", "started", "last_seen",
             "datagrams_to_backend", "datagrams_to_client", "bytes_to_backend",
             "bytes_to_client"}


def udp_service(backends: Iterable[BackendSpec], **fields: object) -> ServiceSpec:
    """Service SVC over UDP; flows live IDLE_LONG unless the test says otherwise."""
    fields.setdefault("idle_timeout_ms", IDLE_LONG)
    return ServiceSpec(SVC, tuple(backends), protocol="udp", **fields)  # type: ignore[arg-type]


def spec(server: UdpBackend, **fields: object) -> BackendSpec:
    return BackendSpec(server.name, server.host, server.port, **fields)  # type: ignore[arg-type]


def name_of(answer: bytes) -> str:
    """The backend name a "name" backend put in front of its answer."""
    return answer.split(b"\n", 1)[0].decode()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def udp_clients(host: str, count: int) -> Iterator[list[socket.socket]]:
    """`count` client sockets (distinct ports), closed afterwards."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(udp_socket(host)) for _ in range(count)]


def collect(socks: list[socket.socket], want: int, timeout: float) -> dict[int, bytes]:
    """Answers (socket index -> datagram) until `want` sockets have one or timeout passes."""
    got: dict[int, bytes] = {}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for i, sock in enumerate(socks):
            sel.register(sock, selectors.EVENT_READ, i)
        while len(got) < want and time.monotonic() < deadline:
            for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                data, _ = socks[key.data].recvfrom(UDP_RECV_MAX)
                got.setdefault(key.data, data)
    return got


def flows_active(lb: LB) -> int:
    return lb.svc_stats().get("flows_active", -1)


def settled(read: Callable[[], dict[str, int]], **expected: int) -> None:
    """Assert that counters read as expected. A data plane counts a datagram just after it
    sent it, so a client may hold its answer a moment before the count moves: wait a little
    for the counters to agree before comparing."""

    def now() -> dict[str, int]:
        values = read()
        return {k: values.get(k, -1) for k in expected}

    wait_for(lambda: now() == expected, 5)
    assert now() == expected


# --- the exchange itself --------------------------------------------------------------------


def test_dns_exchange_ends_the_flow_after_one_response(make_lb: MakeLB,
                                                      servers: Servers) -> None:
    dns = servers.udp("dns", "dns", index=7)
    lb = make_lb([udp_service([spec(dns)], responses=1)])
    query = dns_query(0x1234, "www.example.test")
    second = dns_query(0xBEEF, "mail.example.test")
    with udp_socket(HOST) as client:
        answer, src = udp_ask(client, lb.addr(), query)
        assert src == lb.addr()
        qid, flags, address = dns_parse_answer(answer)
        assert qid == 0x1234  # the query id comes back
        assert flags & (DNS_QR | DNS_RD | DNS_RA) == DNS_QR | DNS_RD | DNS_RA
        assert address == bytes([192, 0, 2, 7])
        assert answer[12:len(query)] == query[12:]  # and so does the question
        # responses = 1: the flow ends with its answer, not after its 30 s idle timeout
        assert wait_for(lambda: flows_active(lb) == 0, 5)
        assert lb.flows() == []
        answer2, _ = udp_ask(client, lb.addr(), second)
        assert dns_parse_answer(answer2)[0] == 0xBEEF
        assert wait_for(lambda: flows_active(lb) == 0, 5)
    settled(lb.svc_stats, flows_created=2, flows_expired=2, datagrams_in=2, datagrams_out=2,
            bytes_to_backend=len(query) + len(second),
            bytes_to_client=len(answer) + len(answer2))
    assert dns.received() == 2


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_payloads_pass_byte_identical(make_lb: MakeLB, servers: Servers, host: str) -> None:
    """From an empty datagram to 65,507 bytes (the IPv4 maximum), both ways."""
    echo = servers.udp("echo", "echo", host=host, keep_digests=True)
    lb = make_lb([udp_service([spec(echo)])], host=host)
    sizes = (0, 1, 2, 1472, 1473, 9000, 32768, 65506, 65507)
    payloads = [patterns.stream(n, seed=n) for n in sizes]
    with udp_socket(host) as client:
        for payload in payloads:
            data, src = udp_ask(client, lb.addr(), payload)
            assert src == lb.addr()
            assert len(data) == len(payload)
            assert data == payload
    assert echo.digests() == [hashlib.sha256(p).hexdigest() for p in payloads]
    settled(lb.svc_stats, datagrams_in=len(sizes), datagrams_out=len(sizes),
            bytes_to_backend=sum(sizes), bytes_to_client=sum(sizes), flows_created=1,
            drops_truncated=0, drops_send=0)


def test_oversized_datagrams_are_counted_and_never_cut(make_lb: MakeLB,
                                                       servers: Servers) -> None:
    """IPv6 carries up to 65,527 bytes; the balancer relays up to 65,507 and drops (and counts)
    the larger ones instead of forwarding them cut, either way."""
    big = servers.udp("big", "oversize", host="::1", keep_digests=True)
    lb = make_lb([udp_service([spec(big)])], host="::1")
    with udp_socket("::1") as client:
        client.sendto(b"\x5a" * 65508, lb.addr())
        client.sendto(b"\x5a" * UDP_OVERSIZE, lb.addr())
        assert wait_for(lambda: lb.svc_stats().get("drops_truncated") == 2, 5)
        # the backend answers an oversized datagram (dropped) and then the echo (relayed)
        payload = patterns.stream(65507, 9)
        data, _ = udp_ask(client, lb.addr(), payload)
        assert data == payload
        assert wait_for(lambda: lb.svc_stats().get("drops_truncated") == 3, 5)
        assert udp_silent(client, 0.2)  # nothing cut arrived after the echo
    assert big.digests() == [hashlib.sha256(payload).hexdigest()]
    settled(lb.svc_stats, datagrams_in=3, datagrams_out=1, bytes_to_backend=65507,
            bytes_to_client=65507, drops_send=0)
    settled(lambda: lb.be_stats("big"), datagrams_to_backend=1, datagrams_to_client=1)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_gso_sending_client_gets_every_datagram_back(make_lb: MakeLB, servers: Servers,
                                                       host: str) -> None:
    """A client that batches its datagrams into GSO packets (QUIC stacks do): each packet of
    12 datagrams (11 x 120 bytes + 7) is 12 datagrams to the backend and back, in order. The C
    plane may read such a packet as one GRO buffer (relay_udp.c, "GRO buffers"); the reference
    gets it cut by the kernel. Counters are per datagram either way."""
    echo = servers.udp("echo", "echo", host=host, keep_digests=True)
    lb = make_lb([udp_service([spec(echo)])], host=host)
    sent = [patterns.stream(120 if k < 11 else 7, seed=k) for k in range(12)]
    with udp_socket(host) as client:
        for _ in range(3):
            client.sendmsg([b"".join(sent)], [(17, 103, struct.pack("=H", 120))], 0, lb.addr())
            back = [client.recvfrom(UDP_RECV_MAX) for _ in sent]
            assert [data for data, _ in back] == sent
            assert {src[:2] for _, src in back} == {lb.addr()[:2]}
    assert echo.digests() == [hashlib.sha256(p).hexdigest() for p in sent] * 3
    settled(lb.svc_stats, datagrams_in=36, datagrams_out=36, bytes_to_backend=3 * 1327,
            bytes_to_client=3 * 1327, flows_created=1, drops_truncated=0, drops_send=0)


# --- where replies come from ----------------------------------------------------------------


def test_wildcard_ipv4_listener_replies_from_the_address_written_to(make_lb: MakeLB,
                                                                    servers: Servers) -> None:
    echo = servers.udp("echo", "echo")
    lb = make_lb([udp_service([spec(echo)])], host="0.0.0.0")
    port = lb.port()
    with udp_socket(HOST) as client:
        for dest in ("127.0.0.2", "127.0.0.3", "127.0.0.1", "127.0.0.2"):
            data, src = udp_ask(client, (dest, port), dest.encode())
            assert (data, src) == (dest.encode(), (dest, port))
    # a flow is one client writing to one address: three addresses, three flows
    settled(lb.svc_stats, flows_created=3, datagrams_in=4, datagrams_out=4)
    assert len(lb.flows()) == 3


def test_wildcard_ipv6_listener_replies_from_the_address_written_to(make_lb: MakeLB,
                                                                    servers: Servers) -> None:
    """Loopback has one IPv6 address, so this proves the IPV6_PKTINFO reply path works; the
    dual-stack test below proves the address is the one written to."""
    echo = servers.udp("echo", "echo", host="::1")
    lb = make_lb([udp_service([spec(echo)])], host="::")
    with udp_socket("::1") as client:
        data, src = udp_ask(client, ("::1", lb.port()), b"six")
        assert (data, src) == (b"six", ("::1", lb.port()))


def test_dual_stack_wildcard_listener_replies_from_the_mapped_address(
        make_lb: MakeLB, servers: Servers) -> None:
    """An IPv6 wildcard listener that also takes IPv4 (IPV6_V6ONLY off) replies to an IPv4
    client from the IPv4 address it wrote to (seen as ::ffff:127.0.0.3)."""
    echo = servers.udp("echo", "echo")
    lb = make_lb([udp_service([spec(echo)])], host="::", v6only=False)
    port = lb.port()
    with udp_socket("::ffff:127.0.0.1") as client:
        for dest in ("::ffff:127.0.0.3", "::ffff:127.0.0.2"):
            data, src = udp_ask(client, (dest, port), b"mapped")
            assert (data, src) == (b"mapped", (dest, port))
    with udp_socket(HOST) as client4:
        data, src = udp_ask(client4, ("127.0.0.4", port), b"plain")
        assert (data, src) == (b"plain", ("127.0.0.4", port))


# --- flows: identity, expiry, limits, refusal -----------------------------------------------


def test_flow_key_address_only_puts_every_port_in_one_flow(make_lb: MakeLB,
                                                          servers: Servers) -> None:
    """flow_key 1: two ports of one address share a flow (one backend, one upstream socket);
    replies go to the port of the latest datagram. One worker: SO_REUSEPORT spreads a client's
    ports over workers, and each worker keeps its own flows."""
    backends = [servers.udp(f"b{i}", "name") for i in range(2)]
    lb = make_lb([udp_service([spec(b) for b in backends], flow_key="address")], workers=1)
    with udp_clients(HOST, 3) as (a, b, c):
        first = name_of(udp_ask(a, lb.addr(), b"a")[0])
        assert name_of(udp_ask(b, lb.addr(), b"b")[0]) == first  # round robin would move on
        assert name_of(udp_ask(c, lb.addr(), b"c")[0]) == first
        settled(lb.svc_stats, flows_created=1, datagrams_out=3)
        (flow,) = lb.flows()
        assert tuple(flow["client"]) == c.getsockname()
        assert flow["datagrams_to_backend"] == flow["datagrams_to_client"] == 3
    server = next(s for s in backends if s.name == first)
    assert list(server.sources().values()) == [3]  # one upstream socket


def test_idle_flows_expire_and_free_their_sockets(make_lb: MakeLB, servers: Servers) -> None:
    idle = 0.6
    echo = servers.udp("echo", "echo")
    lb = make_lb([udp_service([spec(echo)], idle_timeout_ms=int(idle * 1000))])
    with udp_clients(HOST, 100) as socks, udp_socket(HOST) as keeper:
        fds = open_fds()
        start = time.monotonic()
        for sock in socks:
            assert udp_ask(sock, lb.addr(), b"once")[0] == b"once"
        assert flows_active(lb) == 100
        assert open_fds() >= fds + 100  # one upstream socket per flow
        # the keeper talks every 0.1 s: its flow outlives the idle timeout of the others
        sent = 0
        expired_at = None
        while time.monotonic() < start + 10:
            assert udp_ask(keeper, lb.addr(), b"still here")[0] == b"still here"
            sent += 1
            if flows_active(lb) == 1:
                expired_at = time.monotonic()
                break
            time.sleep(0.1)
        assert expired_at is not None, lb.svc_stats()
        assert expired_at - start >= idle - 0.05  # nobody expired early
        assert wait_for(lambda: open_fds() == fds + 1, 5), open_fds() - fds
        (flow,) = lb.flows()
        assert tuple(flow["client"]) == keeper.getsockname()
        assert flow["datagrams_to_backend"] == sent
        assert wait_for(lambda: flows_active(lb) == 0, 5)
        assert wait_for(lambda: open_fds() == fds, 5), open_fds() - fds
    settled(lb.svc_stats, flows_created=101, flows_expired=101, flows_active=0)
    settled(lambda: lb.be_stats("echo"), flows_total=101, flows_active=0)


def test_max_flows_drops_and_counts(make_lb: MakeLB, servers: Servers) -> None:
    echo = servers.udp("echo", "echo")
    lb = make_lb([udp_service([spec(echo)], max_flows=5, responses=2)])
    with udp_clients(HOST, 8) as socks:
        for sock in socks:
            sock.sendto(b"1", lb.addr())
        admitted = collect(socks, 5, 5.0)
        assert len(admitted) == 5
        assert wait_for(lambda: lb.svc_stats().get("drops_max_flows") == 3, 5)
        assert collect(socks, 1, 0.2).keys() <= admitted.keys()  # the other 3 got nothing
        settled(lb.svc_stats, datagrams_in=8, flows_created=5, flows_active=5)
        for i in admitted:  # admitted flows go on; their second answer ends them
            assert udp_ask(socks[i], lb.addr(), b"2")[0] == b"2"
        assert wait_for(lambda: flows_active(lb) == 0, 5)
        for i in set(range(8)) - admitted.keys():  # room again
            assert udp_ask(socks[i], lb.addr(), b"3")[0] == b"3"
    settled(lb.svc_stats, datagrams_in=16, datagrams_out=13, flows_created=8, drops_max_flows=3)


def test_flow_cap_counts_all_services_together(make_lb: MakeLB, servers: Servers) -> None:
    """set_udp_flow_cap: one cap over the flows of every service (each holds an fd); the
    service that hits it counts drops_max_udp_flows, a lower cap closes nothing, and room comes
    back as flows end."""
    echo, echo2 = servers.udp("echo", "echo"), servers.udp("echo2", "echo")
    other = SVC + 1
    lb = make_lb([udp_service([spec(echo)], responses=2),
                  dataclasses.replace(udp_service([spec(echo2)], responses=2), service_id=other)])
    assert lb.dp.udp_flows() == (0, 0)  # no cap until one is set
    lb.dp.set_udp_flow_cap(4)
    with udp_clients(HOST, 3) as first, udp_clients(HOST, 3) as second:
        for sock in first:
            sock.sendto(b"1", lb.addr())
        assert len(collect(first, 3, 5.0)) == 3
        assert wait_for(lambda: lb.dp.udp_flows() == (4, 3), 5), lb.dp.udp_flows()
        for sock in second:
            sock.sendto(b"1", lb.addr(other))
        admitted = collect(second, 1, 5.0)
        assert len(admitted) == 1  # the fourth flow of the data plane
        assert wait_for(lambda: lb.svc_stats(other).get("drops_max_udp_flows") == 2, 5)
        assert collect(second, 2, 0.2).keys() <= admitted.keys()  # the other 2 got nothing
        assert lb.svc_stats().get("drops_max_udp_flows") == 0
        assert lb.svc_stats(other).get("drops_max_flows") == 0  # not the service's own limit
        lb.dp.set_udp_flow_cap(2)  # below the flows open: they stay
        assert lb.dp.udp_flows() == (2, 4)
        for i in admitted:
            assert udp_ask(second[i], lb.addr(other), b"2")[0] == b"2"  # ends that flow
        assert udp_ask(first[0], lb.addr(), b"2")[0] == b"2"
        assert wait_for(lambda: lb.dp.udp_flows() == (2, 2), 5), lb.dp.udp_flows()
        late = next(i for i in range(3) if i not in admitted)
        second[late].sendto(b"3", lb.addr(other))  # 2 open, cap 2: still no room
        assert wait_for(lambda: lb.svc_stats(other).get("drops_max_udp_flows") == 3, 5)
        lb.dp.set_udp_flow_cap(0)  # no cap
        assert udp_ask(second[late], lb.addr(other), b"4")[0] == b"4"
        assert lb.dp.udp_flows() == (0, 3)
    with pytest.raises(ValueError):
        lb.dp.set_udp_flow_cap(-1)
    with pytest.raises(ValueError):
        lb.dp.set_udp_flow_cap(1 << 32)
    with pytest.raises(TypeError):
        lb.dp.set_udp_flow_cap(True)


def test_icmp_refusal_ends_the_flow_and_is_counted(make_lb: MakeLB, servers: Servers) -> None:
    closed = servers.udp_refusing()
    lb = make_lb([udp_service([BackendSpec("closed", HOST, closed.port)])])

    def refused(n: int) -> bool:
        return (lb.be_stats("closed").get("connect_failures") == n
                and lb.svc_stats().get("flows_active") == 0)

    with udp_socket(HOST) as client:
        client.sendto(b"anyone?", lb.addr())
        assert wait_for(lambda: refused(1), 5), (lb.svc_stats(), lb.be_stats("closed"))
        client.sendto(b"anyone now?", lb.addr())  # a new flow, refused again
        assert wait_for(lambda: refused(2), 5), (lb.svc_stats(), lb.be_stats("closed"))
        assert udp_silent(client, 0.05)
    settled(lb.svc_stats, flows_created=2, flows_expired=2, datagrams_in=2, datagrams_out=0)
    settled(lambda: lb.be_stats("closed"), datagrams_to_backend=2, flows_total=2)


def test_no_eligible_backend_drops_and_counts(make_lb: MakeLB, servers: Servers) -> None:
    echo = servers.udp("echo", "echo")
    lb = make_lb([udp_service([spec(echo, weight=0)])])
    lb.listen(2, "udp")  # a service the table does not have
    with udp_socket(HOST) as client:
        for _ in range(3):
            client.sendto(b"x", lb.addr())
        client.sendto(b"y", lb.addr(2))
        assert wait_for(lambda: lb.svc_stats().get("drops_no_backend") == 3
                        and lb.svc_stats(2).get("drops_no_backend") == 1, 5)
        assert udp_silent(client, 0.05)
    settled(lb.svc_stats, datagrams_in=3, flows_created=0, datagrams_out=0)
    assert echo.received() == 0


def test_removing_a_listener_ends_its_flows(make_lb: MakeLB, servers: Servers) -> None:
    echo = servers.udp("echo", "echo")
    lb = make_lb([udp_service([spec(echo)])], workers=1)
    with udp_socket(HOST) as client:
        assert udp_ask(client, lb.addr(), b"hi")[0] == b"hi"
        assert flows_active(lb) == 1
        lb.dp.remove_listener(lb.listeners[SVC][0].fileno())
        assert wait_for(lambda: flows_active(lb) == 0, 5)
    settled(lb.svc_stats, flows_created=1, flows_expired=1)


def test_stop_delivers_pending_replies_and_ends_idle_flows(make_lb: MakeLB,
                                                         servers: Servers) -> None:
    """While the data plane stops it reads no listener, but a reply on its way still reaches
    its client, and a flow idle for 250 ms is done (its 30 s idle timeout does not hold the
    stop). The reply must leave within 250 ms of the question: the steps below take ~0.1 s."""
    held = servers.udp("held", "hold")
    lb = make_lb([udp_service([spec(held)])], workers=1)
    with udp_socket(HOST) as client, udp_socket(HOST) as late:
        client.sendto(b"pending", lb.addr())
        assert wait_for(lambda: held.received() == 1, 5)
        stopper = threading.Thread(target=lb.stop, args=(5.0,), name="udp-stop")
        start = time.monotonic()
        stopper.start()
        try:
            time.sleep(0.05)  # the stop has begun: listeners are no longer read
            late.sendto(b"too late", lb.addr())
            time.sleep(0.03)
            assert held.release() == 1
            assert client.recvfrom(UDP_RECV_MAX)[0] == b"pending"
        finally:
            stopper.join(10)
        assert not stopper.is_alive()
        assert time.monotonic() - start < 2.0  # neither the 30 s idle nor the 5 s grace
        assert udp_silent(late, 0.05)
    assert held.received() == 1  # "too late" never went anywhere
    stats = lb.svc_stats()
    assert (stats["datagrams_in"], stats["datagrams_out"], stats["flows_active"]) == (1, 1, 0)


# --- table changes: DOWN moves flows, drain keeps them --------------------------------------


def two_named(servers: Servers) -> tuple[list[UdpBackend], BackendSpec, BackendSpec]:
    """Backends b0 and b1 answering their names, with fixed ids 10 and 11."""
    b0, b1 = servers.udp("b0", "name"), servers.udp("b1", "name")
    return [b0, b1], spec(b0, backend_id=10), spec(b1, backend_id=11)


def ask_all(lb: LB, socks: list[socket.socket], what: bytes) -> list[str]:
    return [name_of(udp_ask(s, lb.addr(), what)[0]) for s in socks]


@pytest.mark.parametrize("how", ["down", "removed"])
def test_flows_of_a_down_backend_move_on_their_next_datagram(make_lb: MakeLB, servers: Servers,
                                                             how: str) -> None:
    (_, b1), s0, s1 = two_named(servers)
    lb = make_lb([udp_service([s0, s1])])
    with udp_clients(HOST, 20) as socks:
        first = ask_all(lb, socks, b"1")
        assert collections.Counter(first) == {"b0": 10, "b1": 10}
        if how == "down":
            lb.publish([udp_service([dataclasses.replace(s0, weight=0, down=True), s1])])
        else:
            lb.publish([udp_service([s1])])
        assert ask_all(lb, socks, b"2") == ["b1"] * 20

        def backend(bid: int) -> dict[str, int]:
            found: dict[str, int] = lb.dp.stats()["backends"].get(bid, {})
            return found

        settled(lb.svc_stats, flows_created=30, flows_expired=10, flows_active=20)
        settled(lambda: backend(10), flows_active=0, flows_total=10, datagrams_to_backend=10)
        settled(lambda: backend(11), flows_active=20, flows_total=20, datagrams_to_backend=30)
    # b1's own flows did not move: their second datagram came through the same upstream socket
    assert sorted(b1.sources().values()) == [1] * 10 + [2] * 10


def test_flows_of_a_drained_backend_stay(make_lb: MakeLB, servers: Servers) -> None:
    _, s0, s1 = two_named(servers)
    lb = make_lb([udp_service([s0, s1])])
    with udp_clients(HOST, 21) as socks:
        first = ask_all(lb, socks[:20], b"1")
        assert collections.Counter(first) == {"b0": 10, "b1": 10}
        lb.publish([udp_service([dataclasses.replace(s0, weight=0), s1])])  # drained, not down
        assert ask_all(lb, socks[:20], b"2") == first
        assert ask_all(lb, socks[20:], b"new") == ["b1"]  # new flows avoid b0
    settled(lb.svc_stats, flows_created=21, flows_expired=0, datagrams_out=41)
    settled(lambda: lb.be_stats("b0"), flows_active=10, datagrams_to_backend=20)


# --- what the counters and flows() say ------------------------------------------------------


def test_counters_and_flows_match_what_was_sent(make_lb: MakeLB, servers: Servers) -> None:
    echo = servers.udp("echo", "echo")
    lb = make_lb([udp_service([spec(echo)])])
    plan = [[10], [100, 200], [1, 2, 3000]]
    before = time.time()
    with udp_clients(HOST, len(plan)) as socks:
        for sock, sizes in zip(socks, plan, strict=True):
            for n in sizes:
                assert udp_ask(sock, lb.addr(), b"u" * n)[0] == b"u" * n
        settled(lb.svc_stats, datagrams_out=sum(len(sizes) for sizes in plan))
        flows = {tuple(f["client"]): f for f in lb.flows()}
        assert set(flows) == {s.getsockname() for s in socks}
        for sock, sizes in zip(socks, plan, strict=True):
            flow = flows[sock.getsockname()]
            assert set(flow) == FLOW_KEYS
            assert (flow["service_id"], flow["backend_id"]) == (SVC, lb.backend_id("echo"))
            assert flow["datagrams_to_backend"] == flow["datagrams_to_client"] == len(sizes)
            assert flow["bytes_to_backend"] == flow["bytes_to_client"] == sum(sizes)
            assert before - 1 <= flow["started"] <= flow["last_seen"] <= time.time() + 1
    total = sum(sum(sizes) for sizes in plan)
    count = sum(len(sizes) for sizes in plan)
    assert set(lb.svc_stats()) >= UDP_SERVICE_KEYS
    settled(lb.svc_stats, datagrams_in=count, datagrams_out=count, flows_created=3,
            flows_expired=0, flows_active=3, drops_max_flows=0, drops_no_backend=0,
            drops_truncated=0, drops_send=0, bytes_to_backend=total, bytes_to_client=total,
            accept_errors=0, conns_total=0, conns_active=0)  # TCP counters stay still
    assert set(lb.be_stats("echo")) >= UDP_BACKEND_KEYS
    settled(lambda: lb.be_stats("echo"), datagrams_to_backend=count, datagrams_to_client=count,
            flows_active=3, flows_total=3, bytes_to_backend=total, bytes_to_client=total,
            connect_failures=0, conns_total=0, conns_active=0)
    assert echo.received() == count and echo.bytes_in() == total
