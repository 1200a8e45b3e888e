"""The control plane's table builder: Config + backend weights -> forwarding-table blob.

TableBuilder keeps stable dense ids across rebuilds: a service keeps its id as long as its name
is in the config, a backend as long as its (service name, address) is. Ids are the keys of the
data plane's counters, sessions, UDP flows and scheduler state, so a reload must not renumber what
did not change. An id that leaves the table is retired: it is not handed to anything new until the
caller releases it (`release`), which the daemon does once the data plane shows no session or flow
on it any more and has zeroed its counters. Without that, a new backend would inherit a removed
one's counters, its open sessions (`l4lb sessions`, least_conn, drains) and its connection-log
lines.
New ids are the lowest free ones, allocated in config order (services) and canonical order
(backends), so two nodes that build from the same config get the same ids and, since backends are
sorted canonically and the hash seed comes from the config, byte-identical blobs.

Effective weight of a backend: 0 when it is in `down`, else the override in `weights` if present
(0 = down, drained or in maintenance), else the configured weight; a backup backend gets 0 while
any primary of its service has an effective weight > 0, else its own effective weight. A backend
in `down` (health DOWN or maintenance, not a drain) also gets flag bit 1, which tells the data
plane to move its UDP flows (docs/forwarding-table.md, "UDP services"). UDP services take their
idle timeout from `udp_idle_timeout` and carry flow_key (`session`), max_flows and responses;
TCP services leave those three at 0. The Maglev fill runs in C
(l4lb._dataplane.maglev_fill) unless the extension is missing or L4LB_NO_EXTENSIONS asks for the
pure-Python reference; both fill identically.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from l4lb.config.model import HASH_KEYS, SCHEDULERS, Backend, Config, Service
from l4lb.table.blob import (
    FLAG_BACKUP,
    FLAG_DOWN,
    FLOW_SRC_IP,
    FLOW_SRC_IP_PORT,
    MAX_BACKENDS,
    MAX_SERVICES,
    MAX_WEIGHT,
    NO_SOURCE,
    PROTO_TCP,
    PROTO_UDP,
    SCHED_MAGLEV,
    SCHED_SRCHASH,
    SOURCE_CLIENT,
    BackendRec,
    ProxyFromRec,
    ServiceRec,
    Table,
    pack,
)
from l4lb.table.hashing import addr16
from l4lb.table.maglev import MaglevBackend
from l4lb.table.maglev import maglev_fill as py_maglev_fill

MaglevFill = Callable[[int, Sequence[MaglevBackend], int], list[int]]
U32_MAX = 0xFFFFFFFF


def default_maglev_fill() -> MaglevFill:
    """The C fill when the extension imports and the reference was not requested, else Python."""
    from l4lb.dataplane import reference_requested

    if not reference_requested():
        try:
            from l4lb import _dataplane
        except ImportError:
            pass
        else:
            fill: MaglevFill = _dataplane.maglev_fill
            return fill
    return py_maglev_fill


def backend_label(backend: Backend) -> str:
    """A backend's address as written in the config (the key of `weights` and of IdMaps)."""
    return backend.address.text or str(backend.address)


@dataclass(frozen=True)
class IdMaps:
    """The ids of the last built table, for stats display."""

    services: Mapping[str, int]  # service name -> service_id
    backends: Mapping[tuple[str, str], int]  # (service name, backend_label) -> backend_id


def _ms(seconds: float) -> int:
    return min(max(round(seconds * 1000), 0), U32_MAX)


def _allocate(
    wanted: Iterable[object], previous: Mapping[object, int], retired: Mapping[int, object],
    limit: int, what: str
) -> dict[object, int]:
    """Ids for `wanted` keys (in order): kept from `previous`; else the retired id the same key
    last had (it comes back while something may still count on that id: it is the same
    service or backend); else the lowest id that is neither kept, nor used by the previous
    table, nor retired."""
    keys = list(wanted)
    result = {k: previous[k] for k in keys if k in previous}
    returning = {key: ident for ident, key in retired.items()}
    result.update({k: returning[k] for k in keys if k not in result and k in returning})
    taken = set(previous.values()) | set(result.values()) | set(retired)
    next_free = 0
    for k in keys:
        if k in result:
            continue
        while next_free in taken:
            next_free += 1
        if next_free >= limit:
            raise ValueError(f"{what}: no free id below {limit} (too many, or too much churn)")
        result[k] = next_free
        taken.add(next_free)
    return result


