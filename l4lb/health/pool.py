"""Compute a service's effective backend weights from health, admin state, backups and slow start.

Pure logic: the daemon passes every backend of one service with its configured weight, health
(`Health.UP`/`DOWN` from the dampener), admin state and slow-start start time, and gets back the
weight per backend for the table builder (0 = not eligible for new connections), plus what it
needs to log and to schedule the next rebuild.

The rules, in order:

1. *Enabled* backends are those with admin state `up` and a configured weight > 0. `drain` and
   `maint` are operator intent: weight 0, and they count neither as healthy nor as missing.
2. *Tiers*: the primary backends serve while at least one enabled primary is UP; otherwise the
   backups serve if one of them is UP; otherwise the primaries (or, with none enabled, the
   backups) form the tier that panics. Backups never mix with primaries.
3. *min_healthy*: when fewer than `min_healthy` x (enabled backends of the tier) are UP, the
   health verdicts of that tier are ignored ("panic"): every enabled backend of the tier gets its
   configured weight, DOWN ones included. The checker is then more likely wrong than the
   backends, and the data plane's connect retry absorbs the ones that are really dead.
   *Unproven* backends take no part in this: a backend that started DOWN (`initial_state =
   "down"`) and has had no verdict yet (it has not come UP, and no failed probe has been counted
   against it) is not known bad, only not yet shown good. It counts neither as UP nor as enabled
   for min_healthy, and panic does not put it in rotation; with no UP backend anywhere, the tier
   that panics is the primaries with a verdict, else the backups with one, else none panics.
   So a pool of new `initial_state = "down"` backends carries no traffic until they pass `rise`
   probes, instead of panicking at once.
4. *Slow start*: an UP backend whose ramp started `e` seconds ago (e < slow_start) gets
   `1 + floor((weight - 1) * e' / slow_start)`, where e' is e rounded down to a whole number of
   ticks of max(1 s, slow_start / 20) (as HAProxy's warm-up task): 1 at once, its full weight
   after slow_start, and at most 20 weight changes (so at most 20 table rebuilds) per ramp,
   however large the weight. A weight-1 backend has no steps to ramp through. Not applied in
   panic.

`next_change` tells the daemon when a slow-start ramp will next change a weight, so it can
schedule one rebuild instead of polling.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Generic, Literal, TypeVar

from l4lb.health.dampener import Health

AdminState = Literal["up", "drain", "maint"]
Tier = Literal["primary", "backup", "none"]
ADMIN_STATES: tuple[AdminState, ...] = ("up", "drain", "maint")

K = TypeVar("K", bound=Hashable)

_EPS = 1e-9  # absorbs float rounding at ramp step boundaries


@dataclass(frozen=True)
class PoolMember(Generic[K]):
    """One backend of a service as the pool sees it."""

    key: K  # whatever identifies the backend to the caller (name, id, address)
    weight: int  # configured (or runtime-set) weight, 0..256
    health: Health  # from the dampener
    admin: AdminState = "up"  # operator state
    backup: bool = False  # serves only when no primary is UP
    ramp_start: float | None = None  # monotonic start of its slow-start ramp; None = no ramp
    unproven: bool = False  # DOWN since added with initial_state "down", no verdict yet (rule 3)


@dataclass(frozen=True)
class PoolResult(Generic[K]):
    """Effective weights of one service and the facts about how they were chosen."""

    weights: dict[K, int]  # effective weight per member key; 0 = not eligible
    tier: Tier  # which tier serves new connections ("none": nothing enabled)
    panic: bool  # health verdicts of the tier are ignored (below min_healthy)
    tier_up: int  # UP enabled backends of the tier
    tier_enabled: int  # enabled backends of the tier
    up: int  # UP enabled backends of the whole service, both tiers (for VRRP tracking)
    enabled: int  # enabled backends of the whole service, both tiers
    next_change: float | None  # monotonic time a slow-start step changes a weight; None = never
    tier_unproven: int = 0  # unproven enabled backends of the tier (not in tier_enabled)

    @property
    def panic_reason(self) -> str:
        """One line for the panic warning, e.g. `0 of 3 enabled primary backends are UP`, with
        `; 2 unproven left out` when unproven backends of the tier were not counted."""
        text = f"{self.tier_up} of {self.tier_enabled} enabled {self.tier} backends are UP"
        if self.tier_unproven:
            text += f"; {self.tier_unproven} unproven left out"
        return text


def _is_enabled(member: PoolMember[K]) -> bool:
    return member.admin == "up" and member.weight > 0


def _is_unproven(member: PoolMember[K]) -> bool:
    """Unproven and DOWN (an UP backend has had its verdict, whatever the flag says)."""
    return member.unproven and member.health is Health.DOWN


RAMP_TICK_MIN = 1.0  # seconds: a ramp changes a weight at most once a second,
RAMP_TICKS = 20  # and at most this many times (HAProxy's warm-up: max(1 s, slowstart / 20))


def ramp_weight(weight: int, ramp_start: float | None, slow_start: float,
                now: float) -> tuple[int, float | None]:
    """The slow-start weight at `now` and the time of its next step (None when fully ramped)."""
    if ramp_start is None or slow_start <= 0 or weight <= 1:
        return weight, None
    if now >= ramp_start + slow_start:
        return weight, None
    tick = max(RAMP_TICK_MIN, slow_start / RAMP_TICKS)
    current = _ramp_weight_at(weight, ramp_start, slow_start, tick, now)
    ticks = int(max(0.0, now - ramp_start) / tick + _EPS)
    end = ramp_start + slow_start
    for k in range(ticks + 1, ticks + RAMP_TICKS + 2):  # the first later tick that changes it
        step_at = min(ramp_start + k * tick, end)
        if step_at < end and \
                1 + _ramp_steps(weight - 1, ramp_start, slow_start, step_at) <= current:
            continue  # a tick without a change
        # Rounding (large monotonic times) can put the computed instant a few ulps before the
        # one where the weight really changes; the caller must see a change at step_at.
        for _ in range(64):
            if _ramp_weight_at(weight, ramp_start, slow_start, tick, step_at) > current:
                break
            step_at = math.nextafter(step_at, math.inf)
        return current, step_at
    return current, end  # not reached: the end always changes it


def _ramp_weight_at(weight: int, ramp_start: float, slow_start: float, tick: float,
                    now: float) -> int:
    """The ramp's weight at `now`: full from ramp_start + slow_start on."""
    if now >= ramp_start + slow_start:
        return weight
    ticks = int(max(0.0, now - ramp_start) / tick + _EPS)
    return 1 + _ramp_steps(weight - 1, ramp_start, slow_start, ramp_start + ticks * tick)


