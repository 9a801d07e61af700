"""Models from GGUF files: float files against llama.cpp's own logits (and
the f32 ones against transformers), since both engines then compute the same
function up to float rounding."""

import numpy as np
import pytest

import pyffi
from conftest import FIXTURES, golden, rel_err

FLOAT_FILES = sorted(p.stem for p in (FIXTURES / "gguf").glob("*.gguf") if p.stem.endswith(("-f32", "-f16")))
LLAMA_CPP_TOLERANCE = 5e-3  # issue 4: f32 and f16 within 5e-3 of llama.cpp (its KV cache is f16)


def test_float_files_are_covered():
    assert {"tiny-llama-f32", "tiny-llama-f16", "tiny-qwen2-f32", "tiny-phi3-f32", "small-llama-256-f32",
            "stories260K-f32"} <= set(FLOAT_FILES)


@pytest.mark.parametrize("name", FLOAT_FILES)
def test_float_gguf_matches_llama_cpp(name):
    ref = np.load(FIXTURES / "golden" / f"llamacpp-{name}.npz")
    with pyffi.Transformer.from_pretrained(FIXTURES / "gguf" / f"{name}.gguf") as model:
        for i in range(4):
            assert rel_err(model.forward([ref[f"input_{i}"]])[0], ref[f"logits_{i}"]) <= LLAMA_CPP_TOLERANCE
    if name.endswith("-f32"):
        # Same weights as the HF folder, q/k rows un-permuted: with a float32
        # KV cache, transformers' numbers.
        with pyffi.Transformer.from_pretrained(FIXTURES / "gguf" / f"{name}.gguf", kv_type="f32") as model:
            hf = golden(name[:-4])
            assert rel_err(model.forward([hf["input_3"]])[0], hf["logits_3"]) <= 1e-4


def test_gguf_models_default_to_llama_cpps_f16_kv_cache():
    """With float16 keys and values (and the query and weights rounded to
    float16 for their products, as llama.cpp's matmuls do) an f32 file lands
    within float32 rounding of llama.cpp, far closer than with a float32 cache."""
    ref = np.load(FIXTURES / "golden" / "llamacpp-tiny-llama-f32.npz")
    path = FIXTURES / "gguf" / "tiny-llama-f32.gguf"
    with pyffi.Transformer.from_pretrained(path) as f16, pyffi.Transformer.from_pretrained(path, kv_type="f32") as f32:
        short = ref["input_1"]
        assert rel_err(f16.forward([short])[0], ref["logits_1"]) <= 1e-5
        assert rel_err(f32.forward([short])[0], ref["logits_1"]) > 10 * rel_err(f16.forward([short])[0], ref["logits_1"])


