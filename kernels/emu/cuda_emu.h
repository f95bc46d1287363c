// CUDA on the CPU, for testing the project's kernels where no GPU is.
//
// Why: a GPU is rarely available to this project's CI, yet the kernels must
// be proven. This header lets the very same `.cu` sources compile as C++
// (g++ -std=c++17 -DDTRAIN_EMU) and run on small shapes against the CPU
// engine. It provides the subset of CUDA the kernels use and nothing more,
// so a kernel that needs something new fails to compile here first.
//
// How threads run: every CUDA thread of a block is a coroutine (ucontext)
// on the launching OS thread. The scheduler runs each runnable thread until
// it reaches a barrier or returns, then releases barriers: a warp barrier
// (warp shuffles, __syncwarp) when every live lane of that warp waits at
// one, the block barrier (__syncthreads) when every live thread of the
// block waits at it; threads that returned no longer count, as on Volta and
// later. Threads waiting at different barriers with nobody runnable (half a
// warp at __syncthreads, half in a shuffle) would hang a GPU: here it is
// reported as an error. Blocks
// run one after another; a thread runs as far as it can before the next
// starts, the least synchronised legal order, and the order flips from
// block to block, so a missing barrier shows in one order or the other.
// Since only one coroutine runs at a time, atomics are plain
// read-modify-writes. `__shared__` variables are statics in one linker
// section and launches are serialised, so every block start can fill all
// shared memory, static and dynamic, with NaN bytes: a kernel that reads
// shared memory before writing it computes NaN.
//
// Not emulated: tensor cores, inline PTX, cp.async, and memory-model
// subtleties between blocks (blocks never run concurrently here).
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <mutex>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
// Static shared memory goes to one linker section, so that every block
// start can fill all of it with NaN bytes (see run_block); launches are
// serialised by a mutex, so the section is never shared by two launches.
#define __shared__ static __attribute__((section("dtrain_emu_shared"), used))
extern "C" char __start_dtrain_emu_shared[] __attribute__((weak));
extern "C" char __stop_dtrain_emu_shared[] __attribute__((weak));
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
typedef dim3 uint3;

