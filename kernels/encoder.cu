// Token + position embedding, forward and backward (twin of
// src/engine/cpu/encoder.rs).
//
// Forward is one thread per output float: a pure gather, memory-bound, and
// coalesced because consecutive threads read consecutive channels.
//
// Backward must be deterministic, so it uses no float atomics: a token that
// appears many times in the batch would otherwise be summed in whatever
// order the atomics land. The host sorts the positions by token (stable,
// so each token's positions keep their batch order) and passes the runs;
// one block row per distinct token walks its positions in that order, one
// thread per channel. Each gradient is accumulated into the existing value
// in the same order as the CPU engine, which makes the two bit-identical
// where neither contracts to FMA.
//
// The embeddings and the output are of the storage type floatX; the gradients
// of the embeddings are fp32 in both modes.
#include "common.cuh"

template <typename floatX>
__device__ __forceinline__ void encoder_forward(floatX* __restrict__ out, const unsigned* __restrict__ tokens,
                                                const floatX* __restrict__ wte, const floatX* __restrict__ wpe, int B, int T,
                                                int C) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)B * T * C) return;
    long long bt = i / C;
    int c = (int)(i % C), t = (int)(bt % T);
    out[i] = from_float<floatX>(to_float(wte[(long long)tokens[bt] * C + c]) + to_float(wpe[(long long)t * C + c]));
}
F32_AND_BF16(encoder_forward,
             (floatX* __restrict__ out, const unsigned* __restrict__ tokens, const floatX* __restrict__ wte,
              const floatX* __restrict__ wpe, int B, int T, int C),
             (out, tokens, wte, wpe, B, T, C))

// dwpe[t, c] += Σ_b dout[b, t, c], b in order. Grid: (ceil(C/block), floatX).
template <typename floatX>
__device__ __forceinline__ void encoder_backward_wpe(float* __restrict__ dwpe, const floatX* __restrict__ dout, int B,
                                                     int T, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
    if (c >= C) return;
    float acc = dwpe[(long long)t * C + c];
    for (int b = 0; b < B; b++) acc += to_float(dout[((long long)b * T + t) * C + c]);
    dwpe[(long long)t * C + c] = acc;
}
F32_AND_BF16(encoder_backward_wpe, (float* __restrict__ dwpe, const floatX* __restrict__ dout, int B, int T, int C),
             (dwpe, dout, B, T, C))

// dwte[token] += dout[position] over the token's positions, in order.
// `order` lists positions sorted by token; run r is order[starts[r] ..
// starts[r + 1]]. Grid: (ceil(C/block), runs).
template <typename floatX>
__device__ __forceinline__ void encoder_backward_wte(float* __restrict__ dwte, const floatX* __restrict__ dout,
                                                     const unsigned* __restrict__ tokens,
                                                     const unsigned* __restrict__ order,
                                                     const unsigned* __restrict__ starts, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, r = blockIdx.y;
    if (c >= C) return;
    unsigned s = starts[r], e = starts[r + 1];
    float* d = dwte + (long long)tokens[order[s]] * C + c;
    float acc = *d;
    for (unsigned k = s; k < e; k++) acc += to_float(dout[(long long)order[k] * C + c]);
    *d = acc;
}
F32_AND_BF16(encoder_backward_wte,
             (float* __restrict__ dwte, const floatX* __restrict__ dout, const unsigned* __restrict__ tokens,
              const unsigned* __restrict__ order, const unsigned* __restrict__ starts, int C),
             (dwte, dout, tokens, order, starts, C))
