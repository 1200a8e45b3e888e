"""Integration tests of `kind = "exec"` probes running real shell scripts written into tmp_path.

Verdicts (exit 0, exit N with and without output, a signal, a timeout), the process group
(a backgrounded grandchild is killed at the timeout and when the script exits while it holds
the pipe), bounded output, the environment, stdin and cwd the script gets, a program that
vanished after load, command_user, cancellation and the engine's close, and the checker
taking a backend DOWN and UP. Every test bounds its probes with asyncio.wait_for; every
process a script starts is checked to be dead by PID, and no child of this process is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import pwd
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from l4lb.health import HealthChecker, HealthSettings, ProbeEngine, ProbeResult, ProbeSpec
from l4lb.health.execprobe import EXEC_PATH, OUTPUT_KEEP, ExecProbe, ExecProbeEngine

pytestmark = pytest.mark.timeout(60)


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh loop, bounded to 30 s (fixtures pass through)."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 30.0))
    return run


def script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return path


def settings(command: Path | str, timeout: float = 5.0, **kw: Any) -> HealthSettings:
    return HealthSettings(kind="exec", command=(str(command),), timeout=timeout,
                          interval=max(timeout, 2.0), service="web", **kw)


def children() -> set[int]:
    """The PIDs of this process's children (every thread's)."""
    out: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            out |= {int(p) for p in Path(f"/proc/self/task/{tid}/children").read_text().split()}
    return out


def dead(pid: int) -> bool:
    """True when `pid` is gone or a zombie (killed; an orphan's reaping is its new parent's
    job, here PID 1's)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return text.rsplit(")", 1)[1].split()[0] == "Z"


def wait_dead(*pids: int, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not all(dead(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still alive: {[p for p in pids if not dead(p)]}"
        time.sleep(0.01)


def read_pid(path: Path, within: float = 3.0) -> int:
    deadline = time.monotonic() + within
    while True:
        text = path.read_text().strip() if path.exists() else ""
        if text.endswith("."):
            return int(text[:-1])
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def no_child_left() -> Iterator[None]:
    before = children()
    yield
    deadline = time.monotonic() + 3.0
    while children() - before:
        assert time.monotonic() < deadline, f"children left: {children() - before}"
        time.sleep(0.01)


async def probe(spec: ProbeSpec, engine: ProbeEngine | None = None,
                within: float = 20.0) -> tuple[ProbeResult, ExecProbe]:
    """Run one probe; the result and the exec engine's handle (its output, discarded count)."""
    own = engine is None
    eng = engine if engine is not None else ProbeEngine()
    fut: asyncio.Future[ProbeResult] = asyncio.get_running_loop().create_future()
    handle = eng.start(spec, lambda _t, r: fut.set_result(r), None)
    assert isinstance(handle, ExecProbe)
    try:
        return await asyncio.wait_for(fut, within), handle
    finally:
        handle.cancel()
        if own:
            eng.close()


def spec_of(command: Path | str, timeout: float = 5.0, **kw: Any) -> ProbeSpec:
    return ProbeSpec.build("127.0.0.1", 8443, settings(command, timeout, **kw))


# -- verdicts -------------------------------------------------------------------------------


@sync
async def test_exit_zero_passes(tmp_path: Path) -> None:
    result, _ = await probe(spec_of(script(tmp_path / "ok", "echo fine; exit 0")))
    assert (result.ok, result.reason, result.conclusive) == (True, "exit status 0", True)
    assert result.latency < 2.0


@sync
async def test_exit_status_fails_with_the_first_line_of_stdout_or_stderr(tmp_path: Path) -> None:
    body = 'echo "   "; echo "  db unreachable: connection refused  " >&2; echo more; exit 2'
    result, _ = await probe(spec_of(script(tmp_path / "fail", body)))
    assert (result.ok, result.reason, result.conclusive) == \
        (False, "exit status 2: db unreachable: connection refused", True)
    long_line = "x" * 300
    result, _ = await probe(spec_of(script(tmp_path / "long", f"echo {long_line}; exit 1")))
    assert result.reason == "exit status 1: " + "x" * 120


@sync
async def test_exit_status_without_output(tmp_path: Path) -> None:
    result, _ = await probe(spec_of(script(tmp_path / "quiet", "exit 3")))
    assert (result.ok, result.reason) == (False, "exit status 3")


@sync
async def test_killed_by_a_signal(tmp_path: Path) -> None:
    result, _ = await probe(spec_of(script(tmp_path / "segv", "echo crash; kill -SEGV $$")))
    assert (result.ok, result.reason) == (False, "killed by signal SIGSEGV")


@sync
async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    body = (f"sleep 60 & echo $!. > {tmp_path}/child\n"
            f"echo $$. > {tmp_path}/self\n"
            "echo still working\n"
            "sleep 60\n")
    started = time.monotonic()
    result, _ = await probe(spec_of(script(tmp_path / "slow", body), timeout=0.5))
    took = time.monotonic() - started
    assert (result.ok, result.reason) == (False, "timed out after 0.5s (killed)")
    assert 0.45 <= took < 2.0
    child, own = read_pid(tmp_path / "child"), read_pid(tmp_path / "self")
    assert not Path(f"/proc/{own}").exists()  # the script was reaped, not just killed
    wait_dead(child)


@sync
async def test_a_command_that_survives_its_kill_is_not_started_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """review12: a command that SIGKILL cannot end (uninterruptible sleep, e.g. on a hung NFS
    mount; simulated here by a kill that does nothing) gets its timeout verdict after the reap
    grace, and the same backend's next probe fails at once instead of starting a second
    command, so they cannot pile up beyond max_in_flight's count."""
    monkeypatch.setattr(ExecProbeEngine, "_killpg", staticmethod(lambda pgid: None))
    slow = script(tmp_path / "stuck", f"echo $$. > {tmp_path}/self\nexec sleep 60")
    engine = ProbeEngine()
    try:
        first, _ = await probe(spec_of(slow, timeout=0.3), engine)
        assert (first.ok, first.reason) == (False, "timed out after 0.3s (killed; not reaped "
                                                   "yet)")
        pid = read_pid(tmp_path / "self")
        running = children()
        second, _ = await probe(spec_of(slow, timeout=0.3), engine, within=1.0)
        assert (second.ok, second.reason, second.conclusive) == (
            False, f"previous command (pid {pid}) still not reaped after SIGKILL", True)
        assert children() == running  # nothing new was started
        other, _ = await probe(spec_of(script(tmp_path / "ok", "exit 0"), timeout=0.3), engine)
        assert other.ok  # another backend's (another command's) probes still run
    finally:
        monkeypatch.undo()
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(read_pid(tmp_path / "self", within=0), 9)
        engine.close()


@sync
async def test_a_grandchild_holding_the_pipe_neither_hangs_the_probe_nor_survives(
        tmp_path: Path) -> None:
    body = f"sleep 60 & echo $!. > {tmp_path}/child\necho started\nexit 4"
    started = time.monotonic()
    result, _ = await probe(spec_of(script(tmp_path / "bg", body), timeout=5.0))
    assert (result.ok, result.reason) == (False, "exit status 4: started")
    assert time.monotonic() - started < 2.0  # the exit decided, not the end of the output
    wait_dead(read_pid(tmp_path / "child"))


@sync
async def test_huge_output_is_drained_and_only_its_head_kept(tmp_path: Path) -> None:
    body = "echo first line; yes | head -c 10000000; exit 1"
    result, handle = await probe(spec_of(script(tmp_path / "chatty", body), timeout=10.0))
    assert (result.ok, result.reason) == (False, "exit status 1: first line")
    assert result.latency < 5.0  # never blocked on a full pipe until the timeout
    assert len(handle.output) == OUTPUT_KEEP
    assert len(handle.output) + handle.discarded == len("first line\n") + 10_000_000


# -- what the command gets ------------------------------------------------------------------


@sync
async def test_environment_stdin_cwd_and_merged_output(tmp_path: Path, monkeypatch:
                                                       pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("L4LB_SECRET_OF_THE_DAEMON", "leak")
    out = tmp_path / "seen"
    body = (f"tr '\\0' '\\n' < /proc/$$/environ > {out}.env\n"
            f"pwd > {out}.cwd\n"
            "fds=$(readlink /proc/$$/fd/0 /proc/$$/fd/1 /proc/$$/fd/2)\n"
            f'echo "$fds" > {out}.fds\n'
            f"ps -o pgid= -o sid= -p $$ > {out}.ids; echo $$ >> {out}.ids\n")
    spec = ProbeSpec.build("2001:db8::5", 8443,
                           settings(script(tmp_path / "env", body), protocol="udp", port=5353))
    result, _ = await probe(spec)
    assert result.ok, result
    env = dict(line.split("=", 1) for line in Path(f"{out}.env").read_text().splitlines())
    assert env == {"PATH": EXEC_PATH, "L4LB_SERVICE": "web", "L4LB_PROTOCOL": "udp",
                   "L4LB_BACKEND": "[2001:db8::5]:8443", "L4LB_BACKEND_ADDRESS": "2001:db8::5",
                   "L4LB_BACKEND_PORT": "5353"}
    assert Path(f"{out}.cwd").read_text() == "/\n"
    stdin, stdout, stderr = Path(f"{out}.fds").read_text().split()
    assert stdin == "/dev/null" and stdout == stderr and stdout.startswith("pipe:")
    pgid, sid, pid = Path(f"{out}.ids").read_text().split()
    assert pgid == sid == pid  # a session and process group of its own


@sync
async def test_a_program_that_vanished_after_load_fails(tmp_path: Path) -> None:
    path = script(tmp_path / "gone", "exit 0")
    spec = spec_of(path)
    path.unlink()
    result, _ = await probe(spec)
    assert (result.ok, result.reason, result.conclusive) == \
        (False, f"cannot run {path}: no such file or directory", True)
    script(path, "exit 0", mode=0o644)
    result, _ = await probe(spec)
    assert (result.ok, result.reason) == (False, f"cannot run {path}: permission denied")
    path.write_bytes(b"\x7fELF not really\n")
    path.chmod(0o755)
    result, _ = await probe(spec)
    assert (result.ok, result.reason) == (False, f"cannot run {path}: exec format error")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
@sync
async def test_command_user_runs_as_that_user_and_its_group() -> None:
    nobody = pwd.getpwnam("nobody")
    where = Path(tempfile.mkdtemp(prefix="l4lb-exec-", dir="/tmp"))
    try:
        where.chmod(0o755)
        path = script(where / "who", 'echo "$(id -u) $(id -g) $(id -G)"; exit 1')
        result, _ = await probe(spec_of(path, command_user="nobody"))
        assert result.reason == \
            f"exit status 1: {nobody.pw_uid} {nobody.pw_gid} {nobody.pw_gid}"
        result, _ = await probe(spec_of(path))
        assert result.reason.startswith(f"exit status 1: {os.geteuid()} ")
        path.chmod(0o700)  # root's own: nobody cannot run it
        result, _ = await probe(spec_of(path, command_user="nobody"))
        assert result.reason == f"cannot run {path}: permission denied"
    finally:
        shutil.rmtree(where)


# -- cancellation, close, the checker -------------------------------------------------------


@sync
async def test_cancel_kills_the_group_and_reaps_it(tmp_path: Path) -> None:
    body = f"sleep 60 & echo $!. > {tmp_path}/child\necho $$. > {tmp_path}/self\nsleep 60"
    engine = ProbeEngine()
    results: list[ProbeResult] = []
    try:
        handle = engine.start(spec_of(script(tmp_path / "long", body)),
                              lambda _t, r: results.append(r), None)
        assert isinstance(handle, ExecProbe)
        own = await asyncio.to_thread(read_pid, tmp_path / "self")
        child = read_pid(tmp_path / "child")
        assert engine.in_flight == 1
        handle.cancel()
        assert engine.in_flight == 0
        deadline = time.monotonic() + 3.0
        while Path(f"/proc/{own}").exists():  # reaped on the loop, when its pidfd fires
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        wait_dead(child)
        await asyncio.sleep(0.1)
        assert results == []
    finally:
        engine.close()


@sync
async def test_engine_close_kills_and_reaps_at_once(tmp_path: Path) -> None:
    engine = ProbeEngine()
    pids = []
    for i in range(3):
        body = f"sleep 60 & echo $!. > {tmp_path}/child{i}\necho $$. > {tmp_path}/self{i}\n" \
               "sleep 60"
        engine.start(spec_of(script(tmp_path / f"long{i}", body)), lambda _t, _r: None, None)
    for i in range(3):
        pids.append(await asyncio.to_thread(read_pid, tmp_path / f"self{i}"))
        pids.append(read_pid(tmp_path / f"child{i}"))
    engine.close()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids[0::2])  # reaped in close()
    wait_dead(*pids[1::2])


@sync
async def test_checker_takes_a_backend_down_and_up_with_the_reason(tmp_path: Path) -> None:
    flag = tmp_path / "healthy"
    path = script(tmp_path / "chk", f'[ -e {flag} ] && exit 0\necho "flag missing"; exit 2')
    transitions: list[Any] = []
    checker: HealthChecker[str] = HealthChecker(lambda key, t: transitions.append((key, t)))
    hs = HealthSettings(kind="exec", command=(str(path),), interval=0.1, timeout=0.1, rise=2,
                        fall=2, jitter=0.0, service="web")
    checker.add("web/127.0.0.1:1", "127.0.0.1", 1, hs)
    checker.start()
    try:
        deadline = time.monotonic() + 10
        while not transitions:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        key, down = transitions[0]
        assert (key, down.new.value, down.reason) == \
            ("web/127.0.0.1:1", "down", "exit status 2: flag missing (no probe has passed yet)")
        flag.touch()
        while len(transitions) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        up = transitions[1][1]
        assert (up.new.value, up.reason) == ("up", "exit status 0 (2/2 probes passed)")
        assert checker.stats().inconclusive == 0
    finally:
        checker.stop()


def test_scripts_are_written_executable(tmp_path: Path) -> None:
    mode = script(tmp_path / "x", "exit 0").stat().st_mode
    assert stat.S_IMODE(mode) == 0o755


# -- misc_dynamic (dynamic = true) ------------------------------------------------------------


@sync
async def test_misc_dynamic_exit_statuses(tmp_path: Path) -> None:
    """keepalived's rule: 0 passes without a weight, 1 fails, 2..255 pass with status - 2;
    without dynamic, 2..255 fail as before."""
    cases = [(0, True, "exit status 0", None), (1, False, "exit status 1: one", None),
             (2, True, "exit status 2 (weight 0)", 0), (52, True, "exit status 52 (weight 50)", 50),
             (255, True, "exit status 255 (weight 253)", 253)]
    for status, ok, reason, weight in cases:
        path = script(tmp_path / f"s{status}", f"echo one; exit {status}")
        result, _ = await probe(spec_of(path, dynamic=True))
        assert (result.ok, result.reason, result.weight) == (ok, reason, weight), status
        plain, _ = await probe(spec_of(path))
        assert plain.weight is None and plain.ok == (status == 0), status
    killed, _ = await probe(spec_of(script(tmp_path / "k", "kill -9 $$"), dynamic=True))
    assert (killed.ok, killed.weight) == (False, None)


@sync
async def test_checker_reports_misc_dynamic_weights_and_keeps_them_on_exit_zero(
        tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("12")
    path = script(tmp_path / "chk", f'exit "$(cat {status})"')
    weights: list[tuple[str, int | None, int, str]] = []
    checker: HealthChecker[str] = HealthChecker(
        lambda key, t: None, on_weight=lambda *args: weights.append(args))
    hs = HealthSettings(kind="exec", command=(str(path),), interval=0.05, timeout=0.05,
                        jitter=0.0, service="web", dynamic=True)
    checker.add("b", "127.0.0.1", 1, hs)
    checker.start()
    try:
        deadline = time.monotonic() + 10
        while not weights:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert weights == [("b", None, 10, "exit status 12 (weight 10)")]
        assert checker.dynamic_weights() == {"b": 10}
        status.write_text("0")  # exit 0: the weight set before stays (keepalived)
        await asyncio.sleep(0.3)
        assert checker.dynamic_weights() == {"b": 10} and len(weights) == 1
        status.write_text("7")
        while len(weights) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert weights[1] == ("b", 10, 5, "exit status 7 (weight 5)")
        # a reload that turns dynamic off drops the weight: the base weight again
        checker.add("b", "127.0.0.1", 1, HealthSettings(
            kind="exec", command=(str(path),), interval=0.05, timeout=0.05, jitter=0.0,
            service="web"))
        assert checker.dynamic_weights() == {}
    finally:
        checker.stop()


def test_shipped_misc_dynamic_examples_fail_when_the_server_does_not_answer(
        tmp_path: Path) -> None:
    """A shipped example with `dynamic = true` must run a command that exits 1 on every
    failure: under misc_dynamic an exit status 2..255 PASSES (weight status - 2), so a command
    that passes on its own failure statuses (pg_isready: 2 no response, 3 bad arguments) would
    keep a dead server UP. The example's program runs with a stand-in pg_isready that exits
    with each of its statuses."""
    import subprocess
    import tomllib

    from l4lb.health.execprobe import dynamic_verdict

    examples = Path(__file__).resolve().parents[2] / "conf" / "examples"
    fake = tmp_path / "bin"
    fake.mkdir()
    script(fake / "pg_isready", 'echo "pg_isready $*"; exit "$FAKE_STATUS"')
    found = 0
    for toml in sorted(examples.glob("*.toml")):
        for service in tomllib.loads(toml.read_text()).get("services", []):
            health = service.get("health", {})
            if not (health.get("kind") == "exec" and health.get("dynamic")):
                continue
            program = examples / Path(health["command"][0]).name  # installed from here
            assert program.is_file(), (toml.name, program)
            found += 1
            for status, ok in ((0, True), (1, False), (2, False), (3, False)):
                done = subprocess.run(
                    [str(program), *health["command"][1:]], capture_output=True, timeout=10,
                    env={"PATH": f"{fake}:{EXEC_PATH}", "FAKE_STATUS": str(status),
                         "L4LB_BACKEND_ADDRESS": "10.0.1.5", "L4LB_BACKEND_PORT": "5432"})
                verdict = dynamic_verdict(done.returncode, done.stdout, True)
                assert verdict[0] is ok, (toml.name, status, verdict)
    assert found >= 1
