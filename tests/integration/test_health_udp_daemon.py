"""`kind = "udp"` health checks in the running daemon: a UDP service's stopped backend goes
DOWN with "port unreachable (ICMP)", its flows go elsewhere, and it comes back UP."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .procs import child_env, free_port, l4lb_cmd, stop_process

pytestmark = pytest.mark.timeout(60)


class Answerer:
    """A UDP backend thread on 127.0.0.1:port (0: any): answers b"pong:NAME" to b"ping" and
    the query's first 2 bytes + NAME to anything else."""

    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name.encode()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self.probes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if data == b"ping":
                self.probes += 1
                self.sock.sendto(b"pong:" + self.name, peer)
            else:
                self.sock.sendto(data[:2] + self.name, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def backends(cfg: Path) -> dict[str, dict[str, Any]]:
    res = subprocess.run(l4lb_cmd("backends", "dns", "--json", "-c", str(cfg)),
                         capture_output=True, text=True, env=child_env(), timeout=30)
    assert res.returncode == 0, res.stderr
    return {b["address"]: b for b in json.loads(res.stdout)}


def wait_state(cfg: Path, address: str, want: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while backends(cfg)[address]["state"] != want:
        assert time.monotonic() < deadline, f"{address} not {want}: {backends(cfg)}"
        time.sleep(0.05)


def ask(port: int, qid: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        s.sendto(qid.to_bytes(2, "big") + b"query", ("127.0.0.1", port))
        data = s.recv(65535)
    assert data[:2] == qid.to_bytes(2, "big")
    return data[2:].decode()


def test_stopped_udp_backend_goes_down_by_icmp_and_comes_back(tmp_path: Path) -> None:
    servers = [Answerer(f"u{i}") for i in (1, 2)]
    port = free_port()
    cfg = tmp_path / "udp.toml"
    lines = ["[global]", f'control_socket = "{tmp_path}/ctl.sock"', "",
             "[[services]]", 'name = "dns"', 'protocol = "udp"',
             f'listen = ["127.0.0.1:{port}"]', 'scheduler = "round_robin"', "responses = 1",
             "", "  [services.health]", '  kind = "udp"', '  send = "ping"',
             '  expect = "pong:"', '  interval = "100ms"', '  timeout = "50ms"', "  rise = 2",
             "  fall = 2", "  jitter = 0.0", ""]
    for b in servers:
        lines += ["  [[services.backends]]", f'  address = "127.0.0.1:{b.port}"']
    cfg.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    revived: Answerer | None = None
    b2 = f"127.0.0.1:{servers[1].port}"
    try:
        deadline = time.monotonic() + 15
        while not (tmp_path / "ctl.sock").exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while not all(b["check"]["last_result"] == "passed" for b in backends(cfg).values()):
            assert time.monotonic() < deadline, backends(cfg)
            time.sleep(0.05)
        assert {b["state"] for b in backends(cfg).values()} == {"up"}
        assert servers[1].probes >= 1  # the probes are datagrams to the backend's own port
        servers[1].close()
        wait_state(cfg, b2, "down")
        check = backends(cfg)[b2]["check"]
        assert (check["change_reason"], check["last_reason"]) == \
            ("port unreachable (ICMP) (2/2 probes failed)", "port unreachable (ICMP)")
        assert Counter(ask(port, q) for q in range(10)) == {"u1": 10}
        # `l4lb backends` in text: the UDP layout, and why b2 is DOWN under the table
        res = subprocess.run(l4lb_cmd("backends", "dns", "-c", str(cfg)), capture_output=True,
                             text=True, env=child_env(), timeout=30)
        assert res.returncode == 0, res.stderr
        assert "DGRAMS-TO-BACKEND" in res.stdout.splitlines()[0], res.stdout
        assert f"\n{b2}: DOWN for 0m" in res.stdout, res.stdout
        assert "port unreachable (ICMP) (2/2 probes failed); last probe" in res.stdout
        revived = Answerer("u2-again", port=servers[1].port)
        wait_state(cfg, b2, "up")
        assert backends(cfg)[b2]["check"]["change_reason"] == \
            "reply matched (2/2 probes passed)"
        time.sleep(0.1)  # the table is re-published right after the transition
        assert Counter(ask(port, q) for q in range(10)) == {"u1": 5, "u2-again": 5}
        assert stop_process(proc, signal.SIGTERM) == 0
    finally:
        stop_process(proc, signal.SIGKILL)
        for s in servers:
            s.close()  # closing twice is harmless
        if revived is not None:
            revived.close()
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert f"backend dns/{b2} is DOWN: port unreachable (ICMP) (2/2 probes failed)" in err, err
    assert f"backend dns/{b2} is UP: reply matched (2/2 probes passed)" in err, err
