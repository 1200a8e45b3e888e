"""TCP session relay: one client socket, one backend socket, and a byte pump per direction.

A direction moves bytes from its source socket to its destination socket through a pipe with
splice(2): socket -> pipe (as much as the pipe holds), then pipe -> socket until the pipe is empty
or the destination would block. It reads again only when its pipe is empty, so a splice-in that
returns EAGAIN always means "the source has nothing" (never "the pipe is full"). A direction whose
splice raises EINVAL (a socket type splice refuses) falls back to recv/send through a user-space
buffer, counted in `fallbacks`; nothing else changes.

End of stream and resets:
- the source says EOF (a FIN) and everything read has been written: the destination gets
  shutdown(SHUT_WR), i.e. the FIN is passed on; the session is "half_closed";
- both directions passed their FIN on: the session is finished and both sockets are closed;
- the source raises ECONNRESET, or the destination raises EPIPE/ECONNRESET/ENOTCONN: the session
  is reset: the other socket is closed with SO_LINGER 0, so the peer sees a reset too;
- no fd is left for a pipe: the session is reset on both sides (a local failure, which the
  worker counts in accept_errors like the C core).
For the connection log the session remembers whose FIN went through first (`fin_first`) and,
after a reset, which side failed (`reset_by`: a failed read blames the source, a failed write
or FIN the destination), as the C relay does.

The pump does no polling and keeps no timers: the worker calls `Session.pump()` when one of the
two sockets is ready and asks `interest()` which events to wait for next.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import socket
import struct
import time

from l4lb import proxyproto
from l4lb.refdp.pipes import Pipe, PipePool
from l4lb.table.blob import ServiceRec

SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
PUMP_BUDGET = 4 * 1024 * 1024  # bytes a direction moves per pump() before others get a turn
COPY_CHUNK = 256 * 1024  # read size of the recv/send fallback
RESET_ERRNOS = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT,
                errno.EHOSTUNREACH, errno.ENETUNREACH)
FD_SHORTAGE = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class Outcome(enum.Enum):
    """What a pump found, besides the bytes it moved."""

    OK = "ok"  # nothing special; wait for the next events
    FINISHED = "finished"  # both FINs passed on: close both sockets normally
    RESET = "reset"  # one side reset: reset the other side and close
    LOCAL_FAILURE = "local_failure"  # no fd for a pipe: reset both sides, count accept_errors


class State(enum.Enum):
    """The session states reported by sessions()."""

    CONNECTING = "connecting"
    ESTABLISHED = "established"
    HALF_CLOSED = "half_closed"


def reset_and_close(sock: socket.socket) -> None:
    """Close sock so that the peer sees a reset (RST) instead of a FIN."""
    with contextlib.suppress(OSError):  # already dead: close() is all there is to do
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    sock.close()


class _Reset(Exception):
    """Internal: one side of the session was reset; `sock` is the socket that failed."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock


class _LocalFailure(Exception):
    """Internal: this process ran out of something (fds for a pipe); not the peers' fault."""


