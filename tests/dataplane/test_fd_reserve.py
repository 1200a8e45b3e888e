"""Out of descriptors: clients queued behind a full fd table wait, they are not reset.

The data plane runs in a child process with a low RLIMIT_NOFILE (the test's own backends and
clients keep this process's limit). An accept can take the last free fd, so the backend socket
fails with EMFILE; before the fd reserve (relay_tcp.c, "The fd reserve") that client was reset,
its fd came free, and the whole backlog drained as resets (or waited, by the parity of the
headroom). Now the reserve serves the client in hand and the listener pauses until fds are free.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import textwrap

import pytest

from .conftest import Servers

HOST = "127.0.0.1"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LB_PROCESS = textwrap.dedent("""
    import os, resource, socket, sys
    from l4lb._dataplane import Dataplane
    from tests.dataplane.tables import BackendSpec, ServiceSpec, build_table
    dp = Dataplane(1)
    dp.start()
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4096)
    ls.setblocking(False)
    dp.add_listener(1, ls.fileno(), 0)
    spec = ServiceSpec(1, (BackendSpec("echo", "127.0.0.1", int(sys.argv[1])),))
    dp.publish(build_table([spec]).blob)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + int(sys.argv[2]), hard))
    print(ls.getsockname()[1], flush=True)
    sys.stdin.readline()
    print(repr(dp.stats()["services"].get(1, {})), flush=True)
    dp.stop(0)
""")


def outcomes(clients: list[socket.socket], seconds: float) -> dict[str, int]:
    """Send one byte on each client, then sort them by what came back within `seconds`:
    "echo", "reset", "closed", or "waiting" (nothing yet: still queued)."""
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
    while pending and budget_ms > 0:
        ready = poller.poll(100)
        budget_ms -= 100
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
    proc = subprocess.Popen([sys.executable, "-c", LB_PROCESS, str(echo.port), str(headroom)],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    clients: list[socket.socket] = []
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port = int(proc.stdout.readline())
        for _ in range(300):  # more than the fds allow: the backlog holds the rest
            c = socket.create_connection((HOST, port), timeout=5)
            clients.append(c)
        seen = outcomes(clients, 3.0)
        assert seen["reset"] == 0 and seen["closed"] == 0, seen
        assert 50 <= seen["echo"] < 300, seen  # some served, the rest wait in the backlog
        for c in clients:  # fds come back: the queued ones are served now
            c.close()
        clients = []
        proc.stdin.write("stats\n")
        proc.stdin.flush()
        counters = proc.stdout.readline()
        assert "'no_backend': 0" in counters, counters
    finally:
        for c in clients:
            c.close()
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
