// The emulated kernels' entry point for Rust: every kernels/*.cu compiled
// as C++ in this one translation unit (build.rs passes the list), and one
// C function that launches a kernel by name with cuLaunchKernel's argument
// convention (an array of pointers to the argument values), so the Rust
// code that launches kernels is the same for the GPU and for this.
#define DTRAIN_EMU 1
#include "../common.cuh"

#include <stdio.h>

#include <type_traits>
#include <utility>

#include DTRAIN_EMU_SOURCES

template <typename... A, size_t... I>
static void invoke(void (*kernel)(A...), void** p, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}

template <typename... A>
static void invoke(void (*kernel)(A...), void** p) {
    invoke(kernel, p, std::index_sequence_for<A...>{});
}

#define DTRAIN_KERNEL(k) {#k, [](void** p) { invoke(k, p); }},
struct Entry {
    const char* name;
    void (*run)(void**);
};
static const Entry KERNELS[] = {
#include DTRAIN_EMU_KERNELS
};

// 0 on success; otherwise a message in `err`.
extern "C" int dtrain_emu_launch(const char* name, const unsigned* grid, const unsigned* block, size_t smem,
                                 void** params, char* err, size_t err_len) {
    for (const Entry& e : KERNELS) {
        if (strcmp(e.name, name) != 0) continue;
        dim3 g, b;
        g.x = grid[0], g.y = grid[1], g.z = grid[2];
        b.x = block[0], b.y = block[1], b.z = block[2];
        const char* why = emu::launch(e.run, params, g, b, smem);
        if (!why) return 0;
        snprintf(err, err_len, "%s: %s", name, why);
        return 1;
    }
    snprintf(err, err_len, "no kernel named %s", name);
    return 1;
}
