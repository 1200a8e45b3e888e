"""Create the listening sockets the data plane serves: one SO_REUSEPORT socket per worker.

TCP sockets listen; UDP sockets are bound datagram sockets (the kernel spreads flows over the
workers by the 4-tuple hash of SO_REUSEPORT) with IP_PKTINFO / IPV6_RECVPKTINFO on wildcard
addresses, so replies can leave from the address each client sent to.

Python owns the sockets (and closes them); the data plane only polls their fds. Before the
per-worker sockets are bound, a probe socket WITHOUT SO_REUSEPORT is bound to the same address and
closed at once: SO_REUSEPORT would otherwise let a second l4lb (same user) silently share the
port, and an operator expects "address already in use" instead.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass

from l4lb.config.model import Endpoint

IP_FREEBIND = 15  # linux/in.h: bind to an address not (yet) on this host (VIPs on the standby)
IPV6_FREEBIND = 78  # linux/in6.h: the same for IPv6 sockets
IP_PKTINFO = 8  # linux/in.h: receive the destination address of each datagram
SO_SNDBUFFORCE = 32  # asm-generic/socket.h: SO_SNDBUF above net.core.wmem_max (CAP_NET_ADMIN)
SO_RCVBUFFORCE = 33  # asm-generic/socket.h: SO_RCVBUF above net.core.rmem_max (CAP_NET_ADMIN)
UDP_RCVBUF = 4 << 20  # a UDP listener's receive buffer: the 208 KiB default holds ~1 ms at 200k/s


class ListenError(OSError):
    """A listen address could not be bound; str() is one line naming address and OS error."""


@dataclass
class ListenerGroup:
    """All per-worker sockets of one listen address of one service."""

    service: str  # service name
    endpoint: Endpoint  # the address as configured
    protocol: str  # "tcp" or "udp"
    sockets: list[socket.socket]  # one per worker, index = worker number

    def close(self) -> None:
        """Close every socket of the group (call only after the data plane released them)."""
        for sock in self.sockets:
            sock.close()
        self.sockets = []

    def listen(self, backlog: int) -> None:
        """listen() on every TCP socket of a group opened with `listen=False`, once its socket
        options are set (a connection inherits the listener's options when its handshake
        completes, so one that came in earlier would keep the kernel's). Raises ListenError."""
        if self.protocol != "tcp":
            return
        try:
            for sock in self.sockets:
                sock.listen(backlog)
        except OSError as exc:
            raise ListenError(exc.errno or 0, _describe(self.service, self.endpoint, exc)) \
                from exc


def _new_socket(endpoint: Endpoint, reuseport: bool, protocol: str = "tcp") -> socket.socket:
    family = socket.AF_INET6 if endpoint.family == 6 else socket.AF_INET
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # "[::]:80" means IPv6 only; "0.0.0.0:80" is its own listener.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        if protocol == "udp":
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, UDP_RCVBUF)
            except PermissionError:  # not root: as much as net.core.rmem_max allows
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        if protocol == "udp" and endpoint.host in ("0.0.0.0", "::"):
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind((endpoint.host, endpoint.port))
    except BaseException:
        sock.close()
        raise
    return sock


def set_socket_buffer(sock: socket.socket, option: int, size: int) -> int:
    """Set `option` (socket.SO_SNDBUF or SO_RCVBUF) to `size` bytes on sock, through the FORCE
    option when this process may (CAP_NET_ADMIN: not capped at net.core.wmem_max / rmem_max),
    else the plain one (capped). Returns what the kernel applied (getsockopt: the size doubled
    for its bookkeeping, capped or raised to its bounds). OSError when both are refused."""
    forced = SO_SNDBUFFORCE if option == socket.SO_SNDBUF else SO_RCVBUFFORCE
    try:
        sock.setsockopt(socket.SOL_SOCKET, forced, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, option, size)
    return int(sock.getsockopt(socket.SOL_SOCKET, option))


def _describe(service: str, endpoint: Endpoint, exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    code = errno.errorcode.get(exc.errno or 0, "")
    suffix = f" ({code})" if code else ""
    return f"service {service!r}: cannot listen on {endpoint}: {reason}{suffix}"


def open_listeners(service: str, endpoint: Endpoint, workers: int, backlog: int,
                   protocol: str = "tcp", listen: bool = True) -> ListenerGroup:
    """Bind (and for TCP listen on) `workers` nonblocking SO_REUSEPORT sockets on endpoint.
    With `listen=False` TCP sockets are only bound: ListenerGroup.listen() starts them.

    Raises ListenError with a one-line message when the address cannot be bound.
    """
    try:
        probe = _new_socket(endpoint, reuseport=False, protocol=protocol)
        probe.close()
    except OSError as exc:
        raise ListenError(exc.errno or 0, _describe(service, endpoint, exc)) from exc
    sockets: list[socket.socket] = []
    try:
        for _ in range(workers):
            sock = _new_socket(endpoint, reuseport=True, protocol=protocol)
            if protocol == "tcp" and listen:
                sock.listen(backlog)
            sock.setblocking(False)
            sockets.append(sock)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(exc.errno or 0, _describe(service, endpoint, exc)) from exc
    return ListenerGroup(service=service, endpoint=endpoint, protocol=protocol, sockets=sockets)


def resolve_workers(configured: int) -> int:
    """0 means one worker per CPU this process may run on."""
    if configured > 0:
        return configured
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
