//! pyffi: a Llama-family inference engine with a flat C ABI.
//!
//! Data flow: files -> `loader` -> `model::Model` (immutable, shared) ->
//! `session::Session` (KV cache, threads; `forward`, `generate`) -> `ffi`.
//! Nothing below `ffi` knows about C.

pub mod config;
pub mod error;
pub mod ffi;
pub mod generate;
pub mod kernels;
pub mod loader;
pub mod model;
pub mod pool;
pub mod quantize;
pub mod sampling;
pub mod session;
pub mod tensor;
pub mod tokenizer;

pub use config::ModelConfig;
pub use error::{Error, ErrorKind, Result};
pub use generate::{FinishReason, GenerateRequest, Generation};
pub use model::Model;
pub use sampling::SamplingParams;
pub use session::{Session, SessionParams};
