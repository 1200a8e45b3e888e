"""The daemon's connection log against a fake data plane: records named from the id maps of
recent tables, written through the writer, read once more after the data plane stopped,
reopened, switched and turned off by a reload, and losses counted and warned about."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from l4lb.config import load_file
from l4lb.control import ControlError
from l4lb.daemon import CONNLOG_RING, Daemon
from l4lb.state import Runtime


class FakeDataplane:
    """publish, stats, and the closed-session record ring of the DataplaneAPI."""

    def __init__(self) -> None:
        self.generation = 0
        self.ring: list[dict[str, Any]] = []  # queued records
        self.ring_dropped = 0  # stats()["connlog_dropped"]
        self.connlog: list[tuple[bool, int]] = []  # set_connection_log calls
        self.on_stop: list[dict[str, Any]] = []  # records the stop itself produces

    def publish(self, blob: bytes) -> int:
        self.generation += 1
        return self.generation

    def stats(self) -> dict[str, Any]:
        return {"generation": self.generation, "services": {}, "backends": {},
                "connlog_dropped": self.ring_dropped}

    def set_connection_log(self, enabled: bool, capacity: int = 16384) -> None:
        self.connlog.append((enabled, capacity))

    def closed_sessions(self, max: int = 65536) -> list[dict[str, Any]]:
        out, self.ring = self.ring[:max], self.ring[max:]
        return out

    def remove_listener(self, fd: int) -> None:
        pass

    def stop(self, timeout: float) -> None:
        self.ring += self.on_stop


CONFIG = """\
[global]
control_socket = "{dir}/l4lb.sock"
connection_log = "{log}"

[[services]]
name = "web"
listen = ["127.0.0.1:18080"]

  [[services.backends]]
  address = "127.0.0.1:9001"

  [[services.backends]]
  address = "127.0.0.1:9002"
