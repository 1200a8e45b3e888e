"""Tests of loading whole configurations: values, units, defaults, the shipped examples, the error
object and the limits that need generated input."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from pathlib import Path

import pytest

from l4lb.config import (
    Backend,
    Config,
    ConfigError,
    Diagnostic,
    Endpoint,
    GlobalSettings,
    Service,
    load_file,
    load_text,
    validate,
)
from l4lb.config.validate import (
    AGENT_KEYS,
    BACKEND_KEYS,
    GLOBAL_KEYS,
    HEALTH_KEYS,
    METRICS_KEYS,
    SERVICE_KEYS,
    SYNC_GROUP_KEYS,
    UDP_ONLY_KEYS,
    VRRP_KEYS,
)

from .fakehost import ExampleHost

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = [REPO / "conf" / "l4lb.toml", *sorted((REPO / "conf" / "examples").glob("*.toml"))]

FULL = """\
[global]
workers = 8
control_socket = "/tmp/x.sock"
log_level = "debug"
log_format = "json"
hash_seed = 0xdeadbeef
shutdown_timeout = "1m30s"
listen_backlog = 128

[[services]]
name = "web"
protocol = "tcp"
listen = ["0.0.0.0:8080", "[::]:8080", "[2001:DB8:0::1]:443"]
scheduler = "maglev"
hash_key = "src_ip_port"
connect_timeout = "500ms"
idle_timeout = "0s"
retries = 0
max_connections = 1000
maglev_table_size = 251

  [[services.backends]]
  address = "127.0.0.1:9001"
  name = "b1"
  weight = 256
  max_connections = 50
  backup = true

  [[services.backends]]
  address = "[::1]:9002"
"""


def test_every_value_lands_in_its_field_with_its_unit() -> None:
    config = load_text(FULL, "full.toml")
    assert config.path == "full.toml"
    assert config.global_ == GlobalSettings(
        workers=8, control_socket="/tmp/x.sock", log_level="debug", log_format="json",
        hash_seed=0xDEADBEEF, shutdown_timeout=90.0, listen_backlog=128,
    )
    (web,) = config.services
    assert web.name == "web" and web.protocol == "tcp"
    assert web.listen == (
        Endpoint("0.0.0.0", 8080), Endpoint("::", 8080), Endpoint("2001:db8::1", 443),
    )
    assert [e.text for e in web.listen] == ["0.0.0.0:8080", "[::]:8080", "[2001:DB8:0::1]:443"]
    assert str(web.listen[2]) == "[2001:db8::1]:443"
    assert web.listen[2].family == 6 and web.listen[0].family == 4
    assert web.scheduler == "maglev" and web.hash_key == "src_ip_port"
    assert web.connect_timeout == 0.5 and web.idle_timeout == 0.0
    assert web.retries == 0 and web.max_connections == 1000 and web.maglev_table_size == 251
    assert web.backends == (
        Backend(address=Endpoint("127.0.0.1", 9001), name="b1", weight=256, max_connections=50,
                backup=True),
        Backend(address=Endpoint("::1", 9002), name="[::1]:9002", weight=1, max_connections=0,
                backup=False),
    )
    # the default backend name is the address exactly as written
    assert web.backends[1].name == web.backends[1].address.text == "[::1]:9002"


def test_omitted_keys_take_the_model_defaults() -> None:
    config = load_text('[[services]]\nname = "s"\nlisten = ["127.0.0.1:1"]\n'
                       'backends = [{address = "10.0.0.1:2"}]\n')
    assert config.global_ == GlobalSettings()
    (svc,) = config.services
    assert svc == Service(name="s", protocol="tcp", listen=(Endpoint("127.0.0.1", 1),),
                          backends=(Backend(address=Endpoint("10.0.0.1", 2), name="10.0.0.1:2"),))
    assert svc.scheduler == "round_robin" and svc.connect_timeout == 3.0
    assert svc.idle_timeout == 300.0 and svc.maglev_table_size == 65537


def test_empty_file_is_a_config_without_services() -> None:
    config = load_text("# nothing here\n", "empty.toml")
    assert config == Config(path="empty.toml", global_=GlobalSettings(), services=())


def test_config_is_frozen() -> None:
    config = load_text(FULL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.global_.workers = 3  # type: ignore[misc]
    assert isinstance(config.services, tuple) and isinstance(config.services[0].listen, tuple)


def test_edges_of_every_range_are_accepted() -> None:
    text = """\
