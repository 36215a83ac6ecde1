// runtime.cpp - runs one CUDA grid on the CPU.
//
// Blocks run one after another. The threads of a block run either
//   serially:     one after another to completion (modules whose source uses no barrier or warp
//                 intrinsic; fast), or
//   as fibers:    one ucontext fiber per CUDA thread, all on the calling OS thread. A fiber runs
//                 until it reaches a barrier (__syncthreads, or a warp intrinsic), then the next
//                 runnable fiber runs. When every fiber has stopped, the scheduler releases the
//                 warps whose live lanes all wait at a warp barrier, else the block if all its
//                 live threads wait at __syncthreads; if neither, the block is deadlocked and the
//                 launch fails with a description (instead of hanging).
// Threads that return are dropped from later barriers (as on Volta and later GPUs). Nothing runs
// concurrently, so atomics are exact and data races are deterministic; ROBOCACHE_EMU_ORDER
// (reverse / shuffle) changes the order of blocks and threads to expose order dependence.
#include "rc_emu_api.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace rc_emu {

void* dyn_smem = nullptr;

namespace {

struct Abort {};  // unwinds the current CUDA thread after fail()

std::string g_error;  // the first error of the current launch (launches never overlap)

enum State : unsigned char { RUNNABLE, AT_BLOCK, AT_WARP, DONE };
constexpr unsigned int kSlot = 16;  // bytes per lane in a warp exchange

#if defined(__SANITIZE_ADDRESS__)
constexpr size_t kStack = size_t(1) << 20;
#else
constexpr size_t kStack = size_t(256) << 10;
#endif

// Fiber stacks, kept between launches: one guard page under each stack.
struct StackPool {
    char* base = nullptr;
    size_t count = 0, page = 0;
    size_t slot() const { return kStack + page; }
    char* stack(size_t i) const { return base + i * slot() + page; }
    bool reserve(size_t n) {
        if (n <= count) return true;
        if (page == 0) page = (size_t)sysconf(_SC_PAGESIZE);
        void* p = mmap(nullptr, n * slot(), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return false;
        for (size_t i = 0; i < n; ++i) mprotect((char*)p + i * slot(), page, PROT_NONE);
        if (base != nullptr) munmap(base, count * slot());
        base = (char*)p;
        count = n;
        return true;
    }
};
StackPool g_stacks;

struct Sched {
    const LaunchSpec* spec = nullptr;
    BodyFn body = nullptr;
    void* ctx = nullptr;
    unsigned int n = 0, nwarps = 0;
    std::vector<State> state;
    std::vector<ucontext_t> uc;
    ucontext_t main_uc;
    unsigned int current = 0;
    std::vector<unsigned char> deposit;     // [warp][lane][kSlot]: values brought to a warp barrier
    std::vector<unsigned char> published;   // the same, as of the last release of that warp
    std::vector<unsigned int> warp_live;    // lanes released together at the last warp release
    std::vector<int> vote;                  // per thread, brought to a block barrier
    int vote_count = 0, vote_arrived = 0;   // as of the last block release
};
Sched* g_sched = nullptr;  // the block running on fibers, if any

void set_error(const std::string& msg) {
    if (!g_error.empty()) return;
    char where[160];
    std::snprintf(where, sizeof where, "block (%u,%u,%u) thread (%u,%u,%u): ", blockIdx.x,
                  blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    g_error = where + msg;
}

Sched& fibers(const char* what) {
    if (g_sched == nullptr) {
        std::string m = what;
        fail((m + " called, but this module runs serially: its source was not recognised as "
                  "using barriers or warp intrinsics (see tests/emulator/build.py)").c_str());
    }
    return *g_sched;
}

void wait_as(State st) {
    Sched& s = *g_sched;
    const unsigned int me = s.current;
    s.state[me] = st;
    swapcontext(&s.uc[me], &s.main_uc);   // back when the scheduler releases this barrier
}

void fiber_main() {
    Sched& s = *g_sched;
    try {
        s.body(s.ctx);
    } catch (Abort&) {
    } catch (...) {
        set_error("a C++ exception escaped the kernel");
    }
    s.state[s.current] = DONE;            // returning resumes uc_link: the scheduler
}

struct Order {
    int mode;
    std::mt19937_64 rng;
    Order(int m, unsigned long long seed) : mode(m), rng(seed) {}
    void arrange(std::vector<unsigned int>& v) {
        for (unsigned int i = 0; i < v.size(); ++i) v[i] = i;
        if (mode == 1) std::reverse(v.begin(), v.end());
        if (mode == 2) std::shuffle(v.begin(), v.end(), rng);
    }
};

void set_thread(unsigned int linear) {
    const unsigned int bx = blockDim.x, by = blockDim.y;
    threadIdx = uint3{linear % bx, (linear / bx) % by, linear / (bx * by)};
}

std::string describe_deadlock(const Sched& s) {
    std::string m = "deadlock: the block's threads wait at barriers that cannot all be reached";
    unsigned int at_block = 0, done = 0;
    for (unsigned int i = 0; i < s.n; ++i) {
        at_block += s.state[i] == AT_BLOCK;
        done += s.state[i] == DONE;
    }
    m += " (" + std::to_string(at_block) + " at __syncthreads, " +
         std::to_string(s.n - at_block - done) + " at a warp barrier, " + std::to_string(done) +
         " returned); warps split between the two:";
    for (unsigned int w = 0; w < s.nwarps; ++w) {
        unsigned int a = 0, b = 0;
        for (unsigned int i = w * 32; i < std::min(s.n, w * 32 + 32); ++i) {
            a += s.state[i] == AT_WARP;
            b += s.state[i] == AT_BLOCK;
        }
        if (a != 0 && b != 0) m += " " + std::to_string(w);
    }
    m += ". Warp intrinsics here need every live lane of the warp (masks are not emulated).";
    return m;
}

// Runs one block on fibers; false on error (g_error set).
bool run_block_fibers(Sched& s, Order& order) {
    std::vector<unsigned int> seq(s.n);
    for (unsigned int i = 0; i < s.n; ++i) {
        getcontext(&s.uc[i]);
        s.uc[i].uc_stack.ss_sp = g_stacks.stack(i);
        s.uc[i].uc_stack.ss_size = kStack;
        s.uc[i].uc_link = &s.main_uc;
        makecontext(&s.uc[i], fiber_main, 0);
        s.state[i] = RUNNABLE;
    }
    for (;;) {
        order.arrange(seq);
        for (unsigned int i : seq) {
            if (s.state[i] != RUNNABLE) continue;
            set_thread(i);
            s.current = i;
            swapcontext(&s.main_uc, &s.uc[i]);
            if (!g_error.empty()) return false;
        }
        // Nobody can run: release a barrier, finish, or report a deadlock.
        unsigned int done = 0, at_block = 0;
        for (unsigned int i = 0; i < s.n; ++i) {
            done += s.state[i] == DONE;
            at_block += s.state[i] == AT_BLOCK;
        }
        if (done == s.n) return true;
        bool released = false;
        for (unsigned int w = 0; w < s.nwarps; ++w) {
            const unsigned int lo = w * 32, hi = std::min(s.n, lo + 32);
            unsigned int waiting = 0, live = 0;
            for (unsigned int i = lo; i < hi; ++i) {
                if (s.state[i] == DONE) continue;
                live |= 1u << (i - lo);
                waiting += s.state[i] == AT_WARP;
            }
            if (waiting == 0 || waiting != (unsigned int)__builtin_popcount(live)) continue;
            std::memcpy(&s.published[lo * kSlot], &s.deposit[lo * kSlot], (hi - lo) * kSlot);
            s.warp_live[w] = live;
            for (unsigned int i = lo; i < hi; ++i)
                if (s.state[i] == AT_WARP) s.state[i] = RUNNABLE;
            released = true;
        }
        if (!released && at_block == s.n - done) {
            s.vote_count = 0;
            s.vote_arrived = (int)at_block;
            for (unsigned int i = 0; i < s.n; ++i) {
                if (s.state[i] != AT_BLOCK) continue;
                s.vote_count += s.vote[i] != 0;
                s.state[i] = RUNNABLE;
            }
            released = true;
        }
        if (!released) {
            g_error = "block (" + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) +
                      "," + std::to_string(blockIdx.z) + "): " + describe_deadlock(s);
            return false;
        }
    }
}

bool run_block_serial(const LaunchSpec& spec, BodyFn body, void* ctx, unsigned int n,
                      std::vector<unsigned int>& seq, Order& order) {
    (void)spec;
    order.arrange(seq);
    for (unsigned int i = 0; i < n; ++i) {
        set_thread(seq[i]);
        try {
            body(ctx);
        } catch (Abort&) {
            return false;
        }
    }
    return true;
}

}  // namespace

void fail(const char* what) {
    set_error(what);
    throw Abort{};
}

void block_barrier() {
    Sched& s = fibers("__syncthreads");
    s.vote[s.current] = 0;
    wait_as(AT_BLOCK);
}

void block_vote(int pred, int* count, int* arrived) {
    Sched& s = fibers("__syncthreads_count/_and/_or");
    s.vote[s.current] = pred != 0;
    wait_as(AT_BLOCK);
    *count = s.vote_count;
    *arrived = s.vote_arrived;
}

void warp_barrier() {
    fibers("__syncwarp");
    wait_as(AT_WARP);
}

void warp_gather(const void* mine, unsigned int size, void* all, unsigned int* live) {
    Sched& s = fibers("a warp intrinsic");
    const unsigned int me = s.current, w = me / 32, lo = w * 32;
    std::memcpy(&s.deposit[me * kSlot], mine, size);
    wait_as(AT_WARP);
    for (unsigned int l = 0; l < 32; ++l)
        std::memcpy((char*)all + l * size, &s.published[(lo + std::min(l, s.n - 1 - lo)) * kSlot],
                    size);
    *live = s.warp_live[w];
}

unsigned int live_lanes() {
    Sched& s = fibers("__activemask");
    const unsigned int lo = s.current / 32 * 32;
    unsigned int m = 0;
    for (unsigned int i = lo; i < std::min(s.n, lo + 32); ++i)
        if (s.state[i] != DONE) m |= 1u << (i - lo);
    return m;
}

unsigned int lane_id() {
    return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32u;
}

int run_grid(const LaunchSpec& spec, BodyFn body, void* ctx) {
    g_error.clear();
    const unsigned long long n = (unsigned long long)spec.block[0] * spec.block[1] * spec.block[2];
    const unsigned long long blocks =
        (unsigned long long)spec.grid[0] * spec.grid[1] * spec.grid[2];
    if (n == 0 || n > 1024 || blocks == 0) {
        g_error = "invalid launch configuration";
        return 1;
    }
    if (spec.order == 2 && blocks > (1ull << 26)) {
        g_error = "ROBOCACHE_EMU_ORDER=shuffle supports at most 2^26 blocks";
        return 1;
    }
    gridDim = dim3(spec.grid[0], spec.grid[1], spec.grid[2]);
    blockDim = dim3(spec.block[0], spec.block[1], spec.block[2]);
    const size_t smem = spec.shared_mem;
    void* smem_buf = std::aligned_alloc(128, (smem + 127) / 128 * 128 + 128);
    dyn_smem = smem_buf;
    Order order(spec.order, spec.seed);
    Sched s;
    s.spec = &spec;
    s.body = body;
    s.ctx = ctx;
    s.n = (unsigned int)n;
    s.nwarps = (s.n + 31) / 32;
    std::vector<unsigned int> seq(s.n);
    std::vector<unsigned long long> block_perm;
    if (spec.order == 2) {
        block_perm.resize(blocks);
        for (unsigned long long i = 0; i < blocks; ++i) block_perm[i] = i;
        std::shuffle(block_perm.begin(), block_perm.end(), order.rng);
    }
    if (spec.cooperative) {
        if (!g_stacks.reserve(s.n)) {
            g_error = "could not map fiber stacks";
            std::free(smem_buf);
            return 1;
        }
        s.state.assign(s.n, DONE);
        s.uc.resize(s.n);
        s.deposit.assign(s.nwarps * 32 * kSlot, 0);
        s.published.assign(s.nwarps * 32 * kSlot, 0);
        s.warp_live.assign(s.nwarps, 0);
        s.vote.assign(s.n, 0);
        g_sched = &s;
    }
    bool ok = true;
    try {
        for (unsigned long long k = 0; ok && k < blocks; ++k) {
            const unsigned long long b = spec.order == 0 ? k
                                         : spec.order == 1 ? blocks - 1 - k
                                                           : block_perm[k];
            blockIdx = uint3{(unsigned int)(b % spec.grid[0]),
                             (unsigned int)(b / spec.grid[0] % spec.grid[1]),
                             (unsigned int)(b / spec.grid[0] / spec.grid[1])};
            std::memset(smem_buf, 0xff, smem);   // shared memory starts as garbage: NaN / -1
            ok = spec.cooperative ? run_block_fibers(s, order)
                                  : run_block_serial(spec, body, ctx, s.n, seq, order);
        }
    } catch (...) {
        if (g_error.empty()) g_error = "the emulator runtime failed (out of memory?)";
        ok = false;
    }
    g_sched = nullptr;
    dyn_smem = nullptr;
    std::free(smem_buf);
    if (!ok && g_error.empty()) g_error = "launch failed";
    return ok ? 0 : 1;
}

}  // namespace rc_emu

RC_EMU_EXPORT const char* rc_emu_last_error() { return rc_emu::g_error.c_str(); }
