//! Token sampling: repetition penalty, then greedy (temperature 0) or
//! temperature -> top-k -> softmax -> top-p -> min-p -> a draw from a seeded
//! RNG. The RNG is our own (xoshiro256**, seeded through splitmix64), so the
//! same seed gives the same tokens on every platform and from every language.

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1 disables.
    pub top_p: f32,
    /// 0 disables.
    pub min_p: f32,
    /// 1 disables.
    pub repeat_penalty: f32,
    /// How many recent tokens (prompt included) the penalty looks at; -1 = all.
    pub repeat_last_n: i64,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> crate::error::Result<()> {
        let bad = |what: String| Err(crate::error::invalid_argument(what));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return bad(format!(
                "repeat_penalty must be > 0, got {}",
                self.repeat_penalty
            ));
        }
        if self.repeat_last_n < -1 {
            return bad(format!(
                "repeat_last_n must be >= -1, got {}",
                self.repeat_last_n
            ));
        }
        Ok(())
    }
}

/// xoshiro256** (Blackman and Vigna), seeded with splitmix64.
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    candidates: Vec<(f32, u32)>,
    probs: Vec<f64>,
    recent: Vec<u32>,
}

/// Index of the largest value; the first one on ties (as torch.argmax).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = Rng::new(params.seed);
        Sampler {
            params,
            rng,
            candidates: Vec::new(),
            probs: Vec::new(),
            recent: Vec::new(),
        }
    }

    /// Picks the next token from `logits` (modified in place by the penalty);
    /// `history` is every token so far, prompt included.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repeat_penalty != 1.0 && p.repeat_last_n != 0 {
            let n = if p.repeat_last_n < 0 {
                history.len()
            } else {
                (p.repeat_last_n as usize).min(history.len())
            };
            self.recent.clear();
            self.recent.extend_from_slice(&history[history.len() - n..]);
            self.recent.sort_unstable();
            self.recent.dedup();
            for &t in &self.recent {
                let l = &mut logits[t as usize];
                *l = if *l > 0.0 {
                    *l / p.repeat_penalty
                } else {
                    *l * p.repeat_penalty
                };
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits) as u32;
        }

        let c = &mut self.candidates;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (l / p.temperature, i as u32)),
        );
        let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, by_logit);
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(by_logit);

        let max = c[0].0 as f64;
        self.probs.clear();
        self.probs
            .extend(c.iter().map(|&(l, _)| (l as f64 - max).exp()));
        let total: f64 = self.probs.iter().sum();
        let mut keep = self.probs.len();
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, &q) in self.probs.iter().enumerate() {
                cum += q / total;
                if cum >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            // probs[0] is the largest (exp(0) = 1 before normalising).
            let floor = p.min_p as f64 * self.probs[0];
            keep = keep.min(
                self.probs
                    .iter()
                    .take_while(|&&q| q >= floor)
                    .count()
                    .max(1),
            );
        }
        let kept = &self.probs[..keep];
        let mut r = self.rng.next_f64() * kept.iter().sum::<f64>();
        for (i, &q) in kept.iter().enumerate() {
            r -= q;
            if r < 0.0 {
                return c[i].1;
            }
        }
        c[keep - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed,
        }
    }

    #[test]
    fn greedy_takes_first_max() {
        let mut s = Sampler::new(params(0.0, 1));
        assert_eq!(s.sample(&mut [0.5, 2.0, 2.0, -1.0], &[]), 1);
    }

    #[test]
    fn same_seed_same_draws_and_distribution_follows_softmax() {
        let logits = [0.0f32, 1.0, 2.0];
        let draw = |seed| {
            let mut s = Sampler::new(params(1.0, seed));
            (0..3000)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let d = draw(3);
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for k in 0..3 {
            let freq = d.iter().filter(|&&t| t == k).count() as f64 / d.len() as f64;
            let expected = (logits[k as usize] as f64).exp() / z;
            assert!(
                (freq - expected).abs() < 0.03,
                "token {k}: {freq} vs {expected}"
            );
        }
    }

    #[test]
    fn filters_restrict_the_candidates() {
        let logits = [3.0f32, 2.9, 0.0, -5.0];
        for (top_k, top_p, min_p, allowed) in [
            (1, 1.0, 0.0, vec![0]),
            (2, 1.0, 0.0, vec![0, 1]),
            (0, 0.5, 0.0, vec![0, 1]),
            (0, 1.0, 0.5, vec![0, 1]),
        ] {
            let mut s = Sampler::new(SamplingParams {
                top_k,
                top_p,
                min_p,
                ..params(1.0, 11)
            });
            for _ in 0..200 {
                assert!(allowed.contains(&s.sample(&mut logits.clone(), &[])));
            }
        }
    }

    #[test]
    fn repetition_penalty_pushes_away_seen_tokens() {
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 10.0,
            ..params(0.0, 1)
        });
        assert_eq!(s.sample(&mut [1.0, 0.9, -1.0], &[0]), 1);
    }
}