@dataclass(frozen=True)
class _Checkpoint:
    """What TableBuilder.checkpoint() saves."""

    svc_ids: Mapping[object, int]  # service name -> id
    bk_ids: Mapping[object, int]  # (service name, canonical endpoint) -> id
    retired_svc: Mapping[int, object]  # retired service ids -> the key that last had each
    retired_bk: Mapping[int, object]  # retired backend ids -> the key that last had each
    ids: IdMaps  # id maps of the last built table
    table: Table | None  # the last built table


def _retire(before: Mapping[object, int], after: Mapping[object, int],
            retired: Mapping[int, object]) -> dict[int, object]:
    """The retired ids after a build: those that left the table join, those that came back
    (their key returned) leave."""
    used = set(after.values())
    out = {ident: key for ident, key in retired.items() if ident not in used}
    out.update({ident: key for key, ident in before.items() if ident not in used})
    return out


def _restored(saved: Mapping[object, int], saved_retired: Mapping[int, object],
              now: Mapping[object, int], now_retired: Mapping[int, object]) -> dict[int, object]:
    """The retired ids after going back to a checkpoint: the checkpoint's, plus every id used or
    retired since that the checkpoint does not use."""
    used = set(saved.values())
    out = {ident: key for ident, key in now_retired.items() if ident not in used}
    out.update({ident: key for key, ident in now.items() if ident not in used})
    out.update(saved_retired)
    return out


