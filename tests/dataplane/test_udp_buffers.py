"""Receive buffers of the C data plane's UDP upstream sockets (relay_udp.c, "Socket buffers").

A flow's upstream socket must hold a burst of replies while the worker is busy elsewhere: it
asks for RELAY_UDP_UP_RCVBUF (2 MiB; SO_RCVBUFFORCE as root, else SO_RCVBUF up to
net.core.rmem_max), which the kernel doubles for its bookkeeping. C data plane only.
"""

from __future__ import annotations

import os
import socket

import pytest

from l4lb.dataplane import reference_requested

from .conftest import SVC
from .tables import BackendSpec, ServiceSpec, build_table

HOST = "127.0.0.1"
UP_RCVBUF = 2 << 20  # RELAY_UDP_UP_RCVBUF in relay_udp.h

if reference_requested():
    pytest.skip("L4LB_NO_EXTENSIONS=1: the compiled data plane is not tested",
                allow_module_level=True)
from l4lb._dataplane import Dataplane as CDataplane  # noqa: E402


def _socket_fd_by_port(port: int) -> int:
    """This process's descriptor of the UDP socket bound to 127.0.0.1:port."""
    inode = None
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if int(parts[1].rpartition(":")[2], 16) == port:
                inode = parts[9]
    assert inode is not None, f"no UDP socket on port {port}"
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == f"socket:[{inode}]":
                return int(name)
        except OSError:
            continue
    raise AssertionError(f"socket inode {inode} is not one of ours")


def _expected_rcvbuf() -> int:
    if os.geteuid() == 0:
        return 2 * UP_RCVBUF
    with open("/proc/sys/net/core/rmem_max") as f:
        return 2 * min(UP_RCVBUF, int(f.read()))


def test_upstream_sockets_get_a_large_receive_buffer() -> None:
    dp = CDataplane(1)
    backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for sock in (backend, listener, client):
            sock.bind((HOST, 0))
        backend.settimeout(5)
        listener.setblocking(False)
        spec = ServiceSpec(SVC, (BackendSpec("u", HOST, backend.getsockname()[1]),),
                           protocol="udp", idle_timeout_ms=30000)
        dp.start()
        dp.publish(build_table([spec]).blob)
        dp.add_listener(SVC, listener.fileno(), 0)
        client.sendto(b"q", listener.getsockname())
        data, upstream = backend.recvfrom(64)
        assert data == b"q"
        fd = _socket_fd_by_port(upstream[1])
        view = socket.socket(fileno=os.dup(fd))
        try:
            got = view.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        finally:
            view.close()
        assert got == _expected_rcvbuf(), got
    finally:
        dp.stop(0)
        for sock in (backend, listener, client):
            sock.close()
