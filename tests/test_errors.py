"""Bad input from Python: the right exception class, a message naming what is
wrong, and nothing lost (the model and session keep working)."""

import dataclasses
import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import pyffi
from conftest import model_dir

TINY = dict(model_type="llama", hidden_size=16, intermediate_size=24, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, vocab_size=32, max_seq_len=64)


@pytest.fixture
def model():
    with pyffi.Transformer.from_pretrained(model_dir("tiny-llama"), n_ctx=16) as m:
        yield m


def test_missing_files_are_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pyffi.Transformer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        pyffi.ModelArgs.from_config_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text((model_dir("tiny-llama") / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors") as e:
        pyffi.Transformer.from_pretrained(tmp_path)
    assert isinstance(e.value, pyffi.PyffiError)


@pytest.mark.parametrize("change, field", [
    ({"hidden_size": None}, "hidden_size"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"vocab_size": "big"}, "vocab_size"),
    ({"model_type": "gpt2"}, "gpt2"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ({"rope_parameters": {"rope_theta": 1.0}, "rope_theta": 2.0}, "rope_theta"),
    ({"hidden_size": 15}, "hidden_size"),
    ({"eos_token_id": 99}, "eos_token_id"),
])
def test_bad_configs_are_value_errors_naming_the_field(change, field):
    d = {**TINY, **change}
    d = {k: v for k, v in d.items() if v is not None}
    with pytest.raises(ValueError, match=field):
        pyffi.ModelArgs.from_dict(d)
    fields = {f.name for f in dataclasses.fields(pyffi.ModelArgs)}
    if set(change) <= fields and None not in change.values():
        # The same mistake in a ModelArgs built by hand is caught when it is used.
        with pytest.raises(ValueError, match=field):
            pyffi.Transformer(pyffi.ModelArgs(**d))


def test_malformed_config_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(pyffi.ConfigError, match="JSON"):
        pyffi.ModelArgs.from_config_file(tmp_path)


def test_state_dict_errors_name_the_tensor():
    path = model_dir("tiny-llama")
    weights = load_file(path / "model.safetensors")
    m = pyffi.Transformer(pyffi.ModelArgs.from_config_file(path))
    bad = dict(weights)
    bad["model.norm.weight"] = np.zeros(65, np.float32)
    with pytest.raises(ValueError, match="model.norm.weight.*shape"):
        m.load_state_dict(bad)
    bad["model.norm.weight"] = np.zeros(64, np.float64)
    with pytest.raises(ValueError, match="model.norm.weight.*float64"):
        m.load_state_dict(bad)
    bad["model.norm.weight"] = np.zeros(64, np.int32)
    with pytest.raises(ValueError, match="int32"):
        m.load_state_dict(bad)
    missing = dict(weights)
    del missing["lm_head.weight"]
    with pytest.raises(ValueError, match="missing: lm_head.weight"):
        m.load_state_dict(missing)
    with pytest.raises(ValueError, match="unexpected: extra"):
        m.load_state_dict({**weights, "extra": np.zeros(1, np.float32)})
    assert m.load_state_dict(missing, strict=False) == (["lm_head.weight"], [])


def test_a_16_bit_tensor_of_the_wrong_size_names_it_and_changes_nothing():
    path = model_dir("tiny-llama")
    weights = load_file(path / "model.safetensors")
    m = pyffi.Transformer(pyffi.ModelArgs.from_config_file(path))
    m.load_state_dict(weights)
    before = m.forward([[1, 2, 3]])
    name = "model.layers.0.self_attn.q_proj.weight"
    with pytest.raises(ValueError, match="q_proj.*shape"):
        m.load_state_dict({name: np.zeros((3, 3), np.float16)}, strict=False)
    np.testing.assert_array_equal(m.forward([[1, 2, 3]]), before)


def test_an_unknown_in_memory_type_is_refused_by_the_c_abi():
    from pyffi._ffi import call, lib
    m = pyffi.Transformer.from_pretrained(model_dir("tiny-llama"))
    with pytest.raises(pyffi.InvalidArgumentError, match="'int3' is not a block format.*bf16"):
        call(lib.pyffi_model_quantize, m._handle(), b"int3")
    with pytest.raises(pyffi.InvalidArgumentError, match="qtype"):
        call(lib.pyffi_model_quantize, m._handle(), pyffi._ffi.ffi.NULL)


def test_weights_cannot_change_under_an_open_session():
    path = model_dir("tiny-llama")
    m = pyffi.Transformer.from_pretrained(path)
    s = m.new_session()
    with pytest.raises(ValueError, match="session"):
        m.load_state_dict(load_file(path / "model.safetensors"))
    s.close()
    m.load_state_dict(load_file(path / "model.safetensors"))


@pytest.mark.parametrize("tokens, exc, text", [
    ([[1, 2, 320]], pyffi.OutOfRangeError, "320.*vocab"),
    ([[1, -1]], pyffi.OutOfRangeError, "-1"),
    ([[1, 2**40]], pyffi.OutOfRangeError, "int32"),
    ([[1.5, 2.0]], pyffi.InvalidArgumentError, "integer"),
    (np.zeros((1, 2, 2), np.int32), pyffi.InvalidArgumentError, "shape"),
    ([], pyffi.InvalidArgumentError, "no sequences"),
    ([[1], []], pyffi.InvalidArgumentError, "empty"),
    ([list(range(1, 18))], pyffi.OutOfRangeError, "n_ctx=16"),
])
def test_bad_forward_input(model, tokens, exc, text):
    with pytest.raises(exc, match=text):
        model.forward(tokens)
    assert issubclass(exc, ValueError)
    assert model.forward([[1, 2]]).shape == (1, 2, 320)  # nothing lost


@pytest.mark.parametrize("tokens, exc, text", [
    ([1, 2, 320], pyffi.OutOfRangeError, "320.*vocab"),
    (np.array([1, -1], np.int32), pyffi.OutOfRangeError, "-1"),
    ([1, 2**40], pyffi.OutOfRangeError, "int32"),
    ([1.5, 2.0], pyffi.InvalidArgumentError, "integer"),
    (np.array([], np.int32), pyffi.InvalidArgumentError, "no sequences|empty"),
    (np.arange(1, 18, dtype=np.int32), pyffi.OutOfRangeError, "n_ctx=16"),
])
def test_bad_flat_forward_input(model, tokens, exc, text):
    """One flat sequence takes the fast path of forward: the same errors."""
    with pytest.raises(exc, match=text):
        model.forward(tokens)
    assert model.forward(np.array([1, 2], np.int32)).shape == (1, 2, 320)  # nothing lost


def test_bad_start_positions(model):
    model.forward([[1, 2, 3]])
    with pytest.raises(ValueError, match="start_pos"):
        model.forward([[4]], start_pos=5)
    with pytest.raises(ValueError, match="start_pos"):
        model.forward([[4]], start_pos=-1)
    with pytest.raises(ValueError, match="start_pos"):
        model.forward([[4], [5]], start_pos=[3])
    with pytest.raises(ValueError, match="start_pos"):
        model.forward(np.array([4], np.int32), start_pos=5)
    with pytest.raises(ValueError, match="start_pos"):
        model.forward([4], start_pos=2**32)
    assert model.session.cached_len() == 3


@pytest.mark.parametrize("kwargs, text", [
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(min_p=2.0), "min_p"),
    (dict(top_k=-3), "top_k"),
    (dict(repeat_penalty=0.0), "repeat_penalty"),
    (dict(max_gen_len=-1), "max_gen_len"),
    (dict(seed=-5), "seed"),
])
def test_bad_sampling_parameters(model, kwargs, text):
    with pytest.raises(ValueError, match=text):
        model.generate([1, 2], **{"max_gen_len": 3, **kwargs})


def test_bad_prompts(model):
    with pytest.raises(ValueError, match="empty"):
        model.generate([[]], max_gen_len=3)
    with pytest.raises(ValueError, match="n_ctx"):
        model.generate(list(range(1, 20)), max_gen_len=3)
    with pytest.raises(ValueError, match="vocab"):
        model.generate([1, 999], max_gen_len=3)


def test_closed_handles_raise_instead_of_crashing():
    m = pyffi.Transformer.from_pretrained(model_dir("tiny-llama"))
    s = m.new_session()
    m.close()
    m.close()
    with pytest.raises(ValueError, match="closed"):
        m.forward([[1]])
    assert s.forward([[1]]).shape == (1, 1, 320)  # the session keeps the weights alive
    out = np.empty((1, 1, 320), np.float32)
    s.forward(np.array([1], np.int32), last_only=True, out=out)  # the one-token path, its views kept
    s.close()
    s.close()
    # Every form of input, the one-token path's included, raises on a closed session.
    for tokens in ([[1]], [1], np.array([1], np.int32)):
        with pytest.raises(ValueError, match="closed"):
            s.forward(tokens, last_only=True, out=out)
        with pytest.raises(ValueError, match="closed"):
            s.forward(tokens)
    with pytest.raises(ValueError, match="closed"):
        m.forward([1])


def test_exception_in_a_stream_consumer_stops_generation(model):
    with pytest.raises(RuntimeError, match="consumer"):
        for i, _ in enumerate(model.generate([1], max_gen_len=10, temperature=0, stream=True, stop_tokens=[])):
            if i == 2:
                raise RuntimeError("consumer")
    assert len(model.generate([1], max_gen_len=4, temperature=0, stop_tokens=[])) == 4


def test_bad_thread_counts():
    with pytest.raises(ValueError):
        pyffi.set_threads(-1)
    with pytest.raises(ValueError, match="n_threads"):
        pyffi.Transformer.from_pretrained(model_dir("tiny-llama"), n_threads=0).forward([[1]])


def write_model(tmp_path, weights, config_src="tiny-llama"):
    (tmp_path / "config.json").write_text((model_dir(config_src) / "config.json").read_text())
    save_file(weights, tmp_path / "model.safetensors")


def test_hostile_weight_files(tmp_path):
    weights = load_file(model_dir("tiny-llama") / "model.safetensors")
    (tmp_path / "config.json").write_text((model_dir("tiny-llama") / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(pyffi.WeightsError, match="safetensors"):
        pyffi.Transformer.from_pretrained(tmp_path)
    good = (model_dir("tiny-llama") / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(pyffi.WeightsError):
        pyffi.Transformer.from_pretrained(tmp_path)
    partial = dict(weights)
    del partial["model.layers.1.mlp.down_proj.weight"]
    write_model(tmp_path, partial)
    with pytest.raises(pyffi.WeightsError, match="missing tensors: model.layers.1.mlp.down_proj.weight"):
        pyffi.Transformer.from_pretrained(tmp_path)
    write_model(tmp_path, {**weights, "model.norm.weight": np.zeros(3, np.float32)})
    with pytest.raises(pyffi.WeightsError, match="model.norm.weight"):
        pyffi.Transformer.from_pretrained(tmp_path)
    write_model(tmp_path, {**weights, "model.norm.weight": np.zeros(64, np.int32)})
    with pytest.raises(pyffi.UnsupportedError, match="model.norm.weight.*I32"):
        pyffi.Transformer.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    with pytest.raises(pyffi.WeightsError, match="same folder"):
        pyffi.Transformer.from_pretrained(tmp_path)


def test_huge_configs_are_refused_not_allocated():
    with pytest.raises(ValueError, match="parameters"):
        pyffi.Transformer(pyffi.ModelArgs(**{**TINY, "hidden_size": 1 << 20, "vocab_size": 1 << 24}))
    with pytest.raises(ValueError, match="n_ctx"):
        pyffi.Transformer(pyffi.ModelArgs(**TINY), n_ctx=2**31).forward([[1]])
