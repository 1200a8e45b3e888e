"""Unit tests of how a backend's health check detail is shown: the snapshot's view, `l4lb status`
and `l4lb backends` text, the status page's tag and tooltip, and the metrics.

Pure: the dampener gets its times as arguments, display and page functions get `now`.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from l4lb.display import backends_text, check_lines, check_note, check_progress, status_text
from l4lb.health.dampener import Dampener
from l4lb.health.settings import HealthSettings
from l4lb.metrics import Exporter
from l4lb.statuspage import checks, render_page

HS = HealthSettings(rise=2, fall=3)
TO_WALL = 1_000_000.0  # monotonic t is unix time TO_WALL + t in these tests


def view_after(probes: list[bool], settings: HealthSettings = HS, start: float = 10.0,
               reason: str = "connect refused") -> dict[str, Any]:
    """The `check` view of a dampener created at `start` after one probe a second."""
    d = Dampener(settings, start)
    for i, ok in enumerate(probes, 1):
        d.probe(ok, "connect ok" if ok else reason, start + i)
    now = start + len(probes)
    view = d.view(now, TO_WALL)
    snap = d.snapshot(now)  # the view holds what the snapshot holds
    assert (view["status"], view["successes"], view["failures"], view["since"],
            view["change_reason"] or "", view["last_reason"] or "") == \
        (snap.describe(), snap.successes, snap.failures, snap.since + TO_WALL,
         snap.change_reason, snap.last_reason)
    return view


def test_view_of_a_new_unconfirmed_backend() -> None:
    view = view_after([])
    assert view == {"health": "up", "status": "UP (unconfirmed)", "confirmed": False,
                    "successes": 0, "failures": 0, "rise": 2, "fall": 3,
                    "since": TO_WALL + 10.0, "change_reason": None, "last_result": None,
                    "last_reason": None, "last_probe": None, "in_start_period": False}
    assert check_progress(view) == "unconfirmed"
    assert check_note(view, TO_WALL + 20) == ""


def test_view_going_down_then_down_then_going_up() -> None:
    going_down = view_after([True, False])
    assert (going_down["health"], going_down["failures"], going_down["last_result"]) == \
        ("up", 1, "failed")
    assert check_progress(going_down) == "going down 1/3"
    # an UP backend whose last probe failed gets a note, counted from its creation
    assert check_note(going_down, TO_WALL + 15) == \
        "UP for 0m5s; last probe 0m3s ago failed: connect refused"

    down = view_after([True, False, False, False])
    assert down["health"] == "down" and down["since"] == TO_WALL + 14.0
    assert down["change_reason"] == "connect refused (3/3 probes failed)"
    assert check_progress(down) == ""
    assert check_note(down, TO_WALL + 74.0) == ("DOWN for 1m0s: connect refused (3/3 probes "
                                                "failed); last probe 1m0s ago failed: connect "
                                                "refused")

    rising = view_after([True, False, False, False, True])
    assert check_progress(rising) == "going up 1/2"
    assert rising["last_result"] == "passed" and rising["last_reason"] == "connect ok"
    assert check_note(rising, TO_WALL + 15).endswith("last probe 0m0s ago passed: connect ok")

    back_up = view_after([True, False, False, False, True, True])
    assert back_up["change_reason"] == "connect ok (2/2 probes passed)"
    assert check_progress(back_up) == "" and check_note(back_up, TO_WALL + 16) == ""


def test_passive_down_keeps_its_reason_and_a_down_start_says_no_probe_yet() -> None:
    d = Dampener(HealthSettings(max_fails=2, fail_timeout=5.0), 0.0)
    d.probe(True, "connect ok", 1.0)
    d.passive_failures(2, 2.0)
    view = d.view(2.0, 0.0)
    assert view["change_reason"] == "2 failed connects within 5s (passive, max_fails 2)"
    assert view["last_result"] == "passed"  # the last probe passed; the data plane disagreed
    assert check_note(view, 3.0).startswith("DOWN for 0m1s: 2 failed connects")

    fresh = Dampener(HealthSettings(initial_state="down"), 0.0).view(0.0, 0.0)
    assert check_note(fresh, 7.0) == "DOWN for 0m7s; no probe has finished yet"


def test_start_period_shows_in_the_view() -> None:
    view = view_after([False], HealthSettings(start_period=30.0))
    assert view["in_start_period"] is True and view["failures"] == 0
    assert view["last_result"] == "failed"


def backend(address: str, state: str, check: dict[str, Any] | None) -> dict[str, Any]:
    return {"service": "web", "address": address, "name": address, "state": state,
            "weight": 1, "effective_weight": 1 if state == "up" else 0, "backup": False,
            "conns_total": 0, "conns_active": 0, "connect_failures": 0, "bytes_to_backend": 0,
            "bytes_to_client": 0, "drain_deadline": None, "probe_latency": None, "check": check}


def backends() -> list[dict[str, Any]]:
    return [backend("10.0.1.1:80", "up", view_after([True, True])),
            backend("10.0.1.2:80", "up", view_after([True, False])),
            backend("10.0.1.3:80", "down", view_after([True, False, False, False])),
            backend("10.0.1.4:80", "up", None)]


def test_backends_text_puts_progress_in_state_and_notes_under_the_table() -> None:
    now = TO_WALL + 20
    text = backends_text(backends(), now=now)
    lines = text.splitlines()
    rows = {line.split()[0]: line for line in lines[1:5]}
    assert "up, going down 1/3" in rows["10.0.1.2:80"]
    assert "going" not in rows["10.0.1.1:80"] and "going" not in rows["10.0.1.4:80"]
    assert lines[5:] == check_lines(backends(), now) == [
        "10.0.1.2:80: UP for 0m10s; last probe 0m8s ago failed: connect refused",
        "10.0.1.3:80: DOWN for 0m6s: connect refused (3/3 probes failed); last probe 0m6s "
        "ago failed: connect refused"]


def status(bs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version": "1", "pid": 1, "config": "x.toml", "workers": 1, "started": TO_WALL,
            "table": {"generation": 1, "digest": "d"},
            "services": [{"name": "web", "protocol": "tcp", "scheduler": "round_robin",
                          "listen": ["127.0.0.1:80"], "counters": {}, "backends": bs}]}


def test_status_text_has_the_notes_of_each_service() -> None:
    text = status_text(status(backends()))
    assert "  10.0.1.3:80: DOWN for " in text
    assert "(3/3 probes failed)" in text
    assert "10.0.1.1:80: " not in text


def test_status_page_tag_and_tooltip() -> None:
    now = TO_WALL + 20
    st = status(backends())
    assert checks(st, now) == {"web": {
        "10.0.1.2:80": ["going down 1/3", check_note(st["services"][0]["backends"][1]["check"],
                                                     now)],
        "10.0.1.3:80": ["", check_note(st["services"][0]["backends"][2]["check"], now)]}}
    page = render_page(st, now=now)
    assert '<span class="tag check">going down 1/3</span>' in page
    assert ('<span class="state state-down" title="DOWN for 0m6s: connect refused (3/3 probes '
            'failed); last probe 0m6s ago failed: connect refused">down</span>') in page
    # the script draws the same from the document (checked in a browser by
    # tests/integration/test_statuspage_browser.py)
    assert "doc.checks" in page


def test_status_page_escapes_a_reason() -> None:
    evil = view_after([True, False, False, False], reason='<img src=x onerror="x">')
    page = render_page(status([backend("10.0.1.9:80", "down", evil)]), now=TO_WALL + 20)
    assert "<img" not in page
    assert "&lt;img src=x onerror=&quot;x&quot;&gt;" in page


def metric(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == name:
                return {tuple(sorted(s.labels.items())): s.value for s in fam.samples}
    return {}


@pytest.fixture
def scraped() -> str:
    exporter = Exporter(lambda: status(backends()), process=False)
    return exporter.render(exporter.read()).decode()


def test_metrics_of_checked_backends(scraped: str) -> None:
    def key(address: str, **extra: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted({"service": "web", "backend": address, "name": address,
                             **extra}.items()))

    since = metric(scraped, "l4lb_backend_health_since_timestamp_seconds")
    assert since == {key("10.0.1.1:80"): TO_WALL + 10, key("10.0.1.2:80"): TO_WALL + 10,
                     key("10.0.1.3:80"): TO_WALL + 14}  # the unchecked backend has none
    consecutive = metric(scraped, "l4lb_backend_check_consecutive")
    assert consecutive[key("10.0.1.2:80", result="failed")] == 1
    assert consecutive[key("10.0.1.3:80", result="failed")] == 0  # reset by the change
    assert consecutive[key("10.0.1.1:80", result="passed")] == 0
    last = metric(scraped, "l4lb_backend_last_check_passed")
    assert last == {key("10.0.1.1:80"): 1, key("10.0.1.2:80"): 0, key("10.0.1.3:80"): 0}


def test_no_checked_backend_no_check_metrics() -> None:
    plain = [backend("10.0.1.4:80", "up", None)]
    exporter = Exporter(lambda: status(plain), process=False)
    text = exporter.render(exporter.read()).decode()
    assert "l4lb_backend_check_consecutive" not in text
    assert "l4lb_backend_health_since_timestamp_seconds" not in text
    assert "l4lb_backend_up{" in text


def test_the_check_metrics_are_documented(scraped: str) -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "observability.md").read_text()
    for name in ("l4lb_backend_health_since_timestamp_seconds",
                 "l4lb_backend_check_consecutive", "l4lb_backend_last_check_passed"):
        assert name in scraped
        assert f"| `{name}` | gauge |" in doc, name
