"""Readers for the dataset formats people have. Each returns a `TrajectorySource`; the store
turns that into device arrays (`TrajectoryStore.from_source`).

  read_lerobot(root, keys=None, video_backend=None, tolerance_s=1e-4, progress=None)
  read_zarr(path, keys=None, progress=None)                 diffusion_policy ReplayBuffer
  read_robomimic(path, obs_keys=None, filter_key=None, progress=None)
  write_cache(directory, source, ...) / read_cache(directory, verify=True, progress=None)

The readers are imported on first use (they pull in pyarrow, PyAV, zarr or h5py).
"""

from __future__ import annotations

from .._errors import DatasetFormatError
from .._lazy import lazy_getattr as _lazy_getattr
from .source import TrajectorySource

_LAZY = {
    "read_lerobot": "robocache.formats.lerobot",
    "read_zarr": "robocache.formats.zarr",
    "read_robomimic": "robocache.formats.robomimic",
    "read_cache": "robocache.formats.cache",
    "write_cache": "robocache.formats.cache",
}

__all__ = ["DatasetFormatError", "TrajectorySource", *_LAZY]


__getattr__ = _lazy_getattr(__name__, _LAZY, globals())


def __dir__():
    return __all__
