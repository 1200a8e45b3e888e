"""UDP flow relay of one reference worker: datagrams from clients to backends and back.

docs/forwarding-table.md, "UDP services", is the contract; the C core (relay_udp.c) does the
same, in the same order. A **flow** is keyed by the service, the local address the client wrote
to, and the client's address and port (flow_key 0) or address alone (flow_key 1): one client
writing to two addresses of a wildcard listener has two flows, each replying from its own
address. Flows live in the worker whose listener received their first datagram (SO_REUSEPORT
sends one client 4-tuple to one socket, so a flow's datagrams all reach that worker); max_flows
and the per-backend flow counts that least_conn reads are shared by all workers under the
shared lock.

A datagram from a client:
1. is read into the worker's buffer with the address the client sent to (dgram.receive) and
   counted in datagrams_in; a truncated one (MSG_TRUNC) is counted in drops_truncated, dropped;
2. finds its flow. A flow whose backend the live table no longer lists for the service, or
   lists with weight 0 and the `down` flag (bit 1), ends here and the datagram opens a new flow
   (a drained backend, weight 0 without the flag, keeps its flows);
3. without a flow: no table, no such udp service: drops_no_backend; max_flows reached:
   drops_max_flows; the data plane's flow cap (all services together) reached:
   drops_max_udp_flows; the scheduler (l4lb.table.sched.pick, no retries) finds no backend:
   drops_no_backend (a transparent backend of the other family than the client's is no
   candidate, and it is never charged); no fd (or port) for the upstream socket:
   accept_errors; its connect() fails otherwise (no route): connect_failure on the backend and
   drops_send. Otherwise a connected, nonblocking upstream socket to the backend is opened and
   the flow counted
   (flows_created, flows_active, and the backend's flows_total, flows_active);
4. remembers the client's address (with flow_key 1 the latest port wins: replies go there) and
   goes out on the flow's upstream socket; a send the kernel refuses is counted in drops_send,
   and when the refusal is an ICMP error reported for an earlier datagram (ECONNREFUSED, host
   or network unreachable) it also ends the flow and counts a connect_failure on the backend.
A datagram from a backend (on the flow's upstream socket) goes to the client through the
listener, from the address the client wrote to; after `responses` of them (when > 0) the flow
ends. An ICMP error there ends the flow too (connect_failure). A flow also ends after
idle_timeout_ms without a datagram either way, and when its listener is removed. While the data
plane stops, listeners are no longer read but flows still relay replies until they end or have
been idle for STOP_IDLE (or the stop deadline). Every end counts flows_expired; the flow's
record at creation gives its idle timeout and responses limit.

Every end goes through `_end(flow, reason)` with the connection log's close reason (idle_timeout,
responses, refused, moved, listener_gone, shutdown, drain_timeout); with the log on it queues
one record. A datagram that cannot open a flow leaves no record (no flow existed).
"""

from __future__ import annotations

import errno
import functools
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

from l4lb.refdp.counters import Counters
from l4lb.refdp.dgram import RECV_MAX, Received, receive, reply
from l4lb.refdp.livetable import (
    bind_source,
    client_family,
    client_unbindable,
)
from l4lb.refdp.records import RecordQueue, make_record
from l4lb.refdp.shared import Shared, add_count
from l4lb.table.blob import FLAG_DOWN, PROTO_UDP, ServiceRec
from l4lb.table.sched import SchedWorker, pick

BATCH = 64  # datagrams read per readiness event of one socket before others get a turn
STOP_IDLE = 0.25  # seconds: while stopping, a flow idle this long is done (C: 250 ms)
UPSTREAM = "upstream"  # selector key data kind of a flow's upstream socket
READ = selectors.EVENT_READ
# errors an ICMP message leaves on a connected UDP socket: the backend cannot be reached
ICMP_ERRNOS = frozenset((errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                         errno.EHOSTDOWN, errno.ENETDOWN, errno.EPROTO, errno.EMSGSIZE))
# errors that say this host ran out of something, not that a backend failed
LOCAL_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                          errno.EADDRNOTAVAIL, errno.EAGAIN))

# (service id, local address written to (b"": the listener's own), client host, client port
# or 0 with flow_key 1)
FlowKey = tuple[int, bytes, str, int]


class UdpListener:
    """A bound datagram socket handed to this worker for one service."""

    def __init__(self, service_id: int, fd: int, sock: socket.socket) -> None:
        self.service_id = service_id  # the service its datagrams belong to
        self.fd = fd  # the caller's fd (the key used by remove_listener)
        self.sock = sock  # a socket object over the caller's fd (worker.borrow_listener())
        self.closed = False  # removed: flows replying through it end