def test_hostile_gguf_model_files(tmp_path):
    good = (FIXTURES / "gguf" / "tiny-llama-f32.gguf").read_bytes()
    for i, data in enumerate([b"", b"GGUF", b"NOPE" + good[4:], good[: len(good) // 3], good[:-100]]):
        path = tmp_path / f"bad{i}.gguf"
        path.write_bytes(data)
        with pytest.raises(ValueError):
            pyffi.Transformer.from_pretrained(path)


QUANT_FILES = sorted(p.stem for p in (FIXTURES / "gguf").glob("*.gguf")
                     if not p.stem.endswith(("-f32", "-f16")))


@pytest.mark.parametrize("name", QUANT_FILES)
def test_quantized_gguf_sits_closer_to_llama_cpp_than_llama_cpp_to_transformers(name):
    """Block formats run on their blocks with 8-bit activations, as in
    llama.cpp (Q8_0 for the 32-value formats, Q8_K for the k-quants), with
    llama.cpp's f16 KV cache. Both engines then round the same way, except
    where float32 rounding differences (summation order) flip an activation's
    8-bit rounding, which moves the logits by up to a few 1e-2 of their
    range; so ours must sit much closer to llama.cpp than llama.cpp sits to
    transformers (README: q8_0 3-5e-2, q4_0 ~0.45, k-quant mixes 0.1-0.4 on
    the 100-token sequence)."""
    ref = np.load(FIXTURES / "golden" / f"llamacpp-{name}.npz")
    hf = golden(name.rsplit("-", 1)[0])
    with pyffi.Transformer.from_pretrained(FIXTURES / "gguf" / f"{name}.gguf") as model:
        ours = model.forward([ref["input_3"]])[0]
    to_llama_cpp = rel_err(ours, ref["logits_3"])
    llama_cpp_to_hf = rel_err(ref["logits_3"], hf["logits_3"])
    factor = 0.75 if name.endswith("q8_0") else 0.3
    assert to_llama_cpp <= factor * llama_cpp_to_hf, (to_llama_cpp, llama_cpp_to_hf)


@pytest.mark.parametrize("name", QUANT_FILES)
def test_quantized_gguf_picks_llama_cpps_token_except_at_near_ties(name):
    """Argmax agreement with llama.cpp of at least 0.99 (issue 4) over all
    141 golden positions, and every disagreement is a near-tie in llama.cpp's
    own logits: its top two differ by less than the 1e-2 (of max|logit|) the
    engines may sit apart."""
    ref = np.load(FIXTURES / "golden" / f"llamacpp-{name}.npz")
    agree, total = 0, 0
    with pyffi.Transformer.from_pretrained(FIXTURES / "gguf" / f"{name}.gguf") as model:
        for i in range(4):
            ours, theirs = model.forward([ref[f"input_{i}"]])[0], ref[f"logits_{i}"]
            scale = np.abs(theirs).max()
            for o, t in zip(ours, theirs):
                total += 1
                if o.argmax() == t.argmax():
                    agree += 1
                else:
                    assert (t.max() - t[o.argmax()]) / scale <= 1e-2, (name, i)
    assert agree / total >= 0.99, (name, agree, total)


# Files whose every matmul, norm and activation we compute with llama.cpp's
# own roundings (Q4_0, Q4_1, Q4_K weights; Q8_0 in its tinyBLAS lanes, for a
# prompt as for one token; Q5_K and Q6_K as its tiled kernels sum them for 8
# tokens or more, and in its dot products' eight lanes below 8; its
# attention and its exp): our logits are its logits, up to the last bits of a
# few float sums.
EXACT_FILES = ["small-llama-256-q4_0", "small-llama-256-q4_1", "small-llama-256-q4_k_m",
               "small-llama-256-q5_k_m", "small-llama-256-q6_k", "small-llama-256-q8_0", "tiny-llama-q4_0",
               "tiny-llama-q8_0", "tiny-qwen2-q8_0", "tiny-phi3-q8_0", "stories260K-q8_0"]


def test_every_quantized_fixture_has_llama_cpps_roundings():
    assert set(EXACT_FILES) == set(QUANT_FILES)


@pytest.mark.parametrize("name", EXACT_FILES)
def test_files_with_llama_cpps_roundings_give_its_logits(name):
    ref = np.load(FIXTURES / "golden" / f"llamacpp-{name}.npz")
    with pyffi.Transformer.from_pretrained(FIXTURES / "gguf" / f"{name}.gguf") as model:
        for i in range(4):
            ours, theirs = model.forward([ref[f"input_{i}"]])[0], ref[f"logits_{i}"]
            assert rel_err(ours, theirs) <= 1e-6, (name, i, len(ours), rel_err(ours, theirs))
            assert (ours.argmax(-1) == theirs.argmax(-1)).all(), (name, i)


@pytest.mark.parametrize("name", ["small-llama-256-q5_k_m", "small-llama-256-q6_k"])
def test_k_quant_rows_below_8_tokens_sum_in_llama_cpps_lanes(name):
    # Below 8 tokens llama.cpp sums Q5_K and Q6_K rows in its dot products'
    # eight float lanes, not as its tiled matmul does: summed the tiled way,
    # the 1- and 7-token logits of the Q5_K_M file differ from its in the
    # last bits (2e-7), which the 1e-6 above lets through. Bit for bit here.
    ref = np.load(FIXTURES / "golden" / f"llamacpp-{name}.npz")
    short = [i for i in range(4) if len(ref[f"input_{i}"]) < 8]
    assert short, "the fixture has prompts of fewer than 8 tokens"
    with pyffi.Transformer.from_pretrained(FIXTURES / "gguf" / f"{name}.gguf") as model:
        for i in short:
            ours, theirs = model.forward([ref[f"input_{i}"]])[0], ref[f"logits_{i}"]
            assert np.array_equal(ours, theirs), (name, i, int((ours != theirs).sum()))


def test_quantized_matrices_cannot_be_overwritten_with_floats():
    with pyffi.Transformer.from_pretrained(FIXTURES / "gguf" / "tiny-llama-q8_0.gguf") as model:
        name = "model.layers.0.self_attn.q_proj.weight"
        shape = model.tensor_specs()[name]
        with pytest.raises(pyffi.WeightsError, match="quantized"):
            model.load_state_dict({name: np.zeros(shape, np.float32)}, strict=False)
        model.load_state_dict({"model.norm.weight": np.ones(64, np.float32)}, strict=False)  # floats still can
