"""Tests the table builder: record contents, canonical order, weights, backups, stable ids."""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import types
from typing import Any

import pytest

from l4lb.config import load_text
from l4lb.config.model import Backend, Config, Endpoint, GlobalSettings, Service
from l4lb.table.blob import FLAG_BACKUP, FLAG_DOWN, Table, parse
from l4lb.table.builder import TableBuilder, default_maglev_fill
from l4lb.table.maglev import maglev_fill as py_fill


def ep(host: str, port: int, text: str = "") -> Endpoint:
    return Endpoint(host, port, text)


def be(host: str, port: int, weight: int = 1, backup: bool = False, max_conns: int = 0) -> Backend:
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Backend(
        ep(host, port, text), name=text, weight=weight, max_connections=max_conns, backup=backup
    )


def service(name: str, backends: list[Backend], **kw: Any) -> Service:
    base = Service(
        name=name,
        protocol="tcp",
        listen=(ep("127.0.0.1", 80, "127.0.0.1:80"),),
        backends=tuple(backends),
    )
    return dataclasses.replace(base, **kw)


def config(*services: Service, seed: int = 7) -> Config:
    return Config(path="<test>", global_=GlobalSettings(hash_seed=seed), services=services)


def build(cfg: Config, weights: dict[tuple[str, str], int] | None = None) -> Table:
    return parse(TableBuilder(maglev_fill=py_fill).build(cfg, weights))


def test_records_carry_the_config() -> None:
    svc = Service(
        name="dns",
        protocol="udp",
        listen=(ep("127.0.0.1", 53, "127.0.0.1:53"),),
        backends=(be("10.0.0.2", 53, weight=3, max_conns=9), be("10.0.0.1", 53)),
        scheduler="least_conn",
        hash_key="src_ip_port",
        connect_timeout=0.25,
        idle_timeout=0.0,  # tcp only: a udp service takes udp_idle_timeout (default 30 s)
        retries=4,
        max_connections=1000,
    )
    table = build(config(svc, seed=12345))
    assert table.hash_seed == 12345
    (rec,) = table.services
    assert (rec.service_id, rec.protocol, rec.scheduler, rec.hash_key) == (0, 1, 2, 1)
    assert (rec.connect_timeout_ms, rec.idle_timeout_ms, rec.retries, rec.max_connections) == (
        250,
        30000,
        4,
        1000,
    )
    assert (rec.flow_key, rec.max_flows, rec.responses) == (0, 0, 0)
    assert (rec.backend_first, rec.backend_count, rec.ring_first, rec.ring_size) == (0, 2, 0, 0)
    b0, b1 = table.backends
    assert (b0.family, b0.addr, b0.port, b0.weight, b0.max_connections) == (
        4,
        bytes([10, 0, 0, 1]) + bytes(12),
        53,
        1,
        0,
    )
    assert (b1.weight, b1.max_connections) == (3, 9)


def test_a_tiny_connect_timeout_still_validates() -> None:
    table = build(config(service("s", [be("10.0.0.1", 1)], connect_timeout=0.0001)))
    assert table.services[0].connect_timeout_ms == 1


def test_backends_are_in_canonical_order_whatever_the_config_order() -> None:
    backends = [
        be("2001:db8::1", 80),
        be("10.0.0.2", 80),
        be("10.0.0.10", 80),
        be("10.0.0.2", 79),
        be("9.255.255.255", 65535),
        be("::ffff:1.2.3.4", 1),
    ]
    expected = [
        (4, "9.255.255.255", 65535),
        (4, "10.0.0.2", 79),
        (4, "10.0.0.2", 80),
        (4, "10.0.0.10", 80),
        (6, "::ffff:1.2.3.4", 1),
        (6, "2001:db8::1", 80),
    ]
    rnd = random.Random(1)
    blobs = set()
    for _ in range(5):
        rnd.shuffle(backends)
        cfg = config(service("web", list(backends), scheduler="maglev", maglev_table_size=251))
        blob = TableBuilder(maglev_fill=py_fill).build(cfg)
        blobs.add(blob)
        got = [(b.family, b.addr, b.port) for b in parse(blob).backends]
        assert got == [
            (f, ipaddress.ip_address(h).packed.ljust(16, b"\0"), p) for f, h, p in expected
        ]
    assert len(blobs) == 1  # both nodes of a pair build byte-identical tables


