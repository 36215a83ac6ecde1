// resample.cu - align time series onto target times (linear / nearest / previous), and fuse
// several streams of different rates and widths onto one timeline in one launch.
//
// Layout (all contiguous, row-major):
//   resample: data [B,S,D], src_t [B,S], tgt_t [B,T]  ->  out [B,T,D]
//   fuse:     stream k: data_k [B,S_k,D_k], times_k [B,S_k]; tgt_t [B,T] -> out [B,T,sum D_k]
//
// Work split: resample - one warp per RC_RESAMPLE_ROWS (4) consecutive output rows (b, j). The
// 32 lanes search src_t[b] together (rc_warp_search_right_n: 32 probes per round, ~log33(S) + 1
// dependent loads, L1/L2-resident because neighbouring warps search the same row), the 4
// searches' loads issued together; then they stride over the D features: lanes read the two
// bracketing source rows of all 4 rows (8 loads in flight per lane) and write the 4 output rows,
// coalesced. A warp per row would wait out each row's chain of dependent loads (search, times,
// data) alone: latency, not bandwidth, set the pace. With VEC, each lane moves 16 bytes per access
// (8 bf16/fp16, 4 float, 2 double). fuse - one warp per (output row, stream).
//
// Bytes per call: reads <= 2*B*T*D*sizeof(T) of data (each source row is read ~T/S times, mostly
// from L2 when T ~ S) + B*T*32*(log33(S)+1)*sizeof(TT) of times (cached); writes B*T*D*sizeof(T).
// Floor when T ~ S: (B*S*D + B*T*D) * sizeof(T) / copy bandwidth.

#include "common.cuh"
#include "interp.cuh"

// Tuning knobs, fixed at compile time (benchmarks/bench_resample.py's sweep compiles variants
// with -D; the defaults are what the ops use):
//   RC_RESAMPLE_ROWS        output rows per warp (ROWS_PER_WARP in ops/resample.py)
//   RC_RESAMPLE_MIN_BLOCKS  blocks of 256 per SM asked of the register allocator, and
//   RC_RESAMPLE_MIN_BLOCKS_16 the same for 16-bit data with float times: 4 blocks (64
//                           registers, 28 bytes spilled) made the 264 MB bf16 workload 10%
//                           faster than 3 (no spills) on an H200; the other types spill
//                           40-68 bytes at 4 and keep 3 (not measured there).
// (Streaming stores, st.global.cs, were also tried: no difference on an H200; RESULTS.md.)
#ifndef RC_RESAMPLE_ROWS
#define RC_RESAMPLE_ROWS 4
#endif
#ifndef RC_RESAMPLE_MIN_BLOCKS
#define RC_RESAMPLE_MIN_BLOCKS 3
#endif
#ifndef RC_RESAMPLE_MIN_BLOCKS_16
#define RC_RESAMPLE_MIN_BLOCKS_16 4
#endif
template <typename T, typename TT> struct RcResampleBlocks { enum { value = RC_RESAMPLE_MIN_BLOCKS }; };
template <> struct RcResampleBlocks<rc_bf16, float> { enum { value = RC_RESAMPLE_MIN_BLOCKS_16 }; };
template <> struct RcResampleBlocks<rc_half, float> { enum { value = RC_RESAMPLE_MIN_BLOCKS_16 }; };

// x + w * (y - x) in the accumulation type, rounded once to T.
template <typename T, typename Acc>
RC_DEVICE T rc_lerp(T x, T y, Acc w) {
    const Acc xa = Num<T>::load(x);
    return Num<T>::store(xa + w * (Num<T>::load(y) - xa));
}

// VEC: 16 bytes of T per lane and access, held as four 32-bit words (a 128-bit load and store;
// the elements are taken out of the words with one instruction or none each, where a struct of
// 16-bit fields was split field by field). rc_lerp16: x + w * (y - x) per element, rounded once
// to T.
template <typename T, typename Acc>
RC_DEVICE void rc_lerp16(uint4& x, const uint4& y, Acc w);

template <>
RC_DEVICE void rc_lerp16<float, float>(uint4& x, const uint4& y, float w) {
    x.x = __float_as_uint(rc_lerp(__uint_as_float(x.x), __uint_as_float(y.x), w));
    x.y = __float_as_uint(rc_lerp(__uint_as_float(x.y), __uint_as_float(y.y), w));
    x.z = __float_as_uint(rc_lerp(__uint_as_float(x.z), __uint_as_float(y.z), w));
    x.w = __float_as_uint(rc_lerp(__uint_as_float(x.w), __uint_as_float(y.w), w));
}

