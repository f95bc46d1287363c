// The all-reduce's wire codecs on the GPU (twin of src/allreduce/codec.rs):
// a gradient is encoded where it lives, so only the encoded bytes cross
// PCIe (2 bytes a value for fp16/bf16, 1 + 4/block for int8 instead of 4),
// and the averaged chunks that come back are decoded straight into the
// gradient buffer.
//
// The encoded bytes must equal the CPU codec's bit for bit (peers on CPUs
// and GPUs exchange them, and every peer decodes the owner's bytes to the
// same values): fp16 clamps to ±65504 first (nothing becomes inf), then
// both half formats round to nearest even, as the `half` crate does;
// int8 keeps one f32 scale per block (max|x| / 127, all scales first, then
// the values), quantises with round-half-even, and computes the block max
// exactly (max is order-independent), so the scales match too.
//
// Element-wise kernels with grid-stride loops; int8 encoding is one warp
// per block of values (a warp max, then each lane quantises its values).
#include "common.cuh"

#define CODEC_F16_MAX 65504.0f

extern "C" __global__ void codec_encode_f16(unsigned short* __restrict__ dst, const float* __restrict__ src,
                                            long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        dst[i] = f16_bits(fminf(fmaxf(src[i], -CODEC_F16_MAX), CODEC_F16_MAX));
    }
}

extern "C" __global__ void codec_encode_bf16(unsigned short* __restrict__ dst, const float* __restrict__ src,
                                             long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        dst[i] = bf16_bits(src[i]);
    }
}

extern "C" __global__ void codec_decode_f16(float* __restrict__ dst, const unsigned short* __restrict__ src,
                                            long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        dst[i] = f16_value(src[i]);
    }
}

extern "C" __global__ void codec_decode_bf16(float* __restrict__ dst, const unsigned short* __restrict__ src,
                                             long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        dst[i] = bf16_value(src[i]);
    }
}

// dst = [scale of each block (f32) | one int8 per value]. One warp per
// block of values; block: 256 threads = 8 warps.
extern "C" __global__ void codec_encode_int8(unsigned char* __restrict__ dst, const float* __restrict__ src,
                                             long long n, int block) {
    int lane = threadIdx.x % WARP_SIZE;
    long long blocks = (n + block - 1) / block;
    long long k = (long long)blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (k >= blocks) return;  // whole warps leave together
    long long s = k * block, e = s + block < n ? s + block : n;
    float m = 0.0f;
    for (long long i = s + lane; i < e; i += WARP_SIZE) m = fmaxf(m, fabsf(src[i]));
    m = warp_max(m);
    float scale = m / 127.0f;
    float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    if (lane == 0) reinterpret_cast<float*>(dst)[k] = scale;
    unsigned char* q = dst + 4 * blocks;
    for (long long i = s + lane; i < e; i += WARP_SIZE) q[i] = (unsigned char)(signed char)rintf(src[i] * inv);
}

// dst[i] = q[i] · scale[i / block], the same bytes layout.
extern "C" __global__ void codec_decode_int8(float* __restrict__ dst, const unsigned char* __restrict__ src,
                                             long long n, int block) {
    long long blocks = (n + block - 1) / block;
    const float* scales = reinterpret_cast<const float*>(src);
    const unsigned char* q = src + 4 * blocks;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        dst[i] = (float)(signed char)q[i] * scales[i / block];
}
