//! Matmuls on float16 weight matrices (GGUF F16 files), and llama.cpp's
//! order of the sums of a float16 product (`reduce16`, `dot_f32_f16`), which
//! `attention` follows for a float16 KV cache. The activations are
//! rounded to float16 first, as llama.cpp does for an F16 matmul; products
//! and sums are float32. Half the bytes of float32 weights, so decode reads
//! half the memory. One token reads the rows directly, long batches go
//! through `panel`, the rest through register tiles. AVX2+F16C+FMA (and
//! AVX-512) when the CPU has them, checked at run time; plain Rust
//! otherwise, the plain version being the test oracle.

use std::cell::RefCell;

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::SharedOut;

thread_local! {
    /// Activations rounded to float16 (and back to float32), reused call to call.
    static ACTIVATIONS: RefCell<(Vec<f16>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_f16c_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| has_f16c_fma() && is_x86_feature_detected!("avx512f"))
}

/// Each value rounded to the nearest float16 (ties to even) and back, as
/// `f16::from_f32(v).to_f32()` does, 8 at a time where the CPU has F16C.
pub fn round_to_f16(x: &mut [f32]) {
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if has_f16c_fma() {
        // SAFETY: the CPU has AVX2 and F16C.
        unsafe { i = x86::round_to_f16(x) };
    }
    for v in &mut x[i..] {
        *v = f16::from_f32(*v).to_f32();
    }
}

/// Sixteen partial sums added the way `_mm512_reduce_add_ps` adds them:
/// halves, then quarters, then pairs.
///
/// The attention's sums use llama.cpp's order on AVX-512 CPUs (its
/// tinyBLAS matmuls of the float16 cache): lane `l` adds the products of
/// elements `l, l + 16, l + 32, ...` in turn, then the lanes go through this.
/// The products are exact (float16 values on both sides), so every CPU, with
/// or without fused multiply-adds, gets the same bits.
pub fn reduce16(v: &[f32; 16]) -> f32 {
    let t: [f32; 8] = std::array::from_fn(|l| v[8 + l] + v[l]);
    let q: [f32; 4] = std::array::from_fn(|l| t[4 + l] + t[l]);
    (q[0] + q[2]) + (q[1] + q[3])
}

/// Our index of element `j` of an `n`-long attention head in llama.cpp's
/// order. With `pairs`, our head is llama.cpp's with its rotated pairs (even,
/// odd elements) un-interleaved into halves (llama-architecture GGUF files
/// store q and k that way): its element `2e` is our `e`, its `2e + 1` our
/// `n / 2 + e`.
pub(crate) fn ours(j: usize, n: usize, pairs: bool) -> usize {
    if pairs && n % 2 == 0 {
        (j % 2) * (n / 2) + j / 2
    } else {
        j
    }
}

/// `sum_i a[i] * b[i]` for float32 `a` holding float16 values and float16
/// `b` (attention: a rounded query against a cached key), elements in
/// llama.cpp's order (`ours`): in `reduce16`'s 16 lanes where the length is
/// a multiple of 16, as `ggml_vec_dot_f16` otherwise.
pub fn dot_f32_f16(a: &[f32], b: &[f16], pairs: bool) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if has_f16c_fma() && n % 16 == 0 {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { x86::dot_f32_f16(&a[..n], &b[..n], pairs) };
    }
    if n % 16 != 0 {
        // llama.cpp's tinyBLAS takes whole 16s only; it then calls
        // `ggml_vec_dot_f16`: 64 at a time in four 16-lane sums, the rest
        // added one by one in double.
        let theirs = |j: usize| ours(j, n, pairs);
        let whole = n / 64 * 64;
        let mut acc = [[0.0f32; 16]; 4];
        for j in 0..whole {
            acc[(j / 16) % 4][j % 16] += a[theirs(j)] * b[theirs(j)].to_f32();
        }
        let lanes: [f32; 16] =
            std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
        let mut sum = reduce16(&lanes) as f64;
        for j in whole..n {
            sum += (a[theirs(j)] * b[theirs(j)].to_f32()) as f64;
        }
        return sum as f32;
    }
    let mut lanes = [0.0f32; 16];
    for j in 0..n {
        let e = ours(j, n, pairs);
        lanes[j % 16] += a[e] * b[e].to_f32();
    }
    reduce16(&lanes)
}

/// Rows per register tile, and tokens per tile.
const TILE_ROWS: usize = 4;
const TILE_TOKENS: usize = 3;

