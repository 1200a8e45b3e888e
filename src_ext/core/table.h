/* table.h: the forwarding table (parse + validate), flow hash, Maglev fill and schedulers.
 *
 * Pure functions only: no I/O, no threads, no Python headers. The binary layout, the hash and
 * every scheduler are specified in docs/forwarding-table.md; l4lb/table/ holds the Python twins
 * and one test suite checks that both agree. All functions return 0 or -errno.
 */
#ifndef L4LB_TABLE_H
#define L4LB_TABLE_H

#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>

#define DP_TABLE_MAGIC "L4LB"
#define DP_TABLE_VERSION 3
#define DP_MAX_SERVICES 1024u
#define DP_MAX_BACKENDS 65536u
#define DP_MAX_WEIGHT 256u
#define DP_SOURCE_CLIENT 1 /* backend source_family: bind the client's address (transparent) */
#define DP_MAX_PROXY_FROM 64u /* accept_proxy_from entries per service (a linear scan at accept) */

enum dp_proto { DP_PROTO_TCP = 0, DP_PROTO_UDP = 1 };
enum dp_sched {
    DP_SCHED_RR = 0,          /* round_robin */
    DP_SCHED_WRR = 1,         /* weighted_round_robin (smooth, nginx-style) */
    DP_SCHED_LC = 2,          /* least_conn (weighted) */
    DP_SCHED_RANDOM2 = 3,     /* random_two (power of two choices) */
    DP_SCHED_SRCHASH = 4,     /* source_hash */
    DP_SCHED_MAGLEV = 5,      /* maglev */
};
enum dp_hash_key { DP_HASH_SRC_IP = 0, DP_HASH_SRC_IP_PORT = 1 };
enum dp_flow_key { DP_FLOW_SRC_IP_PORT = 0, DP_FLOW_SRC_IP = 1 }; /* udp: what keys a flow */
#define DP_BACKEND_FLAG_BACKUP 0x01u  /* informational */
#define DP_BACKEND_FLAG_DOWN 0x02u    /* health DOWN or maintenance: its UDP flows move */

/* One service, decoded from its 64-byte record. */
struct dp_service {
    uint32_t service_id;          /* stable dense id, index of per-service counters */
    uint8_t protocol;             /* enum dp_proto */
    uint8_t scheduler;            /* enum dp_sched */
    uint8_t hash_key;             /* enum dp_hash_key */
    uint32_t connect_timeout_ms;  /* connect deadline per attempt, > 0 */
    uint32_t idle_timeout_ms;     /* tcp: 0 = no idle timeout; udp: flow idle expiry, > 0 */
    uint32_t retries;             /* other backends tried after a failed connect */
    uint32_t max_connections;     /* 0 = unlimited, all workers together */
    uint32_t backend_first;       /* index of first backend in dp_table.backends */
    uint32_t backend_count;       /* number of backends of this service */
    uint32_t ring_first;          /* index of first entry in dp_table.ring */
    uint32_t ring_size;           /* maglev M / source_hash sum of weights / 0 */
    uint8_t flow_key;             /* udp: enum dp_flow_key; tcp: 0 */
    uint32_t max_flows;           /* udp: flows at once, all workers together, 0 = unlimited */
    uint32_t responses;           /* udp: datagrams from the backend that end a flow, 0 = never */
    uint32_t proxy_from_first;    /* index of the first entry in dp_table.proxy_from */
    uint32_t proxy_from_count;    /* tcp: accept_proxy_from entries (<= DP_MAX_PROXY_FROM); 0 =
                                     every client sends a PROXY header (when accept_proxy is on) */
    uint32_t queue_timeout_ms;    /* tcp: how long a client may wait while every eligible backend
                                     is at its max_connections, 0 = no queue (refused at once,
                                     `rejected`); udp: 0 (relay_tcp.c, "The queue") */
    uint32_t max_queue;           /* tcp: clients waiting at once, all workers together; > 0
                                     when queue_timeout_ms is; udp: 0 */
};

