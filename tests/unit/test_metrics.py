"""Prometheus exposition of the status snapshot: names, types, labels, values, monotonicity."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from l4lb.metrics import STATES, Exporter, text_format

Sample = tuple[str, tuple[tuple[str, str], ...]]


def backend(service: str, address: str, name: str, state: str, **counters: Any) -> dict[str, Any]:
    view = {"service": service, "address": address, "name": name, "state": state, "weight": 2,
            "effective_weight": 2 if state == "up" else 0, "backup": False, "conns_total": 0,
            "conns_active": 0, "connect_failures": 0, "bytes_to_backend": 0,
            "bytes_to_client": 0, "max_connections": 0}
    view.update(counters)
    return view


def make_status() -> dict[str, Any]:
    web = [backend("web", "127.0.0.1:9001", "b1", "up", conns_total=11, conns_active=3,
                   bytes_to_backend=1000, bytes_to_client=50000, max_connections=30),
           backend("web", "[::1]:9002", 'odd "name"\\ with\nnewline', "drain", conns_total=5,
                   connect_failures=2, backup=True),
           backend("web", "10.0.0.3:80", "10.0.0.3:80", "down", weight=7)]
    dns = [backend("dns", "127.0.0.2:53", "resolver", "maint", conns_total=99)]
    return {
        "version": "1.2.3", "pid": 1234, "config": "/etc/l4lb.toml", "started": 1700000000.0,
        "workers": 2, "table": {"generation": 41, "digest": "00ff"},
        "loop": {"lag_max_ms": 667.0, "lag_last_ms": 1.0, "stalls": 2, "stall_ms": 250},
        "services": [
            {"name": "web", "protocol": "tcp", "scheduler": "maglev",
             "listen": ["127.0.0.1:8080"],
             "counters": {"conns_total": 16, "conns_active": 3, "rejected": 4, "no_backend": 1,
                          "bytes_to_backend": 1000, "bytes_to_client": 50000,
                          "accept_errors": 6},
             "backends": web},
            {"name": "dns", "protocol": "tcp", "scheduler": "round_robin",
             "listen": ["127.0.0.1:5353"],
             "counters": {"conns_total": 99, "conns_active": 0, "rejected": 0, "no_backend": 0,
                          "bytes_to_backend": 7, "bytes_to_client": 8, "accept_errors": 0},
             "backends": dns},
        ]}


def scrape(exporter: Exporter) -> dict[str, Any]:
    """name -> family, parsed back with prometheus_client's own parser."""
    text = generate_latest(exporter.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(families: dict[str, Any], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    family_name = name.removesuffix("_total")
    out = {}
    for s in families[family_name].samples:
        if s.name == name:
            out[tuple(sorted(s.labels.items()))] = s.value
    return out


def bkey(service: str, address: str, name: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"service": service, "backend": address, "name": name, **extra}.items()))


