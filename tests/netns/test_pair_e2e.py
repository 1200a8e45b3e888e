"""End to end: two l4lb nodes share a VIP in front of three backends; a client keeps connecting.

Topology: client, lb1, lb2 and `be` (backends b1..b3 on 192.0.2.21..23:9000) on one bridge.
Both nodes run `l4lb run` with the same service (listening on the VIP, bound with IP_FREEBIND on
both, Maglev on the client address, the same hash seed) and VRRP for the VIP (lb1 priority 100,
lb2 90, 100 ms adverts). The client connects every 50 ms from one address. Checked:

- the VIP is on lb1 only, and the client always reaches the same backend;
- lb1 dies (SIGKILL and its link goes down): lb2 takes the VIP within the master-down interval,
  the client's connections fail meanwhile and then reach the SAME backend through lb2
  (deterministic table); the outage seen by the client is measured;
- lb1 comes back and preempts; a graceful stop of lb1 (SIGTERM) hands over again.

Two modes. "daemon": VRRP runs inside `l4lb run` from a `[[vrrp]]` table. "split": the same
scenario with VRRP in a separate process per node (tests/netns/vrrp_node.py) beside a daemon
that has no `[[vrrp]]`; it checks the data path, the listeners on a VIP the node does not hold,
and failover as the client sees it, with the VRRP engine outside the daemon.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import LB2_4, VIP4, VIP6, start_node, vrrp
from .topo import Node, Topology, child_env

VIP = VIP4.split("/")[0]
PORT = 8080
BACKENDS = {"b1": "192.0.2.21", "b2": "192.0.2.22", "b3": "192.0.2.23"}
INTERVAL = 0.1
VIPS = {VIP4, VIP6}
MDI_90 = 3 * INTERVAL + (256 - 90) * INTERVAL / 256  # lb2's Master_Down_Interval


def service_toml(control_socket: Path) -> str:
    backends = "".join(f'\n[[services.backends]]\naddress = "{addr}:9000"\nname = "{name}"\n'
                       for name, addr in BACKENDS.items())
    return f"""
[global]
workers = 1
control_socket = "{control_socket}"
hash_seed = 7
shutdown_timeout = "1s"

[[services]]
name = "web"
listen = ["{VIP}:{PORT}"]
scheduler = "maglev"
hash_key = "src_ip"
connect_timeout = "1s"
{backends}"""


def vrrp_toml(priority: int) -> str:
    return f"""
