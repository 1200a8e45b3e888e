"""Run `l4lb` as a subprocess against backend threads in the test process, and talk to it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that was free a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll pred every 50 ms until it is true (True) or timeout seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


def reload_ok(cfg: Path, env: dict[str, str] | None = None) -> None:
    """`l4lb reload -c cfg`, which must succeed (env: child_env() unless given)."""
    res = subprocess.run(l4lb_cmd("reload", "-c", str(cfg)), capture_output=True, text=True,
                         env=env if env is not None else child_env(), timeout=30, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


class NameServer:
    """A TCP backend thread that sends its name and closes each connection."""

    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(512)
        self.port = int(self.sock.getsockname()[1])
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            # health probes close with RST before reading: that is not an error here
            with conn, contextlib.suppress(OSError):
                conn.sendall(self.name.encode())

    def close(self) -> None:
        self._stop = True
        self.thread.join(timeout=2)
        self.sock.close()


def l4lb_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "l4lb", *args]


def child_env(reference: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("L4LB_NO_EXTENSIONS", None)
    if reference:
        env["L4LB_NO_EXTENSIONS"] = "1"
    return env


def fetch(port: int, host: str = "127.0.0.1", timeout: float = 3.0) -> bytes:
    """Connect, read until EOF, return what came."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        out = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return out
            out += chunk


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Wait until something accepts on 127.0.0.1:port, failing early if proc died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"l4lb exited with {proc.returncode} before listening:\n{out}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                 timeout: float = 10.0) -> int:
    """Signal our child by PID and wait; kill it if it does not exit."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
            raise AssertionError(f"l4lb did not exit within {timeout}s of signal {sig}") from None
    return int(proc.returncode)


@contextlib.contextmanager
def running(cfg: Path, impl: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`l4lb run -c cfg` on data plane `impl` ("c" or "ref"), its stderr piped, until it
    listens on 127.0.0.1:port; killed (SIGKILL) at the end unless the test stopped it."""
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(impl == "ref"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        yield proc
    finally:
        stop_process(proc, signal.SIGKILL)  # a no-op when the test already stopped it
