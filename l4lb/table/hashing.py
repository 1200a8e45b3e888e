"""The flow hash (FNV-1a 64 + splitmix64 finaliser), Python twin of src_ext/core/hash.c.

`hash64` is l4lb_hash64 of docs/forwarding-table.md; `flow_key` builds the bytes a client is
hashed by, `flow_hash` hashes them. Both data planes and both nodes of a VRRP pair must agree on
every bit, so this follows the document literally and the tests compare it with the C code.
"""

from __future__ import annotations

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1
HASH_SRC_IP = 0
HASH_SRC_IP_PORT = 1


def _check_u32(value: int, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{what}: {value!r} is not a u32")
    return value


def addr16(family: int, addr: bytes, what: str = "addr") -> bytes:
    """The 16-byte form of an address: 16 bytes as given, or IPv4's 4 bytes padded with 0."""
    if not isinstance(addr, bytes):
        raise ValueError(f"{what}: {addr!r} is not bytes")
    if len(addr) == 16:
        return addr
    if len(addr) == 4 and family == 4:
        return addr + bytes(12)
    raise ValueError(f"{what}: {len(addr)} bytes is not a 16-byte (or 4-byte IPv4) address")


def hash64(seed: int, data: bytes) -> int:
    """l4lb_hash64(seed, data): FNV-1a 64 over seed (4 bytes LE) + data, splitmix64 finaliser."""
    h = FNV_OFFSET
    for byte in _check_u32(seed, "seed").to_bytes(4, "little") + data:
        h = ((h ^ byte) * FNV_PRIME) & MASK64
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & MASK64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & MASK64
    h ^= h >> 31
    return h


def flow_key(family: int, addr: bytes, port: int, hash_key: int) -> bytes:
    """The bytes a client is hashed by: family, 16-byte address, and the port (big-endian) for
    hash_key src_ip_port (1)."""
    if family not in (4, 6):
        raise ValueError(f"family: {family} is not 4 or 6")
    if not 0 <= port <= 65535:
        raise ValueError(f"port: {port} is not in 0..65535")
    if hash_key not in (HASH_SRC_IP, HASH_SRC_IP_PORT):
        raise ValueError(f"hash_key: {hash_key} is not 0 or 1")
    key = bytes([family]) + addr16(family, addr)
    if hash_key == HASH_SRC_IP_PORT:
        key += port.to_bytes(2, "big")
    return key


def flow_hash(seed: int, family: int, addr: bytes, port: int, hash_key: int) -> int:
    """The flow hash of a client: hash64(seed, flow_key(...))."""
    _check_u32(seed, "seed")
    return hash64(seed, flow_key(family, addr, port, hash_key))
