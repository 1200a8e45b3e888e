"""Format control-API results as aligned text tables for the CLI (JSON output bypasses this)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; numbers right-aligned."""
    cells = [[str(c) for c in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], int | float) and not isinstance(row[i], bool)
                   for row in rows) and bool(rows) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric,
                                                                          strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def human_bytes(n: float) -> str:
    """1536 -> '1.5K' (powers of 1024, one decimal from K on)."""
    size = float(n)
    units = ("B", "K", "M", "G", "T", "P")
    i = 0
    while size >= 1024 and i < len(units) - 1:
        size /= 1024
        i += 1
    unit = units[i]
    return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"


def human_seconds(seconds: float) -> str:
    """A short duration: 0.0012 -> '1.2ms', 0.25 -> '250ms', 3.5 -> '3.50s'."""
    if seconds < 0.01:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    return f"{seconds:.2f}s"


def countdown(seconds: float) -> str:
    """Time left, whole seconds, largest units first: 272 -> '4m32s', 3700 -> '1h1m40s'."""
    left = max(0, math.ceil(seconds))
    hours, rest = divmod(left, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text + (f"{secs}s" if secs or not text else "")


def uptime(seconds: float, sep: str = "") -> str:
    """How long something has run, two largest units: '2d3h', '3h7m', '7m5s' (sep between)."""
    s = max(0, int(seconds))
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d}d{sep}{h}h"
    if h:
        return f"{h}h{sep}{m}m"
    return f"{m}m{sep}{s % 60}s"


BACKEND_HEADERS = ("BACKEND", "NAME", "STATE", "WEIGHT", "EFF", "ACTIVE", "TOTAL", "FAILS",
                   "TO-BACKEND", "TO-CLIENT", "PROBE")
# A UDP service's backends: flows instead of connections, and datagrams next to the bytes.
UDP_BACKEND_HEADERS = ("BACKEND", "NAME", "STATE", "WEIGHT", "EFF", "FLOWS", "TOTAL", "FAILS",
                       "DGRAMS-TO-BACKEND", "DGRAMS-TO-CLIENT", "TO-BACKEND", "TO-CLIENT",
                       "PROBE")


def backend_rows(backends: Sequence[dict[str, Any]],
                 now: float | None = None) -> list[list[Any]]:
    """Rows under BACKEND_HEADERS. A drain deadline shows in the state ("drain, 4m32s left",
    counted from `now`, default the current time); PROBE is the last probe's latency.
    ACTIVE and TOTAL count sessions: TCP connections, or the flows of a UDP backend (a backend
    has only one kind, the other counts stay 0), so the table fits both protocols. A backend
    with a connection limit shows ACTIVE as `active/limit`."""
    return [[*_backend_lead(b, now),
             _of_limit(_count(b, "conns_active") + _count(b, "flows_active"), b),
             _count(b, "conns_total") + _count(b, "flows_total"),
             _count(b, "connect_failures"), human_bytes(_count(b, "bytes_to_backend")),
             human_bytes(_count(b, "bytes_to_client")), _probe(b)]
            for b in backends]


def udp_backend_rows(backends: Sequence[dict[str, Any]],
                     now: float | None = None) -> list[list[Any]]:
    """Rows under UDP_BACKEND_HEADERS: flows open now and ever mapped to the backend, ICMP
    refusals (FAILS), datagrams and bytes each way, the last probe's latency. A backend with
    a connection limit (which counts its flows) shows FLOWS as `open/limit`."""
    return [[*_backend_lead(b, now),
             _of_limit(_count(b, "flows_active"), b), _count(b, "flows_total"),
             _count(b, "connect_failures"),
             _count(b, "datagrams_to_backend"), _count(b, "datagrams_to_client"),
             human_bytes(_count(b, "bytes_to_backend")),
             human_bytes(_count(b, "bytes_to_client")), _probe(b)]
            for b in backends]


def _of_limit(active: int, b: dict[str, Any]) -> int | str:
    """`active`, or `active/limit` for a backend with a connection limit."""
    limit = b.get("max_connections") or 0
    return f"{active}/{limit}" if limit else active


