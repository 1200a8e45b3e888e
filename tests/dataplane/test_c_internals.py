"""C-specific checks of l4lb._dataplane: pipe pool, descriptors, memory, relay modes, table reclaim.

The behaviour suite next to this file runs against both data planes; what is here looks inside
the C core through the private `_internals()`, `_tune()` and `_ct_selftest()` entry points, or
measures the C process from outside (RSS, fds), so it only runs against the compiled module.
"""

from __future__ import annotations

import ast
import glob
import os
import shutil
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


def test_blocking_or_non_listening_sockets_are_refused() -> None:
    """A blocking listener would stall its worker inside accept4(): refused up front."""
    dp = CDataplane(1)
    with socket.socket() as blocking, socket.socket() as unbound:
        blocking.bind((HOST, 0))
        blocking.listen(8)
        with pytest.raises(ValueError, match="blocking"):
            dp.add_listener(SVC, blocking.fileno(), 0)
        unbound.setblocking(False)
        with pytest.raises(ValueError, match="listening"):
            dp.add_listener(SVC, unbound.fileno(), 0)
        blocking.setblocking(False)
        dp.add_listener(SVC, blocking.fileno(), 0)  # now acceptable
        dp.remove_listener(blocking.fileno())
    dp.stop(0)


def test_shared_active_counts_are_exact(c_lb: MakeCLB, servers: Servers) -> None:
    """sched_shared.active/svc_active (least_conn, max_connections) follow sessions exactly
    through retries, timeouts, resets and half-closes, and return to zero."""
    echo = servers.start("echo", "echo")
    dead = servers.refusing()
    hole = servers.black_hole()
    lb = c_lb([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port),
                                 BackendSpec("dead", HOST, dead.port),
                                 BackendSpec("hole", HOST, hole.port)),
                           connect_timeout_ms=150, retries=2)])
    held = [connect(lb.addr()) for _ in range(12)]  # round robin: some retry past dead/hole
    try:
        for sock in held:
            sock.sendall(b"hi")
        for sock in held:
            assert recv_exact(sock, 2) == b"hi"
        figures = lb.dp._internals()
        assert (figures["sched_svc_active"], figures["sched_active"]) == (12, 12), figures
        for i, sock in enumerate(held):
            if i % 3 == 0:
                reset_close(sock)
            elif i % 3 == 1:
                sock.shutdown(socket.SHUT_WR)  # half-close; the echo backend then closes
            else:
                sock.close()
    finally:
        for sock in held:
            sock.close()
    assert wait_for(lambda: lb.dp._internals()["sessions"] == 0, 5)
    figures = lb.dp._internals()
    assert (figures["sched_svc_active"], figures["sched_active"]) == (0, 0), figures
    stats = lb.dp.stats()
    assert stats["backends"][lb.backend_id("dead")]["connect_failures"] >= 1
    assert stats["backends"][lb.backend_id("hole")]["connect_failures"] >= 1
    assert stats["services"][SVC]["conns_active"] == 0


def test_bulk_stream_does_not_starve_small_sessions(c_lb: MakeCLB, servers: Servers) -> None:
    """One worker, one fat echo stream: a ping-pong session on the same worker still gets its
    round trips while the stream runs. (A Python sender cannot outrun the relay, so this checks
    latency under load; it does not by itself prove the per-wake-up budget.)"""
    echo = servers.start("echo", "echo")
    lb = c_lb([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port),))], workers=1)
    total = 256 << 20
    results: list[Any] = []
    bulk = connect(lb.addr())
    streamer = threading.Thread(
        target=lambda: results.append(exchange(bulk, total, 5, timeout=60)), daemon=True)
    try:
        with connect(lb.addr()) as ping:
            assert wait_for(lambda: len(lb.dp.sessions()) == 2, 2)
            streamer.start()
            assert wait_for(lambda: any(x["bytes_to_client"] > (8 << 20)
                                        for x in lb.dp.sessions()), 10)
            start = time.monotonic()
            for i in range(100):
                ping.sendall(i.to_bytes(2, "big"))
                assert recv_exact(ping, 2) == i.to_bytes(2, "big")
            took = time.monotonic() - start
            still_streaming = streamer.is_alive()
        streamer.join(60)
    finally:
        bulk.close()
    assert still_streaming, "the stream ended first: nothing was measured under load"
    assert took < 2.0, f"100 round trips took {took:.2f} s next to a bulk stream"
    assert results and results[0].received == total
    assert results[0].sha_received == patterns.digest(total, 5)


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


