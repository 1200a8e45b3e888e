"""The descriptor ceiling through `l4lb run` with a small descriptor limit: a flood of TCP
clients that would take every descriptor leaves the top of the limit to the control plane, so
`l4lb status` still answers and health probes still run; the queued clients are served once the
flood ends. Both data planes."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .procs import child_env, free_port, l4lb_cmd, stop_process, wait_listening, wait_until

NOFILE = 256  # the daemon's descriptor limit: the data plane stays below 224 (fd_ceiling())
FLOOD = 200  # clients held open at once: 400 descriptors through the balancer without a limit


class HoldServer:
    """A TCP backend thread that answers each connection with b"ok" and keeps it open until the
    client closes it (so that sessions through the balancer stay open)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.conns: list[socket.socket] = []
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                conn.sendall(b"ok")
            except OSError:
                conn.close()
                continue
            self.conns.append(conn)

    def close(self) -> None:
        self.stop = True
        self.thread.join(timeout=2)
        self.sock.close()
        for conn in self.conns:
            conn.close()


def low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def status(cfg: Path, env: dict[str, str]) -> Any:
    res = subprocess.run(l4lb_cmd("status", "--json", "-c", str(cfg)), capture_output=True,
                         text=True, env=env, timeout=30, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize("impl", ["c", "ref"])
def test_a_client_flood_leaves_descriptors_for_the_control_plane(impl: str,
                                                                 tmp_path: Path) -> None:
    backend = HoldServer()
    port, cfg, ctl = free_port(), tmp_path / "fd.toml", tmp_path / "ctl.sock"
    cfg.write_text("\n".join([
        "[global]", "workers = 1", f'control_socket = "{ctl}"', "",
        "[[services]]", 'name = "web"', f'listen = ["127.0.0.1:{port}"]',
        "[services.health]", 'interval = "300ms"', 'timeout = "200ms"', "fall = 2",
        "[[services.backends]]", f'address = "127.0.0.1:{backend.port}"', ""]))
    env = child_env(reference=impl == "ref")
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=env, preexec_fn=low_nofile,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    clients: list[socket.socket] = []
    try:
        wait_listening(port, proc)
        assert wait_until(ctl.exists, 15)
        assert status(cfg, env)["fds"] == {"limit": NOFILE, "ceiling": NOFILE - 32}
        before = status(cfg, env)["services"][0]["counters"]["conns_total"]  # wait_listening's
        for _ in range(FLOOD):
            sock = socket.socket()
            clients.append(sock)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", port))
        # the balancer fills up to its ceiling, and the rest of the clients wait in the backlog
        assert wait_until(lambda: open_fds(proc.pid) >= NOFILE - 32 - 8, 10), open_fds(proc.pid)
        time.sleep(1.0)  # three probe intervals at the ceiling
        held = open_fds(proc.pid)
        assert held <= NOFILE - 16, held  # the top stays (mostly) free
        state = status(cfg, env)  # the control socket still answers
        web = state["services"][0]
        assert [b["state"] for b in web["backends"]] == ["up"]  # probes still run and pass
        served = web["counters"]["conns_total"] - before
        assert 0 < served < FLOOD
        # the flood ends: the queued clients get their turn
        for sock in clients[:served]:
            sock.close()
        del clients[:served]
        for sock in clients:
            sock.setblocking(True)
            sock.settimeout(5)
        for _ in range(2):  # the rest in two rounds: each round fits below the ceiling
            batch, clients = clients[:FLOOD // 2], clients[FLOOD // 2:]
            for sock in batch:
                assert sock.recv(2) == b"ok"
                sock.close()
        assert status(cfg, env)["services"][0]["counters"]["conns_total"] == before + FLOOD
        assert stop_process(proc, signal.SIGINT) == 0
    finally:
        for sock in clients:
            sock.close()
        stop_process(proc, signal.SIGKILL)
        backend.close()
