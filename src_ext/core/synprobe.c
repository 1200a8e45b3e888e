/* synprobe.c: a fleet of half-open (SYN) health-probe targets run by one call.
 *
 * Design. Probing 10,000 backends a second with one Python call per probe costs 15-18 us of
 * interpreter time per probe (l4lb/health/synprobe.py). Here the whole cycle runs in C and
 * Python sees only batches of results: one sp_fleet_run() call drains the replies, expires the
 * timeouts, sends every SYN that is due and reports what finished. Python keeps what is
 * comfortable there (opening the raw sockets, reserving ports, the BPF filter, learning source
 * addresses, the dampeners) and hands the fleet the fds and the per-target constants.
 *
 * One event per target. A target is always in exactly one state: waiting for its next probe
 * (event time = due) or waiting for the answer (event time = deadline). A single indexed binary
 * min-heap ordered by (event time, id) therefore carries both the schedule and the timeouts;
 * the tie-break on id makes the order deterministic, which the Python twin copies. Entries hold
 * the event time and the positions live in an array of their own, so a sift stays in two dense
 * arrays instead of touching a target per level (at 10,000 targets that was most of the C
 * code's cache misses). The heap top
 * is the next time Python must call in (one asyncio timer), besides the lanes' readability.
 *
 * Matching. A reply belongs to the probe whose (address, port, our port, seq) equals (source,
 * source port, destination port, ack - 1) of the segment. Targets in flight are chained in a
 * hash table keyed by seq (random, so the low bits are a good hash); the chain walk compares the
 * whole key. Anything else is counted as stray and ignored.
 *
 * Scheduling. After a verdict the next probe is due interval * f after the previous SEND, f
 * uniform in [1 - jitter, 1 + jitter], never before the verdict itself (one probe in flight per
 * target) - the rule of checker.py. The draw is kept, so a changed interval (the backend went
 * DOWN: down_interval; or is in transition: fast_interval) reschedules a waiting target with the
 * same factor. Draws and sequence
 * numbers come from two splitmix64 streams seeded by the caller, so a seed fixes the schedule.
 *
 * I/O. SYNs of one lane go out with sendmmsg (one call per up to SP_BATCH due probes); replies
 * come in with recvmmsg until EAGAIN (bounded per call). The caller may drain only every few
 * milliseconds (fewer wake-ups); if it set SO_TIMESTAMPNS on a lane, a reply's latency ends at
 * the kernel's receive time (wall clock, mapped to CLOCK_MONOTONIC, the clock of now_ns) rather
 * than at the drain. A SYN is a 20-byte TCP header whose
 * checksum is the target's precomputed partial sum plus the port and seq of this probe. A failed
 * send is a result at once: local errors (no buffer space, EPERM from a firewall) are
 * inconclusive, unreachable networks and the rest are conclusive.
 *
 * Quiet passes. At steady state nearly every verdict is a pass of a backend that is UP with no
 * failure counted, which changes nothing in the caller's state machine; handing each one to
 * Python cost about 2.5 us (decoding, a dict lookup, a dampener touched between wake-ups, that
 * is a cache miss). So the caller marks such a target quiet (sp_target_set_quiet) and the fleet
 * keeps its passes: it counts them and remembers the last one's verdict time and latency,
 * which is all the caller needs to bring its own view up to date. The caller collects them
 * lazily - when someone reads that view, and before it accounts any reported verdict of the
 * target (a failure is always reported) - one target at a time (sp_target_collect) or all at
 * once (sp_fleet_collect_all). A fleet-wide counter of quiet passes keeps the caller's probe
 * count exact without collecting. Quiet changes nothing else: the schedule, the jitter draws
 * and the sequence numbers are the same with or without it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#include "synprobe.h"

#define SP_BATCH 64            /* messages per sendmmsg / recvmmsg call */
#define SP_RECV_SIZE 256       /* bytes kept of each received segment */
#define SP_MAX_RECV_ROUNDS 16  /* recvmmsg calls per lane per run (bounds one call's time) */
#define SP_TCP_SYN 0x02
#define SP_TCP_RST 0x04
#define SP_TCP_ACK 0x10
#define SP_SYN_WINDOW 64240    /* advertised window of a probe SYN (as synprobe.py) */
#define SP_NO_POS UINT32_MAX   /* heap position of a target not in the heap */
#define SP_NIL UINT32_MAX      /* end of a hash chain */

