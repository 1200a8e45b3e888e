"""Map a key path of a parsed TOML document to the line:col where it is written.

`tomllib` returns plain dicts without positions, so this module scans the source text a second
time and records, for every key path, where its key and where its value start. A key path is a
tuple such as `("services", 0, "backends", 1, "address")`: strings for keys, ints for array
elements, whether the array is an array of tables (`[[services]]`) or an inline array.

What is understood: comments; table headers `[a.b]` and array-of-tables headers `[[a.b]]`
(indices counted per parent element, so `[[services.backends]]` restarts at 0 under every
`[[services]]`); `key = value` lines with bare, quoted and dotted keys; values that are strings of
all four kinds, inline tables and (multi-line) arrays, nested to any depth; other scalars are
skipped up to the next delimiter.

The scanner is meant for text that `tomllib` has already accepted, but it never raises: on
anything it does not understand it stops and keeps what it found so far. Queries then fall back
to the nearest enclosing path that was found, and finally to 1:1.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import tomllib

KeyPath = tuple[str | int, ...]
Position = tuple[int, int]  # (line, col), both 1-based

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]}#\n]+")  # numbers, booleans, dates: up to the next delimiter
_SPACES = re.compile(r"[ \t]*")
_BLANK = re.compile(r"(?:[ \t\r\n]+|#[^\n]*)*")  # spaces, line breaks and comments
_STRINGS = {  # a string of each kind, from its opening quote to just past its closing one
    '"""': re.compile(r'"""(?:[^"\\]|\\.|"(?!""))*"""(?:"{1,2}(?!"))?', re.S),
    "'''": re.compile(r"'''(?:[^']|'(?!''))*'''(?:'{1,2}(?!'))?"),
    '"': re.compile(r'"(?:[^"\\\n]|\\.)*"'),
    "'": re.compile(r"'[^'\n]*'"),
}


class _StopScan(Exception):
    """The text is not in a shape the scanner understands; keep what was found so far."""


