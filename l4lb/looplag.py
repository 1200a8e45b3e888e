"""Event-loop lag: how late the control plane's loop runs a callback it scheduled (stalls).

The control plane is one asyncio loop: VRRP adverts, health probes, the control socket and the
metrics listener all wait for it. Anything that holds it (a blocking write, a slow command) delays
all of them, and at 100 ms adverts a stall of a third of a second is a failover. serve() schedules
a callback every `interval` and feeds its lateness here; this module only counts (pure: the
caller passes the times), so the status, the metrics and the log can say when the loop stalled.
"""

from __future__ import annotations

from dataclasses import dataclass

INTERVAL = 0.1  # seconds between two samples
STALL = 0.25  # seconds of lateness that count (and are logged) as a stall


@dataclass
class LoopLag:
    """Lateness of the sampling callback: the worst seen, the last, and how many stalls."""

    stall: float = STALL  # lateness from which a sample is a stall
    max_lag: float = 0.0  # worst lateness seen, seconds
    last_lag: float = 0.0  # lateness of the latest sample
    stalls: int = 0  # samples at least `stall` late
    samples: int = 0  # samples taken

    def observe(self, due: float, now: float) -> float | None:
        """Record a sample that was due at `due` and ran at `now` (loop time); returns its
        lateness when it is a stall (the caller logs it), else None."""
        lag = max(0.0, now - due)
        self.samples += 1
        self.last_lag = lag
        self.max_lag = max(self.max_lag, lag)
        if lag >= self.stall:
            self.stalls += 1
            return lag
        return None

    def status(self) -> dict[str, float | int]:
        """The `loop` object of the control API's status."""
        return {"lag_max_ms": round(self.max_lag * 1000, 1),
                "lag_last_ms": round(self.last_lag * 1000, 1),
                "stalls": self.stalls, "stall_ms": round(self.stall * 1000)}
