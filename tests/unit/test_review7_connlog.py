"""Review 7, connection log: a write that fails part way (disk full) leaves a well-formed file
and exact counters, and a failed reopen is reported as failed.

No sleeps: every wait is a bounded flush() or future. The tmpfs test runs only as root."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from l4lb.connlog import ConnLogWriter, format_record

from .test_connlog import record

LINE = len(format_record(record()))  # the length of every line whose byte counts have 3 digits


class Disk:
    """Free space shared by every file opened on it: a write past it stops short, the next
    one raises ENOSPC; after that the space is back (someone cleaned up)."""

    def __init__(self, free: int) -> None:
        self.free: int | None = free  # bytes left; None: unlimited again
        self.failures = 0  # ENOSPC raised so far


class FullFile:
    """A real file object whose writes obey a Disk (fileno() is the real descriptor)."""

    def __init__(self, real: BinaryIO, disk: Disk) -> None:
        self.real = real
        self.disk = disk

    def write(self, data: bytes | memoryview) -> int:
        disk = self.disk
        if disk.free is not None and disk.free == 0:
            disk.failures += 1
            disk.free = None
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        take = len(data) if disk.free is None else min(len(data), disk.free)
        written = self.real.write(bytes(data[:take]))
        assert written == take
        if disk.free is not None:
            disk.free -= take
        return take

    def fileno(self) -> int:
        return self.real.fileno()

    def close(self) -> None:
        self.real.close()


def on_disk(writer: ConnLogWriter, disk: Disk, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = writer._open
    monkeypatch.setattr(writer, "_open", lambda: FullFile(real_open(), disk))


def test_enospc_mid_batch_on_a_regular_file_undoes_the_batch_and_counts_it_exactly(
        tmp_path: Path) -> None:
    path = tmp_path / "conn.jsonl"
    path.write_bytes(b'{"earlier":true}\n')
    writer = ConnLogWriter(str(path))
    disk = Disk(14 * LINE + LINE // 2)  # 14 whole lines and a fragment fit
    batch = [format_record(record(bytes_to_backend=100 + i)) for i in range(40)]
    out = writer._write_batch(FullFile(path.open("ab", buffering=0), disk), batch)
    assert out is None and disk.failures == 1  # the write failed part way; file closed
    assert path.read_bytes() == b'{"earlier":true}\n'  # truncated back: all or nothing
    assert writer.stats()["written"] == 0 and writer.stats()["failed"] == 40
    out = writer._write_batch(None, [format_record(record(reason="after"))])  # space is back
    assert out is not None
    out.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]  # every line parses
    assert lines[1:] == [json.loads(format_record(record(reason="after")))]
    assert writer.stats()["written"] == 1 and writer.stats()["failed"] == 40


def test_enospc_through_the_thread_keeps_the_file_well_formed_and_the_counts_exact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "conn.jsonl"
    writer = ConnLogWriter(str(path))
    disk = Disk(14 * LINE + LINE // 2)
    on_disk(writer, disk, monkeypatch)
    writer.start()
    try:
        for i in range(40):
            assert writer.write(record(bytes_to_backend=100 + i))
        assert writer.flush(5.0)
        assert disk.failures == 1
        for i in range(5):
            assert writer.write(record(bytes_to_backend=200 + i, reason="after"))
        assert writer.flush(5.0)
    finally:
        writer.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]  # no fragment, no glue
    stats = writer.stats()
    assert len(lines) == stats["written"]
    assert stats["written"] + stats["failed"] == 45 and stats["failed"] >= 1
    numbers = [x["bytes_to_backend"] for x in lines]
    assert numbers == sorted(numbers) and numbers[-5:] == [200, 201, 202, 203, 204]


def test_enospc_on_a_pipe_counts_whole_lines_and_starts_the_next_on_a_new_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipe cannot be truncated: the whole lines count as written, the fragment stays on a
    line of its own, and the next line parses."""
    read_fd, write_fd = os.pipe()
    try:
        writer = ConnLogWriter("/nonexistent/fifo")
        disk = Disk(14 * LINE + LINE // 2)
        monkeypatch.setattr(writer, "_open",
                            lambda: FullFile(os.fdopen(os.dup(write_fd), "ab", buffering=0),
                                             disk))
        batch = [format_record(record(bytes_to_backend=100 + i)) for i in range(40)]
        assert writer._write_batch(writer._open(), batch) is None
        assert writer.stats()["written"] == 14 and writer.stats()["failed"] == 26
        out = writer._write_batch(None, [format_record(record(reason="after"))])
        assert out is not None
        out.close()
        os.close(write_fd)
        write_fd = -1
        with os.fdopen(read_fd, "rb") as pipe:
            read_fd = -1
            text = pipe.read().decode()
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
    lines = text.splitlines()
    assert len(lines) == 16  # 14 whole, the fragment, the next line
    assert [json.loads(x)["bytes_to_backend"] for x in lines[:14]] == list(range(100, 114))
    assert lines[14] == format_record(record(bytes_to_backend=114))[:LINE // 2]
    assert json.loads(lines[15])["reason"] == "after"
    assert writer.stats()["written"] == 15 and writer.stats()["failed"] == 26


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only): real ENOSPC with real short writes."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                          capture_output=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30, check=True)


def test_a_really_full_disk_leaves_whole_lines_and_exact_counts(small_tmpfs: Path) -> None:
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * 32768)
    path = small_tmpfs / "conn.jsonl"
    writer = ConnLogWriter(str(path))
    writer.start()
    try:
        sent = 0
        for _ in range(30):  # 50 lines a batch; the disk fills after ~150
            for _ in range(50):
                assert writer.write(record(bytes_to_backend=sent))
                sent += 1
            assert writer.flush(5.0)
            if writer.stats()["failed"]:
                break
        assert writer.stats()["failed"] > 0, "the 64 KiB tmpfs never filled"
        filler.unlink()  # space again
        for i in range(10):
            assert writer.write(record(bytes_to_backend=sent + i, reason="after"))
        assert writer.flush(5.0)
    finally:
        writer.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]  # no fragment, no glue
    stats = writer.stats()
    assert len(lines) == stats["written"]
    assert stats["written"] + stats["failed"] == sent + 10
    assert [x["reason"] for x in lines[-10:]] == ["after"] * 10


