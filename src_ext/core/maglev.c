/* maglev.c: fills a service's Maglev lookup ring (weighted variant of the Maglev paper's fill).
 *
 * Design. Every eligible backend j (weight > 0) owns a permutation of the M slots, defined by
 * offset_j and skip_j taken from the flow hash of its key (family, address, port); M is prime, so
 * any skip in 1..M-1 visits every slot exactly once. Backends take turns claiming the next slot of
 * their permutation that is still empty. The weighted variant gives each backend `weight` credit
 * per round and lets it claim one slot per `wmax` credit, so a backend's share of the ring is
 * proportional to its weight, and with equal weights it is exactly the paper's round-robin fill.
 * Because each permutation depends only on the backend's own key, adding or removing one of N
 * backends moves about 1/N of the slots: the property that keeps established client->backend
 * mappings stable across table rebuilds and identical on both nodes of a VRRP pair.
 *
 * The permutation position is kept as the current slot (offset + next * skip mod M), advanced by
 * one addition and one conditional subtraction, so the fill does no division in its inner loop.
 * Cost: O(M log M) probes in expectation; the only allocation is 16 bytes per eligible backend.
 * Pure: no I/O, no globals, safe to run on any thread (the Cython glue releases the GIL).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "table.h"

#define MAGLEV_EMPTY UINT32_MAX   /* marks a ring slot not yet claimed during the fill */
#define MAGLEV_OFFSET_SALT 0x9E3779B9u /* seed xor for offset_j */
#define MAGLEV_SKIP_SALT 0x85EBCA6Bu   /* seed xor for skip_j */

/* Fill-time state of one eligible backend. */
struct maglev_perm {
    uint32_t index;   /* backend index relative to the service (written into the ring) */
    uint32_t cur;     /* slot the permutation visits next: (offset + next * skip) mod M */
    uint32_t skip;    /* permutation step, 1..M-1 */
    uint32_t credit;  /* weight credit not yet spent on slots */
};

int maglev_is_prime(uint32_t m)
{
    uint32_t d;

    if (m < 2)
        return 0;
    if (m % 2 == 0)
        return m == 2;
    for (d = 3; (uint64_t)d * d <= m; d += 2)
        if (m % d == 0)
            return 0;
    return 1;
}

void maglev_backend_key(const struct dp_backend *b, uint8_t key[MAGLEV_KEY_LEN])
{
    key[0] = b->family;
    memcpy(key + 1, b->addr, 16);
    key[17] = (uint8_t)(b->port >> 8);
    key[18] = (uint8_t)b->port;
}

int maglev_fill(uint32_t hash_seed, const struct dp_backend *backends, uint32_t n,
                uint32_t m, uint32_t *ring)
{
    struct maglev_perm *perm;
    uint8_t key[MAGLEV_KEY_LEN];
    uint32_t eligible = 0, wmax = 0, filled = 0, i, k;

    for (i = 0; i < n; i++) {
        if (backends[i].weight > DP_MAX_WEIGHT)
            return -EINVAL;
        if (backends[i].weight > 0) {
            eligible++;
            if (backends[i].weight > wmax)
                wmax = backends[i].weight;
        }
    }
    if (!maglev_is_prime(m))
        return -EINVAL;
    if (eligible == 0)
        return -ENOENT;
    if (eligible > m)
        return -EINVAL;

    perm = malloc(sizeof(*perm) * eligible);
    if (perm == NULL)
        return -ENOMEM;
    for (i = 0, k = 0; i < n; i++) {
        if (backends[i].weight == 0)
            continue;
        maglev_backend_key(&backends[i], key);
        perm[k].index = i;
        perm[k].cur = (uint32_t)(dp_hash64(hash_seed ^ MAGLEV_OFFSET_SALT, key, sizeof(key)) % m);
        perm[k].skip =
            (uint32_t)(dp_hash64(hash_seed ^ MAGLEV_SKIP_SALT, key, sizeof(key)) % (m - 1)) + 1;
        perm[k].credit = 0;
        k++;
    }
    for (i = 0; i < m; i++)
        ring[i] = MAGLEV_EMPTY;

    while (filled < m) {
        for (k = 0; k < eligible && filled < m; k++) {
            struct maglev_perm *p = &perm[k];

            p->credit += backends[p->index].weight;
            while (p->credit >= wmax && filled < m) {
                uint32_t c;

                p->credit -= wmax;
                do {
                    c = p->cur;
                    p->cur += p->skip;
                    if (p->cur >= m || p->cur < p->skip) /* second test: u32 wrap */
                        p->cur -= m;
                } while (ring[c] != MAGLEV_EMPTY);
                ring[c] = p->index;
                filled++;
            }
        }
    }
    free(perm);
    return 0;
}
