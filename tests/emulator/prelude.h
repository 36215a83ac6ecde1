// prelude.h - the CUDA surface RoboCache kernels use, written in plain C++ for the g++ emulator.
//
// Included before a module's code(). Only C++ standard headers (names in std::) and the C math
// library (global names, as CUDA's math API has them too) are pulled in, so kernel code meets
// the same global namespace it meets under NVRTC, give or take <math.h>.
//
// Emulated: execution-space and memory-space keywords, builtin index variables, vector types,
// __syncthreads(_count/_and/_or), __syncwarp, __shfl*_sync, __ballot/__any/__all_sync,
// __reduce_*_sync, __activemask, atomics (CUDA's overload set), fences, the conversion / bit /
// fast-math intrinsics, min/max, read-only and cache-hinted loads and stores, printf, assert,
// __trap. Not emulated: inline PTX (asm), textures/surfaces, cooperative groups, __match_*_sync,
// clusters, half/bfloat16 CUDA headers, -ftz (subnormals are kept) and FMA contraction (off).
#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "rc_emu_api.h"

extern "C" int printf(const char* format, ...);

// ---------------------------------------------------------------------------------------------
// Keywords

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __shared__ static        // one instance, shared by the threads of the running block
#define __constant__
#define __managed__
#define __grid_constant__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __CUDACC__ 1
#define __CUDACC_RTC__ 1
#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 750        // the lowest architecture RoboCache targets
#endif
#define RC_EMULATOR 1            // for the emulator's own test kernels; library kernels never test it

// `extern __shared__ T name[];` is rewritten by build.py into a reference to this pointer.
namespace rc_emu {
template <class T> inline T* const& dyn_smem_as() { return reinterpret_cast<T* const&>(dyn_smem); }
}

static constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------
// Vector types, with CUDA's alignment (vector_types.h)

#define RC_EMU_VEC(T, N, A2, A4)                                                              \
    struct alignas(sizeof(T)) N##1 { T x; };                                                  \
    struct alignas(A2) N##2 { T x, y; };                                                      \
    struct alignas(A4) N##4 { T x, y, z, w; };                                                \
    inline N##1 make_##N##1(T x) { return N##1{x}; }                                          \
    inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }                                  \
    inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
#define RC_EMU_VEC3(T, N)                                                                     \
    struct N##3 { T x, y, z; };                                                               \
    inline N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }

RC_EMU_VEC(signed char, char, 2, 4)             RC_EMU_VEC3(signed char, char)
RC_EMU_VEC(unsigned char, uchar, 2, 4)          RC_EMU_VEC3(unsigned char, uchar)
RC_EMU_VEC(short, short, 4, 8)                  RC_EMU_VEC3(short, short)
RC_EMU_VEC(unsigned short, ushort, 4, 8)        RC_EMU_VEC3(unsigned short, ushort)
RC_EMU_VEC(int, int, 8, 16)                     RC_EMU_VEC3(int, int)
RC_EMU_VEC(unsigned int, uint, 8, 16)           // uint3 comes from rc_emu_api.h
inline uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) { return uint3{x, y, z}; }
RC_EMU_VEC(long, long, 16, 16)                  RC_EMU_VEC3(long, long)
RC_EMU_VEC(unsigned long, ulong, 16, 16)        RC_EMU_VEC3(unsigned long, ulong)
RC_EMU_VEC(long long, longlong, 16, 16)         RC_EMU_VEC3(long long, longlong)
RC_EMU_VEC(unsigned long long, ulonglong, 16, 16) RC_EMU_VEC3(unsigned long long, ulonglong)
RC_EMU_VEC(float, float, 8, 16)                 RC_EMU_VEC3(float, float)
RC_EMU_VEC(double, double, 16, 16)              RC_EMU_VEC3(double, double)
#undef RC_EMU_VEC
#undef RC_EMU_VEC3

// ---------------------------------------------------------------------------------------------
// Math: CUDA declares float overloads of the C math functions in the global namespace.

