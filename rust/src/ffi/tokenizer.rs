//! `pyffi_tokenizer` (text <-> token ids, chat templates) and
//! `pyffi_detokenizer` (streaming token ids -> text).

use std::ffi::c_char;
use std::sync::Arc;

use super::{
    arg, arg_mut, c_path, c_str, pyffi_error, pyffi_status, run, set, slice, write_items,
    write_string,
};
use crate::error::{invalid_argument, Result};
use crate::tokenizer::{Detokenizer, Tokenizer};

/// A tokenizer. Immutable and shareable across threads. Free with
/// `pyffi_tokenizer_free`.
pub struct pyffi_tokenizer {
    pub(crate) inner: Arc<Tokenizer>,
}

/// Streaming state over a tokenizer. One per generation; not thread-safe.
pub struct pyffi_detokenizer {
    inner: Detokenizer,
}

/// Load a tokenizer: a tokenizer.json, a SentencePiece tokenizer.model, a
/// .gguf file, or a model folder holding one.
#[no_mangle]
pub unsafe extern "C" fn pyffi_tokenizer_load(
    path: *const c_char,
    out: *mut *mut pyffi_tokenizer,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        if out.is_null() {
            return Err(invalid_argument("out is NULL"));
        }
        let t = Tokenizer::load(c_path(path, "path")?)?;
        *out = Box::into_raw(Box::new(pyffi_tokenizer { inner: Arc::new(t) }));
        Ok(())
    })
}

/// Free a tokenizer. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn pyffi_tokenizer_free(tokenizer: *mut pyffi_tokenizer) {
    if !tokenizer.is_null() {
        drop(Box::from_raw(tokenizer));
    }
}

/// Vocabulary size (0 for NULL).
#[no_mangle]
pub unsafe extern "C" fn pyffi_tokenizer_vocab_size(tokenizer: *const pyffi_tokenizer) -> u32 {
    tokenizer
        .as_ref()
        .map_or(0, |t| t.inner.vocab_size() as u32)
}

/// Special tokens and settings as JSON: bos/eos/pad/unk ids and text,
/// eos_token_ids, add_bos_token, special_tokens {text: id}, chat_template.
#[no_mangle]
pub unsafe extern "C" fn pyffi_tokenizer_info_json(
    tokenizer: *const pyffi_tokenizer,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        write_string(
            &arg(tokenizer, "tokenizer")?.inner.info_json(),
            buf,
            cap,
            len,
        )
    })
}

fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| {
        invalid_argument(format!(
            "{what} is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })
}

fn to_ids(ids: &[i32], vocab: usize) -> Result<Vec<u32>> {
    ids.iter()
        .map(|&i| {
            if i < 0 || i as usize >= vocab {
                Err(crate::error::out_of_range(format!(
                    "token id {i} is outside the vocabulary (size {vocab})"
                )))
            } else {
                Ok(i as u32)
            }
        })
        .collect()
}

/// Token ids of `text` (`text_len` bytes of UTF-8; may contain NUL). With
/// `parse_special`, special-token text such as "<s>" becomes that token.
/// `*n_ids` gets the number of ids.
#[no_mangle]
pub unsafe extern "C" fn pyffi_tokenizer_encode(
    tokenizer: *const pyffi_tokenizer,
    text: *const c_char,
    text_len: usize,
    add_bos: bool,
    add_eos: bool,
    parse_special: bool,
    ids: *mut i32,
    cap: usize,
    n_ids: *mut usize,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        let t = &arg(tokenizer, "tokenizer")?.inner;
        let text = utf8(slice(text as *const u8, text_len, "text")?, "text")?;
        let out = t.encode(text, add_bos, add_eos, parse_special)?;
        write_items(out.iter().map(|&i| i as i32), ids, cap, n_ids, "ids")
    })
}

/// Text of `ids` as NUL-terminated UTF-8 (it may also contain NUL bytes:
/// `*len` - 1 is its length in bytes).
#[no_mangle]
pub unsafe extern "C" fn pyffi_tokenizer_decode(
    tokenizer: *const pyffi_tokenizer,
    ids: *const i32,
    n_ids: usize,
    skip_special: bool,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        let t = &arg(tokenizer, "tokenizer")?.inner;
        let ids = to_ids(slice(ids, n_ids, "ids")?, t.vocab_size())?;
        write_string(&t.decode(&ids, skip_special)?, buf, cap, len)
    })
}

