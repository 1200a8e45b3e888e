"""Expand the placeholders of an agent's `send` text for one backend.

Pure. `send` (of `[services.agent]`, or a backend's own `agent_send`) may name the backend it
is sent for, so that one agent polled for many backends (a shared `address` and one port)
can tell them apart: `{service}` (the service's name), `{name}` (the backend's name, its
address as written when it has none), `{address}` (the backend's IP address, without
brackets or port) and `{port}` (the backend's port). `{{` and `}}` stand for the braces
themselves. Any other placeholder, a format spec (`{port:5}`) or a lone brace is an error,
reported when the configuration is loaded (`problem`), never a literal sent by surprise.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

PLACEHOLDERS = ("service", "name", "address", "port")
_KNOWN = ", ".join("{" + p + "}" for p in PLACEHOLDERS)


def problem(template: str) -> str | None:
    """Why `template` cannot be expanded, or None when it can."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError:
        return f"a lone brace (placeholders are {_KNOWN}; write {{{{ and }}}} for a brace)"
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        shown = "{" + field + (f"!{conversion}" if conversion else "") + \
            (f":{spec}" if spec else "") + "}"
        if field not in PLACEHOLDERS:
            return f"unknown placeholder {shown} (known: {_KNOWN}; write {{{{ and }}}} for " \
                   "a brace)"
        if spec or conversion:
            return f"placeholder {shown} takes no format (write {{{field}}})"
    return None


def render(template: bytes, values: Mapping[str, str]) -> bytes:
    """`template` (UTF-8, checked by `problem`) with its placeholders replaced by `values`."""
    if b"{" not in template and b"}" not in template:
        return template
    return template.decode("utf-8").format_map(values).encode("utf-8")
