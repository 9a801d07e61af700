"""Llama: text in, text out, and chat — the high-level API over Transformer
and Tokenizer, in the shape llama-cpp-python users know."""

import json
import os
import time
import uuid
from pathlib import Path

from . import errors
from .config import ModelArgs
from .model import Transformer
from .tokenizer import Tokenizer

# Sampling defaults when neither the call nor generation_config.json sets them.
_DEFAULTS = dict(temperature=0.8, top_p=0.95, top_k=40, min_p=0.05, repeat_penalty=1.0)


def _model_folder(path):
    p = Path(os.fspath(path))
    return p if p.is_dir() else p.parent


class _StopStrings:
    """Holds back text that might be the start of a stop string, so a stop
    string split across tokens is never half-emitted."""

    def __init__(self, stops):
        self.stops = [s for s in stops if s]
        self.held = ""
        self.stopped = False

    def push(self, piece):
        """Text that is safe to emit now; sets `stopped` when a stop string appears."""
        text = self.held + piece
        hits = [(text.find(s), s) for s in self.stops if s in text]
        if hits:
            self.stopped = True
            self.held = ""
            return text[: min(hits)[0]]
        keep = 0
        for s in self.stops:  # longest suffix of text that is a prefix of a stop string
            for k in range(min(len(s) - 1, len(text)), keep, -1):
                if s.startswith(text[-k:]):
                    keep = k
                    break
        self.held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self):
        text, self.held = self.held, ""
        return text


