"""Connect to a service again and again and report each answer (netns test helper).

Usage: python3 client.py HOST PORT SECONDS PERIOD. Every PERIOD seconds, for SECONDS seconds
(or until SIGTERM), one TCP connection to HOST:PORT (connect timeout PERIOD, read until EOF)
is reported as {"event": "try", "t": monotonic, "ok": bool, "answer" or "error"}; then
{"event": "done"}. A client that reconnects after a failover: which backend answers, and how
long nothing did.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time


def one(host: str, port: int, timeout: float) -> dict[str, object]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect((host, port))
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        if not data:
            return {"ok": False, "error": "empty answer"}
        return {"ok": True, "answer": data.decode(errors="replace")}
    except OSError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def main() -> int:
    host, port, seconds, period = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), \
        float(sys.argv[4])
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    end = time.monotonic() + seconds
    while not stop[0] and time.monotonic() < end:
        started = time.monotonic()
        result = one(host, port, period)
        print(json.dumps({"event": "try", "t": started, **result}), flush=True)
        time.sleep(max(0.0, period - (time.monotonic() - started)))
    print(json.dumps({"event": "done"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
