"""to_device: host no-op, its lanes (staging buffers, pages locked in place, both at once) on
the host with fake copy engines, memory checks; the real CUDA path under @pytest.mark.gpu."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import time
import types
from itertools import pairwise

import numpy as np
import pytest

from robocache import _mapped, _progress, _runtime, _upload
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
    """A registration lane's ops on the host: copies with memmove from the source's address
    when the copy is waited for (asynchrony), records locking and which chunks it copied, and
    can refuse the k-th registration or fail the k-th copy (setting `failed`). `started` is set
    at the first registration (FakeStager waits for it, so that both lanes of a mixed upload
    take chunks); hold=(k, event) waits for the event before the k-th registration."""

    def __init__(self, nbytes, refuse_at=None, fail_copy_at=None, hold=None, dst=None):
        self.dst = np.zeros(nbytes, np.uint8) if dst is None else dst
        self.locked: set[int] = set()
        self.max_locked = 0
        self.registrations = 0
        self.copies = 0
        self.copied: list[tuple[int, int]] = []  # (output offset, n)
        self.refuse_at, self.fail_copy_at = refuse_at, fail_copy_at
        self.pending = {}  # handle -> (offset, lo, n)
        self.started, self.failed = threading.Event(), threading.Event()
        self.hold = hold

    def register(self, lo, n):
        self.started.set()
        k, self.registrations = self.registrations, self.registrations + 1
        if self.hold is not None and k == self.hold[0]:
            assert self.hold[1].wait(10)
        if k == self.refuse_at:
            raise _upload.RegistrationRefused("refused by the fake")
        assert lo % PAGE == 0 and n % PAGE == 0 and lo not in self.locked
        self.locked.add(lo)
        self.max_locked = max(self.max_locked, len(self.locked))

    def copy(self, offset, lo, n):
        k, self.copies = self.copies, self.copies + 1
        if k == self.fail_copy_at:
            self.failed.set()
            raise OSError("copy failed")
        self.pending[k] = (offset, lo, n)
        self.copied.append((offset, n))
        return k

    def wait(self, handle):
        offset, lo, n = self.pending.pop(handle)
        ctypes.memmove(self.dst.ctypes.data + offset, lo, n)

    def unregister(self, lo):
        self.locked.remove(lo)

    def synchronize(self):
        assert not self.pending


class FakeStager:
    """A StagingLane's ops on the host: a slot's transfer copies its buffer into `dst` only
    when it is waited for (or at the end), so a buffer refilled before its transfer was waited
    for would show up as wrong bytes; submit() also asserts it directly. With `after` (a
    registrar), the first submit waits until that registrar has started; hold=(k, event) waits
    for the event before the k-th submit; the fail_submit_at-th submit fails (setting
    `failed`); with `meet` (a Barrier), each thread's first submit waits at it. Thread-safe:
    the lane's fill threads share it."""

    def __init__(self, dst, after=None, fail_submit_at=None, hold=None, meet=None):
        self.dst, self.meet = dst, meet
        self.after, self.hold = after, hold
        self.fail_submit_at = fail_submit_at
        self.failed, self.submitted = threading.Event(), threading.Event()
        self.slots: dict = {}
        self.pending = {}
        self.copied: list[tuple[int, int]] = []  # (output offset, n), in submit order
        self.threads_seen: set[int] = set()
        self.lock = threading.Lock()

    def worker(self):
        return contextlib.nullcontext()

    def buffer(self, slot, n):
        if slot not in self.slots:
            self.slots[slot] = np.empty(n, np.uint8)
        return self.slots[slot]

    def wait(self, slot):
        with self.lock:
            self._land(slot)

    def submit(self, slot, off, n):
        if self.after is not None and not self.copied:
            assert self.after.started.wait(10)
        if self.hold is not None and len(self.copied) == self.hold[0]:
            assert self.hold[1].wait(10)
        if self.meet is not None and threading.get_ident() not in self.threads_seen:
            self.meet.wait()
        with self.lock:
            if len(self.copied) == self.fail_submit_at:
                self.failed.set()
                raise OSError("submit failed")
            assert slot not in self.pending, "a buffer refilled while its transfer was in flight"
            self.pending[slot] = (off, n)
            self.copied.append((off, n))
            self.threads_seen.add(threading.get_ident())
        self.submitted.set()

    def _land(self, slot):
        if slot in self.pending:
            off, n = self.pending.pop(slot)
            self.dst[off:off + n] = self.slots[slot][:n]

    def synchronize(self):
        with self.lock:
            for slot in list(self.pending):
                self._land(slot)


class CountingBar:
    """A caller's bar that is not thread-safe: a lost update shows as a short count (the
    lanes' updates must be serialised, which _progress.bar does)."""

    def __init__(self):
        self.n = 0

    def update(self, k):
        n = self.n
        time.sleep(0)  # invite a thread switch between the read and the write
        self.n = n + k


def _source(nbytes, seed, misalign=7):
    buf = np.random.default_rng(seed).integers(0, 256, nbytes + misalign, dtype=np.uint8)
    return buf[misalign:]  # not page aligned


