"""Kernel runtime: find a .cu file, compile it once per (source, options, device), launch it.

Sources live in robocache/cuda_src/. `KernelModule.code()` inlines the project's own
``#include "x.cuh"`` headers (so the source text, and with it CuPy's on-disk cache key, changes
whenever a header does) and writes ``#line`` directives so NVRTC errors name the real file and
line. Modules are compiled by ``cupy.RawModule`` with ``name_expressions`` for template
instances; CuPy caches the binary on disk keyed by source, options and compiler, and we keep one
RawModule per (module, device) in memory.

`compile_for_arch` compiles the same text with the NVRTC bindings directly, which needs no GPU
and no driver: that is the CI's compile check for every target architecture.

Launches run on the caller's stream: CuPy's current stream for CuPy arrays, torch's current
stream for torch tensors.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import _array
from ._errors import BackendUnavailableError, KernelCompileError

CUDA_SRC = Path(__file__).resolve().parent / "cuda_src"
TARGET_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120")
BASE_OPTIONS = ("-std=c++17",)
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def _inline(path: Path, seen: set[str]) -> list[str]:
    out = [f'#line 1 "{path.name}"']
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        m = _INCLUDE.match(line)
        if m is None:
            out.append(line)
            continue
        header = (path.parent / m.group(1)).resolve()
        if header.parent != CUDA_SRC or not header.is_file():
            raise KernelCompileError(f"{path.name}:{lineno}: include {m.group(1)!r} is not a "
                                     f"file of robocache/cuda_src")
        if header.name not in seen:  # every header acts as if it had #pragma once
            seen.add(header.name)
            out.extend(_inline(header, seen))
        out.append(f'#line {lineno + 1} "{path.name}"')
    return out


@dataclass(frozen=True)
class KernelModule:
    """One .cu file and the kernel names (template instances included) taken from it."""

    source: str
    name_expressions: tuple[str, ...]
    options: tuple[str, ...] = field(default=BASE_OPTIONS)

    def code(self) -> str:
        return _code_of(self.source)

    def path(self) -> Path:
        return CUDA_SRC / self.source


@functools.cache
def _code_of(source: str) -> str:
    path = CUDA_SRC / source
    if not path.is_file():
        raise KernelCompileError(f"kernel source {source!r} not found in {CUDA_SRC}")
    return "\n".join(_inline(path, set())) + "\n"


# ---------------------------------------------------------------------------------------------
# Is the CUDA backend usable here?


@functools.lru_cache(maxsize=1)
def cuda_status() -> tuple[bool, str]:
    """(usable, reason). Imports CuPy and asks for a device; never called at import time."""
    if os.environ.get("ROBOCACHE_DISABLE_CUDA", "") not in ("", "0"):
        return False, "disabled by ROBOCACHE_DISABLE_CUDA"
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        return False, f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, f"no usable CUDA driver/device ({exc})"
    if count < 1:
        return False, "no CUDA device"
    return True, f"{count} CUDA device(s)"


def cuda_available() -> bool:
    return cuda_status()[0]


def require_cuda() -> None:
    ok, why = cuda_status()
    if not ok:
        raise BackendUnavailableError(f"the CUDA backend is not usable here: {why}")


# ---------------------------------------------------------------------------------------------
# Compile and launch through CuPy

_modules: dict[tuple[KernelModule, int], object] = {}
_functions: dict[tuple[KernelModule, str, int], object] = {}
_lock = threading.Lock()


def _raw_module(module: KernelModule, device_id: int):
    key = (module, device_id)
    mod = _modules.get(key)
    if mod is None:
        import cupy

        with _lock:
            mod = _modules.get(key)
            if mod is None:
                with cupy.cuda.Device(device_id):
                    mod = cupy.RawModule(code=module.code(), options=module.options,
                                         name_expressions=module.name_expressions)
                _modules[key] = mod
    return mod


def get_function(module: KernelModule, name: str, device_id: int):
    """The compiled kernel `name` (one of module.name_expressions) for one device."""
    key = (module, name, device_id)
    fn = _functions.get(key)
    if fn is not None:
        return fn
    if name not in module.name_expressions:
        raise KeyError(f"{name!r} is not among the name expressions of {module.source}")
    import cupy

    mod = _raw_module(module, device_id)
    try:
        with cupy.cuda.Device(device_id):
            fn = mod.get_function(name)
    except cupy.cuda.compiler.CompileException as exc:
        with _lock:  # a failed compile must not stay cached as a half-built module
            _modules.pop((module, device_id), None)
        raise KernelCompileError(f"NVRTC failed to compile {module.source}:\n{exc}") from None
    _functions[key] = fn
    return fn


_streams: dict[tuple[int, int], object] = {}


def _cupy_stream_for_torch(device_id: int):
    import cupy
    import torch

    ts = torch.cuda.current_stream(device_id)
    key = (device_id, ts.cuda_stream)
    s = _streams.get(key)
    if s is None:
        s = cupy.cuda.Stream.from_external(ts)
        _streams[key] = s
    return s


def _cupy_launch(module: KernelModule, name: str, grid, block, args, like, shared_mem: int):
    import cupy

    dev = _array.device_id(like)
    fn = get_function(module, name, dev)
    with cupy.cuda.Device(dev):
        if _array.library(like) == "torch":
            with _cupy_stream_for_torch(dev):
                fn(grid, block, args, shared_mem=shared_mem)
        else:
            fn(grid, block, args, shared_mem=shared_mem)


# Tests replace this with a CPU emulator of the kernels (tests/emulator).
_LAUNCHER = _cupy_launch


def launch(module: KernelModule, name: str, grid: tuple[int, ...], block: tuple[int, ...],
           args: tuple, *, like, shared_mem: int = 0) -> None:
    """Launch kernel `name` of `module` on the device and stream of array `like`.

    Every argument must already be an exact NumPy scalar type (np.int32, np.float32, np.uint64
    for pointers from `_array.data_ptr`, or a structured np.void): CuPy checks nothing.
    """
    for a in args:
        if not isinstance(a, (np.generic,)):
            raise TypeError(f"kernel {name}: argument {a!r} is not a NumPy scalar")
    if any(g <= 0 for g in grid):
        return  # empty work
    _LAUNCHER(module, name, tuple(grid), tuple(block), tuple(args), like, int(shared_mem))


# ---------------------------------------------------------------------------------------------
# Compile without a GPU (NVRTC bindings)


@dataclass
class CompileResult:
    source: str
    arch: str
    ok: bool
    log: str
    cubin_bytes: int = 0
    lowered_names: dict[str, str] = field(default_factory=dict)


def nvrtc_version() -> str:
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        return "unavailable (install robocache[compile])"
    err, major, minor = nvrtc.nvrtcVersion()
    return f"{major}.{minor}" if int(err) == 0 else f"error {err}"


def compile_for_arch(module: KernelModule, arch: str, *, verbose_ptxas: bool = False
                     ) -> CompileResult:
    """Compile `module` to a cubin for `arch` with NVRTC, with no GPU or driver needed.

    The options mirror CuPy's (ours plus -ftz=true), so what passes here passes at run time.
    """
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise BackendUnavailableError(
            "compile-only mode needs the NVRTC bindings: pip install 'robocache[compile]'"
        ) from exc

    def check(result, what):
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            raise KernelCompileError(f"{module.source} ({arch}): {what} failed with {err}")
        return result[1:] if isinstance(result, tuple) else ()

    code = module.code().encode()
    (prog,) = check(nvrtc.nvrtcCreateProgram(code, module.source.encode(), 0, [], []),
                    "nvrtcCreateProgram")
    try:
        for name in module.name_expressions:
            check(nvrtc.nvrtcAddNameExpression(prog, name.encode()), "nvrtcAddNameExpression")
        opts = [*module.options, "-ftz=true", f"--gpu-architecture={arch}"]
        if verbose_ptxas:
            opts.append("--ptxas-options=-v")
        status = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        (log_size,) = check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        log = b" " * log_size
        check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        log_text = log.decode(errors="replace").rstrip("\x00 \n")
        err = status[0] if isinstance(status, tuple) else status
        if int(err) != 0:
            return CompileResult(module.source, arch, False, log_text)
        lowered = {}
        for name in module.name_expressions:
            (low,) = check(nvrtc.nvrtcGetLoweredName(prog, name.encode()), "nvrtcGetLoweredName")
            lowered[name] = low.decode() if isinstance(low, bytes) else str(low)
        (size,) = check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        return CompileResult(module.source, arch, True, log_text, int(size), lowered)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
