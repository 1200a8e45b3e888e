"""UDP through `l4lb run`: a DNS-shaped exchange, flows spread and shown, both data planes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from .procs import child_env, free_port, l4lb_cmd, stop_process


class UdpNamer:
    """A UDP backend thread: answers each datagram with its name + the datagram's first 2 bytes
    (the DNS query id), so the client can match answers to questions."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop:
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.sock.sendto(self.answer(data), peer)

    def answer(self, data: bytes) -> bytes:
        """What goes back for `data`: the query id and the name."""
        return data[:2] + self.name

    def close(self) -> None:
        self.stop = True
        self.thread.join(timeout=2)
        self.sock.close()


def ask(port: int, qid: int, timeout: float = 2.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(qid.to_bytes(2, "big") + b"query", ("127.0.0.1", port))
        data, src = s.recvfrom(65535)
    assert src == ("127.0.0.1", port)  # the answer comes from the service address
    assert data[:2] == qid.to_bytes(2, "big")
    return data[2:]


@pytest.mark.parametrize("impl", ["c", "ref"])
def test_dns_shaped_exchange(impl: str, tmp_path: Path) -> None:
    backends = [UdpNamer(f"u{i}") for i in (1, 2, 3)]
    port = free_port()
    cfg = tmp_path / "udp.toml"
    lines = ["[global]", "workers = 2", f'control_socket = "{tmp_path}/ctl.sock"', "",
             "[[services]]", 'name = "dns"', 'protocol = "udp"', f'listen = ["127.0.0.1:{port}"]',
             'scheduler = "round_robin"', "responses = 1", 'udp_idle_timeout = "5s"']
    for b in backends:
        lines += ["[[services.backends]]", f'address = "127.0.0.1:{b.port}"']
    cfg.write_text("\n".join(lines) + "\n")
    env = child_env(reference=impl == "ref")
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while not (tmp_path / "ctl.sock").exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        answers = Counter(ask(port, qid).decode() for qid in range(30))
        assert answers == {"u1": 10, "u2": 10, "u3": 10}, answers
        res = subprocess.run(l4lb_cmd("status", "--json", "-c", str(cfg)), capture_output=True,
                             text=True, env=env, timeout=30)
        counters = json.loads(res.stdout)["services"][0]["counters"]
        assert counters["datagrams_in"] == 30 and counters["datagrams_out"] == 30
        assert counters["flows_created"] == 30
        # responses = 1: every flow closed after its answer
        deadline = time.monotonic() + 3
        while True:
            res = subprocess.run(l4lb_cmd("flows", "--json", "-c", str(cfg)),
                                 capture_output=True, text=True, env=env, timeout=30)
            if json.loads(res.stdout) == [] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert json.loads(res.stdout) == []
        text = subprocess.run(l4lb_cmd("status", "-c", str(cfg)), capture_output=True,
                              text=True, env=env, timeout=30).stdout
        assert "flows 0 active, 30 created; datagrams 30 in, 30 out; drops: none" in text
        assert stop_process(proc, signal.SIGTERM) == 0
    finally:
        stop_process(proc, signal.SIGKILL)
        for b in backends:
            b.close()
