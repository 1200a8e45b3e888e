"""Table swaps: publishes under load lose nothing; a bad blob is refused and changes nothing."""

from __future__ import annotations

import contextlib
import dataclasses
import threading

import pytest

from l4lb.table.blob import pack

from .clients import EchoOutcome, Gate, connect, echo_many, fate, recv_exact, recv_line, wait_for
from .conftest import SVC, MakeLB, Servers
from .tables import BackendSpec, ServiceSpec

HOST = "127.0.0.1"
STREAMS = 50
PUBLISHES = 1000


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_1000_publishes_while_50_connections_stream(make_lb: MakeLB, servers: Servers) -> None:
    echoes = [servers.start(f"e{i}", "echo") for i in range(3)]
    specs = tuple(BackendSpec(e.name, HOST, e.port) for e in echoes)
    lb = make_lb([ServiceSpec(SVC, specs)])
    assert lb.dp.generation == 1
    gate = Gate(threading.Event(), threading.Event())
    result: list[EchoOutcome] = []
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(connect(lb.addr())) for _ in range(STREAMS)]
        streamer = threading.Thread(
            target=lambda: result.append(echo_many(clients, 2 << 20, timeout=60, gate=gate)),
            name="streams", daemon=True)
        streamer.start()
        try:
            # every stream is halfway, its session open with bytes relayed: swap tables now
            assert gate.halfway.wait(30), "streams did not reach the halfway point"
            for n in range(PUBLISHES):
                weights = (1 + n % 3, 1 + n % 5, n % 2)  # each table differs from the last
                variant = tuple(dataclasses.replace(s, weight=w)
                                for s, w in zip(specs, weights, strict=True))
                scheduler = ("round_robin", "least_conn", "maglev")[n % 3]
                generation = lb.publish([ServiceSpec(SVC, variant, scheduler=scheduler,
                                                     maglev_size=251)])
                assert generation == n + 2
                if n % 100 == 0:  # new connections keep working while tables change
                    with connect(lb.addr()) as probe:
                        probe.sendall(b"probe")
                        assert recv_exact(probe, 5) == b"probe"
            halfway = [s for s in lb.dp.sessions() if s["bytes_to_client"] == 1 << 20]
            assert len(halfway) == STREAMS  # all still open, mid-stream, at the last swap
        finally:
            gate.resume.set()
            streamer.join(90)
        assert not streamer.is_alive()
    assert lb.dp.generation == PUBLISHES + 1
    assert lb.dp.stats()["generation"] == PUBLISHES + 1
    (outcome,) = result
    assert outcome.failures == []
    assert outcome.ok == STREAMS
    assert wait_for(lambda: lb.svc_stats().get("conns_active") == 0, 10)
    stats = lb.svc_stats()
    expected = STREAMS * (2 << 20) + 5 * (PUBLISHES // 100)
    assert stats["bytes_to_backend"] == stats["bytes_to_client"] == expected
    assert stats["no_backend"] == stats["rejected"] == 0


def bad_blobs(good: bytes) -> list[tuple[bytes, str]]:
    """(blob, a word the error must contain) for a few kinds of damage."""
    from l4lb.table.blob import parse

    table = parse(good)
    heavy = dataclasses.replace(table.backends[0], weight=300)
    overweight = pack(dataclasses.replace(table, backends=(heavy, *table.backends[1:])))
    return [
        (b"junk", "length"),
        (b"XXXX" + good[4:], "magic"),
        (good[:-1], "total_size"),
        (overweight, "weight"),
    ]


def test_bad_blob_is_refused_and_old_table_stays(make_lb: MakeLB, servers: Servers) -> None:
    old = servers.start("old", "name")
    new = servers.start("new", "name")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("old", HOST, old.port),))])
    assert lb.built is not None
    with connect(lb.addr()) as held:
        assert recv_line(held) == "old"
        for blob, word in bad_blobs(lb.built.blob):
            with pytest.raises(ValueError, match=word):
                lb.dp.publish(blob)
            assert lb.dp.generation == 1
        with connect(lb.addr()) as client:  # still forwarding on the old table
            assert recv_line(client) == "old"
        assert lb.publish([ServiceSpec(SVC, (BackendSpec("new", HOST, new.port),))]) == 2
        with connect(lb.addr()) as client:  # the swap takes effect for new sessions ...
            assert recv_line(client) == "new"
        held.sendall(b"still here")  # ... and the established one stays where it was
        assert wait_for(lambda: sum(r.bytes_in for r in old.records()) == 10, 5)
    assert lb.dp.stats()["generation"] == 2


def test_publish_before_any_table_and_unknown_service(make_lb: MakeLB, servers: Servers) -> None:
    """A listener whose service is not in the table: its clients are reset, counted no_backend."""
    echo = servers.start("echo", "echo")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port),))])
    lb.listen(2)  # service 2 has a listener but no entry in the table
    assert fate(lb.addr(2), 1.0) == "reset"
    assert wait_for(lambda: lb.svc_stats(2).get("no_backend") == 1, 2)
    assert echo.records() == []
