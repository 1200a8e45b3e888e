"""health.on_down = "shutdown_sessions" in the daemon, against a fake data plane: the sessions of
a backend that goes DOWN (probes or max_fails) are closed with reason "backend_down" right after
the publish of the first table that gives it weight 0, not before; not during a panic (until a
table takes it out while still DOWN); not with the default "keep"; and the count reaches the
status and the metrics. No sockets, no sleeping: the coalesced publish runs on a real loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from l4lb.config import load_file
from l4lb.daemon import Daemon
from l4lb.health.checker import HealthChecker
from l4lb.health.dampener import Health, Transition
from l4lb.metrics import Exporter
from l4lb.state import Runtime
from l4lb.table.blob import parse

from .test_metrics import scrape

B1, B2, B3, B4 = "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003", "127.0.0.1:9004"


class FakeDataplane:
    """publish, stats and close_backend_sessions (one id or several); each close records what
    the live table (the last blob published) gave that backend at that moment, and each call
    the ids it named."""

    def __init__(self) -> None:
        self.generation = 0
        self.blob = b""
        self.active: dict[int, int] = {}  # backend id -> open TCP sessions
        self.failures: dict[int, int] = {}  # backend id -> connect failures
        self.closes: list[tuple[int, str, int, int]] = []  # (id, reason, live weight, gen)
        self.calls: list[list[int]] = []  # the ids of each close_backend_sessions call

    def publish(self, blob: bytes) -> int:
        self.blob = blob
        self.generation += 1
        return self.generation

    def live_weight(self, backend_id: int) -> int:
        found = [b.weight for b in parse(self.blob).backends if b.backend_id == backend_id]
        assert len(found) == 1
        return found[0]

    def stats(self) -> dict[str, Any]:
        ids = set(self.active) | set(self.failures)
        return {"generation": self.generation, "services": {}, "connlog_dropped": 0,
                "backends": {bid: {"conns_active": self.active.get(bid, 0),
                                   "connect_failures": self.failures.get(bid, 0)}
                             for bid in ids}}

    def close_backend_sessions(self, backend_ids: int | Iterable[int],
                               reason: str = "drain_timeout") -> int | dict[int, int]:
        ids = [backend_ids] if isinstance(backend_ids, int) else list(backend_ids)
        self.calls.append(ids)
        closed = {}
        for bid in dict.fromkeys(ids):
            self.closes.append((bid, reason, self.live_weight(bid), self.generation))
            closed[bid] = self.active.pop(bid, 0)
        return closed[ids[0]] if isinstance(backend_ids, int) else closed

    def stop(self, timeout: float) -> None:
        pass


def config(on_down: str = "", min_healthy: float = 0.1, extra: str = "") -> str:
    line = f'on_down = "{on_down}"' if on_down else ""
    return f"""\
[global]
control_socket = "{{dir}}/l4lb.sock"

[[services]]
name = "web"
listen = ["127.0.0.1:18080"]

  [services.health]
  min_healthy = {min_healthy}
  {line}
  {extra}

  [[services.backends]]
  address = "{B1}"

  [[services.backends]]
  address = "{B2}"

  [[services.backends]]
  address = "{B3}"
