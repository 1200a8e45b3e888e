/* udpgen.c: the UDP load generator: offer datagrams at a fixed rate over N flows, count echoes.
 *
 * Each flow is its own connected UDP socket (its own source port), so a balancer sees N clients.
 * Pacing: every tick (100 us) the generator sends what is due by then (rate x elapsed time minus
 * what was already sent), spread over the flows with sendmmsg, reads every echo waiting on every
 * flow with recvmmsg, and sleeps until the next tick. Small ticks keep bursts small: a 300k/s
 * rate is about 30 datagrams per tick, so a drop means the path fell behind, not that one huge
 * burst overflowed a buffer. Reading once per tick instead of on every wake-up keeps the
 * generator's own cost per datagram low (it shares a CPU with the backend); the price is that a
 * round trip is only known to within one tick. Each datagram carries its send time; the echo's
 * round trip goes into a 1-us histogram. After the offered period it waits up to 300 ms for late
 * echoes, then prints one JSON object.
 *
 * Usage: udpgen HOST PORT FLOWS SIZE RATE_PER_S DURATION_MS
 * Exit status 0 after a run (loss is data, not failure), 1 on a socket error, 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FLOWS 64
#define BATCH 64
#define MAX_SIZE 1400
#define HIST_US 20000 /* round trips >= 20 ms land in the last bucket */
#ifndef TICK_NS
#define TICK_NS 100000LL
#endif
#define DRAIN_NS 300000000LL
#define RCVBUF (4 * 1024 * 1024)

static uint64_t g_hist[HIST_US + 1];

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

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: udpgen HOST PORT FLOWS SIZE RATE_PER_S DURATION_MS\n");
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
    if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1 || flows < 1 || flows > MAX_FLOWS ||
        size < 16 || size > MAX_SIZE || rate <= 0 || duration_ns <= 0) {
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
        int buf = RCVBUF;
        if (setsockopt(fds[f], SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof(buf)) != 0)
            setsockopt(fds[f], SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
        if (connect(fds[f], (struct sockaddr *)&dst, sizeof(dst)) != 0) {
            perror("udpgen: connect");
            return 1;
        }
        pfds[f].fd = fds[f];
        pfds[f].events = POLLIN;
    }

    static char payload[BATCH][MAX_SIZE];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    uint64_t sent = 0, received = 0, send_errors = 0, refused = 0, blocked = 0;
    int next_flow = 0;
    int64_t start = now_ns();
    int64_t end = start + duration_ns;
    int64_t next_tick = start;
    for (;;) {
        int64_t t = now_ns();
        if (t >= end)
            break;
        uint64_t due_total = (uint64_t)(rate * (double)(t - start) / 1e9);
        while (sent + send_errors + blocked < due_total) {
            uint64_t due = due_total - (sent + send_errors + blocked);
            uint64_t per_flow = (due + (uint64_t)flows - 1) / (uint64_t)flows;
            int k = (int)(per_flow > BATCH ? BATCH : per_flow);
            if ((uint64_t)k > due)
                k = (int)due;
            int64_t stamp = now_ns();
            for (int i = 0; i < k; i++) {
                memcpy(payload[i], &stamp, sizeof(stamp));
                iov[i].iov_base = payload[i];
                iov[i].iov_len = (size_t)size;
                memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
                msgs[i].msg_hdr.msg_iov = &iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
            }
            int fd = fds[next_flow];
            next_flow = (next_flow + 1) % flows;
            int n = sendmmsg(fd, msgs, (unsigned)k, 0);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)
                    blocked += (uint64_t)k;
                else if (errno == ECONNREFUSED)
                    refused++, send_errors += (uint64_t)k;
                else
                    send_errors += (uint64_t)k;
            } else {
                sent += (uint64_t)n;
                blocked += (uint64_t)(k - n);
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
        next_tick += TICK_NS;
        if (next_tick < now_ns())
            next_tick = now_ns() + TICK_NS;
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
    double secs = (double)(offered_end - start) / 1e9;
    uint64_t offered = sent + send_errors + blocked;
    double loss = offered ? 100.0 * (double)(offered - (received > offered ? offered : received)) /
                                (double)offered
                          : 0.0;
    printf("{\"flows\": %d, \"size\": %d, \"rate\": %.0f, \"seconds\": %.3f, \"offered\": %llu, "
           "\"sent\": %llu, \"received\": %llu, \"send_errors\": %llu, \"blocked\": %llu, "
           "\"refused\": %llu, \"loss_pct\": %.4f, \"rtt_p50_us\": %.0f, \"rtt_p99_us\": %.0f}\n",
           flows, size, rate, secs, (unsigned long long)offered, (unsigned long long)sent,
           (unsigned long long)received, (unsigned long long)send_errors,
           (unsigned long long)blocked, (unsigned long long)refused, loss,
           hist_quantile(received, 0.50), hist_quantile(received, 0.99));
    for (int f = 0; f < flows; f++)
        close(fds[f]);
    return 0;
}
