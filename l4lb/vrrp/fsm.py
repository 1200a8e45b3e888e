"""Run one VRRP instance's state machine (RFC 5798 6.4 + keepalived's FAULT): events to actions.

The machine does no I/O and never sleeps. The I/O layer feeds it events — `start`, `shutdown`,
`on_advert` (a decoded advert from a peer), `on_timer` (the deadline passed), `set_fault`,
`set_priority` — and executes the actions each call returns, in order: `SendAdvert`, `AddVips`,
`RemoveVips`, `SendGarp` (gratuitous ARP / unsolicited NA for every VIP, `repeat` times) and
`Notify` (a state change with its reason, for logs and notify hooks). After every call it
(re)arms one timer at `deadline`; calling `on_timer` early is harmless.

Time is integer microseconds from an injected monotonic clock (the I/O layer passes
`lambda: time.monotonic_ns() // 1000`; tests pass a fake). Microseconds are keepalived's unit
too, so the timer arithmetic below rounds exactly as keepalived's does:

    Skew_Time (v3)          = (256 - Priority) * Master_Adver_Interval / 256
    Skew_Time (v2)          = (256 - Priority) / 256 seconds, whatever the interval
    Master_Down_Interval    = 3 * Master_Adver_Interval + Skew_Time

States: INIT (not started, or shut down), BACKUP, MASTER, FAULT (a tracked resource failed:
the instance neither claims nor contests the VIPs until every fault clears). Where keepalived
goes beyond the RFC, this follows keepalived, because the peer may be keepalived:

- a master hearing a lower-priority advert (a dual-master episode ending) re-asserts at once:
  it sends an advert (unless `lower_prio_no_advert`) and a GARP burst, and a second burst
  `garp_lower_prio_delay` later (the RFC says only "discard");
- after becoming master, a second GARP burst follows `garp_delay` later (keepalived's
  garp_master_delay, default 5 s, as the captures show);
- `preempt_delay` holds off preemption: lower-priority adverts keep resetting the down timer
  until `preempt_delay` after the first one was heard;
- entering FAULT from MASTER sends a priority-0 advert so the backup takes over after Skew_Time;
- an effective priority change in BACKUP moves the running down timer by the change of
  Skew_Time; the address owner's priority 255 never changes.

A member of a sync group (`FsmConfig.sync_group`, l4lb.vrrp.sync) does not become master on its
own when its down timer expires: it stays BACKUP and is `ready` (keepalived's wantstate MASTER)
until the group promotes it (`promote`), which happens only when every member is ready. A
ready member that accepts a master's advert is no longer ready. The group also forces a member
down (`demote`: MASTER -> BACKUP with a priority-0 advert) and into FAULT (`set_fault` with a
fault of the group's, and its own `reason`).
See docs/vrrp-internals.md for the full transition table.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from l4lb.vrrp.packet import V2_MAX_INTERVAL_S, V3_MAX_INTERVAL_CS, Advert, IPAddress

PRIORITY_OWNER: Final = 255  # the address owner: goes straight to MASTER
PRIORITY_STOP: Final = 0  # sent by a master that resigns
US_PER_CS: Final = 10_000
US_PER_S: Final = 1_000_000
REASON_DOWN_TIMER: Final = "master down timer expired"

Clock = Callable[[], int]  # monotonic time in integer microseconds


class State(enum.Enum):
    """The instance's state; the value is the word logs and notify hooks use."""

    INIT = "INIT"
    BACKUP = "BACKUP"
    MASTER = "MASTER"
    FAULT = "FAULT"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SendAdvert:
    """Send one advertisement with this priority (0 = resigning)."""

    priority: int  # the Priority field to send


@dataclass(frozen=True)
class AddVips:
    """Add every virtual address to its interface (becoming master)."""


@dataclass(frozen=True)
class RemoveVips:
    """Remove every virtual address (idempotent: addresses that are absent are fine)."""