"""


def make_daemon(tmp_path: Path, text: str) -> tuple[Daemon, FakeDataplane]:
    path = tmp_path / "l4lb.toml"
    path.write_text(text.format(dir=tmp_path))
    daemon = Daemon(load_file(str(path)))
    dp = FakeDataplane()
    daemon.dp = dp
    daemon.file_config = daemon.config
    daemon.runtime = Runtime.from_config(daemon.config)
    daemon._publish()
    return daemon, dp


def bid(daemon: Daemon, address: str) -> int:
    return daemon.builder.backend_ids()[("web", address)]


def went(new: Health) -> Transition:
    old = Health.UP if new is Health.DOWN else Health.DOWN
    return Transition(old, new, "connect refused (3/3 probes failed)", 0.0)


async def settle(daemon: Daemon) -> None:
    """Let the loop run the coalesced publish."""
    for _ in range(100):
        if daemon.publish_handle is None:
            return
        await asyncio.sleep(0)
    raise AssertionError("the publish never ran")


def transitions(daemon: Daemon, *changes: tuple[str, Health]) -> tuple[int, int]:
    """Apply the changes in one burst on a loop; returns (closes before the publish ran,
    generation before it)."""
    dp: FakeDataplane = daemon.dp

    async def go() -> tuple[int, int]:
        for address, new in changes:
            daemon._on_transition(("web", address), went(new))
        before = (len(dp.closes), dp.generation)
        await settle(daemon)
        return before

    return asyncio.run(go())


def shut_down_count(daemon: Daemon, address: str) -> int:
    views = {v["address"]: v for v in daemon.cmd_backends("web")}
    count: int = views[address]["sessions_shut_down"]
    return count


def test_down_closes_its_sessions_right_after_the_table_without_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    daemon, dp = make_daemon(tmp_path, config("shutdown_sessions"))
    b2 = bid(daemon, B2)
    dp.active = {b2: 12, bid(daemon, B1): 3}
    assert dp.live_weight(b2) == 1
    with caplog.at_level(logging.INFO, logger="l4lb"):
        closes_before, gen_before = transitions(daemon, (B2, Health.DOWN))
    assert closes_before == 0  # nothing closed before the new table is out
    # one close, for that backend, with the reason, after the publish that took it out
    assert dp.closes == [(b2, "backend_down", 0, gen_before + 1)]
    assert dp.active == {bid(daemon, B1): 3}
    messages = caplog.messages
    closed = f'backend web/{B2}: closed 12 sessions (on_down = "shutdown_sessions")'
    assert closed in messages
    published = [i for i, m in enumerate(messages) if m.startswith("table: generation")]
    assert published and published[-1] < messages.index(closed)
    assert shut_down_count(daemon, B2) == 12 and shut_down_count(daemon, B1) == 0
    status = daemon.cmd_status()
    assert [b["sessions_shut_down"] for b in status["services"][0]["backends"]] == [0, 12, 0]
    fams = scrape(Exporter(lambda: status, process=False))
    got = {tuple(sorted(s.labels.items())): s.value
           for s in fams["l4lb_backend_sessions_shut_down"].samples}
    assert got[(("backend", B2), ("name", B2), ("service", "web"))] == 12

    daemon._publish()  # later publishes close nothing more
    transitions(daemon, (B2, Health.UP))
    assert len(dp.closes) == 1
    dp.active[b2] = 1  # DOWN again: closed again, counted on top
    transitions(daemon, (B2, Health.DOWN))
    assert [c[:3] for c in dp.closes] == [(b2, "backend_down", 0)] * 2
    assert shut_down_count(daemon, B2) == 13
    assert f'backend web/{B2}: closed 1 session (on_down = "shutdown_sessions")' \
        in caplog.messages


def test_the_default_keeps_the_sessions(tmp_path: Path) -> None:
    for text in (config(), config("keep")):
        daemon, dp = make_daemon(tmp_path, text)
        dp.active = {bid(daemon, B2): 4}
        transitions(daemon, (B2, Health.DOWN))
        assert dp.live_weight(bid(daemon, B2)) == 0  # out of rotation, sessions untouched
        assert dp.closes == [] and dp.active == {bid(daemon, B2): 4}
        health = daemon.config.services[0].health
        assert health is not None and health.on_down == "keep"
        assert shut_down_count(daemon, B2) == 0


def test_back_up_before_the_publish_closes_nothing(tmp_path: Path) -> None:
    daemon, dp = make_daemon(tmp_path, config("shutdown_sessions"))
    dp.active = {bid(daemon, B2): 2}
    transitions(daemon, (B2, Health.DOWN), (B2, Health.UP))
    assert dp.closes == [] and not daemon.on_down_pending


def test_several_at_once_make_one_table_then_one_close_call(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    daemon, dp = make_daemon(tmp_path, config("shutdown_sessions", min_healthy=0.0))
    b1, b2, b3 = bid(daemon, B1), bid(daemon, B2), bid(daemon, B3)
    dp.active = {b1: 4, b2: 2, b3: 1}
    gen = dp.generation
    with caplog.at_level(logging.INFO, logger="l4lb"):
        closes_before, _ = transitions(daemon, (B1, Health.DOWN), (B3, Health.DOWN))
    assert closes_before == 0 and dp.generation == gen + 1
    # ONE data-plane call for both, after the one table that gives both weight 0
    assert [sorted(call) for call in dp.calls] == [sorted([b1, b3])]
    assert sorted(dp.closes) == sorted([(b1, "backend_down", 0, gen + 1),
                                        (b3, "backend_down", 0, gen + 1)])
    assert dp.active == {b2: 2}
    # per backend: its own count and its own line, after the publish
    assert (shut_down_count(daemon, B1), shut_down_count(daemon, B2),
            shut_down_count(daemon, B3)) == (4, 0, 1)
    lines = [f'backend web/{B1}: closed 4 sessions (on_down = "shutdown_sessions")',
             f'backend web/{B3}: closed 1 session (on_down = "shutdown_sessions")']
    published = [i for i, m in enumerate(caplog.messages) if m.startswith("table: generation")]
    assert all(published[-1] < caplog.messages.index(line) for line in lines)


def test_a_panic_backend_waits_while_the_others_close_in_one_call(tmp_path: Path) -> None:
    # 4 backends, min_healthy 0.5 (2 UP needed): B2 DOWN alone is closed alone; B3 and B4
    # DOWN in the same tick leave 1 UP, a panic that keeps every DOWN backend in rotation and
    # closes nothing; B2 back UP ends the panic, B3 and B4 leave rotation still DOWN, and
    # one call closes both.
    text = config("shutdown_sessions", min_healthy=0.5).replace(
        f'  [[services.backends]]\n  address = "{B3}"\n',
        f'  [[services.backends]]\n  address = "{B3}"\n\n  [[services.backends]]\n'
        f'  address = "{B4}"\n')
    daemon, dp = make_daemon(tmp_path, text)
    b2, b3, b4 = bid(daemon, B2), bid(daemon, B3), bid(daemon, B4)
    dp.active = {b2: 1, b3: 2, b4: 3}
    transitions(daemon, (B2, Health.DOWN))
    assert dp.calls == [[b2]]
    transitions(daemon, (B3, Health.DOWN), (B4, Health.DOWN))
    assert daemon.cmd_status()["services"][0]["panic"] is not None
    assert dp.calls == [[b2]]  # panic: kept
    assert set(daemon.on_down_pending) == {("web", B3), ("web", B4)}
    transitions(daemon, (B2, Health.UP))
    assert daemon.cmd_status()["services"][0]["panic"] is None
    assert [sorted(call) for call in dp.calls] == [[b2], sorted([b3, b4])]
    assert (shut_down_count(daemon, B3), shut_down_count(daemon, B4)) == (2, 3)
    assert not daemon.on_down_pending


def test_a_failed_close_is_logged_for_each_backend(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    daemon, dp = make_daemon(tmp_path, config("shutdown_sessions", min_healthy=0.0))

    def refuse(backend_ids: object, reason: str = "drain_timeout") -> int:
        raise OSError(12, "Cannot allocate memory")

    dp.close_backend_sessions = refuse  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.INFO, logger="l4lb"):
        transitions(daemon, (B1, Health.DOWN), (B3, Health.DOWN))
    failed = sorted(m for m in caplog.messages if "closing its sessions" in m)
    assert failed == [f'backend web/{b}: closing its sessions (on_down = "shutdown_sessions") '
                      "failed: Cannot allocate memory" for b in (B1, B3)]
    assert shut_down_count(daemon, B1) == shut_down_count(daemon, B3) == 0


def test_panic_keeps_them_until_a_table_takes_the_backend_out(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # 3 backends, min_healthy 0.5: one DOWN is fine, two DOWN is a panic (1 < 1.5 UP)
    daemon, dp = make_daemon(tmp_path, config("shutdown_sessions", min_healthy=0.5))
    b2, b3 = bid(daemon, B2), bid(daemon, B3)
    dp.active = {b2: 5, b3: 7}
    with caplog.at_level(logging.INFO, logger="l4lb"):
        transitions(daemon, (B2, Health.DOWN), (B3, Health.DOWN))
        assert daemon.cmd_status()["services"][0]["panic"] is not None
        assert dp.live_weight(b2) == dp.live_weight(b3) == 1  # still in rotation
        assert dp.closes == []
        kept = [m for m in caplog.messages if "sessions kept" in m]
        assert sorted(kept) == sorted(
            f'backend web/{b}: sessions kept (on_down = "shutdown_sessions"): service web is '
            "in panic, DOWN backends stay in rotation; they are closed if it leaves rotation "
            "while still DOWN" for b in (B2, B3))
        daemon._publish()
        assert len([m for m in caplog.messages if "sessions kept" in m]) == 2  # said once
        transitions(daemon, (B2, Health.UP))  # the panic ends; B3 leaves rotation, still DOWN
    assert daemon.cmd_status()["services"][0]["panic"] is None
    assert dp.closes == [(b3, "backend_down", 0, dp.generation)]
    assert dp.active == {b2: 5}
    assert not daemon.on_down_pending


def test_a_reload_to_keep_forgets_a_pending_close(tmp_path: Path) -> None:
    daemon, dp = make_daemon(tmp_path, config("shutdown_sessions", min_healthy=0.5))
    dp.active = {bid(daemon, B2): 1, bid(daemon, B3): 1}
    transitions(daemon, (B2, Health.DOWN), (B3, Health.DOWN))  # panic: pending
    assert set(daemon.on_down_pending) == {("web", B2), ("web", B3)}
    (tmp_path / "l4lb.toml").write_text(config("keep", min_healthy=0.0).format(dir=tmp_path))
    daemon.reload()
    assert dp.closes == [] and not daemon.on_down_pending


def test_passive_failures_take_it_down_and_close_too(tmp_path: Path) -> None:
    daemon, dp = make_daemon(tmp_path, config("shutdown_sessions", extra="max_fails = 3"))
    b2 = bid(daemon, B2)
    dp.active = {b2: 2}

    async def go() -> None:
        daemon.checker = HealthChecker(daemon._on_transition)
        daemon._sync_health()
        daemon.feed_passive_failures()  # the baseline
        dp.failures[b2] = 3
        daemon.feed_passive_failures()
        assert daemon.runtime.backends[("web", B2)].health == "down"
        assert dp.closes == []
        await settle(daemon)
        daemon.checker.stop()

    asyncio.run(go())
    assert dp.closes == [(b2, "backend_down", 0, dp.generation)]


class SlowClose(FakeDataplane):
    """A close that blocks until `release` lets it (one release() per close; as a large close of
    the C plane, GIL released, would take its time); it notes the generation live when it ends
    and the thread it ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Semaphore(0)
        self.published_during = threading.Event()  # a table went out while the close ran
        self.ended_at: list[tuple[int, str]] = []  # (live generation, thread name)

    def publish(self, blob: bytes) -> int:
        if self.started.is_set() and not self.ended_at:
            self.published_during.set()
        return super().publish(blob)

    def close_backend_sessions(self, backend_ids: int | Iterable[int],
                               reason: str = "drain_timeout") -> int | dict[int, int]:
        self.started.set()
        assert self.release.acquire(timeout=5.0), "never released"
        closed = super().close_backend_sessions(backend_ids, reason)
        self.ended_at.append((self.generation, threading.current_thread().name))
        return closed