struct sp_target {
    uint8_t used;              /* the id is in use */
    uint8_t in_flight;         /* a probe waits for its answer */
    uint8_t family;            /* AF_INET or AF_INET6 */
    uint8_t lane;              /* lane id */
    uint16_t dport;            /* probed port (host order) */
    uint16_t sport;            /* our port of the probe in flight (host order) */
    uint8_t dst[16];           /* packed backend address */
    uint32_t scope_id;         /* IPv6 scope of the backend address */
    uint32_t partial;          /* folded one's-complement sum of pseudo-header + fixed fields */
    uint32_t seq;              /* seq of the probe in flight */
    uint32_t draw;             /* jitter draw of the current schedule */
    uint32_t timeout_ms;       /* probe timeout */
    uint32_t interval_ms;      /* nominal interval between two sends */
    uint32_t jitter_ppm;       /* jitter, parts per million of the interval */
    uint32_t hnext;            /* next id in the seq hash chain, SP_NIL at the end */
    int64_t due_ns;            /* next send time (while waiting) */
    int64_t start_ns;          /* last send time (0: never sent) */
    int64_t deadline_ns;       /* timeout of the probe in flight */
    int64_t verdict_ns;        /* time of the last verdict (the next send is never earlier) */
    uint8_t quiet;             /* passes are counted here instead of reported */
    uint32_t quiet_lat_us;     /* latency of the last quiet pass not yet collected */
    uint64_t quiet_count;      /* quiet passes not yet collected */
    int64_t quiet_ns;          /* verdict time of the last quiet pass not yet collected */
};

/* A probe waiting in a lane's send batch. */
struct sp_pending {
    uint32_t id;               /* the target */
    uint8_t pkt[20];           /* the SYN */
};

struct sp_lane {
    int fd;                    /* raw IPPROTO_TCP socket, -1: lane id unused */
    int family;                /* AF_INET or AF_INET6 */
    uint16_t ports[SP_MAX_PORTS]; /* reserved source ports */
    uint32_t nports;           /* entries of ports */
    uint32_t next;             /* index into ports of the next probe's port */
    uint32_t npend;            /* probes in pend */
    struct sp_pending pend[SP_BATCH]; /* SYNs collected for the next sendmmsg */
};

/* One heap entry. The event time is kept here, not read from the target, so that a sift
 * touches only the heap and pos arrays (about 200 KB for 10,000 targets) instead of a target
 * struct per level (a cache miss each). */
struct sp_heap_ent {
    int64_t ev;                /* the target's event time: due time, or deadline in flight */
    uint32_t id;               /* the target */
};

struct sp_fleet {
    struct sp_target *t;       /* targets by id */
    uint32_t cap;              /* entries of t */
    uint32_t count;            /* ids in use */
    struct sp_heap_ent *heap;  /* a min-heap on (event time, id) */
    uint32_t heap_len;         /* entries in heap */
    uint32_t *pos;             /* by id: index of its heap entry, SP_NO_POS if absent */
    uint32_t *buckets;         /* seq hash: first id of each chain, SP_NIL if none */
    uint32_t nbuckets;         /* entries of buckets (a power of two) */
    uint32_t in_flight;        /* targets with a probe in flight */
    uint64_t stray;            /* segments that matched no probe */
    uint64_t quiet_passes;     /* quiet passes ever counted */
    uint32_t quiet_pending;    /* targets whose quiet_count is not 0 */
    uint64_t jit_state;        /* splitmix64 state of the jitter draws */
    uint64_t seq_state;        /* splitmix64 state of the sequence numbers */
    struct sp_lane lanes[SP_MAX_LANES]; /* by lane id */
    uint8_t rbuf[SP_BATCH][SP_RECV_SIZE]; /* recvmmsg buffers */
};

uint64_t sp_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int64_t sp_scaled_interval(int64_t interval_ns, uint32_t jitter_ppm, uint32_t r)
{
    uint64_t iv = (uint64_t)interval_ns;
    uint64_t span = (uint64_t)((unsigned __int128)iv * jitter_ppm / 1000000u);
    return (int64_t)(iv - span + (uint64_t)(((unsigned __int128)(2 * span) * r) >> 32));
}

static uint32_t fold(uint32_t s)
{
    s = (s & 0xFFFF) + (s >> 16);
    return (s & 0xFFFF) + (s >> 16);
}

