//! Token + position embedding (twin of `kernels/encoder.cu`).

use super::CpuPtr;
use rayon::prelude::*;

pub(super) unsafe fn forward(out: CpuPtr, tokens: &[u32], wte: CpuPtr, wpe: CpuPtr, b: usize, t: usize, c: usize) {
    let out = unsafe { out.slice_mut(b * t * c) };
    out.par_chunks_mut(c).zip(tokens.par_iter()).enumerate().for_each(|(bt, (row, &tok))| {
        let te = unsafe { wte.add(tok as usize * c).slice(c) };
        let pe = unsafe { wpe.add((bt % t) * c).slice(c) };
        for ((o, &x), &y) in row.iter_mut().zip(te).zip(pe) {
            *o = x + y;
        }
    });
}

/// Position gradients: one task per position, summing the batch in order.
/// Token gradients: one task per column band, walking tokens in order, so a
/// token that repeats is accumulated deterministically without atomics.
pub(super) unsafe fn backward(dwte: CpuPtr, dwpe: CpuPtr, dout: CpuPtr, tokens: &[u32], b: usize, t: usize, c: usize) {
    let dout = unsafe { dout.slice(b * t * c) };
    unsafe { dwpe.slice_mut(t * c) }.par_chunks_mut(c).enumerate().for_each(|(pos, drow)| {
        for bi in 0..b {
            let src = &dout[(bi * t + pos) * c..][..c];
            drow.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
        }
    });
    const BAND: usize = 64;
    (0..c.div_ceil(BAND)).into_par_iter().for_each(|band| {
        let c0 = band * BAND;
        let w = BAND.min(c - c0);
        for (bt, &tok) in tokens.iter().enumerate() {
            let d = unsafe { dwte.add(tok as usize * c + c0).slice_mut(w) };
            d.iter_mut().zip(&dout[bt * c + c0..][..w]).for_each(|(d, &s)| *d += s);
        }
    });
}
