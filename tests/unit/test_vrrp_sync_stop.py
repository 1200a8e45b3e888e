"""SIGTERM with a sync group: the daemon's `stop_vrrp` must make every member resign (priority-0
advert, VIPs removed) at once, not one member after the other has waited for its lanes.

A member's `stop()` waits (up to STOP_TIMEOUT, 5 s) for its VIP lane and its notify lane,
where a notify program of an earlier transition, or the STOP one, may still run. Stopped one
after the other, the first member resigns and the others keep MASTER and their VIPs meanwhile:
the peer's member of the first VRID takes over after its Skew_Time (a keepalived peer without a
group), or waits, ready, for the others (a peer with a group: the first VRID has no master at
all), for as long as that notify program runs. keepalived resigns every instance in one pass.

The instances here are real `VrrpInstance`s with their sockets and netlink stubbed (adverts
recorded, VIP changes answered at once); a job that blocks on an event stands in for the slow
notify program in the first member's notify lane. Nothing sleeps."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

from l4lb.config.load import load_file
from l4lb.daemon import Daemon
from l4lb.vrrp.fsm import State, VrrpFsm
from l4lb.vrrp.group import SyncGroupRuntime
from l4lb.vrrp.instance import Lane, VrrpInstance

from .test_review6_reload import free_port, service, write
from .test_vrrp_sync_reload import INSTANCES, group


class _Netlink:
    """Answers VIP changes at once (nothing to change)."""

    async def remove(self, _ifname: str, _vip: Any) -> bool:
        return False

    async def add(self, _ifname: str, _vip: Any) -> bool:
        return False

    def close(self) -> None:
        pass


def _member(daemon: Daemon, runtime: SyncGroupRuntime, index: int,
            sent: list[tuple[str, int]]) -> VrrpInstance:
    settings = daemon.config.vrrp[index]
    inst = VrrpInstance(settings)
    runtime.member(settings.name, inst)
    inst._loop = asyncio.get_running_loop()
    inst._netlink = _Netlink()  # type: ignore[assignment]
    inst.address = ipaddress.IPv4Address("127.0.0.1")
    inst.fsm = VrrpFsm(settings.fsm_config(inst.address), inst._clock)
    runtime.attach(settings.name, inst.fsm)
    inst._vip_lane = Lane(f"vrrp {settings.name} vips")
    inst._notify_lane = Lane(f"vrrp {settings.name} notify")

    def record(priority: int) -> None:
        sent.append((settings.name, priority))
    inst._send_advert = record  # type: ignore[method-assign]
    return inst


def test_sigterm_resigns_every_member_before_waiting_for_any(tmp_path: Path) -> None:
    path = write(tmp_path, service("web", free_port(), ["127.0.0.1:9001"]) + INSTANCES
                 + group("/bin/true"))
    daemon = Daemon(load_file(str(path)))

    async def go() -> None:
        sent: list[tuple[str, int]] = []
        runtime = SyncGroupRuntime(daemon.config.vrrp_sync_groups[0])
        runtime.start()
        members = [_member(daemon, runtime, i, sent) for i in (0, 1)]
        for m in members:  # both MASTER, the group MASTER
            assert m.fsm is not None
            m.run_forced(m.fsm.start())
        for m in members:
            assert m.fsm is not None
            m.run_forced(m.fsm.promote("test: every member ready"))
        runtime.after("VI_1", [])
        assert runtime.group.state is State.MASTER
        sent.clear()
        slow = asyncio.Event()  # VI_1's notify program of an earlier transition, still running
        assert members[0]._notify_lane is not None
        members[0]._notify_lane.submit("notify MASTER", slow.wait)
        daemon.vrrp = members
        daemon.sync_groups = [runtime]
        stopping = asyncio.create_task(daemon.stop_vrrp())
        try:
            for _ in range(50):  # many loop turns; VI_1's notify program still runs
                await asyncio.sleep(0)
            states = {m.settings.name: m.state for m in members}
            resigned = sorted(name for name, priority in sent if priority == 0)
        finally:
            slow.set()
            await asyncio.wait_for(stopping, 10)
        assert resigned == ["VI_1", "VI_2"], (states, sent)
        assert states == {"VI_1": State.INIT, "VI_2": State.INIT}
        assert not any(m.vips_held for m in members)

    asyncio.run(go())
