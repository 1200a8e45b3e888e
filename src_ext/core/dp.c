/* dp.c: the data plane object (worker threads, command queues, listeners, table swap, stop).
 *
 * Design.
 *
 * Threads. dp_start() creates N pthreads with every signal blocked (signals stay with Python's
 * main thread). A worker owns an epoll instance, an eventfd, its listeners, its TCP sessions and
 * its UDP flows (one ct_table each), its pipe pool, its UDP batch buffers, its scheduler state
 * and its counters; nothing of it is shared except the few fields marked "shared" in
 * relay_tcp.h. Workers never touch Python objects: the Cython class calls into this file with
 * the GIL released and only converts results afterwards.
 *
 * Loop. One iteration: epoll_wait; load the live table; hand each event to its relay (a TCP
 * listener accepts, a UDP listener is read by recvmmsg, sockets of sessions and flows pump);
 * pump the TCP ready list; flush the UDP replies gathered in the iteration (relay_udp.c);
 * fire due timers of both tables; try the TCP queue when this worker holds waiting clients and
 * a slot was freed (here, or on another worker: its eventfd write) or the queue's retry time
 * came (relay_tcp.c, "The queue"); free what was closed; run queued commands. Under heavy UDP
 * load the worker switches to poll mode (relay_udp.c, "Polling"): a short sleep before a
 * non-blocking epoll_wait, so that arrivals queue up into deeper batches instead of waking it.
 *
 * Listeners. dp_add_listener() takes a listening TCP socket or a bound UDP socket (SO_TYPE says
 * which), nonblocking either way; on a UDP socket bound to a wildcard address it turns on
 * IP_PKTINFO / IPV6_RECVPKTINFO (the reply source, relay_udp.c). dp.c remembers every listener
 * it was given (dp->lfd, under cmd_lock).
 *
 * Steering. A UDP service with flow_key 1 keys flows by the client address alone, but the
 * kernel spreads a SO_REUSEPORT group over its sockets by the 4-tuple, so two ports of one
 * client could land on two workers (two flows, maybe two backends). dp_steer_sync() therefore
 * attaches a classic BPF program to each such group (SO_ATTACH_REUSEPORT_CBPF) that picks the
 * socket by the source address only, sized to the number of sockets we were given for that
 * address and port, and detaches it when the service no longer needs it. It runs after a
 * publish that changes which services need it and after a UDP listener comes or goes. A caller
 * must not keep, in a steered group, open sockets it did not give us (or took back).
 *
 * Commands. Other threads talk to a worker through a queue guarded by dp->cmd_lock plus a write
 * to the worker's eventfd. The worker drains its queue after each epoll batch (never in the
 * middle of one, so a listener it removes cannot have a stale event pending) and marks each
 * command done under the lock, broadcasting dp->cmd_cond; the caller waits on that condvar.
 * remove_listener(), sessions() and internals() are such round trips, so they see a consistent
 * state of each worker and return only after the worker acted. A worker that has exited sets
 * `exited` under the same lock, after which callers act on its (now quiescent) state directly,
 * so no caller can wait for an answer that never comes.
 *
 * Table swap (RCU-like, publisher-side reclaim). dp_publish() parses and validates the blob
 * without any lock held by workers, stamps generation = previous + 1, and exchanges the atomic
 * table pointer. Each worker loads the pointer once per loop iteration, right after epoll_wait
 * returns (and again before an accept batch, so a connection that arrives after publish()
 * returned is admitted under the new table), and stores the generation it loaded into its
 * seen_gen (release). It reloads only where no local variable points at a table, and established
 * sessions keep ids, never pointers, so w->table is the only table a worker holds. A retired
 * table R can be freed once every worker's seen_gen > R.generation: a worker's seen_gen never
 * exceeds the generation of the table it holds, and the release/acquire pair orders its last
 * use of R before the free. A worker that is not running reports UINT64_MAX; dp_start() sets 0
 * before the thread exists. Each publish wakes the workers through their eventfds so that idle
 * workers move past old tables promptly, and reclaims whatever has become free; dp_stats() (which
 * the control plane polls) and dp_stop() reclaim too, so retired tables do not outlive the next
 * poll. Forwarding never
 * waits for a publisher and a publisher never waits for a worker.
 *
 * Stop. dp_stop() sets each worker's deadline and stop flag and wakes it. The worker takes its
 * listeners out of epoll, keeps relaying until it has no sessions and no flows or the deadline
 * passes (a UDP flow idle for 250 ms counts as done), then resets what is left, answers pending
 * commands and exits; dp_stop() joins every thread. The caller keeps ownership of listener fds
 * throughout: the data plane never closes them.
 *
 * Close by backend. dp_close_backends() is one command to every worker at once (dp_ask_all),
 * however many backends it names: the caller first builds a struct dp_close_set (relay_tcp.h;
 * a bitmap over the whole backend id space, 8 KiB, plus the sorted distinct ids and one count
 * each), so that each worker makes ONE pass over its sessions and ONE over its flows, testing
 * each against the bitmap, between two epoll batches; it resets the TCP sessions and ends the
 * UDP flows of those backends, frees them (logged with the caller's reason: a drain's deadline
 * or a backend gone DOWN) and adds each close to its backend's count (a relaxed atomic add:
 * the workers scan at the same time; the caller reads the counts after every worker has
 * answered under cmd_lock). The cost of a call is therefore one scan of every session slot
 * plus the closes, not one scan per backend: 50 backends going DOWN together cost what one
 * does. The set holds at most DP_CLOSE_MAX_IDS ids (the whole id space, so one call can name
 * every backend; duplicates allowed); dp_close_backend_sessions() is the one-id form. A worker
 * that is not running holds nothing to close.
 *
 * Connection log. Off by default. dp_set_connection_log() gives each worker a bounded
 * single-producer / single-consumer ring of records (connlog_ring.c) and sets the worker's
 * log_on flag, both through a command (or directly on a worker that is not running), so those
 * two fields only ever change on the worker's own thread or while it is quiescent; the relays
 * then fill one record per close in place (relay_tcp.c, relay_udp.c: "reasons"). A full ring
 * refuses the new record and counts it in connlog_dropped; nothing on the worker side waits,
 * locks or allocates. dp_closed_sessions() empties the rings without asking any worker:
 * dp->log_lock makes it the one consumer, and it reads each ring's committed records with
 * acquire loads. A capacity change allocates new rings in the caller and lets each worker move
 * its queued records over (the setter holds log_lock, so no reader is in the old ring), then
 * frees the old ones. Turning the log off clears log_on and keeps the rings and what they hold.
 *
 * Congestion control. A TCP service may name the algorithm of its backend leg
 * (dp_set_congestion_control; the client leg is the caller's business: accepted sockets inherit
 * TCP_CONGESTION from their listener). It is not in the forwarding table, whose service records
 * have a fixed size (docs/forwarding-table.md), but in a side table of its own (struct dp_cc,
 * dp->cc): up to DP_CC_MAX_NAMES interned names, each written once under cc.lock and never
 * changed or freed until dp_destroy, plus one atomic byte per service, 0 for none or k for names[k - 1]. A setter
 * writes the name (when new) and then stores the byte with release; the relay loads the byte
 * with acquire once per connect attempt and, when it is not 0, passes the name to setsockopt
 * before connect(). So a worker sees a whole name or none, never a torn one, and never waits;
 * services without the setting pay one load and a branch. A name is tried on a scratch socket
 * before it is interned, so an unknown or forbidden one is refused (-ENOENT, -EPERM) instead of
 * failing on every connection; a setsockopt that still fails later (a module unloaded
 * meanwhile) leaves that connection on the system default.
 *
 * Socket buffers. A TCP service may cap the socket buffers of its backend leg
 * (dp_set_socket_buffers; the client leg, again, is the caller's: accepted sockets inherit
 * SO_SNDBUF / SO_RCVBUF from their listener). Another side table (struct dp_sockbuf,
 * dp->sockbuf): one atomic 64-bit word per service id holding both sizes, so the relay pays one
 * acquire load and a branch per connect attempt when a service has none, and sees both sizes of
 * one setter call together. The setter first applies the sizes to a scratch socket: SO_*FORCE
 * when the process may (CAP_NET_ADMIN; the size is then not capped at net.core.wmem_max /
 * rmem_max), else the plain options; which one worked goes into sockbuf.force before the word
 * is stored, so the relay issues exactly one setsockopt per size and never a failing FORCE
 * first. A backend socket that still refuses (capabilities dropped meanwhile) counts
 * sockbuf_errors for its service and the session goes on with the kernel's buffers: a cap is a
 * memory bound, not a reason to refuse a client.
 *
 * Service options. Other per-service switches of the backend leg live beside it in one more
 * side table (struct dp_svc_opts, dp->opts): one atomic byte of DP_OPT_* bits per service id,
 * stored and loaded relaxed, since no other data is published with a bit. They are
 * DP_OPT_FAST_OPEN (dp_set_fast_open; relay_tcp.c, "Fast open"), DP_OPT_PROXY_V1/V2
 * (dp_set_proxy_protocol; relay_tcp.c, "PROXY protocol") and DP_OPT_NO_GRO (dp_set_udp_gro;
 * relay_udp.c, "GRO buffers"). The relay reads the byte once per connect
 * attempt or new flow, so a change applies from the next one on; services without options pay
 * that load and a branch. The client leg's accept_proxy is a word per service id of its own
 * (struct dp_accept_proxy: the header timeout, 0 = none; dp_set_accept_proxy), read once per
 * accepted client (relay_tcp.c, "Receiving the PROXY protocol"). dp_set_udp_gro also sets the
 * socket option on the service's listeners itself, under cmd_lock, from the caller's thread.
 *
 * Counters. Per worker, single writer, relaxed stores (no locked instruction on the data path);
 * dp_stats() sums them with relaxed loads. The only shared read-modify-writes on the data path
 * are the scheduler's active counts in sched_shared, which least_conn and max_connections need
 * to be global.
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdio.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <linux/filter.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "relay_udp.h"

#ifndef SO_ATTACH_REUSEPORT_CBPF
#define SO_ATTACH_REUSEPORT_CBPF 51
#endif
#ifndef SO_DETACH_REUSEPORT_BPF
#define SO_DETACH_REUSEPORT_BPF 68
#endif

#define DP_EVENTS 256u               /* epoll events per wait */
#define DP_COPY_DEFAULT 16384u       /* default copy buffer (see relay_tcp.c, bench figures) */
#define DP_PIPE_DEFAULT 0u           /* default pipe size: kernel default (64 KiB) */
#define DP_PIPE_POOL_CAP 256u        /* idle pipes kept per worker */