class Flow:
    """One client (address and port, or address) of one service, bound to one backend."""

    __slots__ = (
        "backend_id",
        "bytes_to_backend",
        "bytes_to_client",
        "client",
        "closed",
        "dgrams_to_backend",
        "dgrams_to_client",
        "generation",
        "idle",
        "ifindex",
        "key",
        "last_seen",
        "last_seen_wall",
        "listener",
        "local",
        "peer",
        "responses",
        "responses_max",
        "service_id",
        "started",
        "stop_cut",
        "upstream",
    )

    def __init__(self, key: FlowKey, svc: ServiceRec, backend_id: int, generation: int,
                 upstream: socket.socket, listener: UdpListener, local: bytes,
                 ifindex: int) -> None:
        self.key = key  # its key in the worker's flow table
        self.service_id = svc.service_id
        self.backend_id = backend_id  # the backend all its datagrams go to
        self.generation = generation  # table generation its backend was last checked against
        self.upstream = upstream  # connected, nonblocking socket to the backend
        self.idle = svc.idle_timeout_ms / 1000.0  # seconds without a datagram before it ends
        self.responses_max: int = svc.responses  # 0: never ends by count
        self.responses = 0  # datagrams received from the backend
        self.listener = listener  # where the client wrote to; replies leave through it
        self.local = local  # packed address the client wrote to (b"": the listener's own)
        self.ifindex = ifindex  # interface of the client's first datagram
        self.peer: Any = None  # the client's address tuple, as sendmsg takes it
        self.client: tuple[str, int] = ("", 0)  # (host, port) of the client's last datagram
        self.started = time.time()  # unix time of its first datagram
        self.last_seen = time.monotonic()  # last datagram either way (drives the idle timer)
        self.last_seen_wall = self.started  # the same in unix time, for flows()
        self.dgrams_to_backend = 0
        self.dgrams_to_client = 0
        self.bytes_to_backend = 0
        self.bytes_to_client = 0
        self.closed = False
        self.stop_cut = False  # the stop shortened its idle timeout to STOP_IDLE

    def snapshot(self) -> dict[str, Any]:
        """The flows() entry of this flow."""
        return {
            "service_id": self.service_id,
            "backend_id": self.backend_id,
            "client": self.client,
            "started": self.started,
            "last_seen": self.last_seen_wall,
            "datagrams_to_backend": self.dgrams_to_backend,
            "datagrams_to_client": self.dgrams_to_client,
            "bytes_to_backend": self.bytes_to_backend,
            "bytes_to_client": self.bytes_to_client,
        }