def backend_table(backends: Sequence[dict[str, Any]], protocol: str = "tcp",
                  now: float | None = None) -> str:
    """The backends of one service as a text table, in the layout of its protocol."""
    if protocol == "udp":
        return table(UDP_BACKEND_HEADERS, udp_backend_rows(backends, now))
    return table(BACKEND_HEADERS, backend_rows(backends, now))


def _backend_lead(b: dict[str, Any], now: float | None) -> list[Any]:
    """BACKEND, NAME, STATE, WEIGHT, EFF: the columns both layouts start with."""
    name = b["name"] if b["name"] != b["address"] else "-"
    state = b["state"]
    if b.get("drain_deadline") is not None:
        if now is None:
            now = time.time()
        state += f", {countdown(b['drain_deadline'] - now)} left"
    progress = check_progress(b.get("check"))
    state += f", {progress}" if progress else ""
    agent = b.get("agent")
    if agent and agent.get("holds"):
        state += f", agent: {agent['holds']}"
    if b.get("dynamic_weight") is not None:
        state += f", check weight {b['dynamic_weight']}"
    state += " (backup)" if b.get("backup") else ""
    return [b["address"], name, state, b["weight"], b["effective_weight"]]


def check_progress(check: dict[str, Any] | None) -> str:
    """What the health check adds to a backend's state (STATE column, the page's tag):
    "going down 1/3" (an UP backend with failed probes counted toward `fall`), "going up 1/2"
    (a DOWN one with passes counted toward `rise`), "unconfirmed" (UP by initial_state, no
    probe passed yet), else ""."""
    if not check:
        return ""
    if check["health"] == "up":
        if not check["confirmed"]:
            return "unconfirmed"
        if check["failures"]:
            return f"going down {check['failures']}/{check['fall']}"
    elif check["successes"]:
        return f"going up {check['successes']}/{check['rise']}"
    return ""


def check_note(check: dict[str, Any] | None, now: float) -> str:
    """Why a checked backend is DOWN, or what its last failed probe said: `DOWN for 3m2s:
    connect refused (3/3 probes failed); last probe 1s ago failed: connect refused`. "" for
    a backend without checks, and for one that is UP with a passed (or no) last probe."""
    if not check or (check["health"] == "up" and check["last_result"] != "failed"):
        return ""
    text = f"{check['health'].upper()} for {uptime(now - check['since'])}"
    if check.get("change_reason"):
        text += f": {check['change_reason']}"
    if check["last_result"] is not None:
        text += (f"; last probe {uptime(now - check['last_probe'])} ago "
                 f"{check['last_result']}: {check['last_reason']}")
    elif check["health"] == "down":
        text += "; no probe has finished yet"
    return text


def agent_note(agent: dict[str, Any] | None, now: float, always: bool = False) -> str:
    """What a backend's agent holds it at and how its polls go: `agent 10.0.1.5:9777: holds
    drain 50% (#window); last reply 2s ago: "drain 50% #window"; last poll failed 1s ago:
    connect refused (3 in a row, 5 failures, 1 bad reply)`. "" for a backend without an
    agent, and (unless `always`) for one whose agent holds nothing back and whose last poll
    went well."""
    if not agent:
        return ""
    failing = agent.get("consecutive_failures", 0) > 0
    bad_last = agent.get("last_error") is not None and (
        agent.get("last_reply_at") is None
        or (agent.get("last_error_at") or 0) > agent["last_reply_at"])
    if not agent.get("holds") and not bad_last and not always:
        return ""
    parts = [f"agent {agent['target']}: " + (f"holds {agent['holds']}" if agent.get("holds")
                                             else "holds nothing back")]
    if agent.get("last_reply_at") is not None:
        parts.append(f"last reply {uptime(now - agent['last_reply_at'])} ago: "
                     f"{agent['last_reply']!r}")
    if bad_last:
        what = "failed" if failing else "ignored"
        text = (f"last poll {what} {uptime(now - (agent.get('last_error_at') or now))} ago: "
                f"{agent['last_error']}")
        counts = []
        if failing:
            counts.append(f"{agent['consecutive_failures']} in a row")
        counts.append(f"{agent.get('failures', 0)} failures, {agent.get('errors', 0)} bad "
                      "replies in all")
        parts.append(text + f" ({', '.join(counts)})")
    return "; ".join(parts)


