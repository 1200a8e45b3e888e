"""Maglev ring fill (weighted), Python twin of src_ext/core/maglev.c.

The reference oracle for the C fill and the builder's fallback when the extension is absent.
Backends are `(family, addr, port, weight)` in canonical order; the result lists, for each of the
M slots, the index of its backend in that list. See docs/forwarding-table.md for the algorithm;
input checks and error texts are the same as the C glue's (src_ext/table_api.pxi).
"""

from __future__ import annotations

from collections.abc import Sequence

from l4lb.table.hashing import addr16, hash64

OFFSET_SALT = 0x9E3779B9
SKIP_SALT = 0x85EBCA6B
MAX_WEIGHT = 256
MAX_BACKENDS = 65536

MaglevBackend = tuple[int, bytes, int, int]


def is_prime(m: int) -> bool:
    """True when m is prime (trial division; m is at most 2**32)."""
    if m < 2:
        return False
    if m % 2 == 0:
        return m == 2
    d = 3
    while d * d <= m:
        if m % d == 0:
            return False
        d += 2
    return True


def backend_key(family: int, addr: bytes, port: int) -> bytes:
    """A backend's Maglev key: family (1) + addr (16) + port (2, big-endian)."""
    return bytes([family]) + addr16(family, addr) + port.to_bytes(2, "big")


def maglev_fill(seed: int, backends: Sequence[MaglevBackend], m: int) -> list[int]:
    """The M-entry ring; raises ValueError for a bad backend, a non-prime M, no eligible backend
    or M below the number of eligible backends."""
    if not isinstance(seed, int) or not 0 <= seed <= 0xFFFFFFFF:
        raise ValueError(f"seed: {seed!r} is not a u32")
    if not isinstance(m, int) or not 0 <= m <= 0xFFFFFFFF:
        raise ValueError(f"m: {m!r} is not a u32")
    if len(backends) > MAX_BACKENDS:
        raise ValueError(f"backends: {len(backends)} is more than 65536")
    keys: list[bytes] = []  # Maglev key of each eligible backend
    index: list[int] = []  # its position in `backends`
    weights: list[int] = []  # its weight
    for i, (family, addr, port, weight) in enumerate(backends):
        if family not in (4, 6):
            raise ValueError(f"backends[{i}].family: {family!r} is not 4 or 6")
        a16 = addr16(family, addr, f"backends[{i}].addr")
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"backends[{i}].port: {port!r} is not in 1..65535")
        if not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"backends[{i}].weight: {weight!r} is not in 0..256")
        if weight > 0:
            keys.append(backend_key(family, a16, port))
            index.append(i)
            weights.append(weight)
    if not is_prime(m):
        raise ValueError(f"m: {m} is not prime")
    if not keys:
        raise ValueError("backends: no backend has weight > 0")
    if len(keys) > m:
        raise ValueError(f"m: {m} is below the {len(keys)} eligible backends")

    cur = [hash64(seed ^ OFFSET_SALT, k) % m for k in keys]  # next slot of each permutation
    skip = [hash64(seed ^ SKIP_SALT, k) % (m - 1) + 1 for k in keys]
    credit = [0] * len(keys)
    wmax = max(weights)
    ring = [-1] * m
    filled = 0
    while filled < m:
        for j in range(len(keys)):
            credit[j] += weights[j]
            while credit[j] >= wmax and filled < m:
                credit[j] -= wmax
                c = cur[j]
                step = skip[j]
                while ring[c] >= 0:
                    c += step
                    if c >= m:
                        c -= m
                nxt = c + step
                cur[j] = nxt - m if nxt >= m else nxt
                ring[c] = index[j]
                filled += 1
    return ring
