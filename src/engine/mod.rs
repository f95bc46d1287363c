//! The kernel-set trait: every numeric operation the model and the optimizer
//! need, written against raw views into engine-owned arenas.
//!
//! The model ([`crate::model::Gpt`]) owns four arenas (parameters, gradients,
//! activations, activation gradients) and passes *views* into them — an
//! engine pointer plus the dimensions of the op — exactly the way llm.c's
//! `gpt2_forward` hands `float*` into its big buffers. That keeps the forward
//! and backward call lists identical for every engine: the CPU set here, the
//! CUDA set of `engine::cuda` later.
//!
//! Kernel methods are `unsafe`: the caller guarantees that each view lies
//! inside a live arena of this engine and that an output view does not alias
//! any other view of the same call (in-place use is documented per method).
//!
//! Accumulation conventions, chosen so the call list needs no zeroing of
//! activation gradients: parameter gradients are always `+=` (so
//! micro-batches accumulate), activation gradients are written (`=`), except
//! the residual-stream gradient that layernorm backward adds into.

// The safety contract of every kernel method is the one in this module's
// documentation (views inside live arenas, outputs not aliased).
#![allow(clippy::missing_safety_doc)]

pub mod cpu;
pub mod cuda;
pub mod profiled;

use crate::allreduce::codec::{Codec, CodecError};
use crate::allreduce::projection::{Proj, Projector};

/// How a weight matrix of a linear layer is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `(in, out)`: GPT-2's Conv1D layout (`c_attn`, `c_proj`, `c_fc`).
    InOut,
    /// `(out, in)`: the token embedding used as the output head.
    OutIn,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot allocate {0} floats")]
    Alloc(usize),
}

/// What an arena holds. An engine may store each kind in its own precision
/// — the CUDA engine's bf16 mode keeps parameters and activations in bf16
/// and the rest in fp32 — while values always cross to and from the host
/// as `f32`. The CPU engine stores everything in fp32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArenaKind {
    /// Model parameters (optimizers update an fp32 master copy of them when
    /// they are stored in lower precision).
    Params,
    /// Parameter gradients: the flat fp32 vector the all-reduce averages.
    Grads,
    /// Activations and activation gradients.
    Acts,
    /// Per-row statistics kept for backward (layernorm means and inverse
    /// deviations, the attention cache) and losses: always fp32.
    Stats,
    /// Optimizer state (moments): always fp32.
    State,
}

/// A kernel set. `Arena` owns a flat zero-initialised buffer of one
/// [`ArenaKind`]; `Ptr` is the address of an element inside one (a raw
/// pointer on the CPU, a typed device address on a GPU).
pub trait Engine: Send + Sync {
    type Arena: Send;
    type Ptr: Copy + Send + Sync;

    fn name(&self) -> String;

    /// Waits until every call so far has finished (a GPU runs them
    /// asynchronously); the CPU engine's calls are synchronous already.
    fn synchronize(&self) {}

    fn alloc(&self, kind: ArenaKind, len: usize) -> Result<Self::Arena, EngineError>;
    /// Bytes per element of arenas of `kind` (what the profiler counts).
    fn elem_bytes(&self, _kind: ArenaKind) -> usize {
        4
    }
    fn arena_len(&self, arena: &Self::Arena) -> usize;
    /// Address of element `offset` (may equal the arena's length).
    fn at(&self, arena: &Self::Arena, offset: usize) -> Self::Ptr;

    /// Copies host data into `len = src.len()` elements at `dst` (rounded to
    /// the arena's precision; parameters' master copy gets them exactly).
    unsafe fn write(&self, dst: Self::Ptr, src: &[f32]);
    /// Copies `dst.len()` elements at `src` to the host (parameters from
    /// their master copy).
    unsafe fn read(&self, src: Self::Ptr, dst: &mut [f32]);

