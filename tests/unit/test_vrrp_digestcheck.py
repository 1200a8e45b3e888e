"""Unit tests of the VRRP table digest check: wire format, the comparison with a fake clock,
and two DigestCheck endpoints joined by an in-memory network (no sockets, no sleeping)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l4lb.vrrp.digestcheck import (
    DROP_REASONS,
    MAGIC,
    Agreement,
    Agrees,
    BadMessage,
    Differs,
    DigestCheck,
    Event,
    InstanceView,
    Message,
    PeerHeard,
    PeerSilent,
    Table,
    decode,
    describe,
)
from l4lb.vrrp.packet import IPAddress
from l4lb.vrrp.settings import VrrpSettings

A = "3f0c9a1e22b4d6f1"
B = "8a1b2c3d4e5f6071"
C = "0123456789abcdef"
LB1 = ipaddress.ip_address("10.0.0.11")
LB2 = ipaddress.ip_address("10.0.0.12")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- wire format --------------------------------------------------------------------------


def message(**kw: object) -> Message:
    base: dict[str, object] = {"vrid": 51, "instance": "VI_1", "node": LB1,
                               "generation": 7, "digest": A}
    base.update(kw)
    return Message(**base)  # type: ignore[arg-type]


def test_round_trip_ipv4_and_ipv6() -> None:
    for m in (message(), message(node=ipaddress.ip_address("fe80::11"), reply=True,
                                 generation=2**64 - 1, instance="a" * 64, vrid=255)):
        data = m.encode()
        assert len(data) == 41 + len(m.instance)
        assert data[:4] == MAGIC and data[4] == 1
        assert decode(data) == m


def test_layout_is_the_documented_one() -> None:
    data = message(reply=True).encode()
    assert data == (b"l4dg" + bytes([1, 1, 51, 4]) + struct.pack("!Q", 7) + bytes.fromhex(A)
                    + LB1.packed + bytes(12) + bytes([4]) + b"VI_1")


def test_encode_refuses_values_out_of_range() -> None:
    for bad in ({"vrid": 0}, {"vrid": 256}, {"instance": ""}, {"instance": "a b"},
                {"instance": "x" * 65}, {"generation": -1}, {"generation": 2**64},
                {"digest": A.upper()}, {"digest": A[:15]}, {"digest": ""}):
        with pytest.raises(ValueError):
            message(**bad).encode()


def corrupt(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def test_decode_names_the_reason() -> None:
    good = message().encode()
    cases = {
        "size": [b"", good[:40], good[:-1], good + b"x"],
        "magic": [corrupt(good, 0, b"L4DG")],
        "version": [corrupt(good, 4, b"\x02"), corrupt(good, 4, b"\x00")],
        "field": [corrupt(good, 6, b"\x00"), corrupt(good, 7, b"\x05"),
                  corrupt(good, 28, b"\x01"),  # IPv4 address with trailing bytes
                  corrupt(good, 24, bytes(4)),  # 0.0.0.0
                  corrupt(good, 24, bytes([224, 0, 0, 18])),
                  corrupt(good, 41, b"V I1"), corrupt(good, 41, b"VI\xff1")],
    }
    for reason, datagrams in cases.items():
        for data in datagrams:
            with pytest.raises(BadMessage) as info:
                decode(data)
            assert info.value.reason == reason, (data, info.value)


def test_unknown_flag_bits_are_ignored() -> None:
    assert decode(corrupt(message().encode(), 5, b"\xfe")).reply is False


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_raises_anything_else(data: bytes) -> None:
    try:
        m = decode(data)
    except BadMessage as exc:
        assert exc.reason in DROP_REASONS
    else:  # only a well-formed message decodes, and it encodes back to the same bytes
        assert m.encode() == corrupt(data, 5, bytes([data[5] & 1]))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 104), st.binary(min_size=1, max_size=1))
def test_any_truncation_or_byte_flip_of_a_message_is_refused_or_still_valid(
        cut: int, flip: bytes) -> None:
    good = message(instance="x" * 64).encode()
    with pytest.raises(BadMessage):
        decode(good[:cut])
    mutated = corrupt(good, cut, flip)
    try:
        decode(mutated)
    except BadMessage as exc:
        assert exc.reason in DROP_REASONS


# --- comparison with a fake clock ---------------------------------------------------------


def agreement(clock: Clock, ours: str | None = A) -> Agreement:
    a = Agreement("VI_1", grace=10.0, silent_after=7.0, forget_after=300.0, clock=clock)
    a.set_ours(None if ours is None else Table(7, ours))
    return a


def run(a: Agreement, clock: Clock, seconds: float, theirs: Table | None,
        step: float = 1.0) -> list[Event]:
    """Tick every `step` for `seconds`; the peer 10.0.0.12 sends `theirs` each time (None: it
    is silent)."""
    events: list[Event] = []
    t = 0.0
    while t < seconds:
        clock.advance(step)
        t += step
        if theirs is not None:
            events += a.heard("10.0.0.12", theirs)
        events += a.tick()
    return events


def test_equal_digests_never_warn() -> None:
    clock = Clock()
    a = agreement(clock)
    first = a.heard("10.0.0.12", Table(5, A), node="10.0.0.12", name="VI_1")
    assert [type(e) for e in first] == [PeerHeard]
    events: list[object] = []
    for _ in range(30):
        clock.advance(2.0)
        events += a.heard("10.0.0.12", Table(5, A)) + a.tick()
    assert events == []
    assert a.agreement() == "yes"
    peer = a.status()["peers"][0]
    assert peer["agree"] is True and peer["warned"] is False and peer["differs_for"] is None
    assert peer["node"] == "10.0.0.12" and peer["instance"] == "VI_1"


def test_lasting_difference_warns_once_after_grace_then_recovers() -> None:
    clock = Clock()
    a = agreement(clock)
    a.heard("10.0.0.12", Table(5, B))
    assert a.agreement() == "no"
    quiet: list[object] = []
    for _ in range(9):  # 9 s < grace
        clock.advance(1.0)
        quiet += a.heard("10.0.0.12", Table(5, B)) + a.tick()
    assert quiet == []
    assert a.status()["peers"][0]["differs_for"] == pytest.approx(9.0)
    clock.advance(1.0)
    warn = a.tick()
    assert len(warn) == 1 and isinstance(warn[0], Differs)
    assert warn[0].ours == Table(7, A) and warn[0].theirs == Table(5, B)
    assert warn[0].since == pytest.approx(10.0)
    later: list[object] = []
    for _ in range(60):
        clock.advance(1.0)
        later += a.heard("10.0.0.12", Table(5, B)) + a.tick()
    assert later == []  # once, not every tick
    assert a.status()["peers"][0]["warned"] is True
    clock.advance(1.0)
    back = a.heard("10.0.0.12", Table(6, A))
    assert back == [Agrees("VI_1", "10.0.0.12", Table(7, A), Table(6, A))]
    assert run(a, clock, 30, Table(6, A)) == []
    assert a.agreement() == "yes"


def test_a_reload_done_on_both_nodes_within_grace_does_not_warn() -> None:
    clock = Clock()
    a = agreement(clock)
    a.heard("10.0.0.12", Table(5, A))
    events = a.set_ours(Table(8, B))  # we reloaded first
    clock.advance(6.0)
    events += a.tick()
    events += a.heard("10.0.0.12", Table(6, B))  # the peer reloaded 6 s later
    events += run(a, clock, 30, Table(6, B))
    assert events == []


def test_our_own_change_during_a_difference_restarts_the_grace() -> None:
    clock = Clock()
    a = agreement(clock)
    a.heard("10.0.0.12", Table(5, B))
    assert run(a, clock, 8, Table(5, B)) == []
    assert a.set_ours(Table(8, C)) == []  # still different, another pair: grace again
    assert run(a, clock, 9, Table(5, B)) == []
    clock.advance(1.0)
    warn = a.tick()
    assert len(warn) == 1 and isinstance(warn[0], Differs) and warn[0].ours.digest == C


def test_a_new_differing_pair_after_a_warning_warns_again() -> None:
    clock = Clock()
    a = agreement(clock)
    a.heard("10.0.0.12", Table(5, B))
    assert [type(e) for e in run(a, clock, 12, Table(5, B))] == [Differs]
    a.set_ours(Table(9, C))
    events = run(a, clock, 12, Table(5, B))
    assert [type(e) for e in events] == [Differs]
    assert isinstance(events[0], Differs) and events[0].ours.digest == C


def test_silent_peer_is_reported_then_warns_again_when_it_returns_still_different() -> None:
    clock = Clock()
    a = agreement(clock)
    a.heard("10.0.0.12", Table(5, B))
    assert [type(e) for e in run(a, clock, 10, Table(5, B))] == [Differs]
    events = run(a, clock, 8, None)
    assert [type(e) for e in events] == [PeerSilent]
    assert isinstance(events[0], PeerSilent) and events[0].differed
    assert a.agreement() == "unknown"
    assert run(a, clock, 30, None) == []  # reported once
    back = a.heard("10.0.0.12", Table(5, B))
    assert [type(e) for e in back] == [PeerHeard]
    assert isinstance(back[0], PeerHeard) and back[0].again
    events = []
    for _ in range(12):
        clock.advance(1.0)
        events += a.heard("10.0.0.12", Table(5, B)) + a.tick()
    assert [type(e) for e in events] == [Differs]


def test_forgotten_peer_and_room() -> None:
    clock = Clock()
    a = Agreement("VI_1", grace=10.0, silent_after=7.0, forget_after=60.0, clock=clock,
                  max_peers=2)
    a.set_ours(Table(1, A))
    a.heard("10.0.0.12", Table(1, A))
    a.heard("10.0.0.13", Table(1, A))
    assert not a.has_room()
    assert a.heard("10.0.0.14", Table(1, B)) == []
    assert a.peers() == ["10.0.0.12", "10.0.0.13"]
    run(a, clock, 61, None)
    assert a.peers() == [] and a.has_room()


def test_unknown_own_digest_never_warns() -> None:
    clock = Clock()
    a = agreement(clock, ours=None)
    a.heard("10.0.0.12", Table(5, B))
    assert run(a, clock, 60, Table(5, B), step=0.5) == []
    assert a.agreement() == "unknown"
    assert a.status()["peers"][0]["agree"] is None


def test_log_lines() -> None:
    level, line = describe(Differs("VI_1", "10.0.0.12", Table(7, A), Table(5, B), 10.0))
    assert level == logging.WARNING
    assert line == ("vrrp VI_1: table digest differs from peer 10.0.0.12 (ours "
                    "3f0c9a1e22b4d6f1 generation 7, theirs 8a1b2c3d4e5f6071 generation 5): "
                    "the nodes may send clients to different backends")
    level, line = describe(Agrees("VI_1", "10.0.0.12", Table(8, A), Table(6, A)))
    assert level == logging.INFO
    assert line.startswith("vrrp VI_1: table digest matches peer 10.0.0.12 again")
    level, line = describe(PeerSilent("VI_1", "10.0.0.12", 7.5, True))
    assert level == logging.INFO and "10.0.0.12 for 7.5s" in line and "differed" in line
    level, line = describe(PeerHeard("VI_1", "10.0.0.12", Table(5, B), Table(7, A), False))
    assert level == logging.INFO and "different from ours" in line


# --- two endpoints over an in-memory network ----------------------------------------------


@dataclass
class FakeFsm:
    master_address: IPAddress | None = None


@dataclass
class FakeInstance:
    settings: VrrpSettings
    address: IPAddress | None
    fsm: FakeFsm | None = field(default_factory=FakeFsm)
    last_advert: tuple[IPAddress, int, int] | None = None


def vrrp_settings(**kw: object) -> VrrpSettings:
    base: dict[str, object] = {"name": "VI_1", "interface": "lo", "virtual_router_id": 51,
                               "vips": ("10.0.0.100/24",)}
    base.update(kw)
    return VrrpSettings(**base)  # type: ignore[arg-type]


Wire = list[tuple[IPAddress, IPAddress, bytes]]  # (from, to, payload) in flight


class Endpoint(DigestCheck):
    """A DigestCheck whose datagrams go to an in-memory wire instead of a socket."""

    def __init__(self, wire: Wire, instances: Sequence[InstanceView], table: list[Table],
                 clock: Clock, port: int = 0) -> None:
        super().__init__(instances, lambda: (table[0].generation, table[0].digest),
                         interval=2.0, grace=10.0, clock=clock, port=port, bind4="127.0.0.1")
        self.wire = wire
        self.table = table  # [our live table], changed by the test

    def _transmit(self, inst: InstanceView, payload: bytes, dest: IPAddress) -> None:
        assert inst.address is not None
        self.wire.append((inst.address, dest, payload))
        self.counters.sent += 1


def deliver(wire: Wire, nodes: dict[IPAddress, DigestCheck]) -> list[Message]:
    """Deliver everything in flight (and what that causes); the messages delivered."""
    seen: list[Message] = []
    while wire:
        src, dst, payload = wire.pop(0)
        if dst in nodes:
            seen.append(decode(payload))
            nodes[dst].datagram(payload, src, 0)
    return seen


class Pair:
    """lb1 (MASTER) and lb2 (BACKUP, hears lb1's adverts) of one multicast instance."""

    def __init__(self, **settings_kw: object) -> None:
        self.clock = Clock()
        self.wire: Wire = []
        s = vrrp_settings(**settings_kw)
        self.i1 = FakeInstance(s, LB1, FakeFsm(LB1))
        self.i2 = FakeInstance(s, LB2, FakeFsm(LB1))
        self.t1, self.t2 = [Table(7, A)], [Table(3, A)]
        self.n1 = Endpoint(self.wire, [self.i1], self.t1, self.clock)
        self.n2 = Endpoint(self.wire, [self.i2], self.t2, self.clock)
        self.nodes: dict[IPAddress, DigestCheck] = {LB1: self.n1, LB2: self.n2}

    def rounds(self, seconds: float) -> None:
        t = 0.0
        while t < seconds:
            self.n1.round()
            self.n2.round()
            deliver(self.wire, self.nodes)
            self.clock.advance(self.n1.interval)
            t += self.n1.interval


def warnings(caplog: pytest.LogCaptureFixture, node: str = "") -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "differs from peer " + node in r.getMessage()]


