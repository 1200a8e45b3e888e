"""A per-worker pool of pipes for splice(2): a direction holds one only while data is in flight.

An idle session holds no pipe at all (two fds and a kernel buffer saved per direction); a
direction takes a pipe just before it splices data in from its source socket and gives it back
as soon as the pipe is empty again. A pipe with data left in it (its session was reset) is
closed instead of pooled, so a pooled pipe is always empty.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable

PIPE_SIZE = 256 * 1024  # bytes asked for with F_SETPIPE_SZ; the kernel may round it up
POOL_MAX = 64  # empty pipes kept per worker; more are closed when given back


class Pipe:
    """Both ends of one nonblocking pipe and its capacity in bytes."""

    __slots__ = ("capacity", "r", "w")

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # read end, write end
        with contextlib.suppress(OSError):  # keep the default 64 KiB when the limit forbids
            fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self.capacity = fcntl.fcntl(self.w, fcntl.F_GETPIPE_SZ)  # bytes the pipe can hold

    def close(self) -> None:
        """Close both ends."""
        os.close(self.r)
        os.close(self.w)


class PipePool:
    """Empty pipes ready for reuse by the sessions of one worker."""

    def __init__(self, keep: int = POOL_MAX,
                 fd_high: Callable[[int], bool] = lambda fd: False) -> None:
        self._free: list[Pipe] = []  # empty pipes, most recently returned last
        self._keep = keep  # most pipes kept in _free
        self._fd_high = fd_high  # whether an fd is at the data plane's descriptor ceiling
        self.created = 0  # pipes ever created (for tests and curiosity)

    def take(self) -> Pipe:
        """An empty pipe; raises OSError (EMFILE, ENFILE) when none can be created, EMFILE
        also when a new one would sit at the descriptor ceiling (it is closed again)."""
        if self._free:
            return self._free.pop()
        pipe = Pipe()
        if self._fd_high(pipe.r) or self._fd_high(pipe.w):
            pipe.close()  # the descriptors up there are the control plane's
            raise OSError(errno.EMFILE, "descriptor ceiling reached")
        self.created += 1
        return pipe

    def give_back(self, pipe: Pipe, empty: bool) -> None:
        """Return a pipe; one that still holds data is closed, never reused."""
        if empty and len(self._free) < self._keep:
            self._free.append(pipe)
        else:
            pipe.close()

    def close(self) -> None:
        """Close every pooled pipe (the worker is exiting)."""
        for pipe in self._free:
            pipe.close()
        self._free.clear()
