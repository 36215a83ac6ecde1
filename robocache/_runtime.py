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

from . import _array, _deps
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
        # headers are always looked up in cuda_src/ (also for test kernels kept elsewhere)
        header = (CUDA_SRC / m.group(1)).resolve()
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

_functions: dict[tuple[KernelModule, str, int], object] = {}
_lock = threading.Lock()


def get_function(module: KernelModule, name: str, device_id: int):
    """The compiled kernel `name` (one of module.name_expressions) for one device.

    Each template instance is compiled on its own (one RawModule per instance and device), so
    first use compiles only what is used (~0.2 s cold, a disk-cache hit afterwards) instead of
    every instance of the file.
    """
    key = (module, name, device_id)
    fn = _functions.get(key)
    if fn is not None:
        return fn
    if name not in module.name_expressions:
        raise KeyError(f"{name!r} is not among the name expressions of {module.source}")
    import cupy

    with _lock:
        fn = _functions.get(key)
        if fn is None:
            try:
                with cupy.cuda.Device(device_id):
                    mod = cupy.RawModule(code=module.code(), options=module.options,
                                         name_expressions=(name,))
                    fn = mod.get_function(name)
                    getattr(fn, "kernel", None)  # compile / load for this device now
            except cupy.cuda.compiler.CompileException as exc:
                # nothing is cached in memory for a failed compile; CuPy writes no cache entry
                raise KernelCompileError(
                    f"NVRTC failed to compile {name} from {module.source}:\n{exc}") from None
            _functions[key] = fn
    return fn


# The launch path. Per launch it costs a few dict lookups on top of CuPy's own call: kernel
# handles are cached per (module, name, device); torch's current stream is read as a raw handle
# (no torch.cuda.Stream object) and mapped to a cached CuPy stream passed straight to the
# launch (no stream context manager); the device context is entered only when the current
# device is another one.

# (source, name, device) -> (module, handle): strings hash once, a KernelModule per call would not
_handles: dict[tuple[str, str, int], tuple[KernelModule, object]] = {}
_streams: dict[tuple[int, int], object] = {}
_MAX_STREAMS = 64  # cached CuPy wrappers of torch streams (a program rarely has more)
_cupy_fns: dict[str, object] = {}  # CuPy callables looked up once (see _bind)
_torch_stream_fn: list = []  # torch's raw current-stream query, looked up once


def _bind() -> dict:
    """CuPy's getDevice, Device and get_current_stream, looked up once."""
    if not _cupy_fns:
        import cupy

        _cupy_fns["get_device"] = cupy.cuda.runtime.getDevice
        _cupy_fns["Device"] = cupy.cuda.Device
        _cupy_fns["current_stream"] = cupy.cuda.get_current_stream
        _cupy_fns["memset_async"] = cupy.cuda.runtime.memsetAsync
    return _cupy_fns


def _torch_raw_stream(device_id: int) -> int:
    """The cudaStream_t of torch's current stream on `device_id`, as an int (torch's private
    query when it exists, ~0.1 us, else through torch.cuda.current_stream)."""
    if not _torch_stream_fn:
        import torch

        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        _torch_stream_fn.append(raw if raw is not None else (
            lambda dev: torch.cuda.current_stream(dev).cuda_stream))
    return int(_torch_stream_fn[0](device_id))


def _cupy_stream_for_torch(device_id: int):
    """A CuPy stream for torch's current stream on `device_id`, cached by its raw handle."""
    key = (device_id, _torch_raw_stream(device_id))
    s = _streams.get(key)
    if s is None:
        import cupy
        import torch

        if len(_streams) >= _MAX_STREAMS:
            _streams.clear()
        s = _streams[key] = cupy.cuda.Stream.from_external(torch.cuda.current_stream(device_id))
    return s


def stream_key(like) -> int:
    """An int naming the stream a launch with `like` runs on now (torch's current stream for
    torch CUDA tensors, CuPy's for CuPy arrays); 0 for host arrays. Output pools compare it to
    know when to stop reusing memory allocated for another stream."""
    return stream_query(like)()


def stream_query(like):
    """A function of no argument returning stream_key(like), bound once (hot paths)."""
    lib = _array.library(like)
    if lib == "torch" and like.is_cuda:
        dev = like.get_device()
        _torch_raw_stream(dev)  # binds torch's query
        return functools.partial(_torch_stream_fn[0], dev)
    if lib == "cupy":
        current = _bind()["current_stream"]
        return lambda: current().ptr
    return _no_stream


def _no_stream() -> int:
    return 0


def _handle(module: KernelModule, name: str, device_id: int):
    """The low-level CuPy function of `name` on one device: callable as
    f(grid, block, args, shared_mem, stream) (stream None = CuPy's current stream)."""
    key = (module.source, name, device_id)
    hit = _handles.get(key)
    if hit is not None and hit[0] == module:
        return hit[1]
    raw = get_function(module, name, device_id)
    with _bind()["Device"](device_id):
        fn = getattr(raw, "kernel", None)  # cupy.cuda.function.Function for this device
    if fn is None:  # pragma: no cover - a CuPy without RawKernel.kernel
        def fn(grid, block, args, shared_mem, stream, _raw=raw):
            _raw(grid, block, args, shared_mem=shared_mem, stream=stream)
    _handles[key] = (module, fn)
    return fn


