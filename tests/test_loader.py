"""rc.DataLoader on the NumPy backend: epoch orders, seeds, resume, episode sampling, samplers,
DistributedSampler sharding (in-process and a real two-process gloo run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _peers import distributed_indices

import robocache as rc
from robocache.loader import shard


def _dataset(lens=(5, 1, 9, 3, 12, 2, 7), drop=(0, 0), **kw):
    rng = np.random.default_rng(0)
    ends = np.cumsum(lens)
    st = rc.TrajectoryStore.from_arrays(
        {"a": rng.standard_normal((int(ends[-1]), 2)).astype(np.float32),
         "f": np.arange(int(ends[-1]), dtype=np.int64)},
        episode_ends=ends, device="cpu")
    return rc.TrajectoryDataset(st, delta_indices={"a": [-1, 0, 1]}, drop_n_first_frames=drop[0],
                                drop_n_last_frames=drop[1], **kw)


def _indices(loader):
    """Dataset indices of one pass: the anchor frame (column "f") mapped back through anchors."""
    frames = [b["f"].numpy() for b in loader]
    return np.concatenate(frames) if frames else np.zeros(0, np.int64)


def _anchor_frames(ds, idx):
    return ds.anchors[np.asarray(idx, dtype=np.int64), 0]


def test_sequential_and_batches_equal_getitems():
    ds = _dataset()
    dl = rc.DataLoader(ds, batch_size=8)
    assert len(dl) == -(-len(ds) // 8)
    batches = list(dl)
    assert len(batches) == len(dl)
    for n, b in enumerate(batches):
        want = ds.get_batch(range(8 * n, min(8 * n + 8, len(ds))))
        assert set(b) == set(want)
        for k in b:
            assert torch.equal(b[k], want[k]), k
    dl = rc.DataLoader(ds, batch_size=8, drop_last=True)
    assert len(dl) == len(ds) // 8 == len(list(dl))
    assert all(b["a"].shape[0] == 8 for b in dl)


def test_shuffle_is_the_seeded_permutation_of_each_epoch():
    ds = _dataset()
    n = len(ds)
    dl = rc.DataLoader(ds, batch_size=6, shuffle=True, seed=123)
    for epoch in range(3):  # each full pass advances the epoch
        want = np.random.Generator(np.random.PCG64([123, epoch])).permutation(n)
        np.testing.assert_array_equal(_indices(dl), _anchor_frames(ds, want))
        assert dl.epoch == epoch + 1
    dl.set_epoch(1)
    np.testing.assert_array_equal(
        _indices(dl), _anchor_frames(ds, np.random.Generator(np.random.PCG64([123, 1]))
                                     .permutation(n)))
    # same seed, same batches; another seed, another order
    a = _indices(rc.DataLoader(ds, batch_size=6, shuffle=True, seed=5))
    b = _indices(rc.DataLoader(ds, batch_size=6, shuffle=True, seed=5))
    c = _indices(rc.DataLoader(ds, batch_size=6, shuffle=True, seed=6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert sorted(a.tolist()) == sorted(c.tolist()) == ds.anchors[:, 0].tolist()


def test_default_seed_follows_torch_rng_and_generator():
    ds = _dataset()
    torch.manual_seed(0)
    a = _indices(rc.DataLoader(ds, batch_size=4, shuffle=True))
    torch.manual_seed(0)
    b = _indices(rc.DataLoader(ds, batch_size=4, shuffle=True))
    np.testing.assert_array_equal(a, b)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    np.testing.assert_array_equal(_indices(rc.DataLoader(ds, batch_size=4, shuffle=True,
                                                         generator=g1)),
                                  _indices(rc.DataLoader(ds, batch_size=4, shuffle=True,
                                                         generator=g2)))


@pytest.mark.parametrize("sampling", ["frame", "episode"])
def test_resume_mid_epoch_exactly(sampling):
    ds = _dataset(drop=(1, 0))
    dl = rc.DataLoader(ds, batch_size=5, shuffle=True, seed=99, sampling=sampling)
    full = [_indices([b]) for b in dl] + [_indices([b]) for b in dl]  # epochs 0 and 1
    per_epoch = len(dl)
    for stop in (0, 2, per_epoch - 1, per_epoch, per_epoch + 3):
        dl = rc.DataLoader(ds, batch_size=5, shuffle=True, seed=99, sampling=sampling)
        got, it = [], iter(dl)
        for _ in range(min(stop, per_epoch)):
            got.append(_indices([next(it)]))
        if stop >= per_epoch:
            assert list(it) == []  # finish epoch 0
            it = iter(dl)
            for _ in range(stop - per_epoch):
                got.append(_indices([next(it)]))
        state = dl.state_dict()
        # a fresh loader without a seed takes the saved one
        dl2 = rc.DataLoader(ds, batch_size=5, shuffle=True, sampling=sampling)
        dl2.load_state_dict(state)
        rest = [_indices([b]) for b in dl2]
        if stop < per_epoch:
            rest += [_indices([b]) for b in dl2]
        got += rest
        assert len(got) == 2 * per_epoch, stop
        for x, y in zip(got, full, strict=True):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="batch_size"):
        rc.DataLoader(ds, batch_size=6, shuffle=True, sampling=sampling).load_state_dict(state)
    with pytest.raises(ValueError, match="state"):
        dl2.load_state_dict({"epoch": 1})


def test_episode_sampling_is_uniform_over_episodes():
    lens = (1, 2, 40, 3, 100)
    ds = _dataset(lens=lens)
    dl = rc.DataLoader(ds, batch_size=64, sampling="episode", seed=1)
    first, count = ds.episode_anchor_ranges()
    # the spec: episode uniform, then an anchor uniform within it, from PCG64([seed, epoch])
    rng = np.random.Generator(np.random.PCG64([1, 0]))
    ep = rng.integers(0, len(lens), size=len(ds))
    want = first[ep] + rng.integers(0, count[ep])
    np.testing.assert_array_equal(dl.epoch_order(0), want)
    draws = np.concatenate([dl.epoch_order(e) for e in range(60)])
    eps = ds.anchors[draws, 3]
    freq = np.bincount(eps, minlength=len(lens)) / draws.size
    np.testing.assert_allclose(freq, 1 / len(lens), atol=0.02)
    # within the long episode, anchors are uniform too
    inner = draws[eps == 4] - first[4]
    assert inner.min() == 0 and inner.max() == 99
    assert len(dl) == -(-len(ds) // 64)
    # episodes without anchors are never drawn
    ds2 = _dataset(lens=lens, drop=(2, 0))
    dl2 = rc.DataLoader(ds2, batch_size=8, sampling="episode", seed=0)
    eps2 = ds2.anchors[np.concatenate([dl2.epoch_order(e) for e in range(5)]), 3]
    assert set(eps2.tolist()) == {2, 3, 4}


def test_samplers_batch_samplers_and_collate():
    ds = _dataset()
    order = list(range(len(ds)))[::-1]
    dl = rc.DataLoader(ds, batch_size=7, sampler=order)
    np.testing.assert_array_equal(_indices(dl), _anchor_frames(ds, order))
    assert len(dl) == -(-len(ds) // 7)
    bs = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(ds), 10, False)
    dl = rc.DataLoader(ds, batch_sampler=bs)
    sizes = [b["a"].shape[0] for b in dl]
    assert sizes == [len(b) for b in bs] and len(dl) == len(bs)
    dl = rc.DataLoader(ds, batch_sampler=[[3, 1], [0]])
    np.testing.assert_array_equal(_indices(dl), _anchor_frames(ds, [3, 1, 0]))
    dsampler = torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=1, seed=4)
    dl = rc.DataLoader(ds, batch_size=4, sampler=dsampler)
    dl.set_epoch(3)  # forwarded to the sampler
    want = _anchor_frames(ds, list(dsampler))  # epoch 3's (the pass ends at epoch 4)
    np.testing.assert_array_equal(_indices(dl), want)
    assert dsampler.epoch == 4
    dl = rc.DataLoader(ds, batch_size=4, collate_fn=lambda b: b["a"].sum())
    with pytest.raises(TypeError):  # collate_fn gets the samples, as torch's does
        next(iter(dl))


def test_collate_fn_gets_the_samples_as_torchs_does():
    """A collate_fn written for torch's DataLoader (a list of samples in) works unchanged, and
    torch's default_collate gives the batch back (no copy); it got the batched dict, on which
    default_collate raised KeyError 0."""
    ds = _dataset()
    want = list(rc.DataLoader(ds, batch_size=4))

    def stack(samples):
        assert len(samples) in (4, len(ds) % 4) and all(isinstance(s, dict) for s in samples)
        return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    for collate in (stack, torch.utils.data.default_collate):
        got = list(rc.DataLoader(ds, batch_size=4, collate_fn=collate))
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert set(g) == set(w) and all(torch.equal(g[k], w[k]) for k in w)
    samples = next(iter(rc.DataLoader(ds, batch_size=4, collate_fn=lambda s: s)))
    assert samples.batch["a"].shape[0] == 4 and torch.equal(samples[1]["a"], ds[1]["a"])


@pytest.mark.parametrize("n", [1, 7, 10, 11])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 13])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shard_is_distributed_sampler_arithmetic(n, world, drop_last):
    order = np.random.default_rng(n).permutation(n)
    for rank in range(world):
        np.testing.assert_array_equal(shard(order, rank, world, drop_last),
                                      distributed_indices(order.tolist(), rank, world, drop_last))


def test_explicit_ranks_get_disjoint_equal_shards():
    ds = _dataset()  # 39 anchors
    n = len(ds)
    for drop_last in (False, True):
        parts = []
        for rank in range(3):
            dl = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=2, rank=rank, world_size=3,
                               drop_last=drop_last)
            parts.append(_indices(dl))
            assert len(dl) == (n // 3 // 4 if drop_last else -(-(n // 3) // 4))
        if not drop_last:
            assert {p.size for p in parts} == {13}
            assert sorted(np.concatenate(parts).tolist()) == ds.anchors[:, 0].tolist()
    # the shards are the global permutation, dealt out
    perm = np.random.Generator(np.random.PCG64([2, 0])).permutation(n)
    dl = rc.DataLoader(ds, batch_size=100, shuffle=True, seed=2, rank=1, world_size=3)
    np.testing.assert_array_equal(_indices(dl), _anchor_frames(ds, perm[1::3]))
    # like DistributedSampler: seed 0 on every rank, whatever generator each rank passes (a
    # per-rank generator seeded the orders apart, and the shards overlapped)
    assert rc.DataLoader(ds, shuffle=True, rank=0, world_size=2).seed == 0
    parts = [_indices(rc.DataLoader(ds, batch_size=5, shuffle=True, rank=r, world_size=3,
                                    generator=torch.Generator().manual_seed(1234 + r)))
             for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == ds.anchors[:, 0].tolist()


def test_two_process_gloo_run_covers_every_anchor_once(tmp_path):
    worker = Path(__file__).with_name("_dist_worker.py")
    root = str(Path(rc.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    procs = [subprocess.Popen([sys.executable, str(worker), str(r), "2",
                               str(tmp_path / "init"), str(tmp_path / f"r{r}.npz")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
             for r in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out.decode()[-3000:]
    r0, r1 = (np.load(tmp_path / f"r{r}.npz") for r in range(2))
    n = int(r0["len"][0])
    orders = []
    for epoch in range(2):
        a, b = r0[f"epoch{epoch}"], r1[f"epoch{epoch}"]
        assert a.size == b.size == n // 2
        both = np.concatenate([a, b])
        assert sorted(both.tolist()) == list(range(n))  # every anchor exactly once
        orders.append(both)
    assert not np.array_equal(orders[0], orders[1])  # epochs differ


def test_bad_loader_arguments():
    ds = _dataset()
    for bs in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="batch_size"):
            rc.DataLoader(ds, batch_size=bs)
    with pytest.raises(ValueError, match="batch_sampler"):
        rc.DataLoader(ds, batch_size=4, batch_sampler=[[0]])
    with pytest.raises(ValueError, match="sampler"):
        rc.DataLoader(ds, sampler=[0, 1], shuffle=True)
    with pytest.raises(ValueError, match="sampling"):
        rc.DataLoader(ds, sampling="trajectory")
    with pytest.raises(ValueError, match="shuffle"):
        rc.DataLoader(ds, sampling="episode", shuffle=False)
    with pytest.raises(ValueError, match="reuse_outputs"):
        rc.DataLoader(ds, reuse_outputs=1)
    with pytest.raises(ValueError, match="rank"):
        rc.DataLoader(ds, rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        rc.DataLoader(ds, rank=0, world_size=0)
    with pytest.raises(TypeError, match="TrajectoryDataset"):
        rc.DataLoader(list(range(3)))
    with pytest.raises(ValueError, match="epoch"):
        rc.DataLoader(ds).set_epoch(-1)
    with pytest.raises(IndexError):
        list(rc.DataLoader(ds, sampler=[len(ds)]))


def test_worker_arguments_are_accepted_no_ops():
    ds = _dataset()
    dl = rc.DataLoader(ds, batch_size=8, shuffle=True, seed=1, num_workers=8, pin_memory=True,
                       prefetch_factor=4, persistent_workers=True, timeout=5,
                       worker_init_fn=print, multiprocessing_context="spawn",
                       pin_memory_device="cuda", in_order=False)
    ref = rc.DataLoader(ds, batch_size=8, shuffle=True, seed=1)
    np.testing.assert_array_equal(_indices(dl), _indices(ref))


def test_seed_out_of_range_and_incomplete_state_are_named_up_front():
    store = rc.TrajectoryStore.from_arrays({"x": np.arange(10.0)[:, None]}, [4, 10])
    ds = rc.TrajectoryDataset(store)
    for bad in (-1, 2**64):  # PCG64 rejects negatives at iteration; the image key needs < 2**64
        with pytest.raises(ValueError, match=r"seed: expected an int in \[0, 2\*\*64\)"):
            rc.DataLoader(ds, batch_size=2, shuffle=True, seed=bad)
    with pytest.raises(ValueError, match="without"):
        rc.DataLoader(ds, batch_size=2).load_state_dict({"version": 1})
    loader = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=1)  # 3 batches an epoch
    for edit, match in (({"batches_done": -3}, r"state\['batches_done'\]: expected an int >= 0"),
                        ({"batches_done": 4}, r"expected at most 3 \(the batches of an epoch\)"),
                        ({"epoch": -1}, r"state\['epoch'\]"), ({"seed": 1.5}, r"state\['seed'\]"),
                        ({"seed": 2**64}, "below 2")):
        with pytest.raises(ValueError, match=match):
            loader.load_state_dict({**loader.state_dict(), **edit})
    loader.load_state_dict({**loader.state_dict(), "batches_done": 3})  # the epoch's end
    assert list(loader) == []
    with pytest.raises(ValueError, match="epoch: expected an int >= 0"):
        loader.epoch_order(-1)


def test_a_loaded_position_survives_set_epoch_of_its_epoch_and_reaches_the_sampler():
    """The usual resume: load_state_dict, then the training loop's set_epoch(epoch) - the
    loaded position stays (another epoch starts at its first batch), and a sampler with
    set_epoch (DistributedSampler) gets the saved epoch."""
    from torch.utils.data.distributed import DistributedSampler

    store = rc.TrajectoryStore.from_arrays({"x": np.arange(20.0)[:, None]}, [10, 20])
    ds = rc.TrajectoryDataset(store)
    a = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=0)
    a.set_epoch(2)
    it = iter(a)
    seen = [next(it)["index"].tolist() for _ in range(2)]
    rest = [b["index"].tolist() for b in it]
    b = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=0)
    b.set_epoch(2)
    it = iter(b)
    next(it), next(it)
    state = b.state_dict()
    c = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=0)
    c.load_state_dict(state)
    c.set_epoch(2)
    assert [x["index"].tolist() for x in c] == rest and len(seen) == 2
    d = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=0)
    d.load_state_dict(state)
    d.set_epoch(3)  # another epoch: from its first batch
    assert len(list(d)) == 5
    sampler = DistributedSampler(ds, num_replicas=1, rank=0, seed=0)
    e = rc.DataLoader(ds, batch_size=4, sampler=sampler)
    e.set_epoch(3)
    it = iter(e)
    next(it)
    state = e.state_dict()  # epoch 3, one batch done
    want = [x["index"].tolist() for x in it]
    f = rc.DataLoader(ds, batch_size=4, sampler=DistributedSampler(ds, num_replicas=1, rank=0,
                                                                   seed=0))
    f.load_state_dict(state)
    assert f.sampler.epoch == 3 and [x["index"].tolist() for x in f] == want


def test_batch_sampler_values_are_checked_like_indices():
    store = rc.TrajectoryStore.from_arrays({"x": np.arange(10.0)[:, None]}, [4, 10])
    ds = rc.TrajectoryDataset(store)
    for bad in ([[0.9, 2.7]], [[True, False]]):
        with pytest.raises(TypeError, match="indices: expected integers"):
            list(rc.DataLoader(ds, batch_sampler=bad))
    assert [b["index"].tolist() for b in rc.DataLoader(ds, batch_sampler=[[3, -1]])] == [[3, 9]]


def test_indices_beyond_int64_are_out_of_range_not_wrapped():
    store = rc.TrajectoryStore.from_arrays({"x": np.arange(10.0)[:, None]}, [4, 10])
    ds = rc.TrajectoryDataset(store)
    big = np.array([2**64 - 1], np.uint64)  # as int64: -1, the last sample
    with pytest.raises(IndexError, match="indices: expected values in"):
        ds.get_batch(big)
    with pytest.raises(IndexError, match="indices: expected values in"):
        list(rc.DataLoader(ds, sampler=big))
    with pytest.raises(TypeError, match="indices: expected integers"):
        list(rc.DataLoader(ds, sampler=[1.5]))
    assert ds.get_batch(np.array([9], np.uint64))["index"].tolist() == [9]


def test_repr_says_what_the_loader_does():
    store = rc.TrajectoryStore.from_arrays({"x": np.arange(10.0)[:, None]}, [4, 10])
    r = repr(rc.DataLoader(rc.TrajectoryDataset(store), batch_size=3, shuffle=True, seed=7))
    assert r.startswith("DataLoader(10 anchors, batch_size=3, shuffle=True") and "seed=7" in r


# ---------------------------------------------------------------------------------------------
# samplers without a length, batching off, iterators, sampler epochs, rank with a sampler, state


class _Endless(torch.utils.data.Sampler):
    """An endless random sampler with no __len__ (a step-based training loop's); fails once a
    reader has pulled more than `limit` indices, so a loader that drains it fails, not hangs."""

    def __init__(self, n, seed=0, limit=10_000):
        self.n, self.seed, self.limit, self.pulled = n, seed, limit, 0

    def __iter__(self):
        g = np.random.default_rng(self.seed)
        while True:
            for i in g.permutation(self.n).tolist():
                self.pulled += 1
                assert self.pulled <= self.limit, "the sampler was drained"
                yield i


class _Unsized(torch.utils.data.Sampler):
    """A finite sampler without __len__ (a generator of `count` random indices)."""

    def __init__(self, n, count, seed=0):
        self.n, self.count, self.seed = n, count, seed

    def __iter__(self):
        yield from np.random.default_rng(self.seed).integers(0, self.n, self.count).tolist()


def _assert_items_equal(got, want, what=""):
    assert list(got) == list(want), what
    for k, v in want.items():
        if isinstance(v, torch.Tensor):
            assert got[k].shape == v.shape and torch.equal(got[k], v), (what, k)
        else:
            assert got[k] == v, (what, k)


class _LenNotImplemented(torch.utils.data.Sampler):
    """A sampler whose __len__ raises NotImplementedError (torch's base Sampler's own way to
    have none): iterated as torch iterates it, never asked for its length."""

    def __init__(self, order):
        self.order = order

    def __iter__(self):
        return iter(self.order)

    def __len__(self):
        raise NotImplementedError


def test_a_sampler_whose_len_is_not_implemented_is_streamed():
    ds = _dataset()
    order = [3, 1, 2, 0, 7]
    dl = rc.DataLoader(ds, batch_size=2, sampler=_LenNotImplemented(order))
    ref = torch.utils.data.DataLoader(ds, batch_size=2, sampler=_LenNotImplemented(order))
    got, want = [b for b in dl], [b for b in ref]  # list(ref) asks torch for its len
    assert len(got) == len(want) == 3
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g["f"], w["f"])
    with pytest.raises(TypeError, match="has no length"):
        len(dl)


def test_a_sampler_without_length_is_streamed_like_torch(monkeypatch):
    from itertools import islice

    from robocache import loader as L

    # pieces of 3 batches: several per check
    monkeypatch.setattr(L, "STREAM_BATCHES", 3, raising=False)
    ds = _dataset()
    endless = _Endless(len(ds), seed=1, limit=200)
    dl = rc.DataLoader(ds, batch_size=4, sampler=endless)
    ref = torch.utils.data.DataLoader(ds, batch_size=4, sampler=_Endless(len(ds), seed=1))
    got = list(islice(dl, 20))  # more than an epoch of the dataset, 7 pieces
    for n, (g, w) in enumerate(zip(got, islice(ref, 20), strict=True)):
        _assert_items_equal(g, w, f"batch {n}")
    assert endless.pulled <= 4 * 3 * 7  # read piece by piece, not drained
    for what in (lambda: len(dl), lambda: len(iter(dl)), lambda: dl.epoch_order()):
        with pytest.raises(TypeError, match="no length"):
            what()
    # a finite one: the partial last batch (or none with drop_last), resume mid-stream
    for drop_last in (False, True):
        s = _Unsized(len(ds), 30, seed=2)
        dl = rc.DataLoader(ds, batch_size=4, sampler=s, drop_last=drop_last)
        ref = list(torch.utils.data.DataLoader(ds, batch_size=4, sampler=s,
                                               drop_last=drop_last))
        got = list(dl)
        assert len(got) == len(ref) == (7 if drop_last else 8) and dl.epoch == 1
        for n, (g, w) in enumerate(zip(got, ref, strict=True)):
            _assert_items_equal(g, w, f"drop_last={drop_last} batch {n}")
        it = iter(dl)
        for _ in range(5):
            next(it)
        dl2 = rc.DataLoader(ds, batch_size=4, sampler=s, drop_last=drop_last)
        dl2.load_state_dict(dl.state_dict())
        rest = list(dl2)
        assert len(rest) == len(ref) - 5
        for n, (g, w) in enumerate(zip(rest, ref[5:], strict=True)):
            _assert_items_equal(g, w, f"resumed batch {n + 5}")
    # a batch_sampler without a length
    bs = torch.utils.data.BatchSampler(_Unsized(len(ds), 25, seed=3), 3, False)
    ref = list(torch.utils.data.DataLoader(ds, batch_sampler=bs))
    got = list(rc.DataLoader(ds, batch_sampler=bs))
    assert len(got) == len(ref) == 9
    for n, (g, w) in enumerate(zip(got, ref, strict=True)):
        _assert_items_equal(g, w, f"batch_sampler batch {n}")
    with pytest.raises(TypeError, match="batch_sampler"):
        len(rc.DataLoader(ds, batch_sampler=bs))


def test_batch_size_none_yields_single_samples_like_torch():
    ds = _dataset()
    got = list(rc.DataLoader(ds, batch_size=None))
    ref = list(torch.utils.data.DataLoader(ds, batch_size=None))
    assert len(got) == len(ref) == len(ds) == len(rc.DataLoader(ds, batch_size=None))
    for n, (g, w) in enumerate(zip(got, ref, strict=True)):
        assert g["a"].shape == (3, 2)  # no batch dimension
        _assert_items_equal(g, w, f"sample {n}")
    # shuffled, sharded, sampler, collate_fn: each item is dataset[i] of the order
    for kw in (dict(shuffle=True, seed=4), dict(shuffle=True, seed=4, rank=1, world_size=2),
               dict(sampler=[5, 0, 38, 5]),
               dict(shuffle=True, seed=5, collate_fn=lambda s: s["f"] * 10)):
        dl = rc.DataLoader(ds, batch_size=None, **kw)
        got = list(dl)
        order = dl.epoch_order(0)
        assert len(got) == len(order) == len(dl)
        for n, (g, i) in enumerate(zip(got, order.tolist(), strict=True)):
            if "collate_fn" in kw:
                assert g.ndim == 0 and int(g) == 10 * int(ds[i]["f"]), n
            else:
                _assert_items_equal(g, ds[i], f"{kw} sample {n}")
    for bad in (dict(drop_last=True), dict(reuse_outputs=2)):
        with pytest.raises(ValueError, match="batch_size=None"):
            rc.DataLoader(ds, batch_size=None, **bad)


@pytest.mark.parametrize("chunk", [64, 5])
def test_batch_size_none_resumes_mid_chunk(monkeypatch, chunk):
    from robocache import loader as L

    monkeypatch.setattr(L, "CHUNK", chunk, raising=False)
    big = _dataset(lens=(40, 3, 35, 50))  # 128 samples: two chunks of 64
    full = [int(s["index"]) for s in rc.DataLoader(big, batch_size=None, shuffle=True, seed=3)]
    for stop in (0, 1, chunk - 1, chunk, 70, len(big)):
        dl = rc.DataLoader(big, batch_size=None, shuffle=True, seed=3)
        it = iter(dl)
        head = [int(next(it)["index"]) for _ in range(stop)]
        assert len(it) == len(big) - stop
        dl2 = rc.DataLoader(big, batch_size=None, shuffle=True)
        dl2.load_state_dict(dl.state_dict())
        assert head + [int(s["index"]) for s in dl2] == full, stop


def test_iterator_has_len_and_keeps_its_own_order():
    ds = _dataset()
    dl = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=8)
    it = iter(dl)
    assert len(it) == len(dl) == 10
    next(it), next(it)
    assert len(it) == 8 and len(list(it)) == 8 and len(it) == 0
    # resumed: len counts the batches left; a batch_sampler's iterator has its length too
    it = iter(dl)
    next(it)
    dl.load_state_dict(dl.state_dict())
    assert len(iter(dl)) == 9
    assert len(iter(rc.DataLoader(ds, batch_sampler=[[1, 2], [3]]))) == 2
    # two live iterators of one loader, in two epochs, each with its own order
    dl = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=8)
    old = iter(dl)
    first = next(old)
    dl.set_epoch(5)
    new = iter(dl)
    got_new = [next(new)]
    got_old = [first]
    for a, b in zip(old, new, strict=False):
        got_old.append(a)
        got_new.append(b)
    got_new += list(new)
    np.testing.assert_array_equal(_indices(got_old), _anchor_frames(ds, dl.epoch_order(0)))
    np.testing.assert_array_equal(_indices(got_new), _anchor_frames(ds, dl.epoch_order(5)))
    # the state follows the newest pass that handed out a batch: resuming from it continues
    # that pass; an older pass handing out batches or ending behind it leaves the state alone
    # (the loader's epoch never goes back to the older pass's)
    dl = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=1)
    old = iter(dl)
    next(old), next(old)
    new = iter(dl)  # old began epoch 0 and is not done: new is epoch 1
    next(new)
    next(old)
    state = dl.state_dict()
    assert (state["epoch"], state["batches_done"]) == (1, 1)
    again = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=1)
    again.load_state_dict(state)
    assert torch.equal(next(iter(again))["f"], next(new)["f"])
    for _ in range(len(old)):  # old hands out its last batch, then new one more
        next(old)
    next(new)
    with pytest.raises(StopIteration):
        next(old)  # old ends behind new: the state stays new's
    assert (dl.epoch, dl.state_dict()["batches_done"]) == (1, 3)
    for _ in new:
        pass
    assert dl.epoch == 2
    # after set_epoch, a pass begun before it no longer moves the state: the next pass is the
    # epoch set, from its start
    old = iter(dl)
    next(old)
    dl.set_epoch(5)
    next(old)
    assert (dl.epoch, dl.state_dict()["batches_done"]) == (5, 0)
    np.testing.assert_array_equal(_indices(dl), _anchor_frames(ds, dl.epoch_order(5)))
    list(old)
    assert dl.epoch == 6
    # a batch whose index the dataset refuses is consumed, as by torch's iterator: the pass
    # goes on to its end and completes its epoch; an error of the sampler itself (drawing the
    # order) ends the pass without completing it
    dl = rc.DataLoader(ds, batch_size=4, sampler=[0, len(ds)])
    it = iter(dl)
    with pytest.raises(IndexError):
        next(it)
    assert list(it) == [] and dl.epoch == 1

    class Broken(torch.utils.data.Sampler):
        def __len__(self):
            return 4

        def __iter__(self):
            raise OSError("the sampler's file is gone")
    dl = rc.DataLoader(ds, batch_size=4, sampler=Broken())
    it = iter(dl)
    with pytest.raises(OSError, match="file is gone"):
        next(it)
    assert list(it) == [] and dl.epoch == 0


def test_a_completed_epoch_reaches_the_sampler_so_resume_is_exact():
    """No set_epoch calls: the loader advances its epoch after each full pass and tells a
    DistributedSampler, so a checkpoint taken mid-epoch resumes with the same batches."""
    from torch.utils.data.distributed import DistributedSampler

    ds = _dataset()

    def loader():
        return rc.DataLoader(ds, batch_size=4, sampler=DistributedSampler(
            ds, num_replicas=2, rank=0, shuffle=True, seed=1))

    dl = loader()
    epochs, state = [], None
    for epoch in range(3):
        batches = []
        for n, b in enumerate(dl):
            batches.append(_indices([b]))
            if epoch == 2 and n == 1:
                state = dl.state_dict()
        epochs.append(np.concatenate(batches))
        assert dl.epoch == dl.sampler.epoch == epoch + 1
    assert not np.array_equal(epochs[1], epochs[2])  # the sampler's order changes per epoch
    for epoch in (1, 2):
        s = DistributedSampler(ds, num_replicas=2, rank=0, shuffle=True, seed=1)
        s.set_epoch(epoch)
        np.testing.assert_array_equal(epochs[epoch], _anchor_frames(ds, list(s)))
    dl2 = loader()
    dl2.load_state_dict(state)
    np.testing.assert_array_equal(_indices(dl2), epochs[2][8:])


def test_rank_and_world_size_are_refused_with_a_sampler():
    ds = _dataset()
    for kw in (dict(sampler=range(10), batch_size=4), dict(batch_sampler=[[0, 1], [2]])):
        for dist in (dict(rank=1, world_size=2), dict(rank=7, world_size=2), dict(rank=0),
                     dict(world_size=1)):
            with pytest.raises(ValueError, match="rank / world_size: a sampler"):
                rc.DataLoader(ds, **kw, **dist)
        dl = rc.DataLoader(ds, **kw)  # the sampler decides: the whole of it
        assert (dl.rank, dl.world_size) == (0, 1) and len(_indices(dl)) in (10, 3)


def test_state_dict_holds_plain_python_values():
    import io
    import json

    ds = _dataset()
    dl = rc.DataLoader(ds, batch_size=np.int64(4), shuffle=np.bool_(True), seed=np.uint64(3))
    it = iter(dl)
    next(it)
    state = dl.state_dict()
    assert all(type(v) in (int, bool, str, type(None)) for v in state.values()), state
    assert json.loads(json.dumps(state)) == state
    buf = io.BytesIO()
    torch.save({"loader": state}, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)["loader"]
    assert back == state
    dl2 = rc.DataLoader(ds, batch_size=4, shuffle=True)
    dl2.load_state_dict(back)
    np.testing.assert_array_equal(_indices(dl2), _indices(list(it)))
    none = rc.DataLoader(ds, batch_size=None).state_dict()
    assert none["batch_size"] is None and json.loads(json.dumps(none)) == none


def _first_ids(loader, steps):
    """A training loop that leaves each pass after `steps` batches (max_steps / steps per
    epoch): the batches' anchor frames."""
    seen = []
    for step, batch in enumerate(loader):
        seen.append(tuple(batch["f"].tolist()))
        if step + 1 == steps:
            break
    return seen


def test_a_pass_left_early_ends_its_epoch_for_the_next_pass():
    """torch's DataLoader (RandomSampler) draws a new order per iter(): five passes of three
    steps see fifteen batches. rc.DataLoader used to restart epoch 0 each time (three)."""
    ds = _dataset()
    dl = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=3)
    passes = []
    for n in range(5):
        passes.append(_first_ids(dl, 3))
        assert dl.state_dict()["epoch"] == n and dl.state_dict()["batches_done"] == 3
    assert len({b for p in passes for b in p}) == 15
    for n, p in enumerate(passes):  # each pass is epoch n's order, from its start
        want = _anchor_frames(ds, dl.epoch_order(n)[:12]).reshape(3, 4)
        assert p == [tuple(r) for r in want.tolist()]
    # an explicit set_epoch is honoured: the same epoch again
    dl.set_epoch(1)
    assert _first_ids(dl, 3) == passes[1]
    dl.set_epoch(1)
    assert _first_ids(dl, 2) == passes[1][:2]
    # an iterator made but never read does not count as a pass begun
    iter(dl)
    assert _first_ids(dl, 1) == passes[2][:1]
    # a pass broken by an error too ends its epoch for the next one
    dl.set_epoch(0)
    it = iter(dl)
    next(it)
    del it
    assert _first_ids(dl, 1) == passes[1][:1]


