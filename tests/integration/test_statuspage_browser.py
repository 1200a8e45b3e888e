"""The status page in headless Chromium: the script's tables, states, rates, and a screenshot."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from l4lb import httpserver
from l4lb.httpserver import HttpServer

from .loopthread import GrowingStatus, LoopThread

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="needs headless Chromium: apt-get install chromium")

CONN_RATE = 1_000_000.0  # sessions/s of backend alpha in the fake snapshot (large: exact rates)
BYTE_RATE = 3 * 1024 * 1024.0  # bytes/s to the client of backend alpha
DRAIN_TIMEOUT = 300.0  # seconds from the fake snapshot's start to gamma's drain deadline


BETA_CHECK = {"health": "down", "status": "DOWN, going up (1/2)", "confirmed": True,
              "successes": 1, "failures": 0, "rise": 2, "fall": 3,
              "change_reason": "connect refused (3/3 probes failed)", "last_result": "passed",
              "last_reason": "connect ok", "in_start_period": False}


@pytest.fixture
def page_url() -> Iterator[tuple[str, GrowingStatus]]:
    lt = LoopThread()
    status = GrowingStatus(conn_rate=CONN_RATE, byte_rate=BYTE_RATE)
    health = {"backends": 4, "probes": 8, "failed": 1, "in_flight": 0}

    def snapshot() -> dict[str, Any]:  # gamma (127.0.0.1:9003) has a drain deadline armed
        result = status()
        for b in result["services"][0]["backends"]:
            b["drain_deadline"] = status.t0 + DRAIN_TIMEOUT if b["name"] == "gamma" else None
            # beta is DOWN, one passed probe toward rise 2 (its tag), with its reason (tooltip)
            b["check"] = BETA_CHECK | {"since": status.t0, "last_probe": status.t0} \
                if b["name"] == "<b>beta</b>" else None
        svc = result["services"][0]  # a queue for full backends: its line under the heading
        svc["tcp_options"] = {"queue_timeout": 5.0, "max_queue": 10}
        svc["counters"] |= {"queued_now": 1, "queued_total": 5, "queue_timeouts": 1,
                            "queue_wait_ms": 400}
        return result

    server: HttpServer = lt.run(httpserver.start("127.0.0.1:0", snapshot, refresh=1.0,
                                                 health=lambda: health, clock=status.clock))
    try:
        yield f"http://127.0.0.1:{server.addresses[0][1]}/", status
    finally:
        lt.run(server.close())
        lt.close()


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           "--window-size=1280,800", "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False,
                          stdin=subprocess.DEVNULL)


class Dom(HTMLParser):
    """Backend rows (cells, badge class) and the #services / #freshness attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.foot: list[str] = []
        self.attrs_of: dict[str, dict[str, str | None]] = {}
        self.text_of: dict[str, str] = {}
        self._row: dict[str, Any] | None = None
        self._cells: list[str] | None = None
        self._in_foot = False
        self._id: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.attrs_of[str(a["id"])] = a
            self._id = str(a["id"])
            self.text_of[self._id] = ""
        if tag == "tfoot":
            self._in_foot = True
        if tag == "tr" and "data-backend" in a:
            self._row = {"backend": a["data-backend"], "state": a["data-state"], "badge": None}
            self._cells = []
        elif tag == "tr" and self._in_foot:
            self._cells = []
        elif tag == "td" and self._cells is not None:
            self._cells.append("")
        elif tag == "span" and self._row is not None and "state-" in (a.get("class") or ""):
            self._row["badge"] = a.get("class")
            self._row["title"] = a.get("title")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._cells is not None:
            if self._row is not None:
                self._row["cells"] = self._cells
                self.rows.append(self._row)
            else:
                self.foot = self._cells
            self._row, self._cells = None, None
        if tag == "tfoot":
            self._in_foot = False
        if tag == "p":
            self._id = None

    def handle_data(self, data: str) -> None:
        if self._cells:
            self._cells[-1] += data
        if self._id is not None:
            self.text_of[self._id] += data


def number(text: str) -> float:
    return float(text.replace(",", ""))


