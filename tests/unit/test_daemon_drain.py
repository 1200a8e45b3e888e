"""Drain deadlines in the daemon (`l4lb drain --timeout`) against a fake data plane: arming,
the deadline closing what is left, ending early when the backend empties, and every command
that cancels a deadline. The fake counts sessions; no sockets, no sleeping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from l4lb.config import load_file
from l4lb.control import ControlError
from l4lb.daemon import Daemon
from l4lb.display import backend_rows, countdown
from l4lb.state import Runtime


class FakeDataplane:
    """Just enough of the DataplaneAPI: publish, stats with per-backend active counts, and
    close_backend_sessions (one id or several)."""

    def __init__(self) -> None:
        self.generation = 0
        self.active: dict[int, int] = {}  # backend id -> open TCP sessions
        self.flows: dict[int, int] = {}  # backend id -> UDP flows
        self.closed: list[int] = []  # backend ids close_backend_sessions was called for
        self.calls: list[list[int]] = []  # the ids of each call
        self.reasons: list[str] = []  # the close reason of each call

    def publish(self, blob: bytes) -> int:
        self.generation += 1
        return self.generation

    def stats(self) -> dict[str, Any]:
        ids = set(self.active) | set(self.flows)
        return {"generation": self.generation, "services": {}, "connlog_dropped": 0,
                "backends": {bid: {"conns_active": self.active.get(bid, 0),
                                   "flows_active": self.flows.get(bid, 0)} for bid in ids}}

    def close_backend_sessions(self, backend_ids: int | Iterable[int],
                               reason: str = "drain_timeout") -> int | dict[int, int]:
        ids = [backend_ids] if isinstance(backend_ids, int) else list(backend_ids)
        self.calls.append(ids)
        self.reasons.append(reason)
        closed = {}
        for bid in dict.fromkeys(ids):
            self.closed.append(bid)
            closed[bid] = self.active.pop(bid, 0) + self.flows.pop(bid, 0)
        return closed[ids[0]] if isinstance(backend_ids, int) else closed

    def sessions(self) -> list[dict[str, Any]]:
        return [{"backend_id": bid} for bid, n in self.active.items() for _ in range(n)]

    def stop(self, timeout: float) -> None:
        pass


CONFIG = """\
[global]
control_socket = "{dir}/l4lb.sock"

[[services]]
name = "web"
listen = ["127.0.0.1:18080"]

  [[services.backends]]
  address = "127.0.0.1:9001"

  [[services.backends]]
  address = "127.0.0.1:9002"
  name = "two"
"""
B1, B2, B3 = "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"
THIRD = """
  [[services.backends]]
  address = "127.0.0.1:9003"
