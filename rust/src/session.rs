//! A session: the mutable state one user of a shared `Model` needs (KV cache,
//! scratch activations, worker threads). Many sessions can run one model at
//! the same time, each on its own thread.

use std::sync::Arc;

use crate::error::{invalid_argument, out_of_range, Error, ErrorKind, Result};
use crate::model::kv_cache::{KvCache, KvType};
use crate::model::llama::{self, Batch, Logits, Scratch};
use crate::model::Model;
use crate::pool::Pool;

#[derive(Debug, Clone)]
pub struct SessionParams {
    /// Context length in tokens; 0 picks the model's, capped to fit memory.
    pub n_ctx: usize,
    /// Worker threads; 0 follows the process-wide default.
    pub n_threads: usize,
    /// Most rows one batched forward may have (KV slots are made on first use).
    pub n_seq_max: usize,
    /// KV cache element type; None picks the model's default (float16 for
    /// GGUF files, as llama.cpp does; float32 otherwise).
    pub kv_type: Option<KvType>,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            n_ctx: 0,
            n_threads: 0,
            n_seq_max: 64,
            kv_type: None,
        }
    }
}

/// Default context: the model's own, at most 4096 tokens and 1 GiB of KV per row.
const DEFAULT_CTX_CAP: usize = 4096;
const DEFAULT_SLOT_BYTES_CAP: usize = 1 << 30;

pub struct Session {
    pub(crate) model: Arc<Model>,
    pub(crate) cache: KvCache,
    scratch: Scratch,
    pub(crate) pool: Pool,
    n_seq_max: usize,
    // Per-call batch description, kept to avoid allocating on every token.
    tokens: Vec<u32>,
    lengths: Vec<usize>,
    starts: Vec<usize>,
    slots: Vec<usize>,
    /// Changed by every forward pass (unique over all sessions): a
    /// `Generation` compares it to tell whether another call came between
    /// two of its tokens.
    stamp: u64,
}

