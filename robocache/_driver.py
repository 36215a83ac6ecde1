"""Kernel launches straight through the CUDA driver (cuLaunchKernel via ctypes).

CuPy's Function call builds a parameter object per argument on every launch; for the small
kernels of the hot paths that is most of the host time of a launch. A `DriverKernel` packs the
arguments of a kernel with one precompiled `struct.Struct` into a parameter buffer made once
(the layout is fixed by the kernel's signature, i.e. its name with template arguments, and is
taken from the first call's NumPy scalars), and hands the driver a pointer array into that
buffer. The driver copies parameter values at launch, so the buffer is reused at once (a lock
keeps two threads from packing into it together).

Everything else stays CuPy's: compilation and the module (the CUfunction comes from CuPy's
Function.ptr), the device and its context. When libcuda cannot be loaded here, `load()` answers
None and the runtime keeps CuPy's launch path; ROBOCACHE_LAUNCH=cupy asks for that path always.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
import threading

import numpy as np

from ._errors import RoboCacheError

CUDA_ERROR_INVALID_CONTEXT = 201
_LIBS = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
_FORMATS = {  # NumPy scalar kind + size -> struct code (little-endian, no implicit padding)
    ("i", 1): "b", ("i", 2): "h", ("i", 4): "i", ("i", 8): "q",
    ("u", 1): "B", ("u", 2): "H", ("u", 4): "I", ("u", 8): "Q",
    ("f", 2): "e", ("f", 4): "f", ("f", 8): "d", ("b", 1): "?",
}
_loaded: list = []  # [driver] once loaded, [None] where it cannot be


class LaunchError(RoboCacheError):
    """cuLaunchKernel refused a launch; the message names the kernel and CUDA's error."""


class Driver:
    """The two entry points of libcuda used here, with their ctypes signatures."""

    def __init__(self, lib):
        self.launch = lib.cuLaunchKernel
        self.launch.restype = ctypes.c_int
        self.launch.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
        self._error_name = lib.cuGetErrorName
        self._error_name.restype = ctypes.c_int
        self._error_name.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]

    def error_name(self, code: int) -> str:
        name = ctypes.c_char_p()
        if self._error_name(code, ctypes.byref(name)) != 0 or not name.value:
            return f"CUDA error {code}"
        return f"{name.value.decode()} ({code})"


def load() -> Driver | None:
    """The driver, or None where libcuda is missing or ROBOCACHE_LAUNCH=cupy."""
    if not _loaded:
        drv = None
        if os.environ.get("ROBOCACHE_LAUNCH", "").lower() != "cupy":
            for name in _LIBS:
                try:
                    drv = Driver(ctypes.CDLL(name))
                    break
                except (OSError, AttributeError):
                    continue
        _loaded.append(drv)
    return _loaded[0]


def _layout(args: tuple) -> tuple[struct.Struct, tuple[int, ...], tuple[int, ...]]:
    """(packer, byte offset of each argument, sizes of the struct arguments or 0): each argument
    at its type's alignment, as a C compiler lays out consecutive kernel parameters."""
    fmt, offsets, voids, off = ["<"], [], [], 0
    for k, a in enumerate(args):
        if not isinstance(a, np.generic):
            raise TypeError(f"kernel argument {k}: expected a NumPy scalar, got {type(a).__name__}")
        dt = a.dtype
        pad = -off % dt.alignment
        if pad:
            fmt.append(f"{pad}x")
        off += pad
        offsets.append(off)
        if dt.kind == "V":
            fmt.append(f"{dt.itemsize}s")
            voids.append(dt.itemsize)
        else:
            code = _FORMATS.get((dt.kind, dt.itemsize))
            if code is None:
                raise TypeError(f"kernel argument {k}: no kernel parameter type for {dt}")
            fmt.append(code)
            voids.append(0)
        off += dt.itemsize
    return struct.Struct("".join(fmt)), tuple(offsets), tuple(voids)


class DriverKernel:
    """One kernel (a CUfunction) launched with cuLaunchKernel; see the module docstring."""

    def __init__(self, driver: Driver, function_ptr: int, name: str):
        self.driver = driver
        self.function = ctypes.c_void_p(int(function_ptr))
        self.name = name
        self.packer = None
        self._lock = threading.Lock()

    def _prepare(self, args: tuple) -> None:
        self.packer, offsets, self.void_sizes = _layout(args)
        self.void_at = tuple(k for k, n in enumerate(self.void_sizes) if n)
        self.buffer = ctypes.create_string_buffer(max(self.packer.size, 1))
        base = ctypes.addressof(self.buffer)
        self.pointers = (ctypes.c_void_p * max(len(offsets), 1))(*(base + o for o in offsets))
        self.nargs = len(args)

    def pack(self, args: tuple) -> None:
        """Write `args` into the parameter buffer (the caller holds the lock)."""
        if self.packer is None:
            self._prepare(args)
        if len(args) != self.nargs:
            raise TypeError(f"kernel {self.name}: expected {self.nargs} arguments, got "
                            f"{len(args)}")
        if self.void_at:
            args = list(args)
            for k in self.void_at:
                a = args[k]
                if not isinstance(a, np.void) or a.dtype.itemsize != self.void_sizes[k]:
                    raise TypeError(f"kernel {self.name}: argument {k} must be a struct of "
                                    f"{self.void_sizes[k]} bytes, got {a!r:.60}")
                args[k] = a.tobytes()
        try:
            self.packer.pack_into(self.buffer, 0, *args)
        except struct.error as e:
            raise TypeError(f"kernel {self.name}: an argument does not fit its parameter: "
                            f"{e}") from None

    def __call__(self, grid: tuple, block: tuple, args: tuple, shared_mem: int,
                 stream: int) -> None:
        gx, gy, gz = (*grid, 1, 1)[:3]
        bx, by, bz = (*block, 1, 1)[:3]
        with self._lock:
            self.pack(args)
            err = self.driver.launch(self.function, gx, gy, gz, bx, by, bz, shared_mem, stream,
                                     self.pointers, None)
            if err == CUDA_ERROR_INVALID_CONTEXT:  # a thread where no context is current yet
                _make_context_current()
                err = self.driver.launch(self.function, gx, gy, gz, bx, by, bz, shared_mem,
                                         stream, self.pointers, None)
        if err:
            raise LaunchError(f"launch of {self.name} (grid {tuple(grid)}, block "
                              f"{tuple(block)}) failed: {self.driver.error_name(err)}")


def _make_context_current() -> None:
    """Make the current device's primary context current in this thread (the runtime API
    does it on its first call that needs a context)."""
    import cupy

    cupy.cuda.runtime.free(0)
