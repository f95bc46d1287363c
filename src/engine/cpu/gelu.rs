//! GELU, tanh approximation as GPT-2 defines it (twin of `kernels/gelu.cu`).

use super::{CpuPtr, ELEM_CHUNK};
use rayon::prelude::*;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const K: f32 = 0.044_715;

#[inline]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + K * x * x * x)).tanh())
}

#[inline]
pub(crate) fn gelu_grad(x: f32) -> f32 {
    let th = (SQRT_2_OVER_PI * (x + K * x * x * x)).tanh();
    let sech2 = 1.0 - th * th;
    0.5 * (1.0 + th) + 0.5 * x * sech2 * SQRT_2_OVER_PI * (1.0 + 3.0 * K * x * x)
}

/// In-place safe: each element is read before it is written.
pub(super) unsafe fn forward(out: CpuPtr, inp: CpuPtr, n: usize) {
    (0..n.div_ceil(ELEM_CHUNK)).into_par_iter().for_each(|i| {
        let (s, e) = (i * ELEM_CHUNK, ((i + 1) * ELEM_CHUNK).min(n));
        for j in s..e {
            unsafe { *out.elem(j) = gelu(inp.get(j)) };
        }
    });
}

pub(super) unsafe fn backward(dinp: CpuPtr, inp: CpuPtr, dout: CpuPtr, n: usize) {
    (0..n.div_ceil(ELEM_CHUNK)).into_par_iter().for_each(|i| {
        let (s, e) = (i * ELEM_CHUNK, ((i + 1) * ELEM_CHUNK).min(n));
        for j in s..e {
            unsafe { *dinp.elem(j) = gelu_grad(inp.get(j)) * dout.get(j) };
        }
    });
}
