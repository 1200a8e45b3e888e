"""The HTML status page: services and backends with states, weights, sessions, totals and rates.

Design. The page is one self-contained document (inline CSS and script, no external asset) that
the HTTP listener serves at `/`. The server renders the full tables from the `status` snapshot,
so the page is readable without scripting (it then reloads itself every few seconds through a
`<noscript>` refresh). The snapshot is also embedded as JSON; the inline script fetches
`/status.json` every `refresh` seconds, computes per-second rates from the previous and the
current snapshot (counter deltas over the server's clock) and redraws the tables with DOM calls
(`textContent` only, so nothing from the configuration is ever parsed as markup). Every string
the server puts into the HTML goes through `html.escape`; the embedded JSON escapes `<`, `>`
and `&` so that it cannot end its script element.

A backend with an armed drain deadline (`drain --timeout`) shows the time left next to its
state badge ("drain 4m32s"). The text comes from the CLI's `countdown()`, counted from the
document's `time`: the server puts it into the HTML and into the document's `drain_left`
({service: {address: text}}), and the script only copies it, so the page and `l4lb backends`
cannot disagree on the format.

A service in panic (below min_healthy, health verdicts ignored; the service's `panic` in the
snapshot is the reason) gets a line under its heading with the wording of `l4lb status`
(display.panic_text; the script's copy of the wording is filled in from the same constants).
A UDP backend's Active and Total count its flows, as `l4lb backends` does.

A backend with an agent (`[services.agent]`) gets an `agent: ...` tag after its state badge,
where the health check's progress tag is: what the agent holds it at (`agent: stopped
(#deploying)`, `agent: drain 50% (#window)`), else its last reply as received (`agent: up
100%`), with `, not answering` or `, bad reply` when its last poll failed or was malformed.
The tag's tooltip is the agent line of `l4lb status` (display.agent_note). Both come from the
document's `agents` ({service: {address: [tag, tooltip]}}), which the script only copies.

A TCP service with a queue for full backends (`queue_timeout`) gets the queue line of `l4lb
status` under its heading (display.queue_text: waiting now, queued in all, timed out, mean
wait); the text is the document's `queues` ({service: text}), which the script only copies.

`CONTENT_SECURITY_POLICY` allows exactly the page's own style and script (by hash) and fetches
to the same origin; the server sends it with the page.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from l4lb.display import (
    PANIC_PREFIX,
    PANIC_TAIL,
    agent_note,
    check_note,
    check_progress,
    countdown,
    panic_text,
    queue_text,
    uptime,
)

STATES = ("up", "down", "drain", "maint")  # backend states, see docs/control-api.md

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.2em 2em;color:#1d2330;
background:#f6f7f9}
h1{font-size:1.3em;margin:0 0 .2em}
h2{font-size:1.1em;margin:1.4em 0 .4em}
.meta,.summary{color:#5b6475;font-weight:normal;font-size:.92em}
.summary{margin:.2em 0}
#freshness{font-size:.85em;color:#5b6475}
#freshness.stale{color:#b3261e;font-weight:bold}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.08)}
th,td{padding:.3em .6em;border-bottom:1px solid #e3e6eb;white-space:nowrap}
th{background:#eef0f4;text-align:left;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tfoot td{font-weight:600;background:#fafbfc}
.state{font-weight:600;border-radius:3px;padding:.1em .5em;display:inline-block;min-width:3.5em;
text-align:center}
.state-up{background:#d5f2dc;color:#14632b}
.state-down{background:#fbd9d6;color:#9d1c12}
.state-drain{background:#fcebc6;color:#7a4b00}
.state-maint{background:#e2e4e9;color:#464d5a}
.tag{font-size:.8em;color:#5b6475;margin-left:.4em}
.tag.check{color:#8a1f11}
.tag.agent{color:#4b3a7a}
.tag.deadline{color:#7a4b00;font-weight:600;font-variant-numeric:tabular-nums}
.panic{color:#9d1c12;font-weight:bold}
.vrrp{margin:.1em 0;font-size:.92em}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var STATES = ["up", "down", "drain", "maint"];
  var PANIC_PREFIX = @PANIC_PREFIX@, PANIC_TAIL = @PANIC_TAIL@;
  var dataEl = document.getElementById("l4lb-data");
  var refresh = Number(document.body.getAttribute("data-refresh")) || 2;
  var prev = JSON.parse(dataEl.textContent);

  // @VRRP_LINES@ (the same lines as statuspage.vrrp_lines)
  function vrrpLines(st) {
    var out = [];
    (st.vrrp_sync_groups || []).forEach(function (g) {
      var members = (g.members || []).map(function (m) {
        return m.name + " " + m.state + (m.waiting ? " (waiting)" : "");
      }).join(", ");
      out.push("vrrp sync group " + g.name + ": " + g.state + " (" + g.reason + ") \u00b7 " +
               "members " + members);
    });
    (st.vrrp || []).forEach(function (i) {
      var last = i.last_transition;
      out.push("vrrp " + i.name + ": " + i.state + " (" + (last ? last.reason : "-") + ")" +
               (i.sync_group ? " \u00b7 sync group " + i.sync_group.name : ""));
    });
    return out;
  }
  // @END_VRRP_LINES@

  function bytes(n) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i === 0 ? n.toFixed(0) + " B" : n.toFixed(1) + " " + units[i];
  }
  function rate(cur, old, dt) {
    if (old === undefined || old === null || !(dt > 0) || cur < old) { return null; }
    return (cur - old) / dt;
  }
  function fmtRate(r, asBytes) {
    if (r === null) { return "\u2013"; }
    if (asBytes) { return bytes(r) + "/s"; }
    return r < 10 ? r.toFixed(1) : r.toFixed(0);
  }
  function uptime(s) {
    s = Math.max(0, Math.floor(s));
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    if (d > 0) { return d + "d " + h + "h"; }
    if (h > 0) { return h + "h " + m + "m"; }
    return m + "m " + (s % 60) + "s";
  }
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = String(text);
    if (cls) { td.className = cls; }
    tr.appendChild(td);
    return td;
  }
  function headerRow(parent, names) {
    var tr = document.createElement("tr");
    names.forEach(function (h) {
      var th = document.createElement("th");
      th.textContent = h[0];
      if (h[1]) { th.className = "n"; }
      tr.appendChild(th);
    });
    parent.appendChild(tr);
  }
  var HEAD = [["Backend", 0], ["Name", 0], ["State", 0], ["Weight", 1], ["Effective", 1],
              ["Active", 1], ["Conn/s", 1], ["Total", 1], ["Failures", 1],
              ["To backend", 1], ["To client", 1], ["To backend/s", 1], ["To client/s", 1],
              ["Probe", 1]];
  function fmtLatency(s) {
    if (s === null || s === undefined) { return ""; }
    if (s < 0.01) { return (s * 1000).toFixed(1) + " ms"; }
    if (s < 1) { return Math.round(s * 1000) + " ms"; }
    return s.toFixed(2) + " s";
  }

  function sessions(x, kind) {
    // TCP connections or UDP flows: one of the two is always 0
    var flows = kind === "active" ? x.flows_active : (x.flows_total || x.flows_created);
    return ((kind === "active" ? x.conns_active : x.conns_total) || 0) + (flows || 0);
  }

  function own(obj, key) {
    return obj && Object.prototype.hasOwnProperty.call(obj, key) ? obj[key] : undefined;
  }

  function oldMaps(old) {
    var svcs = {}, bes = {};
    if (!old || !old.status) { return [svcs, bes]; }
    (old.status.services || []).forEach(function (s) {
      svcs[s.name] = s.counters || {};
      (s.backends || []).forEach(function (b) { bes[s.name + "\u0000" + b.address] = b; });
    });
    return [svcs, bes];
  }

  function render(doc, old) {
    var st = doc.status, dt = old ? doc.time - old.time : 0;
    var maps = oldMaps(old), oldSvc = maps[0], oldBe = maps[1];
    document.getElementById("version").textContent = "l4lb " + st.version;
    document.getElementById("summary").textContent =
      "pid " + st.pid + " \u00b7 up " + uptime(doc.time - st.started) + " \u00b7 " +
      st.workers + " workers \u00b7 table generation " + st.table.generation +
      " (" + st.table.digest + ")";
    var health = document.getElementById("health");
    if (doc.health) {
      var hc = doc.health;
      health.textContent = "health checks: " + (hc.backends || 0) + " backends, " +
        (hc.probes || 0) + " probes, " + (hc.failed || 0) + " failed, " +
        (hc.in_flight || 0) + " in flight";
    } else {
      health.textContent = "";
    }
    var vrrp = document.getElementById("vrrp");
    vrrp.replaceChildren.apply(vrrp, vrrpLines(st).map(function (line) {
      var p = document.createElement("p");
      p.className = "vrrp";
      p.textContent = line;
      return p;
    }));
    var root = document.getElementById("services");
    var sections = [];
    (st.services || []).forEach(function (svc) {
      var c = svc.counters || {}, oc = oldSvc[svc.name];
      var left = own(doc.drain_left, svc.name);
      var checks = own(doc.checks, svc.name);
      var agents = own(doc.agents, svc.name);
      var sec = document.createElement("section");
      sec.className = "service";
      sec.setAttribute("data-service", svc.name);
      var h2 = document.createElement("h2");
      h2.textContent = svc.name + " ";
      var meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = svc.protocol + " \u00b7 " + svc.scheduler + " \u00b7 " +
        (svc.listen || []).join(", ");
      h2.appendChild(meta);
      sec.appendChild(h2);
      var counts = document.createElement("p");
      counts.className = "summary";
      counts.textContent = "rejected " + (c.rejected || 0) + " \u00b7 no backend " +
        (c.no_backend || 0) + " \u00b7 accept errors " + (c.accept_errors || 0) +
        ((svc.tcp_options || {}).accept_proxy ? " \u00b7 PROXY header errors " +
         (c.proxy_header_errors || 0) + " \u00b7 timeouts " + (c.proxy_header_timeouts || 0) : "");
      sec.appendChild(counts);
      var queue = own(doc.queues, svc.name);
      if (queue) {
        var ql = document.createElement("p");
        ql.className = "summary queue";
        ql.textContent = queue;
        sec.appendChild(ql);
      }
      if (svc.panic) {
        var panic = document.createElement("p");
        panic.className = "summary panic";
        panic.textContent = PANIC_PREFIX + svc.panic + PANIC_TAIL;
        sec.appendChild(panic);
      }
      var table = document.createElement("table");
      table.className = "backends";
      var thead = document.createElement("thead");
      headerRow(thead, HEAD);
      table.appendChild(thead);
      var tbody = document.createElement("tbody");
      (svc.backends || []).forEach(function (b) {
        var o = oldBe[svc.name + "\u0000" + b.address] || {};
        var tr = document.createElement("tr");
        tr.setAttribute("data-backend", b.address);
        tr.setAttribute("data-state", b.state);
        cell(tr, b.address);
        cell(tr, b.name === b.address ? "" : b.name);
        var td = cell(tr, "");
        var badge = document.createElement("span");
        badge.className = "state state-" + (STATES.indexOf(b.state) >= 0 ? b.state : "maint");
        badge.textContent = b.state;
        td.appendChild(badge);
        var check = own(checks, b.address);
        if (check) {
          if (check[1]) {
            badge.title = check[1];
          }
          if (check[0]) {
            var progress = document.createElement("span");
            progress.className = "tag check";
            progress.textContent = check[0];
            td.appendChild(progress);
          }
        }
        var agent = own(agents, b.address);
        if (agent) {
          var said = document.createElement("span");
          said.className = "tag agent";
          said.title = agent[1];
          said.textContent = agent[0];
          td.appendChild(said);
        }
        var until = own(left, b.address);
        if (typeof until === "string") {
          var dl = document.createElement("span");
          dl.className = "tag deadline";
          dl.title = "time left until the drain deadline closes what is left";
          dl.textContent = until;
          td.appendChild(dl);
        }
        if (b.backup) {
          var tag = document.createElement("span");
          tag.className = "tag";
          tag.textContent = "backup";
          td.appendChild(tag);
        }
        cell(tr, b.weight, "n");
        cell(tr, b.effective_weight, "n");
        cell(tr, sessions(b, "active"), "n");
        cell(tr, fmtRate(rate(sessions(b, "total"), o.address ? sessions(o, "total") : null,
                              dt), false), "n rate-conns");
        cell(tr, sessions(b, "total"), "n");
        cell(tr, b.connect_failures, "n");
        cell(tr, bytes(b.bytes_to_backend), "n");
        cell(tr, bytes(b.bytes_to_client), "n");
        cell(tr, fmtRate(rate(b.bytes_to_backend, o.bytes_to_backend, dt), true), "n");
        cell(tr, fmtRate(rate(b.bytes_to_client, o.bytes_to_client, dt), true), "n");
        cell(tr, fmtLatency(b.probe_latency), "n");
        tbody.appendChild(tr);
      });
      table.appendChild(tbody);
      var tfoot = document.createElement("tfoot");
      var tr = document.createElement("tr");
      oc = oc || {};
      cell(tr, "service total");
      cell(tr, "");
      cell(tr, "");
      cell(tr, "");
      cell(tr, "");
      cell(tr, sessions(c, "active"), "n");
      cell(tr, fmtRate(rate(sessions(c, "total"), oldSvc[svc.name] ? sessions(oc, "total") :
                            null, dt), false), "n rate-conns");
      cell(tr, sessions(c, "total"), "n");
      cell(tr, "");
      cell(tr, bytes(c.bytes_to_backend || 0), "n");
      cell(tr, bytes(c.bytes_to_client || 0), "n");
      cell(tr, fmtRate(rate(c.bytes_to_backend, oc.bytes_to_backend, dt), true), "n");
      cell(tr, fmtRate(rate(c.bytes_to_client, oc.bytes_to_client, dt), true), "n");
      cell(tr, "");
      tfoot.appendChild(tr);
      table.appendChild(tfoot);
      sec.appendChild(table);
      sections.push(sec);
    });
    root.replaceChildren.apply(root, sections);
    root.setAttribute("data-rates", dt > 0 ? "yes" : "no");
  }

  function fresh(ok, doc) {
    var el = document.getElementById("freshness");
    if (ok) {
      el.className = "";
      el.textContent = "updated " + new Date(doc.time * 1000).toLocaleTimeString() +
        ", every " + refresh + " s";
    } else {
      el.className = "stale";
      el.textContent = "stale: the daemon did not answer; retrying every " + refresh + " s";
    }
  }

  function tick() {
    fetch("status.json", {cache: "no-store"})
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
      .then(function (doc) { render(doc, prev); prev = doc; fresh(true, doc); },
            function () { fresh(false, null); })
      .then(function () { setTimeout(tick, refresh * 1000); });
  }
  setTimeout(tick, refresh * 1000);
})();
"""


