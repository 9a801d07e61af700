//! Matmuls on ggml's 32-value block formats, computed the way llama.cpp
//! computes them: the activations are quantized to 8 bits per block first
//! (Q8_0 for Q8_0/Q4_0 weights, Q8_1 for Q4_1), the block dot products are
//! integer sums, and each block's scales multiply in at the end. Following
//! the same arithmetic is what keeps our logits close to llama.cpp's.

use std::cell::RefCell;

use half::f16;
use rayon::prelude::*;

use super::SharedOut;

pub const QK: usize = 32;

/// Block layouts of the weight formats (bytes per 32 values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantType {
    Q8_0,
    Q4_0,
    Q4_1,
}

impl QuantType {
    pub fn block_bytes(self) -> usize {
        match self {
            QuantType::Q8_0 => 34,
            QuantType::Q4_0 => 18,
            QuantType::Q4_1 => 20,
        }
    }

    pub fn row_bytes(self, cols: usize) -> usize {
        cols / QK * self.block_bytes()
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

/// Quantize `x` (a multiple of 32 long) into blocks, as ggml's
/// quantize_row_q8_0 / q8_1 do.
pub fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8]) {
    for (blk, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in blk.qs.iter_mut().zip(xs) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        blk.d = round_f16(d);
        blk.s = round_f16(sum as f32 * d);
    }
}

/// Dot product of one weight row (raw blocks) with quantized activations.
pub fn dot_row(t: QuantType, w: &[u8], x: &[BlockQ8]) -> f32 {
    let mut sum = 0.0f32;
    match t {
        QuantType::Q8_0 => {
            for (b, y) in w.chunks_exact(34).zip(x) {
                let mut si = 0i32;
                for (&q, &p) in b[2..].iter().zip(&y.qs) {
                    si += (q as i8 as i32) * p as i32;
                }
                sum += si as f32 * (h(b) * y.d);
            }
        }
        QuantType::Q4_0 => {
            for (b, y) in w.chunks_exact(18).zip(x) {
                let mut si = 0i32;
                for (j, &q) in b[2..].iter().enumerate() {
                    si += ((q & 0x0f) as i32 - 8) * y.qs[j] as i32 + ((q >> 4) as i32 - 8) * y.qs[j + 16] as i32;
                }
                sum += si as f32 * (h(b) * y.d);
            }
        }
        QuantType::Q4_1 => {
            for (b, y) in w.chunks_exact(20).zip(x) {
                let mut si = 0i32;
                for (j, &q) in b[4..].iter().enumerate() {
                    si += (q & 0x0f) as i32 * y.qs[j] as i32 + (q >> 4) as i32 * y.qs[j + 16] as i32;
                }
                sum += (h(b) * y.d) * si as f32 + h(&b[2..]) * y.s;
            }
        }
    }
    sum
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
    }
}

thread_local! {
    /// Quantized activations, reused call to call (no allocation per token).
    static ACTIVATIONS: RefCell<Vec<BlockQ8>> = const { RefCell::new(Vec::new()) };
}

/// `out[t][o] = dot(w[o], x[t])` with `w` in blocks of type `t`; the
/// activations are quantized once per call and shared by all rows.
pub fn matmul(t: QuantType, out: &mut [f32], out_stride: usize, x: &[f32], w: &[u8], n_tok: usize, n_in: usize, n_out: usize) {
    assert!(n_in % QK == 0 && w.len() >= n_out * t.row_bytes(n_in) && x.len() >= n_tok * n_in);
    assert!(n_tok == 0 || out.len() >= (n_tok - 1) * out_stride + n_out);
    let nb = n_in / QK;
    ACTIVATIONS.with(|cell| {
        let mut qx = cell.borrow_mut();
        if qx.len() < n_tok * nb {
            qx.resize(n_tok * nb, BlockQ8::default());
        }
        qx[..n_tok * nb]
            .par_chunks_mut(nb)
            .zip(x[..n_tok * n_in].par_chunks(n_in))
            .for_each(|(q, xr)| quantize_row_q8(xr, q));
        let qx = &qx[..n_tok * nb];
        let rb = t.row_bytes(n_in);
        let threads = rayon::current_num_threads().max(1);
        let rows_per_block = n_out.div_ceil(threads * 8).clamp(1, 64);
        let dst = SharedOut(out.as_mut_ptr());
        (0..n_out.div_ceil(rows_per_block)).into_par_iter().for_each(|b| {
            let dst = dst;
            let r0 = b * rows_per_block;
            for r in r0..(r0 + rows_per_block).min(n_out) {
                let wr = &w[r * rb..(r + 1) * rb];
                for tk in 0..n_tok {
                    let v = dot_row(t, wr, &qx[tk * nb..(tk + 1) * nb]);
                    // SAFETY: (tk, r) is written by this block only; bounds asserted above.
                    unsafe { *dst.0.add(tk * out_stride + r) = v };
                }
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Random weight rows in each format (valid blocks: f16 scales, any nibbles).
    fn rand_blocks(t: QuantType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; rows * t.row_bytes(cols)];
        let vals = rand(bytes.len(), seed);
        for (b, v) in bytes.iter_mut().zip(&vals) {
            *b = ((v + 1.0) * 127.5) as u8;
        }
        let (bb, scales) = (t.block_bytes(), if t == QuantType::Q4_1 { 2 } else { 1 });
        for (i, blk) in bytes.chunks_exact_mut(bb).enumerate() {
            for k in 0..scales {
                let s = f16::from_f32(0.01 + 0.001 * (i % 7) as f32 - 0.02 * k as f32).to_le_bytes();
                blk[2 * k..2 * k + 2].copy_from_slice(&s);
            }
        }
        bytes
    }

    #[test]
    fn quantized_matmul_matches_the_scalar_definition() {
        for t in [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_1] {
            let (n_tok, n_in, n_out) = (3, 96, 17);
            let w = rand_blocks(t, n_out, n_in, 5);
            let x = rand(n_tok * n_in, 9);
            let mut fast = vec![0.0; n_tok * n_out];
            matmul(t, &mut fast, n_out, &x, &w, n_tok, n_in, n_out);
            // The definition, spelled out: quantize x, dequantize both, dot in f64.
            for tk in 0..n_tok {
                let mut q = vec![BlockQ8::default(); n_in / QK];
                quantize_row_q8(&x[tk * n_in..(tk + 1) * n_in], &mut q);
                for r in 0..n_out {
                    let mut wf = vec![0.0; n_in];
                    dequantize_row(t, &w[r * t.row_bytes(n_in)..(r + 1) * t.row_bytes(n_in)], &mut wf);
                    let mut want = 0.0f64;
                    for (bi, blk) in q.iter().enumerate() {
                        for j in 0..QK {
                            want += wf[bi * QK + j] as f64 * blk.d as f64 * blk.qs[j] as f64;
                        }
                    }
                    if t == QuantType::Q4_1 {
                        // ggml uses the f16-rounded d*sum(q) for the offset term.
                        let m_err: f64 = q.iter().map(|b| (b.s as f64 - b.d as f64 * b.qs.iter().map(|&v| v as f64).sum::<f64>()).abs()).sum();
                        assert!((fast[tk * n_out + r] as f64 - want).abs() <= 1e-3 + m_err, "{t:?}");
                    } else {
                        assert!((fast[tk * n_out + r] as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "{t:?}");
                    }
                }
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
}
