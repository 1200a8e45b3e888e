"""Schedule active probes for many backends, feed the dampeners, report state transitions.

Design. Every backend has one `_Entry`: its probe spec, settings, dampener and the time its next
probe is due. Due times live in one heap; one asyncio timer is armed for the earliest of them.
When it fires, every probe due within the next `tick` seconds is started (so 10,000 backends at
a 1 s interval cost at most 1/tick wake-ups a second, not 10,000), at most `batch` probes per
loop callback (the rest continue in the next callback, so other callbacks such as VRRP adverts
run in between), and at most `max_in_flight` probes at once (each holds a socket; the rest wait
in a FIFO and start as probes finish, which then shows as start delay in `stats()`).

Intervals: a probe is due `Dampener.interval` after the previous one STARTED (`interval` while
UP, `down_interval` while DOWN, `fast_interval` while in transition: UP with a failure counted,
DOWN with a pass counted; see dampener.probe_interval), scaled by a random factor in
[1 - jitter, 1 + jitter], but never before the previous one finished: one backend never has two
probes in flight. The interval is chosen after the dampener has taken the result, so the probe
after a first failure is already due at `fast_interval`. The first probe of a new backend is due
at a random point of its first interval, so backends added together (start-up, reload) are
spread out instead of probed in one burst.

The interval in effect can also change outside a probe result: passive failures take the
backend DOWN (`down_interval`), a reload changes its settings. Each entry keeps what its
waiting probe's due time was computed from: the interval in effect (before jitter), the jitter
and the jitter draw. After a passive transition or a reload (`_retime`), if the interval in
effect or the jitter differs from those, the waiting probe moves to `previous start + new
interval`, scaled by the same draw (a fresh one only if the jitter was 0), never before now,
earlier or later than it was: the rule of the SYN fleet's `set_timing`, so both give the same
schedule. Nothing else a reload changes (timeout, rise, fall, kind within the heap, send and
expect...) moves it: the next probe simply runs with the new settings, and a reload that changes
nothing moves nothing. A probe in flight is left alone (its result picks the interval then in
effect, as always), and so is a first probe not yet started (it keeps its random point of the
first interval; the fleet does the same). A moved probe gets a new ident, which drops its old
heap reference (stale references are purged once they outnumber the backends). A probe
already due and waiting for a slot keeps its place in that queue if it is still due at the new
time, else it leaves the queue (its reference there is skipped, and not counted in `stats()`)
for the heap.

Backends of services with `kind = "syn"` are not in the heap: they go to a SYN fleet
(l4lb/health/synfleet.py: the C fleet, or its Python twin without the extension) that owns their
schedule, probes and timeouts and delivers results in batches; those results take the same path
as the others (`_account`: dampener, latency, counters, transitions), and whenever a result
changes the backend's `Dampener.interval` (a change of state, or the first failure or pass that
puts it in transition, or the one that ends it) the checker sets the fleet's interval for the
backend, which reschedules its waiting probe from the previous send with the same jitter draw.
A backend in transition is never quiet (below), so all its results come here. Should a backend
not fit the fleet (its lane or source address cannot be set up), it stays in the heap, where the
probe engine turns that into an inconclusive result as before. `syn_fleet="off"` keeps every
backend in the heap.

The latency of each backend's last conclusive probe is kept (`latency()`, `latencies()`): the
time from its start to its verdict, a timeout included. Inconclusive results leave it as it was.

Quiet passes. At steady state nearly every fleet result is a pass of a backend whose dampener
is `steady` (UP, confirmed, no failure counted, start period over), and such a pass changes
nothing but the last probe's result, reason, time and latency. So once a backend is steady the
checker marks it quiet in the fleet, which then counts its passes instead of reporting them
(one call when the flag changes, none per probe). What an operator can read stays exact: the
fleet-wide count of quiet passes is part of `stats().probes`; `snapshot()` and `latency()`
first collect the backend's pending passes (one call) and hand them to its dampener
(`Dampener.passes`); `latencies()` reads the latest pass of every backend in one bulk call
without collecting them (no dampener is touched, so it stays cheap at 10,000 backends). Every
path that changes the dampener or takes the backend out of the fleet collects first: a
reported result (a failure is always reported), a passive failure, a reload, a removal,
`stop()`. The flag follows `steady` after each of them.

Results reach the backend's `Dampener`; a change of state calls `on_transition(key, transition)`
synchronously on the loop (keep it short: log, mark the table dirty). Inconclusive results (local
failures: no free fd, source address missing) are counted and logged at most once a minute, and
never counted against the backend.
"""

