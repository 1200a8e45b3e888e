"""The TCP relay: bytes arrive exact, FIN and RST travel both ways."""

from __future__ import annotations

import socket

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
