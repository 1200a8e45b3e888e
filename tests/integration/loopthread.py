"""An asyncio loop on a background thread, and a fake `status` snapshot whose counters grow.

Used by the observability tests (HTTP listener, status page in a browser, `l4lb top`): the
servers under test run on this loop while the test's own thread acts as the client.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """Runs an event loop on a thread until close()."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run `coro` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10.0)
        self.loop.close()


class GrowingStatus:
    """A `status` result whose counters grow at fixed rates with the wall clock.

    Rates: `conn_rate` sessions a second on the first backend (and the service), `byte_rate`
    bytes a second to the client. A test reading two snapshots therefore knows the rates any
    correct view must show, independent of when it polls.
    """

    def __init__(self, conn_rate: float = 250.0, byte_rate: float = 3 * 1024 * 1024,
                 evil_name: str = "<b>beta</b>") -> None:
        self.t0 = time.time()
        self.conn_rate = conn_rate  # sessions per second on backend alpha
        self.byte_rate = byte_rate  # bytes per second to the client on backend alpha
        self.evil_name = evil_name  # name of the second backend (must be shown as text)
        self.calls = 0  # how often the snapshot was read
        self.fail = False  # raise instead of answering (a daemon in trouble)
        self.taken = self.t0  # wall time the last snapshot's counters stand for

    def clock(self) -> float:
        """The time of the last snapshot: a server stamping documents with it shows exact rates
        however long the client took between two requests."""
        return self.taken

    def __call__(self) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("snapshot failed on purpose")
        self.calls += 1
        self.taken = time.time()
        k = self.taken - self.t0
        conns = int(self.conn_rate * k)
        to_client = int(self.byte_rate * k)

        def view(address: str, name: str, state: str, **counters: Any) -> dict[str, Any]:
            out = {"service": "web", "address": address, "name": name, "state": state,
                   "weight": 3, "effective_weight": 3 if state == "up" else 0,
                   "backup": False, "conns_total": 0, "conns_active": 0,
                   "connect_failures": 0, "bytes_to_backend": 0, "bytes_to_client": 0}
            out.update(counters)
            return out

        backends = [
            view("127.0.0.1:9001", "alpha", "up", conns_total=conns, conns_active=4,
                 bytes_to_backend=conns * 10, bytes_to_client=to_client, probe_latency=0.0034),
            view("127.0.0.1:9002", self.evil_name, "down", conns_total=17,
                 connect_failures=5),
            view("127.0.0.1:9003", "gamma", "drain", conns_total=40, conns_active=1),
            view("[::1]:9004", "delta", "maint", backup=True),
        ]
        return {"version": "0.1.0", "pid": 4242, "config": "/etc/l4lb/l4lb.toml",
                "started": self.t0 - 3600, "workers": 2,
                "table": {"generation": 9, "digest": "0123abcd"},
                "services": [{"name": "web", "protocol": "tcp", "scheduler": "maglev",
                              "listen": ["127.0.0.1:8080"],
                              "counters": {"conns_total": conns + 57, "conns_active": 5,
                                           "rejected": 2, "no_backend": 1,
                                           "bytes_to_backend": conns * 10,
                                           "bytes_to_client": to_client,
                                           "accept_errors": 0},
                              "backends": backends}]}
