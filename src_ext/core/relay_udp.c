/* relay_udp.c: the UDP relay of one worker (flows, batched datagram I/O, replies, expiry).
 *
 * Design.
 *
 * Flows. A flow is keyed (ct_key, proto 1) by the client address, the client port (flow_key 0;
 * 0 in the key for flow_key 1) and the local address and port the client wrote to. The local
 * address belongs in the key because a wildcard listener serves several addresses and each
 * client must hear back from the one it used. Flows live in the worker's own ct_table (`uct`:
 * slab, open-addressing index, timer wheel from ct.c), so nothing here locks. The kernel's
 * SO_REUSEPORT hash on the 4-tuple sends a client address:port to the same worker every time,
 * which makes a per-worker table exact for flow_key 0; for flow_key 1 dp.c steers the group by
 * the client address alone (dp.c, "Steering"), so every port of an address meets one worker and
 * one flow. The first datagram of a flow takes a max_flows slot (one atomic fetch-add on
 * sched_shared.svc_active, undone when over the limit, so the limit holds across workers),
 * picks a backend with the service's scheduler (flow hash and hash_key as for TCP; flows count
 * as "active" for least_conn and a backend's max_connections), and opens a nonblocking UDP
 * socket connect()ed to the backend and registered level-triggered for EPOLLIN in the worker's
 * epoll. Every later datagram of the flow goes out on that socket; whatever the backend sends on
 * it goes back to the client. A flow ends after idle_timeout_ms without a datagram either way
 * (lazy timer: the data path only stores last_ms, the timer re-arms itself when it fires early),
 * after `responses` datagrams from the backend, on an ICMP error (ECONNREFUSED & co. on the
 * upstream socket: counted as the backend's connect_failures), when its backend moves (below),
 * when its listener is removed, or at stop. Ending closes the socket at once (fd and epoll slot
 * back), frees the index slot (the client's next datagram opens a new flow) and parks the object
 * in a graveyard that is freed after the pending replies are flushed. The table never grows
 * without bound: every flow has an idle timer, and max_flows caps the count.
 *
 * Flow cap. Each flow holds a file descriptor, and every service and the TCP relay draw on the
 * same descriptor table. A flood of new source ports at one service (each a flow) could take
 * every descriptor and starve the others, TCP accepts included. So the data plane also counts
 * the flows of all services together (dp->udp_flows, one more relaxed fetch-add per new flow and
 * one fetch-sub per end, beside the service's) and refuses a new flow while the count is at
 * dp->udp_flow_cap (the control plane sets it, by default to half of the descriptor limit).
 * The refused datagram is counted in its service's drops_max_udp_flows. A flow the service's
 * own max_flows refuses is counted there and takes no place in the cap. Open flows are never
 * closed by a lower cap; new ones wait until enough have ended.
 *
 * Backend moves. A flow remembers its backend by id, plus its index in the table generation that
 * last confirmed it. When the live generation differs, the flow's next client datagram looks the
 * backend up again (same index first, else a scan of the service's backends): absent, or weight 0
 * with flag bit 1 (DOWN), and the flow ends and the datagram opens a new flow on a fresh pick; a
 * drained backend (weight 0, no flag) keeps its flows. Steady state costs one compare.
 *
 * Batched I/O, client side. A UDP listener is level-triggered. A wake-up reads it with
 * recvmmsg() in batches of RELAY_UDP_BATCH datagrams (at most RELAY_UDP_ROUNDS batches, then the
 * others get their turn; level-triggering brings us back). Each datagram of a batch is routed to
 * its flow and chained after the flow's earlier datagrams of the same batch; then each flow of
 * the batch sends its chain on its upstream socket, in order, in one sendmsg()/sendmmsg().
 *
 * Batched I/O, backend side. An upstream socket's event reads it with recvmmsg() straight into
 * the worker's reply slots, up to what is left of the batch (and of `responses`), so a flow's
 * replies sit side by side. The replies of every flow that woke in this loop iteration leave
 * together after it (or as soon as the slots are full): one sendmmsg() per listener, each entry
 * pointing at the flow's client address and at the flow's prebuilt control message (the pktinfo
 * source, below), so nothing is copied. Partial sendmmsg results are resumed; a full socket
 * buffer (EAGAIN, ENOBUFS) drops the rest of the call, another error just that entry; both
 * count drops_send.
 *
 * GSO runs. On loopback or a NIC alike, most of a UDP send's cost is per packet (skb, IP output,
 * device, and on loopback the receiver's whole input path, run inside our sendmsg). Consecutive
 * datagrams of one flow to one destination with the same size (the last one may be shorter,
 * as UDP_SEGMENT cuts) therefore go as one buffer with a UDP_SEGMENT control message: the stack
 * handles one packet and the kernel (or the NIC) cuts it into the original datagrams, boundaries
 * and bytes unchanged. Runs are limited to datagrams of at most RELAY_UDP_GSO_MAX bytes (they fit
 * a 1500-byte MTU) and RELAY_UDP_GSO_BYTES per run. A run the kernel refuses (EINVAL: a smaller
 * path MTU, EIO: no checksum offload) is sent datagram by datagram and that flow sends no more
 * runs. The feature is probed once (getsockopt UDP_SEGMENT): a kernel without it would ignore
 * the control message and glue the run into one datagram, so it never sees one.
 *
 * GRO buffers. The receive side has the mirror image of GSO runs: with UDP_GRO on a socket, the
 * kernel may queue several datagrams of one sender as one buffer (a GSO packet from a loopback
 * sender arrives whole; a NIC's GRO merges same-flow datagrams that arrive in one poll), and a
 * read returns them together with a UDP_GRO control message that names the segment size. The
 * relay turns it on for every UDP listener (dp_add_listener) and for the upstream socket of
 * every flow without `responses` (a flow that counts replies must read them one by one to stop
 * exactly), unless the service switched it off (DP_OPT_NO_GRO, dp_set_udp_gro: the `udp_gro`
 * key). The option is never turned off on a socket that has it: the kernel adds the control
 * message only while the option is on, so a merged buffer queued before the switch would be
 * read as one datagram after it. "Off" therefore reaches listeners added later and new flows,
 * and a listener leaves dp_remove_listener with the option as it had it. Whatever the tuning
 * says, a worker on a kernel that has UDP_GRO reads every listener as if it had the option on
 * (control buffer, RELAY_UDP_GRO_LEN bytes): a read without the control message is then
 * exactly one datagram. A GRO buffer is one entry of a batch: it belongs
 * to one flow (one sender), and it leaves as one GSO run with the same segment size, so the far
 * side gets the same datagrams, boundaries and bytes; the stack moves one packet instead of
 * several on both sides of us.
 * Every counter still counts datagrams (a dropped buffer counts all of them in its drop
 * counter; udp_gro_datagrams says how many came merged). A buffer that may not leave as one run
 * (GSO off or refused for the flow, or longer than an IPv4 datagram may be) is sent datagram by
 * datagram, in order, in sendmmsg calls of its own vector (udp_tx_singles), as is a refused
 * run; a send there that meets the backend's ICMP error ends the flow, and nothing is sent on
 * its fd afterwards. A GRO socket reads up to RELAY_UDP_GRO_LEN; a datagram (or a buffer's
 * segment) longer than a slot is dropped as truncated, as it would have been. New sockets get
 * GRO only with GSO on and full-size slots (tuning that shortens the slot or turns GSO off
 * turns it off).
 * Measured with bench/udpprobe.py (300k/s, 8 flows of 64 bytes, interleaved pairs): 2.16-2.53
 * instead of 2.4-2.9 us of CPU per echo, median pair ratio 0.86; at 450k/s no loss where the
 * relay without GRO lost 0.7-3.7 %. With a generator that sends single datagrams nothing merges
 * on loopback, and the cost was the same as without GRO (3.3-3.5 us/echo at 200k/s).
 *
 * Buffers. Each worker has 2 x 32 slots (client side, backend side) in one anonymous mapping of
 * 4.2 MB made with MAP_NORESERVE: a slot holds the largest IPv4 UDP payload (65,507 bytes), but
 * a page becomes resident only when a datagram first reaches it, so a worker that relays small
 * datagrams holds at most 64 slots x 1 page = 256 KiB (measured: 8 KiB after 200 echoes of 100
 * bytes, 132 KiB after one 65,507-byte echo), and only jumbo traffic makes the rest resident.
 * Slots are RELAY_UDP_STRIDE apart (65,536 + 64 bytes) so that their first lines fall into
 * different cache sets instead of all aliasing into one. Reading into full-size slots means a
 * datagram is never cut by our own buffer below 65,508 bytes; a bigger one (possible over IPv6,
 * up to 65,527) comes back with MSG_TRUNC and is counted as drops_truncated and never sent, in
 * either direction. The alternative, small slots plus a slow path for MSG_TRUNC, does not work
 * for UDP: a truncated datagram is already consumed and its tail is gone. Per-datagram state
 * (msghdrs, iovecs, names, control buffers) is preallocated with the slots and flows come from
 * the slab, so the data path allocates nothing (tests/dataplane/test_c_internals.py counts the
 * core's malloc calls over 51,200 datagrams: zero).
 *
 * Socket buffers. The kernel queues what we have not read yet in the socket's receive buffer and
 * drops (RcvbufErrors, the socket's drops in /proc/net/udp) what does not fit; a small datagram
 * costs about 830 bytes of it on loopback (its sk_buff), so the default 208 KiB holds ~250. The
 * listeners get 4 MiB from Python (l4lb/net/listen.py: ~5,000 datagrams, 17 ms at 300k/s). An
 * upstream socket gets RELAY_UDP_UP_RCVBUF (2 MiB) here, one setsockopt per new flow: a backend
 * answers a burst of requests with a burst of replies, while we may be busy with the listener's
 * next batch, and with the default buffer a burst of ~250 replies per flow was lost there
 * (measured: 50k-170k drops per 3 s run at 300k/s whenever the load CPU hiccupped). The size is
 * a limit, not an allocation: only queued datagrams use memory, and the system-wide udp_mem
 * bounds the sum. SO_RCVBUFFORCE needs CAP_NET_ADMIN; without it SO_RCVBUF gets what
 * net.core.rmem_max allows.
 *
 * Reply source address. dp_add_listener() sets IP_PKTINFO (IPv4) or IPV6_RECVPKTINFO (IPv6) on a
 * listener bound to the wildcard address. Each datagram then carries the destination address it
 * was sent to (ipi_addr / ipi6_addr), which goes into the flow key and into the flow's reply
 * control message (IP_PKTINFO with ipi_spec_dst, or IPV6_PKTINFO; the interface index only for a
 * link-local source, 0 otherwise so the route decides). A dual-stack :: listener gets IPv4
 * clients as v4-mapped addresses and answers them with a v4-mapped IPV6_PKTINFO, which the
 * kernel accepts. A listener bound to a specific address needs no control message at all.
 *
 * Polling. Each arrival on an idle worker wakes it (a remote wake-up, paid partly by the sender's
 * CPU) and each wake-up finds a batch of one or two. When one loop iteration moved at least
 * RELAY_UDP_POLL_ENTER datagrams, the worker is busy enough that it switches to poll mode: it
 * sleeps udp_poll_us (50 us by default; nanosleep, which arrivals do not cut short; the worker
 * thread's timer slack is 1 ns) and then collects with a non-blocking epoll_wait, so datagrams
 * queue into deep batches and GSO runs. An iteration that moved fewer than RELAY_UDP_POLL_LEAVE
 * datagrams ends poll mode; a read that stopped at its budget with more waiting skips the next
 * sleep. The price is up to udp_poll_us of extra latency per pass while under load; at light
 * load the worker never enters poll mode. dp_set_udp_tuning(poll_us = 0) turns it off.
 *
 * Stop. A stopping worker stops reading its listeners; flows keep relaying replies until they
 * end, but one idle for RELAY_UDP_STOP_IDLE_MS (250 ms) is done, so a DNS answer in flight still
 * gets through while an idle 30 s flow does not hold the stop for 30 s.
 *
 * Ends, reasons and the connection log. Every end of a flow goes through udp_flow_end(), whose
 * caller names the reason (enum dp_close_reason): idle_timeout (the timer), responses, refused
 * (an ICMP error read or met by a send; counted as the backend's connect_failure), moved (DOWN
 * backend), listener_gone, shutdown (the stop's early idle end, or its deadline), drain_timeout
 * (relay_udp_close_backends, a worker command between batches: it flushes the pending replies,
 * ends every flow of the backends asked for in one pass and frees them; the client's next datagram opens a new flow;
 * asked for a backend gone DOWN, that is moved).
 * The reason is stored in the flow; relay_udp_reap(), the one place flows are freed (after the
 * pending replies went out, so bytes_to_client is final), fills one record in place in the
 * worker's ring when the log is on; off, the cost is one predictable branch. A datagram that could not open a flow (max_flows, no
 * backend, connect() refused) leaves no record: no flow existed, and the drop counters say it.
 *
 * Decisions the contract leaves open (docs/forwarding-table.md, "UDP services").
 * - The flow key includes the local address and port the client wrote to (see Flows).
 * - flow_key 1 (client address only): one flow per address (and local address), on one worker
 *   (steering); replies go to the port of the flow's latest client datagram.
 * - A flow moved off a DOWN backend counts as expired and created again (its counters start
 *   over); a flow's upstream socket is replaced, not re-connected, so late replies of the old
 *   backend never reach the client under the new backend's name.
 * - responses counts every datagram read from the backend, a truncated one included; replies
 *   beyond `responses` that arrive before the socket is closed are discarded, not counted.
 * - A datagram that cannot open its flow is dropped and counted: max_flows (drops_max_flows),
 *   the flow cap of the data plane (drops_max_udp_flows),
 *   no service / no eligible backend (drops_no_backend), no socket, epoll slot or memory
 *   (accept_errors), connect() refused by routing (the backend's connect_failures and
 *   drops_send). Nothing is retried on another backend: UDP has no handshake to fail. A
 *   transparent backend (source = "client") of the other family than the client's is no
 *   candidate (sched_pick takes the client's family): with none of its family left, the
 *   datagram counts drops_no_backend, and that backend is never charged.
 * - TCP fields of a udp service (connect_timeout_ms, retries, max_connections) are ignored.
 *
 * Cost (measured: 1 worker pinned to one vCPU of this 2-vCPU VM; bench/csrc udpgen, 8 flows of
 * 64-byte datagrams, and udpecho on the other vCPU; LB CPU = utime + stime, which on this kernel
 * includes the loopback delivery softirqs our sends run; medians of 3 runs; nginx stream proxy,
 * 1 worker, on the same harness):
 *   offered   l4lb        no poll mode   no poll, no GSO   nginx       l4lb / nginx
 *   100k/s    5.2 us/echo 5.0            5.3               6.3         0.82
 *   200k/s    3.4         3.5            3.8               5.4         0.63   (loss 0 vs 5-9 %)
 *   300k/s    2.7         3.1            3.6               4.7         0.57
 * At 300k/s: ~25 datagrams per listener recvmmsg, ~10 per upstream send call, every datagram in
 * a GSO run; at 100k/s batches are 1-4 and a loop iteration runs per datagram. What is left is
 * the kernel's per-datagram work (two receives, two sends whose loopback delivery we pay), which
 * batching amortizes only in part; nginx does the same datagram work with ~6 system calls per
 * echo where this relay needs ~1-2.5. Same-run figures with the batched harness (udpgen and
 * udpecho send GSO packets that the kernel cuts into single datagrams at the receiving socket,
 * so this relay still reads and pays for each), medians (min-max) of 3:
 *   run (bench/results/)          offered  l4lb loss   l4lb us/echo      nginx loss  nginx  ratio
 *   custom-20261122T044231Z quiet 300k/s   0 (0-0)     2.53 (2.39-2.53)  36 % (34-46) 5.22  0.48
 *                                 100k/s   0           5.08              0           6.13   0.83
 *   custom-20261122T044851Z quiet 300k/s   0 (0-0.97)  2.63 (2.58-3.15)  39 % (38-40) 5.43  0.48
 *   custom-20261122T042903Z busy  300k/s   0.64 %      2.43 (2.31-2.47)  44 % (43-49) 5.55  0.44
 *                                 100k/s   0           4.29              4.3 %       6.19   0.69
 * poll_us 50, 100 or 200 made no measurable difference (2.32-2.44 us/echo at 300k/s). The
 * one quiet run that lost (0.97 %, all at our listener, nothing else running) had a backlog
 * of more than the listener's ~30 ms; at 300k/s this relay needs 71-94 % of its vCPU, so the
 * margin is thin and a host-side slowdown is enough (steal time is recorded since). In the
 * busy run every lost datagram was dropped at our listener (the harness names the socket)
 * while other sessions' processes took about 15-35 % of our vCPU: this process got 55-59 % of it
 * where the rate needs 65-75 %. Poll mode is not what exposes us to such co-runners: with a
 * nice-10 CPU hog on our vCPU, poll_us 50 lost nothing in 2 of 2 runs (2.41-2.55 us/echo),
 * poll_us 0 lost 0 and 5.5 % (2.66-3.05 us/echo). Buffers ride out short stalls only (see
 * "Socket buffers"): the relay wants its CPU to itself.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <time.h>
#include <unistd.h>

#include "relay_udp.h"

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103 /* linux/udp.h, since 4.18 */
#endif
#ifndef UDP_GRO
#define UDP_GRO 104 /* linux/udp.h, since 5.0 */
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef PR_SET_VMA
#define PR_SET_VMA 0x53564d41 /* linux/prctl.h, since 5.17 */
#define PR_SET_VMA_ANON_NAME 0
#endif