    /// The arenas live across a bus from the host (a GPU's memory): moving
    /// gradients to and from the all-reduce in encoded form pays.
    fn behind_bus(&self) -> bool {
        false
    }
    /// `n` fp32 values at `src` (gradients) to the host encoded with
    /// `codec` into `out` (`codec.encoded_len(n)` bytes), bit-identical to
    /// `codec.encode`; on a GPU only the encoded bytes cross the bus.
    unsafe fn read_encoded(&self, codec: Codec, src: Self::Ptr, n: usize, out: &mut [u8]) {
        let mut host = vec![0f32; n];
        unsafe { self.read(src, &mut host) };
        codec.encode(&host, out);
    }
    /// Checks `bytes` (possibly from a peer) as `codec.decode` does and
    /// decodes them into the `n` fp32 values at `dst`; writes nothing when
    /// the check fails.
    unsafe fn write_decoded(&self, codec: Codec, bytes: &[u8], n: usize, dst: Self::Ptr) -> Result<(), CodecError> {
        let mut host = vec![0f32; n];
        codec.decode(bytes, &mut host)?;
        unsafe { self.write(dst, &host) };
        Ok(())
    }
    unsafe fn fill(&self, dst: Self::Ptr, len: usize, value: f32);
    unsafe fn scale(&self, x: Self::Ptr, len: usize, factor: f32);
    /// Σ x², accumulated in f64 in a fixed order (deterministic).
    unsafe fn sum_squares(&self, x: Self::Ptr, len: usize) -> f64;
    /// The projections of `x` (element 0 being element `offset` of the
    /// vector) on `p`'s sampled sign vectors, and Σ x² over the sampled
    /// elements (`allreduce::projection`; engines agree to rounding).
    unsafe fn project(&self, x: Self::Ptr, len: usize, offset: usize, p: &Projector) -> (Proj, f64);

    /// `out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]`.
    unsafe fn encoder_forward(&self, out: Self::Ptr, tokens: &[u32], wte: Self::Ptr, wpe: Self::Ptr, b: usize, t: usize, c: usize);
    /// `dwte[tokens[b,t]] += dout[b,t]`, `dwpe[t] += dout[b,t]`, in a fixed order.
    unsafe fn encoder_backward(&self, dwte: Self::Ptr, dwpe: Self::Ptr, dout: Self::Ptr, tokens: &[u32], b: usize, t: usize, c: usize);

    /// Row-wise layernorm of `n` rows of width `c` (eps 1e-5); keeps mean and 1/std.
    unsafe fn layernorm_forward(
        &self,
        out: Self::Ptr,
        mean: Self::Ptr,
        rstd: Self::Ptr,
        inp: Self::Ptr,
        w: Self::Ptr,
        bias: Self::Ptr,
        n: usize,
        c: usize,
    );
    /// `dinp += …`, `dw += …`, `dbias += …`.
    unsafe fn layernorm_backward(
        &self,
        dinp: Self::Ptr,
        dw: Self::Ptr,
        dbias: Self::Ptr,
        dout: Self::Ptr,
        inp: Self::Ptr,
        w: Self::Ptr,
        mean: Self::Ptr,
        rstd: Self::Ptr,
        n: usize,
        c: usize,
    );

    /// `out(n,oc) = inp(n,c) · W + bias (+ residual(n,oc))`; `out` may not alias `residual`.
    unsafe fn matmul_forward(
        &self,
        out: Self::Ptr,
        inp: Self::Ptr,
        w: Self::Ptr,
        layout: WeightLayout,
        bias: Option<Self::Ptr>,
        residual: Option<Self::Ptr>,
        n: usize,
        c: usize,
        oc: usize,
    );
    /// `dinp = dout · Wᵀ`, `dw += inpᵀ · dout` (in `layout`), `dbias += Σ_rows dout`.
    unsafe fn matmul_backward(
        &self,
        dinp: Self::Ptr,
        dw: Self::Ptr,
        dbias: Option<Self::Ptr>,
        dout: Self::Ptr,
        inp: Self::Ptr,
        w: Self::Ptr,
        layout: WeightLayout,
        n: usize,
        c: usize,
        oc: usize,
    );

    /// Floats of per-layer state attention forward keeps for its backward
    /// (the CPU keeps the probabilities, a flash kernel only row statistics).
    fn attention_cache_len(&self, b: usize, t: usize, nh: usize) -> usize;
    /// Causal self-attention: `qkv(b,t,3c)` → `out(b,t,c)`, heads of size c/nh.
    unsafe fn attention_forward(&self, out: Self::Ptr, cache: Self::Ptr, qkv: Self::Ptr, b: usize, t: usize, c: usize, nh: usize);
    /// `dqkv = …` from `dout`.
    unsafe fn attention_backward(&self, dqkv: Self::Ptr, dout: Self::Ptr, qkv: Self::Ptr, cache: Self::Ptr, b: usize, t: usize, c: usize, nh: usize);
    /// Generation's attention: one new position's query `q(c)` over the
    /// `len` cached positions `kv(len, 2c)` (each its key, then its value;
    /// the new position's own last) → `out(c)`, heads of size c/nh.
    /// Default: on the host through `read`/`write` (the CPU engine's own
    /// memory; the CUDA engine has a kernel, kernels/decode.cu).
    unsafe fn attention_decode(&self, out: Self::Ptr, q: Self::Ptr, kv: Self::Ptr, len: usize, c: usize, nh: usize) {
        let (mut qh, mut kvh) = (vec![0f32; c], vec![0f32; 2 * c * len]);
        // SAFETY: the caller's views hold c and 2·c·len values.
        unsafe {
            self.read(q, &mut qh);
            self.read(kv, &mut kvh);
            self.write(out, &cpu::attention::attention_decode(&qh, &kvh, c, nh));
        }
    }
    /// `dst[..len] = src[..len]` (activation arenas). Default: through the
    /// host.
    unsafe fn copy(&self, dst: Self::Ptr, src: Self::Ptr, len: usize) {
        let mut buf = vec![0f32; len];
        // SAFETY: the caller's views hold `len` values.
        unsafe {
            self.read(src, &mut buf);
            self.write(dst, &buf);
        }
    }

