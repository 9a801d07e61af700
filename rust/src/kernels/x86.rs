//! AVX2 (+FMA, F16C) versions of the quantized dot products in `quant` and
//! `kquant`. They compute the same integer block sums as the plain versions
//! (exactly), and differ from them only in the order in which the per-block
//! float terms are added. `has_avx2` says whether this CPU can run them; it
//! is checked once and cached, so the library still runs on any x86_64.
//!
//! Every kernel takes the weight row as bytes and its activation blocks, and
//! works on as many whole blocks as both hold (as the plain ones, which zip).
//! Activation values are in -127..=127 (our quantizers never make -128), which
//! the 8-bit products below rely on not to saturate.

use std::arch::x86_64::*;
use std::sync::atomic::{AtomicU8, Ordering};

use super::kquant::{self, BlockQ8K, Rounding};
use super::quant::{BlockQ8, QuantType};

/// 0: not checked yet, 1: no AVX2/FMA/F16C, 2: all three.
static AVX2: AtomicU8 = AtomicU8::new(0);

/// Whether the kernels here can run on this CPU (checked once).
#[inline]
pub fn has_avx2() -> bool {
    match AVX2.load(Ordering::Relaxed) {
        2 => true,
        1 => false,
        _ => {
            let ok = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            AVX2.store(if ok { 2 } else { 1 }, Ordering::Relaxed);
            ok
        }
    }
}

/// `quant::dot_row` for Q8_0/Q4_0/Q4_1 weights.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (`has_avx2()`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_row(t: QuantType, w: &[u8], x: &[BlockQ8]) -> f32 {
    dot_rows::<1>(t, w, [x])[0]
}

/// One row against `N` tokens' activations: each weight block is loaded and
/// unpacked once for all of them. Each result is bit for bit what `dot_row`
/// gives for that token alone.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (`has_avx2()`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows<const N: usize>(t: QuantType, w: &[u8], xs: [&[BlockQ8]; N]) -> [f32; N] {
    match t {
        QuantType::Q8_0 => dot_q8_0(w, xs),
        QuantType::Q4_0 => dot_q4_0(w, xs),
        QuantType::Q4_1 => dot_q4_1(w, xs),
        _ => unreachable!("k-quants take Q8_K activations"),
    }
}

/// `quant::dot_row_k` for Q4_K/Q5_K/Q6_K weights.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (`has_avx2()`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_row_k(t: QuantType, w: &[u8], x: &[BlockQ8K], r: Rounding) -> f32 {
    dot_rows_k::<1>(t, w, [x], r)[0]
}

/// `dot_rows` for the k-quants.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (`has_avx2()`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows_k<const N: usize>(
    t: QuantType,
    w: &[u8],
    xs: [&[BlockQ8K]; N],
    r: Rounding,
) -> [f32; N] {
    match t {
        QuantType::Q4_K => dot_q45k::<N, false, false>(w, xs),
        QuantType::Q5_K if r == Rounding::Lanes => dot_q45k::<N, true, true>(w, xs),
        QuantType::Q5_K => dot_q45k::<N, true, false>(w, xs),
        QuantType::Q6_K if r == Rounding::Lanes => dot_q6k::<N, true>(w, xs),
        QuantType::Q6_K => dot_q6k::<N, false>(w, xs),
        _ => unreachable!("32-value formats take Q8_0 activations"),
    }
}

/// Whole blocks that the row and every token's activations all hold.
#[inline]
fn common_blocks<A>(row_blocks: usize, xs: &[&[A]]) -> usize {
    xs.iter().fold(row_blocks, |n, x| n.min(x.len()))
}

// ---------------------------------------------------------------------------
// Helpers.

/// The two f16s stored little-endian at `p` (4 bytes), as f32 in lanes 0
/// and 1.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16x2_at(p: *const u8) -> __m128 {
    let bits = (p as *const u32).read_unaligned();
    _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))
}