/* The flow of an epoll endpoint tag. */
static inline struct relay_udp_flow *udp_of_ep(struct dp_ep *ep)
{
    return (struct relay_udp_flow *)((char *)ep - offsetof(struct relay_udp_flow, ep));
}

/* True for errors that say this host ran out of something, not that a backend failed. */
static int udp_local_error(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM ||
           err == EADDRNOTAVAIL || err == EAGAIN;
}

/* True for the errors an ICMP message leaves on a connected UDP socket. */
static int udp_icmp_error(int err)
{
    return err == ECONNREFUSED || err == EHOSTUNREACH || err == ENETUNREACH ||
           err == EHOSTDOWN || err == ENETDOWN || err == EPROTO || err == EMSGSIZE;
}

int relay_udp_io_create(struct relay_udp_io **out, uint32_t batch, uint32_t slot)
{
    struct relay_udp_io *io;
    uint32_t i;

    *out = NULL;
    io = calloc(1, sizeof(*io));
    if (!io)
        return -ENOMEM;
    io->mem_len = 2u * RELAY_UDP_BATCH * (size_t)RELAY_UDP_STRIDE;
    /* address space only: a page becomes resident when a datagram first reaches it, so small
     * datagrams cost one or two pages per slot and only jumbo ones touch the rest */
    io->mem = mmap(NULL, io->mem_len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (io->mem == MAP_FAILED) {
        free(io);
        return -ENOMEM;
    }
    /* best effort: shows as [anon:l4lb-udp-slots] in /proc/PID/smaps (resident size) */
    (void)prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, (unsigned long)io->mem, io->mem_len,
                (unsigned long)"l4lb-udp-slots");
    io->batch = batch;
    io->slot = slot;
    io->seq = 1;
    for (i = 0; i < RELAY_UDP_BATCH; i++) {
        io->in_iov[i].iov_base = io->mem + (size_t)i * RELAY_UDP_STRIDE;
        io->in_iov[i].iov_len = slot;
        io->in[i].msg_hdr.msg_iov = &io->in_iov[i];
        io->in[i].msg_hdr.msg_iovlen = 1;
        io->in[i].msg_hdr.msg_name = &io->in_name[i];
        io->in[i].msg_hdr.msg_control = io->in_ctl[i];
        io->out_iov[i].iov_base = io->mem + (size_t)(RELAY_UDP_BATCH + i) * RELAY_UDP_STRIDE;
        io->out[i].msg_hdr.msg_iov = &io->out_iov[i];
        io->out[i].msg_hdr.msg_iovlen = 1;
    }
    io->gso = (uint8_t)relay_udp_gso_supported();
    io->gro_read = (uint8_t)relay_udp_gro_supported();
    io->gro = (uint8_t)(io->gso && slot == RELAY_UDP_MAX && io->gro_read);
    *out = io;
    return 0;
}

