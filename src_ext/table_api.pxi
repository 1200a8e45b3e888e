# table_api.pxi: module-level test/bench entry points into the pure C table code (table.h).
#
# Included by _dataplane.pyx. These functions let the tests run the C hash, Maglev fill, blob
# validator and scheduler on the same inputs as the Python twins in l4lb/table/ and compare the
# results; the control plane's table builder also uses maglev_fill() for speed. Input checks and
# error texts match the twins (l4lb/table/hashing.py, maglev.py, blob.py, sched.py) exactly.
#
#   hash64(seed, data) -> int
#   flow_hash(seed, family, addr, port, hash_key) -> int     addr: 16 bytes (or 4 for IPv4)
#   maglev_fill(seed, [(family, addr, port, weight), ...], m) -> list[int]   ValueError if bad
#   table_check(blob) -> None                                  ValueError(C validator's text)
#   proxy_from_match(blob, service_id, family, addr) -> bool   addr: 16 bytes (or 4 for IPv4);
#       does the client match the service's accept_proxy_from prefixes (Table.proxy_from_match)
#   sched_sequence(blob, service_id, flow_hashes, active, rng_seed) -> list[int]
#       one sched_pick per flow hash, state (rr counters, WRR currents, PRNG) carried from pick
#       to pick, starting fresh; active = {backend_id: open sessions}, fixed for the whole run;
#       each result is the absolute backend index, or -1 when the pick found no backend.
#   sched_retry_sequence(blob, service_id, flow_hash, n, active=None, rng_seed=1) -> list[int]
#       one session whose every connect fails: up to n picks, each excluding all backends tried
#       before (and, for hashing schedulers, walking on from the previous slot); returns the
#       absolute indexes tried in order, stopping early when no candidate is left.

cimport table as _tbl
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

cdef enum:
    _TBL_ERRLEN = 256


cdef uint32_t _tbl_u32(object value, str what) except? 0xFFFFFFFF:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{what}: {value!r} is not a u32")
    return <uint32_t>value


cdef bytes _tbl_addr16(int family, object addr, str what):
    if not isinstance(addr, bytes):
        raise ValueError(f"{what}: {addr!r} is not bytes")
    if len(addr) == 16:
        return <bytes>addr
    if len(addr) == 4 and family == 4:
        return <bytes>addr + bytes(12)
    raise ValueError(f"{what}: {len(addr)} bytes is not a 16-byte (or 4-byte IPv4) address")


def hash64(seed, bytes data):
    """l4lb_hash64(seed, data) of docs/forwarding-table.md."""
    cdef uint32_t s = _tbl_u32(seed, "seed")
    cdef const uint8_t *p = data
    return _tbl.dp_hash64(s, p, len(data))


def flow_hash(seed, int family, addr, int port, int hash_key):
    """Flow hash of a client: family 4/6, addr 16 bytes (IPv4 may be 4), port, hash_key 0/1."""
    cdef uint32_t s = _tbl_u32(seed, "seed")
    if family not in (4, 6):
        raise ValueError(f"family: {family} is not 4 or 6")
    if not 0 <= port <= 65535:
        raise ValueError(f"port: {port} is not in 0..65535")
    if hash_key not in (0, 1):
        raise ValueError(f"hash_key: {hash_key} is not 0 or 1")
    cdef bytes a = _tbl_addr16(family, addr, "addr")
    cdef const uint8_t *p = a
    return _tbl.dp_flow_hash(s, <uint8_t>family, p, <uint16_t>port, <uint8_t>hash_key)


def maglev_fill(seed, backends, m):
    """Maglev ring of M entries for backends [(family, addr, port, weight), ...] in canonical
    order; entry = index into backends. ValueError for a bad backend, a non-prime M, no eligible
    backend, or M below the number of eligible backends (same texts as l4lb.table.maglev)."""
    cdef uint32_t s = _tbl_u32(seed, "seed")
    cdef uint32_t mm = _tbl_u32(m, "m")
    cdef Py_ssize_t n = len(backends), i
    cdef uint32_t eligible = 0
    cdef _tbl.dp_backend *bk = NULL
    cdef uint32_t *ring = NULL
    cdef int rc
    cdef bytes a
    cdef const uint8_t *ap
    if n > _tbl.DP_MAX_BACKENDS:
        raise ValueError(f"backends: {n} is more than 65536")
    bk = <_tbl.dp_backend *>calloc(n if n > 0 else 1, sizeof(_tbl.dp_backend))
    if bk == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            family, addr, port, weight = backends[i]
            if family not in (4, 6):
                raise ValueError(f"backends[{i}].family: {family!r} is not 4 or 6")
            a = _tbl_addr16(family, addr, f"backends[{i}].addr")
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"backends[{i}].port: {port!r} is not in 1..65535")
            if not isinstance(weight, int) or not 0 <= weight <= 256:
                raise ValueError(f"backends[{i}].weight: {weight!r} is not in 0..256")
            bk[i].family = <uint8_t>family
            bk[i].port = <uint16_t>port
            ap = a
            memcpy(bk[i].addr, ap, 16)
            bk[i].weight = <uint32_t>weight
            if weight > 0:
                eligible += 1
        if not _tbl.maglev_is_prime(mm):
            raise ValueError(f"m: {mm} is not prime")
        if eligible == 0:
            raise ValueError("backends: no backend has weight > 0")
        if eligible > mm:
            raise ValueError(f"m: {mm} is below the {eligible} eligible backends")
        ring = <uint32_t *>calloc(mm, sizeof(uint32_t))
        if ring == NULL:
            raise MemoryError()
        with nogil:
            rc = _tbl.maglev_fill(s, bk, <uint32_t>n, mm, ring)
        if rc != 0:
            raise OSError(-rc, f"maglev_fill failed ({rc})")
        return [ring[i] for i in range(mm)]
    finally:
        free(ring)
        free(bk)


