"""The `source` keys: a service's (inherited by its backends) and a backend's own.

The text-only errors are in the golden file tests/golden/config/source.toml; here: the model
they build (inheritance, override, UDP), the host check that each source binds (the machinery
of health.source, one bind per address and load), and what the table builder packs.
"""

from __future__ import annotations

import errno
import ipaddress

import pytest

from l4lb.config import ConfigError, load_text
from l4lb.table.blob import parse
from l4lb.table.builder import TableBuilder

from .test_config_review6 import NetHost

TEXT = """\
[[services]]
name = "web"
protocol = "{protocol}"
listen = ["127.0.0.1:8080"]
source = "{source}"
backends = [
  {{ address = "127.0.0.1:9001" }},
  {{ address = "127.0.0.1:9002", source = "{own}" }},
]
"""


def text(source: str = "127.0.0.1", own: str = "192.0.2.2", protocol: str = "tcp") -> str:
    return TEXT.format(source=source, own=own, protocol=protocol)


def problems(body: str, host: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(body, "t.toml", host=host)
    return [str(d) for d in info.value.diagnostics]


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_backends_inherit_the_service_source_unless_they_set_their_own(protocol: str) -> None:
    host = NetHost()
    [svc] = load_text(text(protocol=protocol), "t.toml", host=host).services
    assert svc.source == "127.0.0.1"
    assert [b.source for b in svc.backends] == ["127.0.0.1", "192.0.2.2"]
    # one bind per address and load
    assert sorted(q for q in host.asked if q.startswith("bind")) == [
        "bind 127.0.0.1", "bind 192.0.2.2"]


def test_no_source_is_the_default() -> None:
    body = text().replace('source = "127.0.0.1"\n', "").replace(', source = "192.0.2.2"', "")
    [svc] = load_text(body, "t.toml", host=NetHost()).services
    assert svc.source is None and [b.source for b in svc.backends] == [None, None]


def test_an_address_is_written_as_the_ip_it_is() -> None:
    body = TEXT.format(source="::1", own="::1", protocol="tcp").replace(
        "127.0.0.1:900", "[0::1]:900")
    [svc] = load_text(body, "t.toml", host=NetHost()).services
    assert [b.source for b in svc.backends] == ["::1", "::1"]


def test_service_source_must_be_an_address_of_this_host() -> None:
    assert problems(text(source="10.9.9.9"), NetHost()) == [
        't.toml:5:10: error: services[0] ("web"): source: 10.9.9.9 is not an address of this '
        "host, so backend connections cannot leave from it"]
    assert load_text(text(source="10.9.9.9"), "t.toml", host=None).services  # no host checks


def test_backend_source_must_be_an_address_of_this_host() -> None:
    assert problems(text(own="10.9.9.8"), NetHost()) == [
        't.toml:8:42: error: services[0] ("web"): backends[1].source: 10.9.9.8 is not an '
        "address of this host, so backend connections cannot leave from it"]


def test_other_bind_errors_are_worded() -> None:
    class Denied(NetHost):
        def bind_errno(self, address: str) -> int:
            return errno.EACCES

    lines = problems(text(), Denied())
    assert [line.split(": error: ")[1] for line in lines] == [
        'services[0] ("web"): source: backend connections cannot leave from 127.0.0.1: binding '
        "it fails (permission denied)",
        'services[0] ("web"): backends[1].source: backend connections cannot leave from '
        "192.0.2.2: binding it fails (permission denied)"]


def test_a_tentative_ipv6_source_is_accepted() -> None:
    """Configured on an interface but still in DAD (bind says EADDRNOTAVAIL): as health.source."""
    host = NetHost(links={"eth1": (ipaddress.ip_interface("fd00::7/64"),)}, bindable=set())
    body = TEXT.format(source="fd00::7", own="fd00::7", protocol="tcp").replace(
        "127.0.0.1:900", "[fd00::1]:900")
    assert load_text(body, "t.toml", host=host).services
    assert problems(body.replace("fd00::7", "fd00::8"), host)


def test_service_family_is_checked_against_inheriting_backends_only() -> None:
    body = """\
[[services]]
name = "v6"
listen = ["127.0.0.1:8080"]
source = "::1"
backends = [{ address = "[::1]:9001" }, { address = "127.0.0.1:9002", source = "127.0.0.1" }]
"""
    [svc] = load_text(body, "t.toml", host=NetHost()).services
    assert [b.source for b in svc.backends] == ["::1", "127.0.0.1"]
    assert problems(body.replace(', source = "127.0.0.1"', ""), NetHost()) == [
        't.toml:4:10: error: services[0] ("v6"): source: ::1 is IPv6, but backends[1] '
        '("127.0.0.1:9002") is IPv4; backend connections leave from this address, so every '
        "backend without a source of its own must be IPv6 (give the IPv4 backends their own "
        "source, or move them to a service of their own)"]


def test_the_table_carries_each_backends_source() -> None:
    config = load_text(text(own="127.0.0.2"), "t.toml", host=None)
    table = parse(TableBuilder().build(config, {}, set()))
    got = {b.port: (b.source_family, b.source_addr) for b in table.backends}
    assert got == {9001: (4, bytes([127, 0, 0, 1]) + bytes(12)),
                   9002: (4, bytes([127, 0, 0, 2]) + bytes(12))}
    body = text().replace('source = "127.0.0.1"\n', "").replace(', source = "192.0.2.2"', "")
    table = parse(TableBuilder().build(load_text(body, "t.toml", host=None), {}, set()))
    assert {(b.source_family, b.source_addr) for b in table.backends} == {(0, bytes(16))}


def test_status_shows_each_backend_source() -> None:
    from l4lb.daemon import Daemon
    from l4lb.display import status_text
    from l4lb.state import Runtime

    from .test_daemon_drain import FakeDataplane

    daemon = Daemon(load_text(text(), "t.toml", host=NetHost()))
    daemon.dp = FakeDataplane()
    daemon.file_config = daemon.config
    daemon.runtime = Runtime.from_config(daemon.config)
    daemon._publish()
    status = daemon.cmd_status()
    svc = status["services"][0]
    assert svc["source"] == "127.0.0.1"
    assert [b["source"] for b in svc["backends"]] == ["127.0.0.1", "192.0.2.2"]
    assert [b["source"] for b in daemon.cmd_backends("web")] == ["127.0.0.1", "192.0.2.2"]
    assert "\n  source address: 127.0.0.1; 127.0.0.1:9002 from 192.0.2.2\n" in \
        status_text(status)


def test_an_ipv4_mapped_source_is_refused() -> None:
    """::ffff:a.b.c.d binds on an IPv6 socket, but no IPv6 backend can be reached from it (the
    connect fails with EAFNOSUPPORT, every time): as for addresses, write the IPv4 form."""
    body = TEXT.format(source="::ffff:127.0.0.1", own="::1", protocol="tcp").replace(
        "127.0.0.1:900", "[::1]:900")
    assert problems(body, NetHost(bindable={"::ffff:127.0.0.1", "::1"})) == [
        't.toml:5:10: error: services[0] ("web"): source: ::ffff:127.0.0.1 is an IPv4-mapped '
        "IPv6 address, which cannot be a source (an IPv4 source is written 127.0.0.1, for "
        "IPv4 backends)"]
    assert problems(body, None)  # a text check: also without host checks


VIP_SOURCE = """\
[[services]]
name = "web"
listen = ["192.0.2.100:443"]
source = "192.0.2.100"
backends = [{ address = "192.0.2.11:443" }]

[[vrrp]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
vips = ["192.0.2.100/24"]
"""


def test_a_vip_of_this_config_is_a_source_on_the_node_without_it() -> None:
    """docs/configuration.md offers a VIP as a source. The standby does not hold it (the bind
    check says EADDRNOTAVAIL there), yet it must load the pair's config, start and reload: the
    bind fails only while the VIP is away, when no client reaches this node through it."""
    [svc] = load_text(VIP_SOURCE, "t.toml", host=NetHost()).services
    assert [b.source for b in svc.backends] == ["192.0.2.100"]
    # a backend's own source too; an address that is no VIP is still refused
    own = VIP_SOURCE.replace('source = "192.0.2.100"\n', "").replace(
        '"192.0.2.11:443" }', '"192.0.2.11:443", source = "192.0.2.100" }')
    assert [b.source for b in load_text(own, "t.toml", host=NetHost()).services[0].backends] \
        == ["192.0.2.100"]
    assert problems(VIP_SOURCE.replace('source = "192.0.2.100"', 'source = "192.0.2.101"'),
                    NetHost()) == [
        't.toml:4:10: error: services[0] ("web"): source: 192.0.2.101 is not an address of this '
        "host, so backend connections cannot leave from it"]


def test_an_ipv4_mapped_health_source_is_refused_too() -> None:
    """The same for the probes' source (health.source): no probe from it could connect."""
    from l4lb.health.settings import HealthSettings, HealthSettingsError

    body = ('[[services]]\nname = "web"\nlisten = ["127.0.0.1:8080"]\n'
            'backends = [{ address = "[::1]:9001" }]\n'
            '  [services.health]\n  source = "::ffff:127.0.0.1"\n')
    assert problems(body, None) == [
        't.toml:6:12: error: services[0] ("web"): health.source: ::ffff:127.0.0.1 is an '
        "IPv4-mapped IPv6 address, which cannot be a source (an IPv4 source is written "
        "127.0.0.1, for IPv4 backends)"]
    with pytest.raises(HealthSettingsError):
        HealthSettings(source="::ffff:10.0.0.1")
    assert HealthSettings(source="::1").source == "::1"


# --- transparent mode: source = "client" ---------------------------------------------------

TRANSPARENT = """\
[[services]]
name = "web"
protocol = "{protocol}"
listen = ["127.0.0.1:8080"]
source = "client"
backends = [
  {{ address = "127.0.0.1:9001" }},
  {{ address = "127.0.0.1:9002", source = "127.0.0.1" }},
]
"""


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_client_source_is_inherited_and_overridden(protocol: str) -> None:
    host = NetHost()
    [svc] = load_text(TRANSPARENT.format(protocol=protocol), "t.toml", host=host).services
    assert svc.source == "client"
    assert [b.source for b in svc.backends] == ["client", "127.0.0.1"]
    assert "transparent 4" in host.asked  # the privilege is asked once per family and load
    assert host.asked.count("transparent 4") == 1
    # and the other way round: a backend's own "client" under a service with an address
    body = TRANSPARENT.format(protocol=protocol).replace(
        'source = "client"\n', 'source = "127.0.0.1"\n').replace(
        '"127.0.0.1:9002", source = "127.0.0.1"', '"127.0.0.1:9002", source = "client"')
    [svc] = load_text(body, "t.toml", host=NetHost()).services
    assert [b.source for b in svc.backends] == ["127.0.0.1", "client"]


def test_the_table_carries_the_client_as_source_family_1() -> None:
    config = load_text(TRANSPARENT.format(protocol="tcp"), "t.toml", host=None)
    table = parse(TableBuilder().build(config, {}, set()))
    got = {b.port: (b.source_family, b.source_addr) for b in table.backends}
    assert got == {9001: (1, bytes(16)), 9002: (4, bytes([127, 0, 0, 1]) + bytes(12))}


def test_client_source_needs_the_privilege() -> None:
    host = NetHost(transparent=errno.EPERM)
    assert problems(TRANSPARENT.format(protocol="tcp"), host) == [
        't.toml:5:10: error: services[0] ("web"): source: "client" (transparent) needs '
        "IP_TRANSPARENT on every backend socket, and setting it fails (operation not "
        "permitted): this process has neither CAP_NET_ADMIN nor CAP_NET_RAW (run l4lb as root "
        "or give it CAP_NET_ADMIN, or leave source out)"]
    # without host checks nothing is asked
    assert load_text(TRANSPARENT.format(protocol="tcp"), "t.toml", host=None).services


def test_an_ipv6_backend_asks_for_ipv6_transparent() -> None:
    body = TRANSPARENT.format(protocol="tcp").replace("127.0.0.1:8080", "[::1]:8080").replace(
        '"127.0.0.1:9001"', '"[::1]:9001"')
    host = NetHost(transparent=errno.EPERM)
    [line] = problems(body, host)
    assert "needs IPV6_TRANSPARENT on every backend socket" in line
    assert host.asked.count("transparent 6") == 1 and "transparent 4" not in host.asked


def test_a_dual_stack_service_may_mix_families() -> None:
    """Listeners of both families: each backend has clients of its family (the others' connects
    fail at run time, counted), so the load accepts it."""
    body = TRANSPARENT.format(protocol="tcp").replace(
        '["127.0.0.1:8080"]', '["127.0.0.1:8080", "[::1]:8080"]').replace(
        '"127.0.0.1:9001"', '"[::1]:9001"')
    [svc] = load_text(body, "t.toml", host=NetHost()).services
    assert [b.source for b in svc.backends] == ["client", "127.0.0.1"]


def _setpriv() -> str | None:
    import shutil
    return shutil.which("setpriv")


@pytest.mark.skipif(_setpriv() is None, reason="setpriv is not installed")
def test_this_host_answers_eperm_without_capabilities() -> None:
    """ThisHost.transparent_errno in a process without any capability (setpriv drops them all,
    root or not): EPERM for both families; with this process's privileges, what it has."""
    import os
    import subprocess
    import sys

    code = ("from l4lb.config.host import THIS_HOST as h; "
            "print(h.transparent_errno(4), h.transparent_errno(6))")
    setpriv = _setpriv()
    assert setpriv is not None
    out = subprocess.run(
        [setpriv, "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", sys.executable,
         "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert out == [str(errno.EPERM)] * 2
    from l4lb.config.host import THIS_HOST
    if os.geteuid() == 0:
        assert (THIS_HOST.transparent_errno(4), THIS_HOST.transparent_errno(6)) == (0, 0)


@pytest.mark.skipif(_setpriv() is None, reason="setpriv is not installed")
def test_check_refuses_client_source_without_capabilities(tmp_path: object) -> None:
    """The whole path: `l4lb check` in a process without capabilities names the key."""
    import subprocess
    import sys
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    conf = tmp_path / "t.toml"
    conf.write_text(TRANSPARENT.format(protocol="tcp"))
    setpriv = _setpriv()
    assert setpriv is not None
    run = subprocess.run(
        [setpriv, "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", sys.executable,
         "-m", "l4lb", "check", "-c", str(conf)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert 'services[0] ("web"): source: "client" (transparent) needs IP_TRANSPARENT' in \
        run.stdout + run.stderr


def test_status_says_the_client(tmp_path: object) -> None:
    from l4lb.display import source_text

    svc = {"source": "client", "backends": [
        {"address": "127.0.0.1:9001", "source": "client"},
        {"address": "127.0.0.1:9002", "source": "127.0.0.1"}]}
    assert source_text(svc) == ("source address: the client's (transparent); 127.0.0.1:9002 "
                                "from 127.0.0.1")
    svc = {"source": None, "backends": [{"address": "127.0.0.1:9001", "source": "client"}]}
    assert source_text(svc) == ("source address: the kernel's choice; 127.0.0.1:9001 from the "
                                "client's (transparent)")