/* 1 when this kernel knows the SOL_UDP socket option opt (a fresh socket can read it). */
static int udp_option_known(int opt)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), v = 0, ok;
    socklen_t vl = sizeof(v);

    if (fd < 0)
        return 0;
    ok = getsockopt(fd, SOL_UDP, opt, &v, &vl) == 0;
    close(fd);
    return ok;
}

int relay_udp_gro_supported(void)
{
    /* a kernel that knows the option reports each merged buffer's segment size */
    return udp_option_known(UDP_GRO);
}

int relay_udp_gro_on(int fd)
{
    int v = 1;

    return setsockopt(fd, SOL_UDP, UDP_GRO, &v, sizeof(v)) == 0 ? 0 : -errno;
}

/* The segment size of a GRO buffer from its UDP_GRO control message; 0 when the read returned
 * one datagram (no message, or a buffer no longer than one segment). */
static uint16_t udp_gro_seg(const struct msghdr *mh, uint32_t len)
{
    struct cmsghdr *c;
    int seg;

    for (c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR((struct msghdr *)mh, c)) {
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO &&
            c->cmsg_len >= CMSG_LEN(sizeof(int))) {
            memcpy(&seg, CMSG_DATA(c), sizeof(seg));
            return seg > 0 && (uint32_t)seg < len ? (uint16_t)seg : 0;
        }
    }
    return 0;
}

/* Datagrams in a read of len bytes whose segment size is seg (0: one datagram). */
static inline uint32_t udp_segs(uint32_t len, uint16_t seg)
{
    return seg ? (len + seg - 1) / seg : 1;
}

int relay_udp_gso_supported(void)
{
    /* a kernel that knows the option also honours the control message; an older one would
     * ignore the message and glue a run into one datagram, so it must never see one */
    return udp_option_known(UDP_SEGMENT);
}

void relay_udp_io_destroy(struct relay_udp_io *io)
{
    if (!io)
        return;
    munmap(io->mem, io->mem_len);
    free(io);
}

/* Fill one connection-log record for flow f, freed now (w->log_on): nothing, when the ring is
 * full. */
static void udp_log(struct dp_worker *w, const struct relay_udp_flow *f, uint8_t reason)
{
    struct dp_conn_record *r = dp_log_claim(w);
    double now;

    if (!r)
        return;
    now = dp_unix_now();
    r->service_id = f->service_id;
    r->backend_id = f->backend_id;
    r->protocol = DP_PROTO_UDP;
    r->reason = reason;
    r->family = f->ct.key.family;
    r->peer_family = 0;
    r->port = ntohs(f->peer.sa.sa_family == AF_INET ? f->peer.sin.sin_port
                                                    : f->peer.sin6.sin6_port);
    r->peer_port = 0;
    memset(r->peer_addr, 0, sizeof(r->peer_addr));
    memcpy(r->addr, f->ct.key.caddr, 16);
    r->started = f->started;
    r->duration = now > f->started ? now - f->started : 0.0;
    r->bytes_to_backend = f->bytes_c2b;
    r->bytes_to_client = f->bytes_b2c;
    r->queued_ms = 0; /* flows never wait in a queue */
    connlog_ring_commit(w->log_ring);
}

/* Give back the places a flow held in its service's count (max_flows) and in the data plane's
 * (the flow cap). */
static void udp_flow_unclaim(struct dp_worker *w, uint32_t sid)
{
    atomic_fetch_sub_explicit(&w->dp->shared->svc_active[sid], 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&w->dp->udp_flows, 1, memory_order_relaxed);
}

/* End a flow: close its socket (which takes it out of epoll), give back its backend and its
 * places in max_flows and the flow cap, take it out of the index (a new datagram of the client
 * opens a new flow), remember why (reason, an enum dp_close_reason) and queue it for
 * relay_udp_reap(), which runs after the pending replies are flushed and logs it. Every end of a flow goes through here.
 * DP_CLOSE_REFUSED (an ICMP error) also counts a connect_failure on the backend. Safe to call
 * twice. */
static void udp_flow_end(struct dp_worker *w, struct relay_udp_flow *f, uint8_t reason)
{
    if (f->dead)
        return;
    f->dead = 1;
    f->reason = reason;
    if (f->fd >= 0) {
        close(f->fd);
        f->fd = -1;
    }
    atomic_fetch_sub_explicit(&w->dp->shared->active[f->backend_id], 1, memory_order_relaxed);
    udp_flow_unclaim(w, f->service_id);
    dp_svc_add(w, f->service_id, DP_SC_FLOWS_EXPIRED, 1);
    dp_svc_add(w, f->service_id, DP_SC_FLOWS_ACTIVE, -1);
    dp_be_add(w, f->backend_id, DP_BC_FLOWS_ACTIVE, -1);
    if (reason == DP_CLOSE_REFUSED)
        dp_be_add(w, f->backend_id, DP_BC_CONNECT_FAILURES, 1);
    ct_timer_cancel(&w->uct, &f->ct);
    ct_remove(&w->uct, &f->ct);
    f->grave_next = w->ugrave;
    w->ugrave = f;
}

