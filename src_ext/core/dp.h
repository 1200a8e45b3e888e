/* dp.h: the data plane object as seen from Cython (workers, listeners, table swap, snapshots).
 *
 * Every function may be called without the GIL; none calls back into Python. Functions that wait
 * for a worker (dp_remove_listener, dp_sessions, dp_flows, dp_internals,
 * dp_close_backend_sessions, dp_close_backends, dp_set_connection_log, dp_stop) block the
 * calling thread only;
 * dp_set_congestion_control takes a lock no worker takes; dp_set_socket_buffers opens a
 * scratch socket and takes no lock. All return 0 or -errno unless
 * documented otherwise. See dp.c for the design essay, relay_tcp.c and relay_udp.c for the
 * relays.
 */
#ifndef L4LB_DP_H
#define L4LB_DP_H

#include <stddef.h>
#include <stdint.h>

#include "table.h"

#define DP_MAX_WORKERS 256u
#define DP_CONNLOG_MAX (1u << 22)    /* largest connection-log ring, records per worker */
#define DP_CC_NAME_MAX 16u           /* TCP_CA_NAME_MAX: longest algorithm name + NUL */
#define DP_CC_MAX_NAMES 64u          /* distinct algorithm names one data plane interns */
#define DP_SOCKBUF_MIN 4096u         /* smallest backend-leg socket buffer size (bytes) */
#define DP_SOCKBUF_MAX 0x3fffffffu   /* largest: the kernel doubles it into an int */

struct dp;

/* Per-service counters, summed over workers. TCP services move the conns_* ones, UDP services
 * the datagram and flow ones; bytes and accept_errors are kept for both. */
struct dp_svc_stats {
    uint64_t conns_total;      /* connections admitted (not rejected), counted when the first
                                  backend is picked: an accept_proxy client that never got
                                  past its header is in conns_active while open, never here */
    int64_t conns_active;      /* admitted connections still open */
    uint64_t rejected;         /* closed at once: the service's max_connections was reached */
    uint64_t no_backend;       /* closed with RST: no eligible backend left (incl. after retries) */
    uint64_t bytes_to_backend; /* bytes (udp: payload bytes) written to backends */
    uint64_t bytes_to_client;  /* bytes (udp: payload bytes) written to clients */
    uint64_t accept_errors;    /* accept4 failures (EMFILE, ENFILE, ENOBUFS, ...) and local
                                  resource failures while setting up a session; udp: no socket
                                  (or epoll slot, or memory) for a new flow, datagram dropped */
    uint64_t datagrams_in;     /* udp: datagrams read from clients, dropped ones included */
    uint64_t datagrams_out;    /* udp: datagrams sent to clients */
    uint64_t flows_created;    /* udp: flows opened (a flow moved off a DOWN backend counts
                                  again) */
    uint64_t flows_expired;    /* udp: flows ended for any reason (idle, responses, refusal,
                                  moved, listener removed, stop) */
    int64_t flows_active;      /* udp: flows open now (flows_created - flows_expired) */
    uint64_t drops_max_flows;  /* udp: datagrams that would have opened a flow beyond max_flows */
    uint64_t drops_no_backend; /* udp: datagrams with no table, no such udp service, or no
                                  eligible backend for a new flow */
    uint64_t drops_truncated;  /* udp: datagrams larger than the receive buffer (65,507 bytes),
                                  either way; never forwarded */
    uint64_t drops_send;       /* udp: datagrams the kernel refused to send (full buffer,
                                  refusal, unreachable), either way */
    uint64_t drops_max_udp_flows; /* udp: datagrams that would have opened a flow while all
                                     services together held the data plane's flow cap
                                     (dp_set_udp_flow_cap) */
    uint64_t proxy_header_errors; /* tcp, accept_proxy: clients closed (RST) before any backend
                                     was chosen because their PROXY protocol header was
                                     missing, invalid or cut short by their FIN */
    uint64_t proxy_header_timeouts; /* tcp, accept_proxy: clients closed (RST) because their
                                       header was not complete within the service's timeout */
    uint64_t proxy_direct;     /* tcp, accept_proxy with accept_proxy_from: clients outside
                                  every listed prefix, relayed without a header */
    int64_t queued_now;        /* tcp, queue_timeout: clients waiting now for a backend slot */
    uint64_t queued_total;     /* tcp: clients that ever waited (each once) */
    uint64_t queue_timeouts;   /* tcp: waiting clients closed (RST) at queue_timeout */
    uint64_t queue_wait_ms;    /* tcp: ms waited by clients that left the queue (dispatched,
                                  timed out, hung up or closed at stop), summed */
};

