"""Config validation findings of review 6: health.source against the backends' family and this
host, checks that run even when their table has other errors, the [[vrrp]] host checks
(interface, source_address, track_interfaces), backend names that are another backend's address,
and positions (array elements, inline tables, the later of two keys). Host answers come from a
fake host; only the ThisHost tests ask this machine (loopback and its interface list)."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from l4lb.config import ConfigError, load_text
from l4lb.config.host import THIS_HOST, _address_of
from l4lb.health.probe import ProbeSpec
from l4lb.health.settings import HealthSettings
from l4lb.vrrp.settings import VipInterface

from .fakehost import FakeHost

IF = ipaddress.ip_interface


@dataclass
class NetHost(FakeHost):
    """FakeHost plus interfaces and bind answers (addresses not listed bind with EADDRNOTAVAIL)."""

    links: Mapping[str, tuple[VipInterface, ...]] | None = field(default_factory=lambda: {
        "lo": (IF("127.0.0.1/8"), IF("::1/128")),
        "eth0": (IF("192.0.2.2/24"), IF("fe80::1/64")),
        "eth1": (IF("fd00::5/64"),),  # IPv6 without a link-local address
        "eth2": (IF("10.0.0.100/24"),),  # only a VIP's address
    })
    bindable: set[str] = field(default_factory=lambda: {"127.0.0.1", "::1", "192.0.2.2"})

    def interfaces(self) -> Mapping[str, tuple[VipInterface, ...]] | None:
        self.asked.append("interfaces")
        return self.links

    def bind_errno(self, address: str) -> int:
        self.asked.append(f"bind {address}")
        return 0 if address in self.bindable else errno.EADDRNOTAVAIL


def problems(text: str, host: Any = None) -> list[str]:
    """The report lines of a text that must fail to load (without the count line)."""
    with pytest.raises(ConfigError) as info:
        load_text(text, "t.toml", host=host)
    return [str(d) for d in info.value.diagnostics]


SERVICE = """\
[[services]]
name = "web"
listen = ["127.0.0.1:8080"]
backends = [{backends}]
{health}
"""


def service(backends: list[str], health: str) -> str:
    inline = ", ".join(f'{{ address = "{b}" }}' for b in backends)
    return SERVICE.format(backends=inline, health=health)


# ---------------------------------------------------------------- item 1: source vs family

def test_ipv6_source_with_an_ipv4_backend_is_an_error_at_source() -> None:
    text = service(["127.0.0.1:9001", "[::1]:9002"], '[services.health]\nsource = "::1"')
    assert problems(text) == [
        't.toml:6:10: error: services[0] ("web"): health.source: ::1 is IPv6, but backends[0] '
        '("127.0.0.1:9001") is IPv4; a probe leaves from this address, so every backend must be '
        "IPv6 (leave source out, or move the IPv4 backends to a service of their own)"]


def test_ipv4_source_with_ipv6_backends_counts_them() -> None:
    text = service(["[::1]:9001", "127.0.0.1:9002", "[::1]:9003", "[::1]:9004"],
                   'health = { source = "127.0.0.1" }')
    [line] = problems(text)
    assert line.startswith("t.toml:5:21: error: ")
    assert 'but backends[0] ("[::1]:9001") and 2 other backends are IPv6' in line


def test_source_family_is_checked_when_the_health_table_has_other_errors() -> None:
    text = service(["127.0.0.1:9001"], '[services.health]\nsource = "::1"\ninterval = "1s"\n'
                                       'timeout = "2s"\nport = 70000')
    lines = problems(text)
    assert len(lines) == 3
    assert any("health.source: ::1 is IPv6" in line for line in lines)


@settings(max_examples=60, deadline=None)
@given(source=st.sampled_from(["127.0.0.1", "::1"]),
       families=st.lists(st.sampled_from([4, 6]), min_size=1, max_size=4),
       udp=st.booleans())
def test_a_source_that_validates_builds_a_probe_for_every_backend(
        source: str, families: list[int], udp: bool) -> None:
    """Validation accepts health.source exactly when the runtime can build every probe."""
    addresses = [f"127.0.0.{k + 1}:9000" if f == 4 else f"[::{k + 1}]:9000"
                 for k, f in enumerate(families)]
    text = service(addresses, f'[services.health]\nsource = "{source}"\nport = 9100')
    if udp:
        text = text.replace('name = "web"', 'name = "web"\nprotocol = "udp"')
    health = HealthSettings(source=source, port=9100)
    built = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        try:
            ProbeSpec.build(host.strip("[]"), int(port), health)
            built.append(True)
        except ValueError:
            built.append(False)
    try:
        load_text(text, "t.toml", host=None)
    except ConfigError as exc:
        assert [d.path[-1] for d in exc.diagnostics] == ["source"]
        assert not all(built)
    else:
        assert all(built)


def test_health_source_must_be_an_address_of_this_host() -> None:
    host = NetHost()
    text = service(["127.0.0.1:9001"], 'health = { source = "10.9.9.9" }')
    assert problems(text, host) == [
        't.toml:5:21: error: services[0] ("web"): health.source: 10.9.9.9 is not an address of '
        "this host, so probes cannot leave from it"]
    assert "bind 10.9.9.9" in host.asked
    assert load_text(text.replace("10.9.9.9", "127.0.0.1"), "t.toml", host=host).services
    assert load_text(text, "t.toml", host=None).services  # no host checks: not asked


def test_health_source_still_tentative_is_accepted() -> None:
    """An IPv6 address in duplicate address detection does not bind yet (EADDRNOTAVAIL) but is
    on an interface: a daemon started at boot must not fail for it."""
    host = NetHost(links={"eth0": (IF("fd00::7/64"),)}, bindable=set())
    text = service(["[fd00::1]:9001"], 'health = { source = "fd00::7" }')
    assert load_text(text, "t.toml", host=host).services
    assert problems(text.replace("fd00::7", "fd00::8"), host)


def test_health_source_other_bind_errors_are_worded() -> None:
    class Busy(NetHost):
        def bind_errno(self, address: str) -> int:
            return errno.EACCES

    [line] = problems(service(["127.0.0.1:9001"], 'health = { source = "127.0.0.1" }'), Busy())
    assert line.endswith("health.source: probes cannot leave from 127.0.0.1: binding it fails "
                         "(permission denied)")


# ---------------------------------------------------------------- item 2: every problem at once

EVERY_PROBLEM = """\
[[services]]
name = "dns"
protocol = "udp"
listen = ["127.0.0.1:5353"]
backends = [{ address = "127.0.0.1:53" }]

  [services.health]
  interval = "1s"
  timeout = "2s"