[global]
workers = 256
hash_seed = 4294967295
listen_backlog = 65535
shutdown_timeout = "0s"

[[services]]
name = "a.b-c_D9"
listen = ["127.0.0.1:1", "127.0.0.1:65535"]
retries = 16
max_connections = 4294967295
connect_timeout = "1ms"
idle_timeout = "24h"
maglev_table_size = 1000003
backends = [{ address = "127.0.0.1:9001", weight = 256, max_connections = 4294967295 }]

[[services]]
name = "b"
listen = ["127.0.0.2:1"]
scheduler = "maglev"
maglev_table_size = 2
connect_timeout = "23h59m59s999ms"
backends = [{ address = "10.0.0.1:1", weight = 1 }, { address = "10.0.0.2:1" }]
"""
    config = load_text(text)
    assert config.global_.workers == 256 and config.global_.shutdown_timeout == 0.0
    a, b = config.services
    assert a.connect_timeout == 0.001 and a.idle_timeout == 86400.0
    assert a.maglev_table_size == 1000003 and a.retries == 16
    assert b.maglev_table_size == 2 and b.connect_timeout == 86399.999


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_shipped_examples_load_cleanly(path: Path) -> None:
    # the pair examples name eth0 (and eth1): load them on this host with those fixed
    # (fakehost.py)
    config = load_text(path.read_text(), str(path), host=ExampleHost())
    assert config.services, "every example defines at least one service"
    assert all(s.backends for s in config.services)


def test_annotated_example_shows_every_key() -> None:
    text = (REPO / "conf" / "l4lb.toml").read_text()
    written = set(re.findall(r"^\s*([a-z_]+)\s*=", text, flags=re.M))
    # connection_log is off unless set, and accept_proxy_from needs accept_proxy (off there),
    # so the example shows both commented out
    # [services.agent] and its per-backend keys are shown commented out (the example has no
    # agents to poll)
    assert (set(GLOBAL_KEYS) - {"connection_log"}) \
        | (set(SERVICE_KEYS) - {"backends", "health", "agent", "accept_proxy_from",
                                *UDP_ONLY_KEYS}) \
        | (set(BACKEND_KEYS) - {"agent_port", "agent_address", "agent_send"}) <= written
    assert "# accept_proxy_from = [" in text
    assert "[services.health]" in text
    commented = set(re.findall(r"^\s*#?\s*([a-z_]+)\s*=", text, flags=re.M))
    assert set(HEALTH_KEYS) - {"send_hex", "expect_regex"} <= commented
    assert "# [services.agent]" in text and set(AGENT_KEYS) <= commented
    assert {"agent_port", "agent_address", "agent_send"} <= commented
    assert "# [[vrrp]]" in text and set(VRRP_KEYS) <= commented
    assert "# [[vrrp_sync_group]]" in text and set(SYNC_GROUP_KEYS) <= commented
    assert set(UDP_ONLY_KEYS) <= commented
    assert "connection_log" in commented
    assert "# [metrics]" in text and set(METRICS_KEYS) <= commented


def test_reference_documents_every_key_and_field() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    for key in (*GLOBAL_KEYS, *SERVICE_KEYS, *BACKEND_KEYS, *HEALTH_KEYS, *VRRP_KEYS,
                *SYNC_GROUP_KEYS, *METRICS_KEYS):
        assert f"`{key}`" in doc, key
    # every model field is reachable from some key of the file
    fields = {f.name for cls in (GlobalSettings, Service, Backend) for f in dataclasses.fields(cls)}
    assert fields <= set(GLOBAL_KEYS) | set(SERVICE_KEYS) | set(BACKEND_KEYS)


def test_several_problems_are_all_reported_in_file_order() -> None:
    text = """\
[[services]]
name = "web"
listen = ["127.0.0.1:8080"]
retries = 99
backends = [{ address = "127.0.0.1:0" }]

