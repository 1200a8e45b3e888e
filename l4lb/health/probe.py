"""Run active health probes (TCP connect, connect + send + expect, HTTP, UDP datagrams) on the
asyncio event loop.

Design. The checker must probe 10,000 backends a second without stalling the event loop it
shares with VRRP, so a probe is not a coroutine, a task or a future. `ProbeEngine` owns one
private epoll instance and registers only that epoll fd with the asyncio loop (`add_reader`).
A probe is a small slotted object driven by callbacks:

    socket(SOCK_NONBLOCK) -> SO_LINGER {on, 0} -> [bind source] -> connect() -> EINPROGRESS
    -> epoll EPOLLOUT -> connected? (the event mask says so; SO_ERROR only on an error event)
    -> tcp: done | send_expect: send() -> EPOLLIN -> recv() until expect matches -> close()
                 | http: send(request) -> EPOLLIN -> recv() until HttpExpect.judge decides

which is five or six system calls and no per-probe asyncio object. A kind "udp" probe is

    socket(SOCK_DGRAM) -> [bind source] -> connect() -> send(datagram) -> epoll EPOLLIN
    -> recv(): the first datagram, or a queued ICMP error (ECONNREFUSED: port unreachable)

with the datagram sent once more at UDP_RESEND_AT x timeout (a second FIFO per timeout).

A probe over TLS (kind "tls", or tls = true with "http" or "send_expect") is the same object:
once connected it drives an ssl.SSLObject over two memory BIOs, moving the bytes with its own
send()/recv() on the same epoll (see "TLS" below), with a context shared by every probe of the
same settings (l4lb/health/tlscontext.py) and reasons from l4lb/health/tlsverdict.py.

When the epoll fd becomes readable, one callback drains up to `max_events` events. Timeouts need
no heap: every probe with the same timeout has a later deadline than the probes started before
it (the clock is monotonic), so the engine keeps one FIFO of (deadline, probe number) per
distinct timeout value (one per service in practice), appends in O(1), pops expired heads in
O(1), and arms one asyncio timer for the earliest head. Probe sockets close with SO_LINGER
{1, 0}: an RST instead of a FIN, so 10,000 probes a second leave no TIME_WAIT sockets and use no
ephemeral ports for long (a backend may log the reset as an aborted connection).

Events of one epoll batch apply only to probes started before that batch was polled: a callback
may close a probe and start another that reuses its fd number, and that new probe must not see
the old fd's readiness.

A probe's verdict is a `ProbeResult(ok, reason, latency, conclusive)`. Reasons are short and
meant for operators: "connect ok", "expect matched", "connect refused", "connect timeout",
"read timeout", "connection closed", "connection reset", "expect mismatch: got b'...'";
kind "udp": "reply received", "reply matched", "port unreachable (ICMP)", "no reply (timeout)";
`kind = "http"` probes give the reasons of `l4lb.health.httpresponse` ("HTTP 200 OK",
"HTTP 503 Service Unavailable", "read timeout in the headers (HTTP 200 OK)", ...).
A result is *inconclusive* when the failure is local (no free fd, the source address cannot be
bound, no ephemeral port): it says nothing about the backend and must not count against it.

Specs of `kind = "syn"` (half-open probes through a raw socket) go to a `SynProbeEngine`
(l4lb/health/synprobe.py) that this engine opens on first use and closes with itself, so the
checker drives both kinds through one `start()` and gets the same `ProbeResult`s. Specs of
`kind = "exec"` (a command decides) go the same way to an `ExecProbeEngine`
(l4lb/health/execprobe.py).

`run_probe()` is the coroutine wrapper for one-off probes (tests, a future `l4lb probe`).
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import re
import select
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from l4lb import __version__, proxyproto
from l4lb.health.execprobe import ExecCommand, ExecProbeEngine
from l4lb.health.httpresponse import HttpExpect
from l4lb.health.settings import HealthSettings
from l4lb.health.tlscontext import TlsClient, client_for
from l4lb.health.tlsverdict import handshake_failure, not_after, passed, session_failure

if TYPE_CHECKING:
    from l4lb.health.synprobe import SynProbeEngine

log = logging.getLogger("l4lb.health")

T = TypeVar("T")

READ_LIMIT = 16384  # bytes read at most while waiting for `expect` to match
_RECV_CHUNK = 4096  # bytes per recv() call
_SHOW_BYTES = 40  # bytes of a reply shown in a mismatch reason
USER_AGENT = f"l4lb-health/{__version__}"  # kind "http": names the prober in access logs
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, no TIME_WAIT
_IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: bind(source, 0) picks the port at connect()
_TIMER_SLACK = 0.01  # seconds: resolution of probe timeouts (a timeout is at most this late)
_MAX_POPS = 1024  # deadline-queue entries removed per loop callback (bounds loop lag)
_TIMER_EARLY = 0.001  # seconds: asyncio may fire a timer this early; count it as due
_EINPROGRESS = errno.EINPROGRESS
_SOL_SOCKET = socket.SOL_SOCKET
_SO_LINGER = socket.SO_LINGER
_SOCK_TYPE = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_UDP_SOCK_TYPE = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
UDP_RESEND_AT = 0.5  # kind "udp": the datagram is sent again after this fraction of `timeout`
_EPOLLOUT = select.EPOLLOUT
_EPOLLIN = select.EPOLLIN
_EPOLL_BAD = select.EPOLLERR | select.EPOLLHUP
_new_tuple = tuple.__new__  # builds a ProbeResult without NamedTuple's Python-level __new__

# Phases of a probe.
_CONNECTING = 0
_SENDING = 1
_READING = 2
_DONE = 3
_HANDSHAKING = 4  # TLS: the handshake is under way
_CONFIRMING = 5  # TLS 1.3 with a client certificate: waiting for the backend's verdict on it

_PHASE_TIMEOUT = {_CONNECTING: "connect timeout", _SENDING: "send timeout",
                  _READING: "read timeout", _HANDSHAKING: "TLS handshake timed out",
                  _CONFIRMING: "TLS: no answer to the client certificate"}
_TLS_RECV = 16384  # bytes per recv() of TLS records (one full record)
_TLS_STEPS = 16  # recv/handshake rounds per event at most (bounds one probe's share of a batch)
TLS_SLICE = 0.005  # seconds of TLS work per loop callback, at most about (then the next turn)

# errno -> reason; anything else becomes "connect error: <strerror>".
_ERRNO_REASONS = {
    errno.ECONNREFUSED: "connect refused",
    errno.ETIMEDOUT: "connect timeout",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ECONNRESET: "connection reset",
    errno.EPIPE: "connection closed",
}
# Local failures: the probe could not be made, which says nothing about the backend.
_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                           errno.EADDRNOTAVAIL, errno.EADDRINUSE, errno.EAGAIN})
# kind "udp": errors a connected UDP socket reports on send() or recv(). ICMP errors about an
# earlier datagram come back this way: port unreachable as ECONNREFUSED, host, network and
# "administratively prohibited" unreachables as EHOSTUNREACH / ENETUNREACH (linux/icmp.c's
# icmp_err_convert; the same for ICMPv6). A send refused by this host's own firewall (EPERM,
# EACCES from an OUTPUT rule) or short of buffers is local, as for kind "syn".
_UDP_ERRNO_REASONS = {
    errno.ECONNREFUSED: "port unreachable (ICMP)",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
}
_UDP_LOCAL_ERRNOS = _LOCAL_ERRNOS | {errno.EPERM, errno.EACCES}


class ProbeResult(NamedTuple):
    """The verdict of one probe."""

    ok: bool  # the backend passed
    reason: str  # short operator-readable cause ("connect refused", "expect matched")
    latency: float  # seconds from the start of the probe to the verdict
    conclusive: bool = True  # False: a local failure that says nothing about the backend
    # kind "exec" with dynamic = true (misc_dynamic): the weight an exit status 2..255 sets
    # (status - 2); None: the probe sets no weight
    weight: int | None = None


class ProbeHandle(Protocol):
    """A probe in flight, of either engine."""

    def cancel(self) -> None:
        """Abandon the probe; its callback will not be called."""


@dataclass(frozen=True)
class ProbeSpec:
    """Everything needed to probe one backend, precomputed once per backend."""

    host: str  # backend address (canonical text)
    port: int  # port probed (the health `port` override, else the backend's)
    family: int  # socket.AF_INET or AF_INET6
    sockaddr: tuple[Any, ...]  # (host, port) or (host, port, flowinfo, scope_id)
    source: tuple[Any, ...] | None  # sockaddr to bind before connecting, port 0
    timeout: float  # seconds for the whole probe
    send: bytes  # sent once connected ("" for none)
    expect: bytes | re.Pattern[bytes] | None  # None: the connect alone decides
    syn: bool = False  # half-open probe through a raw socket (kind "syn") instead of connect
    http: HttpExpect | None = None  # kind "http": judges the reply to `send` (the request)
    udp: bool = False  # kind "udp": `send` is one datagram, the first reply datagram decides
    command: ExecCommand | None = None  # kind "exec": run this; its exit status decides
    # kind "tls", or tls = true: the shared client context and the server name; `send` then
    # goes over TLS, and `preamble` (a PROXY header) before the handshake, in the clear
    tls: TlsClient | None = field(default=None, compare=False)
    preamble: bytes = b""
    # derived: a completed handshake is the verdict (no send, no expect); the engine's fast path
    connect_only: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "connect_only",
                           self.expect is None and not self.send and self.http is None
                           and not self.udp and self.command is None and self.tls is None)

    @classmethod
    def build(cls, host: str, port: int, settings: HealthSettings) -> ProbeSpec:
        """The spec for backend host:port under these settings.

        ValueError if the source address is of another family than the backend, or
        command_user (kind "exec") is no user of this host.
        """
        addr = ipaddress.ip_address(host)
        probe_port = settings.port if settings.port is not None else port
        v6 = addr.version == 6
        family = socket.AF_INET6 if v6 else socket.AF_INET
        sockaddr: tuple[Any, ...] = (str(addr), probe_port, 0, 0) if v6 else (str(addr),
                                                                               probe_port)
        source: tuple[Any, ...] | None = None
        if settings.source is not None:
            src = ipaddress.ip_address(settings.source)
            if src.version != addr.version:
                raise ValueError(f"health.source {settings.source} is IPv{src.version} but "
                                 f"backend {host} is IPv{addr.version}")
            source = (str(src), 0, 0, 0) if v6 else (str(src), 0)
        payload = settings.kind in ("send_expect", "udp")
        expect = settings.expect if payload else None
        send = settings.send if payload else b""
        http: HttpExpect | None = None
        if settings.kind == "http":
            send = http_request(settings, str(addr), probe_port)
            http = HttpExpect(statuses=settings.http_expect_status,
                              body=settings.http_expect_body)
        preamble = b""
        if settings.kind in ("send_expect", "http", "tls") and settings.proxy_protocol != "off":
            # a probe is the balancer's own connection, not a relayed client: LOCAL. Never
            # for "udp": a datagram carries no PROXY header (settings refuse the combination).
            # Over TLS the header comes first, in the clear, as the data plane sends it.
            preamble = proxyproto.local(proxyproto.version_number(settings.proxy_protocol))
        tls = client_for(settings) if settings.speaks_tls else None
        if tls is None:
            send, preamble = preamble + send, b""
        command = ExecCommand.build(settings, str(addr), port, probe_port) \
            if settings.kind == "exec" else None
        return cls(host=str(addr), port=probe_port, family=family, sockaddr=sockaddr,
                   source=source, timeout=settings.timeout, send=send, expect=expect,
                   syn=settings.kind == "syn", http=http, udp=settings.kind == "udp",
                   command=command, tls=tls, preamble=preamble)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family == socket.AF_INET6 else \
            f"{self.host}:{self.port}"


def http_request(settings: HealthSettings, host: str, port: int) -> bytes:
    """The bytes of a kind "http" probe's request to host:port (the address probed)."""
    default_port = 443 if settings.speaks_tls else 80
    if settings.http_host is not None:
        authority = settings.http_host
    else:
        # over TLS with a server name, the name: a backend that routes by SNI expects Host to
        # agree with it (some answer 421 Misdirected Request otherwise)
        name = settings.tls_server_name if settings.tls_server_name is not None else \
            f"[{host}]" if ":" in host else host
        authority = name if port == default_port else f"{name}:{port}"
    return (f"{settings.http_method} {settings.http_path} HTTP/1.1\r\n"
            f"Host: {authority}\r\n"
            f"User-Agent: {USER_AGENT}\r\n"
            "Connection: close\r\n"
            "\r\n").encode("ascii")


