"""Half-open (SYN) health probes: one bare SYN from a raw socket, the verdict from the reply.

Design. A `kind = "tcp"` probe costs a socket, a connect, an epoll registration and a close, and
most of that is kernel time that no Python optimisation removes (docs/health.md, "Measured
cost"). A SYN probe asks the same first question - does the backend's kernel complete a
handshake on this port? - with one `sendto()` of a 20-byte TCP header on a raw socket
(IPPROTO_TCP: the kernel adds the IP header and routes it), and reads the answer from the same
raw socket:

    SYN  ->  SYN-ACK  = UP   ("syn-ack")
         ->  RST/ACK  = DOWN ("connect refused")
         ->  nothing within the timeout = DOWN ("connect timeout")

ICMP errors (host or port unreachable) arrive on ICMP, not on this socket: they end as a
timeout. The local kernel finishes the exchange for us: our source port belongs to a TCP socket
that is bound but never listens or connects, so a SYN-ACK for it matches no connection and no
listener and the kernel answers it with RST. The backend drops its half-open entry at once; its
application never accepts anything. The bound socket also keeps every other program (and every
ephemeral connect) off the port, so replies to it are ours. A lane (one per address family and
`source` address) reserves a few such ports and rotates through them, so two probes of the same
backend in quick succession do not reuse one 4-tuple.

A raw IPPROTO_TCP socket receives a copy of every TCP segment the host gets; that would tax the
data plane's traffic. A classic BPF program (SO_ATTACH_FILTER) keeps only unfragmented segments
to one of our reserved ports that carry SYN or RST, so the socket sees replies to our probes and
little else. IPv4 raw sockets deliver the IP header, IPv6 raw sockets only the TCP segment (the
peer address comes from recvfrom): the filter and the parser handle both layouts.

Matching: a reply belongs to a probe when (backend address, backend port, our port, ack - 1)
equals (address, port, source port, seq) of a probe in flight; seq is random per probe. Anything
else (a stray segment, a reply after the timeout, a wrong ack) is ignored. Received checksums
are not verified: the kernel's TCP stack verifies them after the raw copy is made, and loopback
segments carry no finished checksum at all.

Checksums: the pseudo-header needs the source address the kernel will pick; it is learned per
backend by connect()ing a UDP socket and reading getsockname(), and re-learned every
`SOURCE_TTL` seconds (routes change). Each backend has a template: the one's-complement sum of
the pseudo-header and every header field that does not change between probes. A probe adds its
source port and seq to that sum (RFC 1624 style: the checksum is updated, not recomputed), packs
the header in one struct call and sends it.

Replies are drained on one asyncio reader per raw socket until EAGAIN (at most `_MAX_DRAIN`
per callback, to bound loop lag). Timeouts use the same scheme as `ProbeEngine`: one FIFO of
(deadline, probe number) per distinct timeout, one timer for the earliest head.

The module splits into pure functions (checksum, packet build and parse, reply matching, the
BPF program) and `SynProbeEngine`, the only part that does I/O.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from l4lb.health.probe import ProbeResult, ProbeSpec

log = logging.getLogger("l4lb.health")

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10
TCP_HEADER_LEN = 20  # a bare SYN carries no options
SYN_WINDOW = 64240  # advertised window of the probe SYN (no data is ever accepted)
PORTS_PER_LANE = 4  # reserved source ports per (family, source address)
SOURCE_TTL = 60.0  # seconds before a backend's source address is looked up again
RCVBUF = 1 << 20  # bytes: the raw socket's receive buffer (a burst of 10,000 replies fits)
SO_ATTACH_FILTER = 26  # asm-generic/socket.h
_MAX_DRAIN = 512  # replies read per loop callback (bounds loop lag)
_RECV_SIZE = 256  # bytes read per reply: IPv4 header (<= 60) + TCP header (<= 60)
_TIMER_SLACK = 0.01  # seconds: resolution of probe timeouts
_TIMER_EARLY = 0.001  # seconds: asyncio may fire a timer this early
_MAX_EXPIRE = 256  # timeouts handled per timer callback

_SYN_HEADER = struct.Struct("!HHIIHHHH")  # sport dport seq ack offset+flags window csum urg
# an IPv4 header without options, then the TCP header up to its flags:
# frag, protocol, source address; source port, destination port, seq, ack, data offset, flags
_V4_PLAIN = struct.Struct("!6xH1xB2x4s4xHHIIBB")
_OFFSET_SYN = (5 << 12) | TCP_SYN  # data offset 5 words, flags SYN
_SYN_ACK = TCP_SYN | TCP_ACK
_new_tuple = tuple.__new__  # builds a ProbeResult without NamedTuple's Python-level __new__

# Local send failures: the probe could not be made, which says nothing about the backend.
_LOCAL_ERRNOS = frozenset({errno.ENOBUFS, errno.ENOMEM, errno.EAGAIN, errno.EMFILE,
                           errno.ENFILE, errno.EADDRNOTAVAIL, errno.EPERM, errno.EACCES,
                           errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT})
_SEND_REASONS = {errno.EHOSTUNREACH: "host unreachable", errno.ENETUNREACH: "network unreachable"}


# -- pure: checksums and packets ------------------------------------------------------------

def ones_sum(data: bytes) -> int:
    """One's-complement sum of `data` as big-endian 16-bit words (odd length: zero-padded),
    folded to 16 bits (not inverted)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo_header(src: bytes, dst: bytes, length: int) -> bytes:
    """The TCP pseudo-header for packed addresses (4 bytes: IPv4, 16: IPv6) and segment length."""
    if len(src) != len(dst) or len(src) not in (4, 16):
        raise ValueError("source and destination must both be IPv4 or both IPv6 (packed)")
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, length)
    return src + dst + struct.pack("!I3xB", length, socket.IPPROTO_TCP)


