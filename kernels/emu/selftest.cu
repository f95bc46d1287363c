// Kernels that test the emulation itself (compiled only into it): warp
// shuffles against their CUDA definitions, block barriers, and the
// detection of a barrier inside divergent code.
#include "../common.cuh"

// out[i] = the value each shuffle returns to thread i of a 64-thread block,
// with in[i] = i: [xor 5 | down 3 | idx 7 (width 16) | block sum | warp sum].
extern "C" __global__ void emu_selftest_shuffles(float* out, const float* in) {
    __shared__ float scratch[32];
    int i = threadIdx.x, n = blockDim.x;
    float v = in[i];
    out[i] = __shfl_xor_sync(FULL_MASK, v, 5);
    out[n + i] = __shfl_down_sync(FULL_MASK, v, 3);
    out[2 * n + i] = __shfl_sync(FULL_MASK, v, 7, 16);
    out[3 * n + i] = block_sum(v, scratch);
    out[4 * n + i] = warp_sum(v);
}

// Half of a warp waits at the block barrier while the other half waits
// for it in a shuffle: a hang on a GPU.
extern "C" __global__ void emu_selftest_divergent_barrier(float* out) {
    float v = 1.0f;
    if (threadIdx.x < 16) __syncthreads();
    else v = warp_sum(v);
    out[threadIdx.x] = v;
}

// A race: each thread reads what its left neighbour wrote, with no barrier
// in between. Run first to last, the value is there by luck; run last to
// first (odd blocks), it is not, and the NaN fill shows it.
extern "C" __global__ void emu_selftest_missing_barrier(float* out) {
    __shared__ float s[64];
    s[threadIdx.x] = (float)threadIdx.x;
    out[blockIdx.x * blockDim.x + threadIdx.x] = threadIdx.x > 0 ? s[threadIdx.x - 1] : 0.0f;
}
