/* connlog_ring.c: the record ring of the connection log (allocation, the consumer side, resize).
 *
 * Design.
 *
 * The connection log keeps one record per TCP session or UDP flow that ended (dp.h, struct
 * dp_conn_record, 80 bytes since the real peer of an accept_proxy session joined it). Each worker writes its own ring, so the data path never shares a
 * lock or a counter with another thread: a classic single-producer / single-consumer ring of
 * power-of-two capacity indexed by two free-running 64-bit counters. `head` counts records the
 * worker committed, `tail` records the reader took; head - tail is the fill level and never
 * exceeds the capacity. The producer fills the slot in place (claim, write the fields, commit
 * with a release store of head), so a record costs one copy of its fields into the slot and no
 * system call. The reader loads head with acquire, copies the slots [tail, head) out and then
 * releases them with a release store of tail. The producer keeps a private copy of tail and
 * reads the reader's line only when its copy says the ring is full, so the two threads do not
 * bounce a cache line per record. A full ring refuses the new record (the caller counts it in
 * connlog_dropped): older records are never overwritten, because the reader may be copying them.
 *
 * There is exactly one reader at a time because dp.c serialises every consumer behind
 * dp->log_lock. A resize (dp_set_connection_log with another capacity) runs as a worker command
 * while the setter holds that lock: the worker, still the only producer, moves what is queued in
 * its old ring into the new one (connlog_ring_move), so a resize loses nothing that fits.
 *
 * Pure memory operations: nothing here does I/O.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "connlog_ring.h"

int connlog_ring_create(uint32_t capacity, struct connlog_ring **out)
{
    struct connlog_ring *r;
    size_t size = sizeof(*r) + (size_t)capacity * sizeof(struct dp_conn_record);

    *out = NULL;
    if (capacity == 0 || (capacity & (capacity - 1)) != 0)
        return -EINVAL;
    size = (size + CONNLOG_LINE - 1) / CONNLOG_LINE * CONNLOG_LINE;
    r = aligned_alloc(CONNLOG_LINE, size);
    if (!r)
        return -ENOMEM;
    memset(r, 0, sizeof(*r));
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    r->tail_seen = 0;
    r->mask = capacity - 1;
    r->capacity = capacity;
    *out = r;
    return 0;
}

void connlog_ring_destroy(struct connlog_ring *r)
{
    free(r);
}

size_t connlog_ring_pending(struct connlog_ring *r)
{
    uint64_t h = atomic_load_explicit(&r->head, memory_order_acquire);
    uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);

    return (size_t)(h - t);
}

size_t connlog_ring_take(struct connlog_ring *r, struct dp_conn_record *out, size_t max)
{
    uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t h = atomic_load_explicit(&r->head, memory_order_acquire);
    size_t n = (size_t)(h - t), i;

    if (n > max)
        n = max;
    for (i = 0; i < n; i++)
        out[i] = r->rec[(t + i) & r->mask];
    atomic_store_explicit(&r->tail, t + n, memory_order_release);
    return n;
}

uint64_t connlog_ring_move(struct connlog_ring *from, struct connlog_ring *to)
{
    uint64_t t = atomic_load_explicit(&from->tail, memory_order_acquire);
    uint64_t h = atomic_load_explicit(&from->head, memory_order_relaxed);
    uint64_t dropped = 0;
    struct dp_conn_record *slot;

    for (; t != h; t++) {
        slot = connlog_ring_claim(to);
        if (!slot) {
            dropped++;
            continue;
        }
        *slot = from->rec[t & from->mask];
        connlog_ring_commit(to);
    }
    atomic_store_explicit(&from->tail, t, memory_order_release);
    return dropped;
}
