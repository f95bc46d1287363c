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
#include "common.cuh"

extern "C" __global__ void adamw(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                 float* __restrict__ v, long long n, float beta1, float beta2, float eps,
                                 float decay, float grad_scale, float step_size, float bc2_sqrt) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float w = p[i] * decay;
        float gi = g[i] * grad_scale;
        float mi = m[i] + (gi - m[i]) * (1.0f - beta1);
        float vi = v[i] * beta2 + (1.0f - beta2) * gi * gi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = w - step_size * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
}
