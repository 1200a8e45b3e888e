/* pingpong.c: measure how far apart two CPUs are, as the round trip of one cache line.
 *
 * Two threads, pinned to CPU A and CPU B, pass a token through one 64-byte-aligned atomic:
 * A writes 1 and spins until B has written 0 back. One round trip moves the cache line from A to
 * B and back, so its time tracks the distance between the two vCPUs on the host: on this kind of
 * machine about 100-300 ns when the host keeps them close, 400-650 ns when it moved them apart.
 * Several timed batches follow a warm-up; the median batch is the answer (a batch in which either
 * thread was preempted is an outlier and the median ignores it).
 *
 * Usage: pingpong CPU_A CPU_B [ITERATIONS_PER_BATCH [BATCHES]]
 * Prints one JSON object: {"cpu_a", "cpu_b", "rtt_ns": median, "batches_ns": [...]}.
 * Exit status 0, or 2 on bad arguments, 1 when a thread cannot be pinned or started.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_BATCHES 64

struct shared {
    _Alignas(64) atomic_int token; /* 1: B's turn, 0: A's turn, -1: B must exit */
    char pad[64 - sizeof(atomic_int)]; /* keeps the token alone on its cache line */
};

static struct shared g_shared;

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int pin_self(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void *responder(void *arg)
{
    int cpu = *(int *)arg;
    if (pin_self(cpu) != 0)
        return (void *)1;
    for (;;) {
        int v;
        while ((v = atomic_load_explicit(&g_shared.token, memory_order_acquire)) == 0)
            cpu_relax();
        if (v < 0)
            return NULL;
        atomic_store_explicit(&g_shared.token, 0, memory_order_release);
    }
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void round_trips(long n)
{
    for (long i = 0; i < n; i++) {
        atomic_store_explicit(&g_shared.token, 1, memory_order_release);
        while (atomic_load_explicit(&g_shared.token, memory_order_acquire) != 0)
            cpu_relax();
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: pingpong CPU_A CPU_B [ITERATIONS [BATCHES]]\n");
        return 2;
    }
    int cpu_a = atoi(argv[1]);
    int cpu_b = atoi(argv[2]);
    long iters = argc > 3 ? atol(argv[3]) : 5000;
    int batches = argc > 4 ? atoi(argv[4]) : 7;
    if (iters < 1 || batches < 1 || batches > MAX_BATCHES) {
        fprintf(stderr, "pingpong: bad iterations or batches\n");
        return 2;
    }
    if (pin_self(cpu_a) != 0) {
        fprintf(stderr, "pingpong: cannot pin to CPU %d\n", cpu_a);
        return 1;
    }
    atomic_store(&g_shared.token, 0);
    pthread_t th;
    if (pthread_create(&th, NULL, responder, &cpu_b) != 0) {
        fprintf(stderr, "pingpong: cannot start the responder thread\n");
        return 1;
    }
    round_trips(iters / 4 + 100); /* warm-up: both threads running, line in place */
    double rtt[MAX_BATCHES];
    for (int b = 0; b < batches; b++) {
        double t0 = now_ns();
        round_trips(iters);
        rtt[b] = (now_ns() - t0) / (double)iters;
    }
    atomic_store_explicit(&g_shared.token, -1, memory_order_release);
    void *res = NULL;
    pthread_join(th, &res);
    if (res != NULL) {
        fprintf(stderr, "pingpong: cannot pin to CPU %d\n", cpu_b);
        return 1;
    }
    double sorted[MAX_BATCHES];
    memcpy(sorted, rtt, sizeof(double) * (size_t)batches);
    qsort(sorted, (size_t)batches, sizeof(double), cmp_double);
    printf("{\"cpu_a\": %d, \"cpu_b\": %d, \"rtt_ns\": %.1f, \"batches_ns\": [", cpu_a, cpu_b,
           sorted[batches / 2]);
    for (int b = 0; b < batches; b++)
        printf("%s%.1f", b ? ", " : "", rtt[b]);
    printf("]}\n");
    return 0;
}
