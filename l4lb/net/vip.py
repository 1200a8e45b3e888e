"""Manage virtual addresses and watch interfaces through rtnetlink (pyroute2), on the asyncio loop.

`Netlink` holds one rtnetlink request socket (pyroute2's `AsyncIPRoute`) for the running event
loop: interface lookups (index, MAC, up/down), the addresses of an interface, and idempotent
`add` / `remove` of a VIP. pyroute2's synchronous `IPRoute` cannot be used here at all: since
0.9 it drives its own requests with `run_until_complete` on the *running* loop, which raises
("This event loop is already running"). Each request is one netlink round trip (well under a
millisecond), awaited, so the loop keeps running VRRP timers and data-plane bookkeeping meanwhile.

IPv6 VIPs are added with IFA_F_NODAD, as keepalived adds them: duplicate address detection would
keep a fresh VIP "tentative" (unusable) for a second or more after every takeover, and the VRRP
election already guarantees that only one node holds it.

`LinkWatcher` reports interfaces going up or down (for `track_interfaces`): it subscribes to
RTNLGRP_LINK events and also re-reads every watched interface every `poll_interval` seconds, so
a lost event (netlink queue overflow) or an interface that appears late is still noticed. An
interface is up when it is administratively up (IFF_UP) and has carrier (IFF_RUNNING), the test
keepalived applies; a missing interface is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger("l4lb.vip")

VipInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

IFF_UP: Final = 0x1
IFF_RUNNING: Final = 0x40
IFA_F_NODAD: Final = 0x02
RTMGRP_LINK: Final = 0x1


class VipError(OSError):
    """A netlink request failed; `errno` and `strerror` say why, str() names the operation."""


@dataclass(frozen=True)
class LinkInfo:
    """What the kernel says about one interface."""

    name: str  # interface name
    index: int  # ifindex
    mac: bytes  # hardware address, 6 bytes (zeros when the link has none)
    up: bool  # IFF_UP and IFF_RUNNING
    operstate: str  # RFC 2863 state as the kernel reports it ("UP", "DOWN", "UNKNOWN", ...)


def _mac(text: str | None) -> bytes:
    if not text:
        return bytes(6)
    raw = bytes.fromhex(text.replace(":", ""))
    return raw if len(raw) == 6 else bytes(6)


def _link_info(msg: Any) -> LinkInfo:
    flags = int(msg["flags"])
    return LinkInfo(name=str(msg.get("ifname")), index=int(msg["index"]),
                    mac=_mac(msg.get("address")),
                    up=bool(flags & IFF_UP) and bool(flags & IFF_RUNNING),
                    operstate=str(msg.get("operstate") or "UNKNOWN"))


class Netlink:
    """One rtnetlink request socket on the running loop. Close it when done."""

    def __init__(self) -> None:
        self._ipr: Any = None  # the AsyncIPRoute, opened on first use

    def _sock(self) -> Any:
        if self._ipr is None:
            self._ipr = AsyncIPRoute()
        return self._ipr

    def close(self) -> None:
        """Close the netlink socket (a later request opens a new one)."""
        if self._ipr is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()
            self._ipr = None

    async def links(self) -> dict[str, LinkInfo]:
        """Every interface of this network namespace, by name."""
        try:
            dump = await self._sock().link("dump")
            return {info.name: info for info in [_link_info(m) async for m in dump]}
        except NetlinkError as exc:
            raise VipError(exc.code, f"listing interfaces: {exc}") from None

    async def link(self, name: str) -> LinkInfo | None:
        """The interface called `name`, or None if there is none."""
        return (await self.links()).get(name)

    async def addresses(self, name: str) -> list[VipInterface]:
        """The addresses on interface `name`, in the kernel's order (primary first)."""
        info = await self.link(name)
        if info is None:
            raise VipError(errno.ENODEV, f"no interface named {name}")
        try:
            dump = await self._sock().addr("dump", index=info.index)
            msgs = [m async for m in dump]
        except NetlinkError as exc:
            raise VipError(exc.code, f"listing addresses of {name}: {exc}") from None
        out: list[VipInterface] = []
        for msg in msgs:
            if int(msg["index"]) != info.index:
                continue
            address = msg.get("IFA_ADDRESS") if msg["family"] == 10 else \
                msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
            if address:
                out.append(ipaddress.ip_interface(f"{address}/{msg['prefixlen']}"))
        return out

    async def add(self, name: str, vip: VipInterface) -> bool:
        """Add `vip` to interface `name`; True if added, False if it was already there."""
        info = await self.link(name)
        if info is None:
            raise VipError(errno.ENODEV, f"adding {vip} to {name}: no such interface")
        extra: dict[str, Any] = {"flags": IFA_F_NODAD} if vip.version == 6 else {}
        try:
            await self._sock().addr("add", index=info.index, address=str(vip.ip),
                                    prefixlen=vip.network.prefixlen, **extra)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            raise VipError(exc.code, f"adding {vip} to {name}: {exc}") from None
        return True

    async def remove(self, name: str, vip: VipInterface) -> bool:
        """Remove `vip` from interface `name`; True if removed, False if it was not there."""
        info = await self.link(name)
        if info is None:
            return False  # no interface, no address
        try:
            await self._sock().addr("del", index=info.index, address=str(vip.ip),
                                    prefixlen=vip.network.prefixlen)
        except NetlinkError as exc:
            if exc.code in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV):
                return False
            raise VipError(exc.code, f"removing {vip} from {name}: {exc}") from None
        return True


