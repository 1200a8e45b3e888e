"""Review 6, daemon side, without a data plane: reloads and add-backend are all or nothing,
every changed global is reported, the runtime API takes only the file's backend names, the
views carry the UDP counters and panic, and sessions/flows check their service.

The daemon runs against a recording fake data plane and real loopback listeners (port 0 is not
a valid listen address, so the tests take a free port); nothing sleeps."""

from __future__ import annotations

import logging
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from l4lb.config import load_file
from l4lb.control import ControlError
from l4lb.daemon import BackendView, Daemon, backend_name_problem
from l4lb.health.checker import HealthChecker
from l4lb.reload import plan
from l4lb.state import Runtime


def free_port() -> int:
    """A port free for TCP and for UDP a moment ago: the services here are of either protocol
    (a port checked for TCP only collided with another process's UDP socket once)."""
    for _ in range(50):
        with socket.socket() as s, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for both TCP and UDP in 50 tries")


def can_bind(port: int) -> bool:
    """True when nobody listens on 127.0.0.1:port (a leaked listener would)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class FakeDataplane:
    """Records what the daemon asks: tables, listeners; counters the test sets."""

    def __init__(self) -> None:
        self.generation = 0
        self.blobs: list[bytes] = []
        self.listeners: dict[int, int] = {}  # fd -> service id
        self.backend_stats: dict[int, dict[str, int]] = {}
        self.fail_add_listener = False
        self.fail_add_once = False  # fail the next add_listener only
        self.fail_publish = False

    def publish(self, blob: bytes) -> int:
        if self.fail_publish:
            raise ValueError("table rejected (injected)")
        self.blobs.append(blob)
        self.generation += 1
        return self.generation

    def add_listener(self, service_id: int, fd: int, worker: int) -> None:
        if self.fail_add_listener or self.fail_add_once:
            self.fail_add_once = False
            raise OSError(12, "Cannot allocate memory (injected)")
        self.listeners[fd] = service_id

    def remove_listener(self, fd: int) -> None:
        self.listeners.pop(fd, None)

    def stats(self) -> dict[str, Any]:
        return {"generation": self.generation, "services": {}, "connlog_dropped": 0,
                "backends": self.backend_stats}

    def sessions(self) -> list[dict[str, Any]]:
        return []

    def flows(self) -> list[dict[str, Any]]:
        return []

    def stop(self, timeout: float) -> None:
        pass


def service(name: str, port: int, backends: list[str], extra: str = "",
            protocol: str = "tcp") -> str:
    out = f'\n[[services]]\nname = "{name}"\nprotocol = "{protocol}"\n' \
          f'listen = ["127.0.0.1:{port}"]\n{extra}\n'
    for b in backends:
        out += f'\n  [[services.backends]]\n  address = "{b}"\n'
    return out


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "l4lb.toml"
    path.write_text(f'[global]\ncontrol_socket = "{tmp_path}/c.sock"\n{text}')
    return path


def make_daemon(path: Path, checker: bool = False) -> tuple[Daemon, FakeDataplane]:
    """A daemon as start() leaves it, listeners included, on a fake data plane."""
    from l4lb.net.listen import open_listeners

    daemon = Daemon(load_file(str(path)))
    dp = FakeDataplane()
    daemon.dp = dp
    daemon.workers = 1
    daemon.file_config = daemon.config
    daemon.runtime = Runtime.from_config(daemon.config)
    if checker:  # probes are never started (no loop): only its bookkeeping is used
        daemon.checker = HealthChecker(daemon._on_transition)
        daemon._sync_health()
    daemon._publish()
    ids = daemon.builder.service_ids()
    for svc in daemon.config.services:
        for endpoint in svc.listen:
            group = open_listeners(svc.name, endpoint, 1, 16, svc.protocol)
            daemon.listeners.append(group)
            for worker, sock in enumerate(group.sockets):
                dp.add_listener(ids[svc.name], sock.fileno(), worker)
    return daemon, dp


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_port(), free_port()


def snapshot(daemon: Daemon) -> tuple[Any, ...]:
    keys = sorted(daemon.checker.keys()) if daemon.checker is not None else []
    return (daemon.config, daemon.file_config, sorted(daemon.runtime.backends), daemon.digest,
            [(g.service, g.endpoint) for g in daemon.listeners], keys,
            sorted(daemon.builder.service_ids()))  # names: a rollback may renumber (report)


# ---- item 1: reload and add-backend are transactional ----


def family_mismatch(path: Path, service_name: str) -> Any:
    """load_file for `path`, with the health source of `service_name` made IPv6 after the
    validator (which now refuses it) passed the file: a failure only the daemon can meet."""
    def load(_: str, **kwargs: Any) -> Any:
        config = load_file(str(path), **kwargs)
        services = tuple(
            replace(s, health=replace(s.health, source="::1"))
            if s.name == service_name and s.health is not None else s
            for s in config.services)
        return replace(config, services=services)
    return load


@pytest.mark.parametrize("how", ["precheck", "checker"])
def test_reload_with_an_unprobeable_health_target_changes_nothing(
        tmp_path: Path, ports: tuple[int, int], monkeypatch: pytest.MonkeyPatch,
        how: str) -> None:
    web, leak = ports
    path = write(tmp_path, service("web", web, ["127.0.0.1:9001"],
                                   '[services.health]\nsource = "127.0.0.1"'))
    daemon, dp = make_daemon(path, checker=True)
    assert daemon.checker is not None
    before, fds = snapshot(daemon), dict(dp.listeners)
    # a new service on a new port whose backend cannot be probed
    path.write_text(path.read_text() + service("leak", leak, ["127.0.0.1:9002"],
                                               '[services.health]\nsource = "127.0.0.1"'))
    with monkeypatch.context() as patch:
        if how == "precheck":  # an IPv6 source for an IPv4 backend (ProbeSpec refuses it)
            patch.setattr("l4lb.daemon.load_file", family_mismatch(path, "leak"))
        else:  # the checker itself fails on the new backend
            real_add = daemon.checker.add

            def add(key: Any, *args: Any) -> None:
                if key[0] == "leak":
                    raise ValueError("probe refused (injected)")
                real_add(key, *args)
            patch.setattr(daemon.checker, "add", add)
        with pytest.raises(ControlError, match=r"unchanged.*(IPv4|injected)"):
            daemon.reload()
    assert snapshot(daemon) == before
    assert dp.listeners == fds and can_bind(leak)
    # and the next good reload adds it for the first time (it was never running)
    result = daemon.reload()
    assert "services added: leak" in result["changes"]
    assert "services removed" not in result["changes"]


def test_a_failure_after_the_table_went_live_rolls_everything_back(
        tmp_path: Path, ports: tuple[int, int]) -> None:
    web, extra = ports
    path = write(tmp_path, service("web", web, ["127.0.0.1:9001"],
                                   '[services.health]\nsource = "127.0.0.1"'))
    daemon, dp = make_daemon(path, checker=True)
    before, fds = snapshot(daemon), dict(dp.listeners)
    path.write_text(path.read_text() + service("more", extra, ["127.0.0.1:9002"],
                                               '[services.health]\nsource = "127.0.0.1"'))
    dp.fail_add_listener = True  # the step after publish: handing the new listener over
    with pytest.raises(ControlError, match="Cannot allocate memory"):
        daemon.reload()
    assert snapshot(daemon) == before  # the checker no longer probes more's backend
    assert dp.blobs[-1] == dp.blobs[0]  # the old table is live again
    assert dp.listeners == fds and can_bind(extra)
    dp.fail_add_listener = False
    assert "services added: more" in daemon.reload()["changes"]
    assert not can_bind(extra)


def test_a_listener_that_failed_to_move_serves_its_old_service_again(
        tmp_path: Path, ports: tuple[int, int]) -> None:
    path = write(tmp_path, service("old", ports[0], ["127.0.0.1:9001"]))
    daemon, dp = make_daemon(path)
    before, fds = snapshot(daemon), dict(dp.listeners)
    path.write_text(path.read_text().replace('"old"', '"new"'))  # the address changes service
    dp.fail_add_once = True
    with pytest.raises(ControlError, match="Cannot allocate memory"):
        daemon.reload()
    assert snapshot(daemon) == before and set(dp.listeners) == set(fds)
    assert [g.service for g in daemon.listeners] == ["old"]
    assert set(dp.listeners.values()) == {daemon.builder.service_ids()["old"]}
    result = daemon.reload()
    assert "services added: new" in result["changes"]
    assert [g.service for g in daemon.listeners] == ["new"]
    assert set(dp.listeners.values()) == {daemon.builder.service_ids()["new"]}


def test_a_failed_reload_keeps_the_health_state_of_backends_it_would_remove(
        tmp_path: Path, ports: tuple[int, int]) -> None:
    path = write(tmp_path, service("web", ports[0], ["127.0.0.1:9001", "127.0.0.1:9002"],
                                   '[services.health]\nsource = "127.0.0.1"'))
    daemon, dp = make_daemon(path, checker=True)
    assert daemon.checker is not None
    entry = daemon.checker._entries[("web", "127.0.0.1:9002")]
    path.write_text(path.read_text().replace('\n  [[services.backends]]\n  address = '
                                             '"127.0.0.1:9002"\n', "\n"))
    dp.fail_publish = True
    with pytest.raises(ControlError, match="injected"):
        daemon.reload()
    # the same entry (same dampener, same history), not a fresh one
    assert daemon.checker._entries[("web", "127.0.0.1:9002")] is entry


def test_add_backend_that_cannot_be_probed_is_not_listed(tmp_path: Path,
                                                         ports: tuple[int, int]) -> None:
    path = write(tmp_path, service("src", ports[0], ["127.0.0.1:9001"],
                                   '[services.health]\nsource = "127.0.0.1"'))
    daemon, _ = make_daemon(path, checker=True)
    generation, differences = daemon.generation, daemon.overlay.differences("src")
    with pytest.raises(ControlError, match=r"add-backend: rejected.*IPv4 but backend ::1"):
        daemon.cmd_add_backend("src", "[::1]:18604")
    assert [v.address for v in daemon.backend_views("src")] == ["127.0.0.1:9001"]
    assert daemon.overlay.differences("src") == differences
    assert daemon.generation == generation
    assert daemon.checker is not None and daemon.checker.keys() == [("src", "127.0.0.1:9001")]
    path.write_text(path.read_text().replace("9001", "9003"))
    assert "backends added: src/127.0.0.1:9003" in daemon.reload()["changes"]


def test_add_backend_rolls_back_when_the_table_is_refused(tmp_path: Path,
                                                          ports: tuple[int, int]) -> None:
    daemon, dp = make_daemon(write(tmp_path, service("web", ports[0], ["127.0.0.1:9001"])))
    before, differences = snapshot(daemon), daemon.overlay.differences("web")
    dp.fail_publish = True
    with pytest.raises(ControlError, match="injected"):
        daemon.cmd_add_backend("web", "127.0.0.1:9002")
    assert snapshot(daemon) == before
    assert daemon.overlay.differences("web") == differences == {"added": [], "removed": []}


# ---- item 4: every changed global is applied or reported ----


def test_reload_reports_and_applies_globals(tmp_path: Path, ports: tuple[int, int],
                                            caplog: pytest.LogCaptureFixture) -> None:
    log = tmp_path / "conn.jsonl"
    body = service("web", ports[0], ["127.0.0.1:9001"], 'scheduler = "maglev"')
    path = write(tmp_path, f'shutdown_timeout = "30s"\nconnection_log = "{log}"\n'
                           f'[metrics]\nlisten = "127.0.0.1:{ports[1]}"\n' + body)
    daemon, _ = make_daemon(path)
    daemon._switch_connlog(daemon._open_connlog(str(log)), str(log))
    generation = daemon.generation
    path.write_text(f'[global]\ncontrol_socket = "{tmp_path}/c.sock"\n'
                    f'shutdown_timeout = "2s"\nhash_seed = 7\nlog_format = "json"\n'
                    f'[metrics]\nlisten = "127.0.0.1:1"\n' + body)
    with caplog.at_level(logging.INFO, logger="l4lb"):
        result = daemon.reload()
    changes = result["changes"]
    assert daemon.config.global_.shutdown_timeout == 2.0 and "shutdown_timeout 30s -> 2s" in changes
    assert "hash_seed 0 -> 7 (every maglev and source_hash client is remapped)" in changes
    assert daemon.generation == generation + 1  # the seed is in the table
    assert f"connection_log {log} -> off" in changes and daemon.connlog is None
    assert set(result["restart_needed"]) == {"metrics.listen"}
    assert daemon.config.global_.log_format == "json"  # applied at once (test_reload_log_format)
    running = daemon.config.metrics_listen
    assert running is not None and running.port == ports[1]
    assert any("hash_seed changed" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert any("metrics.listen changed" in r.getMessage() for r in caplog.records)


def test_a_reload_without_change_publishes_nothing(tmp_path: Path,
                                                   ports: tuple[int, int]) -> None:
    daemon, dp = make_daemon(write(tmp_path, service("web", ports[0], ["127.0.0.1:9001"])))
    generation = daemon.generation
    result = daemon.reload()
    assert result["changes"] == "no change" and result["generation"] == generation
    assert dp.generation == generation


def test_a_rejected_reload_warns_about_no_restart_key(tmp_path: Path, ports: tuple[int, int],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, service("web", ports[0], ["127.0.0.1:9001"]))
    daemon, dp = make_daemon(path)
    path.write_text(path.read_text().replace("[global]\n", "[global]\nworkers = 3\n"))
    dp.fail_publish = True
    path.write_text(path.read_text().replace("9001", "9002"))
    with caplog.at_level(logging.INFO, logger="l4lb"), pytest.raises(ControlError):
        daemon.reload()
    assert not any("restart" in r.getMessage() for r in caplog.records)


def test_plan_names_every_changed_global() -> None:
    from l4lb.config.model import GlobalSettings

    base = load_file_text("[[services]]\nname = \"a\"\nlisten = [\"127.0.0.1:80\"]\n"
                          "[[services.backends]]\naddress = \"127.0.0.1:1\"\n")
    new = replace(base, global_=GlobalSettings(shutdown_timeout=5.0, connection_log=None,
                                               log_level="debug", hash_seed=3))
    p = plan(base, new)
    names = [k for k, _, _ in p.settings_changed]
    assert names == ["log_level", "hash_seed", "shutdown_timeout"]
    assert p.restart_needed == () and p.summary() != "no change"


def load_file_text(text: str) -> Any:
    from l4lb.config import load_text

    return load_text(text, "x.toml", host=None)


# ---- item 5: the runtime API takes the file's backend names ----


@pytest.mark.parametrize("name", ["bad name", "x" * 65, "tab\there", "nul\x00"])
def test_add_backend_refuses_names_the_file_refuses(tmp_path: Path, ports: tuple[int, int],
                                                    name: str) -> None:
    daemon, _ = make_daemon(write(tmp_path, service("web", ports[0], ["127.0.0.1:9001"])))
    assert backend_name_problem(name) is not None
    with pytest.raises(ControlError, match="add-backend: name: invalid backend name"):
        daemon.cmd_add_backend("web", "127.0.0.1:9002", name=name)
    assert len(daemon.backend_views("web")) == 1


def test_add_backend_without_a_name_is_named_by_its_address(tmp_path: Path,
                                                            ports: tuple[int, int]) -> None:
    daemon, _ = make_daemon(write(tmp_path, service("web", ports[0], ["127.0.0.1:9001"])))
    daemon.cmd_add_backend("web", "127.0.0.1:9002", name="")
    daemon.cmd_add_backend("web", "127.0.0.1:9003", name="b-3")
    assert [v.name for v in daemon.backend_views("web")] == ["127.0.0.1:9001", "127.0.0.1:9002",
                                                           "b-3"]


# ---- item 6: views ----


def test_backend_views_carry_udp_counters_and_status_carries_panic(
        tmp_path: Path, ports: tuple[int, int]) -> None:
    text = service("dns", ports[0], ["127.0.0.1:9001", "127.0.0.1:9002"], protocol="udp") + \
        service("web", ports[1], ["127.0.0.1:9003", "127.0.0.1:9004"],
                '[services.health]\nsource = "127.0.0.1"')
    daemon, dp = make_daemon(write(tmp_path, text))
    bid = daemon.builder.backend_ids()[("dns", "127.0.0.1:9001")]
    dp.backend_stats[bid] = {"flows_active": 2, "flows_total": 9, "datagrams_to_backend": 40,
                             "datagrams_to_client": 38}
    view = daemon.backend_views("dns")[0]
    assert (view.flows_active, view.flows_total, view.datagrams_to_backend,
            view.datagrams_to_client) == (2, 9, 40, 38)
    tcp = daemon.cmd_backends("web")[0]
    assert {k: tcp[k] for k in ("flows_active", "flows_total", "datagrams_to_backend",
                                "datagrams_to_client")} == dict.fromkeys(
        ("flows_active", "flows_total", "datagrams_to_backend", "datagrams_to_client"), 0)
    assert "flows_active" in BackendView.__dataclass_fields__
    status = daemon.cmd_status()
    assert [s["panic"] for s in status["services"]] == [None, None]
    assert status["state"] == "running"
    # every checked backend of web DOWN: below min_healthy, the service panics
    for key, rt in daemon.runtime.backends.items():
        if key[0] == "web":
            rt.health = "down"
    daemon._publish()
    panic = daemon.cmd_status()["services"][1]["panic"]
    assert isinstance(panic, str) and panic
    assert daemon.weights is not None and panic == daemon.weights.panic["web"]
    view = daemon.backend_views("web")[0]
    assert view.state == "down" and view.effective_weight > 0  # panic keeps DOWN ones in


# ---- item 7: sessions and flows check the service ----


def test_sessions_and_flows_check_their_service(tmp_path: Path, ports: tuple[int, int]) -> None:
    text = service("dns", ports[0], ["127.0.0.1:9001"], protocol="udp") + \
        service("web", ports[1], ["127.0.0.1:9003"])
    daemon, _ = make_daemon(write(tmp_path, text))
    for cmd in (daemon.cmd_sessions, daemon.cmd_flows, daemon.cmd_backends):
        with pytest.raises(ControlError, match=r"no service named 'nope' \(services: dns, web\)"):
            cmd("nope")
    with pytest.raises(ControlError, match="'web' is a TCP service"):
        daemon.cmd_flows("web")
    with pytest.raises(ControlError, match="'dns' is a UDP service"):
        daemon.cmd_sessions("dns")
    assert daemon.cmd_sessions("web") == [] and daemon.cmd_flows("dns") == []
    assert daemon.cmd_sessions() == [] and daemon.cmd_flows() == []


# ---- item 2: the stop closes the listeners first and refuses changes ----


def test_begin_stop_closes_listeners_and_refuses_changes(tmp_path: Path,
                                                         ports: tuple[int, int]) -> None:
    daemon, dp = make_daemon(write(tmp_path, service("web", ports[0], ["127.0.0.1:9001"])))
    daemon.begin_stop(30.0)
    assert dp.listeners == {} and daemon.listeners == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ports[0]), timeout=2).close()
    assert daemon.cmd_status()["state"] == "draining"
    for call in (daemon.reload, lambda: daemon.cmd_add_backend("web", "127.0.0.1:9002"),
                 lambda: daemon.cmd_disable("web", "127.0.0.1:9001")):
        with pytest.raises(ControlError, match="stopping"):
            call()
    daemon.stop(0.0)
