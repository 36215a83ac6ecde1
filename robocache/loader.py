"""DataLoader: a drop-in for torch.utils.data.DataLoader over a TrajectoryDataset, batches built on
the store's device.

Epoch order. At the start of an epoch the whole order of this rank is drawn on the host, once, from
numpy.random.Generator(PCG64([seed, epoch])):
  sampling="frame", shuffle=True:  a permutation of the dataset indices;
  sampling="frame", shuffle=False: 0, 1, ..., len(dataset) - 1;
  sampling="episode": len(dataset) draws, each an episode chosen uniformly among episodes with at
    least one anchor, then an anchor uniformly within it (torchrl SliceSampler-like: short
    episodes are sampled as often as long ones);
  a sampler / batch_sampler argument: whatever it yields (materialized once per epoch when it has
    a length).
Under torch.distributed the order is then sharded exactly like DistributedSampler: without
drop_last it is padded to a multiple of world_size by repeating its head, with drop_last its tail
is cut; rank r takes order[r::world_size]. The same (seed, epoch) gives the same order on CPU and
CUDA stores, on every rank.

On a CUDA store the order is uploaded once per epoch; batch b reads its indices from that device
array at offset b * batch_size, and ONE kernel launch builds the whole batch, every low-dimensional
key (ops/windows.py): no per-batch host-to-device copy, random-number kernel or synchronisation.
Since full batches are consecutive slices of that array, the launch that builds batch b also
builds the next batches whose outputs sit next to it (up to 64 with fresh outputs, R with
reuse_outputs=R), and their turn launches nothing: one launch per several batches. Everything
else is prepared once (ops.windows.BatchBuilder, kept across epochs): nothing is validated per
batch, and outputs come from pools whose kernel descriptors are packed when the pool is made.
Host work per batch: one dict and, with fresh outputs, the batch's tensor objects (views into a
pool allocated for up to 64 batches at once; ~0.6 us each to create), plus a share of a launch.
On a CPU store each batch is one vectorized NumPy gather per key.

Output memory (CUDA store), `reuse_outputs`:
  0 (default): fresh outputs. Every batch has memory of its own, never written again, so batches
    stay valid as long as they are held (list(loader) works, as with torch's DataLoader). A pool's
    memory (at most 16 MiB) returns to torch's caching allocator once every batch cut from it
    has been dropped.
  R >= 2: 2R output sets recycled in turn, filled up to R at a time. Batch n's tensors are
    overwritten no sooner than when batch n + R is handed out: the last R batches handed out stay
    valid (launches run in stream order, so work already queued on the same stream that reads
    batch n finishes first). Camera keys transformed by the image kernel recycle 2R outputs per
    key the same way (no allocation per key and batch). Saves the tensor objects per batch; for
    loops that drop each batch before asking for the next (R = 2 leaves room for one prefetched
    batch). A last partial batch gets fresh outputs.
Fresh outputs are the default because reuse silently changes batches a program still holds.

Arguments of torch's DataLoader that mean nothing here are accepted and ignored: num_workers,
pin_memory, pin_memory_device, prefetch_factor, persistent_workers, timeout, worker_init_fn,
multiprocessing_context, in_order (batches are built in the main process, in order, already on
the store's device). collate_fn, when given, is applied to each batched dict.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .dataset import TrajectoryDataset

SAMPLING = ("frame", "episode")
STATE_VERSION = 1


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _dist_info(rank, world_size) -> tuple[int, int]:
    if rank is None or world_size is None:
        pg = torch.distributed.is_available() and torch.distributed.is_initialized()
        if world_size is None:
            world_size = torch.distributed.get_world_size() if pg else 1
        if rank is None:
            rank = torch.distributed.get_rank() if pg else 0
    if not _is_int(world_size) or world_size < 1:
        raise ValueError(f"world_size: expected an int >= 1, got {world_size!r}")
    if not _is_int(rank) or not 0 <= rank < world_size:
        raise ValueError(f"rank: expected an int in [0, {world_size - 1}], got {rank!r}")
    return int(rank), int(world_size)


def shard(order: np.ndarray, rank: int, world_size: int, drop_last: bool) -> np.ndarray:
    """DistributedSampler's rule on an epoch order: pad by repeating the head (or cut the tail
    with drop_last) to a multiple of world_size, then take order[rank::world_size]."""
    n = order.size
    if world_size == 1:
        return order
    if drop_last and n % world_size != 0:
        num = math.ceil((n - world_size) / world_size)
    else:
        num = math.ceil(n / world_size)
    total = num * world_size
    if total > n:
        reps = math.ceil((total - n) / n) if n else 0
        order = np.concatenate([order, np.tile(order, reps)[: total - n]])
    else:
        order = order[:total]
    return order[rank:total:world_size]


class DataLoader:
    """Batches of a TrajectoryDataset on the store's device (see the module docstring).

    seed: the base of every epoch's order (default: drawn from `generator`, or from torch's
    global RNG like torch's RandomSampler; 0 under torch.distributed, like DistributedSampler).
    sampling: "frame" (uniform over anchors) or "episode" (uniform over episodes).
    rank / world_size: this process's shard (default: from the torch.distributed process group).
    reuse_outputs: 0 gives fresh tensors every batch; R >= 2 cycles 2R preallocated output
    sets on a CUDA store: the last R batches handed out stay valid (see the module docstring).
    """

    def __init__(self, dataset, batch_size: int | None = 1, shuffle: bool | None = None,
                 sampler=None, batch_sampler=None, num_workers: int = 0, collate_fn=None,
                 pin_memory: bool = False, drop_last: bool = False, timeout: float = 0,
                 worker_init_fn=None, multiprocessing_context=None, generator=None, *,
                 prefetch_factor: int | None = None, persistent_workers: bool = False,
                 pin_memory_device: str = "", in_order: bool = True, seed: int | None = None,
                 sampling: str = "frame", rank: int | None = None,
                 world_size: int | None = None, reuse_outputs: int = 0):
        if not isinstance(dataset, TrajectoryDataset):
            raise TypeError(f"dataset: expected a robocache.TrajectoryDataset, got "
                            f"{type(dataset).__name__} (use torch.utils.data.DataLoader for "
                            f"other datasets)")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("batch_sampler: expected no batch_size, shuffle, sampler or "
                                 "drop_last with it (they are mutually exclusive, as in torch)")
            batch_size = None
        elif not _is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        if sampler is not None and shuffle:
            raise ValueError("sampler: expected no shuffle=True with a sampler (mutually "
                             "exclusive, as in torch)")
        if sampling not in SAMPLING:
            raise ValueError(f"sampling: expected one of {list(SAMPLING)}, got {sampling!r}")
        if sampling == "episode":
            if sampler is not None or batch_sampler is not None:
                raise ValueError("sampling: 'episode' draws its own order; expected no sampler "
                                 "or batch_sampler with it")
            if shuffle is False:
                raise ValueError("shuffle: sampling='episode' draws random samples; expected "
                                 "shuffle None or True, got False")
        if not _is_int(num_workers) or num_workers < 0:
            raise ValueError(f"num_workers: expected an int >= 0, got {num_workers!r}")
        if not isinstance(timeout, numbers.Real) or timeout < 0:
            raise ValueError(f"timeout: expected a number >= 0, got {timeout!r}")
        if not _is_int(reuse_outputs) or reuse_outputs < 0 or reuse_outputs == 1:
            raise ValueError(f"reuse_outputs: expected 0 (fresh outputs) or an int >= 2, got "
                             f"{reuse_outputs!r}")
        if seed is not None and not _is_int(seed):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
        if seed is not None and not 0 <= seed < 2**64:  # PCG64 and the image draws' key
            raise ValueError(f"seed: expected an int in [0, 2**64), got {seed!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = bool(shuffle) or sampling == "episode"
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.drop_last = bool(drop_last)
        self.collate_fn = collate_fn
        self.sampling = sampling
        self.generator = generator
        # accepted for torch compatibility; no effect (see the module docstring)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.pin_memory_device = pin_memory_device
        self.prefetch_factor = prefetch_factor
        self.persistent_workers = persistent_workers
        self.timeout = timeout
        self.worker_init_fn = worker_init_fn
        self.multiprocessing_context = multiprocessing_context
        self.in_order = in_order
        custom = sampler is not None or batch_sampler is not None
        self.rank, self.world_size = (0, 1) if custom else _dist_info(rank, world_size)
        if seed is None:
            if generator is not None:
                seed = int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())
            elif self.world_size > 1:
                seed = 0
            else:
                seed = int(torch.empty((), dtype=torch.int64).random_().item())
        self.seed = int(seed)
        self.reuse_outputs = int(reuse_outputs)
        self._epoch = 0
        self._position = 0       # batches handed out in the current epoch
        self._resume = None      # batch to start the next iteration at (load_state_dict)
        self._builder = None  # (op, key, builder, build) of the device path: _device_path

    def __repr__(self) -> str:
        return (f"DataLoader({len(self.dataset)} anchors, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, "
                f"sampling={self.sampling!r}, seed={self.seed}, epoch={self._epoch}, "
                f"rank={self.rank}/{self.world_size}, device={self.dataset.device!r})")

    # -----------------------------------------------------------------------------------------
    # epoch order

    def set_epoch(self, epoch: int) -> None:
        """Use `epoch` for the next iteration (an iteration that completes advances it by one).
        Forwarded to a sampler / batch_sampler that has set_epoch (e.g. DistributedSampler)."""
        if not _is_int(epoch) or epoch < 0:
            raise ValueError(f"epoch: expected an int >= 0, got {epoch!r}")
        if not (self._resume is not None and int(epoch) == self._epoch):
            # a resume point loaded for this very epoch survives (load_state_dict, then the
            # training loop's set_epoch(epoch)); any other epoch starts at its first batch
            self._position = 0
            self._resume = None
        self._epoch = int(epoch)
        self._forward_epoch()

    def _forward_epoch(self) -> None:
        """The epoch to a sampler / batch_sampler that has set_epoch (DistributedSampler)."""
        for s in (self.sampler, self.batch_sampler):
            if s is not None and hasattr(s, "set_epoch"):
                s.set_epoch(self._epoch)

    @property
    def epoch(self) -> int:
        return self._epoch

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64([self.seed, epoch]))

    def epoch_order(self, epoch: int | None = None) -> np.ndarray:
        """int64 dataset indices of this rank's epoch, in order (a host array). For a custom
        sampler / batch_sampler: what it yields now."""
        epoch = self._epoch if epoch is None else epoch
        if not _is_int(epoch) or epoch < 0:
            raise ValueError(f"epoch: expected an int >= 0, got {epoch!r}")
        order, _ = self._plan(epoch)
        return order

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(order int64 [M], batch bounds int64 [num_batches + 1]) of this rank's epoch."""
        if self.batch_sampler is not None:  # each batch checked as __getitems__ checks it
            batches = [self.dataset._check_indices(np.asarray(list(b)).reshape(-1))
                       for b in self.batch_sampler]
            order = np.concatenate(batches) if batches else np.zeros(0, np.int64)
            bounds = np.concatenate([[0], np.cumsum([b.size for b in batches])]).astype(np.int64)
            return self.dataset._check_indices(order), bounds
        n = len(self.dataset)
        if self.sampler is not None:
            order = self.dataset._check_indices(np.asarray(list(self.sampler)))
        elif self.sampling == "episode":
            order = self._episode_draws(epoch, n)
        elif self.shuffle:
            order = self._rng(epoch).permutation(n).astype(np.int64)
        else:
            order = np.arange(n, dtype=np.int64)
        if self.sampler is None:
            order = shard(order, self.rank, self.world_size, self.drop_last)
        m = order.size
        full = m // self.batch_size
        nb = full if (self.drop_last or m % self.batch_size == 0) else full + 1
        bounds = np.minimum(np.arange(nb + 1, dtype=np.int64) * self.batch_size, m)
        return order, bounds

    def _episode_draws(self, epoch: int, n: int) -> np.ndarray:
        first, count = self.dataset.episode_anchor_ranges()
        valid = np.flatnonzero(count > 0)
        rng = self._rng(epoch)
        ep = valid[rng.integers(0, valid.size, size=n)]
        return first[ep] + rng.integers(0, count[ep])

    def __len__(self) -> int:
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        if self.sampler is not None:
            m = len(self.sampler)
        else:
            m = shard(np.arange(len(self.dataset)), 0, self.world_size, self.drop_last).size
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    # -----------------------------------------------------------------------------------------
    # iteration

    def __iter__(self):
        epoch = self._epoch
        start = 0 if self._resume is None else self._resume
        self._resume = None
        order, bounds = self._plan(epoch)
        ds = self.dataset
        seed, collate = self.seed, self.collate_fn
        bounds = bounds.tolist()
        self._position = start
        if ds._on_device:
            builder, build = self._device_path(ds)
            builder.bind(ds._op.upload_indices(order))  # once per epoch
            # full batches other than a batch_sampler's are consecutive slices of the order:
            # a launch may fill several (ops.windows.BatchBuilder)
            full = 0 if self.batch_sampler is not None else order.size // self.batch_size
            for b in range(start, len(bounds) - 1):
                lo = bounds[b]
                batch = build(lo, bounds[b + 1] - lo, (seed, epoch, b), max(0, full - 1 - b))
                ds._add_tasks(batch, order[lo:bounds[b + 1]])
                self._position = b + 1
                yield batch if collate is None else collate(batch)
        else:
            for b in range(start, len(bounds) - 1):
                batch = ds._batch_from_host(order[bounds[b]:bounds[b + 1]],
                                            draw=(seed, epoch, b))
                self._position = b + 1
                yield batch if collate is None else collate(batch)
        self._epoch = epoch + 1
        self._position = 0

    def _device_path(self, ds):
        """The dataset's per-batch builder, kept across epochs (so reused outputs and pools
        survive them) while dataset, batch_size and reuse_outputs stay the same."""
        key = (self.batch_size, self.reuse_outputs)
        if self._builder is None or self._builder[0] is not ds._op or self._builder[1] != key:
            self._builder = (ds._op, key, *ds._device_batches(self.reuse_outputs,
                                                              self.batch_size))
        return self._builder[2], self._builder[3]

    # -----------------------------------------------------------------------------------------
    # checkpointing

    def state_dict(self) -> dict:
        """Where the loader is: resume exactly with load_state_dict (same dataset and arguments;
        the seed travels in the state)."""
        return {"version": STATE_VERSION, "seed": self.seed, "epoch": self._epoch,
                "batches_done": self._position, "num_anchors": len(self.dataset),
                "batch_size": self.batch_size, "drop_last": self.drop_last,
                "shuffle": self.shuffle, "sampling": self.sampling,
                "world_size": self.world_size, "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        """The next iteration continues the saved epoch at the saved batch."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"state: expected a DataLoader.state_dict() of version "
                             f"{STATE_VERSION}, got {state!r:.200}")
        mine = self.state_dict()
        missing = [k for k in mine if k not in state]
        if missing:
            raise ValueError(f"state: expected a DataLoader.state_dict(), got a dict without "
                             f"{missing}")
        for k in ("num_anchors", "batch_size", "drop_last", "shuffle", "sampling", "world_size",
                  "rank"):
            if state[k] != mine[k]:
                raise ValueError(f"state[{k!r}]: expected {mine[k]!r} (this loader's), got "
                                 f"{state[k]!r}: the state belongs to another configuration")
        for k in ("seed", "epoch", "batches_done"):
            if not _is_int(state[k]) or state[k] < 0 or (k == "seed" and state[k] >= 2**64):
                raise ValueError(f"state[{k!r}]: expected an int >= 0"
                                 f"{' below 2**64' if k == 'seed' else ''}, got {state[k]!r}")
        if state["batches_done"] > len(self):
            raise ValueError(f"state['batches_done']: expected at most {len(self)} (the "
                             f"batches of an epoch), got {state['batches_done']}")
        self.seed = int(state["seed"])
        self._epoch = int(state["epoch"])
        self._position = int(state["batches_done"])
        self._resume = self._position
        self._forward_epoch()  # a DistributedSampler draws the saved epoch's order
