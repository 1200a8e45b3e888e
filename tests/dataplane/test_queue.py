"""The queue for full backends (queue_timeout_ms / max_queue in a TCP service's record).

A client whose first pick finds every eligible backend at its max_connections waits, unread,
instead of being reset; it is dispatched when a slot frees (oldest first per service), reset at
queue_timeout_ms (queue_timeouts), refused beyond max_queue (rejected), dropped when it hangs
up, and closed at a stop. Without the keys nothing changes (test_limits.py).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

from l4lb import proxyproto

from .backends import BackendServer
from .clients import (
    closed_within,
    connect,
    fate,
    read_to_end,
    recv_exact,
    reset_close,
    wait_for,
)
from .conftest import LB, SVC, MakeLB, Servers, open_listeners
from .tables import BackendSpec, ServiceSpec

HOST = "127.0.0.1"


def queued_lb(make_lb: MakeLB, servers: Servers, workers: int = 1, timeout_ms: int = 5000,
              max_queue: int = 0) -> tuple[LB, BackendServer]:
    """One echo backend that takes one connection at a time, behind a service with a queue."""
    echo = servers.start("echo", "echo")
    return make_lb([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port, max_connections=1),),
                                queue_timeout_ms=timeout_ms, max_queue=max_queue)],
                   workers=workers), echo


def hold(lb: LB) -> socket.socket:
    """A client that holds the backend's only slot (its echo came back)."""
    client = connect(lb.addr())
    client.sendall(b"holder")
    assert recv_exact(client, 6) == b"holder"
    return client


def nothing_yet(sock: socket.socket, seconds: float = 0.2) -> bool:
    """True when sock gets no byte (and no close) within seconds."""
    return closed_within(sock, seconds) == "open"


def test_waiter_is_served_when_the_slot_frees(make_lb: MakeLB, servers: Servers) -> None:
    lb, echo = queued_lb(make_lb, servers)
    with hold(lb) as holder, connect(lb.addr()) as waiter:
        payload = bytes(range(256)) * 64  # 16 KiB, waits in the kernel meanwhile
        waiter.sendall(payload)
        assert wait_for(lambda: lb.svc_stats().get("queued_now") == 1, 3), lb.svc_stats()
        assert nothing_yet(waiter)  # not rejected, not served
        assert len(echo.records()) == 1  # the waiter holds no backend connection
        stats = lb.svc_stats()
        assert (stats["rejected"], stats["queued_total"], stats["conns_active"]) == (0, 1, 2)
        holder.close()
        assert recv_exact(waiter, len(payload)) == payload  # its bytes intact, in order
    assert wait_for(lambda: lb.svc_stats().get("conns_active") == 0, 3)
    stats = lb.svc_stats()
    assert (stats["queued_now"], stats["queued_total"], stats["queue_timeouts"]) == (0, 1, 0)
    assert stats["rejected"] == 0 and stats["conns_total"] == 2
    assert stats["queue_wait_ms"] >= 150  # it waited at least nothing_yet()'s 0.2 s


def test_waiters_are_served_oldest_first(make_lb: MakeLB, servers: Servers) -> None:
    lb, _echo = queued_lb(make_lb, servers)
    with contextlib.ExitStack() as stack:
        current = stack.enter_context(hold(lb))
        waiters = []
        for k in range(3):  # one at a time, so their order is known
            waiter = stack.enter_context(connect(lb.addr()))
            waiter.sendall(b"w%d" % k)
            assert wait_for(lambda n=k + 1: lb.svc_stats().get("queued_now") == n, 3)
            waiters.append(waiter)
        for k, waiter in enumerate(waiters):
            current.close()
            assert recv_exact(waiter, 2) == b"w%d" % k
            assert all(nothing_yet(w, 0.1) for w in waiters[k + 1:])  # the others still wait
            current = waiter
        current.close()
    stats = lb.svc_stats()
    assert (stats["queued_total"], stats["queued_now"], stats["rejected"]) == (3, 0, 0)


def test_queue_timeout_resets_the_waiter(make_lb: MakeLB, servers: Servers) -> None:
    lb, _echo = queued_lb(make_lb, servers, timeout_ms=300)
    with hold(lb) as holder:
        start = time.monotonic()
        with connect(lb.addr()) as waiter:
            assert closed_within(waiter, 3.0) == "reset"
        took = time.monotonic() - start
        assert 0.25 <= took < 2.0, took
        holder.sendall(b"still")  # the holder is untouched
        assert recv_exact(holder, 5) == b"still"
    stats = lb.svc_stats()
    assert (stats["queue_timeouts"], stats["queued_now"], stats["queued_total"]) == (1, 0, 1)
    assert stats["rejected"] == 0 and stats["no_backend"] == 0


