/* relay_tcp.c: the TCP relay of one worker (accept, connect with retries, splice/copy, close).
 *
 * Design.
 *
 * Accept. Listeners are level-triggered and owned by exactly one worker (one SO_REUSEPORT socket
 * per worker), so there is no thundering herd. Each wake-up accepts at most RELAY_ACCEPT_BATCH
 * connections per listener; what is left is reported again by the level-triggered epoll on the
 * next iteration, which keeps accepts from starving established sessions. EMFILE/ENFILE/ENOBUFS/
 * ENOMEM count an accept_error and take every TCP listener of the worker out of epoll for
 * RELAY_EMFILE_PAUSE_MS; the loop's epoll timeout puts them back. Nothing spins.
 *
 * The fd reserve. An accept can take the last free descriptor, and then the backend socket (or
 * a pipe to park data in) fails with EMFILE: the client would be reset, its fd would be free
 * again, and the next queued client would meet the same fate, so a full backlog would drain as
 * resets. So each worker holds RELAY_RESERVE_FDS eventfds it does not need. When a socket or a
 * pipe for a session in hand fails with EMFILE/ENFILE, the worker closes them, retries once
 * (now it fits), and pauses its listeners; they come back only when the reserve can be taken
 * again, that is when at least that many fds are free. Queued clients wait in the backlog, as
 * they do when accept4() itself fails. A copy that the destination takes only in part needs a
 * pipe for the rest; with no fd left for one even after the reserve, the rest (at most one copy
 * buffer) is parked in memory (relay_dir.park) and written before the source is read again.
 * The control plane needs descriptors too (its control socket, metrics, health probes, log
 * files), and if the workers took them all, `l4lb status` could not even connect. So the data
 * plane has a ceiling (dp->fd_ceiling, set by the control plane a little below the limit):
 * since the kernel always hands out the lowest free number, a new fd at or above it means
 * the process is nearly full. The worker then acts as if it were out of fds: a pipe or a UDP
 * flow socket up there is closed again (pipepool.c; relay_udp.c), and the reserve is refilled
 * only below the ceiling. An accepted client or a backend socket up there belongs to a session
 * in hand: the worker spends its reserve and moves the socket down into the room that gives
 * (fcntl F_DUPFD_CLOEXEC takes the lowest free number), and the listeners pause as above.
 * Only when the reserve is already spent does a socket stay above, for that one session. So
 * the workers hold (nearly) nothing above the ceiling, and that part stays the control
 * plane's.
 *
 * Admission and backend choice. The service is looked up by the listener's service id in the
 * table the worker reloaded just before this accept batch (dp_worker_refresh_table). max_connections is enforced with one
 * atomic fetch-add on sched_shared.svc_active (undone when over the limit), so the limit holds
 * across workers exactly. sched_pick() chooses the backend; the session records the backend ids
 * it tried (not table indexes), so a retry after a table swap still excludes the right backends.
 * The connect is nonblocking, its socket is registered edge-triggered for IN|OUT|RDHUP right
 * after connect() is called (the insert polls it, so a connect that already completed or failed
 * is reported), and the ct timer carries the connect deadline. The first EPOLLOUT without
 * EPOLLERR/EPOLLHUP means connected (tcp_poll() raises EPOLLOUT only after the handshake, and
 * a failed connect always carries EPOLLERR), so only the unusual masks pay a getsockopt
 * (SO_ERROR). A refused, unreachable or
 * timed-out attempt counts connect_failures on that backend and, while failures <= retries, picks
 * again. Local resource failures (EMFILE, ENOBUFS, ...) are not the backend's fault: they count
 * accept_errors and reset the client. A transparent backend (source = "client") of the other
 * family than the client's is no candidate for it: the scheduler leaves it out (sched_pick's
 * cfamily), so it costs no retry and no connect failure. No candidate left: RST the client
 * (SO_LINGER 0), count no_backend. sched_shared.active[backend_id] is incremented when an
 * attempt starts and decremented exactly once when the attempt fails or the session ends.
 *
 * Relay. Both sockets are registered once, edge-triggered: the backend for IN|OUT|RDHUP, the
 * client for IN|RDHUP only. EPOLLOUT on the client is added by one EPOLL_CTL_MOD the first time
 * a write to it blocks (relay_client_want_out): writes to clients nearly always succeed, and an
 * EPOLLOUT interest would otherwise turn each state change of our own FIN (the shutdown, the
 * peer's ACK) into an event to handle. The client is registered at accept, so a client that
 * resets while its backend is still connecting frees its session at once instead of holding a
 * slot until the connect deadline; what it sent meanwhile waits in its socket and is pumped once
 * the backend is up. Only if one of its events said so (s->cev): edge-triggered epoll queues an
 * event for every arrival, so a client that raised none has nothing waiting, and the backend's
 * connect event likewise tells whether the backend already wrote. That spares the two recv()
 * calls that would each return EAGAIN on a new connection.
 * A direction is pumped until the source says EAGAIN (the edge will come again; on a plain
 * EPOLLIN edge a short recv() already proves that), the destination says EAGAIN (EPOLLOUT will
 * come; for TCP it is only raised after a writer filled the buffer, so it costs nothing while
 * writes succeed), or it has moved RELAY_BUDGET bytes in this wake-up; then the session goes on
 * the worker's ready list and is pumped again after the current batch without waiting for epoll
 * (epoll_wait gets timeout 0 while the list is not empty). So there are no lost edges and no
 * busy loops, and one fat stream cannot starve others. EPOLLERR on either socket (a reset, even
 * on a quiet half-closed session) resets both sides at once.
 *
 * A direction starts in copy mode: recv() into the worker's small buffer, send() to the
 * destination. A read that fills the buffer means bulk data, and the direction switches to
 * splice mode: splice(src -> pipe) then splice(pipe -> dst), with the pipe taken from the
 * worker's pool and given back as soon as it is empty (so idle sessions hold no pipe). A splice
 * wake-up that moves less than one buffer's worth switches back to copy mode. When the
 * destination takes only part of a copied chunk the rest is written into a pooled pipe and
 * drained by splice like bulk data, so the buffer is free again at once and bytes keep their
 * order: a direction never reads while its pipe holds bytes.
 *
 * Measured (loopback, 2 vCPUs shared with the client and the backend, kernel 6.18, one worker;
 * LB CPU = utime+stime of every thread of the LB process from /proc/PID/task/TID/schedstat;
 * three runs each, figures are min..max):
 *   one bulk stream, 8 GiB client->backend, 1 MiB sendall()s:
 *     splice only, 64 KiB pipes        0.105..0.155 CPU-s/GiB   14..29 Gbit/s
 *     copy 16 KiB + splice (default)   0.109..0.123 CPU-s/GiB   17..27 Gbit/s
 *     copy only, 16 KiB buffer         0.242..0.333 CPU-s/GiB    8..22 Gbit/s
 *     copy only, 64 KiB buffer         0.211..0.230 CPU-s/GiB   14..17 Gbit/s
 *     default with 1 MiB pipes         0.087..0.099 CPU-s/GiB   17..25 Gbit/s
 *   32 connections ping-ponging, LB CPU per round trip (both directions):
 *     64 B:  copy 5.1..6.1 us, splice only 5.2..6.2 us;  1 KiB: 5.9 vs 6.5 us;
 *     4 KiB: copy 4.8..5.8 us, splice only 5.6..6.3 us;  8 KiB: 6.1 vs 7.0 us.
 *   the same with strace -c: 2 recvfrom + 2 sendto per round trip (+0.06 epoll_wait); a
 *     plain EPOLLIN edge whose recv() came back short skips the EAGAIN recv() that would only
 *     confirm an empty queue (relay_pump's `edge`), which took it down from 4 recvfrom.
 *   short connections (connect, 16 B echoed, close; 4 client threads): about 14,000/s at
 *     37..39 us of LB CPU each (accept, socket, connect, 2 x epoll_ctl, 2 x TCP_NODELAY, relay,
 *     2 x close); the client and the echo backend used the rest of the two vCPUs.
 *   new connection per HTTP request (wrk -c50, Connection: close, through nginx; counted with
 *     perf's syscall tracepoints and /proc/net/snmp OutSegs, see docs/performance.md): 19.3
 *     system calls per connection before (5.2 recvfrom of which 1.2 EAGAIN, 2 shutdown, 2
 *     setsockopt, 1 getsockopt), 15.1 after the changes below (nginx stream: 17.2); 20.0 TCP
 *     segments per connection before, 18.6..19.2 after (nginx: 20.0); 6.7 -> 5.0 epoll events.
 * So splice halves the CPU per byte for bulk, and copying is 5..15% cheaper for messages that
 * fit the buffer (no pipe round trip, one copy each way of a few cache lines). Throughput
 * varies a lot from run to run on this shared box; the CPU per unit of work is the stable
 * figure. Pipes keep the kernel default size (64 KiB): 1 MiB pipes saved about 18% CPU with the
 * 1 MiB sendall() stream above, but with iperf3 through the harness's setup (bench/tcpprobe.py,
 * three runs each) 64 KiB / 256 KiB / 1 MiB pipes cost 135..143 / 121..132 / 125..144 ms of
 * CPU per GB for one stream and 121..136 / 102..131 / 123..147 for eight: no size wins beyond
 * the noise, while a busy direction may pin up to the pipe's size of kernel memory and
 * unprivileged users hit pipe-user-pages-soft after 64 pipes of 1 MiB (new pipes then get 8 KiB,
 * too small to park a copy chunk). dp_set_tuning() can raise it.
 *
 * Half-close and reset. read() == 0 marks the direction's source at EOF; once its pipe is empty
 * the relay calls shutdown(dst, SHUT_WR) and the direction is done; the other keeps going. When
 * the other direction is done already, the relay closes both sockets without that shutdown:
 * both sources are at EOF, so their receive queues are empty and close() sends the same FIN.
 * An event with EPOLLRDHUP (and no EPOLLERR) says the FIN is queued behind the data, so a short
 * copy read there is the last data: it is sent with MSG_MORE and the FIN that follows at once
 * joins it in one segment (tcp_send_fin() merges into an unsent tail), and EOF is taken without
 * the recv() that would return 0. Both done: both sockets are closed normally. ECONNRESET/EPIPE (or any other hard error) on either
 * side closes both sockets with SO_LINGER 0, so the peer of the healthy side sees a reset too.
 *
 * System calls. The data path enters the kernel through syscall(2) rather than glibc's
 * wrappers: recv, send, splice, close, accept4, connect and epoll_wait are cancellation points,
 * which in a multithreaded process cost two atomic updates of the thread's cancellation state
 * per call (1.5..2% of the CPU per keep-alive request in perf; workers are never cancelled).
 * Sanitizer builds keep the wrappers (DP_LIBC_CALLS), which the sanitizers intercept. TCP_NODELAY
 * is set once on each listener (dp_add_listener) and inherited by accepted sockets (enum
 * dp_nodelay), so only the backend socket needs its own setsockopt. Likewise a service's
 * congestion control: the client leg inherits TCP_CONGESTION from the listener (set by the
 * control plane), the backend leg gets one more setsockopt before connect(), only for services
 * that name an algorithm (dp_congestion_control, dp.c).
 *
 * Socket buffers. So do a service's SO_SNDBUF / SO_RCVBUF (HAProxy's tune.sndbuf.* /
 * tune.rcvbuf.*): the client leg inherits them from the listener (set by the control plane), the
 * backend leg gets them from relay_sockbuf() right after socket(), before connect() or the fast
 * open sendto(), because the window scale the SYN announces follows the receive buffer at that
 * moment. A service without them pays one acquire load of its side-table word and a branch per
 * connect attempt (dp.c, "Socket buffers"); one with them, one setsockopt per size, of the kind
 * (plain or FORCE) the setter found to work. A refusal costs the connection nothing but its
 * cap: it is counted in the service's sockbuf_errors (shown by `l4lb status`) and the session
 * goes on with the kernel's buffers, because failing a client over a memory bound would turn a
 * tuning knob into an outage.
 *
 * Fast open. A service with fast open (dp_set_fast_open; dp.c, "Service options") puts the
 * client's first bytes into the SYN towards its backend when they are already waiting as an
 * attempt starts: recv(MSG_PEEK) of up to one copy buffer, then sendto(MSG_FASTOPEN) on the
 * fresh socket instead of connect(). With a cookie for that backend the kernel sends a SYN with
 * as many of the bytes as fit (s->syn_data) and owns them from then on; without one it sends a
 * plain SYN that asks for a cookie, takes nothing and says EINPROGRESS, which is then a normal
 * connect in progress. The bytes are only peeked: they stay in the client socket until the
 * attempt is confirmed by the usual EPOLLOUT; then the pump's first copy read from the client
 * skips exactly syn_data bytes and sends only what follows them (the rest, if the SYN took
 * only part, or what the client wrote since), so dropping them costs no system call of its
 * own. Where they do not fit that read (splice-only tuning, a copy buffer smaller than the
 * peek) one recv(MSG_TRUNC), which discards on TCP without copying, drops them. So a refused or
 * timed-out attempt retries the next backend with the client's data intact, each attempt
 * peeks afresh, and failures are counted exactly as without fast open. With nothing waiting
 * (a server-speaks-first protocol, a slow client) the attempt is a plain connect(): fast open
 * never holds a SYN back until the client writes, as TCP_FASTOPEN_CONNECT would. The cost on
 * such a connection is the one peek that says EAGAIN; a kernel whose net.ipv4.tcp_fastopen lacks
 * the client bit refuses MSG_FASTOPEN (EOPNOTSUPP) and the attempt falls back to connect().
 * That the backend may receive a SYN's data twice (a retransmitted SYN, a replay) is TFO's
 * usual caveat and the application's concern (docs/configuration.md).
 *   Measured (bench/tcpprobe.py wrk-close against nginx `fastopen=4096`, loopback, perf's
 *   syscall tracepoints per connection): a connection whose request is waiting trades
 *   connect() + send() for the peek + sendto(MSG_FASTOPEN), the same count, and saves about
 *   2.3 of 18.5 TCP segments; one whose request is not there yet pays the peek for nothing. With
 *   wrk a median 13 % (0.2..44 %) of the requests were there when the relay accepted, all of
 *   them when the listener had TCP_DEFER_ACCEPT (docs/configuration.md has the figures).
 *
 * PROXY protocol. A service with `proxy_protocol` (dp_set_proxy_protocol; dp.c, "Service
 * options") owes each backend connection one header (proxyhdr.c) before the client's first
 * byte. The version is read with the other option bits when an attempt starts (s->pp), so a
 * reload that changes it applies from the next attempt and never mid-header. The header is
 * rebuilt when needed rather than kept: the session key holds the client's address and the
 * listener's, and only a wildcard listener costs a getsockname() for the address the client
 * reached. It goes out when the backend connection is up (relay_pp_send, from
 * relay_established, before any pump), with MSG_MORE when an event already said client bytes
 * wait, so that header and request share a segment; a short write there is a local failure,
 * since a connection that fresh has room for far more. With fast open the header leads the
 * SYN's data: the kernel takes header and peeked client bytes together, s->pp_sent counts the
 * header's share and s->syn_data the client's, and what the SYN did not take of the header is
 * sent once connected, ahead of the rest. Even with nothing from the client waiting (a
 * server-speaks-first protocol) the SYN carries the header. A retry builds a fresh header for
 * the next backend: the addresses are the client's, whichever backend it reaches. The header's
 * bytes are not counted as client bytes (bytes_to_backend).
 *
 * Receiving the PROXY protocol. A service with accept_proxy (dp_set_accept_proxy; a timeout
 * word per service id, read once per accepted client: the only cost to other services, one load
 * and a predictable branch in relay_new) sits behind another balancer, and each client starts
 * with a header naming the real one. relay_new admits the client as usual (max_connections
 * counts it) but picks no backend: the session stays RELAY_CONNECTING with s->pin WAIT, the
 * real peer saved in s->peer_*, and the ct timer set to the header deadline. The client's
 * EPOLLIN (the insert polls, so a header already queued reports at once) goes to
 * relay_pin_read, never to the connect path: it peeks at most PP_PARSE_MIN + 1 bytes and asks
 * pp_parse (proxyhdr.c) for a verdict. Nothing is consumed until the header is whole, so a
 * header in pieces needs no buffer in the session: each piece raises a new edge and is peeked
 * again with the ones before it. Once whole, recv(MSG_TRUNC) discards exactly its length
 * without copying (a version 2 header's TLVs beyond the peek are discarded by count as they
 * arrive, s->pin SKIP_* and s->pin_skip), so the client's first bytes stay queued for the
 * pump and for fast open's peek. A header naming a client rewrites the session key (client and
 * destination; re-indexed), and everything downstream reads the key: the scheduler's hash, the
 * snapshots, the log, and the header sent on with proxy_protocol (whose destination is then the
 * header's, not getsockname's). LOCAL / UNKNOWN keep the connection's addresses. Then the
 * deadline is cancelled, s->cev says whether bytes or a FIN follow the header, and
 * relay_connect_next picks a backend as for any client. With accept_proxy_from (a list of
 * prefixes in the service's table record, so a reload changes it atomically with the rest)
 * only a peer inside one of them waits for a header: relay_new scans the list once (at most
 * 64 entries, dp_table_proxy_from_match; only for accept_proxy services, and a service
 * without a list pays one more branch) and a client outside every prefix connects at once,
 * as without accept_proxy, its first bytes untouched; its peer is itself and it counts
 * proxy_direct. A bad header, or a valid beginning
 * followed by the client's FIN (EPOLLRDHUP), counts proxy_header_errors and resets the client;
 * the deadline counts proxy_header_timeouts and resets it; neither ever chose a backend. A FIN
 * before any byte (a TCP check of the balancer in front) closes quietly. The session struct
 * did not grow for this: the tried backend ids became 16-bit (DP_MAX_BACKENDS is 65536), and
 * 20 of the 64 bytes that freed hold the peer's address and the skip count, with pin,
 * peer_family and peer_port in what was padding: 432 -> 384 bytes per session.
 *
 * The queue. A service whose record has queue_timeout_ms (HAProxy's `timeout queue`) does not
 * refuse a client whose first pick found every eligible backend at its max_connections: the
 * capacity branch of relay_connect_next calls relay_queue_wait instead, which takes a place
 * in sched_shared.queued[service] (one atomic fetch-add, undone beyond the record's max_queue:
 * then the client is rejected as before), appends the session to the worker's waiting list
 * (w->q_head/q_tail, linked through ready_prev/ready_next, which a session without a backend
 * never uses), and arms the ct timer with the queue deadline. The session stays
 * RELAY_CONNECTING with s->queued set and no backend: nothing is read from the client (its
 * events only note data in cev, as while connecting; EPOLLHUP/EPOLLERR end it as client_reset,
 * and so does a FIN with nothing before it as client_closed, while a FIN after data, which may
 * be a half-close after a request, keeps it waiting: relay_queue_fin), it holds no pipe and no
 * backend socket, and it still
 * counts in svc_active (the service's max_connections, which never queues). A retry after a
 * failed connect takes the same branch when every weighted backend it has not tried is full
 * (the capacity test leaves the tried ones out: relay_was_tried), so it waits again at the
 * tail with a new deadline, its tried ids kept, instead of ending as connect_failed; without
 * a queue or room in it, it still ends that way. A slot frees
 * where a backend is released (relay_release_backend: a session ends, an attempt fails): there
 * one relaxed load of sched_shared.queued_all, zero unless someone waits, is the whole cost
 * to services without a queue. When it is not zero and clients of the session's own service
 * wait (sched_shared.queued[service]: a backend's slot serves no other service) the worker
 * sets w->q_kick and writes the eventfd of every other worker whose q_waiting is not zero;
 * after its batch, a worker with waiting sessions that was kicked (or woken by the eventfd, or
 * reached q_retry_ms, every RELAY_QUEUE_RETRY_MS while it holds any) runs relay_tcp_queue_run:
 * oldest first, each waiting session picks again through relay_connect_next (a first pick:
 * same scheduler, live table), and a service whose session still finds no slot is skipped
 * for the rest of the pass, so a service's waiting sessions leave a worker in arrival order.
 * One that gets a backend leaves the queue (relay_queue_leave: counts, timer, its wait in queue_ms)
 * and connects as usual. A new client of a service whose queue is not empty queues behind it
 * without picking (relay_queue_behind: from relay_new, or from relay_pin_read once a PROXY header
 * was read), and queuing a client kicks its own worker, so a slot freed between a failed pick and
 * the queuing (when nobody was there to be kicked) is found after the batch. The deadline
 * (relay_tcp_expire) resets it as queue_timeout; a stop resets every waiting session at once
 * (relay_tcp_queue_close_all: rejected, reason shutdown). The order holds across workers: a
 * waiting session takes a ticket of its service (sched_shared.q_issued; the union's queue_ticket)
 * and each worker publishes the ticket of its oldest session of each service (w->q_first); a try
 * skips a service whose oldest session here is younger than another worker's oldest
 * (relay_queue_older_elsewhere), whose worker was kicked by the release or retries within
 * RELAY_QUEUE_RETRY_MS. So a worker where slots keep freeing does not serve its own newcomers
 * while an older client elsewhere waits out its deadline. The record is read when a session starts
 * to wait, so a reload that changes the queue applies to new waits; a waiting session keeps its
 * deadline and place and reads the live table at each pick (a removed service ends it as
 * no_backend). What it costs is in docs/performance.md ("The queue for full backends").
 *
 * Lifetime. A session closed while handling an event may still be referenced by later events of
 * the same epoll batch or by the ready list, so closing marks it dead, closes its fds (which
 * drops it from epoll) and queues it on the worker's graveyard; relay_tcp_reap() frees the slab
 * objects after the batch. Idle timeouts are lazy: the data path only stores last_active_ms; the
 * timer re-arms itself when it fires early.
 *
 * Close reasons and the connection log. Every end of a session goes through relay_kill(), and
 * every caller says why (enum dp_close_reason in dp.h), decided where the close is decided: the
 * FIN bookkeeping knows which side finished first (relay_dir_finish: the direction that
 * completes the pair is the second), a failed write blames the destination's side and a failed
 * read the source's (relay_pump's reset_dst / reset labels), the epoll error path the socket it
 * came from, the connect path rejected / no_backend / connect_failed, the timers idle_timeout,
 * stop shutdown, the queue's deadline queue_timeout, dp_close_backend_sessions() the reason its
 * caller gives, drain_timeout or
 * backend_down (shutdown once the worker is stopping: a second signal cutting the drain short),
 * local failures error. Clients
 * refused before they had a session (no service, the service's max_connections, no slab slot)
 * are logged at that spot, with backend -1. When the log is off the whole cost is one
 * predictable branch on w->log_on per close; when it is on, relay_kill() fills one record in
 * place in the worker's ring (connlog_ring.c: no lock, no allocation; the clock is a vDSO read).
 * A session whose current attempt was released (connect_failed) reports the last backend tried.
 *
 * Close by backend. relay_tcp_close_backends() runs as a worker command (dp.c), between epoll
 * batches: in one pass over the worker's sessions it resets both sides of every session whose
 * current backend is in the set asked for (one bit test each; struct dp_close_set), whatever
 * its state, counts it like any other close and on its backend's entry of the set, and frees
 * them at once (nothing of the batch can still point at them).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "proxyhdr.h"
#include "relay_tcp.h"

/* How the event that led to a pump describes the source (relay_pump's `hint`). */
#define RELAY_HINT_EDGE 1u /* a plain EPOLLIN edge: a short copy read proves the queue empty */
#define RELAY_HINT_FIN 2u  /* the source's FIN is already queued (RDHUP, no error): a short copy
                              read is the last data before EOF */