/// The f16 stored little-endian at `p`, as f32 in all eight lanes.
/// (Converting a whole vector: with a single lane demanded, LLVM loads the
/// f16 with a `vpinsrw` into whatever register is at hand, often an
/// accumulator, a false dependency that serializes the loops.)
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_splat(p: *const u8) -> __m256 {
    let bits = (p as *const u16).read_unaligned();
    _mm256_cvtph_ps(_mm_set1_epi16(bits as i16))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_epi32(v: __m256i) -> i32 {
    hsum_epi32_128(_mm_add_epi32(
        _mm256_castsi256_si128(v),
        _mm256_extracti128_si256::<1>(v),
    ))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_epi32_128(v: __m128i) -> i32 {
    let s = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

/// Sums of adjacent pairs of 16-bit lanes, as 32-bit lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sum_pairs(v: __m256i) -> __m256i {
    _mm256_madd_epi16(v, _mm256_set1_epi16(1))
}

/// 32 nibbles from 16 bytes: low nibbles in the low half (elements 0..15),
/// high nibbles in the high half (16..31).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles_16(p: *const u8) -> __m256i {
    let bytes = _mm_loadu_si128(p as *const __m128i);
    let hi = _mm_srli_epi16::<4>(bytes);
    _mm256_and_si256(_mm256_set_m128i(hi, bytes), _mm256_set1_epi8(0x0f))
}

// ---------------------------------------------------------------------------
// 32-value formats. Each token has two accumulators (even and odd blocks),
// which hides the FMA latency when there is one token.

/// Runs `block(i, h)` for every block i < nb, h = i % 2, two at a time.
#[inline(always)]
fn for_blocks_in_pairs(nb: usize, mut block: impl FnMut(usize, usize)) {
    let mut i = 0;
    while i + 2 <= nb {
        block(i, 0);
        block(i + 1, 1);
        i += 2;
    }
    if i < nb {
        block(i, 0);
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn finish<const N: usize>(acc: &[[__m256; 2]; N], add: [f32; N]) -> [f32; N] {
    let mut out = add;
    for (o, a) in out.iter_mut().zip(acc) {
        *o += hsum_ps(_mm256_add_ps(a[0], a[1]));
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0<const N: usize>(w: &[u8], xs: [&[BlockQ8]; N]) -> [f32; N] {
    let nb = common_blocks(w.len() / 34, &xs);
    let wp = w.as_ptr();
    // As llama.cpp's tinyBLAS (`packed::Q8Lanes`): one float lane per 4
    // values, one accumulator.
    let mut acc = [_mm256_setzero_ps(); N];
    // SAFETY: block i < nb lies within `w` (34 bytes each) and every `xs[k]`.
    (0..nb).for_each(|i| unsafe {
        let b = wp.add(i * 34);
        let q = load256(b.add(2));
        let aq = _mm256_sign_epi8(q, q);
        let dw = f16_splat(b);
        for k in 0..N {
            let y = xs[k].get_unchecked(i);
            let sy = _mm256_sign_epi8(load256(y.qs.as_ptr() as *const u8), q);
            let p = _mm256_cvtepi32_ps(sum_pairs(_mm256_maddubs_epi16(aq, sy)));
            acc[k] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(y.d)), p, acc[k]);
        }
    });
    std::array::from_fn(|k| hsum_ps(acc[k]))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_0<const N: usize>(w: &[u8], xs: [&[BlockQ8]; N]) -> [f32; N] {
    let nb = common_blocks(w.len() / 18, &xs);
    let wp = w.as_ptr();
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    // SAFETY: block i < nb lies within `w` (18 bytes each) and every `xs[k]`.
    for_blocks_in_pairs(nb, |i, h| unsafe {
        let b = wp.add(i * 18);
        let q = _mm256_sub_epi8(nibbles_16(b.add(2)), _mm256_set1_epi8(8));
        let aq = _mm256_sign_epi8(q, q);
        let dw = f16_splat(b);
        for k in 0..N {
            let y = xs[k].get_unchecked(i);
            let sy = _mm256_sign_epi8(load256(y.qs.as_ptr() as *const u8), q);
            let p = _mm256_cvtepi32_ps(sum_pairs(_mm256_maddubs_epi16(aq, sy)));
            acc[k][h] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(y.d)), p, acc[k][h]);
        }
    });
    finish(&acc, [0.0; N])
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_1<const N: usize>(w: &[u8], xs: [&[BlockQ8]; N]) -> [f32; N] {
    let nb = common_blocks(w.len() / 20, &xs);
    let wp = w.as_ptr();
    // As ggml_vec_dot_q4_1_q8_1: one float lane per 4 values, one
    // accumulator, the min terms summed on the side.
    let mut acc = [_mm256_setzero_ps(); N];
    let mut mins = [0.0f32; N];
    // SAFETY: block i < nb lies within `w` (20 bytes each) and every `xs[k]`.
    (0..nb).for_each(|i| unsafe {
        let b = wp.add(i * 20);
        // Unsigned nibbles times signed activations: maddubs as is.
        let q = nibbles_16(b.add(4));
        let dm = f16x2_at(b);
        let (d, m) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
        for k in 0..N {
            let y = xs[k].get_unchecked(i);
            let p = _mm256_cvtepi32_ps(sum_pairs(_mm256_maddubs_epi16(
                q,
                load256(y.qs.as_ptr() as *const u8),
            )));
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), p, acc[k]);
            mins[k] = m.mul_add(y.s, mins[k]);
        }
    });
    std::array::from_fn(|k| hsum_ps(acc[k]) + mins[k])
}

// ---------------------------------------------------------------------------
// k-quants.

/// Shuffle masks that spread 16-bit lane `j` of a 128-bit vector over all
/// eight 16-bit lanes (used on both halves of a 256-bit vector).
const fn lane_broadcast_masks() -> [[u8; 32]; 8] {
    let mut m = [[0u8; 32]; 8];
    let mut j = 0;
    while j < 8 {
        let mut k = 0;
        while k < 16 {
            m[j][2 * k] = 2 * j as u8;
            m[j][2 * k + 1] = 2 * j as u8 + 1;
            k += 1;
        }
        j += 1;
    }
    m
}
static LANE_BROADCAST: [[u8; 32]; 8] = lane_broadcast_masks();

/// Puts the even bytes of 16 first, then the odd ones.
static EVEN_ODD: [u8; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15];

/// The eight 6-bit scales and eight mins of a Q4_K/Q5_K super-block from its
/// 12 packed bytes (the layout `kquant::scale_min` reads one at a time).
#[inline]
fn scales_mins(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    const M6: u32 = 0x3f3f_3f3f;
    const M4: u32 = 0x0f0f_0f0f;
    const M2: u32 = 0x0303_0303;
    let u = |k: usize| u32::from_le_bytes([q[4 * k], q[4 * k + 1], q[4 * k + 2], q[4 * k + 3]]);
    let (u0, u1, u2) = (u(0), u(1), u(2));
    let sc_lo = u0 & M6;
    let sc_hi = (u2 & M4) | (((u0 >> 6) & M2) << 4);
    let m_lo = u1 & M6;
    let m_hi = ((u2 >> 4) & M4) | (((u1 >> 6) & M2) << 4);
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    sc[..4].copy_from_slice(&sc_lo.to_le_bytes());
    sc[4..].copy_from_slice(&sc_hi.to_le_bytes());
    mn[..4].copy_from_slice(&m_lo.to_le_bytes());
    mn[4..].copy_from_slice(&m_hi.to_le_bytes());
    (sc, mn)
}

/// Q4_K (FIVE false, 144-byte blocks) or Q5_K (176-byte blocks); Q5_K with
/// `LANES`: `kquant::dot_q5k_lanes`'s float steps, else `kquant::dot_q45k`'s
/// (the i32 lanes are the same).
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q45k<const N: usize, const FIVE: bool, const LANES: bool>(
    w: &[u8],
    xs: [&[BlockQ8K]; N],
) -> [f32; N] {
    let bb = if FIVE { 176 } else { 144 };
    let qs_at = if FIVE { 48 } else { 16 };
    let nb = common_blocks(w.len() / bb, &xs);
    let m4 = _mm256_set1_epi8(0x0f);
    let one = _mm256_set1_epi8(1);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut acc_m = [0.0f32; N];
    // Q5_K: the whole sum, as `kquant::tiled_add` adds it.
    let mut tiled = [0.0f32; N];
    for (i, b) in w.chunks_exact(bb).take(nb).enumerate() {
        let (sc, mn) = scales_mins(&b[4..16]);
        let bp = b.as_ptr();
        // SAFETY: all loads below stay within the block `b` (bb bytes), the
        // activation blocks (i < nb), `sc`/`mn` (8 bytes) and the mask table.
        unsafe {
            let ys: [&BlockQ8K; N] = std::array::from_fn(|k| xs[k].get_unchecked(i));
            let dm = f16x2_at(bp); // d, dmin
            let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(mn.as_ptr() as *const __m128i));
            let mut dd = [_mm_setzero_ps(); N];
            let mut summ = [0i32; N];
            for k in 0..N {
                // Min term: sum_j m_j * (bsums[2j] + bsums[2j+1]).
                let bs = load256(ys[k].bsums.as_ptr() as *const u8);
                let pair_sums = _mm_hadd_epi16(
                    _mm256_castsi256_si128(bs),
                    _mm256_extracti128_si256::<1>(bs),
                );
                summ[k] = hsum_epi32_128(_mm_madd_epi16(mins, pair_sums));
                if !FIVE {
                    dd[k] = _mm_mul_ps(dm, _mm_set1_ps(ys[k].d));
                    acc_m[k] += _mm_cvtss_f32(_mm_movehdup_ps(dd[k])) * summ[k] as f32;
                }
            }

            // The scales as 16-bit lanes, in both halves.
            let sc16 = _mm_cvtepu8_epi16(_mm_loadl_epi64(sc.as_ptr() as *const __m128i));
            let sc16 = _mm256_broadcastsi128_si256(sc16);
            let mut hb = if FIVE {
                load256(bp.add(16))
            } else {
                _mm256_setzero_si256()
            };
            let mut sumi = [_mm256_setzero_si256(); N];
            for c in 0..4 {
                let q4 = load256(bp.add(qs_at + 32 * c));
                let mut lo = _mm256_and_si256(q4, m4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q4), m4);
                if FIVE {
                    // Fifth bits of sub-blocks 2c and 2c+1: bits 2c, 2c+1 of qh.
                    lo = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(_mm256_and_si256(hb, one)));
                    hb = _mm256_srli_epi16::<1>(hb);
                    hi = _mm256_or_si256(hi, _mm256_slli_epi16::<4>(_mm256_and_si256(hb, one)));
                    hb = _mm256_srli_epi16::<1>(hb);
                }
                let s_lo = _mm256_shuffle_epi8(sc16, load256(LANE_BROADCAST[2 * c].as_ptr()));
                let s_hi = _mm256_shuffle_epi8(sc16, load256(LANE_BROADCAST[2 * c + 1].as_ptr()));
                for k in 0..N {
                    let yp = ys[k].qs.as_ptr() as *const u8;
                    let p_lo = _mm256_maddubs_epi16(lo, load256(yp.add(64 * c)));
                    let p_hi = _mm256_maddubs_epi16(hi, load256(yp.add(64 * c + 32)));
                    let p = _mm256_add_epi32(
                        _mm256_madd_epi16(p_lo, s_lo),
                        _mm256_madd_epi16(p_hi, s_hi),
                    );
                    sumi[k] = _mm256_add_epi32(sumi[k], p);
                }
            }
            for k in 0..N {
                if FIVE && LANES {
                    // `kquant::dot_q5k_lanes`: the lanes as they are, the
                    // min terms in `acc_m`.
                    let (d, dmin) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
                    acc[k] = _mm256_fmadd_ps(
                        _mm256_set1_ps(d * ys[k].d),
                        _mm256_cvtepi32_ps(sumi[k]),
                        acc[k],
                    );
                    acc_m[k] = (-(dmin * ys[k].d)).mul_add(summ[k] as f32, acc_m[k]);
                    continue;
                }
                if FIVE {
                    let (d, dmin) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
                    tiled[k] =
                        kquant::tiled_add(tiled[k], d, hsum_epi32(sumi[k]), dmin, summ[k], ys[k].d);
                    continue;
                }
                acc[k] = _mm256_fmadd_ps(
                    _mm256_broadcastss_ps(dd[k]),
                    _mm256_cvtepi32_ps(sumi[k]),
                    acc[k],
                );
            }
        }
    }
    let mut out = [0.0f32; N];
    for k in 0..N {
        // Q4_K: the lanes less the min terms; Q5_K: the lanes plus the
        // (negative) min terms, or the tiled sum.
        out[k] = if FIVE && LANES {
            hsum_ps(acc[k]) + acc_m[k]
        } else if FIVE {
            tiled[k]
        } else {
            hsum_ps(acc[k]) - acc_m[k]
        };
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
/// `LANES`: `kquant::dot_q6k_lanes`'s float steps, else `kquant::dot_q6k`'s
/// (`tiled_add`); the i32 lanes are the same.
fn dot_q6k<const N: usize, const LANES: bool>(w: &[u8], xs: [&[BlockQ8K]; N]) -> [f32; N] {
    let nb = common_blocks(w.len() / 210, &xs);
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(0x03);
    let mut acc = [0.0f32; N];
    let mut lanes = [_mm256_setzero_ps(); N];
    for (i, b) in w.chunks_exact(210).take(nb).enumerate() {
        let bp = b.as_ptr();
        // SAFETY: all loads below stay within the block `b` (210 bytes), the
        // activation blocks (i < nb) and the mask tables.
        unsafe {
            let ys: [&BlockQ8K; N] = std::array::from_fn(|k| xs[k].get_unchecked(i));
            let scales = _mm_loadu_si128(bp.add(192) as *const __m128i);
            // The values are stored as q + 32 (0..63): multiply the unsigned
            // ones, then take off 32 * sum_g scale_g * bsums[g].
            let scales16 = _mm256_cvtepi8_epi16(scales);
            let mut sumi: [__m256i; N] = std::array::from_fn(|k| {
                let corr = _mm256_madd_epi16(scales16, load256(ys[k].bsums.as_ptr() as *const u8));
                _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(corr))
            });
            // The scales as 16-bit lanes, even groups in the low half and odd
            // ones in the high half: chunk g of 32 values (groups 2g, 2g+1)
            // takes lane g of each half.
            let eo = _mm_loadu_si128(EVEN_ODD.as_ptr() as *const __m128i);
            let sc16 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, eo));
            for n in 0..2 {
                let q4a = load256(bp.add(64 * n));
                let q4b = load256(bp.add(64 * n + 32));
                let qh = load256(bp.add(128 + 32 * n));
                let q = [
                    _mm256_or_si256(
                        _mm256_and_si256(q4a, m4),
                        _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m2)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(q4b, m4),
                        _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(q4a), m4),
                        _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<4>(qh), m2)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(q4b), m4),
                        _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<6>(qh), m2)),
                    ),
                ];
                for (part, &qp) in q.iter().enumerate() {
                    let s =
                        _mm256_shuffle_epi8(sc16, load256(LANE_BROADCAST[4 * n + part].as_ptr()));
                    for k in 0..N {
                        let yk = load256((ys[k].qs.as_ptr() as *const u8).add(128 * n + 32 * part));
                        sumi[k] = _mm256_add_epi32(
                            sumi[k],
                            _mm256_madd_epi16(_mm256_maddubs_epi16(qp, yk), s),
                        );
                    }
                }
            }
            let d = _mm_cvtss_f32(_mm256_castps256_ps128(f16_splat(bp.add(208))));
            for k in 0..N {
                if LANES {
                    let dk = _mm256_set1_ps(d * ys[k].d);
                    lanes[k] = _mm256_fmadd_ps(dk, _mm256_cvtepi32_ps(sumi[k]), lanes[k]);
                } else {
                    acc[k] = kquant::tiled_add(acc[k], d, hsum_epi32(sumi[k]), 0.0, 0, ys[k].d);
                }
            }
        }
    }
    if LANES {
        for k in 0..N {
            let mut a = [0.0f32; 8];
            // SAFETY: `a` holds the eight floats stored.
            unsafe { _mm256_storeu_ps(a.as_mut_ptr(), lanes[k]) };
            acc[k] = crate::kernels::quant::lane_sum(&a);
        }
    }
    acc
}

