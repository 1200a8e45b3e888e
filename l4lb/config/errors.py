"""Configuration diagnostics: one problem with its position, and the exception carrying them all.

A `Diagnostic` renders compiler-style, `FILE:LINE:COL: error: MESSAGE` (line and column are
1-based; the column counts characters, a tab is one). A diagnostic with no position (line 0) renders
as `FILE: error: MESSAGE`. `ConfigError` holds every diagnostic of one load, sorted by position, and
its `str()` is one line per diagnostic followed by a summary line: `1 error` or `N errors`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]
KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a configuration file."""

    file: str  # the file name as given to the loader
    line: int  # 1-based; 0 when the problem has no position
    col: int  # 1-based, in characters; 0 when the problem has no position
    severity: Severity
    message: str  # the text after "error: ", already naming the key, e.g. "global.workers: ..."
    path: KeyPath = ()  # key path of the offending value, e.g. ("services", 0, "listen", 1)

    def sort_key(self) -> tuple[int, int]:
        """Diagnostics are reported in file order; position-less ones come first."""
        return (self.line, self.col)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line > 0 else self.file
        return f"{where}: {self.severity}: {self.message}"


def quote(text: str) -> str:
    """`text` in double quotes for a message; quotes, backslashes and control characters escaped."""
    return json.dumps(text, ensure_ascii=False)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary(diagnostics: list[Diagnostic]) -> str:
    """The last line of a report: `1 error`, `3 errors`, `2 errors, 1 warning`."""
    errors = sum(1 for d in diagnostics if d.severity == "error")
    warnings = len(diagnostics) - errors
    text = _count(errors, "error")
    if warnings:
        text += ", " + _count(warnings, "warning")
    return text


class ConfigError(Exception):
    """A configuration could not be loaded; `.diagnostics` lists every problem, in file order."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics: list[Diagnostic] = sorted(diagnostics, key=Diagnostic.sort_key)
        super().__init__(self.render())

    def render(self) -> str:
        """One line per diagnostic, then the summary line; no trailing newline."""
        lines = [str(d) for d in self.diagnostics]
        lines.append(summary(self.diagnostics))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[Diagnostic]]]:
        return (ConfigError, (self.diagnostics,))
