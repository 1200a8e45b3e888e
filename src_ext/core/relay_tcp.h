/* relay_tcp.h: internals shared by dp.c (workers, commands, table swap) and the relays.
 *
 * Not part of the Cython-visible API (that is dp.h). A dp_worker and everything it points to is
 * owned by its thread; the fields marked "shared" are the only ones other threads touch. The TCP
 * relay (relay_tcp.c) is declared here; the UDP relay's own types are in relay_udp.h.
 */
#ifndef L4LB_RELAY_TCP_H
#define L4LB_RELAY_TCP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include "connlog_ring.h"
#include "ct.h"
#include "dp.h"
#include "pipepool.h"
#include "table.h"

/* 1: call the kernel through glibc's wrappers (sanitizer builds, which intercept them);
 * 0: through syscall(2), skipping the cancellation-point bookkeeping (relay_tcp.c). */
#ifndef DP_LIBC_CALLS
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define DP_LIBC_CALLS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define DP_LIBC_CALLS 1
#endif
#endif
#endif
#ifndef DP_LIBC_CALLS
#define DP_LIBC_CALLS 0
#endif

#define RELAY_MAX_TRIES 32u          /* backends remembered per session for retries */
#define RELAY_ACCEPT_BATCH 64u       /* accepts per listener per wake-up */
#define RELAY_BUDGET (512u * 1024u)  /* bytes per direction per wake-up before yielding */
#define RELAY_EMFILE_PAUSE_MS 100u   /* listener pause after EMFILE/ENFILE */
#define RELAY_RESERVE_FDS 4u         /* fds a worker holds back for sessions it has accepted:
                                        a backend socket and a pipe (relay_reserve_spend) */
#define RELAY_SPLICE_LEN (1u << 20)  /* length asked of one splice into a pipe */
#define RELAY_EV_UNKNOWN 0xffffffffu /* relay_established(): connected at once, no event mask */
#define RELAY_QUEUE_RETRY_MS 50u     /* a worker with waiting clients tries its queue at least
                                        this often (table changes, a missed kick) */
#define RELAY_QUEUE_FIRST (1ull << 32) /* dp_worker.q_first: a waiting client's ticket is set */

/* Per-worker counter slots (plain single-writer counters, read with relaxed loads). */
enum dp_svc_counter {
    DP_SC_CONNS_TOTAL, DP_SC_CONNS_ACTIVE, DP_SC_REJECTED, DP_SC_NO_BACKEND,
    DP_SC_BYTES_TO_BACKEND, DP_SC_BYTES_TO_CLIENT, DP_SC_ACCEPT_ERRORS,
    /* udp (meanings in dp.h, struct dp_svc_stats) */
    DP_SC_DATAGRAMS_IN, DP_SC_DATAGRAMS_OUT, DP_SC_FLOWS_CREATED, DP_SC_FLOWS_EXPIRED,
    DP_SC_FLOWS_ACTIVE, DP_SC_DROPS_MAX_FLOWS, DP_SC_DROPS_NO_BACKEND, DP_SC_DROPS_TRUNCATED,
    DP_SC_DROPS_SEND, DP_SC_DROPS_MAX_UDP_FLOWS,
    /* tcp, accept_proxy (relay_tcp.c, "Receiving the PROXY protocol") */
    DP_SC_PROXY_HDR_ERRORS, DP_SC_PROXY_HDR_TIMEOUTS, DP_SC_PROXY_DIRECT,
    /* tcp, queue_timeout (relay_tcp.c, "The queue") */
    DP_SC_QUEUED_NOW, DP_SC_QUEUED_TOTAL, DP_SC_QUEUE_TIMEOUTS, DP_SC_QUEUE_WAIT_MS, DP_SC_N
};
enum dp_be_counter {
    DP_BC_CONNS_TOTAL, DP_BC_CONNS_ACTIVE, DP_BC_CONNECT_FAILURES,
    DP_BC_BYTES_TO_BACKEND, DP_BC_BYTES_TO_CLIENT,
    /* udp */
    DP_BC_DATAGRAMS_TO_BACKEND, DP_BC_DATAGRAMS_TO_CLIENT, DP_BC_FLOWS_ACTIVE, DP_BC_FLOWS_TOTAL,
    DP_BC_N
};