def tcp_checksum(src: bytes, dst: bytes, segment: bytes) -> int:
    """The TCP checksum of `segment` (its checksum field taken as it is: zero it first)."""
    return ~ones_sum(pseudo_header(src, dst, len(segment)) + segment) & 0xFFFF


def syn_partial_sum(src: bytes, dst: bytes, dport: int, window: int = SYN_WINDOW) -> int:
    """The template of a SYN to `dport`: the folded sum of the pseudo-header and every SYN field
    except source port and seq (which `build_syn` adds)."""
    fixed = _SYN_HEADER.pack(0, dport, 0, 0, _OFFSET_SYN, window, 0, 0)
    return ones_sum(pseudo_header(src, dst, TCP_HEADER_LEN) + fixed)


def build_syn(partial: int, sport: int, dport: int, seq: int, window: int = SYN_WINDOW) -> bytes:
    """A bare SYN (20 bytes) from the template `partial` (see syn_partial_sum)."""
    total = partial + sport + (seq >> 16) + (seq & 0xFFFF)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return _SYN_HEADER.pack(sport, dport, seq, 0, _OFFSET_SYN, window, ~total & 0xFFFF, 0)


class Reply(NamedTuple):
    """The fields of a received TCP segment that matching needs."""

    peer: bytes  # packed address of the sender (the backend)
    peer_port: int  # its source port (the probed port)
    our_port: int  # its destination port (one of our reserved ports)
    seq: int  # its sequence number
    ack: int  # its acknowledgement number
    flags: int  # TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10, ...)


