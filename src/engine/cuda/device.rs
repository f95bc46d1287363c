//! What the CUDA engine needs from a device: zeroed memory, copies, and
//! kernel launches by name with `cuLaunchKernel`'s argument convention.
//!
//! Two devices implement it: a real GPU through cudarc, and the CPU
//! emulation of the same kernel sources ([`super::emu::Emu`]). Everything
//! above this trait — launch shapes, scratch buffers, host-side
//! preparation — is shared, so the emulated tests prove the code a GPU runs,
//! not a copy of it.

use std::ffi::c_void;

/// A device address (on the emulated device, a host address).
pub type DevPtr = u64;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot allocate {0} bytes on the device")]
    Alloc(usize),
    #[error("kernel launch failed: {0}")]
    Launch(String),
}

/// Kernel arguments, each held in 8 bytes (little-endian, so a 4-byte
/// argument is read from the first 4), passed as an array of pointers.
#[derive(Debug, Default, Clone)]
pub struct Args {
    values: Vec<u64>,
}

impl Args {
    pub fn new() -> Args {
        Args::default()
    }
    pub fn ptr(mut self, p: DevPtr) -> Args {
        self.values.push(p);
        self
    }
    pub fn i32(mut self, v: i32) -> Args {
        self.values.push(v as u32 as u64);
        self
    }
    /// An `int` dimension; panics past `i32::MAX` (shapes are checked by the model).
    pub fn dim(self, v: usize) -> Args {
        self.i32(i32::try_from(v).expect("dimension fits an int"))
    }
    pub fn i64(mut self, v: i64) -> Args {
        self.values.push(v as u64);
        self
    }
    pub fn len(self, v: usize) -> Args {
        self.i64(i64::try_from(v).expect("length fits a long long"))
    }
    pub fn f32(mut self, v: f32) -> Args {
        self.values.push(v.to_bits() as u64);
        self
    }
    /// Pointers to each value, valid while `self` is neither moved nor changed.
    pub fn pointers(&mut self) -> Vec<*mut c_void> {
        self.values.iter_mut().map(|v| v as *mut u64 as *mut c_void).collect()
    }
}

/// A launch shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub smem: u32,
}

impl Shape {
    pub fn linear(blocks: usize, threads: u32) -> Shape {
        Shape { grid: [u32::try_from(blocks.max(1)).expect("grid fits"), 1, 1], block: [threads, 1, 1], smem: 0 }
    }
    pub fn grid2(x: usize, y: usize, threads: u32) -> Shape {
        Shape { grid: [u32::try_from(x.max(1)).expect("grid fits"), u32::try_from(y.max(1)).expect("grid fits"), 1], block: [threads, 1, 1], smem: 0 }
    }
}

/// How the elements of a buffer are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    /// bfloat16: fp32's exponent, 7 mantissa bits.
    Bf16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 => 2,
        }
    }
}

/// A row-major matrix operand of a GEMM: `m × k` logically; stored as is
/// with leading dimension `ld`, or, with `trans`, stored as its transpose.
#[derive(Debug, Clone, Copy)]
pub struct Mat {
    pub ptr: DevPtr,
    pub ld: usize,
    pub trans: bool,
    pub dtype: DType,
}

/// The arithmetic of a GEMM whose operands are fp32 in memory (bf16
/// operands always multiply as bf16, accumulating in fp32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemmMath {
    /// fp32 multiply-adds (no tensor cores): the exact mode, for tests.
    #[default]
    Fp32,
    /// Operands rounded to TF32 (10-bit mantissa) for the tensor cores, fp32 accumulation.
    Tf32,
    /// Operands rounded to bf16 (7-bit mantissa) for the tensor cores,
    /// fp32 accumulation: bf16 arithmetic on fp32 storage, the first step of
    /// the bf16 mode.
    Bf16,
}

impl std::str::FromStr for GemmMath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(GemmMath::Fp32),
            "tf32" => Ok(GemmMath::Tf32),
            "bf16" => Ok(GemmMath::Bf16),
            _ => Err(format!("{s:?}: expected fp32, tf32 or bf16")),
        }
    }
}

impl std::fmt::Display for GemmMath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GemmMath::Fp32 => "fp32",
            GemmMath::Tf32 => "tf32",
            GemmMath::Bf16 => "bf16",
        })
    }
}

/// `dst(m × n) = a(m × k) · b(k × n) [+ c] [+ bias]`; row-major, `dst`
/// with leading dimension `ldd`; both operands of one dtype, the result of
/// either; `math` for fp32 operands; accumulation in fp32. With
/// `accumulate` the product is added to `c`, or to `dst` itself when `c` is
/// `None`; `bias` (n values of the result's dtype) is added to every row.
#[derive(Debug, Clone, Copy)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub dst: DevPtr,
    pub ldd: usize,
    pub dst_dtype: DType,
    pub a: Mat,
    pub b: Mat,
    pub accumulate: bool,
    /// The matrix to accumulate onto when it is not `dst` (same dtype and
    /// leading dimension as `dst`).
    pub c: Option<DevPtr>,
    pub bias: Option<DevPtr>,
    pub math: GemmMath,
}

pub trait Device: Send + Sync {
    /// Owns one allocation; freed on drop.
    type Buf: Send + Sync;
    /// Page-locked host memory, which a GPU reads and writes by DMA at the
    /// bus's full speed; freed on drop.
    type Pinned: Send + std::ops::DerefMut<Target = [u8]>;

    fn name(&self) -> String;
    /// The CPU emulation, which cannot run PTX (tensor-core instructions).
    fn is_emulated(&self) -> bool {
        false
    }
    /// `bytes` of zeroed memory, aligned to 256 bytes.
    fn alloc(&self, bytes: usize) -> Result<Self::Buf, DeviceError>;
    fn addr(&self, buf: &Self::Buf) -> DevPtr;
    /// `bytes` of zeroed pinned host memory.
    fn alloc_pinned(&self, bytes: usize) -> Result<Self::Pinned, DeviceError>;
    /// # Safety
    /// `dst .. dst + src.len()` lies in a live allocation of this device.
    unsafe fn copy_in(&self, dst: DevPtr, src: &[u8]);
    /// # Safety
    /// `src .. src + dst.len()` lies in a live allocation of this device,
    /// and every launch that writes it was issued before (copies wait).
    unsafe fn copy_out(&self, src: DevPtr, dst: &mut [u8]);
    /// # Safety
    /// `args` match the kernel's parameters, and every pointer among them
    /// addresses enough live memory of this device for the shape.
    unsafe fn launch(&self, kernel: &str, shape: Shape, args: Args) -> Result<(), DeviceError>;
    /// Waits for every launch so far; reports a kernel's failure.
    fn synchronize(&self) -> Result<(), DeviceError> {
        Ok(())
    }
    /// A matrix product (cuBLAS on a GPU).
    /// # Safety
    /// Every operand lies in live memory of this device; `dst` aliases none.
    unsafe fn gemm(&self, g: &Gemm) -> Result<(), DeviceError>;
}
