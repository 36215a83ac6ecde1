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

iter(loader) is an iterator of its own, as torch's: it takes its epoch (and a loaded resume point)
when it is made, has len() (the items it has left) and keeps its epoch's order while other
iterators of the same loader run (on a CUDA store each has its own index array; the builder is
pointed back at it when another iterator built last, so the hot path stays one identity check
per batch). A pass made while another pass of the loader is live (made, not run to its end, still
referenced: zip(loader, loader), an evaluation pass inside a training pass) takes a fresh epoch,
the next one no pass has taken, at its first item (one never read takes none), so its order is
new, as torch's RandomSampler draws one per iter(). The loader's epoch and position (state_dict) follow the newest pass that has handed out
an item; an older pass handing out items or ending behind it changes nothing, so the loader's
epoch never goes backwards (set_epoch / load_state_dict alone choose it). When that pass runs to
its end the loader's epoch becomes the next one no pass has taken, forwarded to a sampler /
batch_sampler / the batch_sampler's sampler with set_epoch (DistributedSampler). A pass that
handed out items and was left before its end (a loop that breaks after N steps; its iterator
dropped) also ends its epoch for the next iter(loader): that pass gets the next epoch, a new order - unless set_epoch
or load_state_dict was called since (those choose the epoch and position, and a pass begun
before them no longer moves the loader's state). state_dict() says where the loader is, for a
checkpoint: taken in or after a pass left early, it is that pass's epoch and position (resuming
continues it), while the loader's own next iter() starts the next epoch. A checkpoint follows the
newest pass: a training pass that an evaluation pass over the same loader interrupted is not in
it once that pass began (iterate a second DataLoader for such passes). With a sampler /
batch_sampler the order is the sampler's: a pass with a fresh epoch forwards it to set_epoch when
it draws its order (unless the sampler's owner set its epoch since), other samplers draw what
they draw. A sampler is listed whole when a pass draws its order (at its first item), where
torch reads it as batches are made: a RandomSampler's generator then advances at a pass's first
item, not at its end, so after a pass left early, or under zip(loader, loader), the orders drawn
from one generator differ from torch's (each pass's own order and resume are unaffected). With
reuse_outputs=R, iterators run in turn share the ring: the last R batches handed out, by any of
them, stay valid (a batch lost to an error, e.g. in collate_fn, took its place in the ring too).

Errors, as torch's single-process iterator: an exception raised while an item is built (the
dataset, an index it refuses, collate_fn, KeyboardInterrupt) consumes that item (its indices,
and batches_done counts it); the next next(it) goes on with the following item. An error of the
sampler / batch_sampler itself while the order is drawn (at the first item; for one without a
length, at each piece read) ends the pass, as torch's iterator ends when its BatchSampler's
generator raises; a pass ended so does not complete its epoch. With batch_size=None the samples
are built CHUNK at a time: an error building one fails each sample of its chunk from there on
(each consumed), where torch's would fail that sample alone (an index the dataset refuses fails
its sample alone).

