//! An engine wrapper that times every kernel call by name: `dtrain bench
//! train --profile` prints where a training step spends its time. Timing is
//! wall-clock around each call, which is exact for the CPU engine (calls
//! are synchronous).

use super::{AdamHyper, Engine, EngineError, WeightLayout};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

pub struct Profiled<E> {
    pub inner: E,
    times: Mutex<BTreeMap<&'static str, (u64, f64)>>,
}

impl<E> Profiled<E> {
    pub fn new(inner: E) -> Self {
        Profiled { inner, times: Mutex::new(BTreeMap::new()) }
    }

    fn time<R>(&self, name: &'static str, f: impl FnOnce() -> R) -> R {
        let t0 = Instant::now();
        let r = f();
        let dt = t0.elapsed().as_secs_f64();
        let mut times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        let entry = times.entry(name).or_insert((0, 0.0));
        entry.0 += 1;
        entry.1 += dt;
        r
    }

    /// `(op, calls, seconds)` since the last reset, slowest first.
    pub fn take(&self) -> Vec<(&'static str, u64, f64)> {
        let mut times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = std::mem::take(&mut *times).into_iter().map(|(k, (n, s))| (k, n, s)).collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2));
        v
    }
}

impl<E: Engine> Engine for Profiled<E> {
    type Arena = E::Arena;
    type Ptr = E::Ptr;

