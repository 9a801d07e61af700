//! Long batches against float weight matrices (float16 or float32 rows) as
//! an outer product, the way BLAS kernels run: each block of a register
//! tile's rows is converted once to float32, value-major (value k of the
//! rows side by side), and the tile adds `w[.][k] * x[t][k]` for k in order,
//! two weight vectors and one broadcast activation per token per step, the
//! weights read from L1/L2 for every token. AVX-512 (32 rows by 12 tokens)
//! or AVX2 (16 by 6), picked at run time; where neither runs, or the batch
//! is short, the callers' own kernels do the whole matmul.

use std::cell::RefCell;

use super::f16::TileElem;
#[cfg(target_arch = "x86_64")]
use super::f16::{has_avx512, has_f16c_fma};
#[cfg(target_arch = "x86_64")]
use super::SharedOut;

/// Tokens at or above which a matmul goes through `panels`.
#[cfg(target_arch = "x86_64")]
const PANEL_MIN_TOKENS: usize = 12;

/// The register tile of the outer-product prefill: weight rows (two
/// vectors) by tokens, per instruction set.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq, Debug)]
enum PanelTile {
    /// AVX-512: 32 rows by 12 tokens (24 of the 32 vector registers).
    Wide,
    /// AVX2: 16 rows by 6 tokens (12 of the 16).
    Narrow,
}

#[cfg(target_arch = "x86_64")]
impl PanelTile {
    fn for_cpu() -> Option<PanelTile> {
        if has_avx512() {
            Some(PanelTile::Wide)
        } else if has_f16c_fma() {
            Some(PanelTile::Narrow)
        } else {
            None
        }
    }
    const fn rows(self) -> usize {
        match self {
            PanelTile::Wide => 32,
            PanelTile::Narrow => 16,
        }
    }
    const fn tokens(self) -> usize {
        match self {
            PanelTile::Wide => 12,
            PanelTile::Narrow => 6,
        }
    }
    /// Values per conversion step (`n_in` must be whole ones).
    const fn width(self) -> usize {
        self.rows() / 2
    }
}

