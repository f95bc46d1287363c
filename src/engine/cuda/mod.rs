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
//! Two precisions ([`Precision`]): fp32 everywhere (the exact mode, checked
//! against the CPU engine), and bf16 mixed precision — parameters and
//! activations stored in bf16, statistics, parameter gradients and optimizer
//! state in fp32, with an fp32 master copy of the parameters that the
//! optimizer updates (writing the bf16 copy in the same pass). Each arena's
//! kind decides its dtype, and a view ([`View`]) carries it, so every op
//! checks that it got the storage it was written for.

pub mod check;
pub mod device;
pub mod emu;
pub mod gpu;
pub mod nccl;

use super::{AdamHyper, ArenaKind, Engine, EngineError, WeightLayout};
use crate::allreduce::codec::{Codec, CodecError};
use crate::allreduce::projection::{GROUP, K, Proj, Projector};
use device::{Args, DType, DevPtr, Device, DeviceError, Gemm, GemmMath, Mat, Shape};
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
/// Groups (`projection::GROUP` elements, one sampled block each) per CUDA
/// block of `project_partial`: one per thread.
const PROJECT_GROUPS: usize = 256;
/// Floats summed per block of `sum_squares_partial` (the CPU's ELEM_CHUNK).
const SQ_PER_BLOCK: usize = 1 << 14;
/// Rows (warps) per block, rows per shared-memory tile, and the largest
/// head of kernels/attention.cu.
const ATT_ROWS: usize = 8;
const ATT_TILE: usize = 32;
const ATT_HS_MAX: usize = 128;
/// Head sizes with a tensor-core forward kernel, and its warps per block.
const ATT_TC_HEADS: [usize; 3] = [16, 32, 64];
const ATT_TC_WARPS: usize = 4;

/// How parameters and activations are stored: `--precision fp32|bf16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in fp32: the exact mode, for checks against the CPU engine.
    #[default]
    Fp32,
    /// Parameters and activations in bf16 (with an fp32 master copy of the
    /// parameters), statistics, gradients and optimizer state in fp32.
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("{s:?}: expected fp32 or bf16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// How the CUDA engine computes: `--precision` and `--gemm-math`, shared
/// by the commands that train on it.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct CudaOptions {
    /// On the CUDA engine, how parameters and activations are stored: bf16
    /// (mixed precision, with fp32 master weights, gradients, optimizer
    /// state and statistics; the default on a GPU) or fp32 (the exact mode;
    /// the default of the emulated device). The CPU engine is fp32 only.
    #[arg(long, env = "DTRAIN_PRECISION")]
    pub precision: Option<Precision>,
    /// In fp32 precision, the arithmetic of the matrix products: fp32, tf32
    /// or bf16 (tensor cores on fp32 storage, fp32 accumulation).
    #[arg(long, default_value = "fp32")]
    pub gemm_math: GemmMath,
}

impl CudaOptions {
    /// The engine on `dev`, in `--precision` or else `default`.
    pub fn engine<D: Device>(&self, dev: D, default: Precision) -> CudaEngine<D> {
        CudaEngine::new(dev).with_precision(self.precision.unwrap_or(default)).with_gemm_math(self.gemm_math)
    }

    /// Refuses what the CPU engine cannot do rather than ignoring it.
    pub fn check_cpu(&self) -> Result<(), String> {
        match self.precision {
            Some(Precision::Bf16) => Err("the CPU engine computes in fp32 only: --precision bf16 needs --device cuda or emulated".into()),
            _ => Ok(()),
        }
    }
}

/// A zeroed device buffer of `len` elements of `dtype`; bf16 parameters
/// also have their fp32 master copy.
pub struct CudaArena<D: Device> {
    buf: D::Buf,
    len: usize,
    dtype: DType,
    master: Option<D::Buf>,
}

/// The engine's pointer: a device address with the dtype of its arena and,
/// for bf16 parameters, the address of the same element's fp32 master copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub addr: DevPtr,
    pub dtype: DType,
    /// 0 when there is no master copy.
    pub master: DevPtr,
}

