//! Models from GGUF files (llama.cpp's layout): the config from the file's
//! metadata, tensors renamed to Hugging Face names, llama's q/k rows
//! un-permuted back to rotate-half order. Matrices in block formats (Q8_0,
//! Q4_0, Q4_1, Q4_K, Q5_K, Q6_K) stay in their blocks and run on the
//! quantized kernels (q/k/v and gate/up are fused, as bands when their parts
//! differ in format); F32/F16/BF16 tensors, and matrices that mix float and
//! block parts, are converted once to float32.

use std::borrow::Cow;
use std::path::Path;

use serde_json::json;

use super::gguf::{GgmlType, Gguf, TensorInfo};
use crate::config::ModelConfig;
use crate::error::{invalid_weights, unsupported, Error, Result};
use crate::kernels::quant::QuantType;
use crate::model::weights::Matrix;
use crate::model::Model;
use crate::tensor::{f32_le_bytes, DType, Store, TensorView};

fn ctx(path: &Path) -> impl Fn(Error) -> Error + '_ {
    move |e| Error::new(e.kind, format!("{}: {}", path.display(), e.message))
}

/// HF config JSON from `{arch}.*` metadata.
fn config_of(g: &Gguf) -> Result<ModelConfig> {
    let arch = g
        .architecture()
        .ok_or_else(|| invalid_weights("general.architecture is missing"))?
        .to_string();
    let model_type = match arch.as_str() {
        "llama" | "qwen2" | "phi3" => arch.as_str(),
        other => {
            return Err(unsupported(format!(
                "GGUF architecture '{other}' is not supported (llama, qwen2, phi3)"
            )))
        }
    };
    let u = |k: &str| g.get_u64(&format!("{arch}.{k}"));
    let need = |k: &str| u(k).ok_or_else(|| invalid_weights(format!("{arch}.{k} is missing")));
    let embd = g
        .tensor("token_embd.weight")
        .ok_or_else(|| invalid_weights("token_embd.weight is missing"))?;
    let vocab = embd.dims.get(1).copied().unwrap_or(0);
    let heads = need("attention.head_count")?;
    let hidden = need("embedding_length")?;
    let head_dim = u("attention.key_length").unwrap_or(if heads > 0 { hidden / heads } else { 0 });
    let rope_dims = u("rope.dimension_count").unwrap_or(head_dim);
    let mut cfg = json!({
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length")?,
        "num_hidden_layers": need("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": u("attention.head_count_kv").unwrap_or(heads),
        "head_dim": head_dim,
        "max_position_embeddings": u("context_length").unwrap_or(2048),
        "rms_norm_eps": g.get_f64(&format!("{arch}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
        "rope_theta": g.get_f64(&format!("{arch}.rope.freq_base")).unwrap_or(10000.0),
        "partial_rotary_factor": if head_dim > 0 { rope_dims as f64 / head_dim as f64 } else { 1.0 },
        "tie_word_embeddings": g.tensor("output.weight").is_none(),
        "attention_bias": g.tensor("blk.0.attn_q.bias").is_some(),
        "bos_token_id": g.get_u64("tokenizer.ggml.bos_token_id"),
        "eos_token_id": g.get_u64("tokenizer.ggml.eos_token_id"),
    });
    if let Some(w) = u("attention.sliding_window") {
        cfg["sliding_window"] = json!(w);
    }
    match g.get_str(&format!("{arch}.rope.scaling.type")) {
        None | Some("none") => {}
        Some("linear") => {
            cfg["rope_scaling"] = json!({"rope_type": "linear", "factor": g.get_f64(&format!("{arch}.rope.scaling.factor")).unwrap_or(1.0)})
        }
        Some(other) => {
            return Err(unsupported(format!(
                "{arch}.rope.scaling.type '{other}' is not supported"
            )))
        }
    }
    ModelConfig::from_json(&cfg.to_string())
}

/// The Hugging Face name of a GGUF tensor.
fn hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_qkv.weight" => "self_attn.qkv_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Float32 values of a tensor, dequantizing the block formats.
pub(crate) fn dequantize(g: &Gguf, t: &TensorInfo) -> Result<Vec<f32>> {
    let data = g.tensor_data(t);
    let n = t.numel() as usize;
    let mut out = vec![0.0f32; n];
    match t.ggml_type {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            let dtype = match t.ggml_type {
                GgmlType::F32 => DType::F32,
                GgmlType::F16 => DType::F16,
                _ => DType::BF16,
            };
            TensorView {
                dtype,
                shape: vec![n],
                data,
            }
            .to_f32(&mut out)?;
        }
        other if quant_type(other).is_some() => crate::kernels::quant::dequantize_row(
            quant_type(other).expect("checked"),
            data,
            &mut out,
        ),
        other => {
            return Err(unsupported(format!(
                "tensor '{}' is {}, which pyffi cannot compute with yet",
                t.name,
                other.name()
            )))
        }
    }
    Ok(out)
}

/// llama.cpp stores llama's q/k rows interleaved (pairs of rotary dims next
/// to each other); for each destination row in rotate-half order, the source
/// row it comes from. Whole rows move, so quantized rows move unchanged.
fn unpermute_order(rows: usize, heads: usize) -> Vec<usize> {
    let hd = rows / heads;
    let mut src = vec![0; rows];
    for h in 0..heads {
        for i in 0..hd / 2 {
            src[h * hd + i] = h * hd + 2 * i;
            src[h * hd + i + hd / 2] = h * hd + 2 * i + 1;
        }
    }
    src
}

/// A tensor's raw rows (`rows` of them) in `order` where it has one.
fn rows_in_order<'a>(data: &'a [u8], rows: usize, order: &Option<Vec<usize>>) -> Cow<'a, [u8]> {
    match order {
        Some(o) => Cow::Owned(permute_rows(data, data.len() / rows, o)),
        None => Cow::Borrowed(data),
    }
}

