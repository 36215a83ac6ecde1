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

import mmap
import os
import weakref
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
    source = _FileSource.of(src) or src_bytes  # a mapped file is read with pread (_fill)
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
            _pipeline(source, chunk, staging_np, wait, submit, bar, workers)
    finally:
        # also on an error (a failing read of a memory-mapped file, Ctrl-C): `out` belongs to
        # the caller's stream in torch's allocator, which would hand its memory out again while
        # copies queued on the side stream still write into it
        stream.synchronize()
    return out


def _pipeline(src, chunk: int, staging: list[np.ndarray], wait, submit, bar,
              workers: int | None) -> None:
    """The double-buffered loop (device-agnostic, so it is tested on the host): fill buffer
    i % 2 with bytes [i*chunk, (i+1)*chunk) of `src` (uint8 array or _FileSource) once its
    previous transfer is done, then submit it."""
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


def _fill(dst: np.ndarray, src, pool, workers: int) -> None:
    """dst[:] = src (uint8 arrays, or a _FileSource read with pread), split over the pool's
    threads in whole pages."""
    copy = src.read_into if isinstance(src, _FileSource) else _copy
    if pool is None:
        copy(dst, src, 0, len(dst))
        return
    step = -(-len(dst) // workers)
    step = -(-step // 4096) * 4096  # whole pages per thread
    parts = [(a, min(len(dst), a + step)) for a in range(0, len(dst), step)]
    list(pool.map(lambda ab: copy(dst, src, ab[0], ab[1]), parts))


def _copy(dst: np.ndarray, src: np.ndarray, a: int, b: int) -> None:
    np.copyto(dst[a:b], src[a:b])


class _FileSource:
    """Bytes [pos, pos + n) of an open file, read with os.preadv: what a memory-mapped array
    (np.load(mmap_mode="r"), e.g. the own cache) holds, read without faulting its pages into
    this process one by one (the kernel copies from the page cache straight into the pinned
    staging buffer). Slicing gives the sub-range, like the uint8 array it stands for."""

    def __init__(self, fd: int, pos: int, n: int, name: str, owner=None):
        self.fd, self.pos, self.n, self.name = fd, pos, n, name
        self._owner = owner  # the range that closes fd when collected

    @classmethod
    def of(cls, arr: np.ndarray) -> _FileSource | None:
        """The file bytes behind a C-contiguous array that views a np.memmap of a regular file
        opened read-only, else None (then the array's memory is copied)."""
        if not hasattr(os, "preadv") or not arr.flags.c_contiguous:
            return None
        m = arr  # down to the memmap made on the mapping itself: its offset is its data's
        while isinstance(m, np.ndarray) and not isinstance(m.base, mmap.mmap):
            m = m.base
        if not isinstance(m, np.memmap) or m.mode != "r" or m.filename is None:
            return None  # (filename: a str or a path object, as np.load was given)
        start = m.ctypes.data
        lo = arr.ctypes.data - start
        if lo < 0 or lo + arr.nbytes > m.nbytes:
            return None
        try:
            fd = os.open(m.filename, os.O_RDONLY)
        except OSError:
            return None
        src = cls(fd, int(m.offset) + lo, int(arr.nbytes), str(m.filename))
        weakref.finalize(src, os.close, fd)
        return src

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, s: slice) -> _FileSource:
        a, b, _ = s.indices(self.n)
        return _FileSource(self.fd, self.pos + a, max(0, b - a), self.name,
                           self._owner or self)

    def read_into(self, dst: np.ndarray, src: _FileSource, a: int, b: int) -> None:
        """dst[a:b] = bytes [a, b) of this range."""
        view = memoryview(dst)[a:b]
        done = 0
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], self.pos + a + done)
            if got <= 0:
                raise OSError(f"{self.name}: ended {len(view) - done} bytes early (truncated "
                              f"while being read?)")
            done += got
