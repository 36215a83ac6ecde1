// interp.cuh - where a target time falls among source times: the search and the (row0, row1,
// weight) rule of resample.cu, the CUDA twin of robocache/ops/resample.py's _interp_rows.
#include "common.cuh"

// a <= t in NumPy's sort order, where NaN comes after every number: a NaN target is after the
// span (searchsorted puts it at the end), as on the NumPy backend.
template <typename TT>
RC_DEVICE bool rc_sorts_before_or_at(TT a, TT t) { return a <= t || t != t; }

// The search (rc_warp_search_right_n below): the index of the last source time <= t among
// times[0..n), or -1 when t is before them all (numpy.searchsorted(times, t, side="right") - 1;
// times non-decreasing), found by the 32 lanes of a warp together (every lane calls it with the
// same times, n and t; the warp must be converged). Each round, with step = ceil(len / 33), lane j probes lo + (j + 1) * step - 1 (a
// probe at or past hi counts as after t) and a ballot keeps the part holding the answer, which
// is shorter than step: a search of n times costs ~log33(n) + 1 dependent loads (2 for
// n <= 1089) instead of a binary search's log2(n) (10 for n = 1000), with one division by a
// constant per round (32-bit multiply-high), since the loads gate every row's copy and the
// arithmetic of every lane counts. For times that are not sorted the result is still in
// [-1, n - 1].
//
// Invariant: times[i] <= t for i < lo, times[i] > t for i >= hi.
RC_DEVICE void rc_search_round(unsigned int& lo, unsigned int& hi, unsigned int below) {
    const unsigned int step = (hi - lo + 32u) / 33u;
    const unsigned int k = __popc(below);            // probes 0..k-1 are <= t (a prefix when sorted)
    const unsigned int next = lo + (k + 1u) * step - 1u;  // probe k (k < 32): > t, or past hi
    lo += k * step;
    hi = k < 32u && next < hi ? next : hi;
}

RC_DEVICE unsigned int rc_search_probe(unsigned int lo, unsigned int hi, int lane) {
    return lo + (unsigned int)(lane + 1) * ((hi - lo + 32u) / 33u) - 1u;
}

// How one target time maps onto two source rows and a weight (method codes as in Python).
#define RC_METHOD_LINEAR 0
#define RC_METHOD_NEAREST 1
#define RC_METHOD_PREVIOUS 2

struct RcInterp { int row0; int row1; double w; };

// The weight (t - t0) / (t1 - t0) of a target between two source times, whose differences a and b
// are already rounded to TT, rounded to the kernel's arithmetic type Acc. For float times and
// float arithmetic one float division: the quotient rounded to double and then to float (what
// NumPy's float64 weight cast to float32 is) is the correctly rounded float quotient, since
// 53 >= 2 * 24 + 2 bits; otherwise a double division.
template <typename TT, typename Acc>
RC_DEVICE double rc_weight(TT a, TT b) {
    if (sizeof(TT) == 4 && sizeof(Acc) == 4) return (double)__fdiv_rn((float)a, (float)b);
    return (double)a / (double)b;
}