/// `out[r * nt + t] = w[r] . x[t]` for up to TILE_ROWS weight rows and
/// TILE_TOKENS activation rows (float32, already rounded to float16).
fn tile<E: TileElem>(w: &[&[E]], x: &[&[f32]], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c_fma() {
        // SAFETY: the CPU supports the features the kernels are compiled for.
        unsafe {
            macro_rules! go {
                ($($r:literal $t:literal),*) => {
                    match (w.len(), x.len()) {
                        $(($r, $t) => return x86::tile::<E, $r, $t>(w, x, out),)*
                        _ => unreachable!("tile larger than {TILE_ROWS}x{TILE_TOKENS}"),
                    }
                };
            }
            go!(1 1, 1 2, 1 3, 2 1, 2 2, 2 3, 3 1, 3 2, 3 3, 4 1, 4 2, 4 3);
        }
    }
    tile_scalar(w, x, out)
}

/// Weight element types of the float kernels: float32, float16 or bfloat16
/// rows, each value widened exactly to float32 as it is loaded.
#[cfg(target_arch = "x86_64")]
pub trait TileElem: x86::Elem + Send + Sync {
    fn to_f32_slice(src: &[Self], dst: &mut [f32]);
}
#[cfg(not(target_arch = "x86_64"))]
pub trait TileElem: Copy + Send + Sync {
    fn to_f32_slice(src: &[Self], dst: &mut [f32]);
    fn to_f32(self) -> f32;
}

impl TileElem for f16 {
    fn to_f32_slice(src: &[f16], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst)
    }
    #[cfg(not(target_arch = "x86_64"))]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl TileElem for half::bf16 {
    fn to_f32_slice(src: &[half::bf16], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst)
    }
    #[cfg(not(target_arch = "x86_64"))]
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

impl TileElem for f32 {
    fn to_f32_slice(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src)
    }
    #[cfg(not(target_arch = "x86_64"))]
    fn to_f32(self) -> f32 {
        self
    }
}

pub fn tile_scalar<E: TileElem>(w: &[&[E]], x: &[&[f32]], out: &mut [f32]) {
    let mut wf = [0.0f32; 256];
    let nt = x.len();
    out[..w.len() * nt].fill(0.0);
    for (r, wr) in w.iter().enumerate() {
        for start in (0..wr.len()).step_by(256) {
            let end = (start + 256).min(wr.len());
            E::to_f32_slice(&wr[start..end], &mut wf[..end - start]);
            for (t, xr) in x.iter().enumerate() {
                out[r * nt + t] += super::dot(&wf[..end - start], &xr[start..end]);
            }
        }
    }
}

/// `out[t][o] = sum_i x[t][i] * w[o][i]`, `w` float16 `[n_out][n_in]`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    out: &mut [f32],
    out_stride: usize,
    x: &[f32],
    w: &[f16],
    n_tok: usize,
    n_in: usize,
    n_out: usize,
) {
    assert!(x.len() >= n_tok * n_in && w.len() >= n_out * n_in);
    assert!(n_tok == 0 || out.len() >= (n_tok - 1) * out_stride + n_out);
    if n_tok == 0 || n_out == 0 {
        return;
    }
    ACTIVATIONS.with(|cell| {
        let (ref mut xh, ref mut xr) = *cell.borrow_mut();
        let n = n_tok * n_in;
        if xr.len() < n {
            xh.resize(n, f16::ZERO);
            xr.resize(n, 0.0);
        }
        // Round through float16, as llama.cpp does, and keep float32 for the FMAs.
        xh[..n].convert_from_f32_slice(&x[..n]);
        xh[..n].convert_to_f32_slice(&mut xr[..n]);
        let xr = &xr[..n];
        // A long batch: whole panels of rows by `panels`, the rest (and
        // everything on a CPU without AVX2) below.
        let base = super::panel::panels(out, out_stride, xr, w, n_tok, n_in, n_out);
        let (w, n_out, out) = (&w[base * n_in..], n_out - base, &mut out[base..]);
        if n_out == 0 {
            return;
        }
        let rows_per_block = rows_per_block(n_in, n_out, crate::pool::current_threads());
        let dst = SharedOut(out.as_mut_ptr());
        crate::pool::parallel_for(n_out.div_ceil(rows_per_block), |b| {
            let dst = dst;
            let (r0, r1) = (b * rows_per_block, ((b + 1) * rows_per_block).min(n_out));
            if n_in % 16 != 0 {
                // Rows not in whole 16s: llama.cpp takes each product with
                // `ggml_vec_dot_f16`, and so do we (`dot_f32_f16`); such
                // matrices are small (a feed-forward width like 172).
                for t in 0..n_tok {
                    for r in r0..r1 {
                        let v = dot_f32_f16(
                            &xr[t * n_in..(t + 1) * n_in],
                            &w[r * n_in..(r + 1) * n_in],
                            false,
                        );
                        // SAFETY: (t, r) is written by this block only; bounds asserted above.
                        unsafe { *dst.0.add(t * out_stride + r) = v };
                    }
                }
            } else if n_tok == 1 {
                // SAFETY: rows r0..r1 of the single output row are this block's alone.
                let out = unsafe { std::slice::from_raw_parts_mut(dst.0.add(r0), r1 - r0) };
                one_token(out, &w[r0 * n_in..r1 * n_in], &xh[..n_in]);
            } else {
                tiles(dst, out_stride, w, xr, r0..r1, n_tok, n_in);
            }
        });
    });
}