_SCRIPT = _SCRIPT.replace("@PANIC_PREFIX@", json.dumps(PANIC_PREFIX)).replace(
    "@PANIC_TAIL@", json.dumps(PANIC_TAIL))


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_SCRIPT)}; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'")

_HEAD = ("Backend", "Name", "State", "Weight", "Effective", "Active", "Conn/s", "Total",
         "Failures", "To backend", "To client", "To backend/s", "To client/s", "Probe")
_NUMERIC_FROM = 3  # columns from this index on are numbers (right-aligned)
_NO_RATE = "\u2013"  # shown where a rate needs a second snapshot


def document(status: Mapping[str, Any], health: Mapping[str, Any] | None = None,
             now: float | None = None) -> dict[str, Any]:
    """The object served at /status.json: {"time": unix time, "status": ..., "health": ...,
    "drain_left": {service: {address: "4m32s"}}, "checks": {service: {address: [progress,
    note]}}, "agents": {service: {address: [tag, note]}}, "queues": {service: text}}
    (drain_left: only backends with a deadline; checks: see checks(); agents: see agents();
    queues: see queues())."""
    stamp = time.time() if now is None else now
    return {"time": stamp, "status": status,
            "health": dict(health) if health is not None else None,
            "drain_left": drain_left(status, stamp), "checks": checks(status, stamp),
            "agents": agents(status, stamp), "queues": queues(status)}


