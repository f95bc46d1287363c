//! The CPU kernel set: rayon over rows/heads, the `gemm` crate (AVX-512
//! micro-kernels) for every matrix product. It is the oracle the CUDA set is
//! tested against, so each op favours clarity and determinism: every
//! reduction runs over fixed-size chunks summed in a fixed order, so results
//! do not depend on the thread count or on scheduling.
//!
//! Each op family lives in the file named like its CUDA twin in `kernels/`.

pub mod attention;
mod classifier;
mod encoder;
mod gelu;
mod layernorm;
pub(crate) mod matmul;
mod optim;
pub(crate) mod simd;

use super::{AdamHyper, ArenaKind, Engine, EngineError, WeightLayout};
use crate::allreduce::projection::{Proj, Projector};
use rayon::prelude::*;
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

/// Rows handled by one task in chunked reductions. Fixed (not derived from
/// the thread count) so that sums are bit-identical on any machine.
pub(crate) const ROW_CHUNK: usize = 64;
/// Elements handled by one task in element-wise loops.
pub(crate) const ELEM_CHUNK: usize = 1 << 14;

/// A 64-byte aligned, zero-initialised `f32` buffer.
pub struct CpuArena {
    ptr: NonNull<f32>,
    len: usize,
}

// SAFETY: the arena exclusively owns its allocation.
unsafe impl Send for CpuArena {}

impl CpuArena {
    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len.max(1) * 4, 64).expect("arena size checked by alloc")
    }
}

impl Drop for CpuArena {
    fn drop(&mut self) {
        // SAFETY: allocated in `alloc` with this same layout.
        unsafe { dealloc(self.ptr.as_ptr().cast(), Self::layout(self.len)) }
    }
}

/// A raw pointer into a [`CpuArena`].
#[derive(Clone, Copy, Debug)]
pub struct CpuPtr(pub *mut f32);
// SAFETY: kernels only touch disjoint ranges from different threads.
unsafe impl Send for CpuPtr {}
unsafe impl Sync for CpuPtr {}

impl CpuPtr {
    /// # Safety
    /// `len` floats at the pointer must be valid and not written concurrently.
    #[inline]
    pub(crate) unsafe fn slice<'a>(self, len: usize) -> &'a [f32] {
        unsafe { std::slice::from_raw_parts(self.0, len) }
    }
    /// # Safety
    /// `len` floats at the pointer must be valid and not accessed elsewhere.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut<'a>(self, len: usize) -> &'a mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0, len) }
    }
    #[inline]
    pub(crate) fn add(self, n: usize) -> CpuPtr {
        CpuPtr(self.0.wrapping_add(n))
    }
}

/// The CPU engine. Work runs on the current rayon pool (`--threads` sizes it).
#[derive(Debug, Default, Clone)]
pub struct CpuEngine;

impl CpuEngine {
    pub fn new() -> Self {
        CpuEngine
    }
}

/// Sum of `f(chunk)` over fixed chunks of `0..n`, in chunk order.
pub(crate) fn chunked_sum(n: usize, chunk: usize, f: impl Fn(std::ops::Range<usize>) -> f64 + Sync) -> f64 {
    let parts: Vec<f64> = (0..n.div_ceil(chunk)).into_par_iter().map(|i| f(i * chunk..((i + 1) * chunk).min(n))).collect();
    parts.iter().sum()
}

impl Engine for CpuEngine {
    type Arena = CpuArena;
    type Ptr = CpuPtr;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn alloc(&self, _kind: ArenaKind, len: usize) -> Result<CpuArena, EngineError> {
        if len > isize::MAX as usize / 8 {
            return Err(EngineError::Alloc(len));
        }
        // SAFETY: the layout has non-zero size.
        let raw = unsafe { alloc_zeroed(CpuArena::layout(len)) };
        let ptr = NonNull::new(raw.cast::<f32>()).ok_or(EngineError::Alloc(len))?;
        Ok(CpuArena { ptr, len })
    }

    fn arena_len(&self, arena: &CpuArena) -> usize {
        arena.len
    }

    fn at(&self, arena: &CpuArena, offset: usize) -> CpuPtr {
        assert!(offset <= arena.len, "view at {offset} outside an arena of {}", arena.len);
        CpuPtr(arena.ptr.as_ptr().wrapping_add(offset))
    }

    unsafe fn write(&self, dst: CpuPtr, src: &[f32]) {
        unsafe { dst.slice_mut(src.len()) }.copy_from_slice(src);
    }

    unsafe fn read(&self, src: CpuPtr, dst: &mut [f32]) {
        dst.copy_from_slice(unsafe { src.slice(dst.len()) });
    }

    unsafe fn fill(&self, dst: CpuPtr, len: usize, value: f32) {
        unsafe { dst.slice_mut(len) }.par_chunks_mut(ELEM_CHUNK).for_each(|c| c.fill(value));
    }

