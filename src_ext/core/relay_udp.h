/* relay_udp.h: the UDP relay's private types (flows, batch buffers) and its entry points.
 *
 * Not part of the Cython-visible API (that is dp.h). Everything here belongs to one worker
 * thread; dp.c calls the entry points from that worker's loop. See relay_udp.c for the design.
 */
#ifndef L4LB_RELAY_UDP_H
#define L4LB_RELAY_UDP_H

#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>

#include "relay_tcp.h"

#define RELAY_UDP_BATCH 32u          /* datagrams per recvmmsg / sendmmsg, at most */
#define RELAY_UDP_MAX 65507u         /* largest datagram relayed (UDP over IPv4); larger = cut */
#define RELAY_UDP_STRIDE 65600u      /* bytes between buffer slots: RELAY_UDP_MAX rounded up to a
                                        cache line, plus one line so slots start in different
                                        cache sets */
#define RELAY_UDP_ROUNDS 4u          /* listener batches per wake-up before yielding */
#define RELAY_UDP_STOP_IDLE_MS 250u  /* while stopping, a flow idle this long is done */
#define RELAY_UDP_POLL_US 50u        /* default poll-mode sleep (see relay_udp.c, "Polling") */
#define RELAY_UDP_POLL_MAX_US 1000u  /* largest poll-mode sleep tuning accepts */
#define RELAY_UDP_POLL_ENTER 32u     /* datagrams in one loop iteration that start poll mode */
#define RELAY_UDP_POLL_LEAVE 8u      /* fewer datagrams after a poll sleep end poll mode */
#define RELAY_UDP_CTL 96u            /* control bytes per received datagram: pktinfo (40 for
                                        IPv6) + UDP_GRO (24), and room for one more message an
                                        owner's socket option may add (a cut-off list would
                                        drop the datagram: MSG_CTRUNC) */
#define RELAY_UDP_GRO_CTL 24u        /* control bytes per read on an upstream socket: UDP_GRO */
#define RELAY_UDP_GRO_LEN 65535u     /* receive length of a GRO socket: the largest buffer the
                                        kernel merges (an IPv6 payload; fits RELAY_UDP_STRIDE) */
#define RELAY_UDP_GSO_MAX 1400u      /* largest datagram sent in a GSO run (fits a 1500 MTU) */
#define RELAY_UDP_GSO_BYTES 60000u   /* most payload bytes in one GSO run */
#define RELAY_UDP_UP_RCVBUF (2 << 20) /* receive buffer of an upstream socket (relay_udp.c,
                                         "Socket buffers") */

/* One UDP flow: a ct entry (first) plus its upstream socket and reply addressing. */
struct relay_udp_flow {
    struct ct_entry ct;            /* key: client + local address (see relay_udp.c); idle timer */
    struct dp_ep ep;               /* kind DP_EP_UDP_FLOW: epoll data of fd */
    uint8_t dead;                  /* ended; freed after the current batch is flushed */
    uint8_t flow_key;              /* enum dp_flow_key, copied at creation */
    uint8_t ctl_len;               /* bytes in ctl (0: replies need no control message) */
    uint8_t no_gso;                /* a GSO send of this flow failed: send datagram by datagram */
    uint8_t gro;                   /* UDP_GRO is on for the upstream socket (relay_udp.c, "GRO
                                      buffers") */
    uint8_t reason;                /* why it ended (enum dp_close_reason), set by udp_flow_end */
    int fd;                        /* connected upstream socket, -1 once ended */
    struct dp_listener *l;         /* listener it came in on; replies leave through it */
    uint32_t service_id;           /* service of that listener */
    int32_t backend_id;            /* backend of the upstream socket */
    uint32_t be_index;             /* absolute index of that backend in the table of be_gen */
    uint64_t be_gen;               /* generation of the table that last confirmed the backend */
    uint32_t idle_timeout_ms;      /* copied at creation, > 0 */
    uint32_t responses;            /* datagrams from the backend that end the flow, 0 = never */
    uint32_t replies;              /* datagrams read from the backend so far */
    uint32_t batch_seq;            /* listener batch that in_head/in_tail belong to */
    int16_t in_head;               /* first of this flow's datagrams in that batch */
    int16_t in_tail;               /* last of them */
    uint64_t last_ms;              /* monotonic ms of the last datagram either way */
    double started;                /* unix time of the first datagram */
    uint64_t dg_c2b;               /* datagrams sent to the backend */
    uint64_t dg_b2c;               /* datagrams sent to the client */
    uint64_t bytes_c2b;            /* payload bytes sent to the backend */
    uint64_t bytes_b2c;            /* payload bytes sent to the client */
    union {
        struct sockaddr sa;
        struct sockaddr_in sin;
        struct sockaddr_in6 sin6;
    } peer;                        /* client address replies go to (flow_key 1: latest port) */
    socklen_t peer_len;            /* its length */
    uint64_t ctl[5];               /* control message for replies: the source address (pktinfo);
                                      40 bytes = CMSG_SPACE(sizeof(struct in6_pktinfo)) */
    struct relay_udp_flow *grave_next; /* next in the worker's graveyard */
};

