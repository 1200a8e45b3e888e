"""Fixtures of the data-plane suite: every test runs against the C module and the Python reference.

- `dp_impl`: the Dataplane class, parametrised "c" (l4lb._dataplane) and "ref" (l4lb.refdp).
  "c" FAILS when the extension does not import, unless L4LB_NO_EXTENSIONS=1 (then it skips).
- `servers`: a factory for backend servers (tests/dataplane/backends.py), all closed afterwards.
- `make_lb`: a factory for a running data plane: it creates the listeners itself (SO_REUSEPORT,
  one per worker, nonblocking, ephemeral port; TCP ones listen, UDP ones are bound datagram
  sockets with large buffers and IP_PKTINFO / IPV6_RECVPKTINFO when the address is a wildcard),
  publishes a table built from ServiceSpecs, and always stops the data plane and closes the
  listeners afterwards.
- `fo_ns` / `fo_make_lb`: the test's thread (and a make_lb data plane) in a private network
  namespace with net.ipv4.tcp_fastopen = 3 (fast_open_env.private_netns); root only.
- `no_leaks` (autouse): after a test and its fixtures are gone, no new thread and no new fd
  may remain.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from l4lb.dataplane import NO_EXTENSIONS_ENV, reference_requested

from .backends import (
    BackendServer,
    BlackHole,
    RefusingPort,
    UdpBackend,
    UdpRefusingPort,
    raise_buffers,
)
from .clients import wait_for
from .fast_open_env import private_netns
from .tables import BuiltTable, ServiceSpec, build_table

SVC = 1  # service id used by tests with a single service
LISTEN_BACKLOG = 4096
STOP_TIMEOUT = 0.0  # teardown: no grace, whatever is left is reset
IP_PKTINFO = 8  # linux/in.h; the socket module lacks the name


def load_impl(name: str) -> type[Any]:
    """The Dataplane class of one implementation (see the module docstring for "c")."""
    if name == "ref":
        from l4lb.refdp import Dataplane as RefDataplane

        return RefDataplane
    if reference_requested():
        pytest.skip(f"{NO_EXTENSIONS_ENV}=1: the compiled data plane is not tested")
    try:
        from l4lb._dataplane import Dataplane as CDataplane
    except ImportError as exc:
        pytest.fail(f"l4lb._dataplane.Dataplane does not import ({exc}); build it with "
                    f"`python3 setup.py build_ext --inplace` or set {NO_EXTENSIONS_ENV}=1",
                    pytrace=False)
    return CDataplane  # type: ignore[no-any-return]


@pytest.fixture(params=["c", "ref"])
def dp_impl(request: pytest.FixtureRequest) -> type[Any]:
    """The Dataplane class under test."""
    return load_impl(str(request.param))


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread or a file descriptor behind."""
    threads = set(threading.enumerate())
    fds = len(os.listdir("/proc/self/fd"))
    yield

    def stray() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in threads]

    assert wait_for(lambda: not stray(), 5.0), f"threads left running: {stray()}"
    assert wait_for(lambda: len(os.listdir("/proc/self/fd")) <= fds, 2.0), (
        f"fds leaked: {len(os.listdir('/proc/self/fd')) - fds}")


class Servers:
    """Factory and owner of the backends of one test."""

    def __init__(self) -> None:
        self._owned: list[BackendServer | RefusingPort | BlackHole | UdpBackend
                          | UdpRefusingPort] = []

    def start(self, name: str, mode: str = "echo", host: str = "127.0.0.1",
              send_total: int = 0, seed: int = 0) -> BackendServer:
        server = BackendServer(name, mode, host, send_total, seed)
        self._owned.append(server)
        return server

    def refusing(self, host: str = "127.0.0.1") -> RefusingPort:
        port = RefusingPort(host)
        self._owned.append(port)
        return port

    def black_hole(self, host: str = "127.0.0.1") -> BlackHole:
        hole = BlackHole(host)
        self._owned.append(hole)
        return hole

    def udp(self, name: str, mode: str = "echo", host: str = "127.0.0.1", index: int = 1,
            keep_digests: bool = False) -> UdpBackend:
        server = UdpBackend(name, mode, host, index, keep_digests)
        self._owned.append(server)
        return server

    def udp_refusing(self, host: str = "127.0.0.1") -> UdpRefusingPort:
        port = UdpRefusingPort(host)
        self._owned.append(port)
        return port

    def close(self) -> None:
        for owned in reversed(self._owned):
            owned.close()
        self._owned.clear()


