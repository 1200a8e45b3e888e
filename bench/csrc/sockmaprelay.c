/* sockmaprelay: an experiment, not a product: a TCP relay whose bytes the kernel moves (SOCKMAP).
 *
 * Why it exists. docs/performance.md names one lever left for keep-alive CPU: not waking the
 * balancer for each message, by letting the kernel pass the bytes of an established session
 * from one socket to the other. This program measures that lever before anyone builds it into
 * the data plane. It accepts on LISTEN, connects each client to BACKEND, and puts both sockets
 * into a BPF SOCKHASH whose stream-verdict program redirects every arriving skb to the other
 * socket's send path. The process itself then only waits for hang-ups.
 *
 * How the program finds the peer. The hash is keyed by the receiving socket's own 4-tuple as
 * the verdict program sees it in struct __sk_buff (remote_ip4, local_ip4, remote_port,
 * local_port); the value under a socket's key is the OTHER socket. The kernel exposes
 * remote_port in network byte order in the upper 16 bits and local_port in host order, and
 * tuple_key() builds the same layout from getsockname()/getpeername().
 *
 * No clang is needed: the sixteen-instruction program is assembled below by hand.
 *
 * Where the work runs. A redirected skb is queued on the peer's psock and sent by a kworker
 * (sk_psock_backlog), on the CPU whose softirq received it. /proc/PID/stat of this process
 * therefore shows almost nothing; a fair figure is the whole machine's CPU per request
 * (bench/sockmap_keepalive.py measures that way).
 *
 * Limits (fine for an experiment, not for a product): IPv4 only; the first bytes a client
 * sends before its sockets are in the map are relayed by hand, once (a race with the next
 * bytes is possible, harmless for one-request-at-a-time loads); half-close is not
 * forwarded (a hang-up on either side closes both); no counters.
 *
 * Usage: sockmaprelay LISTEN_PORT BACKEND_PORT   (127.0.0.1 on both sides; runs until SIGTERM)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

struct tuple_key {
    uint32_t remote_ip4;  /* peer address, network order, as __sk_buff.remote_ip4 */
    uint32_t local_ip4;   /* own address, network order, as __sk_buff.local_ip4 */
    uint32_t remote_port; /* peer port, network order in the upper 16 bits */
    uint32_t local_port;  /* own port, host order */
};

static volatile sig_atomic_t stop_flag;

static void on_term(int sig) { (void)sig; stop_flag = 1; }

static long sys_bpf(int cmd, union bpf_attr *attr)
{
    return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

#define INSN(c, d, s, o, i) ((struct bpf_insn){ .code = (c), .dst_reg = (d), .src_reg = (s), \
                                                .off = (o), .imm = (i) })

static int load_verdict(int map_fd)
{
    const int16_t key = -16;
    struct bpf_insn prog[] = {
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_6, BPF_REG_1, 0, 0),
        INSN(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_2, BPF_REG_6, offsetof(struct __sk_buff, remote_ip4), 0),
        INSN(BPF_STX | BPF_MEM | BPF_W, BPF_REG_10, BPF_REG_2, key + 0, 0),
        INSN(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_2, BPF_REG_6, offsetof(struct __sk_buff, local_ip4), 0),
        INSN(BPF_STX | BPF_MEM | BPF_W, BPF_REG_10, BPF_REG_2, key + 4, 0),
        INSN(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_2, BPF_REG_6, offsetof(struct __sk_buff, remote_port), 0),
        INSN(BPF_STX | BPF_MEM | BPF_W, BPF_REG_10, BPF_REG_2, key + 8, 0),
        INSN(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_2, BPF_REG_6, offsetof(struct __sk_buff, local_port), 0),
        INSN(BPF_STX | BPF_MEM | BPF_W, BPF_REG_10, BPF_REG_2, key + 12, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_1, BPF_REG_6, 0, 0),
        INSN(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_2, BPF_PSEUDO_MAP_FD, 0, map_fd),
        INSN(0, 0, 0, 0, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_3, BPF_REG_10, 0, 0),
        INSN(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_3, 0, 0, key),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_4, 0, 0, 0),
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_redirect_hash),
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    static char log[65536];
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.prog_type = BPF_PROG_TYPE_SK_SKB;
    a.insns = (uintptr_t)prog;
    a.insn_cnt = sizeof(prog) / sizeof(prog[0]);
    a.license = (uintptr_t)"GPL";
    a.log_buf = (uintptr_t)log;
    a.log_size = sizeof(log);
    a.log_level = 1;
    int fd = (int)sys_bpf(BPF_PROG_LOAD, &a);
    if (fd < 0)
        fprintf(stderr, "sockmaprelay: BPF_PROG_LOAD: %s\n%s\n", strerror(errno), log);
    return fd;
}

static int make_map(void)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_type = BPF_MAP_TYPE_SOCKHASH;
    a.key_size = sizeof(struct tuple_key);
    a.value_size = sizeof(uint32_t);
    a.max_entries = 65536;
    int fd = (int)sys_bpf(BPF_MAP_CREATE, &a);
    if (fd < 0)
        fprintf(stderr, "sockmaprelay: BPF_MAP_CREATE: %s\n", strerror(errno));
    return fd;
}

