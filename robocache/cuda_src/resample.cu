// resample.cu - align time series onto target times (linear / nearest / previous), and fuse
// several streams of different rates and widths onto one timeline in one launch.
//
// Layout (all contiguous, row-major):
//   resample: data [B,S,D], src_t [B,S], tgt_t [B,T]  ->  out [B,T,D]
//   fuse:     stream k: data_k [B,S_k,D_k], times_k [B,S_k]; tgt_t [B,T] -> out [B,T,sum D_k]
//
// Work split: one warp per output row (b, j). The 32 lanes search src_t[b] together
// (rc_warp_search_right: 32 probes per round, ~log33(S) + 1 dependent loads, L1/L2-resident
// because neighbouring warps search the same row), then stride over the D features: lanes read
// the two bracketing source rows and write one output row, coalesced. With VEC, each lane moves
// 16 bytes per access (8 bf16/fp16, 4 float, 2 double).
//
// Bytes per call: reads <= 2*B*T*D*sizeof(T) of data (each source row is read ~T/S times, mostly
// from L2 when T ~ S) + B*T*32*(log33(S)+1)*sizeof(TT) of times (cached); writes B*T*D*sizeof(T).
// Floor when T ~ S: (B*S*D + B*T*D) * sizeof(T) / copy bandwidth.

#include "common.cuh"
#include "interp.cuh"

template <typename T>
struct alignas(16) Pack16 { T v[16 / sizeof(T)]; };

template <typename T, typename TT, bool VEC>
__global__ void resample_kernel(const T* __restrict__ data, const TT* __restrict__ src_t,
                                const TT* __restrict__ tgt_t, T* __restrict__ out,
                                int B, int S, int T_, int D, int method) {
    typedef typename Num<T>::Acc Acc;
    const rc_i64 row = ((rc_i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;   // (b, j)
    const int lane = threadIdx.x & 31;
    if (row >= (rc_i64)B * T_) return;
    const rc_i64 b = row / T_;
    const RcInterp r = rc_interp_rows(src_t + b * S, S, tgt_t[row], method, lane);
    const T* a = data + (b * S + r.row0) * D;
    const T* c = data + (b * S + r.row1) * D;
    T* o = out + row * D;
    const Acc w = (Acc)r.w;
    if (VEC) {
        constexpr int N = 16 / sizeof(T);
        const Pack16<T>* ap = reinterpret_cast<const Pack16<T>*>(a);
        const Pack16<T>* cp = reinterpret_cast<const Pack16<T>*>(c);
        Pack16<T>* op = reinterpret_cast<Pack16<T>*>(o);
        for (int p = lane; p < D / N; p += 32) {
            Pack16<T> x = ap[p];
            if (r.row0 != r.row1) {
                const Pack16<T> y = cp[p];
#pragma unroll
                for (int k = 0; k < N; ++k) {
                    const Acc xa = Num<T>::load(x.v[k]);
                    x.v[k] = Num<T>::store(xa + w * (Num<T>::load(y.v[k]) - xa));
                }
            }
            op[p] = x;
        }
    } else {
        for (int d = lane; d < D; d += 32) {
            if (r.row0 == r.row1) {
                o[d] = a[d];                                   // exact copy, no rounding
            } else {
                const Acc xa = Num<T>::load(a[d]);
                o[d] = Num<T>::store(xa + w * (Num<T>::load(c[d]) - xa));
            }
        }
    }
}

// Up to RC_MAX_STREAMS streams, passed by value (one kernel parameter block, no upload).
#define RC_MAX_STREAMS 8
struct FuseStreams {
    rc_u64 data[RC_MAX_STREAMS];    // device pointers to [B,S_k,D_k]
    rc_u64 times[RC_MAX_STREAMS];   // device pointers to [B,S_k]
    int S[RC_MAX_STREAMS];
    int D[RC_MAX_STREAMS];
    int col[RC_MAX_STREAMS];        // first output column of stream k
    int n;                          // number of streams
};

template <typename T, typename TT>
__global__ void fuse_kernel(const FuseStreams streams, const TT* __restrict__ tgt_t,
                            T* __restrict__ out, int B, int T_, int W, int method) {
    typedef typename Num<T>::Acc Acc;
    const rc_i64 row = ((rc_i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (row >= (rc_i64)B * T_) return;
    const rc_i64 b = row / T_;
    const TT t = tgt_t[row];
    T* o = out + row * W;
    for (int k = 0; k < streams.n; ++k) {
        const int S = streams.S[k], D = streams.D[k];
        const T* data = reinterpret_cast<const T*>(streams.data[k]);
        const TT* times = reinterpret_cast<const TT*>(streams.times[k]);
        const RcInterp r = rc_interp_rows(times + b * S, S, t, method, lane);
        const T* a = data + (b * S + r.row0) * D;
        const T* c = data + (b * S + r.row1) * D;
        const Acc w = (Acc)r.w;
        T* ok = o + streams.col[k];
        for (int d = lane; d < D; d += 32) {
            if (r.row0 == r.row1) {
                ok[d] = a[d];
            } else {
                const Acc xa = Num<T>::load(a[d]);
                ok[d] = Num<T>::store(xa + w * (Num<T>::load(c[d]) - xa));
            }
        }
    }
}
