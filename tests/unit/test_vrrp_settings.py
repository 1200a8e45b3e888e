"""VrrpSettings: defaults, derived values, and one problem message per invalid field."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from l4lb.vrrp.fsm import US_PER_S
from l4lb.vrrp.settings import TrackService, VrrpSettings, VrrpSettingsError

BASE: dict[str, Any] = {"name": "VI_1", "interface": "eth0", "virtual_router_id": 51,
                        "vips": ("10.0.0.100/24", "fd00::100/64")}


def make(**kw: Any) -> VrrpSettings:
    return VrrpSettings(**{**BASE, **kw})


def problems(**kw: Any) -> list[str]:
    with pytest.raises(VrrpSettingsError) as info:
        make(**kw)
    assert str(info.value) == "; ".join(info.value.problems)
    return info.value.problems


def test_defaults_follow_the_issue_and_keepalived() -> None:
    s = make()
    assert (s.priority, s.advert_interval, s.version, s.preempt, s.preempt_delay) == \
        (100, 1.0, 3, True, 0.0)
    assert (s.unicast_peers, s.garp_repeat, s.garp_refresh) == ((), 5, 0.0)
    assert (s.track_interfaces, s.track_services, s.notify) == ((), (), None)
    assert s.problems() == []


def test_derived_values() -> None:
    s = make(advert_interval=0.1, vips=("10.0.0.100/24", "fd00::100/64", "10.0.0.101"),
             unicast_peers=("10.0.0.2",))
    assert s.interval_cs == 10
    assert s.family == 4
    assert s.advertised == (ipaddress.IPv4Address("10.0.0.100"),
                            ipaddress.IPv4Address("10.0.0.101"))
    assert s.excluded == (ipaddress.IPv6Interface("fd00::100/64"),)
    assert s.vip_interfaces[2] == ipaddress.IPv4Interface("10.0.0.101/32")
    assert s.peers == (ipaddress.IPv4Address("10.0.0.2"),)
    assert s.source is None
    six = make(vips=("fd00::100/64", "10.0.0.100/24"), source_address="fe80::1")
    assert six.family == 6 and six.source == ipaddress.IPv6Address("fe80::1")


def test_fsm_config_mapping() -> None:
    s = make(priority=90, advert_interval=0.5, preempt=False, preempt_delay=2.5,
             garp_repeat=3, version=3)
    cfg = s.fsm_config(ipaddress.IPv4Address("10.0.0.2"))
    assert (cfg.name, cfg.vrid, cfg.priority, cfg.version, cfg.interval_cs) == \
        ("VI_1", 51, 90, 3, 50)
    assert (cfg.preempt, cfg.preempt_delay_us) == (False, 2_500_000)
    assert (cfg.garp_repeat, cfg.garp_lower_prio_repeat) == (3, 3)
    assert cfg.garp_delay_us == 5 * US_PER_S  # keepalived's garp_master_delay


def test_v2_whole_seconds_and_owner_priority() -> None:
    assert make(version=2, advert_interval=3.0, priority=255).interval_cs == 300
    assert make(version=2, auth_pass="secret").auth_pass == "secret"


@pytest.mark.parametrize(("overrides", "field", "fragment"), [
    ({"name": ""}, "vrrp.name", "letters"),
    ({"name": "has space"}, "vrrp.name", "letters"),
    ({"interface": "a" * 16}, "vrrp.interface", "not an interface name"),
    ({"interface": "eth0:1"}, "vrrp.interface", "not an interface name"),
    ({"virtual_router_id": 0}, "vrrp.virtual_router_id", "1 to 255"),
    ({"virtual_router_id": 256}, "vrrp.virtual_router_id", "1 to 255"),
    ({"virtual_router_id": True}, "vrrp.virtual_router_id", "1 to 255"),
    ({"priority": 0}, "vrrp.priority", "1 to 254"),
    ({"priority": 256}, "vrrp.priority", "1 to 254"),
    ({"version": 4}, "vrrp.version", "2 or 3"),
    ({"advert_interval": 0.005}, "vrrp.advert_interval", "centiseconds"),
    ({"advert_interval": 0.015}, "vrrp.advert_interval", "centiseconds"),
    ({"advert_interval": 41.0}, "vrrp.advert_interval", "centiseconds"),
    ({"advert_interval": "1s"}, "vrrp.advert_interval", "not a duration"),
    ({"advert_interval": float("nan")}, "vrrp.advert_interval", "not a duration"),
    ({"version": 2, "advert_interval": 0.5, "vips": ("10.0.0.1",)}, "vrrp.advert_interval",
     "whole seconds"),
    ({"version": 2, "vips": ("fd00::1",)}, "vrrp.version", "IPv4 only"),
    ({"preempt": "yes"}, "vrrp.preempt", "true or false"),
    ({"preempt_delay": -1.0}, "vrrp.preempt_delay", "from 0s to 1000s"),
    ({"preempt_delay": 1001.0}, "vrrp.preempt_delay", "from 0s to 1000s"),
    ({"vips": ()}, "vrrp.vips", "at least one"),
    ({"vips": ("10.0.0.300/24",)}, "vrrp.vips", "not an address"),
    ({"vips": ("224.0.0.18",)}, "vrrp.vips", "cannot be a virtual address"),
    ({"vips": ("127.0.0.2",)}, "vrrp.vips", "cannot be a virtual address"),
    ({"vips": ("10.0.0.1/24", "10.0.0.1/32")}, "vrrp.vips", "listed twice"),
    ({"unicast_peers": ("nope",)}, "vrrp.unicast_peers", "not an IP address"),
    ({"unicast_peers": ("fd00::2",)}, "vrrp.unicast_peers", "the instance speaks IPv4"),
    ({"unicast_peers": ("224.0.0.18",)}, "vrrp.unicast_peers", "unicast address"),
    ({"unicast_peers": ("10.0.0.2", "10.0.0.2")}, "vrrp.unicast_peers", "listed twice"),
    ({"garp_repeat": -1}, "vrrp.garp_repeat", "0 to 100"),
    ({"garp_repeat": 101}, "vrrp.garp_repeat", "0 to 100"),
    ({"garp_refresh": 0.05}, "vrrp.garp_refresh", "0 (off) or at least 100ms"),
    ({"garp_refresh": -1.0}, "vrrp.garp_refresh", "from 0s"),
    ({"track_interfaces": ("eth/0",)}, "vrrp.track_interfaces", "not an interface name"),
    ({"track_interfaces": ("eth1", "eth1")}, "vrrp.track_interfaces", "listed twice"),
    ({"track_services": (TrackService("web", -255),)}, "vrrp.track_services", "-254 to 254"),
    ({"track_services": (TrackService("", -5),)}, "vrrp.track_services", "not a service"),
    ({"track_services": (TrackService("web", -5), TrackService("web", 5))},
     "vrrp.track_services", "listed twice"),
    ({"track_services": ({"service": "web"},)}, "vrrp.track_services", "service and a weight"),
    ({"notify": "notify.sh"}, "vrrp.notify", "absolute path"),
    ({"source_address": "10.0.0"}, "vrrp.source_address", "not an IP address"),
    ({"source_address": "fd00::1"}, "vrrp.source_address", "speaks IPv4"),
    ({"auth_pass": "123456789"}, "vrrp.auth_pass", "1 to 8 bytes"),
    ({"auth_pass": "pw"}, "vrrp.auth_pass", "only VRRPv2"),
])
def test_each_problem_names_its_field(overrides: dict[str, Any], field: str,
                                      fragment: str) -> None:
    found = problems(**overrides)
    assert len(found) == 1, found
    assert found[0].startswith(field + ": "), found
    assert fragment in found[0], found
    assert "\n" not in found[0]


def test_every_problem_is_reported_at_once() -> None:
    found = problems(priority=0, virtual_router_id=0, vips=(), garp_repeat=-1,
                     notify="relative")
    assert [p.split(":")[0] for p in found] == [
        "vrrp.virtual_router_id", "vrrp.priority", "vrrp.garp_repeat", "vrrp.vips",
        "vrrp.notify"]


def test_settings_are_frozen() -> None:
    s = make()
    with pytest.raises(AttributeError):
        s.priority = 5  # type: ignore[misc]
