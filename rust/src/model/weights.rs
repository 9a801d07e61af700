//! The model's weights, laid out for the kernels (`[out][in]`, float32 or
//! the checkpoint's float16/bfloat16, q/k/v and gate/up fused into one
//! matrix each), and the mapping from Hugging Face tensor names onto that
//! layout. Every way of filling weights (safetensors
//! files, a caller's state dict) goes through `Weights::set`.

use std::collections::{HashMap, HashSet};

use crate::config::ModelConfig;
use crate::error::{invalid_weights, Result};
use crate::kernels::{self, packed::PackedMatrix, quant};
use crate::tensor::{zeroed_f32, DType, Store, TensorView};

/// A weight matrix `[rows][cols]`: float32, or raw ggml blocks used in place
/// by the quantized kernels, or row bands of those stacked (a fused q/k/v
/// whose v is Q6_K while q and k are Q4_K, as in llama.cpp's Q4_K_M files).
/// Float16 and unpacked block matrices may be read where a GGUF file's
/// mapping holds them (`Store::Mapped`).
pub enum Matrix {
    F32(Vec<f32>),
    /// A checkpoint's float16 or bfloat16 values kept in their 16 bits, and
    /// computed as `F32` computes their float32 values (same kernels, same
    /// sums, each weight widened exactly as it is loaded): the same bits in
    /// half the memory, read in half the time.
    Half16(Half16),
    /// float16, computed with float16-rounded activations (GGUF F16 files).
    F16(Store<half::f16>),
    Quant(quant::QuantType, Store<u8>),
    /// Q4_0/Q8_0 blocks interleaved eight rows at a time for the AVX2
    /// kernels (`Matrix::quantized` makes them where they pay).
    Packed(PackedMatrix),
    /// (rows, band), top to bottom.
    Stack(Vec<(usize, Matrix)>),
}

/// The values of a `Matrix::Half16`.
pub enum Half16 {
    F16(Vec<half::f16>),
    Bf16(Vec<half::bf16>),
}

impl Half16 {
    /// `n` zeros of a 16-bit `dtype` (None for float32).
    fn zeroed(dtype: DType, n: usize) -> Result<Option<Half16>> {
        Ok(match dtype {
            DType::F16 => Some(Half16::F16(crate::tensor::zeroed_f16(n)?)),
            DType::BF16 => Some(Half16::Bf16(crate::tensor::zeroed_bf16(n)?)),
            DType::F32 => None,
        })
    }

    fn dtype(&self) -> DType {
        match self {
            Half16::F16(_) => DType::F16,
            Half16::Bf16(_) => DType::BF16,
        }
    }

    /// Copy little-endian values of this type into place from `at`.
    fn write(&mut self, at: usize, data: &[u8]) {
        fn put<T>(dst: &mut [T], data: &[u8], from: fn([u8; 2]) -> T) {
            for (o, b) in dst.iter_mut().zip(data.chunks_exact(2)) {
                *o = from([b[0], b[1]]);
            }
        }
        let n = data.len() / 2;
        match self {
            Half16::F16(w) => put(&mut w[at..at + n], data, half::f16::from_le_bytes),
            Half16::Bf16(w) => put(&mut w[at..at + n], data, half::bf16::from_le_bytes),
        }
    }

    /// Values `from..from + out.len()` as float32 (exact).
    fn widen(&self, from: usize, out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        let to = from + out.len();
        match self {
            Half16::F16(w) => w[from..to].convert_to_f32_slice(out),
            Half16::Bf16(w) => w[from..to].convert_to_f32_slice(out),
        }
    }

    fn len(&self) -> usize {
        match self {
            Half16::F16(w) => w.len(),
            Half16::Bf16(w) => w.len(),
        }
    }
}

