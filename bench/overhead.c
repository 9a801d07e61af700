/*
 * The C side of the per-call overhead measurement in `python -m pyffi bench`:
 * one-token `pyffi_forward` calls, last position only, the same calls in the
 * same order as the Python side (position i % span, a fresh start at every
 * 0). Built as a shared object and called, through cffi, in the same process
 * and on the same session as the Python calls, in alternate rounds: Python's
 * call is then compared with C's on one machine state, not across processes
 * that may each meet the machine at another pace.
 *
 *   cc -O2 -shared -fPIC -Iinclude overhead.c -o overhead.so libpyffi.so
 */
#include <stdio.h>
#include <time.h>

#include "pyffi.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/*
 * Runs `calls` forwards of token 1 on `session` into `logits` (`vocab`
 * floats) and returns the seconds they took, or -1 with the engine's message
 * in `msg` (`msg_cap` bytes) when one fails.
 */
double pyffi_bench_forward_loop(pyffi_session *session, long calls, unsigned span, float *logits,
                                size_t vocab, char *msg, size_t msg_cap) {
    const int32_t token[1] = {1};
    const uint32_t length[1] = {1};
    size_t n = 0;
    pyffi_error *err = NULL;
    double t0 = now();
    for (long i = 0; i < calls; i++) {
        uint32_t pos[1] = {(uint32_t)(i % span)};
        if (pyffi_forward(session, token, length, 1, pos, true, logits, vocab, &n, &err) != PYFFI_OK) {
            snprintf(msg, msg_cap, "%s", pyffi_error_message(err));
            pyffi_error_free(err);
            return -1.0;
        }
    }
    return now() - t0;
}
