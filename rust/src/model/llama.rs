//! The forward pass of the Llama-family decoder (Llama, Mistral, Qwen2, Phi-3),
//! written to read like the math: embed, then per layer RMSNorm -> fused QKV
//! -> RoPE -> causal (optionally sliding-window) GQA attention -> output
//! projection -> residual, RMSNorm -> fused gate/up -> SwiGLU -> down ->
//! residual; final norm and the output head.
//!
//! All rows of a ragged batch go through every matmul together (one matrix of
//! `total_tokens x hidden`); only attention looks at rows separately.

use super::kv_cache::{HeadView, KvCache, KvElem};
use super::Model;
use crate::kernels::attention::{dot_heads, mix_heads, MAX_Q};
use crate::kernels::{rmsnorm, rope_rotate_half, softmax, swiglu};
use crate::pool::{current_threads, parallel_chunks, parallel_for, thread_index};

/// A ragged batch: row `b` has `lengths[b]` tokens (concatenated in `tokens`)
/// at positions `start_pos[b]..`; it reads and fills KV-cache slot
/// `slots[b]` (each row its own slot).
pub struct Batch<'a> {
    pub tokens: &'a [u32],
    pub lengths: &'a [usize],
    pub start_pos: &'a [usize],
    pub slots: &'a [usize],
}

/// Which logits a forward pass writes, and where.
pub enum Logits<'o> {
    /// None: a piece of a prompt that does not end its row.
    None,
    /// Each row's last token, `[rows][vocab]`.
    Last(&'o mut [f32]),
    /// Every token, row `b`'s at `b * row_stride` (`[rows][longest][vocab]`
    /// when `row_stride` is `longest * vocab`), padded with zeros.
    All {
        out: &'o mut [f32],
        row_stride: usize,
    },
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
    /// Attention scratch: one row per worker thread (`attend_run`).
    scores: Vec<f32>,
    /// Attention runs of tokens, `(first, end)` in the batch.
    runs: Vec<(usize, usize)>,
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

/// Per-worker rows of the attention scratch (and per-token rows of its output).
#[derive(Clone, Copy)]
struct SharedRows(*mut f32, usize);
unsafe impl Send for SharedRows {}
unsafe impl Sync for SharedRows {}

impl SharedRows {
    /// SAFETY: the caller must be the only user of row `worker` while it holds it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, worker: usize) -> &mut [f32] {
        self.part(worker * self.1, self.1)
    }

    /// SAFETY: the caller must be the only user of these values while it
    /// holds them, and they must lie in the buffer.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part(&self, start: usize, len: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }

    /// SAFETY: no thread may write these values while the caller holds
    /// them, and they must lie in the buffer.
    unsafe fn part_ref(&self, start: usize, len: usize) -> &[f32] {
        std::slice::from_raw_parts(self.0.add(start), len)
    }
}

/// One attention work item: a run of consecutive tokens of one batch row
/// (`pos[t]` their positions) against one kv head of one layer.
struct AttnRun<'a> {
    group: usize,
    pos: &'a [usize],
    window: Option<usize>,
    hd: usize,
    scale: f32,
    /// q/k heads un-interleaved from llama.cpp's rotated pairs (`Rope::pairs`).
    pairs: bool,
}