def check_lines(backends: Sequence[dict[str, Any]], now: float | None = None) -> list[str]:
    """check_note() and agent_note() of every backend that has one, as `ADDRESS: NOTE` lines
    for under the backends table (UP backends whose last probe passed, and whose agent holds
    nothing back, get no line)."""
    stamp = time.time() if now is None else now
    out = []
    for b in backends:
        for note in (check_note(b.get("check"), stamp), agent_note(b.get("agent"), stamp)):
            if note:
                out.append(f"{b['address']}: {note}")
    return out


def backends_text(backends: Sequence[dict[str, Any]], protocol: str = "tcp",
                  now: float | None = None) -> str:
    """`l4lb backends`, and the backends of each service in `l4lb status`: the table of the
    service's protocol, then check_lines()."""
    return "\n".join([backend_table(backends, protocol, now), *check_lines(backends, now)])


def _count(b: dict[str, Any], key: str) -> int:
    """A counter of a backend view; 0 when the daemon does not send it (an older daemon)."""
    return int(b.get(key) or 0)


def _probe(b: dict[str, Any]) -> str:
    latency = b.get("probe_latency")
    return human_seconds(latency) if latency is not None else "-"


PANIC_PREFIX = "PANIC: "  # panic_text() = PANIC_PREFIX + reason + PANIC_TAIL (the page too)
PANIC_TAIL = (" (below min_healthy): health checks are ignored, DOWN backends stay in "
              "rotation")


def panic_text(reason: str | None) -> str:
    """The `l4lb status` line of a service in panic, from the service's `panic` (the reason),
    or "" when it is not in panic. EFF still shows the weights the table really uses."""
    if not reason:
        return ""
    return f"{PANIC_PREFIX}{reason}{PANIC_TAIL}"


def queue_text(svc: Mapping[str, Any]) -> str:
    """The queue line of a service (`l4lb status`, the status page): `queue 3 waiting, 120
    queued in all, 2 timed out, mean wait 41 ms`, or "" when the service has no queue
    (`queue_timeout` unset) and never queued anyone."""
    c = svc.get("counters") or {}
    if not c.get("queued_total") and not (svc.get("tcp_options") or {}).get("queue_timeout"):
        return ""
    done = c.get("queued_total", 0) - c.get("queued_now", 0)
    mean = f", mean wait {c.get('queue_wait_ms', 0) / done:.0f} ms" if done else ""
    return (f"queue {c.get('queued_now', 0)} waiting, {c.get('queued_total', 0)} queued in all, "
            f"{c.get('queue_timeouts', 0)} timed out{mean}")


def tcp_options_text(options: dict[str, Any]) -> str:
    """The TCP socket options of a service that differ from the defaults, for `l4lb status`:
    `congestion control cubic (clients), bbr (backends); backend fast open; defer accept`, or
    "" when every one is the default."""
    parts = []
    client, backend = options.get("congestion_control"), options.get("backend_congestion_control")
    if client or backend:
        legs = [f"{client} (clients)" if client else "", f"{backend} (backends)" if backend else ""]
        parts.append("congestion control " + ", ".join(leg for leg in legs if leg))
    if options.get("backend_fast_open"):
        parts.append("backend fast open")
    if options.get("defer_accept"):
        parts.append("defer accept")
    if options.get("accept_proxy"):
        sources = options.get("accept_proxy_from")
        parts.append(f"accepts PROXY protocol (header within "
                     f"{options.get('accept_proxy_timeout', 5.0):g}s"
                     + (f", from {', '.join(sources)} only" if sources else "") + ")")
    if options.get("proxy_protocol", "off") != "off":
        parts.append(f"PROXY protocol {options['proxy_protocol']}")
    if options.get("queue_timeout"):
        parts.append(f"queue for full backends (up to {options.get('max_queue')} clients, "
                     f"{options['queue_timeout']:g}s each)")
    parts.extend(_buffers_text(options))
    return "; ".join(parts)