fn permute_rows<T: Copy>(data: &[T], row_len: usize, order: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(data.len());
    for &r in order {
        out.extend_from_slice(&data[r * row_len..(r + 1) * row_len]);
    }
    out
}

/// How a matrix part is kept: in its blocks, or as float16.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kept {
    Blocks(QuantType),
    F16,
}

fn kept(t: GgmlType) -> Option<Kept> {
    match t {
        GgmlType::F16 => Some(Kept::F16),
        other => quant_type(other).map(Kept::Blocks),
    }
}

/// The block format we compute with for a GGUF tensor type, if any.
pub(crate) fn quant_type(t: GgmlType) -> Option<QuantType> {
    match t {
        GgmlType::Q8_0 => Some(QuantType::Q8_0),
        GgmlType::Q4_0 => Some(QuantType::Q4_0),
        GgmlType::Q4_1 => Some(QuantType::Q4_1),
        GgmlType::Q4_K => Some(QuantType::Q4_K),
        GgmlType::Q5_K => Some(QuantType::Q5_K),
        GgmlType::Q6_K => Some(QuantType::Q6_K),
        _ => None,
    }
}

/// Which model matrix a GGUF weight belongs to, and its place in it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Target {
    Embed,
    Output,
    Qkv(usize),
    O(usize),
    GateUp(usize),
    Down(usize),
}

fn target_of(name: &str) -> Option<(Target, u8)> {
    match name {
        "token_embd.weight" => return Some((Target::Embed, 0)),
        "output.weight" => return Some((Target::Output, 0)),
        _ => {}
    }
    let (layer, part) = name.strip_prefix("blk.")?.split_once('.')?;
    let l: usize = layer.parse().ok()?;
    Some(match part {
        "attn_q.weight" | "attn_qkv.weight" => (Target::Qkv(l), 0),
        "attn_k.weight" => (Target::Qkv(l), 1),
        "attn_v.weight" => (Target::Qkv(l), 2),
        "attn_output.weight" => (Target::O(l), 0),
        "ffn_gate.weight" => (Target::GateUp(l), 0),
        "ffn_up.weight" => (Target::GateUp(l), 1),
        "ffn_down.weight" => (Target::Down(l), 0),
        _ => return None,
    })
}

/// Matrices whose parts are all in block formats or float16 stay that way
/// (parts in different formats become bands of a stacked matrix).
fn quantized_targets(g: &Gguf) -> std::collections::HashSet<Target> {
    let mut all_quant: std::collections::HashMap<Target, bool> = std::collections::HashMap::new();
    for t in g.tensors() {
        if let Some((target, _)) = target_of(&t.name) {
            let q = kept(t.ggml_type).is_some();
            all_quant.entry(target).and_modify(|e| *e &= q).or_insert(q);
        }
    }
    all_quant
        .into_iter()
        .filter_map(|(k, v)| v.then_some(k))
        .collect()
}