/* Per-backend counters, summed over workers. */
struct dp_be_stats {
    uint64_t conns_total;      /* sessions established to this backend (connect succeeded) */
    int64_t conns_active;      /* sessions assigned to it and open (connecting or established) */
    uint64_t connect_failures; /* connect refused, unreachable, timed out or failed otherwise;
                                  udp: flows ended by an ICMP error (ECONNREFUSED, ...) on their
                                  upstream socket, or whose connect() failed */
    uint64_t bytes_to_backend; /* bytes written to it */
    uint64_t bytes_to_client;  /* bytes read from it and written to clients */
    uint64_t datagrams_to_backend; /* udp: datagrams sent to it */
    uint64_t datagrams_to_client;  /* udp: datagrams from it sent on to clients */
    int64_t flows_active;      /* udp: flows assigned to it now */
    uint64_t flows_total;      /* udp: flows ever assigned to it */
};

/* A counter snapshot; large (about 2.7 MB), allocate it on the heap. */
struct dp_stats {
    uint64_t generation;                       /* generation of the live table */
    uint64_t connlog_dropped;                  /* connection-log records refused by a full
                                                  ring, since dp_create */
    uint64_t listener_pauses;                  /* times a worker paused its TCP listeners:
                                                  out of fds, or at the descriptor ceiling */
    uint32_t n_be;                             /* be[] entries filled: 1 + the highest backend
                                                  id ever published; the rest are left as they
                                                  were (not zeroed), never read them */
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
    uint8_t addr[16];          /* client address, network order, IPv4 in the first 4 bytes
                                  (accept_proxy: the one the client's PROXY header named) */
    uint8_t peer_family;       /* accept_proxy: the real peer's family (4 or 6), 0 otherwise */
    uint16_t peer_port;        /* accept_proxy: the real peer's port, host order */
    uint8_t peer_addr[16];     /* accept_proxy: the real peer's address (the balancer in
                                  front), network order */
    double started;            /* accept time, unix seconds */
    uint64_t bytes_to_backend; /* bytes written to the backend so far */
    uint64_t bytes_to_client;  /* bytes written to the client so far */
};

/* One open UDP flow in a dp_flows() snapshot. */
struct dp_flow_info {
    uint32_t service_id;       /* service of the listener the flow came in on */
    int32_t backend_id;        /* its backend */
    uint8_t family;            /* client address family, 4 or 6 */
    uint16_t port;             /* client port, host order (flow_key 1: of the latest datagram) */
    uint8_t addr[16];          /* client address, network order, IPv4 in the first 4 bytes */
    double started;            /* first datagram, unix seconds */
    double last_seen;          /* last datagram either way, unix seconds */
    uint64_t datagrams_to_backend; /* datagrams sent to the backend */
    uint64_t datagrams_to_client;  /* datagrams sent to the client */
    uint64_t bytes_to_backend; /* payload bytes sent to the backend */
    uint64_t bytes_to_client;  /* payload bytes sent to the client */
};

/* Why a TCP session or a UDP flow ended (connection log). The names the Cython module gives
 * them are the contract's (l4lb/dataplane.py); the order here only has to match that table. */
