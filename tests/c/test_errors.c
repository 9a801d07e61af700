/*
 * Every error path of the C ABI: each bad call must return the right status
 * and a message that names the problem, write nothing it should not, and
 * leave the handles usable. Prints one line per check and a closing
 * "N passed, M failed" line; exits non-zero on any failure.
 *
 *   ./test_errors MODEL_DIR TOKENIZER_DIR
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pyffi.h"

static int passed, failed;

static void expect(int ok, const char *what) {
    printf("%s - %s\n", ok ? "ok" : "not ok", what);
    if (ok) passed++; else failed++;
}

/* The call returned `want`, its error carries the same code, and the message
 * contains `needle`. Frees the error. */
static void expect_error(pyffi_status got, pyffi_error *err, pyffi_status want, const char *needle,
                         const char *what) {
    int ok = got == want && err != NULL && pyffi_error_code(err) == want &&
             strstr(pyffi_error_message(err), needle) != NULL;
    if (!ok)
        fprintf(stderr, "  %s: got %s (%s), want %s mentioning '%s'\n", what, pyffi_status_name(got),
                err ? pyffi_error_message(err) : "no error object", pyffi_status_name(want), needle);
    expect(ok, what);
    pyffi_error_free(err);
}

static const char *CONFIG =
    "{\"model_type\": \"llama\", \"vocab_size\": 32, \"hidden_size\": 16, \"intermediate_size\": 24,"
    " \"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 1,"
    " \"max_position_embeddings\": 64}";

/* A streaming callback that asks to stop after two tokens. */
static bool stop_after_two(void *user_data, int32_t token) {
    (void)token;
    int *count = user_data;
    return ++*count < 2;
}