namespace emu {

enum class Wait { Runnable, Warp, Block, Done };

struct Thread {
    ucontext_t ctx;
    Wait wait;
};

struct Launch {
    dim3 grid, block;
    unsigned nthreads = 0;
    std::vector<Thread> threads;
    char* stacks = nullptr;
    size_t stack_bytes = 0;
    ucontext_t scheduler;
    unsigned current = 0;
    // One 8-byte slot per thread for warp exchanges.
    std::vector<uint64_t> slots;
    std::vector<unsigned char> smem;
    void (*run)(void**) = nullptr;
    void** params = nullptr;
};

inline thread_local Launch* current_launch = nullptr;
inline thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;

inline unsigned linear_tid() {
    return thread_idx.x + block_dim.x * (thread_idx.y + block_dim.y * thread_idx.z);
}

// Back to the scheduler, waiting as `w`.
inline void suspend(Wait w) {
    Launch* l = current_launch;
    Thread& t = l->threads[l->current];
    t.wait = w;
    swapcontext(&t.ctx, &l->scheduler);
}

inline void thread_entry() {
    Launch* l = current_launch;
    l->run(l->params);
    l->threads[l->current].wait = Wait::Done;
    // Returning resumes `uc_link`, the scheduler.
}

// Writes `v` to this lane's slot, waits for the warp, reads lane `src`'s
// slot (own value if `src` is outside the warp), waits again so that no
// lane overwrites its slot before every lane has read.
template <typename T>
inline T exchange(T v, int src, bool valid) {
    static_assert(sizeof(T) <= 8, "warp exchange of at most 8 bytes");
    Launch* l = current_launch;
    unsigned me = linear_tid();
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    l->slots[me] = bits;
    suspend(Wait::Warp);
    unsigned from = (me & ~31u) + (unsigned)src;
    uint64_t got = (valid && src >= 0 && src < 32 && from < l->nthreads) ? l->slots[from] : bits;
    suspend(Wait::Warp);
    T out;
    memcpy(&out, &got, sizeof(T));
    return out;
}

// Runs one block to completion, its threads in order (`reverse`: last
// first); returns an error message or nullptr.
inline const char* run_block(Launch& l, bool reverse) {
    for (unsigned i = 0; i < l.nthreads; i++) {
        Thread& t = l.threads[i];
        getcontext(&t.ctx);
        t.ctx.uc_stack.ss_sp = l.stacks + (size_t)i * l.stack_bytes;
        t.ctx.uc_stack.ss_size = l.stack_bytes;
        t.ctx.uc_link = &l.scheduler;
        makecontext(&t.ctx, thread_entry, 0);
        t.wait = Wait::Runnable;
    }
    memset(l.smem.data(), 0xff, l.smem.size());
    if (__start_dtrain_emu_shared && __stop_dtrain_emu_shared)
        memset(__start_dtrain_emu_shared, 0xff, (size_t)(__stop_dtrain_emu_shared - __start_dtrain_emu_shared));
    for (;;) {
        for (unsigned k = 0; k < l.nthreads; k++) {
            unsigned i = reverse ? l.nthreads - 1 - k : k;
            if (l.threads[i].wait != Wait::Runnable) continue;
            l.current = i;
            thread_idx.x = i % l.block.x;
            thread_idx.y = (i / l.block.x) % l.block.y;
            thread_idx.z = i / (l.block.x * l.block.y);
            swapcontext(&l.scheduler, &l.threads[i].ctx);
        }
        bool released = false, all_done = true, all_at_block = true;
        for (unsigned w = 0; w < l.nthreads; w += 32) {
            unsigned end = w + 32 < l.nthreads ? w + 32 : l.nthreads;
            bool warp_ready = false, blocked = false;
            for (unsigned i = w; i < end; i++) {
                Wait s = l.threads[i].wait;
                if (s == Wait::Warp) warp_ready = true;
                else if (s == Wait::Block) blocked = true;
            }
            if (warp_ready && !blocked) {
                for (unsigned i = w; i < end; i++)
                    if (l.threads[i].wait == Wait::Warp) l.threads[i].wait = Wait::Runnable;
                released = true;
            }
        }
        if (released) continue;
        for (unsigned i = 0; i < l.nthreads; i++) {
            Wait s = l.threads[i].wait;
            if (s != Wait::Done) all_done = false;
            if (s != Wait::Done && s != Wait::Block) all_at_block = false;
        }
        if (all_done) return nullptr;
        if (!all_at_block) return "deadlock: threads wait at different barriers (a barrier inside divergent code)";
        for (unsigned i = 0; i < l.nthreads; i++)
            if (l.threads[i].wait == Wait::Block) l.threads[i].wait = Wait::Runnable;
    }
}

// Runs `run(params)` as kernel threads over the grid; nullptr or an error.
inline std::mutex launch_lock;

inline const char* launch(void (*run)(void**), void** params, dim3 grid, dim3 block, size_t smem) {
    std::lock_guard<std::mutex> serialised(launch_lock);
    Launch l;
    l.grid = grid;
    l.block = block;
    l.nthreads = block.x * block.y * block.z;
    if (l.nthreads == 0 || l.nthreads > 1024) return "block of 0 or more than 1024 threads";
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) return "invalid grid";
    if (smem > 227 * 1024) return "more than 227 KiB of dynamic shared memory";
    l.threads.resize(l.nthreads);
    l.slots.assign(l.nthreads, 0);
    l.smem.resize(smem + 16);
    l.stack_bytes = 64 * 1024;
    l.stacks = static_cast<char*>(malloc(l.stack_bytes * l.nthreads));
    if (!l.stacks) return "out of memory for thread stacks";
    l.run = run;
    l.params = params;
    Launch* outer = current_launch;
    current_launch = &l;
    block_dim = block;
    grid_dim = grid;
    const char* err = nullptr;
    for (unsigned z = 0; z < grid.z && !err; z++)
        for (unsigned y = 0; y < grid.y && !err; y++)
            for (unsigned x = 0; x < grid.x && !err; x++) {
                block_idx.x = x;
                block_idx.y = y;
                block_idx.z = z;
                // Alternate the thread order from block to block: a read
                // that lacks a barrier before it sees unwritten data in one
                // order or the other.
                err = run_block(l, (x + y + z) % 2 == 1);
            }
    current_launch = outer;
    free(l.stacks);
    return err;
}

