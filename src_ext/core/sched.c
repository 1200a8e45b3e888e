/* sched.c: picks the backend of a new session (or of a retry) with one of the six schedulers.
 *
 * Design. A pick reads the immutable table and two kinds of mutable state that outlive any table:
 * struct sched_shared (one per data plane: round-robin counters per service id, open sessions per
 * backend id) and struct sched_worker (one per worker thread: smooth-WRR currents per backend id
 * and the random_two PRNG). Keying the state by stable ids, never by table position, is what lets
 * a table swap keep the rotation and the load picture. Shared counters are atomics read with
 * relaxed ordering: a pick that sees a load a few sessions stale is fine, a lock is not.
 *
 * Candidates are the eligible backends (weight > 0 and, when the backend has max_connections,
 * fewer open sessions than that) minus the ones this session already tried. Hashing schedulers
 * (source_hash, maglev) look up ring[flow_hash mod ring_size] and walk the ring forward to the
 * first candidate; a retry starts the walk just after the slot of the failed attempt, so a
 * client keeps the same fallback order on every attempt and on both nodes of a pair. The other
 * schedulers run their normal pick restricted to the candidates. No pick allocates memory:
 * random_two counts the candidates and then walks to the drawn ones instead of collecting them.
 * Every rule here is spelt out in docs/forwarding-table.md and mirrored by l4lb/table/sched.py;
 * the tests compare whole pick sequences of both.
 */
#include <errno.h>
#include <string.h>

#include "table.h"

#define SCHED_XORSHIFT_MUL 0x2545F4914F6CDD1Dull /* xorshift64* output multiplier */

void sched_shared_init(struct sched_shared *sh)
{
    uint32_t i;

    for (i = 0; i < DP_MAX_SERVICES; i++) {
        atomic_init(&sh->rr_next[i], 0);
        atomic_init(&sh->svc_active[i], 0);
        atomic_init(&sh->queued[i], 0);
        atomic_init(&sh->q_issued[i], 0);
    }
    atomic_init(&sh->queued_all, 0);
    for (i = 0; i < DP_MAX_BACKENDS; i++)
        atomic_init(&sh->active[i], 0);
}

void sched_worker_init(struct sched_worker *w, uint64_t seed)
{
    memset(w->wrr_current, 0, sizeof(w->wrr_current));
    w->rng = seed != 0 ? seed : SCHED_RNG_DEFAULT;
}

uint64_t sched_rng_next(struct sched_worker *w)
{
    uint64_t x = w->rng;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return x * SCHED_XORSHIFT_MUL;
}

/* Open sessions of a backend, never below 0. */
static inline int64_t sched_load(struct sched_shared *sh, uint32_t backend_id)
{
    int32_t a = atomic_load_explicit(&sh->active[backend_id], memory_order_relaxed);

    return a < 0 ? 0 : a;
}

/* 1 when absolute backend index b may take a new session for this pick (of a client of family
 * cfamily, 4 or 6; 0: any client). */
static inline int sched_candidate(const struct dp_table *t, struct sched_shared *sh, uint32_t b,
                                  const uint32_t *tried, uint32_t n_tried, uint8_t cfamily)
{
    const struct dp_backend *be = &t->backends[b];
    uint32_t k;

    if (be->weight == 0)
        return 0;
    if (be->max_connections != 0 && sched_load(sh, be->backend_id) >= be->max_connections)
        return 0;
    /* transparent (source = "client"): only a backend of the client's family can take it */
    if (cfamily != 0 && be->source_family == DP_SOURCE_CLIENT && be->family != cfamily)
        return 0;
    for (k = 0; k < n_tried; k++)
        if (tried[k] == b)
            return 0;
    return 1;
}

/* 1 when absolute index x is strictly less loaded than y: (a_x+1)/w_x < (a_y+1)/w_y. */
static inline int sched_lighter(const struct dp_table *t, struct sched_shared *sh, uint32_t x,
                                uint32_t y)
{
    const struct dp_backend *bx = &t->backends[x], *by = &t->backends[y];

    return (sched_load(sh, bx->backend_id) + 1) * (int64_t)by->weight <
           (sched_load(sh, by->backend_id) + 1) * (int64_t)bx->weight;
}

