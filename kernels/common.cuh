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
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
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
