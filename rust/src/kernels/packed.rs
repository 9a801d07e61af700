//! Q4_0 and Q8_0 weight matrices repacked at load time so that one vector
//! holds four bytes of each of a group's consecutive rows: 8 rows in an AVX2
//! vector, 16 in an AVX-512 one (ggml's "q4_0_8x8"-style interleaving, in
//! our own layout). A block's row scales convert with one `vcvtph2ps`, and
//! the integer dot products of the rows land in the i32 lanes of one
//! vector, so a group's outputs accumulate in one float vector with no
//! horizontal sums.
//!
//! The arithmetic is `quant::dot_row_scalar`'s: exact integer block sums,
//! each times (weight scale * activation scale), added over the blocks, with
//! llama.cpp's roundings: Q4_0 one fused multiply-add per block (its
//! repacked kernels); Q8_0 in eight lanes of four values (its tinyBLAS,
//! `Q8Lanes`). A result does not depend on how many tokens share a tile.
//!
//! Layout of one group of G rows (`nb` blocks of 32 values; G = 8 for the
//! AVX2 kernels, 16 for the AVX-512 ones, so that one 512-bit vector holds
//! the group), 64-byte aligned, one stream read front to back: the blocks
//! two at a time, each pair as
//!   scales: the G rows' f16 scales of the first block (2G bytes), then of
//!           the second (2G bytes, zero when `nb` is odd and this is the last);
//!   quants: for each of the two blocks, `QB` quant bytes per row, as `QB / 4`
//!           vectors of 4G bytes; vector k holds, in i32 lane r, row r's
//!           quant bytes 4k..4k+3 of that block (Q4_0: 4 vectors of nibble
//!           bytes, the low nibbles are values 4k..4k+3, the high ones
//!           16+4k..16+4k+3; Q8_0: 8 vectors of values 4k..4k+3).
//! Rows past the last whole group (fewer than G) follow the groups in
//! ggml's own row format and go through `quant::matmul`.
//!
//! Q4_K, Q5_K and Q6_K matrices are packed too, in the same spirit; their group
//! layout and kernels are in `packed_k`.

use std::cell::RefCell;

use half::f16;
use rayon::prelude::*;

use super::kquant::QK_K;
use super::packed_k;
use super::quant::{self, BlockQ8, QuantType, QK};
use super::SharedOut;

/// Rows per interleaved group of the AVX2 kernels.
pub(crate) const GROUP: usize = 8;

/// Rows per group of the AVX-512 kernels: half the instructions per weight
/// byte of two 8-row groups, which lets a one-token matmul keep more of its
/// loads in flight and read memory faster.
const WIDE_GROUP: usize = 16;

