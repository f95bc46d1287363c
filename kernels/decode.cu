// Generation's attention for one new position, and the copy that puts a
// position's key and value into the cache (twins of `attention_decode` in
// src/engine/cpu/attention.rs and of `Engine::copy`). Why kernels of their
// own: training's attention runs T queries against T keys under a causal
// mask on the tensor cores; generation has one query per head against the
// cached positions, a few hundred thousand multiply-adds — so one block per
// head walks the cache (the position's key, then its value: len × 2c):
// scores into shared memory, the block's maximum and sum, then each thread
// one component of the weighted sum of values, in position order. The
// default through the host moved 2·len·c values over the bus per layer and
// token.
#include "common.cuh"

template <typename floatX>
__device__ __forceinline__ void attention_decode(floatX* out, const floatX* q, const floatX* kv, int len, int c, int nh) {
    // Shared: 32 floats of reduction scratch, then the len scores.
    DYNAMIC_SHARED(float, smem);
    float* scratch = smem;
    float* w = smem + 32;
    int h = blockIdx.x, hs = c / nh;
    float scale = 1.0f / sqrtf((float)hs);
    const floatX* qh = q + h * hs;
    float m = NEG_INF;
    for (int p = threadIdx.x; p < len; p += blockDim.x) {
        const floatX* k = kv + (long long)p * 2 * c + h * hs;
        float s = 0.0f;
        for (int d = 0; d < hs; d++) s += to_float(qh[d]) * to_float(k[d]);
        w[p] = scale * s;
        m = fmaxf(m, w[p]);
    }
    float row_max = block_max(m, scratch);
    float part = 0.0f;
    for (int p = threadIdx.x; p < len; p += blockDim.x) {
        float e = expf(w[p] - row_max);
        w[p] = e;
        part += e;
    }
    // (The reduction's barriers also publish every thread's w.)
    float sum = block_sum(part, scratch);
    for (int d = threadIdx.x; d < hs; d += blockDim.x) {
        const floatX* v = kv + c + h * hs + d;
        float acc = 0.0f;
        for (int p = 0; p < len; p++) acc += w[p] / sum * to_float(v[(long long)p * 2 * c]);
        out[h * hs + d] = from_float<floatX>(acc);
    }
}
F32_AND_BF16(attention_decode, (floatX* out, const floatX* q, const floatX* kv, int len, int c, int nh), (out, q, kv, len, c, nh))

template <typename floatX>
__device__ __forceinline__ void copy_act(floatX* dst, const floatX* src, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) dst[i] = src[i];
}
F32_AND_BF16(copy_act, (floatX* dst, const floatX* src, long long n), (dst, src, n))
