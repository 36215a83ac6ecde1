"""Per-feature statistics of a store's arrays: mean, std, min, max, count, q01, q10, q50, q90, q99.

The names are LeRobot's (meta/stats.json), and so are the shapes of low-dimensional keys: every
statistic has the feature's shape, except "count" = [number of frames]. Low-dimensional keys
reduce over frames (axis 0). Camera keys ([N, H, W, C], channels last) reduce over frames and
pixels, giving one value per channel: shape [C], in the frames' own units (0..255 for uint8); a
camera key without a channel axis ([N, H, W], grey) gives one value (shape ()). That is not
LeRobot's layout for camera keys: its stats.json (a store's shipped_stats) holds [C, 1, 1] in
0..1 units, estimated on a sample of downsampled frames; `v.reshape(-1, 1, 1) / 255` turns a
statistic here (mean, std, min, max, quantiles; not count) into its layout and units.

Accumulation is float64 on the array's own device (NumPy on the host, torch ops for torch CUDA
tensors; the store never copies a key to the host to describe it). std is the population standard
deviation (ddof=0, np.std). Quantiles are exact order statistics with linear interpolation, as
np.quantile's default "linear" method computes them (its formula too, so columns holding -inf /
+inf get its -inf / +inf / NaN): position h = (n - 1) * q between sorted values.
8-bit integer arrays (camera frames) are counted with a 256-bin histogram instead of sorted, which
gives the same exact quantiles. A column holding NaN gets NaN for every statistic but count.
Extra memory is bounded on both paths for 8-bit keys and on the device path for the others: a
pass widens at most _CHUNK_ELEMS values to 64 bits.

LeRobot's own stats.json quantiles are not these: LeRobot 0.4 averages per-episode quantiles
(weighted by episode length) and estimates each from a histogram, so on small or skewed datasets
they can differ from the exact ones by a visible amount (seen: 5.8 on a q01 of a 6-episode
dataset). When a store carries shipped stats (LeRobot's meta/stats.json), the dataset uses those;
these are computed only for keys without them.
"""

from __future__ import annotations

import numpy as np

from . import _array

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)
STAT_KEYS = ("mean", "std", "min", "max", "count", *QUANTILE_KEYS)
_CHUNK_ELEMS = 1 << 25  # float64 elements per pass on the device (256 MiB)


def reduce_axes(x, image: bool) -> tuple[int, ...]:
    if image and x.ndim >= 4:
        return tuple(range(x.ndim - 1))  # frames and pixels; one value per channel
    if image and x.ndim == 3:
        return (0, 1, 2)  # [N, H, W]: one grey channel, one value
    return (0,)


def feature_stats(x, *, image: bool = False) -> dict[str, np.ndarray]:
    """Statistics of one array [N, ...] (NumPy array or torch tensor) as float64 NumPy arrays."""
    n = int(x.shape[0])
    if n == 0:
        raise ValueError(f"stats: expected at least one frame, got shape {tuple(x.shape)}")
    axes = reduce_axes(x, image)
    feat_shape = tuple(int(s) for i, s in enumerate(x.shape) if i not in axes)
    # columns [M, F]: M values per feature column
    dt = _array.dtype_name(x)
    if _array.library(x) == "torch":
        cols = x.reshape(-1, int(np.prod(feat_shape, dtype=np.int64))) if axes != (0,) \
            else x.reshape(n, -1)
        out = _torch_columns(cols, dt)
    else:
        arr = np.asarray(x)
        cols = arr.reshape(-1, int(np.prod(feat_shape, dtype=np.int64))) if axes != (0,) \
            else arr.reshape(n, -1)
        out = _numpy_columns(cols, dt)
    result = {k: v.reshape(feat_shape) for k, v in out.items()}
    result["count"] = np.array([n], dtype=np.int64)
    return result


def _positions(m: int, q: float) -> tuple[int, int, float]:
    """Sorted positions lo, hi of quantile q of m values and the weight w of hi (h = (m - 1) q)."""
    h = (m - 1) * q
    lo = int(np.floor(h))
    return lo, min(lo + 1, m - 1), h - lo


def _lerp(a, b, w: float):
    """np.quantile's interpolation between sorted neighbours a <= b (NumPy's _lerp): a + (b - a) w
    for w < 0.5, b - (b - a) (1 - w) from 0.5 on, so a -inf / +inf neighbour gives the same
    -inf / +inf (or NaN) as np.quantile, and finite values its bits."""
    d = b - a
    return a + d * w if w < 0.5 else b - d * (1 - w)


def _quantiles_sorted(srt: np.ndarray, m: int) -> list[np.ndarray]:
    """Linear-interpolated quantiles of columns already sorted along axis 0 (m rows)."""
    out = []
    for q in QUANTILES:
        lo, hi, w = _positions(m, q)
        out.append(_lerp(srt[lo], srt[hi], w))
    return out


