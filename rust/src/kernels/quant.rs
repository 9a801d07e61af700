//! Matmuls on ggml's block formats, computed the way llama.cpp computes
//! them: the activations are quantized to 8 bits per block first (Q8_0 for
//! Q8_0/Q4_0 weights, Q8_1 for Q4_1, Q8_K for the k-quants), the block dot
//! products are integer sums, and each block's scales multiply in at the
//! end. Following the same arithmetic is what keeps our logits close to
//! llama.cpp's. The 32-value formats live here, the k-quants in `kquant`.

use std::cell::RefCell;

use half::f16;

use super::kquant::{self, BlockQ8K, QK_K};
use super::SharedOut;

pub const QK: usize = 32;

/// Block layouts of the weight formats (ggml's names).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantType {
    Q8_0,
    Q4_0,
    Q4_1,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl QuantType {
    pub const ALL: [QuantType; 6] = [
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q4_K,
        QuantType::Q5_K,
        QuantType::Q6_K,
    ];

    /// Values per block.
    pub fn block_len(self) -> usize {
        if self.is_k() {
            QK_K
        } else {
            QK
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            QuantType::Q8_0 => 34,
            QuantType::Q4_0 => 18,
            QuantType::Q4_1 => 20,
            QuantType::Q4_K => 144,
            QuantType::Q5_K => 176,
            QuantType::Q6_K => 210,
        }
    }

    /// The 256-value super-block formats (activations go to Q8_K).
    pub fn is_k(self) -> bool {
        matches!(self, QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K)
    }

    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_len() * self.block_bytes()
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q8_0 => "q8_0",
            QuantType::Q4_0 => "q4_0",
            QuantType::Q4_1 => "q4_1",
            QuantType::Q4_K => "q4_k",
            QuantType::Q5_K => "q5_k",
            QuantType::Q6_K => "q6_k",
        }
    }
}

/// One block of quantized activations: scale (rounded through f16, as
/// ggml stores it), 32 int8 values, and d * sum(q) (for Q8_1).
#[derive(Clone, Copy, Default)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK],
}

fn h(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Quantize activations `x` (a multiple of 32 long) into blocks, as ggml's
/// x86 quantize_row_q8_0 / q8_1 do (multiply by 127/amax, round half to even).
pub fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8]) {
    #[cfg(target_arch = "x86_64")]
    if super::x86::has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C.
        return unsafe { super::x86::quantize_row_q8(x, out) };
    }
    quantize_row_q8_scalar(x, out)
}

/// The plain `quantize_row_q8` (the oracle for the AVX2 one).
pub fn quantize_row_q8_scalar(x: &[f32], out: &mut [BlockQ8]) {
    for (blk, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in blk.qs.iter_mut().zip(xs) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        blk.d = round_f16(d);
        blk.s = round_f16(sum as f32 * d);
    }
}

/// Dot product of one row of a 32-value format with Q8_0/Q8_1 activations
/// (the AVX2 kernel where the CPU has it, else `dot_row_scalar`).
#[inline]
pub fn dot_row(t: QuantType, w: &[u8], x: &[BlockQ8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::x86::has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C.
        return unsafe { super::x86::dot_row(t, w, x) };
    }
    dot_row_scalar(t, w, x)
}

/// Eight float lanes added as ggml's `hsum_float_8` (and tinyBLAS's
/// `hsum`) adds them.
pub(crate) fn lane_sum(a: &[f32; 8]) -> f32 {
    ((a[4] + a[0]) + (a[6] + a[2])) + ((a[5] + a[1]) + (a[7] + a[3]))
}

/// The plain version of `dot_row`: it defines the arithmetic, and is the
/// oracle for the fast kernels.
pub fn dot_row_scalar(t: QuantType, w: &[u8], x: &[BlockQ8]) -> f32 {
    let mut sum = 0.0f32;
    match t {
        QuantType::Q8_0 => {
            // Eight lanes of four values, as llama.cpp's tinyBLAS sums them.
            let mut lanes = [0.0f32; 8];
            for (b, y) in w.chunks_exact(34).zip(x) {
                for (l, lane) in lanes.iter_mut().enumerate() {
                    let si: i32 = (4 * l..4 * l + 4)
                        .map(|j| (b[2 + j] as i8 as i32) * y.qs[j] as i32)
                        .sum();
                    *lane = (h(b) * y.d).mul_add(si as f32, *lane);
                }
            }
            sum = lane_sum(&lanes);
        }
        QuantType::Q4_0 => {
            for (b, y) in w.chunks_exact(18).zip(x) {
                let mut si = 0i32;
                for (j, &q) in b[2..].iter().enumerate() {
                    si += ((q & 0x0f) as i32 - 8) * y.qs[j] as i32
                        + ((q >> 4) as i32 - 8) * y.qs[j + 16] as i32;
                }
                sum += si as f32 * (h(b) * y.d);
            }
        }
        QuantType::Q4_1 => {
            // As ggml_vec_dot_q4_1_q8_1: eight lanes of four values, the
            // min terms summed on the side.
            let (mut lanes, mut mins) = ([0.0f32; 8], 0.0f32);
            for (b, y) in w.chunks_exact(20).zip(x) {
                let q = |j: usize| if j < 16 { b[4 + j] & 0x0f } else { b[4 + j - 16] >> 4 } as i32;
                for (l, lane) in lanes.iter_mut().enumerate() {
                    let si: i32 = (4 * l..4 * l + 4).map(|j| q(j) * y.qs[j] as i32).sum();
                    *lane = (h(b) * y.d).mul_add(si as f32, *lane);
                }
                mins = h(&b[2..]).mul_add(y.s, mins);
            }
            sum = lane_sum(&lanes) + mins;
        }
        QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K => {
            unreachable!("k-quants take Q8_K activations")
        }
    }
    sum
}

