"""A stand-in for l4lb.config.host.THIS_HOST: answers a test chooses, and the questions asked."""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from l4lb.config.host import THIS_HOST


@dataclass
class FakeHost:
    """Answers l4lb.config.host.HostChecks from its fields and records every question."""

    dirs: set[str] = field(default_factory=set)  # existing directories
    raw_error: str | None = None  # why no raw socket opens (None: it opens)
    cc: dict[str, int] = field(default_factory=dict)  # algorithm -> errno (0: usable)
    sysctls: dict[str, list[str]] = field(default_factory=dict)  # net.ipv4 sysctl -> words
    transparent: int = 0  # errno of setting IP(V6)_TRANSPARENT (0: allowed)
    asked: list[str] = field(default_factory=list)  # questions, e.g. "cc cubic", "raw"
    programs: dict[str, str | None] = field(default_factory=dict)  # path -> problem (None: ok)
    users: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (uid, gid)
    files: dict[str, str | None] = field(default_factory=dict)  # path -> problem (None: ok)
    tls: tuple[str, str] | None = None  # the answer to every tls_problem question

    def dir_exists(self, path: str) -> bool:
        self.asked.append(f"dir {path}")
        return path in self.dirs

    def raw_socket_error(self) -> str | None:
        self.asked.append("raw")
        return self.raw_error

    def congestion_control_errno(self, name: str) -> int:
        self.asked.append(f"cc {name}")
        return self.cc.get(name, errno.ENOENT)

    def ipv4_sysctl_words(self, name: str) -> list[str]:
        return list(self.sysctls.get(name, []))

    def transparent_errno(self, version: int) -> int:
        self.asked.append(f"transparent {version}")
        return self.transparent

    def program_problem(self, path: str, user: tuple[int, int] | None = None) -> str | None:
        self.asked.append(f"program {path}")
        return self.programs.get(path, "no such file or directory")

    def user_ids(self, name: str) -> tuple[int, int] | None:
        self.asked.append(f"user {name}")
        return self.users.get(name)

    def file_problem(self, path: str) -> str | None:
        self.asked.append(f"file {path}")
        return self.files.get(path, "no such file or directory")

    def tls_problem(self, settings: Any) -> tuple[str, str] | None:
        self.asked.append("tls")
        return self.tls


class ExampleHost:
    """This machine's answers, except that it always has the `eth0` (IPv4 and link-local IPv6)
    and the backend-side `eth1` that the shipped examples and the golden files name, the check
    programs the examples install (conf/examples/check-pg and check-pg-dynamic, in
    /usr/local/bin), and may set IP_TRANSPARENT (unless told otherwise), so they load on any
    test host."""

    ETH0 = (ipaddress.ip_interface("192.0.2.2/24"), ipaddress.ip_interface("fe80::2/64"))
    ETH1 = (ipaddress.ip_interface("10.2.0.2/24"),)
    PROGRAMS = ("/usr/local/bin/check-pg", "/usr/local/bin/check-pg-dynamic")
    # the files of conf/examples/https-backends.toml (a CA and a client certificate)
    TLS_FILES = ("/etc/l4lb/tls/backend-ca.pem", "/etc/l4lb/tls/l4lb-client.pem",
                 "/etc/l4lb/tls/l4lb-client.key")

    def __init__(self, transparent: int = 0) -> None:
        # errno of setting IP(V6)_TRANSPARENT: allowed unless a case says otherwise, so that
        # `source = "client"` loads on a test host without CAP_NET_ADMIN too
        self.transparent = transparent

    def transparent_errno(self, version: int) -> int:
        return self.transparent

    def __getattr__(self, name: str) -> Any:
        return getattr(THIS_HOST, name)

    def interfaces(self) -> Mapping[str, tuple[Any, ...]] | None:
        return {**(THIS_HOST.interfaces() or {}), "eth0": self.ETH0, "eth1": self.ETH1}

    def program_problem(self, path: str, user: tuple[int, int] | None = None) -> str | None:
        return None if path in self.PROGRAMS else THIS_HOST.program_problem(path, user)

    def file_problem(self, path: str) -> str | None:
        return None if path in self.TLS_FILES else THIS_HOST.file_problem(path)

    def tls_problem(self, settings: Any) -> tuple[str, str] | None:
        files = (settings.tls_ca_file, settings.tls_client_cert, settings.tls_client_key)
        if any(f in self.TLS_FILES for f in files):
            return None  # stand-ins: the example's files are not on the test host
        return THIS_HOST.tls_problem(settings)