enum dp_close_reason {
    DP_CLOSE_CLIENT_CLOSED = 0,    /* tcp: the client's FIN came first, the session ended normally */
    DP_CLOSE_BACKEND_CLOSED,       /* tcp: the backend's FIN came first */
    DP_CLOSE_CLIENT_RESET,         /* tcp: the client reset (or vanished) */
    DP_CLOSE_BACKEND_RESET,        /* tcp: the backend reset */
    DP_CLOSE_CONNECT_FAILED,       /* tcp: every connect attempt failed */
    DP_CLOSE_NO_BACKEND,           /* tcp: no eligible backend (or no table / service) */
    DP_CLOSE_REJECTED,             /* tcp: max_connections of the service or of every backend */
    DP_CLOSE_IDLE_TIMEOUT,         /* idle for the service's idle timeout */
    DP_CLOSE_SHUTDOWN,             /* closed by dp_stop() (tcp: at the deadline; udp: early
                                      idle end while stopping, or the deadline) */
    DP_CLOSE_DRAIN_TIMEOUT,        /* closed by dp_close_backend_sessions() for a drain's
                                      deadline (SHUTDOWN instead once dp_stop() has begun) */
    DP_CLOSE_ERROR,                /* anything else (a local resource failure, ...) */
    DP_CLOSE_RESPONSES,            /* udp: the service's `responses` count was reached */
    DP_CLOSE_REFUSED,              /* udp: an ICMP error on the upstream socket */
    DP_CLOSE_MOVED,                /* udp: the backend went DOWN (or left); the flow re-hashed */
    DP_CLOSE_LISTENER_GONE,        /* udp: the flow's listener was removed */
    DP_CLOSE_BACKEND_DOWN,         /* tcp: closed by dp_close_backend_sessions() for a backend
                                      the health checks took DOWN (SHUTDOWN instead once
                                      dp_stop() has begun; a udp flow ends as MOVED) */
    DP_CLOSE_PROXY_HEADER,         /* tcp, accept_proxy: the client's PROXY protocol header was
                                      missing, invalid or cut short; no backend was chosen */
    DP_CLOSE_PROXY_TIMEOUT,        /* tcp, accept_proxy: the header did not arrive in time */
    DP_CLOSE_QUEUE_TIMEOUT,        /* tcp: waited queue_timeout for a backend slot in vain */
    DP_CLOSE_N
};