#define RELAY_FO_MIN_PEEK 2048u /* fast open: peek at least this much (a stack buffer when the
                                   worker's copy buffer is smaller or absent) */

/* Plain system calls for the data path. glibc's recv/send/close/accept4/connect/splice/write
 * are cancellation points, and in a multithreaded process each one brackets the system call
 * with two atomic updates of the thread's cancellation state (1.5..2% of the relay's CPU per
 * request in perf). Workers are never cancelled, so they enter the kernel through syscall(2).
 * Sanitizer builds keep the libc calls, which the sanitizers intercept to follow descriptors
 * and buffers (DP_LIBC_CALLS, relay_tcp.h). */
#if DP_LIBC_CALLS
#define relay_recv(fd, buf, len) recv((fd), (buf), (len), 0)
#define relay_send(fd, buf, len, flags) \
    send((fd), (buf), (len), (flags) | MSG_NOSIGNAL | MSG_DONTWAIT)
#define relay_splice(in, out, len) \
    splice((in), NULL, (out), NULL, (len), SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
#define relay_close(fd) ((void)close(fd))
#define relay_write(fd, buf, len) write((fd), (buf), (len))
#define relay_accept4(fd, sa, sl, fl) accept4((fd), (sa), (sl), (fl))
#define relay_connect(fd, sa, sl) connect((fd), (sa), (sl))
#define relay_peek(fd, buf, len) recv((fd), (buf), (len), MSG_PEEK | MSG_DONTWAIT)
#define relay_discard(fd, len) recv((fd), NULL, (len), MSG_TRUNC | MSG_DONTWAIT)
#define relay_sendto_fo(fd, buf, len, sa, sl) \
    sendto((fd), (buf), (len), MSG_FASTOPEN | MSG_NOSIGNAL | MSG_DONTWAIT, (sa), (sl))
#else
#define relay_recv(fd, buf, len) syscall(SYS_recvfrom, (fd), (buf), (len), 0, NULL, NULL)
#define relay_send(fd, buf, len, flags) \
    syscall(SYS_sendto, (fd), (buf), (len), (flags) | MSG_NOSIGNAL | MSG_DONTWAIT, NULL, 0)
#define relay_splice(in, out, len) \
    syscall(SYS_splice, (in), NULL, (out), NULL, (len), SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
#define relay_close(fd) ((void)syscall(SYS_close, (fd)))
#define relay_write(fd, buf, len) syscall(SYS_write, (fd), (buf), (len))
#define relay_accept4(fd, sa, sl, fl) (int)syscall(SYS_accept4, (fd), (sa), (sl), (fl))
#define relay_connect(fd, sa, sl) syscall(SYS_connect, (fd), (sa), (sl))
#define relay_peek(fd, buf, len) \
    syscall(SYS_recvfrom, (fd), (buf), (len), MSG_PEEK | MSG_DONTWAIT, NULL, NULL)
#define relay_discard(fd, len) \
    syscall(SYS_recvfrom, (fd), NULL, (len), MSG_TRUNC | MSG_DONTWAIT, NULL, NULL)
#define relay_sendto_fo(fd, buf, len, sa, sl) \
    syscall(SYS_sendto, (fd), (buf), (len), MSG_FASTOPEN | MSG_NOSIGNAL | MSG_DONTWAIT, (sa), (sl))
#endif

/* The pump hint of an event mask of the source socket. */
static inline unsigned relay_hint(uint32_t events)
{
    if (events & EPOLLERR)
        return 0;
    if (events & EPOLLRDHUP)
        return RELAY_HINT_FIN;
    return events & EPOLLHUP ? 0 : RELAY_HINT_EDGE;
}

/* Session of an epoll endpoint tag. */
static inline struct relay_session *relay_of_cep(struct dp_ep *ep)
{
    return (struct relay_session *)((char *)ep - offsetof(struct relay_session, cep));
}

static inline struct relay_session *relay_of_bep(struct dp_ep *ep)
{
    return (struct relay_session *)((char *)ep - offsetof(struct relay_session, bep));
}

/* Close fd so the peer sees a reset (SO_LINGER with a zero timeout). */
static void relay_rst_close(int fd)
{
    struct linger lg = { .l_onoff = 1, .l_linger = 0 };

    (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    relay_close(fd);
}

static void relay_nodelay(int fd)
{
    int one = 1;

    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* True for errors that say this host ran out of something, not that a peer failed. */
static int relay_local_error(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM ||
           err == EADDRNOTAVAIL;
}

static void relay_ready_add(struct dp_worker *w, struct relay_session *s)
{
    if (s->on_ready)
        return;
    s->on_ready = 1;
    s->ready_next = NULL;
    s->ready_prev = w->ready_tail;
    if (w->ready_tail)
        w->ready_tail->ready_next = s;
    else
        w->ready_head = s;
    w->ready_tail = s;
}

static void relay_ready_del(struct dp_worker *w, struct relay_session *s)
{
    if (!s->on_ready)
        return;
    if (s->ready_prev)
        s->ready_prev->ready_next = s->ready_next;
    else
        w->ready_head = s->ready_next;
    if (s->ready_next)
        s->ready_next->ready_prev = s->ready_prev;
    else
        w->ready_tail = s->ready_prev;
    s->ready_prev = s->ready_next = NULL;
    s->on_ready = 0;
}

/* Give a direction's pipe back (to the pool if empty, else closed). */
static void relay_drop_pipe(struct dp_worker *w, struct relay_dir *d)
{
    if (d->pipe.rfd < 0)
        return;
    pipepool_put(&w->pp, &d->pipe, d->in_pipe == 0);
    d->in_pipe = 0;
}

/* Free a direction's parked bytes (relay_pump: out of fds for a pipe). */
static void relay_drop_park(struct relay_dir *d)
{
    free(d->park);
    d->park = NULL;
    d->park_len = d->park_off = 0;
}

/* A backend slot was freed while clients wait somewhere: try this worker's queue after the
 * batch, and wake every other worker that holds waiting clients (one eventfd write each). */
static void relay_queue_kick(struct dp_worker *w)
{
    struct dp *dp = w->dp;
    uint64_t one = 1;
    uint32_t i;

    w->q_kick = 1;
    for (i = 0; i < dp->n_workers; i++) {
        struct dp_worker *o = &dp->workers[i];
        if (o != w && atomic_load_explicit(&o->q_waiting, memory_order_relaxed) &&
            o->evfd >= 0) {
            (void)!relay_write(o->evfd, &one, sizeof(one));
            DP_CNT_ADD(&w->cnt->queue_kicks, 1);
        }
    }
}

/* Release the backend held by the current attempt (active counts). */
static void relay_release_backend(struct dp_worker *w, struct relay_session *s)
{
    if (s->backend_id < 0)
        return;
    atomic_fetch_sub_explicit(&w->dp->shared->active[s->backend_id], 1, memory_order_relaxed);
    dp_be_add(w, s->backend_id, DP_BC_CONNS_ACTIVE, -1);
    s->backend_id = -1;
    /* the whole cost of the queue where nobody waits: one relaxed load and a branch. A slot
     * of this backend serves only its own service's waiting clients: no kick for the others */
    if (__builtin_expect(atomic_load_explicit(&w->dp->shared->queued_all,
                                              memory_order_relaxed) != 0, 0) &&
        atomic_load_explicit(&w->dp->shared->queued[s->service_id], memory_order_relaxed) > 0)
        relay_queue_kick(w);
}

/* Take a waiting session out of the worker's queue (dispatched or closed): counts, timer. */
static void relay_queue_leave(struct dp_worker *w, struct relay_session *s)
{
    struct sched_shared *sh = w->dp->shared;
    uint64_t waited = w->now_ms > s->last_active_ms ? w->now_ms - s->last_active_ms : 0;
    uint32_t sid = s->service_id;
    struct relay_session *n;

    if (atomic_load_explicit(&w->q_first[sid], memory_order_relaxed) ==
        (RELAY_QUEUE_FIRST | s->queue_ticket)) { /* its service's oldest here: the next one */
        for (n = s->ready_next; n && n->service_id != sid; n = n->ready_next)
            ;
        atomic_store_explicit(&w->q_first[sid], n ? RELAY_QUEUE_FIRST | n->queue_ticket : 0,
                              memory_order_relaxed);
    }
    if (s->ready_prev)
        s->ready_prev->ready_next = s->ready_next;
    else
        w->q_head = s->ready_next;
    if (s->ready_next)
        s->ready_next->ready_prev = s->ready_prev;
    else
        w->q_tail = s->ready_prev;
    s->ready_prev = s->ready_next = NULL;
    s->queued = 0;
    /* the word held the ticket until now; a client re-queued after a failed connect reports
     * its last wait (its first one is in the counter already) */
    s->queue_ms = waited > UINT32_MAX ? UINT32_MAX : (uint32_t)waited;
    w->q_n--;
    atomic_store_explicit(&w->q_waiting, w->q_n, memory_order_relaxed);
    atomic_fetch_sub_explicit(&sh->queued[s->service_id], 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&sh->queued_all, 1, memory_order_relaxed);
    dp_svc_add(w, s->service_id, DP_SC_QUEUED_NOW, -1);
    dp_svc_add(w, s->service_id, DP_SC_QUEUE_WAIT_MS, (int64_t)s->queue_ms);
    ct_timer_cancel(&w->ct, &s->ct);
}

/* Put a session whose pick found every eligible backend full at the tail of the queue
 * (svc->queue_timeout_ms != 0): its first pick, or a retry after a failed connect whose
 * untried backends are all full (redispatch: it waits again, at the tail, with a new
 * deadline, and its next pick still leaves out the backends that failed). Returns 0, or
 * -ENOSPC when the service's max_queue clients wait already (the caller refuses it as
 * before: rejected). */
static int relay_queue_wait(struct dp_worker *w, struct relay_session *s,
                            const struct dp_service *svc)
{
    struct sched_shared *sh = w->dp->shared;
    int32_t prev = atomic_fetch_add_explicit(&sh->queued[s->service_id], 1, memory_order_relaxed);

    if ((uint32_t)prev >= svc->max_queue) {
        atomic_fetch_sub_explicit(&sh->queued[s->service_id], 1, memory_order_relaxed);
        return -ENOSPC;
    }
    atomic_fetch_add_explicit(&sh->queued_all, 1, memory_order_relaxed);
    s->queue_ticket = atomic_fetch_add_explicit(&sh->q_issued[s->service_id], 1,
                                                memory_order_relaxed);
    if (!atomic_load_explicit(&w->q_first[s->service_id], memory_order_relaxed))
        atomic_store_explicit(&w->q_first[s->service_id], RELAY_QUEUE_FIRST | s->queue_ticket,
                              memory_order_relaxed);
    s->queued = 1;
    s->last_active_ms = w->now_ms; /* when it began to wait */
    s->ready_next = NULL;
    s->ready_prev = w->q_tail;
    if (w->q_tail)
        w->q_tail->ready_next = s;
    else
        w->q_head = s;
    w->q_tail = s;
    if (w->q_n++ == 0)
        w->q_retry_ms = w->now_ms + RELAY_QUEUE_RETRY_MS;
    atomic_store_explicit(&w->q_waiting, w->q_n, memory_order_relaxed);
    dp_svc_add(w, s->service_id, DP_SC_QUEUED_NOW, 1);
    dp_svc_add(w, s->service_id, DP_SC_QUEUED_TOTAL, 1);
    ct_timer_arm(&w->ct, &s->ct, w->now_ms + svc->queue_timeout_ms);
    /* a slot freed between the pick and now kicked nobody (this worker had no waiter yet):
     * look again after the batch */
    w->q_kick = 1;
    return 0;
}

/* Fill one connection-log record of a TCP client (w->log_on): nothing, when the ring is full.
 * s: the session (its real peer, accept_proxy), NULL for a client refused before it had one. */
static void relay_log(struct dp_worker *w, const struct relay_session *s, uint32_t sid,
                      int32_t bid, const struct ct_key *k, double started, double now,
                      uint64_t c2b, uint64_t b2c, uint8_t reason)
{
    struct dp_conn_record *r = dp_log_claim(w);

    if (!r)
        return;
    r->service_id = sid;
    r->backend_id = bid;
    r->protocol = DP_PROTO_TCP;
    r->reason = reason;
    r->family = k->family;
    r->port = k->cport;
    memcpy(r->addr, k->caddr, 16);
    if (s && s->peer_family) {
        r->peer_family = s->peer_family;
        r->peer_port = s->peer_port;
        memcpy(r->peer_addr, s->peer_addr, 16);
    } else {
        r->peer_family = 0;
        r->peer_port = 0;
        memset(r->peer_addr, 0, 16);
    }
    r->started = started;
    r->duration = now > started ? now - started : 0.0;
    r->bytes_to_backend = c2b;
    r->bytes_to_client = b2c;
    /* queue_ms shares its word with pin_skip: a client still owing (part of) its PROXY
     * header never waited, whatever header bytes were left to skip */
    r->queued_ms = s && s->pin < RELAY_PIN_WAIT ? s->queue_ms : 0;
    connlog_ring_commit(w->log_ring);
}

/* Log a client refused before it had a session (w->log_on): duration 0, no backend. */
static void relay_log_refused(struct dp_worker *w, uint32_t sid,
                              const struct sockaddr_storage *ss, uint8_t reason)
{
    struct ct_key k;
    double now = dp_unix_now();

    memset(&k, 0, sizeof(k));
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        k.family = 4;
        k.cport = ntohs(sin->sin_port);
        memcpy(k.caddr, &sin->sin_addr, 4);
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        k.family = 6;
        k.cport = ntohs(sin6->sin6_port);
        memcpy(k.caddr, &sin6->sin6_addr, 16);
    }
    relay_log(w, NULL, sid, -1, &k, now, now, 0, 0, reason);
}

/* End a session: close both sockets (with RST when rst), release everything, leave a record in
 * the connection log (when on) saying why (enum dp_close_reason), and queue the object for
 * relay_tcp_reap(). Every close of a session goes through here. Safe to call twice. */
static void relay_kill(struct dp_worker *w, struct relay_session *s, int rst, uint8_t reason)
{
    if (s->state == RELAY_DEAD)
        return;
    if (__builtin_expect(s->queued, 0))
        relay_queue_leave(w, s);
    if (__builtin_expect(w->log_on, 0))
        relay_log(w, s, s->service_id,
                  s->backend_id >= 0 ? s->backend_id
                  : s->n_tried     ? (int32_t)s->tried_ids[s->n_tried - 1]
                                   : -1,
                  &s->ct.key, s->started, dp_unix_now(), s->bytes_c2b, s->bytes_b2c, reason);
    if (s->cfd >= 0) {
        if (rst)
            relay_rst_close(s->cfd);
        else
            relay_close(s->cfd);
        s->cfd = -1;
    }
    if (s->bfd >= 0) {
        if (rst)
            relay_rst_close(s->bfd);
        else
            relay_close(s->bfd);
        s->bfd = -1;
    }
    relay_drop_pipe(w, &s->c2b);
    relay_drop_pipe(w, &s->b2c);
    relay_drop_park(&s->c2b);
    relay_drop_park(&s->b2c);
    relay_release_backend(w, s);
    atomic_fetch_sub_explicit(&w->dp->shared->svc_active[s->service_id], 1, memory_order_relaxed);
    dp_svc_add(w, s->service_id, DP_SC_CONNS_ACTIVE, -1);
    ct_timer_cancel(&w->ct, &s->ct);
    ct_remove(&w->ct, &s->ct);
    relay_ready_del(w, s);
    s->state = RELAY_DEAD;
    s->grave_next = w->grave;
    w->grave = s;
}

void relay_tcp_reap(struct dp_worker *w)
{
    struct relay_session *s;

    while ((s = w->grave) != NULL) {
        w->grave = s->grave_next;
        ct_free(&w->ct, &s->ct);
    }
}

int relay_reserve_fill(struct dp_worker *w)
{
    while (w->n_reserve < RELAY_RESERVE_FDS) {
        int fd = eventfd(0, EFD_CLOEXEC);
        if (fd < 0)
            return -errno;
        if (relay_fd_high(w, fd)) { /* fits only in the control plane's part */
            relay_close(fd);
            return -EMFILE;
        }
        w->reserve_fd[w->n_reserve++] = fd;
    }
    return 0;
}

uint32_t relay_reserve_spend(struct dp_worker *w)
{
    uint32_t n = w->n_reserve;

    relay_reserve_close(w);
    if (n)
        relay_tcp_pause_listeners(w);
    return n;
}

void relay_reserve_close(struct dp_worker *w)
{
    while (w->n_reserve > 0)
        relay_close(w->reserve_fd[--w->n_reserve]);
}

/* fd came out at or above the descriptor ceiling: move it below, into the room the reserve
 * gives back (the listeners then pause until the reserve fits below the ceiling again). With
 * no reserve left it stays where it is, for the session in hand only: the listeners are paused
 * already. Returns the fd to use; the one given is closed when it was moved. */
static int relay_fd_lower(struct dp_worker *w, int fd)
{
    int low;

    if (!relay_fd_high(w, fd))
        return fd;
    if (!relay_reserve_spend(w)) {
        if (!w->paused_until_ms)
            relay_tcp_pause_listeners(w);
        return fd;
    }
    low = fcntl(fd, F_DUPFD_CLOEXEC, 0); /* the lowest free number: one the reserve gave back */
    if (low < 0)
        return fd;
    relay_close(fd);
    return low;
}

/* True when err says this process is out of descriptors (what the reserve can help with). */
static int relay_out_of_fds(int err)
{
    return err == EMFILE || err == ENFILE;
}

void relay_tcp_pause_listeners(struct dp_worker *w)
{
    uint32_t i;

    for (i = 0; i < w->n_listeners; i++) {
        struct dp_listener *l = w->listeners[i];
        /* UDP listeners stay: their flows' datagrams need no new fd, and a new flow that
         * cannot get its socket is counted and dropped by relay_udp.c */
        if (l->proto == DP_PROTO_TCP && l->in_epoll) {
            (void)epoll_ctl(w->epfd, EPOLL_CTL_DEL, l->fd, NULL);
            l->in_epoll = 0;
        }
    }
    w->paused_until_ms = w->now_ms + RELAY_EMFILE_PAUSE_MS;
    DP_CNT_ADD(&w->cnt->listener_pauses, 1);
}

/* Fill a sockaddr for backend b. Returns its length (relay_tcp.h: the UDP relay uses it too). */
socklen_t relay_backend_addr(const struct dp_backend *b, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (b->family == 4) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(b->port);
        memcpy(&sin->sin_addr, b->addr, 4);
        return sizeof(*sin);
    }
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(b->port);
    memcpy(&sin6->sin6_addr, b->addr, 16);
    return sizeof(*sin6);
}

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24 /* linux/in.h, Linux 4.2 */
#endif

#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19 /* linux/in.h, SOL_IP */
#endif
#ifndef IPV6_TRANSPARENT
#define IPV6_TRANSPARENT 75 /* linux/in6.h, SOL_IPV6 */
#endif

/* The family a client (cfamily, caddr) binds as: an IPv4-mapped IPv6 client (::ffff:a.b.c.d)
 * is IPv4 (4), any other its own cfamily. */
uint8_t relay_client_family(uint8_t cfamily, const uint8_t *caddr)
{
    static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

    return cfamily == 6 && memcmp(caddr, mapped, sizeof(mapped)) == 0 ? 4 : cfamily;
}

/* The client address a transparent backend socket of family `family` binds: the client's own
 * (cfamily, caddr), an IPv4-mapped IPv6 client (::ffff:a.b.c.d) as the IPv4 address a.b.c.d.
 * Fills ss and *sl; -EAFNOSUPPORT when the client is of the other family. */
static int relay_client_source(uint8_t family, uint8_t cfamily, const uint8_t *caddr,
                               struct sockaddr_storage *ss, socklen_t *sl)
{
    const uint8_t *a = caddr;

    if (relay_client_family(cfamily, caddr) != cfamily) {
        cfamily = 4;
        a = caddr + 12;
    }
    if (cfamily != family)
        return -EAFNOSUPPORT;
    if (family == 4) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        memcpy(&sin->sin_addr, a, 4);
        *sl = sizeof(*sin);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        sin6->sin6_family = AF_INET6;
        memcpy(&sin6->sin6_addr, a, 16);
        *sl = sizeof(*sin6);
    }
    return 0;
}

/* Whether (family, a) is a loopback address: 127.0.0.0/8, ::1, or ::ffff:127.x.y.z. */
static int relay_loopback(uint8_t family, const uint8_t *a)
{
    static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    static const uint8_t one[16] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 };

    if (family == 4)
        return a[0] == 127;
    return memcmp(a, one, 16) == 0 || (memcmp(a, mapped, 12) == 0 && a[12] == 127);
}