def queues(status: Mapping[str, Any]) -> dict[str, str]:
    """The queue line of each service that has one (display.queue_text), by service name."""
    out: dict[str, str] = {}
    for svc in status.get("services", []):
        text = queue_text(svc)
        if text:
            out[str(svc.get("name", ""))] = text
    return out


def drain_left(status: Mapping[str, Any], now: float) -> dict[str, dict[str, str]]:
    """Time left to each armed drain deadline, as `l4lb backends` writes it, by service and
    backend address; a service without one is left out."""
    out: dict[str, dict[str, str]] = {}
    for svc in status.get("services", []):
        for b in svc.get("backends", []):
            deadline = b.get("drain_deadline")
            if deadline is not None:
                out.setdefault(str(svc.get("name", "")), {})[str(b.get("address", ""))] = \
                    countdown(float(deadline) - now)
    return out


def checks(status: Mapping[str, Any], now: float) -> dict[str, dict[str, list[str]]]:
    """The health check's part of each backend's state cell, as `l4lb status` words it:
    [display.check_progress() (a tag next to the badge), display.check_note() (the badge's
    tooltip)], by service and backend address; backends with neither are left out."""
    out: dict[str, dict[str, list[str]]] = {}
    for svc in status.get("services", []):
        for b in svc.get("backends", []):
            check = b.get("check")
            progress, note = check_progress(check), check_note(check, now)
            if progress or note:
                out.setdefault(str(svc.get("name", "")), {})[str(b.get("address", ""))] = \
                    [progress, note]
    return out


