"""Compute every backend's effective weight and connection limit from the runtime state.

Weights come from admin state, health and the pool rules; connection limits from the operator's
(`l4lb maxconn`, else the file's) and the agent's `maxconn:`.

Pure: the daemon passes the configuration, the runtime state and the time; the result feeds
TableBuilder.build. Every service goes through l4lb.health.pool (backups, min_healthy panic,
slow start); a service without `[services.health]` simply has all backends UP, no panic and no
ramp, which reduces to "admin up and weight > 0".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from l4lb.config.model import Config
from l4lb.health.dampener import Health
from l4lb.health.dynamic import (
    NEUTRAL,
    Dynamic,
    combined_health,
    combined_max_connections,
    combined_weight,
    pool_admin,
)
from l4lb.health.pool import PoolMember, effective_weights
from l4lb.state import Runtime, address_text

Key = tuple[str, str]  # (service name, backend address as written)


@dataclass(frozen=True)
class Weights:
    """Effective weights of all services and the facts the daemon reports."""

    weights: dict[Key, int]  # what the table builder gets
    panic: dict[str, str]  # service -> panic reason, for services in panic only
    up: dict[str, int]  # service -> UP enabled backends (both tiers; for tracking)
    next_change: float | None  # monotonic time a slow-start step is due; None = none
    max_connections: dict[Key, int]  # every backend's connection limit (0: none), for the table


def compute(config: Config, runtime: Runtime, now: float,
            ramp_start: Callable[[Key], float | None] = lambda key: None,
            unproven: Callable[[Key], bool] = lambda key: False,
            dynamic: Mapping[Key, Dynamic] | None = None) -> Weights:
    """Weights for every backend of `config` given `runtime` at monotonic time `now`, and
    `dynamic`: what agents and misc_dynamic commands said (absent keys: nothing)."""
    said = dynamic if dynamic is not None else {}
    weights: dict[Key, int] = {}
    panic: dict[str, str] = {}
    up: dict[str, int] = {}
    next_change: float | None = None
    limits: dict[Key, int] = {}
    for service in config.services:
        members = []
        for backend in service.backends:
            key = (service.name, address_text(backend))
            rt = runtime.backends[key]
            dyn = said.get(key, NEUTRAL)
            limits[key] = combined_max_connections(rt.max_connections, dyn)
            members.append(PoolMember(
                key=key, weight=combined_weight(rt.weight, dyn),
                health=(Health.UP if combined_health(rt.health, dyn) == "up"
                        else Health.DOWN),
                admin=pool_admin(rt.admin, dyn), backup=rt.backup,
                ramp_start=ramp_start(key) if service.health is not None else None,
                unproven=service.health is not None and unproven(key)))
        hs = service.health
        result = effective_weights(members, now,
                                   min_healthy=hs.min_healthy if hs is not None else 0.0,
                                   slow_start=hs.slow_start if hs is not None else 0.0)
        weights.update(result.weights)
        up[service.name] = result.up
        if result.panic:
            panic[service.name] = result.panic_reason
        if result.next_change is not None:
            next_change = (result.next_change if next_change is None
                           else min(next_change, result.next_change))
    return Weights(weights=weights, panic=panic, up=up, next_change=next_change,
                   max_connections=limits)
