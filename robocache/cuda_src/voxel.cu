// voxel.cu - point clouds to dense occupancy / count grids, and the sorted list of occupied
// voxels with their counts. The voxel of a point is defined in voxel.cuh.
//
// Launch sequences (blockDim = RC_VOXEL_THREADS but for the scan):
//   occupancy / count:  memset(out) -> voxel_scatter_kernel
//   coordinates:        memset(counts) -> voxel_scatter_kernel -> voxel_block_occupied_kernel ->
//                       voxel_scan_kernel -> (host reads the total) -> voxel_emit_kernel
// Counts are 32-bit integer atomics, occupancy plain byte stores of 1: both independent of
// thread order.

#include "voxel.cuh"

#define RC_VOXEL_SCAN_THREADS 1024  // blockDim of voxel_scan_kernel

// The arguments of voxel_scatter_kernel, passed by value as one struct (CuPy's launch costs
// ~0.2 us per argument). ops/voxel.py packs the same layout (VOXEL_SCATTER_DTYPE).
struct VoxelScatterArgs {
    rc_u64 pts;       // P [n, 3]
    rc_u64 bidx;      // int32 / int64 [n] batch index, or 0
    rc_u64 out;       // uint8 (OCC) or int32 grid, zeroed by the caller
    rc_u64 dropped;   // u64 count of dropped points, or 0
    rc_i64 n;
    VoxelGrid g;
};

// Occupancy (OCC: out is uint8, kept voxels set to 1) or count (out is int32, += 1 per point).
// One thread per point: reads the point (3 * sizeof(P), coalesced across the warp) and its batch
// index, then one random 1-byte store or 4-byte atomic into the grid (L2-resident for grids up
// to tens of MB). Bytes: N * (3 * sizeof(P) + sizeof(batch index)) read, N scattered updates.
// Racing stores of the same 1 are benign, so occupancy needs no atomics.
template <typename P, bool OCC>
__global__ void voxel_scatter_kernel(const VoxelScatterArgs a) {
    __shared__ unsigned int block_dropped;
    const P* __restrict__ pts = reinterpret_cast<const P*>(a.pts);
    const void* bidx = reinterpret_cast<const void*>(a.bidx);
    rc_u64* dropped = reinterpret_cast<rc_u64*>(a.dropped);
    const rc_i64 i = (rc_i64)blockIdx.x * blockDim.x + threadIdx.x;
    const int v = i < a.n ? rc_voxel_of(pts, bidx, i, a.g) : 0;
    if (i < a.n && v >= 0) {
        if (OCC) reinterpret_cast<unsigned char*>(a.out)[v] = 1;
        else atomicAdd(reinterpret_cast<int*>(a.out) + v, 1);
    }
    if (dropped != nullptr) rc_count_dropped(i < a.n && v < 0, &block_dropped, dropped);
}

// ---------------------------------------------------------------------------------------------
// The sorted list of occupied voxels, from a count grid, in three steps: occupied cells per
// block chunk, an exclusive scan over the chunks, then each chunk writes its voxels in order.
// A chunk is blockDim * RC_VOXEL_CELLS_PER_THREAD consecutive cells; thread t owns the
// RC_VOXEL_CELLS_PER_THREAD consecutive cells starting at t * RC_VOXEL_CELLS_PER_THREAD.

// Inclusive scan of x over the block (Hillis-Steele in shared memory, log2(blockDim) steps).
RC_DEVICE int rc_block_inclusive_scan(int x, int* buf) {
    const int t = threadIdx.x;
    buf[t] = x;
    __syncthreads();
    for (int off = 1; off < (int)blockDim.x; off <<= 1) {
        const int y = t >= off ? buf[t - off] : 0;
        __syncthreads();
        buf[t] += y;
        __syncthreads();
    }
    const int r = buf[t];
    __syncthreads();  // buf may be reused by the caller
    return r;
}

RC_DEVICE int rc_occupied_in_run(const int* counts, rc_i64 start, int cells) {
    int k = 0;
    for (int j = 0; j < RC_VOXEL_CELLS_PER_THREAD; ++j)
        k += (start + j < cells && counts[start + j] > 0) ? 1 : 0;
    return k;
}

// Bytes: cells * 4 read; one int written per chunk. blockDim must be RC_VOXEL_THREADS.
__global__ void voxel_block_occupied_kernel(const int* __restrict__ counts, int cells,
                                            int* chunk_counts) {
    __shared__ int buf[RC_VOXEL_THREADS];
    const rc_i64 start = ((rc_i64)blockIdx.x * blockDim.x + threadIdx.x) * RC_VOXEL_CELLS_PER_THREAD;
    const int total = rc_block_inclusive_scan(rc_occupied_in_run(counts, start, cells), buf);
    if (threadIdx.x == blockDim.x - 1) chunk_counts[blockIdx.x] = total;
}

// One block of RC_VOXEL_SCAN_THREADS threads: chunk_counts[0..n) becomes its exclusive prefix
// sum, and *total the sum. Each thread scans a contiguous segment serially around one block-wide
// scan. __launch_bounds__ keeps the kernel within 64 registers per thread, or a 1024-thread launch
// fails ("too many resources requested") on every GPU.
__global__ void __launch_bounds__(RC_VOXEL_SCAN_THREADS)
voxel_scan_kernel(int* chunk_counts, int n, int* total) {
    __shared__ int buf[RC_VOXEL_SCAN_THREADS];
    const int per = (n + (int)blockDim.x - 1) / (int)blockDim.x;
    const int lo = threadIdx.x * per;
    const int hi = lo + per < n ? lo + per : n;
    int s = 0;
    for (int j = lo; j < hi; ++j) s += chunk_counts[j];
    const int incl = rc_block_inclusive_scan(s, buf);
    int run = incl - s;
    for (int j = lo; j < hi; ++j) {
        const int c = chunk_counts[j];
        chunk_counts[j] = run;
        run += c;
    }
    if (threadIdx.x == blockDim.x - 1) *total = incl;
}

// Writes the occupied voxels of each chunk at its offset, in increasing linear id:
// coords [M, ncol] int32 = (b, x, y, z) or (x, y, z), counts [M] int32.
// Bytes: cells * 4 read; M * (ncol + 1) * 4 written.
__global__ void voxel_emit_kernel(const int* __restrict__ counts, int cells,
                                  const int* __restrict__ chunk_offsets, const VoxelGrid g,
                                  int ncol, int* coords, int* out_counts) {
    __shared__ int buf[RC_VOXEL_THREADS];
    const rc_i64 start = ((rc_i64)blockIdx.x * blockDim.x + threadIdx.x) * RC_VOXEL_CELLS_PER_THREAD;
    const int k = rc_occupied_in_run(counts, start, cells);
    int at = chunk_offsets[blockIdx.x] + rc_block_inclusive_scan(k, buf) - k;
    for (int j = 0; j < RC_VOXEL_CELLS_PER_THREAD; ++j) {
        const rc_i64 c = start + j;
        if (c >= cells || counts[c] <= 0) continue;
        int id = (int)c;
        int* row = coords + (rc_i64)at * ncol;
        row[ncol - 1] = id % g.dims[2]; id /= g.dims[2];
        row[ncol - 2] = id % g.dims[1]; id /= g.dims[1];
        row[ncol - 3] = id % g.dims[0]; id /= g.dims[0];
        if (ncol == 4) row[0] = id;
        out_counts[at] = counts[c];
        ++at;
    }
}
