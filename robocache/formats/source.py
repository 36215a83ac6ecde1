"""What every reader produces: host arrays of all frames plus the episode structure."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TrajectorySource:
    """Frames of every episode concatenated per key, as host (NumPy, possibly memory-mapped) arrays.

    arrays:       key -> [N, *feature] (uint8 camera frames are [N, H, W, C])
    episode_ends: int64 [E], cumulative frame counts (episode e holds [ends[e-1], ends[e]))
    fps:          frames per second, when the format knows it
    timestamps:   float64 [N] per-frame times in seconds within each episode, when known
    stats:        key -> {"mean", "std", "min", "max", "count", "q01", ...: arrays}, when shipped
    image_keys:   the keys that hold camera frames
    meta:         format-specific extras (tasks, robot type, source path...)
    """

    arrays: dict[str, np.ndarray]
    episode_ends: np.ndarray
    fps: float | None = None
    timestamps: np.ndarray | None = None
    stats: dict[str, dict[str, np.ndarray]] | None = None
    image_keys: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)
