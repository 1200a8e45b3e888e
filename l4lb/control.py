"""The control socket: a unix socket (mode 0600) speaking JSON lines, and its client.

One request per line, one reply per line:
    → {"cmd": "backends", "service": "web"}
    ← {"ok": true, "result": [...]}
    ← {"ok": false, "error": "unknown command \"statsu\"; did you mean \"status\"?"}
Malformed or unknown requests get an error reply; they never stop the daemon. Commands are
registered by the daemon as callables taking the request's arguments as keyword arguments; a
handler may be a coroutine function (or return an awaitable), which the server awaits, so a
command that waits for something does not hold the loop. An exception of type ControlError
(or StateError) becomes the error text. The protocol is documented in docs/control-api.md.

Design: the server must never hold the event loop (VRRP adverts run on it every 100 ms or so)
and must not be exhausted by one client. So it yields to the loop after every request (a
pipelining client cannot keep it), serves at most MAX_CONNECTIONS connections (fewer under a
small descriptor limit: cap_for()), closes one that
sends no request line for IDLE_TIMEOUT or leaves a reply unread for WRITE_TIMEOUT, and never
replaces a socket file that a live (possibly stalled) daemon may still own, nor removes at exit
a file that is no longer its own. install_loop_exception_handler() keeps accept() failures at
the fd limit from flooding the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import errno
import inspect
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("l4lb")

MAX_REQUEST = 65536  # bytes per request line
MAX_UNIX_PATH = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL
MAX_CONNECTIONS = 64  # control connections served at once; more get one error line
MIN_CONNECTIONS = 4  # the fewest cap_for() gives, however small the descriptor share


def cap_for(fd_share: int | None) -> int:
    """Control connections served at once in a control plane that keeps `fd_share`
    descriptors for itself (the top of the limit, above the data plane's ceiling:
    daemon.fd_ceiling()); None: no ceiling, MAX_CONNECTIONS. An eighth of the share, at least
    MIN_CONNECTIONS and at most MAX_CONNECTIONS: with the metrics listener's half
    (httpserver.caps_for()) that leaves at least three eighths to the health probes, the logs
    and a reload (the least share the ceiling keeps, 32, gives 4)."""
    if fd_share is None:
        return MAX_CONNECTIONS
    return min(MAX_CONNECTIONS, max(MIN_CONNECTIONS, fd_share // 8))
IDLE_TIMEOUT = 60.0  # seconds a connection may take to send its next whole request line
WRITE_TIMEOUT = 10.0  # seconds a client may take to read a reply before it is dropped
STALE_CHECK_TIMEOUT = 0.5  # seconds to wait for a daemon at an existing socket path
ACCEPT_LOG_INTERVAL = 10.0  # seconds between two log lines about the same accept() failure


class ControlError(Exception):
    """A request that cannot be served; the message is sent to the client."""


Handler = Callable[..., Any]


class ControlServer:
    """Serves registered commands on a unix socket."""

    def __init__(self, path: str, commands: dict[str, Handler],
                 max_connections: int | None = None) -> None:
        self.path = path  # where the socket is bound
        self.commands = commands  # command name -> handler (plain or coroutine function)
        self.max_connections = max_connections  # served at once (cap_for()); None:
        #                                          MAX_CONNECTIONS, read at each connection
        self.server: asyncio.AbstractServer | None = None  # set by start()
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we bound
        self._clients: set[asyncio.Task[Any]] = set()  # connections being served
        self._refusals_logged = False  # a refusal was logged since the cap was last left

    @property
    def cap(self) -> int:
        """Connections served at once (read at each connection: tests change the constant)."""
        return MAX_CONNECTIONS if self.max_connections is None else self.max_connections

    @property
    def connections(self) -> int:
        """Connections being served now (refused ones are not counted)."""
        return len(self._clients)

    async def start(self) -> None:
        """Bind the socket (replacing a stale one), mode 0600.

        Every failure raises ControlError whose text starts with "control socket PATH: ", so
        that callers can print it as it is and tell it from other start-up errors."""
        where = socket_label(self.path)
        if not self.path:
            raise ControlError(f"{where}: empty path")
        if len(os.fsencode(self.path)) > MAX_UNIX_PATH:
            raise ControlError(f"{where}: path longer than {MAX_UNIX_PATH} bytes "
                               "(the limit of a unix socket address)")
        try:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, mode=0o755, exist_ok=True)
            if os.path.exists(self.path):
                problem = socket_in_use(self.path)
                if problem:
                    raise ControlError(f"{where}: {problem}")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            old_umask = os.umask(0o177)
            try:
                # backlog = the cap: asyncio accepts at most `backlog` connections per wake-up
                # of the listener, and each holds a descriptor until its handler has written
                # the refusal, so a burst of connections holds about twice the cap at once
                # (with asyncio's default of 100, a burst filled a limit of 256)
                self.server = await asyncio.start_unix_server(self._client, path=self.path,
                                                              limit=MAX_REQUEST,
                                                              backlog=self.cap)
            finally:
                os.umask(old_umask)
            st = os.lstat(self.path)
            self._bound = (st.st_dev, st.st_ino)
            os.chmod(self.path, 0o600)
        except OSError as exc:
            if self.server is not None:
                self.server.close()
                self.server = None
                if self._bound is not None:
                    self._unlink_own()
            raise ControlError(f"{where}: cannot listen: {os_error_text(exc)}") from None
        log.info("control: listening on %s", self.path)

    async def close(self) -> None:
        """Stop listening, end every connection, and remove the socket file if it is still
        the one this server bound (another daemon may have replaced it meanwhile)."""
        if self.server is None:
            return
        self.server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        await self.server.wait_closed()
        self.server = None
        self._unlink_own()

    def _unlink_own(self) -> None:
        """Unlink self.path only if it is still the socket we bound."""
        bound, self._bound = self._bound, None
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("control: %s: not removed: %s", self.path, os_error_text(exc))
            return
        if bound is None or (st.st_dev, st.st_ino) != bound:
            log.warning("control: %s is no longer the socket this daemon bound "
                        "(replaced by another process?): leaving it", self.path)
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        cap = self.cap
        if task is None or len(self._clients) >= cap:
            message = f"too many control connections ({cap})"
            if not self._refusals_logged:  # once per episode at the cap, not per connection
                self._refusals_logged = True
                log.warning("control: %s: refusing connections until one ends", message)
            _refuse(writer, message)
            return
        self._clients.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:  # close(): end quietly (asyncio's stream callback
            writer.transport.abort()  # would log a cancelled task as an error)
        except Exception:
            log.exception("control: connection failed")
            writer.transport.abort()
        finally:
            self._clients.discard(task)
            self._refusals_logged = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer requests until EOF, an error, the idle timeout or the write timeout."""
        try:
            while True:
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT):
                        line = await reader.readline()
                except TimeoutError:
                    log.debug("control: no request for %gs: closing the connection",
                              IDLE_TIMEOUT)
                    break
                except ValueError:  # longer than MAX_REQUEST
                    writer.write(_reply_error(f"request longer than {MAX_REQUEST} bytes"))
                    await _drain(writer)
                    break
                if not line:
                    break
                writer.write(await self.handle(line))
                await _drain(writer)
                # readline() does not suspend while a line is buffered, nor drain() below the
                # high-water mark: without this, a client that pipelines thousands of requests
                # holds the loop (and VRRP adverts) until it has all its replies.
                await asyncio.sleep(0)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except _WriteTimeout:
            log.warning("control: a client did not read its replies for %gs: closing it",
                        WRITE_TIMEOUT)
            writer.transport.abort()
            return
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.wait_closed()

    async def handle(self, line: bytes) -> bytes:
        """Answer one request line; a handler's awaitable result is awaited."""
        call = self._parse(line)
        if isinstance(call, bytes):
            return call
        cmd, handler, args = call
        try:
            result = handler(**args)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            return _failure_reply(cmd, exc)
        return _reply_result(cmd, result)

    def handle_line(self, line: bytes) -> bytes:
        """Answer one request line without a loop (public for tests).

        Only for plain handlers: a command whose handler returns an awaitable gets an error
        reply here (the server itself uses handle())."""
        call = self._parse(line)
        if isinstance(call, bytes):
            return call
        cmd, handler, args = call
        try:
            result = handler(**args)
        except Exception as exc:
            return _failure_reply(cmd, exc)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # never awaited: close it rather than leak a warning
            return _reply_error(f"internal error in {cmd}: the command is asynchronous "
                                "(handle_line serves only plain handlers)")
        return _reply_result(cmd, result)

    def _parse(self, line: bytes) -> bytes | tuple[str, Handler, dict[str, Any]]:
        """The command, its handler and arguments of one request line, or an error reply."""
        try:
            request = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _reply_error(f"malformed request: not JSON ({exc})")
        if not isinstance(request, dict):
            return _reply_error("malformed request: expected a JSON object")
        if "cmd" not in request:
            return _reply_error('malformed request: missing "cmd" (a string)')
        cmd = request.pop("cmd")
        if not isinstance(cmd, str):
            return _reply_error(f'malformed request: "cmd" must be a string, not '
                                f"{_json_type(cmd)}")
        handler = self.commands.get(cmd)
        if handler is None:
            hint = difflib.get_close_matches(cmd, list(self.commands), n=1)
            more = f'; did you mean "{hint[0]}"?' if hint else \
                f" (commands: {', '.join(sorted(self.commands))})"
            return _reply_error(f'unknown command "{cmd}"{more}')
        problem = _check_arguments(handler, cmd, request)
        if problem:
            return _reply_error(problem)
        return cmd, handler, request


