"""Checks over TLS in the running daemon: a backend whose certificate expires goes DOWN with
the TLS reason (log line, `check` in `l4lb backends`), and comes back UP with a renewed one;
the pass shows the version, cipher and the certificate's end of validity. The backends are
blocking OpenSSL servers in a thread of the test, their certificates made by trustme."""

from __future__ import annotations

import datetime
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .procs import child_env, free_port, l4lb_cmd, stop_process
from .test_health_exec_daemon import backends, wait_state
from .test_health_tls import NAME, Pki

trustme = pytest.importorskip("trustme", reason="the test extra installs trustme")

pytestmark = pytest.mark.timeout(60)


@contextmanager
def tls_backend(ctx: list[ssl.SSLContext]) -> Iterator[int]:
    """A TLS server on loopback whose context is ctx[0] at each accept (so a test can renew or
    expire its certificate); it holds each connection until the client goes."""
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    with ctx[0].wrap_socket(conn, server_side=True) as tls_conn:
                        tls_conn.recv(1)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield lsock.getsockname()[1]
    finally:
        stop.set()
        thread.join(5.0)
        lsock.close()


def test_expired_certificate_takes_the_backend_down_with_the_reason(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    good = pki.server_context()
    expired = pki.server_context(pki.ca.issue_cert(
        NAME, not_after=datetime.datetime(2022, 3, 1, tzinfo=datetime.UTC)))
    ctx1, ctx2 = [good], [good]
    with tls_backend(ctx1) as b1, tls_backend(ctx2) as b2:
        cfg = tmp_path / "tls.toml"
        cfg.write_text(f"""\
[global]
control_socket = "{tmp_path}/ctl.sock"

[[services]]
name = "web"
listen = ["127.0.0.1:{free_port()}"]
backends = [{{ address = "127.0.0.1:{b1}" }}, {{ address = "127.0.0.1:{b2}" }}]

  [services.health]
  kind = "tls"
  tls_server_name = "{NAME}"
  tls_ca_file = "{pki.ca_file}"
  interval = "100ms"
  timeout = "100ms"
  rise = 2
  fall = 2
  jitter = 0.0
""")
        check = subprocess.run(l4lb_cmd("check", "-c", str(cfg)), env=child_env(),
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        a2 = f"127.0.0.1:{b2}"
        try:
            deadline = time.monotonic() + 15
            while not (tmp_path / "ctl.sock").exists():
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.05)
            deadline = time.monotonic() + 5
            while not all(b["check"]["last_result"] == "passed"
                          for b in backends(cfg, "web").values()):
                assert time.monotonic() < deadline, backends(cfg, "web")
                time.sleep(0.05)
            passed = backends(cfg, "web")[a2]["check"]["last_reason"]
            assert passed.startswith("TLS handshake ok: TLSv1.3 "), passed
            assert "certificate valid until" in passed
            ctx2[0] = expired
            wait_state(cfg, a2, "down")
            view = backends(cfg, "web")[a2]["check"]
            reason = "TLS: certificate verify failed: certificate has expired"
            assert (view["change_reason"], view["last_reason"]) == \
                (f"{reason} (2/2 probes failed)", reason)
            assert backends(cfg, "web")[f"127.0.0.1:{b1}"]["state"] == "up"
            ctx2[0] = good
            wait_state(cfg, a2, "up")
            assert stop_process(proc, signal.SIGTERM) == 0
        finally:
            stop_process(proc, signal.SIGKILL)
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert f"backend web/{a2} is DOWN: TLS: certificate verify failed: certificate has " \
               "expired (2/2 probes failed)" in err, err
        assert f"backend web/{a2} is UP: TLS handshake ok: TLSv1.3 " in err, err
