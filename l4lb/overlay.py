"""Runtime backend additions and removals, laid over the configuration file.

`l4lb add-backend` / `remove-backend` change the running set of backends without editing the
file. The daemon keeps the file's Config and these changes apart, and runs the overlay of the
two, so `l4lb status` can show every runtime change as a difference from the file, and a reload
re-applies the changes to the new file. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from l4lb.config.addresses import parse_endpoint
from l4lb.config.model import Backend, Config, Endpoint, Service
from l4lb.state import address_text

MAX_WEIGHT = 256
MAX_BACKENDS = 65536  # all services together, as the forwarding table allows


class OverlayError(ValueError):
    """A runtime change that cannot be made; the message says why."""


@dataclass
class Overlay:
    """Backends added and removed at run time, by (service name, address as written)."""

    added: dict[tuple[str, str], Backend] = field(default_factory=dict)
    removed: set[tuple[str, str]] = field(default_factory=set)

    def apply(self, config: Config) -> Config:
        """The configuration the daemon runs: the file's, with the changes applied."""
        services = []
        for service in config.services:
            # a runtime addition replaces the file's entry of the same address (re-added after
            # a removal, perhaps with another weight)
            backends = [b for b in service.backends
                        if (service.name, address_text(b)) not in self.removed
                        and (service.name, address_text(b)) not in self.added]
            backends += [b for (svc, _), b in self.added.items() if svc == service.name]
            services.append(dataclasses.replace(service, backends=tuple(backends)))
        return dataclasses.replace(config, services=tuple(services))

    def add(self, running: Config, service: str, address: str, *, weight: int = 1,
            name: str = "", backup: bool = False, max_connections: int = 0,
            file: Config | None = None) -> Backend:
        """Add a backend to `service` of the running configuration. When it is a backend of
        the file (`file`) that a runtime removal took out, with the same settings, the removal
        is undone instead: the service runs the file's backend again, with no difference left
        to show (and a later reload that drops it from the file drops it)."""
        svc = _service(running, service)
        try:
            endpoint = parse_endpoint(address, wildcard_ok=False)
        except ValueError as exc:
            raise OverlayError(f"add-backend: address {address!r}: {exc}") from None
        if not 1 <= weight <= MAX_WEIGHT:
            raise OverlayError(f"add-backend: weight {weight} out of range 1..{MAX_WEIGHT}")
        if max_connections < 0:
            raise OverlayError("add-backend: max_connections must be >= 0")
        name = name or address
        try:  # a name that is an address must be this backend's own
            name_endpoint: Endpoint | None = parse_endpoint(name, wildcard_ok=False)
        except ValueError:
            name_endpoint = None
        for b in svc.backends:
            if b.address == endpoint:
                raise OverlayError(f"add-backend: service {service!r} already has backend "
                                   f"{address_text(b)}")
            if b.name == name:
                raise OverlayError(f"add-backend: service {service!r} already has a backend "
                                   f"named {name!r}")
            if name_endpoint is not None and _same(name_endpoint, b.address):
                raise OverlayError(f"add-backend: name {name!r} is the address of backend "
                                   f"{address_text(b)} of service {service!r}; a backend's "
                                   "name must not be another backend's address")
            if _is_address(b.name, endpoint) and b.name != address_text(b):
                raise OverlayError(f"add-backend: address {address!r} is the name of backend "
                                   f"{address_text(b)} of service {service!r}; l4lb drain and "
                                   "the control API would not know which one is meant")
        if sum(len(s.backends) for s in running.services) >= MAX_BACKENDS:
            raise OverlayError(f"add-backend: at most {MAX_BACKENDS} backends in all services")
        if (svc.scheduler == "maglev" and svc.maglev_table_size <= len(svc.backends)):
            raise OverlayError(f"add-backend: service {service!r}: maglev_table_size "
                               f"{svc.maglev_table_size} allows no more backends")
        defaulted = name == address
        backend = Backend(address=endpoint, name=name, weight=weight,
                          max_connections=max_connections, backup=backup)
        for fb in _service(file, service).backends if file is not None else ():
            fkey = (service, address_text(fb))
            if fkey in self.removed and _same(fb.address, endpoint):
                own = dataclasses.replace(backend, name=address_text(fb)) if defaulted and \
                    fb.name == address_text(fb) else backend  # the address, however spelled
                if own == fb:
                    self.removed.discard(fkey)
                    return fb
        key = (service, address)
        self.removed.discard(key)
        self.added[key] = backend
        return backend

    def remove(self, running: Config, service: str, backend: str) -> str:
        """Remove the backend (address as written, or name) from `service`; its address."""
        svc = _service(running, service)
        match = [b for b in svc.backends if backend in (address_text(b), b.name)]
        if not match:
            known = ", ".join(address_text(b) for b in svc.backends)
            raise OverlayError(f"remove-backend: service {service!r} has no backend "
                               f"{backend!r} (backends: {known})")
        if len(svc.backends) == 1:
            raise OverlayError(f"remove-backend: {backend!r} is the last backend of service "
                               f"{service!r}; disable it instead (l4lb disable)")
        address = address_text(match[0])
        key = (service, address)
        if key in self.added:
            del self.added[key]
        else:
            self.removed.add(key)
        return address

    def copy(self) -> Overlay:
        return Overlay(added=dict(self.added), removed=set(self.removed))

    def reconciled(self, file_config: Config) -> tuple[Overlay, list[str]]:
        """For a reload: these changes minus those the new file made pointless, and notes on
        the ones that went. `self` is not changed (a rejected reload keeps it)."""
        out = self.copy()
        notes: list[str] = []
        in_file = {(s.name, address_text(b)) for s in file_config.services for b in s.backends}
        names = {s.name for s in file_config.services}
        for key in list(out.added):
            if key[0] not in names:
                notes.append(f"runtime backend {key[0]}/{key[1]} dropped: service is gone")
                del out.added[key]
        for key in list(out.removed):
            if key not in in_file:
                notes.append(f"runtime removal of {key[0]}/{key[1]} ended: the file no "
                             "longer has it")
                out.removed.discard(key)
        return out, notes

    def differences(self, service: str) -> dict[str, list[str]]:
        """What runs differently from the file, for `l4lb status`."""
        return {"added": sorted(a for (s, a) in self.added if s == service),
                "removed": sorted(a for (s, a) in self.removed if s == service)}


def _service(config: Config, name: str) -> Service:
    for service in config.services:
        if service.name == name:
            return service
    names = ", ".join(s.name for s in config.services)
    raise OverlayError(f"no service named {name!r} (services: {names})")


def _is_address(text: str, endpoint: Endpoint) -> bool:
    """Whether `text` is a spelling of `endpoint` (host and port)."""
    try:
        return _same(parse_endpoint(text, wildcard_ok=False), endpoint)
    except ValueError:
        return False


def _same(a: Endpoint, b: Endpoint) -> bool:
    return (a.host, a.port) == (b.host, b.port)
