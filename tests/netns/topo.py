"""Build throw-away network topologies in namespaces and run processes in them, for netns tests.

A `Topology` creates namespaces named `l4t-<pid>-<n>-<role>` (unique per test process and per
topology, so parallel or leftover runs never collide): one switch namespace holding a bridge
`br0`, and hosts each joined to it by a veth (`eth0` on the host side, a port named after the
host on the switch side). Nothing is created in the caller's own namespace. The bridge has
multicast snooping off, so every node sees every advert (as on a plain switch), and IPv6 DAD is
off everywhere, so addresses are usable at once.

`Node` runs a program in a namespace (`ip netns exec`), reads its stdout as JSON lines on a
thread, and lets a test wait, bounded, for an event. `Topology.close()` kills every process it
started (by pid: SIGTERM, then SIGKILL) and deletes every namespace, which destroys the veths
and the bridge; the fixture calls it whatever the test did.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PREFIX = f"l4t-{os.getpid()}-"
_counter = itertools.count(1)

Event = dict[str, Any]


def sh(*argv: str, timeout: float = 10.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (no shell), capture its output; CalledProcessError names stderr."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def netns_unavailable() -> str | None:
    """Why namespace tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, raw sockets)"
    if subprocess.run(["which", "ip"], capture_output=True).returncode != 0:
        return "needs the ip command (iproute2)"
    name = f"{PREFIX}probe"
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"cannot create a network namespace: {proc.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def sweep_leftovers() -> None:
    """Delete l4t-<pid>-* namespaces left by test processes that no longer exist and that
    hold no process."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != "l4t" or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or Path(f"/proc/{pid}").exists():
            continue
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                              text=True).stdout.split()
        if not pids:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def child_env() -> dict[str, str]:
    """Environment for Python children: the repository first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Node:
    """A process in a namespace whose stdout is JSON lines (events)."""

    def __init__(self, ns: str, argv: Sequence[str], name: str,
                 stdin: bool = True) -> None:
        self.ns = ns  # namespace it runs in
        self.name = name  # for messages
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (its stderr, closed in close())
            prefix=f"l4t-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stderr=self.log,
            text=True, env=child_env(), start_new_session=True)
        self.events: list[Event] = []  # every event so far, in order
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "text", "text": line}
            event.setdefault("rx", time.monotonic())
            self._queue.put(event)
        self._queue.put(None)

    def _pump(self, timeout: float) -> bool:
        """Move one event from the reader into `events`; False on timeout or end of output."""
        try:
            event = self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return False
        if event is None:
            self._queue.put(None)
            return False
        self.events.append(event)
        return True

    def wait_for(self, match: Callable[[Event], bool], timeout: float,
                 since: int = 0) -> Event:
        """The first event from index `since` on that matches; AssertionError after timeout."""
        deadline = time.monotonic() + timeout
        index = since
        while True:
            while index < len(self.events):
                if match(self.events[index]):
                    return self.events[index]
                index += 1
            left = deadline - time.monotonic()
            if left <= 0 or (not self._pump(left) and
                             (time.monotonic() >= deadline or self.proc.poll() is not None)):
                while self._pump(0):
                    pass
                for event in self.events[index:]:
                    if match(event):
                        return event
                raise AssertionError(f"{self.name}: no matching event within {timeout}s; "
                                     f"events: {self.events[-8:]}\nstderr:\n{self.stderr()}")

    def drain(self) -> None:
        """Move every event already read into `events`."""
        while self._pump(0):
            pass

    def state_event(self, state: str, timeout: float, since: int = 0) -> Event:
        """Wait for a transition into `state`."""
        return self.wait_for(lambda e: e.get("event") == "state" and e.get("state") == state,
                             timeout, since)

    def send(self, line: str) -> None:
        """Write one command line to its stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def request_status(self, timeout: float = 5.0) -> Event:
        """Ask a vrrp_node for its status and wait for the answer."""
        since = len(self.events)
        self.send("status")
        return self.wait_for(lambda e: e.get("event") == "status", timeout, since)

    def wait_status(self, match: Callable[[Event], bool], timeout: float,
                    instance: int = 0) -> Event:
        """Poll a vrrp_node's status until instance `instance` matches; that status."""
        deadline = time.monotonic() + timeout
        while True:
            status: Event = self.request_status()["instances"][instance]
            if match(status):
                return status
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.name}: status never matched: {status}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        """Send `signum` to the process (the ip netns exec'd program itself)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the process and its children (its own process group) at once, reap it."""
        if self.proc.poll() is None:  # (a reaped leader's pid may belong to someone else)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # started with start_new_session
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def stderr(self) -> str:
        """What the process wrote to stderr so far (its log)."""
        try:
            return Path(self.log.name).read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the process (if running), close the pipes, delete the log file."""
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._reader.join(timeout=2)
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


class Topology:
    """Namespaces on one bridge. Use as a context manager or call close()."""

    def __init__(self) -> None:
        self.prefix = f"{PREFIX}{next(_counter)}-"  # namespace name prefix of this topology
        self.namespaces: list[str] = []  # created, in order
        self.nodes: list[Node] = []  # processes started
        self.macs: dict[str, str] = {}  # host -> MAC of its eth0
        self.switch = self._add_ns("sw")
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge", "mcast_snooping",
           "0", "forward_delay", "0", "stp_state", "0")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ns(self, host: str) -> str:
        """The namespace name of `host`."""
        return f"{self.prefix}{host}"

    def _add_ns(self, host: str) -> str:
        name = self.ns(host)
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.exec(name, "sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0",
                  "net.ipv6.conf.default.accept_dad=0")
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def exec(self, ns: str, *argv: str, timeout: float = 10.0,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside namespace `ns` and wait for it."""
        return sh("ip", "netns", "exec", ns, *argv, timeout=timeout, check=check)

    def add_host(self, host: str, addresses: Sequence[str], mac: str | None = None) -> str:
        """A namespace with eth0 on the bridge carrying `addresses` ("192.0.2.1/24")."""
        name = self._add_ns(host)
        port = host[:15]
        sh("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name",
           "eth0", "netns", name)
        sh("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        if mac is not None:
            sh("ip", "-n", name, "link", "set", "eth0", "address", mac)
        self.exec(name, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.accept_dad=0")
        for address in addresses:
            sh("ip", "-n", name, "addr", "add", address, "dev", "eth0",
               *(["nodad"] if ":" in address else []))
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        self.macs[host] = mac or ""
        return name

    def addresses(self, host: str, ifname: str = "eth0") -> set[str]:
        """Every address on `ifname` of `host`, as "a.b.c.d/len" text."""
        out = sh("ip", "-j", "-n", self.ns(host), "addr", "show", "dev", ifname).stdout
        data = json.loads(out or "[]")
        return {f"{a['local']}/{a['prefixlen']}" for link in data
                for a in link.get("addr_info", [])}

    def wait_addresses(self, host: str, present: set[str], absent: set[str],
                       timeout: float) -> float:
        """Poll until every `present` address is on host's eth0 and no `absent` one is;
        returns the monotonic time it became so. AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            have = self.addresses(host)
            now = time.monotonic()
            if present <= have and not (absent & have):
                return now
            if now >= deadline:
                raise AssertionError(f"{host}: addresses {sorted(have)}, wanted "
                                     f"{sorted(present)} and none of {sorted(absent)}")
            time.sleep(0.02)

    def start(self, host: str, argv: Sequence[str], name: str | None = None,
              stdin: bool = True) -> Node:
        """Start `argv` in host's namespace; it is killed in close()."""
        node = Node(self.ns(host), argv, name or host, stdin=stdin)
        self.nodes.append(node)
        return node

    def python(self, host: str, script: str, *args: str, name: str | None = None,
               prefix: Sequence[str] = ()) -> Node:
        """Run a helper script of this directory with the test's Python in host's namespace
        (`prefix`: a command that execs the rest, such as chrt)."""
        return self.start(host, [*prefix, sys.executable, str(HERE / script), *args], name=name)

    def close(self) -> None:
        """Kill every process started, delete every namespace (and with them the links)."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.close()
        self.nodes = []
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        self.namespaces = []
