"""Tests the flow hash: the documented construction, the key layout, spread, and C == Python."""

from __future__ import annotations

import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l4lb.table.hashing import flow_hash, flow_key, hash64

MASK64 = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    """Plain FNV-1a 64, written from its definition (no seed, no finaliser)."""
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & MASK64
    return h


def unfinalise(h: int) -> int:
    """Inverse of the splitmix64 finaliser, to reach the FNV state inside hash64."""

    def unxorshift(x: int, s: int) -> int:
        y = x
        for _ in range(64 // s + 1):
            y = x ^ (y >> s)
        return y

    h = unxorshift(h, 31)
    h = (h * pow(0x94D049BB133111EB, -1, 1 << 64)) & MASK64
    h = unxorshift(h, 27)
    h = (h * pow(0xBF58476D1CE4E5B9, -1, 1 << 64)) & MASK64
    return unxorshift(h, 30)


def test_fnv_reference_matches_published_vectors() -> None:
    # Published FNV-1a 64 test vectors (the FNV authors' test suite).
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == 0x85944171F73967E8


@pytest.mark.parametrize("data", [b"", b"ar", b"\x00" * 19, bytes(range(40))])
def test_hash64_is_fnv1a_of_seed_and_data_then_splitmix(data: bytes) -> None:
    seed = int.from_bytes(b"foob", "little")
    assert unfinalise(hash64(seed, data)) == fnv1a64(b"foob" + data)
    # so hash64(seed("foob"), "ar") carries the published FNV-1a state of "foobar"
    assert unfinalise(hash64(seed, b"ar")) == 0x85944171F73967E8


def test_flow_key_layout() -> None:
    v4 = bytes([192, 0, 2, 7])
    assert flow_key(4, v4, 443, 0) == b"\x04" + v4 + bytes(12)
    assert flow_key(4, v4 + bytes(12), 443, 1) == b"\x04" + v4 + bytes(12) + b"\x01\xbb"
    v6 = bytes(range(16))
    assert flow_key(6, v6, 65535, 1) == b"\x06" + v6 + b"\xff\xff"
    assert flow_hash(9, 6, v6, 80, 1) == hash64(9, flow_key(6, v6, 80, 1))
    # src_ip ignores the port, src_ip_port does not
    assert flow_hash(9, 4, v4, 1, 0) == flow_hash(9, 4, v4, 2, 0)
    assert flow_hash(9, 4, v4, 1, 1) != flow_hash(9, 4, v4, 2, 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 4, bytes(4), 1, 0), "seed: -1 is not a u32"),
        ((1 << 32, 4, bytes(4), 1, 0), "seed: 4294967296 is not a u32"),
        ((0, 5, bytes(16), 1, 0), "family: 5 is not 4 or 6"),
        ((0, 4, bytes(16), 65536, 0), "port: 65536 is not in 0..65535"),
        ((0, 4, bytes(16), 1, 2), "hash_key: 2 is not 0 or 1"),
        ((0, 6, bytes(4), 1, 0), "addr: 4 bytes is not a 16-byte (or 4-byte IPv4) address"),
    ],
)
def test_bad_input_same_error_in_c_and_python(
    cdp: types.ModuleType, args: tuple[int, int, bytes, int, int], message: str
) -> None:
    with pytest.raises(ValueError) as py_err:
        flow_hash(*args)
    with pytest.raises(ValueError) as c_err:
        cdp.flow_hash(*args)
    assert str(py_err.value) == str(c_err.value) == message


def test_adjacent_clients_spread_evenly() -> None:
    # 20,000 consecutive IPv4 clients into 7 buckets: each within 5 % of 1/7 (sd is ~0.9 %).
    counts = [0] * 7
    n = 20_000
    for i in range(n):
        addr = (0x0A000000 + i).to_bytes(4, "big")
        counts[flow_hash(0, 4, addr, 0, 0) % 7] += 1
    for c in counts:
        assert abs(c - n / 7) < 0.05 * n / 7, counts


def test_one_bit_flip_changes_about_half_the_output_bits() -> None:
    # Avalanche: over 2,000 single-bit flips of a 19-byte key, the mean number of changed output
    # bits is 32 +- 1 (sd of the mean is ~0.05); no flip may change fewer than 8.
    total = 0
    flips = 0
    for i in range(2000):
        key = bytearray(hash64(1, i.to_bytes(4, "little")).to_bytes(8, "little") * 3)[:19]
        base = hash64(77, bytes(key))
        key[i % 19] ^= 1 << (i % 8)
        changed = bin(base ^ hash64(77, bytes(key))).count("1")
        assert changed >= 8
        total += changed
        flips += 1
    assert abs(total / flips - 32) < 1


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), data=st.binary(max_size=64))
def test_hash64_c_equals_python(cdp: types.ModuleType, seed: int, data: bytes) -> None:
    assert cdp.hash64(seed, data) == hash64(seed, data)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    family=st.sampled_from([4, 6]),
    addr=st.binary(min_size=16, max_size=16),
    port=st.integers(0, 65535),
    hash_key=st.sampled_from([0, 1]),
)
def test_flow_hash_c_equals_python(
    cdp: types.ModuleType, seed: int, family: int, addr: bytes, port: int, hash_key: int
) -> None:
    assert cdp.flow_hash(seed, family, addr, port, hash_key) == flow_hash(
        seed, family, addr, port, hash_key
    )
    v4 = addr[:4]
    assert cdp.flow_hash(seed, 4, v4, port, hash_key) == flow_hash(seed, 4, v4, port, hash_key)
