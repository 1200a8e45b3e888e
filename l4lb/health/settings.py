"""Health-check settings of one service: one frozen, validated dataclass with documented defaults.

The config module turns the TOML `[services.health]` table into a `HealthSettings`; everything
under `l4lb.health` reads only this object. Construction validates every field and raises
`ValueError` whose text names the field (`health.timeout: 3s must not exceed interval 2s`), so the
config loader can attach file:line:col and collect it with its other diagnostics.

Why these defaults (the same numbers as HAProxy's, for the same reasons):

- interval 2 s, rise 2, fall 3: a dead backend is out within about fall x interval = 6 s, a
  recovered one back within rise x interval = 4 s, and one lost packet never flips a backend.
  Detection of a dead backend costs clients little even before that: the data plane retries a
  refused or timed-out connect on another backend.
- timeout 1 s: a connect to a live backend on a LAN takes well under a millisecond; 1 s is the
  Linux initial SYN retransmission time, so a probe whose SYN was lost fails alone and `fall`
  absorbs it. The timeout must not exceed the interval, so one backend never has two probes in
  flight and the probe rate stays at most one per interval.
- initial_state "up": a backend is in rotation from the start and the first failed probe takes it
  out at once (it never proved itself); "down" keeps it out until `rise` probes passed. "up" is
  the default because at daemon start every backend is new, and "down" would refuse every client
  for rise x interval seconds.
- jitter 0.1: each interval is stretched or shrunk by up to 10 % at random, so probes started
  together (start-up, a network blip that timed them all out) drift apart instead of hitting the
  backends and the checker in bursts.
- down_interval None (= interval): a DOWN backend is probed as often as an UP one, so it comes
  back as fast as possible; set it higher to spend less on backends that stay dead for long.
- fast_interval None (not set): a backend in transition (UP with a failed probe counted, or
  DOWN with a passed one; HAProxy's `fastinter`) is probed at the interval of its state, as
  before the key existed (`interval` while UP, `down_interval` while DOWN; both `interval`
  unless down_interval is set), so nothing changes unless asked. Set it lower to confirm a
  failing backend DOWN (or a recovering one UP) sooner without probing every steady backend
  that often. (HAProxy without `fastinter` probes a recovering server at `inter`, not
  `downinter`; keeping down_interval there is what keeps existing configurations unchanged.)
- max_fails 0 (passive checks off): the data plane already retries a failed connect elsewhere, so
  a dead backend between two probes costs a client one retry, while counting connect failures of
  an overloaded-but-alive backend as deaths pushes its load onto the others. Turn it on where the
  interval is long.
- min_healthy 0.1: if fewer than 10 % of a service's enabled backends are UP (for pools of up to
  ten backends: if none is), the checker is more likely wrong than the backends, so all of them
  stay in rotation ("panic"). 0 turns the guard off: with every backend DOWN, clients are refused.
- slow_start 0 (off): a ramp only helps backends with cold caches and needs weights > 1 to have
  any steps; the operator who wants it knows it.
- on_down "keep": a backend marked DOWN takes no new session, and the open ones go on (as with
  HAProxy without `on-marked-down shutdown-sessions`): a failed check often means the checked
  port or path failed while established sessions still work, and resetting them is a choice
  only the operator can make. "shutdown_sessions" resets them once the table without the
  backend is out (TCP services only; UDP flows move by themselves).
- kind "http": method GET (keepalived's HTTP_GET; HEAD saves the body but some applications
  answer it differently, and OPTIONS is often 405 on real applications), path "/", Host the
  backend's own address (the probe names no virtual host unless told), expected status
  200-399 (HAProxy's default for `option httpchk`: 2xx and 3xx pass), no body match.
- kind "udp": `send` is required and must not be empty. An empty datagram is legal UDP, but
  no protocol we know answers one, so such a probe could only ever fail: a closed port by
  ICMP, an open one by silence. `expect` is optional: without it any reply datagram passes.
- kind "exec": `command` is required (an argv list, run without a shell; argv[0] an absolute
  path, so the daemon's PATH never decides which program runs); `command_user` None runs it as
  the daemon's own user (keepalived's MISC_CHECK default too), because only the operator knows
  which unprivileged user can read what the script needs.
- checks over TLS (kind "tls", or tls = True with "http" and "send_expect"): tls_verify
  "required", with the system's CA store unless tls_ca_file is set, because a TLS check is
  there to see an expired or untrusted certificate (the loader refuses it on a host whose
  store is empty and says to set tls_ca_file or tls_verify = "none"); no server name (no SNI,
  no name check: backends are addresses, and certificates rarely carry IPs); minimum TLS 1.2.
  A kind of its own for the handshake check, not "tcp" + tls: `kind` names what decides the
  verdict, and "tcp" stays a plain connect that reads no files.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from dataclasses import dataclass
from typing import Literal

from l4lb.proxyproto import PROXY_VERSIONS, ProxyVersion

ProbeKind = Literal["tcp", "send_expect", "syn", "http", "udp", "exec", "tls"]
HttpMethod = Literal["GET", "HEAD", "OPTIONS"]
InitialState = Literal["up", "down"]
OnDown = Literal["keep", "shutdown_sessions"]
TlsVerify = Literal["required", "none"]
TlsVersion = Literal["1.2", "1.3"]

PROBE_KINDS: tuple[ProbeKind, ...] = ("tcp", "send_expect", "syn", "http", "udp", "exec",
                                      "tls")
ServiceProtocol = Literal["tcp", "udp"]
PAYLOAD_KINDS: tuple[ProbeKind, ...] = ("send_expect", "udp")  # the kinds that use send/expect
HTTP_METHODS: tuple[HttpMethod, ...] = ("GET", "HEAD", "OPTIONS")
INITIAL_STATES: tuple[InitialState, ...] = ("up", "down")
ON_DOWN: tuple[OnDown, ...] = ("keep", "shutdown_sessions")
TLS_VERIFY: tuple[TlsVerify, ...] = ("required", "none")
TLS_VERSIONS: tuple[TlsVersion, ...] = ("1.2", "1.3")
TLS_OPTIONAL_KINDS: tuple[ProbeKind, ...] = ("http", "send_expect")  # kinds that take tls = true
PROXY_KINDS: tuple[ProbeKind, ...] = ("send_expect", "http", "tls")  # kinds that send a header
# The keys (and HealthSettings fields) that apply only to checks over TLS, with their defaults.
TLS_DEFAULTS: dict[str, object] = {
    "tls_server_name": None, "tls_verify": "required", "tls_ca_file": None,
    "tls_client_cert": None, "tls_client_key": None, "tls_alpn": (), "tls_min_version": "1.2",
}
TLS_FIELDS = tuple(TLS_DEFAULTS)
MAX_ALPN = 8  # protocols offered by one probe
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")

MIN_INTERVAL = 0.01  # seconds; below this the checker would spend its time on one backend
MAX_JITTER = 0.5  # fraction; more would let two consecutive probes nearly coincide
MAX_SEND_BYTES = 4096  # a probe payload is a greeting, not a request body
MAX_EXPECT_BYTES = 1024  # a literal prefix longer than this belongs in a regex
MAX_HTTP_PATH = 1024  # bytes of http_path (a health URL, not a query API)
MAX_HTTP_HOST = 255  # bytes of http_host (a DNS name is at most 253, plus ":port")
DEFAULT_HTTP_STATUS: tuple[tuple[int, int], ...] = ((200, 399),)  # HAProxy's 2xx and 3xx
# The keys (and HealthSettings fields) of kind "http" alone, with their defaults.
HTTP_DEFAULTS: dict[str, object] = {
    "http_path": "/", "http_method": "GET", "http_host": None,
    "http_expect_status": DEFAULT_HTTP_STATUS, "http_expect_body": None,
}
HTTP_FIELDS = tuple(HTTP_DEFAULTS)
EXEC_FIELDS = ("command", "command_user", "dynamic")  # the keys (and fields) of kind "exec" alone
MAX_COMMAND_ARGS = 64  # an argv for a check script, not a job


class HealthSettingsError(ValueError):
    """Invalid health settings; `problems` lists every one, str() joins them with "; "."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems  # one line per problem, each naming its field


