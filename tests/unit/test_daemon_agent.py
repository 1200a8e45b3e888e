"""Agent checks and misc_dynamic weights in the daemon, against a fake data plane and a poller
(or checker) that is not started: the replies and exit statuses are handed to their accounting
as a poll or probe would (no sockets, no commands, no sleeping). Slow start after the agent
brings a backend back; a reply that changes only its `#` text; percentages under round_robin;
drain-status's state; a weight change's reply while a misc_dynamic weight replaces it."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from l4lb.cli import _change_text
from l4lb.daemon import Daemon
from l4lb.health.agent import AgentPoller
from l4lb.health.checker import HealthChecker
from l4lb.health.probe import ProbeResult

from .test_daemon_on_down import FakeDataplane, make_daemon, settle

B1, B2 = "127.0.0.1:9001", "127.0.0.1:9002"


def config(health: str = "") -> str:
    return f"""\
[global]
control_socket = "{{dir}}/l4lb.sock"

[[services]]
name = "web"
listen = ["127.0.0.1:18080"]
scheduler = "weighted_round_robin"
backends = [{{{{ address = "{B1}", weight = 100 }}}}, {{{{ address = "{B2}", weight = 100 }}}}]

  [services.health]
  min_healthy = 0.0
  {health}

  [services.agent]
  port = 9777
"""


def with_agents(tmp_path: Path, text: str) -> tuple[Daemon, FakeDataplane, AgentPoller]:
    daemon, dp = make_daemon(tmp_path, text)
    poller = daemon.agents = AgentPoller(daemon._on_agent_change)
    daemon._sync_agents()
    return daemon, dp, poller


def says(daemon: Daemon, poller: AgentPoller, address: str, line: bytes) -> None:
    """The agent of `address` answers `line` to one poll; the coalesced publish runs."""
    async def go() -> None:
        poller._account(poller._agents[("web", address)], line, None)
        await settle(daemon)
    asyncio.run(go())


def eff(daemon: Daemon) -> dict[str, int]:
    assert daemon.weights is not None
    return {key[1]: w for key, w in daemon.weights.weights.items()}


def test_a_backend_the_agent_brings_back_up_ramps_with_slow_start(tmp_path: Path) -> None:
    daemon, _, poller = with_agents(tmp_path, config('slow_start = "100s"'))
    assert eff(daemon) == {B1: 100, B2: 100}  # at start nothing ramps
    says(daemon, poller, B2, b"stopped #deploy\n")
    assert eff(daemon) == {B1: 100, B2: 0}
    says(daemon, poller, B2, b"up\n")
    # came back UP a moment ago: it starts at weight 1, as after a health check's DOWN -> UP
    assert eff(daemon) == {B1: 100, B2: 1}
    assert daemon.ramp_handle is not None  # the next step is scheduled
    daemon.ramp_handle.cancel()
    says(daemon, poller, B2, b"up 50%\n")  # what keeps it UP starts no new ramp
    assert eff(daemon)[B2] == 1
    says(daemon, poller, B1, b"ready 100%\n")  # never down: no ramp
    assert eff(daemon)[B1] == 100


def test_without_slow_start_the_agent_brings_it_back_at_once(tmp_path: Path) -> None:
    daemon, _, poller = with_agents(tmp_path, config())
    says(daemon, poller, B2, b"down\n")
    says(daemon, poller, B2, b"up\n")
    assert eff(daemon) == {B1: 100, B2: 100}


def test_a_reply_that_changes_only_its_reason_is_neither_logged_nor_published(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    daemon, dp, poller = with_agents(tmp_path, config())
    with caplog.at_level(logging.INFO, logger="l4lb"):
        says(daemon, poller, B1, b"up 50% #load 0.31\n")
        assert f"backend web/{B1}: agent says up 50% (#load 0.31)" in caplog.messages
        lines, builds = len(caplog.messages), dp.generation
        calls = []
        daemon._publish_soon = lambda: calls.append(1)  # type: ignore[method-assign]
        for load in ("0.32", "0.35", "0.30"):
            says(daemon, poller, B1, f"up 50% #load {load}\n".encode())
    assert calls == [] and dp.generation == builds
    assert len(caplog.messages) == lines  # one line per reply that changes the table
    view = {v["address"]: v for v in daemon.cmd_backends("web")}[B1]
    assert view["agent"]["reason"] == "load 0.30"  # the reason shown is the latest
    assert view["agent"]["holds"] == "50% (#load 0.30)"


def test_a_percentage_on_a_round_robin_service_is_warned_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """round_robin (the default scheduler) ignores weights: an agent's 50% would show in EFF
    and change nothing, so the daemon says so, once per service."""
    text = config().replace('scheduler = "weighted_round_robin"', 'scheduler = "round_robin"')
    daemon, _, poller = with_agents(tmp_path, text)
    with caplog.at_level(logging.INFO, logger="l4lb"):
        says(daemon, poller, B1, b"up 100%\n")  # changes no share: nothing to say
        says(daemon, poller, B1, b"0%\n")  # 0 takes it out under round_robin too
        assert not [m for m in caplog.messages if "round_robin" in m]
        says(daemon, poller, B1, b"50%\n")
        says(daemon, poller, B2, b"25%\n")
    warned = [r for r in caplog.records if "round_robin" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert warned[0].getMessage() == (
        f'service web: the agent of backend {B1} says 50%, but scheduler "round_robin" '
        'ignores weights (only 0% takes a backend out); use "weighted_round_robin" for '
        "shares")
    daemon2, _, poller2 = with_agents(tmp_path, config())
    with caplog.at_level(logging.INFO, logger="l4lb"):
        says(daemon2, poller2, B1, b"50%\n")  # a scheduler that reads weights: no warning
    assert len([r for r in caplog.records if "round_robin" in r.getMessage()]) == 1


def test_drain_status_shows_the_state_with_the_agent_applied(tmp_path: Path) -> None:
    """drain-status says the same state as `l4lb backends`: the stricter of the operator's
    drain and the agent's maint."""
    daemon, _, poller = with_agents(tmp_path, config())
    armed = daemon.cmd_drain("web", B1, timeout="5m")
    ident = armed["drain"]["id"]
    assert daemon.cmd_drain_status(ident)["state"] == "drain"
    says(daemon, poller, B1, b"maint #reboot\n")
    view = {v["address"]: v for v in daemon.cmd_backends("web")}[B1]
    assert view["state"] == "maint"
    assert daemon.cmd_drain_status(ident)["state"] == "maint"


