// windows.cu - build one training batch of windowed samples, every low-dimensional key, in ONE
// launch: gather, edge/zero padding, is_pad masks, normalization and the output dtype.
//
// Inputs (all device memory, set up once per dataset by ops/windows.py):
//   idx      int64 [B]        dataset indices of this batch (a slice of the epoch's order)
//   anchors  int64 [A, 4]     per dataset index: (anchor frame a, episode start s, episode end e,
//                             episode index)
//   deltas   int32 [sum K_k]  every key's frame offsets, concatenated
//   per key k (struct WinKeys, by value): the store array src_k [N, F_k], its offsets, dtype codes,
//   optional normalization parameters norm_a/norm_b float32 [F_k], and output pointers.
// Per sample b, key k, delta j, feature f:
//   q = a + delta_kj; is_pad = q < s || q >= e; row = clamp(q, s, e - 1)
//   (a key without deltas reads row clamp(a, s, e - 1) and is never padded)
//   value = pad && zero_pad ? 0 : convert(src_k[row, f]) then
//           norm 1: (x - a_f) / b_f       (LeRobot MEAN_STD: b_f = std + eps)
//           norm 2: 2 * (x - a_f) / b_f - 1   (MIN_MAX / QUANTILES: b_f = hi - lo, eps if 0)
//           norm 3: x * a_f + b_f         (diffusion_policy's LinearNormalizer: scale, offset;
//                                          multiply and add rounded apart, as torch does)
//   in float32 arithmetic (float64 when the output is float64, or when the norm code carries
//   RC_NORM_F64: robomimic's NumPy promotion of float64 sources, rounded once to the output
//   dtype), written as the output dtype;
//   out_code < 0 copies the element's bytes unchanged (integer/bool keys, exact). float32 <->
//   float64 conversions are exact for subnormals too (common.cuh; -ftz would flush them), as in
//   NumPy; float32 arithmetic (normalization) flushes subnormal operands and results under -ftz.
// Outputs: values [B, K, F] ([B, F] when a key has no deltas), is_pad bool [B, K],
//   "rows" int64 [B, K] for keys whose frames another kernel reads (camera frames),
//   index / episode_index / frame_index int64 [B].
//
// Work split: blockIdx.x = sample b; the threads of gridDim.y blocks stride over that sample's
// W work items, laid out as segments (meta | key 0 values | key 0 mask | key 1 values | ...).
// Consecutive threads take consecutive features of one source row, so reads of a row and writes
// of an output row are coalesced. Each thread reads idx[b] and anchors[idx[b]] (32 bytes, the
// same address for the whole block: one broadcast, then L1) and its delta (L1-resident).
//
// Bytes per batch: reads B * sum_k K_k * F_k * sizeof(in_k) of frames (+ 40 B per sample of
// index tables), writes B * sum_k K_k * (F_k * sizeof(out_k) + 1) + 24 B per sample.
// PERF.md workload (B=256, state 32 f32 x 2 deltas, action 14 f32 x 16 deltas): ~295 KB read,
// ~300 KB written: ~0.15 us at copy bandwidth, so a batch costs one launch (~7 us host side).

#include "common.cuh"

#define RC_WIN_MAX_KEYS 32
#define RC_WIN_MAX_SEGS (1 + 2 * RC_WIN_MAX_KEYS)
#define RC_NORM_F64 4  // flag in norm[k]: normalize in float64 arithmetic (NORM_F64 in ops/windows.py)

// dtype codes: DTYPE_CODES in ops/windows.py
#define RC_F32 0
#define RC_F64 1
#define RC_F16 2
#define RC_BF16 3
#define RC_U8 4
#define RC_I8 5
#define RC_I16 6
#define RC_I32 7
#define RC_I64 8
#define RC_U16 9
#define RC_U32 10
#define RC_BOOL 11
#define RC_U64 12

// segment kinds
#define RC_SEG_META 0
#define RC_SEG_VALUES 1
#define RC_SEG_MASK 2
#define RC_SEG_ROWS 3

