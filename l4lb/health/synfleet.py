"""A fleet of SYN-probe targets run in batches: the Python twin of the C fleet, and its driver.

Design. `SynProbeEngine` (synprobe.py) costs one Python call chain per probe: the checker's
scheduling, a handle object, a `sendto`, a `recv`, a dict lookup, a result tuple. At 10,000
probes a second that is 15-18 us of interpreter time per probe. A *fleet* turns this around:
it owns every `kind = "syn"` target's schedule, its probe in flight and its timeout, and ONE
call, `run(now_ns)`, does everything due - drain replies from the raw sockets and match them,
expire timeouts, send the SYNs that are due, schedule each answered target's next probe - and
returns the results of that batch as one bytes buffer of 16-byte records (`RESULT`: id,
verdict, errno, latency in us) plus the time of the next event. The C fleet
(src_ext/core/synprobe.c, `l4lb._dataplane.SynFleet`) runs that call without the GIL.

`PySynFleet` below is its twin with the same API: the oracle of the shared test suite and the
fallback without the extension (or with L4LB_NO_EXTENSIONS=1). Both order events by (event time,
target id) in one heap (a target waiting for its next probe has its due time there, a target in
flight its deadline), draw the jitter factor and the SYN sequence numbers from two splitmix64
streams seeded by the caller, and compute the scaled interval in the same integer arithmetic,
so one seed gives one schedule in both. Scheduling is checker.py's rule: the next probe is due
interval * uniform[1 - jitter, 1 + jitter] after the previous send, never before the verdict;
`set_timing` (the backend's interval changed: DOWN, `down_interval`; in transition,
`fast_interval`) reschedules a waiting target with the same draw.

Quiet passes: the caller may mark a target quiet (`set_quiet`); the fleet then counts its
passes (verdict UP) instead of writing them to the results, keeping per target the number since
the last collect and the verdict time and latency of the last one, plus a fleet-wide total
(`quiet_passes`). `collect(id)` and `collect_all()` (QUIET records) hand them over and reset
them. The checker marks a backend quiet while a pass cannot change its state (see checker.py),
so at steady state almost no result crosses into Python.

`SynFleetRunner` is the I/O glue the checker uses: it opens lanes (a raw socket and reserved
ports per (family, source), `synprobe._Lane`), learns each target's source address, hands fds
and constants to the fleet, and drives `run()` from one asyncio timer, armed `tick` after the next
event, so probes due close together go out in one call. It does not watch the raw sockets:
while probes are in flight the timer fires every `tick` and drains them, which costs a third
of the wake-ups a reader would (on loopback replies trickle in over several softirq rounds,
each a wake-up), and the lanes carry SO_TIMESTAMPNS so a reply's latency ends at the kernel's
receive time, not at the drain.
It converts each record to the same `ProbeResult` the engines deliver. Source addresses are
looked up again SOURCE_TTL (60 s) after they were learned, at most 256 a second, and a changed
one replaces the target's checksum template (`set_source`).
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import logging
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from l4lb.health.probe import ProbeResult, ProbeSpec
from l4lb.health.synprobe import (
    _LOCAL_ERRNOS,
    _RECV_SIZE,
    _SEND_REASONS,
    PORTS_PER_LANE,
    SOURCE_TTL,
    _Lane,
    build_syn,
    learn_source,
    parse_reply,
    reply_verdict,
    syn_partial_sum,
)

log = logging.getLogger("l4lb.health")

UP = 1  # SYN-ACK acknowledging our SYN
REFUSED = 2  # RST+ACK acknowledging our SYN
TIMEOUT = 3  # no answer before the timeout
LOCAL_ERROR = 4  # the SYN could not be sent for a local reason: inconclusive
SEND_ERROR = 5  # the send failed for a reason that concerns the backend: conclusive

RESULT = struct.Struct("=IIiI")  # id, verdict, errno, latency_us (struct sp_result)
QUIET = struct.Struct("=IIQq")  # id, latency_us, count, last_ns (struct sp_quiet)
NO_EVENT = (1 << 63) - 1  # next_due of an empty fleet (SP_NO_EVENT)
MAX_LANES = 64  # lane ids 0..63
_BATCH = 64  # SYNs per send batch, replies per receive round (as the C fleet)
_RECV_ROUNDS = 16  # receive rounds per lane per run
_MASK64 = (1 << 64) - 1
_SEQ_SALT = 0xD1B54A32D192ED03  # the seq stream's seed is seed ^ this
SO_TIMESTAMPNS = 35  # asm-generic/socket.h (SCM_TIMESTAMPNS has the same value)
_TIMESPEC = struct.Struct("=qq")
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)


def splitmix64(state: int) -> tuple[int, int]:
    """One splitmix64 step: (new state, output)."""
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


def scaled_interval(interval_ns: int, jitter_ppm: int, draw: int) -> int:
    """interval scaled by a factor in [1 - jitter, 1 + jitter] chosen by the 32-bit draw."""
    span = interval_ns * jitter_ppm // 1_000_000
    return interval_ns - span + ((2 * span * draw) >> 32)


class Fleet(Protocol):
    """What both fleets offer (the C `SynFleet` and `PySynFleet`)."""

    def add_lane(self, lane: int, family: int, fd: int, ports: Sequence[int]) -> None:
        """Register lane `lane`: a nonblocking raw IPPROTO_TCP socket and its reserved ports."""

    def add_target(self, tid: int, lane: int, dst: bytes, port: int, src: bytes, scope_id: int,
                   timeout_ms: int, interval_ms: int, jitter_ppm: int,
                   first_due_ns: int) -> None:
        """Add target `tid` (packed addresses), first probe at first_due_ns."""

    def set_source(self, tid: int, src: bytes) -> None:
        """The kernel's source address towards `tid` changed: new checksum template."""

    def remove_target(self, tid: int) -> None:
        """Forget `tid`; a probe in flight is abandoned."""

    def set_timing(self, tid: int, interval_ms: int, timeout_ms: int, jitter_ppm: int) -> None:
        """New timing; a waiting target is rescheduled with the same draw."""

    def target(self, tid: int) -> tuple[int, int, int, int, int, bool]:
        """(due_ns, start_ns, deadline_ns, seq, sport, in_flight) of `tid`."""

    def set_quiet(self, tid: int, quiet: bool) -> None:
        """Quiet on/off (default off): while on, a pass of `tid` is counted, not reported."""

    def collect(self, tid: int) -> tuple[int, int, int]:
        """(count, last_ns, last_latency_us) of `tid`'s quiet passes since the last collect
        ((0, 0, 0) if none); resets them."""

    def collect_all(self, reset: bool = True) -> bytes:
        """QUIET records of every target with quiet passes not yet collected (id order);
        resets them (reset=False: only reads them)."""

    @property
    def quiet_passes(self) -> int:
        """Quiet passes since the fleet was created (collected or not)."""

    @property
    def in_flight(self) -> int:
        """Targets with a probe in flight."""

    @property
    def stray(self) -> int:
        """Segments that matched no probe."""

    def next_due(self) -> int:
        """Time of the earliest event, NO_EVENT if none."""

    def run(self, now_ns: int) -> tuple[bytes, int]:
        """Do everything due: (packed RESULT records, next event time)."""

    def close(self) -> None:
        """Free the fleet (lane fds belong to the caller)."""


