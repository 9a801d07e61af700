//! exp, SiLU and softmax with ggml's arithmetic: the polynomial `exp` of
//! ggml's AVX-512 kernels (`ggml_v_expf`, after Arm's optimized routines:
//! at most ~1.5 ulp from the true value) and softmax sums in double, 16
//! values at a time. Their results feed matmuls whose inputs are rounded to
//! 8 bits, so matching llama.cpp to the ulp keeps those roundings, and so
//! the logits, equal to llama.cpp's far more often than libm's `expf` would.
//!
//! The plain `exp_ggml` is the definition (and the test oracle); the AVX2
//! version computes the same operations on 8 lanes, bit for bit.

const SHIFT: f32 = 12582912.0; // 0x1.8p23: adding it rounds to an integer
const LOG2E: u32 = 0x3fb8aa3b; // 0x1.715476p+0
const LN2_HI: u32 = 0x3f317200; // 0x1.62e4p-1
const LN2_LO: u32 = 0x35bfbe8e; // 0x1.7f7d1cp-20
const C: [u32; 5] = [
    0x3f7ffff6, // 0x1.ffffecp-1
    0x3efffedb, // 0x1.fffdb6p-2
    0x3e2aaf33, // 0x1.555e66p-3
    0x3d2b9f17, // 0x1.573e2ep-5
    0x3c072010, // 0x1.0e4020p-7
];

#[inline(always)]
fn k(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// `exp(x)` as ggml's AVX-512 `ggml_v_expf` computes it. (Inlined, so that
/// the vector kernels' fallback lanes get the CPU's fused multiply-add
/// rather than a libm call.)
#[inline(always)]
pub fn exp_ggml(x: f32) -> f32 {
    let z = x.mul_add(k(LOG2E), SHIFT);
    let n = z - SHIFT;
    let b = (-n).mul_add(k(LN2_LO), (-n).mul_add(k(LN2_HI), x));
    let u = b * b;
    let j = k(C[4])
        .mul_add(b, k(C[3]))
        .mul_add(u, k(C[2]).mul_add(b, k(C[1])));
    let j = j.mul_add(u, k(C[0]).mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // j * 2^n in one rounding (`vscalefps`): exact in f64, 2^n from its
    // exponent bits (|n| <= 192).
    (j as f64 * f64::from_bits(((n as i64 + 1023) as u64) << 52)) as f32
}

/// SiLU, `x / (1 + exp(-x))`, with `exp_ggml`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp_ggml(0.0 - x))
}

/// `out[i] = silu(gate[i]) * up[i]` (the SwiGLU feed-forward's hidden layer).
pub fn swiglu(out: &mut [f32], gate: &[f32], up: &[f32]) {
    assert!(gate.len() == out.len() && up.len() == out.len());
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if super::f16::has_avx512() {
        // SAFETY: the CPU has AVX-512F; bounds as asserted.
        unsafe { i = x86::swiglu16(out, gate, up) };
    } else if super::x86::has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (`has_avx2` checks both); bounds as asserted.
        unsafe { i = x86::swiglu(out, gate, up) };
    }
    for ((o, &g), &u) in out[i..].iter_mut().zip(&gate[i..]).zip(&up[i..]) {
        *o = silu(g) * u;
    }
}

/// The largest value (NaNs ignored, as `f32::max` ignores them), in 16
/// running maxima: one chain of dependent maxima took most of a decode
/// step's softmax time at long contexts. Which of two equal zeros wins can
/// differ from one chain; `softmax` subtracts it, and either gives the same
/// exponentials.
fn max_of(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (m, &v) in m.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let rest = chunks.remainder().iter().copied();
    m.into_iter().chain(rest).fold(f32::NEG_INFINITY, f32::max)
}