def off_loop_daemon(tmp_path: Path) -> tuple[Daemon, SlowClose]:
    """A daemon whose on_down closes run off the loop (as with the C plane) against a SlowClose,
    its first table published."""
    daemon, _ = make_daemon(tmp_path, config("shutdown_sessions", min_healthy=0.0))
    dp = SlowClose()
    daemon.dp, daemon.generation, daemon.close_off_loop = dp, 0, True
    daemon._publish()
    return daemon, dp


def test_off_the_loop_the_close_lets_the_loop_run_and_fences_the_next_publish(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    daemon, dp = off_loop_daemon(tmp_path)
    b1, b3 = bid(daemon, B1), bid(daemon, B3)
    dp.active = {b1: 4, b3: 1}

    async def go() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        for address in (B1, B3):
            daemon._on_transition(("web", address), went(Health.DOWN))
        await settle(daemon)
        down_gen = dp.generation
        assert await loop.run_in_executor(None, dp.started.wait, 5.0)
        # the close is under way in its thread, and the loop runs: nothing counted yet
        assert daemon.closing is not None and shut_down_count(daemon, B1) == 0

        def release_when_overtaken() -> None:  # lets the close end; at once if a table
            dp.published_during.wait(0.5)       # overtook it (the fence would be missing)
            dp.release.release()

        threading.Thread(target=release_when_overtaken).start()
        daemon._on_transition(("web", B1), went(Health.UP))
        await settle(daemon)  # this publish waits for the close first
        return down_gen, dp.generation

    with caplog.at_level(logging.INFO, logger="l4lb"):
        down_gen, up_gen = asyncio.run(go())
    assert dp.ended_at == [(down_gen, "l4lb-close_0")]  # ended before the next table
    assert not dp.published_during.is_set() and up_gen == down_gen + 1
    assert [sorted(call) for call in dp.calls] == [sorted([b1, b3])]
    assert (shut_down_count(daemon, B1), shut_down_count(daemon, B3)) == (4, 1)
    closed = f'backend web/{B1}: closed 4 sessions (on_down = "shutdown_sessions")'
    up_table = f"table: generation {up_gen} published"
    assert caplog.messages.index(closed) < next(
        i for i, m in enumerate(caplog.messages) if m.startswith(up_table))
    daemon.stop(0.0)
    assert daemon.close_pool is None


def test_a_stop_waits_for_the_close_in_flight_and_counts_it(tmp_path: Path) -> None:
    daemon, dp = off_loop_daemon(tmp_path)
    dp.active = {bid(daemon, B2): 7}

    async def go() -> None:
        daemon._on_transition(("web", B2), went(Health.DOWN))
        await settle(daemon)
        assert await asyncio.get_running_loop().run_in_executor(None, dp.started.wait, 5.0)
        dp.release.release()
        daemon.begin_stop(0.0)  # waits for it and counts it before anything stops
        assert daemon.closing is None and shut_down_count(daemon, B2) == 7

    asyncio.run(go())
    daemon.stop(0.0)
    assert daemon.close_pool is None and dp.ended_at


def test_a_close_counted_by_a_fence_does_not_wait_for_the_next_one(tmp_path: Path) -> None:
    """The completion callback of a close that a fence (the next publish) already counted must
    not wait for the close that publish started: the loop would block on it."""
    daemon, dp = off_loop_daemon(tmp_path)
    b1, b3 = bid(daemon, B1), bid(daemon, B3)
    dp.active = {b1: 2, b3: 3}

    async def go() -> None:
        loop = asyncio.get_running_loop()
        daemon._on_transition(("web", B1), went(Health.DOWN))
        await settle(daemon)
        assert await loop.run_in_executor(None, dp.started.wait, 5.0)
        first = daemon.closing
        assert first is not None
        dp.release.release()  # the first close ends; its callback is queued, not run yet:
        daemon._on_transition(("web", B3), went(Health.DOWN))
        assert daemon.publish_handle is not None
        daemon.publish_handle.cancel()  # publish now, without yielding to the loop
        daemon.publish_handle = None
        daemon._publish()  # fences (waits for and counts) the first, starts a second
        second = daemon.closing
        assert second is not None and second is not first
        assert shut_down_count(daemon, B1) == 2
        for _ in range(10):  # the first close's completion callback runs: a no-op now
            await asyncio.sleep(0)
        assert daemon.closing is second and not second[0].done()
        dp.release.release()
        await loop.run_in_executor(None, second[0].exception, 5.0)
        for _ in range(10):
            await asyncio.sleep(0)
        assert daemon.closing is None and shut_down_count(daemon, B3) == 3

    asyncio.run(go())
    assert [c for c in dp.calls] == [[b1], [b3]]
    daemon.stop(0.0)


def test_an_unexpected_error_in_the_close_thread_does_not_stop_the_next_table(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The close thread fails with something else than OSError/ValueError/TypeError (a
    MemoryError from the C plane's allocation, say): it is logged per backend, and the next
    publish, whose fence meets that failure, still puts its table out."""
    daemon, dp = off_loop_daemon(tmp_path)

    def fail(backend_ids: object, reason: str = "drain_timeout") -> int:
        dp.started.set()
        assert dp.release.acquire(timeout=5.0), "never released"
        raise MemoryError()

    dp.close_backend_sessions = fail  # type: ignore[method-assign,assignment]

    async def go() -> tuple[int, int]:
        daemon._on_transition(("web", B1), went(Health.DOWN))
        await settle(daemon)
        assert await asyncio.get_running_loop().run_in_executor(None, dp.started.wait, 5.0)
        before = dp.generation
        closing = daemon.closing
        assert closing is not None
        dp.release.release()
        assert closing[0].exception(5.0) is not None  # failed; its callback not run yet
        daemon._on_transition(("web", B1), went(Health.UP))
        assert daemon.publish_handle is not None
        daemon.publish_handle.cancel()  # publish now: its fence meets the failure
        daemon.publish_handle = None
        daemon._publish()
        for _ in range(10):  # the failed close's completion callback: a no-op now
            await asyncio.sleep(0)
        return before, dp.generation

    with caplog.at_level(logging.INFO, logger="l4lb"):
        before, after = asyncio.run(go())
    assert after == before + 1  # the table with B1 back UP went out
    assert daemon.closing is None and shut_down_count(daemon, B1) == 0
    assert any(m.startswith(f"backend web/{B1}: closing its sessions") and "MemoryError" in m
               for m in caplog.messages), caplog.messages
    daemon.stop(0.0)


def test_only_a_plane_that_closes_without_the_gil_closes_off_the_loop() -> None:
    """The daemon reads the capability from the data plane's class: the C plane has it, the
    reference plane (which holds the GIL while it closes) and the fakes do not."""
    from l4lb.daemon import closes_off_loop
    from l4lb.refdp.dataplane import Dataplane as ReferenceDataplane

    assert not closes_off_loop(ReferenceDataplane)
    assert not closes_off_loop(FakeDataplane)
    try:
        from l4lb._dataplane import Dataplane as CDataplane
    except ImportError:
        pytest.skip("the C data plane is not built")
    assert closes_off_loop(CDataplane)


def test_a_drain_deadline_closes_off_the_loop_and_ends_the_drain_when_done(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A drain deadline's close runs in the close thread too (a drain of 100,000 sessions
    takes about a second): the loop goes on, check_drains does not call the backend drained
    meanwhile, and the drain ends as "deadline" with the count once the close is done."""
    daemon, dp = off_loop_daemon(tmp_path)
    b2, b3 = bid(daemon, B2), bid(daemon, B3)
    dp.active = {b2: 5, b3: 2}
    drain = daemon.cmd_drain("web", B2, timeout="1h")["drain"]["id"]
    replaced = daemon.cmd_drain("web", B3, timeout="1h")["drain"]["id"]
    for armed in daemon.drains.pending.values():
        armed.deadline -= 3600.0  # both due now: one call for both

    async def go() -> None:
        loop = asyncio.get_running_loop()
        daemon.drain_deadline_reached(drain)  # returns at once, the close in its thread
        assert await loop.run_in_executor(None, dp.started.wait, 5.0)
        assert daemon.closing is not None
        status = daemon.cmd_drain_status(drain)
        assert status["outcome"] is None and status["closing"] is True  # not ended yet
        dp.active[b2] = 0  # as if the workers had closed some already
        # `l4lb drain` must go on polling: 0 sessions left, but the drain has not ended
        assert daemon.cmd_drain_status(drain)["sessions"] == 0
        daemon.check_drains()  # ... which must not end it as "drained"
        assert daemon.cmd_drain_status(drain)["outcome"] is None
        # a new drain of B3 while the close runs waits for it (the fence): the old drain
        # ends as "deadline" first, and the new one finds nothing left
        threading.Timer(0.2, dp.release.release).start()
        again = daemon.cmd_drain("web", B3, timeout="1h")["drain"]["id"]
        assert daemon.closing is None
        old = daemon.cmd_drain_status(replaced)["outcome"]
        assert (old["outcome"], old["closed"]) == ("deadline", 2)
        assert daemon.cmd_drain_status(again)["outcome"]["outcome"] == "drained"
        assert not daemon.drain_closing  # else check_drains would never end a later drain

    with caplog.at_level(logging.INFO, logger="l4lb"):
        asyncio.run(go())
    assert dp.ended_at and dp.ended_at[0][1] == "l4lb-close_0"
    assert [sorted(call) for call in dp.calls] == [sorted([b2, b3])]
    status = daemon.cmd_drain_status(drain)
    assert status["outcome"]["outcome"] == "deadline" and status["closing"] is False
    assert f"backend web/{B2}: drain deadline reached, closed 0 sessions" in caplog.messages
    assert caplog.messages.index(f"backend web/{B3}: drain deadline reached, closed 2 "
                                 "sessions") < next(i for i, m in enumerate(caplog.messages)
                                                    if m.startswith(f"backend web/{B3}: draining"))
    daemon.stop(0.0)