impl Matrix {
    /// A `Half16` or `F16` matrix as `F32`, the same values (a checkpoint
    /// that mixes float types within one fused matrix, a float32 part
    /// written over, a matrix about to be quantized). Others stay as they are.
    fn widen_to_f32(&mut self) -> Result<()> {
        let f = match self {
            Matrix::Half16(h) => {
                let mut f = zeroed_f32(h.len())?;
                h.widen(0, &mut f);
                f
            }
            Matrix::F16(w) => {
                let mut f = zeroed_f32(w.len())?;
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(&w[..], &mut f);
                f
            }
            _ => return Ok(()),
        };
        *self = Matrix::F32(f);
        Ok(())
    }

    /// A matrix of ggml blocks (`cols` values per row): packed for the
    /// interleaved kernels when `pack` is set and they can run, as is
    /// otherwise. Matrices read row by row (the token embedding) should not
    /// be packed: `row_f32` on a packed one has to unpack the row.
    pub fn quantized(t: quant::QuantType, bytes: Vec<u8>, cols: usize, pack: bool) -> Matrix {
        let rb = t.row_bytes(cols);
        let rows = if rb == 0 { 0 } else { bytes.len() / rb };
        if pack && rows * rb == bytes.len() && PackedMatrix::worth_packing(t, rows, cols) {
            let m = PackedMatrix::new(t, &[&bytes], rows, cols);
            drop(bytes);
            Matrix::Packed(m)
        } else {
            Matrix::Quant(t, bytes.into())
        }
    }

