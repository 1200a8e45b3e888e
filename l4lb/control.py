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
import inspect
import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

log = logging.getLogger("l4lb")

MAX_REQUEST = 65536  # bytes per request line


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
        """Bind the socket (replacing a stale one), mode 0600."""
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        if os.path.exists(self.path):
            if _socket_alive(self.path):
                raise ControlError(f"control socket {self.path}: another daemon answers there")
            os.unlink(self.path)
        old_umask = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._client, path=self.path,
                                                          limit=MAX_REQUEST)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
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
        cmd = request.pop("cmd", None)
        if not isinstance(cmd, str):
            return _reply_error('malformed request: missing "cmd" (a string)')
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


def request_with(path: str, cmd: str, args: dict[str, Any], timeout: float = 10.0) -> Any:
    """Like request(), with the command's arguments as a dict (any names)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except FileNotFoundError:
            raise ControlError(f"control socket {path}: not found (is l4lb running?)") from None
        except ConnectionRefusedError:
            raise ControlError(f"control socket {path}: connection refused "
                               "(stale socket; is l4lb running?)") from None
        except PermissionError:
            raise ControlError(f"control socket {path}: permission denied "
                               "(the socket is mode 0600; run as its owner)") from None
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ControlError(f"control socket {path}: daemon closed the connection")
            buf += chunk
    reply = json.loads(buf)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")))
    return reply.get("result")
