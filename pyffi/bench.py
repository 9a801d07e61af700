"""`python -m pyffi bench` (`make bench`, `make bench-quick`): pyffi against
llama.cpp (through llama-cpp-python) on the same GGUF files, the llama-bench way.

It makes its own models: seeded random weights (the values don't change the
work) at TinyLlama-1.1B's shape, or a small shape with --quick, with the Llama 2
vocabulary, as GGUF in F16, Q8_0, Q4_0 (written with the `gguf` package) and
Q4_K_M (made from the F16 file by llama.cpp's own quantizer). They are cached
in $PYFFI_BENCH_CACHE (default ~/.cache/pyffi/bench) with the C helpers.

For each file, each engine runs in its own subprocess with the same thread
count; they load one after the other, then take turns run by run (never two
at once; the order flips every run, so both meet the same drift of a noisy
machine): pp512 (one call of 512 tokens, logits of the last position only),
tg128 (128 one-token steps after one warm-up token) and tg128 at depth 512
(128 steps after a 512-token prompt), each the median of --reps runs after
one warm-up run. Only the model calls are timed.
Reported besides: load time, peak RSS (VmHWM), pyffi / llama.cpp ratios, the
decode bandwidth achieved as a share of a read-bandwidth probe (bench/bwprobe.c,
on 2 MiB pages like the weights, run before and after each type's runs)
and the prompt's arithmetic rate as a share of a float32 multiply-add probe
(bench/fmaprobe.c), both run in the same session, and the per-call overhead of Python's `forward` on a
tiny model against the same calls from C (bench/overhead.c, loaded into the same process).
Under the table, issue 5's targets judged against the run (`targets`): each
value, its bound, met or NOT MET.

This file is also the worker: the parent runs it by path in a fresh
interpreter (`--worker ENGINE MODEL`), which imports only the engine measured.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

GGUF_PIN = "gguf==0.19.0"
LLAMA_CPP_PIN = "llama-cpp-python==0.3.36"
SEED = 20240605
GEN_VERSION = 1  # bump when the generated files would change
SCHEMA = "pyffi-bench/1"

PKG = Path(__file__).resolve().parent
REPO = PKG.parent

# name: dim, layers, q-heads, kv-heads, ffn, vocab, context length
SHAPES = {
    "tinyllama-1.1b": dict(dim=2048, layers=22, heads=32, kv_heads=4, ffn=5632, vocab=32000, ctx=2048),
    "small-110m": dict(dim=768, layers=12, heads=12, kv_heads=12, ffn=2048, vocab=32000, ctx=1024),
}
FULL_SHAPE, QUICK_SHAPE = "tinyllama-1.1b", "small-110m"
TYPES = ("f16", "q8_0", "q4_0", "q4_k_m")
QUICK_TYPES = ("q4_0", "q8_0")
ENGINES = ("llama.cpp", "pyffi")
# GGUF general.file_type (llama_ftype) per type.
FILE_TYPE = {"f16": 1, "q4_0": 2, "q8_0": 7, "q4_k_m": 15}
KV_BYTES_PER_VALUE = 2  # the bandwidth share counts an f16 KV cache (llama.cpp's default) for both engines


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Small helpers (pure; tested in tests/test_bench.py)

def median(xs):
    return statistics.median(xs) if xs else None


def tokens_per_s(n_tokens, times_s):
    """Median throughput over runs: n_tokens / time of each run."""
    rates = [n_tokens / t for t in times_s if t > 0]
    return median(rates)


def ratio(ours, theirs):
    """ours / theirs, or None when either is missing or zero."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def test_names(n_prompt, n_gen, depth):
    return (f"pp{n_prompt}", f"tg{n_gen}", f"tg{n_gen}@d{depth}")


def kv_bytes_per_position(shape):
    s = SHAPES[shape] if isinstance(shape, str) else shape
    head_dim = s["dim"] // s["heads"]
    return 2 * s["layers"] * s["kv_heads"] * head_dim * KV_BYTES_PER_VALUE


def decode_bytes_per_token(weight_bytes, kv_per_pos, first_pos, n_steps):
    """Bytes one decode step reads on average: every weight once, plus the KV
    cache of the positions attended (pos + 1 at position pos)."""
    mean_ctx = first_pos + (n_steps + 1) / 2  # mean of pos + 1 over first_pos .. first_pos + n_steps - 1
    return weight_bytes + kv_per_pos * mean_ctx


def prefill_flops_per_token(shape, n_prompt):
    """Floating-point operations per prompt token of one `n_prompt`-token
    call (a multiply-add counts 2): every layer's matmuls, attention over
    the causal span (q.k and p.v, 2 * dim per position attended), and the
    output head once, for the last position."""
    s = SHAPES[shape] if isinstance(shape, str) else shape
    dim, kv_dim = s["dim"], s["dim"] // s["heads"] * s["kv_heads"]
    layer_params = 2 * dim * dim + 2 * dim * kv_dim + 3 * dim * s["ffn"]
    mean_span = (n_prompt + 1) / 2
    per_layer = 2 * layer_params + 2 * 2 * dim * mean_span
    return s["layers"] * per_layer + 2 * s["vocab"] * dim / n_prompt


def fmt_rate(x):
    if x is None:
        return "-"
    return f"{x:.1f}" if x < 1000 else f"{x:.0f}"


def fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}x"


# --------------------------------------------------------------------------
# Paths and on-demand installs

def cache_dir():
    return Path(os.environ.get("PYFFI_BENCH_CACHE") or Path.home() / ".cache" / "pyffi" / "bench")


def fixtures_dir():
    env = os.environ.get("PYFFI_FIXTURES")
    return Path(env) if env else REPO.parent / "shared" / "fixtures"


def vocab_file():
    return fixtures_dir() / "vocab" / "ggml-vocab-llama-spm.gguf"


def overhead_model():
    """A tiny model for the per-call overhead: stories260K, else the demo."""
    for p in (fixtures_dir() / "models" / "stories260K", REPO / "fixtures" / "demo", PKG / "demo"):
        if (p / "config.json").exists():
            return p
    return None


def library_path():
    for p in (os.environ.get("PYFFI_LIBRARY"), REPO / "rust" / "target" / "release" / "libpyffi.so",
              PKG / "libpyffi.so"):
        if p and Path(p).is_file():
            return Path(p).resolve()
    return None


def header_dir():
    for d in (REPO / "include", PKG):
        if (d / "pyffi.h").is_file():
            return d
    return None


def _has_module(name):
    import importlib.util
    return importlib.util.find_spec(name) is not None


def ensure_package(module, pin, allow_install, why):
    """Import check for `module`; pip-installs `pin` when missing and allowed.
    Returns None when available, else the reason it is not."""
    if _has_module(module):
        return None
    if not allow_install:
        return f"{module} is not installed (pip install {pin}); --no-install was given"
    log(f"installing {pin} ({why}) ...")
    r = subprocess.run([sys.executable, "-m", "pip", "install", pin])
    if r.returncode != 0:
        return f"pip install {pin} failed (exit {r.returncode})"
    import importlib
    importlib.invalidate_caches()
    return None if _has_module(module) else f"{module} still not importable after installing {pin}"


# --------------------------------------------------------------------------
# Model generation

def model_path(shape, typ, cache=None):
    return (cache or cache_dir()) / "models" / f"{shape}-{typ}-seed{SEED}-v{GEN_VERSION}.gguf"


def tensor_plan(shape):
    """(name, numpy shape [out, in]) of every tensor, in file order."""
    s = SHAPES[shape]
    d, hd, kv = s["dim"], s["dim"] // s["heads"], s["kv_heads"]
    plan = [("token_embd.weight", (s["vocab"], d))]
    for i in range(s["layers"]):
        b = f"blk.{i}."
        plan += [(b + "attn_norm.weight", (d,)), (b + "attn_q.weight", (d, d)),
                 (b + "attn_k.weight", (kv * hd, d)), (b + "attn_v.weight", (kv * hd, d)),
                 (b + "attn_output.weight", (d, d)), (b + "ffn_norm.weight", (d,)),
                 (b + "ffn_gate.weight", (s["ffn"], d)), (b + "ffn_up.weight", (s["ffn"], d)),
                 (b + "ffn_down.weight", (d, s["ffn"]))]
    plan += [("output_norm.weight", (d,)), ("output.weight", (s["vocab"], d))]
    return plan


def _read_vocab(path):
    """Pieces, scores, token types and special ids of a vocab-only GGUF."""
    import gguf
    fields = gguf.GGUFReader(str(path)).fields

    def items(key):
        f = fields[key]
        return [f.parts[i] for i in f.data]

    def scalar(key, default):
        f = fields.get(key)
        return int(f.parts[f.data[0]][0]) if f is not None else default

    return dict(
        tokens=[bytes(p).decode("utf-8") for p in items("tokenizer.ggml.tokens")],
        scores=[float(p[0]) for p in items("tokenizer.ggml.scores")],
        types=[int(p[0]) for p in items("tokenizer.ggml.token_type")],
        bos=scalar("tokenizer.ggml.bos_token_id", 1), eos=scalar("tokenizer.ggml.eos_token_id", 2),
        unk=scalar("tokenizer.ggml.unknown_token_id", 0))