[[vrrp]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
vips = ["192.0.2.100/24"]

[[vrrp]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 52
priority = 0
vips = ["192.0.2.101/24"]
"""


def test_udp_port_and_duplicate_vrrp_name_are_reported_with_the_other_errors() -> None:
    assert problems(EVERY_PROBLEM) == [
        't.toml:7:3: error: services[0] ("dns"): health: a UDP service\'s health check needs '
        'kind = "udp" (a datagram to the backends\' port), kind = "exec" (a command decides), or '
        '`port`: a TCP port of the '
        "backends to probe",
        't.toml:9:13: error: services[0] ("dns"): health.timeout: 2s must not exceed interval 1s',
        't.toml:18:8: error: vrrp[1] ("VI_1"): name: "VI_1" is already used by vrrp[0]',
        't.toml:21:12: error: vrrp[1] ("VI_1"): priority: 0 out of range (1..255)',
    ]


def test_duplicate_router_is_reported_with_the_instance_errors() -> None:
    text = EVERY_PROBLEM.replace("virtual_router_id = 52", "virtual_router_id = 51") \
        .replace('name = "VI_1"\ninterface = "eth0"\nvirtual_router_id = 51\npriority',
                 'name = "VI_2"\ninterface = "eth0"\nvirtual_router_id = 51\npriority')
    lines = problems(text)
    assert 't.toml:20:21: error: vrrp[1] ("VI_2"): virtual_router_id: 51 on eth0 (IPv4) is ' \
        "already used by vrrp[0]" in lines
    assert any("priority: 0 out of range" in line for line in lines)


# ---------------------------------------------------------------- item 3: vrrp host checks

VRRP_HOST = """\
[[vrrp]]
name = "VI_1"
interface = "eth9"
virtual_router_id = 51
vips = ["192.0.2.100/24"]
track_interfaces = ["eth0", "eth7"]

[[vrrp]]
name = "VI_2"
interface = "eth0"
virtual_router_id = 52
source_address = "192.0.2.77"
vips = ["192.0.2.101/24"]

[[vrrp]]
name = "VI_3"
interface = "eth1"
virtual_router_id = 53
vips = ["fd00::100/64"]

[[vrrp]]
name = "VI_4"
interface = "eth2"
virtual_router_id = 54
vips = ["10.0.0.100/24"]
"""


def test_vrrp_host_problems_are_all_reported_at_their_keys() -> None:
    assert problems(VRRP_HOST, NetHost()) == [
        't.toml:3:13: error: vrrp[0] ("VI_1"): interface: no interface named "eth9" on this host '
        '(it has eth0, eth1, eth2, lo)',
        't.toml:6:29: error: vrrp[0] ("VI_1"): track_interfaces[1]: no interface named "eth7" on '
        'this host (it has eth0, eth1, eth2, lo)',
        't.toml:12:18: error: vrrp[1] ("VI_2"): source_address: 192.0.2.77 is not an address of '
        "this host",
        't.toml:17:13: error: vrrp[2] ("VI_3"): interface: eth1 has no IPv6 link-local address '
        "to send adverts from (add one, or set source_address)",
        't.toml:23:13: error: vrrp[3] ("VI_4"): interface: eth2 has no IPv4 address to send '
        "adverts from (add one, or set source_address)",
    ]


def test_vrrp_host_checks_pass_on_a_host_that_has_it_all() -> None:
    text = VRRP_HOST.replace('"eth9"', '"eth0"').replace('"eth7"', '"lo"') \
        .replace("192.0.2.77", "192.0.2.2").replace('interface = "eth1"', 'interface = "eth0"') \
        .replace('interface = "eth2"\nvirtual_router_id = 54\nvips = ["10.0.0.100/24"]',
                 'interface = "eth2"\nvirtual_router_id = 54\nvips = ["10.0.0.101/24"]\n'
                 'source_address = "10.0.0.100"')
    config = load_text(text, "t.toml", host=NetHost())
    assert [v.name for v in config.vrrp] == ["VI_1", "VI_2", "VI_3", "VI_4"]
    assert load_text(VRRP_HOST, "t.toml", host=None).vrrp  # no host: nothing asked


def test_vrrp_host_checks_run_beside_the_instance_errors_and_skip_unknown_hosts() -> None:
    text = VRRP_HOST.replace('virtual_router_id = 51', 'virtual_router_id = 51\npriority = 0')
    lines = problems(text, NetHost())
    assert any("priority: 0 out of range" in line for line in lines)
    assert any('no interface named "eth9"' in line for line in lines)
    assert load_text(VRRP_HOST, "t.toml", host=NetHost(links=None)).vrrp  # cannot list: skip


def test_a_reload_does_not_recheck_the_host_for_instances_that_run_unchanged() -> None:
    """A tracked interface that has gone must not block a reload that changes a backend: the
    running instance goes on as it is (keepalived makes it a fault, not a config error). A
    changed or new instance is checked as at start."""
    running = load_text(VRRP_HOST, "t.toml", host=None).vrrp
    config = load_text(VRRP_HOST, "t.toml", host=NetHost(), running_vrrp=running)
    assert config.vrrp == running
    changed = VRRP_HOST.replace("virtual_router_id = 51", "virtual_router_id = 51\npriority = 90")
    with pytest.raises(ConfigError) as exc:
        load_text(changed, "t.toml", host=NetHost(), running_vrrp=running)
    assert [d.message for d in exc.value.diagnostics] == [
        'vrrp[0] ("VI_1"): interface: no interface named "eth9" on this host '
        '(it has eth0, eth1, eth2, lo)',
        'vrrp[0] ("VI_1"): track_interfaces[1]: no interface named "eth7" on this host '
        '(it has eth0, eth1, eth2, lo)']


def test_many_interfaces_are_listed_briefly() -> None:
    links = {f"veth{k}": () for k in range(20)}
    [line] = problems(VRRP_HOST.split("\n\n")[0].replace(', "eth7"', "").replace(
        '"eth0"', '"veth1"'), NetHost(links=links))
    assert "(it has veth0, veth1, veth10, veth11, veth12, veth13, veth14, veth15 and 12 more)" \
        in line


def test_check_and_run_report_host_problems_before_starting(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """`l4lb check` and `l4lb run` load with this host's answers: a missing interface stops
    `run` before a Daemon (listeners, data plane) exists."""
    from l4lb import cli, daemon

    missing = "l4lbnone0"
    assert missing not in dict(socket.if_nameindex()).values()
    path = tmp_path / "l4lb.toml"
    path.write_text(service(["127.0.0.1:9001"], "") + VRRP_HOST.split("\n\n")[0]
                    .replace("eth9", missing).replace(', "eth7"', "").replace('"eth0"', '"lo"')
                    .replace("192.0.2.100/24", "192.0.2.200/32"))
    started: list[object] = []
    monkeypatch.setattr(daemon, "Daemon", lambda *a, **k: started.append(a))
    for command in ("check", "run"):
        res = CliRunner().invoke(cli.cli, [command, "-c", str(path)])
        assert res.exit_code == daemon.EXIT_CONFIG, res.output
        assert f'interface: no interface named "{missing}" on this host' in res.output
    assert started == []


# ---------------------------------------------------------------- ThisHost answers

def test_this_host_lists_interfaces_like_the_kernel() -> None:
    links = THIS_HOST.interfaces()
    assert links is not None
    assert set(links) == {name for _, name in socket.if_nameindex()}
    assert ipaddress.ip_address("127.0.0.1") in {a.ip for a in links["lo"]}


def test_this_host_interfaces_work_inside_a_running_event_loop() -> None:
    """A reload validates inside the daemon's loop, where pyroute2's sync API cannot run."""
    async def inside() -> Mapping[str, tuple[VipInterface, ...]] | None:
        return THIS_HOST.interfaces()

    assert asyncio.run(inside()) == THIS_HOST.interfaces()


def test_this_host_binds_only_its_own_addresses() -> None:
    links = THIS_HOST.interfaces() or {}
    own = {a.ip for addresses in links.values() for a in addresses}
    foreign = next(ip for ip in ipaddress.ip_network("198.51.100.0/24").hosts() if ip not in own)
    assert THIS_HOST.bind_errno("127.0.0.1") == 0
    assert THIS_HOST.bind_errno(str(foreign)) == errno.EADDRNOTAVAIL


NONLOCAL_SCRIPT = """
import errno, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
for version in (4, 6):
    with open(f"/proc/sys/net/ipv{version}/ip_nonlocal_bind", "w") as f:
        f.write("1")
from l4lb.config.host import THIS_HOST
got = {a: THIS_HOST.bind_errno(a) for a in ("127.0.0.1", "127.0.0.9", "::1", "198.51.100.7",
                                             "2001:db8::7")}
want = {"127.0.0.1": 0, "127.0.0.9": 0, "::1": 0, "198.51.100.7": errno.EADDRNOTAVAIL,
        "2001:db8::7": errno.EADDRNOTAVAIL}
print(got)
sys.exit(0 if got == want else 1)
"""


def test_this_host_refuses_foreign_sources_also_with_ip_nonlocal_bind() -> None:
    """With ip_nonlocal_bind = 1 (often set next to keepalived) any address binds; the routing
    table still tells an address of this host from a typo. Runs in a private network namespace
    (unshare -n), so the host's sysctls are not touched."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private network namespace")
    done = subprocess.run(["unshare", "-n", sys.executable, "-c", NONLOCAL_SCRIPT],
                          capture_output=True, text=True, timeout=30,
                          cwd=str(Path(__file__).resolve().parents[2]))
    assert done.returncode == 0, done.stdout + done.stderr


def test_netlink_address_message_prefers_the_local_address() -> None:
    def attr(kind: int, value: bytes) -> bytes:
        return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)

    ptp = struct.pack("=BBBBI", socket.AF_INET, 32, 0, 0, 7) + \
        attr(1, bytes([10, 0, 0, 2])) + attr(2, bytes([10, 0, 0, 1]))  # IFA_ADDRESS, IFA_LOCAL
    assert _address_of(ptp) == (7, IF("10.0.0.1/32"))
    v6 = struct.pack("=BBBBI", socket.AF_INET6, 64, 0, 0, 3) + \
        attr(1, ipaddress.ip_address("fe80::1").packed)
    assert _address_of(v6) == (3, IF("fe80::1/64"))
    assert _address_of(struct.pack("=BBBBI", socket.AF_PACKET, 0, 0, 0, 1)) is None


# ---------------------------------------------------------------- item 4: names vs addresses

def test_a_name_that_is_another_backends_address_is_an_error() -> None:
    text = SERVICE.format(backends='{ address = "127.0.0.1:18081", name = "127.0.0.1:18082" }, '
                                   '{ address = "127.0.0.1:18082", name = "x" }', health="")
    assert problems(text) == [
        't.toml:4:51: error: services[0] ("web"): backends[0].name: "127.0.0.1:18082" is the '
        "address of backends[1]; a backend's name must not be another backend's address (l4lb "
        "drain and the control API would not know which one is meant)"]


def test_a_name_that_spells_a_later_backends_address_differently_is_an_error() -> None:
    text = SERVICE.format(backends='{ address = "[::1]:9001" }, '
                                   '{ address = "[::1]:9002", name = "[0::1]:9001" }', health="")
    [line] = problems(text)
    assert 'backends[1].name: "[0::1]:9001" is the address of backends[0]' in line


def test_names_that_are_addresses_of_no_other_backend_are_fine() -> None:
    text = SERVICE.format(backends='{ address = "127.0.0.1:9001", name = "127.0.0.1:9001" }, '
                                   '{ address = "127.0.0.1:9002", name = "127.0.0.1:9999" }',
                          health="")
    assert [b.name for b in load_text(text, "t.toml", host=None).services[0].backends] == [
        "127.0.0.1:9001", "127.0.0.1:9999"]


# ---------------------------------------------------------------- item 5: positions

def test_vips_and_peer_errors_point_at_the_element() -> None:
    text = """\
[[vrrp]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
vips = ["192.0.2.100/24", "nonsense", "192.0.2.100"]
unicast_peers = ["192.0.2.3", "bogus", "fd00::1"]
"""
    assert problems(text) == [
        "t.toml:5:27: error: vrrp[0] (\"VI_1\"): vips: 'nonsense' is not an address like "
        "10.0.0.100/24 or fd00::100/64",
        't.toml:5:39: error: vrrp[0] ("VI_1"): vips: 192.0.2.100 is listed twice',
        "t.toml:6:31: error: vrrp[0] (\"VI_1\"): unicast_peers: 'bogus' is not an IP address",
        't.toml:6:40: error: vrrp[0] ("VI_1"): unicast_peers: fd00::1 is IPv6, the instance '
        "speaks IPv4 (the family of its first VIP)",
    ]


def test_timeout_against_down_interval_is_reported_at_the_later_key() -> None:
    later = service(["127.0.0.1:9001"], '[services.health]\ntimeout = "2s"\n'
                                        'down_interval = "1s"\ninterval = "5s"')
    [line] = problems(later)
    assert line.startswith("t.toml:7:17: error: ") and "exceed down_interval 1s" in line
    earlier = service(["127.0.0.1:9001"], '[services.health]\ndown_interval = "1s"\n'
                                          'timeout = "2s"\ninterval = "5s"')
    [line] = problems(earlier)
    assert line.startswith("t.toml:7:11: error: ")


def test_missing_key_in_an_inline_health_table_points_at_its_brace() -> None:
    text = service(["127.0.0.1:9001"], 'health = { interval = "1s" }').replace(
        'name = "web"', 'name = "web"\nprotocol = "udp"')
    [line] = problems(text)
    assert line.startswith("t.toml:6:10: error: ") and "or `port`: a TCP port" in line


def test_a_vip_without_prefix_is_a_host_address() -> None:
    text = 'vrrp = [{ name = "VI_1", interface = "eth0", virtual_router_id = 51, ' \
        'vips = ["10.0.0.1", "fd00::1"] }]\n'
    [instance] = load_text(text, "t.toml", host=None).vrrp
    assert instance.vip_interfaces == (IF("10.0.0.1/32"), IF("fd00::1/128"))


class _Plane:
    """The part of the data plane a rejected reload could touch: publish counts tables."""

    def __init__(self) -> None:
        self.generation = 0

    def publish(self, blob: bytes) -> int:
        self.generation += 1
        return self.generation

    def stats(self) -> dict[str, Any]:
        return {"generation": self.generation, "services": {}, "backends": {}}

    def remove_listener(self, fd: int) -> None:
        raise AssertionError("a rejected reload removed a listener")


def test_reload_rejects_host_problems_before_changing_anything(tmp_path: Path) -> None:
    """The daemon's reload loads with this host's answers (inside no loop here; the loop case is
    covered by test_this_host_interfaces_work_inside_a_running_event_loop)."""
    from l4lb.config import load_file
    from l4lb.control import ControlError
    from l4lb.daemon import Daemon
    from l4lb.state import Runtime

    path = tmp_path / "l4lb.toml"
    good = f'[global]\ncontrol_socket = "{tmp_path}/s.sock"\n' + service(["127.0.0.1:9001"], "")
    path.write_text(good)
    daemon = Daemon(load_file(str(path)))
    plane = _Plane()
    daemon.dp = plane  # type: ignore[assignment]
    daemon.file_config = daemon.config
    daemon.runtime = Runtime.from_config(daemon.config)
    daemon._publish()
    before = (daemon.config, plane.generation)
    path.write_text(good.replace('"127.0.0.1:9001" }', '"127.0.0.1:9002" }') +
                    'health = { source = "198.51.100.254" }\n' +
                    VRRP_HOST.split("\n\n")[0].replace("eth9", "l4lbnone0")
                    .replace(', "eth7"', "").replace('"eth0"', '"lo"'))
    with pytest.raises(ControlError) as info:
        daemon.reload()
    assert 'interface: no interface named "l4lbnone0"' in str(info.value)
    assert "health.source: 198.51.100.254 is not an address of this host" in str(info.value)
    assert (daemon.config, plane.generation) == before
