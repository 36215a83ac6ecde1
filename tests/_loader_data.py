"""The small CPU dataset the loader's pass and resume tests share, and the indices of an item."""

from __future__ import annotations

import numpy as np

import robocache as rc


def small_dataset(lens=(5, 1, 9, 3, 12, 2, 7)) -> rc.TrajectoryDataset:
    """39 windows over episodes of odd lengths (one of a single frame), offsets [-1, 0, 1]."""
    rng = np.random.default_rng(0)
    ends = np.cumsum(lens)
    st = rc.TrajectoryStore.from_arrays(
        {"a": rng.standard_normal((int(ends[-1]), 2)).astype(np.float32)},
        episode_ends=ends, device="cpu")
    return rc.TrajectoryDataset(st, delta_indices={"a": [-1, 0, 1]})


def indices_of(item) -> tuple | int:
    """The dataset indices of a batch (a tuple) or of a sample (an int)."""
    x = item["index"]
    return tuple(x.tolist()) if x.dim() else int(x)
