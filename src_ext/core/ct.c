/* ct.c: the per-worker connection table (slab of entries, 5-tuple hash index, timer wheel).
 *
 * Design. Every TCP session and UDP flow of a worker lives in that worker's ct_table, so the
 * table is single-threaded and lock-free by construction; a snapshot for the control plane is
 * taken by the owning worker on request (dp.c's command queue), never by reading it from outside.
 *
 * Slab. Objects are allocated in chunks of CT_SLAB_CHUNK fixed-size objects and recycled through
 * an intrusive free list, so a steady connection rate causes no malloc traffic and objects never
 * move (epoll keeps raw pointers to them). Chunks are kept until the table is destroyed: the
 * memory high-water mark is the peak session count times the object size, which is what an
 * operator sizes for anyway.
 *
 * Index. Open addressing with linear probing over an array of entry pointers, capacity a power of
 * two, load factor at most 1/2 (doubling rehash on insert). The full 64-bit hash is cached in the
 * entry so probing compares hashes before keys. Deletion uses backward-shift (no tombstones), so
 * probe sequences never degrade over a long uptime of inserts and removes. Duplicate keys are
 * tolerated (a wildcard listener may see the same client address/port on two local addresses);
 * lookup then returns one of them. The index is what later backs `l4lb conns <client>` and the
 * UDP flow lookup; the TCP relay itself reaches its sessions through epoll's data pointer.
 *
 * Timer wheel. A single-level hashed wheel: CT_WHEEL_SLOTS slots of CT_TICK_MS each (10.24 s
 * per revolution). A timer links into slot (expire_tick mod SLOTS); a timer further out than one
 * revolution simply stays in its slot and is skipped until its round comes, so long idle
 * timeouts (minutes) cost one look per revolution. Arm, cancel and fire are O(1). Idle timeouts
 * are lazy in the relay (it stores a last-activity time on every transfer and re-arms only when
 * the timer fires early), so the data path never touches the wheel. A timer never fires early:
 * at_ms is rounded up to the next tick and a slot is processed only once its tick has passed.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ct.h"

#define CT_INDEX_MIN 64u /* initial index capacity */

/* Make a sentinel an empty circular list. */
static void ct_list_init(struct ct_timer *head)
{
    head->next = head;
    head->prev = head;
}

/* Insert n before head (at the tail of head's list). */
static void ct_list_add_tail(struct ct_timer *head, struct ct_timer *n)
{
    n->prev = head->prev;
    n->next = head;
    head->prev->next = n;
    head->prev = n;
}

/* Unlink n from whatever list it is on. */
static void ct_list_del(struct ct_timer *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->next = n;
    n->prev = n;
}

int ct_init(struct ct_table *ct, size_t obj_size, uint64_t now_ms)
{
    uint32_t i;

    if (obj_size < sizeof(struct ct_entry))
        return -EINVAL;
    memset(ct, 0, sizeof(*ct));
    ct->obj_size = (obj_size + 15u) & ~(size_t)15u;
    ct->index = calloc(CT_INDEX_MIN, sizeof(*ct->index));
    if (!ct->index)
        return -ENOMEM;
    ct->index_cap = CT_INDEX_MIN;
    for (i = 0; i < CT_WHEEL_SLOTS; i++)
        ct_list_init(&ct->wheel[i]);
    ct->now_tick = now_ms / CT_TICK_MS;
    return 0;
}

void ct_destroy(struct ct_table *ct)
{
    struct ct_chunk *c = ct->chunks, *next;

    while (c) {
        next = c->next;
        free(c->mem);
        free(c);
        c = next;
    }
    free(ct->index);
    memset(ct, 0, sizeof(*ct));
}

/* Add one chunk of objects to the free list. */
static int ct_grow_slab(struct ct_table *ct)
{
    struct ct_chunk *c = malloc(sizeof(*c));
    uint32_t i;

    if (!c)
        return -ENOMEM;
    c->mem = calloc(CT_SLAB_CHUNK, ct->obj_size);
    if (!c->mem) {
        free(c);
        return -ENOMEM;
    }
    for (i = CT_SLAB_CHUNK; i-- > 0;) {
        struct ct_entry *e = (struct ct_entry *)(c->mem + (size_t)i * ct->obj_size);
        e->free_next = ct->free_list;
        ct->free_list = e;
    }
    c->next = ct->chunks;
    ct->chunks = c;
    ct->n_chunks++;
    return 0;
}

