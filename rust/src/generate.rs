//! The generation loop: prefill the prompt, then sample, emit, and feed back
//! one token at a time until a stop token, the token limit, the end of the
//! context, or the callback says stop.

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

impl Session {
    /// Generates into `out` (at least `max_new_tokens` long), calling
    /// `on_token` after each new token; returns how many were written.
    /// Uses KV slot 0 and starts fresh.
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        out: &mut [i32],
        on_token: &mut dyn FnMut(i32) -> bool,
    ) -> Result<(usize, FinishReason)> {
        req.sampling.validate()?;
        if req.prompt.is_empty() {
            return Err(invalid_argument("the prompt is empty"));
        }
        if out.len() < req.max_new_tokens {
            return Err(invalid_argument(format!(
                "output buffer holds {} tokens but max_new_tokens is {}",
                out.len(),
                req.max_new_tokens
            )));
        }
        let cfg = &self.model.config;
        let vocab = cfg.vocab_size;
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
        let mut logits = vec![0.0f32; vocab];
        // Prefill validates the prompt (ids, length) before anything else happens.
        self.forward(req.prompt, &[prompt_len], None, true, &mut logits)?;
        let mut history: Vec<u32> = Vec::with_capacity(req.prompt.len() + req.max_new_tokens);
        history.extend(req.prompt.iter().map(|&t| t as u32));
        let mut sampler = Sampler::new(req.sampling.clone());
        let mut n = 0;
        loop {
            if n == req.max_new_tokens {
                return Ok((n, FinishReason::Length));
            }
            let tok = sampler.sample(&mut logits, &history) as i32;
            if stops.contains(&tok) {
                return Ok((n, FinishReason::Stop));
            }
            out[n] = tok;
            n += 1;
            history.push(tok as u32);
            if !on_token(tok) {
                return Ok((n, FinishReason::Cancelled));
            }
            let pos = history.len() - 1;
            if n == req.max_new_tokens || pos + 1 > self.n_ctx() {
                return Ok((n, FinishReason::Length));
            }
            self.forward(&[tok], &[1], Some(&[pos as u32]), true, &mut logits)?;
        }
    }
}
