//! `pyffi_generation`: generation one token per call, on the caller's thread
//! (llama.h's decode-then-sample loop, with our sampler and stop rules). It
//! is what a streaming iterator wants: no callback, no second thread, and a
//! caller that stops simply frees the handle.

use std::sync::{Arc, Mutex};

use super::session::{
    lock_session, pyffi_finish_reason, pyffi_sampling_params, pyffi_session, read_sampling,
};
use super::{arg, pyffi_error, pyffi_status, run, set, slice};
use crate::error::invalid_argument;
use crate::generate::{GenerateRequest, Generation};
use crate::session::Session;

/// `pyffi_generation_next`'s `*token` once the generation has ended.
pub const PYFFI_TOKEN_NONE: i32 = -1;

/// A generation in progress on a session. It keeps its session alive (after
/// `pyffi_session_free` too) until `pyffi_generation_free`. One thread at a
/// time (a second waits).
pub struct pyffi_generation {
    session: Arc<Mutex<Session>>,
    inner: Mutex<Generation>,
}

/// Start generating after `prompt` on `session` (KV slot 0, starting fresh):
/// checks the arguments, runs the prompt through the model, and puts the
/// generation in `*out` (free it with `pyffi_generation_free`). `params` may
/// be NULL for the defaults; at most `max_new_tokens` tokens will come.
/// `prompt` and `params` (its stop tokens too) are copied: they need not
/// outlive this call.
/// Another call on the session between two `pyffi_generation_next` calls
/// ends the generation with an error at the next one.
#[no_mangle]
pub unsafe extern "C" fn pyffi_generation_new(
    session: *const pyffi_session,
    prompt: *const i32,
    n_prompt: usize,
    params: *const pyffi_sampling_params,
    max_new_tokens: usize,
    out: *mut *mut pyffi_generation,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    run(err, || {
        if out.is_null() {
            return Err(invalid_argument("out is NULL"));
        }
        *out = std::ptr::null_mut();
        let s = arg(session, "session")?;
        let prompt = slice(prompt, n_prompt, "prompt")?;
        let (sampling, stop_tokens, stop_at_eos) = read_sampling(params)?;
        let req = GenerateRequest {
            prompt,
            max_new_tokens,
            sampling,
            stop_tokens,
            stop_at_eos,
        };
        let gen = lock_session(&s.inner)?.start_generation(&req)?;
        *out = Box::into_raw(Box::new(pyffi_generation {
            session: s.inner.clone(),
            inner: Mutex::new(gen),
        }));
        Ok(())
    })
}

/// The next token into `*token`, or PYFFI_TOKEN_NONE once the generation
/// has ended, and then (when `finish` is not NULL) why in `*finish`; later
/// calls give PYFFI_TOKEN_NONE again. Each call after the first runs the
/// previous token through the model, then samples. An error (a session
/// used by another call meanwhile, or the forward pass failing) ends the
/// generation, as cancelled.
#[no_mangle]
pub unsafe extern "C" fn pyffi_generation_next(
    generation: *const pyffi_generation,
    token: *mut i32,
    finish: *mut pyffi_finish_reason,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    set(token, PYFFI_TOKEN_NONE);
    run(err, || {
        let g = arg(generation, "generation")?;
        if token.is_null() {
            return Err(invalid_argument("token is NULL"));
        }
        let mut gen = g.inner.lock().map_err(|_| {
            invalid_argument("generation is unusable after an internal error; free it")
        })?;
        let mut session = lock_session(&g.session)?;
        if let Some(tok) = gen.next(&mut session)? {
            *token = tok;
        } else if let Some(why) = gen.finish_reason() {
            set(finish, why.into());
        }
        Ok(())
    })
}

/// Tokens the generation has given so far (0 for NULL).
#[no_mangle]
pub unsafe extern "C" fn pyffi_generation_n_tokens(generation: *const pyffi_generation) -> usize {
    super::guard(0, || {
        generation
            .as_ref()
            .and_then(|g| g.inner.lock().ok().map(|gen| gen.n_tokens()))
            .unwrap_or(0)
    })
}

/// Ends the generation (if it has not ended) and frees it. NULL does nothing.
#[no_mangle]
pub unsafe extern "C" fn pyffi_generation_free(generation: *mut pyffi_generation) {
    if !generation.is_null() {
        drop(Box::from_raw(generation));
    }
}
