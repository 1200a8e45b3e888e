"""A reload that fails after its publish puts back the per-service options that are not in the
table (here proxy_protocol): found by review, the rollback re-published only when the table's
generation had changed, so the data plane kept sending the new header version while the daemon
reported the old one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from l4lb.control import ControlError

from . import test_review6_reload as r6


class PPFake(r6.FakeDataplane):
    def __init__(self) -> None:
        super().__init__()
        self.pp: dict[int, int] = {}

    def set_proxy_protocol(self, sid: int, version: int) -> None:
        self.pp[sid] = version

    def proxy_protocol(self, sid: int) -> int:
        return self.pp.get(sid, 0)


def test_rollback_restores_proxy_protocol(tmp_path: Path, monkeypatch: Any) -> None:
    a, b = r6.free_port(), r6.free_port()
    monkeypatch.setattr(r6, "FakeDataplane", PPFake)
    path = r6.write(tmp_path, r6.service("web", a, ["127.0.0.1:9001"], 'proxy_protocol = "v1"'))
    daemon, dp = r6.make_daemon(path)
    sid = daemon.builder.service_ids()["web"]
    assert dp.pp[sid] == 1
    gen = daemon.generation
    # same service, one more listen address, and v2 instead of v1
    text = path.read_text().replace(f'listen = ["127.0.0.1:{a}"]',
                                    f'listen = ["127.0.0.1:{a}", "127.0.0.1:{b}"]')
    path.write_text(text.replace('"v1"', '"v2"'))
    dp.fail_add_listener = True
    with pytest.raises(ControlError):
        daemon.reload()
    assert daemon.generation == gen  # the same table: only the side option changed
    assert daemon.config.services[0].proxy_protocol == "v1"   # rolled back
    assert dp.pp[sid] == 1, f"data plane still sends v{dp.pp[sid]}"


class APFake(r6.FakeDataplane):
    def __init__(self) -> None:
        super().__init__()
        self.ap: dict[int, int] = {}
        self.calls: list[tuple[int, int]] = []

    def set_accept_proxy(self, sid: int, timeout_ms: int) -> None:
        self.ap[sid] = timeout_ms
        self.calls.append((sid, timeout_ms))

    def accept_proxy(self, sid: int) -> int:
        return self.ap.get(sid, 0)


@pytest.mark.parametrize(("before", "after", "want"), [
    ("accept_proxy = true", "", 5000),  # a reload turning it off, rolled back: still on
    ("", "accept_proxy = true", 0),  # turning it on, rolled back: still off
    ('accept_proxy = true\naccept_proxy_timeout = "1s"', "accept_proxy = true", 1000),
])
def test_rollback_restores_accept_proxy(tmp_path: Path, monkeypatch: Any, before: str,
                                        after: str, want: int) -> None:
    a, b = r6.free_port(), r6.free_port()
    monkeypatch.setattr(r6, "FakeDataplane", APFake)
    path = r6.write(tmp_path, r6.service("web", a, ["127.0.0.1:9001"], before))
    daemon, dp = r6.make_daemon(path)
    sid = daemon.builder.service_ids()["web"]
    assert dp.ap.get(sid, 0) == want
    text = path.read_text().replace(f'listen = ["127.0.0.1:{a}"]',
                                    f'listen = ["127.0.0.1:{a}", "127.0.0.1:{b}"]')
    path.write_text(text.replace(before, after) if before else
                    text.replace('name = "web"', f'name = "web"\n{after}'))
    dp.fail_add_listener = True
    dp.calls.clear()
    with pytest.raises(ControlError):
        daemon.reload()
    assert dp.ap.get(sid, 0) == want
    # the reload did reach the data plane before it failed, and the rollback undid it
    assert len(dp.calls) == 2 and dp.calls[-1] == (sid, want) and dp.calls[0] != dp.calls[1]
