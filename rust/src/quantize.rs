//! Writing GGUF files in llama.cpp's layout with the weights in a chosen
//! format: pyffi's converter and quantizer in one. The source is a GGUF file
//! (its metadata, tokenizer and chat template are carried over) or a Hugging
//! Face folder (config, safetensors weights and tokenizer are converted the
//! way llama.cpp's convert_hf_to_gguf.py lays them out).
//!
//! Which format each tensor gets follows llama.cpp's quantizer: 1-D tensors
//! (norms, biases) stay float32; with a 4- or 5-bit target the output matrix
//! gets Q6_K, because it matters most; a matrix whose rows do not split into
//! the format's blocks falls back to Q8_0, or to float16.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::SafeTensors;

use crate::config::{Arch, ModelConfig, RopeScaling};
use crate::error::{
    cancelled, invalid_argument, invalid_weights, io_error, unsupported, Error, Result,
};
use crate::kernels::quant;
use crate::loader::gguf::{GgmlType, Gguf, GgufWriter};
use crate::tensor::{DType, TensorView};

/// The format asked for (per-tensor exceptions as described above).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl Target {
    pub const ALL: [Target; 9] = [
        Target::F32,
        Target::F16,
        Target::BF16,
        Target::Q8_0,
        Target::Q4_0,
        Target::Q4_1,
        Target::Q4_K,
        Target::Q5_K,
        Target::Q6_K,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::F32 => "f32",
            Target::F16 => "f16",
            Target::BF16 => "bf16",
            Target::Q8_0 => "q8_0",
            Target::Q4_0 => "q4_0",
            Target::Q4_1 => "q4_1",
            Target::Q4_K => "q4_k",
            Target::Q5_K => "q5_k",
            Target::Q6_K => "q6_k",
        }
    }

    pub fn parse(name: &str) -> Result<Target> {
        let lower = name.to_ascii_lowercase();
        Target::ALL
            .into_iter()
            .find(|t| t.name() == lower)
            .ok_or_else(|| {
                let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
                invalid_argument(format!(
                    "unknown quantization type '{name}' (one of: {})",
                    names.join(", ")
                ))
            })
    }

    fn ggml(self) -> GgmlType {
        match self {
            Target::F32 => GgmlType::F32,
            Target::F16 => GgmlType::F16,
            Target::BF16 => GgmlType::BF16,
            Target::Q8_0 => GgmlType::Q8_0,
            Target::Q4_0 => GgmlType::Q4_0,
            Target::Q4_1 => GgmlType::Q4_1,
            Target::Q4_K => GgmlType::Q4_K,
            Target::Q5_K => GgmlType::Q5_K,
            Target::Q6_K => GgmlType::Q6_K,
        }
    }

    /// llama.cpp's `general.file_type` (LLAMA_FTYPE_MOSTLY_*; the k-quant
    /// targets are the "_S" mixes: one format everywhere, Q6_K output).
    fn file_type(self) -> u32 {
        match self {
            Target::F32 => 0,
            Target::F16 => 1,
            Target::Q4_0 => 2,
            Target::Q4_1 => 3,
            Target::Q8_0 => 7,
            Target::Q4_K => 14,
            Target::Q5_K => 16,
            Target::Q6_K => 18,
            Target::BF16 => 32,
        }
    }
}

/// The format one tensor gets. `dims` is in ggml order (row length first).
pub fn tensor_type(target: Target, name: &str, dims: &[u64], is_output: bool) -> GgmlType {
    if dims.len() < 2 || name.ends_with(".bias") || name.ends_with("_norm.weight") {
        return GgmlType::F32;
    }
    let want = match target {
        Target::Q4_0 | Target::Q4_1 | Target::Q4_K | Target::Q5_K if is_output => GgmlType::Q6_K,
        t => t.ggml(),
    };
    let cols = dims[0] as usize;
    if cols % want.block_size() == 0 {
        want
    } else if want.is_quantized() && cols % 32 == 0 {
        GgmlType::Q8_0
    } else if want.is_quantized() {
        GgmlType::F16
    } else {
        want
    }
}

