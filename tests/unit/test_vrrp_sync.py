"""Test the sync group coordinator (l4lb.vrrp.sync) over real state machines and a fake clock.

First the state matrix on one node (members VI_1 and VI_2, sometimes VI_3): start, both timers,
member faults (in MASTER and in BACKUP, overlapping), recovery, a member preempted by a peer, a
lower-priority peer, the address owner, shutdown. Then two simulated nodes, each with a group
of two, exchanging adverts: the group moves whole to the other node on a member's fault and
comes back whole on recovery. Nothing sleeps.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import pytest

from l4lb.vrrp.fsm import (
    REASON_DOWN_TIMER,
    Action,
    AddVips,
    FsmConfig,
    Notify,
    RemoveVips,
    SendAdvert,
    SendGarp,
    State,
    VrrpFsm,
    master_down_interval_us,
    skew_time_us,
)
from l4lb.vrrp.sync import GroupNotify, SyncGroup, fault_name

S = 1_000_000
OURS = ipaddress.IPv4Address("10.0.0.5")
PEER = ipaddress.IPv4Address("10.0.0.9")  # numerically above OURS
LOW = ipaddress.IPv4Address("10.0.0.2")
VRIDS = {"VI_1": 51, "VI_2": 52, "VI_3": 53}
LINK = "interface eth1 down"


class FakeClock:
    """Monotonic microseconds that move only when a test says so."""

    def __init__(self, now: int = 1_000 * S) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class Node:
    """One node's members and their group; `run` is what the runtime does for one event."""

    def __init__(self, members: Sequence[str] = ("VI_1", "VI_2"), *, address: Any = OURS,
                 clock: FakeClock | None = None, **cfg: Any) -> None:
        self.clock = clock or FakeClock()
        self.group = SyncGroup("G", members, self.clock)
        self.fsms: dict[str, VrrpFsm] = {}
        per: dict[str, dict[str, Any]] = cfg.pop("per", {})
        for name in members:
            c: dict[str, Any] = {"name": name, "vrid": VRIDS[name], "priority": 100,
                                 "address": address, "sync_group": "G", **cfg,
                                 **per.get(name, {})}
            self.fsms[name] = VrrpFsm(FsmConfig(**c), self.clock)
            self.group.attach(name, self.fsms[name])
        self.log: list[tuple[str, Action]] = []  # every action executed, in order
        self.notes: list[GroupNotify] = []  # every group change

    def run(self, member: str, actions: list[Action]) -> dict[str, list[Action]]:
        """Execute `member`'s actions, then the group's; return all of them per member."""
        self.log += [(member, a) for a in actions]
        forced, notes = self.group.after(member, actions)
        for m, acts in forced.items():
            self.log += [(m, a) for a in acts]
        self.notes += notes
        states = set(self.states().values())
        if State.INIT not in states:  # the invariant: a node's members are MASTER together
            assert State.MASTER not in states or states == {State.MASTER}, self.states()
        out = {member: list(actions)}
        for m, acts in forced.items():
            out.setdefault(m, []).extend(acts)
        return out

    def start(self) -> None:
        for name, fsm in self.fsms.items():
            self.run(name, fsm.start())

    def states(self) -> dict[str, State]:
        return {n: f.state for n, f in self.fsms.items()}

    def timer(self, member: str) -> dict[str, list[Action]]:
        """Move the clock to `member`'s deadline and fire it."""
        deadline = self.fsms[member].deadline
        assert deadline is not None, f"{member} has no timer"
        self.clock.now = max(self.clock.now, deadline)
        return self.run(member, self.fsms[member].on_timer())

    def advert(self, member: str, priority: int, source: Any = PEER) -> dict[str, list[Action]]:
        return self.run(member, self.fsms[member].on_advert(priority, source, 100))

    def fault(self, member: str, active: bool, name: str = LINK) -> dict[str, list[Action]]:
        return self.run(member, self.fsms[member].set_fault(name, active))

    def master(self) -> None:
        """Start and let every member's down timer run out: the group is MASTER."""
        self.start()
        for name in self.fsms:
            if self.fsms[name].state is State.BACKUP:
                self.timer(name)
        assert set(self.states().values()) == {State.MASTER}
        self.notes.clear()
        self.log.clear()


