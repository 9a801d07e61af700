//! The tokenizer stored inside a GGUF file (`tokenizer.ggml.*` keys):
//! "llama" vocabularies are SentencePiece BPE; "gpt2" vocabularies are
//! byte-level BPE, rebuilt here as a tokenizer.json for the `tokenizers` crate
//! with the pre-tokenizer that `tokenizer.ggml.pre` names.

use std::path::Path;

use serde_json::{json, Value};

use super::spm::SpmTokenizer;
use super::{unsupported_vocab, Backend, Tokenizer};
use crate::error::{invalid_argument, Error, Result};
use crate::loader::gguf::{Gguf, MetaValue};

const GPT2_TYPE_CONTROL: i32 = 3;
const GPT2_TYPE_USER_DEFINED: i32 = 4;

/// Pre-tokenizer regexes by `tokenizer.ggml.pre` (the patterns these models'
/// own tokenizer.json files use).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub fn load(path: &Path) -> Result<Tokenizer> {
    let g = Gguf::open(path)?;
    let ctx = |e: Error| Error::new(e.kind, format!("{}: {}", path.display(), e.message));
    let model = g.get_str("tokenizer.ggml.model").ok_or_else(|| {
        invalid_argument(format!(
            "{}: no tokenizer in this GGUF file (tokenizer.ggml.model)",
            path.display()
        ))
    })?;
    let tokens: Vec<&str> = g.get_str_array("tokenizer.ggml.tokens").ok_or_else(|| {
        invalid_argument(format!(
            "{}: tokenizer.ggml.tokens is missing",
            path.display()
        ))
    })?;
    let n = tokens.len();
    let types: Vec<i32> = g
        .get_i32_array("tokenizer.ggml.token_type")
        .map_or_else(|| vec![1; n], |t| t.to_vec());
    if types.len() != n {
        return Err(invalid_argument(format!(
            "{}: {} token types for {n} tokens",
            path.display(),
            types.len()
        )));
    }
    let id = |key: &str| -> Result<Option<u32>> {
        match g.get_u64(key) {
            None => Ok(None),
            Some(i) if (i as usize) < n => Ok(Some(i as u32)),
            Some(i) => Err(invalid_argument(format!(
                "{}: {key} {i} is outside the vocabulary ({n})",
                path.display()
            ))),
        }
    };
    let (bos, eos, unk, pad) = (
        id("tokenizer.ggml.bos_token_id")?,
        id("tokenizer.ggml.eos_token_id")?,
        id("tokenizer.ggml.unknown_token_id")?,
        id("tokenizer.ggml.padding_token_id")?,
    );
    let mut tok = match model {
        "llama" => {
            let scores = g.get_f32_array("tokenizer.ggml.scores").map_or_else(|| vec![0.0; n], |t| t.to_vec());
            if scores.len() != n {
                return Err(invalid_argument(format!("{}: {} scores for {n} tokens", path.display(), scores.len())));
            }
            let add_prefix = g.get_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
            let spm = SpmTokenizer::from_vocab(tokens.iter().map(|s| s.to_string()).collect(), scores, types, bos, eos, unk, pad, add_prefix)
                .map_err(ctx)?;
            Tokenizer::from_spm(spm)
        }
        "gpt2" => {
            let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
            let merges = g.get_str_array("tokenizer.ggml.merges").unwrap_or_default();
            let json = byte_level_json(&tokens, &types, &merges, pre).ok_or_else(|| {
                unsupported_vocab(path, &format!("tokenizer.ggml.pre '{pre}' is not supported (supported: default, gpt-2, llama-bpe, llama3, qwen2)"))
            })?;
            let mut t = Tokenizer::from_hf_json(&json.to_string()).map_err(ctx)?;
            t.bos_id = bos;
            t.eos_id = eos;
            t.unk_id = unk;
            t.pad_id = pad;
            t.eos_ids = eos.into_iter().collect();
            t.add_bos = false;
            t
        }
        "no_vocab" => {
            return Err(invalid_argument(format!("{}: this GGUF file has no tokenizer (tokenizer.ggml.model is 'no_vocab'); use token ids", path.display())))
        }
        other => return Err(unsupported_vocab(path, &format!("tokenizer.ggml.model '{other}' is not supported (supported: llama, gpt2)"))),
    };
    // End-of-turn tokens end generation too (Llama 3's <|eot_id|>).
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Some(e) = id(key)? {
            if !tok.eos_ids.contains(&e) {
                tok.eos_ids.push(e);
            }
        }
    }
    tok.add_bos = g
        .get_bool("tokenizer.ggml.add_bos_token")
        .unwrap_or(tok.add_bos)
        && tok.bos_id.is_some();
    tok.add_eos =
        g.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false) && tok.eos_id.is_some();
    if let Some(t) = g.get_str("tokenizer.chat_template") {
        tok.set_chat_template(t).map_err(ctx)?;
    }
    Ok(tok)
}

fn byte_level_json(tokens: &[&str], types: &[i32], merges: &[&str], pre: &str) -> Option<Value> {
    let (pre_tokenizer, ignore_merges) = match pre {
        "default" | "gpt-2" | "gpt2" => (
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
            false,
        ),
        "llama-bpe" | "llama3" | "llama-v3" | "qwen2" => {
            let pattern = if pre == "qwen2" {
                QWEN2_PATTERN
            } else {
                LLAMA3_PATTERN
            };
            (
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
                pre != "qwen2",
            )
        }
        _ => return None,
    };
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let added: Vec<Value> = tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (_, &t))| t == GPT2_TYPE_CONTROL || t == GPT2_TYPE_USER_DEFINED)
        .map(|(i, (content, &t))| json!({"id": i, "content": content, "single_word": false, "lstrip": false,
                                          "rstrip": false, "normalized": false, "special": t == GPT2_TYPE_CONTROL}))
        .collect();
    Some(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges},
    }))
}

