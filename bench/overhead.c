/*
 * The C side of the per-call overhead measurement in `python -m pyffi bench`:
 * loads a (tiny) model, then times one-token `pyffi_forward` calls, last
 * position only, the same calls in the same order as the Python side
 * (position i % SPAN, a fresh start at every 0). Prints one JSON line with
 * the median over ROUNDS rounds of CALLS calls, in nanoseconds per call.
 *
 *   cc -O2 -Iinclude overhead.c -Lrust/target/release -lpyffi -Wl,-rpath,...
 *   ./overhead MODEL THREADS CALLS ROUNDS SPAN
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "pyffi.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void fail(const char *what, pyffi_error *err) {
    printf("{\"error\": \"%s: %s\"}\n", what, err ? pyffi_error_message(err) : "?");
    pyffi_error_free(err);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s MODEL THREADS CALLS ROUNDS SPAN\n", argv[0]);
        return 2;
    }
    unsigned threads = (unsigned)atoi(argv[2]);
    long calls = atol(argv[3]);
    int rounds = atoi(argv[4]);
    unsigned span = (unsigned)atoi(argv[5]);
    if (calls < 1 || rounds < 1 || rounds > 1000 || span < 1) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    pyffi_error *err = NULL;
    pyffi_model *model = NULL;
    if (pyffi_model_load(argv[1], &model, &err) != PYFFI_OK) fail("load", err);
    pyffi_session_params sp = pyffi_session_default_params();
    sp.n_ctx = span;
    sp.n_threads = threads;
    pyffi_session *session = NULL;
    if (pyffi_session_new(model, &sp, &session, &err) != PYFFI_OK) fail("session", err);
    size_t vocab = pyffi_model_vocab_size(model);
    float *logits = malloc(vocab * sizeof *logits);
    double *per_call = malloc((size_t)rounds * sizeof *per_call);
    const int32_t token[1] = {1};
    const uint32_t length[1] = {1};
    size_t n = 0;
    for (int r = -1; r < rounds; r++) { /* round -1 is a warm-up */
        double t0 = now();
        for (long i = 0; i < calls; i++) {
            uint32_t pos[1] = {(uint32_t)(i % span)};
            if (pyffi_forward(session, token, length, 1, pos, true, logits, vocab, &n, &err) != PYFFI_OK)
                fail("forward", err);
        }
        double dt = now() - t0;
        if (r >= 0) per_call[r] = dt / (double)calls;
    }
    qsort(per_call, (size_t)rounds, sizeof *per_call, cmp_double);
    double median = rounds % 2 ? per_call[rounds / 2] : 0.5 * (per_call[rounds / 2 - 1] + per_call[rounds / 2]);
    printf("{\"ns_per_call\": %.1f, \"calls\": %ld, \"rounds\": %d, \"threads\": %u}\n", median * 1e9, calls,
           rounds, threads);
    free(per_call);
    free(logits);
    pyffi_session_free(session);
    pyffi_model_free(model);
    return 0;
}