static uint64_t dp_mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Wake worker w (commands, new table, stop). */
static void dp_wake(struct dp_worker *w)
{
    uint64_t one = 1;

    if (w->evfd >= 0)
        (void)!write(w->evfd, &one, sizeof(one));
}

/* Register listener l in w's epoll (level-triggered). */
static int dp_listener_arm(struct dp_worker *w, struct dp_listener *l)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &l->ep };

    if (l->in_epoll)
        return 0;
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, l->fd, &ev) < 0)
        return -errno;
    l->in_epoll = 1;
    return 0;
}

static void dp_listener_disarm(struct dp_worker *w, struct dp_listener *l)
{
    if (!l->in_epoll)
        return;
    (void)epoll_ctl(w->epfd, EPOLL_CTL_DEL, l->fd, NULL);
    l->in_epoll = 0;
}

/* Append l to w's listener array. */
static int dp_listener_push(struct dp_worker *w, struct dp_listener *l)
{
    if (w->n_listeners == w->cap_listeners) {
        uint32_t cap = w->cap_listeners ? w->cap_listeners * 2 : 8;
        struct dp_listener **a = realloc(w->listeners, cap * sizeof(*a));
        if (!a)
            return -ENOMEM;
        w->listeners = a;
        w->cap_listeners = cap;
    }
    w->listeners[w->n_listeners++] = l;
    return 0;
}

/* Remove the listener with this fd from w (epoll and array) and free it. */
static int dp_listener_drop(struct dp_worker *w, int fd)
{
    uint32_t i;

    for (i = 0; i < w->n_listeners; i++) {
        struct dp_listener *l = w->listeners[i];
        if (l->fd != fd)
            continue;
        dp_listener_disarm(w, l);
        if (l->proto == DP_PROTO_UDP) {
            /* its flows reply through it: end them (nothing is pending between batches) */
            relay_udp_listener_gone(w, l);
            relay_udp_reap(w);
        }
        w->listeners[i] = w->listeners[--w->n_listeners];
        free(l);
        return 0;
    }
    return -ENOENT;
}

/* Count the worker's pools and sessions into out (worker thread, or a quiescent worker). */
static void dp_worker_internals(struct dp_worker *w, struct dp_internals *out)
{
    out->pipes_created += w->pp.created;
    out->pipes_reused += w->pp.reused;
    out->pipes_closed += w->pp.closed;
    out->pipes_in_use += w->pp.in_use;
    out->pipes_idle += w->pp.n_free;
    if (w->pp.actual_size)
        out->pipe_size = w->pp.actual_size;
    out->sessions += w->ct.n_live;
    out->slab_bytes += (uint64_t)w->ct.n_chunks * CT_SLAB_CHUNK * w->ct.obj_size;
    out->session_size = w->ct.obj_size;
    out->listener_pauses += __atomic_load_n(&w->cnt->listener_pauses, __ATOMIC_RELAXED);
    out->park_allocs += __atomic_load_n(&w->cnt->park_allocs, __ATOMIC_RELAXED);
    out->copy_sends += __atomic_load_n(&w->cnt->copy_sends, __ATOMIC_RELAXED);
    out->splice_moves += __atomic_load_n(&w->cnt->splice_moves, __ATOMIC_RELAXED);
    out->splice_fallbacks += __atomic_load_n(&w->cnt->splice_fallbacks, __ATOMIC_RELAXED);
    out->flows += w->uct.n_live;
    out->flow_slab_bytes += (uint64_t)w->uct.n_chunks * CT_SLAB_CHUNK * w->uct.obj_size;
    out->flow_size = w->uct.obj_size;
    out->udp_buf_bytes += w->uio->mem_len;
    out->udp_rx_calls += __atomic_load_n(&w->cnt->udp_rx_calls, __ATOMIC_RELAXED);
    out->udp_rx_datagrams += __atomic_load_n(&w->cnt->udp_rx_datagrams, __ATOMIC_RELAXED);
    out->udp_tx_calls += __atomic_load_n(&w->cnt->udp_tx_calls, __ATOMIC_RELAXED);
    out->udp_tx_datagrams += __atomic_load_n(&w->cnt->udp_tx_datagrams, __ATOMIC_RELAXED);
    out->udp_up_calls += __atomic_load_n(&w->cnt->udp_up_calls, __ATOMIC_RELAXED);
    out->udp_up_datagrams += __atomic_load_n(&w->cnt->udp_up_datagrams, __ATOMIC_RELAXED);
    out->udp_out_calls += __atomic_load_n(&w->cnt->udp_out_calls, __ATOMIC_RELAXED);
    out->udp_out_datagrams += __atomic_load_n(&w->cnt->udp_out_datagrams, __ATOMIC_RELAXED);
    out->udp_gso_datagrams += __atomic_load_n(&w->cnt->udp_gso_datagrams, __ATOMIC_RELAXED);
    out->udp_gro_datagrams += __atomic_load_n(&w->cnt->udp_gro_datagrams, __ATOMIC_RELAXED);
    out->udp_poll_sleeps += __atomic_load_n(&w->cnt->udp_poll_sleeps, __ATOMIC_RELAXED);
    out->loop_iterations += __atomic_load_n(&w->cnt->loop_iterations, __ATOMIC_RELAXED);
    out->close_passes += __atomic_load_n(&w->cnt->close_passes, __ATOMIC_RELAXED);
    out->queue_kicks += __atomic_load_n(&w->cnt->queue_kicks, __ATOMIC_RELAXED);
}

/* State passed to the snapshot callback. */
struct dp_snap {
    struct dp_session_info *out;   /* array being filled */
    size_t n;                      /* entries filled */
    size_t cap;                    /* its capacity */
};

static void dp_snap_one(struct ct_entry *e, void *arg)
{
    struct dp_snap *sn = arg;
    const struct relay_session *s = (const struct relay_session *)e;

    if (s->state == RELAY_DEAD || sn->n >= sn->cap)
        return;
    relay_tcp_info(s, &sn->out[sn->n++]);
}

/* Snapshot w's sessions into a new array (worker thread, or a quiescent worker). */
static int dp_worker_snapshot(struct dp_worker *w, struct dp_session_info **out, size_t *n)
{
    struct dp_snap sn = { .cap = w->ct.n_live };

    *out = NULL;
    *n = 0;
    if (!sn.cap)
        return 0;
    sn.out = calloc(sn.cap, sizeof(*sn.out));
    if (!sn.out)
        return -ENOMEM;
    ct_foreach(&w->ct, dp_snap_one, &sn);
    *out = sn.out;
    *n = sn.n;
    return 0;
}

/* State passed to the flow snapshot callback. */
struct dp_fsnap {
    struct dp_flow_info *out;      /* array being filled */
    size_t n;                      /* entries filled */
    size_t cap;                    /* its capacity */
    uint64_t now_ms;               /* monotonic now */
    double now_unix;               /* the same instant, unix seconds */
};

static void dp_fsnap_one(struct ct_entry *e, void *arg)
{
    struct dp_fsnap *sn = arg;
    const struct relay_udp_flow *f = (const struct relay_udp_flow *)e;

    if (f->dead || sn->n >= sn->cap)
        return;
    relay_udp_info(f, sn->now_ms, sn->now_unix, &sn->out[sn->n++]);
}

/* Snapshot w's UDP flows into a new array (worker thread, or a quiescent worker). */
static int dp_worker_flows(struct dp_worker *w, struct dp_flow_info **out, size_t *n)
{
    struct dp_fsnap sn = { .cap = w->uct.n_live };
    struct timespec ts;

    *out = NULL;
    *n = 0;
    if (!sn.cap)
        return 0;
    sn.out = calloc(sn.cap, sizeof(*sn.out));
    if (!sn.out)
        return -ENOMEM;
    sn.now_ms = dp_mono_ms();
    clock_gettime(CLOCK_REALTIME, &ts);
    sn.now_unix = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    ct_foreach(&w->uct, dp_fsnap_one, &sn);
    *out = sn.out;
    *n = sn.n;
    return 0;
}

/* Switch w's connection log (worker thread, or a worker that is not running): a new ring takes
 * over what the old one holds (what does not fit is counted as dropped) and the old ring goes
 * back to the caller in c->ring. Runs while the caller holds dp->log_lock, so no reader is in
 * the old ring. */
static void dp_worker_connlog(struct dp_worker *w, struct dp_cmd *c)
{
    struct connlog_ring *old = w->log_ring;

    if (c->ring) {
        if (old)
            DP_CNT_ADD(&w->cnt->connlog_dropped, connlog_ring_move(old, c->ring));
        w->log_ring = c->ring;
        c->ring = old;
    }
    w->log_on = c->log_on && w->log_ring;
}

/* 1 while worker w may still count anything on a service or backend id: the live table (which
 * the worker adopts first) has it, or a session or flow of w counts on it (a session counts on
 * its backend from the pick on, connecting included; see dp_reset_counters). */
static int dp_worker_id_busy(struct dp_worker *w, int service, uint32_t id)
{
    const struct dp_table *t;
    const uint64_t *v;
    uint32_t i;

    dp_worker_refresh_table(w);
    t = w->table;
    if (service) {
        v = w->cnt->svc[id];
        if (t && dp_table_service(t, id))
            return 1;
        return v[DP_SC_CONNS_ACTIVE] != 0 || v[DP_SC_FLOWS_ACTIVE] != 0;
    }
    for (i = 0; t && i < t->n_backends; i++)
        if (t->backends[i].backend_id == id)
            return 1;
    v = w->cnt->be[id];
    return v[DP_BC_CONNS_ACTIVE] != 0 || v[DP_BC_FLOWS_ACTIVE] != 0;
}

