"""The DNS health check of conf/examples/dns-udp.toml (kind = "udp", a "version.bind CH TXT"
query and a regex on the answer's header) against a real DNS server: dnsmasq (Debian package
dnsmasq-base, in scripts/test.sh's L4LB_APT_EXTRA), started on a loopback port in the
foreground and ended by its PID. Skipped when dnsmasq is not installed."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from l4lb.config import load_text
from l4lb.health import HealthSettings, probe_once

pytestmark = [pytest.mark.timeout(30),
              pytest.mark.skipif(shutil.which("dnsmasq") is None,
                                 reason="dnsmasq is not installed (Debian: dnsmasq-base)")]

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "examples" / "dns-udp.toml"


def example_health() -> HealthSettings:
    config = load_text(EXAMPLE.read_text(), str(EXAMPLE), host=None)
    health = config.services[0].health
    assert health is not None and health.kind == "udp"
    return replace(health, timeout=0.5)


def udp_port() -> int:
    """A port free for UDP and for TCP on 127.0.0.1: dnsmasq listens on both (a port free
    for UDP alone failed in CI with "Address already in use" from its TCP listener)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no port free for both UDP and TCP")


@contextlib.contextmanager
def dnsmasq(port: int, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """dnsmasq answering on 127.0.0.1:port only, with no upstream and no files (as root it
    drops to user nobody by itself)."""
    dnsmasq_bin = shutil.which("dnsmasq")
    assert dnsmasq_bin is not None
    proc = subprocess.Popen(
        [dnsmasq_bin, "--no-daemon", "-C", "/dev/null", f"--port={port}",
         "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
         "--pid-file=", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        while True:  # up once it answers a query
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.1)
                s.sendto(b"\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01",
                         ("127.0.0.1", port))
                with contextlib.suppress(OSError):
                    s.recv(512)
                    break
            assert time.monotonic() < deadline, "dnsmasq did not answer"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()  # our child, by PID
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()


def probe(port: int, health: HealthSettings) -> tuple[bool, str]:
    res = asyncio.run(asyncio.wait_for(probe_once("127.0.0.1", port, health), 5))
    return res.ok, res.reason


def test_example_dns_check_passes_against_dnsmasq() -> None:
    port = udp_port()
    with dnsmasq(port):
        assert probe(port, example_health()) == (True, "reply matched")


def test_example_dns_check_fails_on_an_error_rcode_and_on_a_stopped_server() -> None:
    """--no-ident: dnsmasq no longer answers version.bind itself, and with no upstream the
    answer is NOTIMP (RCODE 4), which the example's regex fails. Once it is stopped, the
    port is closed: ICMP port unreachable."""
    port = udp_port()
    health = example_health()
    with dnsmasq(port, "--no-ident"):
        ok, reason = probe(port, health)
        assert not ok and reason.startswith("expect mismatch: got b'L4\\x80\\x84"), reason
    assert probe(port, health) == (False, "port unreachable (ICMP)")
