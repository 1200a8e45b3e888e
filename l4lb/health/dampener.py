"""Turn a backend's stream of probe results and passive failures into UP/DOWN with hysteresis.

Pure logic: no I/O, no clock of its own (every input carries `now`, monotonic seconds), so the
unit tests drive it with a fake clock and never sleep.

The state machine of one backend (rise, fall, ... are `HealthSettings` fields):

    UP --- `fall` consecutive failed probes -------------------------------> DOWN
    UP --- `max_fails` failed connects within `fail_timeout` (passive) ----> DOWN
    DOWN - `rise` consecutive passed probes -------------------------------> UP

- A new backend starts in `initial_state`. Starting UP it is *unconfirmed* until a probe passes;
  the first failed probe of an unconfirmed backend takes it DOWN at once (it never proved it
  works, so there is nothing to be patient about). Starting DOWN it needs `rise` passed probes.
- During `start_period` after the backend was added, failed probes and passive failures are
  ignored (shown, never counted); the first passed probe ends the start period early.
- A passed probe resets the failure count and vice versa: counts are *consecutive*.
- Passive failures (connect failures the data plane counted) only matter while UP; a backend
  taken DOWN by them comes back through active probes like any other.

Every change of state is returned as a `Transition` whose reason is ready for a log line:
`connect refused (3/3 probes failed)`, `connect ok (2/2 probes passed)`,
`7 failed connects within 10s (passive, max_fails 5)`.

The time to the next probe is a function of this state too (`probe_interval`, the checker's
rule): `fast_interval` while the backend is in transition (UP with a failure counted toward
`fall`, DOWN with a pass counted toward `rise`: HAProxy's `fastinter`), else `interval` while UP
and `down_interval` while DOWN. Passive failures count toward `max_fails`, not `fall`, so they
never make a backend "in transition"; a backend they take DOWN is probed at `down_interval`.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Any

from l4lb.health.settings import HealthSettings


class Health(enum.Enum):
    """What the checker believes about a backend."""

    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class Transition:
    """One change of a backend's health state."""

    old: Health  # state before
    new: Health  # state after
    reason: str  # operator-readable cause, e.g. "connect refused (3/3 probes failed)"
    at: float  # monotonic time of the change
    passive: bool = False  # True when caused by data-plane connect failures, not by probes


@dataclass(frozen=True)
class HealthSnapshot:
    """A backend's health for display (control API, status page)."""

    state: Health  # current state
    confirmed: bool  # False while UP only by initial_state, before any probe passed
    successes: int  # consecutive passed probes (counts toward rise while DOWN)
    failures: int  # consecutive failed probes (counts toward fall while UP)
    rise: int  # the settings' rise, for "1/2"
    fall: int  # the settings' fall, for "1/3"
    since: float  # monotonic time of the last change (creation time if none)
    up_since: float | None  # monotonic time of the last DOWN -> UP change; None if none
    in_start_period: bool  # failures are currently ignored
    last_ok: bool | None  # result of the last probe; None before the first
    last_reason: str  # reason of the last probe ("" before the first)
    last_probe_at: float | None  # monotonic time of the last probe result
    change_reason: str = ""  # why the state last changed, as logged ("" if it never changed)

    def describe(self) -> str:
        """`UP`, `UP (unconfirmed)`, `UP, going down (1/3)`, `DOWN`, `DOWN, going up (1/2)`."""
        return describe(self.state, self.confirmed, self.successes, self.failures, self.rise,
                        self.fall)


def probe_interval(settings: HealthSettings, state: Health, successes: int,
                   failures: int) -> float:
    """Seconds from the start of one probe to the start of the next (before jitter).

    `fast_interval` while in transition: UP with at least one consecutive failed probe counted
    (on its way down to `fall`), or DOWN with at least one consecutive passed probe counted (on
    its way up to `rise`). Otherwise, and always when `fast_interval` is not set, `interval`
    while UP and `down_interval` while DOWN. The counts are the dampener's, so failures ignored
    in a start period do not count, and a transition, which resets both counts, returns the
    backend to its steady interval. (An unconfirmed UP backend never has a failure counted: its
    first counted failure takes it DOWN.)
    """
    fast = settings.fast_interval
    if state is Health.UP:
        return fast if failures and fast is not None else settings.interval
    return fast if successes and fast is not None else settings.effective_down_interval


