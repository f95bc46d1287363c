// Random projections of the gradient: the twin of
// src/allreduce/projection.rs (the CPU's `Projector`, see there for what
// the four ±1 vectors are and why a validator checks them).
//
// Why on the device: a miner reports, after every batch, the projections
// of its whole accumulated gradient. Copying the gradient to the host for
// that (0.5 GB for GPT-2 124M) would cost about as much as the batch.
//
// Deterministic and without atomics, as the sum of squares in tensor.cu:
// each CUDA block takes a fixed run of 64-element sign blocks (the unit in
// which the signs come, one 64-bit hash per vector), a thread sums ±x of a
// sign block in f32 and adds that into its f64 accumulators; the block
// writes K+1 partials (the four projections and Σx²), the host adds them
// in block order. The order differs from the CPU's, so the two engines
// agree to rounding (~1e-7 of the norm), far inside every tolerance a
// projection is compared with.
#include "common.cuh"

// SplitMix64's finaliser, as `mix` in projection.rs.
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// partial[5·blk + j] = Σ rⱼ[e]·x[e] (j < 4) and partial[5·blk + 4] = Σ x[e]²
// over the elements of sign blocks first + blk·per_blocks .. of the vector
// whose element 0 is x[0] = element `offset`. Block: 256 threads.
extern "C" __global__ void project_partial(double* __restrict__ partial, const float* __restrict__ x, long long n,
                                           long long offset, long long s0, long long s1, long long s2, long long s3,
                                           long long per_blocks) {
    __shared__ double scratch[32];
    const unsigned long long seeds[4] = {(unsigned long long)s0, (unsigned long long)s1, (unsigned long long)s2,
                                         (unsigned long long)s3};
    long long first = offset / 64, last = (offset + n + 63) / 64;
    long long b0 = first + (long long)blockIdx.x * per_blocks;
    long long b1 = b0 + per_blocks < last ? b0 + per_blocks : last;
    double acc[5] = {0.0, 0.0, 0.0, 0.0, 0.0};
    for (long long b = b0 + threadIdx.x; b < b1; b += blockDim.x) {
        long long e0 = b * 64 > offset ? b * 64 : offset;
        long long e1 = b * 64 + 64 < offset + n ? b * 64 + 64 : offset + n;
        unsigned long long w[4];
        for (int j = 0; j < 4; j++) w[j] = mix64(seeds[j] ^ ((unsigned long long)b * 0x9E3779B97F4A7C15ull));
        float s[4] = {0.f, 0.f, 0.f, 0.f}, q = 0.f;
        for (long long e = e0; e < e1; e++) {
            float v = x[e - offset];
            int bit = (int)(e & 63);
            for (int j = 0; j < 4; j++) s[j] += ((w[j] >> bit) & 1ull) ? -v : v;
            q += v * v;
        }
        for (int j = 0; j < 4; j++) acc[j] += (double)s[j];
        acc[4] += (double)q;
    }
    for (int k = 0; k < 5; k++) {
        double t = block_sum_f64(acc[k], scratch);
        if (threadIdx.x == 0) partial[5 * (long long)blockIdx.x + k] = t;
    }
}
