"""[[vrrp_sync_group]] in the configuration: a valid group loads and marks its members; the
errors are in tests/golden/config/vrrp_sync_group.*."""

from __future__ import annotations

import pytest

from l4lb.config import ConfigError, load_text

from .fakehost import ExampleHost

BASE = """
[[services]]
name = "web"
listen = ["10.0.0.100:80"]

  [[services.backends]]
  address = "127.0.0.1:9001"

[[vrrp_sync_group]]
name = "G"
instances = ["VI_1", "VI_2"]
notify = "/usr/local/bin/group-notify"
{extra}

[[vrrp]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
vips = ["10.0.0.100/24"]
track_services = [{{ service = "web", weight = {weight} }}]

[[vrrp]]
name = "VI_2"
interface = "eth0"
virtual_router_id = 52
vips = ["10.0.0.101/24"]

[[vrrp]]
name = "VI_3"
interface = "eth0"
virtual_router_id = 53
vips = ["10.0.0.103/24"]
"""


def test_a_group_loads_and_marks_its_members() -> None:
    config = load_text(BASE.format(extra="", weight=0), "g.toml", host=ExampleHost())
    (group,) = config.vrrp_sync_groups
    assert (group.name, group.instances, group.notify, group.tracking_weight) == \
        ("G", ("VI_1", "VI_2"), "/usr/local/bin/group-notify", False)
    assert {v.name: v.sync_group for v in config.vrrp} == {"VI_1": "G", "VI_2": "G",
                                                          "VI_3": None}
    assert config.vrrp[0].fsm_config(config.vrrp[0].vip_interfaces[0].ip).sync_group == "G"


def test_weights_need_tracking_weight() -> None:
    with pytest.raises(ConfigError, match="weight must be 0"):
        load_text(BASE.format(extra="", weight=-50), "g.toml", host=ExampleHost())
    config = load_text(BASE.format(extra="tracking_weight = true", weight=-50), "g.toml",
                       host=ExampleHost())
    assert config.vrrp_sync_groups[0].tracking_weight
    assert config.vrrp[0].track_services[0].weight == -50


def test_a_group_changes_the_instances_for_a_reload() -> None:
    """A reload compares VrrpSettings: joining a group is a change of the instance."""
    plain = load_text(BASE.format(extra="", weight=0).replace(
        '[[vrrp_sync_group]]\nname = "G"\ninstances = ["VI_1", "VI_2"]\n'
        'notify = "/usr/local/bin/group-notify"\n', ""), "g.toml", host=ExampleHost())
    grouped = load_text(BASE.format(extra="", weight=0), "g.toml", host=ExampleHost())
    assert plain.vrrp_sync_groups == ()
    assert plain.vrrp[0] != grouped.vrrp[0] and plain.vrrp[2] == grouped.vrrp[2]
