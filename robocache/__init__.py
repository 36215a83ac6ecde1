"""RoboCache: robot-learning datasets resident in GPU memory, batches built by CUDA kernels.

`import robocache` is cheap: it imports NumPy only. Torch, CuPy and the CUDA driver are touched
on first use of something that needs them.
"""

from __future__ import annotations

from importlib.util import find_spec as _find_spec

from ._lazy import lazy_getattr as _lazy_getattr
from ._version import __api_version__ as __api_version__
from ._version import __build_date__ as __build_date__
from ._version import __git_commit__ as __git_commit__
from ._version import __version__ as __version__

# public name -> module that defines it (imported on first attribute access)
_LAZY = {
    "resample": "robocache.ops.resample",
    "fuse": "robocache.ops.resample",
    "crop_resize_normalize": "robocache.ops.images",
    "ImageTransform": "robocache.ops.images",
    "voxelize": "robocache.ops.voxel",
    "points_to_voxel_coords": "robocache.ops.voxel",
    "print_installation_info": "robocache.info",
    "installation_info": "robocache.info",
    "cuda_available": "robocache._runtime",
    "RoboCacheError": "robocache._errors",
    "KernelCompileError": "robocache._errors",
    "BackendUnavailableError": "robocache._errors",
    "DeviceMemoryError": "robocache._errors",
    "DatasetFormatError": "robocache._errors",
    "TrajectoryStore": "robocache.store",
    "TrajectoryDataset": "robocache.dataset",
    "DataLoader": "robocache.loader",
}

# without torch, `from robocache import *` (and dir()) leave out what needs it; accessing one
# of these names says which extra installs torch
_NEEDS_TORCH = ("TrajectoryDataset", "DataLoader")
_HAVE_TORCH = _find_spec("torch") is not None
__all__ = sorted(["__version__", "__api_version__", "__build_date__", "__git_commit__",
                  *(n for n in _LAZY if _HAVE_TORCH or n not in _NEEDS_TORCH)])


__getattr__ = _lazy_getattr(__name__, _LAZY, globals())


def __dir__():
    return __all__
