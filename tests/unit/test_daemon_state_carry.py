"""Reload edge cases: what it carries over (health once checks are dropped, the --log-level
level and --log-format format) and what a refused or rolled-back reload must leave as it was
(drain deadlines, no listener without its socket options)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from l4lb.control import ControlError
from l4lb.daemon import serve
from l4lb.logs import flush_logs, setup_logging

from .test_review6_reload import can_bind, make_daemon, ports, service, write  # noqa: F401 (fixture)


def test_a_service_that_drops_its_health_checks_has_every_backend_up(
        tmp_path: Path, ports: tuple[int, int]) -> None:  # noqa: F811
    path = write(tmp_path, service("web", ports[0], ["127.0.0.1:9001", "127.0.0.1:9003"],
                                   '[services.health]\nsource = "127.0.0.1"'))
    daemon, _ = make_daemon(path, checker=True)
    key = ("web", "127.0.0.1:9001")
    daemon.runtime.backends[key].health = "down"  # what a DOWN transition does
    daemon._publish()
    assert daemon.weights is not None and daemon.weights.weights[key] == 0
    path.write_text(service("web", ports[0], ["127.0.0.1:9001", "127.0.0.1:9003"]))
    daemon.reload()
    assert daemon.runtime.backends[key].health == "up"
    assert daemon.weights.weights[key] > 0


def test_a_rolled_back_reload_keeps_the_drain_deadlines(
        tmp_path: Path, ports: tuple[int, int]) -> None:  # noqa: F811
    web, extra = ports
    path = write(tmp_path, service("web", web, ["127.0.0.1:9001", "127.0.0.1:9003"]))
    daemon, dp = make_daemon(path)
    bid = daemon.builder.backend_ids()[("web", "127.0.0.1:9001")]
    dp.backend_stats[bid] = {"conns_active": 3}
    daemon.cmd_drain("web", "127.0.0.1:9001", timeout="5m")
    armed = daemon.drains.pending[("web", "127.0.0.1:9001")]
    # the new file drops the draining backend (its deadline ends when that table goes live)
    # and adds a service whose listener then cannot be handed over: rolled back
    path.write_text(service("web", web, ["127.0.0.1:9003"])
                    + service("more", extra, ["127.0.0.1:9002"]))
    dp.fail_add_listener = True
    with pytest.raises(ControlError):
        daemon.reload()
    assert daemon.runtime.backends[("web", "127.0.0.1:9001")].admin == "drain"
    assert daemon.drains.pending == {("web", "127.0.0.1:9001"): armed}
    assert armed.ident not in daemon.drains.ended


@pytest.mark.parametrize("pinned, want", [(False, logging.DEBUG), (True, logging.WARNING)])
def test_reload_keeps_a_log_level_given_on_the_command_line(
        tmp_path: Path, ports: tuple[int, int], pinned: bool, want: int) -> None:  # noqa: F811
    path = write(tmp_path, service("web", ports[0], ["127.0.0.1:9001"]))
    daemon, _ = make_daemon(path)
    daemon.log_level_pinned = pinned
    root = logging.getLogger()
    saved = root.level
    try:
        root.setLevel(logging.WARNING)  # as `l4lb --log-level warning run` set it
        path.write_text(path.read_text().replace("[global]\n", '[global]\nlog_level = "debug"\n'))
        daemon.reload()
        assert root.level == want
    finally:
        root.setLevel(saved)


@pytest.mark.parametrize("pinned", [False, True])
def test_reload_applies_log_format_unless_the_command_line_chose_it(
        tmp_path: Path, ports: tuple[int, int], pinned: bool) -> None:  # noqa: F811
    path = write(tmp_path, service("web", ports[0], ["127.0.0.1:9001"]))
    daemon, _ = make_daemon(path)
    daemon.log_format_pinned = pinned
    stream = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        setup_logging("info", "text", stream)  # as `l4lb run` set it up
        path.write_text(path.read_text().replace("[global]\n", '[global]\nlog_format = "json"\n'))
        result = daemon.reload()
        assert "log_format" not in result["restart_needed"]
        logging.getLogger("l4lb.test").info("service web: after the reload")
        assert flush_logs(5.0)  # the lines are written by the logging thread
        last = stream.getvalue().splitlines()[-1]
        if pinned:
            assert not last.startswith("{") and last.endswith("service web: after the reload")
        else:
            assert json.loads(last)["message"] == "service web: after the reload"
            assert any(line.endswith("reload: log_format text -> json")
                       for line in stream.getvalue().splitlines()), stream.getvalue()
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)


def test_a_new_listener_that_cannot_take_its_options_is_refused_as_at_start(
        tmp_path: Path, ports: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    web, extra = ports
    path = write(tmp_path, service("web", web, ["127.0.0.1:9001"]))
    daemon, _ = make_daemon(path)
    services = daemon.builder.service_ids()
    real = daemon._sync_listener_congestion

    def refuse_new(groups: list[Any]) -> list[str]:
        real(groups)
        return [f"service {g.service}: TCP_CONGESTION refused" for g in groups
                if g.service == "more"]

    monkeypatch.setattr(daemon, "_sync_listener_congestion", refuse_new)
    path.write_text(path.read_text() + service("more", extra, ["127.0.0.1:9002"]))
    with pytest.raises(ControlError, match="service more: TCP_CONGESTION refused"):
        daemon.reload()
    assert daemon.builder.service_ids() == services  # rolled back
    assert can_bind(extra)  # the new listener was closed again


def test_a_change_that_leaves_the_table_as_it_is_publishes_nothing(
        tmp_path: Path, ports: tuple[int, int]) -> None:  # noqa: F811
    path = write(tmp_path, service("web", ports[0], ["127.0.0.1:9001", "127.0.0.1:9003"]))
    daemon, _ = make_daemon(path)
    daemon.cmd_weight("web", "127.0.0.1:9001", 5)
    generation, digest = daemon.generation, daemon.digest
    for _ in range(3):  # the same weight again, a script's retry: no new table, no log line
        daemon.cmd_weight("web", "127.0.0.1:9001", 5)
    assert (daemon.generation, daemon.digest) == (generation, digest)
    daemon.cmd_weight("web", "127.0.0.1:9001", 6)
    assert daemon.generation == generation + 1 and daemon.digest != digest


def test_a_rejected_reload_logs_one_line_per_problem(
        tmp_path: Path, ports: tuple[int, int], caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    path = write(tmp_path, service("web", ports[0], ["127.0.0.1:9001"]))
    daemon, _ = make_daemon(path)
    path.write_text(path.read_text().replace("[global]\n", "[global]\nworkers = -1\nbogus = 1\n"))
    with caplog.at_level(logging.ERROR, logger="l4lb"), pytest.raises(ControlError):
        daemon.reload()
    messages = [r.getMessage() for r in caplog.records]
    assert all("\n" not in m for m in messages), messages
    assert any("global.workers" in m and m.startswith("reload: ") for m in messages), messages
    assert any("bogus" in m and m.startswith("reload: ") for m in messages), messages


def test_serve_rate_limits_accept_errors_on_its_loop(
        tmp_path: Path, ports: tuple[int, int]) -> None:  # noqa: F811
    """Out of fds, asyncio logs every failed accept of the control socket with a traceback
    (about 100 per event): serve() installs the handler that folds them into one line."""
    daemon, _ = make_daemon(write(tmp_path, service("web", ports[0], ["127.0.0.1:9001"])))
    seen: list[object] = []

    def tick(_: Any) -> None:
        seen.append(asyncio.get_running_loop().get_exception_handler())

    assert asyncio.run(serve(daemon, tick=tick, tick_interval=0.05, duration=0.2)) == 0
    assert seen and all(h is not None for h in seen), seen


def test_status_counters_have_every_key_before_any_traffic(
        tmp_path: Path, ports: tuple[int, int]) -> None:  # noqa: F811
    from l4lb.daemon import SERVICE_COUNTERS

    daemon, _ = make_daemon(write(tmp_path, service("web", ports[0], ["127.0.0.1:9001"])))
    (web,) = daemon.cmd_status()["services"]
    assert web["counters"] == dict.fromkeys(SERVICE_COUNTERS, 0)


def test_serve_samples_its_loop_lag_into_status(
        tmp_path: Path, ports: tuple[int, int]) -> None:  # noqa: F811
    daemon, _ = make_daemon(write(tmp_path, service("web", ports[0], ["127.0.0.1:9001"])))
    assert asyncio.run(serve(daemon, duration=0.35)) == 0
    assert daemon.loop_lag.samples >= 1  # one every 100 ms (a loaded host may run fewer)
    loop = daemon.cmd_status()["loop"]
    assert set(loop) == {"lag_max_ms", "lag_last_ms", "stalls", "stall_ms"}


def test_a_second_start_publishes_into_its_new_data_plane(
        tmp_path: Path, ports: tuple[int, int]) -> None:  # noqa: F811
    """start() makes a new data plane: the table it publishes is never 'the same as the live
    one' (the live one belonged to the data plane before)."""
    from l4lb.config import load_file
    from l4lb.daemon import Daemon

    daemon = Daemon(load_file(str(write(tmp_path, service("web", ports[0],
                                                          ["127.0.0.1:9001"])))))
    try:
        daemon.start()
        first = daemon.digest
        daemon.stop(0.0)
        daemon.start()
        assert daemon.dp is not None and daemon.dp.generation == 1
        assert daemon.digest == first and daemon.generation == 1
    finally:
        daemon.stop(0.0)


