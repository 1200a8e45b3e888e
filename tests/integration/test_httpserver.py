"""The metrics/status HTTP listener on loopback: routes, methods, errors, limits, shutdown."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from l4lb import httpserver
from l4lb.httpserver import HttpServer

from .loopthread import GrowingStatus, LoopThread


@dataclass
class Served:
    lt: LoopThread
    server: HttpServer
    status: GrowingStatus
    port: int


@pytest.fixture
def served() -> Iterator[Served]:
    lt = LoopThread()
    status = GrowingStatus()
    health = {"backends": 4, "probes": 12, "failed": 3, "in_flight": 1, "waiting": 0,
              "inconclusive": 0, "transitions": 2, "max_start_delay": 0.001}
    server = lt.run(httpserver.start("127.0.0.1:0", status, health=lambda: health,
                                     probe_latency=lambda: {("web", "127.0.0.1:9001"): 0.003}))
    try:
        yield Served(lt, server, status, server.addresses[0][1])
    finally:
        lt.run(server.close())
        lt.close()


def get(port: int, path: str, method: str = "GET",
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data`, read the reply until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def closed_by_server(s: socket.socket) -> bool:
    """True if the server closed `s` (FIN or reset) without sending anything."""
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def test_metrics_is_prometheus_text_with_every_backend(served: Served) -> None:
    code, headers, body = get(served.port, "/metrics")
    assert code == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert headers["connection"] == "close"
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    conns = {s.labels["backend"]: s.value for s in fams["l4lb_backend_connections"].samples
             if s.name == "l4lb_backend_connections_total"}
    assert set(conns) == {"127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003", "[::1]:9004"}
    assert conns["127.0.0.1:9002"] == 17
    assert fams["l4lb_health_probes"].samples[0].value == 12
    assert fams["l4lb_backend_probe_latency_seconds"].samples[0].value == 0.003
    assert "process_cpu_seconds" in fams
    assert fams["l4lb_http_connections_refused"].samples[0].value == 0  # the daemon's own
    assert int(headers["content-length"]) == len(body)


def test_metrics_counters_grow_between_scrapes(served: Served) -> None:
    def alpha_total() -> float:
        body = get(served.port, "/metrics")[2].decode()
        fams = {f.name: f for f in text_string_to_metric_families(body)}
        return next(s.value for s in fams["l4lb_backend_connections"].samples
                    if s.name.endswith("_total") and s.labels["name"] == "alpha")

    first = alpha_total()
    time.sleep(0.05)
    assert alpha_total() > first


def test_metrics_gzip_when_accepted(served: Served) -> None:
    code, headers, body = get(served.port, "/metrics", headers={"Accept-Encoding": "gzip"})
    assert code == 200 and headers["content-encoding"] == "gzip"
    assert b"l4lb_backend_connections_total" in gzip.decompress(body)


def test_status_page(served: Served) -> None:
    code, headers, body = get(served.port, "/")
    assert code == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert headers["x-frame-options"] == "DENY"
    text = body.decode()
    for address in ("127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003", "[::1]:9004"):
        assert f'data-backend="{address}"' in text
    assert "&lt;b&gt;beta&lt;/b&gt;" in text and "<b>beta</b>" not in text


def test_status_json(served: Served) -> None:
    code, headers, body = get(served.port, "/status.json?x=1")
    assert code == 200 and headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert abs(doc["time"] - time.time()) < 5
    assert doc["health"]["probes"] == 12
    assert [b["name"] for b in doc["status"]["services"][0]["backends"]] == \
        ["alpha", "<b>beta</b>", "gamma", "delta"]


@pytest.mark.parametrize("path", ["/", "/metrics", "/status.json"])
def test_head_has_the_get_headers_and_no_body(served: Served, path: str) -> None:
    reply = raw(served.port, f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _, body = reply.partition(b"\r\n\r\n")
    assert status_of(reply) == 200 and body == b""
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    assert length > 100


def test_unknown_path_is_404(served: Served) -> None:
    code, _, body = get(served.port, "/admin")
    assert code == 404 and b"/metrics" in body


def test_other_methods_are_405_with_allow(served: Served) -> None:
    code, headers, _ = get(served.port, "/metrics", method="DELETE")
    assert code == 405 and headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"garbage\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64) + b"\r\n\r\n", 400),  # TLS
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 70 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + (b"X-A: " + b"b" * 7000 + b"\r\n") * 3 + b"\r\n",
     431),
])
def test_bad_requests_get_an_error_status(served: Served, request_bytes: bytes,
                                          status: int) -> None:
    reply = raw(served.port, request_bytes)
    assert status_of(reply) == status
    assert b"Connection: close" in reply


def test_bare_lf_line_ends_are_tolerated(served: Served) -> None:
    reply = raw(served.port, b"GET /status.json HTTP/1.0\n\n")
    assert status_of(reply) == 200


def test_slow_client_times_out_with_408(served: Served,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpserver, "HEAD_TIMEOUT", 0.3)
    started = time.monotonic()
    reply = raw(served.port, b"GET / HTTP/1.1\r\nHost: x\r\n")  # never ends its head
    assert status_of(reply) == 408
    assert time.monotonic() - started < 5


def test_silent_connection_is_closed_without_a_reply(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""


def test_connections_beyond_the_limit_get_503(served: Served,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpserver, "MAX_CLIENTS", 2)
    monkeypatch.setattr(httpserver, "HEAD_TIMEOUT", 3.0)
    idle = [socket.create_connection(("127.0.0.1", served.port), timeout=10) for _ in range(2)]
    try:
        for s in idle:
            s.sendall(b"GET / HTTP/1.1\r\n")  # an unfinished head holds each slot
        deadline = time.monotonic() + 5
        while served.server.connections < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        reply = raw(served.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(reply) == 503  # answered, not reset (docs/observability.md)
        assert served.server.refused_total() == 1
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 5  # the slots come back
    while served.server.connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert get(served.port, "/status.json")[0] == 200


def server_side_sockets(port: int) -> int:
    """This process's descriptors of TCP sockets with local port `port` and a peer: the
    server's ends of its connections (the clients' ends have it as their remote port, the
    listener has no peer). Read through socket objects that borrow each descriptor (detach(),
    never close()), so that counting takes no descriptor and is quick."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=int(name))
        except OSError:  # not a socket, or closed meanwhile
            continue
        try:
            if (sock.type == socket.SOCK_STREAM
                    and sock.family in (socket.AF_INET, socket.AF_INET6)
                    and sock.getsockname()[1] == port):
                sock.getpeername()  # OSError for the listener
                count += 1
        except OSError:
            pass
        finally:
            sock.detach()
    return count


