// Fused softmax + cross-entropy + logit gradient (twin of
// src/engine/cpu/classifier.rs).
//
// One block per row of the 50,304-wide logits. A first sweep keeps a
// running maximum and a running sum of exponentials rescaled whenever the
// maximum grows (the online softmax), so the row is read once for both
// statistics; the block then combines the threads' (max, sum) pairs. When
// training, a second sweep overwrites the logits with
// dscale·(softmax − onehot) in place: the probabilities are never stored.
// The target's logit is read before any thread writes. Logits (and their
// gradient) are of the storage type; the statistics and the loss are fp32.
#include "common.cuh"

// Block: 1024 threads (a multiple of 32); shared: 32 floats. has_grad
// selects the gradient.
template <typename floatX>
__device__ __forceinline__ void crossentropy(float* __restrict__ losses, floatX* __restrict__ logits,
                                             const unsigned* __restrict__ targets, float dscale, int has_grad, int V,
                                             int VP) {
    DYNAMIC_SHARED(float, scratch);
    floatX* x = logits + (long long)blockIdx.x * VP;
    unsigned tgt = targets[blockIdx.x];
    float target_logit = to_float(x[tgt]);
    float m = NEG_INF, s = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float v = to_float(x[i]);
        if (v > m) {
            s *= expf(m - v);
            m = v;
        }
        s += expf(v - m);
    }
    float row_max = block_max(m, scratch);
    float sum = block_sum(m == NEG_INF ? 0.0f : s * expf(m - row_max), scratch);
    if (threadIdx.x == 0) losses[blockIdx.x] = row_max - target_logit + logf(sum);
    if (!has_grad) return;
    __syncthreads();  // every thread has read the target's logit
    float k = dscale / sum;
    for (int i = threadIdx.x; i < VP; i += blockDim.x) {
        float g = i < V ? expf(to_float(x[i]) - row_max) * k : 0.0f;
        x[i] = from_float<floatX>((unsigned)i == tgt ? g - dscale : g);
    }
}
F32_AND_BF16(crossentropy,
             (float* __restrict__ losses, floatX* __restrict__ logits, const unsigned* __restrict__ targets, float dscale,
              int has_grad, int V, int VP),
             (losses, logits, targets, dscale, has_grad, V, VP))