impl View {
    /// The fp32 weights an optimizer updates, and the bf16 copy it must
    /// also write (0 when the view is fp32 itself).
    fn weights(self) -> (DevPtr, DevPtr) {
        match self.dtype {
            DType::F32 => (self.addr, 0),
            DType::Bf16 => {
                assert_ne!(self.master, 0, "an optimizer step on bf16 values without an fp32 master copy");
                (self.master, self.addr)
            }
        }
    }
}

fn fp32(v: View) -> DevPtr {
    assert_eq!(v.dtype, DType::F32, "this operand is always fp32 (statistics, gradients, optimizer state)");
    v.addr
}

pub struct CudaEngine<D: Device> {
    dev: D,
    precision: Precision,
    /// The arithmetic of the matrix products in the fp32 precision.
    math: GemmMath,
    /// Grown on demand; ops that need temporary device memory take it whole.
    scratch: Mutex<Option<(D::Buf, usize)>>,
    /// Pinned host memory that encoded gradients cross the bus through.
    staging: Mutex<Option<D::Pinned>>,
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
        CudaEngine { dev, precision: Precision::Fp32, math: GemmMath::Fp32, scratch: Mutex::new(None), staging: Mutex::new(None) }
    }

    /// Parameters and activations stored in `precision`.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The dtype of parameters and activations.
    fn storage(&self) -> DType {
        match self.precision {
            Precision::Fp32 => DType::F32,
            Precision::Bf16 => DType::Bf16,
        }
    }

    fn dtype_of(&self, kind: ArenaKind) -> DType {
        match kind {
            ArenaKind::Params | ArenaKind::Acts => self.storage(),
            ArenaKind::Grads | ArenaKind::Stats | ArenaKind::State => DType::F32,
        }
    }

    /// The address of an operand of the storage type (an activation or a parameter).
    fn act(&self, v: View) -> DevPtr {
        assert_eq!(v.dtype, self.storage(), "an activation or parameter operand of the wrong precision");
        v.addr
    }

    /// The instance of a storage-type kernel for this precision (kernels/common.cuh's F32_AND_BF16).
    fn kernel(&self, base: &str) -> String {
        match self.storage() {
            DType::F32 => format!("{base}_f32"),
            DType::Bf16 => format!("{base}_bf16"),
        }
    }

    /// A matrix operand of the storage type.
    fn mat(&self, v: View, ld: usize, trans: bool) -> Mat {
        Mat { ptr: self.act(v), ld, trans, dtype: self.storage() }
    }

    /// The arithmetic of the matrix products: `math` for fp32 storage;
    /// bf16 storage always multiplies in bf16.
    pub fn gemm_math(&self) -> GemmMath {
        match self.precision {
            Precision::Fp32 => self.math,
            Precision::Bf16 => GemmMath::Bf16,
        }
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

    /// Runs `f` with at least `bytes` of the pinned staging buffer.
    fn with_staging<R>(&self, bytes: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let mut guard = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|b| b.len() < bytes) {
            *guard = None;
            *guard = Some(self.dev.alloc_pinned(bytes.next_power_of_two()).unwrap_or_else(|e| panic!("pinned staging memory: {e}")));
        }
        f(&mut guard.as_mut().expect("just allocated")[..bytes])
    }

    fn attention_shape(t: usize, b: usize, c: usize, nh: usize, smem_floats: usize) -> Shape {
        let hs = c / nh;
        assert!(hs <= ATT_HS_MAX && hs * nh == c, "the CUDA attention kernels take heads of at most {ATT_HS_MAX} (this model: {c}/{nh})");
        Shape { smem: (smem_floats * 4) as u32, ..Shape::grid2(t.div_ceil(ATT_ROWS), b * nh, 32 * ATT_ROWS as u32) }
    }
}

impl<D: Device> Engine for CudaEngine<D> {
    type Arena = CudaArena<D>;
    type Ptr = View;

    fn name(&self) -> String {
        match (self.precision, self.math) {
            (Precision::Bf16, _) => format!("cuda: {} (bf16)", self.dev.name()),
            (Precision::Fp32, GemmMath::Fp32) => format!("cuda: {}", self.dev.name()),
            (Precision::Fp32, m) => format!("cuda: {} ({m} GEMMs)", self.dev.name()),
        }
    }

