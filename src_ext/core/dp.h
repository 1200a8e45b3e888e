/* dp.h: the data plane object as seen from Cython (workers, listeners, table swap, snapshots).
 *
 * Every function may be called without the GIL; none calls back into Python. Functions that wait
 * for a worker (dp_remove_listener, dp_sessions, dp_internals, dp_stop) block the calling thread
 * only. All return 0 or -errno unless documented otherwise. See dp.c for the design essay.
 */
#ifndef L4LB_DP_H
#define L4LB_DP_H

#include <stddef.h>
#include <stdint.h>

#include "table.h"

#define DP_MAX_WORKERS 256u

struct dp;

/* Per-service counters, summed over workers. */
struct dp_svc_stats {
    uint64_t conns_total;      /* connections admitted (not rejected) */
    int64_t conns_active;      /* admitted connections still open */
    uint64_t rejected;         /* closed at once: the service's max_connections was reached */
    uint64_t no_backend;       /* closed with RST: no eligible backend left (incl. after retries) */
    uint64_t bytes_to_backend; /* bytes written to backends */
    uint64_t bytes_to_client;  /* bytes written to clients */
    uint64_t accept_errors;    /* accept4 failures (EMFILE, ENFILE, ENOBUFS, ...) and local
                                  resource failures while setting up a session */
};

/* Per-backend counters, summed over workers. */
struct dp_be_stats {
    uint64_t conns_total;      /* sessions established to this backend (connect succeeded) */
    int64_t conns_active;      /* sessions assigned to it and open (connecting or established) */
    uint64_t connect_failures; /* connect refused, unreachable, timed out or failed otherwise */
    uint64_t bytes_to_backend; /* bytes written to it */
    uint64_t bytes_to_client;  /* bytes read from it and written to clients */
};

/* A counter snapshot; large (about 2.7 MB), allocate it on the heap. */
struct dp_stats {
    uint64_t generation;                       /* generation of the live table */
    struct dp_svc_stats svc[DP_MAX_SERVICES];  /* indexed by service id */
    struct dp_be_stats be[DP_MAX_BACKENDS];    /* indexed by backend id */
};

enum dp_session_state {
    DP_SESS_CONNECTING = 0,    /* no backend connection yet */
    DP_SESS_ESTABLISHED = 1,   /* relaying both ways */
    DP_SESS_HALF_CLOSED = 2,   /* one direction finished (FIN forwarded), the other still open */
};

/* One open TCP session in a dp_sessions() snapshot. */
struct dp_session_info {
    uint32_t service_id;       /* service the client connected to */
    int32_t backend_id;        /* chosen backend id, -1 while none is chosen */
    uint8_t family;            /* 4 or 6 */
    uint8_t state;             /* enum dp_session_state */
    uint16_t port;             /* client port, host order */
    uint8_t addr[16];          /* client address, network order, IPv4 in the first 4 bytes */
    double started;            /* accept time, unix seconds */
    uint64_t bytes_to_backend; /* bytes written to the backend so far */
    uint64_t bytes_to_client;  /* bytes written to the client so far */
};

/* Internal figures for tests and benchmarks (summed over workers). */
struct dp_internals {
    uint64_t pipes_created;    /* pipes ever created by the pools */
    uint64_t pipes_reused;     /* pipe requests served from a pool */
    uint64_t pipes_closed;     /* pipes closed (pool full, possibly dirty, or shutdown) */
    int64_t pipes_in_use;      /* pipes held by sessions right now */
    uint64_t pipes_idle;       /* empty pipes waiting in pools */
    uint64_t pipe_size;        /* capacity of the last pipe created (bytes), 0 if none */
    uint64_t sessions;         /* open sessions */
    uint64_t slab_bytes;       /* bytes of session slab memory allocated */
    uint64_t session_size;     /* bytes per session object */
    uint64_t listener_pauses;  /* times accepting was paused after EMFILE/ENFILE */
    uint64_t copy_sends;       /* relay chunks moved by recv/send through the worker buffer */
    uint64_t splice_moves;     /* relay chunks moved by splice into a pipe */
    uint64_t splice_fallbacks; /* relay directions that copy because splice said EINVAL */
    uint64_t tables_pending;   /* retired tables not yet freed */
    int64_t sched_active;      /* sum of sched_shared.active[] (sessions holding a backend) */
    int64_t sched_svc_active;  /* sum of sched_shared.svc_active[] (admitted sessions) */
};

/* Create a data plane with n workers (1..DP_MAX_WORKERS). Nothing runs until dp_start(). */
int dp_create(uint32_t n_workers, struct dp **out);
/* Relay tuning, before dp_start() only: copy_threshold = size of the per-worker copy buffer
 * (reads that fill it switch the direction to splice; 0 = always splice), pipe_size = requested
 * pipe capacity in bytes (0 = kernel default), copy_only != 0 = never splice (benchmarks; needs
 * copy_threshold > 0; pipe_size, when set, >= copy_threshold). -EBUSY once started, -EINVAL out of
 * range. */
int dp_set_tuning(struct dp *dp, uint32_t copy_threshold, uint32_t pipe_size, int copy_only);
/* Start the worker threads. -EALREADY if started, -ESHUTDOWN after dp_stop(). */
int dp_start(struct dp *dp);
/* Give listening nonblocking socket fd (caller keeps ownership) to worker, for service_id.
 * -EINVAL (bad worker/service id), -EEXIST (fd already added), -ESHUTDOWN (stopped),
 * -ENOTCONN (not a listening TCP socket), -EAGAIN (the socket is in blocking mode). */
int dp_add_listener(struct dp *dp, uint32_t service_id, int fd, uint32_t worker);
/* Stop polling fd; returns once its worker no longer polls it. -ENOENT if unknown. */
int dp_remove_listener(struct dp *dp, int fd);
/* Validate and swap in a new table. On success *generation is its generation. On a bad blob
 * returns -EINVAL with the reason in err; the old table stays live. */
int dp_publish(struct dp *dp, const uint8_t *blob, size_t len, uint64_t *generation, char *err,
               size_t errlen);
/* Generation of the live table (0 before the first publish). */
uint64_t dp_generation(struct dp *dp);
/* Sum every worker's counters into *out. */
int dp_stats(struct dp *dp, struct dp_stats *out);
/* Snapshot of the open sessions (each worker answers through its command queue). *out is
 * malloc'ed (free() it), *n its length. */
int dp_sessions(struct dp *dp, struct dp_session_info **out, size_t *n);
/* Internal figures (pools, slab, pauses), asked of each worker like dp_sessions. */
int dp_internals(struct dp *dp, struct dp_internals *out);
/* Graceful stop: stop accepting, let sessions finish for up to timeout_ms, close the rest,
 * join the workers. Idempotent. */
int dp_stop(struct dp *dp, uint32_t timeout_ms);
/* Stop (with no grace) if needed and free everything. dp may be NULL. */
void dp_destroy(struct dp *dp);

#endif
