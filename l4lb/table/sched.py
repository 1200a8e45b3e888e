"""Backend selection for a new session or a retry; Python twin of src_ext/core/sched.c.

Used by the reference data plane and as the oracle for the C scheduler: from the same table,
state and PRNG seed both pick the same backends (tests/unit/test_sched.py compares whole
sequences). Rules: docs/forwarding-table.md, "Schedulers" and "Retries". State that must survive
a table swap is keyed by service id / backend id: SchedShared (one per data plane) and
SchedWorker (one per worker). Candidates are the eligible backends (weight > 0, and below their
max_connections when set) that this session has not tried yet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from l4lb.table.blob import (
    SCHED_LC,
    SCHED_MAGLEV,
    SCHED_RANDOM2,
    SCHED_RR,
    SCHED_SRCHASH,
    SCHED_WRR,
    SOURCE_CLIENT,
    ServiceRec,
    Table,
    parse,
)

MASK32 = 0xFFFFFFFF
MASK64 = (1 << 64) - 1
RNG_DEFAULT = 0x9E3779B97F4A7C15  # replaces a zero seed: xorshift never leaves 0
XORSHIFT_MUL = 0x2545F4914F6CDD1D
MAX_BACKENDS = 65536


@dataclass
class SchedShared:
    """State shared by all workers (C: struct sched_shared)."""

    rr_next: dict[int, int] = field(default_factory=dict)  # round-robin counter per service id
    active: dict[int, int] = field(default_factory=dict)  # open sessions per backend id
    svc_active: dict[int, int] = field(default_factory=dict)  # open sessions per service id


class SchedWorker:
    """State private to one worker (C: struct sched_worker)."""

    def __init__(self, seed: int = 0) -> None:
        self.wrr_current: dict[int, int] = {}  # smooth-WRR current weight per backend id
        self.rng = (seed & MASK64) or RNG_DEFAULT  # xorshift64* state, never 0

    def rng_next(self) -> int:
        """Advance the xorshift64* PRNG; returns its 64-bit output."""
        x = self.rng
        x ^= x >> 12
        x ^= (x << 25) & MASK64
        x ^= x >> 27
        self.rng = x
        return (x * XORSHIFT_MUL) & MASK64


def _load(shared: SchedShared, backend_id: int) -> int:
    return max(shared.active.get(backend_id, 0), 0)


def _candidate(table: Table, shared: SchedShared, b: int, tried: Sequence[int],
               family: int = 0) -> bool:
    """Whether absolute index b may take a new session of a client of `family` (4 or 6; 0:
    any): a transparent backend (SOURCE_CLIENT) of the other family may not."""
    be = table.backends[b]
    if be.weight == 0:
        return False
    if be.max_connections and _load(shared, be.backend_id) >= be.max_connections:
        return False
    if family and be.source_family == SOURCE_CLIENT and be.family != family:
        return False
    return b not in tried


def _lighter(table: Table, shared: SchedShared, x: int, y: int) -> bool:
    """True when absolute index x is strictly less loaded than y: (a_x+1)/w_x < (a_y+1)/w_y."""
    bx, by = table.backends[x], table.backends[y]
    return (_load(shared, bx.backend_id) + 1) * by.weight < (
        _load(shared, by.backend_id) + 1
    ) * bx.weight


def _next_rr(shared: SchedShared, svc: ServiceRec) -> int:
    n = shared.rr_next.get(svc.service_id, 0)
    shared.rr_next[svc.service_id] = (n + 1) & MASK32
    return n


def _pick_ring(
    table: Table,
    svc: ServiceRec,
    shared: SchedShared,
    flow_hash: int,
    tried: Sequence[int],
    slot: int,
    family: int = 0,
) -> tuple[int, int] | None:
    rs = svc.ring_size
    if rs == 0:
        return None
    c = flow_hash % rs if not tried else (slot % rs + 1) % rs
    for _ in range(rs):
        b = svc.backend_first + table.ring[svc.ring_first + c]
        if _candidate(table, shared, b, tried, family):
            return c, b
        c = c + 1 if c + 1 < rs else 0
    return None


def _candidates(
    table: Table, svc: ServiceRec, shared: SchedShared, tried: Sequence[int], family: int = 0
) -> list[int]:
    """Eligible, untried backends of the service (absolute indexes, canonical order)."""
    return [
        b
        for b in range(svc.backend_first, svc.backend_first + svc.backend_count)
        if _candidate(table, shared, b, tried, family)
    ]


def _pick_rr(
    table: Table, svc: ServiceRec, shared: SchedShared, tried: Sequence[int], family: int = 0
) -> int | None:
    """The (counter mod C)-th of the C candidates: an ineligible backend's turns spread evenly."""
    cands = _candidates(table, svc, shared, tried, family)
    if not cands:
        return None
    return cands[_next_rr(shared, svc) % len(cands)]


def _pick_wrr(
    table: Table,
    svc: ServiceRec,
    shared: SchedShared,
    worker: SchedWorker,
    tried: Sequence[int],
    family: int = 0,
) -> int | None:
    cur = worker.wrr_current
    total = 0
    best: int | None = None
    best_id = 0
    for b in range(svc.backend_first, svc.backend_first + svc.backend_count):
        if not _candidate(table, shared, b, tried, family):
            continue
        be = table.backends[b]
        cur[be.backend_id] = cur.get(be.backend_id, 0) + be.weight
        total += be.weight
        if best is None or cur[be.backend_id] > cur[best_id]:
            best, best_id = b, be.backend_id
    if best is None:
        return None
    cur[best_id] -= total
    return best


