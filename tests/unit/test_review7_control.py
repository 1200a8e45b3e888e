"""The control socket under hostile clients: it yields the loop, caps and times out connections,
never takes over a live daemon's socket, awaits async handlers, and rate-limits accept errors."""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from l4lb import control
from l4lb.control import AcceptErrorLog, ControlError, ControlServer

T = TypeVar("T")
WAIT = 5.0  # seconds any single wait in these tests may take before it counts as a failure


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(4 * WAIT):
            return await scenario()
    return asyncio.run(bounded())


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until `condition` holds, letting the loop run meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def read_until_eof(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(WAIT):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""


# -- item 1: pipelining yields the loop ----------------------------------------------------

def test_pipelined_requests_let_other_callbacks_run_between_them(tmp_path: Path) -> None:
    """A client pipelining many requests: a call_soon ticker runs between every two of them."""
    n = 2000
    path = str(tmp_path / "ctl.sock")
    ticks = [0]
    seen: list[int] = []  # the ticker's count when each request was handled

    def seq() -> int:
        seen.append(ticks[0])
        return len(seen)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = ControlServer(path, {"seq": seq})
        await server.start()
        running = [True]

        def tick() -> None:
            ticks[0] += 1
            if running[0]:
                loop.call_soon(tick)

        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
            writer.write(b'{"cmd": "seq"}\n' * n)
            loop.call_soon(tick)

            async def replies() -> int:
                got = 0
                while got < n:
                    line = await reader.readline()
                    assert json.loads(line)["ok"] is True
                    got += 1
                return got

            async with asyncio.timeout(WAIT):
                await asyncio.gather(writer.drain(), replies())
            running[0] = False
            writer.close()
            await writer.wait_closed()
        finally:
            running[0] = False
            await server.close()

    run(scenario)
    assert len(seen) == n
    stalls = sum(1 for a, b in itertools.pairwise(seen) if b == a)
    assert stalls == 0, f"{stalls} of {n - 1} requests were served without the loop running " \
                        "anything in between"


# -- item 2: no takeover, and close() removes only its own socket --------------------------

def test_a_socket_with_a_full_backlog_is_not_taken_over(tmp_path: Path) -> None:
    """A daemon that is stalled (listening, never accepting, backlog full) keeps its path."""
    path = str(tmp_path / "ctl.sock")
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pending: list[socket.socket] = []
    try:
        stalled.bind(path)
        stalled.listen(0)
        ino = os.stat(path).st_ino
        for _ in range(64):  # fill the backlog: a non-blocking connect then fails with EAGAIN
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            pending.append(c)
            try:
                c.connect(path)
            except BlockingIOError:
                break
        else:
            pytest.fail("the backlog never filled")

        async def scenario() -> str:
            try:
                await ControlServer(path, {}).start()
            except ControlError as exc:
                return str(exc)
            return ""

        message = run(scenario)
        assert message.startswith(f"control socket {path}: another daemon may be there: ")
        assert "not replacing it" in message
        assert os.stat(path).st_ino == ino  # the stalled daemon's socket is still there
    finally:
        for c in pending:
            c.close()
        stalled.close()


def test_a_refused_socket_is_stale_and_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "ctl.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)  # bound, never listening: connect() is refused
    assert os.path.exists(path)

    async def scenario() -> Any:
        server = ControlServer(path, {"ping": lambda: "pong"})
        await server.start()
        try:
            return await asyncio.to_thread(control.request, path, "ping", 5.0)
        finally:
            await server.close()

    assert run(scenario) == "pong"
    assert not os.path.exists(path)


def test_close_leaves_a_socket_that_replaced_its_own(tmp_path: Path) -> None:
    path = str(tmp_path / "ctl.sock")
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    async def scenario() -> int:
        server = ControlServer(path, {})
        await server.start()
        os.unlink(path)  # another daemon took the path over (say, after a stale check)
        other.bind(path)
        other.listen(1)
        theirs = os.stat(path).st_ino
        await server.close()
        return theirs

    try:
        theirs = run(scenario)
        assert os.path.exists(path)
        assert os.stat(path).st_ino == theirs
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(path)  # still the other daemon's: it answers
    finally:
        other.close()


def test_close_removes_its_own_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "ctl.sock")

    async def scenario() -> bool:
        server = ControlServer(path, {})
        await server.start()
        there = os.path.exists(path)
        await server.close()
        return there

    assert run(scenario)
    assert not os.path.exists(path)


# -- item 3: caps and timeouts -------------------------------------------------------------