@pytest.fixture
def servers() -> Iterator[Servers]:
    owner = Servers()
    yield owner
    owner.close()


def open_listeners(host: str, workers: int) -> list[socket.socket]:
    """`workers` SO_REUSEPORT listening sockets on one ephemeral port, nonblocking."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    port = 0
    try:
        for _ in range(workers):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def open_udp_listeners(host: str, workers: int, v6only: bool = True) -> list[socket.socket]:
    """`workers` SO_REUSEPORT datagram sockets bound to one ephemeral port, nonblocking, with
    large buffers; on a wildcard address (0.0.0.0, ::) IP_PKTINFO / IPV6_RECVPKTINFO are set
    so the data plane learns which address each client wrote to. An IPv6 socket is IPv6-only
    unless v6only is False (then it also takes IPv4 clients, as ::ffff:a.b.c.d)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    port = 0
    try:
        for _ in range(workers):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            raise_buffers(sock)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
            if host in ("0.0.0.0", "::"):
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class LB:
    """A running data plane with its listeners and the last table it was given."""

    def __init__(self, impl: type[Any], workers: int, host: str) -> None:
        self.impl = impl
        self.workers = workers
        self.host = host
        self.dp = impl(workers)
        self.listeners: dict[int, list[socket.socket]] = {}  # service id -> per-worker sockets
        self.built: BuiltTable | None = None
        self.stopped = False

    def listen(self, service_id: int, protocol: str = "tcp", v6only: bool = True) -> None:
        if protocol == "udp":
            socks = open_udp_listeners(self.host, self.workers, v6only)
        else:
            socks = open_listeners(self.host, self.workers)
        self.listeners[service_id] = socks
        for worker, sock in enumerate(socks):
            self.dp.add_listener(service_id, sock.fileno(), worker)

    def addr(self, service_id: int = SVC) -> tuple[str, int]:
        return self.host, self.port(service_id)

    def port(self, service_id: int = SVC) -> int:
        port: int = self.listeners[service_id][0].getsockname()[1]
        return port

    def publish(self, services: list[ServiceSpec], hash_seed: int = 0) -> int:
        self.built = build_table(services, hash_seed)
        generation: int = self.dp.publish(self.built.blob)
        return generation

    def backend_id(self, name: str) -> int:
        assert self.built is not None
        return self.built.backend_ids[name]

    def svc_stats(self, service_id: int = SVC) -> dict[str, int]:
        found: dict[str, int] = self.dp.stats()["services"].get(service_id, {})
        return found

    def be_stats(self, name: str) -> dict[str, int]:
        found: dict[str, int] = self.dp.stats()["backends"].get(self.backend_id(name), {})
        return found

    def flows(self) -> list[dict[str, Any]]:
        """The data plane's open UDP flows."""
        found: list[dict[str, Any]] = self.dp.flows()
        return found

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        self.dp.stop(timeout)
        self.stopped = True

    def close(self) -> None:
        """Stop the data plane, then close the listeners (nothing polls them any more)."""
        try:
            self.dp.stop(STOP_TIMEOUT)
        finally:
            for socks in self.listeners.values():
                for sock in socks:
                    sock.close()
            self.listeners.clear()


MakeLB = Callable[..., LB]


@pytest.fixture
def make_lb(dp_impl: type[Any], servers: Servers) -> Iterator[MakeLB]:
    """make_lb(services, workers=2, host="127.0.0.1", hash_seed=0, v6only=True) -> a running
    LB; host may be a wildcard (0.0.0.0, ::); v6only=False makes an IPv6 UDP listener
    dual-stack."""
    made: list[LB] = []

    def make(services: list[ServiceSpec], workers: int = 2, host: str = "127.0.0.1",
             hash_seed: int = 0, v6only: bool = True) -> LB:
        lb = LB(dp_impl, workers, host)
        made.append(lb)
        lb.dp.start()
        for spec in services:
            lb.listen(spec.service_id, spec.protocol, v6only)
        lb.publish(services, hash_seed)
        return lb

    yield make
    for lb in made:
        lb.close()


@pytest.fixture
def fo_ns() -> Iterator[None]:
    """This test's thread in a private namespace with net.ipv4.tcp_fastopen = 3."""
    if os.geteuid() != 0:
        pytest.skip("needs root (a network namespace)")
    with private_netns(3):
        yield


@pytest.fixture
def fo_make_lb(fo_ns: None, make_lb: MakeLB) -> MakeLB:
    """make_lb, created inside fo_ns (so the data plane's threads and sockets live there)."""
    return make_lb
