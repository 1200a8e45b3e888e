"""The published forwarding table as the workers use it: parsed blob, generation, lookups.

A LiveTable is immutable. publish() builds a new one and replaces the data plane's reference in
one assignment; a worker reads that reference whenever it picks a backend (for a new session or
a retry), and an established session never reads a table again. Python's garbage collector
frees a table once nothing refers to it, which is what the C core does by hand with
generations.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
from collections.abc import Collection

from l4lb.table.blob import SOURCE_CLIENT, BackendRec, ServiceRec, Table
from l4lb.table.hashing import flow_hash


class LiveTable:
    """A validated table, its generation, and per-service / per-backend lookups."""

    def __init__(self, table: Table, generation: int) -> None:
        self.table = table  # the parsed blob
        self.generation = generation  # 1, 2, ... in publish order
        self._by_service_id: dict[int, ServiceRec] = {s.service_id: s for s in table.services}
        # (host text, port) to connect to, by absolute backend index
        self.targets: list[tuple[str, int]] = [_target(b) for b in table.backends]
        # source address to bind before connecting, by absolute backend index (None: none;
        # CLIENT: the session's client, transparent)
        self.sources: list[str | None] = [_source(b) for b in table.backends]

    def service(self, service_id: int) -> ServiceRec | None:
        """The service with this stable id, None when the table has none."""
        return self._by_service_id.get(service_id)

    def backend(self, index: int) -> BackendRec:
        """The backend record at an absolute index."""
        return self.table.backends[index]

    def any_weighted(self, svc: ServiceRec, client: str,
                     tried: Collection[int] = ()) -> bool:
        """True when some backend of svc has weight > 0 (it may still be at its max), is not
        among the `tried` backend ids, and is a candidate for `client` (not transparent of the
        other family: client_other_family)."""
        first = svc.backend_first
        return any(self.backend(i).weight > 0 and self.backend(i).backend_id not in tried
                   and not client_other_family(self.sources[i], client, self.targets[i][0])
                   for i in range(first, first + svc.backend_count))

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
IP_TRANSPARENT = 19  # linux/in.h, SOL_IP: bind and send from an address not of this host
IPV6_TRANSPARENT = 75  # linux/in6.h, SOL_IPV6: the same for an IPv6 socket
SOL_IP, SOL_IPV6 = 0, 41
CLIENT = "client"  # LiveTable.sources entry of a transparent backend (source = "client")


def bind_source(sock: socket.socket, source: str, client: str) -> None:
    """Give a fresh, unconnected backend socket its source address (the C relay's
    relay_bind_source): IP_BIND_ADDRESS_NO_PORT (best effort), then bind((source, 0)), so the
    kernel picks the port at connect(). For CLIENT (transparent) the address is `client`, the
    session's effective client (an IPv4-mapped IPv6 one as its IPv4 address), bound after
    IP_TRANSPARENT / IPV6_TRANSPARENT; a client of the other family than the socket's raises
    EAFNOSUPPORT (the workers never get there: the scheduler, told the client's family, leaves
    such a backend out). OSError: a failed connect attempt of the backend (docs/configuration.md,
    `source`)."""
    if source == CLIENT:
        addr = ipaddress.ip_address(client.split("%", 1)[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        six = sock.family == socket.AF_INET6
        if addr.version != (6 if six else 4):
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
        if six:
            sock.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
        else:
            sock.setsockopt(SOL_IP, IP_TRANSPARENT, 1)
        source = str(addr)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((source, 0))


def client_family(client: str) -> int:
    """The family (4 or 6) a client address binds as: an IPv4-mapped one is 4 (the C
    relay_client_family). The schedulers take it (l4lb.table.sched.pick's family)."""
    return _unmapped(ipaddress.ip_address(client.split("%", 1)[0])).version


def client_other_family(source: str | None, client: str, backend: str) -> bool:
    """Whether `source` is CLIENT and `client` is of the other family than `backend` (an IP;
    an IPv4-mapped IPv6 client counts as IPv4): no connection can leave from the client's
    address towards that backend, so it is no candidate for this client (the scheduler leaves
    it out; any_weighted uses this to tell a full service from one with none of the client's
    family; the C relay_client_other_family)."""
    if source != CLIENT:
        return False
    return (client_family(client)
            != ipaddress.ip_address(backend).version)


def client_unbindable(source: str | None, client: str, backend: str) -> bool:
    """Whether `source` is CLIENT and `client` is an address that cannot be the source of a
    connection to `backend` (an IP): IPv6 link-local (no scope in the session key), or
    loopback towards a backend that is not (the kernel never routes a loopback source off the
    host). The session is then the client's local error (accept_errors), not a connect failure
    of the backend (the C relay_client_unbindable)."""
    if source != CLIENT:
        return False
    addr = _unmapped(ipaddress.ip_address(client.split("%", 1)[0]))
    if addr.version == 6 and addr.is_link_local:
        return True
    return addr.is_loopback and not _unmapped(ipaddress.ip_address(backend)).is_loopback


def _unmapped(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) \
        -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4-mapped IPv6 address as its IPv4 address; any other as it is."""
    mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
    return mapped if mapped is not None else addr


def _source(backend: BackendRec) -> str | None:
    raw = bytes(backend.source_addr)
    if backend.source_family == 0:
        return None
    if backend.source_family == SOURCE_CLIENT:
        return CLIENT
    return str(ipaddress.ip_address(raw[:4] if backend.source_family == 4 else raw))


def _target(backend: BackendRec) -> tuple[str, int]:
    raw = bytes(backend.addr)
    addr = ipaddress.ip_address(raw[:4] if backend.family == 4 else raw[:16])
    return str(addr), backend.port
