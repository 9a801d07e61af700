//! Model configuration: parsed from a Hugging Face `config.json` (both the
//! old top-level `rope_theta`/`rope_scaling`/`torch_dtype` style and the new
//! `rope_parameters`/`dtype` style), validated with errors that name the field.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::{invalid_config, io_error, unsupported, Result};

/// The architectures one decoder implementation covers, by options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Phi3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Phi3 => "phi3",
        }
    }

    fn from_model_type(s: &str) -> Option<Arch> {
        match s {
            "llama" => Some(Arch::Llama),
            "mistral" => Some(Arch::Mistral),
            "qwen2" => Some(Arch::Qwen2),
            "phi3" => Some(Arch::Phi3),
            _ => None,
        }
    }

    fn from_architecture(s: &str) -> Option<Arch> {
        match s {
            "LlamaForCausalLM" => Some(Arch::Llama),
            "MistralForCausalLM" => Some(Arch::Mistral),
            "Qwen2ForCausalLM" => Some(Arch::Qwen2),
            "Phi3ForCausalLM" => Some(Arch::Phi3),
            _ => None,
        }
    }

    /// Phi-3 checkpoints store q/k/v and gate/up as single fused matrices.
    pub fn fused_projections(self) -> bool {
        self == Arch::Phi3
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (HF "linear").
    Linear {
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling (HF "llama3").
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub partial_rotary_factor: f64,
    /// Biases on the q, k and v projections (Qwen2 always; Llama `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama `attention_bias`).
    pub o_bias: bool,
    /// Biases on gate/up/down (Llama `mlp_bias`).
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    /// Attention window in tokens, for the layers flagged in `sliding_layers`.
    pub sliding_window: Option<usize>,
    pub sliding_layers: Vec<bool>,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
    pub dtype: Option<String>,
}

impl ModelConfig {
    pub fn load(path: &Path) -> Result<ModelConfig> {
        let file = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|e| io_error(&file, e))?;
        Self::from_json(&text).map_err(|e| {
            crate::error::Error::new(e.kind, format!("{}: {}", file.display(), e.message))
        })
    }

    pub fn from_json(text: &str) -> Result<ModelConfig> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| invalid_config(format!("config is not valid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| invalid_config("config must be a JSON object"))?;
        Self::from_map(obj)
    }

    fn from_map(m: &Map<String, Value>) -> Result<ModelConfig> {
        let arch = parse_arch(m)?;
        let vocab_size = req_usize(m, "vocab_size")?;
        let hidden_size = req_usize(m, "hidden_size")?;
        let intermediate_size = req_usize(m, "intermediate_size")?;
        let num_hidden_layers = req_usize(m, "num_hidden_layers")?;
        let num_attention_heads = req_usize(m, "num_attention_heads")?;
        let num_key_value_heads =
            opt_usize(m, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(invalid_config(format!(
                "num_attention_heads ({num_attention_heads}) must be a multiple of num_key_value_heads ({num_key_value_heads})"
            )));
        }
        let head_dim = match opt_usize(m, "head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(invalid_config(format!(
                        "hidden_size ({hidden_size}) is not divisible by num_attention_heads ({num_attention_heads}) and head_dim is not given"
                    )));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(invalid_config(format!(
                "head_dim ({head_dim}) must be even for rotary embeddings"
            )));
        }

        if let Some(act) = opt_str(m, "hidden_act")?.or(opt_str(m, "hidden_activation")?) {
            if act != "silu" {
                return Err(unsupported(format!(
                    "hidden_act '{act}' is not supported (only 'silu')"
                )));
            }
        }

        let default_eps = if arch == Arch::Phi3 { 1e-5 } else { 1e-6 };
        let rms_norm_eps = opt_f64(m, "rms_norm_eps")?.unwrap_or(default_eps);
        if !(rms_norm_eps > 0.0 && rms_norm_eps.is_finite()) {
            return Err(invalid_config(format!(
                "rms_norm_eps must be a positive number, got {rms_norm_eps}"
            )));
        }
        let max_position_embeddings = opt_usize(m, "max_position_embeddings")?.unwrap_or(2048);

        let (rope_theta, rope_scaling, partial_rotary_factor) = parse_rope(m, head_dim)?;

        let attention_bias = opt_bool(m, "attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match arch {
            Arch::Qwen2 => (true, false),
            Arch::Llama => (attention_bias, attention_bias),
            Arch::Mistral | Arch::Phi3 => (false, false),
        };
        let mlp_bias = arch == Arch::Llama && opt_bool(m, "mlp_bias")?.unwrap_or(false);
        let tie_word_embeddings = opt_bool(m, "tie_word_embeddings")?.unwrap_or(false);

        let (sliding_window, sliding_layers) = parse_sliding(m, arch, num_hidden_layers)?;

        let bos_token_id = opt_i64(m, "bos_token_id")?;
        let pad_token_id = opt_i64(m, "pad_token_id")?;
        let eos_token_ids = match m.get("eos_token_id") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_i64().ok_or_else(|| {
                        invalid_config(format!("eos_token_id must hold integers, got {v}"))
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            Some(v) => vec![v.as_i64().ok_or_else(|| {
                invalid_config(format!(
                    "eos_token_id must be an integer or a list, got {v}"
                ))
            })?],
        };
        for (name, id) in [
            ("bos_token_id", bos_token_id),
            ("pad_token_id", pad_token_id),
        ]
        .into_iter()
        .chain(eos_token_ids.iter().map(|&e| ("eos_token_id", Some(e))))
        {
            if let Some(id) = id {
                if id < 0 || id as u64 >= vocab_size as u64 {
                    return Err(invalid_config(format!(
                        "{name} ({id}) is outside the vocabulary (vocab_size {vocab_size})"
                    )));
                }
            }
        }

        let torch_dtype = opt_str(m, "torch_dtype")?;
        let new_dtype = opt_str(m, "dtype")?;
        if let (Some(a), Some(b)) = (&torch_dtype, &new_dtype) {
            if a != b {
                return Err(invalid_config(format!(
                    "torch_dtype ('{a}') and dtype ('{b}') disagree"
                )));
            }
        }
        let dtype = new_dtype.or(torch_dtype);

        Ok(ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            partial_rotary_factor,
            qkv_bias,
            o_bias,
            mlp_bias,
            tie_word_embeddings,
            sliding_window,
            sliding_layers,
            bos_token_id,
            eos_token_ids,
            pad_token_id,
            dtype,
        })
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Number of leading dimensions of each head that are rotated (even: checked at parse).
    pub fn rotary_dim(&self) -> usize {
        (self.head_dim as f64 * self.partial_rotary_factor) as usize
    }

    /// Normalized HF-style JSON (old style: top-level rope_theta/rope_scaling).
    /// `from_json(to_json())` gives back an equal config.
    pub fn to_json(&self) -> String {
        let rope_scaling = match &self.rope_scaling {
            RopeScaling::None => Value::Null,
            RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
        };
        let layer_types: Vec<&str> = self
            .sliding_layers
            .iter()
            .map(|&s| {
                if s {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        let v = json!({
            "model_type": self.arch.name(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "partial_rotary_factor": self.partial_rotary_factor,
            "attention_bias": self.qkv_bias && self.arch == Arch::Llama,
            "mlp_bias": self.mlp_bias,
            "tie_word_embeddings": self.tie_word_embeddings,
            "sliding_window": self.sliding_window,
            "layer_types": layer_types,
            "use_sliding_window": self.sliding_window.is_some(),
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.dtype,
            "hidden_act": "silu",
        });
        v.to_string()
    }
}

fn parse_arch(m: &Map<String, Value>) -> Result<Arch> {
    if let Some(t) = opt_str(m, "model_type")? {
        return Arch::from_model_type(&t).ok_or_else(|| {
            unsupported(format!(
                "model_type '{t}' is not supported (supported: llama, mistral, qwen2, phi3)"
            ))
        });
    }
    if let Some(Value::Array(archs)) = m.get("architectures") {
        if let Some(Value::String(a)) = archs.first() {
            return Arch::from_architecture(a)
                .ok_or_else(|| unsupported(format!("architecture '{a}' is not supported")));
        }
    }
    Err(invalid_config(
        "model_type is missing (and no architectures list to infer it from)",
    ))
}

/// Returns (rope_theta, scaling, partial_rotary_factor) from either style.
fn parse_rope(m: &Map<String, Value>, head_dim: usize) -> Result<(f64, RopeScaling, f64)> {
    let top_theta = opt_f64(m, "rope_theta")?;
    let params = match m.get("rope_parameters") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => Some(p),
        Some(v) => {
            return Err(invalid_config(format!(
                "rope_parameters must be an object, got {v}"
            )))
        }
    };
    let old_scaling = match m.get("rope_scaling") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => Some(p),
        Some(v) => {
            return Err(invalid_config(format!(
                "rope_scaling must be an object or null, got {v}"
            )))
        }
    };

    let param_theta = match params {
        Some(p) => opt_f64(p, "rope_theta").map_err(|e| prefix(e, "rope_parameters."))?,
        None => None,
    };
    let theta = match (top_theta, param_theta) {
        (Some(a), Some(b)) if a != b => {
            return Err(invalid_config(format!(
                "rope_theta ({a}) and rope_parameters.rope_theta ({b}) disagree"
            )))
        }
        (a, b) => a.or(b).unwrap_or(10000.0),
    };
    if !(theta > 0.0 && theta.is_finite()) {
        return Err(invalid_config(format!(
            "rope_theta must be a positive number, got {theta}"
        )));
    }

    let param_scaling = params.filter(|p| rope_type_of(p).map(|t| t != "default").unwrap_or(false));
    let (scaling_map, field) = match (param_scaling, old_scaling) {
        (Some(p), Some(o)) => {
            if rope_type_of(p) != rope_type_of(o) {
                return Err(invalid_config(
                    "rope_scaling and rope_parameters name different rope types",
                ));
            }
            (Some(p), "rope_parameters")
        }
        (Some(p), None) => (Some(p), "rope_parameters"),
        (None, Some(o)) => (Some(o), "rope_scaling"),
        (None, None) => (None, ""),
    };
    let scaling = match scaling_map {
        None => RopeScaling::None,
        Some(s) => {
            let kind = rope_type_of(s)
                .ok_or_else(|| invalid_config(format!("{field} has no rope_type")))?;
            let f = |name: &str| -> Result<f64> {
                opt_f64(s, name)
                    .map_err(|e| prefix(e, &format!("{field}.")))?
                    .ok_or_else(|| {
                        invalid_config(format!("{field}.{name} is missing for rope type '{kind}'"))
                    })
            };
            match kind.as_str() {
                "default" => RopeScaling::None,
                "linear" => RopeScaling::Linear {
                    factor: positive(f("factor")?, field, "factor")?,
                },
                "llama3" => {
                    let low = f("low_freq_factor")?;
                    let high = f("high_freq_factor")?;
                    if high <= low {
                        return Err(invalid_config(format!(
                            "{field}.high_freq_factor ({high}) must be larger than low_freq_factor ({low})"
                        )));
                    }
                    RopeScaling::Llama3 {
                        factor: positive(f("factor")?, field, "factor")?,
                        low_freq_factor: low,
                        high_freq_factor: high,
                        original_max_position_embeddings: positive(
                            f("original_max_position_embeddings")?,
                            field,
                            "original_max_position_embeddings",
                        )?,
                    }
                }
                other => return Err(unsupported(format!(
                    "{field} type '{other}' is not supported (supported: default, linear, llama3)"
                ))),
            }
        }
    };

    let prf_param = match params {
        Some(p) => {
            opt_f64(p, "partial_rotary_factor").map_err(|e| prefix(e, "rope_parameters."))?
        }
        None => None,
    };
    let prf = match (opt_f64(m, "partial_rotary_factor")?, prf_param) {
        (Some(a), Some(b)) if a != b => return Err(invalid_config(format!(
            "partial_rotary_factor ({a}) and rope_parameters.partial_rotary_factor ({b}) disagree"
        ))),
        (a, b) => a.or(b).unwrap_or(1.0),
    };
    let rotated = (head_dim as f64 * prf) as usize;
    if !(prf > 0.0 && prf <= 1.0) || rotated < 2 || rotated % 2 != 0 {
        return Err(invalid_config(format!(
            "partial_rotary_factor ({prf}) must be in (0, 1] and rotate an even number of dims (head_dim {head_dim} gives {rotated})"
        )));
    }
    Ok((theta, scaling, prf))
}

fn rope_type_of(m: &Map<String, Value>) -> Option<String> {
    m.get("rope_type")
        .or_else(|| m.get("type"))
        .and_then(|v| v.as_str())
        .map(|s| s.to_string())
}

fn parse_sliding(
    m: &Map<String, Value>,
    arch: Arch,
    layers: usize,
) -> Result<(Option<usize>, Vec<bool>)> {
    let window = opt_usize(m, "sliding_window")?;
    // Llama ignores the field; Qwen2 uses it only when use_sliding_window is set.
    let window = match arch {
        Arch::Llama => None,
        Arch::Qwen2 if !opt_bool(m, "use_sliding_window")?.unwrap_or(false) => None,
        _ => window,
    };
    let Some(w) = window else {
        return Ok((None, vec![false; layers]));
    };
    let flags = match m.get("layer_types") {
        Some(Value::Array(types)) => {
            if types.len() != layers {
                return Err(invalid_config(format!(
                    "layer_types has {} entries but num_hidden_layers is {layers}",
                    types.len()
                )));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Ok(true),
                    Some("full_attention") => Ok(false),
                    _ => Err(invalid_config(format!(
                        "layer_types entry {t} is not 'full_attention' or 'sliding_attention'"
                    ))),
                })
                .collect::<Result<Vec<_>>>()?
        }
        _ if arch == Arch::Qwen2 => {
            let first = opt_usize(m, "max_window_layers")?.unwrap_or(layers);
            (0..layers).map(|i| i >= first).collect()
        }
        _ => vec![true; layers],
    };
    if flags.iter().any(|&f| f) {
        Ok((Some(w), flags))
    } else {
        Ok((None, flags))
    }
}

