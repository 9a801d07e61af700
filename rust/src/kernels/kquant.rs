//! ggml's k-quants: 256-value super-blocks split into sub-blocks that carry
//! their own small integer scales (and mins), themselves scaled by one or two
//! f16 numbers per super-block. Matmuls against them quantize the activations
//! to Q8_K (256 int8 values, an f32 scale and the sums of each 16 values), as
//! llama.cpp does, so that the dot products are integer sums.
//!
//! Layouts (bytes):
//! - Q4_K (144): d f16, dmin f16, 12 bytes of packed 6-bit scales and mins,
//!   128 bytes of 4-bit values (per 64 values: 32 bytes, low nibbles first).
//!   value = d * scale_j * q - dmin * min_j, for sub-block j of 32 values.
//! - Q5_K (176): as Q4_K plus 32 bytes holding each value's fifth bit.
//! - Q6_K (210): 128 bytes of low 4 bits, 64 bytes of high 2 bits, 16 int8
//!   scales (one per 16 values), d f16. value = d * scale_g * (q - 32).
//!
//! The functions here are the plain versions: they define the arithmetic and
//! serve as the oracle for any faster kernel.

use half::f16;

pub const QK_K: usize = 256;

/// Activations quantized for a k-quant dot product.
#[derive(Clone, Copy)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    /// Sum of each run of 16 values (the min terms need only these).
    pub bsums: [i16; QK_K / 16],
}

impl Default for BlockQ8K {
    fn default() -> Self {
        BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        }
    }
}

fn h(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// ggml's nearest_int: round half to even.
#[inline]
fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// ggml's quantize_row_q8_K: scale so the value of largest magnitude maps to
/// -127 (the sign is folded into d), round half to even.
pub fn quantize_row_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    #[cfg(target_arch = "x86_64")]
    if super::x86::has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C.
        return unsafe { super::x86::quantize_row_q8k(x, out) };
    }
    quantize_row_q8k_scalar(x, out)
}

/// The plain `quantize_row_q8k` (the oracle for the AVX2 one).
pub fn quantize_row_q8k_scalar(x: &[f32], out: &mut [BlockQ8K]) {
    for (blk, xs) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xs {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *blk = BlockQ8K::default();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in blk.qs.iter_mut().zip(xs) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, qs) in blk.bsums.iter_mut().zip(blk.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| q as i16).sum();
        }
        blk.d = 1.0 / iscale;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) from the 12 packed bytes.
#[inline]
pub(crate) fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Inverse of `scale_min` for all eight sub-blocks.
pub(crate) fn pack_scale_min(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// Unsigned values (0..15 or 0..31) of one Q4_K / Q5_K super-block, in order.
fn unpack_q45k(b: &[u8], five_bits: bool, q: &mut [u8; QK_K]) {
    let (qh, qs) = if five_bits {
        (&b[16..48], &b[48..176])
    } else {
        (&b[0..0], &b[16..144])
    };
    for j in 0..8 {
        let bytes = &qs[(j / 2) * 32..][..32];
        let shift = 4 * (j & 1);
        for l in 0..32 {
            let mut v = (bytes[l] >> shift) & 0xf;
            if five_bits {
                v |= ((qh[l] >> j) & 1) << 4;
            }
            q[j * 32 + l] = v;
        }
    }
}

/// Q6_K values q + 32 (0..63) of one super-block, in order: 4 low bits
/// from `ql`, 2 high bits from `qh`.
pub(crate) fn q6k_values(b: &[u8]) -> [u8; QK_K] {
    let (ql, qh) = (&b[..128], &b[128..192]);
    let mut q = [0u8; QK_K];
    for n in 0..2 {
        for part in 0..4 {
            for l in 0..32 {
                let lo = ql[64 * n + l + 32 * (part & 1)];
                let nib = if part < 2 { lo & 0xf } else { lo >> 4 };
                let hi = (qh[32 * n + l] >> (2 * part)) & 3;
                q[128 * n + 32 * part + l] = nib | (hi << 4);
            }
        }
    }
    q
}

/// Signed values (-32..31) of one Q6_K super-block, in order.
fn unpack_q6k(b: &[u8], q: &mut [i8; QK_K]) {
    for (o, v) in q.iter_mut().zip(q6k_values(b)) {
        *o = v as i8 - 32;
    }
}

fn q6k_scales(b: &[u8]) -> &[u8] {
    &b[192..208]
}

/// One super-block added to a Q5_K/Q6_K dot product as llama.cpp's tiled
/// k-quant matmul adds it (the kernels it runs these types through for 8
/// tokens or more): the exact integer sums times `d`, less `dmin` times the
/// min sums in one fused step, then times the activation scale `dy` fused
/// into the running sum. (Q6_K has no mins: `dmin` and `summ` are 0.)
#[inline(always)]
pub(crate) fn tiled_add(acc: f32, d: f32, sumi: i32, dmin: f32, summ: i32, dy: f32) -> f32 {
    let r = (-dmin).mul_add(summ as f32, sumi as f32 * d);
    r.mul_add(dy, acc)
}

/// Dot product of one Q4_K or Q5_K row with Q8_K activations.
pub fn dot_q45k(w: &[u8], five_bits: bool, x: &[BlockQ8K]) -> f32 {
    let bb = if five_bits { 176 } else { 144 };
    let mut q = [0u8; QK_K];
    // Q4_K as llama.cpp's repacked Q4_K kernels: the min terms in a sum of
    // their own, taken off at the end; one rounding per product-and-add.
    // Q5_K as its tiled kernels (`tiled_add`).
    let (mut sum, mut sum_min) = (0.0f32, 0.0f32);
    for (b, y) in w.chunks_exact(bb).zip(x) {
        unpack_q45k(b, five_bits, &mut q);
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = scale_min(j, &b[4..16]);
            summ += m as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
            let si: i32 = q[j * 32..][..32]
                .iter()
                .zip(&y.qs[j * 32..][..32])
                .map(|(&a, &c)| a as i32 * c as i32)
                .sum();
            sumi += sc as i32 * si;
        }
        if five_bits {
            sum = tiled_add(sum, h(b), sumi, h(&b[2..]), summ, y.d);
        } else {
            sum = (h(b) * y.d).mul_add(sumi as f32, sum);
            sum_min = (h(&b[2..]) * y.d).mul_add(summ as f32, sum_min);
        }
    }
    sum - sum_min
}