int relay_client_other_family(const struct dp_backend *b, uint8_t cfamily, const uint8_t *caddr)
{
    return b->source_family == DP_SOURCE_CLIENT &&
           relay_client_family(cfamily, caddr) != b->family;
}

int relay_client_unbindable(const struct dp_backend *b, uint8_t cfamily, const uint8_t *caddr)
{
    if (b->source_family != DP_SOURCE_CLIENT)
        return 0;
    /* IPv6 link-local (fe80::/10): bind() needs its scope, which the session key lacks, and
     * the client's link is not the backends' anyway */
    if (cfamily == 6 && caddr[0] == 0xfe && (caddr[1] & 0xc0) == 0x80)
        return 1;
    /* a loopback client (a local process through 127.0.0.1 or a wildcard listener) binds, but
     * the kernel never routes a loopback source off the host: connect() to any other backend
     * fails with EINVAL */
    return relay_loopback(cfamily, caddr) && !relay_loopback(b->family, b->addr);
}

int relay_bind_source(int fd, const struct dp_backend *b, uint8_t cfamily, const uint8_t *caddr)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    int one = 1, rc;

    if (b->source_family == 0)
        return 0;
    memset(&ss, 0, sizeof(ss));
    if (b->source_family == DP_SOURCE_CLIENT) {
        /* transparent: the client's address, which is not this host's, so the socket must be
         * IP_TRANSPARENT (CAP_NET_ADMIN or CAP_NET_RAW; checked at config load) */
        rc = relay_client_source(b->family, cfamily, caddr, &ss, &sl);
        if (rc < 0)
            return rc;
        if ((b->family == 4 ? setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one))
                            : setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one))) < 0)
            return -errno;
    } else if (b->source_family == 4) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        memcpy(&sin->sin_addr, b->source_addr, 4);
        sl = sizeof(*sin);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        sin6->sin6_family = AF_INET6;
        memcpy(&sin6->sin6_addr, b->source_addr, 16);
        sl = sizeof(*sin6);
    }
    /* an IPv6 socket takes this IPPROTO_IP option too (it sets the same inet flag) */
    (void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0)
        return -errno;
    return 0;
}

