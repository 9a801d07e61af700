//! The forward pass of the Llama-family decoder (Llama, Mistral, Qwen2, Phi-3),
//! written to read like the math: embed, then per layer RMSNorm -> fused QKV
//! -> RoPE -> causal (optionally sliding-window) GQA attention -> output
//! projection -> residual, RMSNorm -> fused gate/up -> SwiGLU -> down ->
//! residual; final norm and the output head.
//!
//! All rows of a ragged batch go through every matmul together (one matrix of
//! `total_tokens x hidden`); only attention looks at rows separately.

use super::kv_cache::{KvCache, KvElem, LayerView};
use super::Model;
use crate::kernels::{rmsnorm, rope_rotate_half, softmax, swiglu};
use crate::pool::{current_threads, parallel_chunks, thread_index};

/// A ragged batch: row `b` has `lengths[b]` tokens (concatenated in `tokens`)
/// at positions `start_pos[b]..`; it reads and fills KV-cache slot `b`.
pub struct Batch<'a> {
    pub tokens: &'a [u32],
    pub lengths: &'a [usize],
    pub start_pos: &'a [usize],
}

/// Activations reused from call to call; they only grow, so a steady decode
/// loop allocates nothing.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    gate_up: Vec<f32>,
    ffn: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    pos: Vec<usize>,
    seq_of: Vec<usize>,
    /// Attention scores: one n_ctx-long row per worker thread.
    scores: Vec<f32>,
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

fn add_bias(rows: &mut [f32], bias: &Option<Vec<f32>>) {
    if let Some(b) = bias {
        for row in rows.chunks_exact_mut(b.len()) {
            for (v, bv) in row.iter_mut().zip(b) {
                *v += bv;
            }
        }
    }
}

/// Per-worker rows of the attention score buffer.
#[derive(Clone, Copy)]
struct ScoreRows(*mut f32, usize);
unsafe impl Send for ScoreRows {}
unsafe impl Sync for ScoreRows {}

impl ScoreRows {
    /// SAFETY: the caller must be the only user of row `worker` while it holds it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, worker: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(worker * self.1), self.1)
    }
}

/// Which cached positions a group of query heads attends to, and where
/// their shared key/value head sits in a cache row.
struct AttnSpan {
    first: usize,
    n: usize,
    kvd: usize,
    kv_off: usize,
    hd: usize,
    scale: f32,
    /// q/k heads un-interleaved from llama.cpp's rotated pairs (`Rope::pairs`).
    pairs: bool,
}

/// For each query head of one GQA group (`q` and `out` hold the group's
/// heads side by side): softmax(q . k_j * scale) . v_j over positions
/// `first..n`. Each key and value row is read once for the whole group. The
/// query and the weights go through the cache's number type before their
/// products, as in a matmul against that cache (llama.cpp rounds both to
/// float16 for a float16 cache).
fn attend_group<T: KvElem>(
    q: &[f32],
    keys: &[T],
    values: &[T],
    span: &AttnSpan,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    let hd = span.hd;
    let heads = q.len() / hd;
    let len = span.n - span.first;
    let (scores, qr) = scratch.split_at_mut(scratch.len() - heads * hd);
    let stride = scores.len() / heads;
    if len == 0 {
        out.fill(0.0);
        return;
    }
    // Rows first..n of this group's keys and values.
    let rows = span.first * span.kvd + span.kv_off..(span.n - 1) * span.kvd + span.kv_off + hd;
    qr.copy_from_slice(q);
    T::round_all(qr);
    T::dot_heads_span(
        qr,
        hd,
        &keys[rows.clone()],
        len,
        span.kvd,
        scores,
        stride,
        span.pairs,
    );
    for h in 0..heads {
        let row = &mut scores[h * stride..h * stride + len];
        for v in row.iter_mut() {
            *v *= span.scale;
        }
        softmax(row);
        T::round_all(row);
    }
    T::mix_heads(out, hd, scores, stride, len, &values[rows], span.kvd);
}

