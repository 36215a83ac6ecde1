"""Host (Python) cost per call of the GPU hot paths, measured without a GPU.

PERF.md's small-size targets (window batch <= 13 us, resample <= 10 us, fuse <= 12 us, images
<= 20 us, voxelize count/occupancy <= 12 us, all back-to-back) are dominated by what Python does
around the launch. This benchmark times exactly that part, on any machine:

- the kernel launch is a no-op (robocache._runtime._LAUNCHER replaced by a function that does
  nothing), and so is a device memset (robocache._array.zero_);
- torch CPU tensors stand in for CUDA tensors (robocache._array.is_device answers True for them),
  so the ops take their CUDA path: validation, output allocation (torch.empty on the CPU),
  pointers, kernel-argument structs and the call into the launcher;
- the window loader runs the CUDA path of a TrajectoryDataset whose index tables are torch CPU
  tensors (TrajectoryDataset._device_standin), on the PERF.md workload: 1000 episodes / 302,690
  frames, state 32 + action 14 float32, deltas [-1, 0] and 0..15, batch 256, edge pad + masks.

- CPU allocations are made cache-like (glibc's mmap threshold raised for the run), so a
  torch.empty costs ~2 us here as on a GPU's caching allocator, whatever its size.

What a GPU adds on top, per call (PERF.md, H200): ~7 us for the CuPy launch itself and ~1 us
per cudaMemsetAsync (replaced by no-ops here). Timings are medians over repeats of many
back-to-back calls on this machine's CPU (min also given: the machine may be shared); compare
rows of one run only. On a machine with a CUDA GPU the same calls also run for real, with CUDA
tensors and real launches, timed back-to-back (wall time per call from a synchronised start to
the end of the last call's GPU work): the number the PERF.md targets are about.

    python benchmarks/bench_host_overhead.py [--quick] [--json out.json]
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _timing  # noqa: E402

# PERF.md targets (us per call, back-to-back on an H200, launch included)
TARGETS = {"baseline": 0.0, "windows": 13.0, "resample": 10.0, "fuse": 12.0, "images": 20.0, "voxelize": 12.0}
LAUNCH_US = 7.0  # PERF.md: an empty CuPy RawKernel launch, back-to-back


def _malloc_like_a_caching_allocator(on: bool) -> None:
    """glibc maps every allocation above 32 MB afresh (and unmaps it on free): ~20 us for an
    image batch's 43 MB output, where torch's CUDA caching allocator takes ~2 us. With `on`, big
    blocks stay in the heap and are reused, so CPU allocation costs about what a GPU's does and
    the rows measure Python. Off sets glibc's default thresholds back, but glibc's dynamic
    mmap threshold stays off for the rest of the process (mallopt turns it off for good), which
    makes later big allocations slower: run_all runs this benchmark last. No-op off glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, (1 << 30) if on else 128 * 1024)
    mallopt(m_trim_threshold, (1 << 30) if on else 128 * 1024)


@contextlib.contextmanager
def host_standins():
    """No-op launches and memsets; torch CPU tensors take the CUDA paths; CPU allocation made
    cache-like."""
    from robocache import _array, _runtime

    launches = []

    def noop_launch(module, name, grid, block, args, like, shared_mem):
        launches.append(name)
        if len(launches) > 4096:
            launches.clear()

    saved = (_runtime._LAUNCHER, _array.is_device, _array.zero_, _array.device_key)
    real_is_device = _array.is_device

    def is_device(x):
        return _array.library(x) == "torch" or real_is_device(x)

    _runtime._LAUNCHER = noop_launch
    _array.is_device = is_device
    _array.zero_ = lambda x: x
    _array.device_key = _array.device_key_with_host_standins
    _malloc_like_a_caching_allocator(True)
    try:
        yield launches
    finally:
        _runtime._LAUNCHER, _array.is_device, _array.zero_, _array.device_key = saved
        _malloc_like_a_caching_allocator(False)


def _sync(gpu: bool) -> None:
    if gpu:
        import torch

        torch.cuda.synchronize()


