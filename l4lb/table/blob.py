"""The forwarding-table blob: records, pack, parse + validate; Python twin of src_ext/core/table.c.

Layout and rules: docs/forwarding-table.md. `parse` refuses exactly what the C validator refuses,
in the same order, with the same one-line text naming the first failing field, so a bad blob
reads the same whichever data plane refused it (tests/unit/test_blob.py compares the two).
Check order: header fields in offset order; every backend record; every service record (fields in
offset order); every service's ring entries; every proxy_from entry.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
import sys
from array import array
from dataclasses import dataclass, field

from l4lb.table.maglev import is_prime

MAGIC = b"L4LB"
VERSION = 3
HEADER_SIZE = 32
SERVICE_SIZE = 64
BACKEND_SIZE = 56
PROXY_FROM_SIZE = 20
MAX_PROXY_FROM = 64  # accept_proxy_from entries per service (a linear scan at accept)
MAX_SERVICES = 1024
MAX_BACKENDS = 65536
MAX_WEIGHT = 256

PROTO_TCP, PROTO_UDP = 0, 1
SCHED_RR, SCHED_WRR, SCHED_LC, SCHED_RANDOM2, SCHED_SRCHASH, SCHED_MAGLEV = range(6)
SCHED_NAMES = (
    "round_robin",
    "weighted_round_robin",
    "least_conn",
    "random_two",
    "source_hash",
    "maglev",
)
HASH_SRC_IP, HASH_SRC_IP_PORT = 0, 1
FLOW_SRC_IP_PORT, FLOW_SRC_IP = 0, 1  # udp flow_key: client address and port / address only
FLAG_BACKUP = 1  # backend flag bit 0: a backup backend (informational)
FLAG_DOWN = 2  # backend flag bit 1: health DOWN or maintenance (its UDP flows move)
NO_SOURCE = bytes(16)  # source_addr of a backend without a source address (source_family 0)
# source_family of a transparent backend (`source = "client"`): every connection binds the
# client's address, port 0, after IP_TRANSPARENT / IPV6_TRANSPARENT; source_addr is 0
SOURCE_CLIENT = 1

_HEADER = struct.Struct("<4sHHIIIIII")
_SERVICE = struct.Struct("<IBBBB14I")
_BACKEND = struct.Struct("<IBBH16sIIB3s16sI")
_PROXY_FROM = struct.Struct("<BB2s16s")


class TableError(ValueError):
    """A blob that breaks docs/forwarding-table.md; the text names the first failing field."""


@dataclass(frozen=True)
class ServiceRec:
    """One decoded 64-byte service record."""

    service_id: int  # stable dense id < 1024
    protocol: int  # 0 tcp, 1 udp
    scheduler: int  # 0..5, see SCHED_NAMES
    hash_key: int  # 0 src_ip, 1 src_ip_port
    connect_timeout_ms: int  # > 0
    idle_timeout_ms: int  # tcp: 0 = none; udp: a flow expires after this long idle (> 0)
    retries: int  # other backends tried after a failed connect
    max_connections: int  # 0 = unlimited
    backend_first: int  # index of the first backend record of the service
    backend_count: int  # number of backend records of the service
    ring_first: int  # index of the first ring entry of the service
    ring_size: int  # maglev M / source_hash sum of eligible weights / 0
    flow_key: int = 0  # udp: 0 client address and port, 1 client address only; tcp: 0
    max_flows: int = 0  # udp: flows at once (all workers together), 0 = unlimited; tcp: 0
    responses: int = 0  # udp: a flow ends after this many datagrams from its backend, 0 = never
    proxy_from_first: int = 0  # index of the service's first proxy_from entry
    proxy_from_count: int = 0  # tcp: accept_proxy_from entries (<= 64); 0 = every client
    queue_timeout_ms: int = 0  # tcp: how long a client may wait for a full backend, 0 = no
    #                            queue (refused at once); udp: 0
    max_queue: int = 0  # tcp: clients waiting at once (all workers), > 0 with a queue; else 0


@dataclass(frozen=True)
class BackendRec:
    """One decoded 56-byte backend record."""

    backend_id: int  # stable dense id < 65536
    family: int  # 4 or 6
    flags: int  # bit 0: backup (informational); bit 1: down (UDP flows move); 2..7 ignored
    port: int  # 1..65535
    addr: bytes  # 16 bytes, network order; IPv4 in the first 4
    weight: int  # 0..256, 0 = not eligible for new connections
    max_connections: int  # 0 = unlimited
    # 0: no source (the kernel's choice); 1 (SOURCE_CLIENT): the client's address
    # (transparent); else 4 or 6 = family, and source_addr is the address
    source_family: int = 0
    source_addr: bytes = NO_SOURCE  # 16 bytes, network order, bound before connect; 0 if none


@dataclass(frozen=True)
class ProxyFromRec:
    """One decoded 20-byte proxy_from entry: a prefix of accept_proxy_from."""

    family: int  # 4 or 6
    prefix_len: int  # 0..32 (IPv4) or 0..128 (IPv6)
    addr: bytes  # 16 bytes, network order; IPv4 in the first 4; host bits 0

    @classmethod
    def of(cls, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> ProxyFromRec:
        """The entry of a network (host bits already 0)."""
        raw = network.network_address.packed
        return cls(network.version, network.prefixlen, raw.ljust(16, b"\0"))

    def matches(self, family: int, addr16: bytes) -> bool:
        """Do the first prefix_len bits of a client address (16 bytes) equal this prefix's?"""
        if family != self.family:
            return False
        n = self.prefix_len
        whole, rest = divmod(n, 8)
        if addr16[:whole] != self.addr[:whole]:
            return False
        return rest == 0 or ((addr16[whole] ^ self.addr[whole]) >> (8 - rest)) == 0


