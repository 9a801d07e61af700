"""The quantizer: blocks byte-identical to the references (the `gguf`
package for Q8_0/Q4_0/Q4_1, llama.cpp's own quantizer for the k-quants, as
found in the fixtures), dequantization equal to the `gguf` package's, and
files that load back (in pyffi, and in llama.cpp when it is installed)."""

import subprocess
import sys

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import pyffi
from conftest import FIXTURES, REPO, golden, model_dir, rel_err

GGUF_TYPES = {"q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_1": T.Q4_1, "q4_k": T.Q4_K, "q5_k": T.Q5_K, "q6_k": T.Q6_K}


def tensors(path):
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def raw(t):
    return np.frombuffer(t.data.tobytes(), dtype=np.uint8)


# -- rows ---------------------------------------------------------------------

EDGE_ROWS = [
    np.zeros(64, np.float32),                                   # all-zero blocks
    np.full(64, 3.5, np.float32),                                # constant blocks
    np.tile(np.arange(-16, 16, dtype=np.float32) / 2, 2),        # ties at .5 steps
    np.r_[np.full(31, 0.001, np.float32), np.float32(-5.0), np.linspace(-1, 1, 32, dtype=np.float32)],
    # Scales that underflow: 1/d overflows to inf (the references then store 0s).
    np.r_[np.full(16, 1.1754944e-38, np.float32), np.full(16, -3e-39, np.float32), np.zeros(32, np.float32)],
]


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1"])
def test_32_value_blocks_are_byte_identical_to_the_gguf_package(qtype):
    rng = np.random.default_rng(3)
    rows = EDGE_ROWS + [rng.standard_normal(4096).astype(np.float32) * s for s in (1e-3, 1.0, 300.0)]
    for x in rows:
        ours = pyffi.quantize_row(x, qtype)
        with np.errstate(all="ignore"):
            ref = quants.quantize(x.reshape(1, -1), GGUF_TYPES[qtype]).reshape(-1)
        np.testing.assert_array_equal(ours, ref)


@settings(max_examples=60, deadline=None)
@example(np.full(64, -0.0, np.float32))
@example(np.array([-0.0] + [0.0] * 31, np.float32))
@example(np.array([-0.0, 0.0, 1.0] + [0.0] * 29, np.float32))
@given(hnp.arrays(np.float32, st.integers(1, 8).map(lambda n: 32 * n),
                  elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=False)))
def test_32_value_blocks_match_the_gguf_package_on_any_data(x):
    for qtype in ("q8_0", "q4_0", "q4_1"):
        with np.errstate(all="ignore"):
            ref = quants.quantize(x.reshape(1, -1), GGUF_TYPES[qtype]).reshape(-1)
        ours = pyffi.quantize_row(x, qtype)
        if qtype == "q4_0":
            # A block of zeros has scale max / -8 = 0 with a sign: ggml's C
            # (which we follow) always gets -0 (0.0f / -8), the gguf package
            # takes the sign of the block's first value. Both decode to zeros.
            zero = ~x.reshape(-1, 32).any(axis=1)
            for a in (ours, ref):
                a.reshape(-1, 18)[zero, 1] &= 0x7F
        if qtype == "q4_1":
            # A block whose smallest value is a zero: ggml's C (which we
            # follow) keeps the first of its smallest values as the min, -0 if
            # that is -0; the gguf package takes numpy's min, +0 here. The
            # min's sign is the top bit of the block's byte 3; both decode alike.
            zero_min = x.reshape(-1, 32).min(axis=1) == 0
            for a in (ours, ref):
                a.reshape(-1, 20)[zero_min, 3] &= 0x7F
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("qtype", list(GGUF_TYPES))
def test_dequantize_matches_the_gguf_package(qtype):
    """Every block format of the fixtures (written by the gguf package and by
    llama.cpp), decoded by us and by the gguf package."""
    seen = False
    for path in sorted((FIXTURES / "gguf").glob("small-llama-256-*.gguf")):
        for t in tensors(path).values():
            if t.tensor_type != GGUF_TYPES[qtype]:
                continue
            seen = True
            n = int(np.prod(t.shape))
            ours = pyffi.dequantize_row(raw(t), qtype, n)
            ref = quants.dequantize(raw(t), t.tensor_type).reshape(-1)
            np.testing.assert_array_equal(ours, ref.astype(np.float32))
    if qtype in ("q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k"):
        assert seen, f"no {qtype} tensor in the fixtures"


