//! An engine wrapper that times every kernel call by name: `dtrain bench
//! kernels` and `dtrain bench train --profile` print where a training step
//! spends its time. Timing is wall-clock around each call, with the engine
//! synchronised before and after (a GPU runs calls asynchronously), so each
//! call is timed alone. Each call also counts its work — the bytes it must
//! move at least and its floating-point operations — for achieved GB/s and
//! TFLOP/s.

use super::{AdamHyper, ArenaKind, Engine, EngineError, WeightLayout};
use crate::allreduce::codec::{Codec, CodecError};
use crate::allreduce::projection::{Proj, Projector};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

/// What one op did over a profile: calls, seconds, bytes, FLOPs.
#[derive(Debug, Clone, Default)]
pub struct OpProfile {
    pub name: &'static str,
    pub calls: u64,
    pub seconds: f64,
    pub bytes: f64,
    pub flops: f64,
}

pub struct Profiled<E> {
    pub inner: E,
    times: Mutex<BTreeMap<&'static str, OpProfile>>,
}

const F: f64 = 4.0; // bytes per float

impl<E> Profiled<E> {
    pub fn new(inner: E) -> Self {
        Profiled { inner, times: Mutex::new(BTreeMap::new()) }
    }

    /// Each op's profile since the last take, slowest first.
    pub fn take(&self) -> Vec<OpProfile> {
        let mut times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<OpProfile> = std::mem::take(&mut *times).into_values().collect();
        v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        v
    }
}

impl<E: Engine> Profiled<E> {
    /// Bytes per activation (and parameter) element: 2 in a bf16 mode.
    fn act_bytes(&self) -> f64 {
        self.inner.elem_bytes(ArenaKind::Acts) as f64
    }

    fn time<R>(&self, name: &'static str, bytes: f64, flops: f64, f: impl FnOnce() -> R) -> R {
        self.inner.synchronize();
        let t0 = Instant::now();
        let r = f();
        self.inner.synchronize();
        let dt = t0.elapsed().as_secs_f64();
        let mut times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        let entry = times.entry(name).or_insert_with(|| OpProfile { name, ..OpProfile::default() });
        entry.calls += 1;
        entry.seconds += dt;
        entry.bytes += bytes;
        entry.flops += flops;
        r
    }
}

impl<E: Engine> Engine for Profiled<E> {
    type Arena = E::Arena;
    type Ptr = E::Ptr;