def _pick_lc(
    table: Table, svc: ServiceRec, shared: SchedShared, tried: Sequence[int], family: int = 0
) -> int | None:
    """Least (active+1)/weight; ties go to the first candidate at or after rank counter mod C."""
    cands = _candidates(table, svc, shared, tried, family)
    if not cands:
        return None
    start = _next_rr(shared, svc) % len(cands)
    best: int | None = None
    for b in cands[start:] + cands[:start]:
        if best is None or _lighter(table, shared, b, best):
            best = b
    return best


def _pick_random2(
    table: Table,
    svc: ServiceRec,
    shared: SchedShared,
    worker: SchedWorker,
    tried: Sequence[int],
    family: int = 0,
) -> int | None:
    cands = _candidates(table, svc, shared, tried, family)
    e = len(cands)
    if e == 0:
        return None
    b1 = cands[((worker.rng_next() >> 32) * e) >> 32]
    b2 = cands[((worker.rng_next() >> 32) * e) >> 32]
    return b2 if _lighter(table, shared, b2, b1) else b1


def pick(
    table: Table,
    svc: ServiceRec,
    shared: SchedShared,
    worker: SchedWorker,
    flow_hash: int,
    tried: Sequence[int] = (),
    slot: int = 0,
    family: int = 0,
) -> tuple[int, int] | None:
    """Pick a backend: returns (slot, absolute backend index), or None when no candidate is left.

    tried: absolute indexes already attempted by this session (excluded). slot: on a retry of a
    hashing scheduler, the ring slot of the previous attempt (the walk starts after it). The slot
    returned is the ring slot used, 0 for non-hashing schedulers. Active counts are not changed.
    family: the client's (4 or 6; 0: any): a transparent backend of the other family is no
    candidate (the C sched_pick's cfamily).
    """
    if svc.scheduler in (SCHED_SRCHASH, SCHED_MAGLEV):
        return _pick_ring(table, svc, shared, flow_hash, tried, slot, family)
    if svc.scheduler == SCHED_RR:
        b = _pick_rr(table, svc, shared, tried, family)
    elif svc.scheduler == SCHED_WRR:
        b = _pick_wrr(table, svc, shared, worker, tried, family)
    elif svc.scheduler == SCHED_LC:
        b = _pick_lc(table, svc, shared, tried, family)
    elif svc.scheduler == SCHED_RANDOM2:
        b = _pick_random2(table, svc, shared, worker, tried, family)
    else:
        raise ValueError(f"scheduler {svc.scheduler} is not in 0..5")
    return None if b is None else (0, b)


def _u64(value: object, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= MASK64:
        raise ValueError(f"{what} {value!r} is not a u64")
    return value


def _setup(
    blob: bytes, service_id: int, active: Mapping[int, int] | None, rng_seed: int
) -> tuple[Table, ServiceRec, SchedShared, SchedWorker]:
    if not isinstance(service_id, int) or not 0 <= service_id <= MASK32:
        raise ValueError(f"service_id: {service_id!r} is not a u32")
    if not isinstance(rng_seed, int) or not 0 <= rng_seed <= MASK64:
        raise ValueError(f"rng_seed: {rng_seed!r} is not a u64")
    table = parse(blob)
    svc = table.service(service_id)
    if svc is None:
        raise ValueError(f"service_id: {service_id} is not in the table")
    shared = SchedShared()
    for bid, count in (active or {}).items():
        if not isinstance(bid, int) or not 0 <= bid < MAX_BACKENDS:
            raise ValueError(f"active: backend id {bid!r} is not in 0..65535")
        if not isinstance(count, int) or not 0 <= count <= 0x7FFFFFFF:
            raise ValueError(f"active[{bid}]: {count!r} is not in 0..2**31-1")
        shared.active[bid] = count
    return table, svc, shared, SchedWorker(rng_seed)


def sched_sequence(
    blob: bytes,
    service_id: int,
    flow_hashes: Iterable[int],
    active: Mapping[int, int] | None,
    rng_seed: int,
) -> list[int]:
    """One pick per flow hash from fresh state (state carried from pick to pick); active counts
    fixed; each result is the absolute backend index or -1. Same as l4lb._dataplane's."""
    table, svc, shared, worker = _setup(blob, service_id, active, rng_seed)
    result: list[int] = []
    for fh in flow_hashes:
        got = pick(table, svc, shared, worker, _u64(fh, "flow hash"))
        result.append(-1 if got is None else got[1])
    return result


def sched_retry_sequence(
    blob: bytes,
    service_id: int,
    flow_hash: int,
    n: int,
    active: Mapping[int, int] | None = None,
    rng_seed: int = 1,
) -> list[int]:
    """The backends one session whose every connect fails tries, in order: up to n picks, each
    excluding the ones tried before; stops early when no candidate is left."""
    table, svc, shared, worker = _setup(blob, service_id, active, rng_seed)
    if not isinstance(n, int) or not 0 <= n <= MASK32:
        raise ValueError(f"n: {n!r} is not a u32")
    fh = _u64(flow_hash, "flow hash")
    tried: list[int] = []
    slot = 0
    while len(tried) < n:
        got = pick(table, svc, shared, worker, fh, tried, slot)
        if got is None:
            break
        slot, b = got
        tried.append(b)
    return tried
