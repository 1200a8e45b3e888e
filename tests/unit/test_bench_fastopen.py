"""The benchmark's Fast Open targets: the sysctl is set and restored, configs carry the option."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import fastopen, peers, plan

FRONT = peers.Ports(bulk=1, http=2, idle=3, udp=4)
BACK = peers.Ports(bulk=11, http=12, idle=13, udp=14)


def test_server_bit_is_set_inside_and_restored_after(tmp_path: Path) -> None:
    sysctl = tmp_path / "tcp_fastopen"
    sysctl.write_text("1\n")
    with fastopen.server_bit(True, sysctl) as notes:
        assert sysctl.read_text() == "3\n"
    assert sysctl.read_text() == "1\n"
    assert notes == ["TCP Fast Open: net.ipv4.tcp_fastopen was 1, set to 3 for the run "
                     "(the backends' server bit), restored afterwards"]


def test_server_bit_is_restored_when_the_run_fails(tmp_path: Path) -> None:
    sysctl = tmp_path / "tcp_fastopen"
    sysctl.write_text("1025\n")  # other bits are kept
    with pytest.raises(RuntimeError), fastopen.server_bit(True, sysctl):
        assert sysctl.read_text() == "1027\n"
        raise RuntimeError("run failed")
    assert sysctl.read_text() == "1025\n"


def test_server_bit_untouched_when_not_needed_or_already_set(tmp_path: Path) -> None:
    sysctl = tmp_path / "tcp_fastopen"
    sysctl.write_text("1\n")
    with fastopen.server_bit(False, sysctl) as notes:
        assert sysctl.read_text() == "1\n"
    assert notes == []
    sysctl.write_text("7\n")
    with fastopen.server_bit(True, sysctl) as notes:
        assert sysctl.read_text() == "7\n"
    assert notes == ["TCP Fast Open: net.ipv4.tcp_fastopen = 7 already allows it"]


def test_server_bit_that_cannot_be_set_is_reported(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sysctl = tmp_path / "tcp_fastopen"
    sysctl.write_text("1\n")

    def refuse(self: Path, *args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_text", refuse)
    with fastopen.server_bit(True, sysctl) as notes:
        assert sysctl.read_text() == "1\n"
    assert notes == ["TCP Fast Open: cannot set net.ipv4.tcp_fastopen = 3 (Permission denied; "
                     "needs root): l4lb-tfo ran without it"]


def test_missing_sysctl_is_reported(tmp_path: Path) -> None:
    with fastopen.server_bit(True, tmp_path / "absent") as notes:
        pass
    assert len(notes) == 1 and "cannot read" in notes[0]


def test_tfo_targets_run_only_new_connections() -> None:
    by_name = {w.name: w for w in plan.workloads(False, (300_000,), 10)}
    for target in plan.TFO_TARGETS:
        assert [n for n, w in by_name.items() if plan.supports(target, w)] == ["newconn"]


def test_configs_enable_fast_open_on_the_http_leg_only() -> None:
    l4lb = peers.l4lb_config(FRONT, BACK, "/tmp/x.sock", udp=False, http_fast_open=True)
    sections = l4lb.split("[[services]]")
    http = next(s for s in sections if 'name = "http"' in s)
    assert "backend_fast_open = true" in http and "defer_accept = true" in http
    assert l4lb.count("backend_fast_open") == 1 and l4lb.count("defer_accept") == 1
    assert "backend_fast_open" not in peers.l4lb_config(FRONT, BACK, "/tmp/x.sock", udp=False)

    ngx = peers.nginx_http_backend_config(12, "/tmp/p")
    assert f"listen 127.0.0.1:12 backlog=4096 fastopen={peers.TFO_QUEUE};" in ngx
