//! The attention's two sums against the KV cache: the scores `q . k` of a
//! group of query heads against a span of cached keys, and the mix
//! `sum_i p_i * v_i` of the cached values.
//!
//! The cache holds each head in blocks of `BLOCK` positions, each block
//! transposed, `[block][dim][position in block]` (see `at`): a head's
//! positions are one contiguous stretch that attention reads front to back,
//! and within a block a dimension's positions lie side by side, so both
//! sums vectorize with no horizontal sums: the scores with 8 keys in a
//! vector's lanes, the mix with 16 consecutive positions in two vectors.
//!
//! The sums are llama.cpp's (its tinyBLAS matmuls on a float16 cache, on an
//! AVX-512 CPU): 16 lanes, lane `l` adding in turn the products of elements
//! `l, l + 16, ...` (scores: elements of the head in llama.cpp's order,
//! `f16::ours`; mix: positions), then the lanes added as `f16::reduce16`
//! adds them. Each product is a fused multiply-add onto its lane; with a
//! float16 cache the products are exact, so any CPU gets the same bits.
//! Heads whose length is not a multiple of 16 take the scores key by key
//! (`Value::dot`), as llama.cpp does.

use super::f16::{ours, reduce16};
use super::FloatIsa;

/// Positions per block of a cached head.
pub(crate) const BLOCK: usize = 32;

/// Longest head the fast score kernel takes, and the most query values it
/// takes at once (larger groups go in parts).
const MAX_HD: usize = 256;
pub(crate) const MAX_Q: usize = 2048;

/// Where element `e` of position `i` sits in a cached head of `hd` elements.
#[inline(always)]
pub fn at(e: usize, i: usize, hd: usize) -> usize {
    ((i / BLOCK) * hd + e) * BLOCK + i % BLOCK
}

/// Values a cached head of `hd` elements takes for `n_ctx` positions.
pub fn head_len(hd: usize, n_ctx: usize) -> usize {
    n_ctx.div_ceil(BLOCK) * BLOCK * hd
}

