//! Hugging Face folders: config.json plus model.safetensors, or shards listed
//! in model.safetensors.index.json. Files are memory-mapped and each tensor is
//! converted once into the model's float32 layout.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use ::safetensors::{Dtype, SafeTensors};
use memmap2::Mmap;
use serde_json::Value;

use crate::config::ModelConfig;
use crate::error::{invalid_weights, io_error, unsupported, Error, ErrorKind, Result};
use crate::model::weights::is_ignorable;
use crate::model::Model;
use crate::tensor::{DType, TensorView};

/// The folder of a model path: the path itself, or the folder of a file in it.
fn model_dir(path: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    Ok(if meta.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    })
}

/// The safetensors files of a folder, in load order.
pub(crate) fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| io_error(&index, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| invalid_weights(format!("{}: not valid JSON: {e}", index.display())))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| invalid_weights(format!("{}: no weight_map object", index.display())))?;
        let mut files = BTreeSet::new();
        for (name, file) in map {
            let f = file.as_str().ok_or_else(|| {
                invalid_weights(format!(
                    "{}: weight_map entry '{name}' is not a file name",
                    index.display()
                ))
            })?;
            if f.contains('/') || f.contains('\\') || f == ".." {
                return Err(invalid_weights(format!(
                    "{}: shard name '{f}' must be a file in the same folder",
                    index.display()
                )));
            }
            files.insert(f.to_string());
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(Error::new(
        ErrorKind::NotFound,
        format!(
            "{}: no model.safetensors or model.safetensors.index.json",
            dir.display()
        ),
    ))
}

fn dtype_of(d: Dtype, name: &str, file: &Path) -> Result<DType> {
    match d {
        Dtype::F32 => Ok(DType::F32),
        Dtype::F16 => Ok(DType::F16),
        Dtype::BF16 => Ok(DType::BF16),
        other => Err(unsupported(format!(
            "{}: tensor '{name}' has dtype {other:?}; supported: F32, F16, BF16",
            file.display()
        ))),
    }
}

pub fn load_model(path: &Path) -> Result<Model> {
    if path.extension().is_some_and(|e| e == "gguf") {
        return super::gguf_model::load_model(path);
    }
    let dir = model_dir(path)?;
    let config = ModelConfig::load(&dir)?;
    let files = weight_files(&dir)?;
    let mut model = Model::new(config)?;
    let mut seen = HashSet::new();
    for file in &files {
        let handle = File::open(file).map_err(|e| io_error(file, e))?;
        // SAFETY: the mapping is read-only and dropped before this function
        // returns; a file truncated underneath us is the usual mmap caveat.
        let map = unsafe { Mmap::map(&handle) }.map_err(|e| io_error(file, e))?;
        let st = SafeTensors::deserialize(&map).map_err(|e| {
            invalid_weights(format!(
                "{}: not a valid safetensors file: {e}",
                file.display()
            ))
        })?;
        for (name, view) in st.tensors() {
            let tensor = TensorView {
                dtype: dtype_of(view.dtype(), &name, file)?,
                shape: view.shape().to_vec(),
                data: view.data(),
            };
            model
                .set_tensor(&name, &tensor)
                .map_err(|e| Error::new(e.kind, format!("{}: {}", file.display(), e.message)))?;
            super::release(&map, view.data());
            if !is_ignorable(&model.config, &name) && !seen.insert(name.clone()) {
                return Err(invalid_weights(format!(
                    "{}: tensor '{name}' appears in more than one file",
                    file.display()
                )));
            }
        }
    }
    let missing: Vec<&str> = model
        .weight_map
        .specs
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| !seen.contains(*n))
        .collect();
    if !missing.is_empty() {
        let shown = missing
            .iter()
            .take(5)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        let more = if missing.len() > 5 {
            format!(" and {} more", missing.len() - 5)
        } else {
            String::new()
        };
        return Err(invalid_weights(format!(
            "{}: missing tensors: {shown}{more}",
            dir.display()
        )));
    }
    Ok(model)
}
