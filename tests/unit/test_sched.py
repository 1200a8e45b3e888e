"""Tests the schedulers: each rule of the contract, distributions, retries, C == Python."""

from __future__ import annotations

import random
import types
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l4lb.table import sched as pysched
from l4lb.table.blob import BackendRec, ServiceRec, Table, pack, parse
from l4lb.table.maglev import maglev_fill

RR, WRR, LC, RANDOM2, SRCHASH, MAGLEV = range(6)
ALL = (RR, WRR, LC, RANDOM2, SRCHASH, MAGLEV)
SID = 7  # service id of the service under test
OTHER = 2  # a service placed before it, so absolute and relative indexes differ
OTHER_BACKENDS = 3


Seq = Callable[..., list[int]]


@pytest.fixture(params=["python", "c"])
def impl(request: pytest.FixtureRequest) -> types.ModuleType:
    """Each distribution test runs against both implementations."""
    if request.param == "python":
        return pysched
    module: types.ModuleType = request.getfixturevalue("cdp")
    return module


def make_blob(
    scheduler: int,
    weights: list[int],
    max_conns: list[int] | None = None,
    ring_size: int = 1009,
    seed: int = 1,
) -> bytes:
    """A table with a 3-backend service OTHER first and the service SID under test second."""
    max_conns = max_conns or [0] * len(weights)
    backends = [
        BackendRec(100 + j, 4, 0, 80, bytes([10, 9, 9, j]) + bytes(12), 1, 0)
        for j in range(OTHER_BACKENDS)
    ]
    own = [
        BackendRec(2 * j + 1, 4, 0, 8000 + j, bytes([10, 0, j // 256, j % 256]) + bytes(12), w, mc)
        for j, (w, mc) in enumerate(zip(weights, max_conns, strict=True))
    ]
    eligible = [j for j, w in enumerate(weights) if w > 0]
    if scheduler == SRCHASH:
        ring = [j for j in eligible for _ in range(weights[j])]
    elif scheduler == MAGLEV and eligible:
        ring = maglev_fill(seed, [(b.family, b.addr, b.port, b.weight) for b in own], ring_size)
    else:
        ring = []
    services = (
        ServiceRec(OTHER, 0, RR, 0, 1000, 0, 0, 0, 0, OTHER_BACKENDS, 0, 0),
        ServiceRec(SID, 0, scheduler, 0, 1000, 0, 2, 0, OTHER_BACKENDS, len(own), 0, len(ring)),
    )
    return pack(Table(seed, services, tuple(backends + own), tuple(ring)))


def rel(picks: list[int]) -> list[int]:
    """Absolute backend indexes -> indexes inside the service under test (-1 stays)."""
    return [p - OTHER_BACKENDS if p >= 0 else -1 for p in picks]


def hashes(n: int, seed: int = 0) -> list[int]:
    rnd = random.Random(seed)
    return [rnd.getrandbits(64) for _ in range(n)]


# ---- C == Python -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    scheduler=st.sampled_from(ALL),
    backends=st.lists(
        st.tuples(st.integers(0, 8), st.integers(0, 3), st.integers(0, 4)), min_size=0, max_size=8
    ),
    flow_hashes=st.lists(st.integers(0, 2**64 - 1), max_size=40),
    rng_seed=st.integers(0, 2**64 - 1),
)
def test_c_and_python_pick_the_same_sequences(
    cdp: types.ModuleType,
    scheduler: int,
    backends: list[tuple[int, int, int]],
    flow_hashes: list[int],
    rng_seed: int,
) -> None:
    weights = [w for w, _, _ in backends]
    max_conns = [m for _, m, _ in backends]
    active = {2 * j + 1: a for j, (_, _, a) in enumerate(backends)}
    blob = make_blob(scheduler, weights, max_conns, ring_size=13)
    args = (blob, SID, flow_hashes, active, rng_seed)
    assert cdp.sched_sequence(*args) == pysched.sched_sequence(*args)


@settings(max_examples=300, deadline=None)
@given(
    scheduler=st.sampled_from(ALL),
    backends=st.lists(
        st.tuples(st.integers(0, 8), st.integers(0, 3), st.integers(0, 4)), min_size=0, max_size=8
    ),
    flow_hash=st.integers(0, 2**64 - 1),
    n=st.integers(0, 10),
    rng_seed=st.integers(0, 2**64 - 1),
)
def test_c_and_python_retry_the_same_backends(
    cdp: types.ModuleType,
    scheduler: int,
    backends: list[tuple[int, int, int]],
    flow_hash: int,
    n: int,
    rng_seed: int,
) -> None:
    weights = [w for w, _, _ in backends]
    max_conns = [m for _, m, _ in backends]
    active = {2 * j + 1: a for j, (_, _, a) in enumerate(backends)}
    blob = make_blob(scheduler, weights, max_conns, ring_size=13)
    args = (blob, SID, flow_hash, n, active, rng_seed)
    assert cdp.sched_retry_sequence(*args) == pysched.sched_retry_sequence(*args)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, b: m.sched_sequence(b, 8, [], {}, 1), "service_id: 8 is not in the table"),
        (lambda m, b: m.sched_sequence(b, SID, [-1], {}, 1), "flow hash -1 is not a u64"),
        (
            lambda m, b: m.sched_sequence(b, SID, [], {70000: 1}, 1),
            "active: backend id 70000 is not in 0..65535",
        ),
        (
            lambda m, b: m.sched_sequence(b, SID, [], {1: -1}, 1),
            "active[1]: -1 is not in 0..2**31-1",
        ),
        (lambda m, b: m.sched_sequence(b, SID, [], {}, -1), "rng_seed: -1 is not a u64"),
        (
            lambda m, b: m.sched_sequence(b[:40], SID, [], {}, 1),
            f"header.total_size: {len(make_blob(RR, [1, 1]))} does not equal the blob length 40",
        ),
        (lambda m, b: m.sched_retry_sequence(b, SID, 0, -1), "n: -1 is not a u32"),
    ],
)
def test_bad_arguments_same_error(
    cdp: types.ModuleType, call: Callable[[object, bytes], object], message: str
) -> None:
    blob = make_blob(RR, [1, 1])
    with pytest.raises(ValueError) as py_err:
        call(pysched, blob)
    with pytest.raises(ValueError) as c_err:
        call(cdp, blob)
    assert str(py_err.value) == str(c_err.value) == message


