/* pipepool.h: a per-worker pool of empty pipes for the splice relay.
 *
 * Single-threaded (one pool per worker). A session takes a pipe only while bytes are in flight
 * in one direction and gives it back as soon as it is empty, so idle sessions hold no pipe.
 */
#ifndef L4LB_PIPEPOOL_H
#define L4LB_PIPEPOOL_H

#include <stdatomic.h>
#include <stdint.h>

/* One pipe: read end and write end. */
struct pipepool_pipe {
    int rfd;                   /* read end (splice to the destination socket) */
    int wfd;                   /* write end (splice from the source socket) */
};

struct pipepool {
    struct pipepool_pipe *free;/* stack of idle, empty pipes */
    uint32_t n_free;           /* pipes on the stack */
    uint32_t cap;              /* most idle pipes kept; extra ones returned are closed */
    uint32_t pipe_size;        /* requested capacity (F_SETPIPE_SZ), 0 = kernel default */
    uint32_t actual_size;      /* capacity the kernel granted for the last pipe created */
    uint64_t created;          /* pipes created over the pool's life */
    uint64_t reused;           /* gets served from the stack */
    uint64_t closed;           /* pipes closed (pool full, dirty or destroyed) */
    int64_t in_use;            /* pipes handed out and not yet returned */
    const _Atomic uint32_t *fd_ceiling; /* NULL, or the data plane's descriptor ceiling: a new
                                           pipe with an end at or above a non-zero value is
                                           closed and -EMFILE returned (relay_tcp.c, "The fd
                                           reserve") */
};

/* Prepare an empty pool that keeps up to cap idle pipes of pipe_size bytes. */
int pipepool_init(struct pipepool *pp, uint32_t cap, uint32_t pipe_size);
/* Close every idle pipe and free the stack (pipes in use must have been returned or dropped). */
void pipepool_destroy(struct pipepool *pp);
/* Hand out an empty pipe (from the stack, else a new one). 0 or -errno (-EMFILE, -ENFILE;
 * -EMFILE also for a new pipe that would reach the descriptor ceiling). */
int pipepool_get(struct pipepool *pp, struct pipepool_pipe *out);
/* Return a pipe. empty != 0 means the caller knows it holds no data; otherwise it is closed. */
void pipepool_put(struct pipepool *pp, struct pipepool_pipe *p, int empty);

#endif
