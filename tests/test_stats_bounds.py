"""robocache.stats: bounded memory for 8-bit keys (camera frames) and np.quantile's quantiles
with infinities, on the NumPy path and the device path (torch ops, run here on CPU tensors)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from robocache import stats as S

torch = pytest.importorskip("torch")

BACKENDS = ("numpy", "torch")


def _on(backend: str, x: np.ndarray):
    return torch.from_numpy(x) if backend == "torch" else x


def _eight_bit(rng, dtype: str, shape) -> np.ndarray:
    if dtype == "bool":
        return rng.random(shape) < 0.3
    lo, hi = (-128, 128) if dtype == "int8" else (0, 256)
    return rng.integers(lo, hi, size=shape).astype(dtype)


def _assert_same_stats(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# ---------------------------------------------------------------------------------------------
# 8-bit keys: histograms counted a bounded number of rows at a time


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["uint8", "int8", "bool"])
@pytest.mark.parametrize("image", [False, True])
def test_8bit_stats_are_the_same_counted_in_passes(monkeypatch, backend, dtype, image):
    """Any pass size (rows that split the columns' frames unevenly, one row per pass) gives
    the statistics of one pass over everything, bit for bit."""
    rng = np.random.default_rng(40)
    x = _eight_bit(rng, dtype, (37, 5, 4, 3) if image else (211, 6))
    whole = S.feature_stats(_on(backend, x), image=image)
    for chunk in (1, 2, 7, 3 * 29, x.size - 1):
        monkeypatch.setattr(S, "_CHUNK_ELEMS", chunk)
        _assert_same_stats(S.feature_stats(_on(backend, x), image=image), whole)
    ref = S.feature_stats(np.ascontiguousarray(x.reshape(-1, 3) if image else x))
    for k in (k for k in S.STAT_KEYS if k != "count"):  # the statistics of the columns
        np.testing.assert_array_equal(whole[k], ref[k], err_msg=k)


@pytest.mark.parametrize("image", [False, True])
def test_8bit_stats_memory_is_bounded_on_the_numpy_path(monkeypatch, image):
    """Camera frames were widened to int64 twice (16x the key's bytes) before counting: the
    extra memory is now one pass of _CHUNK_ELEMS int64 codes (and the F x 256 histograms)."""
    monkeypatch.setattr(S, "_CHUNK_ELEMS", 1 << 12)  # 32 KiB of codes per pass
    rng = np.random.default_rng(41)
    x = _eight_bit(rng, "uint8", (500, 40, 40, 3) if image else (100_000, 24))  # 2.4 MB
    want = S.feature_stats(x.copy(), image=image)
    tracemalloc.start()
    try:
        got = S.feature_stats(x, image=image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _assert_same_stats(got, want)
    assert peak < x.nbytes // 4, f"peak {peak} bytes for a key of {x.nbytes}"


@pytest.mark.parametrize("dtype", ["uint8", "int8", "bool"])
def test_8bit_stats_on_the_device_path_count_bounded_passes(monkeypatch, dtype):
    """The device path (a CUDA store's camera frames) counts at most _CHUNK_ELEMS values per
    torch.bincount, so its int64 codes stay within the bound the float path keeps."""
    monkeypatch.setattr(S, "_CHUNK_ELEMS", 1000)
    rng = np.random.default_rng(42)
    x = _eight_bit(rng, dtype, (60, 10, 8, 3))
    sizes = []
    bincount = torch.bincount

    def counting(codes, *args, **kw):
        sizes.append(codes.numel())
        return bincount(codes, *args, **kw)

    monkeypatch.setattr(torch, "bincount", counting)
    got = S.feature_stats(torch.from_numpy(x), image=True)
    assert sizes and max(sizes) <= 1000 and sum(sizes) == x.size
    _assert_same_stats(got, S.feature_stats(x, image=True))


# ---------------------------------------------------------------------------------------------
# quantiles: np.quantile's (method "linear"), bit for bit, infinities included


def _assert_np_quantiles(got: dict, x: np.ndarray) -> None:
    f = x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        for k, q in zip(S.QUANTILE_KEYS, S.QUANTILES, strict=True):
            np.testing.assert_array_equal(got[k], np.quantile(f, q, axis=0), err_msg=k)


def _with_infs(rng, m: int, F: int) -> np.ndarray:
    """Random columns: finite, one -inf, -inf at the bottom, +inf at the top, both, all inf."""
    x = rng.standard_normal((m, F)).astype(np.float32) * 100
    for j in range(F):
        kind = j % 7
        rows = rng.permutation(m)
        if kind == 1:
            x[rows[:1], j] = -np.inf
        elif kind == 2:
            x[rows[:max(1, m // 10)], j] = -np.inf
        elif kind == 3:
            x[rows[:max(1, m // 20)], j] = np.inf
        elif kind == 4:
            x[rows[:max(1, m // 7)], j] = -np.inf
            x[rows[-max(1, m // 9):], j] = np.inf
        elif kind == 5:
            x[:, j] = np.where(rng.random(m) < 0.5, -np.inf, np.inf)
        elif kind == 6:
            x[rows[: int(rng.integers(0, m + 1))], j] = np.inf
    return x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m", [1, 2, 3, 10, 51, 100, 101, 257, 1000])
def test_quantiles_with_infinities_are_np_quantiles(backend, m):
    """A -inf neighbour made a + w (b - a) NaN where np.quantile (b - (b - a)(1 - w) for
    w >= 0.5) gives -inf; +inf and mixed columns follow np.quantile too, NaN where it has NaN."""
    rng = np.random.default_rng(43 + m)
    x = _with_infs(rng, m, 21)
    with np.errstate(invalid="ignore"):
        got = S.feature_stats(_on(backend, x))
    _assert_np_quantiles(got, x)
    x1 = np.linspace(0, 1, 100, dtype=np.float32).reshape(-1, 1)
    x1[0] = -np.inf  # the reviewer's column: q01 between -inf and 0.0101
    with np.errstate(invalid="ignore"):
        assert S.feature_stats(_on(backend, x1))["q01"][0] == -np.inf


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int32", "uint8", "int8",
                                   "bool"])
def test_quantiles_are_np_quantiles_bit_for_bit(backend, dtype):
    """Finite columns of every length 1..60 (all weights w, below and above 0.5), sorted and
    histogram paths: np.quantile's own values, not just close to them."""
    rng = np.random.default_rng(44)
    for m in range(1, 61):
        if dtype in ("uint8", "int8", "bool"):
            x = _eight_bit(rng, dtype, (m, 3))
        else:
            x = (rng.standard_normal((m, 3)) * 1000).astype(dtype)
        _assert_np_quantiles(S.feature_stats(_on(backend, x)), x)


# ---------------------------------------------------------------------------------------------
# camera keys: per channel in the frames' units; LeRobot's layout is one reshape and / 255 away


def test_camera_stats_are_per_channel_in_frame_units_as_documented():
    """store.stats() of a camera key: [C] (() for grey) in 0..255; `v.reshape(-1, 1, 1) / 255`
    gives LeRobot's stats.json layout (compute_stats: axes (0, 2, 3) of [N, C, H, W], keepdims,
    / 255, batch axis squeezed), here over every frame and pixel."""
    rng = np.random.default_rng(45)
    frames = rng.integers(0, 256, (30, 7, 5, 3), dtype=np.uint8)
    got = S.feature_stats(frames, image=True)
    chw = frames.transpose(0, 3, 1, 2).astype(np.float64)
    lerobot = {"mean": np.mean(chw, axis=(0, 2, 3), keepdims=True),
               "std": np.std(chw, axis=(0, 2, 3), keepdims=True),
               "min": np.min(chw, axis=(0, 2, 3), keepdims=True),
               "max": np.max(chw, axis=(0, 2, 3), keepdims=True)}
    for k, v in lerobot.items():
        assert got[k].shape == (3,), k
        want = np.squeeze(v / 255.0, axis=0)
        assert want.shape == (3, 1, 1)
        np.testing.assert_allclose(got[k].reshape(-1, 1, 1) / 255, want, rtol=1e-12, err_msg=k)
    grey = S.feature_stats(frames[..., 0], image=True)
    assert grey["mean"].shape == () and grey["max"] == frames[..., 0].max()