/* One worker's counters; only that worker writes them. */
struct dp_counters {
    uint64_t svc[DP_MAX_SERVICES][DP_SC_N]; /* per service id */
    uint64_t be[DP_MAX_BACKENDS][DP_BC_N];  /* per backend id */
    uint64_t copy_sends;                    /* chunks relayed by copy */
    uint64_t splice_moves;                  /* chunks relayed by splice */
    uint64_t splice_fallbacks;              /* directions that fell back to copy (EINVAL) */
    uint64_t listener_pauses;               /* EMFILE/ENFILE pauses */
    uint64_t park_allocs;                   /* copies parked in memory (no fd for a pipe) */
    uint64_t udp_rx_calls;                  /* recvmmsg calls on UDP listeners that got data */
    uint64_t udp_rx_datagrams;              /* datagrams those calls returned */
    uint64_t udp_tx_calls;                  /* send/sendmmsg calls on upstream sockets */
    uint64_t udp_tx_datagrams;              /* datagrams those calls sent */
    uint64_t udp_up_calls;                  /* recvmmsg calls on upstream sockets that got data */
    uint64_t udp_up_datagrams;              /* datagrams those calls returned */
    uint64_t udp_out_calls;                 /* sendmmsg calls on listeners (replies) */
    uint64_t udp_out_datagrams;             /* datagrams those calls sent */
    uint64_t udp_gso_datagrams;             /* datagrams sent inside GSO runs (either way) */
    uint64_t udp_gro_datagrams;             /* datagrams received inside GRO buffers (either
                                               way; relay_udp.c, "GRO buffers") */
    uint64_t udp_poll_sleeps;               /* poll-mode sleeps (see relay_udp.c, "Polling") */
    uint64_t loop_iterations;               /* epoll_wait calls of the worker loop */
    uint64_t queue_kicks;                   /* eventfd writes to other workers holding waiting
                                               clients (relay_queue_kick) */
    uint64_t close_passes;                  /* close-by-backend commands run, each one pass
                                               over the sessions and flows (dp.c) */
    uint64_t connlog_dropped;               /* connection-log records refused (ring full) */
    uint64_t fo_attempts;                   /* backend connects opened by sendto(MSG_FASTOPEN)
                                               with client data or a PROXY header
                                               (relay_fast_open) */
    uint64_t fo_syn_data;                   /* of those, attempts whose SYN carried client
                                               data (not only header bytes) */
    uint64_t fo_syn_bytes;                  /* client bytes the kernel took into those SYNs */
    uint64_t sockbuf_errors[DP_MAX_SERVICES]; /* per service id: backend sockets that refused
                                                 the service's SO_SNDBUF / SO_RCVBUF (each
                                                 refused option counts; relay_tcp.c, "Socket
                                                 buffers"); zeroed with the service's row */
};

/* Add v to a single-writer counter; the relaxed atomic store keeps concurrent readers defined
 * without a locked instruction. */
#define DP_CNT_ADD(p, v) \
    __atomic_store_n((p), __atomic_load_n((p), __ATOMIC_RELAXED) + (uint64_t)(v), __ATOMIC_RELAXED)

/* What an epoll data pointer points at: the first byte says which kind of object. */
enum dp_ep_kind { DP_EP_LISTENER = 1, DP_EP_EVENTFD, DP_EP_CLIENT, DP_EP_BACKEND, DP_EP_UDP_FLOW };

struct dp_ep {
    uint8_t kind;                  /* enum dp_ep_kind */
};

/* TCP_NODELAY of a TCP listener's accepted sockets. Linux copies the option from the
 * listener into each connection it creates, so dp_add_listener() sets it on the listener;
 * connections queued before that still lack it, so the relay sets it per socket until its first
 * accept4() finds the queue empty. */
enum dp_nodelay {
    DP_NODELAY_PER_SOCKET = 0,     /* the listener refused it: set it on every accepted socket */
    DP_NODELAY_LISTENER,           /* set on the listener; older connections may be queued */
    DP_NODELAY_INHERITED,          /* the queue drained since: accepted sockets have it */
};

/* One listening socket owned by a worker. */
struct dp_listener {
    struct dp_ep ep;               /* kind DP_EP_LISTENER; epoll data points here */
    int fd;                        /* the caller's socket (never closed by us) */
    uint32_t service_id;           /* service whose connections it accepts */
    uint8_t in_epoll;              /* 1 while registered in the worker's epoll */
    uint8_t proto;                 /* DP_PROTO_TCP (listening) or DP_PROTO_UDP (bound datagram) */
    uint8_t pktinfo;               /* udp, wildcard address: datagrams carry the local address
                                      (IP_PKTINFO / IPV6_RECVPKTINFO, set by dp_add_listener) */
    uint8_t family;                /* 4 or 6 (from getsockname) */
    uint8_t nodelay;               /* tcp: enum dp_nodelay, whether accepted sockets still need
                                      their own TCP_NODELAY */
    uint16_t lport;                /* local port, host order */
    uint8_t laddr[16];             /* local address (maybe the wildcard) */
};

