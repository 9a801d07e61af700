//! `pyffi_session`: a KV cache and worker threads over a shared model;
//! `pyffi_forward` and `pyffi_generate` run on it.

use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use super::model::pyffi_model;
use super::{arg, pyffi_error, pyffi_status, read_params, run, set, slice, slice_mut};
use crate::error::{invalid_argument, Error};
use crate::generate::{FinishReason, GenerateRequest};
use crate::model::kv_cache::KvType;
use crate::sampling::SamplingParams;
use crate::session::{Session, SessionParams};

/// A session. One call runs on it at a time (a second thread waits); use one
/// session per thread to run in parallel.
pub struct pyffi_session {
    /// Shared with the session's generations (`pyffi_generation`), which
    /// keep it alive after `pyffi_session_free`.
    pub(crate) inner: Arc<Mutex<Session>>,
}

/// Session settings. Get them from `pyffi_session_default_params()`, which
/// sets `size`; change the fields you need.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pyffi_session_params {
    /// sizeof(pyffi_session_params), for compatibility as fields are added.
    pub size: usize,
    /// Context length in tokens; 0 = the model's (at most 4096, and at most
    /// 1 GiB of KV cache per sequence).
    pub n_ctx: u32,
    /// Worker threads; 0 = follow `pyffi_set_threads` (default: all CPUs).
    pub n_threads: u32,
    /// Most sequences in one batched forward (KV memory is taken on first use).
    pub n_seq_max: u32,
    /// KV cache element type: PYFFI_KV_DEFAULT (float16 for GGUF models, as
    /// llama.cpp; float32 otherwise), PYFFI_KV_F32 or PYFFI_KV_F16.
    pub kv_type: u32,
}

/// `pyffi_session_params.kv_type`: the model's default.
pub const PYFFI_KV_DEFAULT: u32 = 0;
/// `pyffi_session_params.kv_type`: float32 keys and values.
pub const PYFFI_KV_F32: u32 = 1;
/// `pyffi_session_params.kv_type`: float16 keys and values (half the memory).
pub const PYFFI_KV_F16: u32 = 2;

#[no_mangle]
pub extern "C" fn pyffi_session_default_params() -> pyffi_session_params {
    let d = SessionParams::default();
    pyffi_session_params {
        size: std::mem::size_of::<pyffi_session_params>(),
        n_ctx: d.n_ctx as u32,
        n_threads: d.n_threads as u32,
        n_seq_max: d.n_seq_max as u32,
        kv_type: PYFFI_KV_DEFAULT,
    }
}

/// A new session on `model`; `params` may be NULL for the defaults.
#[no_mangle]
pub unsafe extern "C" fn pyffi_session_new(
    model: *const pyffi_model,
    params: *const pyffi_session_params,
    out: *mut *mut pyffi_session,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        if out.is_null() {
            return Err(invalid_argument("out is NULL"));
        }
        let model = arg(model, "model")?.inner.clone();
        let p = read_params(params, pyffi_session_default_params(), "params")?;
        let kv_type =
            match p.kv_type {
                PYFFI_KV_DEFAULT => None,
                PYFFI_KV_F32 => Some(KvType::F32),
                PYFFI_KV_F16 => Some(KvType::F16),
                other => return Err(invalid_argument(format!(
                    "kv_type {other} is not one of PYFFI_KV_DEFAULT, PYFFI_KV_F32, PYFFI_KV_F16"
                ))),
            };
        let params = SessionParams {
            n_ctx: p.n_ctx as usize,
            n_threads: p.n_threads as usize,
            n_seq_max: p.n_seq_max as usize,
            kv_type,
        };
        let session = Session::new(model, &params)?;
        *out = Box::into_raw(Box::new(pyffi_session {
            inner: Arc::new(Mutex::new(session)),
        }));
        Ok(())
    })
}

fn lock(s: &pyffi_session) -> crate::Result<std::sync::MutexGuard<'_, Session>> {
    lock_session(&s.inner)
}

/// The session behind a handle's mutex (a session handle's or a generation's).
pub(crate) fn lock_session(s: &Mutex<Session>) -> crate::Result<std::sync::MutexGuard<'_, Session>> {
    s.lock()
        .map_err(|_| invalid_argument("session is unusable after an internal error; free it"))
}

/// The session's context length (0 for NULL).
#[no_mangle]
pub unsafe extern "C" fn pyffi_session_n_ctx(session: *const pyffi_session) -> u32 {
    super::guard(0, || {
        session
            .as_ref()
            .and_then(|s| lock(s).ok())
            .map_or(0, |s| s.n_ctx() as u32)
    })
}

/// Positions currently cached for batch row `seq` (0 for NULL or unused rows).
#[no_mangle]
pub unsafe extern "C" fn pyffi_session_cached_len(session: *const pyffi_session, seq: u32) -> u32 {
    super::guard(0, || {
        session
            .as_ref()
            .and_then(|s| lock(s).ok())
            .map_or(0, |s| s.cached_len(seq as usize) as u32)
    })
}

