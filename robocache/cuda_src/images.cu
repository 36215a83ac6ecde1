// images.cu - gather camera frames by index, crop (or random-shift), resize bilinearly, scale,
// jitter brightness/contrast, normalise per channel and cast, in one launch.
//
// In:  frames uint8 [N,H,W,C] (C = 1, 3 or 4, row-major, device memory or pinned host memory
//      mapped into the device address space), indices int32/int64 [B,K] (-1: write zeros),
//      optional zero_mask bool [B,K] (true: write zeros).
// Out: [B,K,C,h,w] ("BKCHW") or [B,K,h,w,C] ("BKHWC") of TO = float, rc_half, rc_bf16 or
//      unsigned char, contiguous.
// Per output pixel (y, x) of image (b, k), in this order (robocache/ops/images.py, the NumPy twin):
//   window origin (oy, ox) = centre crop, or a random crop drawn per sample (or per frame),
//   plus a random shift in [-shift, shift]; frame rows/columns outside the frame are clamped
//   (edge replication, DrQ's pad + crop);
//   RESIZE: bilinear sample of the (ch, cw) window at output size (h, w), the index and weight
//   rule of torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False);
//   else the window is the output, pixel for pixel;
//   v *= scale; jitter: v = clamp(v * bf, 0, vmax); v = clamp((v - vmax/2) * cf + vmax/2, 0, vmax);
//   v = (v - mean[c]) * inv_std[c]; out = Num<TO>::store(v) (round to nearest even; uint8 clamps).
//   Each step is rounded on its own, in this order (no FMA contraction): the NumPy twin gives
//   the same bits. EXACT instances (float outputs with no mean/std and no jitter: the plain
//   [0, 1] frames the peers return) divide instead: v = v / divisor rounded once, bit for bit
//   what torch and NumPy give for frames / 255.
//
// Work split: blockIdx.x = image (b, k); blockIdx.y tiles the image's h*w output pixels in work
// items of V pixels (V = 4: four adjacent pixels of one row, "BKCHW" with w % 4 == 0; else 1),
// each thread looping over work items with stride gridDim.y * blockDim.x (~8 pixels per thread,
// set by images.py). Thread 0 of each block draws the image's crop origin and jitter factors
// (shared memory, one barrier); then each thread computes all C channels of each of its pixels,
// in a loop compiled with or without the jitter steps (p.jitter picks one per block), and for
// V = 4 without resize a loop with no clamps or bounds checks when the window lies inside the
// frame (checked once per block).
//
// Memory access: per pixel, a thread reads C contiguous bytes (RESIZE: 4 taps of C bytes) of one
// frame row straight from the frame store (no float copy, no crop pass; V = 4 without resize:
// the 4*C bytes of its four pixels as C + 1 aligned 32-bit words); neighbouring lanes read
// neighbouring pixels, so a warp reads 32*C contiguous bytes per tap row, and bilinear taps that
// neighbouring output pixels share hit L1. Writes: "BKCHW" - per channel, lanes write consecutive
// runs of V elements of one plane (a coalesced 32*V*sizeof(TO)-byte segment per channel, V-wide
// stores); "BKHWC" - one contiguous run of 32*C elements per warp.
// Bytes per call: reads B*K*ch*cw*C (no resize) or up to B*K*min(4*h*w, ~(ch+h)*(cw+w))*C (resize;
// taps reread from L1/L2), plus B*K index bytes; writes B*K*C*h*w*sizeof(TO). Zero frames read
// nothing. Frames read over the bus (pinned host memory) cost the same bytes at bus bandwidth.

#include "common.cuh"
#include "random.cuh"

// Purposes of the random draws (robocache/ops/images.py mirrors these numbers).
#define RC_IMG_CROP_Y 1
#define RC_IMG_CROP_X 2
#define RC_IMG_SHIFT_Y 3
#define RC_IMG_SHIFT_X 4
#define RC_IMG_BRIGHTNESS 5
#define RC_IMG_CONTRAST 6