def describe(state: Health, confirmed: bool, successes: int, failures: int, rise: int,
             fall: int) -> str:
    """HealthSnapshot.describe() of these fields (Dampener.view() uses it too)."""
    if state is Health.UP:
        if failures and confirmed:
            return f"UP, going down ({failures}/{fall})"
        return "UP" if confirmed else "UP (unconfirmed)"
    if successes:
        return f"DOWN, going up ({successes}/{rise})"
    return "DOWN"


class Dampener:
    """Health state of one backend; feed it probe results and passive failures."""

    def __init__(self, settings: HealthSettings, now: float) -> None:
        self._settings = settings  # current settings (replaceable by reconfigure)
        self._state = Health.UP if settings.initial_state == "up" else Health.DOWN
        self._confirmed = settings.initial_state == "down"  # UP by default is unconfirmed
        self._successes = 0  # consecutive passed probes
        self._failures = 0  # consecutive failed probes
        self._added = now  # creation time, start of the start period
        self._started = settings.start_period == 0  # True once the start period is over
        self._since = now  # time of the last change of state
        self._up_since: float | None = None  # time of the last DOWN -> UP change
        self._passive: deque[tuple[float, int]] = deque()  # (time, count) of passive failures
        self._passive_sum = 0  # sum of the counts in _passive
        self._last_ok: bool | None = None  # last probe result
        self._last_reason = ""  # last probe reason
        self._last_probe_at: float | None = None  # time of the last probe result
        self._change_reason = ""  # reason of the last change of state, as logged
        self._verdict = settings.initial_state == "up"  # False while unproven (pool rule 3)

    @property
    def state(self) -> Health:
        """Current state."""
        return self._state

    @property
    def proven(self) -> bool:
        """False while the backend is DOWN only by initial_state "down": it has not come UP and
        no failed probe has been counted against it (l4lb.health.pool's unproven rule)."""
        return self._verdict

    @property
    def up_since(self) -> float | None:
        """Monotonic time of the last DOWN -> UP transition (start of a slow-start ramp)."""
        return self._up_since

    @property
    def settings(self) -> HealthSettings:
        """The settings in force."""
        return self._settings

    def in_start_period(self, now: float) -> bool:
        """True while failures are ignored."""
        if not self._started and now >= self._added + self._settings.start_period:
            self._started = True
        return not self._started

    def reconfigure(self, settings: HealthSettings) -> None:
        """Apply new settings (a reload), keeping state and counts.

        A count already beyond a new, lower threshold takes effect at the next probe.
        """
        self._settings = settings
        if settings.max_fails == 0:
            self._passive.clear()
            self._passive_sum = 0

    def probe(self, ok: bool, reason: str, now: float) -> Transition | None:
        """Record one active probe result; returns the transition it caused, if any."""
        self._last_ok = ok
        self._last_reason = reason
        self._last_probe_at = now
        if ok:
            if self._state is Health.UP:  # the common case of _passed, inlined
                self._started = True
                self._failures = 0
                self._confirmed = True
                return None
            return self._passed(reason, now)
        return self._failed(reason, now)

    @property
    def interval(self) -> float:
        """Seconds from the start of this backend's last probe to its next one, before jitter
        (`probe_interval` of the current state and settings)."""
        return probe_interval(self._settings, self._state, self._successes, self._failures)

    @property
    def steady(self) -> bool:
        """True when a passed probe would change nothing but the last probe's result, reason
        and time: UP, confirmed, no failure counted, start period over. The checker lets the
        SYN fleet count such passes and hands them over later (`passes`)."""
        return self._state is Health.UP and self._confirmed and not self._failures and \
            self._started

    def passes(self, count: int, reason: str, last: float) -> Transition | None:
        """Record `count` passed probes, the last at `last`: the same as `count` calls of
        `probe(True, reason, last)` (the time of the earlier ones only matters if the backend
        is DOWN; the checker hands passes over only while it is `steady`)."""
        transition = None
        for _ in range(count):
            found = self.probe(True, reason, last)
            if found is not None:
                transition = found
            if self._state is Health.UP:  # further passes of an UP backend are all alike
                break
        return transition

    def _passed(self, reason: str, now: float) -> Transition | None:
        self._started = True
        self._failures = 0
        if self._state is Health.UP:
            self._confirmed = True
            return None
        self._successes += 1
        rise = self._settings.rise
        if self._successes < rise:
            return None
        text = f"{reason} ({self._successes}/{rise} probes passed)"
        self._up_since = now
        return self._change(Health.UP, text, now, passive=False)

    def _failed(self, reason: str, now: float) -> Transition | None:
        if self.in_start_period(now):
            return None
        self._successes = 0
        self._failures += 1
        self._verdict = True
        if self._state is Health.DOWN:
            return None
        if not self._confirmed:
            return self._change(Health.DOWN, f"{reason} (no probe has passed yet)", now,
                                passive=False)
        fall = self._settings.fall
        if self._failures < fall:
            return None
        return self._change(Health.DOWN, f"{reason} ({self._failures}/{fall} probes failed)",
                            now, passive=False)

    def passive_failures(self, count: int, now: float) -> Transition | None:
        """Record `count` failed connects the data plane saw since the last call.

        Takes the backend DOWN at once when `max_fails` of them fall within `fail_timeout`.
        """
        max_fails = self._settings.max_fails
        if count <= 0 or max_fails == 0 or self._state is Health.DOWN or \
                self.in_start_period(now):
            return None
        window = self._settings.fail_timeout
        self._passive.append((now, count))
        self._passive_sum += count
        while self._passive and self._passive[0][0] <= now - window:
            self._passive_sum -= self._passive.popleft()[1]
        if self._passive_sum < max_fails:
            return None
        text = (f"{self._passive_sum} failed connects within {window:g}s "
                f"(passive, max_fails {max_fails})")
        return self._change(Health.DOWN, text, now, passive=True)

    def _change(self, new: Health, reason: str, now: float, passive: bool) -> Transition:
        old = self._state
        self._state = new
        self._since = now
        self._change_reason = reason
        self._confirmed = True
        self._verdict = True
        self._successes = 0
        self._failures = 0
        self._passive.clear()
        self._passive_sum = 0
        return Transition(old=old, new=new, reason=reason, at=now, passive=passive)

    def view(self, now: float, to_wall: float) -> dict[str, Any]:
        """The state for the control API (`check` of a backend view), as a dict: what
        snapshot() holds, with unix times (`to_wall` = time.time() - time.monotonic() is
        added to the monotonic ones). Built directly, without a snapshot, since `status`
        builds one for every checked backend (10,000 cost about 10 ms)."""
        settings, state, last = self._settings, self._state, self._last_probe_at
        return {"health": "up" if state is Health.UP else "down",
                "status": describe(state, self._confirmed, self._successes, self._failures,
                                   settings.rise, settings.fall),
                "confirmed": self._confirmed, "successes": self._successes,
                "failures": self._failures, "rise": settings.rise, "fall": settings.fall,
                "since": self._since + to_wall, "change_reason": self._change_reason or None,
                "last_result": (None if self._last_ok is None
                                else "passed" if self._last_ok else "failed"),
                "last_reason": self._last_reason or None,
                "last_probe": last + to_wall if last is not None else None,
                "in_start_period": self.in_start_period(now)}

    def snapshot(self, now: float) -> HealthSnapshot:
        """The state for display."""
        return HealthSnapshot(
            state=self._state, confirmed=self._confirmed, successes=self._successes,
            failures=self._failures, rise=self._settings.rise, fall=self._settings.fall,
            since=self._since, up_since=self._up_since,
            in_start_period=self.in_start_period(now), last_ok=self._last_ok,
            last_reason=self._last_reason, last_probe_at=self._last_probe_at,
            change_reason=self._change_reason)


def transition_log_line(subject: str, transition: Transition) -> str:
    """The log line for a transition: `backend web/app1 is DOWN: connect refused (3/3 ...)`.

    `subject` names the backend as the caller wants it shown (service, name, address).
    """
    return f"{subject} is {transition.new.name}: {transition.reason}"
