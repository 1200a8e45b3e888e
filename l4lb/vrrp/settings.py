"""VRRP settings of one `[[vrrp]]` instance: one frozen, validated dataclass with its defaults.

The config compiler turns each `[[vrrp]]` table into a `VrrpSettings`; `l4lb.vrrp.instance`
reads only this object. Construction validates every field and raises `VrrpSettingsError`, whose
`problems` are one-line messages that start with the field (`vrrp.priority: 0 must be ...`), so
the loader can attach file:line:col and report them with its other diagnostics. `problems()`
does no I/O: whether the interface exists or the notify program is executable is found out when
the instance starts.

Durations are float seconds like everywhere in the config model. The defaults follow keepalived
2.2 where it has the same option, so a pair with one keepalived node behaves the same on both
sides:

- advert_interval 1 s, priority 100, preempt on, preempt_delay 0, version 3: keepalived's
  defaults (it defaults to VRRPv2; l4lb defaults to v3, which carries sub-second intervals and
  IPv6; set `version = 2` to pair with a keepalived node left at its default).
- garp_repeat 5: keepalived's garp_master_repeat. A second burst follows 5 s after a takeover
  (keepalived's garp_master_delay), so a switch that missed the first still learns the move.
- garp_refresh 0 (off): periodic GARPs while master only help with switches or routers that
  expire their tables faster than hosts re-ARP.
- unicast_peers empty: multicast to 224.0.0.18 / ff02::12 (RFC 5798); list the peers where the
  network carries no multicast (most clouds).

VIPs are written as interface addresses ("10.0.0.100/24"; no prefix means /32 or /128). The
instance's family is the family of the FIRST VIP, as in keepalived: only the VIPs of that family
are advertised (and must match the peer's list); VIPs of the other family are added, removed and
announced with the others but not advertised (keepalived's `virtual_ipaddress_excluded`).
VRRPv2 is IPv4 only, so a v2 instance's first VIP must be IPv4.

A VIP may name the interface it goes on, keepalived's spelling: "10.2.0.1/24 dev eth1"
(`parse_vip`). Without `dev` it goes on `interface`. Its device changes where the address is
added and announced, and makes that interface tracked (`tracked_interfaces`), never what the
adverts carry: keepalived lists every VIP of the advert's family whatever its device, and so
does `advertised`. keepalived's other per-address options (`brd`, `scope`, `label`, ...) are
refused by name.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Final

from l4lb.vrrp.fsm import US_PER_S, FsmConfig
from l4lb.vrrp.packet import IPAddress

VipInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

MAX_PREEMPT_DELAY: Final = 1000.0  # seconds; keepalived's limit too
MAX_GARP_REPEAT: Final = 100  # frames per VIP and burst
MIN_GARP_REFRESH: Final = 0.1  # seconds, when not 0
MAX_NAME: Final = 64  # instance name length
MAX_AUTH_PASS: Final = 8  # bytes: the v2 auth data field
GARP_DELAY: Final = 5.0  # seconds between the two GARP bursts of a takeover (garp_master_delay)

_IFNAME = re.compile(r"[^\s/:]{1,15}")  # Linux IFNAMSIZ - 1, no slash, colon or blank
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# keepalived's virtual_ipaddress options other than `dev`: refused by name, not as noise
KEEPALIVED_VIP_OPTIONS: Final = frozenset((
    "brd", "broadcast", "scope", "label", "peer", "home", "-nodad", "noprefixroute",
    "autojoin", "no_track", "track_group"))


def is_ifname(name: object) -> bool:
    """Whether `name` can be a Linux interface name (1..15 bytes, no blank, "/" or ":")."""
    return isinstance(name, str) and bool(_IFNAME.fullmatch(name)) and name not in (".", "..")


class VipSyntaxError(ValueError):
    """A VIP string that does not parse; str() is the predicate after the string as written
    ("is not an address like ...", "has ...")."""


@dataclass(frozen=True)
class Vip:
    """One VIP as written: its address and prefix, and the interface it names with `dev`."""

    address: VipInterface  # "10.2.0.1/24"; no prefix means /32 or /128
    dev: str | None  # the interface after `dev`; None: the instance's `interface`
    text: str  # the address part as written ("10.2.0.1/24")


def parse_vip(text: str) -> Vip:
    """A VIP string ("10.0.0.100/24", "10.2.0.1/24 dev eth1"); VipSyntaxError says why not."""
    words = text.split() if isinstance(text, str) else []
    if not words:
        raise VipSyntaxError("is not an address like 10.0.0.100/24 or fd00::100/64")
    try:
        address = ipaddress.ip_interface(words[0])
    except ValueError:
        raise VipSyntaxError("is not an address like 10.0.0.100/24 or fd00::100/64") from None
    dev: str | None = None
    rest = words[1:]
    while rest:
        word = rest.pop(0)
        if word == "dev":
            if not rest:
                raise VipSyntaxError('has "dev" without an interface name after it')
            name = rest.pop(0)
            if dev is not None:
                raise VipSyntaxError('names "dev" twice')
            if not is_ifname(name):
                raise VipSyntaxError(f"has {name!r} after dev, which is not an interface name")
            dev = name
        elif word in KEEPALIVED_VIP_OPTIONS:
            raise VipSyntaxError(f'has keepalived\'s "{word}" option, which l4lb does not '
                                 'support (only "dev IFNAME" may follow the address)')
        else:
            raise VipSyntaxError(f'has "{word}" after the address, where only "dev IFNAME" '
                                 "may follow it")
    return Vip(address=address, dev=dev, text=words[0])


class VrrpSettingsError(ValueError):
    """Invalid VRRP settings; `problems` lists every one, str() joins them with "; "."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems  # one line per problem, each starting with its field