class Locator:
    """Positions of the keys and values of one TOML text."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self._keys: dict[KeyPath, int] = {}  # key path -> offset of its key or table header
        self._values: dict[KeyPath, int] = {}  # key path -> offset of its value
        self._aot_count: dict[KeyPath, int] = {}  # array-of-tables path -> elements so far
        self._i = 0
        with contextlib.suppress(_StopScan):
            self._scan_document()

    # ---------------------------------------------------------------- queries

    def position(self, offset: int) -> Position:
        """1-based (line, col) of a character offset into the text."""
        line = bisect.bisect_right(self._line_starts, offset) - 1
        return (line + 1, offset - self._line_starts[line] + 1)

    def key(self, path: KeyPath) -> Position:
        """Where the key (or table header) of `path` is written; else its value; else a parent's."""
        for n in range(len(path), 0, -1):
            prefix = path[:n]
            offset = self._keys.get(prefix, self._values.get(prefix))
            if offset is not None:
                return self.position(offset)
        return (1, 1)

    def value(self, path: KeyPath) -> Position:
        """Where the value of `path` starts; else where its key is; else a parent's position."""
        offset = self._values.get(path)
        if offset is not None:
            return self.position(offset)
        return self.key(path)

    def has_value(self, path: KeyPath) -> bool:
        """Whether the scanner found a value written for exactly this path."""
        return path in self._values

    # ---------------------------------------------------------------- scanning

    def _peek(self, ahead: int = 0) -> str:
        j = self._i + ahead
        return self._text[j] if j < len(self._text) else ""

    def _skip_blank(self, newlines: bool) -> None:
        """Skip spaces and tabs; with `newlines`, also line breaks and comments."""
        match = (_BLANK if newlines else _SPACES).match(self._text, self._i)
        if match is not None:
            self._i = match.end()

    def _skip_comment(self) -> None:
        end = self._text.find("\n", self._i)
        self._i = len(self._text) if end < 0 else end

    def _end_of_line(self) -> None:
        """After a header or key/value: only blanks and a comment may follow on the line."""
        self._skip_blank(newlines=False)
        if self._peek() == "#":
            self._skip_comment()
        if self._peek() == "\r":
            self._i += 1
        if self._peek() not in ("\n", ""):
            raise _StopScan
        if self._peek() == "\n":
            self._i += 1

    def _scan_document(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip_blank(newlines=True)
            if self._i >= len(self._text):
                return
            start = self._i
            if self._peek() == "[" and self._peek(1) == "[":
                self._i += 2
                keys = self._scan_key()
                self._expect("]")
                self._expect("]")
                array = (*self._resolve(keys[:-1]), keys[-1])
                index = self._aot_count.get(array, 0)
                self._aot_count[array] = index + 1
                table = (*array, index)
                self._keys.setdefault(array, start)
                self._keys[table] = start
            elif self._peek() == "[":
                self._i += 1
                keys = self._scan_key()
                self._expect("]")
                table = self._resolve(keys)
                self._keys.setdefault(table, start)
            else:
                self._scan_keyval(table)
            self._end_of_line()

    def _resolve(self, keys: KeyPath) -> KeyPath:
        """A header's dotted key as a path; an array of tables on the way means its last element."""
        path: KeyPath = ()
        for key in keys:
            path = (*path, key)
            count = self._aot_count.get(path)
            if count:
                path = (*path, count - 1)
        return path

    def _expect(self, char: str) -> None:
        self._skip_blank(newlines=False)
        if self._peek() != char:
            raise _StopScan
        self._i += 1

    def _scan_key(self) -> KeyPath:
        """A possibly dotted key; leaves the position after its last part."""
        parts: list[str | int] = []
        while True:
            self._skip_blank(newlines=False)
            c = self._peek()
            if c in ('"', "'"):
                start = self._i
                self._skip_string()
                parts.append(self._decode_string(self._text[start:self._i]))
            else:
                match = _BARE_KEY.match(self._text, self._i)
                if match is None:
                    raise _StopScan
                parts.append(match.group())
                self._i = match.end()
            self._skip_blank(newlines=False)
            if self._peek() != ".":
                return tuple(parts)
            self._i += 1

    @staticmethod
    def _decode_string(token: str) -> str:
        """The value of a quoted key, decoded by tomllib itself (escapes and all)."""
        try:
            value = tomllib.loads("k = " + token)["k"]
        except tomllib.TOMLDecodeError:
            raise _StopScan from None
        if not isinstance(value, str):
            raise _StopScan
        return value

    def _scan_keyval(self, table: KeyPath) -> None:
        start = self._i
        keys = self._scan_key()
        self._expect("=")
        self._skip_blank(newlines=False)
        path = table + keys
        for n in range(1, len(keys)):
            self._keys.setdefault(table + keys[:n], start)
        self._keys[path] = start
        self._scan_value(path)

    def _scan_value(self, path: KeyPath) -> None:
        self._values[path] = self._i
        c = self._peek()
        if c in ('"', "'"):
            self._skip_string()
        elif c == "{":
            self._scan_inline_table(path)
        elif c == "[":
            self._scan_array(path)
        else:
            match = _SCALAR.match(self._text, self._i)
            if match is None:
                raise _StopScan
            self._i = match.end()

    def _scan_inline_table(self, path: KeyPath) -> None:
        self._i += 1  # "{"
        self._skip_blank(newlines=True)
        if self._peek() == "}":
            self._i += 1
            return
        while True:
            self._skip_blank(newlines=True)
            self._scan_keyval(path)
            self._skip_blank(newlines=True)
            c = self._peek()
            self._i += 1
            if c == "}":
                return
            if c != ",":
                raise _StopScan

    def _scan_array(self, path: KeyPath) -> None:
        self._i += 1  # "["
        index = 0
        while True:
            self._skip_blank(newlines=True)
            if self._peek() == "]":
                self._i += 1
                return
            self._scan_value((*path, index))
            index += 1
            self._skip_blank(newlines=True)
            c = self._peek()
            self._i += 1
            if c == "]":
                return
            if c != ",":
                raise _StopScan

    def _skip_string(self) -> None:
        """Skip one string of any of the four kinds, starting at its opening quote."""
        text = self._text
        quote = text[self._i]
        kind = quote * 3 if text.startswith(quote * 3, self._i) else quote
        match = _STRINGS[kind].match(text, self._i)
        if match is None:
            raise _StopScan
        self._i = match.end()