int ct_alloc(struct ct_table *ct, struct ct_entry **out)
{
    struct ct_entry *e;
    int rc;

    if (!ct->free_list) {
        rc = ct_grow_slab(ct);
        if (rc)
            return rc;
    }
    e = ct->free_list;
    ct->free_list = e->free_next;
    memset(e, 0, ct->obj_size);
    ct_list_init(&e->timer);
    e->in_use = 1;
    ct->n_live++;
    *out = e;
    return 0;
}

void ct_free(struct ct_table *ct, struct ct_entry *e)
{
    if (!e->in_use)
        return;
    ct_timer_cancel(ct, e);
    ct_remove(ct, e);
    e->in_use = 0;
    e->free_next = ct->free_list;
    ct->free_list = e;
    ct->n_live--;
}

/* Mix one 64-bit word into h (multiply-xorshift). */
static inline uint64_t ct_mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 32);
}

uint64_t ct_key_hash(const struct ct_key *k)
{
    uint64_t w[5];
    uint64_t h = 0x243f6a8885a308d3ull;
    uint32_t i;

    memcpy(w, k, sizeof(w) < sizeof(*k) ? sizeof(w) : sizeof(*k));
    for (i = 0; i < 5; i++)
        h = ct_mix(h, w[i]);
    return h;
}

/* Place e into idx (capacity cap) at its first free probe slot. */
static void ct_place(struct ct_entry **idx, uint32_t cap, struct ct_entry *e)
{
    uint32_t mask = cap - 1, i = (uint32_t)e->hash & mask;

    while (idx[i])
        i = (i + 1) & mask;
    idx[i] = e;
}

/* Double the index capacity and rehash every entry. */
static int ct_index_grow(struct ct_table *ct)
{
    uint32_t cap = ct->index_cap * 2, i;
    struct ct_entry **idx = calloc(cap, sizeof(*idx));

    if (!idx)
        return -ENOMEM;
    for (i = 0; i < ct->index_cap; i++)
        if (ct->index[i])
            ct_place(idx, cap, ct->index[i]);
    free(ct->index);
    ct->index = idx;
    ct->index_cap = cap;
    return 0;
}

int ct_insert(struct ct_table *ct, struct ct_entry *e)
{
    int rc;

    if (e->indexed)
        return -EEXIST;
    if ((ct->n_indexed + 1) * 2 > ct->index_cap) {
        rc = ct_index_grow(ct);
        if (rc)
            return rc;
    }
    e->hash = ct_key_hash(&e->key);
    ct_place(ct->index, ct->index_cap, e);
    e->indexed = 1;
    ct->n_indexed++;
    return 0;
}

void ct_remove(struct ct_table *ct, struct ct_entry *e)
{
    uint32_t mask = ct->index_cap - 1, i, j, home;

    if (!e->indexed)
        return;
    i = (uint32_t)e->hash & mask;
    while (ct->index[i] != e)
        i = (i + 1) & mask;
    /* backward-shift deletion: pull later members of the cluster into the hole when their home
     * slot does not lie cyclically in (hole, j] */
    j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!ct->index[j])
            break;
        home = (uint32_t)ct->index[j]->hash & mask;
        if (((j - home) & mask) >= ((j - i) & mask)) {
            ct->index[i] = ct->index[j];
            i = j;
        }
    }
    ct->index[i] = NULL;
    e->indexed = 0;
    ct->n_indexed--;
}

struct ct_entry *ct_lookup(const struct ct_table *ct, const struct ct_key *k)
{
    uint64_t h = ct_key_hash(k);
    uint32_t mask = ct->index_cap - 1, i = (uint32_t)h & mask;
    struct ct_entry *e;

    while ((e = ct->index[i]) != NULL) {
        if (e->hash == h && memcmp(&e->key, k, sizeof(*k)) == 0)
            return e;
        i = (i + 1) & mask;
    }
    return NULL;
}

void ct_timer_arm(struct ct_table *ct, struct ct_entry *e, uint64_t at_ms)
{
    uint64_t tick = (at_ms + CT_TICK_MS - 1) / CT_TICK_MS;

    if (tick <= ct->now_tick)
        tick = ct->now_tick + 1;
    if (ct->next_hint && tick < ct->next_hint)
        ct->next_hint = tick;
    if (e->timer.armed)
        ct_list_del(&e->timer);
    else
        ct->n_timers++;
    e->timer.expire_tick = tick;
    e->timer.armed = 1;
    ct_list_add_tail(&ct->wheel[tick & (CT_WHEEL_SLOTS - 1)], &e->timer);
}