class _WriteTimeout(Exception):
    """A client did not take a reply within WRITE_TIMEOUT."""


async def _drain(writer: asyncio.StreamWriter) -> None:
    """writer.drain(), or _WriteTimeout when the client has not read it in WRITE_TIMEOUT."""
    try:
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()
    except TimeoutError:
        raise _WriteTimeout from None


def _refuse(writer: asyncio.StreamWriter, message: str) -> None:
    """Send one error line to a connection that is not served, and close it.

    The line fits in a fresh socket's buffer; close() sends it and then closes, without a
    task waiting for it."""
    writer.write(_reply_error(message))
    writer.close()


def _reply_result(cmd: str, result: Any) -> bytes:
    try:
        return json.dumps({"ok": True, "result": result}).encode() + b"\n"
    except (TypeError, ValueError) as exc:  # a handler bug: the result is not JSON
        log.error("control: command %s returned a result that is not JSON: %s", cmd, exc)
        return _reply_error(f"internal error in {cmd}: the result is not JSON ({exc})")


def _check_arguments(handler: Handler, cmd: str, args: dict[str, Any]) -> str:
    sig = inspect.signature(handler)
    params = sig.parameters
    unknown = [a for a in args if a not in params]
    if unknown:
        return (f'command "{cmd}": unknown argument "{unknown[0]}" '
                f"(arguments: {', '.join(params) or 'none'})")
    missing = [n for n, p in params.items()
               if p.default is inspect.Parameter.empty and n not in args]
    if missing:
        return f'command "{cmd}": missing argument "{missing[0]}"'
    for name, value in args.items():
        want = params[name].annotation
        if want in ("str", str) and not isinstance(value, str):
            return f'command "{cmd}": argument "{name}" must be a string'
        if want in ("int", int) and (not isinstance(value, int) or isinstance(value, bool)):
            return f'command "{cmd}": argument "{name}" must be an integer'
        if want in ("bool", bool) and not isinstance(value, bool):
            return f'command "{cmd}": argument "{name}" must be true or false'
        if want in ("float", float) and (not isinstance(value, int | float)
                                         or isinstance(value, bool)):
            return f'command "{cmd}": argument "{name}" must be a number'
    return ""


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error replies."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else "a string"


