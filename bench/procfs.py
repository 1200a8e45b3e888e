"""Read what the benchmark accounts from /proc: CPU ticks, RSS, kernel counters, listeners.

Every function reads; none writes or starts anything. CPU time comes from utime + stime of
/proc/PID/stat in clock ticks (the leader's line already sums every thread of the process); a
process tree (nginx master + workers) is summed over its live members. Kernel counters are the
system-wide ones of /proc/net/snmp and /proc/net/netstat: the benchmark's traffic is the only
traffic on loopback, so their deltas over a run are the run's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

CLK_TCK = os.sysconf("SC_CLK_TCK")

TCP_LISTEN = "0A"  # st column of /proc/net/tcp for LISTEN
WANTED_COUNTERS = (
    "Tcp.RetransSegs",
    "Tcp.AttemptFails",
    "Tcp.EstabResets",
    "Tcp.OutRsts",
    "Udp.InErrors",
    "Udp.RcvbufErrors",
    "Udp.SndbufErrors",
    "Udp.NoPorts",
    "TcpExt.ListenDrops",
    "TcpExt.ListenOverflows",
    "TcpExt.TCPTimeouts",
    "TcpExt.TCPFastOpenActive",
)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2:].split()


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process (all its threads), in clock ticks; 0 if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0
    # After the comm: state(0) ppid(1) ... utime is field 14 of the full line -> index 11 here.
    return int(fields[11]) + int(fields[12])


def parent_pid(pid: int) -> int | None:
    """The parent's pid, or None when the process is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def descendants(pid: int) -> list[int]:
    """Every live descendant of pid (children, grandchildren, ...), found by scanning /proc."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        ppid = parent_pid(int(name))
        if ppid is not None:
            parents.setdefault(ppid, []).append(int(name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def tree(pid: int) -> list[int]:
    """pid and its live descendants."""
    return [pid, *descendants(pid)]


def cpu_ticks_of(pids: Iterable[int]) -> int:
    """Sum of cpu_ticks over several processes."""
    return sum(cpu_ticks(p) for p in pids)


def ticks_to_seconds(ticks: int) -> float:
    """Clock ticks to seconds."""
    return ticks / CLK_TCK


def rss_kb(pid: int) -> int:
    """VmRSS of one process in KiB (0 when gone or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def rss_kb_of(pids: Iterable[int]) -> int:
    """Sum of VmRSS over several processes, in KiB."""
    return sum(rss_kb(p) for p in pids)


def maps_mention(pid: int, needle: str) -> bool:
    """True when a file whose path contains needle is mapped into the process."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any(needle in line for line in f)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False


def parse_counter_table(text: str) -> dict[str, int]:
    """Parse the header/value line pairs of /proc/net/snmp or netstat into {"Tcp.X": n}."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    for head, vals in zip(lines[0::2], lines[1::2], strict=False):
        h, v = head.split(), vals.split()
        if not h or not v or h[0] != v[0]:
            continue
        proto = h[0].rstrip(":")
        for key, value in zip(h[1:], v[1:], strict=False):
            try:
                out[f"{proto}.{key}"] = int(value)
            except ValueError:
                continue
    return out


def net_counters() -> dict[str, int]:
    """The WANTED_COUNTERS now (missing ones read as 0)."""
    merged: dict[str, int] = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        try:
            with open(path) as f:
                merged.update(parse_counter_table(f.read()))
        except FileNotFoundError:
            continue
    return {k: merged.get(k, 0) for k in WANTED_COUNTERS}


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """after - before, key by key."""
    return {k: after.get(k, 0) - before.get(k, 0) for k in before}


def cpu_times() -> dict[str, tuple[int, int, int]]:
    """Per CPU ("cpu0", ...): (busy ticks, total ticks, irq + softirq ticks) from /proc/stat.

    Interrupt and softirq time (much of loopback networking) is busy time that no process's
    utime/stime includes."""
    out: dict[str, tuple[int, int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *vals = line.split()
            nums = [int(x) for x in vals]
            idle = nums[3] + (nums[4] if len(nums) > 4 else 0)  # idle + iowait
            irq = sum(nums[5:7]) if len(nums) > 6 else 0
            out[name] = (sum(nums) - idle, sum(nums), irq)
    return out


def busy_percent(before: dict[str, tuple[int, int, int]],
                 after: dict[str, tuple[int, int, int]], column: int = 0) -> dict[str, float]:
    """Share of each CPU between two cpu_times() snapshots, in percent: busy (column 0) or
    irq + softirq (column 2)."""
    out: dict[str, float] = {}
    for cpu, snap0 in before.items():
        snap1 = after.get(cpu, snap0)
        span = snap1[1] - snap0[1]
        out[cpu] = round(100.0 * (snap1[column] - snap0[column]) / span, 1) if span > 0 else 0.0
    return out


def listening(port: int, proto: str = "tcp", host_hex: str | None = None) -> bool:
    """True when some socket is bound to port: LISTEN for tcp, any bound socket for udp."""
    files = (f"/proc/net/{proto}", f"/proc/net/{proto}6")
    want_port = f"{port:04X}"
    for path in files:
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) < 4:
                        continue
                    addr, _, lport = parts[1].rpartition(":")
                    if lport != want_port:
                        continue
                    if host_hex is not None and addr != host_hex:
                        continue
                    if proto == "tcp" and parts[3] != TCP_LISTEN:
                        continue
                    return True
        except FileNotFoundError:
            continue
    return False
