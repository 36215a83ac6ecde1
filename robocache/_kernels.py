"""Every kernel module of RoboCache and the template instances taken from it.

One table: the ops look their modules up here, and `python -m robocache compile --check`
compiles every entry for every target architecture.
"""

from __future__ import annotations

from itertools import product

from ._runtime import KernelModule

FLOAT_C = ("float", "double", "rc_half", "rc_bf16")
TIME_C = ("float", "double")

RESAMPLE = KernelModule(
    "resample.cu",
    tuple(f"resample_kernel<{t}, {tt}, {v}>"
          for t, tt, v in product(FLOAT_C, TIME_C, ("false", "true")))
    + tuple(f"fuse_kernel<{t}, {tt}>" for t, tt in product(FLOAT_C, TIME_C)),
)

IMAGE_OUT_C = ("float", "rc_half", "rc_bf16", "unsigned char")
IMAGE_CHANNELS = (1, 3, 4)

IMAGES = KernelModule(
    "images.cu",
    tuple(f"crop_resize_kernel<{t}, {c}, {r}, {v}, {e}>"
          for t, c, r, v, e in product(IMAGE_OUT_C, IMAGE_CHANNELS, ("false", "true"), (1, 4),
                                       ("false", "true"))
          if not (e == "true" and t == "unsigned char")),  # exact plans have float outputs
)

POINT_C = ("float", "double")

VOXEL = KernelModule(
    "voxel.cu",
    tuple(f"voxel_scatter_kernel<{p}, {o}>" for p, o in product(POINT_C, ("false", "true")))
    + ("voxel_block_occupied_kernel", "voxel_scan_kernel", "voxel_emit_kernel"),
)

VOXEL_FEATURES = KernelModule(
    "voxel_features.cu",
    tuple(f"voxel_max_scatter_kernel<{p}, {t}>" for p, t in product(POINT_C, FLOAT_C))
    + tuple(f"voxel_mean_prep_kernel<{p}, {t}>" for p, t in product(POINT_C, FLOAT_C))
    + tuple(f"voxel_mean_{k}_kernel<{t}>" for k, t in product(("exponent", "accumulate"),
                                                                FLOAT_C))
    + ("voxel_max_finalize_kernel", "voxel_slots_kernel", "voxel_mean_finalize_kernel"),
)

WINDOWS = KernelModule("windows.cu", ("window_batch_kernel",))

ALL_MODULES: tuple[KernelModule, ...] = (RESAMPLE, WINDOWS, IMAGES, VOXEL, VOXEL_FEATURES)
