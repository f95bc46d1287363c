// What every kernel file shares: under DTRAIN_EMU, the CPU emulation of the
// subset of CUDA the kernels use (on a GPU, NVRTC needs no header for it);
// and the warp and block reductions. Reductions always combine values in the same tree, so a
// kernel's result does not depend on timing: training is reproducible and
// the emulated run computes exactly what the GPU computes, up to the
// rounding of the math library's exp and log.
#pragma once

#ifdef DTRAIN_EMU
#include "emu/cuda_emu.h"
#endif

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu

#ifdef DTRAIN_EMU
#define NEG_INF (-INFINITY)
#else
#define NEG_INF (__int_as_float(0xff800000))
#endif

// Dynamic shared memory as an array of T named `name`.
#ifdef DTRAIN_EMU
#define DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(emu::dynamic_smem())
#else
#define DYNAMIC_SHARED(T, name)                           \
    extern __shared__ __align__(16) unsigned char name##_bytes[]; \
    T* name = reinterpret_cast<T*>(name##_bytes)
#endif

// fp16 and bf16 as raw bits, round to nearest even. On a GPU one PTX
// conversion each (no CUDA header needed, which keeps NVRTC self-contained);
// in the emulation, its bit-exact C++ conversions.
#ifdef DTRAIN_EMU
__device__ __forceinline__ unsigned short f16_bits(float v) { return __float2half_rn(v).x; }
__device__ __forceinline__ float f16_value(unsigned short h) { return __half2float(__half{h}); }
__device__ __forceinline__ unsigned short bf16_bits(float v) { return __float2bfloat16_rn(v).x; }
__device__ __forceinline__ float bf16_value(unsigned short h) { return __bfloat162float(__nv_bfloat16{h}); }
#else
__device__ __forceinline__ unsigned short f16_bits(float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}
__device__ __forceinline__ float f16_value(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ unsigned short bf16_bits(float v) {
#if __CUDA_ARCH__ >= 800
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
#else  // no bf16 conversion before sm_80: round to nearest even by hand
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);  // NaN stays NaN
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
#endif
}
__device__ __forceinline__ float bf16_value(unsigned short h) { return __uint_as_float((unsigned)h << 16); }
#endif

// Storage types. Kernels compute in fp32; activations and parameters are
// stored as fp32 (the exact mode the CPU engine checks) or as bf16 (the
// mixed-precision mode). Such a kernel is a template over its storage type
// floatX (llm.c's name), written once, loading with to_float and storing
// with from_float<floatX>;
// F32_AND_BF16 makes its two entry points `name_f32` and `name_bf16` (plain
// C names: cuModuleGetFunction and the emulation's table find kernels by
// name, and build.rs lists both). Statistics, gradients of parameters and
// optimizer state are fp32 in both modes and keep plain fp32 kernels.
struct bf16 {
    unsigned short bits;
};
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return bf16_value(x.bits); }
template <typename floatX>
__device__ __forceinline__ floatX from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float v) {
    return bf16{bf16_bits(v)};
}

// Tensor cores: one warp-wide mma.sync.m16n8k16, D = A·B + C with bf16
// A and B and fp32 C and D, operands in registers as the PTX ISA lays them
// out; lane = 4·g + t:
//   A (16×16, row-major), 4 registers of two bf16 (the lower index in the
//     low half): {A[g][2t,2t+1], A[g+8][2t,2t+1], A[g][2t+8,2t+9], A[g+8][2t+8,2t+9]}
//   B (16×8, k × n), 2 registers: {B[2t,2t+1][g], B[2t+8,2t+9][g]}
//   C, D (16×8): {C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]}
// mma_16816_shuffled computes the same from those registers with warp
// shuffles and fp32 multiply-adds: it is the emulation's tensor core (the
// emulation cannot run PTX), and the reference `dtrain check gpu` holds the
// real one to, which also proves this layout on the hardware.
__device__ __forceinline__ float bf16_half(unsigned r, int high) {
    return bf16_value((unsigned short)(high ? r >> 16 : r & 0xffffu));
}

