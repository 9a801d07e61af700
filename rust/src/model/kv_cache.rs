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
    /// Each slot's key and value buffers, refreshed by `heads` (kept to
    /// reuse its memory: a decode step allocates nothing).
    bases: Vec<(usize, usize)>,
}

/// One cached head of one slot and layer: `head_len` keys and as many
/// values, element `e` of position `i` at `attention::at(e, i, head_dim)`.
pub enum HeadView<'a> {
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
            bases: Vec::new(),
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
        assert!(k.len() == self.kv_dim && v.len() == self.kv_dim);
        let hd = self.head_dim;
        let heads = self.heads();
        for (h, (k, v)) in k.chunks_exact(hd).zip(v.chunks_exact(hd)).enumerate() {
            // SAFETY: `heads` borrows the cache mutably; only this thread uses it.
            unsafe { heads.store(seq, layer, h, pos, k, v) };
        }
    }

    /// Every slot's heads, to be written and read head by head from many
    /// threads at once (a decode step stores and attends each head in one
    /// task: the thread that attends a head has its new lines in cache).
    pub fn heads(&mut self) -> KvHeads<'_> {
        self.bases.clear();
        for s in &mut self.slots {
            self.bases.push(match (&mut s.k, &mut s.v) {
                (Store::F32(k), Store::F32(v)) => {
                    (k.as_mut_ptr() as usize, v.as_mut_ptr() as usize)
                }
                (Store::F16(k), Store::F16(v)) => {
                    (k.as_mut_ptr() as usize, v.as_mut_ptr() as usize)
                }
                _ => unreachable!("keys and values share a type"),
            });
        }
        KvHeads {
            bases: &self.bases,
            kv_type: self.kv_type,
            n_layers: self.n_layers,
            n_heads: self.kv_dim / self.head_dim,
            head_dim: self.head_dim,
            head_len: self.head_len(),
            n_ctx: self.n_ctx,
        }
    }
}

/// The cache's heads, shared by the threads of one parallel section (see
/// `KvCache::heads`). Its methods check every index; what they leave to the
/// caller is that no two threads touch one head at once when either writes.
#[derive(Clone, Copy)]
pub struct KvHeads<'a> {
    bases: &'a [(usize, usize)],
    kv_type: KvType,
    n_layers: usize,
    n_heads: usize,
    head_dim: usize,
    head_len: usize,
    n_ctx: usize,
}

// SAFETY: the pointers come from a cache borrowed mutably for 'a; the
// methods' contracts keep threads on disjoint heads while one writes.
unsafe impl Send for KvHeads<'_> {}
unsafe impl Sync for KvHeads<'_> {}

impl KvHeads<'_> {
    /// Where head `head` of `layer` in slot `seq` starts, in elements.
    fn offset(&self, seq: usize, layer: usize, head: usize) -> (usize, usize, usize) {
        assert!(seq < self.bases.len() && layer < self.n_layers && head < self.n_heads);
        let (k, v) = self.bases[seq];
        (k, v, (layer * self.n_heads + head) * self.head_len)
    }

    /// Writes position `pos` of one head: `k` and `v` are its `head_dim`
    /// values.
    ///
    /// # Safety
    /// No other thread may read or write this head of this slot and layer
    /// during the call.
    pub unsafe fn store(
        &self,
        seq: usize,
        layer: usize,
        head: usize,
        pos: usize,
        k: &[f32],
        v: &[f32],
    ) {
        let hd = self.head_dim;
        assert!(pos < self.n_ctx && k.len() == hd && v.len() == hd);
        let (kb, vb, o) = self.offset(seq, layer, head);
        // Element e sits at `at(0, pos) + e * BLOCK` (`attention::at`).
        unsafe fn scatter<T: KvElem>(
            base: usize,
            src: &[f32],
            hd: usize,
            o: usize,
            pos: usize,
            len: usize,
        ) {
            let head = std::slice::from_raw_parts_mut((base as *mut T).add(o), len);
            let dst = &mut head[attention::at(0, pos, hd)..];
            let mut buf = [T::ZERO; 64];
            for (c, part) in src.chunks(64).enumerate() {
                T::from_f32_slice(part, &mut buf[..part.len()]);
                let out = dst[c * 64 * BLOCK..].iter_mut().step_by(BLOCK);
                for (d, &x) in out.zip(&buf[..part.len()]) {
                    *d = x;
                }
            }
        }
        let len = self.head_len;
        match self.kv_type {
            KvType::F32 => {
                scatter::<f32>(kb, k, hd, o, pos, len);
                scatter::<f32>(vb, v, hd, o, pos, len);
            }
            KvType::F16 => {
                scatter::<f16>(kb, k, hd, o, pos, len);
                scatter::<f16>(vb, v, hd, o, pos, len);
            }
        }
    }

    /// One head's keys and values, all positions.
    ///
    /// # Safety
    /// No other thread may write this head of this slot and layer while the
    /// view lives.
    pub unsafe fn view(&self, seq: usize, layer: usize, head: usize) -> HeadView<'_> {
        let (kb, vb, o) = self.offset(seq, layer, head);
        let len = self.head_len;
        match self.kv_type {
            KvType::F32 => HeadView::F32(
                std::slice::from_raw_parts((kb as *const f32).add(o), len),
                std::slice::from_raw_parts((vb as *const f32).add(o), len),
            ),
            KvType::F16 => HeadView::F16(
                std::slice::from_raw_parts((kb as *const f16).add(o), len),
                std::slice::from_raw_parts((vb as *const f16).add(o), len),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys and values of one layer of slot `seq`, head after head, as f32.
    fn layer_f32(cache: &mut KvCache, seq: usize, layer: usize) -> (Vec<f32>, Vec<f32>) {
        let n_heads = cache.kv_dim / cache.head_dim;
        let heads = cache.heads();
        let (mut ks, mut vs) = (Vec::new(), Vec::new());
        for h in 0..n_heads {
            // SAFETY: one thread.
            match unsafe { heads.view(seq, layer, h) } {
                HeadView::F32(k, v) => {
                    ks.extend_from_slice(k);
                    vs.extend_from_slice(v);
                }
                HeadView::F16(k, v) => {
                    ks.extend(k.iter().map(|x| x.to_f32()));
                    vs.extend(v.iter().map(|x| x.to_f32()));
                }
            }
        }
        (ks, vs)
    }

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
                    let (ks, vs) = layer_f32(&mut cache, 1, l);
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
                for l in 0..layers {
                    let (ks, vs) = layer_f32(&mut cache, 0, l);
                    assert!(ks.iter().chain(&vs).all(|&x| x == 0.0));
                }
            }
        }
    }
}