static uint32_t sum16(const uint8_t *p, uint32_t n)
{
    uint32_t s = 0;
    for (uint32_t i = 0; i + 1 < n; i += 2)
        s += (uint32_t)p[i] << 8 | p[i + 1];
    return fold(s);
}

/* -- the heap ---------------------------------------------------------------------------- */

static int64_t ev(const struct sp_fleet *f, uint32_t id)
{
    const struct sp_target *t = &f->t[id];
    return t->in_flight ? t->deadline_ns : t->due_ns;
}

static int before(const struct sp_heap_ent *a, const struct sp_heap_ent *b)
{
    return a->ev < b->ev || (a->ev == b->ev && a->id < b->id);
}

static void heap_set(struct sp_fleet *f, uint32_t i, struct sp_heap_ent e)
{
    f->heap[i] = e;
    f->pos[e.id] = i;
}

static void sift_up(struct sp_fleet *f, uint32_t i)
{
    struct sp_heap_ent e = f->heap[i];
    while (i) {
        uint32_t p = (i - 1) / 2;
        if (!before(&e, &f->heap[p]))
            break;
        heap_set(f, i, f->heap[p]);
        i = p;
    }
    heap_set(f, i, e);
}

static void sift_down(struct sp_fleet *f, uint32_t i)
{
    struct sp_heap_ent e = f->heap[i];
    uint32_t n = f->heap_len;
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && before(&f->heap[c + 1], &f->heap[c]))
            c++;
        if (!before(&f->heap[c], &e))
            break;
        heap_set(f, i, f->heap[c]);
        i = c;
    }
    heap_set(f, i, e);
}

/* The target's event time changed (or it is new): store it in its entry, restore the order. */
static void heap_fix(struct sp_fleet *f, uint32_t id)
{
    uint32_t i = f->pos[id];
    if (i == SP_NO_POS)
        i = f->heap_len++;
    f->heap[i].ev = ev(f, id);
    f->heap[i].id = id;
    f->pos[id] = i;
    sift_up(f, i);
    sift_down(f, f->pos[id]);
}

static void heap_remove(struct sp_fleet *f, uint32_t id)
{
    uint32_t i = f->pos[id];
    if (i == SP_NO_POS)
        return;
    f->pos[id] = SP_NO_POS;
    struct sp_heap_ent last = f->heap[--f->heap_len];
    if (last.id == id)
        return;
    heap_set(f, i, last);
    sift_up(f, i);
    sift_down(f, f->pos[last.id]);
}

/* -- the seq hash -------------------------------------------------------------------------- */

static void hash_insert(struct sp_fleet *f, uint32_t id)
{
    uint32_t b = f->t[id].seq & (f->nbuckets - 1);
    f->t[id].hnext = f->buckets[b];
    f->buckets[b] = id;
}

static void hash_remove(struct sp_fleet *f, uint32_t id)
{
    uint32_t *link = &f->buckets[f->t[id].seq & (f->nbuckets - 1)];
    while (*link != SP_NIL) {
        if (*link == id) {
            *link = f->t[id].hnext;
            return;
        }
        link = &f->t[*link].hnext;
    }
}

/* Grow the target array (and with it heap and hash) so that id fits. */
static int grow(struct sp_fleet *f, uint32_t id)
{
    uint32_t cap = f->cap ? f->cap : 64, old = f->cap;
    while (cap <= id)
        cap *= 2;
    if (cap == old)
        return 0;
    struct sp_target *t = realloc(f->t, (size_t)cap * sizeof(*t));
    if (!t)
        return -ENOMEM;
    f->t = t;
    memset(t + old, 0, (size_t)(cap - old) * sizeof(*t));
    struct sp_heap_ent *heap = realloc(f->heap, (size_t)cap * sizeof(*heap));
    if (!heap)
        return -ENOMEM;
    f->heap = heap;
    uint32_t *pos = realloc(f->pos, (size_t)cap * sizeof(*pos));
    if (!pos)
        return -ENOMEM;
    f->pos = pos;
    uint32_t *buckets = malloc((size_t)cap * sizeof(*buckets));
    if (!buckets)
        return -ENOMEM;
    free(f->buckets);
    f->buckets = buckets;
    f->nbuckets = cap;
    f->cap = cap;
    for (uint32_t i = 0; i < cap; i++)
        buckets[i] = SP_NIL;
    for (uint32_t i = 0; i < old; i++)
        if (t[i].used && t[i].in_flight)
            hash_insert(f, i);
    return 0;
}

