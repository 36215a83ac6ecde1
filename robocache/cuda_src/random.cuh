// random.cuh - counter-based random numbers shared by every RoboCache kernel.
//
// A draw is a pure function of integers, so any thread can compute any draw on its own, in any
// order, and robocache/ops/_random.py computes the very same bits with NumPy uint64 arithmetic:
//
//   key  = rc_rand_key(seed, epoch, batch)          (once per call; the host computes it too)
//   bits = rc_rand_bits(key, sample, frame, purpose)  64 random bits for one use
//
// The mixer is the splitmix64 finaliser (Steele, Lea & Flood 2014), a bijection on 64-bit words
// with full avalanche; chaining mix(h ^ field) keys one draw by every field. `purpose` tells the
// draws of one (sample, frame) apart (each op numbers its own purposes); RC_FRAME_ALL stands for
// "one draw for the whole sample". Integers come from the high 32 bits by multiply-shift (bias
// below 2^-32 * n), uniform floats from the top 24 bits, so a value lo + (hi - lo) * u with
// float32 lo, hi is exact in double precision and rounds the same on every backend.

#include "common.cuh"

#define RC_FRAME_ALL 0xFFFFFFFFFFFFFFFFull

RC_DEVICE rc_u64 rc_mix64(rc_u64 z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

RC_DEVICE rc_u64 rc_rand_key(rc_u64 seed, rc_u64 epoch, rc_u64 batch) {
    return rc_mix64(rc_mix64(rc_mix64(seed) ^ epoch) ^ batch);
}

RC_DEVICE rc_u64 rc_rand_bits(rc_u64 key, rc_u64 sample, rc_u64 frame, rc_u64 purpose) {
    return rc_mix64(rc_mix64(rc_mix64(key ^ sample) ^ frame) ^ purpose);
}

// An integer in [0, n), n >= 1.
RC_DEVICE unsigned int rc_rand_below(rc_u64 bits, unsigned int n) {
    return (unsigned int)(((bits >> 32) * (rc_u64)n) >> 32);
}

// A double in [0, 1) with 24 random bits (a multiple of 2^-24).
RC_DEVICE double rc_rand_unit(rc_u64 bits) {
    return (double)(unsigned int)(bits >> 40) * (1.0 / 16777216.0);
}
