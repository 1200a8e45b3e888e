"""The HTTP health probe's response judge (l4lb.health.httpresponse): every reason, every split
of a response, bounds, chunked and sized bodies, and a fuzz that it never raises. No sockets."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l4lb.health.httpresponse import (
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    HttpExpect,
    HttpResponseError,
    Verdict,
    parse_head,
    sanitise_reason,
)

PLAIN = HttpExpect()
BODY = HttpExpect(body=b"healthy")
BODY_RE = HttpExpect(body=re.compile(rb"status\W+ok"))


def first_verdict(expect: HttpExpect, chunks: list[bytes]) -> Verdict:
    """What a probe that reads these chunks, then sees the end of the connection, decides."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        verdict = expect.judge(buf, False)
        if verdict is not None:
            return verdict
    verdict = expect.judge(buf, True)
    assert verdict is not None, "at the end of the connection there is always a verdict"
    return verdict


# (expect, response, verdict): the response read in one piece, then the connection closed
CASES = [
    (PLAIN, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", Verdict(True, "HTTP 200 OK")),
    (PLAIN, b"HTTP/1.0 204 No Content\r\n\r\n", Verdict(True, "HTTP 204 No Content")),
    (PLAIN, b"HTTP/1.1 301 Moved Permanently\r\nLocation: /x\r\n\r\n",
     Verdict(True, "HTTP 301 Moved Permanently")),
    (PLAIN, b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n\r\n",
     Verdict(False, "HTTP 503 Service Unavailable")),
    (PLAIN, b"HTTP/1.1 404\r\n\r\n", Verdict(False, "HTTP 404")),
    (PLAIN, b"HTTP/1.1 200 OK\n\n", Verdict(True, "HTTP 200 OK")),  # bare LF line ends
    (PLAIN, b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n",
     Verdict(False, "not HTTP: got b'SSH-2.0-OpenSSH_9.2p1 Debian'")),
    (PLAIN, b"HTTP/1.1 2OO OK\r\n\r\n",
     Verdict(False, "malformed status line: b'HTTP/1.1 2OO OK'")),
    (PLAIN, b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
     Verdict(False, "malformed header line: b'no colon here'")),
    (PLAIN, b"", Verdict(False, "connection closed before the status line")),
    (PLAIN, b"HTTP/1.1 20", Verdict(False, "connection closed before the status line "
                                           "(got b'HTTP/1.1 20')")),
    (PLAIN, b"HTTP/1.1 200 OK\r\nServer: x\r\n",
     Verdict(False, "connection closed in the headers (HTTP 200 OK)")),
    (BODY, b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\nall is healthy!",
     Verdict(True, "HTTP 200 OK, body matched")),
    (BODY, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsick healthy",
     Verdict(False, "HTTP 200 OK, body does not match (first 4 bytes)")),
    (BODY, b"HTTP/1.1 200 OK\r\n\r\nno match until the end",
     Verdict(False, "HTTP 200 OK, body does not match (first 22 bytes)")),
    (BODY, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"4\r\nheal\r\n3;ext=1\r\nthy\r\n0\r\nTrailer: x\r\n\r\n",
     Verdict(True, "HTTP 200 OK, body matched")),
    (BODY, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nheal\r\n0\r\n\r\nthy",
     Verdict(False, "HTTP 200 OK, body does not match (first 4 bytes)")),
    (BODY, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nheal\r\n",
     Verdict(False, "malformed chunked body: chunk size b'zz'")),
    (BODY, b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\nhealthy",
     Verdict(False, "malformed Content-Length: 'many'")),
    (BODY, b"HTTP/1.1 500 Internal Server Error\r\n\r\nhealthy",
     Verdict(False, "HTTP 500 Internal Server Error")),
    (BODY_RE, b'HTTP/1.1 200 OK\r\n\r\n{"status": "ok"}',
     Verdict(True, "HTTP 200 OK, body matched")),
    (BODY_RE, b'HTTP/1.1 200 OK\r\n\r\n{"status": "bad"}',
     Verdict(False, "HTTP 200 OK, body does not match (first 17 bytes)")),
    # odd spacing and case of header names, obsolete folding: still read
    (BODY, b"HTTP/1.1 200 OK\r\ntransfer-encoding :  Chunked\r\nX-A: 1\r\n  folded\r\n\r\n"
           b"7\r\nhealthy\r\n0\r\n\r\n", Verdict(True, "HTTP 200 OK, body matched")),
    (BODY, b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH:7\r\n\r\nhealthy",
     Verdict(True, "HTTP 200 OK, body matched")),
    # interim 1xx responses are skipped and the final one is judged; 101 is final
    (PLAIN, b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", Verdict(True, "HTTP 200 OK")),
    (BODY, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n"
           b"HTTP/1.1 200 OK\r\n\r\nhealthy", Verdict(True, "HTTP 200 OK, body matched")),
    (PLAIN, b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 503 Service Unavailable\r\n\r\n",
     Verdict(False, "HTTP 503 Service Unavailable")),
    (PLAIN, b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n",
     Verdict(False, "connection closed in the headers (HTTP 103 Early Hints)")),
    (PLAIN, b"HTTP/1.1 103 Early Hints\r\n\r\n",
     Verdict(False, "connection closed before the status line")),
    (PLAIN, b"HTTP/1.1 103 Early Hints\r\nbad line\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
     Verdict(False, "malformed header line: b'bad line'")),
    (PLAIN, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
     Verdict(False, "HTTP 101 Switching Protocols")),
    (PLAIN, b"HTTP/1.1 103 Early Hints\r\n\r\n" * 5 + b"HTTP/1.1 200 OK\r\n\r\n",
     Verdict(False, "more than 4 interim 1xx responses")),
    (PLAIN, b"HTTP/1.1 103 Early Hints\r\n\r\n" * 4 + b"HTTP/1.1 200 OK\r\n\r\n",
     Verdict(True, "HTTP 200 OK")),
]


@pytest.mark.parametrize("expect, response, verdict", CASES)
def test_every_reason(expect: HttpExpect, response: bytes, verdict: Verdict) -> None:
    assert first_verdict(expect, [response]) == verdict


@pytest.mark.parametrize("expect, response, verdict", CASES)
def test_every_split_gives_the_same_verdict(expect: HttpExpect, response: bytes,
                                            verdict: Verdict) -> None:
    """However the network cuts the bytes (two pieces at every boundary, and byte by byte),
    the verdict is the same; only a "not HTTP" reason shows fewer bytes when it is decided on
    the first ones."""
    splits = [[response[:i], response[i:]] for i in range(len(response) + 1)]
    splits.append([response[i:i + 1] for i in range(len(response))])
    for chunks in splits:
        got = first_verdict(expect, chunks)
        if verdict.reason.startswith("not HTTP"):
            assert got.ok is False and got.reason.startswith("not HTTP: got b'")
        else:
            assert got == verdict, chunks


def test_timeout_after_an_interim_response_names_the_final_one() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\n\r\n"
    assert PLAIN.judge(early, False) is None  # the final response is still to come
    assert PLAIN.timeout_reason(early) == "read timeout before the status line"
    assert BODY.timeout_reason(early + b"HTTP/1.1 200 OK\r\n\r\nhea") == \
        "read timeout in the body (HTTP 200 OK, 3 bytes read)"
    assert PLAIN.timeout_reason(b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n") == \
        "read timeout in the headers (HTTP 103 Early Hints)"


def test_status_decides_before_the_headers_end() -> None:
    assert PLAIN.judge(b"HTTP/1.1 503 Service Unavailable\r\nX-Partial", False) == \
        Verdict(False, "HTTP 503 Service Unavailable")
    assert PLAIN.judge(b"HTTP/1.1 200 OK\r\nX-Partial", False) is None  # a pass needs the head
    assert PLAIN.judge(b"HTT", False) is None
    assert PLAIN.judge(b"HTX", False) == Verdict(False, "not HTTP: got b'HTX'")


def test_expected_statuses_are_the_given_codes_and_ranges() -> None:
    expect = HttpExpect(statuses=((200, 200), (204, 204), (301, 308)))
    for code, ok in ((200, True), (201, False), (204, True), (300, False), (301, True),
                     (308, True), (309, False), (503, False)):
        verdict = expect.judge(f"HTTP/1.1 {code} X\r\n\r\n".encode(), False)
        assert verdict == Verdict(ok, f"HTTP {code} X"), code
    assert HttpExpect().status_ok(399) and not HttpExpect().status_ok(400)


def test_headers_larger_than_the_bound_fail() -> None:
    big = b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n"
    too_large = Verdict(False, "HTTP response headers larger than 16 KiB")
    assert PLAIN.judge(big, False) == too_large
    assert PLAIN.judge(big[:MAX_HEAD_BYTES], False) == too_large  # decided at the bound
    assert PLAIN.judge(big[:MAX_HEAD_BYTES - 1], False) is None
    assert PLAIN.judge(b"HTTP/1.1 200 " + b"x" * MAX_HEAD_BYTES, False) == too_large
    # a head of exactly the bound passes
    filler = MAX_HEAD_BYTES - len(b"HTTP/1.1 200 OK\r\nX: \r\n\r\n")
    exact = b"HTTP/1.1 200 OK\r\nX: " + b"a" * filler + b"\r\n\r\n"
    assert len(exact) == MAX_HEAD_BYTES
    assert PLAIN.judge(exact, False) == Verdict(True, "HTTP 200 OK")


def test_body_is_searched_only_up_to_its_bound() -> None:
    head = b"HTTP/1.1 200 OK\r\n\r\n"
    late = head + b"." * MAX_BODY_BYTES + b"healthy"
    assert BODY.judge(late, False) == Verdict(
        False, f"HTTP 200 OK, body does not match (first {MAX_BODY_BYTES} bytes)")
    early = head + b"." * (MAX_BODY_BYTES - 7) + b"healthy"
    assert BODY.judge(early, False) == Verdict(True, "HTTP 200 OK, body matched")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + \
        b"".join(b"1000\r\n" + b"." * 4096 + b"\r\n" for _ in range(5))
    assert BODY.judge(chunked, False) == Verdict(
        False, f"HTTP 200 OK, body does not match (first {MAX_BODY_BYTES} bytes)")


def test_chunked_body_split_across_the_chunk_framing() -> None:
    # the match spans two chunks; framing bytes in between must not be searched
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert BODY.judge(head + b"3\r\nhea\r\n4\r\nlthy\r\n", False) == \
        Verdict(True, "HTTP 200 OK, body matched")
    assert HttpExpect(body=b"a\r\n4").judge(head + b"3\r\nhea\r\n4\r\nlthy\r\n0\r\n\r\n",
                                            False) == \
        Verdict(False, "HTTP 200 OK, body does not match (first 7 bytes)")
    assert BODY.judge(head + b"3\r\nhea", False) is None  # wait for more
    assert BODY.judge(head + b"3\r\nheaXY", False) == \
        Verdict(False, "malformed chunked body: no line end after a chunk")


def test_timeout_reasons_say_what_was_awaited() -> None:
    assert PLAIN.timeout_reason(b"") == "read timeout before the status line"
    assert PLAIN.timeout_reason(b"HTTP/1.1 2") == \
        "read timeout before the status line (got b'HTTP/1.1 2')"
    assert PLAIN.timeout_reason(b"HTTP/1.1 200 OK\r\nServer: x\r\n") == \
        "read timeout in the headers (HTTP 200 OK)"
    assert BODY.timeout_reason(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nabc") == \
        "read timeout in the body (HTTP 200 OK, 3 bytes read)"


def test_reason_phrases_are_trimmed_and_sanitised() -> None:
    verdict = PLAIN.judge(b"HTTP/1.1 503   Service\x1b[31m  Unavailable\xff \r\n\r\n", False)
    assert verdict == Verdict(False, "HTTP 503 Service?[31m Unavailable?")
    long = PLAIN.judge(b"HTTP/1.1 500 " + b"word " * 30 + b"\r\n\r\n", False)
    assert long is not None and len(long.reason) == len("HTTP 500 ") + 40
    assert long.reason.endswith("...")
    assert sanitise_reason(b"  ") == ""


def test_parse_head_reads_headers() -> None:
    head = parse_head(b"HTTP/1.0 200 OK\r\nSet-Cookie: a\r\nset-cookie: b\r\n\r\nbody")
    assert (head.status, head.reason, head.size) == (200, "OK", 49)  # the body starts at 49
    assert head.header("set-cookie") == "a, b" and head.header("x") is None
    for bad in (b"HTTP/1.1 200 OK\r\n", b"HTTP/2 200\r\n\r\n", b"ICY 200 OK\r\n\r\n"):
        with pytest.raises(HttpResponseError):
            parse_head(bad)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_fuzz_judge_never_raises(data: bytes, eof: bool) -> None:
    for expect in (PLAIN, BODY, BODY_RE):
        verdict = expect.judge(data, eof)
        assert verdict is not None or not eof
        expect.timeout_reason(data)


HEADISH = st.lists(st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.0 503 x", b"\r\n", b"\n",
                                    b":", b" ", b"Content-Length: 3", b"Content-Length: -1",
                                    b"Transfer-Encoding: chunked", b"0", b"5", b"ff;x", b"abc",
                                    b"\t", b"\x00", b"healthy"]), max_size=30).map(b"".join)


@settings(max_examples=600, deadline=None)
@given(HEADISH, st.booleans())
def test_fuzz_structured_responses(data: bytes, eof: bool) -> None:
    """Responses made of HTTP-like pieces reach the deeper paths (headers, chunks, lengths):
    the judge never raises, and parse_head raises nothing but HttpResponseError."""
    for expect in (PLAIN, BODY):
        verdict = expect.judge(data, eof)
        assert verdict is not None or not eof
        expect.timeout_reason(data)
    with contextlib.suppress(HttpResponseError):  # anything else fails the test
        parse_head(data)


@pytest.mark.parametrize("value", [b"\xb2", b"1\xb9", b"\xb3\xb3"])
def test_content_length_with_non_ascii_digits_is_malformed_not_a_crash(value: bytes) -> None:
    """`str.isdigit()` holds for the latin-1 superscripts (U+00B2, U+00B3, U+00B9), which
    int() refuses: such a Content-Length is a malformed one, a conclusive failure, and not a
    ValueError (which the probe engine turns into an inconclusive "internal error", so a
    backend answering that way would never be counted down)."""
    response = b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\nhealthy"
    for eof in (False, True):
        verdict = BODY.judge(response, eof)
        assert verdict is not None and not verdict.ok
        assert verdict.reason.startswith("malformed Content-Length: ")
    assert BODY.timeout_reason(response).startswith("read timeout")


@pytest.mark.parametrize("chunk", [b"1\r\na\r\n", b"1\na\n", b"1;" + b"x" * 1000 + b"\r\na\r\n"],
                         ids=["one-byte chunks", "one-byte chunks, LF", "long extensions"])
def test_chunk_framing_read_is_bounded(chunk: bytes) -> None:
    """The judge parses the whole buffer again after every 4 KiB read, so the bytes a chunked
    body may take are bounded, framing included: one-byte chunks (or chunk extensions of up
    to 1 KiB each) must not make the probe read 100 KiB (or 16 MiB) to decode 16 KiB of body,
    parsing it all again at every read on the event loop (measured: 0.5 s, or 77 s, of loop
    time for one probe). Past 2 * MAX_BODY_BYTES of raw body the search ends with what was
    decoded."""
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw = chunk * (2 * MAX_BODY_BYTES // len(chunk) + 1)
    verdict = BODY.judge(head + raw, False)
    assert verdict is not None and not verdict.ok
    assert verdict.reason.startswith("HTTP 200 OK, body does not match (first ")
    # a match decoded within the bound still passes
    assert BODY.judge(head + b"7\r\nhealthy\r\n" + raw, False) == \
        Verdict(True, "HTTP 200 OK, body matched")


def test_transfer_encoding_without_final_chunked_overrides_content_length() -> None:
    """RFC 9112 6.3: Transfer-Encoding overrides Content-Length, and a response whose final
    coding is not chunked runs until the connection closes; its Content-Length is not the
    body's length."""
    response = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 2\r\n\r\n"
                b"xxhealthy")
    assert BODY.judge(response, False) == Verdict(True, "HTTP 200 OK, body matched")
    assert first_verdict(BODY, [response[:-7], response[-7:]]) == \
        Verdict(True, "HTTP 200 OK, body matched")
