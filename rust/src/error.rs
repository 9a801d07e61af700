//! One error type for the whole engine. The FFI layer maps `ErrorKind` to a
//! stable status code; nothing below `ffi` knows about C.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A bad argument: null pointer, wrong shape, empty input, bad params.
    InvalidArgument,
    /// A file or folder that does not exist.
    NotFound,
    /// Reading a file failed for another reason.
    Io,
    /// config.json (or a config built by the caller) is wrong.
    InvalidConfig,
    /// Weights are missing, misnamed, of the wrong shape or dtype.
    InvalidWeights,
    /// A caller-owned buffer is too small; the message says how big it must be.
    BufferTooSmall,
    /// A token id outside the vocabulary, or positions past the context.
    OutOfRange,
    /// A feature the engine does not implement (architecture, rope type...).
    Unsupported,
    /// The caller asked to stop (a progress callback returned false).
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand constructors, so call sites read as `Err(invalid_config(...))`.
macro_rules! ctor {
    ($name:ident, $kind:ident) => {
        pub fn $name(message: impl Into<String>) -> Error {
            Error::new(ErrorKind::$kind, message)
        }
    };
}
ctor!(invalid_argument, InvalidArgument);
ctor!(invalid_config, InvalidConfig);
ctor!(invalid_weights, InvalidWeights);
ctor!(out_of_range, OutOfRange);
ctor!(unsupported, Unsupported);
ctor!(cancelled, Cancelled);

/// Map an I/O error on `path` to NotFound or Io, naming the path.
pub fn io_error(path: &std::path::Path, e: std::io::Error) -> Error {
    let kind = if e.kind() == std::io::ErrorKind::NotFound {
        ErrorKind::NotFound
    } else {
        ErrorKind::Io
    };
    let what = if kind == ErrorKind::NotFound {
        "no such file or folder".to_string()
    } else {
        e.to_string()
    };
    Error::new(kind, format!("{}: {}", path.display(), what))
}