def _weights(seed, index, shape):
    """The seeded random matrix of tensor `index` (the same for every type);
    norms are ones."""
    import numpy as np
    if len(shape) == 1:
        return np.ones(shape, np.float32)
    rng = np.random.default_rng([seed, index])
    a = rng.standard_normal(shape, dtype=np.float32)
    a *= np.float32(shape[-1] ** -0.5)
    return a


def write_gguf(path, shape, typ, vocab_path, seed=SEED):
    """Write a random-weight llama GGUF in f16, q8_0 or q4_0, tensor by tensor
    (never the whole model in memory)."""
    import gguf
    import numpy as np
    Q = gguf.GGMLQuantizationType
    qtype = {"f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[typ]
    s = SHAPES[shape]
    vocab = _read_vocab(vocab_path)
    if len(vocab["tokens"]) != s["vocab"]:
        raise ValueError(f"{vocab_path} has {len(vocab['tokens'])} tokens, the shape wants {s['vocab']}")

    tmp = path.with_name(path.name + ".part")
    w = gguf.GGUFWriter(None, "llama")
    w.add_name(f"pyffi-bench {shape} {typ} (random weights, seed {seed})")
    w.add_context_length(s["ctx"])
    w.add_embedding_length(s["dim"])
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_dimension_count(s["dim"] // s["heads"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(s["vocab"])
    w.add_file_type(FILE_TYPE[typ])
    w.add_tokenizer_model("llama")
    w.add_token_list(vocab["tokens"])
    w.add_token_scores(vocab["scores"])
    w.add_token_types(vocab["types"])
    w.add_bos_token_id(vocab["bos"])
    w.add_eos_token_id(vocab["eos"])
    w.add_unk_token_id(vocab["unk"])

    plan = tensor_plan(shape)
    for name, shp in plan:
        if len(shp) == 1:
            w.add_tensor_info(name, shp, np.dtype(np.float32), 4 * shp[0])
        elif qtype == Q.F16:
            w.add_tensor_info(name, shp, np.dtype(np.float16), 2 * shp[0] * shp[1])
        else:
            byte_shape = gguf.quants.quant_shape_to_byte_shape(shp, qtype)
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), byte_shape[0] * byte_shape[1], raw_dtype=qtype)
    w.write_header_to_file(tmp)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for i, (name, shp) in enumerate(plan):
        a = _weights(seed, i, shp)
        if len(shp) == 1:
            w.write_tensor_data(a)
        elif qtype == Q.F16:
            w.write_tensor_data(a.astype(np.float16))
        else:
            w.write_tensor_data(gguf.quants.quantize(a, qtype))
    w.close()
    os.replace(tmp, path)


_QUANTIZE = """
import ctypes, sys, llama_cpp
src, dst, nthread = sys.argv[1], sys.argv[2], int(sys.argv[3])
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
p.nthread = nthread
sys.exit(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p)))
"""


