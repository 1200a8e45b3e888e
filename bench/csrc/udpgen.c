/* udpgen.c: the UDP load generator: offer datagrams at a fixed rate over N flows, count echoes.
 *
 * Each flow is its own connected UDP socket (its own source port), so a balancer sees N clients.
 * Pacing: every tick (100 us by default) the generator sends what is due by then (rate x elapsed
 * time minus what was already offered), spread evenly over the flows, reads every echo waiting on
 * every flow with recvmmsg, and sleeps until the next tick. Small ticks keep bursts small: a
 * 300k/s rate is about 30 datagrams per tick, so a drop means the path fell behind, not that one
 * huge burst overflowed a buffer. Reading once per tick instead of on every wake-up keeps the
 * generator's own cost per datagram low (it shares a CPU with the backend); the price is that a
 * round trip is only known to within one tick.
 *
 * Sending. A flow's share of a tick leaves in one system call: by default one sendmsg() with a
 * UDP_SEGMENT control message (GSO), which the kernel cuts into the original datagrams, each its
 * own packet with its own payload; on loopback the cut happens when the packet reaches the
 * receiving socket, so the receiver (balancer or backend) still gets one datagram per send of a
 * real client and pays for each, while the generator pays its IP output path once per tick and
 * flow instead of once per datagram. That keeps the generator from being the bottleneck at
 * 300k/s on a CPU it shares with the backend. GSO=0 on the command line sends with sendmmsg()
 * instead, one packet per datagram. A kernel that refuses GSO falls back to sendmmsg by itself.
 *
 * Honesty. Each datagram carries its send time; the echo's round trip goes into a 1-us histogram.
 * After the offered period the generator waits up to 300 ms for late echoes, then prints one JSON
 * object: what was offered, sent and received, send failures by kind, the datagrams its own
 * sockets dropped because their receive buffers were full (SO_MEMINFO, so a loss can be told
 * apart from a loss on the path), and its pacing: the largest number of datagrams it offered in
 * one tick and how many ticks started late by more than one tick. A generator that falls behind
 * (its CPU taken by something else) would otherwise make up for it in one burst that no client
 * population sends, and the loss would then describe the burst, not the rate: a tick offers at
 * most CATCHUP_TICKS ticks' worth, and what it leaves out is reported as "skipped" (not offered,
 * not counted as loss); a run that skipped more than a trace did not offer the rate.
 *
 * Usage: udpgen HOST PORT FLOWS SIZE RATE_PER_S DURATION_MS [TICK_US [GSO]]
 * Exit status 0 after a run (loss is data, not failure), 1 on a socket error, 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

#define MAX_FLOWS 64
#define BATCH 64 /* datagrams per send call (and per GSO packet: the kernel's segment limit) */
#define MAX_SIZE 1400
#define HIST_US 20000 /* round trips >= 20 ms land in the last bucket */
#define DRAIN_NS 300000000LL
#define CATCHUP_TICKS 10 /* a late tick offers at most this many ticks' worth */
#define SOCKBUF (4 * 1024 * 1024)

static uint64_t g_hist[HIST_US + 1];
static uint64_t g_recv_calls;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double hist_quantile(uint64_t total, double q)
{
    if (total == 0)
        return -1.0;
    uint64_t want = (uint64_t)((double)total * q);
    if (want >= total)
        want = total - 1;
    uint64_t seen = 0;
    for (int i = 0; i <= HIST_US; i++) {
        seen += g_hist[i];
        if (seen > want)
            return (double)i;
    }
    return (double)HIST_US;
}

/* Read every echo waiting on fd; returns how many arrived, or -errno on a hard error. */
static long drain(int fd, uint64_t *refused)
{
    static char data[BATCH][MAX_SIZE];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    long total = 0;
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = data[i];
            iov[i].iov_len = MAX_SIZE;
            memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        g_recv_calls++;
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return total;
            if (errno == ECONNREFUSED) {
                (*refused)++;
                continue;
            }
            return -errno;
        }
        int64_t t = now_ns();
        for (int i = 0; i < n; i++) {
            int64_t sent_at;
            if (msgs[i].msg_len < sizeof(sent_at))
                continue;
            memcpy(&sent_at, data[i], sizeof(sent_at));
            int64_t us = (t - sent_at) / 1000;
            if (us < 0)
                us = 0;
            g_hist[us > HIST_US ? HIST_US : us]++;
        }
        total += n;
        if (n < BATCH)
            return total;
    }
}

/* Datagrams the kernel dropped at fd because its receive buffer was full (0 if unknown). */
static uint64_t socket_drops(int fd)
{
    uint32_t mem[SK_MEMINFO_VARS];
    socklen_t len = sizeof(mem);
    memset(mem, 0, sizeof(mem));
    if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &len) != 0 ||
        len < (SK_MEMINFO_DROPS + 1) * sizeof(uint32_t))
        return 0;
    return mem[SK_MEMINFO_DROPS];
}