/// softmax(q . k_j * scale) . v_j for every query head of a run's tokens,
/// each over its own causal (and sliding-window) span, against one cached
/// head's `keys` and `values`; `q(c)` is token c's query heads of the group
/// side by side, `out(c)` its output heads. The run's tokens share one pass
/// over the keys and values, which each token sees up to the last token's
/// position: past its own span a token's weights are 0. The queries and the weights go through
/// the cache's number type before their products, as in a matmul against
/// that cache (llama.cpp rounds both to float16 for a float16 cache).
fn attend_run<'q, 'o, T: KvElem>(
    run: &AttnRun,
    keys: &[T],
    values: &[T],
    scratch: &mut [f32],
    q: impl Fn(usize) -> &'q [f32],
    mut out: impl FnMut(usize) -> &'o mut [f32],
) {
    let (hd, tokens, group) = (run.hd, run.pos.len(), run.group);
    let heads = tokens * group;
    let span = |c: usize| {
        let n = run.pos[c] + 1;
        (run.window.map_or(0, |w| n.saturating_sub(w)), n)
    };
    let (first, n) = (span(0).0, span(tokens - 1).1);
    let (scores, rest) = scratch.split_at_mut(scratch.len() - 2 * heads * hd);
    let (qr, mixed) = rest.split_at_mut(heads * hd);
    let stride = scores.len() / heads;
    for (c, qc) in qr.chunks_exact_mut(group * hd).enumerate() {
        qc.copy_from_slice(q(c));
    }
    T::round_all(qr);
    dot_heads(
        qr,
        hd,
        keys,
        first,
        n,
        scores,
        stride,
        run.pairs,
        Some(values),
    );
    for c in 0..tokens {
        let (a, b) = (span(c).0 - first, span(c).1 - first);
        for h in 0..group {
            let row = &mut scores[(c * group + h) * stride..][..n - first];
            let own = &mut row[a..b];
            for v in own.iter_mut() {
                *v *= run.scale;
            }
            softmax(own);
            T::round_all(own);
            row[..a].fill(0.0);
            row[b..].fill(0.0);
        }
    }
    mix_heads(mixed, hd, scores, stride, values, first, n);
    for c in 0..tokens {
        out(c).copy_from_slice(&mixed[c * group * hd..(c + 1) * group * hd]);
    }
}

/// Runs the batch and writes logits into `out` (sized by `logits_len`).
/// The caller has validated tokens, positions and sizes.
pub fn forward(model: &Model, cache: &mut KvCache, s: &mut Scratch, batch: &Batch, logits: Logits) {
    let n_tok = batch.tokens.len();
    crate::pool::timed(crate::pool::Span::Forward, n_tok, || {
        forward_pass(model, cache, s, batch, logits)
    })
}