class Direction:
    """Bytes from one socket to the other (client->backend or backend->client)."""

    def __init__(self, src: socket.socket, dst: socket.socket, pool: PipePool) -> None:
        self.src = src  # socket read from
        self.dst = dst  # socket written to
        self.pool = pool  # the worker's pipe pool
        self.pipe: Pipe | None = None  # held only while pending > 0
        self.pending = 0  # bytes read from src, not yet written to dst (pipe or buffer)
        self.buffer = b""  # copy mode only: bytes read, not yet sent
        self.copy_mode = False  # splice refused (EINVAL): use recv/send
        self.fallbacks = 0  # 1 once this direction fell back to copying
        self.eof = False  # src sent its FIN
        self.shut = False  # that FIN was passed on to dst
        self.written = 0  # bytes written to dst so far (kept even when a pump raises)

    @property
    def done(self) -> bool:
        """The FIN went through; this direction will never move data again."""
        return self.shut

    def wants_read(self) -> bool:
        """Wait for src to be readable."""
        return not self.eof and self.pending == 0

    def wants_write(self) -> bool:
        """Wait for dst to be writable."""
        return self.pending > 0

    def pump(self) -> int:
        """Move what can be moved now; returns bytes written to dst. Raises _Reset."""
        moved = 0
        while moved < PUMP_BUDGET:
            if self.pending > 0:
                n = self._write()
                if n == 0:
                    break  # dst is full; wait for it to be writable
                moved += n
                continue
            if self.eof:
                if not self.shut:
                    self._pass_fin()
                break
            if self._read() == 0 and not self.eof:
                break  # src has nothing more now
        return moved

    def _read(self) -> int:
        """Fill the (empty) pipe or buffer from src; sets eof on a FIN. Returns bytes read."""
        if not self.copy_mode:
            try:
                return self._splice_in()
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.copy_mode = True
                self.fallbacks = 1
        try:
            data = self.src.recv(COPY_CHUNK)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            if exc.errno in RESET_ERRNOS:
                raise _Reset(self.src) from exc
            raise
        if not data:
            self.eof = True
            return 0
        self.buffer = data
        self.pending = len(data)
        return len(data)

    def _splice_in(self) -> int:
        pipe = self.pipe
        if pipe is None:
            try:
                pipe = self.pipe = self.pool.take()
            except OSError as exc:
                if exc.errno in FD_SHORTAGE:
                    raise _LocalFailure from exc
                raise
        try:
            n = os.splice(self.src.fileno(), pipe.w, pipe.capacity, flags=SPLICE_FLAGS)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._release_pipe()
            if exc.errno in RESET_ERRNOS:
                raise _Reset(self.src) from exc
            raise
        else:
            if n == 0:
                self.eof = True
        if n == 0:
            self._release_pipe()
        self.pending = n
        return n

    def _write(self) -> int:
        """Write pending bytes to dst; returns bytes written (0: dst would block)."""
        try:
            if self.copy_mode:
                n = self.dst.send(self.buffer)
                self.buffer = self.buffer[n:]
            else:
                assert self.pipe is not None
                n = os.splice(self.pipe.r, self.dst.fileno(), self.pending, flags=SPLICE_FLAGS)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            if exc.errno in RESET_ERRNOS:
                raise _Reset(self.dst) from exc
            raise
        self.pending -= n
        self.written += n
        if self.pending == 0:
            self._release_pipe()
        return n

    def _pass_fin(self) -> None:
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise _Reset(self.dst) from exc
        self.shut = True

    def _release_pipe(self) -> None:
        if self.pipe is not None:
            self.pool.give_back(self.pipe, empty=self.pending == 0)
            self.pipe = None

    def close(self) -> None:
        """Give the pipe back (closed if it still holds data)."""
        self._release_pipe()
        self.buffer = b""


