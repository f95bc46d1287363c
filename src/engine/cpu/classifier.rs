//! Fused softmax + cross-entropy (twin of `kernels/classifier.cu`): one pass
//! for the row maximum, one that exponentiates (in place when training) and
//! sums, one that scales the exponentials into the gradient. The
//! probabilities are never stored separately, which matters at a
//! 50,304-wide vocabulary, and each logit is exponentiated once.

use super::CpuPtr;
use super::simd::{self, multiversion};
use rayon::prelude::*;

multiversion! {
    /// Loss of one row; with `dscale`, the row becomes `dscale·(softmax − onehot)`.
    fn row(row: &mut [f32], v: usize, tgt: usize, dscale: Option<f32>) -> f32 {
        let target_logit = row[tgt];
        let (live, pad) = row.split_at_mut(v);
        let max = simd::max(live);
        let sum = match dscale {
            None => simd::sum_map(live, |x| simd::exp(x - max)),
            Some(_) => {
                for x in live.iter_mut() {
                    *x = simd::exp(*x - max);
                }
                simd::sum(live)
            }
        };
        if let Some(s) = dscale {
            let k = s / sum;
            for x in live.iter_mut() {
                *x *= k;
            }
            live[tgt] -= s;
            pad.fill(0.0);
        }
        max - target_logit + sum.ln()
    }
}

pub(super) unsafe fn crossentropy(losses: CpuPtr, logits: CpuPtr, targets: &[u32], dscale: Option<f32>, n: usize, v: usize, vp: usize) {
    let losses = unsafe { losses.slice_mut(n) };
    unsafe { logits.slice_mut(n * vp) }
        .par_chunks_mut(vp)
        .zip(losses.par_iter_mut())
        .zip(targets.par_iter())
        .for_each(|((r, loss), &tgt)| *loss = row(r, v, tgt as usize, dscale));
}
