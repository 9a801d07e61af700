//! Matmuls on float weight matrices computed as float32 (float32 safetensors
//! checkpoints and state dicts, and float16 or bfloat16 ones kept in their
//! 16 bits: each weight widened exactly as it is loaded, so they give the
//! bits their float32 values give). Every output is one sum, whatever the batch around it: 16
//! lanes, lane `l` adding the products of elements `l, l + 16, ...` in turn
//! with fused multiply-adds, then the lanes added as `f16::reduce16` adds
//! them (`dot_plain`, the test oracle). So a token's logits are the same
//! bits alone or in a short batch, and the kernels are free to pick any
//! register tile (rows by tokens) for the CPU: AVX-512 or AVX2+FMA, checked
//! at run time. A CPU without FMA takes the same lanes unfused. A long
//! prefill goes through `panel` (one sum in element order) instead.

use super::f16::{reduce16, TileElem};
use super::{FloatIsa, SharedOut};

/// Lanes of every float32 dot product.
const LANES: usize = 16;

/// `a . b` in the float32 kernels' lanes: the test oracle.
#[cfg(test)]
pub(crate) fn dot_plain(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        lanes[i % LANES] = x.mul_add(*y, lanes[i % LANES]);
    }
    reduce16(&lanes)
}

/// `dot_plain` with each product rounded before it is added: for a CPU
/// without FMA, where a fused `mul_add` is a slow library call.
fn dot_unfused<E: TileElem>(a: &[E], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            lanes[l] += x[l].to_f32() * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        lanes[l] += x.to_f32() * y;
    }
    reduce16(&lanes)
}

/// `a . b` (the shorter length) in the float32 kernels' lanes.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut out = 0.0;
    // SAFETY: one row and one token of n values each; one output.
    unsafe {
        sweep(
            FloatIsa::best(),
            a.as_ptr(),
            b.as_ptr(),
            n,
            1,
            1,
            &mut out,
            1,
        )
    };
    out
}

/// `out[t][o] = sum_i x[t][i] * w[o][i]` for `n_tok` rows of `x`; `w` is
/// `[n_out][n_in]` (the Hugging Face Linear layout). Output rows are
/// `out_stride` apart. Work is split over bands of weight rows, so each band
/// is read from memory once and reused for every token from cache.
pub fn matmul<E: TileElem>(
    out: &mut [f32],
    out_stride: usize,
    x: &[f32],
    w: &[E],
    n_tok: usize,
    n_in: usize,
    n_out: usize,
) {
    assert!(x.len() >= n_tok * n_in && w.len() >= n_out * n_in);
    assert!(n_tok == 0 || out.len() >= (n_tok - 1) * out_stride + n_out);
    if n_tok == 0 || n_out == 0 {
        return;
    }
    // A long batch: whole panels of rows as an outer product, the rest below.
    let base = super::panel::panels(out, out_stride, x, w, n_tok, n_in, n_out);
    let (w, n_out, out) = (&w[base * n_in..], n_out - base, &mut out[base..]);
    if n_out == 0 {
        return;
    }
    let isa = FloatIsa::best();
    let threads = crate::pool::current_threads();
    // Bands of whole tiles: ~16 KiB of weights stays in L1 while every token
    // passes, and small bands keep every thread busy.
    let rows_per_band = ((16384 / (n_in * std::mem::size_of::<E>()).max(1)).clamp(1, 8) * 8)
        .min(n_out.div_ceil(threads * 4).next_multiple_of(8));
    let dst = SharedOut(out.as_mut_ptr());
    crate::pool::parallel_for(n_out.div_ceil(rows_per_band), |b| {
        let dst = dst;
        let (r0, r1) = (b * rows_per_band, ((b + 1) * rows_per_band).min(n_out));
        // SAFETY: rows r0..r1 of w, n_tok rows of x and the outputs (t, r0..r1)
        // are in bounds (asserted above); this band alone writes those outputs.
        unsafe {
            sweep(
                isa,
                w.as_ptr().add(r0 * n_in),
                x.as_ptr(),
                n_in,
                r1 - r0,
                n_tok,
                dst.0.add(r0),
                out_stride,
            )
        };
    });
}

