"""The control socket's request handling: replies to good, malformed and unknown requests."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from l4lb.control import ControlError, ControlServer, request


def make_server(path: str = "/nonexistent/sock") -> ControlServer:
    def echo(text: str, times: int = 1) -> str:
        return text * times

    def boom() -> None:
        raise ControlError("no such backend 'x'")

    def bug() -> None:
        raise KeyError("oops")

    return ControlServer(path, {"echo": echo, "boom": boom, "bug": bug, "status": lambda: {}})


def ask(server: ControlServer, line: bytes) -> dict[str, object]:
    reply = server.handle_line(line)
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1
    result = json.loads(reply)
    assert isinstance(result, dict)
    return result


def test_good_request_gets_its_result() -> None:
    assert ask(make_server(), b'{"cmd": "echo", "text": "ab", "times": 2}\n') == {
        "ok": True, "result": "abab"}


@pytest.mark.parametrize(("line", "error"), [
    (b"not json\n", "malformed request: not JSON"),
    (b"[1, 2]\n", "malformed request: expected a JSON object"),
    (b'{"text": "x"}\n', 'malformed request: missing "cmd" (a string)'),
    (b'{"cmd": 7}\n', 'malformed request: "cmd" must be a string, not a number'),
    (b'{"cmd": "ehco"}\n', 'unknown command "ehco"; did you mean "echo"?'),
    (b'{"cmd": "zzzzzz"}\n', 'unknown command "zzzzzz" (commands: boom, bug, echo, status)'),
    (b'{"cmd": "echo"}\n', 'command "echo": missing argument "text"'),
    (b'{"cmd": "echo", "text": "a", "tims": 2}\n',
     'command "echo": unknown argument "tims" (arguments: text, times)'),
    (b'{"cmd": "echo", "text": 5}\n', 'command "echo": argument "text" must be a string'),
    (b'{"cmd": "echo", "text": "a", "times": "2"}\n',
     'command "echo": argument "times" must be an integer'),
    (b'{"cmd": "echo", "text": "a", "times": true}\n',
     'command "echo": argument "times" must be an integer'),
    (b'{"cmd": "boom"}\n', "no such backend 'x'"),
    (b'{"cmd": "bug"}\n', "internal error in bug: 'oops'"),
    (b"\xff\xfe\n", "malformed request: not JSON"),
])
def test_bad_requests_get_an_error_reply(line: bytes, error: str) -> None:
    reply = ask(make_server(), line)
    assert reply["ok"] is False
    assert isinstance(reply["error"], str) and reply["error"].startswith(error)


def test_socket_is_private_and_survives_garbage(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "ctl.sock")

    async def scenario() -> None:
        server = make_server(path)
        await server.start()
        try:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"garbage\n" + b"x" * 70000 + b"\n")
            await writer.drain()
            first = json.loads(await reader.readline())
            assert first["ok"] is False and "not JSON" in first["error"]
            second = json.loads(await reader.readline())
            assert second["ok"] is False and "longer than 65536" in second["error"]
            writer.close()
            # the daemon still answers a well-formed request afterwards
            result = await asyncio.get_running_loop().run_in_executor(
                None, lambda: request(path, "echo", text="hi"))
            assert result == "hi"
            with pytest.raises(ControlError, match='unknown command "nope"'):
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: request(path, "nope"))
            # a second server refuses to steal a live socket
            with pytest.raises(ControlError, match="another daemon answers there"):
                await make_server(path).start()
        finally:
            await server.close()
        assert not os.path.exists(path)

    asyncio.run(scenario())


def test_client_names_a_missing_socket(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match=r"not found \(is l4lb running\?\)"):
        request(str(tmp_path / "none.sock"), "status")