def _copy(src, chunk, *, registrars=(), alongside=False, stager=None, workers=2):
    """copy_in_lanes into one output (each lane writes its own fake's buffer, merged here)."""
    stager = stager or FakeStager(np.zeros(len(src), np.uint8))
    bar = CountingBar()
    try:
        with _progress.bar(len(src), "x", progress=bar) as shared:  # as to_device passes it
            _upload.copy_in_lanes(src, chunk, stager, list(registrars), alongside, shared,
                                  workers)
    finally:
        stager.synchronize()
    out = stager.dst.copy()
    hits = np.zeros(len(src), np.int64)  # how often each byte was copied
    for off, n in stager.copied:
        hits[off:off + n] += 1
    for r in registrars:
        for off, n in r.copied:
            out[off:off + n] = r.dst[off:off + n]
            hits[off:off + n] += 1
    assert (hits <= 1).all(), "a byte copied twice"
    return out, stager, bar


def _chunk_offsets(src, chunk):
    return [lo - src.ctypes.data for _pl, _ph, lo, _hi in
            _upload.page_spans(src.ctypes.data, len(src), chunk)]


def _chunk_of(src, chunk, off):
    return max(i for i, o in enumerate(_chunk_offsets(src, chunk)) if o <= off)


def test_chunk_claims_meet_in_the_middle_and_serve_returned_chunks_first():
    claims = _upload.ChunkClaims(5)
    assert [claims.front(), claims.back(), claims.front(), claims.back()] == [0, 4, 1, 3]
    claims.give_back(1)
    assert claims.back() == 1  # a chunk given back goes before the rest
    assert claims.front() == 2 and claims.front() is None and claims.back() is None
    claims.give_back(2)
    assert claims.front() is None and claims.back() == 2  # only the staging lane retakes it
    empty = _upload.ChunkClaims(0)
    assert empty.front() is None and empty.back() is None
    closed = _upload.ChunkClaims(3)
    closed.give_back(0)
    closed.close()
    assert closed.front() is None and closed.back() is None


@pytest.mark.parametrize("nbytes, chunk, piece, workers", [
    (0, 8, 4096, 2), (1, 8, 4096, 1), (1000, 64, 4096, 1), (1000, 3000, 300, 1),
    (4096 * 9 + 17, 4096 * 4, 1000, 3),
    (4096 * 9 + 17, 4096 * 2, 4096, 8), (4096 * 9 + 17, 4096, 1 << 20, 2),
    (4096 * 40 + 3, 4096 * 8, 777, 4)])
def test_staged_upload_moves_every_byte(monkeypatch, nbytes, chunk, piece, workers):
    monkeypatch.setattr(_upload, "MIN_PARALLEL_BYTES", 1)
    monkeypatch.setattr(_upload, "STAGING_PIECE_BYTES", piece)
    src = _source(nbytes, nbytes)
    out, stager, bar = _copy(src, chunk, workers=workers)
    np.testing.assert_array_equal(out, src)  # every byte once (_copy), none lost or stale
    assert bar.n == nbytes
    assert all(n <= piece for _off, n in stager.copied)
    assert all(_chunk_of(src, chunk, off) == _chunk_of(src, chunk, off + n - 1)
               for off, n in stager.copied)  # a piece never spans two chunks
    assert set(stager.slots) <= {(w, k) for w in range(workers)
                                 for k in range(_upload.STAGING_DEPTH)}
    if workers == 1:  # one thread: in file order, its slots taken in turn
        assert [off for off, _n in stager.copied] == sorted(off for off, _n in stager.copied)
        assert len(stager.slots) == min(_upload.STAGING_DEPTH, len(stager.copied))


def test_fill_threads_default_to_the_usable_cpus(monkeypatch):
    """Without `workers`, one fill thread per CPU this process may use (its affinity mask)."""
    monkeypatch.setattr(_upload, "MIN_PARALLEL_BYTES", 1)
    monkeypatch.setattr(_upload, "STAGING_PIECE_BYTES", 1000)
    monkeypatch.setattr(_upload, "usable_cpus", lambda: 1)
    src = _source(20 * PAGE, 10)
    out, stager, _bar = _copy(src, 4 * PAGE, workers=None)
    np.testing.assert_array_equal(out, src)
    assert stager.threads_seen == {threading.get_ident()}  # one: the caller's own thread


def test_the_fill_threads_work_at_once(monkeypatch):
    """Two fill threads: the first to submit waits at a barrier until the other submits too
    (a lane that filled with one thread at a time would break the barrier)."""
    monkeypatch.setattr(_upload, "MIN_PARALLEL_BYTES", 1)
    monkeypatch.setattr(_upload, "STAGING_PIECE_BYTES", 1000)
    src = _source(20 * PAGE, 9)
    stager = FakeStager(np.zeros(len(src), np.uint8), meet=threading.Barrier(2, timeout=10))
    out, stager, _bar = _copy(src, 4 * PAGE, stager=stager, workers=2)
    np.testing.assert_array_equal(out, src)
    assert len(stager.threads_seen) == 2


@pytest.mark.parametrize("nbytes, chunk", [(1, PAGE), (3 * PAGE + 5, PAGE), (20 * PAGE + 1, 3 * PAGE),
                                           (5 * PAGE, 64 * PAGE)])
