"""Property tests: the engine on random small models against tests/reference.py
(itself checked against transformers in test_reference.py), and the engine
against itself (KV cache, batching, last_only, seeds, threads)."""

import os
import threading

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import pyffi
from reference import expected_shapes, random_weights, reference_forward, rel_err

N_CTX = 64
MAX_TOKENS = 12

# PYFFI_PROPERTY_SCALE=10 runs ten times the examples (for a longer search).
SCALE = float(os.environ.get("PYFFI_PROPERTY_SCALE", "1"))


def examples(n):
    return max(1, int(n * SCALE))


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------------------
# Strategies


@st.composite
def rope_scalings(draw):
    kind = draw(st.sampled_from([None, "linear", "llama3"]))
    if kind is None:
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": draw(st.floats(1.0, 8.0))}
    low = draw(st.floats(0.5, 2.0))
    return {
        "rope_type": "llama3",
        "factor": draw(st.floats(1.5, 16.0)),
        "low_freq_factor": low,
        "high_freq_factor": low + draw(st.floats(0.5, 4.0)),
        # short, so that all three frequency bands (high / medium / low) occur
        # for our small head dims and positions
        "original_max_position_embeddings": draw(st.integers(4, 64)),
    }


@st.composite
def configs(draw):
    model_type = draw(st.sampled_from(["llama", "qwen2", "phi3", "mistral"]))
    n_kv = draw(st.integers(1, 4))
    n_heads = n_kv * draw(st.integers(1, 3))
    partial = 1.0
    if model_type == "phi3":
        partial = draw(st.sampled_from([0.5, 1.0]))
    # head_dim: given explicitly (independent of hidden_size), or left None
    # (then hidden_size / num_attention_heads, so hidden_size is made a multiple)
    derived = draw(st.booleans())
    step = 4 if partial == 0.5 else 2  # keep int(head_dim * partial) even: see reference.rotary_dim_of
    most = max(1, 64 // (n_heads * step)) if derived else 16 // step
    head_dim = step * draw(st.integers(1, most))
    hidden = n_heads * head_dim if derived else draw(st.integers(4, 64))
    kw = dict(
        model_type=model_type,
        hidden_size=hidden,
        intermediate_size=draw(st.integers(4, 96)),
        num_hidden_layers=draw(st.integers(1, 3)),
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        head_dim=None if derived else head_dim,
        vocab_size=draw(st.integers(8, 64)),
        max_seq_len=N_CTX,
        rms_norm_eps=draw(st.sampled_from([1e-5, 1e-6])),
        rope_theta=draw(st.sampled_from([100.0, 10000.0, 500000.0, 1e6])),
        rope_scaling=draw(rope_scalings()),
        partial_rotary_factor=partial,
        tie_word_embeddings=draw(st.booleans()),
    )
    if model_type == "llama":
        kw["attention_bias"] = draw(st.booleans())
        kw["mlp_bias"] = draw(st.booleans())
    if model_type in ("mistral", "phi3"):
        kw["sliding_window"] = draw(st.one_of(st.none(), st.integers(1, MAX_TOKENS)))
    return pyffi.ModelArgs(**kw)


def token_lists(vocab, min_size=1, max_size=MAX_TOKENS):
    return st.lists(st.integers(0, vocab - 1), min_size=min_size, max_size=max_size)


@st.composite
def models(draw, n_threads=None):
    """(config, weights, loaded Transformer)."""
    config = draw(configs())
    weights = random_weights(config, draw(st.integers(0, 2**32 - 1)))
    model = pyffi.Transformer(config, n_ctx=N_CTX, n_threads=n_threads)
    model.load_state_dict(weights)
    return config, weights, model


def describe(config, n_tokens):
    """Hypothesis events (see --hypothesis-show-statistics): which features ran."""
    event(f"model_type={config.model_type}")
    event(f"rope_scaling={(config.rope_scaling or {}).get('rope_type')}")
    if config.num_key_value_heads != config.num_attention_heads:
        event("grouped-query attention")
    if config.head_dim is None:
        event("head_dim from hidden_size")
    elif config.head_dim * config.num_attention_heads != config.hidden_size:
        event("head_dim independent of hidden_size")
    if config.partial_rotary_factor != 1.0:
        event("partial rotary")
    if config.sliding_window is not None and config.sliding_window < n_tokens:
        event("sliding window active")
    if config.attention_bias or config.mlp_bias:
        event("llama biases")
    if config.tie_word_embeddings:
        event("tied embeddings")


# --------------------------------------------------------------------------
# Against the reference


@settings(max_examples=examples(1000), **SETTINGS)
@given(data=st.data())
def test_forward_matches_reference(data):
    config, weights, model = data.draw(models())
    assert model.tensor_specs() == expected_shapes(config)
    tokens = data.draw(token_lists(config.vocab_size), label="tokens")
    describe(config, len(tokens))
    ours = model.forward([tokens])[0]
    ref = reference_forward(config, weights, tokens)
    assert ours.shape == ref.shape
    assert np.isfinite(ours).all()
    err = rel_err(ours, ref)
    assert err <= 1e-4, f"engine vs reference: max|diff|/max|ref| = {err:.3g}"


# --------------------------------------------------------------------------
# The engine against itself


@settings(max_examples=examples(300), **SETTINGS)
@given(data=st.data())
def test_incremental_decoding_matches_full_forward(data):
    config, _, model = data.draw(models())
    tokens = data.draw(token_lists(config.vocab_size, min_size=2), label="tokens")
    k = data.draw(st.integers(1, len(tokens) - 1), label="prefix_len")
    full = model.forward([tokens])[0]
    session = model.new_session()
    first = session.forward([tokens[:k]])[0]
    assert rel_err(first, full[:k]) <= 1e-5
    steps = []
    for pos in range(k, len(tokens)):
        out = session.forward([[tokens[pos]]], start_pos=pos)
        assert out.shape == (1, 1, config.vocab_size)
        steps.append(out[0, 0])
        assert session.cached_len() == pos + 1
    err = rel_err(np.stack(steps), full[k:])
    assert err <= 1e-5, f"KV-cache decoding vs full forward: {err:.3g}"


@settings(max_examples=examples(300), **SETTINGS)
@given(data=st.data())
def test_ragged_batch_matches_each_sequence_alone(data):
    config, _, model = data.draw(models())
    seqs = data.draw(st.lists(token_lists(config.vocab_size), min_size=2, max_size=3), label="seqs")
    batch = model.forward(seqs)
    width = max(map(len, seqs))
    assert batch.shape == (len(seqs), width, config.vocab_size)
    for i, s in enumerate(seqs):
        alone = model.forward([s])[0]
        err = rel_err(batch[i, : len(s)], alone)
        assert err <= 1e-5, f"row {i} of the batch vs alone: {err:.3g}"
        assert (batch[i, len(s):] == 0).all(), f"padding of row {i} is not zero"


@settings(max_examples=examples(300), **SETTINGS)
@given(data=st.data())
def test_last_only_is_last_row(data):
    config, _, model = data.draw(models())
    seqs = data.draw(st.lists(token_lists(config.vocab_size), min_size=1, max_size=3), label="seqs")
    full = model.forward(seqs)
    last = model.forward(seqs, last_only=True)
    assert last.shape == (len(seqs), 1, config.vocab_size)
    for i, s in enumerate(seqs):
        err = rel_err(last[i, 0], full[i, len(s) - 1])
        assert err <= 1e-5, f"last_only row {i} vs the full output's last row: {err:.3g}"


sampling = st.fixed_dictionaries({
    "top_k": st.one_of(st.none(), st.integers(1, 64)),
    "top_p": st.one_of(st.none(), st.floats(0.05, 1.0)),
    "min_p": st.one_of(st.none(), st.floats(0.0, 0.5)),
    "seed": st.integers(0, 2**64 - 2),
})


@settings(max_examples=examples(250), **SETTINGS)
@given(data=st.data())
def test_seed_and_thread_count_determinism(data):
    config, weights, model = data.draw(models(n_threads=1))
    other = pyffi.Transformer(config, n_ctx=N_CTX, n_threads=2)
    other.load_state_dict(weights)
    prompt = data.draw(token_lists(config.vocab_size), label="prompt")
    n_new = data.draw(st.integers(1, 16), label="max_gen_len")
    kw = dict(data.draw(sampling, label="sampling"), temperature=0.9, max_gen_len=n_new, stop_tokens=[])

    first = model.generate(prompt, **kw)
    assert len(first) == n_new
    assert all(0 <= t < config.vocab_size for t in first)
    assert model.generate(prompt, **kw) == first, "same seed, same session: different tokens"
    assert other.generate(prompt, **kw) == first, "1 thread vs 2 threads: different tokens"
    s2 = model.new_session(n_threads=2)
    assert s2.generate(prompt, **kw) == first, "new_session(n_threads=2): different tokens"

    seqs = [prompt + first, prompt]
    ref = model.forward(seqs)
    np.testing.assert_array_equal(other.forward(seqs), ref)
    np.testing.assert_array_equal(s2.forward(seqs), ref)


@settings(max_examples=examples(150), **SETTINGS)
@given(data=st.data())
def test_streamed_tokens_are_generates_tokens(data):
    """stream=True (one C step per token, pyffi_generation) gives generate's
    tokens for any sampling, limit and stop tokens, and ends for the reason
    the limits say; stopping it after k tokens keeps those k and leaves the
    session as good as new."""
    config, _, model = data.draw(models())
    vocab = config.vocab_size
    prompt = data.draw(token_lists(vocab), label="prompt")
    max_new = data.draw(st.integers(0, N_CTX + 4), label="max_gen_len")
    stops = data.draw(st.lists(st.integers(0, vocab - 1), max_size=3), label="stop_tokens")
    kw = dict(data.draw(sampling, label="sampling"), max_gen_len=max_new, stop_tokens=stops,
              temperature=data.draw(st.sampled_from([0.0, 0.9]), label="temperature"))
    plain = model.generate(prompt, **kw)
    # The last token may sit at position n_ctx, which is never fed.
    limit = min(max_new, N_CTX - len(prompt) + 1)
    assert len(plain) <= limit and not set(plain) & set(stops)
    it = model.generate(prompt, stream=True, **kw)
    assert list(it) == plain
    assert it.finish_reason == ("length" if len(plain) == limit else "stop")

    k = data.draw(st.integers(1, max(1, len(plain))), label="taken")
    it = model.generate(prompt, stream=True, **kw)
    taken = [t for _, t in zip(range(k), it)]
    it.close()
    assert taken == plain[:k]
    assert it.finish_reason == ("cancelled" if plain else "length" if limit == 0 else "stop")
    assert list(it) == []
    assert model.generate(prompt, **kw) == plain


@settings(max_examples=examples(100), **SETTINGS)
@given(data=st.data())
def test_two_python_threads_two_sessions(data):
    config, _, model = data.draw(models())
    a = data.draw(token_lists(config.vocab_size, min_size=4), label="a")
    b = data.draw(token_lists(config.vocab_size, min_size=4), label="b")
    kw = dict(data.draw(sampling, label="sampling"), temperature=0.9, max_gen_len=8, stop_tokens=[])
    sa, sb = model.new_session(), model.new_session()
    # one at a time
    expect = {
        "a": (sa.forward([a, b]), sa.generate(a, **kw)),
        "b": (sb.forward([b]), sb.generate(b, **kw)),
    }
    rounds = 8
    barrier = threading.Barrier(2)
    got = {"a": [], "b": []}
    errors = []

    def worker(key, session, fwd_in, prompt):
        try:
            barrier.wait()
            for _ in range(rounds):
                got[key].append((session.forward(fwd_in), session.generate(prompt, **kw)))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=("a", sa, [a, b], a)),
               threading.Thread(target=worker, args=("b", sb, [b], b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for key in ("a", "b"):
        assert len(got[key]) == rounds
        for logits, toks in got[key]:
            np.testing.assert_array_equal(logits, expect[key][0])
            assert toks == expect[key][1]


# Prompts and batches longer than one forward pass (the engine's UBATCH, 128
# tokens) go through in passes: rows of several passes, and runs of short rows.
LONG = 300


@settings(max_examples=examples(25), **SETTINGS)
@given(data=st.data())
def test_batches_longer_than_a_pass_match_the_reference(data):
    """Each row's prefix in one call, the rest continuing its KV slot in a
    second: both calls' rows against the reference."""
    config = data.draw(configs())
    weights = random_weights(config, data.draw(st.integers(0, 2**32 - 1)))
    model = pyffi.Transformer(config, n_ctx=LONG + 8)
    model.load_state_dict(weights)
    lengths = data.draw(st.lists(st.integers(2, LONG), min_size=1, max_size=3), label="lengths")
    cuts = [data.draw(st.integers(1, n - 1), label="cut") for n in lengths]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    seqs = [rng.integers(0, config.vocab_size, n).tolist() for n in lengths]
    heads = [s[:k] for s, k in zip(seqs, cuts)]
    tails = [s[k:] for s, k in zip(seqs, cuts)]
    for part in (heads, tails):
        if sum(map(len, part)) > 128:
            event("more than one pass")
        if max(map(len, part)) > 128:
            event("a row in pieces")
    session = model.new_session(n_seq_max=len(seqs))
    first = session.forward(heads)
    last = model.new_session(n_seq_max=len(seqs)).forward(heads, last_only=True)
    second = session.forward(tails, start_pos=cuts)
    for i, (s, k) in enumerate(zip(seqs, cuts)):
        ref = reference_forward(config, weights, s)
        got = np.concatenate([first[i, :k], second[i, : len(s) - k]])
        err = rel_err(got, ref)
        assert err <= 1e-4, f"row {i} ({len(s)} tokens, cut at {k}) vs reference: {err:.3g}"
        assert (first[i, k:] == 0).all() and (second[i, len(s) - k:] == 0).all(), f"padding of row {i}"
        assert rel_err(last[i, 0], first[i, k - 1]) <= 1e-5
        assert session.cached_len(i) == len(s)