def test_a_weight_change_reply_says_that_a_misc_dynamic_weight_replaces_it(
        tmp_path: Path) -> None:
    """`l4lb weight` while a misc_dynamic weight is set changes the base weight, which the
    check's weight replaces: the reply says so instead of reporting a weight the table does
    not use."""
    text = config('kind = "exec"\n  command = ["/bin/true"]\n  dynamic = true')
    daemon, _ = make_daemon(tmp_path, text.split("  [services.agent]")[0])
    checker = daemon.checker = HealthChecker(daemon._on_transition,
                                             on_weight=daemon._on_dynamic_weight)
    daemon._sync_health()

    async def exit_status_12() -> None:
        entry = checker._entries[("web", B1)]
        checker._account(entry, ProbeResult(True, "exit status 12 (weight 10)", 0.01, True,
                                            10), time.monotonic())
        await settle(daemon)
    asyncio.run(exit_status_12())
    assert eff(daemon) == {B1: 10, B2: 100}
    reply = daemon.cmd_weight("web", B1, 50)
    assert (reply["weight"], reply["dynamic_weight"]) == (50, 10)
    assert eff(daemon) == {B1: 10, B2: 100}  # the table keeps the check's weight
    assert "note: its check's misc_dynamic weight 10 replaces this weight while it is set" \
        in _change_text(reply)
    plain = daemon.cmd_weight("web", B2, 60)
    assert "dynamic_weight" not in plain and "misc_dynamic" not in _change_text(plain)


def bid(daemon: Daemon, address: str) -> int:
    return daemon.builder.backend_ids()[("web", address)]


@pytest.mark.parametrize("word", [b"down", b"fail", b"stopped #deploy"])
def test_an_agent_down_closes_the_sessions_with_on_down(tmp_path: Path, word: bytes,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """on_down = "shutdown_sessions" follows the agent's down, fail and stopped as it
    follows the health check's DOWN: one close right after the table without the backend."""
    daemon, dp, poller = with_agents(tmp_path, config('on_down = "shutdown_sessions"'))
    b2 = bid(daemon, B2)
    dp.active = {b2: 5, bid(daemon, B1): 2}
    with caplog.at_level(logging.INFO, logger="l4lb"):
        says(daemon, poller, B2, word + b"\n")
    assert dp.closes == [(b2, "backend_down", 0, dp.generation)]
    assert dp.active == {bid(daemon, B1): 2}
    assert f'backend web/{B2}: closed 5 sessions (on_down = "shutdown_sessions")' \
        in caplog.messages
    dp.active[b2] = 1
    says(daemon, poller, B2, word + b" 50%\n")  # still down: no new transition, no close
    says(daemon, poller, B2, b"up\n")
    assert len(dp.closes) == 1


def test_an_agent_down_keeps_the_sessions_by_default_and_in_a_panic(tmp_path: Path) -> None:
    daemon, dp, poller = with_agents(tmp_path, config())
    dp.active = {bid(daemon, B2): 5}
    says(daemon, poller, B2, b"down\n")
    assert dp.closes == []  # on_down = "keep"
    text = config('on_down = "shutdown_sessions"').replace("min_healthy = 0.0",
                                                             "min_healthy = 1.0")
    daemon, dp, poller = with_agents(tmp_path, text)
    dp.active = {bid(daemon, B2): 5}
    says(daemon, poller, B2, b"fail\n")  # panic: a finding, kept in rotation
    assert dp.closes == [] and daemon.weights is not None and daemon.weights.panic
    says(daemon, poller, B2, b"stopped\n")  # deliberate: out of rotation, panic or not
    assert [c[:3] for c in dp.closes] == [(bid(daemon, B2), "backend_down", 0)]


def test_health_up_while_the_agent_holds_it_down_keeps_the_close_due(tmp_path: Path) -> None:
    """A backend the agent holds DOWN is still DOWN when its health check comes back UP: a
    close kept by a panic stays due until the backend leaves rotation."""
    text = config('on_down = "shutdown_sessions"').replace("min_healthy = 0.0",
                                                             "min_healthy = 1.0")
    daemon, _, poller = with_agents(tmp_path, text)
    says(daemon, poller, B2, b"down\n")
    assert ("web", B2) in daemon.on_down_pending  # kept by the panic
    daemon._note_down(("web", B2), went_down=False)  # e.g. its health check's UP
    assert ("web", B2) in daemon.on_down_pending
    says(daemon, poller, B2, b"up\n")
    assert ("web", B2) not in daemon.on_down_pending


def test_agents_are_polled_from_the_health_source(tmp_path: Path) -> None:
    _, _, poller = with_agents(tmp_path, config('source = "127.0.0.1"'))
    assert {k: a.source for k, a in poller._agents.items()} == {
        ("web", B1): "127.0.0.1", ("web", B2): "127.0.0.1"}
    _, _, poller = with_agents(tmp_path, config())
    assert {a.source for a in poller._agents.values()} == {None}
