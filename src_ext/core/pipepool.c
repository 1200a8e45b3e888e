/* pipepool.c: a per-worker pool of empty pipes for the splice relay.
 *
 * Design. splice(2) moves socket data through a pipe without copying it to user space, so each
 * relay direction needs a pipe while bytes are in flight. Creating a pipe costs a pipe2() plus an
 * fcntl(F_SETPIPE_SZ) and two descriptors, so pipes are recycled: a direction takes one when it
 * starts moving data and hands it back the moment the pipe is empty again. An idle session (the
 * common case for a load balancer with keep-alive clients) therefore holds no pipe, no pipe
 * buffer pages and no extra descriptors. Only pipes known to be empty come back to the stack; a
 * pipe that may still hold bytes (a session killed mid-transfer) is closed, which frees its
 * pages. The stack is bounded (cap) so a burst does not pin descriptors forever. Pipes are
 * created O_NONBLOCK|O_CLOEXEC; the relay also passes SPLICE_F_NONBLOCK. A new pipe whose
 * descriptors land at or above the data plane's descriptor ceiling (fd_ceiling) is closed
 * again and reported as -EMFILE: the relay then treats it as "no fd" (relay_tcp.c, "The fd
 * reserve"), and the descriptors up there stay free for the control plane.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "pipepool.h"

int pipepool_init(struct pipepool *pp, uint32_t cap, uint32_t pipe_size)
{
    pp->fd_ceiling = NULL;
    pp->free = calloc(cap ? cap : 1, sizeof(*pp->free));
    if (!pp->free)
        return -ENOMEM;
    pp->n_free = 0;
    pp->cap = cap;
    pp->pipe_size = pipe_size;
    pp->actual_size = 0;
    pp->created = pp->reused = pp->closed = 0;
    pp->in_use = 0;
    return 0;
}

void pipepool_destroy(struct pipepool *pp)
{
    while (pp->n_free) {
        struct pipepool_pipe *p = &pp->free[--pp->n_free];
        close(p->rfd);
        close(p->wfd);
        pp->closed++;
    }
    free(pp->free);
    pp->free = NULL;
}

int pipepool_get(struct pipepool *pp, struct pipepool_pipe *out)
{
    int fds[2], sz;

    if (pp->n_free) {
        *out = pp->free[--pp->n_free];
        pp->reused++;
        pp->in_use++;
        return 0;
    }
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
        return -errno;
    if (pp->fd_ceiling) {
        uint32_t c = atomic_load_explicit(pp->fd_ceiling, memory_order_relaxed);
        if (c && ((uint32_t)fds[0] >= c || (uint32_t)fds[1] >= c)) {
            close(fds[0]); /* the descriptors up there are the control plane's */
            close(fds[1]);
            return -EMFILE;
        }
    }
    if (pp->pipe_size) {
        /* a refusal (over /proc/sys/fs/pipe-max-size for an unprivileged user) keeps the
         * default size, which still works */
        sz = fcntl(fds[1], F_SETPIPE_SZ, (int)pp->pipe_size);
        (void)sz;
    }
    sz = fcntl(fds[1], F_GETPIPE_SZ);
    pp->actual_size = sz > 0 ? (uint32_t)sz : 65536u;
    out->rfd = fds[0];
    out->wfd = fds[1];
    pp->created++;
    pp->in_use++;
    return 0;
}

void pipepool_put(struct pipepool *pp, struct pipepool_pipe *p, int empty)
{
    pp->in_use--;
    if (empty && pp->n_free < pp->cap) {
        pp->free[pp->n_free++] = *p;
    } else {
        close(p->rfd);
        close(p->wfd);
        pp->closed++;
    }
    p->rfd = p->wfd = -1;
}
