"""kind = "http": the http_* keys from TOML to HealthSettings, their checks, and the request a
probe sends (ProbeSpec.build; no sockets). The errors of a bad file are in
tests/golden/config/health_http.toml."""

from __future__ import annotations

import re

import pytest

from l4lb.config import ConfigError, load_text
from l4lb.health import HealthSettings, HealthSettingsError, ProbeSpec
from l4lb.health.httpresponse import HttpExpect
from l4lb.health.probe import USER_AGENT
from l4lb.health.settings import format_status_spec, parse_status_spec

from .fakehost import ExampleHost

SERVICE = """\
[[services]]
name = "web"
listen = ["127.0.0.1:8080"]
{service}
  [services.health]
{health}
  [[services.backends]]
  address = "{backend}"
"""


def load_health(health: str, backend: str = "127.0.0.1:9001",
                service: str = "") -> HealthSettings:
    config = load_text(SERVICE.format(health=health, backend=backend, service=service), "t.toml",
                       host=ExampleHost())
    settings = config.services[0].health
    assert settings is not None
    return settings


def errors(health: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_health(health)
    return [str(d) for d in info.value.diagnostics]


def test_defaults() -> None:
    s = load_health('  kind = "http"\n')
    assert (s.http_path, s.http_method, s.http_host, s.http_expect_status,
            s.http_expect_body) == ("/", "GET", None, ((200, 399),), None)


def test_every_key_is_read() -> None:
    s = load_health('  kind = "http"\n  http_path = "/healthz?full=1"\n  http_method = "HEAD"\n'
                    '  http_host = "www.example.com"\n  http_expect_status = "200, 204,301-308"\n')
    assert (s.http_path, s.http_method, s.http_host, s.http_expect_status) == (
        "/healthz?full=1", "HEAD", "www.example.com", ((200, 200), (204, 204), (301, 308)))
    assert load_health('  kind = "http"\n  http_expect_status = 204\n').http_expect_status == \
        ((204, 204),)
    assert load_health('  kind = "http"\n  http_expect_body = "OK"\n').http_expect_body == b"OK"
    regex = load_health('  kind = "http"\n  http_expect_body_regex = "ok\\\\b"\n')
    assert regex.http_expect_body == re.compile(rb"ok\b")


def test_http_keys_with_another_kind_are_errors_at_each_key() -> None:
    assert errors('  kind = "send_expect"\n  expect = "+OK"\n  http_method = "GET"\n') == [
        't.toml:8:17: error: services[0] ("web"): health.http_method: applies to kind = "http" '
        'only (this probe is "send_expect")']
    # without kind the probe is "tcp"; a wrong kind is reported once, at kind
    assert errors('  http_path = "/"\n') == [
        't.toml:6:15: error: services[0] ("web"): health.http_path: applies to kind = "http" '
        'only (this probe is "tcp")']
    assert errors('  kind = "htp"\n  http_path = "/"\n') == [
        't.toml:6:10: error: services[0] ("web"): health.kind: "htp" is not one of tcp, '
        'send_expect, syn, http, udp, exec, tls; did you mean "http"?']


def test_status_spec_parse_and_format() -> None:
    assert parse_status_spec("200") == ((200, 200),)
    assert parse_status_spec(" 200 - 299 ,404") == ((200, 299), (404, 404))
    assert format_status_spec(parse_status_spec("200,204,301-308")) == "200,204,301-308"
    for bad, message in (("", "an empty item"), ("200,", "an empty item"),
                         ("2xx", "'2xx' is not a status code"), ("99", "99 is not an HTTP"),
                         ("200-600", "600 is not an HTTP"),
                         ("299-200", "299-200 is a reversed range (write 200-299)")):
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_status_spec(bad)


def test_settings_check_their_own_fields() -> None:
    with pytest.raises(HealthSettingsError) as info:
        HealthSettings(kind="http", http_path="", http_method="DELETE",  # type: ignore[arg-type]
                       http_expect_status=((300, 200),), http_expect_body=b"")
    assert [p.split(":")[0] for p in info.value.problems] == [
        "health.http_path", "health.http_method", "health.http_expect_status",
        "health.http_expect_body"]
    with pytest.raises(HealthSettingsError, match=r"health\.http_path: applies to kind"):
        HealthSettings(http_path="/x")


@pytest.mark.parametrize("backend, port, host", [
    ("10.0.1.5", 8080, "10.0.1.5:8080"),
    ("10.0.1.5", 80, "10.0.1.5"),
    ("2001:db8::5", 8080, "[2001:db8::5]:8080"),
])
def test_request_bytes_and_default_host(backend: str, port: int, host: str) -> None:
    spec = ProbeSpec.build(backend, port, HealthSettings(kind="http", http_path="/healthz"))
    assert spec.send == (f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}"
                         "\r\nConnection: close\r\n\r\n").encode()
    assert spec.http == HttpExpect() and spec.expect is None and not spec.connect_only
    assert USER_AGENT.startswith("l4lb-health/")


def test_request_uses_host_method_probe_port_and_proxy_header() -> None:
    s = HealthSettings(kind="http", http_method="HEAD", http_host="www.example.com", port=9100,
                       http_expect_status=((204, 204),), http_expect_body=None)
    spec = ProbeSpec.build("10.0.1.5", 8080, s)
    assert spec.port == 9100
    assert spec.send.startswith(b"HEAD / HTTP/1.1\r\nHost: www.example.com\r\n")
    assert spec.http == HttpExpect(statuses=((204, 204),))
    # with the service's proxy_protocol the request follows a LOCAL header (as send_expect)
    proxied = ProbeSpec.build("10.0.1.5", 8080, HealthSettings(kind="http",
                                                                proxy_protocol="v1"))
    assert proxied.send.startswith(b"PROXY UNKNOWN\r\nGET / HTTP/1.1\r\n")
    loaded = load_health('  kind = "http"\n', service='proxy_protocol = "v2"\n')
    assert loaded.proxy_protocol == "v2"