@dataclass(frozen=True)
class TrackService:
    """A service whose health moves the instance's priority (`track_services` entry).

    weight < 0: added to the priority while the service has no healthy backend;
    weight > 0: added while it has one (keepalived's track_script semantics);
    weight 0: the instance goes to FAULT while the service has no healthy backend.
    """

    service: str  # name of a [[services]] entry
    weight: int = 0  # -254..254


def _fmt_s(seconds: float) -> str:
    """A duration as the configuration file writes it ("150ms", "2s"; the file's grammar has
    no fractions), or "1.2345s" when it is not a whole number of milliseconds."""
    ms = seconds * 1000
    if not math.isfinite(ms) or abs(ms - round(ms)) > 1e-6:
        return f"{seconds:g}s"
    whole = round(ms)
    return f"{whole // 1000}s" if whole % 1000 == 0 else f"{whole}ms"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class VrrpSettings:
    """One VRRP instance: which router it is, where it speaks, what it owns and tracks."""

    name: str  # instance name for logs, status and the notify program ("VI_1")
    interface: str  # interface of the adverts, and of the VIPs without `dev` ("eth0")
    virtual_router_id: int  # VRID 1..255, equal on every node of the group
    vips: tuple[str, ...]  # virtual addresses, "10.0.0.100/24", "fd00::100/64" or with the
    # interface they go on: "10.2.0.1/24 dev eth1" (default: `interface`)
    priority: int = 100  # 1..254; 255 = address owner (takes over at once, never preempted)
    advert_interval: float = 1.0  # seconds; v3: 0.01..40.95 in whole centiseconds; v2: 1..255 s
    version: int = 3  # VRRP version: 3 (RFC 5798) or 2 (RFC 3768, IPv4 only)
    preempt: bool = True  # take over from a lower-priority master (False = keepalived nopreempt)
    preempt_delay: float = 0.0  # seconds to wait before preempting, 0..1000
    unicast_peers: tuple[str, ...] = ()  # peer addresses; empty = multicast
    garp_repeat: int = 5  # GARP / unsolicited NA per VIP on becoming master, 0..100
    garp_refresh: float = 0.0  # seconds between repeated announcements while master; 0 = off
    track_interfaces: tuple[str, ...] = ()  # down -> FAULT (the own interface is always tracked)
    track_services: tuple[TrackService, ...] = ()  # service health -> priority or FAULT
    notify: str | None = None  # absolute path, exec'd as: NOTIFY INSTANCE NAME STATE PRIORITY
    source_address: str | None = None  # advert source; default: the interface's primary
    # IPv4 address (IPv6: its link-local address), like keepalived's mcast_src_ip/unicast_src_ip
    auth_pass: str | None = None  # v2 only: simple password (keepalived auth_type PASS), 1..8 B
    # the [[vrrp_sync_group]] it is a member of (the loader sets it from that table); a member
    # becomes master only with the whole group (l4lb.vrrp.sync)
    sync_group: str | None = None

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise VrrpSettingsError(problems)

    # --- validation -----------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Every problem with these values, each a one-line message starting with its field."""
        out: list[str] = []
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name) or \
                len(self.name) > MAX_NAME:
            out.append(f"vrrp.name: {self.name!r} must be 1 to {MAX_NAME} letters, digits, "
                       f'"_", "." or "-"')
        if not is_ifname(self.interface):
            out.append(f"vrrp.interface: {self.interface!r} is not an interface name")
        if not _is_int(self.virtual_router_id) or not 1 <= self.virtual_router_id <= 255:
            out.append(f"vrrp.virtual_router_id: {self.virtual_router_id!r} must be a whole "
                       "number from 1 to 255")
        if not _is_int(self.priority) or not 1 <= self.priority <= 255:
            out.append(f"vrrp.priority: {self.priority!r} must be a whole number from 1 to 254 "
                       "(255: address owner)")
        version_ok = self.version in (2, 3) and _is_int(self.version)
        if not version_ok:
            out.append(f"vrrp.version: {self.version!r} must be 2 or 3")
        out.extend(self._interval_problems(version_ok))
        if not isinstance(self.preempt, bool):
            out.append(f"vrrp.preempt: {self.preempt!r} must be true or false")
        out.extend(self._duration("preempt_delay", self.preempt_delay, 0.0, MAX_PREEMPT_DELAY))
        if not _is_int(self.garp_repeat) or not 0 <= self.garp_repeat <= MAX_GARP_REPEAT:
            out.append(f"vrrp.garp_repeat: {self.garp_repeat!r} must be a whole number from 0 "
                       f"to {MAX_GARP_REPEAT}")
        refresh = self._duration("garp_refresh", self.garp_refresh, 0.0, 86400.0)
        if not refresh and 0 < self.garp_refresh < MIN_GARP_REFRESH:
            refresh.append(f"vrrp.garp_refresh: {_fmt_s(self.garp_refresh)} must be 0 (off) "
                           f"or at least {_fmt_s(MIN_GARP_REFRESH)}")
        out.extend(refresh)
        family = self._vip_problems(out)
        out.extend(self._peer_problems(family))
        out.extend(self._tracking_problems())
        if self.notify is not None and (not isinstance(self.notify, str) or
                                        not self.notify.startswith("/") or
                                        "\0" in self.notify):
            out.append(f"vrrp.notify: {self.notify!r} must be an absolute path to a program")
        out.extend(self._source_problems(family))
        if self.auth_pass is not None:
            if not isinstance(self.auth_pass, str) or \
                    not 1 <= len(self.auth_pass.encode()) <= MAX_AUTH_PASS:
                out.append(f"vrrp.auth_pass: must be 1 to {MAX_AUTH_PASS} bytes")
            elif self.version != 2:
                out.append("vrrp.auth_pass: only VRRPv2 has authentication (set version = 2)")
        if family == 6 and self.version == 2:
            out.append("vrrp.version: VRRPv2 is IPv4 only, but the first VIP is IPv6")
        return out

    def _interval_problems(self, version_ok: bool) -> list[str]:
        value = self.advert_interval
        if not isinstance(value, int | float) or isinstance(value, bool) or \
                not math.isfinite(value):
            return [f"vrrp.advert_interval: {value!r} is not a duration"]
        if not version_ok:
            return []
        cs = value * 100
        if self.version == 2:
            if value != int(value) or not 1 <= value <= 255:
                return [f"vrrp.advert_interval: {_fmt_s(value)}: version 2 (VRRPv2) needs whole "
                        "seconds from 1s to 255s"]
            return []
        if abs(cs - round(cs)) > 1e-6 or not 1 <= round(cs) <= 4095:
            return [f"vrrp.advert_interval: {_fmt_s(value)}: version 3 (VRRPv3) needs whole "
                    "centiseconds from 10ms to 40950ms"]
        return []

    @staticmethod
    def _duration(name: str, value: float, low: float, high: float) -> list[str]:
        if not isinstance(value, int | float) or isinstance(value, bool) or \
                not math.isfinite(value):
            return [f"vrrp.{name}: {value!r} is not a duration"]
        if not low <= value <= high:
            return [f"vrrp.{name}: {_fmt_s(value)} must be from {_fmt_s(low)} to "
                    f"{_fmt_s(high)}"]
        return []

    def _vip_problems(self, out: list[str]) -> int | None:
        """Append VIP problems; return the instance family (first VIP's), None if unknown."""
        if not isinstance(self.vips, tuple) or not self.vips:
            out.append("vrrp.vips: at least one virtual address is needed")
            return None
        seen: set[IPAddress] = set()
        family: int | None = None
        counts = {4: 0, 6: 0}
        for text in self.vips:
            if not isinstance(text, str):
                out.append(f"vrrp.vips: {text!r} is not an address like 10.0.0.100/24 or "
                           "fd00::100/64")
                continue
            try:
                ip = parse_vip(text).address.ip
            except VipSyntaxError as exc:
                out.append(f"vrrp.vips: {text!r} {exc}")
                continue
            if ip.is_multicast or ip.is_unspecified or ip.is_loopback or \
                    (ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255")):
                out.append(f"vrrp.vips: {text} cannot be a virtual address (multicast, "
                           "loopback, broadcast or unspecified)")
                continue
            if ip in seen:
                out.append(f"vrrp.vips: {ip} is listed twice")
                continue
            seen.add(ip)
            counts[ip.version] += 1
            if family is None:
                family = ip.version
        for version, count in counts.items():
            if count > 255:
                out.append(f"vrrp.vips: {count} IPv{version} addresses, an advert carries at "
                           "most 255")
        return family

    def _peer_problems(self, family: int | None) -> list[str]:
        out: list[str] = []
        if not isinstance(self.unicast_peers, tuple):
            return ["vrrp.unicast_peers: must be a list of addresses"]
        seen: set[IPAddress] = set()
        for text in self.unicast_peers:
            try:
                ip = ipaddress.ip_address(text)
            except (ValueError, TypeError):
                out.append(f"vrrp.unicast_peers: {text!r} is not an IP address")
                continue
            if ip.is_multicast or ip.is_unspecified or ip.is_loopback:
                out.append(f"vrrp.unicast_peers: {ip} must be a unicast address of a peer")
            elif family is not None and ip.version != family:
                out.append(f"vrrp.unicast_peers: {ip} is IPv{ip.version}, the instance speaks "
                           f"IPv{family} (the family of its first VIP)")
            elif ip in seen:
                out.append(f"vrrp.unicast_peers: {ip} is listed twice")
            seen.add(ip)
        return out

    def _tracking_problems(self) -> list[str]:
        out: list[str] = []
        if not isinstance(self.track_interfaces, tuple):
            out.append("vrrp.track_interfaces: must be a list of interface names")
        else:
            names: set[str] = set()
            for name in self.track_interfaces:
                if not is_ifname(name):
                    out.append(f"vrrp.track_interfaces: {name!r} is not an interface name")
                elif name in names:
                    out.append(f"vrrp.track_interfaces: {name} is listed twice")
                else:
                    names.add(name)
        if not isinstance(self.track_services, tuple):
            out.append("vrrp.track_services: must be a list of { service, weight } tables")
            return out
        services: set[str] = set()
        for entry in self.track_services:
            if not isinstance(entry, TrackService):
                out.append(f"vrrp.track_services: {entry!r} is not a service and a weight")
                continue
            if not isinstance(entry.service, str) or not entry.service:
                out.append(f"vrrp.track_services: {entry.service!r} is not a service name")
            elif entry.service in services:
                out.append(f"vrrp.track_services: service {entry.service} is listed twice")
            else:
                services.add(entry.service)
            if not _is_int(entry.weight) or not -254 <= entry.weight <= 254:
                out.append(f"vrrp.track_services: weight {entry.weight!r} of {entry.service} "
                           "must be a whole number from -254 to 254")
        return out

    def _source_problems(self, family: int | None) -> list[str]:
        if self.source_address is None:
            return []
        try:
            ip = ipaddress.ip_address(self.source_address)
        except (ValueError, TypeError):
            return [f"vrrp.source_address: {self.source_address!r} is not an IP address"]
        if ip.is_multicast or ip.is_unspecified:
            return [f"vrrp.source_address: {ip} must be a unicast address of this host"]
        if family is not None and ip.version != family:
            return [f"vrrp.source_address: {ip} is IPv{ip.version}, the instance speaks "
                    f"IPv{family}"]
        return []

    # --- derived values (valid settings only) ---------------------------------------------

    @property
    def interval_cs(self) -> int:
        """advert_interval in centiseconds."""
        return round(self.advert_interval * 100)

    @property
    def parsed_vips(self) -> tuple[Vip, ...]:
        """Every VIP as written, parsed, in order."""
        return tuple(parse_vip(v) for v in self.vips)

    @property
    def vip_interfaces(self) -> tuple[VipInterface, ...]:
        """Every VIP with its prefix length, in the order written."""
        return tuple(v.address for v in self.parsed_vips)

    @property
    def placed_vips(self) -> tuple[tuple[VipInterface, str], ...]:
        """Every VIP with the interface it is added to and announced on, in order."""
        return tuple((v.address, v.dev or self.interface) for v in self.parsed_vips)

    @property
    def vip_links(self) -> tuple[str, ...]:
        """The interfaces other than `interface` that carry a VIP, in the order first named."""
        return tuple(dict.fromkeys(dev for _, dev in self.placed_vips if dev != self.interface))

    @property
    def tracked_interfaces(self) -> tuple[str, ...]:
        """Every interface whose loss puts the instance in FAULT: its own, each one carrying a
        VIP (a master that cannot hold one, a backends' gateway say, would black-hole its
        traffic), and `track_interfaces`; each once, in that order."""
        return tuple(dict.fromkeys((self.interface, *self.vip_links, *self.track_interfaces)))

    @property
    def vip_texts(self) -> tuple[str, ...]:
        """The VIPs for display: the address as written, with " dev IFNAME" where the VIP
        goes on another interface than `interface`."""
        return tuple(v.text if v.dev in (None, self.interface) else f"{v.text} dev {v.dev}"
                     for v in self.parsed_vips)

    @property
    def family(self) -> int:
        """4 or 6: the family the instance advertises over (its first VIP's)."""
        return self.vip_interfaces[0].version

    @property
    def advertised(self) -> tuple[IPAddress, ...]:
        """The VIPs carried in adverts (those of the instance's family)."""
        return tuple(v.ip for v in self.vip_interfaces if v.version == self.family)

    @property
    def excluded(self) -> tuple[VipInterface, ...]:
        """VIPs of the other family: managed and announced, not advertised."""
        return tuple(v for v in self.vip_interfaces if v.version != self.family)

    @property
    def peers(self) -> tuple[IPAddress, ...]:
        """The unicast peers as addresses (empty: multicast)."""
        return tuple(ipaddress.ip_address(p) for p in self.unicast_peers)

    @property
    def source(self) -> IPAddress | None:
        """The configured advert source, or None to take the interface's."""
        return None if self.source_address is None else ipaddress.ip_address(self.source_address)

    def fsm_config(self, address: IPAddress) -> FsmConfig:
        """The state machine's parameters, given the primary `address` the adverts come from."""
        return FsmConfig(
            name=self.name, vrid=self.virtual_router_id, priority=self.priority,
            address=address, version=self.version, interval_cs=self.interval_cs,
            preempt=self.preempt, preempt_delay_us=round(self.preempt_delay * US_PER_S),
            garp_repeat=self.garp_repeat, garp_delay_us=round(GARP_DELAY * US_PER_S),
            garp_lower_prio_repeat=self.garp_repeat,
            garp_lower_prio_delay_us=round(GARP_DELAY * US_PER_S), sync_group=self.sync_group)
