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

WINDOWS = KernelModule("windows.cu", ("window_batch_kernel",))

ALL_MODULES: tuple[KernelModule, ...] = (RESAMPLE, WINDOWS)
