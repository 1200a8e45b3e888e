"""One worker of the reference data plane: a thread with its own selectors loop.

The loop waits on the worker's listeners, its sessions' and flows' sockets and a wake-up
socketpair, then runs whatever timers are due. TCP sessions are handled here (below); UDP
listeners and flows are handed to the worker's UdpRelay (l4lb.refdp.udp).

Everything a worker owns (listeners, sessions, flows, counters, pipe pool, scheduler state) is
touched only by its own thread; other threads talk to it through `call(fn)`, which queues fn,
writes a byte to the wake-up socket and waits for the result. Before the thread starts and after
it has exited, call() runs fn directly. The only state shared between workers is the live table
reference and the scheduler's shared counters (round-robin counters, active sessions and flows
per backend, sessions and flows per service), guarded by one lock (l4lb.refdp.shared).

Life of a connection (the C core does the same, in the same order):
1. accept (nonblocking, a bounded batch per wake-up; EMFILE/ENFILE pause the listener briefly
   instead of spinning, and so does a client socket at the descriptor ceiling, which is served;
   the listener resumes once RESERVE_FDS descriptors are free below the ceiling); look the
   listener's service_id up in the live table; no table, no such service or not a TCP one:
   reset the client and count no_backend;
2. the service's max_connections reached: reset the client and count rejected;
3. pick a backend from the live table with the Python scheduler twin (l4lb.table.sched.pick),
   excluding backends already tried (by id, so a retry after a table swap still excludes them)
   and, for the client's family, transparent backends of the other family; none: reset the
   client and count rejected when the first pick found every weighted backend full,
   no_backend otherwise;
4. nonblocking connect with the connect_timeout of the service at accept; refusal, error or
   timeout count a connect_failure on that backend and go back to 3 while the retries allowed
   at accept remain, else no_backend. With fast open on for the service and the client's first
   bytes already waiting, the connect is a sendto(MSG_FASTOPEN) of a peek of them; what the SYN
   carried leaves the client socket only once the attempt has connected (_connected);
5. relay (l4lb.refdp.relay) until both FINs went through, a reset, the idle timeout, or the
   end of a graceful stop.
On a service with accept_proxy, step 3 waits for the client's PROXY protocol header (the C
relay's relay_pin_read): the worker peeks, parses with l4lb.proxyproto.parse and takes only
bytes known to be the header's (a level-triggered selector cannot leave an incomplete header
queued, as the C relay does under its edge-triggered epoll, without waking again and again);
its addresses become the session's client (scheduler, sessions(), the log, the header sent on);
a bad one resets the client (proxy_header_errors), a late one too (proxy_header_timeouts).
With accept_proxy_from (the service's prefixes in the table) only a listed peer owes a header;
any other client goes on to step 3 at once, as without accept_proxy (proxy_direct).
A client that resets while its backend is still connecting ends its session at once (steps 3-4
are abandoned; nothing is counted but the close).

The queue (queue_timeout_ms > 0 in the service's record; the C relay's "The queue"). When the
first pick of step 3 finds every weighted backend at its max_connections, the client waits in
its worker's queue instead of being rejected, while fewer than max_queue clients of the service
wait on all workers together (Shared.queued; else rejected as before); nothing is read from it.
A retry after a failed connect whose untried weighted backends are all full waits again the
same way (redispatch), its tried backends still left out; without room it ends as before.
A new client of a service whose queue is not empty (with accept_proxy: once its header was
read) queues behind the others. When a session that held a backend ends (or an attempt fails)
while clients of its service wait, every worker with waiting clients is kicked
(Shared.kicks: a byte on its wake-up socket; itself: q_kick) and, after its batch, tries its
waiting clients oldest first, at most one failed pick per service (FIFO per service and
worker), skipping a service whose oldest client here is younger than another worker's oldest
(Shared.q_issued tickets, Shared.q_first: FIFO across workers too); a worker with waiting
clients also tries every QUEUE_RETRY seconds (table changes).
A client still waiting at queue_timeout_ms is reset (queue_timeouts, close reason
queue_timeout). A client that gives up while it waits leaves the queue: its first event is
peeked; a reset, or a FIN with nothing before it, ends it at once; a FIN after data may be a
half-close after a request and keeps it waiting (the C relay's relay_queue_fin). When data is
waiting the level-triggered selector cannot watch the client further without reading, so each
queue run polls such clients for a reset (POLLERR / POLLHUP; the C relay sees EPOLLHUP at
once, here it takes up to QUEUE_RETRY). A stop closes every waiting client (rejected, close
reason shutdown).

Every end of a session goes through `_close_session(session, reset, reason)`, whose callers name
the close reason (l4lb/dataplane.py); with the connection log on it queues one record in the
worker's RecordQueue (l4lb.refdp.records), as do the refusals of steps 1 and 2 (no session, no
backend). `close_backends(backend_ids, reason)` resets every session of a set of backends
("drain_timeout" or "backend_down") in one pass.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import heapq
import itertools
import os
import queue
import select
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from l4lb import proxyproto
from l4lb.net.listen import SO_RCVBUFFORCE, SO_SNDBUFFORCE
from l4lb.proxyproto import ProxyHeaderError
from l4lb.refdp.counters import Counters
from l4lb.refdp.livetable import (
    bind_source,
    client_family,
    client_unbindable,
)
from l4lb.refdp.pipes import PipePool
from l4lb.refdp.records import RecordQueue, make_record
from l4lb.refdp.relay import Outcome, Session, State, reset_and_close
from l4lb.refdp.shared import Shared, add_count
from l4lb.refdp.udp import UPSTREAM, UdpListener, UdpRelay
from l4lb.table.blob import PROTO_TCP, SCHED_MAGLEV, SCHED_SRCHASH, ServiceRec
from l4lb.table.sched import SchedWorker, pick

T = TypeVar("T")

ACCEPT_BATCH = 64  # connections accepted per readiness event of a listener
ACCEPT_PAUSE = 0.1  # seconds a listener rests after EMFILE/ENFILE/ENOBUFS/ENOMEM
RESERVE_FDS = 4  # descriptors that must be free below the ceiling before it accepts again
CALL_TIMEOUT = 30.0  # seconds call() waits for a worker before declaring it stuck
FD_SHORTAGE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# errors that say this host ran out of something, not that a peer failed (relay_local_error)
LOCAL_ERRNOS = (*FD_SHORTAGE, errno.EADDRNOTAVAIL)
PIN_PEEK = 4096  # accept_proxy: bytes peeked per look at a client's PROXY header
COPY_PEEK = 16384  # fast open: bytes of a waiting client peeked for the SYN (the C default
#                    copy buffer)
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
QUEUE_RETRY = 0.05  # seconds: a worker with waiting clients tries its queue at least this often
#                     (the C relay's RELAY_QUEUE_RETRY_MS)

# what a selector key's data says the fd is (and UPSTREAM: a UDP flow's backend socket)
WAKE, LISTENER, UDP_LISTENER, CLIENT, BACKEND = (
    "wake", "listener", "udp_listener", "client", "backend")


class BorrowedSocket(socket.socket):
    """A socket object over a descriptor that stays its owner's: give it back with detach(),
    never close(). Even collected without detach() (a data plane dropped unstopped) it leaves
    the descriptor open, where a plain socket object would close it under its owner, or close
    whatever reused the number by then."""

    def __del__(self) -> None:
        if self.fileno() != -1:
            self.detach()


def borrow_listener(fd: int) -> socket.socket:
    """A socket object over the caller's listener fd that takes no descriptor of its own: the
    C core polls the caller's fd itself. A dup would take the lowest free number, which during
    a flood is at or above the descriptor ceiling, in the control plane's share (a reload then
    put listeners up there), or none at all (EMFILE, where the C core has no such failure).
    The fd stays the caller's, who closes it after remove_listener() (BorrowedSocket)."""
    return BorrowedSocket(fileno=fd)


