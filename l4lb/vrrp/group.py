"""Run one VRRP sync group on the asyncio loop: its coordinator, its members, its notify program.

`SyncGroupRuntime` is the `SyncHook` (l4lb.vrrp.instance) of every member instance. Each member
reports its events (`after`); the runtime hands them to the pure coordinator
(l4lb.vrrp.sync.SyncGroup) and executes what it forces on the members on their own instances
(`VrrpInstance.run_forced`: adverts at once, VIPs and GARPs on the member's vip lane, the
member's log line and notify program), then re-arms every member's timer, since the coordinator
may have changed a state machine that was not the one reporting.

A change of the group's state is logged (`vrrp sync group G: entering FAULT (VI_2: fault:
interface eth1 down)`) and, with `notify`, runs `NOTIFY GROUP G STATE` on the group's own
notify lane (keepalived's arguments for a group; STATE is MASTER, BACKUP, FAULT, or STOP when
every member has stopped). Runs are serialised, killed after 30 s, and a failure is logged and
counted, as for an instance's notify program.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from l4lb.config.model import SyncGroupSettings
from l4lb.vrrp.fsm import Action, Notify, State, VrrpFsm
from l4lb.vrrp.instance import (
    NOTIFY_STATE,
    STOP_TIMEOUT,
    Clock,
    Lane,
    VrrpInstance,
    monotonic_us,
    run_program,
)
from l4lb.vrrp.sync import GroupNotify, SyncGroup

log = logging.getLogger("l4lb.vrrp")


class SyncGroupRuntime:
    """One [[vrrp_sync_group]] on the running loop (see the module docstring)."""

    def __init__(self, settings: SyncGroupSettings, clock: Clock = monotonic_us) -> None:
        self.settings = settings
        self.group = SyncGroup(settings.name, settings.instances, clock)
        self._clock = clock
        self._members: dict[str, VrrpInstance] = {}
        self._lane: Lane | None = None  # the notify lane, made on the loop by start()
        self.transitions = 0  # changes of the group's state
        self.forced = 0  # member transitions the group forced
        self.notify_runs = 0
        self.notify_errors = 0
        self.last_transition: dict[str, Any] | None = None

    def member(self, settings_name: str, instance: VrrpInstance) -> None:
        """Register a member instance (before it starts)."""
        if settings_name not in self.group.members:
            raise KeyError(f"sync group {self.settings.name}: {settings_name} is not a member")
        self._members[settings_name] = instance
        instance.sync = self

    def start(self) -> None:
        """Create the notify lane on the running loop (before the members start)."""
        if self._lane is None:
            self._lane = Lane(f"vrrp sync group {self.settings.name} notify")

    async def stop(self) -> None:
        """After the members stopped: wait (bounded) for the STOP notification, then close."""
        if self._lane is not None:
            if not await self._lane.join(STOP_TIMEOUT):
                log.warning("vrrp sync group %s: notify still busy after %gs; abandoned",
                            self.settings.name, STOP_TIMEOUT)
            self._lane.close()
            self._lane = None

    # --- SyncHook -------------------------------------------------------------------------

    def attach(self, name: str, fsm: VrrpFsm) -> None:
        self.group.attach(name, fsm)

    def after(self, name: str, actions: list[Action]) -> None:
        forced, notes = self.group.after(name, actions)
        for member, acts in forced.items():
            self.forced += sum(1 for a in acts if isinstance(a, Notify))
            instance = self._members.get(member)
            if instance is not None:
                instance.run_forced(acts)
        for member, instance in self._members.items():
            if member not in forced:
                instance.run_forced([])  # re-arm: the coordinator may have changed its timers
        for note in notes:
            self._transition(note)

    # --- the group's state ----------------------------------------------------------------

    def _transition(self, note: GroupNotify) -> None:
        self.transitions += 1
        self.last_transition = {"from": str(note.previous), "to": str(note.state),
                                "reason": note.reason, "at": time.time()}
        log.log(logging.WARNING if note.state is State.FAULT else logging.INFO, "%s", note)
        notify = self.settings.notify
        if notify is not None and self._lane is not None:
            word = NOTIFY_STATE[note.state]
            self._lane.submit(f"notify {word}", functools.partial(self._run_notify, word))

    async def _run_notify(self, state: str) -> None:
        notify = self.settings.notify
        assert notify is not None
        self.notify_runs += 1
        problem = await run_program([notify, "GROUP", self.settings.name, state])
        if problem is not None:
            self.notify_errors += 1
            log.log(logging.WARNING if problem.startswith("exited") else logging.ERROR,
                    "vrrp sync group %s: notify program %s %s %s", self.settings.name, notify,
                    state, problem)

    def status(self) -> dict[str, Any]:
        """The group in `l4lb vrrp status`, JSON-ready."""
        g = self.group
        now_us = self._clock()
        members = []
        for name in g.members:
            instance = self._members.get(name)
            fsm = instance.fsm if instance is not None else None
            members.append({
                "name": name, "state": str(g.member_state(name)),
                "reason": fsm.reason if fsm is not None else "not started",
                "waiting": bool(fsm is not None and fsm.ready),
                "own_faults": sorted(g.own_faults(name)),
                "forced": g.forced.get(name)})
        return {
            "name": self.settings.name,
            "state": str(g.state),
            "reason": g.reason,
            "since": time.time() - (now_us - g.since_us) / 1e6,
            "members": members,
            "notify": self.settings.notify,
            "tracking_weight": self.settings.tracking_weight,
            "last_transition": self.last_transition,
            "counters": {"transitions": self.transitions, "forced": self.forced,
                         "notify_runs": self.notify_runs,
                         "notify_errors": self.notify_errors},
        }
