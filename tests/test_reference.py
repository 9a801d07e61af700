"""tests/reference.py against transformers' own logits (the golden fixtures),
so that the property tests can trust it as an oracle."""

import numpy as np
import pytest
from safetensors.numpy import load_file

import pyffi
from conftest import MODELS, golden, model_dir, rel_err
from reference import expected_shapes, reference_forward


@pytest.mark.parametrize("name", MODELS)
def test_reference_matches_transformers(name):
    config = pyffi.ModelArgs.from_config_file(model_dir(name) / "config.json")
    weights = load_file(str(model_dir(name) / "model.safetensors"))
    g = golden(name)
    for i in (1, 2):
        tokens = g[f"input_{i}"].tolist()
        ref = g[f"logits_{i}"].astype(np.float64)
        ours = reference_forward(config, weights, tokens)
        assert ours.shape == ref.shape
        err = rel_err(ours, ref)
        assert err <= 1e-4, f"{name} input_{i}: reference off from transformers by {err:.3g}"


@pytest.mark.parametrize("name", MODELS)
def test_reference_uses_every_stored_weight(name):
    """The reference's idea of which tensors exist matches the HF checkpoint
    (lm_head may be stored redundantly when tied)."""
    config = pyffi.ModelArgs.from_config_file(model_dir(name) / "config.json")
    stored = load_file(str(model_dir(name) / "model.safetensors"))
    shapes = expected_shapes(config)
    extra = set(stored) - set(shapes) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
    assert not extra
    for k, shape in shapes.items():
        assert tuple(stored[k].shape) == shape, k


def test_reference_is_sensitive():
    """Perturbing a weight or the tokens changes the reference's logits:
    the parity check above is not vacuous."""
    name = "tiny-llama"
    config = pyffi.ModelArgs.from_config_file(model_dir(name) / "config.json")
    w = load_file(str(model_dir(name) / "model.safetensors"))
    g = golden(name)
    tokens = g["input_2"].tolist()
    ref = g["logits_2"].astype(np.float64)
    w2 = dict(w)
    w2["model.layers.1.self_attn.k_proj.weight"] = w["model.layers.1.self_attn.k_proj.weight"] * 1.01
    assert rel_err(reference_forward(config, w2, tokens), ref) > 1e-4
    assert rel_err(reference_forward(config, w, tokens[::-1]), ref) > 1e-4