/// A cache element: float32 or float16.
pub trait Value: Copy + Send + Sync + 'static {
    const ZERO: Self;
    fn to_f32(self) -> f32;
    /// `q . k` for one key gathered into `k` (heads not in whole 16s).
    fn dot(q: &[f32], k: &[Self], pairs: bool) -> f32;
    /// # Safety
    /// 8 elements must be readable at `p`; the CPU must have AVX2/F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Value for f32 {
    const ZERO: f32 = 0.0;
    fn to_f32(self) -> f32 {
        self
    }
    fn dot(q: &[f32], k: &[f32], _pairs: bool) -> f32 {
        super::dot(q, k)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl Value for half::f16 {
    const ZERO: half::f16 = half::f16::ZERO;
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn dot(q: &[f32], k: &[half::f16], pairs: bool) -> f32 {
        super::f16::dot_f32_f16(q, k, pairs)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const half::f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// `out[h * stride + i - first] = q_h . k_i` for each `hd`-long query `q_h`
/// in `q` and each key `i` in `first..n` of a cached head (`at`).
/// `pairs`: the heads' halves are llama.cpp's even and odd elements.
/// `values`: the head's values, which `mix_heads` reads next; the 16-lane
/// kernel asks for their rows as it goes (they are rarely in cache: a
/// decode step reads each layer's cache once).
#[allow(clippy::too_many_arguments)]
pub fn dot_heads<T: Value>(
    q: &[f32],
    hd: usize,
    keys: &[T],
    first: usize,
    n: usize,
    out: &mut [f32],
    stride: usize,
    pairs: bool,
    values: Option<&[T]>,
) {
    dot_heads_with(
        FloatIsa::best(),
        q,
        hd,
        keys,
        first,
        n,
        out,
        stride,
        pairs,
        values,
    )
}

#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn dot_heads_with<T: Value>(
    k: FloatIsa,
    q: &[f32],
    hd: usize,
    keys: &[T],
    first: usize,
    n: usize,
    out: &mut [f32],
    stride: usize,
    pairs: bool,
    values: Option<&[T]>,
) {
    let heads = q.len() / hd.max(1);
    if n <= first || heads == 0 {
        return;
    }
    assert!(keys.len() >= head_len(hd, n));
    assert!(out.len() >= (heads - 1) * stride + n - first && n - first <= stride);
    // Prefetches are hints: a short values slice only goes unasked for.
    let values = values.filter(|v| v.len() >= head_len(hd, n));
    #[cfg(target_arch = "x86_64")]
    if k != FloatIsa::Plain && hd % 16 == 0 && hd <= MAX_HD {
        for (c, part) in q.chunks(MAX_Q / hd * hd).enumerate() {
            let o = &mut out[c * (MAX_Q / hd) * stride..];
            let (keys, o) = (keys.as_ptr(), o.as_mut_ptr());
            // SAFETY: `k` is one the CPU has; the sizes are asserted above.
            unsafe {
                if k == FloatIsa::Avx512 {
                    let v = values.map_or(std::ptr::null(), |v| v.as_ptr());
                    x86::dot_heads_512(part, hd, keys, first, n, o, stride, pairs, v)
                } else {
                    x86::dot_heads(part, hd, keys, first, n, o, stride, pairs)
                }
            };
        }
        return;
    }
    dot_heads_plain(q, hd, keys, first, n, out, stride, pairs)
}

/// `out_h[d] = sum_i p[h * p_stride + i - first] * v_i[d]` over the
/// positions `i` in `first..n` of a cached head (`at`), for each `hd`-long
/// head `out_h` of `out`. Position i goes to lane i % 16, as in llama.cpp's
/// product over the whole cache (where positions before `first` weigh 0).
#[allow(clippy::too_many_arguments)]
pub fn mix_heads<T: Value>(
    out: &mut [f32],
    hd: usize,
    p: &[f32],
    p_stride: usize,
    values: &[T],
    first: usize,
    n: usize,
) {
    mix_heads_with(FloatIsa::best(), out, hd, p, p_stride, values, first, n)
}

#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn mix_heads_with<T: Value>(
    k: FloatIsa,
    out: &mut [f32],
    hd: usize,
    p: &[f32],
    p_stride: usize,
    values: &[T],
    first: usize,
    n: usize,
) {
    let heads = out.len() / hd.max(1);
    if heads == 0 {
        return;
    }
    if n <= first {
        out.fill(0.0);
        return;
    }
    assert!(values.len() >= head_len(hd, n));
    assert!(p.len() >= (heads - 1) * p_stride + n - first && n - first <= p_stride);
    #[cfg(target_arch = "x86_64")]
    if k != FloatIsa::Plain && hd <= MAX_HD {
        // SAFETY: `k` is one the CPU has; the sizes are asserted above.
        unsafe {
            if k == FloatIsa::Avx512 {
                x86::mix_heads_512(out, hd, p, p_stride, values.as_ptr(), first, n)
            } else {
                x86::mix_heads(out, hd, p, p_stride, values.as_ptr(), first, n)
            }
        };
        return;
    }
    mix_heads_plain(out, hd, p, p_stride, values, first, n)
}

/// `dot_heads` one key and one head at a time: the test oracle.
#[allow(clippy::too_many_arguments)]
pub fn dot_heads_plain<T: Value>(
    q: &[f32],
    hd: usize,
    keys: &[T],
    first: usize,
    n: usize,
    out: &mut [f32],
    stride: usize,
    pairs: bool,
) {
    // One key gathered; on the stack for the heads there are.
    let mut stack = [T::ZERO; MAX_HD];
    let mut heap = Vec::new();
    let key: &mut [T] = if hd <= MAX_HD {
        &mut stack[..hd]
    } else {
        heap.resize(hd, T::ZERO);
        &mut heap
    };
    for i in first..n {
        for (e, k) in key.iter_mut().enumerate() {
            *k = keys[at(e, i, hd)];
        }
        for (h, qh) in q.chunks_exact(hd).enumerate() {
            out[h * stride + i - first] = if hd % 16 == 0 {
                let mut lanes = [0.0f32; 16];
                for j in 0..hd {
                    let e = ours(j, hd, pairs);
                    lanes[j % 16] = qh[e].mul_add(key[e].to_f32(), lanes[j % 16]);
                }
                reduce16(&lanes)
            } else {
                T::dot(qh, key, pairs)
            };
        }
    }
}

/// `mix_heads` one output at a time: the test oracle.
#[allow(clippy::too_many_arguments)]
pub fn mix_heads_plain<T: Value>(
    out: &mut [f32],
    hd: usize,
    p: &[f32],
    p_stride: usize,
    values: &[T],
    first: usize,
    n: usize,
) {
    for (h, oh) in out.chunks_exact_mut(hd).enumerate() {
        let ph = &p[h * p_stride..h * p_stride + n - first];
        for (d, o) in oh.iter_mut().enumerate() {
            let mut lanes = [0.0f32; 16];
            for (k, w) in ph.iter().enumerate() {
                let i = first + k;
                lanes[i % 16] = w.mul_add(values[at(d, i, hd)].to_f32(), lanes[i % 16]);
            }
            *o = reduce16(&lanes);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::f16::x86::reduce16;
    use super::{at, ours, Value, BLOCK, MAX_HD, MAX_Q};

    /// The queries `q` (heads of `hd`) in llama.cpp's element order into
    /// `ql`; returns where each element, in that order, starts in a block.
    ///
    /// # Safety
    /// `ql` must take `q.len()` values.
    #[inline(always)]
    unsafe fn llama_order(q: &[f32], hd: usize, pairs: bool, ql: *mut f32) -> [usize; MAX_HD] {
        for (h, qh) in q.chunks_exact(hd).enumerate() {
            for j in 0..hd {
                *ql.add(h * hd + j) = qh[ours(j, hd, pairs)];
            }
        }
        let mut line = [0usize; MAX_HD];
        for (j, l) in line[..hd].iter_mut().enumerate() {
            *l = at(ours(j, hd, pairs), 0, hd);
        }
        line
    }

    /// Lanes `lo..hi` of the `W` values at `p` (the others zero), as float32.
    #[inline(always)]
    unsafe fn load_lanes<T: Value>(p: *const T, lo: usize, hi: usize) -> __m256 {
        if lo == 0 && hi == 8 {
            return T::load8(p);
        }
        let mut tmp = [T::ZERO; 8];
        for l in lo..hi {
            tmp[l] = *p.add(l);
        }
        T::load8(tmp.as_ptr())
    }

    /// `super::dot_heads` for `hd % 16 == 0`, `hd <= MAX_HD`: a block of the
    /// cache at a time, its elements loaded once (in llama.cpp's order) for
    /// all the heads; then per 8 keys and head, the 16 lanes of each key in
    /// 16 vectors (lane = key), added as `reduce16` adds them, four heads at
    /// a time (`head_sums8`).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn dot_heads<T: Value>(
        q: &[f32],
        hd: usize,
        keys: *const T,
        first: usize,
        n: usize,
        out: *mut f32,
        stride: usize,
        pairs: bool,
    ) {
        let mut ql = std::mem::MaybeUninit::<[f32; MAX_Q]>::uninit();
        let ql = ql.as_mut_ptr() as *mut f32;
        let line = llama_order(q, hd, pairs, ql);
        let heads = q.len() / hd;
        // A block's keys, 8 at a time (lane = key): `kf[s * hd + j]` holds
        // element j of keys 8s..8s+8.
        let mut kf = std::mem::MaybeUninit::<[__m256; 4 * MAX_HD]>::uninit();
        let kf = kf.as_mut_ptr() as *mut __m256;
        const SUB: usize = BLOCK / 8;
        let mut b0 = first / BLOCK * BLOCK;
        prefetch_start(keys, hd, b0, n, AHEAD);
        while b0 < n {
            // Keys b0 + 8s + lo .. b0 + 8s + hi of each 8 are in the span.
            let part: [(usize, usize); SUB] = std::array::from_fn(|s| {
                let i0 = b0 + 8 * s;
                (first.clamp(i0, i0 + 8) - i0, n.clamp(i0, i0 + 8) - i0)
            });
            // Each element's row of the block read once, front to back.
            let block = keys.add(at(0, b0, hd));
            let ahead = b0 + AHEAD * BLOCK;
            if b0 >= first && b0 + BLOCK <= n {
                if ahead < n {
                    load_block::<T, true>(kf, block, &line[..hd], keys.add(at(0, ahead, hd)));
                } else {
                    load_block::<T, false>(kf, block, &line[..hd], block);
                }
            } else {
                for j in 0..hd {
                    prefetch_row(keys, hd, ahead, j, n);
                    let l = block.add(line[j]);
                    for (s, &(lo, hi)) in part.iter().enumerate() {
                        if lo < hi {
                            *kf.add(s * hd + j) = load_lanes(l.add(8 * s), lo, hi);
                        }
                    }
                }
            }
            for (s, &(lo, hi)) in part.iter().enumerate() {
                if lo >= hi {
                    continue;
                }
                let kf = kf.add(s * hd);
                let mut h = 0;
                while h < heads {
                    let qh = ql.add(h * hd);
                    let r: &[__m256] = match heads - h {
                        4.. => &head_sums8::<4>(qh, hd, kf),
                        2 | 3 => &head_sums8::<2>(qh, hd, kf),
                        _ => &head_sums8::<1>(qh, hd, kf),
                    };
                    for &r in r {
                        let dst = out.add(h * stride + b0 + 8 * s + lo - first);
                        if lo == 0 && hi == 8 {
                            _mm256_storeu_ps(dst, r);
                        } else {
                            let mut tmp = [0.0f32; 8];
                            _mm256_storeu_ps(tmp.as_mut_ptr(), r);
                            std::ptr::copy_nonoverlapping(tmp.as_ptr().add(lo), dst, hi - lo);
                        }
                        h += 1;
                    }
                }
            }
            b0 += BLOCK;
        }
    }

    /// `x86::head_sums` with 8 keys in a vector's lanes.
    #[inline(always)]
    unsafe fn head_sums8<const H: usize>(
        q: *const f32,
        hd: usize,
        kf: *const __m256,
    ) -> [__m256; H] {
        let lane = |l: usize| -> [__m256; H] {
            let mut acc = [_mm256_setzero_ps(); H];
            for j in (l..hd).step_by(16) {
                let k = *kf.add(j);
                for (h, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_set1_ps(*q.add(h * hd + j)), k, *a);
                }
            }
            acc
        };
        let add = |a: [__m256; H], b: [__m256; H]| -> [__m256; H] {
            std::array::from_fn(|h| _mm256_add_ps(a[h], b[h]))
        };
        let t = |m: usize| add(lane(m + 8), lane(m));
        let u = |l: usize| add(t(4 + l), t(l));
        add(add(u(0), u(2)), add(u(1), u(3)))
    }

    /// Blocks ahead of the one in use whose rows are asked for, one row
    /// as each row of the block in use is read: a block is one 4 KiB page
    /// for a 64-long float16 head, where the hardware prefetchers stop.
    const AHEAD: usize = 2;

    /// A whole block's keys into `kf` (`kf[s * hd + j]`: element `line[j]`
    /// of keys 8s..8s+8), asking for the rows of the block at `ahead` as it
    /// goes if `PREFETCH`.
    #[inline(always)]
    unsafe fn load_block<T: Value, const PREFETCH: bool>(
        kf: *mut __m256,
        block: *const T,
        line: &[usize],
        ahead: *const T,
    ) {
        let hd = line.len();
        for (j, &l) in line.iter().enumerate() {
            if PREFETCH {
                prefetch_at(ahead.add(at(j, 0, hd)));
            }
            let l = block.add(l);
            for s in 0..BLOCK / 8 {
                *kf.add(s * hd + j) = T::load8(l.add(8 * s));
            }
        }
    }

    /// Asks for the row of `BLOCK` values at `p`.
    #[inline(always)]
    unsafe fn prefetch_at<T: Value>(p: *const T) {
        let p = p as *const i8;
        for off in (0..BLOCK * std::mem::size_of::<T>()).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(p.add(off));
        }
    }

    /// Asks for row `e` (one element's `BLOCK` positions) of the block at
    /// position `b`, if it is before `n`.
    #[inline(always)]
    unsafe fn prefetch_row<T: Value>(head: *const T, hd: usize, b: usize, e: usize, n: usize) {
        if b < n {
            prefetch_at(head.add(at(e, b, hd)));
        }
    }

    /// At the first block of a span: asks for the blocks up to `AHEAD`
    /// after it, which no earlier block asked for.
    #[inline(always)]
    unsafe fn prefetch_start<T: Value>(
        head: *const T,
        hd: usize,
        b0: usize,
        n: usize,
        ahead: usize,
    ) {
        for k in 1..ahead {
            for e in 0..hd {
                prefetch_row(head, hd, b0 + k * BLOCK, e, n);
            }
        }
    }

    /// `super::mix_heads` for `hd <= MAX_HD`: heads two at a time (a last
    /// odd one alone), each pair reading the cached head once, block by
    /// block; every output's 16 lanes wait in `acc` between blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn mix_heads<T: Value>(
        out: &mut [f32],
        hd: usize,
        p: &[f32],
        p_stride: usize,
        values: *const T,
        first: usize,
        n: usize,
    ) {
        let heads = out.len() / hd;
        let mut acc = std::mem::MaybeUninit::<[__m256; 4 * MAX_HD]>::uninit();
        let acc = acc.as_mut_ptr() as *mut __m256;
        let o = out.as_mut_ptr();
        let mut h = 0;
        while h < heads {
            let ph = p.as_ptr().add(h * p_stride);
            if h + 2 <= heads {
                mix_group::<T, 2>(o.add(h * hd), hd, ph, p_stride, values, first, n, acc);
                h += 2;
            } else {
                mix_group::<T, 1>(o.add(h * hd), hd, ph, p_stride, values, first, n, acc);
                h += 1;
            }
        }
    }

    /// H heads: output (h, c)'s lanes in `acc[2 (h hd + c)]` (positions
    /// 0..8 of every aligned 16) and the next (8..16), then added as
    /// `f16::reduce16` adds them.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn mix_group<T: Value, const H: usize>(
        out: *mut f32,
        hd: usize,
        p: *const f32,
        p_stride: usize,
        values: *const T,
        first: usize,
        n: usize,
        acc: *mut __m256,
    ) {
        for k in 0..2 * H * hd {
            *acc.add(k) = _mm256_setzero_ps();
        }
        let mut b0 = first / BLOCK * BLOCK;
        prefetch_start(values, hd, b0, n, AHEAD);
        while b0 < n {
            if b0 >= first && b0 + BLOCK <= n {
                mix_block::<T, H, true>(hd, p, p_stride, values, first, n, b0, acc);
            } else {
                mix_block::<T, H, false>(hd, p, p_stride, values, first, n, b0, acc);
            }
            b0 += BLOCK;
        }
        for h in 0..H {
            for c in 0..hd {
                let (lo, hi) = (*acc.add(2 * (h * hd + c)), *acc.add(2 * (h * hd + c) + 1));
                *out.add(h * hd + c) = reduce16(lo, hi);
            }
        }
    }

    /// The block of positions `b0..b0 + BLOCK` (its two runs of 16) into
    /// every output's lanes. `FULL`: all of it lies in `first..n`;
    /// otherwise the positions outside add 0 * 0.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn mix_block<T: Value, const H: usize, const FULL: bool>(
        hd: usize,
        p: *const f32,
        p_stride: usize,
        values: *const T,
        first: usize,
        n: usize,
        b0: usize,
        acc: *mut __m256,
    ) {
        // The weights of both runs, and each run's positions in the span.
        let mut pw = [[[_mm256_setzero_ps(); 2]; 2]; H];
        let mut span = [(0usize, 16usize); 2];
        for (r, sp) in span.iter_mut().enumerate() {
            let i0 = b0 + 16 * r;
            if !FULL {
                *sp = (first.clamp(i0, i0 + 16) - i0, n.clamp(i0, i0 + 16) - i0);
            }
            for (h, w) in pw.iter_mut().enumerate() {
                if FULL {
                    let ph = p.add(h * p_stride + i0 - first);
                    w[r] = [_mm256_loadu_ps(ph), _mm256_loadu_ps(ph.add(8))];
                } else {
                    let mut t = [0.0f32; 16];
                    for l in sp.0..sp.1 {
                        t[l] = *p.add(h * p_stride + i0 + l - first);
                    }
                    w[r] = [
                        _mm256_loadu_ps(t.as_ptr()),
                        _mm256_loadu_ps(t.as_ptr().add(8)),
                    ];
                }
            }
        }
        let ahead = b0 + AHEAD * BLOCK < n;
        let next = values.wrapping_add(at(0, b0 + AHEAD * BLOCK, hd));
        for c in 0..hd {
            if ahead {
                prefetch_at(next.add(c * BLOCK));
            }
            let v = values.add(at(c, b0, hd));
            let a = acc.add(2 * c);
            let mut lanes = [[_mm256_setzero_ps(); 2]; H];
            for (h, l) in lanes.iter_mut().enumerate() {
                *l = [*a.add(2 * h * hd), *a.add(2 * h * hd + 1)];
            }
            for (r, &(lo, hi)) in span.iter().enumerate() {
                if !FULL && lo >= hi {
                    continue;
                }
                let v = v.add(16 * r);
                let (vl, vh) = if FULL {
                    (T::load8(v), T::load8(v.add(8)))
                } else {
                    (
                        load_lanes(v, lo.min(8), hi.min(8)),
                        load_lanes(v.add(8), lo.max(8) - 8, hi.max(8) - 8),
                    )
                };
                for h in 0..H {
                    lanes[h][0] = _mm256_fmadd_ps(pw[h][r][0], vl, lanes[h][0]);
                    lanes[h][1] = _mm256_fmadd_ps(pw[h][r][1], vh, lanes[h][1]);
                }
            }
            for (h, l) in lanes.iter().enumerate() {
                *a.add(2 * h * hd) = l[0];
                *a.add(2 * h * hd + 1) = l[1];
            }
        }
    }

    /// 16 elements at `p` as float32 (all must be readable).
    #[inline(always)]
    unsafe fn load16<T: Value>(p: *const T) -> __m512 {
        if std::mem::size_of::<T>() == 2 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        } else {
            _mm512_loadu_ps(p as *const f32)
        }
    }

    /// `AHEAD` for the 16-lane scores, whose blocks go by faster.
    const AHEAD_16: usize = 4;

    /// Lanes `lo..hi` of 16 set.
    #[inline(always)]
    fn lanes(lo: usize, hi: usize) -> __mmask16 {
        (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as __mmask16
    }

    /// Lanes 0..8 and 8..16 of `v`.
    #[inline(always)]
    unsafe fn halves(v: __m512) -> (__m256, __m256) {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
        (_mm512_castps512_ps256(v), hi)
    }

    /// `dot_heads` with 16 keys in a vector's lanes: per head, llama.cpp's
    /// 16 lanes of each key in 16 vectors, added as `reduce16` adds them
    /// (the sums of the 8-lane kernel, key for key), four heads at a time
    /// (`head_sums`). Keys outside the span are zeros (stale values there
    /// must not turn into NaNs) and their scores are not stored.
    ///
    /// The rows of the block `AHEAD_16` blocks on (keys, and `values` unless
    /// null) are asked for a few after each group of heads' sums: asked for
    /// all at once, most would be dropped (a core tracks only so many misses).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn dot_heads_512<T: Value>(
        q: &[f32],
        hd: usize,
        keys: *const T,
        first: usize,
        n: usize,
        out: *mut f32,
        stride: usize,
        pairs: bool,
        values: *const T,
    ) {
        let mut ql = std::mem::MaybeUninit::<[f32; MAX_Q]>::uninit();
        let ql = ql.as_mut_ptr() as *mut f32;
        let line = llama_order(q, hd, pairs, ql);
        let heads = q.len() / hd;
        // 16 keys: `kf[j]` holds element j (llama.cpp's order) of each.
        let mut kf = std::mem::MaybeUninit::<[__m512; MAX_HD]>::uninit();
        let kf = kf.as_mut_ptr() as *mut __m512;
        let mut b0 = first / BLOCK * BLOCK;
        prefetch_start(keys, hd, b0, n, AHEAD_16);
        if !values.is_null() {
            prefetch_start(values, hd, b0, n, AHEAD_16);
            for e in 0..hd {
                prefetch_row(values, hd, b0, e, n);
            }
        }
        // Rows to ask for per block, and per head's sums.
        let rows = if values.is_null() { hd } else { 2 * hd };
        let per_head = rows.div_ceil(2 * heads);
        while b0 < n {
            let block = keys.add(at(0, b0, hd));
            let ahead = b0 + AHEAD_16 * BLOCK;
            let mut asked = if ahead < n { 0 } else { rows };
            let mut ask = |upto: usize| {
                while asked < upto.min(rows) {
                    let (head, e) = if asked < hd {
                        (keys, asked)
                    } else {
                        (values, asked - hd)
                    };
                    prefetch_at(head.add(at(e, ahead, hd)));
                    asked += 1;
                }
            };
            for s in 0..BLOCK / 16 {
                let i0 = b0 + 16 * s;
                let (lo, hi) = (first.clamp(i0, i0 + 16) - i0, n.clamp(i0, i0 + 16) - i0);
                if lo >= hi {
                    continue;
                }
                let mask = lanes(lo, hi);
                for (j, &l) in line[..hd].iter().enumerate() {
                    let k = load16(block.add(l + 16 * s));
                    *kf.add(j) = if hi - lo == 16 {
                        k
                    } else {
                        _mm512_maskz_mov_ps(mask, k)
                    };
                }
                let mut h = 0;
                while h < heads {
                    let qh = ql.add(h * hd);
                    let r: &[__m512] = match heads - h {
                        4.. => &head_sums::<4>(qh, hd, kf),
                        2 | 3 => &head_sums::<2>(qh, hd, kf),
                        _ => &head_sums::<1>(qh, hd, kf),
                    };
                    for &r in r {
                        // Lane l is key i0 + l, at `i0 + l - first` (only
                        // lanes lo..hi, all at or past `first`, are stored).
                        let dst = out.add(h * stride).wrapping_add(i0).wrapping_sub(first);
                        _mm512_mask_storeu_ps(dst, mask, r);
                        h += 1;
                    }
                    ask(h * per_head);
                }
            }
            ask(rows);
            b0 += BLOCK;
        }
    }

    /// The scores of `H` heads (queries at `q`, `hd` apart) against the 16
    /// keys in `kf`: each head's 16 lanes, lane `l` the chain of elements
    /// `l, l + 16, ...`, added as `reduce16` adds them. Each key vector is
    /// loaded once for the `H` heads (one load per multiply-add made the
    /// loads the limit), and the lanes are added as soon as both are done,
    /// so few registers hold partial sums. More than 4 heads at once spill.
    #[inline(always)]
    unsafe fn head_sums<const H: usize>(
        q: *const f32,
        hd: usize,
        kf: *const __m512,
    ) -> [__m512; H] {
        let lane = |l: usize| -> [__m512; H] {
            let mut acc = [_mm512_setzero_ps(); H];
            for j in (l..hd).step_by(16) {
                let k = *kf.add(j);
                for (h, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*q.add(h * hd + j)), k, *a);
                }
            }
            acc
        };
        let add = |a: [__m512; H], b: [__m512; H]| -> [__m512; H] {
            std::array::from_fn(|h| _mm512_add_ps(a[h], b[h]))
        };
        let t = |m: usize| add(lane(m + 8), lane(m));
        let u = |l: usize| add(t(4 + l), t(l));
        add(add(u(0), u(2)), add(u(1), u(3)))
    }

    /// `mix_heads` with 16 positions in a vector's lanes (lane = position
    /// % 16, as in llama.cpp): heads 8, 4, 2 or 1 at a time, and for them
    /// as many of the head's outputs as make 16 sums, held in registers
    /// over the whole span.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn mix_heads_512<T: Value>(
        out: &mut [f32],
        hd: usize,
        p: &[f32],
        p_stride: usize,
        values: *const T,
        first: usize,
        n: usize,
    ) {
        let heads = out.len() / hd;
        let o = out.as_mut_ptr();
        let mut h = 0;
        while h < heads {
            let (oh, ph) = (o.add(h * hd), p.as_ptr().add(h * p_stride));
            let args = (hd, ph, p_stride, values, first, n);
            h += match heads - h {
                8.. => mix_outputs::<T, 8, 2>(oh, args),
                4..=7 => mix_outputs::<T, 4, 4>(oh, args),
                2 | 3 => mix_outputs::<T, 2, 8>(oh, args),
                _ => mix_outputs::<T, 1, 16>(oh, args),
            };
        }
    }

    type MixArgs<T> = (usize, *const f32, usize, *const T, usize, usize);

    /// All outputs of H heads, C at a time (a last few one at a time).
    /// Returns H.
    #[inline(always)]
    unsafe fn mix_outputs<T: Value, const H: usize, const C: usize>(
        out: *mut f32,
        args: MixArgs<T>,
    ) -> usize {
        let hd = args.0;
        let mut c0 = 0;
        while c0 + C <= hd {
            mix_span::<T, H, C>(out, c0, args);
            c0 += C;
        }
        while c0 < hd {
            mix_span::<T, H, 1>(out, c0, args);
            c0 += 1;
        }
        H
    }

    /// Outputs `c0..c0 + C` of H heads over the span, position by position
    /// in order. Positions outside it add 0 * 0, as in the 8-lane kernel.
    #[inline(always)]
    unsafe fn mix_span<T: Value, const H: usize, const C: usize>(
        out: *mut f32,
        c0: usize,
        (hd, p, p_stride, values, first, n): MixArgs<T>,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; H];
        let mut b0 = first / BLOCK * BLOCK;
        while b0 < n {
            for r in 0..BLOCK / 16 {
                let i0 = b0 + 16 * r;
                let (lo, hi) = (first.clamp(i0, i0 + 16) - i0, n.clamp(i0, i0 + 16) - i0);
                if lo >= hi {
                    continue;
                }
                let (full, mask) = (hi - lo == 16, lanes(lo, hi));
                // Lane l's weight is at `i0 + l - first` (read for lanes lo..hi only).
                let pw: [__m512; H] = std::array::from_fn(|h| {
                    let w = p.add(h * p_stride).wrapping_add(i0).wrapping_sub(first);
                    if full {
                        _mm512_loadu_ps(w)
                    } else {
                        _mm512_maskz_loadu_ps(mask, w)
                    }
                });
                #[allow(clippy::needless_range_loop)]
                for c in 0..C {
                    let v = load16(values.add(at(c0 + c, b0, hd) + 16 * r));
                    let v = if full {
                        v
                    } else {
                        _mm512_maskz_mov_ps(mask, v)
                    };
                    for h in 0..H {
                        acc[h][c] = _mm512_fmadd_ps(pw[h], v, acc[h][c]);
                    }
                }
            }
            b0 += BLOCK;
        }
        for (h, row) in acc.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let (lo, hi) = halves(v);
                *out.add(h * hd + c0 + c) = reduce16(lo, hi);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;
    use crate::kernels::test_data::rand;

    fn halves(n: usize, seed: u64) -> Vec<f16> {
        rand(n, seed).iter().map(|&v| f16::from_f32(v)).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The fast kernels this CPU can run.
    fn fast_kernels() -> Vec<FloatIsa> {
        let all = FloatIsa::all().into_iter();
        all.filter(|&k| k != FloatIsa::Plain).collect()
    }

    /// A head as the cache holds it (`at`), from `n` rows of `hd` values;
    /// `fill` everywhere else.
    fn cached<T: Copy>(rows: &[T], hd: usize, fill: T) -> Vec<T> {
        let n = rows.len() / hd;
        let mut t = vec![fill; head_len(hd, n + 40)];
        for i in 0..n {
            for e in 0..hd {
                t[at(e, i, hd)] = rows[i * hd + e];
            }
        }
        t
    }

    #[test]
    fn the_cache_layout_gives_each_value_its_own_place() {
        let (hd, n) = (12, 96);
        let mut seen = vec![false; head_len(hd, n)];
        for i in 0..n {
            for e in 0..hd {
                assert!(!std::mem::replace(&mut seen[at(e, i, hd)], true));
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn scores_are_llama_cpps_dot_products_key_by_key() {
        for hd in [8, 16, 48, 64, 96, 128] {
            for pairs in [false, true] {
                // 20 heads of 128: more than one call's worth (MAX_Q).
                for heads in [1, 2, 3, 7, 8, 20] {
                    let q: Vec<f32> = halves(heads * hd, 21)
                        .iter()
                        .map(|v| v.to_f32() * 2.0)
                        .collect();
                    for (first, n) in [
                        (0, 1),
                        (0, 7),
                        (0, 8),
                        (0, 19),
                        (0, 40),
                        (3, 21),
                        (8, 9),
                        (13, 77),
                        (17, 64),
                        (31, 97),
                    ] {
                        let rows = halves(n * hd, 22 + n as u64);
                        // Stale values outside first..n must not matter.
                        let keys = cached(&rows, hd, f16::from_f32(1e4));
                        let stride = n - first + 3;
                        let mut plain = vec![f32::NAN; heads * stride];
                        dot_heads_plain(&q, hd, &keys, first, n, &mut plain, stride, pairs);
                        let what = format!("hd {hd} pairs {pairs} heads {heads} keys {first}..{n}");
                        for k in fast_kernels() {
                            let mut fast = vec![f32::NAN; heads * stride];
                            // Asking for the values' rows (here any head) changes nothing.
                            let values = (n % 2 == 0).then_some(&keys[..]);
                            dot_heads_with(
                                k, &q, hd, &keys, first, n, &mut fast, stride, pairs, values,
                            );
                            assert_eq!(bits(&fast), bits(&plain), "{k:?} {what}");
                        }
                        for i in first..n {
                            for h in 0..heads {
                                // The per-key dot product in llama.cpp's order.
                                let want = super::super::f16::dot_f32_f16(
                                    &q[h * hd..(h + 1) * hd],
                                    &rows[i * hd..(i + 1) * hd],
                                    pairs,
                                );
                                assert_eq!(
                                    plain[h * stride + i - first].to_bits(),
                                    want.to_bits(),
                                    "{what}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn float32_scores_fast_and_plain_agree() {
        for (hd, first, n) in [(16, 0, 9), (64, 5, 33), (24, 0, 5)] {
            let q = rand(3 * hd, 1);
            let keys = cached(&rand(n * hd, 2), hd, 0.0);
            let mut plain = vec![0.0; 3 * n];
            dot_heads_plain(&q, hd, &keys, first, n, &mut plain, n, true);
            for k in fast_kernels() {
                let mut fast = vec![0.0; 3 * n];
                dot_heads_with(k, &q, hd, &keys, first, n, &mut fast, n, true, Some(&keys));
                assert_eq!(bits(&fast), bits(&plain), "{k:?} hd {hd} keys {first}..{n}");
            }
        }
    }

    #[test]
    fn mix_is_sixteen_position_lanes_added_as_reduce16() {
        for hd in [4, 8, 12, 64, 80] {
            for heads in [1, 2, 3, 5, 8, 13] {
                for (first, n) in [
                    (0, 1),
                    (0, 5),
                    (0, 16),
                    (0, 17),
                    (0, 33),
                    (0, 100),
                    (5, 6),
                    (7, 40),
                    (16, 50),
                    (33, 97),
                ] {
                    let p_stride = n - first + 2;
                    let values = cached(&halves(n * hd, 23), hd, f16::INFINITY);
                    let mut p: Vec<f32> = halves(heads * p_stride, 24)
                        .iter()
                        .map(|v| v.to_f32().abs())
                        .collect();
                    // Scratch past the span in each weight row must not matter either.
                    for h in 0..heads {
                        p[h * p_stride + n - first..(h + 1) * p_stride].fill(f32::NAN);
                    }
                    let mut plain = vec![f32::NAN; heads * hd];
                    mix_heads_plain(&mut plain, hd, &p, p_stride, &values, first, n);
                    let what = format!("hd {hd} heads {heads} positions {first}..{n}");
                    for k in fast_kernels() {
                        let mut fast = vec![f32::NAN; heads * hd];
                        mix_heads_with(k, &mut fast, hd, &p, p_stride, &values, first, n);
                        assert_eq!(bits(&fast), bits(&plain), "{k:?} {what}");
                    }
                    for h in 0..heads {
                        for d in 0..hd {
                            // llama.cpp's lanes: position i in lane i % 16.
                            let mut lanes = [0.0f32; 16];
                            for i in first..n {
                                lanes[i % 16] +=
                                    p[h * p_stride + i - first] * values[at(d, i, hd)].to_f32();
                            }
                            assert_eq!(
                                plain[h * hd + d].to_bits(),
                                reduce16(&lanes).to_bits(),
                                "{what}"
                            );
                        }
                    }
                }
            }
        }
        // float32 values: the same lanes, fused multiply-adds in both.
        let (hd, n) = (8, 21);
        let values = cached(&rand(n * hd, 5), hd, 0.0);
        let p = rand(3 * n, 6);
        let mut plain = vec![0.0; 3 * hd];
        mix_heads_plain(&mut plain, hd, &p, n, &values, 2, n);
        for k in fast_kernels() {
            let mut fast = vec![0.0; 3 * hd];
            mix_heads_with(k, &mut fast, hd, &p, n, &values, 2, n);
            assert_eq!(bits(&fast), bits(&plain), "{k:?}");
        }
    }
}
