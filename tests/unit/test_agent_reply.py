"""The agent reply parser (l4lb.health.agentreply): every word, separators, case, the last
word of a category winning, `#` reasons, malformed lines (ignored as a whole, with the reason),
over-long and unterminated lines, and replies read in pieces."""

from __future__ import annotations

import pytest

from l4lb.health.agentreply import MAX_LINE, MAX_PERCENT, AgentReply, parse_line, scan


def ok(line: str) -> AgentReply:
    reply = scan(line.encode() + b"\n", closed=False)
    assert reply is not None and reply.ok, reply
    return reply


@pytest.mark.parametrize("word", ["ready", "drain", "maint"])
def test_admin_words(word: str) -> None:
    reply = ok(word)
    assert (reply.admin, reply.health, reply.percent, reply.reason) == (word, None, None, "")


@pytest.mark.parametrize("word", ["up", "down", "fail", "stopped"])
def test_health_words(word: str) -> None:
    reply = ok(word)
    assert (reply.health, reply.admin, reply.percent) == (word, None, None)


@pytest.mark.parametrize(("word", "percent"), [("0%", 0), ("75%", 75), ("100%", 100),
                                               ("250%", 250), ("007%", 7),
                                               ("999999%", MAX_PERCENT)])
def test_percentages(word: str, percent: int) -> None:
    assert ok(word).percent == percent


def test_words_in_any_order_any_case_any_separator() -> None:
    reply = ok("  50%,DRAIN\tDown ,, ")
    assert (reply.percent, reply.admin, reply.health) == (50, "drain", "down")
    assert reply.said() == "drain down 50%"


def test_the_last_word_of_a_category_wins() -> None:
    reply = ok("drain ready 10% 20% down up")
    assert (reply.admin, reply.percent, reply.health) == ("ready", 20, "up")


def test_reason_after_sharp() -> None:
    reply = ok("drain #  maintenance window, back at 10:00 ")
    assert reply.admin == "drain"
    assert reply.reason == "maintenance window, back at 10:00"
    assert reply.said() == "drain (#maintenance window, back at 10:00)"
    # words after the sharp are the reason, not words
    assert ok("up # drain").admin is None
    assert ok("#just a note").reason == "just a note"


def test_maxconn_is_read_next_to_the_other_words() -> None:
    reply = ok("maxconn:30 75%")
    assert (reply.percent, reply.maxconn) == (75, 30)


def test_an_empty_line_is_valid_and_says_nothing() -> None:
    reply = ok("")
    assert (reply.percent, reply.admin, reply.health, reply.said()) == (None, None, None, "")


@pytest.mark.parametrize(("line", "error"), [
    ("drian", "unknown word 'drian'"),
    ("75% bogus", "unknown word 'bogus'"),
    ("75.5%", "bad weight '75.5%'"),
    ("75", "bad weight '75'"),
    ("-5%", "unknown word '-5%'"),
    ("50%%", "bad weight '50%%'"),
    ("\x00\x01", "unknown word '??'"),
])
def test_malformed_lines_are_ignored_as_a_whole(line: str, error: str) -> None:
    reply = parse_line(line)
    assert not reply.ok and reply.error.startswith(error), reply
    # nothing of a malformed line is applied: not even its good words
    assert (reply.percent, reply.admin, reply.health) == (None, None, None)


def test_cr_ends_the_line_and_bytes_after_the_first_line_are_ignored() -> None:
    reply = scan(b"maint\r\nup\n", closed=False)
    assert reply is not None and reply.admin == "maint" and reply.health is None
    assert reply.text == "maint"


def test_partial_reads_wait_for_the_line_end() -> None:
    data = b""
    for piece in (b"dr", b"ain 5", b"0% #slow", b"ly\n"):
        assert scan(data, closed=False) is None or data == b""
        data += piece
    reply = scan(data, closed=False)
    assert reply is not None and (reply.admin, reply.percent, reply.reason) == \
        ("drain", 50, "slowly")
    assert scan(b"drain 5", closed=False) is None


def test_unterminated_line_at_close_is_malformed() -> None:
    reply = scan(b"drain", closed=True)
    assert reply is not None and not reply.ok
    assert reply.error == "incomplete line (the agent closed before its newline)"
    assert reply.admin is None
    empty = scan(b"", closed=True)
    assert empty is not None and empty.error == "closed without a reply"


def test_over_long_lines_are_malformed_before_and_after_their_end() -> None:
    longest = b"x" * (MAX_LINE - 1)
    assert scan(longest, closed=False) is None  # may still end
    assert not scan(longest + b"\n", closed=False).ok  # type: ignore[union-attr]  # bad word
    too_long = scan(b"7" * MAX_LINE, closed=False)  # no end in sight: no need to wait
    assert too_long is not None and too_long.error == f"line longer than {MAX_LINE - 1} bytes"
    ended = scan(b"up " * 200 + b"\n", closed=False)
    assert ended is not None and ended.error.startswith("line longer")
    fits = scan(b"up " * 170 + b"\n", closed=False)  # 510 bytes and its end
    assert fits is not None and fits.ok and fits.health == "up"


def test_text_is_printable() -> None:
    reply = scan(b"up #caf\xc3\xa9\x07\n", closed=False)
    assert reply is not None and reply.ok and "\x07" not in reply.text
    assert reply.reason.endswith("?")


def test_the_line_is_read_as_utf8_with_replacement() -> None:
    reply = scan("stopped #déploiement 第2版\n".encode(), closed=False)
    assert reply is not None and reply.ok and reply.reason == "déploiement 第2版"
    assert reply.text == "stopped #déploiement 第2版"
    broken = scan(b"up #caf\xe9 \xff\n", closed=False)  # latin-1 bytes: not UTF-8
    assert broken is not None and broken.ok and broken.reason == "caf\ufffd \ufffd"
    unterminated = scan("drain #ü".encode(), closed=True)
    assert unterminated is not None and unterminated.text == "drain #ü"
