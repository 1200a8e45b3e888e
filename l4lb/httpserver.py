"""The metrics and status HTTP listener: /metrics, the status page at /, and /status.json.

Design. A deliberately small HTTP/1.1 server on asyncio streams, enough for Prometheus, a
browser and curl, and hard to upset:

- One request per connection: every response carries `Connection: close`, so there is no
  keep-alive state, no pipelining and no idle timer to get wrong.
- Only GET and HEAD, no request body. The request head (request line and headers) is read
  line by line with a limit per line (MAX_LINE), in total (MAX_HEAD) and in header count
  (MAX_HEADERS), all within HEAD_TIMEOUT seconds (short: a scraper sends its head at once),
  so a slow or endless client costs one socket for a bounded time. Writing the response has
  its own deadline (SEND_TIMEOUT).
- Malformed requests get 400, a missing Host on HTTP/1.1 too, other methods 405, other HTTP
  versions 505, an oversized head 431, a timed-out head 408, unknown paths 404.
- At most MAX_CLIENTS connections at once, at most MAX_PER_PEER from one client address, and
  at most MAX_PER_PREFIX from one IPv6 /64 (a host may own a whole /64 and use a new address
  per connection, while a server LAN is one /64 of many hosts; see peer_key()), so that a few
  slow clients ("slowloris") cannot lock Prometheus out. A connection beyond any cap is
  answered 503 at once, without reading its request, and
  counted (refused_total()); at most MAX_CLIENTS such refusals linger at a time, more are
  dropped without a reply (and counted too).
- Every connection holds a descriptor from the control plane's share of the limit (the top
  above the data plane's ceiling, daemon.fd_ceiling()). When the daemon runs with a ceiling it
  passes that share, and the caps shrink with it (caps_for(): served connections and lingering
  refusals a quarter of the share each), so that a scrape flood leaves the control socket,
  the health probes and reloads their descriptors. The server accepts by itself rather than
  through asyncio.start_server, and decides on each connection as it is accepted: asyncio
  accepts up to 100 at a time and each would hold its descriptor for a few loop turns before
  its handler could refuse it, while here a connection beyond the caps is closed at once.
- The handling of one connection never loops over buffered input without bound: there is one
  request per connection and lingering reads at most LINGER_BYTES, so a client cannot keep
  the event loop busy by pipelining (the control socket needs an explicit yield for that).
- After the response the server shuts down its sending side and reads what the client still
  sends for a moment before closing, so unread input never turns into a reset that could
  destroy the response on the client's side ("lingering close").
- The daemon's state is read on the event loop (the snapshot callables are not thread-safe);
  formatting the metrics text, the page and the JSON (megabytes with 10,000 backends) and gzip
  run in the default executor, at most RENDERS_AT_ONCE at a time, so the loop keeps serving
  the control socket, health checks and VRRP meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import errno
import functools
import gzip
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from l4lb import statuspage
from l4lb.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from l4lb.metrics import Exporter, LatencySource, Snapshot, StatsSource

log = logging.getLogger("l4lb")

MAX_LINE = 8192  # bytes per request line or header line
MAX_HEAD = 16384  # bytes of request line plus headers
MAX_HEADERS = 64  # header fields per request
MAX_CLIENTS = 64  # connections served at once (and refusals lingering at once); with a
#                   descriptor share, fewer (caps_for())
MIN_CLIENTS = 4  # the fewest caps_for() gives, however small the share
MAX_PER_PEER = 8  # connections served at once from one client IP address
MIN_PER_PEER = 2  # the fewest caps_for() gives: Prometheus and an operator's curl on one host
MAX_PER_PREFIX = 32  # and from one IPv6 /64
LISTEN_BACKLOG = 100  # the listen() backlog, as asyncio.start_server's
ACCEPT_BATCH = 64  # connections accepted per wake-up of a listener, so that a flood of them
#                    cannot keep the loop from the control socket and the health probes
ACCEPT_PAUSE = 1.0  # seconds a listener rests after accept() ran out of descriptors (as
#                     asyncio's own servers do), instead of spinning on it
ACCEPT_SHORTAGE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# errors accept() reports for one pending connection that is already gone (accept(2): Linux
# passes the new socket's pending network errors on; EPERM: a firewall): take the next one.
# Any other error says something about the listener itself, which then rests (_rest) instead
# of being asked again at once, forever
ACCEPT_ONE_GONE = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN,
                   errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH,
                   errno.EOPNOTSUPP, errno.ENETUNREACH, errno.ETIMEDOUT)
ACCEPT_MESSAGE = "socket.accept() out of system resource"  # asyncio's report of such a
#                   failure, which the daemon's loop handler rate-limits (control.AcceptErrorLog)
HEAD_TIMEOUT = 3.0  # seconds to receive the whole request head
SEND_TIMEOUT = 30.0  # seconds to send the whole response
LINGER_TIME = 1.0  # seconds to read leftover input after responding
LINGER_BYTES = 65536  # bytes of leftover input read before closing anyway
RENDERS_AT_ONCE = 2  # /metrics bodies formatted concurrently in the executor

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable",
            505: "HTTP Version Not Supported"}
_PAGE_HEADERS = {"Content-Security-Policy": statuspage.CONTENT_SECURITY_POLICY,
                 "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}


class HttpError(Exception):
    """A request that gets an error status; the message is the plain-text body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status  # HTTP status code


