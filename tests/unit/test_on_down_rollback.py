"""health.on_down across a reload that is rolled back (found by review): the tentative publish
of the failed reload pruned the counter of a backend the new file dropped and the closes that
waited out a panic; the rollback now puts both back, and keeps the count of a close that was
still in flight off the loop when the reload began."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from l4lb.control import ControlError
from l4lb.health.dampener import Health

from .test_daemon_on_down import (
    B2,
    B3,
    bid,
    config,
    make_daemon,
    off_loop_daemon,
    settle,
    shut_down_count,
    transitions,
    went,
)


def without_b3(text: str) -> str:
    return text.replace(f'  [[services.backends]]\n  address = "{B3}"\n', "")


def test_rolled_back_reload_keeps_the_sessions_shut_down_counter(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    daemon, dp = make_daemon(tmp_path, config("shutdown_sessions", min_healthy=0.0))
    dp.active = {bid(daemon, B3): 5}
    transitions(daemon, (B3, Health.DOWN))
    assert shut_down_count(daemon, B3) == 5
    # a reload that removes B3 and then fails after its table went out (any failure in
    # _commit after _publish(): a fresh listener's option refused, add_listener failing, ...)
    (tmp_path / "l4lb.toml").write_text(
        without_b3(config("shutdown_sessions", min_healthy=0.0)).format(dir=tmp_path))
    monkeypatch.setattr(daemon, "_sync_listener_defer_accept",
                        lambda groups: ["injected: a fresh listener refused an option"])
    with pytest.raises(ControlError):
        daemon.reload()
    assert [b.address for b in daemon.config.services[0].backends][-1].port == 9003  # rolled back
    # the backend is back (never left, as far as anyone outside can tell) but its counter
    # (a Prometheus counter) went back to 0
    assert shut_down_count(daemon, B3) == 5


def test_rolled_back_reload_keeps_a_close_pending_in_panic(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # min_healthy 0.5: B2 and B3 DOWN is a panic, their closes wait
    daemon, dp = make_daemon(tmp_path, config("shutdown_sessions", min_healthy=0.5))
    dp.active = {bid(daemon, B2): 2, bid(daemon, B3): 3}
    transitions(daemon, (B2, Health.DOWN), (B3, Health.DOWN))
    assert set(daemon.on_down_pending) == {("web", B2), ("web", B3)}
    (tmp_path / "l4lb.toml").write_text(config("keep", min_healthy=0.5).format(dir=tmp_path))
    monkeypatch.setattr(daemon, "_sync_listener_defer_accept",
                        lambda groups: ["injected: a fresh listener refused an option"])
    with pytest.raises(ControlError):
        daemon.reload()
    assert daemon.config.services[0].health.on_down == "shutdown_sessions"  # rolled back
    monkeypatch.undo()
    transitions(daemon, (B2, Health.UP))  # panic over, B3 leaves rotation while DOWN
    assert [c[0] for c in dp.closes] == [bid(daemon, B3)]


def test_a_close_in_flight_is_counted_before_a_reload_saves_its_rollback_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    daemon, dp = off_loop_daemon(tmp_path)  # the C plane's close, off the loop
    dp.active = {bid(daemon, B3): 5}

    async def go() -> None:
        daemon._on_transition(("web", B3), went(Health.DOWN))
        await settle(daemon)
        assert await asyncio.get_running_loop().run_in_executor(None, dp.started.wait, 5.0)
        dp.release.release()  # it ends; its count is not taken yet when the reload begins
        (tmp_path / "l4lb.toml").write_text(
            config("shutdown_sessions", min_healthy=0.1).format(dir=tmp_path))
        monkeypatch.setattr(daemon, "_sync_listener_defer_accept",
                            lambda groups: ["injected: a fresh listener refused an option"])
        with pytest.raises(ControlError):
            daemon.reload()

    asyncio.run(go())
    assert shut_down_count(daemon, B3) == 5  # not lost to the rollback
    daemon.stop(0.0)