def test_full_queue_rejects(make_lb: MakeLB, servers: Servers) -> None:
    lb, _echo = queued_lb(make_lb, servers, max_queue=1)
    with hold(lb), connect(lb.addr()) as waiter:
        assert wait_for(lambda: lb.svc_stats().get("queued_now") == 1, 3)
        start = time.monotonic()
        assert fate(lb.addr(), 2.0) == "reset"  # the second waiter: no room
        assert time.monotonic() - start < 1.0
        assert wait_for(lambda: lb.svc_stats().get("rejected") == 1, 2)
        assert nothing_yet(waiter)  # the first still waits
    stats = lb.svc_stats()
    assert stats["queued_total"] == 1 and stats["queue_timeouts"] == 0


def test_waiter_that_hangs_up_leaves_the_queue(make_lb: MakeLB, servers: Servers) -> None:
    """A FIN with nothing before it (the client gave up) and a reset (after data) drop a
    waiting client at once; neither ever reaches the backend."""
    lb, echo = queued_lb(make_lb, servers)
    with hold(lb) as holder:
        quiet = connect(lb.addr())
        assert wait_for(lambda: lb.svc_stats().get("queued_now") == 1, 3)
        talker = connect(lb.addr())
        talker.sendall(b"never delivered")  # data waits unread, then the RST
        assert wait_for(lambda: lb.svc_stats().get("queued_now") == 2, 3)
        quiet.close()
        reset_close(talker)
        assert wait_for(lambda: lb.svc_stats().get("queued_now") == 0, 2), lb.svc_stats()
        assert wait_for(lambda: lb.svc_stats().get("conns_active") == 1, 2)
        holder.close()
    time.sleep(0.2)  # a waiter still queued would reach the backend now
    assert len(echo.records()) == 1  # only the holder ever got there
    stats = lb.svc_stats()
    assert (stats["queued_total"], stats["queue_timeouts"], stats["rejected"]) == (2, 0, 0)


def test_half_close_after_data_keeps_the_waiter(make_lb: MakeLB, servers: Servers) -> None:
    """A client that sends its request and then its FIN (a half-close) may still want the
    answer: it keeps waiting, and once served the backend gets the data and the FIN."""
    lb, _ = queued_lb(make_lb, servers)
    with hold(lb) as holder, connect(lb.addr()) as waiter:
        waiter.sendall(b"request")
        waiter.shutdown(socket.SHUT_WR)
        assert wait_for(lambda: lb.svc_stats().get("queued_now") == 1, 3)
        assert nothing_yet(waiter, 0.3)  # still waiting, not dropped
        assert lb.svc_stats()["queued_now"] == 1
        holder.close()
        data, how = read_to_end(waiter, 5.0)
        assert (data, how) == (b"request", "eof")  # the echo came back, then the FIN


def test_slot_freed_on_one_worker_serves_a_waiter_on_another(make_lb: MakeLB,
                                                              servers: Servers) -> None:
    """Two workers, each with a listener of its own for the service: the holder comes in on
    worker 0, the waiter on worker 1; worker 0's close must reach worker 1 (its kick, or at
    worst the retry every 50 ms)."""
    lb, _echo = queued_lb(make_lb, servers, workers=2)
    own = [open_listeners(HOST, 1)[0], open_listeners(HOST, 1)[0]]
    for worker, sock in enumerate(own):
        lb.listeners[1000 + worker] = [sock]  # closed with the others, after the stop
        lb.dp.add_listener(SVC, sock.fileno(), worker)
    addr0, addr1 = (HOST, own[0].getsockname()[1]), (HOST, own[1].getsockname()[1])
    for _ in range(3):
        with connect(addr0) as holder:
            holder.sendall(b"h")
            assert recv_exact(holder, 1) == b"h"  # it holds the slot before the waiter comes
            waiter = connect(addr1)
            waiter.sendall(b"w")
            assert wait_for(lambda: lb.svc_stats().get("queued_now") == 1, 3)
            holder.close()
            start = time.monotonic()
            assert recv_exact(waiter, 1, timeout=2.0) == b"w"
            assert time.monotonic() - start < 0.5
            waiter.close()
        assert wait_for(lambda: lb.svc_stats().get("conns_active") == 0, 3)
    assert lb.svc_stats()["queued_total"] == 3
    if hasattr(lb.dp, "_internals"):  # the C plane counts its wake-ups: worker 0 woke worker 1
        assert lb.dp._internals()["queue_kicks"] >= 3


