"""Check a parsed TOML document and build the frozen Config, collecting every problem at once.

`validate(doc, locator, file)` walks the document the way `tomllib` returned it, reads each known
key with its type and range rules, and records a Diagnostic (with the position the Locator finds)
for every problem instead of stopping at the first. Cross-checks (duplicate service names,
overlapping listen addresses, duplicate backends) run as entries are read, so the second of two
clashing entries is the one reported and the message names the first. If anything was reported
the result is the list of diagnostics; otherwise it is the Config. Checks that involve several
keys or tables (a UDP health check without `port`, two [[vrrp]] instances with one name or
router, health.source against the backends' family) read the values as written, so they are
reported together with the other problems of their tables, not after those were fixed.

Some questions need the host, and they go only through the `host` object the caller passes
(l4lb.config.host; None skips them): does the connection log's directory exist; can this
process open a raw socket, so that a `kind = "syn"` health check fails here without
CAP_NET_RAW and the daemon refuses to start or reload instead of marking every backend
unprobeable; can it set each service's `congestion_control` / `backend_congestion_control`;
for a service with `backend_fast_open`, does net.ipv4.tcp_fastopen let clients use TCP Fast
Open; can it bind each `health.source`; and do the interfaces and addresses a [[vrrp]] table
names (interface, source_address, track_interfaces, a VIP's `dev`) exist, so that an instance
does not fail only after the listeners were bound, or sit in FAULT for ever. Nothing else does
I/O here.

Invalid values are replaced by the model's defaults while checking continues; such a Config is
never returned, because any error means the diagnostics are returned instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import difflib
import errno
import ipaddress
import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from l4lb.config.addresses import parse_endpoint
from l4lb.config.durations import parse_duration_ms, suggest_duration
from l4lb.config.errors import Diagnostic, KeyPath, quote
from l4lb.config.host import HostChecks
from l4lb.config.locate import Locator
from l4lb.config.model import (
    HASH_KEYS,
    SCHEDULERS,
    AgentSettings,
    Backend,
    Config,
    Endpoint,
    FlowKey,
    GlobalSettings,
    LogFormat,
    LogLevel,
    Protocol,
    Service,
    SyncGroupSettings,
)
from l4lb.dataplane import CC_NAME_MAX, SOCKBUF_MAX, SOCKBUF_MIN, congestion_control_name_ok
from l4lb.health.agentsend import problem as agent_send_problem
from l4lb.health.settings import (
    DEFAULT_SETTINGS,
    EXEC_FIELDS,
    HTTP_FIELDS,
    HTTP_METHODS,
    INITIAL_STATES,
    MAX_JITTER,
    ON_DOWN,
    PROBE_KINDS,
    PROXY_KINDS,
    TLS_FIELDS,
    TLS_VERIFY,
    TLS_VERSIONS,
    HealthSettings,
    HealthSettingsError,
    parse_status_spec,
)
from l4lb.proxyproto import PROXY_VERSIONS, ProxyVersion
from l4lb.table.maglev import is_prime
from l4lb.vrrp.settings import (
    MAX_NAME,
    TrackService,
    VipInterface,
    VipSyntaxError,
    VrrpSettings,
    VrrpSettingsError,
    is_ifname,
    parse_vip,
)

MAX_SERVICES = 1024  # DP_MAX_SERVICES of the forwarding table
MAX_BACKENDS = 65536  # DP_MAX_BACKENDS, over all services
MAX_DURATION_MS = 24 * 3_600_000  # every duration is at most 24h
U32_MAX = 2**32 - 1
MAX_WORKERS = 256
MAX_RETRIES = 16
MAX_QUEUE = 65536  # max_queue: waiting clients of one service (each holds an fd and a session)
TFO_CLIENT = 0x1  # net.ipv4.tcp_fastopen: clients may use TCP Fast Open
MAX_WEIGHT = 256
MAX_MAGLEV_TABLE_SIZE = 1_000_003
MAX_SOCKET_PATH_BYTES = 107  # sun_path is 108 bytes including the terminating NUL
NAME_MAX_LEN = 64
MAX_LISTED = 8  # interface names listed in a message

PROTOCOLS: tuple[Protocol, ...] = ("tcp", "udp")
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

TOP_KEYS = ("global", "services", "vrrp", "vrrp_sync_group", "metrics")
METRICS_KEYS = ("listen",)
GLOBAL_KEYS = (
    "workers", "control_socket", "log_level", "log_format", "hash_seed", "shutdown_timeout",
    "listen_backlog", "connection_log", "max_udp_flows",
)
SERVICE_KEYS = (
    "name", "protocol", "listen", "scheduler", "hash_key", "connect_timeout", "idle_timeout",
    "retries", "max_connections", "maglev_table_size", "backends", "health",
    "udp_idle_timeout", "max_flows", "responses", "session", "congestion_control",
    "backend_congestion_control", "backend_fast_open", "defer_accept", "udp_gro",
    "client_sndbuf", "client_rcvbuf", "backend_sndbuf", "backend_rcvbuf", "proxy_protocol",
    "accept_proxy", "accept_proxy_timeout", "source", "accept_proxy_from", "agent",
    "queue_timeout", "max_queue",
)
SOCKBUF_KEYS = ("client_sndbuf", "client_rcvbuf", "backend_sndbuf", "backend_rcvbuf")
UDP_ONLY_KEYS = ("udp_idle_timeout", "max_flows", "responses", "session", "udp_gro")
TCP_ONLY_KEYS = {"connect_timeout": "", "retries": "", "idle_timeout": "udp_idle_timeout",
                 "max_connections": "max_flows", "congestion_control": "",
                 "backend_congestion_control": "", "backend_fast_open": "",
                 "defer_accept": "", "client_sndbuf": "", "client_rcvbuf": "",
                 "backend_sndbuf": "", "backend_rcvbuf": "",
                 "proxy_protocol": "", "accept_proxy": "",
                 "accept_proxy_timeout": "", "accept_proxy_from": "",
                 "queue_timeout": "", "max_queue": ""}  # key -> UDP key instead
FLOW_KEYS: tuple[FlowKey, ...] = ("src_ip_port", "src_ip")
BACKEND_KEYS = ("address", "name", "weight", "max_connections", "backup", "source",
                "agent_port", "agent_address", "agent_send")
AGENT_KEYS = ("port", "interval", "timeout", "send", "address")  # [services.agent]
VRRP_KEYS = (
    "name", "interface", "virtual_router_id", "priority", "advert_interval", "version",
    "preempt", "preempt_delay", "vips", "unicast_peers", "garp_repeat", "garp_refresh",
    "track_interfaces", "track_services", "notify", "source_address", "auth_pass",
)
SYNC_GROUP_KEYS = ("name", "instances", "notify", "tracking_weight")
HEALTH_KEYS = (
    "kind", "interval", "timeout", "rise", "fall", "start_period", "down_interval",
    "fast_interval", "jitter",
    "port", "source", "send", "send_hex", "expect", "expect_regex", "initial_state", "max_fails",
    "fail_timeout", "min_healthy", "slow_start", "send_proxy",
    "on_down", *HTTP_FIELDS, "http_expect_body_regex", *EXEC_FIELDS, "tls", *TLS_FIELDS,
)
TLS_FILE_KEYS = ("tls_ca_file", "tls_client_cert", "tls_client_key")  # read at load
HTTP_KEYS = (*HTTP_FIELDS, "http_expect_body_regex")  # [services.health] keys of kind "http"
# a key and the one written instead of it ("send_hex" for "send"): the pair's field
_ALIASES = (("send_hex", "send"), ("expect_regex", "expect"),
            ("http_expect_body_regex", "http_expect_body"))

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
CLIENT = "client"  # `source = "client"`: transparent, each connection leaves from its client
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_PROXY_FROM = 64  # accept_proxy_from entries per service (docs/forwarding-table.md)

_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_VRRP_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # a [[vrrp]] or [[vrrp_sync_group]] name
# keepalived's sync group keys that l4lb spells or places otherwise
_GROUP_TRACK = ("l4lb tracks on the members: a member's fault puts the whole group in FAULT, "
                "so list it in one member's")
_SYNC_GROUP_HOMES = {
    "group": "write the members as instances = [\"VI_1\", \"VI_2\"]",
    "track_interfaces": f"{_GROUP_TRACK} track_interfaces",
    "track_interface": f"{_GROUP_TRACK} track_interfaces",
    "track_services": f"{_GROUP_TRACK} track_services",
    "track_script": f"{_GROUP_TRACK} track_services",
    "global_tracking": "write tracking_weight = true (keepalived's sync_group_tracking_weight)",
    "sync_group_tracking_weight": "write tracking_weight = true",
    "notify_master": "one notify program gets the state as its third argument",
    "notify_backup": "one notify program gets the state as its third argument",
    "notify_fault": "one notify program gets the state as its third argument",
    "notify_stop": "one notify program gets the state as its third argument",
}

_GLOBAL_DEFAULTS = GlobalSettings()
_SERVICE_DEFAULTS = Service(name="", protocol="tcp", listen=(), backends=())
_PLACEHOLDER_ENDPOINT = Endpoint(host="0.0.0.0", port=0)  # stands in for an invalid address
_BACKEND_DEFAULTS = Backend(address=_PLACEHOLDER_ENDPOINT, name="")

# Where a key that is unknown in one table does belong, for a better hint than "did you mean".
_HOME_GLOBAL = "it belongs in [global]"
_HOME_SERVICE = "it belongs in a [[services]] table"
_HOME_BACKEND = "it belongs in a [[services.backends]] table"
_HOME_SERVICE_FROM_BACKEND = (
    "it is a service key: move it above the service's first [[services.backends]]"
)

T = TypeVar("T", bound=str)


def _homes(own: Sequence[str], pairs: Sequence[tuple[Sequence[str], str]]) -> dict[str, str]:
    homes: dict[str, str] = {}
    for keys, hint in pairs:
        for key in keys:
            if key not in own:
                homes.setdefault(key, hint)
    return homes


_TOP_HOMES = _homes(TOP_KEYS, [(GLOBAL_KEYS, _HOME_GLOBAL), (SERVICE_KEYS, _HOME_SERVICE),
                               (BACKEND_KEYS, _HOME_BACKEND)])
_GLOBAL_HOMES = _homes(GLOBAL_KEYS, [(SERVICE_KEYS, _HOME_SERVICE), (BACKEND_KEYS, _HOME_BACKEND)])
_SERVICE_HOMES = _homes(SERVICE_KEYS, [(GLOBAL_KEYS, _HOME_GLOBAL), (BACKEND_KEYS, _HOME_BACKEND)])
_BACKEND_HOMES = _homes(BACKEND_KEYS, [(SERVICE_KEYS, _HOME_SERVICE_FROM_BACKEND),
                                       (GLOBAL_KEYS, _HOME_GLOBAL)])


def describe(value: object) -> str:
    """A TOML value's type for a message, with the value itself when it is short."""
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        text = str(value) if abs(value) < 10**30 else "a very large number"
        return f"an integer ({text})"
    if isinstance(value, float):
        return f"a float ({value!r})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "..."
        return f"a string ({quote(shown)})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.datetime):
        return "a date-time"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, datetime.time):
        return "a time"
    return f"a {type(value).__name__}"


def suggest(word: str, choices: Sequence[str]) -> str | None:
    """The choice `word` was most likely meant to be (case-insensitive), or None."""
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return lowered[word.lower()]
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def nearest_primes(n: int) -> list[int]:
    """The largest prime below n (if any) and the smallest prime above n."""
    found = []
    below = n - 1
    while below >= 2 and not is_prime(below):
        below -= 1
    if below >= 2:
        found.append(below)
    above = n + 1
    while not is_prime(above):
        above += 1
    found.append(above)
    return found


@dataclass(frozen=True)
class _Scope:
    """One table of the document: where it is and how messages name it and its keys."""

    path: KeyPath  # key path of the table
    table: str  # the table in messages: "[global]", 'services[0] ("web")', '...: backends[1]'
    prefix: str  # put before a key name: "global.", 'services[0] ("web"): ', '...: backends[1].'

    def label(self, key: str) -> str:
        return self.prefix + key


_TOP = _Scope(path=(), table="the top level", prefix="")


@dataclass
class _ListenClaim:
    """A listen address already taken, to report the first owner when a second one clashes."""

    service: int  # index of the owning service
    service_label: str  # e.g. 'services[0] ("web")'
    index: int  # index in that service's listen array
    endpoint: Endpoint


