// Random projections of the gradient: the twin of
// src/allreduce/projection.rs (the CPU's `Projector`, see there for what
// the four sampled ±1 vectors are and why a validator checks them).
//
// Why on the device: a miner reports, after every batch, the projections
// of its whole accumulated gradient. Copying the gradient to the host for
// that (0.5 GB for GPT-2 124M) would cost about as much as the batch.
//
// Deterministic and without atomics, as the sum of squares in tensor.cu:
// each CUDA block takes a fixed run of groups (4096 elements, of which one
// 64-element block is sampled, picked by a hash); a thread takes a group,
// finds its sampled block, sums ±x over it in f32 (one 64-bit hash of
// signs per vector) and adds that into its f64 accumulators; the block
// writes K+1 partials (the four projections and Σx² over the sampled
// elements), the host adds them in block order. The order differs from
// the CPU's, so the two engines agree to rounding (~1e-7 of the norm), far
// inside every tolerance a projection is compared with. A thread reads
// 256 contiguous bytes of a group's 16 KiB: 1/64 of the vector's memory,
// in whole cache lines.
#include "common.cuh"

// Blocks per group and its log2, as GROUP_BLOCKS in projection.rs.
#define GROUP_BLOCKS 64
#define GROUP_BLOCKS_LOG2 6
#define PHI 0x9E3779B97F4A7C15ull

// SplitMix64's finaliser, as `mix` in projection.rs.
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// partial[5·blk + j] = Σ rⱼ[e]·x[e] (j < 4) and partial[5·blk + 4] = Σ x[e]²
// over the sampled elements of groups first + blk·per_groups .. of the
// vector whose element 0 is x[0] = element `offset`. Block: 256 threads.
extern "C" __global__ void project_partial(double* __restrict__ partial, const float* __restrict__ x, long long n,
                                           long long offset, long long s0, long long s1, long long s2, long long s3,
                                           long long pick, long long per_groups) {
    __shared__ double scratch[32];
    const unsigned long long seeds[4] = {(unsigned long long)s0, (unsigned long long)s1, (unsigned long long)s2,
                                         (unsigned long long)s3};
    const long long group = 64 * GROUP_BLOCKS;
    long long first = offset / group, last = (offset + n + group - 1) / group;
    long long g0 = first + (long long)blockIdx.x * per_groups;
    long long g1 = g0 + per_groups < last ? g0 + per_groups : last;
    double acc[5] = {0.0, 0.0, 0.0, 0.0, 0.0};
    for (long long g = g0 + threadIdx.x; g < g1; g += blockDim.x) {
        unsigned long long h = mix64((unsigned long long)pick ^ ((unsigned long long)g * PHI));
        long long b = g * GROUP_BLOCKS + (long long)(h >> (64 - GROUP_BLOCKS_LOG2));
        long long e0 = b * 64 > offset ? b * 64 : offset;
        long long e1 = b * 64 + 64 < offset + n ? b * 64 + 64 : offset + n;
        if (e0 >= e1) continue;
        unsigned long long w[4];
        for (int j = 0; j < 4; j++) w[j] = mix64(seeds[j] ^ ((unsigned long long)b * PHI));
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