thread_local! {
    /// The batch's activations in tiles of a `PanelTile`'s tokens, value-major.
    static TOKEN_TILES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A long batch as an outer product (the way BLAS kernels run): each block
/// of `PanelTile::rows` weight rows is converted once to float32,
/// value-major (value k of the rows side by side), and a register tile adds
/// `w[.][k] * x[t][k]` for k in order, two weight vectors and one broadcast
/// activation per token per step. Each output is one float sum in k order
/// (not the lanes of the dot-product kernels). Returns the rows it did (the
/// whole panels of `n_out`; none without AVX2/FMA/F16C, for a batch shorter
/// than `PANEL_MIN_TOKENS`, or rows not in whole vectors). `w`: float16 or
/// float32 rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn panels<E: TileElem + Sync>(
    out: &mut [f32],
    out_stride: usize,
    xr: &[f32],
    w: &[E],
    n_tok: usize,
    n_in: usize,
    n_out: usize,
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if let Some(tile) = PanelTile::for_cpu() {
        return panels_with(tile, out, out_stride, xr, w, n_tok, n_in, n_out);
    }
    let _ = (out, out_stride, xr, w, n_tok, n_in, n_out);
    0
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn panels_with<E: TileElem + Sync>(
    tile: PanelTile,
    out: &mut [f32],
    out_stride: usize,
    xr: &[f32],
    w: &[E],
    n_tok: usize,
    n_in: usize,
    n_out: usize,
) -> usize {
    let (rows, tokens) = (tile.rows(), tile.tokens());
    let n_panels = n_out / rows;
    if n_panels == 0 || n_tok < PANEL_MIN_TOKENS || n_in % tile.width() != 0 {
        return 0;
    }
    let n_tiles = n_tok.div_ceil(tokens);
    TOKEN_TILES.with(|cell| {
        let mut xt = cell.borrow_mut();
        let len = n_tiles * n_in * tokens;
        if xt.len() < len {
            xt.resize(len, 0.0);
        }
        crate::pool::parallel_chunks(&mut xt[..len], n_in * tokens, |ti, chunk| {
            for t in 0..tokens {
                let tok = ti * tokens + t;
                for k in 0..n_in {
                    chunk[k * tokens + t] = if tok < n_tok { xr[tok * n_in + k] } else { 0.0 };
                }
            }
        });
        let xt = &xt[..len];
        let dst = SharedOut(out.as_mut_ptr());
        crate::pool::parallel_for(n_panels, |p| {
            let dst = dst;
            PANEL.with(|cell| {
                let mut panel = cell.borrow_mut();
                if panel.len() < rows * n_in {
                    panel.resize(rows * n_in, 0.0);
                }
                let w = &w[p * rows * n_in..(p + 1) * rows * n_in];
                // SAFETY: `PanelTile::for_cpu` checked the kernels' features;
                // `panel` holds rows * n_in values, `w` that many, n_in a whole
                // number of conversion steps.
                unsafe {
                    match tile {
                        PanelTile::Wide => x86::pack_panel(w, n_in, panel.as_mut_ptr()),
                        PanelTile::Narrow => x86::pack_panel8(w, n_in, panel.as_mut_ptr()),
                    }
                }
                for ti in 0..n_tiles {
                    let nt = (n_tok - ti * tokens).min(tokens);
                    let xs = xt[ti * n_in * tokens..].as_ptr();
                    // SAFETY: (token, row) pairs of this panel and tile are written
                    // by this call only, within `out` (asserted by the callers).
                    unsafe {
                        let o = dst.0.add(ti * tokens * out_stride + p * rows);
                        match tile {
                            PanelTile::Wide => {
                                x86::panel_tile(panel.as_ptr(), xs, n_in, o, out_stride, nt)
                            }
                            PanelTile::Narrow => {
                                x86::panel_tile8(panel.as_ptr(), xs, n_in, o, out_stride, nt)
                            }
                        }
                    }
                }
            });
        });
    });
    n_panels * rows
}

thread_local! {
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::TileElem;

    /// 32 rows of `n` values to float32, value-major: `panel[k * 32 + r] =
    /// rows[r * n + k]`, 16 values of 16 rows at a time through `transpose16`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn pack_panel<E: TileElem>(rows: &[E], n: usize, panel: *mut f32) {
        for k0 in (0..n).step_by(16) {
            for half in 0..2 {
                let r: [__m512; 16] =
                    std::array::from_fn(|i| E::load16(rows.as_ptr().add((16 * half + i) * n + k0)));
                for (k, v) in transpose16(r).iter().enumerate() {
                    _mm512_storeu_ps(panel.add(32 * (k0 + k) + 16 * half), *v);
                }
            }
        }
    }

    /// A 16 x 16 transpose: `out[k]` lane i is `r[i]` lane k (pairs, then
    /// quads within 128-bit lanes, then the 128-bit lanes themselves).
    #[inline(always)]
    unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // u[4g + j]: rows 4g..4g+4 at k = j (of each 4), per 128-bit lane.
        let u = quads_in_lanes!(
            r,
            16,
            __m512,
            _mm512_unpacklo_ps,
            _mm512_unpackhi_ps,
            _mm512_shuffle_ps
        );
        let mut out = [_mm512_setzero_ps(); 16];
        for j in 0..4 {
            // Lanes (k = j, j + 8 | j + 4, j + 12) of rows 0..8 and 8..16.
            let v0 = _mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]);
            let v1 = _mm512_shuffle_f32x4::<0xDD>(u[j], u[4 + j]);
            let w0 = _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]);
            let w1 = _mm512_shuffle_f32x4::<0xDD>(u[8 + j], u[12 + j]);
            out[j] = _mm512_shuffle_f32x4::<0x88>(v0, w0);
            out[j + 8] = _mm512_shuffle_f32x4::<0xDD>(v0, w0);
            out[j + 4] = _mm512_shuffle_f32x4::<0x88>(v1, w1);
            out[j + 12] = _mm512_shuffle_f32x4::<0xDD>(v1, w1);
        }
        out
    }

    /// `pack_panel` for 16 rows (AVX2): `panel[k * 16 + r] = rows[r * n + k]`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn pack_panel8<E: TileElem>(rows: &[E], n: usize, panel: *mut f32) {
        let mut stage = [0.0f32; 16 * 8];
        for k0 in (0..n).step_by(8) {
            for r in 0..16 {
                _mm256_storeu_ps(
                    stage.as_mut_ptr().add(8 * r),
                    E::load8(rows.as_ptr().add(r * n + k0)),
                );
            }
            for kk in 0..8 {
                for r in 0..16 {
                    *panel.add(16 * (k0 + kk) + r) = stage[8 * r + kk];
                }
            }
        }
    }

    /// A register tile of the outer-product prefill: `out[t * stride + r] =
    /// sum_k panel[k * 2W + r] * xs[k * TOKENS + t]` for 2W rows (two
    /// vectors of W) and `nt` (at most TOKENS) tokens, k in order.
    macro_rules! panel_tile {
        ($name:ident, $name_n:ident, $feat:literal, $ty:ty, $w:literal, $tokens:literal,
         $zero:ident, $load:ident, $set1:ident, $fmadd:ident, $store:ident, [$($t:literal)*]) => {
            #[target_feature(enable = $feat)]
            pub unsafe fn $name(panel: *const f32, xs: *const f32, n: usize, out: *mut f32, stride: usize, nt: usize) {
                match nt {
                    $($t => $name_n::<$t>(panel, xs, n, out, stride),)*
                    _ => unreachable!(),
                }
            }

            #[inline(always)]
            unsafe fn $name_n<const T: usize>(panel: *const f32, xs: *const f32, n: usize, out: *mut f32, stride: usize) {
                let mut c0: [$ty; T] = [$zero(); T];
                let mut c1: [$ty; T] = [$zero(); T];
                for k in 0..n {
                    let a0 = $load(panel.add(2 * $w * k));
                    let a1 = $load(panel.add(2 * $w * k + $w));
                    let b = xs.add($tokens * k);
                    for t in 0..T {
                        let x = $set1(*b.add(t));
                        c0[t] = $fmadd(a0, x, c0[t]);
                        c1[t] = $fmadd(a1, x, c1[t]);
                    }
                }
                for t in 0..T {
                    $store(out.add(t * stride), c0[t]);
                    $store(out.add(t * stride + $w), c1[t]);
                }
            }
        };
    }
    // 32 rows by up to 12 tokens (AVX-512), 16 rows by up to 6 (AVX2).
    panel_tile!(panel_tile, panel_tile_n, "avx512f,avx2,fma,f16c", __m512, 16, 12,
        _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps,
        [1 2 3 4 5 6 7 8 9 10 11 12]);
    panel_tile!(panel_tile8, panel_tile8_n, "avx2,fma,f16c", __m256, 8, 6,
        _mm256_setzero_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps,
        [1 2 3 4 5 6]);
}