void relay_udp_reap(struct dp_worker *w)
{
    struct relay_udp_flow *f;

    while ((f = w->ugrave) != NULL) {
        w->ugrave = f->grave_next;
        /* here, not at the end: replies still pending then have been sent (and counted) now */
        if (__builtin_expect(w->log_on, 0))
            udp_log(w, f, f->reason);
        ct_free(&w->uct, &f->ct);
    }
}

/* The flow key of a received datagram: protocol, client address (and port for flow_key 0), and
 * the local address and port it was sent to (from pktinfo on a wildcard listener). *cport gets
 * the client port (for the scheduler's hash), *ifindex the arrival interface (0 if unknown).
 * Returns 0, or -1 for an address family we do not relay. */
static int udp_key(const struct dp_listener *l, const struct msghdr *mh, uint8_t flow_key,
                   struct ct_key *k, uint16_t *cport, uint32_t *ifindex)
{
    const struct sockaddr_in6 *sa = mh->msg_name;
    struct cmsghdr *c;

    memset(k, 0, sizeof(*k));
    k->proto = DP_PROTO_UDP;
    k->lport = l->lport;
    *ifindex = 0;
    if (sa->sin6_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        k->family = 4;
        *cport = ntohs(sin->sin_port);
        memcpy(k->caddr, &sin->sin_addr, 4);
    } else if (sa->sin6_family == AF_INET6) {
        k->family = 6;
        *cport = ntohs(sa->sin6_port);
        memcpy(k->caddr, &sa->sin6_addr, 16);
    } else {
        return -1;
    }
    k->cport = flow_key == DP_FLOW_SRC_IP ? 0 : *cport;
    if (!l->pktinfo) {
        memcpy(k->laddr, l->laddr, 16);
        return 0;
    }
    for (c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR((struct msghdr *)mh, c)) {
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO &&
            c->cmsg_len >= CMSG_LEN(sizeof(struct in_pktinfo))) {
            struct in_pktinfo pi;
            memcpy(&pi, CMSG_DATA(c), sizeof(pi));
            /* reply from the address the client wrote to; for a multicast or broadcast
             * destination (never a valid source) from the address routing chose instead */
            uint32_t dst = ntohl(pi.ipi_addr.s_addr);
            if ((dst >> 28) == 0xe || dst == 0xffffffffu)
                memcpy(k->laddr, &pi.ipi_spec_dst, 4);
            else
                memcpy(k->laddr, &pi.ipi_addr, 4);
            *ifindex = (uint32_t)pi.ipi_ifindex;
        } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO &&
                   c->cmsg_len >= CMSG_LEN(sizeof(struct in6_pktinfo))) {
            struct in6_pktinfo pi;
            memcpy(&pi, CMSG_DATA(c), sizeof(pi));
            memcpy(k->laddr, &pi.ipi6_addr, 16);
            *ifindex = pi.ipi6_ifindex;
        }
    }
    return 0;
}

/* Build the control message that makes replies leave from the flow's local address. */
static void udp_flow_ctl(struct relay_udp_flow *f, const struct dp_listener *l, uint32_t ifindex)
{
    struct msghdr mh = { .msg_control = f->ctl, .msg_controllen = sizeof(f->ctl) };
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    const uint8_t *la = f->ct.key.laddr;
    static const uint8_t zero[16];

    f->ctl_len = 0;
    memset(f->ctl, 0, sizeof(f->ctl));
    if (!l->pktinfo)
        return;
    if (l->family == 4) {
        struct in_pktinfo pi;
        if (memcmp(la, zero, 4) == 0)
            return; /* no pktinfo came with the datagram: let routing choose */
        memset(&pi, 0, sizeof(pi));
        memcpy(&pi.ipi_spec_dst, la, 4);
        c->cmsg_level = IPPROTO_IP;
        c->cmsg_type = IP_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(pi));
        memcpy(CMSG_DATA(c), &pi, sizeof(pi));
        f->ctl_len = (uint8_t)CMSG_SPACE(sizeof(pi));
    } else {
        struct in6_pktinfo pi;
        if (memcmp(la, zero, 16) == 0 || la[0] == 0xff)
            return; /* unknown, or multicast (never a valid source) */
        memset(&pi, 0, sizeof(pi));
        memcpy(&pi.ipi6_addr, la, 16);
        /* the interface matters for a link-local source only; 0 lets the route decide */
        if (la[0] == 0xfe && (la[1] & 0xc0) == 0x80)
            pi.ipi6_ifindex = ifindex;
        c->cmsg_level = IPPROTO_IPV6;
        c->cmsg_type = IPV6_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(pi));
        memcpy(CMSG_DATA(c), &pi, sizeof(pi));
        f->ctl_len = (uint8_t)CMSG_SPACE(sizeof(pi));
    }
}

/* Give an upstream socket a receive buffer that rides out a burst of replies (see "Buffers");
 * best effort: without CAP_NET_ADMIN the kernel caps SO_RCVBUF at net.core.rmem_max. */
static void udp_upstream_buffers(int fd)
{
    int v = RELAY_UDP_UP_RCVBUF;

    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &v, sizeof(v)) != 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v));
}

/* Open a flow for the first read of a client (dgrams datagrams: more than one in a GRO buffer):
 * max_flows, backend pick, connected upstream socket in epoll, index, idle timer. Returns the
 * flow, or NULL when the read's datagrams are dropped (counted here). */