class UdpRelay:
    """The flows of one worker and what moves their datagrams; runs on the worker's thread."""

    def __init__(self, shared: Shared, counters: Counters, sched: SchedWorker,
                 sel: selectors.BaseSelector,
                 at: Callable[[float, Callable[[], None]], None], log: RecordQueue) -> None:
        self.shared = shared  # live table, scheduler state, flow counts of all workers
        self.counters = counters  # the worker's counters
        self.sched = sched  # the worker's scheduler state (smooth WRR, PRNG)
        self.sel = sel  # the worker's selector
        self.at = at  # schedule a callback at a monotonic time on the worker's timer heap
        self.log = log  # the worker's connection log
        self.flows: dict[FlowKey, Flow] = {}
        self.buf = bytearray(RECV_MAX)  # every datagram passes through here
        self.view = memoryview(self.buf)

    # --- from clients -----------------------------------------------------------------------

    def on_listener(self, lst: UdpListener) -> None:
        """The listener is readable: relay up to BATCH datagrams."""
        counters = self.counters.service(lst.service_id)
        for _ in range(BATCH):
            try:
                got = receive(lst.sock, self.view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # a pending error on the socket; nothing to relay
                continue
            counters["datagrams_in"] += 1
            if got.truncated:
                counters["drops_truncated"] += 1
                continue
            self._from_client(lst, got, counters)

    def _from_client(self, lst: UdpListener, got: Received, counters: dict[str, int]) -> None:
        live = self.shared.table
        svc = live.service(lst.service_id) if live is not None else None
        if svc is not None and svc.protocol != PROTO_UDP:
            svc = None
        host, port = str(got.peer[0]), int(got.peer[1])
        key = (lst.service_id, got.local, host, port if svc is None or svc.flow_key == 0 else 0)
        flow = self.flows.get(key)
        if flow is not None and live is not None and flow.generation != live.generation:
            rec = live.service_backend(svc, flow.backend_id) if svc is not None else None
            if rec is None or (rec.weight == 0 and rec.flags & FLAG_DOWN):
                self._end(flow, "moved")  # its backend is DOWN or gone: the datagram picks again
                flow = None
            else:
                flow.generation = live.generation
        if flow is None:
            if live is None or svc is None:
                counters["drops_no_backend"] += 1
                return
            flow = self._open(key, svc, live.generation, lst, got, counters)
            if flow is None:
                return
        flow.peer = got.peer
        flow.client = (host, port)
        self._to_backend(flow, got.size, counters)

    def _open(self, key: FlowKey, svc: ServiceRec, generation: int, lst: UdpListener,
              got: Received, counters: dict[str, int]) -> Flow | None:
        """A new flow to a freshly picked backend, or None (the datagram is dropped, counted)."""
        live = self.shared.table
        assert live is not None
        h = live.flow_hash(svc, key[2], int(got.peer[1]))
        sid = svc.service_id
        with self.shared.lock:
            if 0 < svc.max_flows <= self.shared.svc_flows.get(sid, 0):
                counters["drops_max_flows"] += 1
                return None
            if 0 < self.shared.udp_flow_cap <= self.shared.udp_flows:
                counters["drops_max_udp_flows"] += 1
                return None
            # told the client's family: a transparent backend of the other family is no candidate
            choice = pick(live.table, svc, self.shared.sched, self.sched, h,
                          family=client_family(key[2]))
            if choice is None:
                counters["drops_no_backend"] += 1
                return None
            rec = live.backend(choice[1])
            add_count(self.shared.svc_flows, sid, 1)
            self.shared.udp_flows += 1
            add_count(self.shared.sched.active, rec.backend_id, 1)
        try:
            upstream = socket.socket(socket.AF_INET6 if rec.family == 6 else socket.AF_INET,
                                     socket.SOCK_DGRAM)
        except OSError:
            counters["accept_errors"] += 1  # out of fds: not the backend's fault
            self._release(sid, rec.backend_id)
            return None
        if self.shared.fd_high(upstream.fileno()):  # the control plane's part of the fds
            upstream.close()
            counters["accept_errors"] += 1
            self._release(sid, rec.backend_id)
            return None
        source = live.sources[choice[1]]
        if client_unbindable(source, key[2], live.targets[choice[1]][0]):  # the client's doing
            upstream.close()
            counters["accept_errors"] += 1
            self._release(sid, rec.backend_id)
            return None
        bound = False  # a source bind that fails is the backend's failure, whatever the errno
        try:
            upstream.setblocking(False)
            if source is not None:
                bind_source(upstream, source, key[2])
            bound = True
            upstream.connect(live.targets[choice[1]])
        except OSError as exc:
            upstream.close()
            self._release(sid, rec.backend_id)
            if bound and exc.errno in LOCAL_ERRNOS:
                counters["accept_errors"] += 1
            else:  # the backend's address is unusable from here (no route, ...)
                self.counters.backend(rec.backend_id)["connect_failures"] += 1
                counters["drops_send"] += 1
            return None
        flow = Flow(key, svc, rec.backend_id, generation, upstream, lst, got.local, got.ifindex)
        self.flows[key] = flow
        self.sel.register(upstream, READ, (UPSTREAM, flow))
        counters["flows_created"] += 1
        counters["flows_active"] += 1
        be = self.counters.backend(rec.backend_id)
        be["flows_total"] += 1
        be["flows_active"] += 1
        self.at(flow.last_seen + flow.idle, lambda: self._idle_timer(flow))
        return flow

    def _to_backend(self, flow: Flow, size: int, counters: dict[str, int]) -> None:
        try:
            sent = flow.upstream.send(self.view[:size])
        except OSError as exc:  # full buffer (EAGAIN), EMSGSIZE, an ICMP error, ...
            counters["drops_send"] += 1
            if exc.errno in ICMP_ERRNOS:  # an earlier datagram met a closed port (or no route)
                self.counters.backend(flow.backend_id)["connect_failures"] += 1
                self._end(flow, "refused")
            return
        flow.last_seen = time.monotonic()
        flow.last_seen_wall = time.time()
        flow.dgrams_to_backend += 1
        flow.bytes_to_backend += sent
        be = self.counters.backend(flow.backend_id)
        be["datagrams_to_backend"] += 1
        be["bytes_to_backend"] += sent
        counters["bytes_to_backend"] += sent

    # --- from backends ----------------------------------------------------------------------

    def on_upstream(self, flow: Flow) -> None:
        """A flow's upstream socket is readable: relay up to BATCH datagrams to its client."""
        counters = self.counters.service(flow.service_id)
        be = self.counters.backend(flow.backend_id)
        for _ in range(BATCH):
            if flow.closed:
                return
            try:
                size, _, flags, _ = flow.upstream.recvmsg_into([self.view])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error (port or host unreachable): the flow cannot go on
                be["connect_failures"] += 1
                self._end(flow, "refused")
                return
            flow.last_seen = time.monotonic()
            flow.last_seen_wall = time.time()
            flow.responses += 1
            if flags & socket.MSG_TRUNC:
                counters["drops_truncated"] += 1
            else:
                self._to_client(flow, size, counters, be)
            if 0 < flow.responses_max <= flow.responses:
                self._end(flow, "responses")

    def _to_client(self, flow: Flow, size: int, counters: dict[str, int],
                   be: dict[str, int]) -> None:
        try:
            sent = reply(flow.listener.sock, self.view[:size], flow.peer, flow.local,
                         flow.ifindex)
        except OSError:
            counters["drops_send"] += 1
            return
        flow.dgrams_to_client += 1
        flow.bytes_to_client += sent
        counters["datagrams_out"] += 1
        counters["bytes_to_client"] += sent
        be["datagrams_to_client"] += 1
        be["bytes_to_client"] += sent

    # --- ends -------------------------------------------------------------------------------

    def _idle_timer(self, flow: Flow) -> None:
        if flow.closed:
            return
        due = flow.last_seen + flow.idle
        if time.monotonic() >= due:
            self._end(flow, "shutdown" if flow.stop_cut else "idle_timeout")
        else:
            self.at(due, lambda: self._idle_timer(flow))

    def _end(self, flow: Flow, reason: str) -> None:
        """Close the flow and give back its place in every count (every end comes here)."""
        if flow.closed:
            return
        flow.closed = True
        if self.log.on:
            self.log.add(make_record("udp", flow.service_id, flow.backend_id, flow.client,
                                     flow.started, flow.bytes_to_backend, flow.bytes_to_client,
                                     reason))
        self.sel.unregister(flow.upstream)
        flow.upstream.close()
        if self.flows.get(flow.key) is flow:
            del self.flows[flow.key]
        self._release(flow.service_id, flow.backend_id)
        counters = self.counters.service(flow.service_id)
        counters["flows_expired"] += 1
        counters["flows_active"] -= 1
        self.counters.backend(flow.backend_id)["flows_active"] -= 1

    def _release(self, service_id: int, backend_id: int) -> None:
        with self.shared.lock:
            add_count(self.shared.svc_flows, service_id, -1)
            self.shared.udp_flows -= 1
            add_count(self.shared.sched.active, backend_id, -1)

    def drop_listener(self, lst: UdpListener) -> None:
        """lst is being removed: end the flows whose replies would go through it."""
        lst.closed = True
        for flow in [f for f in self.flows.values() if f.listener is lst]:
            self._end(flow, "listener_gone")

    def stopping(self) -> None:
        """The data plane stops: every flow ends once idle for STOP_IDLE (or sooner)."""
        for flow in self.flows.values():
            if flow.idle > STOP_IDLE:
                flow.idle = STOP_IDLE
                flow.stop_cut = True
                self.at(flow.last_seen + STOP_IDLE, functools.partial(self._idle_timer, flow))

    def close_all(self) -> None:
        """End every flow (the stop deadline, or the worker is exiting)."""
        for flow in list(self.flows.values()):
            self._end(flow, "shutdown")

    def close_backends(self, backend_ids: frozenset[int],
                       reason: str = "drain_timeout") -> dict[int, int]:
        """End every flow of the backends in backend_ids, in one pass (reason:
        "drain_timeout", "moved" for a backend gone DOWN, or "shutdown" during a stop);
        returns {id: how many ended} for the ids that had any."""
        closed: dict[int, int] = {}
        doomed = [f for f in self.flows.values() if f.backend_id in backend_ids]
        for flow in doomed:
            closed[flow.backend_id] = closed.get(flow.backend_id, 0) + 1
            self._end(flow, reason)
        return closed

    def snapshot(self) -> list[dict[str, Any]]:
        """flows() entries of this worker."""
        return [f.snapshot() for f in self.flows.values()]