def _numpy_columns(cols: np.ndarray, dt: str) -> dict[str, np.ndarray]:
    if dt in ("uint8", "int8", "bool"):
        return _histogram_columns(cols, dt)
    f = _as_float64(cols, dt)
    mean = f.mean(axis=0)
    std = np.sqrt(((f - mean) ** 2).mean(axis=0))
    nan = np.isnan(f).any(axis=0)
    srt = np.sort(f, axis=0)
    qs = _quantiles_sorted(srt, f.shape[0])
    out = {"mean": mean, "std": std, "min": f.min(axis=0), "max": f.max(axis=0)}
    for key, v in zip(QUANTILE_KEYS, qs, strict=True):
        out[key] = np.where(nan, np.nan, v)
    return out


def _as_float64(cols: np.ndarray, dt: str) -> np.ndarray:
    if dt == "bfloat16":  # with or without ml_dtypes: the bits are the high half of a float32
        bits = cols.view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float64)
    return cols.astype(np.float64)


def _histogram_columns(cols, dt: str) -> dict[str, np.ndarray]:
    """Exact statistics of 8-bit columns from per-column 256-bin histograms (NumPy)."""
    m, F = cols.shape
    counts = np.zeros(256 * F, dtype=np.int64)
    offsets = 256 * np.arange(F, dtype=np.int64)  # column j counts in bins [256 j, 256 j + 256)
    step = _histogram_rows(F)
    for r0 in range(0, m, step):  # a few rows at a time bounds the int64 codes
        codes = cols[r0:r0 + step].view(np.uint8).astype(np.int64)  # bool / int8: their bytes
        codes += offsets
        counts += np.bincount(codes.reshape(-1), minlength=256 * F)
        del codes
    return _stats_from_counts(counts.reshape(F, 256), m, dt)


def _histogram_rows(F: int) -> int:
    """Rows of F 8-bit columns per histogram pass: _CHUNK_ELEMS int64 codes at most."""
    return max(1, _CHUNK_ELEMS // max(F, 1))


def _stats_from_counts(counts: np.ndarray, m: int, dt: str) -> dict[str, np.ndarray]:
    vals = np.arange(256, dtype=np.float64)
    if dt == "int8":  # bin b holds the byte b, i.e. the value b - 256 for b >= 128
        vals = np.where(vals >= 128, vals - 256, vals)
        order = np.concatenate([np.arange(128, 256), np.arange(128)])
        counts, vals = counts[:, order], vals[order]
    c = counts.astype(np.float64)
    mean = (c * vals).sum(axis=1) / m
    std = np.sqrt((c * (vals[None, :] - mean[:, None]) ** 2).sum(axis=1) / m)
    present = counts > 0
    vmin = np.array([vals[np.argmax(p)] for p in present])
    vmax = np.array([vals[len(vals) - 1 - np.argmax(p[::-1])] for p in present])
    cum = np.cumsum(counts, axis=1)
    out = {"mean": mean, "std": std, "min": vmin, "max": vmax}
    for key, q in zip(QUANTILE_KEYS, QUANTILES, strict=True):
        lo, hi, w = _positions(m, q)
        # the value at sorted position p is the first bin whose cumulative count exceeds p
        a = vals[np.argmax(cum > lo, axis=1)]
        b = vals[np.argmax(cum > hi, axis=1)]
        out[key] = _lerp(a, b, w)
    return out


def _torch_columns(cols, dt: str) -> dict[str, np.ndarray]:
    import torch

    m, F = int(cols.shape[0]), int(cols.shape[1])
    if dt in ("uint8", "int8", "bool"):
        return _stats_from_counts(_torch_counts(cols, m, F), m, dt)
    out = {k: np.empty(F) for k in ("mean", "std", "min", "max", *QUANTILE_KEYS)}
    step = max(1, _CHUNK_ELEMS // max(m, 1))
    for c0 in range(0, F, step):  # a few feature columns at a time bounds the float64 copy
        f = cols[:, c0:c0 + step].to(torch.float64)
        mean = f.mean(dim=0)
        out["mean"][c0:c0 + step] = mean.cpu().numpy()
        out["std"][c0:c0 + step] = torch.sqrt(((f - mean) ** 2).mean(dim=0)).cpu().numpy()
        out["min"][c0:c0 + step] = f.amin(dim=0).cpu().numpy()
        out["max"][c0:c0 + step] = f.amax(dim=0).cpu().numpy()
        nan = torch.isnan(f).any(dim=0)
        srt = torch.sort(f, dim=0).values
        for key, v in zip(QUANTILE_KEYS, _quantiles_sorted(srt, m), strict=True):
            v = torch.where(nan, torch.full_like(v, float("nan")), v)
            out[key][c0:c0 + step] = v.cpu().numpy()
        del f, srt
    return out


def _torch_counts(cols, m: int, F: int) -> np.ndarray:
    """Per-column 256-bin histograms [F, 256] of 8-bit columns, on the columns' device."""
    import torch

    counts = torch.zeros(256 * F, dtype=torch.int64, device=cols.device)
    offsets = 256 * torch.arange(F, device=cols.device, dtype=torch.int64)
    step = _histogram_rows(F)
    for r0 in range(0, m, step):  # a few rows at a time bounds the int64 codes
        codes = cols[r0:r0 + step].view(torch.uint8).to(torch.int64)  # bool / int8: their bytes
        codes += offsets
        counts += torch.bincount(codes.reshape(-1), minlength=256 * F)
        del codes
    return counts.reshape(F, 256).cpu().numpy()