/* Execute one command on worker w. */
static void dp_worker_exec(struct dp_worker *w, struct dp_cmd *c)
{
    switch (c->type) {
    case DP_CMD_ADD_LISTENER:
        c->rc = dp_listener_push(w, c->listener);
        if (c->rc == 0 && !w->stopping && !w->paused_until_ms) {
            c->rc = dp_listener_arm(w, c->listener);
            if (c->rc)
                w->n_listeners--;
        }
        break;
    case DP_CMD_DEL_LISTENER:
        c->rc = dp_listener_drop(w, c->fd);
        break;
    case DP_CMD_SNAPSHOT:
        c->rc = dp_worker_snapshot(w, &c->sessions, &c->n_sessions);
        break;
    case DP_CMD_INTERNALS:
        dp_worker_internals(w, c->internals);
        c->rc = 0;
        break;
    case DP_CMD_FLOWS:
        c->rc = dp_worker_flows(w, &c->flows, &c->n_flows);
        break;
    case DP_CMD_CLOSE_BACKEND:
        relay_tcp_close_backends(w, c->close_set, c->reason);
        relay_udp_close_backends(w, c->close_set, c->reason);
        DP_CNT_ADD(&w->cnt->close_passes, 1);
        c->rc = 0;
        break;
    case DP_CMD_CONNLOG:
        dp_worker_connlog(w, c);
        c->rc = 0;
        break;
    case DP_CMD_ID_QUIET:
        c->busy = dp_worker_id_busy(w, c->id_service, c->id);
        c->rc = 0;
        break;
    case DP_CMD_ID_ZERO:
        if (c->id_service) {
            memset(w->cnt->svc[c->id], 0, sizeof(w->cnt->svc[c->id]));
            w->cnt->sockbuf_errors[c->id] = 0;
        } else
            memset(w->cnt->be[c->id], 0, sizeof(w->cnt->be[c->id]));
        c->rc = 0;
        break;
    }
}

/* Run every queued command and mark each done. */
static void dp_worker_commands(struct dp_worker *w)
{
    struct dp *dp = w->dp;
    struct dp_cmd *c, *next;

    pthread_mutex_lock(&dp->cmd_lock);
    c = w->cmd_head;
    w->cmd_head = w->cmd_tail = NULL;
    pthread_mutex_unlock(&dp->cmd_lock);
    if (!c)
        return;
    for (struct dp_cmd *x = c; x; x = x->next)
        dp_worker_exec(w, x);
    pthread_mutex_lock(&dp->cmd_lock);
    for (; c; c = next) {
        next = c->next;
        c->done = 1; /* c may vanish once the lock is released */
    }
    pthread_cond_broadcast(&dp->cmd_cond);
    pthread_mutex_unlock(&dp->cmd_lock);
}

/* epoll_wait timeout for this iteration, in ms (-1 = none). */
static int dp_worker_timeout(struct dp_worker *w)
{
    int64_t t = -1, x;

    if (w->ready_head)
        return 0;
    x = ct_wheel_next_ms(&w->ct, w->now_ms);
    if (x >= 0)
        t = x;
    x = ct_wheel_next_ms(&w->uct, w->now_ms);
    if (x >= 0 && (t < 0 || x < t))
        t = x;
    if (w->paused_until_ms && !w->stopping) {
        x = w->paused_until_ms > w->now_ms ? (int64_t)(w->paused_until_ms - w->now_ms) : 0;
        t = t < 0 || x < t ? x : t;
    }
    if (w->stopping) {
        x = w->stop_deadline_ms > w->now_ms ? (int64_t)(w->stop_deadline_ms - w->now_ms) : 0;
        t = t < 0 || x < t ? x : t;
    }
    if (w->q_n) { /* clients wait for a slot: look again at q_retry_ms at the latest */
        x = w->q_retry_ms > w->now_ms ? (int64_t)(w->q_retry_ms - w->now_ms) : 0;
        t = t < 0 || x < t ? x : t;
    }
    if (t > 3600000)
        t = 3600000;
    return (int)t;
}

static void *dp_worker_main(void *arg)
{
    struct dp_worker *w = arg;
    struct dp *dp = w->dp;
    struct epoll_event evs[DP_EVENTS];
    uint32_t i;
    int n, cmds;

    w->now_ms = dp_mono_ms();
    w->table = NULL; /* seen_gen is 0 (set by dp_start): holds nothing yet */
    /* poll-mode sleeps are tens of microseconds: do not let the default 50 us slack double them */
    (void)prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    {   /* named for top -H, perf and /proc/PID/task/TID/comm: "l4lb-w0", "l4lb-w1", ... */
        char name[16];
        (void)snprintf(name, sizeof(name), "l4lb-w%u", w->index);
        (void)prctl(PR_SET_NAME, (unsigned long)name, 0UL, 0UL, 0UL);
    }
    (void)relay_reserve_fill(w); /* short of it: the first spend has less to give back */
    for (i = 0; i < w->n_listeners; i++)
        (void)dp_listener_arm(w, w->listeners[i]);
    for (;;) {
        int timeout = dp_worker_timeout(w);
        if (w->udp_polling && timeout != 0 && !w->udp_more) {
            /* poll mode (relay_udp.c, "Polling"): a short sleep that arrivals cannot cut short,
             * then collect whatever came in meanwhile */
            struct timespec nap = { 0, (long)w->udp_poll_us * 1000 };
            nanosleep(&nap, NULL);
            DP_CNT_ADD(&w->cnt->udp_poll_sleeps, 1);
            timeout = 0;
        }
        /* syscall(2), not glibc's epoll_wait(): that is a cancellation point, which costs two
         * atomic updates per call in a multithreaded process (relay_tcp.c, relay_recv) */
#if DP_LIBC_CALLS
        n = epoll_wait(w->epfd, evs, DP_EVENTS, timeout);
#else
        n = (int)syscall(SYS_epoll_pwait, w->epfd, evs, (int)DP_EVENTS, timeout, NULL,
                         (size_t)8);
#endif
        DP_CNT_ADD(&w->cnt->loop_iterations, 1);
        w->now_ms = dp_mono_ms();
        w->udp_moved = 0;
        w->udp_more = 0;
        dp_worker_refresh_table(w);
        cmds = 0;
        for (i = 0; n > 0 && i < (uint32_t)n; i++) {
            struct dp_ep *ep = evs[i].data.ptr;
            switch (ep->kind) {
            case DP_EP_LISTENER: {
                struct dp_listener *l = (struct dp_listener *)ep;
                if (!l->in_epoll || w->stopping)
                    break;
                if (l->proto == DP_PROTO_UDP)
                    relay_udp_read(w, l);
                else
                    relay_tcp_accept(w, l);
                break;
            }
            case DP_EP_EVENTFD: {
                uint64_t v;
                (void)!read(w->evfd, &v, sizeof(v));
                cmds = 1;
                break;
            }
            case DP_EP_UDP_FLOW:
                relay_udp_event(w, ep, evs[i].events);
                break;
            default:
                relay_tcp_event(w, ep, evs[i].events);
                break;
            }
        }
        relay_tcp_run_ready(w);
        relay_udp_flush(w); /* the replies gathered in this batch, in one sendmmsg per listener */
        if (!w->udp_polling)
            w->udp_polling = w->udp_poll_us && !w->stopping && w->udp_moved >= RELAY_UDP_POLL_ENTER;
        else if (w->udp_moved < RELAY_UDP_POLL_LEAVE || w->stopping)
            w->udp_polling = 0;
        ct_wheel_advance(&w->ct, w->now_ms, relay_tcp_expire, w);
        ct_wheel_advance(&w->uct, w->now_ms, relay_udp_expire, w);
        /* waiting clients (relay_tcp.c, "The queue"): a slot freed here or on another worker
         * (whose kick is the eventfd: cmds), or the retry tick */
        if (__builtin_expect(w->q_n != 0, 0) &&
            (w->q_kick || cmds || w->now_ms >= w->q_retry_ms))
            relay_tcp_queue_run(w);
        relay_tcp_reap(w);
        relay_udp_reap(w);
        if (cmds)
            dp_worker_commands(w);
        if (!w->stopping && atomic_load_explicit(&w->stop_req, memory_order_acquire)) {
            w->stopping = 1;
            for (i = 0; i < w->n_listeners; i++)
                dp_listener_disarm(w, w->listeners[i]);
            relay_udp_stopping(w);
            relay_tcp_queue_close_all(w); /* no slot is promised to them: closed now */
            relay_tcp_reap(w);
        }
        if (w->paused_until_ms && w->now_ms >= w->paused_until_ms) {
            if (relay_reserve_fill(w) != 0) { /* still short of fds: stay paused */
                w->paused_until_ms = w->now_ms + RELAY_EMFILE_PAUSE_MS;
            } else {
                w->paused_until_ms = 0;
                if (!w->stopping)
                    for (i = 0; i < w->n_listeners; i++)
                        (void)dp_listener_arm(w, w->listeners[i]);
            }
        }
        if (w->stopping && ((w->ct.n_live == 0 && w->uct.n_live == 0) ||
                            w->now_ms >= w->stop_deadline_ms))
            break;
    }
    relay_tcp_close_all(w);
    relay_udp_close_all(w);
    relay_reserve_close(w);
    /* answer what is queued, then refuse further commands (callers act directly) */
    dp_worker_commands(w);
    pthread_mutex_lock(&dp->cmd_lock);
    w->exited = 1;
    pthread_mutex_unlock(&dp->cmd_lock);
    dp_worker_commands(w);
    w->table = NULL;
    atomic_store_explicit(&w->seen_gen, UINT64_MAX, memory_order_release);
    return NULL;
}

/* Queue c for w and wait until it is done. Called with dp->cmd_lock held; returns with it held.
 * Returns -ESRCH when the worker does not take commands (not running); c was not run then. */
static int dp_call_locked(struct dp *dp, struct dp_worker *w, struct dp_cmd *c)
{
    if (!w->thread_started || w->exited)
        return -ESRCH;
    c->next = NULL;
    c->done = 0;
    if (w->cmd_tail)
        w->cmd_tail->next = c;
    else
        w->cmd_head = c;
    w->cmd_tail = c;
    dp_wake(w);
    while (!c->done)
        pthread_cond_wait(&dp->cmd_cond, &dp->cmd_lock);
    return 0;
}

