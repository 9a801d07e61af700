/*
 * Read-bandwidth probe for `python -m pyffi bench`: N threads each sum their
 * slice of one large buffer (much larger than the caches); the best of
 * several passes, in bytes read per second over all threads, is printed as
 * one JSON line. Compiled on the fly by pyffi/bench.py:
 *
 *   cc -O2 -pthread bwprobe.c -o bwprobe && ./bwprobe THREADS [MIB] [PASSES]
 *
 * The loop uses 16-byte vector loads (GCC/Clang vector extensions, plain
 * SSE2 / NEON, no -march flags needed) into four independent accumulators,
 * so it is limited by memory, not by the adds. On Linux the buffer asks for
 * 2 MiB pages, as pyffi's weight buffers do: with 4 KiB pages the probe
 * measures the address translation as much as the memory.
 *
 * Each worker stamps its own pass, and a pass lasts from the first worker's
 * start to the last one's end. Stamps taken by the main thread around the
 * barriers would be late whenever the workers hold every CPU: main then
 * waits for a time slice before it reads the clock, the pass looks shorter
 * than it was, and the best of ten such passes overstates the bandwidth
 * (on a 2-CPU machine by a quarter in the passes we compared).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

typedef uint64_t v2u64 __attribute__((vector_size(16)));

typedef struct {
    const v2u64 *begin;
    size_t n_vec; /* number of 16-byte vectors in this slice, a multiple of 4 */
    int passes;
    uint64_t sink;
    double start[64], end[64]; /* this worker's clock around each pass */
} slice;

static pthread_barrier_t start_barrier, end_barrier;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t sum_slice(const v2u64 *p, size_t n) {
    v2u64 a = {0, 0}, b = {0, 0}, c = {0, 0}, d = {0, 0};
    for (size_t i = 0; i < n; i += 4) {
        a += p[i];
        b += p[i + 1];
        c += p[i + 2];
        d += p[i + 3];
    }
    v2u64 s = a + b + c + d;
    return s[0] + s[1];
}

static void *worker(void *arg) {
    slice *s = arg;
    /* First touch from the reading thread, so pages sit near it. Every
     * page differs: a hypervisor that merges identical pages would
     * otherwise serve the whole buffer from a few cached ones. */
    uint64_t x = (uint64_t)(uintptr_t)s->begin | 1;
    uint64_t *w = (uint64_t *)s->begin;
    for (size_t i = 0; i < 2 * s->n_vec; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        w[i] = x;
    }
    for (int pass = 0; pass < s->passes; pass++) {
        pthread_barrier_wait(&start_barrier);
        s->start[pass] = now();
        s->sink += sum_slice(s->begin, s->n_vec);
        s->end[pass] = now();
        pthread_barrier_wait(&end_barrier);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s THREADS [MIB] [PASSES]\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[1]);
    size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 1024;
    int passes = argc > 3 ? atoi(argv[3]) : 10;
    if (threads < 1 || threads > 256 || mib < 1 || passes < 1 || passes > 64) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    size_t bytes = mib << 20;
    size_t n_vec = bytes / sizeof(v2u64);
    size_t per = (n_vec / (size_t)threads) & ~(size_t)3;
    v2u64 *buf = NULL;
    if (posix_memalign((void **)&buf, 2u << 20, bytes) != 0) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    int huge = 0;
#ifdef __linux__
    huge = madvise(buf, bytes, MADV_HUGEPAGE) == 0;
#endif
    pthread_barrier_init(&start_barrier, NULL, (unsigned)threads + 1);
    pthread_barrier_init(&end_barrier, NULL, (unsigned)threads + 1);
    slice *slices = calloc((size_t)threads, sizeof *slices);
    pthread_t *tids = calloc((size_t)threads, sizeof *tids);
    for (int t = 0; t < threads; t++) {
        slices[t] = (slice){buf + (size_t)t * per, per, passes, 0};
        pthread_create(&tids[t], NULL, worker, &slices[t]);
    }
    for (int pass = 0; pass < passes; pass++) {
        pthread_barrier_wait(&start_barrier);
        pthread_barrier_wait(&end_barrier);
    }
    uint64_t sink = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(tids[t], NULL);
        sink += slices[t].sink;
    }
    double best = 1e30;
    /* Pass 0 is a warm-up (page faults were taken when filling, caches cold). */
    for (int pass = passes > 1 ? 1 : 0; pass < passes; pass++) {
        double first = 1e30, last = 0;
        for (int t = 0; t < threads; t++) {
            if (slices[t].start[pass] < first) first = slices[t].start[pass];
            if (slices[t].end[pass] > last) last = slices[t].end[pass];
        }
        double dt = last - first;
        if (dt < best) best = dt;
    }
    double read = (double)per * (double)threads * sizeof(v2u64);
    printf("{\"threads\": %d, \"buffer_mib\": %zu, \"passes\": %d, \"best_s\": %.6f, \"gb_per_s\": %.3f, "
           "\"huge_pages_advised\": %s, \"checksum\": %llu}\n",
           threads, mib, passes, best, read / best / 1e9, huge ? "true" : "false",
           (unsigned long long)(sink & 0xffff));
    free(tids);
    free(slices);
    free(buf);
    return 0;
}
