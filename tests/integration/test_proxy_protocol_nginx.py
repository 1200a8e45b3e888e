"""`proxy_protocol` end to end against a real peer: nginx with `listen ... proxy_protocol`
reads the header l4lb sends (v1 over IPv4, v2 over IPv6) and answers with the addresses it
learnt from it, which must be the client's own and the VIP's. The services' send_expect health
probes must pass through the same listeners (their LOCAL / UNKNOWN header is accepted), or the
backends never come UP: initial_state = "down". Both data planes. Skipped when nginx is not
installed (CI installs the Debian package `nginx`; scripts/test.sh)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .procs import child_env, free_port, l4lb_cmd, stop_process, wait_listening, wait_until

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None,
                                reason="nginx is not installed (Debian package nginx)")

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


@pytest.mark.parametrize("reference", [False, True], ids=["c", "ref"])
def test_nginx_learns_the_client_address(tmp_path: Path, nginx: tuple[int, int, Path],
                                         reference: bool) -> None:
    p4, p6, error_log = nginx
    port4, port6 = free_port(), free_port("::1")
    cfg = tmp_path / "l4lb.toml"
    cfg.write_text(l4lb_config(tmp_path, port4, port6, p4, p6))
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(reference),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(port4, proc)
        assert wait_until(lambda: all_up(cfg), 15.0), "the probes never passed through nginx"
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
    assert "broken header" not in error_log.read_text()
