"""Set up the control plane's logging: text or JSON lines on stderr that never block the caller.

Messages name their subject first (`service web: listening on 127.0.0.1:8080`); the data plane
never logs, it counts. JSON lines carry time, level, logger and message.

Design. stderr is often a pipe (journald, a supervisor) and a pipe can stop taking bytes; a
synchronous handler would then stop the asyncio event loop in write(2) -- no VRRP adverts, no
control socket, no signal handling. So the root logger gets a `QueueStreamHandler`: `emit()`
formats the record on the caller's thread (the args are frozen there, and a bad format string
fails where it was logged) and appends the line to a bounded in-memory queue (QUEUE_LINES); it
never touches the stream and never waits. One daemon thread writes everything queued with one
write per batch. When the queue is full the line is dropped and counted (`dropped_lines()`);
once the thread gets a write through again it first writes one WARNING line
`logs: N lines dropped (stderr was blocked)`.

A stream with a file descriptor (stderr) is written with os.write() on that descriptor, not
through the stream object: a thread blocked inside the stream's write() holds the stream's
buffer lock, and the interpreter's own flush of stderr at exit would then abort (or hang
printing the fatal error to the same full pipe). `flush_logs(timeout)` waits, bounded, for the
queue to be written; an atexit hook calls it with EXIT_FLUSH_TIMEOUT, so an exit writes the
last lines when it can and never hangs when it cannot.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import logging
import os
import select
import sys
import threading
import time
from collections import deque
from typing import TextIO

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
QUEUE_LINES = 10_000  # formatted lines held while the stream is slow; more are dropped
EXIT_FLUSH_TIMEOUT = 2.0  # seconds the exit waits for queued lines to be written
CLOSE_TIMEOUT = 1.0  # seconds a replaced handler gets to write what it holds
DROPPED_MESSAGE = "logs: %d lines dropped (stderr was blocked)"


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, sort_keys=False)


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of a log_format value: "json" or "text"."""
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)-7s %(message)s")


