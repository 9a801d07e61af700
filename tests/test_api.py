"""The Python API: configs in both styles, state dicts, sessions, streaming,
stop tokens, threads, and the bundled CLI."""

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import pyffi
from conftest import REPO, golden, model_dir, rel_err


def test_config_old_and_new_styles():
    old = pyffi.ModelArgs.from_config_file(model_dir("tiny-llama") / "config.json")
    assert (old.hidden_size, old.num_key_value_heads, old.head_dim, old.rope_theta) == (64, 2, 16, 10000.0)
    assert old.torch_dtype == "float32" and old.tie_word_embeddings is False
    new = pyffi.ModelArgs.from_config_file(model_dir("tiny-llama-tied-mha"))
    assert (new.rope_theta, new.rms_norm_eps, new.tie_word_embeddings) == (500000.0, 1e-6, True)
    assert new.n_heads == new.n_kv_heads == 6 and new.dim == 96 and new.n_layers == 3
    assert pyffi.Config is pyffi.ModelArgs


def test_config_round_trips_through_dict():
    cfg = pyffi.ModelArgs.from_config_file(model_dir("tiny-qwen2"))
    assert pyffi.ModelArgs.from_dict(cfg.to_dict()) == cfg
    assert pyffi.ModelArgs.from_dict(cfg.to_hf_dict()) == cfg


def test_load_state_dict_equals_from_pretrained():
    path = model_dir("tiny-qwen2")
    g = golden("tiny-qwen2")
    with pyffi.Transformer.from_pretrained(path) as ref, \
            pyffi.Transformer(pyffi.ModelArgs.from_config_file(path)) as model:
        missing, unexpected = model.load_state_dict(load_file(path / "model.safetensors"))
        assert missing == [] and unexpected == []
        np.testing.assert_array_equal(model.forward([g["input_2"]]), ref.forward([g["input_2"]]))


def test_state_dict_in_float16_is_converted():
    path = model_dir("tiny-llama")
    weights = load_file(path / "model.safetensors")
    half = {k: v.astype(np.float16) for k, v in weights.items()}
    rounded = {k: v.astype(np.float32) for k, v in half.items()}
    a = pyffi.Transformer(pyffi.ModelArgs.from_config_file(path))
    b = pyffi.Transformer(pyffi.ModelArgs.from_config_file(path))
    a.load_state_dict(half)
    b.load_state_dict(rounded)
    np.testing.assert_array_equal(a.forward([[1, 2, 3]]), b.forward([[1, 2, 3]]))


def test_sharded_safetensors_folder(tmp_path):
    src = model_dir("tiny-llama")
    weights = load_file(src / "model.safetensors")
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for fname, keys in shards.items():
        save_file({k: weights[k] for k in keys}, tmp_path / fname)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    g = golden("tiny-llama")
    with pyffi.Transformer.from_pretrained(tmp_path) as model:
        assert rel_err(model.forward([g["input_3"]])[0], g["logits_3"]) <= 1e-4


def test_bfloat16_safetensors_on_disk(tmp_path):
    src = model_dir("tiny-llama")
    weights = load_file(src / "model.safetensors")
    # bfloat16 = the top 16 bits of a float32 (truncation here; exact either way).
    bf16 = {k: (v.view(np.uint32) >> 16).astype(np.uint16) for k, v in weights.items()}
    header = {k: {"dtype": "BF16", "shape": list(v.shape)} for k, v in bf16.items()}
    blob, offset = b"", 0
    for k in header:
        data = bf16[k].tobytes()
        header[k]["data_offsets"] = [offset, offset + len(data)]
        blob += data
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    (tmp_path / "model.safetensors").write_bytes(len(head).to_bytes(8, "little") + head + blob)
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    truncated = {k: ((v.view(np.uint32) >> 16) << 16).view(np.float32) for k, v in weights.items()}
    ref = pyffi.Transformer(pyffi.ModelArgs.from_config_file(src))
    ref.load_state_dict(truncated)
    with pyffi.Transformer.from_pretrained(tmp_path) as model:
        # Kept in bfloat16, computed as float32: the same bits, short and long prompts.
        for tokens in ([5, 6, 7], list(range(1, 40))):
            np.testing.assert_array_equal(model.forward([tokens]), ref.forward([tokens]))
    # Quantized while loading: from the same values as a float32 folder's.
    wide = tmp_path / "f32"
    wide.mkdir()
    save_file(truncated, wide / "model.safetensors")
    (wide / "config.json").write_text((src / "config.json").read_text())
    with pyffi.Transformer.from_pretrained(tmp_path, dtype="q8_0") as a, \
            pyffi.Transformer.from_pretrained(wide, dtype="q8_0") as b:
        np.testing.assert_array_equal(a.forward([[5, 6, 7]]), b.forward([[5, 6, 7]]))


