"""Deterministic byte streams for the data-plane tests, and their SHA-256 digests.

A stream is a 1 MiB pseudo-random block (from a seed) read cyclically from a start offset and cut
to the requested length, so both ends can produce or check 100 MB without holding it in memory,
and many connections can each get a different stream from one block (different offsets).
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Iterator

BLOCK = 1 << 20  # bytes in one pattern block


@functools.lru_cache(maxsize=16)
def block(seed: int) -> bytes:
    """The 1 MiB block of a seed."""
    return random.Random(seed).randbytes(BLOCK)


def chunks(total: int, seed: int, size: int = 256 * 1024, offset: int = 0) -> Iterator[bytes]:
    """The stream of `total` bytes for seed, in pieces of at most `size` bytes."""
    data = block(seed)
    pos = 0
    while pos < total:
        start = (offset + pos) % BLOCK
        n = min(size, total - pos, BLOCK - start)
        yield data[start:start + n]
        pos += n


def stream(total: int, seed: int, offset: int = 0) -> bytes:
    """The whole stream at once (for small totals)."""
    return b"".join(chunks(total, seed, offset=offset))


@functools.lru_cache(maxsize=64)
def digest(total: int, seed: int) -> str:
    """SHA-256 hex digest of the stream."""
    h = hashlib.sha256()
    for piece in chunks(total, seed, BLOCK):
        h.update(piece)
    return h.hexdigest()