class TableBuilder:
    """Builds forwarding-table blobs from configs, keeping ids stable between builds."""

    def __init__(self, maglev_fill: MaglevFill | None = None) -> None:
        self._fill = maglev_fill or default_maglev_fill()
        self._svc_ids: dict[object, int] = {}  # service name -> id, as in the last built table
        self._bk_ids: dict[object, int] = {}  # (service name, canonical endpoint) -> id, likewise
        # ids out of the table and not yet released, with the key that last had each
        self._retired_svc: dict[int, object] = {}
        self._retired_bk: dict[int, object] = {}
        self._ids = IdMaps({}, {})
        self._table: Table | None = None
        self._addr_cache: dict[str, tuple[int, bytes]] = {}  # host -> (family, 16-byte addr)

    @property
    def table(self) -> Table | None:
        """The last built table (decoded form), None before the first build."""
        return self._table

    def ids(self) -> IdMaps:
        """Id maps of the last built table."""
        return self._ids

    def service_ids(self) -> dict[str, int]:
        """Service name -> service_id in the last built table."""
        return dict(self._ids.services)

    def backend_ids(self) -> dict[tuple[str, str], int]:
        """(service name, backend address as written) -> backend_id in the last built table."""
        return dict(self._ids.backends)

    def retired(self) -> tuple[frozenset[int], frozenset[int]]:
        """(service ids, backend ids) that left the table and were not released yet."""
        return frozenset(self._retired_svc), frozenset(self._retired_bk)

    def release(self, service_ids: Iterable[int] = (), backend_ids: Iterable[int] = ()) -> None:
        """Let retired ids be given to new services / backends again. The caller promises that
        nothing in the data plane refers to them any more (no session, flow or unread
        connection-log record) and that their counters start again from 0."""
        for ident in service_ids:
            self._retired_svc.pop(ident, None)
        for ident in backend_ids:
            self._retired_bk.pop(ident, None)

    def checkpoint(self) -> _Checkpoint:
        """The builder's state, for `restore` after a table that must be taken back."""
        return _Checkpoint(dict(self._svc_ids), dict(self._bk_ids), dict(self._retired_svc),
                           dict(self._retired_bk), self._ids, self._table)

    def restore(self, saved: _Checkpoint) -> None:
        """Go back to a checkpoint: the ids it had are kept (a rebuild of its config gives the
        same table). Ids given out since then are retired, not freed: a table with them may
        have been live, so something in the data plane may still count on them."""
        self._retired_svc = _restored(saved.svc_ids, saved.retired_svc, self._svc_ids,
                                      self._retired_svc)
        self._retired_bk = _restored(saved.bk_ids, saved.retired_bk, self._bk_ids,
                                     self._retired_bk)
        self._svc_ids, self._bk_ids = dict(saved.svc_ids), dict(saved.bk_ids)
        self._ids, self._table = saved.ids, saved.table

    def build(
        self,
        config: Config,
        weights: Mapping[tuple[str, str], int] | None = None,
        down: Collection[tuple[str, str]] | None = None,
        max_connections: Mapping[tuple[str, str], int] | None = None,
    ) -> bytes:
        """Build the blob for `config` with optional effective-weight overrides, the set of
        backends that are DOWN or in maintenance (weight 0 and flag bit 1) and optional
        connection-limit overrides (0: none), all keyed by (service name, backend address as
        written) or (service name, str(endpoint))."""
        weights = weights or {}
        limits = max_connections or {}
        down = down or frozenset()
        if len(config.services) > MAX_SERVICES:
            raise ValueError(f"services: {len(config.services)} is more than {MAX_SERVICES}")
        svc_ids = _allocate(
            (s.name for s in config.services), self._svc_ids, self._retired_svc, MAX_SERVICES,
            "services"
        )
        cache: dict[str, tuple[int, bytes]] = {}
        ordered = [(svc, self._canonical(svc, cache)) for svc in config.services]
        n_backends = sum(len(bks) for _, bks in ordered)
        if n_backends > MAX_BACKENDS:
            raise ValueError(f"backends: {n_backends} is more than {MAX_BACKENDS}")
        bk_ids = _allocate(
            ((svc.name, p.key) for svc, bks in ordered for p in bks),
            self._bk_ids,
            self._retired_bk,
            MAX_BACKENDS,
            "backends",
        )
        if len(bk_ids) != n_backends:
            raise ValueError("backends: an address appears twice in one service")

        services: list[ServiceRec] = []
        backends: list[BackendRec] = []
        ring: list[int] = []
        proxy_from: list[ProxyFromRec] = []
        for svc, bks in ordered:
            is_down = [(svc.name, p.label) in down or (svc.name, p.key) in down for p in bks]
            eff = _effective_weights(svc.name, bks, weights, is_down)
            first = len(backends)
            for p, w, dn in zip(bks, eff, is_down, strict=True):
                backends.append(
                    BackendRec(
                        backend_id=bk_ids[(svc.name, p.key)],
                        family=p.family,
                        flags=(FLAG_BACKUP if p.backend.backup else 0) | (FLAG_DOWN if dn else 0),
                        port=p.backend.address.port,
                        addr=p.addr,
                        weight=w,
                        max_connections=_limit(svc.name, p, limits),
                        source_family=p.source_family,
                        source_addr=p.source_addr,
                    )
                )
            sched = SCHEDULERS.index(svc.scheduler)
            svc_ring = self._ring(config.global_.hash_seed, svc, sched, backends[first:])
            udp = svc.protocol == "udp"
            # the list matters only with accept_proxy (set out of band, set_accept_proxy): a
            # service without it gets none, so the table never holds one that means nothing
            pfrom = [ProxyFromRec.of(net) for net in svc.accept_proxy_from
                     ] if svc.accept_proxy and not udp else []
            services.append(
                ServiceRec(
                    service_id=svc_ids[svc.name],
                    protocol=PROTO_UDP if udp else PROTO_TCP,
                    scheduler=sched,
                    hash_key=HASH_KEYS.index(svc.hash_key),
                    connect_timeout_ms=max(_ms(svc.connect_timeout), 1),
                    idle_timeout_ms=(
                        max(_ms(svc.udp_idle_timeout), 1) if udp else _ms(svc.idle_timeout)
                    ),
                    retries=min(svc.retries, U32_MAX),
                    max_connections=min(svc.max_connections, U32_MAX),
                    backend_first=first,
                    backend_count=len(bks),
                    ring_first=len(ring),
                    ring_size=len(svc_ring),
                    flow_key=(
                        (FLOW_SRC_IP if svc.session == "src_ip" else FLOW_SRC_IP_PORT) if udp else 0
                    ),
                    max_flows=min(svc.max_flows, U32_MAX) if udp else 0,
                    responses=min(svc.responses, U32_MAX) if udp else 0,
                    proxy_from_first=len(proxy_from),
                    proxy_from_count=len(pfrom),
                    # a queue only where a timeout is set (docs/configuration.md, queue_timeout)
                    queue_timeout_ms=(max(_ms(svc.queue_timeout), 1)
                                      if not udp and svc.queue_timeout > 0 else 0),
                    max_queue=(min(svc.max_queue, U32_MAX)
                               if not udp and svc.queue_timeout > 0 else 0),
                )
            )
            ring.extend(svc_ring)
            proxy_from.extend(pfrom)

        table = Table(config.global_.hash_seed, tuple(services), tuple(backends), tuple(ring),
                      tuple(proxy_from))
        blob = pack(table)
        self._retired_svc = _retire(self._svc_ids, svc_ids, self._retired_svc)
        self._retired_bk = _retire(self._bk_ids, bk_ids, self._retired_bk)
        self._svc_ids, self._bk_ids, self._table = dict(svc_ids), dict(bk_ids), table
        self._addr_cache = cache
        self._ids = IdMaps(
            services={svc.name: svc_ids[svc.name] for svc in config.services},
            backends={
                (svc.name, p.label): bk_ids[(svc.name, p.key)] for svc, bks in ordered for p in bks
            },
        )
        return blob

    def _canonical(self, svc: Service, cache: dict[str, tuple[int, bytes]]) -> list[_Prepared]:
        """The service's backends, addresses decoded once, sorted by (family, addr, port)."""
        prepared: list[_Prepared] = []
        for b in svc.backends:
            host = b.address.host
            fa = cache.get(host) or self._addr_cache.get(host)
            if fa is None:
                ip = ipaddress.ip_address(host)
                fa = (ip.version, addr16(ip.version, ip.packed))
            cache[host] = fa
            port = b.address.port
            key = f"[{host}]:{port}" if fa[0] == 6 else f"{host}:{port}"
            sfa = (0, NO_SOURCE)
            if b.source == "client":
                sfa = (SOURCE_CLIENT, NO_SOURCE)
            elif b.source is not None:
                sip = ipaddress.ip_address(b.source)
                sfa = (sip.version, addr16(sip.version, sip.packed))
            prepared.append(_Prepared(b, fa[0], fa[1], key, b.address.text or key, *sfa))
        prepared.sort(key=lambda p: (p.family, p.addr, p.backend.address.port))
        return prepared

    def _ring(self, seed: int, svc: Service, sched: int, recs: list[BackendRec]) -> list[int]:
        if sched == SCHED_SRCHASH:
            return [j for j, r in enumerate(recs) for _ in range(r.weight)]
        if sched != SCHED_MAGLEV or not any(r.weight for r in recs):
            return []
        m = svc.maglev_table_size
        try:
            return list(self._fill(seed, [(r.family, r.addr, r.port, r.weight) for r in recs], m))
        except ValueError as exc:
            raise ValueError(f"service {svc.name}: maglev fill: {exc}") from None