/* Build the PROXY protocol header (version s->pp) of session s into out (PP_MAX bytes): the
 * client's address from the session key, the address it connected to from the key too unless
 * the listener is a wildcard, then from getsockname(). Returns its length or -errno. */
static int relay_pp_header(const struct relay_session *s, uint8_t *out)
{
    static const uint8_t zero[16];
    const struct ct_key *k = &s->ct.key;
    const uint8_t *dst = k->laddr;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);

    if (s->pin != RELAY_PIN_PROXY && memcmp(dst, zero, k->family == 4 ? 4 : 16) == 0) {
        if (getsockname(s->cfd, (struct sockaddr *)&ss, &sl) < 0)
            return -errno;
        if (ss.ss_family == AF_INET && k->family == 4)
            dst = (const uint8_t *)&((const struct sockaddr_in *)&ss)->sin_addr;
        else if (ss.ss_family == AF_INET6 && k->family == 6)
            dst = (const uint8_t *)&((const struct sockaddr_in6 *)&ss)->sin6_addr;
        else
            return -EAFNOSUPPORT;
    }
    return pp_build(out, PP_MAX, s->pp, k->family, k->caddr, k->cport, dst, k->lport);
}

/* Open fd (fresh, nonblocking, unconnected) towards ss with TCP Fast Open when the client's
 * first bytes are already waiting: peek them and hand them to sendto(MSG_FASTOPEN), which sends
 * the SYN, with as many of them as the kernel takes into it when it holds a cookie for this
 * backend. s->syn_data gets that count; the bytes stay in the client socket (see "Fast open").
 * Returns 1 (connect in progress), -errno (failed like connect()), or 2 when nothing waits (or
 * this kernel refuses fast open): the caller then calls connect() as usual. */
