// rc_emu_api.h - what the two translation units of an emulated module share.
//
// An emulated module is one shared library built from two translation units:
//   kernel TU:  prelude.h + the module's code() + generated wrappers (see build.py)
//   runtime TU: runtime.cpp (block scheduler, fibers, barriers, error state)
// This header declares the builtin index variables and the runtime calls that connect them. It
// includes no system header, so kernel code sees nothing of the runtime's implementation.
#pragma once

#define RC_EMU_HIDDEN __attribute__((visibility("hidden")))
#define RC_EMU_EXPORT extern "C" __attribute__((visibility("default")))

struct uint3 { unsigned int x, y, z; };

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
        : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

// Builtin variables. thread_local: the fibers of one block share an OS thread, and the scheduler
// writes threadIdx before resuming each fiber; launches from different OS threads do not mix.
extern thread_local uint3 threadIdx RC_EMU_HIDDEN;
extern thread_local uint3 blockIdx RC_EMU_HIDDEN;
extern thread_local dim3 blockDim RC_EMU_HIDDEN;
extern thread_local dim3 gridDim RC_EMU_HIDDEN;

namespace rc_emu {

// One launch as the kernel TU hands it to the runtime.
struct LaunchSpec {
    unsigned int grid[3];
    unsigned int block[3];
    unsigned long long shared_mem;   // dynamic shared memory per block, bytes
    int cooperative;                 // 0: threads of a block run one after another; 1: fibers
    int order;                       // 0 forward, 1 reverse, 2 shuffled (blocks and threads)
    unsigned long long seed;         // for order == 2
};

typedef void (*BodyFn)(void* ctx);   // runs the kernel once, for the current thread

// Runs the whole grid; 0 on success, else the message is in rc_emu_last_error().
RC_EMU_HIDDEN int run_grid(const LaunchSpec& spec, BodyFn body, void* ctx);

// Dynamic shared memory of the block being run (extern __shared__ arrays alias it).
extern void* dyn_smem RC_EMU_HIDDEN;

// Stop the current CUDA thread and fail the launch with this message (never returns).
[[noreturn]] RC_EMU_HIDDEN void fail(const char* what);

// Cooperative primitives (fibers only; in serial mode they fail the launch).
RC_EMU_HIDDEN void block_barrier();                              // __syncthreads
RC_EMU_HIDDEN void block_vote(int pred, int* count, int* arrived);   // __syncthreads_count/and/or
RC_EMU_HIDDEN void warp_barrier();                                // __syncwarp
// Every live lane of the warp deposits `size` bytes (<= 16); each gets all 32 slots back in
// `all` (32 * size bytes) and the mask of lanes that took part.
RC_EMU_HIDDEN void warp_gather(const void* mine, unsigned int size, void* all, unsigned int* live);
RC_EMU_HIDDEN unsigned int live_lanes();                          // __activemask
RC_EMU_HIDDEN unsigned int lane_id();

}  // namespace rc_emu
