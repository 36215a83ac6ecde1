"""resample and fuse: RoboCache vs the torch-native implementation (searchsorted + gather + lerp).

Workloads from PERF.md (bf16 data, float32 times). GPU rows need a CUDA GPU with torch and CuPy;
without one the NumPy backend is compared with torch on the CPU at a small size.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _timing  # noqa: E402
from benchmarks._timing import (  # noqa: E402
    gpu_available,
    print_table,
    time_cpu,
    time_gpu,
    torch_cuda_ready,
)

COPY_GBS_H200 = 4160.0  # PERF.md: measured device-to-device copy, bytes read + written
# floor_us: at that H200 figure; floor_here_us: at this card's copy bandwidth, measured in the run


def torch_resample(data, src, tgt):
    import torch

    S, D = data.shape[1], data.shape[2]
    i = torch.searchsorted(src, tgt, right=True) - 1
    inner = (i >= 0) & (i < S - 1)
    i0 = i.clamp(0, S - 1)
    i1 = torch.where(inner, i0 + 1, i0)
    t0, t1 = src.gather(1, i0), src.gather(1, i1)
    w = torch.where(inner, (tgt - t0) / (t1 - t0), torch.zeros_like(tgt))
    a = data.gather(1, i0[..., None].expand(-1, -1, D)).float()
    b = data.gather(1, i1[..., None].expand(-1, -1, D)).float()
    return torch.lerp(a, b, w[..., None].float()).to(data.dtype)


def torch_fuse(streams, tgt):
    import torch

    return torch.cat([torch_resample(d, t, tgt) for d, t in streams], dim=-1)


def _case(B, S, T, D, device, dtype, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    src = torch.sort(torch.rand(B, S, generator=g), dim=1).values.to(device)
    tgt = torch.sort(torch.rand(B, T, generator=g), dim=1).values.to(device)
    data = torch.randn(B, S, D, generator=g).to(device=device, dtype=dtype)
    return data, src, tgt


# (name, B batch, S source samples, T targets, D features): PERF.md's "BxSxD -> T"
RESAMPLE_CASES = [("resample 32x500x256->256 bf16", 32, 500, 256, 256),
                  ("resample 256x1000x256->1000 bf16", 256, 1000, 1000, 256)]
FUSE_STREAMS = [(30, 512), (100, 64), (200, 12)]


def _gpu_rows(quick: bool) -> list[dict]:
    import torch

    import robocache as rc

    iters = 30 if quick else 200
    rows = []
    for name, B, S, T, D in RESAMPLE_CASES:
        data, src, tgt = _case(B, S, T, D, "cuda", torch.bfloat16)
        assert torch.allclose(rc.resample(data, src, tgt).float(),
                              torch_resample(data, src, tgt).float(), atol=2e-2)
        nbytes = (B * S * D + B * T * D) * 2  # bf16 data read once + output written once
        floor_us = nbytes / (COPY_GBS_H200 * 1e9) * 1e6
        floor_here_us = nbytes / (_timing.copy_bandwidth_gbs() * 1e9) * 1e6
        base = time_gpu(lambda d=data, s=src, t=tgt: torch_resample(d, s, t), iters=iters)
        ours = time_gpu(lambda d=data, s=src, t=tgt: rc.resample(d, s, t, check_times=False),
                        iters=iters)
        checked = time_gpu(lambda d=data, s=src, t=tgt: rc.resample(d, s, t), iters=iters)
        dev = _timing.device_us(lambda d=data, s=src, t=tgt: rc.resample(d, s, t,
                                                                         check_times=False))
        graph = _timing.graph_us(lambda d=data, s=src, t=tgt: rc.resample(d, s, t,
                                                                          check_times=False))
        rows.append({"workload": name, "torch_us": base["b2b_us"], "rc_us": ours["b2b_us"],
                     "rc_event_us": ours["event_us"], "rc_checked_us": checked["b2b_us"],
                     "rc_gpu_us": dev and dev["us"], "rc_graph_us": graph, "floor_us": floor_us,
                     "floor_here_us": floor_here_us,
                     "speedup": base["b2b_us"] / ours["b2b_us"]})
    B, T = 4, 50
    streams = [_case(B, S, T, D, "cuda", torch.bfloat16, seed=k)[:2]
               for k, (S, D) in enumerate(FUSE_STREAMS)]
    tgt = torch.sort(torch.rand(B, T), dim=1).values.cuda()
    base = time_gpu(lambda: torch_fuse(streams, tgt), iters=iters)
    ours = time_gpu(lambda: rc.fuse(streams, tgt, check_times=False), iters=iters)
    dev = _timing.device_us(lambda: rc.fuse(streams, tgt, check_times=False))
    graph = _timing.graph_us(lambda: rc.fuse(streams, tgt, check_times=False))
    rows.append({"workload": "fuse 3 streams -> 50 bf16", "torch_us": base["b2b_us"],
                 "rc_us": ours["b2b_us"], "rc_event_us": ours["event_us"],
                 "rc_gpu_us": dev and dev["us"], "rc_graph_us": graph,
                 "speedup": base["b2b_us"] / ours["b2b_us"]})
    return rows


# resample_kernel's compile-time knobs (resample.cu): (rows per warp, blocks of 256 per SM asked
# of the register allocator), for every data type alike. The ops ship (4, 4) for 16-bit data
# with float times (the benchmarks' case) and (4, 3) otherwise. Measured and dropped
# (RESULTS.md): (8, 2), (2, 4), (6, 2), 10-15% slower on the large workload.
SWEEP = [(4, 3), (4, 4), (3, 4), (3, 5), (2, 5)]


def sweep_module(rows_per_warp: int, blocks: int):
    """resample.cu built with one SWEEP setting for every data type (the ops' launches need
    ops.resample.ROWS_PER_WARP = rows_per_warp beside it)."""
    from robocache import _kernels, _runtime

    opts = (f"-DRC_RESAMPLE_ROWS={rows_per_warp}", f"-DRC_RESAMPLE_MIN_BLOCKS={blocks}",
            f"-DRC_RESAMPLE_MIN_BLOCKS_16={blocks}")
    return _runtime.KernelModule("resample.cu", _kernels.RESAMPLE.name_expressions,
                                 _runtime.BASE_OPTIONS + opts)


def _sweep_rows(quick: bool) -> list[dict]:
    """resample_kernel built with each SWEEP setting (-D options, the same source), on both
    workloads: kernel time (profiler) and back-to-back time, output equal bit for bit to the
    default build's. Which setting the ops should ship."""
    import torch

    import robocache as rc
    from robocache import _kernels
    from robocache.ops import resample as R

    saved = (_kernels.RESAMPLE, R.ROWS_PER_WARP)
    rows = []
    cases = [_case(B, S, T, D, "cuda", torch.bfloat16) + (name,)
             for name, B, S, T, D in RESAMPLE_CASES]
    expected = [rc.resample(d, s, t) for d, s, t, _ in cases]
    try:
        for rows_per_warp, blocks in SWEEP:
            _kernels.RESAMPLE = sweep_module(rows_per_warp, blocks)
            R.ROWS_PER_WARP = rows_per_warp
            R._HOT.clear()
            for (d, s, t, name), want in zip(cases, expected, strict=True):
                def call(d=d, s=s, t=t):
                    return rc.resample(d, s, t, check_times=False)
                same = bool(torch.equal(call(), want))
                dev = _timing.device_us(call, calls=20 if quick else 100)
                b2b = time_gpu(call, iters=30 if quick else 200)["b2b_us"]
                rows.append({"workload": f"{name} [rows {rows_per_warp}, blocks {blocks}]",
                             "rc_us": b2b,
                             "rc_gpu_us": dev and dev["us"], "equal": same})
    finally:
        _kernels.RESAMPLE, R.ROWS_PER_WARP = saved
        R._HOT.clear()
    return rows


