//! The C ABI: flat `pyffi_*` functions over opaque handles.
//!
//! Rules every export follows (after rustls-ffi):
//! - Fallible calls return a `pyffi_status` and take an optional
//!   `pyffi_error **err`: on failure it receives an owned error (code and
//!   message, freed with `pyffi_error_free`), on success it is set to NULL.
//!   The message comes back in the same call, so Go can read it safely.
//! - Every body runs inside `run`, a panic boundary: a panic becomes
//!   `PYFFI_PANIC`, never an unwind into C.
//! - Pointers are checked by the helpers below, not by hand.
//! - Buffers are caller-owned and followed by their capacity; one rule for all
//!   of them: the `*_len` out-param receives the number of elements the full
//!   result needs, and a smaller capacity fails with `PYFFI_BUFFER_TOO_SMALL`.
//! - Every handle has `_free`, and `_free(NULL)` does nothing.

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

pub mod config;
pub mod error;
pub mod generation;
pub mod model;
pub mod quantize;
pub mod session;
pub mod token_queue;
pub mod tokenizer;

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{invalid_argument, Error, ErrorKind, Result};
pub use error::pyffi_error;

/// Bumped whenever a function or struct in this header changes incompatibly.
pub const PYFFI_ABI_VERSION: u32 = 1;

/// Status of every fallible call. Codes are stable and never reused.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pyffi_status {
    PYFFI_OK = 0,
    /// A NULL pointer, bad size, empty input or otherwise unusable argument.
    PYFFI_INVALID_ARGUMENT = 1,
    /// A file or folder that does not exist.
    PYFFI_NOT_FOUND = 2,
    /// Reading a file failed.
    PYFFI_IO = 3,
    /// A config that is malformed, incomplete or contradictory.
    PYFFI_INVALID_CONFIG = 4,
    /// Weights that are missing, misnamed, mis-shaped or of a wrong dtype.
    PYFFI_INVALID_WEIGHTS = 5,
    /// A caller's buffer is too small; the `*_len` out-param has the size needed.
    PYFFI_BUFFER_TOO_SMALL = 6,
    /// A token id outside the vocabulary, or positions past the context.
    PYFFI_OUT_OF_RANGE = 7,
    /// A feature this engine does not implement.
    PYFFI_UNSUPPORTED = 8,
    /// An internal error (a bug): the call was stopped safely.
    PYFFI_PANIC = 9,
    /// The caller stopped the work (a progress callback returned false).
    PYFFI_CANCELLED = 10,
}

impl From<ErrorKind> for pyffi_status {
    fn from(k: ErrorKind) -> Self {
        match k {
            ErrorKind::InvalidArgument => pyffi_status::PYFFI_INVALID_ARGUMENT,
            ErrorKind::NotFound => pyffi_status::PYFFI_NOT_FOUND,
            ErrorKind::Io => pyffi_status::PYFFI_IO,
            ErrorKind::InvalidConfig => pyffi_status::PYFFI_INVALID_CONFIG,
            ErrorKind::InvalidWeights => pyffi_status::PYFFI_INVALID_WEIGHTS,
            ErrorKind::BufferTooSmall => pyffi_status::PYFFI_BUFFER_TOO_SMALL,
            ErrorKind::OutOfRange => pyffi_status::PYFFI_OUT_OF_RANGE,
            ErrorKind::Unsupported => pyffi_status::PYFFI_UNSUPPORTED,
            ErrorKind::Cancelled => pyffi_status::PYFFI_CANCELLED,
        }
    }
}

/// The panic boundary around every fallible export.
pub(crate) fn run(err: *mut *mut pyffi_error, body: impl FnOnce() -> Result<()>) -> pyffi_status {
    let outcome = catch_unwind(AssertUnwindSafe(body));
    let (status, error) = match outcome {
        Ok(Ok(())) => (pyffi_status::PYFFI_OK, None),
        Ok(Err(e)) => (
            e.kind.into(),
            Some(pyffi_error::new(e.kind.into(), &e.message)),
        ),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let msg = format!("internal error (please report): {what}");
            (
                pyffi_status::PYFFI_PANIC,
                Some(pyffi_error::new(pyffi_status::PYFFI_PANIC, &msg)),
            )
        }
    };
    if !err.is_null() {
        // SAFETY: a non-NULL err points to a caller-owned pyffi_error* slot.
        unsafe { *err = error.map_or(std::ptr::null_mut(), |e| Box::into_raw(Box::new(e))) };
    }
    status
}

/// Like `run`, for infallible exports that must still not unwind.
pub(crate) fn guard<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

pub(crate) unsafe fn arg<'a, T>(p: *const T, name: &str) -> Result<&'a T> {
    p.as_ref()
        .ok_or_else(|| invalid_argument(format!("{name} is NULL")))
}

pub(crate) unsafe fn arg_mut<'a, T>(p: *mut T, name: &str) -> Result<&'a mut T> {
    p.as_mut()
        .ok_or_else(|| invalid_argument(format!("{name} is NULL")))
}

