"""A sync group across two l4lb nodes: a frontend instance and a gateway instance move together.

The two-legged topology of test_vrrp_gateway.py: client, lb1 and lb2 on the front bridge (eth0),
lb1 and lb2 also on the backend bridge (eth1, namespace `bk`). Each node runs `l4lb run` with two
[[vrrp]] instances, VI_1 on eth0 (the frontend VIP, VRID 51) and VI_2 on eth1 (the backends'
gateway VIP, VRID 52, its own adverts on eth1), in one [[vrrp_sync_group]] "G" with a notify
program; lb1 has priority 100, lb2 90, 100 ms adverts. Checked:

- lb1 holds both VIPs, lb2 none; `l4lb vrrp status` shows the group MASTER on lb1;
- lb1's eth1 loses carrier: VI_2 on lb1 goes FAULT (its own interface), and the group forces
  VI_1 (whose eth0 is fine) to FAULT as well, so lb2 takes both VIPs; the log and the status say
  why VI_1 left (`sync group G: VI_2 is FAULT`). Without the group VI_1 would stay on lb1;
- the carrier returns: both instances of lb1 leave FAULT and preempt together;
- the group notify program ran as `NOTIFY GROUP G STATE` on each group change.

Then the same with keepalived 2.2 on lb2 running its own vrrp_sync_group, both as the master
and as the backup (skipped when keepalived is not installed).
"""

from __future__ import annotations

import json
import re
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import VIP4, keepalived_available
from .test_vrrp_gateway import GW4, WEB, backend_side, l4lb
from .test_vrrp_keepalived import Keepalived
from .topo import Topology, child_env, sh


def config(tmp_path: Path, host: str, priority: int, notify: Path) -> Path:
    path = tmp_path / f"{host}.toml"
    path.write_text(f"""
[global]
workers = 1
control_socket = "{tmp_path / f'{host}.sock'}"
shutdown_timeout = "1s"
{WEB}
[[vrrp_sync_group]]
name = "G"
instances = ["VI_1", "VI_2"]
notify = "{notify}"

[[vrrp]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = {priority}
advert_interval = "100ms"
vips = ["{VIP4}"]

[[vrrp]]
name = "VI_2"
interface = "eth1"
virtual_router_id = 52
priority = {priority}
advert_interval = "100ms"
vips = ["{GW4}"]
""")
    return path


def notify_program(tmp_path: Path, host: str) -> tuple[Path, Path]:
    """A notify program that appends its arguments to a file; (program, file)."""
    out = tmp_path / f"{host}-notify.log"
    program = tmp_path / f"{host}-notify.sh"
    program.write_text(f'#!/bin/sh\necho "$@" >> {out}\n')
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return program, out


def vrrp_status(path: Path) -> dict[str, Any]:
    """`l4lb vrrp status --json` ({} while the daemon does not answer yet)."""
    res = subprocess.run(l4lb("vrrp", "status", "--json", "-c", str(path)),
                         capture_output=True, text=True, env=child_env(), timeout=30)
    if res.returncode != 0:
        return {}
    result: dict[str, Any] = json.loads(res.stdout)
    return result


def states(path: Path) -> tuple[str | None, dict[str, str]]:
    """(the group's state, {instance: state}) of the node running `path`."""
    st = vrrp_status(path)
    groups = st.get("sync_groups") or [{}]
    return groups[0].get("state"), {i["name"]: i["state"] for i in st.get("instances", [])}


def wait_group(path: Path, state: str, timeout: float) -> None:
    """Until the group and both its instances are in `state`."""
    deadline = time.monotonic() + timeout
    while True:
        group, instances = states(path)
        if group == state and instances == {"VI_1": state, "VI_2": state}:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{path.name}: wanted {state}: group {group}, {instances}")
        time.sleep(0.05)


