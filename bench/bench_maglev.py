"""Microbenchmarks of the Maglev fill (C and Python), a lookup, and the table builder.

Run: `pytest bench/bench_maglev.py --benchmark-only` (not part of the normal suite, whose
testpaths is tests/). Sizes: 10, 100 and 1,000 backends at the default 65,537 ring slots.
The builder case is the control plane's real cost of a reload: build + pack for one maglev
service with 1,000 backends (target: under 20 ms with the C fill).
"""

from __future__ import annotations

import ipaddress
import random
import types
from typing import Any

import pytest

from l4lb.config.model import Backend, Config, Endpoint, GlobalSettings, Service
from l4lb.table.blob import pack
from l4lb.table.builder import TableBuilder
from l4lb.table.hashing import flow_hash
from l4lb.table.maglev import maglev_fill as py_fill
from l4lb.table.sched import sched_sequence as py_sched_sequence

M = 65537
SIZES = [10, 100, 1000]


def c_module() -> types.ModuleType:
    try:
        from l4lb import _dataplane
    except ImportError as exc:
        pytest.skip(f"l4lb._dataplane is not built ({exc})")
    module: types.ModuleType = _dataplane
    return module


def backends(n: int) -> list[tuple[int, bytes, int, int]]:
    rnd = random.Random(n)
    return sorted(
        (
            4,
            (0x0A000000 + rnd.randrange(1 << 24)).to_bytes(4, "big") + bytes(12),
            8080,
            rnd.randint(1, 4),
        )
        for _ in range(n)
    )


def config(n: int) -> Config:
    bks = tuple(
        Backend(
            Endpoint(
                str(ipaddress.ip_address(0x0A000000 + i)),
                8080,
                f"{ipaddress.ip_address(0x0A000000 + i)}:8080",
            ),
            name=f"b{i}",
            weight=1 + i % 4,
        )
        for i in range(n)
    )
    svc = Service(
        name="web",
        protocol="tcp",
        listen=(Endpoint("127.0.0.1", 80, "127.0.0.1:80"),),
        backends=bks,
        scheduler="maglev",
        maglev_table_size=M,
    )
    return Config(path="<bench>", global_=GlobalSettings(hash_seed=42), services=(svc,))


@pytest.mark.parametrize("n", SIZES)
def test_maglev_fill_c(benchmark: Any, n: int) -> None:
    fill = c_module().maglev_fill
    bks = backends(n)
    ring = benchmark(fill, 42, bks, M)
    assert len(ring) == M


@pytest.mark.parametrize("n", SIZES)
def test_maglev_fill_python(benchmark: Any, n: int) -> None:
    bks = backends(n)
    ring = benchmark.pedantic(py_fill, args=(42, bks, M), rounds=5, iterations=1)
    assert len(ring) == M


@pytest.mark.parametrize("n", SIZES)
def test_builder_build_and_pack_c_fill(benchmark: Any, n: int) -> None:
    c_module()
    cfg = config(n)
    builder = TableBuilder()
    blob = benchmark(builder.build, cfg)
    assert len(blob) == 32 + 56 + 56 * n + 4 * M


def test_builder_cold_1000_c_fill(benchmark: Any) -> None:
    """A fresh builder each round (no address cache): the first build after start."""
    c_module()
    cfg = config(1000)
    blob = benchmark(lambda: TableBuilder().build(cfg))
    assert len(blob) > 4 * M


def test_pack_only_1000(benchmark: Any) -> None:
    table = TableBuilder().build(config(1000))
    from l4lb.table.blob import parse

    t = parse(table)
    assert benchmark(pack, t) == table


@pytest.mark.parametrize("n", SIZES)
def test_lookup_python(benchmark: Any, n: int) -> None:
    """One flow hash + one ring index, as the Python reference data plane does it."""
    ring = py_fill(42, backends(n), M)
    addr = bytes([192, 0, 2, 1])

    def lookup() -> int:
        return ring[flow_hash(42, 4, addr, 40000, 1) % M]

    assert 0 <= benchmark(lookup) < n


@pytest.mark.parametrize("n", SIZES)
def test_lookup_c_10000_picks(benchmark: Any, n: int) -> None:
    """10,000 maglev picks through sched_pick (plus one table parse per round)."""
    cdp = c_module()
    blob = TableBuilder().build(config(n))
    flows = [random.Random(i).getrandbits(64) for i in range(10_000)]
    picks = benchmark(cdp.sched_sequence, blob, 0, flows, {}, 1)
    assert min(picks) >= 0


def test_lookup_python_sched_1000_picks(benchmark: Any) -> None:
    blob = TableBuilder().build(config(100))
    flows = [random.Random(i).getrandbits(64) for i in range(1000)]
    picks = benchmark.pedantic(py_sched_sequence, args=(blob, 0, flows, {}, 1), rounds=5)
    assert min(picks) >= 0