def every_backend(status: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for svc in status["services"]:
        yield from svc["backends"]


def test_every_metric_has_its_type_and_help() -> None:
    fams = scrape(Exporter(make_status, process=False))
    want = {
        "l4lb_info": "gauge", "l4lb_start_time_seconds": "gauge", "l4lb_workers": "gauge",
        "l4lb_loop_lag_max_seconds": "gauge", "l4lb_loop_stalls": "counter",
        "l4lb_table_generation": "gauge", "l4lb_scrape_errors": "counter",
        "l4lb_service_info": "gauge", "l4lb_service_connections": "counter",
        "l4lb_service_connections_active": "gauge", "l4lb_service_rejected": "counter",
        "l4lb_service_no_backend": "counter", "l4lb_service_accept_errors": "counter",
        "l4lb_service_bytes": "counter", "l4lb_service_backends": "gauge",
        "l4lb_service_proxy_header_errors": "counter", "l4lb_service_proxy_direct": "counter",
        "l4lb_service_queued": "gauge", "l4lb_service_queued_clients": "counter",
        "l4lb_service_queue_timeouts": "counter", "l4lb_service_queue_wait_seconds": "counter",
        "l4lb_backend_connections": "counter", "l4lb_backend_connections_active": "gauge",
        "l4lb_backend_connect_failures": "counter", "l4lb_backend_bytes": "counter",
        "l4lb_backend_sessions_shut_down": "counter",
        "l4lb_backend_up": "gauge", "l4lb_backend_state": "gauge",
        "l4lb_backend_weight": "gauge", "l4lb_backend_effective_weight": "gauge",
        "l4lb_backend_max_connections": "gauge", "l4lb_backend_backup": "gauge",
    }
    assert {n: f.type for n, f in fams.items()} == want
    for fam in fams.values():
        assert fam.documentation, fam.name


def test_queue_metrics_only_for_services_with_a_queue() -> None:
    def status() -> dict[str, Any]:
        st = make_status()
        web = st["services"][0]
        web["tcp_options"] = {"queue_timeout": 5.0, "max_queue": 100}
        web["counters"].update(queued_now=2, queued_total=9, queue_timeouts=3,
                               queue_wait_ms=4500)
        return st

    fams = scrape(Exporter(status, process=False))
    web = (("service", "web"),)
    assert samples(fams, "l4lb_service_queued") == {web: 2}
    assert samples(fams, "l4lb_service_queued_clients_total") == {web: 9}
    assert samples(fams, "l4lb_service_queue_timeouts_total") == {web: 3}
    assert samples(fams, "l4lb_service_queue_wait_seconds_total") == {web: 4.5}


def test_info_and_daemon_gauges() -> None:
    fams = scrape(Exporter(make_status, process=False))
    assert samples(fams, "l4lb_info") == {(("version", "1.2.3"),): 1.0}
    assert samples(fams, "l4lb_table_generation") == {(): 41.0}
    assert samples(fams, "l4lb_workers") == {(): 2.0}
    assert samples(fams, "l4lb_start_time_seconds") == {(): 1700000000.0}
    assert samples(fams, "l4lb_scrape_errors_total") == {(): 0.0}


def test_service_metrics_carry_the_counters() -> None:
    status = make_status()
    fams = scrape(Exporter(lambda: status, process=False))
    for svc in status["services"]:
        c, key = svc["counters"], (("service", svc["name"]),)
        assert samples(fams, "l4lb_service_connections_total")[key] == c["conns_total"]
        assert samples(fams, "l4lb_service_connections_active")[key] == c["conns_active"]
        assert samples(fams, "l4lb_service_rejected_total")[key] == c["rejected"]
        assert samples(fams, "l4lb_service_no_backend_total")[key] == c["no_backend"]
        assert samples(fams, "l4lb_service_accept_errors_total")[key] == c["accept_errors"]
        nbytes = samples(fams, "l4lb_service_bytes_total")
        assert nbytes[(("direction", "to_backend"), *key)] == c["bytes_to_backend"]
        assert nbytes[(("direction", "to_client"), *key)] == c["bytes_to_client"]
        info = samples(fams, "l4lb_service_info")
        assert info[(("protocol", svc["protocol"]), ("scheduler", svc["scheduler"]),
                     *key)] == 1.0
    per_state = samples(fams, "l4lb_service_backends")
    assert per_state[(("service", "web"), ("state", "up"))] == 1
    assert per_state[(("service", "web"), ("state", "down"))] == 1
    assert per_state[(("service", "web"), ("state", "drain"))] == 1
    assert per_state[(("service", "web"), ("state", "maint"))] == 0
    assert per_state[(("service", "dns"), ("state", "maint"))] == 1


def test_backend_metrics_carry_every_view_field() -> None:
    status = make_status()
    fams = scrape(Exporter(lambda: status, process=False))
    backends = list(every_backend(status))
    for name in ("l4lb_backend_connections_total", "l4lb_backend_connections_active",
                 "l4lb_backend_connect_failures_total", "l4lb_backend_up",
                 "l4lb_backend_weight", "l4lb_backend_effective_weight",
                 "l4lb_backend_max_connections", "l4lb_backend_backup"):
        assert len(samples(fams, name)) == len(backends), name
    for b in backends:
        key = bkey(b["service"], b["address"], b["name"])
        assert samples(fams, "l4lb_backend_connections_total")[key] == b["conns_total"]
        assert samples(fams, "l4lb_backend_connections_active")[key] == b["conns_active"]
        assert samples(fams, "l4lb_backend_connect_failures_total")[key] == \
            b["connect_failures"]
        assert samples(fams, "l4lb_backend_weight")[key] == b["weight"]
        assert samples(fams, "l4lb_backend_effective_weight")[key] == b["effective_weight"]
        assert samples(fams, "l4lb_backend_max_connections")[key] == b["max_connections"]
        assert samples(fams, "l4lb_backend_backup")[key] == (1 if b["backup"] else 0)
        assert samples(fams, "l4lb_backend_up")[key] == (1 if b["state"] == "up" else 0)
        nbytes = samples(fams, "l4lb_backend_bytes_total")
        assert nbytes[bkey(b["service"], b["address"], b["name"], direction="to_backend")] == \
            b["bytes_to_backend"]
        assert nbytes[bkey(b["service"], b["address"], b["name"], direction="to_client")] == \
            b["bytes_to_client"]
        states = samples(fams, "l4lb_backend_state")
        got = {s: states[bkey(b["service"], b["address"], b["name"], state=s)] for s in STATES}
        assert got == {s: (1.0 if s == b["state"] else 0.0) for s in STATES}


def test_label_values_with_quotes_backslashes_and_newlines_round_trip() -> None:
    fams = scrape(Exporter(make_status, process=False))
    names = {dict(k)["name"] for k in samples(fams, "l4lb_backend_weight")}
    assert 'odd "name"\\ with\nnewline' in names
    assert "[::1]:9002" in {dict(k)["backend"] for k in samples(fams, "l4lb_backend_weight")}


def test_counters_are_monotonic_across_scrapes_of_growing_snapshots() -> None:
    status = make_status()
    exporter = Exporter(lambda: status, process=False)
    counter_names = [n + "_total" for n, f in scrape(exporter).items() if f.type == "counter"]
    assert len(counter_names) >= 8
    previous: dict[str, dict[Any, float]] = {}
    for step in range(1, 6):
        fams = scrape(exporter)
        for name in counter_names:
            now = samples(fams, name)
            before = previous.get(name, {})
            for key, value in now.items():
                assert value >= before.get(key, 0.0), (name, key)
            previous[name] = now
        status = copy.deepcopy(status)  # the daemon's counters only grow between scrapes
        for svc in status["services"]:
            for k in ("conns_total", "bytes_to_backend", "bytes_to_client", "rejected"):
                svc["counters"][k] += step * 3
            for b in svc["backends"]:
                for k in ("conns_total", "connect_failures", "bytes_to_client"):
                    b[k] += step
    assert previous["l4lb_backend_connections_total"][bkey("web", "127.0.0.1:9001", "b1")] \
        == 11 + 1 + 2 + 3 + 4


def test_health_and_probe_latency_and_connlog_when_given() -> None:
    health = {"backends": 3, "in_flight": 1, "waiting": 0, "probes": 120, "failed": 7,
              "inconclusive": 2, "transitions": 4, "max_start_delay": 0.015, "stray": 6}
    latency = {("web", "127.0.0.1:9001"): 0.0025}
    connlog = {"written": 10, "dropped": 2, "failed": 1, "queued": 3, "reopened": 1,
               "ring_dropped": 5, "invalid": 0}
    fams = scrape(Exporter(make_status, health=lambda: health, probe_latency=lambda: latency,
                           connlog=lambda: connlog, process=False))
    assert samples(fams, "l4lb_health_probes_total") == {(): 120}
    assert samples(fams, "l4lb_health_probe_failures_total") == {(): 7}
    assert samples(fams, "l4lb_health_probes_inconclusive_total") == {(): 2}
    assert samples(fams, "l4lb_health_transitions_total") == {(): 4}
    assert samples(fams, "l4lb_health_backends") == {(): 3}
    assert samples(fams, "l4lb_health_probes_in_flight") == {(): 1}
    assert samples(fams, "l4lb_health_probes_waiting") == {(): 0}
    assert samples(fams, "l4lb_health_max_start_delay_seconds") == {(): 0.015}
    assert samples(fams, "l4lb_health_syn_stray_segments_total") == {(): 6}
    assert samples(fams, "l4lb_backend_probe_latency_seconds") == \
        {bkey("web", "127.0.0.1:9001", "b1"): 0.0025}
    assert samples(fams, "l4lb_connlog_lines_written_total") == {(): 10}
    assert samples(fams, "l4lb_connlog_lines_dropped_total") == {(): 2}
    assert samples(fams, "l4lb_connlog_lines_failed_total") == {(): 1}
    assert samples(fams, "l4lb_connlog_lines_queued") == {(): 3}
    assert samples(fams, "l4lb_connlog_records_dropped_ring_total") == {(): 5}
    assert samples(fams, "l4lb_connlog_records_invalid_total") == {(): 0}
    assert samples(fams, "l4lb_loop_lag_max_seconds") == {(): 0.667}
    assert samples(fams, "l4lb_loop_stalls_total") == {(): 2}


def test_every_metric_is_listed_in_the_docs() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "observability.md").read_text()
    health = {"backends": 3, "in_flight": 1, "waiting": 0, "probes": 120, "failed": 7,
              "inconclusive": 2, "transitions": 4, "max_start_delay": 0.015}
    connlog = {"written": 1, "dropped": 0, "failed": 0, "queued": 0, "ring_dropped": 0,
               "invalid": 0}
    fams = scrape(Exporter(make_status, health=lambda: health,
                           probe_latency=lambda: {("web", "127.0.0.1:9001"): 0.1},
                           connlog=lambda: connlog, process=False))
    for fam in fams.values():
        name = fam.name + ("_total" if fam.type == "counter" else "")
        name = fam.name + "_info" if fam.type == "info" else name
        assert f"`{name}`" in doc, name


