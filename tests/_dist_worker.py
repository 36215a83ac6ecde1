"""One rank of the two-process torch.distributed (gloo, CPU) loader test (run by test_loader.py).

argv: rank world_size init_file out_file. Writes the dataset indices this rank saw per epoch."""

import sys

import numpy as np
import torch.distributed as dist

import robocache as rc


def main():
    rank, world, init_file, out_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    rng = np.random.default_rng(0)  # the same store on every rank
    lens = [5, 1, 9, 3, 12, 2]
    ends = np.cumsum(lens)
    store = rc.TrajectoryStore.from_arrays(
        {"a": rng.standard_normal((int(ends[-1]), 2)).astype(np.float32)},
        episode_ends=ends, device="cpu")
    ds = rc.TrajectoryDataset(store, delta_indices={"a": [-1, 0, 1]})
    loader = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=7)  # rank / world from the group
    assert (loader.rank, loader.world_size) == (rank, world), (loader.rank, loader.world_size)
    seen = {}
    for epoch in range(2):
        loader.set_epoch(epoch)
        seen[f"epoch{epoch}"] = np.concatenate([b["index"].numpy() for b in loader])
        assert len(loader) == -(-(len(ds) // world) // 4)
    seen["len"] = np.array([len(ds)])
    np.savez(out_file, **seen)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