/* One relay direction (client->backend or backend->client). */
struct relay_dir {
    struct pipepool_pipe pipe;     /* pipe holding in-flight bytes; rfd -1 when none */
    uint32_t in_pipe;              /* bytes in the pipe not yet written to the destination */
    uint8_t eof;                   /* the source sent FIN (read returned 0) */
    uint8_t done;                  /* FIN forwarded to the destination (shutdown SHUT_WR) */
    uint8_t bulk;                  /* 1: splice mode; 0: copy mode (small messages) */
    uint8_t wblocked;              /* destination returned EAGAIN; waiting for EPOLLOUT */
    uint8_t nosplice;              /* splice refused (EINVAL/ENOSYS) on the source: copy only */
    uint32_t park_len;             /* bytes in park not yet written to the destination */
    uint32_t park_off;             /* where they start in park */
    uint8_t *park;                 /* out of fds for a pipe: the rest of one copy, malloc'd
                                      (at most copy_threshold bytes); NULL when none */
};

enum relay_state { RELAY_CONNECTING = 0, RELAY_ESTABLISHED, RELAY_HALF_CLOSED, RELAY_DEAD };

/* Where a session of an accept_proxy service is with its client's PROXY protocol header
 * (relay_tcp.c, "Receiving the PROXY protocol"); always RELAY_PIN_NONE on other services. */
enum relay_pin {
    RELAY_PIN_NONE = 0,            /* no header expected */
    RELAY_PIN_LOCAL,               /* read; it named no client (LOCAL, UNKNOWN): the key holds
                                      the connection's own addresses */
    RELAY_PIN_PROXY,               /* read; the key holds the header's addresses, peer_* the
                                      connection's */
    RELAY_PIN_WAIT,                /* waiting for it (state RELAY_CONNECTING, no backend yet);
                                      this and the ones below are the "not read yet" states */
    RELAY_PIN_SKIP_LOCAL,          /* its start was read, as LOCAL: discarding the rest of it,
                                      pin_skip more bytes (version 2 TLVs) */
    RELAY_PIN_SKIP_PROXY,          /* the same, as PROXY (the key holds its addresses) */
};
/* One TCP session: a ct entry (first) plus relay state. */
struct relay_session {
    struct ct_entry ct;            /* table header: 5-tuple, timer; must stay first */
    struct dp_ep cep;              /* kind DP_EP_CLIENT, epoll data of cfd */
    struct dp_ep bep;              /* kind DP_EP_BACKEND, epoll data of bfd */
    uint8_t state;                 /* enum relay_state */
    uint8_t n_tried;               /* entries used in tried_ids */
    uint8_t on_ready;              /* 1 while on the worker's ready list */
    uint8_t cfd_in_epoll;          /* 1 once cfd is registered */
    uint8_t cfd_out;               /* 1 once cfd is registered for EPOLLOUT too (a write to the
                                      client blocked once; relay_client_want_out) */
    uint8_t pp;                    /* PROXY protocol version of the current attempt, 0 none
                                      (the service's option when the attempt started) */
    uint8_t pp_sent;               /* bytes of that header already sent (in a fast-open SYN);
                                      the rest goes out once connected (relay_pp_send) */
    uint8_t pp_pending;            /* 1 while the current attempt still owes its header */
    uint8_t pin;                   /* enum relay_pin: the client's own PROXY header */
    uint8_t peer_family;           /* accept_proxy: 4 or 6, the family of the connection's
                                      real peer (the balancer in front), 0 on other services */
    uint32_t cev;                  /* client events seen while connecting (EPOLLIN/RDHUP say
                                      data or a FIN waits for the pump), 0 once established */
    int cfd;                       /* client socket */
    int bfd;                       /* backend socket, -1 before/between attempts */
    uint32_t service_id;           /* copied at accept; the table is not read after connect */
    int32_t backend_id;            /* backend id of the current attempt/connection, -1 none */
    uint32_t slot;                 /* ring slot of the last pick (hashing schedulers) */
    uint32_t retries;              /* retries allowed (service's value at accept) */
    uint32_t failures;             /* failed attempts so far */
    uint32_t connect_timeout_ms;   /* per attempt, copied at accept */
    uint32_t idle_timeout_ms;      /* 0 = none, copied at accept */
    uint16_t peer_port;            /* accept_proxy: the real peer's port, host order */
    uint8_t queued;                /* 1 while waiting in the worker's queue for a backend slot
                                      (state RELAY_CONNECTING, no backend, nothing read; the
                                      queue borrows ready_prev/ready_next, a waiting session is
                                      never on the ready list; last_active_ms is when it began
                                      to wait); in what was padding */
    uint64_t pick_gen;             /* generation of the table used for the last pick */
    uint64_t last_active_ms;       /* monotonic ms of the last byte moved */
    double started;                /* unix time of accept */
    uint64_t bytes_c2b;            /* bytes written to the backend */
    uint64_t bytes_b2c;            /* bytes written to the client */
    struct relay_dir c2b;          /* client -> backend */
    struct relay_dir b2c;          /* backend -> client */
    struct relay_session *ready_prev; /* ready list links (sessions with budget left over) */
    struct relay_session *ready_next;
    struct relay_session *grave_next; /* dead sessions waiting to be freed after the batch */
    uint32_t syn_data;             /* bytes of the client's queue the kernel took into the
                                      current attempt's SYN (fast open); they stay in the client
                                      socket until the attempt connects, 0 = none */
    uint16_t tried_ids[RELAY_MAX_TRIES]; /* backend ids attempted (excluded on retry); ids
                                            are below DP_MAX_BACKENDS (65536) */
    union {                        /* two phases that never overlap: the header is read before
                                      any pick, so before any wait */
        uint32_t pin_skip;         /* RELAY_PIN_SKIP_*: header bytes (version 2 TLVs) still to
                                      discard once its addresses were read, 0 = none */
        uint32_t queue_ticket;     /* while it waits (queued): its place in its service's
                                      order across workers (sched_shared.q_issued) */
        uint32_t queue_ms;         /* once it left the queue: ms it waited there, 0 = never
                                      (the connection log's queued) */
    };
    uint8_t peer_addr[16];         /* accept_proxy: the real peer's address, network order,
                                      IPv4 in the first 4 bytes */
};
_Static_assert(DP_MAX_BACKENDS <= 65536u, "relay_session.tried_ids holds 16-bit backend ids");