class LinkWatcher:
    """Call `on_change(name, up)` whenever a watched interface goes up or down.

    `start()` reads the current states (returned, and used as the baseline: no callback for
    them); afterwards every change is reported once, from netlink events as they come and from
    a re-read every `poll_interval` seconds.
    """

    def __init__(self, names: Iterable[str], on_change: Callable[[str, bool], None], *,
                 poll_interval: float = 5.0) -> None:
        self.names = frozenset(names)  # watched interfaces
        self._on_change = on_change  # called as (name, up)
        self._poll_interval = poll_interval  # seconds between full re-reads
        self.states: dict[str, bool] = {}  # last reported state per watched name
        self._events: Any = None  # AsyncIPRoute bound to RTMGRP_LINK
        self._requests = Netlink()  # for the periodic re-read
        self._tasks: list[asyncio.Task[None]] = []  # event reader, poller

    async def start(self) -> dict[str, bool]:
        """Subscribe, read the current states and begin watching; returns those states."""
        self._events = AsyncIPRoute()
        await self._events.bind(groups=RTMGRP_LINK)
        links = await self._requests.links()
        self.states = {n: n in links and links[n].up for n in self.names}
        self._tasks = [asyncio.create_task(self._read_events(), name="vrrp-link-events"),
                       asyncio.create_task(self._poll(), name="vrrp-link-poll")]
        return dict(self.states)

    def close(self) -> None:
        """Stop watching (idempotent)."""
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        if self._events is not None:
            with contextlib.suppress(Exception):
                self._events.close()
            self._events = None
        self._requests.close()

    def _report(self, name: str, up: bool) -> None:
        if name not in self.names or self.states.get(name) == up:
            return
        self.states[name] = up
        try:
            self._on_change(name, up)
        except Exception:
            log.exception("link watcher: callback failed for %s", name)

    async def _read_events(self) -> None:
        try:
            while True:  # each get() yields the messages of one netlink read, then ends
                async for msg in self._events.get():
                    event = msg.get("event")
                    name = msg.get("ifname")
                    if event == "RTM_NEWLINK" and name:
                        self._report(str(name), _link_info(msg).up)
                    elif event == "RTM_DELLINK" and name:
                        self._report(str(name), False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the poller still watches
            log.warning("link watcher: netlink events stopped (%s); polling every %gs",
                        exc, self._poll_interval)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                links = await self._requests.links()
            except (VipError, OSError) as exc:
                log.warning("link watcher: cannot list interfaces: %s", exc)
                continue
            for name in self.names:
                self._report(name, name in links and links[name].up)
