"""Parse "IP:port" address strings into Endpoints, with messages that say how to fix them.

Accepted: IPv4 `a.b.c.d:port` and IPv6 `[addr]:port`, port 1..65535. Refused, each with its own
message: host names (the balancer never resolves names), IPv6 without brackets, brackets around
IPv4, zone indices (`%eth0`), IPv4-mapped IPv6 (write the IPv4 form), multicast and broadcast
addresses, and — for backends only — the wildcard addresses 0.0.0.0 and ::.
Errors are `ValueError`s whose text is ready for a diagnostic.
"""

from __future__ import annotations

import ipaddress
import re

from l4lb.config.errors import quote as _quote
from l4lb.config.model import Endpoint

_PORT = re.compile(r"[0-9]+")
_IPV4_LIKE = re.compile(r"[0-9.]+")


def parse_endpoint(text: str, *, wildcard_ok: bool) -> Endpoint:
    """`text` as an Endpoint; `wildcard_ok` allows 0.0.0.0 and :: (listen addresses)."""
    if text == "":
        raise ValueError('empty address: write "IP:PORT", e.g. "127.0.0.1:9001" or "[::1]:9001"')
    if any(c.isspace() for c in text):
        raise ValueError("an address cannot contain whitespace")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError('missing "]" after the IPv6 address')
        host, rest = text[1:close], text[close + 1:]
        if rest == "":
            _parse_host(host, bracketed=True)
            raise ValueError(f"missing port: write {_quote(f'[{host}]:PORT')}")
        if not rest.startswith(":"):
            raise ValueError('expected ":PORT" after "]"')
        port_text = rest[1:]
        bracketed = True
    else:
        if text.count(":") > 1:
            head, tail = text.rsplit(":", 1)
            if _is_ipv6(head) and _PORT.fullmatch(tail):
                hint = _quote(f"[{head}]:{tail}")
                raise ValueError(f"an IPv6 address must be in brackets: write {hint}")
            if _is_ipv6(text):
                raise ValueError(f"missing port: write {_quote(f'[{text}]:PORT')}")
            raise ValueError('an IPv6 address must be in brackets, e.g. "[::1]:9001"')
        if ":" not in text:
            _parse_host(text, bracketed=False)
            raise ValueError(f"missing port: write {_quote(text + ':PORT')}")
        host, port_text = text.rsplit(":", 1)
        bracketed = False
    ip = _parse_host(host, bracketed)
    port = _parse_port(port_text)
    if ip.is_multicast:
        raise ValueError("a multicast address cannot be used")
    if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"):
        raise ValueError("the broadcast address cannot be used")
    if ip.is_unspecified and not wildcard_ok:
        raise ValueError(
            f"{_quote(str(ip))} is the wildcard address: a backend needs a real IP address"
        )
    return Endpoint(host=str(ip), port=port, text=text)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _parse_host(host: str, bracketed: bool) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if host == "":
        raise ValueError("missing IP address before the port")
    if bracketed:
        if "%" in host:
            zone = host[host.index("%"):]
            raise ValueError(f"zone index {_quote(zone)} is not supported")
        try:
            v6 = ipaddress.IPv6Address(host)
        except ValueError:
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(
                    f"{_quote(host)} is not a valid IPv6 address"
                ) from None
            raise ValueError(
                f"brackets are only for IPv6: write {_quote(host + ':PORT')}"
            ) from None
        if v6.ipv4_mapped is not None:
            raise ValueError(
                "an IPv4-mapped IPv6 address cannot be used: "
                f'write "{v6.ipv4_mapped}:PORT"'
            )
        return v6
    if not _IPV4_LIKE.fullmatch(host):
        raise ValueError(
            f"{_quote(host)} is not an IP address (host names are not resolved: "
            "use an IP address)"
        )
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(
            f"{_quote(host)} is not a valid IPv4 address"
        ) from None


def _parse_port(port_text: str) -> int:
    if port_text == "":
        raise ValueError("missing port after the colon")
    if not _PORT.fullmatch(port_text):
        raise ValueError(f"invalid port {_quote(port_text)}")
    digits = port_text.lstrip("0") or "0"
    if len(digits) > 5 or not 1 <= int(digits) <= 65535:
        raise ValueError(f"port {digits} out of range (1..65535)")
    port = int(digits)
    return port
