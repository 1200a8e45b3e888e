"""`udp_gro` through `l4lb run`: the key off, on and off again across reloads, shown by `l4lb
status`, and a GSO-sending client served exactly in every state, on both data planes."""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .procs import child_env, free_port, l4lb_cmd, reload_ok, stop_process
from .test_udp_daemon import UdpNamer

SOL_UDP, UDP_SEGMENT = 17, 103


def _udp_gro_supported() -> bool:
    """Whether this kernel has UDP_GRO (so the C data plane takes GRO buffers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.getsockopt(SOL_UDP, 104)
        except OSError:
            return False
    return True


class Echo(UdpNamer):
    """A UDP echo backend thread (datagram by datagram)."""

    def __init__(self) -> None:
        super().__init__("echo")

    def answer(self, data: bytes) -> bytes:
        return data


def config(path: Path, ctl: Path, port: int, backend: int, gro: bool) -> None:
    path.write_text("\n".join([
        "[global]", "workers = 1", f'control_socket = "{ctl}"', "",
        "[[services]]", 'name = "quic"', 'protocol = "udp"', f'listen = ["127.0.0.1:{port}"]',
        f"udp_gro = {'true' if gro else 'false'}",
        "[[services.backends]]", f'address = "127.0.0.1:{backend}"', ""]))


def gso_round_trip(port: int) -> None:
    """10 datagrams of 100 bytes + one of 9 in ONE GSO packet come back as 11 datagrams."""
    sent = [bytes([k]) * (100 if k < 10 else 9) for k in range(11)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.bind(("127.0.0.1", 0))
        s.sendmsg([b"".join(sent)], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 100))], 0,
                   ("127.0.0.1", port))
        got = sorted(s.recvfrom(65535)[0] for _ in sent)  # one flow per echo source: any order
    assert got == sorted(sent)


def status(cfg: Path, env: dict[str, str], text: bool = False) -> Any:
    args = ["status", "-c", str(cfg)] if text else ["status", "--json", "-c", str(cfg)]
    res = subprocess.run(l4lb_cmd(*args), capture_output=True, text=True, env=env, timeout=30,
                         check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout if text else json.loads(res.stdout)["services"][0]


@pytest.mark.parametrize("impl", ["c", "ref"])
def test_udp_gro_off_and_on_across_a_reload(impl: str, tmp_path: Path) -> None:
    echo = Echo()
    port, cfg, ctl = free_port(), tmp_path / "udp.toml", tmp_path / "ctl.sock"
    config(cfg, ctl, port, echo.port, gro=False)
    env = child_env(reference=impl == "ref")
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while not ctl.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        gso_round_trip(port)
        assert status(cfg, env)["udp_options"] == {"udp_gro": False, "listeners_keep_gro": False,
                                                   "gro_in_effect": False}
        assert "  options: no GRO buffers (udp_gro = false)\n" in status(cfg, env, text=True)

        config(cfg, ctl, port, echo.port, gro=True)
        reload_ok(cfg, env)
        gso_round_trip(port)
        options = status(cfg, env)["udp_options"]
        assert options["udp_gro"] is True
        if impl == "ref":  # the reference reads datagram by datagram, and says so
            assert options["gro_in_effect"] is False
            assert "no GRO buffers (this data plane or kernel" in status(cfg, env, text=True)
        else:
            assert options["gro_in_effect"] is _udp_gro_supported()
            assert ("options:" in status(cfg, env, text=True)) is not _udp_gro_supported()
        # back to false: new flows go without, the open listener keeps GRO (never turned off)
        config(cfg, ctl, port, echo.port, gro=False)
        reload_ok(cfg, env)
        gso_round_trip(port)
        options = status(cfg, env)["udp_options"]
        kept = impl == "c" and _udp_gro_supported()
        assert options == {"udp_gro": False, "listeners_keep_gro": kept, "gro_in_effect": False}
        assert ("the open listeners keep them until a restart" in status(cfg, env, text=True)) \
            is kept
        deadline = time.monotonic() + 5  # a datagram is counted just after it was sent
        while status(cfg, env)["counters"].get("datagrams_out") != 33 \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        counters = status(cfg, env)["counters"]
        assert counters["datagrams_in"] == counters["datagrams_out"] == 33
        assert stop_process(proc, signal.SIGTERM) == 0
    finally:
        stop_process(proc, signal.SIGKILL)
        echo.close()