/// One matrix from its parts' raw rows, in fused order, and whether any of
/// it is read in place from the file's mapping. Consecutive parts in one
/// format form a band. A band of float16 or of blocks that stay in ggml's row
/// format (the token embedding, read row by row; formats with no packed
/// layout) whose parts lie end to end in the file, unreordered, is read in
/// place, as llama.cpp reads its weights; any other band is allocated once at
/// its final size and filled with one copy of each part, Q4_0/Q8_0 and
/// k-quant bands repacked straight from the parts for the interleaved
/// kernels if `pack`.
fn stacked(g: &Gguf, mut parts: Vec<(u8, Kept, usize, Cow<[u8]>)>, pack: bool) -> (Matrix, bool) {
    parts.sort_by_key(|p| p.0);
    let mut bands: Vec<(usize, Kept, Vec<Cow<[u8]>>)> = Vec::new();
    for (_, t, rows, bytes) in parts {
        match bands.last_mut() {
            Some((r, bt, b)) if *bt == t => {
                *r += rows;
                b.push(bytes);
            }
            _ => bands.push((rows, t, vec![bytes])),
        }
    }
    let mut in_place = false;
    let mut matrix = |rows: usize, t: Kept, pieces: Vec<Cow<[u8]>>| {
        let pieces: Vec<&[u8]> = pieces.iter().map(|p| &p[..]).collect();
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        match t {
            Kept::Blocks(q) if pack && Matrix::packs(q, len, rows) => {
                Matrix::quantized_parts(q, &pieces, rows, pack)
            }
            Kept::Blocks(q) => match g.in_place::<u8>(&pieces) {
                Some(m) => {
                    in_place = true;
                    Matrix::Quant(q, Store::Mapped(m))
                }
                None => Matrix::quantized_parts(q, &pieces, rows, false),
            },
            Kept::F16 => match g.in_place::<half::f16>(&pieces) {
                Some(m) => {
                    in_place = true;
                    Matrix::F16(Store::Mapped(m))
                }
                None => Matrix::F16(Store::Owned(f16_copy(&pieces, len / 2))),
            },
        }
    };
    let m = if bands.len() == 1 {
        let (rows, t, pieces) = bands.pop().expect("one band");
        matrix(rows, t, pieces)
    } else {
        Matrix::Stack(
            bands
                .into_iter()
                .map(|(rows, t, pieces)| (rows, matrix(rows, t, pieces)))
                .collect(),
        )
    };
    (m, in_place)
}

/// `n` float16 values from little-endian pieces, in one buffer of their own.
fn f16_copy(pieces: &[&[u8]], n: usize) -> crate::tensor::Buffer<half::f16> {
    let mut v = crate::tensor::weight_buffer::<half::f16>(n)
        .unwrap_or_else(|e| panic!("a float16 matrix of {n} values: {e}"));
    let mut at = 0;
    for p in pieces {
        for (o, b) in v[at..at + p.len() / 2].iter_mut().zip(p.chunks_exact(2)) {
            *o = half::f16::from_le_bytes([b[0], b[1]]);
        }
        at += p.len() / 2;
    }
    v
}

fn place(model: &mut Model, tg: Target, m: Matrix) {
    let w = &mut model.weights;
    match tg {
        Target::Embed => w.embed = m,
        Target::Output => w.lm_head = Some(m),
        Target::Qkv(l) => w.layers[l].wqkv = m,
        Target::O(l) => w.layers[l].wo = m,
        Target::GateUp(l) => w.layers[l].w_gate_up = m,
        Target::Down(l) => w.layers[l].w_down = m,
    }
}

pub fn load_model(path: &Path) -> Result<Model> {
    let g = Gguf::open(path)?;
    // The matrices copied out of the file (repacked, reordered) go end to
    // end in one arena: room for the whole file and then some (Q6_K rows
    // packed for the AVX2 kernels take 276 bytes to the file's 210; the
    // room is only reserved, and a matrix past it comes from the heap).
    let file = g.bytes().len();
    let room = file + file / 2 + (16 << 20);
    crate::tensor::with_weight_arena(room, || load_from(path, &g))
}