def test_new_client_queues_behind_waiters(make_lb: MakeLB, servers: Servers) -> None:
    """A newcomer does not take a slot an older waiter is due, even if it arrives first
    after the close: it is queued behind (the run after the batch serves the oldest)."""
    lb, _echo = queued_lb(make_lb, servers)
    with hold(lb) as holder, connect(lb.addr()) as old:
        old.sendall(b"old")
        assert wait_for(lambda: lb.svc_stats().get("queued_now") == 1, 3)
        with connect(lb.addr()) as new:
            new.sendall(b"new")
            assert wait_for(lambda: lb.svc_stats().get("queued_now") == 2, 3)
            holder.close()
            assert recv_exact(old, 3) == b"old"
            assert nothing_yet(new)
            old.close()
            assert recv_exact(new, 3) == b"new"


def test_reload_without_the_queue_keeps_the_waiter(make_lb: MakeLB, servers: Servers) -> None:
    """A table without queue_timeout_ms applies to new clients (rejected at once); a client
    already waiting keeps its place and deadline and is served when the slot frees."""
    lb, echo = queued_lb(make_lb, servers)
    assert lb.built is not None
    spec = ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port,
                                         max_connections=1),))
    with hold(lb) as holder, connect(lb.addr()) as waiter:
        waiter.sendall(b"kept")
        assert wait_for(lambda: lb.svc_stats().get("queued_now") == 1, 3)
        lb.publish([spec])
        assert fate(lb.addr(), 2.0) == "reset"  # a new client: no queue any more
        assert wait_for(lambda: lb.svc_stats().get("rejected") == 1, 2)
        assert nothing_yet(waiter)
        holder.close()
        assert recv_exact(waiter, 4) == b"kept"
    assert lb.svc_stats()["queued_now"] == 0


def test_a_table_with_room_serves_the_waiter(make_lb: MakeLB, servers: Servers) -> None:
    """No session ends, but a new table raises the backend's max_connections: the waiting
    client is served by the queue's periodic retry (50 ms), not at its deadline."""
    lb, echo = queued_lb(make_lb, servers, timeout_ms=4000)
    port = echo.port
    with hold(lb), connect(lb.addr()) as waiter:
        waiter.sendall(b"room")
        assert wait_for(lambda: lb.svc_stats().get("queued_now") == 1, 3)
        lb.publish([ServiceSpec(SVC, (BackendSpec("echo", HOST, port, max_connections=2),),
                                queue_timeout_ms=4000)])
        start = time.monotonic()
        assert recv_exact(waiter, 4, timeout=3.0) == b"room"
        assert time.monotonic() - start < 1.0
    assert lb.svc_stats()["queue_timeouts"] == 0


def test_a_table_without_the_service_ends_the_waiter(make_lb: MakeLB,
                                                      servers: Servers) -> None:
    """The service leaves the table: its waiting client is reset (no_backend) at the queue's
    next try, not left until its deadline."""
    lb, _ = queued_lb(make_lb, servers, timeout_ms=5000)
    with hold(lb), connect(lb.addr()) as waiter:
        assert wait_for(lambda: lb.svc_stats().get("queued_now") == 1, 3)
        other = servers.start("other", "echo")
        lb.publish([ServiceSpec(SVC + 1, (BackendSpec("other", HOST, other.port),))])
        start = time.monotonic()
        assert closed_within(waiter, 3.0) == "reset"
        assert time.monotonic() - start < 1.0
        stats = lb.svc_stats()
        assert (stats["queued_now"], stats["no_backend"], stats["queue_timeouts"]) == (0, 1, 0)


def test_stop_closes_the_waiters(make_lb: MakeLB, servers: Servers) -> None:
    lb, _echo = queued_lb(make_lb, servers)
    with hold(lb) as holder, connect(lb.addr()) as waiter:
        assert wait_for(lambda: lb.svc_stats().get("queued_now") == 1, 3)
        start = time.monotonic()
        stopper = threading.Thread(target=lb.stop, args=(5.0,), daemon=True)
        stopper.start()
        try:
            assert closed_within(waiter, 3.0) == "reset"  # at once, not at the deadline
            assert time.monotonic() - start < 2.0
            holder.sendall(b"drain")  # the established session may finish
            assert recv_exact(holder, 5) == b"drain"
        finally:
            holder.close()
            stopper.join(10)
    assert not stopper.is_alive()
    stats = lb.svc_stats()
    assert (stats["queued_now"], stats["rejected"], stats["queue_timeouts"]) == (0, 1, 0)