template <>
RC_DEVICE void rc_lerp16<double, double>(uint4& x, const uint4& y, double w) {
    const double a0 = __hiloint2double((int)x.y, (int)x.x), a1 = __hiloint2double((int)x.w, (int)x.z);
    const double b0 = __hiloint2double((int)y.y, (int)y.x), b1 = __hiloint2double((int)y.w, (int)y.z);
    const double r0 = rc_lerp(a0, b0, w), r1 = rc_lerp(a1, b1, w);
    x.x = (unsigned int)__double2loint(r0);
    x.y = (unsigned int)__double2hiint(r0);
    x.z = (unsigned int)__double2loint(r1);
    x.w = (unsigned int)__double2hiint(r1);
}

// The two 16-bit floats of a word (lo: bits 0-15) as floats, exactly. bfloat16: a shift and a
// mask. binary16: one cvt each on sm_80+ (as rc_pack2), elsewhere common.cuh's bit operations.
template <typename T16> RC_DEVICE void rc_unpack2(unsigned int word, float& lo, float& hi);
template <> RC_DEVICE void rc_unpack2<rc_bf16>(unsigned int word, float& lo, float& hi) {
    lo = __uint_as_float(word << 16);
    hi = __uint_as_float(word & 0xffff0000u);
}
template <> RC_DEVICE void rc_unpack2<rc_half>(unsigned int word, float& lo, float& hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm("{\n\t.reg .b16 l, h;\n\tmov.b32 {l, h}, %2;\n\tcvt.f32.f16 %0, l;\n\tcvt.f32.f16 %1, h;\n\t}"
        : "=f"(lo), "=f"(hi) : "r"(word));
#else
    rc_half a, b;
    a.bits = (unsigned short)(word & 0xffffu);
    b.bits = (unsigned short)(word >> 16);
    lo = rc_half_to_float(a);
    hi = rc_half_to_float(b);
#endif
}

// Two 16-bit elements of x and y (one word each) interpolated and rounded back into one word.
template <typename T16>
RC_DEVICE unsigned int rc_lerp2(unsigned int x, unsigned int y, float w) {
    float x0, x1, y0, y1;
    rc_unpack2<T16>(x, x0, x1);
    rc_unpack2<T16>(y, y0, y1);
    return rc_pack2<T16>(x0 + w * (y0 - x0), x1 + w * (y1 - x1));
}
template <typename T16>
RC_DEVICE void rc_lerp16_halves(uint4& x, const uint4& y, float w) {
    x.x = rc_lerp2<T16>(x.x, y.x, w);
    x.y = rc_lerp2<T16>(x.y, y.y, w);
    x.z = rc_lerp2<T16>(x.z, y.z, w);
    x.w = rc_lerp2<T16>(x.w, y.w, w);
}
template <>
RC_DEVICE void rc_lerp16<rc_bf16, float>(uint4& x, const uint4& y, float w) {
    rc_lerp16_halves<rc_bf16>(x, y, w);
}
template <>
RC_DEVICE void rc_lerp16<rc_half, float>(uint4& x, const uint4& y, float w) {
    rc_lerp16_halves<rc_half>(x, y, w);
}

// The arguments of resample_kernel, passed by value as one struct (CuPy's launch costs ~0.2 us
// per argument: one struct instead of nine). ops/resample.py packs the same layout
// (RESAMPLE_ARGS_DTYPE); keep the two in step.
struct ResampleArgs {
    rc_u64 data;    // T [B,S,D]
    rc_u64 src_t;   // TT [B,S]
    rc_u64 tgt_t;   // TT [B,T]
    rc_u64 out;     // T [B,T,D]
    int B, S, T, D;
    int method;     // RC_METHOD_*
};

