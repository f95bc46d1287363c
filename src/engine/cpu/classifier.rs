//! Fused softmax + cross-entropy (twin of `kernels/classifier.cu`): one pass
//! for the row maximum and the normaliser, one pass that turns the logits
//! into their gradient in place. The probabilities are never stored, which
//! matters at a 50,304-wide vocabulary.

use super::CpuPtr;
use rayon::prelude::*;

pub(super) unsafe fn crossentropy(
    losses: CpuPtr,
    logits: CpuPtr,
    targets: &[u32],
    dscale: Option<f32>,
    n: usize,
    v: usize,
    vp: usize,
) {
    let losses = unsafe { losses.slice_mut(n) };
    unsafe { logits.slice_mut(n * vp) }
        .par_chunks_mut(vp)
        .zip(losses.par_iter_mut())
        .zip(targets.par_iter())
        .for_each(|((row, loss), &tgt)| {
            let tgt = tgt as usize;
            let live = &row[..v];
            let max = live.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let sum: f64 = live.iter().map(|&x| ((x - max).exp()) as f64).sum();
            let lse = max as f64 + sum.ln();
            *loss = (lse - row[tgt] as f64) as f32;
            if let Some(s) = dscale {
                let inv = (1.0 / sum) as f32;
                for x in row[..v].iter_mut() {
                    *x = (*x - max).exp() * inv * s;
                }
                row[tgt] -= s;
                row[v..].fill(0.0);
            }
        });
}
