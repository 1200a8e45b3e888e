"""Integration test: a waiting probe follows a reload or a passive DOWN at once, on every path.

A loopback backend that always listens, probed with a 30 s `interval` (first probe at once):
after its first probe, a reload to a short interval must bring the next probes within a second
or two instead of 30 s, a reload back to 30 s must stop them, and passive failures that take it
DOWN must bring a probe at the short `down_interval` (it passes, so the backend comes back UP).
Paths: `kind = "tcp"` on the checker's heap, `kind = "syn"` on the C fleet and on its Python
twin (those need a raw socket and are skipped without one). Bounded in time (about 2 s each).
The exact schedule is tested under a fake clock in tests/unit/test_health_resched.py.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from l4lb.health import Health, HealthChecker, HealthSettings
from l4lb.health.synprobe import raw_socket_problem

pytestmark = pytest.mark.timeout(30)

LONG = 30.0  # interval before the reload: the test would time out waiting for it
SHORT = 0.1  # interval after the reload, and down_interval throughout


class _FirstAtOnce(random.Random):
    """The checker's rng: the first probe at once (jitter is 0 anyway)."""

    def uniform(self, a: float, b: float) -> float:
        return a


def _cases() -> list[Any]:
    syn_skip = pytest.mark.skipif(raw_socket_problem() is not None,
                                  reason="needs a raw socket (root or CAP_NET_RAW)")
    return [pytest.param("tcp", "off", id="tcp-heap"),
            pytest.param("syn", "c", id="syn-c-fleet", marks=syn_skip),
            pytest.param("syn", "py", id="syn-py-fleet", marks=syn_skip)]


@pytest.mark.parametrize("kind, fleet", _cases())
def test_reload_and_passive_down_move_the_waiting_probe(kind: str, fleet: str) -> None:
    def settings(interval: float) -> HealthSettings:
        return HealthSettings(kind=kind, interval=interval, down_interval=SHORT,  # type: ignore[arg-type]
                              timeout=0.05, rise=2, fall=3, jitter=0.0, max_fails=1,
                              fail_timeout=10.0)

    async def scenario() -> list[Health]:
        seen: list[Health] = []
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        port = sock.getsockname()[1]
        chk: HealthChecker[str] = HealthChecker(lambda _k, tr: seen.append(tr.new),
                                                rng=_FirstAtOnce(1), syn_fleet=fleet)

        def probes() -> int:
            return chk.stats().probes  # quiet passes of the fleet included

        chk.add("b", "127.0.0.1", port, settings(LONG))
        chk.start()
        try:
            assert (chk._entries["b"].fleet_id is not None) == (fleet != "off")
            await _until(lambda: probes() >= 1, 3.0)
            await asyncio.sleep(0.3)
            assert probes() == 1  # the next one is due 30 s after the first
            chk.add("b", "127.0.0.1", port, settings(SHORT))  # reload: 30 s -> 0.1 s
            await _until(lambda: probes() >= 4, 3.0)
            chk.add("b", "127.0.0.1", port, settings(LONG))  # and back
            await asyncio.sleep(SHORT * 2)  # a probe in flight at the reload may finish
            settled = probes()
            await asyncio.sleep(0.4)
            assert probes() == settled
            assert seen == []
            chk.passive_failures("b", 1)  # max_fails 1: DOWN, probed at down_interval
            assert seen == [Health.DOWN]
            await _until(lambda: Health.UP in seen, 3.0)  # two passes: UP again
            assert probes() >= settled + 2
        finally:
            chk.stop()
            sock.close()
        return seen

    assert asyncio.run(asyncio.wait_for(scenario(), 20.0)) == [Health.DOWN, Health.UP]


async def _until(cond: Callable[[], bool], limit: float) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)