_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96, IPv4-mapped IPv6 addresses


@dataclass(frozen=True)
class Table:
    """A whole forwarding table: what a blob encodes."""

    hash_seed: int  # u32 seed of the flow hash and the Maglev permutations
    services: tuple[ServiceRec, ...]
    backends: tuple[BackendRec, ...]
    ring: tuple[int, ...]  # relative backend indexes of every service's ring, concatenated
    proxy_from: tuple[ProxyFromRec, ...] = ()  # every service's accept_proxy_from, concatenated
    _by_id: dict[int, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {s.service_id: i for i, s in enumerate(self.services)})

    def service(self, service_id: int) -> ServiceRec | None:
        """The service with this stable id, or None."""
        i = self._by_id.get(service_id)
        return None if i is None else self.services[i]

    def service_backends(self, svc: ServiceRec) -> tuple[BackendRec, ...]:
        """The backend records of one service, in canonical order."""
        return self.backends[svc.backend_first : svc.backend_first + svc.backend_count]

    def service_ring(self, svc: ServiceRec) -> tuple[int, ...]:
        """The ring entries of one service (relative backend indexes)."""
        return self.ring[svc.ring_first : svc.ring_first + svc.ring_size]

    def proxy_from_match(self, svc: ServiceRec, family: int, addr16: bytes) -> bool:
        """Does a client (family 4/6, 16-byte address, IPv4 in the first 4) match one of svc's
        accept_proxy_from prefixes? An IPv4-mapped IPv6 client (::ffff:a.b.c.d) also matches
        the IPv4 prefixes by its IPv4 address (C: dp_table_proxy_from_match)."""
        first = svc.proxy_from_first
        entries = self.proxy_from[first : first + svc.proxy_from_count]
        v4 = addr16 if family == 4 else None
        if family == 6 and addr16[:12] == _MAPPED:
            v4 = addr16[12:16] + bytes(12)
        for e in entries:
            if e.family == 4 and v4 is not None and e.matches(4, v4):
                return True
            if e.family == 6 and e.matches(family, addr16):
                return True
        return False


def _ring_bytes(ring: tuple[int, ...] | list[int]) -> bytes:
    arr = array("I", ring)
    if sys.byteorder == "big":
        arr.byteswap()
    return arr.tobytes()