# ---- each scheduler, against both implementations ------------------------------------------


def test_round_robin_rotates_and_skips_ineligible(impl: types.ModuleType) -> None:
    picks = rel(impl.sched_sequence(make_blob(RR, [1, 1, 1, 1]), SID, hashes(4000), {}, 1))
    assert picks[:6] == [0, 1, 2, 3, 0, 1]
    assert Counter(picks) == {0: 1000, 1: 1000, 2: 1000, 3: 1000}
    # a weight-0 backend is skipped and its turns spread evenly over the others (not all to its
    # neighbour, which would double that one's load when a backend is drained)
    picks = rel(impl.sched_sequence(make_blob(RR, [1, 0, 1, 1]), SID, hashes(3000), {}, 1))
    assert picks[:6] == [0, 2, 3, 0, 2, 3]
    assert Counter(picks) == {0: 1000, 2: 1000, 3: 1000}


def test_smooth_weighted_round_robin(impl: types.ModuleType) -> None:
    blob = make_blob(WRR, [5, 1, 1])
    picks = rel(impl.sched_sequence(blob, SID, hashes(700), {}, 1))
    # nginx's smooth WRR interleaves: a a b a c a a, and repeats exactly every 7 picks
    assert picks[:7] == [0, 0, 1, 0, 2, 0, 0]
    assert picks == picks[:7] * 100
    picks = rel(impl.sched_sequence(make_blob(WRR, [3, 0, 2, 1]), SID, hashes(600), {}, 1))
    assert Counter(picks) == {0: 300, 2: 200, 3: 100}