def notes_of(acts: list[Action]) -> list[Notify]:
    return [a for a in acts if isinstance(a, Notify)]


def mdi(priority: int = 100) -> int:
    return master_down_interval_us(3, priority, S)


# --- start and the two timers ------------------------------------------------------------------

def test_group_backup_only_when_every_member_started() -> None:
    node = Node()
    node.run("VI_1", node.fsms["VI_1"].start())
    assert node.group.state is State.INIT and node.notes == []
    node.run("VI_2", node.fsms["VI_2"].start())
    assert node.group.state is State.BACKUP
    assert [(n.state, n.previous) for n in node.notes] == [(State.BACKUP, State.INIT)]
    assert node.notes[0].reason == "VI_2: startup"


def test_first_timer_waits_second_timer_makes_both_master() -> None:
    node = Node(per={"VI_2": {"priority": 90}})  # VI_2's Master_Down_Interval is longer
    node.start()
    first = node.timer("VI_1")
    assert first == {"VI_1": []}  # ready, but alone: no advert, no VIPs
    assert node.states() == {"VI_1": State.BACKUP, "VI_2": State.BACKUP}
    assert node.fsms["VI_1"].ready and node.group.waiting() == ["VI_1"]
    assert node.fsms["VI_1"].deadline is None  # it waits for the group, not for a timer
    assert node.clock.now == 1_000 * S + mdi(100)
    second = node.timer("VI_2")
    assert node.clock.now == 1_000 * S + mdi(90)
    assert node.states() == {"VI_1": State.MASTER, "VI_2": State.MASTER}
    for name, prio in (("VI_1", 100), ("VI_2", 90)):
        acts = second[name]
        assert acts[:3] == [AddVips(), SendAdvert(prio), SendGarp(5)], acts
        assert notes_of(acts)[0].reason == \
            f"{REASON_DOWN_TIMER}; sync group G: every member ready"
    assert [n.state for n in node.notes] == [State.BACKUP, State.MASTER]
    assert node.group.waiting() == []


def test_ready_member_waits_while_the_other_hears_a_master() -> None:
    node = Node()
    node.start()
    node.timer("VI_1")
    # VI_2 keeps hearing a higher-priority master: it never gets ready, VI_1 never takes over
    for _ in range(20):
        node.clock.now += S
        assert node.advert("VI_2", 150) == {"VI_2": []}
    assert node.states() == {"VI_1": State.BACKUP, "VI_2": State.BACKUP}
    assert node.fsms["VI_1"].ready and not node.fsms["VI_2"].ready
    # that master resigns: VI_2 is ready after Skew_Time, and the group goes MASTER whole
    resigned = node.clock.now
    node.advert("VI_2", 0)
    node.timer("VI_2")
    assert node.clock.now - resigned == skew_time_us(3, 100, S)
    assert node.states() == {"VI_1": State.MASTER, "VI_2": State.MASTER}
    assert node.group.state is State.MASTER


def test_ready_member_that_hears_a_master_is_no_longer_ready() -> None:
    node = Node()
    node.start()
    node.timer("VI_1")
    node.advert("VI_1", 150)  # a master appears on VI_1's VRID
    assert not node.fsms["VI_1"].ready
    assert node.fsms["VI_1"].deadline == node.clock.now + mdi()
    node.clock.now += S // 2
    node.advert("VI_1", 150)
    node.timer("VI_2")  # VI_2 ready now; VI_1 is not: nobody becomes master
    assert node.states() == {"VI_1": State.BACKUP, "VI_2": State.BACKUP}
    assert node.group.waiting() == ["VI_2"]


def test_ready_member_preempting_a_lower_priority_stays_ready() -> None:
    node = Node()
    node.start()
    node.timer("VI_1")
    node.advert("VI_1", 50, LOW)  # a lower-priority master: VI_1 still wants to take over
    assert node.fsms["VI_1"].ready
    node.timer("VI_2")
    assert node.states() == {"VI_1": State.MASTER, "VI_2": State.MASTER}


