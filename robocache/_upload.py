"""Host array -> device tensor, at close to PCIe speed, with one device allocation.

`to_device(array, "cuda")` first compares the bytes needed with the device's free memory
(raising DeviceMemoryError before anything is allocated), allocates the output tensor once, then
copies the array chunk by chunk. The chunks are handed out by one `ChunkClaims`, and up to two
kinds of lane take them:
- the staging lane: fill threads, each with two small pinned buffers of its own (1 MB), copy
  the chunk's pieces into them, and the copy engine moves each to the device (non_blocking, on
  a side stream) while the thread fills its other buffer (for a memory-mapped array this is
  also where its pages are read in). Small buffers that are used again and again stay in the
  CPU cache: the fill writes no memory, and the transfer can read them from the cache (through
  one 64 MB double buffer every byte was read, written to memory and read again by the DMA;
  on the CPU machine the fill alone ran 1.2-1.8x faster, benchmarks/RESULTS.md). A piece is
  queued by CuPy's bindings of the CUDA runtime, which hold Python's GIL for less per piece
  than torch's copy_ (STAGING_SUBMIT; torch's copy_ where CuPy is missing). Where the array is
  a read-only memory map of a file (the own cache's .npy files), the pieces are read from the
  file with pread instead of copied from the mapped pages (STAGING_READ): no page faults, and
  from a cold page cache the kernel's readahead (on the 2-core CPU machine 1.05x the copy's
  speed, warm and cold, for bench_load's cache; benchmarks/RESULTS.md), and a file truncated
  since it was mapped is an error instead of a SIGBUS;
- a registration lane (a thread of its own) lets the copy engine read the array's own pages: a
  chunk is page-locked in place (cudaHostRegister, read-only: a memory-mapped cache file's page
  cache pages) and copied with no host memcpy; the next chunk is locked while the previous one
  copies, and each is unlocked once its copy is done.
`method` picks the lanes: "staged" (the default) only the staging lane; "registered" a
registration lane, the staging lane copying only what the driver would not lock; "mixed" both
at once, the registration lane taking chunks from the front and the staging lane from the
back until they meet, so each does what its speed allows (they use different resources: the
driver's page locking on one core, memcpy on the others). Where the driver refuses to lock (no
read-only registration on this platform, a locked-memory limit) the chunk goes back to the
staging lane. "registered" and "mixed" are not the default until measured faster on a GPU
(benchmarks/bench_load.py times all three).

Each lane's side stream first waits for the caller's stream (the output's memory may have been in
use there) and is synchronised at the end, also on an error, so the tensor is ready on return
and no copy still writes into it after a failure. On the CPU (device None or "cpu") to_device
is a no-op that returns the array.

`check_device_memory(needed, device, what)` is the same memory check, for callers (the store)
that upload many arrays and want to fail before the first.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _array, _mapped, _progress
from ._cpus import usable_cpus
from ._errors import DeviceMemoryError

DEFAULT_CHUNK_BYTES = 64 << 20
MIN_PARALLEL_BYTES = 4 << 20  # below this one thread fills the staging buffers
MAX_FILL_THREADS = 16
STAGING_PIECE_BYTES = 1 << 20  # one staging buffer (a fill thread's slot)
STAGING_DEPTH = 2  # staging buffers per fill thread
STAGING_SUBMIT = "cupy"  # how a piece is queued: "cupy" (CuPy's runtime calls) or "torch"
STAGING_READ = "pread"  # how a memmap of a file fills a piece: "pread" (the file) or "copy" (pages)
# method -> (registration lanes, whether the staging lane runs beside them or only copies
# what they left)
METHODS = {"staged": (0, False), "registered": (1, False), "mixed": (1, True)}
REGISTERED_IN_FLIGHT = 2  # chunks page-locked at once by one registration lane
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
              method: str = "staged", report: dict | None = None):
    """Copy `array` to `device` as a torch tensor (same shape and dtype); on the CPU return
    `array` itself. A non-contiguous array is made contiguous on the host first. `method`:
    "staged" (pinned staging buffers), "registered" (the array's pages locked in place) or
    "mixed" (both lanes at once); see the module docstring. Chunks are whole pages (at least
    one) of `chunk_bytes`; `workers`: fill threads (default: one per core, at most
    MAX_FILL_THREADS). `report`: a dict filled with what ran (the benchmarks' labels): "submit"
    ("cupy" / "torch"), "read" ("pread" / "copy"), "registration_lanes" (set up) and
    "registered_bytes" (moved by them; the staging lane moved the rest)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"array: expected a NumPy array, got {type(array).__name__}")
    if not (isinstance(chunk_bytes, int) and chunk_bytes > 0):
        raise ValueError(f"chunk_bytes: expected a positive int, got {chunk_bytes!r}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {tuple(METHODS)}, got {method!r}")
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
    lanes, alongside = METHODS[method]
    registrars = _cuda_registrars(dst_bytes, dev, lanes)
    stager = _cuda_stager(dst_bytes, dev)
    with staging_region(src) as region:
        if report is not None:
            report.update(submit="cupy" if isinstance(stager, _CupyStaging) else "torch",
                          read="copy" if region is None else "pread",
                          registration_lanes=len(registrars), registered_bytes=0)
        try:
            with _progress.bar(nbytes, "uploading", progress=progress) as bar:
                registered = copy_in_lanes(src_bytes, chunk_bytes, stager, registrars,
                                           alongside, bar, workers, region)
            if report is not None:
                report["registered_bytes"] = registered
        finally:
            # also on an error (a failing read of a memory-mapped file, Ctrl-C): `out` belongs
            # to the caller's stream in torch's allocator, which would hand its memory out again
            # while copies queued on the side streams still write into it
            for lane in (stager, *registrars):
                lane.synchronize()
    return out


# ---------------------------------------------------------------------------------------------
# the lanes, device-agnostic (tested on the host with fake copy engines)


class RegistrationRefused(Exception):
    """The driver would not page-lock a range (the chunk goes back to the staging lane)."""


def page_spans(address: int, nbytes: int, chunk: int) -> list[tuple[int, int, int, int]]:
    """Cut the bytes [address, address + nbytes) into chunks: (page_lo, page_hi, lo, hi) per
    chunk, where [page_lo, page_hi) is whole pages (locked together by a registration lane; the
    spans of two chunks never share a page, which the driver would refuse) and [lo, hi) the
    array bytes inside them. `chunk` is rounded down to whole pages (at least one)."""
    if nbytes <= 0:
        return []
    step = max(_PAGE, chunk - chunk % _PAGE)
    first = address - address % _PAGE
    end = address + nbytes
    last = -(-end // _PAGE) * _PAGE
    return [(p, min(p + step, last), max(p, address), min(p + step, end))
            for p in range(first, last, step)]


class ChunkClaims:
    """The chunks 0 .. n-1 of one upload, each handed out once, under a lock: registration
    lanes take them from the front, the staging lane from the back, so the lanes meet where
    their speeds put them. A chunk the driver would not lock is given back and handed out to
    the staging lane before any other. close() ends the hand-out (a lane failed)."""

    def __init__(self, n: int):
        self._lo, self._hi = 0, n
        self._returned: list[int] = []
        self._closed = False
        self._lock = threading.Lock()

    def front(self) -> int | None:
        with self._lock:
            if self._closed or self._lo >= self._hi:
                return None
            self._lo += 1
            return self._lo - 1

    def back(self) -> int | None:
        with self._lock:
            if self._closed:
                return None
            if self._returned:
                return self._returned.pop()
            if self._lo >= self._hi:
                return None
            self._hi -= 1
            return self._hi

    def give_back(self, i: int) -> None:
        with self._lock:
            self._returned.append(i)

    def close(self) -> None:
        with self._lock:
            self._closed = True


def copy_in_lanes(src: np.ndarray, chunk: int, stager, registrars, alongside: bool, bar,
                  workers: int | None, region: FileRegion | None = None) -> int:
    """Copy every byte of `src` (uint8, contiguous) to the output, chunk by chunk: one thread
    per registrar runs `registered_lane` from the front of the chunks; the `StagingLane`'s
    fill threads work from the back at the same time when `alongside`, and in any case
    afterwards on what is left (chunks the driver refused or the lanes had not reached;
    without registrars all of them, front to back). An error in any lane stops the others
    (their queued copies are waited for and their pages unlocked) and is raised here. `bar`
    is advanced from every lane's threads (a _progress.bar is safe for that). `region`: the
    file that holds src's bytes, which the staging lane then reads instead of src's pages.
    Returns the bytes the registration lanes moved."""
    address = int(src.ctypes.data)
    spans = page_spans(address, len(src), chunk)
    claims = ChunkClaims(len(spans))
    workers = workers or min(MAX_FILL_THREADS, usable_cpus())
    errors: list[BaseException] = []
    registered: list[int] = []  # bytes per finished registration lane

    def registration(ops) -> None:
        try:
            registered.append(registered_lane(spans, address, claims, ops, bar))
        except BaseException as exc:  # raised again in the calling thread
            errors.append(exc)
            claims.close()

    threads = [threading.Thread(target=registration, args=(ops,), daemon=True,
                                name="robocache-upload-registration") for ops in registrars]
    staging = StagingLane(src, spans, stager, bar, STAGING_PIECE_BYTES, region)
    for t in threads:
        t.start()
    done = False
    try:
        if alongside and threads:  # the driver's locking takes a core from the fills
            staging.run(claims.back, max(1, workers - len(threads)))
        done = True
    finally:
        _join(threads, claims, stop_first=not done)
    if errors:
        raise errors[0]
    # alone, in file order (a cold memory-mapped file reads ahead forwards); after the
    # registration lanes, the chunks they gave back and those between the lanes
    staging.run(claims.back if threads else claims.front, workers)
    return sum(registered)


def _join(threads, claims: ChunkClaims, stop_first: bool) -> None:
    """Wait for the registration lanes (after stopping their hand-out when `stop_first`). An
    interruption of the wait (Ctrl-C) stops them too and waits again: no lane may still queue
    copies into the output once the upload has returned or raised."""
    if stop_first:
        claims.close()
    try:
        for t in threads:
            t.join()
    except BaseException:
        claims.close()
        for t in threads:
            t.join()
        raise


class StagingLane:
    """Pinned staging buffers, filled by several threads at once: each worker has its own
    STAGING_DEPTH buffers ("slots") of `piece` bytes and takes the next piece of the current
    chunk (a new chunk from run()'s `next_chunk` when one is used up, until None), waits until
    the slot's previous transfer is done, copies the piece into it and submits it. Pieces are
    small so that a worker's buffers stay in the CPU cache (see the module docstring). What is
    in flight in each slot carries over from one run() to the next.

    `stager` does the transfers: worker() (a context a fill thread works in), buffer(slot, n)
    (the slot's n-byte buffer, allocated on first use), wait(slot) (its previous transfer is
    done), submit(slot, offset, n) (queue the slot's first n bytes to the output's byte
    `offset`); slot = (worker, k). With a `region` (the file holding src's bytes) a piece is
    read from the file instead of copied from src."""

    def __init__(self, src: np.ndarray, spans, stager, bar, piece: int,
                 region: FileRegion | None = None):
        self.src = src.view(np.ndarray)  # a memmap's own slicing costs more per piece
        self.spans, self.stager, self.bar, self.region = spans, stager, bar, region
        self.address = int(src.ctypes.data)  # spans hold addresses, pieces offsets
        self.piece = max(1, int(piece))
        self.in_flight: set[tuple[int, int]] = set()  # slots whose transfer may be running

    def run(self, next_chunk, workers: int) -> None:
        """Copy every chunk `next_chunk` hands out; `workers` threads (the caller's thread
        alone for 1 or for a source below MIN_PARALLEL_BYTES). The first error stops the
        others and is raised."""
        feed = _PieceFeed(next_chunk, self.spans, self.address, self.piece)
        workers = min(workers, -(-len(self.src) // self.piece))  # no thread without a piece
        if workers <= 1 or len(self.src) < MIN_PARALLEL_BYTES:
            self._work(0, feed)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="robocache-upload-fill") as pool:
            futures = [pool.submit(self._work, w, feed) for w in range(workers)]
            errors = []
            for f in futures:
                try:
                    f.result()
                except BaseException as exc:  # the others stop at their next piece
                    feed.close()
                    errors.append(exc)
        if errors:
            raise errors[0]

    def _work(self, worker: int, feed: _PieceFeed) -> None:
        try:
            with self.stager.worker():
                self._copy_pieces(worker, feed)
        except BaseException:
            feed.close()
            raise

    def _copy_pieces(self, worker: int, feed: _PieceFeed) -> None:
        k = 0
        for off, n in iter(feed.next, None):
            slot = (worker, k)
            if slot in self.in_flight:
                self.stager.wait(slot)
                self.in_flight.discard(slot)
            buf = self.stager.buffer(slot, self.piece)
            if self.region is None:
                np.copyto(buf[:n], self.src[off:off + n])
            else:
                self.region.read_into(buf, off, n)
            self.stager.submit(slot, off, n)
            self.in_flight.add(slot)
            k = (k + 1) % STAGING_DEPTH
            self.bar.update(n)


class _PieceFeed:
    """The pieces (offset, n) of the chunks `next_chunk` hands out, each once, under a lock;
    None at the end or once closed."""

    def __init__(self, next_chunk, spans, address: int, piece: int):
        self._next_chunk, self._spans, self._address, self._piece = (next_chunk, spans,
                                                                    address, piece)
        self._at = self._end = 0
        self._closed = False
        self._lock = threading.Lock()

    def next(self) -> tuple[int, int] | None:
        with self._lock:
            if self._closed:
                return None
            if self._at >= self._end:
                c = self._next_chunk()
                if c is None:
                    self._closed = True
                    return None
                _page_lo, _page_hi, lo, hi = self._spans[c]
                self._at, self._end = lo - self._address, hi - self._address
            off, n = self._at, min(self._piece, self._end - self._at)
            self._at += n
            return off, n

    def close(self) -> None:
        with self._lock:
            self._closed = True


class FileRegion:
    """The bytes of a read-only memory map as the file they map: an open descriptor and the file
    offset of the array's first byte, for StagingLane to read pieces with pread (no page faults;
    readahead from a cold page cache; a file truncated since it was mapped gives an error where
    touching the map would kill the process with SIGBUS)."""

    def __init__(self, fd: int, offset: int, path: str):
        self.fd, self.offset, self.path = fd, offset, path

    @classmethod
    def of(cls, array: np.ndarray) -> FileRegion | None:
        """The region of a C-contiguous `array` whose memory is a read-only np.memmap of a file
        (a view of one included), opened; None otherwise, and where the file at the memmap's
        path is no longer the mapped one (_mapped.open_mapped_file; Linux only)."""
        found = _mapped.memmap_root(array)
        if found is None or found[0].mode != "r":
            return None
        root, delta = found
        fd = _mapped.open_mapped_file(root)
        if fd is None:
            return None
        return cls(fd, int(root.offset) + delta, str(root.filename))

    def read_into(self, buf: np.ndarray, off: int, n: int) -> None:
        """buf[:n] = the region's bytes [off, off + n), read with pread (GIL released)."""
        view = memoryview(buf)[:n]
        done = 0
        while done < n:
            got = os.preadv(self.fd, [view[done:]], self.offset + off + done)
            if got == 0:
                raise OSError(f"{self.path}: ends at byte {self.offset + off + done}, "
                              f"before the {self.offset + off + n} the array needs (truncated "
                              f"since it was mapped)")
            done += got

    def close(self) -> None:
        os.close(self.fd)


@contextlib.contextmanager
def staging_region(array: np.ndarray):
    """The FileRegion the staging lane reads `array`'s pieces from (STAGING_READ "pread"), or
    None (copy the array's memory); closed on exit."""
    region = FileRegion.of(array) if STAGING_READ == "pread" else None
    try:
        yield region
    finally:
        if region is not None:
            region.close()


def registered_lane(spans, address: int, claims: ChunkClaims, ops, bar) -> int:
    """For each chunk of the source at `address` (cut into `spans` by page_spans) that
    claims.front() hands out (until None): ops.register(page_lo, n) locks its pages (raising
    RegistrationRefused when the driver will not: the chunk is given back and the lane stops),
    ops.copy(offset, lo, n) queues the copy of its n bytes at lo to the output's
    byte `offset` and returns a handle, ops.wait(handle) waits for it, ops.unregister(page_lo)
    unlocks. At most REGISTERED_IN_FLIGHT chunks are locked at once; each is unlocked once its
    copy is done, and every locked chunk is unlocked on any exit. Returns the bytes copied."""
    in_flight: deque = deque()
    moved = 0

    def retire() -> None:
        nonlocal moved
        handle, page_lo, n = in_flight.popleft()
        try:
            ops.wait(handle)
        finally:
            ops.unregister(page_lo)
        bar.update(n)
        moved += n

    try:
        for c in iter(claims.front, None):
            page_lo, page_hi, lo, hi = spans[c]
            if len(in_flight) >= REGISTERED_IN_FLIGHT:
                retire()
            try:
                ops.register(page_lo, page_hi - page_lo)
            except RegistrationRefused:
                claims.give_back(c)
                break
            try:
                handle = ops.copy(lo - address, lo, hi - lo)
            except BaseException:
                ops.unregister(page_lo)
                raise
            in_flight.append((handle, page_lo, hi - lo))
        while in_flight:
            retire()
        return moved
    finally:
        while in_flight:  # an error: let the queued copies finish, then unlock
            try:
                retire()
            except Exception:  # the first error is the one to report
                pass


# ---------------------------------------------------------------------------------------------
# the lanes' operations on a CUDA device


class _TorchStaging:
    """StagingLane's operations: a pinned buffer and an event per slot (made on first use),
    copies on one side stream that first waits for the caller's stream."""

    def __init__(self, dst, dev):
        import torch

        self.torch = torch
        self.dst = dst
        self.stream = torch.cuda.Stream(device=dev)
        self.stream.wait_stream(torch.cuda.current_stream(dev))
        self._slots: dict = {}  # slot -> (pinned tensor, its NumPy view, event, its address)

    def worker(self):
        """A fill thread queues its copies on the side stream: made current once per thread
        (the context costs more than a piece's copy call)."""
        return self.torch.cuda.stream(self.stream)

    def buffer(self, slot, n: int) -> np.ndarray:
        entry = self._slots.get(slot)
        if entry is None:  # a slot belongs to one fill thread: no other thread makes it
            pinned = self.torch.empty(n, dtype=self.torch.uint8, pin_memory=True)
            entry = self._slots[slot] = (pinned, pinned.numpy(), self._event(),
                                         int(pinned.data_ptr()))
        return entry[1]

    def _event(self):
        return self.torch.cuda.Event()

    def wait(self, slot) -> None:
        self._slots[slot][2].synchronize()

    def submit(self, slot, off: int, n: int) -> None:  # inside worker(): on the side stream
        pinned, _view, event, _address = self._slots[slot]
        self.dst[off:off + n].copy_(pinned[:n], non_blocking=True)
        event.record(self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()


class _CupyStaging(_TorchStaging):
    """_TorchStaging with each piece's copy and event queued by CuPy's bindings of the CUDA
    runtime (cudaMemcpyAsync from the pinned buffer's address, cudaEventRecord): two calls that
    hold the GIL for little more than their arguments' conversion, where torch's copy_ also
    slices two tensors, parses its arguments and records an event in its pinned-memory
    allocator (~10 us a piece on the development machine's CPU, most of it holding the GIL;
    16 fill threads moving 1 MB pieces at 40 GB/s make 40k submits a second). The buffers are
    still torch's pinned tensors and the stream torch's side stream; a fill thread works with
    the output's device current. Raises ImportError without CuPy and RuntimeError when CuPy's
    runtime cannot reach the device, before anything is queued."""

    def __init__(self, dst, dev):
        import cupy

        self.cupy, self.rt, self.device_index = cupy, cupy.cuda.runtime, dev.index
        self.rt.deviceGetAttribute(self.rt.cudaDevAttrAsyncEngineCount, dev.index)  # reachable
        super().__init__(dst, dev)
        self.dst_address = int(dst.data_ptr())
        self.stream_ptr = int(self.stream.cuda_stream)

    def worker(self):
        # a Device of its own per thread: CuPy's Device keeps the devices to restore on one
        # stack per object, which threads entering at once would interleave
        return self.cupy.cuda.Device(self.device_index)

    def _event(self):  # made by a fill thread, with the output's device current
        return self.cupy.cuda.Event(disable_timing=True)

    def submit(self, slot, off: int, n: int) -> None:
        _pinned, _view, event, address = self._slots[slot]
        self.rt.memcpyAsync(self.dst_address + off, address, n, self.rt.memcpyHostToDevice,
                            self.stream_ptr)
        self.rt.eventRecord(event.ptr, self.stream_ptr)


def _cuda_stager(dst_bytes, dev):
    """The staging lane's operations: by STAGING_SUBMIT, "cupy" (_CupyStaging; torch's
    copy_ where CuPy is missing or cannot reach the device) or "torch" (_TorchStaging)."""
    if STAGING_SUBMIT == "cupy":
        try:
            return _CupyStaging(dst_bytes, dev)
        except (ImportError, OSError, RuntimeError):  # no CuPy, its CUDA libraries, the device
            pass
    return _TorchStaging(dst_bytes, dev)


class _CudaRegisterOps:
    """registered_lane's operations on a CUDA device (CuPy's runtime bindings), copies on a
    side stream of its own that first waits for the caller's stream."""

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

    def synchronize(self) -> None:
        self.torch_stream.synchronize()


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


def _cuda_registrars(dst_bytes, dev, lanes: int) -> list:
    """`lanes` registration lanes' operations; none without CuPy, without read-only host
    registration, or after a CUDA error setting them up (the staging lane then copies all)."""
    registrars = []
    for _ in range(lanes):
        try:
            registrars.append(_CudaRegisterOps(dst_bytes, dev))
        except (ImportError, RegistrationRefused, RuntimeError, AttributeError, TypeError):
            break  # AttributeError / TypeError: a CuPy that cannot wrap torch's stream
    return registrars