static bool stop_progress(void *user_data, size_t done, size_t total, const char *tensor) {
    (void)user_data;
    (void)total;
    (void)tensor;
    return done < 2;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL_DIR TOKENIZER_DIR\n", argv[0]);
        return 2;
    }
    pyffi_error *err = NULL;
    pyffi_status st;

    /* Files and configs. */
    pyffi_model *model = NULL;
    st = pyffi_model_load("/nonexistent/model", &model, &err);
    expect_error(st, err, PYFFI_NOT_FOUND, "/nonexistent/model", "missing model folder is NOT_FOUND");
    expect(model == NULL, "failed load leaves the out handle untouched");
    pyffi_config *cfg = NULL;
    st = pyffi_config_load("/nonexistent/config.json", &cfg, &err);
    expect_error(st, err, PYFFI_NOT_FOUND, "config.json", "missing config is NOT_FOUND");
    st = pyffi_config_from_json("{not json", &cfg, &err);
    expect_error(st, err, PYFFI_INVALID_CONFIG, "JSON", "malformed JSON is INVALID_CONFIG");
    st = pyffi_config_from_json("{\"model_type\": \"llama\", \"vocab_size\": 8}", &cfg, &err);
    expect_error(st, err, PYFFI_INVALID_CONFIG, "hidden_size", "missing field is named");
    st = pyffi_config_from_json("{\"model_type\": \"gpt2\"}", &cfg, &err);
    expect_error(st, err, PYFFI_UNSUPPORTED, "gpt2", "unknown architecture is UNSUPPORTED");
    st = pyffi_config_from_json(NULL, &cfg, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "json", "NULL string is INVALID_ARGUMENT");
    st = pyffi_config_from_json(CONFIG, NULL, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "out", "NULL out-param is INVALID_ARGUMENT");
    expect(pyffi_config_from_json("{", &cfg, NULL) == PYFFI_INVALID_CONFIG, "err may be NULL");

    /* The buffer rule. */
    st = pyffi_config_from_json(CONFIG, &cfg, &err);
    expect(st == PYFFI_OK && err == NULL, "valid config parses and clears err");
    size_t need = 0;
    char small[4];
    st = pyffi_config_to_json(cfg, small, sizeof small, &need, &err);
    expect_error(st, err, PYFFI_BUFFER_TOO_SMALL, "needed", "small string buffer is BUFFER_TOO_SMALL");
    expect(need > sizeof small, "the size needed is reported");
    char *json = malloc(need);
    expect(pyffi_config_to_json(cfg, json, need, &need, &err) == PYFFI_OK && strlen(json) + 1 == need,
           "a buffer of the reported size is enough");
    free(json);

    /* Weights set by the caller. */
    st = pyffi_model_new(cfg, &model, &err);
    expect(st == PYFFI_OK, "model_new from a config");
    float w[16 * 32];
    memset(w, 0, sizeof w);
    int64_t shape[2] = {32, 16};
    st = pyffi_model_set_tensor(model, "model.embed_tokens.weight", PYFFI_DTYPE_F32, shape, 2, w, sizeof w, &err);
    expect(st == PYFFI_OK, "set_tensor with the right name and shape");
    st = pyffi_model_set_tensor(model, "model.layers.9.mlp.up_proj.weight", PYFFI_DTYPE_F32, shape, 2, w,
                                sizeof w, &err);
    expect_error(st, err, PYFFI_INVALID_WEIGHTS, "model.layers.9.mlp.up_proj.weight", "unknown tensor name");
    int64_t wrong[2] = {16, 32};
    st = pyffi_model_set_tensor(model, "model.embed_tokens.weight", PYFFI_DTYPE_F32, wrong, 2, w, sizeof w, &err);
    expect_error(st, err, PYFFI_INVALID_WEIGHTS, "shape", "wrong shape");
    st = pyffi_model_set_tensor(model, "model.embed_tokens.weight", PYFFI_DTYPE_F32, shape, 2, w, 100, &err);
    expect_error(st, err, PYFFI_INVALID_WEIGHTS, "bytes", "data size that does not match the shape");
    st = pyffi_model_set_tensor(model, "model.embed_tokens.weight", 77, shape, 2, w, sizeof w, &err);
    expect_error(st, err, PYFFI_INVALID_WEIGHTS, "dtype", "unknown dtype code");
    int64_t negative[2] = {-32, 16};
    st = pyffi_model_set_tensor(model, "model.embed_tokens.weight", PYFFI_DTYPE_F32, negative, 2, w, sizeof w,
                                &err);
    expect_error(st, err, PYFFI_INVALID_WEIGHTS, "negative", "negative dimension");

    /* Sessions and forward. */
    pyffi_session_params sp = pyffi_session_default_params();
    sp.n_ctx = 8;
    pyffi_session *session = NULL;
    pyffi_session_params bad_sp = sp;
    bad_sp.size = 3;
    st = pyffi_session_new(model, &bad_sp, &session, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "size", "params with a bad size field");
    bad_sp = sp;
    bad_sp.kv_type = 7;
    st = pyffi_session_new(model, &bad_sp, &session, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "kv_type", "unknown kv_type is INVALID_ARGUMENT");
    st = pyffi_model_quantize(model, "q3_xs", &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "q3_xs", "unknown block format for model_quantize");
    st = pyffi_model_quantize(NULL, "q8_0", &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "model", "NULL model for model_quantize");
    st = pyffi_session_new(model, &sp, &session, &err);
    expect(st == PYFFI_OK && pyffi_session_n_ctx(session) == 8, "session with n_ctx 8");
    st = pyffi_model_quantize(model, "q8_0", &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "session", "no quantizing while a session uses the model");
    st = pyffi_model_set_tensor(model, "model.embed_tokens.weight", PYFFI_DTYPE_F32, shape, 2, w, sizeof w, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "session", "weights are immutable while a session uses them");

    float logits[32 * 10];
    size_t n_logits = 0;
    const int32_t toks[] = {1, 2, 3};
    const uint32_t len3[] = {3};
    st = pyffi_forward(session, toks, len3, 1, NULL, false, logits, 32 * 3, &n_logits, &err);
    expect(st == PYFFI_OK && n_logits == 32 * 3 && pyffi_session_cached_len(session, 0) == 3, "valid forward");
    st = pyffi_forward(session, toks, len3, 1, NULL, false, logits, 10, &n_logits, &err);
    expect_error(st, err, PYFFI_BUFFER_TOO_SMALL, "96", "small logits buffer");
    expect(n_logits == 96, "forward reports the floats needed");
    const int32_t out_of_vocab[] = {1, 32, 3};
    const uint32_t start3[] = {3};
    st = pyffi_forward(session, out_of_vocab, len3, 1, start3, false, logits, 96, &n_logits, &err);
    expect_error(st, err, PYFFI_OUT_OF_RANGE, "32", "token id past the vocabulary");
    expect(pyffi_session_cached_len(session, 0) == 3, "a rejected forward leaves the KV cache as it was");
    const int32_t negative_tok[] = {-1};
    const uint32_t len1[] = {1};
    st = pyffi_forward(session, negative_tok, len1, 1, NULL, true, logits, 32, &n_logits, &err);
    expect_error(st, err, PYFFI_OUT_OF_RANGE, "-1", "negative token id");
    const int32_t nine[] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    const uint32_t len9[] = {9};
    st = pyffi_forward(session, nine, len9, 1, NULL, true, logits, 32, &n_logits, &err);
    expect_error(st, err, PYFFI_OUT_OF_RANGE, "n_ctx", "sequence longer than n_ctx");
    const uint32_t start6[] = {6};
    st = pyffi_forward(session, toks, len3, 1, start6, true, logits, 32, &n_logits, &err);
    expect_error(st, err, PYFFI_OUT_OF_RANGE, "start_pos", "start_pos past the cached positions");
    const uint32_t len0[] = {0};
    st = pyffi_forward(session, toks, len0, 1, NULL, true, logits, 32, &n_logits, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "empty", "empty sequence");
    st = pyffi_forward(session, toks, len3, 0, NULL, true, logits, 32, &n_logits, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "no sequences", "batch of zero sequences");
    st = pyffi_forward(session, NULL, len3, 1, NULL, true, logits, 32, &n_logits, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "tokens", "NULL tokens");
    st = pyffi_forward(NULL, toks, len3, 1, NULL, true, logits, 32, &n_logits, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "session", "NULL session");
    st = pyffi_forward(session, toks, len3, 1, start3, true, logits, 32, &n_logits, &err);
    expect(st == PYFFI_OK && pyffi_session_cached_len(session, 0) == 6, "the session still works after errors");

    /* Profiling. */
    pyffi_profile prof;
    memset(&prof, 0xff, sizeof prof);
    st = pyffi_session_take_profile(session, &prof, &err);
    expect(st == PYFFI_OK && prof.forwards == 0 && prof.forward_ns == 0, "profiling is off at first");
    st = pyffi_session_set_profiling(session, true, &err);
    expect(st == PYFFI_OK, "turn profiling on");
    st = pyffi_forward(session, toks, len3, 1, start3, true, logits, 32, &n_logits, &err);
    expect(st == PYFFI_OK, "a forward pass while profiling");
    st = pyffi_session_take_profile(session, &prof, &err);
    expect(st == PYFFI_OK && prof.forwards == 1 && prof.tokens == 3 && prof.forward_ns > 0 &&
               prof.wait_ns <= prof.job_ns && prof.job_ns <= prof.forward_ns,
           "the pass is counted");
    st = pyffi_session_take_profile(session, NULL, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "out", "NULL profile out");
    st = pyffi_session_take_profile(NULL, &prof, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "session", "the profile of a NULL session");
    st = pyffi_session_set_profiling(NULL, true, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "session", "profiling a NULL session");
    st = pyffi_session_set_profiling(session, false, &err);
    expect(st == PYFFI_OK && pyffi_session_cached_len(session, 0) == 6, "profiling off again");

    /* Generate. */
    pyffi_sampling_params p = pyffi_sampling_default_params();
    int32_t out[8];
    size_t n_out = 99;
    pyffi_finish_reason finish;
    st = pyffi_generate(session, toks, 0, &p, 4, out, 8, &n_out, &finish, NULL, NULL, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "prompt", "empty prompt");
    expect(n_out == 0, "a failed generate reports 0 tokens");
    pyffi_sampling_params bad_p = p;
    bad_p.temperature = -1.0f;
    st = pyffi_generate(session, toks, 3, &bad_p, 4, out, 8, &n_out, &finish, NULL, NULL, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "temperature", "negative temperature");
    bad_p = p;
    bad_p.size = sizeof(pyffi_sampling_params) + 64;
    st = pyffi_generate(session, toks, 3, &bad_p, 4, out, 8, &n_out, &finish, NULL, NULL, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "size", "params larger than the library knows");
    bad_p = p;
    bad_p.n_stop_tokens = 2;
    bad_p.stop_tokens = NULL;
    st = pyffi_generate(session, toks, 3, &bad_p, 4, out, 8, &n_out, &finish, NULL, NULL, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "stop_tokens", "NULL stop_tokens with a count");
    st = pyffi_generate(session, toks, 3, &p, 9, out, 8, &n_out, &finish, NULL, NULL, &err);
    expect_error(st, err, PYFFI_BUFFER_TOO_SMALL, "max_new_tokens", "output smaller than max_new_tokens");
    const int32_t long_prompt[] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    st = pyffi_generate(session, long_prompt, 9, &p, 2, out, 8, &n_out, &finish, NULL, NULL, &err);
    expect_error(st, err, PYFFI_OUT_OF_RANGE, "n_ctx", "prompt longer than n_ctx");
    int count = 0;
    p.stop_at_eos = false;
    p.seed = 7;
    st = pyffi_generate(session, toks, 3, &p, 5, out, 8, &n_out, &finish, stop_after_two, &count, &err);
    expect(st == PYFFI_OK && n_out == 2 && finish == PYFFI_FINISH_CANCELLED, "the callback can stop generation");
    st = pyffi_generate(session, toks, 3, &p, 4, NULL, 4, &n_out, &finish, NULL, NULL, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "out_tokens", "NULL output array");

    /* Generation one token per call (pyffi_generation): pyffi_generate's tokens. */
    int32_t whole[8];
    st = pyffi_generate(session, toks, 3, &p, 4, whole, 8, &n_out, &finish, NULL, NULL, &err);
    expect(st == PYFFI_OK && n_out == 4 && finish == PYFFI_FINISH_LENGTH, "generate 4 tokens with a seed");
    pyffi_generation *gen = (pyffi_generation *)&p; /* not a handle: a failed call must clear it */
    st = pyffi_generation_new(NULL, toks, 3, &p, 4, &gen, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "session", "generation_new with a NULL session");
    expect(gen == NULL, "a failed generation_new leaves NULL in *out");
    st = pyffi_generation_new(session, toks, 0, &p, 4, &gen, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "prompt", "generation_new with an empty prompt");
    st = pyffi_generation_new(session, long_prompt, 9, &p, 4, &gen, &err);
    expect_error(st, err, PYFFI_OUT_OF_RANGE, "n_ctx", "generation_new with a prompt longer than n_ctx");
    bad_p = p;
    bad_p.temperature = -1.0f;
    st = pyffi_generation_new(session, toks, 3, &bad_p, 4, &gen, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "temperature", "generation_new with a negative temperature");
    st = pyffi_generation_new(session, toks, 3, &p, 4, NULL, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "out", "generation_new with a NULL out-param");
    st = pyffi_generation_new(session, toks, 3, &p, 4, &gen, &err);
    expect(st == PYFFI_OK && gen != NULL && err == NULL, "generation_new");
    int32_t next_tok = 0;
    size_t n_gen = 0;
    int same = 1;
    while ((st = pyffi_generation_next(gen, &next_tok, &finish, &err)) == PYFFI_OK && next_tok != PYFFI_TOKEN_NONE) {
        same &= n_gen < 4 && next_tok == whole[n_gen];
        n_gen++;
    }
    expect(st == PYFFI_OK && same && n_gen == 4 && finish == PYFFI_FINISH_LENGTH &&
               pyffi_generation_n_tokens(gen) == 4,
           "generation_next gives generate's tokens, then PYFFI_TOKEN_NONE and why");
    st = pyffi_generation_next(gen, &next_tok, NULL, &err);
    expect(st == PYFFI_OK && next_tok == PYFFI_TOKEN_NONE, "an ended generation stays ended (finish may be NULL)");
    st = pyffi_generation_next(gen, NULL, &finish, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "token", "generation_next with a NULL token");
    next_tok = 5;
    st = pyffi_generation_next(NULL, &next_tok, &finish, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "generation", "generation_next with a NULL generation");
    expect(next_tok == PYFFI_TOKEN_NONE && pyffi_generation_n_tokens(NULL) == 0, "a failed next gives no token");
    pyffi_generation_free(gen);
    st = pyffi_generation_new(session, toks, 3, &p, 4, &gen, &err);
    st = pyffi_generation_next(gen, &next_tok, &finish, &err);
    expect(st == PYFFI_OK && next_tok == whole[0], "a second generation's first token");
    st = pyffi_forward(session, toks, len3, 1, NULL, false, logits, 32 * 3, &n_logits, &err);
    st = pyffi_generation_next(gen, &next_tok, &finish, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "another call", "a call on the session between two tokens ends the generation");
    st = pyffi_generation_next(gen, &next_tok, &finish, &err);
    expect(st == PYFFI_OK && next_tok == PYFFI_TOKEN_NONE && finish == PYFFI_FINISH_CANCELLED, "... as cancelled");
    pyffi_generation_free(gen);
    pyffi_generation_free(NULL);

    /* A real model folder from disk still loads after all of the above. */
    pyffi_model *real = NULL;
    st = pyffi_model_load(argv[1], &real, &err);
    expect(st == PYFFI_OK && pyffi_model_vocab_size(real) > 0, "a fixture model loads");

    /* Tokenizers. */
    pyffi_tokenizer *tok = NULL;
    st = pyffi_tokenizer_load("/nonexistent/tok", &tok, &err);
    expect_error(st, err, PYFFI_NOT_FOUND, "/nonexistent/tok", "missing tokenizer is NOT_FOUND");
    st = pyffi_tokenizer_load(argv[1], &tok, &err);
    expect_error(st, err, PYFFI_NOT_FOUND, "tokenizer", "a folder without a tokenizer is NOT_FOUND");
    st = pyffi_tokenizer_load(argv[2], &tok, &err);
    expect(st == PYFFI_OK, "a tokenizer loads");
    int32_t ids[4];
    size_t n_ids = 0;
    st = pyffi_tokenizer_encode(tok, "ab\xff", 3, false, false, false, ids, 4, &n_ids, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "UTF-8", "invalid UTF-8 text");
    const char *long_text = "The Python documentation";
    st = pyffi_tokenizer_encode(tok, long_text, strlen(long_text), true, false, false, ids, 1, &n_ids, &err);
    expect_error(st, err, PYFFI_BUFFER_TOO_SMALL, "needed", "small ids buffer");
    expect(n_ids > 1, "encode reports the ids needed");
    st = pyffi_tokenizer_encode(tok, "", 0, false, false, false, ids, 4, &n_ids, &err);
    expect(st == PYFFI_OK && n_ids == 0, "empty text gives no ids");
    const int32_t bad_ids[] = {1, 99999};
    char text[64];
    size_t text_len = 0;
    st = pyffi_tokenizer_decode(tok, bad_ids, 2, true, text, sizeof text, &text_len, &err);
    expect_error(st, err, PYFFI_OUT_OF_RANGE, "99999", "decoding an id past the vocabulary");
    st = pyffi_tokenizer_apply_chat_template(tok, "[{\"role\": ", true, "{{ x }}", NULL, text, sizeof text,
                                             &text_len, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "JSON", "malformed messages JSON");
    st = pyffi_tokenizer_apply_chat_template(tok, "[]", true, "{{ raise_exception('nope') }}", NULL, text,
                                             sizeof text, &text_len, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "nope", "a template's raise_exception comes back as the message");
    pyffi_detokenizer *detok = NULL;
    st = pyffi_detokenizer_new(tok, true, &detok, &err);
    expect(st == PYFFI_OK, "detokenizer");
    st = pyffi_detokenizer_feed(detok, 555, text, 1, &text_len, &err);
    expect_error(st, err, PYFFI_BUFFER_TOO_SMALL, "needed", "small detokenizer buffer");
    st = pyffi_detokenizer_feed(detok, 555, text, sizeof text, &text_len, &err);
    expect(st == PYFFI_OK && text_len > 1 && strlen(text) == text_len - 1, "the token was not lost: retry works");
    st = pyffi_detokenizer_feed(detok, -5, text, sizeof text, &text_len, &err);
    expect_error(st, err, PYFFI_OUT_OF_RANGE, "vocabulary", "feeding an invalid id");
    pyffi_detokenizer_free(detok);
    pyffi_detokenizer_free(NULL);
    pyffi_tokenizer_free(tok);
    pyffi_tokenizer_free(NULL);

    /* Frees accept NULL; getters accept NULL. */
    pyffi_model_free(NULL);
    pyffi_session_free(NULL);
    pyffi_config_free(NULL);
    pyffi_error_free(NULL);
    expect(pyffi_model_vocab_size(NULL) == 0 && pyffi_session_n_ctx(NULL) == 0 &&
               strcmp(pyffi_error_message(NULL), "") == 0,
           "NULL handles are safe everywhere");

    pyffi_session_free(session);
    pyffi_model_free(model); /* freeing the model after its session */

    /* Quantization. */
    float row[64];
    for (int i = 0; i < 64; i++) row[i] = (float)(i - 32) / 7.0f;
    uint8_t blocks[68];
    expect(pyffi_quantized_size("q8_0", 64) == 68 && pyffi_quantized_size("q4_k", 64) == 0 &&
               pyffi_quantized_size("nope", 64) == 0 && pyffi_quantized_size(NULL, 64) == 0,
           "quantized_size: 0 for a bad type or length");
    st = pyffi_quantize_row("q8_0", row, 64, blocks, sizeof blocks, &err);
    expect(st == PYFFI_OK, "quantize a row to q8_0");
    float back[64];
    st = pyffi_dequantize_row("q8_0", blocks, sizeof blocks, back, 64, &err);
    expect(st == PYFFI_OK && back[63] > 4.0f && back[0] < -4.0f, "dequantize it back");
    st = pyffi_quantize_row("q8_0", row, 64, blocks, 10, &err);
    expect_error(st, err, PYFFI_BUFFER_TOO_SMALL, "68", "small dst is BUFFER_TOO_SMALL");
    st = pyffi_quantize_row("q4_k", row, 64, blocks, sizeof blocks, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "256", "a length that is not whole blocks");
    st = pyffi_quantize_row("q8_0", NULL, 64, blocks, sizeof blocks, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "src", "NULL src");
    st = pyffi_dequantize_row("q8_0", blocks, 30, back, 64, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "bytes", "src of the wrong size");
    st = pyffi_quantize_model("/nonexistent/model", "/tmp/pyffi-never-written.gguf", "q8_0", NULL, NULL, &err);
    expect_error(st, err, PYFFI_NOT_FOUND, "/nonexistent/model", "quantize a missing source");
    st = pyffi_quantize_model(argv[1], "/tmp/pyffi-never-written.gguf", "q9_9", NULL, NULL, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "q9_9", "quantize to an unknown type");
    st = pyffi_quantize_model(argv[1], NULL, "q8_0", NULL, NULL, &err);
    expect_error(st, err, PYFFI_INVALID_ARGUMENT, "dst", "NULL dst");
    st = pyffi_quantize_model(argv[1], "/nonexistent/dir/x.gguf", "q8_0", NULL, NULL, &err);
    expect_error(st, err, PYFFI_NOT_FOUND, "/nonexistent/dir/x.gguf", "a destination folder that does not exist");
    st = pyffi_quantize_model(argv[1], "/tmp/pyffi-never-written.gguf", "q8_0", stop_progress, NULL, &err);
    expect_error(st, err, PYFFI_CANCELLED, "cancelled", "a progress callback that says stop is CANCELLED");
    FILE *f = fopen("/tmp/pyffi-never-written.gguf", "rb");
    expect(f == NULL, "a cancelled quantization writes nothing");
    if (f) fclose(f);
    pyffi_model_free(real);
    pyffi_config_free(cfg);
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