/* -- life cycle ---------------------------------------------------------------------------- */

static uint32_t partial_sum(const struct sp_target *t, const uint8_t *src);

int sp_fleet_create(uint64_t seed, struct sp_fleet **out)
{
    struct sp_fleet *f = calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    for (int i = 0; i < SP_MAX_LANES; i++)
        f->lanes[i].fd = -1;
    f->jit_state = seed;
    f->seq_state = seed ^ 0xD1B54A32D192ED03ull;
    int rc = grow(f, 0);
    if (rc) {
        sp_fleet_destroy(f);
        return rc;
    }
    *out = f;
    return 0;
}

void sp_fleet_destroy(struct sp_fleet *f)
{
    if (!f)
        return;
    free(f->t);
    free(f->heap);
    free(f->pos);
    free(f->buckets);
    free(f);
}

int sp_lane_add(struct sp_fleet *f, uint32_t lane, int family, int fd, const uint16_t *ports,
                uint32_t nports)
{
    if (lane >= SP_MAX_LANES || fd < 0 || nports < 1 || nports > SP_MAX_PORTS ||
        (family != AF_INET && family != AF_INET6))
        return -EINVAL;
    struct sp_lane *l = &f->lanes[lane];
    if (l->fd >= 0)
        return -EEXIST;
    memset(l, 0, sizeof(*l));
    l->fd = fd;
    l->family = family;
    memcpy(l->ports, ports, nports * sizeof(*ports));
    l->nports = nports;
    return 0;
}

int sp_target_add(struct sp_fleet *f, uint32_t id, uint32_t lane, const uint8_t *dst,
                  uint16_t dport, const uint8_t *src, uint32_t scope_id, uint32_t timeout_ms,
                  uint32_t interval_ms, uint32_t jitter_ppm, int64_t first_due_ns)
{
    if (id >= SP_MAX_TARGETS || lane >= SP_MAX_LANES || f->lanes[lane].fd < 0 ||
        jitter_ppm > 1000000 || dport == 0)
        return -EINVAL;
    int rc = grow(f, id);
    if (rc)
        return rc;
    struct sp_target *t = &f->t[id];
    if (t->used)
        return -EEXIST;
    int family = f->lanes[lane].family;
    uint32_t alen = family == AF_INET ? 4 : 16;
    memset(t, 0, sizeof(*t));
    t->used = 1;
    t->family = (uint8_t)family;
    t->lane = (uint8_t)lane;
    t->dport = dport;
    memcpy(t->dst, dst, alen);
    t->scope_id = scope_id;
    t->timeout_ms = timeout_ms;
    t->interval_ms = interval_ms;
    t->jitter_ppm = jitter_ppm;
    t->due_ns = first_due_ns;
    f->pos[id] = SP_NO_POS;
    t->hnext = SP_NIL;
    t->partial = partial_sum(t, src);
    f->count++;
    heap_fix(f, id);
    return 0;
}

int sp_target_set_source(struct sp_fleet *f, uint32_t id, const uint8_t *src, uint32_t src_len)
{
    if (id >= f->cap || !f->t[id].used)
        return -ENOENT;
    if (src_len != (f->t[id].family == AF_INET ? 4u : 16u))
        return -EINVAL;
    f->t[id].partial = partial_sum(&f->t[id], src);
    return 0;
}

/* The folded sum of the pseudo-header and the SYN's fixed fields (source port, seq and
 * checksum zero) for target t and source address src. */
static uint32_t partial_sum(const struct sp_target *t, const uint8_t *src)
{
    uint8_t ph[40 + 20];
    uint32_t alen = t->family == AF_INET ? 4 : 16, n;
    uint16_t dport = t->dport;
    const uint8_t *dst = t->dst;
    memcpy(ph, src, alen);
    memcpy(ph + alen, dst, alen);
    n = 2 * alen;
    if (t->family == AF_INET) {
        ph[n++] = 0;
        ph[n++] = IPPROTO_TCP;
        ph[n++] = 0;
        ph[n++] = 20;
    } else {
        memset(ph + n, 0, 8);
        ph[n + 3] = 20;
        ph[n + 7] = IPPROTO_TCP;
        n += 8;
    }
    memset(ph + n, 0, 20);
    ph[n + 2] = (uint8_t)(dport >> 8);
    ph[n + 3] = (uint8_t)dport;
    ph[n + 12] = 5 << 4;
    ph[n + 13] = SP_TCP_SYN;
    ph[n + 14] = (uint8_t)(SP_SYN_WINDOW >> 8);
    ph[n + 15] = (uint8_t)SP_SYN_WINDOW;
    return sum16(ph, n + 20);
}