def test_rings_for_hashing_schedulers() -> None:
    backends = [
        be("10.0.0.1", 80, weight=2),
        be("10.0.0.2", 80, weight=1),
        be("10.0.0.3", 80, weight=3),
    ]
    table = build(
        config(
            service("sh", backends, scheduler="source_hash"),
            service("mg", backends, scheduler="maglev", maglev_table_size=101),
            service("rr", backends),
        )
    )
    sh, mg, rr = table.services
    assert table.service_ring(sh) == (0, 0, 1, 2, 2, 2)
    assert mg.ring_size == 101 and mg.ring_first == 6
    recs = table.service_backends(mg)
    assert list(table.service_ring(mg)) == py_fill(
        7, [(b.family, b.addr, b.port, b.weight) for b in recs], 101
    )
    assert rr.ring_size == 0 and len(table.ring) == 107


def test_weight_overrides_by_text_or_canonical_endpoint() -> None:
    backends = [
        be("10.0.0.1", 80, weight=5),
        be("10.0.0.2", 80, weight=5),
        be("2001:db8::1", 80, weight=5),
    ]
    cfg = config(service("web", backends, scheduler="maglev", maglev_table_size=13))
    table = build(
        cfg,
        {("web", "10.0.0.1:80"): 0, ("web", "[2001:db8::1]:80"): 9, ("other", "10.0.0.2:80"): 0},
    )
    assert [b.weight for b in table.backends] == [0, 5, 9]
    assert 0 not in table.ring
    # written text wins over the canonical form when both are given
    written = Backend(ep("2001:db8::1", 80, "[2001:0db8::1]:80"), name="x", weight=5)
    cfg = config(service("web", [written]))
    weights = {("web", "[2001:0db8::1]:80"): 3, ("web", "[2001:db8::1]:80"): 4}
    assert build(cfg, weights).backends[0].weight == 3
    assert build(cfg, {("web", "[2001:db8::1]:80"): 4}).backends[0].weight == 4
    with pytest.raises(ValueError, match=r"weight of web/\[2001:0db8::1\]:80: 257 is not in"):
        build(cfg, {("web", "[2001:0db8::1]:80"): 257})


def test_udp_fields_come_from_the_udp_settings_and_tcp_keeps_them_zero() -> None:
    udp = service(
        "dns",
        [be("10.0.0.1", 53)],
        protocol="udp",
        idle_timeout=99.0,
        udp_idle_timeout=2.5,
        max_flows=5000,
        responses=1,
        session="src_ip",
    )
    tcp = service("web", [be("10.0.0.1", 80)], udp_idle_timeout=7.0, max_flows=3, responses=2)
    rec_udp, rec_tcp = build(config(udp, tcp)).services
    assert (rec_udp.protocol, rec_udp.idle_timeout_ms) == (1, 2500)
    assert (rec_udp.flow_key, rec_udp.max_flows, rec_udp.responses) == (1, 5000, 1)
    assert (rec_tcp.protocol, rec_tcp.idle_timeout_ms) == (0, 300000)  # its idle_timeout
    assert (rec_tcp.flow_key, rec_tcp.max_flows, rec_tcp.responses) == (0, 0, 0)
    # a udp idle timeout below one millisecond still validates (> 0)
    tiny = dataclasses.replace(udp, udp_idle_timeout=0.0001, session="src_ip_port")
    (rec,) = build(config(tiny)).services
    assert (rec.idle_timeout_ms, rec.flow_key) == (1, 0)


def test_down_backends_get_weight_0_and_the_down_flag() -> None:
    backends = [
        be("10.0.0.1", 53, weight=2),
        be("10.0.0.2", 53, weight=3, backup=True),
        be("2001:db8::1", 53, weight=4),
    ]
    cfg = config(service("dns", backends, protocol="udp", scheduler="source_hash"))
    tb = TableBuilder(maglev_fill=py_fill)
    # by the address as written or by the canonical endpoint; other services' keys do nothing
    down = {("dns", "10.0.0.1:53"), ("dns", "[2001:db8::1]:53"), ("other", "10.0.0.2:53")}
    table = parse(tb.build(cfg, None, down))
    assert [b.weight for b in table.backends] == [0, 3, 0]  # every primary down: backup serves
    assert [b.flags for b in table.backends] == [FLAG_DOWN, FLAG_BACKUP, FLAG_DOWN]
    # DOWN wins over a weight override; a drained backend (weight 0, not down) has no flag
    table = parse(
        tb.build(
            cfg, {("dns", "10.0.0.1:53"): 9, ("dns", "10.0.0.2:53"): 0}, {("dns", "10.0.0.1:53")}
        )
    )
    assert [b.weight for b in table.backends] == [0, 0, 4]
    assert [b.flags for b in table.backends] == [FLAG_DOWN, FLAG_BACKUP, 0]
    assert parse(tb.build(cfg)).backends == parse(tb.build(cfg, None, set())).backends