    fn synchronize(&self) {
        check(self.dev.synchronize());
    }

    fn alloc(&self, kind: ArenaKind, len: usize) -> Result<CudaArena<D>, EngineError> {
        let dtype = self.dtype_of(kind);
        let buf = |size: usize| {
            let bytes = len.checked_mul(size).ok_or(EngineError::Alloc(len))?;
            self.dev.alloc(bytes).map_err(|_| EngineError::Alloc(len))
        };
        let master = if kind == ArenaKind::Params && dtype != DType::F32 { Some(buf(4)?) } else { None };
        Ok(CudaArena { buf: buf(dtype.size())?, len, dtype, master })
    }

    fn elem_bytes(&self, kind: ArenaKind) -> usize {
        self.dtype_of(kind).size()
    }

    fn arena_len(&self, a: &CudaArena<D>) -> usize {
        a.len
    }

    fn at(&self, a: &CudaArena<D>, offset: usize) -> View {
        assert!(offset <= a.len, "offset {offset} past an arena of {}", a.len);
        let master = a.master.as_ref().map_or(0, |m| self.dev.addr(m) + 4 * offset as u64);
        View { addr: self.dev.addr(&a.buf) + (a.dtype.size() * offset) as u64, dtype: a.dtype, master }
    }

    /// bf16 parameters: into the fp32 master, then kernels/tensor.cu casts
    /// on the device; other bf16 values are rounded on the host, so only
    /// two bytes a value cross the bus.
    unsafe fn write(&self, dst: View, src: &[f32]) {
        match dst.dtype {
            DType::F32 => unsafe { self.dev.copy_in(dst.addr, bytes_of(src)) },
            DType::Bf16 if dst.master != 0 => {
                unsafe { self.dev.copy_in(dst.master, bytes_of(src)) };
                let args = Args::new().ptr(dst.addr).ptr(dst.master).len(src.len());
                check(unsafe { self.dev.launch("cast_f32_to_bf16", elementwise(src.len()), args) });
            }
            DType::Bf16 => {
                let bits: Vec<u16> = src.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect();
                unsafe { self.dev.copy_in(dst.addr, bytes_of(&bits)) };
            }
        }
    }