def _cupy_launch(module: KernelModule, name: str, grid, block, args, like, shared_mem: int):
    fast = _cupy_fns if _cupy_fns else _bind()
    if _array.library(like) == "torch":
        dev = like.get_device()
        stream = _cupy_stream_for_torch(dev)
    else:  # CuPy: its current stream
        dev = like.device.id
        stream = None
    hit = _handles.get((module.source, name, dev))
    fn = hit[1] if hit is not None and hit[0] is module else _handle(module, name, dev)
    if fast["get_device"]() == dev:
        fn(grid, block, args, shared_mem, stream)
    else:
        with fast["Device"](dev):
            fn(grid, block, args, shared_mem, stream)


# Tests replace this with a CPU emulator of the kernels (tests/emulator).
_LAUNCHER = _cupy_launch


def zero_device(x) -> None:
    """Set the contiguous device array `x` to 0 with one cudaMemsetAsync on the stream a launch
    with like=x uses (torch's current stream for torch tensors, CuPy's for CuPy arrays). About a
    microsecond of host time where a torch op (x.zero_()) costs several; falls back to the
    library's own zeroing when `x` lives on another device than the current one."""
    fast = _cupy_fns if _cupy_fns else _bind()
    if _array.library(x) == "torch":
        dev = x.get_device()
        nbytes = x.numel() * x.element_size()
        if fast["get_device"]() != dev or not x.is_contiguous():
            x.zero_()
        elif nbytes:
            fast["memset_async"](x.data_ptr(), 0, nbytes, _torch_raw_stream(dev))
        return
    if fast["get_device"]() != x.device.id or not x.flags.c_contiguous:
        with fast["Device"](x.device.id):  # CuPy's own fill, on x's device
            x.fill(0)
    elif x.nbytes:
        fast["memset_async"](x.data.ptr, 0, x.nbytes, fast["current_stream"]().ptr)


def launch(module: KernelModule, name: str, grid: tuple[int, ...], block: tuple[int, ...],
           args: tuple, *, like, shared_mem: int = 0) -> None:
    """Launch kernel `name` of `module` on the device and stream of array `like`.

    Every argument must already be an exact NumPy scalar type (np.int32, np.float32, np.uint64
    for pointers from `_array.data_ptr`, or a structured np.void): CuPy checks nothing.
    """
    for a in args:
        if not isinstance(a, np.generic):
            raise TypeError(f"kernel {name}: argument {a!r} is not a NumPy scalar")
    if min(grid) <= 0:
        return  # empty work
    _LAUNCHER(module, name, tuple(grid), tuple(block), tuple(args), like, int(shared_mem))


def launch_prepared(module: KernelModule, name: str, grid: tuple, block: tuple, args: tuple,
                    like, shared_mem: int = 0) -> None:
    """`launch` for internal hot paths whose arguments were built once with exact types: grid and
    block are tuples of ints >= 1, args a tuple of NumPy scalars. Nothing is checked."""
    _LAUNCHER(module, name, grid, block, args, like, shared_mem)


def launch_block(module: KernelModule, name: str, grid: tuple, block: tuple, slot,
                 like) -> None:
    """launch_prepared for a kernel whose one argument is an ArgBlock struct (`slot`: the
    calling thread's _argblock.ArgSlot, already packed). Through cuLaunchKernel (cuda-python's
    driver bindings) with the slot's prepared parameter pointer when those bindings are
    installed, skipping CuPy's per-argument conversion (1-3 us less per call on an H200,
    benchmarks/RESULTS.md); through CuPy otherwise.
    ROBOCACHE_LAUNCHER=cupy or =driver forces one. Tests' launchers (emulator, no-op) get the
    struct as usual."""
    use_driver = _USE_DRIVER
    if use_driver is None:
        use_driver = _choose_launcher()
    if use_driver and _LAUNCHER is _cupy_launch:
        _driver_launch(module, name, grid, block, slot, like)
    else:
        _LAUNCHER(module, name, grid, block, (slot.view,), like, 0)


# ---------------------------------------------------------------------------------------------
# Launches through cuda-python's driver bindings (the default where they are installed)

LAUNCHER_CHOICES = ("auto", "driver", "cupy")
_launcher_env = os.environ.get("ROBOCACHE_LAUNCHER", "auto") or "auto"
# True: cuLaunchKernel; False: CuPy; None: not decided yet ("auto": on the first launch)
_USE_DRIVER: bool | None = {"driver": True, "cupy": False}.get(_launcher_env)
_driver_api: list = []  # [cuLaunchKernel, CUfunction], bound on first use
_driver_functions: dict = {}  # (source, name, device) -> (module, CUfunction)
_DIM_PAD = ((1, 1, 1), (1, 1), (1,), ())