def test_three_members_become_master_with_the_last_one() -> None:
    node = Node(("VI_1", "VI_2", "VI_3"), per={"VI_2": {"priority": 90},
                                               "VI_3": {"priority": 80}})
    node.start()
    node.timer("VI_1")
    node.timer("VI_2")
    assert set(node.states().values()) == {State.BACKUP}
    assert node.group.waiting() == ["VI_1", "VI_2"]
    node.timer("VI_3")
    assert set(node.states().values()) == {State.MASTER}


# --- faults ------------------------------------------------------------------------------------

def test_member_fault_in_master_takes_the_group_to_fault() -> None:
    node = Node()
    node.master()
    out = node.fault("VI_2", True)
    assert out["VI_2"][:2] == [SendAdvert(0), RemoveVips()]
    assert notes_of(out["VI_2"])[0].reason == f"fault: {LINK}"
    assert out["VI_1"] == [SendAdvert(0), RemoveVips(),
                           Notify("VI_1", State.FAULT, State.MASTER, "sync group G: VI_2 is FAULT")]
    assert str(out["VI_1"][2]) == "vrrp VI_1: entering FAULT (sync group G: VI_2 is FAULT)"
    assert node.states() == {"VI_1": State.FAULT, "VI_2": State.FAULT}
    assert node.fsms["VI_1"].faults == {fault_name("G", "VI_2")}
    assert node.group.own_faults("VI_1") == frozenset()
    assert node.group.own_faults("VI_2") == {LINK}
    assert node.notes == [GroupNotify("G", State.FAULT, State.MASTER, f"VI_2: fault: {LINK}")]
    assert str(node.notes[0]) == \
        f"vrrp sync group G: entering FAULT (VI_2: fault: {LINK})"
    assert node.group.forced["VI_1"] == "sync group G: VI_2 is FAULT"


def test_member_fault_in_backup_takes_the_group_to_fault_silently() -> None:
    node = Node()
    node.start()
    out = node.fault("VI_1", True)
    assert out["VI_2"] == [Notify("VI_2", State.FAULT, State.BACKUP,
                                  "sync group G: VI_1 is FAULT")]  # no advert: not master
    assert node.group.state is State.FAULT
    # a FAULT member ignores adverts and timers
    assert node.advert("VI_2", 50, LOW) == {"VI_2": []}
    assert node.fsms["VI_2"].deadline is None


def test_recovery_brings_both_back_to_backup_then_master_together() -> None:
    node = Node()
    node.master()
    node.fault("VI_1", True)
    node.clock.now += 5 * S
    out = node.fault("VI_1", False)
    assert notes_of(out["VI_1"])[0].reason == f"fault cleared: {LINK}"
    assert notes_of(out["VI_2"]) == [Notify("VI_2", State.BACKUP, State.FAULT,
                                            "sync group G: VI_1 left FAULT")]
    assert node.states() == {"VI_1": State.BACKUP, "VI_2": State.BACKUP}
    assert node.fsms["VI_2"].faults == frozenset()
    assert node.group.state is State.BACKUP
    node.timer("VI_1")
    assert node.states()["VI_1"] is State.BACKUP
    node.timer("VI_2")
    assert node.states() == {"VI_1": State.MASTER, "VI_2": State.MASTER}
    assert [n.state for n in node.notes] == [State.FAULT, State.BACKUP, State.MASTER]


def test_overlapping_faults_keep_the_group_in_fault_until_the_last_clears() -> None:
    node = Node()
    node.master()
    node.fault("VI_1", True)
    node.fault("VI_2", True, "service web has no healthy backend")
    assert node.fsms["VI_1"].faults == {LINK, fault_name("G", "VI_2")}
    out = node.fault("VI_1", False)  # VI_1's own fault clears; VI_2's does not
    assert out == {"VI_1": []}  # nothing moves: VI_1 still holds VI_2's fault
    assert node.states() == {"VI_1": State.FAULT, "VI_2": State.FAULT}
    assert node.fsms["VI_1"].faults == {fault_name("G", "VI_2")}
    assert node.fsms["VI_2"].faults == {"service web has no healthy backend"}
    node.run("VI_2", node.fsms["VI_2"].set_fault("service web has no healthy backend", False))
    assert node.states() == {"VI_1": State.BACKUP, "VI_2": State.BACKUP}
    assert node.fsms["VI_1"].faults == frozenset() == node.fsms["VI_2"].faults
    assert [n.state for n in node.notes] == [State.FAULT, State.BACKUP]


