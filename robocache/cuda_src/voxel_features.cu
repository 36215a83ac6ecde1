// voxel_features.cu - point features pooled into dense voxel grids: max and mean per voxel.
// The voxel of a point is defined in voxel.cuh.
//
// Launch sequences (blockDim = RC_VOXEL_THREADS):
//   max:   memset(out) -> voxel_max_scatter_kernel -> voxel_max_finalize_kernel
//   mean:  memset(counts, row counter) -> voxel_mean_prep_kernel -> voxel_slots_kernel ->
//          voxel_mean_exponent_kernel -> voxel_mean_accumulate_kernel ->
//          voxel_mean_finalize_kernel
// Every atomic is on a 32- or 64-bit integer, so both results are independent of thread order:
// max works on order-preserving integer keys, mean sums 64-bit fixed-point integers.

#include "voxel.cuh"

#define RC_VOXEL_EXP_BIAS 2048     // stored exponent = frexp exponent + bias; 0 = no value yet
#define RC_VOXEL_MAX_SHIFT 1000    // largest fixed-point shift

// The voxel of point i as rc_voxel_of gives it, or -1 also when one of its F features (a
// contiguous row) is not finite. Bytes: 3 * sizeof(P) + F * sizeof(T) read.
template <typename P, typename T>
RC_DEVICE int rc_feature_voxel_of(const P* __restrict__ pts, const void* bidx, rc_i64 i,
                                  const VoxelGrid& g, const T* __restrict__ feat, int F) {
    const int v = rc_voxel_of(pts, bidx, i, g);
    if (v < 0) return -1;
    const T* row = feat + i * F;
    for (int f = 0; f < F; ++f)
        if (!rc_finite(rc_to_f64(row[f]))) return -1;
    return v;
}

// max: order-preserving keys. key(f) = bits ^ 0x80000000 for f >= +0, ~bits for f < 0 (sign
// set), so unsigned key order is float order with -0 < +0; key 0 (a negative NaN) never occurs
// because non-finite features drop their point, which makes a zeroed grid mean "empty".

