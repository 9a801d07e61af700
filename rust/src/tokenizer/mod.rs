//! Tokenizers: one `Tokenizer` over the formats models ship with
//! (tokenizer.json, SentencePiece tokenizer.model, the vocabulary inside a
//! GGUF file), an incremental detokenizer for streaming, and chat templates.

pub mod spm;
pub mod template;