def _cpu_rows(quick: bool) -> list[dict]:
    import torch

    import robocache as rc

    rows = []
    for name, B, S, T, D in [("resample 32x500x256->256 f32 (CPU)", 32, 500, 256, 256)]:
        data, src, tgt = _case(B, S, T, D, "cpu", torch.float32)
        d, s, t = data.numpy(), src.numpy(), tgt.numpy()
        iters = 3 if quick else 10
        base = time_cpu(lambda a=data, b=src, c=tgt: torch_resample(a, b, c), iters=iters)
        ours = time_cpu(lambda a=d, b=s, c=t: rc.resample(a, b, c), iters=iters)
        rows.append({"workload": name, "torch_us": base["median_us"], "rc_us": ours["median_us"],
                     "speedup": base["median_us"] / ours["median_us"]})
    return rows


def run(quick: bool = False) -> list[dict]:
    cols = ["workload", "torch_us", "rc_us", "rc_event_us", "rc_gpu_us", "rc_graph_us",
            "rc_checked_us", "floor_us", "floor_here_us", "speedup"]
    rows = []
    sweep = []
    if gpu_available() and torch_cuda_ready():
        rows += _gpu_rows(quick)
        try:
            sweep = _sweep_rows(quick)
        except Exception:  # a broken build of the sweep must not cost the rows above
            traceback.print_exc()
    else:
        print("resample: no CUDA GPU here; GPU rows skipped")
    rows += _cpu_rows(quick)
    print_table("resample / fuse (times per call in us; speedup = torch / robocache)", rows, cols)
    if sweep:
        print_table("resample_kernel builds (us per call; equal: bit for bit the default's)",
                    sweep, ["workload", "rc_gpu_us", "rc_us", "equal"])
        rows += sweep
    for r in rows:
        r["bench"] = "resample"
    return rows


if __name__ == "__main__":
    sys.exit(_timing.bench_main(run, "resample", __doc__))
