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

What a GPU adds on top, per call (PERF.md, H200): ~7 us for the CuPy launch itself (~8-9 us with
a stream/device context manager around it) and ~5-10 us per torch op such as zero_ (replaced by
a no-op here). Timings are medians over repeats of many back-to-back calls on this machine's CPU
(min also given: the machine may be shared); compare rows of one run only.

    python benchmarks/bench_host_overhead.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# PERF.md targets (us per call, back-to-back on an H200, launch included)
TARGETS = {"windows": 13.0, "resample": 10.0, "fuse": 12.0, "images": 20.0, "voxelize": 12.0}
LAUNCH_US = 7.0  # PERF.md: an empty CuPy RawKernel launch, back-to-back


def _malloc_like_a_caching_allocator(on: bool) -> None:
    """glibc maps every allocation above 32 MB afresh (and unmaps it on free): ~20 us for an
    image batch's 43 MB output, where torch's CUDA caching allocator takes ~2 us. With `on`, big
    blocks stay in the heap and are reused, so CPU allocation costs about what a GPU's does and
    the rows measure Python. Off restores glibc's default thresholds. No-op off glibc."""
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

    saved = (_runtime._LAUNCHER, _array.is_device, _array.zero_)
    real_is_device = _array.is_device

    def is_device(x):
        return _array.library(x) == "torch" or real_is_device(x)

    _runtime._LAUNCHER = noop_launch
    _array.is_device = is_device
    _array.zero_ = lambda x: x
    _malloc_like_a_caching_allocator(True)
    try:
        yield launches
    finally:
        _runtime._LAUNCHER, _array.is_device, _array.zero_ = saved
        _malloc_like_a_caching_allocator(False)