// ---------------------------------------------------------------------------
// Activation quantization (bit for bit the plain versions: same scale, same
// round-half-to-even, without a libm call per value).

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn abs_max(v: &[__m256]) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for &x in v {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, x));
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)))
}

/// Four vectors of 8 i32 (each in -127..=127) as 32 i8 in order, stored at
/// `dst` and returned.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack32(r: [__m256i; 4], dst: *mut i8) -> __m256i {
    let a = _mm256_packs_epi32(r[0], r[1]);
    let b = _mm256_packs_epi32(r[2], r[3]);
    let c = _mm256_permutevar8x32_epi32(
        _mm256_packs_epi16(a, b),
        _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
    );
    _mm256_storeu_si256(dst as *mut __m256i, c);
    c
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn round_to_i32(v: __m256, mul: __m256) -> __m256i {
    _mm256_cvtps_epi32(_mm256_round_ps(
        _mm256_mul_ps(v, mul),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    ))
}

/// `quant::quantize_row_q8`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (`has_avx2()`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8]) {
    for (blk, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
        let p = xs.as_ptr();
        let v = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(p.add(o)));
        let amax = abs_max(&v);
        let d = amax / 127.0;
        let mul = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let r = v.map(|vi| round_to_i32(vi, mul));
        let sum = hsum_i32(_mm256_add_epi32(
            _mm256_add_epi32(r[0], r[1]),
            _mm256_add_epi32(r[2], r[3]),
        ));
        pack32(r, blk.qs.as_mut_ptr());
        // Both through float16 at once, in hardware (half's conversion is
        // software here, a noticeable share of a one-token matmul).
        let ds = _mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_setr_ps(
            d,
            sum as f32 * d,
            0.0,
            0.0,
        )));
        blk.d = _mm_cvtss_f32(ds);
        blk.s = _mm_cvtss_f32(_mm_movehdup_ps(ds));
    }
}

