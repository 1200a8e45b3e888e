"""Backend servers for the data-plane tests: threads in the test process, loopback only.

BackendServer is one thread with one selectors loop serving any number of connections; what each
connection does depends on the server's mode:
  echo        send back everything received; close after the client's FIN (our FIN follows)
  name        send "<name>\\n" at once, then read and discard until the client's FIN
  greet_shut  send "<name>\\n", then shut our write side at once (half-close from the backend),
              then read (and checksum) until the client's FIN
  stream      send `send_total` bytes of the pattern stream (seed `seed`), then our FIN, while
              reading and checksumming everything the client sends
Every connection leaves a ConnRecord: peer, bytes and SHA-256 of what arrived, and how it ended
("eof", "reset" when the peer reset it, "server_reset" after reset_all()).

RefusingPort is a bound socket that never listens (a connect to it is refused); BlackHole is a
listener whose one-slot accept queue is already full, so the kernel drops new SYNs and a connect
to it times out.

UDP: UdpBackend (echo, name responder, DNS-shaped responder, silent) and UdpRefusingPort (ICMP
port unreachable for every datagram).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import patterns

MODES = ("echo", "name", "greet_shut", "stream")
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
ECHO_BACKLOG = 1 << 20  # echo stops reading while this much waits to be sent back
RECV_SIZE = 256 * 1024


@dataclass
class ConnRecord:
    """What one backend connection saw."""

    peer: tuple[str, int]  # the data plane's address towards us
    bytes_in: int = 0  # bytes received
    bytes_out: int = 0  # bytes sent
    sha_in: str = ""  # SHA-256 of the bytes received, set when the connection ends
    end: str = ""  # "" while open, else "eof", "reset" or "server_reset"
    hasher: Any = field(default_factory=hashlib.sha256, repr=False)


class _Conn:
    """Server-side state of one connection."""

    def __init__(self, sock: socket.socket, record: ConnRecord, out: bytes,
                 stream: Iterator[bytes] | None, shut_when_sent: bool) -> None:
        self.sock = sock
        self.record = record
        self.out = bytearray(out)  # bytes waiting to be sent
        self.stream = stream  # more bytes to send after out (stream mode)
        self.shut_when_sent = shut_when_sent  # send our FIN once everything is sent
        self.shut = False  # our FIN went out
        self.eof = False  # the peer's FIN arrived
        self.mask = 0  # selector events registered


class BackendServer:
    """A backend on 127.0.0.1 or ::1, ephemeral port, served by one thread."""

    def __init__(self, name: str, mode: str = "echo", host: str = "127.0.0.1",
                 send_total: int = 0, seed: int = 0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} not in {MODES}")
        self.name = name
        self.mode = mode
        self.send_total = send_total  # stream mode: bytes to send
        self.seed = seed  # stream mode: pattern seed
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.host = host
        self.port: int = self.listener.getsockname()[1]
        self._lock = threading.Lock()  # guards _records
        self._records: list[ConnRecord] = []
        self._conns: dict[socket.socket, _Conn] = {}  # server thread only
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._requests: list[str] = []  # "reset_all" / "stop", under _lock
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, READ, None)
        self._sel.register(self._wake_r, READ, None)
        self._thread = threading.Thread(target=self._run, name=f"backend-{name}", daemon=True)
        self._thread.start()

    @property
    def addr(self) -> tuple[str, int]:
        return self.host, self.port

    def records(self) -> list[ConnRecord]:
        """Copy of the connection records, in accept order."""
        with self._lock:
            return list(self._records)

    def ended(self) -> list[ConnRecord]:
        """Records of connections that have ended."""
        return [r for r in self.records() if r.end]

    def open_count(self) -> int:
        return sum(1 for r in self.records() if not r.end)

    def reset_all(self) -> None:
        """Reset (RST) every open connection of this server."""
        self._request("reset_all")

    def close(self) -> None:
        """Stop the thread and close every socket."""
        if self._thread.is_alive():
            self._request("stop")
            self._thread.join(10)
            assert not self._thread.is_alive(), f"backend {self.name} thread did not stop"
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()

    def _request(self, what: str) -> None:
        with self._lock:
            self._requests.append(what)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # --- server thread ---

    def _run(self) -> None:
        try:
            while True:
                for key, mask in self._sel.select(1.0):
                    if key.fileobj is self.listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        if self._handle_requests():
                            return
                    else:
                        self._service(key.data, mask)
        finally:
            for conn in list(self._conns.values()):
                self._finish(conn, "server_reset", reset=True)
            self._sel.close()

    def _handle_requests(self) -> bool:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)
        with self._lock:
            requests, self._requests = self._requests, []
        for what in requests:
            if what == "stop":
                return True
            for conn in list(self._conns.values()):
                self._finish(conn, "server_reset", reset=True)
        return False

    def _accept(self) -> None:
        while True:
            try:
                sock, peer = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            record = ConnRecord(peer=(peer[0], peer[1]))
            with self._lock:
                self._records.append(record)
            greeting = f"{self.name}\n".encode() if self.mode in ("name", "greet_shut") else b""
            stream = (patterns.chunks(self.send_total, self.seed) if self.mode == "stream"
                      else None)
            conn = _Conn(sock, record, greeting, stream,
                         shut_when_sent=self.mode in ("greet_shut", "stream"))
            self._conns[sock] = conn
            self._update(conn)

    def _service(self, conn: _Conn, mask: int) -> None:
        if mask & READ:
            self._read(conn)
        if conn.sock in self._conns and mask & WRITE:
            self._write(conn)
        if conn.sock in self._conns:
            self._update(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except (ConnectionResetError, BrokenPipeError):
            self._finish(conn, "reset")
            return
        if not data:
            conn.eof = True
            return
        conn.record.bytes_in += len(data)
        conn.record.hasher.update(data)
        if self.mode == "echo":
            conn.out += data

    def _write(self, conn: _Conn) -> None:
        while True:
            if not conn.out and conn.stream is not None:
                conn.out += next(conn.stream, b"")
                if not conn.out:
                    conn.stream = None
            if not conn.out:
                break
            try:
                n = conn.sock.send(conn.out[:RECV_SIZE])
            except BlockingIOError:
                return
            except (ConnectionResetError, BrokenPipeError):
                self._finish(conn, "reset")
                return
            conn.record.bytes_out += n
            del conn.out[:n]
        if conn.shut_when_sent and not conn.shut:
            conn.shut = True
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)

    def _update(self, conn: _Conn) -> None:
        sending = bool(conn.out) or conn.stream is not None
        if conn.eof and not sending:
            self._finish(conn, "eof")
            return
        mask = 0
        if not conn.eof and len(conn.out) < ECHO_BACKLOG:
            mask |= READ
        if sending or (conn.shut_when_sent and not conn.shut):
            mask |= WRITE
        if mask != conn.mask:
            if conn.mask == 0:
                self._sel.register(conn.sock, mask, conn)
            elif mask == 0:
                self._sel.unregister(conn.sock)
            else:
                self._sel.modify(conn.sock, mask, conn)
            conn.mask = mask

    def _finish(self, conn: _Conn, end: str, reset: bool = False) -> None:
        if conn.mask:
            self._sel.unregister(conn.sock)
            conn.mask = 0
        del self._conns[conn.sock]
        if reset:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.sock.close()
        with self._lock:
            conn.record.sha_in = conn.record.hasher.hexdigest()
            conn.record.end = end


class RefusingPort:
    """A port nobody listens on (kept bound so no one else takes it): connects are refused."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.host = host
        self.port: int = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


