/* udpecho.c: the UDP backend of the benchmark: send every datagram back to where it came from.
 *
 * One socket, batched with recvmmsg/sendmmsg (up to 64 datagrams per system call) and a large
 * receive buffer, so that the echo server is never the bottleneck of the UDP workload; the harness
 * reports its CPU time next to the balancer's to show it. Runs until SIGTERM or SIGINT, then
 * prints one JSON object with its counters.
 *
 * Usage: udpecho HOST PORT      (IPv4 literal, e.g. 127.0.0.1)
 * Exit status 0 on a signal, 1 when the socket cannot be set up, 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define MAX_DGRAM 2048
#define RCVBUF (8 * 1024 * 1024)

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: udpecho HOST PORT\n");
        return 2;
    }
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "udpecho: bad IPv4 address %s\n", argv[1]);
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
    int buf = RCVBUF;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof(buf)) != 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof(buf)) != 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        perror("udpecho: bind");
        return 1;
    }

    static char data[BATCH][MAX_DGRAM];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_in from[BATCH];
    unsigned long long received = 0, sent = 0, send_errors = 0, batches = 0;
    while (!g_stop) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = data[i];
            iov[i].iov_len = MAX_DGRAM;
            memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &from[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(from[i]);
        }
        int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("udpecho: recvmmsg");
            return 1;
        }
        received += (unsigned long long)n;
        batches++;
        for (int i = 0; i < n; i++)
            iov[i].iov_len = msgs[i].msg_len; /* echo exactly what arrived */
        int done = 0;
        while (done < n) {
            int m = sendmmsg(fd, msgs + done, (unsigned)(n - done), 0);
            if (m < 0) {
                if (errno == EINTR)
                    continue;
                send_errors++; /* this datagram cannot go back (e.g. ECONNREFUSED): drop it */
                done++;
                continue;
            }
            done += m;
            sent += (unsigned long long)m;
        }
    }
    printf("{\"received\": %llu, \"sent\": %llu, \"send_errors\": %llu, \"batches\": %llu}\n",
           received, sent, send_errors, batches);
    close(fd);
    return 0;
}
