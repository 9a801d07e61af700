//! Tokenizers: one `Tokenizer` over the formats models ship with
//! (tokenizer.json, SentencePiece tokenizer.model, the vocabulary inside a
//! GGUF file), an incremental detokenizer for streaming, and chat templates.
//!
//! tokenizer.json goes through the `tokenizers` crate (the reference
//! implementation); a GGUF "gpt2" vocabulary is turned into the same kind of
//! tokenizer.json and goes the same way. SentencePiece models (a .model file
//! or a GGUF "llama" vocabulary) use our own `spm` module, which matches the
//! SentencePiece library.

pub mod detokenizer;
pub mod gguf_vocab;
pub mod spm;
pub mod template;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::{
    invalid_argument, io_error, out_of_range, unsupported, Error, ErrorKind, Result,
};
pub use detokenizer::Detokenizer;
use spm::SpmTokenizer;
use template::ChatTemplate;

enum Backend {
    /// `plain` parses special-token text in the input; `literal` treats it as text.
    Hf {
        plain: Box<tokenizers::Tokenizer>,
        literal: Box<tokenizers::Tokenizer>,
    },
    Spm(SpmTokenizer),
}

pub struct Tokenizer {
    backend: Backend,
    /// Each token's bytes as it contributes to decoded text (used to stream).
    token_bytes: Vec<Vec<u8>>,
    /// Control/special tokens, dropped by decode(skip_special=true).
    special: Vec<bool>,
    /// The decoder removes one leading space from the text (SentencePiece's
    /// dummy prefix, or an HF Strip/Metaspace decoder).
    strip_first_space: bool,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub unk_id: Option<u32>,
    /// Every id that ends generation (eos plus generation_config's list).
    pub eos_ids: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    chat_template: Option<(String, ChatTemplate)>,
    /// Extra named templates (tokenizer_config's list form), e.g. "tool_use".
    named_templates: Vec<(String, String)>,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| io_error(path, e))
}

fn read_json(path: &Path) -> Result<Value> {
    serde_json::from_str(&read(path)?)
        .map_err(|e| invalid_argument(format!("{}: not valid JSON: {e}", path.display())))
}

/// A token given in tokenizer_config.json, as a string or an AddedToken dict.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