def test_round_trip_error_is_within_each_formats_bound():
    x = np.random.default_rng(5).standard_normal(8192).astype(np.float32)
    limits = {"q8_0": 0.01, "q6_k": 0.03, "q5_k": 0.045, "q4_k": 0.09, "q4_1": 0.1, "q4_0": 0.12}
    for qtype, limit in limits.items():
        back = pyffi.dequantize_row(pyffi.quantize_row(x, qtype), qtype, x.size)
        assert np.sqrt(np.mean((back - x) ** 2)) / np.sqrt(np.mean(x ** 2)) <= limit, qtype


def test_row_functions_refuse_bad_input():
    with pytest.raises(ValueError, match="q9_9"):
        pyffi.quantize_row(np.zeros(32, np.float32), "q9_9")
    with pytest.raises(ValueError, match="multiple of 256"):
        pyffi.quantize_row(np.zeros(32, np.float32), "q4_k")
    with pytest.raises(ValueError, match="bytes"):
        pyffi.dequantize_row(np.zeros(10, np.uint8), "q8_0", 32)


# -- files --------------------------------------------------------------------

# Our quantizer on small-llama-256-f32.gguf against llama.cpp's on the same
# file (the fixtures): every tensor both put in the same format must be the
# same bytes. (llama.cpp's _M mixes choose Q6_K for some layers; ours don't.)
LLAMA_CPP_FILES = {"q4_1": "q4_1", "q4_k": "q4_k_m", "q5_k": "q5_k_m", "q6_k": "q6_k"}


@pytest.mark.parametrize("qtype", list(LLAMA_CPP_FILES))
def test_k_quant_files_are_byte_identical_to_llama_cpps_quantizer(qtype, tmp_path):
    out = tmp_path / "out.gguf"
    pyffi.quantize(FIXTURES / "gguf" / "small-llama-256-f32.gguf", out, qtype)
    ours = tensors(out)
    ref = tensors(FIXTURES / "gguf" / f"small-llama-256-{LLAMA_CPP_FILES[qtype]}.gguf")
    assert set(ours) == set(ref)
    compared = 0
    for name, t in ref.items():
        if t.tensor_type == ours[name].tensor_type and t.tensor_type == GGUF_TYPES.get(qtype, None):
            np.testing.assert_array_equal(raw(ours[name]), raw(t), err_msg=name)
            compared += 1
    assert ours["output.weight"].tensor_type == T.Q6_K and raw(ours["output.weight"]).tobytes() == raw(ref["output.weight"]).tobytes()
    assert compared >= 5, compared


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llama-tied-mha", "tiny-qwen2", "tiny-phi3"])
def test_hf_folder_to_f32_gguf_computes_the_same_function(name, tmp_path):
    """The converter's layout (names, llama's interleaved q/k rows, fused
    phi3 matrices, tied heads) is right if the file computes what the folder does."""
    out = tmp_path / "m.gguf"
    pyffi.quantize(model_dir(name), out, "f32")
    g = golden(name)
    with pyffi.Transformer.from_pretrained(out, kv_type="f32") as m:
        assert rel_err(m.forward([g["input_3"]])[0], g["logits_3"]) <= 1e-4


