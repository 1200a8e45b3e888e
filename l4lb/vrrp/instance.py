"""Run one VRRP instance on the asyncio loop: sockets, timers, VIPs, GARPs, tracking, notify.

`VrrpInstance` owns one `VrrpFsm` (l4lb.vrrp.fsm) driven by the real monotonic clock, and
executes the actions it returns:

- `SendAdvert` at once, on the raw socket (l4lb.vrrp.io), to the group or to every unicast peer;
- `AddVips` / `RemoveVips` / `SendGarp` in order on the "vip lane", a task that runs one job
  after another: netlink requests are awaited there (l4lb.net.vip), never on the timer path,
  and a GARP burst always follows the address it announces;
- `Notify`: recorded for `status()`, logged, handed to the `on_notify` hook, and the notify
  program (if configured) is run on the "notify lane" as an asyncio subprocess with a timeout:
  `NOTIFY INSTANCE NAME STATE PRIORITY`, STATE one of MASTER, BACKUP, FAULT, STOP.

Timers: one `call_later` handle, re-armed after every event for `fsm.deadline`. Nothing on the
loop's timer path blocks, so an advert goes out when its timer fires plus however long the
callback before it ran; `status()` reports the worst lateness seen (`timer_late_max_ms`).

Receiving: the advert socket is registered with `add_reader`; each wake-up drains at most
`MAX_BATCH` datagrams. A datagram that fails a check of RFC 5798 7.1 / RFC 3768 7.1 (see
l4lb.vrrp.packet) is dropped and counted by reason; each reason is logged at most once a
minute ("vrid" drops, normal with other routers on the segment, only at debug level).

VIPs go on their own interface (`dev`, VrrpSettings.placed_vips; default the instance's): each
is added to, removed from and announced on it, with that interface's MAC, on a frame socket
of that interface. The adverts (on the instance's interface) list them all the same.

Tracking: the instance's own interface, every interface carrying a VIP and `track_interfaces`
are watched (VrrpSettings.tracked_interfaces, l4lb.net.vip's LinkWatcher); one that is down is
a fault and puts the instance in FAULT. `set_tracking()` feeds service health: a tracked
service with weight 0 and no healthy backend is a fault; other weights move the effective
priority (negative while unhealthy, positive while healthy).

Lifecycle: `await start()` (raises VrrpError when the interface or its address is missing, or
a socket cannot be opened), `await stop(graceful=True)`: a master sends a priority-0 advert (the
backup takes over after Skew_Time instead of Master_Down_Interval), the VIPs are removed, the
STOP notification runs, the sockets are closed. `stop(graceful=False)` skips the priority-0
advert. Everything runs on the loop that called start(); the instance is not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from l4lb.net.vip import LinkWatcher, Netlink, VipError, VipInterface
from l4lb.vrrp.announce import announce
from l4lb.vrrp.fsm import (
    Action,
    AddVips,
    Notify,
    RemoveVips,
    SendAdvert,
    SendGarp,
    State,
    VrrpFsm,
)
from l4lb.vrrp.io import AdvertSocket, FrameSocket, Ipv4Socket, Ipv6Socket, ipv6_forwarding
from l4lb.vrrp.packet import (
    AUTH_NONE,
    AUTH_SIMPLE,
    REASONS,
    VRRP_GROUP_V4,
    VRRP_GROUP_V6,
    Advert,
    Expect,
    IPAddress,
    PacketError,
    password_bytes,
)
from l4lb.vrrp.settings import VrrpSettings

log = logging.getLogger("l4lb.vrrp")

MAX_BATCH: Final = 64  # datagrams read per wake-up; the rest wait for the next loop turn
LOG_EVERY: Final = 60.0  # seconds between two log lines about the same drop reason / error
NOTIFY_TIMEOUT: Final = 30.0  # seconds a notify program may run before it is killed
STOP_TIMEOUT: Final = 5.0  # seconds stop() waits for VIP removal and the STOP notification
NOTIFY_STATE: Final = {State.INIT: "STOP", State.BACKUP: "BACKUP", State.MASTER: "MASTER",
                       State.FAULT: "FAULT"}

Clock = Callable[[], int]
Job = Callable[[], Awaitable[None] | None]


def monotonic_us() -> int:
    """The production clock of the state machine: monotonic integer microseconds."""
    return time.monotonic_ns() // 1000


class SyncHook(Protocol):
    """The sync group an instance belongs to (l4lb.vrrp.group runs it)."""

    def attach(self, name: str, fsm: VrrpFsm) -> None:
        """The member `name` created its state machine (before its start event)."""

    def after(self, name: str, actions: list[Action]) -> None:
        """The member `name` executed the actions of one event (possibly none)."""


class VrrpError(Exception):
    """The instance cannot start (interface or address missing, sockets refused)."""


@dataclass
class Counters:
    """What the instance did and refused since it started."""

    adverts_sent: int = 0  # datagrams sent (one per peer in unicast mode)
    adverts_received: int = 0  # valid adverts for this instance
    send_errors: int = 0  # adverts or frames the kernel refused
    garp_sent: int = 0  # gratuitous ARP frames sent
    na_sent: int = 0  # unsolicited neighbour advertisements sent
    vip_errors: int = 0  # netlink add/remove failures
    notify_runs: int = 0  # notify program runs
    notify_errors: int = 0  # runs that failed to start, exited non-zero or timed out
    transitions: int = 0  # state changes
    became_master: int = 0  # of those, into MASTER
    drops: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(sorted(REASONS), 0))  # by packet.REASONS


class Lane:
    """Runs submitted jobs one after another, in order, on a task of the running loop."""

    def __init__(self, name: str) -> None:
        self.name = name  # for log lines
        self._queue: asyncio.Queue[tuple[str, Job]] = asyncio.Queue()  # pending jobs
        self._task = asyncio.get_running_loop().create_task(self._run(), name=name)

    def submit(self, label: str, job: Job) -> None:
        """Queue `job` (a plain or async function) after every job submitted before."""
        self._queue.put_nowait((label, job))

    async def join(self, timeout: float) -> bool:
        """Wait until every queued job ran; False when `timeout` passed first."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Cancel the running job and drop the queued ones."""
        self._task.cancel()

    async def _run(self) -> None:
        while True:
            label, job = await self._queue.get()
            try:
                result = job()
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: %s failed", self.name, label)
            finally:
                self._queue.task_done()