class Sampler:
    """The most server_side_sockets(port) seen, sampled on a thread until stop()."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.most = max(self.most, server_side_sockets(self.port))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.most


FLOOD = 90  # idle connections at once: within the listen backlog (100), so none waits for a
#             SYN retry; from 45 addresses, 2 each, so that the first ones are all served


@pytest.mark.parametrize(("share", "served", "answered"), [
    (32, 8, 8),  # the least share the ceiling keeps (limit 256): a quarter each
    (64, 16, 16),  # limit 1024
    (None, 64, FLOOD - 64),  # no ceiling: as before, 64 served and every refusal answered
    (1024, 64, FLOOD - 64),  # limit 16384 and up: the same
])
def test_a_flood_of_idle_connections_holds_no_more_descriptors_than_the_caps(
        monkeypatch: pytest.MonkeyPatch, share: int | None, served: int, answered: int) -> None:
    """Each connection holds a descriptor of the control plane's share: served ones and
    lingering refusals stay within their caps at every moment, the rest are closed at once
    without a reply, every refusal is counted, and the slots come back afterwards."""
    monkeypatch.setattr(httpserver, "HEAD_TIMEOUT", 30.0)  # served connections keep their
    monkeypatch.setattr(httpserver, "LINGER_TIME", 30.0)  # slots, and so do answered refusals
    lt = LoopThread()
    server = lt.run(httpserver.start("127.0.0.1:0", GrowingStatus(), process_metrics=False,
                                     fd_share=share))
    port = server.addresses[0][1]
    bound = server.caps.descriptors + 1  # + the one in hand between accept() and its close
    flood: list[socket.socket] = []
    sampler = Sampler(port)
    try:
        for i in range(FLOOD):
            sock = socket.socket()
            flood.append(sock)
            sock.settimeout(10)
            sock.bind((f"127.0.0.{2 + i % 45}", 0))
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"G")  # an unfinished head holds a served slot
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
                server.connections + server.refused_total() == FLOOD
                and server_side_sockets(port) == served + answered):
            time.sleep(0.001)
        assert sampler.stop() <= bound
        assert (server.connections, server.held) == (served, served + answered)
        assert server_side_sockets(port) == served + answered
        assert server.refused_total() == FLOOD - served
        replies = []
        for sock in flood[served:]:  # accepted in order: the first ones are served
            try:
                head = sock.recv(100)
            except ConnectionResetError:  # dropped with its request unread
                head = b""
            replies.append(status_of(head) if head else 0)
        assert replies == [503] * answered + [0] * (FLOOD - served - answered)
    finally:
        sampler.stop()
        for sock in flood:
            sock.close()
        try:
            deadline = time.monotonic() + 10  # the slots come back
            while (server.held or server_side_sockets(port)) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert (server.held, server_side_sockets(port)) == (0, 0)
            assert get(port, "/status.json")[0] == 200
        finally:
            lt.run(server.close())
            lt.close()


def test_failing_snapshot_gives_503_and_metrics_still_answer(served: Served) -> None:
    served.status.fail = True
    assert get(served.port, "/")[0] == 503
    assert get(served.port, "/status.json")[0] == 503
    code, _, body = get(served.port, "/metrics")
    assert code == 200
    assert b"l4lb_scrape_errors_total 1.0" in body
    assert b"l4lb_backend_connections_total" not in body
    served.status.fail = False
    assert get(served.port, "/")[0] == 200


def test_close_ends_open_connections_and_stops_listening(served: Served) -> None:
    errors: list[dict[str, object]] = []
    served.lt.loop.set_exception_handler(lambda _loop, context: errors.append(context))
    idle = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    try:
        idle.sendall(b"GET / HTTP/1.1\r\n")
        deadline = time.monotonic() + 5
        while not served.server.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        served.lt.run(served.server.close())
        assert closed_by_server(idle)
    finally:
        idle.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", served.port), timeout=5).close()
    served.lt.run(asyncio.sleep(0.05))  # let the loop run the connection's done callbacks
    assert errors == []  # cancelled connections end quietly


def test_port_in_use_raises_oserror(served: Served) -> None:
    with pytest.raises(OSError):
        served.lt.run(httpserver.start(f"127.0.0.1:{served.port}", served.status))


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    lt = LoopThread()
    try:
        try:
            server = lt.run(httpserver.start("[::1]:0", GrowingStatus(), process_metrics=False))
        except OSError as exc:
            pytest.skip(f"no ::1 here: {exc}")
        try:
            port = server.addresses[0][1]
            with socket.create_connection(("::1", port), timeout=10) as s:
                s.sendall(b"GET /status.json HTTP/1.1\r\nHost: [::1]\r\n\r\n")
                reply = b""
                while chunk := s.recv(65536):
                    reply += chunk
            assert status_of(reply) == 200
        finally:
            lt.run(server.close())
    finally:
        lt.close()


def big_status(services: int = 10, per_service: int = 1000) -> dict[str, object]:
    """A snapshot of 10,000 backends (the scale the health checker is built for)."""
    out = []
    for s in range(services):
        backends = [{"service": f"svc{s}", "address": f"127.1.{s}.{i % 250}:{8000 + i}",
                     "name": f"b{i}", "state": "up", "weight": 1, "effective_weight": 1,
                     "backup": False, "conns_total": i * 1000, "conns_active": i,
                     "connect_failures": 0, "bytes_to_backend": i * 12345,
                     "bytes_to_client": i * 99999} for i in range(per_service)]
        out.append({"name": f"svc{s}", "protocol": "tcp", "scheduler": "maglev",
                    "listen": ["127.0.0.1:80"], "counters": {"conns_total": 1},
                    "backends": backends})
    return {"version": "x", "pid": 1, "config": "c", "started": 0.0, "workers": 2,
            "table": {"generation": 1, "digest": "d"}, "services": out}


def test_formatting_many_backends_does_not_stall_the_loop() -> None:
    """/metrics for 10,000 backends takes about a second of CPU, off the event loop."""
    status = big_status()

    async def scenario() -> tuple[float, float, int]:
        server = await httpserver.start("127.0.0.1:0", lambda: status)
        port = server.addresses[0][1]
        gaps: list[float] = []
        done = False

        async def ticker() -> None:
            last = time.monotonic()
            while not done:
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        started = time.monotonic()
        try:
            code, _, body = await asyncio.to_thread(get, port, "/metrics")
        finally:
            done = True
            await task
            await server.close()
        assert code == 200
        return time.monotonic() - started, max(gaps), body.count(b"\nl4lb_backend_up{")

    took, worst_gap, backends = asyncio.run(scenario())
    assert backends == 10_000
    # Formatting on the loop would stall it for the whole request; off the loop only the
    # garbage collector and short C calls (join, encode) hold it, for tens of milliseconds.
    assert worst_gap < took / 2, (took, worst_gap)


def test_a_client_that_never_reads_is_dropped_within_the_send_timeout(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by review: when the unsent tail of a response fitted under the transport's
    high-water mark, drain() returned at once, SEND_TIMEOUT never fired, and the close waited
    without a deadline for a client that keeps a zero window: a few such clients held their
    served slots (and descriptors) for as long as they answered window probes. Responses of
    many sizes (the tail left in user space depends on the kernel's send buffer), clients with
    a 4 KiB receive buffer that read nothing: every slot must come back within a few
    SEND_TIMEOUTs."""
    monkeypatch.setattr(httpserver, "SEND_TIMEOUT", 1.0)

    async def route(request: httpserver.Request) -> httpserver.Response:
        return httpserver.Response(200, b"x" * int(request.path[1:]), "text/plain")

    monkeypatch.setattr(served.server, "_route", route)
    clients = []
    try:
        for i, size in enumerate(range(2_600_000, 3_000_000, 16_000)):
            client = socket.socket()
            clients.append(client)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.bind((f"127.0.2.{10 + i}", 0))  # one address each: no per-peer cap
            client.connect(("127.0.0.1", served.port))
            client.sendall(f"GET /{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        deadline = time.monotonic() + 4 * httpserver.SEND_TIMEOUT + 2.0
        while time.monotonic() < deadline and served.server.connections:
            time.sleep(0.1)
        assert served.server.connections == 0
    finally:
        for client in clients:
            client.close()


def test_a_listener_that_accept_keeps_failing_on_rests_instead_of_spinning(
        served: Served) -> None:
    """Found by review: any accept() error but a shortage was skipped with `continue`, so a
    listener that fails for good (here: shut down under the server, accept() says EINVAL each
    time it is readable) spun at 100 % CPU without a word. It now rests ACCEPT_PAUSE and the
    failure goes to the loop's exception handler."""
    listener = served.server.sockets[0]
    listener.shutdown(socket.SHUT_RDWR)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and listener not in served.server._resting:
        time.sleep(0.02)
    assert listener in served.server._resting
