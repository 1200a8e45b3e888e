"""How a sync group shows: `l4lb vrrp status` text, the metrics, the status page (server lines
and the page script's twin of them, run in node when it is installed)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from typing import Any

import pytest

from l4lb.display import vrrp_text
from l4lb.metrics import Exporter
from l4lb.statuspage import _SCRIPT, render_page, vrrp_lines

from .test_metrics import make_status, samples, scrape


def group_status() -> dict[str, Any]:
    return {"name": "G", "state": "FAULT", "reason": "VI_2: fault: interface eth1 down",
            "members": [
                {"name": "VI_1", "state": "FAULT", "reason": "sync group G: VI_2 is FAULT",
                 "waiting": False, "own_faults": [], "forced": "sync group G: VI_2 is FAULT"},
                {"name": "VI_2", "state": "FAULT", "reason": "fault: interface eth1 down",
                 "waiting": False, "own_faults": ["interface eth1 down"], "forced": None}],
            "notify": None, "tracking_weight": False,
            "last_transition": {"from": "MASTER", "to": "FAULT",
                                "reason": "VI_2: fault: interface eth1 down", "at": 1.0},
            "counters": {"transitions": 3, "forced": 2, "notify_runs": 0, "notify_errors": 0}}


def instance(name: str, state: str, reason: str, waiting: bool = False) -> dict[str, Any]:
    return {"name": name, "state": state, "priority": 100, "interface": "eth0", "vrid": 51,
            "version": 3, "mode": "multicast", "effective_priority": 100,
            "address": "10.0.0.1", "master": None, "vips": ["10.0.0.100/24"],
            "vips_held": False, "counters": {},
            "last_transition": {"from": "MASTER", "to": state, "reason": reason, "at": 1.0},
            "sync_group": {"name": "G", "waiting": waiting}}


def test_vrrp_status_text_shows_the_group_and_why_a_member_was_forced() -> None:
    text = vrrp_text({"table": {"generation": 1, "digest": "cc"},
                      "sync_groups": [group_status()],
                      "instances": [instance("VI_1", "FAULT", "sync group G: VI_2 is FAULT"),
                                    instance("VI_2", "FAULT", "fault: interface eth1 down")]})
    assert "vrrp sync group G: FAULT  (members VI_1 FAULT, VI_2 FAULT)" in text
    assert "  last transition: MASTER -> FAULT: VI_2: fault: interface eth1 down" in text
    assert "  VI_1: FAULT (sync group G: VI_2 is FAULT)" in text
    assert "  VI_2: FAULT (fault: interface eth1 down); own faults: interface eth1 down" in text
    assert "  last transition: MASTER -> FAULT: sync group G: VI_2 is FAULT" in text
    assert "  sync group G\n" in text + "\n"


def test_vrrp_status_text_shows_a_waiting_member() -> None:
    g = group_status()
    g["state"] = "BACKUP"
    g["members"][0].update(state="BACKUP", waiting=True, forced=None)
    g["members"][1].update(state="BACKUP", own_faults=[])
    text = vrrp_text({"table": {"generation": 1, "digest": "cc"}, "sync_groups": [g],
                      "instances": [instance("VI_1", "BACKUP", "startup", waiting=True)]})
    assert "(members VI_1 BACKUP (waiting), VI_2 BACKUP)" in text
    assert "  VI_2: BACKUP (fault: interface eth1 down)\n" in text  # every member, no faults
    assert "  sync group G: ready, waiting for the other members" in text


def test_sync_group_metrics() -> None:
    status = make_status()
    status["vrrp_sync_groups"] = [group_status()]
    status["vrrp_sync_groups"][0]["members"][1]["waiting"] = True
    fam = scrape(Exporter(lambda: copy.deepcopy(status), process=False))
    state = samples(fam, "l4lb_vrrp_sync_group_state")
    assert state[(("group", "G"), ("state", "FAULT"))] == 1.0
    assert state[(("group", "G"), ("state", "MASTER"))] == 0.0
    assert samples(fam, "l4lb_vrrp_sync_group_member_waiting") == {
        (("group", "G"), ("instance", "VI_1")): 0.0,
        (("group", "G"), ("instance", "VI_2")): 1.0}
    assert samples(fam, "l4lb_vrrp_sync_group_events_total")[
        (("group", "G"), ("kind", "forced"))] == 2.0


def page_status() -> dict[str, Any]:
    return {"version": "1", "pid": 1, "started": 0.0, "workers": 1,
            "table": {"generation": 1, "digest": "cc"}, "services": [],
            "vrrp_sync_groups": [group_status()],
            "vrrp": [instance("VI_1", "FAULT", "sync group G: VI_2 is <FAULT>"),
                     {**instance("VI_3", "MASTER", "startup"), "sync_group": None}]}


def test_status_page_shows_groups_and_instances() -> None:
    status = page_status()
    assert vrrp_lines(status) == [
        "vrrp sync group G: FAULT (VI_2: fault: interface eth1 down) \u00b7 members VI_1 FAULT, "
        "VI_2 FAULT",
        "vrrp VI_1: FAULT (sync group G: VI_2 is <FAULT>) \u00b7 sync group G",
        "vrrp VI_3: MASTER (startup)"]
    page = render_page(status, now=10.0)
    assert '<p class="vrrp">vrrp VI_1: FAULT (sync group G: VI_2 is &lt;FAULT&gt;)' in page
    assert "members VI_1 FAULT, VI_2 FAULT</p>" in page


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_page_script_builds_the_same_lines() -> None:
    body = re.search(r"// @VRRP_LINES@.*?\n(.*)// @END_VRRP_LINES@", _SCRIPT, re.S)
    assert body is not None
    status = page_status()
    program = body.group(1) + f"console.log(JSON.stringify(vrrpLines({json.dumps(status)})));"
    out = subprocess.run(["node", "-e", program], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    assert json.loads(out) == vrrp_lines(status)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_page_script_redraws_the_vrrp_lines(tmp_path: Any) -> None:
    from .test_review6_views import _DOM_STUB

    report = r"""
pending.shift()();
setImmediate(function () { setImmediate(function () {
  process.stdout.write(JSON.stringify(byId.vrrp.children.map(function (p) {
    return [p.className, p.textContent]; })));
}); });
"""
    first = {"time": 100.0, "status": {**page_status(), "vrrp_sync_groups": [], "vrrp": []},
             "health": None, "drain_left": {}}
    second = {"time": 102.0, "status": page_status(), "health": None, "drain_left": {}}
    path = tmp_path / "page.js"
    path.write_text(_DOM_STUB + _SCRIPT + report)
    done = subprocess.run(["node", str(path)], input=json.dumps({"first": first,
                                                                 "second": second}),
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [["vrrp", line] for line in vrrp_lines(page_status())]