class _Throttle:
    """Allows one log line per key per LOG_EVERY seconds and counts what it held back."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}  # key -> monotonic time of its last line
        self._held: dict[str, int] = {}  # key -> events not logged since

    def allow(self, key: str) -> int | None:
        """None: stay quiet; otherwise log now, the number of events held back is returned."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < LOG_EVERY:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


@dataclass(frozen=True)
class Transition:
    """The last state change, for status()."""

    previous: State  # state left
    state: State  # state entered
    reason: str  # why
    at: float  # unix time


class VrrpInstance:
    """One VRRP instance on the running asyncio loop (see the module docstring)."""

    def __init__(self, settings: VrrpSettings, *,
                 on_notify: Callable[[Notify], None] | None = None,
                 clock: Clock = monotonic_us, sync: SyncHook | None = None) -> None:
        self.settings = settings  # validated configuration
        self.sync = sync  # the sync group it is a member of (settings.sync_group)
        self._on_notify = on_notify  # called on every state change (after logging)
        self._clock = clock  # monotonic microseconds (the loop must use the same clock)
        self.fsm: VrrpFsm | None = None  # created by start()
        self.counters = Counters()
        self.address: IPAddress | None = None  # advert source / tie-breaker, set by start()
        self.vips_held = False  # the VIPs were last added (True) or removed (False)
        self.last_transition: Transition | None = None
        self.last_advert: tuple[IPAddress, int, int] | None = None  # (src, priority, at µs)
        self.timer_late_max_us = 0  # worst lateness of the timer callback
        self._links: dict[str, bool] = {}  # tracked interface -> up
        self._services: dict[str, bool] = {t.service: True for t in settings.track_services}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._netlink: Netlink | None = None
        self._watcher: LinkWatcher | None = None
        self._sock: AdvertSocket | None = None
        self._frames: dict[str, FrameSocket] = {}  # VIP interface -> its frame socket
        self._macs: dict[str, bytes] = {}  # VIP interface -> its MAC, source of GARP / NA
        self._vip_lane: Lane | None = None
        self._notify_lane: Lane | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None  # the deadline _timer is armed for
        self._refresh: asyncio.TimerHandle | None = None  # garp_refresh while MASTER
        self._expect = Expect()  # receive checks, set by start()
        self._dests: tuple[IPAddress, ...] = ()  # group, or every unicast peer
        self._throttle = _Throttle()
        self._stopped = False

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state (INIT before start and after stop)."""
        return State.INIT if self.fsm is None else self.fsm.state

    async def start(self, resume: VrrpInstance | None = None) -> None:
        """Open the sockets, resolve the interface and begin the election (BACKUP first).

        `resume`: the instance of the same virtual router these settings replace at a reload,
        already detached (l4lb.vrrp.reloadplan); this one takes over its counters and last
        transition, and if it was MASTER, starts MASTER at once: the state did not change, so
        no transition is counted and no notify program runs."""
        if self._loop is not None:
            raise VrrpError(f"vrrp {self.settings.name}: already started")
        s = self.settings
        if not has_net_admin():
            raise VrrpError(f"vrrp {s.name}: cannot add its virtual addresses: this process "
                            "lacks CAP_NET_ADMIN (run it as root, or give the unit "
                            "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW); a MASTER without "
                            "its addresses would keep the peer from taking them")
        self._loop = asyncio.get_running_loop()
        self._netlink = Netlink()
        try:
            await self._open()
        except BaseException:
            await self._close()
            raise
        self._expect = Expect(
            vrid=s.virtual_router_id, version=s.version,
            interval_cs=s.interval_cs if s.version == 2 else None,
            addresses=frozenset(s.advertised),
            password=s.auth_pass.encode() if s.auth_pass is not None else None,
            check_ttl=not s.unicast_peers)
        self._dests = s.peers or ((VRRP_GROUP_V4,) if s.family == 4 else (VRRP_GROUP_V6,))
        fsm = self.fsm
        assert fsm is not None
        for name, up in self._links.items():
            if not up:
                fsm.set_fault(_link_fault(name), True)
        self._apply_services()
        log.info("vrrp %s: starting on %s: VRID %d, priority %d, VRRPv%d, %s, source %s, "
                 "advert interval %gs", s.name, s.interface, s.virtual_router_id, s.priority,
                 s.version, "unicast to " + ", ".join(s.unicast_peers) if s.unicast_peers
                 else "multicast", self.address, s.advert_interval)
        if resume is not None:
            self.counters = resume.counters
            self.last_transition = resume.last_transition
        if resume is None or resume.state is not State.MASTER:
            self._run(fsm.start())
            return
        actions = fsm.resume_master("reload: new settings, MASTER kept")
        if fsm.state is State.MASTER:
            log.info("vrrp %s: MASTER kept across the reload", s.name)
            actions = [a for a in actions if not isinstance(a, Notify)]
        self._run(actions)
        if fsm.state is State.MASTER:
            self._arm_refresh(True)  # what the skipped transition would have armed

    async def _open(self) -> None:
        s = self.settings
        assert self._netlink is not None and self._loop is not None
        opening = s.interface  # the interface the error below is about
        try:
            info = await self._netlink.link(s.interface)
            if info is None:
                raise VrrpError(f"vrrp {s.name}: no interface named {s.interface}")
            self._macs[s.interface] = info.mac
            for name in s.vip_links:
                opening = name
                link = await self._netlink.link(name)
                if link is None:
                    raise VrrpError(f"vrrp {s.name}: no interface named {name} (a VIP's dev)")
                self._macs[name] = link.mac
            opening = s.interface
            self.address = s.source or await self._primary_address()
            self.fsm = VrrpFsm(s.fsm_config(self.address), self._clock)
            if self.sync is not None:
                self.sync.attach(s.name, self.fsm)
            if s.family == 4:
                self._sock = Ipv4Socket(s.interface, info.index, multicast=not s.unicast_peers)
            else:
                assert isinstance(self.address, ipaddress.IPv6Address)
                self._sock = Ipv6Socket(s.interface, info.index, self.address,
                                        multicast=not s.unicast_peers)
            for name in (s.interface, *s.vip_links):
                opening = name
                self._frames[name] = FrameSocket(name)
        except (OSError, VipError) as exc:
            raise VrrpError(f"vrrp {s.name}: cannot open {opening}: "
                            f"{exc.strerror or exc}") from None
        self._vip_lane = Lane(f"vrrp {s.name} vips")
        self._notify_lane = Lane(f"vrrp {s.name} notify")
        self._loop.add_reader(self._sock.fileno(), self._on_readable)
        self._watcher = LinkWatcher(s.tracked_interfaces, self._on_link)
        try:
            self._links = await self._watcher.start()
        except Exception as exc:
            raise VrrpError(f"vrrp {s.name}: cannot watch interfaces: {exc}") from None

    async def _primary_address(self) -> IPAddress:
        s = self.settings
        assert self._netlink is not None
        vips = {v.ip for v in s.vip_interfaces}
        for addr in await self._netlink.addresses(s.interface):
            if addr.version != s.family or addr.ip in vips:
                continue
            if s.family == 4 or addr.ip.is_link_local:
                return addr.ip
        kind = "IPv4 address" if s.family == 4 else "IPv6 link-local address"
        raise VrrpError(f"vrrp {s.name}: interface {s.interface} has no {kind} to send adverts "
                        "from (add one, or set source_address)")

    async def stop(self, graceful: bool = True) -> None:
        """Leave the election: (graceful) priority-0 advert if master, remove VIPs, STOP
        notification, close everything. Idempotent; waits at most STOP_TIMEOUT for the VIPs
        and the notify program."""
        if self._stopped:
            return
        self._stopped = True
        fsm = self.fsm
        if fsm is not None and self._loop is not None:
            actions = fsm.shutdown()
            if not graceful:
                actions = [a for a in actions if not isinstance(a, SendAdvert)]
            if self.vips_held and not any(isinstance(a, RemoveVips) for a in actions):
                actions.insert(0, RemoveVips())
            self._execute(actions)
            self._cancel_timers()
            if self.sync is not None:
                self.sync.after(self.settings.name, actions)
            for lane in (self._vip_lane, self._notify_lane):
                if lane is not None and not await lane.join(STOP_TIMEOUT):
                    log.warning("%s: still busy after %gs; abandoned", lane.name, STOP_TIMEOUT)
        await self._close()
        log.info("vrrp %s: stopped", self.settings.name)

    async def detach(self, drop: Sequence[tuple[VipInterface, str]] = ()) -> None:
        """Stop speaking for the router without leaving it, because a reload replaces these
        settings with others for the same router (l4lb.vrrp.reloadplan): no priority-0
        advert, no notify program, and the VIPs stay where they are, except `drop` (VIPs
        these settings placed that the new ones do not), which are removed first if held.
        Waits at most STOP_TIMEOUT for the VIP operations."""
        if self._stopped:
            return
        if self.vips_held and drop:
            dropped = tuple(drop)

            async def remove() -> None:
                for vip, ifname in dropped:
                    await self._vip_op(vip, ifname, add=False)
            self._submit_vip("remove dropped VIPs", remove)
        self._stopped = True
        self._cancel_timers()
        for lane in (self._vip_lane, self._notify_lane):
            if lane is not None and not await lane.join(STOP_TIMEOUT):
                log.warning("%s: still busy after %gs; abandoned", lane.name, STOP_TIMEOUT)
        await self._close()
        log.info("vrrp %s: handing over to its new settings", self.settings.name)

    @staticmethod
    async def release_vips(settings: VrrpSettings) -> None:
        """Remove the VIPs `settings` place, outside any instance: the way out when a
        detached master's replacement could not start (nobody speaks for them any more)."""
        netlink = Netlink()
        try:
            for vip, ifname in settings.placed_vips:
                try:
                    if await netlink.remove(ifname, vip):
                        log.info("vrrp %s: removed %s from %s", settings.name, vip, ifname)
                except VipError as exc:
                    log.error("vrrp %s: %s", settings.name, exc)
        finally:
            netlink.close()

    async def _close(self) -> None:
        self._cancel_timers()
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for frames in self._frames.values():
            frames.close()
        self._frames = {}
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        for lane in (self._vip_lane, self._notify_lane):
            if lane is not None:
                lane.close()
        self._vip_lane = self._notify_lane = None
        if self._netlink is not None:
            self._netlink.close()
            self._netlink = None

    def _cancel_timers(self) -> None:
        for handle in (self._timer, self._refresh):
            if handle is not None:
                handle.cancel()
        self._timer = self._refresh = None
        self._timer_at = None

    # --- tracking -------------------------------------------------------------------------

    def set_tracking(self, *, services: Mapping[str, bool] | None = None,
                     interfaces: Mapping[str, bool] | None = None) -> None:
        """Report tracked resources: `services` maps a service name to "has a healthy backend",
        `interfaces` an interface name to "up" (the instance watches its interfaces itself;
        this overrides until the next change it sees). Names not tracked are ignored."""
        for name, healthy in (services or {}).items():
            if name in self._services:
                self._services[name] = bool(healthy)
        if self.fsm is not None and not self._stopped:
            self._apply_services()
        for name, up in (interfaces or {}).items():
            self._on_link(name, bool(up))

    def _apply_services(self) -> None:
        fsm = self.fsm
        if fsm is None:
            return
        priority = self.settings.priority
        actions: list[Action] = []
        for track in self.settings.track_services:
            healthy = self._services[track.service]
            if track.weight == 0:
                actions += fsm.set_fault(_service_fault(track.service), not healthy)
            elif (track.weight < 0 and not healthy) or (track.weight > 0 and healthy):
                priority += track.weight
        before = fsm.priority
        actions += fsm.set_priority(priority)
        if fsm.priority != before:
            log.info("vrrp %s: effective priority %d -> %d (tracked services)",
                     self.settings.name, before, fsm.priority)
        self._run(actions)

    def _on_link(self, name: str, up: bool) -> None:
        if name not in self._links:
            return
        self._links[name] = up
        log.log(logging.INFO if up else logging.WARNING, "vrrp %s: interface %s is %s",
                self.settings.name, name, "up" if up else "down")
        if self.fsm is not None and not self._stopped and self._loop is not None:
            self._run(self.fsm.set_fault(_link_fault(name), not up))

    # --- events ---------------------------------------------------------------------------

    def _run(self, actions: list[Action]) -> None:
        """Execute the actions of one event and re-arm the timer; then the sync group (if
        any) looks at the event and may force actions on its members."""
        if self._loop is None:
            return
        self._execute(actions)
        self._rearm()
        if self.sync is not None and not self._stopped:
            self.sync.after(self.settings.name, actions)

    def run_forced(self, actions: list[Action]) -> None:
        """Execute actions the sync group forced on this member (its state machine has already
        changed) and re-arm the timer; the group is not asked again."""
        if self._loop is None or self._stopped:
            return
        self._execute(actions)
        self._rearm()

    def _rearm(self) -> None:
        fsm = self.fsm
        if fsm is None or self._loop is None or self._stopped:
            return
        deadline = fsm.deadline
        if deadline == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            delay = max(0, deadline - self._clock()) / 1e6
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        fsm = self.fsm
        if fsm is None or self._stopped:
            return
        if self._timer_at is not None:
            self.timer_late_max_us = max(self.timer_late_max_us,
                                         self._clock() - self._timer_at)
        self._timer_at = None
        self._run(fsm.on_timer())

    def _on_readable(self) -> None:
        sock, fsm = self._sock, self.fsm
        if sock is None or fsm is None:
            return
        actions: list[Action] = []
        for _ in range(MAX_BATCH):
            try:
                datagram = sock.receive()
            except OSError as exc:
                self._log_error("receive", f"receive failed: {exc.strerror or exc}")
                break
            if datagram is None:
                break
            try:
                advert = datagram.decode(self._expect)
            except PacketError as exc:
                self._drop(exc, datagram.src)
                continue
            self.counters.adverts_received += 1
            self.last_advert = (advert.src, advert.priority, self._clock())
            actions += fsm.on_packet(advert)
        self._run(actions)

    def _drop(self, exc: PacketError, src: IPAddress) -> None:
        self.counters.drops[exc.reason] += 1
        held = self._throttle.allow("drop " + exc.reason)
        if held is None:
            return
        more = f" (and {held} more since the last report)" if held else ""
        level = logging.DEBUG if exc.reason == "vrid" else logging.WARNING
        log.log(level, "vrrp %s: dropped a packet from %s: %s%s", self.settings.name, src,
                exc, more)

    def _log_error(self, key: str, message: str) -> None:
        held = self._throttle.allow(key)
        if held is not None:
            more = f" (and {held} more since the last report)" if held else ""
            log.warning("vrrp %s: %s%s", self.settings.name, message, more)

    # --- actions --------------------------------------------------------------------------

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendAdvert):
                self._send_advert(action.priority)
            elif isinstance(action, AddVips):
                self.vips_held = True
                self._submit_vip("add VIPs", self._add_vips)
            elif isinstance(action, RemoveVips):
                self.vips_held = False
                self._submit_vip("remove VIPs", self._remove_vips)
            elif isinstance(action, SendGarp):
                self._submit_vip("GARP", functools.partial(self._send_garp, action.repeat))
            elif isinstance(action, Notify):
                self._transition(action)

    def _submit_vip(self, label: str, job: Job) -> None:
        if self._vip_lane is not None:
            self._vip_lane.submit(label, job)

    def _send_advert(self, priority: int) -> None:
        sock = self._sock
        s = self.settings
        if sock is None or self.address is None:
            return
        auth = AUTH_SIMPLE if s.auth_pass is not None else AUTH_NONE
        auth_data = password_bytes(s.auth_pass.encode()) if s.auth_pass is not None \
            else bytes(8)
        for dst in self._dests:
            advert = Advert(version=s.version, vrid=s.virtual_router_id, priority=priority,
                            interval_cs=s.interval_cs, addresses=s.advertised, src=self.address,
                            dst=dst, auth_type=auth, auth_data=auth_data)
            try:
                sock.send(advert)
            except OSError as exc:
                self.counters.send_errors += 1
                self._log_error("send", f"cannot send an advert to {dst}: "
                                        f"{exc.strerror or exc}")
                continue
            self.counters.adverts_sent += 1

    async def _add_vips(self) -> None:
        assert self._netlink is not None
        for vip, ifname in self.settings.placed_vips:
            await self._vip_op(vip, ifname, add=True)

    async def _remove_vips(self) -> None:
        assert self._netlink is not None
        for vip, ifname in self.settings.placed_vips:
            await self._vip_op(vip, ifname, add=False)

    async def _vip_op(self, vip: VipInterface, ifname: str, *, add: bool) -> None:
        netlink = self._netlink
        if netlink is None:
            return
        try:
            changed = await (netlink.add(ifname, vip) if add else netlink.remove(ifname, vip))
        except VipError as exc:
            self.counters.vip_errors += 1
            log.error("vrrp %s: %s", self.settings.name, exc)
            return
        if changed:
            log.info("vrrp %s: %s %s %s %s", self.settings.name, "added" if add else "removed",
                     vip, "to" if add else "from", ifname)

    def _send_garp(self, repeat: int) -> None:
        if not self._frames or repeat <= 0:
            return
        # each VIP is announced on its own interface, with that interface's MAC (and the NA
        # Router flag as that interface forwards IPv6)
        routers = {name: ipv6_forwarding(name) for name in
                   {dev for vip, dev in self.settings.placed_vips if vip.version == 6}}
        frames = [(vip.version, dev, announce(self._macs[dev], vip.ip,
                                              router=routers.get(dev, False)))
                  for vip, dev in self.settings.placed_vips if dev in self._frames]
        for _ in range(repeat):
            for version, dev, frame in frames:
                try:
                    self._frames[dev].send(frame)
                except OSError as exc:
                    self.counters.send_errors += 1
                    self._log_error(f"garp {dev}", f"cannot send a GARP/NA on {dev}: "
                                                   f"{exc.strerror or exc}")
                    continue
                if version == 4:
                    self.counters.garp_sent += 1
                else:
                    self.counters.na_sent += 1

    def _transition(self, note: Notify) -> None:
        s = self.settings
        self.counters.transitions += 1
        if note.state is State.MASTER:
            self.counters.became_master += 1
        self.last_transition = Transition(note.previous, note.state, note.reason, time.time())
        log.log(logging.WARNING if note.state is State.FAULT else logging.INFO, "%s", note)
        if self._on_notify is not None:
            try:
                self._on_notify(note)
            except Exception:
                log.exception("vrrp %s: on_notify hook failed", s.name)
        self._arm_refresh(note.state is State.MASTER)
        if s.notify is not None and self._notify_lane is not None:
            priority = self.fsm.priority if self.fsm is not None else s.priority
            word = NOTIFY_STATE[note.state]
            self._notify_lane.submit(f"notify {word}",
                                     functools.partial(self._run_notify, word, priority))

    def _arm_refresh(self, master: bool) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None
        period = self.settings.garp_refresh
        if master and period > 0 and self._loop is not None and not self._stopped:
            self._refresh = self._loop.call_later(period, self._on_refresh)

    def _on_refresh(self) -> None:
        self._refresh = None
        if self.state is State.MASTER:
            self._submit_vip("GARP refresh", functools.partial(self._send_garp, 1))
            self._arm_refresh(True)

    async def _run_notify(self, state: str, priority: int) -> None:
        s = self.settings
        assert s.notify is not None
        self.counters.notify_runs += 1
        problem = await run_program([s.notify, "INSTANCE", s.name, state, str(priority)])
        if problem is not None:
            self.counters.notify_errors += 1
            log.log(logging.WARNING if problem.startswith("exited") else logging.ERROR,
                    "vrrp %s: notify program %s %s %s", s.name, s.notify, state, problem)

    # --- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything `l4lb vrrp status` shows, JSON-ready."""
        s = self.settings
        fsm = self.fsm
        now_us = self._clock()
        now = time.time()
        last = self.last_transition
        advert = self.last_advert
        counters = {k: v for k, v in vars(self.counters).items() if k != "drops"}
        return {
            "name": s.name,
            "interface": s.interface,
            "vrid": s.virtual_router_id,
            "version": s.version,
            "family": s.family,
            "mode": "unicast" if s.unicast_peers else "multicast",
            "peers": list(s.unicast_peers),
            "state": str(self.state),
            "priority": s.priority,
            "effective_priority": fsm.priority if fsm is not None else s.priority,
            "address": str(self.address) if self.address is not None else None,
            "master": str(fsm.master_address) if fsm is not None and
            fsm.master_address is not None else None,
            "vips": list(s.vip_texts),
            "vips_held": self.vips_held,
            "since": now - (now_us - fsm.since_us) / 1e6 if fsm is not None else None,
            "last_transition": None if last is None else {
                "from": str(last.previous), "to": str(last.state), "reason": last.reason,
                "at": last.at},
            "faults": sorted(fsm.faults) if fsm is not None else [],
            "sync_group": None if s.sync_group is None else {
                "name": s.sync_group, "waiting": bool(fsm is not None and fsm.ready)},
            "tracking": {
                "interfaces": dict(self._links),
                "services": {t.service: {"healthy": self._services[t.service],
                                         "weight": t.weight} for t in s.track_services},
            },
            "advert_interval": s.advert_interval,
            "master_advert_interval": fsm.master_adver_int_us / 1e6 if fsm is not None
            else s.advert_interval,
            "master_down_interval": fsm.master_down_interval_us / 1e6 if fsm is not None
            else None,
            "last_advert": None if advert is None else {
                "from": str(advert[0]), "priority": advert[1],
                "age": (now_us - advert[2]) / 1e6},
            "timer_late_max_ms": self.timer_late_max_us / 1000,
            "counters": {**counters, "drops": dict(self.counters.drops)},
        }


async def run_program(argv: list[str], timeout: float = NOTIFY_TIMEOUT) -> str | None:
    """Run a notify program (no shell, no input or output, its own session) and wait for it;
    None when it exited 0, otherwise what went wrong ("exited with status 2", "ran longer than
    30s: killed", "cannot be run: ..."). Cancelling kills it."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        return f"cannot be run: {exc.strerror or exc}"
    try:
        code = await asyncio.wait_for(proc.wait(), timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        return f"ran longer than {timeout:g}s: killed"
    return None if code == 0 else f"exited with status {code}"


CAP_NET_ADMIN = 12  # linux/capability.h


def has_net_admin(status: str = "/proc/self/status") -> bool:
    """Whether this process may add addresses (CAP_NET_ADMIN among its effective
    capabilities); True when /proc cannot tell (the add itself then reports)."""
    try:
        with open(status, encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return True


def _link_fault(name: str) -> str:
    return f"interface {name} down"


def _service_fault(name: str) -> str:
    return f"service {name} has no healthy backend"
