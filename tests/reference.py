"""A plain numpy reference for the Llama-family decoder pyffi implements.

Written from Hugging Face transformers' modeling code (LlamaForCausalLM,
MistralForCausalLM, Qwen2ForCausalLM, Phi3ForCausalLM), not from the engine:
it is checked against transformers' own logits in tests/test_reference.py
before the property tests trust it. Everything is computed in float64 except
the RoPE inverse frequencies and angles, which transformers computes in
float32 (and so do we, to follow it closely).

    reference_forward(config, weights, tokens) -> logits [len(tokens), vocab]
    random_weights(config, seed) -> {HF name: float32 array}
"""

import math

import numpy as np

import pyffi


# --------------------------------------------------------------------------
# Config helpers


def head_dim_of(config):
    return config.head_dim or config.hidden_size // config.num_attention_heads


def rotary_dim_of(config):
    """Leading dims of each head that are rotated: int(head_dim * factor),
    rounded down to even (partial_rotary_factor is phi3's; 1.0 elsewhere).
    Note: for an odd int(head_dim * factor) transformers itself would rotate
    one more pair (arange(0, dim, 2) has ceil(dim/2) entries); we follow the
    engine's documented even rounding, and the tests only draw even cases."""
    factor = config.partial_rotary_factor if config.model_type == "phi3" else 1.0
    rot = int(head_dim_of(config) * factor)
    return rot - rot % 2


def _rope_kind(scaling):
    if not scaling:
        return "default"
    return scaling.get("rope_type", scaling.get("type", "default"))


def inv_freq_of(config):
    """transformers' _compute_default_rope_parameters plus the linear /
    llama3 rules (_compute_linear_scaling_rope_parameters,
    _compute_llama3_parameters); float32 like torch computes it."""
    rot = rotary_dim_of(config)
    exps = np.arange(0, rot, 2, dtype=np.int64).astype(np.float32) / np.float32(rot)
    inv_freq = (np.float32(1.0) / np.power(np.float32(config.rope_theta), exps, dtype=np.float32)).astype(np.float32)
    scaling = config.rope_scaling
    kind = _rope_kind(scaling)
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return (inv_freq / np.float32(scaling["factor"])).astype(np.float32)
    if kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling["low_freq_factor"])
        high = float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen = old_ctx / low
        high_wavelen = old_ctx / high
        f = inv_freq.astype(np.float64)
        wavelen = 2 * math.pi / f
        llama = np.where(wavelen > low_wavelen, f / factor, f)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * llama / factor + smooth * llama
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, llama).astype(np.float32)
    raise ValueError(f"rope_scaling type {kind!r} not supported by the reference")


def sliding_window_for_layer(config, layer):
    """The attention window of one layer, or None for full causal attention.
    Llama ignores sliding_window; Qwen2 without layer_types keeps the default
    max_window_layers (all of our small models' layers are full attention);
    Mistral and Phi-3 apply it in every layer."""
    if config.sliding_window is None or config.model_type == "llama":
        return None
    if config.layer_types is not None:
        return config.sliding_window if config.layer_types[layer] == "sliding_attention" else None
    if config.model_type == "qwen2":
        return None
    return config.sliding_window


def _biases(config):
    """(q/k/v bias, o bias, mlp biases) as transformers builds the modules."""
    if config.model_type == "qwen2":
        return True, False, False
    if config.model_type == "llama":
        return config.attention_bias, config.attention_bias, config.mlp_bias
    return False, False, False  # mistral, phi3


