//! The CUDA engine: the hand-written kernels of `kernels/*.cu` behind the
//! kernel-set operations, generic over the [`Device`] that runs them — a
//! GPU, or the CPU emulation used by the tests ([`emu::Emu`]).
//!
//! Each method here is the host half of one op: launch shapes, host-side
//! preparation (such as sorting positions by token for a deterministic
//! embedding gradient), scratch memory. The device half is the kernel of the
//! same name in the `.cu` file the method names; the CPU twin is in
//! `src/engine/cpu/` under the same file name.
//!
//! The fp32 kernel set is complete and runs the model's whole call list;
//! the GPU device (cudarc: driver, NVRTC, cuBLAS) and the bf16 mode are
//! issue 6's next steps.

pub mod check;
pub mod device;
pub mod emu;
pub mod gpu;

use super::{AdamHyper, Engine, EngineError, WeightLayout};
use crate::allreduce::codec::{Codec, CodecError};
use device::{Args, DevPtr, Device, DeviceError, Gemm, GemmMath, Mat, Shape};
use std::sync::Mutex;

/// Where a command runs: `--device auto|cpu|cuda[:N]|emulated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The first GPU if a driver and a GPU are found, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
    /// The CUDA kernels on the CPU emulation (slow; for checks and tests).
    Emulated,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            "emulated" => Ok(DeviceChoice::Emulated),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(format!("{s:?}: expected auto, cpu, cuda, cuda:N or emulated")),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceChoice::Emulated => write!(f, "emulated"),
        }
    }
}

impl DeviceChoice {
    /// `Auto` made concrete, probing for a driver and a GPU without panicking;
    /// the reason when it falls back to the CPU.
    pub fn resolve(self) -> (DeviceChoice, Option<String>) {
        match self {
            DeviceChoice::Auto => match gpu::count() {
                Ok(n) if n > 0 => (DeviceChoice::Cuda(0), None),
                Ok(_) => (DeviceChoice::Cpu, Some("the CUDA driver reports no GPU".into())),
                Err(why) => (DeviceChoice::Cpu, Some(why)),
            },
            other => (other, None),
        }
    }
}

/// Threads per block of element-wise kernels.
const ELEM_THREADS: u32 = 256;
/// Blocks of grid-stride element-wise kernels at most (enough to fill any GPU).
const ELEM_MAX_BLOCKS: usize = 8192;
/// Rows per chunk of layernorm's parameter-gradient sums (kernels/layernorm.cu)
/// and of the bias gradient's column sums (kernels/matmul.cu).
const LN_ROW_CHUNK: usize = 64;
const MM_ROW_CHUNK: usize = 64;
/// Floats summed per block of `sum_squares_partial` (the CPU's ELEM_CHUNK).
const SQ_PER_BLOCK: usize = 1 << 14;
/// Rows (warps) per block, rows per shared-memory tile, and the largest
/// head of kernels/attention.cu.
const ATT_ROWS: usize = 8;
const ATT_TILE: usize = 32;
const ATT_HS_MAX: usize = 128;

/// A zeroed device buffer of `len` floats.
pub struct CudaArena<D: Device> {
    buf: D::Buf,
    len: usize,
}

pub struct CudaEngine<D: Device> {
    dev: D,
    /// The arithmetic of the matrix products (fp32 storage either way).
    math: GemmMath,
    /// Grown on demand; ops that need temporary device memory take it whole.
    scratch: Mutex<Option<(D::Buf, usize)>>,
}

fn check(r: Result<(), DeviceError>) {
    // A failed launch means a broken device or a bug in a launch shape;
    // neither can be recovered from in the middle of a step.
    if let Err(e) = r {
        panic!("{e}");
    }
}

fn elementwise(n: usize) -> Shape {
    Shape::linear(n.div_ceil(ELEM_THREADS as usize).min(ELEM_MAX_BLOCKS), ELEM_THREADS)
}

fn bytes_of<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: plain integers and floats, viewed as their bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

fn bias_corrections(hp: &AdamHyper, step: u64) -> (f32, f32) {
    let t = step as i32;
    ((1.0 - (hp.beta1 as f64).powi(t)) as f32, (1.0 - (hp.beta2 as f64).powi(t)) as f32)
}