/// The source of session stamps.
static STAMPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn new_stamp() -> u64 {
    STAMPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Most tokens one forward pass takes (llama.cpp's `n_ubatch`): a longer
/// prompt, or a batch of more tokens in all, goes through in passes of at
/// most this many, so that the activation buffers, which grow with the
/// tokens of a pass, stay bounded whatever the prompt's length. Each pass
/// streams the weights once more, a few percent of a prompt's time.
pub(crate) const UBATCH: usize = 128;

impl Session {
    pub fn new(model: Arc<Model>, params: &SessionParams) -> Result<Session> {
        let cfg = &model.config;
        let kv_type = params.kv_type.unwrap_or(model.kv_default);
        let slot = |n: usize| {
            KvCache::slot_bytes(
                n,
                cfg.num_hidden_layers,
                cfg.kv_dim(),
                cfg.head_dim,
                kv_type,
            )
        };
        let n_ctx = if params.n_ctx == 0 {
            let mut n = cfg.max_position_embeddings.min(DEFAULT_CTX_CAP);
            while n > 256 && slot(n) > DEFAULT_SLOT_BYTES_CAP {
                n /= 2;
            }
            n
        } else {
            params.n_ctx
        };
        if (n_ctx as u128) * (slot(1) as u128) > (64u128 << 30) {
            return Err(invalid_argument(format!(
                "n_ctx {n_ctx} needs more than 64 GiB of KV cache per sequence"
            )));
        }
        if params.n_seq_max == 0 {
            return Err(invalid_argument("n_seq_max must be at least 1"));
        }
        if params.n_threads > 1024 {
            return Err(invalid_argument(format!(
                "n_threads {} is more than 1024",
                params.n_threads
            )));
        }
        let cache = KvCache::new(
            n_ctx,
            cfg.num_hidden_layers,
            cfg.kv_dim(),
            cfg.head_dim,
            kv_type,
        );
        Ok(Session {
            pool: Pool::new(params.n_threads)?,
            model,
            cache,
            scratch: Scratch::default(),
            n_seq_max: params.n_seq_max,
            tokens: Vec::new(),
            lengths: Vec::new(),
            starts: Vec::new(),
            slots: Vec::new(),
            stamp: new_stamp(),
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn n_ctx(&self) -> usize {
        self.cache.n_ctx
    }

    /// Changes with every forward pass (see `Generation`).
    pub(crate) fn stamp(&self) -> u64 {
        self.stamp
    }

    /// Positions cached for batch row `seq`.
    pub fn cached_len(&self, seq: usize) -> usize {
        self.cache.len(seq)
    }

    /// Count where forward passes spend their time (`take_profile`), or stop.
    pub fn set_profiling(&self, on: bool) {
        self.pool.set_profiling(on)
    }

    /// The counts since profiling was turned on or last taken (then zeroed).
    pub fn take_profile(&self) -> crate::pool::Profile {
        self.pool.take_profile()
    }

    pub fn logits_len(&self, lengths: &[u32], last_only: bool) -> usize {
        let rows = lengths.len();
        let per_row = if last_only {
            1
        } else {
            lengths.iter().copied().max().unwrap_or(0) as usize
        };
        rows * per_row * self.model.config.vocab_size
    }

    /// Forward a ragged batch: `tokens` holds the rows back to back,
    /// `lengths[b]` tokens each; row b continues its KV slot from
    /// `start_pos[b]` (0 when None: start fresh). Logits go into `out`:
    /// `[rows][vocab]` when `last_only`, else `[rows][longest][vocab]`, padding
    /// rows zero. Nothing changes when an argument is rejected.
    pub fn forward(
        &mut self,
        tokens: &[i32],
        lengths: &[u32],
        start_pos: Option<&[u32]>,
        last_only: bool,
        out: &mut [f32],
    ) -> Result<usize> {
        self.stamp = new_stamp();
        let vocab = self.model.config.vocab_size;
        let n_seq = lengths.len();
        if n_seq == 0 {
            return Err(invalid_argument("the batch has no sequences"));
        }
        if n_seq > self.n_seq_max {
            return Err(invalid_argument(format!(
                "batch of {n_seq} sequences is more than this session's n_seq_max ({})",
                self.n_seq_max
            )));
        }
        let total = lengths
            .iter()
            .try_fold(0usize, |a, &l| a.checked_add(l as usize));
        if total != Some(tokens.len()) {
            return Err(invalid_argument(format!(
                "lengths add up to {} but {} tokens were given",
                total.map_or("more than usize".to_string(), |t| t.to_string()),
                tokens.len()
            )));
        }
        if let Some(sp) = start_pos {
            if sp.len() != n_seq {
                return Err(invalid_argument(format!(
                    "{} start positions given for {n_seq} sequences",
                    sp.len()
                )));
            }
        }
        self.starts.clear();
        self.lengths.clear();
        self.tokens.clear();
        self.slots.clear();
        let mut off = 0;
        for (b, &len) in lengths.iter().enumerate() {
            let len = len as usize;
            if len == 0 {
                return Err(invalid_argument(format!("sequence {b} is empty")));
            }
            let start = start_pos.map_or(0, |s| s[b] as usize);
            let cached = self.cache.len(b);
            if start > cached {
                return Err(out_of_range(format!(
                    "start_pos {start} for sequence {b} skips positions: only {cached} are cached"
                )));
            }
            if start + len > self.cache.n_ctx {
                return Err(out_of_range(format!(
                    "sequence {b} needs {} positions but the context is n_ctx={}",
                    start + len,
                    self.cache.n_ctx
                )));
            }
            for (i, &t) in tokens[off..off + len].iter().enumerate() {
                if t < 0 || t as usize >= vocab {
                    return Err(out_of_range(format!(
                        "token id {t} at sequence {b}, index {i} is outside the vocabulary (vocab_size {vocab})"
                    )));
                }
                self.tokens.push(t as u32);
            }
            self.starts.push(start);
            self.lengths.push(len);
            self.slots.push(b);
            off += len;
        }
        let needed = self.logits_len(lengths, last_only);
        if out.len() < needed {
            return Err(Error::new(
                ErrorKind::BufferTooSmall,
                format!(
                    "logits buffer holds {} floats but {needed} are needed",
                    out.len()
                ),
            ));
        }
        self.cache.ensure_slots(n_seq)?;

        // Passes of at most UBATCH tokens: runs of whole rows, and rows
        // longer than that in pieces (only a row's last piece makes its last
        // token's logits).
        let per_row = needed / n_seq;
        let out = &mut out[..needed];
        let (tokens, lengths, starts, slots) =
            (&self.tokens, &self.lengths, &self.starts, &self.slots);
        let (model, cache, scratch) = (&*self.model, &mut self.cache, &mut self.scratch);
        self.pool.enter(|| {
            let (mut b, mut off) = (0, 0);
            while b < n_seq {
                if lengths[b] > UBATCH {
                    let (len, row) = (lengths[b], &mut out[b * per_row..(b + 1) * per_row]);
                    let mut p = 0;
                    while p < len {
                        let n = (len - p).min(UBATCH);
                        let batch = Batch {
                            tokens: &tokens[off + p..off + p + n],
                            lengths: &[n],
                            start_pos: &[starts[b] + p],
                            slots: &slots[b..b + 1],
                        };
                        let logits = match (last_only, p + n == len) {
                            (true, true) => Logits::Last(&mut row[..]),
                            (true, false) => Logits::None,
                            (false, _) => Logits::All {
                                out: &mut row[p * vocab..(p + n) * vocab],
                                row_stride: n * vocab,
                            },
                        };
                        llama::forward(model, cache, scratch, &batch, logits);
                        p += n;
                    }
                    if !last_only {
                        row[len * vocab..].fill(0.0);
                    }
                    off += len;
                    b += 1;
                } else {
                    let (mut e, mut n) = (b, 0);
                    while e < n_seq && n + lengths[e] <= UBATCH {
                        n += lengths[e];
                        e += 1;
                    }
                    let batch = Batch {
                        tokens: &tokens[off..off + n],
                        lengths: &lengths[b..e],
                        start_pos: &starts[b..e],
                        slots: &slots[b..e],
                    };
                    let rows = &mut out[b * per_row..e * per_row];
                    let logits = if last_only {
                        Logits::Last(rows)
                    } else {
                        Logits::All {
                            out: rows,
                            row_stride: per_row,
                        }
                    };
                    llama::forward(model, cache, scratch, &batch, logits);
                    off += n;
                    b = e;
                }
            }
        })?;
        for (b, (&len, &start)) in self.lengths.iter().zip(&self.starts).enumerate() {
            self.cache.set_len(b, start + len);
        }
        Ok(needed)
    }
}