def _failure_reply(cmd: str, exc: Exception) -> bytes:
    """The reply to a command that raised (call it from the except block): ControlError and
    ValueError are the client's mistakes, said as they are; anything else is a bug, logged
    with its traceback, and the server keeps serving."""
    if isinstance(exc, (ControlError, ValueError)):
        return _reply_error(str(exc))
    log.exception("control: command %s failed", cmd)
    return _reply_error(f"internal error in {cmd}: {exc}")


def _reply_error(message: str) -> bytes:
    return json.dumps({"ok": False, "error": message}).encode() + b"\n"


def socket_in_use(path: str) -> str:
    """Why the socket file at `path` must not be replaced; "" if it is stale.

    Only ECONNREFUSED (nobody listens there: a stale socket, or not a socket at all) or the
    file gone meanwhile means stale. A connection means another daemon answers. A timeout or
    EAGAIN (a full backlog: a daemon that is stalled or busy) or any other error means one
    may still be there, and taking its path would cut it off from its clients."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(STALE_CHECK_TIMEOUT)
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return ""
        except TimeoutError:
            return (f"another daemon may be there: it did not accept within "
                    f"{STALE_CHECK_TIMEOUT:g}s (stalled?); not replacing it (remove the file "
                    "if no daemon uses it)")
        except OSError as exc:
            why = "its backlog is full (stalled?)" if exc.errno == errno.EAGAIN else \
                os_error_text(exc)
            return (f"another daemon may be there: connecting failed: {why}; not replacing "
                    "it (remove the file if no daemon uses it)")
        return "another daemon answers there"


def request(path: str, cmd: str, timeout: float = 10.0, **args: Any) -> Any:
    """Send one request to the daemon at `path`; return its result or raise ControlError.

    `timeout` is the socket's; a command argument named "timeout" (drain) needs
    request_with()."""
    return request_with(path, cmd, args, timeout)


def socket_label(path: str) -> str:
    """How error messages name the socket at `path`: "control socket PATH"."""
    return f"control socket {path}" if path else 'control socket ""'


def os_error_text(exc: OSError) -> str:
    """One line for an OSError: "Permission denied (EACCES)", without Python reprs."""
    if exc.errno:
        name = errno.errorcode.get(exc.errno)
        reason = os.strerror(exc.errno)
        return f"{reason} ({name})" if name else reason
    if exc.strerror:
        return exc.strerror
    return str(exc.args[0]) if exc.args else type(exc).__name__


def request_with(path: str, cmd: str, args: dict[str, Any], timeout: float = 10.0) -> Any:
    """Like request(), with the command's arguments as a dict (any names).

    Every failure raises ControlError. A refusal by the daemon carries the daemon's text; a
    failure to talk to the daemon (no socket, no answer, a reply that is not the protocol)
    starts with "control socket PATH: "."""
    where = socket_label(path)
    if not path:
        raise ControlError(f"{where}: empty path")
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        raise ControlError(f"{where}: path longer than {MAX_UNIX_PATH} bytes "
                           "(the limit of a unix socket address)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except FileNotFoundError:
            raise ControlError(f"{where}: not found (is l4lb running?)") from None
        except ConnectionRefusedError:
            raise ControlError(f"{where}: {_refused_reason(path)}") from None
        except PermissionError:
            raise ControlError(f"{where}: permission denied "
                               "(the socket is mode 0600; run as its owner)") from None
        except TimeoutError:
            raise ControlError(f"{where}: no connection within {timeout:g}s "
                               "(the daemon is not accepting)") from None
        except OSError as exc:
            raise ControlError(f"{where}: cannot connect: {os_error_text(exc)}") from None
        buf = b""
        try:
            s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    raise ControlError(f"{where}: the daemon closed the connection "
                                       "without a reply")
                buf += chunk
        except TimeoutError:
            raise ControlError(f"{where}: no reply within {timeout:g}s") from None
        except (ConnectionResetError, BrokenPipeError):
            raise ControlError(f"{where}: the daemon reset the connection "
                               "without a reply") from None
        except OSError as exc:
            raise ControlError(f"{where}: {os_error_text(exc)}") from None
    return _result(where, buf)


def _refused_reason(path: str) -> str:
    """Why connect() to `path` was refused: not a socket at all, or a socket nobody serves."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = stat.S_IFSOCK  # gone meanwhile: say what connect() said
    if stat.S_ISDIR(mode):
        return "is a directory, not a socket"
    if not stat.S_ISSOCK(mode):
        return "not a socket"
    return "connection refused (stale socket; is l4lb running?)"