int dp_create(uint32_t n_workers, struct dp **out)
{
    struct dp *dp;
    uint32_t i;
    uint64_t now = dp_mono_ms();
    int rc = -ENOMEM;

    *out = NULL;
    if (n_workers < 1 || n_workers > DP_MAX_WORKERS)
        return -EINVAL;
    dp = calloc(1, sizeof(*dp));
    if (!dp)
        return -ENOMEM;
    pthread_mutex_init(&dp->cc.lock, NULL);
    dp->n_workers = n_workers;
    dp->copy_threshold = DP_COPY_DEFAULT;
    dp->pipe_size = DP_PIPE_DEFAULT;
    dp->udp_batch = RELAY_UDP_BATCH;
    dp->udp_slot = RELAY_UDP_MAX;
    dp->udp_poll_us = RELAY_UDP_POLL_US;
    atomic_init(&dp->table, NULL);
    atomic_init(&dp->generation, 0);
    pthread_mutex_init(&dp->pub_lock, NULL);
    pthread_mutex_init(&dp->cmd_lock, NULL);
    pthread_mutex_init(&dp->stop_lock, NULL);
    pthread_mutex_init(&dp->steer_lock, NULL);
    pthread_mutex_init(&dp->log_lock, NULL);
    pthread_cond_init(&dp->cmd_cond, NULL);
    dp->shared = calloc(1, sizeof(*dp->shared));
    dp->workers = calloc(n_workers, sizeof(*dp->workers));
    for (i = 0; dp->workers && i < n_workers; i++) {
        struct dp_worker *w = &dp->workers[i];
        w->epfd = w->evfd = -1;
        atomic_init(&w->seen_gen, UINT64_MAX);
        atomic_init(&w->stop_req, 0);
    }
    if (!dp->shared || !dp->workers)
        goto fail;
    sched_shared_init(dp->shared);
    for (i = 0; i < n_workers; i++) {
        struct dp_worker *w = &dp->workers[i];
        struct epoll_event ev = { .events = EPOLLIN };
        w->dp = dp;
        w->index = i;
        w->udp_poll_us = RELAY_UDP_POLL_US;
        w->ev_ep.kind = DP_EP_EVENTFD;
        w->epfd = epoll_create1(EPOLL_CLOEXEC);
        w->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (w->epfd < 0 || w->evfd < 0) {
            rc = -errno;
            goto fail;
        }
        ev.data.ptr = &w->ev_ep;
        if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->evfd, &ev) < 0) {
            rc = -errno;
            goto fail;
        }
        w->sw = calloc(1, sizeof(*w->sw));
        w->cnt = calloc(1, sizeof(*w->cnt));
        if (!w->sw || !w->cnt)
            goto fail;
        sched_worker_init(w->sw, 0x9e3779b97f4a7c15ull ^ ((uint64_t)(i + 1) * 0xbf58476d1ce4e5b9ull));
        if ((rc = ct_init(&w->ct, sizeof(struct relay_session), now)) != 0)
            goto fail;
        if ((rc = ct_init(&w->uct, sizeof(struct relay_udp_flow), now)) != 0)
            goto fail;
        if ((rc = relay_udp_io_create(&w->uio, RELAY_UDP_BATCH, RELAY_UDP_MAX)) != 0)
            goto fail;
        if ((rc = pipepool_init(&w->pp, DP_PIPE_POOL_CAP, dp->pipe_size)) != 0)
            goto fail;
        w->pp.fd_ceiling = &dp->fd_ceiling;
    }
    *out = dp;
    return 0;
fail:
    dp_destroy(dp);
    return rc;
}

int dp_set_tuning(struct dp *dp, uint32_t copy_threshold, uint32_t pipe_size, int copy_only)
{
    uint32_t i;
    int rc = 0;

    /* a partly sent copy chunk is parked in an empty pipe, so a pipe must hold a whole chunk */
    if (copy_threshold > 65536u || pipe_size > (64u << 20) || (copy_only && !copy_threshold) ||
        (pipe_size && pipe_size < copy_threshold))
        return -EINVAL;
    pthread_mutex_lock(&dp->cmd_lock);
    if (dp->state != 0)
        rc = -EBUSY;
    else {
        dp->copy_threshold = copy_threshold;
        dp->pipe_size = pipe_size;
        dp->copy_only = copy_only != 0;
        for (i = 0; i < dp->n_workers; i++)
            dp->workers[i].pp.pipe_size = pipe_size;
    }
    pthread_mutex_unlock(&dp->cmd_lock);
    return rc;
}

int dp_set_udp_tuning(struct dp *dp, uint32_t batch, uint32_t slot, int gso, int gro,
                      uint32_t poll_us)
{
    uint32_t i, k;
    int rc = 0;

    if (batch < 1 || batch > RELAY_UDP_BATCH || slot < 1 || slot > RELAY_UDP_MAX ||
        poll_us > RELAY_UDP_POLL_MAX_US)
        return -EINVAL;
    pthread_mutex_lock(&dp->cmd_lock);
    if (dp->state != 0)
        rc = -EBUSY;
    else {
        dp->udp_batch = batch;
        dp->udp_slot = slot;
        dp->udp_poll_us = poll_us;
        for (i = 0; i < dp->n_workers; i++) {
            struct relay_udp_io *io = dp->workers[i].uio;
            dp->workers[i].udp_poll_us = poll_us;
            io->batch = batch;
            io->slot = slot;
            io->gso = gso && relay_udp_gso_supported();
            io->gro = io->gso && gro && slot == RELAY_UDP_MAX && io->gro_read;
            for (k = 0; k < RELAY_UDP_BATCH; k++)
                io->in_iov[k].iov_len = slot;
        }
    }
    pthread_mutex_unlock(&dp->cmd_lock);
    return rc;
}

int dp_start(struct dp *dp)
{
    sigset_t all, old;
    uint32_t i;
    int rc = 0;

    pthread_mutex_lock(&dp->cmd_lock);
    if (dp->state != 0) {
        rc = dp->state == 1 ? -EALREADY : -ESHUTDOWN;
        pthread_mutex_unlock(&dp->cmd_lock);
        return rc;
    }
    for (i = 0; i < dp->n_workers; i++) {
        struct dp_worker *w = &dp->workers[i];
        w->buf_size = dp->copy_threshold;
        w->copy_only = dp->copy_only;
        if (w->buf_size && !(w->buf = malloc(w->buf_size))) {
            rc = -ENOMEM;
            break;
        }
    }
    if (rc) {
        pthread_mutex_unlock(&dp->cmd_lock);
        return rc;
    }
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (i = 0; i < dp->n_workers; i++) {
        struct dp_worker *w = &dp->workers[i];
        /* under pub_lock: no publisher can judge this worker idle between here and its first
         * table load */
        pthread_mutex_lock(&dp->pub_lock);
        atomic_store(&w->seen_gen, 0);
        pthread_mutex_unlock(&dp->pub_lock);
        rc = -pthread_create(&w->thread, NULL, dp_worker_main, w);
        if (rc) {
            atomic_store(&w->seen_gen, UINT64_MAX);
            break;
        }
        w->thread_started = 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    dp->state = 1;
    pthread_mutex_unlock(&dp->cmd_lock);
    if (rc)
        dp_stop(dp, 0);
    return rc;
}

/* Attach to fd's SO_REUSEPORT group a classic BPF program that picks the group member by the
 * client's address alone: index = ((xor of the source address words) * golden ratio >> 16) mod
 * n. IPv4 packets (also those a dual-stack IPv6 socket receives) hash their one address word,
 * IPv6 packets their four. An index the group does not have makes the kernel fall back to its
 * own 4-tuple hash, so a wrong n costs spread, never datagrams. */
static int dp_steer_attach(int fd, uint32_t n)
{
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_H | BPF_ABS, (uint32_t)(SKF_AD_OFF + SKF_AD_PROTOCOL)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x86dd, 0, 10),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (uint32_t)(SKF_NET_OFF + 8)),
        BPF_STMT(BPF_MISC | BPF_TAX, 0),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (uint32_t)(SKF_NET_OFF + 12)),
        BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),
        BPF_STMT(BPF_MISC | BPF_TAX, 0),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (uint32_t)(SKF_NET_OFF + 16)),
        BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),
        BPF_STMT(BPF_MISC | BPF_TAX, 0),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (uint32_t)(SKF_NET_OFF + 20)),
        BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),
        BPF_JUMP(BPF_JMP | BPF_JA, 1, 0, 0),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (uint32_t)(SKF_NET_OFF + 12)), /* IPv4 source */
        BPF_STMT(BPF_ALU | BPF_MUL | BPF_K, 0x9e3779b1u),
        BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 16),
        BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, n),
        BPF_STMT(BPF_RET | BPF_A, 0),
    };
    struct sock_fprog prog = { .len = sizeof(code) / sizeof(code[0]), .filter = code };

    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof(prog)) < 0 ? -errno
                                                                                          : 0;
}

/* Steering (see relay_udp.c, "Flows"): a flow keyed by the client address alone must see every
 * port of that address on one worker, but the kernel spreads a SO_REUSEPORT group by the 4-tuple.
 * For each group of UDP listeners (same family, address and port) whose service has flow_key 1
 * and more than one member, attach dp_steer_attach() sized to the group; detach it when that is
 * no longer so. Called with steer_lock held (it reads steer_svc); takes cmd_lock. */
static void dp_steer_sync(struct dp *dp)
{
    uint32_t i, j, n, want, have;
    int ok, same, zero = 0;

    pthread_mutex_lock(&dp->cmd_lock);
    for (i = 0; i < dp->n_lfd; i++)
        dp->lfd[i].mark = 0;
    for (i = 0; i < dp->n_lfd; i++) {
        struct dp_lfd *a = &dp->lfd[i];
        if (a->proto != DP_PROTO_UDP || a->mark)
            continue;
        for (n = 0, same = 1, have = a->steered, j = i; j < dp->n_lfd; j++) {
            struct dp_lfd *b = &dp->lfd[j];
            if (b->proto != DP_PROTO_UDP || b->family != a->family || b->lport != a->lport ||
                memcmp(b->laddr, a->laddr, 16) != 0)
                continue;
            b->mark = 1;
            n++;
            same &= b->steered == have;
        }
        want = dp->steer_svc[a->service_id] && n > 1 ? n : 0;
        if (same && want == have)
            continue;
        if (want)
            ok = dp_steer_attach(a->fd, want) == 0;
        else /* kernels before 5.14 cannot detach: the program then stays (it only coarsens) */
            ok = setsockopt(a->fd, SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, &zero, sizeof(zero)) == 0 ||
                 errno == ENOENT;
        for (j = i; ok && j < dp->n_lfd; j++)
            if (dp->lfd[j].mark && dp->lfd[j].proto == DP_PROTO_UDP &&
                dp->lfd[j].family == a->family && dp->lfd[j].lport == a->lport &&
                memcmp(dp->lfd[j].laddr, a->laddr, 16) == 0)
                dp->lfd[j].steered = want;
    }
    pthread_mutex_unlock(&dp->cmd_lock);
}