def test_no_eligible_backend_gives_an_empty_maglev_ring() -> None:
    cfg = config(service("web", [be("10.0.0.1", 80)], scheduler="maglev"))
    table = build(cfg, {("web", "10.0.0.1:80"): 0})
    assert table.services[0].ring_size == 0 and table.ring == ()


def test_backups_only_take_traffic_when_every_primary_is_down() -> None:
    backends = [
        be("10.0.0.1", 80, weight=2),
        be("10.0.0.2", 80, weight=3),
        be("10.0.0.9", 80, weight=4, backup=True),
    ]
    cfg = config(service("web", backends, scheduler="source_hash"))
    table = build(cfg)
    assert [b.weight for b in table.backends] == [2, 3, 0]
    assert [b.flags & FLAG_BACKUP for b in table.backends] == [0, 0, FLAG_BACKUP]
    table = build(cfg, {("web", "10.0.0.1:80"): 0})
    assert [b.weight for b in table.backends] == [0, 3, 0]
    table = build(cfg, {("web", "10.0.0.1:80"): 0, ("web", "10.0.0.2:80"): 0})
    assert [b.weight for b in table.backends] == [0, 0, 4]
    assert table.ring == (2, 2, 2, 2)
    # a backup that is itself down stays at 0
    table = build(
        cfg, {("web", "10.0.0.1:80"): 0, ("web", "10.0.0.2:80"): 0, ("web", "10.0.0.9:80"): 0}
    )
    assert [b.weight for b in table.backends] == [0, 0, 0]


def test_ids_are_stable_across_rebuilds_and_reused_only_once_released() -> None:
    a, b, c = be("10.0.0.1", 80), be("10.0.0.2", 80), be("10.0.0.3", 80)
    tb = TableBuilder(maglev_fill=py_fill)
    tb.build(config(service("s1", [a, b]), service("s2", [c])))
    assert tb.service_ids() == {"s1": 0, "s2": 1}
    assert tb.backend_ids() == {
        ("s1", "10.0.0.1:80"): 0,
        ("s1", "10.0.0.2:80"): 1,
        ("s2", "10.0.0.3:80"): 2,
    }
    assert tb.retired() == (frozenset(), frozenset())

    # s1 and backend b go away, s3 and backend c in s1 arrive: removed ids are not reused
    tb.build(config(service("s2", [c]), service("s3", [a]), service("s1", [a, c])))
    assert tb.service_ids() == {"s2": 1, "s3": 2, "s1": 0}
    ids = tb.backend_ids()
    assert ids[("s2", "10.0.0.3:80")] == 2 and ids[("s1", "10.0.0.1:80")] == 0
    assert ids[("s3", "10.0.0.1:80")] == 3 and ids[("s1", "10.0.0.3:80")] == 4
    assert tb.retired() == (frozenset(), frozenset({1}))

    tb.build(config(service("s2", [c])))  # s1 and s3 leave: their ids are retired...
    assert tb.service_ids() == {"s2": 1}
    assert tb.retired() == (frozenset({0, 2}), frozenset({0, 1, 3, 4}))
    tb.build(config(service("s2", [c]), service("s4", [b])))
    # ...and stay retired over any number of tables until the caller releases them
    assert tb.service_ids() == {"s2": 1, "s4": 3}
    assert tb.backend_ids() == {("s2", "10.0.0.3:80"): 2, ("s4", "10.0.0.2:80"): 5}

    # a key that comes back while its old id is retired gets that id again (the same backend:
    # whatever still counts on the id is its own)
    tb.build(config(service("s2", [c]), service("s4", [b]), service("s3", [a])))
    assert tb.service_ids()["s3"] == 2 and tb.backend_ids()[("s3", "10.0.0.1:80")] == 3
    assert tb.retired() == (frozenset({0}), frozenset({0, 1, 4}))
    tb.build(config(service("s2", [c]), service("s4", [b])))
    assert tb.retired() == (frozenset({0, 2}), frozenset({0, 1, 3, 4}))

    tb.release(service_ids=[0, 2], backend_ids=[0, 1, 3])
    assert tb.retired() == (frozenset(), frozenset({4}))
    tb.build(config(service("s2", [c]), service("s4", [b]), service("s5", [a])))
    assert tb.service_ids() == {"s2": 1, "s4": 3, "s5": 0}
    assert tb.backend_ids() == {
        ("s2", "10.0.0.3:80"): 2,
        ("s4", "10.0.0.2:80"): 5,
        ("s5", "10.0.0.1:80"): 0,
    }
    table = tb.table
    assert table is not None
    assert sorted(s.service_id for s in table.services) == [0, 1, 3]


