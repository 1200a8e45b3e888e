"""Give the benchmark's backends TCP Fast Open for the run: set, then restore, the server bit.

The target l4lb-tfo sends the request in the SYN to the HTTP backend. Its
nginx listens with `fastopen=`, but Linux accepts SYN-data only when bit 0x2 (server) of
net.ipv4.tcp_fastopen is set; Debian's default is 1 (client only). The bit changes nothing for
clients that do not use Fast Open, so the other targets run exactly as before. Each l4lb-tfo run
reports how many connections really carried data in the SYN (TcpExt.TCPFastOpenActive per
connection, bench/workloads.py): a host where the bit could not be set shows 0 there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SYSCTL = Path("/proc/sys/net/ipv4/tcp_fastopen")
CLIENT, SERVER = 0x1, 0x2


@contextmanager
def server_bit(needed: bool, sysctl: Path = SYSCTL) -> Iterator[list[str]]:
    """While inside, net.ipv4.tcp_fastopen has the client and server bits (when `needed`); the
    old value is written back on exit. Yields the notes for the report (empty when not
    needed)."""
    notes: list[str] = []
    if not needed:
        yield notes
        return
    try:
        old = int(sysctl.read_text().split()[0])
    except (OSError, ValueError, IndexError) as exc:
        notes.append(f"TCP Fast Open: cannot read {sysctl} ({exc}): l4lb-tfo ran "
                     "without it")
        yield notes
        return
    want = old | CLIENT | SERVER
    if want == old:
        notes.append(f"TCP Fast Open: net.ipv4.tcp_fastopen = {old} already allows it")
        yield notes
        return
    try:
        sysctl.write_text(f"{want}\n")
    except OSError as exc:
        notes.append(f"TCP Fast Open: cannot set net.ipv4.tcp_fastopen = {want} "
                     f"({exc.strerror or exc}; needs root): l4lb-tfo ran without it")
        yield notes
        return
    notes.append(f"TCP Fast Open: net.ipv4.tcp_fastopen was {old}, set to {want} for the run "
                 "(the backends' server bit), restored afterwards")
    try:
        yield notes
    finally:
        sysctl.write_text(f"{old}\n")
