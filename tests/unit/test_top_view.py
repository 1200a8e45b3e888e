"""`l4lb top` without a terminal: rates between snapshots and the rendered table."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from l4lb.display import backend_rows, human_bytes
from l4lb.top import Rate, rates, render, run_top


def make_status(conns: int, to_client: int) -> dict[str, Any]:
    def view(address: str, name: str, state: str, total: int, nbytes: int) -> dict[str, Any]:
        return {"service": "web", "address": address, "name": name, "state": state,
                "weight": 2, "effective_weight": 2 if state == "up" else 0,
                "backup": state == "maint", "conns_total": total, "conns_active": 1,
                "connect_failures": 0, "bytes_to_backend": total * 100,
                "bytes_to_client": nbytes}

    return {"version": "0.1.0", "pid": 9, "config": "/c", "started": 1000.0, "workers": 2,
            "table": {"generation": 5, "digest": "aa"},
            "services": [{"name": "web", "protocol": "tcp", "scheduler": "round_robin",
                          "listen": ["127.0.0.1:80"],
                          "counters": {"conns_total": conns + 3, "conns_active": 2,
                                       "rejected": 0, "no_backend": 0,
                                       "bytes_to_backend": conns * 100,
                                       "bytes_to_client": to_client, "accept_errors": 0},
                          "backends": [view("127.0.0.1:9001", "one", "up", conns, to_client),
                                       view("127.0.0.1:9002", "127.0.0.1:9002", "maint", 3,
                                            0)]}]}


def test_rates_are_counter_deltas_over_time() -> None:
    r = rates(make_status(100, 1000), make_status(300, 5000), 2.0)
    assert r[("web", "127.0.0.1:9001")] == Rate(conns=100.0, to_backend=10000.0,
                                                 to_client=2000.0)
    assert r[("web", None)] == Rate(conns=100.0, to_backend=10000.0, to_client=2000.0)
    assert r[("web", "127.0.0.1:9002")] == Rate(0.0, 0.0, 0.0)


def test_no_rates_without_a_previous_snapshot_or_time() -> None:
    assert set(rates(None, make_status(1, 1), 1.0).values()) == {Rate(None, None, None)}
    assert set(rates(make_status(1, 1), make_status(2, 2), 0.0).values()) == \
        {Rate(None, None, None)}


def test_a_counter_that_went_down_has_no_rate() -> None:
    r = rates(make_status(500, 9000), make_status(10, 9500), 1.0)
    assert r[("web", "127.0.0.1:9001")] == Rate(conns=None, to_backend=None, to_client=500.0)


def test_a_new_backend_has_no_rate_yet() -> None:
    before = make_status(10, 10)
    after = copy.deepcopy(before)
    fresh = dict(after["services"][0]["backends"][0], address="127.0.0.1:9009", name="new")
    after["services"][0]["backends"].append(fresh)
    assert rates(before, after, 1.0)[("web", "127.0.0.1:9009")] == Rate(None, None, None)


def screen_text(status: dict[str, Any], prev: dict[str, Any] | None, error: str = "") -> str:
    console = Console(record=True, width=160, color_system=None, force_terminal=False)
    console.print(render(status, rates(prev, status, 1.0), socket_path="/run/l4lb.sock",
                         interval=1.0, error=error, now=1000.0 + 3661))
    return console.export_text()


def test_render_shows_services_backends_states_and_rates() -> None:
    text = screen_text(make_status(300, 3 * 1024 * 1024), make_status(100, 0))
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert lines["127.0.0.1:9001"] == ["127.0.0.1:9001", "one", "up", "2", "2", "1", "200",
                                       "300", "0", "19.5K/s", "3.0M/s", "29.3K", "3.0M"]
    assert lines["127.0.0.1:9002"][1:4] == ["maint", "backup", "2"]  # name = address: hidden
    assert lines["web"][:3] == ["web", "tcp", "round_robin"]
    assert "up 1h1m" in text and "table gen 5" in text and "/run/l4lb.sock" in text


def test_render_shows_the_time_left_to_a_drain_deadline() -> None:
    status = make_status(300, 1000)
    drained = dict(status["services"][0]["backends"][0], address="127.0.0.1:9003",
                   name="three", state="drain", drain_deadline=1000.0 + 3661 + 272)
    backup = dict(drained, address="127.0.0.1:9004", name="four", backup=True,
                  drain_deadline=1000.0 + 3661 + 59.5)
    status["services"][0]["backends"] += [drained, backup]
    text = screen_text(status, None)
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert lines["127.0.0.1:9003"][:5] == ["127.0.0.1:9003", "three", "drain", "4m32s", "2"]
    assert lines["127.0.0.1:9004"][:6] == ["127.0.0.1:9004", "four", "drain", "1m", "backup",
                                           "2"]
    assert lines["127.0.0.1:9001"][2:4] == ["up", "2"]  # no deadline: nothing added
    # The same countdown as `l4lb backends` shows for that snapshot and time.
    assert backend_rows([drained], now=1000.0 + 3661)[0][2] == "drain, 4m32s left"


def test_render_first_frame_and_error_line() -> None:
    text = screen_text(make_status(1, 1), None, error="control socket gone")
    assert text.splitlines()[4].split()[6] == "-"  # the first backend row: no conn/s yet
    assert "daemon not answering: control socket gone (retrying)" in text


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1536, 3 * 1024**2, 2 * 1024**5)] == \
        ["0B", "1023B", "1.5K", "3.0M", "2.0P"]


def test_run_top_without_daemon_returns_1(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert run_top(str(tmp_path / "absent.sock")) == 1
    assert "l4lb top: error: control socket" in capsys.readouterr().err


def test_run_top_rejects_a_bad_interval(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        run_top(str(tmp_path / "absent.sock"), interval=0)


def test_udp_backends_count_their_flows() -> None:
    def udp(flows_total: int) -> dict[str, Any]:
        status = make_status(0, 0)
        svc = status["services"][0]
        svc["protocol"] = "udp"
        b = svc["backends"][0]
        b.update(conns_total=0, conns_active=0, flows_active=4, flows_total=flows_total)
        return status

    text = screen_text(udp(250), udp(50))
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    # ACTIVE 4 flows, 200 new flows in the 1 s between the snapshots, TOTAL 250
    assert lines["127.0.0.1:9001"][5:8] == ["4", "200", "250"]
