"""Run one VRRP instance and its table digest check in this namespace (netns test node).

Usage: python3 digest_node.py 'JSON' with JSON {"instance": settings, "generation": N,
"digest": HEX, "check": {DigestCheck keyword arguments: interval, grace, port, ...}}.
The settings object holds VrrpSettings fields, as for vrrp_node.py.

stdout, one JSON object per line:
  {"event": "ready"}                           the instance and the check started
  {"event": "log", "level", "message", "t"}    every l4lb.vrrp log record
  {"event": "state", "state", "t"}             every VRRP state change
  {"event": "status", "check", "vrrp"}         answer to a "status" line on stdin
  {"event": "published", "generation", "digest"}  after a "digest" line
  {"event": "error", "message"}                start failed (exit 1)
  {"event": "stopped"}                         after SIGTERM / SIGINT
stdin commands: "status", "digest GENERATION HEX" (the node "publishes" that table).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from typing import Any

from l4lb.vrrp.digestcheck import DigestCheck
from l4lb.vrrp.fsm import Notify
from l4lb.vrrp.instance import VrrpError, VrrpInstance
from l4lb.vrrp.settings import VrrpSettings


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class JsonLines(logging.Handler):
    """Copies every record to stdout as a "log" event."""

    def emit(self, record: logging.LogRecord) -> None:
        emit({"event": "log", "level": record.levelname, "message": record.getMessage(),
              "t": time.monotonic()})


def settings_from(raw: dict[str, Any]) -> VrrpSettings:
    data = dict(raw)
    for key in ("vips", "unicast_peers", "track_interfaces"):
        if key in data:
            data[key] = tuple(data[key])
    return VrrpSettings(**data)


async def main(spec: dict[str, Any]) -> int:
    loop = asyncio.get_running_loop()
    table: list[Any] = [int(spec["generation"]), str(spec["digest"])]

    def on_notify(note: Notify) -> None:
        emit({"event": "state", "state": str(note.state), "t": time.monotonic()})

    instance = VrrpInstance(settings_from(spec["instance"]), on_notify=on_notify)
    checker = DigestCheck([instance], lambda: (int(table[0]), str(table[1])),
                          **spec.get("check", {}))
    try:
        await instance.start()
    except VrrpError as exc:
        emit({"event": "error", "message": str(exc)})
        return 1
    await checker.start()
    if not checker.running:
        emit({"event": "error", "message": str(checker.error)})
        await instance.stop(graceful=False)
        return 1
    emit({"event": "ready", "t": time.monotonic()})

    done = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, done.set)

    def on_stdin() -> None:
        line = sys.stdin.readline()
        if not line:
            loop.remove_reader(sys.stdin.fileno())
            return
        words = line.split()
        if words == ["status"]:
            emit({"event": "status", "check": checker.status(), "vrrp": instance.status()})
        elif len(words) == 3 and words[0] == "digest":
            table[0], table[1] = int(words[1]), words[2]
            checker.published()
            emit({"event": "published", "generation": table[0], "digest": table[1],
                  "t": time.monotonic()})

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    await done.wait()
    loop.remove_reader(sys.stdin.fileno())
    await checker.stop()
    await instance.stop(graceful=True)
    emit({"event": "stopped", "t": time.monotonic()})
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("l4lb.vrrp").addHandler(JsonLines())
    sys.exit(asyncio.run(main(json.loads(sys.argv[1]))))