RC_DEVICE unsigned int rc_max_key(float f) {
    const unsigned int u = rc_float_to_bits(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// One thread per point: voxel id, then every feature is read (F * sizeof(T), the row is
// contiguous) and checked finite, then F atomicMax on the consecutive keys of the voxel.
// float64 features are rounded to float32 first (rounding is monotone: the max of rounded
// values is the rounded max). Bytes: N * (3 * sizeof(P) + F * sizeof(T)) read, N*F atomics.
template <typename P, typename T>
__global__ void voxel_max_scatter_kernel(const P* __restrict__ pts, const void* bidx, rc_i64 n,
                                         const VoxelGrid g, const T* __restrict__ feat, int F,
                                         unsigned int* keys, rc_u64* dropped) {
    __shared__ unsigned int block_dropped;
    const rc_i64 i = (rc_i64)blockIdx.x * blockDim.x + threadIdx.x;
    const int v = i < n ? rc_feature_voxel_of(pts, bidx, i, g, feat, F) : -1;
    if (v >= 0) {
        const T* row = feat + i * F;
        unsigned int* k = keys + (rc_i64)v * F;
        for (int f = 0; f < F; ++f) atomicMax(k + f, rc_max_key(rc_f64_to_f32(rc_to_f64(row[f]))));
    }
    if (dropped != nullptr) rc_count_dropped(i < n && v < 0, &block_dropped, dropped);
}

// In place over the whole [cells, F] grid, one thread per element: key -> float bits, empty
// (key 0) -> 0.0f. Bytes: 4 read + 4 written per element, coalesced.
__global__ void voxel_max_finalize_kernel(unsigned int* keys, rc_i64 total) {
    const rc_i64 e = (rc_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= total) return;
    const unsigned int k = keys[e];
    keys[e] = k == 0u ? 0u : ((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// ---------------------------------------------------------------------------------------------
// mean: 64-bit fixed point with a scale per voxel and column. Occupied voxels get a compact row
// (voxel_slots_kernel); for voxel v and column f, with c points:
//   E = max over its points of frexp's exponent of x (|x| < 2^E; zeros ignored),
//   s = min(62 - bit_length(c) - E, RC_VOXEL_MAX_SHIFT),
//   sum = sum of rint(x * 2^s) as 64-bit integers (each term < 2^(62 - bit_length(c)), so the
//         sum of c < 2^bit_length(c) terms cannot overflow),
//   out = float32(ldexp(float64(sum) / c, -s)).
// Quantisation error <= 2^-(s+1) <= max|x| * 2^(bit_length(c) - 62), then one float64 division
// and one rounding to float32. The result depends on the voxel's own points only (not on other
// voxels, clouds or dropped points) and, the sums being integers, not on the atomics' order.

RC_DEVICE int rc_bit_length(int c) {
    int L = 0;
    while (L < 31 && (c >> L) != 0) ++L;
    return L;
}

RC_DEVICE int rc_mean_shift(int stored_exp, int count) {
    const int s = 62 - rc_bit_length(count) - (stored_exp - RC_VOXEL_EXP_BIAS);  // stored 0: cap
    return s < RC_VOXEL_MAX_SHIFT ? s : RC_VOXEL_MAX_SHIFT;
}

// One thread per point: voxel id (-1 if dropped, or if a feature is not finite) written to
// vid[i] and the voxel's count += 1. Bytes: N * (3 * sizeof(P) + F * sizeof(T)) read,
// N * 4 written, N count atomics.
template <typename P, typename T>
__global__ void voxel_mean_prep_kernel(const P* __restrict__ pts, const void* bidx, rc_i64 n,
                                       const VoxelGrid g, const T* __restrict__ feat, int F,
                                       int* vid, int* counts, rc_u64* dropped) {
    __shared__ unsigned int block_dropped;
    const rc_i64 i = (rc_i64)blockIdx.x * blockDim.x + threadIdx.x;
    const int v = i < n ? rc_feature_voxel_of(pts, bidx, i, g, feat, F) : -1;
    if (i < n) vid[i] = v;
    if (v >= 0) atomicAdd(counts + v, 1);
    if (dropped != nullptr) rc_count_dropped(i < n && v < 0, &block_dropped, dropped);
}

// Gives every occupied voxel a row of the compact sums / exponents arrays and zeroes that row.
// Each thread looks at RC_VOXEL_CELLS_PER_THREAD cells (strided by blockDim, coalesced); rows
// are reserved per block with one global atomic. Which row a voxel gets depends on scheduling,
// nothing computed from the row does. Bytes: cells * 4 read, occupied * (4 + F * 12) written.
__global__ void voxel_slots_kernel(const int* __restrict__ counts, int cells, int* slots,
                                   int* next_slot, rc_i64* sums, int* exps, int F) {
    __shared__ int block_n;
    __shared__ int block_base;
    if (threadIdx.x == 0) block_n = 0;
    __syncthreads();
    const rc_i64 first = (rc_i64)blockIdx.x * blockDim.x * RC_VOXEL_CELLS_PER_THREAD + threadIdx.x;
    int local[RC_VOXEL_CELLS_PER_THREAD];
#pragma unroll
    for (int k = 0; k < RC_VOXEL_CELLS_PER_THREAD; ++k) {
        const rc_i64 c = first + (rc_i64)k * blockDim.x;
        local[k] = (c < cells && counts[c] > 0) ? atomicAdd(&block_n, 1) : -1;
    }
    __syncthreads();
    if (threadIdx.x == 0) block_base = atomicAdd(next_slot, block_n);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < RC_VOXEL_CELLS_PER_THREAD; ++k) {
        if (local[k] < 0) continue;
        const int s = block_base + local[k];
        slots[first + (rc_i64)k * blockDim.x] = s;
        for (int f = 0; f < F; ++f) {
            sums[(rc_i64)s * F + f] = 0;
            exps[(rc_i64)s * F + f] = 0;
        }
    }
}

// One thread per feature element (point i, column f), features read coalesced: the largest
// biased exponent of each (voxel, column) by 32-bit atomicMax on its row.
// Bytes: N*F*sizeof(T) + N*4 (vid, cached across a row) read, up to N*F atomics.
template <typename T>
__global__ void voxel_mean_exponent_kernel(const T* __restrict__ feat, int F,
                                           const int* __restrict__ vid, rc_i64 n,
                                           const int* __restrict__ slots, int* exps) {
    const rc_i64 e = (rc_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n * F) return;
    const rc_i64 i = e / F;
    const int v = vid[i];
    if (v < 0) return;
    const double x = rc_to_f64(feat[e]);
    if (x == 0.0) return;
    int ex;
    frexp(x, &ex);
    atomicMax(exps + (rc_i64)slots[v] * F + (e - i * F), ex + RC_VOXEL_EXP_BIAS);
}

// One thread per feature element: adds rint(x * 2^s) to the voxel's row with a 64-bit integer
// atomic. Bytes: N*F*sizeof(T) + N*(4 + 4 + 4) (vid, slot, count; cached across a row) +
// N*F*4 (exponent) read, N*F 8-byte atomics.
template <typename T>
__global__ void voxel_mean_accumulate_kernel(const T* __restrict__ feat, int F,
                                             const int* __restrict__ vid, rc_i64 n,
                                             const int* __restrict__ counts,
                                             const int* __restrict__ slots,
                                             const int* __restrict__ exps, rc_i64* sums) {
    const rc_i64 e = (rc_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n * F) return;
    const rc_i64 i = e / F;
    const int v = vid[i];
    if (v < 0) return;
    const rc_i64 at = (rc_i64)slots[v] * F + (e - i * F);
    const int s = rc_mean_shift(exps[at], counts[v]);
    const rc_i64 term = (rc_i64)rint(ldexp(rc_to_f64(feat[e]), s));
    if (term != 0) atomicAdd((rc_u64*)(sums + at), (rc_u64)term);
}

// One thread per output element (voxel, f): out = float32(ldexp(sum / count, -s)), 0 for an
// empty voxel. Bytes: cells*F*4 written (coalesced), counts read (cached across F), occupied
// voxels' slot, exponents and sums read.
__global__ void voxel_mean_finalize_kernel(const int* __restrict__ counts,
                                           const int* __restrict__ slots,
                                           const rc_i64* __restrict__ sums,
                                           const int* __restrict__ exps, int F, rc_i64 total,
                                           float* out) {
    const rc_i64 e = (rc_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= total) return;
    const rc_i64 cell = e / F;
    const int c = counts[cell];
    float r = 0.0f;
    if (c > 0) {
        const rc_i64 at = (rc_i64)slots[cell] * F + (e - cell * F);
        const double m = (double)sums[at] / (double)c;
        r = rc_f64_to_f32(ldexp(m, -rc_mean_shift(exps[at], c)));
    }
    out[e] = r;
}
