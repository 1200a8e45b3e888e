"""GRO buffers in the compiled UDP relay: several datagrams of one sender per read, kept exact.

relay_udp.c, "GRO buffers": a UDP listener (and the upstream socket of a flow without
`responses`) has UDP_GRO on, so the kernel may hand the relay one buffer that holds several
datagrams of one sender plus their segment size. On loopback a sender's GSO packet arrives that
way. Each test sends such packets by hand and checks what the far side gets: the same datagrams,
same boundaries, same order, with every counter per datagram. The behaviour both data planes
share (a GSO-sending client) is in test_udp.py; these tests need the C module's counters.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from l4lb.dataplane import reference_requested

from .clients import wait_for
from .conftest import SVC
from .tables import BackendSpec, ServiceSpec, build_table
from .test_c_internals import udp_sock  # the C suite's UDP socket (large buffer, timeout)

if reference_requested():
    pytest.skip("L4LB_NO_EXTENSIONS=1: the compiled data plane is not tested",
                allow_module_level=True)

try:
    from l4lb._dataplane import Dataplane as CDataplane
    from l4lb._dataplane import _udp_gro_supported, _udp_gso_supported
except ImportError as exc:
    pytest.fail(f"l4lb._dataplane does not import ({exc}); build it with "
                "`python3 setup.py build_ext --inplace`", pytrace=False)

SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h
UDP_GRO = 104
IDLE_MS = 30_000

needs_gro = pytest.mark.skipif(not (_udp_gro_supported() and _udp_gso_supported()),
                               reason="this kernel has no UDP_GRO / UDP_SEGMENT")


def pieces(tag: int, sizes: list[int]) -> list[bytes]:
    """Datagrams of the given sizes whose bytes say which one they are."""
    return [bytes((tag * 37 + k * 11 + i) % 251 for i in range(n)) for k, n in enumerate(sizes)]


def send_gso(sock: socket.socket, datagrams: list[bytes], addr: Any = None) -> None:
    """Send equal-sized datagrams (the last may be shorter) as ONE GSO packet."""
    seg = len(datagrams[0])
    assert all(len(d) == seg for d in datagrams[:-1]) and len(datagrams[-1]) <= seg
    ctl = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", seg))]
    buf = b"".join(datagrams)
    if addr is None:
        sock.sendmsg([buf], ctl)
    else:
        sock.sendmsg([buf], ctl, 0, addr)


def receive(sock: socket.socket, n: int) -> list[tuple[bytes, Any]]:
    return [sock.recvfrom(65535) for _ in range(n)]


def gro_on(sock: socket.socket) -> int:
    return sock.getsockopt(SOL_UDP, UDP_GRO)


class Rig:
    """One C data plane (1 worker) with one UDP listener on `host` and a hand-driven backend."""

    def __init__(self, host: str = "127.0.0.1", listen: str | None = None,
                 tune: dict[str, Any] | None = None, **fields: Any) -> None:
        self.dp = CDataplane(1)
        self.socks: list[socket.socket] = []
        if tune:
            self.dp._udp_tune(**tune)
        self.backend = self.sock(host)
        self.listener = self.sock(listen or host, blocking=False)
        self.fields = fields
        self.host = host

    def sock(self, host: str, blocking: bool = True) -> socket.socket:
        sock = udp_sock(host, blocking)
        self.socks.append(sock)
        return sock

    def start(self) -> None:
        fields = {"idle_timeout_ms": IDLE_MS, **self.fields}
        spec = ServiceSpec(SVC, (BackendSpec("u", self.host, self.backend.getsockname()[1]),),
                           protocol="udp", **fields)
        self.dp.start()
        self.dp.publish(build_table([spec]).blob)
        self.dp.add_listener(SVC, self.listener.fileno(), 0)

    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def figures(self) -> dict[str, int]:
        return dict(self.dp._internals())

    def stats(self) -> dict[str, int]:
        """The service's counters ({} until the worker has counted something for it)."""
        return dict(self.dp.stats()["services"].get(SVC, {}))

    def close(self) -> None:
        self.dp.stop(0)
        for sock in self.socks:
            sock.close()