class Request:
    """The parsed head of one request."""

    def __init__(self, method: str, path: str, headers: dict[str, str]) -> None:
        self.method = method  # GET or HEAD
        self.path = path  # the path of the target, without the query
        self.headers = headers  # lower-case name -> value (repeated fields joined by ", ")


class Response:
    """Status, headers and body of one reply."""

    def __init__(self, status: int, body: bytes, content_type: str,
                 headers: Mapping[str, str] | None = None) -> None:
        self.status = status  # HTTP status code
        self.body = body  # sent for GET, only measured for HEAD
        self.content_type = content_type  # Content-Type value
        self.headers = dict(headers or {})  # extra header fields


def parse_listen(text: str) -> tuple[str | None, int]:
    """'127.0.0.1:9273', '[::1]:9273', 'localhost:9273', ':9273' (every address) -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"listen address {text!r}: expected HOST:PORT, [IPV6]:PORT or :PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"listen address {text!r}: write an IPv6 address in brackets")
    return (host or None), int(port_text)


@dataclass(frozen=True)
class Caps:
    """How many connections the server holds at once; each holds one descriptor."""

    clients: int  # served at once
    refusing: int  # refused ones getting their 503 at once (lingering); more are dropped
    per_peer: int  # served at once from one client address (peer_key())
    per_prefix: int  # served at once from one IPv6 /64 (prefix_key())

    @property
    def descriptors(self) -> int:
        """The most descriptors its connections hold together (its listeners aside)."""
        return self.clients + self.refusing


def caps_for(fd_share: int | None) -> Caps:
    """The caps of a server in a control plane that keeps `fd_share` descriptors for itself
    (the top of the limit, above the data plane's ceiling: daemon.fd_ceiling()); None: no
    ceiling, the constants (MAX_*).

    Served connections and lingering refusals may each take a quarter of the share, at least
    MIN_CLIENTS and at most MAX_CLIENTS, so that together they leave at least half of it to the
    control socket, the health probes, the logs and a reload, whatever a scrape flood does (the
    least share the ceiling keeps, 32, gives 8 and 8). One client address may hold a quarter
    of the served slots (MIN_PER_PEER..MAX_PER_PEER) and one IPv6 /64 half of them (at least
    the per-address cap, at most MAX_PER_PREFIX), as 8 and 32 of 64 do. From a share of 256
    (a limit of 4096) on, the caps are the constants."""
    if fd_share is None:
        return Caps(MAX_CLIENTS, MAX_CLIENTS, MAX_PER_PEER, MAX_PER_PREFIX)
    slots = min(MAX_CLIENTS, max(MIN_CLIENTS, fd_share // 4))
    per_peer = min(MAX_PER_PEER, max(MIN_PER_PEER, slots // 4))
    per_prefix = min(MAX_PER_PREFIX, max(per_peer, slots // 2))
    return Caps(slots, slots, per_peer, per_prefix)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class _Accepted:
    """An accepted socket, and whether its task took it over (a task cancelled before it ran
    never did: the socket is then closed when the task ends)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock  # the connection
        self.taken = False  # its task ran and handed it to a stream transport


class HttpServer:
    """The listener; listen() binds it, close() stops it and every connection."""

    def __init__(self, exporter: Exporter, *, refresh: float = 2.0,
                 clock: Callable[[], float] = time.time, fd_share: int | None = None) -> None:
        self.exporter = exporter  # reads the daemon's state and renders /metrics
        self.refresh = refresh  # status page refresh interval, seconds
        self.clock = clock  # stamps each status document (the page's rates divide by it)
        self.fd_share = fd_share  # descriptors the control plane keeps for itself, which the
        #                           caps are cut to (caps_for()); None: no ceiling
        self.sockets: list[socket.socket] = []  # the listening sockets, set by listen()
        self._resting: dict[socket.socket, asyncio.TimerHandle] = {}  # listeners paused
        #                           after accept() ran out of descriptors -> their wake-up
        self._clients: set[asyncio.Task[None]] = set()  # connections being served
        self._per_peer: dict[str, int] = {}  # an address or a /64 (peer_key()) -> connections
        #                                      being served from it
        self._refusing: set[asyncio.Task[None]] = set()  # refused connections getting their 503
        self._refused = 0  # connections refused since start (a cap was reached)
        self._renders = asyncio.Semaphore(RENDERS_AT_ONCE)  # /metrics formatting slots

    @property
    def caps(self) -> Caps:
        """The caps in force (read at each connection: tests change the constants)."""
        return caps_for(self.fd_share)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every bound socket (the real port when 0 was asked for)."""
        return [(s.getsockname()[0], s.getsockname()[1]) for s in self.sockets]

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return len(self._clients)

    @property
    def held(self) -> int:
        """Connections this server holds a descriptor for now: served, and refused ones
        getting their 503 (at most caps.descriptors)."""
        return len(self._clients) + len(self._refusing)

    def refused_total(self) -> int:
        """Connections refused since start because a cap (caps) was reached."""
        return self._refused

    async def listen(self, listen: str) -> None:
        host, port = parse_listen(listen)
        self.sockets = await _bind(host, port)
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)
        log.debug("http: listening on %s", ", ".join(f"{h}:{p}" for h, p in self.addresses))

    async def close(self) -> None:
        """Stop listening and end every connection. Idempotent."""
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            if sock not in self._resting:
                loop.remove_reader(sock.fileno())
            sock.close()
        self.sockets = []
        for timer in self._resting.values():
            timer.cancel()
        self._resting.clear()
        tasks = self._clients | self._refusing
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- accepting ---------------------------------------------------------------------------

    def _accept(self, sock: socket.socket) -> None:
        """The listener is readable: take up to ACCEPT_BATCH connections and settle each one
        at once (_admit())."""
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in ACCEPT_ONE_GONE:
                    continue  # that connection is gone: try the next
                self._rest(sock, exc)
                return
            self._admit(conn, address)

    def _rest(self, sock: socket.socket, exc: OSError) -> None:
        """accept() failed for the listener, not for one connection: out of descriptors (or
        memory), reported as asyncio's servers do (the daemon logs it at most once per 10 s),
        or anything else (reported by the loop's handler, at most once per rest). Leave the
        listener for ACCEPT_PAUSE instead of spinning on it; clients wait in the listen
        backlog meanwhile."""
        loop = asyncio.get_running_loop()
        message = (ACCEPT_MESSAGE if exc.errno in ACCEPT_SHORTAGE else
                   f"http: accept() failed on the metrics listener; it rests {ACCEPT_PAUSE:g}s")
        loop.call_exception_handler({"message": message, "exception": exc, "socket": sock})
        loop.remove_reader(sock.fileno())
        self._resting[sock] = loop.call_later(ACCEPT_PAUSE, self._wake, sock)

    def _wake(self, sock: socket.socket) -> None:
        if self._resting.pop(sock, None) is not None and sock in self.sockets:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock)

    def _admit(self, conn: socket.socket, address: Any) -> None:
        """Serve, refuse (503) or drop a connection just accepted. Decided here, before the
        loop turns, so that no connection holds a descriptor outside the caps: one beyond them
        and beyond the lingering refusals is closed at once."""
        host = str(address[0]) if isinstance(address, tuple) and address else ""
        peer, prefix = peer_key(host), prefix_key(host)
        caps = self.caps
        why = self._verdict(caps, peer, prefix)
        if why is None:
            self._start(conn, self._clients, self._serve, (peer,) if prefix is None
                        else (peer, prefix))
            return
        self._refused += 1
        if len(self._refusing) >= caps.refusing:
            conn.close()
            return
        self._start(conn, self._refusing, functools.partial(self._refuse, why), ())

    def _verdict(self, caps: Caps, peer: str, prefix: str | None) -> str | None:
        """Why a new connection from `peer` (in `prefix`) is refused now; None: it is served."""
        if self._per_peer.get(peer, 0) >= caps.per_peer:
            return f"too many connections from {peer} ({caps.per_peer})"
        if prefix is not None and self._per_peer.get(prefix, 0) >= caps.per_prefix:
            return f"too many connections from {prefix} ({caps.per_prefix})"
        if len(self._clients) >= caps.clients:
            return f"too many connections ({caps.clients})"
        return None

    def _start(self, conn: socket.socket, tasks: set[asyncio.Task[None]], handler: Handler,
               keys: tuple[str, ...]) -> None:
        """Run `handler` on `conn` in a task that counts in `tasks` (and, per key, in
        _per_peer) from now until it ends, however it ends."""
        for key in keys:
            self._per_peer[key] = self._per_peer.get(key, 0) + 1
        accepted = _Accepted(conn)
        task = asyncio.get_running_loop().create_task(self._connection(accepted, handler))
        tasks.add(task)

        def ended(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            for key in keys:
                left = self._per_peer.pop(key, 1) - 1
                if left > 0:
                    self._per_peer[key] = left
            if not accepted.taken:  # cancelled by close() before it ran
                conn.close()

        task.add_done_callback(ended)

    # -- one connection ----------------------------------------------------------------------

    async def _connection(self, accepted: _Accepted, handler: Handler) -> None:
        """Run `handler` on the accepted socket's streams; return only once its descriptor is
        closed, so that the slot it held in the caps is free only when the descriptor is."""
        accepted.taken = True
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_LINE, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, accepted.sock)
        except (OSError, asyncio.CancelledError):  # the client went, or close() came first:
            accepted.sock.close()  # the transport, if made, is closed already (a no-op then)
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        try:
            await handler(reader, writer)
        except asyncio.CancelledError:  # close(): end quietly (a cancelled task would be
            pass                        # logged as an error)
        except Exception:
            log.exception("http: connection failed")
        if not transport.is_closing():  # cancelled, or failed half-way
            transport.abort()
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await writer.wait_closed()
        except TimeoutError:  # a graceful close still flushing to a client that reads nothing
            transport.abort()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        except asyncio.CancelledError:  # close() while the close was under way: end it now
            transport.abort()
            raise
        except Exception:  # the close met a reset or the like: the descriptor is closed
            pass

    async def _refuse(self, why: str, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        """Answer 503 without reading the request, linger briefly, close (_admit() counted it).

        The reply fits in a fresh socket's buffer, so writing it never waits. Lingering keeps
        the client's unread request from turning the close into a reset that could destroy
        the 503; at most caps.refusing refusals linger at once, beyond that _admit() drops the
        connection without a reply."""
        try:
            response = _text(503, f"{why}; try again later\n")
            response.headers["Retry-After"] = "1"
            writer.write(_encode(response, head_only=False))
            if writer.can_write_eof():
                writer.write_eof()
            await _linger(reader)
            writer.close()
        except asyncio.CancelledError:
            writer.transport.abort()
        except Exception:  # a reset by the client, or the like: nothing to tell it
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        response: Response | None
        method = "GET"
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                request = await read_head(reader)
            if request is None:  # closed before sending anything
                writer.transport.abort()
                return
            method = request.method
            response = await self._route(request)
        except HttpError as exc:
            response = _text(exc.status, str(exc) + "\n")
            if exc.status == 405:
                response.headers["Allow"] = "GET, HEAD"
        except TimeoutError:
            response = _text(408, "request head not received in time\n")
        except ConnectionError:
            writer.transport.abort()
            return
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                # drain() returns only once the kernel has taken the whole response, so that
                # SEND_TIMEOUT bounds a client that never reads (a zero window), not just its
                # first buffer: the close below does not wait for it
                writer.transport.set_write_buffer_limits(high=0)
                writer.write(_encode(response, head_only=method == "HEAD"))
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
        except (TimeoutError, OSError):
            # a client too slow to take the reply, or gone: after its reset the shutdown of
            # our side fails with ENOTCONN, which is no ConnectionError
            writer.transport.abort()
            return
        await _linger(reader)
        writer.close()  # _connection() waits for the close, SEND_TIMEOUT at most

    async def _route(self, request: Request) -> Response:
        if request.path == "/metrics":
            return await self._metrics(request)
        if request.path in ("/", "/status.json"):
            try:
                status = self.exporter.snapshot()
                now = self.clock()
                health = self.exporter.health() if self.exporter.health is not None else None
            except Exception:
                log.exception("http: reading the status failed")
                return _text(503, "status unavailable (see the daemon's log)\n")
            if request.path == "/":
                page = await self._offload(_render_page, status, health, now, self.refresh)
                return Response(200, page, "text/html; charset=utf-8", _PAGE_HEADERS)
            body = await self._offload(statuspage.status_json, status, health, now)
            return Response(200, body, "application/json")
        raise HttpError(404, f"not found: {request.path} (try /, /metrics or /status.json)")

    async def _metrics(self, request: Request) -> Response:
        data = self.exporter.read()  # on the loop: the daemon's state is not thread-safe
        zipped = "gzip" in request.headers.get("accept-encoding", "").lower()
        body = await self._offload(_render_metrics, self.exporter, data, zipped)
        headers = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"} if zipped else {}
        return Response(200, body, METRICS_CONTENT_TYPE, headers)

    async def _offload(self, fn: Callable[..., bytes], *args: Any) -> bytes:
        """Run a formatter in the default executor, at most RENDERS_AT_ONCE at a time."""
        async with self._renders:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def peer_key(host: str) -> str:
    """What MAX_PER_PEER counts by: the client's address, an IPv4-mapped IPv6 address as the
    IPv4 address (a dual-stack listener). Anything that is no address (a unix peer) as given."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # no zone index
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if address.is_link_local:
            return host  # the zone tells links apart
    return str(address)


def prefix_key(host: str) -> str | None:
    """What MAX_PER_PREFIX counts by: an IPv6 client's /64, None for IPv4 (mapped too),
    link-local addresses (every host on a link shares fe80::/64) and non-addresses. A cap per
    address alone would let one host with a /64 of its own open 2**64 times MAX_PER_PEER
    connections; a cap per /64 alone would let one slow host lock out its whole server LAN,
    hence both, the /64 one larger."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if (not isinstance(address, ipaddress.IPv6Address) or address.ipv4_mapped is not None
            or address.is_link_local):
        return None
    return str(ipaddress.IPv6Network((address, 64), strict=False))


def _render_metrics(exporter: Exporter, data: Any, zipped: bool) -> bytes:
    body = exporter.render(data)
    return gzip.compress(body, compresslevel=6) if zipped else body


def _render_page(status: Mapping[str, Any], health: Mapping[str, Any] | None, now: float,
                 refresh: float) -> bytes:
    return statuspage.render_page(status, health, now, refresh=refresh).encode()


async def read_head(reader: asyncio.StreamReader) -> Request | None:
    """Read and check one request head; None if the peer closed before the first byte."""
    lines: list[bytes] = []
    total = 0
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise HttpError(431, "request line or header line too long") from None
        except asyncio.IncompleteReadError as exc:
            if not lines and not exc.partial:
                return None
            raise HttpError(400, "connection closed inside the request head") from None
        except ValueError:  # the stream's own limit was hit while looking for the newline
            raise HttpError(431, "request line or header line too long") from None
        total += len(line)
        if total > MAX_HEAD:
            raise HttpError(431, f"request head longer than {MAX_HEAD} bytes")
        line = line.rstrip(b"\n").removesuffix(b"\r")
        if not line:
            if not lines:  # tolerated: empty lines before the request line (RFC 9112 2.2)
                continue
            break
        lines.append(line)
        if len(lines) > MAX_HEADERS + 1:
            raise HttpError(431, f"more than {MAX_HEADERS} header fields")
    return parse_head(lines)


def parse_head(lines: list[bytes]) -> Request:
    """Check the request line and header fields (no CR/LF in `lines`)."""
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise HttpError(400, "malformed request line")
    method_b, target_b, version_b = parts
    version = _VERSION.fullmatch(version_b)
    if version is None:
        raise HttpError(400, "malformed HTTP version")
    if version.group(1) != b"1":
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are served")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        name, colon, value = raw.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):  # also rejects obsolete line folding
            raise HttpError(400, "malformed header field")
        try:
            text = value.strip(b" \t").decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            raise HttpError(400, "malformed header field") from None
        if any(c in text for c in "\0\r\n"):
            raise HttpError(400, "malformed header field")
        key = name.decode("ascii").lower()
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    if version.group(2) == b"1" and "host" not in headers:
        raise HttpError(400, "HTTP/1.1 request without Host")
    if "transfer-encoding" in headers or headers.get("content-length", "0").strip() != "0":
        raise HttpError(400, "request bodies are not accepted")
    method = method_b.decode("ascii")
    if method not in ("GET", "HEAD"):
        raise HttpError(405, f"method {method} not allowed (GET, HEAD)")
    try:
        target = target_b.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "request target is not ASCII") from None
    if target.startswith("/"):
        path = target.split("?", 1)[0].split("#", 1)[0]
    elif target.lower().startswith(("http://", "https://")):  # absolute-form
        path = urlsplit(target).path or "/"
    else:
        raise HttpError(400, "malformed request target")
    return Request(method, path, headers)


def _text(status: int, body: str) -> Response:
    return Response(status, body.encode(), "text/plain; charset=utf-8")


def _encode(response: Response, head_only: bool) -> bytes:
    reason = _REASONS.get(response.status, "Unknown")
    fields = {"Date": email.utils.formatdate(usegmt=True), "Server": "l4lb",
              "Content-Type": response.content_type,
              "Content-Length": str(len(response.body)), "Cache-Control": "no-store",
              "X-Content-Type-Options": "nosniff", "Connection": "close", **response.headers}
    head = f"HTTP/1.1 {response.status} {reason}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return head.encode("latin-1") + (b"" if head_only else response.body)


async def _linger(reader: asyncio.StreamReader) -> None:
    """Read (and drop) what the client still sends, briefly, so closing does not reset."""
    left = LINGER_BYTES
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(LINGER_TIME):
            while left > 0:
                chunk = await reader.read(min(left, 16384))
                if not chunk:
                    return
                left -= len(chunk)


async def _bind(host: str | None, port: int) -> list[socket.socket]:
    """Listening sockets on every address `host` names (None: every local address, IPv4 and
    IPv6), nonblocking, as asyncio.start_server binds them: SO_REUSEADDR, IPv6 ones IPv6-only
    (the IPv4 socket takes IPv4). OSError when one cannot be bound (the others are closed)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):  # unique, in order
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:  # a family this host lacks (no IPv6): skip it, as asyncio does
                continue
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(exc.errno, f"error while attempting to bind on address "
                                         f"{address!r}: {(exc.strerror or '').lower()}") from None
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        if not sockets:
            raise OSError(errno.EAFNOSUPPORT, f"no socket could be made for {host}:{port}")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def start(listen: str, snapshot: Snapshot, *, health: StatsSource | None = None,
                probe_latency: LatencySource | None = None,
                connlog: StatsSource | None = None, refresh: float = 2.0,
                process_metrics: bool = True,
                clock: Callable[[], float] = time.time,
                fd_share: int | None = None) -> HttpServer:
    """Bind `listen` and serve /metrics, / and /status.json from `snapshot` (and the extras).

    `snapshot` returns the control API's `status` result; `health` the health checker's
    counters (a dict of l4lb.health.checker.CheckerStats); `probe_latency` the last probe
    latency in seconds per (service, backend address); `connlog` the connection log writer's
    `stats()`. All are called on the event loop at request time and must return fresh objects
    that nothing else changes afterwards: formatting them happens in a worker thread.
    `clock` stamps the status documents (tests pass the fake snapshot's own clock).
    `fd_share`: the descriptors the control plane keeps above the data plane's ceiling, which
    cut the server's caps (caps_for()); None: no ceiling. Raises OSError when the address
    cannot be bound, ValueError when it is malformed.
    """
    exporter = Exporter(snapshot, health=health, probe_latency=probe_latency, connlog=connlog,
                        process=process_metrics)
    server = HttpServer(exporter, refresh=refresh, clock=clock, fd_share=fd_share)
    exporter.counters["l4lb_http_connections_refused"] = (
        "Connections to the metrics listener refused with 503 (or dropped): too many at once, "
        "or from one client address.", server.refused_total)
    await server.listen(listen)
    return server


__all__ = ["Caps", "HttpError", "HttpServer", "Request", "Response", "caps_for", "parse_head",
           "parse_listen", "read_head", "start"]