def parse_reply(packet: bytes, family: int, peer: bytes | None = None) -> Reply | None:
    """Parse what a raw IPPROTO_TCP socket delivered; None if it is not a whole TCP header.

    AF_INET: `packet` starts with the IPv4 header (the peer is read from it). AF_INET6: it is
    the TCP segment alone and `peer` is the sender's packed address (from recvfrom)."""
    n = len(packet)
    if family == socket.AF_INET and n >= 40 and packet[0] == 0x45:  # no IP options: one unpack
        frag, proto, src, sport, dport, seq, ack, doff, flags = _V4_PLAIN.unpack_from(packet)
        if proto != socket.IPPROTO_TCP or frag & 0x3FFF or doff < 0x50 or \
                n < 20 + (doff >> 4) * 4:
            return None
        return _new_tuple(Reply, (src, sport, dport, seq, ack, flags))
    if family == socket.AF_INET:
        if n < 20 or packet[0] >> 4 != 4:
            return None
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or packet[9] != socket.IPPROTO_TCP:
            return None
        if (packet[6] << 8 | packet[7]) & 0x3FFF:  # a fragment (MF set or offset != 0)
            return None
        src = packet[12:16]
        off = ihl
    elif family == socket.AF_INET6:
        if peer is None or len(peer) != 16:
            return None
        src = peer
        off = 0
    else:
        return None
    if n < off + TCP_HEADER_LEN:
        return None
    doff = (packet[off + 12] >> 4) * 4
    if doff < TCP_HEADER_LEN or n < off + doff:  # bad data offset or truncated options
        return None
    sport, dport, seq, ack = struct.unpack_from("!HHII", packet, off)
    return Reply(src, sport, dport, seq, ack, packet[off + 13])


def reply_verdict(flags: int) -> bool | None:
    """True for a SYN-ACK, False for a RST that acknowledges our SYN, None for anything else."""
    if flags & TCP_RST:
        return False if flags & TCP_ACK else None
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK:
        return True
    return None


def match_key(reply: Reply) -> tuple[bytes, int, int, int]:
    """The in-flight key the reply answers: (backend, backend port, our port, our seq)."""
    return (reply.peer, reply.peer_port, reply.our_port, (reply.ack - 1) & 0xFFFFFFFF)


def probe_key(backend: bytes, port: int, our_port: int, seq: int) -> tuple[bytes, int, int, int]:
    """The in-flight key of a probe: what `match_key` of its reply must equal."""
    return (backend, port, our_port, seq)


# classic BPF opcodes (linux/bpf_common.h)
_LD_H_ABS = 0x28
_LD_B_ABS = 0x30
_LD_H_IND = 0x48
_LD_B_IND = 0x50
_LDX_B_MSH = 0xB1
_JEQ_K = 0x15
_JSET_K = 0x45
_RET_K = 0x06

BpfInsn = tuple[int, int, int, int]  # (code, jt, jf, k)


def bpf_program(family: int, ports: Sequence[int], snap: int = _RECV_SIZE) -> list[BpfInsn]:
    """A classic BPF program that accepts (up to `snap` bytes of) unfragmented TCP segments to
    one of `ports` with SYN or RST set, and drops everything else.

    AF_INET programs see the IPv4 header first; AF_INET6 programs see the TCP header first."""
    if not 1 <= len(ports) <= 32:
        raise ValueError("between 1 and 32 ports")
    prog: list[BpfInsn] = []
    nports = len(ports)
    # layout after the prefix: jeq x nports, ldb flags, jset, ret snap, ret 0
    if family == socket.AF_INET:
        prog.append((_LD_H_ABS, 0, 0, 6))  # flags + fragment offset
        # any fragment -> drop: over ldx, ldh, the jeq's, ldb, jset and ret snap
        prog.append((_JSET_K, nports + 5, 0, 0x3FFF))
        prog.append((_LDX_B_MSH, 0, 0, 0))  # x = IPv4 header length
        prog.append((_LD_H_IND, 0, 0, 2))  # TCP destination port
        flags_ld = (_LD_B_IND, 0, 0, 13)
    elif family == socket.AF_INET6:
        prog.append((_LD_H_ABS, 0, 0, 2))
        flags_ld = (_LD_B_ABS, 0, 0, 13)
    else:
        raise ValueError(f"unsupported address family {family}")
    for i, port in enumerate(ports):
        if not 1 <= port <= 65535:
            raise ValueError(f"bad port {port}")
        to_flags = nports - 1 - i  # jump over the remaining jeq's
        to_drop = 0 if i < nports - 1 else 3  # last one: over ldb, jset, ret snap
        prog.append((_JEQ_K, to_flags, to_drop, port))
    prog.append(flags_ld)
    prog.append((_JSET_K, 0, 1, TCP_SYN | TCP_RST))
    prog.append((_RET_K, 0, 0, snap))
    prog.append((_RET_K, 0, 0, 0))
    return prog


