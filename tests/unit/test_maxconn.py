"""Per-backend connection limits at run time: `l4lb maxconn`, the agent's `maxconn:N`, how the
two combine (the stricter holds), what a reload keeps, and what reaches the forwarding table
(the data planes enforce the table's limit: tests/integration/test_maxconn.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from l4lb import cli
from l4lb.config.model import Backend, Config, Endpoint, GlobalSettings, Service
from l4lb.control import ControlError
from l4lb.display import backend_table
from l4lb.health.agentreply import MAX_MAXCONN, parse_line
from l4lb.health.dynamic import NEUTRAL, apply_reply, combined_max_connections
from l4lb.state import U32_MAX, Runtime, StateError
from l4lb.table.blob import parse
from l4lb.table.builder import TableBuilder
from l4lb.table.maglev import maglev_fill as py_fill
from l4lb.weights import compute

from .test_daemon_agent import says, with_agents
from .test_daemon_on_down import FakeDataplane, make_daemon

B1, B2 = "127.0.0.1:9001", "127.0.0.1:9002"


# ---- the agent's word ----

@pytest.mark.parametrize(("line", "want"), [
    ("maxconn:30", 30),
    ("MaxConn:7 75%", 7),
    ("maxconn:0", 0),
    ("maxconn:5 maxconn:9", 9),  # the last word of a kind wins
    (f"maxconn:{MAX_MAXCONN + 1}", MAX_MAXCONN),
    ("up", None),
])
def test_the_agent_reply_carries_maxconn(line: str, want: int | None) -> None:
    reply = parse_line(line)
    assert reply.ok and reply.maxconn == want


@pytest.mark.parametrize("line", ["maxconn:", "maxconn:-1", "maxconn:3x", "maxconn=3"])
def test_a_bad_maxconn_makes_the_reply_malformed(line: str) -> None:
    reply = parse_line(line)
    assert not reply.ok and "unknown word" in reply.error


def test_said_names_the_limit() -> None:
    assert parse_line("drain maxconn:30 #busy").said() == "drain maxconn:30 (#busy)"


def test_what_the_agent_said_stays_until_it_says_otherwise() -> None:
    state = apply_reply(NEUTRAL, parse_line("maxconn:30"))
    assert state.maxconn == 30
    state = apply_reply(state, parse_line("50%"))  # silent about the limit: it stays
    assert (state.maxconn, state.percent) == (30, 50)
    assert apply_reply(state, parse_line("maxconn:0")).maxconn == 0
    assert apply_reply(state, parse_line("bogus maxconn:1")).maxconn == 30  # malformed


@pytest.mark.parametrize(("base", "agent", "want"), [
    (0, None, 0), (100, None, 100), (0, 30, 30), (100, 30, 30), (10, 30, 10),
    (100, 0, 100), (0, 0, 0),
])
def test_the_stricter_limit_holds(base: int, agent: int | None, want: int) -> None:
    state = apply_reply(NEUTRAL, parse_line(f"maxconn:{agent}")) if agent is not None \
        else NEUTRAL
    assert combined_max_connections(base, state) == want


# ---- runtime state, reloads, the table ----

def config(max_connections: int = 0, weight: int = 1) -> Config:
    backends = tuple(Backend(address=Endpoint("127.0.0.1", port, f"127.0.0.1:{port}"),
                             name=f"127.0.0.1:{port}", weight=weight,
                             max_connections=max_connections) for port in (9001, 9002))
    svc = Service(name="web", protocol="tcp", scheduler="weighted_round_robin",
                  listen=(Endpoint("127.0.0.1", 80, "127.0.0.1:80"),), backends=backends)
    return Config(path="t.toml", global_=GlobalSettings(), services=(svc,))


def table_limits(cfg: Config, rt: Runtime) -> list[int]:
    weights = compute(cfg, rt, now=0.0)
    blob = TableBuilder(maglev_fill=py_fill).build(cfg, weights.weights,
                                                   max_connections=weights.max_connections)
    return [b.max_connections for b in parse(blob).backends]


def test_a_runtime_limit_reaches_the_table() -> None:
    cfg = config(max_connections=50)
    rt = Runtime.from_config(cfg)
    assert table_limits(cfg, rt) == [50, 50]
    rt.set_max_connections("web", B1, 3)
    assert table_limits(cfg, rt) == [3, 50]
    rt.set_max_connections("web", B2, 0)  # 0 lifts the file's limit
    assert table_limits(cfg, rt) == [3, 0]


def test_the_limit_is_range_checked() -> None:
    rt = Runtime.from_config(config())
    with pytest.raises(StateError, match=r"max_connections -1 out of range 0\.\.4294967295"):
        rt.set_max_connections("web", B1, -1)
    with pytest.raises(StateError, match="out of range"):
        rt.set_max_connections("web", B1, U32_MAX + 1)
    with pytest.raises(ValueError, match=r"max_connections of web/127.0.0.1:9001: -2 is not"):
        TableBuilder(maglev_fill=py_fill).build(config(), max_connections={("web", B1): -2})


def test_a_reload_keeps_runtime_values_unless_the_file_changed_them() -> None:
    old = Runtime.from_config(config(max_connections=50, weight=4))
    old.set_max_connections("web", B1, 3)
    old.set_weight("web", B1, 9)
    same = Runtime.from_config(config(max_connections=50, weight=4), previous=old)
    assert (same.backends[("web", B1)].max_connections, same.backends[("web", B1)].weight) \
        == (3, 9)
    edited = Runtime.from_config(config(max_connections=80, weight=6), previous=same)
    # the operator edited the file last: its values win, for every backend
    assert [(b.max_connections, b.weight) for b in edited.backends.values()] == [(80, 6),
                                                                                 (80, 6)]
    again = Runtime.from_config(config(max_connections=80, weight=6), previous=edited)
    assert [(b.max_connections, b.weight) for b in again.backends.values()] == [(80, 6),
                                                                                (80, 6)]


# ---- the daemon: the command, its reply, its log line, the agent ----

TEXT = f"""\
[global]
control_socket = "{{dir}}/l4lb.sock"

