"""Build forwarding-table blobs for the data-plane tests straight from small specs.

The tests need exact control over ids, weights and limits (weight 0, per-backend maximums), so
they pack tables with l4lb.table.blob.pack instead of going through a Config; rings come from the
Python twins (l4lb.table.maglev), which the unit tests hold equal to the C fill. Backends of a
service are put in canonical order (family, address bytes, port) as the contract requires, and
`expected_backend` answers "which backend must a hashing scheduler pick for this client" from the
same twins, independently of either data plane.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from l4lb.table.blob import (
    FLAG_DOWN,
    SCHED_NAMES,
    SOURCE_CLIENT,
    BackendRec,
    ProxyFromRec,
    ServiceRec,
    Table,
    pack,
)
from l4lb.table.hashing import flow_hash
from l4lb.table.maglev import maglev_fill

HASH_KEYS = ("src_ip", "src_ip_port")
PROTOCOLS = ("tcp", "udp")
FLOW_KEYS = ("address_port", "address")  # udp flow_key 0 and 1


@dataclass(frozen=True)
class BackendSpec:
    """One backend of a test service."""

    name: str  # how the test refers to it
    host: str  # "127.0.0.1" or "::1"
    port: int
    weight: int = 1
    max_connections: int = 0
    down: bool = False  # flag bit 1: the control plane says DOWN (weight should be 0 then)
    backend_id: int | None = None  # a fixed id (tables that drop a backend keep the others')
    # source address bound before connecting (None: the kernel's; "client": the client's,
    # transparent)
    source: str | None = None


@dataclass(frozen=True)
class ServiceSpec:
    """One test service; its backends are sorted canonically when packed."""

    service_id: int
    backends: tuple[BackendSpec, ...]
    scheduler: str = "round_robin"
    hash_key: str = "src_ip"
    connect_timeout_ms: int = 1000
    idle_timeout_ms: int = 0
    retries: int = 2
    max_connections: int = 0
    maglev_size: int = 65537  # prime; only used by maglev
    protocol: str = "tcp"  # or "udp" (then idle_timeout_ms must be > 0)
    flow_key: str = "address_port"  # udp: what identifies a flow, see FLOW_KEYS
    max_flows: int = 0  # udp: flows at once, 0 = unlimited
    responses: int = 0  # udp: a flow ends after this many datagrams from its backend
    proxy_from: tuple[str, ...] = ()  # tcp: accept_proxy_from prefixes ("10.0.0.0/8", "::1")
    queue_timeout_ms: int = 0  # tcp: wait this long for a full backend, 0 = no queue
    max_queue: int = 0  # tcp: waiting clients at once (0 with a queue: 1024)


@dataclass(frozen=True)
class BuiltTable:
    """A packed blob and the ids the tests need to read counters."""

    blob: bytes
    table: Table
    backend_ids: dict[str, int]  # backend name -> backend_id
    names: dict[int, str]  # backend_id -> backend name


def _addr16(host: str) -> tuple[int, bytes]:
    addr = ipaddress.ip_address(host)
    return addr.version, addr.packed.ljust(16, b"\0")


def _canonical(spec: BackendSpec) -> tuple[int, bytes, int]:
    family, raw = _addr16(spec.host)
    return family, raw, spec.port


def build_table(services: list[ServiceSpec], hash_seed: int = 0,
                first_backend_id: int = 0) -> BuiltTable:
    """Pack services into a blob; backend ids are first_backend_id, +1, ... in packing order
    unless a BackendSpec fixes its own."""
    svc_recs: list[ServiceRec] = []
    be_recs: list[BackendRec] = []
    ring: list[int] = []
    proxy_from: list[ProxyFromRec] = []
    ids: dict[str, int] = {}
    for spec in services:
        ordered = sorted(spec.backends, key=_canonical)
        first = len(be_recs)
        for b in ordered:
            family, raw = _addr16(b.host)
            bid = first_backend_id + len(be_recs) if b.backend_id is None else b.backend_id
            if b.name in ids:
                raise ValueError(f"backend name {b.name!r} used twice")
            ids[b.name] = bid
            flags = FLAG_DOWN if b.down else 0
            sfam, sraw = ((SOURCE_CLIENT, bytes(16)) if b.source == "client"
                          else _addr16(b.source) if b.source is not None else (0, bytes(16)))
            be_recs.append(BackendRec(bid, family, flags, b.port, raw, b.weight,
                                      b.max_connections, sfam, sraw))
        sched = SCHED_NAMES.index(spec.scheduler)
        own = be_recs[first:]
        ring_entries: list[int] = []
        if spec.scheduler == "maglev" and any(r.weight for r in own):
            fill_input = [(r.family, r.addr, r.port, r.weight) for r in own]
            ring_entries = maglev_fill(hash_seed, fill_input, spec.maglev_size)
        elif spec.scheduler == "source_hash":
            for rel, rec in enumerate(own):
                ring_entries.extend([rel] * rec.weight)
        svc_recs.append(ServiceRec(
            service_id=spec.service_id, protocol=PROTOCOLS.index(spec.protocol),
            scheduler=sched, hash_key=HASH_KEYS.index(spec.hash_key),
            connect_timeout_ms=spec.connect_timeout_ms, idle_timeout_ms=spec.idle_timeout_ms,
            retries=spec.retries, max_connections=spec.max_connections, backend_first=first,
            backend_count=len(ordered), ring_first=len(ring), ring_size=len(ring_entries),
            flow_key=FLOW_KEYS.index(spec.flow_key), max_flows=spec.max_flows,
            responses=spec.responses, proxy_from_first=len(proxy_from),
            proxy_from_count=len(spec.proxy_from), queue_timeout_ms=spec.queue_timeout_ms,
            max_queue=(spec.max_queue or 1024) if spec.queue_timeout_ms else spec.max_queue,
        ))
        ring.extend(ring_entries)
        proxy_from.extend(ProxyFromRec.of(ipaddress.ip_network(n)) for n in spec.proxy_from)
    table = Table(hash_seed, tuple(svc_recs), tuple(be_recs), tuple(ring), tuple(proxy_from))
    return BuiltTable(pack(table), table, ids, {v: k for k, v in ids.items()})


def expected_backend(built: BuiltTable, service_id: int, client: tuple[str, int]) -> str:
    """Name of the backend a hashing scheduler must give this client (first pick, no limits)."""
    table = built.table
    svc = table.service(service_id)
    assert svc is not None and svc.ring_size > 0
    family, raw = _addr16(client[0])
    h = flow_hash(table.hash_seed, family, raw, client[1], svc.hash_key)
    rel = table.ring[svc.ring_first + h % svc.ring_size]
    return built.names[table.backends[svc.backend_first + rel].backend_id]
