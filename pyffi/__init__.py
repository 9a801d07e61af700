"""pyffi: run Llama-family models (Llama, Mistral, Qwen2, Phi-3) on a CPU from
Python, through the same C ABI that C and Go programs use.

    import pyffi
    model = pyffi.Transformer.from_pretrained("path/to/hf-folder")
    logits = model.forward([[1, 2, 3]])          # numpy [batch, seq, vocab]
    tokens = model.generate([1, 2, 3], max_gen_len=20, temperature=0, seed=0)
"""

from . import _ffi
from ._ffi import lib as _lib
from .config import Config, ModelArgs
from .errors import (BufferTooSmallError, CancelledError, ConfigError, InternalError,
                     InvalidArgumentError, ModelNotFoundError, OutOfRangeError, PyffiError,
                     PyffiIOError, UnsupportedError, WeightsError)
from .llama import Llama, create_llm, get_llm_type, load_checkpoint
from .model import Session, TokenStream, Transformer
from .quantize import dequantize_row, quantize, quantize_row
from .tokenizer import Detokenizer, Tokenizer

__version__ = _ffi.ffi.string(_lib.pyffi_version()).decode()


def set_threads(n):
    """Default number of worker threads for sessions not given n_threads
    (they follow it from their next call). 0 restores the default: all CPUs."""
    if not isinstance(n, int) or n < 0 or n > 1024:
        raise ValueError(f"threads must be an integer in [0, 1024], got {n!r}")
    _lib.pyffi_set_threads(n)


def get_threads():
    """The current default number of worker threads."""
    return _lib.pyffi_get_threads()


__all__ = [
    "BufferTooSmallError", "CancelledError", "Config", "ConfigError", "InternalError", "InvalidArgumentError",
    "ModelArgs", "ModelNotFoundError", "OutOfRangeError", "PyffiError", "PyffiIOError",
    "Session", "TokenStream", "Transformer", "Tokenizer", "Detokenizer", "Llama", "create_llm", "get_llm_type",
    "load_checkpoint", "UnsupportedError", "WeightsError", "get_threads", "set_threads",
    "quantize", "quantize_row", "dequantize_row",
]
