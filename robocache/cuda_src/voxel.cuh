// voxel.cuh - what every voxel kernel shares: the grid description, the voxel of a point, exact
// widening of any float type and the per-block count of dropped points.
//
// The voxel of a point (identical in every kernel and in the NumPy backend, bit for bit):
//   q_a = (p_a - origin_a) / size_a, a = x, y, z, in IEEE float64: float32 coordinates are
//   widened exactly (rc_f32_to_f64 in common.cuh: subnormals too, whatever -ftz says), the
//   subtraction and the division are correctly rounded (-ftz and the fast paths touch only
//   float32).
//   The point is kept iff 0 <= q_a < dims_a on every axis (NaN and inf fail the test before any
//   integer cast, so 1e30 cannot wrap into the grid) and 0 <= batch < B; with mean / max also
//   iff every feature is finite. Its voxel is (b, q_x, q_y, q_z) truncated, linear id
//   ((b*X + x)*Y + y)*Z + z, which the host guarantees fits in int32 (times F for features).

#include "common.cuh"

#define RC_VOXEL_THREADS 256         // blockDim of every voxel kernel but voxel_scan_kernel
#define RC_VOXEL_CELLS_PER_THREAD 8  // kernels that walk the grid: cells per thread

struct VoxelGrid {
    double origin[3];  // grid_min
    double size[3];    // voxel_size per axis, > 0
    int dims[3];       // X, Y, Z
    int batch;         // B (1 without batch_index)
    int bidx64;        // batch_index is int64 (else int32)
};

template <typename T> RC_DEVICE double rc_to_f64(T v) { return rc_f32_to_f64(Num<T>::load(v)); }
template <> RC_DEVICE double rc_to_f64<double>(double v) { return v; }

RC_DEVICE bool rc_finite(double x) { return fabs(x) <= 1.7976931348623157e+308; }

// Linear voxel id of point i, or -1 when it is dropped (see the top of this file).
// Bytes: 3 * sizeof(P) (+ the batch index) read.
template <typename P>
RC_DEVICE int rc_voxel_of(const P* __restrict__ pts, const void* bidx, rc_i64 i,
                          const VoxelGrid& g) {
    int c[3];
#pragma unroll
    for (int a = 0; a < 3; ++a) {
        const double q = (rc_to_f64(pts[3 * i + a]) - g.origin[a]) / g.size[a];
        if (!(q >= 0.0 && q < (double)g.dims[a])) return -1;
        c[a] = (int)q;
    }
    int b = 0;
    if (bidx != nullptr) {
        const rc_i64 bb = g.bidx64 ? ((const rc_i64*)bidx)[i] : (rc_i64)((const int*)bidx)[i];
        if (bb < 0 || bb >= (rc_i64)g.batch) return -1;
        b = (int)bb;
    }
    return ((b * g.dims[0] + c[0]) * g.dims[1] + c[1]) * g.dims[2] + c[2];
}

// Adds this block's dropped points to *total with one global atomic. Every thread of the block
// must call it (it synchronises); `block_sum` is a __shared__ counter of the calling kernel.
RC_DEVICE void rc_count_dropped(bool dropped, unsigned int* block_sum, rc_u64* total) {
    if (threadIdx.x == 0) *block_sum = 0u;
    __syncthreads();
    if (dropped) atomicAdd(block_sum, 1u);
    __syncthreads();
    if (threadIdx.x == 0 && *block_sum != 0u) atomicAdd(total, (rc_u64)*block_sum);
}