def test_least_conn_prefers_the_least_loaded(impl: types.ModuleType) -> None:
    # active counts per backend id: ids are 1, 3, 5 for the service's backends 0, 1, 2
    blob = make_blob(LC, [1, 1, 1])
    picks = rel(impl.sched_sequence(blob, SID, hashes(50), {1: 5, 3: 0, 5: 4}, 1))
    assert set(picks) == {1}
    # weighted: (active + 1) / weight; 4/2 < 3/1
    blob = make_blob(LC, [2, 1])
    assert set(rel(impl.sched_sequence(blob, SID, hashes(50), {1: 3, 3: 2}, 1))) == {0}
    # a tie ((3+1)/2 == (1+1)/1) goes to the first tied backend at or after the rr counter
    picks = rel(impl.sched_sequence(blob, SID, hashes(6), {1: 3, 3: 1}, 1))
    assert picks == [0, 1, 0, 1, 0, 1]
    # all idle and equal: least_conn rotates like round_robin
    picks = rel(impl.sched_sequence(make_blob(LC, [1, 1, 1]), SID, hashes(300), {}, 1))
    assert Counter(picks) == {0: 100, 1: 100, 2: 100}


def test_random_two_spreads_evenly_when_idle(impl: types.ModuleType) -> None:
    # 8,000 picks over 4 idle backends: each 2,000 +- 10 % (sd ~39, so 5 sd).
    picks = rel(impl.sched_sequence(make_blob(RANDOM2, [1, 1, 1, 1]), SID, hashes(8000), {}, 99))
    counts = Counter(picks)
    assert set(counts) == {0, 1, 2, 3}
    for c in counts.values():
        assert abs(c - 2000) < 200, counts


def test_random_two_avoids_the_loaded_backend(impl: types.ModuleType) -> None:
    # The loaded backend 0 wins only when both draws hit it: p = 1/16, so ~500 of 8,000
    # (sd ~22); accept 300..700. Different seeds give different sequences.
    blob = make_blob(RANDOM2, [1, 1, 1, 1])
    picks = rel(impl.sched_sequence(blob, SID, hashes(8000), {1: 10}, 5))
    assert 300 <= Counter(picks)[0] <= 700
    assert picks != rel(impl.sched_sequence(blob, SID, hashes(8000), {1: 10}, 6))
    # weight counts too: idle, weights 3 and 1 -> backend 1 only when both draws hit it (1/4)
    picks = rel(impl.sched_sequence(make_blob(RANDOM2, [3, 1]), SID, hashes(4000), {}, 5))
    assert 800 <= Counter(picks)[1] <= 1200


@pytest.mark.parametrize("scheduler", [SRCHASH, MAGLEV])
def test_hashing_schedulers_follow_weights_and_are_sticky(
    impl: types.ModuleType, scheduler: int
) -> None:
    # 20,000 random flows over weights 3:1:0:4 -> shares 3/8, 1/8, 0, 4/8, each within 0.02
    # (sd <= 0.0036; the Maglev ring itself is within 2 + N w / S slots of exact).
    blob = make_blob(scheduler, [3, 1, 0, 4], ring_size=4099)
    flows = hashes(20000, seed=3)
    picks = rel(impl.sched_sequence(blob, SID, flows, {}, 1))
    counts = Counter(picks)
    assert counts[2] == 0
    for j, share in ((0, 3 / 8), (1, 1 / 8), (3, 4 / 8)):
        assert abs(counts[j] / 20000 - share) < 0.02, counts
    # the same flow always lands on the same backend, whatever state came before
    again = rel(impl.sched_sequence(blob, SID, list(reversed(flows)), {}, 7))
    assert again == list(reversed(picks))


@pytest.mark.parametrize("scheduler", ALL)
def test_a_full_backend_is_not_eligible(impl: types.ModuleType, scheduler: int) -> None:
    # backend 1 (id 3) has max_connections 2: full at 2 active sessions, eligible at 1
    blob = make_blob(scheduler, [1, 1, 1], max_conns=[0, 2, 0])
    flows = hashes(300)
    assert 1 not in rel(impl.sched_sequence(blob, SID, flows, {3: 2}, 1))
    assert 1 in rel(impl.sched_sequence(blob, SID, flows, {1: 1, 3: 1, 5: 1}, 1))
    # when every backend is full there is no candidate
    blob = make_blob(scheduler, [1, 1], max_conns=[1, 1])
    assert impl.sched_sequence(blob, SID, flows[:5], {1: 1, 3: 1}, 1) == [-1] * 5