def test_bfloat16_gguf_gives_the_bits_of_its_float32_values(tmp_path):
    """A BF16 GGUF's matrices stay in bfloat16 and are computed as float32:
    the logits of a float32 GGUF of the same values, bit for bit (a long
    prompt too, which takes the prefill's panel kernels)."""
    src = model_dir("tiny-llama")
    weights = load_file(src / "model.safetensors")
    truncated = {k: ((v.view(np.uint32) >> 16) << 16).view(np.float32) for k, v in weights.items()}
    hf = tmp_path / "hf"
    hf.mkdir()
    save_file(truncated, hf / "model.safetensors")
    (hf / "config.json").write_text((src / "config.json").read_text())
    pyffi.quantize(hf, tmp_path / "bf16.gguf", "bf16")
    pyffi.quantize(hf, tmp_path / "f32.gguf", "f32")
    assert (tmp_path / "bf16.gguf").stat().st_size < 0.6 * (tmp_path / "f32.gguf").stat().st_size
    with pyffi.Transformer.from_pretrained(tmp_path / "bf16.gguf") as a, \
            pyffi.Transformer.from_pretrained(tmp_path / "f32.gguf") as b:
        for tokens in ([5, 6, 7], list(range(1, 40))):
            np.testing.assert_array_equal(a.forward([tokens]), b.forward([tokens]))


def _bf16_rounded(v):
    """float32 values rounded to bfloat16 (to nearest, ties to even), as float32."""
    u = v.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32)


def test_from_pretrained_rounds_to_16_bits_when_asked():
    """dtype="f16" / "bf16" rounds a float32 checkpoint's matrices (norms stay
    float32): the logits of a float32 model holding the rounded values."""
    path = model_dir("tiny-llama")
    weights = load_file(path / "model.safetensors")
    for dtype, rounded in (("f16", lambda v: v.astype(np.float16).astype(np.float32)), ("bf16", _bf16_rounded)):
        want = {k: (v if v.ndim == 1 else rounded(v)) for k, v in weights.items()}
        assert any(not np.array_equal(want[k], weights[k]) for k in weights)  # the rounding does something
        ref = pyffi.Transformer(pyffi.ModelArgs.from_config_file(path))
        ref.load_state_dict(want)
        with pyffi.Transformer.from_pretrained(path, dtype=dtype.upper()) as model:
            for tokens in ([5, 6, 7], list(range(1, 40))):
                np.testing.assert_array_equal(model.forward([tokens]), ref.forward([tokens]), err_msg=dtype)


def test_forward_accepts_arrays_lists_and_ragged_batches():
    with pyffi.Transformer.from_pretrained(model_dir("tiny-llama")) as model:
        flat = model.forward([1, 2, 3])
        assert flat.shape == (1, 3, model.vocab_size) and flat.dtype == np.float32
        assert flat.flags.c_contiguous
        np.testing.assert_array_equal(model.forward(np.array([[1, 2, 3], [4, 5, 6]]))[0], flat[0])
        ragged = model.forward([[1, 2, 3], [4]])
        assert ragged.shape == (2, 3, model.vocab_size)
        assert not ragged[1, 1:].any()


def test_one_sequence_fast_path_equals_the_general_one():
    """forward's shortcut for one int32 array or list of ints with an int
    start gives exactly what the general path (a batch) gives."""
    with pyffi.Transformer.from_pretrained(model_dir("stories260K")) as model:
        seq = [1, 10, 20, 30]
        general = model.forward([seq])
        for tokens in (np.array(seq, np.int32), seq, np.array(seq, np.int64), np.array([seq], np.int32)[0]):
            np.testing.assert_array_equal(model.forward(tokens), general)
        last = model.forward(np.array(seq, np.int32), last_only=True)
        np.testing.assert_array_equal(last, general[:, -1:])
        step = model.forward(np.array([40], np.int32), start_pos=4, last_only=True)
        np.testing.assert_array_equal(step, model.forward([seq + [40]])[:, -1:])
        strided = np.array(seq * 2, np.int32)[::2]
        np.testing.assert_array_equal(model.forward(strided), model.forward([strided.tolist()]))


