//! Matmuls on float16 weight matrices (GGUF F16 files). The activations are
//! rounded to float16 first, as llama.cpp does for an F16 matmul; products
//! and sums are float32. Half the bytes of float32 weights, so decode reads
//! half the memory. AVX2+F16C+FMA when the CPU has them (checked at run
//! time), plain Rust otherwise; the plain version is the test oracle.

use std::cell::RefCell;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::SharedOut;

thread_local! {
    /// Activations as float16, reused call to call.
    static ACTIVATIONS: RefCell<Vec<f16>> = const { RefCell::new(Vec::new()) };
}

#[cfg(target_arch = "x86_64")]
fn has_f16c_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"))
}

/// `sum_i a[i] * b[i]` for float32 `a` and float16 `b` (attention: query
/// against a cached key).
pub fn dot_f32_f16(a: &[f32], b: &[f16]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if has_f16c_fma() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { x86::dot_f32_f16(a, b) };
    }
    a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum()
}

/// `out[i] += p * v[i]` for float16 `v` (attention: weighting a cached value).
pub fn axpy_f16(out: &mut [f32], p: f32, v: &[f16]) {
    debug_assert_eq!(out.len(), v.len());
    #[cfg(target_arch = "x86_64")]
    if has_f16c_fma() {
        // SAFETY: as above.
        return unsafe { x86::axpy_f16(out, p, v) };
    }
    for (o, x) in out.iter_mut().zip(v) {
        *o += p * x.to_f32();
    }
}

/// Dot products of one weight row against up to four activation rows.
fn dot_rows(w: &[f16], x: &[&[f16]], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c_fma() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { x86::dot_rows(w, x, out) };
    }
    dot_rows_scalar(w, x, out)
}

pub fn dot_rows_scalar(w: &[f16], x: &[&[f16]], out: &mut [f32]) {
    let mut wf = [0.0f32; 256];
    let mut xf = [0.0f32; 256];
    let mut acc = [0.0f32; 4];
    for start in (0..w.len()).step_by(256) {
        let end = (start + 256).min(w.len());
        let n = end - start;
        w[start..end].convert_to_f32_slice(&mut wf[..n]);
        for (t, xr) in x.iter().enumerate() {
            xr[start..end].convert_to_f32_slice(&mut xf[..n]);
            acc[t] += super::dot(&wf[..n], &xf[..n]);
        }
    }
    out[..x.len()].copy_from_slice(&acc[..x.len()]);
}