/// Dot product of one Q6_K row with Q8_K activations (summed as `tiled_add`).
pub fn dot_q6k(w: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut q = [0i8; QK_K];
    let mut sum = 0.0f32;
    for (b, y) in w.chunks_exact(210).zip(x) {
        unpack_q6k(b, &mut q);
        let mut sumi = 0i32;
        for (g, &sc) in q6k_scales(b).iter().enumerate() {
            let si: i32 = q[g * 16..][..16]
                .iter()
                .zip(&y.qs[g * 16..][..16])
                .map(|(&a, &c)| a as i32 * c as i32)
                .sum();
            sumi += sc as i8 as i32 * si;
        }
        sum = tiled_add(sum, h(&b[208..]), sumi, 0.0, 0, y.d);
    }
    sum
}

/// Matmuls of fewer tokens than this sum k-quant rows as llama.cpp's
/// per-row dot products do (`Rounding::Lanes`); from this many on, as its
/// tiled k-quant matmul does.
pub(crate) const LANES_BELOW: usize = 8;

/// How a k-quant row's float sums are rounded, which depends on how many
/// tokens the matmul has (`LANES_BELOW`), as llama.cpp's do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Rounding {
    /// Its tiled matmul: one rounding per super-block (`tiled_add`).
    Tiled,
    /// Its per-row dot products (`ggml_vec_dot_*_q8_K`, AVX2): eight float
    /// lanes. Q5_K and Q6_K follow them; Q4_K, which llama.cpp runs through
    /// its repacked kernels at every size, does not.
    Lanes,
}

impl Rounding {
    pub fn for_tokens(n_tok: usize) -> Rounding {
        if n_tok < LANES_BELOW {
            Rounding::Lanes
        } else {
            Rounding::Tiled
        }
    }
}

/// A Q6_K row as llama.cpp's AVX2 `ggml_vec_dot_q6_K_q8_K` sums it: per
/// super-block eight i32 lanes, lane m holding values 4m..4m+3 of each 32
/// (stored as q + 32) times their group's scale, less 32 * (scale * bsum)
/// of groups 2m and 2m+1; each lane then converted and added to a float
/// lane with one fused multiply-add by (d * dy); the lanes added at the end
/// as `quant::lane_sum` adds them.
pub fn dot_q6k_lanes(w: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut q = [0i8; QK_K];
    let mut acc = [0.0f32; 8];
    for (b, y) in w.chunks_exact(210).zip(x) {
        unpack_q6k(b, &mut q);
        let sc = |g: usize| q6k_scales(b)[g] as i8 as i32;
        let d = h(&b[208..]) * y.d;
        for (m, a) in acc.iter_mut().enumerate() {
            let mut lane = 0i32;
            for c in 0..8 {
                let p: i32 = (32 * c + 4 * m..32 * c + 4 * m + 4)
                    .map(|v| (q[v] as i32 + 32) * y.qs[v] as i32)
                    .sum();
                lane += sc(2 * c + m / 4) * p;
            }
            lane -= 32
                * (sc(2 * m) * y.bsums[2 * m] as i32 + sc(2 * m + 1) * y.bsums[2 * m + 1] as i32);
            *a = d.mul_add(lane as f32, *a);
        }
    }
    super::quant::lane_sum(&acc)
}