def per_call_us(fn, *, calls: int, repeats: int, gpu: bool = False, warmup: int = 20) -> dict:
    """Median (and min) over `repeats` of the mean wall time of `calls` back-to-back calls (on a
    GPU: from a synchronised start to the end of the last call's work)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        _sync(gpu)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(gpu)
        samples.append((time.perf_counter() - t0) / calls * 1e6)
    return {"us": statistics.median(samples), "us_min": min(samples), **_device_time(fn, gpu)}


def _device_time(fn, gpu: bool) -> dict:
    """GPU time per call (CUDA profiler) on a GPU: b2b well above it means launch-bound."""
    dev = _timing.device_us(fn) if gpu else None
    return {} if dev is None else {"gpu_us": dev["us"], "gpu_top": dev["top"]}


def per_batch_us(make_iter, *, batches: int, repeats: int, gpu: bool = False) -> dict:
    """Per-batch wall time of a loader iterator (its epoch start excluded)."""
    samples = []
    for _ in range(repeats + 1):
        it = make_iter()
        next(it)  # epoch start: order drawn and uploaded once
        _sync(gpu)
        t0 = time.perf_counter()
        n = sum(1 for _ in islice(it, batches))
        _sync(gpu)
        samples.append((time.perf_counter() - t0) / max(n, 1) * 1e6)
        del it
    samples = samples[1:]  # the first repeat warms caches
    it = make_iter()
    next(it)
    return {"us": statistics.median(samples), "us_min": min(samples),
            **_device_time(lambda: next(it), gpu)}


# ---------------------------------------------------------------------------------------------
# the hot paths: (path, call, timing) for tensors on `device` ("cpu": host stand-ins, "cuda")


def _window_rows(quick: bool, device: str) -> list[dict]:
    import torch

    import robocache as rc
    from benchmarks.bench_windows import ACT_DELTAS, BATCH, OBS_DELTAS, make_arrays

    gpu = device == "cuda"
    arrays, ends = make_arrays()
    store = rc.TrajectoryStore.from_arrays(arrays, episode_ends=ends, device=device)
    deltas = {"observation.state": OBS_DELTAS, "action": ACT_DELTAS}
    plain = rc.TrajectoryDataset(store, delta_indices=deltas)
    normed = rc.TrajectoryDataset(store, delta_indices=deltas,
                                  normalize={"observation.state": "mean_std",
                                             "action": "min_max"})
    if not gpu:
        for ds in (plain, normed):
            ds._device_standin(torch.zeros(1))
    batches = 100 if quick else 400
    repeats = 3 if quick else 9
    rows = []
    for what, ds, kw in (("fresh outputs (default)", plain, {}),
                         ("reuse_outputs=4", plain, {"reuse_outputs": 4}),
                         ("mean_std/min_max normalization", normed, {})):
        dl = rc.DataLoader(ds, batch_size=BATCH, shuffle=True, drop_last=True, seed=0, **kw)
        res = per_batch_us(lambda dl=dl: iter(dl), batches=batches, repeats=repeats, gpu=gpu)
        rows.append({"path": "windows", "call": f"rc.DataLoader batch, {what}", **res})
    op = plain._op
    order = op.upload_indices(np.random.default_rng(0).permutation(len(plain)))
    count = {"b": 0}
    nb = len(plain) // BATCH

    def run_op():
        b = count["b"] = (count["b"] + 1) % nb
        op.run_cuda(order, b * BATCH, BATCH)

    rows.append({"path": "windows", "call": "WindowOp.run_cuda (op only, fresh outputs)",
                 **per_call_us(run_op, calls=batches, repeats=repeats, gpu=gpu)})
    return rows


def _resample_rows(quick: bool, device: str) -> list[dict]:
    import torch

    import robocache as rc

    g = torch.Generator().manual_seed(0)
    B, S, T, D = 32, 500, 256, 256
    src = torch.sort(torch.rand(B, S, generator=g), dim=1).values.to(device)
    tgt = torch.sort(torch.rand(B, T, generator=g), dim=1).values.to(device)
    data = torch.randn(B, S, D, generator=g).to(device=device, dtype=torch.bfloat16)
    streams = [(torch.randn(4, s, d, generator=g).to(device=device, dtype=torch.bfloat16),
                torch.sort(torch.rand(4, s, generator=g), dim=1).values.to(device))
               for s, d in ((30, 512), (100, 64), (200, 12))]
    ftgt = torch.sort(torch.rand(4, 50, generator=g), dim=1).values.to(device)
    calls, repeats = (300, 3) if quick else (2000, 9)
    gpu = device == "cuda"
    out = torch.empty((B, T, D), dtype=torch.bfloat16, device=device)
    fout = torch.empty((4, 50, 512 + 64 + 12), dtype=torch.bfloat16, device=device)
    return [
        {"path": "resample", "call": "rc.resample 32x500x256->256 bf16, check_times=False",
         **per_call_us(lambda: rc.resample(data, src, tgt, check_times=False), calls=calls,
                       repeats=repeats, gpu=gpu)},
        {"path": "resample", "call": "rc.resample, same, out= reused",
         **per_call_us(lambda: rc.resample(data, src, tgt, check_times=False, out=out),
                       calls=calls, repeats=repeats, gpu=gpu)},
        {"path": "fuse", "call": "rc.fuse 3 streams -> 50 targets bf16, check_times=False",
         **per_call_us(lambda: rc.fuse(streams, ftgt, check_times=False), calls=calls,
                       repeats=repeats, gpu=gpu)},
        {"path": "fuse", "call": "rc.fuse, same, out= reused",
         **per_call_us(lambda: rc.fuse(streams, ftgt, check_times=False, out=fout),
                       calls=calls, repeats=repeats, gpu=gpu)},
    ]


def _image_rows(quick: bool, device: str) -> list[dict]:
    import torch

    import robocache as rc
    from robocache import _array
    from robocache.ops import _random, images

    frames = torch.randint(0, 256, (2000, 96, 96, 3), dtype=torch.uint8).to(device)
    idx = torch.randint(0, 2000, (256, 2)).to(device)
    kw = dict(crop=84, crop_mode="random", mean=(0.485, 0.456, 0.406),
              std=(0.229, 0.224, 0.225))
    plan = images.make_plan((96, 96, 3), **kw)
    key = _random.rand_key(0, 0, 0)

    def dataset_path():  # what TrajectoryDataset does per camera key and batch
        out = _array.empty(frames, plan.out_shape(256, 2), plan.out_dtype)
        images.apply_cuda(plan, frames, idx, None, out, key)

    out = _array.empty(frames, plan.out_shape(256, 2), plan.out_dtype)
    calls, repeats = (300, 3) if quick else (2000, 9)
    gpu = device == "cuda"
    return [
        {"path": "images", "call": "rc.crop_resize_normalize 256x2 96->84 f32, "
                                   "check_indices=False",
         **per_call_us(lambda: rc.crop_resize_normalize(frames, idx, check_indices=False, **kw),
                       calls=calls, repeats=repeats, gpu=gpu)},
        {"path": "images", "call": "dataset path: plan made once, empty + apply_cuda",
         **per_call_us(dataset_path, calls=calls, repeats=repeats, gpu=gpu)},
        {"path": "images", "call": "apply_cuda into a preallocated out",
         **per_call_us(lambda: images.apply_cuda(plan, frames, idx, None, out, key),
                       calls=calls, repeats=repeats, gpu=gpu)},
    ]


def _voxel_rows(quick: bool, device: str) -> list[dict]:
    import torch

    import robocache as rc

    pts = torch.rand(500_000, 3).to(device)
    grid = dict(grid_min=0.0, voxel_size=1.0 / 128, grid_size=128)
    calls, repeats = (300, 3) if quick else (2000, 9)
    gpu = device == "cuda"
    rows = []
    for mode in ("count", "occupancy"):
        rows.append({"path": "voxelize", "call": f"rc.voxelize 500k points -> 128^3 {mode}",
                     **per_call_us(lambda mode=mode: rc.voxelize(pts, mode=mode, **grid),
                                   calls=calls, repeats=repeats, gpu=gpu)})
    out = torch.empty((128, 128, 128), dtype=torch.int32, device=device)
    rows.append({"path": "voxelize", "call": "rc.voxelize count, out= reused",
                 **per_call_us(lambda: rc.voxelize(pts, mode="count", out=out, **grid),
                               calls=calls, repeats=repeats, gpu=gpu)})
    return rows


def _launch_rows(quick: bool, device: str) -> list[dict]:
    """The machine's own launch costs (GPU only): what every hot path above pays at least."""
    if device != "cuda":
        return []
    import cupy
    import torch

    empty = cupy.RawKernel('extern "C" __global__ void empty_kernel(int x) {}', "empty_kernel")
    arg = np.int32(1)
    x = torch.ones(1, device="cuda")
    calls, repeats = (300, 3) if quick else (2000, 9)
    return [
        {"path": "baseline", "call": "empty CuPy RawKernel launch (1 block, 1 int arg)",
         **per_call_us(lambda: empty((1,), (32,), (arg,)), calls=calls, repeats=repeats,
                       gpu=True)},
        {"path": "baseline", "call": "torch x.add_(1) on 1 element",
         **per_call_us(lambda: x.add_(1), calls=calls, repeats=repeats, gpu=True)},
    ]