/// Rows per task of a matmul on `threads` threads: whole tiles; ~32 KiB of
/// weights per task stays in L1/L2 while every token passes.
fn rows_per_block(n_in: usize, n_out: usize, threads: usize) -> usize {
    ((16384 / n_in.max(1)).clamp(1, 16) * TILE_ROWS)
        .min(n_out.div_ceil(threads * 4).next_multiple_of(TILE_ROWS))
}

/// The rows of `w` (`[n_out][n_in]`) that run `run` of `runs`
/// (`pool::run_start`) of a matmul on `runs` threads reads (all of them for
/// a batch too short for `panel`).
pub fn run_rows(w: &[f16], n_in: usize, n_out: usize, run: usize, runs: usize) -> &[f16] {
    let per = rows_per_block(n_in, n_out, runs);
    let tasks = n_out.div_ceil(per);
    let row = |r| (crate::pool::run_start(r, tasks, runs) * per).min(n_out);
    &w[row(run) * n_in..row(run + 1) * n_in]
}

/// `out[r] = w[r] . x` for the rows of `w` (`x.len()` long each) against one
/// token, a row at a time: one stream through memory, which the prefetchers
/// follow best. The activations are read as float16 (the values the float32
/// copy holds, so the sums are the same): half the bytes, so that a 5632-long
/// row's activations stay in L1 while the weights stream past.
fn one_token(out: &mut [f32], w: &[f16], x: &[f16]) {
    let n = x.len();
    #[cfg(target_arch = "x86_64")]
    if has_f16c_fma() {
        let wide = has_avx512();
        for (o, row) in out.iter_mut().zip(w.chunks_exact(n)) {
            // SAFETY: the CPU supports the features the kernels are compiled for.
            *o = unsafe {
                if wide {
                    x86::row16(row, x)
                } else {
                    x86::row(row, x)
                }
            };
        }
        return;
    }
    for (o, row) in out.iter_mut().zip(w.chunks_exact(n)) {
        *o = row
            .iter()
            .zip(x)
            .map(|(a, b)| a.to_f32() * b.to_f32())
            .sum();
    }
}