/// `kquant::quantize_row_q8k`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (`has_avx2()`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    for (blk, xs) in out.iter_mut().zip(x.chunks_exact(256)) {
        let p = xs.as_ptr();
        let v: [__m256; 32] = std::array::from_fn(|i| _mm256_loadu_ps(p.add(8 * i)));
        let amax = abs_max(&v);
        if amax == 0.0 {
            *blk = BlockQ8K::default();
            continue;
        }
        // The first value of largest magnitude sets the sign, as in ggml:
        // found eight values at a time (a scan value by value took as long
        // as all the rest of a block's work).
        let (sign, top) = (_mm256_set1_ps(-0.0), _mm256_set1_ps(amax));
        let at = v
            .iter()
            .enumerate()
            .find_map(|(i, &vi)| {
                let hit = _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, vi), top);
                let bits = _mm256_movemask_ps(hit);
                (bits != 0).then(|| 8 * i + bits.trailing_zeros() as usize)
            })
            .expect("amax comes from xs");
        let iscale = -127.0 / xs[at];
        let mul = _mm256_set1_ps(iscale);
        let (most, bias) = (_mm256_set1_epi32(127), _mm256_set1_epi8(-128));
        for g in 0..8 {
            let r: [__m256i; 4] =
                std::array::from_fn(|k| _mm256_min_epi32(round_to_i32(v[4 * g + k], mul), most));
            let q = pack32(r, blk.qs.as_mut_ptr().add(32 * g));
            // Each 16 values' sum: byte sums of q + 128 over 8 bytes
            // (`vpsadbw`), paired, less 16 * 128.
            let s8 = _mm256_sad_epu8(_mm256_xor_si256(q, bias), _mm256_setzero_si256());
            let s16 = _mm256_add_epi64(s8, _mm256_srli_si256::<8>(s8));
            blk.bsums[2 * g] = (_mm256_extract_epi64::<0>(s16) - 2048) as i16;
            blk.bsums[2 * g + 1] = (_mm256_extract_epi64::<2>(s16) - 2048) as i16;
        }
        blk.d = 1.0 / iscale;
    }
}