int dp_add_listener(struct dp *dp, uint32_t service_id, int fd, uint32_t worker)
{
    struct dp_listener *l;
    struct dp_worker *w;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    struct dp_cmd c = { .type = DP_CMD_ADD_LISTENER };
    uint32_t i;
    int rc;

    if (worker >= dp->n_workers || service_id >= DP_MAX_SERVICES || fd < 0)
        return -EINVAL;
    l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->ep.kind = DP_EP_LISTENER;
    l->fd = fd;
    l->service_id = service_id;
    int type = 0, acc = 0;
    socklen_t il = sizeof(int);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &il) < 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
        rc = -errno;
        free(l);
        return rc;
    }
    il = sizeof(int);
    if (type == SOCK_DGRAM) {
        l->proto = DP_PROTO_UDP;
    } else if (type != SOCK_STREAM || getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &il) < 0 ||
               !acc) {
        free(l);
        return -ENOTCONN; /* neither a listening TCP socket nor a UDP socket */
    }
    if (!(fcntl(fd, F_GETFL) & O_NONBLOCK)) {
        free(l);
        return -EAGAIN; /* a blocking socket would stall its worker in accept4()/recvmmsg() */
    }
    if (ss.ss_family == AF_INET) {
        l->family = 4;
        l->lport = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        memcpy(l->laddr, &((struct sockaddr_in *)&ss)->sin_addr, 4);
    } else if (ss.ss_family == AF_INET6) {
        l->family = 6;
        l->lport = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        memcpy(l->laddr, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
    } else {
        free(l);
        return -EAFNOSUPPORT;
    }
    if (l->proto == DP_PROTO_TCP) {
        /* accepted sockets inherit TCP_NODELAY from the listener: one setsockopt here instead
         * of one per connection (relay_tcp.h, enum dp_nodelay) */
        int one = 1;
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == 0)
            l->nodelay = DP_NODELAY_LISTENER;
    }
    if (l->proto == DP_PROTO_UDP) {
        static const uint8_t any[16];
        int one = 1;
        if (l->lport == 0) {
            free(l);
            return -ENOTCONN; /* an unbound UDP socket */
        }
        if (memcmp(l->laddr, any, 16) == 0) {
            /* a wildcard address: have the kernel tell us, per datagram, which local address
             * the client wrote to, so that the reply can leave from it */
            rc = l->family == 4
                     ? setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one))
                     : setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one));
            if (rc < 0) {
                rc = -errno;
                free(l);
                return rc;
            }
            l->pktinfo = 1;
        }
    }
    w = &dp->workers[worker];
    pthread_mutex_lock(&dp->cmd_lock);
    rc = 0;
    if (dp->state == 2)
        rc = -ESHUTDOWN;
    for (i = 0; !rc && i < dp->n_lfd; i++)
        if (dp->lfd[i].fd == fd)
            rc = -EEXIST;
    if (!rc && dp->n_lfd == dp->cap_lfd) {
        uint32_t cap = dp->cap_lfd ? dp->cap_lfd * 2 : 16;
        struct dp_lfd *a = realloc(dp->lfd, cap * sizeof(*a));
        if (a) {
            dp->lfd = a;
            dp->cap_lfd = cap;
        } else
            rc = -ENOMEM;
    }
    if (!rc) {
        c.listener = l;
        if (dp_call_locked(dp, w, &c) == -ESRCH)
            rc = w->exited ? -ESHUTDOWN : dp_listener_push(w, l); /* not started yet */
        else
            rc = c.rc;
    }
    if (!rc) {
        struct dp_lfd *e = &dp->lfd[dp->n_lfd++];
        memset(e, 0, sizeof(*e));
        e->fd = fd;
        e->worker = worker;
        e->service_id = service_id;
        e->proto = l->proto;
        e->family = l->family;
        e->lport = l->lport;
        memcpy(e->laddr, l->laddr, 16);
        /* GRO buffers: several datagrams of one client per read (relay_udp.c, "GRO
         * buffers"); best effort, the worker reads the socket right with or without it */
        if (l->proto == DP_PROTO_UDP && w->uio->gro &&
            !(atomic_load_explicit(&dp->opts.bits[service_id], memory_order_relaxed) &
              DP_OPT_NO_GRO))
            (void)relay_udp_gro_on(fd);
    }
    pthread_mutex_unlock(&dp->cmd_lock);
    if (rc) {
        free(l);
        return rc;
    }
    if (l->proto == DP_PROTO_UDP) {
        pthread_mutex_lock(&dp->steer_lock);
        dp_steer_sync(dp);
        pthread_mutex_unlock(&dp->steer_lock);
    }
    return 0;
}

int dp_remove_listener(struct dp *dp, int fd)
{
    struct dp_cmd c = { .type = DP_CMD_DEL_LISTENER, .fd = fd };
    struct dp_worker *w;
    uint32_t i;
    int rc, udp;

    pthread_mutex_lock(&dp->cmd_lock);
    for (i = 0; i < dp->n_lfd; i++)
        if (dp->lfd[i].fd == fd)
            break;
    if (i == dp->n_lfd) {
        pthread_mutex_unlock(&dp->cmd_lock);
        return -ENOENT;
    }
    w = &dp->workers[dp->lfd[i].worker];
    udp = dp->lfd[i].proto == DP_PROTO_UDP;
    dp->lfd[i] = dp->lfd[dp->n_lfd - 1];
    dp->n_lfd--;
    if (dp_call_locked(dp, w, &c) == -ESRCH)
        rc = dp_listener_drop(w, fd); /* not running: its state is ours to change */
    else
        rc = c.rc;
    pthread_mutex_unlock(&dp->cmd_lock);
    if (udp) { /* its group shrank: steer over the members left */
        pthread_mutex_lock(&dp->steer_lock);
        dp_steer_sync(dp);
        pthread_mutex_unlock(&dp->steer_lock);
    }
    return rc;
}

/* Free retired tables that no worker can still hold. Called with pub_lock held. */
static void dp_reclaim_locked(struct dp *dp)
{
    uint64_t min_seen = UINT64_MAX, s;
    uint32_t i, j;

    for (i = 0; i < dp->n_workers; i++) {
        s = atomic_load_explicit(&dp->workers[i].seen_gen, memory_order_acquire);
        if (s < min_seen)
            min_seen = s;
    }
    for (i = 0, j = 0; i < dp->n_retired; i++) {
        if (dp->retired[i]->generation < min_seen)
            dp_table_free(dp->retired[i]);
        else
            dp->retired[j++] = dp->retired[i];
    }
    dp->n_retired = j;
}

int dp_publish(struct dp *dp, const uint8_t *blob, size_t len, uint64_t *generation, char *err,
               size_t errlen)
{
    struct dp_table *t = NULL, *old;
    uint8_t steer[DP_MAX_SERVICES];
    uint64_t g;
    uint32_t i, hw = 0;
    int rc;

    if (errlen)
        err[0] = 0;
    rc = dp_table_parse(blob, len, &t, err, errlen);
    if (rc)
        return rc;
    memset(steer, 0, sizeof(steer)); /* read t while it is still ours alone */
    for (i = 0; i < t->n_backends; i++)
        if (t->backends[i].backend_id >= hw)
            hw = t->backends[i].backend_id + 1;
    for (i = 0; i < t->n_services; i++)
        steer[t->services[i].service_id] = t->services[i].protocol == DP_PROTO_UDP &&
                                           t->services[i].flow_key == DP_FLOW_SRC_IP;
    pthread_mutex_lock(&dp->pub_lock);
    if (dp->n_retired == dp->cap_retired) {
        uint32_t cap = dp->cap_retired ? dp->cap_retired * 2 : 8;
        struct dp_table **a = realloc(dp->retired, cap * sizeof(*a));
        if (!a) {
            pthread_mutex_unlock(&dp->pub_lock);
            dp_table_free(t);
            return -ENOMEM;
        }
        dp->retired = a;
        dp->cap_retired = cap;
    }
    if (hw > atomic_load(&dp->be_hw)) /* before the swap: no worker counts at or above it */
        atomic_store(&dp->be_hw, hw);
    g = atomic_load(&dp->generation) + 1;
    t->generation = g;
    old = atomic_exchange_explicit(&dp->table, t, memory_order_acq_rel);
    atomic_store(&dp->generation, g);
    if (old)
        dp->retired[dp->n_retired++] = old;
    dp_reclaim_locked(dp);
    pthread_mutex_unlock(&dp->pub_lock);
    /* under cmd_lock: dp_stop() closes the eventfds under it once the workers are gone */
    pthread_mutex_lock(&dp->cmd_lock);
    for (i = 0; dp->state == 1 && i < dp->n_workers; i++)
        if (dp->workers[i].thread_started)
            dp_wake(&dp->workers[i]);
    pthread_mutex_unlock(&dp->cmd_lock);
    pthread_mutex_lock(&dp->steer_lock);
    if (g > dp->steer_gen) { /* a later publish may have overtaken us here: it wins */
        dp->steer_gen = g;
        if (memcmp(dp->steer_svc, steer, sizeof(steer)) != 0) {
            memcpy(dp->steer_svc, steer, sizeof(steer));
            dp_steer_sync(dp);
        }
    }
    pthread_mutex_unlock(&dp->steer_lock);
    *generation = g;
    return 0;
}

uint64_t dp_generation(struct dp *dp)
{
    return atomic_load(&dp->generation);
}