@pytest.fixture
def rig() -> Iterator[Any]:
    made: list[Rig] = []

    def make(*args: Any, **kwargs: Any) -> Rig:
        r = Rig(*args, **kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def exchange(r: Rig, client: socket.socket, dest: tuple[str, int], sizes_in: list[int],
             sizes_back: list[int]) -> tuple[list[tuple[bytes, Any]], list[tuple[bytes, Any]]]:
    """One GSO packet from the client to the balancer, one GSO packet back from the backend;
    returns what the backend and then the client received, datagram by datagram."""
    sent = pieces(1, sizes_in)
    send_gso(client, sent, dest)
    at_backend = receive(r.backend, len(sent))
    assert [d for d, _ in at_backend] == sent
    back = pieces(2, sizes_back)
    send_gso(r.backend, back, at_backend[0][1])
    at_client = receive(client, len(back))
    assert [d for d, _ in at_client] == back
    return at_backend, at_client


@needs_gro
def test_a_gso_packet_crosses_as_one_read_and_leaves_as_one_run_both_ways(rig: Any) -> None:
    """11 datagrams (10 x 100 bytes + 37) sent as one GSO packet reach the backend as 11
    datagrams; the relay read them in ONE recvmmsg entry and sent them in ONE call. The
    backend's GSO answer (7 x 50 + 20) comes back the same way."""
    r = rig()
    client = r.sock("127.0.0.1")
    r.start()
    assert gro_on(r.listener) == 1
    at_backend, at_client = exchange(r, client, ("127.0.0.1", r.port()), [100] * 10 + [37],
                                     [50] * 7 + [20])
    assert len({src for _, src in at_backend}) == 1  # one flow, one upstream socket
    assert all(src == ("127.0.0.1", r.port()) for _, src in at_client)
    wait_for(lambda: r.figures()["udp_out_datagrams"] == 8, 5)
    f = r.figures()
    assert (f["udp_rx_calls"], f["udp_rx_datagrams"], f["udp_tx_calls"],
            f["udp_tx_datagrams"]) == (1, 11, 1, 11), f
    assert (f["udp_up_calls"], f["udp_up_datagrams"], f["udp_out_calls"],
            f["udp_out_datagrams"]) == (1, 8, 1, 8), f
    assert f["udp_gro_datagrams"] == 19 and f["udp_gso_datagrams"] == 19, f
    s = r.stats()
    assert (s["datagrams_in"], s["datagrams_out"], s["flows_created"]) == (11, 8, 1), s
    assert (s["bytes_to_backend"], s["bytes_to_client"]) == (1037, 370), s
    flow = r.dp.flows()[0]
    assert (flow["datagrams_to_backend"], flow["datagrams_to_client"]) == (11, 8), flow


@needs_gro
def test_ipv6_gso_packets_cross_exactly(rig: Any) -> None:
    r = rig("::1")
    client = r.sock("::1")
    r.start()
    exchange(r, client, ("::1", r.port()), [200] * 5, [64] * 3 + [1])
    assert r.figures()["udp_gro_datagrams"] == 9


@needs_gro
def test_a_wildcard_listener_reads_pktinfo_and_gro_together(rig: Any) -> None:
    """On 0.0.0.0 each read carries two control messages (the address written to and the
    segment size): replies to a GSO packet sent to 127.0.0.3 come from 127.0.0.3."""
    r = rig("127.0.0.1", listen="0.0.0.0")
    client = r.sock("127.0.0.1")
    r.start()
    _, at_client = exchange(r, client, ("127.0.0.3", r.port()), [80] * 6, [40] * 4 + [3])
    assert {src for _, src in at_client} == {("127.0.0.3", r.port())}
    assert r.figures()["udp_gro_datagrams"] == 11


@needs_gro
def test_large_segments_leave_as_one_run_when_the_path_takes_them(rig: Any) -> None:
    """A GRO buffer keeps its own segment size on the way out, also above the 1,400 bytes that
    runs of single datagrams are held to: on loopback 3,000-byte datagrams leave as one run."""
    r = rig()
    client = r.sock("127.0.0.1")
    r.start()
    exchange(r, client, ("127.0.0.1", r.port()), [3000] * 4 + [999], [2000] * 2)
    wait_for(lambda: r.figures()["udp_out_datagrams"] == 2, 5)  # counted after the send
    f = r.figures()
    assert f["udp_gro_datagrams"] == 7 and f["udp_gso_datagrams"] == 7, f
    assert (f["udp_tx_calls"], f["udp_tx_datagrams"]) == (1, 5), f


@needs_gro
def test_gro_can_be_turned_off_by_tuning(rig: Any) -> None:
    """_udp_tune(gro=False) before the listener is added: it never gets UDP_GRO, and the kernel
    cuts GSO packets before the relay sees them."""
    off = rig(tune={"gro": False})
    client = off.sock("127.0.0.1")
    off.start()
    assert gro_on(off.listener) == 0
    exchange(off, client, ("127.0.0.1", off.port()), [100] * 4, [100] * 4)
    f = off.figures()
    assert f["udp_gro_datagrams"] == 0 and f["udp_rx_datagrams"] == 4, f


@needs_gro
def test_a_buffer_that_may_not_leave_as_a_run_goes_out_in_batches(rig: Any) -> None:
    """Without GSO (tuning) a GRO buffer is sent datagram by datagram, and in sendmmsg calls:
    20 x 1,452 bytes (a QUIC-sized packet) are 20 exact datagrams in ONE call. The listener had
    UDP_GRO from its owner; the relay reads it right although it would not have set it."""
    r = rig(tune={"gso": False})
    client = r.sock("127.0.0.1")
    r.listener.setsockopt(SOL_UDP, UDP_GRO, 1)
    r.start()
    sent = pieces(6, [1452] * 19 + [100])
    send_gso(client, sent, ("127.0.0.1", r.port()))
    assert [d for d, _ in receive(r.backend, len(sent))] == sent
    wait_for(lambda: r.figures()["udp_tx_datagrams"] == 20, 5)
    wait_for(lambda: r.stats().get("datagrams_in") == 20, 5)  # counted after the batch's sends
    f = r.figures()
    assert (f["udp_rx_calls"], f["udp_gro_datagrams"], f["udp_tx_calls"],
            f["udp_gso_datagrams"]) == (1, 20, 1, 0), f
    assert r.stats()["datagrams_in"] == 20


@needs_gro
@pytest.mark.parametrize(("tune", "sizes", "arrive"), [
    ({"gro": False}, [100] * 4, True),
    ({"slot": 1000}, [400] * 4, True),
    ({"slot": 1000}, [1200] * 3, False),
])
def test_tuning_after_a_listener_was_added_keeps_boundaries(
        rig: Any, tune: dict[str, Any], sizes: list[int], arrive: bool) -> None:
    """add_listener (it sets UDP_GRO), then tuning turns GRO off (or shortens the slots), then
    start: the listener still has the option, and the worker still reads its buffers right. A
    buffer whose datagrams exceed the shortened slot counts one drop per datagram."""
    r = rig()
    client = r.sock("127.0.0.1")
    spec = ServiceSpec(SVC, (BackendSpec("u", "127.0.0.1", r.backend.getsockname()[1]),),
                       protocol="udp", idle_timeout_ms=IDLE_MS)
    r.dp.publish(build_table([spec]).blob)
    r.dp.add_listener(SVC, r.listener.fileno(), 0)
    r.dp._udp_tune(**tune)
    assert gro_on(r.listener) == 1
    sent = pieces(7, sizes)
    send_gso(client, sent, ("127.0.0.1", r.port()))
    r.dp.start()
    if arrive:
        assert [d for d, _ in receive(r.backend, len(sent))] == sent
    else:
        wait_for(lambda: r.stats().get("drops_truncated") == len(sent), 5)
        assert r.stats()["drops_truncated"] == len(sent)
    wait_for(lambda: r.stats().get("datagrams_in") == len(sent), 5)
    assert r.stats()["datagrams_in"] == len(sent)


@needs_gro
def test_switching_off_never_splits_what_a_listener_holds(rig: Any) -> None:
    """The kernel adds a buffer's segment size only while UDP_GRO is on, so turning it off
    would turn a queued buffer into one datagram. set_udp_gro(False) therefore leaves a
    listener that has it as it is (and so does remove_listener): a buffer queued before the
    switch arrives as its datagrams, and so does one sent after."""
    r = rig()
    client = r.sock("127.0.0.1")
    r.listener.setsockopt(SOL_UDP, UDP_GRO, 1)
    before = pieces(8, [100] * 4)
    send_gso(client, before, ("127.0.0.1", r.port()))  # queued merged
    r.dp.set_udp_gro(SVC, False)
    r.start()
    assert gro_on(r.listener) == 1
    assert [d for d, _ in receive(r.backend, 4)] == before
    after = pieces(9, [50] * 5)
    send_gso(client, after, ("127.0.0.1", r.port()))
    assert [d for d, _ in receive(r.backend, 5)] == after
    r.dp.remove_listener(r.listener.fileno())
    assert gro_on(r.listener) == 1
    wait_for(lambda: r.stats().get("datagrams_in") == 9, 5)
    assert r.stats()["datagrams_in"] == 9


@needs_gro
def test_short_slots_turn_gro_off_and_truncate_per_datagram(rig: Any) -> None:
    """With 1,000-byte slots the relay asks for no GRO buffers: of a GSO packet of 1,200-byte
    datagrams each one is dropped as truncated (3 drops, not 1), and a packet of 500-byte
    datagrams arrives whole."""
    r = rig(tune={"slot": 1000})
    client = r.sock("127.0.0.1")
    r.start()
    assert gro_on(r.listener) == 0
    send_gso(client, pieces(3, [1200] * 3), ("127.0.0.1", r.port()))
    sent = pieces(4, [500] * 3)
    send_gso(client, sent, ("127.0.0.1", r.port()))
    assert [d for d, _ in receive(r.backend, 3)] == sent
    wait_for(lambda: r.stats().get("drops_truncated") == 3, 5)
    wait_for(lambda: r.stats().get("datagrams_in") == 6, 5)
    assert r.stats()["drops_truncated"] == 3 and r.stats()["datagrams_in"] == 6


@needs_gro
def test_a_flow_with_responses_counts_replies_exactly(rig: Any) -> None:
    """responses = 2: the upstream socket reads datagram by datagram, so of a 4-datagram GSO
    answer exactly 2 reach the client and the flow ends."""
    r = rig(responses=2)
    client = r.sock("127.0.0.1")
    r.start()
    client.sendto(b"ask", ("127.0.0.1", r.port()))
    data, upstream = r.backend.recvfrom(65535)
    assert data == b"ask"
    back = pieces(5, [30] * 4)
    send_gso(r.backend, back, upstream)
    assert [d for d, _ in receive(client, 2)] == back[:2]
    client.settimeout(0.3)
    with pytest.raises(TimeoutError):
        client.recvfrom(65535)
    wait_for(lambda: r.stats().get("flows_active") == 0, 5)
    assert r.stats()["datagrams_out"] == 2 and r.figures()["udp_gro_datagrams"] == 0


@needs_gro
def test_a_dropped_gro_buffer_counts_every_datagram(rig: Any) -> None:
    """max_flows = 1: a second client's 6-datagram GSO packet finds no flow slot; all 6 count
    as drops_max_flows, and the first client's flow goes on."""
    r = rig(max_flows=1)
    first, second = r.sock("127.0.0.1"), r.sock("127.0.0.1")
    r.start()
    first.sendto(b"one", ("127.0.0.1", r.port()))
    assert r.backend.recvfrom(65535)[0] == b"one"
    send_gso(second, pieces(6, [64] * 6), ("127.0.0.1", r.port()))
    wait_for(lambda: r.stats().get("drops_max_flows") == 6, 5)
    wait_for(lambda: r.stats().get("datagrams_in") == 7, 5)
    s = r.stats()
    assert (s["drops_max_flows"], s["datagrams_in"], s["flows_created"]) == (6, 7, 1), s
    first.sendto(b"two", ("127.0.0.1", r.port()))
    assert r.backend.recvfrom(65535)[0] == b"two"


@needs_gro
def test_the_service_switch_covers_listeners_and_new_flows(rig: Any) -> None:
    """set_udp_gro(SVC, False) before the listener is added keeps it off; switched on, the
    listener gets UDP_GRO at once and the next flow's upstream socket has it too; switched off
    again, the next flow's socket goes without it while the listener keeps it."""
    r = rig()
    r.dp.set_udp_gro(SVC, False)
    assert r.dp.udp_gro(SVC) is False
    first = r.sock("127.0.0.1")
    r.start()
    assert gro_on(r.listener) == 0
    exchange(r, first, ("127.0.0.1", r.port()), [100] * 4, [100] * 4)
    assert r.figures()["udp_gro_datagrams"] == 0  # neither the listener nor the flow's socket

    r.dp.set_udp_gro(SVC, True)
    assert gro_on(r.listener) == 1 and r.dp.udp_gro(SVC) is True
    second = r.sock("127.0.0.1")
    exchange(r, second, ("127.0.0.1", r.port()), [100] * 4, [100] * 4)
    assert r.figures()["udp_gro_datagrams"] == 8  # both ways

    r.dp.set_udp_gro(SVC, False)  # never off on a listener that has it (test above)
    assert gro_on(r.listener) == 1 and r.dp.udp_gro(SVC) is False
    third = r.sock("127.0.0.1")
    exchange(r, third, ("127.0.0.1", r.port()), [100] * 3, [100] * 3)
    assert r.figures()["udp_gro_datagrams"] == 11  # the listener's 3; not the new flow's reply
