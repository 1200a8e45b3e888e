# cython: language_level=3
"""l4lb._dataplane: the only Python-visible compiled module (the C data plane under Cython).

The class Dataplane wraps src_ext/core/dp.h (worker threads, TCP and UDP relays, table swap); the
module-level functions from table_api.pxi expose the pure table/hash/Maglev/scheduler code so
tests can compare it with the Python twins in l4lb/table/.

The worker threads are pthreads created in C: they never hold the GIL and never touch a Python
object. Every call below that can wait for a worker (add_listener, remove_listener, publish,
stats, sessions, flows, close_backend_sessions, reset_counters, set_connection_log,
closed_sessions, set_congestion_control, set_socket_buffers, stop) releases the GIL for the
whole C call and converts results afterwards.
"""

include "table_api.pxi"

cimport core as _core
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.errno cimport (E2BIG, EALREADY, EBUSY, EEXIST, EINVAL, ENOENT, ENOTCONN, ESHUTDOWN,
                         EAGAIN, ENOSPC, EPERM)

# dp.h's congestion control side table (declared here: includes/core.pxd mirrors the rest)
cdef extern from "dp.h" nogil:
    enum:
        DP_CC_NAME_MAX
        DP_CC_MAX_NAMES
    int dp_set_congestion_control(_core.dp *d, uint32_t service_id, const char *name)
    const char *dp_congestion_control(_core.dp *d, uint32_t service_id)
    # and its per-service options (fast open towards the backends)
    int dp_set_fast_open(_core.dp *d, uint32_t service_id, int on)
    int dp_fast_open(_core.dp *d, uint32_t service_id)
    int dp_set_proxy_protocol(_core.dp *d, uint32_t service_id, int version)
    int dp_proxy_protocol(_core.dp *d, uint32_t service_id)
    int dp_set_accept_proxy(_core.dp *d, uint32_t service_id, uint32_t timeout_ms)
    uint32_t dp_accept_proxy(_core.dp *d, uint32_t service_id)
    int dp_set_udp_gro(_core.dp *d, uint32_t service_id, int on)
    int dp_udp_gro(_core.dp *d, uint32_t service_id)
    # the descriptor ceiling (relay_tcp.c, "The fd reserve")
    void dp_set_fd_ceiling(_core.dp *d, uint32_t ceiling)
    uint32_t dp_fd_ceiling(_core.dp *d)
    # the cap on UDP flows of all services together (relay_udp.c, "Flow cap")
    void dp_set_udp_flow_cap(_core.dp *d, uint32_t cap)
    void dp_udp_flows(_core.dp *d, uint32_t *cap, int64_t *open)
    void dp_fast_open_stats(_core.dp *d, uint64_t *attempts, uint64_t *syn_data,
                            uint64_t *syn_bytes)
    # and the backend leg's socket buffers
    enum:
        DP_SOCKBUF_MIN
        DP_SOCKBUF_MAX
    int dp_set_socket_buffers(_core.dp *d, uint32_t service_id, uint32_t sndbuf,
                              uint32_t rcvbuf)
    void dp_socket_buffers(_core.dp *d, uint32_t service_id, uint32_t *sndbuf,
                           uint32_t *rcvbuf)
    uint64_t dp_socket_buffer_errors(_core.dp *d, uint32_t service_id)

import os as _os
import socket as _socket

from l4lb.dataplane import check_backend_ids, check_close_backend_reason, check_u32

cdef enum:
    _DP_ERRLEN = 256

_SESSION_STATES = ("connecting", "established", "half_closed")
# enum dp_close_reason (dp.h), in its order
_CLOSE_REASONS = ("client_closed", "backend_closed", "client_reset", "backend_reset",
                  "connect_failed", "no_backend", "rejected", "idle_timeout", "shutdown",
                  "drain_timeout", "error", "responses", "refused", "moved", "listener_gone",
                  "backend_down", "proxy_header", "proxy_header_timeout", "queue_timeout")
_PROTOCOLS = ("tcp", "udp")
if len(_CLOSE_REASONS) != <int>_core.DP_CLOSE_N:
    raise ImportError("l4lb._dataplane: _CLOSE_REASONS does not match enum dp_close_reason")
_MAX_BACKENDS = 65536
_MAX_SERVICES = 1024
_SERVICE_KEYS = ("conns_total", "conns_active", "rejected", "no_backend", "bytes_to_backend",
                 "bytes_to_client", "accept_errors", "datagrams_in", "datagrams_out",
                 "flows_created", "flows_expired", "flows_active", "drops_max_flows",
                 "drops_no_backend", "drops_truncated", "drops_send", "drops_max_udp_flows",
                 "proxy_header_errors", "proxy_header_timeouts", "proxy_direct",
                 "queued_now", "queued_total", "queue_timeouts", "queue_wait_ms")
_BACKEND_KEYS = ("conns_total", "conns_active", "connect_failures", "bytes_to_backend",
                 "bytes_to_client", "datagrams_to_backend", "datagrams_to_client",
                 "flows_active", "flows_total")


cdef object _host(uint8_t family, const uint8_t *addr):
    if family == 4:
        return _socket.inet_ntop(_socket.AF_INET, addr[:4])
    return _socket.inet_ntop(_socket.AF_INET6, addr[:16])


