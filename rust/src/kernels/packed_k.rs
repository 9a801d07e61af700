//! The k-quants (Q4_K, Q5_K, Q6_K) in `packed`'s interleaved layout: groups of
//! G rows (8 for the AVX2 kernels, 16 for the AVX-512 ones), one vector
//! holding 4 bytes of each of the G rows (row r in i32 lane r), activations
//! (Q8_K) broadcast 4 bytes at a time, one float lane per row at the end.
//! `packed::PackedMatrix` holds the matrix; this module has the per-group
//! layout, its packing and unpacking, and the kernels.
//!
//! One group's super-block (256 values of each of the G rows), 64-byte
//! aligned when G is 16, super-blocks back to back (`Layout` has the offsets):
//! - Q4_K (144 bytes per row, as in ggml's format): `0..2G` the rows' d
//!   (f16), `2G..4G` their dmin, `4G..16G` the 12 bytes of 6-bit scales and
//!   mins as ggml packs them (see `Layout::entry`: vector w holds each row's
//!   bytes 4w..4w+3; the kernels unpack them, `Layout::scale_min` and
//!   `unpack_scales_mins`), then 4 chunks of 64 values, each 8 vectors of 4G
//!   bytes: vector k of chunk c holds row r's nibble bytes 32c+4k..32c+4k+3
//!   (low nibbles: sub-block 2c, values 4k..4k+3; high nibbles: sub-block
//!   2c+1).
//! - Q5_K (176 bytes per row, as in ggml's format): as Q4_K, with 8 vectors
//!   of fifth bits between the scales and the quants (`16G..48G`, so that a
//!   super-block is read front to back): vector k holds row r's `qh` bytes
//!   4k..4k+3 (bit j: the fifth bit of value 4k+i of sub-block j).
//! - Q6_K: `0..2G` the rows' d, 2G zero bytes, `4G..20G` the 16 int8
//!   scales (see `Layout::entry`), then the values q + 32 (0..63, the 6 bits
//!   put together at load). 8-row groups (276 bytes per row, against 210):
//!   64 vectors, vector m holding row r's values 4m..4m+3 as bytes.
//!   16-row groups (212 bytes per row): nibbles and 2-bit planes, as
//!   `Layout::q6k_at` lays them out.
//!
//! `Layout::entry(j, r)`: a scale/min table of `n` entries per row is `n / 4`
//! vectors; vector j / 4 holds 4 bytes per row (entries 4(j/4)..4(j/4)+3),
//! row r at byte 4r, so each 128-bit lane holds 4 rows and one in-lane byte
//! shuffle spreads entry j of every row over the i32 lanes.
//!
//! The integer sums are exactly `kquant::dot_q45k`'s / `dot_q6k`'s; the
//! float steps are llama.cpp's, in the fast and the plain group kernels
//! alike (so those agree bit for bit):
//! - Q4_K as its repacked Q4_K kernels: per super-block (one token) or per
//!   pair of sub-blocks (tiles, `per_pair_sums`) one fused multiply-add,
//!   and one into a separate sum of the min terms, taken off at the end;
//! - Q5_K and Q6_K as its tiled k-quant matmul (`kquant::tiled_add`), which
//!   it runs them through for 8 tokens or more, and below 8 as its per-row
//!   dot products sum them (`Rounding::Lanes`: eight i32 lanes a row, each
//!   into a float lane of its own).

use std::cell::RefCell;

use half::f16;

use super::kquant::{self, q6k_values, scale_min, BlockQ8K, Rounding, QK_K};
use super::packed::Kernels;
use super::quant::QuantType;

/// Where things lie in a super-block of a group of `g` rows.
#[derive(Clone, Copy)]
pub(crate) struct Layout {
    pub g: usize,
}

impl Layout {
    /// The rows' f16 d.
    const fn d(self) -> usize {
        0
    }
    /// Q4_K/Q5_K: the rows' f16 dmin.
    const fn dmin(self) -> usize {
        2 * self.g
    }
    /// The scale table (Q4_K/Q5_K: ggml's 12 bytes of scales and mins per
    /// row; Q6_K: 16 entries per row).
    const fn scales(self) -> usize {
        4 * self.g
    }
    /// The quant vectors of `t`.
    const fn qs(self, t: QuantType) -> usize {
        match t {
            QuantType::Q5_K => 48 * self.g,
            QuantType::Q4_K => 16 * self.g,
            _ => 20 * self.g,
        }
    }
    /// Q5_K: the fifth-bit vectors, between the scales and the quants (so
    /// that a super-block is read front to back).
    const fn highs(self) -> usize {
        16 * self.g
    }
    /// Q4_K/Q5_K: row `r`'s scale and min of sub-block `j` (`kquant::scale_min`
    /// on its 12 packed bytes).
    fn scale_min(self, sb: &[u8], j: usize, r: usize) -> (u8, u8) {
        let packed: [u8; 12] = std::array::from_fn(|i| sb[self.scales() + self.entry(i, r)]);
        scale_min(j, &packed)
    }
    /// Bytes of one super-block of `t`.
    pub(crate) const fn superblock_bytes(self, t: QuantType) -> usize {
        match t {
            QuantType::Q4_K => 144 * self.g,
            QuantType::Q5_K => 176 * self.g,
            QuantType::Q6_K if self.narrow6() => 212 * self.g,
            QuantType::Q6_K => 276 * self.g,
            _ => panic!("no packed k-quant layout"),
        }
    }
    /// Whether Q6_K values are stored as nibbles and 2-bit planes (16-row
    /// groups) rather than as whole bytes (8-row groups).
    const fn narrow6(self) -> bool {
        self.g == 16
    }
    /// Q6_K value `v` (0..256) of row `r`: (byte offset, shift) of its
    /// nibble, then of its two high bits. Narrow layout: for m in 0..16, three
    /// vectors: nibbles of values 4m..4m+3 (low) and 128+4m.. (high), of
    /// 64+4m.. and 192+4m.., then the high bits of the four runs (bits 0-1,
    /// 2-3, 4-5, 6-7 for 4m.., 64+4m.., 128+4m.., 192+4m..): a kernel reads
    /// them front to back.
    fn q6k_at(self, v: usize, r: usize) -> ((usize, u32), (usize, u32)) {
        let (m, i, run) = ((v % 64) / 4, v % 4, v / 64);
        let at = |slot: usize| self.qs(QuantType::Q6_K) + (3 * m + slot) * 4 * self.g + 4 * r + i;
        ((at(run % 2), 4 * (run / 2) as u32), (at(2), 2 * run as u32))
    }
    /// Q6_K value `v` (q + 32, 0..64) of row `r` in super-block `sb`.
    fn q6k_get(self, sb: &[u8], v: usize, r: usize) -> u8 {
        if !self.narrow6() {
            return sb[self.qs(QuantType::Q6_K) + self.entry(v, r)];
        }
        let ((n, ns), (h, hs)) = self.q6k_at(v, r);
        ((sb[n] >> ns) & 0xf) | (((sb[h] >> hs) & 3) << 4)
    }
    /// Stores `q6k_get`'s value (into zeroed bytes).
    fn q6k_put(self, sb: &mut [u8], v: usize, r: usize, q: u8) {
        if !self.narrow6() {
            sb[self.qs(QuantType::Q6_K) + self.entry(v, r)] = q;
            return;
        }
        let ((n, ns), (h, hs)) = self.q6k_at(v, r);
        sb[n] |= (q & 0xf) << ns;
        sb[h] |= (q >> 4) << hs;
    }

    /// Offset of row `r`'s entry `j` in a table (or quant byte `j` in the
    /// quant vectors): 4 bytes of each row per vector.
    #[inline(always)]
    const fn entry(self, j: usize, r: usize) -> usize {
        4 * self.g * (j / 4) + 4 * r + j % 4
    }
}