@pytest.mark.parametrize("scheduler", ALL)
def test_no_eligible_backend(impl: types.ModuleType, scheduler: int) -> None:
    for weights in ([], [0, 0, 0]):
        blob = make_blob(scheduler, weights)
        assert impl.sched_sequence(blob, SID, hashes(3), {}, 1) == [-1, -1, -1]
        assert impl.sched_retry_sequence(blob, SID, 5, 3) == []


# ---- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ALL)
def test_retries_try_every_eligible_backend_once(impl: types.ModuleType, scheduler: int) -> None:
    blob = make_blob(scheduler, [2, 0, 1, 3, 1], ring_size=101)
    for flow in hashes(20):
        tried = rel(impl.sched_retry_sequence(blob, SID, flow, 10))
        assert sorted(tried) == [0, 2, 3, 4]  # each eligible once, then no candidate is left
        assert rel(impl.sched_retry_sequence(blob, SID, flow, 2)) == tried[:2]


@pytest.mark.parametrize("scheduler", [SRCHASH, MAGLEV])
def test_hashing_retry_walks_the_ring_forward(impl: types.ModuleType, scheduler: int) -> None:
    blob = make_blob(scheduler, [2, 0, 1, 3, 1], ring_size=101)
    table = parse(blob)
    svc = table.service(SID)
    assert svc is not None
    ring = table.service_ring(svc)
    for flow in hashes(20, seed=9):
        # expected from the rule: start at flow mod size, then the first entry after the
        # previous slot that names an untried backend
        expected: list[int] = []
        slot = flow % len(ring)
        expected.append(ring[slot])
        while len(expected) < 4:
            slot = (slot + 1) % len(ring)
            if ring[slot] not in expected:
                expected.append(ring[slot])
        assert rel(impl.sched_retry_sequence(blob, SID, flow, 10)) == expected


def test_retry_of_a_full_hashed_backend_walks_on(impl: types.ModuleType) -> None:
    blob = make_blob(MAGLEV, [1, 1, 1], max_conns=[1, 0, 0], ring_size=13)
    table = parse(blob)
    svc = table.service(SID)
    assert svc is not None
    ring = table.service_ring(svc)
    flow = next(h for h in hashes(100) if ring[h % 13] == 0)
    assert rel(impl.sched_sequence(blob, SID, [flow], {}, 1)) == [0]
    walked = next(ring[(flow + k) % 13] for k in range(13) if ring[(flow + k) % 13] != 0)
    assert rel(impl.sched_sequence(blob, SID, [flow], {1: 1}, 1)) == [walked]


# ---- the Python twin's state objects ---------------------------------------------------------


def test_python_pick_keeps_state_by_id() -> None:
    table = parse(make_blob(WRR, [2, 1]))
    svc = table.service(SID)
    assert svc is not None
    shared, worker = pysched.SchedShared(), pysched.SchedWorker(3)
    got = [pysched.pick(table, svc, shared, worker, 0) for _ in range(3)]
    assert got == [(0, 3), (0, 4), (0, 3)]
    assert worker.wrr_current == {1: 0, 3: 0}  # a whole period brings both back to 0
    rr_table = parse(make_blob(RR, [1, 1]))
    rr_svc = rr_table.service(SID)
    assert rr_svc is not None
    pysched.pick(rr_table, rr_svc, shared, worker, 0)
    assert shared.rr_next == {SID: 1}
    assert pysched.pick(rr_table, rr_svc, shared, worker, 0, tried=[3, 4]) is None


def test_python_rng_never_zero_and_seed_zero_is_replaced() -> None:
    w0 = pysched.SchedWorker(0)
    assert w0.rng == pysched.RNG_DEFAULT
    w = pysched.SchedWorker(1)
    outs = {w.rng_next() for _ in range(1000)}
    assert len(outs) == 1000 and w.rng != 0
