"""Judge the HTTP/1.x response to a health probe from the bytes read so far (pure, no I/O).

`kind = "http"` probes send one request with `Connection: close` and hand every byte they read
to `HttpExpect.judge(buf, eof)`. It answers `None` (read more) or a `Verdict(ok, reason)`. It
keeps no state between calls: it parses `buf` again each time (at most 16 KiB of head and 16
KiB of body, a few recv() calls), so the same bytes give the same answer however the network
split them, and a verdict, once given, stays the same for every longer `buf` (the probe takes
the first one). `HttpExpect.timeout_reason(buf)` says what the probe was waiting for when its
timeout struck. Nothing here raises except `parse_head`, which raises only `HttpResponseError`.

The rules, in the order they decide:

1. The first bytes must be `HTTP/`, else `not HTTP: got b'...'` (as soon as they differ).
2. The status line (up to the first LF) must be `HTTP/1.<digit> <3 digits>[ <reason>]`, else
   `malformed status line: b'...'`. A status outside the expected set fails at once:
   `HTTP 503 Service Unavailable` (the reason phrase trimmed, non-printable or non-ASCII bytes
   shown as `?`, at most 40 characters).
3. The head (status line, headers and the empty line after them) must end within
   `MAX_HEAD_BYTES`, else `HTTP response headers larger than 16 KiB`. Lines may end in CRLF or
   a bare LF. A header line without a colon is `malformed header line: b'...'`; spaces around
   the name and the value are ignored and names are case-insensitive. Obsolete line folding
   (a line starting with a space or tab) continues the previous header.
4. Without a body match, a complete head with an expected status passes: `HTTP 200 OK`. The
   body is not read.
5. With a body match (a literal substring, or a bytes regex searched), the body is read:
   `Transfer-Encoding: chunked` is de-chunked (chunk extensions skipped, the trailer section
   after the last chunk not read); otherwise, without a Transfer-Encoding, `Content-Length`
   bytes, otherwise up to the end of the connection. Only the first `MAX_BODY_BYTES` of the
   (de-chunked) body are searched, and at most `MAX_CHUNKED_BYTES` of a chunked body are
   read (framing included). A match passes (`HTTP 200 OK, body matched`); a body that
   ended, or reached a bound, without a match fails: `HTTP 200 OK, body does not match
   (first 312 bytes)`.
6. The connection closing before a verdict: `connection closed before the status line`,
   `connection closed in the headers (HTTP 200 OK)`; in the body it is the end of the body
   (rule 5). A timeout: `read timeout before the status line`, `read timeout in the headers
   (HTTP 200 OK)`, `read timeout in the body (HTTP 200 OK, 312 bytes read)`. Anything read
   before the status line is shown as `(got b'...')`.

Interim responses (1xx other than `101 Switching Protocols`: `103 Early Hints`, a `100
Continue` sent unasked) are skipped, as RFC 9110 §15.2 tells a client to: the response that
follows is judged. At most `MAX_INTERIM` of them, each a complete head within
`MAX_HEAD_BYTES`; a probe waits for the rest of one that is not complete yet, and its
timeout or the connection's end says `in the headers (HTTP 103 Early Hints)`. `101` is a final
status (judged, so it fails unless expected).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

MAX_HEAD_BYTES = 16384  # status line + headers + the empty line; HAProxy's default bufsize
MAX_BODY_BYTES = 16384  # bytes of the body searched for a body match
# raw bytes of a chunked body read at most (framing included): one-byte chunks or long chunk
# extensions would otherwise take megabytes for MAX_BODY_BYTES, all parsed again at each read
MAX_CHUNKED_BYTES = 2 * MAX_BODY_BYTES
MAX_INTERIM = 4  # interim 1xx responses skipped before the final one; more fail
MAX_REASON_CHARS = 40  # characters of a reason phrase shown
_SHOW_BYTES = 40  # bytes of a bad line shown in a reason
_MAX_CHUNK_LINE = 1024  # a chunk-size line (with extensions) longer than this is malformed

_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] ([1-5][0-9][0-9])(?:[ \t](.*))?")
_CHUNK_SIZE = re.compile(rb"[ \t]*([0-9A-Fa-f]{1,16})[ \t]*(?:;.*)?")
_PRINTABLE = frozenset(range(0x20, 0x7f))


class HttpResponseError(ValueError):
    """The response cannot be HTTP/1.x as this module reads it; str() is the probe's reason."""


class Verdict(NamedTuple):
    """A decided probe: passed or not, and the operator-readable reason."""

    ok: bool
    reason: str


@dataclass(frozen=True)
class ResponseHead:
    """A parsed status line and header section."""

    status: int  # 100..599
    reason: str  # the reason phrase, sanitised (may be empty)
    headers: tuple[tuple[str, str], ...]  # (lower-case name, value), in order
    size: int  # bytes of the head, the empty line included: the body starts here

    @property
    def status_text(self) -> str:
        """`HTTP 503 Service Unavailable`, or `HTTP 503` without a reason phrase."""
        return f"HTTP {self.status} {self.reason}" if self.reason else f"HTTP {self.status}"

    def header(self, name: str) -> str | None:
        """The values of header `name` (lower case), joined by ", "; None when absent."""
        values = [v for n, v in self.headers if n == name]
        return ", ".join(values) if values else None


