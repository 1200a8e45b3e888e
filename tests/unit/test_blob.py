"""Tests the blob format: pack/parse round trip, every validation rule, C and Python verdicts."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import struct
import types
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l4lb.table.blob import (
    SOURCE_CLIENT,
    BackendRec,
    ProxyFromRec,
    ServiceRec,
    Table,
    TableError,
    digest,
    pack,
    parse,
)
from l4lb.table.maglev import maglev_fill


def v4(a: int, b: int, c: int, d: int) -> bytes:
    return bytes([a, b, c, d]) + bytes(12)


BACKENDS = (
    # service 0 (maglev, M = 7): backend 1 has weight 0
    BackendRec(10, 4, 0, 8080, v4(10, 0, 0, 1), 3, 0),
    BackendRec(11, 4, 1, 8080, v4(10, 0, 0, 2), 0, 0),
    BackendRec(12, 6, 0, 8080, bytes(range(1, 17)), 1, 100, 6, bytes(range(17, 33))),
    # service 1 (source_hash): weights 2 + 1
    BackendRec(20, 4, 0, 53, v4(10, 0, 1, 1), 2, 0),
    BackendRec(21, 4, 0, 53, v4(10, 0, 1, 2), 1, 0, SOURCE_CLIENT),  # transparent
    # service 2 (round_robin); its backend leaves from 10.9.9.9 (a source address)
    BackendRec(30, 4, 0, 9000, v4(10, 0, 2, 1), 256, 5, 4, v4(10, 9, 9, 9)),
)
MAGLEV_RING = tuple(
    maglev_fill(77, [(b.family, b.addr, b.port, b.weight) for b in BACKENDS[:3]], 7)
)
# accept_proxy_from prefixes: service 0 has the first two, service 2 the third
PROXY_FROM = (
    ProxyFromRec(4, 8, v4(10, 0, 0, 0)),
    ProxyFromRec(6, 32, bytes.fromhex("20010db8") + bytes(12)),
    ProxyFromRec(4, 32, v4(192, 0, 2, 7)),
)
SERVICES = (
    ServiceRec(3, 0, 5, 0, 1000, 0, 2, 0, 0, 3, 0, 7, proxy_from_first=0, proxy_from_count=2),
    ServiceRec(5, 1, 4, 1, 500, 30000, 0, 10, 3, 2, 7, 3, flow_key=1, max_flows=100, responses=1,
               proxy_from_first=2),
    ServiceRec(9, 0, 0, 0, 3000, 300000, 1, 0, 5, 1, 10, 0, proxy_from_first=2,
               proxy_from_count=1, queue_timeout_ms=5000, max_queue=10),
)
BASE = Table(77, SERVICES, BACKENDS, (*MAGLEV_RING, 0, 0, 1), PROXY_FROM)
SVC_OFF = 32
BK_OFF = 32 + 64 * 3
RING_OFF = BK_OFF + 56 * 6
PF_OFF = RING_OFF + 4 * 10


def base_blob() -> bytearray:
    return bytearray(pack(BASE))


def put(fmt: str, offset: int, value: int) -> Callable[[bytearray], bytearray]:
    def mutate(blob: bytearray) -> bytearray:
        struct.pack_into("<" + fmt, blob, offset, value)
        return blob

    return mutate


def svc(i: int, field_offset: int, fmt: str, value: int) -> Callable[[bytearray], bytearray]:
    return put(fmt, SVC_OFF + 64 * i + field_offset, value)


def bk(i: int, field_offset: int, fmt: str, value: int) -> Callable[[bytearray], bytearray]:
    return put(fmt, BK_OFF + 56 * i + field_offset, value)


def ring(k: int, value: int) -> Callable[[bytearray], bytearray]:
    return put("I", RING_OFF + 4 * k, value)


def pf(i: int, field_offset: int, value: int) -> Callable[[bytearray], bytearray]:
    return put("B", PF_OFF + 20 * i + field_offset, value)


def grow(blob: bytearray) -> bytearray:
    blob += bytes(4)
    struct.pack_into("<I", blob, 24, len(blob))
    return blob


def add_proxy_from(family: int, prefix_len: int, addr: bytes) -> Callable[[bytearray], bytearray]:
    """Append one proxy_from entry (outside every service's range) and fix the counts."""

    def mutate(blob: bytearray) -> bytearray:
        blob += struct.pack("<BB2s16s", family, prefix_len, bytes(2), addr)
        struct.pack_into("<I", blob, 24, len(blob))
        struct.pack_into("<I", blob, 28, len(PROXY_FROM) + 1)
        return blob

    return mutate


def both(*mutations: Callable[[bytearray], bytearray]) -> Callable[[bytearray], bytearray]:
    def mutate(blob: bytearray) -> bytearray:
        for m in mutations:
            blob = m(blob)
        return blob

    return mutate


TOTAL = len(pack(BASE))

# One case per rule of docs/forwarding-table.md; each mutation breaks exactly that rule.
CASES: list[tuple[str, Callable[[bytearray], bytearray], str]] = [
    ("length", lambda b: b[:31], "blob: length 31 is shorter than the 32-byte header"),
    ("length-empty", lambda b: bytearray(), "blob: length 0 is shorter than the 32-byte header"),
    (
        "magic",
        put("4s", 0, b"L4LC"),  # type: ignore[arg-type]
        'header.magic: 4c344c43 is not 4c344c42 ("L4LB")',
    ),
    ("version", put("H", 4, 1), "header.version: 1 is not 3"),
    ("header_size", put("H", 6, 40), "header.header_size: 40 is not 32"),
    (
        "total_size-length",
        put("I", 24, TOTAL + 4),
        f"header.total_size: {TOTAL + 4} does not equal the blob length {TOTAL}",
    ),
    (
        "total_size-formula",
        grow,
        f"header.total_size: {TOTAL + 4} does not equal 32 + 64*3 + 56*6 + 4*10 + 20*3 = "
        f"{TOTAL}",
    ),
    (
        "total_size-counts",
        put("I", 8, 4),
        f"header.total_size: {TOTAL} does not equal 32 + 64*4 + 56*6 + 4*10 + 20*3 = "
        f"{TOTAL + 64}",
    ),
    (
        "total_size-n_proxy_from",
        put("I", 28, 4),
        f"header.total_size: {TOTAL} does not equal 32 + 64*3 + 56*6 + 4*10 + 20*4 = "
        f"{TOTAL + 20}",
    ),
    ("service_id-range", svc(1, 0, "I", 1024), "service[1].service_id: 1024 is not below 1024"),
    ("service_id-unique", svc(2, 0, "I", 3), "service[2].service_id: 3 is also used by service[0]"),
    ("protocol", svc(0, 4, "B", 2), "service[0].protocol: 2 is not 0 (tcp) or 1 (udp)"),
    ("scheduler", svc(1, 5, "B", 6), "service[1].scheduler: 6 is not in 0..5"),
    ("hash_key", svc(2, 6, "B", 2), "service[2].hash_key: 2 is not 0 (src_ip) or 1 (src_ip_port)"),
    ("flow_key-tcp", svc(0, 7, "B", 1), "service[0].flow_key: 1 is not 0 (tcp)"),
    (
        "flow_key-udp",
        svc(1, 7, "B", 2),
        "service[1].flow_key: 2 is not 0 (src_ip_port) or 1 (src_ip)",
    ),
    ("connect_timeout_ms", svc(1, 8, "I", 0), "service[1].connect_timeout_ms: 0 is not > 0"),
    ("idle_timeout_ms-udp", svc(1, 12, "I", 0), "service[1].idle_timeout_ms: 0 is not > 0 (udp)"),
    ("backend_first", svc(2, 24, "I", 7), "service[2].backend_first: 7 is beyond the 6 backends"),
    (
        "backend_count",
        svc(2, 28, "I", 2),
        "service[2].backend_count: 2 backends from 5 overrun the 6 backends",
    ),
    ("ring_first", svc(2, 32, "I", 11), "service[2].ring_first: 11 is beyond the 10 ring entries"),
    (
        "ring_size-range",
        svc(1, 32, "I", 8),
        "service[1].ring_size: 3 entries from 8 overrun the 10 ring entries",
    ),
    (
        "ring_size-not-ring-scheduler",
        both(svc(2, 32, "I", 0), svc(2, 36, "I", 1)),
        "service[2].ring_size: 1 is not 0 (scheduler round_robin has no ring)",
    ),
    (
        "maglev-ring_size-none-eligible",
        both(bk(0, 24, "I", 0), bk(2, 24, "I", 0)),
        "service[0].ring_size: 7 is not 0 although no backend is eligible",
    ),
    (
        "maglev-ring_size-zero",
        svc(0, 36, "I", 0),
        "service[0].ring_size: 0 although 2 backends are eligible",
    ),
    (
        "maglev-ring_size-small",
        svc(0, 36, "I", 1),
        "service[0].ring_size: 1 is below the 2 eligible backends",
    ),
    ("maglev-ring_size-prime", svc(0, 36, "I", 8), "service[0].ring_size: 8 is not prime"),
    (
        "source_hash-ring_size",
        bk(3, 24, "I", 3),
        "service[1].ring_size: 3 is not the sum of eligible weights 4",
    ),
    ("max_flows-tcp", svc(0, 40, "I", 9), "service[0].max_flows: 9 is not 0 (tcp)"),
    ("responses-tcp", svc(2, 44, "I", 1), "service[2].responses: 1 is not 0 (tcp)"),
    (
        "proxy_from_first",
        svc(2, 48, "I", 4),
        "service[2].proxy_from_first: 4 is beyond the 3 proxy_from entries",
    ),
    ("proxy_from_count-udp", svc(1, 52, "I", 1), "service[1].proxy_from_count: 1 is not 0 (udp)"),
    ("proxy_from_count-max", svc(0, 52, "I", 65), "service[0].proxy_from_count: 65 is above 64"),
    (
        "proxy_from_count-range",
        svc(2, 52, "I", 2),
        "service[2].proxy_from_count: 2 entries from 2 overrun the 3 proxy_from entries",
    ),
    ("queue_timeout_ms-udp", svc(1, 56, "I", 5),
     "service[1].queue_timeout_ms: 5 is not 0 (udp)"),
    ("max_queue-udp", svc(1, 60, "I", 3), "service[1].max_queue: 3 is not 0 (udp)"),
    ("max_queue-zero", svc(2, 60, "I", 0),
     "service[2].max_queue: 0 although queue_timeout_ms is 5000"),
    ("proxy_from-family", pf(1, 0, 5), "proxy_from[1].family: 5 is not 4 or 6"),
    ("proxy_from-prefix_len-v4", pf(0, 1, 33), "proxy_from[0].prefix_len: 33 is above 32 (IPv4)"),
    (
        "proxy_from-prefix_len-v6",
        pf(1, 1, 129),
        "proxy_from[1].prefix_len: 129 is above 128 (IPv6)",
    ),
    ("proxy_from-reserved", pf(2, 3, 1), "proxy_from[2].reserved: bytes 2..3 are not 0"),
    (
        "proxy_from-addr-ipv4-tail",
        pf(0, 4 + 4, 1),
        "proxy_from[0].addr: bytes 4..15 of an IPv4 address are not 0",
    ),
    (
        "proxy_from-host-bits-v4",
        pf(0, 4 + 3, 1),
        "proxy_from[0].addr: host bits beyond /8 are not 0",
    ),
    (
        "proxy_from-host-bits-v4-partial-byte",
        both(pf(0, 1, 12), pf(0, 4 + 1, 0x08)),
        "proxy_from[0].addr: host bits beyond /12 are not 0",
    ),
    (
        "proxy_from-host-bits-v6",
        pf(1, 4 + 15, 1),
        "proxy_from[1].addr: host bits beyond /32 are not 0",
    ),
    (
        "proxy_from-unused-entry-is-checked-too",
        add_proxy_from(4, 0, v4(1, 0, 0, 0)),
        "proxy_from[3].addr: host bits beyond /0 are not 0",
    ),
    (
        "order-ring-before-proxy_from",
        both(pf(0, 0, 9), ring(8, 2)),
        "service[1].ring[1]: 2 is not below backend_count 2",
    ),
    (
        "order-proxy_from-family-before-prefix_len",
        both(pf(2, 1, 200), pf(2, 0, 0)),
        "proxy_from[2].family: 0 is not 4 or 6",
    ),
    ("ring-entry-range", ring(8, 2), "service[1].ring[1]: 2 is not below backend_count 2"),
    (
        "ring-entry-weight",
        ring(MAGLEV_RING.index(0), 1),
        f"service[0].ring[{MAGLEV_RING.index(0)}]: backend 1 has weight 0",
    ),
    ("backend_id-range", bk(4, 0, "I", 65536), "backend[4].backend_id: 65536 is not below 65536"),
    (
        "backend_id-unique",
        bk(4, 0, "I", 11),
        "backend[4].backend_id: 11 is also used by backend[1]",
    ),
    ("family", bk(2, 4, "B", 5), "backend[2].family: 5 is not 4 or 6"),
    ("port", bk(5, 6, "H", 0), "backend[5].port: 0 is not in 1..65535"),
    (
        "addr-ipv4-tail",
        bk(3, 8 + 15, "B", 1),
        "backend[3].addr: bytes 4..15 of an IPv4 address are not 0",
    ),
    ("weight", bk(5, 24, "I", 257), "backend[5].weight: 257 is above 256"),
    ("source_family", bk(0, 32, "B", 5), "backend[0].source_family: 5 is not 0, 1, 4 or 6"),
    (
        "source_family-not-the-backend's",
        bk(2, 32, "B", 4),
        "backend[2].source_family: 4 is not the backend's family 6",
    ),
    (
        "source_family-v6-on-v4",
        bk(5, 32, "B", 6),
        "backend[5].source_family: 6 is not the backend's family 4",
    ),
    ("backend-reserved0", bk(1, 34, "B", 4), "backend[1].reserved0: bytes 33..35 are not 0"),
    (
        "source_addr-without-family",
        bk(3, 36 + 15, "B", 1),
        "backend[3].source_addr: not 0 although source_family is 0",
    ),
    ("source_family-2", bk(1, 32, "B", 2), "backend[1].source_family: 2 is not 0, 1, 4 or 6"),
    (
        "source_addr-of-a-transparent-backend",
        bk(4, 36, "B", 10),
        "backend[4].source_addr: not 0 although source_family is 1",
    ),
    (
        "source_addr-left-when-made-transparent",
        bk(2, 32, "B", SOURCE_CLIENT),
        "backend[2].source_addr: not 0 although source_family is 1",
    ),
    (
        "source_addr-ipv4-tail",
        bk(5, 36 + 4, "B", 1),
        "backend[5].source_addr: bytes 4..15 of an IPv4 address are not 0",
    ),
    ("backend-reserved1", bk(1, 52, "I", 1), "backend[1].reserved1: 1 is not 0"),
    (
        "order-source_family-before-source_addr",
        both(bk(4, 36, "B", 1), bk(4, 32, "B", 9)),
        "backend[4].source_family: 9 is not 0, 1, 4 or 6",
    ),
    # first failing field: backends are checked before services, services before rings,
    # and lower indexes first
    (
        "order-backend-before-service",
        both(svc(0, 4, "B", 9), bk(5, 6, "H", 0)),
        "backend[5].port: 0 is not in 1..65535",
    ),
    (
        "order-service-before-ring",
        both(ring(8, 2), svc(2, 8, "I", 0)),
        "service[2].connect_timeout_ms: 0 is not > 0",
    ),
    (
        "order-lower-index-first",
        both(svc(2, 5, "B", 9), svc(1, 5, "B", 7)),
        "service[1].scheduler: 7 is not in 0..5",
    ),
    (
        "order-offset-within-record",
        both(bk(2, 24, "I", 999), bk(2, 4, "B", 0)),
        "backend[2].family: 0 is not 4 or 6",
    ),
    (
        "order-flow_key-before-connect_timeout",
        both(svc(1, 8, "I", 0), svc(1, 7, "B", 3)),
        "service[1].flow_key: 3 is not 0 (src_ip_port) or 1 (src_ip)",
    ),
    (
        "order-connect_timeout-before-idle_timeout",
        both(svc(1, 12, "I", 0), svc(1, 8, "I", 0)),
        "service[1].connect_timeout_ms: 0 is not > 0",
    ),
    (
        "order-protocol-decides-the-udp-rules",  # a tcp service turned udp needs an idle timeout
        svc(0, 4, "B", 1),
        "service[0].idle_timeout_ms: 0 is not > 0 (udp)",
    ),
]


def test_base_blob_is_valid_in_both(cdp: types.ModuleType) -> None:
    blob = pack(BASE)
    assert parse(blob) == BASE
    cdp.table_check(blob)
    assert len(blob) == 32 + 64 * 3 + 56 * 6 + 4 * 10 + 20 * 3


@pytest.mark.parametrize(("name", "mutate", "message"), CASES, ids=[c[0] for c in CASES])
def test_each_rule_python(
    name: str, mutate: Callable[[bytearray], bytearray], message: str
) -> None:
    with pytest.raises(TableError) as err:
        parse(bytes(mutate(base_blob())))
    assert str(err.value) == message


@pytest.mark.parametrize(("name", "mutate", "message"), CASES, ids=[c[0] for c in CASES])
def test_each_rule_c_gives_the_same_message(
    cdp: types.ModuleType, name: str, mutate: Callable[[bytearray], bytearray], message: str
) -> None:
    with pytest.raises(ValueError) as err:
        cdp.table_check(bytes(mutate(base_blob())))
    assert str(err.value) == message


def test_the_example_of_the_contract(cdp: types.ModuleType) -> None:
    # docs/forwarding-table.md's own example: a maglev ring of 65536 entries.
    backends = (BackendRec(0, 4, 0, 80, v4(10, 0, 0, 1), 1, 0),)
    services = (
        ServiceRec(0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0),
        ServiceRec(1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0),
        ServiceRec(2, 0, 5, 0, 1, 0, 0, 0, 0, 1, 0, 65536),
    )
    blob = pack(Table(0, services, backends, (0,) * 65536))
    message = "service[2].ring_size: 65536 is not prime"
    with pytest.raises(TableError, match=re.escape(message)):
        parse(blob)
    with pytest.raises(ValueError, match=re.escape(message)):
        cdp.table_check(blob)


def test_error_is_a_value_error() -> None:
    assert issubclass(TableError, ValueError)


def test_digest() -> None:
    blob = pack(BASE)
    assert len(digest(blob)) == 16
    assert digest(bytes(svc(0, 12, "I", 1)(bytearray(blob)))) != digest(blob)
    # the digest ignores service and backend ids (they depend on a node's reload history) ...
    renumbered = bytearray(blob)
    struct.pack_into("<I", renumbered, 32, 77)  # service[0].service_id
    struct.pack_into("<I", renumbered, 32 + 64 * len(SERVICES), 4242)  # backend[0].backend_id
    parse(bytes(renumbered))
    assert digest(bytes(renumbered)) == digest(blob)
    # ... and is the SHA-256 of the blob with those ids zeroed
    zeroed = bytearray(blob)
    for i in range(len(SERVICES)):
        struct.pack_into("<I", zeroed, 32 + 64 * i, 0)
    for i in range(len(BACKENDS)):
        struct.pack_into("<I", zeroed, 32 + 64 * len(SERVICES) + 56 * i, 0)
    assert digest(blob) == hashlib.sha256(bytes(zeroed)).hexdigest()[:16]


def test_table_accessors() -> None:
    s = BASE.service(5)
    assert s is SERVICES[1]
    assert BASE.service(4) is None
    assert BASE.service_backends(s) == BACKENDS[3:5]
    assert BASE.service_ring(s) == (0, 0, 1)


def test_empty_table_round_trips(cdp: types.ModuleType) -> None:
    empty = Table(0, (), (), ())
    blob = pack(empty)
    assert len(blob) == 32 and parse(blob) == empty
    cdp.table_check(blob)


backend_rec_st = st.builds(
    BackendRec,
    backend_id=st.just(0),
    family=st.sampled_from([4, 6]),
    flags=st.integers(0, 255),
    port=st.integers(1, 65535),
    addr=st.binary(min_size=16, max_size=16),
    weight=st.integers(0, 256),
    max_connections=st.integers(0, 2**32 - 1),
    # 1: a source of the backend's own family; 2: the client's (transparent)
    source_family=st.sampled_from([0, 0, 1, 2]),
    source_addr=st.binary(min_size=16, max_size=16),
)


def _source(b: BackendRec) -> tuple[int, bytes]:
    """A drawn record's source fields made valid: none, or one of the backend's family."""
    if not b.source_family:
        return 0, bytes(16)
    if b.source_family == 2:
        return SOURCE_CLIENT, bytes(16)
    return b.family, b.source_addr[:4] + bytes(12) if b.family == 4 else b.source_addr


@st.composite
def networks(draw: st.DrawFn) -> ProxyFromRec:
    """A valid proxy_from entry: any family and prefix length, host bits cleared."""
    family = draw(st.sampled_from([4, 6]))
    bits = 32 if family == 4 else 128
    plen = draw(st.integers(0, bits))
    raw = draw(st.binary(min_size=bits // 8, max_size=bits // 8))
    net = ipaddress.ip_network((raw, plen), strict=False)
    return ProxyFromRec.of(net)


@st.composite
def tables(draw: st.DrawFn) -> Table:
    """Random valid tables: every scheduler, random weights, consistent rings."""
    seed = draw(st.integers(0, 2**32 - 1))
    n_services = draw(st.integers(0, 5))
    sids = draw(
        st.lists(st.integers(0, 1023), min_size=n_services, max_size=n_services, unique=True)
    )
    services: list[ServiceRec] = []
    backends: list[BackendRec] = []
    ring: list[int] = []
    proxy_from: list[ProxyFromRec] = []
    for sid in sids:
        sched = draw(st.integers(0, 5))
        own = draw(st.lists(backend_rec_st, min_size=0, max_size=6))
        own = [
            BackendRec(
                len(backends) + j,
                b.family,
                b.flags,
                b.port,
                b.addr[:4] + bytes(12) if b.family == 4 else b.addr,
                b.weight,
                b.max_connections,
                *_source(b),
            )
            for j, b in enumerate(own)
        ]
        eligible = [j for j, b in enumerate(own) if b.weight > 0]
        if sched == 4:
            svc_ring = [j for j in eligible for _ in range(own[j].weight)]
        elif sched == 5 and eligible:
            svc_ring = maglev_fill(seed, [(b.family, b.addr, b.port, b.weight) for b in own], 13)
        else:
            svc_ring = []
        udp = draw(st.booleans())
        pfrom = [] if udp else draw(st.lists(networks(), max_size=3))
        q_timeout = 0 if udp else draw(st.integers(0, 2**32 - 1))
        services.append(
            ServiceRec(
                sid,
                int(udp),
                sched,
                draw(st.integers(0, 1)),
                draw(st.integers(1, 2**32 - 1)),
                draw(st.integers(1 if udp else 0, 2**32 - 1)),
                draw(st.integers(0, 2**32 - 1)),
                draw(st.integers(0, 2**32 - 1)),
                len(backends),
                len(own),
                len(ring),
                len(svc_ring),
                flow_key=draw(st.integers(0, 1)) if udp else 0,
                max_flows=draw(st.integers(0, 2**32 - 1)) if udp else 0,
                responses=draw(st.integers(0, 2**32 - 1)) if udp else 0,
                proxy_from_first=len(proxy_from),
                proxy_from_count=len(pfrom),
                queue_timeout_ms=q_timeout,
                max_queue=draw(st.integers(1, 2**32 - 1)) if q_timeout else 0,
            )
        )
        backends.extend(own)
        ring.extend(svc_ring)
        proxy_from.extend(pfrom)
    return Table(seed, tuple(services), tuple(backends), tuple(ring), tuple(proxy_from))


@settings(max_examples=80, deadline=None)
@given(table=tables())
def test_round_trip(cdp: types.ModuleType, table: Table) -> None:
    blob = pack(table)
    assert parse(blob) == table
    assert pack(parse(blob)) == blob
    cdp.table_check(blob)


@settings(max_examples=300, deadline=None)
@given(table=tables(), data=st.data())
def test_c_and_python_agree_on_corrupted_blobs(
    cdp: types.ModuleType, table: Table, data: st.DataObject
) -> None:
    blob = bytearray(pack(table))
    for _ in range(data.draw(st.integers(1, 3))):
        if not blob:
            break
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    try:
        parse(bytes(blob))
    except TableError as exc:
        with pytest.raises(ValueError) as c_err:
            cdp.table_check(bytes(blob))
        assert str(c_err.value) == str(exc)
    else:
        cdp.table_check(bytes(blob))


def _client(text: str) -> tuple[int, bytes]:
    a = ipaddress.ip_address(text)
    return a.version, a.packed.ljust(16, b"\0")


MATCH_TABLE = Table(
    0,
    (
        ServiceRec(1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, proxy_from_first=0, proxy_from_count=4),
        ServiceRec(2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, proxy_from_first=4),
    ),
    (),
    (),
    tuple(ProxyFromRec.of(ipaddress.ip_network(n)) for n in
          ("10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "172.16.0.0/12")),
)


@pytest.mark.parametrize(("client", "service_id", "hit"), [
    ("10.1.2.3", 1, True),
    ("11.0.0.1", 1, False),
    ("192.0.2.7", 1, True),
    ("192.0.2.8", 1, False),
    ("172.31.255.255", 1, True),  # a /12: the last byte of the prefix is partial
    ("172.32.0.0", 1, False),
    ("2001:db8::1", 1, True),
    ("2001:db9::1", 1, False),
    ("::1", 1, False),
    ("::ffff:10.9.9.9", 1, True),  # IPv4-mapped (a dual-stack listener): the IPv4 entries
    ("::ffff:192.0.2.8", 1, False),
    ("::10.9.9.9", 1, False),  # IPv4-compatible (deprecated) is not mapped
    ("10.1.2.3", 2, False),  # no list: nothing matches (the caller expects a header of all)
])
def test_proxy_from_match_c_and_python(
    cdp: types.ModuleType, client: str, service_id: int, hit: bool
) -> None:
    family, addr = _client(client)
    svc = MATCH_TABLE.service(service_id)
    assert svc is not None
    assert MATCH_TABLE.proxy_from_match(svc, family, addr) is hit
    assert cdp.proxy_from_match(pack(MATCH_TABLE), service_id, family, addr) is hit


@settings(max_examples=200, deadline=None)
@given(nets=st.lists(networks(), min_size=1, max_size=5),
       client=st.one_of(st.ip_addresses(), st.ip_addresses(v=4).map(
           lambda a: ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + a.packed))))
def test_proxy_from_match_agrees_with_ipaddress(
    cdp: types.ModuleType, nets: list[ProxyFromRec],
    client: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    table = Table(0, (ServiceRec(1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, proxy_from_first=0,
                                 proxy_from_count=len(nets)),), (), (), tuple(nets))
    family, addr = client.version, client.packed.ljust(16, b"\0")
    plain = client.ipv4_mapped if isinstance(client, ipaddress.IPv6Address) else None
    expect = any(
        (client in n) or (plain is not None and plain in n)
        for e in nets
        for n in [ipaddress.ip_network((e.addr[: 4 if e.family == 4 else 16], e.prefix_len))]
        if n.version == client.version or plain is not None
    )
    assert table.proxy_from_match(table.services[0], family, addr) is expect
    assert cdp.proxy_from_match(pack(table), 1, family, addr) is expect
