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
    image_keys:   the keys that hold camera frames (uint8 [N, H, W(, C)]); None: those that
                  look like them (default_image_keys)
    meta:         format-specific extras (tasks, robot type, source path...)
    """

    arrays: dict[str, np.ndarray]
    episode_ends: np.ndarray
    fps: float | None = None
    timestamps: np.ndarray | None = None
    stats: dict[str, dict[str, np.ndarray]] | None = None
    image_keys: tuple[str, ...] | None = None
    meta: dict = field(default_factory=dict)


def is_camera_frames(x) -> bool:
    """Whether array `x` can be a camera key: uint8 frames [N, H, W] or [N, H, W, C] with the C
    the image kernel takes (1, 3 or 4 channels, last)."""
    from .. import _array
    from ..ops.images import CHANNELS

    shape = tuple(x.shape)
    return _array.dtype_name(x) == "uint8" and (
        len(shape) == 3 or (len(shape) == 4 and shape[3] in CHANNELS))


def default_image_keys(arrays) -> tuple[str, ...]:
    """The keys of `arrays` that look like camera frames (is_camera_frames)."""
    return tuple(k for k, x in arrays.items() if is_camera_frames(x))


def check_image_key(key: str, x) -> None:
    """A key named as camera frames must be them (the image kernel reads uint8 bytes)."""
    from .. import _array

    if not is_camera_frames(x):
        raise TypeError(f"image_keys: expected camera frames, uint8 [N, H, W] or [N, H, W, C] "
                        f"with C in (1, 3, 4), got {key!r} "
                        f"of dtype {_array.dtype_name(x)} and shape {tuple(x.shape)} (keep it "
                        f"an ordinary key)")


def image_key_tuple(image_keys) -> tuple[str, ...] | None:
    """`image_keys` as given by a user: None (detect), one key name, or an iterable of names."""
    if image_keys is None:
        return None
    if isinstance(image_keys, str):
        return (image_keys,)
    try:
        return tuple(image_keys)
    except TypeError:
        raise TypeError(f"image_keys: expected None, a key name or a list of key names, got "
                        f"{type(image_keys).__name__}") from None