/// Where a session's forward passes spent their time, on the thread that
/// called them (`pyffi_session_take_profile`). Nanoseconds unless named
/// otherwise; the counts run while profiling is on.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct pyffi_profile {
    /// Forward passes (a prompt longer than one pass counts per piece).
    pub forwards: u64,
    /// Tokens they took.
    pub tokens: u64,
    /// Inside the forward passes.
    pub forward_ns: u64,
    /// Parallel jobs (a matmul, the attention, ...).
    pub jobs: u64,
    /// From publishing each job to its end: the calling thread's share of
    /// the work and its wait for the other threads.
    pub job_ns: u64,
    /// Of `job_ns`, the wait for the other threads once out of tasks.
    pub wait_ns: u64,
    /// Quantizing packed matmuls' inputs (on the calling thread alone for
    /// one token per row; longer batches quantize in a job, which `job_ns`
    /// also counts).
    pub quantize_ns: u64,
    /// Bytes of weights the other threads read into their caches between
    /// jobs (`forward_ns - job_ns` is the time the calling thread works
    /// alone meanwhile).
    pub read_ahead_bytes: u64,
}

/// Start (`on`) or stop counting where this session's forward passes spend
/// their time. Off when a session starts; counting costs next to nothing.
#[no_mangle]
pub unsafe extern "C" fn pyffi_session_set_profiling(
    session: *mut pyffi_session,
    on: bool,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        lock(arg(session, "session")?)?.set_profiling(on);
        Ok(())
    })
}

/// The counts since profiling was turned on or last taken, into `*out`;
/// they restart from zero.
#[no_mangle]
pub unsafe extern "C" fn pyffi_session_take_profile(
    session: *mut pyffi_session,
    out: *mut pyffi_profile,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        let s = arg(session, "session")?;
        if out.is_null() {
            return Err(invalid_argument("out is NULL"));
        }
        let p = lock(s)?.take_profile();
        set(
            out,
            pyffi_profile {
                forwards: p.forwards,
                tokens: p.tokens,
                forward_ns: p.forward_ns,
                jobs: p.jobs,
                job_ns: p.job_ns,
                wait_ns: p.wait_ns,
                quantize_ns: p.quantize_ns,
                read_ahead_bytes: p.read_ahead_bytes,
            },
        );
        Ok(())
    })
}

/// Free a session. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn pyffi_session_free(session: *mut pyffi_session) {
    if !session.is_null() {
        drop(Box::from_raw(session));
    }
}

/// Run a ragged batch of `n_seq` sequences: `tokens` holds them back to
/// back, `lengths[i]` tokens each. Row i continues KV slot i from position
/// `start_pos[i]` (NULL: all 0, start fresh). Logits (float32) go into the
/// caller's buffer: `[n_seq][vocab]` when `last_only`, else
/// `[n_seq][max(lengths)][vocab]` with zeros after shorter rows. `*logits_len`
/// gets the number of floats needed.
#[no_mangle]
pub unsafe extern "C" fn pyffi_forward(
    session: *mut pyffi_session,
    tokens: *const i32,
    lengths: *const u32,
    n_seq: usize,
    start_pos: *const u32,
    last_only: bool,
    logits: *mut f32,
    logits_cap: usize,
    logits_len: *mut usize,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        let s = arg(session, "session")?;
        let lengths = slice(lengths, n_seq, "lengths")?;
        let total = lengths.iter().map(|&l| l as usize).sum();
        let tokens = slice(tokens, total, "tokens")?;
        let starts = if start_pos.is_null() {
            None
        } else {
            Some(slice(start_pos, n_seq, "start_pos")?)
        };
        let mut guard = lock(s)?;
        set(logits_len, guard.logits_len(lengths, last_only));
        let out = slice_mut(logits, logits_cap, "logits")?;
        guard
            .forward(tokens, lengths, starts, last_only, out)
            .map(|_| ())
    })
}

/// Reserved seed value: draw a fresh random seed for this call.
pub const PYFFI_SEED_RANDOM: u64 = u64::MAX;

/// Sampling settings. Get them from `pyffi_sampling_default_params()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pyffi_sampling_params {
    /// sizeof(pyffi_sampling_params).
    pub size: usize,
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: i32,
    /// Nucleus sampling; 1 = off.
    pub top_p: f32,
    /// Drop tokens below min_p times the top probability; 0 = off.
    pub min_p: f32,
    /// Penalty on tokens seen in the last `repeat_last_n`; 1 = off.
    pub repeat_penalty: f32,
    /// Window of the penalty, prompt included; -1 = everything, 0 = off.
    pub repeat_last_n: i32,
    /// Same seed, same tokens (any language, any thread count).
    /// PYFFI_SEED_RANDOM picks one at random.
    pub seed: u64,
    /// Extra token ids that end generation (not included in the output).
    pub stop_tokens: *const i32,
    pub n_stop_tokens: usize,
    /// Also stop at the model's EOS ids (config eos_token_id).
    pub stop_at_eos: bool,
}

