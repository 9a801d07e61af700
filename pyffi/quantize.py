"""Quantized GGUF files, and quantized rows: the same code as the engine's
loader uses, reached through the C ABI.

    pyffi.quantize("hf-folder-or-model.gguf", "model-q4_0.gguf", "q4_0")
    python -m pyffi quantize SRC DST --type q4_k
"""

import os
import sys
import time

import numpy as np

from . import errors
from ._ffi import call, ffi, lib, path_arg

#: Types `quantize` can write (norms and biases always stay f32).
TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k")
#: Block formats (the ones `quantize_row` takes; `from_pretrained(dtype=...)` also takes "f16" and "bf16").
BLOCK_TYPES = ("q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k")


def _type_arg(qtype, allowed):
    if not isinstance(qtype, str) or qtype.lower() not in allowed:
        raise errors.InvalidArgumentError(f"qtype must be one of {', '.join(allowed)}; got {qtype!r}")
    return qtype.lower().encode()


class ProgressBar:
    """A one-line text progress bar on stderr (what the CLI shows)."""

    def __init__(self, stream=None, width=30):
        self.stream = stream or sys.stderr
        self.width = width
        self.start = time.monotonic()

    def __call__(self, done, total, name):
        frac = done / total if total else 1.0
        filled = int(self.width * frac)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.monotonic() - self.start
        line = f"\r[{bar}] {done}/{total} tensors {elapsed:5.1f}s {name[:40]:40}"
        self.stream.write(line)
        if done == total:
            self.stream.write("\n")
        self.stream.flush()


def quantize(src, dst, qtype="q8_0", progress=None):
    """Write `dst`, a GGUF file with the weights of `src` (a Hugging Face
    folder or a GGUF file) in `qtype` (one of TYPES). Tokenizer and chat
    template come along. With 4/5-bit types the output matrix gets Q6_K, as
    llama.cpp's quantizer does. `progress`: True for a progress bar on stderr,
    None or False for none, or a callable(done, total, tensor_name) that may
    return False to stop (then CancelledError is raised and nothing is
    written)."""
    if not os.path.exists(os.fspath(src)):
        raise errors.ModelNotFoundError(f"{src}: no such file or folder")
    t = _type_arg(qtype, TYPES)
    if progress is True:
        progress = ProgressBar()
    elif progress is False:
        progress = None
    elif progress is not None and not callable(progress):
        raise errors.InvalidArgumentError(
            f"progress must be True, False, None or a callable, got {type(progress).__name__}")
    if progress is None:
        call(lib.pyffi_quantize_model, path_arg(src), path_arg(dst), t, ffi.NULL, ffi.NULL)
        return
    raised = []

    @ffi.callback("bool(void *, size_t, size_t, const char *)")
    def _cb(_user, done, total, name):
        try:
            return progress(done, total, ffi.string(name).decode("utf-8", "replace")) is not False
        except BaseException as e:  # re-raised below, after the C call returns
            raised.append(e)
            return False

    try:
        call(lib.pyffi_quantize_model, path_arg(src), path_arg(dst), t, _cb, ffi.NULL)
    except errors.CancelledError:
        if raised:
            raise raised[0]
        raise


def quantized_size(n, qtype):
    """Bytes that n values take in block format qtype."""
    size = lib.pyffi_quantized_size(_type_arg(qtype, BLOCK_TYPES), n)
    if size == 0:
        block = 256 if qtype.lower().endswith("_k") else 32
        raise errors.InvalidArgumentError(f"{qtype} needs a multiple of {block} values, got {n}")
    return size


def quantize_row(values, qtype):
    """The blocks (uint8 array) for a 1-D float32 array, as the model
    quantizer makes them (ggml's reference quantizers)."""
    x = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    out = np.empty(quantized_size(x.size, qtype), dtype=np.uint8)
    call(lib.pyffi_quantize_row, _type_arg(qtype, BLOCK_TYPES), ffi.from_buffer("float[]", x), x.size,
         ffi.from_buffer("uint8_t[]", out, require_writable=True), out.size)
    return out


def dequantize_row(data, qtype, n):
    """The n float32 values that the blocks in `data` stand for."""
    raw = np.ascontiguousarray(np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray)
                               else data.view(np.uint8).reshape(-1))
    out = np.empty(n, dtype=np.float32)
    call(lib.pyffi_dequantize_row, _type_arg(qtype, BLOCK_TYPES), ffi.from_buffer("uint8_t[]", raw), raw.size,
         ffi.from_buffer("float[]", out, require_writable=True), n)
    return out
