"""The configuration compiler: TOML text to validated frozen dataclasses, or compiler-style errors.

`load_file(path)` / `load_text(text, path)` return a `Config`; on any problem they raise
`ConfigError`, whose `.diagnostics` list every problem in file order and whose `str()` is the
report (`FILE:LINE:COL: error: MESSAGE` lines, then `N errors`). docs/configuration.md is the
reference for every key.
"""

from l4lb.config.errors import ConfigError, Diagnostic
from l4lb.config.load import load_file, load_text
from l4lb.config.model import (
    HASH_KEYS,
    SCHEDULERS,
    Backend,
    Config,
    Endpoint,
    GlobalSettings,
    HashKey,
    LogFormat,
    LogLevel,
    Protocol,
    Scheduler,
    Service,
)

__all__ = [
    "HASH_KEYS",
    "SCHEDULERS",
    "Backend",
    "Config",
    "ConfigError",
    "Diagnostic",
    "Endpoint",
    "GlobalSettings",
    "HashKey",
    "LogFormat",
    "LogLevel",
    "Protocol",
    "Scheduler",
    "Service",
    "load_file",
    "load_text",
]
