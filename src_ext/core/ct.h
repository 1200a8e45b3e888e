/* ct.h: the per-worker connection table (slab of entries, 5-tuple hash index, timer wheel).
 *
 * One ct_table belongs to one worker thread and is never touched by another thread, so nothing
 * here locks. Callers embed `struct ct_entry` as the FIRST member of their own session/flow
 * struct and tell ct_init() the full object size; the slab hands out zeroed objects of that size.
 * See ct.c for the design essay.
 */
#ifndef L4LB_CT_H
#define L4LB_CT_H

#include <stddef.h>
#include <stdint.h>

#define CT_WHEEL_SLOTS 1024u   /* slots in the timer wheel (power of two) */
#define CT_TICK_MS 10u         /* one wheel tick in milliseconds */
#define CT_SLAB_CHUNK 256u     /* entries per slab chunk */

/* The flow identity: protocol, client (remote) and local address/port. */
struct ct_key {
    uint8_t proto;             /* 0 tcp, 1 udp (enum dp_proto) */
    uint8_t family;            /* 4 or 6 */
    uint16_t cport;            /* client port, host byte order */
    uint16_t lport;            /* local (listener) port, host byte order */
    uint16_t pad;              /* always 0, keeps the key free of padding garbage */
    uint8_t caddr[16];         /* client address, network order, IPv4 in the first 4 bytes */
    uint8_t laddr[16];         /* local address, network order (may be the wildcard) */
};

/* An intrusive timer: a node in one wheel slot's circular list. */
struct ct_timer {
    struct ct_timer *next;     /* next node in the slot list (self when unlinked sentinel) */
    struct ct_timer *prev;     /* previous node in the slot list */
    uint64_t expire_tick;      /* absolute tick at which it fires */
    uint8_t armed;             /* 1 while linked in the wheel */
};

/* The header every table object starts with. */
struct ct_entry {
    struct ct_key key;         /* 5-tuple, set by the caller before ct_insert() */
    uint64_t hash;             /* hash of key, set by ct_insert() */
    struct ct_timer timer;     /* the entry's one timer (expiry, connect or idle deadline) */
    struct ct_entry *free_next;/* next free object while on the slab free list */
    uint8_t in_use;            /* 1 between ct_alloc() and ct_free() */
    uint8_t indexed;           /* 1 while present in the hash index */
};

/* One slab chunk: CT_SLAB_CHUNK objects of obj_size bytes. */
struct ct_chunk {
    struct ct_chunk *next;     /* next chunk in the table's chunk list */
    unsigned char *mem;        /* CT_SLAB_CHUNK * obj_size bytes */
};

/* Callback for expired timers; may call ct_timer_arm() again or free the entry. */
typedef void (*ct_expire_fn)(struct ct_entry *e, void *arg);

struct ct_table {
    size_t obj_size;           /* size of one caller object (>= sizeof(struct ct_entry)) */
    struct ct_chunk *chunks;   /* every chunk ever allocated */
    uint32_t n_chunks;         /* number of chunks */
    struct ct_entry *free_list;/* free objects */
    uint32_t n_live;           /* objects allocated and not freed */
    struct ct_entry **index;   /* open-addressing array of entry pointers (NULL = empty) */
    uint32_t index_cap;        /* slots in index, power of two */
    uint32_t n_indexed;        /* entries present in index */
    struct ct_timer wheel[CT_WHEEL_SLOTS]; /* sentinel heads of the slot lists */
    uint64_t now_tick;         /* last tick processed by ct_wheel_advance() */
    uint32_t n_timers;         /* armed timers */
    uint64_t next_hint;        /* a tick <= the first non-empty slot's tick, 0 = unknown */
};

/* Initialise an empty table for objects of obj_size bytes; now_ms is the current time. */
int ct_init(struct ct_table *ct, size_t obj_size, uint64_t now_ms);
/* Free every chunk and the index (the caller has closed whatever the objects owned). */
void ct_destroy(struct ct_table *ct);

/* Take a zeroed object from the slab; *out points at its ct_entry header. -ENOMEM. */
int ct_alloc(struct ct_table *ct, struct ct_entry **out);
/* Give an object back: cancels its timer and removes it from the index first. */
void ct_free(struct ct_table *ct, struct ct_entry *e);

/* Hash of a key (stable within a process; not part of any wire contract). */
uint64_t ct_key_hash(const struct ct_key *k);
/* Add e (with e->key set) to the index. Duplicate keys are allowed; lookup finds one of them. */
int ct_insert(struct ct_table *ct, struct ct_entry *e);
/* Remove e from the index (no-op when it is not indexed). */
void ct_remove(struct ct_table *ct, struct ct_entry *e);
/* Find an entry with this key, NULL if none. */
struct ct_entry *ct_lookup(const struct ct_table *ct, const struct ct_key *k);

/* Arm (or re-arm) e's timer to fire at absolute time at_ms (rounded up to a tick). */
void ct_timer_arm(struct ct_table *ct, struct ct_entry *e, uint64_t at_ms);
/* Disarm e's timer (no-op when not armed). */
void ct_timer_cancel(struct ct_table *ct, struct ct_entry *e);
/* Fire every timer due at or before now_ms, in tick order; returns how many fired. */
uint32_t ct_wheel_advance(struct ct_table *ct, uint64_t now_ms, ct_expire_fn fn, void *arg);
/* Milliseconds from now_ms until the wheel needs attention (never later than the next armed
 * timer's due time, 0 if overdue), -1 if no timer is armed. Caches its scan (next_hint). */
int64_t ct_wheel_next_ms(struct ct_table *ct, uint64_t now_ms);

/* Call fn for every live object (order unspecified). fn must not allocate or free. */
void ct_foreach(struct ct_table *ct, void (*fn)(struct ct_entry *e, void *arg), void *arg);

/* Run the built-in randomized self-check (slab, index, wheel); 0 or -EPROTO. */
int ct_selftest(uint32_t seed, uint32_t rounds);

#endif