@pytest.mark.parametrize("given", [False, True])
def test_absent_extras_leave_no_metrics(given: bool) -> None:
    """No source, or a source with nothing to report now (None): no metrics, no error."""
    exporter = (Exporter(make_status, health=lambda: None, probe_latency=lambda: None,
                         connlog=lambda: None, process=False) if given
                else Exporter(make_status, process=False))
    fams = scrape(exporter)
    assert not [n for n in fams if n.startswith(("l4lb_health", "l4lb_connlog"))]
    assert "l4lb_backend_probe_latency_seconds" not in fams
    assert samples(fams, "l4lb_scrape_errors_total") == {(): 0}


def test_failing_snapshot_is_counted_and_process_metrics_stay() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("daemon state unreadable")

    exporter = Exporter(broken)
    fams = scrape(exporter)
    assert samples(fams, "l4lb_scrape_errors_total") == {(): 1}
    assert "l4lb_backend_connections" not in fams
    assert "process_cpu_seconds" in fams
    fams = scrape(exporter)
    assert samples(fams, "l4lb_scrape_errors_total") == {(): 2}


def test_render_of_read_equals_the_scrape_time_registry() -> None:
    exporter = Exporter(make_status, process=False)
    assert exporter.render(exporter.read()) == generate_latest(exporter.registry)


