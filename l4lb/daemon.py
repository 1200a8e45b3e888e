"""Run the balancer: wire config, table builder, listeners and data plane; handle signals.

Start-up order matters: the data plane starts and gets its first table BEFORE any listener is
handed to it, so no accepted connection ever meets an empty table. A listener that cannot bind
stops the start-up with one line naming the address and the OS error.

Signals: SIGTERM drains gracefully (the listeners close first, so new clients are refused; then
sessions finish for up to `[global] shutdown_timeout`, the rest are closed, exit 0); SIGINT stops
at once (sessions closed, exit 0); a second SIGTERM/SIGINT during the drain closes what is left
at once (Daemon.stop_now; the closes are logged, exit 0). The control socket answers through the
drain (status says "draining"; changes are refused). SIGHUP reloads the configuration file (see
Daemon.reload, all or nothing); SIGUSR1 reopens the connection log (after logrotate renamed it).

Drain deadlines (`l4lb drain --timeout`) live here, not in the CLI: the daemon arms one asyncio
timer per backend; at the deadline it asks the data plane to close what is left of that backend
(`close_backend_sessions`; deadlines due within DRAIN_COALESCE of each other go in one call).
Every second it also ends deadlines whose backend has emptied by itself, and every table
publish cancels those whose backend left the drain state or the configuration (enable,
disable, reload, remove-backend). l4lb.state.Drains keeps the records.

The connection log: with `[global] connection_log`, the data plane keeps a bounded ring of
closed-session records per worker; a timer on the loop takes them every 250 ms (4096 at a
time; after a full read the next one runs as soon as the callbacks already queued have run, so
a flood of closes never holds the loop for long), names the service and backend of each from
the id maps of the last few tables (a record may name a backend the last reload removed) and
hands them to l4lb.connlog.ConnLogWriter, whose thread writes the file. After the data plane
stopped, the rings are read once more, so the closes of the shutdown are logged too. Lost
records (ring full, writer queue full, write errors) are counted for the metrics and logged at
most once a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import resource
import signal
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from l4lb import __version__, proxyproto
from l4lb.config import ConfigError, load_file
from l4lb.config.durations import format_duration_ms, parse_duration_ms
from l4lb.config.locate import Locator
from l4lb.config.model import AgentSettings, Backend, Config, Service, hostport
from l4lb.config.validate import U32_MAX, validate
from l4lb.connlog import ConnLogWriter, RecordError
from l4lb.control import ControlError, ControlServer, install_loop_exception_handler
from l4lb.control import cap_for as control_cap_for
from l4lb.dataplane import load_dataplane_class
from l4lb.health.agent import AgentPoller
from l4lb.health.agentreply import AgentReply
from l4lb.health.checker import HealthChecker
from l4lb.health.dampener import Health, Transition, transition_log_line
from l4lb.health.dynamic import (
    NEUTRAL,
    Dynamic,
    agent_words,
    combined_admin,
    combined_health,
)
from l4lb.health.probe import ProbeSpec
from l4lb.health.settings import HealthSettings
from l4lb.httpserver import HttpServer, caps_for
from l4lb.httpserver import start as start_http
from l4lb.logs import LEVELS, dropped_lines, set_log_format
from l4lb.looplag import INTERVAL as LAG_INTERVAL
from l4lb.looplag import LoopLag
from l4lb.net.listen import (
    ListenerGroup,
    ListenError,
    open_listeners,
    resolve_workers,
    set_socket_buffer,
)
from l4lb.overlay import Overlay, OverlayError
from l4lb.reload import RESTART_ONLY, Listen, plan
from l4lb.state import (
    DrainDeadline,
    DrainEnd,
    Drains,
    Runtime,
    StateError,
    address_text,
)
from l4lb.table.blob import digest
from l4lb.table.builder import TableBuilder
from l4lb.vrrp.digestcheck import DigestCheck
from l4lb.vrrp.group import SyncGroupRuntime
from l4lb.vrrp.instance import VrrpError, VrrpInstance
from l4lb.vrrp.reloadplan import VrrpPlan, same_router
from l4lb.vrrp.reloadplan import plan as vrrp_plan
from l4lb.vrrp.settings import VrrpSettings
from l4lb.weights import Key, Weights, compute

log = logging.getLogger("l4lb")

# Exit codes of `l4lb run` (documented in docs/cli.md).
EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2  # click's own code for a usage error
EXIT_LISTEN = 3
EXIT_DATAPLANE = 4

CONNLOG_RING = 16384  # closed-session records each data-plane worker holds before dropping
CONNLOG_INTERVAL = 0.25  # seconds between two reads of the data plane's record rings
CONNLOG_BATCH = 4096  # records per read on the loop (about 45 ms of CPU; the loop stays free)
CONNLOG_FINAL = 1 << 22  # records the last read after the data plane stopped takes at most
CONNLOG_WARN_EVERY = 60.0  # seconds between two warnings about lost records
REOPEN_WAIT = 2.0  # seconds `reopen-logs` waits for the connection log writer to reopen
MAX_DRAIN_TIMEOUT_MS = 24 * 3_600_000  # like every duration of the configuration
DRAIN_COALESCE = 0.1  # seconds: drain deadlines this close to one that fires close with it

SYSTEM_CC = "/proc/sys/net/ipv4/tcp_congestion_control"  # the system default algorithm
T = TypeVar("T")
DEFER_ACCEPT_S = 1  # defer_accept: TCP_DEFER_ACCEPT seconds (a silent client waits about this)


def system_congestion_control() -> str:
    """The name of the system default TCP congestion control ("reno" if unreadable)."""
    try:
        with open(SYSTEM_CC, "rb") as f:
            return f.read().decode("utf-8", "replace").strip() or "reno"
    except OSError:
        return "reno"


IdMaps = tuple[dict[int, str], dict[int, tuple[str, str]]]  # service id -> name, backend id -> key


def _call_soon_threadsafe(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """loop.call_soon_threadsafe(callback), nothing once the loop is closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


def closes_off_loop(dp_class: Any) -> bool:
    """Whether on_down closes may leave the loop with this data plane: only one whose
    close_backend_sessions releases the GIL while its workers close says so
    (CLOSES_WITHOUT_GIL, the C plane); the reference plane holds the GIL throughout."""
    return getattr(dp_class, "CLOSES_WITHOUT_GIL", False) is True


def _hostport(addr: Any) -> str:
    """(host, port) as "host:port", "[v6]:port" for IPv6 (sessions, the connection log)."""
    return hostport(addr[0], addr[1])