/// `out[t][o] = sum_i x[t][i] * w[o][i]`, `w` float16 `[n_out][n_in]`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(out: &mut [f32], out_stride: usize, x: &[f32], w: &[f16], n_tok: usize, n_in: usize, n_out: usize) {
    assert!(x.len() >= n_tok * n_in && w.len() >= n_out * n_in);
    assert!(n_tok == 0 || out.len() >= (n_tok - 1) * out_stride + n_out);
    if n_tok == 0 || n_out == 0 {
        return;
    }
    ACTIVATIONS.with(|cell| {
        let mut xh = cell.borrow_mut();
        if xh.len() < n_tok * n_in {
            xh.resize(n_tok * n_in, f16::ZERO);
        }
        xh[..n_tok * n_in].convert_from_f32_slice(&x[..n_tok * n_in]);
        let xh = &xh[..n_tok * n_in];
        let threads = rayon::current_num_threads().max(1);
        // ~16 KiB of weights per block stays in L1 while every token passes.
        let rows_per_block = (8192 / n_in.max(1)).clamp(4, 64).min(n_out.div_ceil(threads * 4).max(1));
        let dst = SharedOut(out.as_mut_ptr());
        (0..n_out.div_ceil(rows_per_block)).into_par_iter().for_each(|b| {
            let dst = dst;
            let (r0, r1) = (b * rows_per_block, ((b + 1) * rows_per_block).min(n_out));
            let mut sums = [0.0f32; 4];
            for t0 in (0..n_tok).step_by(4) {
                let nt = (n_tok - t0).min(4);
                let rows: [&[f16]; 4] = std::array::from_fn(|k| {
                    let t = t0 + k.min(nt - 1);
                    &xh[t * n_in..(t + 1) * n_in]
                });
                for r in r0..r1 {
                    dot_rows(&w[r * n_in..(r + 1) * n_in], &rows[..nt], &mut sums);
                    for (k, &v) in sums[..nt].iter().enumerate() {
                        // SAFETY: (t0+k, r) is written by this block only; bounds asserted above.
                        unsafe { *dst.0.add((t0 + k) * out_stride + r) = v };
                    }
                }
            }
        });
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32_f16(a: &[f32], b: &[f16]) -> f32 {
        let n = a.len().min(b.len());
        let full = n / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < full {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), load8(b.as_ptr().add(i)), acc);
            i += 8;
        }
        let mut s = hsum(acc);
        for j in full..n {
            s += a[j] * b[j].to_f32();
        }
        s
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy_f16(out: &mut [f32], p: f32, v: &[f16]) {
        let n = out.len().min(v.len());
        let full = n / 8 * 8;
        let pv = _mm256_set1_ps(p);
        let mut i = 0;
        while i < full {
            let o = out.as_mut_ptr().add(i);
            _mm256_storeu_ps(o, _mm256_fmadd_ps(pv, load8(v.as_ptr().add(i)), _mm256_loadu_ps(o)));
            i += 8;
        }
        for j in full..n {
            out[j] += p * v[j].to_f32();
        }
    }

    /// Up to four dot products sharing each load of `w`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_rows(w: &[f16], x: &[&[f16]], out: &mut [f32]) {
        let n = w.len();
        let nt = x.len();
        debug_assert!(nt <= 4 && x.iter().all(|r| r.len() >= n));
        let full = n / 16 * 16;
        let wp = w.as_ptr();
        if nt == 1 {
            // Decode: two independent accumulator pairs hide FMA latency.
            let xp = x[0].as_ptr();
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = 0;
            while i < full {
                a0 = _mm256_fmadd_ps(load8(wp.add(i)), load8(xp.add(i)), a0);
                a1 = _mm256_fmadd_ps(load8(wp.add(i + 8)), load8(xp.add(i + 8)), a1);
                i += 16;
            }
            let mut s = hsum(_mm256_add_ps(a0, a1));
            for j in full..n {
                s += w[j].to_f32() * x[0][j].to_f32();
            }
            out[0] = s;
            return;
        }
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < full {
            for h in [0, 8] {
                let wv = load8(wp.add(i + h));
                for t in 0..nt {
                    acc[t] = _mm256_fmadd_ps(wv, load8(x[t].as_ptr().add(i + h)), acc[t]);
                }
            }
            i += 16;
        }
        for t in 0..nt {
            let mut s = hsum(acc[t]);
            for j in full..n {
                s += w[j].to_f32() * x[t][j].to_f32();
            }
            out[t] = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn halves(n: usize, seed: u64) -> Vec<f16> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                f16::from_f32(((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0)
            })
            .collect()
    }

    #[test]
    fn fast_dot_equals_the_plain_one() {
        for n in [1, 7, 16, 31, 64, 100, 513] {
            let w = halves(n, 1);
            let xs: Vec<Vec<f16>> = (0..4).map(|k| halves(n, 10 + k)).collect();
            for nt in 1..=4 {
                let rows: Vec<&[f16]> = xs[..nt].iter().map(|v| v.as_slice()).collect();
                let (mut fast, mut plain) = ([0.0f32; 4], [0.0f32; 4]);
                dot_rows(&w, &rows, &mut fast);
                dot_rows_scalar(&w, &rows, &mut plain);
                for t in 0..nt {
                    let exact: f64 = w.iter().zip(rows[t]).map(|(a, b)| a.to_f64() * b.to_f64()).sum();
                    assert!((fast[t] as f64 - exact).abs() <= 1e-5 * (1.0 + n as f64), "n={n} nt={nt}");
                    assert!((plain[t] as f64 - exact).abs() <= 1e-5 * (1.0 + n as f64), "n={n} nt={nt}");
                }
            }
        }
    }

    #[test]
    fn attention_helpers_equal_the_plain_sums() {
        for n in [1, 8, 13, 64, 128] {
            let a: Vec<f32> = halves(n, 7).iter().map(|v| v.to_f32() * 3.0).collect();
            let b = halves(n, 8);
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * y.to_f64()).sum();
            assert!((dot_f32_f16(&a, &b) as f64 - exact).abs() <= 1e-5 * (1.0 + n as f64));
            let mut out = a.clone();
            axpy_f16(&mut out, 0.5, &b);
            for i in 0..n {
                assert_eq!(out[i], a[i] + 0.5 * b[i].to_f32());
            }
        }
    }

    #[test]
    fn matmul_rounds_activations_to_f16_like_llama_cpp() {
        let (n_tok, n_in, n_out) = (6, 40, 9);
        let w = halves(n_out * n_in, 3);
        let x: Vec<f32> = halves(n_tok * n_in, 4).iter().map(|v| v.to_f32() + 1e-4).collect();
        let mut out = vec![0.0f32; n_tok * n_out];
        matmul(&mut out, n_out, &x, &w, n_tok, n_in, n_out);
        for t in 0..n_tok {
            for o in 0..n_out {
                let want: f64 = (0..n_in)
                    .map(|i| w[o * n_in + i].to_f64() * f16::from_f32(x[t * n_in + i]).to_f64())
                    .sum();
                assert!((out[t * n_out + o] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()));
            }
        }
    }
}
