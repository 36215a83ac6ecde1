"""rc.resample / rc.fuse: the same bodies on every backend, against float64 references."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ALL_BACKENDS, DEVICE_BACKENDS, HOST_BACKENDS, to_backend, to_host64
from hypothesis import given, settings
from hypothesis import strategies as st

import robocache as rc
from robocache import _array

ml_dtypes = pytest.importorskip("ml_dtypes")

# (dtype, absolute tolerance relative to data of unit scale): one rounding to the dtype
TOL = {"float64": 1e-12, "float32": 2e-6, "float16": 2e-3, "bfloat16": 1.6e-2}


def interp_reference(data, src, tgt):
    """numpy.interp per batch row and feature, in float64 (the contract's reference)."""
    data = np.asarray(data, np.float64)
    B, _, D = data.shape
    out = np.empty((B, tgt.shape[1], D))
    for b in range(B):
        for k in range(D):
            out[b, :, k] = np.interp(tgt[b], src[b], data[b, :, k])
    return out


def step_reference(data, src, tgt, method):
    """nearest / previous by brute force over every (target, source) pair."""
    B, S, D = data.shape
    out = np.empty((B, tgt.shape[1], D), dtype=data.dtype)
    for b in range(B):
        for j, t in enumerate(tgt[b]):
            before = [i for i in range(S) if src[b, i] <= t]
            i = before[-1] if before else -1
            if method == "previous" or i < 0 or i == S - 1:
                row = max(i, 0)
            else:
                row = i + 1 if (src[b, i + 1] - t) < (t - src[b, i]) else i
            out[b, j] = data[b, row]
    return out


def random_case(rng, B, S, T, D, *, dup=False):
    src = np.sort(rng.uniform(0.0, 10.0, (B, S)), axis=1)
    if dup and S > 2:
        src[:, 1] = src[:, 2]  # a duplicated timestamp
    tgt = rng.uniform(-2.0, 12.0, (B, T))  # some before, some after the span
    data = rng.standard_normal((B, S, D))
    return data, src, tgt


def quantised(data, dtype):
    """The data as the kernel sees it after the cast to dtype, back in float64."""
    if dtype == "bfloat16":
        return data.astype(ml_dtypes.bfloat16).astype(np.float64)
    return data.astype(dtype).astype(np.float64)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(3, 17, 5, 23), (2, 1, 3, 4), (2, 2, 16, 9), (1, 40, 8, 64)])
