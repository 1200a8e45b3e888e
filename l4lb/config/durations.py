"""Parse and format duration strings such as "500ms", "3s", "5m", "1h" and "1m30s".

A duration is one or more parts, each a whole number followed by a unit, units from largest to
smallest and each at most once: `h` (hours), `m` (minutes), `s` (seconds), `ms` (milliseconds).
No spaces, signs or fractions. The result is a whole number of milliseconds, which is the unit the
forwarding table carries. Errors are `ValueError`s whose text is ready for a diagnostic.
"""

from __future__ import annotations

import re
from decimal import Decimal

from l4lb.config.errors import quote

UNITS_MS: dict[str, int] = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
_UNIT_ORDER = ("h", "m", "s", "ms")
_PART = re.compile(r"([0-9]+)(ms|h|m|s)")
_MAX_LEN = 64  # longer than any sensible duration; keeps int() and the message short
_HELP = 'write a whole number with a unit (h, m, s, ms), e.g. "500ms", "3s" or "1m30s"'


def parse_duration_ms(text: str) -> int:
    """The duration `text` in milliseconds; ValueError with a readable reason if it is not one."""
    if text == "":
        raise ValueError(f"empty duration: {_HELP}")
    if len(text) > _MAX_LEN:
        raise ValueError(f"duration {quote(text[:_MAX_LEN])}... is far too long")
    if re.fullmatch(r"[0-9]+", text):
        n = int(text)
        raise ValueError(f'duration {quote(text)} has no unit: write "{n}s" or "{n}ms"')
    if text.startswith("-"):
        raise ValueError(f"duration {quote(text)} is negative")
    fraction = re.fullmatch(r"([0-9]*\.[0-9]+)(ms|h|m|s)", text)
    if fraction is not None:
        ms = Decimal(fraction.group(1)) * UNITS_MS[fraction.group(2)]
        if ms == ms.to_integral_value() and ms > 0:
            hint = f'write "{suggest_duration(int(ms))}"'
        else:
            hint = "durations are whole milliseconds"
        raise ValueError(f"duration {quote(text)} has a fraction: {hint}")
    total = 0
    pos = 0
    last_unit = -1
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            raise ValueError(f"invalid duration {quote(text)}: {_HELP}")
        unit_index = _UNIT_ORDER.index(match.group(2))
        if unit_index <= last_unit:
            raise ValueError(
                f"invalid duration {quote(text)}: units must go from largest to smallest "
                "(h, m, s, ms), each at most once"
            )
        last_unit = unit_index
        total += int(match.group(1)) * UNITS_MS[match.group(2)]
        pos = match.end()
    return total


def format_duration_ms(ms: int) -> str:
    """The shortest canonical text for `ms` milliseconds: 90000 -> "1m30s", 0 -> "0s"."""
    if ms < 0:
        raise ValueError("a duration cannot be negative")
    if ms == 0:
        return "0s"
    parts = []
    for unit in _UNIT_ORDER:
        count, ms = divmod(ms, UNITS_MS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def suggest_duration(ms: int) -> str:
    """How to write `ms` in a hint: "1500ms" rather than "1s500ms", "1m30s" for whole seconds."""
    return format_duration_ms(ms) if ms % 1000 == 0 else f"{ms}ms"
