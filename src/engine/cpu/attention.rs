//! Causal multi-head self-attention (twin of `kernels/attention.cu`).
//!
//! One task per (batch, head): the score matrix, the probabilities and the
//! weighted sum are small strided GEMMs over the interleaved `qkv` rows, run
//! single-threaded inside the task because the tasks already fill the cores.
//! The GEMMs go in blocks of [`BLOCK`] query rows that stop at the diagonal,
//! so the masked upper triangle is (mostly) never computed: at T = 256 that
//! is 5/8 of the full products.
//! Like a flash kernel, only each row's log-sum-exp is kept for the backward
//! pass (`B·NH·T` floats a layer instead of `B·NH·T·T`); backward recomputes
//! the probabilities with one more `T×T×hs` product, a few percent of the
//! step, for a large cut in activation memory.

use super::CpuPtr;
use super::matmul::{Strided, gemm_f32};
use super::simd::{self, multiversion};
use gemm::Parallelism;
use rayon::prelude::*;

/// Query rows per block of the causal GEMMs.
const BLOCK: usize = 64;

/// `(start, end)` of each block of rows.
fn blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t).step_by(BLOCK).map(move |r0| (r0, (r0 + BLOCK).min(t)))
}

/// `m` advanced by `rows` rows and `cols` columns.
fn offset(m: Strided, rows: usize, cols: usize) -> Strided {
    Strided { ptr: m.ptr.wrapping_offset(rows as isize * m.rs + cols as isize * m.cs), ..m }
}

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
    /// `scores = Q·Kᵀ` (unscaled) for one head into a `t × t` buffer, on and
    /// below the diagonal blocks (the rest is left as is: it is masked).
    unsafe fn scores(&self, qkv: CpuPtr, b: usize, h: usize, out: &mut [f32]) {
        let (q, kt) = (self.part(qkv, b, h, 0), Self::transposed(self.part(qkv, b, h, 1)));
        let t = self.t;
        for (r0, r1) in blocks(t) {
            let dst = out[r0 * t..].as_mut_ptr();
            unsafe { gemm_f32(r1 - r0, r1, self.hs, dst, t as isize, offset(q, r0, 0), kt, false, Parallelism::None) };
        }
    }

    /// `dst(t × hs) = A · B` for a lower-triangular `A` (`t × t`, row stride t):
    /// row block `[r0, r1)` only needs `A`'s first `r1` columns.
    unsafe fn lower_times(&self, dst: *mut f32, ld: isize, a: Strided, b: Strided) {
        for (r0, r1) in blocks(self.t) {
            unsafe { gemm_f32(r1 - r0, self.hs, r1, dst.wrapping_offset(r0 as isize * ld), ld, offset(a, r0, 0), b, false, Parallelism::None) };
        }
    }

    /// `dst(t × hs) = Aᵀ · B` for a lower-triangular `A`: row block `[c0, c1)`
    /// of the result only needs `A`'s rows from `c0` on.
    unsafe fn lower_t_times(&self, dst: *mut f32, ld: isize, a: Strided, b: Strided) {
        let t = self.t;
        for (c0, c1) in blocks(t) {
            let at = Self::transposed(offset(a, c0, c0));
            unsafe { gemm_f32(c1 - c0, self.hs, t - c0, dst.wrapping_offset(c0 as isize * ld), ld, at, offset(b, c0, 0), false, Parallelism::None) };
        }
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
            hd.lower_times(y.0, c as isize, probs, hd.part(qkv, bi, h, 2));
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
            // dP = dY·Vᵀ (on and below the diagonal blocks) ; dV = Pᵀ·dY
            for (r0, r1) in blocks(t) {
                let dst = dp[r0 * t..].as_mut_ptr();
                gemm_f32(r1 - r0, r1, hd.hs, dst, t as isize, offset(dy, r0, 0), Heads::transposed(v), false, Parallelism::None);
            }
            hd.lower_t_times(dpart(2), ld, probs, dy);
            // dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale, in place over dP
            for (i, (dprow, prow)) in dp.chunks_mut(t).zip(p.chunks(t)).enumerate() {
                softmax_backward_row(dprow, prow, i, scale);
            }
            let ds = Strided { ptr: dp.as_ptr(), rs: t as isize, cs: 1 };
            // dQ = dS·K ; dK = dSᵀ·Q
            hd.lower_times(dpart(0), ld, ds, k);
            hd.lower_t_times(dpart(1), ld, ds, q);
        },
    );
}

