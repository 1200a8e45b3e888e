"""Out of descriptors: clients queued behind a full fd table wait, they are not reset.

The data plane runs in a child process with a low RLIMIT_NOFILE (the test's own backends and
clients keep this process's limit). An accept can take the last free fd, so the backend socket
fails with EMFILE; before the fd reserve (relay_tcp.c, "The fd reserve") that client was reset,
its fd came free, and the whole backlog drained as resets (or waited, by the parity of the
headroom). Now the reserve serves the client in hand and the listener pauses until fds are free.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import os
import select
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from . import patterns
from .clients import udp_ask, udp_socket
from .conftest import Servers

HOST = "127.0.0.1"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LB_PROCESS = textwrap.dedent("""
    import os, resource, socket, sys
    from l4lb._dataplane import Dataplane
    from tests.dataplane.tables import BackendSpec, ServiceSpec, build_table
    # argv: TCP backend port, spare fds under the limit, [UDP backend port]
    dp = Dataplane(1)
    dp.start()
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4096)
    ls.setblocking(False)
    dp.add_listener(1, ls.fileno(), 0)
    specs = [ServiceSpec(1, (BackendSpec("echo", "127.0.0.1", int(sys.argv[1])),))]
    ports = [ls.getsockname()[1]]
    if len(sys.argv) > 3:
        us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        us.bind(("127.0.0.1", 0))
        us.setblocking(False)
        dp.add_listener(2, us.fileno(), 0)
        specs.append(ServiceSpec(2, (BackendSpec("uecho", "127.0.0.1", int(sys.argv[3])),),
                                 protocol="udp", idle_timeout_ms=60_000))
        ports.append(us.getsockname()[1])
    dp.publish(build_table(specs).blob)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + int(sys.argv[2]), hard))
    print(*ports, flush=True)
    for line in sys.stdin:  # one report per line asked
        print(repr((dp.stats()["services"].get(1, {}), dp._internals())), flush=True)
    dp.stop(0)
""")


@contextlib.contextmanager
def child_lb(*args: int) -> Iterator[tuple[subprocess.Popen[str], list[int],
                                            list[socket.socket]]]:
    """The data plane of LB_PROCESS in a child, its listening ports, and a list for the test's
    clients; at the end the clients are closed and the child stopped."""
    proc = subprocess.Popen([sys.executable, "-c", LB_PROCESS, *map(str, args)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    clients: list[socket.socket] = []
    try:
        assert proc.stdout is not None and proc.stdin is not None
        yield proc, [int(p) for p in proc.stdout.readline().split()], clients
    finally:
        for c in clients:
            c.close()
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def wmem_max() -> int:
    """The largest send buffer the kernel grows a TCP socket to (net.ipv4.tcp_wmem)."""
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        return int(f.read().split()[2])


def report(proc: subprocess.Popen[str]) -> tuple[dict[str, int], dict[str, int]]:
    """The child's (service counters, data-plane internals), read now."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("report\n")
    proc.stdin.flush()
    counters, internals = ast.literal_eval(proc.stdout.readline())
    return counters, internals


def outcomes(clients: list[socket.socket], seconds: float,
             quiet: float | None = None) -> dict[str, int]:
    """Send one byte on each client, then sort them by what came back within `seconds` (or,
    with `quiet`, until nothing more came for that long after the first answer: a slow host
    then gets the time it needs): "echo", "reset", "closed", or "waiting" (nothing yet: still
    queued)."""
    seen = {"echo": 0, "reset": 0, "closed": 0}
    pending = {}
    for c in clients:
        try:
            c.sendall(b"x")
        except ConnectionResetError:
            seen["reset"] += 1
            continue
        pending[c.fileno()] = c
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLIN)
    budget_ms = int(seconds * 1000)
    idle_ms, answered = 0, False
    while pending and budget_ms > 0:
        ready = poller.poll(100)
        budget_ms -= 100
        idle_ms = 0 if ready else idle_ms + 100
        answered = answered or bool(ready)
        if quiet is not None and answered and idle_ms >= quiet * 1000:
            break
        for fd, _ in ready:
            c = pending.pop(fd)
            poller.unregister(fd)
            try:
                got = c.recv(1)
                seen["echo" if got == b"x" else "closed"] += 1
            except ConnectionResetError:
                seen["reset"] += 1
    seen["waiting"] = len(pending)
    return seen