/* The backends of one dp_close_backends() call (dp.c, "Close by backend"): built by the
 * caller before the command is queued, read by every worker at once, never written by one
 * except through `closed`. Membership is one bit test, so a worker's scan costs the same for
 * one backend or thousands; the per-backend count is found by a binary search in `ids`, paid
 * only for a session or flow that is closed. */
struct dp_close_set {
    uint64_t bits[DP_MAX_BACKENDS / 64]; /* bit id % 64 of word id / 64 set: id is in the set */
    const uint32_t *ids;           /* the members, ascending, each once */
    uint32_t n;                    /* how many members (1..DP_CLOSE_MAX_IDS) */
    _Atomic uint64_t *closed;      /* per member (same index as ids): sessions + flows closed,
                                      summed over the workers (relaxed adds) */
};

/* 1 when backend id (a session's or flow's, -1 = none) is in set. */
static inline int dp_close_set_has(const struct dp_close_set *set, int32_t id)
{
    return id >= 0 && (uint32_t)id < DP_MAX_BACKENDS &&
           (set->bits[(uint32_t)id / 64] >> ((uint32_t)id % 64) & 1u);
}

/* Count one close on member id (dp_close_set_has(set, id) holds). */
static inline void dp_close_set_count(struct dp_close_set *set, int32_t id)
{
    uint32_t lo = 0, hi = set->n, mid;

    while (hi - lo > 1) {
        mid = lo + (hi - lo) / 2;
        if (set->ids[mid] <= (uint32_t)id)
            lo = mid;
        else
            hi = mid;
    }
    atomic_fetch_add_explicit(&set->closed[lo], 1, memory_order_relaxed);
}

/* A request for a worker, queued by another thread, answered by the worker. */
enum dp_cmd_type {
    DP_CMD_ADD_LISTENER = 1, DP_CMD_DEL_LISTENER, DP_CMD_SNAPSHOT, DP_CMD_INTERNALS, DP_CMD_FLOWS,
    DP_CMD_CLOSE_BACKEND, DP_CMD_CONNLOG, DP_CMD_ID_QUIET, DP_CMD_ID_ZERO
};

