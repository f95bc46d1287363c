// The tensor-core building block on its own (kernels/common.cuh's
// mma_16816 and fragment loaders), before any kernel leans on it. The PTX
// instruction cannot run in the CPU emulation, so the emulation uses the
// warp-shuffle twin, which follows the PTX ISA's fragment layout; this
// kernel lets `dtrain check gpu` hold the hardware instruction to that twin
// and to a plain product on the host — proving the layout and the loaders
// on a real GPU the first time one runs them — and lets the emulated tests
// hold the twin to the host product.
#include "common.cuh"

// One warp. d[0..128) = A·B + C and d[128..256) = A·Btᵀ, all 16×8
// row-major: A 16×16 and B 16×8 and Bt 8×16 row-major bf16, C fp32.
// `shuffled` selects the shuffle twin instead of the tensor core.
extern "C" __global__ void mma_selftest(float* __restrict__ d, const bf16* __restrict__ a,
                                        const bf16* __restrict__ b, const bf16* __restrict__ bt,
                                        const float* __restrict__ c, int shuffled) {
    unsigned ra[4], rb[2], rbt[2];
    float rc[4], rd[4], zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    frag_a(ra, [&](int r, int c) { return a[r * 16 + c]; }, 0, 0);
    frag_b(rb, [&](int r, int c) { return b[r * 8 + c]; }, 0, 0);
    frag_bt(rbt, [&](int r, int c) { return bt[r * 16 + c]; }, 0, 0);
    load_c_16x8(rc, c, 8);
    if (shuffled)
        mma_16816_shuffled(rd, ra, rb, rc);
    else
        mma_16816(rd, ra, rb, rc);
    store_c_16x8(d, rd, 8);
    if (shuffled)
        mma_16816_shuffled(rd, ra, rbt, zero);
    else
        mma_16816(rd, ra, rbt, zero);
    store_c_16x8(d + 128, rd, 8);
}