def test_a_member_started_after_the_fault_starts_in_fault() -> None:
    node = Node()
    node.run("VI_1", node.fsms["VI_1"].set_fault(LINK, True))
    node.run("VI_1", node.fsms["VI_1"].start())
    assert node.states() == {"VI_1": State.FAULT, "VI_2": State.INIT}
    node.run("VI_2", node.fsms["VI_2"].start())
    assert node.states() == {"VI_1": State.FAULT, "VI_2": State.FAULT}
    assert node.group.state is State.FAULT


# --- a member preempted, a lower priority, the owner ------------------------------------------

def test_member_preempted_by_a_peer_takes_the_other_down() -> None:
    node = Node()
    node.master()
    out = node.advert("VI_1", 150)
    assert out["VI_1"][0] == RemoveVips()
    assert out["VI_2"][:2] == [SendAdvert(0), RemoveVips()]
    assert notes_of(out["VI_2"]) == [Notify("VI_2", State.BACKUP, State.MASTER,
                                            "sync group G: VI_1 is BACKUP")]
    assert node.states() == {"VI_1": State.BACKUP, "VI_2": State.BACKUP}
    assert node.group.state is State.BACKUP
    # VI_2 hears nobody: ready after its down timer, but VI_1 has a master: the group waits
    node.timer("VI_2")
    assert node.states()["VI_2"] is State.BACKUP and node.group.waiting() == ["VI_2"]


def test_equal_priority_from_a_higher_address_also_demotes() -> None:
    node = Node()
    node.master()
    node.advert("VI_2", 100, PEER)
    assert node.states() == {"VI_1": State.BACKUP, "VI_2": State.BACKUP}


def test_lower_priority_advert_changes_nothing_in_the_group() -> None:
    node = Node()
    node.master()
    out = node.advert("VI_1", 50, LOW)
    assert set(out) == {"VI_1"}  # the group forced nothing
    assert SendAdvert(100) in out["VI_1"]
    assert node.states() == {"VI_1": State.MASTER, "VI_2": State.MASTER}
    assert node.notes == []


def test_a_resigning_peer_on_one_member_changes_nothing() -> None:
    node = Node()
    node.master()
    out = node.advert("VI_1", 0)
    assert set(out) == {"VI_1"} and out["VI_1"] == [SendAdvert(100)]


def test_the_address_owner_pulls_the_other_member() -> None:
    node = Node(per={"VI_1": {"priority": 255}})
    node.run("VI_1", node.fsms["VI_1"].start())
    assert node.states() == {"VI_1": State.MASTER, "VI_2": State.INIT}
    out = node.run("VI_2", node.fsms["VI_2"].start())
    assert node.states() == {"VI_1": State.MASTER, "VI_2": State.MASTER}
    assert notes_of(out["VI_2"])[-1].reason == "sync group G: VI_1 is MASTER"
    assert node.group.state is State.MASTER


def test_shutdown_takes_the_group_to_init_when_the_last_member_stops() -> None:
    node = Node()
    node.master()
    out = node.run("VI_1", node.fsms["VI_1"].shutdown())
    assert set(out) == {"VI_1"}  # stopping is not BACKUP: VI_2 is not forced
    assert node.group.state is State.MASTER
    node.run("VI_2", node.fsms["VI_2"].shutdown())
    assert node.notes == [GroupNotify("G", State.INIT, State.MASTER, "every member stopped")]


def test_a_member_outside_the_group_is_refused() -> None:
    clock = FakeClock()
    group = SyncGroup("G", ("VI_1", "VI_2"), clock)
    lone = VrrpFsm(FsmConfig(name="VI_1", vrid=51, priority=100, address=OURS), clock)
    with pytest.raises(ValueError, match="not configured as a member"):
        group.attach("VI_1", lone)
    with pytest.raises(KeyError):
        group.attach("VI_3", lone)
    with pytest.raises(ValueError):
        SyncGroup("G", ("VI_1", "VI_1"), clock)


