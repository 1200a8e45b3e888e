"""The validated configuration: frozen dataclasses, produced only by l4lb.config.load.

Every value here has been checked; code that receives a Config never re-validates it.
Durations are float seconds. Addresses keep the text the user wrote (`text`) because the CLI and
the control API show a backend exactly as it is written in the file.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from l4lb.health.agentsend import render as render_send
from l4lb.health.settings import HealthSettings
from l4lb.proxyproto import ProxyVersion
from l4lb.vrrp.settings import VrrpSettings

Protocol = Literal["tcp", "udp"]
Scheduler = Literal[
    "round_robin", "weighted_round_robin", "least_conn", "random_two", "source_hash", "maglev"
]
HashKey = Literal["src_ip", "src_ip_port"]
FlowKey = Literal["src_ip_port", "src_ip"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]

SCHEDULERS: tuple[Scheduler, ...] = (
    "round_robin", "weighted_round_robin", "least_conn", "random_two", "source_hash", "maglev",
)
HASH_KEYS: tuple[HashKey, ...] = ("src_ip", "src_ip_port")


def hostport(host: str, port: int) -> str:
    """host:port as written everywhere l4lb shows an address: "[v6]:port" for IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, order=True)
class Endpoint:
    """An IP address and port, e.g. `127.0.0.1:9001` or `[::1]:9001`."""

    host: str  # canonical address text (ipaddress module form, no brackets)
    port: int  # 1..65535 (listen addresses may not use 0 either)
    text: str = field(compare=False, default="")  # as written in the file

    @property
    def family(self) -> int:
        """4 or 6."""
        return ipaddress.ip_address(self.host).version

    @property
    def packed(self) -> bytes:
        """The address in network order, 4 or 16 bytes."""
        return ipaddress.ip_address(self.host).packed

    def __str__(self) -> str:
        return hostport(self.host, self.port)


@dataclass(frozen=True)
class Backend:
    """One `[[services.backends]]` entry."""

    address: Endpoint
    name: str  # optional `name` key; defaults to the address text
    weight: int = 1  # 1..256 in the file (0 only through the runtime API)
    max_connections: int = 0  # 0 = unlimited
    backup: bool = False
    # source address of the connections (UDP: flow sockets) to this backend, bound with port 0
    # before connect(): the backend's own `source`, else the service's; None = the kernel's
    # choice (docs/configuration.md, "Source address")
    source: str | None = None
    # the backend's own agent (`agent_port`, `agent_address`), overriding [services.agent]'s
    # port and address for it; None = the service's (docs/health.md, "Agent checks")
    agent_port: int | None = None
    agent_address: str | None = None
    agent_send: bytes | None = None  # the backend's own `send` (a template); None: the service's


@dataclass(frozen=True)
class AgentSettings:
    """`[services.agent]`: poll an agent on (or for) each backend over TCP; its one-line
    reply sets the backend's weight percentage, admin state and health (HAProxy's
    agent-check; docs/health.md, "Agent checks")."""

    port: int | None = None  # the agents' TCP port; None: every backend has agent_port
    interval: float = 2.0  # seconds from the start of one poll to the start of the next
    timeout: float = 1.0  # connect, send and read of one poll; <= interval
    # written once connected (HAProxy's agent-send), a template (l4lb.health.agentsend):
    # `send_for` expands it for one backend; b"": nothing
    send: bytes = b""
    address: str | None = None  # the agents' IP address; None: each backend's own

    def target(self, backend: Backend) -> tuple[str, int]:
        """The (address, port) of `backend`'s agent."""
        host = backend.agent_address or self.address or backend.address.host
        port = backend.agent_port if backend.agent_port is not None else self.port
        assert port is not None  # the validator requires one of the two
        return host, port

    def send_for(self, service: str, backend: Backend) -> bytes:
        """What is written to `backend`'s agent: its own `agent_send`, else `send`, with the
        placeholders expanded."""
        template = backend.agent_send if backend.agent_send is not None else self.send
        return render_send(template, {"service": service, "name": backend.name,
                                      "address": str(backend.address.host),
                                      "port": str(backend.address.port)})


