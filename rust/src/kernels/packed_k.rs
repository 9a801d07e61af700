//! The k-quants (Q4_K, Q5_K, Q6_K) in `packed`'s interleaved layout: groups of 8
//! rows, one AVX2 vector holding 4 bytes of each of the 8 rows (row r in i32
//! lane r), activations (Q8_K) broadcast 4 bytes at a time, one float lane
//! per row at the end. `packed::PackedMatrix` holds the matrix; this module
//! has the per-group layout, its packing and unpacking, and the kernels.
//!
//! One group's super-block (256 values of each of the 8 rows), 32-byte
//! aligned, super-blocks back to back:
//! - Q4_K (1184 bytes = 148 per row, against 144 in ggml's format):
//!   `0..16` the rows' d (f16), `16..32` their dmin, `32..96` the 6-bit
//!   scales as bytes, `96..160` the mins as bytes (see `SCALE_AT`), then 4
//!   chunks of 64 values, each 8 vectors: vector k of chunk c holds row r's
//!   nibble bytes 32c+4k..32c+4k+3 (low nibbles: sub-block 2c, values
//!   4k..4k+3; high nibbles: sub-block 2c+1).
//! - Q5_K (1440 bytes = 180 per row, against 176): as Q4_K, then 8 vectors
//!   of fifth bits: vector k holds row r's `qh` bytes 4k..4k+3 (bit j: the
//!   fifth bit of value 4k+i of sub-block j).
//! - Q6_K (2208 bytes = 276 per row, against 210): `0..16` the rows' d,
//!   16 zero bytes, `32..160` the 16 int8 scales (see `SCALE_AT`), then 64
//!   vectors: vector m holds row r's values 4m..4m+3 as bytes 0..63
//!   (q + 32, the 6 bits put together at load).
//!
//! `SCALE_AT(j, r)`: a scale/min table of `n` per row is `n / 4` vectors;
//! vector j / 4 holds rows 0..3 in its low 128 bits and rows 4..7 in its
//! high ones, 4 bytes per row (entries 4(j/4)..4(j/4)+3), so one in-lane
//! byte shuffle spreads entry j of the 8 rows over the 8 i32 lanes.
//!
//! The integer sums are exactly `kquant::dot_q45k`'s / `dot_q6k`'s; per
//! super-block and token the float accumulation is one fused multiply-add
//! (Q4_K: then one for the min term), in super-block order, in the fast and
//! the plain group kernels alike (so those agree bit for bit).

use std::cell::RefCell;

use half::f16;

use super::kquant::{self, pack_scale_min, q6k_values, scale_min, BlockQ8K, QK_K};
use super::packed::{Kernels, GROUP};
use super::quant::QuantType;

/// Bytes of one group's super-block.
pub(crate) fn superblock_bytes(t: QuantType) -> usize {
    match t {
        QuantType::Q4_K => Q4K_SB,
        QuantType::Q5_K => Q5K_SB,
        QuantType::Q6_K => Q6K_SB,
        _ => unreachable!("{t:?} has no packed k-quant layout"),
    }
}

const Q4K_SB: usize = 160 + 1024;
const Q5K_SB: usize = Q4K_SB + 256;
const Q6K_SB: usize = 160 + 2048;
/// Where the quant vectors start in a group's super-block (both formats).
const QS: usize = 160;

/// Offset of entry `j` of row `r` in a scale table (see the module notes).
#[inline(always)]
const fn scale_at(j: usize, r: usize) -> usize {
    32 * (j / 4) + 16 * (r / 4) + 4 * (r % 4) + j % 4
}