struct dp_cmd {
    enum dp_cmd_type type;         /* what to do */
    struct dp_cmd *next;           /* queue link */
    int done;                      /* set by the worker under dp->cmd_lock */
    int rc;                        /* 0 or -errno */
    struct dp_listener *listener;  /* ADD (allocated by the caller) / DEL (returned to free) */
    int fd;                        /* DEL: fd to remove */
    struct dp_session_info *sessions; /* SNAPSHOT: malloc'ed array (by the worker) */
    size_t n_sessions;             /* SNAPSHOT: its length */
    struct dp_flow_info *flows;    /* FLOWS: malloc'ed array (by the worker) */
    size_t n_flows;                /* FLOWS: its length */
    struct dp_internals *internals;/* INTERNALS: accumulated into by the worker */
    struct dp_close_set *close_set;/* CLOSE_BACKEND: whose sessions and flows to close (the
                                      caller's; the worker adds its closes to its counts) */
    uint8_t reason;                /* CLOSE_BACKEND: why (enum dp_close_reason):
                                      DP_CLOSE_DRAIN_TIMEOUT or DP_CLOSE_BACKEND_DOWN */
    int log_on;                    /* CONNLOG: record closes from now on (1) or not (0) */
    struct connlog_ring *ring;     /* CONNLOG: a new ring to use (NULL: keep the current one);
                                      on return, the replaced ring for the caller to free */
    uint8_t id_service;            /* ID_QUIET / ID_ZERO: 1 = `id` is a service id, 0 = a
                                      backend id */
    uint32_t id;                   /* ID_QUIET / ID_ZERO: the id asked about / to zero */
    int busy;                      /* ID_QUIET: 1 when this worker's live table still has the id
                                      or a session or flow of this worker still counts on it */
};

/* What dp.c keeps of each listener it was given (under dp->cmd_lock). */
struct dp_lfd {
    int fd;                        /* the caller's socket */
    uint32_t worker;               /* the worker that polls it */
    uint32_t service_id;           /* its service */
    uint8_t proto;                 /* DP_PROTO_TCP or DP_PROTO_UDP */
    uint8_t family;                /* 4 or 6 */
    uint16_t lport;                /* local port */
    uint8_t laddr[16];             /* local address */
    uint32_t steered;              /* udp: size of the client-address steering program attached
                                      to its SO_REUSEPORT group, 0 = none (dp.c, "Steering") */
    uint8_t mark;                  /* scratch of dp_steer_sync */
};

struct dp;
struct relay_udp_io;
struct relay_udp_flow;

struct dp_worker {
    struct dp *dp;                 /* owner */
    uint32_t index;                /* 0..n_workers-1 */
    pthread_t thread;              /* the worker thread */
    uint8_t thread_started;        /* 1 once pthread_create succeeded */
    int epfd;                      /* this worker's epoll */
    int evfd;                      /* eventfd: commands, table publishes, stop */
    struct dp_ep ev_ep;            /* kind DP_EP_EVENTFD */
    _Atomic uint64_t seen_gen;     /* shared: generation of the table this worker uses now
                                      (UINT64_MAX when it holds no table) */
    _Atomic int stop_req;          /* shared: dp_stop() asked this worker to stop */
    uint64_t stop_deadline_ms;     /* shared (written before stop_req): when to close the rest */
    struct dp_cmd *cmd_head;       /* shared under dp->cmd_lock: pending commands */
    struct dp_cmd *cmd_tail;       /* shared under dp->cmd_lock */
    int exited;                    /* shared under dp->cmd_lock: takes no more commands */
    struct dp_listener **listeners;/* listeners owned (registered in epoll unless paused) */
    uint32_t n_listeners;          /* entries in listeners */
    uint32_t cap_listeners;        /* capacity of listeners */
    uint64_t paused_until_ms;      /* 0, or when accepting resumes after EMFILE */
    int reserve_fd[RELAY_RESERVE_FDS]; /* eventfds held only to be closed when fds run out */
    uint32_t n_reserve;            /* entries of reserve_fd in use */
    int stopping;                  /* stop seen: listeners off, draining sessions */
    struct ct_table ct;            /* sessions */
    struct pipepool pp;            /* pipes */
    struct sched_worker *sw;       /* scheduler state private to this worker */
    struct dp_counters *cnt;       /* counters written by this worker only */
    uint8_t *buf;                  /* copy buffer (copy_threshold bytes) */
    uint32_t buf_size;             /* its size, 0 = always splice */
    uint8_t copy_only;             /* 1: never switch to splice (benchmarks) */
    const struct dp_table *table;  /* table loaded at the top of this loop iteration */
    uint64_t now_ms;               /* monotonic ms at the top of this batch */
    struct relay_session *ready_head; /* sessions to pump again without waiting for epoll */
    struct relay_session *ready_tail;
    struct relay_session *grave;   /* sessions closed in this batch, freed after it */
    struct ct_table uct;           /* UDP flows (relay_udp.c) */
    struct relay_udp_io *uio;      /* UDP batch buffers (relay_udp.c), allocated at create */
    struct relay_udp_flow *ugrave; /* UDP flows ended in this batch, freed after the flush */
    uint32_t udp_moved;            /* datagrams read (either way) in this loop iteration */
    uint32_t udp_poll_us;          /* udp tuning: poll-mode sleep, 0 = never poll */
    uint8_t udp_polling;           /* 1: poll mode (sleep, then epoll_wait without blocking) */
    uint8_t udp_more;              /* a UDP read stopped at its budget: more may be waiting */
    uint8_t log_on;                /* connection log on: each close leaves a record in log_ring
                                      (written by this worker only, in a command) */
    struct relay_session *q_head;  /* oldest client waiting for a backend slot (relay_tcp.c,
                                      "The queue"; linked through ready_prev/ready_next) */
    struct relay_session *q_tail;  /* newest waiting client */
    uint32_t q_n;                  /* clients in this worker's queue */
    _Atomic uint32_t q_waiting;    /* shared: q_n for other workers, who kick this one's eventfd
                                      when they free a slot while it is not 0 */
    uint8_t q_kick;                /* a slot was freed (or a client queued) in this batch: try
                                      the queue after it */
    uint64_t q_retry_ms;           /* try the queue again at this time even without a kick */
    _Atomic uint64_t q_first[DP_MAX_SERVICES]; /* shared: per service, RELAY_QUEUE_FIRST | the
                                                  queue_ticket of this worker's oldest waiting
                                                  client of it, 0 = none (other workers leave
                                                  an older one its slot) */
    struct connlog_ring *log_ring; /* this worker's record ring (NULL until the log is first
                                      turned on); the worker produces, dp_closed_sessions
                                      consumes under dp->log_lock; replaced only in a command
                                      while the replacer holds dp->log_lock */
};

