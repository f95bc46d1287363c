//! Layer normalisation (twin of `kernels/layernorm.cu`).

use super::{CpuPtr, ROW_CHUNK};
use rayon::prelude::*;

pub(crate) const EPS: f32 = 1e-5;

pub(super) unsafe fn forward(
    out: CpuPtr,
    mean: CpuPtr,
    rstd: CpuPtr,
    inp: CpuPtr,
    w: CpuPtr,
    bias: CpuPtr,
    n: usize,
    c: usize,
) {
    let (inp, w, bias) = unsafe { (inp.slice(n * c), w.slice(c), bias.slice(c)) };
    let (mean, rstd) = unsafe { (mean.slice_mut(n), rstd.slice_mut(n)) };
    unsafe { out.slice_mut(n * c) }
        .par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((o, x), (mu, rs))| {
            let m = x.iter().sum::<f32>() / c as f32;
            let var = x.iter().map(|&v| (v - m) * (v - m)).sum::<f32>() / c as f32;
            let s = 1.0 / (var + EPS).sqrt();
            for i in 0..c {
                o[i] = (x[i] - m) * s * w[i] + bias[i];
            }
            *mu = m;
            *rs = s;
        });
}

/// Rows run in parallel; the weight and bias gradients are summed per chunk
/// of rows and the chunks added in order.
pub(super) unsafe fn backward(
    dinp: CpuPtr,
    dw: CpuPtr,
    dbias: CpuPtr,
    dout: CpuPtr,
    inp: CpuPtr,
    w: CpuPtr,
    mean: CpuPtr,
    rstd: CpuPtr,
    n: usize,
    c: usize,
) {
    let (dout, inp, w, mean, rstd) = unsafe {
        (
            dout.slice(n * c),
            inp.slice(n * c),
            w.slice(c),
            mean.slice(n),
            rstd.slice(n),
        )
    };
    let dinp = unsafe { dinp.slice_mut(n * c) };
    let partials: Vec<Vec<f32>> = dinp
        .par_chunks_mut(ROW_CHUNK * c)
        .enumerate()
        .map(|(chunk, dinp_rows)| {
            let mut acc = vec![0f32; 2 * c]; // [dw | dbias]
            for (r, di) in dinp_rows.chunks_mut(c).enumerate() {
                let row = chunk * ROW_CHUNK + r;
                let (x, dy) = (&inp[row * c..][..c], &dout[row * c..][..c]);
                let (mu, rs) = (mean[row], rstd[row]);
                let mut dnorm_mean = 0f32;
                let mut dnorm_norm_mean = 0f32;
                for i in 0..c {
                    let norm = (x[i] - mu) * rs;
                    let dnorm = w[i] * dy[i];
                    dnorm_mean += dnorm;
                    dnorm_norm_mean += dnorm * norm;
                    acc[i] += norm * dy[i];
                    acc[c + i] += dy[i];
                }
                dnorm_mean /= c as f32;
                dnorm_norm_mean /= c as f32;
                for i in 0..c {
                    let norm = (x[i] - mu) * rs;
                    di[i] += (w[i] * dy[i] - dnorm_mean - norm * dnorm_norm_mean) * rs;
                }
            }
            acc
        })
        .collect();
    let (dw, dbias) = unsafe { (dw.slice_mut(c), dbias.slice_mut(c)) };
    for p in &partials {
        dw.iter_mut().zip(&p[..c]).for_each(|(d, &s)| *d += s);
        dbias.iter_mut().zip(&p[c..]).for_each(|(d, &s)| *d += s);
    }
}
