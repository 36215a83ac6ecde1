// common.cuh - types and conversions shared by every RoboCache kernel.
//
// NVRTC compiles these sources with no CUDA toolkit headers, so 16-bit floats are plain structs
// holding the IEEE bits and are converted by integer operations (round to nearest even, NaN kept
// as a quiet NaN). Num<T> gives each storage type its arithmetic type and load/store.

#define RC_DEVICE __device__ __forceinline__

typedef unsigned long long rc_u64;
typedef long long rc_i64;

struct rc_half { unsigned short bits; };   // IEEE binary16
struct rc_bf16 { unsigned short bits; };   // bfloat16: the high half of a float32

RC_DEVICE float rc_bits_to_float(unsigned int u) { return __uint_as_float(u); }
RC_DEVICE unsigned int rc_float_to_bits(float f) { return __float_as_uint(f); }

RC_DEVICE float rc_bf16_to_float(rc_bf16 h) { return rc_bits_to_float(((unsigned int)h.bits) << 16); }

RC_DEVICE rc_bf16 rc_float_to_bf16(float f) {
    unsigned int u = rc_float_to_bits(f);
    rc_bf16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {          // NaN: keep the sign, make it quiet
        r.bits = (unsigned short)((u >> 16) | 0x0040u);
        return r;
    }
    u += 0x7fffu + ((u >> 16) & 1u);                // round to nearest, ties to even
    r.bits = (unsigned short)(u >> 16);
    return r;
}

