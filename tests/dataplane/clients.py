"""Client side of the data-plane tests: connect, read until closed, bulk and many-socket echo.

Everything is bounded in time: every blocking call has a timeout and every loop a deadline.
"""

from __future__ import annotations

import hashlib
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import patterns


def connect(addr: tuple[str, int], source: str | None = None,
            timeout: float = 5.0) -> socket.socket:
    """A blocking client socket connected to addr, optionally bound to a source address."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if source is not None:
            sock.bind((source, 0))
        sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def reset_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets an RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def recv_exact(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    """Exactly n bytes; raises EOFError when the peer closes first."""
    sock.settimeout(timeout)
    parts: list[bytes] = []
    got = 0
    deadline = time.monotonic() + timeout
    while got < n:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        data = sock.recv(min(n - got, 1 << 20))
        if not data:
            raise EOFError(f"closed after {got} of {n} bytes")
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def recv_line(sock: socket.socket, timeout: float = 5.0) -> str:
    """One line without its newline (the backends' name greeting)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        piece = sock.recv(1)
        if not piece:
            raise EOFError(f"closed after {data!r}")
        data += piece
    return data[:-1].decode()


def read_to_end(sock: socket.socket, timeout: float) -> tuple[bytes, str]:
    """Read until the peer closes: (data, "eof" | "reset" | "timeout")."""
    parts: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(parts), "timeout"
        sock.settimeout(left)
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            return b"".join(parts), "timeout"
        except ConnectionResetError:
            return b"".join(parts), "reset"
        if not data:
            return b"".join(parts), "eof"
        parts.append(data)


def closed_within(sock: socket.socket, seconds: float) -> str:
    """How the peer ends the connection within seconds: "eof", "reset" or "open"."""
    _, how = read_to_end(sock, seconds)
    return "open" if how == "timeout" else how


def fate(addr: tuple[str, int], seconds: float, source: str | None = None) -> str:
    """Connect and report how the data plane ends the connection within seconds: "reset",
    "eof" or "open". A reset that arrives before connect() returns also counts as "reset"."""
    try:
        sock = connect(addr, source, timeout=seconds)
    except ConnectionResetError:
        return "reset"
    with sock:
        return closed_within(sock, seconds)


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll pred until it is true or timeout passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@dataclass
class Transfer:
    """Result of a bulk exchange."""

    sent: int  # bytes sent
    received: int  # bytes received
    sha_received: str  # SHA-256 of the bytes received
    end: str  # how the receive side ended: "eof", "reset" or "timeout"
    seconds: float  # wall time of the exchange
    send_error: str = ""  # exception text if sending failed


def exchange(sock: socket.socket, total: int, seed: int, timeout: float,
             shut_when_sent: bool = True) -> Transfer:
    """Send `total` pattern bytes (then FIN) while receiving until the peer closes."""
    start = time.monotonic()
    sent = [0]  # written by the sender thread
    error = [""]

    def send() -> None:
        try:
            for piece in patterns.chunks(total, seed):
                sock.sendall(piece)
                sent[0] += len(piece)
            if shut_when_sent:
                sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            error[0] = repr(exc)

    sock.settimeout(timeout)
    sender = threading.Thread(target=send, name="exchange-send", daemon=True)
    sender.start()
    h = hashlib.sha256()
    received = 0
    end = "timeout"
    deadline = start + timeout
    try:
        while time.monotonic() < deadline:
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                break
            except ConnectionResetError:
                end = "reset"
                break
            if not data:
                end = "eof"
                break
            h.update(data)
            received += len(data)
    finally:
        sender.join(max(0.1, deadline - time.monotonic()))
        if sender.is_alive():  # unblock a sender stuck in sendall, then wait for it
            sock.shutdown(socket.SHUT_RDWR)
            sender.join(5)
    return Transfer(sent[0], received, h.hexdigest(), end, time.monotonic() - start, error[0])


@dataclass
class EchoOutcome:
    """Result of echo_many()."""

    ok: int  # connections whose echo came back complete and equal
    failures: list[str]  # one line per failed connection


@dataclass
class Gate:
    """Pause for echo_many(): every socket stops after half its bytes came back; `halfway` is
    set then, and sending goes on once someone sets `resume`."""

    halfway: threading.Event
    resume: threading.Event


def echo_many(socks: list[socket.socket], size: int, timeout: float,
              seed: int = 0, gate: Gate | None = None) -> EchoOutcome:
    """Socket i sends `size` pattern bytes (seed, offset 7919 * i), then FIN, and must receive
    exactly the same bytes back followed by EOF; all sockets are driven by one selectors loop.
    With a gate, the sockets pause halfway (see Gate)."""
    half = size // 2 if gate is not None else size
    sel = selectors.DefaultSelector()
    out = [patterns.stream(size, seed, offset=7919 * i) for i in range(len(socks))]
    sent = [0] * len(socks)
    got = [bytearray() for _ in socks]
    state = ["open"] * len(socks)  # open -> eof/reset/mismatch
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, i)
    pending = len(socks)
    deadline = time.monotonic() + timeout
    paused = 0  # sockets waiting at the gate
    try:
        while pending and time.monotonic() < deadline:
            if gate is not None and paused == len(socks) and half < size:
                gate.halfway.set()
                if not gate.resume.wait(max(0.0, deadline - time.monotonic())):
                    break
                half = size
                for i, sock in enumerate(socks):
                    if state[i] == "open":
                        sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, i)
            for key, mask in sel.select(max(0.0, deadline - time.monotonic())):
                i = key.data
                sock = socks[i]
                if mask & selectors.EVENT_WRITE and sent[i] >= half:
                    sel.modify(sock, selectors.EVENT_READ, i)  # at the gate: only read
                elif mask & selectors.EVENT_WRITE:
                    try:
                        sent[i] += sock.send(out[i][sent[i]:min(half, sent[i] + 65536)])
                    except BlockingIOError:
                        pass
                    except OSError as exc:
                        state[i] = f"send failed: {exc!r}"
                    if sent[i] >= size or state[i] != "open":
                        if state[i] == "open":
                            sock.shutdown(socket.SHUT_WR)
                        sel.modify(sock, selectors.EVENT_READ, i)
                if mask & selectors.EVENT_READ and state[i] == "open":
                    try:
                        data = sock.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    except ConnectionResetError:
                        data, state[i] = b"", "reset"
                    if data:
                        got[i] += data
                        if len(got[i]) > size:
                            state[i] = "too much data"
                        elif len(got[i]) == half and half < size:
                            paused += 1
                    elif state[i] == "open":
                        state[i] = "eof"
                if state[i] != "open":
                    sel.unregister(sock)
                    pending -= 1
    finally:
        sel.close()
    outcome = EchoOutcome(0, [])
    for i in range(len(socks)):
        if state[i] == "eof" and bytes(got[i]) == out[i]:
            outcome.ok += 1
        else:
            outcome.failures.append(
                f"conn {i}: {state[i]}, sent {sent[i]}, received {len(got[i])} of {size}"
                + (", bytes differ" if len(got[i]) == size else ""))
    return outcome