class _Checker:
    """Reads the document, records diagnostics and builds the model objects."""

    def __init__(self, locator: Locator, file: str, host: HostChecks | None = None,
                 running_vrrp: Collection[VrrpSettings] = ()) -> None:
        self.locator = locator
        self.file = file
        self.host = host  # answers the questions about this host; None = skip them
        # instances a reload keeps: no host checks for them (compared as the [[vrrp]] table
        # reads, before a [[vrrp_sync_group]] marks its members)
        self.running_vrrp = [dataclasses.replace(v, sync_group=None) for v in running_vrrp]
        self.diagnostics: list[Diagnostic] = []
        self.service_names: dict[str, int] = {}
        self.listen_exact: dict[tuple[str, str, int], _ListenClaim] = {}
        self.listen_wildcard: dict[tuple[str, int, int], _ListenClaim] = {}
        self.listen_specific: dict[tuple[str, int, int], _ListenClaim] = {}
        self.backend_total = 0
        self.raw_problem: str | None = None  # why no raw socket opens, once someone asked
        self.raw_checked = False  # raw_problem is valid
        self.cc_problems: dict[str, str | None] = {}  # congestion control name -> problem
        self.fastopen_sysctl: str | None = None  # net.ipv4.tcp_fastopen once asked ("": unread)
        self.bind_errnos: dict[str, int] = {}  # source address -> errno of binding it (0: ok)
        # IP version -> errno of setting IP(V6)_TRANSPARENT (0: ok), for source = "client"
        self.transparent_errnos: dict[int, int] = {}
        self.host_interfaces: Mapping[str, tuple[VipInterface, ...]] | None = None  # once asked
        self.interfaces_asked = False  # host_interfaces is valid
        self.vip_ips: set[IPAddress] = set()  # the addresses of the document's [[vrrp]] vips

    # ------------------------------------------------------------ reporting

    def error(self, path: KeyPath, message: str, *, at_key: bool = False,
              position_of: KeyPath | None = None) -> None:
        """Record a problem with the value at `path` (or its key), positioned there or at
        `position_of` (the table, for a key that is missing)."""
        where = path if position_of is None else position_of
        if position_of is not None and self.locator.has_value(position_of):
            at_key = False  # an inline table: its "{", not the key in front of it
        line, col = self.locator.key(where) if at_key else self.locator.value(where)
        self.diagnostics.append(Diagnostic(self.file, line, col, "error", message, path))

    def check_keys(self, scope: _Scope, table: dict[str, Any], allowed: Sequence[str],
                   homes: dict[str, str]) -> None:
        for key in table:
            if key in allowed:
                continue
            where = f"in {scope.table}" if scope.path else "at the top level"
            message = f"unknown key {quote(key)} {where}"
            if key in homes:
                message += f"; {homes[key]}"
            else:
                guess = suggest(key, allowed)
                if guess is not None:
                    message += f"; did you mean {quote(guess)}?"
            self.error((*scope.path, key), message, at_key=True)

    def missing(self, scope: _Scope, key: str) -> None:
        self.error((*scope.path, key), f"{scope.table}: missing required key {quote(key)}",
                   at_key=True, position_of=scope.path)

    def wrong_type(self, path: KeyPath, label: str, expected: str, value: object,
                   hint: str = "") -> None:
        message = f"{label}: expected {expected}, found {describe(value)}"
        self.error(path, message + (f"; {hint}" if hint else ""))

    # ------------------------------------------------------------ typed readers

    def read_int(self, scope: _Scope, table: dict[str, Any], key: str, default: int,
                 lo: int, hi: int, zero_hint: str = "") -> int:
        if key not in table:
            return default
        value = table[key]
        path = (*scope.path, key)
        if isinstance(value, bool) or not isinstance(value, int):
            hint = ""
            if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,20}", value.strip()):
                hint = f"write {value.strip()} without quotes"
            self.wrong_type(path, scope.label(key), "an integer", value, hint)
            return default
        if not lo <= value <= hi:
            shown = str(value) if abs(value) < 10**30 else "a very large number"
            message = f"{scope.label(key)}: {shown} out of range ({lo}..{hi})"
            if value == 0 and zero_hint:
                message += f"; {zero_hint}"
            self.error(path, message)
            return default
        return value

    def read_bool(self, scope: _Scope, table: dict[str, Any], key: str, default: bool) -> bool:
        if key not in table:
            return default
        value = table[key]
        if not isinstance(value, bool):
            hint = ""
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                hint = f"write {value.strip().lower()} without quotes"
            self.wrong_type((*scope.path, key), scope.label(key), "a boolean", value, hint)
            return default
        return value

    def read_str(self, scope: _Scope, table: dict[str, Any], key: str) -> str | None:
        """The string at `key`, or None when it is absent or (reported) not a string."""
        if key not in table:
            return None
        value = table[key]
        if not isinstance(value, str):
            self.wrong_type((*scope.path, key), scope.label(key), "a string", value)
            return None
        return value

    def read_enum(self, scope: _Scope, table: dict[str, Any], key: str, default: T,
                  choices: Sequence[T]) -> T:
        value = self.read_str(scope, table, key)
        if value is None:
            return default
        for choice in choices:
            if value == choice:
                return choice
        message = f"{scope.label(key)}: {quote(value)} is not one of {', '.join(choices)}"
        guess = suggest(value, choices)
        if guess is not None:
            message += f"; did you mean {quote(guess)}?"
        self.error((*scope.path, key), message)
        return default

    def read_duration(self, scope: _Scope, table: dict[str, Any], key: str, default: float,
                      zero_ok: bool) -> float:
        if key not in table:
            return default
        value = table[key]
        path = (*scope.path, key)
        label = scope.label(key)
        if not isinstance(value, str):
            hint = ""
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**9:
                hint = f'write "{value}s"'
            elif isinstance(value, float) and 0 <= value < 10**9 and (value * 1000).is_integer():
                hint = f'write "{suggest_duration(int(value * 1000))}"'
            self.wrong_type(path, label, "a duration string", value, hint)
            return default
        try:
            ms = parse_duration_ms(value)
        except ValueError as exc:
            self.error(path, f"{label}: {exc}")
            return default
        if ms == 0 and not zero_ok:
            self.error(path, f"{label}: must be greater than 0")
            return default
        if ms > MAX_DURATION_MS:
            self.error(path, f"{label}: {quote(value)} is too long (at most 24h)")
            return default
        return ms / 1000

    def read_table(self, path: KeyPath, label: str, value: object) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.wrong_type(path, label, "a table", value)
            return None
        return cast(dict[str, Any], value)

    # ------------------------------------------------------------ the document

    def document(self, doc: dict[str, Any]) -> Config:
        self.check_keys(_TOP, doc, TOP_KEYS, _TOP_HOMES)
        settings = _GLOBAL_DEFAULTS
        if "global" in doc:
            table = self.read_table(("global",), "global", doc["global"])
            if table is not None:
                settings = self.global_settings(table)
        self.vip_ips = _vip_ips(doc.get("vrrp"))
        services: list[Service] = []
        if "services" in doc:
            services = self.services(doc["services"])
        instances: list[VrrpSettings] = []
        if "vrrp" in doc:
            instances = self.vrrp_instances(doc["vrrp"], {s.name for s in services})
        groups: list[SyncGroupSettings] = []
        if "vrrp_sync_group" in doc:
            groups = self.sync_groups(doc["vrrp_sync_group"], doc.get("vrrp"))
            member_of = {m: g.name for g in groups for m in g.instances}
            instances = [dataclasses.replace(v, sync_group=member_of[v.name])
                         if v.name in member_of else v for v in instances]
        metrics_listen: Endpoint | None = None
        if "metrics" in doc:
            table = self.read_table(("metrics",), "metrics", doc["metrics"])
            if table is not None:
                metrics_listen = self.metrics(table)
        return Config(path=self.file, global_=settings, services=tuple(services),
                      vrrp=tuple(instances), vrrp_sync_groups=tuple(groups),
                      metrics_listen=metrics_listen)

    def metrics(self, table: dict[str, Any]) -> Endpoint | None:
        scope = _Scope(path=("metrics",), table="[metrics]", prefix="metrics.")
        self.check_keys(scope, table, METRICS_KEYS, {})
        text = self.read_str(scope, table, "listen")
        if text is None:
            if "listen" not in table:
                self.missing(scope, "listen")
            return None
        try:
            endpoint = parse_endpoint(text, wildcard_ok=True)
        except ValueError as exc:
            self.error(("metrics", "listen"), f"metrics.listen: {exc}")
            return None
        for claims in (self.listen_exact, self.listen_wildcard, self.listen_specific):
            for key, claim in claims.items():
                if key[0] == "tcp" and claim.endpoint.port == endpoint.port and (
                        claim.endpoint.host == endpoint.host
                        or claim.endpoint.host in ("0.0.0.0", "::")
                        or endpoint.host in ("0.0.0.0", "::")) and \
                        claim.endpoint.family == endpoint.family:
                    self.error(("metrics", "listen"), f"metrics.listen: {endpoint} is also "
                               f"listened on by {claim.service_label}")
                    return None
        return endpoint

    def settings_problems(self, path: KeyPath, prefix: str, section: str,
                          table: dict[str, Any], problems: list[str], before: int) -> None:
        """Report a settings object's own problems (`section.field: text` lines) at their keys,
        leaving out those about keys the readers already reported (since `before`)."""
        flagged = {str(d.path[len(path)]) for d in self.diagnostics[before:]
                   if len(d.path) > len(path) and d.path[:len(path)] == path}
        flagged |= {alias for key, alias in _ALIASES if key in flagged}
        for problem in problems:
            head = problem.split(":", 1)[0].removeprefix(f"{section}.")
            fields = [f.split("[")[0] for f in head.split("/")]
            # a field written under its other key (expect_regex for expect) is reported there
            fields = [next((k for k, a in _ALIASES if a == f and k in table), f)
                      if f not in table else f for f in fields]
            # a problem about, or mentioning, a key already reported comes from a placeholder
            if any(f in flagged for f in fields) or any(
                    re.search(rf"\b{re.escape(f)}\b", problem) for f in flagged):
                continue
            # a problem that involves two keys (its own and one it names with a value,
            # "must not exceed interval 1s") is reported at the one written later
            text = problem.split(":", 1)[-1]
            keys = [f for f in fields if f in table] + [
                k for k in table if k not in fields
                and re.search(rf"(?<![\w.]){re.escape(k)} (?=[0-9\"'=])", text)]
            field = max(keys, key=lambda k: self.locator.key((*path, k)), default="")
            message = f"{prefix}{problem.removeprefix(section + '.')}" if section == "vrrp" \
                else f"{prefix}{problem}"
            if not field:
                self.error(path, message, at_key=True, position_of=path)
                continue
            where: KeyPath = (*path, field)
            if isinstance(table[field], list):
                k = _element_of(text, table[field], message, self.diagnostics[before:])
                where = where if k is None else (*where, k)
            self.error(where, message)

    # ------------------------------------------------------------ [[vrrp]]

    def read_str_array(self, scope: _Scope, table: dict[str, Any], key: str) -> tuple[str, ...]:
        if key not in table:
            return ()
        value = table[key]
        path = (*scope.path, key)
        if isinstance(value, str):
            self.wrong_type(path, scope.label(key), "an array of strings", value,
                            f"write [{quote(value)}]")
            return ()
        if not isinstance(value, list):
            self.wrong_type(path, scope.label(key), "an array of strings", value)
            return ()
        out: list[str] = []
        for k, item in enumerate(value):
            if not isinstance(item, str):
                self.wrong_type((*path, k), f"{scope.label(key)}[{k}]", "a string", item)
                continue
            out.append(item)
        return tuple(out)

    def vrrp_instances(self, value: object, services: set[str]) -> list[VrrpSettings]:
        if not isinstance(value, list):
            self.wrong_type(("vrrp",), "vrrp", "an array of tables ([[vrrp]])", value)
            return []
        out: list[VrrpSettings] = []
        names: dict[str, int] = {}
        routers: dict[tuple[str, int, int], int] = {}
        for i, item in enumerate(value):
            table = self.read_table(("vrrp", i), f"vrrp[{i}]", item)
            if table is None:
                continue
            instance = self.vrrp_instance(i, table, services)
            # the clashes with other instances are checked on the values as written, so that
            # they are reported together with the instance's own problems
            clash = False
            name = table.get("name")
            if isinstance(name, str):
                if name in names:
                    self.error(("vrrp", i, "name"), f"vrrp[{i}] ({quote(name)}): name: "
                               f"{quote(name)} is already used by vrrp[{names[name]}]")
                    clash = True
                else:
                    names[name] = i
            router = _router_of(table)
            if router is not None:
                if router in routers:
                    interface, vrid, family = router
                    label = f"vrrp[{i}]" + (f" ({quote(name)})" if isinstance(name, str) else "")
                    self.error(("vrrp", i, "virtual_router_id"),
                               f"{label}: virtual_router_id: {vrid} on {interface} (IPv{family}) "
                               f"is already used by vrrp[{routers[router]}]")
                    clash = True
                else:
                    routers[router] = i
            if instance is not None and not clash:
                out.append(instance)
        return out

    def vrrp_instance(self, i: int, table: dict[str, Any],
                      services: set[str]) -> VrrpSettings | None:
        raw_name = table.get("name")
        label = f"vrrp[{i}]" + (f" ({quote(raw_name)})" if isinstance(raw_name, str) else "")
        scope = _Scope(path=("vrrp", i), table=label, prefix=f"{label}: ")
        before = len(self.diagnostics)
        self.check_keys(scope, table, VRRP_KEYS, {})
        for key in ("name", "interface", "virtual_router_id", "vips"):
            if key not in table:
                self.missing(scope, key)
        tracks: list[TrackService] = []
        raw_tracks = table.get("track_services", [])
        tpath = (*scope.path, "track_services")
        if not isinstance(raw_tracks, list):
            self.wrong_type(tpath, scope.label("track_services"), "an array of tables",
                            raw_tracks, '[{ service = "web", weight = -50 }]')
            raw_tracks = []
        for k, entry in enumerate(raw_tracks):
            tlabel = f"{scope.label('track_services')}[{k}]"
            tscope = _Scope(path=(*tpath, k), table=tlabel, prefix=f"{tlabel}.")
            if not isinstance(entry, dict):
                self.wrong_type((*tpath, k), tlabel, "a table", entry,
                                '{ service = "web", weight = -50 }')
                continue
            self.check_keys(tscope, entry, ("service", "weight"), {})
            service = self.read_str(tscope, entry, "service")
            if service is None:
                if "service" not in entry:
                    self.missing(tscope, "service")
                continue
            if service not in services:
                hint = suggest(service, sorted(services))
                self.error((*tpath, k, "service"), f"{tlabel}.service: no service named "
                           f"{quote(service)}" + (f"; did you mean {quote(hint)}?" if hint
                                                   else ""))
                continue
            tracks.append(TrackService(service=service,
                                       weight=self.read_int(tscope, entry, "weight", 0, -254,
                                                            254)))
        # Keys missing or wrong get placeholders, so that the settings' own checks still run for
        # everything else (their problems about reported keys are left out).
        values: dict[str, Any] = dict(
            name=self.read_str(scope, table, "name") or "VI",
            interface=self.read_str(scope, table, "interface") or "eth0",
            virtual_router_id=self.read_int(scope, table, "virtual_router_id", 1, 1, 255),
            vips=self.read_str_array(scope, table, "vips") or ("192.0.2.1/32",),
            priority=self.read_int(scope, table, "priority", 100, 1, 255),
            advert_interval=self.read_duration(scope, table, "advert_interval", 1.0,
                                               zero_ok=False),
            version=self.read_int(scope, table, "version", 3, 2, 3),
            preempt=self.read_bool(scope, table, "preempt", True),
            preempt_delay=self.read_duration(scope, table, "preempt_delay", 0.0, zero_ok=True),
            unicast_peers=self.read_str_array(scope, table, "unicast_peers"),
            garp_repeat=self.read_int(scope, table, "garp_repeat", 5, 0, 100),
            garp_refresh=self.read_duration(scope, table, "garp_refresh", 0.0, zero_ok=True),
            track_interfaces=self.read_str_array(scope, table, "track_interfaces"),
            track_services=tuple(tracks),
            notify=self.read_str(scope, table, "notify"),
            source_address=self.read_str(scope, table, "source_address"),
            auth_pass=self.read_str(scope, table, "auth_pass"),
        )
        settings: VrrpSettings | None = None
        try:
            settings = VrrpSettings(**values)
        except VrrpSettingsError as exc:
            self.settings_problems(scope.path, scope.prefix, "vrrp", table, exc.problems, before)
        # An instance that runs unchanged is not re-checked: a reload keeps it as it is, and a
        # tracked interface that has gone is its fault state, not a reason to refuse the file.
        if self.host is not None and (settings is None or settings not in self.running_vrrp):
            self.vrrp_host(scope, table, before)
        return None if len(self.diagnostics) > before else settings

    # ------------------------------------------------------------ [[vrrp_sync_group]]

    def sync_groups(self, value: object, vrrp: object) -> list[SyncGroupSettings]:
        """The [[vrrp_sync_group]] tables, checked against the [[vrrp]] tables as written (an
        instance with problems of its own is still a known name here)."""
        if not isinstance(value, list):
            self.wrong_type(("vrrp_sync_group",), "vrrp_sync_group",
                            "an array of tables ([[vrrp_sync_group]])", value)
            return []
        tables = [t if isinstance(t, dict) else {} for t in (vrrp if isinstance(vrrp, list)
                                                              else [])]
        known = {t["name"]: i for i, t in enumerate(tables) if isinstance(t.get("name"), str)}
        out: list[SyncGroupSettings] = []
        names: dict[str, int] = {}
        owner: dict[str, tuple[int, str]] = {}  # instance -> (group index, group label)
        for g, item in enumerate(value):
            table = self.read_table(("vrrp_sync_group", g), f"vrrp_sync_group[{g}]", item)
            if table is None:
                continue
            before = len(self.diagnostics)
            raw_name = table.get("name")
            label = f"vrrp_sync_group[{g}]" + (f" ({quote(raw_name)})"
                                               if isinstance(raw_name, str) else "")
            scope = _Scope(path=("vrrp_sync_group", g), table=label, prefix=f"{label}: ")
            self.check_keys(scope, table, SYNC_GROUP_KEYS, _SYNC_GROUP_HOMES)
            for key in ("name", "instances"):
                if key not in table:
                    self.missing(scope, key)
            name = self.read_str(scope, table, "name")
            if name is not None:
                if not 1 <= len(name) <= MAX_NAME or not _VRRP_NAME.fullmatch(name):
                    self.error((*scope.path, "name"), f"{scope.label('name')}: {quote(name)} "
                               f"must be 1 to {MAX_NAME} letters, digits, '_', '.' or '-'")
                elif name in names:
                    self.error((*scope.path, "name"), f"{scope.label('name')}: {quote(name)} "
                               f"is already used by vrrp_sync_group[{names[name]}]")
                else:
                    names[name] = g
            members: list[str] = []
            ipath = (*scope.path, "instances")
            raw = table.get("instances")
            for k, member in enumerate(self.read_str_array(scope, table, "instances")):
                where = f"{scope.label('instances')}[{k}]"
                if member not in known:
                    hint = suggest(member, sorted(known))
                    self.error((*ipath, k), f"{where}: no [[vrrp]] instance named "
                               f"{quote(member)}" + (f"; did you mean {quote(hint)}?"
                                                      if hint else ""))
                elif member in members:
                    self.error((*ipath, k), f"{where}: {quote(member)} is listed twice")
                elif member in owner and owner[member][0] != g:
                    self.error((*ipath, k), f"{where}: {quote(member)} is already a member of "
                               f"{owner[member][1]} (an instance belongs to one sync group "
                               "at most)")
                else:
                    members.append(member)
                    owner[member] = (g, label)
            if isinstance(raw, list) and len(raw) < 2 and \
                    not any(d.path[:len(ipath)] == ipath for d in self.diagnostics[before:]):
                self.error(ipath, f"{scope.label('instances')}: a sync group needs at least "
                           f"two instances, found {len(raw)} (a group of one changes nothing)")
            self.owner_mix(ipath, scope, [(m, tables[known[m]]) for m in members])
            notify = self.read_str(scope, table, "notify")
            if notify is not None and (not notify.startswith("/") or "\0" in notify):
                self.error((*scope.path, "notify"), f"{scope.label('notify')}: {notify!r} must "
                           "be an absolute path to a program")
            weighted = self.read_bool(scope, table, "tracking_weight", False)
            if not weighted:
                for member in members:
                    self.unweighted_member(tables[known[member]], known[member], name or "?")
            if len(self.diagnostics) == before and name is not None:
                out.append(SyncGroupSettings(name=name, instances=tuple(members), notify=notify,
                                             tracking_weight=weighted))
        return out

    def owner_mix(self, ipath: tuple[str | int, ...], scope: _Scope,
                  members: list[tuple[str, dict[str, Any]]]) -> None:
        """A group's members are all address owners (priority 255) or none: an owner is never
        preempted, so a group that mixes them cannot move as one (keepalived says the same at
        load: "this won't work")."""
        prios = [(m, t.get("priority", 100)) for m, t in members]
        owners = [m for m, p in prios if p == 255]
        others = [(m, p) for m, p in prios if isinstance(p, int) and p != 255]
        if owners and others:
            self.error(ipath, f"{scope.label('instances')}: {quote(owners[0])} has priority 255 "
                       f"(the address owner) and {quote(others[0][0])} priority {others[0][1]}: "
                       "the members of a sync group must all be address owners or none (an "
                       "owner is never preempted, so the group could not move as one)")

    def unweighted_member(self, table: dict[str, Any], i: int, group: str) -> None:
        """A member of a group without tracking_weight: its track_services weights must be 0
        (a weight moves one member's priority alone, and the group can then be held BACKUP on
        both nodes' disagreeing members)."""
        tracks = table.get("track_services")
        vname = table.get("name")
        for k, entry in enumerate(tracks if isinstance(tracks, list) else []):
            weight = entry.get("weight", 0) if isinstance(entry, dict) else 0
            if isinstance(weight, int) and not isinstance(weight, bool) and weight != 0:
                self.error(("vrrp", i, "track_services", k, "weight"),
                           f"vrrp[{i}] ({quote(str(vname))}): track_services[{k}].weight: "
                           f"{weight} in a member of sync group {quote(group)}: a member's "
                           "weight must be 0 (the service's loss then puts the whole group in "
                           "FAULT); set tracking_weight = true in the group to allow weights "
                           "(keepalived's sync_group_tracking_weight)")

    def interfaces(self) -> Mapping[str, tuple[VipInterface, ...]] | None:
        """The host's interfaces and their addresses (asked once); None: unknown."""
        if self.host is not None and not self.interfaces_asked:
            self.interfaces_asked = True
            self.host_interfaces = self.host.interfaces()
        return self.host_interfaces

    def vrrp_host(self, scope: _Scope, table: dict[str, Any], before: int) -> None:
        """The host checks of one [[vrrp]] table, each on a key that has no other problem:
        `interface` exists and (without source_address) has an address of the instance's
        family to send adverts from, as the instance would pick it when it starts;
        `source_address` is an address of this host; every `track_interfaces` entry exists."""
        links = self.interfaces()
        if links is None:
            return
        path = scope.path
        flagged = {d.path[len(path)] for d in self.diagnostics[before:]
                   if len(d.path) > len(path) and d.path[:len(path)] == path}
        vips = table.get("vips")
        family: int | None = None
        vip_ips: set[IPAddress] = set()
        if "vips" not in flagged and isinstance(vips, list):
            vip_ips = _vip_ips([table])
            with contextlib.suppress(ValueError, TypeError, IndexError, AttributeError):
                family = parse_vip(vips[0]).address.version
        interface = table.get("interface")
        if isinstance(interface, str) and "interface" not in flagged:
            if interface not in links:
                self.error((*path, "interface"), f"{scope.label('interface')}: "
                           + _no_interface(interface, links))
            elif family is not None and "source_address" not in table and not any(
                    a.version == family and a.ip not in vip_ips
                    and (family == 4 or a.ip.is_link_local) for a in links[interface]):
                kind = "IPv4 address" if family == 4 else "IPv6 link-local address"
                self.error((*path, "interface"), f"{scope.label('interface')}: {interface} has "
                           f"no {kind} to send adverts from (add one, or set source_address)")
        source = table.get("source_address")
        if isinstance(source, str) and "source_address" not in flagged:
            with contextlib.suppress(ValueError):
                ip = ipaddress.ip_address(source)
                if not any(a.ip == ip for addresses in links.values() for a in addresses):
                    self.error((*path, "source_address"), f"{scope.label('source_address')}: "
                               f"{ip} is not an address of this host")
        tracked = table.get("track_interfaces")
        if isinstance(tracked, list):
            for k, name in enumerate(tracked):
                if is_ifname(name) and name not in links:
                    self.error((*path, "track_interfaces", k),
                               f"{scope.label('track_interfaces')}[{k}]: "
                               + _no_interface(name, links))
        # a VIP's own interface (`dev`) must exist as `interface` must: the instance could
        # neither add nor announce it, and would sit in FAULT for good
        for k, text in enumerate(vips if isinstance(vips, list) else []):
            if (*path, "vips", k) in {d.path for d in self.diagnostics[before:]}:
                continue
            with contextlib.suppress(VipSyntaxError, AttributeError):
                dev = parse_vip(text).dev
                if dev is not None and dev not in links:
                    self.error((*path, "vips", k), f"{scope.label('vips')}[{k}]: "
                               + _no_interface(dev, links))

    def global_settings(self, table: dict[str, Any]) -> GlobalSettings:
        scope = _Scope(path=("global",), table="[global]", prefix="global.")
        self.check_keys(scope, table, GLOBAL_KEYS, _GLOBAL_HOMES)
        d = _GLOBAL_DEFAULTS
        return GlobalSettings(
            workers=self.read_int(scope, table, "workers", d.workers, 0, MAX_WORKERS),
            control_socket=self.control_socket(scope, table),
            log_level=self.read_enum(scope, table, "log_level", d.log_level, LOG_LEVELS),
            log_format=self.read_enum(scope, table, "log_format", d.log_format, LOG_FORMATS),
            hash_seed=self.read_int(scope, table, "hash_seed", d.hash_seed, 0, U32_MAX),
            shutdown_timeout=self.read_duration(scope, table, "shutdown_timeout",
                                                d.shutdown_timeout, zero_ok=True),
            listen_backlog=self.read_int(scope, table, "listen_backlog", d.listen_backlog,
                                         1, 65535),
            connection_log=self.connection_log(scope, table),
            max_udp_flows=self.max_udp_flows(scope, table),
        )

    def max_udp_flows(self, scope: _Scope, table: dict[str, Any]) -> int | None:
        """An integer 1..4294967295, or "auto" (the default: None)."""
        value = table.get("max_udp_flows", "auto")
        if value == "auto":
            return None
        if isinstance(value, str) and value.strip().lower() == "auto":
            how = "in lower case" if value.strip() != "auto" else "without spaces"
            self.error((*scope.path, "max_udp_flows"),
                       f"{scope.label('max_udp_flows')}: write \"auto\" {how}")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            hint = ""
            if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,20}", value.strip()):
                hint = f"write {value.strip()} without quotes"
            self.wrong_type((*scope.path, "max_udp_flows"), scope.label("max_udp_flows"),
                            'an integer or "auto"', value, hint)
            return None
        return self.read_int(scope, table, "max_udp_flows", 1, 1, U32_MAX,
                             zero_hint='leave the key out (or write "auto") for the default, '
                                       'half of the file descriptor limit')

    def connection_log(self, scope: _Scope, table: dict[str, Any]) -> str | None:
        value = self.read_str(scope, table, "connection_log")
        if value is None:
            return None
        path = (*scope.path, "connection_log")
        label = scope.label("connection_log")
        directory = os.path.dirname(value) or "."
        if value == "":
            self.error(path, f"{label}: must not be empty (leave the key out to turn the "
                             "connection log off)")
        elif "\0" in value:
            self.error(path, f"{label}: must not contain a NUL character")
        elif value.endswith("/"):
            self.error(path, f"{label}: names a directory; write the path of the log file, "
                             f"e.g. {quote(value + 'conn.jsonl')}")
        elif self.host is not None and not self.host.dir_exists(directory):
            self.error(path, f"{label}: directory {quote(directory)} does not exist")
        elif self.host is not None and self.host.dir_exists(value):
            self.error(path, f"{label}: {quote(value)} is a directory; write the path of the "
                             "log file inside it")
        else:
            return value
        return None

    def control_socket(self, scope: _Scope, table: dict[str, Any]) -> str:
        value = self.read_str(scope, table, "control_socket")
        if value is None:
            return _GLOBAL_DEFAULTS.control_socket
        path = (*scope.path, "control_socket")
        label = scope.label("control_socket")
        size = len(value.encode("utf-8", "surrogatepass"))
        if value == "":
            self.error(path, f"{label}: must not be empty")
        elif "\0" in value:
            self.error(path, f"{label}: must not contain a NUL character")
        elif size > MAX_SOCKET_PATH_BYTES:
            self.error(path, f"{label}: path is {size} bytes long; a unix socket path can have "
                             f"at most {MAX_SOCKET_PATH_BYTES}")
        else:
            return value
        return _GLOBAL_DEFAULTS.control_socket

    def services(self, value: object) -> list[Service]:
        path: KeyPath = ("services",)
        if isinstance(value, dict):
            self.error(path, "services: expected an array of tables ([[services]]), found a table",
                       at_key=True)
            return []
        if not isinstance(value, list):
            self.wrong_type(path, "services", "an array of tables ([[services]])", value)
            return []
        services: list[Service] = []
        for i, entry in enumerate(value):
            if i >= MAX_SERVICES:
                self.error(("services", i), f"services[{i}]: too many services ({len(value)}; "
                                            f"at most {MAX_SERVICES})", at_key=True)
                break
            table = self.read_table(("services", i), f"services[{i}]", entry)
            if table is not None:
                services.append(self.service(i, table))
        return services

    # ------------------------------------------------------------ one service

    def service(self, i: int, table: dict[str, Any]) -> Service:
        raw_name = table.get("name")
        label = f"services[{i}]"
        if isinstance(raw_name, str):
            label += f" ({quote(raw_name)})"
        scope = _Scope(path=("services", i), table=label, prefix=f"{label}: ")
        self.check_keys(scope, table, SERVICE_KEYS, _SERVICE_HOMES)
        d = _SERVICE_DEFAULTS
        name = self.service_name(scope, table, i)
        protocol = self.read_enum(scope, table, "protocol", d.protocol, PROTOCOLS)
        listen = self.listen(scope, table, i, protocol)
        scheduler = self.read_enum(scope, table, "scheduler", d.scheduler, SCHEDULERS)
        hash_key = self.read_enum(scope, table, "hash_key", d.hash_key, HASH_KEYS)
        connect_timeout = self.read_duration(scope, table, "connect_timeout", d.connect_timeout,
                                             zero_ok=False)
        idle_timeout = self.read_duration(scope, table, "idle_timeout", d.idle_timeout,
                                          zero_ok=True)
        retries = self.read_int(scope, table, "retries", d.retries, 0, MAX_RETRIES)
        max_connections = self.read_int(scope, table, "max_connections", d.max_connections,
                                        0, U32_MAX)
        table_size = self.maglev_table_size(scope, table)
        indexed = self.backends(scope, table)
        backends = [backend for _, backend in indexed]
        proxy = self.read_enum(scope, table, "proxy_protocol", d.proxy_protocol, PROXY_VERSIONS)
        raw_health = table.get("health")
        health = (self.health(scope, raw_health, proxy if protocol == "tcp" else "off",
                              protocol, name) if "health" in table else None)
        if isinstance(raw_health, dict):
            self.health_source(scope, raw_health, indexed)
        if protocol == "udp" and isinstance(raw_health, dict) and "port" not in raw_health \
                and raw_health.get("kind") not in ("udp", "exec"):
            self.error((*scope.path, "health"), f"{scope.label('health')}: a UDP service's "
                       'health check needs kind = "udp" (a datagram to the backends\' port), '
                       'kind = "exec" (a command decides), or `port`: a TCP port of the backends '
                       "to probe", at_key=True,
                       position_of=(*scope.path, "health"))
        if protocol == "udp" and isinstance(raw_health, dict) and "on_down" in raw_health:
            self.error((*scope.path, "health", "on_down"), f"{scope.label('health.on_down')}: "
                       'applies to protocol = "tcp" only; a UDP flow whose backend goes DOWN '
                       'moves to another backend with its next datagram (close reason "moved")')
        agent = self.agent(scope, table["agent"], indexed) if "agent" in table else None
        if "agent" not in table:
            self.agent_keys_alone(scope, table)
        if agent is not None and health is not None and health.source is not None:
            self.agent_source(scope, agent, indexed, health.source)
        udp_idle_timeout = self.read_duration(scope, table, "udp_idle_timeout",
                                              d.udp_idle_timeout, zero_ok=False)
        max_flows = self.read_int(scope, table, "max_flows", d.max_flows, 0, U32_MAX)
        responses = self.read_int(scope, table, "responses", d.responses, 0, U32_MAX)
        session = self.read_enum(scope, table, "session", d.session, FLOW_KEYS)
        udp_gro = self.read_bool(scope, table, "udp_gro", d.udp_gro)
        congestion = self.congestion_control(scope, table, "congestion_control", protocol)
        backend_congestion = self.congestion_control(scope, table,
                                                     "backend_congestion_control", protocol)
        fast_open = self.backend_fast_open(scope, table, protocol)
        defer_accept = self.read_bool(scope, table, "defer_accept", False)
        sockbuf = {key: self.socket_buffer(scope, table, key) for key in SOCKBUF_KEYS}
        accept_proxy = self.read_bool(scope, table, "accept_proxy", d.accept_proxy)
        accept_timeout = self.read_duration(scope, table, "accept_proxy_timeout",
                                            d.accept_proxy_timeout, zero_ok=False)
        accept_from = self.accept_proxy_from(scope, table, accept_proxy, protocol)
        queue_timeout = self.read_duration(scope, table, "queue_timeout", d.queue_timeout,
                                           zero_ok=True)
        max_queue = self.read_int(scope, table, "max_queue", d.max_queue, 1, MAX_QUEUE)
        if protocol == "tcp" and "max_queue" in table and "queue_timeout" not in table:
            self.error((*scope.path, "max_queue"), f"{scope.label('max_queue')}: needs "
                       "queue_timeout (without it a client that finds every backend at its "
                       "max_connections is refused at once, and nothing waits)")
        if protocol == "tcp":
            for key in UDP_ONLY_KEYS:
                if key in table:
                    self.error((*scope.path, key), f"{scope.label(key)}: applies to "
                               'protocol = "udp" only')
        else:
            for key, instead in TCP_ONLY_KEYS.items():
                if key in table:
                    hint = f"; use {instead}" if instead else ""
                    self.error((*scope.path, key), f"{scope.label(key)}: applies to "
                               f'protocol = "tcp" only{hint}')
        if scheduler == "maglev" and table_size < len(backends):
            self.error((*scope.path, "maglev_table_size"),
                       f"{scope.label('maglev_table_size')}: {table_size} is smaller than the "
                       f"number of backends ({len(backends)})")
        if scheduler == "round_robin":
            self.round_robin_weights(scope, table, indexed)
        source = self.service_source(scope, table, indexed, listen,
                                     accept_proxy and protocol == "tcp")
        if source is not None:
            backends = [b if b.source is not None else dataclasses.replace(b, source=source)
                        for b in backends]
        return Service(
            name=name, protocol=protocol, listen=tuple(listen), backends=tuple(backends),
            scheduler=scheduler, hash_key=hash_key, connect_timeout=connect_timeout,
            idle_timeout=idle_timeout, retries=retries, max_connections=max_connections,
            maglev_table_size=table_size, health=health, agent=agent,
            udp_idle_timeout=udp_idle_timeout,
            max_flows=max_flows, responses=responses, session=session,
            udp_gro=udp_gro or protocol == "tcp", congestion_control=congestion,
            backend_congestion_control=backend_congestion,
            backend_fast_open=fast_open, defer_accept=defer_accept and protocol == "tcp",
            proxy_protocol=proxy if protocol == "tcp" else "off",
            accept_proxy=accept_proxy and protocol == "tcp",
            accept_proxy_timeout=accept_timeout if protocol == "tcp" else d.accept_proxy_timeout,
            accept_proxy_from=accept_from,
            source=source,
            queue_timeout=queue_timeout if protocol == "tcp" else 0.0,
            max_queue=max_queue if protocol == "tcp" else d.max_queue,
            **(sockbuf if protocol == "tcp" else {}),
        )

    def accept_proxy_from(self, scope: _Scope, table: dict[str, Any], accept_proxy: bool,
                          protocol: Protocol) -> tuple[IPNetwork, ...]:
        """`accept_proxy_from`: the addresses or prefixes whose connections carry a PROXY
        header (every other client connects directly). Needs accept_proxy = true; not empty
        (that would mean "nobody", i.e. accept_proxy off); at most MAX_PROXY_FROM entries (the
        data plane scans them at each accept); a prefix with host bits set is refused, as
        ipaddress.ip_network(strict=True) refuses it. A UDP service is reported elsewhere."""
        key = "accept_proxy_from"
        if key not in table or protocol != "tcp":
            return ()
        value = table[key]
        path = (*scope.path, key)
        label = scope.label(key)
        if isinstance(value, str):
            self.wrong_type(path, label, "an array of addresses or prefixes", value,
                            f"write [{quote(value)}]")
            return ()
        if not isinstance(value, list):
            self.wrong_type(path, label, "an array of addresses or prefixes", value)
            return ()
        if not accept_proxy:
            if not isinstance(table.get("accept_proxy", False), bool):
                return ()  # accept_proxy itself is wrong, and reported
            self.error(path, f"{label}: needs accept_proxy = true (it names the sources whose "
                       "connections carry a PROXY header)", at_key=True)
            return ()
        if not value:
            self.error(path, f"{label}: must not be empty (leave the key out for a header "
                       "from every client, or accept_proxy out for none)")
            return ()
        if len(value) > MAX_PROXY_FROM:
            self.error(path, f"{label}: {len(value)} entries are more than {MAX_PROXY_FROM} (the "
                       "data plane compares each new connection with every entry; use wider "
                       "prefixes)")
            return ()
        out: list[IPNetwork] = []
        for k, item in enumerate(value):
            item_path = (*path, k)
            item_label = f"{label}[{k}]"
            if not isinstance(item, str):
                self.wrong_type(item_path, item_label, "an address or prefix string", item)
                continue
            try:
                if "%" in item:
                    raise ValueError("a zone")
                net = ipaddress.ip_network(item, strict=True)
            except ValueError as exc:
                text = str(exc)
                if "has host bits set" in text:
                    loose = ipaddress.ip_network(item, strict=False)
                    self.error(item_path, f"{item_label}: {quote(item)} has host bits set "
                               f"beyond its prefix; write {quote(str(loose))}")
                else:
                    self.error(item_path, f"{item_label}: {quote(item)} is not an IP address "
                               "or prefix (ADDRESS or ADDRESS/LENGTH, no names, no zone)")
                continue
            if net in out:
                self.error(item_path, f"{item_label}: {quote(item)} is listed twice")
                continue
            out.append(net)
        return tuple(out)

    def health_source(self, scope: _Scope, health: dict[str, Any],
                      backends: Sequence[tuple[int, Backend]]) -> None:
        """Checks of `health.source` that need more than its own text, made even when the
        health table has other errors: every backend (index in the file, backend) must be of
        its family, since a probe binds the source before it connects to the backend; and, with
        host checks, this process must be able to bind it."""
        text = health.get("source")
        try:
            source = ipaddress.ip_address(text) if isinstance(text, str) else None
        except ValueError:
            source = None  # reported by health()
        if source is None:
            return
        path = (*scope.path, "health", "source")
        label = f"{scope.prefix}health.source"
        other = [(j, b) for j, b in backends if b.address.family != source.version]
        if other:
            v, family = source.version, 4 if source.version == 6 else 6
            self.error(path, f"{label}: {source} is IPv{v}, but {_which(other)} IPv{family}; "
                       f"a probe leaves from this address, so every backend must be IPv{v} "
                       f"(leave source out, or move the IPv{family} backends to a service of "
                       "their own)")
        self.source_bindable(path, label, source, "probes")

    def source_bindable(self, path: KeyPath, label: str, source: IPAddress, what: str) -> bool:
        """With host checks on, can this process bind `source` (port 0)? Reports at `path` why
        not, naming `what` leaves from it ("probes", "backend connections"); each address is
        tried once per load. An IPv6 address still in DAD (tentative) counts as bindable, and
        so does, for backend connections, a VIP of this document's [[vrrp]] instances: the
        node that does not hold it (the standby) must still load the pair's config; its binds
        fail only while no client reaches it through the VIP."""
        if self.host is None:
            return True
        if what == "backend connections" and source in self.vip_ips:
            return True
        key = str(source)
        if key not in self.bind_errnos:
            self.bind_errnos[key] = self.host.bind_errno(key)
        err = self.bind_errnos[key]
        links = self.interfaces() if err == errno.EADDRNOTAVAIL else None
        if links is not None and any(a.ip == source for v in links.values() for a in v):
            err = 0  # configured but not usable yet: an IPv6 address still in DAD (tentative)
        if err == errno.EADDRNOTAVAIL:
            self.error(path, f"{label}: {source} is not an address of this host, so {what} "
                       "cannot leave from it")
        elif err != 0:
            self.error(path, f"{label}: {what} cannot leave from {source}: binding it fails "
                       f"({os.strerror(err).lower()})")
        return err == 0

    def read_source(self, scope: _Scope, table: dict[str, Any]) -> IPAddress | str | None:
        """The `source` key of a service or backend: an IP address of one host interface, no
        port, or CLIENT (transparent: each connection leaves from its client's address); None:
        absent or reported."""
        text = self.read_str(scope, table, "source")
        if text is None:
            return None
        if text == CLIENT:
            return CLIENT
        path = (*scope.path, "source")
        label = scope.label("source")
        try:
            source = ipaddress.ip_address(text)
        except ValueError:
            hint = ""
            with contextlib.suppress(ValueError):
                parse_endpoint(text, wildcard_ok=True)
                hint = "; write the address alone (the port is the kernel's choice)"
            self.error(path, f"{label}: {quote(text)} is not an IP address (backend "
                       f"connections never resolve names){hint}")
            return None
        if isinstance(source, ipaddress.IPv6Address) and source.scope_id is not None:
            self.error(path, f"{label}: {quote(text)}: a zone index is not allowed (a "
                       "link-local address cannot be a source)")
            return None
        if source.is_unspecified or source.is_multicast or str(source) == "255.255.255.255":
            kind = "the wildcard" if source.is_unspecified else "a multicast or broadcast address"
            self.error(path, f"{label}: {text} is {kind}, which cannot be a source "
                       "(leave source out for the kernel's choice)")
            return None
        if isinstance(source, ipaddress.IPv6Address) and source.ipv4_mapped is not None:
            # it binds on an IPv6 socket, but every connect() from it fails (EAFNOSUPPORT)
            self.error(path, f"{label}: {text} is an IPv4-mapped IPv6 address, which cannot be "
                       f"a source (an IPv4 source is written {source.ipv4_mapped}, for IPv4 "
                       "backends)")
            return None
        return source

    def service_source(self, scope: _Scope, table: dict[str, Any],
                       backends: Sequence[tuple[int, Backend]], listen: Sequence[Endpoint],
                       accept_proxy: bool) -> str | None:
        """The service's `source` (None: absent or reported). Every backend that does not set
        its own must be of its family, since each connection binds it before connect(); with
        host checks, this process must be able to bind it. For CLIENT (transparent), the
        backends that inherit it or set it themselves are checked against the clients the
        service can have (transparent_families)."""
        source = self.read_source(scope, table)
        path = (*scope.path, "source")
        label = scope.label("source")
        raw = table.get("backends")
        raw_list = raw if isinstance(raw, list) else []
        inherit = [(j, b) for j, b in backends
                   if not (j < len(raw_list) and isinstance(raw_list[j], dict)
                           and "source" in raw_list[j])]
        inheriting = {j for j, _ in inherit}
        own = [(j, b) for j, b in backends if j not in inheriting and b.source == CLIENT]
        for j, b in own:
            self.transparent_families(
                (*scope.path, "backends", j, "source"), f"{scope.prefix}backends[{j}].source",
                [(j, b)], listen, accept_proxy)
        if source is None:
            return None
        if isinstance(source, str):  # CLIENT
            ok = self.transparent_families(path, label, inherit, listen, accept_proxy)
            ok = self.transparent_allowed(
                path, label, sorted({b.address.family for _, b in inherit})) and ok
            return CLIENT if ok else None
        other = [(j, b) for j, b in inherit if b.address.family != source.version]
        ok = not other
        if other:
            v, family = source.version, 4 if source.version == 6 else 6
            self.error(path, f"{label}: {source} is IPv{v}, but {_which(other)} IPv{family}; "
                       f"backend connections leave from this address, so every backend without "
                       f"a source of its own must be IPv{v} (give the IPv{family} backends their "
                       "own source, or move them to a service of their own)")
        ok = self.source_bindable(path, label, source, "backend connections") and ok
        return str(source) if ok else None

    def transparent_families(self, path: KeyPath, label: str,
                             backends: Sequence[tuple[int, Backend]],
                             listen: Sequence[Endpoint], accept_proxy: bool) -> bool:
        """source = "client": a connection can leave from its client's address only towards a
        backend of the client's family. Without accept_proxy the clients are of the families
        of the listeners (an IPv6 listener is IPv6-only), so a backend of a family no listener
        has could never be reached: reported here, naming the first such backend. Under
        accept_proxy a header may name a client of either family, and a service listening on
        both takes clients of both: a client of the other family than its backend's is that
        backend's failed connect at run time (docs/configuration.md, "Transparent mode")."""
        if accept_proxy or not listen:
            return True
        families = {e.family for e in listen}
        other = [(j, b) for j, b in backends if b.address.family not in families]
        if not other:
            return True
        have = sorted(families)[0]
        family = 4 if have == 6 else 6
        which = _which(other)
        own = path[-3:-1] == ("backends", other[0][0])  # a backend's own source = "client"
        if own:
            first = other[0][1]
            which = f"the backend ({quote(first.address.text or str(first.address))}) is"
        many = len(other) > 1
        self.error(path, f'{label}: "client" binds each client\'s address, but {which} '
                   f"IPv{family} and the service listens on IPv{have} only, so no client could "
                   f"reach {'them' if many else 'it'} (a connection leaves from an address of "
                   f"its backend's family; give {'them' if many else 'it'} another source, or "
                   f"listen on IPv{family} too)")
        return False

    def transparent_allowed(self, path: KeyPath, label: str, families: Sequence[int]) -> bool:
        """With host checks on, can this process set IP_TRANSPARENT (IPv4) / IPV6_TRANSPARENT
        (IPv6) on a socket of each family in `families`? Reports the first refusal at `path`;
        each family is tried once per load."""
        if self.host is None:
            return True
        for version in families:
            if version not in self.transparent_errnos:
                self.transparent_errnos[version] = self.host.transparent_errno(version)
            err = self.transparent_errnos[version]
            if err == 0:
                continue
            option = "IP_TRANSPARENT" if version == 4 else "IPV6_TRANSPARENT"
            why = ("this process has neither CAP_NET_ADMIN nor CAP_NET_RAW" if err == errno.EPERM
                   else "this kernel refuses it")
            self.error(path, f'{label}: "client" (transparent) needs {option} on every backend '
                       f"socket, and setting it fails ({os.strerror(err).lower()}): {why} (run "
                       "l4lb as root or give it CAP_NET_ADMIN, or leave source out)")
            return False
        return True

    def backend_fast_open(self, scope: _Scope, table: dict[str, Any], protocol: Protocol) -> bool:
        """The `backend_fast_open` switch. On for a TCP service with host checks on, the host
        must let clients use TCP Fast Open: bit 0x1 of net.ipv4.tcp_fastopen (an unreadable
        sysctl is not held against the file). A UDP service gets the "tcp only" error."""
        value = self.read_bool(scope, table, "backend_fast_open", False)
        if not value or self.host is None or protocol != "tcp":
            return value
        if self.fastopen_sysctl is None:
            words = self.host.ipv4_sysctl_words("tcp_fastopen")
            self.fastopen_sysctl = words[0] if words else ""
        word = self.fastopen_sysctl
        if word and not (word.isdigit() and int(word) & TFO_CLIENT):
            self.error((*scope.path, "backend_fast_open"),
                       f"{scope.label('backend_fast_open')}: this host does not let clients use "
                       f"TCP Fast Open (net.ipv4.tcp_fastopen = {word}, without the client bit "
                       f"0x1); set it, e.g. sysctl -w net.ipv4.tcp_fastopen="
                       f"{int(word) | TFO_CLIENT if word.isdigit() else 1}, or leave "
                       "backend_fast_open out")
            return False
        return value

    def socket_buffer(self, scope: _Scope, table: dict[str, Any], key: str) -> int:
        """A socket buffer size in bytes (client_sndbuf, ...): 0 (the kernel's autotuning), or
        SOCKBUF_MIN..SOCKBUF_MAX. Whether the host caps it (net.core.wmem_max / rmem_max
        without CAP_NET_ADMIN) is not an error: the daemon shows what the kernel applied."""
        value = table.get(key)
        if (isinstance(value, int) and not isinstance(value, bool)
                and value != 0 and not SOCKBUF_MIN <= value <= SOCKBUF_MAX):
            shown = str(value) if abs(value) < 10**30 else "a very large number"
            self.error((*scope.path, key), f"{scope.label(key)}: {shown} out of range (0 for "
                       f"the kernel's autotuning, or {SOCKBUF_MIN}..{SOCKBUF_MAX} bytes)")
            return 0
        return self.read_int(scope, table, key, 0, 0, SOCKBUF_MAX)

    def congestion_control(self, scope: _Scope, table: dict[str, Any], key: str,
                           protocol: Protocol) -> str | None:
        """A congestion control name (None: absent or reported). Its form is always checked;
        whether this host lets this process use it, only with host checks on and for TCP (a
        UDP service gets the "tcp only" error instead)."""
        value = self.read_str(scope, table, key)
        if value is None:
            return None
        path = (*scope.path, key)
        if not congestion_control_name_ok(value):
            self.error(path, f"{scope.label(key)}: {quote(value)} is not a congestion control "
                       f"name: use 1 to {CC_NAME_MAX} characters of A-Z a-z 0-9 _ - "
                       '(for example "cubic" or "bbr")')
            return None
        if self.host is None or protocol != "tcp":
            return value
        if value not in self.cc_problems:
            self.cc_problems[value] = congestion_control_problem(self.host, value)
        problem = self.cc_problems[value]
        if problem is not None:
            self.error(path, f"{scope.label(key)}: {problem}")
            return None
        return value

    def read_fraction(self, scope: _Scope, table: dict[str, Any], key: str, default: float,
                      hi: float) -> float:
        if key not in table:
            return default
        value = table[key]
        path = (*scope.path, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.wrong_type(path, scope.label(key), "a number", value)
            return default
        if not 0 <= value <= hi:
            self.error(path, f"{scope.label(key)}: {value} out of range (0..{hi:g})")
            return default
        return float(value)

    def health(self, scope: _Scope, value: object, proxy: ProxyVersion,
               protocol: Protocol = "tcp", service: str = "") -> HealthSettings | None:
        """The service's [services.health] table; None when absent or wrong. proxy: the
        service's proxy_protocol, which send_expect probes speak too unless health.send_proxy
        says otherwise (by default they do when they probe the traffic port, as HAProxy's
        checks follow send-proxy unless a check port is set)."""
        path = (*scope.path, "health")
        table = self.read_table(path, scope.label("health"), value)
        if table is None:
            return None
        hs = _Scope(path=path, table=f"{scope.table}: health", prefix=f"{scope.prefix}health.")
        before = len(self.diagnostics)
        self.check_keys(hs, table, HEALTH_KEYS, {})
        d = DEFAULT_SETTINGS
        send = b""
        if "send" in table and "send_hex" in table:
            self.error((*path, "send_hex"), f"{hs.label('send_hex')}: give send or send_hex, "
                       "not both")
        elif (text := self.read_str(hs, table, "send")) is not None:
            send = text.encode()
        elif (hex_text := self.read_str(hs, table, "send_hex")) is not None:
            try:
                send = bytes.fromhex(hex_text)
            except ValueError:
                self.error((*path, "send_hex"), f"{hs.label('send_hex')}: {quote(hex_text)} is "
                           "not hex bytes (e.g. \"0d0a\")")
        expect: bytes | re.Pattern[bytes] | None = None
        if "expect" in table and "expect_regex" in table:
            self.error((*path, "expect_regex"), f"{hs.label('expect_regex')}: give expect or "
                       "expect_regex, not both")
        elif (prefix := self.read_str(hs, table, "expect")) is not None:
            expect = prefix.encode()
        elif (pattern := self.read_str(hs, table, "expect_regex")) is not None:
            try:
                expect = re.compile(pattern.encode())
            except re.error as exc:
                self.error((*path, "expect_regex"),
                           f"{hs.label('expect_regex')}: not a valid regex: {exc}")
        down_interval = (self.read_duration(hs, table, "down_interval", 1.0, zero_ok=False)
                         if "down_interval" in table else None)
        fast_interval = (self.read_duration(hs, table, "fast_interval", 1.0, zero_ok=False)
                         if "fast_interval" in table else None)
        port = self.read_int(hs, table, "port", 1, 1, 65535) if "port" in table else None
        source = self.read_str(hs, table, "source")
        if source == CLIENT:
            self.error((*path, "source"), f'{hs.label("source")}: "client" is for backend '
                       "connections only: a probe has no client whose address it could leave "
                       "from, so probes are never transparent (leave health.source out for the "
                       "kernel's choice, or give an address of this host)")
            source = None
        elif source is not None:
            try:
                ipaddress.ip_address(source)
            except ValueError:
                self.error((*path, "source"), f"{hs.label('source')}: {quote(source)} is not an "
                           "IP address (probes never resolve names)")
                source = None
        kind = self.read_enum(hs, table, "kind", d.kind, PROBE_KINDS)
        send_proxy = self.read_bool(hs, table, "send_proxy", proxy != "off" and port is None)
        explicit = isinstance(table.get("send_proxy"), bool)  # a bad value is reported once
        if "send_proxy" in table and not explicit:
            send_proxy = False
        elif explicit and protocol != "tcp":
            self.error((*path, "send_proxy"), f"{hs.label('send_proxy')}: applies to "
                       'protocol = "tcp" only (UDP services send no PROXY header)')
            send_proxy = False
        elif send_proxy and explicit and proxy == "off":
            self.error((*path, "send_proxy"), f"{hs.label('send_proxy')}: the service sends no "
                       "PROXY header (proxy_protocol is off), so its probes have none to send; "
                       'set proxy_protocol = "v1" or "v2", or leave send_proxy out')
            send_proxy = False
        elif send_proxy and explicit and kind not in PROXY_KINDS:
            why = ("a datagram carries no PROXY header" if kind == "udp"
                   else "the command makes its own connections" if kind == "exec"
                   else "a connect-only probe sends no header")
            self.error((*path, "send_proxy"), f"{hs.label('send_proxy')}: only kinds "
                       f'"send_expect", "http" and "tls" send a PROXY header, and this probe '
                       f"is {quote(kind)}; {why} (leave send_proxy out)")
            send_proxy = False
        values: dict[str, Any] = dict(
            kind=kind,
            proxy_protocol=proxy if send_proxy and kind in PROXY_KINDS else "off",
            interval=self.read_duration(hs, table, "interval", d.interval, zero_ok=False),
            timeout=self.read_duration(hs, table, "timeout", d.timeout, zero_ok=False),
            rise=self.read_int(hs, table, "rise", d.rise, 1, 100),
            fall=self.read_int(hs, table, "fall", d.fall, 1, 100),
            start_period=self.read_duration(hs, table, "start_period", d.start_period,
                                            zero_ok=True),
            down_interval=down_interval,
            fast_interval=fast_interval,
            jitter=self.read_fraction(hs, table, "jitter", d.jitter, MAX_JITTER),
            port=port, source=source, send=send, expect=expect,
            initial_state=self.read_enum(hs, table, "initial_state", d.initial_state,
                                         INITIAL_STATES),
            max_fails=self.read_int(hs, table, "max_fails", d.max_fails, 0, 100_000),
            fail_timeout=self.read_duration(hs, table, "fail_timeout", d.fail_timeout,
                                            zero_ok=False),
            min_healthy=self.read_fraction(hs, table, "min_healthy", d.min_healthy, 1.0),
            slow_start=self.read_duration(hs, table, "slow_start", d.slow_start, zero_ok=True),
            on_down=self.read_enum(hs, table, "on_down", d.on_down, ON_DOWN),
        )
        values.update(self.health_http(hs, table, kind))
        values.update(self.health_exec(hs, table, kind))
        values.update(self.health_tls(hs, table, kind))
        values.update(service=service, protocol=protocol)
        try:
            settings = HealthSettings(**values)
        except HealthSettingsError as exc:
            self.settings_problems(path, scope.prefix, "health", table, exc.problems, before)
            return None
        if settings.speaks_tls and self.host is not None and len(self.diagnostics) == before:
            self.tls_files(hs, table, settings)
        if settings.kind == "syn" and self.host is not None:
            if not self.raw_checked:
                self.raw_checked = True
                self.raw_problem = self.host.raw_socket_error()
            if self.raw_problem is not None:
                self.error((*path, "kind"), f'{hs.label("kind")}: "syn" probes need a raw '
                           f"socket, which this process cannot open ({self.raw_problem}); run "
                           'with CAP_NET_RAW (e.g. as root) or use kind "tcp"')
        return None if len(self.diagnostics) > before else settings

    def kind_only_keys(self, hs: _Scope, table: dict[str, Any], kind: str, owner: str,
                       keys: Iterable[str]) -> None:
        """Each of `keys` (which only kind `owner` takes) written in a health table of another
        `kind` is an error at its key, unless `kind` itself was wrong (reported once, there)."""
        if table.get("kind", kind) != kind:
            return
        for key in keys:
            if key in table:
                self.error((*hs.path, key), f'{hs.label(key)}: applies to kind = "{owner}" '
                           f"only (this probe is {quote(kind)})")

    def health_http(self, hs: _Scope, table: dict[str, Any], kind: str) -> dict[str, Any]:
        """The http_* keys of a health table as HealthSettings fields. With another kind
        each one written is an error at its key (unless `kind` itself was wrong)."""
        path = hs.path
        if kind != "http":
            self.kind_only_keys(hs, table, kind, "http", HTTP_KEYS)
            return {}
        out: dict[str, Any] = {}
        if (http_path := self.read_str(hs, table, "http_path")) is not None:
            out["http_path"] = http_path
        out["http_method"] = self.read_enum(hs, table, "http_method", "GET", HTTP_METHODS)
        if (host := self.read_str(hs, table, "http_host")) is not None:
            out["http_host"] = host
        if "http_expect_status" in table:
            value = table["http_expect_status"]
            key_path = (*path, "http_expect_status")
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str):
                self.wrong_type(key_path, hs.label("http_expect_status"),
                                'a string such as "200,204,301-308" (or one code)', value)
            else:
                try:
                    out["http_expect_status"] = parse_status_spec(value)
                except ValueError as exc:
                    self.error(key_path, f"{hs.label('http_expect_status')}: {exc}")
        if "http_expect_body" in table and "http_expect_body_regex" in table:
            self.error((*path, "http_expect_body_regex"),
                       f"{hs.label('http_expect_body_regex')}: give http_expect_body or "
                       "http_expect_body_regex, not both")
        elif (literal := self.read_str(hs, table, "http_expect_body")) is not None:
            out["http_expect_body"] = literal.encode()
        elif (pattern := self.read_str(hs, table, "http_expect_body_regex")) is not None:
            try:
                out["http_expect_body"] = re.compile(pattern.encode())
            except re.error as exc:
                self.error((*path, "http_expect_body_regex"),
                           f"{hs.label('http_expect_body_regex')}: not a valid regex: {exc}")
        return out

    def health_exec(self, hs: _Scope, table: dict[str, Any], kind: str) -> dict[str, Any]:
        """The keys of kind "exec" (command, command_user) as HealthSettings fields. With
        another kind each one written is an error at its key (unless `kind` itself was
        wrong). With host checks on, argv[0] must be a program this process can run and
        command_user a user of this host."""
        path = hs.path
        if kind != "exec":
            self.kind_only_keys(hs, table, kind, "exec", EXEC_FIELDS)
            return {}
        out: dict[str, Any] = {}
        key_path = (*path, "command")
        value = table.get("command")
        command: tuple[str, ...] = ()
        if isinstance(value, str):  # missing: HealthSettings says what to write
            argv = ", ".join(quote(word) for word in value.split()) or quote(value)
            self.wrong_type(key_path, hs.label("command"), "an array of strings (an argv list; "
                            "no shell runs it)", value, f"write [{argv}]")
        else:
            before = len(self.diagnostics)
            command = self.read_str_array(hs, table, "command")
            if len(self.diagnostics) == before:
                out["command"] = command
        if "dynamic" in table:
            out["dynamic"] = self.read_bool(hs, table, "dynamic", False)
        user = self.read_str(hs, table, "command_user")
        ids: tuple[int, int] | None = None
        if user is not None:
            out["command_user"] = user
            if user and self.host is not None:
                ids = self.host.user_ids(user)
                if ids is None:
                    self.error((*path, "command_user"), f"{hs.label('command_user')}: no user "
                               f"{quote(user)} on this host")
        if command and command[0].startswith("/") and self.host is not None:
            # judged for the user the command runs as (its primary group alone)
            problem = self.host.program_problem(command[0], ids)
            if problem is not None:
                whose = f" (command_user {quote(user)})" if ids is not None and user else ""
                self.error((*key_path, 0), f"{hs.label('command')}[0]: {quote(command[0])} "
                           f"{self._program_words(problem)}{whose}")
        return out

    def health_tls(self, hs: _Scope, table: dict[str, Any], kind: str) -> dict[str, Any]:
        """The keys of checks over TLS as HealthSettings fields (HealthSettings says which
        kinds take them). Nothing when `kind` itself was wrong (reported once, there)."""
        if table.get("kind", kind) != kind:
            return {}
        out: dict[str, Any] = {}
        if "tls" in table:
            value = self.read_bool(hs, table, "tls", False)
            if kind == "tls" and table["tls"] is False:
                self.error((*hs.path, "tls"), f'{hs.label("tls")}: kind = "tls" always speaks '
                           "TLS (leave tls out; for a plain connect write kind = \"tcp\")")
            elif kind != "tls":
                out["tls"] = value
        for key in ("tls_server_name", *TLS_FILE_KEYS):
            if (text := self.read_str(hs, table, key)) is not None:
                out[key] = text
        if "tls_verify" in table:
            out["tls_verify"] = self.read_enum(hs, table, "tls_verify", "required", TLS_VERIFY)
        if "tls_min_version" in table:
            if isinstance(table["tls_min_version"], float):  # 1.2 written without quotes
                self.wrong_type((*hs.path, "tls_min_version"), hs.label("tls_min_version"),
                                "a string", table["tls_min_version"],
                                f'write "{table["tls_min_version"]}"')
            else:
                out["tls_min_version"] = self.read_enum(hs, table, "tls_min_version", "1.2",
                                                        TLS_VERSIONS)
        if "tls_alpn" in table:
            if isinstance(table["tls_alpn"], str):
                self.wrong_type((*hs.path, "tls_alpn"), hs.label("tls_alpn"),
                                "an array of strings", table["tls_alpn"],
                                f"write [{quote(table['tls_alpn'])}]")
            else:
                out["tls_alpn"] = self.read_str_array(hs, table, "tls_alpn")
        return out

    def tls_files(self, hs: _Scope, table: dict[str, Any], settings: HealthSettings) -> None:
        """With host checks on: every file a TLS check names must be readable, and together
        they must make a client context (PEM certificates, a key that matches, CA
        certificates to verify with), so `l4lb check` finds what the first probe would."""
        assert self.host is not None
        unreadable = False
        for key in TLS_FILE_KEYS:
            file = getattr(settings, key)
            if file is None:
                continue
            problem = self.host.file_problem(file)
            if problem is not None:
                unreadable = True
                self.error((*hs.path, key), f"{hs.label(key)}: {quote(file)} cannot be read: "
                           f"{problem}")
        if unreadable:
            return
        found = self.host.tls_problem(settings)
        if found is None:
            return
        key, problem = found
        if key == "tls_verify":
            self.error((*hs.path, key), f'{hs.label(key)}: "required"'
                       f'{"" if key in table else " (the default)"} needs CA certificates to '
                       f"verify with, and this host's system store has none: set tls_ca_file "
                       '= "/path/to/ca.pem" (the CA that signed the backends\' certificates), or '
                       'write tls_verify = "none" to check the handshake without verifying',
                       at_key=key not in table, position_of=None if key in table else hs.path)
            return
        self.error((*hs.path, key), f"{hs.label(key)}: {quote(getattr(settings, key))} "
                   f"{problem}")

    # ------------------------------------------------------------ [services.agent]

    def agent(self, scope: _Scope, value: object,
              backends: Sequence[tuple[int, Backend]]) -> AgentSettings | None:
        """The service's [services.agent] table; None when it is wrong (reported). `port` is
        required unless every backend has its own `agent_port`."""
        path = (*scope.path, "agent")
        table = self.read_table(path, scope.label("agent"), value)
        if table is None:
            return None
        ags = _Scope(path=path, table=f"{scope.table}: agent", prefix=f"{scope.prefix}agent.")
        before = len(self.diagnostics)
        self.check_keys(ags, table, AGENT_KEYS, {})
        d = AgentSettings()
        port = self.read_int(ags, table, "port", 1, 1, 65535) if "port" in table else None
        if "port" not in table and any(b.agent_port is None for _, b in backends):
            lacking = [j for j, b in backends if b.agent_port is None]
            self.error((*path, "port"), f"{ags.table}: missing required key \"port\" (the "
                       f"agents' TCP port; backends[{lacking[0]}] has no agent_port of its "
                       "own)", at_key=True, position_of=path)
        durations = len(self.diagnostics)
        interval = self.read_duration(ags, table, "interval", d.interval, zero_ok=False)
        timeout = self.read_duration(ags, table, "timeout", d.timeout, zero_ok=False)
        if timeout > interval and len(self.diagnostics) == durations:
            key = "timeout" if "timeout" in table else "interval"
            self.error((*path, key), f"{ags.label('timeout')}: "
                       f"{suggest_duration(round(timeout * 1000))} must not exceed interval "
                       f"{suggest_duration(round(interval * 1000))} (one poll at a time per "
                       "backend)")
        send = self.read_agent_send(ags, table, "send")
        address = self.read_agent_address(ags, table, "address")
        if len(self.diagnostics) > before:
            return None
        return AgentSettings(port=port, interval=interval, timeout=timeout,
                             send=send or b"", address=address)

    def read_agent_send(self, scope: _Scope, table: dict[str, Any], key: str) -> bytes | None:
        """An agent's `send` text (at most 1024 bytes, known placeholders only,
        l4lb.health.agentsend) as UTF-8; None: absent or reported."""
        send = self.read_str(scope, table, key)
        if send is None:
            return None
        if len(send.encode()) > 1024:
            self.error((*scope.path, key), f"{scope.label(key)}: {len(send.encode())} bytes "
                       "is more than 1024")
            return None
        wrong = agent_send_problem(send)
        if wrong is not None:
            self.error((*scope.path, key), f"{scope.label(key)}: {wrong}")
            return None
        return send.encode()

    def agent_source(self, scope: _Scope, agent: AgentSettings,
                     backends: Sequence[tuple[int, Backend]], source: str) -> None:
        """Agents are polled from `health.source`, as probes are: every agent's address must
        be of its family."""
        version = ipaddress.ip_address(source).version
        for j, backend in backends:
            host, _ = agent.target(backend)
            if ipaddress.ip_address(host).version != version:
                self.error((*scope.path, "agent"), f"{scope.label('agent')}: the agent of "
                           f"backends[{j}] ({host}) is not IPv{version}, but agents are polled "
                           f"from health.source {source}, as probes are (give it an IPv{version}"
                           " agent_address, or leave health.source out)",
                           at_key=True)
                return

    def read_agent_address(self, scope: _Scope, table: dict[str, Any], key: str) -> str | None:
        """An agent's IP address (no name, no port, no zone); None: absent or reported."""
        text = self.read_str(scope, table, key)
        if text is None:
            return None
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            self.error((*scope.path, key), f"{scope.label(key)}: {quote(text)} is not an IP "
                       "address (agents are polled by address; names are never resolved, and "
                       "the port is agent_port's or port's)")
            return None
        if ip.is_unspecified or ip.is_multicast or \
                (isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None):
            self.error((*scope.path, key), f"{scope.label(key)}: {text} cannot be polled (a "
                       "wildcard, multicast or zoned address)")
            return None
        return str(ip)

    def agent_keys_alone(self, scope: _Scope, table: dict[str, Any]) -> None:
        """agent_port / agent_address on a backend of a service without [services.agent]."""
        raw = table.get("backends")
        if not isinstance(raw, list):
            return
        for j, entry in enumerate(raw):
            if not isinstance(entry, dict):
                continue
            for key in ("agent_port", "agent_address", "agent_send"):
                if key in entry:
                    self.error((*scope.path, "backends", j, key),
                               f"{scope.label('backends')}[{j}].{key}: the service has no "
                               "[services.agent] table, so no agent is polled")

    @staticmethod
    def _program_words(problem: str) -> str:
        """A host's program_problem as the rest of a sentence about the path."""
        return problem if problem.startswith("is ") else f"cannot be run: {problem}"

    def service_name(self, scope: _Scope, table: dict[str, Any], i: int) -> str:
        if "name" not in table:
            self.missing(scope, "name")
            return ""
        name = self.read_str(scope, table, "name")
        if name is None:
            return ""
        path = (*scope.path, "name")
        if len(name) > NAME_MAX_LEN or not _SERVICE_NAME.fullmatch(name):
            self.error(path, f"{scope.label('name')}: invalid service name {quote(name)}: use 1 "
                             f'to {NAME_MAX_LEN} letters, digits, "_", "." or "-", starting with '
                             "a letter or digit")
            return name
        first = self.service_names.setdefault(name, i)
        if first != i:
            self.error(path, f"{scope.label('name')}: duplicate service name {quote(name)} "
                             f"(also services[{first}])")
        return name

    def maglev_table_size(self, scope: _Scope, table: dict[str, Any]) -> int:
        default = _SERVICE_DEFAULTS.maglev_table_size
        size = self.read_int(scope, table, "maglev_table_size", default, 1, MAX_MAGLEV_TABLE_SIZE)
        if is_prime(size):
            return size
        around = " and ".join(str(p) for p in nearest_primes(size))
        self.error((*scope.path, "maglev_table_size"),
                   f"{scope.label('maglev_table_size')}: {size} is not prime "
                   f"(nearest primes: {around})")
        return default

    def listen(self, scope: _Scope, table: dict[str, Any], i: int,
               protocol: Protocol) -> list[Endpoint]:
        if "listen" not in table:
            self.missing(scope, "listen")
            return []
        value = table["listen"]
        path = (*scope.path, "listen")
        label = scope.label("listen")
        if isinstance(value, str):
            self.wrong_type(path, label, "an array of addresses", value,
                            f"write [{quote(value)}]")
            return []
        if not isinstance(value, list):
            self.wrong_type(path, label, "an array of addresses", value)
            return []
        if not value:
            self.error(path, f"{label}: must not be empty")
            return []
        endpoints: list[Endpoint] = []
        for k, item in enumerate(value):
            item_path = (*path, k)
            item_label = f"{label}[{k}]"
            if not isinstance(item, str):
                self.wrong_type(item_path, item_label, "an address string", item)
                continue
            try:
                endpoint = parse_endpoint(item, wildcard_ok=True)
            except ValueError as exc:
                self.error(item_path, f"{item_label}: {exc}")
                continue
            claim = _ListenClaim(service=i, service_label=scope.table, index=k, endpoint=endpoint)
            self.claim_listen(item_path, item_label, protocol, claim)
            endpoints.append(endpoint)
        return endpoints

    def claim_listen(self, path: KeyPath, label: str, protocol: Protocol,
                     claim: _ListenClaim) -> None:
        """Report a listen address that another one (in any service) already takes."""
        ep = claim.endpoint
        family = 4 if ":" not in ep.host else 6
        wildcard = ep.host in ("0.0.0.0", "::")
        exact_key = (protocol, ep.host, ep.port)
        port_key = (protocol, family, ep.port)
        first = self.listen_exact.get(exact_key)
        if first is not None:
            if first.service == claim.service:
                self.error(path, f"{label}: {quote(ep.text)} is listed twice "
                                 f"(also listen[{first.index}])")
            else:
                self.error(path, f"{label}: {quote(ep.text)} is already a listen address of "
                                 f"{first.service_label}")
            return
        other = (self.listen_specific if wildcard else self.listen_wildcard).get(port_key)
        if other is not None:
            owner = ("this service" if other.service == claim.service
                     else other.service_label)
            every = f"port {ep.port} on every IPv{family} address"
            if wildcard:
                message = (f"{quote(ep.text)} takes {every}, so it overlaps "
                           f"{quote(other.endpoint.text)} of {owner}")
            else:
                message = (f"{quote(ep.text)} overlaps {quote(other.endpoint.text)} of {owner}, "
                           f"which takes {every}")
            self.error(path, f"{label}: {message}")
        self.listen_exact[exact_key] = claim
        if wildcard:
            self.listen_wildcard.setdefault(port_key, claim)
        else:
            self.listen_specific.setdefault(port_key, claim)

    # ------------------------------------------------------------ backends

    def round_robin_weights(self, scope: _Scope, table: dict[str, Any],
                            indexed: list[tuple[int, Backend]]) -> None:
        """round_robin takes every backend in turn whatever its weight (forwarding-table.md),
        so different weights in the file are a mistake (HAProxy's weighted `roundrobin` is
        l4lb's weighted_round_robin): reported at the weight of the first backend whose weight
        differs from the first backend's (at the first backend's when only that one has the
        key)."""
        if not indexed:
            return
        first_j, first = indexed[0]
        for j, backend in indexed[1:]:
            if backend.weight == first.weight:
                continue
            entries = table.get("backends", [])
            at = j if isinstance(entries[j], dict) and "weight" in entries[j] else first_j
            label = f"{scope.label('backends')}[{at}].weight"
            self.error((*scope.path, "backends", at, "weight"),
                       f"{label}: backend weights differ ({first.weight} and {backend.weight}) "
                       'but scheduler "round_robin" ignores weights; use scheduler = '
                       '"weighted_round_robin"')
            return

    def backends(self, scope: _Scope, table: dict[str, Any]) -> list[tuple[int, Backend]]:
        """The service's valid backends, each with its index in the file."""
        if "backends" not in table:
            self.missing(scope, "backends")
            return []
        value = table["backends"]
        path = (*scope.path, "backends")
        label = scope.label("backends")
        if isinstance(value, dict):
            self.error(path, f"{label}: expected an array of tables ([[services.backends]]), "
                             "found a table", at_key=True)
            return []
        if not isinstance(value, list):
            self.wrong_type(path, label, "an array of tables ([[services.backends]])", value)
            return []
        if not value:
            self.error(path, f"{label}: must not be empty (a service needs at least one backend)")
            return []
        backends: list[tuple[int, Backend]] = []
        named: list[tuple[int, Backend]] = []  # those with a `name` key
        by_address: dict[tuple[str, int], int] = {}
        by_name: dict[str, int] = {}
        for j, entry in enumerate(value):
            entry_path = (*path, j)
            entry_label = f"{label}[{j}]"
            self.backend_total += 1
            if self.backend_total == MAX_BACKENDS + 1:
                self.error(entry_path, f"{entry_label}: too many backends (at most "
                                       f"{MAX_BACKENDS} in all services together)", at_key=True)
            if isinstance(entry, str):
                self.wrong_type(entry_path, entry_label, "a table", entry,
                                f"write {{ address = {quote(entry)} }}")
                continue
            entry_table = self.read_table(entry_path, entry_label, entry)
            if entry_table is None:
                continue
            bscope = _Scope(path=entry_path, table=entry_label, prefix=f"{entry_label}.")
            backend = self.backend(bscope, entry_table)
            if backend is None:
                continue
            key = (backend.address.host, backend.address.port)
            first = by_address.setdefault(key, j)
            if first != j:
                self.error((*entry_path, "address"),
                           f"{bscope.label('address')}: {quote(backend.address.text)} is already "
                           f"the address of backends[{first}]")
            first = by_name.setdefault(backend.name, j)
            if first != j and "name" in entry_table:
                self.error((*entry_path, "name"),
                           f"{bscope.label('name')}: duplicate backend name {quote(backend.name)} "
                           f"(also backends[{first}])")
            elif first != j and by_address[key] == j:
                self.error(entry_path,
                           f"{entry_label}: its default name {quote(backend.name)} (its address) "
                           f"is already the name of backends[{first}]", at_key=True)
            backends.append((j, backend))
            if "name" in entry_table:
                named.append((j, backend))
        self.names_not_addresses(path, label, backends, named, by_address)
        return backends

    def names_not_addresses(self, path: KeyPath, label: str, backends: list[tuple[int, Backend]],
                            named: list[tuple[int, Backend]],
                            by_address: dict[tuple[str, int], int]) -> None:
        """A backend's name must not be (a spelling of) another backend's address: the CLI and
        the control API take either to mean a backend (l4lb drain web 10.0.0.2:80)."""
        names = {j: backend.name for j, backend in backends}
        for j, backend in named:
            try:
                endpoint = parse_endpoint(backend.name, wildcard_ok=False)
            except ValueError:
                continue
            other = by_address.get((endpoint.host, endpoint.port))
            # the same text as the other's name is already reported as a duplicate name
            if other is not None and other != j and names.get(other) != backend.name:
                self.error((*path, j, "name"),
                           f"{label}[{j}].name: {quote(backend.name)} is the address of "
                           f"backends[{other}]; a backend's name must not be another backend's "
                           "address (l4lb drain and the control API would not know which one "
                           "is meant)")

    def backend(self, scope: _Scope, table: dict[str, Any]) -> Backend | None:
        """The backend, or None when its address is missing or invalid (already reported)."""
        self.check_keys(scope, table, BACKEND_KEYS, _BACKEND_HOMES)
        d = _BACKEND_DEFAULTS
        address: Endpoint | None = None
        if "address" not in table:
            self.missing(scope, "address")
        else:
            text = self.read_str(scope, table, "address")
            if text is not None:
                try:
                    address = parse_endpoint(text, wildcard_ok=False)
                except ValueError as exc:
                    self.error((*scope.path, "address"), f"{scope.label('address')}: {exc}")
        name = self.backend_name(scope, table, address)
        weight = self.read_int(
            scope, table, "weight", d.weight, 1, MAX_WEIGHT,
            zero_hint="weight 0 is only for the runtime API (l4lb drain, l4lb weight)",
        )
        max_connections = self.read_int(scope, table, "max_connections", d.max_connections,
                                        0, U32_MAX)
        backup = self.read_bool(scope, table, "backup", d.backup)
        source = self.read_source(scope, table)
        written: str | None = None
        path, label = (*scope.path, "source"), scope.label("source")
        if isinstance(source, str):  # CLIENT: its families are checked by service_source
            if address is None or self.transparent_allowed(path, label, [address.family]):
                written = source
        elif source is not None and address is not None and address.family != source.version:
            self.error(path, f"{label}: {source} is IPv{source.version}, but the backend's "
                       f"address {quote(address.text or str(address))} is IPv{address.family}")
        elif source is not None and self.source_bindable(path, label, source,
                                                         "backend connections"):
            written = str(source)
        agent_port = (self.read_int(scope, table, "agent_port", 1, 1, 65535)
                      if "agent_port" in table else None)
        agent_address = self.read_agent_address(scope, table, "agent_address")
        agent_send = self.read_agent_send(scope, table, "agent_send")
        if address is None:
            return None
        return Backend(address=address, name=name, weight=weight,
                       max_connections=max_connections, backup=backup, source=written,
                       agent_port=agent_port, agent_address=agent_address,
                       agent_send=agent_send)

    def backend_name(self, scope: _Scope, table: dict[str, Any], address: Endpoint | None) -> str:
        if "name" not in table:
            return address.text if address is not None else ""
        name = self.read_str(scope, table, "name")
        if name is None:
            return ""
        if not 1 <= len(name) <= NAME_MAX_LEN or not all(
            c.isprintable() and not c.isspace() for c in name
        ):
            self.error((*scope.path, "name"),
                       f"{scope.label('name')}: invalid backend name {quote(name)}: use 1 to "
                       f"{NAME_MAX_LEN} characters without spaces or control characters")
        return name


