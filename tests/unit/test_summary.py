"""What the daemon tells an operator about a service: the SIGUSR2 summary (one line per service,
connections for TCP and flows for UDP; a UDP service used to report its always-zero connection
counters), and the note of `weight` on a round_robin service (which ignores weights)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from .test_review6_reload import make_daemon, ports, service, write  # noqa: F401 (fixture)


def test_udp_services_report_flows(tmp_path: Path, ports: tuple[int, int],  # noqa: F811
                                   caplog: pytest.LogCaptureFixture) -> None:
    body = service("web", ports[0], ["127.0.0.1:9001"]) + \
        service("dns", ports[1], ["127.0.0.1:9002", "127.0.0.1:9003"], protocol="udp")
    daemon, dp = make_daemon(write(tmp_path, body))
    ids = daemon.builder.service_ids()
    counters = {ids["web"]: {"conns_active": 4, "conns_total": 40},
                ids["dns"]: {"flows_active": 3, "flows_created": 30}}

    def stats() -> dict[str, Any]:
        return {"generation": dp.generation, "services": counters, "connlog_dropped": 0,
                "backends": {}}

    dp.stats = stats  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO):
        daemon.log_summary("SIGUSR2")
    lines = [r.getMessage() for r in caplog.records]
    assert "service web: 1/1 backends up, 4 active, 40 total connections" in lines
    assert "service dns: 2/2 backends up, 3 active, 30 total flows" in lines


def test_weight_on_a_round_robin_service_carries_a_note(
        tmp_path: Path, ports: tuple[int, int]) -> None:  # noqa: F811
    from l4lb.cli import _change_text

    body = service("web", ports[0], ["127.0.0.1:9001", "127.0.0.1:9002"]) + \
        service("wrr", ports[1], ["127.0.0.1:9003"], 'scheduler = "weighted_round_robin"')
    daemon, _ = make_daemon(write(tmp_path, body))
    reply = daemon.cmd_weight("web", "127.0.0.1:9001", 5)
    assert "round_robin\" ignores weights" in reply["note"]
    assert _change_text(reply).endswith("\nnote: " + reply["note"])
    assert "note" not in daemon.cmd_weight("wrr", "127.0.0.1:9003", 5)


def test_add_backend_with_a_weight_on_a_round_robin_service_carries_the_note(
        tmp_path: Path, ports: tuple[int, int]) -> None:  # noqa: F811
    from l4lb.cli import _overlay_text

    daemon, _ = make_daemon(write(tmp_path, service("web", ports[0], ["127.0.0.1:9001"])))
    assert "note" not in daemon.cmd_add_backend("web", "127.0.0.1:9002")
    reply = daemon.cmd_add_backend("web", "127.0.0.1:9003", weight=4)
    assert "ignores weights" in reply["note"]
    assert _overlay_text(reply, "added").endswith("\nnote: " + reply["note"])
