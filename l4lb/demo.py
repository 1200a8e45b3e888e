"""`l4lb demo`: three local backends, a balancer in front of them, and a live line of counts.

The backends run on the demo's event loop on ephemeral 127.0.0.1 ports. Each answers with its own
name: an HTTP request gets a tiny HTTP/1.0 reply (so `curl` works), anything else gets a greeting
line and then an echo of every line, prefixed with the backend's name (so `nc` works). The balancer
runs the real data plane on the embedded configuration below, validated like any file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field

from l4lb.config import load_text
from l4lb.config.model import hostport
from l4lb.daemon import Daemon, serve

log = logging.getLogger("l4lb")

DEMO_CONFIG = """\
# The embedded demo configuration (`l4lb demo --show-config` prints the rendered file).
[global]
workers = 1
shutdown_timeout = "2s"

[[services]]
name = "demo"
protocol = "tcp"
listen = ["{listen}"]
scheduler = "round_robin"
connect_timeout = "1s"
idle_timeout = "1m"
retries = 2

  [[services.backends]]
  address = "127.0.0.1:{p1}"
  name = "backend-1"

  [[services.backends]]
  address = "127.0.0.1:{p2}"
  name = "backend-2"

  [[services.backends]]
  address = "127.0.0.1:{p3}"
  name = "backend-3"
"""

HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")


@dataclass
class DemoBackend:
    """One demo backend server: answers with its name."""

    name: str
    server: asyncio.Server | None = None
    port: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            first = b""
            with contextlib.suppress(TimeoutError):
                first = await asyncio.wait_for(reader.read(4096), timeout=0.2)
            if first.startswith(HTTP_METHODS):
                body = f"{self.name}\n".encode()
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
                await writer.drain()
                return
            writer.write(f"hello from {self.name}\n".encode())
            pending = first
            while True:
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    writer.write(self.name.encode() + b": " + line + b"\n")
                await writer.drain()
                chunk = await reader.read(4096)
                if not chunk:
                    break
                pending += chunk
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            if task is not None:
                self.tasks.discard(task)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self.tasks):
                task.cancel()
            await self.server.wait_closed()


def _own_command() -> str:
    """How to run this same l4lb from another terminal: `l4lb` when that is what PATH finds,
    else the full path of the script (e.g. .venv/bin/l4lb), else `python -m l4lb`."""
    argv0 = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.basename(argv0) == "l4lb" and os.access(argv0, os.X_OK):
        on_path = shutil.which("l4lb")
        return "l4lb" if on_path and os.path.realpath(on_path) == argv0 else argv0
    return f"{sys.executable} -m l4lb"


def render_config(host: str, port: int, ports: list[int]) -> str:
    """The demo's TOML with the real backend ports filled in."""
    listen = hostport(host, port)
    return DEMO_CONFIG.format(listen=listen, p1=ports[0], p2=ports[1], p3=ports[2])


def _live_line(daemon: Daemon, tty: bool, last: list[str]) -> None:
    views = daemon.backend_views()
    parts = [f"{v.name}: {v.conns_total} conns ({v.conns_active} open)" for v in views]
    line = "  ".join(parts)
    if tty:
        sys.stdout.write("\r\x1b[2K" + line)
        sys.stdout.flush()
    elif line != last[0]:
        print(line, flush=True)
    last[0] = line


async def run_demo(host: str, port: int, duration: float | None, show_config: bool) -> int:
    """Start backends + balancer, print how to try it, show counts until Ctrl-C."""
    backends = [DemoBackend(f"backend-{i}") for i in (1, 2, 3)]
    for backend in backends:
        await backend.start()
    text = render_config(host, port, [b.port for b in backends])
    daemon: Daemon | None = None
    control_dir = tempfile.mkdtemp(prefix="l4lb-demo-")
    control_path = os.path.join(control_dir, "l4lb.sock")
    try:
        config = load_text(text, "<demo>")
        if show_config:
            print(text)
        daemon = Daemon(config)
        daemon.start()
        tty = sys.stdout.isatty()
        where = hostport(host, port)
        me = _own_command()
        tries = [(f"curl -s http://{where}/", "each request names the backend that answered"),
                 (f"nc {'-6 ' if ':' in host else ''}{host} {port}",
                  "a greeting, then every line you type is echoed"),
                 (f"{me} status --socket {control_path}", "states and counters"),
                 (f"{me} drain demo backend-2 --socket {control_path}", "no new sessions")]
        width = max(len(cmd) for cmd, _ in tries)
        print(f"l4lb demo: balancing {where} over 3 local backends (round_robin).\n"
              "Try, in another terminal:\n"
              + "".join(f"  {cmd.ljust(width)}  # {why}\n" for cmd, why in tries)
              + "Ctrl-C stops everything.", flush=True)
        last = [""]
        return await serve(daemon, tick=lambda d: _live_line(d, tty, last), tick_interval=1.0,
                           duration=duration, control_path=control_path)
    finally:
        if daemon is not None:
            daemon.stop(0.0)
        if sys.stdout.isatty():
            print()
        for backend in backends:
            await backend.close()
        with contextlib.suppress(OSError):
            os.rmdir(control_dir)