def test_connection_log_names_the_wait(make_lb: MakeLB, servers: Servers) -> None:
    lb, _echo = queued_lb(make_lb, servers, timeout_ms=300)
    lb.dp.set_connection_log(True, 64)
    with hold(lb) as holder:
        with connect(lb.addr()) as late:
            assert closed_within(late, 3.0) == "reset"  # queue_timeout
        with connect(lb.addr()) as served:
            served.sendall(b"s")
            assert wait_for(lambda: lb.svc_stats().get("queued_now") == 1, 3)
            time.sleep(0.1)
            holder.close()
            assert recv_exact(served, 1) == b"s"
    records: list[dict[str, object]] = []
    assert wait_for(lambda: (records.extend(lb.dp.closed_sessions()), len(records) >= 3)[1], 3)
    by_reason = {str(r["reason"]): r for r in records}
    timed_out = by_reason["queue_timeout"]
    assert timed_out["backend_id"] == -1
    assert 0.25 <= float(timed_out["queued"]) <= float(timed_out["duration"]) + 1e-3
    waited = [r for r in records if r["reason"] != "queue_timeout" and float(r["queued"]) > 0]
    assert len(waited) == 1 and float(waited[0]["queued"]) >= 0.08, records
    assert sum(1 for r in records if float(r["queued"]) == 0) == 1  # the holder never waited


def test_log_of_a_header_cut_short_names_no_wait(make_lb: MakeLB, servers: Servers) -> None:
    """accept_proxy: a version 2 header whose TLVs are cut short by the client's FIN never
    waited in the queue, so its connection-log record says queued 0 (the C session keeps the
    header bytes still to skip and the queue's wait in the same word)."""
    lb, _echo = queued_lb(make_lb, servers)
    lb.dp.set_accept_proxy(SVC, 2000)
    lb.dp.set_connection_log(True, 64)
    base = proxyproto.build(2, ("203.0.113.7", 40001), ("198.51.100.10", 443))
    tlv = b"\xee" + struct.pack("!H", 5000) + b"t" * 5000  # an unknown type, 5003 bytes
    header = base[:14] + struct.pack("!H", 12 + len(tlv)) + base[16:] + tlv
    with connect(lb.addr()) as sock:
        sock.sendall(header[:200])  # the addresses, and a few of the TLV bytes
        sock.shutdown(socket.SHUT_WR)
        assert closed_within(sock, 3.0) == "reset"
    records: list[dict[str, object]] = []
    assert wait_for(lambda: (records.extend(lb.dp.closed_sessions()), bool(records))[1], 3)
    assert [(r["reason"], float(r["queued"])) for r in records] == [("proxy_header", 0.0)]
    assert lb.svc_stats().get("queued_total", 0) == 0


def test_proxy_client_queues_behind_waiters(make_lb: MakeLB, servers: Servers) -> None:
    """accept_proxy: a client whose header completes while older clients wait queues behind
    them, as any newcomer does, rather than taking a slot one of them is due. The slot here
    comes from a new table (no session ends, so no kick: the waiter is due at the queue's
    next retry, within 50 ms), and the newcomer's header arrives right after it."""
    lb, echo = queued_lb(make_lb, servers)
    lb.dp.set_accept_proxy(SVC, 2000)
    header = proxyproto.build(1, ("203.0.113.7", 40001), ("198.51.100.10", 443))
    with connect(lb.addr()) as holder, connect(lb.addr()) as old:
        holder.sendall(header + b"holder")
        assert recv_exact(holder, 6) == b"holder"
        old.sendall(header + b"old")
        assert wait_for(lambda: lb.svc_stats().get("queued_now") == 1, 3)
        lb.publish([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port,
                                                  max_connections=2),),
                                queue_timeout_ms=5000)])
        with connect(lb.addr()) as new:
            new.sendall(header + b"new")
            assert recv_exact(old, 3, timeout=2.0) == b"old"  # the oldest gets the slot
            assert nothing_yet(new)  # the newcomer waits behind it
            old.close()
            assert recv_exact(new, 3) == b"new"
    stats = lb.svc_stats()
    assert (stats["queued_total"], stats["rejected"], stats["queue_timeouts"]) == (2, 0, 0)


