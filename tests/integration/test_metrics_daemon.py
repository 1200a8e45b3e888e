"""`[metrics] listen` in the running daemon: Prometheus counters and the status page."""

from __future__ import annotations

import signal
import subprocess
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from .procs import NameServer, child_env, fetch, free_port, l4lb_cmd, stop_process, wait_listening
from .test_cli import write_config


def test_metrics_and_status_page(tmp_path: Path, name_servers: list[NameServer]) -> None:
    port, mport = free_port(), free_port()
    cfg = write_config(tmp_path, port, [s.port for s in name_servers])
    cfg.write_text(f'[metrics]\nlisten = "127.0.0.1:{mport}"\n\n' + cfg.read_text())
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        wait_listening(mport, proc)  # the HTTP listener starts a moment after the service's
        for _ in range(8):
            fetch(port)
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
            text = r.read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        total = {s.labels["backend"]: s.value
                 for s in families["l4lb_backend_connections"].samples
                 if s.name == "l4lb_backend_connections_total"}
        # 9 connections: the 8 above and wait_listening's probe, round robin over 3 backends
        assert sorted(total.values()) == [3.0, 3.0, 3.0], total
        assert set(total) == {f"127.0.0.1:{s.port}" for s in name_servers}
        assert "l4lb_table_generation" in families
        assert families["l4lb_log_lines_dropped"].samples[0].value == 0  # the daemon wired it
        assert "l4lb_loop_lag_max_seconds" in families
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/", timeout=5) as r:
            page = r.read().decode()
        assert "<table" in page and f"127.0.0.1:{name_servers[2].port}" in page
        assert stop_process(proc, signal.SIGTERM) == 0
    finally:
        stop_process(proc, signal.SIGKILL)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert f"metrics: serving /metrics and the status page on http://127.0.0.1:{mport}/" in err
