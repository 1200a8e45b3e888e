"""Edge cases of the TCP relay's syscall savings: data+FIN together, first blocked write, NODELAY.

The C relay (src_ext/core/relay_tcp.c) takes a short read on an EPOLLRDHUP event as the last data
and sends it with MSG_MORE so our FIN joins it; adds EPOLLOUT on a client socket only when a write
to it first blocks; and sets TCP_NODELAY once on the listener (inherited by accepted sockets) and
per backend socket. These tests check the outside view of each, against both data planes where
the behaviour is promised by both:
  1. N bytes followed at once by FIN (in one segment when corked) arrive exactly, then EOF, in
     both directions, and a half-closed session still carries the reply the other way;
  2. a client (or backend) that does not read until every buffer on the way is full, then reads
     everything, gets every byte in order and nothing stalls;
  3. small request/response round trips are not held back by Nagle + delayed ACK.
Backends that must act at a precise moment are scripted here (ScriptedBackend): one thread per
backend, one connection at a time, a script function per connection.
"""

from __future__ import annotations

import hashlib
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from . import patterns
from .clients import read_to_end, recv_exact, wait_for
from .conftest import SVC, MakeLB, Servers
from .tables import BackendSpec, ServiceSpec

SIZES = (1, 1000, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 200 * 1024)
FIN_STYLES = ("corked", "plain")  # corked: MSG_MORE, so the FIN leaves in the data's segment
SLOW_TOTAL = 32 << 20  # bytes of the slow-reader tests: more than every buffer on the way holds
SMALL_RCVBUF = 4096  # SO_RCVBUF of the slow reader (the kernel doubles it)
ROUND_TRIPS = 200  # request/response pairs of the NODELAY tests
ROUND_TRIP_BOUND = 2.0  # seconds; Nagle + 40 ms delayed ACK per round trip would need 8 s
STALL_QUIET = 0.15  # a sender whose count has not moved for this long is blocked
STALL_BOUND = 10.0  # seconds a sender may take to fill every buffer

Script = Callable[[socket.socket], None]


def one_service(port: int) -> list[ServiceSpec]:
    return [ServiceSpec(SVC, (BackendSpec("b", "127.0.0.1", port),))]


class ScriptedBackend:
    """A backend on 127.0.0.1 that runs `script(sock)` on each connection it accepts, one at a
    time, in its own thread; the accepted socket is blocking with a timeout and closed after the
    script. Errors the script raises are kept in `errors`; `served` counts finished scripts."""

    def __init__(self, script: Script, rcvbuf: int = 0) -> None:
        self.script = script
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:  # accepted sockets inherit it (and a small window is announced from the SYN)
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self.errors: list[str] = []
        self.served = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scripted-backend", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            with sock:
                sock.settimeout(15)
                try:
                    self.script(sock)
                except Exception as exc:  # reported by the test through `errors`
                    self.errors.append(repr(exc))
            self.served += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "scripted backend did not stop"
        self.listener.close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedBackend]]:
    made: list[ScriptedBackend] = []

    def make(script: Script, rcvbuf: int = 0) -> ScriptedBackend:
        backend = ScriptedBackend(script, rcvbuf)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def client_socket(addr: tuple[str, int], rcvbuf: int = 0, nodelay: bool = False,
                  timeout: float = 10.0) -> socket.socket:
    """A blocking client connected to addr; rcvbuf is set before connect (window scaling)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def send_then_fin(sock: socket.socket, data: bytes, style: str) -> None:
    """Send data, then FIN; corked puts the FIN into the data's last segment."""
    sock.sendall(data, socket.MSG_MORE if style == "corked" else 0)
    sock.shutdown(socket.SHUT_WR)


def read_all(sock: socket.socket, timeout: float,
             h: Any = None) -> tuple[int, str, str]:
    """Read until EOF: (bytes, SHA-256, "eof" | "reset" | "timeout"); h, when given, is the
    hash object to continue (it already holds what came before)."""
    h = hashlib.sha256() if h is None else h
    got = 0
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return got, h.hexdigest(), "timeout"
        sock.settimeout(left)
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            return got, h.hexdigest(), "timeout"
        except ConnectionResetError:
            return got, h.hexdigest(), "reset"
        if not data:
            return got, h.hexdigest(), "eof"
        h.update(data)
        got += len(data)