def test_a_loaded_resume_point_is_not_moved_by_an_older_pass():
    ds = _dataset()
    dl = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=3)
    full = [tuple(b["f"].tolist()) for b in dl]  # epoch 0 whole
    old = iter(dl)  # epoch 1
    next(old)
    dl.load_state_dict({**dl.state_dict(), "epoch": 0, "batches_done": 2})
    list(old)  # the older pass runs to its end behind the loaded point
    assert (dl.state_dict()["epoch"], dl.state_dict()["batches_done"]) == (0, 2)
    assert [tuple(b["f"].tolist()) for b in dl] == full[2:]
    assert dl.state_dict()["epoch"] == 1


def test_a_loader_copies_and_pickles_after_iterating():
    import copy
    import pickle

    ds = _dataset()
    dl = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=3)
    it = iter(dl)
    next(it)
    next(it)
    order = _anchor_frames(ds, dl.epoch_order(0))
    epoch0 = [order[i:i + 4].tolist() for i in range(0, len(order), 4)]
    for twin in (copy.deepcopy(dl), pickle.loads(pickle.dumps(dl))):
        # a copy is a checkpoint: it resumes the pass under way where state_dict() says
        assert twin.state_dict() == dl.state_dict()
        assert [b["f"].tolist() for b in twin] == epoch0[2:]
        assert twin.epoch == 1
    assert len(list(it)) == len(dl) - 2  # the original pass is untouched
    resumed = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=3)
    resumed.load_state_dict({**resumed.state_dict(), "epoch": 2, "batches_done": 1})
    twin = pickle.loads(pickle.dumps(resumed))  # a loaded resume point travels
    got = [b["f"].tolist() for b in twin]
    assert len(got) == len(dl) - 1 and got == [b["f"].tolist() for b in resumed]