def test_master_learns_the_backup_and_answers_once() -> None:
    p = Pair()
    assert p.n1.targets(p.i1) == []  # a master hears no adverts: it knows nobody yet
    assert p.n2.targets(p.i2) == [LB1]
    p.n2.round()
    seen = deliver(p.wire, p.nodes)
    assert [(m.node, m.reply) for m in seen] == [(LB2, False), (LB1, True)]
    assert p.n1.counters.replies == 1 and p.n2.counters.replies == 0
    assert p.n1.targets(p.i1) == [LB2]
    p.n2.round()
    assert [m.reply for m in deliver(p.wire, p.nodes)] == [False]  # known: no second reply
    for node in (p.n1, p.n2):
        view = node.status()["instances"]["VI_1"]
        assert view["agreement"] == "yes"
        assert node.status()["counters"]["accepted"] >= 1


def test_both_nodes_warn_after_grace_and_report_recovery(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="l4lb.vrrp")
    p = Pair()
    p.rounds(30)
    assert warnings(caplog) == []
    p.t2[0] = Table(4, B)  # lb2 reloaded, lb1 did not
    p.n2.published()  # not running (no loop): a no-op, the next round carries it
    p.rounds(8)
    assert warnings(caplog) == []  # within grace
    p.rounds(6)
    assert warnings(caplog, "10.0.0.12") == [
        "vrrp VI_1: table digest differs from peer 10.0.0.12 (ours 3f0c9a1e22b4d6f1 "
        "generation 7, theirs 8a1b2c3d4e5f6071 generation 4): the nodes may send clients to "
        "different backends"]
    assert len(warnings(caplog, "10.0.0.11")) == 1
    p.rounds(30)
    assert len(warnings(caplog)) == 2  # once per node
    for node in (p.n1, p.n2):
        assert node.status()["instances"]["VI_1"]["agreement"] == "no"
    p.t1[0] = Table(8, B)  # lb1 reloads too
    p.rounds(2)
    infos = [r.getMessage() for r in caplog.records if "matches peer" in r.getMessage()]
    assert len(infos) == 2 and any("10.0.0.11" in m for m in infos) and \
        any("10.0.0.12" in m for m in infos)


