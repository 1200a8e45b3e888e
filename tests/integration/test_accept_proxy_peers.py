"""`accept_proxy` end to end behind real balancers: HAProxy (`mode tcp`, `server ...
send-proxy`, `send-proxy-v2`, and `send-proxy-v2` with TLVs from `proxy-v2-options
crc32c,unique-id,authority`, which l4lb skips) and nginx stream (`proxy_protocol on;`) in front
of l4lb, which has `accept_proxy = true` and sends `proxy_protocol = "v2"` on to its backend.
The backend (tests/dataplane/proxy_backend.py, a parser written independently of l4lb's) must
see the real client's address and port and the front balancer's address, not the front
balancer as the client, and exactly the client's bytes after the header; l4lb's connection log
must name the client and, as `peer`, the front balancer's connection. Clients come over IPv4
and IPv6 while the front always reaches l4lb over IPv4 (a TCP6 header over an IPv4
connection). A client that skips the front and sends no header is
reset and counted; with `accept_proxy_from` naming HAProxy's `source`, such a client is relayed
as it is on the same listener. Both data planes. A test is skipped when its peer is not
installed (CI installs the Debian packages `haproxy`, `nginx` and `libnginx-mod-stream`;
scripts/test.sh)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..dataplane.proxy_backend import Conn, Header, ProxyBackend
from .procs import child_env, free_port, l4lb_cmd, stop_process, wait_listening, wait_until

STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
needs_nginx = pytest.mark.skipif(
    shutil.which("nginx") is None or not STREAM_MODULE.exists(),
    reason="nginx with the stream module is not installed (Debian nginx, libnginx-mod-stream)")
needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None,
                                   reason="haproxy is not installed (Debian package haproxy)")

HAPROXY_CONF = """\
global
    log stderr format raw local0 info
defaults
    mode tcp
    log global
    timeout connect 2s
    timeout client 5s
    timeout server 5s
frontend v1
    bind 127.0.0.1:{f1}
    bind [::1]:{f1}
    default_backend to_l4lb_v1
frontend v2
    bind 127.0.0.1:{f2}
    bind [::1]:{f2}
    default_backend to_l4lb_v2
frontend v2tlv
    bind 127.0.0.1:{f3}
    bind [::1]:{f3}
    unique-id-format %{{+X}}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
    default_backend to_l4lb_v2tlv
backend to_l4lb_v1
    server l4lb 127.0.0.1:{lb} send-proxy
backend to_l4lb_v2
    server l4lb 127.0.0.1:{lb} send-proxy-v2
backend to_l4lb_v2tlv
    server l4lb 127.0.0.1:{lb} send-proxy-v2 proxy-v2-options crc32c,unique-id,authority