def test_one_token_calls_reuse_their_slots_safely():
    """The fast path reuses one error slot and length/start buffer per
    session: errors and successes alternate cleanly, a call that finds the
    slots taken (another thread's call) makes its own with the same result,
    and threads calling at once never share one."""
    with pyffi.Transformer.from_pretrained(model_dir("stories260K")) as model:
        s = model.new_session(n_ctx=8)
        want = model.forward([[1, 10, 20]])[:, -1:]
        for _ in range(2):
            with pytest.raises(ValueError, match="start_pos"):
                s.forward(np.array([1], np.int32), start_pos=5)
            got = s.forward(np.array([1, 10, 20], np.int32), last_only=True)
            np.testing.assert_array_equal(got, want)
        s._free_slots.clear()  # all taken
        np.testing.assert_array_equal(s.forward([1, 10, 20], last_only=True), want)
        assert len(s._free_slots) == 1
        swapped = np.empty((1, 1, model.vocab_size), np.dtype(">f4"))  # float32, but not native order
        with pytest.raises(pyffi.InvalidArgumentError, match="out must be"):
            s.forward(np.array([1], np.int32), last_only=True, out=swapped)
        # Threads on one session, each its own tokens (of its own length) and
        # arrays, from position 0: each call's logits depend on its own tokens
        # alone, and another's length or start in its slots would show.
        seqs = [[5], [17, 3], [60, 8, 9], [200, 1, 2, 3]]
        wants = [model.forward([q])[0, -1] for q in seqs]
        bad = []

        def decode(i):
            tok, out = np.array(seqs[i], np.int32), np.empty((1, 1, model.vocab_size), np.float32)
            try:
                for _ in range(400):
                    s.forward(tok, start_pos=0, last_only=True, out=out)
                    if not np.array_equal(out[0, 0], wants[i]):
                        bad.append(i)
            except Exception as e:  # an error is as wrong as a wrong result
                bad.append(repr(e))

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
        try:
            threads = [threading.Thread(target=decode, args=(i,)) for i in range(len(seqs))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            sys.setswitchinterval(interval)
        assert not bad


def test_forward_writes_into_a_callers_array():
    with pyffi.Transformer.from_pretrained(model_dir("stories260K")) as model:
        want = model.forward([1, 10, 20])
        out = np.full_like(want, np.nan)
        assert model.forward(np.array([1, 10, 20], np.int32), out=out) is out  # fast path
        np.testing.assert_array_equal(out, want)
        out2 = np.full((2, 3, model.vocab_size), np.nan, np.float32)
        both = model.forward([[1, 10, 20], [1, 10]], out=out2)  # general path
        assert both is out2 and not out2[1, 2].any()
        np.testing.assert_array_equal(out2[0], want[0])
        step = np.empty((1, 1, model.vocab_size), np.float32)
        model.forward([30], start_pos=3, last_only=True, out=step)
        np.testing.assert_array_equal(step, model.forward([[1, 10, 20, 30]])[:, -1:])
        for bad in (np.empty((1, 2, model.vocab_size), np.float32), np.empty(want.shape, np.float64),
                    np.empty((1, 3, 2 * model.vocab_size), np.float32)[:, :, ::2], [0.0] * 10):
            with pytest.raises(pyffi.InvalidArgumentError, match="out must be"):
                model.forward([1, 10, 20], out=bad)
        frozen = np.empty(want.shape, np.float32)
        frozen.flags.writeable = False
        with pytest.raises(pyffi.InvalidArgumentError, match="writable"):
            model.forward(np.array([1, 10, 20], np.int32), out=frozen)


def test_a_decode_loop_may_reuse_and_rewrite_its_arrays():
    """forward(out=) keeps the C views of the token and logits arrays for the
    next call with the same arrays: what they hold at each call is what
    counts, a new array takes over, and a frozen one is still refused."""
    with pyffi.Transformer.from_pretrained(model_dir("stories260K")) as model:
        seq = [1, 10, 20, 30, 40]
        want = model.forward([seq])[0]
        s = model.new_session(n_ctx=8)
        tok = np.zeros(1, np.int32)
        bufs = [np.empty((1, 1, model.vocab_size), np.float32) for _ in range(2)]
        for pos, t in enumerate(seq):
            tok[0] = t  # rewritten in place: the kept view reads it anew
            out = bufs[pos // 3]  # the second array takes over at position 3
            assert s.forward(tok, start_pos=pos, last_only=True, out=out) is out
            np.testing.assert_array_equal(out[0, 0], want[pos])
        bufs[1].flags.writeable = False
        with pytest.raises(pyffi.InvalidArgumentError, match="writable"):
            s.forward(tok, start_pos=5, last_only=True, out=bufs[1])


def test_start_pos_continues_from_the_cache():
    with pyffi.Transformer.from_pretrained(model_dir("stories260K")) as model:
        full = model.forward([[1, 10, 20, 30, 40]])[0]
        model.forward([[1, 10]])
        rest = model.forward([[20, 30, 40]], start_pos=2)[0]
        np.testing.assert_allclose(rest, full[2:], rtol=0, atol=1e-5 * np.abs(full).max())
        assert model.session.cached_len() == 5


def test_stream_equals_plain_generate_and_stops_early():
    with pyffi.Transformer.from_pretrained(model_dir("stories260K")) as model:
        args = dict(max_gen_len=20, temperature=0.9, top_k=30, seed=5, stop_tokens=[])
        plain = model.generate([1, 5], **args)
        assert list(model.generate([1, 5], stream=True, **args)) == plain
        it = model.generate([1, 5], stream=True, **args)
        assert [next(it), next(it)] == plain[:2]
        it.close()  # stops generation there; the session is free again
        assert model.generate([1, 5], **args) == plain
        pairs = list(model.generate([[1, 5], [1, 6]], stream=True, **args))
        assert [t for i, t in pairs if i == 0] == plain


def test_stream_raises_after_the_tokens_before_the_error_and_keeps_finish_reasons():
    """The prompts run one after another: an error in a later prompt comes
    after the earlier prompt's tokens; close() mid-way is "cancelled"."""
    with pyffi.Transformer.from_pretrained(model_dir("stories260K")) as model:
        args = dict(max_gen_len=4, temperature=0, stop_tokens=[])
        want = model.generate([1, 5], **args)
        it = model.generate([[1, 5], [1, 10**6]], stream=True, **args)
        got = []
        with pytest.raises(pyffi.OutOfRangeError, match="outside the vocabulary"):
            for pair in it:
                got.append(pair)
        assert got == [(0, t) for t in want] and it.finish_reasons == ["length"]
        it = model.generate([1, 5], stream=True, **args)
        assert list(it) == want and it.finish_reason == "length"
        # To the end of the context: far longer than the two calls below.
        it = model.generate([1, 5], stream=True, **dict(args, max_gen_len=None))
        assert next(it) == want[0]
        it.close()
        assert it.finish_reason == "cancelled" and list(it) == []


def test_stream_runs_on_the_calling_thread_and_another_call_between_tokens_ends_it():
    """Each step is one C call on the iterating thread (no worker thread).
    Between tokens the session is free: a call on it there ends the stream
    with a clear error at its next step, and nothing else is lost."""
    with pyffi.Transformer.from_pretrained(model_dir("stories260K")) as model:
        args = dict(max_gen_len=6, temperature=0, stop_tokens=[])
        want = model.generate([1, 5], **args)
        threads = threading.active_count()
        it = model.generate([1, 5], stream=True, **args)
        assert next(it) == want[0] and threading.active_count() == threads
        logits = model.forward([[1, 7]], last_only=True)
        with pytest.raises(pyffi.InvalidArgumentError, match="another call"):
            next(it)
        assert it.finish_reason == "cancelled" and list(it) == []
        np.testing.assert_array_equal(model.forward([[1, 7]], last_only=True), logits)
        assert model.generate([1, 5], **args) == want
        # A stream keeps its session alive after the model is closed.
        it = model.generate([1, 5], stream=True, **args)
        first = next(it)
    assert [first] + list(it) == want and it.finish_reason == "length"


def test_c_token_queue_carries_generate_to_another_thread():
    """The C path for consuming tokens on another thread than the generating
    one (README, C): pyffi_generate with pyffi_token_queue_push as its
    callback on a worker thread, pyffi_token_queue_pop here; close() stops
    the generation at its next token."""
    from pyffi._ffi import call, ffi, lib
    with pyffi.Transformer.from_pretrained(model_dir("stories260K")) as model:
        args = dict(max_gen_len=12, temperature=0, stop_tokens=[])
        want = model.generate([1, 5], **args)
        session = model.session
        params, _ = session._sampling_params(0, None, None, None, 1.0, 64, None, [])

        def run(max_new):
            q = ffi.new("pyffi_token_queue **")
            call(lib.pyffi_token_queue_new, q)
            q = ffi.gc(q[0], lib.pyffi_token_queue_free)
            prompt = np.array([1, 5], np.int32)
            out = np.empty(max_new, np.int32)
            n_out, finish = ffi.new("size_t *"), ffi.new("pyffi_finish_reason *")

            def produce():
                call(lib.pyffi_generate, session._handle(), ffi.from_buffer("int32_t[]", prompt), 2, params,
                     max_new, ffi.from_buffer("int32_t[]", out, require_writable=True), max_new, n_out, finish,
                     ffi.addressof(lib, "pyffi_token_queue_push"), q)
                lib.pyffi_token_queue_finish(q)
            return q, out, n_out, finish, threading.Thread(target=produce)

        q, out, n_out, finish, worker = run(12)
        worker.start()
        tok, got = ffi.new("int32_t *"), []
        while (r := lib.pyffi_token_queue_pop(q, 1000, tok)) != lib.PYFFI_QUEUE_END:
            assert r in (lib.PYFFI_QUEUE_TOKEN, lib.PYFFI_QUEUE_TIMEOUT)
            if r == lib.PYFFI_QUEUE_TOKEN:
                got.append(tok[0])
        worker.join()
        assert got == want == out[: n_out[0]].tolist() and finish[0] == lib.PYFFI_FINISH_LENGTH

        q, out, n_out, finish, worker = run(200)
        lib.pyffi_token_queue_close(q)  # before the first token: generation stops at it
        worker.start()
        worker.join()
        assert n_out[0] == 1 and finish[0] == lib.PYFFI_FINISH_CANCELLED


def test_generate_callback_sees_every_token_and_can_stop():
    with pyffi.Transformer.from_pretrained(model_dir("stories260K")) as model:
        args = dict(max_gen_len=20, temperature=0.9, top_k=30, seed=5, stop_tokens=[])
        plain = model.generate([1, 5], **args)
        seen = []
        assert model.generate([1, 5], callback=seen.append, **args) == plain == seen
        seen = []
        first3 = model.generate([1, 5], callback=lambda t: seen.append(t) or len(seen) < 3, **args)
        assert first3 == seen == plain[:3]  # False stops, keeping that token
        pairs = []
        both = model.generate([[1, 5], [1, 6]], callback=lambda i, t: pairs.append((i, t)), **args)
        assert [t for i, t in pairs if i == 0] == both[0] == plain
        assert [t for i, t in pairs if i == 1] == both[1]

        def boom(tok):
            raise KeyError("from the callback")
        with pytest.raises(KeyError, match="from the callback"):
            model.generate([1, 5], callback=boom, **args)
        with pytest.raises(pyffi.InvalidArgumentError, match="callback"):
            model.generate([1, 5], callback=print, stream=True, **args)
        with pytest.raises(pyffi.InvalidArgumentError, match="callback"):
            model.generate([1, 5], callback=3, **args)
        assert model.generate([1, 5], **args) == plain  # nothing lost


def test_batch_generate_gives_each_prompt_its_own_result():
    with pyffi.Transformer.from_pretrained(model_dir("stories260K")) as model:
        args = dict(max_gen_len=12, temperature=0.8, seed=9, stop_tokens=[])
        both = model.generate([[1, 5], [1, 6, 7]], **args)
        assert both == [model.generate([1, 5], **args), model.generate([1, 6, 7], **args)]


def test_stop_tokens_end_generation_and_are_not_returned():
    g = golden("stories260K")
    greedy = g["bos_greedy_tokens"].tolist()
    with pyffi.Transformer.from_pretrained(model_dir("stories260K")) as model:
        stop = greedy[7]
        first = greedy.index(stop)
        assert model.generate([1], max_gen_len=50, temperature=0, stop_tokens=[stop]) == greedy[:first]


def test_eos_from_config_stops_generation():
    """A config's eos_token_id (here: a token the greedy path reaches) ends generation."""
    greedy = golden("stories260K")["bos_greedy_tokens"].tolist()
    path = model_dir("stories260K")
    cfg = pyffi.ModelArgs.from_config_file(path)
    cfg.eos_token_id = [greedy[7], 0]
    with pyffi.Transformer(cfg) as model:
        model.load_state_dict(load_file(path / "model.safetensors"))
        assert model.generate([1], max_gen_len=200, temperature=0) == greedy[:greedy.index(greedy[7])]
        assert model.generate([1], max_gen_len=20, temperature=0, stop_tokens=[]) == greedy[:20]


def test_generation_stops_at_the_end_of_the_context():
    with pyffi.Transformer.from_pretrained(model_dir("stories260K"), n_ctx=16) as model:
        out = model.generate([1, 2, 3], max_gen_len=100, temperature=0, stop_tokens=[])
        assert len(out) == 16 - 3 + 1  # the last token is emitted but not fed back


def test_threads_setting():
    before = pyffi.get_threads()
    try:
        pyffi.set_threads(1)
        assert pyffi.get_threads() == 1
        with pyffi.Transformer.from_pretrained(model_dir("tiny-llama")) as model:
            one = model.forward([[1, 2, 3, 4, 5]])
            pyffi.set_threads(2)
            np.testing.assert_array_equal(model.forward([[1, 2, 3, 4, 5]]), one)
    finally:
        pyffi.set_threads(0)
    assert pyffi.get_threads() == before


def test_sessions_share_one_model():
    with pyffi.Transformer.from_pretrained(model_dir("tiny-llama")) as model:
        s1, s2 = model.new_session(n_ctx=32), model.new_session(n_ctx=64)
        assert (s1.n_ctx, s2.n_ctx) == (32, 64)
        np.testing.assert_array_equal(s1.forward([[3, 4]]), s2.forward([[3, 4]]))
        s1.close()
        s1.close()
        s2.close()


def test_default_context_is_the_models_capped():
    with pyffi.Transformer.from_pretrained(model_dir("stories260K")) as model:
        assert model.n_ctx == 512


def test_cli_generates_with_the_bundled_model():
    out = subprocess.run([sys.executable, "-m", "pyffi", "generate", "--ids", "0 555 459", "--max-new-tokens", "8"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    cases = json.loads((golden_dir() / "golden.json").read_text())["cases"]
    assert [int(t) for t in out.split()] == cases[0]["greedy_ids"][:8]


def golden_dir():
    from conftest import FIXTURES
    return FIXTURES / "demo"


def test_profiling_counts_a_sessions_forward_passes_while_on():
    with pyffi.Transformer.from_pretrained(model_dir("stories260K"), n_threads=2) as model:
        s = model.new_session(n_threads=2)
        s.forward([1, 2, 3])
        assert s.take_profile() == dict.fromkeys(pyffi.model.PROFILE_FIELDS, 0), "off at first"
        s.set_profiling(True)
        s.forward([4, 5], start_pos=3)
        s.forward([[6], [7, 8, 9]], start_pos=[5, 0], last_only=True)
        p = s.take_profile()
        assert set(p) == set(pyffi.model.PROFILE_FIELDS)
        assert (p["forwards"], p["tokens"]) == (2, 6)
        assert p["jobs"] > 0 and 0 <= p["wait_ns"] <= p["job_ns"] <= p["forward_ns"]
        assert s.take_profile()["forwards"] == 0, "taking restarts the counts"
        s.set_profiling(False)
        s.forward([10], start_pos=5)
        assert s.take_profile()["forwards"] == 0
        s.close()


def test_take_profile_refuses_a_null_out():
    with pyffi.Transformer.from_pretrained(model_dir("stories260K")) as model:
        s = model.new_session()
        from pyffi._ffi import ffi, lib
        err = ffi.new("pyffi_error **")
        status = lib.pyffi_session_take_profile(s._handle(), ffi.NULL, err)
        assert status == lib.PYFFI_INVALID_ARGUMENT
        assert "out is NULL" in ffi.string(lib.pyffi_error_message(err[0])).decode()
        lib.pyffi_error_free(err[0])
        s.close()


def test_cli_profiles_decode_steps():
    out = subprocess.run([sys.executable, "-m", "pyffi", "profile", str(model_dir("stories260K")),
                          "--tokens", "5", "--depth", "3", "--threads", "2", "--json"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    p = json.loads(out)
    assert (p["forwards"], p["tokens"], p["depth"]) == (5, 5, 3)
    assert 0 < p["job_ns"] <= p["forward_ns"]
    text = subprocess.run([sys.executable, "-m", "pyffi", "profile", "--tokens", "2"],
                          cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "per token:" in text and "parallel jobs" in text
    bad = subprocess.run([sys.executable, "-m", "pyffi", "profile", "--tokens", "0"],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 1 and "tokens >= 1" in bad.stderr
