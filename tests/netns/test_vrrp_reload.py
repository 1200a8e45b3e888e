"""A reload changes the VRRP instances of a running `l4lb run`, in namespaces.

lb1 (priority 100) and lb2 (priority 90) run `l4lb run` with one service and [[vrrp]] VI_1
(VRID 51, 100 ms adverts, IPv4 VIP). Each step edits a node's file and runs `l4lb reload`:

- a VIP added to lb1, the master: it goes on lb1's interface, the IPv4 VIP never leaves it,
  and neither node changes state (lb2 never hears silence long enough to take over: no new
  transition on either node, lb1's counters carried over);
- the notify program of the master does not run for a reload that keeps it MASTER;
- lb1's priority lowered below lb2's: lb2 preempts and takes the VIPs, as VRRP says;
- a second instance VI_2 added on lb2: it starts and becomes MASTER of its VRID;
- VI_1 removed from lb2's file: lb2 resigns (priority-0 advert) and lb1 takes over after
  Skew_Time; VI_2 stays master on lb2.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .conftest import LB1_4, VIP4, VIP6
from .topo import Node, Topology

INTERVAL = 0.1
VIP_B = "192.0.2.101/24"  # VI_2's


def vrrp_toml(name: str, vrid: int, priority: int, vips: list[str], notify: str = "") -> str:
    listed = ", ".join(f'"{v}"' for v in vips)
    return (f'\n[[vrrp]]\nname = "{name}"\ninterface = "eth0"\nvirtual_router_id = {vrid}\n'
            f'priority = {priority}\nadvert_interval = "100ms"\nvips = [{listed}]\n'
            + (f'notify = "{notify}"\n' if notify else ""))


def base_toml(sock: Path) -> str:
    return (f'[global]\nworkers = 1\ncontrol_socket = "{sock}"\nshutdown_timeout = "0s"\n\n'
            '[[services]]\nname = "web"\nlisten = ["127.0.0.1:8080"]\n'
            'backends = [{ address = "127.0.0.1:9000" }]\n')


def l4lb(*args: str) -> list[str]:
    return [sys.executable, "-m", "l4lb", *args]


def cli(cfg: Path, *args: str) -> str:
    res = subprocess.run(l4lb(*args, "-c", str(cfg)), capture_output=True, text=True,
                         timeout=30, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def instances(cfg: Path) -> dict[str, dict[str, Any]]:
    found = json.loads(cli(cfg, "vrrp", "status", "--json"))["instances"]
    return {i["name"]: i for i in found}


def wait_state(cfg: Path, name: str, state: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = instances(cfg).get(name)
        if got is not None and got["state"] == state:
            return got
        assert time.monotonic() < deadline, got
        time.sleep(0.05)


def start(pair: Topology, host: str, cfg: Path) -> Node:
    node = pair.start(host, l4lb("run", "-c", str(cfg)), name=f"{host}-l4lb", stdin=False)
    deadline = time.monotonic() + 15
    while subprocess.run(l4lb("vrrp", "status", "-c", str(cfg)), capture_output=True,
                         timeout=30, check=False).returncode != 0:
        assert node.proc.poll() is None, node.stderr()
        assert time.monotonic() < deadline, node.stderr()
        time.sleep(0.1)
    return node


def test_reload_changes_vrrp_instances_without_a_restart(pair: Topology,
                                                         tmp_path: Path) -> None:
    marks = tmp_path / "notified"
    notify = tmp_path / "notify.sh"
    notify.write_text(f'#!/bin/sh\necho "$@" >> {marks}\n')
    notify.chmod(0o755)
    cfg1, cfg2 = tmp_path / "lb1.toml", tmp_path / "lb2.toml"
    base1, base2 = base_toml(tmp_path / "lb1.sock"), base_toml(tmp_path / "lb2.sock")
    cfg1.write_text(base1 + vrrp_toml("VI_1", 51, 100, [VIP4], str(notify)))
    cfg2.write_text(base2 + vrrp_toml("VI_1", 51, 90, [VIP4]))
    start(pair, "lb1", cfg1)
    wait_state(cfg1, "VI_1", "MASTER", 5)
    start(pair, "lb2", cfg2)
    backup = wait_state(cfg2, "VI_1", "BACKUP", 5)
    deadline = time.monotonic() + 3
    while instances(cfg2)["VI_1"]["master"] != LB1_4:
        assert time.monotonic() < deadline, instances(cfg2)
        time.sleep(0.05)
    pair.wait_addresses("lb1", {VIP4}, set(), 2)
    pair.wait_addresses("lb2", set(), {VIP4}, 2)
    before1, before2 = instances(cfg1)["VI_1"], instances(cfg2)["VI_1"]
    notified = marks.read_text().splitlines()
    assert notified == ["INSTANCE VI_1 BACKUP 100", "INSTANCE VI_1 MASTER 100"], notified

    # 1. a VIP added on the master: applied in place, nobody changes state
    cfg1.write_text(base1 + vrrp_toml("VI_1", 51, 100, [VIP4, VIP6], str(notify)))
    out = cli(cfg1, "reload")
    assert "vrrp: VI_1 changed" in out and "needs a restart" not in out, out
    pair.wait_addresses("lb1", {VIP4, VIP6}, set(), 2)
    time.sleep(4 * INTERVAL)  # more than lb2's Master_Down_Interval (0.335 s)
    after1, after2 = instances(cfg1)["VI_1"], instances(cfg2)["VI_1"]
    assert after1["state"] == "MASTER" and after1["vips_held"]
    assert after1["counters"]["transitions"] == before1["counters"]["transitions"]
    assert after1["counters"]["adverts_sent"] > before1["counters"]["adverts_sent"]
    assert after2["state"] == "BACKUP" and after2["master"] == LB1_4
    assert after2["counters"]["became_master"] == before2["counters"]["became_master"] == 0
    assert after2["counters"]["transitions"] == backup["counters"]["transitions"]
    assert marks.read_text().splitlines() == notified  # no notify for a kept state
    pair.wait_addresses("lb2", set(), {VIP4, VIP6}, 1)

    # 2. lb1's priority below lb2's: lb2 preempts, as VRRP says
    cfg1.write_text(base1 + vrrp_toml("VI_1", 51, 80, [VIP4, VIP6], str(notify)))
    assert "vrrp: VI_1 changed" in cli(cfg1, "reload")
    wait_state(cfg2, "VI_1", "MASTER", 3)
    wait_state(cfg1, "VI_1", "BACKUP", 3)
    pair.wait_addresses("lb2", {VIP4}, set(), 2)
    pair.wait_addresses("lb1", set(), {VIP4, VIP6}, 2)

    # 3. a second instance added on lb2: it starts and wins its own VRID
    vi2 = vrrp_toml("VI_2", 52, 90, [VIP_B])
    cfg2.write_text(base2 + vrrp_toml("VI_1", 51, 90, [VIP4]) + vi2)
    assert "vrrp: VI_2 added" in cli(cfg2, "reload")
    wait_state(cfg2, "VI_2", "MASTER", 3)
    pair.wait_addresses("lb2", {VIP_B}, set(), 2)
    assert instances(cfg2)["VI_1"]["state"] == "MASTER"  # untouched

    # 4. VI_1 removed from lb2: it resigns and lb1 takes over at once (Skew_Time)
    cfg2.write_text(base2 + vi2)
    resigned = time.monotonic()
    assert "vrrp: VI_1 removed" in cli(cfg2, "reload")
    wait_state(cfg1, "VI_1", "MASTER", 2)
    assert time.monotonic() - resigned < 3 * INTERVAL + 1.0  # well before a silent timeout
    pair.wait_addresses("lb1", {VIP4}, set(), 2)
    pair.wait_addresses("lb2", {VIP_B}, {VIP4}, 2)
    assert set(instances(cfg2)) == {"VI_2"}
    assert instances(cfg2)["VI_2"]["state"] == "MASTER"