def _element_of(text: str, values: list[Any], message: str,
                found: Sequence[Diagnostic]) -> int | None:
    """Which element of an array a settings problem is about: the one it starts with (as
    written, quoted, or as the address it is); of an element "listed twice", the later copy.
    None when the problem is about the array as a whole."""
    text = text.strip()
    matches = []
    for k, value in enumerate(values):
        if not isinstance(value, str):
            continue
        spellings = {value, repr(value)}
        with contextlib.suppress(ValueError):
            spellings.add(str(parse_vip(value).address.ip))
        if any(text.startswith(f"{s} ") for s in spellings):
            matches.append(k)
    if not matches:
        return None
    if text.endswith("is listed twice"):  # the n-th report of it is about the (n+1)-th copy
        n = sum(1 for d in found if d.message == message)
        return matches[min(n + 1, len(matches) - 1)]
    return matches[0]


def _router_of(table: dict[str, Any]) -> tuple[str, int, int] | None:
    """(interface, virtual_router_id, family) of a [[vrrp]] table as written, None when one of
    them is missing or not valid (reported at the key)."""
    interface, vrid, vips = table.get("interface"), table.get("virtual_router_id"), \
        table.get("vips")
    if not is_ifname(interface) or not isinstance(interface, str) or \
            isinstance(vrid, bool) or not isinstance(vrid, int) or not 1 <= vrid <= 255 or \
            not isinstance(vips, list) or not vips or not isinstance(vips[0], str):
        return None
    try:
        family = parse_vip(vips[0]).address.version
    except ValueError:
        return None
    return interface, vrid, family