fn prefix(mut e: crate::error::Error, p: &str) -> crate::error::Error {
    e.message = format!("{p}{}", e.message);
    e
}

fn positive(v: f64, field: &str, name: &str) -> Result<f64> {
    if v > 0.0 && v.is_finite() {
        Ok(v)
    } else {
        Err(invalid_config(format!(
            "{field}.{name} must be a positive number, got {v}"
        )))
    }
}

fn req_usize(m: &Map<String, Value>, key: &str) -> Result<usize> {
    opt_usize(m, key)?.ok_or_else(|| invalid_config(format!("{key} is missing")))
}

fn opt_usize(m: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 && n <= (1 << 31) => Ok(Some(n as usize)),
            _ => Err(invalid_config(format!(
                "{key} must be a positive integer, got {v}"
            ))),
        },
    }
}

fn opt_i64(m: &Map<String, Value>, key: &str) -> Result<Option<i64>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| invalid_config(format!("{key} must be an integer, got {v}"))),
    }
}

fn opt_f64(m: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| invalid_config(format!("{key} must be a number, got {v}"))),
    }
}

fn opt_bool(m: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| invalid_config(format!("{key} must be true or false, got {v}"))),
    }
}

fn opt_str(m: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(invalid_config(format!("{key} must be a string, got {v}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn base() -> Value {
        json!({"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2})
    }

    fn parse(v: &Value) -> Result<ModelConfig> {
        ModelConfig::from_json(&v.to_string())
    }

    #[test]
    fn defaults_and_derived_fields() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.head_dim, 4);
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.rms_norm_eps, 1e-6);
        assert_eq!(c.rope_scaling, RopeScaling::None);
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn old_and_new_rope_styles_agree() {
        let mut old = base();
        old["rope_theta"] = json!(500000.0);
        old["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let mut new = base();
        new["rope_parameters"] = json!({"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 8192});
        assert_eq!(parse(&old).unwrap(), parse(&new).unwrap());
    }

    #[test]
    fn round_trip_through_json() {
        let mut v = base();
        v["model_type"] = json!("mistral");
        v["sliding_window"] = json!(8);
        v["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
        v["eos_token_id"] = json!([2, 3]);
        let c = parse(&v).unwrap();
        assert_eq!(ModelConfig::from_json(&c.to_json()).unwrap(), c);
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(Value, &str, ErrorKind)> = vec![
            (
                {
                    let mut v = base();
                    v.as_object_mut().unwrap().remove("hidden_size");
                    v
                },
                "hidden_size",
                ErrorKind::InvalidConfig,
            ),
            (
                {
                    let mut v = base();
                    v["num_key_value_heads"] = json!(3);
                    v
                },
                "num_key_value_heads",
                ErrorKind::InvalidConfig,
            ),
            (
                {
                    let mut v = base();
                    v["model_type"] = json!("gpt2");
                    v
                },
                "model_type",
                ErrorKind::Unsupported,
            ),
            (
                {
                    let mut v = base();
                    v["vocab_size"] = json!("many");
                    v
                },
                "vocab_size",
                ErrorKind::InvalidConfig,
            ),
            (
                {
                    let mut v = base();
                    v["rope_theta"] = json!(1.0);
                    v["rope_parameters"] = json!({"rope_theta": 2.0});
                    v
                },
                "rope_theta",
                ErrorKind::InvalidConfig,
            ),
            (
                {
                    let mut v = base();
                    v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 2.0});
                    v
                },
                "yarn",
                ErrorKind::Unsupported,
            ),
            (
                {
                    let mut v = base();
                    v["torch_dtype"] = json!("float32");
                    v["dtype"] = json!("bfloat16");
                    v
                },
                "dtype",
                ErrorKind::InvalidConfig,
            ),
            (
                {
                    let mut v = base();
                    v["eos_token_id"] = json!(99);
                    v
                },
                "eos_token_id",
                ErrorKind::InvalidConfig,
            ),
            (
                {
                    let mut v = base();
                    v["hidden_act"] = json!("gelu");
                    v
                },
                "hidden_act",
                ErrorKind::Unsupported,
            ),
        ];
        for (v, field, kind) in cases {
            let e = parse(&v).unwrap_err();
            assert_eq!(e.kind, kind, "{}", e.message);
            assert!(
                e.message.contains(field),
                "{} does not name {field}",
                e.message
            );
        }
        assert!(ModelConfig::from_json("{not json").is_err());
    }

    #[test]
    fn qwen2_sliding_layers() {
        let mut v = base();
        v["model_type"] = json!("qwen2");
        v["use_sliding_window"] = json!(true);
        v["sliding_window"] = json!(4);
        v["max_window_layers"] = json!(1);
        let c = parse(&v).unwrap();
        assert!(c.qkv_bias && !c.o_bias);
        assert_eq!(c.sliding_layers, vec![false, true]);
        assert_eq!(c.sliding_window, Some(4));
    }
}
