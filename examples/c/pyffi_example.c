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
#include <string.h>

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
    pyffi_detokenizer *detok; /* set for the text demo: tokens become text */
    char text[4096];
    size_t text_len;
} stream_state;

/* Called by the engine after each new token; returning false would stop it. */
static bool on_token(void *user_data, int32_t token) {
    stream_state *s = user_data;
    if (s->n < sizeof s->tokens / sizeof s->tokens[0]) s->tokens[s->n++] = token;
    if (s->detok) {
        /* The detokenizer holds back a character split across tokens. */
        size_t len = 0;
        size_t room = sizeof s->text - s->text_len;
        if (pyffi_detokenizer_feed(s->detok, token, s->text + s->text_len, room, &len, NULL) == PYFFI_OK)
            s->text_len += len - 1; /* len counts the NUL */
    }
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

    /* Text in, text out, when the model folder has a tokenizer. */
    pyffi_tokenizer *tok = NULL;
    pyffi_status ts = pyffi_tokenizer_load(argv[1], &tok, &err);
    if (ts == PYFFI_NOT_FOUND) {
        printf("tokenizer none\n");
        pyffi_error_free(err);
    } else {
        check(ts, &err, "loading the tokenizer");
        const char *text = "The Python";
        int32_t ids[64];
        size_t n_ids = 0;
        check(pyffi_tokenizer_encode(tok, text, strlen(text), true, false, false, ids, 64, &n_ids, &err), &err,
              "encoding");
        printf("prompt_ids");
        for (size_t i = 0; i < n_ids; i++) printf(" %d", ids[i]);
        printf("\n");
        stream_state s = {.n = 0, .text_len = 0};
        check(pyffi_detokenizer_new(tok, true, &s.detok, &err), &err, "creating a detokenizer");
        pyffi_sampling_params greedy = pyffi_sampling_default_params();
        greedy.temperature = 0;
        check(pyffi_generate(session, ids, n_ids, &greedy, 24, out, 24, &n_out, &finish, on_token, &s, &err), &err,
              "generating text");
        size_t len = 0;
        if (pyffi_detokenizer_flush(s.detok, s.text + s.text_len, sizeof s.text - s.text_len, &len, NULL) == PYFFI_OK)
            s.text_len += len - 1;
        printf("completion:\n%.*s\n", (int)s.text_len, s.text);
        pyffi_detokenizer_free(s.detok);
        pyffi_tokenizer_free(tok);
    }

    free(logits);
    pyffi_session_free(session);
    pyffi_model_free(model);
    return st == PYFFI_OUT_OF_RANGE ? 0 : 1;
}