__device__ __forceinline__ void mma_16816_shuffled(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    int lane = threadIdx.x % WARP_SIZE, g = lane / 4, t = lane % 4;
    float acc[4] = {c[0], c[1], c[2], c[3]};
#pragma unroll
    for (int k = 0; k < 16; k++) {
        int hi = k >= 8, q = (k % 8) / 2, half = k & 1;
        unsigned a_top = __shfl_sync(FULL_MASK, a[hi ? 2 : 0], 4 * g + q);
        unsigned a_bot = __shfl_sync(FULL_MASK, a[hi ? 3 : 1], 4 * g + q);
        unsigned b_0 = __shfl_sync(FULL_MASK, b[hi], 8 * t + q);
        unsigned b_1 = __shfl_sync(FULL_MASK, b[hi], 8 * t + 4 + q);
        float x0 = bf16_half(a_top, half), x1 = bf16_half(a_bot, half);
        float y0 = bf16_half(b_0, half), y1 = bf16_half(b_1, half);
        acc[0] += x0 * y0;
        acc[1] += x0 * y1;
        acc[2] += x1 * y0;
        acc[3] += x1 * y1;
    }
#pragma unroll
    for (int i = 0; i < 4; i++) d[i] = acc[i];
}

#ifdef DTRAIN_EMU
__device__ __forceinline__ void mma_16816(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    mma_16816_shuffled(d, a, b, c);
}
#else
// Before sm_80 (no bf16 mma) the twin stands in, so the kernels still load.
__device__ __forceinline__ void mma_16816(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#else
    mma_16816_shuffled(d, a, b, c);
#endif
}
#endif

// Fragments, from an element accessor `at(row, col)` (a lambda: it can
// bound-check rows, or reach into interleaved Q/K/V). For A the rows are
// M, for B from a k × n tile the rows are K, for B from its transpose
// (an n × k tile) the rows are N.
__device__ __forceinline__ unsigned pack_bf16(bf16 lo, bf16 hi) { return (unsigned)lo.bits | ((unsigned)hi.bits << 16); }
// A: rows row0 .. row0+15, columns col0 .. col0+15.
template <typename At>
__device__ __forceinline__ void frag_a(unsigned r[4], At at, int row0, int col0) {
    int lane = threadIdx.x % WARP_SIZE, g = lane / 4, c = col0 + 2 * (lane % 4);
    r[0] = pack_bf16(at(row0 + g, c), at(row0 + g, c + 1));
    r[1] = pack_bf16(at(row0 + g + 8, c), at(row0 + g + 8, c + 1));
    r[2] = pack_bf16(at(row0 + g, c + 8), at(row0 + g, c + 9));
    r[3] = pack_bf16(at(row0 + g + 8, c + 8), at(row0 + g + 8, c + 9));
}
// B from a k × n tile: rows (k) row0 .. row0+15, columns (n) col0 .. col0+7.
template <typename At>
__device__ __forceinline__ void frag_b(unsigned r[2], At at, int row0, int col0) {
    int lane = threadIdx.x % WARP_SIZE, n = col0 + lane / 4, k = row0 + 2 * (lane % 4);
    r[0] = pack_bf16(at(k, n), at(k + 1, n));
    r[1] = pack_bf16(at(k + 8, n), at(k + 9, n));
}
// B from its transpose, an n × k tile: rows (n) row0 .. row0+7, columns (k) col0 .. col0+15.
template <typename At>
__device__ __forceinline__ void frag_bt(unsigned r[2], At at, int row0, int col0) {
    int lane = threadIdx.x % WARP_SIZE, n = row0 + lane / 4, k = col0 + 2 * (lane % 4);
    r[0] = pack_bf16(at(n, k), at(n, k + 1));
    r[1] = pack_bf16(at(n, k + 8), at(n, k + 9));
}
// The A fragment of a 16×16 tile held as two 16×8 accumulators (columns
// 0..7 and 8..15), rounded to bf16: their layouts line up, so no data
// moves between lanes (flash attention's P and dS).
__device__ __forceinline__ void frag_a_from_acc(unsigned r[4], const float acc[2][4]) {
    r[0] = pack_bf16(from_float<bf16>(acc[0][0]), from_float<bf16>(acc[0][1]));
    r[1] = pack_bf16(from_float<bf16>(acc[0][2]), from_float<bf16>(acc[0][3]));
    r[2] = pack_bf16(from_float<bf16>(acc[1][0]), from_float<bf16>(acc[1][1]));
    r[3] = pack_bf16(from_float<bf16>(acc[1][2]), from_float<bf16>(acc[1][3]));
}
// C or D: a row-major 16×8 fp32 tile.
__device__ __forceinline__ void load_c_16x8(float r[4], const float* c, int ld) {
    int lane = threadIdx.x % WARP_SIZE, g = lane / 4, t = lane % 4;
    r[0] = c[g * ld + 2 * t];
    r[1] = c[g * ld + 2 * t + 1];
    r[2] = c[(g + 8) * ld + 2 * t];
    r[3] = c[(g + 8) * ld + 2 * t + 1];
}
__device__ __forceinline__ void store_c_16x8(float* c, const float r[4], int ld) {
    int lane = threadIdx.x % WARP_SIZE, g = lane / 4, t = lane % 4;
    c[g * ld + 2 * t] = r[0];
    c[g * ld + 2 * t + 1] = r[1];
    c[(g + 8) * ld + 2 * t] = r[2];
    c[(g + 8) * ld + 2 * t + 1] = r[3];
}