@dataclass(frozen=True)
class Service:
    """One `[[services]]` entry."""

    name: str
    protocol: Protocol
    listen: tuple[Endpoint, ...]
    backends: tuple[Backend, ...]
    scheduler: Scheduler = "round_robin"
    hash_key: HashKey = "src_ip"
    connect_timeout: float = 3.0
    idle_timeout: float = 300.0
    retries: int = 2
    max_connections: int = 0
    maglev_table_size: int = 65537  # prime
    health: HealthSettings | None = None  # [services.health]; None = no active checks
    agent: AgentSettings | None = None  # [services.agent]; None = no agent checks
    # UDP only (protocol = "udp"); TCP services keep the defaults:
    udp_idle_timeout: float = 30.0  # a flow expires after this long without a datagram
    max_flows: int = 0  # flows at once, all workers together; 0 = unlimited
    responses: int = 0  # close a flow after this many replies; 0 = never (1 suits DNS)
    session: FlowKey = "src_ip_port"  # what identifies a flow: client address and port, or address
    # several datagrams of one sender per read, relayed as one GSO run (UDP_GRO on the
    # listeners and upstream sockets; docs/configuration.md, udp_gro)
    udp_gro: bool = True
    # TCP only: TCP congestion control (a Linux algorithm name; None = the system default, no
    # setsockopt): `congestion_control` for both legs, `backend_congestion_control` for the
    # backend leg alone (it wins over congestion_control there)
    congestion_control: str | None = None
    backend_congestion_control: str | None = None
    # TCP only: TCP Fast Open towards the backends (the client's first bytes ride in the SYN
    # when they are already waiting; docs/configuration.md, backend_fast_open)
    backend_fast_open: bool = False
    # TCP only: accept a client's connection only once its first bytes arrived (TCP_DEFER_ACCEPT
    # on the listeners, 1 s); docs/configuration.md, defer_accept
    defer_accept: bool = False
    # TCP only: SO_SNDBUF / SO_RCVBUF in bytes, 0 = the kernel's autotuning (no setsockopt); the
    # client leg's on the listeners (accepted sockets inherit them), the backend leg's set by the
    # data plane before connect(); docs/configuration.md, "Socket buffers"
    client_sndbuf: int = 0
    client_rcvbuf: int = 0
    backend_sndbuf: int = 0
    backend_rcvbuf: int = 0
    # TCP only: a PROXY protocol header ("v1" text, "v2" binary) ahead of each backend
    # connection, telling the backend the client's address; docs/configuration.md,
    # proxy_protocol
    proxy_protocol: ProxyVersion = "off"
    # TCP only: every client connection starts with a PROXY protocol header (v1 or v2, told
    # apart by its first bytes) from a balancer in front, whose addresses become the client's;
    # it must be complete within accept_proxy_timeout seconds; docs/configuration.md,
    # accept_proxy
    accept_proxy: bool = False
    accept_proxy_timeout: float = 5.0
    # TCP only, with accept_proxy: the sources that send the header (the balancers in front);
    # a client outside every prefix connects directly and sends none. () = every client sends
    # one. At most 64 prefixes; docs/configuration.md, accept_proxy_from
    accept_proxy_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # TCP only: how long (seconds) a client may wait, accepted and unread, while every
    # eligible backend is at its max_connections; 0 = no queue, such a client is refused at
    # once (`rejected`). docs/configuration.md, queue_timeout
    queue_timeout: float = 0.0
    # TCP only, with queue_timeout: clients waiting at once (all workers together); one more
    # is refused (`rejected`). docs/configuration.md, max_queue
    max_queue: int = 1024
    # the service's `source` as written (its backends without their own inherit it: read
    # Backend.source, the effective one); None = none
    source: str | None = None

    @property
    def client_congestion_control(self) -> str | None:
        """The algorithm of the client leg (set on the listeners), None: system default."""
        return self.congestion_control

    @property
    def backend_leg_congestion_control(self) -> str | None:
        """The algorithm of the backend leg (set by the data plane before connect)."""
        return self.backend_congestion_control or self.congestion_control


@dataclass(frozen=True)
class GlobalSettings:
    """The `[global]` table."""

    workers: int = 0  # 0 = one per CPU
    control_socket: str = "/run/l4lb/l4lb.sock"
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    hash_seed: int = 0  # seed of the flow hash; equal on both nodes of a pair
    shutdown_timeout: float = 30.0  # graceful drain on SIGTERM before the rest are closed
    listen_backlog: int = 4096
    connection_log: str | None = None  # JSON-lines file of closed sessions; None = off
    # UDP flows open at once, all services together (each holds a file descriptor); None =
    # "auto": half of the descriptor limit `l4lb run` works with (daemon.udp_flow_cap)
    max_udp_flows: int | None = None


@dataclass(frozen=True)
class SyncGroupSettings:
    """A `[[vrrp_sync_group]]` table: [[vrrp]] instances that move together (l4lb.vrrp.sync)."""

    name: str  # group name for logs, status and the notify program ("G1")
    instances: tuple[str, ...]  # names of its [[vrrp]] instances, at least two
    notify: str | None = None  # absolute path, exec'd as: NOTIFY GROUP NAME STATE
    tracking_weight: bool = False  # members may track services with a weight (keepalived's
    # sync_group_tracking_weight); otherwise a member's weight must be 0 (FAULT)


@dataclass(frozen=True)
class Config:
    """A whole validated configuration file."""

    path: str  # file it came from ("<demo>" for the embedded default)
    global_: GlobalSettings
    services: tuple[Service, ...]
    vrrp: tuple[VrrpSettings, ...] = ()  # [[vrrp]] instances
    vrrp_sync_groups: tuple[SyncGroupSettings, ...] = ()  # [[vrrp_sync_group]] tables
    metrics_listen: Endpoint | None = None  # [metrics] listen: Prometheus + status page; None=off