def test_without_a_group_the_timer_still_makes_master() -> None:
    clock = FakeClock()
    fsm = VrrpFsm(FsmConfig(name="VI_1", vrid=51, priority=100, address=OURS), clock)
    fsm.start()
    deadline = fsm.deadline
    assert deadline is not None
    clock.now = deadline
    fsm.on_timer()
    assert fsm.state is State.MASTER and not fsm.ready


# --- two nodes on a wire -----------------------------------------------------------------------

class Wire:
    """Two nodes (a: priority 100, b: 90) whose members exchange adverts by VRID."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.a = Node(address=OURS, clock=self.clock)
        self.b = Node(address=LOW, clock=self.clock, priority=90)
        self.deliveries = 0

    def deliver(self, sender: Node, out: dict[str, list[Action]]) -> None:
        other = self.b if sender is self.a else self.a
        for name, acts in out.items():
            for act in acts:
                if isinstance(act, SendAdvert):
                    self.deliveries += 1
                    assert self.deliveries < 10_000
                    addr = sender.fsms[name].config.address
                    self.deliver(other, other.run(
                        name, other.fsms[name].on_advert(act.priority, addr, 100)))

    def step(self) -> None:
        """Fire the earliest timer of either node."""
        due = [(f.deadline, node, name) for node in (self.a, self.b)
               for name, f in node.fsms.items() if f.deadline is not None]
        deadline, node, name = min(due, key=lambda d: (d[0], d[2]))
        self.clock.now = max(self.clock.now, deadline)
        self.deliver(node, node.run(name, node.fsms[name].on_timer()))

    def until(self, a: State, b: State, limit_us: int) -> int:
        """Step until every member of a is in `a` and of b in `b`; the time it took."""
        start = self.clock.now
        while not (set(self.a.states().values()) == {a} and set(self.b.states().values()) == {b}):
            assert self.clock.now - start <= limit_us, (self.a.states(), self.b.states())
            self.step()
        return self.clock.now - start

    def fault(self, node: Node, member: str, active: bool) -> None:
        self.deliver(node, node.fault(member, active))


def test_two_nodes_the_group_moves_whole_and_comes_back_whole() -> None:
    wire = Wire()
    wire.a.start()
    wire.b.start()
    wire.until(State.MASTER, State.BACKUP, 5 * S)
    assert wire.a.group.state is State.MASTER and wire.b.group.state is State.BACKUP
    # a's VI_2 loses its interface: a goes FAULT whole; both priority-0 adverts make b take
    # both members after b's Skew_Time
    wire.fault(wire.a, "VI_2", True)
    took = wire.until(State.FAULT, State.MASTER, 5 * S)
    assert took == skew_time_us(3, 90, S)
    assert wire.b.group.state is State.MASTER
    # recovery: a is BACKUP, hears b's lower priority, preempts with both members together
    wire.clock.now += 3 * S
    wire.fault(wire.a, "VI_2", False)
    assert set(wire.a.states().values()) == {State.BACKUP}
    took = wire.until(State.MASTER, State.BACKUP, 10 * S)
    assert took <= mdi(100)
    # b took and gave back both members' VIPs (Node.run checked after every event that a
    # node's members were never MASTER apart)
    assert sorted(m for m, a in wire.b.log if isinstance(a, AddVips)) == ["VI_1", "VI_2"]
    assert sorted(m for m, a in wire.b.log if isinstance(a, RemoveVips)) == \
        ["VI_1", "VI_1", "VI_2", "VI_2"]  # at its start, and when a came back


def test_two_nodes_a_peer_without_the_second_member_cannot_split_the_group() -> None:
    """b's VI_1 has a higher priority: b's VI_1 wants to preempt, but b's VI_2 hears a's
    higher VI_2, so b's group never goes MASTER, and a keeps both members."""
    wire = Wire()
    wire.b = Node(address=LOW, clock=wire.clock, per={"VI_1": {"priority": 150},
                                                      "VI_2": {"priority": 90}})
    wire.a.start()
    wire.a.timer("VI_1")
    wire.deliver(wire.a, wire.a.timer("VI_2"))
    wire.b.start()
    for _ in range(200):
        wire.step()
    assert set(wire.a.states().values()) == {State.MASTER}
    assert set(wire.b.states().values()) == {State.BACKUP}
    assert wire.b.group.waiting() == ["VI_1"]
