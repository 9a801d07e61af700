//! `pyffi_model`: immutable weights shared by any number of sessions.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use serde_json::json;

use super::config::pyffi_config;
use super::{arg, arg_mut, c_path, c_str, pyffi_error, pyffi_status, run, slice, write_string};
use crate::error::{invalid_argument, invalid_weights};
use crate::model::Model;
use crate::tensor::{DType, TensorView};

/// A model. Sessions keep it alive: freeing the handle while sessions use it
/// is safe, the weights go when the last session does.
pub struct pyffi_model {
    pub(crate) inner: Arc<Model>,
}

/// Element type of tensor data handed to `pyffi_model_set_tensor`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pyffi_dtype {
    PYFFI_DTYPE_F32 = 0,
    PYFFI_DTYPE_F16 = 1,
    PYFFI_DTYPE_BF16 = 2,
}

unsafe fn give(out: *mut *mut pyffi_model, model: Model) {
    *out = Box::into_raw(Box::new(pyffi_model {
        inner: Arc::new(model),
    }));
}

/// A model of the given config with all-zero weights, to fill with
/// `pyffi_model_set_tensor`.
#[no_mangle]
pub unsafe extern "C" fn pyffi_model_new(
    config: *const pyffi_config,
    out: *mut *mut pyffi_model,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        if out.is_null() {
            return Err(invalid_argument("out is NULL"));
        }
        give(out, Model::new(arg(config, "config")?.inner.clone())?);
        Ok(())
    })
}

/// Load a Hugging Face model folder (config.json + model.safetensors or a
/// sharded model.safetensors.index.json).
#[no_mangle]
pub unsafe extern "C" fn pyffi_model_load(
    path: *const c_char,
    out: *mut *mut pyffi_model,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        if out.is_null() {
            return Err(invalid_argument("out is NULL"));
        }
        give(out, Model::load(c_path(path, "path")?)?);
        Ok(())
    })
}

/// Re-encode the model's float32 weight matrices in block format `qtype`
/// ("q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k"), in memory: the same
/// blocks `pyffi_quantize_model` would write (4/5-bit formats put the output
/// head in Q6_K). Matrices already quantized, or whose rows do not split into
/// blocks, stay as they are. `qtype` "f16" or "bf16" rounds them to that
/// 16-bit type instead (to nearest), computed as float32 from the rounded
/// values. Fails while any session uses the model.
#[no_mangle]
pub unsafe extern "C" fn pyffi_model_quantize(
    model: *mut pyffi_model,
    qtype: *const c_char,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        let handle = arg_mut(model, "model")?;
        let name = c_str(qtype, "qtype")?.to_ascii_lowercase();
        // A 16-bit type, or else a block format.
        let half = match name.as_str() {
            "f16" => Ok(DType::F16),
            "bf16" => Ok(DType::BF16),
            other => Err(super::quantize::block_format(other).map_err(|_| {
                invalid_argument(format!(
                    "'{other}' is not a block format (q8_0, q4_0, q4_1, q4_k, q5_k, q6_k) or f16, bf16"
                ))
            })?),
        };
        let users = Arc::strong_count(&handle.inner) - 1;
        let m = Arc::get_mut(&mut handle.inner).ok_or_else(|| {
            invalid_argument(format!("the model's weights cannot change while {users} session(s) use it; free them first"))
        })?;
        let cfg = m.config.clone();
        match half {
            Ok(d) => m.weights.to_half(d)?,
            Err(t) => m.weights.quantize(t, &cfg),
        }
        Ok(())
    })
}

/// Copy one tensor, by its Hugging Face name (e.g.
/// "model.layers.0.self_attn.q_proj.weight"), into the model. `data` holds
/// `nbytes` little-endian values of `dtype` (a `pyffi_dtype`) in row-major
/// `shape[ndim]`. A weight matrix whose parts all come in one 16-bit type
/// keeps it (computed as float32, exactly); other values become float32.
/// Fails while any session uses the model (weights are immutable then).
#[no_mangle]
pub unsafe extern "C" fn pyffi_model_set_tensor(
    model: *mut pyffi_model,
    name: *const c_char,
    dtype: u32,
    shape: *const i64,
    ndim: usize,
    data: *const c_void,
    nbytes: usize,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        let handle = arg_mut(model, "model")?;
        let name = c_str(name, "name")?;
        let dtype = match dtype {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::BF16,
            other => {
                return Err(invalid_weights(format!(
                    "tensor '{name}': unknown dtype code {other}"
                )))
            }
        };
        if ndim > 8 {
            return Err(invalid_weights(format!(
                "tensor '{name}' has {ndim} dimensions"
            )));
        }
        let shape = slice(shape, ndim, "shape")?
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| {
                    invalid_weights(format!("tensor '{name}' has a negative dimension {d}"))
                })
            })
            .collect::<crate::Result<Vec<usize>>>()?;
        let data = slice(data as *const u8, nbytes, "data")?;
        let users = Arc::strong_count(&handle.inner) - 1;
        let m = Arc::get_mut(&mut handle.inner).ok_or_else(|| {
            invalid_argument(format!("the model's weights cannot change while {users} session(s) use it; free them first"))
        })?;
        m.set_tensor(name, &TensorView { dtype, shape, data })
    })
}

/// The tensors this model expects, as JSON: [{"name": ..., "shape": [...]}, ...].
#[no_mangle]
pub unsafe extern "C" fn pyffi_model_tensors_json(
    model: *const pyffi_model,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        let m = &arg(model, "model")?.inner;
        let list: Vec<_> = m
            .weight_map
            .specs
            .iter()
            .map(|s| json!({"name": s.name, "shape": s.shape}))
            .collect();
        write_string(&serde_json::Value::from(list).to_string(), buf, cap, len)
    })
}

/// The model's config as JSON (see `pyffi_config_to_json`).
#[no_mangle]
pub unsafe extern "C" fn pyffi_model_config_json(
    model: *const pyffi_model,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        write_string(&arg(model, "model")?.inner.config.to_json(), buf, cap, len)
    })
}

/// Vocabulary size (0 for NULL).
#[no_mangle]
pub unsafe extern "C" fn pyffi_model_vocab_size(model: *const pyffi_model) -> u32 {
    model
        .as_ref()
        .map_or(0, |m| m.inner.config.vocab_size as u32)
}

/// Free a model handle. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn pyffi_model_free(model: *mut pyffi_model) {
    if !model.is_null() {
        drop(Box::from_raw(model));
    }
}