def _no_interface(name: str, links: Mapping[str, object]) -> str:
    """The message for an interface name this host does not have."""
    names = sorted(links)
    shown = ", ".join(names[:MAX_LISTED]) + (f" and {len(names) - MAX_LISTED} more"
                                               if len(names) > MAX_LISTED else "")
    return f"no interface named {quote(name)} on this host (it has {shown})"


def congestion_control_problem(host: HostChecks, name: str) -> str | None:
    """Why the process `host` answers for cannot set TCP congestion control `name` (a
    well-formed name), or None when it can."""
    err = host.congestion_control_errno(name)
    if err == 0:
        return None
    if err == errno.ENOENT:
        available = host.ipv4_sysctl_words("tcp_available_congestion_control")
        message = (f"{quote(name)} is not a congestion control algorithm of this kernel "
                   f"(net.ipv4.tcp_available_congestion_control: {' '.join(available)})")
        guess = suggest(name, available)
        return message + (f"; did you mean {quote(guess)}?" if guess is not None else "")
    if err == errno.EPERM:
        allowed = host.ipv4_sysctl_words("tcp_allowed_congestion_control")
        return (f"{quote(name)} is not allowed for this process: without CAP_NET_ADMIN only "
                f"net.ipv4.tcp_allowed_congestion_control may be used ({' '.join(allowed)}); "
                f"run l4lb as root (or with CAP_NET_ADMIN), or add {name} to that sysctl")
    return f"{quote(name)} cannot be set on a TCP socket: {os.strerror(err).lower()}"


