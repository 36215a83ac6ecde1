"""Voxelization (PERF.md): rc.voxelize against torch ops and the original RoboCache's figure.

Workload: 500,000 float32 points (about 2% outside the grid) -> 128^3 voxels, modes count,
occupancy and mean of 8 float32 features; every call zeroes (or writes) the whole grid.
Implementations
  robocache-cuda        rc.voxelize on torch CUDA tensors, a new output per call
  robocache-cuda-out    the same into a reused output (out=), no allocation per call
  robocache-cupy        rc.voxelize on CuPy arrays
  torch-gpu             voxel ids by torch ops, then bincount (count), index_put_ (occupancy),
                        scatter_reduce_ "mean" (mean); out-of-grid points go to a spare bin, so
                        no host synchronisation
  robocache-numpy       the NumPy backend, one CPU core
  torch-cpu             the torch-gpu ops on CPU tensors
  original RoboCache    its README's 20.5 us for count (H100 PCIe), a reference line only
Times: back-to-back wall time per call (what a training loop sees) and the median CUDA-event
latency. The byte floor is (points read + grid written) / 4.16 TB/s (PERF.md's H200 copy
bandwidth). GPU rows are skipped, with the reason printed, where no CUDA device is usable.

    python benchmarks/bench_voxel.py [--quick] [--json out.json]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import robocache as rc  # noqa: E402
from benchmarks import _timing  # noqa: E402

H200_COPY_BW = 4.16e12  # bytes/s, PERF.md
ORIGINAL_US = 20.5  # original RoboCache README, H100 PCIe, 500k points -> 128^3
TARGET_US = 12.0  # PERF.md target on an H200, count / occupancy
N_POINTS = 500_000
G = 128
F = 8
GRID = {"grid_min": (-1.0, -1.0, -1.0), "voxel_size": 2.0 / G, "grid_size": G}
MODES = ("count", "occupancy", "mean")


def _inputs(n: int = N_POINTS, seed: int = 0):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-1.007, 1.007, (n, 3)).astype(np.float32)  # ~2% of points outside
    feats = rng.standard_normal((n, F)).astype(np.float32)
    return pts, feats


def _floor_us(mode: str, n: int) -> float:
    cells = G**3
    read = n * 12 + (n * F * 4 if mode == "mean" else 0)
    written = cells * {"count": 4, "occupancy": 1, "mean": 4 * F}[mode]
    return (read + written) / H200_COPY_BW * 1e6


def _row(mode, impl, device, us, n, **extra) -> dict:
    row = dict(bench="voxel", workload=f"{n // 1000}k->{G}^3", mode=mode, impl=impl,
               device=device, us_per_call=us, floor_us_h200=_floor_us(mode, n))
    row.update(extra)
    return row


# ---------------------------------------------------------------------------------------------
# torch baseline (GPU and CPU)


def _torch_voxelize(pts, feats, mode: str):
    """Voxel ids as rc defines them (float64 quotient), out-of-grid points in a spare bin."""
    import torch

    lo = torch.tensor(GRID["grid_min"], dtype=torch.float64, device=pts.device)
    q = (pts.double() - lo) / GRID["voxel_size"]
    inside = ((q >= 0) & (q < G)).all(dim=1)
    c = q.clamp(0, G - 1).long()
    cells = G**3
    vid = torch.where(inside, (c[:, 0] * G + c[:, 1]) * G + c[:, 2], cells)
    if mode == "count":
        return torch.bincount(vid, minlength=cells + 1)[:cells].view(G, G, G)
    if mode == "occupancy":
        occ = torch.zeros(cells + 1, dtype=torch.uint8, device=pts.device)
        occ.index_put_((vid,), torch.ones((), dtype=torch.uint8, device=pts.device))
        return occ[:cells].view(G, G, G)
    out = torch.zeros(cells + 1, F, device=pts.device)
    out.scatter_reduce_(0, vid[:, None].expand(-1, F), feats, "mean", include_self=False)
    return out[:cells].view(G, G, G, F)


# ---------------------------------------------------------------------------------------------
# GPU


def _gpu_time(fn, iters: int) -> tuple[float, float]:
    """(median CUDA-event latency per call, back-to-back wall time per call), microseconds."""
    t = _timing.time_gpu(fn, warmup=3, iters=iters, indexed=False)
    return t["event_us"], t["b2b_us"]


def _run_gpu(quick: bool) -> list[dict]:
    import cupy
    import torch

    rows = []
    dev = torch.cuda.get_device_name()
    iters = 30 if quick else 200
    pts_np, feats_np = _inputs()
    pts, feats = torch.from_numpy(pts_np).cuda(), torch.from_numpy(feats_np).cuda()
    pts_c, feats_c = cupy.asarray(pts_np), cupy.asarray(feats_np)
    for mode in MODES:
        f, fc = (feats, feats_c) if mode == "mean" else (None, None)
        # same result as the NumPy backend, bit for bit, before timing anything
        want = rc.voxelize(pts_np, mode=mode, features=None if f is None else feats_np, **GRID)
        got = rc.voxelize(pts, mode=mode, features=f, **GRID).cpu().numpy()
        same = np.array_equal(got.view(np.uint8), want.view(np.uint8))
        out = torch.empty(got.shape, dtype=getattr(torch, str(got.dtype)), device="cuda")
        impls = {
            "robocache-cuda": lambda m=mode, f=f: rc.voxelize(pts, mode=m, features=f, **GRID),
            "robocache-cuda-out": lambda m=mode, f=f, o=out: rc.voxelize(
                pts, mode=m, features=f, out=o, **GRID),
            "robocache-cupy": lambda m=mode, f=fc: rc.voxelize(pts_c, mode=m, features=f,
                                                               **GRID),
            "torch-gpu": lambda m=mode, f=f: _torch_voxelize(pts, f, m),
        }
        for impl, fn in impls.items():
            lat, b2b = _gpu_time(fn, iters)
            gpu = _timing.device_us(fn, calls=20)  # kernels + memsets per call (profiler)
            rows.append(_row(mode, impl, dev, b2b, N_POINTS, event_us=lat,
                             gpu_us=gpu and gpu["us"], gpu_top=gpu and gpu["top"],
                             **({"bitwise_equal_numpy": same} if impl.startswith("robocache")
                                else {})))
        if mode in ("count", "occupancy"):  # the out= call captured in a CUDA graph, replayed
            graph = _timing.graph_us(impls["robocache-cuda-out"])
            if graph is not None:
                rows.append(_row(mode, "robocache-cuda-out, CUDA graph", dev, graph, N_POINTS))
    rows.append(_row("count", "original RoboCache (published)", "H100 PCIe", ORIGINAL_US,
                     N_POINTS, published=True))
    return rows


# ---------------------------------------------------------------------------------------------
# CPU


def _cpu_time(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e6


def _run_cpu(quick: bool) -> list[dict]:
    rows = []
    reps = 2 if quick else 5
    pts_np, feats_np = _inputs()
    try:
        import torch

        torch.set_num_threads(1)
        pts_t, feats_t = torch.from_numpy(pts_np), torch.from_numpy(feats_np)
    except ImportError:
        torch = None
        print("bench_voxel: torch-cpu rows skipped (torch is not installed)")
    for mode in MODES:
        f = feats_np if mode == "mean" else None
        us = _cpu_time(lambda m=mode, f=f: rc.voxelize(pts_np, mode=m, features=f, **GRID), reps)
        rows.append(_row(mode, "robocache-numpy", "cpu (1 core)", us, N_POINTS))
        if torch is not None:
            ft = feats_t if mode == "mean" else None
            us = _cpu_time(lambda m=mode, f=ft: _torch_voxelize(pts_t, f, m), reps)
            rows.append(_row(mode, "torch-cpu", "cpu (1 thread)", us, N_POINTS))
    return rows


# ---------------------------------------------------------------------------------------------


def _print(rows: list[dict]) -> None:
    print(f"{'workload':12} {'mode':10} {'impl':32} {'device':24} {'us/call':>10} "
          f"{'event us':>9} {'vs torch':>9} {'vs 20.5us':>9} {'floor H200':>10}")
    for r in rows:
        torch_us = [x["us_per_call"] for x in rows if x["mode"] == r["mode"]
                    and x["impl"] == ("torch-gpu" if "cuda" in r["impl"] or "cupy" in r["impl"]
                                      or r["impl"] == "torch-gpu" else "torch-cpu")]
        vs_torch = f"{torch_us[0] / r['us_per_call']:8.1f}x" if torch_us else f"{'-':>9}"
        gpu = r["device"] not in ("cpu (1 core)", "cpu (1 thread)")
        vs_orig = f"{ORIGINAL_US / r['us_per_call']:8.2f}x" if gpu and r["mode"] == "count" \
            else f"{'-':>9}"
        ev = f"{r['event_us']:9.1f}" if "event_us" in r else f"{'-':>9}"
        flag = "" if r.get("bitwise_equal_numpy", True) else "  NOT EQUAL TO NUMPY"
        dev = f"  GPU {r['gpu_us']:.1f} us: {r['gpu_top']}" if r.get("gpu_us") else ""
        print(f"{r['workload']:12} {r['mode']:10} {r['impl']:32} {r['device'][:24]:24} "
              f"{r['us_per_call']:10.1f} {ev} {vs_torch} {vs_orig} "
              f"{r['floor_us_h200']:10.1f}{flag}{dev}")
    print(f"target (PERF.md, H200): count / occupancy <= {TARGET_US:.0f} us per call, "
          "grid zeroed each call")


def run(quick: bool = False) -> list[dict]:
    rows: list[dict] = []
    why = _timing.gpu_reason()
    if why is None:
        rows += _run_gpu(quick)
    else:
        print(f"bench_voxel: GPU rows skipped ({why})")
    rows += _run_cpu(quick)
    _print(rows)
    return rows


if __name__ == "__main__":
    sys.exit(_timing.bench_main(run, "voxel", __doc__))