def wait_stalled(count: Callable[[], int], total: int) -> int:
    """Wait until count() stops moving (STALL_QUIET) or reaches total; returns the count."""
    deadline = time.monotonic() + STALL_BOUND
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline and last < total:
        time.sleep(0.01)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= STALL_QUIET:
            break
    return last


# --- 1. data and FIN together --------------------------------------------------------------


@pytest.mark.parametrize("style", FIN_STYLES)
@pytest.mark.parametrize("size", SIZES)
def test_backend_data_then_close_arrives_whole(make_lb: MakeLB, scripted: Any, size: int,
                                               style: str) -> None:
    """The backend sends N bytes and closes at once: the client gets exactly N bytes, then EOF."""
    payload = patterns.stream(size, 11)

    def script(sock: socket.socket) -> None:
        sock.sendall(payload, socket.MSG_MORE if style == "corked" else 0)
        sock.close()  # close() sends the FIN; corked, it merges into the unsent tail

    backend = scripted(script)
    lb = make_lb(one_service(backend.port))
    with client_socket(lb.addr()) as client:
        data, how = read_to_end(client, 10)
    assert (len(data), how) == (size, "eof")
    assert data == payload
    assert backend.errors == []
    assert wait_for(lambda: lb.svc_stats().get("conns_active") == 0, 5), lb.svc_stats()
    assert lb.svc_stats()["bytes_to_client"] == size


@pytest.mark.parametrize("size", (1, 16 * 1024, 16 * 1024 + 1, 200 * 1024))
def test_backend_data_and_fin_then_client_still_sends(make_lb: MakeLB, scripted: Any,
                                                      size: int) -> None:
    """The backend sends N bytes with its FIN in the same segment but keeps reading (a
    half-close): the client gets N bytes and EOF, then sends its own data, which the backend
    still receives, followed by the client's FIN."""
    payload = patterns.stream(size, 15)
    question = patterns.stream(3000, 16)
    seen: list[tuple[int, str, str]] = []

    def script(sock: socket.socket) -> None:
        send_then_fin(sock, payload, "corked")
        seen.append(read_all(sock, 10))

    backend = scripted(script)
    lb = make_lb(one_service(backend.port))
    with client_socket(lb.addr()) as client:
        data, how = read_to_end(client, 10)
        assert (len(data), how) == (size, "eof")
        assert data == payload
        client.sendall(question)
        client.shutdown(socket.SHUT_WR)
        assert wait_for(lambda: backend.served == 1, 5)
        assert client.recv(1) == b""  # still EOF, no reset
    assert backend.errors == []
    assert seen == [(len(question), hashlib.sha256(question).hexdigest(), "eof")]
    assert wait_for(lambda: lb.svc_stats().get("conns_active") == 0, 5), lb.svc_stats()


@pytest.mark.parametrize("style", FIN_STYLES)
@pytest.mark.parametrize("size", SIZES)
def test_client_data_then_fin_and_reply_after_it(make_lb: MakeLB, scripted: Any, size: int,
                                                 style: str) -> None:
    """The client sends N bytes then SHUT_WR: the backend gets exactly N bytes, then EOF, and its
    reply, written only after that EOF, still reaches the half-closed client."""
    payload = patterns.stream(size, 12)
    seen: list[tuple[int, str, str]] = []

    def script(sock: socket.socket) -> None:
        got, sha, how = read_all(sock, 10)
        seen.append((got, sha, how))
        sock.sendall(f"{got} {sha}\n".encode())
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        assert sock.recv(1) == b""  # the relay passes our FIN on and closes

    backend = scripted(script)
    lb = make_lb(one_service(backend.port))
    expected = hashlib.sha256(payload).hexdigest()
    with client_socket(lb.addr()) as client:
        send_then_fin(client, payload, style)
        reply, how = read_to_end(client, 10)
    assert seen == [(size, expected, "eof")]
    assert (reply, how) == (f"{size} {expected}\n".encode(), "eof")
    assert wait_for(lambda: backend.served == 1, 5)
    assert backend.errors == []
    assert wait_for(lambda: lb.svc_stats().get("conns_active") == 0, 5), lb.svc_stats()
    stats = lb.svc_stats()
    assert (stats["bytes_to_backend"], stats["bytes_to_client"]) == (size, len(reply))


