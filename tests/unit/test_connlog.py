"""Connection log: the JSON line of a closed session, and the non-blocking file writer."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from l4lb.connlog import ConnLogWriter, RecordError, format_record, rfc3339


def record(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"client": "192.0.2.7:51000", "service": "web", "protocol": "tcp",
                            "backend": "127.0.0.1:9001", "started": 1700000000.25,
                            "duration": 1.5, "bytes_to_backend": 120, "bytes_to_client": 4096,
                            "reason": "client_closed"}
    base.update(changes)
    return base


@pytest.mark.parametrize(("ts", "text"), [
    (0.0, "1970-01-01T00:00:00.000Z"),
    (1700000000.1234, "2023-11-14T22:13:20.123Z"),
    (1700000000.9996, "2023-11-14T22:13:21.000Z"),  # rounds into the next second
    (951782400.5, "2000-02-29T00:00:00.500Z"),
])
def test_rfc3339_utc_milliseconds(ts: float, text: str) -> None:
    assert rfc3339(ts) == text


def test_format_record_is_one_json_line_with_every_field_in_order() -> None:
    line = format_record(record())
    assert line.endswith("\n") and line.count("\n") == 1
    assert list(json.loads(line).items()) == [
        ("client", "192.0.2.7:51000"), ("service", "web"), ("protocol", "tcp"),
        ("backend", "127.0.0.1:9001"),
        ("start", "2023-11-14T22:13:20.250Z"), ("duration", 1.5), ("bytes_to_backend", 120),
        ("bytes_to_client", 4096), ("reason", "client_closed")]


def test_format_record_without_backend_and_with_odd_text_stays_ascii_json() -> None:
    line = format_record(record(backend=None, client="[2001:db8::1]:443",
                                service="w\u00e9b\n\"x\"", reason="no_backend"))
    assert line.isascii()
    parsed = json.loads(line)
    assert parsed["backend"] is None
    assert parsed["service"] == "w\u00e9b\n\"x\""
    assert parsed["client"] == "[2001:db8::1]:443"


def test_duration_is_rounded_to_microseconds() -> None:
    assert json.loads(format_record(record(duration=0.12345678)))["duration"] == 0.123457


@pytest.mark.parametrize("changes", [
    {"client": None}, {"service": 3}, {"backend": 5}, {"started": "yesterday"},
    {"started": float("nan")}, {"duration": -0.1}, {"duration": True},
    {"bytes_to_backend": -1}, {"bytes_to_client": 1.5}, {"reason": None},
    {"reason": "x" * 65}, {"protocol": "sctp"}, {"protocol": None},
])
def test_malformed_records_raise(changes: dict[str, Any]) -> None:
    with pytest.raises(RecordError):
        format_record(record(**changes))


def test_missing_field_raises() -> None:
    r = record()
    del r["bytes_to_client"]
    with pytest.raises(RecordError, match="bytes_to_client"):
        format_record(r)


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writer_appends_every_line_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "conn.log"
    path.write_text('{"earlier":true}\n')
    writer = ConnLogWriter(str(path))
    writer.start()
    try:
        for i in range(500):
            assert writer.write(record(bytes_to_backend=i))
        assert writer.flush(5.0)
    finally:
        writer.close()
    lines = read_lines(path)
    assert lines[0] == {"earlier": True}
    assert [x["bytes_to_backend"] for x in lines[1:]] == list(range(500))
    assert writer.stats() == {"written": 500, "dropped": 0, "failed": 0, "queued": 0,
                              "reopened": 0}


def test_new_file_mode_is_0640(tmp_path: Path) -> None:
    path = tmp_path / "conn.log"
    old = os.umask(0)
    try:
        writer = ConnLogWriter(str(path))
        writer.start()
        writer.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_malformed_record_raises_in_the_caller_and_is_not_queued(tmp_path: Path) -> None:
    writer = ConnLogWriter(str(tmp_path / "conn.log"))
    writer.start()
    try:
        with pytest.raises(RecordError):
            writer.write(record(duration=-1))
        assert writer.flush(5.0)
    finally:
        writer.close()
    assert writer.stats()["written"] == 0
    assert (tmp_path / "conn.log").read_text() == ""


def test_write_before_start_or_after_close_is_dropped(tmp_path: Path) -> None:
    writer = ConnLogWriter(str(tmp_path / "conn.log"))
    assert not writer.write(record())
    writer.start()
    writer.close()
    assert not writer.write(record())
    assert writer.stats()["dropped"] == 2


def test_start_fails_loudly_on_an_unusable_path(tmp_path: Path) -> None:
    writer = ConnLogWriter(str(tmp_path / "missing-dir" / "conn.log"))
    with pytest.raises(FileNotFoundError):
        writer.start()


def test_reopen_after_rename_writes_to_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "conn.log"
    writer = ConnLogWriter(str(path))
    writer.start()
    try:
        writer.write(record(reason="before"))
        assert writer.flush(5.0)
        path.rename(tmp_path / "conn.log.1")  # what logrotate does before signalling
        writer.write(record(reason="late"))  # still goes to the renamed file
        assert writer.flush(5.0)
        writer.reopen()
        writer.write(record(reason="after"))
        assert writer.flush(5.0)
    finally:
        writer.close()
    assert [x["reason"] for x in read_lines(tmp_path / "conn.log.1")] == ["before", "late"]
    assert [x["reason"] for x in read_lines(path)] == ["after"]
    assert writer.stats()["reopened"] == 1


def test_write_errors_count_lines_as_failed_and_the_writer_goes_on(tmp_path: Path) -> None:
    writer = ConnLogWriter("/dev/full")  # every write fails with ENOSPC
    writer.start()
    try:
        for _ in range(3):
            writer.write(record())
            assert writer.flush(5.0)
        assert writer.stats()["failed"] == 3
        assert writer.stats()["written"] == 0
        writer.path = str(tmp_path / "conn.log")  # the disk is back (a new target here)
        writer.reopen()
        writer.write(record())
        assert writer.flush(5.0)
    finally:
        writer.close()
    assert writer.stats()["written"] == 1
    assert len(read_lines(tmp_path / "conn.log")) == 1


def test_reopen_failure_loses_lines_until_the_path_works_again(tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    path = logdir / "conn.log"
    writer = ConnLogWriter(str(path))
    writer.start()
    try:
        path.unlink()
        logdir.rmdir()
        writer.reopen()
        writer.write(record(reason="lost"))
        assert writer.flush(5.0)
        assert writer.stats()["failed"] == 1
        logdir.mkdir()
        writer.write(record(reason="kept"))  # the next batch opens the path again
        assert writer.flush(5.0)
    finally:
        writer.close()
    assert [x["reason"] for x in read_lines(path)] == ["kept"]


def test_full_queue_drops_without_blocking_and_counts(tmp_path: Path) -> None:
    """A reader that stops reading (a FIFO) blocks the writer thread, never the caller."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = ConnLogWriter(str(fifo), max_queue=16)
    writer.start()
    total = 3000  # ~200 bytes each: far more than the pipe's 64 KiB plus the queue
    try:
        accepted = sum(writer.write(record(bytes_to_backend=i)) for i in range(total))
        assert accepted < total
        assert writer.stats()["dropped"] == total - accepted
        received = bytearray()
        done = threading.Event()

        def drain() -> None:
            os.set_blocking(reader, True)
            while chunk := os.read(reader, 65536):
                received.extend(chunk)
            done.set()

        thread = threading.Thread(target=drain)
        thread.start()
        assert writer.flush(10.0)
    finally:
        writer.close()
    thread.join(10.0)
    os.close(reader)
    assert done.is_set()
    lines = [json.loads(x) for x in received.decode().splitlines()]
    assert len(lines) == accepted == writer.stats()["written"]
    numbers = [x["bytes_to_backend"] for x in lines]
    assert numbers == sorted(numbers)  # order kept, gaps only where lines were dropped


