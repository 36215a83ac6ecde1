"""`python -m robocache demo`: load the shipped example dataset and compare batch throughput.

The dataset (examples/data/arm2d_reach, a simulated two-link arm written as LeRobot v3.0 by
examples/make_demo_dataset.py) is read through read_lerobot, put in a TrajectoryStore on the GPU
when there is one (the CPU otherwise), and served by rc.DataLoader with diffusion-policy style
windows (2 observation frames incl. the camera, randomly cropped to 56x56 and scaled to [0, 1],
16 actions, normalized); torch's DataLoader serves the same windows from the same arrays, one
sample at a time (the usual per-sample __getitem__), for comparison.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

DATASET = Path(__file__).resolve().parent.parent / "examples" / "data" / "arm2d_reach"
OBS = [-1, 0]
ACT = list(range(-1, 15))
KEYS = ("observation.state", "observation.images.top", "action")
CAMERA = "observation.images.top"
CROP = 56


class NoDemoDataset(FileNotFoundError):
    """The demo's dataset is not where it was looked for (e.g. an installed wheel: the dataset
    ships with the repository and the sdist only)."""


def run(device=None, root=None, batch_size: int = 256, batches: int = 20) -> dict:
    root = Path(root) if root is not None else DATASET
    if not (root / "meta" / "info.json").is_file():
        raise NoDemoDataset(
            f"no demo dataset at {root}. The demo's dataset ships with the repository and the "
            f"source distribution, not the wheel: from a checkout run `make demo`, or make it "
            f"there with `python examples/make_demo_dataset.py --out DIR` and run "
            f"`python -m robocache demo --root DIR`")
    import json

    features = json.loads((root / "meta" / "info.json").read_text()).get("features", {})
    missing = [k for k in KEYS if k not in features]
    if missing:
        raise NoDemoDataset(f"{root}: the demo reads the keys {list(KEYS)} (a dataset as "
                            f"examples/make_demo_dataset.py writes it); this one lacks {missing}")
    import torch

    import robocache as rc
    from robocache.formats import read_lerobot

    device = device or ("cuda" if rc.cuda_available() and torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    src = read_lerobot(root, keys=KEYS)
    print(f"read {root.name} (LeRobot v3.0): {len(src.episode_ends)} episodes, "
          f"{int(src.episode_ends[-1])} frames at {src.fps:g} fps in "
          f"{time.perf_counter() - t0:.2f} s")
    if min(src.arrays[CAMERA].shape[1:3]) < CROP:
        raise NoDemoDataset(f"{root}: the demo crops {CAMERA} to {CROP}x{CROP}; its frames are "
                            f"{tuple(src.arrays[CAMERA].shape[1:3])}")
    store = rc.TrajectoryStore.from_source(src, device=device)
    deltas = {"observation.state": OBS, CAMERA: OBS, "action": ACT}
    ds = rc.TrajectoryDataset(
        store, delta_indices=deltas, drop_n_last_frames=7, pad="edge",
        normalize={"observation.state": "mean_std", "action": "min_max"},
        image_transforms={CAMERA: rc.ImageTransform(crop=CROP, crop_mode="random")})
    loader = rc.DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, seed=0)
    print(f"store on {store.device}: {store.nbytes / 2**20:.1f} MiB; dataset: {len(ds)} windows; "
          f"{len(loader)} batches of {batch_size} per epoch")
    for name, value in next(iter(loader)).items():
        print(f"  {name:32s} {str(tuple(value.shape)):22s} {str(value.dtype).removeprefix('torch.')}")
    ours = _throughput(loader, batches, device)
    base = _throughput(torch.utils.data.DataLoader(
        _Windows(src, deltas, drop_last=7), batch_size=batch_size, shuffle=True, drop_last=True),
        batches, "cpu")
    print(f"rc.DataLoader on {device}: {ours:,.0f} samples/s; torch DataLoader (per-sample "
          f"__getitem__, 0 workers): {base:,.0f} samples/s; ratio {ours / base:.1f}x")
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
        self.rng = np.random.default_rng(0)
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
            x = self.arrays[k][np.clip(q, s, e - 1)]
            if k == CAMERA:  # random crop, [0, 1], channels first: what the GPU path does
                oy, ox = self.rng.integers(0, x.shape[1] - CROP + 1, size=2)
                x = x[:, oy:oy + CROP, ox:ox + CROP].transpose(0, 3, 1, 2) / np.float32(255)
            out[k] = torch.from_numpy(np.ascontiguousarray(x))
            out[f"{k}_is_pad"] = torch.from_numpy((q < s) | (q >= e))
        return out


if __name__ == "__main__":
    run()
