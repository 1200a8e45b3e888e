"""Test the VRRP state machine: one row per RFC 5798 6.4 / FAULT transition, then FSMs on a wire.

Time is a fake microsecond clock; nothing sleeps. The wire tests connect two (or more) FSMs
through the real codec (encode, then decode with the receiver's expectations) and check
convergence to one master and takeover after exactly Master_Down_Interval or Skew_Time.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
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
from l4lb.vrrp.packet import (
    VRRP_GROUP_V4,
    VRRP_GROUP_V6,
    Advert,
    Expect,
    IPAddress,
    decode_ipv4,
    decode_ipv6,
    encode_ipv4,
    encode_vrrp,
    next_ip_id,
)

S = 1_000_000  # microseconds per second
OURS = ipaddress.IPv4Address("10.0.0.5")
PEER_HIGH_ADDR = ipaddress.IPv4Address("10.0.0.9")  # numerically above OURS
PEER_LOW_ADDR = ipaddress.IPv4Address("10.0.0.2")  # numerically below OURS
START = 1_000 * S  # an arbitrary non-zero clock origin


class FakeClock:
    """Monotonic microseconds that move only when a test says so."""

    def __init__(self, now: int = START) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, us: int) -> None:
        assert us >= 0
        self.now += us


def make(state: State, **overrides: Any) -> tuple[VrrpFsm, FakeClock]:
    """An FSM driven into `state` the regular way (events only), and its clock."""
    cfg: dict[str, Any] = {"name": "VI_1", "vrid": 51, "priority": 100, "address": OURS}
    cfg.update(overrides)
    clock = FakeClock()
    fsm = VrrpFsm(FsmConfig(**cfg), clock)
    if state is State.INIT:
        return fsm, clock
    fsm.start()
    if state is State.MASTER and fsm.state is State.BACKUP:
        deadline = fsm.deadline
        assert deadline is not None
        clock.now = deadline
        fsm.on_timer()
    if state is State.FAULT:
        fsm.set_fault("eth1", True)
    assert fsm.state is state
    clock.advance(250_000)  # the event under test happens a while after entering the state
    return fsm, clock


def mdi(priority: int = 100, interval_us: int = S, version: int = 3) -> int:
    return master_down_interval_us(version, priority, interval_us)


def skew(priority: int = 100, interval_us: int = S, version: int = 3) -> int:
    return skew_time_us(version, priority, interval_us)


def notify(state: State, previous: State, reason: str) -> Notify:
    return Notify("VI_1", state, previous, reason)


GARP5 = SendGarp(5)


@dataclass(frozen=True)
class Row:
    """One transition: FSM in `start` (built with `cfg`), `event`, then what must hold."""

    id: str  # test id
    start: State  # state before the event
    event: Callable[[VrrpFsm], list[Action]]  # the event
    end: State  # state after the event
    actions: list[Action]  # exactly the actions returned, in order
    deadline: int | str | None  # µs after the event, None (no timer), or "unchanged"
    cfg: dict[str, Any] = field(default_factory=dict)  # FsmConfig overrides
    prep: Callable[[VrrpFsm], object] | None = None  # before `start` is reached (e.g. a fault)


def advert(priority: int, source: IPAddress = PEER_HIGH_ADDR,
           interval_cs: int = 100) -> Callable[[VrrpFsm], list[Action]]:
    return lambda fsm: fsm.on_advert(priority, source, interval_cs)


def timer(fsm: VrrpFsm) -> list[Action]:
    """Advance the clock to the deadline (it must exist), then fire."""
    deadline = fsm.deadline
    assert deadline is not None
    clock = fsm._clock
    assert isinstance(clock, FakeClock)
    clock.now = deadline
    return fsm.on_timer()


ROWS = [
    # --- Initialize (RFC 5798 6.4.1) --------------------------------------------------------
    Row("init-startup-backup", State.INIT, lambda f: f.start(), State.BACKUP,
        [RemoveVips(), notify(State.BACKUP, State.INIT, "startup")], mdi()),
    Row("init-startup-owner-master", State.INIT, lambda f: f.start(), State.MASTER,
        [AddVips(), SendAdvert(255), GARP5,
         notify(State.MASTER, State.INIT, "address owner (priority 255)")], S,
        cfg={"priority": 255}),
    Row("init-startup-with-fault", State.INIT, lambda f: f.start(), State.FAULT,
        [RemoveVips(), notify(State.FAULT, State.INIT, "fault: eth1")], None,
        prep=lambda f: f.set_fault("eth1", True)),
    Row("init-advert-ignored", State.INIT, advert(200), State.INIT, [], None),
    Row("init-shutdown-noop", State.INIT, lambda f: f.shutdown(), State.INIT, [], None),
    # --- Backup (RFC 5798 6.4.2) ------------------------------------------------------------
    Row("backup-shutdown", State.BACKUP, lambda f: f.shutdown(), State.INIT,
        [notify(State.INIT, State.BACKUP, "shutdown")], None),
    Row("backup-down-timer-master", State.BACKUP, timer, State.MASTER,
        [AddVips(), SendAdvert(100), GARP5,
         notify(State.MASTER, State.BACKUP, REASON_DOWN_TIMER)], S),
    Row("backup-priority0-skew", State.BACKUP, advert(0), State.BACKUP, [], skew()),
    Row("backup-higher-resets-and-learns-interval", State.BACKUP,
        advert(150, interval_cs=50), State.BACKUP, [], mdi(100, 500_000)),
    Row("backup-equal-resets", State.BACKUP, advert(100, PEER_LOW_ADDR), State.BACKUP, [],
        mdi()),
    Row("backup-lower-preempt-discards", State.BACKUP, advert(90), State.BACKUP, [],
        "unchanged"),
    Row("backup-lower-nopreempt-resets", State.BACKUP, advert(90, interval_cs=200),
        State.BACKUP, [], mdi(100, 2 * S), cfg={"preempt": False}),
    Row("backup-v2-keeps-own-interval", State.BACKUP, advert(150, interval_cs=300),
        State.BACKUP, [], mdi(100, S, version=2), cfg={"version": 2}),
    Row("backup-own-echo-ignored", State.BACKUP, advert(200, OURS), State.BACKUP, [],
        "unchanged"),
    Row("backup-fault", State.BACKUP, lambda f: f.set_fault("eth1", True), State.FAULT,
        [notify(State.FAULT, State.BACKUP, "fault: eth1")], None),
    # --- Master (RFC 5798 6.4.3) ------------------------------------------------------------
    Row("master-shutdown-priority0", State.MASTER, lambda f: f.shutdown(), State.INIT,
        [SendAdvert(0), RemoveVips(), notify(State.INIT, State.MASTER, "shutdown")], None),
    Row("master-adver-timer", State.MASTER, timer, State.MASTER, [SendAdvert(100)], S),
    Row("master-priority0-answers", State.MASTER, advert(0), State.MASTER,
        [SendAdvert(100)], S),
    Row("master-higher-steps-down", State.MASTER, advert(110, interval_cs=200),
        State.BACKUP,
        [RemoveVips(), notify(State.BACKUP, State.MASTER,
                              "higher priority advert from 10.0.0.9 (110 > 100)")],
        mdi(100, 2 * S)),
    Row("master-equal-higher-address-steps-down", State.MASTER, advert(100, PEER_HIGH_ADDR),
        State.BACKUP,
        [RemoveVips(), notify(State.BACKUP, State.MASTER,
                              "equal priority advert from higher address 10.0.0.9")], mdi()),
    Row("master-equal-lower-address-reasserts", State.MASTER, advert(100, PEER_LOW_ADDR),
        State.MASTER, [SendAdvert(100), GARP5], S),
    Row("master-lower-reasserts-with-garp", State.MASTER, advert(90), State.MASTER,
        [SendAdvert(100), GARP5], S),
    Row("master-lower-quiet-when-configured", State.MASTER, advert(90), State.MASTER, [],
        "unchanged", cfg={"lower_prio_no_advert": True, "garp_lower_prio_repeat": 0}),
    Row("master-v2-higher-keeps-own-interval", State.MASTER, advert(110, interval_cs=300),
        State.BACKUP,
        [RemoveVips(), notify(State.BACKUP, State.MASTER,
                              "higher priority advert from 10.0.0.9 (110 > 100)")],
        mdi(100, S, version=2), cfg={"version": 2}),
    Row("master-fault-resigns", State.MASTER, lambda f: f.set_fault("eth1", True),
        State.FAULT,
        [SendAdvert(0), RemoveVips(), notify(State.FAULT, State.MASTER, "fault: eth1")],
        None),
    # --- Fault (keepalived) -----------------------------------------------------------------
    Row("fault-cleared-backup", State.FAULT, lambda f: f.set_fault("eth1", False),
        State.BACKUP, [notify(State.BACKUP, State.FAULT, "fault cleared: eth1")], mdi()),
    Row("fault-cleared-owner-master", State.FAULT, lambda f: f.set_fault("eth1", False),
        State.MASTER,
        [AddVips(), SendAdvert(255), GARP5,
         notify(State.MASTER, State.FAULT,
                "fault cleared: eth1; address owner (priority 255)")], S,
        cfg={"priority": 255}),
    Row("fault-advert-ignored", State.FAULT, advert(0), State.FAULT, [], None),
    Row("fault-second-fault-no-change", State.FAULT, lambda f: f.set_fault("eth2", True),
        State.FAULT, [], None),
    Row("fault-shutdown", State.FAULT, lambda f: f.shutdown(), State.INIT,
        [notify(State.INIT, State.FAULT, "shutdown")], None),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_transition(row: Row) -> None:
    fsm, clock = make(State.INIT if row.prep else row.start, **row.cfg)
    if row.prep:
        row.prep(fsm)
        assert fsm.state is row.start
    before = fsm.deadline
    actions = row.event(fsm)
    assert actions == row.actions
    assert fsm.state is row.end
    if row.deadline == "unchanged":
        assert fsm.deadline == before
    elif row.deadline is None:
        assert fsm.deadline is None
    else:
        assert isinstance(row.deadline, int)
        assert fsm.deadline == clock.now + row.deadline
    notices = [a for a in actions if isinstance(a, Notify)]
    if row.end is not row.start:
        assert len(notices) == 1 and fsm.reason == notices[0].reason
        assert fsm.since_us == clock.now
    else:
        assert notices == []


def test_every_state_pair_of_the_rfc_diagram_is_covered() -> None:
    pairs = {(r.start, r.end) for r in ROWS}
    assert pairs >= {(State.INIT, State.BACKUP), (State.INIT, State.MASTER),
                     (State.BACKUP, State.MASTER), (State.MASTER, State.BACKUP),
                     (State.BACKUP, State.INIT), (State.MASTER, State.INIT),
                     (State.INIT, State.FAULT), (State.BACKUP, State.FAULT),
                     (State.MASTER, State.FAULT), (State.FAULT, State.BACKUP),
                     (State.FAULT, State.MASTER), (State.FAULT, State.INIT)}


# --- timer arithmetic -----------------------------------------------------------------------


def test_skew_and_master_down_interval_match_the_rfcs_and_keepalived() -> None:
    # v3: Skew = (256 - prio) * Master_Adver_Interval / 256, in microseconds, floored
    assert skew(100, S) == 609_375
    assert skew(90, S) == 648_437  # 648437.5 floored, as keepalived's (p * cs * 625) / 16
    assert skew(255, S) == 3_906
    assert skew(90, 10_000) == 6_484  # 1 cs interval
    assert mdi(100, S) == 3_609_375
    assert mdi(90, 500_000) == 1_824_218
    # v2: Skew = (256 - prio) / 256 seconds, independent of the interval
    assert skew(90, 3 * S, version=2) == 648_437
    assert mdi(90, 3 * S, version=2) == 9_648_437
    assert skew(90, 3 * S, version=3) == 1_945_312


def test_notify_renders_the_log_line() -> None:
    fsm, _clock = make(State.BACKUP)
    actions = timer(fsm)
    assert str(actions[-1]) == "vrrp VI_1: entering MASTER (master down timer expired)"
    assert str(State.MASTER) == "MASTER"


def test_early_timer_call_is_harmless() -> None:
    for state in (State.BACKUP, State.MASTER):
        fsm, clock = make(state)
        deadline = fsm.deadline
        assert deadline is not None
        clock.now = deadline - 1
        assert fsm.on_timer() == []
        assert fsm.state is state and fsm.deadline == deadline


def test_priority0_takeover_reason_names_the_resigning_master() -> None:
    fsm, _clock = make(State.BACKUP)
    fsm.on_advert(0, PEER_HIGH_ADDR, 100)
    actions = timer(fsm)
    assert fsm.state is State.MASTER
    assert actions[-1] == notify(State.MASTER, State.BACKUP,
                                 "10.0.0.9 resigned (priority 0 advert), skew time expired")


def test_preempting_takeover_reason_names_the_lower_master() -> None:
    fsm, _clock = make(State.BACKUP)
    fsm.on_advert(90, PEER_LOW_ADDR, 100)
    actions = timer(fsm)
    assert fsm.reason == (f"{REASON_DOWN_TIMER}, preempting lower priority 10.0.0.2 "
                          "(90 < 100)")
    assert isinstance(actions[-1], Notify)


def test_master_sends_second_garp_burst_after_garp_delay() -> None:
    fsm, clock = make(State.BACKUP, garp_delay_us=2_500_000)
    entered = timer(fsm)
    assert GARP5 in entered
    t0 = clock.now
    seen: list[tuple[int, list[Action]]] = []
    while clock.now < t0 + 4 * S:
        actions = timer(fsm)
        seen.append((clock.now - t0, actions))
    assert seen == [(S, [SendAdvert(100)]), (2 * S, [SendAdvert(100)]),
                    (2_500_000, [GARP5]), (3 * S, [SendAdvert(100)]),
                    (4 * S, [SendAdvert(100)])]


def test_second_garp_burst_is_cancelled_by_stepping_down() -> None:
    fsm, clock = make(State.MASTER)
    fsm.on_advert(200, PEER_HIGH_ADDR, 100)
    assert fsm.state is State.BACKUP
    assert fsm.deadline == clock.now + mdi()  # only the down timer is left


def test_lower_priority_master_gets_a_delayed_second_burst() -> None:
    fsm, clock = make(State.MASTER, garp_delay_us=0, garp_lower_prio_delay_us=1_500_000)
    t0 = clock.now
    assert fsm.on_advert(90, PEER_LOW_ADDR, 100) == [SendAdvert(100), GARP5]
    assert timer(fsm) == [SendAdvert(100)]
    assert clock.now == t0 + S
    assert timer(fsm) == [GARP5]
    assert clock.now == t0 + 1_500_000


def test_no_garp_when_repeat_is_zero() -> None:
    fsm, clock = make(State.BACKUP, garp_repeat=0)
    actions = timer(fsm)
    assert not any(isinstance(a, SendGarp) for a in actions)
    assert fsm.deadline == clock.now + S  # no second-burst timer either


def test_preempt_delay_holds_off_takeover() -> None:
    """Lower-priority adverts reset the timer until preempt_delay after the first one."""
    fsm, clock = make(State.BACKUP, preempt_delay_us=10 * S)
    t0 = clock.now
    became_master_at = None
    for k in range(30):
        clock.now = t0 + k * S
        if fsm.deadline is not None and fsm.deadline <= clock.now:
            timer(fsm)
            became_master_at = clock.now
            break
        fsm.on_advert(90, PEER_LOW_ADDR, 100)
    if became_master_at is None:
        deadline = fsm.deadline
        assert deadline is not None
        clock.now = deadline
        fsm.on_timer()
        became_master_at = clock.now
    assert fsm.state is State.MASTER
    # adverts at k = 0..9 are accepted (now < t0 + 10 s), k = 10.. are discarded
    assert became_master_at == t0 + 9 * S + mdi()


def test_preempt_delay_restarts_after_a_higher_priority_master() -> None:
    fsm, clock = make(State.BACKUP, preempt_delay_us=5 * S)
    fsm.on_advert(90, PEER_LOW_ADDR, 100)  # starts the delay
    clock.advance(S)
    fsm.on_advert(120, PEER_HIGH_ADDR, 100)  # a better master: delay forgotten
    clock.advance(5 * S - 1)
    fsm.on_advert(90, PEER_LOW_ADDR, 100)  # restarts the delay, so this one is accepted
    assert fsm.deadline == clock.now + mdi()


def test_nopreempt_backup_never_takes_over_a_live_lower_master() -> None:
    fsm, clock = make(State.BACKUP, preempt=False)
    for _ in range(20):
        clock.advance(S)
        fsm.on_advert(50, PEER_LOW_ADDR, 100)
    assert fsm.state is State.BACKUP
    assert fsm.master_address == PEER_LOW_ADDR


def test_set_priority_moves_the_down_timer_by_the_skew_change() -> None:
    fsm, _clock = make(State.BACKUP)
    before = fsm.deadline
    assert before is not None
    assert fsm.set_priority(200) == []
    assert fsm.priority == 200
    assert fsm.deadline == before - skew(100) + skew(200)
    fsm.set_priority(999)
    assert fsm.priority == 254  # only the owner may use 255
    fsm.set_priority(-5)
    assert fsm.priority == 1


def test_owner_priority_never_changes() -> None:
    fsm, _clock = make(State.MASTER, priority=255)
    assert fsm.set_priority(10) == []
    assert fsm.priority == 255
    assert timer(fsm) == [SendAdvert(255)]


def test_master_advertises_its_new_priority_after_tracking_lowers_it() -> None:
    fsm, _clock = make(State.MASTER)
    fsm.set_priority(80)
    assert fsm.state is State.MASTER  # the peer decides whether to preempt
    assert timer(fsm) == [SendAdvert(80)]


def test_faults_are_counted_by_name() -> None:
    fsm, _clock = make(State.MASTER)
    fsm.set_fault("eth1", True)
    fsm.set_fault("eth2", True)
    assert fsm.faults == {"eth1", "eth2"}
    assert fsm.set_fault("eth1", False) == []
    assert str(fsm.state) == "FAULT"  # (str: keeps mypy from pinning fsm.state's type)
    assert fsm.set_fault("eth3", False) == []  # unknown name: nothing
    actions = fsm.set_fault("eth2", False)
    assert fsm.state is State.BACKUP and actions[-1] == notify(State.BACKUP, State.FAULT,
                                                               "fault cleared: eth2")


def test_restart_after_shutdown() -> None:
    fsm, clock = make(State.MASTER)
    fsm.shutdown()
    clock.advance(S)
    assert fsm.start()[-1] == notify(State.BACKUP, State.INIT, "startup")
    assert fsm.start() == []  # already started


def test_config_validation() -> None:
    base: dict[str, Any] = {"name": "VI_1", "vrid": 51, "priority": 100, "address": OURS}
    for bad in ({"name": ""}, {"vrid": 0}, {"priority": 0}, {"priority": 256},
                {"interval_cs": 0}, {"interval_cs": 4096}, {"version": 4},
                {"version": 2, "interval_cs": 50},
                {"version": 2, "address": ipaddress.IPv6Address("fe80::1")},
                {"preempt_delay_us": -1}, {"garp_repeat": -1}):
        with pytest.raises(ValueError):
            FsmConfig(**{**base, **bad})
    fsm = VrrpFsm(FsmConfig(**base), FakeClock())
    with pytest.raises(ValueError, match="family"):
        fsm.on_advert(100, ipaddress.IPv6Address("fe80::1"), 100)


# --- two (or more) FSMs on an in-memory wire ------------------------------------------------


@dataclass
class Node:
    """One simulated VRRP router: its FSM and what the I/O layer would have done."""

    fsm: VrrpFsm
    alive: bool = True  # False: crashed, sends and hears nothing, timers never fire
    vips: bool = False  # whether AddVips / RemoveVips left the VIPs on
    ip_id: int = 0  # keepalived-style IPv4 id counter
    garps: int = 0  # GARP/NA frames sent per VIP
    log: list[tuple[int, Notify]] = field(default_factory=list)  # (time, transition)
    sent: list[tuple[int, int]] = field(default_factory=list)  # (time, priority) of adverts


class Wire:
    """A shared segment: adverts are encoded, delivered after `latency_us`, decoded, fed."""

    def __init__(self, clock: FakeClock, version: int, family: int,
                 latency_us: int = 0) -> None:
        self.clock = clock
        self.version = version
        self.family = family
        self.latency_us = latency_us
        self.nodes: dict[str, Node] = {}
        self.partitioned = False  # True: packets are lost
        self._queue: list[tuple[int, int, str, bytes]] = []  # (time, seq, sender, bytes)
        self._seq = 0
        self.vip: IPAddress = (ipaddress.IPv4Address("10.99.0.100") if family == 4
                               else ipaddress.IPv6Address("fd00:99::100"))

    def add(self, name: str, priority: int, address: str, **cfg: Any) -> Node:
        config = FsmConfig(name=name, vrid=51, priority=priority,
                           address=ipaddress.ip_address(address), version=self.version, **cfg)
        node = Node(VrrpFsm(config, self.clock))
        self.nodes[name] = node
        return node

    def do(self, name: str, actions: list[Action]) -> None:
        """Execute what node `name` asked for, like the I/O layer will."""
        node = self.nodes[name]
        for action in actions:
            if isinstance(action, SendAdvert):
                node.sent.append((self.clock.now, action.priority))
                self._send(name, node, action.priority)
            elif isinstance(action, AddVips):
                node.vips = True
            elif isinstance(action, RemoveVips):
                node.vips = False
            elif isinstance(action, SendGarp):
                node.garps += action.repeat
            else:
                node.log.append((self.clock.now, action))

    def _send(self, name: str, node: Node, priority: int) -> None:
        cfg = node.fsm.config
        group: IPAddress = VRRP_GROUP_V4 if self.family == 4 else VRRP_GROUP_V6
        adv = Advert(version=cfg.version, vrid=cfg.vrid, priority=priority,
                     interval_cs=cfg.interval_cs, addresses=(self.vip,), src=cfg.address,
                     dst=group)
        if self.family == 4:
            node.ip_id = next_ip_id(node.ip_id)
            data = encode_ipv4(adv, ident=node.ip_id)
        else:
            data = encode_vrrp(adv)
        if not self.partitioned:
            self._seq += 1
            heapq.heappush(self._queue, (self.clock.now + self.latency_us, self._seq, name, data))

    def _deliver(self, sender: str, data: bytes) -> None:
        src = self.nodes[sender].fsm.config.address
        for name, node in self.nodes.items():
            if name == sender or not node.alive:
                continue
            cfg = node.fsm.config
            expect = Expect(vrid=cfg.vrid, version=cfg.version,
                            interval_cs=cfg.interval_cs if cfg.version == 2 else None,
                            addresses=frozenset({self.vip}))
            if self.family == 4:
                adv = decode_ipv4(data, expect)
            else:
                assert isinstance(src, ipaddress.IPv6Address)
                adv = decode_ipv6(data, src=src, dst=VRRP_GROUP_V6, hop_limit=255,
                                  expect=expect)
            self.do(name, node.fsm.on_packet(adv))

    def run_until(self, end: int) -> None:
        """Advance time event by event (deliveries first, then timers) until `end`."""
        for _ in range(100_000):
            deadlines = [n.fsm.deadline for n in self.nodes.values()
                         if n.alive and n.fsm.deadline is not None]
            candidates = [t for t in deadlines if t is not None]
            if self._queue:
                candidates.append(self._queue[0][0])
            nxt = min(candidates, default=end + 1)
            if nxt > end:
                self.clock.now = end
                return
            self.clock.now = max(self.clock.now, nxt)
            while self._queue and self._queue[0][0] <= self.clock.now:
                _, _, sender, data = heapq.heappop(self._queue)
                self._deliver(sender, data)
            for name, node in self.nodes.items():
                due = node.fsm.deadline
                if node.alive and due is not None and due <= self.clock.now:
                    self.do(name, node.fsm.on_timer())
            self.check()
        raise AssertionError("simulation did not reach its end time")

    def check(self) -> None:
        for node in self.nodes.values():
            if node.alive:
                assert node.vips == (node.fsm.state is State.MASTER)

    def masters(self) -> list[str]:
        return [n for n, node in self.nodes.items()
                if node.alive and node.fsm.state is State.MASTER]

    def start(self, name: str) -> None:
        self.do(name, self.nodes[name].fsm.start())

    def kill(self, name: str) -> None:
        """Crash: no priority-0 advert, nothing more sent or heard (VIPs die with the host)."""
        self.nodes[name].alive = False


WIRES = [(2, 4), (3, 4), (3, 6)]
ADDRS = {4: ("10.99.0.11", "10.99.0.12"), 6: ("fe80::99:ff:fe00:11", "fe80::99:ff:fe00:12")}


def pair(version: int, family: int, **cfg: Any) -> tuple[Wire, FakeClock]:
    clock = FakeClock()
    wire = Wire(clock, version, family)
    wire.add("lb1", 100, ADDRS[family][0], **cfg)
    wire.add("lb2", 90, ADDRS[family][1], **cfg)
    return wire, clock


@pytest.mark.parametrize(("version", "family"), WIRES)
def test_pair_started_together_converges_to_one_master(version: int, family: int) -> None:
    wire, _clock = pair(version, family)
    wire.start("lb1")
    wire.start("lb2")
    wire.run_until(START + 20 * S)
    assert wire.masters() == ["lb1"]
    lb1, lb2 = wire.nodes["lb1"], wire.nodes["lb2"]
    assert [n.state for _, n in lb2.log] == [State.BACKUP]  # lb2 never became master
    assert lb1.log[-1] == (START + mdi(100, S, version),
                           Notify("lb1", State.MASTER, State.BACKUP, REASON_DOWN_TIMER))
    assert lb2.fsm.master_address == lb1.fsm.config.address
    # the master advertises once per interval from then on
    times = [t for t, _ in lb1.sent]
    assert all(b - a == S for a, b in itertools.pairwise(times))


@pytest.mark.parametrize(("version", "family"), WIRES)
def test_higher_priority_started_later_preempts(version: int, family: int) -> None:
    wire, clock = pair(version, family)
    wire.start("lb2")
    wire.run_until(START + 10 * S)
    assert wire.masters() == ["lb2"]
    wire.start("lb1")
    started = clock.now
    wire.run_until(START + 30 * S)
    assert wire.masters() == ["lb1"]
    # lb1 discarded lb2's lower-priority adverts and took over when its down timer ran out
    t, entered = wire.nodes["lb1"].log[-1]
    assert t == started + mdi(100, S, version)
    assert entered.reason.startswith(f"{REASON_DOWN_TIMER}, preempting lower priority")
    t2, stepped = wire.nodes["lb2"].log[-1]
    assert (t2, stepped.state) == (t, State.BACKUP)
    assert stepped.reason.startswith("higher priority advert from")


@pytest.mark.parametrize(("version", "family"), WIRES)
def test_nopreempt_keeps_the_running_master(version: int, family: int) -> None:
    wire, _clock = pair(version, family, preempt=False)
    wire.start("lb2")
    wire.run_until(START + 10 * S)
    wire.start("lb1")
    wire.run_until(START + 60 * S)
    assert wire.masters() == ["lb2"]
    assert wire.nodes["lb1"].fsm.state is State.BACKUP


@pytest.mark.parametrize(("version", "family"), WIRES)
def test_killed_master_is_replaced_after_exactly_master_down_interval(version: int,
                                                                      family: int) -> None:
    wire, _clock = pair(version, family)
    wire.start("lb1")
    wire.start("lb2")
    wire.run_until(START + 10 * S)
    assert wire.masters() == ["lb1"]
    last_advert = wire.nodes["lb1"].sent[-1][0]
    wire.kill("lb1")
    wire.run_until(START + 30 * S)
    assert wire.masters() == ["lb2"]
    t, entered = wire.nodes["lb2"].log[-1]
    assert entered.reason == REASON_DOWN_TIMER
    assert t - last_advert == mdi(90, S, version)  # 3 s + 648437 us for both versions at 1 s


@pytest.mark.parametrize(("version", "family"), WIRES)
def test_graceful_shutdown_hands_over_after_exactly_skew_time(version: int,
                                                              family: int) -> None:
    wire, clock = pair(version, family)
    wire.start("lb1")
    wire.start("lb2")
    wire.run_until(START + 10 * S + 300_000)
    wire.do("lb1", wire.nodes["lb1"].fsm.shutdown())
    stopped = clock.now
    assert wire.nodes["lb1"].sent[-1] == (stopped, 0)  # the priority-0 advert
    assert not wire.nodes["lb1"].vips
    wire.run_until(START + 20 * S)
    assert wire.masters() == ["lb2"]
    t, entered = wire.nodes["lb2"].log[-1]
    assert t - stopped == skew(90, S, version) == 648_437
    assert "resigned (priority 0 advert)" in entered.reason


@pytest.mark.parametrize("first", ["lb2", "lb1"])
@pytest.mark.parametrize(("version", "family"), WIRES)
def test_dual_master_after_partition_heals_to_one(version: int, family: int,
                                                  first: str) -> None:
    """Split brain, then the link heals just before `first` advertises.

    If the lower-priority lb2 speaks first, lb1 hears it and re-asserts at once (advert + GARP
    burst, a second burst 5 s later, as keepalived does); if lb1 speaks first, lb2 simply steps
    down and lb1 has nothing to repair.
    """
    wire, _clock = pair(version, family)
    lb1, lb2 = wire.nodes["lb1"], wire.nodes["lb2"]
    wire.start("lb1")
    wire.start("lb2")
    wire.run_until(START + 10 * S)
    wire.partitioned = True
    wire.run_until(START + 20 * S)
    assert sorted(wire.masters()) == ["lb1", "lb2"]  # split brain while cut off
    for _ in range(4):  # stay cut off until `first` is the next to advertise
        d1, d2 = lb1.fsm.deadline, lb2.fsm.deadline
        assert d1 is not None and d2 is not None and d1 != d2
        if ("lb1" if d1 < d2 else "lb2") == first:
            break
        wire.run_until(min(d1, d2))
    assert wire.nodes[first].fsm.deadline == min(d for d in (lb1.fsm.deadline,
                                                             lb2.fsm.deadline) if d)
    garps_before = lb1.garps
    wire.partitioned = False
    wire.run_until(START + 30 * S)
    assert wire.masters() == ["lb1"]
    t_down, stepped = lb2.log[-1]
    assert stepped.state is State.BACKUP
    assert stepped.reason == f"higher priority advert from {lb1.fsm.config.address} (100 > 90)"
    if first == "lb2":
        assert lb1.garps - garps_before == 10
        assert (t_down, 100) in lb1.sent  # lb1 answered lb2's advert at once
    else:
        assert lb1.garps == garps_before
    assert [n.state for _, n in lb1.log] == [State.BACKUP, State.MASTER]


def test_v3_backup_learns_a_faster_master_interval() -> None:
    clock = FakeClock()
    wire = Wire(clock, 3, 4)
    wire.add("fast", 100, "10.99.0.11", interval_cs=10)  # 0.1 s, like the captures' 2nd run
    wire.add("slow", 90, "10.99.0.12", interval_cs=100)
    wire.start("fast")
    wire.start("slow")
    wire.run_until(START + 10 * S)
    assert wire.masters() == ["fast"]
    slow = wire.nodes["slow"].fsm
    assert slow.master_adver_int_us == 100_000
    last = wire.nodes["fast"].sent[-1][0]
    wire.kill("fast")
    wire.run_until(START + 20 * S)
    t, _ = wire.nodes["slow"].log[-1]
    assert t - last == master_down_interval_us(3, 90, 100_000) == 364_843


def test_three_routers_elect_the_highest() -> None:
    clock = FakeClock()
    wire = Wire(clock, 3, 4, latency_us=200)
    for name, prio, addr in (("a", 50, "10.99.0.1"), ("b", 150, "10.99.0.2"),
                             ("c", 150, "10.99.0.3")):
        wire.add(name, prio, addr)
        wire.start(name)
    wire.run_until(START + 20 * S)
    assert wire.masters() == ["c"]  # equal priority: the higher address wins
    wire.kill("c")
    wire.run_until(START + 40 * S)
    assert wire.masters() == ["b"]
