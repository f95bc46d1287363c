//! Causal multi-head self-attention (twin of `kernels/attention.cu`).
//!
//! One task per (batch, head): the score matrix, the probabilities and the
//! weighted sum are small strided GEMMs over the interleaved `qkv` rows, run
//! single-threaded inside the task because the tasks already fill the cores.
//! The probabilities are kept for the backward pass (`B·NH·T·T` floats a
//! layer), which at the sequence lengths trained on the CPU costs less than
//! recomputing them.

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
        Strided {
            ptr: qkv.add(off).0,
            rs: 3 * self.c as isize,
            cs: 1,
        }
    }
    fn transposed(m: Strided) -> Strided {
        Strided {
            ptr: m.ptr,
            rs: m.cs,
            cs: m.rs,
        }
    }
    fn scale(&self) -> f32 {
        1.0 / (self.hs as f32).sqrt()
    }
    fn tasks(&self, b: usize) -> impl IndexedParallelIterator<Item = (usize, usize)> + use<> {
        let nh = self.nh;
        (0..b * nh).into_par_iter().map(move |i| (i / nh, i % nh))
    }
}

multiversion! {
    /// Row `i` of the scores → causal softmax probabilities (zero past `i`).
    fn softmax_row(row: &mut [f32], i: usize, scale: f32) {
        let (live, masked) = row.split_at_mut(i + 1);
        let max = simd::max(live) * scale;
        for x in live.iter_mut() {
            *x = simd::exp(*x * scale - max);
        }
        let inv = 1.0 / simd::sum(live);
        for x in live.iter_mut() {
            *x *= inv;
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

pub(super) unsafe fn forward(
    out: CpuPtr,
    cache: CpuPtr,
    qkv: CpuPtr,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    let hd = Heads {
        t,
        c,
        hs: c / nh,
        nh,
    };
    let scale = hd.scale();
    hd.tasks(b).for_each(|(bi, h)| {
        let att = cache.add((bi * nh + h) * t * t);
        let (q, k, v) = (
            hd.part(qkv, bi, h, 0),
            hd.part(qkv, bi, h, 1),
            hd.part(qkv, bi, h, 2),
        );
        unsafe {
            gemm_f32(
                t,
                t,
                hd.hs,
                att.0,
                t as isize,
                q,
                Heads::transposed(k),
                false,
                Parallelism::None,
            );
            for (i, row) in att.slice_mut(t * t).chunks_mut(t).enumerate() {
                softmax_row(row, i, scale);
            }
            let y = out.add(bi * t * c + h * hd.hs);
            gemm_f32(
                t,
                hd.hs,
                t,
                y.0,
                c as isize,
                Strided {
                    ptr: att.0,
                    rs: t as isize,
                    cs: 1,
                },
                v,
                false,
                Parallelism::None,
            );
        }
    });
}

pub(super) unsafe fn backward(
    dqkv: CpuPtr,
    dout: CpuPtr,
    qkv: CpuPtr,
    cache: CpuPtr,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    let hd = Heads {
        t,
        c,
        hs: c / nh,
        nh,
    };
    let scale = hd.scale();
    hd.tasks(b).for_each_init(
        || vec![0f32; t * t],
        |dp, (bi, h)| {
            let p = Strided {
                ptr: cache.add((bi * nh + h) * t * t).0,
                rs: t as isize,
                cs: 1,
            };
            let dy = Strided {
                ptr: dout.add(bi * t * c + h * hd.hs).0,
                rs: c as isize,
                cs: 1,
            };
            let (q, k, v) = (
                hd.part(qkv, bi, h, 0),
                hd.part(qkv, bi, h, 1),
                hd.part(qkv, bi, h, 2),
            );
            let dpart = |which| hd.part(dqkv, bi, h, which).ptr as *mut f32;
            let ld = 3 * c as isize;
            unsafe {
                // dP = dY·Vᵀ ; dV = Pᵀ·dY
                gemm_f32(
                    t,
                    t,
                    hd.hs,
                    dp.as_mut_ptr(),
                    t as isize,
                    dy,
                    Heads::transposed(v),
                    false,
                    Parallelism::None,
                );
                gemm_f32(
                    t,
                    hd.hs,
                    t,
                    dpart(2),
                    ld,
                    Heads::transposed(p),
                    dy,
                    false,
                    Parallelism::None,
                );
                // dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale, in place over dP
                let probs = std::slice::from_raw_parts(p.ptr, t * t);
                for (i, (dprow, prow)) in dp.chunks_mut(t).zip(probs.chunks(t)).enumerate() {
                    softmax_backward_row(dprow, prow, i, scale);
                }
                let ds = Strided {
                    ptr: dp.as_ptr(),
                    rs: t as isize,
                    cs: 1,
                };
                // dQ = dS·K ; dK = dSᵀ·Q
                gemm_f32(t, hd.hs, t, dpart(0), ld, ds, k, false, Parallelism::None);
                gemm_f32(
                    t,
                    hd.hs,
                    t,
                    dpart(1),
                    ld,
                    Heads::transposed(ds),
                    q,
                    false,
                    Parallelism::None,
                );
            }
        },
    );
}