/// Rows per group of a matrix for the kernels `k`.
fn rows_per_group(k: Kernels) -> usize {
    if k == Kernels::Vnni {
        WIDE_GROUP
    } else {
        GROUP
    }
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Chunk([u8; 64]);

impl crate::tensor::ZeroBits for Chunk {}

/// A Q4_0, Q8_0, Q4_K, Q5_K or Q6_K matrix `[rows][cols]` in the interleaved layout.
pub struct PackedMatrix {
    t: QuantType,
    rows: usize,
    cols: usize,
    /// Rows per group (`GROUP` or `WIDE_GROUP`).
    group: usize,
    /// Groups, then the tail rows in ggml's format.
    data: crate::tensor::Buffer<Chunk>,
}

/// Quant bytes per row and block (16 nibble bytes or 32 int8 values).
fn quant_bytes(t: QuantType) -> usize {
    t.block_bytes() - 2
}

/// Offsets of block `b`'s scales and quants in a group of `g` rows whose
/// blocks hold `qb` quant bytes per row.
#[inline(always)]
fn block_at(qb: usize, b: usize, g: usize) -> (usize, usize) {
    let (pair, second) = (b / 2 * (4 * g + 2 * g * qb), b % 2);
    (pair + 2 * g * second, pair + 4 * g + second * g * qb)
}

impl PackedMatrix {
    /// Whether the interleaved kernels would run for this matrix: a format
    /// they know, at least one whole group, whole blocks, and an AVX2 CPU
    /// (elsewhere the plain per-row kernels are as good).
    pub fn worth_packing(t: QuantType, rows: usize, cols: usize) -> bool {
        let known = match t {
            QuantType::Q4_0 | QuantType::Q8_0 => cols % QK == 0,
            QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K => cols % QK_K == 0,
            _ => false,
        };
        known && rows >= GROUP && cols > 0 && fast_kernels()
    }

    /// Repack `rows` rows of ggml blocks (any format but Q4_1),
    /// given as consecutive pieces of whole rows (the parts of a fused matrix).
    pub fn new(t: QuantType, pieces: &[&[u8]], rows: usize, cols: usize) -> PackedMatrix {
        Self::for_kernels(t, pieces, rows, cols, best_kernels())
    }

    /// `new`, in the layout of the kernels `k`.
    fn for_kernels(
        t: QuantType,
        pieces: &[&[u8]],
        rows: usize,
        cols: usize,
        k: Kernels,
    ) -> PackedMatrix {
        assert!(t != QuantType::Q4_1, "{t:?} has no packed layout");
        let rb = t.row_bytes(cols);
        assert!(
            cols % t.block_len() == 0 && pieces.iter().all(|p| p.len() % rb.max(1) == 0),
            "{t:?} rows of {cols} values in pieces"
        );
        let row_of: Vec<&[u8]> = pieces
            .iter()
            .flat_map(|p| p.chunks_exact(rb.max(1)))
            .collect();
        assert_eq!(
            row_of.len(),
            rows,
            "{t:?} matrix of {rows} rows of {cols} values"
        );
        let group = rows_per_group(k);
        let mut m = PackedMatrix {
            t,
            rows,
            cols,
            group,
            data: Vec::new().into(),
        };
        let total = m.groups() * m.group_bytes() + m.tail_rows() * rb;
        m.data = crate::tensor::weight_buffer(total.div_ceil(64))
            .unwrap_or_else(|e| panic!("packing a {rows}x{cols} {t:?} matrix: {e}"));
        let (bb, gb, nb) = (t.block_bytes(), m.group_bytes(), m.blocks());
        let groups = m.groups();
        let buf = m.bytes_mut();
        let (body, tail) = buf.split_at_mut(groups * gb);
        body.par_chunks_mut(gb).enumerate().for_each(|(g, dst)| {
            if t.is_k() {
                return packed_k::pack_group(t, &row_of[g * group..(g + 1) * group], nb, dst);
            }
            let qb = quant_bytes(t);
            for r in 0..group {
                let row = row_of[g * group + r];
                for (b, blk) in row.chunks_exact(bb).enumerate() {
                    let (sc, qs) = block_at(qb, b, group);
                    dst[sc + 2 * r..sc + 2 * r + 2].copy_from_slice(&blk[..2]);
                    for k in 0..qb / 4 {
                        let at = qs + 4 * group * k + 4 * r;
                        dst[at..at + 4].copy_from_slice(&blk[2 + 4 * k..6 + 4 * k]);
                    }
                }
            }
        });
        for (dst, row) in tail
            .chunks_exact_mut(rb.max(1))
            .zip(&row_of[groups * group..])
        {
            dst.copy_from_slice(row);
        }
        m
    }

    pub fn quant_type(&self) -> QuantType {
        self.t
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn blocks(&self) -> usize {
        self.cols / self.t.block_len()
    }

    fn row_bytes(&self) -> usize {
        self.t.row_bytes(self.cols)
    }

    fn groups(&self) -> usize {
        self.rows / self.group
    }

    fn tail_rows(&self) -> usize {
        self.rows % self.group
    }

    /// Bytes per group: per pair of blocks 4G bytes of scales, and quants.
    fn group_bytes(&self) -> usize {
        let nb = self.blocks();
        if self.t.is_k() {
            return nb * packed_k::Layout { g: self.group }.superblock_bytes(self.t);
        }
        nb * self.group * quant_bytes(self.t) + nb.div_ceil(2) * 4 * self.group
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `Chunk` is 64 plain bytes.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr() as *const u8, self.data.len() * 64) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above.
        unsafe {
            std::slice::from_raw_parts_mut(self.data.as_mut_ptr() as *mut u8, self.data.len() * 64)
        }
    }

    /// The tail rows in ggml's format.
    fn tail(&self) -> &[u8] {
        let at = self.groups() * self.group_bytes();
        &self.bytes()[at..at + self.tail_rows() * self.row_bytes()]
    }

    /// Row `r` in ggml's block format (`row_bytes` long).
    pub fn unpack_row(&self, r: usize, out: &mut [u8]) {
        assert!(r < self.rows && out.len() == self.row_bytes());
        let (bb, rb) = (self.t.block_bytes(), self.row_bytes());
        let (g, lane) = (r / self.group, r % self.group);
        if g == self.groups() {
            out.copy_from_slice(&self.tail()[lane * rb..(lane + 1) * rb]);
            return;
        }
        let gb = self.group_bytes();
        let grp = &self.bytes()[g * gb..(g + 1) * gb];
        if self.t.is_k() {
            return packed_k::unpack_row(self.t, self.group, grp, lane, out);
        }
        let qb = quant_bytes(self.t);
        for (b, blk) in out.chunks_exact_mut(bb).enumerate() {
            let (sc, qs) = block_at(qb, b, self.group);
            blk[..2].copy_from_slice(&grp[sc + 2 * lane..sc + 2 * lane + 2]);
            for k in 0..qb / 4 {
                let at = qs + 4 * self.group * k + 4 * lane;
                blk[2 + 4 * k..6 + 4 * k].copy_from_slice(&grp[at..at + 4]);
            }
        }
    }

    /// Row `r` as float32.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let mut bytes = vec![0u8; self.row_bytes()];
        self.unpack_row(r, &mut bytes);
        quant::dequantize_row(self.t, &bytes, out)
    }

    /// `out[t][o] = dot(self[o], x[t])`, output rows `out_stride` apart: the
    /// activations are quantized to Q8_0 (Q8_K for the k-quants) once per call, as `quant::matmul`
    /// does, and the results equal its up to float rounding.
    pub fn matmul(&self, out: &mut [f32], out_stride: usize, x: &[f32], n_tok: usize) {
        self.matmul_with(out, out_stride, x, n_tok, best_kernels())
    }

    /// `matmul` with the kernels `k`: `Plain`, or the ones the matrix was packed for.
    fn matmul_with(&self, out: &mut [f32], out_stride: usize, x: &[f32], n_tok: usize, k: Kernels) {
        assert!(
            k == Kernels::Plain || rows_per_group(k) == self.group,
            "{k:?} kernels on {}-row groups",
            self.group
        );
        let (n_in, n_out) = (self.cols, self.rows);
        assert!(x.len() >= n_tok * n_in);
        assert!(n_tok == 0 || out.len() >= (n_tok - 1) * out_stride + n_out);
        if n_tok == 0 {
            return;
        }
        if self.t.is_k() {
            return k_bands_matmul(&[self], out, out_stride, x, n_tok, k);
        }
        let groups = self.groups();
        if groups > 0 {
            ACTIVATIONS.with(|cell| {
                let mut acts = cell.borrow_mut();
                let dst = SharedOut(out.as_mut_ptr());
                #[cfg(target_arch = "x86_64")]
                if n_tok == 1 && k == Kernels::Vnni {
                    let qx = crate::pool::timed(crate::pool::Span::Quantize, 0, || {
                        acts.quantize_blocks(&x[..n_in])
                    });
                    return self.groups_times_one(dst, qx);
                }
                let (qx, bias) = crate::pool::timed(crate::pool::Span::Quantize, 0, || {
                    acts.quantize(x, n_tok, n_in)
                });
                self.groups_times_activations(dst, out_stride, qx, bias, n_tok, k);
            });
        }
        if self.tail_rows() > 0 {
            let r0 = groups * self.group;
            quant::matmul(
                self.t,
                &mut out[r0..],
                out_stride,
                x,
                self.tail(),
                n_tok,
                n_in,
                self.tail_rows(),
            );
        }
    }

    /// The bytes of run `run` of `runs` (`pool::run_start`) of this
    /// matrix's matmul, whose tasks are its groups: what that run's thread
    /// reads, front to back.
    pub fn run_bytes(&self, run: usize, runs: usize) -> &[u8] {
        let (gb, groups) = (self.group_bytes(), self.groups());
        let group_of = |r| crate::pool::run_start(r, groups, runs);
        &self.bytes()[group_of(run) * gb..group_of(run + 1) * gb]
    }

    /// All whole groups against all tokens, a task per group, split across
    /// the pool in runs; tokens four at a time, then one at a time.
    fn groups_times_activations(
        &self,
        dst: SharedOut,
        stride: usize,
        qx: &[BlockQ8],
        bias: &[BlockSums],
        n_tok: usize,
        k: Kernels,
    ) {
        let (nb, gb, groups) = (self.blocks(), self.group_bytes(), self.groups());
        let data = self.bytes();
        let (t, rows) = (self.t, self.group);
        crate::pool::parallel_for(groups, |g| {
            let dst = dst;
            let grp = &data[g * gb..(g + 1) * gb];
            let out = dst.0.wrapping_add(g * rows);
            let mut tk = 0;
            // SAFETY (each call): rows g*G..(g+1)*G of the call's tokens are
            // written by this task only, within the bounds the caller asserted.
            while tk + 4 <= n_tok {
                unsafe { tokens_times_group::<4>(t, rows, grp, nb, qx, bias, tk, out, stride, k) };
                tk += 4;
            }
            for tk in tk..n_tok {
                unsafe { tokens_times_group::<1>(t, rows, grp, nb, qx, bias, tk, out, stride, k) };
            }
        });
    }
}

impl PackedMatrix {
    /// Whether `matmul_stack` takes these bands: k-quants all (Q8_K
    /// activations serve every k type), over the same columns, in groups of
    /// the same size.
    pub fn stackable(bands: &[&PackedMatrix]) -> bool {
        bands.first().is_some_and(|b0| {
            bands
                .iter()
                .all(|b| b.t.is_k() && b.cols == b0.cols && b.group == b0.group)
        })
    }

    /// `matmul` of `bands` stacked top to bottom (their outputs one after
    /// the other, as one matrix's): a fused q/k/v whose v is Q6_K while q and
    /// k are Q4_K, as in llama.cpp's Q4_K_M files. The input is quantized
    /// once and one parallel job runs over every band's groups, not one of
    /// each per band. The bands must be `stackable`.
    pub fn matmul_stack(
        bands: &[&PackedMatrix],
        out: &mut [f32],
        out_stride: usize,
        x: &[f32],
        n_tok: usize,
    ) {
        assert!(Self::stackable(bands), "bands that cannot share one job");
        let (n_in, n_out) = (bands[0].cols, bands.iter().map(|b| b.rows).sum::<usize>());
        assert!(x.len() >= n_tok * n_in);
        assert!(n_tok == 0 || out.len() >= (n_tok - 1) * out_stride + n_out);
        if n_tok > 0 {
            k_bands_matmul(bands, out, out_stride, x, n_tok, best_kernels());
        }
    }

