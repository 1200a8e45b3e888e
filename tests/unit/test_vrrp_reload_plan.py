"""A reload's VRRP plan (l4lb.vrrp.reloadplan) and the state machine's resume_master: which
instances stop, start or change, what waits for a restart (sync groups), and that a master
of the same router stays master from INIT at once (the daemon's side, in namespaces:
tests/netns/test_vrrp_reload.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import pytest

from l4lb.config.model import SyncGroupSettings
from l4lb.vrrp.fsm import AddVips, SendAdvert, SendGarp, State
from l4lb.vrrp.reloadplan import VrrpPlan, plan, same_router
from l4lb.vrrp.settings import VrrpSettings

from .test_vrrp_fsm import GARP5, make, notify


def inst(name: str, vrid: int = 51, **changes: object) -> VrrpSettings:
    base = VrrpSettings(name=name, interface="eth0", virtual_router_id=vrid,
                        vips=("192.0.2.100/24",))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_nothing_changed_is_an_empty_plan() -> None:
    running = [inst("VI_1"), inst("VI_2", 52)]
    result = plan(running, list(running))
    assert result == VrrpPlan() and result.empty and result.summary() == ""


def test_added_removed_and_changed_by_name_in_file_order() -> None:
    running = [inst("VI_1"), inst("VI_2", 52), inst("VI_3", 53)]
    new = [inst("VI_4", 54), inst("VI_2", 52, priority=90), inst("VI_1")]
    result = plan(running, new)
    assert (result.removed, result.added, result.changed) == (("VI_3",), ("VI_4",), ("VI_2",))
    assert not result.restart
    assert result.summary() == "vrrp: VI_4 added, VI_2 changed, VI_3 removed"


def test_sync_groups_wait_for_a_restart() -> None:
    running = [inst("VI_1", sync_group="G"), inst("VI_2", 52, sync_group="G"), inst("VI_3", 53)]
    groups = [SyncGroupSettings(name="G", instances=("VI_1", "VI_2"))]
    # a member changed: nothing is applied, not even the change to VI_3
    new = [inst("VI_1", sync_group="G", priority=50), inst("VI_2", 52, sync_group="G"),
           inst("VI_3", 53, priority=20)]
    result = plan(running, new, groups, groups)
    assert result.restart == "[[vrrp]] changed for a sync group member: VI_1"
    assert (result.removed, result.added, result.changed) == ((), (), ())
    assert result.summary() == ""
    # the group's own table changed
    other = [SyncGroupSettings(name="G", instances=("VI_1", "VI_2"), notify="/bin/true")]
    assert plan(running, running, groups, other).restart == "[[vrrp_sync_group]] changed"
    # an instance outside any group changes on its own
    result = plan(running, [*running[:2], inst("VI_3", 53, priority=20)], groups, groups)
    assert result.changed == ("VI_3",) and not result.restart


@pytest.mark.parametrize(("changes", "same"), [
    ({"priority": 50, "vips": ("192.0.2.100/24", "192.0.2.101/24")}, True),
    ({"advert_interval": 0.1, "unicast_peers": ("192.0.2.9",)}, True),
    ({"virtual_router_id": 52}, False),
    ({"interface": "eth1"}, False),
    ({"vips": ("2001:db8::100/64",)}, False),  # another address family: another router
])
def test_same_router(changes: dict[str, object], same: bool) -> None:
    assert same_router(inst("VI_1"), inst("VI_1", **changes)) is same


def test_resume_master_is_master_at_once_with_the_vips_and_an_advert() -> None:
    fsm, clock = make(State.INIT)
    actions = fsm.resume_master("reload: new settings, MASTER kept")
    assert fsm.state is State.MASTER
    assert actions == [AddVips(), SendAdvert(100), GARP5,
                       notify(State.MASTER, State.INIT, "reload: new settings, MASTER kept")]
    assert fsm.deadline == clock.now + 1_000_000  # the next advert, one interval on
    assert fsm.resume_master("again") == []  # only from INIT


def test_resume_master_in_a_fault_or_as_the_owner_is_a_start() -> None:
    fsm, _ = make(State.INIT)
    fsm.set_fault("eth0", True)
    fsm.resume_master("reload")
    assert fsm.state is State.FAULT
    owner, _ = make(State.INIT, priority=255)
    actions = owner.resume_master("reload")
    assert owner.state is State.MASTER
    assert "address owner" in owner.reason and SendGarp(5) in actions


def test_the_reload_text_names_an_instance_that_could_not_start() -> None:
    from l4lb.cli import _reload_text
    reply = {"changes": "vrrp: VI_2 added", "generation": 3, "restart_needed": [],
             "vrrp_errors": ["vrrp VI_2: cannot open eth9: No such device"]}
    assert _reload_text(reply, "/etc/l4lb.toml") == (
        "reloaded /etc/l4lb.toml: vrrp: VI_2 added (table generation 3)\n"
        "error: vrrp VI_2: cannot open eth9: No such device (not running; the next reload "
        "tries again)")


class FakeInstance:
    """Stands in for VrrpInstance in the daemon: records what the reload does with it."""

    log: ClassVar[list[str]] = []
    fail: ClassVar[set[str]] = set()

    def __init__(self, settings: VrrpSettings) -> None:
        self.settings = settings
        self.state = State.BACKUP
        self.vips_held = False

    async def start(self, resume: object = None) -> None:
        if self.settings.name in self.fail:
            from l4lb.vrrp.instance import VrrpError
            raise VrrpError(f"vrrp {self.settings.name}: cannot open eth0: gone")
        self.log.append(f"start {self.settings.name} resume={resume is not None}")

    async def stop(self, graceful: bool = True) -> None:
        self.log.append(f"stop {self.settings.name} graceful={graceful}")

    async def detach(self, drop: object = ()) -> None:
        self.log.append(f"detach {self.settings.name}")

    def set_tracking(self, **_: object) -> None:
        pass


VRRP = """
[[vrrp]]
name = "VI_1"
interface = "lo"
virtual_router_id = 51
vips = ["192.0.2.100/32"]
"""


def test_the_daemon_carries_out_the_plan_and_names_what_could_not_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from l4lb import daemon as daemon_module

    from .test_review6_reload import free_port, make_daemon, service, write

    monkeypatch.setattr(daemon_module, "VrrpInstance", FakeInstance)
    monkeypatch.setattr(daemon_module, "DigestCheck", None)  # never needed: asserted below
    FakeInstance.log, FakeInstance.fail = [], set()
    body = service("web", free_port(), ["127.0.0.1:9001"])
    path = write(tmp_path, body + VRRP)
    daemon, _ = make_daemon(path)
    daemon.digest_check = object()  # type: ignore[assignment]  # "already running"

    async def run() -> None:
        daemon.vrrp = [FakeInstance(s) for s in daemon.config.vrrp]  # type: ignore[misc]
        write(tmp_path, body + VRRP.replace("VI_1", "VI_2").replace("51", "52")
                        .replace(".100", ".101")
                        + VRRP.replace("vips", "priority = 90\nvips"))
        FakeInstance.fail = {"VI_2"}
        reply = await daemon.cmd_reload()
        assert reply["vrrp_errors"] == ["vrrp VI_2: vrrp VI_2: cannot open eth0: gone"]
        assert "vrrp: VI_2 added, VI_1 changed" in reply["changes"]
        assert [s.name for s in daemon.config.vrrp] == ["VI_1"]  # the next reload retries
        assert [i.settings.name for i in daemon.vrrp] == ["VI_1"]
        assert daemon.vrrp[0].settings.priority == 90
        assert FakeInstance.log == ["detach VI_1", "start VI_1 resume=True",
                                    "stop VI_2 graceful=False"]
        text = path.read_text()
        write(tmp_path, body + VRRP.replace("vips", "priority = 90\nvips"))
        reply = await daemon.cmd_reload()  # no instance changes: the old errors are not news
        assert "vrrp_errors" not in reply and reply["changes"] == "no change"
        path.write_text(text)
        FakeInstance.fail = set()
        reply = await daemon.cmd_reload()  # VI_2 in the file again: it is tried again
        assert "vrrp_errors" not in reply and reply["changes"] == "vrrp: VI_2 added"
        assert [i.settings.name for i in daemon.vrrp] == ["VI_2", "VI_1"]
    asyncio.run(run())