def _shown(data: bytes) -> str:
    return repr(data[:_SHOW_BYTES]) + ("..." if len(data) > _SHOW_BYTES else "")


def sanitise_reason(raw: bytes) -> str:
    """A reason phrase fit for a log line: printable ASCII, spaces collapsed, trimmed, short."""
    text = "".join(chr(b) if b in _PRINTABLE else "?" for b in raw)
    text = " ".join(text.split())
    if len(text) > MAX_REASON_CHARS:
        text = text[:MAX_REASON_CHARS - 3].rstrip() + "..."
    return text


def parse_status_line(line: bytes) -> tuple[int, str]:
    """(status, sanitised reason phrase) of one status line without its line end."""
    if not line.startswith(b"HTTP/"):
        raise HttpResponseError(f"not HTTP: got {_shown(line)}")
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        raise HttpResponseError(f"malformed status line: {_shown(line)}")
    return int(match.group(1)), sanitise_reason(match.group(2) or b"")


def head_end(buf: bytes | bytearray) -> int | None:
    """Where the body starts: just past the first empty line (CRLF or LF) within
    MAX_HEAD_BYTES; None if there is none there yet."""
    best: int | None = None
    for pattern in (b"\n\r\n", b"\n\n"):
        at = buf.find(pattern, 0, MAX_HEAD_BYTES)
        if at >= 0 and (best is None or at + len(pattern) < best):
            best = at + len(pattern)
    return best


def parse_head(data: bytes | bytearray) -> ResponseHead:
    """Parse a complete head (status line up to and including the empty line).

    `data` may go on past the head (the body is ignored). Raises HttpResponseError.
    """
    end = head_end(data)
    if end is None:
        if len(data) >= MAX_HEAD_BYTES:
            raise HttpResponseError(f"HTTP response headers larger than "
                                    f"{MAX_HEAD_BYTES // 1024} KiB")
        raise HttpResponseError("incomplete HTTP response head")
    lines = bytes(data[:end]).split(b"\n")[:-2]  # the last two: the empty line and ""
    status, reason = parse_status_line(lines[0].removesuffix(b"\r"))
    headers: list[tuple[str, str]] = []
    for raw in lines[1:]:
        line = raw.removesuffix(b"\r")
        if line[:1] in (b" ", b"\t") and headers:  # obsolete line folding
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip().decode('latin-1')}".strip())
            continue
        name_b, colon, value_b = line.partition(b":")
        name_b = name_b.strip()
        if not colon or not name_b or any(c in b" \t" for c in name_b):
            raise HttpResponseError(f"malformed header line: {_shown(line)}")
        headers.append((name_b.decode("latin-1").lower(), value_b.strip().decode("latin-1")))
    return ResponseHead(status=status, reason=reason, headers=tuple(headers), size=end)


def _dechunk(data: bytes, limit: int) -> tuple[bytes, bool]:
    """(the body so far, capped at limit; True when it is complete: the last chunk was seen
    or limit reached). Raises HttpResponseError for a malformed chunk."""
    out = bytearray()
    pos = 0
    while len(out) < limit:
        eol = data.find(b"\n", pos, pos + _MAX_CHUNK_LINE)
        if eol < 0:
            if len(data) - pos >= _MAX_CHUNK_LINE:
                raise HttpResponseError("malformed chunked body: chunk-size line too long")
            return bytes(out), False
        line = data[pos:eol].removesuffix(b"\r")
        match = _CHUNK_SIZE.fullmatch(line)
        if match is None:
            raise HttpResponseError(f"malformed chunked body: chunk size {_shown(line)}")
        size = int(match.group(1), 16)
        if size == 0:
            return bytes(out), True  # the trailer section is not read
        start = eol + 1
        out += data[start:start + size]
        if len(data) < start + size:
            return bytes(out[:limit]), len(out) >= limit
        after = data[start + size:start + size + 2]
        if after in (b"", b"\r"):
            return bytes(out[:limit]), len(out) >= limit
        if not after.startswith(b"\n") and after != b"\r\n":
            raise HttpResponseError("malformed chunked body: no line end after a chunk")
        pos = start + size + (1 if after.startswith(b"\n") else 2)
    return bytes(out[:limit]), True


def _body(head: ResponseHead, rest: bytes, eof: bool) -> tuple[bytes, bool]:
    """(the body read so far, capped at MAX_BODY_BYTES; True when it is complete)."""
    encoding = head.header("transfer-encoding")
    if encoding is not None and encoding.lower().replace(" ", "").endswith("chunked"):
        body, done = _dechunk(rest[:MAX_CHUNKED_BYTES], MAX_BODY_BYTES)
        return body, done or eof or len(rest) >= MAX_CHUNKED_BYTES
    length_text = head.header("content-length")
    if length_text is not None and encoding is None:  # else up to the close (RFC 9112 6.3)
        values = {v.strip() for v in length_text.split(",")}
        if len(values) != 1 or not (value := values.pop()).isascii() or not value.isdigit() \
                or len(value) > 18:  # isascii: "\xb2".isdigit(), but int() refuses it
            raise HttpResponseError(f"malformed Content-Length: {length_text[:_SHOW_BYTES]!r}")
        want = min(int(value), MAX_BODY_BYTES)
        return rest[:want], len(rest) >= want or eof
    return rest[:MAX_BODY_BYTES], len(rest) >= MAX_BODY_BYTES or eof


