"""`l4lb top`: a live terminal view of services and backends with connection and byte rates.

Design. Every `interval` seconds the view asks the control socket for `status` (the same
snapshot `l4lb status` prints), computes rates from the previous snapshot with `rates()` (a
pure function: counter deltas over the monotonic time between the two answers; a counter that
went down, after a reload replaced the backend, shows no rate instead of a negative one) and
redraws one rich table on the terminal's alternate screen. A backend with an armed drain
deadline shows the time left next to its state ("drain 4m32s", formatted by the CLI's
`countdown()`, counted from the wall clock at each redraw). Between two polls it waits on
standard input in cbreak mode, so `q` quits at once; Ctrl-C quits too. The terminal's modes
and screen are restored on every way out. When the daemon stops answering, the last table
stays on screen with the error under it, and polling goes on, so the view recovers when the
daemon is back.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from l4lb.control import ControlError, request
from l4lb.display import countdown, human_bytes, uptime

STATE_STYLES = {"up": "bold green", "down": "bold red", "drain": "bold yellow",
                "maint": "dim"}  # rich styles of the backend states

Key = tuple[str, str | None]  # (service, backend address); None: the service's own counters


@dataclass(frozen=True)
class Rate:
    """Per-second rates of one service or backend (None: not known yet)."""

    conns: float | None  # new sessions per second
    to_backend: float | None  # bytes per second, client -> backend
    to_client: float | None  # bytes per second, backend -> client


_FIELDS = (("conns", "conns_total"), ("to_backend", "bytes_to_backend"),
           ("to_client", "bytes_to_client"))


def counters_by_key(status: Mapping[str, Any]) -> dict[Key, Mapping[str, Any]]:
    """Every service's counters and every backend's view, by (service, address|None)."""
    out: dict[Key, Mapping[str, Any]] = {}
    for svc in status.get("services", []):
        out[(svc["name"], None)] = svc.get("counters", {})
        for b in svc.get("backends", []):
            out[(svc["name"], b["address"])] = {**b, "conns_total": _total(b)}
    return out


def _active(b: Mapping[str, Any]) -> int:
    """A backend's open sessions, or its UDP flows (a backend only ever has one kind)."""
    return int(b.get("conns_active", 0)) + int(b.get("flows_active", 0))


def _total(b: Mapping[str, Any]) -> int:
    """A backend's sessions so far, or its UDP flows so far."""
    return int(b.get("conns_total", 0)) + int(b.get("flows_total", 0))


def rates(prev: Mapping[str, Any] | None, cur: Mapping[str, Any], dt: float) -> dict[Key, Rate]:
    """Rates between two status snapshots taken `dt` seconds apart (pure)."""
    old = counters_by_key(prev) if prev is not None else {}
    out: dict[Key, Rate] = {}
    for key, now in counters_by_key(cur).items():
        before = old.get(key)
        values: dict[str, float | None] = {}
        for name, field in _FIELDS:
            a = before.get(field) if before is not None else None
            b = now.get(field)
            if a is None or b is None or dt <= 0 or b < a:
                values[name] = None
            else:
                values[name] = (b - a) / dt
        out[key] = Rate(**values)
    return out


def _conn_rate(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.1f}" if r < 10 else f"{r:.0f}"


def _byte_rate(r: float | None) -> str:
    return "-" if r is None else human_bytes(r) + "/s"


