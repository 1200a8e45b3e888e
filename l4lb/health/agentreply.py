"""Parse one reply of a backend's agent (HAProxy's `agent-check` grammar) into what it says.

Pure: bytes in, an `AgentReply` out; no I/O, no clock.

The agent answers one line, ended by the first CR or LF, read as UTF-8 (a byte that is not
valid UTF-8 reads as U+FFFD, so a reason in any script shows as written and a broken one
cannot fail the reply); its words are ASCII. Its words are separated by
spaces, tabs or commas, compared without regard to case, in any order, and the last word of
each category wins:

- a weight percentage, `75%`: the backend's weight becomes that share of its base weight
  (at most MAX_PERCENT; l4lb.health.dynamic caps the result at the table's 256);
- an admin word, `ready`, `drain` or `maint`;
- a health word, `up`, or `down`, `fail`, `stopped` (all three take the backend out);
- `maxconn:N`, the backend's connection limit as the agent sees it (0: the agent sets none;
  l4lb.health.dynamic combines it with the operator's, the stricter wins; at most MAX_MAXCONN);
- `#` ends the words: the rest of the line, stripped, is the reason shown with them.

A word of none of these kinds, a percentage that is not digits followed by one `%`, a line
longer than MAX_LINE bytes, or a reply that the agent closed before its newline makes the
whole reply malformed: `AgentReply.error` says why and the caller changes nothing (HAProxy
applies the words it knows and reports the first unknown one; l4lb does not act on half of a
line it could not read). An empty line is valid and says nothing, which changes nothing:
what an agent does not say stays as it was.

`scan(data, closed)` is for a reader that gets the reply in pieces: None while the line may
still be incomplete, else the parsed reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

AgentAdmin = Literal["ready", "drain", "maint"]
AgentHealth = Literal["up", "down", "fail", "stopped"]

MAX_LINE = 512  # bytes of a reply line, its end included; HAProxy reads up to its buffer size
MAX_MAXCONN = 2**32 - 1  # larger maxconn:N count as this (the forwarding table's field)
MAX_PERCENT = 25600  # larger percentages count as this (HAProxy's bound before the 256 cap)
REASON_CHARS = 120  # characters of the `#` reason kept
ADMIN_WORDS: tuple[AgentAdmin, ...] = ("ready", "drain", "maint")
HEALTH_WORDS: tuple[AgentHealth, ...] = ("up", "down", "fail", "stopped")
_SEPARATORS = re.compile(r"[ \t,]+")
_PERCENT = re.compile(r"([0-9]+)%")
_MAXCONN = re.compile(r"maxconn:([0-9]+)", re.IGNORECASE)
_SHOWN = 40  # characters of a bad word quoted in an error


@dataclass(frozen=True)
class AgentReply:
    """What one reply says. Fields the reply did not mention are None (they change nothing)."""

    text: str  # the line as received (printable, at most MAX_LINE characters), for display
    percent: int | None = None  # weight percentage, 0..MAX_PERCENT
    admin: AgentAdmin | None = None
    health: AgentHealth | None = None
    maxconn: int | None = None  # connection limit, 0..MAX_MAXCONN (0: none from the agent)
    reason: str = ""  # text after `#`, stripped
    error: str = ""  # not "": the reply is malformed and must be ignored

    @property
    def ok(self) -> bool:
        return not self.error

    def said(self) -> str:
        """What the reply says, normalized for a log line: `drain 50% (#window)`; "" for a
        reply that says nothing."""
        words: list[str] = [w for w in (self.admin, self.health) if w is not None]
        if self.percent is not None:
            words.append(f"{self.percent}%")
        if self.maxconn is not None:
            words.append(f"maxconn:{self.maxconn}")
        text = " ".join(words)
        if self.reason:
            text += f" (#{self.reason})" if text else f"#{self.reason}"
        return text


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def _shown(word: str) -> str:
    word = _printable(word)
    return repr(word if len(word) <= _SHOWN else word[:_SHOWN] + "...")


def parse_line(line: str) -> AgentReply:
    """One reply line (without its CR/LF) as an AgentReply."""
    shown = _printable(line)[:MAX_LINE]
    words_part, sharp, reason = line.partition("#")
    percent: int | None = None
    admin: AgentAdmin | None = None
    health: AgentHealth | None = None
    maxconn: int | None = None
    for word in _SEPARATORS.split(words_part):
        if not word:
            continue
        lower = word.lower()
        if lower in HEALTH_WORDS:
            health = HEALTH_WORDS[HEALTH_WORDS.index(lower)]
        elif lower in ADMIN_WORDS:
            admin = ADMIN_WORDS[ADMIN_WORDS.index(lower)]
        elif (m := _PERCENT.fullmatch(word)) is not None:
            percent = min(int(m.group(1)), MAX_PERCENT)
        elif (m := _MAXCONN.fullmatch(word)) is not None:
            maxconn = min(int(m.group(1)), MAX_MAXCONN)
        elif word[:1].isdigit():
            return AgentReply(shown, error=f"bad weight {_shown(word)} (write a whole "
                                           "percentage such as 75%)")
        else:
            return AgentReply(shown, error=f"unknown word {_shown(word)}")
    text = _printable(reason.strip())[:REASON_CHARS] if sharp else ""
    return AgentReply(shown, percent=percent, admin=admin, health=health, maxconn=maxconn,
                      reason=text)


def scan(data: bytes, closed: bool) -> AgentReply | None:
    """The reply in `data` (all bytes read so far): None while more may come (no line end
    yet, fewer than MAX_LINE bytes, the agent has not closed), else the parsed or malformed
    reply. Bytes after the first line are ignored."""
    end = len(data)
    for sep in (b"\n", b"\r"):
        at = data.find(sep)
        if at != -1:
            end = min(end, at)
    if end >= MAX_LINE or (end == len(data) and len(data) >= MAX_LINE):
        head = data[:MAX_LINE].decode("utf-8", "replace")
        return AgentReply(_printable(head)[:_SHOWN] + "...",
                          error=f"line longer than {MAX_LINE - 1} bytes")
    if end == len(data):  # no line end yet
        if not closed:
            return None
        if not data:
            return AgentReply("", error="closed without a reply")
        return AgentReply(_printable(data.decode("utf-8", "replace")),
                          error="incomplete line (the agent closed before its newline)")
    return parse_line(data[:end].decode("utf-8", "replace"))