    /// `quantized` from the matrix's `rows` rows given in consecutive pieces
    /// of whole rows (copied once, straight into the packed layout).
    pub fn quantized_parts(
        t: quant::QuantType,
        pieces: &[&[u8]],
        rows: usize,
        pack: bool,
    ) -> Matrix {
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        let cols = Self::cols_of(t, len, rows);
        if pack && Self::packs(t, len, rows) {
            Matrix::Packed(PackedMatrix::new(t, pieces, rows, cols))
        } else {
            let mut v = crate::tensor::weight_buffer::<u8>(len)
                .unwrap_or_else(|e| panic!("a {rows}-row {t:?} matrix: {e}"));
            let mut at = 0;
            for p in pieces {
                v[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
            Matrix::Quant(t, v.into())
        }
    }

    /// Values per row of `rows` rows of `t` blocks in `len` bytes.
    fn cols_of(t: quant::QuantType, len: usize, rows: usize) -> usize {
        if rows == 0 {
            0
        } else {
            len / rows / t.block_bytes() * t.block_len()
        }
    }

    /// Whether `quantized_parts` with `pack` set repacks `rows` rows of `t`
    /// blocks in `len` bytes (else it keeps them in ggml's row format).
    pub fn packs(t: quant::QuantType, len: usize, rows: usize) -> bool {
        let cols = Self::cols_of(t, len, rows);
        rows * t.row_bytes(cols) == len && PackedMatrix::worth_packing(t, rows, cols)
    }

    /// `out[t][o] = sum_i x[t][i] * self[o][i]`, output rows `stride` apart.
    pub fn matmul(
        &self,
        out: &mut [f32],
        stride: usize,
        x: &[f32],
        n_tok: usize,
        n_in: usize,
        n_out: usize,
    ) {
        match self {
            Matrix::F32(w) => kernels::matmul(out, stride, x, w, n_tok, n_in, n_out),
            Matrix::Half16(Half16::F16(w)) => {
                kernels::matmul(out, stride, x, w, n_tok, n_in, n_out)
            }
            Matrix::Half16(Half16::Bf16(w)) => {
                kernels::matmul(out, stride, x, w, n_tok, n_in, n_out)
            }
            Matrix::F16(w) => kernels::f16::matmul(out, stride, x, w, n_tok, n_in, n_out),
            Matrix::Quant(t, w) => quant::matmul(*t, out, stride, x, w, n_tok, n_in, n_out),
            Matrix::Packed(p) => {
                assert!(
                    p.cols() == n_in && p.rows() == n_out,
                    "packed {}x{} matrix used as {n_out}x{n_in}",
                    p.rows(),
                    p.cols()
                );
                p.matmul(out, stride, x, n_tok)
            }
            Matrix::Stack(bands) => {
                if let Some((packed, n)) = Self::packed_stack(bands) {
                    assert!(packed[0].cols() == n_in, "stack used as {n_out}x{n_in}");
                    return PackedMatrix::matmul_stack(&packed[..n], out, stride, x, n_tok);
                }
                let mut r0 = 0;
                for (rows, m) in bands {
                    m.matmul(&mut out[r0..], stride, x, n_tok, n_in, *rows);
                    r0 += rows;
                }
                debug_assert_eq!(r0, n_out);
            }
        }
    }

    /// A stack's bands (in the first `n` of the array) where they can share
    /// one quantized input and one job (`PackedMatrix::stackable`). No
    /// allocation: this runs once per token and layer. A fused q/k/v has at
    /// most three bands.
    fn packed_stack(bands: &[(usize, Matrix)]) -> Option<([&PackedMatrix; 3], usize)> {
        fn packed(m: &Matrix) -> Option<&PackedMatrix> {
            match m {
                Matrix::Packed(p) => Some(p),
                _ => None,
            }
        }
        let first = packed(&bands.first()?.1)?;
        let mut arr = [first; 3];
        if bands.len() > arr.len() {
            return None;
        }
        for (slot, (_, m)) in arr.iter_mut().zip(bands) {
            *slot = packed(m)?;
        }
        PackedMatrix::stackable(&arr[..bands.len()]).then_some((arr, bands.len()))
    }

    /// Let the pool's idle workers fetch into their caches the weights each
    /// will read first when this `[n_out][n_in]` matrix's matmul comes.
    pub fn read_ahead(&self, n_in: usize, n_out: usize) {
        match self {
            Matrix::Packed(p) => crate::pool::read_ahead(|run, runs| p.run_bytes(run, runs)),
            Matrix::F16(w) => crate::pool::read_ahead(|run, runs| {
                let rows = kernels::f16::run_rows(w, n_in, n_out, run, runs);
                // SAFETY: float16 values are plain bytes.
                unsafe { std::slice::from_raw_parts(rows.as_ptr() as *const u8, 2 * rows.len()) }
            }),
            Matrix::Stack(bands) => match Self::packed_stack(bands) {
                Some((packed, n)) => crate::pool::read_ahead(|run, runs| {
                    PackedMatrix::stack_run_bytes(&packed[..n], run, runs)
                }),
                None => {
                    if let Some((rows, m)) = bands.first() {
                        m.read_ahead(n_in, *rows)
                    }
                }
            },
            // Float32 models are small, and unpacked blocks rare.
            Matrix::F32(_) | Matrix::Half16(_) | Matrix::Quant(..) => {}
        }
    }

    /// Whether every value is read in place from a file's mapping.
    pub fn is_mapped(&self) -> bool {
        match self {
            Matrix::F16(w) => w.is_mapped(),
            Matrix::Quant(_, w) => w.is_mapped(),
            Matrix::F32(_) | Matrix::Half16(_) | Matrix::Packed(_) => false,
            Matrix::Stack(bands) => bands.iter().all(|(_, m)| m.is_mapped()),
        }
    }

    /// Row `r` as float32 (embedding lookup).
    pub fn row_f32(&self, r: usize, cols: usize, out: &mut [f32]) {
        match self {
            Matrix::F32(w) => out.copy_from_slice(&w[r * cols..(r + 1) * cols]),
            Matrix::Half16(w) => w.widen(r * cols, &mut out[..cols]),
            Matrix::F16(w) => half::slice::HalfFloatSliceExt::convert_to_f32_slice(
                &w[r * cols..(r + 1) * cols],
                out,
            ),
            Matrix::Quant(t, w) => {
                let rb = t.row_bytes(cols);
                quant::dequantize_row(*t, &w[r * rb..(r + 1) * rb], out)
            }
            Matrix::Packed(p) => p.row_f32(r, out),
            Matrix::Stack(bands) => {
                let mut r = r;
                for (rows, m) in bands {
                    if r < *rows {
                        return m.row_f32(r, cols, out);
                    }
                    r -= rows;
                }
                panic!("row out of range");
            }
        }
    }

    /// Values of an `F32` or `Half16` matrix (0 for the others).
    fn len_f32_or_half(&self) -> usize {
        match self {
            Matrix::F32(w) => w.len(),
            Matrix::Half16(h) => h.len(),
            _ => 0,
        }
    }

    fn f32_mut(&mut self) -> Option<&mut [f32]> {
        match self {
            Matrix::F32(w) => Some(w),
            Matrix::F16(..)
            | Matrix::Half16(..)
            | Matrix::Quant(..)
            | Matrix::Packed(..)
            | Matrix::Stack(..) => None,
        }
    }
}

pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    /// Rows: q (q_dim), then k (kv_dim), then v (kv_dim).
    pub wqkv: Matrix,
    pub bqkv: Option<Vec<f32>>,
    pub wo: Matrix,
    pub bo: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    /// Rows: gate (intermediate), then up (intermediate).
    pub w_gate_up: Matrix,
    pub b_gate_up: Option<Vec<f32>>,
    pub w_down: Matrix,
    pub b_down: Option<Vec<f32>>,
}

pub struct Weights {
    pub embed: Matrix,
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>,
    /// None when the output head is tied to the embedding.
    pub lm_head: Option<Matrix>,
    /// The matrices `set` has written to: one not yet written takes the
    /// type of its first part (float32, or a 16-bit type kept as it is).
    filled: HashSet<(Field, usize)>,
}

impl Weights {
    /// Re-encode every float32 matrix in block format `t` (the output head in
    /// Q6_K for 4/5-bit formats, as llama.cpp's quantizer does); matrices whose
    /// rows do not split into blocks stay float32.
    pub fn quantize(&mut self, t: quant::QuantType, cfg: &ModelConfig) {
        use quant::QuantType::*;
        let head_type = if matches!(t, Q4_0 | Q4_1 | Q4_K | Q5_K) {
            Q6_K
        } else {
            t
        };
        // `pack`: false for the embedding, which is read row by row.
        let convert = |m: &mut Matrix, t: quant::QuantType, cols: usize, pack: bool| {
            if m.widen_to_f32().is_err() {
                return; // no memory for its float32 values: it stays as it is
            }
            if let Matrix::F32(w) = m {
                if cols % t.block_len() == 0 && !w.is_empty() {
                    let mut bytes = vec![0u8; w.len() / cols * t.row_bytes(cols)];
                    use rayon::prelude::*;
                    bytes
                        .par_chunks_mut(t.row_bytes(cols))
                        .zip(w.par_chunks(cols))
                        .for_each(|(o, row)| quant::quantize_row(t, row, o));
                    *m = Matrix::quantized(t, bytes, cols, pack);
                }
            }
        };
        let (h, ffn, qd) = (cfg.hidden_size, cfg.intermediate_size, cfg.q_dim());
        for l in &mut self.layers {
            convert(&mut l.wqkv, t, h, true);
            convert(&mut l.wo, t, qd, true);
            convert(&mut l.w_gate_up, t, h, true);
            convert(&mut l.w_down, t, ffn, true);
        }
        match &mut self.lm_head {
            Some(head) => {
                convert(head, head_type, h, true);
                convert(&mut self.embed, t, h, false);
            }
            // Tied: the embedding is also the output head, and stays unpacked.
            None => convert(&mut self.embed, head_type, h, false),
        }
    }