def test_registered_upload_moves_every_byte_and_unlocks_everything(nbytes, chunk):
    src = _source(nbytes, nbytes)
    ops = FakeRegistrar(nbytes)
    out, stager, bar = _copy(src, chunk, registrars=[ops])
    np.testing.assert_array_equal(out, src)
    assert bar.n == nbytes
    assert [off for off, _n in ops.copied] == _chunk_offsets(src, chunk)  # front to back
    assert not stager.slots  # no staging buffer was made
    assert not ops.locked and not ops.pending
    assert ops.max_locked <= _upload.REGISTERED_IN_FLIGHT


@pytest.mark.parametrize("refuse_at", [0, 1, 4])
@pytest.mark.parametrize("alongside", [False, True])
def test_a_refused_chunk_and_the_rest_go_through_the_staging_buffers(refuse_at, alongside):
    nbytes, chunk = 10 * PAGE + 3, 2 * PAGE
    src = _source(nbytes, refuse_at)
    ops = FakeRegistrar(nbytes, refuse_at=refuse_at)
    stager = FakeStager(np.zeros(nbytes, np.uint8), after=ops if alongside else None)
    out, stager, bar = _copy(src, chunk, registrars=[ops], alongside=alongside, stager=stager)
    np.testing.assert_array_equal(out, src)
    assert bar.n == nbytes
    offsets = _chunk_offsets(src, chunk)
    assert len(ops.copied) <= refuse_at  # then the refused chunk went to the staging lane
    assert offsets[refuse_at] in [off for off, _n in stager.copied]
    assert not ops.locked and not ops.pending


@pytest.mark.parametrize("nbytes, chunk", [(2 * PAGE, PAGE), (40 * PAGE + 9, 3 * PAGE),
                                           (64 * PAGE, PAGE)])
def test_mixed_upload_shares_the_chunks_between_the_lanes(monkeypatch, nbytes, chunk):
    monkeypatch.setattr(_upload, "MIN_PARALLEL_BYTES", 1)
    src = _source(nbytes, nbytes + 1)
    stager = FakeStager(np.zeros(nbytes, np.uint8))
    ops = FakeRegistrar(nbytes, hold=(1, stager.submitted))  # its 2nd chunk waits for the stager
    stager.after = ops  # whose 1st waits for the registrar: each lane takes a chunk
    out, stager, bar = _copy(src, chunk, registrars=[ops], alongside=True, stager=stager,
                             workers=2)  # one fill thread beside the registration
    np.testing.assert_array_equal(out, src)  # every byte once (_copy)
    assert bar.n == nbytes
    assert ops.copied and stager.copied  # both lanes took chunks
    assert ops.copied == sorted(ops.copied)  # registration from the front
    staged_chunks = [_chunk_of(src, chunk, off) for off, _n in stager.copied]
    assert staged_chunks == sorted(staged_chunks, reverse=True)  # staging from the back
    assert not ops.locked and not ops.pending


@pytest.fixture
def lanes_closed(monkeypatch):
    """An event set once a failing lane has closed the upload's chunk hand-out."""
    closed = threading.Event()
    real_close = _upload.ChunkClaims.close

    def close(self):
        real_close(self)
        closed.set()

    monkeypatch.setattr(_upload.ChunkClaims, "close", close)
    return closed


@pytest.mark.parametrize("alongside", [False, True])
def test_a_failed_registered_copy_stops_the_upload_and_unlocks_everything(alongside,
                                                                          lanes_closed):
    nbytes = 30 * PAGE
    src = _source(nbytes, 3)
    ops = FakeRegistrar(nbytes, fail_copy_at=3)
    # alongside, the staging lane's second chunk waits until the failure has closed the hand-out
    stager = FakeStager(np.zeros(nbytes, np.uint8), after=ops if alongside else None,
                        hold=(1, lanes_closed) if alongside else None)
    with pytest.raises(OSError, match="copy failed"):
        _copy(src, PAGE, registrars=[ops], alongside=alongside, stager=stager)
    assert not ops.locked and not ops.pending  # queued copies waited for, every page unlocked
    # the staging lane took at most the two pieces it had claimed before the failure (none
    # when the registration lane failed before it started)
    assert len(ops.copied) == 3 and len(stager.copied) <= (2 if alongside else 0)
    assert not any(t.name == "robocache-upload-registration" for t in threading.enumerate())


def test_a_failed_staging_transfer_stops_the_registration_lane(lanes_closed):
    nbytes = 200 * PAGE
    src = _source(nbytes, 4)
    ops = FakeRegistrar(nbytes, hold=(3, lanes_closed))  # its 4th chunk waits for the failure
    stager = FakeStager(np.zeros(nbytes, np.uint8), after=ops, fail_submit_at=1)
    with pytest.raises(OSError, match="submit failed"):
        _copy(src, PAGE, registrars=[ops], alongside=True, stager=stager)
    assert not ops.locked and not ops.pending
    assert 1 <= len(ops.copied) <= 4  # at most the chunk it held at the failure, none after
    assert not any(t.name == "robocache-upload-registration" for t in threading.enumerate())


