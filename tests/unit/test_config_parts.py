"""Unit tests of the configuration compiler's parts: durations, addresses, the position locator,
the "did you mean" suggestions and the TOML syntax-error translation."""

from __future__ import annotations

import tomllib

import pytest

from l4lb.config import Endpoint
from l4lb.config.addresses import parse_endpoint
from l4lb.config.durations import format_duration_ms, parse_duration_ms, suggest_duration
from l4lb.config.load import syntax_diagnostic
from l4lb.config.locate import Locator
from l4lb.config.validate import describe, is_prime, nearest_primes, suggest

# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(("text", "ms"), [
    ("0s", 0), ("0ms", 0), ("1ms", 1), ("500ms", 500), ("3s", 3000), ("5m", 300_000),
    ("1h", 3_600_000), ("1m30s", 90_000), ("1h1m1s1ms", 3_661_001), ("2h30m", 9_000_000),
    ("007s", 7000), ("90s", 90_000), ("1500ms", 1500),
])
def test_duration_parses(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize(("text", "message"), [
    ("", 'empty duration: write a whole number with a unit (h, m, s, ms), e.g. "500ms", "3s" or '
         '"1m30s"'),
    ("3", 'duration "3" has no unit: write "3s" or "3ms"'),
    ("-3s", 'duration "-3s" is negative'),
    ("1.5s", 'duration "1.5s" has a fraction: write "1500ms"'),
    ("1.5m", 'duration "1.5m" has a fraction: write "1m30s"'),
    ("0.0001s", 'duration "0.0001s" has a fraction: durations are whole milliseconds'),
    ("30s1m", 'invalid duration "30s1m": units must go from largest to smallest (h, m, s, ms), '
              "each at most once"),
    ("1s1s", 'invalid duration "1s1s": units must go from largest to smallest (h, m, s, ms), '
             "each at most once"),
    ("3 s", 'invalid duration "3 s": write a whole number with a unit (h, m, s, ms), e.g. '
            '"500ms", "3s" or "1m30s"'),
    ("3sec", 'invalid duration "3sec": write a whole number with a unit (h, m, s, ms), e.g. '
             '"500ms", "3s" or "1m30s"'),
    ("1d", 'invalid duration "1d": write a whole number with a unit (h, m, s, ms), e.g. '
           '"500ms", "3s" or "1m30s"'),
    ("3S", 'invalid duration "3S": write a whole number with a unit (h, m, s, ms), e.g. '
           '"500ms", "3s" or "1m30s"'),
    ("٣s", 'invalid duration "٣s": write a whole number with a unit (h, m, s, ms), e.g. '
           '"500ms", "3s" or "1m30s"'),
])
def test_duration_errors_say_how_to_fix(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration_ms(text)
    assert str(info.value) == message


def test_huge_duration_is_refused_without_building_a_huge_int() -> None:
    with pytest.raises(ValueError, match="far too long"):
        parse_duration_ms("9" * 100_000 + "s")
    with pytest.raises(ValueError, match="far too long"):
        parse_duration_ms("9" * 100_000)


@pytest.mark.parametrize("ms", [0, 1, 999, 1000, 1001, 59_999, 60_000, 90_000, 3_661_001,
                                86_400_000, 123_456_789])
def test_format_and_suggest_round_trip(ms: int) -> None:
    assert parse_duration_ms(format_duration_ms(ms)) == ms
    assert parse_duration_ms(suggest_duration(ms)) == ms
    assert format_duration_ms(90_000) == "1m30s" and suggest_duration(1500) == "1500ms"


# ---------------------------------------------------------------- addresses


@pytest.mark.parametrize(("text", "host", "port"), [
    ("127.0.0.1:9001", "127.0.0.1", 9001),
    ("[::1]:80", "::1", 80),
    ("[2001:DB8:0:0::1]:443", "2001:db8::1", 443),
    ("10.0.0.1:65535", "10.0.0.1", 65535),
    ("10.0.0.1:080", "10.0.0.1", 80),
])
def test_address_parses_and_keeps_its_text(text: str, host: str, port: int) -> None:
    ep = parse_endpoint(text, wildcard_ok=False)
    assert ep == Endpoint(host, port) and ep.text == text


def test_wildcards_only_where_allowed() -> None:
    assert parse_endpoint("0.0.0.0:80", wildcard_ok=True).host == "0.0.0.0"
    assert parse_endpoint("[::]:80", wildcard_ok=True).host == "::"
    with pytest.raises(ValueError, match="wildcard address: a backend needs a real IP address"):
        parse_endpoint("0.0.0.0:80", wildcard_ok=False)
    with pytest.raises(ValueError, match="wildcard"):
        parse_endpoint("[0::0]:80", wildcard_ok=False)


@pytest.mark.parametrize(("text", "message"), [
    ("", 'empty address: write "IP:PORT", e.g. "127.0.0.1:9001" or "[::1]:9001"'),
    ("localhost:80", '"localhost" is not an IP address (host names are not resolved: use an IP '
                     "address)"),
    ("localhost", '"localhost" is not an IP address (host names are not resolved: use an IP '
                  "address)"),
    ("backend.example:80", '"backend.example" is not an IP address (host names are not resolved: '
                           "use an IP address)"),
    ("1.2.3.4", 'missing port: write "1.2.3.4:PORT"'),
    ("1.2.3.4:", "missing port after the colon"),
    (":80", "missing IP address before the port"),
    ("1.2.3.4:http", 'invalid port "http"'),
    ("1.2.3.4:-1", 'invalid port "-1"'),
    ("1.2.3.4:0", "port 0 out of range (1..65535)"),
    ("1.2.3.4:65536", "port 65536 out of range (1..65535)"),
    ("1.2.3.4:99999999999999999999", "port 99999999999999999999 out of range (1..65535)"),
    ("1.2.3.256:80", '"1.2.3.256" is not a valid IPv4 address'),
    ("01.2.3.4:80", '"01.2.3.4" is not a valid IPv4 address'),
    ("::1", 'missing port: write "[::1]:PORT"'),
    ("::1:80", 'an IPv6 address must be in brackets: write "[::1]:80"'),
    ("a:b:c", 'an IPv6 address must be in brackets, e.g. "[::1]:9001"'),
    ("[::1]", 'missing port: write "[::1]:PORT"'),
    ("[::1", 'missing "]" after the IPv6 address'),
    ("[::1]80", 'expected ":PORT" after "]"'),
    ("[::g]:80", '"::g" is not a valid IPv6 address'),
    ("[1.2.3.4]:80", 'brackets are only for IPv6: write "1.2.3.4:PORT"'),
    ("[fe80::1%eth0]:80", 'zone index "%eth0" is not supported'),
    ("[::ffff:10.1.2.3]:80", 'an IPv4-mapped IPv6 address cannot be used: write "10.1.2.3:PORT"'),
    ("224.0.0.1:80", "a multicast address cannot be used"),
    ("[ff02::1]:80", "a multicast address cannot be used"),
    ("255.255.255.255:80", "the broadcast address cannot be used"),
    (" 1.2.3.4:80", "an address cannot contain whitespace"),
])
def test_address_errors_say_how_to_fix(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_endpoint(text, wildcard_ok=True)
    assert str(info.value) == message


# ---------------------------------------------------------------- locator

LOCATE_TEXT = '''\
# comment [not.a.table]
"quoted.key" = 1
a.b . c = "x # not a comment"  # a comment
[ global ]   # header with spaces
workers = 3
s = """multi
line \\""" still"""""
lit = \'\'\'x\'\'\'\'
arr = [
  1, # comment in an array
  [2, 3],
  {x = 1, y = {z = "w"}},
]
dt = 1979-05-27 07:32:00Z
[[services]]
name = "a"
  [[services.backends]]
  address = "1"
  [[services.backends]]
  address = "2"
  [services.backends.sub]
  q = 1
[[services]]
name = "b"
  [[services.backends]]
  address = "3"
[services.extra]
k = 1
'''


def _at(text: str, pos: tuple[int, int], width: int) -> str:
    line, col = pos
    return text.splitlines()[line - 1][col - 1:col - 1 + width]


@pytest.mark.parametrize(("path", "pos", "starts"), [
    (("quoted.key",), (2, 16), "1"),
    (("a", "b", "c"), (3, 11), '"x # not'),
    (("global",), (4, 1), "[ global ]"),
    (("global", "workers"), (5, 11), "3"),
    (("global", "s"), (6, 5), '"""multi'),
    (("global", "lit"), (8, 7), "'''x"),
    (("global", "arr", 0), (10, 3), "1,"),
    (("global", "arr", 1, 1), (11, 7), "3]"),
    (("global", "arr", 2, "y", "z"), (12, 20), '"w"'),
    (("global", "dt"), (14, 6), "1979-05-27"),
    (("services", 0, "name"), (16, 8), '"a"'),
    (("services", 0, "backends", 1, "address"), (20, 13), '"2"'),
    (("services", 0, "backends", 1, "sub", "q"), (22, 7), "1"),
    (("services", 1, "backends", 0, "address"), (26, 13), '"3"'),
    (("services", 1, "extra", "k"), (28, 5), "1"),
    # no value: the key or table header, else the nearest enclosing table
    (("services", 1), (23, 1), "[[services]]"),
    (("services", 1, "backends"), (25, 3), "[[services.backends]]"),
    (("services", 1, "missing"), (23, 1), "[[services]]"),
    (("services", 0, "backends", 1), (19, 3), "[[services.backends]]"),
    (("nothing", "here"), (1, 1), "# comment"),
])
def test_locator_finds_values_and_falls_back(path: tuple[str | int, ...], pos: tuple[int, int],
                                             starts: str) -> None:
    tomllib.loads(LOCATE_TEXT)  # the fixture is valid TOML
    locator = Locator(LOCATE_TEXT)
    assert locator.value(path) == pos
    assert _at(LOCATE_TEXT, pos, len(starts)) == starts


def test_locator_key_positions_point_at_keys() -> None:
    locator = Locator(LOCATE_TEXT)
    assert locator.key(("global", "workers")) == (5, 1)
    assert locator.key(("a", "b", "c")) == (3, 1)
    assert locator.key(("a", "b")) == (3, 1)  # implicit table of a dotted key
    assert locator.key(("global", "arr", 2, "y")) == (12, 11)
    assert locator.has_value(("global", "workers")) and not locator.has_value(("global",))


def test_locator_handles_crlf_and_unicode_columns() -> None:
    text = '[global]\r\nlog_level = "é"\r\nworkers = 2\r\n'
    assert tomllib.loads(text)["global"]["workers"] == 2
    locator = Locator(text)
    assert locator.value(("global", "log_level")) == (2, 13)
    assert locator.value(("global", "workers")) == (3, 11)
    text = 'a = "ü" ; b = 1'.replace(" ; ", "\n")
    assert Locator(text).value(("b",)) == (2, 5)


@pytest.mark.parametrize("junk", ["[", "a = ", "[[a]", 'a = "x', "a = [1,", "= 3", "a = {b = 1",
                                  "\x00", "a = '''x", "[a\n", ""])
def test_locator_never_raises_on_invalid_text(junk: str) -> None:
    locator = Locator(junk)
    assert locator.value(("a", "b")) >= (1, 1)


# ---------------------------------------------------------------- helpers


def test_suggest_is_case_insensitive_and_conservative() -> None:
    assert suggest("INFO", ["debug", "info"]) == "info"
    assert suggest("schedular", ["scheduler", "name"]) == "scheduler"
    assert suggest("zzz", ["scheduler", "name"]) is None


def test_primes() -> None:
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert is_prime(65537) and is_prime(1_000_003) and not is_prime(65536)
    assert nearest_primes(65536) == [65521, 65537] and nearest_primes(1) == [2]


def test_describe_names_toml_types() -> None:
    doc = tomllib.loads('a = 1\nb = 1.5\nc = true\nd = "x"\ne = []\nf = {}\n'
                        "g = 1979-05-27T07:32:00Z\nh = 1979-05-27\ni = 07:32:00\nj = inf\n")
    assert [describe(v) for v in doc.values()] == [
        "an integer (1)", "a float (1.5)", "a boolean (true)", 'a string ("x")', "an array",
        "a table", "a date-time", "a date", "a time", "a float (inf)",
    ]
    assert describe("x" * 100) == f'a string ("{"x" * 40}...")'


def test_syntax_errors_move_tomllib_positions_into_the_prefix() -> None:
    for text, expected in [
        ("a = 1\nb = \n", "f.toml:2:5: error: Invalid value"),
        ('a = "x', "f.toml:1:7: error: Unterminated string"),
        ("a = [1,\n\n", "f.toml:1:8: error: Invalid value"),
    ]:
        with pytest.raises(tomllib.TOMLDecodeError) as info:
            tomllib.loads(text)
        assert str(syntax_diagnostic(text, "f.toml", info.value)) == expected
