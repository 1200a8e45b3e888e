"""Set up the control plane's logging: text or JSON lines on stderr, subject first.

Messages name their subject first (`service web: listening on 127.0.0.1:8080`); the data plane
never logs, it counts. JSON lines carry time, level, logger and message.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, sort_keys=False)


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of a log_format value: "json" or "text"."""
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)-7s %(message)s")


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger once (replaces earlier handlers)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level, logging.INFO))


def set_log_format(fmt: str) -> None:
    """Switch every handler of the root logger to fmt ("text" or "json"): a reload's log_format."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter(fmt))
