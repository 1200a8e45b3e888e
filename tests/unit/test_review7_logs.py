"""Review 7, logging: a blocked stderr never blocks the caller; dropped lines are counted and
announced; flush_logs() and the interpreter's exit are bounded.

Every wait here is on an event with a bound; nothing sleeps to "let it happen"."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from l4lb import logs
from l4lb.logs import dropped_lines, flush_logs, set_log_format, setup_logging

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("l4lb.review7")


class BlockingStream(io.StringIO):
    """A stream whose write() blocks until `release` is set (stderr nobody reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()  # a write() has started
        self.release = threading.Event()  # lets every write() through
        self.parts: list[str] = []  # what each write() was given, in order

    def write(self, text: str) -> int:
        self.entered.set()
        self.release.wait(30.0)
        self.parts.append(text)
        return len(text)

    def lines(self) -> list[str]:
        return "".join(self.parts).splitlines()


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Give each test its own root handlers, level and logs module state; close what it made."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    monkeypatch.setattr(logs, "_handler", None)
    monkeypatch.setattr(logs, "_retired_dropped", 0)
    try:
        yield
    finally:
        made = [h for h in root.handlers if isinstance(h, logs.QueueStreamHandler)]
        if logs._handler is not None:
            made.append(logs._handler)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        for handler in made:
            handler.close(5.0)


def test_20000_lines_to_a_blocked_stream_return_promptly_count_and_announce_the_drops() -> None:
    stream = BlockingStream()
    setup_logging("info", "text", stream)
    total = 20_000
    done = threading.Event()

    def spam() -> None:
        log.info("review7: first")
        if stream.entered.wait(10.0):  # the writer thread is stuck in write() with "first"
            for i in range(total):
                log.info("review7: line %d", i)
        done.set()

    thread = threading.Thread(target=spam)
    thread.start()
    try:
        thread.join(30.0)  # generous: the calls take well under a second
        assert done.is_set(), "logging blocked the caller"
        assert stream.entered.is_set()
        assert dropped_lines() == total - logs.QUEUE_LINES  # the queue took the rest
        started = time.monotonic()
        assert flush_logs(0.05) is False  # still blocked: says so, and returns
        assert time.monotonic() - started < 5.0
    finally:
        stream.release.set()
        thread.join(30.0)
    assert flush_logs(10.0) is True
    lines = stream.lines()
    assert lines[0].endswith("INFO    review7: first")
    assert lines[1].endswith(
        f"WARNING logs: {total - logs.QUEUE_LINES} lines dropped (stderr was blocked)")
    kept = [int(x.rsplit(" ", 1)[1]) for x in lines[2:]]
    assert kept == list(range(logs.QUEUE_LINES))  # the oldest kept, in order, nothing torn
    assert dropped_lines() == total - logs.QUEUE_LINES  # announcing does not count again


def test_json_format_keeps_one_object_per_line_and_announces_in_json(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "QUEUE_LINES", 5)
    stream = BlockingStream()
    setup_logging("info", "json", stream)
    done = threading.Event()

    def spam() -> None:
        log.info("review7: first")
        if stream.entered.wait(10.0):
            for i in range(8):
                log.warning("review7: line %d\nwith a newline", i)
        done.set()

    thread = threading.Thread(target=spam)
    thread.start()
    try:
        thread.join(30.0)
        assert done.is_set(), "logging blocked the caller"
    finally:
        stream.release.set()
        thread.join(30.0)
    assert flush_logs(10.0)
    parsed = [json.loads(line) for line in stream.lines()]
    assert [p["message"] for p in parsed] == (
        ["review7: first", "logs: 3 lines dropped (stderr was blocked)"]
        + [f"review7: line {i}\nwith a newline" for i in range(5)])
    assert parsed[1]["level"] == "warning" and parsed[1]["logger"] == "l4lb"


def test_flush_logs_and_close_are_bounded_while_the_stream_is_blocked() -> None:
    stream = BlockingStream()
    setup_logging("info", "text", stream)
    handler = logs._handler
    assert handler is not None
    try:
        log.info("review7: stuck")
        assert stream.entered.wait(10.0)
        started = time.monotonic()
        assert flush_logs(0.1) is False
        handler.close(0.1)
        assert time.monotonic() - started < 5.0
        log.info("review7: after close")  # dropped and counted, never queued
        assert dropped_lines() == 1
    finally:
        stream.release.set()
    assert flush_logs(10.0)
    assert stream.lines()[-1].endswith("review7: stuck")


def test_a_full_pipe_on_a_descriptor_counts_exactly_what_it_drops(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """stderr as a real pipe: written with os.write on its descriptor, never torn."""
    monkeypatch.setattr(logs, "QUEUE_LINES", 50)
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "w", encoding="utf-8")
    reader = os.fdopen(read_fd, "rb")
    os.set_blocking(write_fd, False)  # fill the pipe first: every later write blocks
    filled = 0
    try:
        while True:
            os.write(write_fd, b"f" * 99 + b"\n")  # <= PIPE_BUF: whole or not at all
            filled += 1
    except BlockingIOError:
        pass
    os.set_blocking(write_fd, True)
    total = 3000
    try:
        setup_logging("info", "text", stream)
        done = threading.Event()

        def spam() -> None:
            for i in range(total):
                log.info("review7: %s %d", "x" * 100, i)
            done.set()

        thread = threading.Thread(target=spam)
        thread.start()
        thread.join(30.0)
        assert done.is_set(), "logging blocked the caller"
        assert flush_logs(0.05) is False  # nobody reads the pipe
        dropped = dropped_lines()
        assert dropped >= total - 2 * 50  # the queue, and the batch stuck in write()
        received: list[bytes] = []
        drained = threading.Event()

        def drain() -> None:
            for line in reader:
                received.append(line)
                if b"lines dropped" in line:
                    drained.set()

        reading = threading.Thread(target=drain)
        reading.start()
        assert flush_logs(10.0) is True
        assert drained.wait(10.0)
        handler = logs._handler
        assert handler is not None
        handler.close(5.0)
        stream.close()  # EOF for the reader
        reading.join(10.0)
        assert not reading.is_alive()
    finally:
        reader.close()  # first: a write still blocked on the pipe fails (EPIPE) and returns
        if not stream.closed:
            with contextlib.suppress(OSError):
                stream.close()
    text = [line.decode() for line in received]
    notes = [line.split(" WARNING logs: ", 1)[1] for line in text if "lines dropped" in line]
    assert notes and all(n.endswith(" lines dropped (stderr was blocked)\n") for n in notes)
    assert sum(int(n.split(" ", 1)[0]) for n in notes) == dropped  # each drop announced once
    numbers = [int(line.rsplit(" ", 1)[1]) for line in text if "review7:" in line]
    assert len(numbers) + dropped == total  # every line is written whole or counted
    assert numbers == sorted(numbers)
    assert all(line.endswith("\n") for line in text)
    assert sum(1 for line in text if line == "f" * 99 + "\n") == filled


def test_set_log_format_switches_the_stream_for_later_lines() -> None:
    stream = io.StringIO()
    setup_logging("info", "text", stream)
    log.info("review7: as text")
    set_log_format("json")
    log.info("review7: as json")
    assert flush_logs(5.0)
    first, second = stream.getvalue().splitlines()
    assert first.endswith("INFO    review7: as text")
    assert json.loads(second)["message"] == "review7: as json"


def test_other_root_handlers_still_see_every_record(caplog: pytest.LogCaptureFixture) -> None:
    """pytest's caplog hangs its handler on the root logger, as any second handler would."""
    stream = io.StringIO()
    setup_logging("info", "text", stream)
    logging.getLogger().addHandler(caplog.handler)  # setup_logging replaced every handler
    log.warning("review7: seen by %s", "both")
    assert flush_logs(5.0)
    assert [r.getMessage() for r in caplog.records] == ["review7: seen by both"]
    assert stream.getvalue().endswith("WARNING review7: seen by both\n")


def test_a_second_setup_writes_the_first_handlers_lines_first() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream)
    log.info("review7: one")
    setup_logging("info", "text", stream)
    log.info("review7: two")
    assert flush_logs(5.0)
    one, two = stream.getvalue().splitlines()
    assert json.loads(one)["message"] == "review7: one"
    assert two.endswith("review7: two")


