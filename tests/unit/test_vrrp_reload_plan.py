"""A reload's VRRP plan (l4lb.vrrp.reloadplan) and the state machine's resume_master: which
instances stop, start or change, what waits for a restart (sync groups), and that a master
of the same router stays master from INIT at once (the daemon's side, in namespaces:
tests/netns/test_vrrp_reload.py)."""

from __future__ import annotations

import dataclasses

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
