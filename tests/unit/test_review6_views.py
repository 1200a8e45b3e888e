"""UDP flow/datagram counts per backend and the panic line in `status`, metrics and the page.

Review 6, items 2 and 3: UDP backends showed ACTIVE/TOTAL 0 while flows were mapped to them,
metrics had no per-backend UDP family, and a service in panic looked like any other. The views
are built here as the daemon's control API returns them (BackendView as JSON, with the UDP
counters; the service's `panic` reason or None).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from l4lb.display import (
    BACKEND_HEADERS,
    UDP_BACKEND_HEADERS,
    backend_rows,
    backend_table,
    panic_text,
    status_text,
    table,
)
from l4lb.metrics import Exporter
from l4lb.statuspage import _SCRIPT, render_page

DOCS = Path(__file__).resolve().parents[2] / "docs"
REASON = "0 of 2 enabled primary backends are UP"


def view(service: str, address: str, state: str = "up", **counters: int) -> dict[str, Any]:
    """One backend as the control API returns it (TCP counters, UDP counters, all 0 unless
    given)."""
    out: dict[str, Any] = {
        "service": service, "address": address, "name": address, "state": state, "weight": 3,
        "effective_weight": 3, "backup": False, "conns_total": 0, "conns_active": 0,
        "connect_failures": 0, "bytes_to_backend": 0, "bytes_to_client": 0,
        "drain_deadline": None, "probe_latency": None, "flows_active": 0, "flows_total": 0,
        "datagrams_to_backend": 0, "datagrams_to_client": 0}
    out.update(counters)
    return out


def make_status(panic: str | None = None) -> dict[str, Any]:
    web = [view("web", "127.0.0.1:9001", conns_active=2, conns_total=40),
           view("web", "127.0.0.1:9002", state="down", conns_total=1)]
    dns = [view("dns", "127.0.0.1:5301", flows_active=7, flows_total=19,
                datagrams_to_backend=300, datagrams_to_client=280, bytes_to_backend=30000,
                bytes_to_client=28000, connect_failures=1),
           view("dns", "127.0.0.1:5302", flows_active=0, flows_total=4,
                datagrams_to_backend=11, datagrams_to_client=0)]
    return {
        "version": "0", "pid": 1, "workers": 2, "config": "c.toml", "started": 0.0,
        "table": {"generation": 3, "digest": "d"}, "vrrp": [],
        "services": [
            {"name": "web", "protocol": "tcp", "scheduler": "round_robin",
             "listen": ["127.0.0.1:80"], "panic": panic, "backends": web,
             "counters": {"conns_active": 2, "conns_total": 41}, "differences_from_file": {}},
            {"name": "dns", "protocol": "udp", "scheduler": "maglev",
             "listen": ["127.0.0.1:53"], "panic": None, "backends": dns,
             "counters": {"flows_active": 7, "flows_created": 23, "datagrams_in": 311,
                          "datagrams_out": 280}, "differences_from_file": {}}]}


def section(text: str, service: str) -> list[str]:
    """The lines of `l4lb status` text that belong to one service."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"service {service} "))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("service ")),
               len(lines))
    return lines[start:end]


def cols(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


# -- item 2: UDP flows and datagrams per backend --------------------------------------------


def test_backends_text_counts_the_flows_of_a_udp_backend() -> None:
    # `l4lb backends dns` (the CLI formats the list with BACKEND_HEADERS and backend_rows)
    rows = backend_rows(make_status()["services"][1]["backends"])
    active, total = BACKEND_HEADERS.index("ACTIVE"), BACKEND_HEADERS.index("TOTAL")
    assert [(r[active], r[total]) for r in rows] == [(7, 19), (0, 4)]
    tcp = backend_rows(make_status()["services"][0]["backends"])
    assert [(r[active], r[total]) for r in tcp] == [(2, 40), (0, 1)]


def test_status_shows_flows_and_datagrams_of_udp_backends() -> None:
    dns = section(status_text(make_status()), "dns")
    header = next(line for line in dns if line.strip().startswith("BACKEND"))
    assert cols(header) == list(UDP_BACKEND_HEADERS)
    row = next(cols(line) for line in dns if line.strip().startswith("127.0.0.1:5301"))
    assert row[:3] == ["127.0.0.1:5301", "-", "up"]
    got = dict(zip(UDP_BACKEND_HEADERS[3:], row[3:], strict=True))
    assert got == {"WEIGHT": "3", "EFF": "3", "FLOWS": "7", "TOTAL": "19", "FAILS": "1",
                   "DGRAMS-TO-BACKEND": "300", "DGRAMS-TO-CLIENT": "280",
                   "TO-BACKEND": "29.3K", "TO-CLIENT": "27.3K", "PROBE": "-"}
    # TCP services keep their layout
    web = section(status_text(make_status()), "web")
    assert any(cols(line) == list(BACKEND_HEADERS) for line in web)


def test_backend_table_picks_the_layout_of_the_protocol() -> None:
    dns = make_status()["services"][1]["backends"]
    assert backend_table(dns, "udp").splitlines()[0].split() == list(UDP_BACKEND_HEADERS)
    assert backend_table(dns, "tcp") == table(BACKEND_HEADERS, backend_rows(dns))


def test_views_of_an_older_daemon_without_udp_counters_still_format() -> None:
    old = {k: v for k, v in view("dns", "127.0.0.1:5301", conns_total=2).items()
           if not k.startswith(("flows_", "datagrams_"))}
    assert backend_rows([old])[0][5:7] == [0, 2]
    assert backend_table([old], "udp").splitlines()[1].split()[5:10] == ["0", "0", "0", "0", "0"]


def scrape(status: dict[str, Any]) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = generate_latest(Exporter(lambda: copy.deepcopy(status), process=False).registry)
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def key(address: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"service": "dns", "backend": address, "name": address,
                         **extra}.items()))