    /// `run_bytes` of the job `matmul_stack` runs over `bands`: from the
    /// group run `run` starts at to the end of that group's band.
    pub fn stack_run_bytes<'a>(bands: &[&'a PackedMatrix], run: usize, runs: usize) -> &'a [u8] {
        let total: usize = bands.iter().map(|b| b.groups()).sum();
        let mut g = crate::pool::run_start(run, total, runs);
        for b in bands {
            if g < b.groups() {
                let gb = b.group_bytes();
                return &b.bytes()[g * gb..b.groups() * gb];
            }
            g -= b.groups();
        }
        &[]
    }
}

/// The k-quant `matmul` of `bands` stacked top to bottom (one band: one
/// matrix), with the kernels `k`: the input quantized to Q8_K once, one
/// task per group of every band, split across the pool in runs, tokens four
/// at a time then one at a time; each band's tail rows (past its last whole
/// group) after, through `quant::matmul`.
fn k_bands_matmul(
    bands: &[&PackedMatrix],
    out: &mut [f32],
    out_stride: usize,
    x: &[f32],
    n_tok: usize,
    k: Kernels,
) {
    let (n_in, rows) = (bands[0].cols, bands[0].group);
    let nb = n_in / QK_K;
    let total: usize = bands.iter().map(|b| b.groups()).sum();
    let dst = SharedOut(out.as_mut_ptr());
    let rounding = super::kquant::Rounding::for_tokens(n_tok);
    packed_k::with_activations(x, n_tok, n_in, |qx| {
        let tok = |k: usize| &qx[k * nb..(k + 1) * nb];
        crate::pool::parallel_for(total, |task| {
            // The task's band (a few at most) and its first output row.
            let (mut g, mut row0, mut band) = (task, 0, bands[0]);
            for b in bands {
                band = b;
                if g < b.groups() {
                    break;
                }
                g -= b.groups();
                row0 += b.rows;
            }
            let gb = band.group_bytes();
            let grp = &band.bytes()[g * gb..(g + 1) * gb];
            let dst = dst;
            let out = dst.0.wrapping_add(row0 + g * rows);
            let mut tk = 0;
            // SAFETY (each call): rows row0+g*G..row0+(g+1)*G of tokens
            // tk..tk+4 (or tk) are written by this task only, within the
            // bounds the callers asserted; `k` is what the bands were packed
            // for (or Plain).
            unsafe {
                while tk + 4 <= n_tok {
                    let xs = std::array::from_fn(|j| tok(tk + j));
                    let o = out.add(tk * out_stride);
                    packed_k::group_dot::<4>(band.t, rows, grp, nb, xs, o, out_stride, k, rounding);
                    tk += 4;
                }
                for tk in tk..n_tok {
                    let o = out.add(tk * out_stride);
                    packed_k::group_dot::<1>(
                        band.t,
                        rows,
                        grp,
                        nb,
                        [tok(tk)],
                        o,
                        out_stride,
                        k,
                        rounding,
                    );
                }
            }
        });
    });
    let mut row0 = 0;
    for b in bands {
        if b.tail_rows() > 0 {
            let r0 = row0 + b.groups() * b.group;
            quant::matmul(
                b.t,
                &mut out[r0..],
                out_stride,
                x,
                b.tail(),
                n_tok,
                n_in,
                b.tail_rows(),
            );
        }
        row0 += b.rows;
    }
}

impl PackedMatrix {
    /// One token against all whole groups on the VNNI kernels, which make
    /// each activation block's `BlockSums` as they go (a few instructions
    /// per block and group). One token's matmul quantizes its input on the
    /// calling thread alone, over lines the other threads read in the
    /// matmul before, and each such write waits for their copies to go:
    /// with the threads on two core complexes that wait was most of a
    /// token's lone work, and the sums were 36 of each block's 76 bytes.
    #[cfg(target_arch = "x86_64")]
    fn groups_times_one(&self, dst: SharedOut, qx: &[BlockQ8]) {
        let (nb, gb) = (self.blocks(), self.group_bytes());
        assert!(qx.len() == nb && self.group == WIDE_GROUP);
        let (data, t) = (self.bytes(), self.t);
        crate::pool::parallel_for(self.groups(), |g| {
            let dst = dst;
            let grp = data[g * gb..(g + 1) * gb].as_ptr();
            let out = dst.0.wrapping_add(g * WIDE_GROUP);
            // SAFETY: the CPU has the VNNI kernels' features (`k` was
            // Vnni); rows g*G..(g+1)*G are written by this task only, within
            // the bounds the caller asserted.
            unsafe {
                match t {
                    QuantType::Q4_0 => avx512::group_q4_0::<1, true>(grp, nb, [qx], [&[]], out, 0),
                    QuantType::Q8_0 => {
                        avx512::group_q8_0_lanes::<1, true>(grp, nb, [qx], [&[]], out, 0)
                    }
                    _ => unreachable!("only Q4_0 and Q8_0 are packed"),
                }
            }
        });
    }
}

/// Tokens `tk..tk + N` (activation blocks `nb` per token) against one group
/// of `rows` rows: `group_dot` with the group's outputs at `out`.
///
/// # Safety
/// As `group_dot`, for those tokens.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tokens_times_group<const N: usize>(
    t: QuantType,
    rows: usize,
    grp: &[u8],
    nb: usize,
    qx: &[BlockQ8],
    bias: &[BlockSums],
    tk: usize,
    out: *mut f32,
    stride: usize,
    k: Kernels,
) {
    let xs = std::array::from_fn(|j| &qx[(tk + j) * nb..(tk + j + 1) * nb]);
    let bs = std::array::from_fn(|j| &bias[(tk + j) * nb..(tk + j + 1) * nb]);
    group_dot::<N>(t, rows, grp, nb, xs, bs, out.add(tk * stride), stride, k)
}

/// Which group kernels run: plain Rust, AVX2 (8-row groups), or AVX-512
/// with VNNI's `vpdpbusd` (one instruction for the byte products and their
/// sum, on 512-bit vectors and 16-row groups). All give the same integer
/// block sums.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kernels {
    Plain,
    Avx2,
    Vnni,
}

/// The fastest kernels this CPU runs.
fn best_kernels() -> Kernels {
    if !fast_kernels() {
        Kernels::Plain
    } else if has_vnni() {
        Kernels::Vnni
    } else {
        Kernels::Avx2
    }
}

fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512f")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX2 kernels can run here.
fn fast_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::x86::has_avx2()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One group of `rows` rows against `N` tokens: writes `out[k * stride + r]`
/// for token k and the group's row r.
///
/// # Safety
/// `out` must be valid for those writes; `k` one that this CPU runs.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn group_dot<const N: usize>(
    t: QuantType,
    rows: usize,
    grp: &[u8],
    nb: usize,
    xs: [&[BlockQ8]; N],
    bias: [&[BlockSums]; N],
    out: *mut f32,
    stride: usize,
    k: Kernels,
) {
    debug_assert!(xs.iter().all(|x| x.len() == nb) && bias.iter().all(|b| b.len() == nb));
    #[cfg(target_arch = "x86_64")]
    match (k, t) {
        (Kernels::Plain, _) => {}
        (Kernels::Avx2, QuantType::Q4_0) => {
            return avx2::group_q4_0::<N>(grp.as_ptr(), nb, xs, bias, out, stride)
        }
        (Kernels::Avx2, QuantType::Q8_0) => {
            for (t, x) in xs.iter().enumerate() {
                avx2::group_q8_0_lanes(grp.as_ptr(), nb, x, out.add(t * stride));
            }
            return;
        }
        (Kernels::Vnni, QuantType::Q4_0) => {
            return avx512::group_q4_0::<N, false>(grp.as_ptr(), nb, xs, bias, out, stride)
        }
        (Kernels::Vnni, QuantType::Q8_0) => {
            return avx512::group_q8_0_lanes::<N, false>(grp.as_ptr(), nb, xs, bias, out, stride)
        }
        _ => unreachable!("only Q4_0 and Q8_0 are packed"),
    }
    let _ = k;
    let v = group_dot_scalar(t, rows, grp, nb, xs);
    for (k, row) in v.iter().enumerate() {
        for (r, &val) in row[..rows].iter().enumerate() {
            *out.add(k * stride + r) = val;
        }
    }
}