RC_DEVICE float rc_half_to_float(rc_half h) {
    unsigned int sign = ((unsigned int)h.bits & 0x8000u) << 16;
    unsigned int exp = ((unsigned int)h.bits >> 10) & 0x1fu;
    unsigned int man = (unsigned int)h.bits & 0x3ffu;
    if (exp == 0u) {
        if (man == 0u) return rc_bits_to_float(sign);              // signed zero
        unsigned int e = 113u;                                      // subnormal: normalise
        while ((man & 0x400u) == 0u) { man <<= 1; --e; }
        return rc_bits_to_float(sign | (e << 23) | ((man & 0x3ffu) << 13));
    }
    if (exp == 31u) return rc_bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / NaN
    return rc_bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

RC_DEVICE rc_half rc_float_to_half(float f) {
    unsigned int u = rc_float_to_bits(f);
    unsigned int sign = (u >> 16) & 0x8000u;
    unsigned int fexp = u & 0x7f800000u;
    unsigned int fsig = u & 0x007fffffu;
    rc_half r;
    if (fexp >= 0x47800000u) {                                  // overflow, inf or NaN
        r.bits = (unsigned short)(sign | ((fexp == 0x7f800000u && fsig != 0u) ? 0x7e00u : 0x7c00u));
        return r;
    }
    if (fexp <= 0x38000000u) {                                  // subnormal half or zero
        if (fexp < 0x33000000u) { r.bits = (unsigned short)sign; return r; }
        unsigned int e = fexp >> 23;
        unsigned int sig = 0x00800000u + fsig;
        unsigned int shifted = sig >> (113u - e);
        // round half to even, looking at every bit the shift dropped
        if (((shifted & 0x3fffu) != 0x1000u) || (fsig & 0x7ffu)) shifted += 0x1000u;
        r.bits = (unsigned short)(sign + (shifted >> 13));
        return r;
    }
    unsigned int hexp = (fexp - 0x38000000u) >> 13;
    if ((fsig & 0x3fffu) != 0x1000u) fsig += 0x1000u;           // round half to even
    r.bits = (unsigned short)(sign + hexp + (fsig >> 13));      // a carry rounds into the exponent
    return r;
}

// Two floats -> two 16-bit floats in one 32-bit word (lo in bits 0-15), round to nearest even.
// On sm_80 and later one cvt.rn.{bf16x2,f16x2}.f32 instruction (a NaN becomes the canonical
// quiet NaN 0x7fff), elsewhere the bit operations above (a NaN keeps its sign); finite values and
// infinities come out bit for bit the same either way. For kernels whose 16-bit stores are most
// of their integer work (ncu: ALU-bound) and whose NaN outputs need no particular payload.
template <typename T16> RC_DEVICE unsigned int rc_pack2(float lo, float hi);
template <> RC_DEVICE unsigned int rc_pack2<rc_bf16>(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned int r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return (unsigned int)rc_float_to_bf16(lo).bits | ((unsigned int)rc_float_to_bf16(hi).bits << 16);
#endif
}
template <> RC_DEVICE unsigned int rc_pack2<rc_half>(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned int r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return (unsigned int)rc_float_to_half(lo).bits | ((unsigned int)rc_float_to_half(hi).bits << 16);
#endif
}

// Exact float32 <-> float64 conversions, subnormals included. CuPy compiles with -ftz=true, which
// makes a plain (double)f a `cvt.ftz.f64.f32` (1e-40f -> 0.0) and a plain (float)d flush results
// below FLT_MIN to 0; NumPy does neither. Widening is done on the bits (no cvt at all): the
// exponent is rebiased and a subnormal is rebuilt as man * 2^-149 (exact in double); a NaN keeps
// its payload and is made quiet, as x86's cvtss2sd does.
RC_DEVICE double rc_f32_to_f64(float f) {
    const unsigned int u = rc_float_to_bits(f);
    const unsigned int e = (u >> 23) & 0xffu;
    const unsigned int man = u & 0x007fffffu;
    if (e == 0u) {                                              // zero or subnormal
        const double v = (double)man * 1.4012984643248171e-45;  // 2^-149
        return (u & 0x80000000u) ? -v : v;
    }
    rc_u64 bits = ((rc_u64)(u & 0x80000000u) << 32) | ((rc_u64)man << 29);
    if (e == 0xffu) bits |= 0x7ff0000000000000ull | (man != 0u ? 0x0008000000000000ull : 0ull);
    else bits |= (rc_u64)(e + 896u) << 52;                      // 1023 - 127
    return __longlong_as_double((long long)bits);
}

// float64 -> float32, round to nearest even; subnormal results are built from their bits (the
// cvt below is only reached when the result is normal, inf or NaN, where -ftz changes nothing).
RC_DEVICE float rc_f64_to_f32(double d) {
    const double a = fabs(d);
    if (!(a < 1.1754943508222875e-38)) return (float)d;   // normal, overflow to inf, NaN
    const unsigned int m = (unsigned int)rint(a * 7.1362384635297994e+44);  // a * 2^149
    return rc_bits_to_float((signbit(d) ? 0x80000000u : 0u) | m);  // m == 2^23 is FLT_MIN
}

// Num<T>: Acc is the arithmetic type; load() widens, store() narrows with round-to-nearest-even.
template <typename T> struct Num;
template <> struct Num<float> {
    typedef float Acc;
    static RC_DEVICE Acc load(float v) { return v; }
    static RC_DEVICE float store(Acc a) { return a; }
};
template <> struct Num<double> {
    typedef double Acc;
    static RC_DEVICE Acc load(double v) { return v; }
    static RC_DEVICE double store(Acc a) { return a; }
};
template <> struct Num<rc_half> {
    typedef float Acc;
    static RC_DEVICE Acc load(rc_half v) { return rc_half_to_float(v); }
    static RC_DEVICE rc_half store(Acc a) { return rc_float_to_half(a); }
};
template <> struct Num<rc_bf16> {
    typedef float Acc;
    static RC_DEVICE Acc load(rc_bf16 v) { return rc_bf16_to_float(v); }
    static RC_DEVICE rc_bf16 store(Acc a) { return rc_float_to_bf16(a); }
};
template <> struct Num<unsigned char> {
    typedef float Acc;
    static RC_DEVICE Acc load(unsigned char v) { return (float)v; }
    static RC_DEVICE unsigned char store(Acc a) {
        a = a < 0.f ? 0.f : (a > 255.f ? 255.f : a);
        return (unsigned char)__float2int_rn(a);
    }
};