int sp_target_remove(struct sp_fleet *f, uint32_t id)
{
    if (id >= f->cap || !f->t[id].used)
        return -ENOENT;
    struct sp_target *t = &f->t[id];
    if (t->in_flight) {
        hash_remove(f, id);
        f->in_flight--;
    }
    heap_remove(f, id);
    if (t->quiet_count)
        f->quiet_pending--;
    /* a probe still in a lane's send batch: mark it dead (run() skips unused ids) */
    t->used = 0;
    t->in_flight = 0;
    f->count--;
    return 0;
}

/* Schedule the next probe of a target that is not in flight (draw already taken). */
static void reschedule(struct sp_fleet *f, uint32_t id)
{
    struct sp_target *t = &f->t[id];
    int64_t due = t->start_ns + sp_scaled_interval((int64_t)t->interval_ms * 1000000, t->jitter_ppm,
                                                   t->draw);
    t->due_ns = due > t->verdict_ns ? due : t->verdict_ns;
}

int sp_target_set_timing(struct sp_fleet *f, uint32_t id, uint32_t interval_ms,
                         uint32_t timeout_ms, uint32_t jitter_ppm)
{
    if (id >= f->cap || !f->t[id].used)
        return -ENOENT;
    if (jitter_ppm > 1000000)
        return -EINVAL;
    struct sp_target *t = &f->t[id];
    t->interval_ms = interval_ms;
    t->timeout_ms = timeout_ms;
    t->jitter_ppm = jitter_ppm;
    if (!t->in_flight && t->start_ns) {
        reschedule(f, id);
        heap_fix(f, id);
    }
    return 0;
}

int sp_target_set_quiet(struct sp_fleet *f, uint32_t id, int quiet)
{
    if (id >= f->cap || !f->t[id].used)
        return -ENOENT;
    f->t[id].quiet = quiet != 0;
    return 0;
}

/* Hand out and reset a target's quiet passes (zeros if it has none). */
static void take_quiet(struct sp_fleet *f, struct sp_target *t, uint64_t *count, int64_t *last_ns,
                       uint32_t *latency_us)
{
    *count = t->quiet_count;
    *last_ns = t->quiet_ns;
    *latency_us = t->quiet_lat_us;
    if (t->quiet_count)
        f->quiet_pending--;
    t->quiet_count = 0;
    t->quiet_ns = 0;
    t->quiet_lat_us = 0;
}

int sp_target_collect(struct sp_fleet *f, uint32_t id, uint64_t *count, int64_t *last_ns,
                      uint32_t *latency_us)
{
    if (id >= f->cap || !f->t[id].used)
        return -ENOENT;
    take_quiet(f, &f->t[id], count, last_ns, latency_us);
    return 0;
}

uint32_t sp_fleet_collect_all(struct sp_fleet *f, struct sp_quiet *out, uint32_t max, int reset)
{
    uint32_t n = 0, left = f->quiet_pending;
    for (uint32_t id = 0; id < f->cap && n < max && left; id++) {
        struct sp_target *t = &f->t[id];
        if (!t->used || !t->quiet_count)
            continue;
        out[n].id = id;
        if (reset) {
            take_quiet(f, t, &out[n].count, &out[n].last_ns, &out[n].latency_us);
        } else {
            out[n].count = t->quiet_count;
            out[n].last_ns = t->quiet_ns;
            out[n].latency_us = t->quiet_lat_us;
        }
        left--;
        n++;
    }
    return n;
}

uint32_t sp_fleet_quiet_pending(const struct sp_fleet *f)
{
    return f->quiet_pending;
}

uint64_t sp_fleet_quiet_passes(const struct sp_fleet *f)
{
    return f->quiet_passes;
}

int sp_target_info(const struct sp_fleet *f, uint32_t id, struct sp_target_info *out)
{
    if (id >= f->cap || !f->t[id].used)
        return -ENOENT;
    const struct sp_target *t = &f->t[id];
    out->due_ns = t->due_ns;
    out->start_ns = t->start_ns;
    out->deadline_ns = t->deadline_ns;
    out->seq = t->seq;
    out->sport = t->sport;
    out->in_flight = t->in_flight;
    return 0;
}

