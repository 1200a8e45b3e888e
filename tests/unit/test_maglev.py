"""Tests the Maglev fill: documented algorithm, determinism, disruption, weights, C == Python."""

from __future__ import annotations

import random
import types
from collections import Counter

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from l4lb.config.model import Backend, Config, Endpoint, GlobalSettings, Service
from l4lb.table.blob import parse
from l4lb.table.builder import TableBuilder
from l4lb.table.hashing import hash64
from l4lb.table.maglev import backend_key, is_prime, maglev_fill

PRIMES = [2, 3, 5, 7, 13, 101, 251, 1009, 4099]
Bk = tuple[int, bytes, int, int]


def doc_fill(seed: int, backends: list[Bk], m: int) -> list[int]:
    """docs/forwarding-table.md's pseudocode, transcribed literally (slow, obviously right)."""
    elig = [j for j, b in enumerate(backends) if b[3] > 0]
    key = {
        j: bytes([backends[j][0]]) + backends[j][1] + backends[j][2].to_bytes(2, "big")
        for j in elig
    }
    offset = {j: hash64(seed ^ 0x9E3779B9, key[j]) % m for j in elig}
    skip = {j: hash64(seed ^ 0x85EBCA6B, key[j]) % (m - 1) + 1 for j in elig}
    nxt = dict.fromkeys(elig, 0)
    credit = dict.fromkeys(elig, 0)
    entry: list[int | None] = [None] * m
    filled = 0
    wmax = max(backends[j][3] for j in elig)
    while filled < m:
        for j in elig:
            credit[j] += backends[j][3]
            while credit[j] >= wmax and filled < m:
                credit[j] -= wmax
                while True:
                    c = (offset[j] + nxt[j] * skip[j]) % m
                    nxt[j] += 1
                    if entry[c] is None:
                        break
                entry[c] = j
                filled += 1
    return [e for e in entry if e is not None]


def v4(i: int, port: int = 80, weight: int = 1) -> Bk:
    return (4, bytes([10, (i >> 16) & 255, (i >> 8) & 255, i & 255]) + bytes(12), port, weight)


backend_st = st.tuples(
    st.sampled_from([4, 6]),
    st.binary(min_size=16, max_size=16),
    st.integers(1, 65535),
    st.integers(0, 256),
).map(lambda b: (b[0], b[1][:4] + bytes(12) if b[0] == 4 else b[1], b[2], b[3]))


def test_is_prime() -> None:
    sieve = [True] * 2000
    sieve[0] = sieve[1] = False
    for i in range(2, 2000):
        if sieve[i]:
            for k in range(i * i, 2000, i):
                sieve[k] = False
    assert [m for m in range(2000) if is_prime(m)] == [m for m in range(2000) if sieve[m]]
    assert is_prime(65537) and not is_prime(65536) and is_prime(4294967291)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    backends=st.lists(backend_st, min_size=1, max_size=12),
    m=st.sampled_from([2, 3, 5, 13, 101, 251]),
)
def test_python_fill_is_the_documented_algorithm(seed: int, backends: list[Bk], m: int) -> None:
    eligible = sum(1 for b in backends if b[3] > 0)
    assume(0 < eligible <= m)
    assert maglev_fill(seed, backends, m) == doc_fill(seed, backends, m)


def test_equal_weights_fill_is_balanced_and_uses_every_backend() -> None:
    backends = [v4(i) for i in range(7)] + [v4(99, weight=0)]
    ring = maglev_fill(5, backends, 1009)
    counts = Counter(ring)
    assert len(ring) == 1009
    assert 7 not in counts  # weight 0 never appears
    assert set(counts) == set(range(7))
    # turns go round-robin until full, so shares differ by at most one slot
    assert max(counts.values()) - min(counts.values()) <= 1
    assert maglev_fill(5, backends, 1009) == ring  # deterministic


def test_the_seed_and_the_key_change_the_permutation() -> None:
    backends = [v4(i) for i in range(5)]
    assert maglev_fill(1, backends, 1009) != maglev_fill(2, backends, 1009)
    assert (
        backend_key(4, bytes([1, 2, 3, 4]), 258)
        == b"\x04\x01\x02\x03\x04" + bytes(12) + b"\x01\x02"
    )


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 40), data=st.data())
def test_removing_one_of_n_backends_moves_about_one_nth(
    seed: int, n: int, data: st.DataObject
) -> None:
    # M = 4099 >= 100 N. The minimum possible disruption is the removed backend's share (1/N);
    # Maglev moves more, and by no fixed factor: over 1,500 random cases the mean was 1.37/N,
    # the 99th percentile 1.96/N and the worst 2.39/N, and Hypothesis found a case at 2.89/N
    # (seed 1760, N = 27) that broke the bound of 2.5/N this test had until session 9. The
    # bound is 4/N: far above Maglev's tail, far below a fill that is not consistent (which
    # moves about (N-1)/N); the typical disruption is held by the test below.
    ids = data.draw(st.lists(st.integers(0, 2**20), min_size=n, max_size=n, unique=True))
    before = sorted(v4(i) for i in ids)
    k = data.draw(st.integers(0, n - 1))
    after = before[:k] + before[k + 1 :]
    ring_before = [before[j] for j in maglev_fill(seed, before, 4099)]
    ring_after = [after[j] for j in maglev_fill(seed, after, 4099)]
    changed = sum(1 for x, y in zip(ring_before, ring_after, strict=True) if x != y)
    removed_share = sum(1 for x in ring_before if x == before[k])
    assert all(y != before[k] for y in ring_after)
    assert changed >= removed_share
    assert changed / 4099 <= 4 / n