@dataclass(frozen=True)
class HttpExpect:
    """What an HTTP probe accepts: a status in one of `statuses` (inclusive ranges) and, if
    `body` is set, a body that contains it (bytes) or in which the regex finds a match."""

    statuses: tuple[tuple[int, int], ...] = ((200, 399),)
    body: bytes | re.Pattern[bytes] | None = None

    def status_ok(self, status: int) -> bool:
        """Whether `status` is expected."""
        return any(lo <= status <= hi for lo, hi in self.statuses)

    def judge(self, buf: bytes | bytearray, eof: bool) -> Verdict | None:
        """The verdict on the response bytes read so far; None: read more. With eof (the peer
        closed, nothing more will come) the answer is never None."""
        data = bytes(buf)
        try:
            return self._judge(data, eof)
        except HttpResponseError as exc:
            return Verdict(False, str(exc))

    def _judge(self, data: bytes, eof: bool) -> Verdict | None:
        for _ in range(MAX_INTERIM):
            rest = _after_interim(data)
            if rest is None:
                break
            data = rest
        else:
            if _after_interim(data) is not None:
                raise HttpResponseError(f"more than {MAX_INTERIM} interim 1xx responses")
        nl = data.find(b"\n", 0, MAX_HEAD_BYTES)
        if nl < 0:
            if not b"HTTP/".startswith(data[:5]):
                raise HttpResponseError(f"not HTTP: got {_shown(data)}")
            if len(data) >= MAX_HEAD_BYTES:
                raise HttpResponseError(f"HTTP response headers larger than "
                                        f"{MAX_HEAD_BYTES // 1024} KiB")
            if eof:
                return Verdict(False, _closed_before(data))
            return None
        status, reason = parse_status_line(data[:nl].removesuffix(b"\r"))
        text = f"HTTP {status} {reason}" if reason else f"HTTP {status}"
        if not self.status_ok(status) and not _interim(status):
            return Verdict(False, text)
        if head_end(data) is None:
            if len(data) >= MAX_HEAD_BYTES:
                raise HttpResponseError(f"HTTP response headers larger than "
                                        f"{MAX_HEAD_BYTES // 1024} KiB")
            if eof:
                return Verdict(False, f"connection closed in the headers ({text})")
            return None
        head = parse_head(data)
        if self.body is None:
            return Verdict(True, text)
        body, done = _body(head, data[head.size:], eof)
        if isinstance(self.body, bytes):
            found = self.body in body
        else:
            found = self.body.search(body) is not None
        if found:
            return Verdict(True, f"{text}, body matched")
        if done:
            return Verdict(False, f"{text}, body does not match (first {len(body)} bytes)")
        return None

    def timeout_reason(self, buf: bytes | bytearray) -> str:
        """The reason of a probe whose timeout struck after reading `buf` (no verdict yet)."""
        data = bytes(buf)
        for _ in range(MAX_INTERIM):
            rest = _after_interim(data)
            if rest is None:
                break
            data = rest
        nl = data.find(b"\n", 0, MAX_HEAD_BYTES)
        if nl < 0:
            return "read timeout before the status line" + (
                f" (got {_shown(data)})" if data else "")
        try:
            status, reason = parse_status_line(data[:nl].removesuffix(b"\r"))
            head = parse_head(data) if head_end(data) is not None else None
        except HttpResponseError as exc:  # judge() would have decided: not reached by probes
            return f"read timeout ({exc})"
        text = f"HTTP {status} {reason}" if reason else f"HTTP {status}"
        if head is None:
            return f"read timeout in the headers ({text})"
        try:
            body, _ = _body(head, data[head.size:], False)
        except HttpResponseError as exc:
            return f"read timeout ({exc})"
        return f"read timeout in the body ({text}, {len(body)} bytes read)"


def _interim(status: int) -> bool:
    """An interim response, to be skipped: 1xx, except 101 (the final answer to an Upgrade)."""
    return 100 <= status < 200 and status != 101


def _after_interim(data: bytes) -> bytes | None:
    """`data` after the complete interim response it starts with; None when it does not start
    with one (another status, or an interim head not complete yet, which _judge then waits
    for or reports like any incomplete head)."""
    nl = data.find(b"\n", 0, MAX_HEAD_BYTES)
    if nl < 0:
        return None
    match = _STATUS_LINE.fullmatch(data[:nl].removesuffix(b"\r"))
    if match is None or not _interim(int(match.group(1))):
        return None
    end = head_end(data)
    if end is None:
        return None
    parse_head(data)  # its header lines must be well formed too
    return data[end:]


def _closed_before(data: bytes) -> str:
    return "connection closed before the status line" + (
        f" (got {_shown(data)})" if data else "")