def test_older_waiter_on_another_worker_goes_first(make_lb: MakeLB, servers: Servers) -> None:
    """The slot frees on worker 1, which holds a newer waiting client; the oldest waits on
    worker 0. The slot is the oldest's (worker 0 is woken for it), not the newer one's that
    happens to sit where it freed: else a worker where slots keep freeing serves its own
    newcomers while an older client elsewhere waits out its queue_timeout."""
    lb, _echo = queued_lb(make_lb, servers, workers=2)
    own = [open_listeners(HOST, 1)[0], open_listeners(HOST, 1)[0]]
    for worker, sock in enumerate(own):
        lb.listeners[1000 + worker] = [sock]  # closed with the others, after the stop
        lb.dp.add_listener(SVC, sock.fileno(), worker)
    addr0, addr1 = (HOST, own[0].getsockname()[1]), (HOST, own[1].getsockname()[1])
    with contextlib.ExitStack() as stack:
        holder = stack.enter_context(connect(addr1))
        holder.sendall(b"h")
        assert recv_exact(holder, 1) == b"h"
        for k in range(3):
            old = stack.enter_context(connect(addr0))  # worker 0: the oldest waiter
            old.sendall(b"old%d" % k)
            assert wait_for(lambda: lb.svc_stats().get("queued_now") == 1, 3)
            new = stack.enter_context(connect(addr1))  # worker 1, where the slot frees
            new.sendall(b"new%d" % k)
            assert wait_for(lambda: lb.svc_stats().get("queued_now") == 2, 3)
            holder.close()
            assert recv_exact(old, 4, timeout=2.0) == b"old%d" % k
            assert nothing_yet(new, 0.1)
            old.close()
            assert recv_exact(new, 4, timeout=2.0) == b"new%d" % k
            holder = new  # on worker 1 again: the next slot frees there too
    assert wait_for(lambda: lb.svc_stats().get("conns_active") == 0, 3)
    stats = lb.svc_stats()
    assert (stats["queued_now"], stats["queued_total"], stats["queue_timeouts"]) == (0, 6, 0)


def test_a_failed_connect_waits_again_for_a_full_backend(make_lb: MakeLB,
                                                        servers: Servers) -> None:
    """Redispatch: a client whose connect failed, while every other backend is full, waits
    in the queue again (it used to end as connect_failed) and is served by another backend
    when a slot frees; the backend that refused it is not tried again."""
    echo = servers.start("echo", "echo")
    dead = servers.refusing()
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port, max_connections=1),
                                    BackendSpec("dead", HOST, dead.port)),
                              queue_timeout_ms=5000)])
    # the first client reaches the echo backend (directly, or after the dead one refused
    # it) and holds its only slot
    with hold(lb) as holder:
        before = lb.svc_stats()
        failures = lb.be_stats("dead").get("connect_failures", 0)
        with connect(lb.addr()) as waiter:
            waiter.sendall(b"w")
            # its pick took the dead backend (the other is full), the connect was refused,
            # and it waits for the echo backend's slot
            assert wait_for(lambda: lb.svc_stats().get("queued_now") == 1, 3), lb.svc_stats()
            assert lb.be_stats("dead").get("connect_failures", 0) == failures + 1
            assert nothing_yet(waiter)
            holder.close()
            assert recv_exact(waiter, 1) == b"w"
            assert lb.be_stats("dead").get("connect_failures", 0) == failures + 1
    stats = lb.svc_stats()
    assert stats["queued_total"] == before["queued_total"] + 1
    assert stats["no_backend"] == before["no_backend"]
    assert (stats["queued_now"], stats["rejected"]) == (0, 0)


def test_without_a_queue_a_failed_connect_to_a_full_service_ends_as_before(
        make_lb: MakeLB, servers: Servers) -> None:
    """Without queue_timeout, the client whose connect failed while every other backend is
    full is reset and counted as no_backend (connect_failed), as it always was."""
    echo = servers.start("echo", "echo")
    dead = servers.refusing()
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port, max_connections=1),
                                    BackendSpec("dead", HOST, dead.port)))])
    with hold(lb):
        before = lb.svc_stats()
        # each pick takes the dead backend (the echo one is full), its connect is refused,
        # and the retry finds nothing with room
        assert [fate(lb.addr(), 2.0) for _ in range(3)] == ["reset"] * 3
        assert wait_for(lambda: lb.svc_stats()["no_backend"] == before["no_backend"] + 3, 2)
        stats = lb.svc_stats()
        assert (stats["queued_total"], stats["rejected"]) == (0, 0)
