//! The emulated device: host memory, and the kernels of `kernels/*.cu`
//! compiled as C++ by build.rs against `kernels/emu/cuda_emu.h`, each CUDA
//! thread a coroutine. Slow (every barrier is a context switch), and meant
//! for small shapes in tests, where it proves the kernels and the engine's
//! launch code without a GPU. Matrix products, cuBLAS's job on a GPU, go to
//! the CPU engine's GEMM.

use super::device::{Args, DType, DevPtr, Device, DeviceError, Gemm, GemmMath, Mat, Shape};
use crate::engine::cpu::matmul::{Strided, gemm_f32, parallelism};
use std::alloc::{Layout, alloc_zeroed, dealloc};

/// Host memory standing in for device memory.
pub struct EmuBuf {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the buffer exclusively owns its allocation; kernels synchronise
// through the engine's calls like device memory does.
unsafe impl Send for EmuBuf {}
unsafe impl Sync for EmuBuf {}

impl Drop for EmuBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `alloc` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// A dense row-major fp32 copy of the `rows × cols` matrix `m` (fp32 or
/// bf16), each value rounded to nearest even to `keep` mantissa bits when
/// given (what the tensor cores do to fp32 operands in tf32/bf16 math).
///
/// # Safety
/// `m` must be valid for `rows × cols` elements at its strides.
unsafe fn dense(m: Mat, rows: usize, cols: usize, keep: Option<u32>) -> Vec<f32> {
    let round = |x: f32| match keep {
        Some(keep) if x.is_finite() => {
            let (u, drop) = (x.to_bits(), 23 - keep);
            let half = 1u32 << (drop - 1);
            let r = u + (half - 1) + ((u >> drop) & 1);
            f32::from_bits(r & !((1u32 << drop) - 1))
        }
        _ => x,
    };
    let (rs, cs) = if m.trans { (1, m.ld) } else { (m.ld, 1) };
    let mut out = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        for j in 0..cols {
            let at = i * rs + j * cs;
            // SAFETY: inside the matrix, as the caller guarantees.
            let x = unsafe {
                match m.dtype {
                    DType::F32 => *(m.ptr as *const f32).add(at),
                    DType::Bf16 => f32::from_bits((*(m.ptr as *const u16).add(at) as u32) << 16),
                }
            };
            out.push(round(x));
        }
    }
    out
}

#[derive(Debug, Default, Clone)]
pub struct Emu;

impl Emu {
    /// Whether build.rs could compile the emulation (it needs a C++ compiler).
    pub fn available() -> bool {
        cfg!(dtrain_emu)
    }
}

#[cfg(dtrain_emu)]
unsafe extern "C" {
    fn dtrain_emu_launch(
        name: *const std::ffi::c_char,
        grid: *const u32,
        block: *const u32,
        smem: usize,
        params: *mut *mut std::ffi::c_void,
        err: *mut std::ffi::c_char,
        err_len: usize,
    ) -> i32;
}

impl Device for Emu {
    type Buf = EmuBuf;
    /// Host memory is all there is.
    type Pinned = Vec<u8>;

    fn name(&self) -> String {
        "cuda-emulated (CPU)".into()
    }

    fn is_emulated(&self) -> bool {
        true
    }