cdef object _peer(uint8_t family, const uint8_t *addr, uint16_t port):
    """The real peer of an accept_proxy session as (host, port), None on other services."""
    if family == 0:
        return None
    return (_host(family, addr), port)


cdef object _dp_oserror(int rc):
    return OSError(-rc, _os.strerror(-rc))


cdef class Dataplane:
    """The C data plane; the API is DataplaneAPI in l4lb/dataplane.py."""

    # close_backend_sessions() releases the GIL while the workers close, so the daemon may run
    # it off its event loop (l4lb/daemon.py, _shut_down_sessions); the reference plane cannot
    CLOSES_WITHOUT_GIL = True

    cdef _core.dp *_dp
    cdef readonly int workers

    def __cinit__(self, int workers):
        cdef int rc
        cdef _core.dp *d = NULL
        self._dp = NULL
        if workers < 1 or workers > <int>_core.DP_MAX_WORKERS:
            raise ValueError(f"workers must be in 1..{_core.DP_MAX_WORKERS}, got {workers}")
        with nogil:
            rc = _core.dp_create(<uint32_t>workers, &d)
        if rc:
            raise _dp_oserror(rc)
        self._dp = d
        self.workers = workers

    def __dealloc__(self):
        cdef _core.dp *d = self._dp
        self._dp = NULL
        if d != NULL:
            with nogil:
                _core.dp_destroy(d)

    def start(self):
        """Start the worker threads (each with its own epoll)."""
        cdef int rc
        with nogil:
            rc = _core.dp_start(self._dp)
        if rc == -EALREADY or rc == -ESHUTDOWN:
            raise RuntimeError("data plane already started or stopped")
        if rc:
            raise _dp_oserror(rc)

    def add_listener(self, int service_id, int fd, int worker):
        """Give a nonblocking listening TCP socket, or a bound UDP socket, to one worker (the
        caller keeps fd). On a UDP socket bound to 0.0.0.0 or :: it sets IP_PKTINFO /
        IPV6_RECVPKTINFO, so that replies leave from the address each client sent to."""
        cdef int rc
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker {worker} out of range 0..{self.workers - 1}")
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        with nogil:
            rc = _core.dp_add_listener(self._dp, <uint32_t>service_id, fd, <uint32_t>worker)
        if rc == -EEXIST:
            raise ValueError(f"fd {fd} is already a listener")
        if rc == -ENOTCONN:
            raise ValueError(f"fd {fd} is neither a listening TCP socket nor a bound UDP socket")
        if rc == -EAGAIN:
            raise ValueError(f"fd {fd} is in blocking mode; give a nonblocking listener")
        if rc == -ESHUTDOWN:
            raise RuntimeError("data plane stopped")
        if rc:
            raise _dp_oserror(rc)

    def remove_listener(self, int fd):
        """Stop accepting on fd; when this returns no worker polls it any more."""
        cdef int rc
        with nogil:
            rc = _core.dp_remove_listener(self._dp, fd)
        if rc == -ENOENT:
            raise ValueError(f"fd {fd} is not a listener")
        if rc:
            raise _dp_oserror(rc)

    def publish(self, blob):
        """Validate and swap in a new table; returns its generation. ValueError keeps the old."""
        cdef bytes data = bytes(blob)
        cdef const uint8_t *p = data
        cdef size_t n = len(data)
        cdef uint64_t gen = 0
        cdef char err[_DP_ERRLEN]
        cdef int rc
        err[0] = 0
        with nogil:
            rc = _core.dp_publish(self._dp, p, n, &gen, err, _DP_ERRLEN)
        if rc == -EINVAL:
            raise ValueError(err.decode("utf-8", "replace"))
        if rc:
            raise _dp_oserror(rc)
        return gen

    @property
    def generation(self):
        """Generation of the live table, 0 before the first publish."""
        return _core.dp_generation(self._dp)

    def stats(self):
        """Counter snapshot summed over all workers; ids that never saw traffic are absent."""
        cdef _core.dp_stats_s *st = <_core.dp_stats_s *>malloc(sizeof(_core.dp_stats_s))
        cdef int rc
        cdef uint32_t i
        cdef _core.dp_svc_stats *s
        cdef _core.dp_be_stats *b
        if st == NULL:
            raise MemoryError()
        try:
            with nogil:
                rc = _core.dp_stats(self._dp, st)
            if rc:
                raise _dp_oserror(rc)
            services = {}
            backends = {}
            for i in range(1024):
                s = &st.svc[i]
                if (s.conns_total or s.conns_active or s.rejected or s.no_backend
                        or s.bytes_to_backend or s.bytes_to_client or s.accept_errors
                        or s.datagrams_in or s.datagrams_out or s.flows_created
                        or s.flows_expired or s.flows_active or s.drops_max_flows
                        or s.drops_no_backend or s.drops_truncated or s.drops_send
                        or s.drops_max_udp_flows or s.proxy_header_errors
                        or s.proxy_header_timeouts or s.proxy_direct or s.queued_now
                        or s.queued_total or s.queue_timeouts or s.queue_wait_ms):
                    services[i] = dict(zip(_SERVICE_KEYS, (
                        s.conns_total, s.conns_active, s.rejected, s.no_backend,
                        s.bytes_to_backend, s.bytes_to_client, s.accept_errors,
                        s.datagrams_in, s.datagrams_out, s.flows_created, s.flows_expired,
                        s.flows_active, s.drops_max_flows, s.drops_no_backend,
                        s.drops_truncated, s.drops_send, s.drops_max_udp_flows,
                        s.proxy_header_errors, s.proxy_header_timeouts, s.proxy_direct,
                        s.queued_now, s.queued_total, s.queue_timeouts, s.queue_wait_ms)))
            for i in range(st.n_be):  # ids no table named were never counted
                b = &st.be[i]
                if (b.conns_total or b.conns_active or b.connect_failures
                        or b.bytes_to_backend or b.bytes_to_client or b.datagrams_to_backend
                        or b.datagrams_to_client or b.flows_active or b.flows_total):
                    backends[i] = dict(zip(_BACKEND_KEYS, (
                        b.conns_total, b.conns_active, b.connect_failures,
                        b.bytes_to_backend, b.bytes_to_client, b.datagrams_to_backend,
                        b.datagrams_to_client, b.flows_active, b.flows_total)))
            return {"generation": st.generation, "services": services, "backends": backends,
                    "connlog_dropped": st.connlog_dropped,
                    "listener_pauses": st.listener_pauses}
        finally:
            free(st)

    def sessions(self):
        """Snapshot of the open sessions (each worker answers for its own, at one instant)."""
        cdef _core.dp_session_info *arr = NULL
        cdef size_t n = 0, i
        cdef int rc
        cdef _core.dp_session_info *x
        with nogil:
            rc = _core.dp_sessions(self._dp, &arr, &n)
        if rc:
            raise _dp_oserror(rc)
        out = []
        try:
            for i in range(n):
                x = &arr[i]
                out.append({
                    "service_id": x.service_id, "backend_id": x.backend_id,
                    "client": (_host(x.family, x.addr), x.port), "started": x.started,
                    "peer": _peer(x.peer_family, x.peer_addr, x.peer_port),
                    "bytes_to_backend": x.bytes_to_backend,
                    "bytes_to_client": x.bytes_to_client,
                    "state": _SESSION_STATES[x.state],
                })
        finally:
            free(arr)
        return out

    def flows(self):
        """Snapshot of the open UDP flows (each worker answers for its own, at one instant)."""
        cdef _core.dp_flow_info *arr = NULL
        cdef size_t n = 0, i
        cdef int rc
        cdef _core.dp_flow_info *x
        with nogil:
            rc = _core.dp_flows(self._dp, &arr, &n)
        if rc:
            raise _dp_oserror(rc)
        out = []
        try:
            for i in range(n):
                x = &arr[i]
                out.append({
                    "service_id": x.service_id, "backend_id": x.backend_id,
                    "client": (_host(x.family, x.addr), x.port), "started": x.started,
                    "last_seen": x.last_seen,
                    "datagrams_to_backend": x.datagrams_to_backend,
                    "datagrams_to_client": x.datagrams_to_client,
                    "bytes_to_backend": x.bytes_to_backend,
                    "bytes_to_client": x.bytes_to_client,
                })
        finally:
            free(arr)
        return out

    def close_backend_sessions(self, backend_ids, reason="drain_timeout"):
        """Reset every open TCP session and end every UDP flow of the backend(s), on every
        worker, in one command (one scan of each worker's sessions and flows, whatever the
        number of ids): one id (int) returns how many were closed, an iterable of ids returns
        {id: closed} per distinct id. Logged with `reason`, "drain_timeout" or "backend_down"
        (a UDP flow's "backend_down" as "moved"; "shutdown" once stop() began)."""
        cdef uint32_t *ids = NULL
        cdef uint64_t *closed = NULL
        cdef size_t n, k
        cdef int rc
        cdef int why
        given, single = check_backend_ids(backend_ids)
        why = _CLOSE_REASONS.index(check_close_backend_reason(reason))
        n = len(given)
        if n == 0:
            return {}
        ids = <uint32_t *>malloc(n * sizeof(uint32_t))
        closed = <uint64_t *>malloc(n * sizeof(uint64_t))
        try:
            if ids == NULL or closed == NULL:
                raise MemoryError()
            for k in range(n):
                ids[k] = <uint32_t>given[k]
            with nogil:
                rc = _core.dp_close_backends(self._dp, ids, n, why, closed)
            if rc == -EINVAL:
                raise ValueError(f"close_backend_sessions: refused by the data plane (a backend "
                                 f"id >= {_MAX_BACKENDS} or a bad reason)")
            if rc == -E2BIG:
                raise ValueError(f"backend_ids: {n} ids, at most {_core.DP_CLOSE_MAX_IDS} in "
                                 "one call")
            if rc:
                raise _dp_oserror(rc)
            if single:
                return closed[0]
            return {given[k]: closed[k] for k in range(n)}
        finally:
            free(ids)
            free(closed)

    def reset_counters(self, *, service_id=None, backend_id=None):
        """Zero the counters of one service id or one backend id that has left the table, so
        that the id can be reused by a new one starting from 0. Returns False (and changes
        nothing) while the live table still has the id, a session or UDP flow still counts on
        it, or (service) one of its listeners is still registered; True once zeroed."""
        cdef int rc
        cdef int service
        cdef uint32_t ident
        if (service_id is None) == (backend_id is None):
            raise TypeError("reset_counters: give exactly one of service_id, backend_id")
        service = 1 if service_id is not None else 0
        value = int(service_id if service_id is not None else backend_id)
        limit = _MAX_SERVICES if service else _MAX_BACKENDS
        if not 0 <= value < limit:
            raise ValueError(f"{'service_id' if service else 'backend_id'} {value} out of range "
                             f"0..{limit - 1}")
        ident = <uint32_t>value
        with nogil:
            rc = _core.dp_reset_counters(self._dp, service, ident)
        if rc == -EBUSY:
            return False
        if rc:
            raise _dp_oserror(rc)
        return True

    def set_connection_log(self, enabled, int capacity=16384):
        """Turn the connection log on (a ring of `capacity` records per worker, rounded up to a
        power of two) or off (queued records stay until taken)."""
        cdef int on = 1 if enabled else 0
        cdef int rc
        if on and not 1 <= capacity <= <int>_core.DP_CONNLOG_MAX:
            raise ValueError(f"capacity must be in 1..{_core.DP_CONNLOG_MAX}, got {capacity}")
        with nogil:
            rc = _core.dp_set_connection_log(self._dp, on, <uint32_t>(capacity if on else 0))
        if rc == -EINVAL:
            raise ValueError(f"capacity must be in 1..{_core.DP_CONNLOG_MAX}, got {capacity}")
        if rc:
            raise _dp_oserror(rc)

    def closed_sessions(self, max=65536):
        """Take up to `max` queued connection-log records (oldest first within each worker);
        never waits for a worker."""
        cdef _core.dp_conn_record *arr = NULL
        cdef _core.dp_conn_record *x
        cdef size_t n = 0, i, limit
        cdef int rc
        if max < 0:
            raise ValueError(f"max must be >= 0, got {max}")
        limit = <size_t>max
        with nogil:
            rc = _core.dp_closed_sessions(self._dp, limit, &arr, &n)
        if rc:
            raise _dp_oserror(rc)
        out = []
        try:
            for i in range(n):
                x = &arr[i]
                out.append({
                    "protocol": _PROTOCOLS[x.protocol], "service_id": x.service_id,
                    "backend_id": x.backend_id,
                    "client": (_host(x.family, x.addr), x.port), "started": x.started,
                    "duration": x.duration, "bytes_to_backend": x.bytes_to_backend,
                    "bytes_to_client": x.bytes_to_client, "reason": _CLOSE_REASONS[x.reason],
                    "peer": _peer(x.peer_family, x.peer_addr, x.peer_port),
                    "queued": x.queued_ms / 1000.0,
                })
        finally:
            free(arr)
        return out

    def set_congestion_control(self, int service_id, name):
        """Backend-leg congestion control of a TCP service: TCP_CONGESTION `name` on each
        backend socket before connect(), or None for the system default (no setsockopt)."""
        cdef bytes raw = b""
        cdef const char *p = NULL
        cdef int rc
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        if name is not None:
            if not isinstance(name, str):
                raise TypeError(f"name must be a str or None, not {type(name).__name__}")
            if not name.isascii() or "\0" in name:
                raise ValueError(_cc_bad_name(name))
            raw = name.encode("ascii")
            p = raw
        with nogil:
            rc = dp_set_congestion_control(self._dp, <uint32_t>service_id, p)
        if rc == -EINVAL:
            raise ValueError(_cc_bad_name(name))
        if rc == -ENOENT:
            raise OSError(ENOENT, f"congestion control {name!r} is not available on this "
                                  "kernel (net.ipv4.tcp_available_congestion_control)")
        if rc == -EPERM:
            raise OSError(EPERM, f"congestion control {name!r} is not allowed for this "
                                 "process (net.ipv4.tcp_allowed_congestion_control; or "
                                 "CAP_NET_ADMIN)")
        if rc == -ENOSPC:
            raise OSError(ENOSPC, f"more than {DP_CC_MAX_NAMES} distinct congestion control "
                                  "names")
        if rc:
            raise _dp_oserror(rc)

    def congestion_control(self, int service_id):
        """The backend-leg algorithm set for service_id, or None."""
        cdef const char *p
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        p = dp_congestion_control(self._dp, <uint32_t>service_id)
        return None if p == NULL else p.decode("ascii")

    def stop(self, timeout):
        """Stop accepting, let sessions finish for up to timeout seconds, reset the rest, join
        the workers. Idempotent."""
        cdef double t = float(timeout)
        cdef uint32_t ms
        cdef int rc
        if not t > 0:
            t = 0
        ms = <uint32_t>(t * 1000.0) if t < 4000000.0 else <uint32_t>4000000000
        with nogil:
            rc = _core.dp_stop(self._dp, ms)
        if rc:
            raise _dp_oserror(rc)

    # ---- internal: tests and benchmarks only ----------------------------------------------

    def _tune(self, int copy_threshold, int pipe_size, bint copy_only=False):
        """Relay tuning before start(): copy buffer bytes (0 = always splice), pipe size,
        copy_only (never splice; benchmarks)."""
        cdef int rc
        if copy_threshold < 0 or pipe_size < 0:
            raise ValueError("copy_threshold and pipe_size must be >= 0")
        rc = _core.dp_set_tuning(self._dp, <uint32_t>copy_threshold, <uint32_t>pipe_size,
                                 copy_only)
        if rc == -EBUSY:
            raise RuntimeError("tuning is only possible before start()")
        if rc == -EINVAL:
            raise ValueError("copy_threshold must be <= 65536 (> 0 with copy_only), "
                             "pipe_size <= 64 MiB")
        if rc:
            raise _dp_oserror(rc)

    def _udp_tune(self, int batch=32, int slot=65507, bint gso=True, int poll_us=50,
                  bint gro=True):
        """UDP tuning before start(): datagrams per recvmmsg/sendmmsg (1..32), receive buffer
        per datagram (1..65507 bytes; a larger datagram is dropped as truncated), gso (False:
        never send GSO runs; True: where the kernel can), poll_us (poll-mode sleep under load,
        0..1000 us, 0 = always block in epoll_wait), gro (False: never ask for GRO buffers;
        True: where the kernel can, with gso on and full-size slots; listeners added before the
        call keep what they had)."""
        cdef int rc
        if batch < 1 or slot < 1 or poll_us < 0:
            raise ValueError("batch and slot must be >= 1, poll_us >= 0")
        rc = _core.dp_set_udp_tuning(self._dp, <uint32_t>batch, <uint32_t>slot, gso, gro,
                                     <uint32_t>poll_us)
        if rc == -EBUSY:
            raise RuntimeError("tuning is only possible before start()")
        if rc == -EINVAL:
            raise ValueError("batch must be in 1..32, slot in 1..65507, poll_us in 0..1000")
        if rc:
            raise _dp_oserror(rc)

    def set_fast_open(self, int service_id, on):
        """TCP Fast Open towards the backends of a TCP service (True) or not (False): a
        client's first bytes that already wait when a connect attempt starts go in the SYN."""
        cdef int rc
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        if not isinstance(on, bool):
            raise TypeError(f"on must be a bool, not {type(on).__name__}")
        rc = dp_set_fast_open(self._dp, <uint32_t>service_id, 1 if on else 0)
        if rc:
            raise _dp_oserror(rc)

    def fast_open(self, int service_id):
        """Whether fast open towards the backends is on for service_id."""
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        return bool(dp_fast_open(self._dp, <uint32_t>service_id))

    def set_proxy_protocol(self, int service_id, int version):
        """PROXY protocol header ahead of each backend connection of a TCP service: version 1
        or 2, 0 for none (the default)."""
        cdef int rc
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        if version not in (0, 1, 2):
            raise ValueError(f"PROXY protocol version {version} is not 0, 1 or 2")
        rc = dp_set_proxy_protocol(self._dp, <uint32_t>service_id, version)
        if rc:
            raise _dp_oserror(rc)

    def proxy_protocol(self, int service_id):
        """The PROXY protocol version set for service_id, 0 for none."""
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        return dp_proxy_protocol(self._dp, <uint32_t>service_id)

    def set_accept_proxy(self, int service_id, timeout_ms):
        """PROXY protocol from the clients of a TCP service: every connection accepted from now
        on must start with a header complete within timeout_ms; 0 expects none (the default)."""
        cdef int rc
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        rc = dp_set_accept_proxy(self._dp, <uint32_t>service_id,
                                 <uint32_t>check_u32("timeout_ms", timeout_ms))
        if rc:
            raise _dp_oserror(rc)

    def accept_proxy(self, int service_id):
        """The header timeout set for service_id in ms, 0 when it expects no header."""
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        return dp_accept_proxy(self._dp, <uint32_t>service_id)

    def set_socket_buffers(self, int service_id, sndbuf, rcvbuf):
        """Backend-leg socket buffers of a TCP service: SO_SNDBUF `sndbuf` and SO_RCVBUF
        `rcvbuf` bytes on each backend socket before connect() (0: the kernel's autotuning, no
        setsockopt; else 4096..1073741823)."""
        cdef int rc
        cdef uint32_t snd, rcv
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        for size in (sndbuf, rcvbuf):
            if isinstance(size, bool) or not isinstance(size, int):
                raise TypeError(f"a socket buffer size must be an int, not "
                                f"{type(size).__name__}")
            if size != 0 and not DP_SOCKBUF_MIN <= size <= DP_SOCKBUF_MAX:
                raise ValueError(f"socket buffer size {size} out of range (0, or "
                                 f"{DP_SOCKBUF_MIN}..{DP_SOCKBUF_MAX})")
        snd, rcv = sndbuf, rcvbuf
        with nogil:
            rc = dp_set_socket_buffers(self._dp, <uint32_t>service_id, snd, rcv)
        if rc:
            raise _dp_oserror(rc)

    def socket_buffers(self, int service_id):
        """(sndbuf, rcvbuf) of service_id's backend leg; 0 where the kernel autotunes."""
        cdef uint32_t snd, rcv
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        dp_socket_buffers(self._dp, <uint32_t>service_id, &snd, &rcv)
        return (snd, rcv)

    def socket_buffer_errors(self, int service_id):
        """Backend sockets of service_id that refused one of its buffer sizes (each refused
        option counts); such a session went on with the kernel's buffers."""
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        return dp_socket_buffer_errors(self._dp, <uint32_t>service_id)

    def set_udp_gro(self, int service_id, on):
        """GRO buffers for UDP service service_id (True, the default) or not (False): sets
        UDP_GRO on its listeners now and on the upstream sockets of later flows."""
        cdef int rc
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        if not isinstance(on, bool):
            raise TypeError(f"on must be a bool, not {type(on).__name__}")
        rc = dp_set_udp_gro(self._dp, <uint32_t>service_id, 1 if on else 0)
        if rc:
            raise _dp_oserror(rc)

    def udp_gro(self, int service_id):
        """Whether service_id's UDP sockets get GRO buffers (on, and this kernel has them)."""
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        return bool(dp_udp_gro(self._dp, <uint32_t>service_id))

    def set_udp_flow_cap(self, cap):
        """At most `cap` UDP flows open at once, all services together (0: no cap); a
        datagram that would open one more is dropped and counted (drops_max_udp_flows)."""
        dp_set_udp_flow_cap(self._dp, <uint32_t>check_u32("cap", cap))

    def set_fd_ceiling(self, ceiling):
        """Leave descriptors numbered `ceiling` and up to the control plane (0: none)."""
        dp_set_fd_ceiling(self._dp, <uint32_t>check_u32("ceiling", ceiling))

    def fd_ceiling(self):
        """The descriptor ceiling (0: none)."""
        return int(dp_fd_ceiling(self._dp))

    def udp_flows(self):
        """(cap, open): the UDP flow cap (0: none) and the flows open now."""
        cdef uint32_t cap
        cdef int64_t n
        dp_udp_flows(self._dp, &cap, &n)
        return (int(cap), int(n))

    def _internals(self):
        """Pipe pool, slab and pause figures summed over workers (asked of each worker)."""
        cdef _core.dp_internals_s r
        cdef int rc
        cdef uint64_t fo_attempts, fo_syn_data, fo_syn_bytes
        with nogil:
            rc = _core.dp_internals(self._dp, &r)
            dp_fast_open_stats(self._dp, &fo_attempts, &fo_syn_data, &fo_syn_bytes)
        if rc:
            raise _dp_oserror(rc)
        return {
            "pipes_created": r.pipes_created, "pipes_reused": r.pipes_reused,
            "pipes_closed": r.pipes_closed, "pipes_in_use": r.pipes_in_use,
            "pipes_idle": r.pipes_idle, "pipe_size": r.pipe_size, "sessions": r.sessions,
            "slab_bytes": r.slab_bytes, "session_size": r.session_size,
            "listener_pauses": r.listener_pauses, "park_allocs": r.park_allocs,
            "copy_sends": r.copy_sends,
            "splice_moves": r.splice_moves, "splice_fallbacks": r.splice_fallbacks,
            "tables_pending": r.tables_pending,
            "sched_active": r.sched_active, "sched_svc_active": r.sched_svc_active,
            "flows": r.flows, "flow_slab_bytes": r.flow_slab_bytes, "flow_size": r.flow_size,
            "udp_buf_bytes": r.udp_buf_bytes,
            "udp_rx_calls": r.udp_rx_calls, "udp_rx_datagrams": r.udp_rx_datagrams,
            "udp_tx_calls": r.udp_tx_calls, "udp_tx_datagrams": r.udp_tx_datagrams,
            "udp_up_calls": r.udp_up_calls, "udp_up_datagrams": r.udp_up_datagrams,
            "udp_out_calls": r.udp_out_calls, "udp_out_datagrams": r.udp_out_datagrams,
            "udp_gso_datagrams": r.udp_gso_datagrams, "udp_gro_datagrams": r.udp_gro_datagrams,
            "udp_poll_sleeps": r.udp_poll_sleeps,
            "loop_iterations": r.loop_iterations, "close_passes": r.close_passes,
            "queue_kicks": r.queue_kicks,
            "fast_open_attempts": fo_attempts, "fast_open_syn_data": fo_syn_data,
            "fast_open_syn_bytes": fo_syn_bytes,
        }