/* source_hash and maglev: walk the ring from its start slot to the first candidate. */
static int sched_pick_ring(const struct dp_table *t, const struct dp_service *svc,
                           struct sched_shared *sh, uint64_t flow_hash, const uint32_t *tried,
                           uint32_t n_tried, uint8_t cfamily, uint32_t *slot, uint32_t *out)
{
    const uint32_t *ring = t->ring + svc->ring_first;
    uint32_t rs = svc->ring_size, c, k;

    if (rs == 0)
        return -ENOENT;
    if (n_tried == 0)
        c = (uint32_t)(flow_hash % rs);
    else
        c = (*slot % rs + 1) % rs;
    for (k = 0; k < rs; k++) {
        uint32_t b = svc->backend_first + ring[c];

        if (sched_candidate(t, sh, b, tried, n_tried, cfamily)) {
            *slot = c;
            *out = b;
            return 0;
        }
        if (++c == rs)
            c = 0;
    }
    return -ENOENT;
}

/* Number of candidates (eligible, untried) of the service. */
static uint32_t sched_count_candidates(const struct dp_table *t, const struct dp_service *svc,
                                      struct sched_shared *sh, const uint32_t *tried,
                                      uint32_t n_tried, uint8_t cfamily)
{
    uint32_t e = 0, k;

    for (k = 0; k < svc->backend_count; k++)
        e += (uint32_t)sched_candidate(t, sh, svc->backend_first + k, tried, n_tried, cfamily);
    return e;
}

static uint32_t sched_nth_candidate(const struct dp_table *t, const struct dp_service *svc,
                                    struct sched_shared *sh, const uint32_t *tried,
                                    uint32_t n_tried, uint8_t cfamily, uint32_t r);

/* round_robin: the (counter mod C)-th of the C candidates, so that a backend that is not
 * eligible hands its turns to all the others evenly (not to its next neighbour only). */
static int sched_pick_rr(const struct dp_table *t, const struct dp_service *svc,
                         struct sched_shared *sh, const uint32_t *tried, uint32_t n_tried,
                         uint8_t cfamily, uint32_t *out)
{
    uint32_t e = sched_count_candidates(t, svc, sh, tried, n_tried, cfamily), n, b;

    if (e == 0)
        return -ENOENT;
    n = atomic_fetch_add_explicit(&sh->rr_next[svc->service_id], 1, memory_order_relaxed);
    b = sched_nth_candidate(t, svc, sh, tried, n_tried, cfamily, n % e);
    if (b == UINT32_MAX)
        return -ENOENT;
    *out = b;
    return 0;
}

/* weighted_round_robin: nginx's smooth WRR over the candidates, currents per worker. */
static int sched_pick_wrr(const struct dp_table *t, const struct dp_service *svc,
                          struct sched_shared *sh, struct sched_worker *w, const uint32_t *tried,
                          uint32_t n_tried, uint8_t cfamily, uint32_t *out)
{
    int64_t total = 0;
    uint32_t k, best = UINT32_MAX;

    for (k = 0; k < svc->backend_count; k++) {
        uint32_t b = svc->backend_first + k;
        const struct dp_backend *be = &t->backends[b];

        if (!sched_candidate(t, sh, b, tried, n_tried, cfamily))
            continue;
        w->wrr_current[be->backend_id] += be->weight;
        total += be->weight;
        if (best == UINT32_MAX ||
            w->wrr_current[be->backend_id] > w->wrr_current[t->backends[best].backend_id])
            best = b;
    }
    if (best == UINT32_MAX)
        return -ENOENT;
    w->wrr_current[t->backends[best].backend_id] -= total;
    *out = best;
    return 0;
}

/* least_conn: smallest (active+1)/weight; among equals, the first candidate at or after rank
 * (counter mod C), so ties rotate evenly over the C candidates. */