fn load_from(path: &Path, g: &Gguf) -> Result<Model> {
    let config = config_of(&g).map_err(ctx(path))?;
    let permuted = g.architecture() == Some("llama");
    let (heads, kv_heads, hidden, ffn) = (
        config.num_attention_heads,
        config.num_key_value_heads,
        config.hidden_size,
        config.intermediate_size,
    );
    let mut model = Model::new(config)?;
    let quantized = quantized_targets(&g);
    // How many parts each kept matrix has, so each is built (and its source
    // pages released) as soon as its last part is read.
    let mut expected: std::collections::HashMap<Target, usize> = std::collections::HashMap::new();
    for t in g.tensors() {
        if let Some((tg, _)) = target_of(&t.name).filter(|(tg, _)| quantized.contains(tg)) {
            *expected.entry(tg).or_default() += 1;
        }
    }
    let mut sources: std::collections::HashMap<Target, Vec<&TensorInfo>> =
        std::collections::HashMap::new();
    // Raw rows of the matrices kept quantized: (part, format, rows, bytes).
    let mut parts: std::collections::HashMap<Target, Vec<(u8, Kept, usize, Cow<[u8]>)>> =
        std::collections::HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for t in g.tensors() {
        let shape = t.shape();
        // Phi-3 keeps gate and up fused under ffn_up.
        let fused_up = t.name.ends_with(".ffn_up.weight") && shape.first() == Some(&(2 * ffn));
        let name = if fused_up {
            hf_name(&t.name.replace("ffn_up", "ffn_gate"))
                .expect("blk name")
                .replace("gate_proj", "gate_up_proj")
        } else {
            match hf_name(&t.name) {
                Some(n) => n,
                None if t.name.ends_with("ffn_up.weight") => {
                    hf_name(&t.name.replace("ffn_up", "ffn_gate"))
                        .expect("blk")
                        .replace("gate_proj", "up_proj")
                }
                None if t.name == "rope_freqs.weight" => continue,
                None => {
                    return Err(invalid_weights(format!(
                        "{}: unexpected tensor '{}'",
                        path.display(),
                        t.name
                    )))
                }
            }
        };
        let order =
            if permuted && (name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight")) {
                let h = if name.ends_with("q_proj.weight") {
                    heads
                } else {
                    kv_heads
                };
                Some(unpermute_order(shape[0], h))
            } else {
                None
            };
        let target = target_of(&t.name).filter(|(tg, _)| quantized.contains(tg));
        if let Some((tg, part)) = target {
            let spec = model.weight_map.get(&name).ok_or_else(|| {
                invalid_weights(format!("{}: unexpected tensor '{name}'", path.display()))
            })?;
            if spec.shape != shape {
                return Err(invalid_weights(format!(
                    "{}: tensor '{}' has shape {shape:?}, expected {:?}",
                    path.display(),
                    t.name,
                    spec.shape
                )));
            }
            let bytes = rows_in_order(g.tensor_data(t), shape[0], &order);
            let qt = kept(t.ggml_type).expect("kept target");
            parts
                .entry(tg)
                .or_default()
                .push((part, qt, shape[0], bytes));
            sources.entry(tg).or_default().push(t);
            if parts[&tg].len() == expected[&tg] {
                let (m, in_place) =
                    stacked(&g, parts.remove(&tg).expect("parts"), tg != Target::Embed);
                place(&mut model, tg, m);
                for src in sources.remove(&tg).unwrap_or_default() {
                    if !in_place {
                        g.release(src);
                    }
                }
            }
        } else if t.ggml_type == GgmlType::BF16 && shape.len() == 2 {
            // Kept in bfloat16 (`Matrix::Half16`), computed as float32.
            let bytes = rows_in_order(g.tensor_data(t), shape[0], &order);
            let view = TensorView {
                dtype: DType::BF16,
                shape: shape.to_vec(),
                data: &bytes,
            };
            model.set_tensor(&name, &view).map_err(ctx(path))?;
            g.release(t);
        } else {
            let mut values = dequantize(&g, t).map_err(ctx(path))?;
            if let Some(o) = &order {
                values = permute_rows(&values, hidden, o);
            }
            set(&mut model, &name, &shape, &values).map_err(ctx(path))?;
            g.release(t);
        }
        seen.insert(name);
    }
    // A matrix with a part missing was never built; the check below names it.
    // llama.cpp's default cache; it also keeps our numbers next to its own.
    model.kv_default = crate::model::kv_cache::KvType::F16;
    let cfg = model.config.clone();
    model.rope.use_ggml_angles(&cfg);
    model.rope.pairs = permuted;
    let missing: Vec<&str> = model
        .weight_map
        .specs
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| !seen.contains(*n))
        .collect();
    if !missing.is_empty() {
        return Err(invalid_weights(format!(
            "{}: missing tensors: {}",
            path.display(),
            missing.join(", ")
        )));
    }
    Ok(model)
}

fn set(model: &mut Model, name: &str, shape: &[usize], values: &[f32]) -> Result<()> {
    model.set_tensor(
        name,
        &TensorView {
            dtype: DType::F32,
            shape: shape.to_vec(),
            data: &f32_le_bytes(values),
        },
    )
}