"""


def make_daemon(tmp_path: Path, text: str = CONFIG) -> tuple[Daemon, FakeDataplane]:
    path = tmp_path / "l4lb.toml"
    path.write_text(text.format(dir=tmp_path))
    daemon = Daemon(load_file(str(path)))
    dp = FakeDataplane()
    daemon.dp = dp
    daemon.file_config = daemon.config
    daemon.runtime = Runtime.from_config(daemon.config)
    daemon._publish()
    return daemon, dp


def bid(daemon: Daemon, address: str = B2) -> int:
    return daemon.builder.backend_ids()[("web", address)]


def test_deadline_closes_what_is_left_and_the_status_says_how_many(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    daemon, dp = make_daemon(tmp_path)
    dp.active[bid(daemon)] = 3
    reply = daemon.cmd_drain("web", "two", timeout="2s")
    assert reply["state"] == "drain"
    info = reply["drain"]
    assert info["sessions"] == 3 and info["outcome"] is None and info["timeout"] == 2.0
    assert 1.5 < info["remaining"] <= 2.0
    view = daemon.cmd_backends("web")[1]
    assert view["state"] == "drain" and view["drain_deadline"] == info["deadline"]
    assert daemon.cmd_backends("web")[0]["drain_deadline"] is None
    status_views = daemon.cmd_status()["services"][0]["backends"]
    assert status_views[1]["drain_deadline"] == info["deadline"]
    with caplog.at_level(logging.INFO, logger="l4lb"):
        daemon.drain_deadline_reached(info["id"])
    assert dp.closed == [bid(daemon)]
    assert "backend web/127.0.0.1:9002: drain deadline reached, closed 3 sessions" \
        in caplog.messages
    after = daemon.cmd_drain_status(info["id"])
    assert after["outcome"]["outcome"] == "deadline" and after["outcome"]["closed"] == 3
    assert after["sessions"] == 0 and after["state"] == "drain"  # stays drained
    assert daemon.cmd_backends("web")[1]["drain_deadline"] is None
    daemon.drain_deadline_reached(info["id"])  # a late second call changes nothing
    assert dp.closed == [bid(daemon)]


def test_deadlines_due_together_close_in_one_call(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    daemon, dp = make_daemon(tmp_path, CONFIG + THIRD)
    b1, b2, b3 = (bid(daemon, a) for a in (B1, B2, B3))
    dp.active = {b1: 3, b2: 1, b3: 5}
    first = daemon.cmd_drain("web", B1, timeout="2s")["drain"]["id"]
    second = daemon.cmd_drain("web", B2, timeout="2s")["drain"]["id"]
    later = daemon.cmd_drain("web", B3, timeout="1h")["drain"]["id"]
    for armed in daemon.drains.pending.values():  # B1 and B2 due now, B3 in an hour
        armed.deadline -= 2.0 if armed.ident != later else 0.0
    with caplog.at_level(logging.INFO, logger="l4lb"):
        daemon.drain_deadline_reached(first)
    assert [sorted(call) for call in dp.calls] == [sorted([b1, b2])]  # one call for both
    assert dp.reasons == ["drain_timeout"]  # the connection log's reason for them
    assert dp.active == {b3: 5}
    for ident, address, closed in ((first, B1, 3), (second, B2, 1)):
        outcome = daemon.cmd_drain_status(ident)["outcome"]
        assert (outcome["outcome"], outcome["closed"]) == ("deadline", closed)
        assert (f"backend web/{address}: drain deadline reached, closed {closed} "
                f"{'session' if closed == 1 else 'sessions'}") in caplog.messages
    assert daemon.cmd_drain_status(later)["outcome"] is None
    daemon.drain_deadline_reached(second)  # its timer, had it fired anyway: nothing more
    assert len(dp.calls) == 1


def test_stop_now_closes_every_backend_in_one_call(tmp_path: Path) -> None:
    daemon, dp = make_daemon(tmp_path, CONFIG + THIRD)
    dp.active = {bid(daemon, B1): 2, bid(daemon, B3): 4}
    assert daemon.stop_now() == 6
    assert len(dp.calls) == 1 and set(dp.calls[0]) >= {bid(daemon, B1), bid(daemon, B3)}
    assert dp.active == {}


def test_drain_with_nothing_left_ends_at_once(tmp_path: Path) -> None:
    daemon, dp = make_daemon(tmp_path)
    info = daemon.cmd_drain("web", B2, timeout="5m")["drain"]
    assert info["outcome"]["outcome"] == "drained" and info["sessions"] == 0
    assert not daemon.drains.pending and not daemon.drain_timers and dp.closed == []


def test_the_deadline_ends_early_when_the_backend_empties(tmp_path: Path) -> None:
    daemon, dp = make_daemon(tmp_path)
    dp.flows[bid(daemon)] = 1
    ident = daemon.cmd_drain("web", B2, timeout="1m")["drain"]["id"]
    daemon.check_drains()
    assert daemon.cmd_drain_status(ident)["outcome"] is None  # a flow is still open
    dp.flows.clear()
    daemon.check_drains()
    assert daemon.cmd_drain_status(ident)["outcome"]["outcome"] == "drained"
    assert dp.closed == []


@pytest.mark.parametrize(("command", "reason"), [
    ("enable", "backend state is now up"),
    ("disable", "backend state is now maint"),
    ("drain", "drained without a timeout"),
    ("remove-backend", "backend removed"),
])
def test_commands_that_cancel_the_deadline(tmp_path: Path, command: str, reason: str) -> None:
    daemon, dp = make_daemon(tmp_path)
    dp.active[bid(daemon)] = 1
    ident = daemon.cmd_drain("web", B2, timeout="1m")["drain"]["id"]
    daemon.commands()[command](service="web", backend=B2)
    info = daemon.cmd_drain_status(ident)
    assert info["outcome"] == {"outcome": "cancelled", "closed": 0, "reason": reason,
                               "at": info["outcome"]["at"]}
    assert not daemon.drains.pending
    daemon.drain_deadline_reached(ident)  # a timer that fired anyway does nothing
    assert dp.closed == []


def test_a_new_drain_with_another_timeout_replaces_the_deadline(tmp_path: Path) -> None:
    daemon, dp = make_daemon(tmp_path)
    dp.active[bid(daemon)] = 2
    first = daemon.cmd_drain("web", B2, timeout="1h")["drain"]
    second = daemon.cmd_drain("web", B2, timeout="10s")["drain"]
    assert second["id"] != first["id"] and second["remaining"] <= 10
    assert daemon.cmd_drain_status(first["id"])["outcome"]["reason"] == \
        "replaced by a new drain"
    assert daemon.cmd_drain_status(second["id"])["outcome"] is None


def test_a_reload_that_removes_the_backend_cancels_and_one_that_keeps_it_does_not(
        tmp_path: Path) -> None:
    daemon, dp = make_daemon(tmp_path)
    dp.active[bid(daemon)] = 1
    dp.active[bid(daemon, "127.0.0.1:9001")] = 1
    kept = daemon.cmd_drain("web", "127.0.0.1:9001", timeout="1m")["drain"]["id"]
    gone = daemon.cmd_drain("web", B2, timeout="1m")["drain"]["id"]
    cfg = tmp_path / "l4lb.toml"
    second = '  [[services.backends]]\n  address = "127.0.0.1:9002"'
    cfg.write_text(cfg.read_text().split(second)[0])
    daemon.reload()
    assert daemon.cmd_drain_status(gone)["outcome"]["reason"] == "backend removed"
    assert daemon.cmd_drain_status(gone)["state"] == "removed"
    assert daemon.cmd_drain_status(kept)["outcome"] is None


def test_bad_timeouts_and_unknown_ids_are_errors(tmp_path: Path) -> None:
    daemon, _ = make_daemon(tmp_path)
    for bad in ("5", "-1s", "1.5s", "25h"):
        with pytest.raises(ControlError, match="drain: timeout"):
            daemon.cmd_drain("web", B2, timeout=bad)
    with pytest.raises(ControlError, match="no drain with id 99"):
        daemon.cmd_drain_status(99)


def test_the_timer_is_armed_on_the_loop_and_cancelled_with_the_drain(tmp_path: Path) -> None:
    daemon, dp = make_daemon(tmp_path)
    dp.active[bid(daemon)] = 1

    async def go() -> tuple[float, bool]:
        loop = asyncio.get_running_loop()
        ident = daemon.cmd_drain("web", B2, timeout="30s")["drain"]["id"]
        timer = daemon.drain_timers[ident]
        when = timer.when() - loop.time()
        daemon.cmd_enable("web", B2)
        return when, timer.cancelled()

    when, cancelled = asyncio.run(go())
    assert 29.0 < when <= 30.0
    assert cancelled and not daemon.drain_timers


def test_backends_table_shows_the_deadline_and_the_probe_latency() -> None:
    row = backend_rows([{"address": "127.0.0.1:9002", "name": "two", "state": "drain",
                         "weight": 1, "effective_weight": 0, "conns_active": 3,
                         "conns_total": 9, "connect_failures": 0, "bytes_to_backend": 0,
                         "bytes_to_client": 0, "drain_deadline": 1000.0 + 272,
                         "probe_latency": 0.0012}], now=1000.0)[0]
    assert row[2] == "drain, 4m32s left"
    assert row[-1] == "1.2ms"
    assert countdown(0.2) == "1s" and countdown(-3) == "0s" and countdown(3700) == "1h1m40s"


def test_cli_countdown_and_end_lines() -> None:
    from l4lb.cli import drain_end_text, drain_line

    info: dict[str, Any] = {"id": 1, "service": "web", "backend": B2, "protocol": "tcp",
                            "state": "drain", "sessions": 3, "flows": 0, "remaining": 118.2,
                            "deadline": 1.0, "timeout": 120.0, "outcome": None}
    assert drain_line(info) == f"web/{B2}: 3 sessions left, 1m59s to the deadline"
    assert drain_line({**info, "sessions": 1, "remaining": 0.0}) == \
        f"web/{B2}: 1 session left, 0s to the deadline"
    udp = {**info, "service": "dns", "protocol": "udp", "sessions": 0, "flows": 1}
    assert drain_line(udp) == f"dns/{B2}: 1 flow left, 1m59s to the deadline"

    def ended(outcome: str, closed: int = 0, reason: str = "") -> dict[str, Any]:
        return {**info, "outcome": {"outcome": outcome, "closed": closed, "reason": reason,
                                    "at": 2.0}}

    assert drain_end_text(ended("deadline", 3)) == \
        (f"web/{B2}: deadline reached, closed 3 sessions", 0)
    assert drain_end_text({**ended("deadline", 1), "protocol": "udp"}) == \
        (f"web/{B2}: deadline reached, closed 1 flow", 0)
    assert drain_end_text(ended("drained")) == (f"web/{B2}: drained, no sessions left", 0)
    assert drain_end_text(ended("cancelled", reason="backend state is now up")) == \
        (f"web/{B2}: drain deadline cancelled: backend state is now up", 1)


def test_cli_follows_a_drain_whose_close_is_still_running(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """With the close off the loop, drain-status can read 0 flows left before the drain has
    ended (`closing`): `l4lb drain` must wait for the outcome, not call it drained."""
    import l4lb.cli as cli

    base: dict[str, Any] = {"id": 1, "service": "dns", "backend": B2, "protocol": "udp",
                            "state": "drain", "sessions": 0, "flows": 1, "remaining": 0.0,
                            "deadline": 1.0, "timeout": 1.0, "outcome": None, "closing": False}
    replies = iter([{**base, "flows": 0, "closing": True},
                    {**base, "flows": 0, "deadline": None, "closing": False,
                     "outcome": {"outcome": "deadline", "closed": 1, "reason": "", "at": 2.0}}])
    monkeypatch.setattr(cli, "_call", lambda *_a, **_k: next(replies))
    monkeypatch.setattr(cli.time, "sleep", lambda _s: None)
    assert cli._follow_drain(base, None, None, False) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        f"dns/{B2}: deadline reached, closed 1 flow"