/// Dot product of one k-quant row with Q8_K activations (the AVX2 kernel
/// where the CPU has it, else `dot_row_k_scalar`).
#[inline]
pub fn dot_row_k(t: QuantType, w: &[u8], x: &[BlockQ8K], r: kquant::Rounding) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::x86::has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C.
        return unsafe { super::x86::dot_row_k(t, w, x, r) };
    }
    dot_row_k_scalar(t, w, x, r)
}

/// The plain version of `dot_row_k` (the `kquant` functions).
pub fn dot_row_k_scalar(t: QuantType, w: &[u8], x: &[BlockQ8K], r: kquant::Rounding) -> f32 {
    match t {
        QuantType::Q4_K => kquant::dot_q45k(w, false, x),
        QuantType::Q5_K if r == kquant::Rounding::Lanes => kquant::dot_q5k_lanes(w, x),
        QuantType::Q5_K => kquant::dot_q45k(w, true, x),
        QuantType::Q6_K if r == kquant::Rounding::Lanes => kquant::dot_q6k_lanes(w, x),
        QuantType::Q6_K => kquant::dot_q6k(w, x),
        _ => unreachable!("32-value formats take Q8_0 activations"),
    }
}

/// `dot_row` for four tokens at once: the weights are loaded once for all
/// four. Each result equals `dot_row` for that token alone, bit for bit.
#[inline]
pub fn dot_row4(t: QuantType, w: &[u8], xs: [&[BlockQ8]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if super::x86::has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C.
        return unsafe { super::x86::dot_rows::<4>(t, w, xs) };
    }
    xs.map(|x| dot_row_scalar(t, w, x))
}

/// `dot_row_k` for four tokens at once (see `dot_row4`).
#[inline]
pub fn dot_row_k4(t: QuantType, w: &[u8], xs: [&[BlockQ8K]; 4], r: kquant::Rounding) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if super::x86::has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C.
        return unsafe { super::x86::dot_rows_k::<4>(t, w, xs, r) };
    }
    xs.map(|x| dot_row_k_scalar(t, w, x, r))
}

/// Float32 values of one row (for embeddings and tests).
pub fn dequantize_row(t: QuantType, w: &[u8], out: &mut [f32]) {
    match t {
        QuantType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(w.chunks_exact(34)) {
                let d = h(b);
                for (v, &q) in o.iter_mut().zip(&b[2..]) {
                    *v = d * (q as i8) as f32;
                }
            }
        }
        QuantType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(w.chunks_exact(18)) {
                let d = h(b);
                for (j, &q) in b[2..].iter().enumerate() {
                    o[j] = d * ((q & 0x0f) as i32 - 8) as f32;
                    o[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
                }
            }
        }
        QuantType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(w.chunks_exact(20)) {
                let (d, m) = (h(b), h(&b[2..]));
                for (j, &q) in b[4..].iter().enumerate() {
                    o[j] = d * (q & 0x0f) as f32 + m;
                    o[j + 16] = d * (q >> 4) as f32 + m;
                }
            }
        }
        QuantType::Q4_K => kquant::dequantize_q45k(w, false, out),
        QuantType::Q5_K => kquant::dequantize_q45k(w, true, out),
        QuantType::Q6_K => kquant::dequantize_q6k(w, out),
    }
}

/// C's `(int8_t)v` as ggml's reference quantizers get it on x86: truncation,
/// and 0 for the infinities and NaNs that a scale of 1/subnormal produces
/// (such blocks store d = 0, so the values never matter; the bytes do, for
/// files identical to llama.cpp's and the gguf package's).
fn c_int8(v: f32) -> i8 {
    if v.is_finite() {
        v as i8
    } else {
        0
    }
}