cdef extern from "proxyhdr.h" nogil:
    enum:
        PP_MAX
    struct pp_info:
        uint32_t len
        uint8_t version
        uint8_t family
        uint16_t sport
        uint16_t dport
        uint8_t src[16]
        uint8_t dst[16]
    int pp_build(uint8_t *out, size_t cap, int version, int family, const uint8_t *src,
                 uint16_t sport, const uint8_t *dst, uint16_t dport)
    int pp_build_local(uint8_t *out, size_t cap, int version)
    int pp_parse(const uint8_t *buf, size_t n, pp_info *out)


def proxy_parse(bytes data):
    """The C parser's verdict (src_ext/core/proxyhdr.c, pp_parse) on the first bytes of a
    client, for the tests that hold it to l4lb.proxyproto.parse(): None (more bytes needed),
    or (length, version, family, src, sport, dst, dport) with family 4 or 6 and the addresses
    packed, or family 0 and empty addresses (use the connection's own). ValueError: invalid."""
    cdef pp_info info
    cdef const uint8_t *p = data
    cdef int rc = pp_parse(p, <size_t>len(data), &info)
    if rc < 0:
        raise ValueError("not a valid PROXY protocol header")
    if rc == 0:
        return None
    alen = 4 if info.family == 4 else 16 if info.family == 6 else 0
    return (info.len, info.version, info.family, bytes(info.src[:alen]), info.sport,
            bytes(info.dst[:alen]), info.dport)


