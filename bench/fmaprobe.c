/*
 * Float32 multiply-add probe for `python -m pyffi bench`: N threads each run
 * independent fused multiply-adds on the widest vectors the compiler makes
 * for this CPU; the best of several passes, in floating-point operations
 * per second over all threads (a multiply-add counts 2), is printed as one
 * JSON line. It is the ceiling a float32 prefill (F16 weights converted to
 * float32, as both engines compute them) can reach. Compiled on the fly by
 * pyffi/bench.py:
 *
 *   cc -O2 -march=native -pthread fmaprobe.c -o fmaprobe && ./fmaprobe THREADS [PASSES]
 *
 * Sixteen accumulators of 16 floats hide the multiply-add latency; with
 * -march=native GCC and Clang contract `a * b + c` into one instruction
 * (on AVX-512 CPUs they may still pick 256-bit vectors: the same rate on
 * CPUs that split 512-bit ones, a lower one elsewhere).
 *
 * Each worker stamps its own pass, and a pass lasts from the first worker's
 * start to the last one's end (see bwprobe.c: stamps taken by the main
 * thread come late when the workers hold every CPU, and overstate the rate).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef float v16f __attribute__((vector_size(64)));

#define ACCS 16
#define ITERS 10000000L

static pthread_barrier_t start_barrier, end_barrier;
static double start[256][64], end[256][64]; /* [worker][pass], each worker's own clock */
static int passes;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float sink[256];

static void *worker(void *arg) {
    long id = (long)arg;
    v16f acc[ACCS], b, c;
    for (int k = 0; k < 16; k++) {
        b[k] = 0.999f;
        c[k] = 1e-3f * (float)k;
    }
    for (int pass = 0; pass < passes; pass++) {
        for (int a = 0; a < ACCS; a++) acc[a] = c * (float)a;
        pthread_barrier_wait(&start_barrier);
        start[id][pass] = now();
        /* No -ffast-math: the compiler may not fold or skip the chain. */
        for (long i = 0; i < ITERS; i++) {
#pragma GCC unroll 16
            for (int a = 0; a < ACCS; a++) acc[a] = acc[a] * b + c;
        }
        end[id][pass] = now();
        pthread_barrier_wait(&end_barrier);
    }
    float s = 0;
    for (int a = 0; a < ACCS; a++)
        for (int k = 0; k < 16; k++) s += acc[a][k];
    sink[id & 255] = s;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s THREADS [PASSES]\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[1]);
    passes = argc > 2 ? atoi(argv[2]) : 5;
    if (threads < 1 || threads > 256 || passes < 1 || passes > 64) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    pthread_barrier_init(&start_barrier, NULL, (unsigned)threads + 1);
    pthread_barrier_init(&end_barrier, NULL, (unsigned)threads + 1);
    pthread_t *tids = calloc((size_t)threads, sizeof *tids);
    for (long t = 0; t < threads; t++) pthread_create(&tids[t], NULL, worker, (void *)t);
    for (int pass = 0; pass < passes; pass++) {
        pthread_barrier_wait(&start_barrier);
        pthread_barrier_wait(&end_barrier);
    }
    for (int t = 0; t < threads; t++) pthread_join(tids[t], NULL);
    double best = 1e30;
    for (int pass = passes > 1 ? 1 : 0; pass < passes; pass++) {
        double first = 1e30, last = 0;
        for (int t = 0; t < threads; t++) {
            if (start[t][pass] < first) first = start[t][pass];
            if (end[t][pass] > last) last = end[t][pass];
        }
        double dt = last - first;
        if (dt < best) best = dt;
    }
    double flops = 2.0 * 16 * ACCS * (double)ITERS * threads;
    printf("{\"threads\": %d, \"passes\": %d, \"best_s\": %.6f, \"gflop_per_s\": %.2f, \"checksum\": %d}\n",
           threads, passes, best, flops / best / 1e9, (int)sink[0] & 0xff);
    free(tids);
    return 0;
}