struct WinKeys {
    rc_u64 src[RC_WIN_MAX_KEYS];       // store array [N, F]
    rc_u64 out[RC_WIN_MAX_KEYS];       // values [B, K, F] / [B, F], or rows int64 [B, K] / [B]
    rc_u64 mask[RC_WIN_MAX_KEYS];      // bool [B, K]; written by the key's MASK segment
    rc_u64 norm_a[RC_WIN_MAX_KEYS];    // float32 [F], used when norm != 0
    rc_u64 norm_b[RC_WIN_MAX_KEYS];
    int F[RC_WIN_MAX_KEYS];            // elements per frame
    int K[RC_WIN_MAX_KEYS];            // number of deltas; 0 = the anchor frame only
    int delta_off[RC_WIN_MAX_KEYS];    // first delta of the key in `deltas`
    int in_code[RC_WIN_MAX_KEYS];
    int out_code[RC_WIN_MAX_KEYS];     // -1: copy the bytes (same dtype in and out)
    int norm[RC_WIN_MAX_KEYS];         // 0 none, 1 (x-a)/b, 2 2(x-a)/b-1, 3 x*a+b; | RC_NORM_F64
    int seg_kind[RC_WIN_MAX_SEGS];
    int seg_key[RC_WIN_MAX_SEGS];
    int seg_begin[RC_WIN_MAX_SEGS + 1];  // per-sample work items of segment i: [begin[i], begin[i+1])
    int nseg;
    int zero_pad;                      // 1: padded values are 0; 0: edge frame
};

RC_DEVICE float rc_win_load_f32(rc_u64 base, int code, rc_i64 i) {
    switch (code) {
        case RC_F32: return reinterpret_cast<const float*>(base)[i];
        case RC_F64: return rc_f64_to_f32(reinterpret_cast<const double*>(base)[i]);
        case RC_F16: return rc_half_to_float(reinterpret_cast<const rc_half*>(base)[i]);
        case RC_BF16: return rc_bf16_to_float(reinterpret_cast<const rc_bf16*>(base)[i]);
        case RC_U8: return (float)reinterpret_cast<const unsigned char*>(base)[i];
        case RC_I8: return (float)reinterpret_cast<const signed char*>(base)[i];
        case RC_I16: return (float)reinterpret_cast<const short*>(base)[i];
        case RC_I32: return (float)reinterpret_cast<const int*>(base)[i];
        case RC_I64: return (float)reinterpret_cast<const long long*>(base)[i];
        case RC_U16: return (float)reinterpret_cast<const unsigned short*>(base)[i];
        case RC_U32: return (float)reinterpret_cast<const unsigned int*>(base)[i];
        case RC_BOOL: return reinterpret_cast<const unsigned char*>(base)[i] ? 1.0f : 0.0f;
        default: return (float)reinterpret_cast<const unsigned long long*>(base)[i];
    }
}

RC_DEVICE double rc_win_load_f64(rc_u64 base, int code, rc_i64 i) {
    switch (code) {
        case RC_F32: return rc_f32_to_f64(reinterpret_cast<const float*>(base)[i]);
        case RC_F64: return reinterpret_cast<const double*>(base)[i];
        case RC_F16: return rc_f32_to_f64(rc_win_load_f32(base, RC_F16, i));
        case RC_BF16: return rc_f32_to_f64(rc_win_load_f32(base, RC_BF16, i));
        case RC_U8: return (double)reinterpret_cast<const unsigned char*>(base)[i];
        case RC_I8: return (double)reinterpret_cast<const signed char*>(base)[i];
        case RC_I16: return (double)reinterpret_cast<const short*>(base)[i];
        case RC_I32: return (double)reinterpret_cast<const int*>(base)[i];
        case RC_I64: return (double)reinterpret_cast<const long long*>(base)[i];
        case RC_U16: return (double)reinterpret_cast<const unsigned short*>(base)[i];
        case RC_U32: return (double)reinterpret_cast<const unsigned int*>(base)[i];
        case RC_BOOL: return reinterpret_cast<const unsigned char*>(base)[i] ? 1.0 : 0.0;
        default: return (double)reinterpret_cast<const unsigned long long*>(base)[i];
    }
}

RC_DEVICE int rc_win_itemsize(int code) {
    switch (code) {
        case RC_F64: case RC_I64: case RC_U64: return 8;
        case RC_F32: case RC_I32: case RC_U32: return 4;
        case RC_F16: case RC_BF16: case RC_I16: case RC_U16: return 2;
        default: return 1;
    }
}