def test_garbage_and_foreign_datagrams_are_counted_and_ignored(
        caplog: pytest.LogCaptureFixture) -> None:
    p = Pair()
    n1 = p.n1
    stranger = ipaddress.ip_address("10.0.0.99")
    n1.datagram(b"\x00" * 7, stranger)
    n1.datagram(b"GET / HTTP/1.1\r\n\r\n" * 3, stranger)
    n1.datagram(message(vrid=52, node=stranger).encode(), stranger)
    n1.datagram(message(node=LB1).encode(), LB1)  # ourselves
    n1.datagram(message(node=LB2).encode(), LB2, 9999)  # arrived on another interface
    drops = n1.status()["counters"]["drops"]
    assert {k: v for k, v in drops.items() if v} == {"size": 1, "magic": 1, "instance": 1,
                                                     "self": 1, "source": 1}
    assert n1.status()["counters"]["received"] == 5
    assert n1.status()["counters"]["accepted"] == 0
    assert n1.status()["instances"]["VI_1"]["peers"] == []
    assert n1.targets(p.i1) == []


def test_unicast_accepts_only_listed_peers() -> None:
    clock = Clock()
    wire: Wire = []
    inst = FakeInstance(vrrp_settings(unicast_peers=("10.0.0.12",)), LB1, FakeFsm(LB1))
    node = Endpoint(wire, [inst], [Table(1, A)], clock)
    assert node.targets(inst) == [LB2]
    node.datagram(message(node=ipaddress.ip_address("10.0.0.13")).encode(),
                  ipaddress.ip_address("10.0.0.13"))
    assert node.drops["source"] == 1
    node.datagram(message(node=LB2, digest=B).encode(), LB2)
    assert node.counters.accepted == 1
    assert node.status()["instances"]["VI_1"]["agreement"] == "no"


