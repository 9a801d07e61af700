//! Loaders turn files into a `Model`. Each parses and validates its format and
//! hands tensors to `Model::set_tensor`; none of them computes.

pub mod gguf;
pub mod gguf_model;
pub mod safetensors;