[[services]]
name = "web"
listen = ["127.0.0.1:18080"]
scheduler = "weighted_round_robin"
backends = [{{{{ address = "{B1}", max_connections = 100 }}}}, {{{{ address = "{B2}" }}}}]
{{agent}}
"""


def limits(dp: FakeDataplane) -> dict[str, int]:
    table = parse(dp.blob)
    return {f"127.0.0.1:{b.port}": b.max_connections for b in table.backends}


def test_the_command_publishes_the_limit_and_says_so(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    daemon, dp = make_daemon(tmp_path, TEXT.replace("{agent}", ""))
    assert limits(dp) == {B1: 100, B2: 0}
    generation = daemon.generation
    with caplog.at_level(logging.INFO, logger="l4lb"):
        reply = daemon.cmd_maxconn("web", B2, 20)
    assert limits(dp) == {B1: 100, B2: 20} and daemon.generation == generation + 1
    assert (reply["max_connections"], reply["effective_max_connections"]) == (20, 20)
    assert f"backend web/{B2}: max_connections set to 20 (state up, weight 1)" in caplog.text
    assert cli._maxconn_text(reply) == (f"web/{B2}: max_connections 20, state up "
                                        f"(table generation {daemon.generation})")
    views = {v.address: v.as_dict() for v in daemon.backend_views("web")}
    assert views[B2]["max_connections"] == 20
    assert "0/20" in backend_table(list(views.values()))
    reply = daemon.cmd_maxconn("web", B1, 0)
    assert limits(dp) == {B1: 0, B2: 20}
    assert "max_connections 0 (no limit)" in cli._maxconn_text(reply)
    with pytest.raises(ControlError, match=r"has no backend '127\.0\.0\.1:1'"):
        daemon.cmd_maxconn("web", "127.0.0.1:1", 5)
    with pytest.raises(ControlError, match="out of range"):
        daemon.cmd_maxconn("web", B1, -5)


def test_the_agent_limit_and_the_operator_limit_the_stricter_holds(tmp_path: Path) -> None:
    daemon, dp, poller = with_agents(tmp_path, TEXT.replace("{agent}",
                                                           "[services.agent]\nport = 9777"))
    says(daemon, poller, B1, b"maxconn:30\n")
    says(daemon, poller, B2, b"maxconn:30\n")
    assert limits(dp) == {B1: 30, B2: 30}
    reply = daemon.cmd_maxconn("web", B1, 10)  # stricter than the agent: it holds
    assert limits(dp)[B1] == 10 and reply["effective_max_connections"] == 10
    reply = daemon.cmd_maxconn("web", B1, 500)  # the agent's 30 holds, and the reply says so
    assert limits(dp)[B1] == 30
    assert cli._maxconn_text(reply).endswith(
        "note: its agent's maxconn:30 holds it at 30 until the agent says otherwise")
    view = next(v for v in daemon.backend_views("web") if v.address == B1)
    assert view.agent is not None and view.agent["holds"] == "maxconn:30"
    says(daemon, poller, B1, b"maxconn:0\n")  # the agent lifts its own limit only
    assert limits(dp) == {B1: 500, B2: 30}
    says(daemon, poller, B2, b"75%\n")  # silent about the limit: it stays
    assert limits(dp)[B2] == 30


def test_the_cli_refuses_a_negative_limit_before_asking_the_daemon() -> None:
    result = CliRunner().invoke(cli.cli, ["maxconn", "web", B1, "-1", "-s", "/nonexistent"])
    assert result.exit_code == 2
    assert "-1 is not in the range 0<=x<=4294967295" in result.output


def test_a_reload_applies_a_limit_or_weight_the_file_changed(tmp_path: Path) -> None:
    daemon, dp = make_daemon(tmp_path, TEXT.replace("{agent}", ""))
    daemon.cmd_maxconn("web", B2, 7)
    daemon.cmd_weight("web", B2, 3)
    path = tmp_path / "l4lb.toml"
    path.write_text(path.read_text().replace("max_connections = 100", "max_connections = 40"))
    daemon.reload()  # B1's limit changed in the file; B2's runtime values stay
    assert limits(dp) == {B1: 40, B2: 7}
    assert daemon.runtime.backends[("web", B2)].weight == 3
    path.write_text(path.read_text().replace(f'address = "{B2}" }}',
                                             f'address = "{B2}", weight = 5 }}'))
    daemon.reload()
    assert daemon.weights is not None and daemon.weights.weights[("web", B2)] == 5
    assert limits(dp) == {B1: 40, B2: 7}
