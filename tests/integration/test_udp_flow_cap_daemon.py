"""`[global] max_udp_flows` through `l4lb run` with a small descriptor limit: a flood of UDP
source ports stops at the "auto" cap (half of the limit), is counted, and leaves the TCP service
working; a reload moves the cap. Both data planes."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .procs import (
    NameServer,
    child_env,
    fetch,
    free_port,
    l4lb_cmd,
    reload_ok,
    stop_process,
    wait_listening,
    wait_until,
)
from .test_udp_daemon import UdpNamer

NOFILE = 256  # the daemon's descriptor limit, soft and hard: "auto" caps UDP flows at 128
FLOOD = 160  # client source ports, one flow each


def config(path: Path, ctl: Path, udp: int, udp_backend: int, tcp: int, tcp_backend: int,
           cap: int | None) -> None:
    path.write_text("\n".join([
        "[global]", "workers = 1", f'control_socket = "{ctl}"',
        *([f"max_udp_flows = {cap}"] if cap is not None else []), "",
        "[[services]]", 'name = "dns"', 'protocol = "udp"', f'listen = ["127.0.0.1:{udp}"]',
        'udp_idle_timeout = "60s"',
        "[[services.backends]]", f'address = "127.0.0.1:{udp_backend}"', "",
        "[[services]]", 'name = "web"', f'listen = ["127.0.0.1:{tcp}"]',
        "[[services.backends]]", f'address = "127.0.0.1:{tcp_backend}"', ""]))


def low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def status(cfg: Path, env: dict[str, str]) -> Any:
    res = subprocess.run(l4lb_cmd("status", "--json", "-c", str(cfg)), capture_output=True,
                         text=True, env=env, timeout=30, check=False)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def dns_counters(cfg: Path, env: dict[str, str]) -> dict[str, int]:
    found: dict[str, int] = next(s for s in status(cfg, env)["services"]
                                 if s["name"] == "dns")["counters"]
    return found


@pytest.mark.parametrize("impl", ["c", "ref"])
def test_a_source_port_flood_stops_at_the_cap_and_tcp_keeps_working(impl: str,
                                                                     tmp_path: Path) -> None:
    namer, web = UdpNamer("ns"), NameServer("web")
    udp, tcp = free_port(), free_port()
    cfg, ctl = tmp_path / "cap.toml", tmp_path / "ctl.sock"
    config(cfg, ctl, udp, namer.port, tcp, web.port, cap=None)
    env = child_env(reference=impl == "ref")
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=env, preexec_fn=low_nofile,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with contextlib.ExitStack() as stack:
            wait_listening(tcp, proc)
            assert wait_until(ctl.exists, 15)
            assert status(cfg, env)["udp_flows"] == {"max": NOFILE // 2, "open": 0,
                                                      "auto": True}
            clients = []
            for _ in range(FLOOD):
                sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                sock.bind(("127.0.0.1", 0))
                sock.sendto(b"q1", ("127.0.0.1", udp))
                clients.append(sock)
            assert wait_until(lambda: dns_counters(cfg, env)["datagrams_in"] == FLOOD, 10)
            counters = dns_counters(cfg, env)
            assert counters["flows_active"] == NOFILE // 2, counters
            assert counters["drops_max_udp_flows"] == FLOOD - NOFILE // 2, counters
            assert counters["drops_max_flows"] == 0 and counters["accept_errors"] == 0
            assert status(cfg, env)["udp_flows"]["open"] == NOFILE // 2
            # the other half of the descriptors is the TCP service's
            assert [fetch(tcp) for _ in range(20)] == [b"web"] * 20
            # a reload lowers the cap: open flows stay, new ones wait
            config(cfg, ctl, udp, namer.port, tcp, web.port, cap=100)
            reload_ok(cfg, env)
            assert status(cfg, env)["udp_flows"] == {"max": 100, "open": NOFILE // 2,
                                                      "auto": False}
            clients[-1].sendto(b"q2", ("127.0.0.1", udp))
            assert wait_until(lambda: dns_counters(cfg, env)["drops_max_udp_flows"]
                              == FLOOD - NOFILE // 2 + 1, 10)
            clients[0].settimeout(3)  # an open flow still answers
            assert clients[0].recvfrom(100)[0] == b"q1ns"
            clients[0].sendto(b"q3", ("127.0.0.1", udp))
            assert clients[0].recvfrom(100)[0] == b"q3ns"
        assert stop_process(proc, signal.SIGTERM) == 0
        log = proc.stderr.read().decode() if proc.stderr else ""
        assert (f"daemon: at most {NOFILE // 2} UDP flows at once, all services together (half "
                f"of the {NOFILE} file descriptors allowed; [global] max_udp_flows)") in log
        assert ("daemon: at most 100 UDP flows at once, all services together ([global] "
                "max_udp_flows)") in log
    finally:
        stop_process(proc, signal.SIGKILL)
        namer.close()
        web.close()
    time.sleep(0)  # nothing to wait for: every socket above is closed by its ExitStack
