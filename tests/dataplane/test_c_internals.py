"""C-specific checks of l4lb._dataplane: pipe pool, descriptors, memory, relay modes, table reclaim.

The behaviour suite next to this file runs against both data planes; what is here looks inside
the C core through the private `_internals()`, `_tune()` and `_ct_selftest()` entry points, or
measures the C process from outside (RSS, fds), so it only runs against the compiled module.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from l4lb.dataplane import reference_requested

from . import patterns
from .clients import connect, echo_many, exchange, recv_exact, reset_close, wait_for
from .conftest import LB, SVC, Servers
from .tables import BackendSpec, ServiceSpec

HOST = "127.0.0.1"

if reference_requested():
    pytest.skip("L4LB_NO_EXTENSIONS=1: the compiled data plane is not tested",
                allow_module_level=True)

try:
    from l4lb._dataplane import Dataplane as CDataplane
    from l4lb._dataplane import _ct_selftest
except ImportError as exc:  # the behaviour suite fails loudly for this; so do we
    pytest.fail(f"l4lb._dataplane does not import ({exc}); build it with "
                "`python3 setup.py build_ext --inplace`", pytrace=False)

MakeCLB = Callable[..., LB]


@pytest.fixture
def c_lb() -> Iterator[MakeCLB]:
    """c_lb(services, workers=2, tune=None) -> a running C data plane (tuned before start)."""
    made: list[LB] = []

    def make(services: list[ServiceSpec], workers: int = 2,
             tune: tuple[int, int, bool] | None = None) -> LB:
        lb = LB(CDataplane, workers, HOST)
        made.append(lb)
        if tune is not None:
            lb.dp._tune(*tune)
        lb.dp.start()
        for spec in services:
            lb.listen(spec.service_id)
        lb.publish(services)
        return lb

    yield make
    for lb in made:
        lb.close()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_connection_table_self_check() -> None:
    """Slab, index (backward-shift deletes) and timer wheel against a brute-force model."""
    for seed in range(1, 6):
        assert _ct_selftest(seed, 100_000) == 0, seed


def test_pipes_are_pooled_and_idle_sessions_hold_none(c_lb: MakeCLB, servers: Servers) -> None:
    echo = servers.start("echo", "echo")
    lb = c_lb([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port),))], workers=1,
              tune=(0, 0, False))  # splice only: every byte goes through a pipe
    for seed in range(3):  # sequential bulk sessions reuse the same pipes
        with connect(lb.addr()) as client:
            result = exchange(client, 4 << 20, seed, timeout=20)
        assert (result.end, result.received) == ("eof", 4 << 20)
        assert result.sha_received == patterns.digest(4 << 20, seed)
    assert wait_for(lambda: lb.dp._internals()["sessions"] == 0, 5)
    pools = lb.dp._internals()
    assert pools["pipes_in_use"] == 0
    assert pools["pipes_created"] <= 4, pools  # two directions, a little slack
    assert pools["pipes_reused"] > 10 * pools["pipes_created"], pools
    assert pools["pipes_idle"] == pools["pipes_created"] - pools["pipes_closed"]

    # idle sessions (data went both ways, then silence) hold no pipe
    socks = [connect(lb.addr()) for _ in range(50)]
    try:
        for sock in socks:
            sock.sendall(b"ping")
        for sock in socks:
            assert recv_exact(sock, 4) == b"ping"
        assert wait_for(lambda: lb.dp._internals()["sessions"] == 50, 5)
        idle = lb.dp._internals()
        assert idle["pipes_in_use"] == 0, idle
        assert idle["pipes_created"] <= pools["pipes_created"] + 2, idle
    finally:
        for sock in socks:
            sock.close()


def test_stop_gives_back_every_descriptor(servers: Servers) -> None:
    """After stop() the object may live on, but holds no fd (epolls, eventfds, pipes)."""
    echo = servers.start("echo", "echo")
    before = fd_count()
    lb = LB(CDataplane, 3, HOST)
    try:
        lb.dp.start()
        lb.listen(SVC)
        lb.publish([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port),))])
        with connect(lb.addr()) as client:
            assert exchange(client, 1 << 20, 1, timeout=10).received == 1 << 20
        lb.stop(0)
        assert fd_count() == before + 3  # only our three listeners are left
        lb.dp.stop(0)  # idempotent
        assert lb.dp.stats()["services"][SVC]["conns_total"] == 1  # counters outlive stop
    finally:
        lb.close()
    assert fd_count() == before


@pytest.mark.parametrize("tune", [
    (0, 0, False),          # splice only
    (16384, 0, False),      # default: copy small chunks, splice bulk
    (4096, 0, True),        # copy only (partial sends park the rest in a pipe)
    (16384, 1 << 20, False),  # 1 MiB pipes
], ids=["splice", "hybrid", "copy", "bigpipe"])
def test_every_relay_mode_is_byte_exact(c_lb: MakeCLB, servers: Servers,
                                        tune: tuple[int, int, bool]) -> None:
    echo = servers.start("echo", "echo")
    lb = c_lb([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port),))], tune=tune)
    total = 24 << 20
    with connect(lb.addr()) as client:
        result = exchange(client, total, 7, timeout=60)
    assert (result.end, result.sent, result.received) == ("eof", total, total)
    assert result.sha_received == patterns.digest(total, 7)
    # many small sessions too (the copy path's home ground)
    socks = [connect(lb.addr()) for _ in range(64)]
    try:
        outcome = echo_many(socks, 3000, timeout=20)
    finally:
        for sock in socks:
            sock.close()
    assert outcome.ok == 64, outcome.failures[:3]
    figures = lb.dp._internals()
    if tune[0] == 0:
        assert figures["copy_sends"] == 0 and figures["splice_moves"] > 0, figures
    elif tune[2]:
        assert figures["splice_moves"] == 0 and figures["copy_sends"] > 0, figures
    else:
        assert figures["splice_moves"] > 0 and figures["copy_sends"] > 0, figures
    if tune[1]:
        assert figures["pipe_size"] == tune[1], figures
    stats = lb.dp.stats()["services"][SVC]
    assert stats["bytes_to_backend"] == stats["bytes_to_client"] == total + 64 * 3000


def test_tuning_is_refused_once_started(c_lb: MakeCLB, servers: Servers) -> None:
    echo = servers.start("echo", "echo")
    lb = c_lb([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port),))])
    with pytest.raises(RuntimeError):
        lb.dp._tune(0, 0, False)
    spare = CDataplane(1)
    with pytest.raises(ValueError):
        spare._tune(0, 0, True)  # copy only needs a buffer
    with pytest.raises(ValueError):
        spare._tune(1 << 20, 0, False)


def test_retired_tables_are_freed_while_streaming(c_lb: MakeCLB, servers: Servers) -> None:
    """1,000 publishes under traffic: the old tables are reclaimed, not piled up."""
    a = servers.start("a", "echo")
    b = servers.start("b", "echo")
    both = (BackendSpec("a", HOST, a.port), BackendSpec("b", HOST, b.port))
    lb = c_lb([ServiceSpec(SVC, both, scheduler="maglev", maglev_size=4099)])
    total = 16 << 20
    results: list[Any] = []
    client = connect(lb.addr())
    streamer = threading.Thread(
        target=lambda: results.append(exchange(client, total, 3, timeout=60)), daemon=True)
    streamer.start()
    try:
        for i in range(1000):
            weight = 1 + i % 3
            specs = (BackendSpec("a", HOST, a.port, weight=weight),
                     BackendSpec("b", HOST, b.port, weight=4 - weight))
            lb.publish([ServiceSpec(SVC, specs, scheduler="maglev", maglev_size=4099)])
            pending = lb.dp._internals()["tables_pending"]
            assert pending <= 1 + 2 * lb.workers, f"{pending} retired tables after {i}"
        streamer.join(60)
    finally:
        client.close()
    assert lb.dp.generation == 1001
    assert results and results[0].received == total
    assert results[0].sha_received == patterns.digest(total, 3)


def test_blocking_calls_release_the_gil(c_lb: MakeCLB, servers: Servers) -> None:
    """While stop() waits for a session to finish, other Python threads keep running."""
    echo = servers.start("echo", "echo")
    lb = c_lb([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port),))])
    client = connect(lb.addr())
    client.sendall(b"x")
    assert recv_exact(client, 1) == b"x"
    ticks = [0]
    done = threading.Event()

    def spin() -> None:
        while not done.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    ticker = threading.Thread(target=spin, daemon=True)
    ticker.start()
    try:
        start = time.monotonic()
        lb.stop(0.4)  # the open session keeps the workers busy until the deadline
        took = time.monotonic() - start
    finally:
        done.set()
        ticker.join(5)
        client.close()
    assert 0.35 <= took < 3.0, took
    assert ticks[0] >= 50, ticks[0]  # roughly one tick per ms, had the GIL been free


def test_dealloc_while_running_is_safe(servers: Servers) -> None:
    """Dropping a running data plane with open sessions stops it and frees everything."""
    echo = servers.start("echo", "echo")
    before = fd_count()
    lb = LB(CDataplane, 2, HOST)
    lb.dp.start()
    lb.listen(SVC)
    lb.publish([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port),))])
    client = connect(lb.addr())
    client.sendall(b"hello")
    assert recv_exact(client, 5) == b"hello"
    listeners = lb.listeners.pop(SVC)
    del lb  # __dealloc__: stop(0) + free, no Python call made
    try:
        assert client.recv(16) == b""  # the session was reset or closed, not leaked
    except ConnectionResetError:
        pass
    finally:
        client.close()
        for sock in listeners:
            sock.close()
    assert wait_for(lambda: fd_count() <= before, 2)


LB_PROCESS = textwrap.dedent("""
    import socket, sys
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
    print(ls.getsockname()[1], flush=True)
    for line in sys.stdin:
        print(repr(dp._internals()), flush=True)
    dp.stop(0)