def proxy_header(int version, int family, bytes src, int sport, bytes dst, int dport):
    """The C builder's PROXY protocol header (src_ext/core/proxyhdr.c) for a relayed
    connection: family 4 or 6, addresses packed (4 or 16 bytes), ports 0..65535. For the tests
    that hold it to l4lb.proxyproto.build(). ValueError on bad arguments."""
    cdef uint8_t out[PP_MAX]
    cdef uint8_t a[16]
    cdef uint8_t b[16]
    cdef int n
    alen = 4 if family == 4 else 16
    if family not in (4, 6) or len(src) != alen or len(dst) != alen:
        raise ValueError("family must be 4 or 6 and the addresses 4 or 16 bytes to match")
    if not (0 <= sport <= 65535 and 0 <= dport <= 65535):
        raise ValueError("ports must be in 0..65535")
    for i in range(alen):
        a[i] = src[i]
        b[i] = dst[i]
    n = pp_build(out, PP_MAX, version, family, a, <uint16_t>sport, b, <uint16_t>dport)
    if n < 0:
        raise ValueError(f"pp_build failed: {_os.strerror(-n)}")
    return bytes(out[:n])


def proxy_local_header(int version):
    """The C builder's header for the balancer's own connections (health probes)."""
    cdef uint8_t out[PP_MAX]
    cdef int n = pp_build_local(out, PP_MAX, version)
    if n < 0:
        raise ValueError(f"pp_build_local failed: {_os.strerror(-n)}")
    return bytes(out[:n])


