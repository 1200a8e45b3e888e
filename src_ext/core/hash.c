/* hash.c: the flow hash shared by every hashing decision (FNV-1a 64 + splitmix64 finaliser).
 *
 * Design. One hash function serves three purposes: the flow hash of a client (source_hash and
 * maglev lookups), and the two per-backend Maglev permutation parameters (offset and skip, with
 * the seed xored by a constant). It must be bit-identical to the Python twin in
 * l4lb/table/hashing.py and to docs/forwarding-table.md, because both VRRP nodes and both data
 * planes must map a client to the same backend. FNV-1a is byte-serial and trivially portable;
 * its weak avalanche is repaired by the splitmix64 finaliser, so `hash mod M` is well spread even
 * for keys that differ only in the last byte (adjacent client addresses or ports). The seed is
 * fed as the first four bytes (little-endian) so that the key bytes themselves stay untouched.
 * Keys are at most 19 bytes, so speed is dominated by the call, not the loop.
 */
#include <string.h>

#include "table.h"

#define HASH_FNV_OFFSET 0xcbf29ce484222325ull /* FNV-1a 64 offset basis */
#define HASH_FNV_PRIME 0x100000001b3ull       /* FNV-1a 64 prime */

/* One FNV-1a step. */
static inline uint64_t hash_fnv_step(uint64_t h, uint8_t byte)
{
    return (h ^ byte) * HASH_FNV_PRIME;
}

uint64_t dp_hash64(uint32_t seed, const uint8_t *data, size_t len)
{
    uint64_t h = HASH_FNV_OFFSET;
    size_t i;

    for (i = 0; i < 4; i++)
        h = hash_fnv_step(h, (uint8_t)(seed >> (8 * i)));
    for (i = 0; i < len; i++)
        h = hash_fnv_step(h, data[i]);
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

uint64_t dp_flow_hash(uint32_t seed, uint8_t family, const uint8_t addr[16], uint16_t port,
                      uint8_t hash_key)
{
    uint8_t key[19];
    size_t len = 17;

    key[0] = family;
    memcpy(key + 1, addr, 16);
    if (hash_key == DP_HASH_SRC_IP_PORT) {
        key[17] = (uint8_t)(port >> 8);
        key[18] = (uint8_t)port;
        len = 19;
    }
    return dp_hash64(seed, key, len);
}