# --- 2. the first blocked write ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_slow_client_first_blocked_write_then_everything(make_lb: MakeLB,
                                                         servers: Servers) -> None:
    """The backend streams SLOW_TOTAL bytes while the client (small SO_RCVBUF) does not read:
    the relay's writes to the client block. The client then reads in three stages, letting the
    buffers fill again between them (each stage blocks the relay's writes anew), and finally
    everything: all bytes arrive in order and the stream ends with EOF in bounded time."""
    backend = servers.start("bulk", "stream", send_total=SLOW_TOTAL, seed=13)
    lb = make_lb(one_service(backend.port))
    with client_socket(lb.addr(), rcvbuf=SMALL_RCVBUF) as client:
        assert wait_for(lambda: len(backend.records()) == 1, 5)

        def sent() -> int:
            return backend.records()[0].bytes_out

        h = hashlib.sha256()
        got = 0
        for stage in range(3):
            stalled = wait_stalled(sent, SLOW_TOTAL)
            assert stalled < SLOW_TOTAL, f"stage {stage}: the backend never blocked"
            piece = recv_exact(client, 1 << 20, timeout=10)
            h.update(piece)
            got += len(piece)
        start = time.monotonic()
        rest, sha, how = read_all(client, 20, h)
        took = time.monotonic() - start
    assert (how, got + rest) == ("eof", SLOW_TOTAL), f"{got + rest} bytes, {how}"
    assert sha == patterns.digest(SLOW_TOTAL, 13)
    assert took < 15, f"draining took {took:.1f} s"
    assert wait_for(lambda: lb.svc_stats().get("conns_active") == 0, 5), lb.svc_stats()


@pytest.mark.timeout(60)
def test_slow_backend_blocked_writes_then_everything(make_lb: MakeLB, scripted: Any) -> None:
    """The client sends SLOW_TOTAL bytes while the backend (small SO_RCVBUF) does not read until
    the client's sends have blocked; then the backend reads everything: all bytes in order, EOF,
    and the backend's FIN comes back to the client."""
    gate = threading.Event()
    seen: list[tuple[int, str, str]] = []

    def script(sock: socket.socket) -> None:
        if not gate.wait(STALL_BOUND + 10):
            raise TimeoutError("gate never opened")
        seen.append(read_all(sock, 20))

    backend = scripted(script, rcvbuf=SMALL_RCVBUF)
    lb = make_lb(one_service(backend.port))
    sent = [0]
    error: list[str] = []
    with client_socket(lb.addr(), timeout=30) as client:

        def send() -> None:
            try:
                for piece in patterns.chunks(SLOW_TOTAL, 14, size=64 * 1024):
                    client.sendall(piece)
                    sent[0] += len(piece)
                client.shutdown(socket.SHUT_WR)
            except OSError as exc:
                error.append(repr(exc))

        sender = threading.Thread(target=send, name="slow-backend-sender", daemon=True)
        sender.start()
        try:
            stalled = wait_stalled(lambda: sent[0], SLOW_TOTAL)
            gate.set()
            sender.join(30)
            alive = sender.is_alive()
            if alive:  # unblock the sender before failing
                client.shutdown(socket.SHUT_RDWR)
                sender.join(5)
        finally:
            gate.set()
        assert not alive, f"sender stuck after {sent[0]} bytes"
        assert stalled < SLOW_TOTAL, "the client's sends never blocked"
        data, how = read_to_end(client, 10)
    assert error == []
    assert (data, how) == (b"", "eof")
    assert wait_for(lambda: backend.served == 1, 5)
    assert backend.errors == []
    assert seen == [(SLOW_TOTAL, patterns.digest(SLOW_TOTAL, 14), "eof")]


# --- 3. TCP_NODELAY --------------------------------------------------------------------------


def socket_fds_of(pairs: set[tuple[tuple[str, int], tuple[str, int]]]) -> dict[
        tuple[tuple[str, int], tuple[str, int]], int]:
    """TCP_NODELAY of the sockets of this process whose (local, peer) address is in pairs (the
    C data plane runs in-process, so its sockets are ours to inspect)."""
    found: dict[tuple[tuple[str, int], tuple[str, int]], int] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            dup = os.dup(int(name))
        except OSError:  # closed meanwhile
            continue
        with socket.socket(fileno=dup) as sock:
            if sock.type != socket.SOCK_STREAM or sock.family != socket.AF_INET:
                continue
            try:
                key = (sock.getsockname(), sock.getpeername())
            except OSError:  # a listener
                continue
            if key in pairs:
                found[key] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    return found


