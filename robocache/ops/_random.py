"""NumPy twin of cuda_src/random.cuh: the same counter-based random bits, element by element.

Every function takes and returns uint64 NumPy arrays (or scalars) and broadcasts, so a whole
batch of draws is one vectorised expression. Arithmetic wraps modulo 2^64 as on the GPU.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

FRAME_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)  # RC_FRAME_ALL: one draw for the whole sample

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_U64_MAX = 2**64 - 1


def u64(x) -> np.ndarray:
    """x as uint64; Python ints must lie in [0, 2^64)."""
    if isinstance(x, int):
        if not 0 <= x <= _U64_MAX:
            raise ValueError(f"expected an integer in [0, 2**64), got {x}")
        return np.asarray(x, dtype=np.uint64)
    return np.asarray(x).astype(np.uint64)


def mix64(z) -> np.ndarray:
    """splitmix64 finaliser (rc_mix64)."""
    z = u64(z)
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _mix_int(z: int) -> int:
    """mix64 on one Python int (a few hundred ns instead of NumPy's ~5 us per call)."""
    z = (z + 0x9E3779B97F4A7C15) & _U64_MAX
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64_MAX
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64_MAX
    return z ^ (z >> 31)


def rand_key(seed: int, epoch: int, batch: int, stream: str | None = None) -> np.uint64:
    """rc_rand_key: the per-call key from (seed, epoch, batch), each in [0, 2^64). With
    `stream` (a dataset's camera key), the key of the draws of that name: independent of other
    names' and the same in every process (no salted hash) - mix64(key ^ the first 8 bytes of
    blake2b(name), little-endian)."""
    seed, epoch, batch = int(seed), int(epoch), int(batch)
    if not (0 <= seed <= _U64_MAX and 0 <= epoch <= _U64_MAX and 0 <= batch <= _U64_MAX):
        bad = next(x for x in (seed, epoch, batch) if not 0 <= x <= _U64_MAX)
        raise ValueError(f"expected an integer in [0, 2**64), got {bad}")
    key = _mix_int(_mix_int(_mix_int(seed) ^ epoch) ^ batch)  # per camera and batch: no loop
    return np.uint64(key if stream is None else _mix_int(key ^ _name_bits(stream)))


@functools.lru_cache(maxsize=256)
def _name_bits(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")


def rand_bits(key, sample, frame, purpose) -> np.ndarray:
    """rc_rand_bits: 64 random bits for one (sample, frame, purpose) under `key`."""
    h = mix64(u64(key) ^ u64(sample))
    h = mix64(h ^ u64(frame))
    return mix64(h ^ u64(purpose))


def rand_below(bits, n) -> np.ndarray:
    """rc_rand_below: an integer in [0, n) (n >= 1, n < 2^32), as int64."""
    return (((u64(bits) >> np.uint64(32)) * u64(n)) >> np.uint64(32)).astype(np.int64)


def rand_unit(bits) -> np.ndarray:
    """rc_rand_unit: a float64 in [0, 1), a multiple of 2^-24."""
    return (u64(bits) >> np.uint64(40)).astype(np.float64) * (1.0 / 16777216.0)