/* Send k datagrams (payload[0..k)) on fd: one GSO packet when *gso, else sendmmsg. Returns how
 * many left (>= 0) or -errno. Turns *gso off when the kernel refuses the control message. */
static int send_burst(int fd, int k, int size, int *gso, char (*payload)[MAX_SIZE])
{
    struct iovec iov[BATCH];
    for (int i = 0; i < k; i++) {
        iov[i].iov_base = payload[i];
        iov[i].iov_len = (size_t)size;
    }
    if (*gso && k > 1) {
        union {
            char buf[CMSG_SPACE(sizeof(uint16_t))];
            struct cmsghdr align;
        } ctl;
        struct msghdr mh;
        memset(&mh, 0, sizeof(mh));
        memset(&ctl, 0, sizeof(ctl));
        mh.msg_iov = iov;
        mh.msg_iovlen = (size_t)k;
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof(ctl.buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        uint16_t seg = (uint16_t)size;
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(seg));
        memcpy(CMSG_DATA(c), &seg, sizeof(seg));
        if (sendmsg(fd, &mh, 0) >= 0)
            return k;
        if (errno != EINVAL && errno != EIO && errno != EOPNOTSUPP && errno != ENOPROTOOPT)
            return -errno;
        *gso = 0; /* no UDP GSO here: one packet per datagram from now on */
    }
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof(msgs[0]) * (size_t)k);
    for (int i = 0; i < k; i++) {
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int n = sendmmsg(fd, msgs, (unsigned)k, 0);
    return n < 0 ? -errno : n;
}

