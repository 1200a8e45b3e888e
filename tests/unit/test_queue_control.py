"""The queue for full backends in the control plane: config keys, table records, status text
and the connection log's `queued` field (the data planes' side is tests/dataplane/test_queue.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from l4lb import statuspage
from l4lb.config import load_text
from l4lb.connlog import RecordError, format_record
from l4lb.display import status_text, tcp_options_text
from l4lb.table.blob import parse
from l4lb.table.builder import TableBuilder
from l4lb.table.maglev import maglev_fill as py_fill

from .fakehost import ExampleHost

SERVICE = """
[[services]]
name = "db"
listen = ["127.0.0.1:6432"]
{extra}
backends = [{{ address = "127.0.0.1:5432", max_connections = 2 }}]

[[services]]
name = "dns"
protocol = "udp"
listen = ["127.0.0.1:5353"]
backends = [{{ address = "127.0.0.1:5354" }}]
"""


def records(extra: str) -> tuple[Any, Any]:
    cfg = load_text(SERVICE.format(extra=extra), "t.toml", host=ExampleHost(transparent=0))
    table = parse(TableBuilder(maglev_fill=py_fill).build(cfg))
    by_proto = {s.protocol: s for s in table.services}
    return by_proto[0], by_proto[1]


def test_without_the_keys_the_records_have_no_queue() -> None:
    tcp, udp = records("")
    assert (tcp.queue_timeout_ms, tcp.max_queue) == (0, 0)
    assert (udp.queue_timeout_ms, udp.max_queue) == (0, 0)


@pytest.mark.parametrize(("extra", "want"), [
    ('queue_timeout = "10s"', (10000, 1024)),  # the bounded default
    ('queue_timeout = "250ms"\nmax_queue = 7', (250, 7)),
    ('queue_timeout = "0s"\nmax_queue = 7', (0, 0)),  # "0s" is off: nothing in the table
])
def test_the_keys_reach_the_tcp_record(extra: str, want: tuple[int, int]) -> None:
    tcp, udp = records(extra)
    assert (tcp.queue_timeout_ms, tcp.max_queue) == want
    assert (udp.queue_timeout_ms, udp.max_queue) == (0, 0)


def test_status_shows_the_queue() -> None:
    options = {"queue_timeout": 10.0, "max_queue": 500}
    assert tcp_options_text(options) == "queue for full backends (up to 500 clients, 10s each)"
    assert tcp_options_text({"queue_timeout": 0.0, "max_queue": None}) == ""
    svc = {"name": "db", "protocol": "tcp", "scheduler": "least_conn",
           "listen": ["127.0.0.1:6432"], "backends": [], "tcp_options": options,
           "counters": {"conns_total": 9, "queued_now": 2, "queued_total": 6,
                        "queue_timeouts": 1, "queue_wait_ms": 1000}}
    doc = {"version": "t", "pid": 1, "config": "c", "started": 0.0, "workers": 1,
           "table": {"generation": 1, "digest": "d"}, "services": [svc], "vrrp": []}
    text = status_text(doc)
    assert "\n  queue 2 waiting, 6 queued in all, 1 timed out, mean wait 250 ms\n" in text
    svc["tcp_options"] = {"queue_timeout": 0.0}
    svc["counters"] = {"conns_total": 9}
    assert "queue" not in status_text(doc)


def base_record(**changes: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"client": "192.0.2.7:51000", "service": "db", "protocol": "tcp",
                           "backend": None, "started": 1700000000.25, "duration": 2.0,
                           "bytes_to_backend": 0, "bytes_to_client": 0,
                           "reason": "queue_timeout"}
    rec.update(changes)
    return rec


def test_connection_log_line_has_queued_only_for_clients_that_waited() -> None:
    line = json.loads(format_record(base_record(queued=1.9996)))
    keys = list(line)
    assert keys[keys.index("duration") + 1] == "queued"
    assert line["queued"] == 2.0 and line["reason"] == "queue_timeout"
    assert "queued" not in json.loads(format_record(base_record(queued=0.0)))
    assert "queued" not in json.loads(format_record(base_record()))
    with pytest.raises(RecordError):
        format_record(base_record(queued=-1.0))
    with pytest.raises(RecordError):
        format_record(base_record(queued="soon"))


def test_status_page_shows_the_queue_line() -> None:
    svc = {"name": "db<1>", "protocol": "tcp", "scheduler": "least_conn",
           "listen": ["127.0.0.1:6432"], "backends": [],
           "tcp_options": {"queue_timeout": 10.0, "max_queue": 500},
           "counters": {"queued_now": 2, "queued_total": 6, "queue_timeouts": 1,
                        "queue_wait_ms": 1000}}
    plain = {"name": "web", "protocol": "tcp", "scheduler": "maglev", "listen": [],
             "backends": [], "counters": {"conns_total": 3}}
    doc = {"version": "t", "pid": 1, "started": 0.0, "workers": 1,
           "table": {"generation": 1, "digest": "d"}, "services": [svc, plain], "vrrp": []}
    line = "queue 2 waiting, 6 queued in all, 1 timed out, mean wait 250 ms"
    # the page script copies the document's text; the server renders the same line
    assert statuspage.document(doc, now=0.0)["queues"] == {"db<1>": line}
    page = statuspage.render_page(doc, now=0.0)
    assert page.count('<p class="summary queue">') == 1
    assert f'<p class="summary queue">{line}</p>' in page
    # a service without queue_timeout that never queued has no line
    assert statuspage.queues({"services": [plain]}) == {}