def _cc_bad_name(name):
    return (f"invalid congestion control name {name!r}: use 1 to {DP_CC_NAME_MAX - 1} "
            "characters of A-Z a-z 0-9 _ -")


def _udp_gso_supported():
    """True when this kernel takes UDP_SEGMENT, so the UDP relay sends GSO runs."""
    return bool(_core.dp_udp_gso_supported())


def _udp_gro_supported():
    """True when this kernel takes UDP_GRO, so UDP sockets may hand the relay GRO buffers."""
    return bool(_core.dp_udp_gro_supported())


def _ct_selftest(int seed, int rounds):
    """Run the connection table's randomized self-check in C; returns 0 or -errno."""
    cdef int rc
    with nogil:
        rc = _core.ct_selftest(<uint32_t>seed, <uint32_t>rounds)
    return rc


# -- SYN probe fleet (src_ext/core/synprobe.h): the C twin of l4lb/health/synfleet.py ----------

cdef extern from "synprobe.h" nogil:
    enum:
        SP_MAX_PORTS
    struct sp_fleet:
        pass
    struct sp_result:
        uint32_t id
        uint32_t verdict
        int32_t err
        uint32_t latency_us
    struct sp_quiet:
        uint32_t id
        uint32_t latency_us
        uint64_t count
        int64_t last_ns
    struct sp_target_info:
        int64_t due_ns
        int64_t start_ns
        int64_t deadline_ns
        uint32_t seq
        uint16_t sport
        uint8_t in_flight
    int sp_fleet_create(uint64_t seed, sp_fleet **out)
    void sp_fleet_destroy(sp_fleet *f)
    int sp_lane_add(sp_fleet *f, uint32_t lane, int family, int fd, const uint16_t *ports,
                    uint32_t nports)
    int sp_target_add(sp_fleet *f, uint32_t id, uint32_t lane, const uint8_t *dst,
                      uint16_t dport, const uint8_t *src, uint32_t scope_id, uint32_t timeout_ms,
                      uint32_t interval_ms, uint32_t jitter_ppm, int64_t first_due_ns)
    int sp_target_remove(sp_fleet *f, uint32_t id)
    int sp_target_set_source(sp_fleet *f, uint32_t id, const uint8_t *src, uint32_t src_len)
    int sp_target_set_timing(sp_fleet *f, uint32_t id, uint32_t interval_ms,
                             uint32_t timeout_ms, uint32_t jitter_ppm)
    int sp_target_get "sp_target_info"(const sp_fleet *f, uint32_t id, sp_target_info *out)
    int sp_target_set_quiet(sp_fleet *f, uint32_t id, int quiet)
    int sp_target_collect(sp_fleet *f, uint32_t id, uint64_t *count, int64_t *last_ns,
                          uint32_t *latency_us)
    uint32_t sp_fleet_collect_all(sp_fleet *f, sp_quiet *out, uint32_t max, int reset)
    uint32_t sp_fleet_quiet_pending(const sp_fleet *f)
    uint64_t sp_fleet_quiet_passes(const sp_fleet *f)
    uint32_t sp_fleet_in_flight(const sp_fleet *f)
    uint64_t sp_fleet_stray(const sp_fleet *f)
    int64_t sp_fleet_next_due(const sp_fleet *f)
    int sp_fleet_run(sp_fleet *f, int64_t now_ns, sp_result *results, uint32_t max_results,
                     int64_t *next_due)
    uint64_t sp_splitmix64(uint64_t *state)
    int64_t sp_scaled_interval(int64_t interval_ns, uint32_t jitter_ppm, uint32_t r)