class QueueStreamHandler(logging.Handler):
    """Formats in the caller, queues the line (bounded), and writes from its own thread."""

    def __init__(self, stream: TextIO, max_lines: int | None = None) -> None:
        super().__init__()
        max_lines = QUEUE_LINES if max_lines is None else max_lines
        if max_lines < 1:
            raise ValueError("max_lines must be >= 1")
        self.stream = stream  # where the lines go (sys.stderr in the daemon)
        self.max_lines = max_lines  # queued lines before new ones are dropped
        self._fd = _usable_fd(stream)  # the stream's descriptor, written directly; or None
        self._encoding = getattr(stream, "encoding", None) or "utf-8"  # for the descriptor
        self._cond = threading.Condition()  # guards everything below; wakes the thread
        self._queue: deque[str] = deque()  # formatted lines, each ending in "\n"
        self._busy = False  # the thread holds a batch taken from _queue
        self._closed = False  # close() was called: lines are dropped, the thread ends
        self._dropped = 0  # lines dropped (queue full, closed, or a failed write): the total
        self._unreported = 0  # of those, lines the "dropped" line has not announced yet
        self._thread = threading.Thread(target=self._run, name="l4lb-logs", daemon=True)
        self._thread.start()

    # -- the caller's side ---------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        """Queue one formatted line; drop and count it when the queue is full. Never waits."""
        if len(self._queue) >= self.max_lines or self._closed:  # a full queue costs no format
            self._count_dropped()
            return
        try:
            line = self.format(record) + "\n"
        except Exception:  # a bad format string or argument: counted (handleError), not raised
            self.handleError(record)
            return
        with self._cond:
            if len(self._queue) >= self.max_lines or self._closed:
                self._dropped += 1
                self._unreported += 1
                return
            self._queue.append(line)
            if len(self._queue) == 1:
                self._cond.notify_all()

    def handleError(self, record: logging.LogRecord) -> None:
        """A record that cannot be formatted is counted as dropped (not announced as blocked
        stderr), not printed: printing would write to stderr from the caller's thread."""
        with self._cond:
            self._dropped += 1

    def flush(self) -> None:
        """Does not wait (logging.shutdown and others call it): `wait_written()` is the
        bounded wait."""

    def wait_written(self, timeout: float) -> bool:
        """Wait until every queued line has been written; False if `timeout` passed first."""
        with self._cond:
            return self._cond.wait_for(
                lambda: (not self._queue and not self._busy) or not self._thread.is_alive(),
                max(0.0, timeout))

    def dropped(self) -> int:
        """Lines this handler dropped so far."""
        with self._cond:
            return self._dropped

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop taking lines, give the thread up to `timeout` seconds to write what is queued,
        and let it end. Idempotent; never waits longer than `timeout`."""
        with self._cond:
            already = self._closed
            self._closed = True
            self._cond.notify_all()
        if not already and threading.current_thread() is not self._thread:
            self._thread.join(max(0.0, timeout))
        super().close()

    def _count_dropped(self) -> None:
        with self._cond:
            self._dropped += 1
            self._unreported += 1

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed and not self._queue:
                    return
                batch = list(self._queue)
                self._queue.clear()
                announce, self._unreported = self._unreported, 0
                self._busy = True
            lines = [self._dropped_line(announce), *batch] if announce else batch
            ok = self._write("".join(lines))
            with self._cond:
                self._busy = False
                if not ok:  # those lines are lost too; announce them with the rest later
                    self._dropped += len(batch)
                    self._unreported += announce + len(batch)
                self._cond.notify_all()

    def _dropped_line(self, count: int) -> str:
        record = logging.LogRecord("l4lb", logging.WARNING, __file__, 0, DROPPED_MESSAGE,
                                   (count,), None)
        try:
            return self.format(record) + "\n"
        except Exception:
            return DROPPED_MESSAGE % count + "\n"

    def _write(self, text: str) -> bool:
        """Write `text` whole; False if the stream failed (the lines are lost)."""
        if self._fd is None:
            try:
                self.stream.write(text)
                self.stream.flush()
            except Exception:
                return False
            return True
        data = memoryview(text.encode(self._encoding, "backslashreplace"))
        while data:
            try:
                n = os.write(self._fd, data)
            except BlockingIOError:  # someone made the descriptor non-blocking: wait for room
                _wait_writable(self._fd)
                continue
            except OSError:
                return False
            data = data[n:]
        return True


def _usable_fd(stream: TextIO) -> int | None:
    """The stream's file descriptor, after flushing what the stream itself buffered; None for
    a stream without one (io.StringIO, pytest's capture, a test double)."""
    try:
        fd = stream.fileno()
        os.fstat(fd)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    with contextlib.suppress(OSError, ValueError):
        stream.flush()
    return fd


def _wait_writable(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    poller.poll(1000)  # at most a second, then write() is tried again


_handler: QueueStreamHandler | None = None  # the handler setup_logging installed last
_retired_dropped = 0  # lines dropped by handlers setup_logging has replaced
_atexit_registered = False


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger (replaces earlier handlers): lines in format `fmt` go to
    `stream` (default: sys.stderr) through a QueueStreamHandler. A replaced QueueStreamHandler
    writes what it holds first (at most CLOSE_TIMEOUT seconds)."""
    global _handler, _retired_dropped, _atexit_registered
    handler = QueueStreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    if _handler is not None:  # keep the order: its lines first
        _handler.wait_written(CLOSE_TIMEOUT)
    old = list(root.handlers)
    for each in old:
        root.removeHandler(each)
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level, logging.INFO))
    previous, _handler = _handler, handler
    for each in old:
        if isinstance(each, QueueStreamHandler) and each is not previous:
            each.close(CLOSE_TIMEOUT)
    if previous is not None:  # it had its chance above: its thread finishes in the background
        previous.close(0.0)
        _retired_dropped += previous.dropped()
    if not _atexit_registered:  # after logging's own hook, so this one runs first
        atexit.register(_flush_at_exit)
        _atexit_registered = True


def set_log_format(fmt: str) -> None:
    """Switch every handler of the root logger to fmt ("text" or "json"): a reload's log_format.
    Lines logged from then on use it (a queued line keeps the format it was logged in)."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter(fmt))


def dropped_lines() -> int:
    """Log lines dropped since the start because stderr took them too slowly (or failed): the
    counter behind l4lb_log_lines_dropped_total."""
    handler = _handler
    return _retired_dropped + (handler.dropped() if handler is not None else 0)


def flush_logs(timeout: float = 2.0) -> bool:
    """Wait until every queued log line is written; False if `timeout` seconds passed first
    (stderr is blocked). Never waits longer than `timeout`. True when nothing is queued."""
    handler = _handler
    return True if handler is None else handler.wait_written(timeout)


def _flush_at_exit() -> None:
    handler = _handler
    if handler is not None:
        written = handler.wait_written(EXIT_FLUSH_TIMEOUT)
        handler.close(CLOSE_TIMEOUT if written else 0.0)