/// Every token against weight rows `rows` of `w`, in register tiles.
fn tiles(
    dst: SharedOut,
    out_stride: usize,
    w: &[f16],
    xr: &[f32],
    rows: std::ops::Range<usize>,
    n_tok: usize,
    n_in: usize,
) {
    let (r0, r1) = (rows.start, rows.end);
    let mut sums = [0.0f32; TILE_ROWS * TILE_TOKENS];
    for t0 in (0..n_tok).step_by(TILE_TOKENS) {
        let nt = (n_tok - t0).min(TILE_TOKENS);
        let xs: [&[f32]; TILE_TOKENS] = std::array::from_fn(|k| {
            let t = t0 + k.min(nt - 1);
            &xr[t * n_in..(t + 1) * n_in]
        });
        for rt in (r0..r1).step_by(TILE_ROWS) {
            let nr = (r1 - rt).min(TILE_ROWS);
            let ws: [&[f16]; TILE_ROWS] = std::array::from_fn(|k| {
                let r = rt + k.min(nr - 1);
                &w[r * n_in..(r + 1) * n_in]
            });
            tile(&ws[..nr], &xs[..nt], &mut sums);
            for r in 0..nr {
                for t in 0..nt {
                    // SAFETY: (t0+t, rt+r) is written by this block only; bounds asserted above.
                    unsafe { *dst.0.add((t0 + t) * out_stride + rt + r) = sums[r * nt + t] };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    /// `super::round_to_f16` over whole vectors of 8; returns how many values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn round_to_f16(x: &mut [f32]) -> usize {
        let n = x.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            let p = x.as_mut_ptr().add(i);
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(p));
            _mm256_storeu_ps(p, _mm256_cvtph_ps(h));
        }
        n
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn load16(p: *const f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// `super::reduce16` of lanes 0..8 in `lo` and 8..16 in `hi`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::kernels) unsafe fn reduce16(lo: __m256, hi: __m256) -> f32 {
        hsum(_mm256_add_ps(hi, lo))
    }

    /// `super::reduce16` of llama.cpp's lanes when our `a` holds its even
    /// lanes 0, 2, .., 14 and `b` its odd ones (`pairs` heads).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn reduce16_pairs(a: __m256, b: __m256) -> f32 {
        let half = |v: __m256| {
            let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            _mm_add_ps(q, _mm_movehl_ps(q, q))
        };
        let (a, b) = (half(a), half(b));
        let sa = _mm_add_ss(a, _mm_movehdup_ps(a));
        let sb = _mm_add_ss(b, _mm_movehdup_ps(b));
        _mm_cvtss_f32(_mm_add_ss(sa, sb))
    }

    /// `super::dot_f32_f16` for `a.len()` a multiple of 16.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32_f16(a: &[f32], b: &[f16], pairs: bool) -> f32 {
        let n = a.len();
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let (mut x, mut y) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        if pairs {
            // x: llama.cpp's even lanes (our first half), y: its odd ones.
            let half = n / 2;
            for i in (0..half).step_by(8) {
                x = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(i)), load8(bp.add(i)), x);
                y = _mm256_fmadd_ps(
                    _mm256_loadu_ps(ap.add(half + i)),
                    load8(bp.add(half + i)),
                    y,
                );
            }
            return reduce16_pairs(x, y);
        }
        for i in (0..n).step_by(16) {
            x = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(i)), load8(bp.add(i)), x);
            y = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(i + 8)), load8(bp.add(i + 8)), y);
        }
        reduce16(x, y)
    }

    /// A weight element the tile kernel can load 8 of as float32.
    pub trait Elem: Copy {
        /// # Safety
        /// 8 elements must be readable at `p`; the CPU must have AVX2/F16C.
        unsafe fn load8(p: *const Self) -> __m256;
        /// # Safety
        /// 16 elements must be readable at `p`; the CPU must have AVX-512F/F16C.
        unsafe fn load16(p: *const Self) -> __m512;
        fn to_f32(self) -> f32;
        /// The `len` (< 16) values at `p` in the lanes `m` sets (the lanes
        /// below `len`), zeros in the others: a row's tail.
        /// # Safety
        /// As `load16`, for `len` elements.
        #[inline(always)]
        unsafe fn load16_tail(p: *const Self, m: __mmask16, len: usize) -> __m512 {
            let mut v = [0.0f32; 16];
            for (j, o) in v.iter_mut().enumerate().take(len) {
                *o = (*p.add(j)).to_f32();
            }
            _mm512_maskz_loadu_ps(m, v.as_ptr())
        }
        /// `load16_tail` for 8 lanes (`m`: all bits set in the lanes below `len`).
        /// # Safety
        /// As `load8`, for `len` elements.
        #[inline(always)]
        unsafe fn load8_tail(p: *const Self, m: __m256i, len: usize) -> __m256 {
            let mut v = [0.0f32; 8];
            for (j, o) in v.iter_mut().enumerate().take(len) {
                *o = (*p.add(j)).to_f32();
            }
            _mm256_maskload_ps(v.as_ptr(), m)
        }
    }

    impl Elem for f16 {
        #[inline(always)]
        unsafe fn load8(p: *const f16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
        #[inline(always)]
        unsafe fn load16(p: *const f16) -> __m512 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        }
        fn to_f32(self) -> f32 {
            f16::to_f32(self)
        }
    }

    /// A bfloat16 is a float32's top 16 bits: widened by a shift.
    impl Elem for half::bf16 {
        #[inline(always)]
        unsafe fn load8(p: *const half::bf16) -> __m256 {
            let v = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v))
        }
        #[inline(always)]
        unsafe fn load16(p: *const half::bf16) -> __m512 {
            let v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v))
        }
        fn to_f32(self) -> f32 {
            half::bf16::to_f32(self)
        }
    }

    impl Elem for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn load16(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        fn to_f32(self) -> f32 {
            self
        }
        #[inline(always)]
        unsafe fn load16_tail(p: *const f32, m: __mmask16, _len: usize) -> __m512 {
            _mm512_maskz_loadu_ps(m, p)
        }
        #[inline(always)]
        unsafe fn load8_tail(p: *const f32, m: __m256i, _len: usize) -> __m256 {
            _mm256_maskload_ps(p, m)
        }
    }

    /// One row against one token (`tile` 1x1) with four independent sums,
    /// so that the fused multiply-adds' latency does not bound it: the
    /// one-token matmul's kernel, one stream through memory.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row(w: &[f16], x: &[f16]) -> f32 {
        let n = w.len();
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(load8(wp.add(i + 8 * k)), load8(xp.add(i + 8 * k)), *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(load8(wp.add(i)), load8(xp.add(i)), acc[0]);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        for j in i..n {
            s += w[j].to_f32() * x[j].to_f32();
        }
        s
    }

    /// `row` on 16-lane vectors (AVX-512F).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn row16(w: &[f16], x: &[f16]) -> f32 {
        let n = w.len();
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(load16(wp.add(i + 16 * k)), load16(xp.add(i + 16 * k)), *a);
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = _mm512_fmadd_ps(load16(wp.add(i)), load16(xp.add(i)), acc[0]);
            i += 16;
        }
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(
            _mm512_add_ps(acc[0], acc[1]),
            _mm512_add_ps(acc[2], acc[3]),
        ));
        for j in i..n {
            s += w[j].to_f32() * x[j].to_f32();
        }
        s
    }

    /// An R x T register tile: each weight vector loaded once for T tokens,
    /// each activation vector once for R rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile<E: Elem, const R: usize, const T: usize>(
        w: &[&[E]],
        x: &[&[f32]],
        out: &mut [f32],
    ) {
        let n = w[0].len();
        let full = n / 8 * 8;
        let wp: [*const E; R] = std::array::from_fn(|r| w[r].as_ptr());
        let xp: [*const f32; T] = std::array::from_fn(|t| x[t].as_ptr());
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        let mut i = 0;
        while i < full {
            let xv: [__m256; T] = std::array::from_fn(|t| _mm256_loadu_ps(xp[t].add(i)));
            for r in 0..R {
                let wv = E::load8(wp[r].add(i));
                for t in 0..T {
                    acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
                }
            }
            i += 8;
        }
        for r in 0..R {
            for t in 0..T {
                let mut s = hsum(acc[r][t]);
                for j in full..n {
                    s += w[r][j].to_f32() * x[t][j];
                }
                out[r * T + t] = s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_rows_cover_the_matrix_in_order() {
        for (n_in, n_out) in [(64, 1000), (2048, 256), (100, 7)] {
            let w = vec![f16::ZERO; n_in * n_out];
            for runs in 1..=4 {
                let mut at = 0;
                for r in 0..runs {
                    let rows = run_rows(&w, n_in, n_out, r, runs);
                    assert_eq!(rows.as_ptr() as usize, w[at..].as_ptr() as usize);
                    assert_eq!(rows.len() % n_in, 0);
                    // Where the matmul's task split puts run r.
                    let per = rows_per_block(n_in, n_out, runs);
                    let tasks = n_out.div_ceil(per);
                    assert_eq!(
                        at / n_in,
                        (crate::pool::run_start(r, tasks, runs) * per).min(n_out)
                    );
                    at += rows.len();
                }
                assert_eq!(at, w.len());
            }
        }
    }

    #[test]
    fn rounding_to_f16_in_place_is_halfs_rounding() {
        let mut v: Vec<f32> = (-3000..3000)
            .map(|i| i as f32 * 0.37e-3 + (i as f32).powi(3) * 1e-7)
            .collect();
        v.extend([
            0.0,
            -0.0,
            65504.0,
            65520.0,
            1e-8,
            -6e-8,
            1e6,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        let want: Vec<f32> = v.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
        for len in [v.len(), 7, 9, 16] {
            let mut got = v[..len].to_vec();
            round_to_f16(&mut got);
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.to_bits(), w.to_bits());
            }
        }
    }

    use super::*;

    fn halves(n: usize, seed: u64) -> Vec<f16> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                f16::from_f32(((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0)
            })
            .collect()
    }

    #[test]
    fn fast_tiles_equal_the_plain_ones() {
        for n in [1, 7, 16, 31, 64, 100, 513] {
            let ws: Vec<Vec<f16>> = (0..TILE_ROWS as u64).map(|k| halves(n, 1 + k)).collect();
            let xs: Vec<Vec<f32>> = (0..TILE_TOKENS as u64)
                .map(|k| halves(n, 10 + k).iter().map(|v| v.to_f32()).collect())
                .collect();
            for nr in 1..=TILE_ROWS {
                for nt in 1..=TILE_TOKENS {
                    let w: Vec<&[f16]> = ws[..nr].iter().map(|v| v.as_slice()).collect();
                    let x: Vec<&[f32]> = xs[..nt].iter().map(|v| v.as_slice()).collect();
                    let (mut fast, mut plain) = ([0.0f32; 12], [0.0f32; 12]);
                    tile(&w, &x, &mut fast);
                    tile_scalar(&w, &x, &mut plain);
                    for r in 0..nr {
                        for t in 0..nt {
                            let exact: f64 = w[r]
                                .iter()
                                .zip(x[t])
                                .map(|(a, b)| a.to_f64() * *b as f64)
                                .sum();
                            for got in [fast[r * nt + t], plain[r * nt + t]] {
                                assert!(
                                    (got as f64 - exact).abs() <= 1e-5 * (1.0 + n as f64),
                                    "n={n} {nr}x{nt}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn one_token_rows_equal_the_exact_sums() {
        for n in [1, 7, 16, 31, 64, 100, 513, 5632] {
            let (w, x) = (halves(3 * n, 5), halves(n, 6));
            let exact: Vec<f64> = w
                .chunks(n)
                .map(|r| r.iter().zip(&x).map(|(a, b)| a.to_f64() * b.to_f64()).sum())
                .collect();
            let close = |got: &[f32]| {
                for (g, e) in got.iter().zip(&exact) {
                    assert!(
                        (*g as f64 - e).abs() <= 1e-5 * (1.0 + n as f64),
                        "n={n}: {g} vs {e}"
                    );
                }
            };
            let mut out = [0.0f32; 3];
            one_token(&mut out, &w, &x);
            close(&out);
            #[cfg(target_arch = "x86_64")]
            if has_f16c_fma() {
                // Both widths, whichever `one_token` picked on this CPU.
                let mut kernels: Vec<unsafe fn(&[f16], &[f16]) -> f32> = vec![x86::row];
                if has_avx512() {
                    kernels.push(x86::row16);
                }
                for k in kernels {
                    let got: Vec<f32> = w.chunks(n).map(|r| unsafe { k(r, &x) }).collect();
                    close(&got);
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
            for pairs in [false, true] {
                assert!(
                    (dot_f32_f16(&a, &b, pairs) as f64 - exact).abs() <= 1e-5 * (1.0 + n as f64)
                );
            }
        }
    }

    #[test]
    fn matmul_rounds_activations_to_f16_like_llama_cpp() {
        // 1 token uses the row kernels, 6 the float16 tiles, 13 the float32
        // panel (or, on AVX-512, `panels` where there are 32 rows); rows not
        // in whole 16s (40, 1100) go product by product.
        for (n_tok, n_in) in [
            (1, 40),
            (1, 1100),
            (1, 1104),
            (6, 48),
            (6, 40),
            (13, 48),
            (13, 1104),
            (13, 1100),
        ] {
            matmul_case(n_tok, n_in, 9);
        }
        // On AVX-512, 12 tokens or more take whole 32-row panels (`panels`),
        // in tiles of up to 12 tokens, and the rows past them the float32 panel.
        for (n_tok, n_in, n_out) in [(12, 16, 32), (13, 48, 41), (25, 1104, 64), (40, 64, 97)] {
            matmul_case(n_tok, n_in, n_out);
        }
    }

    fn matmul_case(n_tok: usize, n_in: usize, n_out: usize) {
        let w = halves(n_out * n_in, 3);
        let x: Vec<f32> = halves(n_tok * n_in, 4)
            .iter()
            .map(|v| v.to_f32() + 1e-4)
            .collect();
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
