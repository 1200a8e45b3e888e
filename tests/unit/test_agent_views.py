"""What an agent and a misc_dynamic weight look like to the operator: the STATE column and
the note line of `l4lb backends` (l4lb.display), and the metrics (l4lb.metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from l4lb.display import agent_note, backends_text
from l4lb.metrics import Exporter

NOW = 1_700_000_000.0


def agent(**kw: Any) -> dict[str, Any]:
    view = {"target": "10.0.1.5:9777", "last_reply": "drain 50% #window",
            "last_reply_at": NOW - 2, "weight_percent": 50, "admin": "drain", "health": "up",
            "reason": "window", "polls": 9, "replies": 7, "errors": 1, "failures": 1,
            "consecutive_failures": 0, "last_error": "unknown word 'x'",
            "last_error_at": NOW - 30, "holds": "drain 50% (#window)"}
    view.update(kw)
    return view


def backend(address: str, **kw: Any) -> dict[str, Any]:
    view = {"service": "web", "address": address, "name": address, "state": "up",
            "weight": 10, "effective_weight": 10, "backup": False, "conns_total": 0,
            "conns_active": 0, "connect_failures": 0, "bytes_to_backend": 0,
            "bytes_to_client": 0, "agent": None, "dynamic_weight": None}
    view.update(kw)
    return view


def test_note_says_what_the_agent_holds_and_how_its_polls_go() -> None:
    assert agent_note(None, NOW) == ""
    assert agent_note(agent(holds="", last_error=None), NOW) == ""
    assert agent_note(agent(), NOW) == \
        "agent 10.0.1.5:9777: holds drain 50% (#window); last reply 0m2s ago: " \
        "'drain 50% #window'"
    failing = agent(holds="", consecutive_failures=3, failures=4, last_error="connect refused",
                    last_error_at=NOW - 1)
    assert agent_note(failing, NOW) == \
        "agent 10.0.1.5:9777: holds nothing back; last reply 0m2s ago: 'drain 50% #window'; " \
        "last poll failed 0m1s ago: connect refused (3 in a row, 4 failures, 1 bad replies " \
        "in all)"


def test_backends_text_shows_the_agent_in_state_and_a_line() -> None:
    rows = [backend("10.0.1.5:80", state="drain", effective_weight=0, agent=agent()),
            backend("10.0.1.6:80", effective_weight=25, dynamic_weight=25),
            backend("10.0.1.7:80", agent=agent(holds="", last_error=None))]
    text = backends_text(rows, now=NOW)
    assert "drain, agent: drain 50% (#window)" in text
    assert "up, check weight 25" in text
    assert "10.0.1.5:80: agent 10.0.1.5:9777: holds drain 50% (#window)" in text
    assert "10.0.1.7:80:" not in text  # holds nothing, polls fine: no line


def test_metrics_of_agents_and_dynamic_weights() -> None:
    status = {"version": "1", "pid": 1, "config": "x", "started": NOW, "workers": 1,
              "table": {"generation": 1, "digest": "00"},
              "services": [{"name": "web", "protocol": "tcp", "scheduler": "maglev",
                            "listen": [], "counters": {}, "backends": [
                                backend("a:1", agent=agent(failures=4, errors=2)),
                                backend("b:1", agent=agent(weight_percent=None, admin="ready",
                                                           health="stopped")),
                                backend("c:1", dynamic_weight=7)]}]}
    text = generate_latest(Exporter(lambda: status, process=False).registry).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}

    def value(name: str, address: str, **extra: str) -> float | None:
        for s in fams[name.removesuffix("_total")].samples:
            if s.name == name and s.labels.get("backend") == address and all(
                    s.labels.get(k) == v for k, v in extra.items()):
                return float(s.value)
        return None

    assert value("l4lb_backend_agent_weight_percent", "a:1") == 50
    assert value("l4lb_backend_agent_weight_percent", "b:1") is None
    assert value("l4lb_backend_agent_admin", "a:1", state="drain") == 1
    assert value("l4lb_backend_agent_admin", "a:1", state="ready") == 0
    assert value("l4lb_backend_agent_health", "b:1", state="stopped") == 1
    assert value("l4lb_backend_agent_failures_total", "a:1") == 4
    assert value("l4lb_backend_agent_bad_replies_total", "a:1") == 2
    assert value("l4lb_backend_agent_failures_total", "c:1") is None
    assert value("l4lb_backend_dynamic_weight", "c:1") == 7
    assert value("l4lb_backend_dynamic_weight", "a:1") is None
    doc = (Path(__file__).resolve().parents[2] / "docs" / "observability.md").read_text()
    for name in ("l4lb_backend_agent_weight_percent", "l4lb_backend_agent_admin",
                 "l4lb_backend_agent_health", "l4lb_backend_agent_failures_total",
                 "l4lb_backend_agent_bad_replies_total", "l4lb_backend_dynamic_weight"):
        assert f"`{name}`" in doc, name


def test_change_reply_names_what_the_agent_holds() -> None:
    from l4lb.cli import _change_text

    reply = {"service": "web", "backend": "b", "state": "drain", "weight": 10, "generation": 4,
             "agent": "drain (#window)"}
    assert _change_text(reply) == ("web/b: state drain, weight 10 (table generation 4)\n"
                                   "note: its agent holds it at drain (#window) until the "
                                   "agent says otherwise")
    del reply["agent"]
    assert "agent" not in _change_text(reply)