def test_an_interrupted_wait_for_the_lanes_stops_them_first(monkeypatch, lanes_closed):
    """Ctrl-C while the upload waits for a registration lane: the lane takes no further chunk,
    its queued copies finish and its pages are unlocked before the interruption propagates."""
    interrupted = []

    class InterruptedOnce(threading.Thread):
        def join(self, timeout=None):
            if not interrupted:
                interrupted.append(True)
                raise KeyboardInterrupt
            super().join(timeout)

    monkeypatch.setattr(_upload.threading, "Thread", InterruptedOnce)
    nbytes = 50 * PAGE
    ops = FakeRegistrar(nbytes, hold=(1, lanes_closed))  # its 2nd chunk waits for the stop
    with pytest.raises(KeyboardInterrupt):
        _copy(_source(nbytes, 6), PAGE, registrars=[ops])
    assert interrupted and len(ops.copied) == 2  # the chunk it held, none after
    assert not ops.locked and not ops.pending
    assert not any(t.name == "robocache-upload-registration" for t in threading.enumerate())


@pytest.fixture
def cpu_as_cuda(monkeypatch):
    """to_device's device resolved to the CPU and its memory check off, so that its CUDA
    wiring runs here with the output a CPU tensor; returns torch."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(_upload, "_cuda_device", lambda d: torch.device("cpu", 0))
    monkeypatch.setattr(_upload, "check_device_memory", lambda *a, **k: None)
    return torch


@pytest.fixture
def fake_staging(cpu_as_cuda, monkeypatch):
    """cpu_as_cuda with the staging lane's transfers made by FakeStager."""
    monkeypatch.setattr(_upload, "_cuda_stager", lambda dst, dev: FakeStager(dst.numpy()))


@pytest.mark.parametrize("method", ["staged", "registered", "mixed"])
def test_to_device_runs_the_lanes_of_each_method(cpu_as_cuda, monkeypatch, method):
    """to_device's wiring, with the CUDA lanes replaced by the host fakes writing into the
    output tensor: the method picks the lanes, every byte arrives, and the lanes are
    synchronised before it returns (a fake transfer lands only when waited for)."""
    torch = cpu_as_cuda
    made = {}

    def registrars(dst, dev, lanes):
        made["registrars"] = [FakeRegistrar(dst.numel(), dst=dst.numpy()) for _ in range(lanes)]
        return made["registrars"]

    def stager(dst, dev):  # made after the registrars; waits until the first one started
        made["stager"] = FakeStager(dst.numpy(), after=next(iter(made["registrars"]), None))
        return made["stager"]

    monkeypatch.setattr(_upload, "_cuda_registrars", registrars)
    monkeypatch.setattr(_upload, "_cuda_stager", stager)
    a = np.random.default_rng(5).standard_normal((3001, 7)).astype(np.float32)[1:]
    report = {}
    out = _upload.to_device(a, "cuda", chunk_bytes=3 * PAGE, method=method, progress=False,
                            report=report)
    assert out.dtype == torch.float32 and tuple(out.shape) == a.shape
    np.testing.assert_array_equal(out.numpy(), a)
    lanes, alongside = _upload.METHODS[method]
    assert len(made["registrars"]) == lanes
    assert all(r.copied and not r.locked for r in made["registrars"])
    if not alongside:  # the staging lane copies all or (no refusal here) nothing
        assert bool(made["stager"].copied) == (lanes == 0)
    # the report says what ran: the bytes the registration lanes moved, the stager's ways
    moved = sum(n for r in made["registrars"] for _off, n in r.copied)
    assert report == {"submit": "torch", "read": "copy", "registration_lanes": lanes,
                      "registered_bytes": moved}
    lo, hi = {"staged": (0, 0), "registered": (a.nbytes, a.nbytes), "mixed": (1, a.nbytes)}[method]
    assert lo <= moved <= hi


@pytest.fixture
def host_cuda(cpu_as_cuda, monkeypatch):
    """torch.cuda's streams, events and pinned allocation replaced by host stand-ins and
    to_device's device by the CPU, so the CUDA lanes' own code runs on this machine (copies
    are plain synchronous CPU copies). Records the stream contexts entered, the events and
    the pinned buffers ((address, bytes))."""
    torch = cpu_as_cuda
    entered, events, pinned = [], [], []
    handles = iter(range(100, 1 << 30))

    class Stream:  # each a handle of its own; the caller's (default) stream is 0
        def __init__(self, device=None, handle=None):
            self.cuda_stream = next(handles) if handle is None else handle
            self.synchronized = False

        def __cuda_stream__(self):  # the protocol CuPy's Stream.from_external reads
            return (0, self.cuda_stream)

        def wait_stream(self, other):
            pass

        def synchronize(self):
            self.synchronized = True

    class Event:
        def __init__(self):
            self.recorded = 0
            events.append(self)

        def record(self, stream):
            assert isinstance(stream, Stream)
            self.recorded += 1

        def synchronize(self):
            assert self.recorded, "waited for an event never recorded"

    @contextlib.contextmanager
    def stream_context(stream):
        entered.append(threading.get_ident())
        yield

    real_empty = torch.empty

    def empty(*args, pin_memory=False, **kwargs):
        t = real_empty(*args, **kwargs)
        if pin_memory:
            pinned.append((t.data_ptr(), t.numel() * t.element_size()))
        return t

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "stream", stream_context)
    default = Stream(handle=0)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: default)
    monkeypatch.setattr(torch, "empty", empty)
    return types.SimpleNamespace(entered=entered, events=events, pinned=pinned, Stream=Stream)


def _memmapped(tmp_path, a):
    np.save(tmp_path / "a.npy", a)
    return np.load(tmp_path / "a.npy", mmap_mode="r")