static int relay_fast_open(struct dp_worker *w, struct relay_session *s, int fd,
                           const struct sockaddr_storage *ss, socklen_t sl)
{
    uint8_t small[RELAY_FO_MIN_PEEK];
    uint8_t *buf = w->buf_size >= RELAY_FO_MIN_PEEK ? w->buf : small;
    size_t len = w->buf_size >= RELAY_FO_MIN_PEEK ? w->buf_size : sizeof(small);
    ssize_t n, k;
    int h = 0;

    if (s->pp && (h = relay_pp_header(s, buf)) < 0)
        return 2; /* relay_pp_send() meets the failure again once connected and reports it */
    n = relay_peek(s->cfd, buf + h, len - (size_t)h);
    if (n < 0)
        n = 0; /* nothing yet (server speaks first, slow client) or an error: the client's own
                  event handles the error, as it handles a FIN (n == 0) */
    if (n + h == 0)
        return 2;
    DP_CNT_ADD(&w->cnt->fo_attempts, 1);
    k = relay_sendto_fo(fd, buf, (size_t)(n + h), (const struct sockaddr *)ss, sl);
    if (k > 0) {
        /* the header went first: whatever the kernel took beyond it is the client's */
        s->pp_sent = (uint8_t)(k < h ? k : h);
        s->pp_pending = k < h;
        s->syn_data = (uint32_t)(k - s->pp_sent);
        if (s->syn_data) {
            DP_CNT_ADD(&w->cnt->fo_syn_data, 1);
            DP_CNT_ADD(&w->cnt->fo_syn_bytes, s->syn_data);
        }
        return 1;
    }
    if (k == 0 || errno == EINPROGRESS || errno == EINTR)
        return 1; /* no cookie yet (the SYN asks for one) or TFO blackholed: a plain SYN */
    if (errno == EOPNOTSUPP)
        return 2; /* net.ipv4.tcp_fastopen lacks the client bit: connect() instead */
    return -errno;
}

/* The backend connection is up and still owes its PROXY header (s->pp_pending): send what the
 * SYN did not carry, before any client byte. more: client bytes are known to follow at once
 * (MSG_MORE lets them share the header's segment). Returns 0, or -1 when the session was
 * closed: a backend that reset meanwhile, or a short write, which a connection this fresh
 * cannot give (its send buffer holds far more than PP_MAX bytes) short of a local failure. */
static int relay_pp_send(struct dp_worker *w, struct relay_session *s, int more)
{
    uint8_t hdr[PP_MAX];
    int n = relay_pp_header(s, hdr);
    ssize_t k = -1;

    s->pp_pending = 0;
    if (n > s->pp_sent) {
        do
            k = relay_send(s->bfd, hdr + s->pp_sent, (size_t)(n - s->pp_sent),
                           more ? MSG_MORE : 0);
        while (k < 0 && errno == EINTR);
        if (k == n - s->pp_sent)
            return 0;
        if (k < 0 && errno != EAGAIN && !relay_local_error(errno)) {
            relay_kill(w, s, 1, DP_CLOSE_BACKEND_RESET);
            return -1;
        }
    }
    dp_svc_add(w, s->service_id, DP_SC_ACCEPT_ERRORS, 1);
    relay_kill(w, s, 1, DP_CLOSE_ERROR);
    return -1;
}

/* Give fd (a fresh backend socket of service_id) the service's socket buffer sizes, packed as
 * in struct dp_sockbuf (not 0): see "Socket buffers". A refused size is counted, not fatal. */
static void relay_sockbuf(struct dp_worker *w, int fd, uint32_t service_id, uint64_t sizes)
{
    int force = atomic_load_explicit(&w->dp->sockbuf.force, memory_order_relaxed);
    int snd = (int)(uint32_t)sizes, rcv = (int)(uint32_t)(sizes >> 32);

    if (snd && setsockopt(fd, SOL_SOCKET, force ? SO_SNDBUFFORCE : SO_SNDBUF, &snd,
                          sizeof(snd)) < 0)
        DP_CNT_ADD(&w->cnt->sockbuf_errors[service_id], 1);
    if (rcv && setsockopt(fd, SOL_SOCKET, force ? SO_RCVBUFFORCE : SO_RCVBUF, &rcv,
                          sizeof(rcv)) < 0)
        DP_CNT_ADD(&w->cnt->sockbuf_errors[service_id], 1);
}

/* Start a nonblocking connect to b. 0 connected, 1 in progress, -errno failed (bfd closed).
 * *bind_failed is set to 1 when the failure was binding b's source address: that is b's
 * failure (counted, retried), whatever the errno (EADDRNOTAVAIL, which relay_local_error takes
 * for this host's ephemeral ports running out, is the usual one). */
static int relay_start_connect(struct dp_worker *w, struct relay_session *s,
                               const struct dp_backend *b, int *bind_failed)
{
    struct sockaddr_storage ss;
    socklen_t sl = relay_backend_addr(b, &ss);
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                              .data.ptr = &s->bep };
    const char *cc;
    uint64_t sizes;
    uint8_t opts = atomic_load_explicit(&w->dp->opts.bits[s->service_id], memory_order_relaxed);
    int fd, err, rc;

    *bind_failed = 0;
    if (relay_client_unbindable(b, s->ct.key.family, s->ct.key.caddr))
        return -EADDRNOTAVAIL; /* the client's doing: a local error, not b's failure */
    fd = socket(b->family == 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                0);
    if (fd < 0)
        return -errno;
    fd = relay_fd_lower(w, fd);
    if (b->source_family &&
        (rc = relay_bind_source(fd, b, s->ct.key.family, s->ct.key.caddr)) < 0) {
        *bind_failed = 1;
        relay_close(fd);
        return rc;
    }
    relay_nodelay(fd);
    cc = dp_congestion_control(w->dp, s->service_id);
    if (cc) /* the service's backend-leg algorithm (dp.c, "Congestion control"); refused: the
               connection keeps the system default */
        (void)setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, cc, (socklen_t)strlen(cc));
    sizes = atomic_load_explicit(&w->dp->sockbuf.size[s->service_id], memory_order_acquire);
    if (sizes) /* the service's socket buffers, before the SYN fixes the window scale */
        relay_sockbuf(w, fd, s->service_id, sizes);
    s->syn_data = 0;
    s->pp = opts & DP_OPT_PROXY_V1 ? 1 : opts & DP_OPT_PROXY_V2 ? 2 : 0;
    s->pp_sent = 0;
    s->pp_pending = s->pp != 0;
    rc = opts & DP_OPT_FAST_OPEN ? relay_fast_open(w, s, fd, &ss, sl) : 2;
    if (rc == 2) { /* no fast open, or no client bytes waiting for one */
        if (relay_connect(fd, (struct sockaddr *)&ss, sl) == 0)
            rc = 0;
        else if (errno == EINPROGRESS || errno == EINTR)
            rc = 1;
        else
            rc = -errno;
    }
    if (rc < 0) {
        s->syn_data = 0;
        relay_close(fd);
        return rc;
    }
    /* registered after connect(): the insert polls the socket, so a connect that completed (or
     * failed) in between is reported at once */
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        err = errno;
        relay_close(fd);
        return -(relay_local_error(err) ? err : ENOMEM);
    }
    s->bfd = fd;
    return rc;
}

static void relay_established(struct dp_worker *w, struct relay_session *s, uint32_t bev);
static inline void relay_account(struct dp_worker *w, struct relay_session *s, int c2b,
                                 size_t n);

/* The client socket is registered without EPOLLOUT (relay_new): add it the first time a write
 * to the client blocks. The modify polls the socket, so room made in between is reported. */
static int relay_client_want_out(struct dp_worker *w, struct relay_session *s)
{
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                              .data.ptr = &s->cep };

    if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, s->cfd, &ev) < 0)
        return -errno;
    s->cfd_out = 1;
    return 0;
}
static int relay_pump(struct dp_worker *w, struct relay_session *s, int c2b, unsigned hint);

/* Translate the session's tried backend ids into absolute indexes of svc in table t. */
static uint32_t relay_tried_indexes(const struct dp_table *t, const struct dp_service *svc,
                                    const struct relay_session *s, uint32_t *out)
{
    uint32_t n = 0, i, j;

    for (i = 0; i < s->n_tried; i++)
        for (j = svc->backend_first; j < svc->backend_first + svc->backend_count; j++)
            if (t->backends[j].backend_id == s->tried_ids[i]) {
                out[n++] = j;
                break;
            }
    return n;
}

/* Whether backend_id is one of the session's tried backends. */
static int relay_was_tried(const struct relay_session *s, uint32_t backend_id)
{
    uint32_t i;

    for (i = 0; i < s->n_tried; i++)
        if (s->tried_ids[i] == backend_id)
            return 1;
    return 0;
}

/* Pick a backend (excluding the ones tried) and connect, retrying immediate failures.
 * A transparent backend of the other family than the client's is no candidate for it:
 * sched_pick, given the client's family, leaves it out (no socket, connect failure or retry;
 * round_robin's rotation stays even). Ends the session (no_backend) when no candidate is
 * left. */
static void relay_connect_next(struct dp_worker *w, struct relay_session *s)
{
    const struct dp_table *t = w->table;
    const struct dp_service *svc;
    uint32_t tried[RELAY_MAX_TRIES], n, idx, slot, k;
    int rc, first = s->n_tried == 0, weighted = 0, bind_failed = 0;

    for (;;) {
        svc = t ? dp_table_service(t, s->service_id) : NULL;
        if (!svc || svc->protocol != DP_PROTO_TCP || s->n_tried >= RELAY_MAX_TRIES)
            break;
        n = relay_tried_indexes(t, svc, s, tried);
        uint64_t hash = dp_flow_hash(t->hash_seed, s->ct.key.family, s->ct.key.caddr,
                                     s->ct.key.cport, svc->hash_key);
        slot = s->slot;
        if (n && s->pick_gen != t->generation &&
            (svc->scheduler == DP_SCHED_MAGLEV || svc->scheduler == DP_SCHED_SRCHASH) &&
            svc->ring_size) {
            /* the ring changed under a retry: restart the walk at this table's home slot */
            slot = (uint32_t)((hash % svc->ring_size + svc->ring_size - 1) % svc->ring_size);
        }
        if (sched_pick(t, svc, w->dp->shared, w->sw, hash, tried, n,
                       relay_client_family(s->ct.key.family, s->ct.key.caddr), &slot, &idx) != 0) {
            for (k = 0; k < svc->backend_count; k++) {
                const struct dp_backend *c = &t->backends[svc->backend_first + k];
                /* an untried candidate the pick left out is at its max_connections; a
                 * backend of the other family is no refusal of this client: not counted */
                weighted |= c->weight > 0 && !relay_was_tried(s, c->backend_id) &&
                            !relay_client_other_family(c, s->ct.key.family, s->ct.key.caddr);
            }
            break;
        }
        const struct dp_backend *b = &t->backends[idx];
        if (__builtin_expect(s->queued, 0)) /* a waiting client found its slot */
            relay_queue_leave(w, s);
        s->slot = slot;
        s->pick_gen = t->generation;
        if (first)
            dp_svc_add(w, s->service_id, DP_SC_CONNS_TOTAL, 1);
        first = 0;
        s->tried_ids[s->n_tried++] = b->backend_id;
        s->backend_id = (int32_t)b->backend_id;
        atomic_fetch_add_explicit(&w->dp->shared->active[b->backend_id], 1, memory_order_relaxed);
        dp_be_add(w, s->backend_id, DP_BC_CONNS_ACTIVE, 1);
        rc = relay_start_connect(w, s, b, &bind_failed);
        if (rc == 0) {
            relay_established(w, s, RELAY_EV_UNKNOWN);
            return;
        }
        if (rc == 1) {
            ct_timer_arm(&w->ct, &s->ct, w->now_ms + s->connect_timeout_ms);
            return;
        }
        relay_release_backend(w, s);
        if (!bind_failed && relay_out_of_fds(-rc) && relay_reserve_spend(w)) {
            s->n_tried--; /* not the backend's fault: the same pick may be tried again */
            continue;
        }
        if (!bind_failed && relay_local_error(-rc)) {
            dp_svc_add(w, s->service_id, DP_SC_ACCEPT_ERRORS, 1);
            relay_kill(w, s, 1, DP_CLOSE_ERROR);
            return;
        }
        dp_be_add(w, (int32_t)b->backend_id, DP_BC_CONNECT_FAILURES, 1);
        s->failures++;
        if (s->failures > s->retries)
            break;
    }
    if (weighted) {
        /* every weighted backend not tried yet is at its max_connections: a capacity
         * refusal, unless the service has a queue (relay_tcp.c, "The queue"): a waiting
         * client keeps its place, a new one waits at the tail while there is room, and so
         * does one whose connect failed (redispatch; without a queue, or with a full one,
         * that one ends as connect_failed below, as before) */
        if (s->queued)
            return;
        if (svc && svc->queue_timeout_ms && !w->stopping && relay_queue_wait(w, s, svc) == 0)
            return;
        if (first) {
            dp_svc_add(w, s->service_id, DP_SC_REJECTED, 1);
            relay_kill(w, s, 1, DP_CLOSE_REJECTED);
            return;
        }
    }
    if (first)
        dp_svc_add(w, s->service_id, DP_SC_CONNS_TOTAL, 1);
    dp_svc_add(w, s->service_id, DP_SC_NO_BACKEND, 1);
    relay_kill(w, s, 1, s->failures ? DP_CLOSE_CONNECT_FAILED : DP_CLOSE_NO_BACKEND);
}