def test_an_id_removed_in_this_build_is_not_given_to_a_newcomer() -> None:
    tb = TableBuilder(maglev_fill=py_fill)
    tb.build(config(service("old", [be("10.0.0.1", 80)])))
    tb.build(config(service("new", [be("10.0.0.2", 80)])))
    assert tb.service_ids() == {"new": 1}
    assert tb.backend_ids() == {("new", "10.0.0.2:80"): 1}


def test_id_maps_use_the_address_as_written() -> None:
    cfg = load_text(
        '[[services]]\nname = "web"\nprotocol = "tcp"\nlisten = ["127.0.0.1:8080"]\n'
        '  [[services.backends]]\n  address = "[2001:0db8:0::7]:9000"\n'
        '  [[services.backends]]\n  address = "127.0.0.1:9001"\n'
    )
    tb = TableBuilder(maglev_fill=py_fill)
    tb.build(cfg, {("web", "[2001:0db8:0::7]:9000"): 0})
    assert tb.ids().backends == {("web", "127.0.0.1:9001"): 0, ("web", "[2001:0db8:0::7]:9000"): 1}
    assert tb.ids().services == {"web": 0}
    table = tb.table
    assert table is not None
    assert [b.weight for b in table.backends] == [1, 0]


def test_a_failed_build_changes_nothing() -> None:
    tb = TableBuilder(maglev_fill=py_fill)
    tb.build(config(service("a", [be("10.0.0.1", 80)])))
    bad = config(
        service(
            "b",
            [be(f"10.0.0.{i}", 80) for i in range(1, 5)],
            scheduler="maglev",
            maglev_table_size=3,
        )
    )
    with pytest.raises(ValueError, match="service b: maglev fill: m: 3 is below the 4 eligible"):
        tb.build(bad)
    assert tb.service_ids() == {"a": 0}
    tb.build(config(service("c", [be("10.0.0.1", 80)])))
    assert tb.service_ids() == {"c": 1}  # "a" was in the last *built* table


def test_limits() -> None:
    too_many = config(*(service(f"s{i}", [be("10.0.0.1", 80)]) for i in range(1025)))
    with pytest.raises(ValueError, match="services: 1025 is more than 1024"):
        TableBuilder(maglev_fill=py_fill).build(too_many)
    dup = config(service("s", [be("10.0.0.1", 80), be("10.0.0.1", 80)]))
    with pytest.raises(ValueError, match="appears twice"):
        TableBuilder(maglev_fill=py_fill).build(dup)


def test_reference_request_selects_the_python_fill(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("L4LB_NO_EXTENSIONS", "1")
    assert default_maglev_fill() is py_fill


def test_default_fill_is_the_c_one_when_built(
    cdp: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("L4LB_NO_EXTENSIONS", raising=False)
    assert default_maglev_fill() is cdp.maglev_fill


def test_c_and_python_fills_build_identical_blobs(cdp: types.ModuleType) -> None:
    rnd = random.Random(5)
    backends = [
        be(
            f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{i % 250 + 1}",
            80 + i,
            weight=rnd.randint(1, 256),
        )
        for i in range(300)
    ]
    cfg = config(
        service("a", backends, scheduler="maglev", maglev_table_size=65537),
        service("b", backends[:7], scheduler="maglev", maglev_table_size=13),
        seed=0xFEEDFACE,
    )
    blob = TableBuilder(maglev_fill=cdp.maglev_fill).build(cfg)
    assert blob == TableBuilder(maglev_fill=py_fill).build(cfg)
    cdp.table_check(blob)


def test_restore_takes_ids_back_and_retires_those_given_out_since() -> None:
    a, b, c = be("10.0.0.1", 80), be("10.0.0.2", 80), be("10.0.0.3", 80)
    tb = TableBuilder(maglev_fill=py_fill)
    first = tb.build(config(service("s1", [a, b])))
    saved = tb.checkpoint()
    tb.build(config(service("s1", [a, c]), service("s2", [b])))  # b leaves s1, c and s2 come
    assert tb.retired() == (frozenset(), frozenset({1}))
    tb.restore(saved)
    assert tb.service_ids() == {"s1": 0}
    assert tb.backend_ids() == {("s1", "10.0.0.1:80"): 0, ("s1", "10.0.0.2:80"): 1}
    # s2 (id 1) and the new backends (ids 2, 3) may have been live: retired, not free
    assert tb.retired() == (frozenset({1}), frozenset({2, 3}))
    assert tb.build(config(service("s1", [a, b]))) == first  # the same table again
    tb.build(config(service("s1", [a, b, c])))
    # c comes back under the id it had in the taken-back table: it is the same backend
    assert tb.backend_ids()[("s1", "10.0.0.3:80")] == 2
    assert tb.retired() == (frozenset({1}), frozenset({3}))