PARTS = (_launch_rows, _window_rows, _resample_rows, _image_rows, _voxel_rows)


@contextlib.contextmanager
def _launcher(driver: bool):
    """Launch the one-struct hot paths through the driver (True) or CuPy (False) inside."""
    from robocache import _runtime

    saved = _runtime._USE_DRIVER
    _runtime._USE_DRIVER = driver
    try:
        yield
    finally:
        _runtime._USE_DRIVER = saved


def _driver_launch_rows(quick: bool) -> list[dict]:
    """The one-struct hot paths again with the driver launcher (cuLaunchKernel through
    cuda-python, the struct's parameter pointer prepared once; the default where cuda-python is
    installed), in the same run as the CuPy-launcher rows above."""
    import torch

    try:
        import cuda.bindings.driver  # noqa: F401
    except ImportError as exc:
        print(f"bench_host_overhead: driver-launch rows skipped ({exc})")
        return []
    mode = f"GPU b2b, driver launch ({torch.cuda.get_device_name(0)})"
    try:
        with _launcher(driver=True):
            return [{**r, "mode": mode} for part in (_resample_rows, _image_rows, _voxel_rows)
                    for r in part(quick, "cuda")]
    except Exception as exc:  # an API difference: report it, keep the CuPy rows
        print(f"bench_host_overhead: driver-launch rows failed: {type(exc).__name__}: {exc}")
        return []


