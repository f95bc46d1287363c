//! Causal multi-head self-attention (twin of `kernels/attention.cu`).
//!
//! One task per (batch, head): the score matrix, the probabilities and the
//! weighted sum are small strided GEMMs over the interleaved `qkv` rows, run
//! single-threaded inside the task because the tasks already fill the cores.
//! Like a flash kernel, only each row's log-sum-exp is kept for the backward
//! pass (`B·NH·T` floats a layer instead of `B·NH·T·T`); backward recomputes
//! the probabilities with one more `T×T×hs` product, a few percent of the
//! step, for a large cut in activation memory.

use super::CpuPtr;
use super::matmul::{Strided, gemm_f32};
use super::simd::{self, multiversion};
use gemm::Parallelism;
use rayon::prelude::*;

struct Heads {
    t: usize,
    c: usize,
    hs: usize,
    nh: usize,
}

impl Heads {
    /// Q, K or V (`which` = 0, 1, 2) of head `h` in batch row `b`: a `t × hs` matrix.
    fn part(&self, qkv: CpuPtr, b: usize, h: usize, which: usize) -> Strided {
        let off = b * self.t * 3 * self.c + which * self.c + h * self.hs;
        Strided { ptr: qkv.add(off).0, rs: 3 * self.c as isize, cs: 1 }
    }
    fn transposed(m: Strided) -> Strided {
        Strided { ptr: m.ptr, rs: m.cs, cs: m.rs }
    }
    fn scale(&self) -> f32 {
        1.0 / (self.hs as f32).sqrt()
    }
    fn tasks(&self, b: usize) -> impl IndexedParallelIterator<Item = (usize, usize)> + use<> {
        let nh = self.nh;
        (0..b * nh).into_par_iter().map(move |i| (i / nh, i % nh))
    }
    /// `scores = Q·Kᵀ` (unscaled) for one head, into a `t × t` buffer.
    unsafe fn scores(&self, qkv: CpuPtr, b: usize, h: usize, out: &mut [f32]) {
        let (q, k) = (self.part(qkv, b, h, 0), self.part(qkv, b, h, 1));
        unsafe { gemm_f32(self.t, self.t, self.hs, out.as_mut_ptr(), self.t as isize, q, Self::transposed(k), false, Parallelism::None) };
    }
}

multiversion! {
    /// Row `i` of the scores → causal softmax probabilities (zero past `i`);
    /// returns the row's log-sum-exp of the scaled scores.
    fn softmax_row(row: &mut [f32], i: usize, scale: f32) -> f32 {
        let (live, masked) = row.split_at_mut(i + 1);
        let max = simd::max(live) * scale;
        for x in live.iter_mut() {
            *x = simd::exp(*x * scale - max);
        }
        let sum = simd::sum(live);
        let inv = 1.0 / sum;
        for x in live.iter_mut() {
            *x *= inv;
        }
        masked.fill(0.0);
        max + sum.ln()
    }
}

multiversion! {
    /// Row `i` of the scores → probabilities, from the saved log-sum-exp.
    fn probs_row(row: &mut [f32], i: usize, scale: f32, lse: f32) {
        let (live, masked) = row.split_at_mut(i + 1);
        for x in live.iter_mut() {
            *x = simd::exp(*x * scale - lse);
        }
        masked.fill(0.0);
    }
}

multiversion! {
    /// Row `i` of dP → dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale.
    fn softmax_backward_row(dp: &mut [f32], p: &[f32], i: usize, scale: f32) {
        let (live, masked) = dp.split_at_mut(i + 1);
        let dot = simd::dot(live, &p[..=i]);
        for (d, &p) in live.iter_mut().zip(&p[..=i]) {
            *d = p * (*d - dot) * scale;
        }
        masked.fill(0.0);
    }
}

/// `cache` receives one log-sum-exp per (batch, head, row).
pub(super) unsafe fn forward(out: CpuPtr, cache: CpuPtr, qkv: CpuPtr, b: usize, t: usize, c: usize, nh: usize) {
    let hd = Heads { t, c, hs: c / nh, nh };
    let scale = hd.scale();
    hd.tasks(b).for_each_init(
        || vec![0f32; t * t],
        |att, (bi, h)| unsafe {
            hd.scores(qkv, bi, h, att);
            let lse = cache.add((bi * nh + h) * t).slice_mut(t);
            for (i, row) in att.chunks_mut(t).enumerate() {
                lse[i] = softmax_row(row, i, scale);
            }
            let y = out.add(bi * t * c + h * hd.hs);
            let probs = Strided { ptr: att.as_ptr(), rs: t as isize, cs: 1 };
            gemm_f32(t, hd.hs, t, y.0, c as isize, probs, hd.part(qkv, bi, h, 2), false, Parallelism::None);
        },
    );
}

pub(super) unsafe fn backward(dqkv: CpuPtr, dout: CpuPtr, qkv: CpuPtr, cache: CpuPtr, b: usize, t: usize, c: usize, nh: usize) {
    let hd = Heads { t, c, hs: c / nh, nh };
    let scale = hd.scale();
    hd.tasks(b).for_each_init(
        || (vec![0f32; t * t], vec![0f32; t * t]),
        |(p, dp), (bi, h)| unsafe {
            hd.scores(qkv, bi, h, p);
            let lse = cache.add((bi * nh + h) * t).slice(t);
            for (i, row) in p.chunks_mut(t).enumerate() {
                probs_row(row, i, scale, lse[i]);
            }
            let probs = Strided { ptr: p.as_ptr(), rs: t as isize, cs: 1 };
            let dy = Strided { ptr: dout.add(bi * t * c + h * hd.hs).0, rs: c as isize, cs: 1 };
            let (q, k, v) = (hd.part(qkv, bi, h, 0), hd.part(qkv, bi, h, 1), hd.part(qkv, bi, h, 2));
            let dpart = |which| hd.part(dqkv, bi, h, which).ptr as *mut f32;
            let ld = 3 * c as isize;
            // dP = dY·Vᵀ ; dV = Pᵀ·dY
            gemm_f32(t, t, hd.hs, dp.as_mut_ptr(), t as isize, dy, Heads::transposed(v), false, Parallelism::None);
            gemm_f32(t, hd.hs, t, dpart(2), ld, Heads::transposed(probs), dy, false, Parallelism::None);
            // dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale, in place over dP
            for (i, (dprow, prow)) in dp.chunks_mut(t).zip(p.chunks(t)).enumerate() {
                softmax_backward_row(dprow, prow, i, scale);
            }
            let ds = Strided { ptr: dp.as_ptr(), rs: t as isize, cs: 1 };
            // dQ = dS·K ; dK = dSᵀ·Q
            gemm_f32(t, hd.hs, t, dpart(0), ld, ds, k, false, Parallelism::None);
            gemm_f32(t, hd.hs, t, dpart(1), ld, Heads::transposed(ds), q, false, Parallelism::None);
        },
    );
}