    unsafe fn read(&self, src: View, dst: &mut [f32]) {
        let from = if src.master != 0 { src.master } else { src.addr };
        if src.dtype == DType::F32 || src.master != 0 {
            let bytes = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), dst.len() * 4) };
            return unsafe { self.dev.copy_out(from, bytes) };
        }
        let mut bits = vec![0u16; dst.len()];
        let bytes = unsafe { std::slice::from_raw_parts_mut(bits.as_mut_ptr().cast::<u8>(), bits.len() * 2) };
        unsafe { self.dev.copy_out(from, bytes) };
        for (d, b) in dst.iter_mut().zip(&bits) {
            *d = half::bf16::from_bits(*b).to_f32();
        }
    }

    fn behind_bus(&self) -> bool {
        true
    }

    /// kernels/codec.cu encodes on the device; only the encoded bytes cross
    /// the bus, by DMA into the pinned staging buffer.
    unsafe fn read_encoded(&self, codec: Codec, src: View, n: usize, out: &mut [u8]) {
        assert_eq!(out.len(), codec.encoded_len(n), "output sized by encoded_len");
        let src = fp32(src);
        if n == 0 {
            return;
        }
        let kernel = match codec {
            Codec::F32 => {
                return self.with_staging(out.len(), |st| {
                    unsafe { self.dev.copy_out(src, st) };
                    out.copy_from_slice(st);
                });
            }
            Codec::F16 => "codec_encode_f16",
            Codec::Bf16 => "codec_encode_bf16",
            Codec::Int8 { .. } => "codec_encode_int8",
            Codec::TopK { .. } => {
                // The top-k selection runs on the host (its bytes are tiny;
                // the fp32 copy is not: a kernel would be the next step).
                let mut host = vec![0f32; n];
                self.with_staging(4 * n, |st| {
                    unsafe { self.dev.copy_out(src, st) };
                    host.iter_mut().zip(st.chunks_exact(4)).for_each(|(h, b)| *h = f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                });
                codec.encode(&host, out);
                return;
            }
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
            self.with_staging(out.len(), |st| {
                unsafe { self.dev.copy_out(enc, st) };
                out.copy_from_slice(st);
            })
        })
    }

    /// Checks `bytes` on the host (they may come from a peer), then they
    /// cross the bus through the pinned staging buffer and kernels/codec.cu
    /// decodes them on the device; nothing is written when the check fails.
    unsafe fn write_decoded(&self, codec: Codec, bytes: &[u8], n: usize, dst: View) -> Result<(), CodecError> {
        codec.validate(bytes, n)?;
        let dst = fp32(dst);
        if n == 0 {
            return Ok(());
        }
        let kernel = match codec {
            Codec::F32 => {
                self.with_staging(bytes.len(), |st| {
                    st.copy_from_slice(bytes);
                    unsafe { self.dev.copy_in(dst, st) };
                });
                return Ok(());
            }
            Codec::F16 => "codec_decode_f16",
            Codec::Bf16 => "codec_decode_bf16",
            Codec::Int8 { .. } => "codec_decode_int8",
            Codec::TopK { .. } => {
                let mut host = vec![0f32; n];
                codec.decode(bytes, &mut host)?;
                let raw: Vec<u8> = host.iter().flat_map(|v| v.to_le_bytes()).collect();
                self.with_staging(raw.len(), |st| {
                    st.copy_from_slice(&raw);
                    unsafe { self.dev.copy_in(dst, st) };
                });
                return Ok(());
            }
        };
        self.with_scratch(bytes.len(), |enc| {
            self.with_staging(bytes.len(), |st| {
                st.copy_from_slice(bytes);
                unsafe { self.dev.copy_in(enc, st) };
            });
            let mut args = Args::new().ptr(dst).ptr(enc).len(n);
            if let Codec::Int8 { block } = codec {
                args = args.dim(block.max(1));
            }
            check(unsafe { self.dev.launch(kernel, elementwise(n), args) });
        });
        Ok(())
    }

    /// kernels/tensor.cu, in the view's own dtype (and its master copy's).
    unsafe fn fill(&self, dst: View, len: usize, value: f32) {
        let kernel = if dst.dtype == DType::F32 { "fill_f32" } else { "fill_bf16" };
        check(unsafe { self.dev.launch(kernel, elementwise(len), Args::new().ptr(dst.addr).len(len).f32(value)) });
        if dst.master != 0 {
            check(unsafe { self.dev.launch("fill_f32", elementwise(len), Args::new().ptr(dst.master).len(len).f32(value)) });
        }
    }

    /// kernels/tensor.cu
    unsafe fn scale(&self, x: View, len: usize, factor: f32) {
        check(unsafe { self.dev.launch("scale", elementwise(len), Args::new().ptr(fp32(x)).len(len).f32(factor)) });
    }

    /// kernels/tensor.cu: per-block partials on the device, summed here in block order.
    unsafe fn sum_squares(&self, x: View, len: usize) -> f64 {
        let x = fp32(x);
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

    /// kernels/projection.cu: per-block partials on the device, summed here in block order.
    unsafe fn project(&self, x: View, len: usize, offset: usize, p: &Projector) -> (Proj, f64) {
        let x = fp32(x);
        let groups = (offset + len).div_ceil(GROUP) - offset / GROUP;
        let blocks = groups.div_ceil(PROJECT_GROUPS);
        if len == 0 {
            return ([0.0; K], 0.0);
        }
        self.with_scratch(blocks * 5 * 8, |partial| {
            let mut args = Args::new().ptr(partial).ptr(x).len(len).len(offset);
            for &s in p.seeds() {
                args = args.i64(s as i64);
            }
            let args = args.i64(p.pick() as i64).len(PROJECT_GROUPS);
            check(unsafe { self.dev.launch("project_partial", Shape::linear(blocks, 256), args) });
            let mut parts = vec![0f64; blocks * 5];
            let bytes = unsafe { std::slice::from_raw_parts_mut(parts.as_mut_ptr().cast::<u8>(), parts.len() * 8) };
            unsafe { self.dev.copy_out(partial, bytes) };
            let (mut proj, mut sq) = ([0f64; K], 0f64);
            for p in parts.chunks_exact(5) {
                for j in 0..K {
                    proj[j] += p[j];
                }
                sq += p[K];
            }
            (proj, sq)
        })
    }

    /// kernels/encoder.cu
    unsafe fn encoder_forward(&self, out: View, tokens: &[u32], wte: View, wpe: View, b: usize, t: usize, c: usize) {
        let n = b * t * c;
        self.with_scratch(tokens.len() * 4, |tok| {
            unsafe { self.dev.copy_in(tok, bytes_of(tokens)) };
            let args = Args::new().ptr(self.act(out)).ptr(tok).ptr(self.act(wte)).ptr(self.act(wpe)).dim(b).dim(t).dim(c);
            check(unsafe { self.dev.launch(&self.kernel("encoder_forward"), Shape::linear(n.div_ceil(256), 256), args) });
        })
    }

    /// kernels/encoder.cu: positions sorted by token here (stable), then one
    /// block row per distinct token.
    unsafe fn encoder_backward(&self, dwte: View, dwpe: View, dout: View, tokens: &[u32], b: usize, t: usize, c: usize) {
        let dout = self.act(dout);
        let args = Args::new().ptr(fp32(dwpe)).ptr(dout).dim(b).dim(t).dim(c);
        check(unsafe { self.dev.launch(&self.kernel("encoder_backward_wpe"), Shape::grid2(c.div_ceil(256), t, 256), args) });
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
            let args = Args::new().ptr(fp32(dwte)).ptr(dout).ptr(tok).ptr(ord).ptr(st).dim(c);
            check(unsafe { self.dev.launch(&self.kernel("encoder_backward_wte"), Shape::grid2(c.div_ceil(256), runs, 256), args) });
        })
    }

    /// kernels/layernorm.cu: one warp per row, 8 rows per block.
    unsafe fn layernorm_forward(&self, out: View, mean: View, rstd: View, inp: View, w: View, bias: View, n: usize, c: usize) {
        let args =
            Args::new().ptr(self.act(out)).ptr(fp32(mean)).ptr(fp32(rstd)).ptr(self.act(inp)).ptr(self.act(w)).ptr(self.act(bias)).dim(n).dim(c);
        check(unsafe { self.dev.launch(&self.kernel("layernorm_forward"), Shape::linear(n.div_ceil(8), 256), args) });
    }

    /// kernels/layernorm.cu: the input gradient per row, then the parameter
    /// gradients as chunk partials summed in chunk order.
    unsafe fn layernorm_backward(
        &self,
        dinp: View,
        dw: View,
        dbias: View,
        dout: View,
        inp: View,
        w: View,
        mean: View,
        rstd: View,
        n: usize,
        c: usize,
    ) {
        let (dout, inp, mean, rstd) = (self.act(dout), self.act(inp), fp32(mean), fp32(rstd));
        let args = Args::new().ptr(self.act(dinp)).ptr(dout).ptr(inp).ptr(self.act(w)).ptr(mean).ptr(rstd).dim(n).dim(c);
        check(unsafe { self.dev.launch(&self.kernel("layernorm_backward_input"), Shape::linear(n.div_ceil(8), 256), args) });
        let chunks = n.div_ceil(LN_ROW_CHUNK);
        self.with_scratch(chunks * 2 * c * 4, |partial| {
            let args = Args::new().ptr(partial).ptr(dout).ptr(inp).ptr(mean).ptr(rstd).dim(n).dim(c);
            let shape = Shape::grid2(c.div_ceil(256), chunks, 256);
            check(unsafe { self.dev.launch(&self.kernel("layernorm_backward_params_partial"), shape, args) });
            let args = Args::new().ptr(fp32(dw)).ptr(fp32(dbias)).ptr(partial).dim(chunks).dim(c);
            check(unsafe { self.dev.launch("layernorm_backward_params_sum", Shape::linear(c.div_ceil(256), 256), args) });
        })
    }

    /// kernels/gelu.cu; `out` may alias `inp`.
    unsafe fn gelu_forward(&self, out: View, inp: View, n: usize) {
        let args = Args::new().ptr(self.act(out)).ptr(self.act(inp)).len(n);
        check(unsafe { self.dev.launch(&self.kernel("gelu_forward"), elementwise(n), args) });
    }

    /// kernels/gelu.cu; `dinp` may alias `dout`.
    unsafe fn gelu_backward(&self, dinp: View, inp: View, dout: View, n: usize) {
        let args = Args::new().ptr(self.act(dinp)).ptr(self.act(inp)).ptr(self.act(dout)).len(n);
        check(unsafe { self.dev.launch(&self.kernel("gelu_backward"), elementwise(n), args) });
    }

    /// kernels/decode.cu: one block of 256 threads per head, the scores in
    /// shared memory (len + 32 floats: 48 KiB holds 12,000 positions).
    unsafe fn attention_decode(&self, out: View, q: View, kv: View, len: usize, c: usize, nh: usize) {
        assert!(len <= 12_000, "attention over {len} cached positions: more than shared memory holds");
        let args = Args::new().ptr(self.act(out)).ptr(self.act(q)).ptr(self.act(kv)).dim(len).dim(c).dim(nh);
        let shape = Shape { smem: ((32 + len) * 4) as u32, ..Shape::linear(nh, 256) };
        check(unsafe { self.dev.launch(&self.kernel("attention_decode"), shape, args) });
    }

    /// kernels/decode.cu (activation arenas: the same storage type).
    unsafe fn copy(&self, dst: View, src: View, len: usize) {
        let args = Args::new().ptr(self.act(dst)).ptr(self.act(src)).len(len);
        check(unsafe { self.dev.launch(&self.kernel("copy_act"), elementwise(len), args) });
    }

    /// kernels/classifier.cu: one block of 1024 threads per row.
    unsafe fn crossentropy(&self, losses: View, logits: View, targets: &[u32], dscale: Option<f32>, n: usize, v: usize, vp: usize) {
        let (losses, logits) = (fp32(losses), self.act(logits));
        self.with_scratch(n * 4, |tgt| {
            unsafe { self.dev.copy_in(tgt, bytes_of(&targets[..n])) };
            let args = Args::new().ptr(losses).ptr(logits).ptr(tgt).f32(dscale.unwrap_or(0.0)).i32(dscale.is_some() as i32).dim(v).dim(vp);
            let shape = Shape { smem: 32 * 4, ..Shape::linear(n, 1024) };
            check(unsafe { self.dev.launch(&self.kernel("crossentropy"), shape, args) });
        })
    }

    /// One log-sum-exp per (batch, head, row), like the CPU engine.
    fn attention_cache_len(&self, b: usize, t: usize, nh: usize) -> usize {
        b * nh * t
    }

    /// kernels/attention.cu: in bf16, on the tensor cores (16 query rows a
    /// warp) for the head sizes it is instantiated for; otherwise one warp
    /// per query row, tiles of keys in shared memory.
    unsafe fn attention_forward(&self, out: View, cache: View, qkv: View, b: usize, t: usize, c: usize, nh: usize) {
        let hs = c / nh;
        if self.precision == Precision::Bf16 && hs * nh == c && ATT_TC_HEADS.contains(&hs) {
            let args = Args::new().ptr(self.act(out)).ptr(fp32(cache)).ptr(self.act(qkv)).dim(b).dim(t).dim(c).dim(nh);
            let shape = Shape::grid2(t.div_ceil(ATT_TC_WARPS * 16), b * nh, 32 * ATT_TC_WARPS as u32);
            check(unsafe { self.dev.launch(&format!("attention_forward_tc{hs}"), shape, args) });
            return;
        }
        let shape = Self::attention_shape(t, b, c, nh, 2 * ATT_TILE * (hs + 1) + ATT_ROWS * hs + ATT_ROWS * ATT_TILE);
        let args = Args::new().ptr(self.act(out)).ptr(fp32(cache)).ptr(self.act(qkv)).dim(b).dim(t).dim(c).dim(nh);
        check(unsafe { self.dev.launch(&self.kernel("attention_forward"), shape, args) });
    }

    /// kernels/attention.cu: dQ (and each row's Σ P·dP, kept in scratch)
    /// per query row, then dK and dV per key row.
    unsafe fn attention_backward(&self, dqkv: View, dout: View, qkv: View, cache: View, b: usize, t: usize, c: usize, nh: usize) {
        let hs = c / nh;
        let (dqkv, dout, qkv, cache) = (self.act(dqkv), self.act(dout), self.act(qkv), fp32(cache));
        if self.precision == Precision::Bf16 && hs * nh == c && ATT_TC_HEADS.contains(&hs) {
            return self.with_scratch(b * nh * t * 4, |dsum| {
                let shape = Shape::grid2(t.div_ceil(ATT_TC_WARPS * 16), b * nh, 32 * ATT_TC_WARPS as u32);
                let args = Args::new().ptr(dqkv).ptr(dsum).ptr(dout).ptr(qkv).ptr(cache).dim(b).dim(t).dim(c).dim(nh);
                check(unsafe { self.dev.launch(&format!("attention_backward_query_tc{hs}"), shape, args) });
                let args = Args::new().ptr(dqkv).ptr(dout).ptr(qkv).ptr(cache).ptr(dsum).dim(b).dim(t).dim(c).dim(nh);
                check(unsafe { self.dev.launch(&format!("attention_backward_key_tc{hs}"), shape, args) });
            });
        }
        self.with_scratch(b * nh * t * 4, |dsum| {
            let shape = Self::attention_shape(t, b, c, nh, 2 * ATT_TILE * (hs + 1) + 2 * ATT_ROWS * hs + ATT_ROWS * ATT_TILE);
            let args = Args::new().ptr(dqkv).ptr(dsum).ptr(dout).ptr(qkv).ptr(cache).dim(b).dim(t).dim(c).dim(nh);
            check(unsafe { self.dev.launch(&self.kernel("attention_backward_query"), shape, args) });
            let shape = Self::attention_shape(t, b, c, nh, 2 * ATT_TILE * (hs + 1) + 2 * ATT_TILE + 2 * ATT_ROWS * hs + 2 * ATT_ROWS * ATT_TILE);
            let args = Args::new().ptr(dqkv).ptr(dout).ptr(qkv).ptr(cache).ptr(dsum).dim(b).dim(t).dim(c).dim(nh);
            check(unsafe { self.dev.launch(&self.kernel("attention_backward_key"), shape, args) });
        })
    }

    /// kernels/optim.cu (on the fp32 master copy of bf16 parameters, writing both).
    unsafe fn adamw(&self, p: View, g: View, m: View, v: View, len: usize, hp: &AdamHyper, step: u64) {
        let (bc1, bc2) = bias_corrections(hp, step);
        let (w, w16) = p.weights();
        let args = Args::new()
            .ptr(w)
            .ptr(w16)
            .ptr(fp32(g))
            .ptr(fp32(m))
            .ptr(fp32(v))
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

    /// One GEMM: the bias and the residual go in as cuBLASLt's bias
    /// epilogue and its separate C matrix, so the output is written once.
    unsafe fn matmul_forward(
        &self,
        out: View,
        inp: View,
        w: View,
        layout: WeightLayout,
        bias: Option<View>,
        residual: Option<View>,
        n: usize,
        c: usize,
        oc: usize,
    ) {
        let w = match layout {
            WeightLayout::InOut => self.mat(w, oc, false),
            WeightLayout::OutIn => self.mat(w, c, true),
        };
        let g = Gemm {
            m: n,
            n: oc,
            k: c,
            dst: self.act(out),
            ldd: oc,
            dst_dtype: self.storage(),
            a: self.mat(inp, c, false),
            b: w,
            accumulate: residual.is_some(),
            c: residual.map(|r| self.act(r)),
            bias: bias.map(|b| self.act(b)),
            math: self.gemm_math(),
        };
        check(unsafe { self.dev.gemm(&g) });
    }

    /// Two products (dinp =, dw += in fp32) and, with a bias,
    /// kernels/matmul.cu's column sums.
    unsafe fn matmul_backward(
        &self,
        dinp: View,
        dw: View,
        dbias: Option<View>,
        dout: View,
        inp: View,
        w: View,
        layout: WeightLayout,
        n: usize,
        c: usize,
        oc: usize,
    ) {
        let math = self.gemm_math();
        let dout_m = self.mat(dout, oc, false);
        let wt = match layout {
            WeightLayout::InOut => self.mat(w, oc, true),
            WeightLayout::OutIn => self.mat(w, c, false),
        };
        let dinp_gemm = Gemm {
            m: n,
            n: c,
            k: oc,
            dst: self.act(dinp),
            ldd: c,
            dst_dtype: self.storage(),
            a: dout_m,
            b: wt,
            accumulate: false,
            c: None,
            bias: None,
            math,
        };
        check(unsafe { self.dev.gemm(&dinp_gemm) });
        let dw_gemm = match layout {
            WeightLayout::InOut => Gemm {
                m: c,
                n: oc,
                k: n,
                dst: fp32(dw),
                ldd: oc,
                dst_dtype: DType::F32,
                a: self.mat(inp, c, true),
                b: dout_m,
                accumulate: true,
                c: None,
                bias: None,
                math,
            },
            WeightLayout::OutIn => Gemm {
                m: oc,
                n: c,
                k: n,
                dst: fp32(dw),
                ldd: c,
                dst_dtype: DType::F32,
                a: self.mat(dout, oc, true),
                b: self.mat(inp, c, false),
                accumulate: true,
                c: None,
                bias: None,
                math,
            },
        };
        check(unsafe { self.dev.gemm(&dw_gemm) });
        if let Some(db) = dbias {
            let chunks = n.div_ceil(MM_ROW_CHUNK);
            self.with_scratch(chunks * oc * 4, |partial| {
                let args = Args::new().ptr(partial).ptr(self.act(dout)).dim(n).dim(oc);
                let shape = Shape::grid2(oc.div_ceil(256), chunks, 256);
                check(unsafe { self.dev.launch(&self.kernel("column_sum_partial"), shape, args) });
                let args = Args::new().ptr(fp32(db)).ptr(partial).dim(chunks).dim(oc);
                check(unsafe { self.dev.launch("column_sum_add", Shape::linear(oc.div_ceil(256), 256), args) });
            })
        }
    }

    /// kernels/optim.cu: moments and per-block partial norms (of the fp32
    /// weights), summed here in block order.
    unsafe fn lamb_moments(&self, p: View, g: View, m: View, v: View, len: usize, hp: &AdamHyper, step: u64) -> (f64, f64) {
        let blocks = len.div_ceil(SQ_PER_BLOCK);
        if blocks == 0 {
            return (0.0, 0.0);
        }
        let (bc1, bc2) = bias_corrections(hp, step);
        self.with_scratch(blocks * 16, |partial| {
            let args = Args::new()
                .ptr(partial)
                .ptr(p.weights().0)
                .ptr(fp32(g))
                .ptr(fp32(m))
                .ptr(fp32(v))
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

    /// kernels/optim.cu (on the fp32 master copy of bf16 parameters, writing both).
    unsafe fn lamb_apply(&self, p: View, m: View, v: View, len: usize, hp: &AdamHyper, step: u64, step_size: f32) {
        let (bc1, bc2) = bias_corrections(hp, step);
        let (w, w16) = p.weights();
        let args = Args::new().ptr(w).ptr(w16).ptr(fp32(m)).ptr(fp32(v)).len(len).f32(hp.eps).f32(hp.weight_decay).f32(bc1).f32(bc2).f32(step_size);
        check(unsafe { self.dev.launch("lamb_apply", elementwise(len), args) });
    }
}