/* One accept_proxy_from prefix, decoded from its 20-byte entry. */
struct dp_proxy_from {
    uint8_t family;               /* 4 or 6 */
    uint8_t prefix_len;           /* 0..32 (IPv4) or 0..128 (IPv6) */
    uint8_t addr[16];             /* network byte order, IPv4 in the first 4 bytes; host bits 0 */
};

/* One backend, decoded from its 56-byte record. */
struct dp_backend {
    uint32_t backend_id;          /* stable dense id, index of per-backend counters */
    uint8_t family;               /* 4 or 6 */
    uint8_t flags;                /* bit 0: backup (informational); bit 1: down (UDP flows
                                     move); bits 2..7 reserved, ignored */
    uint16_t port;                /* host byte order, 1..65535 */
    uint8_t addr[16];             /* network byte order; IPv4 in the first 4 bytes */
    uint32_t weight;              /* 0 = not eligible for new connections */
    uint32_t max_connections;     /* 0 = unlimited */
    uint8_t source_family;        /* 0: no source address (the kernel picks one at connect);
                                     DP_SOURCE_CLIENT: the client's address (transparent);
                                     else 4 or 6, equal to family */
    uint8_t source_addr[16];      /* network byte order, IPv4 in the first 4 bytes; bound (port
                                     0, IP_BIND_ADDRESS_NO_PORT) before connect; 0 when none */
};

/* A validated, immutable table. Built once by dp_table_parse(), never modified after. */
struct dp_table {
    uint64_t generation;          /* set by the publisher, 0 until published */
    uint32_t hash_seed;           /* seed of the flow hash */
    uint32_t n_services;          /* entries in services[] */
    uint32_t n_backends;          /* entries in backends[] */
    uint32_t n_ring;              /* entries in ring[] */
    uint32_t n_proxy_from;        /* entries in proxy_from[] */
    struct dp_service *services;  /* n_services decoded records */
    struct dp_backend *backends;  /* n_backends decoded records */
    uint32_t *ring;               /* n_ring entries, relative backend indexes */
    struct dp_proxy_from *proxy_from; /* n_proxy_from decoded accept_proxy_from prefixes */
    int16_t by_service_id[DP_MAX_SERVICES]; /* service_id -> index in services[], -1 if absent */
    uint8_t digest[32];           /* SHA-256 of the blob, computed by the caller, may stay zero */
};

/* Decode and validate a blob (docs/forwarding-table.md). On success *out owns a new table
 * (one allocation). On failure returns -EINVAL and writes a one-line reason naming the first
 * failing field into err (same text as l4lb/table/blob.py), or -ENOMEM. Check order: header
 * fields by offset, then backend records, then service records (fields by offset), then each
 * service's ring entries, then every proxy_from entry. */
int dp_table_parse(const uint8_t *blob, size_t len, struct dp_table **out, char *err, size_t errlen);
void dp_table_free(struct dp_table *t);

/* Service record by stable id, NULL if the table has no such service. */
const struct dp_service *dp_table_service(const struct dp_table *t, uint32_t service_id);

/* 1 when the client (family 4/6, 16-byte address in network order, IPv4 in the first 4 bytes)
 * matches one of svc's accept_proxy_from prefixes, else 0. An IPv4-mapped IPv6 client
 * (::ffff:a.b.c.d) also matches the IPv4 prefixes by its IPv4 address. A linear scan of at
 * most DP_MAX_PROXY_FROM entries; callers test svc->proxy_from_count first. */
int dp_table_proxy_from_match(const struct dp_table *t, const struct dp_service *svc,
                              uint8_t family, const uint8_t addr[16]);

/* Flow hash (FNV-1a 64 + splitmix64 finaliser), see the docs. */
uint64_t dp_hash64(uint32_t seed, const uint8_t *data, size_t len);
/* Flow hash of a client address: family 4/6, addr 16 bytes (network order), port host order. */
uint64_t dp_flow_hash(uint32_t seed, uint8_t family, const uint8_t addr[16], uint16_t port,
                      uint8_t hash_key);