def test_torch_staging_ops_on_a_host_stand_in(host_cuda, monkeypatch, tmp_path):
    """The real _TorchStaging (STAGING_SUBMIT "torch": pinned buffers per slot, the side stream
    made current once per fill thread, copy_ + an event per piece) with torch.cuda's streams
    and events replaced by host stand-ins and the output on the CPU, so its code runs here: a
    memory-mapped source arrives whole, each fill worker enters the stream context once, and
    every event waited for was recorded."""
    entered, events = host_cuda.entered, host_cuda.events
    monkeypatch.setattr(_upload, "STAGING_SUBMIT", "torch")
    monkeypatch.setattr(_upload, "MIN_PARALLEL_BYTES", 1)
    monkeypatch.setattr(_upload, "STAGING_PIECE_BYTES", 3 * PAGE + 5)
    a = np.random.default_rng(8).standard_normal((20_001, 3)).astype(np.float32)
    out = _upload.to_device(_memmapped(tmp_path, a), "cuda", chunk_bytes=16 * PAGE, workers=3,
                            progress=False)
    np.testing.assert_array_equal(out.numpy(), a)
    pieces = sum(e.recorded for e in events)
    assert pieces >= 15 and len(entered) == 3  # the context once per fill worker, not per piece
    assert all(e.recorded for e in events)


class HostRuntime:
    """CuPy's runtime calls that _CudaRegisterOps and _CupyStaging make, on the host: page
    locking recorded (the k-th registration refused when asked), copies made with memmove
    from locked pages or pinned buffers only, never on the caller's stream (handle 0), the
    streams of each kind recorded, events recorded before they are waited for."""

    cudaDevAttrHostRegisterReadOnlySupported = 1
    cudaDevAttrAsyncEngineCount = 2
    memcpyHostToDevice = 1

    class CUDARuntimeError(RuntimeError):
        pass

    def __init__(self, refuse_at=None, pinned=(), reachable=True):
        self.locked: dict[int, int] = {}
        self.pinned, self.reachable = pinned, reachable
        self.staging_streams: set[int] = set()  # streams of copies from pinned buffers
        self.registered_streams: set[int] = set()  # streams of copies from locked pages
        self.registrations = self.copies = self.staged = 0
        self.refuse_at = refuse_at
        self.started = threading.Event()  # set at the first registration
        self.recorded: dict[int, int] = {}  # event -> times recorded
        self.devices_entered: list[int] = []  # thread idents
        self._lock = threading.Lock()  # fill threads call at once: counts must not lose updates

    def deviceGetAttribute(self, attr, device):
        if not self.reachable:
            raise self.CUDARuntimeError("cudaErrorInsufficientDriver")
        return 1

    def hostRegister(self, ptr, n, flags):
        self.started.set()
        k, self.registrations = self.registrations, self.registrations + 1
        assert flags == _upload._CudaRegisterOps.READ_ONLY
        if k == self.refuse_at:
            raise self.CUDARuntimeError("cudaErrorHostMemoryAlreadyRegistered")
        assert ptr % PAGE == 0 and n % PAGE == 0 and ptr not in self.locked
        self.locked[ptr] = n

    def hostUnregister(self, ptr):
        del self.locked[ptr]

    def memcpyAsync(self, dst, src, n, kind, stream):
        assert kind == self.memcpyHostToDevice and n > 0
        inside = [p <= src and src + n <= p + m for p, m in self.locked.items()]
        from_pinned = any(p <= src and src + n <= p + m for p, m in self.pinned)
        assert any(inside) or from_pinned, "a copy from memory neither locked nor pinned"
        assert stream != 0, "a copy queued on the caller's stream"
        with self._lock:
            if from_pinned:  # the staging lane's
                self.staging_streams.add(stream)
                self.staged += 1
            else:
                self.registered_streams.add(stream)
                self.copies += 1
        ctypes.memmove(dst, src, n)

    def eventRecord(self, event, stream):
        assert stream in self.staging_streams | self.registered_streams, \
            "an event recorded on a stream no copy went to"
        with self._lock:
            self.recorded[event] = self.recorded.get(event, 0) + 1

    def eventSynchronize(self, event):
        assert self.recorded.get(event), "waited for an event never recorded"


def host_cupy(rt: HostRuntime):
    """A stand-in for the `cupy` module over `rt`: events with addresses, a Device context that
    records the threads entering it, streams wrapped from torch's."""
    serial = iter(range(1, 1 << 30))

    class Event:
        def __init__(self, disable_timing=False):
            self.ptr = next(serial)

        def record(self, stream):
            rt.eventRecord(self.ptr, stream.ptr)

        def synchronize(self):
            rt.eventSynchronize(self.ptr)

    class Device:  # reusable, like CuPy's
        def __init__(self, index):
            pass

        def __enter__(self):
            rt.devices_entered.append(threading.get_ident())

        def __exit__(self, *exc):
            pass

    stream = types.SimpleNamespace(  # CuPy reads the __cuda_stream__ protocol of torch's
        from_external=lambda s: types.SimpleNamespace(ptr=s.__cuda_stream__()[1]))
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=rt, Event=Event,
                                                            Device=Device, Stream=stream))


STAGERS = {"cupy": "_CupyStaging", "torch": "_TorchStaging"}


