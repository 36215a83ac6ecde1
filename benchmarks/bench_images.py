"""Image batches (PERF.md): rc.crop_resize_normalize against torch GPU ops and a torch DataLoader
doing the same work per sample on the CPU with workers.

Workloads
  crop84:  20,000 frames 96x96x3 uint8, batch 256 x 2 frames, random crop 84x84, /255, mean/std,
           CHW float32 and bfloat16.
  cams224: 4 cameras 480x640x3, batch 32 x 2 frames, bilinear resize to 224x224, /255, mean/std,
           bfloat16 (one call per camera).
Implementations
  robocache-cuda      frames resident on the GPU, rc.crop_resize_normalize, one launch per camera
  robocache-cuda-plan the same kernel as the dataset calls it: plan made once, outputs
                      preallocated, images.apply_cuda per camera (no per-call validation)
  robocache-cuda-plan-unit  the same without mean/std: [0, 1] frames, v / 255 rounded once
                      (the kernel's exact-division instance; crop84 only)
  robocache-pinned    frames in pinned host memory, read by the kernel over the bus
  torch-gpu           index, crop (gather), permute, float, F.interpolate, normalise on the GPU
  torch-dataloader-N  torch DataLoader, per-sample __getitem__ on the CPU, N workers
  robocache-numpy     the NumPy backend (vectorised over the batch, one CPU core)
The byte floor is (bytes read + written) / copy bandwidth: PERF.md's H200 figure (4.16 TB/s), and
on a GPU also the device-to-device copy bandwidth measured in this run.
GPU rows are skipped (with the reason printed) where no CUDA device is usable; CPU rows always run.

    python benchmarks/bench_images.py [--quick] [--json out.json]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import robocache as rc  # noqa: E402
from benchmarks import _timing  # noqa: E402
from robocache.ops import _random, images  # noqa: E402

H200_COPY_BW = 4.16e12  # bytes/s, PERF.md
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------
# Workload definitions


def _crop84(quick: bool, on_gpu: bool) -> dict:
    return dict(name="crop84", N=20000 if (on_gpu or not quick) else 2000, H=96, W=96, C=3,
                B=256, K=2, cams=1, crop=84, size=(84, 84))


def _cams224(quick: bool, on_gpu: bool) -> dict:
    if on_gpu:
        n = 200 if quick else 1000
    else:
        n = 8 if quick else 64
    return dict(name="cams224", N=n, H=480, W=640, C=3, B=32, K=2, cams=4, crop=None,
                size=(224, 224))


def _bytes(w: dict, out_itemsize: int) -> int:
    """Bytes a batch must move: every input byte of the crop window (the whole frame when
    resizing, as PERF.md counts it) + the output."""
    B, K, C, cams = w["B"], w["K"], w["C"], w["cams"]
    h, wd = w["size"]
    win = (w["crop"] ** 2) if w["crop"] else w["H"] * w["W"]
    return cams * B * K * (win * C + C * h * wd * out_itemsize)


def _op_kwargs(w: dict, out_dtype: str) -> dict:
    kw = dict(mean=MEAN, std=STD, out_dtype=out_dtype)
    if w["crop"]:
        kw.update(crop=w["crop"], crop_mode="random")
    else:
        kw.update(resize=w["size"])
    return kw


def _index_batches(w: dict, n: int, seed: int = 0) -> list[np.ndarray]:
    """n batches of [B,K] frame rows: random anchors and their next K-1 frames (clamped)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = rng.integers(0, w["N"], w["B"])
        out.append(np.minimum(a[:, None] + np.arange(w["K"]), w["N"] - 1).astype(np.int64))
    return out


def _row(w, impl, out_dtype, us, device, floor_us=None, **extra) -> dict:
    row = dict(bench="images", workload=w["name"], impl=impl, out_dtype=out_dtype,
               device=device, us_per_batch=us, samples_per_s=w["B"] / (us * 1e-6),
               floor_us_h200=_bytes(w, 2 if out_dtype == "bfloat16" else 4) / H200_COPY_BW * 1e6)
    if floor_us is not None:
        row["floor_us_measured"] = floor_us
    row.update(extra)
    return row


# ---------------------------------------------------------------------------------------------
# GPU