"""

NGINX_CONF = """\
load_module {module};
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
stream {{
    server {{
        listen 127.0.0.1:{f1};
        listen [::1]:{f1};
        proxy_pass 127.0.0.1:{lb};
        proxy_protocol on;
    }}
}}
"""


@pytest.fixture
def backend() -> Iterator[ProxyBackend]:
    """The backend behind l4lb: expects PROXY v2, echoes."""
    server = ProxyBackend(2)
    try:
        yield server
    finally:
        server.close()


def l4lb_config(tmp: Path, lb: int, backend: tuple[str, int]) -> str:
    return (f'[global]\nworkers = 1\nshutdown_timeout = "0s"\ncontrol_socket = "{tmp}/ctl.sock"\n'
            f'connection_log = "{tmp}/conn.jsonl"\n'
            f'\n[[services]]\nname = "behind"\nlisten = ["127.0.0.1:{lb}"]\n'
            f'accept_proxy = true\naccept_proxy_timeout = "2s"\nproxy_protocol = "v2"\n'
            f'  [[services.backends]]\n  address = "{backend[0]}:{backend[1]}"\n')


def trip(host: str, port: int, payload: bytes) -> tuple[str, int]:
    """Send payload through the front balancer, read its echo, close; our own address. (No
    half-close: nginx stream closes both ways on the client's FIN unless proxy_half_close.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        s.connect((host, port))
        me = s.getsockname()[:2]
        s.sendall(payload)
        got = b""
        while len(got) < len(payload) and (chunk := s.recv(4096)):
            got += chunk
    assert got == payload
    return me[0], me[1]


def hostport(addr: tuple[str, int]) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def behind_the_front(tmp_path: Path, backend: ProxyBackend, lb: int,
                     fronts: list[tuple[str, int]], reference: bool) -> None:
    """l4lb on 127.0.0.1:lb behind the front listeners `fronts` (host, port): clients over
    each; the backend, the connection log and the counters must say who the client was."""
    cfg = tmp_path / "l4lb.toml"
    cfg.write_text(l4lb_config(tmp_path, lb, backend.addr))
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(reference),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    clients: list[tuple[tuple[str, int], tuple[str, int], bytes]] = []
    try:
        wait_listening(lb, proc)  # a connect without a header: one quiet close, no error
        for i, front in enumerate(fronts):
            payload = b"through %d " % i * (i + 1)
            clients.append((trip(*front, payload), front, payload))
        with socket.create_connection(fronts[0], timeout=5.0) as held:  # `l4lb sessions`
            held_me = held.getsockname()[:2]
            held.sendall(b"held")
            assert held.recv(4) == b"held"
            res = subprocess.run(l4lb_cmd("sessions", "--json", "-c", str(cfg)),
                                 capture_output=True, text=True, env=child_env(), timeout=30,
                                 check=True)
            (sess,) = [x for x in json.loads(res.stdout) if x["state"] != "connecting"]
            assert sess["client"] == hostport(held_me), sess
            assert sess["peer"].startswith("127.0.0.1:") and sess["peer"] != sess["client"]
            res = subprocess.run(l4lb_cmd("sessions", "-c", str(cfg)), capture_output=True,
                                 text=True, env=child_env(), timeout=30, check=True)
            assert "PEER" in res.stdout and sess["peer"] in res.stdout, res.stdout
        clients.append((held_me, fronts[0], b"held"))
        with socket.create_connection(("127.0.0.1", lb), timeout=5.0) as direct:
            direct.sendall(b"GET / HTTP/1.0\r\n\r\n")  # skips the front: no header
            with pytest.raises(ConnectionResetError):
                while direct.recv(4096):
                    pass
        assert wait_until(lambda: len(backend.done()) >= len(clients), 10.0), backend.done()

        def counters() -> dict[str, int]:
            res = subprocess.run(l4lb_cmd("status", "--json", "-c", str(cfg)),
                                 capture_output=True, text=True, env=child_env(), timeout=30,
                                 check=True)
            svc = json.loads(res.stdout)["services"][0]
            assert svc["tcp_options"]["accept_proxy"] is True
            found: dict[str, int] = svc["counters"]
            return found
        assert wait_until(lambda: counters()["proxy_header_errors"] == 1, 10.0), counters()
        assert counters()["proxy_header_timeouts"] == 0
    finally:
        code = stop_process(proc)
        err = proc.stderr.read().decode() if proc.stderr else ""
    assert code == 0, err
    assert "service behind: each client must start with a PROXY protocol header" in err
    done: list[Conn] = backend.done()
    assert all(c.error == "" for c in done), [c.error for c in done]
    want = sorted(((Header(2, "PROXY", "TCP6" if ":" in me[0] else "TCP4", me, front),
                    payload) for me, front, payload in clients), key=repr)
    assert sorted(((c.header, c.payload) for c in done), key=repr) == want
    lines = [json.loads(line) for line in (tmp_path / "conn.jsonl").read_text().splitlines()]
    relayed = {line["client"]: line for line in lines if line["backend"] is not None}
    for me, _, payload in clients:
        line = relayed[hostport(me)]
        assert line["peer"].startswith("127.0.0.1:") and line["peer"] != hostport(me), line
        assert line["bytes_to_backend"] == len(payload)
    refused = [line for line in lines if line["reason"] == "proxy_header"]
    assert len(refused) == 1 and refused[0]["backend"] is None
    assert refused[0]["client"] == refused[0]["peer"]


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[tuple[int, int, int, int]]:
    """HAProxy in the foreground (-db, ours): frontends on f1 (send-proxy), f2
    (send-proxy-v2) and f3 (send-proxy-v2 with TLVs: crc32c, unique-id), on 127.0.0.1 and ::1,
    towards l4lb on 127.0.0.1:lb; yields f1, f2, f3, lb."""
    f1, f2, f3, lb = free_port(), free_port(), free_port(), free_port()
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(f1=f1, f2=f2, f3=f3, lb=lb))
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_listening(f1, proc)
        yield f1, f2, f3, lb
    finally:
        stop_process(proc, timeout=10.0)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """nginx stream in the foreground (one process, ours) on f1 (127.0.0.1 and ::1) with
    `proxy_protocol on` towards l4lb on 127.0.0.1:lb; yields f1, lb."""
    f1, lb = free_port(), free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(module=STREAM_MODULE, tmp=tmp_path, f1=f1, lb=lb))
    proc = subprocess.Popen(["nginx", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
                             "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(f1, proc)
        yield f1, lb
    finally:
        stop_process(proc, timeout=10.0)


@needs_haproxy
@pytest.mark.parametrize("reference", [False, True], ids=["c", "ref"])
def test_behind_haproxy_send_proxy_v1_and_v2(tmp_path: Path,
                                             haproxy: tuple[int, int, int, int],
                                             backend: ProxyBackend, reference: bool) -> None:
    f1, f2, f3, lb = haproxy  # f3: v2 with TLVs (crc32c, unique-id), which l4lb skips
    fronts = [("127.0.0.1", f1), ("::1", f1), ("127.0.0.1", f2), ("::1", f2),
              ("127.0.0.1", f3), ("::1", f3)]
    behind_the_front(tmp_path, backend, lb, fronts, reference)


@needs_nginx
@pytest.mark.parametrize("reference", [False, True], ids=["c", "ref"])
def test_behind_nginx_stream_proxy_protocol(tmp_path: Path, nginx: tuple[int, int],
                                            backend: ProxyBackend, reference: bool) -> None:
    f1, lb = nginx
    behind_the_front(tmp_path, backend, lb, [("127.0.0.1", f1), ("::1", f1)], reference)
    assert "broken header" not in (tmp_path / "error.log").read_text()


HAPROXY_MIXED_CONF = """\
global
    log stderr format raw local0 info
defaults
    mode tcp
    log global
    timeout connect 2s
    timeout client 5s
    timeout server 5s
frontend front
    bind 127.0.0.1:{f1}
    default_backend to_l4lb
backend to_l4lb
    server l4lb 127.0.0.1:{lb} send-proxy-v2 source 127.0.0.2
"""


@needs_haproxy
@pytest.mark.parametrize("reference", [False, True], ids=["c", "ref"])
def test_haproxy_and_direct_clients_on_one_listener(tmp_path: Path, backend: ProxyBackend,
                                                    reference: bool) -> None:
    """accept_proxy_from: HAProxy reaches l4lb from 127.0.0.2 (`source`) and must send a
    header; a client of 127.0.0.1 skips it and is relayed as it is, even when its first bytes
    look like a PROXY header. The backend gets l4lb's own v2 header naming each real client."""
    f1, lb = free_port(), free_port()
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(HAPROXY_MIXED_CONF.format(f1=f1, lb=lb))
    cfg = tmp_path / "l4lb.toml"
    cfg.write_text(l4lb_config(tmp_path, lb, backend.addr).replace(
        'accept_proxy_timeout = "2s"\n', 'accept_proxy_timeout = "2s"\n'
        'accept_proxy_from = ["127.0.0.2"]\n'))
    front = subprocess.Popen(["haproxy", "-db", "-f", str(conf)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    proc: subprocess.Popen[bytes] | None = None
    try:
        wait_listening(f1, front)
        proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(reference),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_listening(lb, proc)
        via_front = trip("127.0.0.1", f1, b"through haproxy")
        lookalike = b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nplain client"
        direct = trip("127.0.0.1", lb, lookalike)
        # three at the backend: wait_listening's probe connect is a direct client too
        assert wait_until(lambda: len(backend.done()) >= 3, 10.0), backend.done()
        res = subprocess.run(l4lb_cmd("status", "--json", "-c", str(cfg)), capture_output=True,
                             text=True, env=child_env(), timeout=30, check=True)
        counters = json.loads(res.stdout)["services"][0]["counters"]
        # direct: this client and wait_listening's probe connect
        assert (counters["proxy_direct"], counters["proxy_header_errors"]) == (2, 0)
    finally:
        if proc is not None:
            assert stop_process(proc) == 0
        stop_process(front, timeout=10.0)
    done: list[Conn] = backend.done()
    assert all(c.error == "" for c in done), [c.error for c in done]
    got = sorted((c.header.src, c.payload) for c in done if c.payload)
    assert got == sorted([(via_front, b"through haproxy"), (direct, lookalike)])
    assert len(done) == 3 and sum(not c.payload for c in done) == 1  # the probe connect
    lines = [json.loads(line) for line in (tmp_path / "conn.jsonl").read_text().splitlines()]
    peers = {line["client"]: line["peer"] for line in lines}
    assert peers[hostport(direct)] == hostport(direct)  # a direct client is its own peer
    assert peers[hostport(via_front)].startswith("127.0.0.2:")  # HAProxy's source