impl<D: Device> CudaEngine<D> {
    pub fn new(dev: D) -> CudaEngine<D> {
        CudaEngine { dev, math: GemmMath::Fp32, scratch: Mutex::new(None) }
    }

    pub fn gemm_math(&self) -> GemmMath {
        self.math
    }

    /// Matrix products in `math` (tf32/bf16: tensor cores on a GPU).
    pub fn with_gemm_math(mut self, math: GemmMath) -> Self {
        self.math = math;
        self
    }

    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Runs `f` with at least `bytes` of device scratch memory.
    fn with_scratch<R>(&self, bytes: usize, f: impl FnOnce(DevPtr) -> R) -> R {
        let mut guard = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|(_, have)| *have < bytes) {
            *guard = None; // free the old one first
            let buf = self.dev.alloc(bytes.next_power_of_two()).unwrap_or_else(|e| panic!("scratch memory: {e}"));
            *guard = Some((buf, bytes.next_power_of_two()));
        }
        let addr = self.dev.addr(&guard.as_ref().expect("just allocated").0);
        f(addr)
    }

    /// Encodes `n` floats at `src` with `codec` on the device
    /// (kernels/codec.cu); only the encoded bytes are copied to `out`
    /// (`codec.encoded_len(n)` bytes), bit-identical to `codec.encode`.
    pub fn encode(&self, codec: Codec, src: DevPtr, n: usize, out: &mut [u8]) {
        assert_eq!(out.len(), codec.encoded_len(n), "output sized by encoded_len");
        if n == 0 {
            return;
        }
        let kernel = match codec {
            Codec::F32 => {
                unsafe { self.dev.copy_out(src, out) };
                return;
            }
            Codec::F16 => "codec_encode_f16",
            Codec::Bf16 => "codec_encode_bf16",
            Codec::Int8 { .. } => "codec_encode_int8",
        };
        self.with_scratch(out.len(), |enc| {
            let shape = match codec {
                Codec::Int8 { block } => Shape::linear(n.div_ceil(block.max(1)).div_ceil(8), 256),
                _ => elementwise(n),
            };
            let mut args = Args::new().ptr(enc).ptr(src).len(n);
            if let Codec::Int8 { block } = codec {
                args = args.dim(block.max(1));
            }
            check(unsafe { self.dev.launch(kernel, shape, args) });
            unsafe { self.dev.copy_out(enc, out) };
        })
    }

    /// Checks `bytes` (from a peer: untrusted) as `codec.decode` does, then
    /// copies them to the device and decodes them into the `n` floats at
    /// `dst`; nothing is written when the check fails.
    pub fn decode(&self, codec: Codec, bytes: &[u8], n: usize, dst: DevPtr) -> Result<(), CodecError> {
        codec.validate(bytes, n)?;
        if n == 0 {
            return Ok(());
        }
        let kernel = match codec {
            Codec::F32 => {
                unsafe { self.dev.copy_in(dst, bytes) };
                return Ok(());
            }
            Codec::F16 => "codec_decode_f16",
            Codec::Bf16 => "codec_decode_bf16",
            Codec::Int8 { .. } => "codec_decode_int8",
        };
        self.with_scratch(bytes.len(), |enc| {
            unsafe { self.dev.copy_in(enc, bytes) };
            let mut args = Args::new().ptr(dst).ptr(enc).len(n);
            if let Codec::Int8 { block } = codec {
                args = args.dim(block.max(1));
            }
            check(unsafe { self.dev.launch(kernel, elementwise(n), args) });
        });
        Ok(())
    }

    fn attention_shape(t: usize, b: usize, c: usize, nh: usize, smem_floats: usize) -> Shape {
        let hs = c / nh;
        assert!(hs <= ATT_HS_MAX && hs * nh == c, "the CUDA attention kernels take heads of at most {ATT_HS_MAX} (this model: {c}/{nh})");
        Shape { smem: (smem_floats * 4) as u32, ..Shape::grid2(t.div_ceil(ATT_ROWS), b * nh, 32 * ATT_ROWS as u32) }
    }
}

impl<D: Device> Engine for CudaEngine<D> {
    type Arena = CudaArena<D>;
    type Ptr = DevPtr;