class BlackHole:
    """A listener whose accept queue is full: the kernel drops SYNs, connects time out."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(0)  # room for one connection in the accept queue
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.filler = socket.create_connection((host, self.port), timeout=2)
        probe = socket.socket(family, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:  # prove that the hole is black: a second connect must not complete quickly
            probe.connect_ex((host, self.port))
            sel = selectors.DefaultSelector()
            sel.register(probe, WRITE)
            deadline = time.monotonic() + 0.2
            completed = bool(sel.select(max(0.0, deadline - time.monotonic())))
            sel.close()
        finally:
            probe.close()
        if completed:
            self.close()
            raise RuntimeError("BlackHole: a connect completed; the kernel did not drop the SYN")

    def close(self) -> None:
        self.filler.close()
        self.sock.close()


# --- UDP -------------------------------------------------------------------------------------

UDP_MODES = ("echo", "name", "dns", "silent", "oversize", "hold")
UDP_OVERSIZE = 65527  # the largest UDP payload over IPv6 (without jumbograms)
UDP_BUFFER = 4 << 20  # SO_RCVBUF / SO_SNDBUF asked for by UDP test sockets (net.core.*mem_max)
UDP_RECV_MAX = 65535  # larger than any datagram the balancer may pass on
UDP_BATCH = 256  # datagrams a UDP backend handles per readiness before it checks for requests
DNS_HEADER = struct.Struct("!HHHHHH")  # id, flags, qdcount, ancount, nscount, arcount
DNS_QR, DNS_RD, DNS_RA = 0x8000, 0x0100, 0x0080
DNS_ANSWER = struct.Struct("!HHHIH")  # name pointer, type, class, ttl, rdlength (+ 4 bytes)


def raise_buffers(sock: socket.socket, size: int = UDP_BUFFER) -> None:
    """Ask for large socket buffers (the kernel caps them at net.core.rmem_max / wmem_max)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def dns_query(query_id: int, name: str) -> bytes:
    """A DNS-shaped query: header (RD set, one question), the name as labels, type A, class IN."""
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return DNS_HEADER.pack(query_id, DNS_RD, 1, 0, 0, 0) + labels + struct.pack("!HH", 1, 1)


