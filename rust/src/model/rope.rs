//! Rotary position embedding frequencies, computed the way transformers does
//! (float32 inverse frequencies, then the rope_scaling rule), or for models
//! from GGUF files the way ggml does (each angle from the previous one times
//! base^(-2/dim) in float32), so that positions rotate exactly as in llama.cpp.

use crate::config::{ModelConfig, RopeScaling};

#[derive(Debug, Clone)]
pub struct Rope {
    /// One inverse frequency per rotated pair (rotary_dim / 2 of them).
    pub inv_freq: Vec<f32>,
    ggml: Option<GgmlAngles>,
    /// Each q/k head holds, in its halves, what llama.cpp holds as
    /// interleaved (even, odd) pairs (llama-architecture GGUF files, whose
    /// rows we un-permute): the attention then sums q . k in llama.cpp's
    /// element order.
    pub pairs: bool,
}

#[derive(Debug, Clone)]
struct GgmlAngles {
    theta_scale: f32,
    /// Linear rope scaling: angles times 1 / factor, as ggml's `freq_scale`.
    freq_scale: f32,
    /// Llama 3 rope scaling: per pair, the unscaled frequency over the
    /// scaled one (ggml's `freq_factors`). None without (ggml then takes
    /// each angle as it is, and so must we, to the bit).
    freq_factors: Option<Vec<f32>>,
}

impl Rope {
    pub fn new(cfg: &ModelConfig) -> Rope {
        let dim = cfg.rotary_dim();
        let base = cfg.rope_theta;
        let mut inv_freq: Vec<f32> = (0..dim / 2)
            .map(|i| {
                let exponent = (2 * i) as f32 / dim as f32;
                (1.0 / base.powf(exponent as f64)) as f32
            })
            .collect();
        match cfg.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                for f in inv_freq.iter_mut() {
                    *f = (*f as f64 / factor) as f32;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let low_wavelen = original_max_position_embeddings / low_freq_factor;
                let high_wavelen = original_max_position_embeddings / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let freq = *f as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    let scaled = if wavelen > low_wavelen {
                        freq / factor
                    } else {
                        freq
                    };
                    let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                        / (high_freq_factor - low_freq_factor);
                    let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
                    *f = if medium {
                        ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
                    } else {
                        scaled as f32
                    };
                }
            }
        }
        Rope {
            inv_freq,
            ggml: None,
            pairs: false,
        }
    }

    /// Switch to ggml's angle arithmetic (for weights that came from GGUF).
    pub fn use_ggml_angles(&mut self, cfg: &ModelConfig) {
        let dim = cfg.rotary_dim();
        let theta_scale = (cfg.rope_theta as f32).powf(-2.0 / dim as f32);
        let (freq_scale, freq_factors) = match cfg.rope_scaling {
            RopeScaling::None => (1.0, None),
            RopeScaling::Linear { factor } => (1.0 / factor as f32, None),
            RopeScaling::Llama3 { .. } => {
                let mut plain = 1.0f32;
                let ff = self
                    .inv_freq
                    .iter()
                    .map(|&f| {
                        let ff = plain / f;
                        plain *= theta_scale;
                        ff
                    })
                    .collect();
                (1.0, Some(ff))
            }
        };
        self.ggml = Some(GgmlAngles {
            theta_scale,
            freq_scale,
            freq_factors,
        });
    }

    /// cos and sin of every pair's angle at `pos`, into slices of len inv_freq.len().
    pub fn angles(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        if let Some(g) = &self.ggml {
            let mut theta = pos as f32;
            for (i, (c, s)) in cos.iter_mut().zip(sin.iter_mut()).enumerate() {
                let a = match &g.freq_factors {
                    Some(ff) => theta / ff[i],
                    None => theta,
                };
                let a = g.freq_scale * a;
                // libm's cosf and sinf, as ggml calls them.
                *c = a.cos();
                *s = a.sin();
                theta *= g.theta_scale;
            }
            return;
        }
        let p = pos as f32;
        for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(&self.inv_freq) {
            let a = (p * f) as f64;
            *c = a.cos() as f32;
            *s = a.sin() as f32;
        }
    }
}
