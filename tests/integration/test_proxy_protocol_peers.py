"""`proxy_protocol` end to end against real peers: nginx (`listen ... proxy_protocol`) and
HAProxy (`bind ... accept-proxy`) read the header l4lb sends (v1 over IPv4, v2 over IPv6) and
answer with the addresses they learnt from it, which must be the client's own and the VIP's.
The services' send_expect health probes must pass through the same listeners (their LOCAL /
UNKNOWN header is accepted), or the backends never come UP: initial_state = "down". Both data
planes. A test is skipped when its peer is not installed (CI installs the Debian packages
`nginx` and `haproxy`; scripts/test.sh)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .procs import child_env, free_port, l4lb_cmd, stop_process, wait_listening, wait_until

needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None,
                                 reason="nginx is not installed (Debian package nginx)")
needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None,
                                   reason="haproxy is not installed (Debian package haproxy)")

NGINX_CONF = """\
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{p4} proxy_protocol;
        listen [::1]:{p6} proxy_protocol;
        location / {{
            return 200 "pp $proxy_protocol_addr $proxy_protocol_port {server}\\n";
        }}
    }}
}}
"""


SERVER_VARS = "$proxy_protocol_server_addr $proxy_protocol_server_port"  # the VIP it reached


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    """nginx in the foreground (one process, ours), with a proxy_protocol listener on
    127.0.0.1 and one on ::1; yields their ports and its error log."""
    p4, p6 = free_port(), free_port("::1")
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp_path, p4=p4, p6=p6, server=SERVER_VARS))
    proc = subprocess.Popen(["nginx", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
                             "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(p4, proc)
        yield p4, p6, tmp_path / "error.log"
    finally:
        stop_process(proc, timeout=10.0)


def l4lb_config(tmp: Path, port4: int, port6: int, p4: int, p6: int) -> str:
    probe = ('  [services.health]\n  kind = "send_expect"\n  interval = "200ms"\n'
             '  timeout = "150ms"\n  rise = 1\n  initial_state = "down"\n'
             '  send = "GET / HTTP/1.0\\r\\n\\r\\n"\n  expect = "HTTP/1.1 200"\n')
    return (f'[global]\nworkers = 1\nshutdown_timeout = "0s"\ncontrol_socket = "{tmp}/ctl.sock"\n'
            f'\n[[services]]\nname = "v1"\nlisten = ["127.0.0.1:{port4}"]\n'
            f'proxy_protocol = "v1"\n{probe}'
            f'  [[services.backends]]\n  address = "127.0.0.1:{p4}"\n'
            f'\n[[services]]\nname = "v2"\nlisten = ["[::1]:{port6}"]\n'
            f'proxy_protocol = "v2"\n{probe}'
            f'  [[services.backends]]\n  address = "[::1]:{p6}"\n')


def ask(host: str, port: int) -> tuple[str, tuple[str, int]]:
    """One HTTP/1.0 request through the balancer: nginx's body, and our own address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        s.connect((host, port))
        me = s.getsockname()[:2]
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        out = b""
        while chunk := s.recv(4096):
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), out
    return body.decode().strip(), me


def all_up(cfg: Path) -> bool:
    res = subprocess.run(l4lb_cmd("status", "--json", "-c", str(cfg)), capture_output=True,
                         text=True, env=child_env(), timeout=30, check=False)
    if res.returncode != 0:
        return False
    services = json.loads(res.stdout)["services"]
    return all(b["state"] == "up" for s in services for b in s["backends"])


HAPROXY_CONF = """\
global
    log stderr format raw local0 info
defaults
    mode http
    log global
    timeout connect 2s
    timeout client 5s
    timeout server 5s
frontend pp
    bind 127.0.0.1:{p4} accept-proxy
    bind [::1]:{p6} accept-proxy
    http-request return status 200 content-type text/plain lf-string "{answer}"
"""
HAPROXY_ANSWER = "pp %[src] %[src_port] %[dst] %[dst_port]\\n"  # from the header (accept-proxy)


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """HAProxy in the foreground (-db, ours), answering with the addresses it took from the
    header on 127.0.0.1 and ::1; yields the two ports."""
    p4, p6 = free_port(), free_port("::1")
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(p4=p4, p6=p6, answer=HAPROXY_ANSWER))
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_listening(p4, proc)
        yield p4, p6
    finally:
        stop_process(proc, timeout=10.0)


@needs_nginx
@pytest.mark.parametrize("reference", [False, True], ids=["c", "ref"])
def test_nginx_learns_the_client_address(tmp_path: Path, nginx: tuple[int, int, Path],
                                         reference: bool) -> None:
    p4, p6, error_log = nginx
    through_the_balancer(tmp_path, p4, p6, reference)
    assert "broken header" not in error_log.read_text()


@needs_haproxy
@pytest.mark.parametrize("reference", [False, True], ids=["c", "ref"])
def test_haproxy_learns_the_client_address(tmp_path: Path, haproxy: tuple[int, int],
                                           reference: bool) -> None:
    through_the_balancer(tmp_path, *haproxy, reference)


def through_the_balancer(tmp_path: Path, p4: int, p6: int, reference: bool) -> None:
    """Run l4lb with a v1 service to p4 (IPv4) and a v2 service to p6 (IPv6); wait until the
    probes have brought both backends UP, then check what the peer says it learnt."""
    port4, port6 = free_port(), free_port("::1")
    cfg = tmp_path / "l4lb.toml"
    cfg.write_text(l4lb_config(tmp_path, port4, port6, p4, p6))
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(reference),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(port4, proc)
        assert wait_until(lambda: all_up(cfg), 15.0), "the probes never passed through the peer"
        for _ in range(3):
            body, me = ask("127.0.0.1", port4)
            assert body == f"pp {me[0]} {me[1]} 127.0.0.1 {port4}"
            body, me = ask("::1", port6)
            assert body == f"pp {me[0]} {me[1]} ::1 {port6}"
        res = subprocess.run(l4lb_cmd("status", "--json", "-c", str(cfg)), capture_output=True,
                             text=True, env=child_env(), timeout=30, check=True)
        options = [s["tcp_options"]["proxy_protocol"] for s in json.loads(res.stdout)["services"]]
        assert options == ["v1", "v2"]
    finally:
        code = stop_process(proc)
        err = proc.stderr.read().decode() if proc.stderr else ""
    assert code == 0, err
    assert "service v1: backend connections start with a PROXY protocol v1 header" in err
    assert "service v2: backend connections start with a PROXY protocol v2 header" in err