@settings(max_examples=60, deadline=None)
@given(names=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4),
       values=st.lists(st.integers(min_value=0, max_value=2**63), min_size=4, max_size=4))
def test_fast_text_format_matches_generate_latest(names: list[str], values: list[int]) -> None:
    status = make_status()
    web = status["services"][0]["backends"]
    for i, name in enumerate(names):
        web[i % len(web)]["name"] = name
    web[0].update(conns_total=values[0], bytes_to_backend=values[1],
                  bytes_to_client=values[2], connect_failures=values[3])
    exporter = Exporter(lambda: status, health=lambda: {"max_start_delay": 1e-7},
                        probe_latency=lambda: {("web", "127.0.0.1:9001"): 0.25},
                        process=False)
    assert exporter.render(exporter.read()) == generate_latest(exporter.registry)


def test_text_format_refuses_types_it_does_not_write() -> None:
    with pytest.raises(ValueError, match="histogram"):
        text_format([HistogramMetricFamily("h", "doc", buckets=[("+Inf", 1)], sum_value=1)])


def test_render_appends_process_metrics() -> None:
    text = Exporter(make_status).render(Exporter(make_status).read()).decode()
    fams = {f.name for f in text_string_to_metric_families(text)}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info",
            "l4lb_backend_connections"} <= fams