/// The plain version of the group kernels: each row's blocks as
/// `quant::dot_row_scalar` computes them, accumulated as the fast kernels do
/// for `N` tokens at once (per block, or in `Q8Lanes`), so the two agree
/// bit for bit.
fn group_dot_scalar<const N: usize>(
    t: QuantType,
    rows: usize,
    grp: &[u8],
    nb: usize,
    xs: [&[BlockQ8]; N],
) -> [[f32; WIDE_GROUP]; N] {
    let qb = quant_bytes(t);
    let mut out = [[0.0f32; WIDE_GROUP]; N];
    let mut lanes = [[[0.0f32; 8]; WIDE_GROUP]; N];
    for r in 0..rows {
        for b in 0..nb {
            let (sc, qs) = block_at(qb, b, rows);
            let d = f16::from_le_bytes([grp[sc + 2 * r], grp[sc + 2 * r + 1]]).to_f32();
            let byte = |j: usize| grp[qs + 4 * rows * (j / 4) + 4 * r + j % 4];
            for (k, x) in xs.iter().enumerate() {
                let y = &x[b];
                let mut si = 0i32;
                match t {
                    QuantType::Q4_0 => {
                        for j in 0..16 {
                            let q = byte(j);
                            si += ((q & 0x0f) as i32 - 8) * y.qs[j] as i32
                                + ((q >> 4) as i32 - 8) * y.qs[j + 16] as i32;
                        }
                    }
                    QuantType::Q8_0 => {
                        for (l, lane) in lanes[k][r].iter_mut().enumerate() {
                            let s: i32 = (4 * l..4 * l + 4)
                                .map(|j| byte(j) as i8 as i32 * y.qs[j] as i32)
                                .sum();
                            *lane = (d * y.d).mul_add(s as f32, *lane);
                        }
                        continue;
                    }
                    _ => unreachable!("only Q4_0 and Q8_0 are packed"),
                }
                out[k][r] = (d * y.d).mul_add(si as f32, out[k][r]);
            }
        }
        if t == QuantType::Q8_0 {
            for k in 0..N {
                out[k][r] = Q8Lanes::sum(&lanes[k][r]);
            }
        }
    }
    out
}

/// How llama.cpp sums a Q8_0 row (its tinyBLAS matmuls): eight float lanes,
/// lane `l` adding, block by block, the block's exact integer sum of values
/// 4l..4l+3 times (weight scale * activation scale) in one fused
/// multiply-add; then the lanes added as `hsum` adds them. Every Q8_0 row is
/// summed so here, one token or a tile of them: then our Q8_0 logits are
/// llama.cpp's. It is eight float multiply-adds per block where one would
/// do, which costs a prompt about a third of its speed; decode reads
/// memory, and does not feel it.
struct Q8Lanes;

impl Q8Lanes {
    fn sum(a: &[f32; 8]) -> f32 {
        quant::lane_sum(a)
    }
}

/// Sums of an activation block's values that offset unsigned weight bytes.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub(crate) struct BlockSums {
    /// 8 * the sum of all 32 values: Q4_0's nibbles go in with their +8.
    all: i32,
    /// Per lane l, -128 * the sum of values 4l..4l+3: Q8_0's weights go in
    /// as w + 128, and a lane starts at this.
    lanes: [i32; 8],
}

impl BlockSums {
    fn of(y: &BlockQ8) -> BlockSums {
        #[cfg(target_arch = "x86_64")]
        if super::x86::has_avx2() {
            // SAFETY: the CPU has AVX2.
            return unsafe { avx2::block_sums(y) };
        }
        Self::of_scalar(y)
    }

    /// The plain `of` (the oracle for the AVX2 one).
    fn of_scalar(y: &BlockQ8) -> BlockSums {
        let lane: [i32; 8] =
            std::array::from_fn(|l| y.qs[4 * l..4 * l + 4].iter().map(|&v| v as i32).sum());
        BlockSums {
            all: 8 * lane.iter().sum::<i32>(),
            lanes: lane.map(|s| -128 * s),
        }
    }
}

/// Quantized activations and their `BlockSums`, reused call to call.
#[derive(Default)]
struct Activations {
    qx: Vec<BlockQ8>,
    bias: Vec<BlockSums>,
}

impl Activations {
    fn quantize(&mut self, x: &[f32], n_tok: usize, n_in: usize) -> (&[BlockQ8], &[BlockSums]) {
        let nb = n_in / QK;
        let n = n_tok * nb;
        if self.qx.len() < n {
            self.qx.resize(n, BlockQ8::default());
            self.bias.resize(n, BlockSums::default());
        }
        let (qx, bias) = (&mut self.qx[..n], &mut self.bias[..n]);
        crate::pool::parallel_chunks2(qx, nb, bias, nb, |t, q, s| {
            quant::quantize_row_q8(&x[t * n_in..(t + 1) * n_in], q);
            for (s, b) in s.iter_mut().zip(q.iter()) {
                *s = BlockSums::of(b);
            }
        });
        (&self.qx[..n], &self.bias[..n])
    }
}

impl Activations {
    /// One token's blocks alone, without their `BlockSums`.
    #[cfg(target_arch = "x86_64")]
    fn quantize_blocks(&mut self, x: &[f32]) -> &[BlockQ8] {
        let nb = x.len() / QK;
        if self.qx.len() < nb {
            self.qx.resize(nb, BlockQ8::default());
        }
        quant::quantize_row_q8(x, &mut self.qx[..nb]);
        &self.qx[..nb]
    }
}

