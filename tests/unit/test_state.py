"""Runtime backend state: admin states, weights, lookup by address or name, reload carry-over."""

from __future__ import annotations

import pytest

from l4lb.config.model import Backend, Config, Endpoint, GlobalSettings, Service
from l4lb.state import Runtime, StateError
from l4lb.weights import compute


def config(*addresses: str, backup: str = "") -> Config:
    backends = tuple(
        Backend(address=Endpoint("127.0.0.1", int(a.rsplit(":", 1)[1]), a),
                name=f"n{i}" if i else a, backup=(a == backup))
        for i, a in enumerate(addresses))
    svc = Service(name="web", protocol="tcp",
                  listen=(Endpoint("127.0.0.1", 80, "127.0.0.1:80"),), backends=backends)
    return Config(path="t.toml", global_=GlobalSettings(), services=(svc,))


def test_states_map_to_effective_weights() -> None:
    cfg = config("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4")
    rt = Runtime.from_config(cfg)
    rt.set_admin("web", "n1", "drain")  # by name
    rt.set_admin("web", "127.0.0.1:3", "maint")  # by address
    rt.backends[("web", "127.0.0.1:1")].health = "down"
    assert compute(cfg, rt, now=0.0).weights == {
        ("web", "127.0.0.1:1"): 0, ("web", "127.0.0.1:2"): 0, ("web", "127.0.0.1:3"): 0,
        ("web", "127.0.0.1:4"): 1}
    assert [b.state for b in rt.backends.values()] == ["down", "drain", "maint", "up"]
    rt.set_admin("web", "n1", "up")
    rt.set_weight("web", "n1", 7)
    assert compute(cfg, rt, now=0.0).weights[("web", "127.0.0.1:2")] == 7


def test_backup_serves_only_when_no_primary_is_up() -> None:
    cfg = config("127.0.0.1:1", "127.0.0.1:2", backup="127.0.0.1:2")
    rt = Runtime.from_config(cfg)
    assert compute(cfg, rt, now=0.0).weights == {("web", "127.0.0.1:1"): 1,
                                                 ("web", "127.0.0.1:2"): 0}
    rt.set_admin("web", "127.0.0.1:1", "maint")
    result = compute(cfg, rt, now=0.0)
    assert result.weights == {("web", "127.0.0.1:1"): 0, ("web", "127.0.0.1:2"): 1}
    assert result.panic == {} and result.up == {"web": 1}


def test_errors_name_what_exists() -> None:
    rt = Runtime.from_config(config("127.0.0.1:1", "127.0.0.1:2"))
    with pytest.raises(StateError, match=r"no service named 'api' \(services: web\)"):
        rt.find("api", "x")
    with pytest.raises(StateError, match=r"has no backend 'x' \(backends: 127.0.0.1:1, "
                                         r"n1 \(127.0.0.1:2\)\)"):
        rt.find("web", "x")
    with pytest.raises(StateError, match=r"weight 257 out of range 0\.\.256"):
        rt.set_weight("web", "n1", 257)


def test_reload_keeps_state_of_unchanged_backends_only() -> None:
    old = Runtime.from_config(config("127.0.0.1:1", "127.0.0.1:2"))
    old.set_admin("web", "127.0.0.1:1", "maint")
    old.set_weight("web", "n1", 9)
    new = Runtime.from_config(config("127.0.0.1:1", "127.0.0.1:3"), previous=old)
    assert new.backends[("web", "127.0.0.1:1")].admin == "maint"
    assert new.backends[("web", "127.0.0.1:3")].admin == "up"
    assert new.backends[("web", "127.0.0.1:3")].weight == 1
    assert ("web", "127.0.0.1:2") not in new.backends