def run(quick: bool = False) -> list[dict]:
    try:
        import torch
    except ImportError:
        print("bench_host_overhead: skipped (needs torch: torch CPU tensors stand in for CUDA "
              "tensors)")
        return []
    from benchmarks._timing import gpu_available

    rows: list[dict] = []
    with host_standins() as launches:
        for part in PARTS:
            rows += [{**r, "mode": "host, no-op launch"} for r in part(quick, "cpu")]
        assert launches, "the stand-ins made no launch: the CUDA paths were not taken"
    gpu = gpu_available() and torch.cuda.is_available()
    if gpu:  # the same calls with real launches, back-to-back: CuPy's launcher, then the driver's
        with _launcher(driver=False):
            for part in PARTS:
                rows += [{**r, "mode": f"GPU b2b ({torch.cuda.get_device_name(0)})"}
                         for r in part(quick, "cuda")]
        rows += _driver_launch_rows(quick)
    else:
        print("bench_host_overhead: no CUDA GPU here; host rows only (add ~7 us per launch)")
    for r in rows:
        r["bench"] = "host_overhead"
        r["target_us"] = TARGETS[r["path"]]
        if r["mode"].startswith("host"):
            r["plus_launch_us"] = r["us"] + LAUNCH_US
    w = max(len(r["call"]) for r in rows)
    for mode in dict.fromkeys(r["mode"] for r in rows):
        extra = " (+launch: plus one ~7 us launch)" if mode.startswith("host") else ""
        print(f"\n## {mode}: us per call{extra}")
        print(f"{'path':9} | {'call':{w}} | {'us':>7} | {'min':>7} | {'+launch':>7} | target | "
              f"GPU us (profiler: kernels per call)")
        for r in rows:
            if r["mode"] == mode:
                plus = r.get("plus_launch_us")
                dev = f"{r['gpu_us']:.1f} ({r['gpu_top']})" if "gpu_us" in r else "-"
                print(f"{r['path']:9} | {r['call']:{w}} | {r['us']:7.2f} | {r['us_min']:7.2f} | "
                      f"{'-' if plus is None else f'{plus:.1f}':>7} | {r['target_us']:6.0f} | "
                      f"{dev}")
    return rows


if __name__ == "__main__":
    sys.exit(_timing.bench_main(run, "host_overhead", __doc__))
