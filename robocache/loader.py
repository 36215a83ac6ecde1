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
    a length; one without a length, e.g. an endless sampler, is read STREAM_BATCHES batches at a
    time, as torch streams it, and the loader has no len() either).
Under torch.distributed the order is then sharded exactly like DistributedSampler: without
drop_last it is padded to a multiple of world_size by repeating its head (so with len(dataset)
not a multiple of world_size, a few samples are in two ranks' shards), with drop_last its tail
is cut; rank r takes order[r::world_size]. The same (seed, epoch) gives the same order on CPU and
CUDA stores, on every rank. A sampler / batch_sampler chooses a rank's samples itself (e.g.
DistributedSampler(rank=...)): rank= / world_size= are refused with one.
Random image crops / jitter (TrajectoryDataset's ImageTransform) are keyed by (seed, epoch, batch
number, camera key), the batch number counted across ranks (rank r's i-th batch is number
i * world_size + r; with a sampler, its rank / num_replicas as DistributedSampler has them, else
the process group's), so the ranks' crops differ while their orders are one.

iter(loader) is an iterator of its own, as torch's: it takes the loader's epoch (and a loaded
resume point) when it is made, has len() (the batches it has left) and keeps its epoch's order
while other iterators of the same loader run (on a CUDA store each has its own index array; the
builder is pointed back at it when another iterator built last, so the hot path stays one
identity check per batch). The loader's epoch and position (state_dict) follow the iterator
made or handing out a batch last; when that one runs to its end it advances the epoch by one
and forwards it to a sampler / batch_sampler with set_epoch (DistributedSampler); an older pass
ending behind it changes nothing. A pass that handed out batches and was left before its end
(a loop that breaks after N steps, an error) also ends its epoch for the next iter(loader): that
pass gets the next epoch, a new order, as torch's RandomSampler draws one per iter() - unless
set_epoch or load_state_dict was called since (those choose the epoch and position, and a pass
begun before them no longer moves the loader's state). state_dict() says where the loader is, for
a checkpoint: taken in or after a pass left early, it is that pass's epoch and position
(resuming continues it), while the loader's own next iter() starts the next epoch. With
reuse_outputs=R,
iterators run in turn share the ring: the last R batches handed out, by any of them, stay valid.

batch_size=None turns batching off, as in torch: every item is one sample, a dict without the
batch dimension (dataset[i]), collate_fn applied to each; drop_last and reuse_outputs are
refused with it. Samples are still built CHUNK samples per batch launch.

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
the store's device). collate_fn, when given, gets what torch's gets: each batch's samples (a
dataset.BatchSamples: a sequence of per-sample dicts, views of the batch built at once, whose
`.batch` is the batched dict; torch's default_collate returns that without a copy), or with
batching off each sample.
"""

from __future__ import annotations

import collections
import itertools
import math
import numbers
from collections.abc import Iterator

import numpy as np
import torch

from .dataset import BatchSamples, TrajectoryDataset, sample_of

SAMPLING = ("frame", "episode")
STATE_VERSION = 1
STREAM_BATCHES = 64  # batches read at a time from a sampler / batch_sampler without a length
CHUNK = 64           # samples built per batch with batch_size=None (one sample per item)


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _has_len(x) -> bool:
    """Whether len(x) works (a sampler whose __len__ raises TypeError or NotImplementedError
    has none)."""
    try:
        len(x)
    except (TypeError, NotImplementedError):
        return False
    return True


def _sampler_ranks(sampler, batch_sampler) -> tuple[int, int]:
    """(rank, world_size) of a custom sampler's shard, for the image draws: a sampler's (or a
    batch_sampler's sampler's) rank / num_replicas, as DistributedSampler has them, else the
    torch.distributed process group's, else (0, 1)."""
    for s in (sampler, batch_sampler, getattr(batch_sampler, "sampler", None)):
        r, w = getattr(s, "rank", None), getattr(s, "num_replicas", None)
        if _is_int(r) and _is_int(w) and 0 <= r < w:
            return int(r), int(w)
    return _dist_info(None, None)


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
    global RNG like torch's RandomSampler; 0 under torch.distributed, like DistributedSampler,
    whatever `generator` each rank passes: every rank must draw the same order to shard it).
    sampling: "frame" (uniform over anchors) or "episode" (uniform over episodes).
    batch_size: samples per batch; None turns batching off (one sample per item, as torch).
    rank / world_size: this process's shard (default: from the torch.distributed process group);
    refused with a sampler / batch_sampler, which choose the rank's samples themselves.
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
        elif batch_size is None:  # torch's automatic batching off: one sample per item
            if drop_last:
                raise ValueError("drop_last: batch_size=None turns batching off (one sample per "
                                 "item, as in torch); expected drop_last=False with it")
            if reuse_outputs:
                raise ValueError("reuse_outputs: batch_size=None hands out single samples (views "
                                 "of shared batches); expected reuse_outputs=0 with it")
        elif not _is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size: expected an int >= 1 or None, got {batch_size!r}")
        if sampler is not None and shuffle:
            raise ValueError("sampler: expected no shuffle=True with a sampler (mutually "
                             "exclusive, as in torch)")
        if (sampler is not None or batch_sampler is not None) and (
                rank is not None or world_size is not None):
            raise ValueError(f"rank / world_size: a sampler / batch_sampler chooses this "
                             f"process's samples itself (e.g. DistributedSampler(rank=..., "
                             f"num_replicas=...)); expected rank=None and world_size=None with "
                             f"it, got rank={rank!r}, world_size={world_size!r}")
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
        self.batch_size = None if batch_size is None else int(batch_size)
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
        # random image draws are keyed by the batch number counted across ranks, so the ranks'
        # crops differ: rank r's batch i is number i * world_size + r
        self._draw_ranks = _sampler_ranks(sampler, batch_sampler) if custom else \
            (self.rank, self.world_size)
        if seed is None:
            if self.world_size > 1:  # one order on every rank, as DistributedSampler(seed=0),
                seed = 0             # whose order no DataLoader generator changes either
            elif generator is not None:
                seed = int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())
            else:
                seed = int(torch.empty((), dtype=torch.int64).random_().item())
        self.seed = int(seed)
        self.reuse_outputs = int(reuse_outputs)
        self._epoch = 0
        self._position = 0       # batches handed out in the current epoch
        self._resume = None      # batch to start the next iteration at (load_state_dict)
        self._builder = None  # (op, key, builder, build) of the device path: _device_path
        self._current = None  # the iterator made or handing out a batch last (_LoaderIter)
        self._era = 0  # + 1 at set_epoch / load_state_dict: passes begun before stop counting
        self._forwarded = 0  # the epoch last forwarded to a sampler with set_epoch

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
        self._new_era()
        self._forward_epoch()

    def _new_era(self) -> None:
        """set_epoch / load_state_dict chose the next pass: a pass begun before neither moves
        the loader's state nor ends (or skips) the chosen epoch."""
        self._current = None
        self._era += 1

    def __getstate__(self) -> dict:
        """pickle / copy.deepcopy: a live pass (a generator) and the device path's builder
        stay behind (the copy makes its own); seed, epoch, position and a loaded resume point
        travel. A copy is a checkpoint: taken while a pass is under way (or was left early), it
        resumes that pass's epoch at its position, as load_state_dict(state_dict()) would."""
        state = self.__dict__.copy()
        if self._left_early():  # a checkpoint: the copy resumes where its state_dict() says
            state["_resume"] = self._position
        state["_current"] = None
        state["_builder"] = None
        return state

    def _forward_epoch(self) -> None:
        """The epoch to a sampler / batch_sampler that has set_epoch (DistributedSampler)."""
        for s in (self.sampler, self.batch_sampler):
            if s is not None and hasattr(s, "set_epoch"):
                s.set_epoch(self._epoch)
        self._forwarded = self._epoch

    def _sampler_epoch_untouched(self) -> bool:
        """Whether no sampler with set_epoch had its epoch set by someone else since the loader
        last forwarded one (a DistributedSampler's .epoch; a sampler that does not show its
        epoch counts as untouched)."""
        return all(getattr(s, "epoch", self._forwarded) == self._forwarded
                   for s in (self.sampler, self.batch_sampler)
                   if s is not None and hasattr(s, "set_epoch"))

    @property
    def epoch(self) -> int:
        return self._epoch

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64([self.seed, epoch]))

    def epoch_order(self, epoch: int | None = None) -> np.ndarray:
        """int64 dataset indices of this rank's epoch, in order (a host array). For a custom
        sampler / batch_sampler: what it yields now (TypeError for one without a length: its
        order is streamed, never drawn whole)."""
        epoch = self._epoch if epoch is None else epoch
        if not _is_int(epoch) or epoch < 0:
            raise ValueError(f"epoch: expected an int >= 0, got {epoch!r}")
        if self._streamed():
            raise TypeError(f"epoch_order: the {self._sampler_name()} has no length; its order "
                            f"is streamed batch by batch, not drawn ahead")
        order, _ = self._plan(epoch)
        return order

    @property
    def _auto_collation(self) -> bool:
        """Whether items are batches (torch's name): False for batch_size=None."""
        return self.batch_sampler is not None or self.batch_size is not None

    def _size(self) -> int | None:
        """Samples per batch built: batch_size, CHUNK with batching off, None (a batch_sampler's
        own sizes)."""
        if self.batch_sampler is not None:
            return None
        return CHUNK if self.batch_size is None else self.batch_size

    def _custom(self):
        """The batch_sampler, else the sampler, else None (the loader draws its own order)."""
        return self.batch_sampler if self.batch_sampler is not None else self.sampler

    def _sampler_name(self) -> str:
        return "batch_sampler" if self.batch_sampler is not None else "sampler"

    def _streamed(self) -> bool:
        """A sampler / batch_sampler without a length: read in pieces, never materialized."""
        s = self._custom()
        return s is not None and not _has_len(s)

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(order int64 [M], batch bounds int64 [num_batches + 1]) of this rank's epoch (batches
        of _size() samples: CHUNK with batching off)."""
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
        return order, self._bounds(order.size, self._size())

    def _bounds(self, m: int, size: int) -> np.ndarray:
        """Batch bounds of `m` indices cut into batches of `size` (drop_last: no partial one)."""
        full = m // size
        nb = full if (self.drop_last or m % size == 0) else full + 1
        return np.minimum(np.arange(nb + 1, dtype=np.int64) * size, m)

    def _pieces(self, epoch: int, start: int):
        """This rank's epoch from batch `start` on, as pieces (order, bounds, b0, first, full):
        batch b0 + i is order[bounds[i]:bounds[i + 1]] for i >= first, and its first `full`
        batches are consecutive `size`-index slices of order (the device path fills them ahead).
        One piece with a length; STREAM_BATCHES batches a piece from a sampler without one."""
        if not self._streamed():
            order, bounds = self._plan(epoch)
            full = 0 if self.batch_sampler is not None else order.size // self._size()
            yield order, bounds.tolist(), 0, start, full
            return
        check = self.dataset._check_indices
        b0 = start
        if self.batch_sampler is not None:
            it = iter(self.batch_sampler)
            collections.deque(itertools.islice(it, start), maxlen=0)  # batches done: skipped
            while True:
                batches = [check(np.asarray(list(b)).reshape(-1))
                           for b in itertools.islice(it, STREAM_BATCHES)]
                if not batches:
                    return
                order = np.concatenate(batches)
                bounds = np.concatenate([[0], np.cumsum([b.size for b in batches])])
                yield order, bounds.tolist(), b0, 0, 0
                b0 += len(batches)
        size = self._size()
        it = iter(self.sampler)
        collections.deque(itertools.islice(it, start * size), maxlen=0)
        per = STREAM_BATCHES * size
        while True:
            order = check(np.asarray(list(itertools.islice(it, per))))
            if order.size == 0:
                return
            bounds = self._bounds(order.size, size)
            yield order, bounds.tolist(), b0, 0, order.size // size
            b0 += bounds.size - 1
            if order.size < per:  # the sampler ended
                return

    def _episode_draws(self, epoch: int, n: int) -> np.ndarray:
        first, count = self.dataset.episode_anchor_ranges()
        valid = np.flatnonzero(count > 0)
        rng = self._rng(epoch)
        ep = valid[rng.integers(0, valid.size, size=n)]
        return first[ep] + rng.integers(0, count[ep])

    def __len__(self) -> int:
        """Batches of an epoch (samples with batch_size=None). TypeError for a sampler /
        batch_sampler without a length, as torch's DataLoader."""
        if self._streamed():
            raise TypeError(f"len(DataLoader): its {self._sampler_name()} "
                            f"({type(self._custom()).__name__}) has no length, so the loader "
                            f"has none")
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        if self.sampler is not None:
            m = len(self.sampler)
        else:
            m = shard(np.arange(len(self.dataset)), 0, self.world_size, self.drop_last).size
        if self.batch_size is None:
            return m
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    # -----------------------------------------------------------------------------------------
    # iteration

    def __iter__(self) -> Iterator:
        """A pass over the loader: an iterator of its own, with len() (_LoaderIter)."""
        return _LoaderIter(self)

    def _items(self, epoch: int, start: int):
        """The items (batches, or samples with batching off) of `epoch` from item `start` on."""
        collate = self.collate_fn
        if self._auto_collation:
            for batch in self._batches(epoch, start):
                # torch's collate_fn gets the samples
                yield batch if collate is None else collate(BatchSamples(batch))
            return
        skip = start % CHUNK  # samples of the first chunk handed out before a resume
        for batch in self._batches(epoch, start // CHUNK):
            for j in range(skip, len(batch["index"])):  # "index": in every batch
                sample = sample_of(batch, j)  # dataset[i]: no batch dim
                yield sample if collate is None else collate(sample)
            skip = 0

    def _batches(self, epoch: int, start: int):
        """The batches of `epoch` from batch `start` on (before collate_fn)."""
        ds = self.dataset
        seed = self.seed
        rank, ranks = self._draw_ranks
        for order, bounds, b0, first, full in self._pieces(epoch, start):
            if ds._on_device:
                builder, build = self._device_path(ds)
                idx = ds._op.upload_indices(order)  # once per epoch (per piece when streamed)
                builder.bind(idx)
                for i in range(first, len(bounds) - 1):
                    if builder._idx is not idx:  # another iterator built last: back to ours
                        builder.bind(idx)
                    lo, hi = bounds[i], bounds[i + 1]
                    # full batches are consecutive slices: a launch may fill several
                    # (ops.windows.BatchBuilder)
                    batch = build(lo, hi - lo, (seed, epoch, (b0 + i) * ranks + rank),
                                  max(0, full - 1 - i))
                    yield ds._add_tasks(batch, order[lo:hi])
            else:
                for i in range(first, len(bounds) - 1):
                    yield ds._batch_from_host(order[bounds[i]:bounds[i + 1]],
                                              draw=(seed, epoch, (b0 + i) * ranks + rank))

    def _end_epoch(self, epoch: int, forward: bool = True) -> None:
        """An iteration of `epoch` ran to its end: the next one is epoch + 1, for the loader and
        (`forward`) for a sampler with set_epoch (so a checkpoint's epoch is the sampler's too)."""
        self._epoch = epoch + 1
        self._position = 0
        if forward:
            self._forward_epoch()

    def _left_early(self) -> bool:
        """Whether the loader's epoch was begun by a pass that did not run to its end (a loop
        left early, an error) and no set_epoch / load_state_dict chose otherwise since."""
        last = self._current
        return self._resume is None and last is not None and last._epoch == self._epoch \
            and last._done > last._start

    def _device_path(self, ds):
        """The dataset's per-batch builder, kept across epochs (so reused outputs and pools
        survive them) while dataset, batch_size and reuse_outputs stay the same."""
        key = (self._size(), self.reuse_outputs)  # batch_size=None: batches of CHUNK
        if self._builder is None or self._builder[0] is not ds._op or self._builder[1] != key:
            self._builder = (ds._op, key, *ds._device_batches(self.reuse_outputs, key[0]))
        return self._builder[2], self._builder[3]

    # -----------------------------------------------------------------------------------------
    # checkpointing

    def state_dict(self) -> dict:
        """Where the loader is: resume exactly with load_state_dict (same dataset and arguments;
        the seed travels in the state)."""
        # plain Python ints / bools / str only: json- and torch.load(weights_only=True)-safe
        return {"version": STATE_VERSION, "seed": int(self.seed), "epoch": int(self._epoch),
                "batches_done": int(self._position), "num_anchors": len(self.dataset),
                "batch_size": None if self.batch_size is None else int(self.batch_size),
                "drop_last": self.drop_last,
                "shuffle": bool(self.shuffle), "sampling": self.sampling,
                "world_size": int(self.world_size), "rank": int(self.rank)}

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
        if not self._streamed() and state["batches_done"] > len(self):
            raise ValueError(f"state['batches_done']: expected at most {len(self)} (the "
                             f"batches of an epoch), got {state['batches_done']}")
        self.seed = int(state["seed"])
        self._epoch = int(state["epoch"])
        self._position = int(state["batches_done"])
        self._resume = self._position
        self._new_era()
        self._forward_epoch()  # a DistributedSampler draws the saved epoch's order


class _LoaderIter:
    """One pass over a DataLoader (iter(loader)), as torch's iterator. Its epoch and start (a
    loaded resume point) are taken when it is made, its order is drawn at its first item, and
    both stay its own while other iterators of the loader run; len() is the number of items it
    has left (TypeError for a sampler without a length)."""

    def __init__(self, loader: DataLoader):
        if loader._left_early():
            # this pass is the next epoch, a new order, as torch's RandomSampler draws one per
            # iter(); forwarded to a sampler with set_epoch as a completed epoch is, unless its
            # owner set the sampler's epoch since (torch's idiom: sampler.set_epoch by hand
            # before each pass), which is then left as they set it
            loader._end_epoch(loader._epoch, forward=loader._sampler_epoch_untouched())
        epoch = loader._epoch
        start = 0 if loader._resume is None else loader._resume  # taken up at the first item
        loader._position = start
        loader._current = self
        self._loader, self._epoch, self._start, self._done = loader, epoch, start, start
        self._era = loader._era
        self._total = None if loader._streamed() else len(loader)
        self._items = loader._items(epoch, start)
        self._ended = False

    def __iter__(self) -> _LoaderIter:
        return self

    def __len__(self) -> int:
        if self._total is None:
            raise TypeError(f"len(DataLoader iterator): its {self._loader._sampler_name()} has "
                            f"no length")
        return max(0, self._total - self._done)

    def __next__(self):
        try:
            item = next(self._items)
        except StopIteration:
            if not self._ended:
                self._ended = True
                if self._loader._current is self:  # not an older pass ending behind a newer one
                    self._loader._resume = None
                    self._loader._end_epoch(self._epoch)
            raise
        except BaseException:
            self._ended = True  # a pass broken by an error does not complete its epoch
            raise
        self._done += 1
        loader = self._loader
        if self._era == loader._era:  # not a pass begun before set_epoch / load_state_dict
            loader._current, loader._epoch, loader._position = self, self._epoch, self._done
            loader._resume = None  # a resume point is used up by a pass that hands out a batch
        return item