def attach_filter(sock: socket.socket, prog: Sequence[BpfInsn]) -> None:
    """SO_ATTACH_FILTER: install a classic BPF program on `sock` (OSError on failure)."""
    code = b"".join(struct.pack("HBBI", *insn) for insn in prog)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HP", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def drain_unfiltered(raw: socket.socket) -> int:
    """Discard what a new raw socket queued before its BPF filter was attached (any TCP
    segment on the host in that moment; it would show up as stray). Returns the count
    (bounded: the socket's receive buffer holds far fewer)."""
    for n in range(1 << 16):
        try:
            raw.recv(_RECV_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return n
    return 1 << 16


def raw_socket_problem(family: int = socket.AF_INET) -> str | None:
    """Why a raw TCP socket cannot be opened here (None: it can). For config checks."""
    try:
        socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_TCP).close()
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    return None


def learn_source(spec: ProbeSpec) -> bytes:
    """The packed source address the kernel uses towards spec's backend (OSError if none): a
    UDP socket's getsockname after connect."""
    udp = socket.socket(spec.family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        if spec.source is not None:
            udp.bind(spec.source)
        udp.connect(spec.sockaddr)
        src_text = udp.getsockname()[0]
    finally:
        udp.close()
    return socket.inet_pton(spec.family, src_text.split("%", 1)[0])


# -- the engine -------------------------------------------------------------------------------

def _strerror(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


class _Lane:
    """The raw socket and reserved source ports of one (family, source address)."""

    __slots__ = ("family", "next", "nports", "ports", "raw", "reserved", "sendto", "source")

    def __init__(self, family: int, source: str | None, nports: int) -> None:
        self.family = family  # AF_INET or AF_INET6
        self.source = source  # bind address of probes, None: the routing table decides
        self.reserved: list[socket.socket] = []  # bound, never listening: they own the ports
        self.ports: list[int] = []  # the reserved ports, in rotation order
        self.next = 0  # index into ports of the next probe's source port
        self.nports = 0  # len(ports)
        self.raw: socket.socket | None = None  # the raw IPPROTO_TCP socket
        try:
            wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
            for _ in range(nports):
                res = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                self.reserved.append(res)
                if family == socket.AF_INET6:
                    res.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                res.bind((source or wildcard, 0))
                self.ports.append(res.getsockname()[1])
            self.nports = len(self.ports)
            raw = socket.socket(family, socket.SOCK_RAW | socket.SOCK_NONBLOCK |
                                socket.SOCK_CLOEXEC, socket.IPPROTO_TCP)
            self.raw = raw
            self.sendto = raw.sendto  # bound once: every probe calls it
            attach_filter(raw, bpf_program(family, self.ports))
            drain_unfiltered(raw)  # what arrived before the filter: not ours, not strays
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            if source is not None:
                raw.bind((source, 0))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()
            self.raw = None
        for res in self.reserved:
            res.close()
        self.reserved.clear()


class _Target:
    """What a probe of one backend needs, learned once (and again after SOURCE_TTL)."""

    __slots__ = ("dport", "dst", "expires", "lane", "partial", "sockaddr")

    def __init__(self, lane: _Lane, dst: bytes, dport: int, sockaddr: tuple[Any, ...],
                 partial: int, expires: float) -> None:
        self.lane = lane  # the raw socket and ports the probes go through
        self.dst = dst  # packed backend address
        self.dport = dport  # probed port
        self.sockaddr = sockaddr  # sendto() address (port 0: raw sockets ignore it)
        self.partial = partial  # syn_partial_sum for the current source address
        self.expires = expires  # monotonic time to look the source address up again


class SynProbe:
    """One SYN probe in flight (the handle SynProbeEngine.start returns)."""

    __slots__ = ("callback", "deadline", "engine", "key", "spec", "started", "token")

    def __init__(self, engine: SynProbeEngine, spec: ProbeSpec,
                 callback: Callable[[Any, ProbeResult], None], token: Any,
                 started: float) -> None:
        self.engine = engine  # the engine that runs it
        self.spec = spec  # what is probed
        self.callback = callback  # called once with (token, result) unless cancelled
        self.token = token  # caller's context
        self.started = started  # monotonic send time
        self.deadline = started + spec.timeout  # monotonic time of the timeout
        self.key: tuple[bytes, int, int, int] | None = None  # in-flight key while waiting

    @property
    def done(self) -> bool:
        """True once finished or cancelled."""
        return self.callback is _cancelled

    def cancel(self) -> None:
        """Abandon the probe; its callback will not be called."""
        self.callback = _cancelled
        self.engine._forget(self)


def _cancelled(token: Any, result: ProbeResult) -> None:
    """Placeholder callback of a probe whose result must not be delivered."""


class SynProbeEngine:
    """Runs SYN probes on one asyncio loop: one raw socket per (family, source address)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None,
                 ports_per_lane: int = PORTS_PER_LANE) -> None:
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._ports_per_lane = ports_per_lane  # reserved source ports per lane
        self._lanes: dict[tuple[int, str | None], _Lane] = {}  # (family, source) -> lane
        # sockaddr (no source) or (sockaddr, source) -> target
        self._targets: dict[tuple[Any, ...], _Target] = {}
        # Probes waiting for a reply, by the key their reply must carry (see match_key). A
        # probe leaves it when answered, timed out or cancelled.
        self._flight: dict[tuple[bytes, int, int, int], SynProbe] = {}
        # Deadlines: per distinct timeout, a FIFO of (deadline, key) in deadline order; an
        # entry whose key has left _flight (or now names a later probe) is skipped.
        self._deadlines: dict[float, deque[tuple[float, tuple[bytes, int, int, int]]]] = {}
        self._timer: asyncio.TimerHandle | None = None  # armed for the earliest deadline
        self._timer_at = float("inf")  # when _timer fires
        # seq numbers: seeded from the OS so that an off-path host cannot predict them
        self._rand = random.Random(os.urandom(16)).getrandbits
        self._closed = False
        self.stray = 0  # segments that passed the filter but matched no probe

    @property
    def in_flight(self) -> int:
        """Probes sent and not yet answered, timed out or cancelled."""
        return len(self._flight)

    def reserved_ports(self) -> dict[tuple[int, str | None], list[int]]:
        """The reserved source ports of every open lane (for tests and diagnostics)."""
        return {k: list(lane.ports) for k, lane in self._lanes.items()}

    def start(self, spec: ProbeSpec, callback: Callable[[Any, ProbeResult], None],
              token: Any) -> SynProbe:
        """Send one SYN; `callback(token, result)` runs later on the loop, exactly once."""
        if self._closed:
            raise RuntimeError("probe engine is closed")
        now = time.monotonic()
        probe = SynProbe(self, spec, callback, token, now)
        target = self._targets.get(spec.sockaddr if spec.source is None else
                                   (spec.sockaddr, spec.source))
        if target is None or now > target.expires:
            try:
                target = self._learn(spec, now)
            except OSError as exc:
                self._finish_soon(probe, exc)
                return probe
        lane = target.lane
        i = lane.next
        lane.next = i + 1 if i + 1 < lane.nports else 0
        sport = lane.ports[i]
        seq = self._rand(32)
        dport = target.dport
        total = target.partial + sport + (seq >> 16) + (seq & 0xFFFF)
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        try:
            lane.sendto(_SYN_HEADER.pack(sport, dport, seq, 0, _OFFSET_SYN, SYN_WINDOW,
                                         ~total & 0xFFFF, 0), target.sockaddr)
        except OSError as exc:
            self._finish_soon(probe, exc, sending=True)
            return probe
        key = (target.dst, dport, sport, seq)
        probe.key = key
        self._flight[key] = probe
        deadline = probe.deadline
        fifo = self._deadlines.get(spec.timeout)
        if fifo is None:
            fifo = self._deadlines[spec.timeout] = deque()
        fifo.append((deadline, key))
        if deadline < self._timer_at:
            self._arm(deadline)
        return probe

    def _learn(self, spec: ProbeSpec, now: float) -> _Target:
        """The target of spec's backend: its lane (opened on first use) and the source address
        the kernel uses towards it (a UDP socket's getsockname after connect)."""
        source = spec.source[0] if spec.source is not None else None
        lane = self._lanes.get((spec.family, source))
        if lane is None:
            lane = self._open_lane(spec.family, source)
        src = learn_source(spec)
        dst = socket.inet_pton(spec.family, spec.host)
        sockaddr = (spec.host, 0, 0, spec.sockaddr[3]) if spec.family == socket.AF_INET6 \
            else (spec.host, 0)
        target = _Target(lane, dst, spec.port, sockaddr, syn_partial_sum(src, dst, spec.port),
                         now + SOURCE_TTL)
        self._targets[spec.sockaddr if spec.source is None else
                      (spec.sockaddr, spec.source)] = target
        return target

    def _open_lane(self, family: int, source: str | None) -> _Lane:
        try:
            lane = _Lane(family, source, self._ports_per_lane)
        except OSError as exc:
            raise _LaneError(exc, source) from None
        assert lane.raw is not None
        self._lanes[family, source] = lane
        self._loop.add_reader(lane.raw.fileno(), self._on_readable, lane)
        return lane

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _finish_soon(self, probe: SynProbe, exc: OSError, sending: bool = False) -> None:
        """Deliver a failure to start the probe, from a fresh loop callback."""
        err = exc.errno or 0
        text = _strerror(exc.__cause__ if isinstance(exc, _LaneError) and
                         isinstance(exc.__cause__, OSError) else exc)
        if isinstance(exc, _LaneError):
            where = f" ({exc.source})" if exc.source is not None else ""
            reason, conclusive = f"cannot set up raw probe socket{where}: {text}", False
        elif err in _SEND_REASONS:
            reason, conclusive = _SEND_REASONS[err], True
        elif sending:
            reason, conclusive = f"send failed: {text}", err not in _LOCAL_ERRNOS
        else:
            reason, conclusive = f"cannot find source address: {text}", False
        result = ProbeResult(False, reason, time.monotonic() - probe.started, conclusive)
        self._loop.call_soon(self._deliver_late, probe, result)

    def _deliver_late(self, probe: SynProbe, result: ProbeResult) -> None:
        callback = probe.callback
        if callback is _cancelled:
            return
        probe.callback = _cancelled
        try:
            callback(probe.token, result)
        except Exception:  # a broken callback must not stop the other probes
            log.exception("health probe callback failed for %s", probe.spec)

    def _forget(self, probe: SynProbe) -> None:
        key = probe.key
        if key is not None:
            probe.key = None
            if self._flight.get(key) is probe:
                del self._flight[key]

    def _on_readable(self, lane: _Lane) -> None:
        raw = lane.raw
        if raw is None:
            return
        family = lane.family
        v4 = family == socket.AF_INET
        flight = self._flight
        recv = raw.recv
        recvfrom = raw.recvfrom
        unpack_v4 = _V4_PLAIN.unpack_from
        peer = None
        # one clock reading per batch: the replies of a batch all arrived before it was read
        now = time.monotonic()
        for _ in range(_MAX_DRAIN):
            try:
                if v4:
                    packet = recv(_RECV_SIZE)  # the peer is in the IPv4 header
                else:
                    packet, addr = recvfrom(_RECV_SIZE)
                    peer = socket.inet_pton(family, addr[0].split("%", 1)[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ENOBUFS: replies were lost; the probes time out
                log.debug("health: raw socket receive failed: %s", exc)
                return
            if v4 and packet[0] == 0x45 and len(packet) >= 40:
                # parse_reply's common case, inlined (this runs for every reply)
                frag, proto, src, sport, dport, _seq, ack, doff, flags = unpack_v4(packet)
                if proto != 6 or frag & 0x3FFF or doff < 0x50 or \
                        len(packet) < 20 + (doff >> 4) * 4:
                    self.stray += 1
                    continue
                key = (src, sport, dport, (ack - 1) & 0xFFFFFFFF)
            else:
                reply = parse_reply(packet, family, peer)
                if reply is None:
                    self.stray += 1
                    continue
                flags = reply[5]
                key = (reply[0], reply[1], reply[2], (reply[4] - 1) & 0xFFFFFFFF)
            if flags & TCP_RST:
                if not flags & TCP_ACK:
                    self.stray += 1
                    continue
                ok = False
            elif flags & _SYN_ACK == _SYN_ACK:
                ok = True
            else:
                self.stray += 1
                continue
            probe = flight.pop(key, None)
            if probe is None:  # not ours, or late: the probe timed out already
                self.stray += 1
                log.debug("health: unmatched segment port %d -> %d flags %#x", key[1], key[2],
                          flags)
                continue
            probe.key = None
            callback = probe.callback
            probe.callback = _cancelled
            try:
                callback(probe.token, _new_tuple(ProbeResult, (
                    ok, "syn-ack" if ok else "connect refused", now - probe.started, True, None)))
            except Exception:  # a broken callback must not stop the other probes
                log.exception("health probe callback failed for %s", probe.spec)
            if self._closed:
                return

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        now = time.monotonic()
        limit = now + _TIMER_EARLY
        flight = self._flight
        budget = _MAX_EXPIRE
        pops = 4 * _MAX_EXPIRE
        for timeout, fifo in list(self._deadlines.items()):
            while fifo and budget and pops:
                deadline, key = fifo[0]
                probe = flight.get(key)
                live = probe is not None and probe.deadline == deadline
                if live and deadline > limit:
                    break
                fifo.popleft()
                pops -= 1
                if probe is None or not live:
                    continue  # answered or cancelled long ago
                budget -= 1
                del flight[key]
                probe.key = None
                callback = probe.callback
                probe.callback = _cancelled
                try:
                    callback(probe.token, _new_tuple(ProbeResult, (
                        False, "connect timeout", now - probe.started, True, None)))
                except Exception:  # a broken callback must not stop the other probes
                    log.exception("health probe callback failed for %s", probe.spec)
                if self._closed:
                    return
            if not fifo and self._deadlines.get(timeout) is fifo:
                del self._deadlines[timeout]
        heads = [fifo[0][0] for fifo in self._deadlines.values() if fifo]
        if not budget or not pops:
            self._arm(now)
        elif heads:
            self._arm(max(min(heads), now + _TIMER_SLACK))

    def close(self) -> None:
        """Abandon every probe in flight, close the raw sockets and free the ports. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for probe in self._flight.values():
            probe.callback = _cancelled
            probe.key = None
        self._flight.clear()
        self._deadlines.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for lane in self._lanes.values():
            if lane.raw is not None:
                self._loop.remove_reader(lane.raw.fileno())
            lane.close()
        self._lanes.clear()
        self._targets.clear()


class _LaneError(OSError):
    """The raw socket or the reserved ports of a lane could not be set up (cause: OSError)."""

    def __init__(self, cause: OSError, source: str | None) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.__cause__ = cause
        self.source = source  # the lane's source address, None for the kernel's choice