/// Inverse of `q6k_values` into the first 192 bytes of a block.
fn q6k_store(q: &[u8; QK_K], b: &mut [u8]) {
    for n in 0..2 {
        for i in 0..32 {
            let v = |k: usize| q[128 * n + 32 * k + i];
            b[64 * n + i] = (v(0) & 0xf) | ((v(2) & 0xf) << 4);
            b[64 * n + 32 + i] = (v(1) & 0xf) | ((v(3) & 0xf) << 4);
            b[128 + 32 * n + i] =
                (v(0) >> 4) | ((v(1) >> 4) << 2) | ((v(2) >> 4) << 4) | ((v(3) >> 4) << 6);
        }
    }
}

/// Packs one group: `rows` are its rows in ggml's format (`nb` blocks each).
pub(crate) fn pack_group(t: QuantType, rows: &[&[u8]], nb: usize, dst: &mut [u8]) {
    let l = Layout { g: rows.len() };
    let (bb, sbb) = (t.block_bytes(), l.superblock_bytes(t));
    for b in 0..nb {
        let sb = &mut dst[b * sbb..(b + 1) * sbb];
        for (r, row) in rows.iter().enumerate() {
            let blk = &row[b * bb..(b + 1) * bb];
            sb[l.d() + 2 * r..l.d() + 2 * r + 2].copy_from_slice(if t == QuantType::Q6_K {
                &blk[208..210]
            } else {
                &blk[0..2]
            });
            match t {
                QuantType::Q4_K | QuantType::Q5_K => {
                    sb[l.dmin() + 2 * r..l.dmin() + 2 * r + 2].copy_from_slice(&blk[2..4]);
                    for (i, &b) in blk[4..16].iter().enumerate() {
                        sb[l.scales() + l.entry(i, r)] = b;
                    }
                    let qs_at = if t == QuantType::Q5_K { 48 } else { 16 };
                    for (i, &q) in blk[qs_at..qs_at + 128].iter().enumerate() {
                        sb[l.qs(t) + l.entry(i, r)] = q;
                    }
                    if t == QuantType::Q5_K {
                        for (i, &h) in blk[16..48].iter().enumerate() {
                            sb[l.highs() + l.entry(i, r)] = h;
                        }
                    }
                }
                QuantType::Q6_K => {
                    for j in 0..16 {
                        sb[l.scales() + l.entry(j, r)] = blk[192 + j];
                    }
                    for (i, &q) in q6k_values(blk).iter().enumerate() {
                        l.q6k_put(sb, i, r, q);
                    }
                }
                _ => unreachable!(),
            }
        }
    }
}

/// Row `r` of a packed group of `g` rows, back in ggml's format (`out`: `nb` blocks).
pub(crate) fn unpack_row(t: QuantType, g: usize, grp: &[u8], r: usize, out: &mut [u8]) {
    let l = Layout { g };
    let (bb, sbb) = (t.block_bytes(), l.superblock_bytes(t));
    for (b, blk) in out.chunks_exact_mut(bb).enumerate() {
        let sb = &grp[b * sbb..(b + 1) * sbb];
        let d = &sb[l.d() + 2 * r..l.d() + 2 * r + 2];
        match t {
            QuantType::Q4_K | QuantType::Q5_K => {
                blk[0..2].copy_from_slice(d);
                blk[2..4].copy_from_slice(&sb[l.dmin() + 2 * r..l.dmin() + 2 * r + 2]);
                for i in 0..12 {
                    blk[4 + i] = sb[l.scales() + l.entry(i, r)];
                }
                let qs_at = if t == QuantType::Q5_K { 48 } else { 16 };
                for i in 0..128 {
                    blk[qs_at + i] = sb[l.qs(t) + l.entry(i, r)];
                }
                if t == QuantType::Q5_K {
                    for i in 0..32 {
                        blk[16 + i] = sb[l.highs() + l.entry(i, r)];
                    }
                }
            }
            QuantType::Q6_K => {
                blk[208..210].copy_from_slice(d);
                for j in 0..16 {
                    blk[192 + j] = sb[l.scales() + l.entry(j, r)];
                }
                let q: [u8; QK_K] = std::array::from_fn(|i| l.q6k_get(sb, i, r));
                q6k_store(&q, blk);
            }
            _ => unreachable!(),
        }
    }
}

/// One group of `g` rows against `N` tokens' Q8_K activations (`nb`
/// super-blocks each): writes `out[k * stride + r]` for token k and the
/// group's row r.
///
/// # Safety
/// `out` must be valid for those writes; `k` one that this CPU runs, on a
/// group in its layout (`g` 8 for AVX2, 16 for VNNI).
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn group_dot<const N: usize>(
    t: QuantType,
    g: usize,
    grp: &[u8],
    nb: usize,
    xs: [&[BlockQ8K]; N],
    out: *mut f32,
    stride: usize,
    k: Kernels,
    rounding: Rounding,
) {
    debug_assert!(
        xs.iter().all(|x| x.len() == nb) && grp.len() == nb * Layout { g }.superblock_bytes(t)
    );
    #[cfg(target_arch = "x86_64")]
    if k != Kernels::Plain {
        let p = grp.as_ptr();
        if t != QuantType::Q4_K && rounding == Rounding::Lanes {
            // llama.cpp's per-row dot products: one token at a time.
            for (i, x) in xs.iter().enumerate() {
                let o = out.add(i * stride);
                match (t, k) {
                    (QuantType::Q5_K, Kernels::Avx2) => avx2::group_q5k_lanes(p, nb, x, o),
                    (QuantType::Q6_K, Kernels::Avx2) => avx2::group_q6k_lanes(p, nb, x, o),
                    (QuantType::Q5_K, _) => avx512::group_q5k_lanes(p, nb, x, o),
                    (QuantType::Q6_K, _) => avx512::group_q6k_lanes(p, nb, x, o),
                    _ => unreachable!("{t:?} has no packed k-quant layout"),
                }
            }
            return;
        }
        match (t, k) {
            (QuantType::Q4_K, Kernels::Avx2) => {
                avx2::group_q45k::<N, false>(p, nb, xs, out, stride)
            }
            (QuantType::Q5_K, Kernels::Avx2) => avx2::group_q45k::<N, true>(p, nb, xs, out, stride),
            (QuantType::Q6_K, Kernels::Avx2) => avx2::group_q6k::<N>(p, nb, xs, out, stride),
            (QuantType::Q4_K, _) => avx512::group_q45k::<N, false>(p, nb, xs, out, stride),
            (QuantType::Q5_K, _) => avx512::group_q45k::<N, true>(p, nb, xs, out, stride),
            (QuantType::Q6_K, _) => avx512::group_q6k::<N>(p, nb, xs, out, stride),
            _ => unreachable!("{t:?} has no packed k-quant layout"),
        }
        return;
    }
    let _ = k;
    for (k, x) in xs.iter().enumerate() {
        for r in 0..g {
            *out.add(k * stride + r) = row_dot_scalar(t, g, grp, r, x, per_pair_sums(N), rounding);
        }
    }
}

/// Whether a Q4_K kernel for `n` tokens at once rounds per chunk of
/// two sub-blocks (llama.cpp's four-row Q4_K kernel) rather than per
/// super-block (its one-row kernel): our tiles of 4 tokens and the single
/// tokens after them line up with its rows in fours and the rest.
pub(crate) const fn per_pair_sums(n: usize) -> bool {
    n > 1
}

