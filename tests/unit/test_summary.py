"""The SIGUSR2 summary (Daemon.log_summary): one line per service, connections for TCP and
flows for UDP (a UDP service used to report its always-zero connection counters)."""

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