def test_ambiguous_vrid_is_resolved_by_name() -> None:
    clock = Clock()
    wire: Wire = []
    one = FakeInstance(vrrp_settings(name="VI_1"), LB1)
    two = FakeInstance(vrrp_settings(name="VI_2"), LB1)
    node = Endpoint(wire, [one, two], [Table(1, A)], clock)
    node.datagram(message(instance="VI_2", node=LB2).encode(), LB2)
    assert node.status()["instances"]["VI_2"]["peers"][0]["address"] == "10.0.0.12"
    assert node.status()["instances"]["VI_1"]["peers"] == []
    node.datagram(message(instance="VI_3", node=LB2).encode(), LB2)
    assert node.drops["instance"] == 1


def test_nothing_is_sent_while_our_digest_is_unknown() -> None:
    p = Pair()
    p.t2[0] = Table(0, "")
    p.n2.round()
    assert p.wire == []
    assert p.n2.status()["table"] is None


def test_start_publish_and_stop_on_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    """Sockets bound on 127.0.0.1 (nothing is sent: _transmit records); no sleeping."""
    caplog.set_level(logging.INFO, logger="l4lb.vrrp")
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    port = busy.getsockname()[1]

    async def main() -> None:
        clock = Clock()
        wire: Wire = []
        inst = FakeInstance(vrrp_settings(), LB2, FakeFsm(LB1))
        table = [Table(1, A)]
        node = Endpoint(wire, [inst], table, clock)  # port 0: any free port
        node.published()  # before start: a no-op
        await node.start()
        assert node.running and node.error is None
        assert len(wire) == 1 and wire[0][1] == LB1  # the first round, at once
        table[0] = Table(2, B)
        node.published()
        node.published()  # a burst: one round
        await asyncio.sleep(0)
        assert [decode(p).digest for _, _, p in wire] == [A, B]
        await node.stop()
        await node.stop()  # idempotent
        assert not node.running and node.status()["running"] is False
        node.published()
        await asyncio.sleep(0)
        assert len(wire) == 2

        taken = Endpoint(wire, [inst], table, clock, port=port)
        await taken.start()  # the port is in use: off, one error, nothing raised
        assert not taken.running
        assert f"cannot bind UDP port {port}" in str(taken.status()["error"])
        assert len(wire) == 2

    try:
        asyncio.run(main())
    finally:
        busy.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "table digest check off" in errors[0]