def render(status: Mapping[str, Any], rate: Mapping[Key, Rate], *, socket_path: str,
           interval: float, error: str = "", now: float | None = None) -> RenderableType:
    """The whole screen for one snapshot."""
    wall = time.time() if now is None else now
    table = status.get("table", {})
    title = Text.assemble(
        ("l4lb top", "bold"), f"  {status.get('version', '?')}  pid {status.get('pid', '?')}  "
        f"up {uptime(wall - float(status.get('started', wall)))}  "
        f"workers {status.get('workers', '?')}  table gen {table.get('generation', '?')}  "
        f"{socket_path}")
    grid = Table(box=None, pad_edge=False, expand=False, header_style="bold reverse")
    for name, right in (("SERVICE / BACKEND", False), ("NAME", False), ("STATE", False),
                        ("WEIGHT", True), ("EFF", True), ("ACTIVE", True), ("CONN/S", True),
                        ("TOTAL", True), ("FAILS", True), ("TO-BACKEND/S", True),
                        ("TO-CLIENT/S", True), ("TO-BACKEND", True), ("TO-CLIENT", True)):
        grid.add_column(name, justify="right" if right else "left", no_wrap=True)
    for svc in status.get("services", []):
        c = svc.get("counters", {})
        r = rate.get((svc["name"], None), Rate(None, None, None))
        extra = f"rej {c.get('rejected', 0)} nob {c.get('no_backend', 0)}"
        grid.add_row(Text(svc["name"], style="bold cyan"),
                     Text(f"{svc.get('protocol', '')} {svc.get('scheduler', '')}", style="cyan"),
                     Text(extra, style="cyan"), "", "", str(c.get("conns_active", 0)),
                     _conn_rate(r.conns), str(c.get("conns_total", 0)), "",
                     _byte_rate(r.to_backend), _byte_rate(r.to_client),
                     human_bytes(c.get("bytes_to_backend", 0)),
                     human_bytes(c.get("bytes_to_client", 0)), style="bold")
        for b in svc.get("backends", []):
            r = rate.get((svc["name"], b["address"]), Rate(None, None, None))
            state = str(b.get("state", "?"))
            shown = Text(state, style=STATE_STYLES.get(state, ""))
            deadline = b.get("drain_deadline")
            if deadline is not None:  # `drain --timeout`: the time left, as `l4lb backends`
                shown.append(" " + countdown(float(deadline) - wall), style="yellow")
            if b.get("backup"):
                shown.append(" backup", style="dim")
            name = str(b.get("name", ""))
            grid.add_row(Text("  " + str(b["address"])),
                         Text("" if name == b["address"] else name), shown,
                         str(b.get("weight", 0)), str(b.get("effective_weight", 0)),
                         str(_active(b)), _conn_rate(r.conns),
                         str(_total(b)), str(b.get("connect_failures", 0)),
                         _byte_rate(r.to_backend), _byte_rate(r.to_client),
                         human_bytes(b.get("bytes_to_backend", 0)),
                         human_bytes(b.get("bytes_to_client", 0)))
    footer = Text(f"q quit  refresh {interval:g}s  {time.strftime('%H:%M:%S')}", style="dim")
    parts: list[RenderableType] = [title, Text(""), grid, Text(""), footer]
    if error:
        parts.append(Text(f"daemon not answering: {error} (retrying)", style="bold red"))
    return Group(*parts)


@contextlib.contextmanager
def _cbreak(fd: int | None) -> Iterator[None]:
    """Single keys without Enter, echo off; the old modes come back on any exit."""
    if fd is None:
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_key(fd: int | None, timeout: float) -> bytes | None:
    """Keys typed within `timeout` seconds (b"" at end of input), None if nothing came."""
    if fd is None:
        time.sleep(max(0.0, timeout))
        return None
    ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
    if not ready:
        return None
    return os.read(fd, 64)


def run_top(socket_path: str, interval: float = 1.0) -> int:
    """Run the live view until `q` or Ctrl-C; 0 then, 1 if the daemon never answered."""
    if interval <= 0:
        raise ValueError("interval must be > 0")
    timeout = min(10.0, max(1.0, 2 * interval))  # per status request
    try:
        status: Mapping[str, Any] = request(socket_path, "status", timeout=timeout)
    except (ControlError, OSError) as exc:
        print(f"l4lb top: error: {exc}", file=sys.stderr)
        return 1
    taken = time.monotonic()
    console = Console()
    fd: int | None = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    prev: Mapping[str, Any] | None = None
    current_rates: dict[Key, Rate] = rates(None, status, 0.0)
    error = ""
    try:
        with _cbreak(fd), Live(console=console, screen=True, auto_refresh=False,
                               redirect_stdout=False, redirect_stderr=False) as live:
            live.update(render(status, current_rates, socket_path=socket_path,
                               interval=interval), refresh=True)
            next_poll = taken + interval
            while True:
                keys = _wait_key(fd, next_poll - time.monotonic())
                if keys is not None:
                    if keys == b"":  # standard input closed: keep running without keys
                        fd = None
                    elif b"q" in keys.lower():
                        return 0
                    continue
                next_poll = time.monotonic() + interval
                try:
                    fresh = request(socket_path, "status", timeout=timeout)
                except (ControlError, OSError) as exc:
                    error = str(exc)
                else:
                    now = time.monotonic()
                    prev, status = status, fresh
                    current_rates = rates(prev, status, now - taken)
                    taken = now
                    error = ""
                live.update(render(status, current_rates, socket_path=socket_path,
                                   interval=interval, error=error), refresh=True)
    except KeyboardInterrupt:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m l4lb.top SOCKET [--interval S]` (the CLI's `l4lb top` calls run_top)."""
    parser = argparse.ArgumentParser(prog="l4lb top", description=__doc__.splitlines()[0])
    parser.add_argument("socket", help="control socket path")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between updates")
    args = parser.parse_args(argv)
    if not sys.stdout.isatty():  # as `l4lb top`: a live view written to a file never ends
        print("l4lb top: error: standard output is not a terminal; for a snapshot use "
              "`l4lb status` (`--json` for scripts)", file=sys.stderr)
        return 1
    return run_top(args.socket, args.interval)


if __name__ == "__main__":
    sys.exit(main())