def _listening(groups: list[Any]) -> list[bool]:
    import socket

    return [bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
            for group in groups for sock in group.sockets]


def test_listeners_listen_only_once_their_options_are_set(
        tmp_path: Path, ports: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A connection takes the listener's socket options (congestion control, buffers,
    defer_accept) when its handshake completes: one accepted before they were set would keep
    the kernel's. So at start and for a reload's new listener, listen() comes after them (a CI
    run saw the first connection of a fresh daemon with the system's algorithm)."""
    from l4lb.config import load_file
    from l4lb.daemon import Daemon

    web, extra = ports
    path = write(tmp_path, service("web", web, ["127.0.0.1:9001"]))
    seen: list[list[bool]] = []
    real = Daemon._sync_listener_congestion

    def note(self: Daemon, groups: list[Any]) -> list[str]:
        seen.append(_listening(groups))
        return real(self, groups)

    monkeypatch.setattr(Daemon, "_sync_listener_congestion", note)
    daemon = Daemon(load_file(str(path)))
    try:
        daemon.start()
        assert seen[0] == [False] * daemon.workers  # options first ...
        assert _listening(daemon.listeners) == [True] * daemon.workers  # ... then listen()
        path.write_text(path.read_text() + service("more", extra, ["127.0.0.1:9002"]))
        seen.clear()
        daemon.reload()
        assert seen[0] == [False] * daemon.workers  # the new listener, before its options
        assert all(_listening(daemon.listeners))
    finally:
        daemon.stop(0.0)