def pack(table: Table) -> bytes:
    """Encode a Table as a version-3 blob (no semantic checks: parse() does those)."""
    ns, nb, nr = len(table.services), len(table.backends), len(table.ring)
    npf = len(table.proxy_from)
    total = HEADER_SIZE + SERVICE_SIZE * ns + BACKEND_SIZE * nb + 4 * nr + PROXY_FROM_SIZE * npf
    parts = [_HEADER.pack(MAGIC, VERSION, HEADER_SIZE, ns, nb, nr, table.hash_seed, total, npf)]
    for s in table.services:
        parts.append(
            _SERVICE.pack(
                s.service_id,
                s.protocol,
                s.scheduler,
                s.hash_key,
                s.flow_key,
                s.connect_timeout_ms,
                s.idle_timeout_ms,
                s.retries,
                s.max_connections,
                s.backend_first,
                s.backend_count,
                s.ring_first,
                s.ring_size,
                s.max_flows,
                s.responses,
                s.proxy_from_first,
                s.proxy_from_count,
                s.queue_timeout_ms,
                s.max_queue,
            )
        )
    for b in table.backends:
        if len(b.addr) != 16:
            raise TableError(f"backend addr {b.addr!r} is not 16 bytes")
        if len(b.source_addr) != 16:
            raise TableError(f"backend source_addr {b.source_addr!r} is not 16 bytes")
        parts.append(
            _BACKEND.pack(
                b.backend_id,
                b.family,
                b.flags,
                b.port,
                b.addr,
                b.weight,
                b.max_connections,
                b.source_family,
                bytes(3),
                b.source_addr,
                0,
            )
        )
    parts.append(_ring_bytes(table.ring))
    for e in table.proxy_from:
        if len(e.addr) != 16:
            raise TableError(f"proxy_from addr {e.addr!r} is not 16 bytes")
        parts.append(_PROXY_FROM.pack(e.family, e.prefix_len, bytes(2), e.addr))
    return b"".join(parts)


def digest(blob: bytes) -> str:
    """The table digest shown to operators: first 16 hex digits of SHA-256 of the blob with
    every service_id and backend_id zeroed (ids depend on reload history; the mapping does not).
    The blob must have passed validation (its counts are trusted)."""
    masked = bytearray(blob)
    n_services, n_backends = struct.unpack_from("<II", blob, 8)
    for i in range(n_services):
        struct.pack_into("<I", masked, HEADER_SIZE + SERVICE_SIZE * i, 0)
    base = HEADER_SIZE + SERVICE_SIZE * n_services
    for i in range(n_backends):
        struct.pack_into("<I", masked, base + BACKEND_SIZE * i, 0)
    return hashlib.sha256(bytes(masked)).hexdigest()[:16]


def _check_header(blob: bytes) -> tuple[int, int, int, int, int]:
    n = len(blob)
    if n < HEADER_SIZE:
        raise TableError(f"blob: length {n} is shorter than the 32-byte header")
    magic, version, hsize, ns, nb, nr, seed, total, npf = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise TableError(f'header.magic: {magic.hex()} is not 4c344c42 ("L4LB")')
    if version != VERSION:
        raise TableError(f"header.version: {version} is not {VERSION}")
    if hsize != HEADER_SIZE:
        raise TableError(f"header.header_size: {hsize} is not 32")
    if total != n:
        raise TableError(f"header.total_size: {total} does not equal the blob length {n}")
    expect = HEADER_SIZE + SERVICE_SIZE * ns + BACKEND_SIZE * nb + 4 * nr + PROXY_FROM_SIZE * npf
    if expect != total:
        raise TableError(
            f"header.total_size: {total} does not equal 32 + 64*{ns} + 56*{nb} + 4*{nr} + "
            f"20*{npf} = {expect}"
        )
    return ns, nb, nr, npf, seed


def _check_backends(blob: bytes, offset: int, nb: int) -> list[BackendRec]:
    backends: list[BackendRec] = []
    first_use: dict[int, int] = {}
    for i, fields in enumerate(_BACKEND.iter_unpack(blob[offset : offset + BACKEND_SIZE * nb])):
        bid, family, flags, port, addr, weight, maxc, sfam, res0, saddr, res1 = fields
        where = f"backend[{i}]"
        if bid >= MAX_BACKENDS:
            raise TableError(f"{where}.backend_id: {bid} is not below 65536")
        if bid in first_use:
            raise TableError(f"{where}.backend_id: {bid} is also used by backend[{first_use[bid]}]")
        first_use[bid] = i
        if family not in (4, 6):
            raise TableError(f"{where}.family: {family} is not 4 or 6")
        if port == 0:
            raise TableError(f"{where}.port: 0 is not in 1..65535")
        if family == 4 and any(addr[4:]):
            raise TableError(f"{where}.addr: bytes 4..15 of an IPv4 address are not 0")
        if weight > MAX_WEIGHT:
            raise TableError(f"{where}.weight: {weight} is above 256")
        if sfam not in (0, SOURCE_CLIENT, 4, 6):
            raise TableError(f"{where}.source_family: {sfam} is not 0, 1, 4 or 6")
        if sfam not in (0, SOURCE_CLIENT, family):
            raise TableError(f"{where}.source_family: {sfam} is not the backend's family {family}")
        if any(res0):
            raise TableError(f"{where}.reserved0: bytes 33..35 are not 0")
        if sfam in (0, SOURCE_CLIENT) and any(saddr):
            raise TableError(f"{where}.source_addr: not 0 although source_family is {sfam}")
        if sfam == 4 and any(saddr[4:]):
            raise TableError(f"{where}.source_addr: bytes 4..15 of an IPv4 address are not 0")
        if res1 != 0:
            raise TableError(f"{where}.reserved1: {res1} is not 0")
        backends.append(BackendRec(bid, family, flags, port, addr, weight, maxc, sfam, saddr))
    return backends


