"""CPU emulator of RoboCache's CUDA kernels (test infrastructure; not part of the wheel).

`cpu_launch` has the signature of ``robocache._runtime._cupy_launch``: it compiles the module's
exact source with g++ (see build.py), checks the arguments against the kernel's parameter types,
and runs the grid on the CPU with NumPy arrays' host pointers standing in for device pointers.
`emulated()` routes ``robocache._runtime.launch`` to it, so an op's internal CUDA-path function
(e.g. ``robocache.ops.resample._resample_cuda``) runs unchanged on NumPy inputs. See README.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from dataclasses import dataclass

import numpy as np

from .build import (
    EmulatedModule,
    EmulatorError,
    SourceModule,
    compiler,
    compiler_available,
    load,
    needs_fibers,
)

__all__ = ["EmulatedModule", "EmulatorError", "Launch", "SourceModule", "compiler",
           "compiler_available", "cpu_launch", "emulated", "load", "needs_fibers"]

ORDERS = {"forward": 0, "reverse": 1, "shuffle": 2}
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_THREADS = 1024
MAX_DYNAMIC_SHARED = 48 * 1024  # without cudaFuncSetAttribute opt-in, which the runtime lacks


@dataclass(frozen=True)
class Launch:
    """One emulated launch, as recorded by `emulated()`."""

    source: str
    name: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int


@dataclass
class _Settings:
    order: str = os.environ.get("ROBOCACHE_EMU_ORDER", "forward") or "forward"
    seed: int = 0
    cooperative: bool | None = None   # None: as detected from the source
    record: list | None = None


_settings = _Settings()
_launch_lock = threading.Lock()   # one launch at a time: blocks share static __shared__ memory


def _dims(what: str, dims, limits) -> tuple[int, int, int]:
    dims = tuple(int(v) for v in dims)
    if not 1 <= len(dims) <= 3:
        raise ValueError(f"{what}: expected 1 to 3 dimensions, got {dims}")
    dims = dims + (1,) * (3 - len(dims))
    for axis, (v, hi) in enumerate(zip(dims, limits, strict=True)):
        if not 1 <= v <= hi:
            raise ValueError(f"{what}: expected dimension {axis} in [1, {hi}], got {dims}")
    return dims


_KIND_TEXT = {"p": "a pointer (np.uint64 from _array.data_ptr)", "b": "np.bool_",
              "i": "a signed integer", "u": "an unsigned integer", "f": "a floating-point number",
              "V": "a struct by value (np.void)"}


def _check_args(name: str, sig, args) -> None:
    if len(args) != len(sig):
        raise TypeError(f"kernel {name}: expected {len(sig)} arguments, got {len(args)}")
    for k, ((kind, size), a) in enumerate(zip(sig, args, strict=True)):
        if not isinstance(a, np.generic):
            raise TypeError(f"kernel {name}: argument {k}: expected a NumPy scalar, "
                            f"got {type(a).__name__}")
        ok = a.itemsize == size and {
            "p": isinstance(a, np.unsignedinteger),
            "b": isinstance(a, np.bool_),
            "i": isinstance(a, np.signedinteger),
            "u": isinstance(a, np.unsignedinteger),
            "f": isinstance(a, np.floating),
            "V": True,
        }[kind]
        if not ok:
            raise TypeError(f"kernel {name}: argument {k}: expected {_KIND_TEXT[kind]} of "
                            f"{size} bytes, got {type(a).__name__} ({a.itemsize} bytes)")


def cpu_launch(module, name: str, grid, block, args, like, shared_mem: int) -> None:
    """Run kernel `name` of `module` on the CPU (the signature of _runtime._cupy_launch).

    Pointer arguments must be host addresses (NumPy arrays' data pointers); `like` is unused.
    """
    del like
    grid3 = _dims(f"kernel {name}: grid", grid, MAX_GRID)
    block3 = _dims(f"kernel {name}: block", block, MAX_BLOCK)
    if block3[0] * block3[1] * block3[2] > MAX_THREADS:
        raise ValueError(f"kernel {name}: block: expected at most {MAX_THREADS} threads, "
                         f"got {block3}")
    if not 0 <= int(shared_mem) <= MAX_DYNAMIC_SHARED:
        raise ValueError(f"kernel {name}: shared_mem: expected 0 to {MAX_DYNAMIC_SHARED} bytes, "
                         f"got {shared_mem}")
    if name not in module.name_expressions:
        raise KeyError(f"{name!r} is not among the name expressions of {module.source}")
    order = ORDERS.get(_settings.order)
    if order is None:
        raise ValueError(f"emulator order: expected one of {list(ORDERS)}, "
                         f"got {_settings.order!r}")
    emu = load(module)
    _check_args(name, emu.signature(name), args)
    buffers = [ctypes.create_string_buffer(a.tobytes(), max(a.itemsize, 1)) for a in args]
    argv = (ctypes.c_void_p * max(len(args), 1))(*[ctypes.addressof(b) for b in buffers])
    cooperative = emu.cooperative if _settings.cooperative is None else _settings.cooperative
    opts = (ctypes.c_longlong * 3)(int(cooperative), order, int(_settings.seed))
    fn = emu.launcher(name)
    with _launch_lock:
        rc = fn((ctypes.c_uint * 3)(*grid3), (ctypes.c_uint * 3)(*block3),
                ctypes.c_ulonglong(int(shared_mem)), argv, opts)
        error = emu.last_error() if rc != 0 else ""
    if rc != 0:
        raise EmulatorError(f"kernel {name} of {module.source}: {error}")
    if _settings.record is not None:
        _settings.record.append(Launch(module.source, name, grid3, block3, int(shared_mem)))


@contextlib.contextmanager
def emulated(*, order: str | None = None, seed: int = 0, cooperative: bool | None = None):
    """Route robocache._runtime.launch to `cpu_launch` for the duration of the block.

    Yields the list of `Launch` records made inside it. `order` ("forward", "reverse",
    "shuffle") sets the order of blocks and threads (default: $ROBOCACHE_EMU_ORDER or forward);
    `cooperative=True` runs threads as fibers even where the source needs no barrier.
    """
    from robocache import _runtime

    global _settings
    saved_launcher, saved_settings = _runtime._LAUNCHER, _settings
    record: list[Launch] = []
    _settings = _Settings(order=order or saved_settings.order, seed=seed,
                          cooperative=cooperative, record=record)
    _runtime._LAUNCHER = cpu_launch
    try:
        yield record
    finally:
        _runtime._LAUNCHER = saved_launcher
        _settings = saved_settings