# A C program that drives dp.h directly from several threads; built with sanitizers below.
STRESS_C = r"""
/* dp stress harness (built by tests/dataplane/test_c_internals.py with sanitizers): four client
 * threads echo through two workers while a thread publishes 3,000 tables (and bad blobs) and the
 * main thread polls sessions/stats/internals and removes and re-adds a listener. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include "dp.h"

static int echo_port[2], lb_port;
static atomic_int done, bad;
static struct dp *g_dp;

static void *echo_main(void *arg)
{
    int ls = *(int *)arg, ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[64];
    static __thread char buf[65536];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    while (!atomic_load(&done)) {
        int n = epoll_wait(ep, evs, 64, 50);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                if (c >= 0) {
                    ev.data.fd = c;
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                }
                continue;
            }
            ssize_t k = recv(fd, buf, sizeof buf, 0);
            if (k < 0 && errno == EAGAIN)
                continue;
            if (k <= 0) {
                close(fd);
                continue;
            }
            for (ssize_t o = 0; o < k;) {
                ssize_t m = send(fd, buf + o, (size_t)(k - o), MSG_NOSIGNAL);
                if (m < 0 && errno == EAGAIN) {
                    usleep(100);
                    continue;
                }
                if (m <= 0)
                    break;
                o += m;
            }
        }
    }
    close(ep);
    return NULL;
}

static int listen_on(int port, int lb)
{
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t l = sizeof a;

    if (lb)
        setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(s, (void *)&a, sizeof a) || listen(s, 1024)) {
        perror("bind");
        exit(2);
    }
    fcntl(s, F_SETFL, O_NONBLOCK);
    (void)l;
    return s;
}

static int port_of(int s)
{
    struct sockaddr_in a;
    socklen_t l = sizeof a;
    getsockname(s, (void *)&a, &l);
    return ntohs(a.sin_port);
}

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

/* One round-robin service (id 1) over the two echo backends with weights w0, w1. */
static size_t blob(uint8_t *b, uint32_t w0, uint32_t w1)
{
    size_t total = 32 + 48 + 2 * 40;
    int lo = echo_port[0] < echo_port[1] ? 0 : 1;
    memset(b, 0, total);
    memcpy(b, "L4LB", 4);
    put16(b + 4, 1);
    put16(b + 6, 32);
    put32(b + 8, 1);
    put32(b + 12, 2);
    put32(b + 20, 7);
    put32(b + 24, (uint32_t)total);
    put32(b + 32, 1);            /* service_id; tcp, round_robin, src_ip */
    put32(b + 32 + 8, 500);      /* connect_timeout_ms */
    put32(b + 32 + 16, 1);       /* retries */
    put32(b + 32 + 28, 2);       /* backend_count */
    for (int i = 0; i < 2; i++) {
        uint8_t *r = b + 80 + 40 * i;
        int which = i == 0 ? lo : 1 - lo; /* canonical order: by port */
        put32(r, (uint32_t)which);
        r[4] = 4;
        put16(r + 6, (uint16_t)echo_port[which]);
        r[8] = 127;
        r[11] = 1;
        put32(r + 24, which == 0 ? w0 : w1);
    }
    return total;
}

static void *client_main(void *arg)
{
    long id = (long)arg;
    static __thread char out[70000], in[70000];
    for (size_t i = 0; i < sizeof out; i++)
        out[i] = (char)(i * 7 + (size_t)id);
    for (int round = 0; round < 150; round++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)lb_port),
                                .sin_addr.s_addr = htonl(0x7f000001)};
        struct timeval tv = {5, 0};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (connect(c, (void *)&a, sizeof a)) {
            atomic_fetch_add(&bad, 1);
            close(c);
            continue;
        }
        size_t n = 1 + (size_t)(round * 997 + id * 31) % sizeof out, sent = 0, got = 0;
        if (round % 7 == 3) { /* reset mid-session */
            struct linger lg = {1, 0};
            send(c, out, 100, MSG_NOSIGNAL);
            setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            close(c);
            continue;
        }
        while (sent < n) {
            ssize_t m = send(c, out + sent, n - sent, MSG_NOSIGNAL);
            if (m <= 0)
                break;
            sent += (size_t)m;
            for (;;) {
                ssize_t k = recv(c, in + got, sizeof in - got, MSG_DONTWAIT);
                if (k <= 0)
                    break;
                got += (size_t)k;
            }
        }
        shutdown(c, SHUT_WR); /* half-close: the echo must still come back */
        for (;;) {
            ssize_t k = recv(c, in + got, sizeof in - got, 0);
            if (k <= 0)
                break;
            got += (size_t)k;
        }
        if (got != n || memcmp(in, out, n)) {
            fprintf(stderr, "client %ld round %d: got %zu of %zu\n", id, round, got, n);
            atomic_fetch_add(&bad, 1);
        }
        close(c);
    }
    return NULL;
}

static void *publisher_main(void *arg)
{
    uint8_t b[256];
    char err[256];
    uint64_t gen;
    (void)arg;
    for (int i = 0; i < 3000; i++) {
        size_t len = blob(b, 1 + (uint32_t)i % 3, 3 - (uint32_t)i % 3);
        if (dp_publish(g_dp, b, len, &gen, err, sizeof err)) {
            fprintf(stderr, "publish: %s\n", err);
            atomic_fetch_add(&bad, 1);
        }
        if (i % 100 == 0) {
            b[0] = 'X';
            if (dp_publish(g_dp, b, len, &gen, err, sizeof err) != -EINVAL)
                atomic_fetch_add(&bad, 1);
        }
    }
    return NULL;
}

int main(void)
{
    int e0 = listen_on(0, 0), e1 = listen_on(0, 0), l0, l1;
    pthread_t et[2], ct[4], pt;
    uint8_t b[256];
    char err[256];
    uint64_t gen;
    struct dp_stats *st = malloc(sizeof *st);
    struct dp_internals in;

    echo_port[0] = port_of(e0);
    echo_port[1] = port_of(e1);
    pthread_create(&et[0], NULL, echo_main, &e0);
    pthread_create(&et[1], NULL, echo_main, &e1);
    if (dp_create(2, &g_dp))
        return 3;
    l0 = listen_on(0, 1);
    lb_port = port_of(l0);
    l1 = listen_on(lb_port, 1);
    if (dp_add_listener(g_dp, 1, l0, 0) || dp_start(g_dp) || dp_add_listener(g_dp, 1, l1, 1))
        return 4;
    if (dp_publish(g_dp, b, blob(b, 1, 1), &gen, err, sizeof err))
        return 5;
    pthread_create(&pt, NULL, publisher_main, NULL);
    for (long i = 0; i < 4; i++)
        pthread_create(&ct[i], NULL, client_main, (void *)i);
    for (int i = 0; i < 200; i++) {
        struct dp_session_info *s;
        size_t n;
        if (dp_sessions(g_dp, &s, &n) || dp_stats(g_dp, st) || dp_internals(g_dp, &in))
            atomic_fetch_add(&bad, 1);
        free(s);
        if (i == 50 && dp_remove_listener(g_dp, l1))
            atomic_fetch_add(&bad, 1);
        if (i == 60 && dp_add_listener(g_dp, 1, l1, 1))
            atomic_fetch_add(&bad, 1);
        usleep(2000);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(ct[i], NULL);
    pthread_join(pt, NULL);
    usleep(200000);
    dp_stats(g_dp, st);
    dp_internals(g_dp, &in);
    printf("gen=%llu total=%llu active=%lld no_backend=%llu pipes_in_use=%lld sessions=%llu "
           "tables_pending=%llu sched_active=%lld sched_svc_active=%lld bad=%d\n",
           (unsigned long long)dp_generation(g_dp), (unsigned long long)st->svc[1].conns_total,
           (long long)st->svc[1].conns_active, (unsigned long long)st->svc[1].no_backend,
           (long long)in.pipes_in_use, (unsigned long long)in.sessions,
           (unsigned long long)in.tables_pending, (long long)in.sched_active,
           (long long)in.sched_svc_active, atomic_load(&bad));
    dp_stop(g_dp, 500);
    dp_stop(g_dp, 0);
    dp_destroy(g_dp);
    free(st);
    atomic_store(&done, 1);
    pthread_join(et[0], NULL);
    pthread_join(et[1], NULL);
    close(l0);
    close(l1);
    close(e0);
    close(e1);
    return atomic_load(&bad) ? 1 : 0;
}
"""