int dp_stats(struct dp *dp, struct dp_stats *out)
{
    uint32_t i, k, x, n_be;

    /* Only the backend ids a table ever named: 65,536 slots per worker are megabytes to read,
     * and the control plane asks for stats on its event loop. */
    n_be = atomic_load(&dp->be_hw);
    memset(out, 0, offsetof(struct dp_stats, be));
    memset(out->be, 0, n_be * sizeof(out->be[0]));
    out->n_be = n_be;
    out->generation = atomic_load(&dp->generation);
    /* the control plane polls stats: a good moment to free tables retired by the last publish */
    pthread_mutex_lock(&dp->pub_lock);
    dp_reclaim_locked(dp);
    pthread_mutex_unlock(&dp->pub_lock);
    for (i = 0; i < dp->n_workers; i++) {
        const struct dp_counters *c = dp->workers[i].cnt;
        uint64_t v[DP_SC_N];
        out->connlog_dropped += __atomic_load_n(&c->connlog_dropped, __ATOMIC_RELAXED);
        out->listener_pauses += __atomic_load_n(&c->listener_pauses, __ATOMIC_RELAXED);
        for (k = 0; k < DP_MAX_SERVICES; k++) {
            for (x = 0; x < DP_SC_N; x++)
                v[x] = __atomic_load_n(&c->svc[k][x], __ATOMIC_RELAXED);
            out->svc[k].conns_total += v[DP_SC_CONNS_TOTAL];
            out->svc[k].conns_active += (int64_t)v[DP_SC_CONNS_ACTIVE];
            out->svc[k].rejected += v[DP_SC_REJECTED];
            out->svc[k].no_backend += v[DP_SC_NO_BACKEND];
            out->svc[k].bytes_to_backend += v[DP_SC_BYTES_TO_BACKEND];
            out->svc[k].bytes_to_client += v[DP_SC_BYTES_TO_CLIENT];
            out->svc[k].accept_errors += v[DP_SC_ACCEPT_ERRORS];
            out->svc[k].datagrams_in += v[DP_SC_DATAGRAMS_IN];
            out->svc[k].datagrams_out += v[DP_SC_DATAGRAMS_OUT];
            out->svc[k].flows_created += v[DP_SC_FLOWS_CREATED];
            out->svc[k].flows_expired += v[DP_SC_FLOWS_EXPIRED];
            out->svc[k].flows_active += (int64_t)v[DP_SC_FLOWS_ACTIVE];
            out->svc[k].drops_max_flows += v[DP_SC_DROPS_MAX_FLOWS];
            out->svc[k].drops_no_backend += v[DP_SC_DROPS_NO_BACKEND];
            out->svc[k].drops_truncated += v[DP_SC_DROPS_TRUNCATED];
            out->svc[k].drops_send += v[DP_SC_DROPS_SEND];
            out->svc[k].drops_max_udp_flows += v[DP_SC_DROPS_MAX_UDP_FLOWS];
            out->svc[k].proxy_header_errors += v[DP_SC_PROXY_HDR_ERRORS];
            out->svc[k].proxy_header_timeouts += v[DP_SC_PROXY_HDR_TIMEOUTS];
            out->svc[k].proxy_direct += v[DP_SC_PROXY_DIRECT];
            out->svc[k].queued_now += (int64_t)v[DP_SC_QUEUED_NOW];
            out->svc[k].queued_total += v[DP_SC_QUEUED_TOTAL];
            out->svc[k].queue_timeouts += v[DP_SC_QUEUE_TIMEOUTS];
            out->svc[k].queue_wait_ms += v[DP_SC_QUEUE_WAIT_MS];
        }
        for (k = 0; k < n_be; k++) {
            for (x = 0; x < DP_BC_N; x++)
                v[x] = __atomic_load_n(&c->be[k][x], __ATOMIC_RELAXED);
            out->be[k].conns_total += v[DP_BC_CONNS_TOTAL];
            out->be[k].conns_active += (int64_t)v[DP_BC_CONNS_ACTIVE];
            out->be[k].connect_failures += v[DP_BC_CONNECT_FAILURES];
            out->be[k].bytes_to_backend += v[DP_BC_BYTES_TO_BACKEND];
            out->be[k].bytes_to_client += v[DP_BC_BYTES_TO_CLIENT];
            out->be[k].datagrams_to_backend += v[DP_BC_DATAGRAMS_TO_BACKEND];
            out->be[k].datagrams_to_client += v[DP_BC_DATAGRAMS_TO_CLIENT];
            out->be[k].flows_active += (int64_t)v[DP_BC_FLOWS_ACTIVE];
            out->be[k].flows_total += v[DP_BC_FLOWS_TOTAL];
        }
    }
    return 0;
}

/* Queue a copy of the command `tmpl` to every running worker, then wait for all of them (they
 * run it concurrently). Returns the per-worker commands (calloc'ed, the caller frees them and
 * what they point to; a worker that is not running left its copy as it was), or NULL when out of
 * memory. */
static struct dp_cmd *dp_ask_all(struct dp *dp, const struct dp_cmd *tmpl)
{
    struct dp_cmd *cmds = calloc(dp->n_workers, sizeof(*cmds));
    uint32_t i;

    if (!cmds)
        return NULL;
    pthread_mutex_lock(&dp->cmd_lock);
    for (i = 0; i < dp->n_workers; i++) {
        struct dp_worker *w = &dp->workers[i];
        cmds[i] = *tmpl;
        cmds[i].next = NULL;
        cmds[i].done = 1;
        if (!w->thread_started || w->exited)
            continue;
        cmds[i].done = 0;
        if (w->cmd_tail)
            w->cmd_tail->next = &cmds[i];
        else
            w->cmd_head = &cmds[i];
        w->cmd_tail = &cmds[i];
        dp_wake(w);
    }
    for (i = 0; i < dp->n_workers; i++)
        while (!cmds[i].done)
            pthread_cond_wait(&dp->cmd_cond, &dp->cmd_lock);
    pthread_mutex_unlock(&dp->cmd_lock);
    return cmds;
}

int dp_sessions(struct dp *dp, struct dp_session_info **out, size_t *n)
{
    struct dp_cmd *cmds;
    struct dp_session_info *all = NULL;
    size_t total = 0, k;
    uint32_t i;
    int rc = 0;

    *out = NULL;
    *n = 0;
    cmds = dp_ask_all(dp, &(struct dp_cmd){ .type = DP_CMD_SNAPSHOT });
    if (!cmds)
        return -ENOMEM;
    for (i = 0; i < dp->n_workers; i++) {
        if (cmds[i].rc)
            rc = cmds[i].rc;
        total += cmds[i].n_sessions;
    }
    if (!rc && total) {
        all = malloc(total * sizeof(*all));
        if (!all)
            rc = -ENOMEM;
    }
    for (i = 0, k = 0; i < dp->n_workers; i++) {
        if (!rc && cmds[i].n_sessions) {
            memcpy(all + k, cmds[i].sessions, cmds[i].n_sessions * sizeof(*all));
            k += cmds[i].n_sessions;
        }
        free(cmds[i].sessions);
    }
    free(cmds);
    if (rc) {
        free(all);
        return rc;
    }
    *out = all;
    *n = total;
    return 0;
}

int dp_udp_gso_supported(void)
{
    return relay_udp_gso_supported();
}

int dp_udp_gro_supported(void)
{
    return relay_udp_gro_supported();
}

int dp_flows(struct dp *dp, struct dp_flow_info **out, size_t *n)
{
    struct dp_cmd *cmds;
    struct dp_flow_info *all = NULL;
    size_t total = 0, k;
    uint32_t i;
    int rc = 0;

    *out = NULL;
    *n = 0;
    cmds = dp_ask_all(dp, &(struct dp_cmd){ .type = DP_CMD_FLOWS });
    if (!cmds)
        return -ENOMEM;
    for (i = 0; i < dp->n_workers; i++) {
        if (cmds[i].rc)
            rc = cmds[i].rc;
        total += cmds[i].n_flows;
    }
    if (!rc && total) {
        all = malloc(total * sizeof(*all));
        if (!all)
            rc = -ENOMEM;
    }
    for (i = 0, k = 0; i < dp->n_workers; i++) {
        if (!rc && cmds[i].n_flows) {
            memcpy(all + k, cmds[i].flows, cmds[i].n_flows * sizeof(*all));
            k += cmds[i].n_flows;
        }
        free(cmds[i].flows);
    }
    free(cmds);
    if (rc) {
        free(all);
        return rc;
    }
    *out = all;
    *n = total;
    return 0;
}

int dp_internals(struct dp *dp, struct dp_internals *out)
{
    struct dp_cmd c;
    uint32_t i;

    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&dp->cmd_lock);
    for (i = 0; i < dp->n_workers; i++) {
        memset(&c, 0, sizeof(c));
        c.type = DP_CMD_INTERNALS;
        c.internals = out;
        if (dp_call_locked(dp, &dp->workers[i], &c) == -ESRCH)
            dp_worker_internals(&dp->workers[i], out);
    }
    pthread_mutex_unlock(&dp->cmd_lock);
    pthread_mutex_lock(&dp->pub_lock);
    dp_reclaim_locked(dp);
    out->tables_pending = dp->n_retired;
    pthread_mutex_unlock(&dp->pub_lock);
    for (i = 0; i < DP_MAX_BACKENDS; i++)
        out->sched_active += atomic_load_explicit(&dp->shared->active[i], memory_order_relaxed);
    for (i = 0; i < DP_MAX_SERVICES; i++)
        out->sched_svc_active +=
            atomic_load_explicit(&dp->shared->svc_active[i], memory_order_relaxed);
    return 0;
}

/* qsort order of backend ids. */
static int dp_u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

    return (x > y) - (x < y);
}

int dp_close_backends(struct dp *dp, const uint32_t *ids, size_t n, enum dp_close_reason reason,
                      uint64_t *closed)
{
    struct dp_close_set *set;
    struct dp_cmd *cmds;
    uint32_t *members;
    size_t k;
    uint32_t m = 0;

    for (k = 0; k < n && closed; k++)
        closed[k] = 0;
    if (reason != DP_CLOSE_DRAIN_TIMEOUT && reason != DP_CLOSE_BACKEND_DOWN)
        return -EINVAL;
    if (n > DP_CLOSE_MAX_IDS)
        return -E2BIG;
    if (n && (!ids || !closed))
        return -EINVAL;
    for (k = 0; k < n; k++)
        if (ids[k] >= DP_MAX_BACKENDS)
            return -EINVAL;
    if (!n)
        return 0; /* nothing to ask of any worker */
    set = calloc(1, sizeof(*set));
    members = malloc(n * sizeof(*members));
    if (set)
        set->closed = calloc(n, sizeof(*set->closed));
    if (!set || !members || !set->closed) {
        if (set)
            free(set->closed);
        free(set);
        free(members);
        return -ENOMEM;
    }
    memcpy(members, ids, n * sizeof(*members));
    qsort(members, n, sizeof(*members), dp_u32_cmp);
    for (k = 0; k < n; k++) /* each once */
        if (!m || members[m - 1] != members[k])
            members[m++] = members[k];
    for (k = 0; k < m; k++)
        set->bits[members[k] / 64] |= UINT64_C(1) << (members[k] % 64);
    set->ids = members;
    set->n = m;
    /* a worker that is not running has no session and no flow: nothing of it to count */
    cmds = dp_ask_all(dp, &(struct dp_cmd){ .type = DP_CMD_CLOSE_BACKEND, .close_set = set,
                                            .reason = (uint8_t)reason });
    if (cmds) { /* every worker has answered: its adds happened before its done flag */
        for (k = 0; k < n; k++) {
            const uint32_t *at = bsearch(&ids[k], members, m, sizeof(*members), dp_u32_cmp);
            closed[k] = atomic_load_explicit(&set->closed[at - members], memory_order_relaxed);
        }
    }
    free(cmds);
    free((void *)set->closed);
    free(set);
    free(members);
    return cmds ? 0 : -ENOMEM;
}

