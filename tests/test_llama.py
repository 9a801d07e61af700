"""pyffi.Llama: text in, text out, on the bundled demo model, against the
transformers goldens; streaming, stop strings, chat completions."""

import json
import subprocess
import sys

import numpy as np
import pytest

import pyffi
from conftest import FIXTURES, REPO

CASES = json.loads((FIXTURES / "demo" / "golden.json").read_text())["cases"]
CHAT = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}" \
       "{% if add_generation_prompt %}<assistant>{% endif %}"


@pytest.fixture(scope="module")
def llm():
    from pyffi.__main__ import default_model
    with pyffi.Llama(default_model(), n_ctx=256) as model:
        yield model


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["prompt"])
def test_greedy_text_matches_transformers(llm, case):
    assert llm.tokenize(case["prompt"]) == case["prompt_ids"]
    n = len(case["greedy_ids"])
    assert llm.generate(case["prompt"], max_new_tokens=n, temperature=0) == case["greedy_text"]
    assert "".join(llm.generate(case["prompt"], max_new_tokens=n, temperature=0, stream=True)) == case["greedy_text"]


def test_stop_strings_are_not_returned_nor_half_emitted(llm):
    case = CASES[0]
    text = case["greedy_text"]
    stop = text[20:31]  # a stop string that spans several tokens
    want = text[: text.index(stop)]
    assert llm.generate(case["prompt"], max_new_tokens=48, temperature=0, stop=[stop, "zzz"]) == want
    pieces = list(llm.generate(case["prompt"], max_new_tokens=48, temperature=0, stop=stop, stream=True))
    assert "".join(pieces) == want
    assert not any(stop[:3] in p for p in pieces)


def test_seeded_sampling_repeats(llm):
    a = llm.generate("The Python", max_new_tokens=16, temperature=0.9, seed=3)
    assert a == llm("The Python", max_new_tokens=16, temperature=0.9, seed=3)


def test_chat_completion(llm):
    msgs = [{"role": "user", "content": "What is a module?"}]
    r = llm.chat_completion(msgs, chat_template=CHAT, max_new_tokens=8, temperature=0)
    assert r["object"] == "chat.completion" and r["choices"][0]["message"]["role"] == "assistant"
    assert r["choices"][0]["finish_reason"] == "length"
    prompt_ids = llm.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, chat_template=CHAT, tokenize=True)
    assert r["usage"] == {"prompt_tokens": len(prompt_ids), "completion_tokens": 8, "total_tokens": len(prompt_ids) + 8}
    assert r["choices"][0]["message"]["content"] == llm.tokenizer.decode(
        llm.model.generate(prompt_ids, max_gen_len=8, temperature=0, stop_tokens=llm.eos_token_ids))
    chunks = list(llm.chat_completion(msgs, chat_template=CHAT, max_new_tokens=8, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == \
        r["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_eos_ends_with_finish_stop(llm):
    # Make the first greedy token an EOS: generation ends at once with "stop".
    first = CASES[0]["greedy_ids"][0]
    saved = llm.eos_token_ids
    llm.eos_token_ids = [first]
    try:
        r = llm.chat_completion([{"role": "user", "content": "x"}], chat_template="The Python",
                                max_new_tokens=8, temperature=0)
    finally:
        llm.eos_token_ids = saved
    assert r["choices"][0]["finish_reason"] == "stop" and r["usage"]["completion_tokens"] == 0


def test_errors(llm, tmp_path):
    with pytest.raises(TypeError):
        llm.generate(123)
    with pytest.raises(ValueError, match="max_new_tokens"):
        llm.generate("x", max_new_tokens=-1)
    with pytest.raises(ValueError, match="n_ctx"):
        llm.generate("The Python " * 300, max_new_tokens=2)
    with pytest.raises(FileNotFoundError):
        pyffi.Llama(tmp_path / "missing")
    with pytest.raises(pyffi.UnsupportedError, match="Q5_0"):
        pyffi.Llama(gguf_with_a_q5_0_tensor(tmp_path))


def gguf_with_a_q5_0_tensor(tmp_path):
    """tiny-llama-f32.gguf with one matrix in Q5_0, a format pyffi does not compute with."""
    import gguf
    src = gguf.GGUFReader(FIXTURES / "gguf" / "tiny-llama-f32.gguf")
    out = tmp_path / "q5_0.gguf"
    w = gguf.GGUFWriter(out, "llama")
    for name, field in src.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        w.add_key_value(name, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None)
    for t in src.tensors:
        data = np.array(t.data).reshape(list(reversed(t.shape.tolist())))
        if t.name == "blk.0.attn_q.weight":
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q5_0)
            w.add_tensor(t.name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q5_0)
        else:
            w.add_tensor(t.name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def test_llama_from_a_gguf_file():
    """The model, its tokenizer and its EOS id all come from the one file."""
    path = FIXTURES / "gguf" / "tiny-llama-f32.gguf"
    with pyffi.Llama(path, n_ctx=64) as llm, pyffi.Tokenizer(path) as tok:
        assert llm.tokenizer.vocab_size == tok.vocab_size and llm.eos_token_ids == [tok.eos_token_id]
        ids = tok.encode("abc")
        want = llm.model.generate(ids, max_gen_len=6, temperature=0, stop_tokens=llm.eos_token_ids)
        assert llm.generate("abc", max_new_tokens=6, temperature=0) == tok.decode(want)
    assert pyffi.get_llm_type(FIXTURES / "gguf" / "tiny-qwen2-f32.gguf") == "qwen2"


def test_seed_apis():
    from pyffi.__main__ import default_model
    model, config, tok = pyffi.load_checkpoint(default_model())
    assert config.vocab_size == 4096 and tok.endswith("tokenizer.json")
    model.close()
    assert pyffi.get_llm_type(default_model()) == "llama"
    with pyffi.create_llm(default_model(), n_ctx=64) as llm:
        assert llm.n_ctx == 64


def test_cli_text():
    out = subprocess.run([sys.executable, "-m", "pyffi", "generate", "The Python", "--max-new-tokens", "12"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert CASES[0]["greedy_text"].startswith(out.rstrip("\n"))
    assert len(out) > 20


def test_generation_config_defaults_are_honoured(tmp_path):
    """generation_config.json: several EOS ids and sampling defaults (greedy here)."""
    import shutil
    from pyffi.__main__ import default_model
    for f in default_model().iterdir():
        shutil.copy(f, tmp_path / f.name)
    case = CASES[0]
    stop_id = case["greedy_ids"][3]
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [1, stop_id], "do_sample": False, "top_p": 0.5}))
    with pyffi.Llama(tmp_path, n_ctx=128) as llm:
        assert stop_id in llm.eos_token_ids and 1 in llm.eos_token_ids
        assert llm._defaults["temperature"] == 0.0 and llm._defaults["top_p"] == 0.5
        out = llm.generate(case["prompt"], max_new_tokens=20)  # greedy by default now
        assert out == llm.tokenizer.decode(case["greedy_ids"][:3])