/// Weight blocks for `x` (a multiple of the block length long), as ggml's
/// reference quantizers make them (the blocks llama.cpp's tools write).
pub fn quantize_row(t: QuantType, x: &[f32], out: &mut [u8]) {
    match t {
        QuantType::Q8_0 => {
            for (xs, b) in x.chunks_exact(QK).zip(out.chunks_exact_mut(34)) {
                let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                b[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                for (q, &v) in b[2..].iter_mut().zip(xs) {
                    *q = c_int8((v * id).round()) as u8;
                }
            }
        }
        QuantType::Q4_0 => {
            for (xs, b) in x.chunks_exact(QK).zip(out.chunks_exact_mut(18)) {
                // The value of largest magnitude maps to -8 exactly.
                let (mut amax, mut max) = (0.0f32, 0.0f32);
                for &v in xs {
                    if amax < v.abs() {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                b[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                let q = |v: f32| (c_int8(v * id + 8.5) as u8).min(15);
                for j in 0..QK / 2 {
                    b[2 + j] = q(xs[j]) | (q(xs[j + QK / 2]) << 4);
                }
            }
        }
        QuantType::Q4_1 => {
            for (xs, b) in x.chunks_exact(QK).zip(out.chunks_exact_mut(20)) {
                let min = xs.iter().fold(f32::MAX, |m, &v| if v < m { v } else { m });
                let max = xs.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                b[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                b[2..4].copy_from_slice(&f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (c_int8((v - min) * id + 0.5) as u8).min(15);
                for j in 0..QK / 2 {
                    b[4 + j] = q(xs[j]) | (q(xs[j + QK / 2]) << 4);
                }
            }
        }
        QuantType::Q4_K => kquant::quantize_q45k(x, false, out),
        QuantType::Q5_K => kquant::quantize_q45k(x, true, out),
        QuantType::Q6_K => kquant::quantize_q6k(x, out),
    }
}

thread_local! {
    /// Quantized activations, reused call to call (no allocation per token).
    static ACTIVATIONS: RefCell<Vec<BlockQ8>> = const { RefCell::new(Vec::new()) };
    static ACTIVATIONS_K: RefCell<Vec<BlockQ8K>> = const { RefCell::new(Vec::new()) };
}

/// `out[t][o] = dot(w[o], x[t])` with `w` in blocks of type `t`; the
/// activations are quantized once per call and shared by all rows.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    t: QuantType,
    out: &mut [f32],
    out_stride: usize,
    x: &[f32],
    w: &[u8],
    n_tok: usize,
    n_in: usize,
    n_out: usize,
) {
    assert!(
        n_in % t.block_len() == 0
            && w.len() >= n_out * t.row_bytes(n_in)
            && x.len() >= n_tok * n_in
    );
    assert!(n_tok == 0 || out.len() >= (n_tok - 1) * out_stride + n_out);
    let dst = SharedOut(out.as_mut_ptr());
    if t.is_k() {
        ACTIVATIONS_K.with(|cell| {
            let mut buf = cell.borrow_mut();
            let qx = quantize_activations(&mut buf, x, n_tok, n_in, QK_K, kquant::quantize_row_q8k);
            let row_bytes = t.row_bytes(n_in);
            let r = kquant::Rounding::for_tokens(n_tok);
            let (one, four) = (
                |wr: &[u8], xa: &[BlockQ8K]| dot_row_k(t, wr, xa, r),
                |wr: &[u8], xs: [&[BlockQ8K]; 4]| dot_row_k4(t, wr, xs, r),
            );
            rows_times_activations(dst, out_stride, w, row_bytes, qx, n_tok, n_out, one, four);
        });
    } else {
        ACTIVATIONS.with(|cell| {
            let mut buf = cell.borrow_mut();
            let qx = quantize_activations(&mut buf, x, n_tok, n_in, QK, quantize_row_q8);
            let row_bytes = t.row_bytes(n_in);
            let (one, four) = (
                |wr: &[u8], xa: &[BlockQ8]| dot_row(t, wr, xa),
                |wr: &[u8], xs: [&[BlockQ8]; 4]| dot_row4(t, wr, xs),
            );
            rows_times_activations(dst, out_stride, w, row_bytes, qx, n_tok, n_out, one, four);
        });
    }
}

fn quantize_activations<'a, A: Copy + Default + Send + Sync>(
    buf: &'a mut Vec<A>,
    x: &[f32],
    n_tok: usize,
    n_in: usize,
    block_len: usize,
    quantize: fn(&[f32], &mut [A]),
) -> &'a [A] {
    let nb = n_in / block_len;
    if buf.len() < n_tok * nb {
        buf.resize(n_tok * nb, A::default());
    }
    crate::pool::parallel_chunks(&mut buf[..n_tok * nb], nb.max(1), |t, q| {
        quantize(&x[t * n_in..(t + 1) * n_in], q)
    });
    &buf[..n_tok * nb]
}

/// Every weight row against every token's quantized activations, rows split
/// across the pool in runs. Tokens go four at a time through `dot4` (each
/// weight row loaded once for four tokens), the rest one at a time.
#[allow(clippy::too_many_arguments)]
fn rows_times_activations<A: Sync>(
    dst: SharedOut,
    out_stride: usize,
    w: &[u8],
    row_bytes: usize,
    qx: &[A],
    n_tok: usize,
    n_out: usize,
    dot: impl Fn(&[u8], &[A]) -> f32 + Sync,
    dot4: impl Fn(&[u8], [&[A]; 4]) -> [f32; 4] + Sync,
) {
    let nb = qx.len() / n_tok.max(1);
    let threads = crate::pool::current_threads();
    let rows_per_block = n_out.div_ceil(threads * 8).clamp(1, 64);
    crate::pool::parallel_for(n_out.div_ceil(rows_per_block), |b| {
        let dst = dst;
        let r0 = b * rows_per_block;
        for r in r0..(r0 + rows_per_block).min(n_out) {
            let wr = &w[r * row_bytes..(r + 1) * row_bytes];
            let mut tk = 0;
            while tk + 4 <= n_tok {
                let xs = [0, 1, 2, 3].map(|k| &qx[(tk + k) * nb..(tk + k + 1) * nb]);
                for (k, v) in dot4(wr, xs).into_iter().enumerate() {
                    // SAFETY: (tk + k, r) is written by this block only; the caller asserted the bounds.
                    unsafe { *dst.0.add((tk + k) * out_stride + r) = v };
                }
                tk += 4;
            }
            for tk in tk..n_tok {
                let v = dot(wr, &qx[tk * nb..(tk + 1) * nb]);
                // SAFETY: as above.
                unsafe { *dst.0.add(tk * out_stride + r) = v };
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_data::{rand, rand_blocks};

    /// Activations as the kernels see them: (scale, int8 value) per element.
    fn quantized_activations(t: QuantType, x: &[f32]) -> Vec<(f32, i8)> {
        if t.is_k() {
            let mut q = vec![BlockQ8K::default(); x.len() / QK_K];
            kquant::quantize_row_q8k(x, &mut q);
            q.iter()
                .flat_map(|b| b.qs.iter().map(move |&v| (b.d, v)))
                .collect()
        } else {
            let mut q = vec![BlockQ8::default(); x.len() / QK];
            quantize_row_q8(x, &mut q);
            q.iter()
                .flat_map(|b| b.qs.iter().map(move |&v| (b.d, v)))
                .collect()
        }
    }

    #[test]
    fn quantized_matmul_matches_the_scalar_definition() {
        for t in QuantType::ALL {
            let (n_tok, n_in, n_out) = (3, 512, 17);
            let w = rand_blocks(t, n_out, n_in, 5);
            let x = rand(n_tok * n_in, 9);
            let mut fast = vec![0.0; n_tok * n_out];
            matmul(t, &mut fast, n_out, &x, &w, n_tok, n_in, n_out);
            // The definition, spelled out: quantize x, dequantize both, dot in f64.
            for tk in 0..n_tok {
                let q = quantized_activations(t, &x[tk * n_in..(tk + 1) * n_in]);
                for r in 0..n_out {
                    let mut wf = vec![0.0; n_in];
                    dequantize_row(
                        t,
                        &w[r * t.row_bytes(n_in)..(r + 1) * t.row_bytes(n_in)],
                        &mut wf,
                    );
                    let want: f64 = wf
                        .iter()
                        .zip(&q)
                        .map(|(&w, &(d, v))| w as f64 * d as f64 * v as f64)
                        .sum();
                    let got = fast[tk * n_out + r] as f64;
                    if t == QuantType::Q4_1 {
                        // ggml uses the f16-rounded d*sum(q) for the offset term.
                        let mut bq = vec![BlockQ8::default(); n_in / QK];
                        quantize_row_q8(&x[tk * n_in..(tk + 1) * n_in], &mut bq);
                        let m_err: f64 = bq
                            .iter()
                            .map(|b| {
                                (b.s as f64
                                    - b.d as f64 * b.qs.iter().map(|&v| v as f64).sum::<f64>())
                                .abs()
                            })
                            .sum();
                        assert!((got - want).abs() <= 1e-3 + m_err, "{t:?}");
                    } else {
                        let scale: f64 = wf
                            .iter()
                            .zip(&q)
                            .map(|(&w, &(d, v))| (w as f64 * d as f64 * v as f64).abs())
                            .sum();
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + scale),
                            "{t:?}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Gaussian-ish test data with a few outliers, as real weights have.
    fn weights_like(n: usize, seed: u64) -> Vec<f32> {
        let u = rand(2 * n, seed);
        (0..n)
            .map(|i| {
                let g = (u[2 * i] + u[2 * i + 1]) * 0.7;
                if i % 97 == 0 {
                    g * 4.0
                } else {
                    g
                }
            })
            .collect()
    }

    #[test]
    fn quantize_then_dequantize_stays_within_each_formats_bound() {
        let n = 4096;
        let x = weights_like(n, 21);
        for t in QuantType::ALL {
            let mut blocks = vec![0u8; t.row_bytes(n)];
            quantize_row(t, &x, &mut blocks);
            let mut back = vec![0.0f32; n];
            dequantize_row(t, &blocks, &mut back);
            // Per block: the step between levels, from the block's range.
            for (xs, ys) in x
                .chunks_exact(t.block_len())
                .zip(back.chunks_exact(t.block_len()))
            {
                let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let range = xs.iter().fold(f32::MIN, |m, &v| m.max(v))
                    - xs.iter().fold(f32::MAX, |m, &v| m.min(v));
                // Storing the scale as f16 moves level q by up to q * 2^-11 steps.
                let f16_slack = 1.0 / 2048.0;
                let bound = match t {
                    // Round to nearest of 255 levels over [-amax, amax].
                    QuantType::Q8_0 => amax / 127.0 * (0.5 + 127.0 * f16_slack),
                    // 16 levels with the extreme value at -8: the opposite end may clip one step.
                    QuantType::Q4_0 => amax / 8.0 * (1.0 + 8.0 * f16_slack),
                    QuantType::Q4_1 => range / 15.0 * (0.5 + 15.0 * f16_slack) + amax * f16_slack,
                    // Sub-block scales are themselves quantized (6 bits), so a
                    // value can land up to about one level off.
                    QuantType::Q4_K => range / 15.0 * 1.1,
                    QuantType::Q5_K => range / 31.0 * 1.1,
                    QuantType::Q6_K => amax / 31.0 * 1.1,
                };
                for (a, b) in xs.iter().zip(ys) {
                    assert!((a - b).abs() <= bound, "{t:?}: {a} -> {b} (bound {bound})");
                }
            }
            // And on the whole, the error is what each format is known for.
            let rms =
                |v: &[f32]| (v.iter().map(|a| (a * a) as f64).sum::<f64>() / v.len() as f64).sqrt();
            let err: Vec<f32> = x.iter().zip(&back).map(|(a, b)| a - b).collect();
            let rel = rms(&err) / rms(&x);
            let limit = match t {
                QuantType::Q8_0 => 0.01,
                QuantType::Q6_K => 0.03,
                QuantType::Q5_K => 0.04,
                QuantType::Q4_K | QuantType::Q4_1 => 0.09,
                QuantType::Q4_0 => 0.12,
            };
            eprintln!("{t:?}: relative rms error {rel:.4}");
            assert!(rel <= limit, "{t:?}: relative rms error {rel}");
        }
    }

    #[test]
    fn all_zero_blocks_quantize_to_zero() {
        for t in QuantType::ALL {
            let x = vec![0.0f32; 512];
            let mut blocks = vec![0xffu8; t.row_bytes(512)];
            quantize_row(t, &x, &mut blocks);
            let mut back = vec![1.0f32; 512];
            dequantize_row(t, &blocks, &mut back);
            assert!(back.iter().all(|&v| v == 0.0), "{t:?}");
        }
    }

    #[test]
    fn q8k_activations_round_like_ggml() {
        let x = rand(512, 8);
        let mut q = vec![BlockQ8K::default(); 2];
        kquant::quantize_row_q8k(&x, &mut q);
        for (b, xs) in q.iter().zip(x.chunks_exact(QK_K)) {
            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!((b.d.abs() - amax / 127.0).abs() <= amax * 1e-6);
            for (&qv, &v) in b.qs.iter().zip(xs) {
                assert!((qv as f32 * b.d - v).abs() <= b.d.abs() * 0.5 * 1.0001);
            }
            for (g, &s) in b.bsums.iter().enumerate() {
                assert_eq!(
                    s as i32,
                    b.qs[16 * g..16 * (g + 1)]
                        .iter()
                        .map(|&v| v as i32)
                        .sum::<i32>()
                );
            }
        }
    }

    #[test]
    fn activation_quantization_error_is_bounded() {
        let x = rand(256, 3);
        let mut q = vec![BlockQ8::default(); 8];
        quantize_row_q8(&x, &mut q);
        for (b, xs) in q.iter().zip(x.chunks_exact(QK)) {
            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (&qv, &v) in b.qs.iter().zip(xs) {
                assert!((qv as f32 * b.d - v).abs() <= amax / 127.0 * 0.5 + amax * 1e-3);
            }
        }
    }

    /// Activation blocks of the kind `t` takes, from int8 values and one scale.
    enum Acts {
        Q8(Vec<BlockQ8>),
        Q8K(Vec<BlockQ8K>),
    }

    fn acts_from(t: QuantType, qs: &[i8], d: f32) -> Acts {
        if t.is_k() {
            Acts::Q8K(
                qs.chunks_exact(QK_K)
                    .map(|c| {
                        let mut b = BlockQ8K {
                            d,
                            ..Default::default()
                        };
                        b.qs.copy_from_slice(c);
                        for (s, g) in b.bsums.iter_mut().zip(c.chunks_exact(16)) {
                            *s = g.iter().map(|&v| v as i16).sum();
                        }
                        b
                    })
                    .collect(),
            )
        } else {
            Acts::Q8(
                qs.chunks_exact(QK)
                    .map(|c| {
                        let sum: i32 = c.iter().map(|&v| v as i32).sum();
                        let mut b = BlockQ8 {
                            d,
                            s: round_f16(d * sum as f32),
                            qs: [0; QK],
                        };
                        b.qs.copy_from_slice(c);
                        b
                    })
                    .collect(),
            )
        }
    }

    /// (dispatched, scalar) dot products of one row.
    fn both_dots(t: QuantType, w: &[u8], a: &Acts) -> (f32, f32) {
        match a {
            Acts::Q8(x) => (dot_row(t, w, x), dot_row_scalar(t, w, x)),
            Acts::Q8K(x) => {
                let r = kquant::Rounding::Tiled;
                (dot_row_k(t, w, x, r), dot_row_k_scalar(t, w, x, r))
            }
        }
    }

    /// Sum of the magnitudes of all the terms a dot product adds: for the
    /// formats with a min, |d * q| + |m| per weight (the larger of the values
    /// dequantized with the min's sign as stored and flipped).
    fn term_scale(t: QuantType, w: &[u8], qs: &[i8], d: f32) -> f64 {
        let n = qs.len();
        let mut wf = vec![0.0f32; n];
        dequantize_row(t, w, &mut wf);
        let mut mag: Vec<f64> = wf.iter().map(|&v| v.abs() as f64).collect();
        if matches!(t, QuantType::Q4_1 | QuantType::Q4_K | QuantType::Q5_K) {
            let mut flipped = w.to_vec();
            for blk in flipped.chunks_exact_mut(t.block_bytes()) {
                blk[3] ^= 0x80; // sign of the f16 min at bytes 2..4
            }
            dequantize_row(t, &flipped, &mut wf);
            for (m, &v) in mag.iter_mut().zip(&wf) {
                *m = m.max(v.abs() as f64);
            }
        }
        mag.iter()
            .zip(qs)
            .map(|(&m, &q)| m * (d as f64 * q as f64).abs())
            .sum()
    }

    /// The dispatched dot product (AVX2 where the CPU has it) against the
    /// scalar one: equal up to the order of float additions.
    fn assert_fast_dot_matches(t: QuantType, w: &[u8], qs: &[i8], d: f32, what: &str) {
        let (fast, slow) = both_dots(t, w, &acts_from(t, qs, d));
        let scale = term_scale(t, w, qs, d);
        assert!(
            (fast as f64 - slow as f64).abs() <= 1e-5 * (1.0 + scale),
            "{t:?} {what} ({} values): {fast} vs {slow} (scale {scale})",
            qs.len()
        );
    }

    fn rand_i8(n: usize, seed: u64, max: f32) -> Vec<i8> {
        rand(n, seed)
            .iter()
            .map(|&v| (v * (max + 0.5)).round().clamp(-max, max) as i8)
            .collect()
    }

    fn block_counts(t: QuantType) -> &'static [usize] {
        if t.is_k() {
            &[1, 2, 3, 8]
        } else {
            &[1, 2, 3, 7, 64, 65]
        }
    }

    #[test]
    fn fast_dots_match_scalar_on_random_rows() {
        #[cfg(target_arch = "x86_64")]
        eprintln!("avx2 kernels: {}", super::super::x86::has_avx2());
        for t in QuantType::ALL {
            for (k, &nb) in block_counts(t).iter().enumerate() {
                let n = nb * t.block_len();
                for row in 0..6u64 {
                    let seed = 1000 * k as u64 + row;
                    let w = rand_blocks(t, 1, n, seed);
                    // Activations as the model makes them, and raw full-range int8.
                    let x = rand(n, seed + 77);
                    let q = quantized_activations(t, &x);
                    let qs: Vec<i8> = q.iter().map(|&(_, v)| v).collect();
                    assert_fast_dot_matches(t, &w, &qs, q[0].0, "quantized activations");
                    assert_fast_dot_matches(
                        t,
                        &w,
                        &rand_i8(n, seed + 99, 127.0),
                        0.37,
                        "random int8",
                    );
                }
            }
        }
    }

    #[test]
    fn fast_dots_match_scalar_on_extreme_blocks() {
        let fills: [u8; 7] = [0x00, 0xff, 0x80, 0x7f, 0x0f, 0xf0, 0x81];
        for t in QuantType::ALL {
            let nb = if t.is_k() { 3 } else { 9 };
            let n = nb * t.block_len();
            let acts: [(&str, Vec<i8>); 4] = [
                ("all +127", vec![127; n]),
                ("all -127", vec![-127; n]),
                (
                    "alternating",
                    (0..n)
                        .map(|i| if i % 2 == 0 { 127 } else { -127 })
                        .collect(),
                ),
                (
                    "random signs",
                    rand(n, 5)
                        .iter()
                        .map(|&v| if v < 0.0 { -127 } else { 127 })
                        .collect(),
                ),
            ];
            for (fi, &fill) in fills.iter().enumerate() {
                // Every byte but the f16 scales set to `fill`: all nibbles 0 or 15,
                // int8 weights -128 or 127, Q4_K scales and mins 63, Q6_K scales
                // -128 or 127, ...
                let mut w = rand_blocks(t, 1, n, 3 + fi as u64);
                let keep: &[usize] = match t {
                    QuantType::Q8_0 | QuantType::Q4_0 => &[0, 1],
                    QuantType::Q4_1 | QuantType::Q4_K | QuantType::Q5_K => &[0, 1, 2, 3],
                    QuantType::Q6_K => &[208, 209],
                };
                for blk in w.chunks_exact_mut(t.block_bytes()) {
                    for (i, b) in blk.iter_mut().enumerate() {
                        if !keep.contains(&i) {
                            *b = fill;
                        }
                    }
                    if t == QuantType::Q6_K && fill == 0x81 {
                        // Mixed extreme scales.
                        for g in 0..16 {
                            blk[192 + g] = if g % 3 == 0 { 0x80 } else { 0x7f };
                        }
                    }
                }
                for (what, qs) in &acts {
                    assert_fast_dot_matches(t, &w, qs, 0.5, &format!("fill {fill:#04x}, {what}"));
                }
            }
        }
    }

    #[test]
    fn fast_activation_quantizers_equal_the_plain_ones() {
        let mut cases: Vec<Vec<f32>> = (0..6)
            .map(|s| {
                rand(512, 40 + s)
                    .iter()
                    .map(|v| v * 10f32.powi(s as i32 - 2))
                    .collect()
            })
            .collect();
        cases.push(vec![0.0; 512]);
        // Ties at .5 after scaling, repeated maxima of both signs, a lone outlier.
        cases.push((0..512).map(|i| ((i % 255) as f32 - 127.0) / 2.0).collect());
        cases.push(
            (0..512)
                .map(|i| {
                    if i % 3 == 0 {
                        -4.0
                    } else if i % 3 == 1 {
                        4.0
                    } else {
                        0.5
                    }
                })
                .collect(),
        );
        cases.push(
            (0..512)
                .map(|i| if i == 300 { 1e4 } else { 1e-3 * i as f32 })
                .collect(),
        );
        // The largest magnitude twice with both signs, in a block's last
        // eight values (the first of them, -7, sets the sign) and in its
        // first and a middle eight (+7 first).
        let mut extremes: Vec<f32> = rand(512, 49).iter().map(|v| v * 2.0).collect();
        (extremes[250], extremes[251], extremes[259], extremes[456]) = (-7.0, 7.0, 7.0, -7.0);
        cases.push(extremes);
        for x in &cases {
            let (mut a, mut b) = (vec![BlockQ8::default(); 16], vec![BlockQ8::default(); 16]);
            quantize_row_q8(x, &mut a);
            quantize_row_q8_scalar(x, &mut b);
            for (p, q) in a.iter().zip(&b) {
                assert!(
                    p.qs == q.qs
                        && p.d.to_bits() == q.d.to_bits()
                        && p.s.to_bits() == q.s.to_bits()
                );
            }
            let (mut a, mut b) = (vec![BlockQ8K::default(); 2], vec![BlockQ8K::default(); 2]);
            kquant::quantize_row_q8k(x, &mut a);
            kquant::quantize_row_q8k_scalar(x, &mut b);
            for (p, q) in a.iter().zip(&b) {
                assert!(p.qs == q.qs && p.bsums == q.bsums && p.d.to_bits() == q.d.to_bits());
            }
        }
    }

    #[test]
    fn fast_dots_are_exact_on_integer_data() {
        // With every scale 1 and activations in -1..=1, all sums are small
        // integers, which f32 adds exactly in any order: the results must be
        // equal, which pins down every element's place in the kernels.
        let one = f16::from_f32(1.0).to_le_bytes();
        for t in QuantType::ALL {
            for &nb in block_counts(t) {
                let n = nb * t.block_len();
                for seed in 0..4u64 {
                    let mut w = rand_blocks(t, 1, n, 50 + seed);
                    for blk in w.chunks_exact_mut(t.block_bytes()) {
                        let at: &[usize] = match t {
                            QuantType::Q8_0 | QuantType::Q4_0 => &[0],
                            QuantType::Q4_1 | QuantType::Q4_K | QuantType::Q5_K => &[0, 2],
                            QuantType::Q6_K => &[208],
                        };
                        for &a in at {
                            blk[a..a + 2].copy_from_slice(&one);
                        }
                    }
                    let qs = rand_i8(n, 60 + seed, 1.0);
                    let (fast, slow) = both_dots(t, &w, &acts_from(t, &qs, 1.0));
                    assert_eq!(fast, slow, "{t:?}, {nb} blocks, seed {seed}");
                }
            }
        }
    }

    #[test]
    fn q5k_and_q6k_rows_in_llama_cpps_lanes() {
        // Matmuls of fewer than 8 tokens: the AVX2 dot in llama.cpp's eight
        // lanes equals the scalar one bit for bit, one token or four, and
        // the tiled sum up to float rounding.
        let (lanes, tiled) = (kquant::Rounding::Lanes, kquant::Rounding::Tiled);
        for (t, nb) in [QuantType::Q5_K, QuantType::Q6_K]
            .into_iter()
            .flat_map(|t| [1, 2, 5].map(|nb| (t, nb)))
        {
            for seed in 0..4u64 {
                let n = nb * QK_K;
                let w = rand_blocks(t, 1, n, 80 + seed);
                let qs = rand_i8(n, 90 + seed, 127.0);
                let Acts::Q8K(x) = acts_from(t, &qs, 0.01) else {
                    unreachable!()
                };
                let slow = dot_row_k_scalar(t, &w, &x, lanes);
                assert_eq!(
                    dot_row_k(t, &w, &x, lanes).to_bits(),
                    slow.to_bits(),
                    "{t:?}, {nb} blocks"
                );
                assert_eq!(
                    dot_row_k4(t, &w, [&x; 4], lanes).map(f32::to_bits),
                    [slow.to_bits(); 4]
                );
                let other = dot_row_k_scalar(t, &w, &x, tiled);
                let scale = term_scale(t, &w, &qs, 0.01);
                assert!(
                    (slow as f64 - other as f64).abs() <= 1e-5 * (1.0 + scale),
                    "{t:?}: {slow} vs {other}"
                );
            }
        }
        assert_eq!(kquant::Rounding::for_tokens(7), lanes);
        assert_eq!(kquant::Rounding::for_tokens(8), tiled);
    }

    #[test]
    fn four_token_dots_equal_one_token_dots() {
        for t in QuantType::ALL {
            for (j, &nb) in block_counts(t).iter().enumerate() {
                let n = nb * t.block_len();
                let w = rand_blocks(t, 1, n, 200 + j as u64);
                let qs: Vec<Vec<i8>> = (0..4).map(|k| rand_i8(n, 300 + k, 127.0)).collect();
                let acts: Vec<Acts> = qs
                    .iter()
                    .enumerate()
                    .map(|(k, q)| acts_from(t, q, 0.01 * (k + 1) as f32))
                    .collect();
                let (four, one): ([f32; 4], Vec<f32>) = match &acts[0] {
                    Acts::Q8(_) => {
                        let xs: Vec<&[BlockQ8]> = acts
                            .iter()
                            .map(|a| {
                                if let Acts::Q8(x) = a {
                                    &x[..]
                                } else {
                                    unreachable!()
                                }
                            })
                            .collect();
                        (
                            dot_row4(t, &w, [xs[0], xs[1], xs[2], xs[3]]),
                            xs.iter().map(|x| dot_row(t, &w, x)).collect(),
                        )
                    }
                    Acts::Q8K(_) => {
                        let xs: Vec<&[BlockQ8K]> = acts
                            .iter()
                            .map(|a| {
                                if let Acts::Q8K(x) = a {
                                    &x[..]
                                } else {
                                    unreachable!()
                                }
                            })
                            .collect();
                        let r = kquant::Rounding::Tiled;
                        (
                            dot_row_k4(t, &w, [xs[0], xs[1], xs[2], xs[3]], r),
                            xs.iter().map(|x| dot_row_k(t, &w, x, r)).collect(),
                        )
                    }
                };
                for k in 0..4 {
                    assert_eq!(
                        four[k].to_bits(),
                        one[k].to_bits(),
                        "{t:?}, {nb} blocks, token {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn matmul_over_many_tokens_equals_token_by_token() {
        // 7 tokens: one group of four, then three one at a time.
        for t in QuantType::ALL {
            let (n_tok, n_in, n_out, stride) = (7, 512, 21, 24);
            let w = rand_blocks(t, n_out, n_in, 31);
            let x = rand(n_tok * n_in, 32);
            let mut all = vec![f32::NAN; n_tok * stride];
            matmul(t, &mut all, stride, &x, &w, n_tok, n_in, n_out);
            for tk in 0..n_tok {
                let mut one = vec![0.0f32; n_out];
                matmul(
                    t,
                    &mut one,
                    n_out,
                    &x[tk * n_in..(tk + 1) * n_in],
                    &w,
                    1,
                    n_in,
                    n_out,
                );
                for r in 0..n_out {
                    assert_eq!(
                        all[tk * stride + r].to_bits(),
                        one[r].to_bits(),
                        "{t:?}, token {tk}, row {r}"
                    );
                }
                assert!(
                    all[tk * stride + n_out..(tk + 1) * stride]
                        .iter()
                        .all(|v| v.is_nan()),
                    "{t:?}: gap written"
                );
            }
        }
    }
}