def per_call_us(fn, *, calls: int, repeats: int, warmup: int = 20) -> dict:
    """Median (and min) over `repeats` of the mean wall time of `calls` back-to-back calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) / calls * 1e6)
    return {"host_us": statistics.median(samples), "host_us_min": min(samples)}


def per_batch_us(make_iter, *, batches: int, repeats: int) -> dict:
    """Per-batch wall time of a loader iterator (its epoch start excluded)."""
    samples = []
    for _ in range(repeats + 1):
        it = make_iter()
        next(it)  # epoch start: order drawn and uploaded once
        t0 = time.perf_counter()
        n = sum(1 for _ in islice(it, batches))
        samples.append((time.perf_counter() - t0) / max(n, 1) * 1e6)
        del it
    samples = samples[1:]  # the first repeat warms caches
    return {"host_us": statistics.median(samples), "host_us_min": min(samples)}


# ---------------------------------------------------------------------------------------------
# the hot paths


def _window_rows(quick: bool) -> list[dict]:
    import torch

    import robocache as rc
    from benchmarks.bench_windows import ACT_DELTAS, BATCH, OBS_DELTAS, make_arrays

    arrays, ends = make_arrays()
    store = rc.TrajectoryStore.from_arrays(arrays, episode_ends=ends, device="cpu")
    deltas = {"observation.state": OBS_DELTAS, "action": ACT_DELTAS}
    plain = rc.TrajectoryDataset(store, delta_indices=deltas)
    normed = rc.TrajectoryDataset(store, delta_indices=deltas,
                                  normalize={"observation.state": "mean_std",
                                             "action": "min_max"})
    like = torch.zeros(1)
    for ds in (plain, normed):
        ds._device_standin(like)
    batches = 100 if quick else 400
    repeats = 3 if quick else 7
    rows = []
    for what, ds, kw in (("fresh outputs (default)", plain, {}),
                         ("reuse_outputs=4", plain, {"reuse_outputs": 4}),
                         ("mean_std/min_max normalization", normed, {})):
        dl = rc.DataLoader(ds, batch_size=BATCH, shuffle=True, drop_last=True, seed=0, **kw)
        res = per_batch_us(lambda dl=dl: iter(dl), batches=batches, repeats=repeats)
        rows.append({"path": "windows", "call": f"rc.DataLoader batch, {what}", **res})
    op = plain._op
    order = op.upload_indices(np.random.default_rng(0).permutation(len(plain)))
    count = {"b": 0}
    nb = len(plain) // BATCH

    def run_op():
        b = count["b"] = (count["b"] + 1) % nb
        op.run_cuda(order, b * BATCH, BATCH)

    rows.append({"path": "windows", "call": "WindowOp.run_cuda (op only, fresh outputs)",
                 **per_call_us(run_op, calls=batches, repeats=repeats)})
    return rows


def _resample_rows(quick: bool) -> list[dict]:
    import torch

    import robocache as rc

    g = torch.Generator().manual_seed(0)
    B, S, T, D = 32, 500, 256, 256
    src = torch.sort(torch.rand(B, S, generator=g), dim=1).values
    tgt = torch.sort(torch.rand(B, T, generator=g), dim=1).values
    data = torch.randn(B, S, D, generator=g).to(torch.bfloat16)
    streams = [(torch.randn(4, s, d, generator=g).to(torch.bfloat16),
                torch.sort(torch.rand(4, s, generator=g), dim=1).values)
               for s, d in ((30, 512), (100, 64), (200, 12))]
    ftgt = torch.sort(torch.rand(4, 50, generator=g), dim=1).values
    calls, repeats = (300, 3) if quick else (2000, 7)
    return [
        {"path": "resample", "call": "rc.resample 32x500x256->256 bf16, check_times=False",
         **per_call_us(lambda: rc.resample(data, src, tgt, check_times=False), calls=calls,
                       repeats=repeats)},
        {"path": "fuse", "call": "rc.fuse 3 streams -> 50 targets bf16, check_times=False",
         **per_call_us(lambda: rc.fuse(streams, ftgt, check_times=False), calls=calls,
                       repeats=repeats)},
    ]


def _image_rows(quick: bool) -> list[dict]:
    import torch

    import robocache as rc
    from robocache.ops import _random, images

    frames = torch.zeros((2000, 96, 96, 3), dtype=torch.uint8)
    idx = torch.randint(0, 2000, (256, 2))
    kw = dict(crop=84, crop_mode="random", mean=(0.485, 0.456, 0.406),
              std=(0.229, 0.224, 0.225))
    plan = images.make_plan((96, 96, 3), **kw)
    key = _random.rand_key(0, 0, 0)
    from robocache import _array

    def dataset_path():  # what TrajectoryDataset does per camera key and batch
        out = _array.empty(frames, plan.out_shape(256, 2), plan.out_dtype)
        images.apply_cuda(plan, frames, idx, None, out, key)

    out = _array.empty(frames, plan.out_shape(256, 2), plan.out_dtype)

    calls, repeats = (300, 3) if quick else (2000, 7)
    return [
        {"path": "images", "call": "rc.crop_resize_normalize 256x2 96->84 f32, "
                                   "check_indices=False",
         **per_call_us(lambda: rc.crop_resize_normalize(frames, idx, check_indices=False, **kw),
                       calls=calls, repeats=repeats)},
        {"path": "images", "call": "dataset path: plan made once, empty + apply_cuda",
         **per_call_us(dataset_path, calls=calls, repeats=repeats)},
        {"path": "images", "call": "apply_cuda into a preallocated out",
         **per_call_us(lambda: images.apply_cuda(plan, frames, idx, None, out, key),
                       calls=calls, repeats=repeats)},
    ]


def _voxel_rows(quick: bool) -> list[dict]:
    import torch

    import robocache as rc

    pts = torch.rand(500_000, 3)
    grid = dict(grid_min=0.0, voxel_size=1.0 / 128, grid_size=128)
    calls, repeats = (300, 3) if quick else (2000, 7)
    rows = []
    for mode in ("count", "occupancy"):
        rows.append({"path": "voxelize", "call": f"rc.voxelize 500k points -> 128^3 {mode}",
                     **per_call_us(lambda mode=mode: rc.voxelize(pts, mode=mode, **grid),
                                   calls=calls, repeats=repeats)})
    out = torch.empty((128, 128, 128), dtype=torch.int32)
    rows.append({"path": "voxelize", "call": "rc.voxelize count, out= reused",
                 **per_call_us(lambda: rc.voxelize(pts, mode="count", out=out, **grid),
                               calls=calls, repeats=repeats)})
    return rows


def run(quick: bool = False) -> list[dict]:
    try:
        import torch  # noqa: F401
    except ImportError:
        print("bench_host_overhead: skipped (needs torch: torch CPU tensors stand in for CUDA "
              "tensors)")
        return []
    rows: list[dict] = []
    with host_standins() as launches:
        for part in (_window_rows, _resample_rows, _image_rows, _voxel_rows):
            rows += part(quick)
        assert launches, "the stand-ins made no launch: the CUDA paths were not taken"
    for r in rows:
        r["bench"] = "host_overhead"
        r["target_us"] = TARGETS[r["path"]]
        r["host_plus_launch_us"] = r["host_us"] + LAUNCH_US
    print("\n## host Python per call, launch and memsets no-ops (us; + ~7 us launch on a GPU)")
    w = max(len(r["call"]) for r in rows)
    print(f"{'path':9} | {'call':{w}} | {'host us':>8} | {'min':>6} | {'+launch':>7} | target")
    for r in rows:
        print(f"{r['path']:9} | {r['call']:{w}} | {r['host_us']:8.2f} | {r['host_us_min']:6.2f} "
              f"| {r['host_plus_launch_us']:7.1f} | {r['target_us']:.0f}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "out"
                                          / "bench_host_overhead.json"))
    args = ap.parse_args(argv)
    rows = run(quick=args.quick)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"bench": "host_overhead", "quick": args.quick, "rows": rows},
                              indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