/* One record of the connection log: a TCP session or UDP flow that ended. 80 bytes. */
struct dp_conn_record {
    uint32_t service_id;       /* service of the listener it came in on */
    int32_t backend_id;        /* its backend (tcp: the last one tried), -1 when none was chosen */
    uint8_t protocol;          /* DP_PROTO_TCP or DP_PROTO_UDP */
    uint8_t reason;            /* enum dp_close_reason */
    uint8_t family;            /* client address family, 4 or 6 */
    uint8_t peer_family;       /* tcp, accept_proxy: the real peer's family, 4 or 6; 0 on other
                                  services (then peer_port and peer_addr are 0) */
    uint16_t port;             /* client port, host order (udp flow_key 1: of the latest datagram) */
    uint16_t peer_port;        /* the real peer's port, host order */
    uint8_t addr[16];          /* client address, network order, IPv4 in the first 4 bytes
                                  (accept_proxy: the one the client's PROXY header named) */
    uint8_t peer_addr[16];     /* the real peer's address (the balancer in front), network
                                  order */
    double started;            /* accept / first datagram, unix seconds */
    double duration;           /* seconds from started to the close, >= 0 */
    uint64_t bytes_to_backend; /* bytes (udp: payload bytes) written to the backend */
    uint64_t bytes_to_client;  /* bytes (udp: payload bytes) written to the client */
    uint32_t queued_ms;        /* tcp: ms it waited in the service's queue (included in
                                  duration), 0 when it never waited */
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
    uint64_t park_allocs;      /* copies parked in memory: no fd left for a pipe */
    uint64_t copy_sends;       /* relay chunks moved by recv/send through the worker buffer */
    uint64_t splice_moves;     /* relay chunks moved by splice into a pipe */
    uint64_t splice_fallbacks; /* relay directions that copy because splice said EINVAL */
    uint64_t tables_pending;   /* retired tables not yet freed */
    int64_t sched_active;      /* sum of sched_shared.active[] (sessions holding a backend) */
    int64_t sched_svc_active;  /* sum of sched_shared.svc_active[] (admitted sessions) */
    uint64_t flows;            /* open UDP flows */
    uint64_t flow_slab_bytes;  /* bytes of flow slab memory allocated */
    uint64_t flow_size;        /* bytes per flow object */
    uint64_t udp_buf_bytes;    /* address space of the UDP batch buffers (resident: touched
                                  pages only) */
    uint64_t udp_rx_calls;     /* recvmmsg calls on UDP listeners that returned datagrams */
    uint64_t udp_rx_datagrams; /* datagrams they returned */
    uint64_t udp_tx_calls;     /* send/sendmmsg calls on upstream sockets */
    uint64_t udp_tx_datagrams; /* datagrams they sent */
    uint64_t udp_up_calls;     /* recvmmsg calls on upstream sockets that returned datagrams */
    uint64_t udp_up_datagrams; /* datagrams they returned */
    uint64_t udp_out_calls;    /* sendmmsg calls on listeners (replies to clients) */
    uint64_t udp_out_datagrams;/* datagrams they sent */
    uint64_t udp_gso_datagrams;/* datagrams sent inside GSO runs (UDP_SEGMENT), either way */
    uint64_t udp_gro_datagrams;/* datagrams received inside GRO buffers (UDP_GRO), either way */
    uint64_t udp_poll_sleeps;  /* poll-mode sleeps of the UDP relay */
    uint64_t loop_iterations;  /* epoll_wait calls of the worker loops */
    uint64_t close_passes;     /* close-by-backend commands the workers ran (one per worker per
                                  dp_close_backends call, however many ids it named) */
    uint64_t queue_kicks;      /* eventfd writes by which a worker that freed a backend slot
                                  woke another worker holding waiting clients (relay_tcp.c,
                                  "The queue") */
};

/* Create a data plane with n workers (1..DP_MAX_WORKERS). Nothing runs until dp_start(). */
int dp_create(uint32_t n_workers, struct dp **out);
/* Relay tuning, before dp_start() only: copy_threshold = size of the per-worker copy buffer
 * (reads that fill it switch the direction to splice; 0 = always splice), pipe_size = requested
 * pipe capacity in bytes (0 = kernel default), copy_only != 0 = never splice (benchmarks; needs
 * copy_threshold > 0; pipe_size, when set, >= copy_threshold). -EBUSY once started, -EINVAL out of
 * range. */
int dp_set_tuning(struct dp *dp, uint32_t copy_threshold, uint32_t pipe_size, int copy_only);
/* UDP tuning, before dp_start() only: batch = datagrams per recvmmsg/sendmmsg (1..32, default
 * 32), slot = receive buffer per datagram in bytes (1..65507, default 65507; a larger datagram
 * is dropped as truncated), gso = 0 never sends GSO runs (default: where the kernel can),
 * gro = 0 never asks the kernel for GRO buffers (default: where the kernel can, with gso on
 * and full-size slots; applies to listeners added after the call and to new flows), poll_us =
 * poll-mode sleep under load in microseconds (0..1000, default 50; 0 = always block in
 * epoll_wait; see relay_udp.c, "Polling"). -EBUSY once started, -EINVAL out of range. */
int dp_set_udp_tuning(struct dp *dp, uint32_t batch, uint32_t slot, int gso, int gro,
                      uint32_t poll_us);
