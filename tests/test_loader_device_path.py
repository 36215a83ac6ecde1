"""The loader's device path on the CPU: rc.DataLoader over a dataset whose window tables live next
to a torch CPU tensor (TrajectoryDataset._device_standin), so batches are built exactly as on a
GPU (ops.windows.BatchBuilder / OutputPool: outputs from pools, one window_batch_kernel launch per
batch) with the kernel run by the CPU emulator, and compared with the NumPy backend's batches.

What is checked besides values: fresh outputs (reuse_outputs=0) never share memory between
batches, so every batch a user holds stays valid; reuse_outputs=R recycles 2R output sets filled
R at a time, so the last R batches stay valid and batch n's memory is written again by batch
n + 2R; one launch fills several consecutive batches and a change of order (resume, new epoch)
or an offset off the filled ones launches again; a stream change starts a new pool; the loader
rebuilds its batch builder when dataset, batch_size or reuse_outputs change.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robocache as rc
from robocache.ops import windows as OW

pytestmark = pytest.mark.usefixtures("emulated_cuda")


def _store(seed=0, lens=(1, 9, 2, 14, 5, 1, 11)):
    rng = np.random.default_rng(seed)
    ends = np.cumsum(lens)
    n = int(ends[-1])
    return rc.TrajectoryStore.from_arrays(
        {"state": rng.standard_normal((n, 3)).astype(np.float32),
         "action": rng.standard_normal((n, 2)).astype(np.float32),
         "grip": rng.integers(0, 5, n).astype(np.int16),
         "done": rng.random(n) < 0.2},
        episode_ends=ends, device="cpu")


def _datasets(pad="edge", **kw):
    """(device-path dataset, NumPy-backend dataset) over the same store and arguments."""
    kw = dict(delta_indices={"state": [-1, 0], "action": range(-1, 4), "grip": range(-1, 4)},
              pad=pad, normalize={"state": "mean_std", "action": "min_max"}, **kw)
    st = _store()
    dev, host = rc.TrajectoryDataset(st, **kw), rc.TrajectoryDataset(st, **kw)
    dev._device_standin(torch.zeros(1))
    assert dev._on_device and not host._on_device
    return dev, host


def _assert_batch_equal(got, want, what=""):
    assert list(got) == list(want), what  # same entries, same order
    for k, v in want.items():
        g = got[k]
        assert isinstance(g, torch.Tensor) and g.dtype == v.dtype and g.shape == v.shape, (what, k)
        assert torch.equal(g, v), (what, k)


def _snapshot(batch):
    return {k: v.clone() for k, v in batch.items()}


@pytest.mark.parametrize("reuse", [0, 2, 3])
@pytest.mark.parametrize("pad", ["edge", "zero"])
def test_device_path_batches_equal_numpy_batches(monkeypatch, reuse, pad):
    # small pools: fresh outputs roll over to new pools several times per epoch
    monkeypatch.setattr(OW, "SLAB_BYTES", 2000)
    dev, host = _datasets(pad)
    for kw in (dict(batch_size=5, shuffle=True, seed=3),           # partial last batch
               dict(batch_size=4, shuffle=True, seed=4, drop_last=True),
               dict(batch_size=6, sampling="episode", seed=5)):
        a = rc.DataLoader(dev, reuse_outputs=reuse, **kw)
        b = rc.DataLoader(host, **kw)
        for epoch in range(2):
            n = 0
            for got, want in zip(a, b, strict=True):
                _assert_batch_equal(_snapshot(got), want, f"{kw} epoch {epoch} batch {n}")
                n += 1
            assert n == len(a) and a.epoch == epoch + 1


def test_fresh_outputs_stay_valid_while_held(monkeypatch):
    monkeypatch.setattr(OW, "SLAB_BYTES", 1500)
    dev, host = _datasets()
    a = rc.DataLoader(dev, batch_size=4, shuffle=True, seed=9)
    b = rc.DataLoader(host, batch_size=4, shuffle=True, seed=9)
    held = list(a)  # every batch of the epoch kept, then checked after all were built
    for n, (got, want) in enumerate(zip(held, list(b), strict=True)):
        _assert_batch_equal(got, want, f"batch {n}")
    # and no two batches share memory (masks shared between keys of ONE batch are fine)
    spans = []
    for got in held:
        seen = set()
        for t in got.values():
            if id(t) in seen:
                continue
            seen.add(id(t))
            spans.append((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()))
    spans.sort()
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:], strict=False))


@pytest.mark.parametrize("R", [2, 3])
def test_reused_outputs_keep_the_last_R_batches(R):
    dev, host = _datasets()
    a = rc.DataLoader(dev, batch_size=3, shuffle=True, seed=1, drop_last=True, reuse_outputs=R)
    b = rc.DataLoader(host, batch_size=3, shuffle=True, seed=1, drop_last=True)
    held, wants = [], []
    for n, (got, want) in enumerate(zip(a, b, strict=True)):
        held.append(got)
        wants.append(want)
        for back in range(min(R, n + 1)):  # the last R batches handed out are intact
            _assert_batch_equal(held[n - back], wants[n - back], f"batch {n - back} at {n}")
        if n >= 2 * R:  # a ring of 2R sets: batch n is written into the arrays of batch n - 2R
            assert held[n]["action"].data_ptr() == held[n - 2 * R]["action"].data_ptr()
            assert held[n]["action"] is held[n - 2 * R]["action"]
        for back in range(1, min(2 * R, n + 1)):
            assert held[n]["action"].data_ptr() != held[n - back]["action"].data_ptr()
    assert len(held) > 4 * R
    # R batches per launch: the ring is filled R sets at a time
    full = len(a)
    assert a._builder[2].launches == -(-full // R)


def test_a_stream_change_starts_a_new_pool():
    dev, host = _datasets()
    builder, build = dev._device_batches(reuse=2, batch_size=4)
    order = np.arange(len(dev))
    builder.bind(dev._op.upload_indices(order))
    first = [_snapshot(b) | {"ptr": b["state"].data_ptr()} for b in
             (build(4 * j, 4, (0, 0, j)) for j in range(4))]  # the ring's 2R = 4 sets
    kept = build(16, 4, (0, 0, 4))  # reuses the first set of the ring
    assert kept["state"].data_ptr() == first[0]["ptr"]
    kept_values = _snapshot(kept)
    builder._stream = lambda: 12345  # the current stream is now another one
    after = [build(20, 4, (0, 0, 5)), build(24, 4, (0, 0, 6), 1)]
    assert {b["state"].data_ptr() for b in after}.isdisjoint({f["ptr"] for f in first})
    _assert_batch_equal(kept, kept_values, "a batch of the old ring")  # not written again
    _assert_batch_equal(after[1], host.get_batch(order[24:28]), "new ring")


def test_every_index_array_is_marked_on_every_stream_that_reads_it(monkeypatch):
    """A new epoch's index array read on a stream whose pool already exists (a ring kept across
    epochs) is marked there too: the mark was made only with a new pool, so the array's memory
    could be handed out again while that stream's kernels still read it."""
    dev, _ = _datasets()
    builder, build = dev._device_batches(reuse=2, batch_size=4)
    marks = []
    monkeypatch.setattr(builder, "_mark_stream_use",
                        lambda stream: (marks.append((builder._gen, stream)),
                                        builder._streams_used.add(stream)))
    builder._stream = lambda: 7  # every batch on side stream 7
    for epoch in range(3):
        builder.bind(dev._op.upload_indices(np.arange(len(dev))))
        for j in range(3):  # the ring of 2R = 4 sets outlives the epochs
            build(4 * j, 4, (0, epoch, j))
    assert marks == [(1, 7), (2, 7), (3, 7)]  # once per index array and stream


