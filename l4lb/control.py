"""The control socket: a unix socket (mode 0600) speaking JSON lines, and its client.

One request per line, one reply per line:
    → {"cmd": "backends", "service": "web"}
    ← {"ok": true, "result": [...]}
    ← {"ok": false, "error": "unknown command \"statsu\"; did you mean \"status\"?"}
Malformed or unknown requests get an error reply; they never stop the daemon. Commands are
registered by the daemon as coroutine-free callables taking the request's arguments as keyword
arguments; an exception of type ControlError (or StateError) becomes the error text.
The protocol is documented in docs/control-api.md.
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
from collections.abc import Callable
from typing import Any

log = logging.getLogger("l4lb")

MAX_REQUEST = 65536  # bytes per request line
MAX_UNIX_PATH = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL


class ControlError(Exception):
    """A request that cannot be served; the message is sent to the client."""


Handler = Callable[..., Any]


class ControlServer:
    """Serves registered commands on a unix socket."""

    def __init__(self, path: str, commands: dict[str, Handler]) -> None:
        self.path = path
        self.commands = commands
        self.server: asyncio.AbstractServer | None = None

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
                if _socket_alive(self.path):
                    raise ControlError(f"{where}: another daemon answers there")
                os.unlink(self.path)
            old_umask = os.umask(0o177)
            try:
                self.server = await asyncio.start_unix_server(self._client, path=self.path,
                                                              limit=MAX_REQUEST)
            finally:
                os.umask(old_umask)
            os.chmod(self.path, 0o600)
        except OSError as exc:
            if self.server is not None:
                self.server.close()
                self.server = None
            raise ControlError(f"{where}: cannot listen: {os_error_text(exc)}") from None
        log.info("control: listening on %s", self.path)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than MAX_REQUEST
                    writer.write(_reply_error(f"request longer than {MAX_REQUEST} bytes"))
                    break
                if not line:
                    break
                writer.write(self.handle_line(line))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def handle_line(self, line: bytes) -> bytes:
        """Answer one request line (public for tests)."""
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
        try:
            result = handler(**request)
        except (ControlError, ValueError) as exc:
            return _reply_error(str(exc))
        except Exception as exc:  # a bug: report it, keep serving
            log.exception("control: command %s failed", cmd)
            return _reply_error(f"internal error in {cmd}: {exc}")
        return json.dumps({"ok": True, "result": result}).encode() + b"\n"


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


def _reply_error(message: str) -> bytes:
    return json.dumps({"ok": False, "error": message}).encode() + b"\n"


def _socket_alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(path)
        except OSError:
            return False
        return True


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
