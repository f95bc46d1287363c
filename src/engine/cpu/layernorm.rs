//! Layer normalisation (twin of `kernels/layernorm.cu`). One task per chunk
//! of rows; the weight and bias gradients are summed per chunk and the
//! chunks added in order, so the result does not depend on scheduling.

use super::simd::{self, multiversion};
use super::{CpuPtr, ROW_CHUNK};
use rayon::prelude::*;

pub(crate) const EPS: f32 = 1e-5;

multiversion! {
    fn forward_row(o: &mut [f32], x: &[f32], w: &[f32], b: &[f32]) -> (f32, f32) {
        let c = x.len() as f32;
        let m = simd::sum(x) / c;
        let var = simd::sum_map(x, |v| (v - m) * (v - m)) / c;
        let s = 1.0 / (var + EPS).sqrt();
        for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
            *o = (x - m) * s * w + b;
        }
        (m, s)
    }
}

pub(super) unsafe fn forward(out: CpuPtr, mean: CpuPtr, rstd: CpuPtr, inp: CpuPtr, w: CpuPtr, bias: CpuPtr, n: usize, c: usize) {
    let (inp, w, bias) = unsafe { (inp.slice(n * c), w.slice(c), bias.slice(c)) };
    let (mean, rstd) = unsafe { (mean.slice_mut(n), rstd.slice_mut(n)) };
    unsafe { out.slice_mut(n * c) }
        .par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((o, x), (mu, rs))| (*mu, *rs) = forward_row(o, x, w, bias));
}

multiversion! {
    /// One row's `dinp += …`; adds its share of dw and dbias into `acc = [dw | dbias]`.
    fn backward_row(di: &mut [f32], x: &[f32], dy: &[f32], w: &[f32], mu: f32, rs: f32, acc: &mut [f32]) {
        let c = x.len();
        let (dw, db) = acc.split_at_mut(c);
        let mut s1 = [0f32; simd::LANES];
        let mut s2 = [0f32; simd::LANES];
        for i in 0..c {
            let norm = (x[i] - mu) * rs;
            let dnorm = w[i] * dy[i];
            s1[i % simd::LANES] += dnorm;
            s2[i % simd::LANES] += dnorm * norm;
            dw[i] += norm * dy[i];
            db[i] += dy[i];
        }
        let dnorm_mean = simd::sum(&s1) / c as f32;
        let dnorm_norm_mean = simd::sum(&s2) / c as f32;
        for i in 0..c {
            let norm = (x[i] - mu) * rs;
            di[i] += (w[i] * dy[i] - dnorm_mean - norm * dnorm_norm_mean) * rs;
        }
    }
}

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
    let (dout, inp, w, mean, rstd) = unsafe { (dout.slice(n * c), inp.slice(n * c), w.slice(c), mean.slice(n), rstd.slice(n)) };
    let dinp = unsafe { dinp.slice_mut(n * c) };
    let partials: Vec<Vec<f32>> = dinp
        .par_chunks_mut(ROW_CHUNK * c)
        .enumerate()
        .map(|(chunk, dinp_rows)| {
            let mut acc = vec![0f32; 2 * c];
            for (r, di) in dinp_rows.chunks_mut(c).enumerate() {
                let row = chunk * ROW_CHUNK + r;
                backward_row(di, &inp[row * c..][..c], &dout[row * c..][..c], w, mean[row], rstd[row], &mut acc);
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