/// A Q5_K row as llama.cpp's AVX2 `ggml_vec_dot_q5_K_q8_K` sums it: per
/// super-block eight i32 lanes, lane m holding values 4m..4m+3 of each
/// sub-block times that sub-block's scale; each lane converted and added to
/// a float lane with one fused multiply-add by (d * dy); the min terms'
/// exact sum fused, times -(dmin * dy), into a float of its own; at the end
/// the lanes added as `quant::lane_sum` adds them, plus that float.
pub fn dot_q5k_lanes(w: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut q = [0u8; QK_K];
    let (mut acc, mut mins) = ([0.0f32; 8], 0.0f32);
    for (b, y) in w.chunks_exact(176).zip(x) {
        unpack_q45k(b, true, &mut q);
        let (mut lanes, mut summ) = ([0i32; 8], 0i32);
        for j in 0..8 {
            let (sc, m) = scale_min(j, &b[4..16]);
            summ += m as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
            for (l, lane) in lanes.iter_mut().enumerate() {
                let v = 32 * j + 4 * l;
                let p: i32 = (v..v + 4).map(|v| q[v] as i32 * y.qs[v] as i32).sum();
                *lane += sc as i32 * p;
            }
        }
        let d = h(b) * y.d;
        for (a, &l) in acc.iter_mut().zip(&lanes) {
            *a = d.mul_add(l as f32, *a);
        }
        mins = (-(h(&b[2..]) * y.d)).mul_add(summ as f32, mins);
    }
    super::quant::lane_sum(&acc) + mins
}

pub fn dequantize_q45k(w: &[u8], five_bits: bool, out: &mut [f32]) {
    let bb = if five_bits { 176 } else { 144 };
    let mut q = [0u8; QK_K];
    for (o, b) in out.chunks_exact_mut(QK_K).zip(w.chunks_exact(bb)) {
        unpack_q45k(b, five_bits, &mut q);
        let (d, dmin) = (h(b), h(&b[2..]));
        for j in 0..8 {
            let (sc, m) = scale_min(j, &b[4..16]);
            let (d1, m1) = (d * sc as f32, dmin * m as f32);
            for l in 0..32 {
                o[j * 32 + l] = d1 * q[j * 32 + l] as f32 - m1;
            }
        }
    }
}

pub fn dequantize_q6k(w: &[u8], out: &mut [f32]) {
    let mut q = [0i8; QK_K];
    for (o, b) in out.chunks_exact_mut(QK_K).zip(w.chunks_exact(210)) {
        unpack_q6k(b, &mut q);
        let d = h(&b[208..]);
        for (e, v) in o.iter_mut().enumerate() {
            *v = d * (q6k_scales(b)[e / 16] as i8) as f32 * q[e] as f32;
        }
    }
}

// ---------------------------------------------------------------------------
// Quantizers: the same searches as ggml's reference quantizers (the ones
// llama.cpp uses without an importance matrix), so files we write hold the
// blocks llama.cpp would write.