def _errno_reason(err: int) -> str:
    return _ERRNO_REASONS.get(err) or f"connect error: {os.strerror(err).lower()}"


def _shown(data: bytes | bytearray) -> str:
    head = bytes(data[:_SHOW_BYTES])
    return repr(head) + ("..." if len(data) > _SHOW_BYTES else "")


def udp_error(err: int, what: str) -> tuple[str, bool]:
    """kind "udp": (reason, conclusive) for errno `err` of a send() or recv() (`what`)."""
    reason = _UDP_ERRNO_REASONS.get(err)
    if reason is not None:
        return reason, True
    return f"{what} failed: {os.strerror(err).lower()}", err not in _UDP_LOCAL_ERRNOS


def judge_datagram(expect: bytes | re.Pattern[bytes] | None, data: bytes) -> tuple[bool, str]:
    """kind "udp": (ok, reason) for the first reply datagram (at most READ_LIMIT bytes of it).

    No `expect`: any reply passes, an empty datagram too. A literal must be a prefix of the
    datagram; a regex is searched in it.
    """
    if expect is None:
        return True, "reply received"
    ok = data.startswith(expect) if isinstance(expect, bytes) else \
        expect.search(data) is not None
    return (True, "reply matched") if ok else (False, f"expect mismatch: got {_shown(data)}")