def _buffers_text(options: dict[str, Any]) -> list[str]:
    """The socket buffer parts of tcp_options_text: `client buffers snd 65536 (kernel
    131072), rcv 65536 (kernel 131072)`, `backend buffers snd 65536`, the listeners that keep a
    removed size, and refusals."""
    parts = []
    client = []
    for side in ("snd", "rcv"):
        size, applied = options.get(f"client_{side}buf"), options.get(f"listener_{side}buf_applied")
        if size or applied:
            kernel = f" (kernel {applied})" if applied else ""
            client.append(f"{side} {size or 'kept'}{kernel}")  # 0 here: a removed size kept
    if client:
        parts.append("client buffers " + ", ".join(client))
    if options.get("listeners_keep_sockbuf"):
        parts.append("listeners keep a removed buffer size until a restart")
    backend = [f"{side} {options[f'backend_{side}buf']}" for side in ("snd", "rcv")
               if options.get(f"backend_{side}buf")]
    if backend:
        parts.append("backend buffers " + ", ".join(backend))
    if options.get("backend_sockbuf_errors"):
        parts.append(f"{options['backend_sockbuf_errors']} backend buffer refusals")
    return parts


def udp_options_text(options: dict[str, Any]) -> str:
    """A UDP service's socket options that differ from the defaults, for `l4lb status`: why it
    reads datagram by datagram, or "" when it gets GRO buffers (or the daemon did not say)."""
    if not options or options.get("gro_in_effect", True):
        return ""
    if not options.get("udp_gro", True):
        if options.get("listeners_keep_gro"):
            return ("no GRO buffers for new flows (udp_gro = false); the open listeners keep "
                    "them until a restart")
        return "no GRO buffers (udp_gro = false)"
    return "no GRO buffers (this data plane or kernel reads datagram by datagram)"


def source_text(svc: dict[str, Any]) -> str:
    """The source addresses of a service's backend connections, for `l4lb status`: `source
    address: 10.0.0.5`, or `source address: the client's (transparent)` for source = "client",
    then each backend that differs (`; 10.0.1.9:80 from 10.0.0.6`, or `from the kernel's choice`
    when only some backends have one); "" when none has one."""
    kernel = "the kernel's choice"
    service = svc.get("source")
    others = [f"{b['address']} from {_source_word(b.get('source')) or kernel}"
              for b in svc.get("backends", []) if b.get("source") != service]
    if service is None and not others:
        return ""
    return "; ".join([f"source address: {_source_word(service) or kernel}", *others])


def _source_word(source: str | None) -> str | None:
    """A `source` as status shows it: the address, or for "client" the client's (transparent)."""
    return "the client's (transparent)" if source == "client" else source


def _peer_word(peer: dict[str, Any]) -> str:
    """A digest-check peer's word: silent (cannot be compared), same or DIFFERENT."""
    if peer.get("silent"):
        return "silent"
    return "same" if peer["agree"] else "DIFFERENT"


