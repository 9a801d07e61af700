"""ModelArgs (alias Config): a model's hyperparameters, validated by the
engine. Reads Hugging Face config.json files in both the old style
(top-level rope_theta / rope_scaling / torch_dtype) and the new one
(rope_parameters / dtype)."""

import dataclasses
import json
from dataclasses import dataclass
from typing import List, Optional, Union

from ._ffi import call, ffi, lib, path_arg, read_string


@dataclass
class ModelArgs:
    model_type: str = "llama"
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    vocab_size: int = 32000
    max_seq_len: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None
    partial_rotary_factor: float = 1.0
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: Optional[int] = None
    layer_types: Optional[List[str]] = None
    bos_token_id: Optional[int] = 1
    eos_token_id: Union[int, List[int], None] = 2
    pad_token_id: Optional[int] = None
    torch_dtype: Optional[str] = None

    # Names from Meta's reference implementation (llama/model.py).
    @property
    def dim(self):
        return self.hidden_size

    @property
    def n_layers(self):
        return self.num_hidden_layers

    @property
    def n_heads(self):
        return self.num_attention_heads

    @property
    def n_kv_heads(self):
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def norm_eps(self):
        return self.rms_norm_eps

    @property
    def eos_token_ids(self):
        e = self.eos_token_id
        return [] if e is None else [e] if isinstance(e, int) else list(e)

    def to_dict(self):
        """The fields, by their names here (max_seq_len, not max_position_embeddings)."""
        return dataclasses.asdict(self)

    def to_hf_dict(self):
        """The config as a Hugging Face config.json dict."""
        d = self.to_dict()
        d["max_position_embeddings"] = d.pop("max_seq_len")
        if d["sliding_window"] is not None:
            d["use_sliding_window"] = True
        if d["layer_types"] is None:
            del d["layer_types"]
        d["hidden_act"] = "silu"
        return d

    @classmethod
    def from_dict(cls, d):
        """From a dict with either these field names or config.json's; the engine
        validates it (ValueError naming the field when it is wrong)."""
        d = dict(d)
        if "max_seq_len" in d:
            d["max_position_embeddings"] = d.pop("max_seq_len")
        return cls._from_handle_json(_parse_json(json.dumps(d)))

    @classmethod
    def from_config_file(cls, path):
        """From a config.json, or a model folder holding one."""
        return cls._from_handle_json(_load(path))

    @classmethod
    def _from_normalized(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        d = dict(d)
        d["max_seq_len"] = d.pop("max_position_embeddings")
        eos = d.get("eos_token_id")
        if isinstance(eos, list) and len(eos) == 1:
            d["eos_token_id"] = eos[0]
        elif isinstance(eos, list) and not eos:
            d["eos_token_id"] = None
        if not d.get("use_sliding_window"):
            d["layer_types"] = None
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def _from_handle_json(cls, handle):
        try:
            return cls._from_normalized(json.loads(read_string(lib.pyffi_config_to_json, handle)))
        finally:
            lib.pyffi_config_free(handle)

    def _to_handle(self):
        """A validated pyffi_config* (caller frees)."""
        return _parse_json(json.dumps(self.to_hf_dict()))


Config = ModelArgs


def _parse_json(text):
    out = ffi.new("pyffi_config **")
    call(lib.pyffi_config_from_json, text.encode("utf-8"), out)
    return out[0]


def _load(path):
    out = ffi.new("pyffi_config **")
    call(lib.pyffi_config_load, path_arg(path), out)
    return out[0]