inline void* dynamic_smem() { return current_launch->smem.data(); }

}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

inline void __syncthreads() { emu::suspend(emu::Wait::Block); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::suspend(emu::Wait::Warp); }

template <typename T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    int lane = (int)(emu::linear_tid() & 31);
    int base = lane - lane % width;
    return emu::exchange(v, base + src % width, true);
}
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    int lane = (int)(emu::linear_tid() & 31);
    int src = lane ^ mask;
    return emu::exchange(v, src, src / width == lane / width);
}
template <typename T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    int lane = (int)(emu::linear_tid() & 31);
    int src = lane + (int)delta;
    return emu::exchange(v, src, src / width == lane / width);
}

// One coroutine runs at a time: read-modify-write is atomic.
template <typename T>
inline T atomicAdd(T* a, T v) {
    T old = *a;
    *a = old + v;
    return old;
}
template <typename T>
inline T atomicMax(T* a, T v) {
    T old = *a;
    *a = old > v ? old : v;
    return old;
}
template <typename T>
inline T atomicCAS(T* a, T cmp, T v) {
    T old = *a;
    if (old == cmp) *a = v;
    return old;
}

// CUDA's integer and float min/max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
template <typename T>
inline T __ldg(const T* p) { return *p; }

// Half and bfloat16: storage types with CUDA's round-to-nearest-even
// conversions, bit for bit (the tests compare against the `half` crate).
struct __half {
    uint16_t x;
};
struct __nv_bfloat16 {
    uint16_t x;
};

inline uint32_t emu_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
inline float emu_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

inline __half __float2half_rn(float f) {
    uint32_t u = emu_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffff;
    __half h;
    if (a > 0x7f800000) {
        h.x = 0x7fff;  // NaN
    } else if (a >= 0x477ff000) {
        h.x = sign | 0x7c00;  // |f| ≥ 65520 rounds to infinity
    } else if (a < 0x38800000) {  // below 2^-14: subnormal or zero
        if (a <= 0x33000000) {
            h.x = sign;
        } else {
            uint32_t e = a >> 23, m = (a & 0x7fffff) | 0x800000, shift = 126 - e;
            uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
            if (rem > half || (rem == half && (r & 1))) r++;
            h.x = (uint16_t)(sign | r);
        }
    } else {
        uint32_t r = a - 0x38000000;
        uint32_t hb = r >> 13, rem = r & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (hb & 1))) hb++;
        h.x = (uint16_t)(sign | hb);
    }
    return h;
}
inline __half __float2half(float f) { return __float2half_rn(f); }

inline float __half2float(__half h) {
    uint32_t sign = (uint32_t)(h.x & 0x8000) << 16, e = (h.x >> 10) & 0x1f, m = h.x & 0x3ff;
    if (e == 0) {
        float v = ldexpf((float)m, -24);
        return sign ? -v : v;
    }
    if (e == 31) return emu_float(sign | 0x7f800000 | (m << 13));
    return emu_float(sign | ((e + 112) << 23) | (m << 13));
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u = emu_bits(f);
    __nv_bfloat16 b;
    if ((u & 0x7fffffff) > 0x7f800000) {
        b.x = (uint16_t)((u >> 16) | 0x40);
    } else {
        u += 0x7fff + ((u >> 16) & 1);
        b.x = (uint16_t)(u >> 16);
    }
    return b;
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return emu_float((uint32_t)b.x << 16); }
