"""Keep the members of one VRRP sync group in step (keepalived's vrrp_sync_group); no I/O.

A sync group ties instances together so that one node holds all of their VIPs: the classic
case is a frontend VIP and the backends' gateway VIP of a two-legged balancer. `SyncGroup` is
told about every event of a member (`after(member, actions)`, with the actions the member's
state machine returned) and answers with the actions it forced on the members, which the
runtime executes like any other (l4lb.vrrp.group). The rules, after keepalived 2.2
(vrrp_sync.c):

- **FAULT spreads.** While a member has a fault of its own (an interface down, a tracked
  service without a healthy backend), every other member holds the fault
  `sync group G: VI_1 is FAULT` and is in FAULT as well: a master among them resigns with a
  priority-0 advert, so the peer's members take over after Skew_Time. When the last own fault
  of the group clears, every member leaves FAULT for BACKUP together.
- **BACKUP spreads.** A member that leaves MASTER for BACKUP (a higher priority advert, or an
  equal one from a higher address) makes every other master of the group resign too
  (`VrrpFsm.demote`: priority-0 advert, VIPs removed, BACKUP). keepalived leaves those without
  a priority-0 advert; l4lb sends one so the peer's member need not wait Master_Down_Interval.
- **MASTER needs everyone.** A member's down timer only makes it `ready` (VrrpFsm with
  `sync_group`); when every member of the group is ready (or already MASTER) and none is in
  FAULT or INIT, the ready ones become master together. A member that hears a master it accepts
  stops being ready, so a group whose members disagree stays BACKUP ("prefer backup to avoid
  thrashing", as keepalived says).
- **MASTER pulls.** A member that becomes master on its own (the address owner, priority 255)
  pulls the other BACKUP members with it.

The group's state is FAULT when a member is in FAULT, MASTER when all are MASTER, INIT when all
are INIT (not started, or stopped), BACKUP otherwise; while some but not all members are INIT
(starting, stopping) it keeps the state it had. Each change of it is a `GroupNotify`, for the
log line and the group's notify program (`NOTIFY GROUP NAME STATE`). Time comes from the
injected clock, the one the members' state machines use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from l4lb.vrrp.fsm import Action, Notify, State, VrrpFsm

Clock = Callable[[], int]  # monotonic microseconds, the members' clock
MAX_ROUNDS: Final = 16  # bound of one settlement; each round changes at least one member


def fault_name(group: str, member: str) -> str:
    """The fault a member holds while `member` of `group` has a fault of its own."""
    return f"sync group {group}: {member} is FAULT"


@dataclass(frozen=True)
class GroupNotify:
    """The group changed state; `str()` is the log line."""

    group: str  # sync group name
    state: State  # the state entered (INIT: every member stopped)
    previous: State  # the state left
    reason: str  # why, e.g. "VI_2: fault: interface eth1 down"

    def __str__(self) -> str:
        return f"vrrp sync group {self.group}: entering {self.state} ({self.reason})"


class SyncGroup:
    """One sync group's coordinator (see the module docstring). Not thread-safe."""

    def __init__(self, name: str, members: Sequence[str], clock: Clock) -> None:
        if len(set(members)) != len(members) or not members:
            raise ValueError(f"sync group {name}: members must be distinct and not empty")
        self.name = name
        self.members = tuple(members)  # instance names, in the configured order
        self._clock = clock
        self._fsms: dict[str, VrrpFsm] = {}  # attached members' state machines
        self._held: dict[str, set[str]] = {m: set() for m in self.members}  # faults we set
        self.forced: dict[str, str] = {}  # member -> the last transition the group forced on it
        self.state = State.INIT  # the group's state
        self.reason = "not started"  # why it was entered
        self.since_us = clock()  # when

    # --- wiring ---------------------------------------------------------------------------

    def attach(self, member: str, fsm: VrrpFsm) -> None:
        """The member's state machine, once its instance has created it (before start)."""
        if member not in self._held:
            raise KeyError(f"sync group {self.name}: {member} is not a member")
        if fsm.config.sync_group != self.name:
            raise ValueError(f"sync group {self.name}: {member}'s state machine is not "
                             "configured as a member")
        self._fsms[member] = fsm
        self._held[member] = set()

    # --- views ----------------------------------------------------------------------------

    def member_state(self, member: str) -> State:
        """A member's state (INIT until attached)."""
        fsm = self._fsms.get(member)
        return State.INIT if fsm is None else fsm.state

    def own_faults(self, member: str) -> frozenset[str]:
        """The member's faults that are its own (not held for the group)."""
        fsm = self._fsms.get(member)
        if fsm is None:
            return frozenset()
        return fsm.faults - self._held[member]

    def waiting(self) -> list[str]:
        """The members that are ready to become master and wait for the others."""
        return [m for m in self.members if (f := self._fsms.get(m)) is not None and f.ready]

    # --- the event ------------------------------------------------------------------------

    def after(self, member: str, actions: Sequence[Action]
              ) -> tuple[dict[str, list[Action]], list[GroupNotify]]:
        """`member` had an event and its state machine returned `actions` (already executed).
        Returns the actions forced on members (to execute in order, per member) and the
        group's state changes."""
        forced: dict[str, list[Action]] = {}
        events = [a for a in actions if isinstance(a, Notify)]
        for _ in range(MAX_ROUNDS):
            changes = [self._faults(), self._demote(events), self._pull(), self._promote()]
            events = []
            for step in changes:
                for target, acts in step.items():
                    forced.setdefault(target, []).extend(acts)
                    for note in acts:
                        if isinstance(note, Notify):
                            events.append(note)
                            self.forced[target] = note.reason
            if not events:
                break
        return forced, self._group_state(member)

    # --- the rules (each returns the actions of the members it changed, {} for none) ------

    def _faults(self) -> dict[str, list[Action]]:
        faulty = [m for m in self.members if self.own_faults(m)]
        out: dict[str, list[Action]] = {}
        for m, fsm in self._fsms.items():
            want = {fault_name(self.name, x) for x in faulty if x != m}
            held = self._held[m]
            acts: list[Action] = []
            for fault in sorted(want - held):
                held.add(fault)
                acts += fsm.set_fault(fault, True, reason=fault)
            for fault in sorted(held - want):
                held.discard(fault)
                who = fault.removeprefix(f"sync group {self.name}: ").removesuffix(" is FAULT")
                acts += fsm.set_fault(fault, False,
                                      reason=f"sync group {self.name}: {who} left FAULT")
            if acts:
                out[m] = acts
        return out

    def _demote(self, events: Sequence[Notify]) -> dict[str, list[Action]]:
        out: dict[str, list[Action]] = {}
        for note in events:
            if note.previous is not State.MASTER or note.state is not State.BACKUP:
                continue
            why = f"sync group {self.name}: {note.name} is BACKUP"
            for m, fsm in self._fsms.items():
                if m != note.name and fsm.state is State.MASTER:
                    out.setdefault(m, []).extend(fsm.demote(why))
        return out

    def _settled(self) -> bool:
        """No member in FAULT or INIT (only then may the group go MASTER)."""
        return len(self._fsms) == len(self.members) and all(
            f.state in (State.BACKUP, State.MASTER) for f in self._fsms.values())

    def _pull(self) -> dict[str, list[Action]]:
        if not self._settled():
            return {}
        masters = [m for m in self.members if self._fsms[m].state is State.MASTER]
        if not masters:
            return {}
        why = f"sync group {self.name}: {masters[0]} is MASTER"
        return {m: fsm.promote(why) for m, fsm in self._fsms.items()
                if fsm.state is State.BACKUP}

    def _promote(self) -> dict[str, list[Action]]:
        if not self._settled():
            return {}
        backups = [m for m in self.members if self._fsms[m].state is State.BACKUP]
        if not backups or not all(self._fsms[m].ready for m in backups):
            return {}
        return {m: self._fsms[m].promote(
            f"{self._fsms[m].ready_cause}; sync group {self.name}: every member ready")
            for m in backups}

    # --- the group's own state ------------------------------------------------------------

    def _group_state(self, trigger: str) -> list[GroupNotify]:
        states = [self.member_state(m) for m in self.members]
        if all(s is State.INIT for s in states):
            new = State.INIT
        elif State.INIT in states:
            new = self.state  # starting or stopping: wait for the others
        elif State.FAULT in states:
            new = State.FAULT
        elif all(s is State.MASTER for s in states):
            new = State.MASTER
        else:
            new = State.BACKUP
        if new is self.state:
            return []
        previous = self.state
        self.state = new
        self.since_us = self._clock()
        fsm = self._fsms.get(trigger)
        if new is State.FAULT:
            culprit = next((m for m in self.members if self.own_faults(m)), trigger)
            cfsm = self._fsms.get(culprit)
            self.reason = f"{culprit}: {cfsm.reason if cfsm is not None else 'fault'}"
        elif new is State.INIT:
            self.reason = "every member stopped"
        elif new is State.MASTER:
            self.reason = "every member is MASTER"
        else:
            self.reason = f"{trigger}: {fsm.reason}" if fsm is not None else trigger
        return [GroupNotify(self.name, new, previous, self.reason)]