def _gpu_time(fn, iters: int) -> tuple[float, float]:
    """(median CUDA-event latency per call, back-to-back wall time per call), microseconds.
    Ten warm-up calls and a longer timed window: with three and 20 calls (~1 ms), the first row
    of a workload (the standalone op) ran 2x slower than the same kernel's next rows in run 5,
    which a cold start would explain; this rules that out or confirms a real cost."""
    t = _timing.time_gpu(fn, warmup=10, iters=iters, indexed=True)
    return t["event_us"], t["b2b_us"]


def _copy_bandwidth() -> float:
    import torch

    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    _, us = _gpu_time(lambda i: dst.copy_(src), 10)
    return 2 * src.numel() / (us * 1e-6)


def _torch_gpu_batch(frames, idx, w, out_dtype, mean_t, std_t, gen):
    """The same batch with plain torch ops: gather, crop by advanced indexing, permute,
    float, (F.interpolate), normalise, cast."""
    import torch
    import torch.nn.functional as F

    B, K = idx.shape
    x = frames[idx]                                               # [B,K,H,W,C] uint8
    if w["crop"]:
        c = w["crop"]
        o = torch.randint(0, w["H"] - c + 1, (2, B, 1), device=idx.device, generator=gen)
        ar = torch.arange(c, device=idx.device)
        ys, xs = o[0] + ar, o[1] + ar                             # [B,c]
        bi = torch.arange(B, device=idx.device)[:, None, None, None]
        ki = torch.arange(K, device=idx.device)[None, :, None, None]
        x = x[bi, ki, ys[:, None, :, None], xs[:, None, None, :]]  # [B,K,c,c,C]
        x = x.permute(0, 1, 4, 2, 3).float().div_(255)
    else:
        x = x.flatten(0, 1).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=w["size"], mode="bilinear", align_corners=False,
                          antialias=False).div_(255)
        x = x.view(B, K, *x.shape[1:])
    x = x.sub_(mean_t).div_(std_t)
    return x.to(torch.bfloat16) if out_dtype == "bfloat16" else x


def _pixels_per_thread_sweep(w, out_dtype, ours_plan, iters, dev, floor) -> list[dict]:
    """The plan path with other launch shapes (pixels per thread; the kernels stride over any
    grid, so this changes speed only): which PIXELS_PER_THREAD to ship."""
    rows = []
    default = images.PIXELS_PER_THREAD, images.CROP_PIXELS_PER_THREAD
    try:
        for ppt in (4, 8, 16, 32):
            images.PIXELS_PER_THREAD = images.CROP_PIXELS_PER_THREAD = ppt
            images._launch_config.cache_clear()
            lat, b2b = _gpu_time(ours_plan, iters)
            rows.append(_row(w, f"robocache-cuda-plan-ppt{ppt}", out_dtype, b2b, dev, floor,
                             event_us=lat, pixels_per_thread=ppt))
    finally:
        images.PIXELS_PER_THREAD, images.CROP_PIXELS_PER_THREAD = default
        images._launch_config.cache_clear()
    return rows