def test_linear_matches_numpy_interp(backend, dtype, shape, rng):
    B, S, T, D = shape
    data, src, tgt = random_case(rng, B, S, T, D, dup=True)
    tdtype = "float64"
    out = rc.resample(to_backend(data, backend, dtype), to_backend(src, backend, tdtype),
                      to_backend(tgt, backend, tdtype))
    assert _array.library(out) == _array.library(to_backend(src, backend))
    assert _array.dtype_name(out) == dtype
    assert tuple(out.shape) == (B, T, D)
    ref = interp_reference(quantised(data, dtype), src, tgt)
    np.testing.assert_allclose(to_host64(out), ref, rtol=0, atol=TOL[dtype] * 8)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("method", ["nearest", "previous"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_step_methods_copy_exact_rows(backend, method, dtype, rng):
    data, src, tgt = random_case(rng, 3, 9, 31, 6, dup=True)
    tgt[:, :5] = src[:, :5]  # exact hits
    tgt[0, 5] = 0.5 * (src[0, 3] + src[0, 4])  # a tie goes to the earlier row
    out = rc.resample(to_backend(data, backend, dtype), to_backend(src, backend),
                      to_backend(tgt, backend), method=method)
    ref = step_reference(quantised(data, dtype), src, tgt, method)
    np.testing.assert_array_equal(to_host64(out), ref)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_two_dimensional_inputs_and_float32_times(backend, rng):
    data, src, tgt = random_case(rng, 1, 12, 20, 4)
    out = rc.resample(to_backend(data[0], backend, "float32"),
                      to_backend(src[0], backend, "float32"), to_backend(tgt[0], backend, "float32"))
    assert tuple(out.shape) == (20, 4)
    src32 = src[0].astype(np.float32).astype(np.float64)
    tgt32 = tgt[0].astype(np.float32).astype(np.float64)
    ref = interp_reference(data[:1].astype(np.float32), src32[None], tgt32[None])[0]
    np.testing.assert_allclose(to_host64(out), ref, atol=1e-5)


@pytest.mark.parametrize("backend", HOST_BACKENDS + DEVICE_BACKENDS)
def test_non_contiguous_inputs(backend, rng):
    data, src, tgt = random_case(rng, 4, 10, 7, 6)
    big = np.repeat(data, 2, axis=2)  # take every other feature: a strided view
    d = to_backend(big, backend, "float32")[:, :, ::2]
    out = rc.resample(d, to_backend(src, backend), to_backend(tgt, backend))
    np.testing.assert_allclose(to_host64(out), interp_reference(data.astype(np.float32), src, tgt),
                               atol=1e-5)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch_and_no_targets(backend):
    data = np.zeros((0, 5, 3))
    out = rc.resample(to_backend(data, backend, "float32"), to_backend(np.zeros((0, 5)), backend),
                      to_backend(np.zeros((0, 4)), backend))
    assert tuple(out.shape) == (0, 4, 3)
    d = np.arange(6.0).reshape(1, 2, 3)
    out = rc.resample(to_backend(d, backend, "float32"), to_backend(np.array([[0.0, 1.0]]), backend),
                      to_backend(np.zeros((1, 0)), backend))
    assert tuple(out.shape) == (1, 0, 3)


def test_targets_outside_clamp_to_end_values():
    data = np.array([[[1.0], [3.0], [7.0]]])
    src = np.array([[0.0, 1.0, 2.0]])
    tgt = np.array([[-5.0, 0.0, 0.5, 1.5, 2.0, 9.0]])
    for method, want in [("linear", [1, 1, 2, 5, 7, 7]), ("nearest", [1, 1, 1, 3, 7, 7]),
                         ("previous", [1, 1, 1, 3, 7, 7])]:
        out = rc.resample(data, src, tgt, method=method)
        np.testing.assert_array_equal(out[0, :, 0], want, err_msg=method)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_resampling_at_source_times_returns_the_source(S, D, seed):
    rng = np.random.default_rng(seed)
    src = np.cumsum(rng.uniform(0.01, 1.0, (1, S)), axis=1)  # strictly increasing
    data = rng.standard_normal((1, S, D))
    for method in ("linear", "nearest", "previous"):
        np.testing.assert_array_equal(rc.resample(data, src, src, method=method), data)


# --- fuse -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("method", ["linear", "nearest", "previous"])
def test_fuse_equals_concatenated_resamples(backend, method, rng):
    B, T = 4, 50
    tgt = np.sort(rng.uniform(0, 3, (B, T)), axis=1)
    streams = []
    for S, D in [(30, 12), (100, 5), (7, 3)]:
        t = np.sort(rng.uniform(0, 3, (B, S)), axis=1)
        streams.append((rng.standard_normal((B, S, D)), t))
    out = rc.fuse([(to_backend(d, backend, "float32"), to_backend(t, backend)) for d, t in streams],
                  to_backend(tgt, backend), method=method)
    assert tuple(out.shape) == (B, T, 20)
    parts = [rc.resample(d.astype(np.float32), t, tgt, method=method) for d, t in streams]
    np.testing.assert_allclose(to_host64(out), np.concatenate(parts, axis=-1), atol=2e-6)


def test_fuse_two_dimensional_streams(rng):
    tgt = np.linspace(0, 1, 11)
    s1 = (rng.standard_normal((5, 2)), np.linspace(0, 1, 5))
    s2 = (rng.standard_normal((9, 3)), np.linspace(0, 1, 9))
    out = rc.fuse([s1, s2], tgt)
    assert out.shape == (11, 5)
    np.testing.assert_allclose(out[:, 2:], rc.resample(*s2, tgt))


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_bad_input_errors_name_the_argument(backend):
    B, S, T, D = 2, 5, 4, 3

    def arr(a, dtype=None):
        return to_backend(np.asarray(a, dtype=np.float64), backend, dtype)

    good = dict(data=arr(np.zeros((B, S, D)), "float32"), src=arr(np.tile(np.arange(S), (B, 1))),
                tgt=arr(np.zeros((B, T))))
    cases = [
        (dict(data=arr(np.zeros((B, S, D, 1)), "float32")), ValueError, "data"),
        (dict(src=arr(np.zeros((B + 1, S)))), ValueError, "src_times"),
        (dict(src=arr(np.zeros((B, S + 1)))), ValueError, "src_times"),
        (dict(tgt=arr(np.zeros((B + 1, T)))), ValueError, "tgt_times"),
        (dict(data=arr(np.zeros((B, S, D)), "int32")), TypeError, "data"),
        (dict(src=arr(np.tile([0, 1, np.nan, 3, 4], (B, 1)))), ValueError, "src_times"),
        (dict(src=arr(np.tile([0, 1, 3, 2, 4], (B, 1)))), ValueError, "src_times"),
        (dict(tgt=arr(np.full((B, T), np.inf))), ValueError, "tgt_times"),
        (dict(tgt=arr(np.zeros((B, T)), "float32")), TypeError, "tgt_times"),
        (dict(data=arr(np.zeros((B, 0, D)), "float32"), src=arr(np.zeros((B, 0)))), ValueError,
         "data"),
    ]
    for change, exc, name in cases:
        kw = {**good, **change}
        with pytest.raises(exc, match=name):
            rc.resample(kw["data"], kw["src"], kw["tgt"])
    with pytest.raises(ValueError, match="method"):
        rc.resample(good["data"], good["src"], good["tgt"], method="cubic")


def test_mixed_libraries_are_rejected():
    torch = pytest.importorskip("torch")
    data = np.zeros((1, 3, 2), np.float32)
    with pytest.raises(ValueError, match="src_times"):
        rc.resample(data, torch.zeros(1, 3, dtype=torch.float64), np.zeros((1, 2)))


def test_sizes_beyond_the_kernels_int32_are_refused_on_every_backend():
    """B, S, T, D (and a fused row's width) are int32 in the kernels: beyond that a clear
    error naming the argument, not NumPy's OverflowError from packing the launch."""
    wide = np.lib.stride_tricks.as_strided(np.zeros(1, np.float16), shape=(1, 2, 2**31),
                                           strides=(0, 0, 0))  # no memory behind it
    times = np.array([[0.0, 1.0]])
    with pytest.raises(ValueError, match=r"data: expected batch, samples and features below "
                                         r"2\*\*31 each"):
        rc.resample(wide, times, np.array([[0.5]]))
    half = np.lib.stride_tricks.as_strided(np.zeros(1, np.float16), shape=(1, 2, 2**30),
                                           strides=(0, 0, 0))
    with pytest.raises(ValueError, match="streams: expected features adding up to less than"):
        rc.fuse([(half, times), (half, times)], np.array([[0.5]]))


def test_unsupported_array_type_is_a_type_error():
    with pytest.raises(TypeError, match="data"):
        rc.resample({"not": "an array"}, np.zeros(3), np.zeros(3))


def test_fuse_bad_input():
    t = np.linspace(0, 1, 4)
    with pytest.raises(ValueError, match="streams"):
        rc.fuse([], t)
    with pytest.raises(ValueError, match="streams"):
        rc.fuse([(np.zeros((4, 2)), t)] * 9, t)
    with pytest.raises(TypeError, match=r"streams\[1\] data"):
        rc.fuse([(np.zeros((4, 2)), t), (np.zeros((4, 2), np.float32), t)], t)
    with pytest.raises(ValueError, match=r"streams\[0\] times"):
        rc.fuse([(np.zeros((4, 2)), t[:3])], t)
    with pytest.raises(ValueError, match=r"streams\[0\]"):
        rc.fuse([np.zeros((4, 2))], t)


@pytest.mark.parametrize("bad", ["no", None, 0])
def test_check_times_is_true_or_false(bad):
    """A string or None is not taken for a choice ("no" ran the checks, None skipped them)."""
    d, s, t = np.zeros((1, 3, 2), np.float32), np.arange(3.0)[None], np.arange(2.0)[None]
    with pytest.raises(TypeError, match=rf"check_times: expected True or False, got {bad!r}"):
        rc.resample(d, s, t, check_times=bad)
    with pytest.raises(TypeError, match=rf"check_times: expected True or False, got {bad!r}"):
        rc.fuse([(d, s)], t, check_times=bad)


def test_fuse_streams_errors_say_what_came():
    t = np.arange(2.0)
    with pytest.raises(ValueError, match="non-empty list .*got an empty list"):
        rc.fuse([], t)
    with pytest.raises(TypeError, match="streams: expected a list .*got a NoneType"):
        rc.fuse(None, t)


def test_float32_linear_error_is_bounded_by_the_neighbouring_samples():
    """The CUDA kernel's float32 weight puts its linear result within ~3 ulps of the larger of
    the two neighbouring samples from the NumPy backend's (float64 rounded once) - not within a
    few ulps of a result near zero between samples of opposite sign (README, resample.py)."""
    emulator = pytest.importorskip("emulator")
    from robocache.ops import resample as R

    rng = np.random.default_rng(1)
    worst = 0.0
    with emulator.emulated():
        for tdt in ("float32", "float64"):
            data = (rng.standard_normal((4, 2, 64)) * 4).astype(np.float32)
            src = np.tile(np.array([[0.0, 3.0]], tdt), (4, 1))
            tgt = rng.uniform(0, 3, (4, 33)).astype(tdt)
            want = R._resample_numpy(data, src, tgt, 0)
            got = R._resample_cuda(data, src, tgt, 0, "float32", tdt)
            ulp = np.spacing(np.maximum(np.abs(data[:, 0]), np.abs(data[:, 1])))[:, None, :]
            worst = max(worst, float((np.abs(got.astype(np.float64) - want) / ulp).max()))
    assert worst <= 3
    # near zero between samples of opposite sign the result itself is not a few ulps off
    with emulator.emulated():
        x = np.array([[[1.0], [-1.0]]], np.float32)
        got = R._resample_cuda(x, np.array([[0.0, 3.0]], np.float32),
                               np.array([[1.5000001]], np.float32), 0, "float32", "float32")
    want = R._resample_numpy(x, np.array([[0.0, 3.0]]), np.array([[1.5000001]], np.float32), 0)
    assert abs(float(got[0, 0, 0]) - float(want[0, 0, 0])) <= 3 * np.spacing(np.float32(1))
