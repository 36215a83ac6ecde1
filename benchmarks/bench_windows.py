"""The PERF.md window workload: rc.DataLoader against torch's DataLoader, side by side in one run.

Workload: 1000 episodes (302,690 frames), state 32 + action 14 float32, observation deltas
[-1, 0], action deltas 0..15, batch 256, edge padding + is_pad masks, shuffled, drop_last.

Rows (samples per second, and the ratio to the best torch DataLoader row of the same device):
- torch DataLoader over a per-sample __getitem__ (LeRobot-style Python window per sample) with
  0, 4, 8 and all-core workers, pin_memory when a GPU is present (batches moved to the GPU);
- GPU: the same gather written as torch GPU ops (index tables on the device); rc.DataLoader on a
  CUDA store (fresh outputs, reused outputs, and with normalization);
- CPU: rc.DataLoader on a CPU store (the NumPy backend) against DataLoader(num_workers=0).
Without a GPU only the CPU rows run. `run(quick)` is what benchmarks/run_all.py calls;
`python benchmarks/bench_windows.py [--quick] [--json out.json]` runs it alone.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from itertools import islice
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _timing  # noqa: E402

EPISODES, FRAMES, BATCH = 1000, 302_690, 256
OBS_DELTAS, ACT_DELTAS = [-1, 0], list(range(16))


def make_arrays(seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.integers(150, 456, size=EPISODES)
    lens = w * FRAMES // w.sum()
    lens[: FRAMES - lens.sum()] += 1  # exactly FRAMES frames
    ends = np.cumsum(lens).astype(np.int64)
    state = rng.standard_normal((FRAMES, 32)).astype(np.float32)
    action = rng.standard_normal((FRAMES, 14)).astype(np.float32)
    return {"observation.state": state, "action": action}, ends


class PerSampleWindows:
    """A map-style dataset doing what LeRobotDataset does per sample: clamp the query rows into
    the episode, gather them, build the is_pad masks, all in Python for one index."""

    def __init__(self, arrays, ends):
        import torch

        self.torch = torch
        self.state = arrays["observation.state"]
        self.action = arrays["action"]
        frame = np.arange(FRAMES)
        ep = np.searchsorted(ends, frame, side="right")
        starts = np.concatenate([[0], ends[:-1]])
        self.start = starts[ep].tolist()
        self.end = ends[ep].tolist()

    def __len__(self):
        return FRAMES

    def __getitem__(self, i):
        torch = self.torch
        s, e = self.start[i], self.end[i]
        out = {}
        for key, arr, deltas in (("observation.state", self.state, OBS_DELTAS),
                                 ("action", self.action, ACT_DELTAS)):
            q = [max(s, min(e - 1, i + d)) for d in deltas]
            out[key] = torch.from_numpy(arr[q])
            out[f"{key}_is_pad"] = torch.tensor([(i + d < s) or (i + d >= e) for d in deltas])
        out["index"] = torch.tensor(i)
        return out


def _rate(n_samples: int, seconds: float) -> float:
    return n_samples / seconds if seconds > 0 else float("nan")


def time_torch_dataloader(ds, workers: int, batches: int, device: str | None) -> dict:
    import torch

    dl = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers,
                                     pin_memory=device is not None, drop_last=True,
                                     generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():  # more workers than cores is the point of some rows
        warnings.simplefilter("ignore", UserWarning)
        it = iter(dl)
    warm = 2 if workers == 0 else max(2, workers)  # let every worker deliver once

    def consume(b):
        if device is not None:
            return {k: v.to(device, non_blocking=True) for k, v in b.items()}
        return b

    for b in islice(it, warm):
        consume(b)
    t0 = time.perf_counter()
    n = 0
    for b in islice(it, batches):
        consume(b)
        n += 1
    if device is not None:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    del it
    return {"samples_per_s": _rate(n * BATCH, dt), "us_per_batch": dt / max(n, 1) * 1e6}


def time_rc_loader(loader, batches: int, cuda: bool) -> dict:
    it = iter(loader)
    for _ in islice(it, 3):
        pass
    if cuda:
        import torch

        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 0
    for _ in islice(it, batches):
        n += 1
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"samples_per_s": _rate(n * BATCH, dt), "us_per_batch": dt / max(n, 1) * 1e6}


def torch_gpu_gather(state, action, table, obs_d, act_d, order, batches: int) -> dict:
    """The same batch as torch GPU ops: anchor rows, clamp, masks, two gathers."""
    import torch

    def batch(lo):
        t = table[order[lo:lo + BATCH]]
        a, s, e = t[:, 0:1], t[:, 1:2], t[:, 2:3]
        out = {"index": t[:, 0]}
        for key, src, d in (("observation.state", state, obs_d), ("action", action, act_d)):
            q = a + d
            out[f"{key}_is_pad"] = (q < s) | (q >= e)
            out[key] = src[torch.minimum(torch.maximum(q, s), e - 1)]
        return out

    for k in range(3):
        batch(k * BATCH)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for k in range(batches):
        batch(k * BATCH)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"samples_per_s": _rate(batches * BATCH, dt), "us_per_batch": dt / batches * 1e6}


def _check_same(rc_batch, ref_ds, anchors_idx):
    """rc's batch equals the per-sample reference for the same indices (edge pad, masks)."""
    for j, i in enumerate(anchors_idx[:16]):
        ref = ref_ds[int(i)]
        for k, v in ref.items():
            got = rc_batch[k][j].cpu()
            if not bool((got == v).all()):
                raise AssertionError(f"bench_windows: {k} of sample {i} differs from the "
                                     f"per-sample reference")