using std::abs; using std::fabs; using std::sqrt; using std::cbrt; using std::exp;
using std::exp2; using std::expm1; using std::log; using std::log2; using std::log10;
using std::log1p; using std::pow; using std::sin; using std::cos; using std::tan;
using std::asin; using std::acos; using std::atan; using std::atan2; using std::sinh;
using std::cosh; using std::tanh; using std::asinh; using std::acosh; using std::atanh;
using std::floor; using std::ceil; using std::round; using std::trunc; using std::rint;
using std::nearbyint; using std::lrint; using std::llrint; using std::lround;
using std::llround; using std::fmod; using std::remainder; using std::fmin; using std::fmax;
using std::fdim; using std::fma; using std::hypot; using std::copysign; using std::frexp;
using std::ldexp; using std::modf; using std::scalbn; using std::ilogb; using std::logb;
using std::nextafter; using std::erf; using std::erfc; using std::lgamma; using std::tgamma;
using std::isnan; using std::isinf; using std::isfinite; using std::signbit;

// min / max over any two arithmetic types, in their common type; floating point ignores NaN
// like CUDA's fminf/fmaxf.
template <class A, class B>
inline std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>, std::common_type_t<A, B>>
min(A a, B b) {
    typedef std::common_type_t<A, B> C;
    if constexpr (std::is_floating_point_v<C>) return std::fmin((C)a, (C)b);
    else return (C)b < (C)a ? (C)b : (C)a;
}
template <class A, class B>
inline std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>, std::common_type_t<A, B>>
max(A a, B b) {
    typedef std::common_type_t<A, B> C;
    if constexpr (std::is_floating_point_v<C>) return std::fmax((C)a, (C)b);
    else return (C)a < (C)b ? (C)b : (C)a;
}

inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / ::sqrt(x); }
inline float fdividef(float a, float b) { return a / b; }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }  // NaN -> 0
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return powf(10.0f, x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline void __sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
// IEEE single-rounding operations (the emulator never contracts a*b+c, so plain operators are them)
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __drcp_rn(double a) { return 1.0 / a; }
inline double __dsqrt_rn(double a) { return ::sqrt(a); }
inline double __fma_rn(double a, double b, double c) { return ::fma(a, b, c); }

// ---------------------------------------------------------------------------------------------
// Bit reinterpretation and conversions

namespace rc_emu {
template <class To, class From> inline To bits(From f) {
    static_assert(sizeof(To) == sizeof(From), "bit cast between different sizes");
    To t;
    __builtin_memcpy(&t, &f, sizeof(To));
    return t;
}
// Round half to even without looking at the FP environment (x is a float or double).
inline double round_even(double x) {
    double r = ::floor(x), d = x - r;         // exact for every double
    if (d > 0.5 || (d == 0.5 && ::fmod(r, 2.0) != 0.0)) r += 1.0;
    return r;
}
// PTX cvt to an integer type: saturate to its range, NaN -> 0.
template <class I> inline I to_int_sat(double r) {
    if (r != r) return 0;
    constexpr double lo = (double)std::numeric_limits<I>::min();
    constexpr double hi = (double)std::numeric_limits<I>::max();
    if (r <= lo) return std::numeric_limits<I>::min();
    if (r >= hi) return std::numeric_limits<I>::max();
    return (I)r;
}
}  // namespace rc_emu

inline float __uint_as_float(unsigned int u) { return rc_emu::bits<float>(u); }
inline unsigned int __float_as_uint(float f) { return rc_emu::bits<unsigned int>(f); }
inline float __int_as_float(int i) { return rc_emu::bits<float>(i); }
inline int __float_as_int(float f) { return rc_emu::bits<int>(f); }
inline double __longlong_as_double(long long i) { return rc_emu::bits<double>(i); }
inline long long __double_as_longlong(double d) { return rc_emu::bits<long long>(d); }
inline double __hiloint2double(int hi, int lo) {
    return rc_emu::bits<double>(((unsigned long long)(unsigned int)hi << 32) | (unsigned int)lo);
}
inline int __double2hiint(double d) { return (int)(rc_emu::bits<unsigned long long>(d) >> 32); }
inline int __double2loint(double d) { return (int)rc_emu::bits<unsigned long long>(d); }

#define RC_EMU_CVT(NAME, F, I)                                                                \
    inline I NAME##_rn(F x) { return rc_emu::to_int_sat<I>(rc_emu::round_even((double)x)); } \
    inline I NAME##_rz(F x) { return rc_emu::to_int_sat<I>(::trunc((double)x)); }            \
    inline I NAME##_rd(F x) { return rc_emu::to_int_sat<I>(::floor((double)x)); }            \
    inline I NAME##_ru(F x) { return rc_emu::to_int_sat<I>(::ceil((double)x)); }
RC_EMU_CVT(__float2int, float, int)
RC_EMU_CVT(__float2uint, float, unsigned int)
RC_EMU_CVT(__float2ll, float, long long)
RC_EMU_CVT(__float2ull, float, unsigned long long)
RC_EMU_CVT(__double2int, double, int)
RC_EMU_CVT(__double2uint, double, unsigned int)
RC_EMU_CVT(__double2ll, double, long long)
RC_EMU_CVT(__double2ull, double, unsigned long long)
#undef RC_EMU_CVT
inline float __int2float_rn(int i) { return (float)i; }
inline float __uint2float_rn(unsigned int i) { return (float)i; }
inline float __ll2float_rn(long long i) { return (float)i; }
inline float __ull2float_rn(unsigned long long i) { return (float)i; }
inline double __int2double_rn(int i) { return (double)i; }
inline double __ll2double_rn(long long i) { return (double)i; }
inline float __double2float_rn(double d) { return (float)d; }

// ---------------------------------------------------------------------------------------------
// Integer intrinsics

inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned int __brev(unsigned int x) {
    unsigned int r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline unsigned long long __brevll(unsigned long long x) {
    return ((unsigned long long)__brev((unsigned int)x) << 32) | __brev((unsigned int)(x >> 32));
}
inline unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s) {
    unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned int r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned int)((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
    return r;
}
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline int __mul24(int a, int b) { return (int)((long long)((a << 8) >> 8) * ((b << 8) >> 8)); }
inline unsigned int __umul24(unsigned int a, unsigned int b) { return (a & 0xffffffu) * (b & 0xffffffu); }
inline int __hadd(int a, int b) { return (int)(((long long)a + b) >> 1); }
inline int __rhadd(int a, int b) { return (int)(((long long)a + b + 1) >> 1); }
inline unsigned int __uhadd(unsigned int a, unsigned int b) { return (unsigned int)(((unsigned long long)a + b) >> 1); }
inline unsigned int __urhadd(unsigned int a, unsigned int b) { return (unsigned int)(((unsigned long long)a + b + 1) >> 1); }
inline unsigned int __funnelshift_l(unsigned int lo, unsigned int hi, unsigned int s) {
    return (unsigned int)(((((unsigned long long)hi << 32) | lo) << (s & 31u)) >> 32);
}
inline unsigned int __funnelshift_r(unsigned int lo, unsigned int hi, unsigned int s) {
    return (unsigned int)((((unsigned long long)hi << 32) | lo) >> (s & 31u));
}

// ---------------------------------------------------------------------------------------------
// Loads and stores with cache hints: plain memory accesses here

template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

// ---------------------------------------------------------------------------------------------
// Atomics: CUDA's overload set (no templates, so an unsupported type fails to compile here as
// it does under NVRTC). Threads never run at the same time, so these are exact.

#define RC_EMU_ATOMIC_RMW(NAME, T, EXPR)                                                      \
    inline T NAME(T* a, T v) { T old = *a; *a = (EXPR); return old; }                        \
    inline T NAME##_block(T* a, T v) { return NAME(a, v); }                                  \
    inline T NAME##_system(T* a, T v) { return NAME(a, v); }
RC_EMU_ATOMIC_RMW(atomicAdd, int, old + v)
RC_EMU_ATOMIC_RMW(atomicAdd, unsigned int, old + v)
RC_EMU_ATOMIC_RMW(atomicAdd, unsigned long long, old + v)
RC_EMU_ATOMIC_RMW(atomicAdd, float, old + v)
RC_EMU_ATOMIC_RMW(atomicAdd, double, old + v)
RC_EMU_ATOMIC_RMW(atomicSub, int, old - v)
RC_EMU_ATOMIC_RMW(atomicSub, unsigned int, old - v)
RC_EMU_ATOMIC_RMW(atomicExch, int, v)
RC_EMU_ATOMIC_RMW(atomicExch, unsigned int, v)
RC_EMU_ATOMIC_RMW(atomicExch, unsigned long long, v)
RC_EMU_ATOMIC_RMW(atomicExch, float, v)
RC_EMU_ATOMIC_RMW(atomicMin, int, v < old ? v : old)
RC_EMU_ATOMIC_RMW(atomicMin, unsigned int, v < old ? v : old)
RC_EMU_ATOMIC_RMW(atomicMin, long long, v < old ? v : old)
RC_EMU_ATOMIC_RMW(atomicMin, unsigned long long, v < old ? v : old)
RC_EMU_ATOMIC_RMW(atomicMax, int, v > old ? v : old)
RC_EMU_ATOMIC_RMW(atomicMax, unsigned int, v > old ? v : old)
RC_EMU_ATOMIC_RMW(atomicMax, long long, v > old ? v : old)
RC_EMU_ATOMIC_RMW(atomicMax, unsigned long long, v > old ? v : old)
RC_EMU_ATOMIC_RMW(atomicAnd, int, old & v)
RC_EMU_ATOMIC_RMW(atomicAnd, unsigned int, old & v)
RC_EMU_ATOMIC_RMW(atomicAnd, unsigned long long, old & v)
RC_EMU_ATOMIC_RMW(atomicOr, int, old | v)
RC_EMU_ATOMIC_RMW(atomicOr, unsigned int, old | v)
RC_EMU_ATOMIC_RMW(atomicOr, unsigned long long, old | v)
RC_EMU_ATOMIC_RMW(atomicXor, int, old ^ v)
RC_EMU_ATOMIC_RMW(atomicXor, unsigned int, old ^ v)
RC_EMU_ATOMIC_RMW(atomicXor, unsigned long long, old ^ v)
RC_EMU_ATOMIC_RMW(atomicInc, unsigned int, old >= v ? 0u : old + 1u)
RC_EMU_ATOMIC_RMW(atomicDec, unsigned int, (old == 0u || old > v) ? v : old - 1u)
#undef RC_EMU_ATOMIC_RMW
#define RC_EMU_ATOMIC_CAS(T)                                                                  \
    inline T atomicCAS(T* a, T cmp, T v) { T old = *a; if (old == cmp) *a = v; return old; } \
    inline T atomicCAS_block(T* a, T cmp, T v) { return atomicCAS(a, cmp, v); }              \
    inline T atomicCAS_system(T* a, T cmp, T v) { return atomicCAS(a, cmp, v); }
RC_EMU_ATOMIC_CAS(int)
RC_EMU_ATOMIC_CAS(unsigned int)
RC_EMU_ATOMIC_CAS(unsigned long long)
RC_EMU_ATOMIC_CAS(unsigned short)
#undef RC_EMU_ATOMIC_CAS

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---------------------------------------------------------------------------------------------
// Block and warp cooperation (run on fibers; see runtime.cpp)

inline void __syncthreads() { rc_emu::block_barrier(); }
inline int __syncthreads_count(int p) { int c, n; rc_emu::block_vote(p, &c, &n); return c; }
inline int __syncthreads_and(int p) { int c, n; rc_emu::block_vote(p, &c, &n); return c == n; }
inline int __syncthreads_or(int p) { int c, n; rc_emu::block_vote(p, &c, &n); return c != 0; }
inline void __syncwarp(unsigned int mask = 0xffffffffu) { (void)mask; rc_emu::warp_barrier(); }
inline unsigned int __activemask() { return rc_emu::live_lanes(); }

namespace rc_emu {
template <class T> struct WarpView {     // every lane's value of one warp-wide exchange
    static_assert(std::is_arithmetic_v<T>, "warp intrinsics take arithmetic types here");
    unsigned char raw[32 * sizeof(T)];
    unsigned int live;
    explicit WarpView(T mine) { warp_gather(&mine, sizeof(T), raw, &live); }
    bool has(unsigned int lane) const { return lane < 32u && ((live >> lane) & 1u); }
    T at(unsigned int lane) const { T v; __builtin_memcpy(&v, raw + lane * sizeof(T), sizeof(T)); return v; }
};
inline unsigned int check_width(int width) {
    if (width < 1 || width > 32 || (width & (width - 1)) != 0)
        fail("warp shuffle width must be a power of two in [1, 32]");
    return (unsigned int)width;
}
}  // namespace rc_emu

// A source lane outside the warp's live lanes (undefined in CUDA) gives the caller's own value.
template <class T> inline T __shfl_sync(unsigned int, T var, int src, int width = 32) {
    const unsigned int w = rc_emu::check_width(width), lane = rc_emu::lane_id();
    const rc_emu::WarpView<T> v(var);
    const unsigned int s = (lane & ~(w - 1u)) + ((unsigned int)src & (w - 1u));
    return v.has(s) ? v.at(s) : var;
}
template <class T> inline T __shfl_up_sync(unsigned int, T var, unsigned int delta, int width = 32) {
    const unsigned int w = rc_emu::check_width(width), lane = rc_emu::lane_id();
    const rc_emu::WarpView<T> v(var);
    if ((lane & (w - 1u)) < delta) return var;
    return v.has(lane - delta) ? v.at(lane - delta) : var;
}
template <class T> inline T __shfl_down_sync(unsigned int, T var, unsigned int delta, int width = 32) {
    const unsigned int w = rc_emu::check_width(width), lane = rc_emu::lane_id();
    const rc_emu::WarpView<T> v(var);
    if ((lane & (w - 1u)) + delta >= w) return var;
    return v.has(lane + delta) ? v.at(lane + delta) : var;
}
template <class T> inline T __shfl_xor_sync(unsigned int, T var, int lane_mask, int width = 32) {
    const unsigned int w = rc_emu::check_width(width), lane = rc_emu::lane_id();
    const rc_emu::WarpView<T> v(var);
    const unsigned int s = lane ^ (unsigned int)lane_mask;
    if (s >= (lane & ~(w - 1u)) + w) return var;    // a later group: own value (CUDA's rule)
    return v.has(s) ? v.at(s) : var;
}
inline unsigned int __ballot_sync(unsigned int mask, int pred) {
    const rc_emu::WarpView<int> v(pred);
    unsigned int r = 0;
    for (unsigned int l = 0; l < 32; ++l)
        if (v.has(l) && ((mask >> l) & 1u) && v.at(l)) r |= 1u << l;
    return r;
}
inline int __any_sync(unsigned int mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned int mask, int pred) {
    const rc_emu::WarpView<int> v(pred);
    for (unsigned int l = 0; l < 32; ++l)
        if (v.has(l) && ((mask >> l) & 1u) && !v.at(l)) return 0;
    return 1;
}
#define RC_EMU_REDUCE(NAME, T, INIT, EXPR)                                                    \
    inline T NAME(unsigned int mask, T value) {                                               \
        const rc_emu::WarpView<T> v(value);                                                   \
        T r = INIT;                                                                           \
        for (unsigned int l = 0; l < 32; ++l)                                                 \
            if (v.has(l) && ((mask >> l) & 1u)) { const T x = v.at(l); r = (EXPR); }          \
        return r;                                                                             \
    }
RC_EMU_REDUCE(__reduce_add_sync, int, 0, (int)((unsigned int)r + (unsigned int)x))
RC_EMU_REDUCE(__reduce_add_sync, unsigned int, 0u, r + x)
RC_EMU_REDUCE(__reduce_min_sync, int, 0x7fffffff, x < r ? x : r)
RC_EMU_REDUCE(__reduce_min_sync, unsigned int, 0xffffffffu, x < r ? x : r)
RC_EMU_REDUCE(__reduce_max_sync, int, (int)0x80000000, x > r ? x : r)
RC_EMU_REDUCE(__reduce_max_sync, unsigned int, 0u, x > r ? x : r)
RC_EMU_REDUCE(__reduce_and_sync, unsigned int, 0xffffffffu, r & x)
RC_EMU_REDUCE(__reduce_or_sync, unsigned int, 0u, r | x)
RC_EMU_REDUCE(__reduce_xor_sync, unsigned int, 0u, r ^ x)
#undef RC_EMU_REDUCE

// ---------------------------------------------------------------------------------------------
// Miscellaneous

inline long long clock64() { static long long t = 0; return ++t; }   // monotonic, not time
inline void __nanosleep(unsigned int) {}
[[noreturn]] inline void __trap() { rc_emu::fail("__trap() called"); }
[[noreturn]] inline void __brkpt() { rc_emu::fail("__brkpt() called"); }
namespace rc_emu {
[[noreturn]] inline void assert_fail(const char* expr, const char* file, int line) {
    static thread_local char buf[512];
    __builtin_snprintf(buf, sizeof buf, "%s:%d: assertion failed: %s", file, line, expr);
    fail(buf);
}
}
#ifndef assert
#define assert(e) ((e) ? (void)0 : ::rc_emu::assert_fail(#e, __FILE__, __LINE__))
#endif

// ---------------------------------------------------------------------------------------------
// Launch glue used by the generated wrappers (build.py): unpack the argument buffers into the
// kernel's parameter types and run the grid; describe the parameters for the Python-side check.

namespace rc_emu {
template <class P> using arg_t = std::remove_cv_t<std::remove_reference_t<P>>;

template <class A> inline A load_arg(const void* p) {
    static_assert(std::is_trivially_copyable_v<A>, "kernel parameters must be trivially copyable");
    alignas(A) unsigned char buf[sizeof(A)];
    __builtin_memcpy(buf, p, sizeof(A));
    return *reinterpret_cast<A*>(buf);
}

template <class... P, std::size_t... I>
inline int launch_impl(void (*fn)(P...), const LaunchSpec& spec, void** args,
                       std::index_sequence<I...>) {
    (void)args;
    typedef std::tuple<arg_t<P>...> Values;
    Values values{load_arg<arg_t<P>>(args[I])...};   // copied once, like a kernel parameter block
    struct Ctx { void (*fn)(P...); Values* values; } ctx{fn, &values};
    BodyFn body = [](void* p) {
        Ctx* c = static_cast<Ctx*>(p);
        (void)c;
        c->fn(std::get<I>(*c->values)...);
    };
    return run_grid(spec, body, &ctx);
}

// opts: {cooperative, order, seed}
template <class... P>
inline int launch(void (*fn)(P...), const unsigned int* grid, const unsigned int* block,
                  unsigned long long shared_mem, void** args, const long long* opts) {
    const LaunchSpec spec{{grid[0], grid[1], grid[2]}, {block[0], block[1], block[2]}, shared_mem,
                          (int)opts[0], (int)opts[1], (unsigned long long)opts[2]};
    return launch_impl(fn, spec, args, std::index_sequence_for<P...>{});
}

// 'p' pointer, 'b' bool, 'i' signed / 'u' unsigned integer (enums by their underlying type),
// 'f' floating point, 'V' anything else (a struct by value); then the size in bytes.
template <class A> constexpr char kind() {
    if constexpr (std::is_pointer_v<A>) return 'p';
    else if constexpr (std::is_same_v<A, bool>) return 'b';
    else if constexpr (std::is_enum_v<A>) return std::is_signed_v<std::underlying_type_t<A>> ? 'i' : 'u';
    else if constexpr (std::is_integral_v<A>) return std::is_signed_v<A> ? 'i' : 'u';
    else if constexpr (std::is_floating_point_v<A>) return 'f';
    else return 'V';
}

template <class... P> inline const char* signature(void (*)(P...)) {
    static const std::string s = [] {
        std::string r;
        ((r += kind<arg_t<P>>(), r += std::to_string(sizeof(arg_t<P>)), r += ' '), ...);
        return r;
    }();
    return s.c_str();
}
}  // namespace rc_emu