def test_quantize_while_loading_equals_loading_the_quantized_file(tmp_path):
    """from_pretrained(dtype=...) makes the same blocks as pyffi.quantize, so
    the two models compute the same logits (same KV type and rope arithmetic
    aside: the GGUF model rotates with ggml's angle recurrence)."""
    out = tmp_path / "q.gguf"
    pyffi.quantize(model_dir("small-llama-256"), out, "q4_k")
    g = golden("small-llama-256")
    with pyffi.Transformer.from_pretrained(model_dir("small-llama-256"), dtype="q4_k") as mem, \
            pyffi.Transformer.from_pretrained(out, kv_type="f32") as fil:
        a = mem.forward([g["input_1"]])[0]
        b = fil.forward([g["input_1"]])[0]
        assert rel_err(a, b) <= 2e-2
        np.testing.assert_array_equal(a[0], b[0])  # position 0: no rotation, identical arithmetic
        # And quantized is not float: it moved the logits by q4_k's typical amount.
        assert 1e-3 < rel_err(a, g["logits_1"]) < 0.5


def test_tokenizer_and_template_travel_with_the_file(tmp_path):
    out = tmp_path / "demo.gguf"
    pyffi.quantize(REPO / "fixtures" / "demo", out, "q8_0")
    hf_tok, gguf_tok = pyffi.Tokenizer(REPO / "fixtures" / "demo"), pyffi.Tokenizer(out)
    for text in ["The Python interpreter", "  spaces\tand\nnewlines", "naïve café — ünïcode 😀", ""]:
        assert gguf_tok.encode(text) == hf_tok.encode(text)
    again = tmp_path / "again.gguf"
    pyffi.quantize(out, again, "q4_0")  # GGUF to GGUF keeps all metadata
    meta = gguf.GGUFReader(again).fields
    assert meta["tokenizer.ggml.model"].contents() == "gpt2"
    assert meta["general.file_type"].contents() == 2
    assert pyffi.Tokenizer(again).encode("The Python interpreter") == hf_tok.encode("The Python interpreter")
    with pyffi.Llama(again) as llm:
        assert isinstance(llm.generate("The Python", max_new_tokens=4, temperature=0), str)