/* Start the worker threads. -EALREADY if started, -ESHUTDOWN after dp_stop(). */
int dp_start(struct dp *dp);
/* Give a nonblocking socket fd (caller keeps ownership) to worker, for service_id: a listening
 * TCP socket, or a bound UDP socket (SO_TYPE tells them apart). On a UDP socket bound to the
 * wildcard address (0.0.0.0 or ::) it sets IP_PKTINFO / IPV6_RECVPKTINFO itself, so replies can
 * leave from the address each client sent to. -EINVAL (bad worker/service id), -EEXIST (fd
 * already added), -ESHUTDOWN (stopped), -ENOTCONN (neither a listening TCP socket nor a bound
 * UDP socket), -EAGAIN (the socket is in blocking mode). */
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
/* Snapshot of the open UDP flows, like dp_sessions. *out is malloc'ed (free() it). */
int dp_flows(struct dp *dp, struct dp_flow_info **out, size_t *n);
/* 1 when this kernel takes UDP_SEGMENT, so the UDP relay sends runs of equal-sized datagrams to
 * one destination as one GSO buffer; 0 when it sends them one by one. */
int dp_udp_gso_supported(void);
/* 1 when this kernel takes UDP_GRO, so a UDP socket may hand the relay several datagrams of one
 * sender in one read (a GRO buffer), which it forwards as one GSO run. */
int dp_udp_gro_supported(void);
/* Internal figures (pools, slab, pauses), asked of each worker like dp_sessions. */
int dp_internals(struct dp *dp, struct dp_internals *out);
/* Close every open TCP session (connecting, established or half-closed) whose current backend
 * is backend_id, resetting both sides, and end every UDP flow of that backend; each worker does
 * it for its own before this returns. *closed gets the number closed. -EINVAL when backend_id
 * >= DP_MAX_BACKENDS or reason is neither DP_CLOSE_DRAIN_TIMEOUT (a drain's deadline) nor
 * DP_CLOSE_BACKEND_DOWN (the health checks took the backend DOWN). The closes are counted like
 * any other and logged with that reason (a UDP flow closed for BACKEND_DOWN as
 * DP_CLOSE_MOVED: its client's next datagram opens a flow elsewhere), or as DP_CLOSE_SHUTDOWN
 * once dp_stop() has begun. The one-id form of dp_close_backends(). */
int dp_close_backend_sessions(struct dp *dp, uint32_t backend_id, enum dp_close_reason reason,
                              uint64_t *closed);
/* Most ids one dp_close_backends() call takes (duplicates counted): the whole id space. */
#define DP_CLOSE_MAX_IDS DP_MAX_BACKENDS
/* dp_close_backend_sessions() for the n backends ids[0..n-1] at once: one command to each
 * worker, which scans its sessions and flows once for all of them (dp.c, "Close by backend").
 * closed[k] gets the number of sessions + flows closed for ids[k] (an id given twice gets the
 * same figure twice; add up distinct ids only). n = 0 asks nothing of any worker and returns 0.
 * -EINVAL for a bad reason (as above) or an id >= DP_MAX_BACKENDS, -E2BIG when n >
 * DP_CLOSE_MAX_IDS, -ENOMEM; nothing is closed then and every closed[k] is 0. */
int dp_close_backends(struct dp *dp, const uint32_t *ids, size_t n, enum dp_close_reason reason,
                      uint64_t *closed);
/* Zero every counter of a service id (service != 0) or a backend id that has left the
 * forwarding table, so that the id can be given to a new service or backend that starts from 0.
 * -EBUSY (nothing changed) while the live table still has the id, a worker's session or UDP flow
 * still counts on it, or (service) a listener of that service is still registered; -EINVAL for
 * an id out of range. The caller must not publish the id again before this returned 0. */
int dp_reset_counters(struct dp *dp, int service, uint32_t id);
/* Turn the connection log on or off. On: every session or flow that ends leaves one record in
 * its worker's ring of `capacity` records (rounded up to a power of two, 1..DP_CONNLOG_MAX;
 * ignored when off); a full ring refuses new records and counts them (connlog_dropped). A new
 * capacity replaces the rings, keeping the queued records that fit. Off: nothing is recorded,
 * queued records stay until taken. Before or after dp_start(). -EINVAL for a bad capacity. */