def test_runtime_staging_ops_on_a_host_stand_in(host_cuda, monkeypatch, tmp_path):
    """The real _CupyStaging (the shipped STAGING_SUBMIT: each piece queued by CuPy's
    runtime calls) with CuPy replaced by HostRuntime and torch.cuda by host stand-ins: a
    memory-mapped source arrives whole, every copy reads a pinned buffer and goes to the side
    stream, every event waited for was recorded, and each fill worker makes the device current
    once, not per piece."""
    rt = HostRuntime(pinned=host_cuda.pinned)
    monkeypatch.setitem(sys.modules, "cupy", host_cupy(rt))
    assert _upload.STAGING_SUBMIT == "cupy"
    monkeypatch.setattr(_upload, "MIN_PARALLEL_BYTES", 1)
    monkeypatch.setattr(_upload, "STAGING_PIECE_BYTES", 3 * PAGE + 5)
    a = np.random.default_rng(10).integers(0, 255, (70_001,), dtype=np.uint8)
    report = {}
    out = _upload.to_device(_memmapped(tmp_path, a), "cuda", chunk_bytes=4 * PAGE, workers=3,
                            progress=False, report=report)
    np.testing.assert_array_equal(out.numpy(), a)
    assert report == {"submit": "cupy", "read": "pread", "registration_lanes": 0,
                      "registered_bytes": 0}
    assert rt.staged >= 5 and rt.copies == 0 and not host_cuda.events  # no torch event
    assert len(rt.staging_streams) == 1  # one side stream for every fill thread
    assert len(rt.devices_entered) == 3  # once per fill worker
    assert sum(rt.recorded.values()) == rt.staged


@pytest.mark.parametrize("cupy_state", ["missing", "unreachable"])
def test_runtime_staging_falls_back_to_torch(host_cuda, monkeypatch, cupy_state):
    """Without CuPy, or with a CuPy whose runtime cannot reach the device (a CUDA build the
    driver is too old for), the staging lane queues its pieces with torch's copy_."""
    torch = pytest.importorskip("torch")
    rt = HostRuntime(reachable=False)
    monkeypatch.setitem(sys.modules, "cupy", None if cupy_state == "missing" else host_cupy(rt))
    dst = torch.empty(10, dtype=torch.uint8)
    assert type(_upload._cuda_stager(dst, torch.device("cpu", 0))) is _upload._TorchStaging
    a = np.arange(5000, dtype=np.int16)
    np.testing.assert_array_equal(_upload.to_device(a, "cuda", progress=False).numpy(), a)
    assert host_cuda.events  # the pieces went through torch's copy_ and events


@pytest.mark.parametrize("submit", ["cupy", "torch"])
@pytest.mark.parametrize("method, refuse_at", [("registered", None), ("registered", 2),
                                               ("mixed", None), ("mixed", 1)])
def test_cuda_registration_ops_on_a_host_stand_in(host_cuda, monkeypatch, tmp_path, method,
                                                  refuse_at, submit):
    """The real _CudaRegisterOps in its lane thread, beside the real staging lane of either
    way of submitting, with CuPy's runtime replaced by HostRuntime and torch.cuda by host
    stand-ins: every byte arrives, every page is unlocked, copies read only locked pages or
    pinned buffers, and a refused chunk and the rest go through the staging buffers."""
    rt = HostRuntime(refuse_at, pinned=host_cuda.pinned)
    monkeypatch.setitem(sys.modules, "cupy", host_cupy(rt))
    monkeypatch.setattr(_upload, "STAGING_SUBMIT", submit)
    stager_class = getattr(_upload, STAGERS[submit])
    real_submit = stager_class.submit

    def submit_once_registration_started(self, slot, off, n):  # both lanes of "mixed" work
        assert rt.started.wait(10)
        real_submit(self, slot, off, n)

    monkeypatch.setattr(stager_class, "submit", submit_once_registration_started)
    monkeypatch.setattr(_upload, "MIN_PARALLEL_BYTES", 1)
    monkeypatch.setattr(_upload, "STAGING_PIECE_BYTES", 2 * PAGE)
    a = np.random.default_rng(9).integers(-2**40, 2**40, (9_001, 5), dtype=np.int64)
    report = {}
    out = _upload.to_device(_memmapped(tmp_path, a), "cuda", chunk_bytes=4 * PAGE, workers=2,
                            method=method, progress=False, report=report)
    np.testing.assert_array_equal(out.numpy(), a)
    assert rt.copies >= 1 and not rt.locked
    assert len(rt.registered_streams) == 1 and not rt.registered_streams & rt.staging_streams
    assert report["submit"] == submit and report["registration_lanes"] == 1
    assert 0 < report["registered_bytes"] <= a.nbytes
    staged = rt.staged if submit == "cupy" else sum(e.recorded for e in host_cuda.events)
    if refuse_at is not None:
        assert rt.copies <= refuse_at and staged >= 1  # the rest went through the staging


def test_registration_falls_back_where_cupy_cannot_wrap_the_stream(host_cuda, monkeypatch,
                                                                   tmp_path):
    """A torch without the __cuda_stream__ protocol (CuPy's from_external then raises
    AttributeError): no registration lane, the staging lane copies everything."""
    rt = HostRuntime(pinned=host_cuda.pinned)
    monkeypatch.setitem(sys.modules, "cupy", host_cupy(rt))
    monkeypatch.delattr(host_cuda.Stream, "__cuda_stream__")
    a = np.arange(20_000, dtype=np.int32)
    report = {}
    out = _upload.to_device(_memmapped(tmp_path, a), "cuda", method="registered",
                            progress=False, report=report)
    np.testing.assert_array_equal(out.numpy(), a)
    assert report["registration_lanes"] == 0 and rt.copies == 0 and rt.staged >= 1