# --- UDP -------------------------------------------------------------------------------------

UDP_CLIENT_BUFFER = 4 << 20  # SO_RCVBUF / SO_SNDBUF of UDP client sockets
UDP_RECV_MAX = 65535


def udp_socket(host: str, timeout: float | None = 5.0) -> socket.socket:
    """A UDP socket bound to host, ephemeral port, with large buffers (blocking with timeout,
    or nonblocking when timeout is None)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_CLIENT_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_CLIENT_BUFFER)
        sock.bind((host, 0))
        if timeout is None:
            sock.setblocking(False)
        else:
            sock.settimeout(timeout)
    except BaseException:
        sock.close()
        raise
    return sock


def udp_ask(sock: socket.socket, dest: tuple[str, int], payload: bytes,
            timeout: float = 5.0) -> tuple[bytes, tuple[str, int]]:
    """Send one datagram and wait for one back: (data, (source host, source port))."""
    sock.settimeout(timeout)
    sock.sendto(payload, dest)
    data, src = sock.recvfrom(UDP_RECV_MAX)
    return data, (str(src[0]), int(src[1]))


def udp_silent(sock: socket.socket, seconds: float) -> bool:
    """True when nothing arrives on sock for `seconds`."""
    sock.settimeout(seconds)
    try:
        sock.recvfrom(UDP_RECV_MAX)
    except TimeoutError:
        return True
    return False


def echo_trip(addr: tuple[str, int], payload: bytes,
              timeout: float = 10.0) -> tuple[bytes, tuple[str, int]]:
    """Connect, send payload and a FIN (from a thread, so that a large echo cannot block the
    send), read up to the peer's close (which must be a clean EOF); returns what came back and
    the client's own (address, port)."""
    sock = connect(addr)
    try:
        me: tuple[str, int] = sock.getsockname()[:2]

        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        data, how = read_to_end(sock, timeout)
        sender.join(timeout)
        assert how == "eof", (how, len(data))
        return data, me
    finally:
        sock.close()
