"""`[global] max_udp_flows`: its validation, the "auto" rule (half of the descriptor limit),
and how status, the text status and the metrics show the cap."""

from __future__ import annotations

from typing import Any

import pytest

from l4lb.config import ConfigError, load_text
from l4lb.daemon import udp_flow_cap
from l4lb.display import status_text
from l4lb.metrics import ScrapeData, families

UDP_SERVICE = """
[[services]]
name = "dns"
protocol = "udp"
listen = ["127.0.0.1:5353"]
[[services.backends]]
address = "127.0.0.1:5354"
"""


def load(value: str) -> Any:
    return load_text(f"[global]\nmax_udp_flows = {value}\n" + UDP_SERVICE, "c.toml")


def error_of(value: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(value)
    return str(info.value)


def test_default_is_auto() -> None:
    assert load_text(UDP_SERVICE, "c.toml").global_.max_udp_flows is None
    assert load('"auto"').global_.max_udp_flows is None


@pytest.mark.parametrize("value", ["1", "524288", "4294967295"])
def test_integers_in_range_are_taken(value: str) -> None:
    assert load(value).global_.max_udp_flows == int(value)


@pytest.mark.parametrize(("value", "message"), [
    ("0", 'c.toml:2:17: error: global.max_udp_flows: 0 out of range (1..4294967295); leave the '
          'key out (or write "auto") for the default, half of the file descriptor limit'),
    ("4294967296", "c.toml:2:17: error: global.max_udp_flows: 4294967296 out of range "
                   "(1..4294967295)"),
    ("-5", "c.toml:2:17: error: global.max_udp_flows: -5 out of range (1..4294967295)"),
    ('"AUTO"', 'c.toml:2:17: error: global.max_udp_flows: write "auto" in lower case'),
    ('"auto "', 'c.toml:2:17: error: global.max_udp_flows: write "auto" without spaces'),
    ('"7"', 'c.toml:2:17: error: global.max_udp_flows: expected an integer or "auto", found a '
            'string ("7"); write 7 without quotes'),
    ("true", 'c.toml:2:17: error: global.max_udp_flows: expected an integer or "auto", found '
             "a boolean (true)"),
    ("2.5", 'c.toml:2:17: error: global.max_udp_flows: expected an integer or "auto", found '
            "a float (2.5)"),
])
def test_bad_values_are_reported_at_the_key(value: str, message: str) -> None:
    assert message in error_of(value)


def test_a_service_key_is_not_taken_as_the_global_one() -> None:
    with pytest.raises(ConfigError) as info:
        load_text(UDP_SERVICE + "max_udp_flows = 5\n", "c.toml")
    assert "max_udp_flows" in str(info.value) and "[global]" in str(info.value)


@pytest.mark.parametrize(("setting", "nofile", "cap"), [
    (None, 1024, 512),                 # systemd's default soft limit, if it cannot be raised
    (None, 1048576, 524288),
    (None, 1, 1),                      # never 0 (0 would mean "no cap" to the data plane)
    (None, -1, 4294967295),            # RLIM_INFINITY
    (None, 1 << 40, 4294967295),
    (100, 1024, 100),                  # a set value wins, even above the auto figure
    (5000, 1024, 5000),
])
def test_auto_is_half_the_descriptor_limit(setting: int | None, nofile: int, cap: int) -> None:
    assert udp_flow_cap(setting, nofile) == cap


def status(flows: dict[str, Any], protocol: str = "udp") -> dict[str, Any]:
    return {"version": "0", "pid": 1, "workers": 1, "config": "c.toml", "started": 0.0,
            "table": {"generation": 1, "digest": "d"}, "udp_flows": flows,
            "services": [{"name": "dns", "protocol": protocol, "scheduler": "round_robin",
                          "listen": ["127.0.0.1:5353"], "counters": {}, "backends": []}],
            "vrrp": []}


def test_text_status_shows_the_cap_of_udp_services() -> None:
    text = status_text(status({"max": 512, "open": 7, "auto": True}))
    assert "udp flows 7 of at most 512 (auto: half the fd limit)" in text
    text = status_text(status({"max": 100, "open": 0, "auto": False}))
    assert "udp flows 0 of at most 100 (max_udp_flows)" in text
    assert "udp flows" not in status_text(status({"max": 512, "open": 0, "auto": True},
                                                 protocol="tcp"))


def test_metrics_export_the_cap_and_the_open_flows() -> None:
    got = {m.name: m for m in families(ScrapeData(status=status(
        {"max": 512, "open": 7, "auto": True}), health=None, probe_latency=None, connlog=None,
        scrape_errors=0))}
    assert got["l4lb_udp_flows_max"].samples[0].value == 512
    assert got["l4lb_udp_flows_active"].samples[0].value == 7
    drops = got["l4lb_service_datagram_drops"]
    assert ("dns", "max_udp_flows") in {(s.labels["service"], s.labels["reason"])
                                        for s in drops.samples}
    none = {m.name for m in families(ScrapeData(status=status(
        {"max": None, "open": None, "auto": True}), health=None, probe_latency=None, connlog=None,
        scrape_errors=0))}
    assert "l4lb_udp_flows_max" not in none