/// Runs the batch and writes logits into `out` (sized by `logits_len`).
/// The caller has validated tokens, positions and sizes.
pub fn forward(
    model: &Model,
    cache: &mut KvCache,
    s: &mut Scratch,
    batch: &Batch,
    last_only: bool,
    out: &mut [f32],
) {
    let cfg = &model.config;
    let w = &model.weights;
    let (h, hd, qd, kvd, ffn) = (
        cfg.hidden_size,
        cfg.head_dim,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
    );
    let qkv_dim = qd + 2 * kvd;
    let n_heads = cfg.num_attention_heads;
    let group = n_heads / cfg.num_key_value_heads;
    let eps = cfg.rms_norm_eps as f32;
    let scale = 1.0 / (hd as f32).sqrt();
    let rot = cfg.rotary_dim();
    let half = rot / 2;
    let n_tok = batch.tokens.len();

    s.pos.clear();
    s.seq_of.clear();
    for (b, (&len, &start)) in batch.lengths.iter().zip(batch.start_pos).enumerate() {
        s.pos.extend(start..start + len);
        s.seq_of.extend(std::iter::repeat(b).take(len));
    }
    grow(&mut s.x, n_tok * h);
    grow(&mut s.xn, n_tok * h);
    grow(&mut s.qkv, n_tok * qkv_dim);
    grow(&mut s.att, n_tok * qd);
    grow(&mut s.gate_up, n_tok * 2 * ffn);
    grow(&mut s.ffn, n_tok * ffn);
    grow(&mut s.cos, n_tok * half);
    grow(&mut s.sin, n_tok * half);
    let n_workers = current_threads();
    let max_pos = s.pos.iter().copied().max().unwrap_or(0) + 1;
    // Per worker: a score row per head of a GQA group, then the group's
    // queries as the cache type rounds them.
    let score_row = group * (max_pos.next_power_of_two().min(cache.n_ctx) + hd);
    grow(&mut s.scores, n_workers * score_row);

    for (t, &tok) in batch.tokens.iter().enumerate() {
        let tok = tok as usize;
        w.embed.row_f32(tok, h, &mut s.x[t * h..(t + 1) * h]);
        model.rope.angles(
            s.pos[t],
            &mut s.cos[t * half..(t + 1) * half],
            &mut s.sin[t * half..(t + 1) * half],
        );
    }

    let x = &mut s.x[..n_tok * h];
    let xn = &mut s.xn[..n_tok * h];
    let qkv = &mut s.qkv[..n_tok * qkv_dim];
    let att = &mut s.att[..n_tok * qd];
    let (pos, seq_of, cos, sin) = (&s.pos, &s.seq_of, &s.cos, &s.sin);
    let scores_ptr = ScoreRows(s.scores.as_mut_ptr(), score_row);

    for (l, lw) in w.layers.iter().enumerate() {
        // Attention block.
        rmsnorm(xn, x, &lw.attn_norm, eps);
        lw.wqkv.matmul(qkv, qkv_dim, xn, n_tok, h, qkv_dim);
        add_bias(qkv, &lw.bqkv);
        parallel_chunks(qkv, qkv_dim, |t, row| {
            let (c, sn) = (
                &cos[t * half..(t + 1) * half],
                &sin[t * half..(t + 1) * half],
            );
            for head in row[..qd + kvd].chunks_exact_mut(hd) {
                rope_rotate_half(&mut head[..rot], c, sn);
            }
        });
        for t in 0..n_tok {
            let row = &qkv[t * qkv_dim..(t + 1) * qkv_dim];
            cache.store(seq_of[t], l, pos[t], &row[qd..qd + kvd], &row[qd + kvd..]);
        }
        let window = if cfg.sliding_layers[l] {
            cfg.sliding_window
        } else {
            None
        };
        let cache_ref = &*cache;
        let qkv_ref = &*qkv;
        let n_kv_heads = n_heads / group;
        parallel_chunks(att, group * hd, |i, out| {
            // SAFETY: a worker runs one item at a time, so its row is exclusive.
            let scratch = unsafe { scores_ptr.row(thread_index()) };
            let (t, kv_head) = (i / n_kv_heads, i % n_kv_heads);
            let q = &qkv_ref[t * qkv_dim + kv_head * group * hd..][..group * hd];
            let n = pos[t] + 1;
            let first = window.map_or(0, |w| n.saturating_sub(w));
            let span = AttnSpan {
                first,
                n,
                kvd,
                kv_off: kv_head * hd,
                hd,
                scale,
                pairs: model.rope.pairs,
            };
            match cache_ref.layer(seq_of[t], l, n) {
                LayerView::F32(k, v) => attend_group(q, k, v, &span, scratch, out),
                LayerView::F16(k, v) => attend_group(q, k, v, &span, scratch, out),
            }
        });
        lw.wo.matmul(xn, h, att, n_tok, qd, h);
        add_bias(xn, &lw.bo);
        for (a, b) in x.iter_mut().zip(xn.iter()) {
            *a += b;
        }

        // Feed-forward block (SwiGLU).
        rmsnorm(xn, x, &lw.ffn_norm, eps);
        let gate_up = &mut s.gate_up[..n_tok * 2 * ffn];
        let hidden = &mut s.ffn[..n_tok * ffn];
        lw.w_gate_up.matmul(gate_up, 2 * ffn, xn, n_tok, h, 2 * ffn);
        add_bias(gate_up, &lw.b_gate_up);
        let gate_up = &*gate_up;
        parallel_chunks(hidden, ffn, |t, hrow| {
            let (g, u) = gate_up[t * 2 * ffn..(t + 1) * 2 * ffn].split_at(ffn);
            swiglu(hrow, g, u);
        });
        lw.w_down.matmul(xn, h, hidden, n_tok, ffn, h);
        add_bias(xn, &lw.b_down);
        for (a, b) in x.iter_mut().zip(xn.iter()) {
            *a += b;
        }
    }

    // Output head: only the rows the caller asked for.
    let vocab = cfg.vocab_size;
    let head = w.output();
    if last_only {
        let mut off = 0;
        for (b, &len) in batch.lengths.iter().enumerate() {
            let r = off + len - 1;
            rmsnorm(
                &mut xn[b * h..(b + 1) * h],
                &x[r * h..(r + 1) * h],
                &w.norm,
                eps,
            );
            off += len;
        }
        head.matmul(out, vocab, xn, batch.lengths.len(), h, vocab);
    } else {
        rmsnorm(xn, x, &w.norm, eps);
        let longest = batch.lengths.iter().copied().max().unwrap_or(0);
        let mut off = 0;
        for (b, &len) in batch.lengths.iter().enumerate() {
            let rows = &mut out[b * longest * vocab..(b + 1) * longest * vocab];
            head.matmul(rows, vocab, &xn[off * h..], len, h, vocab);
            rows[len * vocab..].fill(0.0);
            off += len;
        }
    }
}
