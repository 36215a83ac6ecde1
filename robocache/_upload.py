"""Host array -> device tensor, at close to PCIe speed, with one device allocation.

`to_device(array, "cuda")` first compares the bytes needed with the device's free memory
(raising DeviceMemoryError before anything is allocated), allocates the output tensor once, then
streams the array through two pinned staging buffers: while the copy engine moves chunk i from
one buffer to the device (non_blocking, on a side stream), host threads fill the other buffer
with chunk i+1 (for a memory-mapped array this is also where its pages are read in), so host
memcpy / page-in overlap the PCIe transfer. The side stream first waits for the caller's stream
(the output's memory may have been in use there) and is synchronised at the end, so the tensor
is ready on return. On the CPU (device None or "cpu") it is a no-op that returns the array.

`method="registered"` instead lets the copy engine read the array's own pages: chunk by chunk
they are page-locked in place (cudaHostRegister, read-only: a memory-mapped cache file's page
cache pages) and copied with no host memcpy; the next chunk is registered while the previous one
is copied, and each is unregistered once its copy is done. Where the driver refuses to register
(no read-only registration on this platform, a locked-memory limit) it falls back to the
staging buffers. Not the default until measured faster on a GPU (benchmarks/bench_load.py
times both).

`check_device_memory(needed, device, what)` is the same memory check, for callers (the store)
that upload many arrays and want to fail before the first.
"""

from __future__ import annotations

import mmap
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _array, _progress
from ._errors import DeviceMemoryError

DEFAULT_CHUNK_BYTES = 64 << 20
MIN_PARALLEL_BYTES = 4 << 20  # below this one thread fills a buffer
MAX_FILL_THREADS = 16
METHODS = ("staged", "registered")
REGISTERED_IN_FLIGHT = 2  # chunks page-locked at once by the registered method
_PAGE = mmap.PAGESIZE


def _cuda_device(device):
    """None for the host; a torch.device for a CUDA device; ValueError otherwise."""
    if device is None:
        return None
    if isinstance(device, str) and device == "cpu":
        return None
    import torch

    dev = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    if dev.type == "cpu":
        return None
    if dev.type != "cuda":
        raise ValueError(f"device: expected None, 'cpu' or a CUDA device, got {device!r}")
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def device_free_bytes(device) -> int:
    """Bytes a new allocation can use on `device`: the driver's free memory plus what torch's
    caching allocator holds but does not use."""
    import torch

    dev = _cuda_device(device)
    free, _total = torch.cuda.mem_get_info(dev)
    cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    return int(free) + max(0, int(cached))


def check_device_memory(needed: int, device, what: str = "the upload") -> None:
    """Raise DeviceMemoryError when `needed` bytes do not fit in `device`'s free memory."""
    if _cuda_device(device) is None:
        return
    free = device_free_bytes(device)
    if needed > free:
        raise DeviceMemoryError(what, needed, free)


