//! Per-session key/value cache: one slot per batch row, each holding
//! `[layer][position][kv_dim]` keys and values. Slots are allocated the first
//! time a row is used, so a session sized for many rows costs nothing until then.
//!
//! Entries are float32 or float16. float16 halves the memory and is what
//! llama.cpp keeps by default; with it, attention also rounds the query and
//! the attention weights to float16 before their products with keys and
//! values, as llama.cpp's matmuls against a float16 cache do.

use half::f16;

use crate::error::Result;
use crate::tensor::{zeroed_f16, zeroed_f32};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvType {
    F32,
    F16,
}

impl KvType {
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
}

/// One cache element type, and the two products attention takes with it.
pub trait KvElem: Copy + Send + Sync + 'static {
    fn from_f32_slice(src: &[f32], dst: &mut [Self]);
    /// Each value as the cache would hold it (what the matmul against it sees).
    fn round_all(x: &mut [f32]);
    /// `q . k`. `pairs`: the head's halves are llama.cpp's even and odd
    /// elements (see `kernels::f16::dot_f32_f16`, which sums in its order).
    fn dot(q: &[f32], k: &[Self], pairs: bool) -> f32;
    /// `out[h * stride + i] = q_h . k_i` for each `hd`-long query `q_h` in
    /// `q` and each of `n` keys, key i at `keys[i * key_stride..]`.
    #[allow(clippy::too_many_arguments)]
    fn dot_heads_span(
        q: &[f32],
        hd: usize,
        keys: &[Self],
        n: usize,
        key_stride: usize,
        out: &mut [f32],
        stride: usize,
        pairs: bool,
    ) {
        dot_each_head(q, hd, keys, n, key_stride, out, stride, pairs)
    }
    /// `out_h = sum_i p[h * p_stride + i] * v_i` for each `hd`-long head of
    /// `out`, over `i < n`, with `v_i = values[i * v_stride..][..hd]`
    /// (float32: key by key from zero; float16: in llama.cpp's order,
    /// `kernels::f16::mix_f16`).
    fn mix_heads(
        out: &mut [f32],
        hd: usize,
        p: &[f32],
        p_stride: usize,
        n: usize,
        values: &[Self],
        v_stride: usize,
    );
}

/// `KvElem::dot_heads_span` one key and one head at a time.
#[allow(clippy::too_many_arguments)]
fn dot_each_head<T: KvElem>(
    q: &[f32],
    hd: usize,
    keys: &[T],
    n: usize,
    key_stride: usize,
    out: &mut [f32],
    stride: usize,
    pairs: bool,
) {
    for i in 0..n {
        let k = &keys[i * key_stride..i * key_stride + hd];
        for h in 0..q.len() / hd {
            out[h * stride + i] = T::dot(&q[h * hd..(h + 1) * hd], k, pairs);
        }
    }
}

