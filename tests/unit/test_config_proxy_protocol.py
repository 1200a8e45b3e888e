"""The `proxy_protocol` service key and `health.send_proxy`: values, where they apply, what the
probes send, and how the daemon hands the version to the data plane on start and reload (with
a fake data plane). No sockets here."""

from __future__ import annotations

from typing import Any

import pytest

from l4lb import proxyproto
from l4lb.config import ConfigError, load_text
from l4lb.health.probe import ProbeSpec

from .test_config_congestion import OldDataplane, daemon_on, sid, switch

TCP = """\
[[services]]
name = "web"
listen = ["127.0.0.1:8080"]
{keys}
  [[services.backends]]
  address = "127.0.0.1:9001"
"""
UDP = """\
[[services]]
name = "dns"
protocol = "udp"
listen = ["127.0.0.1:5353"]
{keys}
  [[services.backends]]
  address = "127.0.0.1:9053"
"""
PROBE = """
  [services.health]
  kind = "send_expect"
  send = "PING\\r\\n"
  expect = "+PONG"
{extra}"""


def load(text: str) -> Any:
    return load_text(text, "t.toml", host=None)


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text, "t.toml", host=None)
    return [str(d) for d in info.value.diagnostics]


def test_off_by_default() -> None:
    assert load(TCP.format(keys="")).services[0].proxy_protocol == "off"


@pytest.mark.parametrize("value", ["off", "v1", "v2"])
def test_values(value: str) -> None:
    assert load(TCP.format(keys=f'proxy_protocol = "{value}"')).services[0].proxy_protocol \
        == value


def test_bad_value_suggests_the_right_one() -> None:
    assert errors(TCP.format(keys='proxy_protocol = "V2"')) == [
        't.toml:4:18: error: services[0] ("web"): proxy_protocol: "V2" is not one of off, v1, '
        'v2; did you mean "v2"?']


def test_udp_service_refuses_it() -> None:
    assert errors(UDP.format(keys='proxy_protocol = "v1"')) == [
        't.toml:5:18: error: services[0] ("dns"): proxy_protocol: applies to protocol = "tcp" '
        'only']


def test_send_expect_probes_send_local_by_default() -> None:
    text = TCP.format(keys='proxy_protocol = "v2"') + PROBE.format(extra="")
    health = load(text).services[0].health
    assert health.proxy_protocol == "v2"
    spec = ProbeSpec.build("127.0.0.1", 9001, health)
    assert spec.send == proxyproto.local(2) + b"PING\r\n"


def test_probes_with_their_own_port_send_none_unless_asked() -> None:
    text = TCP.format(keys='proxy_protocol = "v1"') + PROBE.format(extra="  port = 9100\n")
    assert load(text).services[0].health.proxy_protocol == "off"
    text = TCP.format(keys='proxy_protocol = "v1"') + PROBE.format(
        extra="  port = 9100\n  send_proxy = true\n")
    spec = ProbeSpec.build("127.0.0.1", 9001, load(text).services[0].health)
    assert spec.send == b"PROXY UNKNOWN\r\nPING\r\n" and spec.port == 9100


def test_send_proxy_false_turns_it_off() -> None:
    text = TCP.format(keys='proxy_protocol = "v2"') + PROBE.format(extra="  send_proxy = false\n")
    health = load(text).services[0].health
    assert ProbeSpec.build("127.0.0.1", 9001, health).send == b"PING\r\n"


def test_connect_only_probes_send_nothing() -> None:
    text = TCP.format(keys='proxy_protocol = "v2"') + '\n  [services.health]\n  kind = "tcp"\n'
    health = load(text).services[0].health
    assert health.proxy_protocol == "off"
    assert ProbeSpec.build("127.0.0.1", 9001, health).connect_only


def test_send_proxy_errors() -> None:
    text = TCP.format(keys="") + PROBE.format(extra="  send_proxy = true\n")
    assert errors(text) == [
        't.toml:12:16: error: services[0] ("web"): health.send_proxy: the service sends no PROXY '
        'header (proxy_protocol is off), so its probes have none to send; set proxy_protocol = '
        '"v1" or "v2", or leave send_proxy out']
    text = TCP.format(keys='proxy_protocol = "v1"') + \
        '\n  [services.health]\n  kind = "tcp"\n  send_proxy = true\n'
    assert errors(text) == [
        't.toml:10:16: error: services[0] ("web"): health.send_proxy: only kinds "send_expect", '
        '"http" and "tls" send a PROXY header, and this probe is "tcp"; a connect-only probe '
        'sends no header (leave send_proxy out)']


class VersionRecorder(OldDataplane):
    """A data plane with set_proxy_protocol that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def set_proxy_protocol(self, service_id: int, version: int) -> None:
        self.calls.append((service_id, version))


def test_daemon_default_path_makes_no_call() -> None:
    dp = VersionRecorder()
    daemon_on("", "", dp)
    assert dp.calls == []


def test_daemon_sets_and_clears_across_reloads() -> None:
    dp = VersionRecorder()
    daemon = daemon_on('proxy_protocol = "v1"', "", dp)
    web = sid(daemon, "web")
    assert dp.calls == [(web, 1)]
    dp.calls.clear()
    daemon._publish()
    assert dp.calls == []
    switch(daemon, 'proxy_protocol = "v2"', 'proxy_protocol = "v1"')
    assert sorted(dp.calls) == sorted([(web, 2), (sid(daemon, "api"), 1)])
    dp.calls.clear()
    switch(daemon, "", "")
    assert sorted(dp.calls) == sorted([(web, 0), (sid(daemon, "api"), 0)])
    assert daemon.proxy == {}


def test_daemon_reports_a_data_plane_without_it(caplog: pytest.LogCaptureFixture) -> None:
    daemon = daemon_on("", "", OldDataplane())
    switch(daemon, 'proxy_protocol = "v2"', "")
    assert any("PROXY protocol" in p for p in daemon.cc_problems)
    assert "PROXY protocol" in caplog.text


def test_a_bad_send_proxy_value_is_reported_once() -> None:
    text = TCP.format(keys='proxy_protocol = "v2"') + \
        '\n  [services.health]\n  send_proxy = "yes"\n'
    assert errors(text) == [
        't.toml:9:16: error: services[0] ("web"): health.send_proxy: expected a boolean, found a '
        'string ("yes")']


def test_send_proxy_on_a_udp_service_applies_to_tcp_only() -> None:
    text = UDP.format(keys="") + \
        '\n  [services.health]\n  port = 53\n  kind = "send_expect"\n  expect = "x"\n' \
        '  send_proxy = true\n'
    assert errors(text) == [
        't.toml:13:16: error: services[0] ("dns"): health.send_proxy: applies to protocol = '
        '"tcp" only (UDP services send no PROXY header)']