def test_exit_with_stderr_blocked_does_not_hang(tmp_path: Path) -> None:
    """The process logs far more than a pipe holds to a stderr nobody reads, then exits: the
    exit waits EXIT_FLUSH_TIMEOUT at most and keeps its exit code."""
    script = tmp_path / "blocked.py"
    script.write_text(
        "import logging, sys\n"
        "from l4lb import logs\n"
        "logs.EXIT_FLUSH_TIMEOUT = 0.2\n"
        "logs.setup_logging('info', 'text')\n"
        "for i in range(20000):\n"
        "    logging.getLogger('l4lb').info('line %d %s', i, 'x' * 100)\n"
        "print('logged', flush=True)\n"
        "sys.exit(3)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        code = proc.wait(30.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10.0)
        pytest.fail("the process hung on a blocked stderr")
    finally:
        assert proc.stdout is not None and proc.stderr is not None
        out = proc.stdout.read()
        proc.stdout.close()
        proc.stderr.close()
    assert out == b"logged\n"
    assert code == 3


def test_exit_writes_the_last_lines_when_stderr_takes_them(tmp_path: Path) -> None:
    """What was logged just before sys.exit() (a fatal error) is on stderr, in order."""
    script = tmp_path / "last.py"
    script.write_text(
        "import logging, sys\n"
        "from l4lb import logs\n"
        "logs.setup_logging('info', 'json')\n"
        "for i in range(3):\n"
        "    logging.getLogger('l4lb').error('fatal %d', i)\n"
        "sys.exit(4)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, env=env,
                          timeout=30)
    assert done.returncode == 4
    assert [json.loads(x)["message"] for x in done.stderr.decode().splitlines()] == [
        "fatal 0", "fatal 1", "fatal 2"]