def expected_shapes(config):
    """{HF name: shape} of every weight, from the architecture alone."""
    d, v, f = config.hidden_size, config.vocab_size, config.intermediate_size
    hd = head_dim_of(config)
    nq, nkv = config.num_attention_heads, config.n_kv_heads
    qkv_bias, o_bias, mlp_bias = _biases(config)
    s = {"model.embed_tokens.weight": (v, d)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        s[p + "input_layernorm.weight"] = (d,)
        if config.model_type == "phi3":
            s[p + "self_attn.qkv_proj.weight"] = ((nq + 2 * nkv) * hd, d)
        else:
            s[p + "self_attn.q_proj.weight"] = (nq * hd, d)
            s[p + "self_attn.k_proj.weight"] = (nkv * hd, d)
            s[p + "self_attn.v_proj.weight"] = (nkv * hd, d)
            if qkv_bias:
                s[p + "self_attn.q_proj.bias"] = (nq * hd,)
                s[p + "self_attn.k_proj.bias"] = (nkv * hd,)
                s[p + "self_attn.v_proj.bias"] = (nkv * hd,)
        s[p + "self_attn.o_proj.weight"] = (d, nq * hd)
        if o_bias:
            s[p + "self_attn.o_proj.bias"] = (d,)
        s[p + "post_attention_layernorm.weight"] = (d,)
        if config.model_type == "phi3":
            s[p + "mlp.gate_up_proj.weight"] = (2 * f, d)
        else:
            s[p + "mlp.gate_proj.weight"] = (f, d)
            s[p + "mlp.up_proj.weight"] = (f, d)
            if mlp_bias:
                s[p + "mlp.gate_proj.bias"] = (f,)
                s[p + "mlp.up_proj.bias"] = (f,)
        s[p + "mlp.down_proj.weight"] = (d, f)
        if mlp_bias:
            s[p + "mlp.down_proj.bias"] = (d,)
    s["model.norm.weight"] = (d,)
    if not config.tie_word_embeddings:
        s["lm_head.weight"] = (v, d)
    return s


# --------------------------------------------------------------------------
# The forward pass


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def linear(x, weights, name, bias=False):
    y = x @ weights[name + ".weight"].astype(np.float64).T
    if bias:
        y = y + weights[name + ".bias"].astype(np.float64)
    return y


def apply_rope(x, cos, sin, rot):
    """x: [seq, heads, head_dim]; cos/sin: [seq, rot/2]. HF rotate-half: pair
    (i, i + rot/2) for i < rot/2; dims past rot pass through."""
    half = rot // 2
    out = x.copy()
    x1, x2 = x[:, :, :half], x[:, :, half:rot]
    c, s = cos[:, None, :], sin[:, None, :]
    out[:, :, :half] = x1 * c - x2 * s
    out[:, :, half:rot] = x2 * c + x1 * s
    return out


def attention(q, k, v, n_rep, window):
    """q: [seq, nq, hd]; k, v: [seq, nkv, hd]. Causal, optionally windowed."""
    seq, nq, hd = q.shape
    pos = np.arange(seq)
    visible = pos[None, :] <= pos[:, None]  # [query, key]
    if window is not None:
        visible &= pos[None, :] > pos[:, None] - window
    out = np.empty_like(q)
    for h in range(nq):
        kv = h // n_rep
        scores = q[:, h, :] @ k[:, kv, :].T / math.sqrt(hd)
        scores = np.where(visible, scores, -np.inf)
        scores = scores - scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        out[:, h, :] = p @ v[:, kv, :]
    return out


def reference_forward(config, weights, tokens):
    """Logits [len(tokens), vocab] (float64) at every position from 0."""
    tokens = np.asarray(tokens, dtype=np.int64)
    seq = len(tokens)
    d, f = config.hidden_size, config.intermediate_size
    hd = head_dim_of(config)
    nq, nkv = config.num_attention_heads, config.n_kv_heads
    eps = config.rms_norm_eps
    qkv_bias, o_bias, mlp_bias = _biases(config)

    rot = rotary_dim_of(config)
    inv_freq = inv_freq_of(config)
    angles = np.arange(seq, dtype=np.float32)[:, None] * inv_freq[None, :]  # float32, as torch
    cos, sin = np.cos(angles.astype(np.float64)), np.sin(angles.astype(np.float64))

    x = weights["model.embed_tokens.weight"].astype(np.float64)[tokens]
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        h = rms_norm(x, weights[p + "input_layernorm.weight"].astype(np.float64), eps)
        if config.model_type == "phi3":
            qkv = linear(h, weights, p + "self_attn.qkv_proj")
            q, k, v = np.split(qkv, [nq * hd, (nq + nkv) * hd], axis=-1)
        else:
            q = linear(h, weights, p + "self_attn.q_proj", qkv_bias)
            k = linear(h, weights, p + "self_attn.k_proj", qkv_bias)
            v = linear(h, weights, p + "self_attn.v_proj", qkv_bias)
        q = apply_rope(q.reshape(seq, nq, hd), cos, sin, rot)
        k = apply_rope(k.reshape(seq, nkv, hd), cos, sin, rot)
        v = v.reshape(seq, nkv, hd)
        a = attention(q, k, v, nq // nkv, sliding_window_for_layer(config, i))
        x = x + linear(a.reshape(seq, nq * hd), weights, p + "self_attn.o_proj", o_bias)

        h = rms_norm(x, weights[p + "post_attention_layernorm.weight"].astype(np.float64), eps)
        if config.model_type == "phi3":
            gate, up = np.split(linear(h, weights, p + "mlp.gate_up_proj"), [f], axis=-1)
        else:
            gate = linear(h, weights, p + "mlp.gate_proj", mlp_bias)
            up = linear(h, weights, p + "mlp.up_proj", mlp_bias)
        x = x + linear(silu(gate) * up, weights, p + "mlp.down_proj", mlp_bias)

    x = rms_norm(x, weights["model.norm.weight"].astype(np.float64), eps)
    head = weights["model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"]
    return x @ head.astype(np.float64).T


# --------------------------------------------------------------------------
# Random weights


def random_weights(config, seed):
    """HF-named float32 weights with the engine's shapes (tensor_specs), scaled
    so that activations stay O(1) and logits have std around 1."""
    specs = pyffi.Transformer(config).tensor_specs()
    rng = np.random.default_rng(seed)
    w = {}
    for name, shape in specs.items():
        if name.endswith("norm.weight"):
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            a = 0.1 * rng.standard_normal(shape)
        elif name == "model.embed_tokens.weight":
            # Tied, it is also the output head: rows of norm ~1 give logits of std ~1.
            a = rng.standard_normal(shape) / (math.sqrt(shape[1]) if config.tie_word_embeddings else 1.0)
        else:  # a matrix [out, in]: unit-variance outputs for unit-variance inputs
            a = rng.standard_normal(shape) / math.sqrt(shape[-1])
        w[name] = a.astype(np.float32)
    return w


def rel_err(ours, ref):
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())
