"""What a configuration asks of the host it will run on, answered by this host or a stand-in.

Validation (l4lb.config.validate) is pure except for these questions, and it asks them only
through the object the caller passes: `THIS_HOST` (the loader's default, used by `l4lb check`,
start and reload) answers for this machine and this process's privileges, a test passes its
own, and None skips the questions altogether. Each answer is a fact, not a message: the wording
of every error stays in validate.py.

The facts: whether a directory exists; why no raw socket opens; the errno of setting a TCP
congestion control; a net.ipv4 sysctl; the network interfaces of this namespace with their
addresses (for `[[vrrp]]` interface, source_address, track_interfaces and VIP devs); the errno
of binding a TCP socket to (address, 0), which is what a health probe with `source` does, and of
setting IP_TRANSPARENT / IPV6_TRANSPARENT on one (`source = "client"`); whether a path is a
program this process can run, and the user and group ids of a user name (a `kind = "exec"`
health check's command and command_user); whether a file can be read, and whether the files of
a check over TLS make a client context (a PEM CA file, a certificate and its key, a system CA
store to verify with). Where `ip_nonlocal_bind` lets any address bind
(common next to keepalived), the kernel's route for the address must also say it is local, so a
typo still fails as it does elsewhere.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import pwd
import socket
import stat
import struct
from collections.abc import Mapping
from typing import Protocol

from l4lb.health.settings import HealthSettings
from l4lb.health.synprobe import raw_socket_problem
from l4lb.health.tlscontext import context_problem
from l4lb.vrrp.settings import VipInterface

_IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: bind(address, 0) reserves no port until connect()
_SOL_IP, _SOL_IPV6 = 0, 41  # socket option levels
_IP_TRANSPARENT = 19  # linux/in.h: bind and send from an address not of this host
_IPV6_TRANSPARENT = 75  # linux/in6.h: the same for an IPv6 socket
_NLMSG_HDR = struct.Struct("=IHHII")  # struct nlmsghdr: length, type, flags, sequence, port id
_NLMSG_ERROR = 2  # linux/netlink.h message types and flags
_NLMSG_DONE = 3
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
_RTM_NEWADDR = 20  # linux/rtnetlink.h
_RTM_GETADDR = 22
_RTM_NEWROUTE = 24
_RTM_GETROUTE = 26
_RTA_DST = 1
_RTN_LOCAL = 2  # route type of an address of this host (the local table)
_IFA_ADDRESS = 1  # linux/if_addr.h attributes
_IFA_LOCAL = 2
_NETLINK_TIMEOUT = 2.0  # seconds; the kernel answers a dump at once


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

    def interfaces(self) -> Mapping[str, tuple[VipInterface, ...]] | None:
        """Every network interface of this namespace by name, with its addresses (kernel
        order, primary first); None when they cannot be listed."""

    def bind_errno(self, address: str) -> int:
        """0 when a TCP socket of this process can bind (address, 0), else the errno
        (EADDRNOTAVAIL: not an address of this host)."""

    def transparent_errno(self, version: int) -> int:
        """0 when this process can set IP_TRANSPARENT (version 4) / IPV6_TRANSPARENT (6) on a
        TCP socket of that family (what `source = "client"` does to every backend socket), else
        the errno (EPERM: neither CAP_NET_ADMIN nor CAP_NET_RAW)."""

    def program_problem(self, path: str, user: tuple[int, int] | None = None) -> str | None:
        """Why `path` is not a regular file this process may execute ("no such file or
        directory", "is a directory", "is not executable"); None when it is one. With `user`
        (uid, primary gid; command_user, which runs without supplementary groups), whether
        that user may: every directory above it searchable and the file executable by the
        user's permission bits ("is not executable by that user", "is not reachable by that
        user (...)")."""

    def user_ids(self, name: str) -> tuple[int, int] | None:
        """(uid, primary gid) of user `name`; None when there is no such user."""

    def file_problem(self, path: str) -> str | None:
        """Why this process cannot read `path` as a regular file ("no such file or
        directory", "is a directory", "permission denied"); None when it can."""

    def tls_problem(self, settings: HealthSettings) -> tuple[str, str] | None:
        """(key, problem) when the files and settings of a check over TLS make no client
        context ("holds no PEM certificate", "is not the key of tls_client_cert", key
        "tls_verify": no CA certificates in the system store); None when they do."""


def _permits(st: os.stat_result, uid: int, gid: int) -> bool:
    """Whether the permission bits of `st` give user uid with the only group gid execute
    (search, for a directory) permission; root needs one x bit. ACLs are not read."""
    if uid == 0:
        return bool(st.st_mode & 0o111)
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


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


    def interfaces(self) -> Mapping[str, tuple[VipInterface, ...]] | None:
        try:
            names = dict(socket.if_nameindex())
            found: dict[str, list[VipInterface]] = {name: [] for name in names.values()}
            for index, address in _netlink_addresses():
                if index in names:
                    found[names[index]].append(address)
        except (OSError, ValueError, struct.error):
            return None
        return {name: tuple(addresses) for name, addresses in found.items()}

    def bind_errno(self, address: str) -> int:
        ip = ipaddress.ip_address(address)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                probe.bind((address, 0))
            except OSError as exc:
                return exc.errno or errno.EINVAL
        if _nonlocal_bind(ip.version):  # the bind proves nothing: ask the routing table
            try:
                if not _route_is_local(ip):
                    return errno.EADDRNOTAVAIL
            except (OSError, ValueError, struct.error):
                pass  # cannot tell: the bind's answer stands
        return 0

    def program_problem(self, path: str, user: tuple[int, int] | None = None) -> str | None:
        try:
            st = os.stat(path)
        except OSError as exc:
            return (exc.strerror or str(exc)).lower()
        if stat.S_ISDIR(st.st_mode):
            return "is a directory"
        if not stat.S_ISREG(st.st_mode):
            return "is not a regular file"
        if not os.access(path, os.X_OK):
            return "is not executable (chmod +x)"
        if user is None:
            return None
        uid, gid = user
        # the directories the kernel walks: those of the path as written and of its target
        real = os.path.realpath(path)
        for name in (path, real):
            parent = os.path.dirname(os.path.abspath(name))
            while True:
                try:
                    dst = os.stat(parent)
                except OSError:
                    break  # the stat of the file succeeded; leave it to the run
                if not _permits(dst, uid, gid):
                    return f"is not reachable by that user (no search permission on {parent})"
                if parent == "/":
                    break
                parent = os.path.dirname(parent)
        if not _permits(st, uid, gid):
            return "is not executable by that user"
        return None

    def user_ids(self, name: str) -> tuple[int, int] | None:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        return entry.pw_uid, entry.pw_gid

    def file_problem(self, path: str) -> str | None:
        if os.path.isdir(path):
            return "is a directory"
        try:
            with open(path, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    return "is not a regular file"
                f.read(1)
        except OSError as exc:
            return (exc.strerror or str(exc)).lower()
        return None

    def tls_problem(self, settings: HealthSettings) -> tuple[str, str] | None:
        # builds the context into the probes' cache: the daemon's first probes reuse it
        return context_problem(settings)

    def transparent_errno(self, version: int) -> int:
        family = socket.AF_INET6 if version == 6 else socket.AF_INET
        level, option = ((_SOL_IPV6, _IPV6_TRANSPARENT) if version == 6
                         else (_SOL_IP, _IP_TRANSPARENT))
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(level, option, 1)
        except OSError as exc:
            return exc.errno or errno.EINVAL
        return 0


def _nonlocal_bind(version: int) -> bool:
    """Whether net.ipv{4,6}.ip_nonlocal_bind lets this namespace bind addresses it lacks."""
    try:
        with open(f"/proc/sys/net/ipv{version}/ip_nonlocal_bind", "rb") as f:
            return f.read().strip() not in (b"", b"0")
    except OSError:
        return False


def _route_is_local(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether the kernel routes `ip` to this host (RTM_GETROUTE answers type RTN_LOCAL)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    dst = ip.packed
    # struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    request = struct.pack("=BBBBBBBBI", family, len(dst) * 8, 0, 0, 0, 0, 0, 0, 0)
    request += struct.pack("=HH", 4 + len(dst), _RTA_DST) + dst
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        nl.settimeout(_NETLINK_TIMEOUT)
        nl.bind((0, 0))
        nl.send(_NLMSG_HDR.pack(_NLMSG_HDR.size + len(request), _RTM_GETROUTE,
                                _NLM_F_REQUEST, 1, 0) + request)
        data = nl.recv(65536)
    length, kind, _, _, _ = _NLMSG_HDR.unpack_from(data)
    body = data[_NLMSG_HDR.size:length]
    if kind == _NLMSG_ERROR:
        code = -struct.unpack_from("=i", body)[0]
        if code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return False  # no route at all: certainly not ours
        raise OSError(code, os.strerror(code))
    if kind != _RTM_NEWROUTE:
        raise ValueError(f"unexpected netlink message type {kind}")
    return bool(body[7] == _RTN_LOCAL)


def _netlink_addresses() -> list[tuple[int, VipInterface]]:
    """(interface index, address) of every address of this namespace, by one rtnetlink dump
    (RTM_GETADDR). Plain sockets, not pyroute2: its synchronous IPRoute cannot run inside the
    daemon's event loop, where a reload validates."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        nl.settimeout(_NETLINK_TIMEOUT)
        nl.bind((0, 0))
        request = struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0)  # struct ifaddrmsg
        nl.send(struct.pack("=IHHII", _NLMSG_HDR.size + len(request), _RTM_GETADDR,
                            _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + request)
        out: list[tuple[int, VipInterface]] = []
        while True:
            data = nl.recv(65536)
            offset = 0
            while offset + _NLMSG_HDR.size <= len(data):
                length, kind, _, _, _ = _NLMSG_HDR.unpack_from(data, offset)
                if length < _NLMSG_HDR.size:
                    raise ValueError("truncated netlink message")
                body = data[offset + _NLMSG_HDR.size:offset + length]
                offset += (length + 3) & ~3
                if kind == _NLMSG_DONE:
                    return out
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0]
                    raise OSError(code, os.strerror(code))
                if kind == _RTM_NEWADDR:
                    found = _address_of(body)
                    if found is not None:
                        out.append(found)


def _address_of(body: bytes) -> tuple[int, VipInterface] | None:
    """The interface index and address (with prefix) of one RTM_NEWADDR message body."""
    family, prefixlen, _, _, index = struct.unpack_from("=BBBBI", body)
    size = {socket.AF_INET: 4, socket.AF_INET6: 16}.get(family)
    if size is None:
        return None
    attrs: dict[int, bytes] = {}
    offset = 8
    while offset + 4 <= len(body):
        length, kind = struct.unpack_from("=HH", body, offset)
        if length < 4:
            break
        attrs[kind] = body[offset + 4:offset + length]
        offset += (length + 3) & ~3
    # IFA_LOCAL is the own address of a point-to-point link, IFA_ADDRESS its peer's
    raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
    if raw is None or len(raw) != size:
        return None
    return index, ipaddress.ip_interface((raw, prefixlen))


THIS_HOST: HostChecks = ThisHost()