#[no_mangle]
pub extern "C" fn pyffi_sampling_default_params() -> pyffi_sampling_params {
    let d = SamplingParams::default();
    pyffi_sampling_params {
        size: std::mem::size_of::<pyffi_sampling_params>(),
        temperature: d.temperature,
        top_k: d.top_k as i32,
        top_p: d.top_p,
        min_p: d.min_p,
        repeat_penalty: d.repeat_penalty,
        repeat_last_n: d.repeat_last_n as i32,
        seed: PYFFI_SEED_RANDOM,
        stop_tokens: std::ptr::null(),
        n_stop_tokens: 0,
        stop_at_eos: true,
    }
}

/// Why generation ended.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pyffi_finish_reason {
    /// A stop or EOS token (not included in the output).
    PYFFI_FINISH_STOP = 0,
    /// max_new_tokens reached, or the context is full.
    PYFFI_FINISH_LENGTH = 1,
    /// The callback returned false, or the generation was freed or failed
    /// before its end.
    PYFFI_FINISH_CANCELLED = 2,
}

impl From<FinishReason> for pyffi_finish_reason {
    fn from(r: FinishReason) -> Self {
        match r {
            FinishReason::Stop => pyffi_finish_reason::PYFFI_FINISH_STOP,
            FinishReason::Length => pyffi_finish_reason::PYFFI_FINISH_LENGTH,
            FinishReason::Cancelled => pyffi_finish_reason::PYFFI_FINISH_CANCELLED,
        }
    }
}

/// Called after each new token; return false to stop generating.
pub type pyffi_token_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, token: i32) -> bool>;

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() & !(1 << 63)
}

/// The sampling settings, stop tokens and EOS rule of a caller's `params`
/// (NULL: the defaults). The stop tokens are the caller's array.
pub(crate) unsafe fn read_sampling<'a>(
    params: *const pyffi_sampling_params,
) -> crate::Result<(SamplingParams, &'a [i32], bool)> {
    let p = read_params(params, pyffi_sampling_default_params(), "params")?;
    if p.top_k < 0 {
        return Err(invalid_argument(format!(
            "top_k must be >= 0, got {}",
            p.top_k
        )));
    }
    let sampling = SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k as usize,
        top_p: p.top_p,
        min_p: p.min_p,
        repeat_penalty: p.repeat_penalty,
        repeat_last_n: p.repeat_last_n as i64,
        seed: if p.seed == PYFFI_SEED_RANDOM {
            random_seed()
        } else {
            p.seed
        },
    };
    let stop_tokens = slice(p.stop_tokens, p.n_stop_tokens, "params.stop_tokens")?;
    Ok((sampling, stop_tokens, p.stop_at_eos))
}

/// Generate up to `max_new_tokens` after `prompt` (starting fresh in KV slot
/// 0). New tokens go into `out_tokens` (capacity `out_cap` >=
/// max_new_tokens); `*n_out` gets how many were written, `*finish` (may be
/// NULL) why it ended. `params` may be NULL for the defaults; `callback`
/// may be NULL.
#[no_mangle]
pub unsafe extern "C" fn pyffi_generate(
    session: *mut pyffi_session,
    prompt: *const i32,
    n_prompt: usize,
    params: *const pyffi_sampling_params,
    max_new_tokens: usize,
    out_tokens: *mut i32,
    out_cap: usize,
    n_out: *mut usize,
    finish: *mut pyffi_finish_reason,
    callback: pyffi_token_callback,
    user_data: *mut c_void,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    set(n_out, 0);
    run(err, || {
        let s = arg(session, "session")?;
        let prompt = slice(prompt, n_prompt, "prompt")?;
        let (sampling, stop_tokens, stop_at_eos) = read_sampling(params)?;
        if out_cap < max_new_tokens {
            return Err(Error::new(
                crate::ErrorKind::BufferTooSmall,
                format!("out_tokens holds {out_cap} tokens but max_new_tokens is {max_new_tokens}"),
            ));
        }
        let out = slice_mut(out_tokens, max_new_tokens, "out_tokens")?;
        let req = GenerateRequest {
            prompt,
            max_new_tokens,
            sampling,
            stop_tokens,
            stop_at_eos,
        };
        let mut on_token = |tok: i32| match callback {
            // SAFETY: the caller promises the callback and user_data are valid for this call.
            Some(cb) => unsafe { cb(user_data, tok) },
            None => true,
        };
        let mut guard = lock(s)?;
        let (n, reason) = guard.generate(&req, out, &mut on_token)?;
        set(n_out, n);
        set(finish, reason.into());
        Ok(())
    })
}
