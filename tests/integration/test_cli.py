"""The `l4lb` command as a user runs it: check, run (both data planes), signals, demo, version."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from .procs import (
    REPO,
    NameServer,
    child_env,
    fetch,
    free_port,
    l4lb_cmd,
    stop_process,
    wait_listening,
)

IMPLS = ["c", "ref"]


def write_config(tmp_path: Path, port: int, backends: list[int], extra: str = "",
                 scheduler: str = "round_robin") -> Path:
    lines = [
        "[global]",
        "workers = 2",
        'shutdown_timeout = "3s"',
        f'control_socket = "{tmp_path}/l4lb.sock"',
        "",
        "[[services]]",
        'name = "web"',
        'protocol = "tcp"',
        f'listen = ["127.0.0.1:{port}"]',
        f'scheduler = "{scheduler}"',
        'connect_timeout = "1s"',
        extra,
    ]
    for bport in backends:
        lines += ["", "  [[services.backends]]", f'  address = "127.0.0.1:{bport}"']
    path = tmp_path / "l4lb.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_check_accepts_the_annotated_example() -> None:
    res = subprocess.run(l4lb_cmd("check", "-c", str(REPO / "conf/l4lb.toml")),
                         capture_output=True, text=True, env=child_env(), timeout=30)
    assert res.returncode == 0, res.stderr
    assert "ok (" in res.stdout


def test_check_reports_every_error_with_position(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        "[[services]]\n"
        'name = "web"\n'
        'protocol = "tcp"\n'
        'listen = ["127.0.0.1:8080"]\n'
        'schedular = "maglev"\n'
        "  [[services.backends]]\n"
        '  address = "127.0.0.1:70000"\n'
    )
    res = subprocess.run(l4lb_cmd("check", "-c", str(bad)), capture_output=True, text=True,
                         env=child_env(), timeout=30)
    assert res.returncode == 1
    err = res.stderr
    assert f"{bad}:5:1: error:" in err and 'did you mean "scheduler"' in err
    assert f"{bad}:7:" in err and "70000" in err
    assert res.stdout == ""


def test_check_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    res = subprocess.run(l4lb_cmd("check", "-c", str(tmp_path / "nope.toml")),
                         capture_output=True, text=True, env=child_env(), timeout=30)
    assert res.returncode == 1
    assert "nope.toml" in res.stderr and "No such file" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_run_balances_and_drains_on_sigterm(impl: str, tmp_path: Path,
                                            name_servers: list[NameServer]) -> None:
    port = free_port()
    cfg = write_config(tmp_path, port, [s.port for s in name_servers])
    proc = subprocess.Popen(l4lb_cmd("run", "-c", str(cfg)), env=child_env(impl == "ref"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        seen = Counter(fetch(port).decode() for _ in range(30))
        # round_robin over 2 workers: every backend serves a share, nothing is lost.
        assert set(seen) == {"b1", "b2", "b3"}, seen
        assert sum(seen.values()) == 30
        # a session open across SIGTERM finishes: the drain lets it complete.
        held = socket.create_connection(("127.0.0.1", port), timeout=3)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert held.recv(16) in (b"b1", b"b2", b"b3")
        held.close()
        assert proc.wait(timeout=10) == 0
    finally:
        stop_process(proc, signal.SIGKILL)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert "service web: listening on 127.0.0.1:" in err
    assert "SIGTERM received: draining" in err
    if impl == "ref":
        assert "pure-Python reference data plane" in err


def test_run_refuses_an_address_in_use(tmp_path: Path, name_servers: list[NameServer]) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = int(blocker.getsockname()[1])
    try:
        cfg = write_config(tmp_path, port, [name_servers[0].port])
        res = subprocess.run(l4lb_cmd("run", "-c", str(cfg)), capture_output=True, text=True,
                             env=child_env(), timeout=30)
    finally:
        blocker.close()
    assert res.returncode == 3, res.stderr
    line = [x for x in res.stderr.splitlines() if "error" in x]
    assert len(line) == 1, res.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use (EADDRINUSE)" in line[0]
    assert "published" not in res.stderr, res.stderr  # refused before the first table


def test_run_invalid_config_exits_1(tmp_path: Path) -> None:
    cfg = tmp_path / "x.toml"
    cfg.write_text("[[services]]\nname = 3\n")
    res = subprocess.run(l4lb_cmd("run", "-c", str(cfg)), capture_output=True, text=True,
                         env=child_env(), timeout=30)
    assert res.returncode == 1
    assert f"{cfg}:2:8: error:" in res.stderr


def test_run_without_compiled_module_says_how_to_build(tmp_path: Path,
                                                       name_servers: list[NameServer]) -> None:
    """With the extension unimportable, `l4lb run` must refuse, not fall back."""
    cfg = write_config(tmp_path, free_port(), [name_servers[0].port])
    # sys.modules[name] = None makes every import of it raise ImportError, whatever finder
    # (source tree, editable install) would have found the .so.
    code = ("import sys; sys.modules['l4lb._dataplane'] = None; "
            "sys.argv = ['l4lb', 'run', '-c', sys.argv[1]]; "
            "from l4lb.cli import main; main()")
    res = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True,
                         env=child_env(), timeout=30, cwd=tmp_path)
    assert res.returncode == 4, res.stderr
    assert "l4lb._dataplane is not built" in res.stderr
    assert "pip install ." in res.stderr and "L4LB_NO_EXTENSIONS=1" in res.stderr


def test_version_names_the_data_plane() -> None:
    res = subprocess.run(l4lb_cmd("version"), capture_output=True, text=True, env=child_env(),
                         timeout=30)
    assert res.returncode == 0
    assert res.stdout.startswith("l4lb 0.")
    assert "data plane: compiled C" in res.stdout


def test_demo_serves_three_named_backends() -> None:
    port = free_port()
    proc = subprocess.Popen(l4lb_cmd("demo", "--port", str(port), "--duration", "20"),
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        names = Counter()
        for _ in range(9):
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 200 OK")
            names[body.decode().strip()] += 1
        assert names == {"backend-1": 3, "backend-2": 3, "backend-3": 3}
        # the nc-style path: greeting, then echo prefixed with the backend name
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            greeting = s.recv(100).decode()
            assert greeting.startswith("hello from backend-")
            who = greeting.split()[-1]
            s.sendall(b"ping\n")
            assert s.recv(100).decode() == f"{who}: ping\n"
        time.sleep(1.5)  # let the once-a-second live line catch up
        assert stop_process(proc, signal.SIGINT) == 0
    finally:
        stop_process(proc, signal.SIGKILL)
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert f"curl -s http://127.0.0.1:{port}/" in out
    # the live line (not a TTY: printed when it changes) shows the per-backend counts: 11
    # connections in all (wait_listening's probe, 9 HTTP requests, the echo session), so round
    # robin gave two backends 4 and one 3.
    last = [x for x in out.splitlines() if x.startswith("backend-1: ")][-1]
    counts = re.findall(r"(backend-\d): (\d+) conns \((\d+) open\)", last)
    assert [name for name, _, _ in counts] == ["backend-1", "backend-2", "backend-3"], last
    assert sorted(int(total) for _, total, _ in counts) == [3, 4, 4], last
    assert all(active == "0" for _, _, active in counts), last
