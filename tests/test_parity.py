"""Parity with Hugging Face transformers on every fixture model: logits of
each golden sequence within the fixtures README's float32 tolerance (1e-4 of
max|ref|), greedy tokens equal."""

import json

import numpy as np
import pytest

import pyffi
from conftest import FIXTURES, MODELS, golden, model_dir, rel_err

TOLERANCE = 1e-4  # fixtures README: an f32 engine should meet max|diff|/max|ref| <= 1e-4


@pytest.fixture(scope="module", params=MODELS)
def loaded(request):
    with pyffi.Transformer.from_pretrained(model_dir(request.param)) as model:
        yield request.param, model


def test_all_fixture_models_are_covered():
    assert {"tiny-llama", "tiny-llama-tied-mha", "tiny-qwen2", "tiny-phi3", "small-llama-256",
            "stories260K"} <= set(MODELS)


@pytest.mark.parametrize("i", range(4))
def test_logits_match_transformers(loaded, i):
    name, model = loaded
    g = golden(name)
    logits = model.forward([g[f"input_{i}"]])[0]
    assert logits.shape == g[f"logits_{i}"].shape
    assert rel_err(logits, g[f"logits_{i}"]) <= TOLERANCE


def test_last_only_matches_the_last_row(loaded):
    name, model = loaded
    g = golden(name)
    last = model.forward([g["input_3"]], last_only=True)
    assert last.shape == (1, 1, model.vocab_size)
    assert rel_err(last[0, 0], g["logits_3"][-1]) <= TOLERANCE


def test_greedy_tokens_match_transformers(loaded):
    name, model = loaded
    g = golden(name)
    prompt, want = g["greedy_prompt"].tolist(), g["greedy_tokens"].tolist()
    got = model.generate(prompt, max_gen_len=len(want), temperature=0, stop_tokens=[])
    if name == "tiny-llama-tied-mha" and got != want:
        # README: step 9 of this path is a near tie (gap 1e-5); compare tokens up
        # to it, and from there require that our pick is tied with the golden one.
        first = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        assert first >= 9, f"diverged at step {first}, before the known near tie"
        row = model.forward([prompt + want[:first]], last_only=True)[0, 0]
        assert abs(row[got[first]] - row[want[first]]) <= TOLERANCE * np.abs(row).max()
    else:
        assert got == want


def test_stories260k_200_tokens_after_bos():
    g = golden("stories260K")
    with pyffi.Transformer.from_pretrained(model_dir("stories260K")) as model:
        got = model.generate([1], max_gen_len=200, temperature=0, stop_tokens=[])
    assert got == g["bos_greedy_tokens"].tolist()


def test_demo_model_greedy_goldens():
    """The demo model shipped in fixtures/demo reproduces transformers' greedy ids."""
    from pyffi.__main__ import default_model
    cases = json.loads((FIXTURES / "demo" / "golden.json").read_text())["cases"]
    with pyffi.Transformer.from_pretrained(default_model()) as model:
        for case in cases:
            got = model.generate(case["prompt_ids"], max_gen_len=len(case["greedy_ids"]), temperature=0,
                                 stop_tokens=[])
            assert got == case["greedy_ids"], case["prompt"]