/// Offset of row `r`'s quant byte `i` in the interleaved vectors.
#[inline(always)]
const fn quant_at(i: usize, r: usize) -> usize {
    32 * (i / 4) + 4 * r + i % 4
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

/// Packs one group: `rows` are the 8 rows in ggml's format (`nb` blocks).
pub(crate) fn pack_group(t: QuantType, rows: [&[u8]; GROUP], nb: usize, dst: &mut [u8]) {
    let (bb, sbb) = (t.block_bytes(), superblock_bytes(t));
    for b in 0..nb {
        let sb = &mut dst[b * sbb..(b + 1) * sbb];
        for (r, row) in rows.iter().enumerate() {
            let blk = &row[b * bb..(b + 1) * bb];
            match t {
                QuantType::Q4_K | QuantType::Q5_K => {
                    sb[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
                    sb[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&blk[2..4]);
                    for j in 0..8 {
                        let (sc, m) = scale_min(j, &blk[4..16]);
                        sb[32 + scale_at(j, r)] = sc;
                        sb[96 + scale_at(j, r)] = m;
                    }
                    let qs_at = if t == QuantType::Q5_K { 48 } else { 16 };
                    for (i, &q) in blk[qs_at..qs_at + 128].iter().enumerate() {
                        sb[QS + quant_at(i, r)] = q;
                    }
                    if t == QuantType::Q5_K {
                        for (i, &h) in blk[16..48].iter().enumerate() {
                            sb[Q4K_SB + quant_at(i, r)] = h;
                        }
                    }
                }
                QuantType::Q6_K => {
                    sb[2 * r..2 * r + 2].copy_from_slice(&blk[208..210]);
                    for g in 0..16 {
                        sb[32 + scale_at(g, r)] = blk[192 + g];
                    }
                    for (i, &q) in q6k_values(blk).iter().enumerate() {
                        sb[QS + quant_at(i, r)] = q;
                    }
                }
                _ => unreachable!(),
            }
        }
    }
}

/// Row `lane` of a packed group, back in ggml's format (`out`: `nb` blocks).
pub(crate) fn unpack_row(t: QuantType, grp: &[u8], lane: usize, out: &mut [u8]) {
    let (bb, sbb) = (t.block_bytes(), superblock_bytes(t));
    for (b, blk) in out.chunks_exact_mut(bb).enumerate() {
        let sb = &grp[b * sbb..(b + 1) * sbb];
        let r = lane;
        match t {
            QuantType::Q4_K | QuantType::Q5_K => {
                blk[0..2].copy_from_slice(&sb[2 * r..2 * r + 2]);
                blk[2..4].copy_from_slice(&sb[16 + 2 * r..16 + 2 * r + 2]);
                let ls: [u8; 8] = std::array::from_fn(|j| sb[32 + scale_at(j, r)]);
                let lm: [u8; 8] = std::array::from_fn(|j| sb[96 + scale_at(j, r)]);
                blk[4..16].copy_from_slice(&pack_scale_min(&ls, &lm));
                let qs_at = if t == QuantType::Q5_K { 48 } else { 16 };
                for i in 0..128 {
                    blk[qs_at + i] = sb[QS + quant_at(i, r)];
                }
                if t == QuantType::Q5_K {
                    for i in 0..32 {
                        blk[16 + i] = sb[Q4K_SB + quant_at(i, r)];
                    }
                }
            }
            QuantType::Q6_K => {
                blk[208..210].copy_from_slice(&sb[2 * r..2 * r + 2]);
                for g in 0..16 {
                    blk[192 + g] = sb[32 + scale_at(g, r)];
                }
                let q: [u8; QK_K] = std::array::from_fn(|i| sb[QS + quant_at(i, r)]);
                q6k_store(&q, blk);
            }
            _ => unreachable!(),
        }
    }
}

/// One group against `N` tokens' Q8_K activations (`nb` super-blocks each):
/// writes `out[k * stride + r]` for token k and the group's row r.
///
/// # Safety
/// `out` must be valid for those writes; `k` one that this CPU runs.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn group_dot<const N: usize>(
    t: QuantType,
    grp: &[u8],
    nb: usize,
    xs: [&[BlockQ8K]; N],
    out: *mut f32,
    stride: usize,
    k: Kernels,
) {
    debug_assert!(xs.iter().all(|x| x.len() == nb) && grp.len() == nb * superblock_bytes(t));
    #[cfg(target_arch = "x86_64")]
    if k != Kernels::Plain {
        let g = grp.as_ptr();
        match (t, k == Kernels::Vnni) {
            (QuantType::Q4_K, false) => avx2::group_q45k::<N, false>(g, nb, xs, out, stride),
            (QuantType::Q5_K, false) => avx2::group_q45k::<N, true>(g, nb, xs, out, stride),
            (QuantType::Q6_K, false) => avx2::group_q6k::<N>(g, nb, xs, out, stride),
            (QuantType::Q4_K, true) => avx2::group_q45k_vnni::<N, false>(g, nb, xs, out, stride),
            (QuantType::Q5_K, true) => avx2::group_q45k_vnni::<N, true>(g, nb, xs, out, stride),
            (QuantType::Q6_K, true) => avx2::group_q6k_vnni::<N>(g, nb, xs, out, stride),
            _ => unreachable!("{t:?} has no packed k-quant layout"),
        }
        return;
    }
    let _ = k;
    let v = group_dot_scalar(t, grp, nb, xs);
    for (k, row) in v.iter().enumerate() {
        for (r, &val) in row.iter().enumerate() {
            *out.add(k * stride + r) = val;
        }
    }
}

/// The plain group kernels, read from the packed bytes: the integer sums of
/// `kquant::dot_q45k` / `dot_q6k`, accumulated as the fast kernels do.
pub(crate) fn group_dot_scalar<const N: usize>(
    t: QuantType,
    grp: &[u8],
    nb: usize,
    xs: [&[BlockQ8K]; N],
) -> [[f32; GROUP]; N] {
    let sbb = superblock_bytes(t);
    let mut out = [[0.0f32; GROUP]; N];
    for b in 0..nb {
        let sb = &grp[b * sbb..(b + 1) * sbb];
        for r in 0..GROUP {
            let d = f16::from_le_bytes([sb[2 * r], sb[2 * r + 1]]).to_f32();
            let byte = |i: usize| sb[QS + quant_at(i, r)];
            for (k, x) in xs.iter().enumerate() {
                let y = &x[b];
                match t {
                    QuantType::Q4_K | QuantType::Q5_K => {
                        let dmin =
                            f16::from_le_bytes([sb[16 + 2 * r], sb[16 + 2 * r + 1]]).to_f32();
                        let (mut sumi, mut summ) = (0i32, 0i32);
                        for j in 0..8 {
                            let (sc, m) = (
                                sb[32 + scale_at(j, r)] as i32,
                                sb[96 + scale_at(j, r)] as i32,
                            );
                            let mut si = 0i32;
                            for l in 0..32 {
                                let mut q = (byte(32 * (j / 2) + l) >> (4 * (j % 2))) & 0xf;
                                if t == QuantType::Q5_K {
                                    q |= ((sb[Q4K_SB + quant_at(l, r)] >> j) & 1) << 4;
                                }
                                si += q as i32 * y.qs[32 * j + l] as i32;
                            }
                            sumi += sc * si;
                            summ += m * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
                        }
                        out[k][r] = (d * y.d).mul_add(sumi as f32, out[k][r]);
                        out[k][r] = (-(dmin * y.d)).mul_add(summ as f32, out[k][r]);
                    }
                    QuantType::Q6_K => {
                        let mut sumi = 0i32;
                        for g in 0..16 {
                            let sc = sb[32 + scale_at(g, r)] as i8 as i32;
                            let si: i32 = (0..16)
                                .map(|l| (byte(16 * g + l) as i32 - 32) * y.qs[16 * g + l] as i32)
                                .sum();
                            sumi += sc * si;
                        }
                        out[k][r] = (d * y.d).mul_add(sumi as f32, out[k][r]);
                    }
                    _ => unreachable!(),
                }
            }
        }
    }
    out
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
        crate::pool::parallel_chunks(qx, nb.max(1), |t, q| {
            kquant::quantize_row_q8k(&x[t * n_in..(t + 1) * n_in], q)
        });
        f(&buf[..n_tok * nb])
    })
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! Activation values are in -127..=127 (our quantizer never makes -128);
    //! the 16-bit sums below rely on it.

    use std::arch::x86_64::*;

    use super::{BlockQ8K, Q4K_SB, Q5K_SB, Q6K_SB, QS};

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

    /// How far ahead the weights are fetched (see `packed`).
    const PREFETCH_BYTES: usize = 1024;

    #[inline(always)]
    unsafe fn prefetch<const LINES: usize>(p: *const u8) {
        for l in 0..LINES {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES + 64 * l) as *const i8);
        }
    }

    /// In-lane shuffle masks over a scale table vector (`super::scale_at`):
    /// for entry `jj` (0..4) of the vector, i32 lane r of the result gets
    /// row r's entry as the i16 pair
    /// - `DUP[jj]`: (e, e), zero-extended;
    /// - `HIGH[jj]`: (e << 8, e << 8) (an arithmetic shift by 8 then gives
    ///   the signed entry in both halves);
    /// - `PAIR[p]`: (e_{2p} << 8, e_{2p+1} << 8).
    ///
    /// (kinds 3 and 4: `ONE` and `TOP` below.)
    const fn masks(kind: usize) -> [[u8; 32]; 4] {
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
    /// For `vpdpbusd`'s i32 sums, i32 lane r gets row r's entry `jj`:
    /// - `ONE[jj]`: zero-extended;
    /// - `TOP[jj]`: in the top byte (an arithmetic shift by 24 gives it signed).
    static ONE: [[u8; 32]; 4] = masks(3);
    static TOP: [[u8; 32]; 4] = masks(4);

    #[inline(always)]
    unsafe fn shuffle(table: __m256i, mask: &[u8; 32]) -> __m256i {
        _mm256_shuffle_epi8(table, _mm256_loadu_si256(mask.as_ptr() as *const __m256i))
    }

    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        _mm256_load_si256(p as *const __m256i)
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
    ///
    /// With VNNI, `sc` holds the scales as i32 (`ONE`) and `vpdpbusd` makes
    /// each token's exact i32 sum, then times the scales: the same integers.
    #[inline(always)]
    unsafe fn sub_block<const N: usize, const FIVE: bool, const J: usize, const VNNI: bool>(
        sb: *const u8,
        ys: &[&BlockQ8K; N],
        sc: __m256i,
        sumi: &mut [__m256i; N],
    ) {
        let m4 = _mm256_set1_epi8(0x0f);
        let chunk = sb.add(QS + 256 * (J / 2));
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
                _mm256_or_si256(v, fifth_bit::<J>(load(sb.add(Q4K_SB + 32 * k))))
            } else {
                v
            }
        };
        if VNNI {
            let dot = |t: usize, w: &dyn Fn(usize) -> __m256i| {
                let mut s = _mm256_setzero_si256();
                for k in 0..8 {
                    s = _mm256_dpbusd_epi32(s, w(k), bcast(ys[t], 32 * J + 4 * k));
                }
                _mm256_mullo_epi32(s, sc)
            };
            if N == 1 {
                sumi[0] = _mm256_add_epi32(sumi[0], dot(0, &|k| unpack(k)));
            } else {
                let w: [__m256i; 8] = std::array::from_fn(unpack);
                for t in 0..N {
                    sumi[t] = _mm256_add_epi32(sumi[t], dot(t, &|k| w[k]));
                }
            }
            return;
        }
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

    /// Q4_K (FIVE false) or Q5_K group against `N` tokens.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn group_q45k<const N: usize, const FIVE: bool>(
        g: *const u8,
        nb: usize,
        xs: [&[BlockQ8K]; N],
        out: *mut f32,
        stride: usize,
    ) {
        q45k::<N, FIVE, false>(g, nb, xs, out, stride)
    }

    /// `group_q45k` with AVX-512 VNNI's `vpdpbusd`.
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub(super) unsafe fn group_q45k_vnni<const N: usize, const FIVE: bool>(
        g: *const u8,
        nb: usize,
        xs: [&[BlockQ8K]; N],
        out: *mut f32,
        stride: usize,
    ) {
        q45k::<N, FIVE, true>(g, nb, xs, out, stride)
    }

    #[inline(always)]
    unsafe fn q45k<const N: usize, const FIVE: bool, const VNNI: bool>(
        g: *const u8,
        nb: usize,
        xs: [&[BlockQ8K]; N],
        out: *mut f32,
        stride: usize,
    ) {
        let sbb = if FIVE { Q5K_SB } else { Q4K_SB };
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            let sb = g.add(b * sbb);
            prefetch::<3>(sb);
            if FIVE {
                prefetch::<4>(sb.add(Q4K_SB));
            }
            let ys: [&BlockQ8K; N] = std::array::from_fn(|t| xs[t].get_unchecked(b));
            let mut sumi = [_mm256_setzero_si256(); N];
            let scales = [load(sb.add(32)), load(sb.add(64))];
            sub_block::<N, FIVE, 0, VNNI>(
                sb,
                &ys,
                shuffle(scales[0], if VNNI { &ONE[0] } else { &DUP[0] }),
                &mut sumi,
            );
            sub_block::<N, FIVE, 1, VNNI>(
                sb,
                &ys,
                shuffle(scales[0], if VNNI { &ONE[1] } else { &DUP[1] }),
                &mut sumi,
            );
            sub_block::<N, FIVE, 2, VNNI>(
                sb,
                &ys,
                shuffle(scales[0], if VNNI { &ONE[2] } else { &DUP[2] }),
                &mut sumi,
            );
            sub_block::<N, FIVE, 3, VNNI>(
                sb,
                &ys,
                shuffle(scales[0], if VNNI { &ONE[3] } else { &DUP[3] }),
                &mut sumi,
            );
            sub_block::<N, FIVE, 4, VNNI>(
                sb,
                &ys,
                shuffle(scales[1], if VNNI { &ONE[0] } else { &DUP[0] }),
                &mut sumi,
            );
            sub_block::<N, FIVE, 5, VNNI>(
                sb,
                &ys,
                shuffle(scales[1], if VNNI { &ONE[1] } else { &DUP[1] }),
                &mut sumi,
            );
            sub_block::<N, FIVE, 6, VNNI>(
                sb,
                &ys,
                shuffle(scales[1], if VNNI { &ONE[2] } else { &DUP[2] }),
                &mut sumi,
            );
            sub_block::<N, FIVE, 7, VNNI>(
                sb,
                &ys,
                shuffle(scales[1], if VNNI { &ONE[3] } else { &DUP[3] }),
                &mut sumi,
            );
            // Min term: sum_j m_j * (bsums[2j] + bsums[2j+1]).
            let mins = [load(sb.add(96)), load(sb.add(128))];
            let mut summ = [_mm256_setzero_si256(); N];
            for j in 0..8 {
                let m = shuffle(mins[j / 4], &DUP[j % 4]);
                for t in 0..N {
                    summ[t] =
                        _mm256_add_epi32(summ[t], _mm256_madd_epi16(m, bcast_bsums(ys[t], 2 * j)));
                }
            }
            let d = _mm256_cvtph_ps(_mm_load_si128(sb as *const __m128i));
            let dmin = _mm256_cvtph_ps(_mm_load_si128(sb.add(16) as *const __m128i));
            for t in 0..N {
                let yd = _mm256_set1_ps(ys[t].d);
                acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, yd), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
                acc[t] =
                    _mm256_fnmadd_ps(_mm256_mul_ps(dmin, yd), _mm256_cvtepi32_ps(summ[t]), acc[t]);
            }
        }
        for (t, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(t * stride), *a);
        }
    }

    /// Q6_K group against `N` tokens.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn group_q6k<const N: usize>(
        g: *const u8,
        nb: usize,
        xs: [&[BlockQ8K]; N],
        out: *mut f32,
        stride: usize,
    ) {
        q6k::<N, false>(g, nb, xs, out, stride)
    }

    /// `group_q6k` with AVX-512 VNNI's `vpdpbusd`.
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub(super) unsafe fn group_q6k_vnni<const N: usize>(
        g: *const u8,
        nb: usize,
        xs: [&[BlockQ8K]; N],
        out: *mut f32,
        stride: usize,
    ) {
        q6k::<N, true>(g, nb, xs, out, stride)
    }

    #[inline(always)]
    unsafe fn q6k<const N: usize, const VNNI: bool>(
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
            let q = sb.add(QS);
            let tables = [0, 1, 2, 3].map(|v| load(sb.add(32 + 32 * v)));
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
                if VNNI {
                    // Each token's exact i32 sum over the 16 values, times the signed scale.
                    let sc = _mm256_srai_epi32::<24>(shuffle(tables[gi / 4], &TOP[gi % 4]));
                    for t in 0..N {
                        let mut s = _mm256_setzero_si256();
                        for (k, &wk) in w.iter().enumerate() {
                            s = _mm256_dpbusd_epi32(s, wk, bcast(ys[t], 16 * gi + 4 * k));
                        }
                        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_mullo_epi32(s, sc));
                    }
                    continue;
                }
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
            let d = _mm256_cvtph_ps(_mm_load_si128(sb as *const __m128i));
            for t in 0..N {
                acc[t] = _mm256_fmadd_ps(
                    _mm256_mul_ps(d, _mm256_set1_ps(ys[t].d)),
                    _mm256_cvtepi32_ps(sumi[t]),
                    acc[t],
                );
            }
        }
        for (t, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(t * stride), *a);
        }
    }
}