/// `out[t * os + r] = w_r . x_t` for `rows` rows of `w` and `toks` rows of
/// `x`, each `n` long and packed end to end, in `isa`'s register tiles.
///
/// # Safety
/// `w` holds rows * n values, `x` toks * n, and `out` is writable at every
/// `t * os + r`.
#[allow(clippy::too_many_arguments)]
unsafe fn sweep<E: TileElem>(
    isa: FloatIsa,
    w: *const E,
    x: *const f32,
    n: usize,
    rows: usize,
    toks: usize,
    out: *mut f32,
    os: usize,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        FloatIsa::Avx512 => x86::sweep16(w, x, n, rows, toks, out, os),
        #[cfg(target_arch = "x86_64")]
        FloatIsa::Avx2 => x86::sweep8(w, x, n, rows, toks, out, os),
        FloatIsa::Plain => {
            for t in 0..toks {
                let xt = std::slice::from_raw_parts(x.add(t * n), n);
                for r in 0..rows {
                    let wr = std::slice::from_raw_parts(w.add(r * n), n);
                    *out.add(t * os + r) = dot_unfused(wr, xt);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::f16::x86::reduce16;
    use super::TileElem;

    /// Tiles of rows by tokens: `$tile::<R, T>` for tokens in groups of
    /// `$tt` (the rest one at a time) and rows in groups of `$tr` (a lone
    /// token: `$one`; the rest one at a time).
    macro_rules! sweep_with {
        ($tile:ident, $tt:literal, $tr:literal, $one:literal,
         $w:ident, $x:ident, $n:ident, $rows:ident, $toks:ident, $out:ident, $os:ident) => {{
            let mut t = 0;
            while t + $tt <= $toks {
                let (x, out) = ($x.add(t * $n), $out.add(t * $os));
                let mut r = 0;
                while r + $tr <= $rows {
                    $tile::<_, $tr, $tt>($w.add(r * $n), x, $n, out.add(r), $os);
                    r += $tr;
                }
                for r in r..$rows {
                    $tile::<_, 1, $tt>($w.add(r * $n), x, $n, out.add(r), $os);
                }
                t += $tt;
            }
            for t in t..$toks {
                let (x, out) = ($x.add(t * $n), $out.add(t * $os));
                let mut r = 0;
                while r + $one <= $rows {
                    $tile::<_, $one, 1>($w.add(r * $n), x, $n, out.add(r), $os);
                    r += $one;
                }
                for r in r..$rows {
                    $tile::<_, 1, 1>($w.add(r * $n), x, $n, out.add(r), $os);
                }
            }
        }};
    }

    /// `super::sweep` on AVX-512: 4 rows by 4 tokens, or 8 rows of one
    /// token (8 independent sums in flight either way).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn sweep16<E: TileElem>(
        w: *const E,
        x: *const f32,
        n: usize,
        rows: usize,
        toks: usize,
        out: *mut f32,
        os: usize,
    ) {
        sweep_with!(tile16, 4, 4, 8, w, x, n, rows, toks, out, os)
    }

    /// `super::sweep` on AVX2: each sum is two vectors, so 2 rows by 2
    /// tokens, or 4 rows of one token.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn sweep8<E: TileElem>(
        w: *const E,
        x: *const f32,
        n: usize,
        rows: usize,
        toks: usize,
        out: *mut f32,
        os: usize,
    ) {
        sweep_with!(tile8, 2, 2, 4, w, x, n, rows, toks, out, os)
    }

    /// R rows (`n` apart from `w`) by T tokens (`n` apart from `x`), one
    /// 16-lane vector per sum; the last partial vector masked, its lanes
    /// past `n` left as they are.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    unsafe fn tile16<E: TileElem, const R: usize, const T: usize>(
        w: *const E,
        x: *const f32,
        n: usize,
        out: *mut f32,
        os: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        let mut i = 0;
        while i + 16 <= n {
            let xv: [__m512; T] = std::array::from_fn(|t| _mm512_loadu_ps(x.add(t * n + i)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let wv = E::load16(w.add(r * n + i));
                for (a, xv) in acc.iter_mut().zip(&xv) {
                    *a = _mm512_fmadd_ps(wv, *xv, *a);
                }
            }
            i += 16;
        }
        if i < n {
            let m: __mmask16 = (1u32 << (n - i)) as u16 - 1;
            let xv: [__m512; T] =
                std::array::from_fn(|t| _mm512_maskz_loadu_ps(m, x.add(t * n + i)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let wv = E::load16_tail(w.add(r * n + i), m, n - i);
                for (a, xv) in acc.iter_mut().zip(&xv) {
                    *a = _mm512_mask3_fmadd_ps(wv, *xv, *a, m);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (t, a) in acc.iter().enumerate() {
                *out.add(t * os + r) = reduce16(
                    _mm512_castps512_ps256(*a),
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*a))),
                );
            }
        }
    }

    /// `tile16` with each sum in two 8-lane vectors (lanes 0..8, 8..16).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn tile8<E: TileElem, const R: usize, const T: usize>(
        w: *const E,
        x: *const f32,
        n: usize,
        out: *mut f32,
        os: usize,
    ) {
        let mut acc = [[[_mm256_setzero_ps(); 2]; T]; R];
        let mut i = 0;
        while i + 16 <= n {
            for h in 0..2 {
                let xv: [__m256; T] =
                    std::array::from_fn(|t| _mm256_loadu_ps(x.add(t * n + i + 8 * h)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let wv = E::load8(w.add(r * n + i + 8 * h));
                    for (a, xv) in acc.iter_mut().zip(&xv) {
                        a[h] = _mm256_fmadd_ps(wv, *xv, a[h]);
                    }
                }
            }
            i += 16;
        }
        if i < n {
            let left = n - i;
            for h in 0..2 {
                let k = left.saturating_sub(8 * h).min(8) as i32;
                if k == 0 {
                    break;
                }
                // Lanes below k: all bits set (masked loads and blends read the sign bit).
                let m = _mm256_cmpgt_epi32(
                    _mm256_set1_epi32(k),
                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                );
                let xv: [__m256; T] =
                    std::array::from_fn(|t| _mm256_maskload_ps(x.add(t * n + i + 8 * h), m));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let wv = E::load8_tail(w.add(r * n + i + 8 * h), m, k as usize);
                    for (a, xv) in acc.iter_mut().zip(&xv) {
                        let f = _mm256_fmadd_ps(wv, *xv, a[h]);
                        a[h] = _mm256_blendv_ps(a[h], f, _mm256_castsi256_ps(m));
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (t, a) in acc.iter().enumerate() {
                *out.add(t * os + r) = reduce16(a[0], a[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_data::rand;

    const LENGTHS: [usize; 12] = [0, 1, 7, 8, 15, 16, 17, 31, 64, 100, 172, 513];

    #[test]
    fn every_tile_gives_the_plain_sums_bit_for_bit() {
        // Products too small for a float: rounded to -0 they must stay -0
        // through every tail, so a row of at least 16 sums to -0 (a lane
        // masked off that took a product of zeros would hold +0).
        let (tiny_w, tiny_x) = (-1e-30f32, 1e-20f32);
        for isa in FloatIsa::all()
            .into_iter()
            .filter(|&i| i != FloatIsa::Plain)
        {
            for n in LENGTHS {
                for (toks, rows) in [(1, 1), (1, 13), (2, 5), (3, 9), (4, 4), (5, 17), (11, 3)] {
                    let mut w = rand(rows * n, n as u64 + 1);
                    let mut x = rand(toks * n, n as u64 + 2);
                    // Row 0 against token 0: every product underflows.
                    w[..n].fill(tiny_w);
                    x[..n].fill(tiny_x);
                    let os = rows + 3;
                    let mut out = vec![f32::NAN; toks * os];
                    // SAFETY: the sizes are the ones `sweep` asks for.
                    unsafe {
                        sweep(
                            isa,
                            w.as_ptr(),
                            x.as_ptr(),
                            n,
                            rows,
                            toks,
                            out.as_mut_ptr(),
                            os,
                        )
                    };
                    for t in 0..toks {
                        for r in 0..rows {
                            let want = dot_plain(&w[r * n..(r + 1) * n], &x[t * n..(t + 1) * n]);
                            if n >= LANES && (t, r) == (0, 0) {
                                assert_eq!(want.to_bits(), (-0.0f32).to_bits());
                            }
                            assert_eq!(
                                out[t * os + r].to_bits(),
                                want.to_bits(),
                                "{isa:?} n={n} tile {toks}x{rows} at ({t}, {r})"
                            );
                        }
                        assert!(out[t * os + rows..(t + 1) * os].iter().all(|v| v.is_nan()));
                    }
                }
            }
        }
    }

    #[test]
    fn sixteen_bit_weights_give_the_bits_of_their_float32_values() {
        for isa in FloatIsa::all() {
            for n in LENGTHS {
                for (toks, rows) in [(1, 1), (1, 13), (3, 9), (4, 4), (5, 17)] {
                    let w = rand(rows * n, n as u64 + 3);
                    let x = rand(toks * n, n as u64 + 4);
                    let bf: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
                    let hf: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
                    let run = |w: &dyn Fn(&mut [f32])| {
                        let mut out = vec![f32::NAN; toks * rows];
                        w(&mut out);
                        out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    };
                    // SAFETY (each): the sizes are the ones `sweep` asks for.
                    let sweep_of = |out: &mut [f32], wp: &dyn Fn() -> Vec<f32>| unsafe {
                        let wide = wp();
                        sweep(
                            isa,
                            wide.as_ptr(),
                            x.as_ptr(),
                            n,
                            rows,
                            toks,
                            out.as_mut_ptr(),
                            rows,
                        )
                    };
                    let want_bf =
                        run(&|o| sweep_of(o, &|| bf.iter().map(|v| v.to_f32()).collect()));
                    let want_hf =
                        run(&|o| sweep_of(o, &|| hf.iter().map(|v| v.to_f32()).collect()));
                    let got_bf = run(&|o| unsafe {
                        sweep(
                            isa,
                            bf.as_ptr(),
                            x.as_ptr(),
                            n,
                            rows,
                            toks,
                            o.as_mut_ptr(),
                            rows,
                        )
                    });
                    let got_hf = run(&|o| unsafe {
                        sweep(
                            isa,
                            hf.as_ptr(),
                            x.as_ptr(),
                            n,
                            rows,
                            toks,
                            o.as_mut_ptr(),
                            rows,
                        )
                    });
                    assert_eq!(got_bf, want_bf, "{isa:?} bf16 n={n} tile {toks}x{rows}");
                    assert_eq!(got_hf, want_hf, "{isa:?} f16 n={n} tile {toks}x{rows}");
                }
            }
        }
    }

    #[test]
    fn unfused_lanes_are_the_plain_lanes_up_to_rounding() {
        for n in LENGTHS {
            let (a, b) = (rand(n, 3), rand(n, 4));
            let (u, p) = (dot_unfused(&a, &b), dot_plain(&a, &b));
            assert!((u - p).abs() <= 1e-5 * (1.0 + p.abs()), "n={n}: {u} vs {p}");
        }
        // Exact products (small integers): the same bits.
        let a: Vec<f32> = (0..100).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..100).map(|i| (i % 5) as f32).collect();
        assert_eq!(dot_unfused(&a, &b).to_bits(), dot_plain(&a, &b).to_bits());
    }

    #[test]
    fn a_token_gets_the_same_bits_alone_or_in_a_batch() {
        let (n_in, n_out) = (172, 70);
        let w = rand(n_out * n_in, 5);
        for n_tok in 1..12 {
            let x = rand(n_tok * n_in, 6);
            let mut all = vec![0.0; n_tok * n_out];
            matmul(&mut all, n_out, &x, &w, n_tok, n_in, n_out);
            for t in 0..n_tok {
                let mut one = vec![0.0; n_out];
                matmul(
                    &mut one,
                    n_out,
                    &x[t * n_in..(t + 1) * n_in],
                    &w,
                    1,
                    n_in,
                    n_out,
                );
                for r in 0..n_out {
                    assert_eq!(
                        all[t * n_out + r].to_bits(),
                        one[r].to_bits(),
                        "{n_tok} tokens, ({t}, {r})"
                    );
                    let want = if FloatIsa::best() == FloatIsa::Plain {
                        dot_unfused(&w[r * n_in..(r + 1) * n_in], &x[t * n_in..(t + 1) * n_in])
                    } else {
                        dot_plain(&w[r * n_in..(r + 1) * n_in], &x[t * n_in..(t + 1) * n_in])
                    };
                    assert_eq!(one[r].to_bits(), want.to_bits());
                }
            }
        }
    }
}
