//! Owned error objects handed to the caller through `pyffi_error **err`.

use std::ffi::{c_char, CString};

use super::pyffi_status;

/// An error: a status code and a message. Free with `pyffi_error_free`.
pub struct pyffi_error {
    code: pyffi_status,
    message: CString,
}

impl pyffi_error {
    pub(crate) fn new(code: pyffi_status, message: &str) -> pyffi_error {
        let message = CString::new(message.replace('\0', " ")).expect("NULs were replaced");
        pyffi_error { code, message }
    }
}

/// The error's status code (PYFFI_INVALID_ARGUMENT for NULL).
#[no_mangle]
pub unsafe extern "C" fn pyffi_error_code(err: *const pyffi_error) -> pyffi_status {
    err.as_ref()
        .map_or(pyffi_status::PYFFI_INVALID_ARGUMENT, |e| e.code)
}

/// The error's message, valid until the error is freed ("" for NULL).
#[no_mangle]
pub unsafe extern "C" fn pyffi_error_message(err: *const pyffi_error) -> *const c_char {
    err.as_ref().map_or(c"".as_ptr(), |e| e.message.as_ptr())
}

/// Free an error. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn pyffi_error_free(err: *mut pyffi_error) {
    if !err.is_null() {
        drop(Box::from_raw(err));
    }
}