cdef _tbl.dp_table *_tbl_parse(bytes blob) except NULL:
    cdef char err[_TBL_ERRLEN]
    cdef _tbl.dp_table *t = NULL
    cdef const uint8_t *p = blob
    cdef int rc = _tbl.dp_table_parse(p, len(blob), &t, err, _TBL_ERRLEN)
    if rc == -12:  # ENOMEM
        raise MemoryError()
    if rc != 0:
        raise ValueError(err.decode("utf-8", "replace"))
    return t


def table_check(bytes blob):
    """Validate a blob with the C validator; ValueError carries its one-line reason."""
    _tbl.dp_table_free(_tbl_parse(blob))


def proxy_from_match(bytes blob, service_id, int family, addr):
    """dp_table_proxy_from_match on a parsed blob: is the client one of the service's
    accept_proxy_from prefixes (0 entries: False)."""
    cdef uint32_t sid = _tbl_u32(service_id, "service_id")
    if family not in (4, 6):
        raise ValueError(f"family: {family} is not 4 or 6")
    cdef bytes a = _tbl_addr16(family, addr, "addr")
    cdef const uint8_t *pa = a
    cdef _tbl.dp_table *t = _tbl_parse(blob)
    cdef const _tbl.dp_service *svc = _tbl.dp_table_service(t, sid)
    cdef int hit = 0
    if svc != NULL:
        hit = _tbl.dp_table_proxy_from_match(t, svc, <uint8_t>family, pa)
    _tbl.dp_table_free(t)
    if svc == NULL:
        raise ValueError(f"service_id: {sid} is not in the table")
    return bool(hit)


cdef class _TblSched:
    """A parsed table plus fresh scheduler state, freed with the object."""

    cdef _tbl.dp_table *t
    cdef const _tbl.dp_service *svc
    cdef _tbl.sched_shared *sh
    cdef _tbl.sched_worker *w

    def __cinit__(self, bytes blob, service_id, active, rng_seed):
        cdef uint32_t sid = _tbl_u32(service_id, "service_id")
        if not isinstance(rng_seed, int) or not 0 <= rng_seed <= 0xFFFFFFFFFFFFFFFF:
            raise ValueError(f"rng_seed: {rng_seed!r} is not a u64")
        self.t = _tbl_parse(blob)
        self.svc = _tbl.dp_table_service(self.t, sid)
        if self.svc == NULL:
            raise ValueError(f"service_id: {sid} is not in the table")
        self.sh = <_tbl.sched_shared *>calloc(1, sizeof(_tbl.sched_shared))
        self.w = <_tbl.sched_worker *>calloc(1, sizeof(_tbl.sched_worker))
        if self.sh == NULL or self.w == NULL:
            raise MemoryError()
        _tbl.sched_shared_init(self.sh)
        _tbl.sched_worker_init(self.w, <uint64_t>rng_seed)
        for bid, count in (active or {}).items():
            if not isinstance(bid, int) or not 0 <= bid < _tbl.DP_MAX_BACKENDS:
                raise ValueError(f"active: backend id {bid!r} is not in 0..65535")
            if not isinstance(count, int) or not 0 <= count <= 0x7FFFFFFF:
                raise ValueError(f"active[{bid}]: {count!r} is not in 0..2**31-1")
            self.sh.active[<uint32_t>bid] = <int32_t>count

    def __dealloc__(self):
        free(self.w)
        free(self.sh)
        if self.t != NULL:
            _tbl.dp_table_free(self.t)


def sched_sequence(bytes blob, service_id, flow_hashes, active, rng_seed):
    """One pick per flow hash from fresh state (see the top of this file)."""
    cdef _TblSched st = _TblSched(blob, service_id, active, rng_seed)
    cdef uint32_t slot = 0, out = 0
    cdef uint64_t h
    cdef int rc
    result = []
    for fh in flow_hashes:
        if not isinstance(fh, int) or not 0 <= fh <= 0xFFFFFFFFFFFFFFFF:
            raise ValueError(f"flow hash {fh!r} is not a u64")
        h = <uint64_t>fh
        rc = _tbl.sched_pick(st.t, st.svc, st.sh, st.w, h, NULL, 0, 0, &slot, &out)
        result.append(<long long>out if rc == 0 else -1)
    return result


def sched_retry_sequence(bytes blob, service_id, flow_hash, n, active=None, rng_seed=1):
    """The backends one always-failing session tries, in order (see the top of this file)."""
    cdef _TblSched st = _TblSched(blob, service_id, active, rng_seed)
    cdef uint32_t slot = 0, out = 0
    cdef uint32_t count = _tbl_u32(n, "n")
    cdef uint32_t *tried = NULL
    cdef uint32_t n_tried = 0
    cdef uint64_t h
    if not isinstance(flow_hash, int) or not 0 <= flow_hash <= 0xFFFFFFFFFFFFFFFF:
        raise ValueError(f"flow hash {flow_hash!r} is not a u64")
    h = <uint64_t>flow_hash
    tried = <uint32_t *>calloc(count if count > 0 else 1, sizeof(uint32_t))
    if tried == NULL:
        raise MemoryError()
    try:
        while n_tried < count:
            if _tbl.sched_pick(st.t, st.svc, st.sh, st.w, h, tried, n_tried, 0, &slot,
                               &out) != 0:
                break
            tried[n_tried] = out
            n_tried += 1
        return [tried[i] for i in range(n_tried)]
    finally:
        free(tried)
