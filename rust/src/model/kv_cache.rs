//! Per-session key/value cache: one slot per batch row, each holding the
//! keys and values of every layer. Slots are allocated the first time a row
//! is used, so a session sized for many rows costs nothing until then.
//!
//! Each layer holds its kv heads one after the other, each head in blocks
//! of 32 positions, `[dim][position]` within a block
//! (`kernels::attention::at`): attention reads one head's positions front
//! to back as one stretch of memory, for keys and values alike, where rows
//! of whole positions would interleave the heads and make each head's
//! sweep stride through memory.
//!
//! Entries are float32 or float16. float16 halves the memory and is what
//! llama.cpp keeps by default; with it, attention also rounds the query and
//! the attention weights to float16 before their products with keys and
//! values, as llama.cpp's matmuls against a float16 cache do.

use half::f16;

use crate::error::Result;
use crate::kernels::attention::{self, Value, BLOCK};
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

/// One cache element type: its rounding, and the attention's two sums
/// against it (`kernels::attention`).
pub trait KvElem: Value {
    fn from_f32_slice(src: &[f32], dst: &mut [Self]);
    /// Each value as the cache would hold it (what the matmul against it sees).
    fn round_all(x: &mut [f32]);
}

impl KvElem for f32 {
    fn from_f32_slice(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn round_all(_: &mut [f32]) {}
}

impl KvElem for f16 {
    fn from_f32_slice(src: &[f32], dst: &mut [f16]) {
        half::slice::HalfFloatSliceExt::convert_from_f32_slice(dst, src);
    }
    fn round_all(x: &mut [f32]) {
        crate::kernels::f16::round_to_f16(x)
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
    head_dim: usize,
    slots: Vec<SeqCache>,
}

/// Keys and values of one layer of one slot: kv head `h`'s element `e` of
/// position `i` at `[h * head_len + attention::at(e, i, head_dim)]` of each.
pub enum LayerView<'a> {
    F32(&'a [f32], &'a [f32]),
    F16(&'a [f16], &'a [f16]),
}

impl KvCache {
    pub fn new(
        n_ctx: usize,
        n_layers: usize,
        kv_dim: usize,
        head_dim: usize,
        kv_type: KvType,
    ) -> KvCache {
        assert!(head_dim > 0 && kv_dim % head_dim == 0);
        KvCache {
            n_ctx,
            kv_type,
            n_layers,
            kv_dim,
            head_dim,
            slots: Vec::new(),
        }
    }

    /// Values one cached head takes (`attention::head_len`).
    pub fn head_len(&self) -> usize {
        attention::head_len(self.head_dim, self.n_ctx)
    }

    /// Bytes one slot takes (keys and values, all layers, n_ctx positions
    /// rounded up to whole blocks).
    pub fn slot_bytes(
        n_ctx: usize,
        n_layers: usize,
        kv_dim: usize,
        head_dim: usize,
        kv_type: KvType,
    ) -> usize {
        let heads = kv_dim / head_dim.max(1);
        2 * n_layers * heads * attention::head_len(head_dim, n_ctx) * kv_type.bytes()
    }

    /// Positions already cached for row `seq` (0 for a row never used).
    pub fn len(&self, seq: usize) -> usize {
        self.slots.get(seq).map_or(0, |s| s.len)
    }