def dns_answer(query: bytes, address: bytes) -> bytes | None:
    """The reply of the "dns" backend: same id and question, QR and RA set, one A record with
    `address`; None for anything that is not a one-question query."""
    if len(query) < DNS_HEADER.size + 5:
        return None
    qid, flags, qdcount, ancount, _, _ = DNS_HEADER.unpack_from(query)
    if flags & DNS_QR or qdcount != 1 or ancount != 0:
        return None
    header = DNS_HEADER.pack(qid, DNS_QR | DNS_RA | (flags & DNS_RD), 1, 1, 0, 0)
    answer = DNS_ANSWER.pack(0xC000 | DNS_HEADER.size, 1, 1, 60, 4) + address
    return header + query[DNS_HEADER.size:] + answer


def dns_parse_answer(reply: bytes) -> tuple[int, int, bytes]:
    """(query id, flags, the A record's 4 address bytes) of a "dns" backend's reply."""
    qid, flags, _, ancount, _, _ = DNS_HEADER.unpack_from(reply)
    if ancount != 1 or len(reply) < DNS_HEADER.size + DNS_ANSWER.size + 4:
        raise ValueError(f"not a one-answer reply: {reply!r}")
    return qid, flags, reply[-4:]


class UdpBackend:
    """A UDP backend on 127.0.0.1 or ::1, ephemeral port, served by one thread.

    Modes: "echo" sends every datagram back unchanged; "name" answers `<name>\\n<datagram>`;
    "dns" answers DNS-shaped queries (dns_answer) with the A record 192.0.2.<index>; "silent"
    never answers; "oversize" (IPv6 only) answers UDP_OVERSIZE bytes, more than the balancer
    takes, then the datagram itself; "hold" keeps every datagram until release() echoes them.
    It counts what arrived per source (the balancer's upstream socket of one flow) and, when
    keep_digests is set, the SHA-256 of every datagram in arrival order.
    """

    def __init__(self, name: str, mode: str = "echo", host: str = "127.0.0.1",
                 index: int = 1, keep_digests: bool = False) -> None:
        if mode not in UDP_MODES:
            raise ValueError(f"mode {mode!r} not in {UDP_MODES}")
        self.name = name
        self.mode = mode
        self.host = host
        self.index = index  # dns mode: the answer is 192.0.2.<index>
        self.keep_digests = keep_digests
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        raise_buffers(self.sock)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self._lock = threading.Lock()  # guards the counts below
        self._sources: collections.Counter[tuple[str, int]] = collections.Counter()
        self._bytes_in = 0
        self._sent = 0  # datagrams answered
        self._send_errors = 0  # answers the kernel refused (full buffer)
        self._digests: list[str] = []
        self._held: list[tuple[bytes, Any]] = []  # hold mode: (datagram, source) not answered
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, READ)
        self._sel.register(self._wake_r, READ)
        self._thread = threading.Thread(target=self._run, name=f"udp-backend-{name}",
                                        daemon=True)
        self._thread.start()

    @property
    def addr(self) -> tuple[str, int]:
        return self.host, self.port

    def received(self) -> int:
        """Datagrams received so far."""
        with self._lock:
            return sum(self._sources.values())

    def sources(self) -> collections.Counter[tuple[str, int]]:
        """Datagrams received per source address (one source is one flow of the balancer)."""
        with self._lock:
            return collections.Counter(self._sources)

    def bytes_in(self) -> int:
        with self._lock:
            return self._bytes_in

    def sent(self) -> tuple[int, int]:
        """(answers sent, answers the kernel refused)."""
        with self._lock:
            return self._sent, self._send_errors

    def digests(self) -> list[str]:
        """SHA-256 of every datagram received, in order (keep_digests only)."""
        with self._lock:
            return list(self._digests)

    def release(self) -> int:
        """Hold mode: echo every held datagram now; returns how many."""
        with self._lock:
            held, self._held = self._held, []
        for data, peer in held:
            self.sock.sendto(data, peer)
        return len(held)

    def close(self) -> None:
        """Stop the thread and close every socket."""
        if self._thread.is_alive():
            self._stop.set()
            self._wake_w.send(b"\0")
            self._thread.join(10)
            assert not self._thread.is_alive(), f"UDP backend {self.name} did not stop"
        self._sel.close()
        for sock in (self.sock, self._wake_r, self._wake_w):
            sock.close()

    def _run(self) -> None:
        buf = bytearray(UDP_RECV_MAX)
        view = memoryview(buf)
        while not self._stop.is_set():
            for key, _ in self._sel.select(1.0):
                if key.fileobj is self.sock:
                    self._drain(view)

    def _drain(self, view: memoryview) -> None:
        for _ in range(UDP_BATCH):
            try:
                size, peer = self.sock.recvfrom_into(view)
            except BlockingIOError:
                return
            except ConnectionRefusedError:  # a reply we sent met a closed port earlier
                continue
            data = bytes(view[:size])
            with self._lock:  # recorded before the answer leaves: a client that has its
                self._sources[(peer[0], peer[1])] += 1  # answer sees the record too
                self._bytes_in += size
                if self.keep_digests:
                    self._digests.append(hashlib.sha256(data).hexdigest())
            answer = self._answer(data, peer)
            if answer is None:
                continue
            try:
                self.sock.sendto(answer, peer)
            except OSError:
                with self._lock:
                    self._send_errors += 1
                continue
            with self._lock:
                self._sent += 1

    def _answer(self, data: bytes, peer: Any) -> bytes | None:
        if self.mode == "echo":
            return data
        if self.mode == "name":
            return self.name.encode() + b"\n" + data
        if self.mode == "dns":
            return dns_answer(data, bytes([192, 0, 2, self.index & 0xFF]))
        if self.mode == "hold":
            with self._lock:
                self._held.append((data, peer))
            return None
        if self.mode == "oversize":
            with contextlib.suppress(OSError):
                self.sock.sendto(b"\xa5" * UDP_OVERSIZE, peer)
            return data
        return None


class UdpRefusingPort:
    """A UDP port that refuses: its socket is bound but connected elsewhere, so a datagram from
    anyone else finds no socket and the kernel answers ICMP port unreachable."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.connect((host, 9))  # the discard port: we never send there
        self.host = host
        self.port: int = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()