void ct_timer_cancel(struct ct_table *ct, struct ct_entry *e)
{
    if (!e->timer.armed)
        return;
    ct_list_del(&e->timer);
    e->timer.armed = 0;
    ct->n_timers--;
}

/* The entry that embeds timer t. */
static struct ct_entry *ct_timer_entry(struct ct_timer *t)
{
    return (struct ct_entry *)((char *)t - offsetof(struct ct_entry, timer));
}

/* Fire the due timers of one slot, with ct->now_tick already set to tick. */
static uint32_t ct_wheel_slot(struct ct_table *ct, uint64_t tick, ct_expire_fn fn, void *arg)
{
    struct ct_timer *head = &ct->wheel[tick & (CT_WHEEL_SLOTS - 1)];
    struct ct_timer keep, *n;
    uint32_t fired = 0;

    ct_list_init(&keep);
    while (head->next != head) {
        n = head->next;
        ct_list_del(n);
        if (n->expire_tick <= tick) {
            n->armed = 0;
            ct->n_timers--;
            fired++;
            fn(ct_timer_entry(n), arg);
        } else {
            ct_list_add_tail(&keep, n);
        }
    }
    while (keep.next != &keep) {
        n = keep.next;
        ct_list_del(n);
        ct_list_add_tail(head, n);
    }
    return fired;
}

uint32_t ct_wheel_advance(struct ct_table *ct, uint64_t now_ms, ct_expire_fn fn, void *arg)
{
    uint64_t target = now_ms / CT_TICK_MS, tick;
    uint32_t fired = 0, i;

    if (target <= ct->now_tick)
        return 0;
    if (ct->next_hint && ct->next_hint <= target)
        ct->next_hint = 0; /* passing it: the next ct_wheel_next_ms() scans again */
    if (ct->n_timers == 0) {
        ct->now_tick = target;
        return 0;
    }
    if (target - ct->now_tick >= CT_WHEEL_SLOTS) {
        /* fell behind by a whole revolution (a stalled thread): one pass over every slot,
         * firing everything due by target */
        ct->now_tick = target;
        for (i = 0; i < CT_WHEEL_SLOTS; i++)
            fired += ct_wheel_slot(ct, target - CT_WHEEL_SLOTS + 1 + i, fn, arg);
        return fired;
    }
    for (tick = ct->now_tick + 1; tick <= target; tick++) {
        ct->now_tick = tick;
        fired += ct_wheel_slot(ct, tick, fn, arg);
        if (ct->n_timers == 0) {
            ct->now_tick = target;
            break;
        }
    }
    return fired;
}

int64_t ct_wheel_next_ms(struct ct_table *ct, uint64_t now_ms)
{
    uint32_t d;
    uint64_t tick, due;

    if (ct->n_timers == 0)
        return -1;
    if (ct->next_hint > ct->now_tick) {
        tick = ct->next_hint; /* cached: an event loop asks this every iteration */
    } else {
        for (d = 1; d <= CT_WHEEL_SLOTS; d++) {
            tick = ct->now_tick + d;
            if (ct->wheel[tick & (CT_WHEEL_SLOTS - 1)].next !=
                &ct->wheel[tick & (CT_WHEEL_SLOTS - 1)])
                break;
        }
        ct->next_hint = tick;
    }
    due = tick * CT_TICK_MS;
    return due > now_ms ? (int64_t)(due - now_ms) : 0;
}

void ct_foreach(struct ct_table *ct, void (*fn)(struct ct_entry *e, void *arg), void *arg)
{
    struct ct_chunk *c;
    uint32_t i;

    for (c = ct->chunks; c; c = c->next)
        for (i = 0; i < CT_SLAB_CHUNK; i++) {
            struct ct_entry *e = (struct ct_entry *)(c->mem + (size_t)i * ct->obj_size);
            if (e->in_use)
                fn(e, arg);
        }
}

/* ---- self-check ------------------------------------------------------------------------- */

/* State of the self-check's expiry callback. */
struct ct_selftest_ctx {
    uint64_t now_ms;           /* time passed to ct_wheel_advance */
    uint64_t *due;             /* due time per object index (0 = not armed) */
    struct ct_entry **objs;    /* objects by index */
    uint32_t n;                /* number of objects */
    int bad;                   /* set when a timer fired early or unknown */
};