def _worker_counts() -> list[int]:
    return sorted({0, 4, 8, os.cpu_count() or 1})


def run(quick: bool = False) -> list[dict]:
    import torch

    import robocache as rc

    arrays, ends = make_arrays()
    ref = PerSampleWindows(arrays, ends)
    deltas = {"observation.state": OBS_DELTAS, "action": ACT_DELTAS}
    cuda = rc.cuda_available() and torch.cuda.is_available()
    n_dl = 10 if quick else 60           # batches timed per torch DataLoader row
    n_rc = 200 if quick else 1000        # batches timed per rc row
    rows: list[dict] = []

    def row(device, what, res, **extra):
        r = {"bench": "windows", "device": device, "workload": what, **res, **extra}
        rows.append(r)
        print(f"  {device:4} {what:58} {r['samples_per_s']:>14,.0f} samples/s "
              f"{r['us_per_batch']:>10.1f} us/batch", flush=True)
        return r

    print(f"window workload: {EPISODES} episodes, {FRAMES} frames, batch {BATCH}, "
          f"obs deltas {OBS_DELTAS}, action deltas 0..15 ({'quick' if quick else 'full'})")
    cpu_store = rc.TrajectoryStore.from_arrays(arrays, episode_ends=ends, device="cpu")
    cpu_ds = rc.TrajectoryDataset(cpu_store, delta_indices=deltas)
    probe = np.arange(0, FRAMES, FRAMES // 16)
    _check_same(cpu_ds.get_batch(probe), ref, probe)

    # torch DataLoader baselines (GPU machine: pinned, moved to the GPU)
    dev = "cuda" if cuda else None
    base = []
    for w in _worker_counts():
        res = time_torch_dataloader(ref, w, n_dl, dev)
        pin = ", pin_memory" if cuda else ""
        base.append(row("cuda" if cuda else "cpu",
                        f"torch DataLoader per-sample, {w} workers{pin}", res, workers=w))
    best = max(r["samples_per_s"] for r in base)
    zero = base[0]["samples_per_s"]

    if cuda:
        store = cpu_store.to("cuda")
        ds = rc.TrajectoryDataset(store, delta_indices=deltas)
        table = torch.as_tensor(ds.anchors, device="cuda")
        order = torch.randperm(len(ds), device="cuda")
        res = torch_gpu_gather(store["observation.state"], store["action"], table,
                               torch.tensor(OBS_DELTAS, device="cuda"),
                               torch.tensor(ACT_DELTAS, device="cuda"), order,
                               min(n_rc, len(ds) // BATCH - 4))
        row("cuda", "same gather as torch GPU ops", res, ratio_vs_best_dataloader=
            res["samples_per_s"] / best)
        probe_t = torch.as_tensor(probe, device="cuda")
        _check_same(ds.get_batch(probe_t), ref, probe)
        variants = [("rc.DataLoader (CUDA store, one launch per batch)", ds, 0),
                    ("rc.DataLoader, reuse_outputs=4", ds, 4),
                    ("rc.DataLoader + mean_std/min_max normalization",
                     rc.TrajectoryDataset(store, delta_indices=deltas,
                                          normalize={"observation.state": "mean_std",
                                                     "action": "min_max"}), 0)]
        for what, d, reuse in variants:
            dl = rc.DataLoader(d, batch_size=BATCH, shuffle=True, drop_last=True, seed=0,
                               reuse_outputs=reuse)
            res = time_rc_loader(dl, min(n_rc, len(dl) - 4), cuda=True)
            row("cuda", what, res, ratio_vs_best_dataloader=res["samples_per_s"] / best,
                target_samples_per_s=20e6)
    else:
        print("  (no CUDA GPU here: GPU rows skipped)")

    # NumPy backend against DataLoader(num_workers=0) on the CPU
    if cuda:
        zero = time_torch_dataloader(ref, 0, n_dl, None)["samples_per_s"]
        row("cpu", "torch DataLoader per-sample, 0 workers (CPU only)",
            {"samples_per_s": zero, "us_per_batch": BATCH / zero * 1e6}, workers=0)
    dl = rc.DataLoader(cpu_ds, batch_size=BATCH, shuffle=True, drop_last=True, seed=0)
    res = time_rc_loader(dl, min(n_rc // 4, len(dl) - 4), cuda=False)
    row("cpu", "rc.DataLoader (NumPy backend, CPU store)", res,
        ratio_vs_dataloader_0_workers=res["samples_per_s"] / zero, target_ratio=10.0)

    print("\n## window workload: samples/s (ratio = rc / baseline)")
    for r in rows:
        ratio = r.get("ratio_vs_best_dataloader", r.get("ratio_vs_dataloader_0_workers"))
        tail = "" if ratio is None else f"  x{ratio:.1f}"
        print(f"{r['device']:4} | {r['workload']:58} | {r['samples_per_s']:>14,.0f}{tail}")
    return rows


if __name__ == "__main__":
    sys.exit(_timing.bench_main(run, "windows", __doc__))