"""


def write_config(tmp_path: Path, log: str | None) -> Path:
    path = tmp_path / "l4lb.toml"
    text = CONFIG.format(dir=tmp_path, log=log)
    if log is None:
        text = text.replace('connection_log = "None"\n', "")
    path.write_text(text)
    return path


def make_daemon(tmp_path: Path) -> tuple[Daemon, FakeDataplane, Path]:
    log = tmp_path / "conn.jsonl"
    daemon = Daemon(load_file(str(write_config(tmp_path, str(log)))))
    dp = FakeDataplane()
    daemon.dp = dp
    daemon.file_config = daemon.config
    daemon.runtime = Runtime.from_config(daemon.config)
    daemon._publish()
    daemon._enable_connlog(daemon._open_connlog(str(log)), str(log))
    return daemon, dp, log


def record(daemon: Daemon, address: str | None, **changes: Any) -> dict[str, Any]:
    bid = -1 if address is None else daemon.builder.backend_ids()[("web", address)]
    base: dict[str, Any] = {
        "protocol": "tcp", "service_id": daemon.builder.service_ids()["web"], "backend_id": bid,
        "client": ("192.0.2.7", 51000), "started": 1700000000.25, "duration": 1.5,
        "bytes_to_backend": 120, "bytes_to_client": 4096, "reason": "client_closed"}
    base.update(changes)
    return base


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_are_named_and_written(tmp_path: Path) -> None:
    daemon, dp, log = make_daemon(tmp_path)
    assert dp.connlog == [(True, CONNLOG_RING)]
    dp.ring = [record(daemon, "127.0.0.1:9002"),
               record(daemon, None, reason="no_backend", client=("2001:db8::1", 443)),
               record(daemon, "127.0.0.1:9001", protocol="udp", reason="responses")]
    assert daemon.pump_connlog() == 3
    assert daemon.connlog is not None and daemon.connlog.flush()
    got = lines(log)
    assert [(r["backend"], r["protocol"], r["reason"]) for r in got] == [
        ("127.0.0.1:9002", "tcp", "client_closed"), (None, "tcp", "no_backend"),
        ("127.0.0.1:9001", "udp", "responses")]
    assert got[0] == {"client": "192.0.2.7:51000", "service": "web", "protocol": "tcp",
                      "backend": "127.0.0.1:9002", "start": "2023-11-14T22:13:20.250Z",
                      "duration": 1.5, "bytes_to_backend": 120, "bytes_to_client": 4096,
                      "reason": "client_closed"}
    assert got[1]["client"] == "[2001:db8::1]:443"
    daemon.stop(0.0)


def test_a_backend_removed_by_the_last_change_keeps_its_name(tmp_path: Path) -> None:
    daemon, dp, log = make_daemon(tmp_path)
    old = record(daemon, "127.0.0.1:9002", reason="backend_closed")
    daemon.cmd_remove_backend("web", "127.0.0.1:9002")
    assert ("web", "127.0.0.1:9002") not in daemon.builder.backend_ids()
    dp.ring = [old, {**old, "backend_id": 4242}]
    daemon.pump_connlog()
    daemon.stop(0.0)
    assert [r["backend"] for r in lines(log)] == ["127.0.0.1:9002", "?4242"]


def test_stop_reads_the_records_of_the_stop_itself_and_closes_the_file(tmp_path: Path) -> None:
    daemon, dp, log = make_daemon(tmp_path)
    dp.on_stop = [record(daemon, "127.0.0.1:9001", reason="shutdown")]
    daemon.stop(1.0)
    assert [r["reason"] for r in lines(log)] == ["shutdown"]
    assert daemon.connlog is None and daemon.dp is None


def test_malformed_records_are_counted_not_fatal(tmp_path: Path) -> None:
    daemon, dp, log = make_daemon(tmp_path)
    dp.ring = [record(daemon, "127.0.0.1:9001", duration=-1.0),
               {"service_id": 0}, record(daemon, "127.0.0.1:9001")]
    daemon.pump_connlog()
    stats = daemon.connlog_stats()
    assert stats is not None and stats["invalid"] == 2
    daemon.stop(0.0)
    assert len(lines(log)) == 1


def test_losses_are_warned_about_at_most_once_a_minute(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    daemon, dp, _ = make_daemon(tmp_path)
    with caplog.at_level(logging.WARNING, logger="l4lb"):
        daemon.warn_connlog_losses(100.0)
        assert not caplog.messages  # nothing lost yet
        dp.ring_dropped = 5
        daemon.warn_connlog_losses(101.0)
        dp.ring_dropped = 7
        daemon.warn_connlog_losses(130.0)  # within the minute: counted, not logged
        daemon.warn_connlog_losses(161.5)
    assert caplog.messages == [
        "connlog: 5 records lost since the last warning (data-plane ring full: 5)",
        "connlog: 2 records lost since the last warning (data-plane ring full: 2)"]
    stats = daemon.connlog_stats()
    assert stats is not None and stats["ring_dropped"] == 7
    daemon.stop(0.0)


def test_reopen_after_a_rename_writes_a_new_file(tmp_path: Path) -> None:
    daemon, dp, log = make_daemon(tmp_path)
    dp.ring = [record(daemon, "127.0.0.1:9001")]
    daemon.pump_connlog()
    assert daemon.connlog is not None and daemon.connlog.flush()
    log.rename(tmp_path / "conn.jsonl.1")
    assert asyncio.run(daemon.cmd_reopen_logs()) == {"connection_log": str(log),
                                                     "reopened": True}
    dp.ring = [record(daemon, "127.0.0.1:9002")]
    daemon.pump_connlog()
    daemon.stop(0.0)
    assert [r["backend"] for r in lines(tmp_path / "conn.jsonl.1")] == ["127.0.0.1:9001"]
    assert [r["backend"] for r in lines(log)] == ["127.0.0.1:9002"]


def test_reload_moves_the_log_then_turns_it_off(tmp_path: Path) -> None:
    daemon, dp, log = make_daemon(tmp_path)
    dp.ring = [record(daemon, "127.0.0.1:9001")]
    moved = tmp_path / "other.jsonl"
    write_config(tmp_path, str(moved))
    daemon.reload()
    assert daemon.connlog_path == str(moved)
    assert daemon.cmd_status()["connection_log"] == str(moved)
    dp.ring = [record(daemon, "127.0.0.1:9002")]
    write_config(tmp_path, None)
    daemon.reload()
    assert daemon.connlog is None and dp.connlog[-1] == (False, 16384)
    assert [r["backend"] for r in lines(log)] == ["127.0.0.1:9001"]  # before the first reload
    assert [r["backend"] for r in lines(moved)] == ["127.0.0.1:9002"]
    assert daemon.connlog_stats() is None
    assert asyncio.run(daemon.cmd_reopen_logs()) == {"connection_log": None, "reopened": False}
    daemon.stop(0.0)


def test_a_reload_to_a_file_that_cannot_be_opened_changes_nothing(tmp_path: Path) -> None:
    daemon, _, log = make_daemon(tmp_path)
    # /proc exists (the configuration is valid) but nobody, root included, creates files there
    write_config(tmp_path, "/proc/l4lb-conn.jsonl")
    with pytest.raises(ControlError) as info:
        daemon.reload()
    assert str(info.value).startswith("reload rejected, running configuration unchanged: "
                                      "connection_log /proc/l4lb-conn.jsonl: cannot open")
    assert daemon.connlog_path == str(log)
    daemon.stop(0.0)


def test_a_failed_reopen_is_reported(tmp_path: Path) -> None:
    """`mv conn.jsonl x; mkdir conn.jsonl; l4lb reopen-logs` used to say "reopened"."""
    daemon, _, log = make_daemon(tmp_path)
    log.rename(tmp_path / "conn.jsonl.1")
    log.mkdir()
    reply = asyncio.run(daemon.cmd_reopen_logs())
    assert reply["reopened"] is False and reply["connection_log"] == str(log)
    assert reply["error"].startswith(f"cannot reopen {log}") and "directory" in reply["error"]
    daemon.stop(0.0)