def _reason(exc: BaseException) -> str:
    """One line for a failed step: the OS error text, or the message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def backend_name_problem(name: str) -> str | None:
    """Why the configuration file would refuse `name` as a backend name, or None.

    The runtime API takes the names the file takes: the file's own validator judges a one-backend
    document, so the rules live in one place (l4lb.config.validate)."""
    doc = {"services": [{"name": "s", "listen": ["127.0.0.1:1"],
                         "backends": [{"address": "127.0.0.1:2", "name": name}]}]}
    result = validate(doc, Locator(""), "<add-backend>", None)
    if isinstance(result, Config):
        return None
    label = "backends[0].name: "
    for diagnostic in result:
        if diagnostic.path[-1:] == ("name",):
            return diagnostic.message.split(label, 1)[-1]
    return "; ".join(d.message for d in result)


class ConnLogError(Exception):
    """The connection log file cannot be opened (start-up fails, a reload is refused)."""


BACKEND_COUNTERS = ("conns_total", "conns_active", "connect_failures", "bytes_to_backend",
                    "bytes_to_client", "flows_active", "flows_total", "datagrams_to_backend",
                    "datagrams_to_client")  # data-plane counters a BackendView copies
# every service's `counters` in `status` has these keys, 0 before any traffic (control-api.md);
# UDP services also the second tuple's
SERVICE_COUNTERS = ("conns_total", "conns_active", "rejected", "no_backend", "bytes_to_backend",
                    "bytes_to_client", "accept_errors", "proxy_header_errors",
                    "proxy_header_timeouts", "proxy_direct", "queued_now", "queued_total",
                    "queue_timeouts", "queue_wait_ms")
UDP_SERVICE_COUNTERS = ("datagrams_in", "datagrams_out", "flows_created", "flows_expired",
                        "flows_active", "drops_max_flows", "drops_no_backend", "drops_truncated",
                        "drops_send", "drops_max_udp_flows")


@dataclass
class BackendView:
    """One backend with its state and counters, for display (demo line, control API)."""

    service: str  # service name
    address: str  # as written in the file
    name: str  # backend name (defaults to the address)
    state: str = "up"  # up | down | drain | maint
    weight: int = 0  # current weight (file or runtime)
    effective_weight: int = 0  # weight the live table gives it: 0 when it takes no new
    #                            sessions (down, drain, maint, an idle backup), except that in
    #                            panic every enabled backend keeps its weight, DOWN ones too
    backup: bool = False
    conns_total: int = 0
    conns_active: int = 0
    connect_failures: int = 0
    bytes_to_backend: int = 0
    bytes_to_client: int = 0
    flows_active: int = 0  # UDP flows open now (0 for TCP)
    flows_total: int = 0  # UDP flows since start (0 for TCP)
    datagrams_to_backend: int = 0  # UDP datagrams relayed to the backend (0 for TCP)
    datagrams_to_client: int = 0  # UDP datagrams relayed back to clients (0 for TCP)
    drain_deadline: float | None = None  # unix time `drain --timeout` closes the rest, if armed
    probe_latency: float | None = None  # seconds of the last conclusive health probe, if any
    sessions_shut_down: int = 0  # sessions closed because it went DOWN (health.on_down)
    source: str | None = None  # source address of its connections (Backend.source), if set
    protocol: str = "tcp"  # its service's protocol (`l4lb backends` picks its layout by it)
    check: dict[str, Any] | None = None  # health check detail (Dampener.view), None
    #                                      when its service has no [services.health]
    admin: str = "up"  # the operator's admin state alone (`state` has the agent's applied)
    agent: dict[str, Any] | None = None  # agent detail (AgentPoller.views), None without
    #                                      [services.agent]
    dynamic_weight: int | None = None  # weight a misc_dynamic exit status set, if any
    max_connections: int = 0  # connection limit the live table gives it (0: none): the
    #                           operator's (file or `l4lb maxconn`) or its agent's, the stricter

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict, in field order: dataclasses.asdict() without its recursion
        and deep copies (every field is a plain value, or `check`, a dict built for this
        view alone), about 20 times cheaper, which counts
        with 10,000 backends in one `status` on the event loop."""
        return dict(vars(self))


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
    agents: AgentPoller[Key] | None = None  # agent checks ([services.agent], on the loop)
    publish_handle: asyncio.Handle | None = None  # a coalesced re-publish is queued
    ramp_handle: asyncio.TimerHandle | None = None  # re-publish at the next slow-start step
    panic_logged: dict[str, str] = field(default_factory=dict)  # service -> reason warned
    # round_robin services told that their agent's percentages change nothing (once each)
    round_robin_warned: set[str] = field(default_factory=set)
    failures_seen: dict[int, int] = field(default_factory=dict)  # backend id -> connect fails
    # health.on_down = "shutdown_sessions": backends gone DOWN whose sessions are still to close
    # once a published table gives them weight 0 -> the panic that delays it was logged
    on_down_pending: dict[Key, bool] = field(default_factory=dict)
    sessions_shut_down: dict[Key, int] = field(default_factory=dict)  # closed by on_down so far
    close_off_loop: bool = False  # on_down and drain closes run in close_pool (the C plane)
    close_pool: ThreadPoolExecutor | None = None  # its one thread, made on first use
    # the close in flight off the loop (on_down or drain deadline): its result, and what
    # counts and logs it on the loop (finish_close)
    closing: tuple[Future[dict[int, int]], Callable[[Future[dict[int, int]]], None]] | None = None
    drain_closing: set[Key] = field(default_factory=set)  # drained backends being closed
    vrrp: list[VrrpInstance] = field(default_factory=list)  # running [[vrrp]] instances
    sync_groups: list[SyncGroupRuntime] = field(default_factory=list)  # [[vrrp_sync_group]]
    vrrp_apply: asyncio.Task[list[str]] | None = None  # a reload's VRRP changes, in progress
    #                                                    or done (its errors)
    digest_check: DigestCheck | None = None  # compares table digests with the VRRP peers
    drains: Drains = field(default_factory=Drains)  # `drain --timeout` deadlines and their ends
    drain_timers: dict[int, asyncio.TimerHandle] = field(default_factory=dict)  # by drain id
    connlog: ConnLogWriter | None = None  # the connection log writer while it is on
    connlog_path: str | None = None  # its file
    connlog_ids: deque[IdMaps] = field(  # id maps of recent tables, newest last
        default_factory=lambda: deque(maxlen=16))
    # names of ids that left the table and are not released yet (release_retired_ids)
    retired_services: dict[int, str] = field(default_factory=dict)
    retired_backends: dict[int, tuple[str, str]] = field(default_factory=dict)
    connlog_timer: asyncio.TimerHandle | None = None  # the next read of the record rings
    connlog_lock: threading.Lock = field(default_factory=threading.Lock)  # pump vs. stop()
    connlog_invalid: int = 0  # records the writer refused as malformed
    log_level_pinned: bool = False  # `l4lb --log-level` was given: reloads keep that level
    log_format_pinned: bool = False  # `l4lb --log-format` was given: reloads keep that format
    cwd: str = field(default_factory=os.getcwd)  # where a relative config path is read from
    loop_lag: LoopLag = field(default_factory=LoopLag)  # how late serve()'s loop runs (stalls)
    connlog_lost_logged: dict[str, int] = field(default_factory=dict)  # counts at last warning
    connlog_warned_at: float = -CONNLOG_WARN_EVERY  # monotonic time of the last warning
    connlog_checked_at: float = 0.0  # monotonic time lost records were last looked at
    cc_backend: dict[int, str] = field(default_factory=dict)  # service id -> backend-leg
    #                                   congestion control the data plane was given
    cc_listeners: weakref.WeakKeyDictionary[socket.socket, str | None] = field(
        default_factory=weakref.WeakKeyDictionary)  # TCP listener -> the client-leg algorithm
    #                                   it was given (None: reset to the system default)
    cc_problems: list[str] = field(default_factory=list)  # what the last sync could not apply
    deferred_listeners: weakref.WeakKeyDictionary[socket.socket, bool] = field(
        default_factory=weakref.WeakKeyDictionary)  # TCP listener -> TCP_DEFER_ACCEPT given
    fast_open: set[int] = field(default_factory=set)  # service ids the data plane was told to
    #                                   open backend connections with TCP Fast Open
    proxy: dict[int, int] = field(default_factory=dict)  # service id -> the PROXY protocol
    #                       version the data plane was told to send its backends (1 or 2)
    accept_proxy: dict[int, int] = field(default_factory=dict)  # service id -> how long (ms)
    #                       the data plane was told to wait for each client's PROXY header
    udp_gro_off: set[int] = field(default_factory=set)  # UDP service ids the data plane was
    #                                   told to read without GRO buffers (udp_gro = false)
    udp_gro_kept: set[str] = field(default_factory=set)  # services switched off by a reload
    #                                   whose open listeners keep GRO buffers (never turned off)
    sockbuf_backend: dict[int, tuple[int, int]] = field(default_factory=dict)  # service id ->
    #                                   backend-leg (SO_SNDBUF, SO_RCVBUF) the data plane was given
    sockbuf_wanted: weakref.WeakKeyDictionary[socket.socket, tuple[int, int]] = field(
        default_factory=weakref.WeakKeyDictionary)  # TCP listener -> the client-leg sizes its
    #                                   service asked for when it was last synced
    sockbuf_held: weakref.WeakKeyDictionary[socket.socket, tuple[int, int]] = field(
        default_factory=weakref.WeakKeyDictionary)  # TCP listener -> the sizes set on it (a
    #                                   size once set stays: a socket cannot go back to autotuning)
    stop_deadline: float | None = None  # unix time the drain of a stop ends; None: running
    fd_limit: int = 0  # the soft RLIMIT_NOFILE at start(), and the data plane's ceiling
    fd_ceiling: int = 0  # below it (fd_ceiling(); 0: none)
    udp_flow_limit: int = 0  # the cap on UDP flows (all services) the data plane was given;
    #                          0: none given yet ([global] max_udp_flows, udp_flow_cap())

    def start(self) -> None:
        """Create the data plane, publish the first table, bind and hand over the listeners.

        Raises DataplaneUnavailable or ListenError; on error everything started is undone.
        """
        dp_class = load_dataplane_class()
        self.generation, self.digest = 0, ""  # a new data plane has no table: publish one
        self.udp_flow_limit = 0  # nor a flow cap
        self.file_config = self.config
        self.runtime = Runtime.from_config(self.config)
        self.workers = resolve_workers(self.config.global_.workers)
        self.dp = dp_class(self.workers)
        self.close_off_loop = closes_off_loop(dp_class)
        self._set_fd_ceiling()
        bound: list[ListenerGroup] = []  # not self.listeners until the first table is out:
        try:                              # _publish() reads those as handed to the data plane
            # bind first: an address in use stops the start before a table is published or
            # the connection log is opened (and logged as such). listen() comes once the
            # listeners have their socket options (congestion control, defer_accept, buffers),
            # which a connection inherits at its handshake
            for service in self.config.services:
                for endpoint in service.listen:
                    bound.append(open_listeners(service.name, endpoint, self.workers,
                                                self.config.global_.listen_backlog,
                                                service.protocol, listen=False))
            self.dp.start()
            self._publish()
            self._sync_udp_flow_cap()  # a [global] key: at start and at each reload only
            path = self.config.global_.connection_log
            if path is not None:
                self._enable_connlog(self._open_connlog(path), path)
            if self.cc_problems:
                raise ListenError(errno.EINVAL, self.cc_problems[0])
            self.listeners, bound = bound, []
            if self._sync_listener_congestion(self.listeners):
                raise ListenError(errno.EINVAL, self.cc_problems[0])
            problems = (self._sync_listener_defer_accept(self.listeners)
                        + self._sync_listener_buffers(self.listeners))
            if problems:
                raise ListenError(errno.EINVAL, problems[0])
            for group in self.listeners:
                group.listen(self.config.global_.listen_backlog)
            ids = self.builder.service_ids()
            for group in self.listeners:
                for worker, sock in enumerate(group.sockets):
                    self.dp.add_listener(ids[group.service], sock.fileno(), worker)
                log.info("service %s: listening on %s (%d workers)", group.service,
                         group.endpoint, self.workers)
        except BaseException:
            for group in bound:  # bound, never handed over
                group.close()
            self.stop(0.0)
            raise

    def _publish(self) -> None:
        self.finish_close()  # no table goes out while an on_down close is in flight
        dynamic = self.dynamic()
        weights = compute(self.config, self.runtime, time.monotonic(), self._ramp_start,
                          self._unproven, dynamic)
        # DOWN or in maintenance (by the operator or the agent): UDP flows move on their next
        # datagram (drained ones stay). A DOWN backend that a panic keeps in rotation (weight
        # > 0) is not marked: the builder gives every marked backend weight 0.
        down = set()
        for key, rt in self.runtime.backends.items():
            dyn = dynamic.get(key, NEUTRAL)
            if combined_admin(rt.admin, dyn) == "maint" or (
                    combined_health(rt.health, dyn) == "down"
                    and weights.weights.get(key, 0) == 0):
                down.add(key)
        blob = self.builder.build(self.config, weights.weights, down, weights.max_connections)
        fresh = digest(blob)
        self._sync_accept_proxy(offs_only=True)  # before the table that drops their list
        if self.generation == 0 or fresh != self.digest:  # the same table again: keep the live
            self.generation = self.dp.publish(blob)        # one (a no-op `weight`, say)
            self.digest = fresh
            if self.digest_check is not None:
                self.digest_check.published()
            log.info("table: generation %d published (digest %s, %d services)",
                     self.generation, self.digest, len(self.config.services))
        self._sync_backend_congestion()
        self._sync_backend_fast_open()
        self._sync_proxy_protocol()
        self._sync_accept_proxy()
        self._sync_udp_gro()
        self._sync_backend_buffers()
        self.weights = weights
        for service, reason in weights.panic.items():
            if self.panic_logged.get(service) != reason:
                log.warning("service %s: panic: %s (below min_healthy): health checks are "
                            "ignored, DOWN backends stay in rotation", service, reason)
        for service in set(self.panic_logged) - set(weights.panic):
            log.warning("service %s: panic over: health checks decide again", service)
        self.panic_logged = dict(weights.panic)
        self._schedule_ramp(weights.next_change)
        healthy = {service: up > 0 for service, up in weights.up.items()}
        for instance in self.vrrp:
            instance.set_tracking(services=healthy)
        self._remember_ids()
        for done in self.drains.prune(self.runtime, time.time()):
            self._drain_ended(done)
        if self.on_down_pending:
            self._shut_down_sessions(weights)
        for gone in [key for key in self.sessions_shut_down if key not in self.runtime.backends]:
            del self.sessions_shut_down[gone]  # a backend added again later starts from 0

    def dynamic(self) -> dict[Key, Dynamic]:
        """What agents and misc_dynamic commands said, per backend (l4lb.health.dynamic), for
        the services that have them in the running configuration (a reload in progress keeps
        the pollers' state of the others until it is committed, for a rollback)."""
        agent_services = {s.name for s in self.config.services if s.agent is not None}
        dynamic_services = {s.name for s in self.config.services
                            if s.health is not None and s.health.dynamic}
        out: dict[Key, Dynamic] = {}
        if self.agents is not None and agent_services:
            out = {key: state for key, state in self.agents.states().items()
                   if key[0] in agent_services}
        if self.checker is not None and dynamic_services:
            for key, weight in self.checker.dynamic_weights().items():
                if key[0] in dynamic_services:
                    out[key] = dataclasses.replace(out.get(key, NEUTRAL), exec_weight=weight)
        return out

    def effective_state(self, key: Key, dynamic: Dynamic | None = None) -> str:
        """The one word an operator sees (maint, drain, down or up, in that precedence) with
        the agent's flags applied (l4lb.health.dynamic)."""
        rt = self.runtime.backends[key]
        if dynamic is None:
            dynamic = self.dynamic().get(key, NEUTRAL)
        admin = combined_admin(rt.admin, dynamic)
        return admin if admin != "up" else combined_health(rt.health, dynamic)

    def _unproven(self, key: Key) -> bool:
        """True while a checked backend is DOWN by initial_state "down" with no verdict yet."""
        if self.checker is not None:
            try:
                return not self.checker.proven(key)
            except KeyError:
                pass
        # not checked yet (the first table, before start_health): DOWN by initial_state "down"
        rt = self.runtime.backends.get(key)
        hs = next((s.health for s in self.config.services if s.name == key[0]), None)
        return (rt is not None and rt.health == "down" and hs is not None
                and hs.initial_state == "down")

    def _ramp_start(self, key: Key) -> float | None:
        """When the backend last came UP (start of its slow-start ramp): the later of its
        health check's last DOWN -> UP and its agent's last `up` after a `down` (HAProxy's
        agent `up` starts the warm-up too)."""
        starts: list[float] = []
        for source in (self.checker, self.agents):
            if source is None:
                continue
            try:
                at = source.up_since(key)
            except KeyError:
                continue
            if at is not None:
                starts.append(at)
        return max(starts, default=None)

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

    # ---- TCP congestion control (docs/configuration.md, congestion_control) ----

    def _sync_backend_congestion(self) -> list[str]:
        """Give the data plane the backend-leg algorithm of every TCP service and clear it for
        ids that no longer have one (after each publish: a reload may move service ids).

        Returns (and keeps in cc_problems) what could not be applied, each logged; the load
        already checked every name against this host, so that is a race (a module unloaded).
        """
        self.cc_problems = []
        if self.dp is None:
            return self.cc_problems
        ids = self.builder.service_ids()
        want = {ids[s.name]: (s.name, s.backend_leg_congestion_control)
                for s in self.config.services
                if s.protocol == "tcp" and s.backend_leg_congestion_control and s.name in ids}
        if not want and not self.cc_backend:
            return self.cc_problems  # the default path: no call at all
        if not self._dp_supports("set_congestion_control"):
            self.cc_problems.append("this data plane cannot set a backend congestion control")
            log.error("%s", self.cc_problems[-1])
            return self.cc_problems
        names = {sid: name for name, sid in ids.items()}
        for sid in sorted(set(self.cc_backend) - set(want)):
            self.dp.set_congestion_control(sid, None)
            del self.cc_backend[sid]
            if sid in names:
                log.info("service %s: backend connections use the system default congestion "
                         "control", names[sid])
        for sid, (name, algo) in want.items():
            if self.cc_backend.get(sid) == algo:
                continue
            try:
                self.dp.set_congestion_control(sid, algo)
            except (OSError, ValueError) as exc:
                self.cc_problems.append(f"service {name}: backend congestion control {algo}: "
                                        f"{exc.strerror if isinstance(exc, OSError) else exc}")
                log.error("%s; its backend connections use the system default",
                          self.cc_problems[-1])
                self.dp.set_congestion_control(sid, None)
                self.cc_backend.pop(sid, None)
                continue
            self.cc_backend[sid] = str(algo)
            log.info("service %s: backend connections use congestion control %s", name, algo)
        return self.cc_problems

    # ---- TCP Fast Open towards the backends (docs/configuration.md, backend_fast_open) ----

    def _sync_backend_fast_open(self) -> None:
        """Turn fast open on in the data plane for every TCP service with backend_fast_open,
        and off for ids that no longer have it (after each publish: a reload may move service
        ids). A data plane without set_fast_open is a problem (in cc_problems, so start
        refuses) only when some service asks for it."""
        if self.dp is None:
            return
        ids = self.builder.service_ids()
        want = {ids[s.name]: s.name for s in self.config.services
                if s.protocol == "tcp" and s.backend_fast_open and s.name in ids}
        if not want and not self.fast_open:
            return  # the default path: no call at all
        if not self._dp_supports("set_fast_open"):
            self.cc_problems.append("this data plane cannot open backend connections with "
                                    "TCP Fast Open")
            log.error("%s", self.cc_problems[-1])
            return
        names = {sid: name for name, sid in ids.items()}
        for sid in sorted(self.fast_open - set(want)):
            self.dp.set_fast_open(sid, False)
            self.fast_open.discard(sid)
            if sid in names:
                log.info("service %s: backend connections without TCP Fast Open", names[sid])
        for sid, name in sorted(want.items()):
            if sid in self.fast_open:
                continue
            self.dp.set_fast_open(sid, True)
            self.fast_open.add(sid)
            log.info("service %s: backend connections use TCP Fast Open", name)

    # ---- PROXY protocol towards the backends (docs/configuration.md, proxy_protocol) ----

    def _sync_proxy_protocol(self) -> None:
        """Tell the data plane which PROXY protocol version each TCP service's backend
        connections start with, and none for ids that no longer have one (after each publish:
        a reload may move service ids). A data plane without set_proxy_protocol is a problem
        (in cc_problems, so start refuses) only when some service asks for it."""
        if self.dp is None:
            return
        ids = self.builder.service_ids()
        want = {ids[s.name]: (s.name, proxyproto.version_number(s.proxy_protocol))
                for s in self.config.services
                if s.protocol == "tcp" and s.proxy_protocol != "off" and s.name in ids}
        if not want and not self.proxy:
            return  # the default path: no call at all
        if not self._dp_supports("set_proxy_protocol"):
            self.cc_problems.append("this data plane cannot send a PROXY protocol header")
            log.error("%s", self.cc_problems[-1])
            return
        names = {sid: name for name, sid in ids.items()}
        for sid in sorted(set(self.proxy) - set(want)):
            self.dp.set_proxy_protocol(sid, 0)
            del self.proxy[sid]
            if sid in names:
                log.info("service %s: backend connections without a PROXY protocol header",
                         names[sid])
        for sid, (name, version) in sorted(want.items()):
            if self.proxy.get(sid) == version:
                continue
            self.dp.set_proxy_protocol(sid, version)
            self.proxy[sid] = version
            log.info("service %s: backend connections start with a PROXY protocol v%d header",
                     name, version)

    # ---- PROXY protocol from the clients (docs/configuration.md, accept_proxy) ----

    def _sync_accept_proxy(self, offs_only: bool = False) -> None:
        """Tell the data plane which TCP services expect a PROXY protocol header from each
        client and how long it may take, and none for ids that no longer expect one (with the
        ids of the table just built: a reload may move service ids; clients already accepted
        keep what they had). The switch-offs come first, with `offs_only` before the table
        is published, the rest after it: the switch is out of band and the accept_proxy_from
        list is in the table, so a reload that drops both switches off before the list goes
        (else, for an instant, every client of the service would owe a header), and one that
        adds both publishes the list before switching on. A data plane without
        set_accept_proxy is a problem (in cc_problems, so start refuses) only when some
        service asks for it."""
        if self.dp is None:
            return
        ids = self.builder.service_ids()
        want = {ids[s.name]: (s.name, max(1, round(s.accept_proxy_timeout * 1000)))
                for s in self.config.services
                if s.protocol == "tcp" and s.accept_proxy and s.name in ids}
        if not want and not self.accept_proxy:
            return  # the default path: no call at all
        if offs_only and not self._dp_supports("set_accept_proxy"):
            return  # the call after the publish reports it
        if not self._dp_supports("set_accept_proxy"):
            self.cc_problems.append("this data plane cannot receive a PROXY protocol header")
            log.error("%s", self.cc_problems[-1])
            return
        names = {sid: name for name, sid in ids.items()}
        for sid in sorted(set(self.accept_proxy) - set(want)):
            self.dp.set_accept_proxy(sid, 0)
            del self.accept_proxy[sid]
            if sid in names:
                log.info("service %s: clients no longer send a PROXY protocol header",
                         names[sid])
        if offs_only:
            return
        for sid, (name, timeout_ms) in sorted(want.items()):
            if self.accept_proxy.get(sid) == timeout_ms:
                continue
            self.dp.set_accept_proxy(sid, timeout_ms)
            self.accept_proxy[sid] = timeout_ms
            log.info("service %s: each client must start with a PROXY protocol header "
                     "(within %g s)", name, timeout_ms / 1000)

    # ---- GRO buffers on UDP sockets (docs/configuration.md, udp_gro) ----

    def _sync_udp_gro(self) -> None:
        """Switch GRO buffers off in the data plane for every UDP service with udp_gro = false,
        and back on for ids that no longer have it (after each publish: a reload may move
        service ids). On is the data plane's default, so the default path makes no call. A
        data plane without set_udp_gro is a problem (in cc_problems, so start refuses) only
        when some service asks for it."""
        if self.dp is None:
            return
        ids = self.builder.service_ids()
        want_off = {ids[s.name]: s.name for s in self.config.services
                    if s.protocol == "udp" and not s.udp_gro and s.name in ids}
        if not want_off and not self.udp_gro_off:
            return
        if not self._dp_supports("set_udp_gro"):
            self.cc_problems.append("this data plane cannot switch GRO buffers off")
            log.error("%s", self.cc_problems[-1])
            return
        names = {sid: name for name, sid in ids.items()}
        for sid in sorted(self.udp_gro_off - set(want_off)):
            self.dp.set_udp_gro(sid, True)
            self.udp_gro_off.discard(sid)
            if sid in names:
                self.udp_gro_kept.discard(names[sid])
                log.info("service %s: UDP sockets read with GRO buffers", names[sid])
        self.udp_gro_kept &= set(want_off.values())
        for sid, name in sorted(want_off.items()):
            if sid in self.udp_gro_off:
                continue
            had = self._dp_supports("udp_gro") and bool(self.dp.udp_gro(sid))
            self.dp.set_udp_gro(sid, False)
            self.udp_gro_off.add(sid)
            if had and any(g.service == name and g.protocol == "udp" for g in self.listeners):
                # turning UDP_GRO off would merge what a listener holds into one datagram
                self.udp_gro_kept.add(name)
                log.warning("service %s: new flows read without GRO buffers (udp_gro = "
                            "false); its open listeners keep them until the daemon restarts",
                            name)
            else:
                log.info("service %s: UDP sockets read without GRO buffers (udp_gro = false)",
                         name)

    def _set_fd_ceiling(self) -> None:
        """Keep the top of the descriptor limit for the control plane (fd_ceiling())."""
        self.fd_limit = int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.fd_ceiling = fd_ceiling(self.fd_limit)
        if not self.fd_ceiling or not self._dp_supports("set_fd_ceiling"):
            self.fd_ceiling = 0
            return
        self.dp.set_fd_ceiling(self.fd_ceiling)
        log.info("daemon: traffic uses file descriptors below %d; the %d above are kept for "
                 "the control socket, metrics, health probes and logs", self.fd_ceiling,
                 self.fd_limit - self.fd_ceiling)

    def fd_share(self) -> int | None:
        """The descriptors kept for the control plane, above the data plane's ceiling (None:
        no ceiling); the metrics listener cuts its caps to fit in them (httpserver.caps_for())."""
        return self.fd_limit - self.fd_ceiling if self.fd_ceiling else None

    def _sync_udp_flow_cap(self) -> None:
        """Give the data plane the cap on UDP flows of all services together ([global]
        max_udp_flows, by default half of the file descriptor limit read at start), when it
        differs from the one it has. A data plane without the call is a problem (in
        cc_problems, so start refuses) only when the file sets the key."""
        setting = self.config.global_.max_udp_flows
        if self.dp is None:
            return
        if not self._dp_supports("set_udp_flow_cap"):
            if setting is not None:
                self.cc_problems.append("this data plane cannot cap UDP flows (max_udp_flows)")
                log.error("%s", self.cc_problems[-1])
            return
        # the limit read at start(), as for the ceiling, so that the two stay consistent
        nofile = self.fd_limit or int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        cap = udp_flow_cap(setting, nofile)
        if cap == self.udp_flow_limit:
            return
        self.dp.set_udp_flow_cap(cap)
        self.udp_flow_limit = cap
        how = ("[global] max_udp_flows" if setting is not None
               else f"half of the {nofile} file descriptors allowed; [global] max_udp_flows")
        log.info("daemon: at most %d UDP flows at once, all services together (%s)", cap, how)

    # ---- socket buffers (docs/configuration.md, "Socket buffers") ----

    def _sync_backend_buffers(self) -> None:
        """Give the data plane the backend-leg SO_SNDBUF / SO_RCVBUF of every TCP service that
        sets them, and (0, 0) to ids that no longer have them (after each publish: a reload may
        move service ids). The default path makes no call. A data plane without
        set_socket_buffers, or sizes it refuses, are problems (in cc_problems, so start
        refuses; a reload logs them and that service's backend leg keeps autotuning)."""
        if self.dp is None:
            return
        ids = self.builder.service_ids()
        want = {ids[s.name]: (s.name, (s.backend_sndbuf, s.backend_rcvbuf))
                for s in self.config.services
                if s.protocol == "tcp" and (s.backend_sndbuf or s.backend_rcvbuf)
                and s.name in ids}
        if not want and not self.sockbuf_backend:
            return  # the default path: no call at all
        if not self._dp_supports("set_socket_buffers"):
            self.cc_problems.append("this data plane cannot set backend socket buffers")
            log.error("%s", self.cc_problems[-1])
            return
        names = {sid: name for name, sid in ids.items()}
        for sid in sorted(set(self.sockbuf_backend) - set(want)):
            self.dp.set_socket_buffers(sid, 0, 0)
            del self.sockbuf_backend[sid]
            if sid in names:
                log.info("service %s: backend connections use the kernel's socket buffers",
                         names[sid])
        for sid, (name, sizes) in sorted(want.items()):
            if self.sockbuf_backend.get(sid) == sizes:
                continue
            try:
                self.dp.set_socket_buffers(sid, *sizes)
            except (OSError, ValueError) as exc:
                self.cc_problems.append(f"service {name}: backend socket buffers "
                                        f"{sizes[0]}/{sizes[1]}: "
                                        f"{exc.strerror if isinstance(exc, OSError) else exc}")
                log.error("%s; its backend connections use the kernel's buffers",
                          self.cc_problems[-1])
                self.dp.set_socket_buffers(sid, 0, 0)
                self.sockbuf_backend.pop(sid, None)
                continue
            self.sockbuf_backend[sid] = sizes
            log.info("service %s: backend connections use SO_SNDBUF %s, SO_RCVBUF %s", name,
                     sizes[0] or "autotuned", sizes[1] or "autotuned")

    def _sync_listener_buffers(self, groups: list[ListenerGroup]) -> list[str]:
        """Give each TCP listener of `groups` its service's client_sndbuf / client_rcvbuf;
        accepted sockets inherit them (sockets accepted earlier keep theirs). A size the
        service dropped (0) cannot be taken back: the kernel has no way to return a socket to
        autotuning, and a new listener would lose its accept queue; so the listener keeps it
        until the daemon restarts (a warning, and `listeners_keep_sockbuf` in status).
        Listeners never given a size and still without one are not touched. Returns what could
        not be applied, each logged."""
        def apply(sock: socket.socket, want: tuple[int, int]) -> str:
            held = list(self.sockbuf_held.get(sock, (0, 0)))
            applied: list[str] = []
            for side, (option, size) in enumerate(((socket.SO_SNDBUF, want[0]),
                                                   (socket.SO_RCVBUF, want[1]))):
                if size and size != held[side]:
                    got = set_socket_buffer(sock, option, size)
                    held[side] = size
                    self.sockbuf_held[sock] = (held[0], held[1])
                    applied.append(f"{'SO_SNDBUF' if side == 0 else 'SO_RCVBUF'} {size} "
                                   f"(the kernel applied {got})")
            return ", ".join(applied) or "-"

        def announce(group: ListenerGroup, want: tuple[int, int], applied: str) -> None:
            held = self.sockbuf_held.get(group.sockets[0], (0, 0)) if group.sockets else (0, 0)
            kept = [f"{key} {size}" for key, size, asked in (
                ("SO_SNDBUF", held[0], want[0]), ("SO_RCVBUF", held[1], want[1]))
                if size and not asked]
            if applied != "-":
                log.info("service %s: clients on %s get %s", group.service, group.endpoint,
                         applied)
            if kept:
                log.warning("service %s: listener %s keeps %s until the daemon restarts (a "
                            "socket cannot return to the kernel's autotuning)", group.service,
                            group.endpoint, " and ".join(kept))

        return self._sync_listeners(
            groups, lambda want: f"socket buffers {want[0]}/{want[1]}",
            lambda s: (s.client_sndbuf, s.client_rcvbuf), (0, 0), self.sockbuf_wanted, apply,
            announce)

    def listener_buffers(self, service: str) -> tuple[int | None, int | None, bool]:
        """(SO_SNDBUF, SO_RCVBUF) the kernel applied on `service`'s first open TCP listener
        (getsockopt: doubled, maybe capped), each None while that buffer was never set
        (autotuning), and whether a listener keeps a size the service no longer asks for."""
        wanted = next(((s.client_sndbuf, s.client_rcvbuf) for s in self.config.services
                       if s.name == service), (0, 0))
        applied: list[int | None] = [None, None]
        keeps = False
        first = True
        for group in self.listeners:
            if group.service != service or group.protocol != "tcp":
                continue
            for sock in group.sockets:
                held = self.sockbuf_held.get(sock, (0, 0))
                keeps |= any(h and not w for h, w in zip(held, wanted, strict=True))
                if first and sock.fileno() >= 0:
                    first = False
                    for side, option in enumerate((socket.SO_SNDBUF, socket.SO_RCVBUF)):
                        if held[side]:
                            applied[side] = int(sock.getsockopt(socket.SOL_SOCKET, option))
        return applied[0], applied[1], keeps

    def _sync_listener_congestion(self, groups: list[ListenerGroup]) -> list[str]:
        """Set TCP_CONGESTION on each TCP listener of `groups` to its service's
        congestion_control; accepted sockets inherit it (sockets accepted earlier keep theirs).
        A listener whose service dropped the key gets the system default of this moment back.
        Listeners never given an algorithm and still without one are not touched.

        Returns (and keeps in cc_problems) what could not be applied, each logged."""
        def apply(sock: socket.socket, want: str | None) -> str:
            algo = want if want is not None else system_congestion_control()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, algo.encode())
            return algo

        def announce(group: ListenerGroup, want: str | None, algo: str) -> None:
            log.info("service %s: clients on %s use congestion control %s%s", group.service,
                     group.endpoint, algo, "" if want is not None else " (the system default)")

        self.cc_problems = self._sync_listeners(
            groups, lambda want: f"congestion control {want or system_congestion_control()}",
            lambda s: s.client_congestion_control, None, self.cc_listeners, apply, announce)
        return self.cc_problems

    def _sync_listener_defer_accept(self, groups: list[ListenerGroup]) -> list[str]:
        """Give each TCP listener of `groups` its service's defer_accept: TCP_DEFER_ACCEPT of
        DEFER_ACCEPT_S seconds, or 0 when the service dropped the key (or the listener moved to
        a service without it). Listeners never deferred and still not wanted are not touched.
        Connections already in the accept queue are not affected. Returns (and logs) what
        could not be applied."""
        def apply(sock: socket.socket, want: bool) -> str:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT,
                            DEFER_ACCEPT_S if want else 0)
            return "on" if want else "off"

        def announce(group: ListenerGroup, want: bool, _: str) -> None:
            log.info("service %s: listener %s %s", group.service, group.endpoint,
                     "accepts a connection once its first bytes arrived (defer_accept)"
                     if want else "accepts connections at once (defer_accept off)")

        return self._sync_listeners(groups, lambda _: "defer_accept", lambda s: s.defer_accept,
                                    False, self.deferred_listeners, apply, announce)

    def _sync_listeners(self, groups: list[ListenerGroup], what: Callable[[T], str],
                        want_of: Callable[[Service], T], default: T,
                        given: weakref.WeakKeyDictionary[socket.socket, T],
                        apply: Callable[[socket.socket, T], str],
                        announce: Callable[[ListenerGroup, T, str], None]) -> list[str]:
        """The shared loop of the listener options: for each TCP listener of `groups`, the
        value its service wants (`default` when the service is gone) is applied unless
        `given` (listener -> value applied) already has it; a listener never given one counts
        as `default`, so the default path makes no call. `apply` returns the value as it was
        applied (for the log line); a refusal stops that group and is returned and logged,
        `what(want)` naming the option in the message."""
        problems: list[str] = []
        services = {s.name: s for s in self.config.services}
        for group in groups:
            if group.protocol != "tcp":
                continue
            service = services.get(group.service)
            want = want_of(service) if service is not None else default
            applied = ""
            for sock in group.sockets:
                if given.get(sock, default) == want:
                    continue
                try:
                    applied = apply(sock, want)
                except OSError as exc:
                    problems.append(f"service {group.service}: listener {group.endpoint}: "
                                    f"{what(want)}: {exc.strerror or exc}")
                    log.error("%s", problems[-1])
                    applied = ""
                    break
                given[sock] = want
            if applied:
                announce(group, want, applied)
        return problems

    # ---- VRRP (docs/ha.md) ----

    async def start_vrrp(self) -> None:
        """Start every [[vrrp]] instance (listeners are already bound, with IP_FREEBIND).

        Raises VrrpError when one cannot start; the ones already started are stopped. The
        members of a [[vrrp_sync_group]] report to its runtime (l4lb.vrrp.group)."""
        groups = {g.name: SyncGroupRuntime(g) for g in self.config.vrrp_sync_groups}
        self.sync_groups = list(groups.values())
        for group in self.sync_groups:
            group.start()
        try:
            for settings in self.config.vrrp:
                instance = VrrpInstance(settings)
                if settings.sync_group is not None:
                    groups[settings.sync_group].member(settings.name, instance)
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

    def _start_vrrp_apply(self, vplan: VrrpPlan, running: tuple[VrrpSettings, ...]) -> None:
        """Carry out a reload's VRRP plan on the loop, after any earlier one (vrrp_apply)."""
        previous = self.vrrp_apply
        settings = {s.name: s for s in self.config.vrrp}
        old = {s.name: s for s in running}
        self.vrrp_apply = asyncio.get_running_loop().create_task(
            self._apply_vrrp(vplan, settings, old, previous))

    async def _apply_vrrp(self, vplan: VrrpPlan, settings: dict[str, VrrpSettings],
                          old: dict[str, VrrpSettings],
                          previous: asyncio.Task[list[str]] | None) -> list[str]:
        """Stop the removed instances, replace the changed ones and start the added ones
        (l4lb.vrrp.reloadplan). An instance that cannot start is logged, left out of the
        running configuration (so the next reload tries it again) and named in the result."""
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous
        by_name = {instance.settings.name: instance for instance in self.vrrp}
        errors: list[str] = []
        for name in vplan.removed:
            instance = by_name.pop(name, None)
            if instance is not None:
                await instance.stop(graceful=True)
                log.info("vrrp %s: removed by the reload", name)
        for name in (*vplan.changed, *vplan.added):
            current = by_name.pop(name, None)
            resume: VrrpInstance | None = None
            if current is not None:
                if name in old and same_router(old[name], settings[name]):
                    # the same router: no resignation; a master stays master (its VIPs
                    # stay, those the new settings drop go), a backup starts as backup
                    keep = set(settings[name].placed_vips)
                    await current.detach(
                        drop=[p for p in old[name].placed_vips if p not in keep])
                    resume = current
                else:  # another router now: leave the old one as a removed instance does
                    await current.stop(graceful=True)
            instance = VrrpInstance(settings[name])
            try:
                await instance.start(resume=resume)
            except (VrrpError, OSError) as exc:
                await instance.stop(graceful=False)
                if resume is not None and resume.vips_held:  # nobody speaks for them now
                    await VrrpInstance.release_vips(old[name])
                log.error("vrrp %s: cannot start with the reloaded settings: %s", name, exc)
                errors.append(f"vrrp {name}: {exc}")
                self.config = dataclasses.replace(
                    self.config, vrrp=tuple(s for s in self.config.vrrp if s.name != name))
                continue
            by_name[name] = instance
            log.info("vrrp %s: %s by the reload (VRID %d, priority %d)", name,
                     "changed" if current is not None else "started",
                     settings[name].virtual_router_id, settings[name].priority)
        order = [s.name for s in self.config.vrrp]
        self.vrrp = [by_name[n] for n in order if n in by_name]
        if self.weights is not None:
            healthy = {service: up > 0 for service, up in self.weights.up.items()}
            for instance in self.vrrp:
                instance.set_tracking(services=healthy)
        if self.vrrp and self.digest_check is None:
            self.digest_check = DigestCheck(lambda: self.vrrp,
                                            lambda: (self.generation, self.digest))
            await self.digest_check.start()
        elif not self.vrrp and self.digest_check is not None:
            await self.digest_check.stop()
            self.digest_check = None
        return errors

    async def stop_vrrp(self) -> None:
        """Leave the VRRP groups gracefully: priority-0 advert, VIPs removed. Every instance
        resigns at once, before any waits for its lanes (a notify program may still run there):
        one after the other, the members of a sync group would be split between the nodes for
        as long as the first one waits."""
        if self.vrrp_apply is not None:  # a reload's changes end first: nothing starts after
            with contextlib.suppress(Exception):
                await self.vrrp_apply
            self.vrrp_apply = None
        if self.digest_check is not None:
            await self.digest_check.stop()
            self.digest_check = None
        await asyncio.gather(*(instance.stop(graceful=True) for instance in self.vrrp))
        self.vrrp = []
        for group in self.sync_groups:
            await group.stop()
        self.sync_groups = []

    def cmd_vrrp(self) -> dict[str, Any]:
        check = self.digest_check.status() if self.digest_check is not None else None
        instances = []
        for instance in self.vrrp:
            status = instance.status()
            if check is not None:
                status["digest_check"] = check["instances"].get(instance.settings.name)
            instances.append(status)
        return {"instances": instances, "digest_check": check,
                "sync_groups": [g.status() for g in self.sync_groups],
                "table": {"generation": self.generation, "digest": self.digest}}

    def log_summary(self, why: str) -> None:
        """One log line per service and per VRRP instance with its state (SIGUSR2)."""
        log.info("daemon: %s received: state of %d services and %d vrrp instances follows",
                 why, len(self.config.services), len(self.vrrp))
        status = self.cmd_status()
        for service in status["services"]:
            backends = service["backends"]
            up = sum(1 for b in backends if b["state"] == "up")
            counters = service["counters"]
            udp = service["protocol"] == "udp"  # flows, not connections
            log.info("service %s: %d/%d backends up, %d active, %d total %s%s",
                     service["name"], up, len(backends),
                     int(counters.get("flows_active" if udp else "conns_active", 0)),
                     int(counters.get("flows_created" if udp else "conns_total", 0)),
                     "flows" if udp else "connections",
                     f" (panic: {service['panic']})" if service["panic"] else "")
        for instance in self.vrrp:
            state = instance.status()
            log.info("vrrp %s: %s", instance.settings.name, state.get("state", "?"))
        for group in self.sync_groups:
            log.info("vrrp sync group %s: %s (%s)", group.settings.name, group.group.state,
                     group.group.reason)

    # ---- health checks (docs/health.md) ----

    def start_health(self) -> None:
        """Start probing on the running loop (serve() calls this)."""
        self.checker = HealthChecker(self._on_transition, on_weight=self._on_dynamic_weight)
        self._sync_health()
        if any(rt.health == "down" for rt in self.runtime.backends.values()):
            self._publish()  # initial_state "down": start() published them UP
        self.checker.start()

    @staticmethod
    def _health_targets(config: Config) -> list[tuple[Key, Backend, HealthSettings]]:
        """The backends `config` checks, each with its settings. Builds every probe first
        (pure), so a target that cannot be probed (a health.source of the other family) raises
        ValueError, naming the backend, before anything is changed."""
        targets: list[tuple[Key, Backend, HealthSettings]] = []
        for service in config.services:
            if service.health is None:
                continue
            for backend in service.backends:
                key = (service.name, address_text(backend))
                try:
                    ProbeSpec.build(backend.address.host, backend.address.port, service.health)
                except ValueError as exc:
                    raise ValueError(f"backend {key[0]}/{key[1]}: {exc}") from None
                targets.append((key, backend, service.health))
        return targets

    def _sync_health(self, prune: bool = True) -> None:
        """Make the checker probe the backends of services with [services.health], and (with
        `prune`) only those. A reload syncs without pruning until it is committed, so that a
        rollback finds the backends it had removed with their health state intact."""
        if self.checker is None:
            return
        targets = self._health_targets(self.config)
        for key, backend, settings in targets:
            self.checker.add(key, backend.address.host, backend.address.port, settings)
            self.runtime.backends[key].health = self.checker.state(key).value
        if prune:
            for key in set(self.checker.keys()) - {key for key, _, _ in targets}:
                self.checker.remove(key)

    def _on_dynamic_weight(self, key: Key, old: int | None, new: int, reason: str) -> None:
        """A misc_dynamic exit status changed a backend's weight (kind "exec", dynamic)."""
        if key not in self.runtime.backends:
            return
        was = (f"was {old}" if old is not None
               else f"was the base weight {self.runtime.backends[key].weight}")
        log.info("backend %s/%s: weight %d from the check: %s (misc_dynamic; %s)", *key, new,
                 reason, was)
        self._publish_soon()

    # ---- agent checks (docs/health.md, "Agent checks") ----

    def start_agents(self) -> None:
        """Start polling agents on the running loop (serve() calls this)."""
        self.agents = AgentPoller(self._on_agent_change)
        self._sync_agents()
        self.agents.start()

    def _sync_agents(self, prune: bool = True) -> None:
        """Poll the agent of every backend of a service with [services.agent], and (with
        `prune`) only those: a backend that stays keeps what its agent said."""
        if self.agents is None:
            return
        wanted: set[Key] = set()
        for key, host, port, settings, source in self._agent_targets(self.config):
            self.agents.add(key, host, port, settings, source)
            wanted.add(key)
        if prune:
            for key in set(self.agents.keys()) - wanted:
                self.agents.remove(key)

    @staticmethod
    def _agent_targets(config: Config) -> list[tuple[Key, str, int, AgentSettings, str | None]]:
        """Every agent `config` polls: (backend, address, port, settings with its own `send`,
        source: the service's health.source, which the loader checked is of the agents'
        family, as probes bind it). ValueError, naming the backend, for one that has no port
        (a backend added at run time to a service whose [services.agent] relies on each
        backend's agent_port), before anything is changed."""
        out: list[tuple[Key, str, int, AgentSettings, str | None]] = []
        for service in config.services:
            if service.agent is None:
                continue
            for backend in service.backends:
                key = (service.name, address_text(backend))
                if backend.agent_port is None and service.agent.port is None:
                    raise ValueError(f"backend {key[0]}/{key[1]}: no agent port ([services."
                                     "agent] has no port and the backend no agent_port)")
                host, port = service.agent.target(backend)
                send = service.agent.send_for(service.name, backend)
                source = service.health.source if service.health is not None else None
                out.append((key, host, port, dataclasses.replace(service.agent, send=send),
                            source))
        return out

    def _on_agent_change(self, key: Key, old: Dynamic, new: Dynamic, reply: AgentReply) -> None:
        if key not in self.runtime.backends:
            return
        if dataclasses.replace(old, reason=new.reason) == new:
            return  # only the `#` text changed (a load figure, say): shown, not logged
        line = f"backend {key[0]}/{key[1]}: agent says {reply.said() or reply.text}"
        if new.percent not in (None, 0, 100, old.percent) and \
                key[0] not in self.round_robin_warned and \
                self._service_config(key[0]).scheduler == "round_robin":
            self.round_robin_warned.add(key[0])
            log.warning('service %s: the agent of backend %s says %d%%, but scheduler '
                        '"round_robin" ignores weights (only 0%% takes a backend out); use '
                        '"weighted_round_robin" for shares', key[0], key[1], new.percent)
        if new.health != "up" and old.health == "up":
            log.warning("%s", line)
        else:
            log.info("%s", line)
        self._note_down(key, went_down=new.health != "up" and old.health == "up")
        self._publish_soon()

    def _note_down(self, key: Key, went_down: bool) -> None:
        """on_down bookkeeping after the health check or the agent changed `key`'s health:
        a transition to DOWN (either of them) is due to close its sessions after the next
        publish (health.on_down = "shutdown_sessions"); a backend UP again by both is not."""
        if went_down and self._on_down(key[0]) == "shutdown_sessions":
            self.on_down_pending.setdefault(key, False)  # closed after the next publish
        elif not self._is_down(key):
            self.on_down_pending.pop(key, None)

    def _is_down(self, key: Key, dynamic: Mapping[Key, Dynamic] | None = None) -> bool:
        """DOWN by its health check or by its agent (l4lb.health.dynamic.combined_health)."""
        rt = self.runtime.backends.get(key)
        if rt is None:
            return False
        said = (dynamic if dynamic is not None else self.dynamic()).get(key, NEUTRAL)
        return combined_health(rt.health, said) == "down"

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
        self._note_down(key, went_down=transition.new is Health.DOWN)
        self._publish_soon()

    def _on_down(self, service: str) -> str:
        """health.on_down of `service` ("keep" without health checks or such a service)."""
        for svc in self.config.services:
            if svc.name == service:
                return svc.health.on_down if svc.health is not None else "keep"
        return "keep"

    def _shut_down_sessions(self, weights: Weights) -> None:
        """health.on_down = "shutdown_sessions": reset the sessions of the backends that went
        DOWN, right after the publish (just done) of the first table that gives them weight 0,
        so that a client that reconnects at once cannot land on them again. A panic keeps DOWN
        backends in rotation: their sessions stay (they would only come back to the same
        backends) until a table without them, if they are still DOWN then. A backend that came
        back UP, left the configuration or whose service now says "keep" is forgotten.

        Every backend due at this publish is closed by ONE data-plane call (one scan of each
        worker's sessions, however many backends: a rack of 50 going DOWN together costs what
        one does). Measured (docs/performance.md, "Closing sessions by backend"): one scan
        (30 µs for 50 backends at 4,000 sessions, where 50 calls took 1.2 ms) plus about 10 µs
        per session reset, which batching cannot change: 100,000 sessions reset at once take
        about a second on two workers, longer than VRRP's master-down interval with 100 ms
        adverts (0.365 s). So with the C plane (close_off_loop), whose call releases the GIL,
        the call runs in close_pool's thread and the loop goes on with adverts, probes and
        commands meanwhile. It is fenced: finish_close() waits for it and counts it before the
        next table is published (_publish), before a reload saves the state it may roll back
        to (_commit) and before a stop (begin_stop, stop), so a backend back UP in the next
        table keeps its new sessions and no reload can hand a closing backend's id to another
        first. The reference plane holds the GIL while it closes, so it (and a data plane
        given without start(), as in the unit tests) closes here, on the loop, as does a
        publish made without a running loop or once a stop has begun."""
        ids = self.builder.backend_ids()
        dynamic = self.dynamic()
        due: dict[Key, int] = {}  # backend -> its id, in on_down_pending order
        for key, panic_logged in list(self.on_down_pending.items()):
            if not self._is_down(key, dynamic) or \
                    self._on_down(key[0]) != "shutdown_sessions":
                del self.on_down_pending[key]
                continue
            service, address = key
            if weights.weights.get(key, 0) > 0:  # DOWN and in rotation: a panic
                if not panic_logged and service in weights.panic:
                    log.warning('backend %s/%s: sessions kept (on_down = "shutdown_sessions"): '
                                "service %s is in panic, DOWN backends stay in rotation; they "
                                "are closed if it leaves rotation while still DOWN",
                                service, address, service)
                    self.on_down_pending[key] = True
                continue
            del self.on_down_pending[key]
            bid = ids.get(key)
            if bid is not None:
                due[key] = bid
        if not due:
            return
        if not self._dp_supports("close_backend_sessions"):
            for service, address in due:
                log.warning('backend %s/%s: on_down = "shutdown_sessions", but this data plane '
                            "cannot close sessions; they continue", service, address)
            return
        def account(future: Future[dict[int, int]]) -> None:
            try:
                closed = future.result()
            except Exception as exc:  # whatever the close thread met (a MemoryError too)
                for service, address in due:
                    log.error('backend %s/%s: closing its sessions (on_down = '
                              '"shutdown_sessions") failed: %s', service, address,
                              _reason(exc))
                return
            for key, bid in due.items():
                count = int(closed.get(bid, 0))
                self.sessions_shut_down[key] = self.sessions_shut_down.get(key, 0) + count
                log.log(logging.WARNING if count else logging.INFO,
                        'backend %s/%s: closed %d %s (on_down = "shutdown_sessions")', key[0],
                        key[1], count, "session" if count == 1 else "sessions")

        self._close(list(due.values()), "backend_down", account)

    def _close(self, bids: list[int], reason: str,
               account: Callable[[Future[dict[int, int]]], None]) -> None:
        """One close_backend_sessions call for `bids`; `account(future)` counts and logs its
        result on the loop. With close_off_loop and a running loop, before any stop, the call
        runs in close_pool's thread and this returns at once (see _shut_down_sessions for
        why and for the fences); otherwise it runs here. One close at a time: one still in flight
        ends and is counted first."""
        self.finish_close()
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self.close_off_loop and loop is not None and self.stop_deadline is None:
            if self.close_pool is None:
                self.close_pool = ThreadPoolExecutor(1, thread_name_prefix="l4lb-close")
            future = self.close_pool.submit(self.dp.close_backend_sessions, bids, reason)
            self.closing = (future, account)
            future.add_done_callback(
                lambda done: _call_soon_threadsafe(loop, lambda: self.finish_close(done)))
            return
        future = Future()
        try:
            future.set_result(self.dp.close_backend_sessions(bids, reason=reason))
        except Exception as exc:  # logged by account, as off the loop
            future.set_exception(exc)
        self.closing = (future, account)
        self.finish_close()

    def finish_close(self, only: Future[dict[int, int]] | None = None) -> None:
        """Wait for the close in flight, if any, then count and log it (its `account`, on the
        loop thread: run by the close's own completion, with `only` = that close, which a
        fence may have counted already while a newer one is in flight; and as a fence before
        anything that must not overtake it). `account` catches what the close raised: this
        is a fence of the next publish, reload or stop, which must not fail because of it."""
        if self.closing is None or (only is not None and self.closing[0] is not only):
            return
        future, account = self.closing
        self.closing = None
        account(future)

    def probe_latencies(self) -> dict[Key, float] | None:
        """Last conclusive probe latency per checked backend (for metrics), None when nothing
        is checked."""
        return self.checker.latencies() if self.checker is not None else None

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

    def backend_views(self, service_name: str | None = None,
                      stats: dict[str, Any] | None = None) -> list[BackendView]:
        """Backends of every service (or one) in file order, with state and counters (from
        `stats`, a data-plane snapshot the caller already took, else a fresh one)."""
        dp = self.dp  # stop() may clear it meanwhile, from the executor thread
        if stats is None:
            stats = dp.stats() if dp is not None else {"backends": {}}
        ids = self.builder.backend_ids()
        latencies = self.checker.latencies() if self.checker is not None else {}
        checks = (self.checker.views(time.time() - time.monotonic())
                  if self.checker is not None else {})
        agents = self.agents.views() if self.agents is not None else {}
        dynamic = self.dynamic()
        views: list[BackendView] = []
        for service in self.config.services:
            if service_name is not None and service.name != service_name:
                continue
            for backend in service.backends:
                rt = self.runtime.backends[(service.name, address_text(backend))]
                effective = (self.weights.weights.get((service.name, rt.address), 0)
                             if self.weights is not None else 0)
                key = (service.name, rt.address)
                dyn = dynamic.get(key, NEUTRAL)
                view = BackendView(service.name, rt.address, backend.name,
                                   state=self.effective_state(key, dyn),
                                   weight=rt.weight, effective_weight=effective,
                                   backup=rt.backup, source=backend.source,
                                   protocol=service.protocol)
                bid = ids.get((service.name, view.address))
                counters = stats["backends"].get(bid, {}) if bid is not None else {}
                for counter in BACKEND_COUNTERS:
                    setattr(view, counter, int(counters.get(counter, 0)))
                armed = self.drains.pending.get((service.name, rt.address))
                view.drain_deadline = armed.deadline if armed is not None else None
                view.probe_latency = latencies.get((service.name, rt.address))
                view.check = checks.get((service.name, rt.address))
                view.sessions_shut_down = self.sessions_shut_down.get((service.name, rt.address),
                                                                      0)
                view.admin = rt.admin
                view.agent = agents.get(key)
                if view.agent is not None:
                    view.agent["holds"] = agent_words(dyn)
                view.dynamic_weight = dyn.exec_weight
                view.max_connections = (self.weights.max_connections.get(key, 0)
                                        if self.weights is not None else 0)
                views.append(view)
        return views

    # ---- connection log (docs/connection-log.md) ----

    def _dp_supports(self, name: str) -> bool:
        return self.dp is not None and callable(getattr(self.dp, name, None))

    def _open_connlog(self, path: str) -> ConnLogWriter:
        """A started writer for `path`; ConnLogError if the file cannot be opened."""
        writer = ConnLogWriter(path)
        try:
            writer.start()
        except OSError as exc:
            raise ConnLogError(f"connection_log {path}: cannot open: "
                               f"{exc.strerror or exc}") from None
        return writer

    def _enable_connlog(self, writer: ConnLogWriter, path: str) -> None:
        self.connlog, self.connlog_path = writer, path
        if self._dp_supports("set_connection_log"):
            self.dp.set_connection_log(True, CONNLOG_RING)
        else:
            log.warning("connlog: this data plane does not report closed sessions; %s stays "
                        "empty", path)
        log.info("connlog: writing closed sessions to %s", path)
        self._schedule_connlog()

    def _switch_connlog(self, writer: ConnLogWriter | None, path: str | None) -> None:
        """Apply a reloaded connection_log: `writer` is already open on `path` (None: off)."""
        old = self.connlog
        if old is None:
            if writer is not None and path is not None:
                self._enable_connlog(writer, path)
            return
        self.pump_connlog()  # what closed before the reload goes to the old file
        if writer is None:
            if self._dp_supports("set_connection_log"):
                self.dp.set_connection_log(False)
            self.pump_connlog()
            self.connlog, self.connlog_path = None, None
            if self.connlog_timer is not None:
                self.connlog_timer.cancel()
                self.connlog_timer = None
            log.info("connlog: turned off (was writing to %s)", old.path)
        else:
            self.connlog, self.connlog_path = writer, path
            log.info("connlog: writing closed sessions to %s (was %s)", path, old.path)
        old.close()

    def start_connlog(self) -> None:
        """Start reading the record rings on the running loop (serve() calls this)."""
        self._schedule_connlog()

    def _schedule_connlog(self) -> None:
        if self.connlog is None or self.connlog_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # start() runs before the loop; serve() calls start_connlog()
        self.connlog_timer = loop.call_later(CONNLOG_INTERVAL, self._connlog_tick)

    def _connlog_tick(self) -> None:
        self.connlog_timer = None
        full = self.pump_connlog(CONNLOG_BATCH) >= CONNLOG_BATCH
        now = time.monotonic()
        if now - self.connlog_checked_at >= 1.0:
            self.connlog_checked_at = now
            self.warn_connlog_losses(now)
        if full and self.connlog is not None:  # more are waiting: read again after the
            loop = asyncio.get_running_loop()  # callbacks already queued have run
            self.connlog_timer = loop.call_later(0.0, self._connlog_tick)
        else:
            self._schedule_connlog()

    def pump_connlog(self, limit: int = CONNLOG_FINAL) -> int:
        """Move up to `limit` closed-session records from the data plane to the writer;
        returns how many it moved.

        Safe from the executor thread that stops the daemon (a lock orders it with the loop).
        """
        with self.connlog_lock:
            writer = self.connlog
            if writer is None or not self._dp_supports("closed_sessions"):
                return 0
            moved = 0
            while moved < limit:
                want = min(CONNLOG_BATCH, limit - moved)
                records = self.dp.closed_sessions(want)
                for record in records:
                    try:
                        writer.write(self.connlog_record(record))
                    except (RecordError, KeyError, TypeError, ValueError):
                        self.connlog_invalid += 1
                moved += len(records)
                if len(records) < want:
                    break
            return moved

    def _remember_ids(self) -> None:
        services = {sid: name for name, sid in self.builder.service_ids().items()}
        backends = {bid: key for key, bid in self.builder.backend_ids().items()}
        if self.connlog_ids:  # what just left the table keeps its name until released
            old_services, old_backends = self.connlog_ids[-1]
            for sid, name in old_services.items():
                if sid not in services:
                    self.retired_services.setdefault(sid, name)
            for bid, key in old_backends.items():
                if bid not in backends:
                    self.retired_backends.setdefault(bid, key)
        if not self.connlog_ids or self.connlog_ids[-1] != (services, backends):
            self.connlog_ids.append((services, backends))

    def release_retired_ids(self) -> None:
        """Free the ids of services and backends that left the table once nothing in the data
        plane counts on them any more (docs/forwarding-table.md, "Ids that leave the table").
        The data plane zeroes their counters first; the connection-log records still queued
        are written while the ids still name the old ones. Called about once a second."""
        if self.dp is None or not self._dp_supports("reset_counters"):
            return
        services, backends = self.builder.retired()
        if not services and not backends:
            return
        stats = self.dp.stats()

        def idle(counters: dict[str, int]) -> bool:
            return not counters.get("conns_active") and not counters.get("flows_active")

        freed_s = [sid for sid in sorted(services)
                   if idle(stats["services"].get(sid, {}))
                   and self.dp.reset_counters(service_id=sid)]
        freed_b = [bid for bid in sorted(backends)
                   if idle(stats["backends"].get(bid, {}))
                   and self.dp.reset_counters(backend_id=bid)]
        if not freed_s and not freed_b:
            return
        # the records of their last sessions are queued by now: write them while the ids still
        # name the old ones. One bounded read, so that the loop stays free; with more queued,
        # the ids are released on a later tick (the rings are read every CONNLOG_INTERVAL).
        if self.pump_connlog(CONNLOG_BATCH) >= CONNLOG_BATCH:
            return
        for sid in freed_s:
            self.retired_services.pop(sid, None)
        for bid in freed_b:
            self.retired_backends.pop(bid, None)
            self.failures_seen.pop(bid, None)
        self.builder.release(service_ids=freed_s, backend_ids=freed_b)
        log.info("table: released %d service and %d backend ids (nothing counts on them)",
                  len(freed_s), len(freed_b))

    def connlog_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """A data-plane record (ids) as a connection log record (names, "host:port")."""
        sid, bid = int(record["service_id"]), int(record["backend_id"])
        service: str | None = None
        backend: str | None = None
        for services, backends in reversed(self.connlog_ids):  # newest table first
            if service is None:
                service = services.get(sid)
            if backend is None and bid >= 0:
                key = backends.get(bid)
                backend = key[1] if key is not None else None
        if service is None:
            service = self.retired_services.get(sid)
        if backend is None and bid in self.retired_backends:
            backend = self.retired_backends[bid][1]
        peer = record.get("peer")
        return {"client": _hostport(record["client"]),
                **({"peer": _hostport(peer)} if peer else {}),
                "service": service if service is not None else f"?{sid}",
                "protocol": record["protocol"],
                "backend": backend if backend is not None or bid < 0 else f"?{bid}",
                "started": record["started"], "duration": record["duration"],
                "bytes_to_backend": record["bytes_to_backend"],
                "bytes_to_client": record["bytes_to_client"], "reason": record["reason"],
                **({"queued": record["queued"]} if record.get("queued") else {})}

    def _ring_dropped(self) -> int:
        dp = self.dp  # stop() may clear it meanwhile, from the executor thread
        if dp is None:
            return 0
        return int(dp.stats().get("connlog_dropped", 0))

    def connlog_stats(self) -> dict[str, Any] | None:
        """Counters of the connection log (for metrics), None while it is off."""
        writer = self.connlog
        if writer is None:
            return None
        stats: dict[str, Any] = dict(writer.stats())
        stats["ring_dropped"] = self._ring_dropped()
        stats["invalid"] = self.connlog_invalid
        return stats

    def warn_connlog_losses(self, now: float) -> None:
        """Log lost records (ring full, queue full, write errors), at most once a minute."""
        stats = self.connlog_stats()
        if stats is None:
            return
        lost = {"data-plane ring full": int(stats["ring_dropped"]),
                "writer queue full": int(stats["dropped"]),
                "write errors": int(stats["failed"]), "malformed": int(stats["invalid"])}
        new = {k: v - self.connlog_lost_logged.get(k, 0) for k, v in lost.items()}
        if sum(new.values()) <= 0 or now - self.connlog_warned_at < CONNLOG_WARN_EVERY:
            return
        self.connlog_warned_at = now
        self.connlog_lost_logged = lost
        log.warning("connlog: %d records lost since the last warning (%s)", sum(new.values()),
                    ", ".join(f"{k}: {v}" for k, v in new.items() if v))

    def reopen_logs(self, why: str) -> Future[str | None] | None:
        """Reopen the connection log file (after logrotate renamed it). Returns the writer's
        future (None when reopened, else the error text), or None when the log is off."""
        writer = self.connlog  # stop() may clear it meanwhile, from the executor thread
        if writer is None:
            log.info("connlog: %s: nothing to reopen (connection_log is off)", why)
            return None
        done = writer.reopen()
        log.info("connlog: reopening %s (%s)", writer.path, why)
        return done

    async def cmd_reopen_logs(self) -> dict[str, Any]:
        """`l4lb reopen-logs`: waits (off the loop's back) up to REOPEN_WAIT for the writer
        thread to reopen the file; a failure or no answer is reported, not hidden."""
        writer = self.connlog
        done = self.reopen_logs("l4lb reopen-logs")
        if writer is None or done is None:
            return {"connection_log": None, "reopened": False}
        try:
            # shielded: giving up waiting must not cancel the writer's own future
            error = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(done)),
                                           REOPEN_WAIT)
        except TimeoutError:
            error = (f"cannot reopen {writer.path}: the writer did not answer within "
                     f"{REOPEN_WAIT:g}s (a slow or blocked disk?)")
        reply: dict[str, Any] = {"connection_log": writer.path, "reopened": error is None}
        if error is not None:
            reply["error"] = error
        return reply

    # ---- drain deadlines (`l4lb drain --timeout`) ----

    def _arm_drain_timer(self, armed: DrainDeadline) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (unit tests call drain_deadline_reached themselves)
        self.drain_timers[armed.ident] = loop.call_later(
            max(0.0, armed.deadline - time.time()), self.drain_deadline_reached, armed.ident)

    def _drain_ended(self, done: DrainEnd) -> None:
        timer = self.drain_timers.pop(done.ident, None)
        if timer is not None:
            timer.cancel()
        service, address = done.key
        if done.outcome == "cancelled":
            log.info("backend %s/%s: drain deadline cancelled (%s)", service, address,
                     done.reason)
        elif done.outcome == "drained":
            log.info("backend %s/%s: drained: no %s left, deadline cancelled", service, address,
                     self._units(service, 2))

    def _protocol(self, service: str) -> str:
        for svc in self.config.services:
            if svc.name == service:
                return svc.protocol
        return "tcp"

    def _units(self, service: str, n: int) -> str:
        """What a drain of `service` counts: "session(s)" (TCP) or "flow(s)" (UDP)."""
        unit = "flow" if self._protocol(service) == "udp" else "session"
        return unit if n == 1 else unit + "s"

    def _remaining(self, key: Key, stats: dict[str, Any] | None = None) -> tuple[int, int]:
        """(TCP sessions, UDP flows) the backend still has."""
        bid = self.builder.backend_ids().get(key)
        dp = self.dp  # stop() may clear it meanwhile, from the executor thread
        if bid is None or dp is None:
            return 0, 0
        if stats is None:
            stats = dp.stats()
        counters = stats["backends"].get(bid, {})
        return int(counters.get("conns_active", 0)), int(counters.get("flows_active", 0))

    def drain_deadline_reached(self, ident: int) -> None:
        """The deadline of drain `ident` passed: close what is left of its backend, and of
        every other drain whose deadline falls within DRAIN_COALESCE of now (their timers are
        cancelled), in one data-plane call: drains armed together (a script draining a rack)
        end together at the cost of one. With the C plane the call runs off the loop, as
        on_down's does (`_close`), and the drains end when it has (`drain_closing` meanwhile
        keeps check_drains from ending them as drained)."""
        self.drain_timers.pop(ident, None)
        self.finish_close()  # a close in flight (perhaps of this drain) ends first
        armed = self.drains.by_id(ident)
        if not isinstance(armed, DrainDeadline):
            return
        now = time.time()
        due = [armed] + [other for other in self.drains.pending.values()
                         if other is not armed and other.deadline <= now + DRAIN_COALESCE]
        for other in due[1:]:
            timer = self.drain_timers.pop(other.ident, None)
            if timer is not None:
                timer.cancel()
        ids = self.builder.backend_ids()
        bids = {d.key: ids[d.key] for d in due if d.key in ids}
        if bids and not self._dp_supports("close_backend_sessions"):
            for service, address in bids:
                log.warning("backend %s/%s: drain deadline reached, but this data plane "
                            "cannot close sessions; they continue", service, address)
            bids = {}
        if not bids:
            self._end_drains(due, {}, {})
            return

        def account(future: Future[dict[int, int]]) -> None:
            self.drain_closing.difference_update(bids)
            try:
                closed = future.result()
            except Exception as exc:  # the drains stay; check_drains ends them
                for service, address in bids:
                    log.error("backend %s/%s: drain deadline reached, closing its sessions "
                              "failed: %s", service, address, _reason(exc))
                return
            self._end_drains(due, bids, closed)

        self.drain_closing.update(bids)
        self._close(list(bids.values()), "drain_timeout", account)

    def _end_drains(self, due: list[DrainDeadline], bids: dict[Key, int],
                    closed: dict[int, int]) -> None:
        """End the drains whose deadline closed their backends (`closed`: backend id -> how
        many), unless a command ended or replaced one meanwhile."""
        now = time.time()
        for deadline in due:
            if self.drains.pending.get(deadline.key) is not deadline:
                continue  # ended meanwhile (defensive: the commands that end one fence first)
            service, address = deadline.key
            bid = bids.get(deadline.key)
            count = int(closed.get(bid, 0)) if bid is not None else 0
            self.drains.end(deadline.key, "deadline", now, closed=count)
            log.info("backend %s/%s: drain deadline reached, closed %d %s", service, address,
                     count, self._units(service, count))

    def check_drains(self) -> None:
        """End the deadlines of backends that have no sessions or flows left (every second)."""
        if not self.drains.pending or self.dp is None:
            return
        stats = self.dp.stats()
        for key in list(self.drains.pending):
            if key not in self.drain_closing and self._remaining(key, stats) == (0, 0):
                done = self.drains.end(key, "drained", time.time())
                if done is not None:
                    self._drain_ended(done)

    def cancel_drain_timers(self) -> None:
        """Forget the armed timers (the daemon is stopping; its sessions end anyway)."""
        for timer in self.drain_timers.values():
            timer.cancel()
        self.drain_timers.clear()

    def _drain_info(self, ident: int) -> dict[str, Any]:
        found = self.drains.by_id(ident)
        if found is None:
            raise ControlError(f"no drain with id {ident} (never armed, or ended long ago)")
        now = time.time()
        service, address = found.key
        rt = self.runtime.backends.get(found.key)
        sessions, flows = self._remaining(found.key) if rt is not None else (0, 0)
        info: dict[str, Any] = {
            "id": ident, "service": service, "backend": address,
            "protocol": self._protocol(service),
            "state": self.effective_state(found.key) if rt else "removed",
            "sessions": sessions, "flows": flows}
        if isinstance(found, DrainDeadline):
            # closing: the deadline's close runs off the loop; the drain ends (outcome
            # "deadline") when it has, though its sessions may already read 0
            info.update(deadline=found.deadline, timeout=found.timeout,
                        remaining=found.remaining(now), outcome=None,
                        closing=found.key in self.drain_closing)
        else:
            info.update(deadline=None, timeout=None, remaining=0.0, outcome=found.as_dict(),
                        closing=False)
        return info

    def cmd_drain_status(self, drain_id: int) -> dict[str, Any]:
        return self._drain_info(drain_id)

    # ---- control API commands (docs/control-api.md) ----

    def commands(self) -> dict[str, Callable[..., Any]]:
        """The control socket's commands."""
        return {"status": self.cmd_status, "backends": self.cmd_backends,
                "sessions": self.cmd_sessions, "flows": self.cmd_flows,
                "enable": self.cmd_enable,
                "disable": self.cmd_disable, "drain": self.cmd_drain, "weight": self.cmd_weight,
                "maxconn": self.cmd_maxconn,
                "reload": self.cmd_reload, "vrrp": self.cmd_vrrp,
                "add-backend": self.cmd_add_backend, "remove-backend": self.cmd_remove_backend,
                "drain-status": self.cmd_drain_status, "reopen-logs": self.cmd_reopen_logs}

    def _commit(self, config: Config, file_config: Config, overlay: Overlay,
                fresh: list[ListenerGroup],
                moves: tuple[tuple[str, Listen], ...] = ()) -> None:
        """Run `config` (= `file_config` + `overlay`): carry the runtime state over, sync the
        health checks, publish its table, hand the `fresh` listeners (bound, not yet polled)
        to the data plane and give the kept listeners of `moves` to their new service. All or
        nothing: on any failure the configuration, runtime state, health checks, table and
        moved listeners are put back, the fresh listeners are closed, and the error is raised
        again. The steps that release things (listeners closed, health checks of removed
        backends) are left to the caller, after this returned."""
        self._health_targets(config)  # ValueError here: nothing changed yet
        self._agent_targets(config)
        self.finish_close()  # counted before the state a rollback puts back is saved
        old = (self.config, self.runtime, self.file_config, self.overlay)
        saved_ids = self.builder.checkpoint()
        saved_drains = dict(self.drains.pending)  # a publish below may end some of them
        # and may prune the on_down state of backends the new file drops (restored below)
        saved_on_down = (dict(self.on_down_pending), dict(self.sessions_shut_down))
        handed: list[int] = []
        moved: list[tuple[ListenerGroup, str]] = []  # (group, the service it served)
        by_listen = {(g.protocol, g.endpoint): g for g in self.listeners}
        try:
            self.config, self.file_config, self.overlay = config, file_config, overlay
            self.runtime = Runtime.from_config(config, previous=old[1])
            self._sync_health(prune=False)
            self._sync_agents(prune=False)
            self._publish()
            ids = self.builder.service_ids()
            # before they are polled; as at start, a new listener without its options is refused
            problems = (self._sync_listener_congestion(fresh)
                        + self._sync_listener_defer_accept(fresh)
                        + self._sync_listener_buffers(fresh))
            if problems:
                raise ValueError("; ".join(problems))  # logged without a traceback
            for group in fresh:  # bound only until now (reload): they listen with options
                group.listen(config.global_.listen_backlog)
            for group in fresh:
                for worker, sock in enumerate(group.sockets):
                    self.dp.add_listener(ids[group.service], sock.fileno(), worker)
                    handed.append(sock.fileno())
            for service, listen in moves:
                group = by_listen[listen]
                moved.append((group, group.service))
                self._hand_listener(group, ids[service])
                group.service = service
        except BaseException:
            for fd in handed:
                with contextlib.suppress(Exception):
                    self.dp.remove_listener(fd)
            for group in fresh:
                group.close()
            self.config, self.runtime, self.file_config, self.overlay = old
            try:
                self._sync_health()
                self._sync_agents()
                # The ids go back to what they were (those given out since stay retired);
                # if the new table went live, the old one is built again, with the same ids.
                # Published even when the table did not change: _publish() then leaves the
                # table alone but re-syncs the per-service options that are not in it (fast
                # open, PROXY protocol, congestion control, buffers, GRO), which the failed
                # reload may have switched already.
                self.builder.restore(saved_ids)
                self.on_down_pending, self.sessions_shut_down = saved_on_down
                self._publish()
                for key, armed in saved_drains.items():  # deadlines the new table ended
                    if key not in self.drains.pending:
                        self.drains.pending[key] = armed
                        self.drains.ended.pop(armed.ident, None)
                        self._arm_drain_timer(armed)
                        log.info("backend %s/%s: drain deadline restored (reload rolled back)",
                                 *key)
                ids = self.builder.service_ids()
                for group, service in moved:
                    group.service = service
                    self._hand_listener(group, ids[service])
            except Exception:
                log.exception("rollback: could not restore the running configuration fully")
            raise
        for group, service in moved:
            log.info("service %s: now serves %s (was %s)", group.service, group.endpoint,
                     service)
        self._sync_health()  # committed: stop checking what left
        self._sync_agents()

    def _hand_listener(self, group: ListenerGroup, service_id: int) -> None:
        """Make the data plane serve `group`'s sockets for `service_id` (a moved listener)."""
        for worker, sock in enumerate(group.sockets):
            with contextlib.suppress(Exception):  # not registered (a failed move): add it
                self.dp.remove_listener(sock.fileno())
            self.dp.add_listener(service_id, sock.fileno(), worker)

    def _refuse_while_stopping(self, what: str) -> None:
        if self.stop_deadline is not None:
            raise ControlError(f"{what}: refused: the daemon is stopping (draining)")

    def _keep_restart_only(self, new: Config, vrrp: bool = True) -> Config:
        """`new` with what only a restart changes taken from the running configuration: the
        RESTART_ONLY [global] keys, [metrics] listen, and (`vrrp`) the [[vrrp]] instances and
        the [[vrrp_sync_group]] tables (a reload applies those itself unless its plan says
        they wait: l4lb.vrrp.reloadplan)."""
        keep = {k: getattr(self.config.global_, k) for k in RESTART_ONLY}
        new = dataclasses.replace(new, global_=dataclasses.replace(new.global_, **keep),
                                  metrics_listen=self.config.metrics_listen)
        if not vrrp:
            return new
        return dataclasses.replace(new, vrrp=self.config.vrrp,
                                   vrrp_sync_groups=self.config.vrrp_sync_groups)

    def _apply_overlay(self, overlay: Overlay, what: str) -> None:
        """Run file + `overlay` (add-backend, remove-backend); ControlError if it fails, with
        nothing changed. What waits for a restart (a reload said so) keeps waiting: the file's
        restart-only values are not taken over here either."""
        assert self.file_config is not None
        try:
            self._commit(self._keep_restart_only(overlay.apply(self.file_config)),
                         self.file_config, overlay, [])
        except Exception as exc:
            reason = _reason(exc)
            log.error("%s: rejected, running configuration unchanged: %s", what, reason,
                      exc_info=not isinstance(exc, ValueError | OSError))
            raise ControlError(f"{what}: rejected, running configuration unchanged: "
                               f"{reason}") from None

    def cmd_add_backend(self, service: str, address: str, weight: int = 1,
                        name: str | None = None, backup: bool = False,
                        max_connections: int = 0) -> dict[str, Any]:
        self._refuse_while_stopping("add-backend")
        if name:  # absent, null or "" (the CLI without --name): the address, as in the file
            problem = backend_name_problem(name)
            if problem is not None:
                raise ControlError(f"add-backend: name: {problem}")
        overlay = self.overlay.copy()
        try:
            backend = overlay.add(self.config, service, address, weight=weight, name=name or "",
                                  backup=backup, max_connections=max_connections,
                                  file=self.file_config)
        except OverlayError as exc:
            raise ControlError(str(exc)) from None
        self._apply_overlay(overlay, "add-backend")
        if (service, address) in overlay.added:
            log.info("backend %s/%s: added at run time (weight %d%s)", service, address,
                     backend.weight, ", backup" if backend.backup else "")
        else:
            log.info("backend %s/%s: runs again as in the file (the runtime removal is undone)",
                     service, address_text(backend))
        reply = {"service": service, "backend": address, "generation": self.generation,
                 "differences": overlay.differences(service)}
        svc = self._service_config(service)
        if svc.scheduler == "round_robin" and len({b.weight for b in svc.backends}) > 1:
            reply["note"] = ROUND_ROBIN_NOTE  # the weights differ now: as the file check says
        return reply

    def cmd_remove_backend(self, service: str, backend: str) -> dict[str, Any]:
        self._refuse_while_stopping("remove-backend")
        overlay = self.overlay.copy()
        try:
            address = overlay.remove(self.config, service, backend)
        except OverlayError as exc:
            raise ControlError(str(exc)) from None
        self._apply_overlay(overlay, "remove-backend")
        log.info("backend %s/%s: removed at run time (open sessions continue)", service,
                 address)
        return {"service": service, "backend": address, "generation": self.generation,
                "differences": overlay.differences(service)}

    async def cmd_reload(self) -> dict[str, Any]:
        """`reload`, and (when it changes VRRP instances) wait until they are applied: the
        reply's `vrrp_errors` names any instance that could not start."""
        before = self.vrrp_apply
        reply = self.reload()
        task = self.vrrp_apply
        if task is not None and task is not before:  # this reload changed VRRP instances
            errors = await asyncio.shield(task)
            if errors:
                reply["vrrp_errors"] = errors
        return reply

    def reload(self) -> dict[str, Any]:
        """Re-read the configuration file and apply the difference (SIGHUP, `l4lb reload`).

        All or nothing: the new file must be valid, every new listener must bind, the connection
        log must open, and health checks, table and listeners must all be taken by the data
        plane (Daemon._commit); on any error the running configuration stays (listeners,
        health checks, table, connection log) and ControlError carries the problems. Unchanged
        listeners stay bound, open sessions are untouched, and runtime state (admin state,
        weights) of backends that stay is kept. A reload that changes nothing publishes nothing.
        """
        self._refuse_while_stopping("reload")
        try:
            new = load_file(self.config.path, running_vrrp=self.config.vrrp)
        except ConfigError as exc:
            # one log line per problem: a journal keeps each line as its own entry
            log.error("reload: %s rejected, running configuration unchanged:", self.config.path)
            for line in str(exc).splitlines():
                log.error("reload: %s", line)
            raise ControlError(
                f"reload rejected, running configuration unchanged:\n{exc}") from None
        except OSError as exc:
            log.error("reload: cannot read %s: %s", self.config.path, exc.strerror or exc)
            raise ControlError(f"reload rejected: cannot read {self.config.path}: "
                               f"{exc.strerror or exc}") from None
        previous = self.config
        overlay, notes = self.overlay.reconciled(new)
        file_config = new
        new = overlay.apply(new)
        diff = plan(previous, new)
        restart_needed = list(diff.restart_needed)
        vplan = vrrp_plan(self.config.vrrp, new.vrrp, self.config.vrrp_sync_groups,
                          new.vrrp_sync_groups)
        if vplan.restart:
            if new.vrrp != self.config.vrrp:
                restart_needed.append("vrrp")
            if new.vrrp_sync_groups != self.config.vrrp_sync_groups:
                restart_needed.append("vrrp_sync_group")
        running_vrrp = self.config.vrrp
        new = self._keep_restart_only(new, vrrp=bool(vplan.restart))
        fresh: list[ListenerGroup] = []
        new_log = new.global_.connection_log
        fresh_log: ConnLogWriter | None = None
        try:
            for service, (protocol, endpoint) in diff.bind:
                fresh.append(open_listeners(service, endpoint, self.workers,
                                            self.config.global_.listen_backlog, protocol,
                                            listen=False))
            if new_log is not None and new_log != self.connlog_path:
                fresh_log = self._open_connlog(new_log)
            if (new.services, new.global_.hash_seed) != (previous.services,
                                                         previous.global_.hash_seed):
                self._commit(new, file_config, overlay, fresh, diff.move)
            else:  # the table stays as it is: no publish, no new generation
                self.config, self.file_config, self.overlay = new, file_config, overlay
        except Exception as exc:
            for group in fresh:
                group.close()  # _commit closed them already; closing twice is harmless
            if fresh_log is not None:
                fresh_log.close()
            reason = _reason(exc)
            log.error("reload: rejected, running configuration unchanged: %s", reason,
                      exc_info=not isinstance(exc, ValueError | OSError | ConnLogError))
            raise ControlError(f"reload rejected, running configuration unchanged: "
                               f"{reason}") from None
        # Committed. What follows releases what the new configuration no longer uses.
        self._sync_udp_flow_cap()  # a [global] key: applied whether or not the table changed
        if new_log != self.connlog_path:
            self._switch_connlog(fresh_log, new_log)
        self.listeners.extend(fresh)
        for group in fresh:
            log.info("service %s: listening on %s", group.service, group.endpoint)
        released = set(diff.release)
        kept: list[ListenerGroup] = []
        for group in self.listeners:
            listen = (group.protocol, group.endpoint)
            if listen in released:
                for sock in group.sockets:
                    with contextlib.suppress(Exception):
                        self.dp.remove_listener(sock.fileno())
                group.close()
                log.info("service %s: stopped listening on %s", group.service, group.endpoint)
                continue
            kept.append(group)
        self.listeners = kept
        self._sync_listener_congestion(self.listeners)  # a changed key, a moved listener
        self._sync_listener_defer_accept(self.listeners)
        self._sync_listener_buffers(self.listeners)
        for note in notes:
            log.info("reload: %s", note)
        if new.global_.log_level != previous.global_.log_level:
            if self.log_level_pinned:
                log.info("reload: log_level %s in the file; keeping the level of --log-level",
                         new.global_.log_level)
            else:
                logging.getLogger().setLevel(LEVELS[new.global_.log_level])
        if new.global_.log_format != previous.global_.log_format:
            if self.log_format_pinned:
                log.info("reload: log_format %s in the file; keeping the format of --log-format",
                         new.global_.log_format)
            else:  # the change itself is the last line in the old format
                log.info("reload: log_format %s -> %s", previous.global_.log_format,
                         new.global_.log_format)
                set_log_format(new.global_.log_format)
        for key, before, after in diff.settings_changed:
            if key in diff.restart_needed:
                log.warning("reload: %s changed (%s -> %s): takes effect only after a restart; "
                            "keeping %s", key, before, after, before)
            elif key == "hash_seed":
                log.warning("reload: [global] hash_seed changed (%s -> %s): every maglev and "
                            "source_hash client is remapped", before, after)
        waits = []  # (what changed, what stays): each VRRP part that waits for a restart
        if "vrrp" in restart_needed:
            waits.append((vplan.restart if "vrrp_sync_group" not in restart_needed
                          else "[[vrrp]] changed", "instances"))
        if "vrrp_sync_group" in restart_needed:
            waits.append(("[[vrrp_sync_group]] changed", "groups"))
        for what, stays in waits:
            log.warning("reload: %s: takes effect only after a restart; keeping the running "
                        "%s", what, stays)
        summary = diff.summary()
        for what, stays in waits:
            summary = ("" if summary == "no change" else summary + "; ") + \
                f"{what} (needs a restart; the running {stays} stay)"
        if not vplan.restart and not vplan.empty:
            summary = ("" if summary == "no change" else summary + "; ") + vplan.summary()
            self._start_vrrp_apply(vplan, running_vrrp)
        log.info("reload: %s applied: %s", self.config.path, summary)
        return {"generation": self.generation, "digest": self.digest, "changes": summary,
                "restart_needed": restart_needed}

    def cmd_status(self) -> dict[str, Any]:
        services: list[dict[str, Any]] = []
        dp = self.dp  # stop() may clear it meanwhile, from the executor thread
        stats = dp.stats() if dp is not None else {"services": {}, "backends": {}}
        sids = self.builder.service_ids()
        panic = self.weights.panic if self.weights is not None else {}
        views: dict[str, list[dict[str, Any]]] = {}  # one pass over every backend
        for view in self.backend_views(None, stats):
            views.setdefault(view.service, []).append(view.as_dict())
        for service in self.config.services:
            counters = dict.fromkeys(SERVICE_COUNTERS, 0)
            if service.protocol == "udp":
                counters.update(dict.fromkeys(UDP_SERVICE_COUNTERS, 0))
            counters.update(stats["services"].get(sids.get(service.name), {}))
            services.append({
                "name": service.name, "protocol": service.protocol,
                "scheduler": service.scheduler,
                "listen": [e.text or str(e) for e in service.listen],
                "counters": {k: int(v) for k, v in counters.items()},
                "differences_from_file": self.overlay.differences(service.name),
                "panic": panic.get(service.name),
                "source": service.source,
                "backends": views.get(service.name, []),
            })
            if service.protocol == "tcp":  # the socket options in effect (None: the system's)
                services[-1]["tcp_options"] = {
                    "congestion_control": service.client_congestion_control,
                    "backend_congestion_control": service.backend_leg_congestion_control,
                    "backend_fast_open": service.backend_fast_open,
                    "defer_accept": service.defer_accept,
                    "proxy_protocol": service.proxy_protocol,
                    "accept_proxy": service.accept_proxy,
                    "accept_proxy_timeout": service.accept_proxy_timeout,
                    "accept_proxy_from": [str(n) for n in service.accept_proxy_from] or None,
                    "queue_timeout": service.queue_timeout,
                    "max_queue": service.max_queue if service.queue_timeout else None,
                }
                services[-1]["tcp_options"].update(self._buffer_status(service, dp, sids))
            else:  # the key, and whether GRO buffers are in use (data plane and kernel)
                sid = sids.get(service.name)
                services[-1]["udp_options"] = {
                    "udp_gro": service.udp_gro,
                    "listeners_keep_gro": service.name in self.udp_gro_kept,
                    "gro_in_effect": bool(service.udp_gro and sid is not None
                                          and dp is not None
                                          and callable(getattr(dp, "udp_gro", None))
                                          and dp.udp_gro(sid)),
                }
        return {"version": __version__, "pid": os.getpid(), "config": self.config.path,
                "config_file": os.path.normpath(os.path.join(self.cwd, self.config.path)),
                "started": self.started, "workers": self.workers,
                "state": "running" if self.stop_deadline is None else "draining",
                "drain_ends": self.stop_deadline,
                "table": {"generation": self.generation, "digest": self.digest},
                "connection_log": self.connlog_path,
                "loop": self.loop_lag.status(),
                "udp_flows": self._udp_flows_status(dp),
                "fds": {"limit": self.fd_limit, "ceiling": self.fd_ceiling or None,
                        "listener_pauses": int(stats.get("listener_pauses", 0))},
                "services": services,
                "vrrp": [instance.status() for instance in self.vrrp],
                "vrrp_sync_groups": [g.status() for g in self.sync_groups]}

    def _udp_flows_status(self, dp: Any) -> dict[str, Any]:
        """`udp_flows` of `status`: the cap on UDP flows of all services, where it comes from,
        and how many are open (None without a data plane that counts them)."""
        open_now = None
        if dp is not None and callable(getattr(dp, "udp_flows", None)):
            open_now = int(dp.udp_flows()[1])
        return {"max": self.udp_flow_limit or None, "open": open_now,
                "auto": self.config.global_.max_udp_flows is None}

    def _buffer_status(self, service: Service, dp: Any,
                       sids: dict[str, int]) -> dict[str, Any]:
        """The socket buffer part of a TCP service's tcp_options in status."""
        snd, rcv, keeps = self.listener_buffers(service.name)
        sid = sids.get(service.name)
        errors = 0  # asked only of a service with backend sizes (the reference data plane
        #             asks each of its workers)
        if ((service.backend_sndbuf or service.backend_rcvbuf) and sid is not None
                and dp is not None and callable(getattr(dp, "socket_buffer_errors", None))):
            errors = int(dp.socket_buffer_errors(sid))
        return {"client_sndbuf": service.client_sndbuf, "client_rcvbuf": service.client_rcvbuf,
                "backend_sndbuf": service.backend_sndbuf,
                "backend_rcvbuf": service.backend_rcvbuf,
                "listener_sndbuf_applied": snd, "listener_rcvbuf_applied": rcv,
                "listeners_keep_sockbuf": keeps, "backend_sockbuf_errors": errors}

    def _service_known(self, service: str) -> None:
        if service not in {s.name for s in self.config.services}:
            names = ", ".join(s.name for s in self.config.services)
            raise ControlError(f"no service named {service!r} (services: {names})")

    def cmd_backends(self, service: str) -> list[dict[str, Any]]:
        self._service_known(service)
        return [v.as_dict() for v in self.backend_views(service)]

    def _service_of(self, service: str, protocol: str, command: str) -> None:
        """`service` must exist and be of `protocol` (ControlError otherwise)."""
        self._service_known(service)
        if self._protocol(service) != protocol:
            other = "flows" if protocol == "tcp" else "sessions"
            raise ControlError(f"{command}: {service!r} is a {self._protocol(service).upper()} "
                               f"service; its {other} are listed by `{other}`")

    def cmd_sessions(self, service: str = "", backend: str = "") -> list[dict[str, Any]]:
        if service:
            self._service_of(service, "tcp", "sessions")
        dp = self.dp  # stop() may clear it meanwhile, from the executor thread
        if dp is None:
            return []
        sids = {**self.retired_services,
                **{v: k for k, v in self.builder.service_ids().items()}}
        bids = {**self.retired_backends,
                **{v: k for k, v in self.builder.backend_ids().items()}}
        want_bid: int | None = None
        if backend:
            if not service:
                raise ControlError("sessions: \"backend\" needs \"service\" too")
            rt = self._find(service, backend)
            want_bid = self.builder.backend_ids()[(service, rt.address)]
        out = []
        for sess in dp.sessions():
            svc_name = sids.get(sess["service_id"], "?")
            if service and svc_name != service:
                continue
            if want_bid is not None and sess["backend_id"] != want_bid:
                continue
            key = bids.get(sess["backend_id"])
            peer = sess.get("peer")
            out.append({**sess, "service": svc_name, "backend": key[1] if key else None,
                        "client": _hostport(sess["client"]),
                        "peer": _hostport(peer) if peer else None})
        return out

    def cmd_flows(self, service: str = "") -> list[dict[str, Any]]:
        """UDP flows (of one service, or all)."""
        if service:
            self._service_of(service, "udp", "flows")
        dp = self.dp  # stop() may clear it meanwhile, from the executor thread
        if dp is None:
            return []
        sids = {**self.retired_services,
                **{v: k for k, v in self.builder.service_ids().items()}}
        bids = {**self.retired_backends,
                **{v: k for k, v in self.builder.backend_ids().items()}}
        out = []
        for flow in dp.flows():
            svc_name = sids.get(flow["service_id"], "?")
            if service and svc_name != service:
                continue
            key = bids.get(flow["backend_id"])
            out.append({**flow, "service": svc_name, "backend": key[1] if key else None,
                        "client": _hostport(flow["client"])})
        return out

    def _find(self, service: str, backend: str) -> Any:
        try:
            return self.runtime.find(service, backend)
        except StateError as exc:
            raise ControlError(str(exc)) from None

    def _change(self, what: str, service: str, backend: str,
                fn: Callable[[], Any]) -> dict[str, Any]:
        self._refuse_while_stopping(f"backend {service}/{backend}")
        self._find(service, backend)
        try:
            rt = fn()
        except StateError as exc:
            raise ControlError(str(exc)) from None
        self._publish()
        key = (service, rt.address)
        dyn = self.dynamic().get(key, NEUTRAL)
        state = self.effective_state(key, dyn)
        held = agent_words(dyn)
        replaced = (f"; its check's misc_dynamic weight {dyn.exec_weight} replaces it"
                    if dyn.exec_weight is not None else "")
        log.info("backend %s/%s: %s (state %s, weight %d%s%s)", service, rt.address, what,
                 state, rt.weight, replaced, f"; its agent holds it at {held}" if held else "")
        reply = {"service": service, "backend": rt.address, "state": state,
                 "weight": rt.weight, "generation": self.generation}
        if held:
            reply["agent"] = held
        if dyn.exec_weight is not None:
            reply["dynamic_weight"] = dyn.exec_weight
        return reply

    def cmd_enable(self, service: str, backend: str) -> dict[str, Any]:
        return self._change("enabled", service, backend,
                            lambda: self.runtime.set_admin(service, backend, "up"))

    def cmd_disable(self, service: str, backend: str) -> dict[str, Any]:
        return self._change("disabled (maintenance)", service, backend,
                            lambda: self.runtime.set_admin(service, backend, "maint"))

    def cmd_drain(self, service: str, backend: str, timeout: str = "") -> dict[str, Any]:
        """Drain: no new sessions. With `timeout` (a duration, "5m"), the daemon closes what is
        left at the deadline; without, a deadline armed earlier is cancelled."""
        ms: int | None = None
        if timeout:
            try:
                ms = parse_duration_ms(timeout)
            except ValueError as exc:
                raise ControlError(f"drain: timeout: {exc}") from None
            if ms > MAX_DRAIN_TIMEOUT_MS:
                raise ControlError(f"drain: timeout: {timeout!r} is too long (at most 24h)")
        rt = self._find(service, backend)
        key = (service, rt.address)
        what = "draining" if ms is None else \
            f"draining, closing what is left in {format_duration_ms(ms)}"
        result = self._change(what, service, backend,
                              lambda: self.runtime.set_admin(service, backend, "drain"))
        now = time.time()
        if ms is None:
            done = self.drains.end(key, "cancelled", now, reason="drained without a timeout")
            if done is not None:
                self._drain_ended(done)
            return result
        armed, replaced = self.drains.arm(key, now, ms / 1000)
        if replaced is not None:
            self._drain_ended(replaced)
        if self._remaining(key) == (0, 0):
            done = self.drains.end(key, "drained", now)
            if done is not None:
                self._drain_ended(done)
        else:
            self._arm_drain_timer(armed)
        result["drain"] = self._drain_info(armed.ident)
        return result

    def cmd_weight(self, service: str, backend: str, weight: int) -> dict[str, Any]:
        reply = self._change(f"weight set to {weight}", service, backend,
                             lambda: self.runtime.set_weight(service, backend, weight))
        if self._service_config(service).scheduler == "round_robin":  # in turn, whatever
            reply["note"] = ROUND_ROBIN_NOTE
        return reply

    def cmd_maxconn(self, service: str, backend: str, max_connections: int) -> dict[str, Any]:
        """Set the backend's connection limit at run time (0: none; HAProxy's `set maxconn
        server`). Its agent's `maxconn:` is a second limit: the stricter one holds."""
        what = (f"max_connections set to {max_connections}" if max_connections
                else "max_connections set to 0 (no limit)")
        reply = self._change(what, service, backend,
                             lambda: self.runtime.set_max_connections(service, backend,
                                                                      max_connections))
        key = (service, reply["backend"])
        reply["max_connections"] = self.runtime.backends[key].max_connections
        reply["effective_max_connections"] = (
            self.weights.max_connections.get(key, 0) if self.weights is not None else 0)
        return reply

    def _service_config(self, service: str) -> Service:
        """The running configuration of `service` (a name the caller has checked)."""
        return next(s for s in self.config.services if s.name == service)

    def begin_stop(self, timeout: float) -> None:
        """Enter the stop (on the loop, before the blocking drain): health checks and timers
        end, every listener leaves the data plane and is closed, so that new clients are
        refused at once, and commands that change anything are refused from now on."""
        self.finish_close()  # an on_down close in flight ends and is counted first
        self.stop_deadline = time.time() + timeout
        if self.checker is not None:
            self.checker.stop()
            self.checker = None
        if self.agents is not None:
            self.agents.stop()
            self.agents = None
        for handle in (self.publish_handle, self.ramp_handle):
            if handle is not None:
                handle.cancel()
        self.publish_handle = self.ramp_handle = None
        for group in self.listeners:
            if self.dp is not None:
                for sock in group.sockets:
                    with contextlib.suppress(Exception):
                        self.dp.remove_listener(sock.fileno())
            group.close()
        self.listeners = []

    def stop_now(self) -> int:
        """Cut a running drain short (a second signal): close every session and flow the data
        plane still has, so that stop() ends at once; the closes are logged as usual. Returns
        how many were closed. Safe while stop() runs in another thread."""
        dp = self.dp
        self.stop_deadline = time.time()
        if dp is None or not callable(getattr(dp, "close_backend_sessions", None)):
            return 0
        bids = {bid for _, backends in self.connlog_ids for bid in backends}
        with contextlib.suppress(Exception):  # the workers may be gone already
            bids |= {int(s["backend_id"]) for s in dp.sessions()}
            if callable(getattr(dp, "flows", None)):
                bids |= {int(f["backend_id"]) for f in dp.flows()}
        closed = 0
        with contextlib.suppress(Exception):  # one call for all of them (one pass per worker)
            closed = sum(dp.close_backend_sessions(sorted(b for b in bids if b >= 0)).values())
        return closed

    def stop(self, timeout: float) -> None:
        """Stop accepting, drain for up to `timeout` seconds, close everything. Idempotent.

        Blocks for the drain: serve() runs it off the loop, after begin_stop()."""
        if self.stop_deadline is None:
            self.begin_stop(timeout)
        closing = self.closing  # begin_stop() ended it, unless it began since (a late publish)
        if closing is not None:
            with contextlib.suppress(Exception):  # counted by finish_close() on the loop
                closing[0].result()
        if self.close_pool is not None:
            self.close_pool.shutdown(wait=True)
            self.close_pool = None
        if self.dp is not None:
            self.dp.stop(timeout)
            self.pump_connlog()  # the closes of the drain and of the stop itself
            with self.connlog_lock:
                self.dp = None
        if self.connlog is not None:
            with self.connlog_lock:
                writer, self.connlog = self.connlog, None
            writer.close()