class _Target:
    __slots__ = ("deadline", "dport", "draw", "dst", "due", "family", "in_flight", "interval_ms",
                 "jitter_ppm", "key", "lane", "partial", "quiet", "quiet_at", "quiet_count",
                 "quiet_lat", "scope_id", "seq", "sport", "start", "timeout_ms", "ver",
                 "verdict_at")

    def __init__(self, lane: int, family: int, dst: bytes, dport: int, scope_id: int,
                 partial: int, timeout_ms: int, interval_ms: int, jitter_ppm: int,
                 due: int) -> None:
        self.lane = lane  # lane id
        self.family = family  # AF_INET or AF_INET6
        self.dst = dst  # packed backend address
        self.dport = dport  # probed port
        self.scope_id = scope_id  # IPv6 scope of dst
        self.partial = partial  # syn_partial_sum of the template
        self.timeout_ms = timeout_ms  # probe timeout
        self.interval_ms = interval_ms  # nominal interval
        self.jitter_ppm = jitter_ppm  # jitter, parts per million
        self.due = due  # next send time (while waiting)
        self.start = 0  # last send time (0: never)
        self.deadline = 0  # timeout of the probe in flight
        self.verdict_at = 0  # time of the last verdict
        self.seq = 0  # seq of the probe in flight
        self.sport = 0  # our port of the probe in flight
        self.draw = 0  # jitter draw of the current schedule
        self.in_flight = False  # a probe waits for its answer
        self.key: tuple[bytes, int, int, int] | None = None  # in-flight key while in flight
        self.ver = 0  # bumped whenever the event time changes (older heap entries are stale)
        self.quiet = False  # passes are counted here instead of reported
        self.quiet_count = 0  # quiet passes not yet collected
        self.quiet_at = 0  # verdict time of the last of them
        self.quiet_lat = 0  # latency (us) of the last of them


