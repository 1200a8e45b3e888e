"""Turn configuration text into a Config: TOML parsing, position lookup, then validation.

`load_text` is pure apart from the questions it asks of the host through its `host` argument
(l4lb.config.host: the connection log's directory, a raw socket for SYN probes, the congestion
control algorithms, net.ipv4.tcp_fastopen): this host by default, None to skip them.
`load_file` reads the file and calls it; reading errors (missing file, permissions) propagate as
OSError so the caller can word them; text that is not UTF-8 is a ConfigError pointing at the
first bad byte. TOML syntax errors become one diagnostic each, with the line and column
`tomllib` names in its message (moved from the message to the position).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tomllib
from collections.abc import Collection

from l4lb.config.errors import ConfigError, Diagnostic
from l4lb.config.host import THIS_HOST, HostChecks
from l4lb.config.locate import Locator
from l4lb.config.model import Config
from l4lb.config.validate import validate
from l4lb.vrrp.settings import VrrpSettings

_TOMLLIB_POSITION = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)\s*$")


def _end_position(text: str) -> tuple[int, int]:
    """Just after the last character that is not blank (so never on an empty last line)."""
    body = text.rstrip()
    line = body.count("\n") + 1
    return line, len(body) - (body.rfind("\n") + 1) + 1


def syntax_diagnostic(text: str, file: str, exc: tomllib.TOMLDecodeError) -> Diagnostic:
    """A tomllib error as a diagnostic: its message without the "(at line L, column C)" tail."""
    message = str(exc)
    match = _TOMLLIB_POSITION.search(message)
    if match is None:
        return Diagnostic(file, 1, 1, "error", message)
    message = message[:match.start()]
    if match.group(1) is not None:
        line, col = int(match.group(1)), int(match.group(2))
    else:
        line, col = _end_position(text)
    return Diagnostic(file, line, col, "error", message)


def load_text(text: str, path: str = "<string>",
              host: HostChecks | None = THIS_HOST,
              running_vrrp: Collection[VrrpSettings] = ()) -> Config:
    """Parse and validate configuration `text`; `path` names it in messages and in Config.path.

    `host` answers what the configuration asks of the host (None: those checks are skipped);
    `running_vrrp`: a reload's running [[vrrp]] instances, whose unchanged tables are not
    checked against the host again."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([syntax_diagnostic(text, path, exc)]) from None
    result = validate(doc, Locator(text), path, host, running_vrrp)
    if isinstance(result, Config):
        return result
    raise ConfigError(result)


def load_file(path: str, running_vrrp: Collection[VrrpSettings] = ()) -> Config:
    """Read `path` (UTF-8) and load it; OSError if it cannot be read or is not a regular file
    (a FIFO would block the reader, a reload included, until someone writes to it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        good = data[:exc.start].decode("utf-8")
        line = good.count("\n") + 1
        col = len(good) - (good.rfind("\n") + 1) + 1
        bad = data[exc.start:exc.start + 1].hex()
        raise ConfigError([Diagnostic(path, line, col, "error",
                                      f"not UTF-8 text (byte 0x{bad})")]) from None
    return load_text(text, path, running_vrrp=running_vrrp)