from libc.stdint cimport uint16_t
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING


def sp_splitmix_next(uint64_t state):
    """(new state, output) of one splitmix64 step (for the twin's tests)."""
    cdef uint64_t s = state
    cdef uint64_t out = sp_splitmix64(&s)
    return s, out


def sp_scaled(int64_t interval_ns, uint32_t jitter_ppm, uint32_t r):
    """sp_scaled_interval (for the twin's tests)."""
    return sp_scaled_interval(interval_ns, jitter_ppm, r)


cdef class SynFleet:
    """SYN probe targets run in C; the API is documented on l4lb.health.synfleet.PySynFleet."""

    cdef sp_fleet *_f
    cdef uint32_t _max
    cdef sp_result *_res

    def __cinit__(self, uint64_t seed, uint32_t max_results=1024):
        cdef int rc
        self._f = NULL
        self._res = NULL
        if max_results < 1:
            raise ValueError("max_results must be >= 1")
        rc = sp_fleet_create(seed, &self._f)
        if rc:
            raise _dp_oserror(rc)
        self._max = max_results
        self._res = <sp_result *>malloc(max_results * sizeof(sp_result))
        if self._res == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self._f != NULL:
            sp_fleet_destroy(self._f)
            self._f = NULL
        if self._res != NULL:
            free(self._res)
            self._res = NULL

    def close(self):
        """Free the fleet (the lane fds belong to the caller). Idempotent."""
        if self._f != NULL:
            sp_fleet_destroy(self._f)
            self._f = NULL

    cdef sp_fleet *_live(self) except NULL:
        if self._f == NULL:
            raise RuntimeError("syn fleet is closed")
        return self._f

    def add_lane(self, uint32_t lane, int family, int fd, ports):
        cdef uint16_t p[SP_MAX_PORTS]
        cdef uint32_t n = 0
        cdef int rc
        if len(ports) < 1 or len(ports) > SP_MAX_PORTS:
            raise ValueError(f"between 1 and {SP_MAX_PORTS} ports")
        for port in ports:
            p[n] = port
            n += 1
        rc = sp_lane_add(self._live(), lane, family, fd, p, n)
        if rc:
            raise _dp_oserror(rc)

    def add_target(self, uint32_t tid, uint32_t lane, bytes dst, uint16_t port, bytes src,
                   uint32_t scope_id, uint32_t timeout_ms, uint32_t interval_ms,
                   uint32_t jitter_ppm, int64_t first_due_ns):
        cdef int rc
        if len(dst) not in (4, 16) or len(src) != len(dst):
            raise ValueError("dst and src must be packed addresses of one family")
        rc = sp_target_add(self._live(), tid, lane, <const uint8_t *>PyBytes_AS_STRING(dst), port,
                           <const uint8_t *>PyBytes_AS_STRING(src), scope_id, timeout_ms,
                           interval_ms, jitter_ppm, first_due_ns)
        if rc:
            raise _dp_oserror(rc)

    def set_source(self, uint32_t tid, bytes src):
        cdef int rc = sp_target_set_source(self._live(), tid,
                                           <const uint8_t *>PyBytes_AS_STRING(src), len(src))
        if rc:
            raise _dp_oserror(rc)

    def remove_target(self, uint32_t tid):
        cdef int rc = sp_target_remove(self._live(), tid)
        if rc:
            raise _dp_oserror(rc)

    def set_timing(self, uint32_t tid, uint32_t interval_ms, uint32_t timeout_ms,
                   uint32_t jitter_ppm):
        cdef int rc = sp_target_set_timing(self._live(), tid, interval_ms, timeout_ms, jitter_ppm)
        if rc:
            raise _dp_oserror(rc)

    def target(self, uint32_t tid):
        cdef sp_target_info info
        cdef int rc = sp_target_get(self._live(), tid, &info)
        if rc:
            raise _dp_oserror(rc)
        return (info.due_ns, info.start_ns, info.deadline_ns, info.seq, info.sport,
                bool(info.in_flight))

    def set_quiet(self, uint32_t tid, bint quiet):
        cdef int rc = sp_target_set_quiet(self._live(), tid, quiet)
        if rc:
            raise _dp_oserror(rc)

    def collect(self, uint32_t tid):
        cdef uint64_t count = 0
        cdef int64_t last_ns = 0
        cdef uint32_t lat = 0
        cdef int rc = sp_target_collect(self._live(), tid, &count, &last_ns, &lat)
        if rc:
            raise _dp_oserror(rc)
        return count, last_ns, lat

    def collect_all(self, bint reset=True):
        cdef sp_fleet *f = self._live()
        cdef uint32_t want = sp_fleet_quiet_pending(f)
        cdef uint32_t n
        cdef sp_quiet *buf
        if want == 0:
            return b""
        buf = <sp_quiet *>malloc(want * sizeof(sp_quiet))
        if buf == NULL:
            raise MemoryError()
        try:
            n = sp_fleet_collect_all(f, buf, want, reset)
            return PyBytes_FromStringAndSize(<char *>buf, n * sizeof(sp_quiet))
        finally:
            free(buf)

    @property
    def quiet_passes(self):
        return sp_fleet_quiet_passes(self._live())

    @property
    def in_flight(self):
        return sp_fleet_in_flight(self._live())

    @property
    def stray(self):
        return sp_fleet_stray(self._live())

    def next_due(self):
        return sp_fleet_next_due(self._live())

    def run(self, int64_t now_ns):
        cdef sp_fleet *f = self._live()
        cdef int64_t nxt = 0
        cdef int n
        with nogil:
            n = sp_fleet_run(f, now_ns, self._res, self._max, &nxt)
        if n < 0:
            raise _dp_oserror(n)
        return PyBytes_FromStringAndSize(<char *>self._res, n * sizeof(sp_result)), nxt