static struct relay_udp_flow *udp_flow_new(struct dp_worker *w, struct dp_listener *l,
                                           const struct dp_table *t,
                                           const struct dp_service *svc, const struct ct_key *k,
                                           uint16_t cport, const struct msghdr *mh,
                                           uint32_t ifindex, uint32_t dgrams)
{
    uint32_t sid = l->service_id, idx = 0, slot = 0;
    _Atomic int32_t *sact = &w->dp->shared->svc_active[sid];
    struct epoll_event ev = { .events = EPOLLIN };
    struct sockaddr_storage ss;
    const struct dp_backend *b;
    struct relay_udp_flow *f;
    struct ct_entry *e;
    struct timespec ts;
    socklen_t sl;
    int64_t all;
    int32_t prev;
    uint32_t cap;
    int fd, err, gro = 0, srcfail = 0;

    /* the service's place first: a flow max_flows refuses never holds one in the cap */
    prev = atomic_fetch_add_explicit(sact, 1, memory_order_relaxed);
    if (svc->max_flows && prev >= 0 && (uint32_t)prev >= svc->max_flows) {
        atomic_fetch_sub_explicit(sact, 1, memory_order_relaxed);
        dp_svc_add(w, sid, DP_SC_DROPS_MAX_FLOWS, dgrams);
        return NULL;
    }
    all = atomic_fetch_add_explicit(&w->dp->udp_flows, 1, memory_order_relaxed);
    cap = atomic_load_explicit(&w->dp->udp_flow_cap, memory_order_relaxed);
    if (cap && all >= (int64_t)cap) {
        udp_flow_unclaim(w, sid);
        dp_svc_add(w, sid, DP_SC_DROPS_MAX_UDP_FLOWS, dgrams);
        return NULL;
    }
    /* the client's family: a transparent backend of the other family is no candidate */
    if (sched_pick(t, svc, w->dp->shared, w->sw,
                   dp_flow_hash(t->hash_seed, k->family, k->caddr, cport, svc->hash_key), NULL, 0,
                   relay_client_family(k->family, k->caddr), &slot, &idx) != 0) {
        udp_flow_unclaim(w, sid);
        dp_svc_add(w, sid, DP_SC_DROPS_NO_BACKEND, dgrams);
        return NULL;
    }
    b = &t->backends[idx];
    fd = socket(b->family == 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                0);
    if (fd < 0)
        goto local_failure;
    if (relay_fd_high(w, fd)) { /* the control plane's part of the descriptors */
        close(fd);
        goto local_failure;
    }
    udp_upstream_buffers(fd);
    /* GRO buffers for replies, unless the flow counts them (`responses`): then every read
     * stays one datagram, so the count can stop exactly */
    if (w->uio->gro && !svc->responses &&
        !(atomic_load_explicit(&w->dp->opts.bits[sid], memory_order_relaxed) & DP_OPT_NO_GRO))
        gro = relay_udp_gro_on(fd) == 0;
    sl = relay_backend_addr(b, &ss);
    if (relay_client_unbindable(b, k->family, k->caddr)) { /* the client's doing */
        close(fd);
        goto local_failure;
    }
    err = b->source_family ? -relay_bind_source(fd, b, k->family, k->caddr) : 0;
    if (err == 0 && connect(fd, (struct sockaddr *)&ss, sl) < 0)
        err = errno;
    else if (err != 0)
        srcfail = 1; /* the backend's source: its failure, whatever the errno */
    if (err != 0) {
        close(fd);
        if (!srcfail && udp_local_error(err))
            goto local_failure;
        /* the backend's address is unusable from here (unreachable network, ...) */
        dp_be_add(w, (int32_t)b->backend_id, DP_BC_CONNECT_FAILURES, 1);
        dp_svc_add(w, sid, DP_SC_DROPS_SEND, dgrams);
        udp_flow_unclaim(w, sid);
        return NULL;
    }
    if (ct_alloc(&w->uct, &e) != 0) {
        close(fd);
        goto local_failure;
    }
    f = (struct relay_udp_flow *)e;
    e->key = *k;
    if (ct_insert(&w->uct, e) != 0) {
        ct_free(&w->uct, e);
        close(fd);
        goto local_failure;
    }
    ev.data.ptr = &f->ep;
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        ct_free(&w->uct, e);
        close(fd);
        goto local_failure;
    }
    f->ep.kind = DP_EP_UDP_FLOW;
    f->fd = fd;
    f->l = l;
    f->flow_key = svc->flow_key;
    f->service_id = sid;
    f->backend_id = (int32_t)b->backend_id;
    f->be_index = idx;
    f->be_gen = t->generation;
    f->idle_timeout_ms = svc->idle_timeout_ms;
    f->responses = svc->responses;
    f->gro = (uint8_t)gro;
    f->batch_seq = 0;
    f->last_ms = w->now_ms;
    clock_gettime(CLOCK_REALTIME, &ts);
    f->started = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    memcpy(&f->peer, mh->msg_name, mh->msg_namelen);
    f->peer_len = mh->msg_namelen;
    udp_flow_ctl(f, l, ifindex);
    atomic_fetch_add_explicit(&w->dp->shared->active[b->backend_id], 1, memory_order_relaxed);
    dp_svc_add(w, sid, DP_SC_FLOWS_CREATED, 1);
    dp_svc_add(w, sid, DP_SC_FLOWS_ACTIVE, 1);
    dp_be_add(w, f->backend_id, DP_BC_FLOWS_TOTAL, 1);
    dp_be_add(w, f->backend_id, DP_BC_FLOWS_ACTIVE, 1);
    ct_timer_arm(&w->uct, e, w->now_ms + f->idle_timeout_ms);
    return f;

local_failure:
    udp_flow_unclaim(w, sid);
    dp_svc_add(w, sid, DP_SC_ACCEPT_ERRORS, dgrams); /* per datagram, as every drop */
    return NULL;
}

/* Check a flow's backend against live table t (its generation changed since the last check).
 * Returns 1 when the flow may stay, 0 when it must move: its backend is gone from the service,
 * or has weight 0 with the DOWN flag (a drained backend, weight 0 without the flag, keeps it). */
static int udp_flow_confirm(struct relay_udp_flow *f, const struct dp_table *t,
                            const struct dp_service *svc)
{
    uint32_t j, first = svc->backend_first, end = svc->backend_first + svc->backend_count;
    const struct dp_backend *b = NULL;

    if (f->be_index >= first && f->be_index < end &&
        t->backends[f->be_index].backend_id == (uint32_t)f->backend_id) {
        b = &t->backends[f->be_index];
    } else {
        for (j = first; j < end; j++)
            if (t->backends[j].backend_id == (uint32_t)f->backend_id) {
                b = &t->backends[j];
                f->be_index = j;
                break;
            }
    }
    if (!b || (b->weight == 0 && (b->flags & DP_BACKEND_FLAG_DOWN)))
        return 0;
    f->be_gen = t->generation;
    return 1;
}

/* Errors that say a GSO run cannot go out as such (route MTU below the segment, no checksum
 * offload on the device, ...); its datagrams are then sent one by one. */
static int udp_gso_error(int err)
{
    return err == EINVAL || err == EIO || err == EOPNOTSUPP || err == EMSGSIZE ||
           err == ENOPROTOOPT;
}

/* The next send-vector entry from iov[0..n) (all of flow f, all to one destination; seg[k] is
 * iov[k]'s GRO segment size, 0 for one datagram). Returns the iovecs it takes; *dgrams gets its
 * datagrams, *bytes their payload bytes, *gso_size the size UDP_SEGMENT cuts at.
 *   - A GRO buffer is an entry of its own: one GSO run as it came in.
 *   - Otherwise, with GSO, a run of datagrams of the same size plus one shorter last one, the
 *     way UDP_SEGMENT cuts a buffer; without, one datagram. */
static uint32_t udp_run(const struct relay_udp_io *io, const struct relay_udp_flow *f,
                        const struct iovec *iov, const uint16_t *seg, uint32_t n,
                        uint32_t *dgrams, uint32_t *bytes, uint16_t *gso_size)
{
    size_t len = iov[0].iov_len, total = len;
    uint32_t cnt = 1;

    if (seg[0]) {
        *dgrams = udp_segs((uint32_t)len, seg[0]);
        *bytes = (uint32_t)len;
        *gso_size = seg[0];
        return 1;
    }
    if (io->gso && !f->no_gso && len > 0 && len <= RELAY_UDP_GSO_MAX) {
        while (cnt < n && !seg[cnt] && iov[cnt].iov_len == len &&
               total + len <= RELAY_UDP_GSO_BYTES) {
            total += len;
            cnt++;
        }
        if (cnt < n && !seg[cnt] && iov[cnt].iov_len > 0 && iov[cnt].iov_len < len &&
            total + iov[cnt].iov_len <= RELAY_UDP_GSO_BYTES) {
            total += iov[cnt].iov_len;
            cnt++;
        }
    }
    *dgrams = cnt;
    *bytes = (uint32_t)total;
    *gso_size = (uint16_t)len;
    return cnt;
}

/* 1 when a GRO buffer of flow f (bytes long) may leave as one GSO run with its own segment
 * size: GSO is on for the flow, and the buffer is no larger than an IPv4 datagram may be (one
 * from an IPv6 client can be 20 bytes longer). Otherwise it is sent datagram by datagram. The
 * segment size is not held to RELAY_UDP_GSO_MAX: the datagrams arrived at that size, and a
 * path that cannot take it refuses the run (EINVAL), which falls back like any refused run. */
static inline int udp_gro_as_run(const struct relay_udp_io *io, const struct relay_udp_flow *f,
                                 uint32_t bytes)
{
    return io->gso && !f->no_gso && bytes <= RELAY_UDP_MAX;
}

/* Fill send-vector entry m with iov[0..cnt) of flow f, dgrams datagrams cut at gso_size: to its
 * client (reply != 0: address and pktinfo of the flow) or on its connected upstream socket;
 * dgrams > 1 adds UDP_SEGMENT. */
static void udp_tx_entry(struct relay_udp_io *io, uint32_t m, struct relay_udp_flow *f,
                         int reply, struct iovec *iov, uint32_t cnt, uint32_t dgrams,
                         uint32_t bytes, uint16_t gso_size)
{
    struct msghdr *mh = &io->tx[m].msg_hdr;
    size_t cl = reply ? f->ctl_len : 0;

    mh->msg_iov = iov;
    mh->msg_iovlen = cnt;
    mh->msg_name = reply ? &f->peer : NULL;
    mh->msg_namelen = reply ? f->peer_len : 0;
    mh->msg_flags = 0;
    if (dgrams > 1) {
        uint8_t *c = (uint8_t *)io->tx_ctl[m];
        struct cmsghdr *h = (struct cmsghdr *)(c + cl); /* cl is a CMSG_SPACE: aligned */
        if (cl)
            memcpy(c, f->ctl, cl);
        h->cmsg_level = SOL_UDP;
        h->cmsg_type = UDP_SEGMENT;
        h->cmsg_len = CMSG_LEN(sizeof(gso_size));
        memcpy(CMSG_DATA(h), &gso_size, sizeof(gso_size));
        mh->msg_control = c;
        mh->msg_controllen = cl + CMSG_SPACE(sizeof(gso_size));
    } else {
        mh->msg_control = cl ? f->ctl : NULL;
        mh->msg_controllen = cl;
    }
    io->tx_flow[m] = f;
    io->tx_cnt[m] = (uint16_t)dgrams;
    io->tx_seg[m] = gso_size;
    io->tx_bytes[m] = bytes;
}

