//! Loaders turn files into a `Model`. Each parses and validates its format and
//! hands tensors to `Model::set_tensor`; none of them computes.

pub mod safetensors;
pub mod gguf;
pub mod gguf_model;
