"""Per-service TCP socket buffers: the backend leg (set_socket_buffers) and the client leg
(inherited from the listener), against both data planes, IPv4 and IPv6.

Each socket's buffers are read from the kernel: getsockopt where the test owns the socket, and
`ss -tmn` (skmem tb / rb, found by the socket's 4-tuple) for the balancer's own sockets, so
nothing here trusts the data plane's word. The sizes asked for are small enough to be applied
doubled with or without CAP_NET_ADMIN and differ from every default, so a data plane that
skipped the setsockopt would show the kernel's own values and fail.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from l4lb.net.listen import set_socket_buffer
from tests.sockbuf_host import RCVBUF, SNDBUF, ss_socket_buffers

from .backends import BackendServer
from .clients import connect, recv_exact, wait_for
from .conftest import SVC, MakeLB, Servers
from .tables import BackendSpec, ServiceSpec

HOSTS = ["127.0.0.1", "::1"]


def echo_once(sock: socket.socket) -> None:
    sock.sendall(b"ping")
    assert recv_exact(sock, 4) == b"ping"


def backend_leg(backend: BackendServer, index: int) -> tuple[int, int]:
    """(tb, rb) of the data plane's socket towards `backend` for its index-th connection."""
    assert wait_for(lambda: len(backend.records()) > index, 5.0)
    return ss_socket_buffers(backend.records()[index].peer[1], backend.addr[1])


def client_leg(lb_port: int, client: socket.socket) -> tuple[int, int]:
    """(tb, rb) of the data plane's accepted socket of `client`."""
    return ss_socket_buffers(lb_port, client.getsockname()[1])


@pytest.mark.parametrize("host", HOSTS)
def test_backend_leg_gets_the_service_buffers(make_lb: MakeLB, servers: Servers,
                                              host: str) -> None:
    backend = servers.start("b", host=host)
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("b", host, backend.addr[1]),))], workers=1,
                 host=host)
    assert lb.dp.socket_buffers(SVC) == (0, 0)
    with connect(lb.addr()) as before:
        echo_once(before)
        untouched = backend_leg(backend, 0)
        assert untouched[0] != 2 * SNDBUF and untouched[1] != 2 * RCVBUF

        lb.dp.set_socket_buffers(SVC, SNDBUF, RCVBUF)
        assert lb.dp.socket_buffers(SVC) == (SNDBUF, RCVBUF)
        with connect(lb.addr()) as during:
            echo_once(during)
            assert backend_leg(backend, 1) == (2 * SNDBUF, 2 * RCVBUF)  # the kernel doubles
            assert backend_leg(backend, 0) == untouched  # an open session keeps its buffers

            lb.dp.set_socket_buffers(SVC, 0, RCVBUF)  # the send side back to autotuning
            assert lb.dp.socket_buffers(SVC) == (0, RCVBUF)
            with connect(lb.addr()) as after:
                echo_once(after)
                tb, rb = backend_leg(backend, 2)
                assert (tb != 2 * SNDBUF, rb) == (True, 2 * RCVBUF)
                assert backend_leg(backend, 1) == (2 * SNDBUF, 2 * RCVBUF)
    assert lb.dp.socket_buffer_errors(SVC) == 0


def test_only_the_named_service_changes(make_lb: MakeLB, servers: Servers) -> None:
    first, second = servers.start("first"), servers.start("second")
    lb = make_lb([ServiceSpec(1, (BackendSpec("a", *first.addr),)),
                  ServiceSpec(2, (BackendSpec("b", *second.addr),))], workers=2)
    lb.dp.set_socket_buffers(1, SNDBUF, RCVBUF)
    assert lb.dp.socket_buffers(2) == (0, 0)
    with connect(lb.addr(1)) as one, connect(lb.addr(2)) as two:
        echo_once(one)
        echo_once(two)
        assert backend_leg(first, 0) == (2 * SNDBUF, 2 * RCVBUF)
        assert backend_leg(second, 0) != (2 * SNDBUF, 2 * RCVBUF)


@pytest.mark.parametrize("host", HOSTS)
def test_client_leg_inherits_the_listener_buffers(make_lb: MakeLB, servers: Servers,
                                                  host: str) -> None:
    """What the daemon relies on: SO_SNDBUF / SO_RCVBUF on the listener reach each socket the
    data plane accepts, a change reaches only connections accepted later, and the backend leg
    is set apart."""
    backend = servers.start("b", host=host)
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("b", host, backend.addr[1]),))], workers=2,
                 host=host)
    port = lb.port()
    with connect(lb.addr()) as before:
        echo_once(before)
        for sock in lb.listeners[SVC]:
            assert set_socket_buffer(sock, socket.SO_SNDBUF, SNDBUF) == 2 * SNDBUF
            assert set_socket_buffer(sock, socket.SO_RCVBUF, RCVBUF) == 2 * RCVBUF
        with connect(lb.addr()) as after:
            echo_once(after)
            assert client_leg(port, after) == (2 * SNDBUF, 2 * RCVBUF)
            assert client_leg(port, before) != (2 * SNDBUF, 2 * RCVBUF)
            assert backend_leg(backend, 1) != (2 * SNDBUF, 2 * RCVBUF)