/// Generation's attention for one new position (see
/// `Engine::attention_decode`): its query `q(c)` over `kv`, the cached
/// positions' keys and values interleaved per position (`len × 2c`, the
/// new position last), per head of size c/nh, scaled by 1/√hs; a softmax
/// over all cached positions (they all precede or are the new one, so no
/// mask). Sums in f32 in position order, the exponentials after
/// subtracting the row maximum.
pub fn attention_decode(q: &[f32], kv: &[f32], c: usize, nh: usize) -> Vec<f32> {
    let hs = c / nh;
    let len = kv.len() / (2 * c);
    let scale = 1.0 / (hs as f32).sqrt();
    let mut out = vec![0f32; c];
    let mut w = vec![0f32; len];
    for h in 0..nh {
        let qh = &q[h * hs..(h + 1) * hs];
        for (p, wp) in w.iter_mut().enumerate() {
            let k = &kv[p * 2 * c + h * hs..p * 2 * c + (h + 1) * hs];
            *wp = scale * qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>();
        }
        let max = w.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut sum = 0f32;
        for wp in w.iter_mut() {
            *wp = (*wp - max).exp();
            sum += *wp;
        }
        let o = &mut out[h * hs..(h + 1) * hs];
        for (p, &wp) in w.iter().enumerate() {
            let v = &kv[p * 2 * c + c + h * hs..p * 2 * c + c + (h + 1) * hs];
            for (o, &v) in o.iter_mut().zip(v) {
                *o += wp / sum * v;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Attention written out loop by loop in f64: (out, dqkv) for a given dout.
    fn naive(qkv: &[f32], dout: &[f32], b: usize, t: usize, c: usize, nh: usize) -> (Vec<f64>, Vec<f64>) {
        let hs = c / nh;
        let scale = 1.0 / (hs as f64).sqrt();
        let at = |bi: usize, ti: usize, which: usize, h: usize, d: usize| qkv[(bi * t + ti) * 3 * c + which * c + h * hs + d] as f64;
        let mut out = vec![0f64; b * t * c];
        let mut dqkv = vec![0f64; b * t * 3 * c];
        for bi in 0..b {
            for h in 0..nh {
                let mut p = vec![vec![0f64; t]; t];
                for i in 0..t {
                    let s: Vec<f64> = (0..=i).map(|j| (0..hs).map(|d| at(bi, i, 0, h, d) * at(bi, j, 1, h, d)).sum::<f64>() * scale).collect();
                    let m = s.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    for j in 0..=i {
                        p[i][j] = (s[j] - m).exp() / z;
                        for d in 0..hs {
                            out[(bi * t + i) * c + h * hs + d] += p[i][j] * at(bi, j, 2, h, d);
                        }
                    }
                }
                let dy = |i: usize, d: usize| dout[(bi * t + i) * c + h * hs + d] as f64;
                for i in 0..t {
                    let dp: Vec<f64> = (0..=i).map(|j| (0..hs).map(|d| dy(i, d) * at(bi, j, 2, h, d)).sum()).collect();
                    let dot: f64 = (0..=i).map(|j| p[i][j] * dp[j]).sum();
                    for j in 0..=i {
                        let ds = p[i][j] * (dp[j] - dot) * scale;
                        for d in 0..hs {
                            dqkv[(bi * t + j) * 3 * c + 2 * c + h * hs + d] += p[i][j] * dy(i, d);
                            dqkv[(bi * t + i) * 3 * c + h * hs + d] += ds * at(bi, j, 1, h, d);
                            dqkv[(bi * t + j) * 3 * c + c + h * hs + d] += ds * at(bi, i, 0, h, d);
                        }
                    }
                }
            }
        }
        (out, dqkv)
    }

    #[test]
    fn blocked_causal_attention_matches_the_naive_one() {
        // T = 150: two full blocks and a partial one.
        let (b, t, c, nh) = (2, 150, 16, 2);
        let mut rng = Rng::new(4);
        let mut qkv: Vec<f32> = (0..b * t * 3 * c).map(|_| rng.normal()).collect();
        let mut dout: Vec<f32> = (0..b * t * c).map(|_| rng.normal()).collect();
        let mut out = vec![0f32; b * t * c];
        let mut cache = vec![0f32; b * nh * t];
        let mut dqkv = vec![0f32; b * t * 3 * c];
        let ptr = |v: &mut Vec<f32>| CpuPtr(v.as_mut_ptr());
        unsafe {
            forward(ptr(&mut out), ptr(&mut cache), ptr(&mut qkv), b, t, c, nh);
            backward(ptr(&mut dqkv), ptr(&mut dout), ptr(&mut qkv), ptr(&mut cache), b, t, c, nh);
        }
        let (want_out, want_dqkv) = naive(&qkv, &dout, b, t, c, nh);
        let max_err = |a: &[f32], w: &[f64]| a.iter().zip(w).fold(0f64, |m, (&x, &y)| m.max((x as f64 - y).abs()));
        assert!(max_err(&out, &want_out) < 1e-5, "forward error {}", max_err(&out, &want_out));
        assert!(max_err(&dqkv, &want_dqkv) < 1e-4, "backward error {}", max_err(&dqkv, &want_dqkv));
    }
}
