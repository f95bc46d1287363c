// Causal multi-head self-attention, forward and backward, flash-style
// (twin of src/engine/cpu/attention.rs).
//
// No T×T matrix is ever stored: the forward pass keeps only each query
// row's log-sum-exp (B·NH·T floats a layer), and the backward pass
// recomputes the probabilities from it. Two sets: the CUDA-core kernels
// first, shaped for clarity and exactness against the CPU engine (the fp32
// mode's; in bf16 they read bf16 and widen it to fp32 in shared memory, for
// head sizes the tensor-core set lacks); then the tensor-core set, the bf16
// mode's (see its own comments below). The CUDA-core kernels:
//
// - One warp per query row (forward, dQ) or key row (dK, dV), 8 rows per
//   block. The block walks tiles of 32 keys (or queries), loaded once into
//   shared memory for all 8 warps, rows padded by one float so that lanes
//   reading different rows of a column hit different banks.
// - Scores: lane j of the warp computes the dot product with row j of the
//   tile, so a tile needs one warp max and one warp sum, not one reduction
//   per key. Weighted sums: lanes own head dimensions (up to 4 each, head
//   size ≤ 128, unrolled so they stay in registers) and read the tile's
//   weights from the warp's slice of shared memory.
// - Online softmax in fp32: a running maximum and sum, the accumulator
//   rescaled when the maximum grows.
// - Backward without atomics, so deterministic: one kernel per query row
//   computes D_i = Σ_j P_ij·dP_ij (a first sweep) and then dQ (a second);
//   another per key row computes dK and dV from the saved log-sum-exp and D.
//   Every gradient is written (=), never accumulated, as in the CPU engine.
#include "common.cuh"

#define ATT_TILE 32
#define ATT_ROWS 8
#define ATT_HS_MAX 128
#define ATT_PER_LANE (ATT_HS_MAX / WARP_SIZE)

// Tile row `r` of part `which` (0 = Q, 1 = K, 2 = V) into `dst[r * (hs+1) + d]`.
template <typename floatX>
__device__ __forceinline__ void load_tile(float* dst, const floatX* qkv_b, int first, int T, int C, int h, int hs,
                                          int which) {
    for (int idx = threadIdx.x; idx < ATT_TILE * hs; idx += blockDim.x) {
        int r = idx / hs, d = idx % hs, row = first + r;
        dst[r * (hs + 1) + d] = row < T ? to_float(qkv_b[(long long)row * 3 * C + which * C + h * hs + d]) : 0.0f;
    }
}