/* Count n datagrams of bytes payload that flow f sent, to its backend or to its client. */
static void udp_account(struct dp_worker *w, struct relay_udp_flow *f, int to_backend,
                        uint32_t n, uint64_t bytes)
{
    if (n > 1)
        DP_CNT_ADD(&w->cnt->udp_gso_datagrams, n);
    if (to_backend) {
        DP_CNT_ADD(&w->cnt->udp_tx_datagrams, n);
        f->dg_c2b += n;
        f->bytes_c2b += bytes;
        dp_svc_add(w, f->service_id, DP_SC_BYTES_TO_BACKEND, (int64_t)bytes);
        dp_be_add(w, f->backend_id, DP_BC_DATAGRAMS_TO_BACKEND, n);
        dp_be_add(w, f->backend_id, DP_BC_BYTES_TO_BACKEND, (int64_t)bytes);
    } else {
        DP_CNT_ADD(&w->cnt->udp_out_datagrams, n);
        f->dg_b2c += n;
        f->bytes_b2c += bytes;
        dp_svc_add(w, f->service_id, DP_SC_DATAGRAMS_OUT, n);
        dp_svc_add(w, f->service_id, DP_SC_BYTES_TO_CLIENT, (int64_t)bytes);
        dp_be_add(w, f->backend_id, DP_BC_DATAGRAMS_TO_CLIENT, n);
        dp_be_add(w, f->backend_id, DP_BC_BYTES_TO_CLIENT, (int64_t)bytes);
    }
}

/* Datagrams left in iov[k..niov) from byte off of iov[k] on, each iovec cut at seg (0: one
 * datagram per iovec; an empty iovec is one datagram). */
static uint32_t udp_left(const struct iovec *iov, uint32_t niov, uint32_t k, size_t off,
                         uint32_t seg)
{
    uint32_t n = 0;
    size_t rem;

    for (; k < niov; k++, off = 0) {
        rem = iov[k].iov_len - off;
        if (rem == 0)
            n += off == 0;
        else
            n += seg ? (uint32_t)((rem + seg - 1) / seg) : 1;
    }
    return n;
}

/* Send the datagrams in iov[0..niov) of flow f one per message (each iovec cut at seg when
 * seg > 0), in sendmmsg calls of up to RELAY_UDP_BATCH on fd: its upstream socket (to_backend)
 * or its listener (a reply). For a GSO run the kernel refused, and for a GRO buffer that may not
 * leave as one run. Uses its own vector (io->sp), so a caller may be in the middle of io->tx.
 * Counts what went and what was dropped; an ICMP error met on the backend side ends the flow
 * (refused) and drops the rest, so a caller must check f->dead before using its fd again. */
static void udp_tx_singles(struct dp_worker *w, int fd, struct relay_udp_flow *f, int to_backend,
                           const struct iovec *iov, uint32_t niov, uint32_t seg)
{
    struct relay_udp_io *io = w->uio;
    uint32_t k = 0, m, i, j;
    size_t off = 0, len;
    int r, err;

    while (k < niov) {
        for (m = 0; m < RELAY_UDP_BATCH && k < niov; m++) {
            struct msghdr *mh = &io->sp[m].msg_hdr;
            len = iov[k].iov_len - off;
            if (seg && len > seg)
                len = seg;
            io->sp_iov[m].iov_base = (uint8_t *)iov[k].iov_base + off;
            io->sp_iov[m].iov_len = len;
            mh->msg_iov = &io->sp_iov[m];
            mh->msg_iovlen = 1;
            mh->msg_name = to_backend ? NULL : &f->peer;
            mh->msg_namelen = to_backend ? 0 : f->peer_len;
            mh->msg_control = !to_backend && f->ctl_len ? f->ctl : NULL;
            mh->msg_controllen = to_backend ? 0 : f->ctl_len;
            mh->msg_flags = 0;
            off += len;
            if (off >= iov[k].iov_len) {
                k++;
                off = 0;
            }
        }
        for (i = 0; i < m;) {
            r = sendmmsg(fd, &io->sp[i], m - i, MSG_DONTWAIT | MSG_NOSIGNAL);
            DP_CNT_ADD(to_backend ? &w->cnt->udp_tx_calls : &w->cnt->udp_out_calls, 1);
            if (r > 0) {
                for (j = i; j < i + (uint32_t)r; j++)
                    udp_account(w, f, to_backend, 1, io->sp_iov[j].iov_len);
                i += (uint32_t)r;
                continue;
            }
            err = errno;
            if (err == EINTR)
                continue;
            if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS || err == ENOMEM ||
                (to_backend && udp_icmp_error(err))) {
                /* a full buffer, or the backend refused an earlier datagram: drop the rest */
                dp_svc_add(w, f->service_id, DP_SC_DROPS_SEND,
                           (m - i) + udp_left(iov, niov, k, off, seg));
                if (to_backend && udp_icmp_error(err))
                    udp_flow_end(w, f, DP_CLOSE_REFUSED);
                return;
            }
            dp_svc_add(w, f->service_id, DP_SC_DROPS_SEND, 1); /* just this one */
            i++;
        }
    }
}

/* Send io->tx[0..nm) on fd (a flow's upstream socket, or a listener for replies), resuming
 * after partial results; count what went and what was dropped. */
static void udp_tx_send(struct dp_worker *w, int fd, uint32_t nm, int to_backend)
{
    struct relay_udp_io *io = w->uio;
    uint32_t i = 0, j;
    int r, err;

    while (i < nm) {
        if (nm - i == 1)
            r = sendmsg(fd, &io->tx[i].msg_hdr, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0 ? 1 : -1;
        else
            r = sendmmsg(fd, &io->tx[i], nm - i, MSG_DONTWAIT | MSG_NOSIGNAL);
        DP_CNT_ADD(to_backend ? &w->cnt->udp_tx_calls : &w->cnt->udp_out_calls, 1);
        if (r > 0) {
            for (j = i; j < i + (uint32_t)r; j++)
                udp_account(w, io->tx_flow[j], to_backend, io->tx_cnt[j], io->tx_bytes[j]);
            i += (uint32_t)r;
            continue;
        }
        err = errno;
        if (err == EINTR)
            continue;
        if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS || err == ENOMEM) {
            for (; i < nm; i++) /* the socket's buffer is full: drop the rest */
                dp_svc_add(w, io->tx_flow[i]->service_id, DP_SC_DROPS_SEND, io->tx_cnt[i]);
            return;
        }
        if (io->tx_cnt[i] > 1 && udp_gso_error(err)) {
            struct relay_udp_flow *f = io->tx_flow[i];
            f->no_gso = 1; /* e.g. the route's MTU is below the segment size */
            udp_tx_singles(w, fd, f, to_backend, io->tx[i].msg_hdr.msg_iov,
                           (uint32_t)io->tx[i].msg_hdr.msg_iovlen, io->tx_seg[i]);
            i++;
            if (to_backend && f->dead) { /* refused meanwhile: its fd is closed */
                for (; i < nm; i++)
                    dp_svc_add(w, io->tx_flow[i]->service_id, DP_SC_DROPS_SEND, io->tx_cnt[i]);
                return;
            }
            continue;
        }
        if (to_backend && udp_icmp_error(err)) {
            /* the backend refused an earlier datagram; every entry here is this flow's */
            udp_flow_end(w, io->tx_flow[i], DP_CLOSE_REFUSED);
            for (; i < nm; i++)
                dp_svc_add(w, io->tx_flow[i]->service_id, DP_SC_DROPS_SEND, io->tx_cnt[i]);
            return;
        }
        /* this one destination is refused (unreachable client, ...): skip it */
        dp_svc_add(w, io->tx_flow[i]->service_id, DP_SC_DROPS_SEND, io->tx_cnt[i]);
        i++;
    }
}

/* Put iov[0..n) of flow f (seg: their GRO segment sizes) into io->tx after the nm entries
 * already there, to its client (reply: fd is its listener) or its backend (fd is f->fd), sending
 * on fd whenever a GRO buffer must go datagram by datagram (so the order holds). Returns the
 * entries now waiting in io->tx; 0, with the rest counted as dropped, when sending to the
 * backend ended the flow (its fd is closed then, and may already be another socket's). */
