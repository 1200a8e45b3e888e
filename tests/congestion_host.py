"""This host's TCP congestion control, as the congestion-control tests need it: the sysctls, an
algorithm other than the default, and what `ss` says each socket uses."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

SYSCTL = Path("/proc/sys/net/ipv4")
SS_TIMEOUT = 5.0  # seconds for one ss run


def sysctl_words(name: str) -> list[str]:
    """The words of one net.ipv4 sysctl (e.g. tcp_available_congestion_control)."""
    return (SYSCTL / name).read_text().split()


def system_default() -> str:
    """net.ipv4.tcp_congestion_control."""
    return (SYSCTL / "tcp_congestion_control").read_text().strip()


def other_algorithm() -> str:
    """An algorithm this kernel has and this process may set, other than the system default
    (skips the test when there is none)."""
    default = system_default()
    for name in ("cubic", "reno", *sysctl_words("tcp_available_congestion_control")):
        if name == default:
            continue
        with socket.socket() as probe:
            try:
                probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())
            except OSError:
                continue
        return name
    pytest.skip(f"no congestion control other than the default ({default}) is usable here")


def unprivileged_forbidden_algorithm() -> str:
    """An algorithm this kernel has that a process without CAP_NET_ADMIN may not set (skips the
    test when there is none, or when this process cannot start an unprivileged child)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start an unprivileged child")
    allowed = set(sysctl_words("tcp_allowed_congestion_control"))
    restricted = [n for n in sysctl_words("tcp_available_congestion_control")
                  if n not in allowed]
    if not restricted:
        pytest.skip("every available algorithm is allowed to everyone on this host")
    return restricted[0]


def ss_algorithms(filter_expr: str) -> list[str]:
    """The congestion control name of every established TCP socket ss finds for filter_expr."""
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    known = set(sysctl_words("tcp_available_congestion_control"))
    out = subprocess.run(["ss", "-tinH", "state", "established", filter_expr],
                         capture_output=True, text=True, check=True, timeout=SS_TIMEOUT).stdout
    found: list[str] = []
    for line in out.splitlines():
        if not line[:1].isspace():
            continue  # the address line; the info line that follows is indented
        names = [word for word in line.split() if word in known]
        assert names, f"no congestion control name in ss output: {line!r}"
        found.append(names[0])
    return found
