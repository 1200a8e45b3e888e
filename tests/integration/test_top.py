"""`l4lb top` in a real terminal (tmux): rows, states and rates on screen, q and Ctrl-C quit."""

from __future__ import annotations

import os
import pty
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from l4lb.control import ControlServer

from .loopthread import GrowingStatus, LoopThread

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="needs tmux: apt-get install tmux")

REPO = Path(__file__).resolve().parents[2]
CONN_RATE = 250.0  # sessions/s of backend alpha in the fake snapshot
BYTE_RATE = 3 * 1024 * 1024.0  # bytes/s to the client of backend alpha
DRAIN_TIMEOUT = 300.0  # seconds from the fake daemon's start to gamma's drain deadline


class Tmux:
    """A private tmux server (its socket in the test's directory) with one session."""

    def __init__(self, socket_path: Path, command: str) -> None:
        self.socket = str(socket_path)
        env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm-256color"}
        env.pop("TMUX", None)
        self._run("new-session", "-d", "-s", "top", "-x", "160", "-y", "30", command, env=env)

    def _run(self, *args: str, env: dict[str, str] | None = None) -> str:
        assert TMUX is not None
        out = subprocess.run([TMUX, "-S", self.socket, *args], capture_output=True,
                             text=True, timeout=10, check=True, env=env)
        return out.stdout

    def screen(self) -> str:
        return self._run("capture-pane", "-p", "-t", "top")

    def keys(self, *keys: str) -> None:
        self._run("send-keys", "-t", "top", *keys)

    def wait_for(self, check: Callable[[str], bool], what: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if check(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{screen}")

    def close(self) -> None:
        subprocess.run([str(TMUX), "-S", self.socket, "kill-server"], capture_output=True,
                       timeout=10, check=False)


class FakeDaemon:
    """A control socket answering `status` with growing counters, on a background loop."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.status = GrowingStatus(conn_rate=CONN_RATE, byte_rate=BYTE_RATE)
        self.lt = LoopThread()
        self.server: ControlServer | None = None
        self.start()

    def snapshot(self) -> dict[str, Any]:
        """The growing status, with a drain deadline armed on gamma (127.0.0.1:9003)."""
        status = self.status()
        for b in status["services"][0]["backends"]:
            b["drain_deadline"] = self.status.t0 + DRAIN_TIMEOUT if b["name"] == "gamma" else None
        return status

    def start(self) -> None:
        self.server = ControlServer(self.path, {"status": self.snapshot})
        self.lt.run(self.server.start())

    def stop(self) -> None:
        if self.server is not None:
            self.lt.run(self.server.close())
            self.server = None

    def close(self) -> None:
        self.stop()
        self.lt.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    fake = FakeDaemon(str(tmp_path / "ctl.sock"))
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def top(daemon: FakeDaemon, tmp_path: Path) -> Iterator[Tmux]:
    command = (f"{shlex.quote(sys.executable)} -m l4lb.top {shlex.quote(daemon.path)} "
               "--interval 0.5; echo TOP-EXITED $?; "
               "stty -a | tr ' ;' '\\n\\n' | grep -x -E 'icanon|echo' | tr '\\n' ' '; "
               "echo; sleep 60")
    tmux = Tmux(tmp_path / "tmux.sock", command)
    try:
        yield tmux
    finally:
        tmux.close()


def row(screen: str, address: str) -> list[str]:
    for line in screen.splitlines():
        fields = line.split()
        if fields and fields[0] == address:
            return fields
    raise AssertionError(f"no row for {address} on screen:\n{screen}")


def has_rates(screen: str) -> bool:
    try:
        return row(screen, "127.0.0.1:9001")[6] != "-"
    except (AssertionError, IndexError):
        return False


def exited(screen: str) -> re.Match[str] | None:
    return re.search(r"TOP-EXITED (\d+)\s+(.*)", screen)


def test_top_shows_backends_states_and_rates_and_quits_on_q(top: Tmux) -> None:
    screen = top.wait_for(has_rates, "the rates of a second poll")
    # Columns: address, name, state, weight, eff, active, conn/s, total, fails, to-backend/s,
    # to-client/s, to-backend, to-client.
    alpha = row(screen, "127.0.0.1:9001")
    assert alpha[1:6] == ["alpha", "up", "3", "3", "4"]
    assert float(alpha[6]) == pytest.approx(CONN_RATE, rel=0.1)
    assert alpha[10].endswith("M/s") and float(alpha[10][:-3]) == pytest.approx(3.0, rel=0.1)
    beta = row(screen, "127.0.0.1:9002")
    assert beta[1:3] == ["<b>beta</b>", "down"] and beta[6] == "0.0" and beta[8] == "5"
    gamma = row(screen, "127.0.0.1:9003")  # drain, then the time left ("4m58s")
    assert gamma[1:3] == ["gamma", "drain"] and gamma[4] == "3"
    left = re.fullmatch(r"(\d+)m(\d+)s|(\d+)m", gamma[3])
    assert left is not None, gamma
    seconds = 60 * int(left.group(1) or left.group(3)) + int(left.group(2) or 0)
    assert DRAIN_TIMEOUT - 60 < seconds <= DRAIN_TIMEOUT
    assert row(screen, "[::1]:9004")[1:4] == ["delta", "maint", "backup"]
    web = row(screen, "web")  # web, protocol, scheduler, "rej" N, "nob" N, active, conn/s
    assert web[1:8] == ["tcp", "maglev", "rej", "2", "nob", "1", "5"]
    assert float(web[8]) == pytest.approx(CONN_RATE, rel=0.1)
    assert "l4lb top" in screen and "q quit" in screen
    top.keys("q")
    done = exited(top.wait_for(exited, "top to exit after q", timeout=5))
    assert done is not None and done.group(1) == "0"
    assert done.group(2).split() == ["icanon", "echo"]  # cooked mode is back


def test_top_quits_on_ctrl_c_and_restores_the_terminal(top: Tmux) -> None:
    top.wait_for(lambda s: "127.0.0.1:9001" in s, "the first screen")
    top.keys("C-c")
    done = exited(top.wait_for(exited, "top to exit after Ctrl-C", timeout=5))
    assert done is not None and done.group(1) == "0"
    assert done.group(2).split() == ["icanon", "echo"]


def test_top_survives_a_daemon_restart(daemon: FakeDaemon, top: Tmux) -> None:
    top.wait_for(has_rates, "the rates of a second poll")
    daemon.stop()
    screen = top.wait_for(lambda s: "daemon not answering" in s, "the error line")
    assert "127.0.0.1:9001" in screen  # the last table stays
    daemon.start()
    top.wait_for(lambda s: "daemon not answering" not in s and has_rates(s), "recovery")
    top.keys("q")
    top.wait_for(exited, "top to exit", timeout=5)


def test_top_without_a_daemon_exits_1(tmp_path: Path) -> None:
    leader, follower = pty.openpty()  # a terminal for stdout: without one top refuses first
    try:
        result = subprocess.run([sys.executable, "-m", "l4lb.top", str(tmp_path / "none.sock")],
                                stdout=follower, stderr=subprocess.PIPE, text=True, timeout=30,
                                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                stdin=subprocess.DEVNULL)
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode == 1
    assert "not found (is l4lb running?)" in result.stderr
