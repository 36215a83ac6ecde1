"""`python -m robocache demo`: load the shipped example dataset and compare batch throughput.

The dataset (examples/data/arm2d_reach, a simulated two-link arm written as LeRobot v3.0 by
examples/make_demo_dataset.py) is read through read_lerobot, put in a TrajectoryStore on the GPU
when there is one (the CPU otherwise), and served by rc.DataLoader with diffusion-policy style
windows (2 observation frames incl. the camera, 16 actions); torch's DataLoader serves the same
windows from the same arrays, one sample at a time, for comparison.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

DATASET = Path(__file__).resolve().parent.parent / "examples" / "data" / "arm2d_reach"
OBS = [-1, 0]
ACT = list(range(-1, 15))
KEYS = ("observation.state", "observation.images.top", "action")


def run(device=None, root=None, batch_size: int = 256, batches: int = 20) -> dict:
    import torch

    import robocache as rc
    from robocache.formats import read_lerobot

    root = Path(root) if root is not None else DATASET
    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"no demo dataset at {root}; make it with "
                                f"`python examples/make_demo_dataset.py --out {root}`")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    src = read_lerobot(root, keys=KEYS)
    print(f"read {root.name}: {len(src.episode_ends)} episodes, {int(src.episode_ends[-1])} "
          f"frames in {time.perf_counter() - t0:.2f} s")

    store = rc.TrajectoryStore.from_lerobot(root, keys=KEYS, device=device)
    deltas = {"observation.state": OBS, "observation.images.top": OBS, "action": ACT}
    ds = rc.TrajectoryDataset(store, delta_indices=deltas, drop_n_last_frames=7, pad="edge",
                              normalize={"observation.state": "mean_std", "action": "min_max"})
    ours = _throughput(rc.DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True,
                                     seed=0), batches, device)
    base = _throughput(torch.utils.data.DataLoader(
        _Windows(src, deltas, drop_last=7), batch_size=batch_size, shuffle=True, drop_last=True),
        batches, "cpu")
    print(f"rc.DataLoader on {device}: {ours:,.0f} samples/s; torch DataLoader (0 workers): "
          f"{base:,.0f} samples/s; ratio {ours / base:.1f}x")
    return {"device": str(device), "robocache_samples_per_s": ours, "torch_samples_per_s": base}


def _throughput(loader, batches: int, device) -> float:
    import torch

    it = iter(loader)
    next(it)  # warm-up: compilation, first allocation
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += len(next(iter(batch.values())))
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


class _Windows:
    """The same windows, built per sample with NumPy (what a torch Dataset usually does)."""

    def __init__(self, src, deltas, drop_last: int):
        self.arrays, self.deltas = src.arrays, deltas
        ends = src.episode_ends
        starts = np.concatenate([[0], ends[:-1]])
        self.anchors = np.concatenate([np.arange(s, e - drop_last) for s, e in
                                       zip(starts, ends, strict=True)])
        self.bounds = np.repeat(np.stack([starts, ends], 1), ends - starts, axis=0)

    def __len__(self):
        return len(self.anchors)

    def __getitem__(self, i):
        import torch

        a = int(self.anchors[i])
        s, e = self.bounds[a]
        out = {}
        for k, d in self.deltas.items():
            q = a + np.asarray(d)
            out[k] = torch.from_numpy(self.arrays[k][np.clip(q, s, e - 1)])
            out[f"{k}_is_pad"] = torch.from_numpy((q < s) | (q >= e))
        return out


if __name__ == "__main__":
    run()
