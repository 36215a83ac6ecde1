"""Train a small action-chunking policy on a TrajectoryStore with rc.DataLoader.

The policy sees the last two observations ([-1, 0]) and predicts the next 16 actions; the loss is
the L1 error over real (not padded) action steps, as in LeRobot's ACT / diffusion configs. The step
time is split into data (waiting for the next batch) and compute (forward, backward, optimizer).

    python examples/train_policy.py                       # synthetic store, a few hundred steps
    python examples/train_policy.py --data examples/data/arm2d_reach   # the bundled LeRobot set
    python examples/train_policy.py --data demo.npz       # arrays + "episode_ends" in one .npz
    python examples/train_policy.py --device cpu --steps 100 --batch-size 64

Runs on the CPU (NumPy backend) or on a GPU (CUDA store, one kernel launch per batch).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run from a checkout: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OBS, ACT = "observation.state", "action"


def synthetic_store(episodes: int, device: str, seed: int = 0):
    """Damped 4-D oscillators: the action is the next step's velocity, so it is predictable from
    the last two observations and a policy's loss visibly falls."""
    import robocache as rc

    rng = np.random.default_rng(seed)
    lens = rng.integers(40, 160, size=episodes)
    states, actions = [], []
    for L in lens:
        freq = rng.uniform(0.05, 0.2, size=4)
        phase = rng.uniform(0, 2 * np.pi, size=4)
        t = np.arange(L + 1)[:, None]
        x = np.exp(-0.005 * t) * np.sin(freq * t + phase)
        vel = np.diff(x, axis=0)                       # [L, 4]
        states.append(np.concatenate([x[:-1], vel], axis=1))   # position + velocity: 8
        actions.append(vel[:, :2] * 10 + rng.normal(0, 0.01, size=(L, 2)))
    arrays = {OBS: np.concatenate(states).astype(np.float32),
              ACT: np.concatenate(actions).astype(np.float32)}
    return rc.TrajectoryStore.from_arrays(arrays, episode_ends=np.cumsum(lens), fps=10.0,
                                          device=device)


def load_store(path: str, device: str):
    import robocache as rc

    p = Path(path)
    if p.suffix == ".npz":
        with np.load(p) as z:
            arrays = {k: z[k] for k in z.files if k != "episode_ends"}
            ends = z["episode_ends"]
        return rc.TrajectoryStore.from_arrays(arrays, episode_ends=ends, device=device)
    if (p / "meta" / "info.json").is_file():  # LeRobot v3.0 / v2.1
        return rc.TrajectoryStore.from_lerobot(p, keys=[OBS, ACT], device=device)
    if p.suffix in (".hdf5", ".h5"):  # robomimic: obs/<key>, actions
        raise SystemExit(f"--data {path}: robomimic files name their keys obs/<key> and "
                         f"actions; load them with rc.TrajectoryStore.from_robomimic")
    if (p / "meta" / "episode_ends").exists() or p.suffix == ".zarr":  # diffusion_policy
        return rc.TrajectoryStore.from_zarr(p, keys=[OBS, ACT], device=device)
    raise SystemExit(f"--data {path}: expected an .npz of arrays + episode_ends, a LeRobot "
                     f"dataset folder or a diffusion_policy zarr store")


def build_policy(obs_dim: int, act_dim: int, n_obs: int, horizon: int):
    import torch.nn as nn

    return nn.Sequential(
        nn.Flatten(), nn.Linear(n_obs * obs_dim, 256), nn.GELU(), nn.Linear(256, 256),
        nn.GELU(), nn.Linear(256, horizon * act_dim), nn.Unflatten(1, (horizon, act_dim)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="a LeRobot dataset folder, a diffusion_policy "
                    "zarr store or an .npz of arrays + episode_ends (default: a synthetic store)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when usable)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--episodes", type=int, default=200, help="synthetic store size")
    ap.add_argument("--horizon", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    import robocache as rc

    torch.manual_seed(args.seed)
    store = (load_store(args.data, args.device) if args.data
             else synthetic_store(args.episodes, args.device, args.seed))
    print(store)
    n_obs = 2
    ds = rc.TrajectoryDataset(
        store, delta_indices={OBS: range(1 - n_obs, 1), ACT: range(args.horizon)},
        normalize={OBS: "mean_std", ACT: "min_max"}, keys=[OBS, ACT])
    # each batch is used up before the next is asked for: recycled outputs are safe here and
    # the fastest mode (on a CPU store the option changes nothing)
    loader = rc.DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True,
                           seed=args.seed, reuse_outputs=2)
    device = torch.device("cpu" if store.device == "cpu" else store.device)
    obs_dim = int(np.prod(store[OBS].shape[1:]))
    act_dim = int(np.prod(store[ACT].shape[1:]))
    policy = build_policy(obs_dim, act_dim, n_obs, args.horizon).to(device)
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"{len(ds)} windows, {len(loader)} batches of {args.batch_size} per epoch, "
          f"device {device}, {sum(p.numel() for p in policy.parameters())} parameters")

    data_s = compute_s = 0.0
    losses = []
    step = 0
    it = iter(loader)
    while step < args.steps:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:  # next epoch: a fresh permutation from (seed, epoch)
            it = iter(loader)
            continue
        sync()
        t1 = time.perf_counter()
        pred = policy(batch[OBS])
        real = (~batch[f"{ACT}_is_pad"]).unsqueeze(-1).to(pred.dtype)
        loss = ((pred - batch[ACT]).abs() * real).sum() / (real.sum() * act_dim).clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        t2 = time.perf_counter()
        if step >= 5:  # leave out the first steps (compilation, allocator warm-up)
            data_s += t1 - t0
            compute_s += t2 - t1
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {losses[-1]:.4f}  epoch {loader.epoch}")
        step += 1

    timed = max(args.steps - 5, 1)
    total = data_s + compute_s
    print(f"\nloss {np.mean(losses[:10]):.4f} -> {np.mean(losses[-10:]):.4f}")
    print(f"per step: data {data_s / timed * 1e3:.3f} ms ({100 * data_s / max(total, 1e-12):.1f}%)"
          f", compute {compute_s / timed * 1e3:.3f} ms; "
          f"{args.batch_size * timed / max(total, 1e-12):,.0f} samples/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