static uint32_t udp_tx_add(struct dp_worker *w, int fd, struct relay_udp_flow *f, int reply,
                           struct iovec *iov, const uint16_t *seg, uint32_t n, uint32_t nm)
{
    struct relay_udp_io *io = w->uio;
    uint32_t k = 0, cnt, dgrams, bytes, left = 0;
    uint16_t gso_size;

    while (k < n) {
        cnt = udp_run(io, f, &iov[k], &seg[k], n - k, &dgrams, &bytes, &gso_size);
        if (seg[k] && !udp_gro_as_run(io, f, bytes)) {
            if (nm)
                udp_tx_send(w, fd, nm, !reply);
            nm = 0;
            if (!reply && f->dead)
                break;
            udp_tx_singles(w, fd, f, !reply, &iov[k], 1, seg[k]);
            k += cnt;
            if (!reply && f->dead)
                break;
            continue;
        }
        udp_tx_entry(io, nm++, f, reply, &iov[k], cnt, dgrams, bytes, gso_size);
        k += cnt;
    }
    if (reply || !f->dead)
        return nm;
    /* refused: count what is left, and never touch fd again */
    for (; k < n; k++)
        left += udp_segs((uint32_t)iov[k].iov_len, seg[k]);
    if (left)
        dp_svc_add(w, f->service_id, DP_SC_DROPS_SEND, left);
    return 0;
}

/* Send the datagrams of this listener batch that belong to flow f, in order, on its upstream
 * socket: equal-sized neighbours and GRO buffers as GSO runs, all in one sendmsg/sendmmsg. */
static void udp_send_flow(struct dp_worker *w, struct relay_udp_flow *f)
{
    struct relay_udp_io *io = w->uio;
    uint32_t n = 0, dg = 0, nm;
    int i;

    for (i = f->in_head; i >= 0; i = io->in_next[i]) {
        io->snd_iov[n].iov_base = io->in_iov[i].iov_base;
        io->snd_iov[n].iov_len = io->in[i].msg_len;
        io->snd_seg[n] = io->in_seg[i];
        dg += udp_segs(io->in[i].msg_len, io->in_seg[i]);
        n++;
    }
    if (f->dead) { /* cannot happen: a flow ends in routing only before it is chained */
        dp_svc_add(w, f->service_id, DP_SC_DROPS_SEND, dg);
        return;
    }
    nm = udp_tx_add(w, f->fd, f, 0, io->snd_iov, io->snd_seg, n, 0);
    if (nm)
        udp_tx_send(w, f->fd, nm, 1);
}

/* Route the n reads just taken from listener l: find or open each one's flow, chain them per
 * flow (keeping their order), then send each flow's chain. Returns the datagrams they held (a
 * GRO buffer holds several). */
static uint32_t udp_route_batch(struct dp_worker *w, struct dp_listener *l,
                                const struct dp_table *t, const struct dp_service *svc,
                                uint32_t n)
{
    struct relay_udp_io *io = w->uio;
    uint32_t i, n_touched = 0, seq, ifindex, segs, total = 0;
    struct relay_udp_flow *f;
    struct ct_entry *e;
    struct ct_key k;
    uint16_t cport;

    if (++io->seq == 0)
        io->seq = 1;
    seq = io->seq;
    for (i = 0; i < n; i++) {
        struct msghdr *mh = &io->in[i].msg_hdr;
        uint32_t len = io->in[i].msg_len;

        io->in_next[i] = -1;
        io->in_seg[i] = io->gro_read ? udp_gro_seg(mh, len) : 0;
        segs = udp_segs(len, io->in_seg[i]);
        total += segs;
        if (io->in_seg[i])
            DP_CNT_ADD(&w->cnt->udp_gro_datagrams, segs);
        /* a GRO socket reads up to RELAY_UDP_GRO_LEN: one datagram longer than a slot is cut
         * as it would have been; a lost UDP_GRO message would hide the boundaries */
        if ((mh->msg_flags & MSG_TRUNC) || (io->gro_read && (mh->msg_flags & MSG_CTRUNC)) ||
            (io->in_seg[i] ? io->in_seg[i] > io->slot : len > io->slot)) {
            dp_svc_add(w, l->service_id, DP_SC_DROPS_TRUNCATED, segs);
            continue;
        }
        if (!svc || udp_key(l, mh, svc->flow_key, &k, &cport, &ifindex) != 0) {
            dp_svc_add(w, l->service_id, DP_SC_DROPS_NO_BACKEND, segs);
            continue;
        }
        e = ct_lookup(&w->uct, &k);
        f = (struct relay_udp_flow *)e;
        if (f && f->be_gen != t->generation && !udp_flow_confirm(f, t, svc)) {
            udp_flow_end(w, f, DP_CLOSE_MOVED); /* this datagram opens its new flow */
            f = NULL;
        }
        if (!f) {
            f = udp_flow_new(w, l, t, svc, &k, cport, mh, ifindex, segs);
            if (!f)
                continue;
        }
        f->last_ms = w->now_ms;
        if (f->flow_key == DP_FLOW_SRC_IP) {
            /* one flow for every port of the address: replies go to the latest one */
            memcpy(&f->peer, mh->msg_name, mh->msg_namelen);
            f->peer_len = mh->msg_namelen;
        }
        if (f->batch_seq != seq) {
            f->batch_seq = seq;
            f->in_head = (int16_t)i;
            io->touched[n_touched++] = f;
        } else {
            io->in_next[f->in_tail] = (int16_t)i;
        }
        f->in_tail = (int16_t)i;
    }
    for (i = 0; i < n_touched; i++)
        udp_send_flow(w, io->touched[i]);
    return total;
}