def to_device(array: np.ndarray, device, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
              progress: bool | None = None, workers: int | None = None, what: str | None = None,
              method: str = "staged"):
    """Copy `array` to `device` as a torch tensor (same shape and dtype); on the CPU return
    `array` itself. A non-contiguous array is made contiguous on the host first. `method`:
    "staged" (pinned double buffer) or "registered" (the array's pages locked in place; see the
    module docstring)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"array: expected a NumPy array, got {type(array).__name__}")
    if not (isinstance(chunk_bytes, int) and chunk_bytes > 0):
        raise ValueError(f"chunk_bytes: expected a positive int, got {chunk_bytes!r}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    dev = _cuda_device(device)
    if dev is None:
        return array
    import torch

    name = array.dtype.name
    if name not in _array.ITEMSIZE:
        raise TypeError(f"array: dtype {array.dtype} has no torch equivalent")
    src = np.ascontiguousarray(array)
    nbytes = int(src.nbytes)
    check_device_memory(nbytes, dev, what or f"uploading a {name} array of shape {array.shape}")
    out = torch.empty(array.shape, dtype=_array.torch_dtype(name), device=dev)
    if nbytes == 0:
        return out
    src_bytes = src.reshape(-1).view(np.uint8)
    dst_bytes = out.view(-1).view(torch.uint8)
    if method == "registered":  # what the driver would not lock goes through the staging
        done = _to_device_registered(src_bytes, dst_bytes, dev, chunk_bytes, progress)
        if done == nbytes:
            return out
        src_bytes, dst_bytes, nbytes = src_bytes[done:], dst_bytes[done:], nbytes - done
    chunk = min(chunk_bytes, nbytes)
    staging = [torch.empty(chunk, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    staging_np = [s.numpy() for s in staging]
    stream = torch.cuda.Stream(device=dev)
    stream.wait_stream(torch.cuda.current_stream(dev))
    events = [torch.cuda.Event(), torch.cuda.Event()]

    def wait(k: int) -> None:
        events[k].synchronize()

    def submit(k: int, off: int, n: int) -> None:
        with torch.cuda.stream(stream):
            dst_bytes[off:off + n].copy_(staging[k][:n], non_blocking=True)
            events[k].record(stream)

    try:
        with _progress.bar(nbytes, "uploading", progress=progress) as bar:
            _pipeline(src_bytes, chunk, staging_np, wait, submit, bar, workers)
    finally:
        # also on an error (a failing read of a memory-mapped file, Ctrl-C): `out` belongs to
        # the caller's stream in torch's allocator, which would hand its memory out again while
        # copies queued on the side stream still write into it
        stream.synchronize()
    return out


def _pipeline(src: np.ndarray, chunk: int, staging: list[np.ndarray], wait, submit, bar,
              workers: int | None) -> None:
    """The double-buffered loop (device-agnostic, so it is tested on the host): fill buffer
    i % 2 with bytes [i*chunk, (i+1)*chunk) of `src` once its previous transfer is done, then
    submit it."""
    nbytes = len(src)
    workers = workers or min(MAX_FILL_THREADS, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(workers) if workers > 1 and chunk >= MIN_PARALLEL_BYTES else None
    used = [False, False]
    try:
        for i, off in enumerate(range(0, nbytes, chunk)):
            k = i % 2
            n = min(chunk, nbytes - off)
            if used[k]:
                wait(k)
            _fill(staging[k][:n], src[off:off + n], pool, workers)
            submit(k, off, n)
            used[k] = True
            bar.update(n)
    finally:
        if pool is not None:
            pool.shutdown()


def _fill(dst: np.ndarray, src: np.ndarray, pool, workers: int) -> None:
    """dst[:] = src, split over the pool's threads in whole pages."""
    if pool is None:
        np.copyto(dst, src)
        return
    step = -(-len(src) // workers)
    step = -(-step // _PAGE) * _PAGE  # whole pages per thread
    parts = [(a, min(len(src), a + step)) for a in range(0, len(src), step)]
    list(pool.map(lambda ab: np.copyto(dst[ab[0]:ab[1]], src[ab[0]:ab[1]]), parts))


# ---------------------------------------------------------------------------------------------
# method="registered": the copy engine reads the array's own pages


class RegistrationRefused(Exception):
    """The driver would not page-lock a range (the registered method falls back)."""


def page_spans(address: int, nbytes: int, chunk: int) -> list[tuple[int, int, int, int]]:
    """Cut the bytes [address, address + nbytes) into chunks for page-locking: (page_lo,
    page_hi, lo, hi) per chunk, where [page_lo, page_hi) is whole pages (registered together;
    the spans of two chunks never share a page, which the driver would refuse) and [lo, hi) the
    array bytes inside them. `chunk` is rounded down to whole pages (at least one)."""
    if nbytes <= 0:
        return []
    step = max(_PAGE, chunk - chunk % _PAGE)
    first = address - address % _PAGE
    end = address + nbytes
    last = -(-end // _PAGE) * _PAGE
    return [(p, min(p + step, last), max(p, address), min(p + step, end))
            for p in range(first, last, step)]


def registered_pipeline(address: int, nbytes: int, chunk: int, ops, bar) -> int:
    """Copy [address, address + nbytes) chunk by chunk through `ops` (device-agnostic, so it is
    tested on the host): ops.register(lo, n) page-locks (raising RegistrationRefused when the
    driver will not), ops.copy(offset, lo, n) queues the copy of n bytes at lo to the output's
    byte `offset` and returns a handle, ops.wait(handle) waits for it, ops.unregister(lo)
    unlocks. At most REGISTERED_IN_FLIGHT chunks are locked at once; each is unlocked once its
    copy is done, and every locked chunk is unlocked on any exit. Returns how many leading bytes
    were copied: nbytes, or fewer where a registration was refused (the caller copies the rest
    through the staging buffers)."""
    in_flight: deque = deque()
    done = nbytes

    def retire() -> None:
        handle, lo, n = in_flight.popleft()
        try:
            ops.wait(handle)
        finally:
            ops.unregister(lo)
        bar.update(n)

    try:
        for page_lo, page_hi, lo, hi in page_spans(address, nbytes, chunk):
            if len(in_flight) >= REGISTERED_IN_FLIGHT:
                retire()
            try:
                ops.register(page_lo, page_hi - page_lo)
            except RegistrationRefused:
                done = lo - address
                break
            try:
                handle = ops.copy(lo - address, lo, hi - lo)
            except BaseException:
                ops.unregister(page_lo)
                raise
            in_flight.append((handle, page_lo, hi - lo))
        while in_flight:
            retire()
        return done
    finally:
        while in_flight:  # an error: let the queued copies finish, then unlock
            try:
                retire()
            except Exception:  # the first error is the one to report
                pass


class _CudaRegisterOps:
    """registered_pipeline's operations on a CUDA device (CuPy's runtime bindings), copies on
    one side stream that first waits for the caller's stream."""

    READ_ONLY = 0x08  # cudaHostRegisterReadOnly: the device only reads the pages

    def __init__(self, dst, dev):
        import cupy
        import torch

        self.rt = cupy.cuda.runtime
        if not self.rt.deviceGetAttribute(self.rt.cudaDevAttrHostRegisterReadOnlySupported,
                                          dev.index):
            raise RegistrationRefused("read-only host registration is not supported here")
        self.cupy = cupy
        self.dst = int(dst.data_ptr())
        self.torch_stream = torch.cuda.Stream(device=dev)
        self.torch_stream.wait_stream(torch.cuda.current_stream(dev))
        self.stream = cupy.cuda.Stream.from_external(self.torch_stream)
        self.device = cupy.cuda.Device(dev.index)

    def register(self, lo: int, n: int) -> None:
        try:
            with self.device:
                self.rt.hostRegister(lo, n, self.READ_ONLY)
        except self.rt.CUDARuntimeError as exc:
            _clear_cuda_last_error()
            raise RegistrationRefused(str(exc)) from None

    def copy(self, offset: int, lo: int, n: int):
        with self.device:
            self.rt.memcpyAsync(self.dst + offset, lo, n, self.rt.memcpyHostToDevice,
                                self.stream.ptr)
            event = self.cupy.cuda.Event(disable_timing=True)
            event.record(self.stream)
        return event

    def wait(self, event) -> None:
        event.synchronize()

    def unregister(self, lo: int) -> None:
        with self.device:
            self.rt.hostUnregister(lo)


def _clear_cuda_last_error() -> None:
    """Reset the CUDA runtime's last error after a refused registration: the runtime keeps it
    until cudaGetLastError is called, and torch, which may share the runtime library with CuPy,
    checks that after its kernel launches and would report it against an unrelated op. The
    runtime libraries are found among the process's mapped files (Linux)."""
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libcudart" in line}
    except OSError:
        return
    for path in paths:
        try:
            ctypes.CDLL(path).cudaGetLastError()
        except (OSError, AttributeError):
            pass


def _to_device_registered(src_bytes: np.ndarray, dst_bytes, dev, chunk_bytes: int,
                          progress) -> int:
    """method="registered" for to_device: how many leading bytes it copied (0 without CuPy,
    without read-only registration, or when the driver refuses the first registration)."""
    try:
        ops = _CudaRegisterOps(dst_bytes, dev)
    except (ImportError, RegistrationRefused, RuntimeError):  # no CuPy, no support, a CUDA error
        return 0
    nbytes = int(src_bytes.nbytes)
    try:
        with _progress.bar(nbytes, "uploading", progress=progress) as bar:
            return registered_pipeline(int(src_bytes.ctypes.data), nbytes, chunk_bytes, ops, bar)
    finally:
        ops.torch_stream.synchronize()  # as the staged path: the output is ready on return