class Session:
    """One proxied TCP connection: the client side, and the backend side once one is chosen."""

    def __init__(self, service_id: int, client: socket.socket, client_addr: tuple[str, int],
                 service: ServiceRec) -> None:
        self.service_id = service_id  # the listener's service
        self.client = client  # accepted socket, nonblocking
        self.client_addr = client_addr  # (host, port) of the client
        self.service = service  # its record at accept: retries and timeouts come from here
        self.started = time.time()  # unix time of accept
        self.state = State.CONNECTING
        self.backend: socket.socket | None = None  # connecting or connected backend socket
        self.backend_id = -1  # stable id of the current attempt's backend, -1 while none
        self.tried_ids: list[int] = []  # backend ids picked so far (excluded from retries)
        self.failures = 0  # connect attempts that failed
        self.slot = 0  # ring slot of the last pick (hashing schedulers)
        self.pick_gen = 0  # generation of the table of the last pick
        self.attempt = 0  # connect attempts started; a connect timer is valid for one attempt
        self.syn_data = 0  # bytes of the client's queue the current attempt's SYN carried (fast
        #                    open); still in the client socket until the attempt connects
        self.pp = 0  # PROXY protocol version of the current attempt, 0 none
        self.pp_sent = 0  # bytes of its header the SYN carried (fast open)
        self.pp_pending = False  # the current attempt still owes its backend the header
        self.peer: tuple[str, int] | None = None  # accept_proxy: the connection's real peer
        #                                          (the balancer in front); None otherwise
        self.local_addr: tuple[str, int] | None = None  # the address the client connected to,
        #                     as its PROXY header named it (None: the socket's own)
        self.pin_wait = False  # accept_proxy: its header is still due (no backend yet)
        self.pin_buf = b""  # header bytes read so far (each one known to be the header's)
        self.pin_skip = 0  # header bytes (version 2 TLVs) still to discard once parsed
        self.pin_result: proxyproto.ParsedHeader | None = None  # the header, once parsed
        self.bytes_to_backend = 0  # bytes written to the backend
        self.bytes_to_client = 0  # bytes written to the client
        self.last_active = time.monotonic()  # last time a byte or FIN moved
        self.to_backend: Direction | None = None  # set once connected
        self.to_client: Direction | None = None  # set once connected
        self.fin_first = ""  # "client_closed" / "backend_closed": whose FIN went through first
        self.reset_by = ""  # after a RESET outcome: "client_reset" or "backend_reset"
        self.client_mask = 0  # selector events the client socket is registered for
        self.backend_mask = 0  # selector events the backend socket is registered for
        self.queued = False  # waiting in its worker's queue for a backend slot (queue_timeout)
        self.queued_at = 0.0  # monotonic time it began to wait
        self.queue_ms = 0  # ms it waited, set when it left the queue; 0 = never waited
        self.queue_ticket = 0  # while it waits: its place in its service's order across
        #                        workers (Shared.q_issued)
        self.closed = False

    def connected(self, pool: PipePool) -> None:
        """The backend accepted: start relaying."""
        assert self.backend is not None
        self.state = State.ESTABLISHED
        self.to_backend = Direction(self.client, self.backend, pool)
        self.to_client = Direction(self.backend, self.client, pool)
        self.last_active = time.monotonic()

    def pump(self) -> tuple[Outcome, int, int]:
        """Relay both ways; returns (outcome, bytes to backend, bytes to client) of this call."""
        up, down = self.to_backend, self.to_client
        assert up is not None and down is not None
        up_before, down_before = up.written, down.written
        was_eof = up.eof or down.eof
        try:
            up.pump()
            down.pump()
        except _Reset as exc:
            self.reset_by = "client_reset" if exc.sock is self.client else "backend_reset"
            outcome = Outcome.RESET
        except _LocalFailure:
            outcome = Outcome.LOCAL_FAILURE
        else:
            outcome = Outcome.OK
        # what moved before a reset counts too
        moved_up, moved_down = up.written - up_before, down.written - down_before
        self.bytes_to_backend += moved_up
        self.bytes_to_client += moved_down
        if outcome is not Outcome.OK:
            return outcome, moved_up, moved_down
        if moved_up or moved_down or (up.eof or down.eof) != was_eof:
            self.last_active = time.monotonic()
        if not self.fin_first and (up.done or down.done):
            self.fin_first = "client_closed" if up.done else "backend_closed"
        if up.done and down.done:
            return Outcome.FINISHED, moved_up, moved_down
        if up.eof or down.eof:
            self.state = State.HALF_CLOSED
        return Outcome.OK, moved_up, moved_down

    def interest(self) -> tuple[bool, bool, bool, bool]:
        """(client read, client write, backend read, backend write) to wait for."""
        up, down = self.to_backend, self.to_client
        assert up is not None and down is not None
        return up.wants_read(), down.wants_write(), down.wants_read(), up.wants_write()

    @property
    def fallbacks(self) -> int:
        """Directions that fell back from splice to recv/send."""
        return sum(d.fallbacks for d in (self.to_backend, self.to_client) if d is not None)

    def close(self, reset: bool) -> None:
        """Close both sockets (with RST when reset) and release the pipes."""
        if self.closed:
            return
        self.closed = True
        for direction in (self.to_backend, self.to_client):
            if direction is not None:
                direction.close()
        for sock in (self.client, self.backend):
            if sock is None:
                continue
            if reset:
                reset_and_close(sock)
            else:
                sock.close()

    def snapshot(self) -> dict[str, object]:
        """The sessions() entry of this session."""
        return {
            "service_id": self.service_id,
            "backend_id": self.backend_id,
            "client": self.client_addr,
            "started": self.started,
            "bytes_to_backend": self.bytes_to_backend,
            "bytes_to_client": self.bytes_to_client,
            "state": self.state.value,
            "peer": self.peer,
        }
