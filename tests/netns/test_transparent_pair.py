"""A transparent l4lb pair: backends see the client's address, before and after a failover.

The two-legged topology of test_vrrp_gateway.py (client, lb1 and lb2 on eth0; each balancer's
eth1 on the backend bridge in namespace `bk`), with what docs/configuration.md ("Transparent
mode") asks of the hosts:

- the services say `source = "client"`, so each backend connection leaves from its client's
  address (IP_TRANSPARENT);
- the backends' default route is the gateway VIP (`dev eth1` in the [[vrrp]] instance), so
  their replies to the client's address come back through whichever node is MASTER;
- on both balancers, `ip rule add iif eth1 lookup 100` + `ip route add local 0.0.0.0/0 dev lo
  table 100` (and the IPv6 twins) deliver those replies locally, to the transparent socket.

`l4lb run` (the whole chain: config, table, C data plane) on both nodes. A client connects to
the frontend VIP over IPv4 and IPv6; the backend answers with the peer address it sees, which
must be the client's. Then the master stops, lb2 takes both VIPs, and the next connections
through lb2 are transparent too.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from .conftest import CLIENT4, CLIENT6, VIP4, VIP6
from .test_vrrp_gateway import GW4, GW6, backend_side, config, l4lb, wait_placement, wait_state
from .topo import Topology, sh

BACKEND4 = "198.51.100.21"
BACKEND6 = "2001:db8:2::21"
PORT = 8080
CONNECT = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
with socket.create_connection((host, port), timeout=5) as s:
    data = b""
    while chunk := s.recv(100):
        data += chunk
print(data.decode())
"""


SERVICES = f"""
[[services]]
name = "web4"
listen = ["{VIP4.split('/')[0]}:{PORT}"]
source = "client"

  [[services.backends]]
  address = "{BACKEND4}:9000"

[[services]]
name = "web6"
listen = ["[{VIP6.split('/')[0]}]:{PORT}"]
source = "client"

  [[services.backends]]
  address = "[{BACKEND6}]:9000"
"""


def transparent_routing(topo: Topology, host: str) -> None:
    """What the balancer host needs: replies arriving on eth1 are for local sockets, and ARP
    on eth1 answers only for eth1's own addresses (the local route would claim them all)."""
    ns = topo.ns(host)
    topo.exec(ns, "sysctl", "-q", "-w", "net.ipv4.conf.eth1.arp_ignore=1")
    for v in ("-4", "-6"):
        sh("ip", v, "-n", ns, "rule", "add", "iif", "eth1", "lookup", "100")
    sh("ip", "-4", "-n", ns, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
    sh("ip", "-6", "-n", ns, "route", "add", "local", "::/0", "dev", "lo", "table", "100")


def peer_seen(topo: Topology, vip: str) -> str:
    """Connect from the client to vip:PORT; what the backend saw as the peer address."""
    res = topo.exec(topo.ns("client"), sys.executable, "-c", CONNECT, vip, str(PORT),
                    timeout=15)
    return res.stdout.strip()


def test_backends_see_the_client_through_either_node(pair: Topology, tmp_path: Path) -> None:
    bk = backend_side(pair)
    sh("ip", "-n", bk, "addr", "add", f"{BACKEND6}/64", "dev", "br1")
    sh("ip", "-4", "-n", bk, "route", "add", "default", "via", GW4.split("/")[0])
    sh("ip", "-6", "-n", bk, "route", "add", "default", "via", GW6.split("/")[0])
    backend = pair.python("bk", "name_backends.py", f"@peer={BACKEND4}:9000",
                          f"@peer=[{BACKEND6}]:9000", name="peer-backends")
    backend.wait_for(lambda e: e.get("event") == "ready", 10)
    for host in ("lb1", "lb2"):
        transparent_routing(pair, host)
    conf1 = config(tmp_path, "lb1", 100, SERVICES)
    conf2 = config(tmp_path, "lb2", 90, SERVICES)
    lb1 = pair.start("lb1", l4lb("run", "-c", str(conf1)), name="lb1-l4lb", stdin=False)
    wait_state(conf1, "MASTER", 10)
    pair.start("lb2", l4lb("run", "-c", str(conf2)), name="lb2-l4lb", stdin=False)
    wait_state(conf2, "BACKUP", 10)
    wait_placement(pair, "lb1", "lb2", 3)
    vip4, vip6 = VIP4.split("/")[0], VIP6.split("/")[0]
    assert peer_seen(pair, vip4) == CLIENT4
    assert peer_seen(pair, vip6) == CLIENT6

    lb1.signal(signal.SIGTERM)
    assert lb1.proc.wait(15) == 0, lb1.stderr()
    wait_state(conf2, "MASTER", 5)
    wait_placement(pair, "lb2", "lb1", 3)
    assert peer_seen(pair, vip4) == CLIENT4
    assert peer_seen(pair, vip6) == CLIENT6