def test_script_renders_backends_states_and_rates(tmp_path: Path,
                                                   page_url: tuple[str, GrowingStatus]) -> None:
    url, status = page_url
    result = chromium(tmp_path, "--dump-dom", url)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = Dom()
    dom.feed(result.stdout)
    # The script replaced the server's tables after fetching /status.json at least twice.
    assert status.calls >= 3, "the page script did not fetch /status.json"
    assert dom.attrs_of["services"]["data-rates"] == "yes"
    assert dom.text_of["freshness"].startswith("updated ")
    assert [(r["backend"], r["state"], r["badge"]) for r in dom.rows] == [
        ("127.0.0.1:9001", "up", "state state-up"),
        ("127.0.0.1:9002", "down", "state state-down"),
        ("127.0.0.1:9003", "drain", "state state-drain"),
        ("[::1]:9004", "maint", "state state-maint")]
    alpha, beta, gamma, delta = (r["cells"] for r in dom.rows)
    assert alpha[1] == "alpha" and beta[1] == "<b>beta</b>"  # a name is text, never markup
    assert delta[2] == "maintbackup" and alpha[2] == "up"
    # The health check's progress next to beta's badge, and why it is DOWN as its tooltip
    assert beta[2] == "downgoing up 1/2"
    title = dom.rows[1]["title"]
    assert title.startswith("DOWN for 0m")
    assert ": connect refused (3/3 probes failed); last probe 0m" in title
    assert "ago passed: connect ok" in title and dom.rows[0]["title"] is None
    # The drain deadline's time left, next to the badge ("drain" + "4m55s"), as of the last
    # document the script drew.
    left = re.fullmatch(r"drain(?:(\d+)m)?(?:(\d+)s)?", gamma[2])
    assert left is not None and left.group(1) is not None, gamma[2]
    seconds = 60 * int(left.group(1)) + int(left.group(2) or 0)
    assert DRAIN_TIMEOUT - 60 < seconds <= DRAIN_TIMEOUT
    # Columns: 5 active, 6 conn/s, 7 total, 8 failures, 11 to-backend/s, 12 to-client/s.
    assert number(alpha[6]) == pytest.approx(CONN_RATE, rel=0.001)
    assert number(beta[6]) == 0 and number(beta[8]) == 5
    assert alpha[13] == "3.4 ms" and beta[13] == ""  # the Probe column, drawn by the script
    rate, unit = alpha[12].split()
    assert unit == "MiB/s" and float(rate) == pytest.approx(BYTE_RATE / 2**20, rel=0.001)
    assert number(dom.foot[6]) == pytest.approx(CONN_RATE, rel=0.001)  # the service's rate
    assert "4 backends, 8 probes, 1 failed" in dom.text_of["health"]
    # the queue line of `l4lb status`, drawn by the script from the document's `queues`
    assert re.findall(r'<p class="summary queue">([^<]*)</p>', result.stdout) == [
        "queue 1 waiting, 5 queued in all, 1 timed out, mean wait 100 ms"]


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and unfiltered rows (RGB or RGBA, 8 bit, not interlaced)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = prev[i], prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + left) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + up) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif ftype == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line if channels == 3 else
                          b"".join(line[i:i + 3] for i in range(0, stride, 4))))
        prev = line
    return width, height, rows


def count_colour(rows: list[bytes], rgb: tuple[int, int, int]) -> int:
    needle = bytes(rgb)
    return sum(len(re.findall(re.escape(needle), row)) for row in rows)


def test_screenshot_shows_the_coloured_states(tmp_path: Path,
                                             page_url: tuple[str, GrowingStatus]) -> None:
    url, _ = page_url
    shot = tmp_path / "status-page.png"
    result = chromium(tmp_path, f"--screenshot={shot}", url)
    assert result.returncode == 0, result.stderr[-2000:]
    width, height, rows = read_png(shot)
    assert (width, height) == (1280, 800)
    # The badge backgrounds of the four states (see the page's CSS) each fill a visible area.
    for state, rgb in (("up", (0xD5, 0xF2, 0xDC)), ("down", (0xFB, 0xD9, 0xD6)),
                       ("drain", (0xFC, 0xEB, 0xC6)), ("maint", (0xE2, 0xE4, 0xE9))):
        assert count_colour(rows, rgb) > 300, f"no {state} badge colour in {shot}"