    fn name(&self) -> String {
        format!("{} (profiled)", self.inner.name())
    }
    fn synchronize(&self) {
        self.inner.synchronize()
    }
    fn alloc(&self, kind: ArenaKind, len: usize) -> Result<E::Arena, EngineError> {
        self.inner.alloc(kind, len)
    }
    fn elem_bytes(&self, kind: ArenaKind) -> usize {
        self.inner.elem_bytes(kind)
    }
    fn arena_len(&self, arena: &E::Arena) -> usize {
        self.inner.arena_len(arena)
    }
    fn at(&self, arena: &E::Arena, offset: usize) -> E::Ptr {
        self.inner.at(arena, offset)
    }
    unsafe fn write(&self, dst: E::Ptr, src: &[f32]) {
        self.time("write", F * src.len() as f64, 0.0, || unsafe { self.inner.write(dst, src) })
    }
    unsafe fn read(&self, src: E::Ptr, dst: &mut [f32]) {
        self.time("read", F * dst.len() as f64, 0.0, || unsafe { self.inner.read(src, dst) })
    }
    fn behind_bus(&self) -> bool {
        self.inner.behind_bus()
    }
    unsafe fn read_encoded(&self, codec: Codec, src: E::Ptr, n: usize, out: &mut [u8]) {
        self.time("read_encoded", out.len() as f64, 0.0, || unsafe { self.inner.read_encoded(codec, src, n, out) })
    }
    unsafe fn write_decoded(&self, codec: Codec, bytes: &[u8], n: usize, dst: E::Ptr) -> Result<(), CodecError> {
        self.time("write_decoded", bytes.len() as f64, 0.0, || unsafe { self.inner.write_decoded(codec, bytes, n, dst) })
    }
    unsafe fn fill(&self, dst: E::Ptr, len: usize, value: f32) {
        self.time("fill", F * len as f64, 0.0, || unsafe { self.inner.fill(dst, len, value) })
    }
    unsafe fn scale(&self, x: E::Ptr, len: usize, factor: f32) {
        self.time("scale", 2.0 * F * len as f64, len as f64, || unsafe { self.inner.scale(x, len, factor) })
    }
    unsafe fn sum_squares(&self, x: E::Ptr, len: usize) -> f64 {
        self.time("sum_squares", F * len as f64, 2.0 * len as f64, || unsafe { self.inner.sum_squares(x, len) })
    }
    unsafe fn project(&self, x: E::Ptr, len: usize, offset: usize, p: &Projector) -> (Proj, f64) {
        // One block in GROUP_BLOCKS is read (see `projection`).
        let touched = (len / crate::allreduce::projection::GROUP_BLOCKS) as f64;
        self.time("project", F * touched, 10.0 * touched, || unsafe { self.inner.project(x, len, offset, p) })
    }
    unsafe fn encoder_forward(&self, out: E::Ptr, tokens: &[u32], wte: E::Ptr, wpe: E::Ptr, b: usize, t: usize, c: usize) {
        self.time("encoder_forward", 3.0 * self.act_bytes() * (b * t * c) as f64, (b * t * c) as f64, || unsafe {
            self.inner.encoder_forward(out, tokens, wte, wpe, b, t, c)
        })
    }
    unsafe fn encoder_backward(&self, dwte: E::Ptr, dwpe: E::Ptr, dout: E::Ptr, tokens: &[u32], b: usize, t: usize, c: usize) {
        self.time("encoder_backward", 4.0 * self.act_bytes() * (b * t * c) as f64, 2.0 * (b * t * c) as f64, || unsafe {
            self.inner.encoder_backward(dwte, dwpe, dout, tokens, b, t, c)
        })
    }
    unsafe fn layernorm_forward(&self, out: E::Ptr, mean: E::Ptr, rstd: E::Ptr, inp: E::Ptr, w: E::Ptr, bias: E::Ptr, n: usize, c: usize) {
        self.time("layernorm_forward", 2.0 * self.act_bytes() * (n * c) as f64, 8.0 * (n * c) as f64, || unsafe {
            self.inner.layernorm_forward(out, mean, rstd, inp, w, bias, n, c)
        })
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
        self.time("layernorm_backward", 4.0 * self.act_bytes() * (n * c) as f64, 12.0 * (n * c) as f64, || unsafe {
            self.inner.layernorm_backward(dinp, dw, dbias, dout, inp, w, mean, rstd, n, c)
        })
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
        self.time(name, self.act_bytes() * (n * c + c * oc + n * oc) as f64, 2.0 * (n * c * oc) as f64, || unsafe {
            self.inner.matmul_forward(out, inp, w, layout, bias, residual, n, c, oc)
        })
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
        self.time(name, self.act_bytes() * (2 * n * c + 2 * c * oc + n * oc) as f64, 4.0 * (n * c * oc) as f64, || unsafe {
            self.inner.matmul_backward(dinp, dw, dbias, dout, inp, w, layout, n, c, oc)
        })
    }
    fn attention_cache_len(&self, b: usize, t: usize, nh: usize) -> usize {
        self.inner.attention_cache_len(b, t, nh)
    }
    unsafe fn attention_forward(&self, out: E::Ptr, cache: E::Ptr, qkv: E::Ptr, b: usize, t: usize, c: usize, nh: usize) {
        self.time("attention_forward", self.act_bytes() * (4 * b * t * c) as f64, 2.0 * (b * t * t * c) as f64, || unsafe {
            self.inner.attention_forward(out, cache, qkv, b, t, c, nh)
        })
    }
    unsafe fn attention_backward(&self, dqkv: E::Ptr, dout: E::Ptr, qkv: E::Ptr, cache: E::Ptr, b: usize, t: usize, c: usize, nh: usize) {
        self.time("attention_backward", self.act_bytes() * (8 * b * t * c) as f64, 4.0 * (b * t * t * c) as f64, || unsafe {
            self.inner.attention_backward(dqkv, dout, qkv, cache, b, t, c, nh)
        })
    }
    unsafe fn gelu_forward(&self, out: E::Ptr, inp: E::Ptr, n: usize) {
        self.time("gelu_forward", 2.0 * self.act_bytes() * n as f64, 10.0 * n as f64, || unsafe { self.inner.gelu_forward(out, inp, n) })
    }
    unsafe fn gelu_backward(&self, dinp: E::Ptr, inp: E::Ptr, dout: E::Ptr, n: usize) {
        self.time("gelu_backward", 3.0 * self.act_bytes() * n as f64, 16.0 * n as f64, || unsafe { self.inner.gelu_backward(dinp, inp, dout, n) })
    }
    unsafe fn crossentropy(&self, losses: E::Ptr, logits: E::Ptr, targets: &[u32], dscale: Option<f32>, n: usize, v: usize, vp: usize) {
        self.time("crossentropy", self.act_bytes() * (if dscale.is_some() { 2 } else { 1 } * n * vp) as f64, 5.0 * (n * v) as f64, || unsafe {
            self.inner.crossentropy(losses, logits, targets, dscale, n, v, vp)
        })
    }
    unsafe fn adamw(&self, p: E::Ptr, g: E::Ptr, m: E::Ptr, v: E::Ptr, len: usize, hp: &AdamHyper, step: u64) {
        self.time("adamw", 7.0 * F * len as f64, 12.0 * len as f64, || unsafe { self.inner.adamw(p, g, m, v, len, hp, step) })
    }
    unsafe fn lamb_moments(&self, p: E::Ptr, g: E::Ptr, m: E::Ptr, v: E::Ptr, len: usize, hp: &AdamHyper, step: u64) -> (f64, f64) {
        self.time("lamb_moments", 6.0 * F * len as f64, 14.0 * len as f64, || unsafe { self.inner.lamb_moments(p, g, m, v, len, hp, step) })
    }
    unsafe fn lamb_apply(&self, p: E::Ptr, m: E::Ptr, v: E::Ptr, len: usize, hp: &AdamHyper, step: u64, step_size: f32) {
        self.time("lamb_apply", 4.0 * F * len as f64, 8.0 * len as f64, || unsafe { self.inner.lamb_apply(p, m, v, len, hp, step, step_size) })
    }
}
