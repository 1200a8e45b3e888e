"""Probe how far apart the two vCPUs are right now: cache-line ping-pong between CPU 0 and 1.

The host sometimes places the two vCPUs far apart, which halves every figure through a balancer
(load on CPU 0, balancer on CPU 1). The probe's round trip is ~100-300 ns when they are close and
~400-650 ns when apart; every measured run records the probe taken just before it, and the report
keeps close runs apart from the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bench import procs

CLOSE_NS_DEFAULT = 350.0


@dataclass(frozen=True)
class Distance:
    """One probe."""

    rtt_ns: float  # median round trip of a cache line between the two CPUs (-1: probe failed)
    batches_ns: tuple[float, ...]  # every timed batch


def probe(binary: Path, cpu_a: int = 0, cpu_b: int = 1, iterations: int = 5000,
          batches: int = 7) -> Distance:
    """Run the probe once (about 20 ms); rtt_ns is -1 when it failed."""
    res = procs.run_bounded([str(binary), str(cpu_a), str(cpu_b), str(iterations),
                             str(batches)], timeout=5.0)
    if res.returncode != 0:
        return Distance(rtt_ns=-1.0, batches_ns=())
    data = json.loads(res.stdout)
    return Distance(rtt_ns=float(data["rtt_ns"]),
                    batches_ns=tuple(float(x) for x in data["batches_ns"]))


def is_close(rtt_ns: float, threshold_ns: float = CLOSE_NS_DEFAULT) -> bool:
    """True when a probe says the vCPUs were close (a failed probe is not close)."""
    return 0 < rtt_ns < threshold_ns