[global]
workers = -1
"""
    with pytest.raises(ConfigError) as info:
        load_text(text, "x.toml")
    diags = info.value.diagnostics
    assert [(d.line, d.col) for d in diags] == [(4, 11), (5, 25), (8, 11)]
    assert [d.path for d in diags] == [
        ("services", 0, "retries"),
        ("services", 0, "backends", 0, "address"),
        ("global", "workers"),
    ]
    assert all(d.severity == "error" and d.file == "x.toml" for d in diags)
    assert str(info.value).splitlines() == [
        'x.toml:4:11: error: services[0] ("web"): retries: 99 out of range (0..16)',
        'x.toml:5:25: error: services[0] ("web"): backends[0].address: port 0 out of range '
        "(1..65535)",
        "x.toml:8:11: error: global.workers: -1 out of range (0..256)",
        "3 errors",
    ]


def test_config_error_survives_pickling() -> None:
    with pytest.raises(ConfigError) as info:
        load_text("[global]\nworkers = 1000\n", "p.toml")
    copy = pickle.loads(pickle.dumps(info.value))
    assert copy.diagnostics == info.value.diagnostics and str(copy) == str(info.value)


def test_diagnostic_without_position_renders_file_only() -> None:
    diag = Diagnostic("f.toml", 0, 0, "error", "something")
    assert str(diag) == "f.toml: error: something"
    err = ConfigError([Diagnostic("f.toml", 2, 1, "warning", "w"), diag])
    assert str(err) == "f.toml: error: something\nf.toml:2:1: warning: w\n1 error, 1 warning"


def test_load_file_reads_utf8_and_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text('[global]\ncontrol_socket = "/tmp/é.sock"\n', encoding="utf-8")
    config = load_file(str(path))
    assert config.path == str(path) and config.global_.control_socket == "/tmp/é.sock"


def test_load_file_rejects_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[global]\nlog_level = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_file(str(path))
    assert str(info.value) == f"{path}:2:17: error: not UTF-8 text (byte 0xe9)\n1 error"


def test_load_file_lets_os_errors_through(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_file(str(tmp_path / "missing.toml"))


def _services(n: int, backends_each: int = 1) -> str:
    out = []
    for i in range(n):
        out.append(f'[[services]]\nname = "s{i}"\nlisten = ["127.0.{i // 250}.{i % 250 + 1}:80"]\n')
        out.append("backends = [" + ", ".join(
            f'{{address = "10.{i // 250}.{i % 250}.{j % 250 + 1}:{j // 250 + 1}"}}'
            for j in range(backends_each)) + "]\n")
    return "".join(out)


def test_at_most_1024_services() -> None:
    assert len(load_text(_services(1024)).services) == 1024
    with pytest.raises(ConfigError) as info:
        load_text(_services(1026), "many.toml")
    (diag,) = info.value.diagnostics
    assert diag.message == "services[1024]: too many services (1026; at most 1024)"
    assert diag.line == 1024 * 4 + 1 and diag.col == 1


def test_at_most_65536_backends_in_all(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _services(1, 4096) * 16
    for i in range(16):  # make the 16 copies distinct services
        text = text.replace('name = "s0"', f'name = "c{i}"', 1)
        text = text.replace('"127.0.0.1:80"', f'"127.1.0.{i}:80"', 1)
    with pytest.raises(ConfigError) as info:
        load_text(text + _services(1, 1).replace('"s0"', '"extra"'))
    (diag,) = info.value.diagnostics
    assert diag.message == ('services[16] ("extra"): backends[0]: too many backends (at most '
                            "65536 in all services together)")
    # the boundary itself, on a smaller limit
    monkeypatch.setattr(validate, "MAX_BACKENDS", 8)
    assert len(load_text(_services(2, 4)).services) == 2
    with pytest.raises(ConfigError) as info:
        load_text(_services(3, 3))
    assert [d.path for d in info.value.diagnostics] == [("services", 2, "backends", 2)]


def test_missing_key_names_the_key_and_points_at_the_table() -> None:
    with pytest.raises(ConfigError) as info:
        load_text('[global]\n\n[[services]]\nname = "a"\nlisten = ["127.0.0.1:1"]\n', "m.toml")
    (diag,) = info.value.diagnostics
    assert diag.path == ("services", 0, "backends")
    assert (diag.line, diag.col) == (3, 1)
    assert diag.message == 'services[0] ("a"): missing required key "backends"'


def test_load_file_refuses_a_fifo_and_a_directory_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "l4lb.toml"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        load_file(str(fifo))  # would block in open()/read() until a writer came
    with pytest.raises(IsADirectoryError):
        load_file(str(tmp_path))


def test_example_fast_interval_loads_when_uncommented() -> None:
    """The commented `fast_interval` of conf/l4lb.toml is a value its reader can switch on
    as it stands: with the example's timeout it must load, not fail `timeout must not exceed
    fast_interval`."""
    text = (REPO / "conf" / "l4lb.toml").read_text()
    on, n = re.subn(r"^(\s*)# (fast_interval = )", r"\1\2", text, flags=re.M)
    assert n == 1
    load_text(on, "l4lb.toml", host=ExampleHost())