// ---------------------------------------------------------------------------
// Writing: the `tokenizer.*` metadata of a GGUF file, from an HF folder.

/// `tokenizer.ggml.pre` for a byte-level pre-tokenizer we can name.
fn pre_name(pre: &Value) -> Option<&'static str> {
    let byte_level_regex =
        |p: &Value| p["type"] == "ByteLevel" && p["use_regex"].as_bool().unwrap_or(true);
    if byte_level_regex(pre) {
        return Some("gpt-2");
    }
    let parts = pre["pretokenizers"].as_array()?;
    let pattern = parts.iter().find(|p| p["type"] == "Split")?["pattern"]["Regex"].as_str()?;
    let ends_byte_level = parts.last().is_some_and(|p| p["type"] == "ByteLevel");
    match pattern {
        LLAMA3_PATTERN if ends_byte_level => Some("llama-bpe"),
        QWEN2_PATTERN if ends_byte_level => Some("qwen2"),
        _ => None,
    }
}

/// The `tokenizer.*` entries llama.cpp reads, for the tokenizer in `dir`
/// (tokenizer.model, or a byte-level BPE tokenizer.json). A folder without
/// a tokenizer gets llama.cpp's "no_vocab" marker (token ids in and out only).
pub fn metadata_for_folder(dir: &Path) -> Result<Vec<(String, MetaValue)>> {
    if !dir.join("tokenizer.json").exists() && !dir.join("tokenizer.model").exists() {
        return Ok(vec![(
            "tokenizer.ggml.model".to_string(),
            "no_vocab".into(),
        )]);
    }
    let tok = Tokenizer::load(dir)?;
    let n = tok.vocab_size();
    let mut kv: Vec<(String, MetaValue)> = Vec::new();
    let mut put = |k: &str, v: MetaValue| kv.push((k.to_string(), v));
    match &tok.backend {
        Backend::Spm(spm) => {
            put("tokenizer.ggml.model", "llama".into());
            put(
                "tokenizer.ggml.tokens",
                (0..n as u32)
                    .map(|i| spm.piece(i).to_string())
                    .collect::<Vec<_>>()
                    .into(),
            );
            put(
                "tokenizer.ggml.scores",
                (0..n as u32)
                    .map(|i| spm.score(i))
                    .collect::<Vec<f32>>()
                    .into(),
            );
            let types: Vec<i32> = (0..n as u32)
                .map(|i| spm.token_type(i).map_or(1, |t| t as i32))
                .collect();
            put("tokenizer.ggml.token_type", types.into());
            put(
                "tokenizer.ggml.add_space_prefix",
                spm.add_dummy_prefix().into(),
            );
        }
        Backend::Hf { plain, .. } => {
            let text = plain
                .to_string(false)
                .map_err(|e| invalid_argument(format!("tokenizer.json: {e}")))?;
            let json: Value = serde_json::from_str(&text)
                .map_err(|e| invalid_argument(format!("tokenizer.json: {e}")))?;
            let cant = |why: &str| {
                unsupported_vocab(
                    &dir.join("tokenizer.json"),
                    &format!("cannot be written to GGUF: {why}"),
                )
            };
            if json["model"]["type"] != "BPE" {
                return Err(cant("only BPE tokenizers are supported"));
            }
            let pre = pre_name(&json["pre_tokenizer"])
                .ok_or_else(|| cant("its pre-tokenizer is not byte-level BPE (gpt-2, llama-bpe or qwen2 style); a SentencePiece model needs tokenizer.model"))?;
            let mut tokens = vec![String::new(); n];
            let mut types = vec![1i32; n];
            for (piece, id) in json["model"]["vocab"]
                .as_object()
                .ok_or_else(|| cant("model.vocab is missing"))?
            {
                if let Some(slot) = id.as_u64().and_then(|i| tokens.get_mut(i as usize)) {
                    *slot = piece.clone();
                }
            }
            for t in json["added_tokens"].as_array().into_iter().flatten() {
                if let (Some(id), Some(content)) = (t["id"].as_u64(), t["content"].as_str()) {
                    if let Some(slot) = tokens.get_mut(id as usize) {
                        *slot = content.to_string();
                        types[id as usize] = if t["special"].as_bool().unwrap_or(false) {
                            3
                        } else {
                            4
                        };
                    }
                }
            }
            let merges: Vec<String> = json["model"]["merges"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| match m {
                    Value::String(s) => Some(s.clone()),
                    Value::Array(p) => {
                        Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?))
                    }
                    _ => None,
                })
                .collect();
            put("tokenizer.ggml.model", "gpt2".into());
            put("tokenizer.ggml.pre", pre.into());
            put("tokenizer.ggml.tokens", tokens.into());
            put("tokenizer.ggml.token_type", types.into());
            put("tokenizer.ggml.merges", merges.into());
        }
    }
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", tok.bos_id),
        ("tokenizer.ggml.eos_token_id", tok.eos_id),
        ("tokenizer.ggml.unknown_token_id", tok.unk_id),
        ("tokenizer.ggml.padding_token_id", tok.pad_id),
    ] {
        if let Some(id) = id {
            put(key, id.into());
        }
    }
    put("tokenizer.ggml.add_bos_token", tok.add_bos.into());
    put("tokenizer.ggml.add_eos_token", tok.add_eos.into());
    if let Some(t) = tok.chat_template() {
        put("tokenizer.chat_template", t.to_string().into());
    }
    Ok(kv)
}
