"""A VRRP instance in a process without CAP_NET_ADMIN refuses to start instead of becoming a
MASTER that cannot add its virtual addresses (whose adverts would keep a healthy peer from
taking them over)."""

from __future__ import annotations

import pytest

from .conftest import start_node, vrrp
from .topo import Topology

NO_NET_ADMIN = ("setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", "--")


def test_without_cap_net_admin_the_instance_does_not_start(pair: Topology) -> None:
    with pytest.raises(AssertionError) as info:
        start_node(pair, "lb1", vrrp(), prefix=NO_NET_ADMIN)
    assert "vrrp VI_1: cannot add its virtual addresses: this process lacks CAP_NET_ADMIN" \
        in str(info.value)


def test_with_cap_net_admin_it_starts(pair: Topology) -> None:
    node = start_node(pair, "lb1", vrrp())  # the same instance, root's capabilities
    node.state_event("BACKUP", 5)
