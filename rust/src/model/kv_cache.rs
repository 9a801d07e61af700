//! Per-session key/value cache: one slot per batch row, each holding
//! `[layer][position][kv_dim]` keys and values. Slots are allocated the first
//! time a row is used, so a session sized for many rows costs nothing until then.

use crate::error::Result;
use crate::tensor::zeroed_f32;

pub struct SeqCache {
    k: Vec<f32>,
    v: Vec<f32>,
    /// Number of positions filled (valid) in this slot.
    pub len: usize,
}

pub struct KvCache {
    pub n_ctx: usize,
    n_layers: usize,
    kv_dim: usize,
    slots: Vec<SeqCache>,
}

impl KvCache {
    pub fn new(n_ctx: usize, n_layers: usize, kv_dim: usize) -> KvCache {
        KvCache { n_ctx, n_layers, kv_dim, slots: Vec::new() }
    }

    /// Bytes one slot takes (keys and values, all layers, n_ctx positions).
    pub fn slot_bytes(n_ctx: usize, n_layers: usize, kv_dim: usize) -> usize {
        2 * n_ctx * n_layers * kv_dim * std::mem::size_of::<f32>()
    }

    /// Positions already cached for row `seq` (0 for a row never used).
    pub fn len(&self, seq: usize) -> usize {
        self.slots.get(seq).map_or(0, |s| s.len)
    }

    pub fn ensure_slots(&mut self, n: usize) -> Result<()> {
        while self.slots.len() < n {
            let size = self.n_layers * self.n_ctx * self.kv_dim;
            // Zeroed pages arrive lazily, so unused context costs no resident memory.
            self.slots.push(SeqCache { k: zeroed_f32(size)?, v: zeroed_f32(size)?, len: 0 });
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
        slot.k[o..o + d].copy_from_slice(k);
        slot.v[o..o + d].copy_from_slice(v);
    }

    /// Keys (or values) of `layer` for positions `0..n`, as one contiguous slice.
    pub fn keys(&self, seq: usize, layer: usize, n: usize) -> &[f32] {
        let o = self.offset(layer, 0);
        &self.slots[seq].k[o..o + n * self.kv_dim]
    }

    pub fn values(&self, seq: usize, layer: usize, n: usize) -> &[f32] {
        let o = self.offset(layer, 0);
        &self.slots[seq].v[o..o + n * self.kv_dim]
    }
}