void relay_udp_read(struct dp_worker *w, struct dp_listener *l)
{
    struct relay_udp_io *io = w->uio;
    const struct dp_table *t;
    const struct dp_service *svc;
    uint32_t r, i, dg, batch = io->batch;
    size_t rlen = io->gro_read ? RELAY_UDP_GRO_LEN : io->slot;
    size_t clen = io->gro_read || l->pktinfo ? RELAY_UDP_CTL : 0;
    int n;

    dp_worker_refresh_table(w); /* a table published just before these datagrams arrived */
    t = w->table;
    svc = t ? dp_table_service(t, l->service_id) : NULL;
    if (svc && svc->protocol != DP_PROTO_UDP)
        svc = NULL;
    for (r = 0; r < RELAY_UDP_ROUNDS; r++) {
        for (i = 0; i < batch; i++) {
            io->in[i].msg_hdr.msg_namelen = sizeof(io->in_name[i]);
            io->in[i].msg_hdr.msg_controllen = clen;
            io->in_iov[i].iov_len = rlen;
        }
        n = recvmmsg(l->fd, io->in, batch, MSG_DONTWAIT, NULL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* EAGAIN: drained (level-triggered: anything new is reported again) */
        dg = udp_route_batch(w, l, t, svc, (uint32_t)n);
        DP_CNT_ADD(&w->cnt->udp_rx_calls, 1);
        DP_CNT_ADD(&w->cnt->udp_rx_datagrams, dg);
        w->udp_moved += dg;
        dp_svc_add(w, l->service_id, DP_SC_DATAGRAMS_IN, dg);
        if ((uint32_t)n < batch)
            return;
    }
    w->udp_more = 1; /* budget spent with the queue possibly not empty: no poll-mode sleep */
}

void relay_udp_flush(struct dp_worker *w)
{
    struct relay_udp_io *io = w->uio;
    uint32_t k = 0, e, nm, n = io->n_out;

    while (k < n) {
        struct dp_listener *l = io->out_flow[k]->l;
        /* one sendmmsg per listener; in it, each flow's replies (they sit side by side) go as
         * GSO runs where their sizes allow, GRO buffers as they came */
        for (nm = 0; k < n && io->out_flow[k]->l == l; k = e) {
            struct relay_udp_flow *f = io->out_flow[k];
            for (e = k + 1; e < n && io->out_flow[e] == f; e++)
                ;
            nm = udp_tx_add(w, l->fd, f, 1, &io->out_iov[k], &io->out_seg[k], e - k, nm);
        }
        if (nm)
            udp_tx_send(w, l->fd, nm, 0);
    }
    io->n_out = 0;
}

/* Read what the backend sent on flow f into the pending replies (flushing when full). */
static void udp_pull(struct dp_worker *w, struct relay_udp_flow *f)
{
    struct relay_udp_io *io = w->uio;
    uint32_t r, k, base, vlen, dg, segs, batch = io->batch;
    int n;

    for (r = 0; r < RELAY_UDP_ROUNDS && !f->dead; r++) {
        if (io->n_out == batch)
            relay_udp_flush(w);
        base = io->n_out;
        vlen = batch - base;
        if (f->responses && f->responses - f->replies < vlen)
            vlen = f->responses - f->replies;
        for (k = base; k < base + vlen; k++) {
            struct msghdr *mh = &io->out[k].msg_hdr;
            mh->msg_name = NULL;
            mh->msg_namelen = 0;
            mh->msg_control = f->gro ? io->out_ctl[k] : NULL;
            mh->msg_controllen = f->gro ? RELAY_UDP_GRO_CTL : 0;
            io->out_iov[k].iov_len = f->gro ? RELAY_UDP_GRO_LEN : io->slot;
        }
        n = recvmmsg(f->fd, &io->out[base], vlen, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                /* ECONNREFUSED (ICMP port unreachable) and the like */
                udp_flow_end(w, f, DP_CLOSE_REFUSED);
            return;
        }
        if (n == 0)
            return;
        f->last_ms = w->now_ms;
        for (k = base, dg = 0; k < base + (uint32_t)n; k++) {
            uint32_t dst = io->n_out, len = io->out[k].msg_len;
            uint16_t seg = f->gro ? udp_gro_seg(&io->out[k].msg_hdr, len) : 0;
            segs = udp_segs(len, seg);
            dg += segs;
            if (seg)
                DP_CNT_ADD(&w->cnt->udp_gro_datagrams, segs);
            /* as on a listener (udp_route_batch): a GRO socket reads more than a slot */
            if ((io->out[k].msg_hdr.msg_flags & MSG_TRUNC) ||
                (f->gro && (io->out[k].msg_hdr.msg_flags & MSG_CTRUNC)) ||
                (seg ? seg > io->slot : len > io->slot)) {
                dp_svc_add(w, f->service_id, DP_SC_DROPS_TRUNCATED, segs);
                continue;
            }
            if (dst != k) { /* close the gap a truncated datagram left: swap the slots */
                void *slot = io->out_iov[dst].iov_base;
                io->out_iov[dst].iov_base = io->out_iov[k].iov_base;
                io->out_iov[k].iov_base = slot;
            }
            io->out_iov[dst].iov_len = len;
            io->out_seg[dst] = seg;
            io->out_flow[dst] = f;
            io->n_out++;
        }
        DP_CNT_ADD(&w->cnt->udp_up_calls, 1);
        DP_CNT_ADD(&w->cnt->udp_up_datagrams, dg);
        w->udp_moved += dg;
        f->replies += dg;
        if (f->responses && f->replies >= f->responses) {
            /* its replies are still pending: it is freed after them */
            udp_flow_end(w, f, DP_CLOSE_RESPONSES);
            return;
        }
        if ((uint32_t)n < vlen)
            return;
    }
    if (!f->dead)
        w->udp_more = 1;
}

void relay_udp_event(struct dp_worker *w, struct dp_ep *ep, uint32_t events)
{
    struct relay_udp_flow *f = udp_of_ep(ep);

    (void)events; /* EPOLLERR too: recvmmsg returns the queued replies first, then the error */
    if (!f->dead)
        udp_pull(w, f);
}

void relay_udp_expire(struct ct_entry *e, void *arg)
{
    struct dp_worker *w = arg;
    struct relay_udp_flow *f = (struct relay_udp_flow *)e;
    uint32_t idle;

    if (f->dead)
        return;
    idle = f->idle_timeout_ms;
    if (w->stopping && idle > RELAY_UDP_STOP_IDLE_MS)
        idle = RELAY_UDP_STOP_IDLE_MS;
    if (w->now_ms - f->last_ms >= idle) /* idle less than its own timeout: the stop ended it */
        udp_flow_end(w, f, w->now_ms - f->last_ms >= f->idle_timeout_ms ? DP_CLOSE_IDLE_TIMEOUT
                                                                        : DP_CLOSE_SHUTDOWN);
    else
        ct_timer_arm(&w->uct, e, f->last_ms + idle);
}

/* ct_foreach callback of relay_udp_stopping: bring the flow's deadline forward. */
static void udp_stop_arm(struct ct_entry *e, void *arg)
{
    struct dp_worker *w = arg;
    struct relay_udp_flow *f = (struct relay_udp_flow *)e;

    if (!f->dead && f->idle_timeout_ms > RELAY_UDP_STOP_IDLE_MS)
        ct_timer_arm(&w->uct, e, f->last_ms + RELAY_UDP_STOP_IDLE_MS);
}

void relay_udp_stopping(struct dp_worker *w)
{
    ct_foreach(&w->uct, udp_stop_arm, w);
}

/* ct_foreach callback of relay_udp_close_all. */
static void udp_end_one(struct ct_entry *e, void *arg)
{
    udp_flow_end(arg, (struct relay_udp_flow *)e, DP_CLOSE_SHUTDOWN);
}

void relay_udp_close_all(struct dp_worker *w)
{
    relay_udp_flush(w);
    ct_foreach(&w->uct, udp_end_one, w);
    relay_udp_reap(w);
}

/* State of relay_udp_listener_gone's callback. */
struct udp_gone {
    struct dp_worker *w;           /* the worker */
    const struct dp_listener *l;   /* the listener going away */
};

static void udp_end_if_listener(struct ct_entry *e, void *arg)
{
    struct udp_gone *g = arg;
    struct relay_udp_flow *f = (struct relay_udp_flow *)e;

    if (f->l == g->l)
        udp_flow_end(g->w, f, DP_CLOSE_LISTENER_GONE);
}

void relay_udp_listener_gone(struct dp_worker *w, struct dp_listener *l)
{
    struct udp_gone g = { .w = w, .l = l };

    relay_udp_flush(w); /* no pending reply may point at l */
    ct_foreach(&w->uct, udp_end_if_listener, &g);
}

/* State of relay_udp_close_backends' callback. */
struct udp_by_backend {
    struct dp_worker *w;           /* the worker */
    struct dp_close_set *set;      /* whose flows to end, and their counts */
    uint8_t reason;                /* DP_CLOSE_DRAIN_TIMEOUT or DP_CLOSE_MOVED */
};

static void udp_end_if_backend(struct ct_entry *e, void *arg)
{
    struct udp_by_backend *b = arg;
    struct relay_udp_flow *f = (struct relay_udp_flow *)e;

    if (f->dead || !dp_close_set_has(b->set, f->backend_id))
        return;
    dp_close_set_count(b->set, f->backend_id);
    udp_flow_end(b->w, f, b->w->stopping ? DP_CLOSE_SHUTDOWN : b->reason);
}

void relay_udp_close_backends(struct dp_worker *w, struct dp_close_set *set, uint8_t reason)
{
    /* a flow of a backend gone DOWN moves: the client's next datagram opens one elsewhere */
    struct udp_by_backend b = { .w = w, .set = set,
                                .reason = reason == DP_CLOSE_BACKEND_DOWN ? DP_CLOSE_MOVED
                                                                          : reason };

    relay_udp_flush(w); /* no pending reply may point at a flow freed below */
    ct_foreach(&w->uct, udp_end_if_backend, &b);
    relay_udp_reap(w);
}

void relay_udp_info(const struct relay_udp_flow *f, uint64_t now_ms, double now_unix,
                    struct dp_flow_info *out)
{
    out->service_id = f->service_id;
    out->backend_id = f->backend_id;
    out->family = f->ct.key.family;
    out->port = ntohs(f->peer.sa.sa_family == AF_INET ? f->peer.sin.sin_port
                                                      : f->peer.sin6.sin6_port);
    memcpy(out->addr, f->ct.key.caddr, 16);
    out->started = f->started;
    /* last_ms has millisecond steps: never report a last datagram before the first one */
    out->last_seen = now_unix - (double)(now_ms - f->last_ms) / 1000.0;
    if (out->last_seen < out->started)
        out->last_seen = out->started;
    out->datagrams_to_backend = f->dg_c2b;
    out->datagrams_to_client = f->dg_b2c;
    out->bytes_to_backend = f->bytes_c2b;
    out->bytes_to_client = f->bytes_b2c;
}
