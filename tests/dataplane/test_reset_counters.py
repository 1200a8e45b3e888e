"""reset_counters(): an id that left the table is zeroed only once nothing counts on it any more."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from .clients import connect, recv_exact, udp_ask, udp_socket, wait_for
from .conftest import LB, SVC, MakeLB, Servers
from .tables import BackendSpec, ServiceSpec

HOST = "127.0.0.1"
OTHER = 2  # a second service id


def _talk(client: socket.socket, payload: bytes = b"hello") -> None:
    client.sendall(payload)
    assert recv_exact(client, len(payload)) == payload


def _be(lb: LB, backend_id: int) -> dict[str, int]:
    found: dict[str, int] = lb.dp.stats()["backends"].get(backend_id, {})
    return found


def test_backend_is_zeroed_only_after_it_left_the_table_and_its_sessions_ended(
        make_lb: MakeLB, servers: Servers) -> None:
    a, b = servers.start("a", "echo"), servers.start("b", "echo")
    spec_a = BackendSpec("a", HOST, a.port, backend_id=0)
    spec_b = BackendSpec("b", HOST, b.port, backend_id=1)
    lb = make_lb([ServiceSpec(SVC, (spec_a, spec_b))], workers=2)
    with connect(lb.addr()) as c1, connect(lb.addr()) as c2:
        _talk(c1)
        _talk(c2)  # round robin: one session on each backend
        assert wait_for(lambda: _be(lb, 0).get("conns_active") == 1, 5)
        assert lb.dp.reset_counters(backend_id=0) is False  # still in the live table

        lb.publish([ServiceSpec(SVC, (spec_b,))])  # a leaves; its session stays open
        mine = c1 if any(s["backend_id"] == 0 and s["client"][1] == c1.getsockname()[1]
                         for s in lb.dp.sessions()) else c2
        assert lb.dp.reset_counters(backend_id=0) is False  # a session still counts on it
        assert _be(lb, 0)["conns_total"] == 1 and _be(lb, 0)["bytes_to_backend"] == 5
        _talk(mine, b"still relayed")  # the refusal changed nothing for the session
        mine.close()
        assert wait_for(lambda: _be(lb, 0).get("conns_active") == 0, 5)

        assert lb.dp.reset_counters(backend_id=0) is True
        assert all(v == 0 for v in _be(lb, 0).values())
        assert _be(lb, 1)["conns_active"] == 1  # the other backend is untouched
        assert _be(lb, 1)["conns_total"] == 1

        # the id can now go to a new backend, which starts from 0
        c = servers.start("c", "echo")
        lb.publish([ServiceSpec(SVC, (BackendSpec("c", HOST, c.port, backend_id=0), spec_b))])
        other = c2 if mine is c1 else c1
        with connect(lb.addr()) as c3, connect(lb.addr()) as c4:
            _talk(c3)
            _talk(c4)
            assert wait_for(lambda: _be(lb, 0).get("conns_total") == 1, 5)
            assert _be(lb, 0)["bytes_to_backend"] == 5
        _talk(other)


def test_udp_flows_keep_a_backend_busy(make_lb: MakeLB, servers: Servers) -> None:
    a, b = servers.udp("a"), servers.udp("b")
    spec_a = BackendSpec("a", HOST, a.port, backend_id=0)
    spec_b = BackendSpec("b", HOST, b.port, backend_id=1)

    def svc(*backends: BackendSpec) -> ServiceSpec:
        return ServiceSpec(SVC, backends, protocol="udp", idle_timeout_ms=60_000)

    lb = make_lb([svc(spec_a)], workers=1)
    with udp_socket(HOST) as client:
        assert udp_ask(client, lb.addr(), b"one")[0] == b"one"
        assert wait_for(lambda: _be(lb, 0).get("flows_active") == 1, 5)
        lb.publish([svc(spec_b)])
        assert lb.dp.reset_counters(backend_id=0) is False  # its flow is still mapped
        assert lb.dp.close_backend_sessions(0) == 1
        assert wait_for(lambda: _be(lb, 0).get("flows_active") == 0, 5)
        assert lb.dp.reset_counters(backend_id=0) is True
        assert all(v == 0 for v in _be(lb, 0).values())


def test_service_is_busy_while_a_listener_of_it_is_registered(make_lb: MakeLB,
                                                              servers: Servers) -> None:
    a = servers.start("a", "echo")
    spec = BackendSpec("a", HOST, a.port, backend_id=0)
    spec2 = BackendSpec("a2", HOST, a.port, backend_id=1)
    lb = make_lb([ServiceSpec(SVC, (spec,)), ServiceSpec(OTHER, (spec2,))], workers=2)
    with connect(lb.addr(OTHER)) as client:
        _talk(client)
    assert wait_for(lambda: lb.svc_stats(OTHER).get("conns_active") == 0, 5)
    assert lb.svc_stats(OTHER)["conns_total"] == 1
    lb.publish([ServiceSpec(SVC, (spec,))])
    assert lb.dp.reset_counters(service_id=OTHER) is False  # its listeners are still there
    for sock in lb.listeners.pop(OTHER):
        lb.dp.remove_listener(sock.fileno())
        sock.close()
    assert lb.dp.reset_counters(service_id=OTHER) is True
    assert all(v == 0 for v in lb.svc_stats(OTHER).values())
    assert lb.svc_stats(SVC) == {} or lb.svc_stats(SVC).get("conns_total", 0) == 0


@pytest.mark.parametrize("kwargs, error", [
    ({}, TypeError), ({"service_id": 1, "backend_id": 1}, TypeError),
    ({"service_id": 1024}, ValueError), ({"backend_id": 65536}, ValueError),
    ({"backend_id": -1}, ValueError),
])
def test_arguments_are_checked(make_lb: MakeLB, servers: Servers, kwargs: dict[str, Any],
                               error: type[Exception]) -> None:
    a = servers.start("a", "echo")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("a", HOST, a.port),))], workers=1)
    with pytest.raises(error):
        lb.dp.reset_counters(**kwargs)
