"""Dataset load throughput: LeRobot-style parquet -> arrays (-> GPU), and RoboCache's own cache.

    python benchmarks/bench_load.py [--quick] [--json out.json]

Generates a LeRobot v3.0-style numeric dataset in a temporary directory (~1 GB of feature data
in full mode, ~25 MB quick: observation.state float32[64], action float32[32] and LeRobot's
bookkeeping columns, ~100 MB snappy parquet files with one row group per episode, episodes of
200-400 frames), then measures, from the page cache unless said otherwise (one untimed run
first, best of a few timed runs):

- read_lerobot -> contiguous host arrays, beside the usual per-row route to the same arrays
  (Arrow column -> NumPy object array of rows -> np.stack, what a datasets-based loader does);
- write_cache, and read_cache with and without SHA-256 verification (the mapped pages are
  touched, so the bytes really are read);
- the upload's fill alone (no transfer) with the shipped staging pieces and others, reading the
  files with pread and copying their mapped pages, beside the fill as it was before the sixth
  session (one 64 MB double buffer split between the threads);
- with a GPU: read_lerobot + to_device (target >= 1 GB/s), and cache -> to_device with each
  upload method (staged through pinned buffers; the mapped pages registered in place; both
  lanes at once, "mixed"), plus other staging piece sizes, pieces queued by torch's copy_
  instead of CuPy's runtime calls, the mapped pages copied instead of read, chunk sizes and
  registration lane counts, beside a plain pinned host-to-device copy of the same size
  measured in the same run (target >= 80% of it);
- from a cold page cache (the cache files' pages dropped with posix_fadvise before each run,
  no untimed run): parallel 8 MB preads of the files (the disk's reference), the upload's fill
  and, with a GPU, the staged and mixed uploads.
GPU rows are skipped, with the reason printed, where there is no CUDA device.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _timing  # noqa: E402

STATE, ACTION = 64, 32
OTHER_PIECES_MB = (0.5, 2, 8, 64)  # staging piece sizes compared with the shipped one


def make_dataset(root: Path, frames: int, seed: int = 0) -> int:
    """A LeRobot v3.0 dataset of `frames` rows; returns the feature bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < frames:
        lengths.append(int(rng.integers(200, 401)))
    lengths[-1] -= sum(lengths) - frames
    if lengths[-1] <= 0:
        lengths.pop()
        lengths[-1] += frames - sum(lengths)
    lengths = np.asarray(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    row_bytes = (STATE + ACTION) * 4 + 4 + 4 * 8
    rows_per_file = max(1, (100 << 20) // row_bytes)
    # whole episodes per file, ~100 MB each (LeRobot's data_files_size_in_mb)
    data_file = np.cumsum(lengths) // rows_per_file
    data_file = np.concatenate([[0], data_file[:-1]])
    (root / "data/chunk-000").mkdir(parents=True)
    for f in np.unique(data_file):
        eps = np.flatnonzero(data_file == f)
        a, b = int(starts[eps[0]]), int(starts[eps[-1]] + lengths[eps[-1]])
        n = b - a
        ep = np.repeat(eps, lengths[eps])
        fi = np.arange(a, b) - starts[ep]
        table = pa.table({
            "observation.state": pa.FixedSizeListArray.from_arrays(
                pa.array(rng.standard_normal(n * STATE, dtype=np.float32)), STATE),
            "action": pa.FixedSizeListArray.from_arrays(
                pa.array(rng.standard_normal(n * ACTION, dtype=np.float32)), ACTION),
            "timestamp": pa.array((fi / 30).astype(np.float32)),
            "frame_index": pa.array(fi.astype(np.int64)),
            "episode_index": pa.array(ep.astype(np.int64)),
            "index": pa.array(np.arange(a, b, dtype=np.int64)),
            "task_index": pa.array(np.zeros(n, np.int64)),
        })
        # one row group per episode, as a writer appending episode by episode produces
        with pq.ParquetWriter(root / f"data/chunk-000/file-{f:03d}.parquet",
                              table.schema) as w:
            for e in eps:
                w.write_table(table.slice(int(starts[e]) - a, int(lengths[e])))
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    E = len(lengths)
    pq.write_table(pa.table({
        "episode_index": pa.array(np.arange(E, dtype=np.int64)),
        "length": pa.array(lengths.astype(np.int64)),
        "data/chunk_index": pa.array(np.zeros(E, np.int64)),
        "data/file_index": pa.array(data_file),
        "dataset_from_index": pa.array(starts.astype(np.int64)),
        "dataset_to_index": pa.array((starts + lengths).astype(np.int64)),
    }), root / "meta/episodes/chunk-000/file-000.parquet")
    scalar = {"dtype": "int64", "shape": [1], "names": None}
    info = {"codebase_version": "v3.0", "fps": 30, "total_frames": frames,
            "total_episodes": E, "chunks_size": 1000,
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": None,
            "features": {"observation.state": {"dtype": "float32", "shape": [STATE]},
                         "action": {"dtype": "float32", "shape": [ACTION]},
                         "timestamp": {"dtype": "float32", "shape": [1], "names": None},
                         "frame_index": scalar, "episode_index": scalar, "index": scalar,
                         "task_index": scalar}}
    (root / "meta/info.json").write_text(json.dumps(info))
    return frames * (STATE + ACTION) * 4


def best_of(fn, repeat: int, *, before_each=None, warm: bool = True) -> tuple[float, object]:
    """The best time of `repeat` runs of fn and the last run's result: after one untimed run
    (`warm`: page cache, imports, thread pools), with before_each() called untimed before
    each timed run."""
    if warm:
        fn()
    best, out = float("inf"), None
    for _ in range(repeat):
        if before_each is not None:
            before_each()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def best_of_cold(fn, files, repeat: int) -> tuple[float, object] | tuple[None, None]:
    """best_of with the page cache of `files` dropped before each run (posix_fadvise
    DONTNEED: the cache's files are clean after write_cache's fsync, so their pages go and the
    run reads the disk). (None, None) where the platform has no posix_fadvise."""
    if not hasattr(os, "posix_fadvise"):
        return None, None

    def drop() -> None:
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    return best_of(fn, repeat, before_each=drop, warm=False)


def _read_files(files, block: int = 8 << 20) -> int:
    """The disk's read of `files`: `block`-byte preads spread over as many threads as the
    upload's fill uses (a virtual disk serves parallel requests faster than one stream), each
    into its own buffer. The reference for a load from a cold page cache."""
    from concurrent.futures import ThreadPoolExecutor

    from robocache import _upload

    jobs = [(f, off) for f in files for off in range(0, os.path.getsize(f), block)]
    local = threading.local()

    def read(job) -> int:
        f, off = job
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = bytearray(block)
        fd = os.open(f, os.O_RDONLY)
        try:
            return os.preadv(fd, [buf], off)
        finally:
            os.close(fd)

    threads = min(_upload.MAX_FILL_THREADS, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(read, jobs))


def _per_row_baseline(root: Path):
    import pyarrow.parquet as pq

    out = {}
    for f in sorted((root / "data").rglob("*.parquet")):
        t = pq.read_table(f, columns=["observation.state", "action"])
        for k in t.column_names:
            rows = t.column(k).to_numpy(zero_copy_only=False)  # object array of row arrays
            out.setdefault(k, []).append(np.stack(rows))
    return {k: np.concatenate(v) for k, v in out.items()}


def _touch(arrays) -> None:
    for a in arrays.values():
        flat = a.reshape(-1).view(np.uint8) if a.flags.c_contiguous else a
        flat[:: 4096].sum()  # one byte per page: maps every page of the file


def _cuda_usable() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


class _NoTransfer:
    """A StagingLane's operations with no device: a buffer per slot (pinned where CUDA is
    usable, plain elsewhere) that is filled and never sent."""

    def __init__(self, pinned: bool):
        self.pinned, self.slots = pinned, {}

    def buffer(self, slot, n: int) -> np.ndarray:
        buf = self.slots.get(slot)
        if buf is None or len(buf) < n:
            if self.pinned:
                import torch

                buf = torch.empty(n, dtype=torch.uint8, pin_memory=True).numpy()
            else:
                buf = np.empty(n, np.uint8)
            self.slots[slot] = buf
        return buf

    def worker(self):
        return contextlib.nullcontext()

    def wait(self, slot) -> None:
        pass

    def submit(self, slot, off: int, n: int) -> None:
        pass


def _cache_sources(cache_dir: Path) -> list[np.ndarray]:
    """The cache's arrays, freshly mapped, as flat bytes."""
    from robocache.formats import read_cache

    c = read_cache(cache_dir, verify=False, progress=False)
    arrays = [*c.arrays.values(), *([] if c.timestamps is None else [c.timestamps])]
    return [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays]


def _fill_only(cache_dir: Path, stager: _NoTransfer) -> None:
    """The host half of cache -> GPU: freshly mapped cache files copied piece by piece into the
    staging buffers by the upload's own staging lane (robocache._upload.copy_in_lanes, same
    chunks, pieces and threads, reading the files or copying their mapped pages as
    STAGING_READ says), with no transfer. Beside the full upload it tells whether the host side
    or the bus sets its pace. `stager` keeps its buffers from run to run (as torch's
    pinned-memory cache keeps the upload's)."""
    from robocache import _progress, _upload

    with _progress.bar(1, "fill", progress=False) as bar:
        for src in _cache_sources(cache_dir):
            with _upload.staging_region(src) as region:
                _upload.copy_in_lanes(src, _upload.DEFAULT_CHUNK_BYTES, stager, [], False, bar,
                                      None, region)


def _fill_split_baseline(cache_dir: Path, buffers: list[np.ndarray]) -> None:
    """The fill as the upload did it before the sixth session, the baseline of _fill_only: two
    64 MB buffers (`buffers`, kept from run to run) taken in turn, each chunk split between all
    the threads."""
    from concurrent.futures import ThreadPoolExecutor

    from robocache import _upload

    chunk = _upload.DEFAULT_CHUNK_BYTES
    threads = min(_upload.MAX_FILL_THREADS, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        for src in _cache_sources(cache_dir):
            for i, off in enumerate(range(0, len(src), chunk)):
                part, dst = src[off:off + chunk], buffers[i % 2]
                step = -(-len(part) // threads)
                list(pool.map(lambda a, d=dst, p=part, n=step: np.copyto(d[a:a + n], p[a:a + n]),
                              range(0, len(part), step)))


def run(quick: bool = False, rows: list | None = None) -> list[dict]:
    """The rows, appended to `rows` as each is measured (bench_main keeps what a stopped run
    finished)."""
    from robocache.formats import read_cache, read_lerobot, write_cache

    frames = 60_000 if quick else 2_600_000
    repeat = 2 if quick else 3
    rows = [] if rows is None else rows
    tmp = Path(tempfile.mkdtemp(prefix="rc-bench-load-"))
    try:
        t0 = time.perf_counter()
        nbytes = make_dataset(tmp / "lerobot", frames)
        print(f"generated {frames:,} frames ({nbytes / 1e9:.2f} GB of features) in "
              f"{time.perf_counter() - t0:.1f} s at {tmp}")
        from robocache import _cpus, _upload

        print(f"upload: {min(_upload.MAX_FILL_THREADS, _cpus.usable_cpus())} fill threads, "
              f"{_upload.STAGING_PIECE_BYTES / (1 << 20):g} MB staging pieces "
              f"(filled by {_upload.STAGING_READ}, queued by {_upload.STAGING_SUBMIT}), "
              f"{_upload.DEFAULT_CHUNK_BYTES >> 20} MB chunks")

        def lerobot():
            return read_lerobot(tmp / "lerobot", progress=False)

        t_ours, src = best_of(lerobot, repeat)
        got = sum(a.nbytes for a in src.arrays.values()) + src.timestamps.nbytes
        t_base, base = best_of(lambda: _per_row_baseline(tmp / "lerobot"), 1 if not quick else 2)
        for k in base:
            assert np.array_equal(base[k], src.arrays[k])
        rows.append({"name": "lerobot parquet -> host arrays", "bytes": got,
                     "seconds": t_ours, "GB/s": got / t_ours / 1e9,
                     "baseline": "per-row to_numpy + np.stack", "baseline_seconds": t_base,
                     "speedup": t_base / t_ours})

        t_write, _ = best_of(lambda: write_cache(tmp / "cache", src, overwrite=True,
                                                 progress=False), 1)
        rows.append({"name": "write_cache (sha256 + fsync)", "bytes": got, "seconds": t_write,
                     "GB/s": got / t_write / 1e9})
        for verify in (False, True):
            def load(verify=verify):
                c = read_cache(tmp / "cache", verify=verify, progress=False)
                _touch(c.arrays)
                return c

            t, _ = best_of(load, repeat)
            rows.append({"name": f"read_cache(verify={verify}) + touch pages", "bytes": got,
                         "seconds": t, "GB/s": got / t / 1e9})
        from robocache import _upload

        pinned = _cuda_usable()
        split = _NoTransfer(pinned)
        buffers = [split.buffer(k, _upload.DEFAULT_CHUNK_BYTES) for k in range(2)]
        t_split, _ = best_of(lambda: _fill_split_baseline(tmp / "cache", buffers), repeat)
        rows.append({"name": "cache -> one 64 MB double buffer (fill before)", "bytes": got,
                     "seconds": t_split, "GB/s": got / t_split / 1e9})
        shipped_mb = _upload.STAGING_PIECE_BYTES / (1 << 20)
        other_read = "copy" if _upload.STAGING_READ == "pread" else "pread"
        fills = [(shipped_mb, None), (shipped_mb, other_read),
                 *((m, None) for m in OTHER_PIECES_MB if m != shipped_mb)]
        for piece_mb, read in fills:
            with _upload_settings(piece_mb=piece_mb, read=read):
                stager = _NoTransfer(pinned)
                t, _ = best_of(lambda st=stager: _fill_only(tmp / "cache", st), repeat)
                how = _upload.STAGING_READ
            rows.append({"name": f"cache -> staging buffers only ({piece_mb:g} MB pieces, "
                                 f"{how})", "bytes": got, "seconds": t, "GB/s": got / t / 1e9,
                         "piece_MB": piece_mb, "read": how,
                         "baseline": "one 64 MB double buffer",
                         "baseline_seconds": t_split, "speedup": t_split / t})
        cold = sorted((tmp / "cache").glob("*.npy"))
        t_disk, _ = best_of_cold(lambda: _read_files(cold), cold, repeat)
        if t_disk is not None:
            rows.append({"name": "cold: disk read of the cache files (reference)", "bytes": got,
                         "seconds": t_disk, "GB/s": got / t_disk / 1e9})
            stager = _NoTransfer(pinned)
            _fill_only(tmp / "cache", stager)  # its buffers made before the timed runs
            for read in (None, other_read):
                with _upload_settings(read=read):
                    t, _ = best_of_cold(lambda: _fill_only(tmp / "cache", stager), cold, repeat)
                    how = _upload.STAGING_READ
                rows.append({"name": f"cold: cache -> staging buffers only ({how})",
                             "bytes": got, "seconds": t, "GB/s": got / t / 1e9,
                             "of_disk_read": t_disk / t, "read": how})
        _gpu_rows(tmp, src, got, repeat, cold, t_disk, rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _print(rows)
    return rows


def _gpu_rows(tmp: Path, src, got: int, repeat: int, cold_files, t_disk,
              rows: list[dict]) -> list[dict]:
    """The GPU rows, appended to `rows` as each is measured."""
    try:
        import torch
    except ImportError:
        print("GPU rows skipped: torch is not installed")
        return rows
    if not torch.cuda.is_available():
        print("GPU rows skipped: no CUDA device")
        return rows
    from robocache import _upload
    from robocache._upload import to_device
    from robocache.formats import read_cache, read_lerobot

    def synced(fn):
        def timed():
            out = fn()
            torch.cuda.synchronize()
            return out
        return timed

    def sync_time(fn):
        return best_of(synced(fn), repeat)

    def pinned_copy_seconds() -> float:
        pinned = torch.empty(got, dtype=torch.uint8, pin_memory=True)
        pinned.fill_(1)
        dev = torch.empty(got, dtype=torch.uint8, device="cuda")
        return sync_time(lambda: dev.copy_(pinned, non_blocking=True))[0]

    t_pin = pinned_copy_seconds()
    rows.append({"name": "pinned host -> device copy (reference)", "bytes": got, "seconds": t_pin,
                 "GB/s": got / t_pin / 1e9})

    def lerobot_to_gpu():
        s = read_lerobot(tmp / "lerobot", progress=False)
        return [to_device(a, "cuda") for a in [*s.arrays.values(), s.timestamps]]

    t, _ = sync_time(lerobot_to_gpu)
    rows.append({"name": "lerobot parquet -> GPU", "bytes": got, "seconds": t,
                 "GB/s": got / t / 1e9, "target_GB/s": 1.0})

    ran: list[dict] = []  # what each upload of the last cache_to_gpu call ran (to_device)

    def cache_to_gpu(method, chunk):
        c = read_cache(tmp / "cache", verify=False, progress=False)
        ran.clear()
        out = []
        for a in [*c.arrays.values(), c.timestamps]:
            ran.append({})
            out.append(to_device(a, "cuda", method=method, chunk_bytes=chunk, report=ran[-1]))
        return out

    # (method, settings, what): the shipped methods, then settings of the lanes that only this
    # benchmark runs (registration lanes, chunk and staging piece sizes)
    variants = [("staged", {}, "pinned staging pieces"),
                *(("staged", {"piece_mb": m}, f"staging, {m:g} MB pieces")
                  for m in OTHER_PIECES_MB if m * (1 << 20) != _upload.STAGING_PIECE_BYTES),
                ("staged", {"submit": "torch"}, "staging, torch copy_ per piece"),
                ("staged", {"submit": "torch", "piece_mb": 8}, "staging, 8 MB, torch copy_"),
                ("staged", {"read": "copy"}, "staging, mapped pages copied"),
                ("registered", {}, "mmap pages locked in place"),
                ("mixed", {}, "both lanes at once"),
                ("mixed", {"chunk_mb": 16}, "both lanes, 16 MB chunks"),
                ("registered", {"lanes": 2}, "pages locked in place, 2 lanes"),
                ("mixed", {"lanes": 2}, "both, 2 registration lanes")]
    for method, settings, what in variants:
        chunk_mb = settings.get("chunk_mb", _upload.DEFAULT_CHUNK_BYTES >> 20)
        with _upload_settings(method, settings.get("lanes"), settings.get("piece_mb"),
                              settings.get("submit"), settings.get("read")):
            t, _ = sync_time(lambda m=method, c=chunk_mb << 20: cache_to_gpu(m, c))
            lanes = _upload.METHODS[method][0]
            piece_mb = _upload.STAGING_PIECE_BYTES / (1 << 20)
            submit, read = _upload.STAGING_SUBMIT, _upload.STAGING_READ
        rows.append({"name": f"own cache -> GPU ({what})", "bytes": got,
                     "seconds": t, "GB/s": got / t / 1e9, "of_pinned_copy": t_pin / t,
                     "target_of_pinned_copy": 0.8, "method": method,
                     "registration_lanes": lanes, "chunk_MB": chunk_mb, "piece_MB": piece_mb,
                     "submit": submit, "read": read, "ran": _what_ran(ran)})
    if t_disk is not None:  # from the disk: the page cache dropped before each run
        for method in ("staged", "mixed"):
            upload = synced(lambda m=method: cache_to_gpu(m, _upload.DEFAULT_CHUNK_BYTES))
            t, _ = best_of_cold(upload, cold_files, repeat)
            rows.append({"name": f"cold: own cache -> GPU ({method})", "bytes": got,
                         "seconds": t, "GB/s": got / t / 1e9, "of_disk_read": t_disk / t})
    return rows


def _what_ran(reports: list[dict]) -> dict:
    """What the uploads of one cache load ran, from to_device's reports: the staging lane's
    submit and read ways (every way seen), registration lanes set up, bytes they moved."""
    return {"submit": "/".join(sorted({r["submit"] for r in reports})),
            "read": "/".join(sorted({r["read"] for r in reports})),
            "registration_lanes": max((r["registration_lanes"] for r in reports), default=0),
            "registered_GB": sum(r["registered_bytes"] for r in reports) / 1e9}


@contextlib.contextmanager
def _upload_settings(method: str = "staged", lanes: int | None = None,
                     piece_mb: float | None = None, submit: str | None = None,
                     read: str | None = None):
    """For the duration: `method` with `lanes` registration lanes, staging pieces of
    `piece_mb` MB filled the `read` way and queued the `submit` way (None: as shipped)."""
    from robocache import _upload

    shipped = (_upload.METHODS[method], _upload.STAGING_PIECE_BYTES, _upload.STAGING_SUBMIT,
               _upload.STAGING_READ)
    if lanes is not None:
        _upload.METHODS[method] = (lanes, shipped[0][1])
    if piece_mb is not None:
        _upload.STAGING_PIECE_BYTES = int(piece_mb * (1 << 20))
    if submit is not None:
        _upload.STAGING_SUBMIT = submit
    if read is not None:
        _upload.STAGING_READ = read
    try:
        yield
    finally:
        (_upload.METHODS[method], _upload.STAGING_PIECE_BYTES, _upload.STAGING_SUBMIT,
         _upload.STAGING_READ) = shipped


def _print(rows: list[dict]) -> None:
    width = max([len(r["name"]) for r in rows] + [4])
    print(f"{'what':{width}s} {'GB':>7s} {'s':>8s} {'GB/s':>7s}  notes")
    for r in rows:
        notes = []
        if "speedup" in r:
            notes.append(f"{r['baseline']}: {r['baseline_seconds']:.3f} s -> {r['speedup']:.1f}x")
        if "of_disk_read" in r:
            notes.append(f"{100 * r['of_disk_read']:.0f}% of the disk read")
        if "of_pinned_copy" in r:
            notes.append(f"{100 * r['of_pinned_copy']:.0f}% of pinned copy (target 80%)")
        if "target_GB/s" in r:
            notes.append(f"target >= {r['target_GB/s']} GB/s")
        if "ran" in r:  # what ran, which a refused registration or a missing CuPy can change
            ran = r["ran"]
            notes.append(f"ran: {ran['submit']} submit, {ran['read']} fill, "
                         f"{ran['registration_lanes']} registration lane(s) moving "
                         f"{ran['registered_GB']:.2f} GB")
        print(f"{r['name']:{width}s} {r['bytes'] / 1e9:7.3f} {r['seconds']:8.3f} {r['GB/s']:7.2f}  "
              + "; ".join(notes))


if __name__ == "__main__":
    sys.exit(_timing.bench_main(run, "load", __doc__))