// Block: ATT_ROWS warps. Grid: (ceil(T / ATT_ROWS), B·NH).
// Shared: (2·ATT_TILE·(hs+1) + ATT_ROWS·hs + ATT_ROWS·ATT_TILE) floats.
template <typename floatX>
__device__ __forceinline__ void attention_forward(floatX* __restrict__ out, float* __restrict__ lse,
                                                  const floatX* __restrict__ qkv, int B, int T, int C, int NH) {
    int hs = C / NH, b = blockIdx.y / NH, h = blockIdx.y % NH;
    int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    int i = blockIdx.x * ATT_ROWS + warp, last = min((int)(blockIdx.x + 1) * ATT_ROWS, T) - 1;
    bool live = i < T;
    DYNAMIC_SHARED(float, smem);
    float* ks = smem;
    float* vs = ks + ATT_TILE * (hs + 1);
    float* q = vs + ATT_TILE * (hs + 1) + warp * hs;
    float* p = smem + 2 * ATT_TILE * (hs + 1) + ATT_ROWS * hs + warp * ATT_TILE;
    const floatX* qkv_b = qkv + (long long)b * T * 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    if (live)
        for (int d = lane; d < hs; d += WARP_SIZE) q[d] = to_float(qkv_b[(long long)i * 3 * C + h * hs + d]) * scale;
    __syncwarp();
    float m = NEG_INF, l = 0.0f, acc[ATT_PER_LANE];
#pragma unroll
    for (int r = 0; r < ATT_PER_LANE; r++) acc[r] = 0.0f;
    for (int k0 = 0; k0 <= last; k0 += ATT_TILE) {
        __syncthreads();  // the previous tile is no longer read
        load_tile(ks, qkv_b, k0, T, C, h, hs, 1);
        load_tile(vs, qkv_b, k0, T, C, h, hs, 2);
        __syncthreads();
        if (!live || k0 > i) continue;  // warp-uniform
        int j = k0 + lane;
        float s = NEG_INF;
        if (j <= i) {
            s = 0.0f;
            for (int d = 0; d < hs; d++) s += q[d] * ks[lane * (hs + 1) + d];
        }
        float m_new = fmaxf(m, warp_max(s));
        float pj = j <= i ? expf(s - m_new) : 0.0f;
        float corr = expf(m - m_new);
        l = l * corr + warp_sum(pj);
        p[lane] = pj;
        __syncwarp();
        int n = min(ATT_TILE, i - k0 + 1);
#pragma unroll
        for (int r = 0; r < ATT_PER_LANE; r++) {
            int d = lane + r * WARP_SIZE;
            if (d < hs) {
                float a = acc[r] * corr;
                for (int jj = 0; jj < n; jj++) a += p[jj] * vs[jj * (hs + 1) + d];
                acc[r] = a;
            }
        }
        __syncwarp();  // p is rewritten by the next tile
        m = m_new;
    }
    if (!live) return;
    floatX* o = out + ((long long)b * T + i) * C + h * hs;
#pragma unroll
    for (int r = 0; r < ATT_PER_LANE; r++) {
        int d = lane + r * WARP_SIZE;
        if (d < hs) o[d] = from_float<floatX>(acc[r] / l);
    }
    if (lane == 0) lse[(long long)blockIdx.y * T + i] = m + logf(l);
}
F32_AND_BF16(attention_forward,
             (floatX* __restrict__ out, float* __restrict__ lse, const floatX* __restrict__ qkv, int B, int T, int C,
              int NH),
             (out, lse, qkv, B, T, C, NH))

// dQ, and D_i = Σ_j P_ij·dP_ij into `dsum` for the key kernel. One warp per
// query row; two sweeps over the keys (D is needed before any dS).
// Shared: (2·ATT_TILE·(hs+1) + 2·ATT_ROWS·hs + ATT_ROWS·ATT_TILE) floats.
template <typename floatX>
__device__ __forceinline__ void attention_backward_query(floatX* __restrict__ dqkv, float* __restrict__ dsum,
                                                         const floatX* __restrict__ dout,
                                                         const floatX* __restrict__ qkv, const float* __restrict__ lse,
                                                         int B, int T, int C, int NH) {
    int hs = C / NH, b = blockIdx.y / NH, h = blockIdx.y % NH;
    int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    int i = blockIdx.x * ATT_ROWS + warp, last = min((int)(blockIdx.x + 1) * ATT_ROWS, T) - 1;
    bool live = i < T;
    DYNAMIC_SHARED(float, smem);
    float* ks = smem;
    float* vs = ks + ATT_TILE * (hs + 1);
    float* q = vs + ATT_TILE * (hs + 1) + warp * hs;
    float* dy = vs + ATT_TILE * (hs + 1) + ATT_ROWS * hs + warp * hs;
    float* ds = smem + 2 * ATT_TILE * (hs + 1) + 2 * ATT_ROWS * hs + warp * ATT_TILE;
    const floatX* qkv_b = qkv + (long long)b * T * 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    float row_lse = live ? lse[(long long)blockIdx.y * T + i] : 0.0f;
    if (live)
        for (int d = lane; d < hs; d += WARP_SIZE) {
            q[d] = to_float(qkv_b[(long long)i * 3 * C + h * hs + d]) * scale;
            dy[d] = to_float(dout[((long long)b * T + i) * C + h * hs + d]);
        }
    __syncwarp();
    float d_partial = 0.0f, D = 0.0f, dq[ATT_PER_LANE];
#pragma unroll
    for (int r = 0; r < ATT_PER_LANE; r++) dq[r] = 0.0f;
    for (int sweep = 0; sweep < 2; sweep++) {
        for (int k0 = 0; k0 <= last; k0 += ATT_TILE) {
            __syncthreads();
            load_tile(ks, qkv_b, k0, T, C, h, hs, 1);
            load_tile(vs, qkv_b, k0, T, C, h, hs, 2);
            __syncthreads();
            if (!live || k0 > i) continue;
            int j = k0 + lane;
            float pj = 0.0f, dpj = 0.0f;
            if (j <= i) {
                float s = 0.0f;
                for (int d = 0; d < hs; d++) {
                    s += q[d] * ks[lane * (hs + 1) + d];
                    dpj += dy[d] * vs[lane * (hs + 1) + d];
                }
                pj = expf(s - row_lse);
            }
            if (sweep == 0) {
                d_partial += pj * dpj;
                continue;
            }
            ds[lane] = pj * (dpj - D) * scale;
            __syncwarp();
            int n = min(ATT_TILE, i - k0 + 1);
#pragma unroll
            for (int r = 0; r < ATT_PER_LANE; r++) {
                int d = lane + r * WARP_SIZE;
                if (d < hs)
                    for (int jj = 0; jj < n; jj++) dq[r] += ds[jj] * ks[jj * (hs + 1) + d];
            }
            __syncwarp();
        }
        if (sweep == 0 && live) {
            D = warp_sum(d_partial);
            if (lane == 0) dsum[(long long)blockIdx.y * T + i] = D;
        }
    }
    if (!live) return;
    floatX* dqi = dqkv + ((long long)b * T + i) * 3 * C + h * hs;
#pragma unroll
    for (int r = 0; r < ATT_PER_LANE; r++) {
        int d = lane + r * WARP_SIZE;
        if (d < hs) dqi[d] = from_float<floatX>(dq[r]);
    }
}
F32_AND_BF16(attention_backward_query,
             (floatX* __restrict__ dqkv, float* __restrict__ dsum, const floatX* __restrict__ dout,
              const floatX* __restrict__ qkv, const float* __restrict__ lse, int B, int T, int C, int NH),
             (dqkv, dsum, dout, qkv, lse, B, T, C, NH))

