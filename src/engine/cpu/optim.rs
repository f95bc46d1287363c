//! Adam-family parameter updates (twin of `kernels/adamw.cu`).

use super::{CpuPtr, ELEM_CHUNK, chunked_sum};
use crate::engine::AdamHyper;
use rayon::prelude::*;

/// (1 − β₁ᵗ, 1 − β₂ᵗ), computed in f64 as PyTorch does on the host.
fn bias_corrections(hp: &AdamHyper, step: u64) -> (f32, f32) {
    let t = step as i32;
    (
        (1.0 - (hp.beta1 as f64).powi(t)) as f32,
        (1.0 - (hp.beta2 as f64).powi(t)) as f32,
    )
}

/// Runs `f(i)` for every element index in parallel chunks.
fn for_each_elem(len: usize, f: impl Fn(usize) + Sync) {
    (0..len.div_ceil(ELEM_CHUNK))
        .into_par_iter()
        .for_each(|c| (c * ELEM_CHUNK..((c + 1) * ELEM_CHUNK).min(len)).for_each(&f));
}

/// PyTorch's `AdamW` (single-tensor path), operation for operation.
pub(super) unsafe fn adamw(
    p: CpuPtr,
    g: CpuPtr,
    m: CpuPtr,
    v: CpuPtr,
    len: usize,
    hp: &AdamHyper,
    step: u64,
) {
    let (bc1, bc2) = bias_corrections(hp, step);
    let step_size = hp.lr / bc1;
    let bc2_sqrt = bc2.sqrt();
    let decay = 1.0 - hp.lr * hp.weight_decay;
    for_each_elem(len, |i| unsafe {
        let (p, g, m, v) = (p.elem(i), g.get(i), m.elem(i), v.elem(i));
        *p *= decay;
        *m += (g - *m) * (1.0 - hp.beta1);
        *v = *v * hp.beta2 + (1.0 - hp.beta2) * g * g;
        let denom = v.sqrt() / bc2_sqrt + hp.eps;
        *p -= step_size * *m / denom;
    });
}

#[inline]
fn lamb_update(w: f32, m: f32, v: f32, bc1: f32, bc2: f32, hp: &AdamHyper) -> f32 {
    (m / bc1) / ((v / bc2).sqrt() + hp.eps) + hp.weight_decay * w
}

pub(super) unsafe fn lamb_moments(
    p: CpuPtr,
    g: CpuPtr,
    m: CpuPtr,
    v: CpuPtr,
    len: usize,
    hp: &AdamHyper,
    step: u64,
) -> (f64, f64) {
    let (bc1, bc2) = bias_corrections(hp, step);
    let w_sq = chunked_sum(len, ELEM_CHUNK, |r| {
        r.map(|i| unsafe { (p.get(i) as f64).powi(2) }).sum()
    });
    let u_sq = chunked_sum(len, ELEM_CHUNK, |r| {
        r.map(|i| unsafe {
            let (g, m, v) = (g.get(i), m.elem(i), v.elem(i));
            *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
            *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
            (lamb_update(p.get(i), *m, *v, bc1, bc2, hp) as f64).powi(2)
        })
        .sum()
    });
    (w_sq, u_sq)
}

pub(super) unsafe fn lamb_apply(
    p: CpuPtr,
    m: CpuPtr,
    v: CpuPtr,
    len: usize,
    hp: &AdamHyper,
    step: u64,
    step_size: f32,
) {
    let (bc1, bc2) = bias_corrections(hp, step);
    for_each_elem(len, |i| unsafe {
        let w = p.elem(i);
        *w -= step_size * lamb_update(*w, m.get(i), v.get(i), bc1, bc2, hp);
    });
}
