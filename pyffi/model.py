"""Transformer and Session: the model API over the C ABI.

A Transformer holds one immutable model; each Session holds a KV cache and
worker threads over it. The Transformer's own forward/generate run on a
default session; `new_session()` gives more, for use from other threads (the
GIL is released inside every forward and generate).

Logits are written by the engine straight into the numpy array returned.
"""

import json
import os

import numpy as np

from . import errors
from ._ffi import Handle, call, ffi, lib, path_arg, raise_error, read_string
from .config import ModelArgs

_INT32 = np.iinfo(np.int32)
_I32 = np.dtype(np.int32)
_U32_MAX = 2**32 - 1
_F32 = np.dtype(np.float32)
_OK = lib.PYFFI_OK
_forward = lib.pyffi_forward
_SEED_RANDOM = 2**64 - 1
PROFILE_FIELDS = tuple(name for name, _ in ffi.typeof("pyffi_profile").fields)


def _token_array(seq, what):
    a = np.asarray(seq)
    if a.ndim != 1:
        raise errors.InvalidArgumentError(f"{what} must be a 1-D sequence of token ids, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise errors.InvalidArgumentError(f"{what} must hold integer token ids, got dtype {a.dtype}")
    if a.size and (a.min() < _INT32.min or a.max() > _INT32.max):
        raise errors.OutOfRangeError(f"{what} holds a token id outside the int32 range")
    return np.ascontiguousarray(a, dtype=np.int32)


def _as_batch(sequences):
    """A list of int32 arrays from: one flat sequence, a 2-D array, or a list
    of sequences of different lengths. Returns (rows, was_flat)."""
    if isinstance(sequences, np.ndarray):
        if sequences.ndim == 1:
            return [_token_array(sequences, "tokens")], True
        if sequences.ndim == 2:
            return [_token_array(r, f"sequence {i}") for i, r in enumerate(sequences)], False
        raise errors.InvalidArgumentError(f"tokens must be 1-D or 2-D, got shape {sequences.shape}")
    seqs = list(sequences)
    if not seqs:
        raise errors.InvalidArgumentError("no sequences given")
    if all(np.ndim(t) == 0 for t in seqs):  # one flat sequence (of ids, or of anything else to refuse)
        return [_token_array(seqs, "tokens")], True
    return [_token_array(s, f"sequence {i}") for i, s in enumerate(seqs)], False


def _logits_array(shape, out):
    """A new float32 array of `shape`, or `out` checked to be one."""
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if (type(out) is np.ndarray and out.dtype is _F32 and out.shape == shape
            and out.flags.c_contiguous and out.flags.writeable):
        return out  # the decode loop's reused array: the cheapest checks first, as it comes every call
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != shape:
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise errors.InvalidArgumentError(f"out must be a float32 array of shape {shape}, got {got}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise errors.InvalidArgumentError("out must be C-contiguous and writable")
    return out


class _CallSlots:
    """The C out-parameters of a one-token forward (the error slot, the length
    and the start), allocated once per session and reused: a call takes a
    set from the session's free list for its length (a call overlapping it
    on another thread takes or makes another).

    It also keeps the last token and logits arrays passed and their C views:
    a decode loop that passes the same arrays again reuses the views (the
    arrays stay alive and cannot be resized while viewed, so the views
    hold). Only arrays of a call with out= are kept, so that no array the
    caller has dropped stays alive here."""

    __slots__ = ("err", "length", "start", "tokens_src", "tokens_buf", "logits_src", "logits_buf")

    def __init__(self):
        self.err = ffi.new("pyffi_error **")
        self.length = ffi.new("uint32_t[1]")
        self.start = ffi.new("uint32_t[1]")
        self.tokens_src = self.tokens_buf = self.logits_src = self.logits_buf = None


def _u32_list(value, n, what):
    vals = [value] * n if isinstance(value, (int, np.integer)) else list(value)
    if len(vals) != n:
        raise errors.InvalidArgumentError(f"{what} has {len(vals)} entries for {n} sequences")
    for v in vals:
        if not isinstance(v, (int, np.integer)) or v < 0 or v > 2**32 - 1:
            raise errors.InvalidArgumentError(f"{what} must hold non-negative integers, got {v!r}")
    return np.array(vals, dtype=np.uint32)


class Session(Handle):
    """A KV cache and worker threads over a shared model. One call at a time
    per session; use one session per thread for parallel work. close() frees
    the KV cache now."""

    _kind = "session"

    def __init__(self, transformer, n_ctx=None, n_threads=None, n_seq_max=None, kv_type=None):
        self._transformer = transformer
        params = ffi.new("pyffi_session_params *", lib.pyffi_session_default_params())
        params.kv_type = _kv_type(kv_type)
        if n_ctx is not None:
            params.n_ctx = _positive(n_ctx, "n_ctx")
        if n_threads is not None:
            params.n_threads = _positive(n_threads, "n_threads")
        if n_seq_max is not None:
            params.n_seq_max = _positive(n_seq_max, "n_seq_max")
        out = ffi.new("pyffi_session **")
        call(lib.pyffi_session_new, transformer._handle(), params, out)
        self._ptr = ffi.gc(out[0], lib.pyffi_session_free)
        # The one-token path's call slots: one taken per call (list.pop and
        # append are single steps under the GIL, so two threads never share
        # one), more made while calls overlap.
        self._free_slots = [_CallSlots()]
        self.vocab_size = transformer.vocab_size
        self._shape_last = (1, 1, self.vocab_size)  # a one-token forward's logits
        self.n_ctx = lib.pyffi_session_n_ctx(self._ptr)

    def cached_len(self, row=0):
        """Positions held in the KV cache for batch row `row`."""
        return lib.pyffi_session_cached_len(self._handle(), row)

    def set_profiling(self, on=True):
        """Start (or stop) counting where this session's forward passes
        spend their time; `take_profile()` reads the counts."""
        call(lib.pyffi_session_set_profiling, self._handle(), bool(on))

    def take_profile(self):
        """The counts since profiling was turned on or last taken, as a dict
        (the fields of `pyffi_profile`: forwards, tokens, forward_ns, jobs,
        job_ns, wait_ns, quantize_ns, read_ahead_bytes); they restart from
        zero."""
        out = ffi.new("pyffi_profile *")
        call(lib.pyffi_session_take_profile, self._handle(), out)
        return {name: int(getattr(out, name)) for name in PROFILE_FIELDS}

    def forward(self, sequences, start_pos=0, last_only=False, out=None):
        """Logits, float32, `[batch, seq, vocab]` (`[batch, 1, vocab]` when
        last_only). `sequences` is one sequence of ids, a 2-D array, or a list of
        sequences of different lengths (padded in the output with zeros).
        `start_pos` (an int, or one per row) continues each row from the KV
        cache: 0 starts fresh, n continues after n cached positions. `out`, a
        C-contiguous float32 array of exactly that shape, receives the logits
        (and is returned) instead of a new array: a decode loop can reuse one."""
        # The decode loop's case first (`_forward_one`): one int32 array or
        # short list of ints and one int start, no conversions, on the
        # session's reused call slots. Every line of it runs once per token,
        # after a forward pass that has pushed this code and its objects out
        # of the caches, so it does as little as it can; whatever it does not
        # take goes the general way below, which also raises every error.
        if self._ptr is not None and type(start_pos) is int and 0 <= start_pos <= _U32_MAX:
            n = array = tokens = None
            kind = type(sequences)
            if kind is np.ndarray:
                if (sequences.ndim == 1 and (sequences.dtype is _I32 or sequences.dtype == _I32)
                        and sequences.flags.c_contiguous):
                    n, array = sequences.shape[0], sequences
            elif kind is list and 0 < len(sequences) <= 64:
                try:  # cffi checks int type and range; errors go the general way
                    n, tokens = len(sequences), ffi.new("int32_t[]", sequences)
                except (TypeError, OverflowError):
                    pass
            if n:
                return self._forward_one(array, tokens, n, start_pos, last_only, out)
        rows, _ = _as_batch(sequences)
        n = len(rows)
        lengths = np.array([len(r) for r in rows], dtype=np.uint32)
        starts = _u32_list(start_pos, n, "start_pos")
        tokens = np.concatenate(rows) if n > 1 else rows[0]
        width = 1 if last_only else int(lengths.max())
        logits = _logits_array((n, width, self.vocab_size), out)
        needed = ffi.new("size_t *")
        call(lib.pyffi_forward, self._handle(),
             ffi.from_buffer("int32_t[]", tokens), ffi.from_buffer("uint32_t[]", lengths), n,
             ffi.from_buffer("uint32_t[]", starts), bool(last_only),
             ffi.from_buffer("float[]", logits, require_writable=True), logits.size, needed)
        return logits

    __call__ = forward

    def _forward_one(self, array, tokens, n, start_pos, last_only, out):
        """`forward` of one sequence of `n` tokens (`array`, an int32 array,
        or `tokens`, their C copy) on a set of reused call slots."""
        shape = self._shape_last if last_only or n == 1 else (1, n, self.vocab_size)
        if out is None:
            logits = np.empty(shape, dtype=_F32)
        elif type(out) is np.ndarray and out.dtype is _F32 and out.flags.carray and out.shape == shape:
            logits = out  # a decode loop's reused array (carray: C-contiguous, aligned, writable)
        else:
            logits = _logits_array(shape, out)
        free = self._free_slots
        try:
            slots = free.pop()
        except IndexError:  # another thread's call holds them
            slots = _CallSlots()
        if array is not None:
            if slots.tokens_src is array:
                tokens = slots.tokens_buf
            else:
                tokens = ffi.from_buffer("int32_t[]", array)
                if out is not None:
                    slots.tokens_src, slots.tokens_buf = array, tokens
        if slots.logits_src is logits:
            view = slots.logits_buf
        else:
            view = ffi.from_buffer("float[]", logits, require_writable=True)
            if out is not None:
                slots.logits_src, slots.logits_buf = logits, view
        slots.length[0] = n
        slots.start[0] = start_pos
        status = _forward(self._ptr, tokens, slots.length, 1, slots.start, bool(last_only),
                          view, logits.size, ffi.NULL, slots.err)
        free.append(slots)
        if status != _OK:
            raise_error(status, slots.err[0])
        return logits

    def generate(self, prompt_tokens, max_gen_len=None, temperature=0.6, top_p=0.9, top_k=None,
                 min_p=None, repeat_penalty=1.0, repeat_last_n=64, seed=None, stop_tokens=None,
                 stream=False, callback=None):
        """New tokens after each prompt (the prompt is not repeated).

        `prompt_tokens` is one prompt (a list of ids: returns a list) or a list of
        prompts (returns a list per prompt). temperature=0 is greedy. Generation
        stops at the model's EOS ids, or at `stop_tokens` when given (the stop
        token is not returned), or after `max_gen_len` tokens (default: until the
        context is full). With stream=True returns an iterator of tokens (for a
        batch: of (prompt_index, token) pairs). `callback(token)` (for a batch
        `callback(prompt_index, token)`) is called on this thread as each token
        is made, with no extra thread; returning False stops that prompt there
        (the token is kept). The same seed gives the same tokens, for each
        prompt on its own."""
        rows, flat = _as_batch(prompt_tokens)
        if callback is not None and (stream or not callable(callback)):
            raise errors.InvalidArgumentError("callback must be a callable, and not given with stream=True")
        params = self._sampling_params(temperature, top_p, top_k, min_p, repeat_penalty,
                                       repeat_last_n, seed, stop_tokens)
        jobs = [(r, self._max_new(r, max_gen_len)) for r in rows]
        if stream:
            it = self._stream(jobs, params)
            return _TokensOnly(it) if flat else it
        results = []
        for i, (r, m) in enumerate(jobs):
            if callback is None:
                on_token = None
            elif flat:
                on_token = callback
            else:
                def on_token(tok, i=i):
                    return callback(i, tok)
            results.append(self._generate_one(r, m, params, on_token)[0])
        return results[0] if flat else results

    def _max_new(self, prompt, max_gen_len):
        if max_gen_len is None:
            return max(self.n_ctx - len(prompt), 0)
        if not isinstance(max_gen_len, (int, np.integer)) or max_gen_len < 0:
            raise errors.InvalidArgumentError(f"max_gen_len must be a non-negative integer, got {max_gen_len!r}")
        return int(max_gen_len)

    def _sampling_params(self, temperature, top_p, top_k, min_p, repeat_penalty, repeat_last_n,
                         seed, stop_tokens):
        p = ffi.new("pyffi_sampling_params *", lib.pyffi_sampling_default_params())
        p.temperature = float(temperature)
        p.top_p = 1.0 if top_p is None else float(top_p)
        p.top_k = 0 if top_k is None else _int_in(top_k, 0, _INT32.max, "top_k")
        p.min_p = 0.0 if min_p is None else float(min_p)
        p.repeat_penalty = float(repeat_penalty)
        p.repeat_last_n = _int_in(repeat_last_n, -1, _INT32.max, "repeat_last_n")
        p.seed = _SEED_RANDOM if seed is None else _int_in(seed, 0, 2**64 - 2, "seed")
        keep = None
        if stop_tokens is not None:
            keep = _token_array(list(stop_tokens), "stop_tokens")
            p.stop_at_eos = False
            p.n_stop_tokens = len(keep)
            p.stop_tokens = ffi.from_buffer("int32_t[]", keep) if len(keep) else ffi.NULL
        return p, keep  # keep: the stop array must outlive the call

    def _generate_one(self, prompt, max_new, params, on_token):
        """One C generate call; `on_token(tok)` is called per token and stops
        generation by returning False (None goes on)."""
        out = np.empty(max(max_new, 1), dtype=np.int32)
        n_out = ffi.new("size_t *")
        finish = ffi.new("pyffi_finish_reason *")
        failure = []

        if on_token is None:
            cb = ffi.NULL
        else:
            def _cb(_user, tok):
                try:
                    return on_token(tok) is not False
                except BaseException as e:  # re-raised after the C call returns
                    failure.append(e)
                    return False
            cb = ffi.callback("bool(void *, int32_t)", _cb)
        call(lib.pyffi_generate, self._handle(), ffi.from_buffer("int32_t[]", prompt), len(prompt),
             params[0], max_new, ffi.from_buffer("int32_t[]", out, require_writable=True),
             len(out), n_out, finish, cb, ffi.NULL)
        if failure:
            raise failure[0]
        return out[: n_out[0]].tolist(), int(finish[0])

    def _stream(self, jobs, params):
        return TokenStream(self, jobs, params)


_FINISH = {0: "stop", 1: "length", 2: "cancelled"}


class TokenStream:
    """Iterator over (prompt_index, token): each step makes one token in C,
    on the iterating thread (`pyffi_generation`: no callback, no second
    thread). The prompts run one after another. Closing it early (or
    breaking out of a for loop over it) stops generation there, with no
    further forward pass. After it is exhausted, `finish_reasons` holds
    "stop", "length" or "cancelled" per prompt run.

    Between two tokens the session is free, but another call on it ends
    the stream: its next step raises InvalidArgumentError."""

    def __init__(self, session, jobs, params):
        self._session = session
        self._jobs = jobs
        self._params = params  # (pyffi_sampling_params *, the stop tokens it points to)
        self._at = 0  # the prompt being generated for
        self._gen = None  # its pyffi_generation, once started
        self._token = ffi.new("int32_t *")
        self._finish = ffi.new("pyffi_finish_reason *")
        self._err = ffi.new("pyffi_error **")
        self._finished = False
        self.finish_reasons = []

    def __iter__(self):
        return self

    def __next__(self):
        while not self._finished:
            if self._gen is None:
                if self._at == len(self._jobs):
                    self._finished = True
                    break
                self._start(*self._jobs[self._at])
            status = lib.pyffi_generation_next(self._gen, self._token, self._finish, self._err)
            if status != _OK:
                self._end("cancelled")
                self._finished = True
                raise_error(status, self._err[0])
            tok = self._token[0]
            if tok != lib.PYFFI_TOKEN_NONE:
                return self._at, tok
            self._end(_FINISH.get(int(self._finish[0]), "stop"))
            self._at += 1
        raise StopIteration

    def _start(self, prompt, max_new):
        out = ffi.new("pyffi_generation **")
        try:
            call(lib.pyffi_generation_new, self._session._handle(), ffi.from_buffer("int32_t[]", prompt),
                 len(prompt), self._params[0], max_new, out)
        except BaseException:
            self._finished = True
            raise
        self._gen = ffi.gc(out[0], lib.pyffi_generation_free)

    def _end(self, reason):
        """Frees the running generation, if any, recording why it ended."""
        if self._gen is not None:
            self.finish_reasons.append(reason)
            ffi.release(self._gen)
            self._gen = None

    def close(self):
        """Stop generation now; the prompt being generated for ends "cancelled"
        and the prompts after it are not run."""
        self._end("cancelled")
        self._finished = True

    def __del__(self):
        self.close()


class Transformer(Handle):
    """A Llama-family model (Llama, Mistral, Qwen2, Phi-3).

    Transformer(config) starts with zero weights; fill them with
    load_state_dict. Transformer.from_pretrained(folder) loads a Hugging Face
    folder. forward/generate run on a default session."""

    def __init__(self, config, n_ctx=None, n_threads=None, kv_type=None):
        if isinstance(config, dict):
            config = ModelArgs.from_dict(config)
        if not isinstance(config, ModelArgs):
            raise TypeError(f"config must be a ModelArgs or a dict, got {type(config).__name__}")
        cfg = config._to_handle()
        try:
            out = ffi.new("pyffi_model **")
            call(lib.pyffi_model_new, cfg, out)
        finally:
            lib.pyffi_config_free(cfg)
        self._init(out[0], n_ctx, n_threads, kv_type)

    _kind = "model"

    def _init(self, ptr, n_ctx, n_threads, kv_type):
        _kv_type(kv_type)  # refuse a bad value now, not at the first forward
        self._ptr = ffi.gc(ptr, lib.pyffi_model_free)
        self._session = None
        self._n_ctx, self._n_threads, self._kv_type = n_ctx, n_threads, kv_type
        self.config = ModelArgs._from_normalized(json.loads(read_string(lib.pyffi_model_config_json, ptr)))
        self.params = self.config  # Meta's name
        self.vocab_size = lib.pyffi_model_vocab_size(ptr)

    @classmethod
    def from_pretrained(cls, path, n_ctx=None, n_threads=None, kv_type=None, dtype=None):
        """Load a Hugging Face folder (config.json + model.safetensors or a sharded
        index) or a GGUF file. n_ctx defaults to the model's context length,
        capped to fit memory. kv_type: "f32" or "f16" KV cache; by default f16
        for GGUF files (as llama.cpp), f32 otherwise. dtype: a block format
        ("q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k") to quantize the weight
        matrices to while loading (the blocks pyffi.quantize would write), or
        "f16" / "bf16" to round float32 matrices to that type (like
        transformers' torch_dtype: half the memory and the decode reads; the
        products are still computed in float32)."""
        if not os.path.exists(os.fspath(path)):
            raise errors.ModelNotFoundError(f"{path}: no such file or folder")
        if dtype is not None and (not isinstance(dtype, str) or dtype.lower() not in _LOAD_TYPES):
            raise errors.InvalidArgumentError(f"dtype must be one of {', '.join(_LOAD_TYPES)} or None; got {dtype!r}")
        out = ffi.new("pyffi_model **")
        call(lib.pyffi_model_load, path_arg(path), out)
        self = cls.__new__(cls)
        self._init(out[0], n_ctx, n_threads, kv_type)
        self._source = os.fspath(path)
        if dtype is not None:
            call(lib.pyffi_model_quantize, self._handle(), dtype.lower().encode())
        return self

    def save_lowbit_model(self, path, q_bit=4):
        """Write this model as a quantized GGUF file at `path`, from the file
        or folder it was loaded from. q_bit: 4 (q4_0), 8 (q8_0), 16 (f16), or
        any type name pyffi.quantize takes (e.g. "q4_k")."""
        from .quantize import quantize
        qtype = {4: "q4_0", 8: "q8_0", 16: "f16", 32: "f32"}.get(q_bit, q_bit)
        source = getattr(self, "_source", None)
        if source is None:
            raise errors.UnsupportedError(
                "save_lowbit_model needs a model loaded with from_pretrained (its weights are read "
                "again from that file or folder); this one was built from a config")
        quantize(source, path, qtype)

    def tensor_specs(self):
        """{name: shape} of every weight this model expects (HF names)."""
        specs = json.loads(read_string(lib.pyffi_model_tensors_json, self._handle()))
        return {s["name"]: tuple(s["shape"]) for s in specs}

    def load_state_dict(self, state_dict, strict=True):
        """Copy weights from a {HF name: array} dict (numpy, or anything with
        .numpy() such as torch tensors). float32, float16 and bfloat16 (given as
        a torch tensor or a numpy uint16 view with dtype 'bfloat16' unavailable)
        are accepted. A matrix whose parts all come in float16, or all in
        bfloat16, is kept in that type and computed as its float32 values
        would be (the same logits, half the memory). With strict, every
        expected tensor must be present and no unknown one. Returns (missing,
        unexpected) names like torch does."""
        specs = self.tensor_specs()
        missing = [k for k in specs if k not in state_dict]
        unexpected = [k for k in state_dict if k not in specs]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append("missing: " + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
            if unexpected:
                parts.append("unexpected: " + ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else ""))
            raise errors.WeightsError("state_dict does not match the model; " + "; ".join(parts))
        self._drop_default_session()
        handle = self._handle()
        for name, value in state_dict.items():
            if name not in specs:
                continue
            arr, dtype = _tensor_bytes(name, value)
            shape = ffi.new("int64_t[]", list(arr.shape))
            call(lib.pyffi_model_set_tensor, handle, name.encode("utf-8"), dtype, shape, arr.ndim,
                 ffi.from_buffer(arr), arr.nbytes)
        return missing, unexpected

    def new_session(self, n_ctx=None, n_threads=None, n_seq_max=None, kv_type=None):
        """Another session on the same weights, e.g. for another thread."""
        return Session(self, n_ctx=n_ctx if n_ctx is not None else self._n_ctx,
                       n_threads=n_threads if n_threads is not None else self._n_threads,
                       n_seq_max=n_seq_max, kv_type=kv_type if kv_type is not None else self._kv_type)

    @property
    def session(self):
        if self._session is None:
            self._session = self.new_session()
        return self._session

    @property
    def n_ctx(self):
        return self.session.n_ctx

    def _drop_default_session(self):
        if self._session is not None:
            self._session.close()
            self._session = None

    def forward(self, sequences, start_pos=0, last_only=False, out=None):
        return self.session.forward(sequences, start_pos=start_pos, last_only=last_only, out=out)

    __call__ = forward

    def generate(self, prompt_tokens, **kwargs):
        return self.session.generate(prompt_tokens, **kwargs)

    generate.__doc__ = Session.generate.__doc__
    forward.__doc__ = Session.forward.__doc__

    def close(self):
        """Free the default session and this handle on the weights. Safe to call twice."""
        if getattr(self, "_session", None) is not None:
            self._drop_default_session()
        super().close()


class _TokensOnly:
    """A TokenStream of one prompt, yielding bare tokens."""

    def __init__(self, stream):
        self._stream = stream

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._stream)[1]

    def close(self):
        self._stream.close()

    @property
    def finish_reason(self):
        reasons = self._stream.finish_reasons
        return reasons[0] if reasons else None


_BLOCK_TYPES = ("q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k")
_LOAD_TYPES = _BLOCK_TYPES + ("f16", "bf16")
_KV_TYPES = {None: "PYFFI_KV_DEFAULT", "auto": "PYFFI_KV_DEFAULT", "f32": "PYFFI_KV_F32", "f16": "PYFFI_KV_F16"}


def _kv_type(v):
    if not isinstance(v, (str, type(None))) or v not in _KV_TYPES:
        raise errors.InvalidArgumentError(f"kv_type must be 'f32', 'f16' or None, got {v!r}")
    return getattr(lib, _KV_TYPES[v])


def _positive(v, what):
    if not isinstance(v, (int, np.integer)) or v <= 0 or v > 2**32 - 1:
        raise errors.InvalidArgumentError(f"{what} must be a positive integer, got {v!r}")
    return int(v)


def _int_in(v, lo, hi, what):
    if not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
        raise errors.InvalidArgumentError(f"{what} must be an integer in [{lo}, {hi}], got {v!r}")
    return int(v)


_DTYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}


def _tensor_bytes(name, value):
    """(contiguous little-endian array, pyffi_dtype code) for one tensor."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            return np.ascontiguousarray(value.view(dtype=__import__("torch").int16).numpy()).view(np.uint16), 2
        value = value.numpy()
    arr = np.asarray(value)
    if arr.dtype.name == "bfloat16":  # ml_dtypes
        return np.ascontiguousarray(arr).view(np.uint16), 2
    code = _DTYPES.get(arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype)
    if code is None:
        raise errors.WeightsError(
            f"tensor '{name}' has dtype {arr.dtype}; expected float32, float16 or bfloat16")
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")), code
