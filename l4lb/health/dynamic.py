"""What agents and `misc_dynamic` commands say about a backend, and how that combines with
the operator's state into the weight, admin state and health the pool sees.

Pure: no I/O, no clock. This is the one "dynamic weight" path of l4lb: an agent's reply
(`[services.agent]`, HAProxy's agent-check) and the exit status of a `kind = "exec"` check
with `dynamic = true` (keepalived's misc_dynamic) both end up in a `Dynamic` per backend, and
`combine()` is the only place that applies it. The daemon passes these records to
l4lb.weights.compute as data.

Precedence (docs/health.md, "Who decides what"):

1. **Admin state**: the operator's (`l4lb drain`/`disable`/`enable`) and the agent's
   (`drain`/`maint`/`ready`) are two separate flags, and the stricter one holds:
   maint > drain > up. The agent's `ready` clears only the agent's own flag, so it never
   undoes an operator's `drain` or `maint`; `l4lb enable` clears only the operator's, so a
   backend whose agent said `drain` stays drained until the agent says `ready`.
2. **Health**: the backend is UP only if its health check says UP (or it has none) and its
   agent has not said `down`, `fail` or `stopped` since it last said `up` (or `ready`).
   The words differ for the pool (`pool_admin`): `stopped` says the backend was taken out on
   purpose (a deploy), so the pool treats it like `maint` (not enabled: it counts neither as
   UP nor as missing for min_healthy, and a panic never puts it back); `down` and `fail` are
   the agent's findings of a failure, which count like a health check's DOWN (a panic may put
   the backend back, as it does for a probe's verdict).
3. **Connection limit**: the base is the operator's (`l4lb maxconn`, else the file's
   `max_connections`); an agent's `maxconn:N` is a second limit, and the stricter one holds
   (the smaller of those that are set; 0 sets none, so `maxconn:0` lifts only the agent's).
4. **Weight**: the base is the operator's weight (`l4lb weight`, else the file's); a
   misc_dynamic exit status 2..255 replaces it with status - 2; an agent's percentage then
   scales it: floor(base x percent / 100), at least 1 when the percentage is above 0, at most
   MAX_WEIGHT. 0% (or a misc_dynamic weight of 0) leaves the backend out of new sessions
   like a drain: in l4lb.health.pool it is then not "enabled".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from l4lb.health.agentreply import AgentAdmin, AgentHealth, AgentReply

AdminState = Literal["up", "drain", "maint"]
HealthWord = Literal["up", "down"]
MAX_WEIGHT = 256  # the forwarding table's largest weight (HAProxy's SRV_UWGHT_MAX too)
_ADMIN_RANK: dict[AdminState, int] = {"up": 0, "drain": 1, "maint": 2}
_AGENT_ADMIN: dict[AgentAdmin, AdminState] = {"ready": "up", "drain": "drain", "maint": "maint"}


@dataclass(frozen=True)
class Dynamic:
    """The dynamic state of one backend: what its agent said last (each field as long as the
    agent has not said otherwise) and the weight its misc_dynamic command set."""

    percent: int | None = None  # agent's weight percentage; None: never said
    admin: AgentAdmin = "ready"  # agent's admin word ("ready" until it says drain/maint)
    health: AgentHealth = "up"  # agent's health word ("up" until it says down/fail/stopped)
    reason: str = ""  # the `#` text of the agent's last reply that changed something
    maxconn: int | None = None  # agent's connection limit (0: none); None: never said
    exec_weight: int | None = None  # misc_dynamic: exit status - 2; None: not set


NEUTRAL = Dynamic()  # what a backend without an agent or misc_dynamic weight has


def apply_reply(state: Dynamic, reply: AgentReply) -> Dynamic:
    """`state` after the agent's valid `reply`: what the reply says replaces what it said
    before; what it leaves out stays. `up` and `ready` both clear an agent's down/fail/stopped
    (HAProxy: `ready` is an admin word and leaves health alone; see docs/health.md)."""
    if not reply.ok:
        return state
    percent = reply.percent if reply.percent is not None else state.percent
    admin = reply.admin if reply.admin is not None else state.admin
    health = reply.health if reply.health is not None else state.health
    if reply.health is None and reply.admin == "ready":
        health = "up"
    maxconn = reply.maxconn if reply.maxconn is not None else state.maxconn
    said = (reply.percent is not None or reply.admin is not None or reply.health is not None
            or reply.maxconn is not None)
    reason = reply.reason if said else state.reason
    return Dynamic(percent=percent, admin=admin, health=health, reason=reason,
                   maxconn=maxconn, exec_weight=state.exec_weight)


def agent_admin(state: Dynamic) -> AdminState:
    """The agent's admin flag in the operator's vocabulary."""
    return _AGENT_ADMIN[state.admin]


def combined_admin(operator: AdminState, state: Dynamic) -> AdminState:
    """The stricter of the operator's and the agent's admin states (maint > drain > up)."""
    agent = agent_admin(state)
    return operator if _ADMIN_RANK[operator] >= _ADMIN_RANK[agent] else agent


def pool_admin(operator: AdminState, state: Dynamic) -> AdminState:
    """The admin state the pool sees: `combined_admin`, except that an agent's `stopped` is
    `maint` there (taken out on purpose: not enabled, never put back by a panic; see the
    module docstring). What operators see stays `combined_admin` with the health `down`."""
    if state.health == "stopped":
        return "maint"
    return combined_admin(operator, state)


def combined_health(checked: HealthWord, state: Dynamic) -> HealthWord:
    """DOWN when the health check or the agent says so."""
    return "down" if checked == "down" or state.health != "up" else "up"


def combined_weight(base: int, state: Dynamic) -> int:
    """The weight after misc_dynamic and the agent's percentage (see the module docstring)."""
    weight = state.exec_weight if state.exec_weight is not None else base
    if state.percent is None:
        return min(weight, MAX_WEIGHT)
    if state.percent == 0 or weight == 0:
        return 0
    return min(MAX_WEIGHT, max(1, weight * state.percent // 100))


def combined_max_connections(base: int, state: Dynamic) -> int:
    """The backend's connection limit: the smaller of the operator's and the agent's, where
    0 (or an agent that never said `maxconn:`) sets none. 0: no limit."""
    limits = [n for n in (base, state.maxconn or 0) if n > 0]
    return min(limits) if limits else 0


def agent_words(state: Dynamic) -> str:
    """What the agent holds the backend at, in its own words: `drain 50% (#window)`, or ""
    when it holds nothing (ready, up, no percentage)."""
    words: list[str] = []
    if state.admin != "ready":
        words.append(state.admin)
    if state.health != "up":
        words.append(state.health)
    if state.percent is not None and state.percent != 100:
        words.append(f"{state.percent}%")
    if state.maxconn:
        words.append(f"maxconn:{state.maxconn}")
    if not words:
        return ""
    return " ".join(words) + (f" (#{state.reason})" if state.reason else "")
