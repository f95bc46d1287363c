// What surrounds the matrix products of the linear layers (twin of
// src/engine/cpu/matmul.rs); the products themselves go to cuBLAS(Lt).
//
// Forward pre-fills the output with bias (+ residual) and lets the GEMM
// accumulate onto it, as the CPU engine does: one pass over the output
// fewer than adding them afterwards, and the same rounding order. The bias
// gradient is a column sum over all rows, done without atomics like
// layernorm's: per chunk of 64 rows into scratch, then the chunks added in
// order — the CPU engine's order exactly. Outputs and inputs are of the
// storage type; the bias gradient is fp32.
#include "common.cuh"

#define MM_ROW_CHUNK 64

// out[r, :] = bias (if any) + residual[r, :] (if any). Grid-stride over n·oc.
template <typename floatX>
__device__ __forceinline__ void matmul_prefill(floatX* __restrict__ out, const floatX* __restrict__ bias,
                                               const floatX* __restrict__ residual, long long rows, int oc, int has_bias,
                                               int has_residual) {
    long long n = rows * oc;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float v = has_bias ? to_float(bias[i % oc]) : 0.0f;
        out[i] = from_float<floatX>(has_residual ? (has_bias ? v + to_float(residual[i]) : to_float(residual[i])) : v);
    }
}
F32_AND_BF16(matmul_prefill,
             (floatX* __restrict__ out, const floatX* __restrict__ bias, const floatX* __restrict__ residual, long long rows, int oc,
              int has_bias, int has_residual),
             (out, bias, residual, rows, oc, has_bias, has_residual))

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
