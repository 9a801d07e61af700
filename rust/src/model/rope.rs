//! Rotary position embedding frequencies, computed the way transformers does
//! (float32 inverse frequencies, then the rope_scaling rule).

use crate::config::{ModelConfig, RopeScaling};

#[derive(Debug, Clone)]
pub struct Rope {
    /// One inverse frequency per rotated pair (rotary_dim / 2 of them).
    pub inv_freq: Vec<f32>,
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
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let low_wavelen = original_max_position_embeddings / low_freq_factor;
                let high_wavelen = original_max_position_embeddings / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let freq = *f as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    let scaled = if wavelen > low_wavelen { freq / factor } else { freq };
                    let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                        / (high_freq_factor - low_freq_factor);
                    let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
                    *f = if medium { ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32 } else { scaled as f32 };
                }
            }
        }
        Rope { inv_freq }
    }

    /// cos and sin of every pair's angle at `pos`, into slices of len inv_freq.len().
    pub fn angles(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        let p = pos as f32;
        for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(&self.inv_freq) {
            let a = (p * f) as f64;
            *c = a.cos() as f32;
            *s = a.sin() as f32;
        }
    }
}
