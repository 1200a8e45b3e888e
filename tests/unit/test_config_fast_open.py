"""The `backend_fast_open` service key: its type, where it applies, the host check of
net.ipv4.tcp_fastopen's client bit (with a fake host), and how the daemon hands it to the data
plane on start and reload (with a fake data plane). No sockets here."""

from __future__ import annotations

from typing import Any

import pytest

from l4lb.config import ConfigError, load_text
from l4lb.config.model import Service

from .fakehost import FakeHost
from .test_config_congestion import (  # the two-service daemon harness
    OldDataplane,
    SwitchRecorder,
    daemon_on,
    sid,
    switch,
)

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
ON = "backend_fast_open = true"


def host_with(value: str | None) -> FakeHost:
    """A host whose net.ipv4.tcp_fastopen reads `value` (None: unreadable)."""
    return FakeHost(sysctls={} if value is None else {"tcp_fastopen": [value]})


def errors(text: str, **kw: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text, "t.toml", **kw)
    return [str(d) for d in info.value.diagnostics]


def test_off_by_default() -> None:
    assert load_text(TCP.format(keys=""), "t.toml", host=None).services[0].backend_fast_open \
        is False
    assert Service(name="s", protocol="tcp", listen=(), backends=()).backend_fast_open is False


@pytest.mark.parametrize("sysctl", ["1", "3", "5", "1027", None])
def test_on_when_the_host_lets_clients_use_it(sysctl: str | None) -> None:
    config = load_text(TCP.format(keys=ON), "t.toml", host=host_with(sysctl))
    assert config.services[0].backend_fast_open is True
    assert load_text(TCP.format(keys="backend_fast_open = false"), "t.toml",
                     host=host_with("0")).services[0].backend_fast_open is False


@pytest.mark.parametrize(("sysctl", "suggested"), [("0", "1"), ("2", "3"), ("1024", "1025")])
def test_host_without_the_client_bit_is_an_error_naming_the_sysctl(sysctl: str,
                                                                   suggested: str) -> None:
    assert errors(TCP.format(keys=ON), host=host_with(sysctl)) == [
        't.toml:4:21: error: services[0] ("web"): backend_fast_open: this host does not let '
        f"clients use TCP Fast Open (net.ipv4.tcp_fastopen = {sysctl}, without the client bit "
        f"0x1); set it, e.g. sysctl -w net.ipv4.tcp_fastopen={suggested}, or leave "
        "backend_fast_open out"]


def test_without_host_checks_the_sysctl_is_not_read() -> None:
    assert load_text(TCP.format(keys=ON), "t.toml", host=None).services[0].backend_fast_open


def test_sysctl_is_read_once_per_load() -> None:
    class Counting(FakeHost):
        reads = 0

        def ipv4_sysctl_words(self, name: str) -> list[str]:
            Counting.reads += name == "tcp_fastopen"
            return super().ipv4_sysctl_words(name)

    two = TCP.format(keys=ON) + TCP.format(keys=ON).replace('"web"', '"api"').replace(
        "8080", "8081")
    config = load_text(two, "t.toml", host=Counting(sysctls={"tcp_fastopen": ["1"]}))
    assert [s.backend_fast_open for s in config.services] == [True, True]
    assert Counting.reads == 1


def test_udp_service_refuses_it() -> None:
    host = host_with("0")
    assert errors(UDP.format(keys=ON), host=host) == [
        't.toml:5:21: error: services[0] ("dns"): backend_fast_open: applies to protocol = '
        '"tcp" only']


def test_must_be_a_boolean() -> None:
    assert errors(TCP.format(keys='backend_fast_open = "true"'), host=None) == [
        't.toml:4:21: error: services[0] ("web"): backend_fast_open: expected a boolean, found '
        'a string ("true"); write true without quotes']


def test_daemon_default_path_makes_no_call() -> None:
    dp = SwitchRecorder("set_fast_open")
    daemon = daemon_on("", "", dp)
    daemon._publish()
    assert dp.calls == []


def test_daemon_turns_it_on_and_off_across_reloads() -> None:
    dp = SwitchRecorder("set_fast_open")
    daemon = daemon_on(ON, "", dp)
    web = sid(daemon, "web")
    assert dp.calls == [(web, True)]
    dp.calls.clear()
    daemon._publish()  # health changes re-publish: nothing to do
    assert dp.calls == []
    switch(daemon, "", ON)
    api = sid(daemon, "api")
    assert sorted(dp.calls) == sorted([(web, False), (api, True)])
    dp.calls.clear()
    switch(daemon, "", "")
    assert dp.calls == [(api, False)]
    assert daemon.fast_open == set()


def test_daemon_follows_a_service_whose_id_moves() -> None:
    dp = SwitchRecorder("set_fast_open")
    daemon = daemon_on(ON, ON, dp)
    assert sorted(dp.calls) == sorted([(sid(daemon, "web"), True), (sid(daemon, "api"), True)])
    dp.calls.clear()
    switch(daemon, ON, "")  # api keeps its id or not: whatever id is on now must be web's
    assert daemon.fast_open == {sid(daemon, "web")}
    assert all(on is False for _, on in dp.calls)


def test_daemon_reports_a_data_plane_without_it(caplog: pytest.LogCaptureFixture) -> None:
    daemon = daemon_on("", "", OldDataplane())
    assert daemon.cc_problems == []
    switch(daemon, ON, "")
    assert any("TCP Fast Open" in p for p in daemon.cc_problems)
    assert "TCP Fast Open" in caplog.text