uint32_t sp_fleet_in_flight(const struct sp_fleet *f)
{
    return f->in_flight;
}

uint64_t sp_fleet_stray(const struct sp_fleet *f)
{
    return f->stray;
}

int64_t sp_fleet_next_due(const struct sp_fleet *f)
{
    return f->heap_len ? f->heap[0].ev : SP_NO_EVENT;
}

/* -- run ----------------------------------------------------------------------------------- */

/* The probe of `id` ended at now with `verdict` (its answer arrived at `at`, or 0: now):
 * report it in *r (or count it, a pass of a quiet target), schedule the next one. Returns the
 * results written (0 or 1). */
static uint32_t finish(struct sp_fleet *f, uint32_t id, int64_t now, int64_t at,
                       uint32_t verdict, int err, struct sp_result *r)
{
    struct sp_target *t = &f->t[id];
    if (at < t->start_ns || at > now)
        at = now;  /* no timestamp, or the clocks disagree (a step of the wall clock) */
    int64_t lat = (at - t->start_ns) / 1000;
    if (t->in_flight) {
        hash_remove(f, id);
        f->in_flight--;
        t->in_flight = 0;
    }
    uint32_t lat_us = lat < 0 ? 0 : lat > UINT32_MAX ? UINT32_MAX : (uint32_t)lat;
    uint32_t written = 0;
    if (verdict == SP_UP && t->quiet) {
        if (!t->quiet_count++)
            f->quiet_pending++;
        t->quiet_ns = now;
        t->quiet_lat_us = lat_us;
        f->quiet_passes++;
    } else {
        r->id = id;
        r->verdict = verdict;
        r->err = err;
        r->latency_us = lat_us;
        written = 1;
    }
    t->verdict_ns = now;
    t->draw = (uint32_t)(sp_splitmix64(&f->jit_state) >> 32);
    reschedule(f, id);
    heap_fix(f, id);
    return written;
}

static int local_errno(int err)
{
    switch (err) {
    case ENOBUFS: case ENOMEM: case EAGAIN: case EMFILE: case ENFILE: case EADDRNOTAVAIL:
    case EPERM: case EACCES: case EAFNOSUPPORT: case EPROTONOSUPPORT:
        return 1;
    default:
        return 0;
    }
}

/* Send the lane's batch; failed sends become results. Returns results written. */
static uint32_t flush(struct sp_fleet *f, struct sp_lane *l, int64_t now, struct sp_result *res)
{
    struct mmsghdr msg[SP_BATCH];
    struct iovec iov[SP_BATCH];
    union {
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } addr[SP_BATCH];
    uint32_t n = l->npend, nres = 0, off = 0;
    memset(msg, 0, n * sizeof(*msg));
    memset(addr, 0, n * sizeof(*addr));
    for (uint32_t i = 0; i < n; i++) {
        struct sp_target *t = &f->t[l->pend[i].id];
        iov[i].iov_base = l->pend[i].pkt;
        iov[i].iov_len = 20;
        msg[i].msg_hdr.msg_iov = &iov[i];
        msg[i].msg_hdr.msg_iovlen = 1;
        msg[i].msg_hdr.msg_name = &addr[i];
        if (l->family == AF_INET) {
            addr[i].v4.sin_family = AF_INET;
            memcpy(&addr[i].v4.sin_addr, t->dst, 4);
            msg[i].msg_hdr.msg_namelen = sizeof(addr[i].v4);
        } else {
            addr[i].v6.sin6_family = AF_INET6;
            memcpy(&addr[i].v6.sin6_addr, t->dst, 16);
            addr[i].v6.sin6_scope_id = t->scope_id;
            msg[i].msg_hdr.msg_namelen = sizeof(addr[i].v6);
        }
    }
    while (off < n) {
        int rc = sendmmsg(l->fd, msg + off, n - off, 0);
        if (rc > 0) {
            off += (uint32_t)rc;
            continue;
        }
        int err = rc < 0 ? errno : EIO;
        if (err == EINTR)
            continue;
        uint32_t id = l->pend[off].id;
        if (f->t[id].used && f->t[id].in_flight)
            nres += finish(f, id, now, 0, local_errno(err) ? SP_LOCAL_ERROR : SP_SEND_ERROR,
                           err, &res[nres]);
        off++;
    }
    l->npend = 0;
    return nres;
}