/* The backend-leg congestion control side table (see dp.c, "Congestion control"). */
struct dp_cc {
    pthread_mutex_t lock;          /* serialises setters (interning and per-service stores) */
    char names[DP_CC_MAX_NAMES][DP_CC_NAME_MAX]; /* interned names, NUL-terminated; slot i is
                                                    written once, before index i + 1 is
                                                    published, and never changed after */
    uint32_t n_names;              /* slots in use (under lock) */
    _Atomic uint8_t idx[DP_MAX_SERVICES]; /* per service id: 0 none, k names[k - 1]; stored with
                                             release, loaded with acquire */
};

/* Per-service options of the backend leg that are not in the forwarding table (see dp.c,
 * "Service options"): one atomic byte of DP_OPT_* bits per service id. */
#define DP_OPT_FAST_OPEN 0x01u     /* open backend connections with TCP Fast Open */
#define DP_OPT_NO_GRO 0x02u        /* udp: no GRO buffers on the service's listeners and upstream
                                      sockets (dp_set_udp_gro; relay_udp.c, "GRO buffers") */
#define DP_OPT_PROXY_V1 0x04u      /* tcp: a PROXY protocol version 1 header ahead of each
                                      backend connection (dp_set_proxy_protocol; relay_tcp.c,
                                      "PROXY protocol") */
#define DP_OPT_PROXY_V2 0x08u      /* tcp: the same in version 2 (at most one of the two) */
#define DP_OPT_PROXY (DP_OPT_PROXY_V1 | DP_OPT_PROXY_V2)

/* The accept_proxy side table (see dp.c, "Service options"): per service id, how long a new
 * client has to send its PROXY protocol header, 0 = the service expects none. */
struct dp_accept_proxy {
    _Atomic uint32_t timeout_ms[DP_MAX_SERVICES]; /* relaxed stores (dp_set_accept_proxy) and
                                                     loads (once per accepted client) */
};

/* The backend-leg socket buffer side table (see dp.c, "Socket buffers"). */
struct dp_sockbuf {
    _Atomic uint8_t force;         /* 1: the sizes go in with SO_SNDBUFFORCE / SO_RCVBUFFORCE
                                      (this process has CAP_NET_ADMIN: no net.core.*mem_max cap),
                                      0: plain SO_SNDBUF / SO_RCVBUF; stored (relaxed) by the
                                      setter before the sizes it probed, read after them */
    _Atomic uint64_t size[DP_MAX_SERVICES]; /* per service id: SO_SNDBUF bytes in the low 32
                                               bits, SO_RCVBUF in the high 32, 0 for the
                                               kernel's autotuning; stored with release, loaded
                                               with acquire once per connect attempt */
};

struct dp_svc_opts {
    _Atomic uint8_t bits[DP_MAX_SERVICES]; /* per service id: DP_OPT_* bits; relaxed stores
                                              (dp_set_fast_open, dp_set_udp_gro) and loads
                                              (once per attempt or flow): nothing else is
                                              published with them */
};

