//! Adam-family parameter updates (twin of `kernels/adamw.cu`).

use super::simd::multiversion;
use super::{CpuPtr, ELEM_CHUNK};
use crate::engine::AdamHyper;
use rayon::prelude::*;

/// (1 − β₁ᵗ, 1 − β₂ᵗ), computed in f64 as PyTorch does on the host.
fn bias_corrections(hp: &AdamHyper, step: u64) -> (f32, f32) {
    let t = step as i32;
    ((1.0 - (hp.beta1 as f64).powi(t)) as f32, (1.0 - (hp.beta2 as f64).powi(t)) as f32)
}

/// The four state vectors of a tensor, cut into the same parallel chunks.
fn chunks<'a>(
    p: CpuPtr,
    g: CpuPtr,
    m: CpuPtr,
    v: CpuPtr,
    len: usize,
) -> impl IndexedParallelIterator<Item = (&'a mut [f32], &'a [f32], &'a mut [f32], &'a mut [f32])> {
    // SAFETY: the caller's views hold `len` floats each and do not alias.
    let (p, g, m, v) = unsafe { (p.slice_mut(len), g.slice(len), m.slice_mut(len), v.slice_mut(len)) };
    p.par_chunks_mut(ELEM_CHUNK)
        .zip(g.par_chunks(ELEM_CHUNK))
        .zip(m.par_chunks_mut(ELEM_CHUNK))
        .zip(v.par_chunks_mut(ELEM_CHUNK))
        .map(|(((p, g), m), v)| (p, g, m, v))
}

multiversion! {
    /// PyTorch's `AdamW` (single-tensor path), operation for operation.
    fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], hp: &AdamHyper, bc1: f32, bc2: f32) {
        let step_size = hp.lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        let decay = 1.0 - hp.lr * hp.weight_decay;
        for i in 0..p.len().min(g.len()).min(m.len()).min(v.len()) {
            p[i] *= decay;
            let g = g[i] * hp.grad_scale;
            m[i] += (g - m[i]) * (1.0 - hp.beta1);
            v[i] = v[i] * hp.beta2 + (1.0 - hp.beta2) * g * g;
            let denom = v[i].sqrt() / bc2_sqrt + hp.eps;
            p[i] -= step_size * m[i] / denom;
        }
    }
}

pub(super) unsafe fn adamw(p: CpuPtr, g: CpuPtr, m: CpuPtr, v: CpuPtr, len: usize, hp: &AdamHyper, step: u64) {
    let (bc1, bc2) = bias_corrections(hp, step);
    chunks(p, g, m, v, len).for_each(|(p, g, m, v)| adamw_chunk(p, g, m, v, hp, bc1, bc2));
}

#[inline(always)]
fn lamb_update(w: f32, m: f32, v: f32, bc1: f32, bc2: f32, hp: &AdamHyper) -> f32 {
    (m / bc1) / ((v / bc2).sqrt() + hp.eps) + hp.weight_decay * w
}

multiversion! {
    /// Updates the moments; returns this chunk's (Σw², Σu²).
    fn lamb_moments_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], hp: &AdamHyper, bc1: f32, bc2: f32) -> (f64, f64) {
        let mut w_sq = [0f32; super::simd::LANES];
        let mut u_sq = [0f32; super::simd::LANES];
        for i in 0..p.len().min(g.len()).min(m.len()).min(v.len()) {
            let g = g[i] * hp.grad_scale;
            m[i] = hp.beta1 * m[i] + (1.0 - hp.beta1) * g;
            v[i] = hp.beta2 * v[i] + (1.0 - hp.beta2) * g * g;
            let u = lamb_update(p[i], m[i], v[i], bc1, bc2, hp);
            w_sq[i % super::simd::LANES] += p[i] * p[i];
            u_sq[i % super::simd::LANES] += u * u;
        }
        (w_sq.iter().map(|&x| x as f64).sum(), u_sq.iter().map(|&x| x as f64).sum())
    }
}

pub(super) unsafe fn lamb_moments(p: CpuPtr, g: CpuPtr, m: CpuPtr, v: CpuPtr, len: usize, hp: &AdamHyper, step: u64) -> (f64, f64) {
    let (bc1, bc2) = bias_corrections(hp, step);
    let parts: Vec<(f64, f64)> = chunks(p, g, m, v, len).map(|(p, g, m, v)| lamb_moments_chunk(p, g, m, v, hp, bc1, bc2)).collect();
    parts.iter().fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y))
}

multiversion! {
    fn lamb_apply_chunk(p: &mut [f32], m: &[f32], v: &[f32], hp: &AdamHyper, bc1: f32, bc2: f32, step_size: f32) {
        for i in 0..p.len().min(m.len()).min(v.len()) {
            p[i] -= step_size * lamb_update(p[i], m[i], v[i], bc1, bc2, hp);
        }
    }
}

pub(super) unsafe fn lamb_apply(p: CpuPtr, m: CpuPtr, v: CpuPtr, len: usize, hp: &AdamHyper, step: u64, step_size: f32) {
    let (bc1, bc2) = bias_corrections(hp, step);
    // SAFETY: as in `chunks`; `m` and `v` are only read here.
    let (p, m, v) = unsafe { (p.slice_mut(len), m.slice(len), v.slice(len)) };
    p.par_chunks_mut(ELEM_CHUNK)
        .zip(m.par_chunks(ELEM_CHUNK))
        .zip(v.par_chunks(ELEM_CHUNK))
        .for_each(|((p, m), v)| lamb_apply_chunk(p, m, v, hp, bc1, bc2, step_size));
}