def test_a_resume_point_is_kept_by_an_iterator_that_hands_out_nothing():
    """Frameworks may make an iterator and drop it: the loaded point waited for a pass that
    hands out a batch (it was used up by the first iter())."""
    ds = _dataset()
    dl = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=3)
    full = [b["f"].tolist() for b in dl]
    dl.load_state_dict({**dl.state_dict(), "epoch": 0, "batches_done": 3})
    iter(dl)
    assert (dl.state_dict()["epoch"], dl.state_dict()["batches_done"]) == (0, 3)
    assert [b["f"].tolist() for b in dl] == full[3:]
    assert dl.state_dict()["epoch"] == 1


def test_a_pass_left_early_leaves_a_samplers_epoch_to_its_owner():
    """torch's idiom sets a DistributedSampler's epoch by hand before each pass: a pass left
    early must not overwrite it at the next iter() (it set epochs 5, 1, 2 instead of 5, 6, 7)."""
    from torch.utils.data.distributed import DistributedSampler

    ds = _dataset()
    sampler = DistributedSampler(ds, num_replicas=2, rank=0, seed=4)
    dl = rc.DataLoader(ds, batch_size=2, sampler=sampler)
    for epoch in (5, 6, 7):
        sampler.set_epoch(epoch)
        want = _anchor_frames(ds, list(sampler))[:6].reshape(3, 2)
        assert _first_ids(dl, 3) == [tuple(r) for r in want.tolist()]
        assert sampler.epoch == epoch


