"""Hot reload under load: 20 reloads (some invalid) while new connections and long streams run.

Issue #3's bar: zero failed connections, zero broken sessions, zero lost bytes. The balancer runs
on the compiled data plane; the echo backends run in their own process so that this process's
GIL only serves the load generator.
"""

from __future__ import annotations

import hashlib
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .procs import child_env, free_port, l4lb_cmd, stop_process, wait_listening

HERE = Path(__file__).resolve().parent


def config_text(tmp: Path, port: int, backends: list[int], extra_listen: int | None) -> str:
    listen = [f"127.0.0.1:{port}"] + ([f"127.0.0.1:{extra_listen}"] if extra_listen else [])
    out = ["[global]", "workers = 2", 'shutdown_timeout = "2s"',
           f'control_socket = "{tmp}/ctl.sock"', "",
           "[[services]]", 'name = "web"', f"listen = {listen!r}".replace("'", '"'),
           'scheduler = "least_conn"', 'connect_timeout = "1s"']
    for b in backends:
        out += ["[[services.backends]]", f'address = "127.0.0.1:{b}"']
    return "\n".join(out) + "\n"


class Streams:
    """50 long sessions, each sending a deterministic byte stream and checking the echo."""

    def __init__(self, port: int, n: int = 50) -> None:
        self.socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
        self.sent = [hashlib.sha256() for _ in range(n)]
        self.recv = [hashlib.sha256() for _ in range(n)]
        self.nsent = [0] * n
        self.nrecv = [0] * n
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        for i, s in enumerate(self.socks):
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
        chunk = bytes(range(256)) * 16  # 4 KiB
        try:
            while not self.stop.is_set():
                for i, s in enumerate(self.socks):
                    if self.nsent[i] - self.nrecv[i] < 256 * 1024:
                        try:
                            n = s.send(chunk)
                        except BlockingIOError:
                            continue
                        self.sent[i].update(chunk[:n])
                        self.nsent[i] += n
                for key, _ in sel.select(timeout=0.01):
                    i = key.data
                    data = self.socks[i].recv(65536)
                    if not data:
                        raise ConnectionError(f"stream {i} closed by the balancer")
                    self.recv[i].update(data)
                    self.nrecv[i] += len(data)
            deadline = time.monotonic() + 10  # drain what is in flight
            while any(r < s for r, s in zip(self.nrecv, self.nsent, strict=True)):
                if time.monotonic() > deadline:
                    raise TimeoutError("echoes missing after 10 s")
                for key, _ in sel.select(timeout=0.1):
                    i = key.data
                    data = self.socks[i].recv(65536)
                    if not data:
                        raise ConnectionError(f"stream {i} closed by the balancer")
                    self.recv[i].update(data)
                    self.nrecv[i] += len(data)
        except Exception as exc:  # reported by the test
            self.errors.append(repr(exc))
        finally:
            sel.close()


def churn(port: int, stop: threading.Event, rate: float, stats: dict[str, int]) -> None:
    """New connection per request at about `rate` per second: connect, send, read echo, close."""
    interval = 1.0 / rate
    next_t = time.monotonic()
    i = 0
    while not stop.is_set():
        msg = f"req {i}\n".encode()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
            if got != msg:
                stats["bad"] += 1
            else:
                stats["ok"] += 1
        except OSError:
            stats["failed"] += 1
        i += 1
        next_t += interval
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_t = time.monotonic()


def test_twenty_reloads_under_load_lose_nothing(tmp_path: Path) -> None:
    backends = subprocess.Popen([sys.executable, str(HERE / "echo_backends.py"), "4"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proc = None
    try:
        assert backends.stdout is not None
        ports = [int(p) for p in backends.stdout.readline().split()]
        port, extra = free_port(), free_port()
        cfg = tmp_path / "l4lb.toml"
        cfg.write_text(config_text(tmp_path, port, ports[:3], None))
        proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_listening(port, proc)
        streams = Streams(port)
        streams.thread.start()
        stop = threading.Event()
        stats = {"ok": 0, "failed": 0, "bad": 0}
        clients = [threading.Thread(target=churn, args=(port, stop, 250.0, stats), daemon=True)
                   for _ in range(4)]
        for t in clients:
            t.start()
        outcomes = []
        for n in range(20):
            time.sleep(0.4)
            if n % 5 == 4:  # invalid: must change nothing (a syntax error, or a bad value)
                good = config_text(tmp_path, port, ports[:2], None)
                cfg.write_text(good + ("[[services]\nbroken = \n" if n % 10 == 4
                                       else "weight = 999\n"))
                expect_ok = False
            else:
                chosen = ports[:3] if n % 2 else [ports[0], ports[1], ports[3]]
                cfg.write_text(config_text(tmp_path, port, chosen, extra if n % 3 else None))
                expect_ok = True
            if n % 2:
                proc.send_signal(signal.SIGHUP)
                time.sleep(0.2)
                outcomes.append(expect_ok)
            else:
                res = subprocess.run(l4lb_cmd("reload", "-c", str(cfg)), capture_output=True,
                                     text=True, env=child_env(), timeout=30)
                assert (res.returncode == 0) == expect_ok, (n, res.stdout, res.stderr)
                if not expect_ok:
                    assert "reload rejected, running configuration unchanged" in res.stderr
                outcomes.append(res.returncode == 0)
        time.sleep(0.5)
        stop.set()
        for t in clients:
            t.join(timeout=10)
        streams.stop.set()
        streams.thread.join(timeout=30)
        assert streams.errors == []
        assert streams.nsent == streams.nrecv and min(streams.nsent) > 0
        assert [s.hexdigest() for s in streams.sent] == [r.hexdigest() for r in streams.recv]
        assert stats["failed"] == 0 and stats["bad"] == 0, stats
        assert stats["ok"] > 2000, stats  # ~1,000 connections/s for ~10 s
        for s in streams.socks:
            s.close()
        assert stop_process(proc, signal.SIGTERM) == 0
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert err.count("rejected, running configuration unchanged") == 4
        assert err.count("reload: ") >= 20
    finally:
        if proc is not None:
            stop_process(proc, signal.SIGKILL)
        if backends.stdin:
            backends.stdin.close()
        backends.wait(timeout=10)