static int sched_pick_lc(const struct dp_table *t, const struct dp_service *svc,
                         struct sched_shared *sh, const uint32_t *tried, uint32_t n_tried,
                         uint8_t cfamily, uint32_t *out)
{
    uint32_t e = sched_count_candidates(t, svc, sh, tried, n_tried, cfamily), start, k, rank = 0;
    uint32_t best = UINT32_MAX, best_rot = 0;

    if (e == 0)
        return -ENOENT;
    start = atomic_fetch_add_explicit(&sh->rr_next[svc->service_id], 1, memory_order_relaxed) % e;
    for (k = 0; k < svc->backend_count; k++) {
        uint32_t b = svc->backend_first + k, rot;

        if (!sched_candidate(t, sh, b, tried, n_tried, cfamily))
            continue;
        rot = (rank + e - start) % e; /* position in the rotated order */
        rank++;
        if (best == UINT32_MAX || sched_lighter(t, sh, b, best) ||
            (!sched_lighter(t, sh, best, b) && rot < best_rot)) {
            best = b;
            best_rot = rot;
        }
    }
    if (best == UINT32_MAX)
        return -ENOENT;
    *out = best;
    return 0;
}

/* The candidate with rank r (0-based, canonical order); the last one seen if fewer exist now
 * (another worker changed a load between the two passes); UINT32_MAX if there is none. */
static uint32_t sched_nth_candidate(const struct dp_table *t, const struct dp_service *svc,
                                    struct sched_shared *sh, const uint32_t *tried,
                                    uint32_t n_tried, uint8_t cfamily, uint32_t r)
{
    uint32_t k, last = UINT32_MAX;

    for (k = 0; k < svc->backend_count; k++) {
        uint32_t b = svc->backend_first + k;

        if (!sched_candidate(t, sh, b, tried, n_tried, cfamily))
            continue;
        if (r-- == 0)
            return b;
        last = b;
    }
    return last;
}

/* random_two: two uniform draws among the candidates, the less loaded wins, the first on ties. */
static int sched_pick_random2(const struct dp_table *t, const struct dp_service *svc,
                              struct sched_shared *sh, struct sched_worker *w,
                              const uint32_t *tried, uint32_t n_tried, uint8_t cfamily,
                              uint32_t *out)
{
    uint32_t e = sched_count_candidates(t, svc, sh, tried, n_tried, cfamily), r1, r2, b1, b2;

    if (e == 0)
        return -ENOENT;
    r1 = (uint32_t)(((sched_rng_next(w) >> 32) * e) >> 32);
    r2 = (uint32_t)(((sched_rng_next(w) >> 32) * e) >> 32);
    b1 = sched_nth_candidate(t, svc, sh, tried, n_tried, cfamily, r1);
    b2 = sched_nth_candidate(t, svc, sh, tried, n_tried, cfamily, r2);
    if (b1 == UINT32_MAX && b2 == UINT32_MAX)
        return -ENOENT;
    if (b1 == UINT32_MAX || (b2 != UINT32_MAX && sched_lighter(t, sh, b2, b1)))
        b1 = b2;
    *out = b1;
    return 0;
}

int sched_pick(const struct dp_table *t, const struct dp_service *svc, struct sched_shared *sh,
               struct sched_worker *w, uint64_t flow_hash, const uint32_t *tried, uint32_t n_tried,
               uint8_t cfamily, uint32_t *slot, uint32_t *out)
{
    switch (svc->scheduler) {
    case DP_SCHED_SRCHASH:
    case DP_SCHED_MAGLEV:
        return sched_pick_ring(t, svc, sh, flow_hash, tried, n_tried, cfamily, slot, out);
    case DP_SCHED_RR:
        *slot = 0;
        return sched_pick_rr(t, svc, sh, tried, n_tried, cfamily, out);
    case DP_SCHED_WRR:
        *slot = 0;
        return sched_pick_wrr(t, svc, sh, w, tried, n_tried, cfamily, out);
    case DP_SCHED_LC:
        *slot = 0;
        return sched_pick_lc(t, svc, sh, tried, n_tried, cfamily, out);
    case DP_SCHED_RANDOM2:
        *slot = 0;
        return sched_pick_random2(t, svc, sh, w, tried, n_tried, cfamily, out);
    default:
        return -EINVAL; /* unreachable: dp_table_parse rejects other values */
    }
}