int main(int argc, char **argv)
{
    if (argc < 7 || argc > 9) {
        fprintf(stderr, "usage: udpgen HOST PORT FLOWS SIZE RATE_PER_S DURATION_MS "
                        "[TICK_US [GSO]]\n");
        return 2;
    }
    struct sockaddr_in dst;
    memset(&dst, 0, sizeof(dst));
    dst.sin_family = AF_INET;
    dst.sin_port = htons((unsigned short)atoi(argv[2]));
    int flows = atoi(argv[3]);
    int size = atoi(argv[4]);
    double rate = atof(argv[5]);
    int64_t duration_ns = atoll(argv[6]) * 1000000LL;
    int64_t tick_ns = argc > 7 ? atoll(argv[7]) * 1000LL : 100000LL;
    int gso = argc > 8 ? atoi(argv[8]) != 0 : 1;
    if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1 || flows < 1 || flows > MAX_FLOWS ||
        size < 16 || size > MAX_SIZE || rate <= 0 || duration_ns <= 0 || tick_ns < 10000 ||
        tick_ns > 10000000) {
        fprintf(stderr, "udpgen: bad arguments\n");
        return 2;
    }

    int fds[MAX_FLOWS];
    struct pollfd pfds[MAX_FLOWS];
    for (int f = 0; f < flows; f++) {
        fds[f] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (fds[f] < 0) {
            perror("udpgen: socket");
            return 1;
        }
        int buf = SOCKBUF;
        if (setsockopt(fds[f], SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof(buf)) != 0)
            setsockopt(fds[f], SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
        if (setsockopt(fds[f], SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof(buf)) != 0)
            setsockopt(fds[f], SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
        if (connect(fds[f], (struct sockaddr *)&dst, sizeof(dst)) != 0) {
            perror("udpgen: connect");
            return 1;
        }
        pfds[f].fd = fds[f];
        pfds[f].events = POLLIN;
    }

    /* ticks are ~100 us: the default 50 us timer slack would stretch them by half */
    (void)prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    static char payload[BATCH][MAX_SIZE];
    uint64_t sent = 0, received = 0, send_errors = 0, refused = 0, blocked = 0;
    uint64_t send_calls = 0, ticks = 0, late_ticks = 0, max_tick = 0, skipped = 0;
    /* the most one tick may offer: CATCHUP_TICKS ticks' worth */
    uint64_t catchup = (uint64_t)(rate * (double)(CATCHUP_TICKS * tick_ns) / 1e9) + 1;
    int gso_asked = gso;
    int next_flow = 0;
    int64_t start = now_ns();
    int64_t end = start + duration_ns;
    int64_t next_tick = start;
    for (;;) {
        int64_t t = now_ns();
        if (t >= end)
            break;
        ticks++;
        if (t > next_tick + tick_ns)
            late_ticks++; /* woke more than a tick late: this tick's share is a catch-up burst */
        uint64_t due_total = (uint64_t)(rate * (double)(t - start) / 1e9) - skipped;
        uint64_t offered0 = sent + send_errors + blocked;
        if (due_total > offered0 + catchup) {
            /* woke far too late (the CPU was taken from us): a client population does not
             * make up for lost time in one burst, so neither do we; the gap is reported */
            skipped += due_total - offered0 - catchup;
            due_total = offered0 + catchup;
        }
        if (due_total > offered0 && due_total - offered0 > max_tick)
            max_tick = due_total - offered0;
        /* this tick's share, spread evenly over the flows: one send call per flow (more only
         * when a flow's share exceeds BATCH, after a late wake-up) */
        uint64_t due = due_total > offered0 ? due_total - offered0 : 0;
        for (int f = 0; f < flows && due > 0; f++) {
            uint64_t share = due / (uint64_t)flows + ((uint64_t)f < due % (uint64_t)flows);
            int fd = fds[next_flow];
            next_flow = (next_flow + 1) % flows;
            while (share > 0) {
                int k = (int)(share > BATCH ? BATCH : share);
                int64_t stamp = now_ns();
                for (int i = 0; i < k; i++)
                    memcpy(payload[i], &stamp, sizeof(stamp));
                int n = send_burst(fd, k, size, &gso, payload);
                send_calls++;
                share -= (uint64_t)k;
                if (n < 0) {
                    if (n == -EAGAIN || n == -EWOULDBLOCK || n == -ENOBUFS)
                        blocked += (uint64_t)k;
                    else if (n == -ECONNREFUSED)
                        refused++, send_errors += (uint64_t)k;
                    else
                        send_errors += (uint64_t)k;
                } else {
                    sent += (uint64_t)n;
                    blocked += (uint64_t)(k - n);
                }
            }
        }
        for (int f = 0; f < flows; f++) {
            long got = drain(fds[f], &refused);
            if (got < 0) {
                fprintf(stderr, "udpgen: recvmmsg: %s\n", strerror((int)-got));
                return 1;
            }
            received += (uint64_t)got;
        }
        next_tick += tick_ns;
        if (next_tick < now_ns())
            next_tick = now_ns() + tick_ns;
        struct timespec ts = {next_tick / 1000000000LL, (long)(next_tick % 1000000000LL)};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    }
    int64_t offered_end = now_ns();
    int64_t drain_end = offered_end + DRAIN_NS;
    while (received < sent) {
        int64_t wait = drain_end - now_ns();
        if (wait <= 0)
            break;
        struct timespec ts = {wait / 1000000000LL, (long)(wait % 1000000000LL)};
        int r = ppoll(pfds, (nfds_t)flows, &ts, NULL);
        if (r <= 0)
            continue;
        for (int f = 0; f < flows; f++) {
            if (!pfds[f].revents)
                continue;
            long got = drain(fds[f], &refused);
            if (got > 0)
                received += (uint64_t)got;
        }
    }
    uint64_t rx_drops = 0;
    for (int f = 0; f < flows; f++)
        rx_drops += socket_drops(fds[f]);
    double secs = (double)(offered_end - start) / 1e9;
    uint64_t offered = sent + send_errors + blocked;
    double loss = offered ? 100.0 * (double)(offered - (received > offered ? offered : received)) /
                                (double)offered
                          : 0.0;
    printf("{\"flows\": %d, \"size\": %d, \"rate\": %.0f, \"seconds\": %.3f, \"offered\": %llu, "
           "\"sent\": %llu, \"received\": %llu, \"send_errors\": %llu, \"blocked\": %llu, "
           "\"refused\": %llu, \"loss_pct\": %.4f, \"rtt_p50_us\": %.0f, \"rtt_p99_us\": %.0f, "
           "\"rx_drops\": %llu, \"tick_us\": %lld, \"gso\": %d, \"send_calls\": %llu, "
           "\"recv_calls\": %llu, \"ticks\": %llu, \"late_ticks\": %llu, \"max_tick\": %llu, "
           "\"skipped\": %llu}\n",
           flows, size, rate, secs, (unsigned long long)offered, (unsigned long long)sent,
           (unsigned long long)received, (unsigned long long)send_errors,
           (unsigned long long)blocked, (unsigned long long)refused, loss,
           hist_quantile(received, 0.50), hist_quantile(received, 0.99),
           (unsigned long long)rx_drops, (long long)(tick_ns / 1000), gso_asked && gso,
           (unsigned long long)send_calls, (unsigned long long)g_recv_calls,
           (unsigned long long)ticks, (unsigned long long)late_ticks,
           (unsigned long long)max_tick, (unsigned long long)skipped);
    for (int f = 0; f < flows; f++)
        close(fds[f]);
    return 0;
}