def _check_services(
    blob: bytes, ns: int, nr: int, npf: int, backends: list[BackendRec]
) -> list[ServiceRec]:
    services: list[ServiceRec] = []
    first_use: dict[int, int] = {}
    nb = len(backends)
    end = HEADER_SIZE + SERVICE_SIZE * ns
    for i, fields in enumerate(_SERVICE.iter_unpack(blob[HEADER_SIZE:end])):
        (
            sid,
            proto,
            sched,
            hkey,
            fkey,
            cto,
            ito,
            retries,
            maxc,
            bfirst,
            bcount,
            rfirst,
            rsize,
            max_flows,
            responses,
            pf_first,
            pf_count,
            q_timeout,
            max_queue,
        ) = fields
        w = f"service[{i}]"
        if sid >= MAX_SERVICES:
            raise TableError(f"{w}.service_id: {sid} is not below 1024")
        if sid in first_use:
            raise TableError(f"{w}.service_id: {sid} is also used by service[{first_use[sid]}]")
        first_use[sid] = i
        if proto > PROTO_UDP:
            raise TableError(f"{w}.protocol: {proto} is not 0 (tcp) or 1 (udp)")
        if sched > SCHED_MAGLEV:
            raise TableError(f"{w}.scheduler: {sched} is not in 0..5")
        if hkey > HASH_SRC_IP_PORT:
            raise TableError(f"{w}.hash_key: {hkey} is not 0 (src_ip) or 1 (src_ip_port)")
        if proto == PROTO_TCP and fkey != 0:
            raise TableError(f"{w}.flow_key: {fkey} is not 0 (tcp)")
        if fkey > FLOW_SRC_IP:
            raise TableError(f"{w}.flow_key: {fkey} is not 0 (src_ip_port) or 1 (src_ip)")
        if cto == 0:
            raise TableError(f"{w}.connect_timeout_ms: 0 is not > 0")
        if proto == PROTO_UDP and ito == 0:
            raise TableError(f"{w}.idle_timeout_ms: 0 is not > 0 (udp)")
        if bfirst > nb:
            raise TableError(f"{w}.backend_first: {bfirst} is beyond the {nb} backends")
        if bfirst + bcount > nb:
            raise TableError(
                f"{w}.backend_count: {bcount} backends from {bfirst} overrun the {nb} backends"
            )
        if rfirst > nr:
            raise TableError(f"{w}.ring_first: {rfirst} is beyond the {nr} ring entries")
        if rfirst + rsize > nr:
            raise TableError(
                f"{w}.ring_size: {rsize} entries from {rfirst} overrun the {nr} ring entries"
            )
        weights = [b.weight for b in backends[bfirst : bfirst + bcount] if b.weight > 0]
        eligible, wsum = len(weights), sum(weights)
        if sched <= SCHED_RANDOM2:
            if rsize != 0:
                raise TableError(
                    f"{w}.ring_size: {rsize} is not 0 (scheduler {SCHED_NAMES[sched]} has no ring)"
                )
        elif sched == SCHED_MAGLEV:
            if eligible == 0 and rsize != 0:
                raise TableError(f"{w}.ring_size: {rsize} is not 0 although no backend is eligible")
            if eligible > 0 and rsize == 0:
                raise TableError(f"{w}.ring_size: 0 although {eligible} backends are eligible")
            if rsize < eligible:
                raise TableError(
                    f"{w}.ring_size: {rsize} is below the {eligible} eligible backends"
                )
            if rsize != 0 and not is_prime(rsize):
                raise TableError(f"{w}.ring_size: {rsize} is not prime")
        elif rsize != wsum:
            raise TableError(f"{w}.ring_size: {rsize} is not the sum of eligible weights {wsum}")
        if proto == PROTO_TCP and max_flows != 0:
            raise TableError(f"{w}.max_flows: {max_flows} is not 0 (tcp)")
        if proto == PROTO_TCP and responses != 0:
            raise TableError(f"{w}.responses: {responses} is not 0 (tcp)")
        if pf_first > npf:
            raise TableError(
                f"{w}.proxy_from_first: {pf_first} is beyond the {npf} proxy_from entries"
            )
        if proto == PROTO_UDP and pf_count != 0:
            raise TableError(f"{w}.proxy_from_count: {pf_count} is not 0 (udp)")
        if pf_count > MAX_PROXY_FROM:
            raise TableError(f"{w}.proxy_from_count: {pf_count} is above 64")
        if pf_first + pf_count > npf:
            raise TableError(
                f"{w}.proxy_from_count: {pf_count} entries from {pf_first} overrun the {npf} "
                "proxy_from entries"
            )
        if proto == PROTO_UDP and q_timeout != 0:
            raise TableError(f"{w}.queue_timeout_ms: {q_timeout} is not 0 (udp)")
        if proto == PROTO_UDP and max_queue != 0:
            raise TableError(f"{w}.max_queue: {max_queue} is not 0 (udp)")
        if q_timeout and not max_queue:
            raise TableError(f"{w}.max_queue: 0 although queue_timeout_ms is {q_timeout}")
        services.append(
            ServiceRec(
                sid,
                proto,
                sched,
                hkey,
                cto,
                ito,
                retries,
                maxc,
                bfirst,
                bcount,
                rfirst,
                rsize,
                fkey,
                max_flows,
                responses,
                pf_first,
                pf_count,
                q_timeout,
                max_queue,
            )
        )
    return services


