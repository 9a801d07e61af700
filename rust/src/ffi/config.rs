//! `pyffi_config`: a parsed, validated model configuration.

use std::ffi::c_char;

use super::{arg, c_path, c_str, pyffi_error, pyffi_status, run, write_string};
use crate::config::ModelConfig;
use crate::error::invalid_argument;

/// A model configuration. Free with `pyffi_config_free`.
pub struct pyffi_config {
    pub(crate) inner: ModelConfig,
}

/// Parse a Hugging Face config.json, given as the file or its folder.
#[no_mangle]
pub unsafe extern "C" fn pyffi_config_load(
    path: *const c_char,
    out: *mut *mut pyffi_config,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        if out.is_null() {
            return Err(invalid_argument("out is NULL"));
        }
        let cfg = ModelConfig::load(c_path(path, "path")?)?;
        *out = Box::into_raw(Box::new(pyffi_config { inner: cfg }));
        Ok(())
    })
}

/// Parse a config from a JSON string (HF config.json format).
#[no_mangle]
pub unsafe extern "C" fn pyffi_config_from_json(
    json: *const c_char,
    out: *mut *mut pyffi_config,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        if out.is_null() {
            return Err(invalid_argument("out is NULL"));
        }
        let cfg = ModelConfig::from_json(c_str(json, "json")?)?;
        *out = Box::into_raw(Box::new(pyffi_config { inner: cfg }));
        Ok(())
    })
}

/// The normalized config as JSON (NUL-terminated) into `buf`; `*len` gets
/// the bytes needed, NUL included.
#[no_mangle]
pub unsafe extern "C" fn pyffi_config_to_json(
    config: *const pyffi_config,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        write_string(&arg(config, "config")?.inner.to_json(), buf, cap, len)
    })
}

/// Vocabulary size (0 for NULL).
#[no_mangle]
pub unsafe extern "C" fn pyffi_config_vocab_size(config: *const pyffi_config) -> u32 {
    config.as_ref().map_or(0, |c| c.inner.vocab_size as u32)
}

/// Free a config. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn pyffi_config_free(config: *mut pyffi_config) {
    if !config.is_null() {
        drop(Box::from_raw(config));
    }
}
