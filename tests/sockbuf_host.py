"""What the kernel says about a TCP socket's buffers, as the socket-buffer tests need it: the
sk_sndbuf / sk_rcvbuf of a socket found by its 4-tuple (`ss -tmn`, skmem tb / rb), so that a
test can look at a socket the balancer owns without asking the balancer."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

SS_TIMEOUT = 5.0  # seconds for one ss run
SKMEM = re.compile(r"skmem:\(([^)]*)\)")
# Sizes the tests ask for: far below net.core.wmem_max / rmem_max's usual 208 KiB..4 MiB, so the
# kernel applies them doubled with or without CAP_NET_ADMIN, and none doubled equals a default
# (tcp_rmem's default 131072 is 2 x 65536, so 65536 is avoided).
SNDBUF = 36864
RCVBUF = 49152


def ss_buffers(filter_expr: str) -> list[tuple[int, int]]:
    """(tb, rb) = (sk_sndbuf, sk_rcvbuf) of every established TCP socket ss finds for
    filter_expr, e.g. "sport = :4000 and dport = :5000"."""
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    out = subprocess.run(["ss", "-tmnH", "state", "established", filter_expr],
                         capture_output=True, text=True, check=True, timeout=SS_TIMEOUT).stdout
    found: list[tuple[int, int]] = []
    for match in SKMEM.finditer(out):
        fields = {m.group(1): int(m.group(2))
                  for m in re.finditer(r"([a-z]+)(\d+)", match.group(1))}
        found.append((fields["tb"], fields["rb"]))
    return found


def ss_socket_buffers(local_port: int, remote_port: int) -> tuple[int, int]:
    """(tb, rb) of the one established socket from local_port to remote_port."""
    found = ss_buffers(f"sport = :{local_port} and dport = :{remote_port}")
    assert len(found) == 1, found
    return found[0]