class Probe:
    """One probe in flight (the handle ProbeEngine.start returns); owned by its engine."""

    __slots__ = ("batch", "buf", "callback", "deadline", "engine", "fd", "number", "phase",
                 "sent", "sock", "spec", "started", "tls", "token")

    def __init__(self, engine: ProbeEngine, spec: ProbeSpec,
                 callback: Callable[[Any, ProbeResult], None], token: Any,
                 started: float) -> None:
        self.engine = engine  # the engine that runs it
        self.spec = spec  # what to probe
        self.callback = callback  # called once with (token, result) unless cancelled
        self.token = token  # caller's context, passed back to callback
        self.sock: _socket.socket | None = None  # None once closed
        self.fd = -1  # the socket's fd while registered with the engine's epoll
        self.phase = _CONNECTING  # _CONNECTING, _SENDING, _READING or _DONE
        self.started = started  # monotonic start time
        self.deadline = started + spec.timeout  # monotonic time of the timeout
        self.batch = 0  # engine batch number at registration (see module docstring)
        self.number = 0  # engine-wide probe number, key of the engine's deadline table
        self.sent = 0  # bytes of spec.send already sent
        self.buf: bytes | bytearray = b""  # bytes read so far (a bytearray once data came)
        self.tls: _TlsState | None = None  # kind "tls", tls = true: once connected

    @property
    def done(self) -> bool:
        """True once finished or cancelled."""
        return self.phase == _DONE

    def cancel(self) -> None:
        """Abandon the probe: close its socket; its callback will not be called."""
        self.phase = _DONE
        self.engine._release(self)


