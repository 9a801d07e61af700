//! Writing quantized GGUF files, and quantizing single rows (for tests and
//! for callers who pack their own tensors). Formats are named by string:
//! "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k".

use std::ffi::{c_char, c_void, CString};

use super::{c_path, c_str, pyffi_error, pyffi_status, run, slice, slice_mut};
use crate::error::{invalid_argument, Result};
use crate::kernels::quant::QuantType;
use crate::quantize::{quantize_file, Target};

/// Called before each tensor is written: `done` of `total` tensors are
/// finished and `tensor` (NUL-terminated, valid during the call) is next;
/// a last call has done == total and an empty name. Return false to stop.
pub type pyffi_progress_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        done: usize,
        total: usize,
        tensor: *const c_char,
    ) -> bool,
>;

/// Convert `src` (a .gguf file or a Hugging Face folder) into a GGUF file at
/// `dst` with its weights in `qtype` (see the module's list; norms stay f32,
/// 4/5-bit targets give the output matrix Q6_K as llama.cpp does). The
/// tokenizer and chat template come along. `progress` may be NULL. A stop
/// from `progress` returns PYFFI_CANCELLED and writes nothing.
#[no_mangle]
pub unsafe extern "C" fn pyffi_quantize_model(
    src: *const c_char,
    dst: *const c_char,
    qtype: *const c_char,
    progress: pyffi_progress_callback,
    user_data: *mut c_void,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        let src = c_path(src, "src")?;
        let dst = c_path(dst, "dst")?;
        let target = Target::parse(c_str(qtype, "qtype")?)?;
        let mut report = |done: usize, total: usize, name: &str| match progress {
            None => true,
            Some(f) => {
                let name = CString::new(name).unwrap_or_default();
                // SAFETY: the caller promises the callback and user_data are valid for this call.
                unsafe { f(user_data, done, total, name.as_ptr()) }
            }
        };
        quantize_file(src, dst, target, &mut report)
    })
}

pub(crate) fn block_format(name: &str) -> Result<QuantType> {
    QuantType::ALL
        .into_iter()
        .find(|q| q.name() == name.to_ascii_lowercase())
        .ok_or_else(|| {
            invalid_argument(format!(
                "'{name}' is not a block format (q8_0, q4_0, q4_1, q4_k, q5_k, q6_k)"
            ))
        })
}

fn row_format(qtype: *const c_char, n: usize) -> Result<QuantType> {
    // SAFETY: forwarded from the caller's contract (a NUL-terminated string or NULL).
    let q = block_format(unsafe { c_str(qtype, "qtype") }?)?;
    if n % q.block_len() != 0 {
        return Err(invalid_argument(format!(
            "{} needs a multiple of {} values, got {n}",
            q.name(),
            q.block_len()
        )));
    }
    Ok(q)
}

/// Bytes that `n` values take in block format `qtype`; 0 if `qtype` is not a
/// block format or `n` is not a whole number of blocks.
#[no_mangle]
pub unsafe extern "C" fn pyffi_quantized_size(qtype: *const c_char, n: usize) -> usize {
    super::guard(0, || row_format(qtype, n).map_or(0, |q| q.row_bytes(n)))
}

/// Quantize `n` floats into `dst` (`dst_len` bytes, at least
/// `pyffi_quantized_size(qtype, n)`), exactly as the model quantizer does.
#[no_mangle]
pub unsafe extern "C" fn pyffi_quantize_row(
    qtype: *const c_char,
    src: *const f32,
    n: usize,
    dst: *mut u8,
    dst_len: usize,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        let q = row_format(qtype, n)?;
        let need = q.row_bytes(n);
        if dst_len < need {
            return Err(crate::error::Error::new(
                crate::error::ErrorKind::BufferTooSmall,
                format!("dst holds {dst_len} bytes but {need} are needed"),
            ));
        }
        crate::kernels::quant::quantize_row(q, slice(src, n, "src")?, slice_mut(dst, need, "dst")?);
        Ok(())
    })
}

/// The `n` floats that `src` (`src_len` bytes of `qtype` blocks) stands for.
#[no_mangle]
pub unsafe extern "C" fn pyffi_dequantize_row(
    qtype: *const c_char,
    src: *const u8,
    src_len: usize,
    dst: *mut f32,
    n: usize,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        let q = row_format(qtype, n)?;
        let need = q.row_bytes(n);
        if src_len != need {
            return Err(invalid_argument(format!(
                "{n} values of {} are {need} bytes, got {src_len}",
                q.name()
            )));
        }
        crate::kernels::quant::dequantize_row(
            q,
            slice(src, need, "src")?,
            slice_mut(dst, n, "dst")?,
        );
        Ok(())
    })
}