// `params` and `args` are parenthesised lists; `params` names the storage
// type floatX, which each namespace binds.
#define F32_AND_BF16(name, params, args)                 \
    namespace storage_f32 {                              \
    typedef float floatX;                                     \
    extern "C" __global__ void name##_f32 params {       \
        name<floatX> args;                                    \
    }                                                    \
    }                                                    \
    namespace storage_bf16 {                             \
    typedef bf16 floatX;                                      \
    extern "C" __global__ void name##_bf16 params {      \
        name<floatX> args;                                    \
    }                                                    \
    }                                                    \
    using storage_f32::name##_f32;                       \
    using storage_bf16::name##_bf16;

// Reductions by a combining operation: a warp by xor-shuffles (every lane
// gets the result), a 1-D block (size a multiple of 32, at most 1024)
// through `scratch`, 32 values of shared memory; the block reduction's
// leading barrier lets a caller reuse `scratch` for consecutive reductions.
struct SumOp {
    template <typename T>
    __device__ __forceinline__ static T apply(T a, T b) { return a + b; }
};
struct MaxOp {
    __device__ __forceinline__ static float apply(float a, float b) { return fmaxf(a, b); }
};

template <typename Op, typename T>
__device__ __forceinline__ T warp_reduce(T v) {
    for (int o = 16; o > 0; o >>= 1) v = Op::apply(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

template <typename Op, typename T>
__device__ __forceinline__ T block_reduce(T v, T* scratch, T identity) {
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    v = warp_reduce<Op>(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : identity;
    return warp_reduce<Op>(v);
}

__device__ __forceinline__ float warp_sum(float v) { return warp_reduce<SumOp>(v); }
__device__ __forceinline__ float warp_max(float v) { return warp_reduce<MaxOp>(v); }
__device__ __forceinline__ float block_sum(float v, float* scratch) { return block_reduce<SumOp>(v, scratch, 0.0f); }
__device__ __forceinline__ float block_max(float v, float* scratch) { return block_reduce<MaxOp>(v, scratch, NEG_INF); }
__device__ __forceinline__ double block_sum_f64(double v, double* scratch) { return block_reduce<SumOp>(v, scratch, 0.0); }