    /// Round every float32 matrix to a 16-bit `dtype` (float16 or bfloat16,
    /// to nearest, ties to even), kept as `Matrix::Half16`: half the memory
    /// and the decode reads, computed as float32 from the rounded values.
    /// Other matrices (16-bit or in blocks already) stay as they are.
    pub fn to_half(&mut self, dtype: DType) -> Result<()> {
        let round = |m: &mut Matrix| -> Result<()> {
            if let Matrix::F32(w) = m {
                let mut h = Half16::zeroed(dtype, w.len())?.ok_or_else(|| {
                    invalid_weights(format!("{} is not a 16-bit type", dtype.name()))
                })?;
                match &mut h {
                    Half16::F16(o) => {
                        half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut o[..], w)
                    }
                    Half16::Bf16(o) => {
                        half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut o[..], w)
                    }
                }
                *m = Matrix::Half16(h);
            }
            Ok(())
        };
        for l in &mut self.layers {
            for m in [&mut l.wqkv, &mut l.wo, &mut l.w_gate_up, &mut l.w_down] {
                round(m)?;
            }
        }
        if let Some(head) = &mut self.lm_head {
            round(head)?;
        }
        round(&mut self.embed)
    }

    /// The output projection, `[vocab][hidden]`.
    pub fn output(&self) -> &Matrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

