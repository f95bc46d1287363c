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
// is the CPU engine's summation order exactly.
#include "common.cuh"

#define LN_EPS 1e-5f
#define LN_ROW_CHUNK 64

// Block: a multiple of 32 threads, one warp per row.
extern "C" __global__ void layernorm_forward(float* __restrict__ out, float* __restrict__ mean,
                                             float* __restrict__ rstd, const float* __restrict__ inp,
                                             const float* __restrict__ w, const float* __restrict__ bias, int N,
                                             int C) {
    int lane = threadIdx.x % WARP_SIZE;
    long long row = (long long)blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;  // whole warps leave together
    const float* x = inp + row * C;
    float s = 0.0f;
    for (int i = lane; i < C; i += WARP_SIZE) s += x[i];
    float m = warp_sum(s) / C;
    float v = 0.0f;
    for (int i = lane; i < C; i += WARP_SIZE) v += (x[i] - m) * (x[i] - m);
    float rs = 1.0f / sqrtf(warp_sum(v) / C + LN_EPS);
    float* o = out + row * C;
    for (int i = lane; i < C; i += WARP_SIZE) o[i] = (x[i] - m) * rs * w[i] + bias[i];
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = rs;
    }
}

// dinp += (w·dy − mean(w·dy) − norm·mean(w·dy·norm))·rstd, one warp per row.
extern "C" __global__ void layernorm_backward_input(float* __restrict__ dinp, const float* __restrict__ dout,
                                                    const float* __restrict__ inp, const float* __restrict__ w,
                                                    const float* __restrict__ mean, const float* __restrict__ rstd,
                                                    int N, int C) {
    int lane = threadIdx.x % WARP_SIZE;
    long long row = (long long)blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;
    const float *x = inp + row * C, *dy = dout + row * C;
    float mu = mean[row], rs = rstd[row];
    float s1 = 0.0f, s2 = 0.0f;
    for (int i = lane; i < C; i += WARP_SIZE) {
        float dnorm = w[i] * dy[i];
        s1 += dnorm;
        s2 += dnorm * (x[i] - mu) * rs;
    }
    float dnorm_mean = warp_sum(s1) / C, dnorm_norm_mean = warp_sum(s2) / C;
    float* di = dinp + row * C;
    for (int i = lane; i < C; i += WARP_SIZE) {
        float norm = (x[i] - mu) * rs;
        di[i] += (w[i] * dy[i] - dnorm_mean - norm * dnorm_norm_mean) * rs;
    }
}

// Column sums of one chunk of rows: partial[chunk] = [Σ norm·dy | Σ dy].
// Grid: (ceil(C/block), chunks).
extern "C" __global__ void layernorm_backward_params_partial(float* __restrict__ partial,
                                                             const float* __restrict__ dout,
                                                             const float* __restrict__ inp,
                                                             const float* __restrict__ mean,
                                                             const float* __restrict__ rstd, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
    if (c >= C) return;
    int r0 = chunk * LN_ROW_CHUNK, r1 = min(r0 + LN_ROW_CHUNK, N);
    float dw = 0.0f, db = 0.0f;
    for (int r = r0; r < r1; r++) {
        float dy = dout[(long long)r * C + c];
        dw += (inp[(long long)r * C + c] - mean[r]) * rstd[r] * dy;
        db += dy;
    }
    partial[(long long)chunk * 2 * C + c] = dw;
    partial[(long long)chunk * 2 * C + C + c] = db;
}

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
