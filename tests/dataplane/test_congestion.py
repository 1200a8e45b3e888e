"""Per-service TCP congestion control: the backend leg (set_congestion_control) and the client leg
(inherited from the listener), against both data planes.

Which algorithm a socket of the data plane uses is read from the kernel with `ss -tin` (the
congestion control name is in each socket's info line), so nothing here trusts the data plane's
own word. The algorithm under test is one this kernel has that is NOT the system default, so a
data plane that ignored the setting would show the default and fail.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.congestion_host import (
    other_algorithm,
    ss_algorithms,
    system_default,
    unprivileged_forbidden_algorithm,
)

from .backends import BackendServer
from .clients import connect, recv_exact, wait_for
from .conftest import SVC, MakeLB, Servers
from .tables import BackendSpec, ServiceSpec


def service(backend: BackendServer) -> list[ServiceSpec]:
    host, port = backend.addr
    return [ServiceSpec(SVC, (BackendSpec("b", host, port),))]


def echo_once(sock: socket.socket, payload: bytes = b"ping") -> None:
    sock.sendall(payload)
    assert recv_exact(sock, len(payload)) == payload


def backend_leg(backend: BackendServer, index: int) -> str:
    """The algorithm of the data plane's socket towards `backend` for its index-th connection."""
    assert wait_for(lambda: len(backend.records()) > index, 5.0)
    peer_port = backend.records()[index].peer[1]
    names = ss_algorithms(f"sport = :{peer_port} and dport = :{backend.addr[1]}")
    assert len(names) == 1, names
    return names[0]


def client_leg(lb_port: int, client: socket.socket) -> str:
    """The algorithm of the data plane's accepted socket of `client`."""
    names = ss_algorithms(f"sport = :{lb_port} and dport = :{client.getsockname()[1]}")
    assert len(names) == 1, names
    return names[0]


def test_backend_leg_uses_the_service_algorithm(make_lb: MakeLB, servers: Servers) -> None:
    algo, default = other_algorithm(), system_default()
    backend = servers.start("b")
    lb = make_lb(service(backend), workers=1)
    assert lb.dp.congestion_control(SVC) is None
    with connect(lb.addr()) as before:
        echo_once(before)
        assert backend_leg(backend, 0) == default  # unset: the system default, untouched

        lb.dp.set_congestion_control(SVC, algo)
        assert lb.dp.congestion_control(SVC) == algo
        with connect(lb.addr()) as during:
            echo_once(during)
            assert backend_leg(backend, 1) == algo
            assert backend_leg(backend, 0) == default  # an open session keeps its algorithm

            lb.dp.set_congestion_control(SVC, None)
            assert lb.dp.congestion_control(SVC) is None
            with connect(lb.addr()) as after:
                echo_once(after)
                assert backend_leg(backend, 2) == default
                assert backend_leg(backend, 1) == algo


def test_only_the_named_service_changes(make_lb: MakeLB, servers: Servers) -> None:
    algo, default = other_algorithm(), system_default()
    first, second = servers.start("first"), servers.start("second")
    lb = make_lb([ServiceSpec(1, (BackendSpec("a", *first.addr),)),
                  ServiceSpec(2, (BackendSpec("b", *second.addr),))], workers=2)
    lb.dp.set_congestion_control(1, algo)
    assert lb.dp.congestion_control(2) is None
    with connect(lb.addr(1)) as one, connect(lb.addr(2)) as two:
        echo_once(one)
        echo_once(two)
        assert backend_leg(first, 0) == algo
        assert backend_leg(second, 0) == default


def test_client_leg_inherits_the_listener_algorithm(make_lb: MakeLB,
                                                     servers: Servers) -> None:
    """What the daemon relies on: TCP_CONGESTION on the listener reaches each accepted socket
    (the data plane's own accept4), and a change reaches only connections accepted later."""
    algo, default = other_algorithm(), system_default()
    backend = servers.start("b")
    lb = make_lb(service(backend), workers=2)
    port = lb.port()
    with connect(lb.addr()) as before:
        echo_once(before)
        for sock in lb.listeners[SVC]:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, algo.encode())
        with connect(lb.addr()) as after:
            echo_once(after)
            assert client_leg(port, after) == algo
            assert client_leg(port, before) == default
            assert backend_leg(backend, 1) == default  # the backend leg is set apart


def test_accepted_socket_inherits_the_listener_algorithm() -> None:
    """The kernel behaviour itself, seen through getsockopt on an accepted socket."""
    algo = other_algorithm()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, algo.encode())
        listener.listen(1)
        with socket.create_connection(listener.getsockname(), timeout=5.0) as client:
            accepted, _ = listener.accept()
            with accepted:
                raw = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
                assert raw.rstrip(b"\0").decode() == algo
                raw = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
                assert raw.rstrip(b"\0").decode() == system_default()


@pytest.mark.parametrize("name", ["", "x" * 16, "cu bic", "cubic\n", "cu\0bic", "é"])
def test_malformed_names_are_refused(dp_impl: type[Any], name: str) -> None:
    dp = dp_impl(1)
    try:
        with pytest.raises(ValueError, match="invalid congestion control name"):
            dp.set_congestion_control(SVC, name)
        assert dp.congestion_control(SVC) is None
    finally:
        dp.stop(0.0)


def test_unknown_algorithm_and_bad_ids_are_refused(dp_impl: type[Any]) -> None:
    algo = other_algorithm()
    dp = dp_impl(1)
    try:
        dp.set_congestion_control(SVC, algo)
        with pytest.raises(OSError) as info:
            dp.set_congestion_control(SVC, "nosuchcc")
        assert info.value.errno == errno.ENOENT
        assert "tcp_available_congestion_control" in str(info.value)
        assert dp.congestion_control(SVC) == algo  # a refused name changes nothing
        for sid in (-1, 1024):
            with pytest.raises(ValueError, match="out of range"):
                dp.set_congestion_control(sid, algo)
            with pytest.raises(ValueError, match="out of range"):
                dp.congestion_control(sid)
        with pytest.raises(TypeError):
            dp.set_congestion_control(SVC, b"cubic")
        dp.set_congestion_control(1023, algo)  # the last id, and the same interned name
        assert dp.congestion_control(1023) == algo
    finally:
        dp.stop(0.0)


NOT_ALLOWED = """
import os, sys
if sys.argv[2] == "ref":
    from l4lb.refdp import Dataplane
else:
    from l4lb._dataplane import Dataplane
os.setgroups([]); os.setgid(65534); os.setuid(65534)  # imports first: /root is not readable
dp = Dataplane(1)
try:
    dp.set_congestion_control(1, sys.argv[1])
except PermissionError as exc:
    print("EPERM", exc)
else:
    print("accepted")
dp.stop(0.0)
"""


@pytest.mark.parametrize("impl", ["c", "ref"])
def test_algorithm_not_allowed_for_an_unprivileged_process(impl: str) -> None:
    """Without CAP_NET_ADMIN only net.ipv4.tcp_allowed_congestion_control may be set."""
    forbidden = unprivileged_forbidden_algorithm()
    if impl == "c":
        pytest.importorskip("l4lb._dataplane")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", NOT_ALLOWED, forbidden, impl],
                         capture_output=True, text=True, timeout=30, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)}, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("EPERM"), out.stdout
    assert "tcp_allowed_congestion_control" in out.stdout
