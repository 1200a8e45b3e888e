"""The `health.on_down` key: its values, its default, and the error for a UDP service (whose
flows move to another backend by themselves when theirs goes DOWN)."""

from __future__ import annotations

from typing import Any

import pytest

from l4lb.config import ConfigError, load_text
from l4lb.health.settings import HealthSettings, HealthSettingsError

TCP = """\
[[services]]
name = "web"
listen = ["127.0.0.1:8080"]
  [services.health]
{keys}
  [[services.backends]]
  address = "127.0.0.1:9001"
"""
UDP = """\
[[services]]
name = "dns"
protocol = "udp"
listen = ["127.0.0.1:5353"]
  [services.health]
  port = 53
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


def test_keep_by_default() -> None:
    assert load(TCP.format(keys="")).services[0].health.on_down == "keep"
    assert HealthSettings().on_down == "keep"


@pytest.mark.parametrize("value", ["keep", "shutdown_sessions"])
def test_values(value: str) -> None:
    assert load(TCP.format(keys=f'  on_down = "{value}"')).services[0].health.on_down == value


def test_bad_value_suggests_the_right_one() -> None:
    assert errors(TCP.format(keys='  on_down = "shutdown-sessions"')) == [
        't.toml:5:13: error: services[0] ("web"): health.on_down: "shutdown-sessions" is not '
        'one of keep, shutdown_sessions; did you mean "shutdown_sessions"?']
    assert errors(TCP.format(keys="  on_down = true")) == [
        't.toml:5:13: error: services[0] ("web"): health.on_down: expected a string, found a '
        "boolean (true)"]


@pytest.mark.parametrize("value", ["keep", "shutdown_sessions"])
def test_udp_service_refuses_it(value: str) -> None:
    assert errors(UDP.format(keys=f'  on_down = "{value}"')) == [
        't.toml:7:13: error: services[0] ("dns"): health.on_down: applies to protocol = "tcp" '
        'only; a UDP flow whose backend goes DOWN moves to another backend with its next '
        'datagram (close reason "moved")']


def test_settings_refuse_an_unknown_value() -> None:
    with pytest.raises(HealthSettingsError) as info:
        HealthSettings(on_down="drop")  # type: ignore[arg-type]
    assert info.value.problems == ["health.on_down: 'drop' is not one of keep, shutdown_sessions"]
