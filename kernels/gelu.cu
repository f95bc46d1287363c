// GELU, tanh approximation as GPT-2 defines it (twin of
// src/engine/cpu/gelu.rs). Element-wise and memory-bound: one thread per
// element with a grid-stride loop, the same σ(2u) form as the CPU engine
// (one exponential instead of tanh). Both kernels may run in place.
#include "common.cuh"

#define GELU_SQRT2_OVER_PI 0.7978846f
#define GELU_K 0.044715f

__device__ __forceinline__ float gelu_sigma(float x) {
    float u = GELU_SQRT2_OVER_PI * (x + GELU_K * x * x * x);
    return 1.0f / (1.0f + expf(-2.0f * u));
}

template <typename floatX>
__device__ __forceinline__ void gelu_forward(floatX* out, const floatX* inp, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float x = to_float(inp[i]);
        out[i] = from_float<floatX>(x * gelu_sigma(x));
    }
}
F32_AND_BF16(gelu_forward, (floatX* out, const floatX* inp, long long n), (out, inp, n))

// dinp = dout · gelu'(inp); dinp may alias dout.
template <typename floatX>
__device__ __forceinline__ void gelu_backward(floatX* dinp, const floatX* inp, const floatX* dout, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float x = to_float(inp[i]), s = gelu_sigma(x);
        float du = GELU_SQRT2_OVER_PI * (1.0f + 3.0f * GELU_K * x * x);
        dinp[i] = from_float<floatX>(to_float(dout[i]) * (s + 2.0f * x * s * (1.0f - s) * du));
    }
}
F32_AND_BF16(gelu_backward, (floatX* dinp, const floatX* inp, const floatX* dout, long long n), (dinp, inp, dout, n))