    /// tanh-approximated GELU; `out` may alias `inp`.
    unsafe fn gelu_forward(&self, out: Self::Ptr, inp: Self::Ptr, n: usize);
    /// `dinp = dout · gelu'(inp)`; `dinp` may alias `dout`.
    unsafe fn gelu_backward(&self, dinp: Self::Ptr, inp: Self::Ptr, dout: Self::Ptr, n: usize);

    /// Fused softmax + cross-entropy over the first `v` of `vp` columns of `n`
    /// rows of logits: writes each row's loss to `losses`; with `dscale`,
    /// overwrites the logits with `dscale · (softmax − onehot)` (0 in the
    /// padded columns), so probabilities are never stored.
    unsafe fn crossentropy(&self, losses: Self::Ptr, logits: Self::Ptr, targets: &[u32], dscale: Option<f32>, n: usize, v: usize, vp: usize);

    /// One AdamW step on a tensor (PyTorch's formula: decoupled decay, bias-corrected moments).
    unsafe fn adamw(&self, p: Self::Ptr, g: Self::Ptr, m: Self::Ptr, v: Self::Ptr, len: usize, hp: &AdamHyper, step: u64);
    /// LAMB phase 1: update the moments and return (‖w‖², ‖u‖²) of the
    /// would-be Adam update `u = m̂/(√v̂+ε) + wd·w`.
    unsafe fn lamb_moments(&self, p: Self::Ptr, g: Self::Ptr, m: Self::Ptr, v: Self::Ptr, len: usize, hp: &AdamHyper, step: u64) -> (f64, f64);
    /// LAMB phase 2: `w -= step_size · u`.
    unsafe fn lamb_apply(&self, p: Self::Ptr, m: Self::Ptr, v: Self::Ptr, len: usize, hp: &AdamHyper, step: u64, step_size: f32);
}

/// Hyper-parameters of one Adam-family update of one tensor.
#[derive(Debug, Clone, Copy)]
pub struct AdamHyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Factor applied to the gradient as it is read: folds the division by
    /// the accumulated weight and the clipping into the update, saving two
    /// passes over the gradients.
    pub grad_scale: f32,
}

/// Calls `$f($a, engine)` on the engine a `--device` choice names (a
/// `DeviceChoice`; `Auto` probes for a GPU), in `$precision` (an
/// `Option<Precision>`: bf16 by default on a GPU, fp32 on the emulated
/// device; the CPU engine computes in fp32 only). `$f` is generic over the
/// engine, so this is a macro and not a function.
macro_rules! on_device {
    ($device:expr, $precision:expr, $f:ident, $a:expr) => {{
        use $crate::engine::cuda::{CudaEngine, DeviceChoice, Precision};
        match $device.resolve() {
            (DeviceChoice::Cuda(i), _) => {
                let gpu = CudaEngine::new($crate::engine::cuda::gpu::Gpu::open(i).map_err(anyhow::Error::msg)?)
                    .with_precision($precision.unwrap_or(Precision::Bf16));
                tracing::info!("engine: {}", gpu.name());
                $f($a, gpu)
            }
            (DeviceChoice::Emulated, _) => {
                $f($a, CudaEngine::new($crate::engine::cuda::emu::Emu).with_precision($precision.unwrap_or(Precision::Fp32)))
            }
            (_, why) => {
                anyhow::ensure!(
                    $precision != Some(Precision::Bf16),
                    "the CPU engine computes in fp32 only: --precision bf16 needs --device cuda or emulated"
                );
                if let Some(why) = why {
                    tracing::info!("engine: the CPU ({why})");
                }
                $f($a, $crate::engine::cpu::CpuEngine::new())
            }
        }
    }};
}
pub(crate) use on_device;
