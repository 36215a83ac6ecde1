"""The counter-based generator (ops/_random.py, twin of cuda_src/random.cuh)."""

import numpy as np
import pytest

from robocache.ops import _random

MASK = 2**64 - 1


def _mix_py(z: int) -> int:
    """splitmix64's finaliser with Python integers (an independent implementation)."""
    z = (z + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_mix64_is_splitmix64():
    # splitmix64 seeded with 0 yields mix(0), mix(golden), mix(2 * golden), ... (Vigna's reference)
    states = [0, 0x9E3779B97F4A7C15, (2 * 0x9E3779B97F4A7C15) & MASK]
    got = [int(_random.mix64(s)) for s in states]
    assert got == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_vectorised_equals_python_ints():
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 2**63, 50, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    got = _random.mix64(keys)
    assert got.dtype == np.uint64
    assert [int(g) for g in got] == [_mix_py(int(k)) for k in keys]
    key = int(_random.rand_key(7, 3, 11))
    assert key == _mix_py(_mix_py(_mix_py(7) ^ 3) ^ 11)
    bits = _random.rand_bits(key, np.arange(4, dtype=np.uint64), _random.FRAME_ALL, 2)
    want = [_mix_py(_mix_py(_mix_py(key ^ s) ^ MASK) ^ 2) for s in range(4)]
    assert [int(b) for b in bits] == want


def test_below_and_unit_ranges():
    bits = _random.rand_bits(_random.rand_key(0, 0, 0), np.arange(20000, dtype=np.uint64), 0, 1)
    for n in (1, 2, 5, 13, 2**31):
        v = _random.rand_below(bits, n)
        assert v.dtype == np.int64 and v.min() >= 0 and v.max() < n
        if n <= 13:
            assert len(np.unique(v)) == n                     # every value is reachable
            counts = np.bincount(v, minlength=n)
            assert counts.min() > 0.8 * 20000 / n               # and roughly uniform
    u = _random.rand_unit(bits)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert np.all(u * 2**24 == np.floor(u * 2**24))             # multiples of 2^-24


def test_keys_differ_by_every_field():
    base = int(_random.rand_key(1, 2, 3))
    others = {int(_random.rand_key(*t)) for t in [(0, 2, 3), (1, 0, 3), (1, 2, 4), (2, 1, 3)]}
    assert base not in others and len(others) == 4


def test_u64_rejects_out_of_range():
    with pytest.raises(ValueError):
        _random.u64(-1)
    with pytest.raises(ValueError):
        _random.u64(2**64)