def ensure_model(shape, typ, threads, cache=None, allow_install=True):
    """The cached GGUF for (shape, type), made when missing."""
    path = model_path(shape, typ, cache)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if typ == "q4_k_m":
        why = ensure_package("llama_cpp", LLAMA_CPP_PIN, allow_install, "llama.cpp's quantizer makes Q4_K_M")
        if why:
            raise RuntimeError(why)
        src = ensure_model(shape, "f16", threads, cache, allow_install)
        tmp = path.with_name(path.name + ".part")
        log(f"quantizing {src.name} -> {path.name} with llama.cpp (Q4_K_M) ...")
        r = subprocess.run([sys.executable, "-c", _QUANTIZE, str(src), str(tmp), str(threads)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0 or not tmp.is_file():
            raise RuntimeError(f"llama_model_quantize failed (exit {r.returncode}): {r.stderr[-500:]}")
        os.replace(tmp, path)
        return path
    why = ensure_package("gguf", GGUF_PIN, allow_install, "writes the benchmark models")
    if why:
        raise RuntimeError(why)
    vocab = vocab_file()
    if not vocab.is_file():
        raise RuntimeError(f"{vocab} not found: put shared/ beside the checkout or set PYFFI_FIXTURES")
    log(f"writing {path.name} (seeded random weights) ...")
    t0 = time.perf_counter()
    write_gguf(path, shape, typ, vocab)
    log(f"  done in {time.perf_counter() - t0:.0f} s, {path.stat().st_size / 1e9:.2f} GB")
    return path


def model_facts(path):
    """File size, tensor types and the weight bytes one decode step reads
    (every matrix once; one row of the embedding table)."""
    import gguf
    r = gguf.GGUFReader(str(path))
    by_name = {t.name: t for t in r.tensors}
    total = sum(int(t.n_bytes) for t in r.tensors)
    emb = by_name["token_embd.weight"]
    per_token = total - int(emb.n_bytes) + int(emb.n_bytes) // int(emb.shape[-1])
    if "output.weight" not in by_name:  # tied output: the table is read whole
        per_token += int(emb.n_bytes)
    types = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return dict(file_bytes=path.stat().st_size, weight_bytes_per_token=per_token, tensor_types=types)


def warm_page_cache(path):
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 24):
            pass


# --------------------------------------------------------------------------
# C helpers, compiled on the fly into the cache

def compile_c(src, out, extra=()):
    cc = os.environ.get("CC", "cc")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [cc, "-O2", "-pthread", str(src), "-o", str(out), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()[-800:]}")
    return out


_BUILT = {}


def _probe(name, args, cache, extra=()):
    """Build bench/NAME.c into the cache (once per process), run it with
    `args`, and return the JSON line it prints (or {"error": ...})."""
    src = REPO / "bench" / f"{name}.c"
    if not src.is_file():
        return {"error": f"{src} not found (the probe needs a source checkout)"}
    try:
        key = (name, str(cache), tuple(extra))
        if key not in _BUILT:
            _BUILT[key] = compile_c(src, cache / "bin" / name, extra)
        exe = _BUILT[key]
        r = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            return {"error": f"{name} exit {r.returncode}: {r.stderr.strip()[-300:]}"}
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        return {"error": str(e)}


def bandwidth_probe(threads, cache, mib=1024, passes=10):
    return _probe("bwprobe", [threads, mib, passes], cache)


def fma_probe(threads, cache, passes=5):
    return _probe("fmaprobe", [threads, passes], cache, ["-march=native"])


def overhead_loop_library(cache):
    """bench/overhead.c built as a shared object linking libpyffi.so: the C
    loop the overhead worker times beside its Python one."""
    src = REPO / "bench" / "overhead.c"
    lib, inc = library_path(), header_dir()
    if not src.is_file():
        raise RuntimeError(f"{src} not found (needs a source checkout)")
    if lib is None or inc is None:
        raise RuntimeError("libpyffi.so or pyffi.h not found (make build)")
    return compile_c(src, cache / "bin" / "overhead.so",
                     ["-shared", "-fPIC", f"-I{inc}", str(lib), f"-Wl,-rpath,{lib.parent}"])


# --------------------------------------------------------------------------
# Worker side: one engine, one file, in its own process

def peak_rss_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PyffiEngine:
    name = "pyffi"

    def __init__(self, path, threads, n_ctx):
        import numpy as np
        import pyffi
        self._np = np
        pyffi.set_threads(threads)
        t0 = time.perf_counter()
        self.model = pyffi.Transformer.from_pretrained(path, n_ctx=n_ctx, n_threads=threads)
        self.session = self.model.new_session(n_ctx=n_ctx, n_threads=threads)
        self.load_s = time.perf_counter() - t0
        # Where each decode run's time went (`python -m pyffi profile`):
        # three clock reads per parallel job, noise next to a token.
        self.session.set_profiling(True)
        self.last_profile = None
        self.info = {"pyffi_version": pyffi.__version__, "n_ctx": self.session.n_ctx,
                     "library": str(library_path())}
        self._one = np.zeros(1, np.int32)
        self._cached = 0

    def prefill(self, tokens, pos):
        """Time of one call with all of `tokens` from `pos` (last logits only)."""
        t = self._np.asarray(tokens, dtype=self._np.int32)
        t0 = time.perf_counter()
        self.session.forward(t, start_pos=pos, last_only=True)
        dt = time.perf_counter() - t0
        self._cached = pos + len(t)
        return dt

    def steps(self, tokens, pos):
        """Time of len(tokens) one-token calls from `pos` (their profile in
        `last_profile`)."""
        one, fwd = self._one, self.session.forward
        self.session.take_profile()  # from zero
        t0 = time.perf_counter()
        for i, tok in enumerate(tokens):
            one[0] = tok
            fwd(one, start_pos=pos + i, last_only=True)
        dt = time.perf_counter() - t0
        self.last_profile = self.session.take_profile()
        self._cached = pos + len(tokens)
        return dt

    def reset(self):
        self._cached = 0  # start_pos=0 starts the row fresh

    def rewind(self, n):
        """Keep the first n cached positions (the next call continues at n)."""
        if n > self._cached:
            raise RuntimeError("rewind past the cache")
        self._cached = n  # start_pos=n continues after n cached positions


class LlamaCppEngine:
    name = "llama.cpp"

    def __init__(self, path, threads, n_ctx, n_batch=512):
        import llama_cpp as L
        self.L = L
        self._silence()
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch
        cp.n_seq_max = 1
        cp.n_threads = threads
        cp.n_threads_batch = threads
        if hasattr(cp, "no_perf"):
            cp.no_perf = True
        t0 = time.perf_counter()
        self.model = L.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.load_s = time.perf_counter() - t0
        self.n_batch = n_batch
        self.batch = L.llama_batch_init(n_batch, 0, 1)
        self.mem = L.llama_get_memory(self.ctx) if hasattr(L, "llama_get_memory") else None
        self.info = {"llama_cpp_python": getattr(L, "__version__", "?"), "n_ctx": L.llama_n_ctx(self.ctx),
                     "n_batch": n_batch, "n_ubatch": n_batch,
                     "model_params": _fields(mp, ("n_gpu_layers", "use_mmap", "load_mode", "lazy_mode",
                                                  "use_extra_bufts")),
                     "context_params": _fields(cp, ("flash_attn_type", "flash_attn", "type_k", "type_v")),
                     "system_info": L.llama_print_system_info().decode(errors="replace").strip()}

    def _silence(self):
        L = self.L

        cb_type = getattr(L, "llama_log_callback", None) or getattr(L, "ggml_log_callback", None)
        if cb_type is None:
            return

        @cb_type
        def _quiet(level, text, user_data):
            pass
        self._log_cb = _quiet  # keep it alive
        L.llama_log_set(self._log_cb, None)

    def _fill(self, tokens, pos, last_logits=True):
        b = self.batch
        n = len(tokens)
        for i, tok in enumerate(tokens):
            b.token[i] = int(tok)
            b.pos[i] = pos + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 0
        if last_logits:
            b.logits[n - 1] = 1
        b.n_tokens = n

    def _decode(self):
        rc = self.L.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        self.L.llama_synchronize(self.ctx)

    def prefill(self, tokens, pos):
        total = 0.0
        for s in range(0, len(tokens), self.n_batch):
            chunk = tokens[s:s + self.n_batch]
            self._fill(chunk, pos + s, last_logits=s + len(chunk) == len(tokens))
            t0 = time.perf_counter()
            self._decode()
            total += time.perf_counter() - t0
        return total

    def steps(self, tokens, pos):
        b, L, ctx = self.batch, self.L, self.ctx
        b.n_tokens = 1
        b.n_seq_id[0] = 1
        b.seq_id[0][0] = 0
        b.logits[0] = 1
        t0 = time.perf_counter()
        for i, tok in enumerate(tokens):
            b.token[0] = int(tok)
            b.pos[0] = pos + i
            if L.llama_decode(ctx, b) != 0:
                raise RuntimeError("llama_decode failed")
            L.llama_synchronize(ctx)
        return time.perf_counter() - t0

    def reset(self):
        L = self.L
        if self.mem is not None:
            L.llama_memory_clear(self.mem, True)
        else:
            L.llama_kv_self_clear(self.ctx)

    def rewind(self, n):
        L = self.L
        ok = (L.llama_memory_seq_rm(self.mem, 0, n, -1) if self.mem is not None
              else L.llama_kv_self_seq_rm(self.ctx, 0, n, -1))
        if not ok:
            raise RuntimeError("llama.cpp could not drop the KV cache tail")


def _fields(struct, names):
    """The named fields a ctypes struct has (they differ between versions)."""
    return {n: getattr(struct, n) for n in names if hasattr(struct, n)}


def bench_tokens(n, vocab=32000, seed=SEED):
    """The same fixed token ids for both engines (no BOS, no special ids)."""
    import numpy as np
    return np.random.default_rng(seed + 1).integers(3, vocab, size=n).tolist()


def run_once(engine, test, toks, n_prompt, n_gen, depth):
    """One timed run of a test on `engine`: "pp" (a prompt of n_prompt in one
    call), "tg" (n_gen one-token steps after a warm-up token) or "tgd" (n_gen
    steps after `depth` cached positions: "tgd-setup" fills them once and
    returns 0, each "tgd" goes back to them)."""
    if test == "pp":
        engine.reset()
        return engine.prefill(toks[:n_prompt], 0)
    if test == "tg":
        engine.reset()
        engine.steps(toks[:1], 0)  # the warm-up token
        return engine.steps(toks[1:1 + n_gen], 1)
    if test == "tgd-setup":
        engine.reset()
        engine.prefill(toks[:depth], 0)
        return 0.0
    if test == "tgd":
        engine.rewind(depth)
        return engine.steps(toks[depth:depth + n_gen], depth)
    raise ValueError(f"unknown test {test!r}")


def measure_streaming(session, reps, n_gen, vocab):
    """Times of `generate` for n_gen greedy tokens: with no callback, with a
    Python callback per token (callback=), and as an iterator (stream=True,
    one C step per token). A round runs each once, in an order
    rotated from round to round (each mode after each other one as often:
    what one leaves behind, e.g. a pool restarted on another thread, does not
    always fall on the same one); round 0 is a warm-up. All must give the
    same tokens."""
    prompt = bench_tokens(8, vocab)
    kw = dict(max_gen_len=n_gen, temperature=0, stop_tokens=[])  # no stop: always n_gen tokens
    seen = []
    modes = {"plain": lambda: session.generate(prompt, **kw),
             "callback": lambda: session.generate(prompt, callback=seen.append, **kw),
             "stream": lambda: list(session.generate(prompt, stream=True, **kw))}
    names = list(modes)
    times = {k: [] for k in names}
    for r in range(reps + 1):
        got = {}
        seen.clear()
        for k in names[r % 3:] + names[:r % 3]:
            t0 = time.perf_counter()
            got[k] = modes[k]()
            dt = time.perf_counter() - t0
            if r:
                times[k].append(dt)
        want = got["plain"]
        if got["stream"] != want or seen != want or len(want) != n_gen:
            raise RuntimeError("generate with a callback or streamed gave other tokens than plain generate")
    return {"n_tokens": n_gen, "plain_s": times["plain"], "callback_s": times["callback"],
            "stream_s": times["stream"]}


def worker_main(argv):
    """`bench.py --worker ENGINE MODEL ...`: an engine serves `run_engines`
    (`_serve`); the overhead worker prints one JSON line."""
    p = argparse.ArgumentParser(prog="pyffi-bench-worker")
    p.add_argument("--worker", required=True, choices=ENGINES + ("pyffi-overhead",))
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--n-prompt", type=int, default=512)
    p.add_argument("--n-gen", type=int, default=128)
    p.add_argument("--depth", type=int, default=512)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--span", type=int, default=64)
    p.add_argument("--n-stream", type=int, default=32)
    p.add_argument("--c-loop", help="bench/overhead.c as a shared object (the overhead worker)")
    a = p.parse_args(argv)
    if a.worker != "pyffi-overhead":
        return _serve(a)  # an engine: its runs come one by one from `run_engines`
    res = {"engine": a.worker}
    try:
        res.update(_python_overhead(a))
    except Exception as e:  # reported as this cell's error
        res["error"] = f"{type(e).__name__}: {e}"
    res["peak_rss_bytes"] = peak_rss_bytes()
    print("BENCH_RESULT " + json.dumps(res), flush=True)
    return 0


def _serve(a):
    """The worker side of `run_engines`: loads the model, then for each line
    on stdin runs that test once (`run_once`) and prints BENCH_TIME and its
    seconds; "finish" ends it with BENCH_RESULT (streaming for pyffi, peak
    RSS). An error ends it with BENCH_RESULT holding the error."""
    res = {"engine": a.worker}
    try:
        n_ctx = max(1024, a.n_prompt, a.depth + a.n_gen + 1)
        cls = PyffiEngine if a.worker == "pyffi" else LlamaCppEngine
        eng = cls(a.model, a.threads, n_ctx)
        print("BENCH_READY " + json.dumps({"load_s": eng.load_s, "info": eng.info,
                                            "rss_after_load_bytes": _vm_rss()}), flush=True)
        toks = bench_tokens(max(a.n_prompt, a.depth) + a.n_gen + 1, a.vocab)
        for line in sys.stdin:
            test = line.strip()
            if test == "finish":
                if a.worker == "pyffi":
                    res["streaming"] = measure_streaming(eng.session, STREAM_REPS, a.n_stream, a.vocab)
                break
            dt = run_once(eng, test, toks, a.n_prompt, a.n_gen, a.depth)
            if test in ("tg", "tgd") and getattr(eng, "last_profile", None):
                res.setdefault("profiles", {}).setdefault(test, []).append(eng.last_profile)
            print(f"BENCH_TIME {dt!r}", flush=True)
    except Exception as e:
        res["error"] = f"{type(e).__name__}: {e}"
    res["peak_rss_bytes"] = peak_rss_bytes()
    print("BENCH_RESULT " + json.dumps(res), flush=True)
    return 0


def _vm_rss():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None


def _python_overhead(a):
    """Python's one-token `forward` against the same calls from C
    (bench/overhead.c, loaded into this process), on one session, into one
    reused logits array, in rounds of `a.calls` calls that alternate which
    goes first; round 0 is a warm-up. The overhead is the median over rounds
    of Python's time per call minus C's in the same round."""
    import cffi
    import numpy as np
    import pyffi
    from pyffi._ffi import ffi
    cffi_c = cffi.FFI()
    cffi_c.cdef("double pyffi_bench_forward_loop(void *session, long calls, unsigned span, float *logits, "
                "size_t vocab, char *msg, size_t msg_cap);")
    c_lib = cffi_c.dlopen(a.c_loop)
    model = pyffi.Transformer.from_pretrained(a.model)
    sess = model.new_session(n_ctx=a.span, n_threads=a.threads)
    tok = np.ones(1, np.int32)
    logits = np.empty((1, 1, model.vocab_size), np.float32)
    raw = cffi_c.cast("void *", int(ffi.cast("uintptr_t", sess._handle())))
    out, msg = cffi_c.from_buffer("float[]", logits), cffi_c.new("char[]", 512)

    def python_loop():
        fwd = sess.forward
        t0 = time.perf_counter()
        for i in range(a.calls):
            fwd(tok, start_pos=i % a.span, last_only=True, out=logits)
        return time.perf_counter() - t0

    def c_loop():
        dt = c_lib.pyffi_bench_forward_loop(raw, a.calls, a.span, out, model.vocab_size, msg, len(msg))
        if dt < 0:
            raise RuntimeError("C forward failed: " + cffi_c.string(msg).decode(errors="replace"))
        return dt

    py, c = [], []
    for r in range(a.rounds + 1):
        if r % 2:
            tc, tp = c_loop(), python_loop()
        else:
            tp, tc = python_loop(), c_loop()
        if r:
            py.append(tp / a.calls * 1e9)
            c.append(tc / a.calls * 1e9)
    stream = measure_streaming(sess, a.rounds, a.span - 8, model.vocab_size)
    return {"bindings": pyffi._ffi.BINDINGS,
            "python": {"ns_per_call": median(py), "all_ns": py, "streaming": stream},
            "c": {"ns_per_call": median(c), "all_ns": c},
            "python_minus_c_ns": median([p - q for p, q in zip(py, c)]), "calls": a.calls, "rounds": a.rounds}


def measure_overhead(tiny, a, cache, calls=2000, rounds=15, span=64):
    """Python's forward against the same calls from C, in one worker process
    (`_python_overhead`)."""
    log(f"per-call overhead on {tiny.name}, {a.overhead_threads} thread(s): Python and C, alternating ...")
    busy = wait_quiet(a.wait_quiet)
    try:
        so = overhead_loop_library(cache)
    except RuntimeError as e:
        return {"model_name": tiny.name, "error": str(e), "busy_before": busy}
    extra = ("--calls", str(calls), "--rounds", str(rounds), "--span", str(span), "--c-loop", str(so))
    res = run_worker("pyffi-overhead", tiny, a, timeout=600, extra=extra, threads=a.overhead_threads)
    return {"model": str(tiny), "model_name": tiny.name, "threads": a.overhead_threads, "span": span,
            **res, "busy_before": busy}


def worker_env():
    """The environment of a worker in a fresh interpreter: this checkout's
    `pyffi` first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _worker_cmd(engine, model, args, extra=(), threads=None):
    """The command line and environment of a worker in a fresh interpreter."""
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('pyffi_bench_worker', {str(Path(__file__).resolve())!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "sys.exit(m.worker_main(sys.argv[1:]))\n")
    env = worker_env()
    lib = library_path()
    if lib is not None and engine.startswith("pyffi"):
        env.setdefault("PYFFI_LIBRARY", str(lib))
    cmd = [sys.executable, "-c", code, "--worker", engine, str(model), "--threads", str(threads or args.threads),
           "--reps", str(args.reps), "--n-prompt", str(args.n_prompt), "--n-gen", str(args.n_gen),
           "--depth", str(args.depth), *extra]
    return cmd, env


def run_worker(engine, model, args, timeout=None, extra=(), threads=None):
    """Run a worker in a fresh interpreter; its JSON result, or an error."""
    cmd, env = _worker_cmd(engine, model, args, extra, threads)
    t0 = time.perf_counter()
    before = _cpu_snapshot()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        return {"engine": engine, "error": f"timed out after {timeout} s"}
    wall = time.perf_counter() - t0
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("BENCH_RESULT "):
            res = json.loads(line[len("BENCH_RESULT "):])
            res["wall_s"] = wall
            res["busy_during"] = _others_busy_since(before)
            return res
    tail = (r.stderr or r.stdout).strip().splitlines()[-5:]
    return {"engine": engine, "error": f"worker exited with {r.returncode}: " + " | ".join(tail)[-600:]}


class _Served:
    """One serving worker (`_serve`) seen from the parent."""

    def __init__(self, engine, model, args, extra):
        import tempfile
        cmd, env = _worker_cmd(engine, model, args, extra)
        self.engine = engine
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                     text=True, env=env, cwd=str(REPO))

    def read(self, tag):
        """The payload of the next line tagged `tag`; a BENCH_RESULT (the
        worker's error) or the end of its output raise."""
        for line in self.proc.stdout:
            if line.startswith(tag + " "):
                return line[len(tag) + 1:].strip()
            if line.startswith("BENCH_RESULT "):
                res = json.loads(line[len("BENCH_RESULT "):])
                raise RuntimeError(res.get("error") or "the worker stopped early")
        self.proc.wait()
        self.err.seek(0)
        tail = self.err.read().strip().splitlines()[-5:]
        raise RuntimeError(f"worker exited with {self.proc.returncode}: " + " | ".join(tail)[-600:])

    def run(self, test):
        self.proc.stdin.write(test + "\n")
        self.proc.stdin.flush()
        return float(self.read("BENCH_TIME"))

    def finish(self):
        self.proc.stdin.write("finish\n")
        self.proc.stdin.flush()
        res = json.loads(self.read("BENCH_RESULT"))
        self.proc.wait()
        return res

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


SETTLE_S = 0.05  # pause before each turn of `run_engines`
RUN_PROBE_MIB = 256  # the bandwidth probe around each decode run: 3 passes, a fraction of a second
LEVEL_GAP = 1.4  # probe readings this far apart: two bandwidth levels (`level_split`)
# Rounds of the generate modes (after a warm-up), in rotated order: a
# multiple of 3. A round's ratios scatter by about 4% on this VM; the median
# of 15 tells a cost of 0 from issue 5's 3% more surely than the median of 9.
STREAM_REPS = 15


def run_engines(engines, model, args, timeout=None, extra=(), probe=None):
    """Every engine on one model, each in its own worker, loaded one after
    the other; then each test's runs alternate between the engines (the
    order flipped every run), never two at once. Run 0 of each engine and
    test is a warm-up. So both engines meet the same drift of a noisy
    machine, run for run. `probe()`, if given, reads the memory bandwidth
    (GB/s, or None) just before and just after every timed decode run, for
    that run's share of it. Returns one result per engine (or its error)."""
    import threading
    n_prompt, n_gen, depth = args.n_prompt, args.n_gen, args.depth
    tests = dict(zip(("pp", "tg", "tgd"), test_names(n_prompt, n_gen, depth)))
    results = {e: {"engine": e} for e in engines}
    live = []
    before = _cpu_snapshot()
    t0 = time.perf_counter()
    timer = threading.Timer(timeout, lambda: [w.kill() for w in live]) if timeout else None
    if timer:
        timer.start()
    try:
        for e in engines:
            w = _Served(e, model, args, extra)
            live.append(w)
            try:
                results[e].update(json.loads(w.read("BENCH_READY")))
            except Exception as err:
                results[e]["error"] = f"{err}"
                w.kill()
                live.remove(w)
        for key, name in tests.items():
            if key == "tgd":
                for w in list(live):
                    w.run("tgd-setup")
            times = {w.engine: [] for w in live}
            probes = {w.engine: [] for w in live}
            for r in range(args.reps + 1):
                for w in (live if r % 2 == 0 else live[::-1]):
                    time.sleep(SETTLE_S)  # the other engine's idle threads stop spinning
                    around = probe is not None and key != "pp" and r > 0
                    ahead = probe() if around else None
                    dt = w.run(key)
                    if r:
                        times[w.engine].append(dt)
                    if around:
                        probes[w.engine].append([ahead, probe()])
            for w in live:
                results[w.engine].setdefault("tests", {})[name] = {
                    "n_tokens": n_prompt if key == "pp" else n_gen, "times_s": times[w.engine],
                    **({} if key == "pp" else {"first_pos": depth if key == "tgd" else 1}),
                    **({"probe_gb_per_s": probes[w.engine]} if probes[w.engine] else {})}
        for w in live:
            res = w.finish()
            # pyffi's decode profiles go with their runs (the warm-up's left out).
            for key, runs in (res.pop("profiles", None) or {}).items():
                t = results[w.engine]["tests"][tests[key]]
                t["profiles"] = runs[1:]
            results[w.engine].update(res)
    except Exception as err:
        timed_out = timer is not None and not timer.is_alive()
        msg = f"timed out after {timeout} s" if timed_out else f"{type(err).__name__}: {err}"
        for w in live:
            results[w.engine]["error"] = msg
    finally:
        if timer:
            timer.cancel()
        for w in live:
            w.kill()
    wall = time.perf_counter() - t0
    busy = _others_busy_since(before)
    for res in results.values():
        res["wall_s"] = wall
        res["busy_during"] = busy
    return [results[e] for e in engines]


# --------------------------------------------------------------------------
# Report

def _cpu_jiffies():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return sum(v[:8]) - idle, sum(v[:8])


def busy_share(window=0.5):
    """Share of all CPUs busy over `window` seconds while this process tree
    sleeps: other work on the machine, which spoils timings. None off Linux."""
    try:
        b0, t0 = _cpu_jiffies()
        time.sleep(window)
        b1, t1 = _cpu_jiffies()
    except (OSError, ValueError, IndexError):
        return None
    return (b1 - b0) / (t1 - t0) if t1 > t0 else None


def _cpu_snapshot():
    import resource
    try:
        busy, total = _cpu_jiffies()
    except (OSError, ValueError, IndexError):
        return None
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, total, ru.ru_utime + ru.ru_stime


def _others_busy_since(before):
    """Share of all CPUs that work other than our finished children kept busy
    since `before` (a _cpu_snapshot): the machine's busy time less theirs."""
    after = _cpu_snapshot()
    if before is None or after is None or after[1] <= before[1]:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    ours = (after[2] - before[2]) * hz
    return max(0.0, (after[0] - before[0] - ours) / (after[1] - before[1]))


# Issue 5's targets, judged by `targets` and printed under the table.
# Peak RSS within the file size plus the KV cache plus this share.
RSS_SLACK = 0.10
# Decode (the tg test from the start of a row) and prefill, pyffi / llama.cpp in one run.
DECODE_TARGET = {"q4_0": 1.25, "q8_0": 1.25, "f16": 1.0, "q4_k_m": 1.0}
PREFILL_TARGET = {"q4_0": 1.5, "q8_0": 1.5, "f16": 1.5, "q4_k_m": 1.0}
BW_SHARE_TARGET = 0.80  # pyffi's decode (every tg test) against the read-bandwidth probe
OVERHEAD_TARGET_NS = 5000  # a one-token Python forward over the same call from C
CALLBACK_TARGET = 1.03  # generate with a Python callback per token over plain generate
SPREAD_WARN = 1.25  # fastest / slowest run above this marks a cell as noisy
BUSY_WARN = 0.10  # above this share of the CPUs busy with other work before a run, the table warns


def wait_quiet(max_s):
    """Wait up to max_s seconds for the machine to be quiet (other work below
    BUSY_WARN over a few seconds); returns the last busy share seen."""
    deadline = time.monotonic() + max_s
    quiet_for, busy, told = 0, busy_share(), False
    while busy is not None and max_s > 0:
        quiet_for = quiet_for + 1 if busy < BUSY_WARN else 0
        if quiet_for >= 3 or time.monotonic() >= deadline:
            break
        if busy >= BUSY_WARN and not told:
            log(f"  other work keeps {100 * busy:.0f}% of the CPUs busy; waiting up to {max_s:.0f} s for quiet ...")
            told = True
        busy = busy_share(1.0)
    return busy


def source_info():
    """The checkout's commit and whether it has changes, and the library's
    modification time: what the pyffi numbers were measured on."""
    info = {}
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode == 0:
            info["git_commit"] = head.stdout.strip()
            st = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
            info["git_dirty"] = bool(st.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    lib = library_path()
    if lib is not None:
        info["library"] = str(lib)
        info["library_mtime"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(lib.stat().st_mtime))
    return info


def machine_info(threads):
    cpu, flags = None, []
    try:
        for line in open("/proc/cpuinfo"):
            if cpu is None and line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if not flags and line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                                     "avx512_bf16", "avx_vnni", "amx_int8") if f in have]
    except OSError:
        pass
    mem = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"cpu": cpu or platform.processor() or platform.machine(), "cpu_flags": flags,
            "logical_cpus": os.cpu_count(), "mem_bytes": mem, "threads": threads,
            "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(), "platform": platform.platform()}


def level_split(report):
    """The bandwidth (GB/s) between this session's two probe levels, or None.
    This machine's read bandwidth jumps between two levels (about 35 and 62
    GB/s with 2 threads): a decode run met one or the other, and a ratio of
    two engines' medians can set one engine's slow runs against the other's
    fast ones. The split is the midpoint of the lowest and highest reading
    of the runs' own probes, when the highest is LEVEL_GAP times the lowest
    or more (else there was one level)."""
    return split_of([x for c in report["results"] for t in (c.get("tests") or {}).values()
                     for p in t.get("probe_gb_per_s") or [] for x in p or []])


def split_of(readings):
    """`level_split`'s rule on probe readings (None for a missing one)."""
    seen = [x for x in readings if x]
    if not seen or max(seen) < LEVEL_GAP * min(seen):
        return None
    return (min(seen) + max(seen)) / 2


def run_level(probes, split):
    """'slow' or 'fast' for a run whose probes just before and after it both
    read below or both at or above `split`; None if they disagree (the level
    changed during the run) or are missing."""
    if split is None or not probes or None in probes:
        return None
    if max(probes) < split:
        return "slow"
    if min(probes) >= split:
        return "fast"
    return None


def summarize(report):
    """Fill in medians, ratios and bandwidth shares from the raw times (in place)."""
    tests = report["config"]["tests"]
    split = level_split(report)
    report["level_split_gb_per_s"] = split
    bw = report.get("bandwidth_probe", {}).get("gb_per_s")
    peak = report.get("fma_probe", {}).get("gflop_per_s")
    kv_pos = report["config"]["kv_bytes_per_position"]
    by_type = report.get("bandwidth_probe_by_type") or {}
    for cell in report["results"]:
        facts = report["models"].get(cell["type"], {})
        cell_bw = (by_type.get(cell["type"]) or {}).get("gb_per_s") or bw
        summary = {}
        for name in tests:
            t = (cell.get("tests") or {}).get(name)
            if not t:
                continue
            rate = tokens_per_s(t["n_tokens"], t["times_s"])
            runs = [t["n_tokens"] / x for x in t["times_s"] if x > 0]
            s = {"tok_s": rate, "runs_tok_s": runs, "spread": max(runs) / min(runs) if runs else None}
            if name.startswith("tg") and rate and facts.get("weight_bytes_per_token"):
                per_tok = decode_bytes_per_token(facts["weight_bytes_per_token"], kv_pos, t["first_pos"],
                                                 t["n_tokens"])
                s["bytes_per_token"] = per_tok
                s["gb_per_s"] = per_tok * rate / 1e9
                s["bw_share"] = s["gb_per_s"] / cell_bw if cell_bw else None
                # Each run against the higher of the probes just before and
                # after it: the bandwidth moves between runs.
                shares = [per_tok * t["n_tokens"] / x / 1e9 / max(p)
                          for x, p in zip(t["times_s"], t.get("probe_gb_per_s") or [])
                          if x > 0 and p and None not in p and max(p) > 0]
                if shares and len(shares) == len(t["times_s"]):
                    s["bw_shares"] = shares
                    s["bw_share"] = statistics.median(shares)
                if split is not None:
                    levels = {}
                    for x, p in zip(t["times_s"], t.get("probe_gb_per_s") or []):
                        lv = run_level(p, split)
                        if lv and x > 0:
                            levels.setdefault(lv, []).append(t["n_tokens"] / x)
                    s["runs_tok_s_by_level"] = levels
            if t.get("profiles"):
                s["profile"] = profile_shares(t["profiles"])
            if name.startswith("pp") and rate:
                s["gflop_per_s"] = prefill_flops_per_token(report["config"]["shape"], t["n_tokens"]) * rate / 1e9
                s["fma_share"] = s["gflop_per_s"] / peak if peak else None
            summary[name] = s
        cell["summary"] = summary
    ratios = {}
    by = {(c["type"], c["engine"]): c for c in report["results"]}
    for typ in report["config"]["types"]:
        ours, theirs = by.get((typ, "pyffi")), by.get((typ, "llama.cpp"))
        if not ours or not theirs:
            continue
        r = {}
        for name in tests:
            r[name] = ratio((ours["summary"].get(name) or {}).get("tok_s"),
                            (theirs["summary"].get(name) or {}).get("tok_s"))
        # Decode, each level's runs against the other engine's at the same level.
        by_level = {}
        for name in tests:
            mine = (ours["summary"].get(name) or {}).get("runs_tok_s_by_level") or {}
            other = (theirs["summary"].get(name) or {}).get("runs_tok_s_by_level") or {}
            for lv in ("slow", "fast"):
                if mine.get(lv) and other.get(lv):
                    by_level.setdefault(name, {})[lv] = {
                        "ratio": ratio(median(mine[lv]), median(other[lv])),
                        "runs": [len(mine[lv]), len(other[lv])]}
        if by_level:
            r["by_level"] = by_level
        r["load_time"] = ratio(ours.get("load_s"), theirs.get("load_s"))
        loaded = ours.get("load_s") is not None and theirs.get("load_s") is not None
        r["peak_rss"] = ratio(ours.get("peak_rss_bytes"), theirs.get("peak_rss_bytes")) if loaded else None
        ratios[typ] = r
    report["ratios"] = ratios
    for cell in report["results"]:
        # Issue 5's memory bound: the file, the KV cache of the session's
        # context (f16), and RSS_SLACK more.
        size = report["models"].get(cell["type"], {}).get("file_bytes")
        n_ctx = (cell.get("info") or {}).get("n_ctx")
        if cell["engine"] == "pyffi" and size and n_ctx and cell.get("peak_rss_bytes"):
            cell["rss_bound_bytes"] = (1 + RSS_SLACK) * (size + kv_pos * n_ctx)
    for cell in report["results"] + [(report.get("overhead") or {}).get("python") or {}]:
        st = cell.get("streaming")
        if st and st.get("plain_s"):
            for k in ("callback", "stream"):
                if st.get(k + "_s"):
                    # Each run against the plain run of its round (next to
                    # it in time), the median of those ratios: the machine's
                    # pace drifts by more than the few percent compared.
                    st[k + "_over_plain"] = median([x / p for x, p in zip(st[k + "_s"], st["plain_s"])])
    oh = report.get("overhead")
    if oh and "python" in oh and "c" in oh:
        py, c = oh["python"].get("ns_per_call"), oh["c"].get("ns_per_call")
        if py is not None and c is not None:
            # The worker's median of per-round differences; else the medians'.
            oh.setdefault("python_minus_c_ns", py - c)
            oh["python_over_c"] = ratio(py, c)
    report["targets"] = targets(report)
    return report


def targets(report):
    """Issue 5's targets against this run (`summarize`'s numbers), one entry
    each: `group` (what is judged), `name` (the model or test), `value`,
    `bound` (both in `unit`), `at_least` and `met` (None when the run has no value: an
    error, a test or probe not run). A target is met when `value >= bound`
    (`at_least`: ratios, shares) or `value <= bound` (overhead, callback,
    memory), judged before rounding."""
    cfg, out = report["config"], []
    tests = cfg["tests"]
    pp = next((t for t in tests if t.startswith("pp")), None)
    tg = next((t for t in tests if t.startswith("tg") and "@" not in t), None)
    by = {(c["type"], c["engine"]): c for c in report["results"]}

    def add(group, unit, name, value, bound, at_least):
        met = None if value is None or bound is None else (value >= bound if at_least else value <= bound)
        out.append({"group": group, "unit": unit, "name": name, "value": value, "bound": bound,
                    "at_least": at_least, "met": met})

    for test, goal, what in ((tg, DECODE_TARGET, "decode"), (pp, PREFILL_TARGET, "prefill")):
        for typ in cfg["types"]:
            if test and typ in goal:
                r = (report.get("ratios") or {}).get(typ) or {}
                add(f"{what} {test}, pyffi / llama.cpp", "ratio", typ, r.get(test), goal[typ], True)
    for typ in cfg["types"]:
        sm = (by.get((typ, "pyffi")) or {}).get("summary") or {}
        for test in tests:
            if test.startswith("tg"):
                add("decode, pyffi's share of the read-bandwidth probe", "share", f"{typ} {test}",
                    (sm.get(test) or {}).get("bw_share"), BW_SHARE_TARGET, True)
    oh = report.get("overhead")
    if oh is not None:
        add("one-token forward, Python's time over the same call from C", "ns", oh.get("model_name", "overhead"),
            oh.get("python_minus_c_ns"), OVERHEAD_TARGET_NS, False)
    streams = [(typ, (by.get((typ, "pyffi")) or {}).get("streaming") or {}) for typ in cfg["types"]]
    if oh is not None:
        streams.append((oh.get("model_name", "overhead"), (oh.get("python") or {}).get("streaming") or {}))
    for name, st in streams:
        add("generate with a Python callback per token, time over plain generate", "over", name,
            st.get("callback_over_plain"), CALLBACK_TARGET, False)
    for typ in cfg["types"]:
        c = by.get((typ, "pyffi")) or {}
        add("peak RSS, pyffi's within its file + its f16 KV cache + 10%", "bytes", typ,
            c.get("peak_rss_bytes") if c.get("rss_bound_bytes") else None, c.get("rss_bound_bytes"), False)
    return out


def _target_value(unit, value, extra=0):
    """A target's value or bound as the table shows it (`extra` more digits)."""
    if value is None:
        return "?"
    if unit == "ratio":
        return f"{value:.{2 + extra}f}x"
    if unit == "share":
        return f"{100 * value:.{extra}f}%"
    if unit == "ns":
        return f"{value / 1e3:.{1 + extra}f} us"
    if unit == "bytes":
        return f"{value / 2**20:.{extra}f} MiB"
    return f"{100 * (value - 1):+.{1 + extra}f}%"  # "over": one time against another


def format_targets(report):
    """The lines that judge issue 5's targets (`targets`), one per group:
    each value, how it compares with its bound, and the verdict."""
    ts = report.get("targets") or []
    if not ts:
        return []
    met = sum(1 for t in ts if t["met"])
    lines = [f"issue 5's targets on this run: {met} of {len(ts)} met"
             + ("" if report["config"]["shape"] == FULL_SHAPE else
                f" (they are set for {FULL_SHAPE}; this run is {report['config']['shape']})")]
    groups = {}
    for t in ts:
        groups.setdefault(t["group"], []).append(t)
    for group, items in groups.items():
        cells = []
        for t in items:
            bound = _target_value(t["unit"], t["bound"])
            if t["met"] is None:
                cells.append(f"{t['name']} not measured (bound {bound})")
                continue
            op = (">=" if t["met"] else "<") if t["at_least"] else ("<=" if t["met"] else ">")
            verdict = "met" if t["met"] else "NOT MET"
            # More digits where the rounded value would read as the bound.
            extra = 0
            while extra < 4 and t["value"] != t["bound"] and _target_value(
                    t["unit"], t["value"], extra) == _target_value(t["unit"], t["bound"], extra):
                extra += 1
            value, bound = (_target_value(t["unit"], x, extra) for x in (t["value"], t["bound"]))
            cells.append(f"{t['name']} {value} {op} {bound} {verdict}")
        lines.append(f"- {group}: " + ", ".join(cells))
    return lines


def profile_shares(runs):
    """Median over decode runs of `pyffi.profile.shares` (the calling
    thread's shares of a token alone between jobs, quantizing, waiting)."""
    from pyffi.profile import shares
    each = [shares(p) for p in runs if p.get("forward_ns")]
    return {k: statistics.median(s[k] for s in each) if each else None for k in ("alone", "quantize", "wait")}


def _pct(x):
    return "?" if x is None else f"{100 * x:.1f}%"


def _short(msg, n=70):
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= n else msg[:n - 3] + "..."


def _with_share(x, key, share_key, digits):
    """A rate and its share of a probe, as "55.5 (42%)"."""
    x = x or {}
    if x.get(key) is None:
        return "-"
    share = x.get(share_key)
    return f"{x[key]:.{digits}f}" + (f" ({100 * share:.0f}%)" if share else "")


def format_table(report):
    cfg = report["config"]
    tests = cfg["tests"]
    m = report["machine"]
    lines = []
    s = SHAPES[cfg["shape"]]
    lines.append(f"model: {cfg['shape']} (dim {s['dim']}, {s['layers']} layers, {s['heads']} q-heads, "
                 f"{s['kv_heads']} kv-heads, ffn {s['ffn']}, vocab {s['vocab']}), random weights")
    lines.append(f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs; threads {cfg['threads']}; "
                 f"median of {cfg['reps']} runs after a warm-up")
    probe = report.get("bandwidth_probe", {})
    if "gb_per_s" in probe:
        lines.append(f"read bandwidth probe ({probe['threads']} threads, {probe['buffer_mib']} MiB): "
                     f"{probe['gb_per_s']:.1f} GB/s")
    else:
        lines.append(f"read bandwidth probe: error: {probe.get('error')}")
    by_type = report.get("bandwidth_probe_by_type") or {}
    if by_type:
        def around(p):
            rates = [(p.get(k) or {}).get("gb_per_s") for k in ("before", "after")]
            return " / ".join("-" if r is None else f"{r:.1f}" for r in rates)
        lines.append("read bandwidth probe before / after each type's runs, GB/s (where a run has no probes "
                     "of its own, its % probe counts against the higher): " + ", ".join(f"{t} {around(p)}" for t, p in by_type.items()))
    fma = report.get("fma_probe", {})
    if "gflop_per_s" in fma:
        lines.append(f"float32 multiply-add probe ({fma['threads']} threads): {fma['gflop_per_s']:.1f} GFLOP/s")
    elif fma:
        lines.append(f"float32 multiply-add probe: error: {fma.get('error')}")
    lines.append("")
    tg_names = [t for t in tests if t.startswith("tg")]
    pp_names = [t for t in tests if t.startswith("pp")]
    head = ["type", "engine", "load s", "peak RSS MiB"] + [f"{t} t/s" for t in tests] + \
        [f"{t} GB/s (% probe)" for t in tg_names] + [f"{t} GFLOP/s (% FMA)" for t in pp_names]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    errors = []
    spread_seen = False
    by = {(c["type"], c["engine"]): c for c in report["results"]}
    for typ in cfg["types"]:
        for eng in cfg["engines"]:
            c = by.get((typ, eng))
            if c is None:
                continue
            if c.get("error") and not c.get("summary"):
                errors.append(f"{typ} / {eng}: {c['error']}")
                loaded = c.get("load_s") is not None
                row = [typ, eng, f"{c['load_s']:.2f}" if loaded else "-",
                       _mib(c.get("peak_rss_bytes")) if loaded else "-"] + \
                    [f"error [{len(errors)}]"] * len(tests) + ["-"] * (len(tg_names) + len(pp_names))
            else:
                sm = c["summary"]
                bd = max((c.get(k) or 0) for k in ("busy_before", "busy_during"))
                row = [typ, eng + (f" (busy {100 * bd:.0f}%)" if bd > BUSY_WARN else ""),
                       f"{c['load_s']:.2f}" if c.get("load_s") is not None else "-",
                       _mib(c.get("peak_rss_bytes"))]
                for t in tests:
                    x = sm.get(t) or {}
                    noisy = (x.get("spread") or 1) > SPREAD_WARN
                    spread_seen |= noisy
                    row.append(fmt_rate(x.get("tok_s")) + (" ~" if noisy else ""))
                row += [_with_share(sm.get(t), "gb_per_s", "bw_share", 1) for t in tg_names]
                row += [_with_share(sm.get(t), "gflop_per_s", "fma_share", 0) for t in pp_names]
                if c.get("error"):
                    errors.append(f"{typ} / {eng}: {c['error']}")
            lines.append("| " + " | ".join(row) + " |")
        r = report["ratios"].get(typ)
        if r:
            row = [typ, "**pyffi / llama.cpp**", fmt_ratio(r.get("load_time")), fmt_ratio(r.get("peak_rss"))]
            row += [f"**{fmt_ratio(r.get(t))}**" for t in tests] + ["" for _ in tg_names + pp_names]
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("t/s: tokens per second (median); ratio row: pyffi / llama.cpp, above 1 means pyffi is faster "
                 "for t/s, slower to load or bigger for load s and RSS.")
    if spread_seen:
        lines.append(f"~: the fastest run was over {SPREAD_WARN}x the slowest (noisy; see the JSON for every run).")
    lines.append("GB/s: weight bytes as stored in the file plus an f16 KV cache, read per decoded token, times "
                 "tokens per second; % probe: each run's rate against the higher of the read-bandwidth probes "
                 "just before and just after it, the median over the runs.")
    if pp_names:
        lines.append("GFLOP/s: the prompt's floating-point operations (2 per multiply-add of the matmuls and of "
                     "attention) per second, whatever the number type; % of the float32 multiply-add probe, the "
                     "ceiling for F16 weights computed in float32.")
    bounds = [(c["type"], c["peak_rss_bytes"], c["rss_bound_bytes"], c["info"]["n_ctx"])
              for c in report["results"] if c.get("rss_bound_bytes")]
    if bounds:
        lines.append(f"pyffi's peak RSS against the file + its f16 KV cache (n_ctx {bounds[0][3]}) + "
                     f"{100 * RSS_SLACK:.0f}%: " + ", ".join(
                         f"{typ} {_mib(rss)} / {_mib(bound)} MiB" + ("" if rss <= bound else " (over)")
                         for typ, rss, bound, _ in bounds))
    profiled = [(c["type"], name, x["profile"]) for c in report["results"] if c["engine"] == "pyffi"
                for name, x in (c.get("summary") or {}).items() if x.get("profile")]
    if profiled:
        lines.append("pyffi's decode, the calling thread's share of a token alone between jobs (of which quantizing "
                     "matmul inputs) / waiting at the jobs' ends, median of the runs (`python -m pyffi profile`): "
                     + ", ".join(f"{typ} {name} {_pct(p['alone'])} ({_pct(p['quantize'])}) / {_pct(p['wait'])}"
                                 for typ, name, p in profiled))
    levelled = [(typ, name, lv, x) for typ, r in report.get("ratios", {}).items()
                for name, levels in (r.get("by_level") or {}).items() for lv, x in levels.items()]
    if levelled:
        lines.append(f"decode, pyffi / llama.cpp with both engines' runs at the same bandwidth level (both probes of "
                     f"a run below or both above {report['level_split_gb_per_s']:.0f} GB/s; medians; runs pyffi/"
                     "llama.cpp): " + ", ".join(f"{typ} {name} {lv} {fmt_ratio(x['ratio'])} ({x['runs'][0]}/"
                                                f"{x['runs'][1]})" for typ, name, lv, x in levelled))
    shares = [(x.get("bw_share") or 0) for c in report["results"] for x in (c.get("summary") or {}).values()]
    if shares and max(shares) > 1:
        lines.append("Over 100%: the weights partly stay in the CPU's caches between tokens (a small model), "
                     "or the probe was disturbed.")
    oh = report.get("overhead")
    if oh:
        lines.append("")
        py, c = oh.get("python", {}), oh.get("c", {})
        if "ns_per_call" in py and "ns_per_call" in c:
            bindings = f", {oh['bindings']} bindings" if oh.get("bindings") else ""
            lines.append(f"per-call overhead, one-token forward on {oh['model_name']} ({oh['threads']} thread(s){bindings}): "
                         f"Python {py['ns_per_call'] / 1e3:.1f} us, C {c['ns_per_call'] / 1e3:.1f} us "
                         "(medians; rounds alternating in one process, on one session), "
                         f"Python adds {oh['python_minus_c_ns'] / 1e3:.1f} us per call "
                         f"(median of the rounds' differences; {oh['python_over_c']:.2f}x)"
                         # Python's call is the C call and more: below it, the machine changed pace.
                         + (" -- not a reading: the C calls took longer than the Python ones, which make "
                            "them, so the machine's pace changed between the two (run again)"
                            if oh["python_minus_c_ns"] < 0 else ""))
        else:
            lines.append(f"per-call overhead: error: {oh.get('error') or py.get('error') or c.get('error')}")
    streams = [(c["type"], c["streaming"]) for c in report["results"] if c.get("streaming")]
    if oh and (oh.get("python") or {}).get("streaming"):
        streams.append((oh["model_name"], oh["python"]["streaming"]))
    for key, what in (("callback", "generate with a Python callback per token (callback=)"),
                      ("stream", "generate as an iterator (stream=True, one C step per token)")):
        cells = [f"{name} {st['n_tokens']} tokens {100 * (st[key + '_over_plain'] - 1):+.1f}%"
                 for name, st in streams if st.get(key + "_over_plain")]
        if cells:
            lines.append(f"{what} against plain generate (greedy; median over {STREAM_REPS} rounds, in rotated "
                         "order, of each run against the round's plain run): "
                         + ", ".join(cells))
    judged = format_targets(report)
    if judged:
        lines.append("")
        lines += judged
    busy = [c.get(k) for c in report["results"] + [probe, oh or {}] for k in ("busy_before", "busy_during")
            if c.get(k) is not None]
    if busy and max(busy) > BUSY_WARN:
        lines.append("")
        lines.append(f"warning: other work kept up to {100 * max(busy):.0f}% of the CPUs busy before or during "
                     "some runs; these numbers are unreliable (run again on a quiet machine)")
    if errors:
        lines.append("")
        for i, e in enumerate(errors, 1):
            lines.append(f"[{i}] {e}")
    return "\n".join(lines)


def _mib(b):
    return "-" if b is None else f"{b / 2**20:.0f}"


# --------------------------------------------------------------------------
# Main

def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="pyffi bench",
        description="pyffi against llama.cpp on seeded random-weight GGUF models, llama-bench style.",
        epilog="`pyffi bench ab MODEL LIB_A LIB_B`: one-token decode with two builds of libpyffi.so, "
               "by bandwidth level (see `pyffi bench ab --help`).")
    p.add_argument("--quick", action="store_true",
                   help=f"the small shape ({QUICK_SHAPE}), types {','.join(QUICK_TYPES)}: a few minutes")
    p.add_argument("--shape", choices=sorted(SHAPES), default=None,
                   help=f"model shape (default {FULL_SHAPE}; {QUICK_SHAPE} with --quick)")
    p.add_argument("--types", default=None,
                   help=f"comma-separated, from {','.join(TYPES)} (default: all; {','.join(QUICK_TYPES)} with --quick)")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: llama.cpp,pyffi")
    p.add_argument("--threads", type=int, default=2, help="threads for both engines (default 2)")
    p.add_argument("--reps", type=int, default=3, help="timed runs per test, after one warm-up (default 3)")
    p.add_argument("--n-prompt", type=int, default=512, help="prompt length of the pp test (default 512)")
    p.add_argument("--n-gen", type=int, default=128, help="steps of the tg tests (default 128)")
    p.add_argument("--depth", type=int, default=512, help="prompt before the second tg test (default 512)")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="also write the report as JSON to PATH (no PATH: JSON on stdout, the table on stderr)")
    p.add_argument("--no-install", action="store_true",
                   help=f"don't pip-install missing {GGUF_PIN} / {LLAMA_CPP_PIN}")
    p.add_argument("--no-probe", action="store_true", help="skip the read-bandwidth probe")
    p.add_argument("--no-overhead", action="store_true", help="skip the Python-vs-C per-call overhead")
    p.add_argument("--overhead-threads", type=int, default=1,
                   help="threads for the per-call overhead test on the tiny model (default 1: the pool's "
                        "wake-ups would be noise in both)")
    p.add_argument("--wait-quiet", type=float, default=60, metavar="S",
                   help="before each run, wait up to S seconds for other work on the machine to stop "
                        "(default 60; the table warns when it did not)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per engine run before it is an error (default 600 with --quick, else 7200)")
    a = p.parse_args(argv)
    a.shape = a.shape or (QUICK_SHAPE if a.quick else FULL_SHAPE)
    a.timeout = a.timeout or (600 if a.quick else 7200)
    a.types = [t.strip().lower() for t in a.types.split(",")] if a.types else \
        list(QUICK_TYPES if a.quick else TYPES)
    bad = [t for t in a.types if t not in TYPES]
    if bad:
        p.error(f"unknown type(s) {', '.join(bad)}; choose from {', '.join(TYPES)}")
    a.engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    bad = [e for e in a.engines if e not in ENGINES]
    if bad:
        p.error(f"unknown engine(s) {', '.join(bad)}; choose from {', '.join(ENGINES)}")
    for name in ("threads", "reps", "n_prompt", "n_gen", "depth", "overhead_threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return a


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ab"]:
        from . import bench_ab  # two builds of pyffi against each other
        return bench_ab.main(argv[1:])
    if "--worker" in argv:
        return worker_main(argv)
    a = parse_args(argv)
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tests = list(test_names(a.n_prompt, a.n_gen, a.depth))
    report = {
        "schema": SCHEMA,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_info(a.threads),
        "source": source_info(),
        "config": {"shape": a.shape, "shape_params": SHAPES[a.shape], "types": a.types, "engines": a.engines,
                   "threads": a.threads, "reps": a.reps, "tests": tests, "n_prompt": a.n_prompt,
                   "n_gen": a.n_gen, "depth": a.depth, "seed": SEED, "quick": a.quick,
                   "kv_bytes_per_position": kv_bytes_per_position(a.shape), "cache_dir": str(cache)},
        "models": {}, "results": [],
    }

    llama_missing = None
    if "llama.cpp" in a.engines or "q4_k_m" in a.types:
        llama_missing = ensure_package("llama_cpp", LLAMA_CPP_PIN, not a.no_install,
                                       "the reference engine; builds llama.cpp, 10+ minutes on 2 cores")

    for typ in a.types:
        try:
            path = ensure_model(a.shape, typ, a.threads, cache, not a.no_install)
            report["models"][typ] = {"path": str(path), **model_facts(path)}
        except Exception as e:
            report["models"][typ] = {"error": f"{type(e).__name__}: {e}"}
            log(f"{typ}: no model: {e}")

    if not a.no_probe:
        log(f"read-bandwidth probe, {a.threads} threads ...")
        busy = wait_quiet(a.wait_quiet)
        report["bandwidth_probe"] = bandwidth_probe(a.threads, cache)
        report["bandwidth_probe"]["busy_before"] = busy
        log(f"float32 multiply-add probe, {a.threads} threads ...")
        report["fma_probe"] = fma_probe(a.threads, cache)
    else:
        report["bandwidth_probe"] = {"error": "skipped (--no-probe)"}
        report["fma_probe"] = {"error": "skipped (--no-probe)"}

    for typ in a.types:
        m = report["models"][typ]
        if "error" in m:
            for eng in a.engines:
                report["results"].append({"type": typ, "engine": eng, "error": f"no model: {m['error']}"})
            continue
        warm_page_cache(Path(m["path"]))
        runnable = [e for e in a.engines if not (e == "llama.cpp" and llama_missing)]
        log(f"{typ}: {', '.join(runnable) or 'no engine'}, run by run in turn ...")
        busy = wait_quiet(a.wait_quiet)
        if busy is not None and busy > BUSY_WARN:
            log(f"  running anyway; other work keeps {100 * busy:.0f}% of the CPUs busy")
        # This VM's memory bandwidth moves between two levels about 2x apart
        # from minute to minute: each decode run's share counts against the
        # probes run just before and after it (these two frame the type).
        around = [bandwidth_probe(a.threads, cache, mib=512, passes=6)] if not a.no_probe else []
        probe = None if a.no_probe else (
            lambda: bandwidth_probe(a.threads, cache, mib=RUN_PROBE_MIB, passes=3).get("gb_per_s"))
        ran = dict(zip(runnable, run_engines(runnable, m["path"], a, timeout=a.timeout,
                                             extra=("--vocab", str(SHAPES[a.shape]["vocab"])),
                                             probe=probe))) if runnable else {}
        if not a.no_probe:
            around.append(bandwidth_probe(a.threads, cache, mib=512, passes=6))
            rates = [p["gb_per_s"] for p in around if "gb_per_s" in p]
            report.setdefault("bandwidth_probe_by_type", {})[typ] = {
                "before": around[0], "after": around[1], "gb_per_s": max(rates) if rates else None}
        for eng in a.engines:
            res = ran.get(eng) or {"engine": eng, "error": llama_missing}
            res["busy_before"] = busy
            res["type"] = typ
            report["results"].append(res)
            if res.get("error"):
                log(f"  {typ} / {eng}: error: {_short(res['error'], 200)}")
            else:
                t = res["tests"]
                log(f"  {eng}: " + ", ".join(f"{k} {tokens_per_s(v['n_tokens'], v['times_s']):.1f} t/s"
                                             for k, v in t.items()) + f" (load {res['load_s']:.2f} s)")
        bd = next((r.get("busy_during") for r in ran.values()), None)
        if bd is not None and bd > BUSY_WARN:
            log(f"  other work kept {100 * bd:.0f}% of the CPUs busy during those runs")

    if not a.no_overhead and "pyffi" in a.engines:
        tiny = overhead_model()
        if tiny is None:
            report["overhead"] = {"error": "no tiny model found (stories260K or fixtures/demo)"}
        else:
            report["overhead"] = measure_overhead(tiny, a, cache)

    report["elapsed_s"] = time.time() - started
    summarize(report)
    table = format_table(report)
    text = json.dumps(report, indent=2)
    if a.json == "-":
        print(table, file=sys.stderr)
        print(text)
    else:
        print(table)
        if a.json:
            Path(a.json).write_text(text + "\n")
            log(f"JSON report written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