/* Parse one segment; 0 and the match fields if it is a whole TCP header. */
static int parse(const uint8_t *p, uint32_t n, int family, const struct sockaddr_in6 *from,
                 const uint8_t **peer, uint16_t *sport, uint16_t *dport, uint32_t *ack,
                 uint8_t *flags)
{
    uint32_t off = 0;
    if (family == AF_INET) {
        if (n < 20 || p[0] >> 4 != 4)
            return -1;
        off = (p[0] & 0x0F) * 4u;
        if (off < 20 || p[9] != IPPROTO_TCP || ((p[6] << 8 | p[7]) & 0x3FFF))
            return -1;
        *peer = p + 12;
    } else {
        *peer = (const uint8_t *)&from->sin6_addr;
    }
    if (n < off + 20)
        return -1;
    uint32_t doff = (p[off + 12] >> 4) * 4u;
    if (doff < 20 || n < off + doff)
        return -1;
    *sport = (uint16_t)(p[off] << 8 | p[off + 1]);
    *dport = (uint16_t)(p[off + 2] << 8 | p[off + 3]);
    *ack = (uint32_t)p[off + 8] << 24 | (uint32_t)p[off + 9] << 16 | (uint32_t)p[off + 10] << 8 |
           p[off + 11];
    *flags = p[off + 13];
    return 0;
}

/* Drain one lane's replies. Returns results written (stops at max). */
static uint32_t drain(struct sp_fleet *f, struct sp_lane *l, int64_t now, struct sp_result *res,
                      uint32_t max, int *more)
{
    struct mmsghdr msg[SP_BATCH];
    struct iovec iov[SP_BATCH];
    struct sockaddr_in6 from[SP_BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(struct timespec))];
        struct cmsghdr align;
    } ctl[SP_BATCH];
    uint32_t nres = 0, alen = l->family == AF_INET ? 4 : 16;
    int64_t wall_to_mono = 0;  /* CLOCK_MONOTONIC - CLOCK_REALTIME, read once if needed */
    int have_offset = 0;
    for (int round = 0; round < SP_MAX_RECV_ROUNDS; round++) {
        uint32_t want = max - nres < SP_BATCH ? max - nres : SP_BATCH;
        if (!want) {
            *more = 1;
            return nres;
        }
        for (uint32_t i = 0; i < want; i++) {
            iov[i].iov_base = f->rbuf[i];
            iov[i].iov_len = SP_RECV_SIZE;
            memset(&msg[i].msg_hdr, 0, sizeof(msg[i].msg_hdr));
            msg[i].msg_hdr.msg_iov = &iov[i];
            msg[i].msg_hdr.msg_iovlen = 1;
            msg[i].msg_hdr.msg_name = &from[i];
            msg[i].msg_hdr.msg_namelen = sizeof(from[i]);
            msg[i].msg_hdr.msg_control = ctl[i].buf;
            msg[i].msg_hdr.msg_controllen = sizeof(ctl[i].buf);
        }
        int rc = recvmmsg(l->fd, msg, want, MSG_DONTWAIT, NULL);
        if (rc <= 0)
            return nres;  /* EAGAIN, or an error (e.g. ENOBUFS): those probes time out */
        for (int i = 0; i < rc; i++) {
            const uint8_t *peer;
            uint16_t sport, dport;
            uint32_t ack;
            uint8_t flags, verdict;
            if (parse(f->rbuf[i], msg[i].msg_len, l->family, &from[i], &peer, &sport, &dport,
                      &ack, &flags)) {
                f->stray++;
                continue;
            }
            if (flags & SP_TCP_RST)
                verdict = (flags & SP_TCP_ACK) ? SP_REFUSED : 0;
            else if ((flags & (SP_TCP_SYN | SP_TCP_ACK)) == (SP_TCP_SYN | SP_TCP_ACK))
                verdict = SP_UP;
            else
                verdict = 0;
            uint32_t seq = ack - 1, id = SP_NIL;
            if (verdict)
                for (id = f->buckets[seq & (f->nbuckets - 1)]; id != SP_NIL; id = f->t[id].hnext) {
                    const struct sp_target *t = &f->t[id];
                    if (t->seq == seq && t->sport == dport && t->dport == sport &&
                        t->family == l->family && !memcmp(t->dst, peer, alen))
                        break;
                }
            if (id == SP_NIL) {
                f->stray++;
                continue;
            }
            /* SO_TIMESTAMPNS (if the caller set it): the latency ends at the kernel's receive
             * time, not at this (possibly tick-delayed) drain */
            int64_t at = 0;
            struct cmsghdr *c = CMSG_FIRSTHDR(&msg[i].msg_hdr);
            if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS &&
                c->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
                struct timespec ts;
                memcpy(&ts, CMSG_DATA(c), sizeof(ts));
                if (!have_offset) {
                    struct timespec m, w;
                    clock_gettime(CLOCK_MONOTONIC, &m);
                    clock_gettime(CLOCK_REALTIME, &w);
                    wall_to_mono = (m.tv_sec - w.tv_sec) * 1000000000ll + (m.tv_nsec - w.tv_nsec);
                    have_offset = 1;
                }
                at = ts.tv_sec * 1000000000ll + ts.tv_nsec + wall_to_mono;
            }
            nres += finish(f, id, now, at, verdict, 0, &res[nres]);
        }
        if ((uint32_t)rc < want)
            return nres;
    }
    *more = 1;
    return nres;
}

