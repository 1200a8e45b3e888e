"""The TCP relay: bytes arrive exact, FIN and RST travel both ways."""

from __future__ import annotations

import hashlib
import socket
import time

import pytest

from . import patterns
from .clients import (
    closed_within,
    connect,
    exchange,
    read_to_end,
    recv_exact,
    reset_close,
    wait_for,
)
from .conftest import SVC, MakeLB, Servers
from .tables import BackendSpec, ServiceSpec

BULK = 100 * 1024 * 1024  # bytes each way in the bulk test


def one_service(*backends: BackendSpec, **kw: int | str) -> list[ServiceSpec]:
    return [ServiceSpec(SVC, tuple(backends), **kw)]  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bulk_100mb_each_way_is_byte_exact(make_lb: MakeLB, servers: Servers) -> None:
    backend = servers.start("bulk", "stream", send_total=BULK, seed=2)
    lb = make_lb(one_service(BackendSpec("bulk", "127.0.0.1", backend.port)))
    with connect(lb.addr()) as client:
        result = exchange(client, BULK, seed=1, timeout=60)
    assert result.send_error == ""
    assert result.end == "eof"
    assert result.received == BULK
    assert result.sha_received == patterns.digest(BULK, 2)
    assert wait_for(lambda: len(backend.ended()) == 1, 10)
    record = backend.ended()[0]
    assert (record.end, record.bytes_in) == ("eof", BULK)
    assert record.sha_in == patterns.digest(BULK, 1)
    assert wait_for(lambda: lb.svc_stats().get("conns_active") == 0, 5)
    svc = lb.svc_stats()
    assert (svc["bytes_to_backend"], svc["bytes_to_client"]) == (BULK, BULK)
    be = lb.be_stats("bulk")
    assert (be["bytes_to_backend"], be["bytes_to_client"]) == (BULK, BULK)
    print(f"100 MB each way in {result.seconds:.2f} s")


def test_client_half_close_still_receives_the_rest(make_lb: MakeLB, servers: Servers) -> None:
    """The client shuts its write side; the echo of everything it sent still comes back."""
    echo = servers.start("echo", "echo")
    lb = make_lb(one_service(BackendSpec("echo", "127.0.0.1", echo.port)))
    payload = patterns.stream(1 << 20, 5)
    with connect(lb.addr()) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        data, how = read_to_end(client, 10)
    assert how == "eof"
    assert data == payload
    assert wait_for(lambda: len(echo.ended()) == 1, 5)
    assert echo.ended()[0].end == "eof"


def test_backend_half_close_client_can_still_send(make_lb: MakeLB, servers: Servers) -> None:
    """The backend shuts its write side first; the client sees EOF and keeps sending."""
    greeter = servers.start("greeter", "greet_shut")
    lb = make_lb(one_service(BackendSpec("greeter", "127.0.0.1", greeter.port)))
    payload = patterns.stream(1 << 20, 6)
    with connect(lb.addr()) as client:
        data, how = read_to_end(client, 5)
        assert (data, how) == (b"greeter\n", "eof")
        assert wait_for(
            lambda: [s["state"] for s in lb.dp.sessions()] == ["half_closed"], 5), \
            lb.dp.sessions()
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        assert wait_for(lambda: len(greeter.ended()) == 1, 10)
        assert wait_for(lambda: lb.dp.sessions() == [], 5), lb.dp.sessions()
    record = greeter.ended()[0]
    assert (record.end, record.bytes_in) == ("eof", len(payload))
    assert record.sha_in == patterns.digest(len(payload), 6)


def test_backend_reset_reaches_client_as_econnreset(make_lb: MakeLB, servers: Servers) -> None:
    echo = servers.start("echo", "echo")
    lb = make_lb(one_service(BackendSpec("echo", "127.0.0.1", echo.port)))
    with connect(lb.addr()) as client:
        client.sendall(b"ping")
        assert recv_exact(client, 4) == b"ping"
        echo.reset_all()
        assert closed_within(client, 5) == "reset"
    assert wait_for(lambda: lb.svc_stats().get("conns_active") == 0, 5)