/* The current attempt failed (refused, unreachable, timed out): count it and retry. */
static void relay_connect_failed(struct dp_worker *w, struct relay_session *s)
{
    int32_t bid = s->backend_id;

    ct_timer_cancel(&w->ct, &s->ct);
    if (s->bfd >= 0) {
        relay_close(s->bfd);
        s->bfd = -1;
    }
    relay_release_backend(w, s);
    if (bid >= 0)
        dp_be_add(w, bid, DP_BC_CONNECT_FAILURES, 1);
    s->failures++;
    if (s->failures > s->retries) {
        dp_svc_add(w, s->service_id, DP_SC_NO_BACKEND, 1);
        relay_kill(w, s, 1, DP_CLOSE_CONNECT_FAILED);
        return;
    }
    relay_connect_next(w, s);
}

/* Discard the s->syn_data bytes the SYN carried from the client socket with one
 * recv(MSG_TRUNC) (on TCP it drops them without copying). Returns 0, or -1 when the session was
 * closed (the client reset meanwhile, or a local failure). */
static int relay_drop_syn_data(struct dp_worker *w, struct relay_session *s)
{
    uint32_t k = s->syn_data;
    ssize_t n;

    s->syn_data = 0;
    do
        n = relay_discard(s->cfd, k);
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t)k)
        return 0;
    if (n < 0 && !relay_local_error(errno)) {
        relay_kill(w, s, 1, DP_CLOSE_CLIENT_RESET);
    } else { /* they were peeked: fewer cannot be there */
        dp_svc_add(w, s->service_id, DP_SC_ACCEPT_ERRORS, 1);
        relay_kill(w, s, 1, DP_CLOSE_ERROR);
    }
    return -1;
}

/* The backend connection is up: start relaying. bev: the backend socket's event mask that
 * reported the connection, or RELAY_EV_UNKNOWN when connect() succeeded at once. */
static void relay_established(struct dp_worker *w, struct relay_session *s, uint32_t bev)
{
    uint32_t cev = s->cev;

    ct_timer_cancel(&w->ct, &s->ct);
    s->state = RELAY_ESTABLISHED;
    s->cev = 0;
    dp_be_add(w, s->backend_id, DP_BC_CONNS_TOTAL, 1);
    if (s->pp_pending &&
        relay_pp_send(w, s, bev != RELAY_EV_UNKNOWN && (cev & EPOLLIN)) < 0)
        return;
    if (s->syn_data) {
        /* the SYN carried the first syn_data bytes of the client's queue and the kernel of the
         * backend socket owns them now (it resends them itself if the SYN-ACK did not cover
         * them): they must leave the client socket, where they were only peeked. In copy mode
         * the pump's first read from the client drops them (they fit the buffer: they were
         * peeked into it), which saves a system call; the client event that reported them has
         * been or will be handled like any other. Otherwise relay_drop_syn_data does it now */
        relay_account(w, s, 1, s->syn_data);
        if ((s->c2b.bulk || s->syn_data > w->buf_size) && relay_drop_syn_data(w, s) < 0)
            return;
    }
    s->last_active_ms = w->now_ms;
    if (s->idle_timeout_ms)
        ct_timer_arm(&w->ct, &s->ct, w->now_ms + s->idle_timeout_ms);
    if (bev == RELAY_EV_UNKNOWN) {
        /* no event told us anything yet: look at both sides */
        if (relay_pump(w, s, 1, 0) == 0)
            (void)relay_pump(w, s, 0, 0);
        return;
    }
    /* Edge-triggered: every arrival on a socket queues an event, and the insert into epoll
     * reported what was there before. So the client has data or a FIN waiting only if one of
     * its events (gathered in cev while connecting) said so; an event still queued is handled
     * as an established one. The backend's own event mask says the same for its side. */
    if ((cev & (EPOLLIN | EPOLLRDHUP)) && relay_pump(w, s, 1, relay_hint(cev)) < 0)
        return;
    if (bev & (EPOLLIN | EPOLLRDHUP))
        (void)relay_pump(w, s, 0, relay_hint(bev));
}

/* Account n bytes written by direction c2b. */
static inline void relay_account(struct dp_worker *w, struct relay_session *s, int c2b, size_t n)
{
    if (c2b) {
        s->bytes_c2b += n;
        dp_svc_add(w, s->service_id, DP_SC_BYTES_TO_BACKEND, (int64_t)n);
        dp_be_add(w, s->backend_id, DP_BC_BYTES_TO_BACKEND, (int64_t)n);
    } else {
        s->bytes_b2c += n;
        dp_svc_add(w, s->service_id, DP_SC_BYTES_TO_CLIENT, (int64_t)n);
        dp_be_add(w, s->backend_id, DP_BC_BYTES_TO_CLIENT, (int64_t)n);
    }
}

/* Direction d's source is at EOF and its pipe is empty: forward the FIN. When the other
 * direction is done already (its FIN came first), close() both sockets instead: the receive
 * queues are empty (both sources reached EOF), so close() sends the same FIN as shutdown()
 * would, one system call earlier. Returns -1 when the session was closed. */
static int relay_dir_finish(struct dp_worker *w, struct relay_session *s, int c2b, int dst)
{
    struct relay_dir *d = c2b ? &s->c2b : &s->b2c;
    const struct relay_dir *other = c2b ? &s->b2c : &s->c2b;

    relay_drop_pipe(w, d);
    d->done = 1;
    if (other->done) {
        relay_kill(w, s, 0, c2b ? DP_CLOSE_BACKEND_CLOSED : DP_CLOSE_CLIENT_CLOSED);
        return -1;
    }
    (void)shutdown(dst, SHUT_WR);
    s->state = RELAY_HALF_CLOSED;
    return 0;
}

/* Move bytes in one direction until EAGAIN on either side or the budget is spent.
 * hint (RELAY_HINT_*, from the source's event mask, 0 when unknown):
 *   EDGE: called for a plain EPOLLIN edge of the source (no RDHUP/HUP/ERR in it); a short
 *     recv() in copy mode proves the receive queue empty, and the EAGAIN read that would
 *     confirm it is skipped (any later arrival raises a new edge; a FIN that came with this
 *     edge would have set RDHUP).
 *   FIN: the source's FIN is queued behind its data (RDHUP is only raised once the FIN is in
 *     sequence, and nothing can follow it). A short recv() in copy mode therefore returned the
 *     last bytes: they are sent with MSG_MORE, so that the FIN which follows at once leaves in
 *     the same segment, and EOF is taken without the recv() that would return 0.
 * Returns 0, or -1 when the session was closed. */
static int relay_pump(struct dp_worker *w, struct relay_session *s, int c2b, unsigned hint)
{
    struct relay_dir *d = c2b ? &s->c2b : &s->b2c;
    int src = c2b ? s->cfd : s->bfd, dst = c2b ? s->bfd : s->cfd;
    uint64_t moved = 0;
    ssize_t n, m;
    int rc, drained = 0;

    if (d->done || s->state == RELAY_DEAD)
        return 0;
    for (;;) {
        if (d->in_pipe || __builtin_expect(d->park_len != 0, 0)) {
            /* bytes the destination has not taken yet: in the pipe, or (out of fds for one)
             * parked in memory; the two never coexist */
            n = d->in_pipe ? relay_splice(d->pipe.rfd, dst, d->in_pipe)
                           : relay_send(dst, d->park + d->park_off, d->park_len, 0);
            if (n > 0) {
                if (d->in_pipe) {
                    d->in_pipe -= (uint32_t)n;
                } else {
                    d->park_off += (uint32_t)n;
                    d->park_len -= (uint32_t)n;
                    if (d->park_len == 0)
                        relay_drop_park(d);
                }
                moved += (uint64_t)n;
                relay_account(w, s, c2b, (size_t)n);
                continue;
            }
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                d->wblocked = 1;
                if (!c2b && !s->cfd_out && relay_client_want_out(w, s) < 0)
                    goto local_failure;
                break;
            }
            goto reset_dst;
        }
        d->wblocked = 0;
        if (d->eof) {
            if (moved)
                s->last_active_ms = w->now_ms;
            return relay_dir_finish(w, s, c2b, dst);
        }
        if (drained)
            break;
        if (moved >= RELAY_BUDGET) {
            relay_ready_add(w, s);
            break;
        }
        if (!d->bulk) {
            n = relay_recv(src, w->buf, w->buf_size);
            if (n > 0) {
                int last = (hint & RELAY_HINT_FIN) && (uint32_t)n < w->buf_size;
                ssize_t off = 0;
                if (__builtin_expect(s->syn_data != 0, 0) && c2b) {
                    /* fast open: the SYN carried the head of this queue (relay_established);
                     * drop it here instead of in a recv() of its own */
                    off = (ssize_t)s->syn_data < n ? (ssize_t)s->syn_data : n;
                    s->syn_data -= (uint32_t)off;
                }
                DP_CNT_ADD(&w->cnt->copy_sends, 1);
                m = n > off ? relay_send(dst, w->buf + off, (size_t)(n - off), last ? MSG_MORE : 0)
                            : 0;
                if (m < 0) {
                    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                        goto reset_dst;
                    m = 0;
                }
                if (m > 0) {
                    moved += (uint64_t)m;
                    relay_account(w, s, c2b, (size_t)m);
                }
                if (m < n - off) {
                    /* park the rest in a pipe; it is empty and larger than the buffer */
                    size_t rest = (size_t)(n - off - m);
                    if (d->pipe.rfd < 0 && (rc = pipepool_get(&w->pp, &d->pipe)) != 0 &&
                        (!relay_out_of_fds(-rc) || !relay_reserve_spend(w) ||
                         (rc = pipepool_get(&w->pp, &d->pipe)) != 0)) {
                        /* no fd for a pipe even after the reserve: hold the rest in memory,
                         * not a reset; the source is not read again until it is written */
                        if (!relay_out_of_fds(-rc) || (d->park = malloc(rest)) == NULL)
                            goto local_failure;
                        memcpy(d->park, w->buf + off + m, rest);
                        d->park_len = (uint32_t)rest;
                        d->park_off = 0;
                        DP_CNT_ADD(&w->cnt->park_allocs, 1);
                    } else {
                        ssize_t k = relay_write(d->pipe.wfd, w->buf + off + m, rest);
                        if (k != (ssize_t)rest)
                            goto local_failure;
                        d->in_pipe = (uint32_t)k;
                    }
                }
                if (last)
                    d->eof = 1; /* the FIN is next in the queue: no recv() to confirm it */
                else if ((uint32_t)n == w->buf_size && !w->copy_only && !d->nosplice &&
                         !s->syn_data)
                    d->bulk = 1;
                else if ((uint32_t)n < w->buf_size)
                    drained = (hint & RELAY_HINT_EDGE) != 0;
                continue;
            }
            if (n == 0) {
                d->eof = 1;
                continue;
            }
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            goto reset;
        }
        if (d->pipe.rfd < 0 && (rc = pipepool_get(&w->pp, &d->pipe)) != 0) {
            if (w->buf_size) { /* out of descriptors: copy mode needs no pipe up front */
                d->bulk = 0;
                continue;
            }
            goto local_failure;
        }
        n = relay_splice(src, d->pipe.wfd, RELAY_SPLICE_LEN);
        if (n > 0) {
            DP_CNT_ADD(&w->cnt->splice_moves, 1);
            d->in_pipe = (uint32_t)n;
            /* no "drained" shortcut here: a pipe runs out of slots (one per skb fragment, 16
             * by default) long before it runs out of bytes, so a short splice proves nothing */
            continue;
        }
        if (n == 0) {
            d->eof = 1;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (w->buf_size && moved < w->buf_size)
                d->bulk = 0; /* the burst is over: small messages go by copy again */
            break;
        }
        if ((errno == EINVAL || errno == ENOSYS) && w->buf_size) {
            /* this source cannot be spliced (nothing was read): copy from now on */
            d->nosplice = 1;
            d->bulk = 0;
            DP_CNT_ADD(&w->cnt->splice_fallbacks, 1);
            continue;
        }
        goto reset;
    }
    if (d->in_pipe == 0)
        relay_drop_pipe(w, d);
    if (moved)
        s->last_active_ms = w->now_ms;
    return 0;

