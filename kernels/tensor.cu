// Whole-buffer helpers (twins of the element loops in
// src/engine/cpu/mod.rs): fill, scale, the sum of squares behind the
// global gradient norm, and the fp32 → bf16 cast. Only fill runs on activations (of either storage
// type); scale and the sum of squares run on the fp32 gradients.
//
// The sum of squares must be deterministic (every miner clips the same way
// given the same gradients), so it has no atomics: each block sums a fixed
// contiguous slice in f64 and writes one partial; the host adds the
// partials in block order. The slice size depends only on the length, so
// the result does not depend on the GPU.
#include "common.cuh"

template <typename floatX>
__device__ __forceinline__ void fill(floatX* x, long long n, float value) {
    floatX v = from_float<floatX>(value);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        x[i] = v;
}
F32_AND_BF16(fill, (floatX* x, long long n, float value), (x, n, value))

// The bf16 copy of fp32 values (round to nearest even): parameters written
// from the host land in their fp32 master copy and are cast here, on the
// device, rather than converted on the host and copied a second time.
extern "C" __global__ void cast_f32_to_bf16(unsigned short* __restrict__ dst, const float* __restrict__ src,
                                            long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        dst[i] = bf16_bits(src[i]);
}

extern "C" __global__ void scale(float* x, long long n, float factor) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        x[i] *= factor;
}

// partial[block] = Σ x² over x[block·per .. (block+1)·per]. Block: 256.
extern "C" __global__ void sum_squares_partial(double* __restrict__ partial, const float* __restrict__ x, long long n,
                                               long long per) {
    __shared__ double scratch[32];
    long long s = (long long)blockIdx.x * per, e = s + per < n ? s + per : n;
    double acc = 0.0;
    for (long long i = s + threadIdx.x; i < e; i += blockDim.x) acc += (double)x[i] * (double)x[i];
    acc = block_sum_f64(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}