@pytest.mark.parametrize("headroom", [200, 201])  # both parities of the free fd count
def test_clients_queued_behind_a_full_fd_table_wait(servers: Servers, headroom: int) -> None:
    echo = servers.start("echo", "echo")
    with child_lb(echo.port, headroom) as (proc, (port,), clients):
        for _ in range(300):  # more than the fds allow: the backlog holds the rest
            c = socket.create_connection((HOST, port), timeout=5)
            clients.append(c)
        seen = outcomes(clients, 20.0, quiet=1.5)  # until the served ones have answered
        assert seen["reset"] == 0 and seen["closed"] == 0, seen
        assert 50 <= seen["echo"] < 300, seen  # some served, the rest wait in the backlog
        for c in clients:  # fds come back: the queued ones are served now
            c.close()
        counters, _ = report(proc)
        assert counters["no_backend"] == 0, counters


def test_a_session_with_no_fd_left_for_a_pipe_parks_in_memory(servers: Servers) -> None:
    """Every fd is taken by sessions whose clients do not read: a copy that the client cannot
    take must be parked, and there is no fd for a pipe (the reserve gives two). The rest is held
    in memory instead of resetting the session, and every byte arrives once clients read."""
    n, total = 4, max(8 << 20, 2 * wmem_max())  # more than the client leg's send buffer
    stream = servers.start("stream", "stream", send_total=total, seed=7)
    # 2 fds per session and nothing more (the reserve was taken before the limit)
    with child_lb(stream.port, 2 * n) as (proc, (port,), clients):
        for _ in range(n):
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow reader
            c.settimeout(10)
            c.connect((HOST, port))
            clients.append(c)
        deadline = time.monotonic() + 10
        while report(proc)[1]["park_allocs"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        internals = report(proc)[1]
        assert internals["park_allocs"] >= 1, internals
        assert internals["sessions"] == n, internals  # nobody was reset
        for c in clients:  # now read everything: nothing lost, nothing out of order
            got = hashlib.sha256()
            size = 0
            while size < total:
                chunk = c.recv(1 << 16)
                assert chunk, f"closed after {size} of {total} bytes"
                got.update(chunk)
                size += len(chunk)
            assert size == total and got.hexdigest() == patterns.digest(total, 7)
        assert report(proc)[0]["accept_errors"] <= 1


def test_a_tcp_fd_shortage_leaves_udp_flows_alone(servers: Servers) -> None:
    """Out of fds, the worker stops accepting TCP until fds are free again; its UDP listeners
    stay read, since the datagrams of existing flows need no new descriptor."""
    echo = servers.start("echo", "echo")
    uecho = servers.udp("uecho", "echo")
    with child_lb(echo.port, 12, uecho.port) as (proc, (tcp_port, udp_port), clients), \
            udp_socket(HOST) as flow:
        assert udp_ask(flow, (HOST, udp_port), b"before")[0] == b"before"
        for _ in range(20):  # more sessions than the 12 spare fds hold
            clients.append(socket.create_connection((HOST, tcp_port), timeout=5))
        outcomes(clients, 1.0)  # the ones that fit are served; the rest wait
        assert report(proc)[1]["listener_pauses"] >= 1
        for k in range(3):  # the flow goes on while TCP accepting is paused
            assert udp_ask(flow, (HOST, udp_port), b"during %d" % k, timeout=2)[0] == \
                b"during %d" % k
