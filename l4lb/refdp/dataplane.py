"""The reference data plane's public class: the DataplaneAPI of l4lb/dataplane.py in pure Python.

This object only dispatches: listeners go to the worker that polls them, publish() swaps the
live table reference, stats(), sessions() and flows() ask every worker for a snapshot and add
them up, close_backend_sessions() asks every worker to close its share, set_connection_log()
switches every worker's record queue, closed_sessions() empties those queues without asking the
workers, set_congestion_control() stores a service's backend-leg algorithm, set_fast_open()
its fast open switch and set_socket_buffers() its buffer sizes in the shared state that each
worker reads before it connects, stop()
tells every worker to drain and joins the threads. See worker.py for the life of a TCP
connection, relay.py for its byte relay, and udp.py for UDP flows.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any, overload

from l4lb.dataplane import (
    CC_NAME_MAX,
    SOCKBUF_MAX,
    SOCKBUF_MIN,
    check_backend_ids,
    check_close_backend_reason,
    check_u32,
    congestion_control_name_ok,
)
from l4lb.net.listen import SO_SNDBUFFORCE, set_socket_buffer
from l4lb.refdp.counters import sum_counters
from l4lb.refdp.dgram import enable_pktinfo, is_wildcard
from l4lb.refdp.livetable import LiveTable
from l4lb.refdp.records import ring_capacity
from l4lb.refdp.shared import Shared
from l4lb.refdp.worker import Worker, borrow_listener
from l4lb.table.blob import parse
from l4lb.table.sched import SchedShared

MAX_WORKERS = 256  # as the C core's DP_MAX_WORKERS
MAX_BACKENDS = 65536  # as the C core's DP_MAX_BACKENDS
JOIN_GRACE = 10.0  # seconds past the stop deadline a worker may take to exit
MAX_CC_NAMES = 64  # distinct congestion control names, as the C core's DP_CC_MAX_NAMES


class Dataplane:
    """Pure-Python data plane with the same API and behaviour as l4lb._dataplane.Dataplane."""

    def __init__(self, workers: int) -> None:
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"workers must be in 1..{MAX_WORKERS}, got {workers}")
        self.workers = workers  # number of worker threads
        self._shared = Shared(sched=SchedShared())  # live table + scheduler counters
        self._workers = [Worker(i, self._shared) for i in range(workers)]
        self._owner: dict[int, Worker] = {}  # listener fd -> the worker polling it
        self._lock = threading.Lock()  # serialises publish() and the API's bookkeeping
        self._log_lock = threading.Lock()  # one connection-log reader or setter at a time
        self._generation = 0  # generation of the live table
        self._cc_names: set[str] = set()  # congestion control names ever set (bounded)
        self._started = False
        self._stopped = False

    def start(self) -> None:
        """Start the worker threads."""
        with self._lock:
            if self._started or self._stopped:
                raise RuntimeError("data plane already started or stopped")
            self._started = True
        for worker in self._workers:
            worker.start()

    def add_listener(self, service_id: int, fd: int, worker: int) -> None:
        """Give a nonblocking listener to one worker (the caller keeps fd): a listening TCP
        socket, or a bound UDP socket (on a wildcard address, IP_PKTINFO / IPV6_RECVPKTINFO
        are set on it here, as the C core does)."""
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker {worker} out of range 0..{self.workers - 1}")
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        _check_listener(fd)
        with self._lock:
            if self._stopped:
                raise RuntimeError("data plane stopped")
            if fd in self._owner:
                raise ValueError(f"fd {fd} is already a listener")
            owner = self._owner[fd] = self._workers[worker]
        try:
            owner.call(lambda: owner.add_listener(service_id, fd))
        except BaseException:
            with self._lock:
                del self._owner[fd]
            raise

    def remove_listener(self, fd: int) -> None:
        """Stop accepting on fd; when this returns no worker polls it any more."""
        with self._lock:
            owner = self._owner.pop(fd, None)
        if owner is None:
            raise ValueError(f"fd {fd} is not a listener")
        owner.call(lambda: owner.remove_listener(fd))

    def publish(self, blob: bytes) -> int:
        """Validate and swap in a new table; returns its generation. ValueError keeps the old."""
        table = parse(bytes(blob))  # TableError (a ValueError) names the first bad field
        with self._lock:
            self._generation += 1
            self._shared.table = LiveTable(table, self._generation)
            return self._generation

    @property
    def generation(self) -> int:
        """Generation of the live table, 0 before the first publish."""
        return self._generation

    def stats(self) -> dict[str, Any]:
        """Counter snapshot summed over all workers."""
        parts = [w.call(w.counters.copy) for w in self._workers]
        return sum_counters(parts, self._generation)

    def sessions(self) -> list[dict[str, Any]]:
        """Snapshot of the open sessions of every worker."""
        found: list[dict[str, Any]] = []
        for worker in self._workers:
            found.extend(worker.call(worker.snapshot_sessions))
        return found

    def flows(self) -> list[dict[str, Any]]:
        """Snapshot of the open UDP flows of every worker."""
        found: list[dict[str, Any]] = []
        for worker in self._workers:
            found.extend(worker.call(worker.snapshot_flows))
        return found

    @overload
    def close_backend_sessions(self, backend_ids: int, reason: str = "drain_timeout") -> int:
        ...

    @overload
    def close_backend_sessions(self, backend_ids: Iterable[int],
                               reason: str = "drain_timeout") -> dict[int, int]:
        ...

    def close_backend_sessions(self, backend_ids: int | Iterable[int],
                               reason: str = "drain_timeout") -> int | dict[int, int]:
        """Reset every open session and end every UDP flow of the backend(s) on every worker,
        one call to each worker for all of them (one pass over its sessions and flows); one id
        returns how many were closed, an iterable {id: closed} per distinct id (logged with
        `reason`, "drain_timeout" or "backend_down", a UDP flow's "backend_down" as
        "moved")."""
        ids, single = check_backend_ids(backend_ids)
        why = check_close_backend_reason(reason)
        if not ids:
            return {}
        wanted = frozenset(ids)
        closed = dict.fromkeys(wanted, 0)
        for w in self._workers:
            for bid, n in w.call(functools.partial(w.close_backends, wanted, why)).items():
                closed[bid] += n
        return closed[ids[0]] if single else closed

    def reset_counters(self, *, service_id: int | None = None,
                       backend_id: int | None = None) -> bool:
        """Zero the counters of one service id or backend id that has left the table; False
        (nothing changed) while the live table has it, or a session, UDP flow or listener of
        a worker still counts on it."""
        if (service_id is None) == (backend_id is None):
            raise TypeError("reset_counters: give exactly one of service_id, backend_id")
        service = service_id is not None
        chosen = service_id if service_id is not None else backend_id
        assert chosen is not None
        ident = int(chosen)
        limit = 1024 if service else MAX_BACKENDS
        if not 0 <= ident < limit:
            raise ValueError(f"{'service_id' if service else 'backend_id'} {ident} out of range "
                             f"0..{limit - 1}")
        with self._lock:  # serialised with publish (a retired id never comes back in one)
            live = self._shared.table
            if live is not None and (
                    live.service(ident) is not None if service
                    else any(b.backend_id == ident for b in live.table.backends)):
                return False
            # call() runs on each worker between its events: whatever it picked with an older
            # table has been counted by then
            if any(w.call(functools.partial(w.counts_on, service, ident))
                   for w in self._workers):
                return False
            for w in self._workers:
                w.call(functools.partial(w.zero_counters, service, ident))
        return True

    def set_connection_log(self, enabled: bool, capacity: int = 16384) -> None:
        """Turn the connection log on (capacity records per worker, rounded up to a power of
        two) or off (queued records stay until taken)."""
        size = ring_capacity(capacity) if enabled else None
        with self._log_lock:
            for worker in self._workers:
                worker.call(functools.partial(worker.configure_log, bool(enabled), size))

    def closed_sessions(self, max: int = 65536) -> list[dict[str, Any]]:
        """Take up to max queued records, oldest first within each worker, without waiting
        for any worker."""
        if max < 0:
            raise ValueError(f"max must be >= 0, got {max}")
        taken: list[dict[str, Any]] = []
        with self._log_lock:
            for worker in self._workers:
                taken.extend(worker.log.take(max - len(taken)))
        return taken

    def set_congestion_control(self, service_id: int, name: str | None) -> None:
        """Backend-leg congestion control of a TCP service: TCP_CONGESTION `name` on each
        backend socket before connect(), or None for the system default (no setsockopt)."""
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        if name is None:
            with self._lock:
                self._shared.congestion.pop(service_id, None)
            return
        if not isinstance(name, str):
            raise TypeError(f"name must be a str or None, not {type(name).__name__}")
        if not congestion_control_name_ok(name):
            raise ValueError(f"invalid congestion control name {name!r}: use 1 to "
                             f"{CC_NAME_MAX} characters of A-Z a-z 0-9 _ -")
        _try_congestion_control(name)
        with self._lock:
            if name not in self._cc_names and len(self._cc_names) >= MAX_CC_NAMES:
                raise OSError(errno.ENOSPC, f"more than {MAX_CC_NAMES} distinct congestion "
                                            "control names")
            self._cc_names.add(name)
            self._shared.congestion[service_id] = name

    def congestion_control(self, service_id: int) -> str | None:
        """The backend-leg algorithm set for service_id, or None."""
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        return self._shared.congestion.get(service_id)

    def set_fast_open(self, service_id: int, on: bool) -> None:
        """TCP Fast Open towards the backends of a TCP service (see l4lb.dataplane)."""
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        if not isinstance(on, bool):
            raise TypeError(f"on must be a bool, not {type(on).__name__}")
        if on:
            self._shared.fast_open.add(service_id)
        else:
            self._shared.fast_open.discard(service_id)

    def fast_open(self, service_id: int) -> bool:
        """Whether fast open towards the backends is on for service_id."""
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        return service_id in self._shared.fast_open

    def set_proxy_protocol(self, service_id: int, version: int) -> None:
        """PROXY protocol header ahead of each backend connection (see l4lb.dataplane)."""
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        if not isinstance(version, int):
            raise TypeError(f"version must be an int, not {type(version).__name__}")
        if version not in (0, 1, 2):
            raise ValueError(f"PROXY protocol version {version} is not 0, 1 or 2")
        if version:
            self._shared.proxy[service_id] = version
        else:
            self._shared.proxy.pop(service_id, None)

    def proxy_protocol(self, service_id: int) -> int:
        """The PROXY protocol version set for service_id, 0 for none."""
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        return self._shared.proxy.get(service_id, 0)

    def set_accept_proxy(self, service_id: int, timeout_ms: int) -> None:
        """PROXY protocol from the clients of a TCP service (see l4lb.dataplane)."""
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        if check_u32("timeout_ms", timeout_ms):
            self._shared.accept_proxy[service_id] = timeout_ms
        else:
            self._shared.accept_proxy.pop(service_id, None)

    def accept_proxy(self, service_id: int) -> int:
        """The header timeout set for service_id in ms, 0 when it expects no header."""
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        return self._shared.accept_proxy.get(service_id, 0)

    def set_socket_buffers(self, service_id: int, sndbuf: int, rcvbuf: int) -> None:
        """Backend-leg socket buffers of a TCP service (see l4lb.dataplane): tried on a
        scratch socket, FORCE first, as the C core does."""
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        for size in (sndbuf, rcvbuf):
            if isinstance(size, bool) or not isinstance(size, int):
                raise TypeError(f"a socket buffer size must be an int, not "
                                f"{type(size).__name__}")
            if size != 0 and not SOCKBUF_MIN <= size <= SOCKBUF_MAX:
                raise ValueError(f"socket buffer size {size} out of range (0, or "
                                 f"{SOCKBUF_MIN}..{SOCKBUF_MAX})")
        if not sndbuf and not rcvbuf:
            self._shared.sockbuf.pop(service_id, None)
            return
        force = _try_socket_buffers(sndbuf, rcvbuf)
        with self._lock:
            self._shared.sockbuf_force = force
            self._shared.sockbuf[service_id] = (sndbuf, rcvbuf)

    def socket_buffers(self, service_id: int) -> tuple[int, int]:
        """(sndbuf, rcvbuf) of service_id's backend leg; 0 where the kernel autotunes."""
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        return self._shared.sockbuf.get(service_id, (0, 0))

    def socket_buffer_errors(self, service_id: int) -> int:
        """Backend sockets of service_id that refused one of its buffer sizes."""
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        return sum(w.call(w.counters.copy).sockbuf_errors.get(service_id, 0)
                   for w in self._workers)

    def set_udp_gro(self, service_id: int, on: bool) -> None:
        """GRO buffers for a UDP service (see l4lb.dataplane): the reference reads datagram by
        datagram (the kernel cuts a GSO packet for it), so the switch changes nothing here."""
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        if not isinstance(on, bool):
            raise TypeError(f"on must be a bool, not {type(on).__name__}")

    def set_udp_flow_cap(self, cap: int) -> None:
        """At most `cap` UDP flows open at once, all services together (0: no cap)."""
        with self._shared.lock:
            self._shared.udp_flow_cap = check_u32("cap", cap)

    def set_fd_ceiling(self, ceiling: int) -> None:
        """Descriptors numbered `ceiling` and up are left to the control plane (0: none)."""
        self._shared.fd_ceiling = check_u32("ceiling", ceiling)

    def fd_ceiling(self) -> int:
        """The descriptor ceiling (0: none)."""
        return self._shared.fd_ceiling

    def udp_flows(self) -> tuple[int, int]:
        """(cap, open): the UDP flow cap (0: none) and the flows open now."""
        with self._shared.lock:
            return (self._shared.udp_flow_cap, self._shared.udp_flows)

    def udp_gro(self, service_id: int) -> bool:
        """Always False: the reference never asks for GRO buffers."""
        if not 0 <= service_id < 1024:
            raise ValueError(f"service_id {service_id} out of range 0..1023")
        return False

    @property
    def splice_fallbacks(self) -> int:
        """Relay directions that copied through user space because splice(2) said EINVAL."""
        return sum(w.call(w.counters.copy).splice_fallbacks for w in self._workers)

    def stop(self, timeout: float) -> None:
        """Stop accepting, let sessions finish for up to timeout seconds, reset the rest, join."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            started = self._started
        if not started:
            for worker in self._workers:
                worker.close_unstarted()
            return
        deadline = time.monotonic() + max(0.0, timeout)
        for worker in self._workers:
            worker.call(functools.partial(worker.begin_stop, deadline))
        for worker in self._workers:
            worker.thread.join(max(0.0, deadline - time.monotonic()) + JOIN_GRACE)
        stuck = [w.index for w in self._workers if w.thread.is_alive()]
        if stuck:
            raise RuntimeError(f"refdp workers {stuck} did not exit")
        for worker in self._workers:
            if worker.error is not None:
                raise RuntimeError(f"refdp worker {worker.index} crashed") from worker.error


def _try_congestion_control(name: str) -> None:
    """Set `name` on a scratch TCP socket, as the C core does before it accepts a name:
    OSError ENOENT (no such algorithm) or EPERM (not allowed for this process), worded like the
    C module's."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise OSError(errno.ENOENT, f"congestion control {name!r} is not available on "
                              "this kernel (net.ipv4.tcp_available_congestion_control)") from None
            if exc.errno == errno.EPERM:
                raise OSError(errno.EPERM, f"congestion control {name!r} is not allowed for "
                              "this process (net.ipv4.tcp_allowed_congestion_control; or "
                              "CAP_NET_ADMIN)") from None
            raise


