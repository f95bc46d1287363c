// Adam-family parameter updates (twin of src/engine/cpu/optim.rs).
//
// Element-wise and memory-bound: each element's four floats (parameter,
// gradient, two moments) are read and three written once, with a
// grid-stride loop. The bias corrections and step size are computed on the
// host exactly as the CPU engine does, and each element's arithmetic
// follows PyTorch's single-tensor AdamW operation for operation, so the
// emulated kernel and the CPU engine agree bit for bit. The gradient scale
// folds the mean over the accumulated samples and the clipping into the
// read of the gradient.
//
// LAMB needs each tensor's ‖w‖ and ‖u‖ before it can step, so it runs in
// two phases: the moments (with per-block partial sums of squares in f64,
// added on the host in block order: deterministic), then the update.
//
// `p` is always fp32: the weights themselves, or in the bf16 mode the fp32
// master copy, with `p16` the bf16 weights the other kernels read, written
// from the new master value in the same pass (null in the fp32 mode).
#include "common.cuh"

extern "C" __global__ void adamw(float* __restrict__ p, unsigned short* __restrict__ p16, const float* __restrict__ g,
                                 float* __restrict__ m, float* __restrict__ v, long long n, float beta1, float beta2, float eps,
                                 float decay, float grad_scale, float step_size, float bc2_sqrt) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float w = p[i] * decay;
        float gi = g[i] * grad_scale;
        float mi = m[i] + (gi - m[i]) * (1.0f - beta1);
        float vi = v[i] * beta2 + (1.0f - beta2) * gi * gi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        float w_new = w - step_size * mi / denom;
        p[i] = w_new;
        if (p16) p16[i] = bf16_bits(w_new);
        m[i] = mi;
        v[i] = vi;
    }
}

__device__ __forceinline__ float lamb_update(float w, float m, float v, float bc1, float bc2, float eps, float wd) {
    return (m / bc1) / (sqrtf(v / bc2) + eps) + wd * w;
}

// Moments, and partial[2·block] = Σ w², partial[2·block + 1] = Σ u² over the
// block's slice of `per` elements. Block: 256.
extern "C" __global__ void lamb_moments(double* __restrict__ partial, const float* __restrict__ p,
                                        const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
                                        long long n, long long per, float beta1, float beta2, float eps, float wd,
                                        float grad_scale, float bc1, float bc2) {
    __shared__ double scratch[32];
    long long s = (long long)blockIdx.x * per, e = s + per < n ? s + per : n;
    double w_sq = 0.0, u_sq = 0.0;
    for (long long i = s + threadIdx.x; i < e; i += blockDim.x) {
        float gi = g[i] * grad_scale;
        float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        float u = lamb_update(p[i], mi, vi, bc1, bc2, eps, wd);
        m[i] = mi;
        v[i] = vi;
        w_sq += (double)p[i] * p[i];
        u_sq += (double)u * u;
    }
    w_sq = block_sum_f64(w_sq, scratch);
    u_sq = block_sum_f64(u_sq, scratch);
    if (threadIdx.x == 0) {
        partial[2 * blockIdx.x] = w_sq;
        partial[2 * blockIdx.x + 1] = u_sq;
    }
}

extern "C" __global__ void lamb_apply(float* __restrict__ p, unsigned short* __restrict__ p16,
                                      const float* __restrict__ m, const float* __restrict__ v, long long n, float eps,
                                      float wd, float bc1, float bc2, float step_size) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float w = p[i] - step_size * lamb_update(p[i], m[i], v[i], bc1, bc2, eps, wd);
        p[i] = w;
        if (p16) p16[i] = bf16_bits(w);
    }
}
