//! GELU, tanh approximation as GPT-2 defines it (twin of `kernels/gelu.cu`).
//!
//! `0.5·x·(1 + tanh(u))` is evaluated as `x·σ(2u)`, the same function
//! written with one exponential, which vectorises (libm's tanh does not).

use super::simd::{self, multiversion};
use super::{CpuPtr, ELEM_CHUNK};
use rayon::prelude::*;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const K: f32 = 0.044_715;

/// (gelu(x), gelu'(x)).
#[inline(always)]
fn gelu_and_grad(x: f32) -> (f32, f32) {
    let u = SQRT_2_OVER_PI * (x + K * x * x * x);
    let s = 1.0 / (1.0 + simd::exp(-2.0 * u)); // σ(2u) = (1 + tanh u)/2
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * K * x * x);
    (x * s, s + 2.0 * x * s * (1.0 - s) * du)
}

multiversion! {
    fn forward_chunk(out: &mut [f32], inp: &[f32]) {
        for (o, &x) in out.iter_mut().zip(inp) {
            *o = gelu_and_grad(x).0;
        }
    }
}

multiversion! {
    fn backward_chunk(dinp: &mut [f32], inp: &[f32]) {
        for (d, &x) in dinp.iter_mut().zip(inp) {
            *d *= gelu_and_grad(x).1;
        }
    }
}

/// `out` may alias `inp`: each chunk is copied through a small buffer then.
pub(super) unsafe fn forward(out: CpuPtr, inp: CpuPtr, n: usize) {
    (0..n.div_ceil(ELEM_CHUNK)).into_par_iter().for_each(|i| {
        let (s, e) = (i * ELEM_CHUNK, ((i + 1) * ELEM_CHUNK).min(n));
        if out.0 == inp.0 {
            let copy = unsafe { inp.add(s).slice(e - s) }.to_vec();
            forward_chunk(unsafe { out.add(s).slice_mut(e - s) }, &copy);
        } else {
            forward_chunk(unsafe { out.add(s).slice_mut(e - s) }, unsafe { inp.add(s).slice(e - s) });
        }
    });
}

/// `dinp = dout · gelu'(inp)`, computed in place in `dinp` after copying `dout` there.
pub(super) unsafe fn backward(dinp: CpuPtr, inp: CpuPtr, dout: CpuPtr, n: usize) {
    (0..n.div_ceil(ELEM_CHUNK)).into_par_iter().for_each(|i| {
        let (s, e) = (i * ELEM_CHUNK, ((i + 1) * ELEM_CHUNK).min(n));
        let d = unsafe { dinp.add(s).slice_mut(e - s) };
        if dinp.0 != dout.0 {
            d.copy_from_slice(unsafe { dout.add(s).slice(e - s) });
        }
        backward_chunk(d, unsafe { inp.add(s).slice(e - s) });
    });
}

#[cfg(test)]
mod tests {
    /// Against GPT-2's formula in f64 with libm's tanh.
    #[test]
    fn matches_the_tanh_formula() {
        for i in -2000..2000 {
            let x = i as f32 * 0.005;
            let xd = x as f64;
            let u = 0.7978845608028654 * (xd + 0.044715 * xd.powi(3));
            let t = u.tanh();
            let want = 0.5 * xd * (1.0 + t);
            let want_grad = 0.5 * (1.0 + t) + 0.5 * xd * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * xd * xd);
            let (g, d) = super::gelu_and_grad(x);
            assert!((g as f64 - want).abs() < 1e-6 * (1.0 + want.abs()), "gelu({x}) = {g}, want {want}");
            assert!((d as f64 - want_grad).abs() < 1e-6 * (1.0 + want_grad.abs()), "gelu'({x}) = {d}, want {want_grad}");
        }
    }
}
