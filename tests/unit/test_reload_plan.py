"""Reload planning: listeners kept, bound, released or moved; services and backends diffed."""

from __future__ import annotations

from dataclasses import replace

from l4lb.config.model import Backend, Config, Endpoint, GlobalSettings, Service
from l4lb.reload import plan


def ep(text: str) -> Endpoint:
    host, port = text.rsplit(":", 1)
    return Endpoint(host, int(port), text)


def svc(name: str, listen: list[str], backends: list[str], **kw: object) -> Service:
    kw.setdefault("protocol", "tcp")
    return Service(name=name, listen=tuple(ep(x) for x in listen),
                   backends=tuple(Backend(address=ep(b), name=b) for b in backends), **kw)  # type: ignore[arg-type]


def cfg(*services: Service, **global_kw: object) -> Config:
    return Config(path="x.toml", global_=GlobalSettings(**global_kw),  # type: ignore[arg-type]
                  services=services)


def test_identical_configs_plan_nothing() -> None:
    c = cfg(svc("web", ["127.0.0.1:80"], ["127.0.0.1:1"]))
    p = plan(c, c)
    assert p.empty and p.summary() == "no change" and p.restart_needed == ()


def test_listeners_backends_and_services() -> None:
    old = cfg(svc("web", ["127.0.0.1:80", "127.0.0.1:81"], ["127.0.0.1:1", "127.0.0.1:2"]),
              svc("api", ["127.0.0.1:90"], ["127.0.0.1:3"]))
    new = cfg(svc("web", ["127.0.0.1:80", "127.0.0.1:82"], ["127.0.0.1:2", "127.0.0.1:4"],
                  scheduler="maglev"),
              svc("admin", ["127.0.0.1:90"], ["127.0.0.1:5"]))
    p = plan(old, new)
    assert p.bind == (("web", ("tcp", ep("127.0.0.1:82"))),)
    assert p.release == (("tcp", ep("127.0.0.1:81")),)
    assert p.move == (("admin", ("tcp", ep("127.0.0.1:90"))),)  # no re-bind for a new service
    assert p.services_added == ("admin",) and p.services_removed == ("api",)
    assert p.services_changed == ("web",)
    assert p.backends_added == (("admin", "127.0.0.1:5"), ("web", "127.0.0.1:4"))
    assert p.backends_removed == (("api", "127.0.0.1:3"), ("web", "127.0.0.1:1"))
    assert "backends added: admin/127.0.0.1:5, web/127.0.0.1:4" in p.summary()


def test_restart_only_globals_are_reported() -> None:
    old = cfg(svc("web", ["127.0.0.1:80"], ["127.0.0.1:1"]))
    new = replace(old, global_=GlobalSettings(workers=4, log_level="debug"))
    p = plan(old, new)
    assert p.restart_needed == ("workers",)
    assert p.empty  # a log level change needs no listener or table work


def test_tcp_and_udp_on_one_address_are_separate_listeners() -> None:
    old = cfg(svc("dns", ["127.0.0.1:53"], ["127.0.0.1:1"]))
    new = cfg(svc("dns", ["127.0.0.1:53"], ["127.0.0.1:1"]),
              svc("dns-udp", ["127.0.0.1:53"], ["127.0.0.1:1"], protocol="udp"))
    p = plan(old, new)
    assert p.bind == (("dns-udp", ("udp", ep("127.0.0.1:53"))),) and p.release == ()
    assert "new listeners: udp 127.0.0.1:53" in p.summary()