class _Prepared(NamedTuple):
    """A backend with its address decoded once per build."""

    backend: Backend
    family: int  # 4 or 6
    addr: bytes  # 16 bytes, network order
    key: str  # canonical endpoint text, str(backend.address): the id key
    label: str  # address as written (backend_label)
    source_family: int  # 0 (no source address), SOURCE_CLIENT, or the family of source_addr
    source_addr: bytes  # 16 bytes, network order, bound before connect; 0 when none


def _limit(service: str, p: _Prepared, limits: Mapping[tuple[str, str], int]) -> int:
    """The backend's connection limit: its override, else the file's (0: none)."""
    n = limits.get((service, p.label), limits.get((service, p.key), p.backend.max_connections))
    if not isinstance(n, int) or not 0 <= n <= U32_MAX:
        raise ValueError(f"max_connections of {service}/{p.label}: {n!r} is not in "
                         f"0..{U32_MAX}")
    return n


def _effective_weights(
    service: str,
    backends: Sequence[_Prepared],
    weights: Mapping[tuple[str, str], int],
    is_down: Sequence[bool],
) -> list[int]:
    """Weights after DOWN, overrides and the backup rule, in the order of `backends`."""
    eff: list[int] = []
    for p, dn in zip(backends, is_down, strict=True):
        if dn:
            eff.append(0)
            continue
        w = weights.get((service, p.label)) if weights else None
        if w is None:
            w = weights.get((service, p.key), p.backend.weight) if weights else p.backend.weight
        if not isinstance(w, int) or not 0 <= w <= MAX_WEIGHT:
            raise ValueError(f"weight of {service}/{p.label}: {w!r} is not in 0..256")
        eff.append(w)
    if any(w > 0 for w, p in zip(eff, backends, strict=True) if not p.backend.backup):
        eff = [0 if p.backend.backup else w for w, p in zip(eff, backends, strict=True)]
    return eff
