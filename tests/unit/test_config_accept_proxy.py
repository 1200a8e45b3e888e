"""The `accept_proxy` / `accept_proxy_timeout` service keys: defaults, values, errors (UDP
services, a timeout without the switch, typos), how the daemon hands them to the data plane on
start and reload (with a fake data plane), and how status, metrics and the connection log show
them. No sockets here."""

from __future__ import annotations

from typing import Any

import pytest

from l4lb import connlog, display
from l4lb.config import ConfigError, load_text

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


def load(text: str) -> Any:
    return load_text(text, "t.toml", host=None)


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text, "t.toml", host=None)
    return [str(d) for d in info.value.diagnostics]


def test_off_by_default_with_a_five_second_timeout() -> None:
    svc = load(TCP.format(keys="")).services[0]
    assert (svc.accept_proxy, svc.accept_proxy_timeout) == (False, 5.0)


def test_values() -> None:
    svc = load(TCP.format(keys='accept_proxy = true\naccept_proxy_timeout = "300ms"')).services[0]
    assert (svc.accept_proxy, svc.accept_proxy_timeout) == (True, 0.3)


def test_udp_service_refuses_both() -> None:
    assert errors(UDP.format(keys='accept_proxy = true\naccept_proxy_timeout = "1s"')) == [
        't.toml:5:16: error: services[0] ("dns"): accept_proxy: applies to protocol = "tcp" '
        'only',
        't.toml:6:24: error: services[0] ("dns"): accept_proxy_timeout: applies to protocol = '
        '"tcp" only']


def test_every_error_at_once() -> None:
    assert errors(TCP.format(keys='accept_proxy = "yes"\naccept_proxy_timeout = "0s"\n'
                                  'accept_proxi = true')) == [
        't.toml:4:16: error: services[0] ("web"): accept_proxy: expected a boolean, found a '
        'string ("yes")',
        't.toml:5:24: error: services[0] ("web"): accept_proxy_timeout: must be greater than 0',
        't.toml:6:1: error: unknown key "accept_proxi" in services[0] ("web"); did you mean '
        '"accept_proxy"?']


def test_timeout_without_the_switch_is_kept_but_unused() -> None:
    # like fail_timeout with max_fails = 0: the annotated example shows every key's default
    svc = load(TCP.format(keys='accept_proxy_timeout = "2s"')).services[0]
    assert (svc.accept_proxy, svc.accept_proxy_timeout) == (False, 2.0)
    assert errors(TCP.format(keys='accept_proxy_timeout = 2')) == [
        't.toml:4:24: error: services[0] ("web"): accept_proxy_timeout: expected a duration '
        'string, found an integer (2); write "2s"']


class TimeoutRecorder(OldDataplane):
    """A data plane with set_accept_proxy that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def set_accept_proxy(self, service_id: int, timeout_ms: int) -> None:
        self.calls.append((service_id, timeout_ms))


def test_daemon_default_path_makes_no_call() -> None:
    dp = TimeoutRecorder()
    daemon_on("", "", dp)
    assert dp.calls == []


def test_daemon_sets_changes_and_clears_across_reloads() -> None:
    dp = TimeoutRecorder()
    daemon = daemon_on("accept_proxy = true", "", dp)
    web = sid(daemon, "web")
    assert dp.calls == [(web, 5000)]
    dp.calls.clear()
    daemon._publish()  # a health change re-publishes: nothing to do
    assert dp.calls == []
    switch(daemon, 'accept_proxy = true\naccept_proxy_timeout = "300ms"', "accept_proxy = true")
    assert sorted(dp.calls) == sorted([(web, 300), (sid(daemon, "api"), 5000)])
    dp.calls.clear()
    switch(daemon, "", "")
    assert sorted(dp.calls) == sorted([(web, 0), (sid(daemon, "api"), 0)])
    assert daemon.accept_proxy == {}


def test_daemon_reports_a_data_plane_without_it(caplog: pytest.LogCaptureFixture) -> None:
    daemon = daemon_on("", "", OldDataplane())
    switch(daemon, "accept_proxy = true", "")
    assert any("receive a PROXY protocol header" in p for p in daemon.cc_problems)


def test_status_shows_the_option_and_the_counters() -> None:
    assert display.tcp_options_text({"accept_proxy": True, "accept_proxy_timeout": 0.3}) == \
        "accepts PROXY protocol (header within 0.3s)"
    assert display.tcp_options_text({"accept_proxy": False}) == ""


def test_connection_log_line_names_the_peer() -> None:
    record = {"client": "203.0.113.7:40001", "peer": "127.0.0.1:5555", "service": "web",
              "protocol": "tcp", "backend": None, "started": 0.0, "duration": 0.0,
              "bytes_to_backend": 0, "bytes_to_client": 0, "reason": "proxy_header"}
    line = connlog.format_record(record)
    assert line.startswith('{"client":"203.0.113.7:40001","peer":"127.0.0.1:5555",')
    assert "proxy_header" in connlog.TCP_REASONS and "proxy_header_timeout" in connlog.TCP_REASONS
    del record["peer"]
    assert '"peer"' not in connlog.format_record(record)  # other services' lines as before


class OrderRecorder(OldDataplane):
    """Records publishes and set_accept_proxy calls in the order they come."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def publish(self, blob: bytes) -> int:
        self.events.append(("publish", 0))
        return len(self.events)

    def set_accept_proxy(self, service_id: int, timeout_ms: int) -> None:
        self.events.append(("accept_proxy", timeout_ms))


def test_a_reload_switches_off_before_the_table_and_on_after_it() -> None:
    """The switch is out of band, the accept_proxy_from list is in the table: a reload that
    drops both must switch off first (else, for an instant, the old switch with no list would
    make every client owe a header); one that adds both publishes the list first."""
    dp = OrderRecorder()
    daemon = daemon_on("", "", dp)
    dp.events.clear()
    with_list = 'accept_proxy = true\naccept_proxy_from = ["127.0.0.2"]'
    switch(daemon, with_list, "")
    assert dp.events == [("publish", 0), ("accept_proxy", 5000)]
    dp.events.clear()
    switch(daemon, "", "")
    assert dp.events == [("accept_proxy", 0), ("publish", 0)]
    assert daemon.accept_proxy == {}
