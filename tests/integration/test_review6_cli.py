"""Review 6 of `l4lb run` and the clients on a real daemon: start-up errors name what failed."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .procs import child_env, free_port, l4lb_cmd, stop_process, wait_listening

pytestmark = pytest.mark.timeout(60)


def config_text(tmp_path: Path, port: int, extra: str = "") -> str:
    """One TCP service on 127.0.0.1:port (a backend nobody needs to answer), socket in tmp."""
    return (f'[global]\nworkers = 1\nshutdown_timeout = "1s"\n'
            f'control_socket = "{tmp_path}/ctl.sock"\n{extra}\n'
            f'[[services]]\nname = "web"\nprotocol = "tcp"\nlisten = ["127.0.0.1:{port}"]\n'
            f'  [[services.backends]]\n  address = "127.0.0.1:9"\n')


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def run_fails(*args: str) -> subprocess.CompletedProcess[str]:
    """`l4lb ARGS` that must exit by itself (start-up fails)."""
    return subprocess.run(l4lb_cmd(*args), capture_output=True, text=True, env=child_env(),
                          timeout=30)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that this test holds (listening) until the end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Path]:
    """A daemon running tmp/running.toml; yields the file."""
    port = free_port()
    cfg = write(tmp_path / "running.toml", config_text(tmp_path, port))
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        yield cfg
        assert stop_process(proc, signal.SIGTERM) == 0
    finally:
        stop_process(proc, signal.SIGKILL)
        if proc.stderr is not None:
            proc.stderr.close()


def test_metrics_listen_that_cannot_bind_is_named(tmp_path: Path, held_port: int) -> None:
    cfg = write(tmp_path / "m.toml", config_text(
        tmp_path, free_port(), f'[metrics]\nlisten = "127.0.0.1:{held_port}"\n'))
    res = run_fails("run", "-c", str(cfg))
    assert res.returncode == 3, res.stderr
    last = res.stderr.splitlines()[-1]
    assert last == (f"l4lb: error: metrics.listen: cannot listen on 127.0.0.1:{held_port}: "
                    "Address already in use (EADDRINUSE)")
    assert "control socket" not in res.stderr.splitlines()[-1]
    assert not (tmp_path / "ctl.sock").exists()  # the control socket was closed again


def test_fatal_errors_are_json_under_log_format_json(tmp_path: Path, held_port: int) -> None:
    cfg = write(tmp_path / "m.toml", config_text(
        tmp_path, free_port(), f'[metrics]\nlisten = "127.0.0.1:{held_port}"\n'))
    res = run_fails("--log-format", "json", "run", "-c", str(cfg))
    assert res.returncode == 3
    lines = [json.loads(line) for line in res.stderr.splitlines()]  # every line is JSON
    assert lines[-1]["level"] == "error"
    assert lines[-1]["message"].startswith(f"metrics.listen: cannot listen on "
                                           f"127.0.0.1:{held_port}: Address already in use")
    # a listen address taken (daemon.start), and an invalid file (before any logging)
    taken = write(tmp_path / "t.toml", config_text(tmp_path, held_port))
    res = run_fails("--log-format", "json", "run", "-c", str(taken))
    assert res.returncode == 3
    last = json.loads(res.stderr.splitlines()[-1])
    assert last["level"] == "error" and f"127.0.0.1:{held_port}" in last["message"]
    bad = write(tmp_path / "bad.toml", "[global]\nworkers = -1\n")
    res = run_fails("--log-format", "json", "run", "-c", str(bad))
    assert res.returncode == 1
    last = json.loads(res.stderr.strip())
    assert last["level"] == "error" and f"{bad}:2:" in last["message"]


def test_second_daemon_on_the_same_socket(tmp_path: Path, running: Path) -> None:
    other = write(tmp_path / "other.toml", config_text(tmp_path, free_port()))
    res = run_fails("run", "-c", str(other))
    assert res.returncode == 3
    sock = tmp_path / "ctl.sock"
    assert res.stderr.splitlines()[-1] == \
        f"l4lb: error: control socket {sock}: another daemon answers there"
    # refused before it published a table or bound a listener that would then be undone
    assert "published" not in res.stderr and "listening on" not in res.stderr, res.stderr


def test_reload_with_another_file_is_refused(tmp_path: Path, running: Path) -> None:
    other = write(tmp_path / "other.toml", config_text(tmp_path, free_port()))
    res = run_fails("reload", "-c", str(other))
    assert res.returncode == 1
    assert res.stderr == (f"l4lb: error: the daemon at {tmp_path}/ctl.sock runs {running}, not "
                          f"{other}: reload re-reads {running}; to run {other}, restart the "
                          "daemon with it\n")
    status = json.loads(run_fails("status", "-c", str(running), "--json").stdout)
    assert status["table"]["generation"] == 1  # nothing was reloaded
    res = run_fails("reload", "-c", str(running))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"reloaded {running}: ")


def test_demo_fatal_error_is_json_under_log_format_json(held_port: int) -> None:
    res = run_fails("--log-format", "json", "demo", "--port", str(held_port), "--duration", "1")
    assert res.returncode == 3
    last = json.loads(res.stderr.splitlines()[-1])
    assert last["level"] == "error" and last["message"].endswith("(try --port)")