def test_an_abandoned_pass_forwards_the_next_epoch_to_a_sampler_nobody_else_sets():
    """Without sampler.set_epoch by hand, a pass left early (or a loop that takes every batch
    but never asks for one more, zip / islice) forwards the next epoch as a completed pass does:
    the DistributedSampler's order changes, and resuming from a checkpoint of the next pass is
    exact (the sampler stayed at epoch 0 while the loader counted on)."""
    import itertools

    from torch.utils.data.distributed import DistributedSampler

    ds = _dataset()

    def loader():
        return rc.DataLoader(ds, batch_size=2, sampler=DistributedSampler(ds, 2, 0, seed=4))
    dl = loader()
    first = [b["f"].tolist() for b in itertools.islice(dl, len(dl))]  # every batch, no StopIter
    second = [b["f"].tolist() for b in itertools.islice(dl, len(dl))]
    assert dl.sampler.epoch == 1 and first != second
    it = iter(dl)
    _ = [next(it) for _ in range(2)]  # epoch 2, two batches in
    state = dl.state_dict()
    assert (state["epoch"], state["batches_done"], dl.sampler.epoch) == (2, 2, 2)
    rest = [b["f"].tolist() for b in it]
    again = loader()
    again.load_state_dict(state)
    assert [b["f"].tolist() for b in again] == rest
