"""Normalization parameters of diffusion_policy's and robomimic's normalizers, from statistics.

Host side, once per dataset. `diffusion_policy_stats` / `robomimic_stats` fit a peer's
statistics on one key's frames as the peer does; `diffusion_policy` / `robomimic` turn them (or
statistics the user gives) into (kernel formula, a, b), float32 [F] for the window kernel
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
- robomimic's observation normalization (`SequenceDataset(hdf5_normalize_obs=True)`,
  `normalize_obs`): `(x - mean) / (std + 1e-3)` (obs_utils.normalize_obs).

robomimic computes its statistics in float32, one demo at a time (mean and summed squared
deviations of the demo's rows cast to float32), merged demo by demo in file order with Chan's
parallel formulas; `robomimic_stats` repeats those NumPy expressions in that order, so its
parameters are robomimic's bits even where float32 loses digits (a near-constant column's std
can be off by 1e-4 relative to the exact one). diffusion_policy fits float32 statistics with
torch reductions on the CPU; `diffusion_policy_stats` runs the same reductions, whose rounding
depends on torch's version and thread count (a different one moves the mean / std by an ulp).
Both run on a host copy of the key's frames.
"""

from __future__ import annotations

import numpy as np

from . import _array

F32 = np.float32
HOST_CHUNK_BYTES = 64 << 20  # rows copied from the device per transfer (robomimic_stats)


def diffusion_policy_stats(x) -> dict:
    """LinearNormalizer.fit's statistics of one key's frames `x` [N, ...] (a NumPy array): its
    own torch reductions on the CPU (`_fit` with last_n_dims=1: the frames as float32, reshaped
    to [-1, last axis]; min, max, mean, unbiased std), so they are its bits when torch and its
    thread count are the same; reps = how many times the last axis repeats in a frame. A scalar
    feature is one column (diffusion_policy would make the whole 1-D array one row)."""
    import torch

    x = np.asarray(x)
    last = int(x.shape[-1]) if x.ndim > 1 else 1
    F = int(np.prod(x.shape[1:], dtype=np.int64))
    if F == 0:  # a feature with no elements: nothing to fit
        empty = np.zeros(0, np.float32)
        return {"min": empty, "max": empty, "mean": empty, "std": empty, "reps": 0}
    host = x if x.dtype.kind in "biuf" else x.astype(np.float32)  # bfloat16 (ml_dtypes)
    data = torch.from_numpy(np.ascontiguousarray(host)).type(torch.float32).reshape(-1, last)
    return {"min": data.min(axis=0)[0].numpy(), "max": data.max(axis=0)[0].numpy(),
            "mean": data.mean(axis=0).numpy(), "std": data.std(axis=0).numpy(),
            "reps": F // last}


def diffusion_policy(mode: str, p: dict) -> tuple[str, np.ndarray, np.ndarray]:
    """("scale_offset", scale, offset) of LinearNormalizer mode "limits" or "gaussian" from its
    fit statistics p (diffusion_policy_stats, or given ones with reps=1)."""
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


def promotes_to_f64(dtype_name: str) -> bool:
    """Whether NumPy computes `x - float32 array` in float64 for x of this dtype (float64 and
    32 / 64-bit integers), as robomimic's normalization of the stored arrays does."""
    if dtype_name == "bfloat16":
        return False
    return np.result_type(np.dtype(dtype_name), np.float32) == np.float64


def host_episodes(src, ends: np.ndarray):
    """Each non-empty episode's rows of `src` [N, ...] (NumPy, CuPy or torch) as a NumPy array,
    in order; device arrays come to the host in transfers of up to HOST_CHUNK_BYTES (whole
    episodes), so the host holds one chunk at a time."""
    ends = np.asarray(ends, np.int64)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    row_bytes = max(1, _array.nbytes(src) // max(1, int(src.shape[0])))
    i = 0
    while i < ends.size:
        j = i + 1
        while j < ends.size and (ends[j] - starts[i]) * row_bytes <= HOST_CHUNK_BYTES:
            j += 1
        lo = int(starts[i])
        host = _array.to_numpy(src[lo:int(ends[j - 1])])
        for s, e in zip(starts[i:j].tolist(), ends[i:j].tolist(), strict=True):
            if e > s:
                yield host[s - lo:e - lo]
        i = j


def robomimic_stats(episodes) -> dict:
    """robomimic's statistics of one key: n, mean, sqdiff (float32 [1, ...]), min, max, from
    `episodes` (one array [L, ...] per demo, in the dataset's demo order). The expressions and
    their order are robomimic's `_compute_traj_stats` / `_aggregate_traj_stats`
    (robomimic/utils/dataset.py; min and max as its action statistics keep them)."""
    merged = None
    for rows in episodes:
        x = np.asarray(rows).astype("float32")
        mean = x.mean(axis=0, keepdims=True)
        one = {"n": x.shape[0], "mean": mean,
               "sqdiff": ((x - mean) ** 2).sum(axis=0, keepdims=True),
               "min": x.min(axis=0, keepdims=True), "max": x.max(axis=0, keepdims=True)}
        if merged is None:
            merged = one
            continue
        n_a, avg_a, m2_a = merged["n"], merged["mean"], merged["sqdiff"]
        n_b, avg_b, m2_b = one["n"], one["mean"], one["sqdiff"]
        n = n_a + n_b
        delta = avg_b - avg_a
        merged = {"n": n, "mean": (n_a * avg_a + n_b * avg_b) / n,
                  "sqdiff": m2_a + m2_b + (delta ** 2) * (n_a * n_b) / n,
                  "min": np.minimum(merged["min"], one["min"]),
                  "max": np.maximum(merged["max"], one["max"])}
    if merged is None:
        raise ValueError("robomimic_stats: expected at least one demo")
    return merged


def robomimic(mode: str, st: dict) -> tuple[str, np.ndarray, np.ndarray]:
    """("affine", offset, scale) of robomimic's action normalization "min_max" / "gaussian" or
    its observation normalization "obs", from robomimic_stats (n, mean, sqdiff, min, max) or
    from given statistics (min / max or mean / std, used as they are)."""
    if mode in ("gaussian", "obs"):
        if "sqdiff" in st:  # robomimic's own: np.sqrt(sqdiff / n), float32
            offset = st["mean"].reshape(-1).astype(F32)
            std = np.sqrt(st["sqdiff"] / st["n"]).reshape(-1).astype(F32)
        else:
            offset = np.asarray(st["mean"], np.float64).reshape(-1).astype(F32)
            std = np.asarray(st["std"], np.float64).reshape(-1).astype(F32)
        if mode == "obs":
            return "affine", offset, (std + F32(1e-3)).astype(F32)
        std[std < F32(1e-6)] = F32(1.0)
        return "affine", offset, std
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
    else:  # pragma: no cover - the dataset checks the mode name
        raise ValueError(f"mode: expected 'min_max', 'gaussian' or 'obs', got {mode!r}")
    return "affine", offset, scale
