"""Status page HTML: escaping, tables, states, the embedded JSON and the CSP hashes."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser
from typing import Any

from l4lb.display import backend_rows
from l4lb.statuspage import (
    CONTENT_SECURITY_POLICY,
    drain_left,
    human_bytes,
    render_page,
    status_json,
)

EVIL = '</script><script>alert("x")</script><!--'


def make_status() -> dict[str, Any]:
    def backend(address: str, name: str, state: str, backup: bool = False,
                probe: float | None = None) -> dict[str, Any]:
        return {"service": "web", "address": address, "name": name, "state": state,
                "weight": 5, "effective_weight": 5 if state == "up" else 0, "backup": backup,
                "conns_total": 1234, "conns_active": 3, "connect_failures": 9,
                "bytes_to_backend": 2048, "bytes_to_client": 3 * 1024 * 1024,
                "drain_deadline": None, "probe_latency": probe}

    return {"version": "0.9.0", "pid": 77, "config": "/etc/l4lb.toml",
            "started": 1000.0, "workers": 4, "table": {"generation": 12, "digest": "beef"},
            "services": [{"name": "web", "protocol": "tcp", "scheduler": "maglev",
                          "listen": ["127.0.0.1:80", "[::1]:80"],
                          "counters": {"conns_total": 1234, "conns_active": 3, "rejected": 2,
                                       "no_backend": 1, "bytes_to_backend": 2048,
                                       "bytes_to_client": 3145728, "accept_errors": 0},
                          "backends": [backend("127.0.0.1:9001", "b1", "up", probe=0.0012),
                                       backend("127.0.0.1:9002", EVIL, "down", probe=0.25),
                                       backend("127.0.0.1:9003", "b3", "drain"),
                                       backend("[::1]:9004", "[::1]:9004", "maint",
                                               backup=True)]}]}


class Page(HTMLParser):
    """Collects backend rows, their cells, state badges, scripts and styles."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.styles: list[str] = []
        self.elements: list[str] = []
        self._row: dict[str, Any] | None = None
        self._in: str | None = None
        self._attrs: dict[str, str | None] = {}
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(tag)
        a = dict(attrs)
        if tag == "tr" and "data-backend" in a:
            self._row = {"backend": a["data-backend"], "state": a["data-state"], "cells": [],
                         "badge": None}
        elif tag == "td" and self._row is not None:
            self._row["cells"].append("")
        elif tag == "span" and self._row is not None and "state" in (a.get("class") or ""):
            self._row["badge"] = a.get("class")
        elif tag in ("script", "style"):
            self._in, self._attrs, self._text = tag, a, ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        elif tag == "script" and self._in == "script":
            self.scripts.append((self._attrs, self._text))
            self._in = None
        elif tag == "style" and self._in == "style":
            self.styles.append(self._text)
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in:
            self._text += data
        elif self._row is not None and self._row["cells"]:
            self._row["cells"][-1] += data


def parse(html_text: str) -> Page:
    page = Page()
    page.feed(html_text)
    page.close()
    return page


def test_one_row_per_backend_with_state_badges_and_numbers() -> None:
    page = parse(render_page(make_status(), now=1000.0 + 3725))
    assert [(r["backend"], r["state"], r["badge"]) for r in page.rows] == [
        ("127.0.0.1:9001", "up", "state state-up"),
        ("127.0.0.1:9002", "down", "state state-down"),
        ("127.0.0.1:9003", "drain", "state state-drain"),
        ("[::1]:9004", "maint", "state state-maint")]
    first = page.rows[0]["cells"]
    assert first[:3] == ["127.0.0.1:9001", "b1", "up"]
    assert first[3:] == ["5", "5", "3", "\u2013", "1234", "9", "2.0 KiB", "3.0 MiB", "\u2013",
                         "\u2013", "1.2 ms"]
    assert page.rows[1]["cells"][-1] == "250 ms"
    assert page.rows[2]["cells"][-1] == ""  # no probe yet, or no health checks
    assert page.rows[3]["cells"][2] == "maintbackup"
    assert page.rows[3]["cells"][1] == ""  # a name equal to an address is not repeated


def test_every_string_is_escaped() -> None:
    text = render_page(make_status(), now=2000.0)
    assert EVIL not in text
    assert "<script>alert" not in text
    page = parse(text)
    assert page.rows[1]["cells"][1] == EVIL  # shown as text, exactly
    assert page.elements.count("script") == 2  # the data block and the page script only