reset_dst:
    c2b = !c2b; /* writing failed: the destination's side reset */
reset:
    relay_kill(w, s, 1, c2b ? DP_CLOSE_CLIENT_RESET : DP_CLOSE_BACKEND_RESET);
    return -1;

local_failure:
    dp_svc_add(w, s->service_id, DP_SC_ACCEPT_ERRORS, 1);
    relay_kill(w, s, 1, DP_CLOSE_ERROR);
    return -1;
}

/* A client about to make its first pick (relay_new, or relay_pin_read once its PROXY header
 * was read) of a service (svc: live, may be NULL) whose clients wait already: it takes its
 * place behind them rather than a slot one of them is due (the run after the batch dispatches
 * it at once if a slot is free), or is refused when the queue is full. Returns 1 when it was
 * queued or refused, 0 when it picks as usual. */
static int relay_queue_behind(struct dp_worker *w, struct relay_session *s,
                              const struct dp_service *svc)
{
    if (__builtin_expect(!svc || svc->queue_timeout_ms == 0, 1) || w->stopping ||
        atomic_load_explicit(&w->dp->shared->queued[s->service_id], memory_order_relaxed) <= 0)
        return 0;
    if (relay_queue_wait(w, s, svc) == 0)
        return 1;
    dp_svc_add(w, s->service_id, DP_SC_REJECTED, 1);
    relay_kill(w, s, 1, DP_CLOSE_REJECTED);
    return 1;
}

/* A client of an accept_proxy service was admitted: remember the real peer, wait for its
 * header for at most timeout_ms (relay_tcp_expire). */
static void relay_pin_start(struct dp_worker *w, struct relay_session *s, uint32_t timeout_ms)
{
    s->pin = RELAY_PIN_WAIT;
    s->pin_skip = 0;
    s->peer_family = s->ct.key.family;
    s->peer_port = s->ct.key.cport;
    memcpy(s->peer_addr, s->ct.key.caddr, 16);
    ct_timer_arm(&w->ct, &s->ct, w->now_ms + timeout_ms);
}

/* A client of an accept_proxy service outside its accept_proxy_from prefixes connected
 * directly: it owes no header, its peer is itself, and it goes on as any client at once. */
static void relay_pin_direct(struct dp_worker *w, struct relay_session *s)
{
    s->peer_family = s->ct.key.family;
    s->peer_port = s->ct.key.cport;
    memcpy(s->peer_addr, s->ct.key.caddr, 16);
    dp_svc_add(w, s->service_id, DP_SC_PROXY_DIRECT, 1);
}

/* The header was valid and named a client: it becomes the session's key (re-indexed), so the
 * scheduler, the snapshots, the log and the header sent on (proxy_protocol) all use it. */
static void relay_pin_apply(struct dp_worker *w, struct relay_session *s,
                            const struct pp_info *info)
{
    struct ct_key *k = &s->ct.key;
    size_t alen = info->family == 4 ? 4 : 16;

    ct_remove(&w->ct, &s->ct);
    k->family = info->family;
    k->cport = info->sport;
    k->lport = info->dport;
    memset(k->caddr, 0, sizeof(k->caddr));
    memset(k->laddr, 0, sizeof(k->laddr));
    memcpy(k->caddr, info->src, alen);
    memcpy(k->laddr, info->dst, alen);
    (void)ct_insert(&w->ct, &s->ct); /* only diagnostics use the index */
}

/* A bad header (or none): count it, reset the client; no backend was chosen. */
static void relay_pin_reject(struct dp_worker *w, struct relay_session *s)
{
    dp_svc_add(w, s->service_id, DP_SC_PROXY_HDR_ERRORS, 1);
    relay_kill(w, s, 1, DP_CLOSE_PROXY_HEADER);
}

/* An event of a client whose PROXY header is still due (see "Receiving the PROXY protocol"):
 * peek, parse, and once it is complete discard exactly its bytes and pick a backend. */
static void relay_pin_read(struct dp_worker *w, struct relay_session *s, uint32_t events)
{
    uint8_t buf[PP_PARSE_MIN + 1];
    struct pp_info info;
    uint32_t more = 0;
    ssize_t n;
    int rc;

    if (events & (EPOLLERR | EPOLLHUP)) {
        relay_kill(w, s, 1, DP_CLOSE_CLIENT_RESET);
        return;
    }
    if (s->pin == RELAY_PIN_WAIT) {
        do
            n = relay_peek(s->cfd, buf, sizeof(buf));
        while (n < 0 && errno == EINTR);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                relay_kill(w, s, 1, DP_CLOSE_CLIENT_RESET);
            return;
        }
        if (n == 0) { /* a FIN before any byte: a plain TCP check of the balancer in front */
            relay_kill(w, s, 0, DP_CLOSE_CLIENT_CLOSED);
            return;
        }
        rc = pp_parse(buf, (size_t)n, &info);
        if (rc == 0 && !(events & EPOLLRDHUP))
            return; /* a valid beginning: the next segment raises a new edge */
        if (rc <= 0) { /* invalid, or cut short by the client's FIN */
            relay_pin_reject(w, s);
            return;
        }
        if (info.family) {
            relay_pin_apply(w, s, &info);
            s->pin = RELAY_PIN_SKIP_PROXY;
        } else {
            s->pin = RELAY_PIN_SKIP_LOCAL;
        }
        s->pin_skip = info.len;
        /* client bytes beyond the header already wait, or may: a header longer than the peek,
         * or one exactly as long as a full peek (a version 2 header of PP_PARSE_MIN + 1
         * bytes), which says nothing about what follows it. Their edge was consumed by this
         * event, so the pump must be told */
        more = (size_t)n != info.len || (size_t)n == sizeof(buf) ? EPOLLIN : 0;
    } else {
        more = EPOLLIN;
    }
    do
        n = relay_discard(s->cfd, s->pin_skip);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        relay_kill(w, s, 1, DP_CLOSE_CLIENT_RESET);
        return;
    }
    if (n > 0)
        s->pin_skip -= (uint32_t)n;
    if (s->pin_skip) { /* the rest of a long version 2 header is still on its way */
        if (events & EPOLLRDHUP)
            relay_pin_reject(w, s);
        return;
    }
    s->pin = s->pin == RELAY_PIN_SKIP_PROXY ? RELAY_PIN_PROXY : RELAY_PIN_LOCAL;
    ct_timer_cancel(&w->ct, &s->ct);
    s->cev = more | (events & EPOLLRDHUP); /* what relay_established pumps first */
    if (w->table && relay_queue_behind(w, s, dp_table_service(w->table, s->service_id)))
        return;
    relay_connect_next(w, s);
}

/* A waiting client sent its FIN (EPOLLRDHUP). With no byte before it, it gave up: it leaves
 * the queue (client_closed) and 1 is returned. With bytes before it, it may be a half-close
 * after a request, which the backend must still get (HAProxy's default, without option
 * abortonclose, is the same): it keeps waiting, 0. One peek of one byte tells, paid only by a
 * waiting client's FIN. */
static int relay_queue_fin(struct dp_worker *w, struct relay_session *s)
{
    uint8_t b;
    ssize_t n;

    do
        n = relay_peek(s->cfd, &b, 1);
    while (n < 0 && errno == EINTR);
    if (n > 0)
        return 0;
    if (n == 0)
        relay_kill(w, s, 0, DP_CLOSE_CLIENT_CLOSED);
    else
        relay_kill(w, s, 1, DP_CLOSE_CLIENT_RESET); /* EAGAIN cannot follow a FIN */
    return 1;
}

void relay_tcp_event(struct dp_worker *w, struct dp_ep *ep, uint32_t events)
{
    struct relay_session *s;
    int from_client = ep->kind == DP_EP_CLIENT;
    const uint32_t rd = EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR;
    const uint32_t wr = EPOLLOUT | EPOLLHUP | EPOLLERR;

    s = from_client ? relay_of_cep(ep) : relay_of_bep(ep);
    if (s->state == RELAY_DEAD)
        return;
    if (s->state == RELAY_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);

        if (from_client) {
            if (__builtin_expect(s->pin >= RELAY_PIN_WAIT, 0)) {
                relay_pin_read(w, s, events); /* no backend yet: its PROXY header first */
                return;
            }
            /* a client that resets (or vanishes) while we connect ends the attempt at once;
             * its data and FIN wait in the socket (noted in cev): the pump reads them once
             * connected. A waiting client's FIN with nothing before it ends it too (see
             * relay_queue_fin) */
            if (__builtin_expect(s->queued, 0) && (events & EPOLLRDHUP) &&
                !(events & (EPOLLERR | EPOLLHUP)) && relay_queue_fin(w, s))
                return;
            if (events & (EPOLLERR | EPOLLHUP))
                relay_kill(w, s, 1, DP_CLOSE_CLIENT_RESET);
            else
                s->cev |= events;
            return;
        }
        if ((events & EPOLLOUT) && !(events & (EPOLLERR | EPOLLHUP))) {
            /* tcp_poll() reports EPOLLOUT only once the handshake is complete, and a failed
             * connect always carries EPOLLERR: no SO_ERROR round trip needed */
            relay_established(w, s, events);
            return;
        }
        if (getsockopt(s->bfd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err == 0 && (events & (EPOLLOUT | EPOLLIN)) && !(events & EPOLLERR))
            relay_established(w, s, events);
        else if (err != 0 || (events & (EPOLLERR | EPOLLHUP)))
            relay_connect_failed(w, s);
        return;
    }
    if (events & EPOLLERR) {
        /* a reset (or another hard error) on one side: reset the other side too, now, even
         * when neither direction has anything to move (a half-closed, quiet session) */
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(from_client ? s->cfd : s->bfd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 ||
            err != 0) {
            relay_kill(w, s, 1, from_client ? DP_CLOSE_CLIENT_RESET : DP_CLOSE_BACKEND_RESET);
            return;
        }
    }
    /* reading side of this socket, then writing side */
    if (events & rd)
        if (relay_pump(w, s, from_client, relay_hint(events)) < 0)
            return;
    if (events & wr) {
        struct relay_dir *d = from_client ? &s->b2c : &s->c2b;
        if (d->in_pipe || d->park_len || (events & (EPOLLHUP | EPOLLERR)))
            (void)relay_pump(w, s, !from_client, 0);
    }
}

void relay_tcp_run_ready(struct dp_worker *w)
{
    struct relay_session *s, *tail = w->ready_tail;

    /* only the sessions queued before this pass: a session re-queued now waits for the next */
    while ((s = w->ready_head) != NULL) {
        int last = s == tail;
        relay_ready_del(w, s);
        if (relay_pump(w, s, 1, 0) == 0)
            (void)relay_pump(w, s, 0, 0);
        if (last)
            break;
    }
}

void relay_tcp_expire(struct ct_entry *e, void *arg)
{
    struct dp_worker *w = arg;
    struct relay_session *s = (struct relay_session *)e;

    if (s->state == RELAY_DEAD)
        return;
    if (s->state == RELAY_CONNECTING) {
        if (__builtin_expect(s->queued, 0)) {
            /* no slot came free within queue_timeout */
            dp_svc_add(w, s->service_id, DP_SC_QUEUE_TIMEOUTS, 1);
            relay_kill(w, s, 1, DP_CLOSE_QUEUE_TIMEOUT);
            return;
        }
        if (__builtin_expect(s->pin >= RELAY_PIN_WAIT, 0)) {
            /* the whole header did not arrive in time */
            dp_svc_add(w, s->service_id, DP_SC_PROXY_HDR_TIMEOUTS, 1);
            relay_kill(w, s, 1, DP_CLOSE_PROXY_TIMEOUT);
            return;
        }
        relay_connect_failed(w, s);
        return;
    }
    if (!s->idle_timeout_ms)
        return;
    if (w->now_ms - s->last_active_ms >= s->idle_timeout_ms)
        relay_kill(w, s, 0, DP_CLOSE_IDLE_TIMEOUT);
    else
        ct_timer_arm(&w->ct, e, s->last_active_ms + s->idle_timeout_ms);
}