// Passed by value (one parameter block, no upload). images.py builds the same layout as a
// structured NumPy dtype (IMAGE_PARAMS_DTYPE); keep the two in step.
struct ImageParams {
    rc_u64 frames;       // uint8 [N,H,W,C]
    rc_u64 indices;      // int32 or int64 [B,K]
    rc_u64 zero_mask;    // bool [B,K], or 0 for none
    rc_u64 out;          // TO, [B,K,C,h,w] or [B,K,h,w,C]
    rc_u64 key;          // rc_rand_key(seed, epoch, batch)
    rc_i64 N;            // frames in the store
    int B, K;            // samples, frames per sample
    int idx64;           // 1: indices are int64
    // (the fields above are packed per call, in one go; those below come from the plan)
    double bright_lo, bright_hi;       // brightness factor range (float32 values)
    double contrast_lo, contrast_hi;   // contrast factor range (float32 values)
    float mean[4];
    float inv_std[4];
    float sy, sx;        // resize scales ch/h and cw/w (float32, as torch computes them)
    float scale;         // multiplier applied to the raw 0..255 value (EXACT: 1 / divisor rounded)
    float divisor;       // EXACT: the divisor (e.g. 255); 0 otherwise
    float vmax;          // 255 * scale: the jitter clamp
    int H, W;
    int ch, cw;          // crop window
    int oh, ow;          // output size
    int cy0, cx0;        // centre-crop origin (used when crop_random == 0)
    int crop_random;     // 1: random crop origin in [0, H-ch] x [0, W-cw]
    int shift;           // random shift in [-shift, shift] per axis, 0 for none
    int per_frame_crop;  // 1: a crop (and shift) per frame, else one per sample
    int jitter;          // bit 0: brightness, bit 1: contrast
    int per_frame_jitter;
    int c_stride;        // output element stride between channels
    int p_stride;        // output element stride between pixels
};

