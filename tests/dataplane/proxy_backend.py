"""A test backend that expects a PROXY protocol header, parsed strictly and independently.

The parser below is written from HAProxy's proxy-protocol.txt, not from l4lb.proxyproto, so a
header that both of l4lb's builders get wrong in the same way still fails here. It accepts
exactly one header per connection, of the version the backend was told to expect, and rejects
anything the specification forbids (a missing CRLF within 107 bytes, a bad signature, addresses
that do not parse in the stated family, ports with leading zeros, trailing junk in v2's
address block). After the header the backend echoes (or greets first, then echoes) and keeps
what it received per connection.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from .fast_open_env import FoBackend

V2_SIG = bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])
GREETING = b"220 ready\r\n"  # what a "greet" backend sends once it has read the header


class HeaderError(ValueError):
    """The bytes are not a valid PROXY protocol header."""


@dataclass(frozen=True)
class Header:
    """One parsed header."""

    version: int  # 1 or 2
    command: str  # "PROXY" or "LOCAL" (v2), "PROXY" (v1)
    family: str  # "TCP4", "TCP6" or "UNKNOWN"
    src: tuple[str, int] | None  # (address, port) of the client; None for UNKNOWN / LOCAL
    dst: tuple[str, int] | None  # (address, port) it connected to


def _port(text: str) -> int:
    if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise HeaderError(f"bad port {text!r}")
    return int(text)


def parse_v1(line: bytes) -> Header:
    """A version 1 line, CRLF included."""
    if len(line) > 107 or not line.endswith(b"\r\n"):
        raise HeaderError(f"v1 line too long or without CRLF: {line!r}")
    parts = line[:-2].decode("ascii").split(" ")
    if parts[0] != "PROXY" or len(parts) < 2:
        raise HeaderError(f"v1 line does not start with PROXY: {line!r}")
    if parts[1] == "UNKNOWN":
        return Header(1, "PROXY", "UNKNOWN", None, None)
    if parts[1] not in ("TCP4", "TCP6") or len(parts) != 6:
        raise HeaderError(f"v1 line malformed: {line!r}")
    family = socket.AF_INET if parts[1] == "TCP4" else socket.AF_INET6
    for addr in parts[2:4]:
        try:
            socket.inet_pton(family, addr)
        except OSError:
            raise HeaderError(f"v1 address {addr!r} is not {parts[1]}") from None
    return Header(1, "PROXY", parts[1], (parts[2], _port(parts[4])), (parts[3], _port(parts[5])))


def parse_v2(head: bytes, body: bytes) -> Header:
    """A version 2 header: its 16 fixed bytes and the body their length announces."""
    if head[:12] != V2_SIG:
        raise HeaderError(f"v2 signature wrong: {head[:12]!r}")
    ver_cmd, fam, length = struct.unpack("!BBH", head[12:16])
    if ver_cmd >> 4 != 2 or ver_cmd & 0xF not in (0, 1) or length != len(body):
        raise HeaderError(f"v2 version/command/length wrong: {head[12:16]!r}")
    command = "LOCAL" if ver_cmd & 0xF == 0 else "PROXY"
    if fam == 0x00:
        return Header(2, command, "UNKNOWN", None, None)
    if fam == 0x11 and length == 12:
        a, b = (str(ipaddress.IPv4Address(body[i:i + 4])) for i in (0, 4))
        sport, dport = struct.unpack("!HH", body[8:12])
        return Header(2, command, "TCP4", (a, sport), (b, dport))
    if fam == 0x21 and length == 36:
        a, b = (str(ipaddress.IPv6Address(body[i:i + 16])) for i in (0, 16))
        sport, dport = struct.unpack("!HH", body[32:36])
        return Header(2, command, "TCP6", (a, sport), (b, dport))
    raise HeaderError(f"v2 family {fam:#x} with length {length} is not TCP over IPv4/IPv6 "
                      "without TLVs")


def read_header(conn: socket.socket, version: int) -> tuple[Header, bytes]:
    """Read one header of `version` from conn; returns it and the bytes after it."""
    buf = b""
    if version == 1:
        while b"\r\n" not in buf:
            if len(buf) > 107:
                raise HeaderError(f"no CRLF within 107 bytes: {buf!r}")
            chunk = conn.recv(256)
            if not chunk:
                raise HeaderError(f"EOF inside the header: {buf!r}")
            buf += chunk
        end = buf.index(b"\r\n") + 2
        return parse_v1(buf[:end]), buf[end:]
    while len(buf) < 16:
        chunk = conn.recv(256)
        if not chunk:
            raise HeaderError(f"EOF inside the header: {buf!r}")
        buf += chunk
    length = struct.unpack("!H", buf[14:16])[0]
    while len(buf) < 16 + length:
        chunk = conn.recv(256)
        if not chunk:
            raise HeaderError(f"EOF inside the header: {buf!r}")
        buf += chunk
    return parse_v2(buf[:16], buf[16:16 + length]), buf[16 + length:]


@dataclass
class Conn:
    """What one finished connection brought: its header (or the parse error) and payload."""

    header: Header | None
    error: str
    payload: bytes


class ProxyBackend(FoBackend):
    """A loopback TCP backend expecting PROXY protocol `version` on every connection.

    mode "echo": echo what follows the header, close after the client's FIN; "greet": send
    GREETING once the header is read (a server-speaks-first protocol that waits for the
    header, as Postfix does), then echo. A connection whose header does not parse is closed at
    once, and the error kept. Accepting and closing are FoBackend's (fast_open_env.py)."""

    def __init__(self, version: int, mode: str = "echo", host: str = "127.0.0.1",
                 fastopen: bool = False) -> None:
        self.version = version
        self._done: list[Conn] = []  # set before the acceptor thread starts
        super().__init__(mode, fastopen=fastopen, host=host)

    def done(self) -> list[Conn]:
        """The finished connections, in the order they finished."""
        with self._lock:
            return list(self._done)

    def _serve(self, conn: socket.socket) -> None:
        header: Header | None = None
        error = ""
        got: list[bytes] = []
        conn.settimeout(10.0)
        try:
            header, rest = read_header(conn, self.version)
            if self.mode == "greet":
                conn.sendall(GREETING)
            if rest:
                got.append(rest)
                conn.sendall(rest)
            while data := conn.recv(1 << 16):
                got.append(data)
                conn.sendall(data)
        except (HeaderError, UnicodeDecodeError, ValueError) as exc:
            error = str(exc)
        except OSError as exc:
            error = f"socket: {exc}"
        finally:
            with self._lock:
                self._done.append(Conn(header, error, b"".join(got)))
                self._conns.remove(conn)
            conn.close()