// The panels run only on x86_64 (elsewhere `panels` does no rows).
#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn halves(n: usize, seed: u64) -> Vec<half::f16> {
        crate::kernels::test_data::rand(n, seed)
            .into_iter()
            .map(half::f16::from_f32)
            .collect()
    }

    /// Each outer-product tile this CPU runs (whichever `panels` picks), on
    /// float16 and float32 rows: the panels' rows against the exact sums.
    #[test]
    fn every_panel_tile_gives_the_exact_sums() {
        let mut tiles = Vec::new();
        if has_f16c_fma() {
            tiles.push(PanelTile::Narrow);
        }
        if has_avx512() {
            tiles.push(PanelTile::Wide);
        }
        for tile in tiles {
            for (n_tok, n_in, n_out) in [(12, 16, 32), (13, 48, 41), (29, 272, 70)] {
                let wh = halves(n_out * n_in, 7);
                let wf: Vec<f32> = wh.iter().map(|v| v.to_f32()).collect();
                let x: Vec<f32> = halves(n_tok * n_in, 8).iter().map(|v| v.to_f32()).collect();
                let (mut a, mut b) = (vec![f32::NAN; n_tok * n_out], vec![f32::NAN; n_tok * n_out]);
                let done = panels_with(tile, &mut a, n_out, &x, &wh, n_tok, n_in, n_out);
                assert_eq!(done, n_out / tile.rows() * tile.rows(), "{tile:?}");
                panels_with(tile, &mut b, n_out, &x, &wf, n_tok, n_in, n_out);
                for t in 0..n_tok {
                    for o in 0..done {
                        let want: f64 = (0..n_in)
                            .map(|i| wf[o * n_in + i] as f64 * x[t * n_in + i] as f64)
                            .sum();
                        for got in [a[t * n_out + o], b[t * n_out + o]] {
                            assert!(
                                (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{tile:?}"
                            );
                        }
                    }
                    // The rows past the whole panels are left for the caller.
                    assert!(a[t * n_out + done..(t + 1) * n_out]
                        .iter()
                        .all(|v| v.is_nan()));
                }
            }
        }
    }
}
