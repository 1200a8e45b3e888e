"""A reload and [[vrrp_sync_group]]: like [[vrrp]], a changed group takes effect only after a
restart; the reload reports it and keeps the running groups and instances (no data plane, no
VRRP started: the daemon of test_review6_reload)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from .test_review6_reload import free_port, make_daemon, service, write

INSTANCES = """
[[vrrp]]
name = "VI_1"
interface = "lo"
virtual_router_id = 51
vips = ["192.0.2.100/32"]

[[vrrp]]
name = "VI_2"
interface = "lo"
virtual_router_id = 52
vips = ["192.0.2.101/32"]
"""


def group(notify: str) -> str:
    return f'\n[[vrrp_sync_group]]\nname = "G"\ninstances = ["VI_1", "VI_2"]\n' \
           f'notify = "{notify}"\n'


def test_a_changed_group_needs_a_restart(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    body = service("web", free_port(), ["127.0.0.1:9001"]) + INSTANCES
    path = write(tmp_path, body + group("/bin/true"))
    daemon, _ = make_daemon(path)
    running = daemon.config
    path.write_text(path.read_text().replace('"/bin/true"', '"/bin/echo"'))
    with caplog.at_level(logging.INFO, logger="l4lb"):
        result = daemon.reload()
    assert result["restart_needed"] == ["vrrp_sync_group"]
    assert "[[vrrp_sync_group]] changed (needs a restart; the running groups stay)" in \
        result["changes"]
    assert daemon.config.vrrp_sync_groups == running.vrrp_sync_groups
    assert daemon.config.vrrp_sync_groups[0].notify == "/bin/true"
    assert any("[[vrrp_sync_group]] changed: takes effect only after a restart" in
               r.getMessage() for r in caplog.records)


def test_joining_a_group_changes_the_instances_too(tmp_path: Path) -> None:
    path = write(tmp_path, service("web", free_port(), ["127.0.0.1:9001"]) + INSTANCES)
    daemon, _ = make_daemon(path)
    path.write_text(path.read_text() + group("/bin/true"))
    result = daemon.reload()
    assert set(result["restart_needed"]) == {"vrrp", "vrrp_sync_group"}
    assert daemon.config.vrrp_sync_groups == ()
    assert {v.sync_group for v in daemon.config.vrrp} == {None}


def test_an_unchanged_group_reloads_quietly(tmp_path: Path) -> None:
    path = write(tmp_path, service("web", free_port(), ["127.0.0.1:9001"]) + INSTANCES
                 + group("/bin/true"))
    daemon, _ = make_daemon(path)
    result = daemon.reload()
    assert result["restart_needed"] == [] and result["changes"] == "no change"