int dp_set_connection_log(struct dp *dp, int enabled, uint32_t capacity);
/* Take up to max queued records (oldest first within each worker) without waiting for any
 * worker. *out is malloc'ed (free() it; NULL when *n is 0). */
int dp_closed_sessions(struct dp *dp, size_t max, struct dp_conn_record **out, size_t *n);
/* Graceful stop: stop accepting (and reading UDP listeners), let sessions finish for up to
 * timeout_ms, close the rest, join the workers. UDP flows keep relaying replies until they end
 * or have been idle for 250 ms (see relay_udp.c). Idempotent. */
int dp_stop(struct dp *dp, uint32_t timeout_ms);
/* Congestion control of the backend leg (TCP_CONGESTION on each backend socket, before
 * connect) for one TCP service: name = a Linux algorithm name (1..DP_CC_NAME_MAX - 1 characters
 * of [A-Za-z0-9_-]), or NULL for the system default (no setsockopt at all). Takes effect for
 * connect attempts that start after it returns; open sessions keep theirs. Before or after
 * dp_start(). -EINVAL: bad service id or name; -ENOENT: this kernel has no such algorithm;
 * -EPERM: the process may not use it (not in net.ipv4.tcp_allowed_congestion_control and no
 * CAP_NET_ADMIN); -ENOSPC: DP_CC_MAX_NAMES distinct names were interned already. The name is
 * tried on a scratch socket first, so a refused name changes nothing. */
int dp_set_congestion_control(struct dp *dp, uint32_t service_id, const char *name);
/* The backend-leg algorithm of service_id, NULL when none is set. The string is interned and
 * lives as long as dp; any thread may call this (the relay does, once per connect attempt). */
const char *dp_congestion_control(struct dp *dp, uint32_t service_id);
/* TCP Fast Open towards the backends of one TCP service (on != 0) or not (0, the default).
 * On: when a client's first bytes already wait in its socket as a connect attempt starts, the
 * relay sends them in the SYN (sendto MSG_FASTOPEN) instead of calling connect(); they leave
 * the client socket only once the attempt has connected, so a failed attempt retries with them.
 * Takes effect for connect attempts that start after it returns. Before or after dp_start().
 * -EINVAL: bad service id. */
int dp_set_fast_open(struct dp *dp, uint32_t service_id, int on);
/* 1 when fast open is on for service_id, 0 when not (or a bad id). Any thread. */
int dp_fast_open(struct dp *dp, uint32_t service_id);
/* PROXY protocol towards the backends of one TCP service: version 1 or 2 writes that header
 * (proxyhdr.c) to each backend connection before any byte of the client's, 0 (the default)
 * none. Takes effect for connect attempts that start after it returns. Before or after
 * dp_start(). -EINVAL: bad service id or version. */
int dp_set_proxy_protocol(struct dp *dp, uint32_t service_id, int version);
/* The version set for service_id: 0, 1 or 2 (0 for a bad id). Any thread. */
int dp_proxy_protocol(struct dp *dp, uint32_t service_id);
/* PROXY protocol from the clients of one TCP service: timeout_ms != 0 makes every connection
 * accepted from then on start with a version 1 or 2 header, complete within timeout_ms, whose
 * addresses become the session's client (relay_tcp.c, "Receiving the PROXY protocol"); 0 (the
 * default) expects none. Clients accepted before keep what they had. Before or after
 * dp_start(). -EINVAL: bad service id. */
int dp_set_accept_proxy(struct dp *dp, uint32_t service_id, uint32_t timeout_ms);
/* The timeout set for service_id in ms, 0 when it expects no header (or a bad id). */
uint32_t dp_accept_proxy(struct dp *dp, uint32_t service_id);
/* GRO buffers for UDP service service_id (on by default, where the worker's tuning and the
 * kernel allow it; relay_udp.c, "GRO buffers"): on != 0 sets UDP_GRO on the service's
 * listeners already added, on those added later and on the upstream sockets of flows opened
 * afterwards; 0 leaves it off on listeners added later and on new flows' sockets, but never
 * turns it off on a listener that has it (merged datagrams it holds would lose their
 * boundaries), nor on open flows. Before or after dp_start(). 0, -EINVAL (bad id), or the
 * -errno of a listener's setsockopt (the others are still set). */
