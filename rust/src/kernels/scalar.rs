//! Plain reference kernels: obviously correct, slow, and the oracle that every
//! fast kernel is tested against.

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum::<f64>() as f32
}

pub fn matmul(out: &mut [f32], x: &[f32], w: &[f32], n_tok: usize, n_in: usize, n_out: usize) {
    for t in 0..n_tok {
        for o in 0..n_out {
            out[t * n_out + o] = dot(&x[t * n_in..(t + 1) * n_in], &w[o * n_in..(o + 1) * n_in]);
        }
    }
}

pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    for (o, xr) in out.chunks_mut(dim).zip(x.chunks(dim)) {
        let ms = xr.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / dim as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        for i in 0..dim {
            o[i] = weight[i] * (xr[i] as f64 * inv) as f32;
        }
    }
}

pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = x.iter().map(|v| (*v as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    for (v, e) in x.iter_mut().zip(exps) {
        *v = (e / sum) as f32;
    }
}
