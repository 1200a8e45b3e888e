"""Review 6 of the CLI and control client: one-line client errors, texts, reload -c, arguments."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from l4lb.cli import cli
from l4lb.control import ControlError, ControlServer, request, request_with

pytestmark = pytest.mark.timeout(30)

Answer = Callable[[dict[str, Any]], bytes | None]


class FakeDaemon:
    """A unix socket that answers each request line with answer(request) (None: close at once
    without reading the request, so that the client sees a reset); records the requests."""

    def __init__(self, path: Path, answer: Answer) -> None:
        self.path = str(path)
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5.0)
                select.select([conn], [], [], 5.0)  # the request has arrived
                peek = conn.recv(65536, socket.MSG_PEEK)
                line = json.loads(peek.split(b"\n")[0]) if peek else {}
                self.requests.append(line)
                reply = self.answer(line)
                if reply is None:
                    continue  # closed with the request unread: the client gets ECONNRESET
                conn.recv(65536)
                conn.sendall(reply)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5.0)
        self.sock.close()
        assert not self.thread.is_alive()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[[Answer], FakeDaemon]]:
    made: list[FakeDaemon] = []

    def make(answer: Answer) -> FakeDaemon:
        made.append(FakeDaemon(tmp_path / f"fake{len(made)}.sock", answer))
        return made[-1]

    yield make
    for daemon in made:
        daemon.close()


def ok(result: Any) -> bytes:
    return json.dumps({"ok": True, "result": result}).encode() + b"\n"


def l4lb(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), prog_name="l4lb")


def one_error_line(res: Any, start: str) -> str:
    """The run failed with exit 1 and one stderr line starting with `start`, no traceback."""
    assert res.exit_code == 1, (res.exit_code, res.output, res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), res.stderr
    assert "Traceback" not in res.stderr
    line: str = lines[0]
    return line


# ---- item 2: every client failure is one line naming the socket, exit 1 ----

def test_empty_socket_path() -> None:
    with pytest.raises(ControlError, match=r'^control socket "": empty path$'):
        request("", "status")
    one_error_line(l4lb("status", "--socket", ""), 'l4lb: error: control socket "": empty path')


def test_socket_path_longer_than_af_unix_allows(tmp_path: Path) -> None:
    path = str(tmp_path / ("s" * 120))
    line = one_error_line(l4lb("status", "--socket", path), f"l4lb: error: control socket {path}:")
    assert "longer than 107 bytes" in line


def test_a_directory_or_a_file_is_not_a_socket(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("")
    one_error_line(l4lb("status", "--socket", str(tmp_path)),
                   f"l4lb: error: control socket {tmp_path}: is a directory, not a socket")
    one_error_line(l4lb("status", "--socket", str(plain)),
                   f"l4lb: error: control socket {plain}: not a socket")


def test_stale_socket_is_still_called_stale(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))  # bound, never listening: connect() is refused
        one_error_line(l4lb("status", "--socket", str(path)),
                       f"l4lb: error: control socket {path}: connection refused (stale socket")


def test_a_reply_that_is_not_json(fake: Callable[[Answer], FakeDaemon]) -> None:
    daemon = fake(lambda req: b"HTTP/1.0 400 Bad Request\r\n\r\n")
    line = one_error_line(l4lb("status", "--socket", daemon.path),
                          f"l4lb: error: control socket {daemon.path}: the reply is not JSON")
    assert "HTTP/1.0 400" in line


def test_a_json_reply_that_is_not_the_protocol(fake: Callable[[Answer], FakeDaemon]) -> None:
    daemon = fake(lambda req: b"[1, 2]\n")
    one_error_line(l4lb("status", "--socket", daemon.path),
                   f"l4lb: error: control socket {daemon.path}: the reply is not an l4lb reply")


def test_connection_reset_before_the_reply(fake: Callable[[Answer], FakeDaemon]) -> None:
    daemon = fake(lambda req: None)
    one_error_line(l4lb("status", "--socket", daemon.path),
                   f"l4lb: error: control socket {daemon.path}: the daemon reset the connection")


def test_closed_without_a_reply(fake: Callable[[Answer], FakeDaemon]) -> None:
    daemon = fake(lambda req: b"")
    one_error_line(l4lb("status", "--socket", daemon.path),
                   f"l4lb: error: control socket {daemon.path}: the daemon closed the connection")


def test_no_reply_within_the_timeout(tmp_path: Path) -> None:
    path = str(tmp_path / "mute.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(path)
        mute.listen(1)  # the kernel completes the connection; nobody ever answers
        with pytest.raises(ControlError, match=rf"^control socket {path}: no reply within 0.2s$"):
            request_with(path, "status", {}, timeout=0.2)


def test_the_daemons_refusal_is_printed_as_it_is(fake: Callable[[Answer], FakeDaemon]) -> None:
    daemon = fake(lambda req: json.dumps({"ok": False, "error": "no service named 'x'"}).encode()
                  + b"\n")
    one_error_line(l4lb("backends", "x", "--socket", daemon.path),
                   "l4lb: error: no service named 'x'")


# ---- item 3: add-backend / remove-backend say what differs as status does ----

def test_add_and_remove_backend_texts(fake: Callable[[Answer], FakeDaemon]) -> None:
    replies = {
        "add-backend": {"service": "web", "backend": "127.0.0.1:18083", "generation": 4,
                        "differences": {"added": ["127.0.0.1:18083"],
                                        "removed": ["127.0.0.1:18082"]}},
        "remove-backend": {"service": "web", "backend": "127.0.0.1:18083", "generation": 5,
                           "differences": {"added": [], "removed": []}},
    }
    daemon = fake(lambda req: ok(replies[req["cmd"]]))
    res = l4lb("add-backend", "web", "127.0.0.1:18083", "--socket", daemon.path)
    assert res.exit_code == 0, res.output
    assert res.stdout == ("web/127.0.0.1:18083: added (table generation 4); service web differs "
                          "from the file: added at run time: 127.0.0.1:18083; removed at run "
                          "time: 127.0.0.1:18082\n")
    assert "{" not in res.stdout and "[" not in res.stdout
    res = l4lb("remove-backend", "web", "127.0.0.1:18083", "--socket", daemon.path)
    assert res.exit_code == 0, res.output
    assert res.stdout == ("web/127.0.0.1:18083: removed (table generation 5); service web runs "
                          "the backends of the file again\n")
    res = l4lb("remove-backend", "web", "127.0.0.1:18083", "--socket", daemon.path, "--json")
    assert json.loads(res.stdout) == replies["remove-backend"]


# ---- item 4: reload -c FILE checks that FILE is the daemon's file ----

def reload_daemon(fake: Callable[[Answer], FakeDaemon], config: str) -> FakeDaemon:
    def answer(req: dict[str, Any]) -> bytes:
        if req["cmd"] == "status":
            return ok({"config": config, "pid": os.getpid()})
        return ok({"generation": 3, "digest": "0" * 16, "changes": "no change",
                   "restart_needed": []})
    return fake(answer)


def write_config(path: Path, socket_path: str) -> Path:
    path.write_text(f'[global]\ncontrol_socket = "{socket_path}"\n')
    return path


def test_reload_with_another_file_is_refused(tmp_path: Path,
                                             fake: Callable[[Answer], FakeDaemon]) -> None:
    running = tmp_path / "running.toml"
    daemon = reload_daemon(fake, str(running))
    write_config(running, daemon.path)
    other = write_config(tmp_path / "other.toml", daemon.path)
    res = l4lb("reload", "-c", str(other))
    line = one_error_line(res, f"l4lb: error: the daemon at {daemon.path} runs {running}, "
                               f"not {other}")
    assert "restart" in line
    assert [r["cmd"] for r in daemon.requests] == ["status"]  # no reload was asked for


def test_reload_names_the_file_the_daemon_reread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 fake: Callable[[Answer], FakeDaemon]) -> None:
    monkeypatch.chdir(tmp_path)  # the daemon (this process) was started with a relative path
    daemon = reload_daemon(fake, "running.toml")
    running = write_config(tmp_path / "running.toml", daemon.path)
    os.symlink(running, tmp_path / "link.toml")
    for given in (str(running), "link.toml"):
        res = l4lb("reload", "-c", given)
        assert res.exit_code == 0, res.output
        assert res.stdout == f"reloaded {running}: no change (table generation 3)\n"
    res = l4lb("reload", "--socket", daemon.path)
    assert res.exit_code == 0 and res.stdout.startswith(f"reloaded {running}: ")
    assert [r["cmd"] for r in daemon.requests] == ["status", "reload"] * 3


# ---- item 6: the smaller ones ----

def test_drain_timeout_beyond_24h_is_a_usage_error() -> None:
    res = l4lb("drain", "web", "b1", "--timeout", "25h", "--socket", "/nonexistent.sock")
    assert res.exit_code == 2
    assert "'25h' is too long (at most 24h)" in res.stderr


def test_negative_weight_reaches_the_range_check() -> None:
    res = l4lb("weight", "web", "b1", "-1", "--socket", "/nonexistent.sock")
    assert res.exit_code == 2
    assert "-1 is not in the range 0<=x<=256" in res.stderr and "No such option" not in res.stderr
    res = l4lb("weight", "web", "b1", "-1", "--bogus")  # a real unknown option stays usage
    assert res.exit_code == 2


def test_check_refuses_a_directory_with_exit_1(tmp_path: Path) -> None:
    res = l4lb("check", "-c", str(tmp_path))
    assert res.exit_code == 1
    assert res.stderr == f"{tmp_path}: error: cannot read configuration: is a directory\n"


@pytest.mark.timeout(10)
def test_check_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    res = l4lb("check", "-c", str(fifo))
    assert res.exit_code == 1
    assert res.stderr == f"{fifo}: error: cannot read configuration: not a regular file\n"
    res = l4lb("status", "-c", str(fifo))  # a client's -c is read too
    assert res.exit_code == 1 and "not a regular file" in res.stderr


def test_version_option_prints_what_version_prints() -> None:
    expected = l4lb("version").stdout
    assert expected.startswith("l4lb ") and "data plane:" in expected
    for flag in ("--version", "-V"):
        res = l4lb(flag)
        assert res.exit_code == 0 and res.stdout == expected


def test_top_without_a_terminal_says_so() -> None:
    res = l4lb("top", "--socket", "/nonexistent.sock")  # CliRunner's stdout is no terminal
    assert res.exit_code == 1
    assert res.stderr.startswith("l4lb top: error: standard output is not a terminal")


def test_python_m_top_without_a_terminal_says_so_too(capsys: pytest.CaptureFixture[str]) -> None:
    from l4lb.top import main as top_main

    assert top_main(["/nonexistent.sock"]) == 1  # pytest's captured stdout is no terminal
    assert capsys.readouterr().err.startswith("l4lb top: error: standard output is not a")


def test_api_cmd_of_the_wrong_type() -> None:
    server = ControlServer("/nonexistent/sock", {"status": lambda: {}})
    reply = json.loads(server.handle_line(b'{"cmd": 5}\n'))
    assert reply == {"ok": False, "error": 'malformed request: "cmd" must be a string, '
                                           "not a number"}
    reply = json.loads(server.handle_line(b'{"cmd": null}\n'))
    assert reply["error"] == 'malformed request: "cmd" must be a string, not null'
    reply = json.loads(server.handle_line(b'{"service": "web"}\n'))
    assert reply["error"] == 'malformed request: missing "cmd" (a string)'


def test_a_second_server_names_the_socket_once(tmp_path: Path) -> None:
    path = str(tmp_path / "ctl.sock")

    async def scenario() -> str:
        first = ControlServer(path, {})
        await first.start()
        try:
            await ControlServer(path, {}).start()
        except ControlError as exc:
            return str(exc)
        finally:
            await first.close()
        return ""

    assert asyncio.run(scenario()) == f"control socket {path}: another daemon answers there"


def test_server_bind_failure_is_a_control_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = str(blocker / "run" / "ctl.sock")  # a directory under a regular file: ENOTDIR
    with pytest.raises(ControlError, match=rf"^control socket {path}: cannot listen: "
                                           r"Not a directory \(ENOTDIR\)$"):
        asyncio.run(ControlServer(path, {}).start())


def test_sessions_backend_without_service_is_a_usage_error() -> None:
    res = l4lb("sessions", "--backend", "b1", "--socket", "/nonexistent.sock")
    assert res.exit_code == 2
    assert "--backend needs SERVICE" in res.stderr


def test_only_the_metrics_listener_is_blamed_for_its_own_errors() -> None:
    from l4lb.cli import _serve_error_text
    from l4lb.config import load_text

    config = load_text('[metrics]\nlisten = "127.0.0.1:9100"\n[[services]]\nname = "web"\n'
                       'protocol = "tcp"\nlisten = ["127.0.0.1:8080"]\n'
                       '  [[services.backends]]\n  address = "127.0.0.1:9"\n', "m.toml")

    async def bind_taken() -> None:
        from l4lb.httpserver import start

        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen(1)
            await start(f"127.0.0.1:{held.getsockname()[1]}", lambda: {})

    with pytest.raises(OSError) as from_metrics:
        asyncio.run(bind_taken())
    assert _serve_error_text(from_metrics.value, config) == (
        "metrics.listen: cannot listen on 127.0.0.1:9100: Address already in use (EADDRINUSE)")
    elsewhere = OSError(errno.EADDRINUSE, "error while attempting to bind on address ('x', 1)")
    assert _serve_error_text(elsewhere, config) == "Address already in use (EADDRINUSE)"


def test_reload_names_each_restart_only_key_by_its_table() -> None:
    from l4lb.cli import _reload_text

    text = _reload_text({"changes": "no change", "generation": 3,
                         "restart_needed": ["workers", "metrics.listen", "vrrp"]}, "/x.toml")
    assert text.splitlines() == [
        "reloaded /x.toml: no change (table generation 3)",
        "warning: [global] workers changed: needs a restart",
        "warning: [metrics] listen changed: needs a restart",
        "warning: [[vrrp]] changed: needs a restart",
    ]


def test_the_daemon_file_comes_from_its_absolute_path_not_from_proc(tmp_path: Path) -> None:
    """A daemon started with a relative -c names its file absolutely too (`config_file`), so
    that `reload -c` can compare files without /proc/PID/cwd (wrong across PID namespaces)."""
    from l4lb.cli import _daemon_file

    status = {"config": "l4lb.toml", "config_file": f"{tmp_path}/l4lb.toml", "pid": 2**22 + 1}
    assert _daemon_file(status) == f"{tmp_path}/l4lb.toml"
    assert _daemon_file({"config": "/etc/l4lb.toml", "pid": 1}) == "/etc/l4lb.toml"
    assert _daemon_file({"config": "l4lb.toml", "pid": 2**22 + 1}) is None  # no such process


def test_status_names_the_file_absolutely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from l4lb.config import load_text
    from l4lb.daemon import Daemon

    monkeypatch.chdir(tmp_path)
    daemon = Daemon(load_text("", "conf/l4lb.toml", host=None))
    status = daemon.cmd_status()
    assert (status["config"], status["config_file"]) == ("conf/l4lb.toml",
                                                         f"{tmp_path}/conf/l4lb.toml")
