/* connlog_ring.h: one worker's bounded ring of closed-session records (one writer, one reader).
 *
 * The worker thread is the only producer: it claims the next free slot, fills the record in
 * place and commits it (connlog_ring_claim / connlog_ring_commit, inline below: no lock, no
 * system call, no allocation). The reader (dp_closed_sessions, serialised by dp->log_lock) takes
 * committed records oldest first. See connlog_ring.c for the design.
 */
#ifndef L4LB_CONNLOG_RING_H
#define L4LB_CONNLOG_RING_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "dp.h"

#define CONNLOG_LINE 64u             /* cache line: producer and consumer indexes live apart */

struct connlog_ring {
    _Atomic uint64_t head;         /* producer: records committed so far (next slot = head) */
    uint64_t tail_seen;            /* producer only: last tail it read (refreshed when full) */
    uint8_t pad_p[CONNLOG_LINE - 16]; /* keeps the consumer's index off the producer's line */
    _Atomic uint64_t tail;         /* consumer: records taken so far */
    uint8_t pad_c[CONNLOG_LINE - 8];  /* keeps the read-only fields below off the tail's line */
    uint32_t mask;                 /* capacity - 1 (capacity is a power of two) */
    uint32_t capacity;             /* records the ring holds */
    uint8_t pad_r[CONNLOG_LINE - 8];  /* records start on a line of their own */
    struct dp_conn_record rec[];   /* capacity slots */
};

/* Allocate an empty ring of `capacity` records (a power of two, >= 1). 0 or -ENOMEM. */
int connlog_ring_create(uint32_t capacity, struct connlog_ring **out);
/* Free a ring (NULL is fine). */
void connlog_ring_destroy(struct connlog_ring *r);
/* Consumer: move up to max committed records, oldest first, into out; returns how many. */
size_t connlog_ring_take(struct connlog_ring *r, struct dp_conn_record *out, size_t max);
/* Consumer: committed records not taken yet (a snapshot; the producer may add more). */
size_t connlog_ring_pending(struct connlog_ring *r);
/* Producer, while no consumer runs: move every record of `from` to the end of `to`, oldest
 * first; records that do not fit are dropped. Returns how many were dropped. */
uint64_t connlog_ring_move(struct connlog_ring *from, struct connlog_ring *to);

/* Producer: the slot of the next record, or NULL when the ring is full (the caller counts the
 * drop). Fill it, then connlog_ring_commit(). */
static inline struct dp_conn_record *connlog_ring_claim(struct connlog_ring *r)
{
    uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);

    if (h - r->tail_seen > r->mask) {
        r->tail_seen = atomic_load_explicit(&r->tail, memory_order_acquire);
        if (h - r->tail_seen > r->mask)
            return NULL;
    }
    return &r->rec[h & r->mask];
}

/* Producer: publish the record filled in the claimed slot. */
static inline void connlog_ring_commit(struct connlog_ring *r)
{
    uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);

    atomic_store_explicit(&r->head, h + 1, memory_order_release);
}

#endif