def _choose_launcher() -> bool:
    """Decide "auto" once: the driver launcher when cuda-python's driver bindings import, CuPy's
    otherwise. An unknown ROBOCACHE_LAUNCHER value is an error, named here."""
    global _USE_DRIVER
    if _launcher_env not in LAUNCHER_CHOICES:
        raise ValueError(f"ROBOCACHE_LAUNCHER: expected one of {', '.join(LAUNCHER_CHOICES)}, "
                         f"got {_launcher_env!r}")
    try:
        from cuda.bindings import driver  # noqa: F401
    except ImportError:
        _USE_DRIVER = False
    else:
        _USE_DRIVER = True
    return _USE_DRIVER


def launcher_name() -> str:
    """"driver" or "cupy": the launcher the one-struct hot paths use here (info, benchmarks)."""
    use_driver = _USE_DRIVER
    if use_driver is None:
        use_driver = _choose_launcher()
    return "driver" if use_driver else "cupy"


_CUDA_ERROR_INVALID_CONTEXT = 201


def _driver_launch(module: KernelModule, name: str, grid: tuple, block: tuple, slot,
                   like) -> None:
    """cuLaunchKernel(kernel, grid, block, 0 bytes of dynamic shared memory, the stream a CuPy
    launch would use, kernelParams = slot.params): the kernel is compiled and loaded by CuPy as
    usual, and its handle reused. A thread with no current CUDA context yet (the driver API does
    not make one current, the runtime's calls do) is launched through CuPy instead."""
    if not _driver_api:
        from cuda.bindings import driver

        _driver_api.extend((driver.cuLaunchKernel, driver.CUfunction))
    fast = _cupy_fns if _cupy_fns else _bind()
    if _array.library(like) == "torch":
        dev = like.get_device()
        stream = _torch_raw_stream(dev)
    else:
        dev = like.device.id
        stream = fast["current_stream"]().ptr
    key = (module.source, name, dev)
    hit = _driver_functions.get(key)
    if hit is not None and hit[0] is module:
        fn = hit[1]
    else:  # first launch, or another build of the same source (other options)
        fn = _driver_api[1](int(_handle(module, name, dev).ptr))
        _driver_functions[key] = (module, fn)
    g = grid + _DIM_PAD[len(grid)]
    b = block + _DIM_PAD[len(block)]
    if fast["get_device"]() == dev:
        err = _driver_api[0](fn, *g, *b, 0, stream, slot.params, 0)[0]
    else:
        with fast["Device"](dev):
            err = _driver_api[0](fn, *g, *b, 0, stream, slot.params, 0)[0]
    if err == _CUDA_ERROR_INVALID_CONTEXT:
        _cupy_launch(module, name, grid, block, (slot.view,), like, 0)
    elif err:
        raise RuntimeError(f"cuLaunchKernel of {name} failed: {err!r}")


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
    cubin: bytes = b""  # with keep_cubin=True


def nvrtc_version() -> str:
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        return f"unavailable (install robocache[{_deps.compile_extra()}])"
    err, major, minor = nvrtc.nvrtcVersion()
    return f"{major}.{minor}" if int(err) == 0 else f"error {err}"


def compile_for_arch(module: KernelModule, arch: str, *, verbose_ptxas: bool = False,
                     keep_cubin: bool = False) -> CompileResult:
    """Compile `module` to a cubin for `arch` with NVRTC, with no GPU or driver needed.

    The options mirror CuPy's (ours plus -ftz=true), so what passes here passes at run time.
    `keep_cubin` returns the cubin's bytes too (tools/sass_loops.py disassembles them).
    """
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise BackendUnavailableError(
            f"compile-only mode needs the NVRTC bindings: pip install "
            f"'robocache[{_deps.compile_extra()}]'"
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
        # a buffer NVRTC may write: never a bytes object (b" " * 1, the size of an empty log, is
        # CPython's shared one-byte b" ", which the NUL written into it would corrupt for the
        # whole process)
        log = bytearray(log_size)
        check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        log_text = bytes(log).decode(errors="replace").rstrip("\x00 \n")
        err = status[0] if isinstance(status, tuple) else status
        if int(err) != 0:
            return CompileResult(module.source, arch, False, log_text)
        lowered = {}
        for name in module.name_expressions:
            (low,) = check(nvrtc.nvrtcGetLoweredName(prog, name.encode()), "nvrtcGetLoweredName")
            lowered[name] = low.decode() if isinstance(low, bytes) else str(low)
        (size,) = check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = b""
        if keep_cubin:
            buf = bytearray(int(size))
            check(nvrtc.nvrtcGetCUBIN(prog, buf), "nvrtcGetCUBIN")
            cubin = bytes(buf)
        return CompileResult(module.source, arch, True, log_text, int(size), lowered, cubin)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