int dp_set_udp_gro(struct dp *dp, uint32_t service_id, int on);
/* 1 when service_id's UDP sockets get GRO buffers (not switched off, and the kernel and
 * tuning allow it), 0 when not (or a bad id). Any thread. */
int dp_udp_gro(struct dp *dp, uint32_t service_id);
/* The descriptor ceiling: descriptors numbered `ceiling` and up are left to the rest of the
 * process (the control plane: control socket, metrics, health probes, log files). Linux hands
 * out the lowest free number, so a new descriptor at or above it means fewer than the limit
 * minus `ceiling` are free. The workers then act as when they are out of descriptors: a new
 * pipe or UDP flow socket is closed again (the copy is parked in memory, the datagram dropped),
 * and the TCP listeners pause until the fd reserve fits below the ceiling again; the client
 * and backend sockets of a session already accepted are kept. 0 (the default): no ceiling.
 * Any thread, any time; relay_tcp.c, "The fd reserve". */
void dp_set_fd_ceiling(struct dp *dp, uint32_t ceiling);
uint32_t dp_fd_ceiling(struct dp *dp);
/* The cap on UDP flows open at once, all services and workers together (relay_udp.c, "Flow
 * cap"): a datagram that would open one more is dropped and counted in its service's
 * drops_max_udp_flows. 0 = no cap (the default). Takes effect for flows opened after it returns;
 * open flows are never closed by it. Before or after dp_start(). Any thread. */
void dp_set_udp_flow_cap(struct dp *dp, uint32_t cap);
/* The cap (0 = none) and the number of UDP flows open now. Any thread (relaxed loads). */
void dp_udp_flows(struct dp *dp, uint32_t *cap, int64_t *open);

/* Socket buffers of the backend leg of one TCP service: SO_SNDBUF sndbuf and SO_RCVBUF rcvbuf
 * bytes on each backend socket before connect() (the window scale is fixed by the SYN), each 0
 * for the kernel's autotuning (no setsockopt) or DP_SOCKBUF_MIN..DP_SOCKBUF_MAX. The kernel
 * doubles a size; a process with CAP_NET_ADMIN gets it with SO_SNDBUFFORCE / SO_RCVBUFFORCE,
 * any other has it capped at net.core.wmem_max / rmem_max. The sizes are tried on a scratch
 * socket first (which also decides FORCE or not), so a refused one changes nothing. Takes
 * effect for connect attempts that start after it returns; open sessions keep theirs. Before or
 * after dp_start(). -EINVAL: bad service id or size; else the scratch socket's -errno. */
int dp_set_socket_buffers(struct dp *dp, uint32_t service_id, uint32_t sndbuf, uint32_t rcvbuf);
/* The sizes set for service_id (0, 0 when none or a bad id). Any thread. */
void dp_socket_buffers(struct dp *dp, uint32_t service_id, uint32_t *sndbuf, uint32_t *rcvbuf);
/* Backend sockets of service_id that refused one of its sizes (each refused option counts),
 * summed over workers with relaxed loads; 0 for a bad id. The connection went on with the
 * kernel's buffers. */
uint64_t dp_socket_buffer_errors(struct dp *dp, uint32_t service_id);
/* Fast-open counters summed over workers (relaxed loads, no worker is asked): attempts = backend
 * connects opened with sendto(MSG_FASTOPEN), syn_data = those whose SYN carried client bytes
 * (the kernel had a cookie for the backend), syn_bytes = the bytes those SYNs carried. */
void dp_fast_open_stats(struct dp *dp, uint64_t *attempts, uint64_t *syn_data,
                        uint64_t *syn_bytes);
/* Stop (with no grace) if needed and free everything. dp may be NULL. */
void dp_destroy(struct dp *dp);

#endif
