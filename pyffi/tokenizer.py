"""Tokenizer: text <-> token ids, in Rust behind the C ABI (the same code C and
Go use). Reads tokenizer.json, SentencePiece tokenizer.model, the vocabulary
inside a .gguf file, or a model folder holding one of them."""

import json
import os

import numpy as np

from . import errors
from ._ffi import Handle, call, ffi, lib, path_arg, raise_error, read_string


def _text_bytes(text, what="text"):
    if isinstance(text, str):
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise errors.InvalidArgumentError(f"{what} is not valid UTF-8: {e.reason} at index {e.start}") from None
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise TypeError(f"{what} must be str or bytes, got {type(text).__name__}")


def _id_array(ids, what="ids"):
    a = np.asarray(ids if not isinstance(ids, (int, np.integer)) else [ids])
    if a.ndim != 1:
        raise errors.InvalidArgumentError(f"{what} must be a 1-D sequence of token ids, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise errors.InvalidArgumentError(f"{what} must hold integer token ids, got dtype {a.dtype}")
    if a.size and (a.min() < -2**31 or a.max() >= 2**31):
        raise errors.OutOfRangeError(f"{what} holds a token id outside the int32 range")
    return np.ascontiguousarray(a, dtype=np.int32)


def _read_text(fn, *args):
    """Call a text-returning function under the buffer rule; keeps NUL bytes."""
    n = ffi.new("size_t *")
    err = ffi.new("pyffi_error **")
    cap = 256
    while True:
        buf = ffi.new("char[]", cap)
        status = fn(*args, buf, cap, n, err)
        if status == lib.PYFFI_OK:
            return ffi.buffer(buf, n[0] - 1)[:].decode("utf-8")
        if status != lib.PYFFI_BUFFER_TOO_SMALL or n[0] <= cap:
            raise_error(status, err[0])
        lib.pyffi_error_free(err[0])
        cap = n[0]


class Detokenizer:
    """Streaming decoder: feed ids one at a time, get the text each completes.
    A character split across tokens is held back until it is whole."""

    def __init__(self, tokenizer, skip_special_tokens=True):
        out = ffi.new("pyffi_detokenizer **")
        call(lib.pyffi_detokenizer_new, tokenizer._handle(), bool(skip_special_tokens), out)
        self._ptr = ffi.gc(out[0], lib.pyffi_detokenizer_free)
        self._buf = ffi.new("char[]", 256)

    def feed(self, token_id):
        if not isinstance(token_id, (int, np.integer)) or not -2**31 <= token_id < 2**31:
            raise errors.OutOfRangeError(f"token id {token_id!r} is not a valid id")
        return self._call(lib.pyffi_detokenizer_feed, int(token_id))

    def flush(self):
        return self._call(lib.pyffi_detokenizer_flush)

    def _call(self, fn, *args):
        n = ffi.new("size_t *")
        err = ffi.new("pyffi_error **")
        status = fn(self._ptr, *args, self._buf, len(self._buf), n, err)
        if status == lib.PYFFI_BUFFER_TOO_SMALL:  # not consumed: retry with room
            lib.pyffi_error_free(err[0])
            self._buf = ffi.new("char[]", n[0])
            status = fn(self._ptr, *args, self._buf, len(self._buf), n, err)
        if status != lib.PYFFI_OK:
            raise_error(status, err[0])
        return ffi.buffer(self._buf, n[0] - 1)[:].decode("utf-8")


class Tokenizer(Handle):
    """Tokenizer(path): a tokenizer.json, tokenizer.model, .gguf file or a model folder."""

    _kind = "tokenizer"

    def __init__(self, path):
        if not os.path.exists(os.fspath(path)):
            raise errors.ModelNotFoundError(f"{path}: no such file or folder")
        out = ffi.new("pyffi_tokenizer **")
        call(lib.pyffi_tokenizer_load, path_arg(path), out)
        self._ptr = ffi.gc(out[0], lib.pyffi_tokenizer_free)
        self.path = os.fspath(path)
        info = json.loads(read_string(lib.pyffi_tokenizer_info_json, self._ptr))
        self.vocab_size = info["vocab_size"]
        self.bos_token_id, self.bos_token = info["bos_token_id"], info["bos_token"]
        self.eos_token_id, self.eos_token = info["eos_token_id"], info["eos_token"]
        self.pad_token_id, self.pad_token = info["pad_token_id"], info["pad_token"]
        self.unk_token_id, self.unk_token = info["unk_token_id"], info["unk_token"]
        self.eos_token_ids = info["eos_token_ids"]
        self.add_bos_token = info["add_bos_token"]
        self.add_eos_token = info["add_eos_token"]
        self.special_tokens = info["special_tokens"]
        self.chat_template = info["chat_template"]
        self.chat_templates = info["chat_templates"]

    def __len__(self):
        return self.vocab_size

    # Meta's and transformers' names for the same things.
    @property
    def n_words(self):
        return self.vocab_size

    @property
    def bos_id(self):
        return self.bos_token_id

    @property
    def eos_id(self):
        return self.eos_token_id

    def encode(self, text, bos=True, eos=False, special=False):
        """Token ids of `text`. bos/eos add the BOS/EOS token when the tokenizer
        has one; `special` parses special-token text such as "<s>" as that token
        (otherwise it is ordinary text)."""
        return self._encode(text, bos, eos, special).tolist()

    def _encode(self, text, bos, eos, special):
        data = _text_bytes(text)
        n = ffi.new("size_t *")
        cap = len(data) + 8
        while True:
            ids = np.empty(cap, dtype=np.int32)
            err = ffi.new("pyffi_error **")
            status = lib.pyffi_tokenizer_encode(self._handle(), data, len(data), bool(bos), bool(eos), bool(special),
                                                ffi.from_buffer("int32_t[]", ids, require_writable=True), cap, n, err)
            if status == lib.PYFFI_OK:
                return ids[: n[0]]
            if status != lib.PYFFI_BUFFER_TOO_SMALL:
                raise_error(status, err[0])
            lib.pyffi_error_free(err[0])
            cap = n[0]

    def encode_batch(self, texts, bos=True, eos=False, special=False):
        """A list of int32 numpy arrays, one per text."""
        return [self._encode(t, bos, eos, special) for t in texts]

    def __call__(self, text, bos=True, eos=False, special=False):
        return self.encode(text, bos=bos, eos=eos, special=special)

    def decode(self, ids, skip_special_tokens=True):
        a = _id_array(ids)
        return _read_text(lib.pyffi_tokenizer_decode, self._handle(), ffi.from_buffer("int32_t[]", a), len(a),
                          bool(skip_special_tokens))

    def token_to_bytes(self, token_id):
        """The bytes one token contributes to text."""
        if not isinstance(token_id, (int, np.integer)) or not -2**31 <= token_id < 2**31:
            raise errors.OutOfRangeError(f"token id {token_id!r} is not a valid id")
        n = ffi.new("size_t *")
        buf = ffi.new("uint8_t[]", 64)
        err = ffi.new("pyffi_error **")
        status = lib.pyffi_tokenizer_token_to_bytes(self._handle(), int(token_id), buf, 64, n, err)
        if status == lib.PYFFI_BUFFER_TOO_SMALL:
            lib.pyffi_error_free(err[0])
            buf = ffi.new("uint8_t[]", n[0])
            status = lib.pyffi_tokenizer_token_to_bytes(self._handle(), int(token_id), buf, n[0], n, err)
        if status != lib.PYFFI_OK:
            raise_error(status, err[0])
        return ffi.buffer(buf, n[0])[:]

    def token_to_id(self, token):
        """The id of a token given by its exact text, e.g. "<|eot_id|>"."""
        out = ffi.new("int32_t *")
        call(lib.pyffi_tokenizer_token_id, self._handle(), _text_bytes(token, "token"), out)
        return out[0]

    convert_tokens_to_ids = token_to_id

    def detokenizer(self, skip_special_tokens=True):
        return Detokenizer(self, skip_special_tokens)

    def apply_chat_template(self, messages, add_generation_prompt=False, chat_template=None, tokenize=False,
                            **kwargs):
        """Render `messages` ([{"role": ..., "content": ...}]) with the model's
        chat template, or with `chat_template` (a template, or the name of one of
        the tokenizer's templates). Extra keyword arguments (tools, documents,
        date_string, ...) become template variables. With tokenize=True, returns
        the token ids (special-token text parsed; no BOS added twice)."""
        try:
            msgs = json.dumps(list(messages), ensure_ascii=False)
            extra = json.dumps(kwargs, ensure_ascii=False) if kwargs else None
        except (TypeError, ValueError) as e:
            raise errors.InvalidArgumentError(f"messages must be JSON-serializable: {e}") from None
        text = _read_text(lib.pyffi_tokenizer_apply_chat_template, self._handle(), msgs.encode("utf-8"),
                          bool(add_generation_prompt),
                          ffi.NULL if chat_template is None else _text_bytes(chat_template, "chat_template"),
                          ffi.NULL if extra is None else extra.encode("utf-8"))
        if not tokenize:
            return text
        return self.encode_prompt(text)

    def encode_prompt(self, text):
        """Ids for a rendered prompt: special tokens parsed, BOS added only when
        the tokenizer wants one and the text does not already start with it."""
        bos = self.add_bos_token and not (self.bos_token and text.startswith(self.bos_token))
        return self.encode(text, bos=bos, special=True)
