"""Run the balancer: wire config, table builder, listeners and data plane; handle signals.

Start-up order matters: the data plane starts and gets its first table BEFORE any listener is
handed to it, so no accepted connection ever meets an empty table. A listener that cannot bind
stops the start-up with one line naming the address and the OS error.

Signals: SIGTERM drains gracefully (stop accepting, let sessions finish for up to
`[global] shutdown_timeout`, close the rest, exit 0); SIGINT stops at once (sessions closed, exit 0);
a second signal stops at once. SIGHUP is reserved for reload (issue #3) and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from l4lb.config.model import Config
from l4lb.dataplane import load_dataplane_class
from l4lb.net.listen import ListenerGroup, open_listeners, resolve_workers
from l4lb.table.builder import TableBuilder

log = logging.getLogger("l4lb")

# Exit codes of `l4lb run` (documented in docs/cli.md).
EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_LISTEN = 3
EXIT_DATAPLANE = 4


@dataclass
class BackendView:
    """One backend with its counters, for display (demo line, later the control API)."""

    service: str  # service name
    address: str  # as written in the file
    name: str  # backend name (defaults to the address)
    conns_total: int = 0
    conns_active: int = 0
    connect_failures: int = 0
    bytes_to_backend: int = 0
    bytes_to_client: int = 0


@dataclass
class Daemon:
    """One running balancer: owns the data plane and the listener sockets."""

    config: Config
    workers: int = 0  # resolved in start()
    dp: Any = None  # the Dataplane instance (C or reference)
    builder: TableBuilder = field(default_factory=TableBuilder)
    listeners: list[ListenerGroup] = field(default_factory=list)
    digest: str = ""  # digest of the live table

    def start(self) -> None:
        """Create the data plane, publish the first table, bind and hand over the listeners.

        Raises DataplaneUnavailable or ListenError; on error everything started is undone.
        """
        dp_class = load_dataplane_class()
        self.workers = resolve_workers(self.config.global_.workers)
        self.dp = dp_class(self.workers)
        try:
            self.dp.start()
            self._publish()
            for service in self.config.services:
                for endpoint in service.listen:
                    group = open_listeners(service.name, endpoint, self.workers,
                                           self.config.global_.listen_backlog)
                    self.listeners.append(group)
            ids = self.builder.service_ids()
            for group in self.listeners:
                for worker, sock in enumerate(group.sockets):
                    self.dp.add_listener(ids[group.service], sock.fileno(), worker)
                log.info("service %s: listening on %s (%d workers)", group.service,
                         group.endpoint, self.workers)
        except BaseException:
            self.stop(0.0)
            raise

    def _publish(self) -> None:
        from l4lb.table.blob import digest

        blob = self.builder.build(self.config)
        generation = self.dp.publish(blob)
        self.digest = digest(blob)
        log.info("table: generation %d published (digest %s, %d services)", generation,
                 self.digest, len(self.config.services))

    def backend_views(self) -> list[BackendView]:
        """Backends of every service in file order, with their counters."""
        stats = self.dp.stats() if self.dp is not None else {"backends": {}}
        ids = self.builder.backend_ids()
        views: list[BackendView] = []
        for service in self.config.services:
            for backend in service.backends:
                view = BackendView(service.name, backend.address.text or str(backend.address),
                                   backend.name)
                bid = ids.get((service.name, view.address))
                counters = stats["backends"].get(bid, {}) if bid is not None else {}
                for key in ("conns_total", "conns_active", "connect_failures",
                            "bytes_to_backend", "bytes_to_client"):
                    setattr(view, key, int(counters.get(key, 0)))
                views.append(view)
        return views

    def stop(self, timeout: float) -> None:
        """Stop accepting, drain for up to `timeout` seconds, close everything. Idempotent."""
        if self.dp is not None:
            for group in self.listeners:
                for sock in group.sockets:
                    with contextlib.suppress(Exception):
                        self.dp.remove_listener(sock.fileno())
            self.dp.stop(timeout)
            self.dp = None
        for group in self.listeners:
            group.close()
        self.listeners = []


async def serve(daemon: Daemon, tick: Callable[[Daemon], None] | None = None,
                tick_interval: float = 1.0, duration: float | None = None) -> int:
    """Run until a signal (or `duration` seconds); return the exit code.

    `tick` is called every `tick_interval` seconds on the event loop (the demo's live line).
    """
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    drain_timeout = [daemon.config.global_.shutdown_timeout]
    signals_seen: list[int] = []

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            log.warning("daemon: SIGHUP received: reload is not implemented yet; "
                        "configuration unchanged")
            return
        signals_seen.append(signum)
        if len(signals_seen) > 1 or signum == signal.SIGINT:
            drain_timeout[0] = 0.0
            log.info("daemon: %s received: stopping now", name)
        else:
            log.info("daemon: %s received: draining for up to %.1fs", name, drain_timeout[0])
        done.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        deadline = None if duration is None else loop.time() + duration
        while not done.is_set():
            wait = tick_interval if tick is not None else 3600.0
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=wait)
            if tick is not None and not done.is_set():
                tick(daemon)
            if deadline is not None and loop.time() >= deadline:
                drain_timeout[0] = 0.0
                break
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    # The drain blocks (the data plane waits for sessions without the GIL): run it off the loop.
    await loop.run_in_executor(None, daemon.stop, drain_timeout[0])
    log.info("daemon: stopped")
    return EXIT_OK