@pytest.mark.parametrize("host", HOSTS)
def test_accepted_socket_inherits_the_listener_buffers(host: str) -> None:
    """The kernel behaviour itself, through getsockopt on a listener and a socket it accepted
    (the client's socket, never set, shows the kernel's own values)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        set_socket_buffer(listener, socket.SO_SNDBUF, SNDBUF)
        set_socket_buffer(listener, socket.SO_RCVBUF, RCVBUF)
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * SNDBUF
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * RCVBUF
        with socket.create_connection(listener.getsockname()[:2], timeout=5.0) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * SNDBUF
                assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * RCVBUF
            assert client.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) != 2 * SNDBUF
            assert client.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) != 2 * RCVBUF


@pytest.mark.parametrize("size", [1, 4095, 2**30, -1])
def test_sizes_out_of_range_are_refused(dp_impl: type[Any], size: int) -> None:
    dp = dp_impl(1)
    try:
        dp.set_socket_buffers(SVC, SNDBUF, RCVBUF)
        with pytest.raises(ValueError, match="out of range"):
            dp.set_socket_buffers(SVC, size, RCVBUF)
        with pytest.raises(ValueError, match="out of range"):
            dp.set_socket_buffers(SVC, SNDBUF, size)
        assert dp.socket_buffers(SVC) == (SNDBUF, RCVBUF)  # a refused size changes nothing
    finally:
        dp.stop(0.0)


def test_bounds_types_and_ids(dp_impl: type[Any]) -> None:
    dp = dp_impl(1)
    try:
        dp.set_socket_buffers(1023, 4096, 2**30 - 1)  # the last id, both bounds
        assert dp.socket_buffers(1023) == (4096, 2**30 - 1)
        for sid in (-1, 1024):
            with pytest.raises(ValueError, match="out of range"):
                dp.set_socket_buffers(sid, SNDBUF, RCVBUF)
            with pytest.raises(ValueError, match="out of range"):
                dp.socket_buffers(sid)
            with pytest.raises(ValueError, match="out of range"):
                dp.socket_buffer_errors(sid)
        for bad in ("4096", True, 4096.0, None):
            with pytest.raises(TypeError):
                dp.set_socket_buffers(SVC, bad, 0)
        assert dp.socket_buffers(SVC) == (0, 0)
        dp.set_socket_buffers(1023, 0, 0)
        assert dp.socket_buffers(1023) == (0, 0)
    finally:
        dp.stop(0.0)


# A data plane that chose SO_*BUFFORCE while it had CAP_NET_ADMIN, then lost it (setuid drops
# the capabilities of every thread): each backend socket refuses both sizes. The session must
# still work and each refusal must be counted.
LOST_CAPABILITY = """
import os, socket, sys, time
if sys.argv[1] == "ref":
    from l4lb.refdp import Dataplane
else:
    from l4lb._dataplane import Dataplane
from tests.dataplane.tables import BackendSpec, ServiceSpec, build_table
backend = socket.socket(); backend.bind(("127.0.0.1", 0)); backend.listen(8)
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(8)
listener.setblocking(False)
dp = Dataplane(1)
dp.start()
dp.add_listener(1, listener.fileno(), 0)
spec = ServiceSpec(1, (BackendSpec("b", "127.0.0.1", backend.getsockname()[1]),))
dp.publish(build_table([spec]).blob)
dp.set_socket_buffers(1, 36864, 49152)
"127.0.0.1".encode("idna")  # load the codec now: /root is not readable after setuid
os.setgroups([]); os.setgid(65534); os.setuid(65534)
client = socket.create_connection(listener.getsockname(), timeout=5)
conn, _ = backend.accept()
client.sendall(b"ping")
conn.settimeout(5)
print(conn.recv(4).decode(), end=" ")
deadline = time.monotonic() + 5
while dp.socket_buffer_errors(1) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
print(dp.socket_buffer_errors(1), dp.socket_buffers(1))
client.close(); conn.close()
dp.stop(0.0)
"""


@pytest.mark.parametrize("impl", ["c", "ref"])
def test_a_refused_size_is_counted_and_the_session_goes_on(impl: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the data plane must pick the FORCE options, then lose them")
    if impl == "c":
        pytest.importorskip("l4lb._dataplane")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", LOST_CAPABILITY, impl], capture_output=True,
                         text=True, timeout=30, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)}, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ping 2 (36864, 49152)", out.stdout
