//! Generation: prefill the prompt, then sample, hand out, and feed back one
//! token at a time until a stop token, the token limit, the end of the
//! context, or the caller says stop. `Generation` is one step per call;
//! `Session::generate` is its loop with a callback per token.

use crate::error::{invalid_argument, Result};
use crate::sampling::{Sampler, SamplingParams};
use crate::session::Session;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop (or EOS) token was sampled; it is not part of the output.
    Stop,
    /// max_new_tokens reached, or the context is full.
    Length,
    /// The per-token callback asked to stop.
    Cancelled,
}

pub struct GenerateRequest<'a> {
    pub prompt: &'a [i32],
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Tokens that end generation, besides the model's EOS ids when `stop_at_eos`.
    pub stop_tokens: &'a [i32],
    pub stop_at_eos: bool,
}

/// A generation in progress, one token per `next` call on the caller's
/// thread (no callback, no second thread): the step API under streaming
/// iterators, and under `Session::generate`'s loop itself, so that both
/// make the same tokens. `next` feeds the token it handed out last before
/// it samples the next, so a caller that stops after a token costs no
/// forward pass for it.
pub struct Generation {
    stops: Vec<i32>,
    history: Vec<u32>,
    sampler: Sampler,
    logits: Vec<f32>,
    max_new_tokens: usize,
    /// Tokens handed out so far.
    n: usize,
    /// Whether the last token handed out still has to be fed to the model.
    unfed: bool,
    finish: Option<FinishReason>,
    /// The session's stamp after this generation's last forward pass: any
    /// other call on the session since then changed what its cache holds.
    stamp: u64,
}

impl Session {
    /// Checks `req`, prefills its prompt (KV slot 0, starting fresh), and
    /// returns the generation, ready to hand out its first token.
    pub fn start_generation(&mut self, req: &GenerateRequest) -> Result<Generation> {
        req.sampling.validate()?;
        if req.prompt.is_empty() {
            return Err(invalid_argument("the prompt is empty"));
        }
        let cfg = &self.model.config;
        let mut stops: Vec<i32> = req.stop_tokens.to_vec();
        if req.stop_at_eos {
            stops.extend(cfg.eos_token_ids.iter().map(|&e| e as i32));
        }
        let prompt_len = u32::try_from(req.prompt.len()).map_err(|_| {
            invalid_argument(format!(
                "a prompt of {} tokens is too long",
                req.prompt.len()
            ))
        })?;
        let mut logits = vec![0.0f32; cfg.vocab_size];
        // Prefill validates the prompt (ids, length) before anything else happens.
        self.forward(req.prompt, &[prompt_len], None, true, &mut logits)?;
        let mut history: Vec<u32> = Vec::with_capacity(req.prompt.len() + req.max_new_tokens);
        history.extend(req.prompt.iter().map(|&t| t as u32));
        Ok(Generation {
            stops,
            history,
            sampler: Sampler::new(req.sampling.clone()),
            logits,
            max_new_tokens: req.max_new_tokens,
            n: 0,
            unfed: false,
            finish: None,
            stamp: self.stamp(),
        })
    }

    /// Generates into `out` (at least `max_new_tokens` long), calling
    /// `on_token` after each new token; returns how many were written.
    /// Uses KV slot 0 and starts fresh.
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        out: &mut [i32],
        on_token: &mut dyn FnMut(i32) -> bool,
    ) -> Result<(usize, FinishReason)> {
        if out.len() < req.max_new_tokens {
            return Err(invalid_argument(format!(
                "output buffer holds {} tokens but max_new_tokens is {}",
                out.len(),
                req.max_new_tokens
            )));
        }
        let mut gen = self.start_generation(req)?;
        let mut n = 0;
        while let Some(tok) = gen.next(self)? {
            out[n] = tok;
            n += 1;
            if !on_token(tok) {
                gen.cancel();
                break;
            }
        }
        Ok((n, gen.finish_reason().unwrap_or(FinishReason::Cancelled)))
    }
}

impl Generation {
    /// The next token, or None once generation has ended (then
    /// `finish_reason` says why; later calls return None again). `session`
    /// must be the one that started it, with no other call on it since the
    /// last `next`: otherwise its cache no longer holds this generation's
    /// tokens, and this is an error that ends it.
    pub fn next(&mut self, session: &mut Session) -> Result<Option<i32>> {
        if self.finish.is_some() {
            return Ok(None);
        }
        if session.stamp() != self.stamp {
            self.cancel();
            return Err(invalid_argument(
                "the session ran another call since this generation's last token \
                 (its cache no longer holds the generation); start a new one",
            ));
        }
        // At the limit, before feeding: the last token costs no forward pass.
        if self.n == self.max_new_tokens {
            return Ok(self.end(FinishReason::Length));
        }
        if self.unfed {
            let pos = self.history.len() - 1;
            if pos + 1 > session.n_ctx() {
                return Ok(self.end(FinishReason::Length));
            }
            let tok = self.history[pos] as i32;
            let fed = session.forward(&[tok], &[1], Some(&[pos as u32]), true, &mut self.logits);
            self.stamp = session.stamp();
            if let Err(e) = fed {
                self.cancel();
                return Err(e);
            }
            self.unfed = false;
        }
        let tok = self.sampler.sample(&mut self.logits, &self.history) as i32;
        if self.stops.contains(&tok) {
            return Ok(self.end(FinishReason::Stop));
        }
        self.n += 1;
        self.history.push(tok as u32);
        self.unfed = true;
        Ok(Some(tok))
    }

    /// Ends the generation here (`finish_reason` Cancelled).
    pub fn cancel(&mut self) {
        self.finish.get_or_insert(FinishReason::Cancelled);
    }

    /// Why the generation ended; None while it goes on.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Tokens handed out so far.
    pub fn n_tokens(&self) -> usize {
        self.n
    }

    fn end(&mut self, why: FinishReason) -> Option<i32> {
        self.finish = Some(why);
        None
    }
}