/* Maglev fill. backends[] are the service's backends in canonical order (weight 0 = skipped).
 * Writes m entries (relative backend indexes) into ring. Checks, in this order: every weight
 * <= DP_MAX_WEIGHT and m prime (else -EINVAL), some backend eligible (else -ENOENT), m >= the
 * number of eligible backends (else -EINVAL); -ENOMEM. Pure; safe without the GIL. */
int maglev_fill(uint32_t hash_seed, const struct dp_backend *backends, uint32_t n,
                uint32_t m, uint32_t *ring);

/* 1 when m is prime, else 0 (trial division, at most 32768 steps). */
int maglev_is_prime(uint32_t m);

/* Length of a backend's Maglev key: family (1) + addr (16) + port (2, big-endian). */
#define MAGLEV_KEY_LEN 19
/* Write the Maglev key of one backend. */
void maglev_backend_key(const struct dp_backend *b, uint8_t key[MAGLEV_KEY_LEN]);

/* Scheduler state shared by all workers; lives as long as the data plane, survives table swaps. */
struct sched_shared {
    _Atomic uint32_t rr_next[DP_MAX_SERVICES];  /* round-robin counter per service id */
    _Atomic int32_t active[DP_MAX_BACKENDS];    /* open sessions per backend id, all workers */
    _Atomic int32_t svc_active[DP_MAX_SERVICES]; /* open sessions per service id, all workers */
    _Atomic int32_t queued[DP_MAX_SERVICES];    /* clients waiting per service id, all workers
                                                   (relay_tcp.c, "The queue") */
    _Atomic int32_t queued_all;                 /* sum of queued[]: 0 = nobody waits, the one
                                                   load a session's end pays */
    _Atomic uint32_t q_issued[DP_MAX_SERVICES]; /* next queue ticket per service id: the order
                                                   of waiting clients across workers (serial
                                                   arithmetic: it wraps) */
};

/* Scheduler state private to one worker. */
struct sched_worker {
    int64_t wrr_current[DP_MAX_BACKENDS];       /* smooth WRR "current weight" per backend id */
    uint64_t rng;                               /* xorshift64* state, never 0 */
};

/* Reset shared scheduler state: all counters 0. */
void sched_shared_init(struct sched_shared *sh);
/* Reset one worker's scheduler state: WRR currents 0, PRNG seeded with seed (0 is replaced by a
 * fixed non-zero constant, SCHED_RNG_DEFAULT, because xorshift never leaves 0). */
void sched_worker_init(struct sched_worker *w, uint64_t seed);
#define SCHED_RNG_DEFAULT 0x9E3779B97F4A7C15ull
/* Advance a worker's xorshift64* PRNG and return the next 64-bit output. */
uint64_t sched_rng_next(struct sched_worker *w);

/* Pick a backend for a new session (or a retry). tried[0..n_tried) are ABSOLUTE backend indexes
 * (into t->backends) already attempted for this session; they are excluded. *slot is in/out: on a
 * retry (n_tried > 0) of a hashing scheduler it holds the ring slot of the previous attempt and
 * the walk starts after it; on return it holds the slot used (0 for non-hashing schedulers).
 * On success *out is an absolute backend index.
 * Returns 0, or -ENOENT when no eligible backend is left. Does not touch the active counters.
 * Candidates: weight > 0, active < max_connections when that is set, not tried. Hashing
 * schedulers also skip a full backend on the FIRST pick (walking on from the home slot).
 * round_robin and least_conn advance rr_next[service_id] once per call (when backend_count > 0);
 * random_two draws two PRNG outputs per call that has a candidate, index = (x>>32)*E>>32 among
 * the E candidates in canonical order. Service max_connections is NOT checked here.
 * cfamily (4 or 6; 0: any) is the family of the client the pick is for: a transparent backend
 * (source_family DP_SOURCE_CLIENT) of the other family is no candidate, so round_robin and
 * least_conn rotate over the client's family only. */
int sched_pick(const struct dp_table *t, const struct dp_service *svc, struct sched_shared *sh,
               struct sched_worker *w, uint64_t flow_hash, const uint32_t *tried, uint32_t n_tried,
               uint8_t cfamily, uint32_t *slot, uint32_t *out);

#endif
