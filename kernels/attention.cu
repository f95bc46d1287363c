// Causal multi-head self-attention, forward and backward, flash-style
// (twin of src/engine/cpu/attention.rs).
//
// No T×T matrix is ever stored: the forward pass keeps only each query
// row's log-sum-exp (B·NH·T floats a layer), and the backward pass
// recomputes the probabilities from it. Shaped for clarity and exactness
// against the CPU engine rather than for tensor cores; in the bf16 mode
// Q, K, V, dY are read as bf16 and widened to fp32 in shared memory, so the
// arithmetic is the fp32 kernel's:
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