def test_collector_reads_the_snapshot_at_each_scrape() -> None:
    calls = []

    def snapshot() -> dict[str, Any]:
        calls.append(1)
        status = make_status()
        status["table"]["generation"] = len(calls)
        return status

    exporter = Exporter(snapshot, process=False)
    assert calls == []  # registering reads nothing
    assert samples(scrape(exporter), "l4lb_table_generation") == {(): 1}
    assert samples(scrape(exporter), "l4lb_table_generation") == {(): 2}


@pytest.mark.parametrize("services", [[], [{"name": "empty", "protocol": "tcp",
                                             "scheduler": "round_robin", "listen": [],
                                             "counters": {}, "backends": []}]])
def test_no_services_or_no_backends(services: list[dict[str, Any]]) -> None:
    status = make_status()
    status["services"] = services
    fams = scrape(Exporter(lambda: status, process=False))
    assert samples(fams, "l4lb_table_generation") == {(): 41}
    assert samples(fams, "l4lb_backend_connections_total") == {}


def test_udp_and_vrrp_families() -> None:
    status = make_status()
    status["services"][1]["protocol"] = "udp"
    status["services"][1]["counters"].update(
        datagrams_in=40, datagrams_out=38, flows_created=12, flows_expired=10, flows_active=2,
        drops_max_flows=1, drops_no_backend=0, drops_truncated=3, drops_send=0)
    status["vrrp"] = [{"name": "VI_1", "state": "BACKUP", "priority": 100,
                       "effective_priority": 50, "vips_held": False,
                       "counters": {"adverts_sent": 0, "adverts_received": 7,
                                    "drops": {"ttl": 2, "checksum": 1}}}]
    fam = scrape(Exporter(lambda: copy.deepcopy(status), process=False))
    assert samples(fam, "l4lb_service_datagrams_total") == {
        (("direction", "from_client"), ("service", "dns")): 40.0,
        (("direction", "to_client"), ("service", "dns")): 38.0}
    assert samples(fam, "l4lb_service_flows_active") == {(("service", "dns"),): 2.0}
    drops = samples(fam, "l4lb_service_datagram_drops_total")
    assert drops[(("reason", "truncated"), ("service", "dns"))] == 3.0
    state = samples(fam, "l4lb_vrrp_state")
    assert state[(("instance", "VI_1"), ("state", "BACKUP"))] == 1.0
    assert state[(("instance", "VI_1"), ("state", "MASTER"))] == 0.0
    assert samples(fam, "l4lb_vrrp_effective_priority") == {(("instance", "VI_1"),): 50.0}
    assert samples(fam, "l4lb_vrrp_drops_total") == {
        (("instance", "VI_1"), ("reason", "checksum")): 1.0,
        (("instance", "VI_1"), ("reason", "ttl")): 2.0}
    assert samples(fam, "l4lb_vrrp_events_total")[
        (("instance", "VI_1"), ("kind", "adverts_received"))] == 7.0