@dataclass(frozen=True)
class SendGarp:
    """Announce every VIP: gratuitous ARP (IPv4) / unsolicited NA (IPv6), `repeat` times each."""

    repeat: int  # frames per VIP in this burst


@dataclass(frozen=True)
class Notify:
    """The instance changed state; `str()` is the log line."""

    name: str  # instance name, e.g. "VI_1"
    state: State  # the state entered
    previous: State  # the state left
    reason: str  # why, e.g. "master down timer expired"

    def __str__(self) -> str:
        return f"vrrp {self.name}: entering {self.state} ({self.reason})"


Action = SendAdvert | AddVips | RemoveVips | SendGarp | Notify


@dataclass(frozen=True)
class FsmConfig:
    """The parameters of one instance (names follow keepalived where it has one)."""

    name: str  # instance name for logs ("VI_1")
    vrid: int  # virtual router id 1..255 (carried for the I/O layer; the FSM does not filter)
    priority: int  # base priority 1..255; 255 = address owner
    address: IPAddress  # our primary address: the adverts' source, the tie-breaker
    version: int = 3  # VRRP version: 3 (RFC 5798) or 2 (RFC 3768, IPv4 only)
    interval_cs: int = 100  # Advertisement_Interval, centiseconds (v2: whole seconds only)
    preempt: bool = True  # False = keepalived's nopreempt
    preempt_delay_us: int = 0  # hold-off before preempting a lower-priority master
    garp_repeat: int = 5  # GARP/NA per VIP on becoming master (garp_master_repeat)
    garp_delay_us: int = 5 * US_PER_S  # second burst after becoming master; 0 = none
    garp_lower_prio_repeat: int = 5  # burst when a master hears a lower priority; 0 = none
    garp_lower_prio_delay_us: int = 5 * US_PER_S  # its second burst; 0 = none
    lower_prio_no_advert: bool = False  # True: do not answer a lower priority with an advert
    sync_group: str | None = None  # member of this sync group: the group decides on MASTER

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("an instance needs a name")
        if not 1 <= self.vrid <= 255:
            raise ValueError(f"VRID must be 1..255, not {self.vrid}")
        if not 1 <= self.priority <= PRIORITY_OWNER:
            raise ValueError(f"priority must be 1..255, not {self.priority}")
        if self.version == 3:
            if not 1 <= self.interval_cs <= V3_MAX_INTERVAL_CS:
                raise ValueError(f"v3 advert interval must be 1..4095 cs, not {self.interval_cs}")
        elif self.version == 2:
            if self.address.version != 4:
                raise ValueError("VRRPv2 is IPv4 only")
            if self.interval_cs % 100 or not 1 <= self.interval_cs // 100 <= V2_MAX_INTERVAL_S:
                raise ValueError(f"v2 advert interval must be 1..255 whole seconds, not "
                                 f"{self.interval_cs} cs")
        else:
            raise ValueError(f"VRRP version must be 2 or 3, not {self.version}")
        for field in ("preempt_delay_us", "garp_repeat", "garp_delay_us",
                      "garp_lower_prio_repeat", "garp_lower_prio_delay_us"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} cannot be negative")

    @property
    def interval_us(self) -> int:
        """Advertisement_Interval in microseconds."""
        return self.interval_cs * US_PER_CS


def skew_time_us(version: int, priority: int, master_adver_int_us: int) -> int:
    """Skew_Time: v3 scales with Master_Adver_Interval, v2 is (256 - priority)/256 seconds."""
    if version == 2:
        return (256 - priority) * US_PER_S // 256
    return (256 - priority) * master_adver_int_us // 256


def master_down_interval_us(version: int, priority: int, master_adver_int_us: int) -> int:
    """Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time."""
    return 3 * master_adver_int_us + skew_time_us(version, priority, master_adver_int_us)


