//! Incremental detokenization for streaming: feed token ids one at a time,
//! get text out. A multi-byte character split across tokens is held back
//! until it is complete, so no broken UTF-8 is ever emitted.

use std::sync::Arc;

use super::Tokenizer;
use crate::error::Result;

#[derive(Clone)]
pub struct Detokenizer {
    tokenizer: Arc<Tokenizer>,
    skip_special: bool,
    pending: Vec<u8>,
    at_start: bool,
}

impl Detokenizer {
    pub fn new(tokenizer: Arc<Tokenizer>, skip_special: bool) -> Detokenizer {
        Detokenizer {
            tokenizer,
            skip_special,
            pending: Vec::new(),
            at_start: true,
        }
    }

    /// The text completed by this token (possibly empty).
    pub fn feed(&mut self, id: u32) -> Result<String> {
        let bytes = self.tokenizer.token_to_bytes(id)?;
        if self.skip_special && self.tokenizer.is_special(id) {
            return Ok(String::new());
        }
        let bytes = if self.at_start && self.tokenizer.strips_first_space() {
            bytes.strip_prefix(b" ").unwrap_or(bytes)
        } else {
            bytes
        };
        self.at_start = false;
        self.pending.extend_from_slice(bytes);
        Ok(self.take_complete())
    }

    /// Whatever is still held back (an incomplete character becomes U+FFFD).
    pub fn flush(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.pending[..good]).expect("checked valid"),
                    );
                    match e.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        // Bytes that can never become valid: replace them, go on.
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }
}
