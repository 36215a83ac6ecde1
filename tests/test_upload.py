"""to_device: host no-op, the double-buffered pipeline on the host, memory checks; the real
CUDA path under @pytest.mark.gpu."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from robocache import _runtime, _upload
from robocache._errors import DeviceMemoryError

gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not _runtime.cuda_available(), reason="needs a CUDA GPU")


def test_cpu_is_a_no_op():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert _upload.to_device(a, None) is a
    assert _upload.to_device(a, "cpu") is a
    with pytest.raises(TypeError, match="NumPy array"):
        _upload.to_device([1, 2], "cpu")
    with pytest.raises(ValueError, match="chunk_bytes"):
        _upload.to_device(a, "cpu", chunk_bytes=0)


class FakeDevice:
    """Stands in for the copy engine: records the order of waits and submits."""

    def __init__(self, nbytes):
        self.dst = np.zeros(nbytes, np.uint8)
        self.log = []
        self.staging = None

    def wait(self, k):
        self.log.append(("wait", k))

    def submit(self, k, off, n):
        self.log.append(("submit", k, off, n))
        self.dst[off:off + n] = self.staging[k][:n]


PAGE = _upload._PAGE


@pytest.mark.parametrize("offset, nbytes, chunk", [
    (0, 1, PAGE), (5, PAGE, PAGE), (PAGE - 1, 2, PAGE), (17, 10 * PAGE + 3, 3 * PAGE),
    (0, 8 * PAGE, 2 * PAGE), (100, 5 * PAGE, PAGE + 123), (3, 7 * PAGE, 1)])
def test_page_spans_cover_every_byte_in_disjoint_whole_pages(offset, nbytes, chunk):
    base = 1 << 30  # page aligned
    spans = _upload.page_spans(base + offset, nbytes, chunk)
    covered = []
    for page_lo, page_hi, lo, hi in spans:
        assert page_lo % PAGE == 0 and page_hi % PAGE == 0 and page_lo < page_hi
        assert page_hi - page_lo <= max(PAGE, chunk - chunk % PAGE)
        assert page_lo <= lo < hi <= page_hi
        covered.append((lo, hi))
    assert all(a[1] <= b[0] for a, b in pairwise(spans))  # pages never shared
    assert covered[0][0] == base + offset and covered[-1][1] == base + offset + nbytes
    assert all(a[1] == b[0] for a, b in pairwise(covered))  # no gap, no overlap
    assert _upload.page_spans(base, 0, chunk) == []


class FakeRegistrar:
    """registered_pipeline's ops on the host: copies with memmove from the source's address,
    records locking, and can refuse the k-th registration or fail the k-th copy."""

    def __init__(self, nbytes, refuse_at=None, fail_copy_at=None):
        self.dst = np.zeros(nbytes, np.uint8)
        self.locked: set[int] = set()
        self.max_locked = 0
        self.registrations = 0
        self.copies = 0
        self.refuse_at, self.fail_copy_at = refuse_at, fail_copy_at
        self.pending = {}  # handle -> (offset, lo, n): copied when waited for (asynchrony)

    def register(self, lo, n):
        k, self.registrations = self.registrations, self.registrations + 1
        if k == self.refuse_at:
            raise _upload.RegistrationRefused("refused by the fake")
        assert lo % PAGE == 0 and lo not in self.locked
        self.locked.add(lo)
        self.max_locked = max(self.max_locked, len(self.locked))

    def copy(self, offset, lo, n):
        k, self.copies = self.copies, self.copies + 1
        if k == self.fail_copy_at:
            raise OSError("copy failed")
        self.pending[k] = (offset, lo, n)
        return k

    def wait(self, handle):
        import ctypes

        offset, lo, n = self.pending.pop(handle)
        ctypes.memmove(self.dst.ctypes.data + offset, lo, n)

    def unregister(self, lo):
        self.locked.remove(lo)


class CountingBar:
    def __init__(self):
        self.n = 0

    def update(self, k):
        self.n += k


@pytest.mark.parametrize("nbytes, chunk", [(1, PAGE), (3 * PAGE + 5, PAGE), (20 * PAGE + 1, 3 * PAGE),
                                           (5 * PAGE, 64 * PAGE)])
def test_registered_pipeline_moves_every_byte_and_unlocks_everything(nbytes, chunk):
    buf = np.random.default_rng(nbytes).integers(0, 256, nbytes + 7, dtype=np.uint8)
    src = buf[7:]  # not page aligned
    ops, bar = FakeRegistrar(nbytes), CountingBar()
    done = _upload.registered_pipeline(src.ctypes.data, nbytes, chunk, ops, bar)
    assert done == nbytes and bar.n == nbytes
    np.testing.assert_array_equal(ops.dst, src)
    assert not ops.locked and not ops.pending
    assert ops.max_locked <= _upload.REGISTERED_IN_FLIGHT


@pytest.mark.parametrize("refuse_at", [0, 1, 4])
def test_registered_pipeline_stops_at_a_refusal_with_the_prefix_copied(refuse_at):
    nbytes, chunk = 10 * PAGE + 3, 2 * PAGE
    src = np.random.default_rng(refuse_at).integers(0, 256, nbytes, dtype=np.uint8)
    ops, bar = FakeRegistrar(nbytes, refuse_at=refuse_at), CountingBar()
    done = _upload.registered_pipeline(src.ctypes.data, nbytes, chunk, ops, bar)
    spans = _upload.page_spans(src.ctypes.data, nbytes, chunk)
    assert done == spans[refuse_at][2] - src.ctypes.data  # the refused chunk's first byte
    np.testing.assert_array_equal(ops.dst[:done], src[:done])
    assert not ops.dst[done:].any() and bar.n == done
    assert not ops.locked and not ops.pending


def test_registered_pipeline_unlocks_on_a_failed_copy():
    nbytes = 9 * PAGE
    src = np.ones(nbytes, np.uint8)
    ops = FakeRegistrar(nbytes, fail_copy_at=3)
    with pytest.raises(OSError, match="copy failed"):
        _upload.registered_pipeline(src.ctypes.data, nbytes, PAGE, ops, CountingBar())
    assert not ops.locked and not ops.pending  # queued copies waited for, every page unlocked


def test_method_is_checked():
    with pytest.raises(ValueError, match="method"):
        _upload.to_device(np.zeros(3), "cpu", method="pinned")

@pytest.mark.parametrize("nbytes, chunk, workers", [
    (1, 8, 1), (1000, 64, 1), (1000, 1000, 1), (1000, 3000, 1), (4096 * 9 + 17, 4096 * 4, 3),
    (4096 * 9 + 17, 4096 * 2, 8),
])
def test_pipeline_moves_every_byte_in_order(monkeypatch, nbytes, chunk, workers):
    monkeypatch.setattr(_upload, "MIN_PARALLEL_BYTES", 1)
    src = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    chunk = min(chunk, nbytes)
    dev = FakeDevice(nbytes)
    dev.staging = [np.empty(chunk, np.uint8) for _ in range(2)]

    bar = CountingBar()
    _upload._pipeline(src, chunk, dev.staging, dev.wait, dev.submit, bar, workers)
    np.testing.assert_array_equal(dev.dst, src)
    assert bar.n == nbytes
    submits = [e for e in dev.log if e[0] == "submit"]
    assert [e[2] for e in submits] == list(range(0, nbytes, chunk))
    assert [e[1] for e in submits] == [i % 2 for i in range(len(submits))]
    # a buffer is refilled only after waiting for its previous transfer
    for i, e in enumerate(dev.log):
        if e[0] == "submit" and submits.index(e) >= 2:
            assert dev.log[i - 1] == ("wait", e[1])


def test_memory_check_uses_free_plus_cached(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev=None: (1000, 10_000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda dev=None: 500)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda dev=None: 200)
    assert _upload.device_free_bytes("cuda:0") == 1300
    _upload.check_device_memory(1300, "cuda:0")
    with pytest.raises(DeviceMemoryError, match=r"the store needs .*\(1301 bytes\).*\(1300 bytes\)"):
        _upload.check_device_memory(1301, "cuda:0", "the store")
    _upload.check_device_memory(10**15, "cpu")
    with pytest.raises(ValueError, match="CUDA device"):
        _upload.check_device_memory(1, "meta")


# --- the CUDA path --------------------------------------------------------------------------

@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float64", "uint8", "bool", "int64", "float16",
                                   "bfloat16"])
def test_cuda_upload_matches_host(dtype):
    import torch

    from robocache import _array

    rng = np.random.default_rng(0)
    a = (rng.standard_normal((1001, 7, 3)) * 40).astype(_array.numpy_dtype(dtype))
    t = _upload.to_device(a, "cuda", chunk_bytes=4096 * 5)
    assert t.is_cuda and tuple(t.shape) == a.shape and str(t.dtype) == f"torch.{dtype}"
    back = _array.to_numpy(t)
    np.testing.assert_array_equal(back.view(np.uint8), np.ascontiguousarray(a).view(np.uint8))
    # a non-contiguous source
    strided = _array.to_numpy(_upload.to_device(a[::2], "cuda"))
    np.testing.assert_array_equal(strided.view(np.uint8), np.ascontiguousarray(a[::2]).view(np.uint8))
    assert torch.cuda.current_stream().query()


@gpu
@needs_gpu
def test_cuda_upload_of_a_memmap(tmp_path):
    a = np.random.default_rng(1).standard_normal((300_000, 16)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    m = np.load(tmp_path / "a.npy", mmap_mode="r")
    t = _upload.to_device(m, "cuda", chunk_bytes=1 << 20)
    np.testing.assert_array_equal(t.cpu().numpy(), a)



@gpu
@needs_gpu
def test_cuda_registered_upload_of_a_memmap(tmp_path):
    """method="registered": the memmap's page cache pages locked in place and copied (or, where
    the driver refuses, the staging buffers); the same bytes either way, and no CUDA error left
    behind for torch's next launch to report."""
    import torch

    a = np.random.default_rng(2).standard_normal((300_001, 5)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    m = np.load(tmp_path / "a.npy", mmap_mode="r")
    t = _upload.to_device(m, "cuda", chunk_bytes=1 << 20, method="registered")
    np.testing.assert_array_equal(t.cpu().numpy(), a)
    heap = np.arange(100_003, dtype=np.int64)
    u = _upload.to_device(heap, "cuda", chunk_bytes=4096 * 3, method="registered")
    np.testing.assert_array_equal(u.cpu().numpy(), heap)
    (torch.ones(3, device="cuda") * 2).sum().item()  # a torch launch: no stale error reported
    assert torch.cuda.current_stream().query()

@gpu
@needs_gpu
def test_cuda_upload_fails_before_allocating(monkeypatch):
    import torch

    monkeypatch.setattr(_upload, "device_free_bytes", lambda device: 100)
    before = torch.cuda.memory_allocated()
    with pytest.raises(DeviceMemoryError, match="needs"):
        _upload.to_device(np.zeros(1000, np.float32), "cuda")
    assert torch.cuda.memory_allocated() == before


@gpu
@needs_gpu
def test_cuda_upload_error_leaves_no_copy_in_flight(monkeypatch):
    """A failure between chunks (a bad page of a memmap, Ctrl-C) must not leave side-stream
    copies writing into the output the caller's stream already gave back to the allocator."""
    import torch

    streams = []
    real_stream = torch.cuda.Stream

    def recording_stream(*args, **kwargs):
        s = real_stream(*args, **kwargs)
        streams.append(s)
        return s

    calls = []
    real_fill = _upload._fill

    def failing_fill(dst, src, pool, workers):
        calls.append(len(src))
        if len(calls) == 3:
            raise OSError("simulated read error")
        real_fill(dst, src, pool, workers)

    monkeypatch.setattr(torch.cuda, "Stream", recording_stream)
    monkeypatch.setattr(_upload, "_fill", failing_fill)
    a = np.ones(3 * (256 << 20), np.uint8)  # two 256 MB copies queued (~5 ms each) when it fails
    with pytest.raises(OSError, match="simulated"):
        _upload.to_device(a, "cuda", chunk_bytes=256 << 20, workers=1)
    # torch also builds Stream objects for its current-stream queries: count the side streams
    current = torch.cuda.current_stream().cuda_stream
    side = [s for s in streams if s.cuda_stream != current]
    assert len(side) == 1 and side[0].query()


def test_progress_can_be_a_caller_owned_bar():
    from robocache import _progress

    class Bar:
        n = 0
        closed = False

        def update(self, k):
            self.n += k

        def close(self):
            self.closed = True

    b = Bar()
    with _progress.bar(100, "x", progress=b) as inner:
        inner.update(40)
        inner.update(2)
    assert b.n == 42 and not b.closed
    with _progress.bar(100, "x", progress=False) as inner:
        inner.update(1)
