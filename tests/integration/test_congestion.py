"""`congestion_control` end to end: the daemon (a subprocess, on either data plane) sets the
client leg on its listeners and the backend leg through the data plane, a reload changes and
clears both, a reload with an unknown algorithm is refused and changes nothing, and `l4lb check`
reports the key with its position. The algorithm of each socket is read from the kernel (ss).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.congestion_host import (
    other_algorithm,
    ss_algorithms,
    system_default,
    unprivileged_forbidden_algorithm,
)

from .procs import child_env, free_port, l4lb_cmd, stop_process, wait_listening


def ss_algorithm(filter_expr: str) -> str:
    """The congestion control of the one established TCP socket that matches filter_expr."""
    found = ss_algorithms(filter_expr)
    assert len(found) == 1, found
    return found[0]


class HoldServer:
    """A backend that greets each connection with the balancer's source port towards it (five
    ASCII digits) and keeps the connection open until close()."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.conns: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.conns.append(conn)
            with contextlib.suppress(OSError):  # a health-style probe may be gone already
                conn.sendall(b"%05d" % peer[1])

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=2)
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def hold() -> Iterator[HoldServer]:
    server = HoldServer()
    yield server
    server.close()


def config(tmp: Path, port: int, backend: int, keys: str) -> str:
    return (f'[global]\nworkers = 2\nshutdown_timeout = "0s"\ncontrol_socket = "{tmp}/ctl.sock"\n'
            f'\n[[services]]\nname = "bulk"\nlisten = ["127.0.0.1:{port}"]\n{keys}\n'
            f'  [[services.backends]]\n  address = "127.0.0.1:{backend}"\n')


class Through:
    """Client connections through the balancer, each greeted by the backend (so both legs are
    established), and the algorithm of the balancer's two sockets for each."""

    def __init__(self, port: int, backend: HoldServer) -> None:
        self.port = port
        self.backend = backend
        self.clients: list[tuple[socket.socket, int]] = []  # (client, balancer's backend port)

    def open(self) -> int:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5.0)
        greeting = b""
        while len(greeting) < 5:
            chunk = sock.recv(5 - len(greeting))
            assert chunk, "the balancer closed the connection"
            greeting += chunk
        self.clients.append((sock, int(greeting)))
        return len(self.clients) - 1

    def legs(self, index: int) -> tuple[str, str]:
        """(client leg, backend leg) of the balancer's sockets of connection `index`."""
        sock, backend_source = self.clients[index]
        client = ss_algorithm(f"sport = :{self.port} and dport = :{sock.getsockname()[1]}")
        backend = ss_algorithm(f"sport = :{backend_source} and dport = :{self.backend.port}")
        return client, backend

    def close(self) -> None:
        for sock, _ in self.clients:
            sock.close()


def reload(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(l4lb_cmd("reload", "-c", str(cfg)), capture_output=True, text=True,
                          env=child_env(), timeout=30, check=False)


@pytest.mark.parametrize("reference", [False, True], ids=["c", "ref"])
def test_both_legs_follow_the_config_across_reloads(tmp_path: Path, hold: HoldServer,
                                                    reference: bool) -> None:
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    algo, default = other_algorithm(), system_default()
    port = free_port()
    cfg = tmp_path / "l4lb.toml"
    cfg.write_text(config(tmp_path, port, hold.port, f'congestion_control = "{algo}"'))
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(reference),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    through = Through(port, hold)
    try:
        wait_listening(port, proc)
        first = through.open()
        assert through.legs(first) == (algo, algo)

        cfg.write_text(config(tmp_path, port, hold.port,
                              f'backend_congestion_control = "{algo}"'))
        res = reload(cfg)
        assert res.returncode == 0, res.stderr
        second = through.open()
        assert through.legs(second) == (default, algo)  # the listener: back to the default
        assert through.legs(first) == (algo, algo)  # an open connection keeps its algorithm

        cfg.write_text(config(tmp_path, port, hold.port, ""))
        res = reload(cfg)
        assert res.returncode == 0, res.stderr
        third = through.open()
        assert through.legs(third) == (default, default)

        cfg.write_text(config(tmp_path, port, hold.port, 'congestion_control = "nosuchcc"'))
        res = reload(cfg)
        assert res.returncode != 0
        assert f"{cfg}:9:22: error:" in res.stdout + res.stderr
        assert "tcp_available_congestion_control" in res.stdout + res.stderr
        fourth = through.open()
        assert through.legs(fourth) == (default, default)  # the rejected reload changed nothing

        check = subprocess.run(l4lb_cmd("check", "-c", str(cfg)), capture_output=True,
                               text=True, env=child_env(), timeout=30, check=False)
        assert check.returncode == 1
        assert (f'{cfg}:9:22: error: services[0] ("bulk"): congestion_control: "nosuchcc" is '
                "not a congestion control algorithm of this kernel") in check.stderr
    finally:
        through.close()
        code = stop_process(proc)
        err = proc.stderr.read().decode() if proc.stderr else ""
    assert code == 0, err
    assert f"service bulk: backend connections use congestion control {algo}" in err


HOST_CHECK = """
import os, sys
from l4lb.config.host import THIS_HOST
from l4lb.config.validate import congestion_control_problem
os.setgroups([]); os.setgid(65534); os.setuid(65534)  # imports first: /root is not readable
for name in sys.argv[1:]:
    print(name, "->", congestion_control_problem(THIS_HOST, name))
"""


def test_host_check_as_an_unprivileged_process() -> None:
    """What `l4lb check` (and a non-root daemon) says about each kind of name."""
    forbidden = unprivileged_forbidden_algorithm()
    default = system_default()
    out = subprocess.run([sys.executable, "-c", HOST_CHECK, default, forbidden, "nosuchcc"],
                         capture_output=True, text=True, timeout=30, check=False,
                         env=child_env())
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"{default} -> None"
    assert lines[1].startswith(f'{forbidden} -> "{forbidden}" is not allowed for this '
                               "process: without CAP_NET_ADMIN only "
                               "net.ipv4.tcp_allowed_congestion_control may be used")
    assert lines[2].startswith('nosuchcc -> "nosuchcc" is not a congestion control algorithm of '
                               "this kernel (net.ipv4.tcp_available_congestion_control: ")
