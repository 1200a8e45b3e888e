"""Compare the forwarding-table digest with the VRRP peers over UDP and warn when they differ.

Why: a pair of l4lb nodes only keeps a client on the same backend across a failover when both
build the same forwarding table (docs/ha.md). The table digest (docs/forwarding-table.md: ids
left out) says whether they do. VRRP adverts have no field keepalived would tolerate extra data
in (l4lb.vrrp.packet: the address count, the length and the checksum are all checked), so the
nodes exchange their digests in a separate, tiny UDP protocol between the same peers.

Wire format, version 1, one datagram, network byte order (41 + N bytes, at most 105)::

    0   4  magic "l4dg"
    4   1  version (1)
    5   1  flags: bit 0 = reply (the receiver never answers a reply); other bits sent as 0,
           ignored on receipt
    6   1  VRID of the instance (1..255)
    7   1  family of the node address: 4 or 6
    8   8  table generation of the sender (informational: generations are per node)
    16  8  table digest: the 16 hex digits as 8 bytes
    24 16  node address: the sender's VRRP source address (IPv4 in the first 4 bytes, rest 0)
    40  1  N, the length of the instance name (1..64)
    41  N  instance name (ASCII letters, digits, "_", "." and "-")

A datagram of any other length, magic or version, or with a field out of range, is dropped and
counted by reason (`DROP_REASONS`); nothing a peer sends can raise out of the receive path.

Who talks to whom. Each VRRP instance is checked on its own; a message is matched to the local
instance by VRID and address family (by name, then interface, if that is ambiguous). Every
`interval` seconds, and at once after `published()`, a node sends its (generation, digest) to:

- the `unicast_peers` of a unicast instance (a message is only accepted from one of them);
- for a multicast instance: the master it hears adverts from, the source of the last advert,
  and every peer it learned from a message received on the instance's interface (messages that
  arrive on another interface are refused). A backup therefore always knows its master; the
  master learns the backup from the backup's first message and answers it at once (a reply),
  and from then on sends to it on its own every interval. So both nodes compare, and both warn.

Datagrams leave from the instance's VRRP source address (IP_PKTINFO / IPV6_PKTINFO; link-local
IPv6 peers are reached through the instance's interface), so a peer sees the address it knows
from the adverts or lists in `unicast_peers`. The sockets bind the wildcard address on `port`
(one per address family in use): no VIP is bound, so no IP_FREEBIND is needed.

When is a difference a warning (`Agreement`, pure, injected clock)? Only when the same pair of
differing digests (ours, theirs) has been seen for `grace` seconds, so a reload done on one node
a few seconds before the other, or a backend that one node's health checks mark DOWN a moment
before the other's, does not warn. The warning is logged once per pair; a different pair that
persists warns again. When the digests are equal again, an info line says so. A peer not heard
for `silent_after` seconds is reported (info) and cannot be compared; its warning state is
reset, so if it comes back still different, it warns again after `grace`. A peer not heard for
`forget_after` seconds is forgotten (learned peers are no longer sent to). The generations are
shown, never compared: each node numbers its own publications.

The I/O part (`DigestCheck`) runs on the daemon's asyncio loop, like the VRRP instances it
reads (settings, source address, master address, last advert); it never blocks and never
raises from a callback. Nothing here authenticates a message: anyone who can send to the port
from a peer's address can cause or hide a warning. The check is advisory; it changes nothing
in forwarding or in the VRRP election.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from l4lb.vrrp.packet import IPAddress
from l4lb.vrrp.settings import VrrpSettings

log = logging.getLogger("l4lb.vrrp")

PORT: Final = 7112  # default UDP port of the digest check ("VRRP is protocol 112")
VERSION: Final = 1  # wire format version sent and accepted
MAGIC: Final = b"l4dg"
FLAG_REPLY: Final = 0x01  # the message answers one; never answered itself
INTERVAL: Final = 2.0  # seconds between two messages to each peer
GRACE: Final = 10.0  # seconds a difference must persist before it is a warning
FORGET_AFTER: Final = 300.0  # seconds without a message before a peer is forgotten
MAX_PEERS: Final = 16  # peers remembered per instance (listed or learned)
MAX_NAME: Final = 64  # instance name length, as in VrrpSettings
MAX_BATCH: Final = 64  # datagrams read per wake-up
MAX_DATAGRAM: Final = 512  # receive buffer; a valid message is at most 105 bytes
LOG_EVERY: Final = 60.0  # seconds between two log lines about the same drop reason

_HEAD: Final = struct.Struct("!4sBBBBQ8s16sB")  # magic .. name length; the name follows
_DIGEST = re.compile(r"[0-9a-f]{16}")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_IP_PKTINFO: Final = getattr(socket, "IP_PKTINFO", 8)  # linux/in.h
_IN_PKTINFO: Final = struct.Struct("=I4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO: Final = struct.Struct("=16sI")  # addr, ifindex

# Every reason a received datagram is dropped for, for pre-created counters.
DROP_REASONS: Final = frozenset({
    "size",  # shorter than the header, length not 41 + N, or larger than MAX_DATAGRAM
    "magic",  # not a digest-check message
    "version",  # a wire format version this node does not speak
    "field",  # VRID 0, bad family, address, digest or instance name
    "instance",  # no local instance with that VRID and family (or several, and none matches)
    "source",  # unicast: not from a listed peer; multicast: arrived on another interface
    "self",  # our own message (the node address or source is this instance's)
    "peers",  # MAX_PEERS peers already known for the instance
})


# --- wire format (pure) -------------------------------------------------------------------


class BadMessage(ValueError):
    """A received datagram that is not a valid message; `reason` is one of DROP_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in DROP_REASONS:
            raise AssertionError(f"unknown drop reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason  # counter name
        self.detail = detail  # for the log


@dataclass(frozen=True)
class Message:
    """One digest-check message (see the module docstring for the layout)."""

    vrid: int  # VRID of the sender's instance
    instance: str  # the sender's instance name (shown; matched only to break ties)
    node: IPAddress  # the sender's VRRP source address
    generation: int  # the sender's table generation (0..2**64-1)
    digest: str  # the sender's table digest, 16 lowercase hex digits
    reply: bool = False  # answers a message; must not be answered

    def encode(self) -> bytes:
        """The datagram; ValueError when a field is out of range."""
        if not 1 <= self.vrid <= 255:
            raise ValueError(f"vrid {self.vrid} is not 1..255")
        if not _NAME.fullmatch(self.instance):
            raise ValueError(f"instance name {self.instance!r} is not 1..{MAX_NAME} letters, "
                             'digits, "_", "." or "-"')
        if not 0 <= self.generation < 1 << 64:
            raise ValueError(f"generation {self.generation} does not fit 64 bits")
        if not _DIGEST.fullmatch(self.digest):
            raise ValueError(f"digest {self.digest!r} is not 16 lowercase hex digits")
        name = self.instance.encode("ascii")
        return _HEAD.pack(MAGIC, VERSION, FLAG_REPLY if self.reply else 0, self.vrid,
                          self.node.version, self.generation, bytes.fromhex(self.digest),
                          self.node.packed.ljust(16, b"\0"), len(name)) + name


def decode(data: bytes) -> Message:
    """Parse and validate one datagram; BadMessage (with its reason) when it is not valid."""
    if len(data) < _HEAD.size:
        raise BadMessage("size", f"{len(data)} bytes, a message has at least {_HEAD.size}")
    magic, version, flags, vrid, family, generation, digest, node, length = \
        _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise BadMessage("magic", f"starts with {magic!r}")
    if version != VERSION:
        raise BadMessage("version", f"version {version}, this node speaks {VERSION}")
    if len(data) != _HEAD.size + length:
        raise BadMessage("size", f"{len(data)} bytes, the name length says "
                                 f"{_HEAD.size + length}")
    if vrid == 0:
        raise BadMessage("field", "VRID 0")
    if family == 4:
        if any(node[4:]):
            raise BadMessage("field", "IPv4 node address with trailing bytes")
        address: IPAddress = ipaddress.IPv4Address(node[:4])
    elif family == 6:
        address = ipaddress.IPv6Address(node)
    else:
        raise BadMessage("field", f"address family {family}")
    if address.is_unspecified or address.is_multicast:
        raise BadMessage("field", f"node address {address}")
    raw_name = data[_HEAD.size:]
    name = raw_name.decode("ascii", errors="replace")
    if not _NAME.fullmatch(name):
        raise BadMessage("field", f"instance name {raw_name[:MAX_NAME]!r}")
    return Message(vrid=vrid, instance=name, node=address, generation=generation,
                   digest=digest.hex(), reply=bool(flags & FLAG_REPLY))


# --- comparison (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """A node's live table as the check sees it."""

    generation: int  # the node's own publication counter
    digest: str  # 16 hex digits (docs/forwarding-table.md)


@dataclass(frozen=True)
class PeerHeard:
    """First message from a peer (or the first after it was silent): info."""

    instance: str  # local instance name
    peer: str  # peer address
    theirs: Table
    ours: Table | None
    again: bool  # it had been silent


@dataclass(frozen=True)
class Differs:
    """The digests differ since `grace` seconds: the warning."""

    instance: str
    peer: str
    ours: Table
    theirs: Table
    since: float  # seconds the difference has lasted


@dataclass(frozen=True)
class Agrees:
    """The digests are equal again after a warning: info."""

    instance: str
    peer: str
    ours: Table
    theirs: Table


@dataclass(frozen=True)
class PeerSilent:
    """No message from the peer for `silent_after` seconds: info."""

    instance: str
    peer: str
    silent_for: float  # seconds since its last message
    differed: bool  # its last digest differed from ours


Event = PeerHeard | Differs | Agrees | PeerSilent


def describe(event: Event) -> tuple[int, str]:
    """The log level and line of an event (subject first, like every VRRP line)."""
    if isinstance(event, Differs):
        return logging.WARNING, (
            f"vrrp {event.instance}: table digest differs from peer {event.peer} (ours "
            f"{event.ours.digest} generation {event.ours.generation}, theirs "
            f"{event.theirs.digest} generation {event.theirs.generation}): the nodes may send "
            f"clients to different backends")
    if isinstance(event, Agrees):
        return logging.INFO, (
            f"vrrp {event.instance}: table digest matches peer {event.peer} again "
            f"({event.ours.digest}; ours generation {event.ours.generation}, theirs generation "
            f"{event.theirs.generation})")
    if isinstance(event, PeerSilent):
        note = " (its table differed when last heard)" if event.differed else ""
        return logging.INFO, (
            f"vrrp {event.instance}: no table digest from peer {event.peer} for "
            f"{event.silent_for:.1f}s: cannot compare{note}")
    word = "again" if event.again else "now"
    if event.ours is None:
        state = "ours is not known yet"
    elif event.ours.digest == event.theirs.digest:
        state = "equal"
    else:
        state = f"different from ours ({event.ours.digest})"
    return logging.INFO, (
        f"vrrp {event.instance}: {word} comparing table digests with peer {event.peer}: "
        f"theirs {event.theirs.digest} generation {event.theirs.generation}, {state}")


@dataclass
class _Peer:
    """What one instance knows about one peer."""

    address: str  # where its messages come from (and ours go to)
    theirs: Table  # its last table
    heard_at: float  # clock time of its last message
    node: str = ""  # node address it declared
    name: str = ""  # its instance name
    silent: bool = False  # PeerSilent was reported and nothing was heard since
    pending: tuple[str, str] | None = None  # (ours, theirs) digests seen differing ...
    since: float = 0.0  # ... since this clock time
    warned: tuple[str, str] | None = None  # the pair a Differs was reported for


class Agreement:
    """One instance's view of its peers' digests against ours; decides warnings. No I/O.

    Feed it `set_ours()` (our table, None while unknown), `heard()` (a peer's message) and
    `tick()` (at least every interval); each returns the events to log."""

    def __init__(self, instance: str, *, grace: float = GRACE, silent_after: float,
                 forget_after: float = FORGET_AFTER, clock: Callable[[], float],
                 max_peers: int = MAX_PEERS) -> None:
        self.instance = instance  # local instance name, for events
        self.grace = grace  # seconds a difference must last before it is reported
        self.silent_after = silent_after  # seconds without a message: peer reported silent
        self.forget_after = forget_after  # seconds without a message: peer forgotten
        self.max_peers = max_peers  # peers remembered at most
        self._clock = clock  # monotonic seconds
        self.ours: Table | None = None  # our live table
        self._peers: dict[str, _Peer] = {}  # address -> state

    def knows(self, peer: str) -> bool:
        """True when `peer` is remembered."""
        return peer in self._peers

    def has_room(self) -> bool:
        """True when a new peer can be remembered."""
        return len(self._peers) < self.max_peers

    def peers(self) -> list[str]:
        """Every remembered peer address, in the order first heard."""
        return list(self._peers)

    def set_ours(self, table: Table | None) -> list[Event]:
        """Our table is `table` (None: not known); re-evaluates every peer."""
        self.ours = table
        now = self._clock()
        events: list[Event] = []
        for peer in self._peers.values():
            if not peer.silent:
                events += self._evaluate(peer, now)
        return events

    def heard(self, peer: str, theirs: Table, *, node: str = "", name: str = "") -> list[Event]:
        """A valid message from `peer` carried `theirs`. A new peer is remembered only while
        there is room (check has_room() first: a new peer without room is ignored)."""
        now = self._clock()
        events: list[Event] = []
        state = self._peers.get(peer)
        if state is None:
            if not self.has_room():
                return []
            state = self._peers[peer] = _Peer(peer, theirs, now)
            events.append(PeerHeard(self.instance, peer, theirs, self.ours, again=False))
        elif state.silent:
            state.silent = False
            events.append(PeerHeard(self.instance, peer, theirs, self.ours, again=True))
        state.theirs, state.heard_at = theirs, now
        state.node, state.name = node or state.node, name or state.name
        return events + self._evaluate(state, now)

    def tick(self) -> list[Event]:
        """Time passed: report silent peers, forget old ones, report lasting differences."""
        now = self._clock()
        events: list[Event] = []
        for address, peer in list(self._peers.items()):
            age = now - peer.heard_at
            if age >= self.forget_after:
                del self._peers[address]
            elif age >= self.silent_after:
                if not peer.silent:
                    peer.silent = True
                    differed = self.ours is not None and peer.theirs.digest != self.ours.digest
                    events.append(PeerSilent(self.instance, address, age, differed))
                    peer.pending = peer.warned = None
            else:
                events += self._evaluate(peer, now)
        return events

    def _evaluate(self, peer: _Peer, now: float) -> list[Event]:
        ours = self.ours
        if ours is None:
            return []
        if ours.digest == peer.theirs.digest:
            peer.pending = None
            if peer.warned is None:
                return []
            peer.warned = None
            return [Agrees(self.instance, peer.address, ours, peer.theirs)]
        pair = (ours.digest, peer.theirs.digest)
        if peer.pending != pair:
            peer.pending, peer.since = pair, now
        if peer.warned != pair and now - peer.since >= self.grace:
            peer.warned = pair
            return [Differs(self.instance, peer.address, ours, peer.theirs, now - peer.since)]
        return []

    def agreement(self) -> str:
        """"yes": every peer heard recently has our digest; "no": one has another; "unknown":
        no peer heard recently, or our digest is not known."""
        current = [p for p in self._peers.values() if not p.silent]
        if self.ours is None or not current:
            return "unknown"
        ours = self.ours.digest
        return "yes" if all(p.theirs.digest == ours for p in current) else "no"

    def status(self) -> dict[str, Any]:
        """JSON-ready: the agreement and every peer."""
        now = self._clock()
        ours = self.ours
        return {
            "agreement": self.agreement(),
            "peers": [{
                "address": p.address, "node": p.node, "instance": p.name,
                "generation": p.theirs.generation, "digest": p.theirs.digest,
                "agree": None if ours is None else p.theirs.digest == ours.digest,
                "last_heard": round(now - p.heard_at, 3), "silent": p.silent,
                "differs_for": None if p.pending is None else round(now - p.since, 3),
                "warned": p.warned is not None,
            } for p in self._peers.values()],
        }


# --- I/O on the asyncio loop --------------------------------------------------------------


class FsmView(Protocol):
    """What the check reads from a VRRP state machine."""

    @property
    def master_address(self) -> IPAddress | None: ...


class InstanceView(Protocol):
    """What the check reads from a VRRP instance (l4lb.vrrp.instance.VrrpInstance)."""

    @property
    def settings(self) -> VrrpSettings: ...

    @property
    def address(self) -> IPAddress | None: ...

    @property
    def fsm(self) -> FsmView | None: ...

    @property
    def last_advert(self) -> tuple[IPAddress, int, int] | None: ...


@dataclass
class Counters:
    """What the check sent and refused since it started."""

    sent: int = 0  # messages sent (one per peer and round)
    replies: int = 0  # of those, replies to a new peer
    received: int = 0  # datagrams read
    accepted: int = 0  # valid messages of a local instance
    send_errors: int = 0  # messages the kernel refused


class DigestCheck:
    """The digest check of every VRRP instance of this node (see the module docstring).

    `instances`: the running VRRP instances (a sequence, or a function returning the current
    ones); `digest`: returns the live (generation, digest); an invalid digest (not 16 hex
    digits, e.g. "" before the first publication) is "not known yet" and nothing is sent.
    """

    def __init__(self, instances: Sequence[InstanceView] | Callable[[], Sequence[InstanceView]],
                 digest: Callable[[], tuple[int, str]], *, port: int = PORT,
                 interval: float = INTERVAL, grace: float = GRACE,
                 silent_after: float | None = None, forget_after: float = FORGET_AFTER,
                 bind4: str = "0.0.0.0", bind6: str = "::",
                 clock: Callable[[], float] = time.monotonic) -> None:
        if callable(instances):
            self._instances: Callable[[], Sequence[InstanceView]] = instances
        else:
            fixed = instances
            self._instances = lambda: fixed
        self._digest = digest  # (generation, digest) of the live table
        self.port = port  # UDP port, the same on every node
        self.interval = interval  # seconds between two rounds of messages
        self.grace = grace  # seconds before a difference is a warning
        self.silent_after = silent_after if silent_after is not None else 3 * interval + 1.0
        self.forget_after = forget_after  # seconds before a silent peer is forgotten
        self._bind = {4: bind4, 6: bind6}  # address each family's socket binds
        self._clock = clock  # monotonic seconds (Agreement and ages)
        self.counters = Counters()
        self.drops: dict[str, int] = dict.fromkeys(sorted(DROP_REASONS), 0)
        self.error: str | None = None  # why the check is not running (a socket failed)
        self._agreements: dict[str, Agreement] = {}  # instance name -> its view
        self._socks: dict[int, socket.socket] = {}  # family -> bound UDP socket
        self._ifindex: dict[str, int] = {}  # interface name -> index (cached)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None  # next periodic round
        self._soon: asyncio.Handle | None = None  # a round queued by published()
        self._running = False  # sockets open, rounds scheduled
        self._logged: dict[str, float] = {}  # throttle key -> clock time of its last line
        self._held: dict[str, int] = {}  # throttle key -> lines held back since

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between a successful start() and stop()."""
        return self._running

    async def start(self) -> None:
        """Bind the sockets and send the first round. Never raises for a socket problem: the
        check stays off, logs one error and reports it in status()["error"]."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        families = sorted({i.settings.family for i in self._instances()})
        for family in families:
            try:
                self._socks[family] = self._open(family)
            except OSError as exc:
                self.error = (f"cannot bind UDP port {self.port} for IPv{family} on "
                              f"{self._bind[family]}: {exc.strerror or exc}")
                log.error("vrrp: table digest check off: %s", self.error)
                self._close()
                return
        for family, sock in self._socks.items():
            self._loop.add_reader(sock.fileno(), self._on_readable, family)
        self._running = True
        if families:
            log.info("vrrp: comparing table digests with the peers on UDP port %d every %gs "
                     "(warning after %gs)", self.port, self.interval, self.grace)
        self._on_timer()

    def _open(self, family: int) -> socket.socket:
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        sock = socket.socket(af, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if family == 4:
                sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
                sock.bind((self._bind[4], self.port))
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                sock.bind((self._bind[6], self.port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def stop(self) -> None:
        """Stop sending and close the sockets. Idempotent."""
        self._close()

    def _close(self) -> None:
        self._running = False
        for handle in (self._timer, self._soon):
            if handle is not None:
                handle.cancel()
        self._timer = self._soon = None
        for sock in self._socks.values():
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks = {}

    def published(self) -> None:
        """A table was just published: send our new digest to the peers at once (one round
        for a burst of publications). Does nothing while the check is not running."""
        if not self.running or self._soon is not None:
            return
        assert self._loop is not None
        self._soon = self._loop.call_soon(self._on_soon)

    # --- rounds ---------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.round()
        finally:
            if self._loop is not None and self._running:
                self._timer = self._loop.call_later(self.interval, self._on_timer)

    def _on_soon(self) -> None:
        self._soon = None
        self.round()

    def ours(self) -> Table | None:
        """Our live table, None while the digest is not known."""
        try:
            generation, digest = self._digest()
        except Exception:
            log.exception("vrrp: table digest check: cannot read the live digest")
            return None
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest) or \
                not isinstance(generation, int) or not 0 <= generation < 1 << 64:
            return None
        return Table(generation, digest)

    def round(self) -> None:
        """Compare, report, and send our digest to every peer of every instance."""
        ours = self.ours()
        for inst in self._instances():
            if inst.address is None:
                continue
            agreement = self._agreement(inst.settings.name)
            self._report(agreement.set_ours(ours))
            self._report(agreement.tick())
            if ours is None:
                continue
            payload = self._message(inst, ours, reply=False)
            for dest in self.targets(inst):
                self._transmit(inst, payload, dest)

    def targets(self, inst: InstanceView) -> list[IPAddress]:
        """Where the instance's messages go (see the module docstring)."""
        s = inst.settings
        own = inst.address
        found: list[IPAddress] = list(s.peers)
        if not s.unicast_peers:
            fsm = inst.fsm
            if fsm is not None and fsm.master_address is not None:
                found.append(fsm.master_address)
            advert = inst.last_advert
            if advert is not None and \
                    time.monotonic_ns() // 1000 - advert[2] <= self.forget_after * 1e6:
                found.append(advert[0])
            agreement = self._agreements.get(s.name)
            for peer in agreement.peers() if agreement is not None else ():
                with contextlib.suppress(ValueError):
                    found.append(ipaddress.ip_address(peer))
        out: list[IPAddress] = []
        for address in found:
            if address != own and address.version == s.family and address not in out:
                out.append(address)
        return out

    def _agreement(self, name: str) -> Agreement:
        agreement = self._agreements.get(name)
        if agreement is None:
            agreement = self._agreements[name] = Agreement(
                name, grace=self.grace, silent_after=self.silent_after,
                forget_after=self.forget_after, clock=self._clock)
        return agreement

    @staticmethod
    def _message(inst: InstanceView, ours: Table, *, reply: bool) -> bytes:
        assert inst.address is not None
        return Message(vrid=inst.settings.virtual_router_id, instance=inst.settings.name,
                       node=inst.address, generation=ours.generation, digest=ours.digest,
                       reply=reply).encode()

    def _index_of(self, ifname: str) -> int:
        index = self._ifindex.get(ifname)
        if index is None:
            try:
                index = socket.if_nametoindex(ifname)
            except OSError:
                return 0
            self._ifindex[ifname] = index
        return index

    def _transmit(self, inst: InstanceView, payload: bytes, dest: IPAddress) -> None:
        """Send one message from the instance's address; errors are counted and logged."""
        sock = self._socks.get(dest.version)
        source = inst.address
        if sock is None or source is None:
            return
        try:
            if dest.version == 4:
                info = _IN_PKTINFO.pack(0, source.packed, bytes(4))
                sock.sendmsg([payload], [(socket.IPPROTO_IP, _IP_PKTINFO, info)], 0,
                              (str(dest), self.port))
            else:
                index = self._index_of(inst.settings.interface) \
                    if dest.is_link_local or source.is_link_local else 0
                info = _IN6_PKTINFO.pack(source.packed, index)
                sock.sendmsg([payload], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info)], 0,
                              (str(dest), self.port, 0, index if dest.is_link_local else 0))
        except OSError as exc:
            self.counters.send_errors += 1
            self._throttled(logging.WARNING, "send",
                            f"vrrp {inst.settings.name}: cannot send the table digest to "
                            f"{dest} port {self.port}: {exc.strerror or exc}")
            return
        self.counters.sent += 1

    # --- receiving ------------------------------------------------------------------------

    def _on_readable(self, family: int) -> None:
        sock = self._socks.get(family)
        if sock is None:
            return
        room = socket.CMSG_SPACE(_IN6_PKTINFO.size)
        for _ in range(MAX_BATCH):
            try:
                data, ancillary, flags, addr = sock.recvmsg(MAX_DATAGRAM, room)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._throttled(logging.WARNING, "receive",
                                f"vrrp: table digest check: receive failed: "
                                f"{exc.strerror or exc}")
                return
            try:
                source = ipaddress.ip_address(str(addr[0]).split("%", 1)[0])
            except ValueError:
                continue
            if flags & socket.MSG_TRUNC:
                self.counters.received += 1
                self._drop(BadMessage("size", f"more than {MAX_DATAGRAM} bytes"), source)
                continue
            self.datagram(data, source, _arrival_index(ancillary))

    def datagram(self, data: bytes, source: IPAddress, ifindex: int = 0) -> None:
        """Handle one received datagram from `source` that arrived on interface `ifindex`
        (0: unknown). Invalid or foreign ones are counted by reason and dropped."""
        self.counters.received += 1
        try:
            message = decode(data)
            inst = self._match(message, source.version, ifindex)
            self._check_source(inst, message, source, ifindex)
        except BadMessage as exc:
            self._drop(exc, source)
            return
        agreement = self._agreement(inst.settings.name)
        peer = str(source)
        new = not agreement.knows(peer)
        if new and not agreement.has_room():
            self._drop(BadMessage("peers", f"{agreement.max_peers} peers known already"),
                       source)
            return
        self.counters.accepted += 1
        ours = self.ours()
        self._report(agreement.set_ours(ours))
        self._report(agreement.heard(peer, Table(message.generation, message.digest),
                                     node=str(message.node), name=message.instance))
        if new and not message.reply and ours is not None:
            self._transmit(inst, self._message(inst, ours, reply=True), source)
            self.counters.replies += 1

    def _match(self, message: Message, family: int, ifindex: int) -> InstanceView:
        candidates = [i for i in self._instances()
                      if i.settings.virtual_router_id == message.vrid and
                      i.settings.family == family and i.address is not None]
        if len(candidates) > 1:
            candidates = [i for i in candidates if i.settings.name == message.instance] or \
                [i for i in candidates if self._index_of(i.settings.interface) == ifindex]
        if len(candidates) != 1:
            raise BadMessage("instance", f"VRID {message.vrid} IPv{family} ({message.instance}) "
                                         f"matches {len(candidates)} local instances")
        return candidates[0]

    def _check_source(self, inst: InstanceView, message: Message, source: IPAddress,
                      ifindex: int) -> None:
        s = inst.settings
        if source == inst.address or message.node == inst.address:
            raise BadMessage("self", f"from this node's own address {inst.address}")
        if s.unicast_peers:
            if source not in s.peers:
                raise BadMessage("source", f"{source} is not in unicast_peers of {s.name}")
        elif ifindex and ifindex != self._index_of(s.interface):
            raise BadMessage("source", f"arrived on interface index {ifindex}, not on "
                                       f"{s.interface} of {s.name}")

    def _drop(self, exc: BadMessage, source: IPAddress) -> None:
        self.drops[exc.reason] += 1
        level = logging.DEBUG if exc.reason == "self" else logging.WARNING
        self._throttled(level, "drop " + exc.reason,
                        f"vrrp: table digest check: dropped a datagram from {source}: {exc}")

    # --- reporting ------------------------------------------------------------------------

    def _report(self, events: list[Event]) -> None:
        for event in events:
            level, line = describe(event)
            log.log(level, "%s", line)

    def _throttled(self, level: int, key: str, message: str) -> None:
        now = self._clock()
        last = self._logged.get(key)
        if last is not None and now - last < LOG_EVERY:
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._logged[key] = now
        held = self._held.pop(key, 0)
        more = f" (and {held} more since the last report)" if held else ""
        log.log(level, "%s%s", message, more)

    def status(self) -> dict[str, Any]:
        """JSON-ready, for `l4lb vrrp status`: per instance (by name) the agreement and the
        peers, plus the port, our table, the counters and the drops by reason."""
        ours = self.ours()
        instances: dict[str, Any] = {}
        for inst in self._instances():
            name = inst.settings.name
            agreement = self._agreements.get(name)
            view = agreement.status() if agreement is not None else \
                {"agreement": "unknown", "peers": []}
            view["targets"] = [str(a) for a in self.targets(inst)] \
                if inst.address is not None else []
            instances[name] = view
        return {
            "running": self.running, "error": self.error, "port": self.port,
            "interval": self.interval, "grace": self.grace,
            "table": None if ours is None else {"generation": ours.generation,
                                                "digest": ours.digest},
            "instances": instances,
            "counters": {**vars(self.counters), "drops": dict(self.drops)},
        }


def _arrival_index(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The interface index from IP_PKTINFO / IPV6_PKTINFO ancillary data, 0 if absent."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and \
                len(data) >= _IN_PKTINFO.size:
            return int(_IN_PKTINFO.unpack_from(data)[0])
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and \
                len(data) >= _IN6_PKTINFO.size:
            return int(_IN6_PKTINFO.unpack_from(data)[1])
    return 0