Resume. state_dict() records what the position means: the index source ("order": the loader's
own; "sampler"; "batch_sampler"), batch_size, drop_last, shuffle, sampling, world_size, the
sampler's / batch_sampler's length and batch size and a DistributedSampler's num_replicas where
they exist; load_state_dict refuses a state of another configuration (rank aside: one checkpoint
of rank 0 loads on every rank, unless it holds a sampler generator's state, below). It also holds the state a sampler drew the pass's order from,
taken when it drew: its torch.Generator (`sampler.generator`: RandomSampler,
WeightedRandomSampler, SubsetRandomSampler with generator=...), for the sampler, the
batch_sampler and the batch_sampler's sampler; the resumed pass restores it before it draws, so
it replays the saved order (a rank's generator is its own: such a state loads on its rank only).
A sampler whose order comes from anything else (torch's global RNG: RandomSampler() without a
generator; an RNG of its own) keeps no such state: a resumed pass draws a fresh order and skips
batches_done of that one (some samples of that epoch repeat, others are missed); give it a
generator. load_state_dict forwards the state's epoch (the loader's count) to a sampler with
set_epoch: an owner numbering the sampler's epochs otherwise sets its epoch after loading. A
sampler's own state_dict() is not used (torchdata's hold a position, which the
loader keeps itself); one that draws the same order for the same epoch (DistributedSampler,
torchdata's StatefulDistributedSampler) resumes exactly. A sampler with set_epoch
(DistributedSampler) gets the saved epoch. States of version 1 (before these fields) load where
they say what they count: those of a loader that shuffles or shards its own order.

loader.sampler / loader.batch_sampler are torch's: the ones given; else the loader's own order as
a Sampler (len: the samples this rank sees in an epoch; iter: the order of loader.epoch, as
epoch_order()) and, with batching, a torch BatchSampler over it (len: the loader's batches).

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

import base64
import binascii
import collections
import copy
import itertools
import math
import numbers
import weakref
from collections.abc import Iterator

import numpy as np
import torch

from .dataset import BatchSamples, TrajectoryDataset, sample_of

SAMPLING = ("frame", "episode")
STATE_VERSION = 2
SOURCES = ("order", "sampler", "batch_sampler")  # state['index_source']: who chose the indices
# the keys of a version-1 state (before index_source ... sampler_states)
STATE_V1_KEYS = ("version", "seed", "epoch", "batches_done", "num_anchors", "batch_size",
                 "drop_last", "shuffle", "sampling", "world_size", "rank")
# what the position means: a state is refused where one of them differs ('rank' is not one)
CONFIG_KEYS = ("index_source", "num_anchors", "batch_size", "drop_last", "shuffle", "sampling",
               "world_size", "num_replicas", "source_batch_size", "source_len")
GENERATOR = "generator"  # state['sampler_states'][role]: {GENERATOR: base64 of get_state()}
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


def _sampler_objects(sampler, batch_sampler) -> list[tuple[str, object]]:
    """(role, object) of the sampler, the batch_sampler and the batch_sampler's sampler given,
    each once: where the loader looks for a rank, set_epoch and a generator."""
    found = []
    for role, s in (("sampler", sampler), ("batch_sampler", batch_sampler),
                    ("batch_sampler.sampler", getattr(batch_sampler, "sampler", None))):
        if s is not None and all(s is not t for _, t in found):
            found.append((role, s))
    return found


def _sampler_ranks(sampler, batch_sampler) -> tuple[int, int]:
    """(rank, world_size) of a custom sampler's shard, for the image draws: a sampler's (or a
    batch_sampler's sampler's) rank / num_replicas, as DistributedSampler has them, else the
    torch.distributed process group's, else (0, 1)."""
    for _, s in _sampler_objects(sampler, batch_sampler):
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


def _generator_state(text: str, like: torch.Tensor, what: str) -> torch.Tensor:
    """A torch.Generator state saved by state_dict() (base64 of get_state()'s bytes), checked
    against `like` (the generator's state now: same length)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (AttributeError, UnicodeEncodeError, binascii.Error) as e:
        raise ValueError(f"{what}: expected the base64 text of a torch.Generator state, got "
                         f"{text!r:.80}") from e
    if len(raw) != like.numel():
        raise ValueError(f"{what}: expected a torch.Generator state of {like.numel()} bytes "
                         f"(this loader's generator), got {len(raw)}: the state belongs to "
                         f"another configuration")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


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
    state_dict() / load_state_dict() resume mid-epoch exactly, with a sampler too where it draws
    its order from a torch.Generator or has a state_dict() of its own; one drawing from torch's
    global RNG (RandomSampler() without generator=) replays a fresh order on resume.
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
        self._sampler = sampler              # the ones given (None: the loader's own order)
        self._batch_sampler = batch_sampler  # .sampler / .batch_sampler: torch's view of them
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
        self._position = 0       # items handed out (or consumed by an error) in the epoch
        self._resume = None      # item to start the next iteration at (load_state_dict)
        self._loaded_states = None  # the samplers' states of that resume point (_sampler_states)
        self._fresh = 0  # the first epoch no pass of this era has taken (>= _epoch)
        self._builder = None  # (op, key, builder, build) of the device path: _device_path
        self._current = None  # the _Pass the state follows: the newest one that handed out
        self._made = 0        # passes made (their order of making: _Pass.seq)
        self._live = weakref.WeakSet()  # this era's iterators made and not ended
        self._era = 0  # + 1 at set_epoch / load_state_dict: passes begun before stop counting
        self._forwarded = 0  # the epoch last forwarded to a sampler with set_epoch

    def __repr__(self) -> str:
        return (f"DataLoader({len(self.dataset)} anchors, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, "
                f"sampling={self.sampling!r}, seed={self.seed}, epoch={self._epoch}, "
                f"rank={self.rank}/{self.world_size}, device={self.dataset.device!r})")

    @property
    def sampler(self):
        """torch's DataLoader.sampler: the sampler given; with a batch_sampler given, what torch
        holds there (a SequentialSampler of the dataset, unused); else the loader's own order
        as a Sampler (len: the samples this rank sees in an epoch; iter: epoch_order())."""
        if self._sampler is not None:
            return self._sampler
        if self._batch_sampler is not None:
            return torch.utils.data.SequentialSampler(self.dataset)
        return _OrderSampler(self)

    @property
    def batch_sampler(self):
        """torch's DataLoader.batch_sampler: the one given; None with batch_size=None; else a
        torch BatchSampler over .sampler (len: the loader's batches)."""
        if self._batch_sampler is not None or self.batch_size is None:
            return self._batch_sampler
        return torch.utils.data.BatchSampler(self.sampler, self.batch_size, self.drop_last)

    # -----------------------------------------------------------------------------------------
    # epoch order

    def set_epoch(self, epoch: int) -> None:
        """Use `epoch` for the next iteration (an iteration that completes advances it by one).
        Forwarded to a sampler / batch_sampler / the batch_sampler's sampler that has set_epoch
        (e.g. DistributedSampler)."""
        if not _is_int(epoch) or epoch < 0:
            raise ValueError(f"epoch: expected an int >= 0, got {epoch!r}")
        if not (self._resume is not None and int(epoch) == self._epoch):
            # a resume point loaded for this very epoch survives (load_state_dict, then the
            # training loop's set_epoch(epoch)); any other epoch starts at its first batch
            self._position = 0
            self._resume = None
            self._loaded_states = None
        self._epoch = self._fresh = int(epoch)
        self._new_era()
        self._forward_epoch(self._epoch)

    def _new_era(self) -> None:
        """set_epoch / load_state_dict chose the next pass: a pass begun before neither moves
        the loader's state nor ends (or skips) the chosen epoch."""
        self._current = None
        self._live = weakref.WeakSet()
        self._era += 1

    def __getstate__(self) -> dict:
        """pickle / copy.deepcopy: a live pass (a generator) and the device path's builder
        stay behind (the copy makes its own); seed, epoch, position and a loaded resume point
        travel. A copy is a checkpoint: taken while a pass is under way (or was left early), it
        resumes that pass's epoch at its position, as load_state_dict(state_dict()) would."""
        state = self.__dict__.copy()
        if self._left_early():  # a checkpoint: the copy resumes where its state_dict() says
            state["_resume"] = self._position
            state["_loaded_states"] = self._current.draw_states
        state["_current"] = None
        state["_builder"] = None
        state["_live"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        # a loader pickled by an earlier version: its attributes under their new names
        for old in ("sampler", "batch_sampler"):
            if old in state:
                state.setdefault(f"_{old}", state.pop(old))
        state.setdefault("_loaded_states", None)
        state.setdefault("_fresh", state.get("_epoch", 0))
        state.setdefault("_made", 0)
        self.__dict__.update(state)
        self._live = weakref.WeakSet()

    def _epoch_samplers(self) -> list:
        """The sampler, batch_sampler and batch_sampler's sampler that have set_epoch (each once):
        the ones the loader tells its epoch (Lightning looks through a BatchSampler the same
        way)."""
        return [s for _, s in _sampler_objects(self._sampler, self._batch_sampler)
                if hasattr(s, "set_epoch")]

    def _forward_epoch(self, epoch: int) -> None:
        """`epoch` to the samplers with set_epoch (DistributedSampler)."""
        for s in self._epoch_samplers():
            s.set_epoch(epoch)
        self._forwarded = epoch

    def _sampler_epoch_untouched(self) -> bool:
        """Whether no sampler with set_epoch had its epoch set by someone else since the loader
        last forwarded one (a DistributedSampler's .epoch; a sampler that does not show its
        epoch counts as untouched)."""
        return all(getattr(s, "epoch", self._forwarded) == self._forwarded
                   for s in self._epoch_samplers())

    def _stateful_samplers(self) -> list[tuple[str, object]]:
        """(role, sampler) of the sampler objects whose torch.Generator (at `.generator`:
        RandomSampler's, WeightedRandomSampler's, SubsetRandomSampler's) decides the order they
        draw next. A sampler's own state_dict() is not used: torchdata's hold a position in the
        pass (what it has yielded), not the state its order comes from, and the loader keeps
        the position itself."""
        return [(role, s) for role, s in _sampler_objects(self._sampler, self._batch_sampler)
                if isinstance(getattr(s, "generator", None), torch.Generator)]

    def _sampler_states(self) -> dict | None:
        """The samplers' states now ({role: {"generator": its state as base64 text}}), None
        where no sampler keeps one."""
        states = {}
        for role, s in self._stateful_samplers():
            raw = s.generator.get_state().numpy().tobytes()
            states[role] = {GENERATOR: base64.b64encode(raw).decode("ascii")}
        return states or None

    def _restore_sampler_states(self, states: dict | None) -> None:
        """Put the samplers back in `states` (checked by load_state_dict)."""
        for role, s in self._stateful_samplers():
            s.generator.set_state(_generator_state(states[role][GENERATOR],
                                                   s.generator.get_state(),
                                                   f"state['sampler_states'][{role!r}]"))

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
        order, _, _ = self._plan(epoch)
        return order

    @property
    def _auto_collation(self) -> bool:
        """Whether items are batches (torch's name): False for batch_size=None."""
        return self._batch_sampler is not None or self.batch_size is not None

    def _size(self) -> int | None:
        """Samples per batch built: batch_size, CHUNK with batching off, None (a batch_sampler's
        own sizes)."""
        if self._batch_sampler is not None:
            return None
        return CHUNK if self.batch_size is None else self.batch_size

    def _custom(self):
        """The batch_sampler, else the sampler, else None (the loader draws its own order)."""
        return self._batch_sampler if self._batch_sampler is not None else self._sampler

    def _sampler_name(self) -> str:
        return "batch_sampler" if self._batch_sampler is not None else "sampler"

    def _streamed(self) -> bool:
        """A sampler / batch_sampler without a length: read in pieces, never materialized."""
        s = self._custom()
        return s is not None and not _has_len(s)

    def _plan(self, epoch: int, lenient: bool = False):
        """(order int64 [M], batch bounds int64 [num_batches + 1], bad) of this rank's epoch
        (batches of _size() samples: CHUNK with batching off). `lenient`: indices the dataset
        refuses make their items bad ({item: error}, see _check_samples) instead of raising."""
        if self._batch_sampler is not None:
            return self._check_batches([list(b) for b in self._batch_sampler], 0, lenient)
        n = len(self.dataset)
        if self._sampler is not None:
            raw = list(self._sampler)
            bounds = self._bounds(len(raw), self._size())
            order, bad = self._check_samples(raw, bounds, 0, lenient)
            return order, bounds, bad
        if self.sampling == "episode":
            order = self._episode_draws(epoch, n)
        elif self.shuffle:
            order = self._rng(epoch).permutation(n).astype(np.int64)
        else:
            order = np.arange(n, dtype=np.int64)
        order = shard(order, self.rank, self.world_size, self.drop_last)
        return order, self._bounds(order.size, self._size()), None

    def _check_samples(self, raw, bounds: np.ndarray, b0: int, lenient: bool):
        """(order int64, bad) of a sampler's indices `raw` cut at `bounds` (batch b0 on), checked
        as the dataset checks them. Where some are refused and `lenient`, each item is checked
        alone, as torch's iterator fetches it: bad = {item number: its error} (items: batches,
        or samples with batching off), their places in the order 0 (never built); else None."""
        check = self.dataset._check_indices
        try:
            return check(np.asarray(raw)), None
        except Exception:
            if not lenient:
                raise
        samples = not self._auto_collation
        parts, bad = [], {}
        for k in range(bounds.size - 1):
            lo, hi = int(bounds[k]), int(bounds[k + 1])
            try:
                parts.append(check(np.asarray(raw[lo:hi])))
                continue
            except Exception as e:
                if not samples:
                    bad[b0 + k] = e
                    parts.append(np.zeros(hi - lo, np.int64))
                    continue
            for j in range(lo, hi):  # batching off: a sample is an item
                try:
                    parts.append(check(np.asarray(raw[j:j + 1])))
                except Exception as e:
                    bad[b0 * CHUNK + j] = e
                    parts.append(np.zeros(1, np.int64))
        return (np.concatenate(parts) if parts else np.zeros(0, np.int64)), bad or None

    def _check_batches(self, raw: list, b0: int, lenient: bool):
        """(order int64, bounds, bad) of a batch_sampler's batches `raw` (batch b0 on), each
        checked as __getitems__ checks it; a refused one is bad ({batch number: its error},
        its places 0) when `lenient`, else raises."""
        check = self.dataset._check_indices
        parts, bad = [], {}
        for k, b in enumerate(raw):
            try:
                parts.append(check(np.asarray(b).reshape(-1)))
            except Exception as e:
                if not lenient:
                    raise
                bad[b0 + k] = e
                parts.append(np.zeros(len(b), np.int64))
        order = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        bounds = np.concatenate([[0], np.cumsum([p.size for p in parts])]).astype(np.int64)
        return order, bounds, bad or None

    def _bounds(self, m: int, size: int) -> np.ndarray:
        """Batch bounds of `m` indices cut into batches of `size` (drop_last: no partial one)."""
        full = m // size
        nb = full if (self.drop_last or m % size == 0) else full + 1
        return np.minimum(np.arange(nb + 1, dtype=np.int64) * size, m)

    def _pieces(self, epoch: int, start: int):
        """This rank's epoch from batch `start` on, as pieces (order, bounds, b0, first, full,
        bad, end): batch b0 + i is order[bounds[i]:bounds[i + 1]] for first <= i < end - b0, its
        first `full` batches are consecutive `size`-index slices of order (the device path fills
        them ahead), and `bad` holds the items whose indices the dataset refused (or None). One
        piece with a length; STREAM_BATCHES batches a piece from a sampler without one."""
        if not self._streamed():
            order, bounds, bad = self._plan(epoch, lenient=True)
            full = 0 if self._batch_sampler is not None else order.size // self._size()
            yield order, bounds.tolist(), 0, start, full, bad, bounds.size - 1
            return
        b0 = start
        if self._batch_sampler is not None:
            it = iter(self._batch_sampler)
            collections.deque(itertools.islice(it, start), maxlen=0)  # batches done: skipped
            while True:
                raw = [list(b) for b in itertools.islice(it, STREAM_BATCHES)]
                if not raw:
                    return
                order, bounds, bad = self._check_batches(raw, b0, lenient=True)
                yield order, bounds.tolist(), b0, 0, 0, bad, b0 + len(raw)
                b0 += len(raw)
        size = self._size()
        it = iter(self._sampler)
        collections.deque(itertools.islice(it, start * size), maxlen=0)
        per = STREAM_BATCHES * size
        while True:
            raw = list(itertools.islice(it, per))
            if not raw:
                return
            bounds = self._bounds(len(raw), size)
            order, bad = self._check_samples(raw, bounds, b0, lenient=True)
            yield order, bounds.tolist(), b0, 0, len(raw) // size, bad, b0 + bounds.size - 1
            b0 += bounds.size - 1
            if len(raw) < per:  # the sampler ended
                return

    def _episode_draws(self, epoch: int, n: int) -> np.ndarray:
        first, count = self.dataset.episode_anchor_ranges()
        valid = np.flatnonzero(count > 0)
        rng = self._rng(epoch)
        ep = valid[rng.integers(0, valid.size, size=n)]
        return first[ep] + rng.integers(0, count[ep])

    def _samples(self) -> int:
        """Samples of this rank's epoch (a sampler / batch_sampler with a length)."""
        if self._batch_sampler is not None:
            return int(self.epoch_order().size)
        if self._sampler is not None:
            return len(self._sampler)
        return shard(np.arange(len(self.dataset)), 0, self.world_size, self.drop_last).size

    def __len__(self) -> int:
        """Batches of an epoch (samples with batch_size=None). TypeError for a sampler /
        batch_sampler without a length, as torch's DataLoader."""
        if self._streamed():
            raise TypeError(f"len(DataLoader): its {self._sampler_name()} "
                            f"({type(self._custom()).__name__}) has no length, so the loader "
                            f"has none")
        if self._batch_sampler is not None:
            return len(self._batch_sampler)
        m = self._samples()
        if self.batch_size is None:
            return m
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    # -----------------------------------------------------------------------------------------
    # iteration

    def __iter__(self) -> Iterator:
        """A pass over the loader: an iterator of its own, with len() (_LoaderIter)."""
        return _LoaderIter(self)

    def _items(self, rec: _Pass, start: int):
        """The items (batches, or samples with batching off) of pass `rec` from item `start` on.
        Holds `rec`, never the iterator (a pass dropped is freed at once)."""
        collate = self.collate_fn
        if self._auto_collation:
            for batch in self._batches(rec, start):
                # torch's collate_fn gets the samples
                yield batch if collate is None else collate(BatchSamples(batch))
            return
        skip = start % CHUNK  # samples of the first chunk handed out before a resume
        s = start  # the sample number
        for batch in self._batches(rec, start // CHUNK):
            bad = rec.piece[5]
            for j in range(skip, len(batch["index"])):  # "index": in every batch
                if bad is not None and s in bad:
                    raise bad[s]  # its index was refused: this sample is consumed
                sample = sample_of(batch, j)  # dataset[i]: no batch dim
                s += 1
                yield sample if collate is None else collate(sample)
            skip = 0

    def _begin_draw(self, rec: _Pass, start: int) -> None:
        """Pass `rec` is about to draw its order (from batch `start`): a loaded resume point's
        sampler states are put back, its epoch goes to a sampler with set_epoch that nobody
        else set (a pass with a fresh epoch), and the samplers' states are kept for state_dict."""
        if rec.restore is not None:
            self._restore_sampler_states(rec.restore)
        if rec.epoch != self._forwarded and self._sampler_epoch_untouched():
            self._forward_epoch(rec.epoch)
        rec.draw_states = self._sampler_states()
        rec.source = self._pieces(rec.epoch, start)

    def _batches(self, rec: _Pass, start: int):
        """The batches of pass `rec` from batch `start` on (before collate_fn): the piece being
        read (a restart after an error), then the pieces still to come (drawn at the first)."""
        ds = self.dataset
        seed, epoch = self.seed, rec.epoch
        rank, ranks = self._draw_ranks
        raise_bad = self._auto_collation  # with batching off, _items raises for bad samples
        piece = rec.piece
        while True:
            if piece is None or start >= piece[6]:
                rec.drawing = True  # an error now is the sampler's: it ends the pass
                if rec.source is None:
                    self._begin_draw(rec, start)
                piece = next(rec.source, None)
                rec.drawing = False
                if piece is None:
                    return
                rec.piece = piece
            order, bounds, b0, first, full, bad, end = piece
            first = max(first, start - b0)
            stop = len(bounds) - 1
            if bad is not None and raise_bad:  # up to the next batch the dataset refused
                stop = min([k - b0 for k in bad if k - b0 >= first], default=stop)
            if ds._on_device:
                builder, build = self._device_path(ds)
                idx = ds._op.upload_indices(order)  # once per epoch (per piece when streamed)
                builder.bind(idx)
                for i in range(first, stop):
                    if builder._idx is not idx:  # another iterator built last: back to ours
                        builder.bind(idx)
                    lo, hi = bounds[i], bounds[i + 1]
                    # full batches are consecutive slices: a launch may fill several
                    # (ops.windows.BatchBuilder)
                    batch = build(lo, hi - lo, (seed, epoch, (b0 + i) * ranks + rank),
                                  max(0, full - 1 - i))
                    yield ds._add_tasks(batch, order[lo:hi])
            else:
                for i in range(first, stop):
                    yield ds._batch_from_host(order[bounds[i]:bounds[i + 1]],
                                              draw=(seed, epoch, (b0 + i) * ranks + rank))
            if stop < len(bounds) - 1:
                raise bad[b0 + stop]  # consumed: the iterator goes on after it (_LoaderIter)
            start = end

    def _end_epoch(self, forward: bool = True) -> None:
        """The pass the state follows ran to its end (or was left early): the loader's epoch
        is the next one no pass has taken, for the loader and (`forward`) for a sampler with
        set_epoch (so a checkpoint's epoch is the sampler's too)."""
        self._epoch = self._fresh
        self._position = 0
        if forward:
            self._forward_epoch(self._epoch)

    def _left_early(self) -> bool:
        """Whether the loader's epoch was begun by a pass that did not run to its end (a loop
        left early, an error, a pass still under way) and no set_epoch / load_state_dict chose
        otherwise since."""
        last = self._current
        return self._resume is None and last is not None and last.epoch == self._epoch \
            and last.done > last.start

    def _take_state(self, rec: _Pass) -> None:
        """Pass `rec` handed out (or consumed, or ended at) an item: the loader's state follows
        it where it is the newest pass of this era to do so and not behind the loader's epoch
        (an older pass, one begun before set_epoch / load_state_dict, changes nothing)."""
        cur = self._current
        if rec.era == self._era and rec.epoch >= self._epoch and (
                cur is None or rec.seq > cur.seq):
            self._current = rec
            self._epoch = rec.epoch
            self._position = rec.done
            self._resume = None  # a resume point is used up by a pass that hands out an item
            self._loaded_states = None

    def _device_path(self, ds):
        """The dataset's per-batch builder, kept across epochs (so reused outputs and pools
        survive them) while dataset, batch_size and reuse_outputs stay the same."""
        key = (self._size(), self.reuse_outputs)  # batch_size=None: batches of CHUNK
        if self._builder is None or self._builder[0] is not ds._op or self._builder[1] != key:
            self._builder = (ds._op, key, *ds._device_batches(self.reuse_outputs, key[0]))
        return self._builder[2], self._builder[3]

    # -----------------------------------------------------------------------------------------
    # checkpointing

    def _config(self) -> dict:
        """What the position means (CONFIG_KEYS, and 'rank'): plain Python values."""
        s, bs = self._sampler, self._batch_sampler
        custom = self._custom()
        replicas = None
        for _, x in _sampler_objects(s, bs):
            if _is_int(getattr(x, "num_replicas", None)):
                replicas = int(x.num_replicas)
                break
        size = getattr(bs, "batch_size", None)
        return {"num_anchors": len(self.dataset),
                "batch_size": None if self.batch_size is None else int(self.batch_size),
                "drop_last": self.drop_last, "shuffle": bool(self.shuffle),
                "sampling": self.sampling, "world_size": int(self.world_size),
                "rank": int(self._draw_ranks[0]),  # a sampler's rank, or the process's
                "index_source": SOURCES[0] if custom is None else self._sampler_name(),
                "source_len": int(len(custom)) if custom is not None and _has_len(custom)
                else None,
                "source_batch_size": int(size) if _is_int(size) else None,
                "num_replicas": replicas}

    def _state_sampler_states(self) -> dict | None:
        """The samplers' states of the position state_dict() gives: a loaded resume point's,
        the state's pass's when it drew (a pass under way or left early), else theirs now (the
        next pass draws from them)."""
        if self._resume is not None and self._loaded_states is not None:
            return self._loaded_states
        if self._left_early():
            return self._current.draw_states
        return self._sampler_states()

    def state_dict(self) -> dict:
        """Where the loader is: resume exactly with load_state_dict (same dataset and arguments;
        the seed travels in the state). Plain Python values, json- and
        torch.load(weights_only=True)-safe."""
        return {"version": STATE_VERSION, "seed": int(self.seed), "epoch": int(self._epoch),
                "batches_done": int(self._position), **self._config(),
                "sampler_states": self._state_sampler_states()}

    def _upgraded(self, state: dict) -> dict:
        """A version-1 state (before index_source ... sampler_states) as version 2, where it
        says what its position counts: a loader shuffling or sharding its own order wrote it
        (a sampler / batch_sampler is refused with shuffle and sharding)."""
        own = state["shuffle"] is True or (_is_int(state["world_size"])
                                           and state["world_size"] > 1)
        if not own:
            raise ValueError(f"state: a version-1 DataLoader.state_dict() without shuffle or "
                             f"sharding does not say whether it counts a sampler's, a "
                             f"batch_sampler's or the loader's own order; expected a state of "
                             f"version {STATE_VERSION} for this loader")
        return {**state, "index_source": SOURCES[0], "source_len": None,
                "source_batch_size": None, "num_replicas": None, "sampler_states": None}

    def _check_sampler_states(self, saved) -> None:
        """`saved` (state['sampler_states']) holds a state for exactly this loader's samplers
        that keep one, each of the same kind (and a generator's of the same size)."""
        want = {role: GENERATOR for role, _ in self._stateful_samplers()}
        got = saved if saved is not None else {}
        kinds = {r: sorted(v) if isinstance(v, dict) else type(v).__name__
                 for r, v in got.items()} if isinstance(got, dict) else got
        if kinds != {r: [how] for r, how in want.items()}:
            raise ValueError(f"state['sampler_states']: expected states of {want or 'none'} "
                             f"(this loader's samplers that keep one), got {kinds!r:.200}: the "
                             f"state belongs to another configuration")
        for role, s in self._stateful_samplers():
            _generator_state(got[role][GENERATOR], s.generator.get_state(),
                             f"state['sampler_states'][{role!r}]")

    def load_state_dict(self, state: dict) -> None:
        """The next iteration continues the saved epoch at the saved batch (with the samplers'
        saved states: it replays the saved order)."""
        version = state.get("version") if isinstance(state, dict) else None
        if version not in (1, STATE_VERSION):
            raise ValueError(f"state: expected a DataLoader.state_dict() of version "
                             f"{STATE_VERSION} (or 1), got {state!r:.200}")
        keys = STATE_V1_KEYS if version == 1 else tuple(self.state_dict())
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"state: expected a DataLoader.state_dict(), got a dict without "
                             f"{missing}")
        if version == 1:
            state = self._upgraded(state)
        mine = self._config()
        for k in CONFIG_KEYS:
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
        self._check_sampler_states(state["sampler_states"])
        if state["sampler_states"] and state["rank"] != mine["rank"]:
            raise ValueError(f"state['rank']: expected {mine['rank']} (this loader's): the state "
                             f"holds rank {state['rank']}'s sampler generator, which drew that "
                             f"rank's order; load each rank's own state")
        self.seed = int(state["seed"])
        self._epoch = self._fresh = int(state["epoch"])
        self._position = int(state["batches_done"])
        self._resume = self._position
        self._loaded_states = copy.deepcopy(state["sampler_states"])
        self._new_era()
        self._forward_epoch(self._epoch)  # a DistributedSampler draws the saved epoch's order


class _OrderSampler(torch.utils.data.Sampler):
    """loader.sampler of a loader without a sampler given: its order as torch's Sampler."""

    def __init__(self, loader: DataLoader):
        self._loader = loader

    def __len__(self) -> int:
        """The samples this rank sees in an epoch (TypeError for a batch_sampler without a
        length)."""
        if self._loader._streamed():
            raise TypeError("len(DataLoader.sampler): its batch_sampler has no length")
        return self._loader._samples()

    def __iter__(self):
        """The order of the loader's epoch (epoch_order(); a batch_sampler's batches, joined)."""
        loader = self._loader
        if loader._streamed():
            return (int(i) for b in loader._batch_sampler for i in b)
        return iter(loader.epoch_order().tolist())


class _Pass:
    """What the loader knows of one pass: its epoch, where it started, the items it consumed
    (handed out, or lost to an error), whether it ended, its place in the order passes were
    made and its era; its order's source (the _pieces generator), the piece being read, whether
    it is drawing, the samplers' states when it drew, and those to put back first (a loaded
    resume point). Shared by the iterator and its item generator, neither of which the loader
    holds."""

    __slots__ = ("epoch", "start", "done", "ended", "seq", "era", "source", "piece", "drawing",
                 "draw_states", "restore")

    def __init__(self, epoch: int, start: int, seq: int, era: int, restore):
        self.epoch, self.start, self.done, self.ended = epoch, start, start, False
        self.seq, self.era, self.restore = seq, era, restore
        self.source = self.piece = self.draw_states = None
        self.drawing = False


class _LoaderIter:
    """One pass over a DataLoader (iter(loader)), as torch's iterator. Its epoch and start (a
    loaded resume point) are taken when it is made, its order is drawn at its first item, and
    both stay its own while other iterators of the loader run; len() is the number of items it
    has left (TypeError for a sampler without a length). An error while an item is built
    consumes that item; the next call goes on after it (from the order already drawn)."""

    def __init__(self, loader: DataLoader):
        start, restore = 0, None
        current_live = loader._current is not None and any(
            it._rec is loader._current for it in loader._live)
        if loader._left_early() and not current_live:
            # this pass is the next epoch, a new order, as torch's RandomSampler draws one per
            # iter(); forwarded to a sampler with set_epoch as a completed epoch is, unless its
            # owner set the sampler's epoch since (torch's idiom: sampler.set_epoch by hand
            # before each pass), which is then left as they set it
            loader._end_epoch(forward=loader._sampler_epoch_untouched())
            loader._current = None  # that pass, should it go on, no longer moves the state
            epoch = loader._epoch
        elif len(loader._live):  # another pass is live: a fresh epoch, a new order, taken at
            epoch = None          # its first item (one never read takes none: _take_epoch)
        else:
            epoch = loader._epoch
            if loader._resume is not None:  # taken up at the first item
                start, restore = loader._resume, loader._loaded_states
        if epoch is not None:
            loader._fresh = max(loader._fresh, epoch + 1)
        loader._made += 1
        self._rec = _Pass(epoch, start, loader._made, loader._era, restore)
        self._loader = loader
        self._total = None if loader._streamed() else len(loader)
        self._items = loader._items(self._rec, start)
        loader._live.add(self)

    def __iter__(self) -> _LoaderIter:
        return self

    def __len__(self) -> int:
        if self._total is None:
            raise TypeError(f"len(DataLoader iterator): its {self._loader._sampler_name()} has "
                            f"no length")
        return max(0, self._total - self._rec.done)

    def __next__(self):
        if self._rec.epoch is None:
            self._take_epoch()
        try:
            item = next(self._items)
        except StopIteration:
            self._finish()
            raise
        except BaseException:
            self._failed()
            raise
        rec = self._rec
        rec.done += 1
        loader = self._loader
        if loader._current is rec:
            loader._position = rec.done
        else:
            loader._take_state(rec)
        return item

    def _take_epoch(self) -> None:
        """A pass made while another was live takes the first epoch no pass has taken, at its
        first item (before it draws its order)."""
        loader, rec = self._loader, self._rec
        rec.epoch = loader._fresh
        if rec.era == loader._era:  # (one begun before set_epoch / load_state_dict takes none)
            loader._fresh += 1
            loader._made += 1
            rec.seq = loader._made  # the newest pass now: the state follows the latest epoch

    def _finish(self) -> None:
        """The pass ran to its end: it completes its epoch where the loader's state follows
        it (not an older pass ending behind a newer one)."""
        rec, loader = self._rec, self._loader
        if rec.ended:
            return
        rec.ended = True
        rec.source = rec.piece = None
        loader._live.discard(self)
        loader._take_state(rec)
        if loader._current is rec:
            loader._end_epoch()

    def _failed(self) -> None:
        """An exception left the item generator: an error of the sampler while the order was
        drawn ends the pass (without completing its epoch); any other consumed the item being
        built, and the pass goes on after it."""
        rec, loader = self._rec, self._loader
        if rec.drawing or rec.ended:
            rec.ended = True
            rec.source = rec.piece = None
            loader._live.discard(self)
            return
        rec.done += 1
        if loader._current is rec:
            loader._position = rec.done
        else:
            loader._take_state(rec)
        self._items = loader._items(rec, rec.done)