static int tuple_key(int fd, struct tuple_key *k)
{
    struct sockaddr_in own, peer;
    socklen_t ol = sizeof(own), pl = sizeof(peer);
    if (getsockname(fd, (struct sockaddr *)&own, &ol) < 0 ||
        getpeername(fd, (struct sockaddr *)&peer, &pl) < 0)
        return -errno;
    k->remote_ip4 = peer.sin_addr.s_addr;
    k->local_ip4 = own.sin_addr.s_addr;
    k->remote_port = (uint32_t)peer.sin_port << 16;
    k->local_port = ntohs(own.sin_port);
    return 0;
}

static int map_op(int map_fd, int cmd, const struct tuple_key *k, int value_fd)
{
    uint32_t v = (uint32_t)value_fd;
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_fd = (uint32_t)map_fd;
    a.key = (uintptr_t)k;
    a.value = (uintptr_t)&v;
    a.flags = BPF_ANY;
    return sys_bpf(cmd, &a) < 0 ? -errno : 0;
}

/* Relay, by hand, what already sat in SRC's receive queue before the map took the socket. */
static void drain_by_hand(int src, int dst)
{
    char buf[65536];
    for (;;) {
        ssize_t n = recv(src, buf, sizeof(buf), MSG_DONTWAIT);
        if (n <= 0)
            return;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = send(dst, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
            if (w <= 0)
                return;
            off += w;
        }
    }
}

struct pair {
    int fd[2];                /* client, backend */
    struct tuple_key key[2];  /* each socket's own tuple (its entry names the other) */
};

static void close_pair(int map_fd, struct pair *p)
{
    for (int i = 0; i < 2; i++)
        map_op(map_fd, BPF_MAP_DELETE_ELEM, &p->key[i], 0);
    close(p->fd[0]);
    close(p->fd[1]);
    free(p);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: sockmaprelay LISTEN_PORT BACKEND_PORT\n");
        return 2;
    }
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    int map_fd = make_map();
    int prog_fd = map_fd < 0 ? -1 : load_verdict(map_fd);
    if (prog_fd < 0)
        return 1;
    union bpf_attr at;
    memset(&at, 0, sizeof(at));
    at.target_fd = (uint32_t)map_fd;
    at.attach_bpf_fd = (uint32_t)prog_fd;
    at.attach_type = BPF_SK_SKB_STREAM_VERDICT;
    if (sys_bpf(BPF_PROG_ATTACH, &at) < 0) {
        fprintf(stderr, "sockmaprelay: BPF_PROG_ATTACH: %s\n", strerror(errno));
        return 1;
    }

    struct sockaddr_in la = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    struct sockaddr_in ba = la;
    ba.sin_port = htons((uint16_t)atoi(argv[2]));
    int one = 1;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (bind(lfd, (struct sockaddr *)&la, sizeof(la)) < 0 || listen(lfd, 1024) < 0) {
        fprintf(stderr, "sockmaprelay: listen on %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    printf("ready\n");
    fflush(stdout);

    long pairs = 0;
    static char gone;     /* marks events of a pair closed earlier in the same batch */
    while (!stop_flag) {
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, 500);
        for (int i = 0; i < n; i++) {
            struct pair *p = evs[i].data.ptr;
            if (p == (struct pair *)&gone)
                continue;
            if (p) {              /* a hang-up or error on either socket ends the pair */
                close_pair(map_fd, p);
                for (int j = i + 1; j < n; j++)   /* its other socket may be in this batch */
                    if (evs[j].data.ptr == p)
                        evs[j].data.ptr = &gone;
                continue;
            }
            int cfd = accept4(lfd, NULL, NULL, 0);
            if (cfd < 0)
                continue;
            int bfd = socket(AF_INET, SOCK_STREAM, 0);
            setsockopt(bfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            if (connect(bfd, (struct sockaddr *)&ba, sizeof(ba)) < 0) {
                close(cfd);
                close(bfd);
                continue;
            }
            p = calloc(1, sizeof(*p));
            p->fd[0] = cfd;
            p->fd[1] = bfd;
            int err = tuple_key(cfd, &p->key[0]);
            if (!err)
                err = tuple_key(bfd, &p->key[1]);
            /* Both sockets go into the map before a byte is moved by hand: a redirect to a
             * socket that is not in the map yet is dropped by the kernel. Bytes the client
             * sent before its socket was in the map stay in its receive queue, where only a
             * later arrival would make the kernel look; they are moved by hand once. */
            if (!err)
                err = map_op(map_fd, BPF_MAP_UPDATE_ELEM, &p->key[1], cfd);
            if (!err)
                err = map_op(map_fd, BPF_MAP_UPDATE_ELEM, &p->key[0], bfd);
            if (!err)
                drain_by_hand(cfd, bfd);
            if (err) {
                fprintf(stderr, "sockmaprelay: map update: %s\n", strerror(-err));
                close_pair(map_fd, p);
                continue;
            }
            struct epoll_event pe = { .events = EPOLLRDHUP, .data.ptr = p };
            epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &pe);
            epoll_ctl(ep, EPOLL_CTL_ADD, bfd, &pe);
            pairs++;
        }
    }
    fprintf(stderr, "sockmaprelay: %ld pairs\n", pairs);
    return 0;
}
