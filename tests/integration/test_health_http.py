"""kind = "http" probes against real loopback servers: small asyncio HTTP servers that answer
200, 503, 301, garbage, slowly, or close early; and the daemon against a real nginx whose
health location turns to `return 503`, which takes the backend DOWN with the status in the log
line and brings it back. Every test is bounded in time and stops what it started."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from l4lb.health import HealthSettings, ProbeResult, probe_once
from l4lb.health.probe import USER_AGENT
from l4lb.health.settings import parse_status_spec

from .procs import child_env, free_port, l4lb_cmd, stop_process, wait_listening
from .test_health_daemon import check_of, wait_state
from .test_health_probes import open_fds, refusing_port, run, server

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def http(**kw: object) -> HealthSettings:
    return HealthSettings(kind="http", interval=1.0, timeout=0.4, **kw)  # type: ignore[arg-type]


def answering(*pieces: bytes, pause: float = 0.0, then_wait: float = 0.0) -> Handler:
    """A server that reads the request head, writes `pieces` (pausing between them), waits,
    and closes. Each request it read is appended to `requests`."""
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        requests.append(await r.readuntil(b"\r\n\r\n"))
        for piece in pieces:
            w.write(piece)
            await w.drain()
            if pause:
                await asyncio.sleep(pause)
        if then_wait:
            await asyncio.sleep(then_wait)
    requests: list[bytes] = []
    handler.requests = requests  # type: ignore[attr-defined]
    return handler


def probe(handler: Handler, settings: HealthSettings, host: str = "127.0.0.1") -> ProbeResult:
    async def go() -> ProbeResult:
        async with server(handler) as port:
            return await probe_once(host, port, settings)
    return run(go())


OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nhealthy\n"


@pytest.mark.parametrize("response, settings, ok, reason", [
    (OK, http(), True, "HTTP 200 OK"),
    (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", http(), False,
     "HTTP 503 Service Unavailable"),
    (b"HTTP/1.1 301 Moved Permanently\r\nLocation: /login\r\n\r\n", http(), True,
     "HTTP 301 Moved Permanently"),
    (b"HTTP/1.1 301 Moved Permanently\r\nLocation: /login\r\n\r\n",
     http(http_expect_status=parse_status_spec("200")), False, "HTTP 301 Moved Permanently"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", http(), False, "not HTTP: got b'SSH-2.0-OpenSSH_9.2'"),
    (OK, http(http_expect_body=b"healthy"), True, "HTTP 200 OK, body matched"),
    (OK, http(http_expect_body=re.compile(rb"^sick")), False,
     "HTTP 200 OK, body does not match (first 8 bytes)"),
])
def test_http_probe_verdicts(response: bytes, settings: HealthSettings, ok: bool,
                             reason: str) -> None:
    handler = answering(response)
    before = open_fds()
    result = probe(handler, settings)
    assert (result.ok, result.reason, result.conclusive) == (ok, reason, True)
    assert 0 < result.latency < 0.4
    assert open_fds() <= before  # the probe closed its socket
    port = handler.requests[0].split(b"Host: 127.0.0.1:")[1].split(b"\r\n")[0]  # type: ignore[attr-defined]
    assert handler.requests == [  # type: ignore[attr-defined]
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:" + port + b"\r\nUser-Agent: " +
        USER_AGENT.encode() + b"\r\nConnection: close\r\n\r\n"]


def test_http_probe_reads_a_chunked_body_sent_in_pieces() -> None:
    pieces = (b"HTTP/1.1 200 OK\r\nTransfer-", b"Encoding: chunked\r\n\r\n5\r\nhea",
              b"lt\r\n3\r\nhy!\r\n", b"0\r\n\r\n")
    result = probe(answering(*pieces, pause=0.02), http(http_expect_body=b"healthy!"))
    assert (result.ok, result.reason) == (True, "HTTP 200 OK, body matched")
    result = probe(answering(*pieces, pause=0.02), http(http_expect_body=b"sick"))
    assert (result.ok, result.reason) == (False, "HTTP 200 OK, body does not match "
                                                 "(first 8 bytes)")


@pytest.mark.parametrize("pieces, reason", [
    ((), "read timeout before the status line"),
    ((b"HTTP/1.1 200 OK\r\nServer: slow\r\n",), "read timeout in the headers (HTTP 200 OK)"),
])
def test_http_probe_timeouts_say_where(pieces: tuple[bytes, ...], reason: str) -> None:
    result = probe(answering(*pieces, then_wait=2.0), http())
    assert (result.ok, result.reason) == (False, reason)
    assert 0.35 < result.latency < 1.0


def test_http_probe_timeout_in_the_body() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nnot yet"
    result = probe(answering(head, then_wait=2.0), http(http_expect_body=b"ok"))
    assert (result.ok, result.reason) == (False, "read timeout in the body (HTTP 200 OK, 7 "
                                                 "bytes read)")


@pytest.mark.parametrize("pieces, reason", [
    ((), "connection closed before the status line"),
    ((b"HTTP/1.1 200 OK\r\nServer: x\r\n",), "connection closed in the headers (HTTP 200 OK)"),
])
def test_http_probe_connection_closed_early(pieces: tuple[bytes, ...], reason: str) -> None:
    result = probe(answering(*pieces), http())
    assert (result.ok, result.reason) == (False, reason)


def test_http_probe_ipv6_host_header_method_and_path() -> None:
    handler = answering(b"HTTP/1.0 204 No Content\r\n\r\n")

    async def go() -> ProbeResult:
        srv = await asyncio.start_server(handler, "::1", 0)
        try:
            port = srv.sockets[0].getsockname()[1]
            return await probe_once("::1", port, http(http_method="OPTIONS",
                                                      http_path="/healthz?deep=1"))
        finally:
            srv.close()
            await srv.wait_closed()
    try:
        result = run(go())
    except OSError as exc:  # pragma: no cover - a host without IPv6 loopback
        pytest.skip(f"no IPv6 loopback: {exc}")
    assert (result.ok, result.reason) == (True, "HTTP 204 No Content")
    request = handler.requests[0]  # type: ignore[attr-defined]
    assert request.startswith(b"OPTIONS /healthz?deep=1 HTTP/1.1\r\nHost: [::1]:")


def test_http_probe_refused_is_a_connect_failure() -> None:
    with refusing_port() as port:
        result = run(probe_once("127.0.0.1", port, http()))
    assert (result.ok, result.reason) == (False, "connect refused")


# -- the daemon against nginx ----------------------------------------------------------------

NGINX_CONF = """\
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /healthz {{
            if (-f {tmp}/maintenance) {{ return 503; }}
            return 200 "ok\\n";
        }}
        location / {{ return 200 "app\\n"; }}
    }}
}}
"""

needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")


@needs_nginx
def test_daemon_takes_an_nginx_backend_down_on_503_and_back(tmp_path: Path) -> None:
    nport, lb = free_port(), free_port()
    (tmp_path / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp_path, port=nport))
    cfg = tmp_path / "l4lb.toml"
    cfg.write_text(
        f'[global]\nworkers = 1\nshutdown_timeout = "0s"\ncontrol_socket = "{tmp_path}/l.sock"\n'
        f'\n[[services]]\nname = "web"\nlisten = ["127.0.0.1:{lb}"]\n'
        '  [services.health]\n  kind = "http"\n  http_path = "/healthz"\n'
        '  http_expect_body = "ok"\n  interval = "100ms"\n  timeout = "80ms"\n  rise = 2\n'
        f'  fall = 2\n  jitter = 0.0\n  [[services.backends]]\n  address = "127.0.0.1:{nport}"\n')
    nginx = subprocess.Popen(["nginx", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
                              "-c", str(tmp_path / "nginx.conf")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc: subprocess.Popen[bytes] | None = None
    backend = f"127.0.0.1:{nport}"
    try:
        wait_listening(nport, nginx)
        proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_listening(lb, proc)
        wait_state(cfg, backend, "up")
        (tmp_path / "maintenance").touch()
        wait_state(cfg, backend, "down")
        check = check_of(cfg, backend)  # why, as `l4lb status` and the control API say it
        assert check["change_reason"] == \
            "HTTP 503 Service Temporarily Unavailable (2/2 probes failed)"
        assert check["last_reason"] == "HTTP 503 Service Temporarily Unavailable"
        (tmp_path / "maintenance").unlink()
        wait_state(cfg, backend, "up")
        time.sleep(0.05)
        assert stop_process(proc, signal.SIGTERM) == 0
    finally:
        if proc is not None:
            stop_process(proc, signal.SIGKILL)
        stop_process(nginx, timeout=10.0)
    err = proc.stderr.read().decode() if proc is not None and proc.stderr else ""
    assert (f"backend web/{backend} is DOWN: HTTP 503 Service Temporarily Unavailable "
            "(2/2 probes failed)") in err, err
    assert f"backend web/{backend} is UP: HTTP 200 OK, body matched (2/2 probes passed)" in err
    access = (tmp_path / "access.log").read_text()
    assert '"GET /healthz HTTP/1.1" 503' in access and USER_AGENT in access