// dK and dV, one warp per key row j, sweeping the queries i ≥ j.
// Shared: (2·ATT_TILE·(hs+1) + 2·ATT_TILE + 2·ATT_ROWS·hs + 2·ATT_ROWS·ATT_TILE) floats.
template <typename floatX>
__device__ __forceinline__ void attention_backward_key(floatX* __restrict__ dqkv, const floatX* __restrict__ dout,
                                                       const floatX* __restrict__ qkv, const float* __restrict__ lse,
                                                       const float* __restrict__ dsum, int B, int T, int C, int NH) {
    int hs = C / NH, b = blockIdx.y / NH, h = blockIdx.y % NH;
    int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    int first = blockIdx.x * ATT_ROWS, j = first + warp;
    bool live = j < T;
    DYNAMIC_SHARED(float, smem);
    float* qs = smem;
    float* dys = qs + ATT_TILE * (hs + 1);
    float* lse_t = dys + ATT_TILE * (hs + 1);
    float* d_t = lse_t + ATT_TILE;
    float* k = d_t + ATT_TILE + warp * hs;
    float* v = d_t + ATT_TILE + ATT_ROWS * hs + warp * hs;
    float* pw = d_t + ATT_TILE + 2 * ATT_ROWS * hs + warp * ATT_TILE;
    float* dsw = pw + ATT_ROWS * ATT_TILE;
    const floatX* qkv_b = qkv + (long long)b * T * 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    if (live)
        for (int d = lane; d < hs; d += WARP_SIZE) {
            k[d] = to_float(qkv_b[(long long)j * 3 * C + C + h * hs + d]) * scale;
            v[d] = to_float(qkv_b[(long long)j * 3 * C + 2 * C + h * hs + d]);
        }
    __syncwarp();
    float dk[ATT_PER_LANE], dv[ATT_PER_LANE];
#pragma unroll
    for (int r = 0; r < ATT_PER_LANE; r++) dk[r] = dv[r] = 0.0f;
    for (int i0 = first / ATT_TILE * ATT_TILE; i0 < T; i0 += ATT_TILE) {
        __syncthreads();
        load_tile(qs, qkv_b, i0, T, C, h, hs, 0);
        for (int idx = threadIdx.x; idx < ATT_TILE * hs; idx += blockDim.x) {
            int r = idx / hs, d = idx % hs, row = i0 + r;
            dys[r * (hs + 1) + d] = row < T ? to_float(dout[((long long)b * T + row) * C + h * hs + d]) : 0.0f;
        }
        for (int r = threadIdx.x; r < ATT_TILE; r += blockDim.x) {
            int row = i0 + r;
            lse_t[r] = row < T ? lse[(long long)blockIdx.y * T + row] : 0.0f;
            d_t[r] = row < T ? dsum[(long long)blockIdx.y * T + row] : 0.0f;
        }
        __syncthreads();
        if (!live || i0 + ATT_TILE <= j) continue;
        int i = i0 + lane;
        float pi = 0.0f, dsi = 0.0f;
        if (i < T && i >= j) {
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < hs; d++) {
                s += qs[lane * (hs + 1) + d] * k[d];
                dp += dys[lane * (hs + 1) + d] * v[d];
            }
            pi = expf(s - lse_t[lane]);
            dsi = pi * (dp - d_t[lane]) * scale;
        }
        pw[lane] = pi;
        dsw[lane] = dsi;
        __syncwarp();
#pragma unroll
        for (int r = 0; r < ATT_PER_LANE; r++) {
            int d = lane + r * WARP_SIZE;
            if (d < hs)
                for (int ii = 0; ii < ATT_TILE; ii++) {
                    dv[r] += pw[ii] * dys[ii * (hs + 1) + d];
                    dk[r] += dsw[ii] * qs[ii * (hs + 1) + d];
                }
        }
        __syncwarp();
    }
    if (!live) return;
    floatX* dkj = dqkv + ((long long)b * T + j) * 3 * C + C + h * hs;
