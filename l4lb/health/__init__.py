"""Health checks: active probes, rise/fall dampening, and the effective weights they lead to.

- `settings`: `HealthSettings`, the validated per-service settings and their defaults.
- `dampener`: pure UP/DOWN state machine per backend (rise, fall, start period, passive input).
- `pool`: pure effective weights of a service (admin state, backups, min_healthy, slow start).
- `probe`: TCP connect, send/expect, HTTP and UDP probes on one private epoll under the asyncio
  loop.
- `httpresponse`: pure judge of an HTTP/1.x response to a kind "http" probe.
- `execprobe`: kind "exec" probes: a command per probe, its exit status the verdict.
- `synprobe`: half-open SYN probes through a BPF-filtered raw socket (kind "syn").
- `synfleet`: the SYN fleet the checker runs "syn" backends on (C, or its Python twin).
- `checker`: schedules probes for many backends and reports transitions.

See docs/health.md.
"""

from l4lb.health.checker import CheckerStats, HealthChecker
from l4lb.health.dampener import Dampener, Health, HealthSnapshot, Transition, transition_log_line
from l4lb.health.pool import AdminState, PoolMember, PoolResult, effective_weights, ramp_weight
from l4lb.health.probe import (
    ProbeEngine,
    ProbeHandle,
    ProbeResult,
    ProbeSpec,
    probe_once,
    run_probe,
)
from l4lb.health.settings import DEFAULT_SETTINGS, HealthSettings, HealthSettingsError
from l4lb.health.synprobe import SynProbeEngine

__all__ = [
    "DEFAULT_SETTINGS",
    "AdminState",
    "CheckerStats",
    "Dampener",
    "Health",
    "HealthChecker",
    "HealthSettings",
    "HealthSettingsError",
    "HealthSnapshot",
    "PoolMember",
    "PoolResult",
    "ProbeEngine",
    "ProbeHandle",
    "ProbeResult",
    "ProbeSpec",
    "SynProbeEngine",
    "Transition",
    "effective_weights",
    "probe_once",
    "ramp_weight",
    "run_probe",
    "transition_log_line",
]
