"""Fixtures of the namespace tests: a switch with client, lb1 and lb2, and VRRP nodes on it.

Every test gets a fresh `Topology` (tests/netns/topo.py) and it is torn down whatever happens:
processes killed by pid, namespaces deleted (which removes the veths and the bridge). Addresses
come from the documentation ranges 192.0.2.0/24 and 2001:db8::/64 and exist only inside the
test's own namespaces. The whole directory is skipped, with the reason, where namespaces
cannot be made (not root, no iproute2, no CAP_SYS_ADMIN).

Measured numbers (failover times, advert jitter) are collected with the `measure` fixture and
printed in pytest's terminal summary.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from .topo import Node, Topology, netns_unavailable, sweep_leftovers

CLIENT4, LB1_4, LB2_4 = "192.0.2.1", "192.0.2.11", "192.0.2.12"
CLIENT6, LB1_6, LB2_6 = "2001:db8::1", "2001:db8::11", "2001:db8::12"
VIP4, VIP6 = "192.0.2.100/24", "2001:db8::100/64"
MACS = {"client": "02:00:00:00:00:01", "lb1": "02:00:00:00:00:11",
        "lb2": "02:00:00:00:00:12", "be": "02:00:00:00:00:21"}
HOSTS = {"client": [f"{CLIENT4}/24", f"{CLIENT6}/64"],
         "lb1": [f"{LB1_4}/24", f"{LB1_6}/64"],
         "lb2": [f"{LB2_4}/24", f"{LB2_6}/64"]}

_REASON = netns_unavailable()
_MEASUREMENTS: list[tuple[str, str]] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/netns/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.root)
            if _REASON is not None:
                item.add_marker(pytest.mark.skip(reason=_REASON))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _MEASUREMENTS:
        terminalreporter.section("netns measurements")
        for name, value in _MEASUREMENTS:
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture
def measure() -> Callable[[str, str], None]:
    """Record a measured value for the terminal summary."""
    def record(name: str, value: str) -> None:
        _MEASUREMENTS.append((name, value))
    return record


@pytest.fixture
def topo() -> Iterator[Topology]:
    """A bridge in its own namespace and nothing on it yet; torn down after the test."""
    sweep_leftovers()
    t = Topology()
    try:
        yield t
    finally:
        t.close()


@pytest.fixture
def pair(topo: Topology) -> Topology:
    """client, lb1 and lb2 on the bridge (eth0 each, IPv4 + IPv6, fixed MACs)."""
    for host, addresses in HOSTS.items():
        topo.add_host(host, addresses, mac=MACS[host])
    return topo


def vrrp(**overrides: Any) -> dict[str, Any]:
    """Settings of the test instance VI_1 (VRID 51, both VIPs), with overrides."""
    base: dict[str, Any] = {"name": "VI_1", "interface": "eth0", "virtual_router_id": 51,
                            "priority": 100, "advert_interval": 1.0, "version": 3,
                            "vips": [VIP4, VIP6]}
    base.update(overrides)
    return base


def start_node(topo: Topology, host: str, *instances: dict[str, Any],
               load: dict[str, Any] | None = None, name: str | None = None,
               prefix: Sequence[str] = ()) -> Node:
    """Run vrrp_node.py with `instances` in host's namespace and wait until it is ready."""
    spec: dict[str, Any] = {"instances": list(instances)}
    if load is not None:
        spec["load"] = load
    node = topo.python(host, "vrrp_node.py", json.dumps(spec), name=name or host, prefix=prefix)
    node.wait_for(lambda e: e.get("event") in ("ready", "error"), 15)
    error = [e for e in node.events if e.get("event") == "error"]
    if error:
        raise AssertionError(f"{host}: {error[0]['message']}\n{node.stderr()}")
    return node


def keepalived_available() -> bool:
    """True when the keepalived binary is installed."""
    return shutil.which("keepalived") is not None
