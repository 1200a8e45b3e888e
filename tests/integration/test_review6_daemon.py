"""Review 6 against a real `l4lb run`: the SIGTERM drain refuses new clients at once and keeps
the control socket answering ("draining"), a second SIGTERM/SIGINT ends the drain at once with
exit 0 and the closes logged, a reloaded shutdown_timeout is the one the stop uses, and a
reload that fails leaves no listener behind."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from l4lb.control import ControlError, request

from .procs import child_env, free_port, l4lb_cmd, reload_ok, stop_process
from .test_cli import write_config
from .test_drain_connlog import HoldServer, open_session, running, wait_for_lines

IMPLS = ["c", "ref"]
pytestmark = pytest.mark.timeout(60)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def closed(client: socket.socket) -> bool:
    try:
        return client.recv(16) == b""
    except ConnectionResetError:
        return True


def wait_until(what: str, check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s")


def answers(sock: str) -> bool:
    try:
        return bool(request(sock, "status", timeout=2)["state"] == "running")
    except ControlError:
        return False


def draining(sock: str) -> bool:
    try:
        return bool(request(sock, "status", timeout=2)["state"] == "draining")
    except ControlError:
        return False


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("impl", IMPLS)
def test_drain_refuses_new_clients_answers_status_and_a_second_signal_ends_it(
        impl: str, second: int, tmp_path: Path) -> None:
    backend = HoldServer()
    port = free_port()
    log = tmp_path / "conn.jsonl"
    cfg = write_config(tmp_path, port, [backend.port])
    cfg.write_text(cfg.read_text().replace('shutdown_timeout = "3s"', 'shutdown_timeout = "30s"')
                   .replace("[global]\n", f'[global]\nconnection_log = "{log}"\n'))
    sock = str(tmp_path / "l4lb.sock")
    try:
        with running(cfg, impl, port) as proc, open_session(port, backend) as client:
            local = client.getsockname()[1]
            proc.send_signal(signal.SIGTERM)
            wait_until("new clients refused", lambda: refused(port))  # before the drain
            assert draining(sock)
            status = request(sock, "status", timeout=2)
            assert status["drain_ends"] > time.time() + 20
            with pytest.raises(ControlError, match="stopping"):
                request(sock, "disable", service="web", backend=f"127.0.0.1:{backend.port}")
            assert proc.poll() is None  # the session holds the drain open
            started = time.monotonic()
            proc.send_signal(second)
            assert proc.wait(timeout=10) == 0
            assert time.monotonic() - started < 5
            assert proc.stderr is not None
            err = proc.stderr.read().decode()
            assert "stopping now" in err and "Aborted" not in err, err
            assert closed(client)  # the balancer closed the session (a reset, like a deadline)
            lines = wait_for_lines(log, 2)
            mine = [r for r in lines if r["client"].endswith(f":{local}")]
            assert len(mine) == 1, lines
            assert mine[0]["reason"] == "shutdown", mine  # the stop, not an operator's drain
    finally:
        backend.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_a_reloaded_shutdown_timeout_is_the_one_the_stop_uses(impl: str,
                                                              tmp_path: Path) -> None:
    backend = HoldServer()
    port = free_port()
    cfg = write_config(tmp_path, port, [backend.port])
    cfg.write_text(cfg.read_text().replace('shutdown_timeout = "3s"', 'shutdown_timeout = "30s"'))
    try:
        with running(cfg, impl, port) as proc, open_session(port, backend):
            cfg.write_text(cfg.read_text().replace('"30s"', '"1s"'))
            res = subprocess.run(l4lb_cmd("reload", "-c", str(cfg), "--json"),
                                 capture_output=True, text=True, env=child_env(), timeout=30)
            assert res.returncode == 0, res.stderr
            assert "shutdown_timeout 30s -> 1s" in res.stdout
            started = time.monotonic()
            assert stop_process(proc, signal.SIGTERM, timeout=8) == 0
            assert 0.8 < time.monotonic() - started < 6
    finally:
        backend.close()


def test_a_failed_reload_binds_nothing_and_the_next_one_adds_the_service(
        tmp_path: Path) -> None:
    backend = HoldServer()
    port, leak = free_port(), free_port()
    cfg = write_config(tmp_path, port, [backend.port])
    good = cfg.read_text()
    sock = str(tmp_path / "l4lb.sock")
    leak_service = (f'\n[[services]]\nname = "leak"\nlisten = ["127.0.0.1:{leak}"]\n'
                    '[services.health]\nsource = "{source}"\n'
                    f'[[services.backends]]\naddress = "127.0.0.1:{backend.port}"\n')
    try:
        with running(cfg, "c", port):
            cfg.write_text(good + leak_service.replace("{source}", "::1"))
            res = subprocess.run(l4lb_cmd("reload", "-c", str(cfg)), capture_output=True,
                                 text=True, env=child_env(), timeout=30)
            assert res.returncode == 1, res.stdout + res.stderr
            assert refused(leak)
            assert [s["name"] for s in request(sock, "status")["services"]] == ["web"]
            cfg.write_text(good + leak_service.replace("{source}", "127.0.0.1"))
            reply = request(sock, "reload")
            assert "services added: leak" in reply["changes"]
            assert "removed" not in reply["changes"]
            assert not refused(leak)
            reload_ok(cfg)  # nothing left to change: no new table
            assert request(sock, "status")["table"]["generation"] == reply["generation"]
    finally:
        backend.close()


def test_sigusr2_logs_a_summary_and_keeps_running(tmp_path: Path) -> None:
    """keepalived operators send SIGUSR2 for a stats dump: unhandled, it killed the daemon on the
    spot (exit 140), leaving the VIPs up. Now it logs the state and changes nothing."""
    backend = HoldServer()
    port = free_port()
    cfg = write_config(tmp_path, port, [backend.port])
    try:
        with running(cfg, "c", port) as proc:
            # still starting (the control socket and the handlers come after the listeners):
            # ignored then, never the default action, which ends the process
            proc.send_signal(signal.SIGUSR2)
            proc.send_signal(signal.SIGHUP)
            sock = str(tmp_path / "l4lb.sock")
            wait_until("control socket answers", lambda: not proc.poll() and answers(sock))
            assert proc.poll() is None
            proc.send_signal(signal.SIGUSR2)  # running: handled (before the SIGINT, in order)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
            assert proc.stderr is not None
            err = proc.stderr.read().decode()
            assert "daemon: SIGUSR2 received: state of 1 services" in err, err
            # (the wait for the listener made a connection of its own; it may still be open)
            assert re.search(r"service web: 1/1 backends up, \d+ active, \d+ total connections",
                             err), err
    finally:
        backend.close()