    fn name(&self) -> String {
        format!("{} (profiled)", self.inner.name())
    }
    fn alloc(&self, len: usize) -> Result<E::Arena, EngineError> {
        self.inner.alloc(len)
    }
    fn arena_len(&self, arena: &E::Arena) -> usize {
        self.inner.arena_len(arena)
    }
    fn at(&self, arena: &E::Arena, offset: usize) -> E::Ptr {
        self.inner.at(arena, offset)
    }
    unsafe fn write(&self, dst: E::Ptr, src: &[f32]) {
        self.time("write", || unsafe { self.inner.write(dst, src) })
    }
    unsafe fn read(&self, src: E::Ptr, dst: &mut [f32]) {
        self.time("read", || unsafe { self.inner.read(src, dst) })
    }
    unsafe fn fill(&self, dst: E::Ptr, len: usize, value: f32) {
        self.time("fill", || unsafe { self.inner.fill(dst, len, value) })
    }
    unsafe fn scale(&self, x: E::Ptr, len: usize, factor: f32) {
        self.time("scale", || unsafe { self.inner.scale(x, len, factor) })
    }
    unsafe fn sum_squares(&self, x: E::Ptr, len: usize) -> f64 {
        self.time("sum_squares", || unsafe { self.inner.sum_squares(x, len) })
    }
    unsafe fn encoder_forward(&self, out: E::Ptr, tokens: &[u32], wte: E::Ptr, wpe: E::Ptr, b: usize, t: usize, c: usize) {
        self.time("encoder_forward", || unsafe { self.inner.encoder_forward(out, tokens, wte, wpe, b, t, c) })
    }
    unsafe fn encoder_backward(&self, dwte: E::Ptr, dwpe: E::Ptr, dout: E::Ptr, tokens: &[u32], b: usize, t: usize, c: usize) {
        self.time("encoder_backward", || unsafe { self.inner.encoder_backward(dwte, dwpe, dout, tokens, b, t, c) })
    }
    unsafe fn layernorm_forward(&self, out: E::Ptr, mean: E::Ptr, rstd: E::Ptr, inp: E::Ptr, w: E::Ptr, bias: E::Ptr, n: usize, c: usize) {
        self.time("layernorm_forward", || unsafe { self.inner.layernorm_forward(out, mean, rstd, inp, w, bias, n, c) })
    }
    unsafe fn layernorm_backward(
        &self,
        dinp: E::Ptr,
        dw: E::Ptr,
        dbias: E::Ptr,
        dout: E::Ptr,
        inp: E::Ptr,
        w: E::Ptr,
        mean: E::Ptr,
        rstd: E::Ptr,
        n: usize,
        c: usize,
    ) {
        self.time("layernorm_backward", || unsafe { self.inner.layernorm_backward(dinp, dw, dbias, dout, inp, w, mean, rstd, n, c) })
    }
    unsafe fn matmul_forward(
        &self,
        out: E::Ptr,
        inp: E::Ptr,
        w: E::Ptr,
        layout: WeightLayout,
        bias: Option<E::Ptr>,
        residual: Option<E::Ptr>,
        n: usize,
        c: usize,
        oc: usize,
    ) {
        let name = if layout == WeightLayout::OutIn { "matmul_forward (head)" } else { "matmul_forward" };
        self.time(name, || unsafe { self.inner.matmul_forward(out, inp, w, layout, bias, residual, n, c, oc) })
    }
    unsafe fn matmul_backward(
        &self,
        dinp: E::Ptr,
        dw: E::Ptr,
        dbias: Option<E::Ptr>,
        dout: E::Ptr,
        inp: E::Ptr,
        w: E::Ptr,
        layout: WeightLayout,
        n: usize,
        c: usize,
        oc: usize,
    ) {
        let name = if layout == WeightLayout::OutIn { "matmul_backward (head)" } else { "matmul_backward" };
        self.time(name, || unsafe { self.inner.matmul_backward(dinp, dw, dbias, dout, inp, w, layout, n, c, oc) })
    }
    fn attention_cache_len(&self, b: usize, t: usize, nh: usize) -> usize {
        self.inner.attention_cache_len(b, t, nh)
    }
    unsafe fn attention_forward(&self, out: E::Ptr, cache: E::Ptr, qkv: E::Ptr, b: usize, t: usize, c: usize, nh: usize) {
        self.time("attention_forward", || unsafe { self.inner.attention_forward(out, cache, qkv, b, t, c, nh) })
    }
    unsafe fn attention_backward(&self, dqkv: E::Ptr, dout: E::Ptr, qkv: E::Ptr, cache: E::Ptr, b: usize, t: usize, c: usize, nh: usize) {
        self.time("attention_backward", || unsafe { self.inner.attention_backward(dqkv, dout, qkv, cache, b, t, c, nh) })
    }
    unsafe fn gelu_forward(&self, out: E::Ptr, inp: E::Ptr, n: usize) {
        self.time("gelu_forward", || unsafe { self.inner.gelu_forward(out, inp, n) })
    }
    unsafe fn gelu_backward(&self, dinp: E::Ptr, inp: E::Ptr, dout: E::Ptr, n: usize) {
        self.time("gelu_backward", || unsafe { self.inner.gelu_backward(dinp, inp, dout, n) })
    }
    unsafe fn crossentropy(&self, losses: E::Ptr, logits: E::Ptr, targets: &[u32], dscale: Option<f32>, n: usize, v: usize, vp: usize) {
        self.time("crossentropy", || unsafe { self.inner.crossentropy(losses, logits, targets, dscale, n, v, vp) })
    }
    unsafe fn adamw(&self, p: E::Ptr, g: E::Ptr, m: E::Ptr, v: E::Ptr, len: usize, hp: &AdamHyper, step: u64) {
        self.time("adamw", || unsafe { self.inner.adamw(p, g, m, v, len, hp, step) })
    }
    unsafe fn lamb_moments(&self, p: E::Ptr, g: E::Ptr, m: E::Ptr, v: E::Ptr, len: usize, hp: &AdamHyper, step: u64) -> (f64, f64) {
        self.time("lamb_moments", || unsafe { self.inner.lamb_moments(p, g, m, v, len, hp, step) })
    }
    unsafe fn lamb_apply(&self, p: E::Ptr, m: E::Ptr, v: E::Ptr, len: usize, hp: &AdamHyper, step: u64, step_size: f32) {
        self.time("lamb_apply", || unsafe { self.inner.lamb_apply(p, m, v, len, hp, step, step_size) })
    }
}