/// Bytes of `values` (row-major, rows of `cols`) in format `t`.
pub fn encode(t: GgmlType, values: &[f32], cols: usize) -> Result<Vec<u8>> {
    Ok(match t {
        GgmlType::F32 => crate::tensor::f32_le_bytes(values).into_owned(),
        GgmlType::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        GgmlType::BF16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        other => {
            let q = crate::loader::gguf_model::quant_type(other)
                .ok_or_else(|| unsupported(format!("cannot write {other} tensors")))?;
            let rb = q.row_bytes(cols);
            let mut out = vec![0u8; values.len() / cols * rb];
            out.par_chunks_mut(rb)
                .zip(values.par_chunks(cols))
                .for_each(|(o, row)| quant::quantize_row(q, row, o));
            out
        }
    })
}

/// One tensor of the output, and where its values come from.
struct Item {
    name: String,
    /// ggml order: row length first.
    dims: Vec<u64>,
    source: Source,
}

enum Source {
    /// A tensor of the source GGUF file, by index.
    Gguf(usize),
    /// A safetensors tensor (file index, HF name), rows permuted for
    /// llama.cpp's interleaved rotary when `permute_heads` is set.
    Safetensors {
        file: usize,
        name: String,
        permute_heads: Option<usize>,
    },
}