def fd_ceiling(nofile: int) -> int:
    """The data plane's descriptor ceiling for a soft RLIMIT_NOFILE of `nofile`: the top
    sixteenth of the limit, at least 32 and at most 1024 descriptors, is kept for the control
    plane (control socket connections, metrics clients, health probes, log files), so that
    `l4lb status` still connects when the traffic has taken everything else. 0 (no ceiling)
    for an unlimited or absurdly small limit."""
    if nofile == resource.RLIM_INFINITY or nofile < 64:
        return 0
    return min(nofile - min(1024, max(32, nofile // 16)), U32_MAX)


def udp_flow_cap(setting: int | None, nofile: int) -> int:
    """The cap on UDP flows of all services together: `setting` ([global] max_udp_flows), or
    for None ("auto") half of `nofile`, the soft RLIMIT_NOFILE, so that UDP flows (one
    descriptor each) can never take the descriptors the TCP relay needs. Never below 1, never
    above 4294967295 (RLIM_INFINITY, -1 here, gives that)."""
    if setting is not None:
        return setting
    if nofile == resource.RLIM_INFINITY:
        return U32_MAX
    return max(1, min(nofile // 2, U32_MAX))


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (`l4lb run` does it at start)
    and return the soft limit now in force. Every TCP session holds 2 descriptors and up to 2
    pipes (4 more) while data waits; every UDP flow 1. A systemd unit sets the hard limit with
    LimitNOFILE= (docs/operations.md, "File descriptors")."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass  # keep the soft limit; start() logs what it is
    return int(soft)


ROUND_ROBIN_NOTE = ('scheduler "round_robin" ignores weights: only 0 (no new sessions) '
                    'changes anything; use "weighted_round_robin" for shares')  # weight replies

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                   signal.SIGUSR2)


async def serve(daemon: Daemon, tick: Callable[[Daemon], None] | None = None,
                tick_interval: float = 1.0, duration: float | None = None,
                control_path: str | None = None) -> int:
    """Run until a signal (or `duration` seconds); return the exit code.

    `tick` is called every `tick_interval` seconds on the event loop (the demo's live line).
    The control socket is served at `control_path` (None: no control socket); it is bound
    before the loop starts, and a failure raises ControlError or OSError.

    The stop: VRRP leaves first, then the listeners close (new clients are refused), then the
    drain runs off the loop for up to `[global] shutdown_timeout` as it is at that moment (a
    reload may have changed it). Signal handlers, the control socket (`status` says
    "draining"; changes are refused) and the metrics server stay until the drain is over, so
    a second SIGTERM/SIGINT during it closes what is left at once, the closes are logged and
    the exit code is still 0.
    """
    loop = asyncio.get_running_loop()
    install_loop_exception_handler(loop)  # out of fds: one line per 10 s, not 100 per accept
    lag_timer: list[asyncio.TimerHandle | None] = [None]

    def sample_lag(due: float) -> None:
        now = loop.time()
        stall = daemon.loop_lag.observe(due, now)
        if stall is not None:
            log.warning("daemon: event loop stalled for %.0f ms: VRRP adverts, health probes "
                        "and the control socket waited that long", stall * 1000)
        lag_timer[0] = loop.call_at(now + LAG_INTERVAL, sample_lag, now + LAG_INTERVAL)

    lag_timer[0] = loop.call_at(loop.time() + LAG_INTERVAL, sample_lag,
                                loop.time() + LAG_INTERVAL)
    done = asyncio.Event()
    drain_timeout: list[float | None] = [None]  # None: [global] shutdown_timeout at the stop
    signals_seen: list[int] = []
    draining = [False]  # the drain runs (begin_stop was called)

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGUSR1:
            daemon.reopen_logs("SIGUSR1")
            return
        if signum == signal.SIGUSR2:  # keepalived's habit (a stats dump): never fatal here
            daemon.log_summary("SIGUSR2")
            return
        if signum == signal.SIGHUP:
            if draining[0]:
                log.warning("daemon: SIGHUP received while stopping: no reload")
                return
            log.info("daemon: SIGHUP received: reloading %s", daemon.config.path)
            with contextlib.suppress(ControlError):  # already logged with every error
                daemon.reload()
            return
        signals_seen.append(signum)
        if draining[0]:
            closed = daemon.stop_now()
            log.info("daemon: %s received: stopping now (closing %d open sessions and flows)",
                     name, closed)
            return
        if len(signals_seen) > 1 or signum == signal.SIGINT:
            drain_timeout[0] = 0.0
            log.info("daemon: %s received: stopping now", name)
        else:
            log.info("daemon: %s received: draining for up to %.1fs", name,
                     daemon.config.global_.shutdown_timeout)
        done.set()

    control: ControlServer | None = None
    if control_path:
        control_cap = control_cap_for(daemon.fd_share())
        control = ControlServer(control_path, daemon.commands(), max_connections=control_cap)
        await control.start()
        if control_cap != control_cap_for(None):
            log.info("control: at most %d connections served at once: an eighth of the %d file "
                     "descriptors kept for the control plane", control_cap, daemon.fd_share())
    http: HttpServer | None = None
    if daemon.config.metrics_listen is not None:
        try:
            http = await start_http(str(daemon.config.metrics_listen), daemon.cmd_status,
                                    health=daemon.health_stats,
                                    probe_latency=daemon.probe_latencies,
                                    connlog=daemon.connlog_stats, fd_share=daemon.fd_share())
        except BaseException:
            if control is not None:
                await control.close()
            raise
        http.exporter.counters["l4lb_log_lines_dropped"] = (
            "Log lines dropped because stderr was blocked (the log never blocks the daemon).",
            dropped_lines)
        log.info("metrics: serving /metrics and the status page on http://%s/",
                 daemon.config.metrics_listen)
        caps = http.caps
        if caps != caps_for(None):
            log.info("metrics: at most %d connections served at once (%d from one address, %d "
                     "from one IPv6 /64) and %d refused ones answered: a quarter each of the %d "
                     "file descriptors kept for the control plane", caps.clients, caps.per_peer,
                     caps.per_prefix, caps.refusing, daemon.fd_share())

    async def close_servers() -> None:
        if lag_timer[0] is not None:
            lag_timer[0].cancel()
        for signum in HANDLED_SIGNALS:
            loop.remove_signal_handler(signum)
        if http is not None:
            await http.close()
        if control is not None:
            await control.close()

    for signum in HANDLED_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    daemon.start_health()
    daemon.start_agents()
    daemon.start_connlog()
    try:
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
                    daemon.check_drains()
                    try:
                        daemon.release_retired_ids()
                    except Exception:  # retried next second; never a reason to stop serving
                        log.exception("table: could not release retired ids")
                if tick is not None and not done.is_set():
                    tick(daemon)
                if deadline is not None and loop.time() >= deadline:
                    drain_timeout[0] = 0.0
                    break
        finally:
            daemon.cancel_drain_timers()
            # Hand the VIPs over first (priority 0: the peer takes over after its skew time),
            # then drain: sessions through this node may finish while new ones already go to
            # the peer.
            await daemon.stop_vrrp()
        timeout = drain_timeout[0]
        if timeout is None:
            timeout = daemon.config.global_.shutdown_timeout
        daemon.begin_stop(timeout)
        draining[0] = True
        # The drain blocks (the data plane waits for sessions without the GIL): run it off the
        # loop. The connection log timer keeps reading the record rings meanwhile (stop() reads
        # them a last time after the data plane stopped).
        await loop.run_in_executor(None, daemon.stop, timeout)
    finally:
        await close_servers()
    if daemon.connlog_timer is not None:
        daemon.connlog_timer.cancel()
        daemon.connlog_timer = None
    log.info("daemon: stopped")
    return EXIT_OK
