//! The tokenizer stored inside a GGUF file (`tokenizer.ggml.*` keys):
//! "llama" vocabularies are SentencePiece BPE; "gpt2" vocabularies are
//! byte-level BPE, rebuilt here as a tokenizer.json for the `tokenizers` crate
//! with the pre-tokenizer that `tokenizer.ggml.pre` names.

use std::path::Path;

use serde_json::{json, Value};

use super::spm::SpmTokenizer;
use super::{unsupported_vocab, Tokenizer};
use crate::error::{invalid_argument, Error, Result};
use crate::loader::gguf::Gguf;

const GPT2_TYPE_CONTROL: i32 = 3;
const GPT2_TYPE_USER_DEFINED: i32 = 4;

/// Pre-tokenizer regexes by `tokenizer.ggml.pre` (the patterns these models'
/// own tokenizer.json files use).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub fn load(path: &Path) -> Result<Tokenizer> {
    let g = Gguf::open(path)?;
    let ctx = |e: Error| Error::new(e.kind, format!("{}: {}", path.display(), e.message));
    let model = g
        .get_str("tokenizer.ggml.model")
        .ok_or_else(|| invalid_argument(format!("{}: no tokenizer in this GGUF file (tokenizer.ggml.model)", path.display())))?;
    let tokens: Vec<&str> = g
        .get_str_array("tokenizer.ggml.tokens")
        .ok_or_else(|| invalid_argument(format!("{}: tokenizer.ggml.tokens is missing", path.display())))?;
    let n = tokens.len();
    let types: Vec<i32> = g.get_i32_array("tokenizer.ggml.token_type").map_or_else(|| vec![1; n], |t| t.to_vec());
    if types.len() != n {
        return Err(invalid_argument(format!("{}: {} token types for {n} tokens", path.display(), types.len())));
    }
    let id = |key: &str| -> Result<Option<u32>> {
        match g.get_u64(key) {
            None => Ok(None),
            Some(i) if (i as usize) < n => Ok(Some(i as u32)),
            Some(i) => Err(invalid_argument(format!("{}: {key} {i} is outside the vocabulary ({n})", path.display()))),
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
    tok.add_bos = g.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(tok.add_bos) && tok.bos_id.is_some();
    tok.add_eos = g.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false) && tok.eos_id.is_some();
    if let Some(t) = g.get_str("tokenizer.chat_template") {
        tok.set_chat_template(t).map_err(ctx)?;
    }
    Ok(tok)
}

fn byte_level_json(tokens: &[&str], types: &[i32], merges: &[&str], pre: &str) -> Option<Value> {
    let (pre_tokenizer, ignore_merges) = match pre {
        "default" | "gpt-2" | "gpt2" => (json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}), false),
        "llama-bpe" | "llama3" | "llama-v3" | "qwen2" => {
            let pattern = if pre == "qwen2" { QWEN2_PATTERN } else { LLAMA3_PATTERN };
            (
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
                pre != "qwen2",
            )
        }
        _ => return None,
    };
    let vocab: serde_json::Map<String, Value> = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), json!(i))).collect();
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
