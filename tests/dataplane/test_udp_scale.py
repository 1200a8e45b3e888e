"""UDP at scale through both data planes: 10,000 concurrent flows per scheduler, and 100,000
short flows that must leave nothing behind.

The client sockets live in a child process (udp_fleet.py): one process may not hold 10,000
client sockets and the balancer's 10,000 upstream sockets (RLIMIT_NOFILE, which the tests
cannot raise). Every flow is one client port; the backends answer with their name, so each
client knows its backend.
"""

from __future__ import annotations

import collections
import os
import resource
import time
from collections.abc import Callable, Iterator

import pytest

from l4lb.table.sched import SchedShared, SchedWorker, pick

from .clients import wait_for
from .conftest import LB, SVC, MakeLB, Servers
from .tables import BackendSpec, BuiltTable, ServiceSpec, expected_backend
from .udp_fleet import FleetProcess

HOST = "127.0.0.1"
FLOWS = 10_000
SHORT_FLOWS = 100_000
# The reference plane (Python, in this process) proves the same bookkeeping with fewer flows:
# 100,000 of them took 20 s of the CI budget and show nothing 30,000 do not
SHORT_FLOWS_REF = 30_000
SHORT_SOCKETS = 1_000  # client ports reused round after round: 100 rounds of 1,000 flows
IDLE_LONG = 60_000  # ms: the concurrent flows outlive the test
FD_MARGIN = 200  # fds the test process needs besides the balancer's upstream sockets


@pytest.fixture
def fleet() -> Iterator[Callable[[int], FleetProcess]]:
    """fleet(count) -> a child process with `count` client sockets; always ended."""
    made: list[FleetProcess] = []

    def make(count: int) -> FleetProcess:
        proc = FleetProcess(HOST, count)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.close()


def need_fds(count: int) -> None:
    """Fail early and clearly when this process cannot hold `count` more fds."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    have = soft - len(os.listdir("/proc/self/fd"))
    assert have >= count + FD_MARGIN, f"RLIMIT_NOFILE {soft} leaves {have} fds, need {count}"


def settled(lb: LB, **expected: int) -> None:
    """The service's counters read as expected (after the last answers were counted)."""

    def now() -> dict[str, int]:
        values = lb.svc_stats()
        return {k: values.get(k, -1) for k in expected}

    wait_for(lambda: now() == expected, 10)
    assert now() == expected


def twin_counts(built: BuiltTable, n: int, rng_seed: int) -> collections.Counter[str]:
    """Backends the Python scheduler twin gives n flows that all stay open (least_conn and
    random_two read the open-flow counts), from one worker's point of view."""
    table = built.table
    svc = table.service(SVC)
    assert svc is not None
    shared, worker = SchedShared(), SchedWorker(rng_seed)
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        got = pick(table, svc, shared, worker, 0)
        assert got is not None
        bid = table.backends[got[1]].backend_id
        shared.active[bid] = shared.active.get(bid, 0) + 1
        counts[built.names[bid]] += 1
    return counts


# scheduler -> (weights, workers, hash_key)
CASES = {
    "round_robin": ((1, 1, 1), 2, "src_ip"),
    "weighted_round_robin": ((5, 3, 2), 1, "src_ip"),  # smooth WRR state is per worker
    "least_conn": ((3, 1), 2, "src_ip"),
    "random_two": ((2, 1, 1), 2, "src_ip"),
    "source_hash": ((2, 1, 1), 2, "src_ip_port"),
    "maglev": ((1, 1, 1), 2, "src_ip_port"),
}