impl KvElem for f32 {
    fn from_f32_slice(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn round_all(_: &mut [f32]) {}
    fn dot(q: &[f32], k: &[f32], _pairs: bool) -> f32 {
        crate::kernels::dot(q, k)
    }
    fn mix_heads(
        out: &mut [f32],
        hd: usize,
        p: &[f32],
        p_stride: usize,
        n: usize,
        values: &[f32],
        v_stride: usize,
    ) {
        out.fill(0.0);
        for i in 0..n {
            let v = &values[i * v_stride..i * v_stride + hd];
            for (h, o) in out.chunks_exact_mut(hd).enumerate() {
                let w = p[h * p_stride + i];
                for (o, x) in o.iter_mut().zip(v) {
                    *o += w * x;
                }
            }
        }
    }
}

impl KvElem for f16 {
    fn from_f32_slice(src: &[f32], dst: &mut [f16]) {
        half::slice::HalfFloatSliceExt::convert_from_f32_slice(dst, src);
    }
    fn round_all(x: &mut [f32]) {
        crate::kernels::f16::round_to_f16(x)
    }
    fn dot(q: &[f32], k: &[f16], pairs: bool) -> f32 {
        crate::kernels::f16::dot_f32_f16(q, k, pairs)
    }
    fn dot_heads_span(
        q: &[f32],
        hd: usize,
        keys: &[f16],
        n: usize,
        key_stride: usize,
        out: &mut [f32],
        stride: usize,
        pairs: bool,
    ) {
        use crate::kernels::f16::try_dot_heads_span_f16;
        if !try_dot_heads_span_f16(q, hd, keys, n, key_stride, out, stride, pairs) {
            dot_each_head(q, hd, keys, n, key_stride, out, stride, pairs)
        }
    }
    fn mix_heads(
        out: &mut [f32],
        hd: usize,
        p: &[f32],
        p_stride: usize,
        n: usize,
        values: &[f16],
        v_stride: usize,
    ) {
        if !crate::kernels::f16::try_mix_heads_f16(out, hd, p, p_stride, n, values, v_stride) {
            for (h, o) in out.chunks_exact_mut(hd).enumerate() {
                crate::kernels::f16::mix_f16(o, &p[h * p_stride..], n, values, v_stride);
            }
        }
    }
}

enum Store {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Store {
    fn new(t: KvType, n: usize) -> Result<Store> {
        Ok(match t {
            // Zeroed pages arrive lazily, so unused context costs no resident memory.
            KvType::F32 => Store::F32(zeroed_f32(n)?),
            KvType::F16 => Store::F16(zeroed_f16(n)?),
        })
    }
}

pub struct SeqCache {
    k: Store,
    v: Store,
    /// Number of positions filled (valid) in this slot.
    pub len: usize,
}

pub struct KvCache {
    pub n_ctx: usize,
    pub kv_type: KvType,
    n_layers: usize,
    kv_dim: usize,
    slots: Vec<SeqCache>,
}

/// Keys and values of one layer of one slot, positions `0..n`.
pub enum LayerView<'a> {
    F32(&'a [f32], &'a [f32]),
    F16(&'a [f16], &'a [f16]),
}

impl KvCache {
    pub fn new(n_ctx: usize, n_layers: usize, kv_dim: usize, kv_type: KvType) -> KvCache {
        KvCache {
            n_ctx,
            kv_type,
            n_layers,
            kv_dim,
            slots: Vec::new(),
        }
    }

    /// Bytes one slot takes (keys and values, all layers, n_ctx positions).
    pub fn slot_bytes(n_ctx: usize, n_layers: usize, kv_dim: usize, kv_type: KvType) -> usize {
        2 * n_ctx * n_layers * kv_dim * kv_type.bytes()
    }

    /// Positions already cached for row `seq` (0 for a row never used).
    pub fn len(&self, seq: usize) -> usize {
        self.slots.get(seq).map_or(0, |s| s.len)
    }

    pub fn ensure_slots(&mut self, n: usize) -> Result<()> {
        while self.slots.len() < n {
            let size = self.n_layers * self.n_ctx * self.kv_dim;
            self.slots.push(SeqCache {
                k: Store::new(self.kv_type, size)?,
                v: Store::new(self.kv_type, size)?,
                len: 0,
            });
        }
        Ok(())
    }

    pub fn set_len(&mut self, seq: usize, len: usize) {
        self.slots[seq].len = len;
    }

    #[inline]
    fn offset(&self, layer: usize, pos: usize) -> usize {
        (layer * self.n_ctx + pos) * self.kv_dim
    }

    pub fn store(&mut self, seq: usize, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let o = self.offset(layer, pos);
        let d = self.kv_dim;
        let slot = &mut self.slots[seq];
        match (&mut slot.k, &mut slot.v) {
            (Store::F32(ks), Store::F32(vs)) => {
                f32::from_f32_slice(k, &mut ks[o..o + d]);
                f32::from_f32_slice(v, &mut vs[o..o + d]);
            }
            (Store::F16(ks), Store::F16(vs)) => {
                f16::from_f32_slice(k, &mut ks[o..o + d]);
                f16::from_f32_slice(v, &mut vs[o..o + d]);
            }
            _ => unreachable!("keys and values share a type"),
        }
    }

    /// Keys and values of `layer` for positions `0..n`, each one contiguous slice.
    pub fn layer(&self, seq: usize, layer: usize, n: usize) -> LayerView<'_> {
        let o = self.offset(layer, 0);
        let r = o..o + n * self.kv_dim;
        match (&self.slots[seq].k, &self.slots[seq].v) {
            (Store::F32(k), Store::F32(v)) => LayerView::F32(&k[r.clone()], &v[r]),
            (Store::F16(k), Store::F16(v)) => LayerView::F16(&k[r.clone()], &v[r]),
            _ => unreachable!("keys and values share a type"),
        }
    }
}