from __future__ import annotations

import array
import asyncio
import heapq
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from l4lb.health.dampener import Dampener, Health, HealthSnapshot, Transition
from l4lb.health.probe import ProbeEngine, ProbeHandle, ProbeResult, ProbeSpec
from l4lb.health.settings import HealthSettings
from l4lb.health.synfleet import QUIET, RESULT, SynFleetRunner, probe_result
from l4lb.health.synfleet import UP as _FLEET_UP
from l4lb.health.synfleet import UP_REASON as _FLEET_UP_REASON

log = logging.getLogger("l4lb.health")

K = TypeVar("K", bound=Hashable)

_INCONCLUSIVE_LOG_EVERY = 60.0  # seconds between two warnings about local probe failures


class _Entry(Generic[K]):
    """One checked backend."""

    __slots__ = ("dampener", "draw", "due", "dynamic_weight", "fleet_id", "fleet_interval",
                 "host", "ident", "interval", "jitter", "key", "last_start", "latency", "port",
                 "probe", "queued", "quiet", "removed", "settings", "spec", "waiting")

    def __init__(self, ident: int, key: K, host: str, port: int, settings: HealthSettings,
                 dampener: Dampener) -> None:
        self.ident = ident  # checker-wide number, never reused; the heap refers to it
        self.key = key  # caller's identity of the backend
        self.host = host  # backend address
        self.port = port  # backend port (the probe may use settings.port instead)
        self.settings = settings  # health settings of its service
        self.spec = ProbeSpec.build(host, port, settings)  # what a probe does
        self.dampener = dampener  # its health state
        self.due = 0.0  # monotonic time the next probe is due (valid while queued)
        self.last_start = 0.0  # monotonic start of the last probe (0: none since scheduled)
        # what the pending due time was computed from (see _retime): the interval in effect
        # (Dampener.interval, before jitter), the jitter, and the jitter draw in [0, 1)
        # (None: none made, the jitter was 0)
        self.interval = 0.0
        self.jitter = 0.0
        self.draw: float | None = None
        self.waiting = False  # in the checker's FIFO of due probes waiting for a slot
        # its references in that FIFO: the newest is the live one while `waiting`, the older
        # ones were left behind when _retime took it out of the queue (skipped)
        self.queued = 0
        self.probe: ProbeHandle | None = None  # the probe in flight, if any
        self.latency: float | None = None  # seconds the last conclusive probe took
        self.removed = False  # set by remove(); queued references are then skipped
        self.fleet_id: int | None = None  # id in the SYN fleet while it schedules this backend
        self.quiet = False  # the fleet counts its passes instead of reporting them
        self.fleet_interval = 0.0  # the interval the fleet was last given for it (seconds)
        self.dynamic_weight: int | None = None  # set by a misc_dynamic exit status (exec)


@dataclass(frozen=True)
class CheckerStats:
    """Counters of the checker (for metrics and the benchmark)."""

    backends: int  # backends checked
    in_flight: int  # probes running now
    waiting: int  # probes due but waiting for a free slot (max_in_flight reached)
    probes: int  # probes finished since start
    failed: int  # of those, conclusive failures
    inconclusive: int  # of those, local failures not counted against the backend
    transitions: int  # state changes reported
    max_start_delay: float  # seconds: the latest any probe started after its due time
    stray: int = 0  # segments on the SYN probes' raw sockets that matched no probe


def subject(key: object) -> str:
    """How log lines name a checked backend: SERVICE/ADDRESS for the daemon's (service,
    address) keys, the key as text otherwise."""
    if isinstance(key, tuple) and len(key) == 2:
        return f"{key[0]}/{key[1]}"
    return str(key)