class _PyLane:
    __slots__ = ("family", "next", "pend", "ports", "sock")

    def __init__(self, family: int, sock: socket.socket, ports: list[int]) -> None:
        self.family = family  # AF_INET or AF_INET6
        self.sock = sock  # our duplicate of the caller's raw socket
        self.ports = ports  # reserved source ports
        self.next = 0  # index of the next probe's port
        self.pend: list[tuple[int, bytes]] = []  # (target id, SYN) for the next batch


class PySynFleet:
    """The pure-Python fleet: same API and schedule as `l4lb._dataplane.SynFleet`."""

    def __init__(self, seed: int, max_results: int = 1024) -> None:
        if max_results < 1:
            raise ValueError("max_results must be >= 1")
        self._max = max_results  # results per run
        self._jit = seed & _MASK64  # splitmix64 state of the jitter draws
        self._seqs = (seed ^ _SEQ_SALT) & _MASK64  # splitmix64 state of the seq numbers
        self._lanes: dict[int, _PyLane] = {}  # by lane id
        self._targets: dict[int, _Target] = {}  # by id
        self._heap: list[tuple[int, int, int]] = []  # (event time, id, ver)
        self._flight: dict[tuple[bytes, int, int, int], int] = {}  # in-flight key -> id
        self._stray = 0
        self._quiet_passes = 0  # quiet passes ever counted
        self._wall_to_mono: int | None = None  # CLOCK_MONOTONIC - CLOCK_REALTIME, per drain
        self._vers = 0  # last version handed out (fleet-wide: a reused id never matches)
        self._closed = False

    def _live(self) -> None:
        if self._closed:
            raise RuntimeError("syn fleet is closed")

    def close(self) -> None:
        """Free the fleet: close our duplicates of the lane sockets. Idempotent."""
        self._closed = True
        for lane in self._lanes.values():
            lane.sock.close()
        self._lanes.clear()
        self._targets.clear()
        self._flight.clear()
        self._heap.clear()

    def add_lane(self, lane: int, family: int, fd: int, ports: Sequence[int]) -> None:
        """See Fleet.add_lane."""
        self._live()
        if not 0 <= lane < MAX_LANES or fd < 0 or not 1 <= len(ports) <= 32 or \
                family not in (socket.AF_INET, socket.AF_INET6):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if lane in self._lanes:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        sock = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_TCP, fileno=os.dup(fd))
        sock.setblocking(False)
        self._lanes[lane] = _PyLane(family, sock, list(ports))

    def add_target(self, tid: int, lane: int, dst: bytes, port: int, src: bytes, scope_id: int,
                   timeout_ms: int, interval_ms: int, jitter_ppm: int,
                   first_due_ns: int) -> None:
        """See Fleet.add_target."""
        self._live()
        if len(dst) not in (4, 16) or len(src) != len(dst):
            raise ValueError("dst and src must be packed addresses of one family")
        ln = self._lanes.get(lane)
        if ln is None or not 0 <= jitter_ppm <= 1_000_000 or not 0 < port < 65536 or \
                tid < 0 or len(dst) != (4 if ln.family == socket.AF_INET else 16):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if tid in self._targets:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        t = _Target(lane, ln.family, dst, port, scope_id, syn_partial_sum(src, dst, port),
                    timeout_ms, interval_ms, jitter_ppm, first_due_ns)
        self._targets[tid] = t
        self._vers += 1
        t.ver = self._vers
        heapq.heappush(self._heap, (first_due_ns, tid, t.ver))

    def set_source(self, tid: int, src: bytes) -> None:
        """See Fleet.set_source."""
        self._live()
        t = self._targets.get(tid)
        if t is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        if len(src) != len(t.dst):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        t.partial = syn_partial_sum(src, t.dst, t.dport)

    def remove_target(self, tid: int) -> None:
        """See Fleet.remove_target."""
        self._live()
        t = self._targets.pop(tid, None)
        if t is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        if t.key is not None:
            del self._flight[t.key]
            t.key = None

    def set_quiet(self, tid: int, quiet: bool) -> None:
        """See Fleet.set_quiet."""
        self._live()
        t = self._targets.get(tid)
        if t is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        t.quiet = bool(quiet)

    def collect(self, tid: int) -> tuple[int, int, int]:
        """See Fleet.collect."""
        self._live()
        t = self._targets.get(tid)
        if t is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        got = (t.quiet_count, t.quiet_at, t.quiet_lat)
        t.quiet_count = t.quiet_at = t.quiet_lat = 0
        return got

    def collect_all(self, reset: bool = True) -> bytes:
        """See Fleet.collect_all."""
        self._live()
        out = []
        for tid in sorted(self._targets):
            t = self._targets[tid]
            if t.quiet_count:
                out.append(QUIET.pack(tid, t.quiet_lat, t.quiet_count, t.quiet_at))
                if reset:
                    t.quiet_count = t.quiet_at = t.quiet_lat = 0
        return b"".join(out)

    @property
    def quiet_passes(self) -> int:
        """See Fleet.quiet_passes."""
        return self._quiet_passes

    def _reschedule(self, tid: int, t: _Target) -> None:
        due = t.start + scaled_interval(t.interval_ms * 1_000_000, t.jitter_ppm, t.draw)
        t.due = due if due > t.verdict_at else t.verdict_at
        self._vers += 1
        t.ver = self._vers
        heapq.heappush(self._heap, (t.due, tid, t.ver))

    def set_timing(self, tid: int, interval_ms: int, timeout_ms: int, jitter_ppm: int) -> None:
        """See Fleet.set_timing."""
        self._live()
        t = self._targets.get(tid)
        if t is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        if not 0 <= jitter_ppm <= 1_000_000:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        t.interval_ms, t.timeout_ms, t.jitter_ppm = interval_ms, timeout_ms, jitter_ppm
        if not t.in_flight and t.start:
            self._reschedule(tid, t)

    def target(self, tid: int) -> tuple[int, int, int, int, int, bool]:
        """See Fleet.target."""
        self._live()
        t = self._targets.get(tid)
        if t is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        return (t.due, t.start, t.deadline, t.seq, t.sport, t.in_flight)

    @property
    def in_flight(self) -> int:
        """See Fleet.in_flight."""
        return len(self._flight)

    @property
    def stray(self) -> int:
        """See Fleet.stray."""
        return self._stray

    def _top(self) -> tuple[int, int] | None:
        heap = self._heap
        targets = self._targets
        while heap:
            when, tid, ver = heap[0]
            t = targets.get(tid)
            if t is not None and t.ver == ver:
                return when, tid
            heapq.heappop(heap)
        return None

    def next_due(self) -> int:
        """See Fleet.next_due."""
        self._live()
        top = self._top()
        return NO_EVENT if top is None else top[0]

    def _finish(self, tid: int, t: _Target, now: int, verdict: int, err: int,
                out: list[bytes], at: int = 0) -> None:
        if t.key is not None:
            del self._flight[t.key]
            t.key = None
        t.in_flight = False
        if at < t.start or at > now:
            at = now  # no timestamp, or the clocks disagree
        lat = min(max((at - t.start) // 1000, 0), 0xFFFFFFFF)
        if verdict == UP and t.quiet:
            t.quiet_count += 1
            t.quiet_at = now
            t.quiet_lat = lat
            self._quiet_passes += 1
        else:
            out.append(RESULT.pack(tid, verdict, err, lat))
        t.verdict_at = now
        self._jit, r = splitmix64(self._jit)
        t.draw = r >> 32
        self._reschedule(tid, t)

    def _flush(self, lane: _PyLane, now: int, out: list[bytes]) -> None:
        for tid, pkt in lane.pend:
            t = self._targets.get(tid)
            if t is None:
                continue
            addr: tuple[Any, ...] = (socket.inet_ntop(t.family, t.dst), 0, 0, t.scope_id) \
                if t.family == socket.AF_INET6 else (socket.inet_ntop(t.family, t.dst), 0)
            try:
                lane.sock.sendto(pkt, addr)
            except OSError as exc:
                err = exc.errno or errno.EIO
                if t.in_flight:
                    self._finish(tid, t, now, LOCAL_ERROR if err in _LOCAL_ERRNOS
                                 else SEND_ERROR, err, out)
        lane.pend.clear()

    def _drain(self, lane: _PyLane, now: int, out: list[bytes]) -> bool:
        """Read the lane's replies; True if it stopped before EAGAIN. Rounds of up to _BATCH
        reads (fewer when fewer result slots are left), at most _RECV_ROUNDS, as the C fleet's
        recvmmsg calls."""
        self._wall_to_mono = None  # read once per drain, when a timestamp needs it
        for _ in range(_RECV_ROUNDS):
            want = min(self._max - len(out), _BATCH)
            if not want:
                return True
            for _ in range(want):
                if not self._recv_one(lane, now, out):
                    return False
        return True

    def _recv_one(self, lane: _PyLane, now: int, out: list[bytes]) -> bool:
        """Read and match one reply; False at EAGAIN (or an error: those probes time out)."""
        family = lane.family
        try:
            packet, anc, _flags, addr = lane.sock.recvmsg(_RECV_SIZE, _CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:  # e.g. ENOBUFS: replies were lost; those probes time out
            return False
        peer = None if family == socket.AF_INET else \
            socket.inet_pton(family, addr[0].split("%", 1)[0])
        reply = parse_reply(packet, family, peer)
        ok = None if reply is None else reply_verdict(reply.flags)
        tid = None
        if reply is not None and ok is not None:
            tid = self._flight.get((reply.peer, reply.peer_port, reply.our_port,
                                    (reply.ack - 1) & 0xFFFFFFFF))
        if tid is None:
            self._stray += 1
            return True
        at = 0
        for level, kind, data in anc:  # SO_TIMESTAMPNS, if the caller set it
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and \
                    len(data) >= _TIMESPEC.size:
                if self._wall_to_mono is None:
                    self._wall_to_mono = time.monotonic_ns() - time.time_ns()
                sec, nsec = _TIMESPEC.unpack_from(data)
                at = sec * 1_000_000_000 + nsec + self._wall_to_mono
        self._finish(tid, self._targets[tid], now, UP if ok else REFUSED, 0, out, at)
        return True

    def run(self, now_ns: int) -> tuple[bytes, int]:
        """See Fleet.run."""
        self._live()
        out: list[bytes] = []
        more = False
        for lane_id in sorted(self._lanes):
            more = self._drain(self._lanes[lane_id], now_ns, out) or more
        pending = 0
        heap = self._heap
        while len(out) + pending < self._max:
            top = self._top()
            if top is None or top[0] > now_ns:
                break
            heapq.heappop(heap)
            tid = top[1]
            t = self._targets[tid]
            if t.in_flight:
                self._finish(tid, t, now_ns, TIMEOUT, 0, out)
                continue
            lane = self._lanes[t.lane]
            self._seqs, r = splitmix64(self._seqs)
            seq = r >> 32
            sport = lane.ports[lane.next]
            lane.next = lane.next + 1 if lane.next + 1 < len(lane.ports) else 0
            lane.pend.append((tid, build_syn(t.partial, sport, t.dport, seq)))
            t.seq, t.sport, t.start = seq, sport, now_ns
            t.deadline = now_ns + t.timeout_ms * 1_000_000
            t.in_flight = True
            t.key = (t.dst, t.dport, sport, seq)
            self._flight[t.key] = tid
            self._vers += 1
            t.ver = self._vers
            heapq.heappush(heap, (t.deadline, tid, t.ver))
            pending += 1
            if len(lane.pend) == _BATCH:
                self._flush(lane, now_ns, out)
                pending -= _BATCH
        top = self._top()
        if top is not None and top[0] <= now_ns and len(out) + pending >= self._max:
            more = True
        for lane_id in sorted(self._lanes):
            lane = self._lanes[lane_id]
            if lane.pend:
                pending -= len(lane.pend)
                self._flush(lane, now_ns, out)
        return b"".join(out), now_ns if more else self.next_due()


def c_fleet_available() -> bool:
    """True when the compiled fleet imports and L4LB_NO_EXTENSIONS does not forbid it."""
    from l4lb.dataplane import reference_requested
    if reference_requested():
        return False
    try:
        from l4lb._dataplane import SynFleet  # noqa: F401
    except ImportError:
        return False
    return True


def make_fleet(impl: str, seed: int, max_results: int = 1024) -> Fleet:
    """A fleet: impl "c" (the compiled one; ImportError if missing), "py" (the twin) or "auto"
    (C when `c_fleet_available()`, else the twin)."""
    if impl == "auto":
        impl = "c" if c_fleet_available() else "py"
    if impl == "c":
        from l4lb._dataplane import SynFleet
        fleet: Fleet = SynFleet(seed, max_results)
        return fleet
    if impl == "py":
        return PySynFleet(seed, max_results)
    raise ValueError(f"unknown fleet implementation {impl!r}")


# -- the driver --------------------------------------------------------------------------------

def _ms(seconds: float) -> int:
    return min(0xFFFFFFFF, max(0, round(seconds * 1000)))  # the fleets keep u32 milliseconds


def _ppm(jitter: float) -> int:
    return min(1_000_000, max(0, round(jitter * 1_000_000)))


_new_tuple = tuple.__new__
UP_REASON = "syn-ack"  # the reason of every pass
_VERDICT_REASONS = {REFUSED: "connect refused", TIMEOUT: "connect timeout"}


def probe_result(verdict: int, err: int, latency_us: int) -> ProbeResult:
    """The ProbeResult of one record (the same verdicts and reasons as SynProbeEngine)."""
    latency = latency_us / 1e6
    if verdict == UP:
        return _new_tuple(ProbeResult, (True, UP_REASON, latency, True, None))
    reason = _VERDICT_REASONS.get(verdict)
    if reason is not None:
        return _new_tuple(ProbeResult, (False, reason, latency, True, None))
    reason = _SEND_REASONS.get(err) or f"send failed: {os.strerror(err).lower()}"
    return ProbeResult(False, reason, latency, verdict == SEND_ERROR)


def results(buf: bytes) -> list[tuple[int, ProbeResult]]:
    """(id, result) of every record in a run's buffer."""
    return [(tid, probe_result(v, e, lat)) for tid, v, e, lat in RESULT.iter_unpack(buf)]


_RELEARN_EVERY = 1.0  # seconds between two passes over the source addresses due again
_RELEARN_MAX = 256  # source addresses looked up per pass (bounds loop lag)


class SynFleetRunner:
    """Drives a fleet on an asyncio loop and delivers each run's results as `on_batch(buf)`
    (packed RESULT records: decode with `results`, or `RESULT.iter_unpack` and `probe_result`).

    Ids are small integers handed out by `add` (and reused after `remove`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_batch: Callable[[bytes], None], *, impl: str = "auto",
                 seed: int | None = None, tick: float = 0.005,
                 ports_per_lane: int = PORTS_PER_LANE) -> None:
        self._loop = loop
        self._on_batch = on_batch  # called with every non-empty batch of results
        self._fleet = make_fleet(impl, seed if seed is not None else
                                 int.from_bytes(os.urandom(8), "little"))
        self.impl = "py" if isinstance(self._fleet, PySynFleet) else "c"  # which fleet runs
        self._tick = tick  # seconds the timer fires after the next event (batches sends)
        self._ports_per_lane = ports_per_lane  # reserved ports per lane
        self._lanes: dict[tuple[int, str | None], tuple[int, _Lane]] = {}  # -> (id, lane)
        self._free: list[int] = []  # released target ids
        self._ids = 0  # next never-used target id
        self._timer: asyncio.TimerHandle | None = None  # armed for next event + tick
        self._timer_at = float("inf")  # when _timer fires
        self._soon = False  # a call_soon(_run) is queued
        self._closed = False
        # Source addresses are learned again after SOURCE_TTL (routes change): per target its
        # spec and source, and a FIFO of (learned at, id, generation) in learning order.
        self._specs: dict[int, tuple[ProbeSpec, bytes, int]] = {}  # id -> (spec, src, gen)
        self._learned: deque[tuple[float, int, int]] = deque()
        self._gen = 0  # generations tell a reused id from its predecessor
        self._relearn: asyncio.TimerHandle | None = None  # the periodic pass
        self.relearned = 0  # source addresses that changed (for tests and diagnostics)
        self.run_at = 0.0  # monotonic time of the run whose results on_batch is handed
        self._quiet_closed = 0  # quiet passes of the fleet, kept when it is closed
        self._stray_closed = 0  # stray segments of the fleet, kept when it is closed

    @property
    def in_flight(self) -> int:
        """Probes in flight."""
        return 0 if self._closed else self._fleet.in_flight

    @property
    def quiet_passes(self) -> int:
        """Quiet passes counted since the runner was made (see `set_quiet`)."""
        return self._quiet_closed if self._closed else self._fleet.quiet_passes

    @property
    def stray(self) -> int:
        """Segments that passed the lanes' filters but matched no probe (a reply after its
        timeout, another program's traffic to our reserved ports)."""
        return self._stray_closed if self._closed else self._fleet.stray

    def set_quiet(self, tid: int, quiet: bool) -> None:
        """While quiet, a pass of `tid` is counted by the fleet instead of delivered; `collect`
        hands the count, the time and the latency of the last one over."""
        if not self._closed:
            self._fleet.set_quiet(tid, quiet)

    def collect(self, tid: int) -> tuple[int, float, int]:
        """(count, monotonic time of the last, its latency in us) of `tid`'s quiet passes since
        the last collect; resets them."""
        if self._closed:
            return 0, 0.0, 0
        count, last_ns, lat_us = self._fleet.collect(tid)
        return count, last_ns / 1e9, lat_us

    def collect_all(self, reset: bool = True) -> bytes:
        """QUIET records (id, latency us, count, last ns) of every target with quiet passes
        not yet collected; resets them (reset=False: only reads them)."""
        return b"" if self._closed else self._fleet.collect_all(reset)

    def _lane(self, family: int, source: str | None) -> int:
        found = self._lanes.get((family, source))
        if found is not None:
            return found[0]
        if len(self._lanes) >= MAX_LANES:
            raise OSError(errno.ENOSPC, "too many probe source addresses")
        lane = _Lane(family, source, self._ports_per_lane)
        assert lane.raw is not None
        lane_id = len(self._lanes)
        try:
            lane.raw.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self._fleet.add_lane(lane_id, family, lane.raw.fileno(), lane.ports)
        except BaseException:
            lane.close()
            raise
        self._lanes[family, source] = (lane_id, lane)
        return lane_id

    def add(self, spec: ProbeSpec, interval: float, jitter: float, first_due: float) -> int:
        """Probe spec's backend from monotonic time `first_due` on; returns its id. OSError when
        the lane cannot be opened or the source address cannot be found."""
        if self._closed:
            raise RuntimeError("syn fleet runner is closed")
        source = spec.source[0] if spec.source is not None else None
        lane_id = self._lane(spec.family, source)
        src = learn_source(spec)
        dst = socket.inet_pton(spec.family, spec.host)
        scope = spec.sockaddr[3] if spec.family == socket.AF_INET6 else 0
        tid = self._free.pop() if self._free else self._ids
        if tid == self._ids:
            self._ids += 1
        try:
            self._fleet.add_target(tid, lane_id, dst, spec.port, src, scope, _ms(spec.timeout),
                                   _ms(interval), _ppm(jitter), int(first_due * 1e9))
        except BaseException:
            self._free.append(tid)
            raise
        self._gen += 1
        self._specs[tid] = (spec, src, self._gen)
        self._learned.append((time.monotonic(), tid, self._gen))
        if self._relearn is None:
            self._relearn = self._loop.call_later(_RELEARN_EVERY, self._on_relearn)
        self._arm(first_due)
        return tid

    def _on_relearn(self) -> None:
        """Look the source address up again for targets learned SOURCE_TTL ago."""
        self._relearn = None
        if self._closed:
            return
        now = time.monotonic()
        learned = self._learned
        budget = _RELEARN_MAX
        while learned and budget and learned[0][0] + SOURCE_TTL <= now:
            _at, tid, gen = learned.popleft()
            found = self._specs.get(tid)
            if found is None or found[2] != gen:
                continue  # removed (and perhaps reused) since
            budget -= 1
            spec, old, _gen = found
            try:
                src = learn_source(spec)
            except OSError as exc:  # keep the old one; the probes will tell
                log.debug("health: cannot look up the source address for %s: %s", spec, exc)
                src = old
            if src != old:
                self._fleet.set_source(tid, src)
                self.relearned += 1
            self._specs[tid] = (spec, src, gen)
            learned.append((now, tid, gen))
        if learned:
            self._relearn = self._loop.call_later(_RELEARN_EVERY, self._on_relearn)

    def remove(self, tid: int) -> None:
        """Stop probing `tid`; its probe in flight is abandoned."""
        if self._closed:
            return
        self._fleet.remove_target(tid)
        self._specs.pop(tid, None)
        self._free.append(tid)

    def set_timing(self, tid: int, interval: float, timeout: float, jitter: float) -> None:
        """New interval (e.g. down_interval, fast_interval), timeout and jitter for `tid`."""
        if self._closed:
            return
        self._fleet.set_timing(tid, _ms(interval), _ms(timeout), _ppm(jitter))
        nxt = self._fleet.next_due()
        if nxt != NO_EVENT:
            self._arm(nxt / 1e9)

    def _arm(self, event: float) -> None:
        when = event + self._tick
        if when >= self._timer_at or self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self._run()

    def _on_soon(self) -> None:
        self._soon = False
        self._run()

    def _run(self) -> None:
        if self._closed:
            return
        now = time.monotonic_ns()
        buf, nxt = self._fleet.run(now)
        if buf:
            self.run_at = now / 1e9
            try:
                self._on_batch(buf)
            except Exception:  # a broken callback must not stop the fleet
                log.exception("health: syn fleet result callback failed")
            if self._closed:
                return
        if nxt == now:  # cut short at max_results: continue in a fresh callback
            if not self._soon:
                self._soon = True
                self._loop.call_soon(self._on_soon)
            return
        nxt = self._fleet.next_due()  # callbacks may have changed intervals
        if self._fleet.in_flight and nxt > now:
            nxt = now  # replies are drained every tick while probes are in flight
        if nxt != NO_EVENT:
            self._arm(nxt / 1e9)

    def close(self) -> None:
        """Stop: remove readers and timer, close lanes and the fleet. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._relearn is not None:
            self._relearn.cancel()
            self._relearn = None
        self._specs.clear()
        self._learned.clear()
        self._quiet_closed = self._fleet.quiet_passes
        self._stray_closed = self._fleet.stray
        self._fleet.close()
        for _lane_id, lane in self._lanes.values():
            lane.close()
        self._lanes.clear()
