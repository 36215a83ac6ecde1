"""Normalization parameters of diffusion_policy's and robomimic's normalizers, from statistics.

Pure NumPy, host side, once per dataset. Each function takes per-feature statistics of one key
(float64 arrays of the feature's shape: min, max, mean, std = population standard deviation,
count = [frames]) and returns (kernel formula, a, b) as float32 [F] for the window kernel
(ops/windows.py): "scale_offset" is x * a + b, "affine" is (x - a) / b. Every step is the
peer's own float32 arithmetic in the peer's order, so the parameters are the peer's bits:

- diffusion_policy `LinearNormalizer.fit(data, mode="limits" | "gaussian")` with its defaults
  (last_n_dims=1: statistics pooled over every axis but the last; output [-1, 1];
  range_eps=1e-4; fit_offset=True; torch.std is the unbiased one), applied as
  `x * scale + offset` (diffusion_policy/model/common/normalizer.py `_fit`, `_normalize`).
  A column whose range (limits) or std (gaussian) is below range_eps is shifted, not scaled.
- robomimic's action normalization (`action_config[key]["normalization"]` = "min_max" |
  "gaussian"; robomimic/utils/dataset.py `action_stats_to_normalization_stats`): min_max to
  [-0.999999, 0.999999] with range_eps=1e-4, gaussian with population std and std_eps=1e-6,
  applied as `(x - offset) / scale` (obs_utils.normalize_dict).

diffusion_policy fits its float32 statistics with torch reductions; here min and max are exact
and the mean / std are float64 rounded to float32, so "limits" matches bit for bit and
"gaussian" to float32 rounding of the statistics (a few ulp).
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def pool_last_axis(st: dict) -> dict:
    """diffusion_policy's fit statistics (last_n_dims=1): min, max, mean and unbiased std per
    index of the feature's last axis, pooled over the frames and every other feature axis (from
    the per-element statistics); reps = how many times that last axis repeats in a frame."""
    mean = np.asarray(st["mean"], np.float64)
    shape = mean.shape
    last = shape[-1] if len(shape) else 1
    cols = lambda name: np.asarray(st[name], np.float64).reshape(-1, last)  # noqa: E731
    m, s = cols("mean"), cols("std")
    n = int(np.asarray(st["count"]).reshape(-1)[0]) * m.shape[0]  # values pooled per column
    pooled_mean = m.mean(axis=0)  # equal counts per element
    var = (s * s + (m - pooled_mean) ** 2).mean(axis=0)  # population variance of the pool
    with np.errstate(divide="ignore", invalid="ignore"):
        unbiased = np.sqrt(var * n / (n - 1)) if n > 1 else np.full(last, np.nan)
    return {"min": cols("min").min(axis=0), "max": cols("max").max(axis=0),
            "mean": pooled_mean, "std": unbiased, "reps": m.shape[0]}


def diffusion_policy(mode: str, p: dict) -> tuple[str, np.ndarray, np.ndarray]:
    """("scale_offset", scale, offset) of LinearNormalizer mode "limits" or "gaussian" from its
    fit statistics p (pool_last_axis, or given ones with reps=1)."""
    eps = F32(1e-4)
    if mode == "limits":
        lo, hi = p["min"].astype(F32), p["max"].astype(F32)
        rng = hi - lo
        ignore = rng < eps
        rng[ignore] = F32(2.0)
        scale = F32(2.0) / rng
        offset = F32(-1.0) - scale * lo
        offset[ignore] = F32(0.0) - lo[ignore]
    elif mode == "gaussian":
        std, mean = p["std"].astype(F32), p["mean"].astype(F32)
        ignore = std < eps
        std[ignore] = F32(1.0)
        scale = F32(1.0) / std
        offset = -mean * scale
    else:  # pragma: no cover - the dataset checks the mode name
        raise ValueError(f"mode: expected 'limits' or 'gaussian', got {mode!r}")
    reps = p["reps"]
    return "scale_offset", np.tile(scale, reps), np.tile(offset, reps)


def robomimic(mode: str, st: dict) -> tuple[str, np.ndarray, np.ndarray]:
    """("affine", offset, scale) of robomimic's action normalization "min_max" / "gaussian"."""
    if mode == "min_max":
        lo = np.asarray(st["min"], np.float64).reshape(-1).astype(F32)
        hi = np.asarray(st["max"], np.float64).reshape(-1).astype(F32)
        out_lo = F32(-0.999999)
        rng = hi - lo
        ignore = rng < F32(1e-4)
        rng[ignore] = F32(0.999999 - -0.999999)  # a Python double, stored into float32
        scale = rng / F32(0.999999 - -0.999999)
        offset = lo - scale * out_lo
        offset[ignore] = lo[ignore] - F32(0.0)  # minus (out_hi + out_lo) / 2
    elif mode == "gaussian":
        offset = np.asarray(st["mean"], np.float64).reshape(-1).astype(F32)
        scale = np.asarray(st["std"], np.float64).reshape(-1).astype(F32)
        scale[scale < F32(1e-6)] = F32(1.0)
    else:  # pragma: no cover - the dataset checks the mode name
        raise ValueError(f"mode: expected 'min_max' or 'gaussian', got {mode!r}")
    return "affine", offset, scale