def _result(where: str, line: bytes) -> Any:
    """The result of one reply line, or ControlError (the daemon's refusal or a bad reply)."""
    try:
        reply = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        shown = line.rstrip(b"\n")[:60].decode("utf-8", "replace")
        raise ControlError(f"{where}: the reply is not JSON ({json.dumps(shown)}): "
                           "is this an l4lb control socket?") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ControlError(f'{where}: the reply is not an l4lb reply (no "ok"): '
                           "is this an l4lb control socket?")
    if not reply["ok"]:
        raise ControlError(str(reply.get("error")))
    return reply.get("result")


# -- the loop's exception handler ------------------------------------------------------------

_ACCEPT_MESSAGE = "socket.accept() out of system resource"  # asyncio's context["message"]


class AcceptErrorLog:
    """Turns asyncio's accept() failures into at most one log line per kind and interval.

    A kind is (errno, listening address). The first failure of a kind is logged at once;
    later ones within ACCEPT_LOG_INTERVAL are counted, and the next line (or flush()) says
    how many there were. Pure: it returns the lines, the caller logs them."""

    def __init__(self, interval: float = ACCEPT_LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval  # seconds between two lines of one kind
        self.clock = clock  # monotonic seconds
        self._last: dict[tuple[int, str], float] = {}  # kind -> when its last line was logged
        self._held: dict[tuple[int, str], tuple[str, int]] = {}  # kind -> (text, failures
        #                                                           not logged since then)

    @staticmethod
    def matches(context: dict[str, Any]) -> bool:
        """Whether `context` is asyncio's report of a failed accept()."""
        return (context.get("message") == _ACCEPT_MESSAGE
                and isinstance(context.get("exception"), OSError))

    def note(self, context: dict[str, Any]) -> str | None:
        """Count one failure; the line to log now, or None while the kind is held back."""
        exc = context["exception"]
        where = _listener_name(context.get("socket"))
        kind = (exc.errno or 0, where)
        text = f"accept failed on {where}: {os_error_text(exc)}"
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            _, count = self._held.get(kind, (text, 0))
            self._held[kind] = (text, count + 1)
            return None
        self._last[kind] = now
        _, count = self._held.pop(kind, (text, 0))
        return f"{text} ({count} more since the last line)" if count else text

    def flush(self) -> list[str]:
        """Lines for the failures held back whose interval has ended (a quiet end of a storm)."""
        now = self.clock()
        lines = []
        for kind, (text, count) in list(self._held.items()):
            if now - self._last[kind] >= self.interval:
                del self._held[kind]
                self._last[kind] = now
                lines.append(f"{text} ({count} more since the last line)")
        return lines

    @property
    def held(self) -> int:
        """Failures counted but not logged yet."""
        return sum(count for _, count in self._held.values())


def _listener_name(sock: Any) -> str:
    """The listening socket of an accept() failure, as a path or HOST:PORT."""
    try:
        name = sock.getsockname()
    except Exception:  # no socket in the context, or closed meanwhile
        return "a listening socket"
    if isinstance(name, tuple) and len(name) >= 2:
        host = f"[{name[0]}]" if ":" in str(name[0]) else str(name[0])
        return f"{host}:{name[1]}"
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return str(name) or "an unnamed unix socket"


def install_loop_exception_handler(loop: asyncio.AbstractEventLoop, *,
                                   interval: float = ACCEPT_LOG_INTERVAL,
                                   clock: Callable[[], float] = time.monotonic) -> None:
    """Rate-limit asyncio's "socket.accept() out of system resource" reports on `loop`.

    At the fd limit, asyncio reports a failed accept() with a traceback each time it retries
    (tens of thousands of lines a minute). With this handler, each kind (errno, listener)
    logs one line without a traceback per `interval`, saying how many failures it stood for;
    held-back counts are logged when their interval ends. Every other context goes to the
    handler that was set before (asyncio's default one if none)."""
    limiter = AcceptErrorLog(interval, clock)
    previous = loop.get_exception_handler()
    flush_armed = [False]

    def flush() -> None:
        flush_armed[0] = False
        for line in limiter.flush():
            log.error("%s", line)
        if limiter.held:
            arm_flush()

    def arm_flush() -> None:
        if not flush_armed[0]:
            flush_armed[0] = True
            loop.call_later(interval, flush)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not limiter.matches(context):
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        line = limiter.note(context)
        if line is not None:
            log.error("%s", line)
        else:
            arm_flush()

    loop.set_exception_handler(handler)
