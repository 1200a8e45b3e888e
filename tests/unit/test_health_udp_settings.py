"""`kind = "udp"` without sockets: the settings' rules, the config keys (send, send_hex,
expect, expect_regex, port, proxy_protocol), the spec a probe is built from, the judge of a
reply datagram and the reasons of socket errors."""

from __future__ import annotations

import errno
import re

import pytest

from l4lb.config import ConfigError, load_text
from l4lb.health import HealthSettings, HealthSettingsError, ProbeSpec
from l4lb.health.probe import judge_datagram, udp_error

UDP_SERVICE = """\
[[services]]
name = "dns"
protocol = "udp"
listen = ["127.0.0.1:5353"]
backends = [{{ address = "127.0.0.1:9053" }}]

  [services.health]
{health}"""
TCP_SERVICE = """\
[[services]]
name = "web"
listen = ["127.0.0.1:8080"]
proxy_protocol = "v2"
backends = [{{ address = "127.0.0.1:9001" }}]

  [services.health]
{health}"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text, "t.toml", host=None)
    return [str(d) for d in info.value.diagnostics]


def health_of(text: str) -> HealthSettings:
    [service] = load_text(text, "t.toml", host=None).services
    assert service.health is not None
    return service.health


# -- settings -------------------------------------------------------------------------------


def test_udp_needs_a_non_empty_datagram() -> None:
    with pytest.raises(HealthSettingsError) as info:
        HealthSettings(kind="udp")
    assert info.value.problems == [
        'health.send: kind "udp" needs a datagram to send (send or send_hex, not empty: no UDP '
        "service answers an empty datagram)"]
    assert HealthSettings(kind="udp", send=b"\x00").send == b"\x00"


def test_udp_takes_send_and_an_optional_expect() -> None:
    HealthSettings(kind="udp", send=b"ping")
    HealthSettings(kind="udp", send=b"ping", expect=b"pong")
    HealthSettings(kind="udp", send=b"ping", expect=re.compile(rb"po.g"))
    with pytest.raises(HealthSettingsError, match="only kinds"):
        HealthSettings(kind="tcp", send=b"ping")


def test_udp_never_sends_a_proxy_header() -> None:
    with pytest.raises(HealthSettingsError, match="send_proxy"):
        HealthSettings(kind="udp", send=b"ping", proxy_protocol="v2")


# -- config ---------------------------------------------------------------------------------


def test_udp_service_with_kind_udp_needs_no_port() -> None:
    health = health_of(UDP_SERVICE.format(health='  kind = "udp"\n  send = "ping"\n'))
    assert (health.kind, health.send, health.expect, health.port) == ("udp", b"ping", None, None)
    spec = ProbeSpec.build("127.0.0.1", 9053, health)
    assert (spec.udp, spec.port, spec.send, spec.connect_only) == (True, 9053, b"ping", False)


def test_udp_service_with_another_kind_still_needs_a_tcp_port() -> None:
    [line] = problems(UDP_SERVICE.format(health='  kind = "tcp"\n'))
    assert line.startswith("t.toml:7:3: error: ") and \
        'needs kind = "udp" (a datagram to the backends\' port), kind = "exec" (a command ' \
        'decides), or `port`' in line


def test_send_hex_and_expect_regex() -> None:
    health = health_of(UDP_SERVICE.format(
        health="  kind = \"udp\"\n  send_hex = \"4c34 00\"\n  expect_regex = '\\A\\x4c\\x34'\n"))
    assert health.send == b"L4\x00"
    assert isinstance(health.expect, re.Pattern)
    assert judge_datagram(health.expect, b"L4\x81\x80") == (True, "reply matched")


def test_missing_send_is_reported_at_kind() -> None:
    assert problems(UDP_SERVICE.format(health='  kind = "udp"\n  expect = "x"\n')) == [
        't.toml:8:10: error: services[0] ("dns"): health.send: kind "udp" needs a datagram to '
        "send (send or send_hex, not empty: no UDP service answers an empty datagram)"]


def test_tcp_service_may_use_a_udp_probe_and_its_proxy_header_stays_off() -> None:
    """A TCP service with proxy_protocol: send_proxy defaults to true for probes of the
    traffic port, but a datagram gets no header; asking for one is an error."""
    health = health_of(TCP_SERVICE.format(health='  kind = "udp"\n  send = "ping"\n'))
    assert health.proxy_protocol == "off"
    spec = ProbeSpec.build("127.0.0.1", 9001, health)
    assert spec.send == b"ping" and spec.udp
    [line] = problems(TCP_SERVICE.format(
        health='  kind = "udp"\n  send = "ping"\n  send_proxy = true\n'))
    assert line.startswith("t.toml:10:16: error: ") and \
        "a datagram carries no PROXY header" in line


# -- judge and errors -----------------------------------------------------------------------


@pytest.mark.parametrize("expect, data, verdict", [
    (None, b"anything", (True, "reply received")),
    (None, b"", (True, "reply received")),
    (b"+OK", b"+OK ready", (True, "reply matched")),
    (b"+OK", b"-ERR", (False, "expect mismatch: got b'-ERR'")),
    (b"+OK", b"+O", (False, "expect mismatch: got b'+O'")),  # one datagram: no "more later"
    (re.compile(rb"ready"), b"+OK ready", (True, "reply matched")),
    (re.compile(rb"\Aready"), b"+OK ready", (False, "expect mismatch: got b'+OK ready'")),
    (b"x", b"y" * 50, (False, "expect mismatch: got b'" + "y" * 40 + "'...")),
])
def test_judge_datagram(expect: bytes | re.Pattern[bytes] | None, data: bytes,
                        verdict: tuple[bool, str]) -> None:
    assert judge_datagram(expect, data) == verdict


@pytest.mark.parametrize("err, what, result", [
    (errno.ECONNREFUSED, "receive", ("port unreachable (ICMP)", True)),
    (errno.EHOSTUNREACH, "send", ("host unreachable", True)),
    (errno.ENETUNREACH, "receive", ("network unreachable", True)),
    (errno.EPERM, "send", ("send failed: operation not permitted", False)),
    (errno.ENOBUFS, "send", ("send failed: no buffer space available", False)),
    (errno.EAGAIN, "send", ("send failed: resource temporarily unavailable", False)),
    (errno.EPROTO, "receive", ("receive failed: protocol error", True)),
])
def test_udp_error(err: int, what: str, result: tuple[str, bool]) -> None:
    assert udp_error(err, what) == result
