"""State that all workers of one reference data plane share: the live table and the counts
that limits and schedulers read across workers.

Everything here except `table`, `kicks` (filled before any worker starts, then only read),
`congestion`, `fast_open`, `proxy`, `accept_proxy`, `sockbuf` and `sockbuf_force` is guarded
by `lock`; `table` is replaced whole by publish() (one reference assignment) and read
without the lock; `congestion`, `fast_open`, `proxy`, `accept_proxy` and `sockbuf` get
single-key stores and
reads (each
atomic under the GIL; a service's two buffer sizes are one tuple), so a worker sees a service's
old setting or its new one, never a mix; `sockbuf_force` is stored before the sizes it was
probed with.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from l4lb.refdp.livetable import LiveTable
from l4lb.table.sched import SchedShared


@dataclass
class Shared:
    """State all workers of one data plane share."""

    sched: SchedShared  # round-robin counters, active sessions / flows per backend id, TCP
    #                     sessions per service id
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards sched, svc_flows,
    #                     udp_flows
    table: LiveTable | None = None  # the live table; replaced whole by publish()
    svc_flows: dict[int, int] = field(default_factory=dict)  # open UDP flows per service id
    udp_flows: int = 0  # open UDP flows of all services (under lock)
    udp_flow_cap: int = 0  # at most this many UDP flows at once, 0 = no cap (set_udp_flow_cap)
    fd_ceiling: int = 0  # descriptors from here up are the control plane's (set_fd_ceiling);
    #                      0 = none. Read without the lock: one int, replaced whole
    queued: dict[int, int] = field(default_factory=dict)  # clients waiting per service id
    #                      (queue_timeout; l4lb.refdp.worker, "The queue"), all workers
    queued_all: int = 0  # sum of queued (under lock; read without it as a hint, one int)
    kicks: list[Callable[[], None]] = field(default_factory=list)  # one per worker: wake it
    #                      when it holds waiting clients (a slot was freed elsewhere)
    q_issued: dict[int, int] = field(default_factory=dict)  # next queue ticket per service
    #                      id (under lock): the order of waiting clients across workers
    q_first: list[dict[int, int]] = field(default_factory=list)  # one per worker (the list
    #                      filled before any worker starts; each dict under lock): service id
    #                      -> ticket of that worker's oldest waiting client of it

    def fd_high(self, fd: int) -> bool:
        """Whether fd is at or above the descriptor ceiling (the process is nearly full)."""
        return 0 < self.fd_ceiling <= fd
    congestion: dict[int, str] = field(default_factory=dict)  # service id -> backend-leg
    #                     congestion control (set_congestion_control); absent = system default
    fast_open: set[int] = field(default_factory=set)  # service ids with fast open towards
    #                     their backends (set_fast_open)
    proxy: dict[int, int] = field(default_factory=dict)  # service id -> PROXY protocol version
    #                     (1 or 2) of its backend connections (set_proxy_protocol); absent = none
    accept_proxy: dict[int, int] = field(default_factory=dict)  # service id -> how long (ms)
    #                     a new client has to send its PROXY header (set_accept_proxy); absent =
    #                     the service expects none
    sockbuf: dict[int, tuple[int, int]] = field(default_factory=dict)  # service id ->
    #                     backend-leg (SO_SNDBUF, SO_RCVBUF), 0 = autotuning (set_socket_buffers)
    sockbuf_force: bool = False  # the sizes go in with SO_SNDBUFFORCE / SO_RCVBUFFORCE
    #                     (set_socket_buffers found CAP_NET_ADMIN), not the plain options


def add_count(counts: dict[int, int], key: int, delta: int) -> None:
    """counts[key] += delta, the entry removed when it drops to 0 (ids come and go)."""
    value = counts.get(key, 0) + delta
    if value:
        counts[key] = value
    else:
        counts.pop(key, None)