class VrrpFsm:
    """One VRRP instance's state machine. Not thread-safe; drive it from one event loop."""

    def __init__(self, config: FsmConfig, clock: Clock) -> None:
        self.config = config
        self._clock = clock
        self.state = State.INIT  # current state
        self.priority = config.priority  # effective priority (tracking may lower it)
        self.master_adver_int_us = config.interval_us  # learned from the master (v3)
        self.reason = "not started"  # why the current state was entered
        self.since_us = clock()  # when the current state was entered
        self.master_address: IPAddress | None = None  # the master we last accepted (BACKUP)
        self._faults: set[str] = set()  # names of the active faults
        self._adver_at: int | None = None  # MASTER: Adver_Timer deadline
        self._down_at: int | None = None  # BACKUP: Master_Down_Timer deadline
        self._down_cause = REASON_DOWN_TIMER  # BACKUP: what the down timer's expiry will mean
        self._garp_at: int | None = None  # MASTER: second GARP burst after takeover
        self._lower_garp_at: int | None = None  # MASTER: second burst after a lower priority
        self._preempt_at: int | None = None  # BACKUP: preempt_delay ends (None = not started)
        self.ready = False  # BACKUP in a sync group: down timer expired, waits for the group
        self.ready_cause = ""  # ready: what the expiry meant (the reason it will become master)

    # --- derived values -------------------------------------------------------------------

    @property
    def skew_time_us(self) -> int:
        """The current Skew_Time."""
        return skew_time_us(self.config.version, self.priority, self.master_adver_int_us)

    @property
    def master_down_interval_us(self) -> int:
        """The current Master_Down_Interval."""
        return master_down_interval_us(self.config.version, self.priority,
                                       self.master_adver_int_us)

    @property
    def deadline(self) -> int | None:
        """When `on_timer` must be called next (clock microseconds), or None for no timer."""
        pending = [t for t in (self._adver_at, self._down_at, self._garp_at,
                               self._lower_garp_at) if t is not None]
        return min(pending) if pending else None

    @property
    def faults(self) -> frozenset[str]:
        """The names of the active faults."""
        return frozenset(self._faults)

    # --- events ---------------------------------------------------------------------------

    def start(self) -> list[Action]:
        """Startup event (RFC 6.4.1). No effect unless in INIT."""
        if self.state is not State.INIT:
            return []
        if self._faults:
            return [RemoveVips(), *self._enter(State.FAULT, f"fault: {self._fault_names()}")]
        if self.priority == PRIORITY_OWNER:
            return self._become_master("address owner (priority 255)")
        return [RemoveVips(), *self._become_backup("startup", self.config.interval_us)]

    def resume_master(self, reason: str) -> list[Action]:
        """Startup of an instance that was MASTER of the same virtual router until a reload
        replaced its settings (l4lb.vrrp.reloadplan): MASTER at once, as the address owner
        starts, so the VIPs never leave this node; a peer with a higher priority takes over by
        the usual rules. In a fault, or as the address owner, it is `start()`. No effect
        unless in INIT."""
        if self.state is not State.INIT:
            return []
        if self._faults or self.priority == PRIORITY_OWNER:
            return self.start()
        return self._become_master(reason)

    def shutdown(self) -> list[Action]:
        """Shutdown event: a master resigns with a priority-0 advert and drops the VIPs."""
        if self.state is State.INIT:
            return []
        actions: list[Action] = []
        if self.state is State.MASTER:
            actions += [SendAdvert(PRIORITY_STOP), RemoveVips()]
        return actions + self._enter(State.INIT, "shutdown")

    def on_packet(self, advert: Advert) -> list[Action]:
        """A decoded, validated advertisement for this instance (see `on_advert`)."""
        return self.on_advert(advert.priority, advert.src, advert.interval_cs)

    def on_advert(self, priority: int, source: IPAddress, interval_cs: int) -> list[Action]:
        """An advertisement with `priority` from primary address `source` (RFC 6.4.2 / 6.4.3).

        Adverts from our own address (multicast loopback) and in INIT/FAULT are ignored.
        """
        if source.version != self.config.address.version:
            raise ValueError(f"advert from {source} does not match the instance's family")
        if source == self.config.address or self.state in (State.INIT, State.FAULT):
            return []
        now = self._clock()
        if self.state is State.BACKUP:
            self._backup_heard(now, priority, source, interval_cs)
            return []
        return self._master_heard(now, priority, source, interval_cs)

    def on_timer(self) -> list[Action]:
        """The deadline passed: fire every timer that is due."""
        now = self._clock()
        if self.state is State.BACKUP:
            if self._down_at is not None and now >= self._down_at:
                if self.config.sync_group is not None:
                    # the group decides (l4lb.vrrp.sync): wait, ready, until every member is
                    self.ready = True
                    self.ready_cause = self._down_cause
                    self._down_at = None
                    return []
                return self._become_master(self._down_cause)
            return []
        if self.state is not State.MASTER:
            return []
        actions: list[Action] = []
        if self._adver_at is not None and now >= self._adver_at:
            actions.append(SendAdvert(self.priority))
            self._adver_at = now + self.config.interval_us
        if self._garp_at is not None and now >= self._garp_at:
            actions.append(SendGarp(self.config.garp_repeat))
            self._garp_at = None
        if self._lower_garp_at is not None and now >= self._lower_garp_at:
            actions.append(SendGarp(self.config.garp_lower_prio_repeat))
            self._lower_garp_at = None
        return actions

    def set_fault(self, name: str, active: bool, reason: str | None = None) -> list[Action]:
        """A tracked resource `name` failed (active) or recovered; FAULT while any is active.
        `reason` replaces the default one of the transition it causes ("fault: NAME",
        "fault cleared: NAME")."""
        if active:
            if name in self._faults:
                return []
            self._faults.add(name)
            if len(self._faults) > 1 or self.state in (State.INIT, State.FAULT):
                return []
            actions: list[Action] = []
            if self.state is State.MASTER:
                actions += [SendAdvert(PRIORITY_STOP), RemoveVips()]
            return actions + self._enter(State.FAULT, reason or f"fault: {name}")
        if name not in self._faults:
            return []
        self._faults.discard(name)
        if self._faults or self.state is not State.FAULT:
            return []
        why = reason or f"fault cleared: {name}"
        if self.priority == PRIORITY_OWNER:
            return self._become_master(f"{why}; address owner (priority 255)")
        return self._become_backup(why, self.config.interval_us)

    def promote(self, reason: str) -> list[Action]:
        """The sync group makes this BACKUP member master now (no effect in another state)."""
        if self.state is not State.BACKUP:
            return []
        return self._become_master(reason)

    def demote(self, reason: str) -> list[Action]:
        """The sync group makes this MASTER member leave: a priority-0 advert (the peer takes
        over after Skew_Time), the VIPs removed, BACKUP. No effect in another state."""
        if self.state is not State.MASTER:
            return []
        return [SendAdvert(PRIORITY_STOP), RemoveVips(),
                *self._become_backup(reason, self.config.interval_us)]

    def set_priority(self, priority: int) -> list[Action]:
        """Tracking changed the effective priority (clamped to 1..254; the owner keeps 255)."""
        if self.config.priority == PRIORITY_OWNER:
            return []
        new = min(max(priority, 1), PRIORITY_OWNER - 1)
        if new == self.priority:
            return []
        old_skew = self.skew_time_us
        self.priority = new
        if self.state is State.BACKUP and self._down_at is not None:
            self._down_at += self.skew_time_us - old_skew
        return []

    # --- transitions ----------------------------------------------------------------------

    def _backup_heard(self, now: int, priority: int, source: IPAddress, interval_cs: int) -> None:
        cfg = self.config
        if priority == PRIORITY_STOP:
            self._down_at = now + self.skew_time_us
            self._down_cause = f"{source} resigned (priority 0 advert), skew time expired"
            return
        delaying = cfg.preempt_delay_us > 0 and (self._preempt_at is None or now < self._preempt_at)
        if not cfg.preempt or priority >= self.priority or delaying:
            if cfg.version == 3:
                self.master_adver_int_us = interval_cs * US_PER_CS
            self._down_at = now + self.master_down_interval_us
            self._down_cause = REASON_DOWN_TIMER
            self.master_address = source
            self.ready = False  # a master it accepts: no longer ready to take over
            if cfg.preempt and cfg.preempt_delay_us > 0:
                if priority >= self.priority:
                    self._preempt_at = None
                elif self._preempt_at is None:
                    self._preempt_at = now + cfg.preempt_delay_us
            return
        # Preempting: let the down timer run out on the lower-priority master.
        self._down_cause = (f"{REASON_DOWN_TIMER}, preempting lower priority {source} "
                            f"({priority} < {self.priority})")

    def _master_heard(self, now: int, priority: int, source: IPAddress,
                      interval_cs: int) -> list[Action]:
        cfg = self.config
        if priority == PRIORITY_STOP:
            self._adver_at = now + cfg.interval_us
            return [SendAdvert(self.priority)]
        if priority > self.priority or (priority == self.priority
                                        and _addr_gt(source, cfg.address)):
            if priority > self.priority:
                reason = f"higher priority advert from {source} ({priority} > {self.priority})"
            else:
                reason = f"equal priority advert from higher address {source}"
            learned = interval_cs * US_PER_CS if cfg.version == 3 else cfg.interval_us
            return [RemoveVips(), *self._become_backup(reason, learned, master=source)]
        actions: list[Action] = []
        if not cfg.lower_prio_no_advert:
            actions.append(SendAdvert(self.priority))
            self._adver_at = now + cfg.interval_us
        if cfg.garp_lower_prio_repeat > 0:
            actions.append(SendGarp(cfg.garp_lower_prio_repeat))
            if cfg.garp_lower_prio_delay_us > 0:
                self._lower_garp_at = now + cfg.garp_lower_prio_delay_us
        return actions

    def _become_master(self, reason: str) -> list[Action]:
        now = self._clock()
        cfg = self.config
        actions: list[Action] = [AddVips(), SendAdvert(self.priority)]
        if cfg.garp_repeat > 0:
            actions.append(SendGarp(cfg.garp_repeat))
        actions += self._enter(State.MASTER, reason)
        self.master_address = cfg.address
        self._adver_at = now + cfg.interval_us
        if cfg.garp_repeat > 0 and cfg.garp_delay_us > 0:
            self._garp_at = now + cfg.garp_delay_us
        return actions

    def _become_backup(self, reason: str, master_adver_int_us: int,
                       master: IPAddress | None = None) -> list[Action]:
        actions = self._enter(State.BACKUP, reason)
        self.master_adver_int_us = master_adver_int_us
        self.master_address = master
        self._down_at = self._clock() + self.master_down_interval_us
        return actions

    def _enter(self, state: State, reason: str) -> list[Action]:
        """Leave the current state (cancelling all its timers) and enter `state`."""
        previous = self.state
        self.state = state
        self.reason = reason
        self.since_us = self._clock()
        self.master_address = None
        self._adver_at = self._down_at = self._garp_at = self._lower_garp_at = None
        self._preempt_at = None
        self._down_cause = REASON_DOWN_TIMER
        self.ready = False
        self.ready_cause = ""
        return [Notify(self.config.name, state, previous, reason)]

    def _fault_names(self) -> str:
        return ", ".join(sorted(self._faults))


def _addr_gt(a: IPAddress, b: IPAddress) -> bool:
    """a > b as unsigned integers (same family; RFC 5798 6.4.3 tie-break)."""
    return int(a) > int(b)