/// Which buffer a named tensor fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Field {
    Embed,
    Norm,
    LmHead,
    AttnNorm,
    Wqkv,
    Bqkv,
    Wo,
    Bo,
    FfnNorm,
    WGateUp,
    BGateUp,
    WDown,
    BDown,
}

/// One tensor the checkpoint must provide: its HF name, shape, and where it goes.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    field: Field,
    layer: usize,
    /// Element offset inside the target buffer (for fused matrices).
    offset: usize,
}

/// The expected tensors of a model with this config, in checkpoint order.
pub fn tensor_specs(cfg: &ModelConfig) -> Vec<TensorSpec> {
    let (h, q, kv, ffn) = (
        cfg.hidden_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
    );
    let mut specs = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, field: Field, layer: usize, offset: usize| {
        specs.push(TensorSpec {
            name,
            shape,
            field,
            layer,
            offset,
        })
    };
    add(
        "model.embed_tokens.weight".into(),
        vec![cfg.vocab_size, h],
        Field::Embed,
        0,
        0,
    );
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        add(
            format!("{p}.input_layernorm.weight"),
            vec![h],
            Field::AttnNorm,
            i,
            0,
        );
        if cfg.arch.fused_projections() {
            add(
                format!("{p}.self_attn.qkv_proj.weight"),
                vec![q + 2 * kv, h],
                Field::Wqkv,
                i,
                0,
            );
        } else {
            add(
                format!("{p}.self_attn.q_proj.weight"),
                vec![q, h],
                Field::Wqkv,
                i,
                0,
            );
            add(
                format!("{p}.self_attn.k_proj.weight"),
                vec![kv, h],
                Field::Wqkv,
                i,
                q * h,
            );
            add(
                format!("{p}.self_attn.v_proj.weight"),
                vec![kv, h],
                Field::Wqkv,
                i,
                (q + kv) * h,
            );
        }
        if cfg.qkv_bias {
            add(
                format!("{p}.self_attn.q_proj.bias"),
                vec![q],
                Field::Bqkv,
                i,
                0,
            );
            add(
                format!("{p}.self_attn.k_proj.bias"),
                vec![kv],
                Field::Bqkv,
                i,
                q,
            );
            add(
                format!("{p}.self_attn.v_proj.bias"),
                vec![kv],
                Field::Bqkv,
                i,
                q + kv,
            );
        }
        add(
            format!("{p}.self_attn.o_proj.weight"),
            vec![h, q],
            Field::Wo,
            i,
            0,
        );
        if cfg.o_bias {
            add(
                format!("{p}.self_attn.o_proj.bias"),
                vec![h],
                Field::Bo,
                i,
                0,
            );
        }
        add(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            Field::FfnNorm,
            i,
            0,
        );
        if cfg.arch.fused_projections() {
            add(
                format!("{p}.mlp.gate_up_proj.weight"),
                vec![2 * ffn, h],
                Field::WGateUp,
                i,
                0,
            );
        } else {
            add(
                format!("{p}.mlp.gate_proj.weight"),
                vec![ffn, h],
                Field::WGateUp,
                i,
                0,
            );
            add(
                format!("{p}.mlp.up_proj.weight"),
                vec![ffn, h],
                Field::WGateUp,
                i,
                ffn * h,
            );
        }
        if cfg.mlp_bias {
            add(
                format!("{p}.mlp.gate_proj.bias"),
                vec![ffn],
                Field::BGateUp,
                i,
                0,
            );
            add(
                format!("{p}.mlp.up_proj.bias"),
                vec![ffn],
                Field::BGateUp,
                i,
                ffn,
            );
        }
        add(
            format!("{p}.mlp.down_proj.weight"),
            vec![h, ffn],
            Field::WDown,
            i,
            0,
        );
        if cfg.mlp_bias {
            add(
                format!("{p}.mlp.down_proj.bias"),
                vec![h],
                Field::BDown,
                i,
                0,
            );
        }
    }
    add("model.norm.weight".into(), vec![h], Field::Norm, 0, 0);
    if !cfg.tie_word_embeddings {
        add(
            "lm_head.weight".into(),
            vec![cfg.vocab_size, h],
            Field::LmHead,
            0,
            0,
        );
    }
    specs
}

