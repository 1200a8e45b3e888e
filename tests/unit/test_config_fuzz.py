"""Property tests of the configuration compiler: junk never raises anything but ConfigError, every
diagnostic points inside the text, and the locator finds every value a TOML writer put down."""

from __future__ import annotations

import datetime
import math
import re
import tomllib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l4lb.config import Config, ConfigError, load_text
from l4lb.config.locate import Locator
from l4lb.config.validate import BACKEND_KEYS, GLOBAL_KEYS, SERVICE_KEYS

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID = """\
[global]
workers = 2
shutdown_timeout = "3s"

[[services]]
name = "web"
listen = ["127.0.0.1:8080", "[::1]:8080"]
scheduler = "maglev"
maglev_table_size = 251
connect_timeout = "1s"

  [[services.backends]]
  address = "127.0.0.1:9001"
  weight = 2

  [[services.backends]]
  address = "127.0.0.1:9002"
  name = "second"
"""

PLAUSIBLE = [
    "3s", "0s", "1m30s", "500ms", "1.5s", "3", "127.0.0.1:80", "[::1]:80", "0.0.0.0:80",
    "localhost:80", "10.0.0.1:70000", "maglev", "round_robin", "tcp", "udp", "info", "json",
    "src_ip", "web", "", "/tmp/x.sock",
]

# ---------------------------------------------------------------- a small TOML writer

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def toml_string(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_key(k: str) -> str:
    return k if _BARE.fullmatch(k) else toml_string(k)


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def emit(doc: dict[str, Any], header_backends: bool) -> str:
    """The document as TOML: [global] and [[services]] as headers, everything else inline."""
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items()
             if k not in ("global", "services")]
    if isinstance(doc.get("global"), dict):
        lines.append("[global]")
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc["global"].items()]
    for svc in doc.get("services", []):
        lines.append("[[services]]")
        backends = svc.get("backends")
        as_headers = header_backends and isinstance(backends, list) and all(
            isinstance(b, dict) for b in backends)
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in svc.items()
                  if not (as_headers and k == "backends")]
        if as_headers:
            for b in backends:
                lines.append("  [[services.backends]]")
                lines += [f"  {toml_key(k)} = {toml_value(v)}" for k, v in b.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- strategies

_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.integers(-3, 300), st.floats(), st.booleans(), _text,
    st.sampled_from(PLAUSIBLE), st.just(datetime.date(1979, 5, 27)),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=6,
)


def _table(keys: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    key = st.one_of(st.sampled_from(keys), st.sampled_from(keys).map(lambda k: k[:-1]), _text)
    return st.dictionaries(key, _values, max_size=len(keys))


_backend = _table(BACKEND_KEYS)
_service = st.tuples(_table(SERVICE_KEYS), st.one_of(st.lists(_backend, max_size=3), _values)).map(
    lambda t: {**t[0], "backends": t[1]})
_document = st.fixed_dictionaries(
    {},
    optional={"global": _table(GLOBAL_KEYS), "services": st.lists(_service, max_size=3),
              "junk": _values},
)


Path = tuple[str | int, ...]


def _leaves(value: object, path: Path) -> list[tuple[Path, object]]:
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, (*path, k))]
    if isinstance(value, list) and value:
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, (*path, i))]
    return [(path, value)]


def _load_checked(text: str) -> None:
    """load_text returns a Config or raises ConfigError whose positions all lie inside the text."""
    try:
        config = load_text(text, "fuzz.toml")
    except ConfigError as exc:
        assert exc.diagnostics
        lines = text.split("\n")
        for d in exc.diagnostics:
            assert d.file == "fuzz.toml" and d.severity == "error" and d.message
            assert 1 <= d.line <= len(lines), d
            assert 1 <= d.col <= len(lines[d.line - 1]) + 1, d
        assert str(exc).splitlines()[-1].endswith(("error", "errors"))
        return
    assert isinstance(config, Config)


# ---------------------------------------------------------------- properties


@FUZZ
@given(st.text(max_size=200))
def test_random_text_raises_only_config_error(text: str) -> None:
    _load_checked(text)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID)), st.integers(0, 2),
                          st.sampled_from(list('[]{}="\',.#\n 0:sx'))), min_size=1, max_size=4))
def test_mutated_config_raises_only_config_error(edits: list[tuple[int, int, str]]) -> None:
    text = VALID
    for pos, kind, char in edits:
        pos = min(pos, len(text))
        if kind == 0:
            text = text[:pos] + char + text[pos:]
        elif kind == 1:
            text = text[:pos] + text[pos + 1:]
        else:
            text = text[:pos] + char + text[pos + 1:]
    _load_checked(text)


@FUZZ
@given(_document, st.booleans())
def test_generated_documents_validate_without_crashing(doc: dict[str, Any],
                                                       header_backends: bool) -> None:
    text = emit(doc, header_backends)
    tomllib.loads(text)  # the writer produces valid TOML
    _load_checked(text)


@FUZZ
@given(_document, st.booleans())
def test_locator_finds_every_written_value(doc: dict[str, Any], header_backends: bool) -> None:
    text = emit(doc, header_backends)
    parsed = tomllib.loads(text)
    locator = Locator(text)
    lines = text.split("\n")
    for path, value in _leaves(parsed, ()):
        if not path:
            continue
        line, col = locator.value(path)
        literal = toml_value(value)
        assert lines[line - 1][col - 1:].startswith(literal), (path, literal, line, col)