def test_fill_ahead_builds_several_batches_per_launch(monkeypatch):
    # ~3 sets per fresh pool: a launch fills the rest of its pool, so an epoch of F full batches
    # and one partial batch takes ceil(F / sets) + 1 launches, and every batch is still right
    dev, host = _datasets()
    per_set = sum(np.prod(shape) * np.dtype(dt).itemsize if dt != "bfloat16" else 0
                  for shape, dt in dev._op.output_spec(4).values())
    monkeypatch.setattr(OW, "SLAB_BYTES", int(per_set * 3))
    a = rc.DataLoader(dev, batch_size=4, shuffle=True, seed=2)
    b = rc.DataLoader(host, batch_size=4, shuffle=True, seed=2)
    n_anchor = len(dev)
    full, partial = n_anchor // 4, int(n_anchor % 4 != 0)
    for epoch in range(2):
        for n, (got, want) in enumerate(zip(a, b, strict=True)):
            _assert_batch_equal(got, want, f"epoch {epoch} batch {n}")
    builder = a._builder[2]
    pools = -(-full // 3)
    assert builder.launches == 2 * (pools + partial)


def test_fill_ahead_is_dropped_when_the_order_changes(monkeypatch):
    # an iteration broken off mid-pool, then a resumed one and a new epoch: sets filled ahead
    # from the old order are filled again, never handed out stale
    monkeypatch.setattr(OW, "SLAB_BYTES", 1 << 20)
    dev, host = _datasets()
    a = rc.DataLoader(dev, batch_size=3, shuffle=True, seed=7)
    b = rc.DataLoader(host, batch_size=3, shuffle=True, seed=7)
    it = iter(a)
    got = [next(it) for _ in range(2)]  # one launch filled the whole epoch
    assert a._builder[2].launches == 1
    state = a.state_dict()
    a.load_state_dict(state)  # resume at batch 2 of the same epoch: a new bind
    want = list(b)
    for n, g in enumerate(got):
        _assert_batch_equal(g, want[n], f"batch {n}")
    rest = list(a)
    assert len(rest) == len(want) - 2
    for n, g in enumerate(rest, start=2):
        _assert_batch_equal(g, want[n], f"resumed batch {n}")
    for n, (g, w) in enumerate(zip(a, b, strict=True)):  # next epoch: another order
        _assert_batch_equal(g, w, f"epoch 1 batch {n}")


def test_a_call_off_the_filled_offsets_launches_again():
    dev, host = _datasets()
    builder, build = dev._device_batches(reuse=0, batch_size=4)
    order = np.random.default_rng(0).permutation(len(dev))
    builder.bind(dev._op.upload_indices(order))
    build(0, 4, (0, 0, 0), 5)  # fills sets for offsets 0, 4, ..., 20
    assert builder.launches == 1
    got = build(8, 4, (0, 0, 1))  # set 1 was filled for offset 4, not 8: launch again
    assert builder.launches == 2
    _assert_batch_equal(got, host.get_batch(order[8:12]), "offset 8")
    got = build(12, 4, (0, 0, 2), 99)  # the last call filled one set only; `ahead` is capped
    assert builder.launches == 3        # by the pool and by the end of the index array
    _assert_batch_equal(got, host.get_batch(order[12:16]), "offset 12")
    got = build(16, 4, (0, 0, 3))  # filled ahead by the last call
    assert builder.launches == 3
    _assert_batch_equal(got, host.get_batch(order[16:20]), "offset 16")
    last = (len(order) // 4 - 1) * 4
    got = build(last, 4, (0, 0, 9), 99)  # the last full batch: nothing read past the order
    _assert_batch_equal(got, host.get_batch(order[last:last + 4]), "last full batch")


def test_loader_keeps_its_builder_until_the_configuration_changes():
    dev, _ = _datasets()
    dl = rc.DataLoader(dev, batch_size=4, reuse_outputs=2)
    next(iter(dl))
    first = dl._builder[2]
    list(dl)
    assert dl._builder[2] is first  # kept across epochs: the ring survives them
    dl.batch_size = 5
    next(iter(dl))
    assert dl._builder[2] is not first and dl._builder[2].batch_size == 5
    second = dl._builder[2]
    dl.reuse_outputs = 0
    next(iter(dl))
    assert dl._builder[2] is not second and dl._builder[2].reuse == 0
    third = dl._builder[2]
    dev._device_standin(torch.zeros(1))  # new tables: the old builder's pointers are stale
    next(iter(dl))
    assert dl._builder[2] is not third and dl._builder[2].op is dev._op


def test_builder_refuses_unknown_entries_and_host_ops():
    dev, host = _datasets()
    with pytest.raises(KeyError, match="nope"):
        dev._op.batch_builder(["state", "nope"])
    with pytest.raises(RuntimeError, match="device tables"):
        host._op.batch_builder(["state"])
    # every key with offsets has a mask array of its own, also with another key's offsets
    assert dev._op.resolve_name("grip_is_pad") == "grip_is_pad"
    assert dev._op.resolve_name("state_is_pad") == "state_is_pad"
    with pytest.raises(KeyError, match="nope_is_pad"):
        dev._op.resolve_name("nope_is_pad")


@pytest.mark.parametrize("reuse", [0, 2])
def test_camera_keys_on_the_device_path(reuse):
    """Camera keys come out of the pool as frame rows; the dataset turns them into frames (the
    image transform keyed by seed / epoch / batch, a callable, or the raw gather)."""
    rng = np.random.default_rng(4)
    ends = np.array([1, 6, 14, 15, 23])
    n = int(ends[-1])
    st = rc.TrajectoryStore.from_arrays(
        {"cam": rng.integers(0, 256, (n, 12, 16, 3), dtype=np.uint8),
         "wrist": rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8),
         "top": rng.integers(0, 256, (n, 3, 5, 3), dtype=np.uint8),
         "state": rng.standard_normal((n, 4)).astype(np.float32)},
        episode_ends=ends, image_keys=("cam", "wrist", "top"), device="cpu")

    def summed(frames, rows, is_pad):  # a callable transform: frames[rows] summed
        return torch.from_numpy(np.asarray(frames)[rows.numpy()].sum(axis=(-3, -2, -1)))

    kw = dict(delta_indices={"cam": [-1, 0], "wrist": [0, 2], "top": [-1, 0], "state": [0]},
              pad="zero", image_transforms={
                  "cam": rc.ImageTransform(crop=8, crop_mode="random", resize=(6, 6)),
                  "wrist": summed})
    dev, host = rc.TrajectoryDataset(st, **kw), rc.TrajectoryDataset(st, **kw)
    dev._device_standin(torch.zeros(1))
    a = rc.DataLoader(dev, batch_size=5, shuffle=True, seed=2, reuse_outputs=reuse)
    b = rc.DataLoader(host, batch_size=5, shuffle=True, seed=2)
    for epoch in range(2):
        for n_batch, (got, want) in enumerate(zip(a, b, strict=True)):
            _assert_batch_equal(_snapshot(got), want, f"epoch {epoch} batch {n_batch}")


def test_batch_sampler_sampler_and_collate_on_the_device_path(monkeypatch):
    monkeypatch.setattr(OW, "SLAB_BYTES", 3000)
    dev, host = _datasets()
    batches = [[3, 1, 4], [1, 5, 9], [2, 6], [], [5, 3, 5], [8, 9, 7], [9, 3, 2]]

    def collate(samples):  # torch's collate_fn contract: the batch's samples (torch's
        # default_collate cannot take an empty batch; its .batch is the batched dict)
        return {"n": len(samples), **(torch.utils.data.default_collate(samples) if samples
                                      else samples.batch)}

    a = rc.DataLoader(dev, batch_sampler=batches, collate_fn=collate)
    b = rc.DataLoader(host, batch_sampler=batches, collate_fn=collate)
    got = list(a)  # held: batch-sampler batches of varying sizes come from fresh pools too
    for n, (g, w) in enumerate(zip(got, list(b), strict=True)):
        assert g.pop("n") == w.pop("n") == len(batches[n])
        _assert_batch_equal(g, w, f"batch {n}")
    assert sorted(a._builder[2]._pools) == [0, 2, 3]  # one pool per batch size
    sampler = [7, 0, 3, 3, 11, 2, 5]
    a = rc.DataLoader(dev, batch_size=3, sampler=sampler, reuse_outputs=2)
    b = rc.DataLoader(host, batch_size=3, sampler=sampler)
    for n, (g, w) in enumerate(zip(a, b, strict=True)):
        _assert_batch_equal(_snapshot(g), w, f"sampler batch {n}")


@pytest.mark.parametrize("pad, reuse", [("edge", 0), ("zero", 0), ("edge", 2)])
def test_host_resident_frames_read_by_the_image_kernel(monkeypatch, pad, reuse):
    """frames_on_host: camera keys stay in (pinned) host memory and the image kernel reads them
    through their mapped address - raw uint8 frames without a transform, or the transform's
    output - equal to the NumPy backend's batches. Here the 'mapped address' is the host address
    itself (the emulator reads host memory), standing in for cudaHostGetDevicePointer."""
    from robocache.ops import images

    rng = np.random.default_rng(8)
    ends = np.array([1, 6, 14, 15, 23])
    n = int(ends[-1])
    arrays = {"cam": rng.integers(0, 256, (n, 12, 16, 3), dtype=np.uint8),
              "top": rng.integers(0, 256, (n, 5, 7, 1), dtype=np.uint8),
              "grey": rng.integers(0, 256, (n, 5, 7), dtype=np.uint8),  # no channel axis
              "state": rng.standard_normal((n, 4)).astype(np.float32)}
    st = rc.TrajectoryStore.from_arrays(arrays, episode_ends=ends, device="cpu")
    st._host_keys = ("cam", "top", "grey")  # what a CUDA store with frames_on_host=True holds
    mapped = []
    monkeypatch.setattr(images, "_mapped_pointer",
                        lambda frames, like: mapped.append(1) or np.uint64(frames.data_ptr()))
    kw = dict(delta_indices={"cam": [-1, 0], "top": [0, 1], "grey": [-1, 0], "state": [0]},
              pad=pad,
              image_transforms={"top": rc.ImageTransform(resize=(3, 3), out_dtype="float32")})
    dev = rc.TrajectoryDataset(st, **kw)
    st._host_keys = ()
    host = rc.TrajectoryDataset(st, **kw)
    st._host_keys = ("cam", "top", "grey")
    dev._device_standin(torch.zeros(1))
    for k in st._host_keys:  # a CUDA store holds them as pinned torch CPU tensors
        dev._sources[k] = torch.from_numpy(arrays[k])
    a = rc.DataLoader(dev, batch_size=4, shuffle=True, seed=6, reuse_outputs=reuse)
    b = rc.DataLoader(host, batch_size=4, shuffle=True, seed=6)
    for n_batch, (got, want) in enumerate(zip(a, b, strict=True)):
        _assert_batch_equal(_snapshot(got), want, f"batch {n_batch}")
    assert len(mapped) == 3  # looked up once per key, not per batch


@pytest.mark.parametrize("R", [2, 3])
def test_reused_outputs_recycle_transformed_frames_too(monkeypatch, R):
    """reuse_outputs=R also recycles the image kernel's outputs (no allocation per camera key
    and batch): 2R per key handed out in turn, so the last R batches' frames stay valid and
    batch n's memory is written again by batch n + 2R; a last partial batch gets fresh frames."""
    from robocache.ops import images

    rng = np.random.default_rng(3)
    ends = np.array([7, 19, 30, 41])
    n = int(ends[-1])
    arrays = {"cam": rng.integers(0, 256, (n, 9, 8, 3), dtype=np.uint8),
              "state": rng.standard_normal((n, 2)).astype(np.float32)}
    st = rc.TrajectoryStore.from_arrays(arrays, episode_ends=ends, device="cpu")
    st._host_keys = ("cam",)
    monkeypatch.setattr(images, "_mapped_pointer",
                        lambda frames, like: np.uint64(frames.data_ptr()))
    kw = dict(delta_indices={"cam": [-1, 0], "state": [0]},
              image_transforms={"cam": rc.ImageTransform(crop=6, crop_mode="random",
                                                         out_dtype="float32")})
    dev = rc.TrajectoryDataset(st, **kw)
    st._host_keys = ()
    host = rc.TrajectoryDataset(st, **kw)
    dev._device_standin(torch.zeros(1))
    dev._sources["cam"] = torch.from_numpy(arrays["cam"])
    a = rc.DataLoader(dev, batch_size=4, shuffle=True, seed=1, reuse_outputs=R)
    b = rc.DataLoader(host, batch_size=4, shuffle=True, seed=1)
    held, ptrs = [], []
    for n_batch, (got, want) in enumerate(zip(a, b, strict=True)):
        held.append((got, _snapshot(got)))
        for old, snap in held[-R:]:  # the last R batches handed out are intact
            _assert_batch_equal(old, snap, f"batch {n_batch}")
        _assert_batch_equal(got, want, f"batch {n_batch}")
        ptrs.append(got["cam"].data_ptr())
    full = len(ptrs) - (1 if n % 4 else 0)
    assert len(set(ptrs[:full])) == min(2 * R, full)  # 2R outputs in turn ...
    assert all(ptrs[i] == ptrs[i + 2 * R] for i in range(full - 2 * R))
    if n % 4:
        assert ptrs[-1] not in ptrs[:full]  # ... and fresh frames for the partial batch


class _Orders(torch.utils.data.Sampler):
    """A sampler whose every iter() yields another random order (a RandomSampler's behaviour),
    the k-th one = order(k). It has no length (the loader streams it); _SizedOrders has one."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def order(self, k):
        return np.random.default_rng(100 + k).permutation(self.n)

    def __iter__(self):
        self.calls += 1
        return iter(self.order(self.calls - 1).tolist())


class _SizedOrders(_Orders):
    def __len__(self):
        return self.n


@pytest.mark.parametrize("reuse", [0, 2])
def test_two_live_iterators_keep_their_own_orders_on_the_device_path(monkeypatch, reuse):
    """An older iterator still in use after a newer one started (a peek at one batch, another
    epoch) keeps reading its own order: the builder is pointed back at its index array."""
    monkeypatch.setattr(OW, "SLAB_BYTES", 1 << 20)  # one launch fills many batches ahead
    dev, host = _datasets()
    for how in ("epoch", "sampler"):
        kw = dict(batch_size=3, reuse_outputs=reuse)
        if how == "epoch":
            a = rc.DataLoader(dev, shuffle=True, seed=3, **kw)
            orders = [a.epoch_order(0), a.epoch_order(5)]
        else:
            sampler = _SizedOrders(len(dev))
            a = rc.DataLoader(dev, sampler=sampler, **kw)
            orders = [sampler.order(0), sampler.order(1)]
        want = [[host.get_batch(o[i:i + 3]) for i in range(0, len(o), 3)] for o in orders]
        old = iter(a)
        got_old = [_snapshot(next(old)), _snapshot(next(old))]
        if how == "epoch":
            a.set_epoch(5)
        new = iter(a)
        got_new = [_snapshot(next(new))]  # the peek: another order
        for x, y in zip(old, new, strict=False):  # both in turn
            got_old.append(_snapshot(x))
            got_new.append(_snapshot(y))
        got_old += [_snapshot(x) for x in old]
        got_new += [_snapshot(x) for x in new]
        for name, got, w in (("old", got_old, want[0]), ("new", got_new, want[1])):
            assert len(got) == len(w), (how, name)
            for n, (g, x) in enumerate(zip(got, w, strict=True)):
                _assert_batch_equal(g, x, f"{how}: {name} iterator batch {n}")
    # one iterator alone binds once per epoch: no re-binding per batch
    a = rc.DataLoader(dev, batch_size=3, shuffle=True, seed=3, reuse_outputs=reuse)
    list(a)
    builder = a._builder[2]
    gen, launches = builder._gen, builder.launches
    assert len(list(a)) == len(a) == 15
    assert builder._gen == gen + 1
    assert builder.launches - launches < 15  # and fill-ahead still builds several per launch


@pytest.mark.parametrize("reuse", [0, 2])
def test_streamed_sampler_and_single_samples_on_the_device_path(monkeypatch, reuse):
    """A sampler without a length, read a few batches at a time (an index array per piece),
    and batch_size=None (samples cut from batches of CHUNK), equal to the NumPy backend."""
    from itertools import islice

    from robocache import loader as L

    monkeypatch.setattr(L, "STREAM_BATCHES", 4, raising=False)
    dev, host = _datasets()
    a = rc.DataLoader(dev, batch_size=3, sampler=_Orders(len(dev)),
                      reuse_outputs=reuse)
    b = rc.DataLoader(host, batch_size=3, sampler=_Orders(len(dev)))
    with pytest.raises(TypeError):
        len(a)
    for epoch in range(2):
        n = 0
        for got, want in zip(a, b, strict=True):
            _assert_batch_equal(_snapshot(got), want, f"epoch {epoch} batch {n}")
            n += 1
        assert n == -(-len(dev) // 3) and a.epoch == epoch + 1
    monkeypatch.setattr(L, "CHUNK", 5, raising=False)
    a = rc.DataLoader(dev, batch_size=None, shuffle=True, seed=2)
    b = rc.DataLoader(host, batch_size=None, shuffle=True, seed=2)
    held = list(a)  # samples are views of fresh batches: valid while held
    want = list(b)
    assert len(held) == len(want) == len(dev) == len(a)
    for n, (g, w) in enumerate(zip(held, want, strict=True)):
        _assert_batch_equal(g, w, f"sample {n}")
        assert g["state"].shape == (2, 3)
    got = list(islice(rc.DataLoader(dev, batch_size=None, sampler=[4, 1, 4]), 3))
    for i, g in zip([4, 1, 4], got, strict=True):
        _assert_batch_equal(g, host[i], f"dataset[{i}]")
