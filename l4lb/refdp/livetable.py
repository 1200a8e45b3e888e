"""The published forwarding table as the workers use it: parsed blob, generation, lookups.

A LiveTable is immutable. publish() builds a new one and replaces the data plane's reference in
one assignment; a worker reads that reference whenever it picks a backend (for a new session or
a retry), and an established session never reads a table again. Python's garbage collector
frees a table once nothing refers to it, which is what the C core does by hand with
generations.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket

from l4lb.table.blob import BackendRec, ServiceRec, Table
from l4lb.table.hashing import flow_hash


class LiveTable:
    """A validated table, its generation, and per-service / per-backend lookups."""

    def __init__(self, table: Table, generation: int) -> None:
        self.table = table  # the parsed blob
        self.generation = generation  # 1, 2, ... in publish order
        self._by_service_id: dict[int, ServiceRec] = {s.service_id: s for s in table.services}
        # (host text, port) to connect to, by absolute backend index
        self.targets: list[tuple[str, int]] = [_target(b) for b in table.backends]
        # source address to bind before connecting, by absolute backend index (None: none)
        self.sources: list[str | None] = [_source(b) for b in table.backends]

    def service(self, service_id: int) -> ServiceRec | None:
        """The service with this stable id, None when the table has none."""
        return self._by_service_id.get(service_id)

    def backend(self, index: int) -> BackendRec:
        """The backend record at an absolute index."""
        return self.table.backends[index]

    def any_weighted(self, svc: ServiceRec) -> bool:
        """True when some backend of svc has weight > 0 (it may still be at its max)."""
        first = svc.backend_first
        return any(b.weight > 0 for b in self.table.backends[first:first + svc.backend_count])

    def service_backend(self, svc: ServiceRec, backend_id: int) -> BackendRec | None:
        """The record of backend_id among svc's backends, None when svc has no such backend."""
        first = svc.backend_first
        for rec in self.table.backends[first:first + svc.backend_count]:
            if rec.backend_id == backend_id:
                return rec
        return None

    def proxy_from_match(self, svc: ServiceRec, host: str) -> bool:
        """Is a client of svc one of its accept_proxy_from sources (it owes a PROXY header)?"""
        addr = ipaddress.ip_address(host.split("%", 1)[0])
        return self.table.proxy_from_match(svc, addr.version, addr.packed.ljust(16, b"\0"))

    def flow_hash(self, svc: ServiceRec, host: str, port: int) -> int:
        """The flow hash of a client of svc (docs/forwarding-table.md, "Flow hash")."""
        addr = ipaddress.ip_address(host.split("%", 1)[0])
        addr16 = addr.packed.ljust(16, b"\0")
        return flow_hash(self.table.hash_seed, addr.version, addr16, port, svc.hash_key)


IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: bind(address, 0) reserves no port until connect()


def bind_source(sock: socket.socket, host: str) -> None:
    """Give a fresh, unconnected backend socket its source address (the C relay's
    relay_bind_source): IP_BIND_ADDRESS_NO_PORT (best effort), then bind((host, 0)), so the
    kernel picks the port at connect(). OSError from the bind: a failed connect attempt of
    the backend (docs/configuration.md, `source`)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((host, 0))


def _source(backend: BackendRec) -> str | None:
    raw = bytes(backend.source_addr)
    if backend.source_family == 0:
        return None
    return str(ipaddress.ip_address(raw[:4] if backend.source_family == 4 else raw))


def _target(backend: BackendRec) -> tuple[str, int]:
    raw = bytes(backend.addr)
    addr = ipaddress.ip_address(raw[:4] if backend.family == 4 else raw[:16])
    return str(addr), backend.port