#pragma unroll
    for (int r = 0; r < ATT_PER_LANE; r++) {
        int d = lane + r * WARP_SIZE;
        if (d < hs) {
            dkj[d] = from_float<floatX>(dk[r]);
            dkj[C + d] = from_float<floatX>(dv[r]);
        }
    }
}
F32_AND_BF16(attention_backward_key,
             (floatX* __restrict__ dqkv, const floatX* __restrict__ dout, const floatX* __restrict__ qkv,
              const float* __restrict__ lse, const float* __restrict__ dsum, int B, int T, int C, int NH),
             (dqkv, dout, qkv, lse, dsum, B, T, C, NH))

// ---- Tensor-core forward (the bf16 mode's) ----------------------------
//
// The same flash forward on the tensor cores (mma_16816, kernels/common.cuh):
// a warp takes 16 query rows, a block 4 warps (64 rows of one head). Per
// tile of 16 keys: S = Q·Kᵀ as two 16×8 products over the head dimension,
// masked and scaled in fp32; the online softmax keeps each row's running
// max and sum in the 4 lanes that hold the row (combined with 2 shuffles);
// P is rounded to bf16 and goes straight from the S accumulators into an A
// fragment (their layouts line up, no shared memory), and O += P·V as 16×8
// products over the head dimension, O rescaled row by row in fp32. Q, K, V
// are read from global memory into fragments (the 4 warps of a block read
// the same keys, from cache). The output and the log-sum-exp are those of
// the fp32 kernel, up to the rounding of P, so the backward kernels above
// work from either. The head size is a template parameter, so every loop
// over it unrolls and the accumulators stay in registers.
#define TC_ROWS 16
#define TC_WARPS 4

// The rows of one head of one sequence (blockIdx.y = b·NH + h) as the
// fragment loaders' element accessor; rows past T read 0.
struct HeadRows {
    const bf16* base;
    long long ld;
    int T;
    __device__ __forceinline__ bf16 operator()(int row, int col) const { return row < T ? base[row * ld + col] : bf16{0}; }
};
// Part 0 (Q), 1 (K) or 2 (V) of the interleaved QKV.
template <int HS>
__device__ __forceinline__ HeadRows qkv_rows(const bf16* qkv, int part, int T, int C, int NH) {
    int b = blockIdx.y / NH, h = blockIdx.y % NH;
    return HeadRows{qkv + (long long)b * T * 3 * C + part * C + h * HS, 3LL * C, T};
}
// The output's gradient dY (B, T, C).
template <int HS>
__device__ __forceinline__ HeadRows dout_rows(const bf16* dout, int T, int C, int NH) {
    int b = blockIdx.y / NH, h = blockIdx.y % NH;
    return HeadRows{dout + (long long)b * T * C + h * HS, C, T};
}