/// Best scale and min for `x` quantized to 0..=nmax, searching scales around
/// the plain range/nmax and refitting scale and min by weighted least squares
/// (ggml's make_qkx2_quants). Returns (scale, -min).
#[allow(clippy::too_many_arguments)]
fn fit_scale_min(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let li = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = li as u8;
        let diff = scale * li as f32 + min - x[i];
        best_error += weights[i] * diff * diff;
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let li = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = li as u8;
            let (w, lf) = (weights[i], li as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * diff * diff;
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Q4_K (`five_bits` false) or Q5_K blocks for `x` (a multiple of 256 long).
pub fn quantize_q45k(x: &[f32], five_bits: bool, out: &mut [u8]) {
    let (bb, nmax, rmin, nstep) = if five_bits {
        (176, 31, -0.5, 15)
    } else {
        (144, 15, -1.0, 20)
    };
    for (xs, b) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(bb)) {
        let mut l = [0u8; QK_K];
        let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
        for j in 0..8 {
            let xj = &xs[32 * j..32 * (j + 1)];
            let av_x = (xj.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
            let weights: Vec<f32> = xj.iter().map(|v| av_x + v.abs()).collect();
            (scales[j], mins[j]) = fit_scale_min(
                xj,
                &weights,
                nmax,
                &mut l[32 * j..32 * (j + 1)],
                rmin,
                0.1,
                nstep,
            );
        }
        let max_scale = scales
            .iter()
            .fold(0.0f32, |m, &v| if v > m { v } else { m });
        let max_min = mins.iter().fold(0.0f32, |m, &v| if v > m { v } else { m });
        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
        for j in 0..8 {
            ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
        }
        b.fill(0);
        b[4..16].copy_from_slice(&pack_scale_min(&ls, &lm));
        b[0..2].copy_from_slice(&f16::from_f32(max_scale / 63.0).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(max_min / 63.0).to_le_bytes());
        let (d, dmin) = (h(b), h(&b[2..]));
        for j in 0..8 {
            let (sc, m) = scale_min(j, &b[4..16]);
            let dj = d * sc as f32;
            if dj == 0.0 {
                continue;
            }
            let dm = dmin * m as f32;
            for i in 0..32 {
                l[32 * j + i] = nearest_int((xs[32 * j + i] + dm) / dj).clamp(0, nmax) as u8;
            }
        }
        let qs_at = if five_bits { 48 } else { 16 };
        for c in 0..4 {
            for i in 0..32 {
                let (mut l1, mut l2) = (l[64 * c + i], l[64 * c + 32 + i]);
                if five_bits {
                    if l1 > 15 {
                        l1 -= 16;
                        b[16 + i] |= 1 << (2 * c);
                    }
                    if l2 > 15 {
                        l2 -= 16;
                        b[16 + i] |= 2 << (2 * c);
                    }
                }
                b[qs_at + 32 * c + i] = l1 | (l2 << 4);
            }
        }
    }
}

/// Scale for 16 values quantized to -nmax..nmax-1, weighting by x^2 and
/// trying 18 scales near the plain one (ggml's make_qx_quants, rmse_type 1).
fn fit_scale_signed(x: &[f32], nmax: i32, l: &mut [i8]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-15 {
        l.fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (i, &v) in x.iter().enumerate() {
        let li = quant(iscale, v);
        l[i] = (li + nmax) as i8;
        let (w, lf) = (v * v, li as f32);
        sumlx += w * v * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (mut slx, mut sl2) = (0.0f32, 0.0f32);
        for &v in x {
            let (w, lf) = (v * v, quant(iscale, v) as f32);
            slx += w * v * lf;
            sl2 += w * lf * lf;
        }
        if sl2 > 0.0 && slx * slx > best * sl2 {
            for (i, &v) in x.iter().enumerate() {
                l[i] = (quant(iscale, v) + nmax) as i8;
            }
            scale = slx / sl2;
            best = scale * slx;
        }
    }
    scale
}

/// Q6_K blocks for `x` (a multiple of 256 long).
pub fn quantize_q6k(x: &[f32], out: &mut [u8]) {
    for (xs, b) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(210)) {
        b.fill(0);
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for g in 0..16 {
            scales[g] =
                fit_scale_signed(&xs[16 * g..16 * (g + 1)], 32, &mut l[16 * g..16 * (g + 1)]);
            if scales[g].abs() > max_abs_scale {
                max_abs_scale = scales[g].abs();
                max_scale = scales[g];
            }
        }
        if max_abs_scale < 1e-15 {
            continue;
        }
        let iscale = -128.0 / max_scale;
        b[208..210].copy_from_slice(&f16::from_f32(1.0 / iscale).to_le_bytes());
        for g in 0..16 {
            b[192 + g] = nearest_int(iscale * scales[g]).min(127) as i8 as u8;
        }
        let d = h(&b[208..]);
        for g in 0..16 {
            let dg = d * (b[192 + g] as i8) as f32;
            if dg == 0.0 {
                continue;
            }
            for i in 0..16 {
                l[16 * g + i] = (nearest_int(xs[16 * g + i] / dg).clamp(-32, 31) + 32) as i8;
            }
        }
        for n in 0..2 {
            for i in 0..32 {
                let v = |k: usize| l[128 * n + 32 * k + i] as u8;
                b[64 * n + i] = (v(0) & 0xf) | ((v(2) & 0xf) << 4);
                b[64 * n + 32 + i] = (v(1) & 0xf) | ((v(3) & 0xf) << 4);
                b[128 + 32 * n + i] =
                    (v(0) >> 4) | ((v(1) >> 4) << 2) | ((v(2) >> 4) << 4) | ((v(3) >> 4) << 6);
            }
        }
    }
}