class Llama:
    """Llama(model_path, tokenizer_path=None, n_ctx=2048, n_threads=None, seed=None)

    model_path: a Hugging Face folder (config.json + safetensors) or a .gguf
    file (F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors, computed in float32). The tokenizer
    is found beside the model when tokenizer_path is not given. n_ctx is capped
    at the model's own context length."""

    def __init__(self, model_path, tokenizer_path=None, n_ctx=2048, n_threads=None, seed=None):
        self.model_path = os.fspath(model_path)
        gguf = self.model_path.endswith(".gguf")
        if not isinstance(n_ctx, int) or n_ctx <= 0:
            raise errors.InvalidArgumentError(f"n_ctx must be a positive integer, got {n_ctx!r}")
        self.model = Transformer.from_pretrained(model_path, n_threads=n_threads)
        self.model._n_ctx = min(n_ctx, self.model.config.max_seq_len)  # before the session exists
        if tokenizer_path is None:
            tokenizer_path = model_path if gguf else _model_folder(model_path)
        self.tokenizer = Tokenizer(tokenizer_path)
        if self.tokenizer.vocab_size > self.model.vocab_size:
            raise errors.InvalidArgumentError(
                f"the tokenizer has {self.tokenizer.vocab_size} tokens but the model only {self.model.vocab_size}")
        self.seed = seed
        self.n_ctx = self.model.n_ctx
        self._defaults = dict(_DEFAULTS)
        gen_path = _model_folder(model_path) / "generation_config.json"
        if not gguf and gen_path.exists():
            gen = json.loads(gen_path.read_text())
            for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                                 ("min_p", "min_p"), ("repeat_penalty", "repetition_penalty")):
                if gen.get(theirs) is not None:
                    self._defaults[ours] = gen[theirs]
            if gen.get("do_sample") is False:
                self._defaults["temperature"] = 0.0
        eos = set(self.tokenizer.eos_token_ids) | set(self.model.config.eos_token_ids)
        self.eos_token_ids = sorted(i for i in eos if 0 <= i < self.model.vocab_size)

    def close(self):
        self.model.close()
        self.tokenizer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def tokenize(self, text, add_bos=True, special=False):
        return self.tokenizer.encode(text, bos=add_bos and self.tokenizer.add_bos_token, special=special)

    def detokenize(self, ids):
        return self.tokenizer.decode(ids)

    def _sampling(self, temperature, top_p, top_k, min_p, repeat_penalty, seed):
        d = self._defaults
        return dict(temperature=d["temperature"] if temperature is None else temperature,
                    top_p=d["top_p"] if top_p is None else top_p,
                    top_k=d["top_k"] if top_k is None else top_k,
                    min_p=d["min_p"] if min_p is None else min_p,
                    repeat_penalty=d["repeat_penalty"] if repeat_penalty is None else repeat_penalty,
                    seed=self.seed if seed is None else seed)

    def _pieces(self, prompt_ids, max_new_tokens, stop, repeat_last_n, sampling, state):
        """Generates text pieces; fills state with token counts and finish_reason."""
        if isinstance(stop, str):
            stop = [stop]
        stops = _StopStrings(stop or [])
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise errors.InvalidArgumentError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
        if len(prompt_ids) >= self.n_ctx:
            raise errors.OutOfRangeError(f"the prompt has {len(prompt_ids)} tokens but the context is n_ctx={self.n_ctx}")
        max_new = min(max_new_tokens, self.n_ctx - len(prompt_ids))
        detok = self.tokenizer.detokenizer()
        state.update(prompt_tokens=len(prompt_ids), completion_tokens=0, finish_reason="length")
        tokens = self.model.session.generate(prompt_ids, max_gen_len=max_new, repeat_last_n=repeat_last_n,
                                             stop_tokens=self.eos_token_ids, stream=True, **sampling)
        try:
            for tok in tokens:
                state["completion_tokens"] += 1
                text = stops.push(detok.feed(tok))
                if text:
                    yield text
                if stops.stopped:
                    state["finish_reason"] = "stop"
                    return
            state["finish_reason"] = "stop" if tokens.finish_reason == "stop" else "length"
            text = stops.push(detok.flush())
            text += "" if stops.stopped else stops.flush()
            if stops.stopped:
                state["finish_reason"] = "stop"
            if text:
                yield text
        finally:
            tokens.close()

    def generate(self, prompt, max_new_tokens=256, temperature=None, top_p=None, top_k=None, min_p=None,
                 repeat_penalty=None, repeat_last_n=64, seed=None, stop=None, stream=False):
        """The completion of `prompt` (a str): the text, or with stream=True an
        iterator of text pieces. `stop` strings (one or a list) end generation
        and are not returned; EOS ends it too. temperature=0 is greedy."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        ids = self.tokenize(prompt)
        if not ids:
            raise errors.InvalidArgumentError("the prompt is empty and the tokenizer has no BOS token")
        state = {}
        pieces = self._pieces(ids, max_new_tokens, stop, repeat_last_n,
                              self._sampling(temperature, top_p, top_k, min_p, repeat_penalty, seed), state)
        return pieces if stream else "".join(pieces)

    __call__ = generate

    def chat_completion(self, messages, max_new_tokens=256, temperature=None, top_p=None, top_k=None, min_p=None,
                        repeat_penalty=None, repeat_last_n=64, seed=None, stop=None, stream=False,
                        chat_template=None):
        """An OpenAI-style chat completion dict, or with stream=True an iterator
        of OpenAI-style chunks."""
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, chat_template=chat_template)
        ids = self.tokenizer.encode_prompt(text)
        state = {}
        pieces = self._pieces(ids, max_new_tokens, stop, repeat_last_n,
                              self._sampling(temperature, top_p, top_k, min_p, repeat_penalty, seed), state)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": os.path.basename(self.model_path.rstrip("/"))}
        if stream:
            return self._chunks(pieces, state, meta)
        content = "".join(pieces)
        return {**meta, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": state["finish_reason"]}],
                "usage": _usage(state)}

    @staticmethod
    def _chunks(pieces, state, meta):
        def chunk(delta, finish=None):
            return {**meta, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        yield chunk({"role": "assistant"})
        for piece in pieces:
            yield chunk({"content": piece})
        yield {**chunk({}, state["finish_reason"]), "usage": _usage(state)}


def _usage(state):
    return {"prompt_tokens": state["prompt_tokens"], "completion_tokens": state["completion_tokens"],
            "total_tokens": state["prompt_tokens"] + state["completion_tokens"]}


def load_checkpoint(path):
    """(Transformer, ModelArgs, tokenizer_path or None) for a model folder."""
    folder = _model_folder(path)
    model = Transformer.from_pretrained(path)
    tok = next((str(folder / n) for n in ("tokenizer.json", "tokenizer.model") if (folder / n).exists()), None)
    return model, model.config, tok


def get_llm_type(path):
    """The architecture of a model folder or GGUF file: "llama", "mistral", "qwen2" or "phi3"."""
    if os.fspath(path).endswith(".gguf"):
        with Transformer.from_pretrained(path) as model:
            return model.config.model_type
    return ModelArgs.from_config_file(_model_folder(path)).model_type


def create_llm(path, **kwargs):
    """A Llama for the model at `path` (kwargs go to Llama)."""
    return Llama(path, **kwargs)