class HealthChecker(Generic[K]):
    """Active health checks for any number of backends on the running asyncio loop."""

    def __init__(self, on_transition: Callable[[K, Transition], None], *,
                 max_in_flight: int = 2048, batch: int = 32, tick: float = 0.005,
                 rng: random.Random | None = None, syn_fleet: str = "auto",
                 quiet_passes: bool = True,
                 on_weight: Callable[[K, int | None, int, str], None] | None = None) -> None:
        if max_in_flight < 1 or batch < 1 or tick < 0:
            raise ValueError("max_in_flight and batch must be >= 1, tick >= 0")
        if syn_fleet not in ("auto", "c", "py", "off"):
            raise ValueError("syn_fleet must be auto, c, py or off")
        self._on_transition = on_transition  # called as (key, transition)
        # called as (key, old weight, new weight, reason) when a misc_dynamic exit status
        # changes a backend's weight (kind "exec" with dynamic = true)
        self._on_weight = on_weight
        self._max_in_flight = max_in_flight  # probes (sockets) at once
        self._batch = batch  # probes started per loop callback
        self._tick = tick  # probes due this soon are started together
        self._rng = rng if rng is not None else random.Random()  # jitter source
        self._entries: dict[K, _Entry[K]] = {}  # by key
        # The due heap holds (due, ident) tuples: no GC-tracked object, so the 10,000 a second
        # pushed here never reach the old generation (see ProbeEngine._register).
        self._heap: list[tuple[float, int]] = []  # stale idents (removed entries) are skipped
        self._by_ident: dict[int, _Entry[K]] = {}  # ident -> entry, while checked
        self._idents = 0  # last ident handed out
        self._waiting: deque[_Entry[K]] = deque()  # due, no free slot yet
        self._in_flight = 0  # probes running
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self._engine: ProbeEngine | None = None  # set by start()
        self._timer: asyncio.TimerHandle | None = None  # armed for the earliest due time
        self._timer_at = float("inf")  # when _timer fires
        self._kick_pending = False  # a call_soon(_run) is queued
        self._probes = 0  # counters, see CheckerStats
        self._failed = 0
        self._inconclusive = 0
        self._transitions = 0
        self._max_start_delay = 0.0
        self._last_inconclusive_log = -_INCONCLUSIVE_LOG_EVERY  # monotonic
        self._result_cb = self._on_result  # one bound method for every probe, not one each
        self._syn_fleet = syn_fleet  # fleet implementation for kind "syn": auto, c, py, off
        self._fleet: SynFleetRunner | None = None  # opened by the first syn backend
        self._by_fleet_id: dict[int, _Entry[K]] = {}  # fleet id -> entry
        self._quiet_passes = quiet_passes  # let the fleet count passes of steady backends
        self._stray = 0  # stray segments of SYN engines and fleets already closed

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Begin probing on the running loop (backends may be added before or after)."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._engine = ProbeEngine(self._loop)
        now = time.monotonic()
        for entry in self._entries.values():
            self._schedule_new(entry, now)
        self._arm_for_heap()

    def stop(self) -> None:
        """Cancel every probe and timer; the checker can be started again. Idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = float("inf")
        self._collect_all()
        for entry in self._entries.values():
            if entry.probe is not None:
                entry.probe.cancel()
                entry.probe = None
            entry.fleet_id = None
            entry.quiet = False
            entry.waiting = False  # the queue is cleared below
            entry.queued = 0
        if self._fleet is not None:
            self._fleet.close()
            self._probes += self._fleet.quiet_passes
            self._stray += self._fleet.stray
            self._fleet = None
        self._by_fleet_id.clear()
        if self._engine is not None:
            syn = self._engine.syn_engine
            if syn is not None:
                self._stray += syn.stray
            self._engine.close()
            self._engine = None
        self._loop = None
        self._heap.clear()
        self._waiting.clear()
        self._in_flight = 0
        self._kick_pending = False

    # -- backends --------------------------------------------------------------------------

    def add(self, key: K, host: str, port: int, settings: HealthSettings) -> None:
        """Check backend `key` at host:port. Adding an existing key with the same target keeps
        its state and applies the settings (reload); a changed target starts afresh."""
        now = time.monotonic()
        old = self._entries.get(key)
        if old is not None and old.host == host and old.port == port:
            spec = ProbeSpec.build(host, port, settings)  # may raise: change nothing before
            if old.quiet:  # the passes so far happened under the old settings
                self._collect(old)
            old_spec = old.spec
            old.spec = spec
            old.settings = settings
            old.dampener.reconfigure(settings)
            if not (settings.kind == "exec" and settings.dynamic):
                old.dynamic_weight = None  # misc_dynamic turned off: the base weight again
            if self._loop is None:
                return
            if old.fleet_id is not None and spec.syn and (spec.sockaddr, spec.source) == \
                    (old_spec.sockaddr, old_spec.source):
                self._fleet_timing(old)
                self._sync_quiet(old)
            elif old.fleet_id is not None or (spec.syn and self._fleet_wanted()):
                self._reschedule_elsewhere(old, now)
            else:
                self._retime(old, now)
            return
        if old is not None:
            self.remove(key)
        self._idents += 1
        entry = _Entry(self._idents, key, host, port, settings, Dampener(settings, now))
        self._entries[key] = entry
        self._by_ident[entry.ident] = entry
        if self._loop is not None:
            self._schedule_new(entry, now)
            self._arm_for_heap()

    def remove(self, key: K) -> None:
        """Stop checking `key` (its probe in flight is abandoned). Unknown keys are ignored."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        entry.removed = True
        del self._by_ident[entry.ident]
        if self._abandon(entry):
            self._kick()

    def keys(self) -> list[K]:
        """Every checked backend."""
        return list(self._entries)

    def state(self, key: K) -> Health:
        """Current health of `key` (KeyError if unknown)."""
        return self._entries[key].dampener.state

    def dynamic_weights(self) -> dict[K, int]:
        """The weight misc_dynamic exit statuses set, of every backend that has one."""
        return {key: e.dynamic_weight for key, e in self._entries.items()
                if e.dynamic_weight is not None}

    def proven(self, key: K) -> bool:
        """False while `key` is unproven: DOWN by initial_state "down", no verdict yet."""
        return self._entries[key].dampener.proven

    def up_since(self, key: K) -> float | None:
        """Monotonic time `key` last came UP from DOWN (start of its slow-start ramp)."""
        return self._entries[key].dampener.up_since

    def snapshot(self, key: K) -> HealthSnapshot:
        """Health of `key` for display."""
        entry = self._entries[key]
        if entry.quiet:
            self._collect(entry)
        return entry.dampener.snapshot(time.monotonic())

    def latency(self, key: K) -> float | None:
        """Seconds the last conclusive probe of `key` took; None before the first (KeyError
        if unknown)."""
        entry = self._entries[key]
        if entry.quiet:
            self._collect(entry)
        return entry.latency

    def views(self, to_wall: float) -> dict[K, dict[str, Any]]:
        """`Dampener.view()` of every backend, for display, in one bulk read. As in
        `latencies()`, the pending passes of quiet backends are read, not collected: such a
        backend is steady, so its passes change nothing but the last probe's result, reason
        and time, which are filled in from the fleet's record. No dampener changes."""
        now = time.monotonic()
        buf = self._fleet.collect_all(False) if self._fleet is not None else b""
        pending = {fid: last_ns for fid, _lat, _count, last_ns in QUIET.iter_unpack(buf)}
        out: dict[K, dict[str, Any]] = {}
        for key, e in self._entries.items():
            view = e.dampener.view(now, to_wall)
            last_ns = pending.get(e.fleet_id) if e.quiet and e.fleet_id is not None else None
            if last_ns is not None:
                view.update(last_result="passed", last_reason=_FLEET_UP_REASON,
                            last_probe=last_ns / 1e9 + to_wall)
            out[key] = view
        return out

    def latencies(self) -> dict[K, float]:
        """Last conclusive probe latency of every backend that has one (a fresh dict)."""
        buf = self._fleet.collect_all(False) if self._fleet is not None else b""
        if not buf:
            return {key: e.latency for key, e in self._entries.items() if e.latency is not None}
        # The latest quiet pass of each backend that has some, read in one call and not
        # collected: nothing here needs the dampeners, and handing 10,000 backends' passes to
        # them would cost tens of milliseconds in one callback. QUIET records as native u32
        # words: id, latency, then count and last_ns (two words each).
        words = array.array("I", buf)
        pending = dict(zip(words[0::6], words[1::6], strict=True)).get  # fleet id -> latency us
        out: dict[K, float] = {}
        for key, e in self._entries.items():
            fid = e.fleet_id
            lat_us = pending(fid) if e.quiet and fid is not None else None
            if lat_us is not None:
                out[key] = lat_us / 1e6
            elif e.latency is not None:
                out[key] = e.latency
        return out

    def passive_failures(self, key: K, count: int) -> None:
        """Feed `count` connect failures the data plane counted for `key` since the last call."""
        entry = self._entries.get(key)
        if entry is None:
            return
        if entry.quiet:  # its passes came before these failures
            self._collect(entry)
        now = time.monotonic()
        transition = entry.dampener.passive_failures(count, now)
        if transition is not None:
            self._report(entry, transition)
            if entry.removed or self._entries.get(key) is not entry:
                return  # the transition callback removed (or replaced) it
            if entry.fleet_id is not None:
                self._fleet_timing(entry)
                self._sync_quiet(entry)
            else:
                self._retime(entry, now)

    def stats(self) -> CheckerStats:
        """Counters since construction."""
        fleet = self._fleet
        in_flight = self._in_flight + (fleet.in_flight if fleet is not None else 0)
        quiet = fleet.quiet_passes if fleet is not None else 0
        syn = self._engine.syn_engine if self._engine is not None else None
        stray = self._stray + (fleet.stray if fleet is not None else 0) + \
            (syn.stray if syn is not None else 0)
        return CheckerStats(backends=len(self._entries), in_flight=in_flight,
                            waiting=self._waiting_count(), probes=self._probes + quiet,
                            failed=self._failed, inconclusive=self._inconclusive,
                            transitions=self._transitions,
                            max_start_delay=self._max_start_delay, stray=stray)

    def _waiting_count(self) -> int:
        """Probes in the queue that still wait (the queue may hold references to removed
        backends and to ones _retime moved later; _run skips those)."""
        return len({id(e) for e in self._waiting if e.waiting and not e.removed})

    # -- the SYN fleet ---------------------------------------------------------------------

    def _fleet_wanted(self) -> bool:
        return self._syn_fleet != "off"

    def _schedule_new(self, entry: _Entry[K], now: float) -> None:
        """First probe of a (new, or moved) backend: in the fleet if it takes it, else the heap."""
        first = now + self._rng.uniform(0, entry.settings.interval)
        entry.last_start = 0.0  # no probe since: _retime leaves the first one where it is
        entry.interval = entry.dampener.interval
        entry.jitter = entry.settings.jitter
        entry.draw = None
        entry.waiting = False
        if entry.spec.syn and self._fleet_wanted() and self._loop is not None:
            if self._fleet is None:
                self._fleet = SynFleetRunner(self._loop, self._on_fleet_batch,
                                             impl=self._syn_fleet, seed=self._rng.getrandbits(64),
                                             tick=self._tick)
            try:
                interval = entry.dampener.interval
                fid = self._fleet.add(entry.spec, interval, entry.settings.jitter, first)
            except OSError as exc:
                log.debug("health: %s stays off the syn fleet: %s", entry.spec, exc)
            else:
                entry.fleet_id = fid
                entry.fleet_interval = interval
                self._by_fleet_id[fid] = entry
                return
        self._push(entry, first)

    def _abandon(self, entry: _Entry[K]) -> bool:
        """Take the backend out of the fleet and cancel its probe in flight; True when a probe
        was cancelled (a slot for a waiting probe is free)."""
        if entry.fleet_id is not None:
            if entry.quiet:
                self._collect(entry)
                entry.quiet = False
            self._by_fleet_id.pop(entry.fleet_id, None)
            if self._fleet is not None:
                self._fleet.remove(entry.fleet_id)
            entry.fleet_id = None
        if entry.probe is None:
            return False
        entry.probe.cancel()
        entry.probe = None
        self._in_flight -= 1
        return True

    def _reschedule_elsewhere(self, entry: _Entry[K], now: float) -> None:
        """The backend's probe kind or target changed across the fleet boundary: abandon what
        runs and schedule it afresh (a new ident drops its old heap references)."""
        self._abandon(entry)
        del self._by_ident[entry.ident]
        self._idents += 1
        entry.ident = self._idents
        self._by_ident[entry.ident] = entry
        self._schedule_new(entry, now)
        self._arm_for_heap()
        self._kick()

    def _fleet_timing(self, entry: _Entry[K]) -> None:
        if self._fleet is not None and entry.fleet_id is not None:
            interval = entry.dampener.interval
            self._fleet.set_timing(entry.fleet_id, interval, entry.settings.timeout,
                                   entry.settings.jitter)
            entry.fleet_interval = interval

    def _set_quiet(self, entry: _Entry[K], quiet: bool) -> None:
        if self._fleet is not None and entry.fleet_id is not None:
            self._fleet.set_quiet(entry.fleet_id, quiet)
            entry.quiet = quiet

    def _sync_quiet(self, entry: _Entry[K]) -> None:
        """Quiet exactly while the backend's passes change nothing (see the module docstring);
        call after its pending passes were collected and its dampener was updated."""
        quiet = self._quiet_passes and entry.fleet_id is not None and entry.dampener.steady
        if quiet != entry.quiet:
            self._set_quiet(entry, quiet)

    def _apply_quiet(self, entry: _Entry[K], count: int, last: float, lat_us: int) -> None:
        """Hand `count` passes counted by the fleet, the last at `last`, to the backend (they
        are in stats().probes already, through the fleet's counter)."""
        entry.latency = lat_us / 1e6
        transition = entry.dampener.passes(count, _FLEET_UP_REASON, last)
        if transition is not None:  # not while steady; kept for safety
            self._report(entry, transition)

    def _collect(self, entry: _Entry[K]) -> None:
        """Bring a quiet backend up to date with the passes the fleet counted for it."""
        if self._fleet is None or entry.fleet_id is None:
            return
        count, last, lat_us = self._fleet.collect(entry.fleet_id)
        if count:
            self._apply_quiet(entry, count, last, lat_us)

    def _collect_all(self) -> None:
        """`_collect` for every backend, in one call to the fleet."""
        if self._fleet is None:
            return
        by_fleet_id = self._by_fleet_id
        for fid, lat_us, count, last_ns in QUIET.iter_unpack(self._fleet.collect_all()):
            entry = by_fleet_id.get(fid)
            if entry is not None:
                self._apply_quiet(entry, count, last_ns / 1e9, lat_us)

    def _on_fleet_batch(self, buf: bytes) -> None:
        """Results of one fleet run (RESULT records): the same path as the heap's probes.
        Passes of quiet backends do not come here (see the module docstring)."""
        fleet = self._fleet
        now = fleet.run_at if fleet is not None else time.monotonic()
        by_fleet_id = self._by_fleet_id
        up = Health.UP
        quiet_passes = self._quiet_passes
        passed = 0
        for fid, verdict, err, lat_us in RESULT.iter_unpack(buf):
            entry = by_fleet_id.get(fid)
            if entry is None:
                continue  # removed, perhaps by a transition callback of this batch
            if entry.quiet:  # a failure (or inconclusive) of a quiet backend: passes first
                self._collect(entry)
            dampener = entry.dampener
            before = dampener.state
            if verdict == _FLEET_UP and before is up:
                # _account's common case, inlined: a conclusive pass of an UP backend counts,
                # sets the latency and never changes the state; the backend is steady after it
                passed += 1
                entry.latency = lat_us / 1e6
                dampener.probe(True, _FLEET_UP_REASON, now)
                if entry.fleet_interval != entry.settings.interval:  # it was going down
                    self._fleet_timing(entry)
                if quiet_passes and not entry.quiet:
                    self._set_quiet(entry, True)
                continue
            self._account(entry, probe_result(verdict, err, lat_us), now)
            if not entry.removed and entry.fleet_id == fid:
                if dampener.state is not before or dampener.interval != entry.fleet_interval:
                    self._fleet_timing(entry)
                self._sync_quiet(entry)
        self._probes += passed

    # -- scheduling ------------------------------------------------------------------------

    def _push(self, entry: _Entry[K], due: float) -> None:
        entry.due = due
        heapq.heappush(self._heap, (due, entry.ident))

    def _arm_for_heap(self) -> None:
        """Make sure the timer fires for the earliest due time in the heap."""
        heap = self._heap
        while heap and heap[0][1] not in self._by_ident:
            heapq.heappop(heap)
        if not heap or self._loop is None:
            return
        when = heap[0][0]
        if when >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _kick(self) -> None:
        """Run the scheduler soon (a slot was freed while probes are waiting)."""
        if self._waiting and not self._kick_pending and self._loop is not None:
            self._kick_pending = True
            self._loop.call_soon(self._run)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self._run()

    def _run(self) -> None:
        self._kick_pending = False
        engine = self._engine
        if engine is None:
            return
        now = time.monotonic()
        budget = self._batch
        waiting = self._waiting
        while waiting and budget and self._in_flight < self._max_in_flight:
            entry = waiting.popleft()
            entry.queued -= 1
            # not waiting any more: rescheduled to a later time by _retime; or a reference it
            # left behind, older than the entry's live one (which keeps its own place)
            if entry.waiting and not entry.queued and not entry.removed and \
                    entry.fleet_id is None:
                entry.waiting = False
                self._launch(engine, entry, now)
                budget -= 1
        horizon = now + self._tick
        heap = self._heap
        by_ident = self._by_ident
        heappop = heapq.heappop
        start = engine.start
        result_cb = self._result_cb
        max_in_flight = self._max_in_flight
        max_delay = self._max_start_delay
        while heap and heap[0][0] <= horizon and budget:
            found = by_ident.get(heappop(heap)[1])
            if found is None or found.fleet_id is not None:
                continue
            entry = found
            if self._in_flight < max_in_flight:
                # _launch, inlined: this loop starts every probe
                delay = now - entry.due
                if delay > max_delay:
                    max_delay = delay
                entry.last_start = now
                self._in_flight += 1
                entry.probe = start(entry.spec, result_cb, entry)
                budget -= 1
            else:
                entry.waiting = True
                entry.queued += 1
                waiting.append(entry)
        if max_delay > self._max_start_delay:
            self._max_start_delay = max_delay
        more_due = bool(waiting) or bool(heap and heap[0][0] <= horizon)
        if not budget and more_due and not self._kick_pending and self._loop is not None:
            # continue in a fresh callback so the loop runs the others (VRRP) in between
            self._kick_pending = True
            self._loop.call_soon(self._run)
        self._arm_for_heap()

    def _launch(self, engine: ProbeEngine, entry: _Entry[K], now: float) -> None:
        delay = now - entry.due
        if delay > self._max_start_delay:
            self._max_start_delay = delay
        entry.last_start = now
        self._in_flight += 1
        entry.probe = engine.start(entry.spec, self._result_cb, entry)

    def _on_result(self, entry: _Entry[K], result: ProbeResult) -> None:
        if entry.removed:
            return
        entry.probe = None
        self._in_flight -= 1
        now = time.monotonic()
        ident = entry.ident
        self._account(entry, result, now)
        if entry.removed or entry.fleet_id is not None or entry.ident != ident:
            # the transition callback moved it (a re-add: _retime scheduled it); its slot is
            # free all the same
            self._kick()
            return
        interval = entry.dampener.interval  # after the result: fast_interval if in transition
        jitter = entry.settings.jitter
        entry.interval = interval  # what the due time is computed from (see _retime)
        entry.jitter = jitter
        if jitter:
            draw = entry.draw = self._rng.random()
            interval *= 1.0 - jitter + 2.0 * jitter * draw
        else:
            entry.draw = None
        due = entry.last_start + interval
        if due < now:
            due = now
        entry.due = due  # _push, inlined
        heapq.heappush(self._heap, (due, entry.ident))
        if self._timer_at > due:
            self._arm_for_heap()
        if self._waiting:
            self._kick()

    def _retime(self, entry: _Entry[K], now: float) -> None:
        """The interval in effect for a heap backend (`Dampener.interval`) or its jitter may have
        changed outside a probe result (a passive transition, a reload): if so, move its waiting
        probe to `previous start + new interval`, scaled by the same jitter draw, never before
        `now`, earlier or later than it was (the SYN fleet's `set_timing`). Nothing moves when
        neither changed (a reload that changes nothing), when a probe is in flight (its result
        schedules the next one with the interval then in effect) or before the first probe
        (it stays at its random point of the first interval, as on the fleet)."""
        if entry.fleet_id is not None or entry.removed or self._loop is None:
            return
        interval = entry.dampener.interval
        jitter = entry.settings.jitter
        if interval == entry.interval and jitter == entry.jitter:
            return
        if entry.probe is not None or not entry.last_start:
            return  # the interval is read when the result comes, or at the first probe
        entry.interval = interval
        entry.jitter = jitter
        if jitter:
            draw = entry.draw
            if draw is None:  # the jitter was 0 when it was scheduled: draw as _on_result does
                draw = entry.draw = self._rng.random()
            interval *= 1.0 - jitter + 2.0 * jitter * draw
        due = entry.last_start + interval
        if due < now:
            due = now
        if entry.waiting:  # due already, waiting for a slot
            if due <= now:
                return  # still due: it keeps its place in the queue
            entry.waiting = False  # _run skips its reference in the queue
        # a new ident drops the old heap reference (the idents of the heap are never reused)
        del self._by_ident[entry.ident]
        self._idents += 1
        entry.ident = self._idents
        self._by_ident[entry.ident] = entry
        self._push(entry, due)
        if len(self._heap) > 2 * len(self._by_ident) + 64:
            self._compact_heap()
        self._arm_for_heap()

    def _compact_heap(self) -> None:
        """Drop the stale references (old idents) from the heap: a reload that moves every
        backend's probe earlier leaves one behind per backend, below the top, where it would
        stay until its old due time. A live entry has at most one reference, under its
        current ident."""
        by_ident = self._by_ident
        heap = self._heap  # in place: _run may hold it
        heap[:] = [item for item in heap if item[1] in by_ident]
        heapq.heapify(heap)

    def _account(self, entry: _Entry[K], result: ProbeResult, now: float) -> None:
        """The result path shared by the heap's probes and the fleet's: counters, latency,
        dampener, transitions."""
        self._probes += 1
        ok, reason, latency, conclusive, weight = result
        if not conclusive:
            self._inconclusive += 1
            if now - self._last_inconclusive_log >= _INCONCLUSIVE_LOG_EVERY:
                self._last_inconclusive_log = now
                log.warning("backend %s: probe of %s could not be made: %s (not counted "
                            "against the backend)", subject(entry.key), entry.spec, reason)
        else:
            entry.latency = latency
            if not ok:
                self._failed += 1
            if weight is not None and not entry.settings.dynamic:
                weight = None  # a probe started before a reload turned misc_dynamic off
            if weight is not None and weight != entry.dynamic_weight:
                old, entry.dynamic_weight = entry.dynamic_weight, weight
                if self._on_weight is not None:
                    try:
                        self._on_weight(entry.key, old, weight, reason)
                    except Exception:  # the checker must keep running whatever it does
                        log.exception("health: weight callback failed for %s", entry.spec)
            transition = entry.dampener.probe(ok, reason, now)
            if transition is not None:
                self._report(entry, transition)

    def _report(self, entry: _Entry[K], transition: Transition) -> None:
        self._transitions += 1
        try:
            self._on_transition(entry.key, transition)
        except Exception:  # the checker must keep running whatever the callback does
            log.exception("health: transition callback failed for %s", entry.spec)