int dp_close_backend_sessions(struct dp *dp, uint32_t backend_id, enum dp_close_reason reason,
                              uint64_t *closed)
{
    *closed = 0;
    return dp_close_backends(dp, &backend_id, 1, reason, closed);
}

int dp_reset_counters(struct dp *dp, int service, uint32_t id)
{
    struct dp_cmd tmpl = { .type = DP_CMD_ID_QUIET, .id_service = (uint8_t)(service != 0),
                           .id = id };
    struct dp_cmd *cmds;
    uint32_t i;
    int busy = 0;

    if (id >= (service ? DP_MAX_SERVICES : DP_MAX_BACKENDS))
        return -EINVAL;
    if (service) { /* a listener of the service would keep counting on its id */
        pthread_mutex_lock(&dp->cmd_lock);
        for (i = 0; i < dp->n_lfd; i++)
            busy |= dp->lfd[i].service_id == id;
        pthread_mutex_unlock(&dp->cmd_lock);
        if (busy)
            return -EBUSY;
    }
    /* Phase 1: every running worker adopts the live table and says whether it still counts on
     * the id. Once all say no, none can start to: the id is not in the live table, and the
     * caller (TableBuilder) never puts a retired id into a later one, so a publish between the
     * two phases changes nothing for it. (No pub_lock here: dp_start takes cmd_lock before
     * pub_lock, and dp_ask_all takes cmd_lock.) */
    cmds = dp_ask_all(dp, &tmpl);
    if (!cmds)
        return -ENOMEM;
    for (i = 0; i < dp->n_workers; i++)
        busy |= cmds[i].busy;
    free(cmds);
    if (busy)
        return -EBUSY;
    /* Phase 2: each worker zeroes its own slots (it is their only writer). A worker that is not
     * running writes nothing, so its slots are zeroed from here. */
    tmpl.type = DP_CMD_ID_ZERO;
    cmds = dp_ask_all(dp, &tmpl);
    if (!cmds)
        return -ENOMEM;
    pthread_mutex_lock(&dp->cmd_lock);
    for (i = 0; i < dp->n_workers; i++) {
        struct dp_worker *w = &dp->workers[i];
        if (w->thread_started && !w->exited)
            continue;
        if (service) {
            memset(w->cnt->svc[id], 0, sizeof(w->cnt->svc[id]));
            w->cnt->sockbuf_errors[id] = 0;
        } else {
            memset(w->cnt->be[id], 0, sizeof(w->cnt->be[id]));
        }
    }
    pthread_mutex_unlock(&dp->cmd_lock);
    free(cmds);
    return 0;
}

int dp_set_connection_log(struct dp *dp, int enabled, uint32_t capacity)
{
    struct connlog_ring **fresh = NULL;
    struct dp_cmd c;
    uint32_t i, cap = 1;
    int rc = 0;

    if (enabled) {
        if (capacity == 0 || capacity > DP_CONNLOG_MAX)
            return -EINVAL;
        while (cap < capacity)
            cap <<= 1;
    }
    pthread_mutex_lock(&dp->log_lock);
    if (enabled && cap != dp->log_capacity) {
        /* new rings, allocated here so that the workers never allocate */
        fresh = calloc(dp->n_workers, sizeof(*fresh));
        for (i = 0; fresh && i < dp->n_workers && !rc; i++)
            rc = connlog_ring_create(cap, &fresh[i]);
        if (!fresh || rc) {
            for (i = 0; fresh && i < dp->n_workers; i++)
                connlog_ring_destroy(fresh[i]);
            free(fresh);
            pthread_mutex_unlock(&dp->log_lock);
            return -ENOMEM;
        }
    }
    pthread_mutex_lock(&dp->cmd_lock);
    for (i = 0; i < dp->n_workers; i++) {
        memset(&c, 0, sizeof(c));
        c.type = DP_CMD_CONNLOG;
        c.log_on = enabled != 0;
        c.ring = fresh ? fresh[i] : NULL;
        if (dp_call_locked(dp, &dp->workers[i], &c) == -ESRCH)
            dp_worker_connlog(&dp->workers[i], &c); /* not running: ours to change */
        if (fresh)
            fresh[i] = c.ring; /* the replaced ring (or NULL) */
    }
    pthread_mutex_unlock(&dp->cmd_lock);
    if (fresh) {
        for (i = 0; i < dp->n_workers; i++)
            connlog_ring_destroy(fresh[i]);
        free(fresh);
        dp->log_capacity = cap;
    }
    pthread_mutex_unlock(&dp->log_lock);
    return 0;
}

int dp_closed_sessions(struct dp *dp, size_t max, struct dp_conn_record **out, size_t *n)
{
    struct dp_conn_record *all = NULL;
    size_t total = 0, k = 0, p;
    uint32_t i;

    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&dp->log_lock);
    for (i = 0; i < dp->n_workers && total < max; i++)
        if (dp->workers[i].log_ring) {
            p = connlog_ring_pending(dp->workers[i].log_ring);
            total += p < max - total ? p : max - total;
        }
    if (total) {
        all = malloc(total * sizeof(*all));
        if (!all) {
            pthread_mutex_unlock(&dp->log_lock);
            return -ENOMEM;
        }
    }
    /* the workers may have added records since: take no more than counted */
    for (i = 0; i < dp->n_workers && k < total; i++)
        if (dp->workers[i].log_ring)
            k += connlog_ring_take(dp->workers[i].log_ring, all + k, total - k);
    pthread_mutex_unlock(&dp->log_lock);
    if (!k) {
        free(all);
        all = NULL;
    }
    *out = all;
    *n = k;
    return 0;
}

int dp_stop(struct dp *dp, uint32_t timeout_ms)
{
    uint64_t deadline = dp_mono_ms() + timeout_ms;
    uint32_t i;

    pthread_mutex_lock(&dp->stop_lock);
    pthread_mutex_lock(&dp->cmd_lock);
    if (dp->state == 2) {
        pthread_mutex_unlock(&dp->cmd_lock);
        pthread_mutex_unlock(&dp->stop_lock);
        return 0;
    }
    pthread_mutex_unlock(&dp->cmd_lock);
    for (i = 0; i < dp->n_workers; i++) {
        struct dp_worker *w = &dp->workers[i];
        if (!w->thread_started)
            continue;
        w->stop_deadline_ms = deadline;
        atomic_store_explicit(&w->stop_req, 1, memory_order_release);
        dp_wake(w);
    }
    for (i = 0; i < dp->n_workers; i++) {
        struct dp_worker *w = &dp->workers[i];
        if (!w->thread_started)
            continue;
        pthread_join(w->thread, NULL);
    }
    pthread_mutex_lock(&dp->cmd_lock);
    dp->state = 2;
    /* no thread uses the workers any more: give back every descriptor now (the caller's
     * listeners excepted), so a stopped data plane holds no fds even before it is freed */
    for (i = 0; i < dp->n_workers; i++) {
        struct dp_worker *w = &dp->workers[i];
        for (uint32_t j = 0; j < w->n_listeners; j++)
            w->listeners[j]->in_epoll = 0;
        if (w->pp.free)
            pipepool_destroy(&w->pp);
        if (w->epfd >= 0)
            close(w->epfd);
        if (w->evfd >= 0)
            close(w->evfd);
        w->epfd = w->evfd = -1;
    }
    pthread_mutex_unlock(&dp->cmd_lock);
    pthread_mutex_lock(&dp->pub_lock);
    dp_reclaim_locked(dp);
    pthread_mutex_unlock(&dp->pub_lock);
    pthread_mutex_unlock(&dp->stop_lock);
    return 0;
}

void dp_destroy(struct dp *dp)
{
    uint32_t i, j;

    if (!dp)
        return;
    if (dp->workers)
        dp_stop(dp, 0);
    for (i = 0; dp->workers && i < dp->n_workers; i++) {
        struct dp_worker *w = &dp->workers[i];
        if (w->ct.index)
            ct_destroy(&w->ct);
        if (w->uct.index)
            ct_destroy(&w->uct);
        relay_udp_io_destroy(w->uio);
        if (w->pp.free)
            pipepool_destroy(&w->pp);
        for (j = 0; j < w->n_listeners; j++)
            free(w->listeners[j]);
        free(w->listeners);
        if (w->epfd >= 0)
            close(w->epfd);
        if (w->evfd >= 0)
            close(w->evfd);
        free(w->sw);
        free(w->cnt);
        free(w->buf);
        connlog_ring_destroy(w->log_ring);
    }
    for (i = 0; i < dp->n_retired; i++)
        dp_table_free(dp->retired[i]);
    free(dp->retired);
    if (atomic_load(&dp->table))
        dp_table_free(atomic_load(&dp->table));
    free(dp->workers);
    free(dp->shared);
    free(dp->lfd);
    pthread_mutex_destroy(&dp->steer_lock);
    pthread_mutex_destroy(&dp->log_lock);
    pthread_mutex_destroy(&dp->pub_lock);
    pthread_mutex_destroy(&dp->cmd_lock);
    pthread_mutex_destroy(&dp->stop_lock);
    pthread_cond_destroy(&dp->cmd_cond);
    pthread_mutex_destroy(&dp->cc.lock);
    free(dp);
}

/* 1 when name is a plausible algorithm name: 1..DP_CC_NAME_MAX - 1 of [A-Za-z0-9_-]. */
static int dp_cc_name_ok(const char *name)
{
    size_t i;

    for (i = 0; name[i]; i++) {
        char c = name[i];
        if (i >= DP_CC_NAME_MAX - 1)
            return 0;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return i > 0;
}

/* Try name on a scratch TCP socket: 0, or the kernel's -errno (-ENOENT unknown, -EPERM not
 * allowed for this process). */
static int dp_cc_try(const char *name)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), rc = 0;

    if (fd < 0)
        return -errno;
    if (setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name, (socklen_t)strlen(name)) < 0)
        rc = -errno;
    close(fd);
    return rc;
}

