//! The transformer: an immutable `Model` (config + weights + rope table) that
//! many sessions share, and the forward pass that runs it.

pub mod kv_cache;
pub mod llama;
pub mod rope;
pub mod weights;

use std::path::Path;

use crate::config::ModelConfig;
use crate::error::{invalid_config, Result};
use crate::tensor::TensorView;
use rope::Rope;
use weights::{WeightMap, Weights};

pub struct Model {
    pub config: ModelConfig,
    pub weights: Weights,
    pub weight_map: WeightMap,
    pub rope: Rope,
    /// KV cache type a session gets unless it asks for another.
    pub kv_default: kv_cache::KvType,
}

/// Refuse models whose float32 weights would not fit in any sane memory,
/// before trying to allocate them (a config's numbers are untrusted).
const MAX_WEIGHT_BYTES: u128 = 256 << 30;

impl Model {
    /// A model with all-zero weights, to be filled by `set_tensor`.
    pub fn new(config: ModelConfig) -> Result<Model> {
        let params: u128 = weights::tensor_specs(&config)
            .iter()
            .map(|s| s.shape.iter().map(|&d| d as u128).product::<u128>())
            .sum();
        if params * 4 > MAX_WEIGHT_BYTES {
            return Err(invalid_config(format!(
                "config describes {params} parameters ({} GiB as float32), more than this engine will allocate",
                params * 4 >> 30
            )));
        }
        let weights = Weights::zeros(&config)?;
        Ok(Model {
            weight_map: WeightMap::new(&config),
            rope: Rope::new(&config),
            weights,
            config,
            kv_default: kv_cache::KvType::F32,
        })
    }

    /// Load config.json and safetensors weights from a folder.
    pub fn load(path: &Path) -> Result<Model> {
        crate::loader::safetensors::load_model(path)
    }

    /// Set one tensor by its Hugging Face name.
    pub fn set_tensor(&mut self, name: &str, tensor: &TensorView) -> Result<()> {
        self.weights
            .set(&self.weight_map, &self.config, name, tensor)
    }
}