def _check_rings(services: list[ServiceRec], backends: list[BackendRec], ring: array[int]) -> None:
    for i, s in enumerate(services):
        entries = ring[s.ring_first : s.ring_first + s.ring_size]
        if not entries:
            continue
        own = backends[s.backend_first : s.backend_first + s.backend_count]
        bad = {e for e in set(entries) if e >= s.backend_count or own[e].weight == 0}
        if not bad:
            continue
        for j, e in enumerate(entries):
            if e >= s.backend_count:
                raise TableError(
                    f"service[{i}].ring[{j}]: {e} is not below backend_count {s.backend_count}"
                )
            if own[e].weight == 0:
                raise TableError(f"service[{i}].ring[{j}]: backend {e} has weight 0")


def _check_proxy_from(blob: bytes, offset: int, npf: int) -> list[ProxyFromRec]:
    entries: list[ProxyFromRec] = []
    area = blob[offset : offset + PROXY_FROM_SIZE * npf]
    for i, (family, plen, res, addr) in enumerate(_PROXY_FROM.iter_unpack(area)):
        w = f"proxy_from[{i}]"
        if family not in (4, 6):
            raise TableError(f"{w}.family: {family} is not 4 or 6")
        alen = 4 if family == 4 else 16
        if plen > alen * 8:
            raise TableError(f"{w}.prefix_len: {plen} is above {alen * 8} (IPv{family})")
        if any(res):
            raise TableError(f"{w}.reserved: bytes 2..3 are not 0")
        if any(addr[alen:]):
            raise TableError(f"{w}.addr: bytes 4..15 of an IPv4 address are not 0")
        host_mask = (1 << (alen * 8 - plen)) - 1
        if int.from_bytes(addr[:alen], "big") & host_mask:
            raise TableError(f"{w}.addr: host bits beyond /{plen} are not 0")
        entries.append(ProxyFromRec(family, plen, addr))
    return entries


def parse(blob: bytes) -> Table:
    """Decode and validate a blob; raises TableError naming the first failing field."""
    ns, nb, nr, npf, seed = _check_header(blob)
    backends = _check_backends(blob, HEADER_SIZE + SERVICE_SIZE * ns, nb)
    ring_off = HEADER_SIZE + SERVICE_SIZE * ns + BACKEND_SIZE * nb
    ring = array("I")
    ring.frombytes(blob[ring_off : ring_off + 4 * nr])
    if sys.byteorder == "big":
        ring.byteswap()
    services = _check_services(blob, ns, nr, npf, backends)
    _check_rings(services, backends, ring)
    proxy_from = _check_proxy_from(blob, ring_off + 4 * nr, npf)
    return Table(seed, tuple(services), tuple(backends), tuple(ring), tuple(proxy_from))
