"""[services.agent], the backends' agent_port / agent_address and health.dynamic as the
loader reads them (the errors are in tests/golden/config/agent.toml)."""

from __future__ import annotations

import pytest

from l4lb.config.load import load_text
from l4lb.config.model import AgentSettings
from l4lb.health.settings import HealthSettings, HealthSettingsError

TEXT = """
[[services]]
name = "web"
listen = ["127.0.0.1:8080"]
backends = [{ address = "127.0.0.1:9001" },
            { address = "127.0.0.1:9002", agent_port = 9778 },
            { address = "[::1]:9003", agent_address = "127.0.0.9" }]
health = { kind = "exec", command = ["/bin/true"], dynamic = true }
agent = { port = 9777, interval = "3s", timeout = "500ms", send = "web\\n" }

[[services]]
name = "api"
listen = ["127.0.0.1:8081"]
backends = [{ address = "127.0.0.1:9001", agent_port = 9001 }]
agent = { address = "::1" }

[[services]]
name = "plain"
listen = ["127.0.0.1:8082"]
backends = [{ address = "127.0.0.1:9001" }]
health = { kind = "exec", command = ["/bin/true"] }
"""


def test_agent_settings_and_targets() -> None:
    web, api, plain = load_text(TEXT).services
    assert web.agent == AgentSettings(port=9777, interval=3.0, timeout=0.5, send=b"web\n")
    assert [web.agent.target(b) for b in web.backends] == [
        ("127.0.0.1", 9777), ("127.0.0.1", 9778), ("127.0.0.9", 9777)]
    assert web.health is not None and web.health.dynamic
    # no port in the table: every backend has its own; the table's address for all of them
    assert api.agent == AgentSettings(port=None, address="::1")
    assert api.agent.target(api.backends[0]) == ("::1", 9001)
    assert plain.agent is None and plain.health is not None and not plain.health.dynamic


def test_defaults_are_haproxys_agent_inter() -> None:
    d = AgentSettings()
    assert (d.interval, d.timeout, d.send, d.address) == (2.0, 1.0, b"", None)


def test_health_settings_refuse_dynamic_without_exec() -> None:
    with pytest.raises(HealthSettingsError) as info:
        HealthSettings(kind="tcp", dynamic=True)
    assert info.value.problems == [
        'health.dynamic: applies to kind "exec" only (the weight comes from the command\'s '
        "exit status)"]
    assert HealthSettings(kind="exec", command=("/bin/true",), dynamic=True).dynamic


SEND = """
[[services]]
name = "web"
listen = ["127.0.0.1:8080"]
backends = [{ address = "127.0.0.1:9001", name = "b1" },
            { address = "[::1]:9002", agent_send = "{{x}} {name} {address} {port}\\n" },
            { address = "127.0.0.1:9003", agent_send = "" }]
agent = { port = 9777, address = "127.0.0.9", send = "{service}/{name}\\n" }
"""


def test_send_placeholders_and_a_backends_own_agent_send() -> None:
    web, = load_text(SEND).services
    assert web.agent is not None and web.agent.send == b"{service}/{name}\n"
    assert [web.agent.send_for(web.name, b) for b in web.backends] == [
        b"web/b1\n", b"{x} [::1]:9002 ::1 9002\n", b""]
