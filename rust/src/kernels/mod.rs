//! Numeric kernels. `scalar` holds the plain reference versions (the test
//! oracle); the functions here are the fast ones the model calls.

/// The first two steps of a transpose of `$n` vectors (a multiple of
/// 4), within each 128-bit lane: `u[4g + j]` holds, in every 128-bit
/// lane, value j (of the lane's four) of vectors 4g..4g+4 (pairs
/// interleaved, then pairs of pairs).
#[cfg(target_arch = "x86_64")]
macro_rules! quads_in_lanes {
    ($v:expr, $n:literal, $ty:ty, $lo:ident, $hi:ident, $shuffle:ident) => {{
        let v = $v;
        let t: [$ty; $n] = std::array::from_fn(|i| {
            let (a, b) = (v[i & !1], v[i | 1]);
            if i % 2 == 0 {
                $lo(a, b)
            } else {
                $hi(a, b)
            }
        });
        let u: [$ty; $n] = std::array::from_fn(|i| {
            let (g, j) = (i / 4, i % 4);
            let (a, b) = (t[4 * g + j / 2], t[4 * g + 2 + j / 2]);
            if j % 2 == 0 {
                $shuffle::<0x44>(a, b)
            } else {
                $shuffle::<0xEE>(a, b)
            }
        });
        u
    }};
}

pub mod activation;
pub mod attention;
pub mod f16;
mod float32;
pub mod kquant;
pub mod packed;
mod packed_k;
mod panel;
pub mod quant;
pub mod scalar;

/// Seeded test data shared by the kernel tests.
#[cfg(test)]
pub(crate) mod test_data {
    use half::f16;

    use super::quant::QuantType;

    pub(crate) fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Random weight rows in each format (valid blocks: f16 scales of a sane
    /// size, any bytes elsewhere).
    pub(crate) fn rand_blocks(t: QuantType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; rows * t.row_bytes(cols)];
        let vals = rand(bytes.len(), seed);
        for (b, v) in bytes.iter_mut().zip(&vals) {
            *b = ((v + 1.0) * 127.5) as u8;
        }
        let scale_at: &[usize] = match t {
            QuantType::Q8_0 | QuantType::Q4_0 => &[0],
            QuantType::Q4_1 | QuantType::Q4_K | QuantType::Q5_K => &[0, 2],
            QuantType::Q6_K => &[208],
        };
        for (i, blk) in bytes.chunks_exact_mut(t.block_bytes()).enumerate() {
            for (k, &at) in scale_at.iter().enumerate() {
                let s =
                    f16::from_f32(0.01 + 0.001 * (i % 7) as f32 - 0.02 * k as f32).to_le_bytes();
                blk[at..at + 2].copy_from_slice(&s);
            }
        }
        bytes
    }
}
#[cfg(target_arch = "x86_64")]
pub mod x86;

/// Which of the float kernels (float32 matmuls, attention's sums) this CPU
/// runs; all of them give the same bits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum FloatIsa {
    /// 16 float lanes (AVX-512F).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// 8 float lanes (AVX2, FMA, F16C).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Plain,
}

impl FloatIsa {
    /// The widest this CPU has.
    pub(crate) fn best() -> FloatIsa {
        #[cfg(target_arch = "x86_64")]
        {
            if f16::has_avx512() {
                return FloatIsa::Avx512;
            }
            if f16::has_f16c_fma() {
                return FloatIsa::Avx2;
            }
        }
        FloatIsa::Plain
    }

    /// Every one this CPU runs (for the tests).
    #[cfg(test)]
    pub(crate) fn all() -> Vec<FloatIsa> {
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut v = vec![FloatIsa::Plain];
        #[cfg(target_arch = "x86_64")]
        {
            if f16::has_f16c_fma() {
                v.push(FloatIsa::Avx2);
            }
            if f16::has_avx512() {
                v.push(FloatIsa::Avx512);
            }
        }
        v
    }
}

/// The squares of `x` (each rounded to float) summed in double.
fn sum_squares_f64(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let lanes = x.chunks_exact(8);
    let rest = lanes.remainder();
    for c in lanes {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += (v * v) as f64;
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for &v in rest {
        sum += (v * v) as f64;
    }
    sum
}

/// RMSNorm of each `dim`-long row of `x` into `out`, scaled by `weight`.
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    for (o, xr) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
        // llama.cpp's arithmetic: float squares summed in double, the mean
        // rounded to float. The output is quantized for the next matmul, so
        // an ulp here can flip an 8-bit rounding and move the logits. Eight
        // sums side by side, not one chain of dependent adds (a few us per
        // call at 2048): in double they differ from one running sum far
        // below the float mean's last bit.
        let sum = sum_squares_f64(xr);
        let mean = (sum / dim as f64) as f32;
        let inv = 1.0 / (mean + eps).sqrt();
        for ((o, &v), &w) in o.iter_mut().zip(xr).zip(weight) {
            *o = w * (v * inv);
        }
    }
}