AGENT_TAG_CHARS = 60  # characters of an agent's words shown in its tag (the tooltip has all)


def agent_tag(agent: Mapping[str, Any]) -> str:
    """The tag of a backend's agent: what it holds the backend at, else its last reply, and
    whether its last poll failed or was malformed."""
    said = agent.get("holds") or agent.get("last_reply")
    text = str(said) if said else "no reply yet"
    if len(text) > AGENT_TAG_CHARS:
        text = text[:AGENT_TAG_CHARS - 3] + "..."
    if agent.get("consecutive_failures", 0) > 0:
        text += ", not answering"
    elif agent.get("last_error") is not None and (
            agent.get("last_reply_at") is None
            or (agent.get("last_error_at") or 0) > agent["last_reply_at"]):
        text += ", bad reply"
    return f"agent: {text}"


def agents(status: Mapping[str, Any], now: float) -> dict[str, dict[str, list[str]]]:
    """The agent's part of each backend's state cell: [agent_tag(), display.agent_note()
    (the tag's tooltip)], by service and backend address; backends without an agent are
    left out."""
    out: dict[str, dict[str, list[str]]] = {}
    for svc in status.get("services", []):
        for b in svc.get("backends", []):
            agent = b.get("agent")
            if agent:
                out.setdefault(str(svc.get("name", "")), {})[str(b.get("address", ""))] = \
                    [agent_tag(agent), agent_note(dict(agent), now, always=True)]
    return out


