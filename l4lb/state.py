"""Runtime state of every backend (admin state, runtime weight and limit, drain deadlines).

Pure: no I/O, no clock (callers pass the time). The daemon owns one `Runtime`; the control API
and the health checker change it; after every change the daemon rebuilds and publishes the
forwarding table with the weights l4lb.weights computes from it. Keys are (service name,
backend address as written).

`Drains` is the bookkeeping of `l4lb drain --timeout`: at most one armed deadline per backend,
each with an id that is never reused, and how each one ended (the deadline closed the rest, the
backend emptied by itself, or another command cancelled it), kept for the last few hundred so
a CLI that polls by id learns the outcome even after the deadline is gone. The daemon owns the
timers and the data-plane calls; this class only records.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from l4lb.config.model import Backend, Config
from l4lb.table.builder import U32_MAX  # the table's field for max_connections

AdminState = Literal["up", "drain", "maint"]
HealthState = Literal["up", "down"]
MAX_WEIGHT = 256


class StateError(ValueError):
    """A request names something that does not exist or asks for something impossible."""


@dataclass
class BackendRuntime:
    """What the control plane knows of one backend beyond the file."""

    service: str  # service name
    address: str  # as written in the file
    name: str  # backend name (defaults to the address)
    weight: int  # current weight: from the file, or set at run time
    backup: bool  # backup backends carry traffic only while no primary is up
    file_weight: int  # the file's weight when it was last loaded: a reload that changes it
    #                   replaces a runtime weight, one that keeps it keeps the runtime weight
    max_connections: int = 0  # current limit (0: none): from the file, or set at run time
    file_max_connections: int = 0  # the file's max_connections when it was last loaded
    admin: AdminState = "up"  # up | drain (no new sessions) | maint (disabled)
    health: HealthState = "up"  # up until a health check says otherwise

    @property
    def state(self) -> str:
        """The one word an operator sees: maint, drain, down or up (in that precedence)."""
        if self.admin != "up":
            return self.admin
        return self.health


@dataclass
class Runtime:
    """Runtime state of all backends of a configuration, carried over reloads by key."""

    backends: dict[tuple[str, str], BackendRuntime] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config, previous: Runtime | None = None) -> Runtime:
        """State for `config`; backends also present in `previous` keep their runtime state.

        A runtime weight or connection limit (`l4lb weight`, `l4lb maxconn`) survives a reload
        that leaves the file's value of that backend as it was; where the file's value changed,
        the new file wins, as the operator edited it last (HAProxy's server-state file does the
        same with its configured weight)."""
        rt = cls()
        for service in config.services:
            for backend in service.backends:
                key = (service.name, address_text(backend))
                old = previous.backends.get(key) if previous is not None else None
                rt.backends[key] = BackendRuntime(
                    service=service.name, address=key[1], name=backend.name,
                    weight=(old.weight if old is not None and old.file_weight == backend.weight
                            else backend.weight),
                    backup=backend.backup, file_weight=backend.weight,
                    max_connections=(old.max_connections if old is not None
                                     and old.file_max_connections == backend.max_connections
                                     else backend.max_connections),
                    file_max_connections=backend.max_connections,
                    admin="up" if old is None else old.admin,
                    # a new backend starts as its health check's initial_state says, so the
                    # first table already leaves out one that must prove itself; a service
                    # without health checks has every backend up
                    health=("up" if service.health is None
                            else old.health if old is not None
                            else service.health.initial_state),
                )
        return rt

    def find(self, service: str, backend: str) -> BackendRuntime:
        """The backend of `service` whose address (as written) or name is `backend`."""
        candidates = [b for (svc, _), b in self.backends.items() if svc == service]
        if not candidates:
            services = sorted({svc for svc, _ in self.backends})
            raise StateError(f"no service named {service!r} (services: {', '.join(services)})")
        for b in candidates:
            if backend in (b.address, b.name):
                return b
        known = ", ".join(b.address if b.name == b.address else f"{b.name} ({b.address})"
                          for b in candidates)
        raise StateError(f"service {service!r} has no backend {backend!r} (backends: {known})")

    def set_admin(self, service: str, backend: str, admin: AdminState) -> BackendRuntime:
        b = self.find(service, backend)
        b.admin = admin
        return b

    def set_weight(self, service: str, backend: str, weight: int) -> BackendRuntime:
        if not 0 <= weight <= MAX_WEIGHT:
            raise StateError(f"weight {weight} out of range 0..{MAX_WEIGHT}")
        b = self.find(service, backend)
        b.weight = weight
        return b

    def set_max_connections(self, service: str, backend: str, limit: int) -> BackendRuntime:
        if not 0 <= limit <= U32_MAX:
            raise StateError(f"max_connections {limit} out of range 0..{U32_MAX} (0: no limit)")
        b = self.find(service, backend)
        b.max_connections = limit
        return b


DrainOutcome = Literal["deadline", "drained", "cancelled"]
MAX_DRAIN_OUTCOMES = 256  # ended drains remembered for drain-status


@dataclass
class DrainDeadline:
    """One armed `drain --timeout`: at `deadline` the daemon closes what is left."""

    ident: int  # drain id, unique for the daemon's life (the CLI polls with it)
    key: tuple[str, str]  # (service, backend address as written)
    armed: float  # unix time it was armed
    deadline: float  # unix time the remaining sessions and flows are closed
    timeout: float  # seconds asked for (deadline - armed)

    def remaining(self, now: float) -> float:
        """Seconds until the deadline (0 once it has passed)."""
        return max(0.0, self.deadline - now)


@dataclass(frozen=True)
class DrainEnd:
    """How an armed drain ended."""

    ident: int  # the drain's id
    key: tuple[str, str]  # its backend
    outcome: DrainOutcome  # deadline | drained (nothing left) | cancelled
    closed: int  # sessions and flows closed at the deadline (0 otherwise)
    reason: str  # for "cancelled": what cancelled it, e.g. "backend enabled"
    at: float  # unix time it ended

    def as_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "closed": self.closed, "reason": self.reason,
                "at": self.at}


@dataclass
class Drains:
    """Armed drain deadlines by backend, and the recent ends by id."""

    pending: dict[tuple[str, str], DrainDeadline] = field(default_factory=dict)  # by backend
    ended: OrderedDict[int, DrainEnd] = field(default_factory=OrderedDict)  # oldest first
    last_id: int = 0  # the last id handed out

    def arm(self, key: tuple[str, str], now: float, timeout: float) -> tuple[DrainDeadline,
                                                                           DrainEnd | None]:
        """Arm a deadline `timeout` seconds from `now` for `key`; a deadline already armed for
        it is cancelled (returned as the second value)."""
        if timeout < 0:
            raise StateError(f"drain timeout {timeout} is negative")
        replaced = self.end(key, "cancelled", now, reason="replaced by a new drain")
        self.last_id += 1
        armed = DrainDeadline(self.last_id, key, now, now + timeout, timeout)
        self.pending[key] = armed
        return armed, replaced

    def end(self, key: tuple[str, str], outcome: DrainOutcome, now: float, *, closed: int = 0,
            reason: str = "") -> DrainEnd | None:
        """End the deadline armed for `key`, if any, and remember how."""
        armed = self.pending.pop(key, None)
        if armed is None:
            return None
        done = DrainEnd(armed.ident, key, outcome, closed, reason, now)
        self.ended[armed.ident] = done
        while len(self.ended) > MAX_DRAIN_OUTCOMES:
            self.ended.popitem(last=False)
        return done

    def by_id(self, ident: int) -> DrainDeadline | DrainEnd | None:
        """The armed deadline or the remembered end with this id (None: unknown or forgotten)."""
        for armed in self.pending.values():
            if armed.ident == ident:
                return armed
        return self.ended.get(ident)

    def prune(self, runtime: Runtime, now: float) -> list[DrainEnd]:
        """Cancel deadlines whose backend is gone or no longer draining (after a reload or a
        runtime removal); returns what was cancelled."""
        out = []
        for key in list(self.pending):
            rt = runtime.backends.get(key)
            if rt is None:
                reason = "backend removed"
            elif rt.admin != "drain":
                reason = f"backend state is now {rt.state}"
            else:
                continue
            done = self.end(key, "cancelled", now, reason=reason)
            if done is not None:
                out.append(done)
        return out


def address_text(backend: Backend) -> str:
    """The backend's address exactly as written in the file."""
    return backend.address.text or str(backend.address)