/// A caller's array of `n` elements; NULL is allowed only when `n` is 0.
pub(crate) unsafe fn slice<'a, T>(p: *const T, n: usize, name: &str) -> Result<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(invalid_argument(format!(
            "{name} is NULL but its length is {n}"
        )));
    }
    Ok(std::slice::from_raw_parts(p, n))
}

pub(crate) unsafe fn slice_mut<'a, T>(p: *mut T, n: usize, name: &str) -> Result<&'a mut [T]> {
    if n == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(invalid_argument(format!(
            "{name} is NULL but its capacity is {n}"
        )));
    }
    Ok(std::slice::from_raw_parts_mut(p, n))
}

pub(crate) unsafe fn c_path<'a>(p: *const c_char, name: &str) -> Result<&'a std::path::Path> {
    use std::os::unix::ffi::OsStrExt;
    let s = CStr::from_ptr(arg(p, name)?);
    Ok(std::path::Path::new(std::ffi::OsStr::from_bytes(
        s.to_bytes(),
    )))
}

pub(crate) unsafe fn c_str<'a>(p: *const c_char, name: &str) -> Result<&'a str> {
    CStr::from_ptr(arg(p, name)?)
        .to_str()
        .map_err(|_| invalid_argument(format!("{name} is not valid UTF-8")))
}

pub(crate) unsafe fn set<T>(p: *mut T, value: T) {
    if !p.is_null() {
        *p = value;
    }
}

/// Write `s` NUL-terminated into a caller's buffer, under the one buffer rule.
pub(crate) unsafe fn write_string(
    s: &str,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> Result<()> {
    let needed = s.len() + 1;
    set(len_out, needed);
    if cap < needed {
        return Err(Error::new(
            ErrorKind::BufferTooSmall,
            format!("buffer holds {cap} bytes but {needed} are needed"),
        ));
    }
    let out = slice_mut(buf as *mut u8, cap, "buf")?;
    out[..s.len()].copy_from_slice(s.as_bytes());
    out[s.len()] = 0;
    Ok(())
}

/// Write `items` into a caller's array, under the one buffer rule.
pub(crate) unsafe fn write_items<T>(
    items: impl ExactSizeIterator<Item = T>,
    buf: *mut T,
    cap: usize,
    len_out: *mut usize,
    what: &str,
) -> Result<()> {
    let needed = items.len();
    set(len_out, needed);
    if cap < needed {
        return Err(Error::new(
            ErrorKind::BufferTooSmall,
            format!("{what} holds {cap} but {needed} are needed"),
        ));
    }
    for (d, v) in slice_mut(buf, cap, what)?.iter_mut().zip(items) {
        *d = v;
    }
    Ok(())
}

/// Read a versioned params struct whose first field is its size in bytes:
/// an older, shorter struct keeps the defaults for the fields it lacks.
pub(crate) unsafe fn read_params<T: Copy>(p: *const T, default: T, name: &str) -> Result<T> {
    if p.is_null() {
        return Ok(default);
    }
    let size = std::ptr::read_unaligned(p as *const usize);
    let full = std::mem::size_of::<T>();
    if size < std::mem::size_of::<usize>() || size > full {
        return Err(invalid_argument(format!(
            "{name}.size is {size}; this library knows sizes up to {full} (initialize it with the *_default_params() function)"
        )));
    }
    let mut out = default;
    std::ptr::copy_nonoverlapping(p as *const u8, &mut out as *mut T as *mut u8, size);
    Ok(out)
}

/// The library version, e.g. "0.1.0". Static; do not free.
#[no_mangle]
pub extern "C" fn pyffi_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// The ABI version this library implements (PYFFI_ABI_VERSION of its header).
#[no_mangle]
pub extern "C" fn pyffi_abi_version() -> u32 {
    PYFFI_ABI_VERSION
}

/// A static name for a status code (a `pyffi_status`), e.g. "PYFFI_OUT_OF_RANGE". Do not free.
#[no_mangle]
pub extern "C" fn pyffi_status_name(status: u32) -> *const c_char {
    let s: &'static str = match status {
        0 => "PYFFI_OK\0",
        1 => "PYFFI_INVALID_ARGUMENT\0",
        2 => "PYFFI_NOT_FOUND\0",
        3 => "PYFFI_IO\0",
        4 => "PYFFI_INVALID_CONFIG\0",
        5 => "PYFFI_INVALID_WEIGHTS\0",
        6 => "PYFFI_BUFFER_TOO_SMALL\0",
        7 => "PYFFI_OUT_OF_RANGE\0",
        8 => "PYFFI_UNSUPPORTED\0",
        9 => "PYFFI_PANIC\0",
        10 => "PYFFI_CANCELLED\0",
        _ => "PYFFI_UNKNOWN_STATUS\0",
    };
    s.as_ptr() as *const c_char
}

/// Set the default number of worker threads for sessions created with
/// n_threads = 0 (they follow it from their next call). 0 = number of CPUs.
#[no_mangle]
pub extern "C" fn pyffi_set_threads(n_threads: u32) {
    crate::pool::set_default_threads(n_threads as usize)
}

/// The current default number of worker threads.
#[no_mangle]
pub extern "C" fn pyffi_get_threads() -> u32 {
    guard(1, || crate::pool::default_threads() as u32)
}
