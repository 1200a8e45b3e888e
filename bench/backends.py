"""Start and stop the backends every target forwards to: iperf3, an nginx HTTP server, UDP echo.

They run for one pinning mode (on the load CPU when pinned) and serve every block of it; the
idle-connection sink is started per idle run by the workload itself. Each backend's PID tree is
kept so the harness can show its CPU time per run: a backend must not be the bottleneck.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from bench import loadgen, peers, procs


@dataclass
class Backends:
    """The running backends of one pinning mode."""

    ports: peers.Ports  # where they listen
    iperf: procs.Daemon  # iperf3 -s
    http: procs.Daemon  # nginx serving a fixed 200 response
    udp: procs.Daemon | None  # the UDP echo server (None when it could not be built)

    def pids_for(self, kind: str) -> list[int]:
        """The PIDs of the backend that serves a workload kind."""
        if kind == "bulk":
            return self.iperf.tree()
        if kind in ("newconn", "keepalive"):
            return self.http.tree()
        if kind == "udp" and self.udp is not None:
            return self.udp.tree()
        return []

    def stop(self) -> None:
        """Stop all of them (by PID)."""
        for d in (self.iperf, self.http, self.udp):
            if d is not None:
                procs.stop(d)


def start(ports: peers.Ports, rundir: Path, cpu: int | None, udpecho: Path | None) -> Backends:
    """Start the backends and wait until each listens; RuntimeError when one cannot start."""
    rundir.mkdir(parents=True, exist_ok=True)
    iperf = procs.start("iperf3-server", loadgen.iperf3_server_argv(ports.bulk),
                        rundir / "iperf3-server.log", cpu=cpu)
    prefix = rundir / "nginx-http"
    if prefix.exists():
        shutil.rmtree(prefix)
    prefix.mkdir(parents=True)
    conf = prefix / "nginx.conf"
    conf.write_text(peers.nginx_http_backend_config(ports.http, str(prefix),
                                                    procs.nofile_limit()))
    http = procs.start("nginx-http-backend", peers.nginx_argv(str(prefix), str(conf)),
                       rundir / "nginx-http.log", cpu=cpu)
    udp = None
    if udpecho is not None:
        udp = procs.start("udpecho", loadgen.udpecho_argv(str(udpecho), ports.udp),
                          rundir / "udpecho.log", cpu=cpu)
    try:
        procs.wait_ready(iperf, tcp_ports=[ports.bulk])
        procs.wait_ready(http, tcp_ports=[ports.http])
        if udp is not None:
            procs.wait_ready(udp, udp_ports=[ports.udp])
    except RuntimeError:
        for d in (iperf, http, udp):
            if d is not None:
                procs.stop(d)
        raise
    return Backends(ports=ports, iperf=iperf, http=http, udp=udp)
