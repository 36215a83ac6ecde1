"""Host array -> device tensor, at close to PCIe speed, with one device allocation.

`to_device(array, "cuda")` first compares the bytes needed with the device's free memory
(raising DeviceMemoryError before anything is allocated), allocates the output tensor once, then
streams the array through two pinned staging buffers: while the copy engine moves chunk i from
one buffer to the device (non_blocking, on a side stream), host threads fill the other buffer
with chunk i+1 (for a memory-mapped array this is also where its pages are read in), so host
memcpy / page-in overlap the PCIe transfer. The side stream first waits for the caller's stream
(the output's memory may have been in use there) and is synchronised at the end, so the tensor
is ready on return. On the CPU (device None or "cpu") it is a no-op that returns the array.

`check_device_memory(needed, device, what)` is the same memory check, for callers (the store)
that upload many arrays and want to fail before the first.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _array, _progress
from ._errors import DeviceMemoryError

DEFAULT_CHUNK_BYTES = 64 << 20
MIN_PARALLEL_BYTES = 4 << 20  # below this one thread fills a buffer
MAX_FILL_THREADS = 16


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
              progress: bool | None = None, workers: int | None = None, what: str | None = None):
    """Copy `array` to `device` as a torch tensor (same shape and dtype); on the CPU return
    `array` itself. A non-contiguous array is made contiguous on the host first."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"array: expected a NumPy array, got {type(array).__name__}")
    if not (isinstance(chunk_bytes, int) and chunk_bytes > 0):
        raise ValueError(f"chunk_bytes: expected a positive int, got {chunk_bytes!r}")
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
    step = -(-step // 4096) * 4096  # whole pages per thread
    parts = [(a, min(len(src), a + step)) for a in range(0, len(src), step)]
    list(pool.map(lambda ab: np.copyto(dst[ab[0]:ab[1]], src[ab[0]:ab[1]]), parts))