RC_DEVICE int rc_clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }
RC_DEVICE float rc_clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Small non-negative integers as floats without an integer-to-float convert (which issues at a
// quarter of the FMA rate, on the unit of the transcendentals): the bits 0x4B000000 + k are the
// float 2^23 + k for k < 2^23, so an OR (for byte i of a word, one byte permute) and one exact
// subtraction.
RC_DEVICE float rc_small_to_float(unsigned int k) {
    return __uint_as_float(0x4B000000u | k) - 8388608.f;
}
RC_DEVICE float rc_u8_to_float(unsigned char b) { return rc_small_to_float(b); }
RC_DEVICE float rc_byte_to_float(unsigned int word, int i) {
    return __uint_as_float(__byte_perm(word, 0x4B000000u, 0x7440u | (unsigned int)i)) - 8388608.f;
}

// torch's area_pixel_compute_source_index + guard_index_and_lambda (align_corners=False, linear).
// torch computes scale * (dst + 0.5) - 0.5 in float, contracted into one fused multiply-add by
// nvcc and in its AVX2 / AVX-512 CPU kernels; dst + 0.5 is exact in float (dst < 2^23), so
// __fmaf_rn rounds as they do (images.py's _taps).
RC_DEVICE void rc_linear_tap(float scale, int dst, int in_size, int& i0, int& i1, float& l1) {
    float src = __fmaf_rn(scale, __fadd_rn(rc_small_to_float(dst), 0.5f), -0.5f);
    src = src < 0.f ? 0.f : src;
    int i = (int)src;                                    // src >= 0: truncation is floor
    i = i < in_size - 1 ? i : in_size - 1;
    l1 = rc_clampf(__fsub_rn(src, rc_small_to_float(i)), 0.f, 1.f);
    i0 = i;
    i1 = i + (i < in_size - 1 ? 1 : 0);
}

// The C channel values of output pixel (y, x) from the window at (oy, ox), before the per-channel
// arithmetic: bilinear taps (RESIZE) or the window pixel itself, rows/columns clamped to the frame.
// Each product and sum is rounded on its own (_rn: no FMA contraction), in the order of
// images.py's apply_numpy, so that both backends give the same bits.
template <int C, bool RESIZE>
RC_DEVICE void rc_img_sample(const ImageParams& p, const unsigned char* frame, int oy, int ox,
                             int y, int x, float v[C]) {
    if (RESIZE) {
        int y0, y1, x0, x1;
        float ly, lx;
        rc_linear_tap(p.sy, y, p.ch, y0, y1, ly);
        rc_linear_tap(p.sx, x, p.cw, x0, x1, lx);
        const unsigned char* r0 = frame + rc_clampi(oy + y0, 0, p.H - 1) * p.W * C;
        const unsigned char* r1 = frame + rc_clampi(oy + y1, 0, p.H - 1) * p.W * C;
        const int c0 = rc_clampi(ox + x0, 0, p.W - 1) * C;
        const int c1 = rc_clampi(ox + x1, 0, p.W - 1) * C;
        const float hy = 1.f - ly, hx = 1.f - lx;
#pragma unroll
        for (int c = 0; c < C; ++c) {
            const float top = __fadd_rn(__fmul_rn(hx, rc_u8_to_float(r0[c0 + c])),
                                        __fmul_rn(lx, rc_u8_to_float(r0[c1 + c])));
            const float bottom = __fadd_rn(__fmul_rn(hx, rc_u8_to_float(r1[c0 + c])),
                                           __fmul_rn(lx, rc_u8_to_float(r1[c1 + c])));
            v[c] = __fadd_rn(__fmul_rn(top, hy), __fmul_rn(bottom, ly));
        }
    } else {
        const unsigned char* s = frame + (rc_clampi(oy + y, 0, p.H - 1) * p.W
                                          + rc_clampi(ox + x, 0, p.W - 1)) * C;
#pragma unroll
        for (int c = 0; c < C; ++c) v[c] = rc_u8_to_float(s[c]);
    }
}

// The 4*C contiguous bytes at `at` (four adjacent pixels) as floats v[pixel][channel], read as
// C + 1 aligned 32-bit words (from `at` rounded down to a multiple of 4) funnel-shifted into place
// instead of 4*C byte loads. The caller makes sure those words lie inside the frame store.
template <int C>
RC_DEVICE void rc_img_words4(const unsigned char* at, float v[4][C]) {
    const rc_u64 addr = reinterpret_cast<rc_u64>(at);
    const unsigned int* w = reinterpret_cast<const unsigned int*>(addr & ~(rc_u64)3);
    unsigned int raw[C + 1];
#pragma unroll
    for (int j = 0; j <= C; ++j) raw[j] = __ldca(w + j);  // ld.global (a generic ld otherwise)
    const unsigned int sh = ((unsigned int)addr & 3u) * 8u;
#pragma unroll
    for (int j = 0; j < C; ++j) {
        const unsigned int word = __funnelshift_r(raw[j], raw[j + 1], sh);  // bytes 4j..4j+3
#pragma unroll
        for (int i = 0; i < 4; ++i) v[(4 * j + i) / C][(4 * j + i) % C] = rc_byte_to_float(word, i);
    }
}

// Do the words rc_img_words4 reads for the 4*C bytes at `at` lie inside [p.frames, end)?
template <int C>
RC_DEVICE bool rc_img_words_inside(const ImageParams& p, rc_u64 end, const unsigned char* at) {
    const rc_u64 a = reinterpret_cast<rc_u64>(at) & ~(rc_u64)3;
    return a >= p.frames && a + 4 * (C + 1) <= end;
}

// What rc_img_value computes, picked once per block: the kernel's EXACT instances divide, the
// others scale and normalise, with or without the jitter (compiled out of RC_IMG_PLAIN:
// predicated-off jitter code still takes issue slots, it was 8 of the ~22 instructions per value
// on sm_90); the kernel picks RC_IMG_JITTER or RC_IMG_PLAIN from p.jitter.
#define RC_IMG_PLAIN 0
#define RC_IMG_JITTER 1
#define RC_IMG_EXACT 2

// Scale, jitter and normalise channel c of one pixel (always finite: std > 0 is checked). Every
// step is rounded on its own (_rn: no FMA contraction), as apply_numpy computes it.
template <int MODE>
RC_DEVICE float rc_img_value(const ImageParams& p, float v, int c, float bf, float cf, float pivot) {
    if (MODE == RC_IMG_EXACT) {
        // v / divisor rounded once (apply_numpy divides): q = v * (1/divisor) is within an ulp of
        // the quotient, the FMA gives the residual v - q * divisor exactly, and q + residual *
        // (1/divisor), rounded once, is the correctly rounded quotient (Markstein's theorem;
        // checked for every float in [0, 256] over 255). Three instructions, as the scale and
        // normalise steps they replace.
        const float q = __fmul_rn(v, p.scale);
        return __fmaf_rn(__fmaf_rn(-q, p.divisor, v), p.scale, q);
    }
    float t = __fmul_rn(v, p.scale);
    if (MODE == RC_IMG_JITTER) {
        // (fminf/fmaxf: one min/max instruction each; t is never NaN here)
        if (p.jitter & 1) t = fminf(fmaxf(__fmul_rn(t, bf), 0.f), p.vmax);
        if (p.jitter & 2)
            t = fminf(fmaxf(__fadd_rn(__fmul_rn(__fsub_rn(t, pivot), cf), pivot), 0.f), p.vmax);
    }
    return __fmul_rn(__fsub_rn(t, p.mean[c]), p.inv_std[c]);
}

// Four output values of one channel plane, converted to TO (16-bit types two per instruction:
// rc_pack2) and written with one 4 * sizeof(TO)-byte store to a 4 * sizeof(TO)-aligned address.
// __stwb (st.global.wb: the default cache policy) is a single vector instruction by definition;
// a plain vector assignment is split into 32-bit stores here by nvcc 12.9 and 13.0 (seen in the
// PTX: the alignment of the vector type is not kept through this kernel's address arithmetic).
RC_DEVICE void rc_img_store4(float* dst, const float* v) {
    __stwb(reinterpret_cast<float4*>(dst), make_float4(v[0], v[1], v[2], v[3]));
}
template <typename T16>  // rc_half, rc_bf16: 16-bit values held in .bits
RC_DEVICE void rc_img_store4(T16* dst, const float* v) {
    __stwb(reinterpret_cast<uint2*>(dst), make_uint2(rc_pack2<T16>(v[0], v[1]),
                                                     rc_pack2<T16>(v[2], v[3])));
}
RC_DEVICE void rc_img_store4(unsigned char* dst, const float* v) {
    typedef Num<unsigned char> U8;
    __stwb(reinterpret_cast<unsigned int*>(dst),
           (unsigned int)U8::store(v[0]) | ((unsigned int)U8::store(v[1]) << 8)
           | ((unsigned int)U8::store(v[2]) << 16) | ((unsigned int)U8::store(v[3]) << 24));
}

// The C channel values of four adjacent output pixels, finished and stored: one vector store per
// channel plane, at `at` (the first pixel's element of channel 0) + c * p.c_stride.
template <typename TO, int C, int MODE>
RC_DEVICE void rc_img_store_run(const ImageParams& p, TO* at, const float v[4][C], float bf,
                                float cf, float pivot) {
#pragma unroll
    for (int c = 0; c < C; ++c) {
        float run[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) run[u] = rc_img_value<MODE>(p, v[u][c], c, bf, cf, pivot);
        rc_img_store4(at + c * p.c_stride, run);
    }
}

// The pixels of one image from work item `first` on, stepping by `step` work items: work item r
// sits at row y = r / per_row, column run xr = r % per_row (one division per thread, then stepped
// by (step / per_row, step % per_row) with a carry). V = 1: one pixel, any layout; V = 4: four
// horizontally adjacent pixels, each channel's four values in one vector store.
template <typename TO, int C, bool RESIZE, int V, int MODE>
RC_DEVICE void rc_img_pixels(const ImageParams& p, const unsigned char* frame, TO* out, int oy,
                             int ox, float bf, float cf, int first, int step) {
    const float pivot = 0.5f * p.vmax;
    const int npix = p.oh * p.ow;
    const int per_row = p.ow >= V ? p.ow / V : 1;  // (ow >= 1, and ow % 4 == 0 for V = 4)
    const int dy = step / per_row, dxr = step - dy * per_row;
    int y = first / per_row, xr = first - y * per_row;
    if (V == 1) {
        for (int pix = first; pix < npix; pix += step, y += dy, xr += dxr) {
            if (xr >= per_row) { xr -= per_row; ++y; }
            float v[C];
            rc_img_sample<C, RESIZE>(p, frame, oy, ox, y, xr, v);
#pragma unroll
            for (int c = 0; c < C; ++c)
                out[c * p.c_stride + pix * p.p_stride] =
                    Num<TO>::store(rc_img_value<MODE>(p, v[c], c, bf, cf, pivot));
        }
        return;
    }
    const rc_u64 end = p.frames + (rc_u64)p.N * (rc_u64)p.H * (rc_u64)p.W * C;
    const int items = npix / V;
    if (!RESIZE && oy >= 0 && ox >= 0 && oy + p.oh <= p.H && ox + p.ow <= p.W) {
        // The window lies inside the frame (a random crop without shift: nothing to clamp), so
        // the words of every work item lie between those of the first and the last: two checks
        // per block, then per work item one offset into the window and no clamps.
        const unsigned char* win = frame + ((rc_i64)oy * p.W + ox) * C;
        if (rc_img_words_inside<C>(p, end, win)
            && rc_img_words_inside<C>(p, end, win + ((p.oh - 1) * p.W + p.ow - V) * C)) {
            for (int r = first; r < items; r += step, y += dy, xr += dxr) {
                if (xr >= per_row) { xr -= per_row; ++y; }
                const int x0 = xr * V;
                float v[V][C];
                rc_img_words4<C>(win + (y * p.W + x0) * C, v);
                rc_img_store_run<TO, C, MODE>(p, out + y * p.ow + x0, v, bf, cf, pivot);
            }
            return;
        }
    }
    for (int r = first; r < items; r += step, y += dy, xr += dxr) {
        if (xr >= per_row) { xr -= per_row; ++y; }
        const int x0 = xr * V;
        float v[V][C];
        const int cx = ox + x0;
        const unsigned char* at = frame + ((rc_i64)rc_clampi(oy + y, 0, p.H - 1) * p.W + cx) * C;
        if (!RESIZE && cx >= 0 && cx + V <= p.W && rc_img_words_inside<C>(p, end, at)) {
            rc_img_words4<C>(at, v);
        } else {
#pragma unroll
            for (int u = 0; u < V; ++u) rc_img_sample<C, RESIZE>(p, frame, oy, ox, y, x0 + u, v[u]);
        }
        rc_img_store_run<TO, C, MODE>(p, out + y * p.ow + x0, v, bf, cf, pivot);
    }
}

// V = 1: one pixel per work item, any layout. V = 4 ("BKCHW" only, ow % 4 == 0, out aligned to
// 4 * sizeof(TO), checked by images.py): four horizontally adjacent pixels per work item, each
// channel's four values written with one 16-byte (float), 8-byte (half, bf16) or 4-byte (uint8)
// store instead of four scalar ones. EXACT: v / p.divisor and nothing else (images.py launches it
// for plans without mean/std and jitter).
template <typename TO, int C, bool RESIZE, int V, bool EXACT>
__global__ void crop_resize_kernel(const ImageParams p) {
    static_assert(V == 1 || V == 4, "work items of 1 or 4 pixels");
    const int img = blockIdx.x;                          // b * K + k
    const int b = img / p.K;
    const int k = img - b * p.K;
    const int npix = p.oh * p.ow;
    TO* out = reinterpret_cast<TO*>(p.out) + (rc_i64)img * C * npix;
    const int first = blockIdx.y * blockDim.x + threadIdx.x;
    const int step = gridDim.y * blockDim.x;

    rc_i64 row = p.idx64 ? reinterpret_cast<const rc_i64*>(p.indices)[img]
                         : (rc_i64)reinterpret_cast<const int*>(p.indices)[img];
    bool zero = row < 0 || p.N <= 0;                  // no frames at all: zeros, as NumPy
    if (p.zero_mask != 0ull) zero = zero || reinterpret_cast<const unsigned char*>(p.zero_mask)[img];
    if (zero) {
        const TO z = Num<TO>::store(0.f);
        for (int pix = first; pix < npix / V; pix += step) {
#pragma unroll
            for (int u = 0; u < V; ++u) {
#pragma unroll
                for (int c = 0; c < C; ++c) out[c * p.c_stride + (pix * V + u) * p.p_stride] = z;
            }
        }
        return;
    }
    row = row < p.N ? row : p.N - 1;                     // Python validated; never read past the end

    // Window origin and jitter factors of this image: the same draws as images.py's _draws(),
    // made once per block by thread 0 (each is a few splitmix rounds of 64-bit integer work,
    // which every thread repeating them made a quarter of the kernel's integer instructions).
    __shared__ int s_origin[2];
    __shared__ float s_factor[2];
    if (threadIdx.x == 0) {
        const rc_u64 fcrop = p.per_frame_crop ? (rc_u64)k : RC_FRAME_ALL;
        int org_y = p.cy0, org_x = p.cx0;
        if (p.crop_random) {
            org_y = (int)rc_rand_below(rc_rand_bits(p.key, b, fcrop, RC_IMG_CROP_Y), p.H - p.ch + 1);
            org_x = (int)rc_rand_below(rc_rand_bits(p.key, b, fcrop, RC_IMG_CROP_X), p.W - p.cw + 1);
        }
        if (p.shift > 0) {
            const unsigned int n = 2u * (unsigned int)p.shift + 1u;
            org_y += (int)rc_rand_below(rc_rand_bits(p.key, b, fcrop, RC_IMG_SHIFT_Y), n) - p.shift;
            org_x += (int)rc_rand_below(rc_rand_bits(p.key, b, fcrop, RC_IMG_SHIFT_X), n) - p.shift;
        }
        float fb = 1.f, fc = 1.f;
        const rc_u64 fjit = p.per_frame_jitter ? (rc_u64)k : RC_FRAME_ALL;
        if (p.jitter & 1) {
            const double u = rc_rand_unit(rc_rand_bits(p.key, b, fjit, RC_IMG_BRIGHTNESS));
            fb = (float)(p.bright_lo + (p.bright_hi - p.bright_lo) * u);
        }
        if (p.jitter & 2) {
            const double u = rc_rand_unit(rc_rand_bits(p.key, b, fjit, RC_IMG_CONTRAST));
            fc = (float)(p.contrast_lo + (p.contrast_hi - p.contrast_lo) * u);
        }
        s_origin[0] = org_y;
        s_origin[1] = org_x;
        s_factor[0] = fb;
        s_factor[1] = fc;
    }
    __syncthreads();  // `zero` is the same for the whole block: every thread gets here or none
    const unsigned char* frame = reinterpret_cast<const unsigned char*>(p.frames)
                                 + row * ((rc_i64)p.H * p.W * C);
    if (EXACT)
        rc_img_pixels<TO, C, RESIZE, V, RC_IMG_EXACT>(p, frame, out, s_origin[0], s_origin[1],
                                                      1.f, 1.f, first, step);
    else if (p.jitter)
        rc_img_pixels<TO, C, RESIZE, V, RC_IMG_JITTER>(p, frame, out, s_origin[0], s_origin[1],
                                                       s_factor[0], s_factor[1], first, step);
    else
        rc_img_pixels<TO, C, RESIZE, V, RC_IMG_PLAIN>(p, frame, out, s_origin[0], s_origin[1],
                                                      1.f, 1.f, first, step);
}