// R searches at once, for the R rows a warp builds (resample.cu): round by round the probes of
// every search still running are loaded together, so a warp keeps R loads in flight where one
// search would keep one (warp-uniform loop).
// Also returns the final round's window [lo, hi) (<= 32 times, lane j read times[lo + j]) and
// this lane's value from it (probe; unspecified for lanes past hi).
template <typename TT, int R>
RC_DEVICE void rc_warp_search_right_n(const TT* const times[R], int n, const TT t[R], int lane,
                                      int found[R], unsigned int lo[R], unsigned int hi[R],
                                      TT probe[R]) {
#pragma unroll
    for (int q = 0; q < R; ++q) { lo[q] = 0; hi[q] = (unsigned int)n; }
    bool more = n > 32;
    while (more) {
        bool below[R];
#pragma unroll
        for (int q = 0; q < R; ++q) {            // issue every running search's probe first
            const unsigned int pos = rc_search_probe(lo[q], hi[q], lane);
            below[q] = hi[q] - lo[q] > 32u && pos < hi[q] && rc_sorts_before_or_at(__ldg(times[q] + pos), t[q]);
        }
        more = false;
#pragma unroll
        for (int q = 0; q < R; ++q) {
            const unsigned int ballot = __ballot_sync(0xffffffffu, below[q]);
            if (hi[q] - lo[q] > 32u) rc_search_round(lo[q], hi[q], ballot);  // warp-uniform
            more = more || hi[q] - lo[q] > 32u;
        }
    }
    bool in[R];
#pragma unroll
    for (int q = 0; q < R; ++q) {                // <= 32 candidates left in each: one probe per lane
        const unsigned int pos = lo[q] + lane;
        probe[q] = pos < hi[q] ? __ldg(times[q] + pos) : t[q];
        in[q] = pos < hi[q] && rc_sorts_before_or_at(probe[q], t[q]);
    }
#pragma unroll
    for (int q = 0; q < R; ++q) found[q] = (int)lo[q] + __popc(__ballot_sync(0xffffffffu, in[q])) - 1;
}

// rc_interp_rows for R targets (times[q] holds n source times, t[q] the target), the loads of the
// R searches overlapped. The bracketing times t0 = times[i], t1 = times[i + 1] mostly come from
// the lanes that read them in the search's final round (two shuffles), not from another
// dependent load; only when the final window did not hold one of them (i = lo - 1, or
// i + 1 = hi: ~2 rows in 32) is it loaded.
template <typename TT, typename Acc, int R>
RC_DEVICE void rc_interp_rows_n(const TT* const times[R], int n, const TT t[R], int method,
                                int lane, RcInterp r[R]) {
    int i[R];
    unsigned int lo[R], hi[R];
    TT probe[R];
    rc_warp_search_right_n<TT, R>(times, n, t, lane, i, lo, hi, probe);
    TT t0[R], t1[R];
#pragma unroll
    for (int q = 0; q < R; ++q) {
        const int l0 = i[q] - (int)lo[q];        // the lane that read times[i] (-1: none did)
        t0[q] = __shfl_sync(0xffffffffu, probe[q], l0 & 31);
        t1[q] = __shfl_sync(0xffffffffu, probe[q], (l0 + 1) & 31);
        const bool inner = i[q] >= 0 && i[q] < n - 1;
        if (inner && l0 < 0) t0[q] = __ldg(times[q] + i[q]);                         // uniform
        if (inner && (unsigned int)(i[q] + 1) >= hi[q]) t1[q] = __ldg(times[q] + i[q] + 1);
    }
#pragma unroll
    for (int q = 0; q < R; ++q) {
        r[q].w = 0.0;
        if (i[q] < 0) { r[q].row0 = r[q].row1 = 0; continue; }
        if (i[q] >= n - 1) { r[q].row0 = r[q].row1 = n - 1; continue; }
        if (method == RC_METHOD_PREVIOUS) { r[q].row0 = r[q].row1 = i[q]; continue; }
        if (method == RC_METHOD_NEAREST) {
            r[q].row0 = r[q].row1 = ((t1[q] - t[q]) < (t[q] - t0[q])) ? i[q] + 1 : i[q];
            continue;
        }
        r[q].row0 = i[q]; r[q].row1 = i[q] + 1;
        r[q].w = rc_weight<TT, Acc>(t[q] - t0[q], t1[q] - t0[q]);
    }
}

// One target (fuse_kernel): rc_interp_rows_n for R = 1. All 32 lanes of a converged warp call it
// with the same arguments.
template <typename TT, typename Acc>
RC_DEVICE RcInterp rc_interp_rows(const TT* times, int n, TT t, int method, int lane) {
    const TT* const one_times[1] = {times};
    const TT one_t[1] = {t};
    RcInterp r[1];
    rc_interp_rows_n<TT, Acc, 1>(one_times, n, one_t, method, lane, r);
    return r[0];
}