def test_embedded_json_is_the_status_document() -> None:
    status = make_status()
    page = parse(render_page(status, {"probes": 3}, now=5000.0))
    data = [text for attrs, text in page.scripts if attrs.get("type") == "application/json"]
    assert len(data) == 1
    assert "</" not in data[0]
    assert json.loads(data[0]) == {"time": 5000.0, "status": status, "health": {"probes": 3},
                                   "drain_left": {}, "checks": {}, "agents": {}, "queues": {}}


def test_status_json_document() -> None:
    status = make_status()
    doc = json.loads(status_json(status, None, now=12.5))
    assert doc == {"time": 12.5, "status": status, "health": None, "drain_left": {}, "checks": {},
                   "agents": {}, "queues": {}}


def with_deadline(deadline: float) -> dict[str, Any]:
    """make_status() with a drain deadline armed on 127.0.0.1:9003 (state drain)."""
    status = make_status()
    status["services"][0]["backends"][2]["drain_deadline"] = deadline
    return status


def test_drain_deadline_shows_the_time_left_next_to_the_state() -> None:
    now = 50_000.0
    status = with_deadline(now + 272)
    text = render_page(status, now=now)
    page = parse(text)
    drain = page.rows[2]
    assert (drain["backend"], drain["state"], drain["badge"]) == \
        ("127.0.0.1:9003", "drain", "state state-drain")
    assert drain["cells"][2] == "drain4m32s"  # badge, then the time left
    assert '<span class="tag deadline"' in text
    assert [r["cells"][2] for r in page.rows if r is not drain] == ["up", "down", "maintbackup"]
    # The same text as `l4lb backends` ("drain, 4m32s left"): one formatter for both.
    assert backend_rows(status["services"][0]["backends"], now=now)[2][2] == "drain, 4m32s left"


def test_drain_deadline_in_the_document_for_the_page_script() -> None:
    now = 50_000.0
    status = with_deadline(now + 3700.2)
    doc = json.loads(status_json(status, None, now=now))
    assert doc["drain_left"] == {"web": {"127.0.0.1:9003": "1h1m41s"}}  # whole seconds, up
    page = parse(render_page(status, now=now))
    data = [text for attrs, text in page.scripts if attrs.get("type") == "application/json"]
    assert json.loads(data[0])["drain_left"] == doc["drain_left"]
    assert page.rows[2]["cells"][2] == "drain1h1m41s"


def test_a_passed_drain_deadline_shows_zero() -> None:
    now = 50_000.0
    status = with_deadline(now - 3)  # the daemon closes what is left within a second
    assert parse(render_page(status, now=now)).rows[2]["cells"][2] == "drain0s"
    assert drain_left(status, now) == {"web": {"127.0.0.1:9003": "0s"}}


def test_drain_left_keys_are_escaped_in_the_html() -> None:
    status = with_deadline(100.0)
    status["services"][0]["name"] = EVIL
    text = render_page(status, now=40.0)
    assert EVIL not in text
    assert drain_left(status, 40.0) == {EVIL: {"127.0.0.1:9003": "1m"}}
    assert parse(text).rows[2]["cells"][2] == "drain1m"


def test_summary_shows_uptime_generation_and_health() -> None:
    text = render_page(make_status(), {"backends": 4, "probes": 99, "failed": 5,
                                       "in_flight": 2}, now=1000.0 + 2 * 86400 + 3 * 3600)
    assert "up 2d 3h" in text
    assert "table generation 12 (beef)" in text
    assert "health checks: 4 backends, 99 probes, 5 failed, 2 in flight" in text
    assert "rejected 2 \u00b7 no backend 1 \u00b7 accept errors 0" in text


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_csp_allows_exactly_the_inline_script_and_style() -> None:
    page = parse(render_page(make_status(), now=1.0))
    code = [text for attrs, text in page.scripts if "type" not in attrs]
    assert len(code) == 1 and len(page.styles) == 1
    policy = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert policy["script-src"] == _sha256(code[0])
    assert policy["style-src"] == _sha256(page.styles[0])
    assert policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'"


def test_no_external_assets() -> None:
    text = render_page(make_status(), now=1.0)
    assert not re.search(r"""(src|href)\s*=""", text)
    assert "http://" not in text and "https://" not in text


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 1536, 5 * 1024**3, 2 * 1024**6)] == \
        ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 GiB", "2048.0 PiB"]


def test_latency_text_matches_the_page_script() -> None:
    from l4lb.statuspage import latency_text

    assert [latency_text(v) for v in (None, 0.0004, 0.0123, 0.9996, 1.5)] == \
        ["", "0.4 ms", "12 ms", "1000 ms", "1.50 s"]
