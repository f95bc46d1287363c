// What surrounds the matrix products of the linear layers (twin of
// src/engine/cpu/matmul.rs); the products themselves go to cuBLAS(Lt),
// which also adds the bias and the residual in the forward pass (its bias
// epilogue and separate C matrix), so no kernel here touches the output.
//
// The bias gradient is a column sum over all rows, done without atomics
// like layernorm's: per chunk of 64 rows into scratch, then the chunks
// added in order — the CPU engine's order exactly (cuBLASLt's bias-gradient
// epilogue would be neither deterministic in that way nor accumulating).
// Inputs are of the storage type; the bias gradient is fp32.
#include "common.cuh"

#define MM_ROW_CHUNK 64

// partial[chunk, c] = Σ x[r, c] over the chunk's rows. Grid: (ceil(C/block), chunks).
template <typename floatX>
__device__ __forceinline__ void column_sum_partial(float* __restrict__ partial, const floatX* __restrict__ x, int rows,
                                                   int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
    if (c >= C) return;
    int r0 = chunk * MM_ROW_CHUNK, r1 = min(r0 + MM_ROW_CHUNK, rows);
    float acc = 0.0f;
    for (int r = r0; r < r1; r++) acc += to_float(x[(long long)r * C + c]);
    partial[(long long)chunk * C + c] = acc;
}
F32_AND_BF16(column_sum_partial, (float* __restrict__ partial, const floatX* __restrict__ x, int rows, int C),
             (partial, x, rows, C))

// dst[c] += Σ_chunks partial[chunk, c], chunks in order. Grid: ceil(C/block).
extern "C" __global__ void column_sum_add(float* __restrict__ dst, const float* __restrict__ partial, int chunks,
                                          int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float acc = dst[c];
    for (int k = 0; k < chunks; k++) acc += partial[(long long)k * C + c];
    dst[c] = acc;
}