/* Expiry callback of the self-check: the timer must be due and known. */
static void ct_selftest_fire(struct ct_entry *e, void *arg)
{
    struct ct_selftest_ctx *cx = arg;
    uint32_t i;

    for (i = 0; i < cx->n; i++)
        if (cx->objs[i] == e)
            break;
    if (i == cx->n || cx->due[i] == 0 || cx->due[i] > cx->now_ms)
        cx->bad = 1;
    else
        cx->due[i] = 0;
}

/* xorshift64 step for the self-check. */
static uint64_t ct_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

int ct_selftest(uint32_t seed, uint32_t rounds)
{
    enum { N = 700 };
    struct ct_table ct;
    struct ct_entry *objs[N] = {0};
    uint64_t due[N] = {0};
    struct ct_selftest_ctx cx = { .due = due, .objs = objs, .n = N };
    uint64_t s = (uint64_t)seed * 2654435761u + 1, now = 1000000;
    uint32_t r, i, live = 0;
    int rc = 0;

    if (ct_init(&ct, sizeof(struct ct_entry) + 40, now))
        return -ENOMEM;
    for (r = 0; r < rounds && !rc; r++) {
        i = (uint32_t)(ct_rand(&s) % N);
        switch (ct_rand(&s) % 5) {
        case 0: /* allocate + index */
        case 1:
            if (objs[i])
                break;
            if (ct_alloc(&ct, &objs[i])) {
                rc = -ENOMEM;
                break;
            }
            objs[i]->key.proto = 0;
            objs[i]->key.family = 4;
            objs[i]->key.cport = (uint16_t)i;
            objs[i]->key.caddr[0] = (uint8_t)(i >> 8);
            if (ct_insert(&ct, objs[i]))
                rc = -ENOMEM;
            live++;
            break;
        case 2: /* free */
            if (!objs[i])
                break;
            ct_free(&ct, objs[i]);
            objs[i] = NULL;
            due[i] = 0;
            live--;
            break;
        case 3: /* arm a timer up to 30 s out */
            if (!objs[i])
                break;
            due[i] = now + ct_rand(&s) % 30000;
            ct_timer_arm(&ct, objs[i], due[i]);
            due[i] = (due[i] + CT_TICK_MS - 1) / CT_TICK_MS * CT_TICK_MS;
            if (due[i] <= now)
                due[i] = (now / CT_TICK_MS + 1) * CT_TICK_MS;
            break;
        default: /* advance time */
            now += ct_rand(&s) % 700;
            cx.now_ms = now;
            ct_wheel_advance(&ct, now, ct_selftest_fire, &cx);
            break;
        }
        /* invariants: every live object is found by its key, every due timer not yet fired
         * is still armed */
        if ((r & 63) == 0 && !rc) {
            uint32_t armed = 0;
            for (i = 0; i < N; i++) {
                if (!objs[i])
                    continue;
                struct ct_key k = objs[i]->key;
                if (ct_lookup(&ct, &k) != objs[i])
                    rc = -EPROTO;
                if (due[i]) {
                    armed++;
                    if (!objs[i]->timer.armed)
                        rc = -EPROTO;
                }
            }
            if (armed != ct.n_timers || live != ct.n_live || live != ct.n_indexed)
                rc = -EPROTO;
            /* the loop's sleep must never pass the earliest due timer */
            uint64_t earliest = UINT64_MAX;
            for (i = 0; i < N; i++)
                if (due[i] && due[i] < earliest)
                    earliest = due[i];
            int64_t sleep_ms = ct_wheel_next_ms(&ct, now);
            if (earliest != UINT64_MAX &&
                (sleep_ms < 0 || now + (uint64_t)sleep_ms > (earliest > now ? earliest : now)))
                rc = -EPROTO;
            if (earliest == UINT64_MAX && sleep_ms != -1)
                rc = -EPROTO;
        }
        if (cx.bad)
            rc = -EPROTO;
    }
    /* drain: everything must fire within 31 s */
    if (!rc) {
        now += 31000;
        cx.now_ms = now;
        ct_wheel_advance(&ct, now, ct_selftest_fire, &cx);
        for (i = 0; i < N; i++)
            if (due[i])
                rc = -EPROTO;
        if (ct.n_timers || cx.bad)
            rc = -EPROTO;
    }
    ct_destroy(&ct);
    return rc;
}