/// In-place softmax as ggml's `soft_max` computes it: `exp_ggml(x - max)`,
/// summed 16 at a time (each 16 in float, pairwise as `_mm512_reduce_add_ps`
/// adds them) into a double, then times the float of 1 / sum.
pub fn softmax(x: &mut [f32]) {
    let max = max_of(x);
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if super::f16::has_avx512() {
        // SAFETY: as in `swiglu`.
        unsafe { i = x86::exp_minus16(x, max) };
    } else if super::x86::has_avx2() {
        // SAFETY: as in `swiglu`.
        unsafe { i = x86::exp_minus(x, max) };
    }
    for v in x[i..].iter_mut() {
        *v = exp_ggml(*v - max);
    }
    // ggml takes its softmaxes over the whole (padded) cache, the positions
    // past the last one masked to zero: a partial last 16 sums as if
    // filled up with zeros.
    let mut sum = 0.0f64;
    for c in x.chunks(16) {
        let lanes: [f32; 16] = std::array::from_fn(|l| c.get(l).copied().unwrap_or(0.0));
        sum += super::f16::reduce16(&lanes) as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{k, C, LN2_HI, LN2_LO, LOG2E, SHIFT};

    /// `exp_ggml` on 8 lanes; lanes whose power of two is out of the normal
    /// range (|n| > 126) are redone by the plain version.
    #[inline(always)]
    unsafe fn exp8(x: __m256) -> __m256 {
        let set = _mm256_set1_ps;
        let r = set(SHIFT);
        let z = _mm256_fmadd_ps(x, set(k(LOG2E)), r);
        let n = _mm256_sub_ps(z, r);
        let b = _mm256_fnmadd_ps(n, set(k(LN2_LO)), _mm256_fnmadd_ps(n, set(k(LN2_HI)), x));
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(set(k(C[4])), b, set(k(C[3]))),
                u,
                _mm256_fmadd_ps(set(k(C[2])), b, set(k(C[1]))),
            ),
            u,
            _mm256_fmadd_ps(set(k(C[0])), b, set(1.0)),
        );
        let far = _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_andnot_ps(set(-0.0), n), set(126.0));
        // 2^n from its exponent bits (n is a whole number in -126..=126 here).
        let p = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        let res = _mm256_mul_ps(j, p);
        if _mm256_movemask_ps(far) == 0 {
            return res;
        }
        let mut v = [0.0f32; 8];
        let mut xs = [0.0f32; 8];
        _mm256_storeu_ps(v.as_mut_ptr(), res);
        _mm256_storeu_ps(xs.as_mut_ptr(), x);
        let m = _mm256_movemask_ps(far);
        for l in 0..8 {
            if m & (1 << l) != 0 {
                v[l] = super::exp_ggml(xs[l]);
            }
        }
        _mm256_loadu_ps(v.as_ptr())
    }

    /// `swiglu` over the whole vectors; returns how many values it did.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn swiglu(out: &mut [f32], gate: &[f32], up: &[f32]) -> usize {
        let n = out.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let s = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0), e));
            _mm256_storeu_ps(
                out.as_mut_ptr().add(i),
                _mm256_mul_ps(s, _mm256_loadu_ps(up.as_ptr().add(i))),
            );
        }
        n
    }

    /// `x[i] = exp_ggml(x[i] - max)` over the whole vectors; returns how many.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_minus(x: &mut [f32], max: f32) -> usize {
        let n = x.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            let p = x.as_mut_ptr().add(i);
            _mm256_storeu_ps(
                p,
                exp8(_mm256_sub_ps(_mm256_loadu_ps(p), _mm256_set1_ps(max))),
            );
        }
        n
    }

    /// `exp_ggml` on 16 lanes, as `ggml_v_expf` itself: `vscalefps` puts
    /// 2^n on in one rounding at any n, and |n| > 192 gives 0 or infinity.
    #[inline(always)]
    unsafe fn exp16(x: __m512) -> __m512 {
        let set = _mm512_set1_ps;
        let r = set(SHIFT);
        let z = _mm512_fmadd_ps(x, set(k(LOG2E)), r);
        let n = _mm512_sub_ps(z, r);
        let b = _mm512_fnmadd_ps(n, set(k(LN2_LO)), _mm512_fnmadd_ps(n, set(k(LN2_HI)), x));
        let u = _mm512_mul_ps(b, b);
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_fmadd_ps(set(k(C[4])), b, set(k(C[3]))),
                u,
                _mm512_fmadd_ps(set(k(C[2])), b, set(k(C[1]))),
            ),
            u,
            _mm512_fmadd_ps(set(k(C[0])), b, set(1.0)),
        );
        let res = _mm512_scalef_ps(j, n);
        let far = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), set(192.0));
        if far == 0 {
            return res;
        }
        let low = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, _mm512_setzero_ps());
        let alt = _mm512_mask_blend_ps(low, set(f32::INFINITY), _mm512_setzero_ps());
        _mm512_mask_blend_ps(far, res, alt)
    }

    /// Lanes `0..n` (n <= 16) of a mask.
    #[inline(always)]
    fn first(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// `swiglu` on AVX-512, the partial last vector masked: does them all.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn swiglu16(out: &mut [f32], gate: &[f32], up: &[f32]) -> usize {
        for i in (0..out.len()).step_by(16) {
            let m = first((out.len() - i).min(16));
            let g = _mm512_maskz_loadu_ps(m, gate.as_ptr().add(i));
            let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
            let s = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0), e));
            let v = _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, up.as_ptr().add(i)));
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), m, v);
        }
        out.len()
    }

    /// `exp_minus` on AVX-512, the partial last vector masked: does them all.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_minus16(x: &mut [f32], max: f32) -> usize {
        for i in (0..x.len()).step_by(16) {
            let m = first((x.len() - i).min(16));
            let p = x.as_mut_ptr().add(i);
            let v = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, p), _mm512_set1_ps(max));
            _mm512_mask_storeu_ps(p, m, exp16(v));
        }
        x.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Vec<f32> {
        let mut v: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.0573).collect();
        v.extend([
            0.0, -0.0, 1e-30, -1e-30, 88.0, 88.5, 89.0, -87.0, -100.0, -104.0, -150.0, 200.0,
            -200.0,
        ]);
        v.extend([f32::INFINITY, f32::NEG_INFINITY]);
        v
    }

    #[test]
    fn max_of_is_the_running_maximum() {
        for n in [1usize, 5, 16, 17, 100, 512, 1030] {
            let mut x = crate::kernels::test_data::rand(n, n as u64);
            if n > 3 {
                x[n / 2] = f32::NAN;
            }
            let want = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max_of(&x).to_bits(), want.to_bits(), "n {n}");
            // The largest in the last, partial 16 too.
            x[n - 1] = 1e3;
            assert_eq!(max_of(&x), 1e3, "n {n}");
        }
        assert_eq!(max_of(&[]), f32::NEG_INFINITY);
    }

    #[test]
    fn exp_is_within_two_ulps_of_libm() {
        for x in values() {
            let (got, want) = (exp_ggml(x), (x as f64).exp() as f32);
            if want.is_infinite() || want == 0.0 || want < f32::MIN_POSITIVE {
                assert!(
                    got == want || (got - want).abs() < 1e-37,
                    "{x}: {got} vs {want}"
                );
                continue;
            }
            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulps <= 2, "exp({x}) = {got}, want {want}: {ulps} ulps");
        }
    }

    /// Each vector kernel this CPU runs (AVX2 and AVX-512 alike, whichever
    /// `swiglu`/`softmax` would pick) against `exp_ggml`/`silu`, every lane.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_vector_path_equals_the_plain_one_bit_for_bit() {
        let g = values();
        let u: Vec<f32> = g.iter().map(|v| 1.0 - v * 0.25).collect();
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        type Swiglu = unsafe fn(&mut [f32], &[f32], &[f32]) -> usize;
        type ExpMinus = unsafe fn(&mut [f32], f32) -> usize;
        let mut paths: Vec<(&str, Swiglu, ExpMinus)> = Vec::new();
        if crate::kernels::x86::has_avx2() {
            paths.push(("avx2", x86::swiglu, x86::exp_minus));
        }
        if crate::kernels::f16::has_avx512() {
            paths.push(("avx512", x86::swiglu16, x86::exp_minus16));
        }
        for (name, swiglu_v, exp_v) in paths {
            for len in [g.len(), 1, 15, 17] {
                let mut out = vec![0.0f32; len];
                // SAFETY: the CPU has the path's features (checked above).
                let done = unsafe { swiglu_v(&mut out, &g[..len], &u[..len]) };
                for i in 0..done {
                    assert!(same(out[i], silu(g[i]) * u[i]), "{name} swiglu({})", g[i]);
                }
                let mut x = g[..len].to_vec();
                // SAFETY: as above.
                let done = unsafe { exp_v(&mut x, 1.5) };
                for i in 0..done {
                    assert!(same(x[i], exp_ggml(g[i] - 1.5)), "{name} exp({})", g[i]);
                }
            }
        }
    }

    #[test]
    fn vector_kernels_equal_the_plain_ones_bit_for_bit() {
        let g = values();
        let u: Vec<f32> = g.iter().map(|v| 1.0 - v * 0.25).collect();
        let mut fast = vec![0.0f32; g.len()];
        swiglu(&mut fast, &g, &u);
        for ((f, &gv), &uv) in fast.iter().zip(&g).zip(&u) {
            let want = silu(gv) * uv;
            assert!(
                f.to_bits() == want.to_bits() || (f.is_nan() && want.is_nan()),
                "{gv}"
            );
        }
        for len in [1, 7, 16, 33, 100] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 37) % 23) as f32 * 0.7 - 8.0)
                .collect();
            let mut a = x.clone();
            softmax(&mut a);
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = x.iter().map(|&v| exp_ggml(v - max)).collect();
            let total: f64 = e.iter().map(|&v| v as f64).sum();
            for (p, q) in a.iter().zip(&e) {
                assert!((*p as f64 - *q as f64 / total).abs() <= 1e-6, "len {len}");
            }
            assert!((a.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-5);
        }
    }
}