int sp_fleet_run(struct sp_fleet *f, int64_t now_ns, struct sp_result *results,
                 uint32_t max_results, int64_t *next_due)
{
    uint32_t nres = 0;
    int more = 0;
    for (uint32_t i = 0; i < SP_MAX_LANES; i++)
        if (f->lanes[i].fd >= 0)
            nres += drain(f, &f->lanes[i], now_ns, results + nres, max_results - nres, &more);
    /* every due event; a result slot is kept for each probe a flush may fail */
    uint32_t pending = 0;
    while (f->heap_len && nres + pending < max_results) {
        if (f->heap[0].ev > now_ns)
            break;
        uint32_t id = f->heap[0].id;
        struct sp_target *t = &f->t[id];
        if (t->in_flight) {
            nres += finish(f, id, now_ns, 0, SP_TIMEOUT, 0, &results[nres]);
            continue;
        }
        struct sp_lane *l = &f->lanes[t->lane];
        uint64_t seq = sp_splitmix64(&f->seq_state) >> 32;
        uint16_t sport = l->ports[l->next];
        l->next = l->next + 1 < l->nports ? l->next + 1 : 0;
        uint32_t csum = ~fold(t->partial + sport + (uint32_t)(seq >> 16) + (uint32_t)(seq & 0xFFFF));
        struct sp_pending *p = &l->pend[l->npend++];
        uint8_t *k = p->pkt;
        p->id = id;
        memset(k, 0, 20);
        k[0] = (uint8_t)(sport >> 8);
        k[1] = (uint8_t)sport;
        k[2] = (uint8_t)(t->dport >> 8);
        k[3] = (uint8_t)t->dport;
        k[4] = (uint8_t)(seq >> 24);
        k[5] = (uint8_t)(seq >> 16);
        k[6] = (uint8_t)(seq >> 8);
        k[7] = (uint8_t)seq;
        k[12] = 5 << 4;
        k[13] = SP_TCP_SYN;
        k[14] = (uint8_t)(SP_SYN_WINDOW >> 8);
        k[15] = (uint8_t)SP_SYN_WINDOW;
        k[16] = (uint8_t)(csum >> 8);
        k[17] = (uint8_t)csum;
        t->seq = (uint32_t)seq;
        t->sport = sport;
        t->start_ns = now_ns;
        t->deadline_ns = now_ns + (int64_t)t->timeout_ms * 1000000;
        t->in_flight = 1;
        f->in_flight++;
        hash_insert(f, id);
        heap_fix(f, id);
        pending++;
        if (l->npend == SP_BATCH) {
            nres += flush(f, l, now_ns, results + nres);
            pending -= SP_BATCH;
        }
    }
    if (f->heap_len && nres + pending >= max_results && f->heap[0].ev <= now_ns)
        more = 1;
    for (uint32_t i = 0; i < SP_MAX_LANES; i++)
        if (f->lanes[i].fd >= 0 && f->lanes[i].npend) {
            pending -= f->lanes[i].npend;
            nres += flush(f, &f->lanes[i], now_ns, results + nres);
        }
    *next_due = more ? now_ns : sp_fleet_next_due(f);
    return (int)nres;
}
