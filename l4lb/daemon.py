"""Run the balancer: wire config, table builder, listeners and data plane; handle signals.

Start-up order matters: the data plane starts and gets its first table BEFORE any listener is
handed to it, so no accepted connection ever meets an empty table. A listener that cannot bind
stops the start-up with one line naming the address and the OS error.

Signals: SIGTERM drains gracefully (stop accepting, let sessions finish for up to
`[global] shutdown_timeout`, close the rest, exit 0); SIGINT stops at once (sessions closed,
exit 0); a second signal stops at once. SIGHUP reloads the configuration file (see Daemon.reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from l4lb import __version__
from l4lb.config import ConfigError, load_file
from l4lb.config.model import Config
from l4lb.control import ControlError, ControlServer
from l4lb.dataplane import load_dataplane_class
from l4lb.health.checker import HealthChecker
from l4lb.health.dampener import Health, Transition, transition_log_line
from l4lb.httpserver import HttpServer
from l4lb.httpserver import start as start_http
from l4lb.logs import LEVELS
from l4lb.net.listen import ListenerGroup, ListenError, open_listeners, resolve_workers
from l4lb.overlay import Overlay, OverlayError
from l4lb.reload import RESTART_ONLY, plan
from l4lb.state import Runtime, StateError, address_text
from l4lb.table.blob import digest
from l4lb.table.builder import TableBuilder
from l4lb.vrrp.digestcheck import DigestCheck
from l4lb.vrrp.instance import VrrpInstance
from l4lb.weights import Key, Weights, compute

log = logging.getLogger("l4lb")

# Exit codes of `l4lb run` (documented in docs/cli.md).
EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2  # click's own code for a usage error
EXIT_LISTEN = 3
EXIT_DATAPLANE = 4


@dataclass
class BackendView:
    """One backend with its state and counters, for display (demo line, control API)."""

    service: str  # service name
    address: str  # as written in the file
    name: str  # backend name (defaults to the address)
    state: str = "up"  # up | down | drain | maint
    weight: int = 0  # current weight (file or runtime)
    effective_weight: int = 0  # weight new sessions see (0 when not up, or an idle backup)
    backup: bool = False
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
    runtime: Runtime = field(default_factory=Runtime)  # admin state and weights per backend
    file_config: Config | None = None  # the file as loaded; `config` = file + overlay
    overlay: Overlay = field(default_factory=Overlay)  # add-backend / remove-backend changes
    digest: str = ""  # digest of the live table
    generation: int = 0  # generation of the live table
    started: float = field(default_factory=time.time)  # unix time of start()
    weights: Weights | None = None  # effective weights of the live table
    checker: HealthChecker[Key] | None = None  # active health checks (on the event loop)
    publish_handle: asyncio.Handle | None = None  # a coalesced re-publish is queued
    ramp_handle: asyncio.TimerHandle | None = None  # re-publish at the next slow-start step
    panic_logged: dict[str, str] = field(default_factory=dict)  # service -> reason warned
    failures_seen: dict[int, int] = field(default_factory=dict)  # backend id -> connect fails
    vrrp: list[VrrpInstance] = field(default_factory=list)  # running [[vrrp]] instances
    digest_check: DigestCheck | None = None  # compares table digests with the VRRP peers

    def start(self) -> None:
        """Create the data plane, publish the first table, bind and hand over the listeners.

        Raises DataplaneUnavailable or ListenError; on error everything started is undone.
        """
        dp_class = load_dataplane_class()
        self.file_config = self.config
        self.runtime = Runtime.from_config(self.config)
        self.workers = resolve_workers(self.config.global_.workers)
        self.dp = dp_class(self.workers)
        try:
            self.dp.start()
            self._publish()
            for service in self.config.services:
                for endpoint in service.listen:
                    group = open_listeners(service.name, endpoint, self.workers,
                                           self.config.global_.listen_backlog,
                                           service.protocol)
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
        weights = compute(self.config, self.runtime, time.monotonic(), self._ramp_start)
        # DOWN or in maintenance: UDP flows move on their next datagram (drained ones stay)
        down = {key for key, rt in self.runtime.backends.items()
                if rt.health == "down" or rt.admin == "maint"}
        blob = self.builder.build(self.config, weights.weights, down)
        self.generation = self.dp.publish(blob)
        self.weights = weights
        self.digest = digest(blob)
        if self.digest_check is not None:
            self.digest_check.published()
        log.info("table: generation %d published (digest %s, %d services)", self.generation,
                 self.digest, len(self.config.services))
        for service, reason in weights.panic.items():
            if self.panic_logged.get(service) != reason:
                log.warning("service %s: panic: %s (below min_healthy): every enabled backend "
                            "stays in rotation, DOWN ones included", service, reason)
        for service in set(self.panic_logged) - set(weights.panic):
            log.warning("service %s: panic over: health checks decide again", service)
        self.panic_logged = dict(weights.panic)
        self._schedule_ramp(weights.next_change)
        healthy = {service: up > 0 for service, up in weights.up.items()}
        for instance in self.vrrp:
            instance.set_tracking(services=healthy)

    def _ramp_start(self, key: Key) -> float | None:
        """When the backend last came UP (start of its slow-start ramp), if it is checked."""
        if self.checker is None:
            return None
        try:
            return self.checker.up_since(key)
        except KeyError:
            return None

    def _schedule_ramp(self, at: float | None) -> None:
        if self.ramp_handle is not None:
            self.ramp_handle.cancel()
            self.ramp_handle = None
        if at is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self.ramp_handle = loop.call_at(at, self._publish_soon)

    def _publish_soon(self) -> None:
        """Re-publish once after the current burst of changes (many transitions, one table)."""
        if self.publish_handle is not None or self.dp is None:
            return

        def run() -> None:
            self.publish_handle = None
            if self.dp is not None:
                self._publish()

        self.publish_handle = asyncio.get_running_loop().call_soon(run)

    # ---- VRRP (docs/ha.md) ----

    async def start_vrrp(self) -> None:
        """Start every [[vrrp]] instance (listeners are already bound, with IP_FREEBIND).

        Raises VrrpError when one cannot start; the ones already started are stopped."""
        try:
            for settings in self.config.vrrp:
                instance = VrrpInstance(settings)
                await instance.start()
                self.vrrp.append(instance)
                log.info("vrrp %s: started on %s (VRID %d, priority %d)", settings.name,
                         settings.interface, settings.virtual_router_id, settings.priority)
        except BaseException:
            await self.stop_vrrp()
            raise
        if self.vrrp:
            self.digest_check = DigestCheck(lambda: self.vrrp,
                                            lambda: (self.generation, self.digest))
            await self.digest_check.start()
        if self.weights is not None:
            healthy = {service: up > 0 for service, up in self.weights.up.items()}
            for instance in self.vrrp:
                instance.set_tracking(services=healthy)

    async def stop_vrrp(self) -> None:
        """Leave the VRRP groups gracefully: priority-0 advert, VIPs removed."""
        if self.digest_check is not None:
            await self.digest_check.stop()
            self.digest_check = None
        for instance in self.vrrp:
            await instance.stop(graceful=True)
        self.vrrp = []

    def cmd_vrrp(self) -> dict[str, Any]:
        check = self.digest_check.status() if self.digest_check is not None else None
        instances = []
        for instance in self.vrrp:
            status = instance.status()
            if check is not None:
                status["digest_check"] = check["instances"].get(instance.settings.name)
            instances.append(status)
        return {"instances": instances, "digest_check": check,
                "table": {"generation": self.generation, "digest": self.digest}}

    # ---- health checks (docs/health.md) ----

    def start_health(self) -> None:
        """Start probing on the running loop (serve() calls this)."""
        self.checker = HealthChecker(self._on_transition)
        self._sync_health()
        self.checker.start()

    def _sync_health(self) -> None:
        """Make the checker probe exactly the backends of services with [services.health]."""
        if self.checker is None:
            return
        wanted: set[Key] = set()
        for service in self.config.services:
            if service.health is None:
                continue
            for backend in service.backends:
                key = (service.name, address_text(backend))
                wanted.add(key)
                self.checker.add(key, backend.address.host, backend.address.port,
                                 service.health)
                self.runtime.backends[key].health = self.checker.state(key).value
        for key in set(self.checker.keys()) - wanted:
            self.checker.remove(key)

    def _on_transition(self, key: Key, transition: Transition) -> None:
        rt = self.runtime.backends.get(key)
        if rt is None:
            return
        line = transition_log_line(f"backend {key[0]}/{key[1]}", transition)
        if transition.new is Health.DOWN:
            log.warning("%s", line)
        else:
            log.info("%s", line)
        rt.health = transition.new.value
        self._publish_soon()

    def health_stats(self) -> dict[str, Any] | None:
        """The health checker's counters (for metrics), None when nothing is checked."""
        return dataclasses.asdict(self.checker.stats()) if self.checker is not None else None

    def feed_passive_failures(self) -> None:
        """Hand the data plane's new connect failures to the checker (max_fails)."""
        if self.checker is None or self.dp is None:
            return
        passive = {s.name for s in self.config.services
                   if s.health is not None and s.health.max_fails > 0}
        if not passive:
            return
        backends = self.dp.stats()["backends"]
        for (service, address), bid in self.builder.backend_ids().items():
            failures = int(backends.get(bid, {}).get("connect_failures", 0))
            new = failures - self.failures_seen.get(bid, failures)
            self.failures_seen[bid] = failures
            if service in passive and new > 0:
                self.checker.passive_failures((service, address), new)

    def backend_views(self, service_name: str | None = None) -> list[BackendView]:
        """Backends of every service (or one) in file order, with state and counters."""
        stats = self.dp.stats() if self.dp is not None else {"backends": {}}
        ids = self.builder.backend_ids()
        views: list[BackendView] = []
        for service in self.config.services:
            if service_name is not None and service.name != service_name:
                continue
            for backend in service.backends:
                rt = self.runtime.backends[(service.name, address_text(backend))]
                effective = (self.weights.weights.get((service.name, rt.address), 0)
                             if self.weights is not None else 0)
                view = BackendView(service.name, rt.address, backend.name, state=rt.state,
                                   weight=rt.weight, effective_weight=effective,
                                   backup=rt.backup)
                bid = ids.get((service.name, view.address))
                counters = stats["backends"].get(bid, {}) if bid is not None else {}
                for key in ("conns_total", "conns_active", "connect_failures",
                            "bytes_to_backend", "bytes_to_client"):
                    setattr(view, key, int(counters.get(key, 0)))
                views.append(view)
        return views

    # ---- control API commands (docs/control-api.md) ----

    def commands(self) -> dict[str, Callable[..., Any]]:
        """The control socket's commands."""
        return {"status": self.cmd_status, "backends": self.cmd_backends,
                "sessions": self.cmd_sessions, "flows": self.cmd_flows,
                "enable": self.cmd_enable,
                "disable": self.cmd_disable, "drain": self.cmd_drain, "weight": self.cmd_weight,
                "reload": self.cmd_reload, "vrrp": self.cmd_vrrp,
                "add-backend": self.cmd_add_backend, "remove-backend": self.cmd_remove_backend}

    def _apply_overlay(self, overlay: Overlay) -> None:
        """Run file + `overlay`: carry runtime state over, re-check health, publish."""
        assert self.file_config is not None
        old = (self.config, self.runtime, self.overlay)
        self.overlay = overlay
        self.config = overlay.apply(self.file_config)
        self.runtime = Runtime.from_config(self.config, previous=old[1])
        self._sync_health()
        try:
            self._publish()
        except Exception:
            self.config, self.runtime, self.overlay = old
            self._sync_health()
            raise

    def cmd_add_backend(self, service: str, address: str, weight: int = 1, name: str = "",
                        backup: bool = False, max_connections: int = 0) -> dict[str, Any]:
        overlay = self.overlay.copy()
        try:
            backend = overlay.add(self.config, service, address, weight=weight, name=name,
                                  backup=backup, max_connections=max_connections)
        except OverlayError as exc:
            raise ControlError(str(exc)) from None
        self._apply_overlay(overlay)
        log.info("backend %s/%s: added at run time (weight %d%s)", service, address,
                 backend.weight, ", backup" if backend.backup else "")
        return {"service": service, "backend": address, "generation": self.generation,
                "differences": overlay.differences(service)}

    def cmd_remove_backend(self, service: str, backend: str) -> dict[str, Any]:
        overlay = self.overlay.copy()
        try:
            address = overlay.remove(self.config, service, backend)
        except OverlayError as exc:
            raise ControlError(str(exc)) from None
        self._apply_overlay(overlay)
        log.info("backend %s/%s: removed at run time (open sessions continue)", service,
                 address)
        return {"service": service, "backend": address, "generation": self.generation,
                "differences": overlay.differences(service)}

    def cmd_reload(self) -> dict[str, Any]:
        return self.reload()

    def reload(self) -> dict[str, Any]:
        """Re-read the configuration file and apply the difference (SIGHUP, `l4lb reload`).

        Nothing changes unless the whole new file is valid and every new listener binds: on any
        error the running configuration stays and ControlError carries every problem.
        Unchanged listeners stay bound, open sessions are untouched, and runtime state
        (admin state, weights) of backends that stay is kept.
        """
        try:
            new = load_file(self.config.path)
        except ConfigError as exc:
            log.error("reload: %s rejected, running configuration unchanged:\n%s",
                      self.config.path, exc)
            raise ControlError(
                f"reload rejected, running configuration unchanged:\n{exc}") from None
        except OSError as exc:
            log.error("reload: cannot read %s: %s", self.config.path, exc.strerror or exc)
            raise ControlError(f"reload rejected: cannot read {self.config.path}: "
                               f"{exc.strerror or exc}") from None
        overlay, notes = self.overlay.reconciled(new)
        file_config = new
        new = overlay.apply(new)
        diff = plan(self.config, new)
        for key in diff.restart_needed:
            log.warning("reload: [global] %s changed: takes effect only after a restart; "
                        "keeping %r", key, getattr(self.config.global_, key))
        keep = {k: getattr(self.config.global_, k) for k in RESTART_ONLY}
        new = dataclasses.replace(new, global_=dataclasses.replace(new.global_, **keep))
        restart_needed = list(diff.restart_needed)
        if new.vrrp != self.config.vrrp:
            log.warning("reload: [[vrrp]] changed: takes effect only after a restart; "
                        "keeping the running instances")
            new = dataclasses.replace(new, vrrp=self.config.vrrp)
            restart_needed.append("vrrp")
        fresh: list[ListenerGroup] = []
        try:
            for service, (protocol, endpoint) in diff.bind:
                fresh.append(open_listeners(service, endpoint, self.workers,
                                            self.config.global_.listen_backlog, protocol))
        except ListenError as exc:
            for group in fresh:
                group.close()
            log.error("reload: rejected, running configuration unchanged: %s", exc.strerror)
            raise ControlError(f"reload rejected, running configuration unchanged: "
                               f"{exc.strerror}") from None
        old = (self.config, self.runtime, self.file_config, self.overlay)
        self.config, self.file_config, self.overlay = new, file_config, overlay
        self.runtime = Runtime.from_config(new, previous=old[1])
        self._sync_health()
        try:
            self._publish()
        except Exception:
            self.config, self.runtime, self.file_config, self.overlay = old
            self._sync_health()
            for group in fresh:
                group.close()
            raise
        ids = self.builder.service_ids()
        for group in fresh:
            for worker, sock in enumerate(group.sockets):
                self.dp.add_listener(ids[group.service], sock.fileno(), worker)
            self.listeners.append(group)
            log.info("service %s: listening on %s", group.service, group.endpoint)
        moved = {listen: service for service, listen in diff.move}
        released = set(diff.release)
        kept: list[ListenerGroup] = []
        for group in self.listeners:
            listen = (group.protocol, group.endpoint)
            if listen in released:
                for sock in group.sockets:
                    self.dp.remove_listener(sock.fileno())
                group.close()
                log.info("service %s: stopped listening on %s", group.service, group.endpoint)
                continue
            if listen in moved:
                for worker, sock in enumerate(group.sockets):
                    self.dp.remove_listener(sock.fileno())
                    self.dp.add_listener(ids[moved[listen]], sock.fileno(), worker)
                log.info("service %s: now serves %s (was %s)", moved[listen], group.endpoint,
                         group.service)
                group.service = moved[listen]
            kept.append(group)
        self.listeners = kept
        for note in notes:
            log.info("reload: %s", note)
        if new.global_.log_level != old[0].global_.log_level:
            logging.getLogger().setLevel(LEVELS[new.global_.log_level])
        summary = diff.summary()
        log.info("reload: %s applied: %s", self.config.path, summary)
        return {"generation": self.generation, "digest": self.digest, "changes": summary,
                "restart_needed": restart_needed}

    def cmd_status(self) -> dict[str, Any]:
        services = []
        stats = self.dp.stats() if self.dp is not None else {"services": {}}
        sids = self.builder.service_ids()
        for service in self.config.services:
            counters = stats["services"].get(sids.get(service.name), {})
            services.append({
                "name": service.name, "protocol": service.protocol,
                "scheduler": service.scheduler,
                "listen": [e.text or str(e) for e in service.listen],
                "counters": {k: int(v) for k, v in counters.items()},
                "differences_from_file": self.overlay.differences(service.name),
                "backends": [asdict(v) for v in self.backend_views(service.name)],
            })
        return {"version": __version__, "pid": os.getpid(), "config": self.config.path,
                "started": self.started, "workers": self.workers,
                "table": {"generation": self.generation, "digest": self.digest},
                "services": services,
                "vrrp": [instance.status() for instance in self.vrrp]}

    def _service_known(self, service: str) -> None:
        if service not in {s.name for s in self.config.services}:
            names = ", ".join(s.name for s in self.config.services)
            raise ControlError(f"no service named {service!r} (services: {names})")

    def cmd_backends(self, service: str) -> list[dict[str, Any]]:
        self._service_known(service)
        return [asdict(v) for v in self.backend_views(service)]

    def cmd_sessions(self, service: str = "", backend: str = "") -> list[dict[str, Any]]:
        if self.dp is None:
            return []
        sids = {v: k for k, v in self.builder.service_ids().items()}
        bids = {v: k for k, v in self.builder.backend_ids().items()}
        want_bid: int | None = None
        if backend:
            if not service:
                raise ControlError("sessions: --backend needs the service too")
            rt = self._find(service, backend)
            want_bid = self.builder.backend_ids()[(service, rt.address)]
        out = []
        for sess in self.dp.sessions():
            svc_name = sids.get(sess["service_id"], "?")
            if service and svc_name != service:
                continue
            if want_bid is not None and sess["backend_id"] != want_bid:
                continue
            key = bids.get(sess["backend_id"])
            client = sess["client"]
            out.append({**sess, "service": svc_name, "backend": key[1] if key else None,
                        "client": f"[{client[0]}]:{client[1]}" if ":" in client[0]
                        else f"{client[0]}:{client[1]}"})
        return out

    def cmd_flows(self, service: str = "") -> list[dict[str, Any]]:
        """UDP flows (of one service, or all)."""
        if self.dp is None:
            return []
        sids = {v: k for k, v in self.builder.service_ids().items()}
        bids = {v: k for k, v in self.builder.backend_ids().items()}
        out = []
        for flow in self.dp.flows():
            svc_name = sids.get(flow["service_id"], "?")
            if service and svc_name != service:
                continue
            key = bids.get(flow["backend_id"])
            host, port = flow["client"]
            out.append({**flow, "service": svc_name, "backend": key[1] if key else None,
                        "client": f"[{host}]:{port}" if ":" in host else f"{host}:{port}"})
        return out

    def _find(self, service: str, backend: str) -> Any:
        try:
            return self.runtime.find(service, backend)
        except StateError as exc:
            raise ControlError(str(exc)) from None

    def _change(self, what: str, service: str, backend: str,
                fn: Callable[[], Any]) -> dict[str, Any]:
        self._find(service, backend)
        try:
            rt = fn()
        except StateError as exc:
            raise ControlError(str(exc)) from None
        self._publish()
        log.info("backend %s/%s: %s (state %s, weight %d)", service, rt.address, what, rt.state,
                 rt.weight)
        return {"service": service, "backend": rt.address, "state": rt.state,
                "weight": rt.weight, "generation": self.generation}

    def cmd_enable(self, service: str, backend: str) -> dict[str, Any]:
        return self._change("enabled", service, backend,
                            lambda: self.runtime.set_admin(service, backend, "up"))

    def cmd_disable(self, service: str, backend: str) -> dict[str, Any]:
        return self._change("disabled (maintenance)", service, backend,
                            lambda: self.runtime.set_admin(service, backend, "maint"))

    def cmd_drain(self, service: str, backend: str) -> dict[str, Any]:
        return self._change("draining", service, backend,
                            lambda: self.runtime.set_admin(service, backend, "drain"))

    def cmd_weight(self, service: str, backend: str, weight: int) -> dict[str, Any]:
        return self._change(f"weight set to {weight}", service, backend,
                            lambda: self.runtime.set_weight(service, backend, weight))

    def stop(self, timeout: float) -> None:
        """Stop accepting, drain for up to `timeout` seconds, close everything. Idempotent."""
        if self.checker is not None:
            self.checker.stop()
            self.checker = None
        for handle in (self.publish_handle, self.ramp_handle):
            if handle is not None:
                handle.cancel()
        self.publish_handle = self.ramp_handle = None
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
                tick_interval: float = 1.0, duration: float | None = None,
                control_path: str | None = None) -> int:
    """Run until a signal (or `duration` seconds); return the exit code.

    `tick` is called every `tick_interval` seconds on the event loop (the demo's live line).
    The control socket is served at `control_path` (None: no control socket); it is bound
    before the loop starts, and a failure raises ControlError or OSError.
    """
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    drain_timeout = [daemon.config.global_.shutdown_timeout]
    signals_seen: list[int] = []

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            log.info("daemon: SIGHUP received: reloading %s", daemon.config.path)
            with contextlib.suppress(ControlError):  # already logged with every error
                daemon.reload()
            return
        signals_seen.append(signum)
        if len(signals_seen) > 1 or signum == signal.SIGINT:
            drain_timeout[0] = 0.0
            log.info("daemon: %s received: stopping now", name)
        else:
            log.info("daemon: %s received: draining for up to %.1fs", name, drain_timeout[0])
        done.set()

    control: ControlServer | None = None
    if control_path:
        control = ControlServer(control_path, daemon.commands())
        await control.start()
    http: HttpServer | None = None
    if daemon.config.metrics_listen is not None:
        try:
            http = await start_http(str(daemon.config.metrics_listen), daemon.cmd_status,
                                    health=daemon.health_stats)
        except BaseException:
            if control is not None:
                await control.close()
            raise
        log.info("metrics: serving /metrics and the status page on http://%s/",
                 daemon.config.metrics_listen)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal, signum)
    daemon.start_health()
    try:
        await daemon.start_vrrp()  # VrrpError propagates after the cleanup below
        deadline = None if duration is None else loop.time() + duration
        while not done.is_set():
            wait = min(tick_interval, 1.0)  # passive health failures are read every second
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=wait)
            if not done.is_set():
                daemon.feed_passive_failures()
            if tick is not None and not done.is_set():
                tick(daemon)
            if deadline is not None and loop.time() >= deadline:
                drain_timeout[0] = 0.0
                break
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        # Hand the VIPs over first (priority 0: the peer takes over after its skew time), then
        # drain: sessions through this node may finish while new ones already go to the peer.
        await daemon.stop_vrrp()
        if http is not None:
            await http.close()
        if control is not None:
            await control.close()
    # The drain blocks (the data plane waits for sessions without the GIL): run it off the loop.
    await loop.run_in_executor(None, daemon.stop, drain_timeout[0])
    log.info("daemon: stopped")
    return EXIT_OK
