"""The `defer_accept` service key: its default, its type, and where it applies. The listener
side is tested end to end in tests/integration/test_defer_accept.py."""

from __future__ import annotations

import pytest

from l4lb.config import ConfigError, load_text
from l4lb.config.model import Service

from .test_config_fast_open import TCP, UDP  # the same one-service files


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text, "t.toml", host=None)
    return [str(d) for d in info.value.diagnostics]


def test_off_by_default() -> None:
    assert load_text(TCP.format(keys=""), "t.toml", host=None).services[0].defer_accept is False
    assert Service(name="s", protocol="tcp", listen=(), backends=()).defer_accept is False


@pytest.mark.parametrize("value", [True, False])
def test_read_from_the_file(value: bool) -> None:
    text = TCP.format(keys=f"defer_accept = {str(value).lower()}")
    assert load_text(text, "t.toml", host=None).services[0].defer_accept is value


def test_udp_service_refuses_it() -> None:
    assert errors(UDP.format(keys="defer_accept = true")) == [
        't.toml:5:16: error: services[0] ("dns"): defer_accept: applies to protocol = "tcp" '
        "only"]


def test_must_be_a_boolean() -> None:
    assert errors(TCP.format(keys="defer_accept = 1")) == [
        't.toml:4:16: error: services[0] ("web"): defer_accept: expected a boolean, found an '
        "integer (1)"]
