"""Say where the datagrams lost in a UDP echo run were lost. Pure: the caller reads /proc.

A datagram of the echo workload passes generator -> (balancer listener -> balancer upstream
socket ->) backend -> (balancer upstream socket -> balancer listener ->) generator. The kernel
counts, per socket, the datagrams it dropped because that socket's receive buffer was full (the
last column of /proc/net/udp, "drops"; the same counter as SO_MEMINFO's SK_MEMINFO_DROPS).
Comparing the socket table before and after a run therefore names the socket, and with the
ports the role, where each loss happened:

- generator send: udpgen's send calls that failed (its own count);
- lb_listener: the balancer's socket bound to the front port;
- lb_upstream: the balancer's sockets connected to the backend port (one per flow);
- backend: the echo server's socket bound to the backend port;
- generator receive: udpgen's own sockets (gone after the run: udpgen reports their drops);
- unaccounted: the rest. A balancer that drops on its own (l4lb's drops_send, nginx when a
  session limit is hit) or a datagram still in flight when udpgen stops waiting lands here.

In a `direct` run the front port is the backend port: there is no balancer socket.
"""

from __future__ import annotations

from dataclasses import dataclass

WHERE = ("generator_send", "lb_listener", "lb_upstream", "backend", "generator_receive",
         "unaccounted")


@dataclass(frozen=True)
class UdpSocket:
    """One line of /proc/net/udp or /proc/net/udp6."""

    inode: int  # the socket's inode: stable for its lifetime
    local_port: int  # bound port
    remote_port: int  # connected port, 0 when not connected
    drops: int  # datagrams dropped at this socket since it was created


def parse_udp_table(text: str) -> list[UdpSocket]:
    """The sockets of a /proc/net/udp or udp6 text (header line first)."""
    out: list[UdpSocket] = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 13:
            continue
        try:
            local_port = int(parts[1].rpartition(":")[2], 16)
            remote_port = int(parts[2].rpartition(":")[2], 16)
            out.append(UdpSocket(int(parts[9]), local_port, remote_port, int(parts[-1])))
        except ValueError:
            continue
    return out


def _role(s: UdpSocket, front: int, back: int) -> str | None:
    if s.local_port == back:
        return "backend"
    if front != back and s.local_port == front:
        return "lb_listener"
    if s.remote_port == back:
        return "generator_receive" if front == back else "lb_upstream"
    if s.remote_port == front:
        return "generator_receive"
    return None


def socket_drops(before: list[UdpSocket], after: list[UdpSocket], front: int,
                 back: int) -> dict[str, int]:
    """Drops per role over a run: the counter's growth for sockets that lived through it, the
    whole counter for sockets created during it (closed sockets are not seen)."""
    old = {s.inode: s.drops for s in before}
    out: dict[str, int] = {}
    for s in after:
        role = _role(s, front, back)
        if role is None:
            continue
        grew = s.drops - old.get(s.inode, 0)
        if grew > 0:
            out[role] = out.get(role, 0) + grew
    return out


def attribute(gen: dict[str, float], sock: dict[str, int]) -> dict[str, float]:
    """Every lost datagram of a run by where it was lost (keys: WHERE, plus lost).

    gen is udpgen's JSON (offered, received, send_errors, blocked, rx_drops); sock is
    socket_drops() of the run. Counts from sockets other than udpgen's include nothing but the
    run's own traffic: the benchmark's ports carry nothing else."""
    lost = max(0.0, gen["offered"] - gen["received"])
    out = {
        "lost": lost,
        "generator_send": gen.get("send_errors", 0.0) + gen.get("blocked", 0.0),
        "lb_listener": float(sock.get("lb_listener", 0)),
        "lb_upstream": float(sock.get("lb_upstream", 0)),
        "backend": float(sock.get("backend", 0)),
        "generator_receive": gen.get("rx_drops", 0.0) + float(sock.get("generator_receive", 0)),
    }
    known = sum(out[k] for k in WHERE[:-1])
    out["unaccounted"] = lost - known
    return out
