"""Tokenizers against their references: SentencePiece (tokenizer.model), HF
tokenizers (tokenizer.json), llama.cpp's own vocab test vectors (GGUF), and
transformers' chat-template renders; streaming detokenization; bad input."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import pyffi
from conftest import FIXTURES

TEXT = FIXTURES / "text"
SPM_CASES = json.loads((TEXT / "llama2-spm-golden.json").read_text())["cases"]
VOCABS = ["llama-spm", "llama-bpe", "gpt-2"]


@pytest.fixture(scope="module")
def spm():
    return pyffi.Tokenizer(TEXT / "llama2-tokenizer.model")


@pytest.fixture(scope="module")
def hf():
    return pyffi.Tokenizer(TEXT / "llama2-tokenizer.json")


@pytest.fixture(scope="module")
def demo():
    from pyffi.__main__ import default_model
    return pyffi.Tokenizer(default_model())


@pytest.mark.parametrize("case", SPM_CASES, ids=lambda c: repr(c["text"][:20]))
def test_sentencepiece_model_matches_sentencepiece(spm, case):
    assert spm.encode(case["text"], bos=False) == case["ids"]
    assert spm.encode(case["text"]) == case["ids_with_bos"]
    assert spm.decode(case["ids"]) == case["decoded"] == case["text"]


@pytest.mark.parametrize("case", SPM_CASES, ids=lambda c: repr(c["text"][:20]))
def test_tokenizer_json_matches_hf_tokenizers(hf, case):
    # The golden came from encode(add_special_tokens=False), which parses "<s>".
    assert hf.encode(case["text"], bos=False, special=True) == case["ids_tokenizer_json"]
    if case["ids_tokenizer_json"] == case["ids"]:
        assert hf.decode(case["ids_tokenizer_json"]) == case["decoded"]


def vocab_cases():
    for name in VOCABS:
        texts = (FIXTURES / "vocab" / f"ggml-vocab-{name}.gguf.inp").read_text().split("\n__ggml_vocab_test__\n")
        outs = (FIXTURES / "vocab" / f"ggml-vocab-{name}.gguf.out").read_text().split("\n")
        assert len(outs) >= len(texts)
        for i, text in enumerate(texts):
            yield pytest.param(name, text, [int(t) for t in outs[i].split()], id=f"{name}-{i}")


@pytest.fixture(scope="module")
def gguf_vocab():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = pyffi.Tokenizer(FIXTURES / "vocab" / f"ggml-vocab-{name}.gguf")
        return cache[name]
    return get


@pytest.mark.parametrize("name, text, want", list(vocab_cases()))
def test_gguf_vocab_matches_llama_cpp(gguf_vocab, name, text, want):
    tok = gguf_vocab(name)
    assert tok.encode(text, bos=False, special=True) == want
    if name != "llama-spm" or not text.startswith(" "):
        assert tok.decode(want) == text or name == "llama-spm"


def test_gguf_vocab_metadata(gguf_vocab):
    t = gguf_vocab("llama-spm")
    assert (t.vocab_size, t.bos_token_id, t.eos_token_id, t.bos_token) == (32000, 1, 2, "<s>")
    assert gguf_vocab("llama-bpe").token_to_id("<|begin_of_text|>") == gguf_vocab("llama-bpe").bos_token_id


TEMPLATE_CASES = json.loads((TEXT / "chat-template-golden.json").read_text())["cases"]


@pytest.mark.parametrize("case", TEMPLATE_CASES,
                         ids=lambda c: f"{c['template']}-{len(c['messages'])}-{c['add_generation_prompt']}")
def test_chat_templates_match_transformers(demo, case):
    assert (demo.bos_token, demo.eos_token) == (case["bos_token"], case["eos_token"])
    template = (FIXTURES / "templates" / case["template"]).read_text()
    if case["rendered"] is None:
        with pytest.raises(ValueError, match="chat template error"):
            demo.apply_chat_template(case["messages"], case["add_generation_prompt"], chat_template=template)
    else:
        out = demo.apply_chat_template(case["messages"], case["add_generation_prompt"], chat_template=template)
        assert out == case["rendered"]


def test_chat_template_tokenize_and_errors(demo):
    template = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
    ids = demo.apply_chat_template([{"role": "user", "content": "hi"}], chat_template=template, tokenize=True)
    assert ids[0] == demo.bos_token_id and ids.count(demo.bos_token_id) == 1
    with pytest.raises(ValueError, match="no chat template"):
        demo.apply_chat_template([{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="compile"):
        demo.apply_chat_template([{"role": "user", "content": "x"}], chat_template="{% for %}")
    with pytest.raises(ValueError, match="role"):
        demo.apply_chat_template([{"content": "x"}], chat_template=template)
    assert demo.apply_chat_template([], chat_template="{{ tools | tojson }}", tools=[{"name": "f"}]) == \
        '[{"name": "f"}]'


@pytest.mark.parametrize("which", ["spm", "hf", "demo"])
def test_streaming_detokenizer_equals_decode(which, request):
    tok = request.getfixturevalue(which)
    for case in SPM_CASES:
        ids = tok.encode(case["text"])
        d = tok.detokenizer()
        pieces = [d.feed(i) for i in ids] + [d.flush()]
        assert "\ufffd" not in "".join(pieces) or "\ufffd" in case["text"]
        assert "".join(pieces) == tok.decode(ids), case["text"]


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_round_trip_and_streaming_property(demo, text):
    ids = demo.encode(text, bos=False)
    assert demo.decode(ids) == text
    d = demo.detokenizer()
    assert "".join(d.feed(i) for i in ids) + d.flush() == text


def test_multibyte_character_waits_until_complete(spm):
    ids = spm.encode("🦙", bos=False)  # byte-fallback tokens, one byte each
    assert len(ids) >= 4
    d = spm.detokenizer()
    assert [d.feed(i) for i in ids] == [""] * (len(ids) - 1) + ["🦙"]


def test_token_to_bytes_and_specials(spm, demo):
    assert spm.token_to_bytes(spm.token_to_id("<0xF0>")) == b"\xf0"
    assert spm.token_to_bytes(15043) == b" Hello"
    assert spm.encode("<s>", bos=False, special=True) == [1]
    assert spm.encode("<s>", bos=False) != [1]
    assert demo.special_tokens == {"<s>": 0, "</s>": 1}
    batch = demo.encode_batch(["The Python", "x"])
    assert all(isinstance(a, np.ndarray) and a.dtype == np.int32 for a in batch)
    assert batch[0].tolist() == [0, 555, 459]


def test_bad_input(spm, hf, tmp_path):
    for tok in (spm, hf):
        assert tok.encode("", bos=False) == []
        with pytest.raises(ValueError, match="UTF-8"):
            tok.encode(b"\xff\xfe bad")
        with pytest.raises(ValueError, match="UTF-8"):
            tok.encode("lone \ud800 surrogate")
        with pytest.raises(ValueError, match="32000|vocab"):
            tok.decode([5, 32000])
        with pytest.raises(ValueError):
            tok.decode([-1])
        with pytest.raises(ValueError):
            tok.token_to_bytes(10**6)
        big = "The quick brown fox jumps over the lazy dog. Ünïcödé 🦙\n" * 17000  # ~1 MB
        ids = tok.encode(big, bos=False)
        assert tok.decode(ids) == big
    with pytest.raises(FileNotFoundError):
        pyffi.Tokenizer(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        pyffi.Tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match="JSON"):
        pyffi.Tokenizer(tmp_path)
    (tmp_path / "bad.model").write_bytes(b"\x0a\xff\xff\xff\xff\x0f garbage")
    with pytest.raises(ValueError):
        pyffi.Tokenizer(tmp_path / "bad.model")