def _try_socket_buffers(sndbuf: int, rcvbuf: int) -> bool:
    """Set the sizes (0: skipped) on a scratch TCP socket, SO_*BUFFORCE first: True when the
    FORCE options work (CAP_NET_ADMIN), False when only the plain ones do; OSError else."""
    force = True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, sndbuf or SOCKBUF_MIN)
        except PermissionError:
            force = False
        if sndbuf:
            set_socket_buffer(probe, socket.SO_SNDBUF, sndbuf)
        if rcvbuf:
            set_socket_buffer(probe, socket.SO_RCVBUF, rcvbuf)
    return force


def _check_listener(fd: int) -> None:
    """ValueError unless fd is a nonblocking listening TCP socket or a nonblocking bound UDP
    socket (a blocking listener would stall its worker). A UDP socket on a wildcard address
    gets pktinfo turned on, or it could not reply from the address each client wrote to.
    The probe takes no descriptor (a dup could fail, or land above the descriptor ceiling)."""
    probe = borrow_listener(fd)
    try:
        if probe.type == socket.SOCK_STREAM:
            if not probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                raise ValueError(f"fd {fd} is not listening")
        elif probe.type == socket.SOCK_DGRAM and probe.family in (socket.AF_INET,
                                                                   socket.AF_INET6):
            if probe.getsockname()[1] == 0:
                raise ValueError(f"fd {fd} is a UDP socket that is not bound")
            if is_wildcard(probe):
                enable_pktinfo(probe)
        else:
            raise ValueError(f"fd {fd} is neither a TCP nor a UDP socket")
        if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK:
            raise ValueError(f"fd {fd} is in blocking mode; give a nonblocking listener")
    finally:
        probe.detach()  # the fd stays the caller's