def test_metrics_export_udp_flows_and_datagrams_per_backend() -> None:
    got = scrape(make_status())
    assert got["l4lb_backend_flows_total"] == {key("127.0.0.1:5301"): 19.0,
                                               key("127.0.0.1:5302"): 4.0}
    assert got["l4lb_backend_flows_active"] == {key("127.0.0.1:5301"): 7.0,
                                                key("127.0.0.1:5302"): 0.0}
    assert got["l4lb_backend_datagrams_total"] == {
        key("127.0.0.1:5301", direction="to_backend"): 300.0,
        key("127.0.0.1:5301", direction="to_client"): 280.0,
        key("127.0.0.1:5302", direction="to_backend"): 11.0,
        key("127.0.0.1:5302", direction="to_client"): 0.0}


def test_tcp_backends_get_no_udp_families() -> None:
    status = make_status()
    del status["services"][1]
    got = scrape(status)
    assert "l4lb_backend_connections_total" in got
    assert not {"l4lb_backend_flows_total", "l4lb_backend_flows_active",
                "l4lb_backend_datagrams_total"} & set(got)


def test_udp_backend_families_are_documented() -> None:
    doc = (DOCS / "observability.md").read_text()
    for name in ("l4lb_backend_flows_total", "l4lb_backend_flows_active",
                 "l4lb_backend_datagrams_total"):
        assert f"`{name}`" in doc, name


# -- item 3: panic is visible ----------------------------------------------------------------


def test_status_shows_a_line_for_a_service_in_panic() -> None:
    web = section(status_text(make_status(panic=REASON)), "web")
    assert web[1] == ("  PANIC: 0 of 2 enabled primary backends are UP (below min_healthy): "
                      "health checks are ignored, DOWN backends stay in rotation")
    calm = status_text(make_status())
    assert "PANIC" not in calm
    older = make_status()
    del older["services"][0]["panic"]  # a daemon that does not send the field
    assert "PANIC" not in status_text(older)


def test_panic_text() -> None:
    assert panic_text(None) == "" and panic_text("") == ""
    assert panic_text("1 of 3 enabled backup backends are UP").startswith(
        "PANIC: 1 of 3 enabled backup backends are UP (below min_healthy)")


def test_status_page_shows_panic_and_udp_flows() -> None:
    page = render_page(make_status(panic=REASON), now=10.0)
    assert ('<p class="summary panic">' + panic_text(REASON) + "</p>") in page
    assert page.count('class="summary panic"') == 1  # only the service in panic
    row = re.search(r'<tr data-backend="127\.0\.0\.1:5301".*?</tr>', page)
    assert row is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(0))
    # Weight, Effective, Active, Conn/s, Total
    assert cells[3:8] == ["3", "3", "7", "\u2013", "19"]
    foot = re.findall(r"<td[^>]*>(.*?)</td>",
                      page.split('data-service="dns"')[1].split("<tfoot>")[1])
    assert foot[5] == "7" and foot[7] == "23"  # flows active, flows created


