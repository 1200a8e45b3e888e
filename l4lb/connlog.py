"""The connection log: one JSON line per closed session, written by a thread off the event loop.

Design. `format_record()` is pure: it checks one closed-session record and turns it into one
line of JSON (keys in a fixed order, ASCII only, so every line is valid UTF-8 whatever a name
contains). `ConnLogWriter` owns the file. `write()` formats on the caller's thread (bad input
raises there, where it can be fixed) and appends the line to a bounded in-memory queue under a
lock; it never touches the file, never waits, and counts a line it cannot queue as dropped.
A writer thread takes every queued line at once and appends them with one write() and one
flush(), so a burst of closes costs one system call. `reopen()` (for logrotate: rename the file,
then signal the daemon) makes the thread close and reopen the path before its next write; it
returns a future the thread resolves with the outcome (None, or the error text), and the last
outcome stays readable as `last_reopen_error`, so "reopened" is never claimed for a failure.
A failed open or write is logged (at most once a minute) and its lines are counted as failed;
the writer keeps going and tries to open the file again before each later batch.

A batch is all or nothing on a regular file: the thread notes the file's size before the write
and, when a write fails part way (ENOSPC after 14 lines and a fragment), truncates the file back
to that size, so every line in the file is whole and `failed` counts exactly the lines that are
not there. Where that is impossible (a FIFO, a character device, a failed ftruncate) the lines
written whole are counted as written, the rest as failed, and the next write starts with a
newline, so the fragment stands alone on its line and the next line is valid JSON.

Input record (a dict: the daemon maps the data plane's `closed_sessions()` records to this):
    client            str    "host:port" ("[v6]:port" for IPv6)
    peer              str | None  (optional) accept_proxy: the connection's real peer (the
                             balancer in front), "host:port"; absent or None on other services
    service           str    service name
    protocol          str    "tcp" (a session) or "udp" (a flow)
    backend           str | None  backend address as written (None: no backend was chosen)
    started           float  unix time the client connection was accepted (UDP: first datagram)
    duration          float  seconds the session or flow was open (>= 0)
    bytes_to_backend  int    bytes relayed client -> backend
    bytes_to_client   int    bytes relayed backend -> client
    reason            str    why it closed (see TCP_REASONS, UDP_REASONS; other short words are
                             allowed, so a newer data plane's reason is written, not dropped)
    queued            float  (optional) seconds the client waited in the service's queue for a
                             backend slot (queue_timeout), part of duration; absent or 0: never
Output line:
    {"client":..,"service":..,"protocol":"tcp","backend":..,"start":"2026-01-02T03:04:05.678Z",
     "duration":1.234,"bytes_to_backend":..,"bytes_to_client":..,"reason":..}
    with "peer":.. after "client" for a session of an accept_proxy service, and "queued":..
    after "duration" for a client that waited in a queue (only there, so the lines of other
    services and sessions stay as they were).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any, BinaryIO

log = logging.getLogger("l4lb")

# The close reasons the data plane reports (docs/connection-log.md explains each).
TCP_REASONS = ("client_closed", "backend_closed", "client_reset", "backend_reset",
               "connect_failed", "no_backend", "rejected", "idle_timeout", "shutdown",
               "drain_timeout", "backend_down", "error", "proxy_header", "proxy_header_timeout",
               "queue_timeout")
UDP_REASONS = ("idle_timeout", "responses", "refused", "moved", "listener_gone", "shutdown",
               "drain_timeout", "error")
CLOSE_REASONS = tuple(dict.fromkeys(TCP_REASONS + UDP_REASONS))  # both, without repeats
PROTOCOLS = ("tcp", "udp")
MAX_REASON = 64  # characters of a close reason
DEFAULT_QUEUE = 65536  # lines held in memory before new ones are dropped
_ERROR_LOG_EVERY = 60.0  # seconds between two log lines about write errors


class RecordError(ValueError):
    """A closed-session record with a missing or ill-typed field."""


# The last second rfc3339() formatted and its text: closes come in bursts within one second,
# and strftime is a fifth of the cost of a line. One tuple, so a reader in another thread
# never pairs a second with another second's text.
_last_second: tuple[int, str] = (-1, "")
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # ensure_ascii (the default): ASCII lines


def rfc3339(ts: float) -> str:
    """Unix time -> '2026-01-02T03:04:05.678Z' (UTC, milliseconds)."""
    global _last_second
    if not math.isfinite(ts):
        raise RecordError(f"started: not a finite time: {ts!r}")
    second, ms = divmod(round(ts * 1000), 1000)
    cached = _last_second
    if cached[0] != second:
        cached = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
        _last_second = cached
    return f"{cached[1]}.{ms:03d}Z"


def format_record(record: Mapping[str, Any]) -> str:
    """One closed session as one JSON line (with the trailing newline). Raises RecordError."""
    client = _text(record, "client")
    service = _text(record, "service")
    protocol = _text(record, "protocol")
    if protocol not in PROTOCOLS:
        raise RecordError(f"protocol: expected tcp or udp, got {protocol!r}")
    backend = record.get("backend")
    if backend is not None and not isinstance(backend, str):
        raise RecordError("backend: expected a string or null")
    started = _number(record, "started")
    duration = _number(record, "duration")
    if duration < 0:
        raise RecordError(f"duration: negative ({duration})")
    to_backend = _count(record, "bytes_to_backend")
    to_client = _count(record, "bytes_to_client")
    reason = _text(record, "reason")
    if len(reason) > MAX_REASON:
        raise RecordError(f"reason: longer than {MAX_REASON} characters")
    peer = record.get("peer")
    if peer is not None and not isinstance(peer, str):
        raise RecordError("peer: expected a string or null")
    queued = _number(record, "queued") if record.get("queued") is not None else 0.0
    if queued < 0:
        raise RecordError(f"queued: negative ({queued})")
    line = {"client": client, **({"peer": peer} if peer is not None else {}),
            "service": service, "protocol": protocol, "backend": backend,
            "start": rfc3339(started), "duration": round(duration, 6),
            **({"queued": round(queued, 3)} if queued > 0 else {}),
            "bytes_to_backend": to_backend, "bytes_to_client": to_client, "reason": reason}
    return _ENCODER.encode(line) + "\n"


def _text(record: Mapping[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise RecordError(f"{key}: expected a string, got {type(value).__name__}")
    return value


def _number(record: Mapping[str, Any], key: str) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RecordError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def _count(record: Mapping[str, Any], key: str) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RecordError(f"{key}: expected a non-negative integer, got {value!r}")
    return value


class ConnLogWriter:
    """Appends connection log lines to `path` from a thread; start() before write()."""

    def __init__(self, path: str, max_queue: int = DEFAULT_QUEUE) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self.path = path  # the log file, opened in append mode (created 0640)
        self.max_queue = max_queue  # lines held before new ones are dropped
        self._cond = threading.Condition()  # guards everything below; wakes the thread
        self._pending: deque[str] = deque()  # formatted lines not yet written
        self._reopen = False  # reopen() was called and the thread has not reopened yet
        self._stopping = False  # close() was called
        self._thread: threading.Thread | None = None  # the writer thread while running
        self._busy = False  # the thread holds a batch taken from _pending
        self._written = 0  # lines written (counters: see stats())
        self._dropped = 0  # lines refused because the queue was full
        self._failed = 0  # lines lost to open or write errors
        self._reopened = 0  # completed reopens
        self._reopen_waiters: list[Future[str | None]] = []  # futures of requested reopens
        self._reopen_error: str | None = None  # why the last reopen failed; None: it worked
        self._torn = False  # the stream may end in a fragment: start the next write on a new line
        self._last_error_log = -_ERROR_LOG_EVERY  # monotonic time of the last error log

    def start(self) -> None:
        """Open the file (raises OSError if that fails) and start the writer thread."""
        if self._thread is not None:
            return
        first = self._open()  # fail early and loudly on a bad path
        self._stopping = False
        self._thread = threading.Thread(target=self._run, args=(first,),
                                        name="l4lb-connlog", daemon=True)
        self._thread.start()

    def write(self, record: Mapping[str, Any]) -> bool:
        """Queue one closed session; False if it was dropped (queue full or not running).

        Never blocks on I/O. Raises RecordError for a malformed record.
        """
        line = format_record(record)
        with self._cond:
            if self._thread is None or self._stopping or len(self._pending) >= self.max_queue:
                self._dropped += 1
                return False
            self._pending.append(line)
            if len(self._pending) == 1:
                self._cond.notify_all()
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued line has been handed to the file; False on timeout.

        Blocks the caller: for shutdown and tests, not for the event loop's hot path.
        """
        with self._cond:
            return self._cond.wait_for(
                lambda: self._thread is None or (not self._pending and not self._busy
                                                 and not self._reopen), timeout)

    def reopen(self) -> Future[str | None]:
        """Close and reopen the file before the next write (after logrotate renamed it).

        Never blocks. The returned future is resolved by the writer thread once it tried:
        with None when the file is open again, or with the error text (`cannot reopen PATH:
        Is a directory`) when it failed (also when the writer is not running). An event loop
        awaits it with `asyncio.wrap_future()` and a timeout; `last_reopen_error` keeps the
        outcome afterwards.
        """
        done: Future[str | None] = Future()
        with self._cond:
            if self._thread is None or self._stopping:
                done.set_result(f"cannot reopen {self.path}: the writer is not running")
                return done
            self._reopen_waiters.append(done)
            self._reopen = True
            self._cond.notify_all()
        return done

    @property
    def last_reopen_error(self) -> str | None:
        """Why the last reopen failed (`cannot reopen PATH: Is a directory`), or None: no
        reopen was asked for, the last one worked, or a later batch opened the path again.
        Set before flush() returns, so `reopen(); flush(); last_reopen_error` reads the outcome.
        """
        with self._cond:
            return self._reopen_error

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, stop the thread, close the file. Idempotent."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread.join(timeout)
        if thread.is_alive():
            log.warning("connlog: the writer thread did not finish within %.1f s", timeout)
        with self._cond:
            self._thread = None
            self._cond.notify_all()

    def stats(self) -> dict[str, int]:
        """Counters: written, dropped, failed, queued, reopened (for metrics)."""
        with self._cond:
            return {"written": self._written, "dropped": self._dropped,
                    "failed": self._failed, "queued": len(self._pending),
                    "reopened": self._reopened}

    # -- the writer thread -------------------------------------------------------------------

    def _open(self) -> BinaryIO:
        """Open the file for appending without ever blocking: start() runs on the event loop,
        and a FIFO opened for writing would wait for a reader (the loop with it). A FIFO
        with no reader is refused (ENXIO) with a message that says so. Writes block again
        (in the writer thread, off the loop)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                         | os.O_NONBLOCK, 0o640)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                raise OSError(errno.ENXIO, "a FIFO with no reader; start the reader first",
                              self.path) from None
            raise
        os.set_blocking(fd, True)
        return os.fdopen(fd, "ab", buffering=0)  # no buffer: a failed write loses no more

    def _run(self, first: BinaryIO) -> None:
        out: BinaryIO | None = first
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._reopen and not self._stopping:
                        self._cond.wait()
                    batch = list(self._pending)
                    self._pending.clear()
                    reopen, self._reopen = self._reopen, False
                    waiters, self._reopen_waiters = self._reopen_waiters, []
                    stopping = self._stopping
                    self._busy = True
                try:
                    if reopen:
                        out = self._reopen_file(out)
                        error = self._reopen_error
                        for waiter in waiters:  # one that gave up waiting was cancelled
                            if waiter.set_running_or_notify_cancel():
                                waiter.set_result(error)
                    if batch:
                        out = self._write_batch(out, batch)
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
                if stopping:
                    with self._cond:
                        if not self._pending:
                            return
        finally:
            if out is not None:
                self._close_file(out)
            with self._cond:
                waiters, self._reopen_waiters = self._reopen_waiters, []
            for waiter in waiters:
                if waiter.set_running_or_notify_cancel():
                    waiter.set_result(f"cannot reopen {self.path}: the writer stopped")

    def _reopen_file(self, out: BinaryIO | None) -> BinaryIO | None:
        if out is not None:
            self._close_file(out)
        try:
            fresh = self._open()
        except OSError as exc:
            message = f"cannot reopen {self.path}: {exc.strerror or exc}"
            with self._cond:
                self._reopen_error = message
            self._error(message)
            return None
        with self._cond:
            self._reopened += 1
            self._reopen_error = None
        return fresh

    def _write_batch(self, out: BinaryIO | None, batch: list[str]) -> BinaryIO | None:
        if out is None:  # an earlier open failed: try again
            try:
                out = self._open()
            except OSError as exc:
                self._error(f"cannot open {self.path}: {exc.strerror or exc}")
                with self._cond:
                    self._failed += len(batch)
                return None
            with self._cond:
                self._reopen_error = None  # the path works again: a failed reopen is over
        size = _regular_size(out)  # None: not a regular file (or fstat failed)
        if self._torn and size == 0:
            self._torn = False  # a new, empty file: nothing to separate from
        lead = b"\n" if self._torn else b""
        data = memoryview(lead + "".join(batch).encode("ascii"))
        total = len(data)
        try:
            while data:
                n = out.write(data)
                if not n:
                    raise OSError(f"write() took no bytes of {len(data)}")
                data = data[n:]
        except OSError as exc:
            self._error(f"cannot write {self.path}: {exc.strerror or exc}")
            self._count_partial(out, size, batch, lead, total - len(data))
            self._close_file(out)
            return None
        self._torn = False
        with self._cond:
            self._written += len(batch)
        return out

    def _count_partial(self, out: BinaryIO, size: int | None, batch: list[str], lead: bytes,
                       sent: int) -> None:
        """After a failed write that took `sent` bytes: undo it (a regular file goes back to
        `size`), or else count the whole lines that made it and mark a trailing fragment."""
        if sent and size is not None:
            try:
                os.ftruncate(out.fileno(), size)
                sent = 0  # nothing of the batch (nor the leading newline) is left
            except OSError as exc:
                self._error(f"cannot truncate {self.path} after a failed write: "
                            f"{exc.strerror or exc}")
        whole = 0
        if sent > len(lead):  # some of the batch itself stays in the stream
            left = sent - len(lead)
            for line in batch:
                if left < len(line):
                    break
                left -= len(line)
                whole += 1
            self._torn = left > 0  # a fragment of the next line ends the stream
        elif sent:
            self._torn = False  # only the leading newline went out: a line starts here
        with self._cond:
            self._written += whole
            self._failed += len(batch) - whole

    def _close_file(self, out: BinaryIO) -> None:
        try:
            out.close()
        except OSError as exc:
            self._error(f"cannot close {self.path}: {exc.strerror or exc}")

    def _error(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_EVERY:
            self._last_error_log = now
            log.error("connlog: %s (lines are counted as failed until it works again)", message)


def _regular_size(out: BinaryIO) -> int | None:
    """The size of `out` if it is a regular file (a batch on it can be undone), else None."""
    try:
        info = os.fstat(out.fileno())
    except (OSError, ValueError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None