thread_local! {
    static ACTIVATIONS: RefCell<Activations> = RefCell::new(Activations::default());
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! Activation values are in -127..=127 (our quantizer never makes -128);
    //! the 16-bit sums below rely on it.

    use std::arch::x86_64::*;

    use super::{BlockQ8, BlockSums};

    /// Activation bytes 4k..4k+3 of a block in every i32 lane.
    #[inline(always)]
    unsafe fn bcast(y: &BlockQ8, k: usize) -> __m256i {
        _mm256_set1_epi32((y.qs.as_ptr() as *const i32).add(k).read_unaligned())
    }

    /// `BlockSums::of`: lane l's four bytes summed by one unsigned-times-
    /// signed pair sum (ones times the bytes) and one pair sum of those.
    /// One token's matmul makes these for every block of its input, on the
    /// calling thread alone; the plain loop cost decode a few percent.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) unsafe fn block_sums(y: &BlockQ8) -> BlockSums {
        let q = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
        let lanes = _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_set1_epi8(1), q),
            _mm256_set1_epi16(1),
        );
        let mut out = BlockSums {
            all: 8 * crate::kernels::x86::hsum_i32(lanes),
            lanes: [0; 8],
        };
        let scaled = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<7>(lanes));
        _mm256_storeu_si256(out.lanes.as_mut_ptr() as *mut __m256i, scaled);
        out
    }

    /// How far ahead of the block in use the weights are fetched: the
    /// hardware prefetcher alone leaves a one-token matmul well short of the
    /// memory's bandwidth.
    const PREFETCH_BYTES: usize = 1024;

    /// Prefetch the `LINES` cache lines `PREFETCH_BYTES` past `p` (a block's
    /// quants; scales and quants form one stream, and the groups lie back to
    /// back, so this runs on into the next group).
    #[inline(always)]
    unsafe fn prefetch<const LINES: usize>(p: *const u8) {
        for l in 0..LINES {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES + 64 * l) as *const i8);
        }
    }

    #[inline(always)]
    unsafe fn scales(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    /// Q4_0 group of 8 rows (128 quant bytes per block) against `N` tokens.
    /// Per token 16-bit sums of nibble * activation: each lane adds eight
    /// maddubs lanes of two products of at most 15 * 127 each, at most
    /// 30480, no overflow; then minus the bias. Vector k's low nibbles are
    /// values 4k..4k+3, its high ones 16+4k..16+4k+3.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn group_q4_0<const N: usize>(
        g: *const u8,
        nb: usize,
        xs: [&[BlockQ8]; N],
        bias: [&[BlockSums]; N],
        out: *mut f32,
        stride: usize,
    ) {
        let m4 = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            let (sc, qs) = super::block_at(16, b, super::GROUP);
            let q = g.add(qs);
            prefetch::<2>(q);
            let ys: [&BlockQ8; N] = std::array::from_fn(|t| xs[t].get_unchecked(b));
            let bias_of = |t: usize| bias[t].get_unchecked(b).all;
            let mut s = [_mm256_setzero_si256(); N];
            for k in 0..4 {
                let v = _mm256_load_si256(q.add(32 * k) as *const __m256i);
                let lo = _mm256_and_si256(v, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                for t in 0..N {
                    let p = _mm256_add_epi16(
                        _mm256_maddubs_epi16(lo, bcast(ys[t], k)),
                        _mm256_maddubs_epi16(hi, bcast(ys[t], k + 4)),
                    );
                    s[t] = _mm256_add_epi16(s[t], p);
                }
            }
            let d = scales(g.add(sc));
            for t in 0..N {
                // sum q*y - 8 * sum y = sum (q - 8) * y, lane r for row r.
                let si =
                    _mm256_sub_epi32(_mm256_madd_epi16(s[t], ones), _mm256_set1_epi32(bias_of(t)));
                acc[t] = _mm256_fmadd_ps(
                    _mm256_mul_ps(d, _mm256_set1_ps(ys[t].d)),
                    _mm256_cvtepi32_ps(si),
                    acc[t],
                );
            }
        }
        for (t, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(t * stride), *a);
        }
    }

    /// Q8_0 group of 8 rows (256 quant bytes per block) against one token,
    /// in `super::Q8Lanes`: vector k's i32 lane r is row r's lane k (|w| as
    /// unsigned bytes, -128 giving 128, times y with w's signs). One token:
    /// its 8 accumulators and the operands fill the 16 registers.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn group_q8_0_lanes(g: *const u8, nb: usize, x: &[BlockQ8], out: *mut f32) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 8];
        for b in 0..nb {
            let (sc, qs) = super::block_at(32, b, super::GROUP);
            let q = g.add(qs);
            prefetch::<4>(q);
            let y = x.get_unchecked(b);
            let scale = _mm256_mul_ps(scales(g.add(sc)), _mm256_set1_ps(y.d));
            for (k, a) in acc.iter_mut().enumerate() {
                let w = _mm256_load_si256(q.add(32 * k) as *const __m256i);
                let p =
                    _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(bcast(y, k), w));
                let lane = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
                *a = _mm256_fmadd_ps(scale, lane, *a);
            }
        }
        let add = |x, y| _mm256_add_ps(x, y);
        let r = add(
            add(add(acc[4], acc[0]), add(acc[6], acc[2])),
            add(add(acc[5], acc[1]), add(acc[7], acc[3])),
        );
        _mm256_storeu_ps(out, r);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The 16-row groups (`WIDE_GROUP`): one 512-bit vector holds quant bytes
    //! 4k..4k+3 of all 16 rows, and `vpdpbusd` adds the byte products straight
    //! into i32 sums that start at minus the bias (exact integers, as the
    //! AVX2 kernels' 16-bit sums). The activation bytes come as 32-bit
    //! broadcasts folded into the `vpdpbusd`s.

    use std::arch::x86_64::*;

    use super::{BlockQ8, BlockSums, WIDE_GROUP};

    /// Activation bytes 4k..4k+3 of a block in every i32 lane.
    #[inline(always)]
    unsafe fn bcast(y: &BlockQ8, k: usize) -> __m512i {
        _mm512_set1_epi32((y.qs.as_ptr() as *const i32).add(k).read_unaligned())
    }

    /// The 16 rows' f16 scales of a block as floats.
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }

    /// Block `b`'s sums for token `t`: made from the block when `MADE`
    /// (`bias` is then empty), else read from `bias`.
    #[inline(always)]
    unsafe fn sums_at<const MADE: bool>(bias: &[BlockSums], y: &BlockQ8, b: usize) -> BlockSums {
        if MADE {
            super::avx2::block_sums(y)
        } else {
            *bias.get_unchecked(b)
        }
    }

    /// Q4_0, 16 rows against `N` tokens: the nibbles go in unsigned (0..=15)
    /// and 8 * sum(y), the bias, comes off; the low nibbles of vector k are
    /// values 4k..4k+3, the high ones 16+4k..16+4k+3. `MADE`: the sums are
    /// made here (`sums_at`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn group_q4_0<const N: usize, const MADE: bool>(
        g: *const u8,
        nb: usize,
        xs: [&[BlockQ8]; N],
        bias: [&[BlockSums]; N],
        out: *mut f32,
        stride: usize,
    ) {
        let m4 = _mm512_set1_epi8(0x0f);
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..nb {
            let (sc, qs) = super::block_at(16, b, WIDE_GROUP);
            let q = g.add(qs);
            let ys: [&BlockQ8; N] = std::array::from_fn(|t| xs[t].get_unchecked(b));
            // Two chains of four `vpdpbusd`s per token (low and high
            // nibbles), not one of eight: shorter waits on their latency.
            let mut lo_sum: [__m512i; N] =
                std::array::from_fn(|t| _mm512_set1_epi32(-sums_at::<MADE>(bias[t], ys[t], b).all));
            let mut hi_sum = [_mm512_setzero_si512(); N];
            for k in 0..4 {
                let v = _mm512_loadu_si512(q.add(64 * k) as *const __m512i);
                let lo = _mm512_and_si512(v, m4);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
                for t in 0..N {
                    lo_sum[t] = _mm512_dpbusd_epi32(lo_sum[t], lo, bcast(ys[t], k));
                    hi_sum[t] = _mm512_dpbusd_epi32(hi_sum[t], hi, bcast(ys[t], k + 4));
                }
            }
            let d = scales(g.add(sc));
            for t in 0..N {
                acc[t] = _mm512_fmadd_ps(
                    _mm512_mul_ps(d, _mm512_set1_ps(ys[t].d)),
                    _mm512_cvtepi32_ps(_mm512_add_epi32(lo_sum[t], hi_sum[t])),
                    acc[t],
                );
            }
        }
        for (t, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(t * stride), *a);
        }
    }

    /// Q8_0, 16 rows against `N` tokens, in `super::Q8Lanes`: vector k's
    /// i32 lane r is row r's lane k. The weights go in as unsigned bytes
    /// w + 128 (a sign-bit flip) into sums that start at minus 128 times the
    /// lane's four activations. Two tokens at a time, so that their 16
    /// accumulators and the operands fit the 32 registers. `MADE`: as in
    /// `group_q4_0`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn group_q8_0_lanes<const N: usize, const MADE: bool>(
        g: *const u8,
        nb: usize,
        xs: [&[BlockQ8]; N],
        sums: [&[BlockSums]; N],
        out: *mut f32,
        stride: usize,
    ) {
        let mut t = 0;
        while t + 2 <= N {
            lanes_tile::<2, MADE>(
                g,
                nb,
                [xs[t], xs[t + 1]],
                [sums[t], sums[t + 1]],
                out.add(t * stride),
                stride,
            );
            t += 2;
        }
        if t < N {
            lanes_tile::<1, MADE>(g, nb, [xs[t]], [sums[t]], out.add(t * stride), stride);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    #[inline]
    unsafe fn lanes_tile<const N: usize, const MADE: bool>(
        g: *const u8,
        nb: usize,
        xs: [&[BlockQ8]; N],
        sums: [&[BlockSums]; N],
        out: *mut f32,
        stride: usize,
    ) {
        let flip = _mm512_set1_epi8(-128);
        let mut acc = [[_mm512_setzero_ps(); 8]; N];
        for b in 0..nb {
            let (sc, qs) = super::block_at(32, b, WIDE_GROUP);
            let q = g.add(qs);
            let ys: [&BlockQ8; N] = std::array::from_fn(|t| xs[t].get_unchecked(b));
            // Made sums live here; read ones stay where they are.
            let made: [BlockSums; N] = std::array::from_fn(|t| {
                if MADE {
                    sums_at::<true>(sums[t], ys[t], b)
                } else {
                    BlockSums::default()
                }
            });
            let off: [&[i32; 8]; N] = std::array::from_fn(|t| {
                if MADE {
                    &made[t].lanes
                } else {
                    &sums[t].get_unchecked(b).lanes
                }
            });
            let d = scales(g.add(sc));
            let scale: [__m512; N] =
                std::array::from_fn(|t| _mm512_mul_ps(d, _mm512_set1_ps(ys[t].d)));
            for k in 0..8 {
                let u = _mm512_xor_si512(_mm512_loadu_si512(q.add(64 * k) as *const __m512i), flip);
                for t in 0..N {
                    let s = _mm512_dpbusd_epi32(_mm512_set1_epi32(off[t][k]), u, bcast(ys[t], k));
                    acc[t][k] = _mm512_fmadd_ps(scale[t], _mm512_cvtepi32_ps(s), acc[t][k]);
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            let add = |x, y| _mm512_add_ps(x, y);
            let r = add(
                add(add(a[4], a[0]), add(a[6], a[2])),
                add(add(a[5], a[1]), add(a[7], a[3])),
            );
            _mm512_storeu_ps(out.add(t * stride), r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_data::{rand, rand_blocks};

    const TYPES: [QuantType; 2] = [QuantType::Q4_0, QuantType::Q8_0];

    #[test]
    fn block_sums_match_the_plain_ones() {
        // Every byte value in every position, and the extremes together.
        let mut blocks: Vec<BlockQ8> = (0..=255u8)
            .map(|v| {
                let mut b = BlockQ8::default();
                for (j, q) in b.qs.iter_mut().enumerate() {
                    *q = v.wrapping_add((37 * j) as u8) as i8;
                }
                b
            })
            .collect();
        for v in [-128i8, -127, 127] {
            let mut b = BlockQ8::default();
            b.qs = [v; 32];
            blocks.push(b);
        }
        for b in &blocks {
            assert_eq!(BlockSums::of(b), BlockSums::of_scalar(b), "{:?}", b.qs);
        }
    }

    /// The layouts: 8-row groups (plain and AVX2 kernels), 16-row groups
    /// (AVX-512 kernels of Q4_0/Q8_0). Packing and the plain kernels run on
    /// any CPU in either.
    const LAYOUTS: [Kernels; 2] = [Kernels::Avx2, Kernels::Vnni];

    /// Every row of a packed matrix unpacks to its original blocks (packed
    /// from one piece, and from pieces that split a group), in every layout.
    fn check_keeps_every_row(t: QuantType, shapes: &[(usize, usize)]) {
        for &(rows, cols) in shapes {
            let w = rand_blocks(t, rows, cols, rows as u64);
            let rb = t.row_bytes(cols);
            let cut = rows / 3 * rb;
            let packs = LAYOUTS.iter().flat_map(|&k| {
                [
                    PackedMatrix::for_kernels(t, &[&w], rows, cols, k),
                    PackedMatrix::for_kernels(t, &[&w[..cut], &w[cut..]], rows, cols, k),
                ]
            });
            for m in packs {
                let mut row = vec![0u8; rb];
                let (mut f, mut g) = (vec![0.0f32; cols], vec![0.0f32; cols]);
                for r in 0..rows {
                    m.unpack_row(r, &mut row);
                    assert_eq!(row, &w[r * rb..(r + 1) * rb], "{t:?} {rows}x{cols} row {r}");
                    m.row_f32(r, &mut f);
                    quant::dequantize_row(t, &w[r * rb..(r + 1) * rb], &mut g);
                    assert_eq!(f, g);
                }
            }
        }
    }

    #[test]
    fn run_bytes_are_where_each_thread_starts() {
        use std::sync::Mutex;
        for (t, rows, cols) in [(QuantType::Q4_0, 1000, 64), (QuantType::Q4_K, 200, 256)] {
            let w = rand_blocks(t, rows, cols, 3);
            let m = PackedMatrix::new(t, &[&w], rows, cols);
            let (base, gb) = (m.bytes().as_ptr() as usize, m.group_bytes());
            for runs in 1..=3 {
                // The runs' bytes: every whole group once, in order.
                let parts: Vec<&[u8]> = (0..runs).map(|r| m.run_bytes(r, runs)).collect();
                let mut at = base;
                for p in &parts {
                    assert_eq!(p.as_ptr() as usize, at);
                    at += p.len();
                }
                assert_eq!(at, base + m.groups() * gb);
                // Each thread's first group of its own run is where its bytes start.
                let seen = Mutex::new(Vec::new());
                let mut pool = crate::pool::Pool::new(runs).unwrap();
                pool.enter(|| {
                    // The job a matmul runs: a task per group.
                    crate::pool::parallel_for(m.groups(), |g| {
                        seen.lock().unwrap().push((crate::pool::thread_index(), g));
                    })
                })
                .unwrap();
                let seen = seen.into_inner().unwrap();
                assert_eq!(seen.len(), m.groups());
                for (r, p) in parts.iter().enumerate() {
                    let own = (p.as_ptr() as usize - base) / gb
                        ..(p.as_ptr() as usize + p.len() - base) / gb;
                    let first = seen
                        .iter()
                        .filter(|&&(th, g)| th == r && own.contains(&g))
                        .map(|s| s.1)
                        .min();
                    if let Some(first) = first {
                        assert_eq!(first, own.start, "{t:?}, thread {r} of {runs}");
                    }
                }
            }
        }
    }

    #[test]
    fn packing_keeps_every_row() {
        for t in TYPES {
            check_keeps_every_row(
                t,
                &[
                    (8, 32),
                    (13, 64),
                    (24, 96),
                    (7, 32),
                    (40, 320),
                    (16, 32),
                    (35, 96),
                ],
            );
        }
        for t in K_TYPES {
            check_keeps_every_row(t, &[(8, 256), (13, 512), (24, 768), (7, 256), (35, 512)]);
        }
    }

    /// The packed matmul with kernels `k` (on a matrix packed for `layout`)
    /// against `quant::matmul` on the same rows: equal up to the order of
    /// float additions (the integer block sums are exact).
    #[allow(clippy::too_many_arguments)]
    fn check_against_unpacked(
        t: QuantType,
        rows: usize,
        cols: usize,
        n_tok: usize,
        stride: usize,
        layout: Kernels,
        k: Kernels,
        seed: u64,
    ) {
        let w = rand_blocks(t, rows, cols, seed);
        let x: Vec<f32> = rand(n_tok * cols, seed + 1)
            .iter()
            .enumerate()
            .map(|(i, v)| v * (1.0 + (i % 5) as f32))
            .collect();
        let m = PackedMatrix::for_kernels(t, &[&w], rows, cols, layout);
        let mut got = vec![f32::NAN; n_tok * stride];
        m.matmul_with(&mut got, stride, &x, n_tok, k);
        let mut want = vec![0.0f32; n_tok * rows];
        quant::matmul(t, &mut want, rows, &x, &w, n_tok, cols, rows);
        // Magnitude of the terms each result sums, for the tolerance.
        let rb = t.row_bytes(cols);
        for tk in 0..n_tok {
            let xs = &x[tk * cols..(tk + 1) * cols];
            let mut wf = vec![0.0f32; cols];
            for r in 0..rows {
                quant::dequantize_row(t, &w[r * rb..(r + 1) * rb], &mut wf);
                let scale: f32 = wf.iter().zip(xs).map(|(a, b)| (a * b).abs()).sum();
                let (g, e) = (got[tk * stride + r], want[tk * rows + r]);
                assert!(
                    (g - e).abs() <= 1e-5 * (1.0 + scale),
                    "{t:?} {rows}x{cols}, {n_tok} tokens, token {tk} row {r}: {g} vs {e}"
                );
                // Q8_0 rows sum in llama.cpp's lanes, packed or not, alone
                // or in a tile; Q5_K and Q6_K rows in its lanes below 8
                // tokens and in its tiled steps from 8: the same floats.
                if matches!(t, QuantType::Q8_0 | QuantType::Q5_K | QuantType::Q6_K) {
                    assert_eq!(
                        g.to_bits(),
                        e.to_bits(),
                        "{t:?} {rows}x{cols}, {n_tok} tokens, token {tk} row {r}"
                    );
                }
            }
            assert!(
                got[tk * stride + rows..(tk + 1) * stride]
                    .iter()
                    .all(|v| v.is_nan()),
                "{t:?}: gap written"
            );
        }
    }

    #[test]
    fn packed_matmul_matches_unpacked() {
        let fast = best_kernels();
        eprintln!("packed kernels: {fast:?}");
        for t in TYPES {
            for (i, &(rows, cols)) in [
                (8, 32),
                (16, 64),
                (13, 96),
                (21, 512),
                (64, 256),
                (7, 64),
                (35, 128),
                (48, 96),
            ]
            .iter()
            .enumerate()
            {
                for n_tok in 1..=9 {
                    for stride in [rows, rows + 3] {
                        check_against_unpacked(
                            t,
                            rows,
                            cols,
                            n_tok,
                            stride,
                            fast,
                            fast,
                            100 * i as u64 + n_tok as u64,
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn scalar_group_kernels_match_unpacked() {
        let cases = TYPES
            .iter()
            .map(|&t| (t, 160))
            .chain(K_TYPES.iter().map(|&t| (t, 512)));
        for (t, cols) in cases {
            for n_tok in [1, 4, 6] {
                for layout in LAYOUTS {
                    check_against_unpacked(
                        t,
                        37,
                        cols,
                        n_tok,
                        41,
                        layout,
                        Kernels::Plain,
                        7 + n_tok as u64,
                    );
                }
            }
        }
    }

    #[test]
    fn fast_group_kernels_equal_the_scalar_ones() {
        // The same fused multiply-adds in the same order: bit for bit.
        if !fast_kernels() {
            return;
        }
        let cases = TYPES
            .iter()
            .flat_map(|&t| {
                [
                    (t, 8, 32, 1),
                    (t, 16, 32, 1),
                    (t, 32, 2048, 1),
                    (t, 24, 512, 5),
                    (t, 40, 2048, 9),
                    (t, 48, 96, 4),
                ]
            })
            .chain(K_TYPES.iter().flat_map(|&t| {
                [
                    (t, 8, 256, 1),
                    (t, 24, 512, 5),
                    (t, 40, 2048, 9),
                    (t, 16, 768, 4),
                ]
            }));
        for (t, rows, cols, n_tok) in cases {
            let w = rand_blocks(t, rows, cols, 3);
            let x = rand(n_tok * cols, 4);
            // Every fast level this CPU has, on a matrix in its layout.
            let levels = [Kernels::Avx2, Kernels::Vnni]
                .into_iter()
                .filter(|&k| k != Kernels::Vnni || has_vnni());
            for k in levels {
                let m = PackedMatrix::for_kernels(t, &[&w], rows, cols, k);
                let mut b = vec![0.0f32; n_tok * rows];
                m.matmul_with(&mut b, rows, &x, n_tok, Kernels::Plain);
                let mut a = vec![0.0f32; n_tok * rows];
                m.matmul_with(&mut a, rows, &x, n_tok, k);
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "{t:?} {k:?}");
            }
        }
    }

    #[test]
    fn packed_kernels_are_exact_on_extreme_blocks() {
        // All nibbles 0 or 15 / all int8 -128 or 127, activations at +-127
        // (the 16-bit sums' worst cases), scales 1: integer results.
        let one = f16::from_f32(1.0).to_le_bytes();
        for t in TYPES {
            let (rows, cols) = (32, 256);
            for fill in [0x00u8, 0xff, 0x80, 0x7f, 0x0f, 0xf0, 0x81] {
                let mut w = vec![fill; rows * t.row_bytes(cols)];
                for blk in w.chunks_exact_mut(t.block_bytes()) {
                    blk[..2].copy_from_slice(&one);
                }
                let m = PackedMatrix::new(t, &[&w], rows, cols);
                for pattern in 0..3 {
                    // Activations quantize to exactly +-127 (scale 1).
                    let x: Vec<f32> = (0..cols)
                        .map(|i| match pattern {
                            0 => 127.0,
                            1 => -127.0,
                            _ => {
                                if i % 3 == 0 {
                                    127.0
                                } else {
                                    -127.0
                                }
                            }
                        })
                        .collect();
                    let mut got = vec![0.0f32; rows];
                    m.matmul(&mut got, rows, &x, 1);
                    let mut want = vec![0.0f32; rows];
                    quant::matmul(t, &mut want, rows, &x, &w, 1, cols, rows);
                    assert_eq!(got, want, "{t:?} fill {fill:#04x} pattern {pattern}");
                }
            }
        }
    }

    // ---- k-quants (Q4_K, Q5_K, Q6_K) ----

    const K_TYPES: [QuantType; 3] = [QuantType::Q4_K, QuantType::Q5_K, QuantType::Q6_K];

    #[test]
    fn k_packed_matmul_matches_unpacked() {
        let fast = best_kernels();
        for t in K_TYPES {
            for (i, &rows) in [7usize, 8, 13, 24, 35, 48].iter().enumerate() {
                for nb in 1..=3 {
                    for n_tok in 1..=9 {
                        for stride in [rows, rows + 3] {
                            check_against_unpacked(
                                t,
                                rows,
                                256 * nb,
                                n_tok,
                                stride,
                                fast,
                                fast,
                                100 * i as u64 + 10 * nb as u64 + n_tok as u64,
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn stacked_bands_equal_each_bands_own_matmul() {
        // A fused q/k/v of Q4_K, Q6_K and Q5_K bands, with rows past their
        // last whole group (the AVX2 and AVX-512 groups are 8 and 16 rows),
        // on one thread and on three.
        let cols = 512;
        let shapes = [
            (QuantType::Q4_K, 40),
            (QuantType::Q6_K, 24),
            (QuantType::Q5_K, 19),
        ];
        let bands: Vec<PackedMatrix> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(t, rows))| {
                PackedMatrix::new(t, &[&rand_blocks(t, rows, cols, 40 + i as u64)], rows, cols)
            })
            .collect();
        let refs: Vec<&PackedMatrix> = bands.iter().collect();
        assert!(PackedMatrix::stackable(&refs));
        let n_out: usize = shapes.iter().map(|s| s.1).sum();
        for threads in [1, 3] {
            let mut pool = crate::pool::Pool::new(threads).unwrap();
            for n_tok in [1, 2, 5, 9] {
                let stride = n_out + 3;
                let x = rand(n_tok * cols, 7 + n_tok as u64);
                let mut stacked = vec![f32::NAN; n_tok * stride];
                let mut each = vec![f32::NAN; n_tok * stride];
                pool.enter(|| {
                    PackedMatrix::matmul_stack(&refs, &mut stacked, stride, &x, n_tok);
                    let mut r0 = 0;
                    for b in &bands {
                        b.matmul(&mut each[r0..], stride, &x, n_tok);
                        r0 += b.rows();
                    }
                })
                .unwrap();
                for tk in 0..n_tok {
                    let row = tk * stride..tk * stride + n_out;
                    assert!(stacked[row.clone()].iter().all(|v| v.is_finite()));
                    let same = stacked[row.clone()]
                        .iter()
                        .zip(&each[row])
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{threads} threads, {n_tok} tokens, token {tk}");
                }
            }
        }
    }

    #[test]
    fn stacks_share_a_job_only_over_k_quants_of_one_width() {
        let m = |t: QuantType, cols: usize| {
            PackedMatrix::new(t, &[&rand_blocks(t, 32, cols, 1)], 32, cols)
        };
        let (q4k, q6k, q4k_wide, q8) = (
            m(QuantType::Q4_K, 256),
            m(QuantType::Q6_K, 256),
            m(QuantType::Q4_K, 512),
            m(QuantType::Q8_0, 256),
        );
        assert!(PackedMatrix::stackable(&[&q4k, &q6k]));
        assert!(!PackedMatrix::stackable(&[&q4k, &q4k_wide]));
        assert!(!PackedMatrix::stackable(&[&q4k, &q8]));
        assert!(!PackedMatrix::stackable(&[]));
    }

    #[test]
    fn stack_run_bytes_are_where_each_thread_starts() {
        let cols = 256;
        let bands: Vec<PackedMatrix> = [(QuantType::Q4_K, 160), (QuantType::Q6_K, 48)]
            .iter()
            .map(|&(t, rows)| PackedMatrix::new(t, &[&rand_blocks(t, rows, cols, 5)], rows, cols))
            .collect();
        let refs: Vec<&PackedMatrix> = bands.iter().collect();
        let groups: Vec<usize> = bands.iter().map(|b| b.groups()).collect();
        let total: usize = groups.iter().sum();
        for runs in 1..=4 {
            for run in 0..runs {
                let bytes = PackedMatrix::stack_run_bytes(&refs, run, runs);
                // The band and group of the run's first task, and that band's end.
                let mut g = crate::pool::run_start(run, total, runs);
                let b = if g < groups[0] { 0 } else { 1 };
                if b == 1 {
                    g -= groups[0];
                }
                let gb = bands[b].group_bytes();
                let want = &bands[b].bytes()[g * gb..groups[b] * gb];
                assert_eq!(
                    (bytes.as_ptr(), bytes.len()),
                    (want.as_ptr(), want.len()),
                    "run {run} of {runs}"
                );
            }
        }
    }

    #[test]
    fn k_packed_kernels_are_exact_on_extreme_blocks() {
        // Extreme quants, scales and mins, d = dmin = 1, activations exactly
        // +-127: every term is an integer; the results must be the exact sums
        // up to the final float rounding (an overflowing 16-bit sum would be
        // off by multiples of 65536).
        let one = f16::from_f32(1.0).to_le_bytes();
        let (rows, cols) = (16, 512);
        let mut cases: Vec<(QuantType, Vec<u8>)> = Vec::new();
        for qs in [0x00u8, 0xff, 0x0f, 0xf0] {
            for (sc, mn) in [(0xffu8, 0xffu8), (0xff, 0x00), (0x00, 0xff), (0x3f, 0xc0)] {
                let mut blk = vec![qs; 144];
                blk[0..2].copy_from_slice(&one);
                blk[2..4].copy_from_slice(&one);
                // Bytes 4..8 hold scales 0..3 (and the top bits of 4..7), 8..12 mins.
                blk[4..8].fill(sc);
                blk[8..12].fill(mn);
                blk[12..16].fill(sc & 0x0f | mn & 0xf0);
                cases.push((QuantType::Q4_K, blk.repeat(rows * cols / 256)));
            }
        }
        for (qs, qh) in [
            (0xffu8, 0xffu8),
            (0x00, 0xff),
            (0xff, 0x00),
            (0x0f, 0xaa),
            (0xf0, 0x55),
        ] {
            for (sc, mn) in [(0xffu8, 0xffu8), (0xff, 0x00), (0x3f, 0xc0)] {
                let mut blk = vec![qs; 176];
                blk[0..2].copy_from_slice(&one);
                blk[2..4].copy_from_slice(&one);
                blk[4..8].fill(sc);
                blk[8..12].fill(mn);
                blk[12..16].fill(sc & 0x0f | mn & 0xf0);
                blk[16..48].fill(qh);
                cases.push((QuantType::Q5_K, blk.repeat(rows * cols / 256)));
            }
        }
        for (ql, qh) in [(0x00u8, 0x00u8), (0xff, 0xff), (0x0f, 0xcc), (0xf0, 0x33)] {
            for sc in [0x80u8, 0x7f, 0x81, 0x00] {
                let mut blk = vec![ql; 210];
                blk[128..192].fill(qh);
                blk[192..208].fill(sc);
                blk[200] = 0x80;
                blk[201] = 0x7f;
                blk[208..210].copy_from_slice(&one);
                cases.push((QuantType::Q6_K, blk.repeat(rows * cols / 256)));
            }
        }
        for (t, w) in cases {
            let m = PackedMatrix::new(t, &[&w], rows, cols);
            let rb = t.row_bytes(cols);
            for pattern in 0..3 {
                let x: Vec<f32> = (0..cols)
                    .map(|i| match pattern {
                        0 => 127.0,
                        1 => -127.0,
                        _ => {
                            if i % 3 == 0 {
                                127.0
                            } else {
                                -127.0
                            }
                        }
                    })
                    .collect();
                let mut got = vec![0.0f32; rows];
                m.matmul(&mut got, rows, &x, 1);
                let mut want = vec![0.0f32; rows];
                quant::matmul(t, &mut want, rows, &x, &w, 1, cols, rows);
                let mut wf = vec![0.0f32; cols];
                for r in 0..rows {
                    quant::dequantize_row(t, &w[r * rb..(r + 1) * rb], &mut wf);
                    let exact: f64 = wf.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let tol = 4.0 * f32::EPSILON as f64 * exact.abs().max(1.0);
                    assert!(
                        (got[r] as f64 - exact).abs() <= tol,
                        "{t:?} pattern {pattern} row {r}: {} vs exact {exact}",
                        got[r]
                    );
                    assert!(
                        (want[r] as f64 - exact).abs() <= tol,
                        "{t:?} unpacked pattern {pattern} row {r}"
                    );
                }
            }
        }
    }
}
