"""The socket buffer keys end to end: the daemon (a subprocess, on either data plane) gives the
client-leg sizes to its IPv4 and IPv6 listeners and the backend-leg sizes to the data plane;
reloads add, change and remove them (a removed client-leg size stays on the open listeners, as
documented, and status says so); a reload with a bad size is refused at its position and changes
nothing. Every socket's buffers are read from the kernel (`ss -tmn`, skmem tb / rb)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.sockbuf_host import RCVBUF, SNDBUF, ss_socket_buffers

from .procs import child_env, free_port, l4lb_cmd, reload_ok, stop_process, wait_listening
from .test_congestion import HoldServer, hold  # noqa: F401 (the fixture)

BACKEND_SND, BACKEND_RCV = 40960, 45056  # the backend leg's sizes (doubled: no default either)
OTHER_SND = 53248  # client_sndbuf after the change
ALL = (f"client_sndbuf = {SNDBUF}\nclient_rcvbuf = {RCVBUF}\n"
       f"backend_sndbuf = {BACKEND_SND}\nbackend_rcvbuf = {BACKEND_RCV}")
CHANGED = f"client_sndbuf = {OTHER_SND}\nbackend_rcvbuf = {BACKEND_RCV}"


def config(tmp: Path, port4: int, port6: int, backend: int, keys: str) -> str:
    return (f'[global]\nworkers = 2\nshutdown_timeout = "0s"\ncontrol_socket = "{tmp}/ctl.sock"\n'
            f'\n[[services]]\nname = "bulk"\nlisten = ["127.0.0.1:{port4}", "[::1]:{port6}"]\n'
            f'{keys}\n  [[services.backends]]\n  address = "127.0.0.1:{backend}"\n')


class Through:
    """Client connections through the balancer over IPv4 and IPv6, each greeted by the backend
    with the balancer's source port (so both legs are established and can be found)."""

    def __init__(self, ports: dict[str, int], backend: HoldServer) -> None:
        self.ports = ports  # "127.0.0.1" / "::1" -> the service's port there
        self.backend = backend
        self.clients: list[tuple[socket.socket, int, int]] = []  # (client, lb port, lb source)

    def open(self, host: str) -> int:
        sock = socket.create_connection((host, self.ports[host]), timeout=5.0)
        greeting = b""
        while len(greeting) < 5:
            chunk = sock.recv(5 - len(greeting))
            assert chunk, "the balancer closed the connection"
            greeting += chunk
        self.clients.append((sock, self.ports[host], int(greeting)))
        return len(self.clients) - 1

    def legs(self, index: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((tb, rb) of the client leg, (tb, rb) of the backend leg) of connection `index`."""
        sock, lb_port, source = self.clients[index]
        return (ss_socket_buffers(lb_port, sock.getsockname()[1]),
                ss_socket_buffers(source, self.backend.port))

    def close(self) -> None:
        for sock, _, _ in self.clients:
            sock.close()


def tcp_options(cfg: Path, env: dict[str, str]) -> dict[str, Any]:
    res = subprocess.run(l4lb_cmd("status", "--json", "-c", str(cfg)), capture_output=True,
                         text=True, env=env, timeout=30, check=False)
    assert res.returncode == 0, res.stderr
    options: dict[str, Any] = json.loads(res.stdout)["services"][0]["tcp_options"]
    return options


def buffers(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if "buf" in k}


@pytest.mark.parametrize("reference", [False, True], ids=["c", "ref"])
def test_buffers_follow_the_config_across_reloads(tmp_path: Path, hold: HoldServer,  # noqa: F811
                                                  reference: bool) -> None:
    port4, port6 = free_port(), free_port("::1")
    cfg = tmp_path / "l4lb.toml"
    cfg.write_text(config(tmp_path, port4, port6, hold.port, ""))
    env = child_env(reference)
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    through = Through({"127.0.0.1": port4, "::1": port6}, hold)
    doubled_client = (2 * SNDBUF, 2 * RCVBUF)
    doubled_backend = (2 * BACKEND_SND, 2 * BACKEND_RCV)
    try:
        wait_listening(port4, proc)
        # no keys: the kernel's autotuning on both legs, nothing shown as applied
        plain = through.open("127.0.0.1")
        client, backend = through.legs(plain)
        assert client != doubled_client and backend != doubled_backend
        assert buffers(tcp_options(cfg, env)) == {
            "client_sndbuf": 0, "client_rcvbuf": 0, "backend_sndbuf": 0, "backend_rcvbuf": 0,
            "listener_sndbuf_applied": None, "listener_rcvbuf_applied": None,
            "listeners_keep_sockbuf": False, "backend_sockbuf_errors": 0}

        # added by a reload: both listeners and the backend leg, IPv4 and IPv6 clients
        cfg.write_text(config(tmp_path, port4, port6, hold.port, ALL))
        reload_ok(cfg, env)
        added = [through.open("127.0.0.1"), through.open("::1")]
        for index in added:
            assert through.legs(index) == (doubled_client, doubled_backend)
        assert through.legs(plain) == (client, backend)  # an open connection keeps its own
        assert buffers(tcp_options(cfg, env)) == {
            "client_sndbuf": SNDBUF, "client_rcvbuf": RCVBUF, "backend_sndbuf": BACKEND_SND,
            "backend_rcvbuf": BACKEND_RCV, "listener_sndbuf_applied": 2 * SNDBUF,
            "listener_rcvbuf_applied": 2 * RCVBUF, "listeners_keep_sockbuf": False,
            "backend_sockbuf_errors": 0}

        # changed and partly removed: the new client_sndbuf reaches the open listeners, the
        # removed client_rcvbuf stays on them, the removed backend_sndbuf is autotuned again
        cfg.write_text(config(tmp_path, port4, port6, hold.port, CHANGED))
        reload_ok(cfg, env)
        for host in ("127.0.0.1", "::1"):
            (ctb, crb), (btb, brb) = through.legs(through.open(host))
            assert (ctb, crb, brb) == (2 * OTHER_SND, 2 * RCVBUF, 2 * BACKEND_RCV)
            assert btb != 2 * BACKEND_SND
        assert through.legs(added[1]) == (doubled_client, doubled_backend)
        options = tcp_options(cfg, env)
        assert buffers(options) == {
            "client_sndbuf": OTHER_SND, "client_rcvbuf": 0, "backend_sndbuf": 0,
            "backend_rcvbuf": BACKEND_RCV, "listener_sndbuf_applied": 2 * OTHER_SND,
            "listener_rcvbuf_applied": 2 * RCVBUF, "listeners_keep_sockbuf": True,
            "backend_sockbuf_errors": 0}

        # a bad size: refused at its position, nothing changes
        cfg.write_text(config(tmp_path, port4, port6, hold.port, "client_sndbuf = 100"))
        res = subprocess.run(l4lb_cmd("reload", "-c", str(cfg)), capture_output=True,
                             text=True, env=env, timeout=30, check=False)
        assert res.returncode != 0
        assert (f'{cfg}:9:17: error: services[0] ("bulk"): client_sndbuf: 100 out of range '
                "(0 for the kernel's autotuning, or 4096..1073741823 bytes)") in (
                    res.stdout + res.stderr)
        assert tcp_options(cfg, env) == options

        # all removed: the backend leg autotunes again, the listeners keep what they had
        cfg.write_text(config(tmp_path, port4, port6, hold.port, ""))
        reload_ok(cfg, env)
        (ctb, crb), (btb, brb) = through.legs(through.open("::1"))
        assert (ctb, crb) == (2 * OTHER_SND, 2 * RCVBUF)
        assert btb != 2 * BACKEND_SND and brb != 2 * BACKEND_RCV
        assert buffers(tcp_options(cfg, env))["listeners_keep_sockbuf"] is True
    finally:
        through.close()
        code = stop_process(proc)
        err = proc.stderr.read().decode() if proc.stderr else ""
    assert code == 0, err
    assert (f"service bulk: backend connections use SO_SNDBUF {BACKEND_SND}, SO_RCVBUF "
            f"{BACKEND_RCV}") in err
    assert "keeps SO_RCVBUF 49152 until the daemon restarts" in err