def _ramp_steps(steps: int, ramp_start: float, slow_start: float, now: float) -> int:
    """Completed ramp steps (0..steps) at `now`."""
    elapsed = max(0.0, now - ramp_start)
    return min(steps, int(steps * elapsed / slow_start + _EPS))


def effective_weights(members: Sequence[PoolMember[K]], now: float, min_healthy: float = 0.0,
                      slow_start: float = 0.0) -> PoolResult[K]:
    """Apply the module's rules to one service's members (order does not matter)."""
    weights: dict[K, int] = {m.key: 0 for m in members}
    enabled = [m for m in members if _is_enabled(m)]
    primaries = [m for m in enabled if not m.backup]
    backups = [m for m in enabled if m.backup]
    up_primaries = [m for m in primaries if m.health is Health.UP]
    up_backups = [m for m in backups if m.health is Health.UP]
    up_total = len(up_primaries) + len(up_backups)
    tier: Tier
    if up_primaries:
        tier, tier_members, up = "primary", primaries, up_primaries
    elif up_backups:
        tier, tier_members, up = "backup", backups, up_backups
    elif primaries and (any(not _is_unproven(m) for m in primaries)
                        or all(_is_unproven(m) for m in backups)):
        # nothing is UP: the primaries panic, unless only the backups have had a verdict
        tier, tier_members, up = "primary", primaries, up_primaries
    elif backups:
        tier, tier_members, up = "backup", backups, up_backups
    else:
        return PoolResult(weights=weights, tier="none", panic=False, tier_up=0, tier_enabled=0,
                          up=0, enabled=0, next_change=None)
    group = [m for m in tier_members if not _is_unproven(m)]
    threshold = Fraction(min_healthy).limit_denominator(1_000_000) * len(group)
    panic = len(up) < threshold
    next_change: float | None = None
    if panic:
        for m in group:
            weights[m.key] = m.weight
    else:
        for m in up:
            w, step_at = ramp_weight(m.weight, m.ramp_start, slow_start, now)
            weights[m.key] = w
            if step_at is not None:
                next_change = step_at if next_change is None else min(next_change, step_at)
    return PoolResult(weights=weights, tier=tier, panic=panic, tier_up=len(up),
                      tier_enabled=len(group), up=up_total, enabled=len(enabled),
                      next_change=next_change, tier_unproven=len(tier_members) - len(group))