/* The data plane object (dp.h keeps it opaque). */
struct dp {
    uint32_t n_workers;            /* number of workers */
    struct dp_worker *workers;     /* n_workers entries */
    struct sched_shared *shared;   /* scheduler state shared by workers (atomics) */
    _Atomic(struct dp_table *) table; /* live table, NULL before the first publish */
    _Atomic uint64_t generation;   /* generation of the live table */
    pthread_mutex_t pub_lock;      /* serialises publishers and the reclaim list */
    struct dp_table **retired;     /* tables swapped out, not yet freed */
    uint32_t n_retired;            /* entries in retired */
    uint32_t cap_retired;          /* capacity of retired */
    pthread_mutex_t cmd_lock;      /* protects command queues, exited flags, lfds */
    pthread_cond_t cmd_cond;       /* broadcast when a command completes */
    pthread_mutex_t stop_lock;     /* serialises dp_stop() callers */
    int state;                     /* 0 created, 1 running, 2 stopped (under cmd_lock) */
    struct dp_lfd *lfd;            /* every listener (under cmd_lock) */
    uint32_t n_lfd;                /* entries in lfd */
    uint32_t cap_lfd;              /* capacity of lfd */
    pthread_mutex_t steer_lock;    /* serialises steering updates; taken before cmd_lock */
    uint64_t steer_gen;            /* generation steer_svc was taken from (under steer_lock) */
    uint8_t steer_svc[DP_MAX_SERVICES]; /* 1: udp service with flow_key 1 (under steer_lock) */
    uint32_t copy_threshold;       /* relay tuning: copy buffer size (0 = always splice) */
    uint32_t pipe_size;            /* relay tuning: pipe capacity */
    uint8_t copy_only;             /* relay tuning: never splice bulk data (benchmarks) */
    uint32_t udp_batch;            /* udp tuning: datagrams per recvmmsg/sendmmsg (1..32) */
    uint32_t udp_slot;             /* udp tuning: receive buffer per datagram (bytes) */
    uint32_t udp_poll_us;          /* udp tuning: poll-mode sleep in us, 0 = never poll */
    pthread_mutex_t log_lock;      /* serialises connection-log readers and setters */
    uint32_t log_capacity;         /* records per worker ring, 0 before the first enable
                                      (under log_lock) */
    struct dp_cc cc;               /* backend-leg congestion control per service */
    struct dp_svc_opts opts;       /* backend-leg options per service (fast open) */
    struct dp_sockbuf sockbuf;     /* backend-leg socket buffer sizes per service */
    struct dp_accept_proxy accept_proxy; /* client-leg PROXY header timeouts per service */
    _Atomic uint32_t be_hw;        /* 1 + the highest backend id any published table named:
                                      no counter at or above it was ever written (dp_stats) */
    _Atomic int64_t udp_flows;     /* udp flows open now, every worker and service: each holds
                                      one upstream socket (relay_udp.c, "Flow cap") */
    _Atomic uint32_t udp_flow_cap; /* at most this many udp flows at once, 0 = no cap
                                      (dp_set_udp_flow_cap; relaxed, read per new flow) */
    _Atomic uint32_t fd_ceiling;   /* descriptors numbered at or above it are the control
                                      plane's: the data plane keeps no new one there but the
                                      sockets of a session in hand (relay_tcp.c, "The fd
                                      reserve"); 0 = no ceiling (dp_set_fd_ceiling) */
};

/* True when fd is at or above w's data plane's descriptor ceiling (see struct dp). */
static inline int relay_fd_high(const struct dp_worker *w, int fd)
{
    uint32_t c = atomic_load_explicit(&w->dp->fd_ceiling, memory_order_relaxed);

    return c != 0 && (uint32_t)fd >= c;
}

/* Load the live table into w->table and publish the generation seen (see dp.c's essay). Only
 * call where no local variable still points at the previous table. */
static inline void dp_worker_refresh_table(struct dp_worker *w)
{
    struct dp_table *t = atomic_load_explicit(&w->dp->table, memory_order_acquire);

    if (t == w->table)
        return;
    w->table = t;
    atomic_store_explicit(&w->seen_gen, t ? t->generation : 0, memory_order_release);
}

/* relay_tcp.c: the fd reserve. fill: take fds until RELAY_RESERVE_FDS are held (0, or -EMFILE
 * and the listeners stay paused); spend: out of fds, give them all back so that the session in
 * hand can go on, and pause the listeners until fill succeeds again (returns how many). */
int relay_reserve_fill(struct dp_worker *w);
uint32_t relay_reserve_spend(struct dp_worker *w);
void relay_reserve_close(struct dp_worker *w);