@pytest.mark.parametrize("dp_impl", ["c"], indirect=True)
def test_c_sets_nodelay_on_listener_client_and_backend(make_lb: MakeLB, scripted: Any) -> None:
    """C only: TCP_NODELAY on the listener after add_listener, and on the relay's two sockets of
    a session (the accepted client socket and the backend socket)."""
    peers: queue.Queue[tuple[str, int]] = queue.Queue()
    release = threading.Event()

    def script(sock: socket.socket) -> None:
        peers.put(sock.getpeername())
        release.wait(10)

    backend = scripted(script)
    lb = make_lb(one_service(backend.port))
    for listener in lb.listeners[SVC]:
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    try:
        with client_socket(lb.addr()) as client:
            backend_side = peers.get(timeout=5)  # the relay's backend socket's address
            client_side = (lb.addr(), client.getsockname())
            to_backend = (backend_side, ("127.0.0.1", backend.port))
            found = socket_fds_of({client_side, to_backend})
            assert set(found) == {client_side, to_backend}, found
            assert found[client_side] != 0, "accepted client socket lacks TCP_NODELAY"
            assert found[to_backend] != 0, "backend socket lacks TCP_NODELAY"
    finally:
        release.set()


def test_small_round_trips_are_quick(make_lb: MakeLB, servers: Servers) -> None:
    """ROUND_TRIPS request/response pairs of 10 bytes on one connection through an echo. Each
    message is one write answered before the next, so every segment is acknowledged by the
    reply and Nagle never holds one back: this bounds the latency of the relay's wake-ups, and
    passes without TCP_NODELAY too (the next test is the one that needs it)."""
    echo = servers.start("echo", "echo")
    lb = make_lb(one_service(echo.port))
    with client_socket(lb.addr(), nodelay=True) as client:
        start = time.monotonic()
        for i in range(ROUND_TRIPS):
            message = f"ping {i:05d}".encode()
            client.sendall(message)
            assert recv_exact(client, len(message)) == message
        took = time.monotonic() - start
    print(f"{ROUND_TRIPS} round trips in {took:.3f} s")
    assert took < ROUND_TRIP_BOUND, f"{ROUND_TRIPS} round trips took {took:.2f} s"


def test_split_small_messages_are_not_held_by_nagle(make_lb: MakeLB, scripted: Any) -> None:
    """Each request and each response is written in two 5-byte halves, the second only once the
    peer has read the first, so the relay always sends the second half while the first is
    unacknowledged (the receiver delays its ACK, waiting for the whole message). With Nagle on
    either relay socket every round trip would wait for the delayed ACK (40 ms)."""
    got_first: queue.Queue[int] = queue.Queue()  # backend: read the request's first half
    read_first: queue.Queue[int] = queue.Queue()  # client: read the response's first half

    def script(sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(ROUND_TRIPS):
            try:
                first = recv_exact(sock, 5)
            except EOFError:  # the client gave up early (it was too slow)
                return
            got_first.put(i)
            request = first + recv_exact(sock, 5)
            sock.sendall(request[:5])
            if read_first.get(timeout=5) != i:
                raise AssertionError(f"out of step at {i}")
            sock.sendall(request[5:])
        assert sock.recv(1) == b""

    backend = scripted(script)
    lb = make_lb(one_service(backend.port))
    slow = 0
    with client_socket(lb.addr(), nodelay=True) as client:
        start = time.monotonic()
        for i in range(ROUND_TRIPS):
            began = time.monotonic()
            message = f"pong {i:05d}".encode()
            client.sendall(message[:5])
            assert got_first.get(timeout=5) == i
            client.sendall(message[5:])
            assert recv_exact(client, 5) == message[:5]
            read_first.put(i)
            assert recv_exact(client, 5) == message[5:]
            slow += time.monotonic() - began > 0.03
            if time.monotonic() - start > ROUND_TRIP_BOUND:
                break  # failed already; do not wait out 40 ms per round trip
        took = time.monotonic() - start
        client.shutdown(socket.SHUT_WR)
        assert wait_for(lambda: backend.served == 1, 5)
    print(f"{i + 1} split round trips in {took:.3f} s, {slow} over 30 ms")
    assert took < ROUND_TRIP_BOUND, f"{i + 1} round trips took {took:.2f} s ({slow} slow)"
    assert backend.errors == []