""")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_idle_session_costs_under_2k_of_rss(servers: Servers) -> None:
    """2,000 idle sessions in a separate data-plane process grow its RSS by < 2 KiB each."""
    n = 2000
    echo = servers.start("echo", "echo")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", LB_PROCESS, str(echo.port)], cwd=root,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    socks: list[socket.socket] = []
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port = int(proc.stdout.readline())
        warm = [connect((HOST, port)) for _ in range(50)]  # first slab chunk, pools, code pages
        for sock in warm:
            sock.sendall(b"w")
            assert recv_exact(sock, 1) == b"w"
        base = rss_kib(proc.pid)
        for _ in range(n):
            sock = connect((HOST, port))
            socks.append(sock)
            sock.sendall(b"ping")
        for sock in socks:
            assert recv_exact(sock, 4) == b"ping"
        proc.stdin.write("\n")
        proc.stdin.flush()
        figures = ast.literal_eval(proc.stdout.readline())  # the child's dict of figures
        grown = rss_kib(proc.pid) - base
        assert figures["sessions"] == n + 50
        assert figures["pipes_in_use"] == 0
        print(f"RSS {grown} KiB for {n} idle sessions = {grown * 1024 / n:.0f} B each")
        assert grown * 1024 / n < 2048, f"{grown} KiB for {n} idle sessions"
        for sock in warm:
            sock.close()
    finally:
        for sock in socks:
            sock.close()
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_client_reset_while_connecting_frees_the_session(c_lb: MakeCLB,
                                                         servers: Servers) -> None:
    """The client socket is watched from accept on: a reset during a slow connect ends it."""
    hole = servers.black_hole()
    lb = c_lb([ServiceSpec(SVC, (BackendSpec("hole", HOST, hole.port),),
                           connect_timeout_ms=5000, retries=0)])
    client = connect(lb.addr())
    assert wait_for(lambda: [s["state"] for s in lb.dp.sessions()] == ["connecting"], 2)
    reset_close(client)
    start = time.monotonic()
    assert wait_for(lambda: lb.dp.sessions() == [], 2)
    assert time.monotonic() - start < 1.0  # long before the 5 s connect deadline
    stats = lb.dp.stats()
    assert stats["services"][SVC]["conns_active"] == 0
    hole_stats = stats["backends"].get(lb.backend_id("hole"), {})  # all zero: may be absent
    assert hole_stats.get("conns_active", 0) == 0
    assert hole_stats.get("connect_failures", 0) == 0