impl Tokenizer {
    /// From a tokenizer.json, a tokenizer.model, a .gguf file, or a model
    /// folder holding one of the first two (tokenizer.json preferred). The
    /// folder's tokenizer_config.json, chat_template.jinja and
    /// generation_config.json are read when present.
    pub fn load(path: &Path) -> Result<Tokenizer> {
        let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
        let (dir, file): (PathBuf, PathBuf) = if meta.is_dir() {
            let json = path.join("tokenizer.json");
            let model = path.join("tokenizer.model");
            let file = if json.exists() {
                json
            } else if model.exists() {
                model
            } else {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("{}: no tokenizer.json or tokenizer.model", path.display()),
                ));
            };
            (path.to_path_buf(), file)
        } else {
            (
                path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                path.to_path_buf(),
            )
        };
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let mut tok = if name.ends_with(".gguf") {
            return gguf_vocab::load(&file);
        } else if name.ends_with(".model") {
            Self::from_spm(SpmTokenizer::from_model_file(&file)?)
        } else {
            Self::from_hf_json(&read(&file)?)
                .map_err(|e| Error::new(e.kind, format!("{}: {}", file.display(), e.message)))?
        };
        tok.apply_folder_configs(&dir)?;
        Ok(tok)
    }

    pub(crate) fn from_spm(spm: SpmTokenizer) -> Tokenizer {
        let n = spm.vocab_size();
        let token_bytes = (0..n as u32)
            .map(|i| spm.token_to_bytes(i).unwrap_or_default())
            .collect();
        // CONTROL (3) and UNKNOWN (2) pieces are what SentencePiece drops on decode.
        let special = (0..n as u32)
            .map(|i| {
                matches!(
                    spm.token_type(i),
                    Some(spm::TokenType::Unknown | spm::TokenType::Control)
                )
            })
            .collect();
        Tokenizer {
            token_bytes,
            special,
            strip_first_space: spm.add_dummy_prefix(),
            bos_id: spm.bos_id(),
            eos_id: spm.eos_id(),
            pad_id: spm.pad_id(),
            unk_id: spm.unk_id(),
            eos_ids: spm.eos_id().into_iter().collect(),
            add_bos: spm.bos_id().is_some(),
            add_eos: false,
            chat_template: None,
            named_templates: vec![],
            backend: Backend::Spm(spm),
        }
    }

    /// From the text of a tokenizer.json.
    pub fn from_hf_json(text: &str) -> Result<Tokenizer> {
        let spec: Value = serde_json::from_str(text)
            .map_err(|e| invalid_argument(format!("tokenizer.json is not valid JSON: {e}")))?;
        let plain: tokenizers::Tokenizer = text
            .parse()
            .map_err(|e| invalid_argument(format!("tokenizer.json could not be loaded: {e}")))?;
        let mut literal = plain.clone();
        literal.set_encode_special_tokens(true);
        let n = plain.get_vocab_size(true);

        let decoder = spec
            .get("decoder")
            .map(|d| d.to_string())
            .unwrap_or_default();
        let byte_level = decoder.contains("\"ByteLevel\"");
        let strip_first_space = decoder.contains("\"Strip\"")
            || (decoder.contains("\"Metaspace\"")
                && (decoder.contains("\"prepend_scheme\":\"always\"")
                    || decoder.contains("\"prepend_scheme\":\"first\"")));
        let byte_fallback = spec
            .pointer("/model/byte_fallback")
            .and_then(|b| b.as_bool())
            .unwrap_or(false);

        let mut added: HashMap<u32, (String, bool)> = HashMap::new();
        for t in spec
            .get("added_tokens")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
        {
            if let (Some(id), Some(content)) = (
                t.get("id").and_then(|i| i.as_u64()),
                t.get("content").and_then(|c| c.as_str()),
            ) {
                let is_special = t.get("special").and_then(|s| s.as_bool()).unwrap_or(false);
                added.insert(id as u32, (content.to_string(), is_special));
            }
        }
        let byte_decoder = byte_level_decoder();
        let mut token_bytes = Vec::with_capacity(n);
        let mut special = Vec::with_capacity(n);
        for id in 0..n as u32 {
            if let Some((content, is_special)) = added.get(&id) {
                token_bytes.push(content.as_bytes().to_vec());
                special.push(*is_special);
                continue;
            }
            let piece = plain.id_to_token(id).unwrap_or_default();
            let bytes = if byte_level {
                piece
                    .chars()
                    .map(|c| byte_decoder.get(&c).copied().unwrap_or(b'?'))
                    .collect()
            } else if let Some(b) = byte_fallback
                .then(|| spm::parse_byte_piece(&piece))
                .flatten()
            {
                vec![b]
            } else {
                piece.replace('\u{2581}', " ").into_bytes()
            };
            token_bytes.push(bytes);
            special.push(false);
        }

        let find = |names: &[&str]| names.iter().find_map(|t| plain.token_to_id(t));
        // Without tokenizer_config.json, a BOS is what the post-processor adds
        // first, or a conventionally named token.
        let bos_id = spec
            .pointer("/post_processor/single/0/SpecialToken/id")
            .and_then(|v| v.as_str())
            .and_then(|t| plain.token_to_id(t))
            .or_else(|| find(&["<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"]));
        let eos_id = find(&[
            "</s>",
            "<|end_of_text|>",
            "<eos>",
            "<|endoftext|>",
            "<|im_end|>",
        ]);
        let unk_id = spec
            .pointer("/model/unk_token")
            .and_then(|v| v.as_str())
            .and_then(|t| plain.token_to_id(t));
        Ok(Tokenizer {
            backend: Backend::Hf {
                plain: Box::new(plain),
                literal: Box::new(literal),
            },
            token_bytes,
            special,
            strip_first_space,
            bos_id,
            eos_id,
            pad_id: None,
            unk_id,
            eos_ids: eos_id.into_iter().collect(),
            add_bos: bos_id.is_some(),
            add_eos: false,
            chat_template: None,
            named_templates: vec![],
        })
    }

    /// tokenizer_config.json (special tokens, add_bos/eos, chat template),
    /// chat_template.jinja and generation_config.json (EOS ids) of a folder.
    fn apply_folder_configs(&mut self, dir: &Path) -> Result<()> {
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.exists() {
            let cfg = read_json(&cfg_path)?;
            let id_of = |key: &str| -> Result<Option<u32>> {
                match token_text(cfg.get(key)) {
                    None => Ok(None),
                    Some(t) => self.token_id(&t).map(Some).ok_or_else(|| {
                        invalid_argument(format!(
                            "{}: {key} '{t}' is not in the vocabulary",
                            cfg_path.display()
                        ))
                    }),
                }
            };
            let (bos, eos, pad, unk) = (
                id_of("bos_token")?,
                id_of("eos_token")?,
                id_of("pad_token")?,
                id_of("unk_token")?,
            );
            if cfg.get("bos_token").is_some() {
                self.bos_id = bos;
            }
            if let Some(e) = eos {
                self.eos_id = Some(e);
                self.eos_ids = vec![e];
            }
            self.pad_id = pad.or(self.pad_id);
            self.unk_id = unk.or(self.unk_id);
            self.add_bos = cfg
                .get("add_bos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(self.bos_id.is_some())
                && self.bos_id.is_some();
            self.add_eos = cfg
                .get("add_eos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(false)
                && self.eos_id.is_some();
            match cfg.get("chat_template") {
                Some(Value::String(s)) => self.set_chat_template(s)?,
                Some(Value::Array(list)) => {
                    for t in list {
                        if let (Some(name), Some(src)) = (
                            t.get("name").and_then(|v| v.as_str()),
                            t.get("template").and_then(|v| v.as_str()),
                        ) {
                            if name == "default" {
                                self.set_chat_template(src)?;
                            } else {
                                self.named_templates
                                    .push((name.to_string(), src.to_string()));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            self.set_chat_template(&read(&jinja)?)?;
        }
        let gen_path = dir.join("generation_config.json");
        if gen_path.exists() {
            let gen = read_json(&gen_path)?;
            for id in ids_of(gen.get("eos_token_id")) {
                if (id as usize) < self.vocab_size() && !self.eos_ids.contains(&id) {
                    self.eos_ids.push(id);
                }
            }
        }
        Ok(())
    }

    pub fn set_chat_template(&mut self, source: &str) -> Result<()> {
        self.chat_template = Some((source.to_string(), ChatTemplate::new(source)?));
        Ok(())
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_ref().map(|(s, _)| s.as_str())
    }

    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    pub(crate) fn strips_first_space(&self) -> bool {
        self.strip_first_space
    }

    /// The id of a token given by its text (e.g. "<s>", "<|eot_id|>").
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.backend {
            Backend::Hf { plain, .. } => plain.token_to_id(text),
            Backend::Spm(s) => s.token_id(text),
        }
    }

    /// The token's text as the vocabulary spells it.
    pub fn token_text(&self, id: u32) -> Option<String> {
        match &self.backend {
            Backend::Hf { plain, .. } => plain.id_to_token(id),
            Backend::Spm(s) => ((id as usize) < s.vocab_size()).then(|| s.piece(id).to_string()),
        }
    }

    /// Token ids of `text`; `parse_special` turns special-token text such as
    /// "<s>" into that token, otherwise it is ordinary text.
    pub fn encode(
        &self,
        text: &str,
        add_bos: bool,
        add_eos: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            ids.extend(self.bos_id);
        }
        match &self.backend {
            Backend::Hf { plain, literal } => {
                let t = if parse_special { plain } else { literal };
                let enc = t
                    .encode_fast(text, false)
                    .map_err(|e| invalid_argument(format!("encoding failed: {e}")))?;
                ids.extend_from_slice(enc.get_ids());
            }
            Backend::Spm(s) => ids.extend(s.encode(text, parse_special)),
        }
        if add_eos {
            ids.extend(self.eos_id);
        }
        Ok(ids)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&i| i as usize >= self.vocab_size()) {
            Some(bad) => Err(out_of_range(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.vocab_size()
            ))),
            None => Ok(()),
        }
    }

    /// Text of `ids` (invalid UTF-8 becomes U+FFFD).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.check_ids(ids)?;
        match &self.backend {
            Backend::Hf { plain, .. } => plain
                .decode(ids, skip_special)
                .map_err(|e| invalid_argument(format!("decoding failed: {e}"))),
            Backend::Spm(s) => {
                Ok(String::from_utf8_lossy(&s.decode(ids, skip_special)?).into_owned())
            }
        }
    }

    /// The bytes one token adds to the text (a byte token may be part of a
    /// multi-byte character).
    pub fn token_to_bytes(&self, id: u32) -> Result<&[u8]> {
        self.check_ids(&[id])?;
        Ok(&self.token_bytes[id as usize])
    }

    /// Render a chat (a JSON array of {"role", "content"} objects) with the
    /// tokenizer's template, or with `template` when given (its source, or the
    /// name of one of the tokenizer's named templates).
    pub fn apply_chat_template(
        &self,
        messages: &Value,
        add_generation_prompt: bool,
        template: Option<&str>,
        extra: Option<&Map<String, Value>>,
    ) -> Result<String> {
        let bos = self
            .bos_id
            .map(|i| self.token_text(i).unwrap_or_default())
            .unwrap_or_default();
        let eos = self
            .eos_id
            .map(|i| self.token_text(i).unwrap_or_default())
            .unwrap_or_default();
        match template {
            Some(src) => {
                let src = self
                    .named_templates
                    .iter()
                    .find(|(n, _)| n == src)
                    .map_or(src, |(_, s)| s.as_str());
                ChatTemplate::new(src)?.render(messages, add_generation_prompt, &bos, &eos, extra)
            }
            None => match &self.chat_template {
                Some((_, t)) => t.render(messages, add_generation_prompt, &bos, &eos, extra),
                None => Err(invalid_argument(
                    "this tokenizer has no chat template; pass one with chat_template=",
                )),
            },
        }
    }

    /// A summary for bindings: special ids and their text, add_bos/eos, EOS ids.
    pub fn info_json(&self) -> String {
        let text = |id: Option<u32>| id.and_then(|i| self.token_text(i));
        let specials: Map<String, Value> = (0..self.vocab_size() as u32)
            .filter(|&i| self.is_special(i))
            .filter_map(|i| self.token_text(i).map(|t| (t, json!(i))))
            .collect();
        json!({
            "vocab_size": self.vocab_size(),
            "bos_token_id": self.bos_id, "bos_token": text(self.bos_id),
            "eos_token_id": self.eos_id, "eos_token": text(self.eos_id),
            "pad_token_id": self.pad_id, "pad_token": text(self.pad_id),
            "unk_token_id": self.unk_id, "unk_token": text(self.unk_id),
            "eos_token_ids": self.eos_ids,
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "special_tokens": specials,
            "chat_template": self.chat_template(),
            "chat_templates": self.named_templates.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        })
        .to_string()
    }
}

/// GPT-2's byte-level alphabet, reversed: the printable character that
/// stands for each byte in a byte-level BPE vocabulary.
pub(crate) fn byte_level_decoder() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u32..256 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            char::from_u32(b).expect("latin-1 range")
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("small code point")
        };
        map.insert(c, b as u8);
    }
    map
}

/// Unsupported-format error shared by the loaders.
pub(crate) fn unsupported_vocab(path: &Path, what: &str) -> Error {
    unsupported(format!("{}: {what}", path.display()))
}
