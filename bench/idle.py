"""Hold many idle TCP connections (client side) or accept and hold them (backend side).

Run as `python -m bench.idle sink PORT N` (the backend: accepts and keeps connections, prints
`accepted K` as K grows) or `python -m bench.idle hold PORT N` (the client: opens N connections
to 127.0.0.1:PORT one after another, prints `connected N`, then holds them). Both stay until
standard input closes or SIGTERM arrives, then close everything and exit 0. A sink also exits
after --max-seconds (default 120), a client after the same bound, so nothing outlives a run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import selectors
import signal
import socket
import sys
import time

HOST = "127.0.0.1"


def _raise_nofile(n: int) -> None:
    want = n + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def sink(port: int, n: int, max_seconds: float) -> int:
    """Accept up to n connections and hold them."""
    _raise_nofile(n)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((HOST, port))
    ls.listen(4096)
    ls.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ, "listen")
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    held: list[socket.socket] = []
    deadline = time.monotonic() + max_seconds
    reported = -1
    _say("listening")
    try:
        while time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.05):
                if key.data == "stdin":
                    if not os.read(sys.stdin.fileno(), 4096):
                        return 0
                    continue
                while True:
                    try:
                        conn, _addr = ls.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    held.append(conn)
            if len(held) != reported:
                reported = len(held)
                _say(f"accepted {reported}")
        return 0
    finally:
        for s in held:
            s.close()
        ls.close()


def hold(port: int, n: int, max_seconds: float) -> int:
    """Open n connections one by one and hold them until stdin closes."""
    _raise_nofile(n)
    held: list[socket.socket] = []
    deadline = time.monotonic() + max_seconds
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(5.0)
            try:
                s.connect((HOST, port))
            except OSError as exc:
                s.close()
                _say(f"error after {len(held)}: {exc}")
                return 1
            held.append(s)
            if time.monotonic() > deadline:
                _say(f"error: time ran out after {len(held)}")
                return 1
        _say(f"connected {len(held)}")
        sel = selectors.DefaultSelector()
        sel.register(sys.stdin, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=0.2) and not os.read(sys.stdin.fileno(), 4096):
                return 0
        return 0
    finally:
        for s in held:
            with contextlib.suppress(OSError):
                s.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__)
    ap.add_argument("mode", choices=("sink", "hold"))
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--max-seconds", type=float, default=120.0)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.mode == "sink":
        return sink(args.port, args.n, args.max_seconds)
    return hold(args.port, args.n, args.max_seconds)


if __name__ == "__main__":
    sys.exit(main())