@dataclass
class Listener:
    """A listening socket handed to this worker."""

    service_id: int  # the service its connections belong to
    fd: int  # the caller's fd (the key used by remove_listener)
    sock: socket.socket  # a socket object over the caller's fd (borrow_listener())
    paused: bool = False  # resting after an fd shortage


class _Command:
    """A function queued for the worker thread, and its result."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the caller, re-raised there
            self.error = exc
        finally:
            self.done.set()


class Worker:
    """One worker thread and everything it owns."""

    def __init__(self, index: int, shared: Shared) -> None:
        self.index = index  # worker number, 0..workers-1
        self.shared = shared  # table and scheduler state common to all workers
        self.sel = selectors.DefaultSelector()  # this worker's poller (epoll on Linux)
        self.wake_r, self.wake_w = socket.socketpair()  # a byte on wake_w wakes the loop
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.sel.register(self.wake_r, READ, (WAKE, None))
        self.commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()  # call() queue
        self.cmd_lock = threading.Lock()  # orders call() against thread start and exit
        self.running = False  # the thread is running its loop (call() must queue)
        self.listeners: dict[int, Listener] = {}  # TCP listeners by the caller's fd
        self.udp_listeners: dict[int, UdpListener] = {}  # UDP listeners by the caller's fd
        self.sessions: set[Session] = set()  # open sessions
        self.counters = Counters()  # written only by this worker's thread
        self.log = RecordQueue(self.counters)  # connection log: the worker writes, one reader
        self.pool = PipePool(fd_high=shared.fd_high)  # pipes for splice, held only while data
        #                                                is in flight
        self.reserve: list[int] = []  # spare fds (/dev/null) for a session in hand at the
        #                               ceiling (C: relay_reserve_*); filled below the ceiling
        self.resume_armed = False  # a resume of the paused TCP listeners is scheduled
        self.sched = SchedWorker(index + 1)  # smooth-WRR currents and PRNG of this worker
        self.timers: list[tuple[float, int, Callable[[], None]]] = []  # heap by deadline
        self.timer_seq = itertools.count()  # tie-breaker so the heap never compares callables
        self.udp = UdpRelay(shared, self.counters, self.sched, self.sel, self._at,
                            self.log)  # UDP flows
        self.stopping = False  # stop() began: no listeners, sessions drain until deadline
        self.waiting: dict[Session, None] = {}  # clients waiting for a backend slot, oldest
        #                                         first ("The queue"); read by other threads
        #                                         only for emptiness
        self.q_kick = False  # a slot was freed (or a client queued): try the queue after this
        #                      batch
        self.q_retry = 0.0  # monotonic time of the next try even without a kick
        shared.kicks.append(self._kick)
        self.q_first: dict[int, int] = {}  # service id -> ticket of its oldest waiting client
        #                                    here (under shared.lock; read by other workers)
        shared.q_first.append(self.q_first)
        self.error: BaseException | None = None  # what killed the loop, if anything
        self.thread = threading.Thread(target=self._run, name=f"l4lb-refdp-{index}",
                                       daemon=True)

    # --- called from other threads ----------------------------------------------------------

    def start(self) -> None:
        """Start the thread."""
        with self.cmd_lock:
            self.running = True
        self.thread.start()

    def call(self, fn: Callable[[], T]) -> T:
        """Run fn on the worker thread (or here when it is not running) and return its result."""
        with self.cmd_lock:
            if not self.running:
                cmd = None
            else:
                cmd = _Command(fn)
                self.commands.put(cmd)
                with contextlib.suppress(BlockingIOError):  # wake-ups pending already
                    self.wake_w.send(b"\0")
        if cmd is None:
            return fn()
        if not cmd.done.wait(CALL_TIMEOUT):
            raise RuntimeError(f"refdp worker {self.index} did not answer in {CALL_TIMEOUT} s")
        if cmd.error is not None:
            raise cmd.error
        result: T = cmd.result
        return result

    # --- commands (run on the worker thread) ------------------------------------------------

    def add_listener(self, service_id: int, fd: int) -> None:
        """Poll fd for connections (TCP) or datagrams (UDP) of service_id; it stays the
        caller's (borrow_listener())."""
        sock = borrow_listener(fd)  # nonblocking: checked by the caller
        try:
            if sock.type == socket.SOCK_DGRAM:
                udp = UdpListener(service_id, fd, sock)
                self.udp_listeners[fd] = udp
                if not self.stopping:
                    self.sel.register(sock, READ, (UDP_LISTENER, udp))
                return
            lst = Listener(service_id, fd, sock)
            self.listeners[fd] = lst
            if not self.stopping:
                self.sel.register(sock, READ, (LISTENER, lst))
        except BaseException:
            self.listeners.pop(fd, None)
            self.udp_listeners.pop(fd, None)
            sock.detach()
            raise

    def remove_listener(self, fd: int) -> None:
        """Stop polling fd and give it back (a UDP listener's flows end with it)."""
        udp = self.udp_listeners.pop(fd, None)
        if udp is not None:
            self.udp.drop_listener(udp)
            if not self.stopping:
                self.sel.unregister(udp.sock)
            udp.sock.detach()
            return
        lst = self.listeners.pop(fd, None)
        if lst is None:
            return  # already dropped by begin_stop()
        if not lst.paused and not self.stopping:
            self.sel.unregister(lst.sock)
        lst.sock.detach()

    def _kick(self) -> None:
        """Any thread: a backend slot was freed; wake this worker when clients wait here."""
        if self.waiting:
            with contextlib.suppress(OSError):  # wake-ups pending already, or closed
                self.wake_w.send(b"\0")

    def begin_stop(self, deadline: float) -> None:
        """Stop accepting and reading datagrams now; TCP sessions may finish until deadline
        (monotonic), then are reset; UDP flows relay replies until they have been idle for
        udp.STOP_IDLE (their listeners stay open for that, unpolled) or the deadline."""
        if self.stopping:
            return
        for fd in list(self.listeners):
            self.remove_listener(fd)
        for udp in self.udp_listeners.values():
            self.sel.unregister(udp.sock)
        self.udp.stopping()
        self.stopping = True
        for session in list(self.waiting):  # no slot is promised to them: closed now
            self.counters.service(session.service_id)["rejected"] += 1
            self._close_session(session, reset=True, reason="shutdown")
        self._at(deadline, self._expire_all)

    def close_backends(self, backend_ids: frozenset[int],
                       why: str = "drain_timeout") -> dict[int, int]:
        """Reset every session whose current backend is in backend_ids and end their UDP
        flows, in one pass over each; returns {id: how many closed} for the ids that had any,
        logged as `why` ("drain_timeout" or "backend_down"; a UDP flow's "backend_down" is
        "moved"). During a stop this cuts the drain short: "shutdown"."""
        reason = "shutdown" if self.stopping else why
        closed: dict[int, int] = {}
        doomed = [s for s in self.sessions if s.backend_id in backend_ids]
        for session in doomed:
            closed[session.backend_id] = closed.get(session.backend_id, 0) + 1
            self._close_session(session, reset=True, reason=reason)
        flows = "moved" if reason == "backend_down" else reason
        for bid, n in self.udp.close_backends(backend_ids, flows).items():
            closed[bid] = closed.get(bid, 0) + n
        return closed

    def counts_on(self, service: bool, ident: int) -> bool:
        """True while a session, flow or listener of this worker still counts on the id."""
        if service:
            found = self.counters.services.get(ident, {})
            if (any(lst.service_id == ident for lst in self.listeners.values())
                    or any(u.service_id == ident for u in self.udp_listeners.values())):
                return True
        else:
            found = self.counters.backends.get(ident, {})
        return bool(found.get("conns_active", 0) or found.get("flows_active", 0))

    def zero_counters(self, service: bool, ident: int) -> None:
        """Forget the counters of a service or backend id (the next use starts at 0)."""
        (self.counters.services if service else self.counters.backends).pop(ident, None)
        if service:
            self.counters.sockbuf_errors.pop(ident, None)

    def configure_log(self, on: bool, capacity: int | None) -> None:
        """Turn the connection log on or off (capacity: a new queue size, or None to keep)."""
        self.log.configure(on, capacity)

    def snapshot_sessions(self) -> list[dict[str, Any]]:
        """sessions() entries of this worker."""
        return [s.snapshot() for s in self.sessions]

    def snapshot_flows(self) -> list[dict[str, Any]]:
        """flows() entries of this worker."""
        return self.udp.snapshot()

    def close_unstarted(self) -> None:
        """Release everything of a worker whose thread never ran."""
        self._close_listeners()
        self._close_resources()

    def _close_listeners(self) -> None:
        """Forget every listener; their fds stay open: they are the caller's."""
        for fd in list(self.listeners):
            self.listeners.pop(fd).sock.detach()
        for fd in list(self.udp_listeners):
            self.udp_listeners.pop(fd).sock.detach()

    # --- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            self.error = exc
            raise  # threading.excepthook prints it; stop() raises RuntimeError
        finally:
            self._exit()

    def _loop(self) -> None:
        while not (self.stopping and not self.sessions and not self.udp.flows):
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            if self.waiting:
                due = max(0.0, self.q_retry - time.monotonic())
                timeout = due if timeout is None else min(timeout, due)
            for key, mask in self.sel.select(timeout):
                kind, obj = key.data
                if kind == WAKE:
                    self._on_wake()
                elif kind == LISTENER:
                    self._on_accept(obj)
                elif kind == UDP_LISTENER:
                    self.udp.on_listener(obj)
                elif kind == UPSTREAM:
                    if not obj.closed:
                        self.udp.on_upstream(obj)
                elif not obj.closed:
                    self._on_session_event(obj, kind, mask)
            self._run_timers()
            if self.waiting and (self.q_kick or time.monotonic() >= self.q_retry):
                self._queue_run()

    def _exit(self) -> None:
        with self.cmd_lock:
            self.running = False
        while True:  # commands queued before `running` went False still get their answer
            try:
                self.commands.get_nowait().run()
            except queue.Empty:
                break
        for session in list(self.sessions):
            self._close_session(session, reset=True, reason="shutdown")
        self.udp.close_all()
        self._close_listeners()
        self._close_resources()

    def _close_resources(self) -> None:
        self._reserve_close()
        self.pool.close()
        self.sel.close()
        self.wake_r.close()
        self.wake_w.close()

    def _on_wake(self) -> None:
        self.q_kick = True  # maybe another worker freed a slot
        try:
            while self.wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                cmd = self.commands.get_nowait()
            except queue.Empty:
                return
            cmd.run()

    # --- timers -----------------------------------------------------------------------------

    def _at(self, deadline: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (deadline, next(self.timer_seq), fn))

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, fn = heapq.heappop(self.timers)
            fn()

    def _expire_all(self) -> None:
        """The stop deadline: reset whatever is still open, end every flow."""
        for session in list(self.sessions):
            self._close_session(session, reset=True, reason="shutdown")
        self.udp.close_all()

    # --- accept and admission ---------------------------------------------------------------

    def _on_accept(self, lst: Listener) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = lst.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.counters.service(lst.service_id)["accept_errors"] += 1
                if exc.errno in FD_SHORTAGE:
                    self._pause_listeners()
                    return
                continue  # ECONNABORTED and the like: that connection is gone, try the next
            conn = self._lower(conn)  # at the ceiling: served, the rest wait in the backlog
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the C relay
            self._admit(lst.service_id, conn, (str(addr[0]), int(addr[1])))
            if lst.paused:  # the reserve was spent on it
                return

    def _log_refused(self, service_id: int, client: tuple[str, int], reason: str) -> None:
        """A client refused before it had a session: its connection-log record (log on)."""
        self.log.add(make_record("tcp", service_id, -1, client, time.time(), 0, 0, reason))

    def _pause_listeners(self) -> None:
        """Out of fds (or at the ceiling): stop polling every TCP listener of the worker for
        a moment instead of spinning (as the C relay: they draw on the same descriptors)."""
        for lst in self.listeners.values():
            if not lst.paused:
                self.sel.unregister(lst.sock)
                lst.paused = True
        self.counters.listener_pauses += 1
        if not self.resume_armed:
            self.resume_armed = True
            self._at(time.monotonic() + ACCEPT_PAUSE, self._resume_listeners)

    def _resume_listeners(self) -> None:
        """Back to accepting once the reserve is whole again (below the ceiling)."""
        self.resume_armed = False
        if self.stopping:
            return
        if not self._reserve_fill():  # still short of fds: stay paused
            self.resume_armed = True
            self._at(time.monotonic() + ACCEPT_PAUSE, self._resume_listeners)
            return
        for lst in self.listeners.values():
            if lst.paused:
                lst.paused = False
                self.sel.register(lst.sock, READ, (LISTENER, lst))

    def _reserve_fill(self) -> bool:
        """Take spare fds until RESERVE_FDS are held, each below the descriptor ceiling;
        False when that is not possible now."""
        while len(self.reserve) < RESERVE_FDS:
            try:
                fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
            if self.shared.fd_high(fd):  # fits only in the control plane's part
                os.close(fd)
                return False
            self.reserve.append(fd)
        return True

    def _reserve_close(self) -> None:
        while self.reserve:
            os.close(self.reserve.pop())

    def _lower(self, sock: socket.socket) -> socket.socket:
        """sock came out at or above the descriptor ceiling: move it below, into the room the
        reserve gives back, and pause the listeners until the reserve fits below the ceiling
        again (C: relay_fd_lower). With no reserve left it stays, for this session only."""
        if not self.shared.fd_high(sock.fileno()):
            return sock
        spent = bool(self.reserve)
        self._reserve_close()
        self._pause_listeners()
        if not spent:
            return sock
        try:
            low = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 0)
        except OSError:
            return sock
        moved = socket.socket(fileno=low)
        sock.close()
        return moved

    def _admit(self, service_id: int, conn: socket.socket, client: tuple[str, int]) -> None:
        counters = self.counters.service(service_id)
        live = self.shared.table
        svc = live.service(service_id) if live is not None else None
        if live is None or svc is None or svc.protocol != PROTO_TCP:
            counters["conns_total"] += 1
            counters["no_backend"] += 1
            if self.log.on:
                self._log_refused(service_id, client, "no_backend")
            reset_and_close(conn)
            return
        with self.shared.lock:
            svc_active = self.shared.sched.svc_active
            full = 0 < svc.max_connections <= svc_active.get(service_id, 0)
            if not full:
                svc_active[service_id] = svc_active.get(service_id, 0) + 1
        if full:
            counters["rejected"] += 1
            if self.log.on:
                self._log_refused(service_id, client, "rejected")
            reset_and_close(conn)
            return
        counters["conns_active"] += 1
        session = Session(service_id, conn, client, svc)
        self.sessions.add(session)
        self._register(session, CLIENT, READ)  # to notice a client that resets meanwhile
        timeout_ms = self.shared.accept_proxy.get(service_id, 0)
        if timeout_ms:  # no backend before the client's PROXY header is read (_pin_read)
            session.peer = client
            if not svc.proxy_from_count or live.proxy_from_match(svc, client[0]):
                session.pin_wait = True
                self._at(time.monotonic() + timeout_ms / 1000.0,
                         lambda: self._pin_timer(session))
                return
            counters["proxy_direct"] += 1  # accept_proxy_from: not listed, connects directly
        if self._queue_behind(session, svc):
            return
        self._connect_next(session)

    # --- the queue (queue_timeout) ----------------------------------------------------------

    def _queue_behind(self, session: Session, svc: ServiceRec | None) -> bool:
        """A client about to make its first pick (a new one, or one whose PROXY header was
        just read) of a service whose clients wait already queues behind them (the run after
        this batch dispatches it at once if a slot is free), or is refused when the queue is
        full; True then, False when it picks as usual (the C relay's relay_queue_behind)."""
        if (svc is None or not svc.queue_timeout_ms or self.stopping
                or not self.shared.queued.get(session.service_id)):
            return False
        if not self._queue_wait(session, svc):
            self.counters.service(session.service_id)["rejected"] += 1
            self._close_session(session, reset=True, reason="rejected")
        return True

    def _queue_wait(self, session: Session, svc: ServiceRec) -> bool:
        """Put a client whose pick found every backend full at the tail of the queue (its
        first pick, or a retry after a failed connect: redispatch, with a new deadline; its
        next pick still leaves out what failed); False when max_queue clients of the service
        wait already (all workers)."""
        with self.shared.lock:
            if self.shared.queued.get(session.service_id, 0) >= svc.max_queue:
                return False
            add_count(self.shared.queued, session.service_id, 1)
            self.shared.queued_all += 1
            ticket = self.shared.q_issued.get(session.service_id, 0)
            self.shared.q_issued[session.service_id] = ticket + 1
            session.queue_ticket = ticket
            self.q_first.setdefault(session.service_id, ticket)
        session.queued = True
        session.queued_at = time.monotonic()
        if not self.waiting:
            self.q_retry = session.queued_at + QUEUE_RETRY
        self.waiting[session] = None
        counters = self.counters.service(session.service_id)
        counters["queued_now"] += 1
        counters["queued_total"] += 1
        self._at(session.queued_at + svc.queue_timeout_ms / 1000.0,
                 lambda: self._queue_timer(session))
        self.q_kick = True  # a slot freed between the pick and now kicked nobody: look again
        return True

    def _queue_leave(self, session: Session) -> None:
        """Take a waiting client out of the queue (dispatched or closed)."""
        del self.waiting[session]
        session.queued = False
        # a client re-queued after a failed connect reports its last wait (as the C relay)
        session.queue_ms = max(0, round((time.monotonic() - session.queued_at) * 1000))
        with self.shared.lock:
            add_count(self.shared.queued, session.service_id, -1)
            self.shared.queued_all -= 1
            sid = session.service_id
            if self.q_first.get(sid) == session.queue_ticket:  # its service's oldest here
                later = [s.queue_ticket for s in self.waiting if s.service_id == sid]
                if later:
                    self.q_first[sid] = later[0]
                else:
                    del self.q_first[sid]
        counters = self.counters.service(session.service_id)
        counters["queued_now"] -= 1
        counters["queue_wait_ms"] += session.queue_ms

    def _queue_timer(self, session: Session) -> None:
        """queue_timeout: a client still waiting is reset."""
        if session.closed or not session.queued:
            return
        self.counters.service(session.service_id)["queue_timeouts"] += 1
        self._close_session(session, reset=True, reason="queue_timeout")

    def _queue_kick(self) -> None:
        """A backend slot was freed while clients wait somewhere: this worker tries its queue
        after the batch, the others are woken."""
        self.q_kick = True
        for kick in self.shared.kicks:
            if kick != self._kick:
                kick()

    def _queue_older_elsewhere(self, session: Session) -> bool:
        """Whether another worker holds an older waiting client of the session's service (the
        session is the oldest of it here): the slot is that one's, so that a worker where
        slots free does not serve its own newer clients over older ones elsewhere (the C
        relay's relay_queue_older_elsewhere)."""
        with self.shared.lock:
            return any(first.get(session.service_id, session.queue_ticket)
                       < session.queue_ticket
                       for first in self.shared.q_first if first is not self.q_first)

    def _queue_waiter_event(self, session: Session) -> None:
        """The client of a waiting session stirred: a reset, or a FIN with nothing before it,
        drops it; data stays in its socket (unwatched from now on; _queue_run polls it for a
        reset), and so does a FIN after data (as the C relay's relay_queue_fin)."""
        try:
            data = session.client.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_session(session, reset=True, reason="client_reset")
            return
        if not data:  # a FIN with nothing before it: the client gave up
            self._close_session(session, reset=False, reason="client_closed")
            return
        # data waits (maybe followed by a FIN: a half-close after a request, which keeps it
        # waiting); unwatched from now on, _queue_run polls it for a reset
        self._register(session, CLIENT, 0)

    def _queue_run(self) -> None:
        """Dispatch waiting clients to freed slots: oldest first, and a service whose oldest
        waiter found no slot keeps its younger ones waiting too (FIFO per service)."""
        self.q_kick = False
        self.q_retry = time.monotonic() + QUEUE_RETRY
        watch = [s for s in self.waiting if s.client_mask == 0]
        if watch:  # clients with data waiting: a reset shows as POLLERR / POLLHUP (their
            #          FIN, after data, keeps them waiting)
            poller = select.poll()
            by_fd = {s.client.fileno(): s for s in watch}
            for fd in by_fd:
                poller.register(fd, 0)
            for fd, ev in poller.poll(0):
                if ev & (select.POLLHUP | select.POLLERR):
                    self._close_session(by_fd[fd], reset=True, reason="client_reset")
        blocked: set[int] = set()
        for session in list(self.waiting):
            if session.closed or not session.queued or session.service_id in blocked:
                continue
            if self._queue_older_elsewhere(session):  # that one's worker takes the slot
                blocked.add(session.service_id)
                continue
            self._connect_next(session)
            if session.queued:
                blocked.add(session.service_id)

    # --- the client's PROXY protocol header (accept_proxy) ----------------------------------

    def _pin_timer(self, session: Session) -> None:
        """The header deadline: a session still waiting for it is reset."""
        if session.closed or not session.pin_wait:
            return
        self.counters.service(session.service_id)["proxy_header_timeouts"] += 1
        self._close_session(session, reset=True, reason="proxy_header_timeout")

    def _pin_reject(self, session: Session) -> None:
        """A bad header (or none): count it and reset the client; no backend was chosen."""
        self.counters.service(session.service_id)["proxy_header_errors"] += 1
        self._close_session(session, reset=True, reason="proxy_header")

    def _pin_read(self, session: Session) -> None:
        """The client of a session still owing its header is readable: read as much of the
        header as is there, never a byte past it; once it is whole, pick a backend."""
        sock = session.client
        try:
            if session.pin_result is None:
                data = sock.recv(PIN_PEEK, socket.MSG_PEEK)
                if not data:
                    if session.pin_buf:  # cut short by the client's FIN
                        self._pin_reject(session)
                    else:  # a FIN before any byte: a plain TCP check of the balancer in front
                        self._close_session(session, reset=False, reason="client_closed")
                    return
                try:
                    got = proxyproto.parse(session.pin_buf + data)
                except ProxyHeaderError:
                    self._pin_reject(session)
                    return
                if got is None:  # every byte so far is the header's: take them
                    session.pin_buf += sock.recv(len(data))
                    return
                session.pin_result = got
                session.pin_skip = got.length - len(session.pin_buf)
                if got.src is not None:
                    # its client from now on, already while the TLVs are skipped (a timeout or
                    # a FIN there names it), as the C relay rewrites the key on the parse
                    session.client_addr = got.src
                    session.local_addr = got.dst
            while session.pin_skip:
                chunk = sock.recv(min(session.pin_skip, 65536))
                if not chunk:
                    self._pin_reject(session)  # FIN inside a long version 2 header
                    return
                session.pin_skip -= len(chunk)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_session(session, reset=True, reason="client_reset")
            return
        session.pin_wait = False
        session.pin_buf = b""
        live = self.shared.table
        if self._queue_behind(session, live.service(session.service_id) if live else None):
            return
        self._connect_next(session)

    # --- connecting -------------------------------------------------------------------------

    def _connect_next(self, session: Session) -> None:
        """Pick a backend not tried yet from the live table and start connecting to it.

        Like the C core, every pick (retries too) reads the table live now: tried backends are
        remembered by id, and when the ring of a hashing scheduler changed since the last pick
        the walk restarts at this table's home slot of the client. The pick is told the
        client's family, so a transparent backend of the other family is no candidate."""
        counters = self.counters.service(session.service_id)
        first = not session.tried_ids
        live = self.shared.table
        svc = live.service(session.service_id) if live is not None else None
        choice = None
        host = session.client_addr[0]
        if live is not None and svc is not None and svc.protocol == PROTO_TCP:
            first_be = svc.backend_first
            tried = [i for i in range(first_be, first_be + svc.backend_count)
                     if live.backend(i).backend_id in session.tried_ids]
            h = live.flow_hash(svc, *session.client_addr)
            slot = session.slot
            if (tried and session.pick_gen != live.generation and svc.ring_size
                    and svc.scheduler in (SCHED_SRCHASH, SCHED_MAGLEV)):
                slot = (h % svc.ring_size + svc.ring_size - 1) % svc.ring_size
            with self.shared.lock:
                choice = pick(live.table, svc, self.shared.sched, self.sched, h, tried, slot,
                              client_family(host))
                if choice is not None:
                    bid = live.backend(choice[1]).backend_id
                    add_count(self.shared.sched.active, bid, 1)
        if live is None or svc is None or choice is None:
            full = (svc is not None and live is not None
                    and live.any_weighted(svc, host, session.tried_ids))
            if full and svc is not None:
                # every weighted backend not tried yet is at its max_connections: a waiting
                # client keeps its place; a new one waits when the service has a queue with
                # room, and so does one whose connect failed (redispatch)
                if session.queued:
                    return
                if (svc.queue_timeout_ms and not self.stopping
                        and self._queue_wait(session, svc)):
                    return
            if full and first:
                counters["rejected"] += 1
                reason = "rejected"
            else:
                counters["conns_total"] += first
                counters["no_backend"] += 1
                reason = "connect_failed" if session.failures else "no_backend"
            self._close_session(session, reset=True, reason=reason)
            return
        if session.queued:  # a waiting client found its slot
            self._queue_leave(session)
        counters["conns_total"] += first
        session.slot, index = choice
        session.pick_gen = live.generation
        session.tried_ids.append(bid)
        session.backend_id = bid
        session.attempt += 1
        self.counters.backend(bid)["conns_active"] += 1
        host, port = live.targets[index]
        if client_unbindable(live.sources[index], session.client_addr[0], host):
            counters["accept_errors"] += 1  # the client's doing, not the backend's failure
            self._close_session(session, reset=True, reason="error")
            return
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = self._lower(socket.socket(family, socket.SOCK_STREAM))
        except OSError:
            counters["accept_errors"] += 1  # out of fds here: not the backend's fault
            self._close_session(session, reset=True, reason="error")
            return
        sock.setblocking(False)
        source = live.sources[index]
        if source is not None:
            try:
                bind_source(sock, source, session.client_addr[0])
            except OSError:  # the backend's failure, whatever the errno: count it, retry
                sock.close()
                self._connect_failed(session)
                return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cc = self.shared.congestion.get(session.service_id)
        if cc is not None:  # before connect(), as the C relay; refused: the system default
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
        sizes = self.shared.sockbuf.get(session.service_id)
        if sizes is not None:  # before the SYN fixes the window scale, as the C relay
            self._socket_buffers(session.service_id, sock, sizes)
        session.backend = sock
        session.syn_data = 0
        session.pp = self.shared.proxy.get(session.service_id, 0)
        session.pp_sent = 0
        session.pp_pending = session.pp != 0
        err = -1
        if session.service_id in self.shared.fast_open:
            err = self._fast_open(session, sock, (host, port))
        if err < 0:  # no fast open, or nothing waiting for one
            err = sock.connect_ex((host, port))
        if err == 0:
            self._connected(session)
        elif err in (errno.EINPROGRESS, errno.EAGAIN):
            self._register(session, BACKEND, WRITE)
            attempt = session.attempt
            deadline = time.monotonic() + session.service.connect_timeout_ms / 1000.0
            self._at(deadline, lambda: self._connect_timer(session, attempt))
        else:
            self._connect_failed(session)

    def _socket_buffers(self, service_id: int, sock: socket.socket,
                        sizes: tuple[int, int]) -> None:
        """SO_SNDBUF / SO_RCVBUF (the FORCE kinds when set_socket_buffers found them usable)
        on a fresh backend socket; a refusal is counted and the session keeps the kernel's
        buffers (the C relay's relay_sockbuf)."""
        force = self.shared.sockbuf_force
        for size, plain, forced in ((sizes[0], socket.SO_SNDBUF, SO_SNDBUFFORCE),
                                    (sizes[1], socket.SO_RCVBUF, SO_RCVBUFFORCE)):
            if not size:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, forced if force else plain, size)
            except OSError:
                errors = self.counters.sockbuf_errors
                errors[service_id] = errors.get(service_id, 0) + 1

    def _fast_open(self, session: Session, sock: socket.socket,
                   address: tuple[str, int]) -> int:
        """Open sock towards address with the client's waiting bytes in the SYN (as the C
        relay's relay_fast_open): peek them, sendto(MSG_FASTOPEN); session.syn_data gets what
        the SYN took (0 without a cookie: a plain SYN that asks for one). The bytes stay in
        the client socket until the attempt connects (_connected drops them). Returns
        EINPROGRESS, another errno (failed like connect), or -1: nothing waits (or the kernel
        refuses fast open), connect() as usual. A PROXY protocol header leads the SYN's data
        (session.pp_sent counts its share), even when no client byte waits."""
        try:
            header = self._pp_header(session) if session.pp else b""
        except OSError:
            return -1  # _pp_send meets the failure again once connected and reports it
        try:
            data = session.client.recv(COPY_PEEK, socket.MSG_PEEK)
        except OSError:
            data = b""  # nothing yet, or a reset the client's own event reports
        if not header and not data:
            return -1  # nothing to send early (a FIN first counts as nothing)
        try:
            taken = sock.sendto(header + data, socket.MSG_FASTOPEN, address)
            session.pp_sent = min(taken, len(header))
            session.pp_pending = taken < len(header)
            session.syn_data = taken - session.pp_sent
        except (BlockingIOError, InterruptedError):
            return errno.EINPROGRESS  # no cookie yet: the SYN took nothing
        except OSError as exc:
            if exc.errno == errno.EOPNOTSUPP:
                return -1  # net.ipv4.tcp_fastopen lacks the client bit
            return exc.errno or errno.EIO
        return errno.EINPROGRESS

    @staticmethod
    def _pp_header(session: Session) -> bytes:
        """The PROXY protocol header of session (version session.pp): the client's address
        and the one it connected to (the C relay's relay_pp_header). OSError from
        getsockname()."""
        local = session.local_addr or session.client.getsockname()
        return proxyproto.build(session.pp, session.client_addr[:2], (local[0], local[1]))

    def _pp_send(self, session: Session) -> bool:
        """Send what the connected attempt still owes its backend of the PROXY header, before
        any client byte (the C relay's relay_pp_send). False when the session was closed: the
        backend reset, or a short write (a local failure on a connection this fresh)."""
        session.pp_pending = False
        assert session.backend is not None
        try:
            header = self._pp_header(session)[session.pp_sent:]
        except OSError:
            header = b""  # getsockname() failed: a local failure, as in the C relay
        sent = -1
        if header:
            try:
                sent = session.backend.send(header, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                if exc.errno not in LOCAL_ERRNOS:
                    self._close_session(session, reset=True, reason="backend_reset")
                    return False
        if header and sent == len(header):
            return True
        self.counters.service(session.service_id)["accept_errors"] += 1
        self._close_session(session, reset=True, reason="error")
        return False

    def _connect_timer(self, session: Session, attempt: int) -> None:
        if not session.closed and session.state is State.CONNECTING and session.attempt == attempt:
            self._connect_failed(session)

    def _connect_failed(self, session: Session) -> None:
        """Count the failure on the backend, then retry another one or give up."""
        bid = session.backend_id
        self.counters.backend(bid)["connect_failures"] += 1
        self.counters.backend(bid)["conns_active"] -= 1
        with self.shared.lock:
            add_count(self.shared.sched.active, bid, -1)
        if self.shared.queued.get(session.service_id):  # its own service's waiters only
            self._queue_kick()
        if session.backend is not None:
            self._register(session, BACKEND, 0)
            session.backend.close()
            session.backend = None
        session.backend_id = -1
        session.failures += 1
        if session.failures > session.service.retries:
            self.counters.service(session.service_id)["no_backend"] += 1
            self._close_session(session, reset=True, reason="connect_failed")
            return
        self._connect_next(session)

    def _connected(self, session: Session) -> None:
        self.counters.backend(session.backend_id)["conns_total"] += 1
        if session.pp_pending and not self._pp_send(session):
            return
        if session.syn_data:
            # the SYN carried them and the backend socket owns them now: drop them from the
            # client socket, where they were only peeked (they are all there)
            k, session.syn_data = session.syn_data, 0
            try:
                dropped = len(session.client.recv(k, socket.MSG_TRUNC))
            except OSError:
                self._close_session(session, reset=True, reason="client_reset")
                return
            if dropped != k:
                self.counters.service(session.service_id)["accept_errors"] += 1
                self._close_session(session, reset=True, reason="error")
                return
            session.bytes_to_backend += k
            self.counters.service(session.service_id)["bytes_to_backend"] += k
            self.counters.backend(session.backend_id)["bytes_to_backend"] += k
        session.connected(self.pool)
        idle = session.service.idle_timeout_ms / 1000.0
        if idle > 0:
            self._at(session.last_active + idle, lambda: self._idle_timer(session, idle))
        self._pump(session)

    def _idle_timer(self, session: Session, idle: float) -> None:
        if session.closed:
            return
        due = session.last_active + idle
        if time.monotonic() >= due:
            self._close_session(session, reset=False, reason="idle_timeout")
        else:
            self._at(due, lambda: self._idle_timer(session, idle))

    # --- relaying ---------------------------------------------------------------------------

    def _on_session_event(self, session: Session, kind: str, mask: int) -> None:
        if session.state is State.CONNECTING:
            if kind == CLIENT and session.queued:
                self._queue_waiter_event(session)
                return
            if kind == CLIENT and session.pin_wait:
                self._pin_read(session)
                return
            if kind == CLIENT:
                self._client_while_connecting(session)
                return
            if session.backend is None:
                return
            err = session.backend.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0:
                self._connected(session)
            else:
                self._connect_failed(session)
            return
        self._pump(session)

    def _client_while_connecting(self, session: Session) -> None:
        """The client stirred before its backend is up. A reset ends the session at once (no
        slot held until the connect deadline); data or a FIN wait in the socket for the pump,
        and the client is not watched again until then (the selector is level-triggered)."""
        try:
            session.client.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_session(session, reset=True, reason="client_reset")
            return
        self._register(session, CLIENT, 0)

    def _pump(self, session: Session) -> None:
        fallbacks_before = session.fallbacks
        outcome, up, down = session.pump()
        svc = self.counters.service(session.service_id)
        be = self.counters.backend(session.backend_id)
        svc["bytes_to_backend"] += up
        svc["bytes_to_client"] += down
        be["bytes_to_backend"] += up
        be["bytes_to_client"] += down
        self.counters.splice_fallbacks += session.fallbacks - fallbacks_before
        if outcome is Outcome.FINISHED:
            self._close_session(session, reset=False, reason=session.fin_first)
        elif outcome is Outcome.RESET:
            self._close_session(session, reset=True, reason=session.reset_by)
        elif outcome is Outcome.LOCAL_FAILURE:
            svc["accept_errors"] += 1
            self._close_session(session, reset=True, reason="error")
        else:
            client_r, client_w, backend_r, backend_w = session.interest()
            self._register(session, CLIENT, (READ if client_r else 0) | (WRITE if client_w else 0))
            self._register(session, BACKEND,
                           (READ if backend_r else 0) | (WRITE if backend_w else 0))

    def _register(self, session: Session, side: str, mask: int) -> None:
        """Make the selector wait for exactly mask (0: nothing) on one side of a session."""
        sock = session.client if side == CLIENT else session.backend
        old = session.client_mask if side == CLIENT else session.backend_mask
        if sock is None or mask == old:
            return
        if old == 0:
            self.sel.register(sock, mask, (side, session))
        elif mask == 0:
            self.sel.unregister(sock)
        else:
            self.sel.modify(sock, mask, (side, session))
        if side == CLIENT:
            session.client_mask = mask
        else:
            session.backend_mask = mask

    def _close_session(self, session: Session, reset: bool, reason: str) -> None:
        """End a session (every close goes through here), recording why when the log is on."""
        if session.closed:
            return
        if session.queued:
            self._queue_leave(session)
        if self.log.on:
            backend_id = session.backend_id
            if backend_id < 0 and session.tried_ids:
                backend_id = session.tried_ids[-1]  # its last attempt failed: name that one
            self.log.add(make_record("tcp", session.service_id, backend_id, session.client_addr,
                                     session.started, session.bytes_to_backend,
                                     session.bytes_to_client, reason, session.peer,
                                     session.queue_ms / 1000.0))
        self._register(session, CLIENT, 0)
        self._register(session, BACKEND, 0)
        session.close(reset)
        self.sessions.discard(session)
        with self.shared.lock:
            add_count(self.shared.sched.svc_active, session.service_id, -1)
            if session.backend_id >= 0:
                add_count(self.shared.sched.active, session.backend_id, -1)
        self.counters.service(session.service_id)["conns_active"] -= 1
        if session.backend_id >= 0:
            self.counters.backend(session.backend_id)["conns_active"] -= 1
            if self.shared.queued.get(session.service_id):  # a slot freed for its waiters
                self._queue_kick()