/// The plain group kernel for row `r` of a group of `g` rows, read from the
/// packed bytes: the integer sums of `kquant::dot_q45k` / `dot_q6k`,
/// accumulated as the fast kernels do.
fn row_dot_scalar(
    t: QuantType,
    g: usize,
    grp: &[u8],
    r: usize,
    x: &[BlockQ8K],
    pairs: bool,
    rounding: Rounding,
) -> f32 {
    let l = Layout { g };
    let sbb = l.superblock_bytes(t);
    let (mut out, mut out_min) = (0.0f32, 0.0f32);
    let mut lanes = [0.0f32; 8];
    for (b, y) in x.iter().enumerate() {
        let sb = &grp[b * sbb..(b + 1) * sbb];
        let half = |at: usize| f16::from_le_bytes([sb[at + 2 * r], sb[at + 2 * r + 1]]).to_f32();
        let d = half(l.d());
        let byte = |i: usize| sb[l.qs(t) + l.entry(i, r)];
        // Q4_K/Q5_K: value i of sub-block j (with its fifth bit for Q5_K).
        let q45 = |j: usize, i: usize| {
            let low = (byte(32 * (j / 2) + i) >> (4 * (j % 2))) & 0xf;
            match t {
                QuantType::Q5_K => low | (((sb[l.highs() + l.entry(i, r)] >> j) & 1) << 4),
                _ => low,
            }
        };
        match t {
            QuantType::Q5_K if rounding == Rounding::Lanes => {
                // `kquant::dot_q5k_lanes`'s steps.
                let (mut lane, mut summ) = ([0i32; 8], 0i32);
                for j in 0..8 {
                    let (sc, m) = l.scale_min(sb, j, r);
                    summ += m as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
                    for (k, ln) in lane.iter_mut().enumerate() {
                        let p: i32 = (4 * k..4 * k + 4)
                            .map(|i| q45(j, i) as i32 * y.qs[32 * j + i] as i32)
                            .sum();
                        *ln += sc as i32 * p;
                    }
                }
                for (a, &ln) in lanes.iter_mut().zip(&lane) {
                    *a = (d * y.d).mul_add(ln as f32, *a);
                }
                out_min = (-(half(l.dmin()) * y.d)).mul_add(summ as f32, out_min);
            }
            QuantType::Q4_K | QuantType::Q5_K => {
                let dmin = half(l.dmin());
                let (mut sumi, mut summ) = (0i32, 0i32);
                for j in 0..8 {
                    let (sc, m) = l.scale_min(sb, j, r);
                    let (sc, m) = (sc as i32, m as i32);
                    let mut si = 0i32;
                    for i in 0..32 {
                        si += q45(j, i) as i32 * y.qs[32 * j + i] as i32;
                    }
                    sumi += sc * si;
                    summ += m * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
                    if t == QuantType::Q5_K {
                        if j == 7 {
                            out = kquant::tiled_add(out, d, sumi, dmin, summ, y.d);
                        }
                    } else if (pairs && j % 2 == 1) || j == 7 {
                        out = (d * y.d).mul_add(sumi as f32, out);
                        out_min = (dmin * y.d).mul_add(summ as f32, out_min);
                        (sumi, summ) = (0, 0);
                    }
                }
            }
            QuantType::Q6_K if rounding == Rounding::Lanes => {
                // `kquant::dot_q6k_lanes`'s steps.
                let sc = |j: usize| sb[l.scales() + l.entry(j, r)] as i8 as i32;
                for (m, a) in lanes.iter_mut().enumerate() {
                    let mut lane = 0i32;
                    for c in 0..8 {
                        let p: i32 = (32 * c + 4 * m..32 * c + 4 * m + 4)
                            .map(|v| l.q6k_get(sb, v, r) as i32 * y.qs[v] as i32)
                            .sum();
                        lane += sc(2 * c + m / 4) * p;
                    }
                    lane -= 32
                        * (sc(2 * m) * y.bsums[2 * m] as i32
                            + sc(2 * m + 1) * y.bsums[2 * m + 1] as i32);
                    *a = (d * y.d).mul_add(lane as f32, *a);
                }
            }
            QuantType::Q6_K => {
                let mut sumi = 0i32;
                for j in 0..16 {
                    let sc = sb[l.scales() + l.entry(j, r)] as i8 as i32;
                    let si: i32 = (0..16)
                        .map(|i| {
                            (l.q6k_get(sb, 16 * j + i, r) as i32 - 32) * y.qs[16 * j + i] as i32
                        })
                        .sum();
                    sumi += sc * si;
                }
                out = kquant::tiled_add(out, d, sumi, 0.0, 0, y.d);
            }
            _ => unreachable!(),
        }
    }
    if rounding == Rounding::Lanes {
        match t {
            QuantType::Q5_K => return super::quant::lane_sum(&lanes) + out_min,
            QuantType::Q6_K => return super::quant::lane_sum(&lanes),
            _ => {}
        }
    }
    out - out_min
}