def test_client_reset_resets_backend_side(make_lb: MakeLB, servers: Servers) -> None:
    echo = servers.start("echo", "echo")
    lb = make_lb(one_service(BackendSpec("echo", "127.0.0.1", echo.port)))
    client = connect(lb.addr())
    client.sendall(b"ping")
    assert recv_exact(client, 4) == b"ping"
    reset_close(client)
    assert wait_for(lambda: len(echo.ended()) == 1, 5)
    assert echo.ended()[0].end == "reset"
    assert wait_for(lambda: lb.svc_stats().get("conns_active") == 0, 5)


@pytest.mark.timeout(60)
def test_slow_reader_backpressure_without_spinning(make_lb: MakeLB, servers: Servers) -> None:
    """A client that stops reading stalls the backend (bounded buffering) and costs no CPU."""
    total = 64 << 20
    backend = servers.start("bulk", "stream", send_total=total, seed=3)
    lb = make_lb(one_service(BackendSpec("bulk", "127.0.0.1", backend.port)))
    with connect(lb.addr()) as client:
        assert recv_exact(client, 1000) == patterns.stream(1000, 3)

        def sent() -> int:
            return backend.records()[0].bytes_out

        last = -1
        while sent() != last:  # wait until every buffer on the way is full
            last = sent()
            time.sleep(0.2)
        cpu = time.process_time()
        time.sleep(0.5)
        spent = time.process_time() - cpu
        assert spent < 0.25, f"{spent:.2f} s of CPU in 0.5 s while the client does not read"
        assert sent() < total // 2, sent()  # the data plane did not buffer without bound
        client.shutdown(socket.SHUT_WR)
        h = hashlib.sha256(patterns.stream(1000, 3))
        rest, how = read_to_end(client, 30)
        h.update(rest)
    assert (how, 1000 + len(rest)) == ("eof", total)
    assert h.hexdigest() == patterns.digest(total, 3)


def fill_until_blocked(sock: socket.socket, limit: int = 256 << 20) -> int:
    """Send without reading until every buffer on the way is full; returns bytes sent."""
    sock.setblocking(False)
    chunk = patterns.stream(1 << 20, 7)
    sent = stalls = 0
    while stalls < 3 and sent < limit:
        try:
            sent += sock.send(chunk)
            stalls = 0
        except BlockingIOError:
            stalls += 1
            time.sleep(0.1)
    sock.setblocking(True)
    return sent


def test_backend_reset_with_data_in_flight(make_lb: MakeLB, servers: Servers) -> None:
    """Buffers full both ways (the client does not read), then the backend resets: the client
    gets the reset, not a FIN. Nothing sends while the client waits, so no send() on the client
    can consume the error that recv() must see."""
    echo = servers.start("echo", "echo")
    lb = make_lb(one_service(BackendSpec("echo", "127.0.0.1", echo.port)))
    with connect(lb.addr()) as client:
        sent = fill_until_blocked(client)
        assert sent < 256 << 20  # backpressure reached the client
        echo.reset_all()
        data, how = read_to_end(client, 10)
    assert how == "reset"
    assert len(data) < sent
    assert wait_for(lambda: lb.dp.sessions() == [], 5)


def test_client_reset_with_data_in_flight(make_lb: MakeLB, servers: Servers) -> None:
    backend = servers.start("bulk", "stream", send_total=256 << 20, seed=8)
    lb = make_lb(one_service(BackendSpec("bulk", "127.0.0.1", backend.port)))
    client = connect(lb.addr())
    recv_exact(client, 1 << 20)  # the stream flows; the client stops reading and resets
    reset_close(client)
    assert wait_for(lambda: len(backend.ended()) == 1, 5)
    assert backend.ended()[0].end == "reset"
    assert backend.ended()[0].bytes_out < 256 << 20
    assert wait_for(lambda: lb.dp.sessions() == [], 5)
