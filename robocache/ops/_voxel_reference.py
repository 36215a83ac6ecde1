"""A slow, independent oracle for rc.voxelize and rc.points_to_voxel_coords (tests, selftest).

It shares no code with ops/voxel.py: each point's voxel is found with np.floor per axis and
bounds compared as floats, and the reductions are np.add.at / np.maximum.at in float64.
"""

from __future__ import annotations

import numpy as np


def voxel_ids(points, grid_min, voxel_size, grid_size, batch_index=None, batch_size=None):
    """int64 [N]: linear voxel id per point, -1 where the point is dropped."""
    p = np.asarray(points, dtype=np.float64)
    lo = np.broadcast_to(np.asarray(grid_min, dtype=np.float64), (3,))
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))
    dims = np.broadcast_to(np.asarray(grid_size, dtype=np.int64), (3,))
    with np.errstate(invalid="ignore", over="ignore"):
        fl = np.floor((p - lo) / vs)
        ok = np.all((fl >= 0) & (fl <= dims - 1), axis=1)  # NaN compares False
    b = np.zeros(len(p), dtype=np.int64)
    if batch_index is not None:
        b = np.asarray(batch_index, dtype=np.int64)
        ok &= (b >= 0) & (b < batch_size)
    idx = np.zeros((len(p), 3), dtype=np.int64)
    idx[ok] = fl[ok].astype(np.int64)
    X, Y, Z = (int(d) for d in dims)
    vid = np.ravel_multi_index((b[ok], idx[ok, 0], idx[ok, 1], idx[ok, 2]),
                               (max(int(batch_size or 1), 1), X, Y, Z))
    out = np.full(len(p), -1, dtype=np.int64)
    out[ok] = vid
    return out


def voxelize(points, *, grid_min, voxel_size, grid_size, mode, features=None,
             batch_index=None, batch_size=None):
    """Dense grid as rc.voxelize documents it; mean in float64 (not rounded to float32)."""
    dims = tuple(int(d) for d in np.broadcast_to(np.asarray(grid_size), (3,)))
    B = 1 if batch_index is None else int(batch_size)
    lead = () if batch_index is None else (B,)
    vid = voxel_ids(points, grid_min, voxel_size, grid_size, batch_index, batch_size)
    cells = B * int(np.prod(dims))
    if mode in ("mean", "max"):
        f = np.asarray(points if features is None else features, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            vid = np.where(np.isfinite(f).all(axis=1), vid, -1)
    keep = vid >= 0
    count = np.zeros(cells, dtype=np.int64)
    np.add.at(count, vid[keep], 1)
    if mode == "count":
        return count.astype(np.int32).reshape(lead + dims)
    if mode == "occupancy":
        return (count > 0).astype(np.uint8).reshape(lead + dims)
    F = f.shape[1]
    if mode == "max":
        # float64 max, then rounded once to float32 (rounding is monotone)
        mx = np.full((cells, F), -np.inf)
        np.maximum.at(mx, vid[keep], f[keep])
        mx[count == 0] = 0.0
        return mx.astype(np.float32).reshape(lead + dims + (F,))
    total = np.zeros((cells, F))
    np.add.at(total, vid[keep], f[keep])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count[:, None] > 0, total / count[:, None], 0.0)
    return mean.reshape(lead + dims + (F,))


def voxel_coords(points, *, grid_min, voxel_size, grid_size, batch_index=None,
                 batch_size=None):
    """(coords [M, 3 or 4] int32 sorted by (b, x, y, z), counts [M] int32), by brute force."""
    vid = voxel_ids(points, grid_min, voxel_size, grid_size, batch_index, batch_size)
    dims = tuple(int(d) for d in np.broadcast_to(np.asarray(grid_size), (3,)))
    B = 1 if batch_index is None else int(batch_size)
    ids = sorted(set(vid[vid >= 0].tolist()))
    counts = np.array([int((vid == i).sum()) for i in ids], dtype=np.int32)
    rows = [np.unravel_index(i, (B, *dims)) for i in ids]
    coords = np.array(rows, dtype=np.int32).reshape(-1, 4)
    if batch_index is None:
        coords = coords[:, 1:]
    return coords, counts


def selftest_inputs(rng: np.random.Generator) -> dict:
    """A small cloud for `python -m robocache selftest`: random points inside and outside a
    8 x 4 x 6 grid of 0.25 x 0.5 x 0.2 voxels, points exactly on the lower and upper faces, and a
    NaN. Keyword arguments of rc.voxelize / voxelize above (mode bound by the caller)."""
    grid_min = (-1.0, -1.0, 0.0)
    voxel_size = (0.25, 0.5, 0.2)
    grid_size = (8, 4, 6)
    pts = rng.uniform(-1.3, 1.3, size=(300, 3))
    pts[:, 2] = rng.uniform(-0.1, 1.3, size=300)
    faces = np.array([[-1.0, -1.0, 0.0], [1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [-1.0, 0.999, 0.0],
                      [np.nan, 0.0, 0.5]])
    return {"points": np.concatenate([pts, faces]).astype(np.float32), "grid_min": grid_min,
            "voxel_size": voxel_size, "grid_size": grid_size}
