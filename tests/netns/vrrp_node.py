"""Run VRRP instances in this network namespace and report them as JSON lines (netns test node).

Usage: python3 vrrp_node.py 'JSON' where JSON is {"instances": [settings, ...], "load": {...}}.
Each settings object holds VrrpSettings fields (track_services as [{"service", "weight"}]).
The optional "load" keeps the loop busy like a real daemon: {"backends": N, "interval": S}
starts l4lb.health.HealthChecker probing N closed ports on 127.0.0.1 every S seconds.

stdout, one JSON object per line:
  {"event": "ready"}                                  every instance started
  {"event": "state", "name", "state", "previous", "reason", "t", "last_advert_at"}
  {"event": "status", "instances": [status(), ...]}   answer to a "status" line on stdin
  {"event": "error", "message"}                        start failed (exit 1)
  {"event": "stopped"}                                 after SIGTERM / SIGINT (graceful stop)
"t" and "last_advert_at" are time.monotonic() values, comparable with the test process's.
stdin commands: "status", "track SERVICE 0|1", "link IFNAME 0|1".
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from typing import Any

from l4lb.health.checker import HealthChecker
from l4lb.health.settings import HealthSettings
from l4lb.vrrp.fsm import Notify
from l4lb.vrrp.instance import VrrpError, VrrpInstance
from l4lb.vrrp.settings import TrackService, VrrpSettings


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def settings_from(raw: dict[str, Any]) -> VrrpSettings:
    data = dict(raw)
    for key in ("vips", "unicast_peers", "track_interfaces"):
        if key in data:
            data[key] = tuple(data[key])
    if "track_services" in data:
        data["track_services"] = tuple(TrackService(**t) for t in data["track_services"])
    return VrrpSettings(**data)


async def main(spec: dict[str, Any]) -> int:
    loop = asyncio.get_running_loop()
    instances: list[VrrpInstance] = []

    def on_notify_for(get: list[VrrpInstance]) -> Any:
        def hook(note: Notify) -> None:
            inst = next((i for i in get if i.settings.name == note.name), None)
            last = inst.last_advert if inst is not None else None
            emit({"event": "state", "name": note.name, "state": str(note.state),
                  "previous": str(note.previous), "reason": note.reason,
                  "t": time.monotonic(),
                  "last_advert_at": None if last is None else last[2] / 1e6,
                  "last_advert_priority": None if last is None else last[1]})
        return hook

    hook = on_notify_for(instances)
    for raw in spec["instances"]:
        instances.append(VrrpInstance(settings_from(raw), on_notify=hook))
    checker: HealthChecker[int] | None = None
    load = spec.get("load")
    if load:
        checker = HealthChecker(lambda key, tr: None)
        settings = HealthSettings(interval=float(load["interval"]),
                                  timeout=min(0.5, float(load["interval"])), jitter=0.1)
        for i in range(int(load["backends"])):
            checker.add(i, "127.0.0.1", 20000 + i, settings)
        checker.start()
    try:
        for inst in instances:
            await inst.start()
    except VrrpError as exc:
        emit({"event": "error", "message": str(exc)})
        for inst in instances:
            await inst.stop(graceful=False)
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
            extra: dict[str, Any] = {}
            if checker is not None:
                extra["checker"] = vars(checker.stats()) if hasattr(checker, "stats") else {}
            emit({"event": "status", "instances": [i.status() for i in instances], **extra})
        elif len(words) == 3 and words[0] == "track":
            for inst in instances:
                inst.set_tracking(services={words[1]: words[2] == "1"})
        elif len(words) == 3 and words[0] == "link":
            for inst in instances:
                inst.set_tracking(interfaces={words[1]: words[2] == "1"})

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    await done.wait()
    loop.remove_reader(sys.stdin.fileno())
    if checker is not None:
        checker.stop()
    for inst in instances:
        await inst.stop(graceful=True)
    emit({"event": "stopped", "t": time.monotonic()})
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.exit(asyncio.run(main(json.loads(sys.argv[1]))))