/* One worker's batch buffers; the payload slots live in one anonymous mapping. */
struct relay_udp_io {
    uint8_t *mem;                  /* 2 * RELAY_UDP_BATCH slots of RELAY_UDP_STRIDE bytes */
    size_t mem_len;                /* length of the mapping */
    uint32_t batch;                /* datagrams per call (tuning, 1..RELAY_UDP_BATCH) */
    uint32_t slot;                 /* receive length per datagram (tuning, 1..RELAY_UDP_MAX) */
    uint32_t seq;                  /* stamp of the current listener batch (never 0) */
    uint8_t gso;                   /* send GSO runs: the kernel takes UDP_SEGMENT (probed at
                                      create) and tuning did not turn it off */
    uint8_t gro;                   /* ask for GRO buffers: the kernel takes UDP_GRO, gso is on,
                                      slot is RELAY_UDP_MAX, tuning did not turn it off */
    uint8_t gro_read;              /* the kernel takes UDP_GRO: read every listener as if it
                                      had it on (it may, whatever the tuning says now) */
    /* listener side: client -> backend */
    struct mmsghdr in[RELAY_UDP_BATCH];          /* recvmmsg vector */
    struct iovec in_iov[RELAY_UDP_BATCH];        /* one slot each */
    struct sockaddr_in6 in_name[RELAY_UDP_BATCH];/* client addresses (v4 fits too) */
    uint64_t in_ctl[RELAY_UDP_BATCH][RELAY_UDP_CTL / 8]; /* pktinfo, UDP_GRO per datagram */
    uint16_t in_seg[RELAY_UDP_BATCH];            /* segment size of a GRO buffer, 0 = one
                                                    datagram */
    int16_t in_next[RELAY_UDP_BATCH];            /* next datagram of the same flow, -1 = none */
    struct relay_udp_flow *touched[RELAY_UDP_BATCH]; /* flows with datagrams in this batch */
    struct iovec snd_iov[RELAY_UDP_BATCH];       /* one flow's payloads (point into in slots) */
    uint16_t snd_seg[RELAY_UDP_BATCH];           /* their in_seg */
    /* client side: backend -> client, flushed once per loop iteration (or when full) */
    struct mmsghdr out[RELAY_UDP_BATCH];         /* recvmmsg target, then sendmmsg vector */
    struct iovec out_iov[RELAY_UDP_BATCH];       /* one slot each */
    uint16_t out_seg[RELAY_UDP_BATCH];           /* segment size of a GRO buffer, 0 = one */
    uint64_t out_ctl[RELAY_UDP_BATCH][RELAY_UDP_GRO_CTL / 8]; /* UDP_GRO control per read */
    struct relay_udp_flow *out_flow[RELAY_UDP_BATCH]; /* flow of each pending reply */
    uint32_t n_out;                              /* pending replies */
    /* the send vector of one sendmmsg: one entry per datagram, or per GSO run of datagrams */
    struct mmsghdr tx[RELAY_UDP_BATCH];          /* the vector */
    uint64_t tx_ctl[RELAY_UDP_BATCH][8];         /* control: pktinfo + UDP_SEGMENT (64 bytes) */
    struct relay_udp_flow *tx_flow[RELAY_UDP_BATCH]; /* flow of each entry */
    uint16_t tx_cnt[RELAY_UDP_BATCH];            /* datagrams in each entry */
    uint16_t tx_seg[RELAY_UDP_BATCH];            /* each entry's datagram size (UDP_SEGMENT;
                                                    the last datagram may be shorter) */
    /* datagram by datagram (relay_udp.c, udp_tx_singles): a refused run, a GRO buffer that may
     * not leave as one; apart from tx, which may be half sent when it is needed */
    struct mmsghdr sp[RELAY_UDP_BATCH];          /* one message per datagram */
    struct iovec sp_iov[RELAY_UDP_BATCH];        /* slices of the run's or buffer's payload */
    uint32_t tx_bytes[RELAY_UDP_BATCH];          /* payload bytes in each entry */
};

/* relay_udp.c: called by dp.c (the worker's loop, commands, create/destroy). */
int relay_udp_io_create(struct relay_udp_io **out, uint32_t batch, uint32_t slot);
/* 1 when this kernel takes UDP_SEGMENT (generic segmentation offload for UDP sends). */
int relay_udp_gso_supported(void);
/* 1 when this kernel takes UDP_GRO (several datagrams of one sender per read). */
int relay_udp_gro_supported(void);
/* Turn UDP_GRO on for socket fd: 0 or -errno. Never turned off again (relay_udp.c, "GRO
 * buffers": merged datagrams queued meanwhile would lose their boundaries). */
int relay_udp_gro_on(int fd);
void relay_udp_io_destroy(struct relay_udp_io *io);
void relay_udp_read(struct dp_worker *w, struct dp_listener *l);
void relay_udp_event(struct dp_worker *w, struct dp_ep *ep, uint32_t events);
void relay_udp_flush(struct dp_worker *w);
void relay_udp_expire(struct ct_entry *e, void *arg);
void relay_udp_reap(struct dp_worker *w);
void relay_udp_stopping(struct dp_worker *w);
void relay_udp_close_all(struct dp_worker *w);
void relay_udp_listener_gone(struct dp_worker *w, struct dp_listener *l);
void relay_udp_close_backends(struct dp_worker *w, struct dp_close_set *set, uint8_t reason);
void relay_udp_info(const struct relay_udp_flow *f, uint64_t now_ms, double now_unix,
                    struct dp_flow_info *out);

#endif