def vrrp_lines(status: Mapping[str, Any]) -> list[str]:
    """The VRRP part of the page: one line per sync group (its state, why, its members), then
    one per instance (its state and the reason of its last transition, which names the sync
    group when the group forced it). The page script builds the same lines."""
    out = []
    for g in status.get("vrrp_sync_groups", []):
        members = ", ".join(f"{m['name']} {m['state']}" + (" (waiting)" if m.get("waiting")
                                                           else "")
                            for m in g.get("members", []))
        out.append(f"vrrp sync group {g['name']}: {g['state']} ({g['reason']}) \u00b7 "
                   f"members {members}")
    for i in status.get("vrrp", []):
        last = i.get("last_transition")
        group = i.get("sync_group")
        out.append(f"vrrp {i['name']}: {i['state']} ({last['reason'] if last else '-'})"
                   + (f" \u00b7 sync group {group['name']}" if group else ""))
    return out


def status_json(status: Mapping[str, Any], health: Mapping[str, Any] | None = None,
                now: float | None = None) -> bytes:
    """`document()` as UTF-8 JSON."""
    return json.dumps(document(status, health, now), separators=(",", ":")).encode()


def render_page(status: Mapping[str, Any], health: Mapping[str, Any] | None = None,
                now: float | None = None, refresh: float = 2.0) -> str:
    """The whole status page for one snapshot (rates show as dashes until the script runs)."""
    doc = document(status, health, now)
    esc = html.escape
    table = status.get("table", {})
    summary = (f"pid {status.get('pid')} · up {uptime(doc['time'] - status.get('started', 0), ' ')}"
               f" · {status.get('workers')} workers · table generation "
               f"{table.get('generation')} ({table.get('digest')})")
    refresh_text = f"{refresh:g}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>l4lb status</title><style>{_CSS}</style>",
        f'<noscript><meta http-equiv="refresh" content="{esc(refresh_text)}"></noscript>',
        f'</head><body data-refresh="{esc(refresh_text)}">',
        f'<h1 id="version">l4lb {esc(str(status.get("version", "")))}</h1>',
        f'<p class="summary" id="summary">{esc(summary)}</p>',
        f'<p class="summary" id="health">{esc(_health_line(health))}</p>',
        '<p id="freshness">rendered by the server; rates need the page script</p>',
        '<div id="vrrp">', *(f'<p class="vrrp">{esc(line)}</p>' for line in vrrp_lines(status)),
        "</div>",
        '<div id="services" data-rates="no">',
    ]
    for svc in status.get("services", []):
        name = str(svc.get("name", ""))
        parts.append(_service_html(svc, doc["drain_left"].get(name, {}),
                                   doc["checks"].get(name, {}), doc["agents"].get(name, {}),
                                   doc["queues"].get(name, "")))
    parts.append("</div>")
    parts.append('<script type="application/json" id="l4lb-data">'
                 f"{_script_safe_json(doc)}</script>")
    parts.append(f"<script>{_SCRIPT}</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _service_html(svc: Mapping[str, Any], left: Mapping[str, str],
                  checked: Mapping[str, list[str]], agented: Mapping[str, list[str]],
                  queue: str) -> str:
    esc = html.escape
    name = str(svc.get("name", ""))
    meta = " · ".join([str(svc.get("protocol", "")), str(svc.get("scheduler", "")),
                       ", ".join(str(x) for x in svc.get("listen", []))])
    head = "".join(f'<th class="n">{esc(h)}</th>' if i >= _NUMERIC_FROM else f"<th>{esc(h)}</th>"
                   for i, h in enumerate(_HEAD))
    rows = [_backend_html(b, left.get(str(b.get("address", ""))),
                          checked.get(str(b.get("address", ""))),
                          agented.get(str(b.get("address", ""))))
            for b in svc.get("backends", [])]
    c = svc.get("counters", {})
    counts = (f"rejected {c.get('rejected', 0)} · no backend {c.get('no_backend', 0)} · "
              f"accept errors {c.get('accept_errors', 0)}")
    if (svc.get("tcp_options") or {}).get("accept_proxy"):
        counts += (f" · PROXY header errors {c.get('proxy_header_errors', 0)} · "
                   f"timeouts {c.get('proxy_header_timeouts', 0)}")
    panic = panic_text(svc.get("panic"))
    panic_html = f'<p class="summary panic">{esc(panic)}</p>' if panic else ""
    queue_html = f'<p class="summary queue">{esc(queue)}</p>' if queue else ""
    foot = _cells(["service total", "", "", "", "", _sessions(c, "active"), _NO_RATE,
                   _sessions(c, "total"), "", human_bytes(c.get("bytes_to_backend", 0)),
                   human_bytes(c.get("bytes_to_client", 0)), _NO_RATE, _NO_RATE, ""])
    return (f'<section class="service" data-service="{esc(name)}">'
            f'<h2>{esc(name)} <span class="meta">{esc(meta)}</span></h2>'
            f'<p class="summary">{esc(counts)}</p>{queue_html}{panic_html}'
            f'<table class="backends"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody><tfoot><tr>{foot}</tr></tfoot></table></section>")


def _backend_html(b: Mapping[str, Any], until: str | None, check: list[str] | None,
                  agent: list[str] | None = None) -> str:
    esc = html.escape
    address = str(b.get("address", ""))
    name = str(b.get("name", address))
    state = str(b.get("state", ""))
    css = state if state in STATES else "maint"
    progress, note = check if check is not None else ("", "")
    title = f' title="{esc(note)}"' if note else ""
    badge = f'<span class="state state-{css}"{title}>{esc(state)}</span>'
    if progress:
        badge += f'<span class="tag check">{esc(progress)}</span>'
    if agent is not None:
        badge += f'<span class="tag agent" title="{esc(agent[1])}">{esc(agent[0])}</span>'
    if until is not None:
        badge += (f'<span class="tag deadline" title="time left until the drain deadline '
                  f'closes what is left">{esc(until)}</span>')
    if b.get("backup"):
        badge += '<span class="tag">backup</span>'
    cells = _cells([address, "" if name == address else name])
    cells += f"<td>{badge}</td>"
    cells += _cells([b.get("weight", 0), b.get("effective_weight", 0), _sessions(b, "active"),
                     _NO_RATE, _sessions(b, "total"), b.get("connect_failures", 0),
                     human_bytes(b.get("bytes_to_backend", 0)),
                     human_bytes(b.get("bytes_to_client", 0)), _NO_RATE, _NO_RATE,
                     latency_text(b.get("probe_latency"))], numeric=True)
    return (f'<tr data-backend="{esc(address)}" data-state="{esc(state)}">{cells}</tr>')


def _sessions(x: Mapping[str, Any], kind: str) -> int:
    """Active or total sessions of a backend or service: TCP connections or UDP flows (the
    other kind is 0), as the page script's sessions()."""
    if kind == "active":
        return int(x.get("conns_active") or 0) + int(x.get("flows_active") or 0)
    flows = x.get("flows_total") or x.get("flows_created") or 0
    return int(x.get("conns_total") or 0) + int(flows)


def latency_text(seconds: float | None) -> str:
    """The Probe column, as the page script writes it: "1.2 ms", "250 ms", "1.50 s", or ""."""
    if seconds is None:
        return ""
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    return f"{seconds:.2f} s"


def _cells(values: Sequence[Any], numeric: bool = False) -> str:
    out = []
    for i, v in enumerate(values):
        num = numeric or (i >= _NUMERIC_FROM)
        out.append(f'<td class="n">{html.escape(str(v))}</td>' if num
                   else f"<td>{html.escape(str(v))}</td>")
    return "".join(out)


def _health_line(health: Mapping[str, Any] | None) -> str:
    if health is None:
        return ""
    return (f"health checks: {health.get('backends', 0)} backends, {health.get('probes', 0)} "
            f"probes, {health.get('failed', 0)} failed, {health.get('in_flight', 0)} in flight")


def _script_safe_json(value: Any) -> str:
    """JSON that cannot close its <script> element nor open a comment inside it."""
    text = json.dumps(value, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (the page script formats the same way)."""
    size = float(n)
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    i = 0
    while size >= 1024 and i < len(units) - 1:
        size /= 1024
        i += 1
    return f"{size:.0f} B" if i == 0 else f"{size:.1f} {units[i]}"

