"""Internals of the Python reference data plane that the shared suite cannot see.

The copy fallback (splice(2) refused with EINVAL) and the pipe pool (pipes held only while data
is in flight) exist in the C core too, but are observed differently there
(test_c_internals.py); these tests look inside l4lb.refdp directly.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator

import pytest

from l4lb.refdp import Dataplane
from l4lb.refdp.pipes import Pipe, PipePool

from . import patterns
from .clients import connect, fate, read_to_end, recv_exact, wait_for
from .conftest import LB, SVC, Servers
from .tables import BackendSpec, ServiceSpec


@pytest.fixture
def ref_lb(servers: Servers) -> Iterator[LB]:
    echo = servers.start("echo", "echo")
    lb = LB(Dataplane, 1, "127.0.0.1")
    try:
        lb.dp.start()
        lb.listen(SVC)
        lb.publish([ServiceSpec(SVC, (BackendSpec("echo", "127.0.0.1", echo.port),))])
        yield lb
    finally:
        lb.close()


def test_splice_einval_falls_back_to_copying(ref_lb: LB,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def refuse(*args: object, **kwargs: object) -> int:
        calls.append(args)
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(os, "splice", refuse)
    payload = patterns.stream(3 << 20, 4)
    with connect(ref_lb.addr()) as client:
        client.sendall(payload[:10])
        assert recv_exact(client, 10) == payload[:10]
        client.sendall(payload[10:])
        client.shutdown(socket.SHUT_WR)
        data, how = read_to_end(client, 10)
    assert (how, len(data)) == ("eof", len(payload) - 10)
    assert data == payload[10:]
    assert len(calls) == 2  # one refusal per direction, then recv/send only
    assert ref_lb.dp.splice_fallbacks == 2
    assert wait_for(lambda: ref_lb.svc_stats().get("conns_active") == 0, 5)
    assert ref_lb.svc_stats()["bytes_to_client"] == len(payload)


def test_pipes_are_held_only_while_data_is_in_flight(ref_lb: LB) -> None:
    worker = ref_lb.dp._workers[0]
    with connect(ref_lb.addr()) as client:
        for _ in range(20):
            client.sendall(b"x" * 1000)
            assert recv_exact(client, 1000) == b"x" * 1000
        (session,) = worker.call(lambda: list(worker.sessions))
        assert session.to_backend.pipe is None and session.to_client.pipe is None
        assert worker.pool.created <= 2  # reused from the pool, not one per chunk
    assert ref_lb.dp.splice_fallbacks == 0


def test_no_fd_for_a_pipe_resets_the_session(ref_lb: LB,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(self: PipePool) -> Pipe:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(PipePool, "take", exhausted)
    assert fate(ref_lb.addr(), 2.0) == "reset"
    assert wait_for(lambda: ref_lb.svc_stats().get("accept_errors") == 1, 2)
    assert ref_lb.svc_stats()["conns_active"] == 0
    monkeypatch.undo()
    with connect(ref_lb.addr()) as client:  # the worker survived and relays again
        client.sendall(b"again")
        assert recv_exact(client, 5) == b"again"