@pytest.mark.parametrize("how", ["constant", "argument"])
def test_connections_beyond_the_cap_get_one_error_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        how: str) -> None:
    if how == "constant":
        monkeypatch.setattr(control, "MAX_CONNECTIONS", 2)
    path = str(tmp_path / "ctl.sock")

    async def scenario() -> tuple[bytes, bytes]:
        server = ControlServer(path, {"ping": lambda: "pong"},
                               max_connections=2 if how == "argument" else None)
        await server.start()
        held = []
        try:
            for _ in range(2):
                reader, writer = await asyncio.open_unix_connection(path)
                writer.write(b'{"cmd": "ping"}\n')
                async with asyncio.timeout(WAIT):
                    assert json.loads(await reader.readline())["result"] == "pong"
                held.append(writer)
            reader, writer = await asyncio.open_unix_connection(path)
            refused = await read_until_eof(reader)
            writer.close()
            reader, writer = await asyncio.open_unix_connection(path)
            assert await read_until_eof(reader) == refused  # a second one, logged once
            writer.close()
            held[0].close()  # a slot comes back
            await until(lambda: server.connections < 2, "a freed slot")
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b'{"cmd": "ping"}\n')
            async with asyncio.timeout(WAIT):
                again = await reader.readline()
            writer.close()
            return refused, again
        finally:
            for w in held:
                w.close()
            await server.close()

    with caplog.at_level(logging.WARNING, logger="l4lb"):
        refused, again = run(scenario)
    assert [r.getMessage() for r in caplog.records] == [
        "control: too many control connections (2): refusing connections until one ends"]
    assert json.loads(refused) == {"ok": False, "error": "too many control connections (2)"}
    assert refused.count(b"\n") == 1
    assert json.loads(again) == {"ok": True, "result": "pong"}


def test_an_idle_connection_is_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "IDLE_TIMEOUT", 0.3)
    path = str(tmp_path / "ctl.sock")

    async def scenario() -> tuple[bytes, bytes, int]:
        server = ControlServer(path, {"ping": lambda: "pong"})
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b'{"cmd": "ping"}\n')
            async with asyncio.timeout(WAIT):
                first = await reader.readline()
            writer.write(b'{"cmd": "pi')  # an unfinished request does not keep it open either
            rest = await read_until_eof(reader)
            writer.close()
            await until(lambda: server.connections == 0, "the connection to end")
            return first, rest, server.connections
        finally:
            await server.close()

    first, rest, left = run(scenario)
    assert json.loads(first)["result"] == "pong"
    assert rest == b""
    assert left == 0


def test_a_client_that_does_not_read_its_replies_is_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(control, "WRITE_TIMEOUT", 0.1)
    path = str(tmp_path / "ctl.sock")
    big = "x" * (1 << 20)
    calls = [0]

    def send_big() -> str:
        calls[0] += 1
        return big

    async def scenario() -> int:
        server = ControlServer(path, {"big": send_big})
        await server.start()
        try:
            _reader, writer = await asyncio.open_unix_connection(path, limit=4096)
            writer.write(b'{"cmd": "big"}\n' * 4)  # and never read
            await until(lambda: calls[0] > 0, "the first request to be served")
            await until(lambda: server.connections == 0, "the unread connection to be dropped")
            writer.close()
            return server.connections
        finally:
            await server.close()

    with caplog.at_level(logging.WARNING, logger="l4lb"):
        assert run(scenario) == 0
    assert calls[0] == 1  # dropped while its first reply was unread
    assert any("did not read its replies" in r.getMessage() for r in caplog.records)


# -- item 5: async handlers ----------------------------------------------------------------

def test_coroutine_handlers_are_awaited_and_do_not_hold_the_loop(tmp_path: Path) -> None:
    path = str(tmp_path / "ctl.sock")

    async def scenario() -> tuple[Any, Any, Any, bool]:
        release = asyncio.Event()
        waiting = asyncio.Event()

        async def slow(n: int) -> int:
            waiting.set()
            await release.wait()
            return n * 2

        def later() -> Awaitable[str]:  # a plain function returning an awaitable
            fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(fut.set_result, "done")
            return fut

        async def fails() -> None:
            raise ControlError("not now")

        server = ControlServer(path, {"slow": slow, "later": later, "fails": fails,
                                      "ping": lambda: "pong"})
        await server.start()
        try:
            r1, w1 = await asyncio.open_unix_connection(path)
            w1.write(b'{"cmd": "slow", "n": 21}\n')
            async with asyncio.timeout(WAIT):
                await waiting.wait()
            # while slow waits, another client is served
            other = await asyncio.to_thread(control.request, path, "ping", WAIT)
            blocked = not release.is_set()
            release.set()
            async with asyncio.timeout(WAIT):
                slow_reply = json.loads(await r1.readline())
            w1.close()
            later_result = await asyncio.to_thread(control.request, path, "later", WAIT)
            try:
                await asyncio.to_thread(control.request, path, "fails", WAIT)
                failed: Any = None
            except ControlError as exc:
                failed = str(exc)
            return slow_reply, (other, later_result), failed, blocked
        finally:
            await server.close()

    slow_reply, (other, later_result), failed, blocked = run(scenario)
    assert blocked and other == "pong"
    assert slow_reply == {"ok": True, "result": 42}
    assert later_result == "done"
    assert failed == "not now"


