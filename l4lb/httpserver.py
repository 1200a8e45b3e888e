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
import gzip
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from l4lb import statuspage
from l4lb.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from l4lb.metrics import Exporter, LatencySource, Snapshot, StatsSource

log = logging.getLogger("l4lb")

MAX_LINE = 8192  # bytes per request line or header line
MAX_HEAD = 16384  # bytes of request line plus headers
MAX_HEADERS = 64  # header fields per request
MAX_CLIENTS = 64  # connections served at once (and refusals lingering at once)
MAX_PER_PEER = 8  # connections served at once from one client IP address
MAX_PER_PREFIX = 32  # and from one IPv6 /64
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


class HttpServer:
    """The listener; start() binds it, close() stops it and every connection."""

    def __init__(self, exporter: Exporter, *, refresh: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.exporter = exporter  # reads the daemon's state and renders /metrics
        self.refresh = refresh  # status page refresh interval, seconds
        self.clock = clock  # stamps each status document (the page's rates divide by it)
        self.server: asyncio.Server | None = None  # set by listen()
        self._clients: set[asyncio.Task[Any]] = set()  # connections being served
        self._per_peer: dict[str, int] = {}  # an address or a /64 (peer_key()) -> connections
        #                                      being served from it
        self._refusing: set[asyncio.Task[Any]] = set()  # refused connections getting their 503
        self._refused = 0  # connections refused since start (a cap was reached)
        self._renders = asyncio.Semaphore(RENDERS_AT_ONCE)  # /metrics formatting slots

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every bound socket (the real port when 0 was asked for)."""
        if self.server is None:
            return []
        return [(s.getsockname()[0], s.getsockname()[1]) for s in self.server.sockets]

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return len(self._clients)

    def refused_total(self) -> int:
        """Connections refused since start because MAX_CLIENTS or MAX_PER_PEER was reached."""
        return self._refused

    async def listen(self, listen: str) -> None:
        host, port = parse_listen(listen)
        self.server = await asyncio.start_server(self._client, host, port, limit=MAX_LINE,
                                                 reuse_address=True)
        log.debug("http: listening on %s", ", ".join(f"{h}:{p}" for h, p in self.addresses))

    async def close(self) -> None:
        """Stop listening and end every connection. Idempotent."""
        if self.server is not None:
            self.server.close()
        tasks = self._clients | self._refusing
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()
            self.server = None

    # -- one connection ----------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        host = _peer_host(writer)
        peer, prefix = peer_key(host), prefix_key(host)
        if task is None:  # pragma: no cover - a stream callback always runs in a task
            writer.transport.abort()
            return
        if self._per_peer.get(peer, 0) >= MAX_PER_PEER:
            await self._refuse(task, reader, writer,
                               f"too many connections from {peer} ({MAX_PER_PEER})")
            return
        if prefix is not None and self._per_peer.get(prefix, 0) >= MAX_PER_PREFIX:
            await self._refuse(task, reader, writer,
                               f"too many connections from {prefix} ({MAX_PER_PREFIX})")
            return
        if len(self._clients) >= MAX_CLIENTS:
            await self._refuse(task, reader, writer, f"too many connections ({MAX_CLIENTS})")
            return
        self._clients.add(task)
        keys = (peer,) if prefix is None else (peer, prefix)
        for key in keys:
            self._per_peer[key] = self._per_peer.get(key, 0) + 1
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:  # close(): end quietly (asyncio's stream callback
            writer.transport.abort()  # would log a cancelled task as an error)
        except Exception:
            log.exception("http: connection failed")
            writer.transport.abort()
        finally:
            self._clients.discard(task)
            for key in keys:
                left = self._per_peer.pop(key, 1) - 1
                if left > 0:
                    self._per_peer[key] = left

    async def _refuse(self, task: asyncio.Task[Any], reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, why: str) -> None:
        """Answer 503 without reading the request, linger briefly, close; count it.

        The reply fits in a fresh socket's buffer, so writing it never waits. Lingering keeps
        the client's unread request from turning the close into a reset that could destroy
        the 503; at most MAX_CLIENTS refusals linger at once, beyond that the connection is
        dropped without a reply."""
        self._refused += 1
        if len(self._refusing) >= MAX_CLIENTS:
            writer.transport.abort()
            return
        self._refusing.add(task)
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
        finally:
            self._refusing.discard(task)

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
                writer.write(_encode(response, head_only=method == "HEAD"))
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
        except (TimeoutError, ConnectionError):
            writer.transport.abort()  # a client too slow to take the reply
            return
        await _linger(reader)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

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


def _peer_host(writer: asyncio.StreamWriter) -> str:
    """The client's IP address ("" if the transport does not know it)."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return ""


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


async def start(listen: str, snapshot: Snapshot, *, health: StatsSource | None = None,
                probe_latency: LatencySource | None = None,
                connlog: StatsSource | None = None, refresh: float = 2.0,
                process_metrics: bool = True,
                clock: Callable[[], float] = time.time) -> HttpServer:
    """Bind `listen` and serve /metrics, / and /status.json from `snapshot` (and the extras).

    `snapshot` returns the control API's `status` result; `health` the health checker's
    counters (a dict of l4lb.health.checker.CheckerStats); `probe_latency` the last probe
    latency in seconds per (service, backend address); `connlog` the connection log writer's
    `stats()`. All are called on the event loop at request time and must return fresh objects
    that nothing else changes afterwards: formatting them happens in a worker thread.
    `clock` stamps the status documents (tests pass the fake snapshot's own clock). Raises
    OSError when the address cannot be bound, ValueError when it is malformed.
    """
    exporter = Exporter(snapshot, health=health, probe_latency=probe_latency, connlog=connlog,
                        process=process_metrics)
    server = HttpServer(exporter, refresh=refresh, clock=clock)
    exporter.counters["l4lb_http_connections_refused"] = (
        "Connections to the metrics listener refused with 503 (or dropped): too many at once, "
        "or from one client address.", server.refused_total)
    await server.listen(listen)
    return server


__all__ = ["HttpError", "HttpServer", "Request", "Response", "parse_head", "parse_listen",
           "read_head", "start"]