/// The raw bytes one token contributes to text (not NUL-terminated; a byte
/// token may be part of a multi-byte character). `*len` gets the byte count.
#[no_mangle]
pub unsafe extern "C" fn pyffi_tokenizer_token_to_bytes(
    tokenizer: *const pyffi_tokenizer,
    id: i32,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        let t = &arg(tokenizer, "tokenizer")?.inner;
        let id = to_ids(&[id], t.vocab_size())?[0];
        write_items(t.token_to_bytes(id)?.iter().copied(), buf, cap, len, "buf")
    })
}

/// The id of a token given by its exact text (e.g. "<|eot_id|>").
#[no_mangle]
pub unsafe extern "C" fn pyffi_tokenizer_token_id(
    tokenizer: *const pyffi_tokenizer,
    text: *const c_char,
    id: *mut i32,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        let t = &arg(tokenizer, "tokenizer")?.inner;
        let text = c_str(text, "text")?;
        let found = t
            .token_id(text)
            .ok_or_else(|| invalid_argument(format!("no token '{text}' in the vocabulary")))?;
        set(id, found as i32);
        Ok(())
    })
}

/// Render a chat with the tokenizer's template (or `chat_template`, a
/// template source or the name of one of the tokenizer's templates; NULL for
/// the default). `messages_json`: [{"role": ..., "content": ...}, ...];
/// `extra_json` (may be NULL): an object of extra template variables
/// (e.g. "tools"). Output: NUL-terminated UTF-8.
#[no_mangle]
pub unsafe extern "C" fn pyffi_tokenizer_apply_chat_template(
    tokenizer: *const pyffi_tokenizer,
    messages_json: *const c_char,
    add_generation_prompt: bool,
    chat_template: *const c_char,
    extra_json: *const c_char,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        let t = &arg(tokenizer, "tokenizer")?.inner;
        let messages: serde_json::Value =
            serde_json::from_str(c_str(messages_json, "messages_json")?)
                .map_err(|e| invalid_argument(format!("messages_json is not valid JSON: {e}")))?;
        let template = if chat_template.is_null() {
            None
        } else {
            Some(c_str(chat_template, "chat_template")?)
        };
        let extra = if extra_json.is_null() {
            None
        } else {
            match serde_json::from_str(c_str(extra_json, "extra_json")?) {
                Ok(serde_json::Value::Object(m)) => Some(m),
                _ => return Err(invalid_argument("extra_json must be a JSON object")),
            }
        };
        let text =
            t.apply_chat_template(&messages, add_generation_prompt, template, extra.as_ref())?;
        write_string(&text, buf, cap, len)
    })
}

/// A streaming detokenizer over `tokenizer` (which it keeps alive).
#[no_mangle]
pub unsafe extern "C" fn pyffi_detokenizer_new(
    tokenizer: *const pyffi_tokenizer,
    skip_special: bool,
    out: *mut *mut pyffi_detokenizer,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        if out.is_null() {
            return Err(invalid_argument("out is NULL"));
        }
        let t = arg(tokenizer, "tokenizer")?.inner.clone();
        *out = Box::into_raw(Box::new(pyffi_detokenizer {
            inner: Detokenizer::new(t, skip_special),
        }));
        Ok(())
    })
}

/// Feed one token; the text it completes (NUL-terminated, maybe empty) goes
/// into `buf`. A character split across tokens is held back until complete.
/// On PYFFI_BUFFER_TOO_SMALL the token is not consumed: call again.
#[no_mangle]
pub unsafe extern "C" fn pyffi_detokenizer_feed(
    detokenizer: *mut pyffi_detokenizer,
    id: i32,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        let d = arg_mut(detokenizer, "detokenizer")?;
        let before = d.inner.clone();
        let id = if id < 0 { u32::MAX } else { id as u32 };
        let text = d.inner.feed(id)?;
        write_string(&text, buf, cap, len).inspect_err(|_| d.inner = before)
    })
}

/// Whatever text is still held back (an incomplete character becomes U+FFFD).
#[no_mangle]
pub unsafe extern "C" fn pyffi_detokenizer_flush(
    detokenizer: *mut pyffi_detokenizer,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        let d = arg_mut(detokenizer, "detokenizer")?;
        let before = d.inner.clone();
        let text = d.inner.flush();
        write_string(&text, buf, cap, len).inspect_err(|_| d.inner = before)
    })
}

/// Free a detokenizer. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn pyffi_detokenizer_free(detokenizer: *mut pyffi_detokenizer) {
    if !detokenizer.is_null() {
        drop(Box::from_raw(detokenizer));
    }
}