def test_udp_flow_record_and_every_contract_reason_format() -> None:
    from l4lb.connlog import CLOSE_REASONS, TCP_REASONS, UDP_REASONS

    assert set(TCP_REASONS) | set(UDP_REASONS) == set(CLOSE_REASONS)
    assert "drain_timeout" in TCP_REASONS and "drain_timeout" in UDP_REASONS
    for reason in CLOSE_REASONS:
        parsed = json.loads(format_record(record(protocol="udp", reason=reason)))
        assert parsed["protocol"] == "udp" and parsed["reason"] == reason


def _start_within(writer: ConnLogWriter, seconds: float) -> BaseException | None:
    """writer.start() in a thread: what it raised (None: it started); fails the test if it is
    still blocked after `seconds` (the old open waited for a FIFO's reader forever)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            writer.start()
            outcome.append(None)
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"start() still blocked after {seconds} s"
    return outcome[0]


def test_a_fifo_without_a_reader_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "conn.fifo"
    os.mkfifo(fifo)
    error = _start_within(ConnLogWriter(str(fifo)), 3.0)
    if error is None:  # pragma: no cover - a reader appeared: release the blocked open
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        os.close(fd)
    assert isinstance(error, OSError) and "a FIFO with no reader" in str(error), error


def test_a_fifo_with_a_reader_gets_the_lines(tmp_path: Path) -> None:
    fifo = tmp_path / "conn.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        writer = ConnLogWriter(str(fifo))
        assert _start_within(writer, 3.0) is None
        try:
            assert writer.write(record(bytes_to_backend=7))
            assert writer.flush(5.0)
        finally:
            writer.close()
        line = os.read(reader, 65536).decode()
        assert json.loads(line)["bytes_to_backend"] == 7
    finally:
        os.close(reader)