class _TlsState:
    """The TLS session of one probe (kind "tls", tls = true)."""

    __slots__ = ("eof", "head", "incoming", "mask", "obj", "outgoing", "pending", "summary",
                 "verdict")

    def __init__(self, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                 pending: bytes) -> None:
        self.obj = obj  # the session
        self.incoming = incoming  # bytes from the backend, for the session
        self.outgoing = outgoing  # bytes of the session, for the backend
        self.pending = pending  # bytes to send before anything else (a PROXY header)
        self.head = b""  # the first bytes the backend sent (shown when they are not TLS)
        self.eof = False  # the backend closed its side
        self.mask = _EPOLLOUT  # what the probe's fd is registered for
        self.verdict = ""  # kind "tls": the reason of the pass, taken when the handshake ended
        # http, send_expect: the version and the certificate's notAfter, added to a pass
        self.summary = ""


class ProbeEngine:
    """Runs many probes concurrently on one asyncio loop through one private epoll instance."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None,
                 max_events: int = 64) -> None:
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._ep = select.epoll()  # private epoll; its own fd is watched by the asyncio loop
        self._max_events = max_events  # events handled per loop callback (bounds loop lag)
        self._max_expire = max_events * 2  # timeouts handled per loop callback (cheaper)
        self._by_fd: dict[int, Probe] = {}  # registered probes by socket fd
        # Deadlines: per distinct timeout, a FIFO of (deadline, probe number) in deadline order
        # (see the module docstring), and a dict number -> probe. The FIFOs hold no object the
        # garbage collector tracks (see start), the dict forgets a probe as soon as it
        # finishes; FIFO entries of finished probes are skipped when they reach the head.
        self._deadlines: dict[float, deque[tuple[float, int]]] = {}  # timeout -> FIFO
        # kind "udp": when to send the datagram again, by timeout (the same FIFO property)
        self._resends: dict[float, deque[tuple[float, int]]] = {}
        self._timed: dict[int, Probe] = {}  # probe number -> probe, while it may time out
        self._seq = 0  # probe numbers
        self._batch = 0  # number of epoll batches polled so far
        self._timer: asyncio.TimerHandle | None = None  # armed for the earliest deadline
        self._timer_at = float("inf")  # when _timer fires
        self._closed = False
        self._syn: SynProbeEngine | None = None  # opened by the first syn probe
        self._exec: ExecProbeEngine | None = None  # opened by the first exec probe
        self._loop.add_reader(self._ep.fileno(), self._on_ready)

    @property
    def in_flight(self) -> int:
        """Probes started and not yet finished or cancelled."""
        return len(self._by_fd) + (self._syn.in_flight if self._syn is not None else 0) + \
            (self._exec.in_flight if self._exec is not None else 0)

    @property
    def syn_engine(self) -> SynProbeEngine | None:
        """The engine of the syn probes, once the first one started."""
        return self._syn

    def start(self, spec: ProbeSpec, callback: Callable[[T, ProbeResult], None],
              token: T) -> ProbeHandle:
        """Start one probe; `callback(token, result)` runs later on the loop, exactly once.

        The returned handle's cancel() abandons the probe (no callback).
        """
        if self._closed:
            raise RuntimeError("probe engine is closed")
        if spec.syn:
            syn = self._syn
            if syn is None:
                from l4lb.health.synprobe import SynProbeEngine
                syn = self._syn = SynProbeEngine(self._loop)
            return syn.start(spec, callback, token)
        if spec.command is not None:
            runner = self._exec
            if runner is None:
                runner = self._exec = ExecProbeEngine(self._loop)
            return runner.start(spec.command, spec.timeout, callback, token)
        probe = Probe(self, spec, callback, token, time.monotonic())
        if spec.udp:
            return self._start_udp(probe, spec)
        try:
            sock = _socket.socket(spec.family, _SOCK_TYPE)
        except OSError as exc:
            text = (exc.strerror or str(exc)).lower()
            self._finish_soon(probe, False, f"cannot create socket: {text}", False)
            return probe
        probe.sock = sock
        try:
            sock.setsockopt(_SOL_SOCKET, _SO_LINGER, _LINGER_RST)
            if spec.source is not None:
                if spec.family == socket.AF_INET:
                    sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind(spec.source)
        except OSError as exc:
            where = spec.source[0] if spec.source is not None else "?"
            text = (exc.strerror or str(exc)).lower()
            self._finish_soon(probe, False, f"cannot set up probe socket ({where}): {text}",
                              False)
            return probe
        err = sock.connect_ex(spec.sockaddr)
        if err != _EINPROGRESS and err != 0:  # 0: connected already, the first event says so
            self._finish_soon(probe, False, _errno_reason(err), err not in _LOCAL_ERRNOS)
            return probe
        # Register for EPOLLOUT and for the timeout (inlined: this runs for every probe).
        fd = sock.fileno()
        probe.fd = fd
        probe.batch = self._batch
        self._by_fd[fd] = probe
        self._ep.register(fd, _EPOLLOUT)
        # (float, int) tuples are untracked by the GC at its next pass, so 10,000 probes a
        # second do not pile up long-lived tracked objects that trigger full collections
        # (which cost tens of milliseconds of loop lag with this many objects).
        seq = self._seq = self._seq + 1
        probe.number = seq
        self._timed[seq] = probe
        deadline = probe.deadline
        fifo = self._deadlines.get(spec.timeout)
        if fifo is None:
            fifo = self._deadlines[spec.timeout] = deque()
        fifo.append((deadline, seq))
        if deadline < self._timer_at:
            self._arm(deadline)
        return probe

    def _start_udp(self, probe: Probe, spec: ProbeSpec) -> Probe:
        """kind "udp": socket(SOCK_DGRAM) -> [bind source] -> connect() (no packet: it only
        fixes the peer, so the kernel hands this socket the peer's replies and its ICMP errors)
        -> send() -> wait for EPOLLIN (a datagram, or EPOLLERR: a queued ICMP error) -> recv().
        The datagram is sent again at UDP_RESEND_AT x timeout if nothing came back yet."""
        try:
            sock = _socket.socket(spec.family, _UDP_SOCK_TYPE)
        except OSError as exc:
            text = (exc.strerror or str(exc)).lower()
            self._finish_soon(probe, False, f"cannot create socket: {text}", False)
            return probe
        probe.sock = sock
        if spec.source is not None:
            # No IP_BIND_ADDRESS_NO_PORT: it lets TCP share one source port among connections
            # to different peers; a UDP bind picks a port of its own either way.
            try:
                sock.bind(spec.source)
            except OSError as exc:
                text = (exc.strerror or str(exc)).lower()
                self._finish_soon(probe, False,
                                  f"cannot set up probe socket ({spec.source[0]}): {text}", False)
                return probe
        err = sock.connect_ex(spec.sockaddr)  # sends nothing; fails only locally (no route)
        if err:
            self._finish_soon(probe, False, _errno_reason(err), err not in _LOCAL_ERRNOS)
            return probe
        failed = self._send_datagram(sock, spec.send)
        if failed is not None:
            self._finish_soon(probe, False, *failed)
            return probe
        probe.phase = _READING
        fd = sock.fileno()
        probe.fd = fd
        probe.batch = self._batch
        self._by_fd[fd] = probe
        self._ep.register(fd, _EPOLLIN)
        seq = self._seq = self._seq + 1
        probe.number = seq
        self._timed[seq] = probe
        for queues, when in ((self._deadlines, probe.deadline),
                             (self._resends, probe.started + spec.timeout * UDP_RESEND_AT)):
            fifo = queues.get(spec.timeout)
            if fifo is None:
                fifo = queues[spec.timeout] = deque()
            fifo.append((when, seq))
            if when < self._timer_at:
                self._arm(when)
        return probe

    @staticmethod
    def _send_datagram(sock: _socket.socket, data: bytes) -> tuple[str, bool] | None:
        """kind "udp": send the probe's datagram; None, or (reason, conclusive) of the error."""
        try:
            sock.send(data)
        except OSError as exc:  # BlockingIOError (a full send buffer) included: local
            return udp_error(exc.errno or errno.EAGAIN, "send")
        return None

    def _resend(self, probe: Probe) -> None:
        """kind "udp": half the timeout passed without a reply; send the datagram once more."""
        sock = probe.sock
        if sock is None or probe.phase != _READING:
            return
        failed = self._send_datagram(sock, probe.spec.send)
        if failed is not None:
            self._finish(probe, False, *failed)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        # asyncio's clock is time.monotonic, the clock of every deadline here
        self._timer = self._loop.call_at(when, self._on_timer)

    def _finish_soon(self, probe: Probe, ok: bool, reason: str, conclusive: bool) -> None:
        """Close the probe now but deliver its result from a fresh loop callback."""
        latency = time.monotonic() - probe.started
        self._close_sock(probe)
        probe.phase = _DONE
        result = ProbeResult(ok, reason, latency, conclusive)
        self._loop.call_soon(self._deliver_late, probe, result)

    def _deliver_late(self, probe: Probe, result: ProbeResult) -> None:
        if probe.callback is not _cancelled_callback:
            self._deliver(probe, result)

    def _deliver(self, probe: Probe, result: ProbeResult) -> None:
        callback, token = probe.callback, probe.token
        probe.callback = _cancelled_callback
        try:
            callback(token, result)
        except Exception:  # a broken callback must not stop the other probes
            log.exception("health probe callback failed for %s", probe.spec)

    def _close_sock(self, probe: Probe) -> None:
        sock = probe.sock
        if sock is not None:
            probe.sock = None
            if probe.fd >= 0 and self._by_fd.get(probe.fd) is probe:
                del self._by_fd[probe.fd]
                del self._timed[probe.number]
            sock.close()  # also removes the fd from the epoll set

    def _release(self, probe: Probe) -> None:
        """Cancel path: close without a result."""
        probe.callback = _cancelled_callback
        self._close_sock(probe)

    def _finish(self, probe: Probe, ok: bool, reason: str, conclusive: bool = True) -> None:
        if ok and probe.tls is not None and probe.tls.summary:  # http, send_expect over TLS
            reason = f"{reason} ({probe.tls.summary})"
        probe.phase = _DONE
        latency = time.monotonic() - probe.started
        self._close_sock(probe)
        self._deliver(probe, _new_tuple(ProbeResult, (ok, reason, latency, conclusive, None)))

    def _on_ready(self) -> None:
        self._batch += 1
        batch = self._batch
        by_fd = self._by_fd
        timed = self._timed
        monotonic = time.monotonic
        tls_until = 0.0  # TLS work in this callback ends at this time (0: none done yet)
        for fd, events in self._ep.poll(0, self._max_events):
            probe = by_fd.get(fd)
            if probe is None or probe.batch >= batch:
                continue
            if probe.spec.tls is not None and probe.phase != _CONNECTING:
                # a handshake step costs up to a millisecond of CPU: bound this callback's
                # share (the loop is VRRP's too); the level-triggered epoll reports the rest
                # again at the next turn of the loop
                now = monotonic()
                if not tls_until:
                    tls_until = now + TLS_SLICE
                elif now >= tls_until:
                    break
            if events == _EPOLLOUT and probe.phase == _CONNECTING and probe.spec.connect_only:
                # The common case, inlined (_finish, _close_sock, _deliver): the handshake
                # completed and that is the verdict.
                probe.phase = _DONE
                result = _new_tuple(ProbeResult, (True, "connect ok", monotonic() - probe.started,
                                                  True, None))
                sock = probe.sock
                probe.sock = None
                del by_fd[fd]
                del timed[probe.number]
                if sock is not None:
                    sock.close()
                callback = probe.callback
                probe.callback = _cancelled_callback
                try:
                    callback(probe.token, result)
                except Exception:  # a broken callback must not stop the other probes
                    log.exception("health probe callback failed for %s", probe.spec)
                continue
            try:
                self._step(probe, events)
            except Exception:  # never let one probe break the loop callback
                log.exception("health probe of %s failed unexpectedly", probe.spec)
                if probe.phase != _DONE:
                    self._finish(probe, False, "internal error", False)

    def _step(self, probe: Probe, events: int) -> None:
        sock = probe.sock
        assert sock is not None
        if probe.phase == _CONNECTING:
            if events & _EPOLL_BAD:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._finish(probe, False, _errno_reason(err))
                    return
                if not events & _EPOLLOUT:
                    self._finish(probe, False, "connection closed")
                    return
            if probe.spec.connect_only:
                self._finish(probe, True, "connect ok")
                return
            if probe.spec.tls is not None:
                self._tls_start(probe, sock)
                return
            probe.phase = _SENDING
        if probe.tls is not None:
            self._tls_run(probe, sock)
            return
        if probe.phase == _SENDING:
            if not self._send(probe, sock):
                return
            probe.phase = _READING
            self._ep.modify(probe.fd, _EPOLLIN)
            return  # the reply comes with a later event
        if probe.spec.udp:
            self._read_udp(probe, sock)
            return
        self._read(probe, sock)

    def _read_udp(self, probe: Probe, sock: _socket.socket) -> None:
        """kind "udp": the first datagram (or queued ICMP error) decides."""
        try:
            data = sock.recv(READ_LIMIT)  # the rest of a longer datagram is discarded
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(probe, False, *udp_error(exc.errno or 0, "receive"))
            return
        self._finish(probe, *judge_datagram(probe.spec.expect, data))

    def _send(self, probe: Probe, sock: _socket.socket) -> bool:
        """Send what is left; True when all is sent (False: finished, or wait for EPOLLOUT)."""
        data = probe.spec.send
        while probe.sent < len(data):
            try:
                probe.sent += sock.send(data[probe.sent:])
            except BlockingIOError:
                return False
            except OSError as exc:
                self._finish(probe, False, _ERRNO_REASONS.get(exc.errno or 0, "send failed"))
                return False
        if probe.spec.expect is None and probe.spec.http is None:
            self._finish(probe, True, "sent")
            return False
        return True

    def _read(self, probe: Probe, sock: _socket.socket) -> None:
        try:
            data = sock.recv(_RECV_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(probe, False, _ERRNO_REASONS.get(exc.errno or 0, "read failed"))
            return
        self._consume(probe, data)

    def _consume(self, probe: Probe, data: bytes) -> None:
        """Judge the reply so far with `data` added (b"": the backend closed)."""
        http = probe.spec.http
        if http is not None:
            self._read_http(probe, http, data)
            return
        expect = probe.spec.expect
        if not data:
            if not probe.buf:
                self._finish(probe, False, "connection closed")
            else:
                self._finish(probe, False, f"expect mismatch: got {_shown(probe.buf)}")
            return
        buf = probe.buf
        if not isinstance(buf, bytearray):
            buf = probe.buf = bytearray()
        buf += data
        if isinstance(expect, bytes):
            if len(buf) >= len(expect):
                if buf.startswith(expect):
                    self._finish(probe, True, "expect matched")
                else:
                    self._finish(probe, False, f"expect mismatch: got {_shown(buf)}")
            elif not expect.startswith(buf):
                self._finish(probe, False, f"expect mismatch: got {_shown(buf)}")
            return
        assert expect is not None
        if expect.search(buf) is not None:
            self._finish(probe, True, "expect matched")
        elif len(buf) >= READ_LIMIT:
            self._finish(probe, False, f"expect mismatch: got {_shown(buf)}")

    def _read_http(self, probe: Probe, http: HttpExpect, data: bytes) -> None:
        """kind "http": judge the response so far; data b"" is the end of the connection."""
        buf = probe.buf
        if data:
            if not isinstance(buf, bytearray):
                buf = probe.buf = bytearray()
            buf += data
        verdict = http.judge(buf, not data)
        if verdict is not None:
            self._finish(probe, verdict.ok, verdict.reason)

    # -- TLS (kind "tls", tls = true) ----------------------------------------------------------
    #
    # The session runs over two memory BIOs (ssl.MemoryBIO): the engine moves bytes between
    # them and the socket with its own recv()/send() on its own epoll, so a TLS probe is the
    # same callback-driven object as the others, keeps its socket (SO_LINGER, the fd the epoll
    # knows) and shows the first bytes a backend sent when they were not TLS at all.
    #
    #   connected -> [PROXY header] + ClientHello -> do_handshake() <-> recv/send ...
    #   -> kind "tls": pass (TLS 1.3 with a client certificate: wait for the backend's
    #      verdict on the certificate, which TLS 1.3 gives only after the client's side of
    #      the handshake completed: an alert or a close fails; a session ticket, which a
    #      server sends once it accepted the client, or application data passes; the
    #      timeout passes too, saying that the backend sent neither)
    #   -> http, send_expect: write(send) -> read() decrypted replies -> the usual judges

    def _tls_start(self, probe: Probe, sock: _socket.socket) -> None:
        client = probe.spec.tls
        assert client is not None
        if client.context is None:  # the files changed since the configuration was checked
            self._finish(probe, False, client.problem, False)
            return
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        try:
            obj = client.context.wrap_bio(incoming, outgoing,
                                          server_hostname=client.server_name)
        except (ssl.SSLError, ValueError, MemoryError) as exc:
            self._finish(probe, False, f"TLS: cannot start a session: {exc}", False)
            return
        probe.tls = _TlsState(obj, incoming, outgoing, probe.spec.preamble)
        probe.phase = _HANDSHAKING
        self._tls_run(probe, sock)

    def _tls_run(self, probe: Probe, sock: _socket.socket) -> None:
        """Advance a TLS probe as far as the bytes at hand allow."""
        st = probe.tls
        assert st is not None
        for _ in range(_TLS_STEPS):
            if not self._tls_flush(probe, sock, st):
                return  # finished, or waiting for EPOLLOUT
            phase = probe.phase
            try:
                if phase == _HANDSHAKING:
                    st.obj.do_handshake()
                    self._tls_handshaken(probe, sock, st)
                elif phase == _CONFIRMING:
                    st.obj.read(READ_LIMIT)  # application data: it took the certificate
                    self._tls_pass(probe, sock, st)
                else:
                    self._consume(probe, st.obj.read(READ_LIMIT))
            except ssl.SSLWantReadError:
                if phase == _CONFIRMING and _has_ticket(st.obj):
                    self._tls_pass(probe, sock, st)
                    return
                if st.outgoing.pending:
                    continue  # send what the session wrote, then read
                got = self._tls_fill(probe, sock, st)
                if got == 0:
                    self._tls_wait(probe, st, _EPOLLIN)
                if got <= 0:
                    return
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError) as exc:
                if phase == _HANDSHAKING:
                    self._finish(probe, False, handshake_failure(exc, st.head))
                elif phase == _CONFIRMING:
                    # closed without an alert: a TLS 1.3 server sends its session tickets
                    # only once it accepted the client's certificate
                    if _has_ticket(st.obj):
                        self._tls_pass(probe, sock, st)
                    else:
                        self._finish(probe, False, "TLS handshake failed: the backend closed "
                                     "the connection without accepting the client "
                                     "certificate")
                else:
                    self._consume(probe, b"")
            except ssl.SSLError as exc:  # SSLCertVerificationError included
                self._finish(probe, False, handshake_failure(exc, st.head)
                             if phase != _READING else session_failure(exc))
            if probe.phase == _DONE:
                return
        # (more work than one event's share: level-triggered readiness brings it back)

    def _tls_handshaken(self, probe: Probe, sock: _socket.socket, st: _TlsState) -> None:
        spec = probe.spec
        if spec.http is None and spec.expect is None and not spec.send:  # kind "tls"
            obj = st.obj
            cipher = obj.cipher()
            st.verdict = passed(obj.version(), cipher[0] if cipher else None,
                                not_after(obj.getpeercert()), obj.selected_alpn_protocol())
            client = spec.tls
            if client is not None and client.client_cert and st.obj.version() == "TLSv1.3":
                probe.phase = _CONFIRMING
                return
            self._tls_pass(probe, sock, st)
            return
        if spec.send:
            st.obj.write(spec.send)  # a memory BIO takes it all
        valid_until = not_after(st.obj.getpeercert())
        st.summary = st.obj.version() or "TLS" if valid_until is None else \
            f"{st.obj.version()}, certificate valid until {valid_until}"
        probe.phase = _READING

    def _tls_pass(self, probe: Probe, sock: _socket.socket, st: _TlsState) -> None:
        """kind "tls": the handshake completed (and the backend took the client certificate)."""
        if st.outgoing.pending:  # the client's Finished: let the backend see a whole handshake
            with contextlib.suppress(OSError):
                sock.send(st.outgoing.read())
        self._finish(probe, True, st.verdict)

    def _tls_flush(self, probe: Probe, sock: _socket.socket, st: _TlsState) -> bool:
        """Send what the session wrote; True when nothing is left to send."""
        if st.outgoing.pending:
            st.pending += st.outgoing.read()
        if not st.pending:
            return True
        try:
            sent = sock.send(st.pending)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._finish(probe, False, handshake_failure(exc, st.head)
                         if probe.phase in (_HANDSHAKING, _CONFIRMING)
                         else _ERRNO_REASONS.get(exc.errno or 0, "send failed"))
            return False
        st.pending = st.pending[sent:]
        if st.pending:
            self._tls_wait(probe, st, _EPOLLOUT)
            return False
        return True

    def _tls_fill(self, probe: Probe, sock: _socket.socket, st: _TlsState) -> int:
        """Move what the socket has into the session: 1 when something (or the end) came,
        0 when nothing is there yet, -1 when the probe finished."""
        if st.eof:
            self._finish(probe, False, "TLS: connection closed by the backend")
            return -1
        try:
            data = sock.recv(_TLS_RECV)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self._finish(probe, False, handshake_failure(exc, st.head)
                         if probe.phase in (_HANDSHAKING, _CONFIRMING)
                         else _ERRNO_REASONS.get(exc.errno or 0, "read failed"))
            return -1
        if not data:
            st.eof = True
            st.incoming.write_eof()
            return 1
        if not st.head:
            st.head = data[:2 * _SHOW_BYTES]  # (more than is shown: the reason says "...")
        st.incoming.write(data)
        return 1

    def _tls_wait(self, probe: Probe, st: _TlsState, mask: int) -> None:
        if st.mask != mask:
            self._ep.modify(probe.fd, mask)
            st.mask = mask

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        now = time.monotonic()
        limit = now + _TIMER_EARLY
        timed = self._timed
        expire_budget = self._max_expire  # timeouts handled in this callback
        pop_budget = _MAX_POPS  # queue entries removed in this callback (mostly stale ones)
        for timeout, fifo in list(self._deadlines.items()):
            while fifo and expire_budget and pop_budget:
                deadline, number = fifo[0]
                probe = timed.get(number)
                if probe is not None and deadline > limit:
                    break  # the earliest live deadline of this queue is still ahead
                fifo.popleft()
                pop_budget -= 1
                if probe is None:
                    continue  # that probe finished long ago
                expire_budget -= 1
                reason = _PHASE_TIMEOUT[probe.phase]
                if probe.phase == _CONFIRMING and probe.tls is not None:
                    # a server without session tickets says nothing when it accepts
                    self._finish(probe, True, probe.tls.verdict + " (no session ticket came: "
                                 "the backend's verdict on the client certificate is unknown)")
                    continue
                if probe.phase == _HANDSHAKING and probe.tls is not None and not probe.tls.head:
                    reason += " (no reply to the ClientHello)"
                elif probe.phase == _READING and probe.spec.http is not None:
                    reason = probe.spec.http.timeout_reason(probe.buf)
                elif probe.spec.udp:
                    reason = "no reply (timeout)"
                elif probe.phase == _READING and probe.buf:
                    reason += f" (got {_shown(probe.buf)})"
                self._finish(probe, False, reason)
            if self._closed:
                return
            if not fifo and self._deadlines.get(timeout) is fifo:
                del self._deadlines[timeout]  # no probe with this timeout in flight
        for timeout, fifo in list(self._resends.items()):  # kind "udp" only
            while fifo and expire_budget and pop_budget:
                when, number = fifo[0]
                probe = timed.get(number)
                if probe is not None and when > limit:
                    break
                fifo.popleft()
                pop_budget -= 1
                if probe is not None:
                    expire_budget -= 1
                    self._resend(probe)
            if self._closed:
                return
            if not fifo and self._resends.get(timeout) is fifo:
                del self._resends[timeout]
        # (callbacks above may have started probes: look at every queue as it is now)
        heads = [fifo[0][0] for queues in (self._deadlines, self._resends)
                 for fifo in queues.values() if fifo]
        if not expire_budget or not pop_budget:
            self._arm(now)  # more to do: continue in a fresh callback
        elif heads:
            earliest = min(heads)
            # Coalesce: firing at every deadline would cost a timer per probe; timeouts are
            # checked every _TIMER_SLACK instead.
            self._arm(max(earliest, now + _TIMER_SLACK))

    def close(self) -> None:
        """Cancel every probe in flight and release the epoll instance. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for probe in list(self._by_fd.values()):
            probe.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadlines.clear()
        self._resends.clear()
        self._timed.clear()
        if self._syn is not None:
            self._syn.close()
            self._syn = None
        if self._exec is not None:
            self._exec.close()
            self._exec = None
        self._loop.remove_reader(self._ep.fileno())
        self._ep.close()


def _has_ticket(obj: ssl.SSLObject) -> bool:
    """Whether the backend sent a session ticket (TLS 1.3: after it accepted the client)."""
    session = obj.session
    return session is not None and session.has_ticket


def _cancelled_callback(token: Any, result: ProbeResult) -> None:
    """Placeholder callback of a probe whose result must not be delivered."""


async def run_probe(spec: ProbeSpec, engine: ProbeEngine | None = None) -> ProbeResult:
    """Probe once and return the verdict (a private engine is used when none is given)."""
    loop = asyncio.get_running_loop()
    own = engine is None
    eng = ProbeEngine(loop) if engine is None else engine
    fut: asyncio.Future[ProbeResult] = loop.create_future()

    def done(_token: None, result: ProbeResult) -> None:
        if not fut.done():
            fut.set_result(result)

    handle = eng.start(spec, done, None)
    try:
        return await fut
    finally:
        handle.cancel()
        if own:
            eng.close()


async def probe_once(host: str, port: int, settings: HealthSettings) -> ProbeResult:
    """Probe backend host:port once under `settings`."""
    return await run_probe(ProbeSpec.build(host, port, settings))
