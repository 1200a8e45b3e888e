/* udpecho.c: the UDP backend of the benchmark: send every datagram back to where it came from.
 *
 * One socket with large buffers, batched so that the echo server is never the bottleneck of the
 * UDP workload; the harness reports its CPU time next to the balancer's to show it, and the
 * kernel's drop counter of its socket (/proc/net/udp) to show where a loss happened.
 *
 * Receiving: recvmmsg, up to 64 datagrams per call. When a call came back with fewer than a full
 * batch, the server blocks in the next one (MSG_WAITFORONE); under load a wake-up per arrival
 * would cost more than the echo itself (the sender on the other CPU pays an IPI, this CPU a
 * context switch), so with POLL_US > 0 a call that returned at least POLL_MIN datagrams (but not
 * a full batch: then the next call follows at once) is followed by a sleep of POLL_US microseconds and a non-blocking call: arrivals then queue into
 * full batches. The sleep is off by default (POLL_US 0).
 *
 * Sending: the datagrams of a batch go back in one sendmmsg. Consecutive datagrams from the same
 * peer with the same size leave as one GSO packet (UDP_SEGMENT; the kernel cuts it into the
 * original datagrams, each delivered on its own), so the server's send path costs one packet per
 * run instead of one per datagram; GSO=0 turns that off, and a kernel that refuses it falls back
 * to one entry per datagram by itself. What the peer receives is the same either way: one
 * datagram per echo, same bytes, same order per peer.
 *
 * Runs until SIGTERM or SIGINT, then prints one JSON object with its counters.
 *
 * Usage: udpecho HOST PORT [GSO [POLL_US]]      (IPv4 literal, e.g. 127.0.0.1)
 * Exit status 0 on a signal, 1 when the socket cannot be set up, 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

#define BATCH 64
#define MAX_DGRAM 2048
#define GSO_MAX 1400    /* largest datagram sent in a GSO run */
#define POLL_MIN 8      /* a batch at least this big is followed by a poll sleep (POLL_US > 0) */
#define SOCKBUF (8 * 1024 * 1024)

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static int same_peer(const struct sockaddr_in *a, const struct sockaddr_in *b)
{
    return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 5) {
        fprintf(stderr, "usage: udpecho HOST PORT [GSO [POLL_US]]\n");
        return 2;
    }
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    int gso = argc > 3 ? atoi(argv[3]) != 0 : 1;
    long poll_us = argc > 4 ? atol(argv[4]) : 0;
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1 || poll_us < 0 || poll_us > 10000) {
        fprintf(stderr, "udpecho: bad arguments\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: recvmmsg must return EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("udpecho: socket");
        return 1;
    }
    int buf = SOCKBUF;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof(buf)) != 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof(buf)) != 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        perror("udpecho: bind");
        return 1;
    }

    (void)prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL); /* poll sleeps are tens of us */
    static char data[BATCH][MAX_DGRAM];
    struct mmsghdr in[BATCH], out[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_in from[BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctl[BATCH];
    unsigned long long received = 0, sent = 0, send_errors = 0, batches = 0, packets = 0;
    unsigned long long sleeps = 0;
    int nonblock = 0;
    while (!g_stop) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = data[i];
            iov[i].iov_len = MAX_DGRAM;
            memset(&in[i].msg_hdr, 0, sizeof(in[i].msg_hdr));
            in[i].msg_hdr.msg_iov = &iov[i];
            in[i].msg_hdr.msg_iovlen = 1;
            in[i].msg_hdr.msg_name = &from[i];
            in[i].msg_hdr.msg_namelen = sizeof(from[i]);
        }
        int n = recvmmsg(fd, in, BATCH, nonblock ? MSG_DONTWAIT : MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                nonblock = 0;
                continue;
            }
            perror("udpecho: recvmmsg");
            return 1;
        }
        received += (unsigned long long)n;
        batches++;
        /* the reply vector: one entry per run of same-peer, same-size datagrams */
        int m = 0;
        for (int i = 0; i < n;) {
            int j = i + 1;
            size_t len = in[i].msg_len;
            iov[i].iov_len = len; /* echo exactly what arrived */
            if (gso && len > 0 && len <= GSO_MAX)
                while (j < n && in[j].msg_len == len && same_peer(&from[i], &from[j])) {
                    iov[j].iov_len = len;
                    j++;
                }
            struct msghdr *mh = &out[m].msg_hdr;
            memset(mh, 0, sizeof(*mh));
            mh->msg_name = &from[i];
            mh->msg_namelen = sizeof(from[i]);
            mh->msg_iov = &iov[i];
            mh->msg_iovlen = (size_t)(j - i);
            if (j - i > 1) {
                uint16_t seg = (uint16_t)len;
                struct cmsghdr *c = (struct cmsghdr *)ctl[m].buf;
                memset(&ctl[m], 0, sizeof(ctl[m]));
                c->cmsg_level = SOL_UDP;
                c->cmsg_type = UDP_SEGMENT;
                c->cmsg_len = CMSG_LEN(sizeof(seg));
                memcpy(CMSG_DATA(c), &seg, sizeof(seg));
                mh->msg_control = ctl[m].buf;
                mh->msg_controllen = sizeof(ctl[m].buf);
            }
            m++;
            i = j;
        }
        int done = 0;
        while (done < m) {
            int r = sendmmsg(fd, out + done, (unsigned)(m - done), 0);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                struct msghdr *mh = &out[done].msg_hdr;
                if (mh->msg_iovlen > 1 && (errno == EINVAL || errno == EIO ||
                                          errno == EOPNOTSUPP || errno == ENOPROTOOPT)) {
                    gso = 0; /* no UDP GSO here: send this run datagram by datagram */
                    struct msghdr one = *mh;
                    one.msg_control = NULL;
                    one.msg_controllen = 0;
                    one.msg_iovlen = 1;
                    for (size_t k = 0; k < mh->msg_iovlen; k++) {
                        one.msg_iov = &mh->msg_iov[k];
                        if (sendmsg(fd, &one, 0) >= 0)
                            sent++;
                        else
                            send_errors++;
                    }
                    packets += mh->msg_iovlen;
                } else {
                    /* this entry cannot go back (e.g. ECONNREFUSED): drop it */
                    send_errors += (unsigned long long)mh->msg_iovlen;
                }
                done++;
                continue;
            }
            for (int k = done; k < done + r; k++)
                sent += (unsigned long long)out[k].msg_hdr.msg_iovlen;
            packets += (unsigned long long)r;
            done += r;
        }
        nonblock = 0;
        if (n == BATCH) {
            nonblock = 1; /* more may be waiting: look again before anything else */
        } else if (poll_us > 0 && n >= POLL_MIN) {
            /* busy: let the next arrivals queue up instead of waking us one by one */
            struct timespec ts = {0, poll_us * 1000L};
            nanosleep(&ts, NULL);
            sleeps++;
            nonblock = 1;
        }
    }
    uint32_t mem[SK_MEMINFO_VARS];
    socklen_t ml = sizeof(mem);
    memset(mem, 0, sizeof(mem));
    if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &ml) != 0)
        memset(mem, 0, sizeof(mem));
    printf("{\"received\": %llu, \"sent\": %llu, \"send_errors\": %llu, \"batches\": %llu, "
           "\"packets\": %llu, \"sleeps\": %llu, \"rx_drops\": %u}\n",
           received, sent, send_errors, batches, packets, sleeps, mem[SK_MEMINFO_DROPS]);
    close(fd);
    return 0;
}
