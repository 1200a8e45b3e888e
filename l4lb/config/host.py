"""What a configuration asks of the host it will run on, answered by this host or a stand-in.

Validation (l4lb.config.validate) is pure except for these questions, and it asks them only
through the object the caller passes: `THIS_HOST` (the loader's default, used by `l4lb check`,
start and reload) answers for this machine and this process's privileges, a test passes its
own, and None skips the questions altogether. Each answer is a fact, not a message: the wording
of every error stays in validate.py.
"""

from __future__ import annotations

import os
import socket
from typing import Protocol

from l4lb.health.synprobe import raw_socket_problem


class HostChecks(Protocol):
    """The questions validation may ask of a host."""

    def dir_exists(self, path: str) -> bool:
        """Whether `path` is an existing directory (connection_log's)."""

    def raw_socket_error(self) -> str | None:
        """Why this process cannot open a raw TCP socket (kind = "syn"), None when it can."""

    def congestion_control_errno(self, name: str) -> int:
        """0 when this process can set TCP congestion control `name`, else the errno of the
        attempt (ENOENT: the kernel lacks it; EPERM: not allowed for this process)."""

    def ipv4_sysctl_words(self, name: str) -> list[str]:
        """The words of /proc/sys/net/ipv4/<name>, [] when it cannot be read."""


class ThisHost:
    """The answers of this machine, for this process."""

    def dir_exists(self, path: str) -> bool:
        return os.path.isdir(path)

    def raw_socket_error(self) -> str | None:
        return raw_socket_problem()

    def congestion_control_errno(self, name: str) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())
            except OSError as exc:
                return exc.errno or -1
        return 0

    def ipv4_sysctl_words(self, name: str) -> list[str]:
        try:
            with open(f"/proc/sys/net/ipv4/{name}", "rb") as f:
                return f.read().decode("utf-8", "replace").split()
        except (OSError, ValueError):
            return []


THIS_HOST: HostChecks = ThisHost()