/// Names a checkpoint may carry that the model does not use.
pub fn is_ignorable(cfg: &ModelConfig, name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq") || (cfg.tie_word_embeddings && name == "lm_head.weight")
}

pub struct WeightMap {
    pub specs: Vec<TensorSpec>,
    index: HashMap<String, usize>,
}

impl WeightMap {
    pub fn new(cfg: &ModelConfig) -> WeightMap {
        let specs = tensor_specs(cfg);
        let index = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        WeightMap { specs, index }
    }

    pub fn get(&self, name: &str) -> Option<&TensorSpec> {
        self.index.get(name).map(|&i| &self.specs[i])
    }
}

impl Weights {
    /// All-zero weights of the right sizes (model_new: the caller fills them).
    pub fn zeros(cfg: &ModelConfig) -> Result<Weights> {
        let z = zeroed_f32;
        let (h, q, kv, ffn) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
        );
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| -> Result<LayerWeights> {
                Ok(LayerWeights {
                    attn_norm: z(h)?,
                    wqkv: Matrix::F32(z((q + 2 * kv) * h)?),
                    bqkv: cfg.qkv_bias.then(|| z(q + 2 * kv)).transpose()?,
                    wo: Matrix::F32(z(h * q)?),
                    bo: cfg.o_bias.then(|| z(h)).transpose()?,
                    ffn_norm: z(h)?,
                    w_gate_up: Matrix::F32(z(2 * ffn * h)?),
                    b_gate_up: cfg.mlp_bias.then(|| z(2 * ffn)).transpose()?,
                    w_down: Matrix::F32(z(h * ffn)?),
                    b_down: cfg.mlp_bias.then(|| z(h)).transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Weights {
            embed: Matrix::F32(z(cfg.vocab_size * h)?),
            layers,
            norm: z(h)?,
            lm_head: (!cfg.tie_word_embeddings)
                .then(|| z(cfg.vocab_size * h).map(Matrix::F32))
                .transpose()?,
            filled: HashSet::new(),
        })
    }

    /// Copy one named tensor into place, converting to float32, or for a
    /// matrix whose parts all come in one 16-bit type, keeping that type
    /// (`Matrix::Half16`). Name, shape and data size are checked; nothing is
    /// written when a check fails.
    pub fn set(
        &mut self,
        map: &WeightMap,
        cfg: &ModelConfig,
        name: &str,
        tensor: &TensorView,
    ) -> Result<()> {
        let spec = match map.get(name) {
            Some(s) => s,
            None if is_ignorable(cfg, name) => return Ok(()),
            None => {
                return Err(invalid_weights(format!(
                    "unexpected tensor '{name}': a {} model with this config has no such weight",
                    cfg.arch.name()
                )))
            }
        };
        if tensor.shape != spec.shape {
            return Err(invalid_weights(format!(
                "tensor '{name}' has shape {:?}, expected {:?}",
                tensor.shape, spec.shape
            )));
        }
        let n: usize = spec.shape.iter().product();
        let (field, layer) = (spec.field, spec.layer);
        if matches!(
            self.matrix_mut(field, layer),
            Some(Matrix::F32(_) | Matrix::Half16(_))
        ) {
            tensor
                .checked_len()
                .map_err(|e| invalid_weights(format!("tensor '{name}': {}", e.message)))?;
            let first = self.filled.insert((field, layer));
            let m = self.matrix_mut(field, layer).expect("a matrix field");
            if first {
                if let Some(h) = Half16::zeroed(tensor.dtype, m.len_f32_or_half())? {
                    *m = Matrix::Half16(h);
                }
            }
            match m {
                Matrix::Half16(h) if h.dtype() == tensor.dtype => {
                    h.write(spec.offset, tensor.data);
                    return Ok(());
                }
                _ => m.widen_to_f32()?,
            }
        }
        let target = self.buffer(spec.field, spec.layer).ok_or_else(|| {
            invalid_weights(format!(
                "tensor '{name}' is stored quantized and cannot be replaced"
            ))
        })?;
        tensor.to_f32(&mut target[spec.offset..spec.offset + n])
    }

    /// The matrix a field fills (None for vectors: norms, biases).
    fn matrix_mut(&mut self, field: Field, layer: usize) -> Option<&mut Matrix> {
        Some(match field {
            Field::Embed => &mut self.embed,
            Field::LmHead => self.lm_head.as_mut().expect("untied model has lm_head"),
            Field::Wqkv => &mut self.layers[layer].wqkv,
            Field::Wo => &mut self.layers[layer].wo,
            Field::WGateUp => &mut self.layers[layer].w_gate_up,
            Field::WDown => &mut self.layers[layer].w_down,
            _ => return None,
        })
    }

    fn buffer(&mut self, field: Field, layer: usize) -> Option<&mut [f32]> {
        let missing = "bias buffer exists whenever the spec names a bias";
        Some(match field {
            Field::Embed
            | Field::LmHead
            | Field::Wqkv
            | Field::Wo
            | Field::WGateUp
            | Field::WDown => return self.matrix_mut(field, layer)?.f32_mut(),
            Field::Norm => &mut self.norm,
            Field::AttnNorm => &mut self.layers[layer].attn_norm,
            Field::Bqkv => self.layers[layer].bqkv.as_mut().expect(missing),
            Field::Bo => self.layers[layer].bo.as_mut().expect(missing),
            Field::FfnNorm => &mut self.layers[layer].ffn_norm,
            Field::BGateUp => self.layers[layer].b_gate_up.as_mut().expect(missing),
            Field::BDown => self.layers[layer].b_down.as_mut().expect(missing),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_data::rand;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Float32 values that a 16-bit type holds exactly, as both.
    fn rounded(n: usize, seed: u64, dtype: DType) -> (Vec<f32>, Half16) {
        let v = rand(n, seed);
        match dtype {
            DType::F16 => {
                let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
                (h.iter().map(|x| x.to_f32()).collect(), Half16::F16(h))
            }
            _ => {
                let h: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
                (h.iter().map(|x| x.to_f32()).collect(), Half16::Bf16(h))
            }
        }
    }

    #[test]
    fn a_16_bit_matrix_gives_the_bits_of_its_float32_values() {
        // 70 rows: two whole 32-row panels for a long batch, the rest in the
        // short-batch tiles; 100 inputs: a tail past the last 16.
        let n_out = 70;
        for dtype in [DType::F16, DType::BF16] {
            for n_in in [96, 100] {
                let (f, h) = rounded(n_out * n_in, n_in as u64, dtype);
                let (wide, half) = (Matrix::F32(f), Matrix::Half16(h));
                for n_tok in [1, 3, 12, 13, 40] {
                    let x = rand(n_tok * n_in, 7 + n_tok as u64);
                    let (mut a, mut b) = (vec![0.0; n_tok * n_out], vec![1.0; n_tok * n_out]);
                    wide.matmul(&mut a, n_out, &x, n_tok, n_in, n_out);
                    half.matmul(&mut b, n_out, &x, n_tok, n_in, n_out);
                    assert_eq!(
                        bits(&a),
                        bits(&b),
                        "{dtype:?} {n_in} inputs, {n_tok} tokens"
                    );
                }
                let (mut ra, mut rb) = (vec![0.0; n_in], vec![1.0; n_in]);
                wide.row_f32(5, n_in, &mut ra);
                half.row_f32(5, n_in, &mut rb);
                assert_eq!(bits(&ra), bits(&rb));
            }
        }
    }

    fn tiny() -> ModelConfig {
        ModelConfig::from_json(
            r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 32, "intermediate_size": 48,
                "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
                "vocab_size": 40, "max_position_embeddings": 64}"#,
        )
        .unwrap()
    }

    fn le(dtype: DType, v: &[f32]) -> Vec<u8> {
        match dtype {
            DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            DType::F16 => v
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            DType::BF16 => v
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
        }
    }

    fn set(
        w: &mut Weights,
        map: &WeightMap,
        cfg: &ModelConfig,
        name: &str,
        dtype: DType,
        v: &[f32],
    ) {
        let spec = map.get(name).unwrap();
        let data = le(dtype, v);
        let t = TensorView {
            dtype,
            shape: spec.shape.clone(),
            data: &data,
        };
        w.set(map, cfg, name, &t).unwrap();
    }

    #[test]
    fn a_matrix_keeps_the_16_bit_type_all_its_parts_come_in() {
        let cfg = tiny();
        let map = WeightMap::new(&cfg);
        let q = "model.layers.0.self_attn.q_proj.weight";
        let k = "model.layers.0.self_attn.k_proj.weight";
        let v = "model.layers.0.self_attn.v_proj.weight";
        let (hq, hk) = (
            map.get(q).unwrap().shape.iter().product(),
            map.get(k).unwrap().shape.iter().product(),
        );
        // Values every type holds exactly (small integers over 8).
        let val = |n: usize, s: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7 + s) % 13) as f32 / 8.0 - 0.75)
                .collect()
        };
        let (vq, vk, vv) = (val(hq, 1), val(hk, 2), val(hk, 3));
        let want: Vec<f32> = [&vq[..], &vk[..], &vv[..]].concat();
        let read = |m: &Matrix| {
            let mut out = vec![0.0; want.len()];
            for r in 0..want.len() / 32 {
                m.row_f32(r, 32, &mut out[r * 32..(r + 1) * 32]);
            }
            out
        };
        for (types, kept) in [
            ([DType::BF16; 3], Some(DType::BF16)),
            ([DType::F16; 3], Some(DType::F16)),
            ([DType::F32; 3], None),
            ([DType::BF16, DType::F32, DType::BF16], None),
            ([DType::F16, DType::F16, DType::BF16], None),
        ] {
            let mut w = Weights::zeros(&cfg).unwrap();
            for (name, (dtype, vals)) in [q, k, v]
                .into_iter()
                .zip(types.into_iter().zip([&vq, &vk, &vv]))
            {
                set(&mut w, &map, &cfg, name, dtype, vals);
            }
            let m = &w.layers[0].wqkv;
            match (m, kept) {
                (Matrix::Half16(h), Some(t)) => assert_eq!(h.dtype(), t),
                (Matrix::F32(_), None) => {}
                _ => panic!("{types:?}: the fused matrix is not of the kind expected"),
            }
            assert_eq!(bits(&read(m)), bits(&want), "{types:?}");
            // Written over in float32 later: widened, the other parts kept.
            let mut w2 = w;
            set(&mut w2, &map, &cfg, k, DType::F32, &vv);
            assert!(matches!(w2.layers[0].wqkv, Matrix::F32(_)));
            let again: Vec<f32> = [&vq[..], &vv[..], &vv[..]].concat();
            assert_eq!(
                bits(&read(&w2.layers[0].wqkv)),
                bits(&again),
                "{types:?} then f32"
            );
        }
        // A bad size changes nothing.
        let mut w = Weights::zeros(&cfg).unwrap();
        let spec = map.get(q).unwrap();
        let short = vec![0u8; 10];
        let t = TensorView {
            dtype: DType::BF16,
            shape: spec.shape.clone(),
            data: &short,
        };
        assert!(w.set(&map, &cfg, q, &t).is_err());
        assert!(matches!(w.layers[0].wqkv, Matrix::F32(_)) && w.filled.is_empty());
    }
}
