"""`l4lb status` names a TCP service's socket options that differ from the defaults."""

from __future__ import annotations

from typing import Any

import pytest

from l4lb.display import status_text, tcp_options_text

DEFAULTS = {"congestion_control": None, "backend_congestion_control": None,
            "backend_fast_open": False, "defer_accept": False}


@pytest.mark.parametrize(("changes", "text"), [
    ({}, ""),
    ({"congestion_control": "cubic", "backend_congestion_control": "cubic"},
     "congestion control cubic (clients), cubic (backends)"),
    ({"backend_congestion_control": "bbr"}, "congestion control bbr (backends)"),
    ({"backend_fast_open": True, "defer_accept": True}, "backend fast open; defer accept"),
    ({"congestion_control": "reno", "backend_congestion_control": "reno", "defer_accept": True},
     "congestion control reno (clients), reno (backends); defer accept"),
])
def test_options_text(changes: dict[str, Any], text: str) -> None:
    assert tcp_options_text({**DEFAULTS, **changes}) == text


def status(options: dict[str, Any] | None) -> dict[str, Any]:
    svc: dict[str, Any] = {"name": "web", "protocol": "tcp", "scheduler": "round_robin",
                           "listen": ["127.0.0.1:80"], "counters": {}, "backends": [],
                           "differences_from_file": {}}
    if options is not None:
        svc["tcp_options"] = options
    return {"version": "0", "pid": 1, "workers": 1, "config": "c.toml",
            "table": {"generation": 1, "digest": "d"}, "services": [svc], "vrrp": []}


def test_status_shows_the_line_only_when_something_is_set() -> None:
    on = status_text(status({**DEFAULTS, "backend_fast_open": True}))
    assert "\n  options: backend fast open\n" in on
    assert "options:" not in status_text(status(DEFAULTS))
    assert "options:" not in status_text(status(None))  # a daemon that does not send them