def test_method_is_checked():
    with pytest.raises(ValueError, match=r"method: expected one of \('staged', 'registered', "
                                         r"'mixed'\), got 'pinned'"):
        _upload.to_device(np.zeros(3), "cpu", method="pinned")


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


# --- the staging lane reading a memory-mapped file with pread ---------------------------------


@pytest.fixture(params=["map_files", "maps"])
def mapped_id(request, monkeypatch):
    """How FileRegion identifies the mapped file: the stat of its /proc/self/map_files link
    (processes with CAP_SYS_ADMIN, like root here), or - where that stat is refused (EPERM: an
    ordinary user, root in a container) - its /proc/self/maps line. Yields the maps look-ups."""
    used = []
    if request.param == "maps":
        real_stat, real_maps = os.stat, _mapped.maps_file_id

        def stat(path, *args, **kwargs):
            if str(path).startswith("/proc/self/map_files/"):
                raise PermissionError(1, "Operation not permitted", str(path))
            return real_stat(path, *args, **kwargs)

        def maps(start, end):
            used.append(start)
            return real_maps(start, end)

        monkeypatch.setattr(os, "stat", stat)
        monkeypatch.setattr(_mapped, "maps_file_id", maps)
    yield used
    assert bool(used) == (request.param == "maps")


def test_file_region_of_memmaps_and_their_views(tmp_path, mapped_id):
    """A read-only memmap of a file, and contiguous views of one (slices, dtype views, NumPy's
    ascontiguousarray), read back the array's own bytes from the file; anything else - a
    strided view, copy-on-write or writable maps, plain arrays - has no region."""
    a = np.random.default_rng(3).standard_normal((1000, 3)).astype(np.float32)
    m = _memmapped(tmp_path, a)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"x" * 4099 + a.tobytes())
    at_offset = np.memmap(raw, dtype=np.float32, mode="r", offset=4099, shape=a.shape)
    for view, want in ((m, a), (m[7:], a[7:]), (np.ascontiguousarray(m[3:10]), a[3:10]),
                       (m.view(np.uint8).reshape(-1)[5:], a.view(np.uint8).reshape(-1)[5:]),
                       (at_offset[1:], a[1:])):
        region = _upload.FileRegion.of(view)
        assert region is not None
        try:
            got = np.empty(want.nbytes + 3, np.uint8)
            region.read_into(got, 0, want.nbytes)
            np.testing.assert_array_equal(got[:want.nbytes], want.reshape(-1).view(np.uint8))
        finally:
            region.close()
    np.save(tmp_path / "b.npy", a)
    for other in (m[:, 1], a, np.load(tmp_path / "b.npy", mmap_mode="c"),
                  np.load(tmp_path / "b.npy", mmap_mode="r+")):
        assert _upload.FileRegion.of(other) is None


def _counting_preads(monkeypatch):
    calls = []
    real = os.preadv

    def preadv(fd, buffers, offset):
        calls.append(offset)
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", preadv)
    return calls


def test_a_file_replaced_since_it_was_mapped_is_not_read(fake_staging, tmp_path, monkeypatch,
                                                          mapped_id):
    """A memmap keeps the file it mapped; a new file at its path (e.g. the cache saved again
    meanwhile) is another inode, so the upload copies the mapped pages instead of reading it:
    the array's own bytes arrive, not the new file's."""
    a = np.arange(50_000, dtype=np.int64)
    m = _memmapped(tmp_path, a)
    assert _upload.FileRegion.of(m) is not None
    np.save(tmp_path / "new.npy", -a)
    (tmp_path / "new.npy").replace(tmp_path / "a.npy")
    assert _upload.FileRegion.of(m) is None
    calls = _counting_preads(monkeypatch)
    out = _upload.to_device(m, "cuda", progress=False)
    np.testing.assert_array_equal(out.numpy(), a)
    assert not calls