@pytest.mark.slow
@pytest.mark.parametrize("sanitizer", ["thread", "address,undefined"])
def test_core_under_sanitizers(tmp_path: Any, sanitizer: str) -> None:
    """Clients (echo, half-close, RST), 3,000 publishes, polling and listener churn at once,
    with ThreadSanitizer, then AddressSanitizer + UBSan + LeakSanitizer: no report allowed."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc on PATH")  # the extension itself could not have been built either
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    core = os.path.join(root, "src_ext", "core")
    main = tmp_path / "stress.c"
    main.write_text(STRESS_C)
    exe = tmp_path / "stress"
    build = subprocess.run(
        [gcc, "-std=gnu11", "-O1", "-g", f"-fsanitize={sanitizer}", "-I", core,
         *sorted(glob.glob(os.path.join(core, "*.c"))), str(main), "-o", str(exe), "-lpthread"],
        capture_output=True, text=True, timeout=240)
    assert build.returncode == 0, build.stderr[-3000:]
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1", UBSAN_OPTIONS="halt_on_error=1",
               ASAN_OPTIONS="detect_leaks=1")
    env.pop("LD_PRELOAD", None)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert "Sanitizer" not in run.stderr, run.stderr[-4000:]
    figures = dict(kv.split("=") for kv in run.stdout.split())
    assert figures["gen"] == "3001" and figures["total"] == "600", figures
    assert (figures["active"], figures["sessions"], figures["pipes_in_use"]) == ("0", "0", "0")
    assert figures["no_backend"] == "0" and figures["tables_pending"] == "0", figures
    assert (figures["sched_active"], figures["sched_svc_active"]) == ("0", "0"), figures


def test_reset_reaches_a_quiet_half_closed_session() -> None:
    """Client FIN, backend silent, then client RST: the backend side is reset at once (EPOLLERR
    is acted on even when no direction has bytes to move)."""
    backend = socket.socket()
    backend.bind((HOST, 0))
    backend.listen(4)
    lb = LB(CDataplane, 1, HOST)
    try:
        lb.dp.start()
        lb.listen(SVC)
        lb.publish([ServiceSpec(SVC, (BackendSpec("b", HOST, backend.getsockname()[1]),))])
        client = connect(lb.addr())
        backend.settimeout(5)
        conn, _ = backend.accept()
        with conn:
            conn.settimeout(5)
            client.shutdown(socket.SHUT_WR)
            assert conn.recv(16) == b""  # the client's FIN came through
            assert wait_for(lambda: [s["state"] for s in lb.dp.sessions()] == ["half_closed"], 2)
            reset_close(client)
            assert wait_for(lambda: lb.dp.sessions() == [], 2)
            time.sleep(0.05)  # let the RST cross loopback
            # an RST makes the very first send fail (EPIPE in CLOSE_WAIT); after a FIN it would
            # succeed and only a later one would fail
            with pytest.raises((BrokenPipeError, ConnectionResetError)):
                conn.send(b"x")
    finally:
        lb.close()
        backend.close()