def _vip_ips(vrrp: object) -> set[IPAddress]:
    """The addresses of the `vips` of a raw [[vrrp]] array (what does not parse is skipped:
    the [[vrrp]] checks report it)."""
    out: set[IPAddress] = set()
    for table in vrrp if isinstance(vrrp, list) else []:
        vips = table.get("vips") if isinstance(table, dict) else None
        for text in vips if isinstance(vips, list) else []:
            with contextlib.suppress(ValueError, AttributeError):
                out.add(parse_vip(text).address.ip)
    return out


def validate(doc: dict[str, Any], locator: Locator, file: str,
             host: HostChecks | None = None,
             running_vrrp: Collection[VrrpSettings] = ()) -> Config | list[Diagnostic]:
    """The Config for a parsed document, or every problem found in it (unsorted).

    `host` answers what the document asks of the host it will run on (l4lb.config.host); None
    skips those checks. `running_vrrp` (a reload's running instances): a [[vrrp]] table equal to
    one of them skips its host checks."""
    checker = _Checker(locator, file, host, running_vrrp)
    config = checker.document(doc)
    if checker.diagnostics:
        return checker.diagnostics
    return config


def _which(other: list[tuple[int, Any]]) -> str:
    """The backends of another family than a source's, for its error: `backends[2]
    ("10.0.1.5:80") is`, `backends[2] ("10.0.1.5:80") and 3 other backends are`."""
    j, first = other[0]
    which = f"backends[{j}] ({quote(first.address.text or str(first.address))})"
    if len(other) > 1:
        which += f" and {len(other) - 1} other backend{'s' if len(other) > 2 else ''}"
    return which + (" are" if len(other) > 1 else " is")
