/*
 * Loads a model folder, runs a forward pass and a seeded, streamed generate
 * through the C ABI, and shows how an error comes back.
 *
 *   cc -Wall -Wextra -Werror -I../../include pyffi_example.c \
 *      -L../../rust/target/release -lpyffi -Wl,-rpath,../../rust/target/release
 *   ./pyffi_example MODEL_DIR
 *
 * The output format is shared with examples/go; the test suite compares both
 * with Python's results for the same model and seed.
 */
#include <stdio.h>
#include <stdlib.h>

#include "pyffi.h"

/* Print the error, free it, and exit: for calls that must not fail here.
 * Takes &err so the message is read after the call has filled it in. */
static void check(pyffi_status status, pyffi_error **err, const char *what) {
    if (status == PYFFI_OK) return;
    fprintf(stderr, "error %s: %s: %s\n", pyffi_status_name(status), what, pyffi_error_message(*err));
    pyffi_error_free(*err);
    exit(1);
}

typedef struct {
    int32_t tokens[64];
    size_t n;
} stream_state;

/* Called by the engine after each new token; returning false would stop it. */
static bool on_token(void *user_data, int32_t token) {
    stream_state *s = user_data;
    if (s->n < sizeof s->tokens / sizeof s->tokens[0]) s->tokens[s->n++] = token;
    return true;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]);
        return 2;
    }
    pyffi_error *err = NULL;
    printf("abi %u\n", pyffi_abi_version());

    pyffi_model *model = NULL;
    check(pyffi_model_load(argv[1], &model, &err), &err, "loading the model");
    uint32_t vocab = pyffi_model_vocab_size(model);
    printf("vocab %u\n", vocab);

    pyffi_session_params sp = pyffi_session_default_params();
    sp.n_ctx = 128;
    pyffi_session *session = NULL;
    check(pyffi_session_new(model, &sp, &session, &err), &err, "creating a session");

    /* Forward: the caller owns the logits buffer; last_only gives [1][vocab]. */
    const int32_t tokens[] = {1, 2, 3, 4, 5};
    const uint32_t lengths[] = {5};
    float *logits = malloc(vocab * sizeof *logits);
    size_t n_logits = 0;
    check(pyffi_forward(session, tokens, lengths, 1, NULL, true, logits, vocab, &n_logits, &err), &err,
          "forward");
    printf("logits");
    for (size_t i = 0; i < n_logits; i++) printf(" %.9g", logits[i]);
    printf("\n");

    /* Seeded sampling, streamed through a callback. */
    pyffi_sampling_params p = pyffi_sampling_default_params();
    p.temperature = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
    p.repeat_penalty = 1.1f;
    p.repeat_last_n = 64;
    p.seed = 1234;
    p.stop_at_eos = false;
    const int32_t prompt[] = {1, 2, 3};
    int32_t out[24];
    size_t n_out = 0;
    pyffi_finish_reason finish;
    stream_state streamed = {.n = 0};
    check(pyffi_generate(session, prompt, 3, &p, 24, out, 24, &n_out, &finish, on_token, &streamed, &err),
          &err, "generate");
    printf("tokens");
    for (size_t i = 0; i < n_out; i++) printf(" %d", out[i]);
    printf("\nstreamed");
    for (size_t i = 0; i < streamed.n; i++) printf(" %d", streamed.tokens[i]);
    const char *reasons[] = {"stop", "length", "cancelled"};
    printf("\nfinish %s\n", reasons[finish]);

    /* An error comes back as a status plus a message, in the same call. */
    const int32_t bad[] = {(int32_t)vocab};
    const uint32_t one[] = {1};
    pyffi_status st = pyffi_forward(session, bad, one, 1, NULL, true, logits, vocab, &n_logits, &err);
    printf("error_check %s %s\n", pyffi_status_name(st), pyffi_error_message(err));
    pyffi_error_free(err);

    free(logits);
    pyffi_session_free(session);
    pyffi_model_free(model);
    return st == PYFFI_OUT_OF_RANGE ? 0 : 1;
}
