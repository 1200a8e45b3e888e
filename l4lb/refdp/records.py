"""The connection log of one reference worker: a bounded queue of closed-session records.

The worker thread is the only writer (`add`, `configure`), one reader at a time takes records
(`take`; the Dataplane serialises readers with a lock), so a deque is enough: append and popleft
are atomic in CPython and only the writer makes the queue longer, so a length check followed by
an append can never overshoot the capacity. Like the C ring (src_ext/core/connlog_ring.c) a full
queue refuses the new record and the worker counts it in `connlog_dropped`; a new capacity keeps
the oldest records that fit and counts the rest as dropped. Turning the log off keeps what is
queued. Records are the dicts that closed_sessions() returns (l4lb/dataplane.py).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from l4lb.refdp.counters import Counters

CONNLOG_MAX = 1 << 22  # largest capacity, records per worker (as the C core's DP_CONNLOG_MAX)


def ring_capacity(capacity: int) -> int:
    """capacity rounded up to a power of two, as the C core does; ValueError out of range."""
    if not 1 <= capacity <= CONNLOG_MAX:
        raise ValueError(f"capacity must be in 1..{CONNLOG_MAX}, got {capacity}")
    return 1 << (capacity - 1).bit_length()


def make_record(protocol: str, service_id: int, backend_id: int, client: tuple[str, int],
                started: float, bytes_to_backend: int, bytes_to_client: int,
                reason: str, peer: tuple[str, int] | None = None,
                queued: float = 0.0) -> dict[str, Any]:
    """One closed_sessions() record, closed now (peer: the real peer of an accept_proxy
    session; queued: seconds it waited in the service's queue)."""
    return {
        "protocol": protocol,
        "service_id": service_id,
        "backend_id": backend_id,
        "client": client,
        "started": started,
        "duration": max(0.0, time.time() - started),
        "bytes_to_backend": bytes_to_backend,
        "bytes_to_client": bytes_to_client,
        "reason": reason,
        "peer": peer,
        "queued": queued,
    }


class RecordQueue:
    """One worker's queued records and whether closes are recorded."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters  # the worker's counters (connlog_dropped)
        self.on = False  # record closes now (written by the worker thread only)
        self.capacity = 0  # records held at most; 0 until the log is first turned on
        self.queue: deque[dict[str, Any]] = deque()  # oldest first

    def add(self, record: dict[str, Any]) -> None:
        """Worker thread: queue one record, or count it dropped when the queue is full."""
        if len(self.queue) >= self.capacity:
            self.counters.connlog_dropped += 1
            return
        self.queue.append(record)

    def configure(self, on: bool, capacity: int | None) -> None:
        """Worker thread (no reader running): switch on/off, maybe with a new capacity."""
        if capacity is not None and capacity != self.capacity:
            while len(self.queue) > capacity:
                self.queue.pop()  # the newest go, as when the C core moves records over
                self.counters.connlog_dropped += 1
            self.capacity = capacity
        self.on = on and self.capacity > 0

    def take(self, limit: int) -> list[dict[str, Any]]:
        """Reader: remove and return up to limit records, oldest first."""
        out: list[dict[str, Any]] = []
        while len(out) < limit:
            try:
                out.append(self.queue.popleft())
            except IndexError:
                break
        return out