pub use activation::{silu, softmax, swiglu};
pub use float32::{dot, matmul};

/// A raw output pointer shared by threads that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// Rotate-half RoPE (Hugging Face convention) on one head, in place:
/// dims i and i + rot/2 form a pair, for i < rot/2; dims past `rot` pass.
#[inline]
pub fn rope_rotate_half(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: `has_avx2` checks FMA too.
        return unsafe { rotate_half_fma(head, cos, sin) };
    }
    rotate_half(head, cos, sin)
}

/// The rotation with ggml's roundings: compiled for x86 with FMA, its
/// `x0*cos - x1*sin` and `x0*sin + x1*cos` fuse the first product.
#[inline(always)]
fn rotate_half(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    let (a, b) = head.split_at_mut(half);
    for i in 0..half {
        let (x0, x1) = (a[i], b[i]);
        a[i] = x0.mul_add(cos[i], -(x1 * sin[i]));
        b[i] = x0.mul_add(sin[i], x1 * cos[i]);
    }
}

/// `rotate_half` where `mul_add` is one instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn rotate_half_fma(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    rotate_half(head, cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matmul_matches_scalar() {
        for &(t, k, n) in &[
            (1, 8, 3),
            (5, 37, 19),
            (9, 64, 130),
            (4, 256, 70),
            (13, 3, 1),
            // Whole panels of rows (`panel::panels`) and the rest.
            (12, 16, 32),
            (25, 64, 70),
        ] {
            let x = rand_vec(t * k, 1);
            let w = rand_vec(n * k, 2);
            let mut fast = vec![0.0; t * n];
            let mut slow = vec![0.0; t * n];
            matmul(&mut fast, n, &x, &w, t, k, n);
            scalar::matmul(&mut slow, &x, &w, t, k, n);
            for (a, b) in fast.iter().zip(&slow) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{a} vs {b} for shape {t}x{k}x{n}"
                );
            }
        }
    }

    #[test]
    fn strided_output_leaves_gaps_untouched() {
        let (t, k, n, stride) = (3, 16, 5, 8);
        let x = rand_vec(t * k, 3);
        let w = rand_vec(n * k, 4);
        let mut out = vec![7.0; (t - 1) * stride + n];
        matmul(&mut out, stride, &x, &w, t, k, n);
        assert_eq!(out[n..stride], [7.0, 7.0, 7.0]);
    }

    #[test]
    fn rmsnorm_mean_is_that_of_one_running_double_sum() {
        // The eight side-by-side sums give the float mean of llama.cpp's one
        // running sum: lengths with and without a remainder, values spread
        // over many magnitudes.
        for (seed, n) in [
            (11u64, 20usize),
            (12, 2048),
            (13, 2051),
            (14, 5632),
            (15, 7),
        ] {
            for scale in [1e-3f32, 1.0, 300.0] {
                let x: Vec<f32> = rand_vec(n, seed)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * scale * (1.0 + (i % 13) as f32 * 7.0))
                    .collect();
                let one: f64 = x.iter().map(|&v| (v * v) as f64).sum();
                let ours = sum_squares_f64(&x);
                assert_eq!(
                    (ours / n as f64) as f32,
                    (one / n as f64) as f32,
                    "n {n} scale {scale}"
                );
                assert!((ours - one).abs() <= one * 1e-14);
            }
        }
    }

    #[test]
    fn rmsnorm_softmax_dot_match_scalar() {
        let x = rand_vec(3 * 20, 5);
        let w = rand_vec(20, 6);
        let mut a = vec![0.0; 60];
        let mut b = vec![0.0; 60];
        rmsnorm(&mut a, &x, &w, 1e-5);
        scalar::rmsnorm(&mut b, &x, &w, 1e-5);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-5);
        }
        let mut s1 = rand_vec(33, 7);
        let mut s2 = s1.clone();
        softmax(&mut s1);
        scalar::softmax(&mut s2);
        for (p, q) in s1.iter().zip(&s2) {
            assert!((p - q).abs() < 1e-6);
        }
        let (u, v) = (rand_vec(101, 8), rand_vec(101, 9));
        assert!((dot(&u, &v) - scalar::dot(&u, &v)).abs() < 1e-4);
    }
}
