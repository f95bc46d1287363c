//! Linear layers (twin of the cuBLASLt calls in `engine::cuda`).
//!
//! Every product goes to `gemm`, whose AVX-512 micro-kernels take arbitrary
//! row and column strides: transposes are expressed as strides, never
//! materialised. Bias and residual are folded in by pre-filling the output
//! and letting gemm accumulate onto it (one pass over `out` fewer than adding
//! them afterwards).

use super::{CpuPtr, ROW_CHUNK};
use crate::engine::WeightLayout;
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

pub(crate) fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// Strides `(row, col)` of a matrix: `dst(m×n) (+)= lhs(m×k) · rhs(k×n)`.
#[derive(Clone, Copy)]
pub(crate) struct Strided {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` with `accumulate`.
///
/// # Safety
/// All three matrices must be valid for their strides; `dst` must not alias.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    lhs: Strided,
    rhs: Strided,
    accumulate: bool,
    par: Parallelism,
) {
    unsafe {
        gemm(m, n, k, dst, 1, dst_rs, accumulate, lhs.ptr, lhs.cs, lhs.rs, rhs.ptr, rhs.cs, rhs.rs, 1.0, 1.0, false, false, false, par);
    }
}

pub(super) unsafe fn forward(
    out: CpuPtr,
    inp: CpuPtr,
    w: CpuPtr,
    layout: WeightLayout,
    bias: Option<CpuPtr>,
    residual: Option<CpuPtr>,
    n: usize,
    c: usize,
    oc: usize,
) {
    let prefill = bias.is_some() || residual.is_some();
    if prefill {
        let bias = bias.map(|b| unsafe { b.slice(oc) });
        let residual = residual.map(|r| unsafe { r.slice(n * oc) });
        unsafe { out.slice_mut(n * oc) }.par_chunks_mut(oc).enumerate().for_each(|(row, o)| match (bias, residual) {
            (Some(b), Some(r)) => o.iter_mut().zip(b).zip(&r[row * oc..][..oc]).for_each(|((o, &b), &r)| *o = b + r),
            (Some(b), None) => o.copy_from_slice(b),
            (None, Some(r)) => o.copy_from_slice(&r[row * oc..][..oc]),
            (None, None) => unreachable!(),
        });
    }
    let (w_rs, w_cs) = match layout {
        WeightLayout::InOut => (oc as isize, 1),
        WeightLayout::OutIn => (1, c as isize),
    };
    unsafe {
        gemm_f32(
            n,
            oc,
            c,
            out.0,
            oc as isize,
            Strided { ptr: inp.0, rs: c as isize, cs: 1 },
            Strided { ptr: w.0, rs: w_rs, cs: w_cs },
            prefill,
            parallelism(),
        );
    }
}

pub(super) unsafe fn backward(
    dinp: CpuPtr,
    dw: CpuPtr,
    dbias: Option<CpuPtr>,
    dout: CpuPtr,
    inp: CpuPtr,
    w: CpuPtr,
    layout: WeightLayout,
    n: usize,
    c: usize,
    oc: usize,
) {
    let par = parallelism();
    let dout_m = Strided { ptr: dout.0, rs: oc as isize, cs: 1 };
    let (wt_rs, wt_cs) = match layout {
        WeightLayout::InOut => (1, oc as isize),
        WeightLayout::OutIn => (c as isize, 1),
    };
    unsafe {
        gemm_f32(n, c, oc, dinp.0, c as isize, dout_m, Strided { ptr: w.0, rs: wt_rs, cs: wt_cs }, false, par);
        match layout {
            WeightLayout::InOut => gemm_f32(c, oc, n, dw.0, oc as isize, Strided { ptr: inp.0, rs: 1, cs: c as isize }, dout_m, true, par),
            WeightLayout::OutIn => gemm_f32(
                oc,
                c,
                n,
                dw.0,
                c as isize,
                Strided { ptr: dout.0, rs: 1, cs: oc as isize },
                Strided { ptr: inp.0, rs: c as isize, cs: 1 },
                true,
                par,
            ),
        }
    }
    if let Some(db) = dbias {
        let dout = unsafe { dout.slice(n * oc) };
        let partials: Vec<Vec<f32>> = dout
            .par_chunks(ROW_CHUNK * oc)
            .map(|rows| {
                let mut acc = vec![0f32; oc];
                for r in rows.chunks(oc) {
                    acc.iter_mut().zip(r).for_each(|(a, &x)| *a += x);
                }
                acc
            })
            .collect();
        let db = unsafe { db.slice_mut(oc) };
        for p in &partials {
            db.iter_mut().zip(p).for_each(|(d, &s)| *d += s);
        }
    }
}
