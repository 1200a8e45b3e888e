"""A private network namespace for one test thread, and a fast-open-capable backend, for the fast
open tests (test_fast_open.py).

net.ipv4.tcp_fastopen, the TFO cookie cache and the TcpExt counters are per network namespace,
and a Linux thread can leave its process's namespace alone: `private_netns()` unshares the
calling thread only (CLONE_NEWNET), brings lo up there (MTU 1500, so a SYN carries about 1.4 KB
and larger first writes exercise a partial SYN), sets the sysctl, and on exit returns the thread
to the namespace it came from. Every socket and thread created meanwhile by that thread (the
data plane's workers, the backends, the clients) lives in the private namespace, so nothing the
tests do touches the host's settings or counters, and the namespace disappears with its last
socket. Needs root.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000  # linux/sched.h
GREETING = b"220 hello from the backend\r\n"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


@contextlib.contextmanager
def private_netns(fastopen: int = 3, mtu: int = 1500) -> Iterator[None]:
    """Run the calling thread in a fresh network namespace with lo up and
    net.ipv4.tcp_fastopen = fastopen; back in the original namespace afterwards."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            subprocess.run(["ip", "link", "set", "lo", "up", "mtu", str(mtu)], check=True,
                           capture_output=True, timeout=10)
            with open("/proc/sys/net/ipv4/tcp_fastopen", "w") as f:
                f.write(str(fastopen))
            yield
        finally:
            _check(_libc.setns(home, CLONE_NEWNET), "setns back")
    finally:
        os.close(home)


def tcp_ext() -> dict[str, int]:
    """The TcpExt counters of the calling thread's namespace (/proc/thread-self/net/netstat)."""
    with open("/proc/thread-self/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))
    return {}


class FoBackend:
    """A loopback TCP backend, one thread per connection, that keeps every byte it received.

    fastopen: TCP_FASTOPEN on its listener (the server side of TFO), or a plain listener.
    host: 127.0.0.1 or ::1. mode "echo": echo everything, close after the client's FIN;
    "greet": send GREETING first (a server-speaks-first protocol), then echo; "eof_reply": read
    up to the client's FIN, then answer b"got <n>\\n" and close (a half-close round trip)."""

    def __init__(self, mode: str = "echo", fastopen: bool = True, host: str = "127.0.0.1") -> None:
        self.mode = mode
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if fastopen:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 64)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.addr: tuple[str, int] = self.sock.getsockname()[:2]
        self._lock = threading.Lock()
        self._received: list[bytes] = []  # per finished connection: every byte it sent us
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._acceptor = threading.Thread(target=self._accept_loop, name="fo-backend",
                                          daemon=True)
        self._acceptor.start()

    def received(self) -> list[bytes]:
        """What each finished connection sent, in the order they finished."""
        with self._lock:
            return list(self._received)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # close() shut the listener down
            with self._lock:
                if self._closing:
                    conn.close()
                    return
                self._conns.append(conn)
                thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        got: list[bytes] = []
        conn.settimeout(10.0)
        try:
            if self.mode == "greet":
                conn.sendall(GREETING)
            while data := conn.recv(1 << 16):
                got.append(data)
                if self.mode != "eof_reply":
                    conn.sendall(data)
            if self.mode == "eof_reply":
                conn.sendall(b"got %d\n" % sum(map(len, got)))
        except OSError:
            pass  # the test will see what is missing
        finally:
            with self._lock:
                self._received.append(b"".join(got))
                self._conns.remove(conn)
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            conns = list(self._conns)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self._acceptor.join(5.0)
        self.sock.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(5.0)
