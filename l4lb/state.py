"""Runtime state of every backend (admin state, runtime weight) and the effective weights.

Pure: no I/O, no clock. The daemon owns one `Runtime`; the control API and the health checker
change it; after every change the daemon rebuilds and publishes the forwarding table with the
weights l4lb.weights computes from it. Keys are (service name, backend address as written).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from l4lb.config.model import Backend, Config

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
        """State for `config`; backends also present in `previous` keep their runtime state."""
        rt = cls()
        for service in config.services:
            for backend in service.backends:
                key = (service.name, address_text(backend))
                old = previous.backends.get(key) if previous is not None else None
                rt.backends[key] = BackendRuntime(
                    service=service.name, address=key[1], name=backend.name,
                    weight=backend.weight if old is None else old.weight,
                    backup=backend.backup,
                    admin="up" if old is None else old.admin,
                    health="up" if old is None else old.health,
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


def address_text(backend: Backend) -> str:
    """The backend's address exactly as written in the file."""
    return backend.address.text or str(backend.address)