// One output element of key k: source element si (or 0 when zero), output element oi.
RC_DEVICE void rc_win_value(const WinKeys& p, int k, int f, rc_i64 si, rc_i64 oi, bool zero) {
    const int oc = p.out_code[k];
    if (oc < 0) {                                          // exact copy of the element's bytes
        switch (rc_win_itemsize(p.in_code[k])) {
            case 8: reinterpret_cast<rc_u64*>(p.out[k])[oi] =
                        zero ? 0ull : reinterpret_cast<const rc_u64*>(p.src[k])[si]; break;
            case 4: reinterpret_cast<unsigned int*>(p.out[k])[oi] =
                        zero ? 0u : reinterpret_cast<const unsigned int*>(p.src[k])[si]; break;
            case 2: reinterpret_cast<unsigned short*>(p.out[k])[oi] = zero ? (unsigned short)0
                        : reinterpret_cast<const unsigned short*>(p.src[k])[si]; break;
            default: reinterpret_cast<unsigned char*>(p.out[k])[oi] = zero ? (unsigned char)0
                        : reinterpret_cast<const unsigned char*>(p.src[k])[si]; break;
        }
        return;
    }
    const int nm = p.norm[k] & ~RC_NORM_F64;
    float x = 0.0f;
    if (oc == RC_F64 || (p.norm[k] & RC_NORM_F64)) {
        double xd = 0.0;
        if (!zero) {
            xd = rc_win_load_f64(p.src[k], p.in_code[k], si);
            if (nm != 0) {
                const double a = rc_f32_to_f64(reinterpret_cast<const float*>(p.norm_a[k])[f]);
                const double b = rc_f32_to_f64(reinterpret_cast<const float*>(p.norm_b[k])[f]);
                xd = nm == 1 ? (xd - a) / b
                   : nm == 2 ? 2.0 * (xd - a) / b - 1.0 : __dadd_rn(__dmul_rn(xd, a), b);
            }
        }
        if (oc == RC_F64) {
            reinterpret_cast<double*>(p.out[k])[oi] = xd;
            return;
        }
        x = rc_f64_to_f32(xd);                             // rounded once (then to 16 bits)
    } else if (!zero) {
        x = rc_win_load_f32(p.src[k], p.in_code[k], si);
        if (nm != 0) {
            const float a = reinterpret_cast<const float*>(p.norm_a[k])[f];
            const float b = reinterpret_cast<const float*>(p.norm_b[k])[f];
            // the evaluation order of LeRobot's formulas: ((x - a) / b) and ((2 (x - a)) / b) - 1;
            // diffusion_policy's x * scale + offset is two torch ops: no FMA
            x = nm == 1 ? (x - a) / b
              : nm == 2 ? 2.0f * (x - a) / b - 1.0f : __fadd_rn(__fmul_rn(x, a), b);
        }
    }
    switch (oc) {
        case RC_F16: reinterpret_cast<rc_half*>(p.out[k])[oi] = rc_float_to_half(x); break;
        case RC_BF16: reinterpret_cast<rc_bf16*>(p.out[k])[oi] = rc_float_to_bf16(x); break;
        default: reinterpret_cast<float*>(p.out[k])[oi] = x; break;
    }
}

__global__ void window_batch_kernel(const WinKeys p, const rc_i64* __restrict__ idx,
                                    const rc_i64* __restrict__ anchors,
                                    const int* __restrict__ deltas,
                                    rc_i64* __restrict__ out_index,
                                    rc_i64* __restrict__ out_episode,
                                    rc_i64* __restrict__ out_frame, rc_i64 B) {
    const rc_i64 b = blockIdx.x;
    if (b >= B) return;
    const rc_i64* an = anchors + 4 * idx[b];
    const rc_i64 a = an[0], s = an[1], e = an[2];
    const int W = p.seg_begin[p.nseg];
    for (int t = blockIdx.y * blockDim.x + threadIdx.x; t < W; t += gridDim.y * blockDim.x) {
        int sg = 0;
        while (t >= p.seg_begin[sg + 1]) ++sg;
        const int kind = p.seg_kind[sg];
        const int u = t - p.seg_begin[sg];
        if (kind == RC_SEG_META) {
            out_index[b] = a;
            out_episode[b] = an[3];
            out_frame[b] = a - s;
            continue;
        }
        const int k = p.seg_key[sg];
        const int K = p.K[k];
        const int F = p.F[k];
        int j = u, f = 0;
        if (kind == RC_SEG_VALUES) { j = u / F; f = u - j * F; }
        const rc_i64 q = K > 0 ? a + deltas[p.delta_off[k] + j] : a;
        // a key without offsets is never padded: an anchor outside its episode (negative
        // drops) reads the clamped frame, also under zero padding
        const bool pad = K > 0 && (q < s || q >= e);
        const rc_i64 row = q < s ? s : (q >= e ? e - 1 : q);
        const rc_i64 o = b * (K > 0 ? K : 1) + j;             // output row (b, j)
        if (kind == RC_SEG_MASK) {
            reinterpret_cast<unsigned char*>(p.mask[k])[o] = pad ? 1 : 0;
        } else if (kind == RC_SEG_ROWS) {
            reinterpret_cast<rc_i64*>(p.out[k])[o] = row;
        } else {
            rc_win_value(p, k, f, row * F + f, o * F + f, pad && p.zero_pad);
        }
    }
}