def test_chat_template_is_carried_over(tmp_path):
    import json
    import shutil
    folder = tmp_path / "chat"
    shutil.copytree(REPO / "fixtures" / "demo", folder)
    template = (FIXTURES / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    pyffi.quantize(folder, first, "q8_0")
    pyffi.quantize(first, second, "q4_0")
    for path in (first, second):
        assert gguf.GGUFReader(path).fields["tokenizer.chat_template"].contents() == template
    messages = [{"role": "user", "content": "hi"}]
    assert pyffi.Tokenizer(second).apply_chat_template(messages) == pyffi.Tokenizer(folder).apply_chat_template(messages)


def test_progress_reports_every_tensor_and_can_cancel(tmp_path):
    seen = []
    pyffi.quantize(model_dir("tiny-llama"), tmp_path / "a.gguf", "q8_0", progress=lambda d, t, n: seen.append((d, t, n)))
    total = seen[0][1]
    assert [d for d, _, _ in seen] == list(range(total + 1)) and seen[-1][2] == ""
    assert len(tensors(tmp_path / "a.gguf")) == total
    with pytest.raises(pyffi.CancelledError):
        pyffi.quantize(model_dir("tiny-llama"), tmp_path / "b.gguf", "q8_0", progress=lambda d, t, n: d < 3)
    assert not (tmp_path / "b.gguf").exists() and not list(tmp_path.glob("b.*"))

    def interrupt(d, t, n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pyffi.quantize(model_dir("tiny-llama"), tmp_path / "c.gguf", "q8_0", progress=interrupt)


def test_quantize_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        pyffi.quantize(tmp_path / "nope", tmp_path / "x.gguf", "q8_0")
    with pytest.raises(ValueError, match="qtype"):
        pyffi.quantize(model_dir("tiny-llama"), tmp_path / "x.gguf", "q3_xs")
    with pytest.raises(FileNotFoundError, match="no-such-dir/x.gguf"):
        pyffi.quantize(model_dir("tiny-llama"), tmp_path / "no-such-dir" / "x.gguf", "q8_0")
    with pytest.raises(ValueError, match="dtype"):
        pyffi.Transformer.from_pretrained(model_dir("tiny-llama"), dtype="int3")
    with pytest.raises(ValueError, match="progress"):
        pyffi.quantize(model_dir("tiny-llama"), tmp_path / "x.gguf", "q8_0", progress="yes")
    assert not (tmp_path / "x.gguf").exists()
    pyffi.quantize(model_dir("tiny-llama"), tmp_path / "quiet.gguf", "q8_0", progress=False)
    assert (tmp_path / "quiet.gguf").exists()


def test_save_lowbit_model(tmp_path):
    with pyffi.Transformer.from_pretrained(model_dir("tiny-qwen2")) as m:
        m.save_lowbit_model(tmp_path / "q.gguf", 8)
    assert {t.tensor_type for t in tensors(tmp_path / "q.gguf").values()} == {T.F32, T.Q8_0}
    import json
    with pyffi.Transformer(json.loads((model_dir("tiny-qwen2") / "config.json").read_text())) as m:
        with pytest.raises(pyffi.UnsupportedError, match="from_pretrained"):
            m.save_lowbit_model(tmp_path / "x.gguf")


def test_cli_quantize(tmp_path):
    out = tmp_path / "cli.gguf"
    r = subprocess.run([sys.executable, "-m", "pyffi", "quantize", str(model_dir("tiny-llama")), str(out),
                        "--type", "q4_0"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "tensors" in r.stderr and f"wrote {out}" in r.stdout
    assert T.Q4_0 in {t.tensor_type for t in tensors(out).values()}
    r = subprocess.run([sys.executable, "-m", "pyffi", "quantize", str(model_dir("tiny-llama")), str(out),
                        "--type", "q8_0", "--no-progress"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "tensors" not in r.stderr, r.stderr
    assert T.Q8_0 in {t.tensor_type for t in tensors(out).values()}
    r = subprocess.run([sys.executable, "-m", "pyffi", "quantize", str(tmp_path / "missing"), str(out)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1 and "no such file" in r.stderr


def test_llama_cpp_loads_our_files(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make bench installs it)")
    g = golden("small-llama-256")
    for qtype in ("f16", "q8_0", "q4_0", "q4_k", "q6_k"):
        out = tmp_path / f"{qtype}.gguf"
        pyffi.quantize(model_dir("small-llama-256"), out, qtype)
        llm = llama_cpp.Llama(model_path=str(out), n_ctx=128, logits_all=True, verbose=False, n_threads=2)
        llm.eval(list(map(int, g["input_1"])))
        theirs = np.array(llm.scores[:len(g["input_1"])], dtype=np.float32)
        with pyffi.Transformer.from_pretrained(out) as m:
            ours = m.forward([g["input_1"]])[0]
        # Same blocks, same arithmetic, as on llama.cpp's own files: its
        # roundings for Q8_0, Q4_0, Q4_K and Q6_K (0 here, on an x86
        # llama.cpp); float16 within issue 4's 5e-3.
        tolerance = {"f16": 5e-3}.get(qtype, 1e-4)
        assert rel_err(ours, theirs) <= tolerance, (qtype, rel_err(ours, theirs))
        assert (ours.argmax(-1) == theirs.argmax(-1)).all(), qtype


def test_llama_cpp_reads_our_tokenizer_and_generates_our_text(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make bench installs it)")
    out = tmp_path / "demo.gguf"
    pyffi.quantize(REPO / "fixtures" / "demo", out, "q8_0")
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=128, verbose=False, n_threads=2)
    tok = pyffi.Tokenizer(REPO / "fixtures" / "demo")
    for text in ["The Python interpreter", "naïve café 😀  x", "def f(x):\n\treturn x"]:
        assert llm.tokenize(text.encode(), add_bos=True) == tok.encode(text)
    theirs = llm("The Python", max_tokens=12, temperature=0)["choices"][0]["text"]
    with pyffi.Llama(out) as ours:
        assert ours.generate("The Python", max_new_tokens=12, temperature=0) == theirs