/* relay_tcp.c: called by the worker loop in dp.c. */
void relay_tcp_accept(struct dp_worker *w, struct dp_listener *l);
void relay_tcp_event(struct dp_worker *w, struct dp_ep *ep, uint32_t events);
void relay_tcp_run_ready(struct dp_worker *w);
void relay_tcp_expire(struct ct_entry *e, void *arg);
void relay_tcp_reap(struct dp_worker *w);
void relay_tcp_close_all(struct dp_worker *w);
void relay_tcp_info(const struct relay_session *s, struct dp_session_info *out);
void relay_tcp_pause_listeners(struct dp_worker *w);
void relay_tcp_close_backends(struct dp_worker *w, struct dp_close_set *set, uint8_t reason);
/* relay_tcp.c, "The queue": dispatch waiting clients to freed slots (oldest first per service),
 * and close every waiting client at a stop (counted rejected, logged shutdown). */
void relay_tcp_queue_run(struct dp_worker *w);
void relay_tcp_queue_close_all(struct dp_worker *w);

/* relay_tcp.c, shared with relay_udp.c: fill ss with backend b's address; returns its length. */
socklen_t relay_backend_addr(const struct dp_backend *b, struct sockaddr_storage *ss);

/* relay_tcp.c, shared with relay_udp.c: give fd (a fresh, unconnected socket of b's family) b's
 * source address, when the table names one (b->source_family != 0; else it does nothing):
 * IP_BIND_ADDRESS_NO_PORT, then bind(source, port 0), so the kernel picks the port at connect()
 * and may reuse it towards other destinations. For DP_SOURCE_CLIENT (transparent) the source is
 * the session's client (cfamily, caddr: the key's, so a PROXY header's client under
 * accept_proxy; an IPv4-mapped IPv6 client is its IPv4 address), bound after IP_TRANSPARENT /
 * IPV6_TRANSPARENT; a client of the other family is -EAFNOSUPPORT (the relays never get there:
 * sched_pick leaves such a backend out for that client). Returns 0 or -errno (the
 * bind's or IP_TRANSPARENT's; IP_BIND_ADDRESS_NO_PORT is best effort). A failure is a failed
 * connect attempt of b (docs/configuration.md, `source`). */
int relay_bind_source(int fd, const struct dp_backend *b, uint8_t cfamily, const uint8_t *caddr);

/* Whether b is transparent (DP_SOURCE_CLIENT) and of the other family than the client
 * (cfamily, caddr; an IPv4-mapped IPv6 client counts as IPv4): no connection can leave from
 * the client's address towards b, so b is no candidate for this client (sched_pick leaves it
 * out). relay_connect_next uses it to tell a full service (rejected) from one with no backend
 * of the client's family (no_backend). */
int relay_client_other_family(const struct dp_backend *b, uint8_t cfamily, const uint8_t *caddr);

/* The family (4 or 6) a client (cfamily, caddr) binds as: an IPv4-mapped IPv6 client
 * (::ffff:a.b.c.d) is 4, any other its own cfamily. sched_pick takes it, so a transparent
 * backend of the other family is no candidate. */
uint8_t relay_client_family(uint8_t cfamily, const uint8_t *caddr);

/* Whether b is transparent (DP_SOURCE_CLIENT) and the client (cfamily, caddr) is one whose
 * address cannot be a backend connection's source: IPv6 link-local (fe80::/10; the key has no
 * scope id), or loopback (127.0.0.0/8, ::1, ::ffff:127.x.y.z) towards a backend that is not
 * on loopback. Such a session is the client's local error (accept_errors), never a connect
 * failure of b. */
int relay_client_unbindable(const struct dp_backend *b, uint8_t cfamily, const uint8_t *caddr);

/* Claim w's next connection-log record (call only while w->log_on), or NULL when the ring is
 * full (counted in connlog_dropped). Fill every field, then connlog_ring_commit(w->log_ring). */
static inline struct dp_conn_record *dp_log_claim(struct dp_worker *w)
{
    struct dp_conn_record *r = connlog_ring_claim(w->log_ring);

    if (!r)
        DP_CNT_ADD(&w->cnt->connlog_dropped, 1);
    return r;
}

/* The current time in unix seconds (for a record's duration; vDSO, no system call). */
static inline double dp_unix_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Add v to a service's / a backend's counter `idx` of this worker (single writer). */
static inline void dp_svc_add(struct dp_worker *w, uint32_t sid, int idx, int64_t v)
{
    DP_CNT_ADD(&w->cnt->svc[sid][idx], v);
}

static inline void dp_be_add(struct dp_worker *w, int32_t bid, int idx, int64_t v)
{
    DP_CNT_ADD(&w->cnt->be[(uint32_t)bid][idx], v);
}

#endif