    fn name(&self) -> String {
        match self.math {
            GemmMath::Fp32 => format!("cuda: {}", self.dev.name()),
            m => format!("cuda: {} ({m} GEMMs)", self.dev.name()),
        }
    }

    fn synchronize(&self) {
        check(self.dev.synchronize());
    }

    fn alloc(&self, len: usize) -> Result<CudaArena<D>, EngineError> {
        let bytes = len.checked_mul(4).ok_or(EngineError::Alloc(len))?;
        Ok(CudaArena { buf: self.dev.alloc(bytes).map_err(|_| EngineError::Alloc(len))?, len })
    }

    fn arena_len(&self, a: &CudaArena<D>) -> usize {
        a.len
    }

    fn at(&self, a: &CudaArena<D>, offset: usize) -> DevPtr {
        assert!(offset <= a.len, "offset {offset} past an arena of {}", a.len);
        self.dev.addr(&a.buf) + 4 * offset as u64
    }

    unsafe fn write(&self, dst: DevPtr, src: &[f32]) {
        unsafe { self.dev.copy_in(dst, bytes_of(src)) }
    }

    unsafe fn read(&self, src: DevPtr, dst: &mut [f32]) {
        let bytes = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), dst.len() * 4) };
        unsafe { self.dev.copy_out(src, bytes) }
    }

    /// kernels/tensor.cu
    unsafe fn fill(&self, dst: DevPtr, len: usize, value: f32) {
        check(unsafe { self.dev.launch("fill", elementwise(len), Args::new().ptr(dst).len(len).f32(value)) });
    }

    /// kernels/tensor.cu
    unsafe fn scale(&self, x: DevPtr, len: usize, factor: f32) {
        check(unsafe { self.dev.launch("scale", elementwise(len), Args::new().ptr(x).len(len).f32(factor)) });
    }

    /// kernels/tensor.cu: per-block partials on the device, summed here in block order.
    unsafe fn sum_squares(&self, x: DevPtr, len: usize) -> f64 {
        let blocks = len.div_ceil(SQ_PER_BLOCK);
        if blocks == 0 {
            return 0.0;
        }
        self.with_scratch(blocks * 8, |partial| {
            let args = Args::new().ptr(partial).ptr(x).len(len).len(SQ_PER_BLOCK);
            check(unsafe { self.dev.launch("sum_squares_partial", Shape::linear(blocks, 256), args) });
            let mut parts = vec![0f64; blocks];
            let bytes = unsafe { std::slice::from_raw_parts_mut(parts.as_mut_ptr().cast::<u8>(), blocks * 8) };
            unsafe { self.dev.copy_out(partial, bytes) };
            parts.iter().sum()
        })
    }

    /// kernels/encoder.cu
    unsafe fn encoder_forward(&self, out: DevPtr, tokens: &[u32], wte: DevPtr, wpe: DevPtr, b: usize, t: usize, c: usize) {
        let n = b * t * c;
        self.with_scratch(tokens.len() * 4, |tok| {
            unsafe { self.dev.copy_in(tok, bytes_of(tokens)) };
            let args = Args::new().ptr(out).ptr(tok).ptr(wte).ptr(wpe).dim(b).dim(t).dim(c);
            check(unsafe { self.dev.launch("encoder_forward", Shape::linear(n.div_ceil(256), 256), args) });
        })
    }

    /// kernels/encoder.cu: positions sorted by token here (stable), then one
    /// block row per distinct token.
    unsafe fn encoder_backward(&self, dwte: DevPtr, dwpe: DevPtr, dout: DevPtr, tokens: &[u32], b: usize, t: usize, c: usize) {
        let args = Args::new().ptr(dwpe).ptr(dout).dim(b).dim(t).dim(c);
        check(unsafe { self.dev.launch("encoder_backward_wpe", Shape::grid2(c.div_ceil(256), t, 256), args) });
        let mut order: Vec<u32> = (0..tokens.len() as u32).collect();
        order.sort_by_key(|&p| tokens[p as usize]);
        let mut starts: Vec<u32> = Vec::new();
        for (k, &p) in order.iter().enumerate() {
            if k == 0 || tokens[p as usize] != tokens[order[k - 1] as usize] {
                starts.push(k as u32);
            }
        }
        let runs = starts.len();
        starts.push(order.len() as u32);
        let n = tokens.len();
        self.with_scratch(4 * (2 * n + runs + 1), |s| {
            let (tok, ord, st) = (s, s + 4 * n as u64, s + 8 * n as u64);
            unsafe {
                self.dev.copy_in(tok, bytes_of(tokens));
                self.dev.copy_in(ord, bytes_of(&order));
                self.dev.copy_in(st, bytes_of(&starts));
            }
            let args = Args::new().ptr(dwte).ptr(dout).ptr(tok).ptr(ord).ptr(st).dim(c);
            check(unsafe { self.dev.launch("encoder_backward_wte", Shape::grid2(c.div_ceil(256), runs, 256), args) });
        })
    }

    /// kernels/layernorm.cu: one warp per row, 8 rows per block.
    unsafe fn layernorm_forward(&self, out: DevPtr, mean: DevPtr, rstd: DevPtr, inp: DevPtr, w: DevPtr, bias: DevPtr, n: usize, c: usize) {
        let args = Args::new().ptr(out).ptr(mean).ptr(rstd).ptr(inp).ptr(w).ptr(bias).dim(n).dim(c);
        check(unsafe { self.dev.launch("layernorm_forward", Shape::linear(n.div_ceil(8), 256), args) });
    }

    /// kernels/layernorm.cu: the input gradient per row, then the parameter
    /// gradients as chunk partials summed in chunk order.
    unsafe fn layernorm_backward(
        &self,
        dinp: DevPtr,
        dw: DevPtr,
        dbias: DevPtr,
        dout: DevPtr,
        inp: DevPtr,
        w: DevPtr,
        mean: DevPtr,
        rstd: DevPtr,
        n: usize,
        c: usize,
    ) {
        let args = Args::new().ptr(dinp).ptr(dout).ptr(inp).ptr(w).ptr(mean).ptr(rstd).dim(n).dim(c);
        check(unsafe { self.dev.launch("layernorm_backward_input", Shape::linear(n.div_ceil(8), 256), args) });
        let chunks = n.div_ceil(LN_ROW_CHUNK);
        self.with_scratch(chunks * 2 * c * 4, |partial| {
            let args = Args::new().ptr(partial).ptr(dout).ptr(inp).ptr(mean).ptr(rstd).dim(n).dim(c);
            check(unsafe { self.dev.launch("layernorm_backward_params_partial", Shape::grid2(c.div_ceil(256), chunks, 256), args) });
            let args = Args::new().ptr(dw).ptr(dbias).ptr(partial).dim(chunks).dim(c);
            check(unsafe { self.dev.launch("layernorm_backward_params_sum", Shape::linear(c.div_ceil(256), 256), args) });
        })
    }

    /// kernels/gelu.cu; `out` may alias `inp`.
    unsafe fn gelu_forward(&self, out: DevPtr, inp: DevPtr, n: usize) {
        check(unsafe { self.dev.launch("gelu_forward", elementwise(n), Args::new().ptr(out).ptr(inp).len(n)) });
    }

    /// kernels/gelu.cu; `dinp` may alias `dout`.
    unsafe fn gelu_backward(&self, dinp: DevPtr, inp: DevPtr, dout: DevPtr, n: usize) {
        check(unsafe { self.dev.launch("gelu_backward", elementwise(n), Args::new().ptr(dinp).ptr(inp).ptr(dout).len(n)) });
    }

    /// kernels/classifier.cu: one block of 1024 threads per row.
    unsafe fn crossentropy(&self, losses: DevPtr, logits: DevPtr, targets: &[u32], dscale: Option<f32>, n: usize, v: usize, vp: usize) {
        self.with_scratch(n * 4, |tgt| {
            unsafe { self.dev.copy_in(tgt, bytes_of(&targets[..n])) };
            let args = Args::new().ptr(losses).ptr(logits).ptr(tgt).f32(dscale.unwrap_or(0.0)).i32(dscale.is_some() as i32).dim(v).dim(vp);
            check(unsafe { self.dev.launch("crossentropy", Shape::linear(n, 1024), args) });
        })
    }

    /// One log-sum-exp per (batch, head, row), like the CPU engine.
    fn attention_cache_len(&self, b: usize, t: usize, nh: usize) -> usize {
        b * nh * t
    }

    /// kernels/attention.cu: one warp per query row, tiles of keys in shared memory.
    unsafe fn attention_forward(&self, out: DevPtr, cache: DevPtr, qkv: DevPtr, b: usize, t: usize, c: usize, nh: usize) {
        let hs = c / nh;
        let shape = Self::attention_shape(t, b, c, nh, 2 * ATT_TILE * (hs + 1) + ATT_ROWS * hs + ATT_ROWS * ATT_TILE);
        let args = Args::new().ptr(out).ptr(cache).ptr(qkv).dim(b).dim(t).dim(c).dim(nh);
        check(unsafe { self.dev.launch("attention_forward", shape, args) });
    }

    /// kernels/attention.cu: dQ (and each row's Σ P·dP, kept in scratch)
    /// per query row, then dK and dV per key row.
    unsafe fn attention_backward(&self, dqkv: DevPtr, dout: DevPtr, qkv: DevPtr, cache: DevPtr, b: usize, t: usize, c: usize, nh: usize) {
        let hs = c / nh;
        self.with_scratch(b * nh * t * 4, |dsum| {
            let shape = Self::attention_shape(t, b, c, nh, 2 * ATT_TILE * (hs + 1) + 2 * ATT_ROWS * hs + ATT_ROWS * ATT_TILE);
            let args = Args::new().ptr(dqkv).ptr(dsum).ptr(dout).ptr(qkv).ptr(cache).dim(b).dim(t).dim(c).dim(nh);
            check(unsafe { self.dev.launch("attention_backward_query", shape, args) });
            let shape = Self::attention_shape(t, b, c, nh, 2 * ATT_TILE * (hs + 1) + 2 * ATT_TILE + 2 * ATT_ROWS * hs + 2 * ATT_ROWS * ATT_TILE);
            let args = Args::new().ptr(dqkv).ptr(dout).ptr(qkv).ptr(cache).ptr(dsum).dim(b).dim(t).dim(c).dim(nh);
            check(unsafe { self.dev.launch("attention_backward_key", shape, args) });
        })
    }

    /// kernels/optim.cu
    unsafe fn adamw(&self, p: DevPtr, g: DevPtr, m: DevPtr, v: DevPtr, len: usize, hp: &AdamHyper, step: u64) {
        let (bc1, bc2) = bias_corrections(hp, step);
        let args = Args::new()
            .ptr(p)
            .ptr(g)
            .ptr(m)
            .ptr(v)
            .len(len)
            .f32(hp.beta1)
            .f32(hp.beta2)
            .f32(hp.eps)
            .f32(1.0 - hp.lr * hp.weight_decay)
            .f32(hp.grad_scale)
            .f32(hp.lr / bc1)
            .f32(bc2.sqrt());
        check(unsafe { self.dev.launch("adamw", elementwise(len), args) });
    }

    /// kernels/matmul.cu pre-fills bias and residual; the product
    /// accumulates onto them (the CPU engine's order).
    unsafe fn matmul_forward(
        &self,
        out: DevPtr,
        inp: DevPtr,
        w: DevPtr,
        layout: WeightLayout,
        bias: Option<DevPtr>,
        residual: Option<DevPtr>,
        n: usize,
        c: usize,
        oc: usize,
    ) {
        let prefill = bias.is_some() || residual.is_some();
        if prefill {
            let args = Args::new()
                .ptr(out)
                .ptr(bias.unwrap_or(0))
                .ptr(residual.unwrap_or(0))
                .len(n)
                .dim(oc)
                .i32(bias.is_some() as i32)
                .i32(residual.is_some() as i32);
            check(unsafe { self.dev.launch("matmul_prefill", elementwise(n * oc), args) });
        }
        let w = match layout {
            WeightLayout::InOut => Mat { ptr: w, ld: oc, trans: false },
            WeightLayout::OutIn => Mat { ptr: w, ld: c, trans: true },
        };
        let g = Gemm { m: n, n: oc, k: c, dst: out, ldd: oc, a: Mat { ptr: inp, ld: c, trans: false }, b: w, accumulate: prefill, math: self.math };
        check(unsafe { self.dev.gemm(&g) });
    }

    /// Two products (dinp =, dw +=) and, with a bias, kernels/matmul.cu's
    /// column sums.
    unsafe fn matmul_backward(
        &self,
        dinp: DevPtr,
        dw: DevPtr,
        dbias: Option<DevPtr>,
        dout: DevPtr,
        inp: DevPtr,
        w: DevPtr,
        layout: WeightLayout,
        n: usize,
        c: usize,
        oc: usize,
    ) {
        let dout_m = Mat { ptr: dout, ld: oc, trans: false };
        let wt = match layout {
            WeightLayout::InOut => Mat { ptr: w, ld: oc, trans: true },
            WeightLayout::OutIn => Mat { ptr: w, ld: c, trans: false },
        };
        check(unsafe { self.dev.gemm(&Gemm { m: n, n: c, k: oc, dst: dinp, ldd: c, a: dout_m, b: wt, accumulate: false, math: self.math }) });
        let dw_gemm = match layout {
            WeightLayout::InOut => {
                Gemm { m: c, n: oc, k: n, dst: dw, ldd: oc, a: Mat { ptr: inp, ld: c, trans: true }, b: dout_m, accumulate: true, math: self.math }
            }
            WeightLayout::OutIn => Gemm {
                m: oc,
                n: c,
                k: n,
                dst: dw,
                ldd: c,
                a: Mat { ptr: dout, ld: oc, trans: true },
                b: Mat { ptr: inp, ld: c, trans: false },
                accumulate: true,
                math: self.math,
            },
        };
        check(unsafe { self.dev.gemm(&dw_gemm) });
        if let Some(db) = dbias {
            let chunks = n.div_ceil(MM_ROW_CHUNK);
            self.with_scratch(chunks * oc * 4, |partial| {
                let args = Args::new().ptr(partial).ptr(dout).dim(n).dim(oc);
                check(unsafe { self.dev.launch("column_sum_partial", Shape::grid2(oc.div_ceil(256), chunks, 256), args) });
                let args = Args::new().ptr(db).ptr(partial).dim(chunks).dim(oc);
                check(unsafe { self.dev.launch("column_sum_add", Shape::linear(oc.div_ceil(256), 256), args) });
            })
        }
    }

    /// kernels/optim.cu: moments and per-block partial norms, summed here in block order.
    unsafe fn lamb_moments(&self, p: DevPtr, g: DevPtr, m: DevPtr, v: DevPtr, len: usize, hp: &AdamHyper, step: u64) -> (f64, f64) {
        let blocks = len.div_ceil(SQ_PER_BLOCK);
        if blocks == 0 {
            return (0.0, 0.0);
        }
        let (bc1, bc2) = bias_corrections(hp, step);
        self.with_scratch(blocks * 16, |partial| {
            let args = Args::new()
                .ptr(partial)
                .ptr(p)
                .ptr(g)
                .ptr(m)
                .ptr(v)
                .len(len)
                .len(SQ_PER_BLOCK)
                .f32(hp.beta1)
                .f32(hp.beta2)
                .f32(hp.eps)
                .f32(hp.weight_decay)
                .f32(hp.grad_scale)
                .f32(bc1)
                .f32(bc2);
            check(unsafe { self.dev.launch("lamb_moments", Shape::linear(blocks, 256), args) });
            let mut parts = vec![0f64; 2 * blocks];
            let bytes = unsafe { std::slice::from_raw_parts_mut(parts.as_mut_ptr().cast::<u8>(), blocks * 16) };
            unsafe { self.dev.copy_out(partial, bytes) };
            parts.chunks(2).fold((0.0, 0.0), |(w, u), x| (w + x[0], u + x[1]))
        })
    }

    /// kernels/optim.cu
    unsafe fn lamb_apply(&self, p: DevPtr, m: DevPtr, v: DevPtr, len: usize, hp: &AdamHyper, step: u64, step_size: f32) {
        let (bc1, bc2) = bias_corrections(hp, step);
        let args = Args::new().ptr(p).ptr(m).ptr(v).len(len).f32(hp.eps).f32(hp.weight_decay).f32(bc1).f32(bc2).f32(step_size);
        check(unsafe { self.dev.launch("lamb_apply", elementwise(len), args) });
    }
}