    pub fn ensure_slots(&mut self, n: usize) -> Result<()> {
        while self.slots.len() < n {
            let size = self.n_layers * self.layer_len();
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

    /// Values one layer takes in a slot's keys (or values).
    fn layer_len(&self) -> usize {
        self.kv_dim / self.head_dim * self.head_len()
    }

    /// Writes position `pos` of `layer`: `k` and `v` hold the kv heads side
    /// by side (`kv_dim` values each).
    pub fn store(&mut self, seq: usize, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        assert!(pos < self.n_ctx && k.len() == self.kv_dim && v.len() == self.kv_dim);
        let (o, hd, head_len) = (layer * self.layer_len(), self.head_dim, self.head_len());
        // Head h's element e sits at `place(h) + e * BLOCK` (`attention::at`).
        fn scatter<T: KvElem>(
            dst: &mut [T],
            src: &[f32],
            hd: usize,
            place: impl Fn(usize) -> usize,
        ) {
            let mut buf = [T::ZERO; 64];
            for (h, head) in src.chunks_exact(hd).enumerate() {
                let dst = &mut dst[place(h)..];
                for (c, part) in head.chunks(64).enumerate() {
                    T::from_f32_slice(part, &mut buf[..part.len()]);
                    let out = dst[c * 64 * BLOCK..].iter_mut().step_by(BLOCK);
                    for (d, &x) in out.zip(&buf[..part.len()]) {
                        *d = x;
                    }
                }
            }
        }
        let place = |h: usize| o + h * head_len + attention::at(0, pos, hd);
        let slot = &mut self.slots[seq];
        match (&mut slot.k, &mut slot.v) {
            (Store::F32(ks), Store::F32(vs)) => {
                scatter(ks, k, hd, place);
                scatter(vs, v, hd, place);
            }
            (Store::F16(ks), Store::F16(vs)) => {
                scatter(ks, k, hd, place);
                scatter(vs, v, hd, place);
            }
            _ => unreachable!("keys and values share a type"),
        }
    }

    /// Keys and values of `layer` (all positions; see `LayerView`).
    pub fn layer(&self, seq: usize, layer: usize) -> LayerView<'_> {
        let o = layer * self.layer_len();
        let r = o..o + self.layer_len();
        match (&self.slots[seq].k, &self.slots[seq].v) {
            (Store::F32(k), Store::F32(v)) => LayerView::F32(&k[r.clone()], &v[r]),
            (Store::F16(k), Store::F16(v)) => LayerView::F16(&k[r.clone()], &v[r]),
            _ => unreachable!("keys and values share a type"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_puts_each_value_where_attention_reads_it() {
        // Heads of 64 (one conversion chunk), 80 (a chunk and a part) and
        // 128 (two), positions across block edges, both number types.
        for (hd, heads) in [(64usize, 2usize), (80, 3), (128, 2)] {
            for kv_type in [KvType::F32, KvType::F16] {
                let (n_ctx, layers) = (70, 2);
                let mut cache = KvCache::new(n_ctx, layers, heads * hd, hd, kv_type);
                cache.ensure_slots(2).unwrap();
                let val = |kv: usize, l: usize, pos: usize, g: usize| {
                    // Small integers: exact in float16 too.
                    ((kv * 7 + l * 5 + pos * 3 + g) % 200) as f32 - 100.0
                };
                let positions = [0usize, 1, 31, 32, 33, 63, 64, 69];
                for l in 0..layers {
                    for &pos in &positions {
                        let k: Vec<f32> = (0..heads * hd).map(|g| val(0, l, pos, g)).collect();
                        let v: Vec<f32> = (0..heads * hd).map(|g| val(1, l, pos, g)).collect();
                        cache.store(1, l, pos, &k, &v);
                    }
                }
                let hl = cache.head_len();
                for l in 0..layers {
                    let (ks, vs): (Vec<f32>, Vec<f32>) = match cache.layer(1, l) {
                        LayerView::F32(k, v) => (k.to_vec(), v.to_vec()),
                        LayerView::F16(k, v) => (
                            k.iter().map(|x| x.to_f32()).collect(),
                            v.iter().map(|x| x.to_f32()).collect(),
                        ),
                    };
                    let mut written = 0;
                    for &pos in &positions {
                        for g in 0..heads * hd {
                            let at = g / hd * hl + attention::at(g % hd, pos, hd);
                            assert_eq!(ks[at], val(0, l, pos, g), "k hd {hd} pos {pos} g {g}");
                            assert_eq!(vs[at], val(1, l, pos, g), "v hd {hd} pos {pos} g {g}");
                            written += 1;
                        }
                    }
                    // Nothing else written (val is never 0 at these places,
                    // everything else starts at 0).
                    let nonzero = ks.iter().filter(|&&x| x != 0.0).count();
                    assert!(
                        nonzero <= written && nonzero > written * 9 / 10,
                        "{nonzero} of {written}"
                    );
                }
                // The other slot is untouched.
                match cache.layer(0, 0) {
                    LayerView::F32(k, _) => assert!(k.iter().all(|&x| x == 0.0)),
                    LayerView::F16(k, _) => assert!(k.iter().all(|&x| x.to_f32() == 0.0)),
                }
            }
        }
    }
}