def test_a_failed_reopen_is_reported_and_a_working_one_clears_it(tmp_path: Path) -> None:
    path = tmp_path / "conn.jsonl"
    writer = ConnLogWriter(str(path))
    writer.start()
    try:
        assert writer.last_reopen_error is None
        path.rename(tmp_path / "conn.jsonl.1")
        path.mkdir()  # `mv conn.jsonl x; mkdir conn.jsonl; l4lb reopen-logs`
        outcome = writer.reopen()
        assert outcome.result(5.0) == f"cannot reopen {path}: Is a directory"
        assert writer.flush(5.0)
        assert writer.last_reopen_error == f"cannot reopen {path}: Is a directory"
        assert writer.stats()["reopened"] == 0
        path.rmdir()

        async def reopen_on_a_loop() -> str | None:
            return await asyncio.wait_for(asyncio.wrap_future(writer.reopen()), 5.0)

        assert asyncio.run(reopen_on_a_loop()) is None
        assert writer.last_reopen_error is None
        assert writer.stats()["reopened"] == 1
        assert writer.write(record(reason="after"))
        assert writer.flush(5.0)
    finally:
        writer.close()
    assert [json.loads(x)["reason"] for x in path.read_text().splitlines()] == ["after"]


def test_a_later_batch_that_opens_the_path_clears_a_failed_reopen(tmp_path: Path) -> None:
    path = tmp_path / "conn.jsonl"
    writer = ConnLogWriter(str(path))
    writer.start()
    try:
        path.unlink()
        path.mkdir()
        assert writer.reopen().result(5.0) is not None
        path.rmdir()
        assert writer.write(record())  # the next batch opens the path again
        assert writer.flush(5.0)
        assert writer.last_reopen_error is None
        assert writer.stats()["written"] == 1
    finally:
        writer.close()


def test_reopen_of_a_writer_that_is_not_running_fails_at_once(tmp_path: Path) -> None:
    writer = ConnLogWriter(str(tmp_path / "conn.jsonl"))
    outcome = writer.reopen()
    assert outcome.done()
    assert outcome.result() == f"cannot reopen {writer.path}: the writer is not running"


def test_a_reopen_nobody_waits_for_any_more_does_not_stop_the_writer(tmp_path: Path) -> None:
    """reopen-logs gives up after 2 s; the writer thread must go on writing when it finishes
    the reopen later (it used to die on the cancelled future's InvalidStateError)."""
    path = tmp_path / "conn.jsonl"
    writer = ConnLogWriter(str(path))
    writer.start()
    try:
        with writer._cond:  # hold the thread back so that the cancel comes first
            done = writer.reopen()
            assert done.cancel()
        assert writer.write(record())
        assert writer.flush(5.0)
        assert writer._thread is not None and writer._thread.is_alive()
        assert writer.stats()["written"] == 1
    finally:
        writer.close()
