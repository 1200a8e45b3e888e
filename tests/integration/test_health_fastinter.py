"""Integration test of `fast_interval` against a real loopback backend, for every scheduler path.

One backend that listens, stops listening (the kernel then answers SYNs with RST), and listens
again on the same port, probed by the checker with a long `interval` and `down_interval` and a
short `fast_interval`: the gaps between its probe results must be short exactly while the
backend is in transition. Paths: `kind = "tcp"` on the checker's heap, `kind = "syn"` on the C
fleet and on its Python twin (those need a raw socket and are skipped without one). Bounded in
time (about 4 s each).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import time
from typing import Any

import pytest

from l4lb.health import Health, HealthChecker, HealthSettings
from l4lb.health.dampener import Dampener
from l4lb.health.synprobe import raw_socket_problem

pytestmark = pytest.mark.timeout(30)

SLOW = 0.5  # interval and down_interval
FAST = 0.04  # fast_interval


class _FirstAtOnce(random.Random):
    """The checker's rng: the first probe at once (jitter is 0 anyway)."""

    def uniform(self, a: float, b: float) -> float:
        return a


def _cases() -> list[Any]:
    syn_skip = pytest.mark.skipif(raw_socket_problem() is not None,
                                  reason="needs a raw socket (root or CAP_NET_RAW)")
    return [pytest.param("tcp", "off", False, id="tcp-heap"),
            pytest.param("syn", "c", True, id="syn-c-fleet-quiet", marks=syn_skip),
            pytest.param("syn", "c", False, id="syn-c-fleet-loud", marks=syn_skip),
            pytest.param("syn", "py", True, id="syn-py-fleet-quiet", marks=syn_skip)]


@pytest.mark.parametrize("kind, fleet, quiet", _cases())
def test_probes_come_at_fast_interval_only_while_in_transition(
        monkeypatch: pytest.MonkeyPatch, kind: str, fleet: str, quiet: bool) -> None:
    """With quiet passes (the fleet's default) the passes of a steady backend stay in the fleet
    and are recorded here only when collected (before its first failure, and at the end): the
    gap up to such a pass spans several intervals, which the checks below allow."""
    results: list[tuple[float, bool, str]] = []  # (time, passed, state after) per result
    real_probe = Dampener.probe

    def recording(self: Dampener, ok: bool, reason: str, now: float) -> Any:
        found = real_probe(self, ok, reason, now)
        results.append((now, ok, self.snapshot(now).describe()))
        return found

    monkeypatch.setattr(Dampener, "probe", recording)
    hs = HealthSettings(kind=kind, interval=SLOW, down_interval=SLOW,  # type: ignore[arg-type]
                        fast_interval=FAST, timeout=0.03, rise=3, fall=3, jitter=0.0)

    async def scenario() -> list[Health]:
        seen: list[Health] = []
        sock = _listen(0)
        port = sock.getsockname()[1]
        chk: HealthChecker[str] = HealthChecker(lambda _k, tr: seen.append(tr.new),
                                                rng=_FirstAtOnce(1), syn_fleet=fleet,
                                                quiet_passes=quiet)
        chk.add("b", "127.0.0.1", port, hs)
        chk.start()
        try:
            if fleet != "off":
                assert chk._entries["b"].fleet_id is not None
            await _until(lambda: len(results) >= 1, 3.0)  # UP, confirmed, steady
            await asyncio.sleep(SLOW * 1.2)  # a steady pass (quiet on the fleet)
            sock.close()  # nothing listens: refused from now on
            await _until(lambda: Health.DOWN in seen, 3.0)
            await asyncio.sleep(SLOW * 1.5)  # one or two probes while DOWN
            sock = _listen(port)
            await _until(lambda: Health.UP in seen, 3.0)
            await asyncio.sleep(SLOW * 2.5)  # two probes while UP again
            chk.snapshot("b")  # collects the quiet passes, if any
        finally:
            chk.stop()
            sock.close()
        return seen

    seen = asyncio.run(asyncio.wait_for(scenario(), 20.0))
    assert seen == [Health.DOWN, Health.UP]
    # the gap after each result, by the state the result left the backend in
    gaps = [(b[0] - a[0], a[2]) for a, b in itertools.pairwise(results)]
    states = [st for _gap, st in gaps]
    assert "UP, going down (1/3)" in states and "UP, going down (2/3)" in states
    assert "DOWN, going up (1/3)" in states and "DOWN, going up (2/3)" in states
    for gap, state in gaps:
        if "going" in state:
            assert gap < 0.25, (state, gap, gaps)  # FAST, with room for a busy host
        else:
            assert gap > SLOW - 0.05, (state, gap, gaps)
    assert sum(1 for _g, st in gaps if st == "DOWN") >= 1
    assert sum(1 for _g, st in gaps if st == "UP") >= (2 if quiet else 3)


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    return sock


async def _until(cond: Any, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)
