"""The HTTP listener's request-head parser and listen-address parser (no sockets)."""

from __future__ import annotations

import pytest

from l4lb.httpserver import HttpError, parse_head, parse_listen


def head(*lines: str) -> list[bytes]:
    return [line.encode("latin-1") for line in lines]


def test_get_with_query_and_repeated_headers() -> None:
    req = parse_head(head("GET /metrics?name=x HTTP/1.1", "Host: a", "Accept: text/plain",
                          "accept: */*", "X-Empty:"))
    assert (req.method, req.path) == ("GET", "/metrics")
    assert req.headers == {"host": "a", "accept": "text/plain, */*", "x-empty": ""}


def test_http10_needs_no_host_and_head_is_allowed() -> None:
    req = parse_head(head("HEAD / HTTP/1.0"))
    assert (req.method, req.path) == ("HEAD", "/")


def test_absolute_form_target() -> None:
    assert parse_head(head("GET http://lb:9273/status.json HTTP/1.1", "Host: lb")).path == \
        "/status.json"
    assert parse_head(head("GET http://lb:9273 HTTP/1.1", "Host: lb")).path == "/"


@pytest.mark.parametrize(("lines", "status"), [
    (["garbage"], 400),
    (["GET /"], 400),
    (["GET  / HTTP/1.1", "Host: a"], 400),
    (["GET / HTTP/1.1 extra", "Host: a"], 400),
    (["G(T / HTTP/1.1", "Host: a"], 400),
    (["GET / HTTX/1.1", "Host: a"], 400),
    (["GET / HTTP/1.1"], 400),  # no Host
    (["GET / HTTP/2.0", "Host: a"], 505),
    (["GET / HTTP/0.9"], 505),
    (["GET * HTTP/1.1", "Host: a"], 400),
    (["GET relative HTTP/1.1", "Host: a"], 400),
    (["GET /\xe9 HTTP/1.1", "Host: a"], 400),
    (["GET / HTTP/1.1", "Host: a", "no colon"], 400),
    (["GET / HTTP/1.1", "Host: a", " folded: x"], 400),
    (["GET / HTTP/1.1", "Host: a", "Bad Name: x"], 400),
    (["GET / HTTP/1.1", "Host: a", "X: a\x00b"], 400),
    (["GET / HTTP/1.1", "Host: a", "Content-Length: 5"], 400),
    (["GET / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked"], 400),
    (["POST /metrics HTTP/1.1", "Host: a"], 405),
    (["DELETE / HTTP/1.1", "Host: a"], 405),
    (["get / HTTP/1.1", "Host: a"], 405),  # methods are case-sensitive
])
def test_rejected_heads(lines: list[str], status: int) -> None:
    with pytest.raises(HttpError) as info:
        parse_head(head(*lines))
    assert info.value.status == status


def test_content_length_zero_is_accepted() -> None:
    assert parse_head(head("GET / HTTP/1.1", "Host: a", "Content-Length: 0")).path == "/"


@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:9273", ("127.0.0.1", 9273)),
    ("[::1]:9273", ("::1", 9273)),
    ("localhost:0", ("localhost", 0)),
    (":9273", (None, 9273)),
])
def test_parse_listen(text: str, want: tuple[str | None, int]) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["9273", "127.0.0.1", "127.0.0.1:http", "::1:9273",
                                  "127.0.0.1:65536", "127.0.0.1:-1", ""])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)