fn forward_pass(
    model: &Model,
    cache: &mut KvCache,
    s: &mut Scratch,
    batch: &Batch,
    logits: Logits,
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
        s.seq_of.extend(std::iter::repeat(batch.slots[b]).take(len));
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
    // Attention runs: up to `per_run` consecutive tokens of one row, as
    // many query heads as one score-kernel call takes.
    let per_run = (MAX_Q / (group * hd)).max(1);
    s.runs.clear();
    let mut t = 0;
    for &len in batch.lengths {
        let end = t + len;
        while t < end {
            s.runs.push((t, (t + per_run).min(end)));
            t = (t + per_run).min(end);
        }
    }
    // Rows of a few tokens (decode) are one run each: their attention tasks
    // rotate and store their own kv heads (below).
    let in_task = s.runs.len() == batch.lengths.len();
    let longest_run = s.runs.iter().map(|r| r.1 - r.0).max().unwrap_or(1);
    // Per worker: a score row per query head of a run, then the run's
    // queries as the cache type rounds them, then its outputs.
    let run_heads = longest_run * group;
    let score_row = run_heads * (max_pos.next_power_of_two().min(cache.n_ctx) + 2 * hd);
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
    let scratch_rows = SharedRows(s.scores.as_mut_ptr(), score_row);

    for (l, lw) in w.layers.iter().enumerate() {
        // Attention block.
        rmsnorm(xn, x, &lw.attn_norm, eps);
        lw.wqkv.matmul(qkv, qkv_dim, xn, n_tok, h, qkv_dim);
        // Between jobs the caller works alone: the idle workers fetch the
        // next matrix's first weights meanwhile (here and after each job).
        lw.wo.read_ahead(qd, h);
        add_bias(qkv, &lw.bqkv);
        let rope = |head: &mut [f32], t: usize| {
            let (c, sn) = (
                &cos[t * half..(t + 1) * half],
                &sin[t * half..(t + 1) * half],
            );
            rope_rotate_half(&mut head[..rot], c, sn);
        };
        // Rows of a few tokens (decode) rotate and store each kv head's
        // keys and values in the task that attends it: that thread reads
        // them next, and no thread stores lines the other then fetches.
        // Longer rows store all their tokens first (a run reads keys of
        // runs before it).
        if !in_task {
            parallel_chunks(qkv, qkv_dim, |t, row| {
                for head in row[..qd + kvd].chunks_exact_mut(hd) {
                    rope(head, t);
                }
            });
            for t in 0..n_tok {
                let row = &qkv[t * qkv_dim..(t + 1) * qkv_dim];
                cache.store(seq_of[t], l, pos[t], &row[qd..qd + kvd], &row[qd + kvd..]);
            }
        }
        let window = if cfg.sliding_layers[l] {
            cfg.sliding_window
        } else {
            None
        };
        let heads = cache.heads();
        let qkv_rows = SharedRows(qkv.as_mut_ptr(), qkv_dim);
        let n_kv_heads = n_heads / group;
        let runs = &s.runs;
        let att_out = SharedRows(att.as_mut_ptr(), qd);
        parallel_for(runs.len() * n_kv_heads, |item| {
            // SAFETY: a worker runs one item at a time, so its row is exclusive.
            let scratch = unsafe { scratch_rows.row(thread_index()) };
            let ((t0, t1), kv_head) = (runs[item / n_kv_heads], item % n_kv_heads);
            let (q_at, k_at) = (kv_head * group * hd, qd + kv_head * hd);
            let seq = seq_of[t0];
            if in_task {
                for t in t0..t1 {
                    // SAFETY: this item alone touches its group's query heads
                    // and its kv head of its tokens (a row is one run, so no
                    // other item has these tokens), and this head's cache.
                    unsafe {
                        for j in 0..group {
                            rope(qkv_rows.part(t * qkv_dim + q_at + j * hd, hd), t);
                        }
                        rope(qkv_rows.part(t * qkv_dim + k_at, hd), t);
                        let k = qkv_rows.part_ref(t * qkv_dim + k_at, hd);
                        let v = qkv_rows.part_ref(t * qkv_dim + k_at + kvd, hd);
                        heads.store(seq, l, kv_head, pos[t], k, v);
                    }
                }
            }
            let run = AttnRun {
                group,
                pos: &pos[t0..t1],
                window,
                hd,
                scale,
                pairs: model.rope.pairs,
            };
            // SAFETY: this item alone reads and writes these heads of its
            // tokens, and this kv head of its row's slot.
            let q = |c: usize| unsafe { qkv_rows.part_ref((t0 + c) * qkv_dim + q_at, group * hd) };
            let out = |c: usize| unsafe { att_out.part((t0 + c) * qd + q_at, group * hd) };
            match unsafe { heads.view(seq, l, kv_head) } {
                HeadView::F32(k, v) => attend_run(&run, k, v, scratch, q, out),
                HeadView::F16(k, v) => attend_run(&run, k, v, scratch, q, out),
            }
        });
        lw.wo.read_ahead(qd, h); // again: the attention job cut it short
        lw.wo.matmul(xn, h, att, n_tok, qd, h);
        lw.w_gate_up.read_ahead(h, 2 * ffn);
        add_bias(xn, &lw.bo);
        for (a, b) in x.iter_mut().zip(xn.iter()) {
            *a += b;
        }

        // Feed-forward block (SwiGLU).
        rmsnorm(xn, x, &lw.ffn_norm, eps);
        let gate_up = &mut s.gate_up[..n_tok * 2 * ffn];
        let hidden = &mut s.ffn[..n_tok * ffn];
        lw.w_gate_up.matmul(gate_up, 2 * ffn, xn, n_tok, h, 2 * ffn);
        lw.w_down.read_ahead(ffn, h);
        add_bias(gate_up, &lw.b_gate_up);
        let gate_up = &*gate_up;
        parallel_chunks(hidden, ffn, |t, hrow| {
            let (g, u) = gate_up[t * 2 * ffn..(t + 1) * 2 * ffn].split_at(ffn);
            swiglu(hrow, g, u);
        });
        lw.w_down.matmul(xn, h, hidden, n_tok, ffn, h);
        match w.layers.get(l + 1) {
            Some(next) => next.wqkv.read_ahead(h, qkv_dim),
            None => w.output().read_ahead(h, cfg.vocab_size),
        }
        add_bias(xn, &lw.b_down);
        for (a, b) in x.iter_mut().zip(xn.iter()) {
            *a += b;
        }
    }

    // Output head: only the rows the caller asked for.
    let vocab = cfg.vocab_size;
    let head = w.output();
    match logits {
        Logits::None => {}
        Logits::Last(out) => {
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
        }
        Logits::All { out, row_stride } => {
            rmsnorm(xn, x, &w.norm, eps);
            let mut off = 0;
            for (b, &len) in batch.lengths.iter().enumerate() {
                let rows = &mut out[b * row_stride..(b + 1) * row_stride];
                head.matmul(rows, vocab, &xn[off * h..], len, h, vocab);
                rows[len * vocab..].fill(0.0);
                off += len;
            }
        }
    }
}