def parse_status_spec(text: str) -> tuple[tuple[int, int], ...]:
    """`"200,204,301-308"` -> ((200, 200), (204, 204), (301, 308)); ValueError with the reason.

    Items are separated by commas (spaces around them are ignored); each is a code or an
    inclusive range LOW-HIGH, every code from 100 to 599.
    """
    out: list[tuple[int, int]] = []
    items = text.split(",")
    for item in items:
        part = item.strip()
        match = re.fullmatch(r"([0-9]+)(?:\s*-\s*([0-9]+))?", part)
        if match is None:
            what = "an empty item" if not part else repr(part)
            raise ValueError(f"{what} is not a status code or range (write codes and ranges "
                             'such as "200,204,301-308")')
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        for code in (lo, hi):
            if not 100 <= code <= 599:
                raise ValueError(f"{code} is not an HTTP status code (100..599)")
        if lo > hi:
            raise ValueError(f"{lo}-{hi} is a reversed range (write {hi}-{lo})")
        out.append((lo, hi))
    return tuple(out)


def format_status_spec(spec: tuple[tuple[int, int], ...]) -> str:
    """The inverse of parse_status_spec: ((200, 399),) -> "200-399"."""
    return ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in spec)


def _q(value: object) -> str:
    """A string value in double quotes (as the config loader quotes them), else its repr."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _fmt_s(seconds: float) -> str:
    """`2s`, `0.5s`: a duration for an error message."""
    return f"{seconds:g}s"


@dataclass(frozen=True)
class HealthSettings:
    """How the backends of one service are checked, and how their states combine into weights.

    Durations are float seconds. `expect` is a literal prefix (bytes) the reply must start with,
    or a compiled bytes regex searched in what was read so far.
    """

    kind: ProbeKind = "tcp"  # "tcp": connect only; "send_expect": connect, send, read, match;
    # "syn": half-open, a SYN from a raw socket answered by SYN-ACK or RST (needs CAP_NET_RAW);
    # "http": one HTTP/1.1 request; "udp": one datagram `send`, one reply datagram (`expect`);
    # "exec": run `command`, exit status 0 passes (l4lb/health/execprobe.py); "tls": a
    # completed TLS handshake, with a certificate that verifies unless tls_verify is "none"
    interval: float = 2.0  # seconds between probes of an UP backend (start to start)
    timeout: float = 1.0  # whole probe: connect (+ send + read); <= interval
    rise: int = 2  # consecutive passed probes that bring a DOWN backend UP
    fall: int = 3  # consecutive failed probes that take an UP backend DOWN
    start_period: float = 0.0  # after a backend is added, failed probes are ignored this long
    down_interval: float | None = None  # seconds between probes of a DOWN backend; None=interval
    # seconds between probes while in transition (UP with >= 1 failure counted, DOWN with >= 1
    # pass counted; HAProxy's fastinter); None: the state's own interval, as without it
    fast_interval: float | None = None
    jitter: float = 0.1  # each interval is scaled by a random factor in [1-jitter, 1+jitter]
    port: int | None = None  # probe this port instead of the backend's port
    source: str | None = None  # bind probes to this source address (family must match)
    send: bytes = b""  # send_expect: bytes sent once connected (may be empty: banner protocols);
    # udp: the datagram (required, not empty)
    expect: bytes | re.Pattern[bytes] | None = None  # send_expect, udp: prefix or regex
    initial_state: InitialState = "up"  # state of a backend before its first probe
    max_fails: int = 0  # passive: this many failed connects within fail_timeout -> DOWN; 0 = off
    fail_timeout: float = 10.0  # passive: the sliding window in seconds
    min_healthy: float = 0.1  # below this fraction of UP backends the service panics; 0 = never
    slow_start: float = 0.0  # seconds over which a backend that came back ramps to its weight
    on_down: OnDown = "keep"  # a backend marked DOWN: "keep" its open sessions, or
    # "shutdown_sessions": reset them once the table without it is published (tcp only)
    # send_expect: the PROXY protocol header version probes send first (LOCAL / "PROXY UNKNOWN",
    # l4lb.proxyproto.local), "off" for none; the validator derives it from the service's
    # proxy_protocol and health.send_proxy
    proxy_protocol: ProxyVersion = "off"
    # kind "http" only (see docs/health.md): the request line's path and method, the Host
    # header (None: the probed address as host[:port]), the statuses that pass (inclusive
    # ranges), and a literal or regex the first 16 KiB of the body must contain (None: the
    # body is not read)
    http_path: str = "/"  # the defaults are HTTP_DEFAULTS
    http_method: HttpMethod = "GET"
    http_host: str | None = None
    http_expect_status: tuple[tuple[int, int], ...] = DEFAULT_HTTP_STATUS
    http_expect_body: bytes | re.Pattern[bytes] | None = None
    # kind "exec" only (see docs/health.md): the argv run for each probe (argv[0] an absolute
    # path, no shell) and the user it runs as (None: the daemon's own user)
    command: tuple[str, ...] = ()
    command_user: str | None = None
    # kind "exec" only: keepalived's misc_dynamic: exit status 2..255 passes and sets the
    # backend's weight to status - 2 (l4lb.health.dynamic); without it they fail
    dynamic: bool = False
    # the service these settings belong to, filled in by the config validator: kind "exec"
    # tells the command (L4LB_SERVICE, L4LB_PROTOCOL); "" for settings made elsewhere
    service: str = ""
    protocol: ServiceProtocol = "tcp"
    # checks over TLS (see docs/health.md): kinds "http" and "send_expect" speak TLS with
    # tls = True, kind "tls" always (a completed handshake, and a verified certificate, pass)
    tls: bool = False
    tls_server_name: str | None = None  # SNI and the name verified; None: neither
    tls_verify: TlsVerify = "required"  # "none": any certificate passes
    tls_ca_file: str | None = None  # PEM CAs to verify with; None: the system's store
    tls_client_cert: str | None = None  # PEM certificate presented (mTLS backends)
    tls_client_key: str | None = None  # its key; None: in tls_client_cert's file
    tls_alpn: tuple[str, ...] = ()  # ALPN protocols offered
    tls_min_version: TlsVersion = "1.2"

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise HealthSettingsError(problems)

    def problems(self) -> list[str]:
        """Every problem with these values, each a one-line message naming its field."""
        out: list[str] = []

        def duration(name: str, value: float, minimum: float, allow_zero: bool) -> bool:
            if not isinstance(value, int | float) or isinstance(value, bool) or \
                    not math.isfinite(value):
                out.append(f"health.{name}: {value!r} is not a duration")
                return False
            if allow_zero and value == 0:
                return True
            if value < minimum:
                low = "0 or at least " if allow_zero else "at least "
                out.append(f"health.{name}: {_fmt_s(value)} must be {low}{_fmt_s(minimum)}")
                return False
            return True

        if self.kind not in PROBE_KINDS:
            out.append(f"health.kind: {self.kind!r} is not one of {', '.join(PROBE_KINDS)}")
        ok_interval = duration("interval", self.interval, MIN_INTERVAL, False)
        ok_timeout = duration("timeout", self.timeout, 0.001, False)
        if ok_interval and ok_timeout and self.timeout > self.interval:
            out.append(f"health.timeout: {_fmt_s(self.timeout)} must not exceed "
                       f"interval {_fmt_s(self.interval)}")
        if self.down_interval is not None and \
                duration("down_interval", self.down_interval, MIN_INTERVAL, False) and \
                ok_timeout and self.timeout > self.down_interval:
            out.append(f"health.timeout: {_fmt_s(self.timeout)} must not exceed "
                       f"down_interval {_fmt_s(self.down_interval)}")
        if self.fast_interval is not None and \
                duration("fast_interval", self.fast_interval, MIN_INTERVAL, False) and \
                ok_timeout and self.timeout > self.fast_interval:
            out.append(f"health.timeout: {_fmt_s(self.timeout)} must not exceed "
                       f"fast_interval {_fmt_s(self.fast_interval)}")
        duration("start_period", self.start_period, 0.0, True)
        duration("fail_timeout", self.fail_timeout, 0.001, False)
        duration("slow_start", self.slow_start, 0.0, True)
        for name, value in (("rise", self.rise), ("fall", self.fall)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
                out.append(f"health.{name}: {value!r} must be a whole number from 1 to 100")
        if not isinstance(self.max_fails, int) or isinstance(self.max_fails, bool) or \
                not 0 <= self.max_fails <= 100_000:
            out.append(f"health.max_fails: {self.max_fails!r} must be a whole number >= 0")
        if not isinstance(self.jitter, int | float) or not 0 <= self.jitter <= MAX_JITTER:
            out.append(f"health.jitter: {self.jitter!r} must be a fraction from 0 to {MAX_JITTER}")
        if not isinstance(self.min_healthy, int | float) or not 0 <= self.min_healthy <= 1:
            out.append(f"health.min_healthy: {self.min_healthy!r} must be a fraction from 0 to 1")
        if self.port is not None and (not isinstance(self.port, int) or
                                      isinstance(self.port, bool) or
                                      not 1 <= self.port <= 65535):
            out.append(f"health.port: {self.port!r} must be a port from 1 to 65535")
        if self.source is not None:
            try:
                src = ipaddress.ip_address(self.source)
            except ValueError:
                out.append(f"health.source: {self.source!r} is not an IP address")
            else:
                if isinstance(src, ipaddress.IPv6Address) and src.ipv4_mapped is not None:
                    # it binds on an IPv6 socket, but no probe from it can connect
                    out.append(f"health.source: {self.source} is an IPv4-mapped IPv6 address, "
                               f"which cannot be a source (an IPv4 source is written "
                               f"{src.ipv4_mapped}, for IPv4 backends)")
        if self.initial_state not in INITIAL_STATES:
            out.append(f"health.initial_state: {self.initial_state!r} is not one of "
                       f"{', '.join(INITIAL_STATES)}")
        if self.on_down not in ON_DOWN:
            out.append(f"health.on_down: {self.on_down!r} is not one of {', '.join(ON_DOWN)}")
        out.extend(self._payload_problems())
        return out

    def _payload_problems(self) -> list[str]:
        out: list[str] = []
        if not isinstance(self.send, bytes):
            out.append(f"health.send: {self.send!r} must be bytes")
        elif len(self.send) > MAX_SEND_BYTES:
            out.append(f"health.send: {len(self.send)} bytes is more than {MAX_SEND_BYTES}")
        expect = self.expect
        if expect is not None and not isinstance(expect, bytes) and not (
                isinstance(expect, re.Pattern) and isinstance(expect.pattern, bytes)):
            out.append(f"health.expect: {expect!r} must be bytes or a compiled bytes regex")
        elif isinstance(expect, bytes) and not 1 <= len(expect) <= MAX_EXPECT_BYTES:
            out.append(f"health.expect: a prefix must be 1 to {MAX_EXPECT_BYTES} bytes")
        if self.kind == "send_expect" and expect is None:
            out.append('health.expect: kind "send_expect" needs an expect value')
        if self.kind == "udp" and isinstance(self.send, bytes) and not self.send:
            out.append('health.send: kind "udp" needs a datagram to send (send or send_hex, '
                       "not empty: no UDP service answers an empty datagram)")
        if self.proxy_protocol not in PROXY_VERSIONS:
            out.append(f"health.proxy_protocol: {self.proxy_protocol!r} is not one of "
                       f"{', '.join(PROXY_VERSIONS)}")
        elif self.proxy_protocol != "off" and self.kind not in PROXY_KINDS:
            out.append('health.send_proxy: only kinds "send_expect", "http" and "tls" open a '
                       'stream the backend reads, so a PROXY header needs one of them')
        if self.kind not in PAYLOAD_KINDS and (self.send or expect is not None):
            out.append('health.send/expect: only kinds "send_expect" and "udp" send or expect '
                       'data' +
                       ('; kind "http" matches with its own http_expect_* keys'
                        if self.kind == "http" else ""))
        out.extend(self._http_problems())
        out.extend(self._exec_problems())
        out.extend(self._tls_problems())
        return out

    @property
    def speaks_tls(self) -> bool:
        """Whether probes speak TLS (kind "tls", or tls = True)."""
        return self.kind == "tls" or self.tls is True

    def _tls_problems(self) -> list[str]:
        out: list[str] = []
        if not isinstance(self.tls, bool):
            out.append(f"health.tls: {self.tls!r} must be true or false")
        elif self.tls and self.kind not in (*TLS_OPTIONAL_KINDS, "tls"):
            why = {"tcp": 'kind "tcp" is a plain connect: write kind = "tls" for a TLS '
                          "handshake check",
                   "syn": "a half-open probe never completes a TCP handshake",
                   "udp": "TLS runs over a stream (DTLS is not built)",
                   "exec": "the command makes its own connections"}.get(self.kind, "")
            out.append('health.tls: applies to kinds "http" and "send_expect" (kind "tls" '
                       f"always speaks TLS); {why}")
        if not self.speaks_tls:
            for name in TLS_FIELDS:
                if getattr(self, name) != TLS_DEFAULTS[name]:
                    out.append(f'health.{name}: applies only to checks over TLS (kind = "tls", '
                               'or tls = true with kind "http" or "send_expect")')
            return out
        server = self.tls_server_name
        if server is not None:
            if not isinstance(server, str) or _is_ip(server):
                out.append(f"health.tls_server_name: {_q(server)} is an IP address; SNI "
                           "carries host names only (leave tls_server_name out for an IP "
                           "backend)")
            elif len(server.rstrip(".")) > 253 or not all(
                    _DNS_LABEL.fullmatch(label) for label in server.rstrip(".").split(".")):
                out.append(f"health.tls_server_name: {_q(server)} is not a host name (letters, "
                           "digits, '-' and '_' in dot-separated labels)")
        if self.tls_verify not in TLS_VERIFY:
            out.append(f"health.tls_verify: {_q(self.tls_verify)} is not one of "
                       f"{', '.join(TLS_VERIFY)}")
        elif self.tls_verify == "none" and self.tls_ca_file is not None:
            out.append('health.tls_ca_file: unused with tls_verify = "none" (nothing is '
                       'verified); remove it, or write tls_verify = "required"')
        for key in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value.startswith("/")
                                      or "\0" in value):
                out.append(f"health.{key}: {_q(value)} must be an absolute path")
        if self.tls_client_key is not None and self.tls_client_cert is None:
            out.append("health.tls_client_key: needs tls_client_cert (the certificate this "
                       "key belongs to)")
        alpn = self.tls_alpn
        if not isinstance(alpn, tuple) or any(not isinstance(p, str) for p in alpn):
            out.append(f"health.tls_alpn: {alpn!r} must be a tuple of strings")
        elif len(alpn) > MAX_ALPN:
            out.append(f"health.tls_alpn: {len(alpn)} protocols is more than {MAX_ALPN}")
        elif any(not p or len(p) > 255 or not p.isascii() or not p.isprintable()
                 for p in alpn):
            out.append("health.tls_alpn: each protocol must be 1 to 255 printable ASCII "
                       'characters (e.g. "h2", "http/1.1")')
        elif self.kind == "http" and any(p != "http/1.1" for p in alpn):
            out.append('health.tls_alpn: kind "http" speaks HTTP/1.1 only; offer ["http/1.1"] '
                       "or leave tls_alpn out")
        if self.tls_min_version not in TLS_VERSIONS:
            out.append(f"health.tls_min_version: {_q(self.tls_min_version)} is not one of "
                       f"{', '.join(TLS_VERSIONS)}")
        return out

    def _exec_problems(self) -> list[str]:
        out: list[str] = []
        if self.protocol not in ("tcp", "udp"):
            out.append(f"health.protocol: {self.protocol!r} is not one of tcp, udp")
        command, user = self.command, self.command_user
        if self.kind != "exec":
            if command != ():
                out.append('health.command: applies to kind "exec" only')
            if user is not None:
                out.append('health.command_user: applies to kind "exec" only')
            if self.dynamic:
                out.append('health.dynamic: applies to kind "exec" only (the weight comes '
                           "from the command's exit status)")
            return out
        if not isinstance(command, tuple) or any(not isinstance(a, str) for a in command):
            out.append(f"health.command: {command!r} must be a tuple of strings")
        elif not command:
            out.append('health.command: kind "exec" needs a command: an argv list such as '
                       '["/usr/local/bin/check", "--deep"]')
        elif len(command) > MAX_COMMAND_ARGS:
            out.append(f"health.command: {len(command)} arguments is more than "
                       f"{MAX_COMMAND_ARGS}")
        elif any("\0" in a for a in command):
            out.append("health.command: an argument contains a NUL character")
        elif not command[0].startswith("/"):
            out.append(f"health.command: {_q(command[0])} must be an absolute path (the "
                       "command runs without a shell and without the daemon's PATH)")
        if user is not None and (not isinstance(user, str) or not user or "\0" in user
                                 or ":" in user):
            out.append(f"health.command_user: {_q(user)} is not a user name")
        if self.source is not None:
            out.append('health.source: kind "exec" opens no socket of its own (the command '
                       "decides where it connects from)")
        return out

    def _http_problems(self) -> list[str]:
        out: list[str] = []
        if self.kind != "http":
            for name in HTTP_FIELDS:
                if getattr(self, name) != HTTP_DEFAULTS[name]:
                    out.append(f'health.{name}: applies to kind "http" only')
            return out
        path = self.http_path
        if not isinstance(path, str) or not path.startswith("/"):
            out.append(f"health.http_path: {_q(path)} must start with \"/\" (a path on the "
                       "backend, e.g. \"/healthz\")")
        elif not path.isascii() or any(not 0x21 <= ord(c) <= 0x7e for c in path):
            out.append(f"health.http_path: {_q(path)} must be printable ASCII without spaces "
                       "(percent-encode the rest, e.g. %20)")
        elif len(path) > MAX_HTTP_PATH:
            out.append(f"health.http_path: {len(path)} characters is more than {MAX_HTTP_PATH}")
        if self.http_method not in HTTP_METHODS:
            out.append(f"health.http_method: {_q(self.http_method)} is not one of "
                       f"{', '.join(HTTP_METHODS)}")
        host = self.http_host
        if host is not None and (not isinstance(host, str) or not host or not host.isascii()
                                 or any(not 0x21 <= ord(c) <= 0x7e for c in host)
                                 or len(host) > MAX_HTTP_HOST):
            out.append(f"health.http_host: {_q(host)} must be 1 to {MAX_HTTP_HOST} printable "
                       "ASCII characters without spaces (a name, or name:port)")
        spec = self.http_expect_status
        if not isinstance(spec, tuple) or not spec or any(
                not isinstance(r, tuple) or len(r) != 2 or not all(
                    isinstance(c, int) and 100 <= c <= 599 for c in r) or r[0] > r[1]
                for r in spec):
            out.append(f"health.http_expect_status: {spec!r} must be ranges (low, high) of "
                       "status codes from 100 to 599")
        body = self.http_expect_body
        if body is not None and not isinstance(body, bytes) and not (
                isinstance(body, re.Pattern) and isinstance(body.pattern, bytes)):
            out.append(f"health.http_expect_body: {body!r} must be bytes or a compiled bytes "
                       "regex")
        elif isinstance(body, bytes) and not 1 <= len(body) <= MAX_EXPECT_BYTES:
            out.append(f"health.http_expect_body: a literal must be 1 to {MAX_EXPECT_BYTES} "
                       "bytes")
        elif body is not None and self.http_method == "HEAD":
            out.append('health.http_expect_body: http_method "HEAD" gets no body to match; '
                       'use "GET"')
        return out

    @property
    def effective_down_interval(self) -> float:
        """Seconds between probes of a DOWN backend."""
        return self.interval if self.down_interval is None else self.down_interval


DEFAULT_SETTINGS = HealthSettings()