template <int HS>
__device__ __forceinline__ void attention_forward_tc(bf16* __restrict__ out, float* __restrict__ lse,
                                                     const bf16* __restrict__ qkv, int B, int T, int C, int NH) {
    int b = blockIdx.y / NH, h = blockIdx.y % NH;
    int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE, g = lane / 4, t = lane % 4;
    int q0 = (blockIdx.x * TC_WARPS + warp) * TC_ROWS;
    if (q0 >= T) return;  // the whole warp; no block barriers below
    HeadRows Q = qkv_rows<HS>(qkv, 0, T, C, NH), K = qkv_rows<HS>(qkv, 1, T, C, NH), V = qkv_rows<HS>(qkv, 2, T, C, NH);
    float scale = 1.0f / sqrtf((float)HS);
    unsigned qf[HS / 16][4];
#pragma unroll
    for (int kk = 0; kk < HS / 16; kk++) frag_a(qf[kk], Q, q0, kk * 16);
    float o[HS / 8][4];
#pragma unroll
    for (int n = 0; n < HS / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    // Rows g and g + 8 of the warp's 16: running max and sum.
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
    int last = min(q0 + TC_ROWS, T) - 1;
    for (int k0 = 0; k0 <= last; k0 += 16) {
        // s[nh][i]: row g + 8·(i / 2), key k0 + 8·nh + 2t + i % 2.
        float s[2][4];
#pragma unroll
        for (int nh = 0; nh < 2; nh++) {
            s[nh][0] = s[nh][1] = s[nh][2] = s[nh][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < HS / 16; kk++) {
                unsigned kf[2];
                frag_bt(kf, K, k0 + 8 * nh, kk * 16);
                mma_16816(s[nh], qf[kk], kf, s[nh]);
            }
        }
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int nh = 0; nh < 2; nh++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int row = q0 + g + 8 * (i / 2), key = k0 + 8 * nh + 2 * t + i % 2;
                float v = key <= row && key < T ? s[nh][i] * scale : NEG_INF;
                s[nh][i] = v;
                mx[i / 2] = fmaxf(mx[i / 2], v);
            }
        float corr[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 2));
            float m_new = fmaxf(m[r], mx[r]);
            corr[r] = m_new == NEG_INF ? 1.0f : expf(m[r] - m_new);  // rows past T see only -inf
            m[r] = m_new;
        }
        float p[2][4];
#pragma unroll
        for (int nh = 0; nh < 2; nh++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                p[nh][i] = m[i / 2] == NEG_INF ? 0.0f : expf(s[nh][i] - m[i / 2]);
                sum[i / 2] += p[nh][i];
            }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            sum[r] += __shfl_xor_sync(FULL_MASK, sum[r], 1);
            sum[r] += __shfl_xor_sync(FULL_MASK, sum[r], 2);
            l[r] = l[r] * corr[r] + sum[r];
        }
        unsigned pf[4];
        frag_a_from_acc(pf, p);
#pragma unroll
        for (int n = 0; n < HS / 8; n++) {
            o[n][0] *= corr[0];
            o[n][1] *= corr[0];
            o[n][2] *= corr[1];
            o[n][3] *= corr[1];
            unsigned vf[2];
            frag_b(vf, V, k0, n * 8);
            mma_16816(o[n], pf, vf, o[n]);
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int row = q0 + g + 8 * r;
        if (row >= T) continue;
        float inv = 1.0f / l[r];
        bf16* orow = out + ((long long)b * T + row) * C + h * HS;
#pragma unroll
        for (int n = 0; n < HS / 8; n++) {
            orow[n * 8 + 2 * t] = from_float<bf16>(o[n][2 * r] * inv);
            orow[n * 8 + 2 * t + 1] = from_float<bf16>(o[n][2 * r + 1] * inv);
        }
        if (t == 0) lse[(long long)blockIdx.y * T + row] = m[r] + logf(l[r]);
    }
}