def test_removing_one_backend_moves_little_more_than_its_share_on_average() -> None:
    """Over 200 fixed random cases (seeded), one removal out of 10..40 moves on average at most
    1.6/N of the slots (measured 1.37/N over 1,500 cases; the minimum is 1/N)."""
    rng = random.Random(20261122)
    total = 0.0
    for _ in range(200):
        n = rng.randint(10, 40)
        before = sorted(v4(i) for i in rng.sample(range(2**20), n))
        k = rng.randrange(n)
        after = before[:k] + before[k + 1:]
        seed = rng.randrange(2**32)
        ring_before = [before[j] for j in maglev_fill(seed, before, 4099)]
        ring_after = [after[j] for j in maglev_fill(seed, after, 4099)]
        total += n * sum(1 for x, y in zip(ring_before, ring_after, strict=True) if x != y) / 4099
    assert total / 200 <= 1.6


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    weights=st.lists(st.integers(0, 256), min_size=1, max_size=30),
    m=st.sampled_from([101, 1009, 4099]),
)
def test_weights_are_honoured(seed: int, weights: list[int], m: int) -> None:
    # Tolerance, from the fill: after r rounds backend j holds floor(r w_j / wmax) slots, and the
    # ring is full somewhere inside a round, so |count_j - M w_j / S| <= 2 + N w_j / S.
    assume(any(weights))
    backends = [v4(i, weight=w) for i, w in enumerate(weights)]
    counts = Counter(maglev_fill(seed, backends, m))
    total = sum(weights)
    for j, w in enumerate(weights):
        assert abs(counts[j] - m * w / total) <= 2 + len(weights) * w / total


def make_config(backends: list[Backend], table_size: int = 4099, seed: int = 3) -> Config:
    svc = Service(
        name="web",
        protocol="tcp",
        listen=(Endpoint("127.0.0.1", 80, "127.0.0.1:80"),),
        backends=tuple(backends),
        scheduler="maglev",
        maglev_table_size=table_size,
    )
    return Config(path="<test>", global_=GlobalSettings(hash_seed=seed), services=(svc,))


def test_config_order_does_not_change_the_ring() -> None:
    rnd = random.Random(7)
    backends = [
        Backend(
            Endpoint(f"10.0.{i // 200}.{i % 200 + 1}", 8000 + i % 3), name=f"b{i}", weight=1 + i % 4
        )
        for i in range(60)
    ] + [Backend(Endpoint(f"2001:db8::{i:x}", 80), name=f"v6-{i}") for i in range(5)]
    blobs = set()
    for _ in range(4):
        rnd.shuffle(backends)
        blobs.add(TableBuilder(maglev_fill=maglev_fill).build(make_config(backends)))
    assert len(blobs) == 1
    table = parse(blobs.pop())
    assert len(table.ring) == 4099 and len(set(table.ring)) == 65


@pytest.mark.parametrize(
    ("backends", "m", "message"),
    [
        ([v4(1)], 65536, "m: 65536 is not prime"),
        ([v4(1), v4(2)], 1, "m: 1 is not prime"),
        ([v4(1, weight=0)], 7, "backends: no backend has weight > 0"),
        ([], 7, "backends: no backend has weight > 0"),
        ([v4(i) for i in range(4)], 3, "m: 3 is below the 4 eligible backends"),
        ([v4(1, weight=257)], 7, "backends[0].weight: 257 is not in 0..256"),
        ([v4(1, port=0)], 7, "backends[0].port: 0 is not in 1..65535"),
        ([(5, bytes(16), 1, 1)], 7, "backends[0].family: 5 is not 4 or 6"),
        (
            [v4(1), (6, bytes(4), 1, 1)],
            7,
            "backends[1].addr: 4 bytes is not a 16-byte (or 4-byte IPv4) address",
        ),
    ],
)
def test_bad_input_same_error_in_c_and_python(
    cdp: types.ModuleType, backends: list[Bk], m: int, message: str
) -> None:
    with pytest.raises(ValueError) as py_err:
        maglev_fill(0, backends, m)
    with pytest.raises(ValueError) as c_err:
        cdp.maglev_fill(0, backends, m)
    assert str(py_err.value) == str(c_err.value) == message


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    backends=st.lists(backend_st, min_size=0, max_size=40),
    m=st.sampled_from([*PRIMES, 0, 4, 4096]),
)
def test_c_equals_python(cdp: types.ModuleType, seed: int, backends: list[Bk], m: int) -> None:
    try:
        expected = maglev_fill(seed, backends, m)
    except ValueError as exc:
        with pytest.raises(ValueError) as c_err:
            cdp.maglev_fill(seed, backends, m)
        assert str(c_err.value) == str(exc)
        return
    assert cdp.maglev_fill(seed, backends, m) == expected


def test_c_equals_python_at_full_size(cdp: types.ModuleType) -> None:
    rnd = random.Random(11)
    backends = sorted(v4(rnd.randrange(2**24), weight=rnd.randint(1, 256)) for _ in range(300))
    assert cdp.maglev_fill(0xDEADBEEF, backends, 65537) == maglev_fill(0xDEADBEEF, backends, 65537)