def _run_gpu(w: dict, quick: bool, bw: float) -> list[dict]:
    import torch

    rows = []
    dev = torch.cuda.get_device_name()
    iters = 60 if quick else 200
    rng = np.random.default_rng(1)
    cams = [torch.from_numpy(rng.integers(0, 256, (w["N"], w["H"], w["W"], w["C"]),
                                          dtype=np.uint8)) for _ in range(w["cams"])]
    on_dev = [f.cuda() for f in cams]
    idx = [torch.from_numpy(i).cuda() for i in _index_batches(w, 16)]
    mean_t = torch.tensor(MEAN, device="cuda")[:, None, None]
    std_t = torch.tensor(STD, device="cuda")[:, None, None]
    gen = torch.Generator(device="cuda")
    gen.manual_seed(0)
    for out_dtype in (("float32", "bfloat16") if w["crop"] else ("bfloat16",)):
        kw = _op_kwargs(w, out_dtype)
        floor = _bytes(w, 2 if out_dtype == "bfloat16" else 4) / bw * 1e6

        def ours(i, frames=on_dev, kw=kw):
            for f in frames:
                rc.crop_resize_normalize(f, idx[i % 16], batch=i, check_indices=False, **kw)

        def theirs(i, out_dtype=out_dtype, frames=on_dev):
            for f in frames:
                _torch_gpu_batch(f, idx[i % 16], w, out_dtype, mean_t, std_t, gen)

        plan = images.make_plan(tuple(on_dev[0].shape[1:]), **kw)
        outs = [torch.empty(plan.out_shape(w["B"], w["K"]), device="cuda",
                            dtype=getattr(torch, out_dtype)) for _ in on_dev]

        def ours_plan(i, plan=plan, outs=outs, frames=on_dev):
            key = _random.rand_key(0, 0, i)
            for f, o in zip(frames, outs, strict=True):
                images.apply_cuda(plan, f, idx[i % 16], None, o, key)

        # the same plan with one pixel per work item and scalar stores (the kernel before the
        # 4-pixel stores), for the side-by-side
        scalar = images.make_plan(tuple(on_dev[0].shape[1:]), **kw)
        object.__setattr__(scalar, "run_width", 1)
        object.__setattr__(scalar, "kernel", scalar.kernel_scalar)

        lat, b2b = _gpu_time(ours, iters)
        rows.append(_row(w, "robocache-cuda", out_dtype, b2b, dev, floor, event_us=lat))
        graph = _timing.graph_us(lambda: ours(0))  # the op captured in a CUDA graph, replayed
        if graph is not None:
            rows.append(_row(w, "robocache-cuda-graph", out_dtype, graph, dev, floor))
        def plan_row(impl: str, p, *, dtype=out_dtype, floor=floor, **extra) -> dict:
            """The row of the plan path with plan `p` (this dtype's outputs)."""
            lat, b2b = _gpu_time(lambda i: ours_plan(i, plan=p), iters)
            gpu = _timing.device_us(lambda: ours_plan(0, plan=p)) or {}
            return _row(w, impl, dtype, b2b, dev, floor, event_us=lat, gpu_us=gpu.get("us"),
                        **extra)

        rows.append(plan_row("robocache-cuda-plan", plan, pixels_per_store=plan.run_width))
        if plan.run_width > 1:
            rows.append(plan_row("robocache-cuda-plan-1px", scalar, pixels_per_store=1))
        if w["crop"]:  # [0, 1] frames, no mean / std: the kernel's exact-division instances
            unit = images.make_plan(tuple(on_dev[0].shape[1:]),
                                    **{k: v for k, v in kw.items() if k not in ("mean", "std")})
            rows.append(plan_row("robocache-cuda-plan-unit", unit, exact=unit.exact))
        lat, b2b = _gpu_time(theirs, iters)
        rows.append(_row(w, "torch-gpu", out_dtype, b2b, dev, floor, event_us=lat))
        rows += _pixels_per_thread_sweep(w, out_dtype, ours_plan, iters, dev, floor)
    # host-resident frames: read over the bus by the kernel (bus_read_GBps counts the bytes of
    # the crop window, or of the whole frame when resizing, per image)
    pinned = [f.pin_memory() for f in cams]
    out_dtype = "bfloat16"
    kw = _op_kwargs(w, out_dtype)

    def host(i):
        for f in pinned:
            rc.crop_resize_normalize(f, idx[i % 16], batch=i, device="cuda",
                                     check_indices=False, **kw)

    lat, b2b = _gpu_time(host, max(5, iters // 4))
    win = (w["crop"] ** 2) if w["crop"] else w["H"] * w["W"]
    read = w["cams"] * w["B"] * w["K"] * win * w["C"]
    rows.append(_row(w, "robocache-pinned", out_dtype, b2b, dev, event_us=lat,
                     bus_read_GBps=read / (b2b * 1e-6) / 1e9))
    return rows


# ---------------------------------------------------------------------------------------------
# CPU


class PerSampleImages:
    """A torch Dataset doing the per-sample work of a typical image pipeline on the CPU."""

    def __init__(self, cams, w):
        self.cams, self.w = cams, w
        self.rng = None

    def __len__(self):
        return self.w["N"]

    def __getitem__(self, i):
        import torch
        import torch.nn.functional as F

        w = self.w
        rows = np.minimum(i + np.arange(w["K"]), w["N"] - 1)
        outs = []
        for frames in self.cams:
            x = frames[rows]                                       # [K,H,W,C] uint8
            if w["crop"]:
                c = w["crop"]
                if self.rng is None:        # one generator per worker process
                    self.rng = np.random.default_rng(os.getpid())
                y, z = self.rng.integers(0, w["H"] - c + 1, 2)
                x = x[:, y:y + c, z:z + c]
                t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float()
                t = t.div_(255)
            else:
                t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
                t = F.interpolate(t, size=w["size"], mode="bilinear", align_corners=False,
                                  antialias=False).div_(255)
            t = (t - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
            outs.append(t.to(torch.bfloat16) if w["out_dtype"] == "bfloat16" else t)
        return outs


def _dataloader_us(cams, w, out_dtype, workers, n_batches) -> float:
    import torch

    ds = PerSampleImages(cams, dict(w, out_dtype=out_dtype))
    loader = torch.utils.data.DataLoader(ds, batch_size=w["B"], shuffle=True, drop_last=True,
                                         num_workers=workers)
    it = iter(loader)
    next(it)                                   # worker start-up is not counted
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return (time.perf_counter() - t0) / n_batches * 1e6


def _run_cpu(w: dict, quick: bool) -> list[dict]:
    rows = []
    rng = np.random.default_rng(2)
    cams = [rng.integers(0, 256, (w["N"], w["H"], w["W"], w["C"]), dtype=np.uint8)
            for _ in range(w["cams"])]
    idx = _index_batches(w, 4)
    cores = os.cpu_count() or 1
    workers = (0, min(2, cores)) if quick else tuple(sorted({0, min(4, cores), min(8, cores),
                                                             min(16, cores)}))
    dtypes = ("float32", "bfloat16") if w["crop"] else ("bfloat16",)
    need = w["B"] * ((2 if quick else 5) + 1)
    if w["N"] < need:   # the loader needs enough samples for its batches
        reps = -(-need // w["N"])
        cams_dl = [np.concatenate([c] * reps) for c in cams]
    else:
        cams_dl = cams
    w_dl = dict(w, N=cams_dl[0].shape[0])
    for out_dtype in dtypes:
        kw = _op_kwargs(w, out_dtype)
        n = 2 if quick else 8
        t0 = time.perf_counter()
        for i in range(n):
            for f in cams:
                rc.crop_resize_normalize(f, idx[i % 4], batch=i, **kw)
        rows.append(_row(w, "robocache-numpy", out_dtype, (time.perf_counter() - t0) / n * 1e6,
                         "cpu"))
        for nw in workers:
            n_batches = (1 if quick else 4) if nw == 0 else (2 if quick else 5)
            us = _dataloader_us(cams_dl, w_dl, out_dtype, nw, n_batches)
            rows.append(_row(w, f"torch-dataloader-{nw}", out_dtype, us, "cpu"))
    return rows


# ---------------------------------------------------------------------------------------------


def _print(rows: list[dict]) -> None:
    print(f"{'workload':9} {'impl':23} {'dtype':9} {'device':26} {'us/batch':>11} "
          f"{'samples/s':>11} {'vs best DL':>10} {'floor H200':>10} {'floor here':>10}")
    for r in rows:
        dl = [x["us_per_batch"] for x in rows if x["workload"] == r["workload"]
              and x["out_dtype"] == r["out_dtype"] and x["impl"].startswith("torch-dataloader")]
        ratio = f"{min(dl) / r['us_per_batch']:9.1f}x" if dl else f"{'-':>10}"
        here = r.get("floor_us_measured")
        here = f"{here:10.1f}" if here else f"{'-':>10}"
        extra = f"  bus {r['bus_read_GBps']:.1f} GB/s" if "bus_read_GBps" in r else ""
        if r.get("gpu_us"):
            px = r.get("pixels_per_store")  # plan rows of other launch shapes have none
            extra += f"  GPU {r['gpu_us']:.1f} us" + (f" ({px} px/store)" if px else "")
        print(f"{r['workload']:9} {r['impl']:23} {r['out_dtype']:9} {r['device'][:26]:26} "
              f"{r['us_per_batch']:11.1f} {r['samples_per_s']:11.0f} {ratio} "
              f"{r['floor_us_h200']:10.1f} {here}{extra}")


def run(quick: bool = False) -> list[dict]:
    rows: list[dict] = []
    why = _timing.gpu_reason()
    if why is None:
        bw = _copy_bandwidth()
        print(f"device-to-device copy bandwidth here: {bw / 1e12:.2f} TB/s")
        for make in (_crop84, _cams224):
            rows += _run_gpu(make(quick, True), quick, bw)
    else:
        print(f"bench_images: GPU rows skipped ({why})")
    for make in (_crop84, _cams224):
        rows += _run_cpu(make(quick, False), quick)
    _print(rows)
    return rows


if __name__ == "__main__":
    sys.exit(_timing.bench_main(run, "images", __doc__))