    fn alloc(&self, bytes: usize) -> Result<EmuBuf, DeviceError> {
        let layout = Layout::from_size_align(bytes.max(1), 256).map_err(|_| DeviceError::Alloc(bytes))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(DeviceError::Alloc(bytes));
        }
        Ok(EmuBuf { ptr, layout })
    }

    fn addr(&self, buf: &EmuBuf) -> DevPtr {
        buf.ptr as DevPtr
    }

    fn alloc_pinned(&self, bytes: usize) -> Result<Vec<u8>, DeviceError> {
        Ok(vec![0; bytes])
    }

    unsafe fn copy_in(&self, dst: DevPtr, src: &[u8]) {
        // SAFETY: the caller guarantees the destination range.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) }
    }

    unsafe fn copy_out(&self, src: DevPtr, dst: &mut [u8]) {
        // SAFETY: the caller guarantees the source range.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) }
    }

    /// fp32 on the CPU engine's GEMM. bf16 operands are widened exactly;
    /// fp32 operands in tf32/bf16 math are first rounded (to nearest even)
    /// as the tensor cores round them; products accumulate in fp32, and a
    /// bf16 result is rounded once at the end, as cuBLAS does. A separate
    /// `c` and a bias (cuBLASLt's epilogue on a GPU) are added up first, in
    /// the CPU engine's pre-fill order.
    unsafe fn gemm(&self, g: &Gemm) -> Result<(), DeviceError> {
        assert_eq!(g.a.dtype, g.b.dtype, "the operands of a GEMM have one dtype");
        let keep = match (g.a.dtype, g.math) {
            (DType::F32, GemmMath::Tf32) => Some(10),
            (DType::F32, GemmMath::Bf16) => Some(7),
            _ => None,
        };
        let direct = g.a.dtype == DType::F32 && keep.is_none();
        let strided = |m: Mat| {
            let (rs, cs) = if m.trans { (1, m.ld as isize) } else { (m.ld as isize, 1) };
            Strided { ptr: m.ptr as *const f32, rs, cs }
        };
        // SAFETY: the caller guarantees the operands' extents.
        let (ra, rb) = if direct { (Vec::new(), Vec::new()) } else { unsafe { (dense(g.a, g.m, g.k, keep), dense(g.b, g.k, g.n, keep)) } };
        let packed = |v: &Vec<f32>, cols: usize| Strided { ptr: v.as_ptr(), rs: cols as isize, cs: 1 };
        let (a, b) = if direct { (strided(g.a), strided(g.b)) } else { (packed(&ra, g.k), packed(&rb, g.n)) };
        // What the product is added to, formed as cuBLASLt's epilogue would
        // and in the CPU engine's pre-fill order: bias + c (or dst), stored
        // in the result's dtype; `None` when the product stands alone.
        let width = g.dst_dtype.size();
        let load = |base: DevPtr, i: usize, j: usize| -> f32 {
            let at = base as usize + (i * g.ldd + j) * width;
            // SAFETY: inside `dst`/`c`/`bias`, as the caller guarantees.
            unsafe {
                match g.dst_dtype {
                    DType::F32 => *(at as *const f32),
                    DType::Bf16 => f32::from_bits((*(at as *const u16) as u32) << 16),
                }
            }
        };
        let start = (g.accumulate || g.bias.is_some()).then(|| {
            let mut v = vec![0f32; g.m * g.n];
            for (k, x) in v.iter_mut().enumerate() {
                let (i, j) = (k / g.n, k % g.n);
                let base = g.accumulate.then(|| load(g.c.unwrap_or(g.dst), i, j));
                let bias = g.bias.map(|b| {
                    // SAFETY: n values, as the caller guarantees.
                    unsafe {
                        match g.dst_dtype {
                            DType::F32 => *(b as *const f32).add(j),
                            DType::Bf16 => f32::from_bits((*(b as *const u16).add(j) as u32) << 16),
                        }
                    }
                });
                let sum = match (bias, base) {
                    (Some(b), Some(r)) => b + r,
                    (Some(b), None) => b,
                    (None, Some(r)) => r,
                    (None, None) => 0.0,
                };
                *x = if g.dst_dtype == DType::Bf16 { half::bf16::from_f32(sum).to_f32() } else { sum };
            }
            v
        });
        let at = |i: usize, j: usize| (g.dst as usize + (i * g.ldd + j) * width) as *mut u8;
        match g.dst_dtype {
            DType::F32 => {
                if let Some(v) = &start {
                    for (k, x) in v.iter().enumerate() {
                        // SAFETY: inside `dst`, as the caller guarantees.
                        unsafe { *(at(k / g.n, k % g.n) as *mut f32) = *x };
                    }
                }
                // SAFETY: operands as above; `dst` as the caller guarantees.
                unsafe { gemm_f32(g.m, g.n, g.k, g.dst as *mut f32, g.ldd as isize, a, b, start.is_some(), parallelism()) }
            }
            DType::Bf16 => {
                let accumulate = start.is_some();
                let mut out = start.unwrap_or_else(|| vec![0f32; g.m * g.n]);
                // SAFETY: operands as above; `out` is dense m × n.
                unsafe { gemm_f32(g.m, g.n, g.k, out.as_mut_ptr(), g.n as isize, a, b, accumulate, parallelism()) };
                for (k, o) in out.iter().enumerate() {
                    // SAFETY: inside `dst`, as the caller guarantees.
                    unsafe { *(at(k / g.n, k % g.n) as *mut u16) = half::bf16::from_f32(*o).to_bits() };
                }
            }
        }
        Ok(())
    }

    #[cfg(dtrain_emu)]
    unsafe fn launch(&self, kernel: &str, shape: Shape, mut args: Args) -> Result<(), DeviceError> {
        let name = std::ffi::CString::new(kernel).map_err(|_| DeviceError::Launch(format!("bad kernel name {kernel:?}")))?;
        let mut params = args.pointers();
        let mut err = [0 as std::ffi::c_char; 256];
        // SAFETY: the caller guarantees the arguments; `params` points into
        // `args`, which outlives the call; the launch runs to completion.
        let rc = unsafe {
            dtrain_emu_launch(
                name.as_ptr(),
                shape.grid.as_ptr(),
                shape.block.as_ptr(),
                shape.smem as usize,
                params.as_mut_ptr(),
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: the C side wrote a NUL-terminated message into `err`.
        Err(DeviceError::Launch(unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned()))
    }

    #[cfg(not(dtrain_emu))]
    unsafe fn launch(&self, kernel: &str, _shape: Shape, _args: Args) -> Result<(), DeviceError> {
        Err(DeviceError::Launch(format!("{kernel}: the CPU emulation was not built (no C++ compiler when dtrain was built)")))
    }
}