[[vrrp]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = {priority}
advert_interval = "100ms"
version = 3
preempt = true
vips = ["{VIP4}", "{VIP6}"]
garp_repeat = 5
track_services = [{{ service = "web", weight = -50 }}]
"""


def l4lb(*args: str) -> list[str]:
    return [sys.executable, "-m", "l4lb", *args]


class LbNode:
    """One balancer host: `l4lb run`, plus (split mode) a separate VRRP process."""

    def __init__(self, topo: Topology, host: str, priority: int, tmp_path: Path,
                 wired: bool) -> None:
        self.topo, self.host, self.priority, self.wired = topo, host, priority, wired
        self.config = tmp_path / f"{host}.toml"
        text = service_toml(tmp_path / f"{host}.sock")
        self.config.write_text(text + vrrp_toml(priority) if wired else text)
        self.daemon: Node | None = None
        self.vrrp: Node | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        self.daemon = self.topo.start(self.host, l4lb("run", "-c", str(self.config)),
                                      name=f"{self.host}-l4lb{self.runs}", stdin=False)
        if not self.wired:
            self.vrrp = start_node(self.topo, self.host,
                                   vrrp(priority=self.priority, advert_interval=INTERVAL),
                                   name=f"{self.host}-vrrp{self.runs}")

    def die(self) -> None:
        """The host dies: every process SIGKILLed, its link down (it answers nothing)."""
        for node in (self.daemon, self.vrrp):
            if node is not None:
                node.kill()
        self.topo.exec(self.topo.ns(self.host), "ip", "link", "set", "eth0", "down")

    def revive(self) -> None:
        self.topo.exec(self.topo.ns(self.host), "ip", "link", "set", "eth0", "up")
        self.start()

    def terminate(self) -> None:
        """Graceful stop (SIGTERM to VRRP and the daemon); waits for both to exit 0."""
        for node in (self.vrrp, self.daemon):
            if node is not None:
                node.signal(signal.SIGTERM)
        for node in (self.vrrp, self.daemon):
            if node is not None:
                assert node.proc.wait(15) == 0, node.stderr()


def ok_answers(client: Node, since_t: float) -> list[str]:
    client.drain()
    return [e["answer"] for e in client.events
            if e.get("event") == "try" and e["ok"] and e["t"] >= since_t]


def wait_answers(client: Node, since_t: float, count: int, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answers = ok_answers(client, since_t)
        if len(answers) >= count:
            return answers
        time.sleep(0.05)
    client.drain()
    raise AssertionError(f"fewer than {count} answers since {since_t}: {client.events[-6:]}")


def first_ok_after(client: Node, since_t: float) -> float:
    client.drain()
    return min(e["t"] for e in client.events
               if e.get("event") == "try" and e["ok"] and e["t"] >= since_t)


@pytest.mark.parametrize("mode", ["daemon", "split"])
def test_pair_end_to_end(pair: Topology, tmp_path: Path, mode: str,
                         measure: Callable[[str, str], None]) -> None:
    wired = mode == "daemon"
    pair.add_host("be", [f"{a}/24" for a in BACKENDS.values()], mac="02:00:00:00:00:21")
    be = pair.python("be", "name_backends.py",
                     *[f"{n}={a}:9000" for n, a in BACKENDS.items()], name="backends")
    be.wait_for(lambda e: e.get("event") == "ready", 10)
    lb1 = LbNode(pair, "lb1", 100, tmp_path, wired)
    lb2 = LbNode(pair, "lb2", 90, tmp_path, wired)
    lb1.start()
    lb2.start()
    pair.wait_addresses("lb1", VIPS, set(), 10)
    pair.wait_addresses("lb2", set(), VIPS, 2)

    client = pair.python("client", "client.py", VIP, str(PORT), "60", "0.05", name="client")
    start = time.monotonic()
    answers = wait_answers(client, start, 10, 10)
    assert len(set(answers)) == 1 and answers[0] in BACKENDS, answers
    backend = answers[0]
    if wired:
        # both nodes built the same table from the same file and agree on its digest
        deadline = time.monotonic() + 10
        while True:
            res = subprocess.run(l4lb("vrrp", "status", "--json", "-c", str(lb1.config)),
                                 capture_output=True, text=True, env=child_env(), timeout=30,
                                 cwd=str(tmp_path))
            check = json.loads(res.stdout)["instances"][0].get("digest_check") or {}
            if check.get("agreement") == "yes" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert check.get("agreement") == "yes", res.stdout

    # lb1 dies: lb2 takes over, the client reaches the same backend through lb2.
    died = time.monotonic()
    lb1.die()
    pair.wait_addresses("lb2", VIPS, set(), MDI_90 + 2)
    after = wait_answers(client, died, 10, 10)
    outage = first_ok_after(client, died) - died
    assert set(after) == {backend}, after
    assert outage <= MDI_90 + 0.5, outage
    measure(f"e2e ({mode}) client outage when the master dies, 100 ms adverts",
            f"{outage:.3f}s until the first answer through lb2 (Master_Down_Interval "
            f"{MDI_90:.3f}s); same backend before and after: {backend}")
    if wired:
        res = subprocess.run(l4lb("vrrp", "status", "-c", str(lb2.config)),
                             capture_output=True, text=True, env=child_env(), timeout=30,
                             cwd=str(tmp_path))
        assert res.returncode == 0 and "MASTER" in res.stdout, res.stdout + res.stderr
    else:
        assert lb2.vrrp is not None
        status = lb2.vrrp.request_status()["instances"][0]
        assert status["state"] == "MASTER" and status["address"] == LB2_4

    # lb1 comes back and preempts; the client still reaches the same backend.
    back = time.monotonic()
    lb1.revive()
    pair.wait_addresses("lb1", VIPS, set(), 10)
    pair.wait_addresses("lb2", set(), VIPS, 2)
    assert set(wait_answers(client, back + 1.0, 10, 10)) == {backend}

    # Graceful stop of lb1: lb2 takes over after about Skew_Time.
    stopped = time.monotonic()
    lb1.terminate()
    pair.wait_addresses("lb2", VIPS, set(), 5)
    pair.wait_addresses("lb1", set(), VIPS, 2)
    assert set(wait_answers(client, stopped, 10, 10)) == {backend}
    measure(f"e2e ({mode}) client outage on a graceful stop, 100 ms adverts",
            f"{first_ok_after(client, stopped) - stopped:.3f}s until the first answer through "
            "lb2 after SIGTERM")
    client.signal(signal.SIGTERM)
    client.wait_for(lambda e: e.get("event") == "done", 5)
    every = [e["answer"] for e in client.events if e.get("event") == "try" and e["ok"]]
    assert set(every) == {backend}, json.dumps(client.events[-5:])