int dp_set_congestion_control(struct dp *dp, uint32_t service_id, const char *name)
{
    struct dp_cc *cc = &dp->cc;
    uint32_t i;
    int rc;

    if (service_id >= DP_MAX_SERVICES || (name && !dp_cc_name_ok(name)))
        return -EINVAL;
    if (!name) {
        pthread_mutex_lock(&cc->lock);
        atomic_store_explicit(&cc->idx[service_id], 0, memory_order_release);
        pthread_mutex_unlock(&cc->lock);
        return 0;
    }
    if ((rc = dp_cc_try(name)) != 0)
        return rc;
    pthread_mutex_lock(&cc->lock);
    for (i = 0; i < cc->n_names; i++)
        if (strcmp(cc->names[i], name) == 0)
            break;
    if (i == cc->n_names) {
        if (cc->n_names == DP_CC_MAX_NAMES) {
            pthread_mutex_unlock(&cc->lock);
            return -ENOSPC;
        }
        /* a fresh slot: no worker reads it before the release store below publishes it */
        memcpy(cc->names[i], name, strlen(name) + 1);
        cc->n_names++;
    }
    atomic_store_explicit(&cc->idx[service_id], (uint8_t)(i + 1), memory_order_release);
    pthread_mutex_unlock(&cc->lock);
    return 0;
}

const char *dp_congestion_control(struct dp *dp, uint32_t service_id)
{
    struct dp_cc *cc = &dp->cc;
    uint8_t k;

    if (service_id >= DP_MAX_SERVICES)
        return NULL;
    k = atomic_load_explicit(&cc->idx[service_id], memory_order_acquire);
    return k ? cc->names[k - 1] : NULL;
}

int dp_set_fast_open(struct dp *dp, uint32_t service_id, int on)
{
    if (service_id >= DP_MAX_SERVICES)
        return -EINVAL;
    if (on)
        atomic_fetch_or_explicit(&dp->opts.bits[service_id], DP_OPT_FAST_OPEN,
                                 memory_order_relaxed);
    else
        atomic_fetch_and_explicit(&dp->opts.bits[service_id], (uint8_t)~DP_OPT_FAST_OPEN,
                                  memory_order_relaxed);
    return 0;
}

int dp_fast_open(struct dp *dp, uint32_t service_id)
{
    if (service_id >= DP_MAX_SERVICES)
        return 0;
    return (atomic_load_explicit(&dp->opts.bits[service_id], memory_order_relaxed) &
            DP_OPT_FAST_OPEN) != 0;
}

int dp_set_proxy_protocol(struct dp *dp, uint32_t service_id, int version)
{
    _Atomic uint8_t *bits;
    uint8_t old, want;

    if (service_id >= DP_MAX_SERVICES || version < 0 || version > 2)
        return -EINVAL;
    bits = &dp->opts.bits[service_id];
    want = version == 1 ? DP_OPT_PROXY_V1 : version == 2 ? DP_OPT_PROXY_V2 : 0;
    old = atomic_load_explicit(bits, memory_order_relaxed);
    /* one compare-exchange loop, so that a reader never sees both versions or neither while
     * switching from one to the other, and the other bits are kept */
    while (!atomic_compare_exchange_weak_explicit(bits, &old,
                                                  (uint8_t)((old & ~DP_OPT_PROXY) | want),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
    return 0;
}

int dp_proxy_protocol(struct dp *dp, uint32_t service_id)
{
    uint8_t b;

    if (service_id >= DP_MAX_SERVICES)
        return 0;
    b = atomic_load_explicit(&dp->opts.bits[service_id], memory_order_relaxed);
    return b & DP_OPT_PROXY_V1 ? 1 : b & DP_OPT_PROXY_V2 ? 2 : 0;
}

int dp_set_accept_proxy(struct dp *dp, uint32_t service_id, uint32_t timeout_ms)
{
    if (service_id >= DP_MAX_SERVICES)
        return -EINVAL;
    atomic_store_explicit(&dp->accept_proxy.timeout_ms[service_id], timeout_ms,
                          memory_order_relaxed);
    return 0;
}

uint32_t dp_accept_proxy(struct dp *dp, uint32_t service_id)
{
    if (service_id >= DP_MAX_SERVICES)
        return 0;
    return atomic_load_explicit(&dp->accept_proxy.timeout_ms[service_id], memory_order_relaxed);
}

int dp_set_udp_gro(struct dp *dp, uint32_t service_id, int on)
{
    uint32_t i;
    int rc = 0, r;

    if (service_id >= DP_MAX_SERVICES)
        return -EINVAL;
    pthread_mutex_lock(&dp->cmd_lock); /* dp->lfd is stable under it */
    if (on)
        atomic_fetch_and_explicit(&dp->opts.bits[service_id], (uint8_t)~DP_OPT_NO_GRO,
                                  memory_order_relaxed);
    else
        atomic_fetch_or_explicit(&dp->opts.bits[service_id], DP_OPT_NO_GRO,
                                 memory_order_relaxed);
    /* on: the listeners get it now (a worker reads a socket right either way). Off is never
     * applied to a listener: merged buffers it already queued would come back without their
     * segment size once the option is off (the kernel adds it only while the option is on),
     * and would leave as one datagram. So off reaches listeners added later and new flows. */
    for (i = 0; on && i < dp->n_lfd; i++) {
        const struct dp_lfd *e = &dp->lfd[i];
        if (e->service_id != service_id || e->proto != DP_PROTO_UDP ||
            !dp->workers[e->worker].uio->gro)
            continue;
        r = relay_udp_gro_on(e->fd);
        if (r && !rc)
            rc = r;
    }
    pthread_mutex_unlock(&dp->cmd_lock);
    return rc;
}

int dp_udp_gro(struct dp *dp, uint32_t service_id)
{
    if (service_id >= DP_MAX_SERVICES || !dp->n_workers || !dp->workers[0].uio->gro)
        return 0;
    return !(atomic_load_explicit(&dp->opts.bits[service_id], memory_order_relaxed) &
             DP_OPT_NO_GRO);
}

void dp_set_fd_ceiling(struct dp *dp, uint32_t ceiling)
{
    atomic_store_explicit(&dp->fd_ceiling, ceiling, memory_order_relaxed);
}

uint32_t dp_fd_ceiling(struct dp *dp)
{
    return atomic_load_explicit(&dp->fd_ceiling, memory_order_relaxed);
}

void dp_set_udp_flow_cap(struct dp *dp, uint32_t cap)
{
    atomic_store_explicit(&dp->udp_flow_cap, cap, memory_order_relaxed);
}

void dp_udp_flows(struct dp *dp, uint32_t *cap, int64_t *open)
{
    *cap = atomic_load_explicit(&dp->udp_flow_cap, memory_order_relaxed);
    *open = atomic_load_explicit(&dp->udp_flows, memory_order_relaxed);
}

/* Apply size with SO_SNDBUF (snd) or SO_RCVBUF to fd, by the FORCE variant when force. */
static int dp_sockbuf_apply(int fd, int snd, int force, uint32_t size)
{
    int v = (int)size, opt;

    if (snd)
        opt = force ? SO_SNDBUFFORCE : SO_SNDBUF;
    else
        opt = force ? SO_RCVBUFFORCE : SO_RCVBUF;
    return setsockopt(fd, SOL_SOCKET, opt, &v, sizeof(v)) < 0 ? -errno : 0;
}

int dp_set_socket_buffers(struct dp *dp, uint32_t service_id, uint32_t sndbuf, uint32_t rcvbuf)
{
    int fd, force = 1, rc = 0;

    if (service_id >= DP_MAX_SERVICES || (sndbuf && (sndbuf < DP_SOCKBUF_MIN ||
                                                     sndbuf > DP_SOCKBUF_MAX)) ||
        (rcvbuf && (rcvbuf < DP_SOCKBUF_MIN || rcvbuf > DP_SOCKBUF_MAX)))
        return -EINVAL;
    if (sndbuf || rcvbuf) {
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -errno;
        rc = dp_sockbuf_apply(fd, 1, 1, sndbuf ? sndbuf : DP_SOCKBUF_MIN);
        if (rc == -EPERM) { /* no CAP_NET_ADMIN: plain options, capped by the kernel */
            force = 0;
            rc = dp_sockbuf_apply(fd, 1, 0, sndbuf ? sndbuf : DP_SOCKBUF_MIN);
        }
        if (!rc && rcvbuf)
            rc = dp_sockbuf_apply(fd, 0, force, rcvbuf);
        close(fd);
        if (rc)
            return rc;
        atomic_store_explicit(&dp->sockbuf.force, (uint8_t)force, memory_order_relaxed);
    }
    atomic_store_explicit(&dp->sockbuf.size[service_id],
                          (uint64_t)sndbuf | ((uint64_t)rcvbuf << 32), memory_order_release);
    return 0;
}

void dp_socket_buffers(struct dp *dp, uint32_t service_id, uint32_t *sndbuf, uint32_t *rcvbuf)
{
    uint64_t v = 0;

    if (service_id < DP_MAX_SERVICES)
        v = atomic_load_explicit(&dp->sockbuf.size[service_id], memory_order_acquire);
    *sndbuf = (uint32_t)v;
    *rcvbuf = (uint32_t)(v >> 32);
}

uint64_t dp_socket_buffer_errors(struct dp *dp, uint32_t service_id)
{
    uint64_t n = 0;
    uint32_t i;

    if (service_id >= DP_MAX_SERVICES)
        return 0;
    for (i = 0; i < dp->n_workers; i++)
        if (dp->workers[i].cnt)
            n += __atomic_load_n(&dp->workers[i].cnt->sockbuf_errors[service_id],
                                 __ATOMIC_RELAXED);
    return n;
}

void dp_fast_open_stats(struct dp *dp, uint64_t *attempts, uint64_t *syn_data,
                        uint64_t *syn_bytes)
{
    uint32_t i;

    *attempts = *syn_data = *syn_bytes = 0;
    for (i = 0; i < dp->n_workers; i++) {
        const struct dp_counters *c = dp->workers[i].cnt;
        if (!c)
            continue;
        *attempts += __atomic_load_n(&c->fo_attempts, __ATOMIC_RELAXED);
        *syn_data += __atomic_load_n(&c->fo_syn_data, __ATOMIC_RELAXED);
        *syn_bytes += __atomic_load_n(&c->fo_syn_bytes, __ATOMIC_RELAXED);
    }
}