thread_local! {
    static ACTIVATIONS: RefCell<Vec<BlockQ8K>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `x`'s `n_tok` rows quantized to Q8_K (as `quant::matmul`
/// quantizes them), from a buffer reused call to call.
pub(crate) fn with_activations<R>(
    x: &[f32],
    n_tok: usize,
    n_in: usize,
    f: impl FnOnce(&[BlockQ8K]) -> R,
) -> R {
    ACTIVATIONS.with(|cell| {
        let mut buf = cell.borrow_mut();
        let nb = n_in / QK_K;
        if buf.len() < n_tok * nb {
            buf.resize(n_tok * nb, BlockQ8K::default());
        }
        let qx = &mut buf[..n_tok * nb];
        crate::pool::timed(crate::pool::Span::Quantize, 0, || {
            crate::pool::parallel_chunks(qx, nb.max(1), |t, q| {
                kquant::quantize_row_q8k(&x[t * n_in..(t + 1) * n_in], q)
            })
        });
        f(&buf[..n_tok * nb])
    })
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! Activation values are in -127..=127 (our quantizer never makes -128);
    //! the 16-bit sums below rely on it.

    use std::arch::x86_64::*;

    use super::{BlockQ8K, Layout, QuantType};

    const L: Layout = Layout { g: 8 };
    const Q4K_SB: usize = L.superblock_bytes(QuantType::Q4_K);
    const Q5K_SB: usize = L.superblock_bytes(QuantType::Q5_K);
    const Q6K_SB: usize = L.superblock_bytes(QuantType::Q6_K);
    /// Where the quant vectors start: Q4_K, Q5_K, Q6_K.
    const QS: usize = L.qs(QuantType::Q4_K);
    const QS5: usize = L.qs(QuantType::Q5_K);
    const QS6: usize = L.qs(QuantType::Q6_K);

    /// Activation bytes `at..at + 4` in every i32 lane.
    #[inline(always)]
    unsafe fn bcast(y: &BlockQ8K, at: usize) -> __m256i {
        _mm256_set1_epi32((y.qs.as_ptr().add(at) as *const i32).read_unaligned())
    }

    /// `bsums[at]` and `bsums[at + 1]` as the two 16-bit halves of every
    /// i32 lane.
    #[inline(always)]
    unsafe fn bcast_bsums(y: &BlockQ8K, at: usize) -> __m256i {
        _mm256_set1_epi32((y.bsums.as_ptr().add(at) as *const i32).read_unaligned())
    }

    /// `kquant::tiled_add` for 8 rows (`mins`: Q5_K's dmin and min sums).
    #[inline(always)]
    pub(super) unsafe fn tiled_add(
        acc: __m256,
        d: __m256,
        sumi: __m256i,
        mins: Option<(__m256, __m256i)>,
        dy: f32,
    ) -> __m256 {
        let mut r = _mm256_mul_ps(_mm256_cvtepi32_ps(sumi), d);
        if let Some((dmin, summ)) = mins {
            r = _mm256_fnmadd_ps(dmin, _mm256_cvtepi32_ps(summ), r);
        }
        _mm256_fmadd_ps(r, _mm256_set1_ps(dy), acc)
    }

    /// How far ahead the weights are fetched (see `packed`).
    const PREFETCH_BYTES: usize = 1024;

    #[inline(always)]
    unsafe fn prefetch<const LINES: usize>(p: *const u8) {
        for l in 0..LINES {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES + 64 * l) as *const i8);
        }
    }

    /// In-lane shuffle masks over a scale table vector (`Layout::entry`):
    /// for entry `jj` (0..4) of the vector, i32 lane r of the result gets
    /// row r's entry as the i16 pair
    /// - `DUP[jj]`: (e, e), zero-extended;
    /// - `HIGH[jj]`: (e << 8, e << 8) (an arithmetic shift by 8 then gives
    ///   the signed entry in both halves);
    /// - `PAIR[p]`: (e_{2p} << 8, e_{2p+1} << 8).
    ///
    /// (kinds 3 and 4: `avx512`'s `ONE` and `TOP`.)
    pub(super) const fn masks(kind: usize) -> [[u8; 32]; 4] {
        let mut m = [[0x80u8; 32]; 4];
        let mut jj = 0;
        while jj < 4 {
            let mut i = 0;
            while i < 32 {
                let rl = (i % 16) / 4;
                let (e0, e1) = match kind {
                    0 | 1 | 3 | 4 => (jj, jj),
                    _ => (2 * (jj % 2), 2 * (jj % 2) + 1),
                };
                let (lo, hi) = ((4 * rl + e0) as u8, (4 * rl + e1) as u8);
                if kind == 3 {
                    m[jj][i] = lo;
                } else if kind == 4 {
                    m[jj][i + 3] = lo;
                } else if kind == 0 {
                    m[jj][i] = lo;
                    m[jj][i + 2] = hi;
                } else {
                    m[jj][i + 1] = lo;
                    m[jj][i + 3] = hi;
                }
                i += 4;
            }
            jj += 1;
        }
        m
    }
    static DUP: [[u8; 32]; 4] = masks(0);
    static HIGH: [[u8; 32]; 4] = masks(1);
    static PAIR: [[u8; 32]; 4] = masks(2);

    #[inline(always)]
    unsafe fn shuffle(table: __m256i, mask: &[u8; 32]) -> __m256i {
        _mm256_shuffle_epi8(table, _mm256_loadu_si256(mask.as_ptr() as *const __m256i))
    }

    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        _mm256_load_si256(p as *const __m256i)
    }

    /// Q4_K/Q5_K: the rows' scales and mins, entries 0..3 and 4..7 (each
    /// row's four in its i32 lane, `Layout::entry`), from the three vectors
    /// of ggml's packed bytes at `p` (`kquant::scale_min`, four rows' bytes
    /// at once: the shifts cross bytes only into bits the masks clear).
    #[inline(always)]
    unsafe fn unpack_scales_mins(p: *const u8) -> ([__m256i; 2], [__m256i; 2]) {
        let (w0, w1, w2) = (load(p), load(p.add(32)), load(p.add(64)));
        let (low6, low4, top2) = (
            _mm256_set1_epi8(0x3f),
            _mm256_set1_epi8(0x0f),
            _mm256_set1_epi8(0x30),
        );
        let and = |a, b| _mm256_and_si256(a, b);
        let high_bits = |w| and(_mm256_srli_epi32::<2>(w), top2);
        (
            [and(w0, low6), _mm256_or_si256(and(w2, low4), high_bits(w0))],
            [
                and(w1, low6),
                _mm256_or_si256(and(_mm256_srli_epi32::<4>(w2), low4), high_bits(w1)),
            ],
        )
    }

    /// Bit `J` of each byte moved to bit 4 (the other bits cleared first).
    #[inline(always)]
    unsafe fn fifth_bit<const J: usize>(h: __m256i) -> __m256i {
        let h = _mm256_and_si256(h, _mm256_set1_epi8(1 << J));
        match J {
            0 => _mm256_slli_epi16::<4>(h),
            1 => _mm256_slli_epi16::<3>(h),
            2 => _mm256_slli_epi16::<2>(h),
            3 => _mm256_slli_epi16::<1>(h),
            4 => h,
            5 => _mm256_srli_epi16::<1>(h),
            6 => _mm256_srli_epi16::<2>(h),
            _ => _mm256_srli_epi16::<3>(h),
        }
    }

    /// The values of sub-block `J`: nibbles (and, for Q5_K, fifth bits)
    /// times the 4-byte activation runs, summed per token in 16 bits and
    /// then times the scales `sc` into `sumi`. A 16-bit lane adds products
    /// of at most 15 * 127 (Q4_K: 16 of them, at most 30480) or 31 * 127
    /// (Q5_K: 8 of them, at most 31496, then a fresh sum).
    #[inline(always)]
    unsafe fn sub_block<const N: usize, const FIVE: bool, const J: usize>(
        sb: *const u8,
        ys: &[&BlockQ8K; N],
        sc: __m256i,
        sumi: &mut [__m256i; N],
    ) {
        let m4 = _mm256_set1_epi8(0x0f);
        let chunk = sb.add(if FIVE { QS5 } else { QS } + 256 * (J / 2));
        if J % 2 == 0 {
            prefetch::<4>(chunk);
        }
        let unpack = |k: usize| {
            let v = load(chunk.add(32 * k));
            let v = if J % 2 == 0 {
                _mm256_and_si256(v, m4)
            } else {
                _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4)
            };
            if FIVE {
                _mm256_or_si256(v, fifth_bit::<J>(load(sb.add(L.highs() + 32 * k))))
            } else {
                v
            }
        };
        let halves = if FIVE { 2 } else { 1 };
        if N == 1 {
            // One token: each vector unpacked as it is used.
            for half in 0..halves {
                let mut s = _mm256_setzero_si256();
                for k in 8 / halves * half..8 / halves * (half + 1) {
                    s = _mm256_add_epi16(
                        s,
                        _mm256_maddubs_epi16(unpack(k), bcast(ys[0], 32 * J + 4 * k)),
                    );
                }
                sumi[0] = _mm256_add_epi32(sumi[0], _mm256_madd_epi16(s, sc));
            }
            return;
        }
        // Several tokens: the sub-block's 8 vectors unpacked once, in
        // registers, then each token's sums over them (left to itself, LLVM
        // keeps them on the stack).
        let w: [__m256i; 8] = std::array::from_fn(unpack);
        for t in 0..N {
            for half in 0..halves {
                let mut s = _mm256_setzero_si256();
                for k in 8 / halves * half..8 / halves * (half + 1) {
                    s = _mm256_add_epi16(
                        s,
                        _mm256_maddubs_epi16(w[k], bcast(ys[t], 32 * J + 4 * k)),
                    );
                }
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(s, sc));
            }
        }
    }

    /// Q4_K (FIVE false) or Q5_K group of 8 rows against `N` tokens, with
    /// `avx512::group_q45k`'s roundings.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn group_q45k<const N: usize, const FIVE: bool>(
        g: *const u8,
        nb: usize,
        xs: [&[BlockQ8K]; N],
        out: *mut f32,
        stride: usize,
    ) {
        let pairs = !FIVE && super::per_pair_sums(N);
        let sbb = if FIVE { Q5K_SB } else { Q4K_SB };
        let (mut acc, mut acc_min) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
        for b in 0..nb {
            let sb = g.add(b * sbb);
            prefetch::<3>(sb);
            if FIVE {
                prefetch::<4>(sb.add(L.highs()));
            }
            let ys: [&BlockQ8K; N] = std::array::from_fn(|t| xs[t].get_unchecked(b));
            let d = _mm256_cvtph_ps(_mm_load_si128(sb.add(L.d()) as *const __m128i));
            let dmin = _mm256_cvtph_ps(_mm_load_si128(sb.add(L.dmin()) as *const __m128i));
            let scale: [__m256; N] =
                std::array::from_fn(|t| _mm256_mul_ps(d, _mm256_set1_ps(ys[t].d)));
            let scale_min: [__m256; N] =
                std::array::from_fn(|t| _mm256_mul_ps(dmin, _mm256_set1_ps(ys[t].d)));
            let (scales, mins) = unpack_scales_mins(sb.add(L.scales()));
            let sc = |j: usize| shuffle(scales[j / 4], &DUP[j % 4]);
            let mut sumi = [_mm256_setzero_si256(); N];
            let mut summ = [_mm256_setzero_si256(); N];
            // After sub-blocks 2c and 2c + 1: their min terms, and (`pairs`)
            // both sums into the float accumulators.
            let mut pair_done = |c: usize, sumi: &mut [__m256i; N], summ: &mut [__m256i; N]| {
                for j in [2 * c, 2 * c + 1] {
                    let m = shuffle(mins[j / 4], &DUP[j % 4]);
                    for t in 0..N {
                        summ[t] = _mm256_add_epi32(
                            summ[t],
                            _mm256_madd_epi16(m, bcast_bsums(ys[t], 2 * j)),
                        );
                    }
                }
                if FIVE && c == 3 {
                    for t in 0..N {
                        acc[t] = tiled_add(acc[t], d, sumi[t], Some((dmin, summ[t])), ys[t].d);
                    }
                } else if pairs || c == 3 {
                    for t in 0..N {
                        acc[t] = _mm256_fmadd_ps(scale[t], _mm256_cvtepi32_ps(sumi[t]), acc[t]);
                        acc_min[t] =
                            _mm256_fmadd_ps(scale_min[t], _mm256_cvtepi32_ps(summ[t]), acc_min[t]);
                    }
                    *sumi = [_mm256_setzero_si256(); N];
                    *summ = [_mm256_setzero_si256(); N];
                }
            };
            sub_block::<N, FIVE, 0>(sb, &ys, sc(0), &mut sumi);
            sub_block::<N, FIVE, 1>(sb, &ys, sc(1), &mut sumi);
            pair_done(0, &mut sumi, &mut summ);
            sub_block::<N, FIVE, 2>(sb, &ys, sc(2), &mut sumi);
            sub_block::<N, FIVE, 3>(sb, &ys, sc(3), &mut sumi);
            pair_done(1, &mut sumi, &mut summ);
            sub_block::<N, FIVE, 4>(sb, &ys, sc(4), &mut sumi);
            sub_block::<N, FIVE, 5>(sb, &ys, sc(5), &mut sumi);
            pair_done(2, &mut sumi, &mut summ);
            sub_block::<N, FIVE, 6>(sb, &ys, sc(6), &mut sumi);
            sub_block::<N, FIVE, 7>(sb, &ys, sc(7), &mut sumi);
            pair_done(3, &mut sumi, &mut summ);
        }
        for t in 0..N {
            _mm256_storeu_ps(out.add(t * stride), _mm256_sub_ps(acc[t], acc_min[t]));
        }
    }

    /// Q6_K group of 8 rows against `N` tokens.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn group_q6k<const N: usize>(
        g: *const u8,
        nb: usize,
        xs: [&[BlockQ8K]; N],
        out: *mut f32,
        stride: usize,
    ) {
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            let sb = g.add(b * Q6K_SB);
            prefetch::<3>(sb);
            let ys: [&BlockQ8K; N] = std::array::from_fn(|t| xs[t].get_unchecked(b));
            let q = sb.add(QS6);
            let tables = [0, 1, 2, 3].map(|v| load(sb.add(L.scales() + 32 * v)));
            // The stored values are q + 32: take off 32 * sum_g sc_g * bsums[g].
            let mut corr = [_mm256_setzero_si256(); N];
            for p in 0..8 {
                let sc = _mm256_srai_epi16::<8>(shuffle(tables[p / 2], &PAIR[p % 2]));
                for t in 0..N {
                    corr[t] =
                        _mm256_add_epi32(corr[t], _mm256_madd_epi16(sc, bcast_bsums(ys[t], 2 * p)));
                }
            }
            let mut sumi: [__m256i; N] = std::array::from_fn(|t| {
                _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(corr[t]))
            });
            for gi in 0..16 {
                let v = q.add(128 * gi);
                if gi % 2 == 0 {
                    prefetch::<4>(v);
                }
                let w = [0, 1, 2, 3].map(|k| load(v.add(32 * k)));
                let sc = _mm256_srai_epi16::<8>(shuffle(tables[gi / 4], &HIGH[gi % 4]));
                for t in 0..N {
                    // Two maddubs per 16-bit sum: four products of at most
                    // 63 * 127, at most 32004.
                    let at = 16 * gi;
                    let p01 = _mm256_add_epi16(
                        _mm256_maddubs_epi16(w[0], bcast(ys[t], at)),
                        _mm256_maddubs_epi16(w[1], bcast(ys[t], at + 4)),
                    );
                    let p23 = _mm256_add_epi16(
                        _mm256_maddubs_epi16(w[2], bcast(ys[t], at + 8)),
                        _mm256_maddubs_epi16(w[3], bcast(ys[t], at + 12)),
                    );
                    let p =
                        _mm256_add_epi32(_mm256_madd_epi16(p01, sc), _mm256_madd_epi16(p23, sc));
                    sumi[t] = _mm256_add_epi32(sumi[t], p);
                }
            }
            let d = _mm256_cvtph_ps(_mm_load_si128(sb.add(L.d()) as *const __m128i));
            for t in 0..N {
                acc[t] = tiled_add(acc[t], d, sumi[t], None, ys[t].d);
            }
        }
        for (t, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(t * stride), *a);
        }
    }

    /// Q5_K group of 8 rows against one token in `Rounding::Lanes`
    /// (`kquant::dot_q5k_lanes`'s steps): lane k of a row holds values
    /// 4k..4k+3 of every sub-block, each sub-block's products summed in
    /// pairs (at most 2 * 31 * 127) and times its scale straight away.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn group_q5k_lanes(g: *const u8, nb: usize, x: &[BlockQ8K], out: *mut f32) {
        let (m4, one) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(1));
        let (mut acc, mut mins) = ([_mm256_setzero_ps(); 8], _mm256_setzero_ps());
        for b in 0..nb {
            let sb = g.add(b * Q5K_SB);
            prefetch::<3>(sb);
            prefetch::<4>(sb.add(L.highs()));
            let y = x.get_unchecked(b);
            let d = _mm256_cvtph_ps(_mm_load_si128(sb.add(L.d()) as *const __m128i));
            let dmin = _mm256_cvtph_ps(_mm_load_si128(sb.add(L.dmin()) as *const __m128i));
            let (scales, mns) = unpack_scales_mins(sb.add(L.scales()));
            let mut lane = [_mm256_setzero_si256(); 8];
            let mut summ = _mm256_setzero_si256();
            for j in 0..8 {
                let chunk = sb.add(QS5 + 256 * (j / 2));
                if j % 2 == 0 {
                    prefetch::<4>(chunk);
                }
                let sc = shuffle(scales[j / 4], &DUP[j % 4]);
                let m = shuffle(mns[j / 4], &DUP[j % 4]);
                summ = _mm256_add_epi32(summ, _mm256_madd_epi16(m, bcast_bsums(y, 2 * j)));
                let shift = _mm_cvtsi32_si128(j as i32);
                for (k, ln) in lane.iter_mut().enumerate() {
                    let v = load(chunk.add(32 * k));
                    let low = if j % 2 == 0 {
                        _mm256_and_si256(v, m4)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4)
                    };
                    let h = _mm256_srl_epi16(load(sb.add(L.highs() + 32 * k)), shift);
                    let q = _mm256_or_si256(low, _mm256_slli_epi16::<4>(_mm256_and_si256(h, one)));
                    let p = _mm256_maddubs_epi16(q, bcast(y, 32 * j + 4 * k));
                    *ln = _mm256_add_epi32(*ln, _mm256_madd_epi16(p, sc));
                }
            }
            let dd = _mm256_mul_ps(d, _mm256_set1_ps(y.d));
            for (a, ln) in acc.iter_mut().zip(lane) {
                *a = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(ln), *a);
            }
            let dm = _mm256_mul_ps(dmin, _mm256_set1_ps(y.d));
            mins = _mm256_fnmadd_ps(dm, _mm256_cvtepi32_ps(summ), mins);
        }
        let add = |x, y| _mm256_add_ps(x, y);
        let r = add(
            add(add(acc[4], acc[0]), add(acc[6], acc[2])),
            add(add(acc[5], acc[1]), add(acc[7], acc[3])),
        );
        _mm256_storeu_ps(out, add(r, mins));
    }

    /// Q6_K group of 8 rows against one token in `Rounding::Lanes`
    /// (`kquant::dot_q6k_lanes`'s steps): eight lane accumulators per row.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn group_q6k_lanes(g: *const u8, nb: usize, x: &[BlockQ8K], out: *mut f32) {
        let mut acc = [_mm256_setzero_ps(); 8];
        for b in 0..nb {
            let sb = g.add(b * Q6K_SB);
            prefetch::<3>(sb);
            let y = x.get_unchecked(b);
            let q = sb.add(QS6);
            let tables = [0, 1, 2, 3].map(|v| load(sb.add(L.scales() + 32 * v)));
            // Lane m starts at -32 * (scale * bsum) of groups 2m and 2m+1.
            let mut lane: [__m256i; 8] = std::array::from_fn(|m| {
                let sc = _mm256_srai_epi16::<8>(shuffle(tables[m / 2], &PAIR[m % 2]));
                let corr = _mm256_madd_epi16(sc, bcast_bsums(y, 2 * m));
                _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(corr))
            });
            // Values 16gi + 4k..: lane 4 * (gi % 2) + k, times group gi's scale.
            for gi in 0..16 {
                let v = q.add(128 * gi);
                if gi % 2 == 0 {
                    prefetch::<4>(v);
                }
                let sc = _mm256_srai_epi16::<8>(shuffle(tables[gi / 4], &HIGH[gi % 4]));
                for k in 0..4 {
                    let p = _mm256_maddubs_epi16(load(v.add(32 * k)), bcast(y, 16 * gi + 4 * k));
                    let m = 4 * (gi % 2) + k;
                    lane[m] = _mm256_add_epi32(lane[m], _mm256_madd_epi16(p, sc));
                }
            }
            let d = _mm256_mul_ps(
                _mm256_cvtph_ps(_mm_load_si128(sb.add(L.d()) as *const __m128i)),
                _mm256_set1_ps(y.d),
            );
            for (a, l) in acc.iter_mut().zip(lane) {
                *a = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(l), *a);
            }
        }
        let add = |x, y| _mm256_add_ps(x, y);
        let r = add(
            add(add(acc[4], acc[0]), add(acc[6], acc[2])),
            add(add(acc[5], acc[1]), add(acc[7], acc[3])),
        );
        _mm256_storeu_ps(out, r);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The 16-row groups: one 512-bit vector holds 4 bytes of each of the 16
    //! rows, and `vpdpbusd` adds the byte products straight into each
    //! token's exact i32 sums (half the instructions per weight byte of the
    //! AVX2 kernels' 16-bit sums over 8 rows), then times the scales. No
    //! software prefetch: with it these kernels read memory no faster.

    use std::arch::x86_64::*;

    use super::avx2::masks;
    use super::{BlockQ8K, Layout, QuantType};

    const L: Layout = Layout { g: 16 };
    const Q4K_SB: usize = L.superblock_bytes(QuantType::Q4_K);
    const Q5K_SB: usize = L.superblock_bytes(QuantType::Q5_K);
    const Q6K_SB: usize = L.superblock_bytes(QuantType::Q6_K);
    /// Where the quant vectors start: Q4_K, Q5_K, Q6_K.
    const QS: usize = L.qs(QuantType::Q4_K);
    const QS5: usize = L.qs(QuantType::Q5_K);
    const QS6: usize = L.qs(QuantType::Q6_K);

    /// In-lane byte shuffles over a scale table vector (`Layout::entry`; each
    /// 128-bit lane holds 4 rows): for entry `jj` (0..4) of the vector, i32
    /// lane r gets row r's entry
    /// - `ONE[jj]`: zero-extended;
    /// - `TOP[jj]`: in the top byte (an arithmetic shift by 24 gives it signed);
    /// - `PAIR[p]`: entries 2p and 2p+1 as the i16 pair (e << 8, e' << 8).
    ///
    /// The AVX2 masks' first 128-bit lane, repeated in every lane.
    static ONE: [[u8; 32]; 4] = masks(3);
    static TOP: [[u8; 32]; 4] = masks(4);
    static PAIR: [[u8; 32]; 4] = masks(2);
    /// Entries jj as the i16 pair (e << 8, e << 8).
    static HIGH: [[u8; 32]; 4] = masks(1);
    /// Zero-extended entries jj, as the i16 pair (e, e).
    static DUP: [[u8; 32]; 4] = masks(0);

    #[inline(always)]
    unsafe fn shuffle(table: __m512i, mask: &[u8; 32]) -> __m512i {
        let m = _mm512_broadcast_i32x4(_mm_loadu_si128(mask.as_ptr() as *const __m128i));
        _mm512_shuffle_epi8(table, m)
    }

    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m512i {
        _mm512_load_si512(p as *const __m512i)
    }

    /// `avx2::unpack_scales_mins` for 16 rows.
    #[inline(always)]
    unsafe fn unpack_scales_mins(p: *const u8) -> ([__m512i; 2], [__m512i; 2]) {
        let (w0, w1, w2) = (load(p), load(p.add(64)), load(p.add(128)));
        let (low6, low4, top2) = (
            _mm512_set1_epi8(0x3f),
            _mm512_set1_epi8(0x0f),
            _mm512_set1_epi8(0x30),
        );
        let and = |a, b| _mm512_and_si512(a, b);
        let high_bits = |w| and(_mm512_srli_epi32::<2>(w), top2);
        (
            [and(w0, low6), _mm512_or_si512(and(w2, low4), high_bits(w0))],
            [
                and(w1, low6),
                _mm512_or_si512(and(_mm512_srli_epi32::<4>(w2), low4), high_bits(w1)),
            ],
        )
    }

    /// Activation bytes `at..at + 4` in every i32 lane.
    #[inline(always)]
    unsafe fn bcast(y: &BlockQ8K, at: usize) -> __m512i {
        _mm512_set1_epi32((y.qs.as_ptr().add(at) as *const i32).read_unaligned())
    }

    /// `bsums[at]` and `bsums[at + 1]` as the two 16-bit halves of every i32 lane.
    #[inline(always)]
    unsafe fn bcast_bsums(y: &BlockQ8K, at: usize) -> __m512i {
        _mm512_set1_epi32((y.bsums.as_ptr().add(at) as *const i32).read_unaligned())
    }

    /// `kquant::tiled_add` for 16 rows (`mins`: Q5_K's dmin and min sums).
    #[inline(always)]
    unsafe fn tiled_add(
        acc: __m512,
        d: __m512,
        sumi: __m512i,
        mins: Option<(__m512, __m512i)>,
        dy: f32,
    ) -> __m512 {
        let mut r = _mm512_mul_ps(_mm512_cvtepi32_ps(sumi), d);
        if let Some((dmin, summ)) = mins {
            r = _mm512_fnmadd_ps(dmin, _mm512_cvtepi32_ps(summ), r);
        }
        _mm512_fmadd_ps(r, _mm512_set1_ps(dy), acc)
    }

    /// The 16 rows' f16 values at `p` as floats.
    #[inline(always)]
    unsafe fn halves(p: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_load_si256(p as *const __m256i))
    }

    /// Q4_K (FIVE false) or Q5_K group of 16 rows against `N` tokens.
    ///
    /// A chunk's 8 vectors hold two sub-blocks (low and high nibbles); each
    /// token's exact i32 sum of value * activation per sub-block, times the
    /// sub-block's scales. One token: summed over the super-block, then one
    /// fused multiply-add (and one for the mins); several: one per chunk, as
    /// llama.cpp's one-row and four-row Q4_K kernels do (`PAIRS`). The chunk
    /// loop is kept a loop (its count hidden from the optimizer): fully
    /// unrolled, LLVM hoists all of a super-block's loads to its top, and
    /// the kernel then reads memory markedly slower.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn group_q45k<const N: usize, const FIVE: bool>(
        g: *const u8,
        nb: usize,
        xs: [&[BlockQ8K]; N],
        out: *mut f32,
        stride: usize,
    ) {
        let pairs = !FIVE && super::per_pair_sums(N);
        let sbb = if FIVE { Q5K_SB } else { Q4K_SB };
        let (m4, one) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(1));
        let chunks = std::hint::black_box(4usize);
        let (mut acc, mut acc_min) = ([_mm512_setzero_ps(); N], [_mm512_setzero_ps(); N]);
        for b in 0..nb {
            let sb = g.add(b * sbb);
            let ys: [&BlockQ8K; N] = std::array::from_fn(|t| xs[t].get_unchecked(b));
            let (d, dmin) = (halves(sb.add(L.d())), halves(sb.add(L.dmin())));
            let scale: [__m512; N] =
                std::array::from_fn(|t| _mm512_mul_ps(d, _mm512_set1_ps(ys[t].d)));
            let scale_min: [__m512; N] =
                std::array::from_fn(|t| _mm512_mul_ps(dmin, _mm512_set1_ps(ys[t].d)));
            let (mut sumi, mut summ) = ([_mm512_setzero_si512(); N], [_mm512_setzero_si512(); N]);
            let tables = unpack_scales_mins(sb.add(L.scales()));
            for c in 0..chunks {
                let chunk = sb.add(if FIVE { QS5 } else { QS } + 512 * c);
                let v: [__m512i; 8] = std::array::from_fn(|k| load(chunk.add(64 * k)));
                let mut lo: [__m512i; 8] = std::array::from_fn(|k| _mm512_and_si512(v[k], m4));
                let mut hi: [__m512i; 8] =
                    std::array::from_fn(|k| _mm512_and_si512(_mm512_srli_epi16::<4>(v[k]), m4));
                if FIVE {
                    // Bits 2c and 2c+1 of the fifth-bit bytes, moved to bit 4.
                    let (s0, s1) = (
                        _mm_cvtsi32_si128(2 * c as i32),
                        _mm_cvtsi32_si128(2 * c as i32 + 1),
                    );
                    for k in 0..8 {
                        let h = load(sb.add(L.highs() + 64 * k));
                        let bit = |s| {
                            _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srl_epi16(h, s), one))
                        };
                        lo[k] = _mm512_or_si512(lo[k], bit(s0));
                        hi[k] = _mm512_or_si512(hi[k], bit(s1));
                    }
                }
                let (table, mins) = (tables.0[c / 2], tables.1[c / 2]);
                let sc_lo = shuffle(table, &ONE[2 * (c % 2)]);
                let sc_hi = shuffle(table, &ONE[2 * (c % 2) + 1]);
                // Min terms of the chunk's two sub-blocks: m_j * (bsums[2j] + bsums[2j+1]).
                let (m_lo, m_hi) = (
                    shuffle(mins, &DUP[2 * (c % 2)]),
                    shuffle(mins, &DUP[2 * (c % 2) + 1]),
                );
                for t in 0..N {
                    let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                    for k in 0..8 {
                        s0 = _mm512_dpbusd_epi32(s0, lo[k], bcast(ys[t], 64 * c + 4 * k));
                        s1 = _mm512_dpbusd_epi32(s1, hi[k], bcast(ys[t], 64 * c + 32 + 4 * k));
                    }
                    let s = _mm512_add_epi32(
                        _mm512_mullo_epi32(s0, sc_lo),
                        _mm512_mullo_epi32(s1, sc_hi),
                    );
                    let m = _mm512_dpwssd_epi32(
                        _mm512_madd_epi16(m_lo, bcast_bsums(ys[t], 4 * c)),
                        m_hi,
                        bcast_bsums(ys[t], 4 * c + 2),
                    );
                    if pairs {
                        acc[t] = _mm512_fmadd_ps(scale[t], _mm512_cvtepi32_ps(s), acc[t]);
                        acc_min[t] =
                            _mm512_fmadd_ps(scale_min[t], _mm512_cvtepi32_ps(m), acc_min[t]);
                    } else {
                        sumi[t] = _mm512_add_epi32(sumi[t], s);
                        summ[t] = _mm512_add_epi32(summ[t], m);
                    }
                }
            }
            if FIVE {
                for t in 0..N {
                    acc[t] = tiled_add(acc[t], d, sumi[t], Some((dmin, summ[t])), ys[t].d);
                }
            } else if !pairs {
                for t in 0..N {
                    acc[t] = _mm512_fmadd_ps(scale[t], _mm512_cvtepi32_ps(sumi[t]), acc[t]);
                    acc_min[t] =
                        _mm512_fmadd_ps(scale_min[t], _mm512_cvtepi32_ps(summ[t]), acc_min[t]);
                }
            }
        }
        for t in 0..N {
            _mm512_storeu_ps(out.add(t * stride), _mm512_sub_ps(acc[t], acc_min[t]));
        }
    }

    /// The 4-value groups `4m`, `64 + 4m`, `128 + 4m` and `192 + 4m` of the
    /// 16 rows (values q + 32, 0..63) from their nibbles and 2-bit planes at
    /// `v` (`192 * m` into the super-block's quants).
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn q6k_runs(v: *const u8) -> [__m512i; 4] {
        let (m4, m30) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
        let (n0, n1, h) = (load(v), load(v.add(64)), load(v.add(128)));
        // nibble | (plane & 0x30) in one `vpternlogd` (0xf8: a | (b & c)).
        let join = |nibble, plane| _mm512_ternarylogic_epi32::<0xf8>(nibble, plane, m30);
        [
            join(_mm512_and_si512(n0, m4), _mm512_slli_epi16::<4>(h)),
            join(_mm512_and_si512(n1, m4), _mm512_slli_epi16::<2>(h)),
            join(_mm512_and_si512(_mm512_srli_epi16::<4>(n0), m4), h),
            join(
                _mm512_and_si512(_mm512_srli_epi16::<4>(n1), m4),
                _mm512_srli_epi16::<2>(h),
            ),
        ]
    }

    /// Q6_K group of 16 rows (nibbles and 2-bit planes) against `N` tokens.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn group_q6k<const N: usize>(
        g: *const u8,
        nb: usize,
        xs: [&[BlockQ8K]; N],
        out: *mut f32,
        stride: usize,
    ) {
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..nb {
            let sb = g.add(b * Q6K_SB);
            let ys: [&BlockQ8K; N] = std::array::from_fn(|t| xs[t].get_unchecked(b));
            let q = sb.add(QS6);
            let tables = [0, 1, 2, 3].map(|v| load(sb.add(L.scales() + 64 * v)));
            // The stored values are q + 32: take off 32 * sum_g sc_g * bsums[g].
            let mut corr = [_mm512_setzero_si512(); N];
            for p in 0..8 {
                let sc = _mm512_srai_epi16::<8>(shuffle(tables[p / 2], &PAIR[p % 2]));
                for t in 0..N {
                    corr[t] = _mm512_dpwssd_epi32(corr[t], sc, bcast_bsums(ys[t], 2 * p));
                }
            }
            let mut sumi: [__m512i; N] = std::array::from_fn(|t| {
                _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<5>(corr[t]))
            });
            // Quarter qq: value groups qq, 4 + qq, 8 + qq, 12 + qq (runs of
            // 4m.., 64 + 4m.., 128 + 4m.., 192 + 4m.. for m in 4qq..4qq+4).
            for qq in 0..4 {
                let mut s = [[_mm512_setzero_si512(); 4]; N];
                for m in 4 * qq..4 * qq + 4 {
                    let runs = q6k_runs(q.add(192 * m));
                    for t in 0..N {
                        for (run, &w) in runs.iter().enumerate() {
                            s[t][run] =
                                _mm512_dpbusd_epi32(s[t][run], w, bcast(ys[t], 64 * run + 4 * m));
                        }
                    }
                }
                // Each group's exact i32 sums times its signed scale.
                let sc: [__m512i; 4] = std::array::from_fn(|run| {
                    _mm512_srai_epi32::<24>(shuffle(tables[run], &TOP[qq]))
                });
                for t in 0..N {
                    for run in 0..4 {
                        sumi[t] = _mm512_add_epi32(sumi[t], _mm512_mullo_epi32(s[t][run], sc[run]));
                    }
                }
            }
            let d = halves(sb.add(L.d()));
            for t in 0..N {
                acc[t] = tiled_add(acc[t], d, sumi[t], None, ys[t].d);
            }
        }
        for (t, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(t * stride), *a);
        }
    }

    /// `avx2::group_q5k_lanes` for 16 rows: each sub-block's pair sums times
    /// its scale added to the lanes by `vpdpwssd`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn group_q5k_lanes(g: *const u8, nb: usize, x: &[BlockQ8K], out: *mut f32) {
        let (m4, one) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(1));
        let (mut acc, mut mins) = ([_mm512_setzero_ps(); 8], _mm512_setzero_ps());
        for b in 0..nb {
            let sb = g.add(b * Q5K_SB);
            let y = x.get_unchecked(b);
            let (d, dmin) = (halves(sb.add(L.d())), halves(sb.add(L.dmin())));
            let (scales, mns) = unpack_scales_mins(sb.add(L.scales()));
            let mut lane = [_mm512_setzero_si512(); 8];
            let mut summ = _mm512_setzero_si512();
            for j in 0..8 {
                let chunk = sb.add(QS5 + 512 * (j / 2));
                let sc = shuffle(scales[j / 4], &DUP[j % 4]);
                let m = shuffle(mns[j / 4], &DUP[j % 4]);
                summ = _mm512_dpwssd_epi32(summ, m, bcast_bsums(y, 2 * j));
                let shift = _mm_cvtsi32_si128(j as i32);
                for (k, ln) in lane.iter_mut().enumerate() {
                    let v = load(chunk.add(64 * k));
                    let low = if j % 2 == 0 {
                        _mm512_and_si512(v, m4)
                    } else {
                        _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4)
                    };
                    let h = _mm512_srl_epi16(load(sb.add(L.highs() + 64 * k)), shift);
                    let q = _mm512_or_si512(low, _mm512_slli_epi16::<4>(_mm512_and_si512(h, one)));
                    let p = _mm512_maddubs_epi16(q, bcast(y, 32 * j + 4 * k));
                    *ln = _mm512_dpwssd_epi32(*ln, p, sc);
                }
            }
            let dd = _mm512_mul_ps(d, _mm512_set1_ps(y.d));
            for (a, ln) in acc.iter_mut().zip(lane) {
                *a = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(ln), *a);
            }
            let dm = _mm512_mul_ps(dmin, _mm512_set1_ps(y.d));
            mins = _mm512_fnmadd_ps(dm, _mm512_cvtepi32_ps(summ), mins);
        }
        let add = |x, y| _mm512_add_ps(x, y);
        let r = add(
            add(add(acc[4], acc[0]), add(acc[6], acc[2])),
            add(add(acc[5], acc[1]), add(acc[7], acc[3])),
        );
        _mm512_storeu_ps(out, add(r, mins));
    }

    /// Q6_K group of 16 rows against one token in `Rounding::Lanes`
    /// (`kquant::dot_q6k_lanes`'s steps): eight lane accumulators per row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn group_q6k_lanes(g: *const u8, nb: usize, x: &[BlockQ8K], out: *mut f32) {
        let zero = _mm512_setzero_si512();
        let mut acc = [_mm512_setzero_ps(); 8];
        for b in 0..nb {
            let sb = g.add(b * Q6K_SB);
            let y = x.get_unchecked(b);
            let q = sb.add(QS6);
            let tables = [0, 1, 2, 3].map(|v| load(sb.add(L.scales() + 64 * v)));
            // Lane m starts at -32 * (scale * bsum) of groups 2m and 2m+1.
            let mut lane: [__m512i; 8] = std::array::from_fn(|m| {
                let sc = _mm512_srai_epi16::<8>(shuffle(tables[m / 2], &PAIR[m % 2]));
                let corr = _mm512_dpwssd_epi32(zero, sc, bcast_bsums(y, 2 * m));
                _mm512_sub_epi32(zero, _mm512_slli_epi32::<5>(corr))
            });
            // Values 64 * run + 4m..: lane m % 8, times group 4 * run + m / 4's
            // scale: the products' pair sums in i16 (|w y + w' y'| <= 2 * 63 *
            // 128 < 2^15, no saturation), then times the scale and added to
            // the lane pair by pair (`vpdpwssd`): the same i32 as the four
            // products' sum times the scale, in two instructions, not three.
            for qq in 0..4 {
                let sc: [__m512i; 4] = std::array::from_fn(|run| {
                    _mm512_srai_epi16::<8>(shuffle(tables[run], &HIGH[qq]))
                });
                for m in 4 * qq..4 * qq + 4 {
                    let runs = q6k_runs(q.add(192 * m));
                    for (run, &w) in runs.iter().enumerate() {
                        let p = _mm512_maddubs_epi16(w, bcast(y, 64 * run + 4 * m));
                        lane[m % 8] = _mm512_dpwssd_epi32(lane[m % 8], p, sc[run]);
                    }
                }
            }
            let d = _mm512_mul_ps(halves(sb.add(L.d())), _mm512_set1_ps(y.d));
            for (a, l) in acc.iter_mut().zip(lane) {
                *a = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(l), *a);
            }
        }
        let add = |x, y| _mm512_add_ps(x, y);
        let r = add(
            add(add(acc[4], acc[0]), add(acc[6], acc[2])),
            add(add(acc[5], acc[1]), add(acc[7], acc[3])),
        );
        _mm512_storeu_ps(out, r);
    }
}