// One entry point per head size (GPT-2's is 64). Block: TC_WARPS warps.
// Grid: (ceil(T / (TC_WARPS·TC_ROWS)), B·NH).
extern "C" __global__ void attention_forward_tc16(bf16* __restrict__ out, float* __restrict__ lse,
                                                   const bf16* __restrict__ qkv, int B, int T, int C, int NH) {
    attention_forward_tc<16>(out, lse, qkv, B, T, C, NH);
}
extern "C" __global__ void attention_forward_tc32(bf16* __restrict__ out, float* __restrict__ lse,
                                                   const bf16* __restrict__ qkv, int B, int T, int C, int NH) {
    attention_forward_tc<32>(out, lse, qkv, B, T, C, NH);
}
extern "C" __global__ void attention_forward_tc64(bf16* __restrict__ out, float* __restrict__ lse,
                                                   const bf16* __restrict__ qkv, int B, int T, int C, int NH) {
    attention_forward_tc<64>(out, lse, qkv, B, T, C, NH);
}

// ---- Tensor-core backward (the bf16 mode's) ---------------------------
//
// The fp32 backward's split, on the tensor cores: a query kernel (a warp
// per 16 query rows: D_i = Σ_j P_ij·dP_ij in a first sweep over the keys,
// then dS and dQ += dS·K) and a key kernel (a warp per 16 key rows, over
// the query tiles at or after them: dV += Pᵀ·dO and dK += dSᵀ·Q, computing
// Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ directly, with the log-sum-exp and D of each
// query). P, dS and their transposes go from the accumulators into A
// fragments as in the forward; every gradient is written once, no atomics.
template <int HS>
__device__ __forceinline__ void attention_backward_query_tc(bf16* __restrict__ dqkv, float* __restrict__ dsum,
                                                            const bf16* __restrict__ dout,
                                                            const bf16* __restrict__ qkv,
                                                            const float* __restrict__ lse, int B, int T, int C,
                                                            int NH) {
    int b = blockIdx.y / NH, h = blockIdx.y % NH;
    int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE, g = lane / 4, t = lane % 4;
    int q0 = (blockIdx.x * TC_WARPS + warp) * TC_ROWS;
    if (q0 >= T) return;
    HeadRows Q = qkv_rows<HS>(qkv, 0, T, C, NH), K = qkv_rows<HS>(qkv, 1, T, C, NH), V = qkv_rows<HS>(qkv, 2, T, C, NH);
    HeadRows dY = dout_rows<HS>(dout, T, C, NH);
    float scale = 1.0f / sqrtf((float)HS);
    unsigned qf[HS / 16][4], df[HS / 16][4];
#pragma unroll
    for (int kk = 0; kk < HS / 16; kk++) {
        frag_a(qf[kk], Q, q0, kk * 16);
        frag_a(df[kk], dY, q0, kk * 16);
    }
    float row_lse[2], D[2] = {0.0f, 0.0f};
#pragma unroll
    for (int r = 0; r < 2; r++) row_lse[r] = q0 + g + 8 * r < T ? lse[(long long)blockIdx.y * T + q0 + g + 8 * r] : 0.0f;
    float dq[HS / 8][4];
#pragma unroll
    for (int n = 0; n < HS / 8; n++) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;
    int last = min(q0 + TC_ROWS, T) - 1;
    for (int sweep = 0; sweep < 2; sweep++) {
        float part[2] = {0.0f, 0.0f};
        for (int k0 = 0; k0 <= last; k0 += 16) {
            float s[2][4], dp[2][4];
#pragma unroll
            for (int nh = 0; nh < 2; nh++) {
                s[nh][0] = s[nh][1] = s[nh][2] = s[nh][3] = 0.0f;
                dp[nh][0] = dp[nh][1] = dp[nh][2] = dp[nh][3] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < HS / 16; kk++) {
                    unsigned kf[2], vf[2];
                    frag_bt(kf, K, k0 + 8 * nh, kk * 16);
                    frag_bt(vf, V, k0 + 8 * nh, kk * 16);
                    mma_16816(s[nh], qf[kk], kf, s[nh]);
                    mma_16816(dp[nh], df[kk], vf, dp[nh]);
                }
            }
            float ds[2][4];
#pragma unroll
            for (int nh = 0; nh < 2; nh++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    int row = q0 + g + 8 * (i / 2), key = k0 + 8 * nh + 2 * t + i % 2;
                    float p = key <= row && key < T && row < T ? expf(s[nh][i] * scale - row_lse[i / 2]) : 0.0f;
                    part[i / 2] += p * dp[nh][i];
                    ds[nh][i] = p * (dp[nh][i] - D[i / 2]) * scale;
                }
            if (sweep == 0) continue;
            unsigned af[4];
            frag_a_from_acc(af, ds);
#pragma unroll
            for (int n = 0; n < HS / 8; n++) {
                unsigned kb[2];
                frag_b(kb, K, k0, n * 8);
                mma_16816(dq[n], af, kb, dq[n]);
            }
        }
        if (sweep == 0) {
#pragma unroll
            for (int r = 0; r < 2; r++) {
                part[r] += __shfl_xor_sync(FULL_MASK, part[r], 1);
                part[r] += __shfl_xor_sync(FULL_MASK, part[r], 2);
                D[r] = part[r];
                int row = q0 + g + 8 * r;
                if (t == 0 && row < T) dsum[(long long)blockIdx.y * T + row] = D[r];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int row = q0 + g + 8 * r;
        if (row >= T) continue;
        bf16* dqi = dqkv + ((long long)b * T + row) * 3 * C + h * HS;
#pragma unroll
        for (int n = 0; n < HS / 8; n++) {
            dqi[n * 8 + 2 * t] = from_float<bf16>(dq[n][2 * r]);
            dqi[n * 8 + 2 * t + 1] = from_float<bf16>(dq[n][2 * r + 1]);
        }
    }
}

template <int HS>
__device__ __forceinline__ void attention_backward_key_tc(bf16* __restrict__ dqkv, const bf16* __restrict__ dout,
                                                          const bf16* __restrict__ qkv, const float* __restrict__ lse,
                                                          const float* __restrict__ dsum, int B, int T, int C,
                                                          int NH) {
    int b = blockIdx.y / NH, h = blockIdx.y % NH;
    int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE, g = lane / 4, t = lane % 4;
    int j0 = (blockIdx.x * TC_WARPS + warp) * TC_ROWS;
    if (j0 >= T) return;
    HeadRows Q = qkv_rows<HS>(qkv, 0, T, C, NH), K = qkv_rows<HS>(qkv, 1, T, C, NH), V = qkv_rows<HS>(qkv, 2, T, C, NH);
    HeadRows dY = dout_rows<HS>(dout, T, C, NH);
    float scale = 1.0f / sqrtf((float)HS);
    unsigned kf[HS / 16][4], vf[HS / 16][4];
#pragma unroll
    for (int kk = 0; kk < HS / 16; kk++) {
        frag_a(kf[kk], K, j0, kk * 16);
        frag_a(vf[kk], V, j0, kk * 16);
    }
    float dk[HS / 8][4], dv[HS / 8][4];
#pragma unroll
    for (int n = 0; n < HS / 8; n++) dk[n][0] = dk[n][1] = dk[n][2] = dk[n][3] = dv[n][0] = dv[n][1] = dv[n][2] = dv[n][3] = 0.0f;
    for (int i0 = j0; i0 < T; i0 += 16) {
        // st[nh][i]: key j0 + g + 8·(i / 2), query i0 + 8·nh + 2t + i % 2.
        float st[2][4], dpt[2][4];
#pragma unroll
        for (int nh = 0; nh < 2; nh++) {
            st[nh][0] = st[nh][1] = st[nh][2] = st[nh][3] = 0.0f;
            dpt[nh][0] = dpt[nh][1] = dpt[nh][2] = dpt[nh][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < HS / 16; kk++) {
                unsigned qb[2], ob[2];
                frag_bt(qb, Q, i0 + 8 * nh, kk * 16);
                frag_bt(ob, dY, i0 + 8 * nh, kk * 16);
                mma_16816(st[nh], kf[kk], qb, st[nh]);
                mma_16816(dpt[nh], vf[kk], ob, dpt[nh]);
            }
        }
        float pt[2][4], dst[2][4];
#pragma unroll
        for (int nh = 0; nh < 2; nh++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int key = j0 + g + 8 * (i / 2), query = i0 + 8 * nh + 2 * t + i % 2;
                bool valid = key <= query && query < T && key < T;
                long long at_q = (long long)blockIdx.y * T + query;
                float p = valid ? expf(st[nh][i] * scale - lse[at_q]) : 0.0f;
                pt[nh][i] = p;
                dst[nh][i] = valid ? p * (dpt[nh][i] - dsum[at_q]) * scale : 0.0f;
            }
        unsigned pa[4], sa[4];
        frag_a_from_acc(pa, pt);
        frag_a_from_acc(sa, dst);
#pragma unroll
        for (int n = 0; n < HS / 8; n++) {
            unsigned ob[2], qb[2];
            frag_b(ob, dY, i0, n * 8);
            frag_b(qb, Q, i0, n * 8);
            mma_16816(dv[n], pa, ob, dv[n]);
            mma_16816(dk[n], sa, qb, dk[n]);
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int row = j0 + g + 8 * r;
        if (row >= T) continue;
        bf16* dkj = dqkv + ((long long)b * T + row) * 3 * C + C + h * HS;
#pragma unroll
        for (int n = 0; n < HS / 8; n++) {
            dkj[n * 8 + 2 * t] = from_float<bf16>(dk[n][2 * r]);
            dkj[n * 8 + 2 * t + 1] = from_float<bf16>(dk[n][2 * r + 1]);
            dkj[C + n * 8 + 2 * t] = from_float<bf16>(dv[n][2 * r]);
            dkj[C + n * 8 + 2 * t + 1] = from_float<bf16>(dv[n][2 * r + 1]);
        }
    }
}

// One pair of entry points per head size (at 128 the key kernel would
// spill registers; such heads use the CUDA-core kernels). Block: TC_WARPS
// warps. Grid: (ceil(T / (TC_WARPS·TC_ROWS)), B·NH).
extern "C" __global__ void attention_backward_query_tc16(bf16* __restrict__ dqkv, float* __restrict__ dsum,
                                                          const bf16* __restrict__ dout, const bf16* __restrict__ qkv,
                                                          const float* __restrict__ lse, int B, int T, int C, int NH) {
    attention_backward_query_tc<16>(dqkv, dsum, dout, qkv, lse, B, T, C, NH);
}
extern "C" __global__ void attention_backward_key_tc16(bf16* __restrict__ dqkv, const bf16* __restrict__ dout,
                                                        const bf16* __restrict__ qkv, const float* __restrict__ lse,
                                                        const float* __restrict__ dsum, int B, int T, int C, int NH) {
    attention_backward_key_tc<16>(dqkv, dout, qkv, lse, dsum, B, T, C, NH);
}
extern "C" __global__ void attention_backward_query_tc32(bf16* __restrict__ dqkv, float* __restrict__ dsum,
                                                          const bf16* __restrict__ dout, const bf16* __restrict__ qkv,
                                                          const float* __restrict__ lse, int B, int T, int C, int NH) {
    attention_backward_query_tc<32>(dqkv, dsum, dout, qkv, lse, B, T, C, NH);
}
extern "C" __global__ void attention_backward_key_tc32(bf16* __restrict__ dqkv, const bf16* __restrict__ dout,
                                                        const bf16* __restrict__ qkv, const float* __restrict__ lse,
                                                        const float* __restrict__ dsum, int B, int T, int C, int NH) {
    attention_backward_key_tc<32>(dqkv, dout, qkv, lse, dsum, B, T, C, NH);
}
extern "C" __global__ void attention_backward_query_tc64(bf16* __restrict__ dqkv, float* __restrict__ dsum,
                                                          const bf16* __restrict__ dout, const bf16* __restrict__ qkv,
                                                          const float* __restrict__ lse, int B, int T, int C, int NH) {
    attention_backward_query_tc<64>(dqkv, dsum, dout, qkv, lse, B, T, C, NH);
}
extern "C" __global__ void attention_backward_key_tc64(bf16* __restrict__ dqkv, const bf16* __restrict__ dout,
                                                        const bf16* __restrict__ qkv, const float* __restrict__ lse,
                                                        const float* __restrict__ dsum, int B, int T, int C, int NH) {
    attention_backward_key_tc<64>(dqkv, dout, qkv, lse, dsum, B, T, C, NH);
}