    unsafe fn scale(&self, x: CpuPtr, len: usize, factor: f32) {
        unsafe { x.slice_mut(len) }.par_chunks_mut(ELEM_CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v *= factor));
    }

    unsafe fn sum_squares(&self, x: CpuPtr, len: usize) -> f64 {
        let x = unsafe { x.slice(len) };
        chunked_sum(len, ELEM_CHUNK, |r| x[r].iter().map(|&v| (v as f64) * (v as f64)).sum())
    }

    unsafe fn project(&self, x: CpuPtr, len: usize, offset: usize, p: &Projector) -> (Proj, f64) {
        p.project_with_scale(unsafe { x.slice(len) }, offset)
    }

    unsafe fn encoder_forward(&self, out: CpuPtr, tokens: &[u32], wte: CpuPtr, wpe: CpuPtr, b: usize, t: usize, c: usize) {
        unsafe { encoder::forward(out, tokens, wte, wpe, b, t, c) }
    }

    unsafe fn encoder_backward(&self, dwte: CpuPtr, dwpe: CpuPtr, dout: CpuPtr, tokens: &[u32], b: usize, t: usize, c: usize) {
        unsafe { encoder::backward(dwte, dwpe, dout, tokens, b, t, c) }
    }

    unsafe fn layernorm_forward(&self, out: CpuPtr, mean: CpuPtr, rstd: CpuPtr, inp: CpuPtr, w: CpuPtr, bias: CpuPtr, n: usize, c: usize) {
        unsafe { layernorm::forward(out, mean, rstd, inp, w, bias, n, c) }
    }

    unsafe fn layernorm_backward(
        &self,
        dinp: CpuPtr,
        dw: CpuPtr,
        dbias: CpuPtr,
        dout: CpuPtr,
        inp: CpuPtr,
        w: CpuPtr,
        mean: CpuPtr,
        rstd: CpuPtr,
        n: usize,
        c: usize,
    ) {
        unsafe { layernorm::backward(dinp, dw, dbias, dout, inp, w, mean, rstd, n, c) }
    }

    unsafe fn matmul_forward(
        &self,
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
        unsafe { matmul::forward(out, inp, w, layout, bias, residual, n, c, oc) }
    }

    unsafe fn matmul_backward(
        &self,
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
        unsafe { matmul::backward(dinp, dw, dbias, dout, inp, w, layout, n, c, oc) }
    }

    fn attention_cache_len(&self, b: usize, t: usize, nh: usize) -> usize {
        b * nh * t
    }

    unsafe fn attention_forward(&self, out: CpuPtr, cache: CpuPtr, qkv: CpuPtr, b: usize, t: usize, c: usize, nh: usize) {
        unsafe { attention::forward(out, cache, qkv, b, t, c, nh) }
    }

    unsafe fn attention_backward(&self, dqkv: CpuPtr, dout: CpuPtr, qkv: CpuPtr, cache: CpuPtr, b: usize, t: usize, c: usize, nh: usize) {
        unsafe { attention::backward(dqkv, dout, qkv, cache, b, t, c, nh) }
    }

    unsafe fn gelu_forward(&self, out: CpuPtr, inp: CpuPtr, n: usize) {
        unsafe { gelu::forward(out, inp, n) }
    }

    unsafe fn gelu_backward(&self, dinp: CpuPtr, inp: CpuPtr, dout: CpuPtr, n: usize) {
        unsafe { gelu::backward(dinp, inp, dout, n) }
    }

    unsafe fn crossentropy(&self, losses: CpuPtr, logits: CpuPtr, targets: &[u32], dscale: Option<f32>, n: usize, v: usize, vp: usize) {
        unsafe { classifier::crossentropy(losses, logits, targets, dscale, n, v, vp) }
    }

    unsafe fn adamw(&self, p: CpuPtr, g: CpuPtr, m: CpuPtr, v: CpuPtr, len: usize, hp: &AdamHyper, step: u64) {
        unsafe { optim::adamw(p, g, m, v, len, hp, step) }
    }

    unsafe fn lamb_moments(&self, p: CpuPtr, g: CpuPtr, m: CpuPtr, v: CpuPtr, len: usize, hp: &AdamHyper, step: u64) -> (f64, f64) {
        unsafe { optim::lamb_moments(p, g, m, v, len, hp, step) }
    }

    unsafe fn lamb_apply(&self, p: CpuPtr, m: CpuPtr, v: CpuPtr, len: usize, hp: &AdamHyper, step: u64, step_size: f32) {
        unsafe { optim::lamb_apply(p, m, v, len, hp, step, step_size) }
    }
}

/// Achieved GFLOP/s of the `gemm` crate on an `n³` fp32 product (best of
/// `reps`): the ceiling a training step made of matrix products can reach.
pub fn matmul_gflops(n: usize, reps: usize) -> f64 {
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0.0f32; n * n];
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t0 = std::time::Instant::now();
        let lhs = matmul::Strided { ptr: a.as_ptr(), rs: n as isize, cs: 1 };
        let rhs = matmul::Strided { ptr: b.as_ptr(), rs: n as isize, cs: 1 };
        // SAFETY: three n×n row-major buffers.
        unsafe { matmul::gemm_f32(n, n, n, c.as_mut_ptr(), n as isize, lhs, rhs, false, matmul::parallelism()) };
        best = best.min(t0.elapsed().as_secs_f64());
    }
    assert!((c[0] - 0.5 * n as f32).abs() < 1e-3 * n as f32, "GEMM computed a wrong result");
    2.0 * (n as f64).powi(3) / best / 1e9
}