def wait_vips(topo: Topology, owner: str, other: str, timeout: float) -> None:
    """Until `owner` holds the frontend VIP on eth0 and the gateway VIP on eth1, and `other`
    holds neither."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {(h, i): topo.addresses(h, i) for h in (owner, other) for i in ("eth0", "eth1")}
        if VIP4 in seen[owner, "eth0"] and GW4 in seen[owner, "eth1"] and \
                not {VIP4, GW4} & (seen[other, "eth0"] | seen[other, "eth1"]):
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"VIPs not together on {owner}: {seen}")
        time.sleep(0.02)


def wait_carrier(topo: Topology, host: str, ifname: str, timeout: float = 5) -> None:
    """Until the new veth `ifname` of `host` has carrier (it takes a moment after creation)."""
    deadline = time.monotonic() + timeout
    while "LOWER_UP" not in sh("ip", "-n", topo.ns(host), "link", "show", ifname).stdout:
        assert time.monotonic() < deadline, f"{host} {ifname}: no carrier"
        time.sleep(0.02)


def test_sync_group_moves_both_instances_together(pair: Topology, tmp_path: Path,
                                                   measure: Callable[[str, str], None]) -> None:
    bk = backend_side(pair)
    for host in ("lb1", "lb2"):
        wait_carrier(pair, host, "eth1")
    programs = {h: notify_program(tmp_path, h) for h in ("lb1", "lb2")}
    conf1 = config(tmp_path, "lb1", 100, programs["lb1"][0])
    conf2 = config(tmp_path, "lb2", 90, programs["lb2"][0])
    lb1 = pair.start("lb1", l4lb("run", "-c", str(conf1)), name="lb1-l4lb", stdin=False)
    wait_group(conf1, "MASTER", 10)
    lb2 = pair.start("lb2", l4lb("run", "-c", str(conf2)), name="lb2-l4lb", stdin=False)
    wait_group(conf2, "BACKUP", 10)
    wait_vips(pair, "lb1", "lb2", 3)
    text = subprocess.run(l4lb("vrrp", "status", "-c", str(conf1)), capture_output=True,
                          text=True, env=child_env(), timeout=30).stdout
    assert "vrrp sync group G: MASTER  (members VI_1 MASTER, VI_2 MASTER)" in text, text

    # lb1's backend side loses carrier: VI_2 FAULT by its interface, VI_1 FAULT by the group
    lost = time.monotonic()
    sh("ip", "-n", bk, "link", "set", "lb1b", "down")
    wait_vips(pair, "lb2", "lb1", 3)
    moved = time.monotonic() - lost
    measure("sync group, member interface down -> both VIPs on the peer (100 ms adverts)",
            f"{moved:.3f}s")
    wait_group(conf1, "FAULT", 3)
    wait_group(conf2, "MASTER", 3)
    st = vrrp_status(conf1)
    by_name = {i["name"]: i for i in st["instances"]}
    assert by_name["VI_2"]["faults"] == ["interface eth1 down"], by_name["VI_2"]
    assert by_name["VI_1"]["faults"] == ["sync group G: VI_2 is FAULT"], by_name["VI_1"]
    assert by_name["VI_1"]["last_transition"]["reason"] == "sync group G: VI_2 is FAULT"
    assert by_name["VI_1"]["sync_group"] == {"name": "G", "waiting": False}
    (group,) = st["sync_groups"]
    assert group["state"] == "FAULT" and group["reason"] == "VI_2: fault: interface eth1 down"
    assert {m["name"]: m["own_faults"] for m in group["members"]} == \
        {"VI_1": [], "VI_2": ["interface eth1 down"]}
    assert "vrrp VI_1: entering FAULT (sync group G: VI_2 is FAULT)" in lb1.stderr()

    # the carrier returns: lb1 leaves FAULT and preempts with both instances together
    sh("ip", "-n", bk, "link", "set", "lb1b", "up")
    wait_group(conf1, "MASTER", 5)
    wait_group(conf2, "BACKUP", 3)
    wait_vips(pair, "lb1", "lb2", 3)
    log1 = lb1.stderr()
    assert "vrrp sync group G: entering BACKUP" in log1, log1

    for node in (lb2, lb1):  # the backup first: lb1 stays MASTER until it stops
        node.signal(signal.SIGTERM)
        assert node.proc.wait(15) == 0, node.stderr()
    runs = {h: out.read_text().splitlines() if out.exists() else []
            for h, (_, out) in programs.items()}
    assert runs["lb1"] == ["GROUP G BACKUP", "GROUP G MASTER", "GROUP G FAULT",
                           "GROUP G BACKUP", "GROUP G MASTER", "GROUP G STOP"], runs
    assert runs["lb2"] == ["GROUP G BACKUP", "GROUP G MASTER", "GROUP G BACKUP",
                           "GROUP G STOP"], runs
    # carrier loss seen by netlink, priority-0 adverts, lb2's Skew_Time (65 ms), its VIPs
    assert moved < 1.0, moved


KEEPALIVED_CONF = """
global_defs {{
    router_id l4lb_test_lb2
}}
vrrp_sync_group G {{
    group {{
        VI_1
        VI_2
    }}
}}
vrrp_instance VI_1 {{
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int 0.1
    version 3
    virtual_ipaddress {{
        {vip}
    }}
}}
vrrp_instance VI_2 {{
    state BACKUP
    interface eth1
    virtual_router_id 52
    priority {priority}
    advert_int 0.1
    version 3
    virtual_ipaddress {{
        {gw}
    }}
}}
"""


def keepalived_states(log: str) -> dict[str, str]:
    """Each instance's last "(VI_n) Entering X STATE" in keepalived's log."""
    out: dict[str, str] = {}
    for name, state in re.findall(r"\((VI_\d)\) Entering (\w+) STATE", log):
        out[name] = state
    return out


@pytest.mark.skipif(not keepalived_available(),
                    reason="keepalived is not installed (apt-get install keepalived)")
@pytest.mark.parametrize(("l4lb_prio", "ka_prio"), [(100, 90), (90, 100)],
                         ids=["l4lb-master", "keepalived-master"])
def test_sync_group_with_keepalived(pair: Topology, tmp_path: Path, l4lb_prio: int,
                                    ka_prio: int) -> None:
    """l4lb (lb1) and keepalived 2.2 (lb2) each run the two instances in a sync group G. The
    master's backend side loses carrier: its group goes FAULT whole and the other
    implementation takes both VIPs; the carrier returns: the master's group preempts whole."""
    bk = backend_side(pair)
    for host in ("lb1", "lb2"):
        wait_carrier(pair, host, "eth1")
    program, _ = notify_program(tmp_path, "lb1")
    conf1 = config(tmp_path, "lb1", l4lb_prio, program)
    (tmp_path / "ka").mkdir()
    ka = Keepalived(pair, "lb2", tmp_path / "ka",
                    KEEPALIVED_CONF.format(priority=ka_prio, vip=VIP4, gw=GW4))
    lb1 = pair.start("lb1", l4lb("run", "-c", str(conf1)), name="lb1-l4lb", stdin=False)
    kan = ka.start()
    master, backup = ("lb1", "lb2") if l4lb_prio > ka_prio else ("lb2", "lb1")
    wait_group(conf1, "MASTER" if master == "lb1" else "BACKUP", 10)
    wait_vips(pair, master, backup, 5)

    def keepalived_in(state: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while keepalived_states(kan.stderr()) != {"VI_1": state, "VI_2": state}:
            assert time.monotonic() < deadline, kan.stderr()[-3000:]
            time.sleep(0.05)

    keepalived_in("BACKUP" if master == "lb1" else "MASTER", 5)
    # the master's backend side loses carrier: the whole group moves to the other node
    sh("ip", "-n", bk, "link", "set", f"{master}b", "down")
    wait_vips(pair, backup, master, 5)
    if master == "lb1":
        wait_group(conf1, "FAULT", 3)
        keepalived_in("MASTER", 3)
    else:
        wait_group(conf1, "MASTER", 3)
        keepalived_in("FAULT", 3)
    # the carrier returns: the master's group preempts whole
    sh("ip", "-n", bk, "link", "set", f"{master}b", "up")
    wait_vips(pair, master, backup, 5)
    wait_group(conf1, "MASTER" if master == "lb1" else "BACKUP", 3)
    keepalived_in("BACKUP" if master == "lb1" else "MASTER", 3)
    lb1.signal(signal.SIGTERM)
    assert lb1.proc.wait(15) == 0, lb1.stderr()