def status_text(status: dict[str, Any]) -> str:
    out = [f"l4lb {status['version']}  pid {status['pid']}  workers {status['workers']}  "
           f"config {status['config']}",
           f"table generation {status['table']['generation']}  digest "
           f"{status['table']['digest']}"]
    if status.get("connection_log"):
        out.append(f"connection log {status['connection_log']}")
    loop = status.get("loop") or {}
    if loop.get("stalls"):
        out.append(f"event loop: {loop['stalls']} stalls of {loop['stall_ms']} ms or more, the "
                   f"worst {loop['lag_max_ms']:.0f} ms (VRRP adverts and probes waited)")
    flows = status.get("udp_flows") or {}
    if flows.get("max") and any(s.get("protocol") == "udp" for s in status["services"]):
        origin = "auto: half the fd limit" if flows.get("auto") else "max_udp_flows"
        out.append(f"udp flows {flows.get('open')} of at most {flows['max']} ({origin})")
    if status.get("state") == "draining":
        ends = status.get("drain_ends")
        left = f", what is left closes in {max(0.0, ends - time.time()):.0f}s" if ends else ""
        out.append(f"DRAINING: stopping (SIGTERM); new clients are refused{left}")
    for svc in status["services"]:
        c = svc["counters"]
        out.append("")
        out.append(f"service {svc['name']} ({svc['protocol']}, {svc['scheduler']}) listening on "
                   f"{', '.join(svc['listen'])}")
        panic = panic_text(svc.get("panic"))
        if panic:
            out.append(f"  {panic}")
        if svc["protocol"] == "udp":
            drops = {k.removeprefix("drops_"): v for k, v in c.items()
                     if k.startswith("drops_") and v}
            out.append(f"  flows {c.get('flows_active', 0)} active, {c.get('flows_created', 0)} "
                       f"created; datagrams {c.get('datagrams_in', 0)} in, "
                       f"{c.get('datagrams_out', 0)} out; drops: "
                       + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"))
        else:
            out.append(f"  connections {c.get('conns_active', 0)} active, "
                       f"{c.get('conns_total', 0)} total, {c.get('rejected', 0)} rejected, "
                       f"{c.get('no_backend', 0)} without backend"
                       + (f", {c['accept_errors']} accept errors (out of fds?)"
                          if c.get("accept_errors") else "")
                       + (f", PROXY header errors {c.get('proxy_header_errors', 0)}, timeouts "
                          f"{c.get('proxy_header_timeouts', 0)}"
                          if c.get("proxy_header_errors") or c.get("proxy_header_timeouts")
                          or (svc.get("tcp_options") or {}).get("accept_proxy") else "")
                       + (f", {c.get('proxy_direct', 0)} direct (no header expected)"
                          if c.get("proxy_direct")
                          or (svc.get("tcp_options") or {}).get("accept_proxy_from") else ""))
            queue = queue_text(svc)
            if queue:
                out.append(f"  {queue}")
        options = (tcp_options_text(svc.get("tcp_options") or {})
                   or udp_options_text(svc.get("udp_options") or {}))
        if options:
            out.append(f"  options: {options}")
        source = source_text(svc)
        if source:
            out.append(f"  {source}")
        diff = svc.get("differences_from_file", {})
        if diff.get("added") or diff.get("removed"):
            out.append("  differs from the file: "
                       + "; ".join(f"{kind} at run time: {', '.join(addrs)}"
                                   for kind, addrs in diff.items() if addrs))
        out.append("  " + backends_text(svc["backends"], svc["protocol"])
                   .replace("\n", "\n  "))
    return "\n".join(out)


def vrrp_text(result: dict[str, Any]) -> str:
    """`l4lb vrrp status`: one block per sync group, then one per instance."""
    table_info = result["table"]
    out = [f"table generation {table_info['generation']}  digest {table_info['digest']}"]
    if not result["instances"]:
        out.append("no [[vrrp]] instances configured")
    for group in result.get("sync_groups", []):
        last = group.get("last_transition")
        members = ", ".join(f"{m['name']} {m['state']}" + (" (waiting)" if m["waiting"] else "")
                            for m in group["members"])
        out += ["", f"vrrp sync group {group['name']}: {group['state']}  (members {members})",
                "  last transition: " + (f"{last['from']} -> {last['to']}: {last['reason']}"
                                         if last else "-")]
        for m in group["members"]:  # each member's state and why (the group's doing or not)
            own = f"; own faults: {', '.join(m['own_faults'])}" if m["own_faults"] else ""
            out.append(f"  {m['name']}: {m['state']} ({m['reason']}){own}")
    for inst in result["instances"]:
        last = inst.get("last_transition")
        why = f"{last['from']} -> {last['to']}: {last['reason']}" if last else "-"
        counters = {k: v for k, v in inst.get("counters", {}).items() if k != "drops"}
        drops = inst.get("counters", {}).get("drops", {})
        out += [
            "",
            f"vrrp {inst['name']}: {inst['state']}  (VRID {inst['vrid']} on {inst['interface']}, "
            f"v{inst['version']}, {inst['mode']})",
            f"  priority {inst['priority']} (effective {inst['effective_priority']})  "
            f"address {inst['address']}  master {inst['master'] or '-'}",
            f"  vips {', '.join(inst['vips'])} ({'held' if inst['vips_held'] else 'not held'})",
            f"  last transition: {why}",
            "  counters: " + (", ".join(f"{k} {v}" for k, v in sorted(counters.items()))
                              or "-"),
            "  drops: " + (", ".join(f"{k} {v}" for k, v in sorted(drops.items()) if v) or "none"),
        ]
        group = inst.get("sync_group")
        if group:
            out.append(f"  sync group {group['name']}" + (
                ": ready, waiting for the other members" if group.get("waiting") else ""))
        check = inst.get("digest_check")
        if check:
            peers = ", ".join(f"{p['address']} {p['digest']} ({_peer_word(p)})"
                              for p in check.get("peers", [])) or "none heard yet"
            out.append(f"  table digest agreement with peers: {check['agreement']} ({peers})")
    return "\n".join(out)