// __launch_bounds__: 3 blocks of 256 per SM (<= 85 registers, no spills on sm_90): 24 warps x
// 4 rows = 96 rows in flight per SM; 4 blocks for 16-bit data with float times (<= 64
// registers): 32 warps, 128 rows.
template <typename T, typename TT, bool VEC>
__global__ void __launch_bounds__(256, RcResampleBlocks<T, TT>::value) resample_kernel(const ResampleArgs args) {
    const T* __restrict__ data = reinterpret_cast<const T*>(args.data);
    const TT* __restrict__ src_t = reinterpret_cast<const TT*>(args.src_t);
    const TT* __restrict__ tgt_t = reinterpret_cast<const TT*>(args.tgt_t);
    T* __restrict__ out = reinterpret_cast<T*>(args.out);
    const int S = args.S, T_ = args.T, D = args.D, method = args.method;
    const int B = args.B;
    typedef typename Num<T>::Acc Acc;
    constexpr int R = RC_RESAMPLE_ROWS;
    const rc_i64 rows = (rc_i64)B * T_;
    const rc_i64 first = (((rc_i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5) * R;
    const int lane = threadIdx.x & 31;
    if (first >= rows) return;
    const int nq = rows - first < R ? (int)(rows - first) : R;
    const TT* times[R];
    TT t[R];
    rc_i64 b[R];
    rc_i64 bq = first / T_;                  // one division per warp, then row by row
    int jq = (int)(first - bq * T_);
#pragma unroll
    for (int q = 0; q < R; ++q) {            // rows past the end repeat the last row, unstored
        b[q] = q < nq ? bq : b[q > 0 ? q - 1 : 0];
        t[q] = __ldg(tgt_t + (q < nq ? first + q : rows - 1));
        times[q] = src_t + b[q] * S;
        if (++jq == T_) { jq = 0; ++bq; }
    }
    RcInterp r[R];
    rc_interp_rows_n<TT, Acc, R>(times, S, t, method, lane, r);
    const T* a[R];
    const T* c[R];
    Acc w[R];
#pragma unroll
    for (int q = 0; q < R; ++q) {
        a[q] = data + (b[q] * S + r[q].row0) * D;
        c[q] = data + (b[q] * S + r[q].row1) * D;
        w[q] = (Acc)r[q].w;
    }
    if (VEC) {
        constexpr int N = 16 / sizeof(T);
        for (int p = lane; p < D / N; p += 32) {
            uint4 x[R], y[R];
#pragma unroll
            for (int q = 0; q < R; ++q) {    // all 2R loads in flight before any store
                x[q] = __ldg(reinterpret_cast<const uint4*>(a[q]) + p);  // read-only path
                if (r[q].row0 != r[q].row1) y[q] = __ldg(reinterpret_cast<const uint4*>(c[q]) + p);
            }
#pragma unroll
            for (int q = 0; q < R; ++q) {
                if (q >= nq) break;
                if (r[q].row0 != r[q].row1) rc_lerp16<T, Acc>(x[q], y[q], w[q]);
                reinterpret_cast<uint4*>(out + (first + q) * D)[p] = x[q];
            }
        }
    } else {
        for (int d = lane; d < D; d += 32) {
            T x[R], y[R];
#pragma unroll
            for (int q = 0; q < R; ++q) {
                x[q] = a[q][d];
                if (r[q].row0 != r[q].row1) y[q] = c[q][d];
            }
#pragma unroll
            for (int q = 0; q < R; ++q) {
                if (q >= nq) break;
                out[(first + q) * D + d] = r[q].row0 == r[q].row1 ? x[q]  // exact copy, no rounding
                                                                 : rc_lerp(x[q], y[q], w[q]);
            }
        }
    }
}

// Up to RC_MAX_STREAMS streams and the call's other arguments, passed by value as one struct
// (one kernel parameter block, no upload). ops/resample.py packs the same layout
// (FUSE_STREAMS_DTYPE); keep the two in step.
#define RC_MAX_STREAMS 8
struct FuseStreams {
    rc_u64 data[RC_MAX_STREAMS];    // device pointers to [B,S_k,D_k]
    rc_u64 times[RC_MAX_STREAMS];   // device pointers to [B,S_k]
    rc_u64 tgt_t;                   // TT [B,T]
    rc_u64 out;                     // T [B,T,W]
    int S[RC_MAX_STREAMS];
    int D[RC_MAX_STREAMS];
    int col[RC_MAX_STREAMS];        // first output column of stream k
    int n;                          // number of streams
    int B, T, W;                    // W = sum of D_k
    int method;                     // RC_METHOD_*
};

// One warp per (output row, stream): warp w does stream w % n of row w / n, so the streams'
// chains of dependent loads (target, search rounds, data) run side by side instead of one
// after another. Reads each stream's two bracketing rows (D_k values each, coalesced by lane),
// writes D_k values of the output row at column col[k].
template <typename T, typename TT>
__global__ void fuse_kernel(const FuseStreams streams) {
    typedef typename Num<T>::Acc Acc;
    const int T_ = streams.T, W = streams.W, method = streams.method, n = streams.n;
    const rc_i64 warp = ((rc_i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    const rc_i64 row = warp / n;
    const int k = (int)(warp - row * n);
    if (row >= (rc_i64)streams.B * T_) return;
    const rc_i64 b = row / T_;
    const TT t = reinterpret_cast<const TT*>(streams.tgt_t)[row];
    const int S = streams.S[k], D = streams.D[k];
    const T* data = reinterpret_cast<const T*>(streams.data[k]);
    const TT* times = reinterpret_cast<const TT*>(streams.times[k]);
    const RcInterp r = rc_interp_rows<TT, Acc>(times + b * S, S, t, method, lane);
    const T* a = data + (b * S + r.row0) * D;
    const T* c = data + (b * S + r.row1) * D;
    const Acc w = (Acc)r.w;
    T* ok = reinterpret_cast<T*>(streams.out) + row * W + streams.col[k];
    for (int d = lane; d < D; d += 32) {
        if (r.row0 == r.row1) {
            ok[d] = a[d];
        } else {
            const Acc xa = Num<T>::load(a[d]);
            ok[d] = Num<T>::store(xa + w * (Num<T>::load(c[d]) - xa));
        }
    }
}
