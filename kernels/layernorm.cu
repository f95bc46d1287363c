// Layer normalisation, forward and backward (twin of
// src/engine/cpu/layernorm.rs).
//
// One warp per row: GPT-2's rows are 768 to 1600 floats, which a warp
// covers in a few coalesced sweeps, and the row statistics need only warp
// shuffles, no shared memory or block barriers. The weight and bias
// gradients are column sums over all rows; rather than float atomics
// (non-deterministic), rows are cut into chunks of 64 (the CPU engine's
// ROW_CHUNK): one kernel writes each chunk's column sums to a scratch
// buffer, a second adds the chunks into dw and dbias in chunk order. That
// is the CPU engine's summation order exactly. Rows, weights and the input
// gradient are of the storage type; the statistics and the weight and bias
// gradients are fp32.
#include "common.cuh"

#define LN_EPS 1e-5f
#define LN_ROW_CHUNK 64

// Block: a multiple of 32 threads, one warp per row.
template <typename floatX>
__device__ __forceinline__ void layernorm_forward(floatX* __restrict__ out, float* __restrict__ mean,
                                                  float* __restrict__ rstd, const floatX* __restrict__ inp,
                                                  const floatX* __restrict__ w, const floatX* __restrict__ bias, int N, int C) {
    int lane = threadIdx.x % WARP_SIZE;
    long long row = (long long)blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;  // whole warps leave together
    const floatX* x = inp + row * C;
    float s = 0.0f;
    for (int i = lane; i < C; i += WARP_SIZE) s += to_float(x[i]);
    float m = warp_sum(s) / C;
    float v = 0.0f;
    for (int i = lane; i < C; i += WARP_SIZE) v += (to_float(x[i]) - m) * (to_float(x[i]) - m);
    float rs = 1.0f / sqrtf(warp_sum(v) / C + LN_EPS);
    floatX* o = out + row * C;
    for (int i = lane; i < C; i += WARP_SIZE)
        o[i] = from_float<floatX>((to_float(x[i]) - m) * rs * to_float(w[i]) + to_float(bias[i]));
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = rs;
    }
}
F32_AND_BF16(layernorm_forward,
             (floatX* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd, const floatX* __restrict__ inp,
              const floatX* __restrict__ w, const floatX* __restrict__ bias, int N, int C),
             (out, mean, rstd, inp, w, bias, N, C))

// dinp += (w·dy − mean(w·dy) − norm·mean(w·dy·norm))·rstd, one warp per row.
template <typename floatX>
__device__ __forceinline__ void layernorm_backward_input(floatX* __restrict__ dinp, const floatX* __restrict__ dout,
                                                         const floatX* __restrict__ inp, const floatX* __restrict__ w,
                                                         const float* __restrict__ mean,
                                                         const float* __restrict__ rstd, int N, int C) {
    int lane = threadIdx.x % WARP_SIZE;
    long long row = (long long)blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;
    const floatX *x = inp + row * C, *dy = dout + row * C;
    float mu = mean[row], rs = rstd[row];
    float s1 = 0.0f, s2 = 0.0f;
    for (int i = lane; i < C; i += WARP_SIZE) {
        float dnorm = to_float(w[i]) * to_float(dy[i]);
        s1 += dnorm;
        s2 += dnorm * (to_float(x[i]) - mu) * rs;
    }
    float dnorm_mean = warp_sum(s1) / C, dnorm_norm_mean = warp_sum(s2) / C;
    floatX* di = dinp + row * C;
    for (int i = lane; i < C; i += WARP_SIZE) {
        float norm = (to_float(x[i]) - mu) * rs;
        float d = (to_float(w[i]) * to_float(dy[i]) - dnorm_mean - norm * dnorm_norm_mean) * rs;
        di[i] = from_float<floatX>(to_float(di[i]) + d);
    }
}
F32_AND_BF16(layernorm_backward_input,
             (floatX* __restrict__ dinp, const floatX* __restrict__ dout, const floatX* __restrict__ inp, const floatX* __restrict__ w,
              const float* __restrict__ mean, const float* __restrict__ rstd, int N, int C),
             (dinp, dout, inp, w, mean, rstd, N, C))

// Column sums of one chunk of rows: partial[chunk] = [Σ norm·dy | Σ dy].
// Grid: (ceil(C/block), chunks).
template <typename floatX>
__device__ __forceinline__ void layernorm_backward_params_partial(float* __restrict__ partial,
                                                                  const floatX* __restrict__ dout,
                                                                  const floatX* __restrict__ inp,
                                                                  const float* __restrict__ mean,
                                                                  const float* __restrict__ rstd, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
    if (c >= C) return;
    int r0 = chunk * LN_ROW_CHUNK, r1 = min(r0 + LN_ROW_CHUNK, N);
    float dw = 0.0f, db = 0.0f;
    for (int r = r0; r < r1; r++) {
        float dy = to_float(dout[(long long)r * C + c]);
        dw += (to_float(inp[(long long)r * C + c]) - mean[r]) * rstd[r] * dy;
        db += dy;
    }
    partial[(long long)chunk * 2 * C + c] = dw;
    partial[(long long)chunk * 2 * C + C + c] = db;
}
F32_AND_BF16(layernorm_backward_params_partial,
             (float* __restrict__ partial, const floatX* __restrict__ dout, const floatX* __restrict__ inp,
              const float* __restrict__ mean, const float* __restrict__ rstd, int N, int C),
             (partial, dout, inp, mean, rstd, N, C))

// dw += Σ_chunks, dbias += Σ_chunks, chunks in order. Grid: ceil(C/block).
extern "C" __global__ void layernorm_backward_params_sum(float* __restrict__ dw, float* __restrict__ dbias,
                                                         const float* __restrict__ partial, int chunks, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float w = dw[c], b = dbias[c];
    for (int k = 0; k < chunks; k++) {
        w += partial[(long long)k * 2 * C + c];
        b += partial[(long long)k * 2 * C + C + c];
    }
    dw[c] = w;
    dbias[c] = b;
}