def test_handle_line_refuses_an_async_handler_without_leaking_it() -> None:
    async def asleep() -> int:
        return 1

    server = ControlServer("/nonexistent/sock", {"asleep": asleep})
    reply = json.loads(server.handle_line(b'{"cmd": "asleep"}\n'))
    assert reply["ok"] is False and "asynchronous" in reply["error"]
    assert json.loads(run(lambda: server.handle(b'{"cmd": "asleep"}\n'))) == {
        "ok": True, "result": 1}


def test_a_result_that_is_not_json_is_an_internal_error() -> None:
    server = ControlServer("/nonexistent/sock", {"odd": lambda: {1, 2}})
    reply = json.loads(run(lambda: server.handle(b'{"cmd": "odd"}\n')))
    assert reply["ok"] is False and reply["error"].startswith("internal error in odd: ")


# -- item 4: accept errors are rate-limited ------------------------------------------------

class FakeListener:
    def __init__(self, name: Any) -> None:
        self.name = name

    def getsockname(self) -> Any:
        return self.name


def accept_failure(name: Any = "/run/l4lb/l4lb.sock", code: int = errno.EMFILE) -> dict[str, Any]:
    return {"message": "socket.accept() out of system resource",
            "exception": OSError(code, os.strerror(code)), "socket": FakeListener(name)}


def test_accept_errors_log_one_line_per_interval_and_kind(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    loop = asyncio.new_event_loop()
    try:
        control.install_loop_exception_handler(loop, interval=10.0, clock=lambda: now[0])
        with caplog.at_level(logging.DEBUG):
            for _ in range(1000):
                loop.call_exception_handler(accept_failure())
            loop.call_exception_handler(accept_failure(("127.0.0.1", 9273)))
            now[0] += 10.0
            loop.call_exception_handler(accept_failure())
        lines = [r.getMessage() for r in caplog.records]
    finally:
        loop.close()
    assert lines == [
        "accept failed on /run/l4lb/l4lb.sock: Too many open files (EMFILE)",
        "accept failed on 127.0.0.1:9273: Too many open files (EMFILE)",
        "accept failed on /run/l4lb/l4lb.sock: Too many open files (EMFILE) "
        "(999 more since the last line)",
    ]
    assert all(r.exc_info is None for r in caplog.records)  # no tracebacks


def test_other_loop_errors_reach_the_previous_handler(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        control.install_loop_exception_handler(loop)
        with caplog.at_level(logging.ERROR):
            loop.call_exception_handler({"message": "something else broke",
                                         "exception": RuntimeError("x")})
        assert [(r.name, r.getMessage()) for r in caplog.records] == [
            ("asyncio", "something else broke")]
        caplog.clear()
        seen: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
        control.install_loop_exception_handler(loop)
        loop.call_exception_handler({"message": "mine"})
        loop.call_exception_handler(accept_failure())
        assert [c["message"] for c in seen] == ["mine"]
    finally:
        loop.close()


def test_held_back_accept_errors_are_logged_when_the_storm_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        control.install_loop_exception_handler(loop, interval=0.02)
        for _ in range(5):
            loop.call_exception_handler(accept_failure(code=errno.ENFILE))
        await until(lambda: len(caplog.records) >= 2, "the held-back count")

    with caplog.at_level(logging.ERROR, logger="l4lb"):
        run(scenario)
    assert [r.getMessage() for r in caplog.records] == [
        "accept failed on /run/l4lb/l4lb.sock: Too many open files in system (ENFILE)",
        "accept failed on /run/l4lb/l4lb.sock: Too many open files in system (ENFILE) "
        "(4 more since the last line)",
    ]


def test_accept_error_log_matches_only_accept_failures() -> None:
    assert AcceptErrorLog.matches(accept_failure())
    assert not AcceptErrorLog.matches({"message": "socket.accept() out of system resource"})
    assert not AcceptErrorLog.matches({"message": "other", "exception": OSError(24, "x")})


@pytest.mark.parametrize(("share", "cap"), [
    (None, 64), (32, 4), (40, 5), (64, 8), (256, 32), (512, 64), (1024, 64), (8, 4)])
def test_the_cap_follows_the_descriptor_share(share: int | None, cap: int) -> None:
    """An eighth of the control plane's descriptors (4..64): with the metrics listener's half,
    three eighths stay for probes, logs and reloads."""
    assert control.cap_for(share) == cap