/// Convert/quantize `src` (a .gguf file or an HF folder) into the GGUF file
/// `dst`. `progress(done, total, tensor_name)` is called before each tensor;
/// returning false stops the work (nothing is written).
pub fn quantize_file(
    src: &Path,
    dst: &Path,
    target: Target,
    progress: &mut dyn FnMut(usize, usize, &str) -> bool,
) -> Result<()> {
    if !src.exists() {
        return Err(Error::new(
            crate::error::ErrorKind::NotFound,
            format!("{}: no such file or folder", src.display()),
        ));
    }
    let is_gguf = src.is_file();
    let gguf = if is_gguf {
        Some(Gguf::open(src)?)
    } else {
        None
    };
    let mut maps: Vec<Mmap> = Vec::new();
    let mut w = GgufWriter::new();
    let items = match &gguf {
        Some(g) => gguf_items(g, &mut w)?,
        None => hf_items(src, &mut w, &mut maps)?,
    };
    let is_output = |name: &str| {
        name == "output.weight"
            || (name == "token_embd.weight" && !items.iter().any(|i| i.name == "output.weight"))
    };
    let total = items.len();
    for (done, item) in items.iter().enumerate() {
        if !progress(done, total, &item.name) {
            return Err(cancelled("quantization was cancelled"));
        }
        let t = tensor_type(target, &item.name, &item.dims, is_output(&item.name));
        let bytes: Cow<[u8]> = match &item.source {
            Source::Gguf(i) => {
                let g = gguf.as_ref().expect("gguf source");
                let info = &g.tensors()[*i];
                if info.ggml_type == t {
                    Cow::Owned(g.tensor_data(info).to_vec())
                } else {
                    let values = crate::loader::gguf_model::dequantize(g, info)?;
                    Cow::Owned(encode(t, &values, item.dims[0] as usize)?)
                }
            }
            Source::Safetensors {
                file,
                name,
                permute_heads,
            } => {
                let st = SafeTensors::deserialize(&maps[*file])
                    .map_err(|e| invalid_weights(format!("{}: {e}", src.display())))?;
                let view = st
                    .tensor(name)
                    .map_err(|e| invalid_weights(format!("{name}: {e}")))?;
                let dtype = match view.dtype() {
                    safetensors::Dtype::F32 => DType::F32,
                    safetensors::Dtype::F16 => DType::F16,
                    safetensors::Dtype::BF16 => DType::BF16,
                    other => {
                        return Err(unsupported(format!(
                            "tensor '{name}' has dtype {other:?}; supported: F32, F16, BF16"
                        )))
                    }
                };
                let tv = TensorView {
                    dtype,
                    shape: view.shape().to_vec(),
                    data: view.data(),
                };
                let mut values = vec![
                    0.0f32;
                    tv.numel().ok_or_else(|| invalid_weights(format!(
                        "tensor '{name}' is too large"
                    )))?
                ];
                tv.to_f32(&mut values)?;
                if let Some(heads) = permute_heads {
                    values = interleave_rotary_rows(&values, item.dims[0] as usize, *heads);
                }
                Cow::Owned(encode(t, &values, item.dims[0] as usize)?)
            }
        };
        w.add_tensor(&item.name, &item.dims, t, bytes)?;
    }
    w.add_kv("general.file_type", target.file_type())?;
    w.add_kv("general.quantization_version", 2u32)?;
    progress(total, total, "");
    // Write to a temporary name first, so a failure leaves no half file behind.
    let tmp = dst.with_extension("gguf.partial");
    let result = (|| {
        let f = File::create(&tmp).map_err(|e| io_error(dst, e))?;
        let mut bw = std::io::BufWriter::new(f);
        w.write_to(&mut bw).map_err(|e| io_error(dst, e))?;
        std::io::Write::flush(&mut bw).map_err(|e| io_error(dst, e))?;
        std::fs::rename(&tmp, dst).map_err(|e| io_error(dst, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Metadata copied, every tensor listed for re-encoding.
fn gguf_items(g: &Gguf, w: &mut GgufWriter) -> Result<Vec<Item>> {
    for (key, value) in g.metadata() {
        if matches!(
            key.as_str(),
            "general.file_type" | "general.quantization_version" | "general.alignment"
        ) {
            continue;
        }
        w.add_kv(key, value.clone())?;
    }
    Ok(g.tensors()
        .iter()
        .enumerate()
        .map(|(i, t)| Item {
            name: t.name.clone(),
            dims: t.dims.clone(),
            source: Source::Gguf(i),
        })
        .collect())
}

/// HF rows in rotate-half order -> llama.cpp's interleaved pairs: within
/// each head, row i goes to 2i and row i + d/2 to 2i + 1.
fn interleave_rotary_rows(values: &[f32], cols: usize, heads: usize) -> Vec<f32> {
    let rows = values.len() / cols;
    let hd = rows / heads;
    let mut out = vec![0.0f32; values.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for (dst, src) in [(2 * i, i), (2 * i + 1, i + hd / 2)] {
                let (d, s) = ((h * hd + dst) * cols, (h * hd + src) * cols);
                out[d..d + cols].copy_from_slice(&values[s..s + cols]);
            }
        }
    }
    out
}

/// llama.cpp's name for an HF tensor name (None for tensors it drops).
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let g = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.qkv_proj.weight" => "attn_qkv.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.gate_up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}"))
}

fn hf_items(dir: &Path, w: &mut GgufWriter, maps: &mut Vec<Mmap>) -> Result<Vec<Item>> {
    let cfg = ModelConfig::load(dir)?;
    let arch = match cfg.arch {
        Arch::Llama | Arch::Mistral => "llama",
        Arch::Qwen2 => "qwen2",
        Arch::Phi3 => "phi3",
    };
    let a = |k: &str| format!("{arch}.{k}");
    w.add_kv("general.architecture", arch)?;
    w.add_kv(
        "general.name",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("model"),
    )?;
    w.add_kv(&a("context_length"), cfg.max_position_embeddings as u32)?;
    w.add_kv(&a("embedding_length"), cfg.hidden_size as u32)?;
    w.add_kv(&a("block_count"), cfg.num_hidden_layers as u32)?;
    w.add_kv(&a("feed_forward_length"), cfg.intermediate_size as u32)?;
    w.add_kv(&a("attention.head_count"), cfg.num_attention_heads as u32)?;
    w.add_kv(
        &a("attention.head_count_kv"),
        cfg.num_key_value_heads as u32,
    )?;
    w.add_kv(
        &a("attention.layer_norm_rms_epsilon"),
        cfg.rms_norm_eps as f32,
    )?;
    w.add_kv(&a("rope.freq_base"), cfg.rope_theta as f32)?;
    w.add_kv(&a("rope.dimension_count"), cfg.rotary_dim() as u32)?;
    w.add_kv(&a("vocab_size"), cfg.vocab_size as u32)?;
    if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size {
        w.add_kv(&a("attention.key_length"), cfg.head_dim as u32)?;
        w.add_kv(&a("attention.value_length"), cfg.head_dim as u32)?;
    }
    match cfg.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            w.add_kv(&a("rope.scaling.type"), "linear")?;
            w.add_kv(&a("rope.scaling.factor"), factor as f32)?;
        }
        RopeScaling::Llama3 { .. } => {
            return Err(unsupported(
                "writing llama3 rope scaling (rope_freqs) to GGUF is not supported yet",
            ))
        }
    }
    if let Some(sw) = cfg.sliding_window {
        if arch != "llama" {
            w.add_kv(&a("attention.sliding_window"), sw as u32)?;
        }
    }
    for (k, v) in crate::tokenizer::gguf_vocab::metadata_for_folder(dir)? {
        w.add_kv(&k, v)?;
    }

    // Tensors, in llama.cpp's order: embeddings, then each layer, then the head.
    let mut found: HashMap<String, (usize, Vec<usize>)> = HashMap::new();
    for file in crate::loader::safetensors::weight_files(dir)? {
        let handle = File::open(&file).map_err(|e| io_error(&file, e))?;
        // SAFETY: read-only mapping, kept alive in `maps` while tensors are read.
        let map = unsafe { Mmap::map(&handle) }.map_err(|e| io_error(&file, e))?;
        let st = SafeTensors::deserialize(&map).map_err(|e| {
            invalid_weights(format!(
                "{}: not a valid safetensors file: {e}",
                file.display()
            ))
        })?;
        for (name, view) in st.tensors() {
            found.insert(name, (maps.len(), view.shape().to_vec()));
        }
        maps.push(map);
    }
    let mut items = Vec::new();
    let mut names: Vec<&String> = found.keys().collect();
    names.sort_by_key(|n| order_key(n));
    for hf in names {
        let Some(g) = gguf_name(hf) else {
            if hf.ends_with("rotary_emb.inv_freq") {
                continue;
            }
            return Err(invalid_weights(format!(
                "{}: tensor '{hf}' has no place in a GGUF {arch} model",
                dir.display()
            )));
        };
        if cfg.tie_word_embeddings && g == "output.weight" {
            continue;
        }
        let (file, shape) = &found[hf];
        let permute_heads = if arch == "llama" && g.ends_with("attn_q.weight") {
            Some(cfg.num_attention_heads)
        } else if arch == "llama" && g.ends_with("attn_k.weight") {
            Some(cfg.num_key_value_heads)
        } else {
            None
        };
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        items.push(Item {
            name: g,
            dims,
            source: Source::Safetensors {
                file: *file,
                name: hf.clone(),
                permute_heads,
            },
        });
    }
    Ok(items)
}

/// Sort key putting tensors in llama.cpp's usual order.
fn order_key(hf: &str) -> (usize, usize, String) {
    if hf == "model.embed_tokens.weight" {
        return (0, 0, String::new());
    }
    if let Some(rest) = hf.strip_prefix("model.layers.") {
        if let Some((l, part)) = rest.split_once('.') {
            return (1, l.parse().unwrap_or(usize::MAX), part.to_string());
        }
    }
    (2, 0, hf.to_string())
}