def test_the_page_script_uses_the_status_wording_for_panic() -> None:
    assert "@PANIC" not in _SCRIPT
    assert '"PANIC: "' in _SCRIPT
    assert '" (below min_healthy): health checks are ignored, DOWN backends stay in rotation"' \
        in _SCRIPT


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_page_script_is_valid_javascript(tmp_path: Path) -> None:
    path = tmp_path / "page.js"
    path.write_text(_SCRIPT)
    done = subprocess.run(["node", "--check", str(path)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr


_DOM_STUB = r"""
// A minimal DOM for the page script: elements with children, text, class and attributes.
function El(tag) { this.tag = tag; this.children = []; this.attrs = {}; this.className = "";
                   this.textContent = ""; }
El.prototype.appendChild = function (c) { this.children.push(c); return c; };
El.prototype.setAttribute = function (k, v) { this.attrs[k] = String(v); };
El.prototype.getAttribute = function (k) {
  return this.attrs[k] === undefined ? null : this.attrs[k]; };
El.prototype.replaceChildren = function () {
  this.children = Array.prototype.slice.call(arguments); };
var byId = {};
["version", "summary", "health", "vrrp", "services", "freshness",
 "l4lb-data"].forEach(function (id) { byId[id] = new El("div"); });
var input = JSON.parse(require("fs").readFileSync(0, "utf8"));
byId["l4lb-data"].textContent = JSON.stringify(input.first);
global.document = {getElementById: function (id) { return byId[id]; },
                   createElement: function (tag) { return new El(tag); },
                   body: new El("body")};
var pending = [];
global.setTimeout = function (f) { pending.push(f); };
global.fetch = function () {
  return Promise.resolve({ok: true, json: function () { return input.second; }}); };
function text(el) { return el.textContent + el.children.map(text).join(""); }
function walk(el, out) {
  out.push(el); el.children.forEach(function (c) { walk(c, out); }); return out; }
"""

_DOM_REPORT = r"""
pending.shift()();  // the first tick: fetch, render, schedule the next
setImmediate(function () { setImmediate(function () {
  var all = walk(byId.services, []);
  var out = {panic: all.filter(function (e) { return e.className === "summary panic"; })
                       .map(text),
             rows: {}};
  all.filter(function (e) { return e.tag === "tr" && e.attrs["data-backend"]; })
     .forEach(function (tr) { out.rows[tr.attrs["data-backend"]] = tr.children.map(text); });
  all.filter(function (e) { return e.tag === "tfoot"; }).forEach(function (f, i) {
    out.rows["total " + i] = f.children[0].children.map(text); });
  process.stdout.write(JSON.stringify(out));
}); });
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_page_script_redraws_panic_and_udp_flows(tmp_path: Path) -> None:
    import json

    first = {"time": 100.0, "status": make_status(), "health": None, "drain_left": {}}
    later = make_status(panic=REASON)
    later["services"][1]["backends"][0].update(flows_active=5, flows_total=29)
    later["services"][1]["counters"].update(flows_active=5, flows_created=33)
    second = {"time": 102.0, "status": later, "health": None, "drain_left": {}}
    path = tmp_path / "page.js"
    path.write_text(_DOM_STUB + _SCRIPT + _DOM_REPORT)
    done = subprocess.run(["node", str(path)], input=json.dumps({"first": first,
                                                                 "second": second}),
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["panic"] == [panic_text(REASON)]
    # Weight, Effective, Active, Conn/s (10 new flows in 2 s), Total
    assert got["rows"]["127.0.0.1:5301"][3:8] == ["3", "3", "5", "5.0", "29"]
    assert got["rows"]["127.0.0.1:9001"][5:8] == ["2", "0.0", "40"]  # TCP as before
    dns_total = got["rows"]["total 1"]
    assert dns_total[5:8] == ["5", "5.0", "33"]  # flows active, created, rate of created


def test_status_says_when_the_daemon_drains() -> None:
    import time

    running = status_text({**make_status(), "state": "running", "drain_ends": None})
    assert "DRAINING" not in running
    draining = status_text({**make_status(), "state": "draining",
                            "drain_ends": time.time() + 20.4})
    line = next(x for x in draining.splitlines() if x.startswith("DRAINING"))
    assert line.startswith("DRAINING: stopping (SIGTERM); new clients are refused, what is "
                           "left closes in ")
    assert line.endswith(("20s", "19s"))


def test_vrrp_status_calls_a_silent_peer_silent() -> None:
    from l4lb.display import vrrp_text

    inst = {"name": "VI_1", "state": "MASTER", "priority": 100, "interface": "eth0", "vrid": 51,
            "version": 3, "mode": "multicast", "effective_priority": 100,
            "address": "10.0.0.1", "master": None, "vips": ["10.0.0.100/24"],
            "vips_held": True, "last_transition": None, "counters": {},
            "digest_check": {"agreement": "unknown", "peers": [
                {"address": "10.0.0.2", "digest": "aa", "agree": True, "silent": True},
                {"address": "10.0.0.3", "digest": "bb", "agree": False, "silent": False},
                {"address": "10.0.0.4", "digest": "cc", "agree": True, "silent": False}]}}
    text = vrrp_text({"table": {"generation": 1, "digest": "cc"}, "instances": [inst]})
    assert ("table digest agreement with peers: unknown (10.0.0.2 aa (silent), "
            "10.0.0.3 bb (DIFFERENT), 10.0.0.4 cc (same))") in text
