// selftest.cu - test-only kernels that exercise the emulator itself: builtin indices, shared
// memory and barriers, warp intrinsics, atomics, intrinsics, argument passing, failures.
// Every kernel is also valid CUDA (tests compile this file with NVRTC where it is installed).
#include "common.cuh"

// Each thread writes (threadIdx, blockIdx, blockDim, gridDim) at its global linear index.
__global__ void index_kernel(int* __restrict__ out) {
    const unsigned int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    int* o = out + 12 * (b * blockDim.x * blockDim.y * blockDim.z + t);
    o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
    o[3] = blockIdx.x; o[4] = blockIdx.y; o[5] = blockIdx.z;
    o[6] = blockDim.x; o[7] = blockDim.y; o[8] = blockDim.z;
    o[9] = gridDim.x; o[10] = gridDim.y; o[11] = gridDim.z;
}

// Per block: the sum of its elements of x (tree reduction in dynamic shared memory), and the
// number of positive ones (__syncthreads_count), all-positive / any-positive (_and / _or).
__global__ void block_sum_kernel(const int* __restrict__ x, int n, int* __restrict__ sums,
                                 int* __restrict__ votes) {
    extern __shared__ __align__(16) int smem[];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int v = i < n ? x[i] : 0;
    smem[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {   // blockDim is a power of two
        if (threadIdx.x < s) smem[threadIdx.x] += smem[threadIdx.x + s];
        __syncthreads();
    }
    const int pos = __syncthreads_count(i < n && v > 0);
    const int all = __syncthreads_and(i >= n || v > 0);
    const int any = __syncthreads_or(i < n && v > 0);
    if (threadIdx.x == 0) {
        sums[blockIdx.x] = smem[0];
        votes[3 * blockIdx.x] = pos;
        votes[3 * blockIdx.x + 1] = all;
        votes[3 * blockIdx.x + 2] = any;
    }
}

// The same sum with a static __shared__ array, threads past n returning before the barriers.
template <int BLOCK>
__global__ void block_sum_static_kernel(const int* __restrict__ x, int n, int* __restrict__ sums) {
    __shared__ int buf[BLOCK];
    const int i = blockIdx.x * BLOCK + threadIdx.x;
    if (i >= n) return;                       // dropped from the barriers below
    const int live = min(BLOCK, n - (int)(blockIdx.x * BLOCK));
    buf[threadIdx.x] = x[i];
    __syncthreads();
    if (threadIdx.x == 0) {
        int s = 0;
        for (int k = 0; k < live; ++k) s += buf[k];
        sums[blockIdx.x] = s;
    }
    __syncthreads();
    buf[threadIdx.x] = -1;                    // the next block must not see this block's values
}

// Per warp (full warps only): xor-butterfly sum, inclusive scan with __shfl_up_sync, a tree sum
// with __shfl_down_sync, lane 3's value broadcast, and the ballot of x > 0.
__global__ void warp_kernel(const int* __restrict__ x, int* __restrict__ out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x & 31;
    const int v = x[i];
    int sum = v;
    for (int m = 16; m > 0; m >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, m);
    int scan = v;
    for (int d = 1; d < 32; d <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, scan, d);
        if (lane >= d) scan += y;
    }
    int down = v;
    for (int d = 16; d > 0; d >>= 1) down += __shfl_down_sync(0xffffffffu, down, d);
    const int bcast = __shfl_sync(0xffffffffu, v, 3);
    const unsigned int ballot = __ballot_sync(0xffffffffu, v > 0);
    int* o = out + 6 * i;
    o[0] = sum; o[1] = scan; o[2] = down; o[3] = bcast; o[4] = (int)ballot;
    o[5] = __any_sync(0xffffffffu, v > 100) + 2 * __all_sync(0xffffffffu, v > -100);
}

// Waits at a warp barrier in lane 0 and at the block barrier elsewhere: a deadlock.
__global__ void deadlock_kernel(int* out) {
    if ((threadIdx.x & 31) == 0) __syncwarp(); else __syncthreads();
    out[threadIdx.x] = 1;
}

// Histogram and reductions with atomics; one element per thread.
__global__ void atomic_kernel(const int* __restrict__ x, int n, int* __restrict__ hist, int nbins,
                              float* __restrict__ fsum, double* __restrict__ dsum,
                              int* __restrict__ imax, unsigned int* __restrict__ umin,
                              unsigned long long* __restrict__ ubits, float* __restrict__ fmax_) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int v = x[i];
    atomicAdd(&hist[((v % nbins) + nbins) % nbins], 1);
    atomicAdd(fsum, (float)v);                // small integers: exact in any order
    atomicAdd(dsum, (double)v);
    atomicMax(imax, v);
    atomicMin(umin, (unsigned int)(v + 1000));
    atomicOr(ubits, 1ull << (((v % 64) + 64) % 64));
    // float max through atomicCAS on the bits
    const float f = (float)v * 0.5f;
    unsigned int* addr = reinterpret_cast<unsigned int*>(fmax_);
    unsigned int old = *addr, assumed;
    do {
        assumed = old;
        if (__uint_as_float(assumed) >= f) break;
        old = atomicCAS(addr, assumed, __float_as_uint(f));
    } while (old != assumed);
}

// Conversion intrinsics and min/max, one input per thread.
__global__ void intrinsics_kernel(const float* __restrict__ x, int n, int* __restrict__ i_rn,
                                  unsigned int* __restrict__ u_rn, int* __restrict__ i_rz,
                                  float* __restrict__ sat, float* __restrict__ mn,
                                  int* __restrict__ bits) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = x[i];
    i_rn[i] = __float2int_rn(v);
    u_rn[i] = __float2uint_rn(v);
    i_rz[i] = __float2int_rz(v);
    sat[i] = __saturatef(v);
    mn[i] = max(min(v, 2.0f), -2.0f);
    bits[i] = __popc(__float_as_uint(v)) + 64 * __clz(__float_as_int(v));
}

// Scalars of every kind and a struct by value, written back as doubles.
struct Pair { int a; double b; };
__global__ void args_kernel(double d, float f, long long ll, unsigned short us, bool flag,
                            Pair p, signed char sc, double* __restrict__ out) {
    if (threadIdx.x + blockIdx.x != 0) return;
    out[0] = d; out[1] = f; out[2] = (double)ll; out[3] = us; out[4] = flag;
    out[5] = p.a; out[6] = p.b; out[7] = sc;
}

// float4 loads and stores (16-byte vector type), scaled by s.
__global__ void scale4_kernel(const float4* __restrict__ in, float4* __restrict__ out, int n,
                              float s) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float4 v = in[i];
    out[i] = make_float4(v.x * s, v.y * s, v.z * s, v.w * s);
}

// Fails in one thread of one block.
__global__ void trap_kernel(int* out) {
    if (blockIdx.x == 1 && threadIdx.x == 5) __trap();
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1;
}

// File-scope dynamic shared memory (CUDA allows it), reinterpreted: reverses each block's slice.
extern __shared__ unsigned char g_smem[];
__global__ void reverse_kernel(const float* __restrict__ x, float* __restrict__ out) {
    float* s = reinterpret_cast<float*>(g_smem);
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    s[threadIdx.x] = x[i];
    __syncthreads();
    out[i] = s[blockDim.x - 1 - threadIdx.x];
}