/* ct_foreach callback of relay_tcp_close_all. */
static void relay_kill_one(struct ct_entry *e, void *arg)
{
    relay_kill(arg, (struct relay_session *)e, 1, DP_CLOSE_SHUTDOWN);
}

void relay_tcp_close_all(struct dp_worker *w)
{
    ct_foreach(&w->ct, relay_kill_one, w);
    relay_tcp_reap(w);
}

/* State of relay_tcp_close_backends' callback. */
struct relay_by_backend {
    struct dp_worker *w;           /* the worker */
    struct dp_close_set *set;      /* whose sessions to close, and their counts */
    uint8_t reason;                /* DP_CLOSE_DRAIN_TIMEOUT or DP_CLOSE_BACKEND_DOWN */
};

static void relay_kill_if_backend(struct ct_entry *e, void *arg)
{
    struct relay_by_backend *b = arg;
    struct relay_session *s = (struct relay_session *)e;

    if (s->state == RELAY_DEAD || !dp_close_set_has(b->set, s->backend_id))
        return;
    dp_close_set_count(b->set, s->backend_id); /* before the kill, which may reset the id */
    /* During a stop the close cuts the drain short (a second signal): that is a shutdown. */
    relay_kill(b->w, s, 1, b->w->stopping ? DP_CLOSE_SHUTDOWN : b->reason);
}

void relay_tcp_close_backends(struct dp_worker *w, struct dp_close_set *set, uint8_t reason)
{
    struct relay_by_backend b = { .w = w, .set = set, .reason = reason };

    ct_foreach(&w->ct, relay_kill_if_backend, &b);
    relay_tcp_reap(w); /* between batches: no event or ready entry points at them any more */
}

/* True when another worker holds an older waiting client of s's service (s is the oldest of
 * it here): the slot is that one's (its worker was kicked, or retries within
 * RELAY_QUEUE_RETRY_MS), so that a worker where slots free does not serve its own newer
 * clients over older ones elsewhere. */
static int relay_queue_older_elsewhere(struct dp_worker *w, const struct relay_session *s)
{
    struct dp *dp = w->dp;
    uint32_t i;
    uint64_t v;

    for (i = 0; i < dp->n_workers; i++) {
        if (&dp->workers[i] == w)
            continue;
        v = atomic_load_explicit(&dp->workers[i].q_first[s->service_id], memory_order_relaxed);
        if (v && (int32_t)((uint32_t)v - s->queue_ticket) < 0)
            return 1;
    }
    return 0;
}

void relay_tcp_queue_run(struct dp_worker *w)
{
    uint64_t blocked[DP_MAX_SERVICES / 64];
    struct relay_session *s, *next;
    uint32_t sid;

    w->q_kick = 0;
    w->q_retry_ms = w->now_ms + RELAY_QUEUE_RETRY_MS;
    if (!w->q_head)
        return;
    memset(blocked, 0, sizeof(blocked));
    for (s = w->q_head; s; s = next) {
        next = s->ready_next; /* a dispatch touches only s: next stays valid */
        sid = s->service_id;
        if (blocked[sid / 64] >> (sid % 64) & 1u)
            continue; /* an older client of its service is still waiting: FIFO */
        if (relay_queue_older_elsewhere(w, s)) { /* so does one on another worker */
            blocked[sid / 64] |= 1ull << (sid % 64);
            continue;
        }
        relay_connect_next(w, s);
        if (s->queued) /* still no slot: the service's younger waiters stay behind it */
            blocked[sid / 64] |= 1ull << (sid % 64);
    }
}

void relay_tcp_queue_close_all(struct dp_worker *w)
{
    struct relay_session *s;

    while ((s = w->q_head) != NULL) {
        dp_svc_add(w, s->service_id, DP_SC_REJECTED, 1);
        relay_kill(w, s, 1, DP_CLOSE_SHUTDOWN);
    }
}

void relay_tcp_info(const struct relay_session *s, struct dp_session_info *out)
{
    out->service_id = s->service_id;
    out->backend_id = s->backend_id;
    out->family = s->ct.key.family;
    out->port = s->ct.key.cport;
    memcpy(out->addr, s->ct.key.caddr, 16);
    out->peer_family = s->peer_family;
    out->peer_port = s->peer_port;
    memcpy(out->peer_addr, s->peer_addr, 16);
    out->started = s->started;
    out->bytes_to_backend = s->bytes_c2b;
    out->bytes_to_client = s->bytes_b2c;
    out->state = s->state == RELAY_CONNECTING    ? DP_SESS_CONNECTING
                 : s->state == RELAY_HALF_CLOSED ? DP_SESS_HALF_CLOSED
                                                 : DP_SESS_ESTABLISHED;
}

/* Admit one accepted connection: service, limits, session object, first connect. */
static void relay_new(struct dp_worker *w, struct dp_listener *l, int fd,
                      const struct sockaddr_storage *ss)
{
    const struct dp_table *t = w->table;
    const struct dp_service *svc = t ? dp_table_service(t, l->service_id) : NULL;
    uint32_t sid = l->service_id;
    struct ct_entry *e;
    struct relay_session *s;
    struct timespec ts;
    int32_t prev;
    uint32_t hdr_ms;

    if (!svc || svc->protocol != DP_PROTO_TCP) {
        dp_svc_add(w, sid, DP_SC_CONNS_TOTAL, 1);
        dp_svc_add(w, sid, DP_SC_NO_BACKEND, 1);
        if (__builtin_expect(w->log_on, 0))
            relay_log_refused(w, sid, ss, DP_CLOSE_NO_BACKEND);
        relay_rst_close(fd);
        return;
    }
    prev = atomic_fetch_add_explicit(&w->dp->shared->svc_active[sid], 1, memory_order_relaxed);
    if (svc->max_connections && (uint32_t)prev >= svc->max_connections) {
        atomic_fetch_sub_explicit(&w->dp->shared->svc_active[sid], 1, memory_order_relaxed);
        dp_svc_add(w, sid, DP_SC_REJECTED, 1);
        if (__builtin_expect(w->log_on, 0))
            relay_log_refused(w, sid, ss, DP_CLOSE_REJECTED);
        relay_rst_close(fd);
        return;
    }
    if (ct_alloc(&w->ct, &e) != 0) {
        atomic_fetch_sub_explicit(&w->dp->shared->svc_active[sid], 1, memory_order_relaxed);
        dp_svc_add(w, sid, DP_SC_ACCEPT_ERRORS, 1);
        if (__builtin_expect(w->log_on, 0))
            relay_log_refused(w, sid, ss, DP_CLOSE_ERROR);
        relay_rst_close(fd);
        return;
    }
    s = (struct relay_session *)e;
    s->cep.kind = DP_EP_CLIENT;
    s->bep.kind = DP_EP_BACKEND;
    s->state = RELAY_CONNECTING;
    s->cfd = fd;
    s->bfd = -1;
    s->service_id = sid;
    s->backend_id = -1;
    s->retries = svc->retries < RELAY_MAX_TRIES - 1 ? svc->retries : RELAY_MAX_TRIES - 1;
    s->connect_timeout_ms = svc->connect_timeout_ms;
    s->idle_timeout_ms = svc->idle_timeout_ms;
    s->last_active_ms = w->now_ms;
    clock_gettime(CLOCK_REALTIME, &ts);
    s->started = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    s->c2b.pipe.rfd = s->c2b.pipe.wfd = -1;
    s->b2c.pipe.rfd = s->b2c.pipe.wfd = -1;
    s->c2b.bulk = s->b2c.bulk = w->buf_size == 0;
    s->cev = 0;
    s->cfd_out = 0;
    s->syn_data = 0;
    s->pp = s->pp_sent = s->pp_pending = 0;
    s->pin = RELAY_PIN_NONE;
    s->peer_family = 0;
    s->queued = 0;
    s->queue_ms = 0;
    e->key.proto = DP_PROTO_TCP;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        e->key.family = 4;
        e->key.cport = ntohs(sin->sin_port);
        memcpy(e->key.caddr, &sin->sin_addr, 4);
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        e->key.family = 6;
        e->key.cport = ntohs(sin6->sin6_port);
        memcpy(e->key.caddr, &sin6->sin6_addr, 16);
    }
    e->key.lport = l->lport;
    memcpy(e->key.laddr, l->laddr, 16);
    (void)ct_insert(&w->ct, e); /* only diagnostics use the index; ENOMEM is not fatal */
    dp_svc_add(w, sid, DP_SC_CONNS_ACTIVE, 1); /* conns_total: at the first pick */
    if (l->nodelay != DP_NODELAY_INHERITED)
        relay_nodelay(fd);
    /* edge-triggered from the start: events while connecting only matter for resets, and the
     * pump drains whatever arrived once the backend is up. No EPOLLOUT until a write to the
     * client blocks (relay_client_want_out): a writable client is the common case, and the
     * state changes of our own FIN (shutdown, then the peer's ACK) would each report one */
    struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = &s->cep };
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        dp_svc_add(w, sid, DP_SC_ACCEPT_ERRORS, 1);
        relay_kill(w, s, 1, DP_CLOSE_ERROR);
        return;
    }
    s->cfd_in_epoll = 1;
    hdr_ms = atomic_load_explicit(&w->dp->accept_proxy.timeout_ms[sid], memory_order_relaxed);
    if (__builtin_expect(hdr_ms != 0, 0)) {
        /* accept_proxy: no backend before the client's PROXY header is read. The insert
         * above polled the socket, so a header already there raises EPOLLIN at once. With
         * accept_proxy_from, only the listed sources owe one: any other client is direct */
        if (!svc->proxy_from_count ||
            dp_table_proxy_from_match(t, svc, e->key.family, e->key.caddr)) {
            relay_pin_start(w, s, hdr_ms);
            return;
        }
        relay_pin_direct(w, s);
    }
    if (relay_queue_behind(w, s, svc))
        return;
    relay_connect_next(w, s);
}

void relay_tcp_accept(struct dp_worker *w, struct dp_listener *l)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    uint32_t i;
    int fd;

    dp_worker_refresh_table(w); /* a table published just before this client connected */
    for (i = 0; i < RELAY_ACCEPT_BATCH; i++) {
        sl = sizeof(ss);
        fd = relay_accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            switch (errno) {
            case EAGAIN:
            case EINTR:
                if (errno == EINTR)
                    continue;
                /* the queue was empty after TCP_NODELAY was set on the listener: from now on
                 * every accepted socket was cloned from it with the option (dp.c) */
                if (l->nodelay == DP_NODELAY_LISTENER)
                    l->nodelay = DP_NODELAY_INHERITED;
                return;
            case ECONNABORTED:
            case EPROTO:
            case ENETDOWN:
            case ENOPROTOOPT:
            case EHOSTDOWN:
            case ENONET:
            case EHOSTUNREACH:
            case EOPNOTSUPP:
            case ENETUNREACH:
                dp_svc_add(w, l->service_id, DP_SC_ACCEPT_ERRORS, 1);
                continue; /* the new connection died before we took it */
            case EMFILE:
            case ENFILE:
            case ENOBUFS:
            case ENOMEM:
                dp_svc_add(w, l->service_id, DP_SC_ACCEPT_ERRORS, 1);
                relay_tcp_pause_listeners(w);
                return;
            default:
                dp_svc_add(w, l->service_id, DP_SC_ACCEPT_ERRORS, 1);
                return;
            }
        }
        fd = relay_fd_lower(w, fd); /* at the ceiling: served, the rest wait in the backlog */
        relay_new(w, l, fd, &ss);
        if (w->paused_until_ms) /* the reserve was spent on it, or the ceiling reached: leave
                                   the rest queued */
            return;
    }
}