@pytest.mark.parametrize("read", ["pread", "copy"])
def test_staging_lane_reads_the_file_or_copies_the_pages(fake_staging, tmp_path, monkeypatch, read):
    """STAGING_READ "pread": a memmap's pieces come from the file (every piece, 3 fill threads,
    a view that starts mid-page); "copy": from the mapped pages. The same bytes either way."""
    monkeypatch.setattr(_upload, "STAGING_READ", read)
    monkeypatch.setattr(_upload, "MIN_PARALLEL_BYTES", 1)
    monkeypatch.setattr(_upload, "STAGING_PIECE_BYTES", 2 * PAGE + 9)
    closed = []
    real_close = _upload.FileRegion.close
    monkeypatch.setattr(_upload.FileRegion, "close",
                        lambda self: (closed.append(self.path), real_close(self)))
    calls = _counting_preads(monkeypatch)
    a = np.random.default_rng(4).standard_normal((30_001, 3)).astype(np.float32)
    m = _memmapped(tmp_path, a)[11:]
    out = _upload.to_device(m, "cuda", chunk_bytes=8 * PAGE, workers=3, progress=False)
    np.testing.assert_array_equal(out.numpy(), a[11:])
    pieces = -(-a[11:].nbytes // (2 * PAGE + 9))
    if read == "pread":
        assert len(calls) >= pieces and closed == [str(tmp_path / "a.npy")]
    else:
        assert not calls and not closed


def test_a_file_truncated_since_it_was_mapped_fails_cleanly(fake_staging, tmp_path, monkeypatch,
                                                            mapped_id):
    """Touching a map past the end of its (since truncated) file kills the process (SIGBUS);
    read from the file, the upload fails with an error naming it, and the file is closed."""
    a = np.arange(400_000, dtype=np.float32)
    m = _memmapped(tmp_path, a)
    os.truncate(tmp_path / "a.npy", 128 + a.nbytes // 2)
    opened = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    with pytest.raises(OSError, match=r"a\.npy: ends at byte .*truncated since it was mapped"):
        _upload.to_device(m, "cuda", chunk_bytes=64 * PAGE, progress=False)
    if opened is not None:
        assert len(os.listdir("/proc/self/fd")) == opened


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
@pytest.mark.parametrize("read", ["pread", "copy"])
@pytest.mark.parametrize("submit", ["cupy", "torch"])
def test_cuda_upload_of_a_memmap(tmp_path, monkeypatch, submit, read):
    """The staging lane with each way of filling a piece (reading the file, copying the mapped
    pages) and of queueing it (the CuPy one is what ships where CuPy reaches the device, as on
    the GPU machine): 16 threads, pieces of a few pages so that every slot is used many times,
    a misaligned view of a memmap; the same bytes."""
    import torch

    monkeypatch.setattr(_upload, "STAGING_SUBMIT", submit)
    monkeypatch.setattr(_upload, "STAGING_READ", read)
    monkeypatch.setattr(_upload, "STAGING_PIECE_BYTES", 5 * PAGE + 3)
    dst = torch.empty(8, dtype=torch.uint8, device="cuda")
    stager = _upload._cuda_stager(dst, dst.device)
    assert type(stager) is getattr(_upload, STAGERS[submit])
    a = np.random.default_rng(1).standard_normal((300_000, 16)).astype(np.float32)
    m = _memmapped(tmp_path, a)
    t = _upload.to_device(m, "cuda", chunk_bytes=1 << 20, workers=16)
    np.testing.assert_array_equal(t.cpu().numpy(), a)
    u = _upload.to_device(m[7:], "cuda", chunk_bytes=3 * PAGE, workers=3)
    np.testing.assert_array_equal(u.cpu().numpy(), a[7:])
    assert torch.cuda.current_stream().query()



@gpu
@needs_gpu
@pytest.mark.parametrize("method", ["registered", "mixed"])
def test_cuda_registered_upload_of_a_memmap(tmp_path, method):
    """method="registered" / "mixed": the memmap's page cache pages locked in place and copied
    (or, where the driver refuses, the staging buffers), mixed with the staging lane working
    from the other end; the same bytes either way, and no CUDA error left behind for torch's
    next launch to report."""
    import torch

    a = np.random.default_rng(2).standard_normal((300_001, 5)).astype(np.float32)
    m = _memmapped(tmp_path, a)
    t = _upload.to_device(m, "cuda", chunk_bytes=1 << 20, method=method)
    np.testing.assert_array_equal(t.cpu().numpy(), a)
    heap = np.arange(100_003, dtype=np.int64)
    u = _upload.to_device(heap, "cuda", chunk_bytes=4096 * 3, method=method)
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
@pytest.mark.parametrize("submit", ["cupy", "torch"])
def test_cuda_upload_error_leaves_no_copy_in_flight(monkeypatch, submit):
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
    stager_class = getattr(_upload, STAGERS[submit])
    real_submit = stager_class.submit

    def failing_submit(self, slot, off, n):
        calls.append(n)
        if len(calls) == 3:
            raise OSError("simulated read error")
        real_submit(self, slot, off, n)

    monkeypatch.setattr(torch.cuda, "Stream", recording_stream)
    monkeypatch.setattr(stager_class, "submit", failing_submit)
    monkeypatch.setattr(_upload, "STAGING_SUBMIT", submit)
    monkeypatch.setattr(_upload, "STAGING_PIECE_BYTES", 256 << 20)
    a = np.ones(3 * (256 << 20), np.uint8)  # two 256 MB copies queued (~5 ms each) when it fails
    with pytest.raises(OSError, match="simulated"):
        _upload.to_device(a, "cuda", chunk_bytes=256 << 20, workers=1)
    # torch also builds Stream objects for its current-stream queries: count the side streams
    current = torch.cuda.current_stream().cuda_stream
    side = [s for s in streams if s.cuda_stream != current]
    assert len(side) == 1 and side[0].query()


def test_progress_can_be_a_caller_owned_bar():
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
    for bad in ("yes", 1):  # neither a choice nor a bar: said, not taken as True
        with pytest.raises(TypeError, match="progress: expected None, True, False or a bar"):
            _progress.bar(100, "x", progress=bad)


def test_progress_bars_count_every_update_from_several_threads():
    counting = CountingBar()  # loses updates unless they are serialised
    with _progress.bar(8000, "x", progress=counting) as shared:
        threads = [threading.Thread(target=lambda: [shared.update(1) for _ in range(1000)])
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert counting.n == 8000