@pytest.mark.parametrize("scheduler", list(CASES))
def test_ten_thousand_concurrent_flows_spread_by_the_scheduler(
        make_lb: MakeLB, servers: Servers, fleet: Callable[[int], FleetProcess],
        scheduler: str) -> None:
    weights, workers, hash_key = CASES[scheduler]
    need_fds(FLOWS)
    backends = [servers.udp(f"b{i}", "name") for i in range(len(weights))]
    specs = [BackendSpec(b.name, HOST, b.port, weight=w)
             for b, w in zip(backends, weights, strict=True)]
    lb = make_lb([ServiceSpec(SVC, tuple(specs), scheduler=scheduler, hash_key=hash_key,
                              protocol="udp", idle_timeout_ms=IDLE_LONG, maglev_size=4099)],
                 workers=workers, hash_seed=5)
    built = lb.built
    assert built is not None
    clients = fleet(FLOWS)
    answers = clients.round(lb.addr(), tag="q", timeout=60)
    missing = [i for i, a in enumerate(answers) if a is None]
    assert not missing, f"{len(missing)} flows got no answer"
    names = [a[0].split("\n", 1)[0] for a in answers if a is not None]
    assert all(a[0] == f"{n}\nq{i}" for i, (a, n) in enumerate(
        zip((a for a in answers if a is not None), names, strict=True)))
    assert all(a[1] == lb.addr() for a in answers if a is not None)
    got = collections.Counter(names)
    settled(lb, flows_created=FLOWS, flows_active=FLOWS, datagrams_in=FLOWS,
            datagrams_out=FLOWS, drops_send=0)
    for b in backends:  # one upstream socket per flow: one source per flow at the backend
        assert b.received() == got[b.name] == len(b.sources())
        assert lb.be_stats(b.name)["flows_total"] == got[b.name]
    n = len(weights)
    if scheduler == "round_robin":  # one counter for both workers: exact, first in order +1
        order = [built.names[r.backend_id] for r in built.table.backends]
        assert [got[name] for name in order] == [FLOWS // n + (i < FLOWS % n)
                                                 for i in range(n)]
    elif scheduler == "weighted_round_robin":  # one worker: exactly by weight
        assert got == {f"b{i}": FLOWS * w // sum(weights) for i, w in enumerate(weights)}
    elif scheduler == "least_conn":  # open flows only grow: the split follows the weights
        twin = twin_counts(built, FLOWS, 1)
        assert twin == {"b0": 7500, "b1": 2500}
        # two workers may read the same counts at the same moment: a few flows of slack
        assert all(abs(got[k] - twin[k]) <= 4 for k in twin), (got, twin)
    elif scheduler == "random_two":
        twin = twin_counts(built, FLOWS, 1)
        # the lighter of two draws keeps every backend within a few flows of its share;
        # a plain random draw would stray by about 50
        assert all(abs(got[k] - twin[k]) <= 12 for k in twin), (got, twin)
    else:  # hashing: every flow exactly where the twin puts it
        for i, name in enumerate(names):
            assert name == expected_backend(built, SVC, (HOST, clients.ports[i])), i
        assert len(got) == n


def test_hundred_thousand_short_flows_leave_nothing_behind(
        make_lb: MakeLB, servers: Servers, fleet: Callable[[int], FleetProcess]) -> None:
    """responses = 1 ends each flow with its answer; the idle timeout would end any that lost
    its answer. Afterwards: no flow, no upstream socket, counters equal to the traffic.

    The idle timeout is 2 s, not 200 ms. With 200 ms the reference plane's variant lost
    answers in 2 of 3 full CI runs on a slow 2-vCPU host, never when run alone. The likely
    cause, not proven: the reference plane runs in this (the test) process, and late in a full
    run it can stall for more than 200 ms (a garbage collection of a large heap) between a
    flow's query and its answer, so the flow ends first. The rounds' budget (100 s) stays
    below the fleet's answer ceiling (120 s), so a lost answer shows as `missing`, not as a
    silent child."""
    echo = servers.udp("echo", "echo")
    lb = make_lb([ServiceSpec(SVC, (BackendSpec("echo", HOST, echo.port),),
                              protocol="udp", idle_timeout_ms=2000, responses=1)])
    flows = SHORT_FLOWS_REF if "refdp" in lb.impl.__module__ else SHORT_FLOWS
    clients = fleet(SHORT_SOCKETS)
    fds = len(os.listdir("/proc/self/fd"))
    start = time.monotonic()
    result = clients.rounds(lb.addr(), flows // SHORT_SOCKETS, timeout=100)
    seconds = time.monotonic() - start
    assert result == {"answered": flows, "missing": 0, "wrong": 0}, result
    settled(lb, flows_created=flows, flows_expired=flows, flows_active=0,
            datagrams_in=flows, datagrams_out=flows, drops_send=0,
            drops_no_backend=0, accept_errors=0)
    assert lb.flows() == []
    assert wait_for(lambda: len(os.listdir("/proc/self/fd")) <= fds, 5), (
        f"{len(os.listdir('/proc/self/fd')) - fds} fds left")
    be = lb.be_stats("echo")
    assert (be["flows_active"], be["flows_total"]) == (0, flows)
    assert echo.received() == flows
    print(f"{flows} short flows in {seconds:.1f} s ({lb.impl.__module__})")
