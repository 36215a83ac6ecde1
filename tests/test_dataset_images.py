"""Camera keys through TrajectoryDataset / DataLoader with rc.ImageTransform."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import robocache as rc  # noqa: E402


def _store(rng, device="cpu"):
    ends = np.array([1, 6, 14, 15, 23])  # a length-1 episode and short ones
    N = int(ends[-1])
    frames = rng.integers(0, 256, size=(N, 12, 16, 3), dtype=np.uint8)
    state = rng.standard_normal((N, 4)).astype(np.float32)
    return rc.TrajectoryStore.from_arrays({"cam": frames, "state": state}, episode_ends=ends,
                                          fps=10.0, device=device), frames, ends


def _expected_rows(ends, anchors, deltas):
    starts = np.concatenate([[0], ends[:-1]])
    ep = np.searchsorted(ends, anchors, side="right")
    q = anchors[:, None] + np.asarray(deltas)[None, :]
    s, e = starts[ep][:, None], ends[ep][:, None]
    return np.clip(q, s, e - 1), (q < s) | (q >= e)


@pytest.mark.parametrize("pad", ["edge", "zero"])
def test_image_transform_equals_the_op_at_the_window_rows(pad, rng):
    store, frames, ends = _store(rng)
    tf = rc.ImageTransform(crop=(8, 10), crop_mode="random", resize=(6, 6),
                           mean=(0.5, 0.5, 0.5), std=(0.25, 0.3, 0.35))
    deltas = [-2, 0, 3]
    ds = rc.TrajectoryDataset(store, delta_indices={"cam": deltas, "state": [0]}, pad=pad,
                              image_transforms={"cam": tf})
    idx = np.arange(len(ds))
    batch = ds.get_batch(idx)
    rows, is_pad = _expected_rows(ends, idx, deltas)
    np.testing.assert_array_equal(batch["cam_is_pad"].numpy(), is_pad)
    want = rc.crop_resize_normalize(frames, rows, zero_mask=is_pad if pad == "zero" else None,
                                    seed=0, epoch=0, batch=0, stream="cam", **tf.options)
    assert tuple(batch["cam"].shape) == (len(ds), 3, 3, 6, 6)
    np.testing.assert_array_equal(batch["cam"].numpy(), want)
    other = rc.crop_resize_normalize(frames, rows, zero_mask=is_pad if pad == "zero" else None,
                                     seed=0, epoch=0, batch=0, **tf.options)  # no stream
    assert not np.array_equal(other, want)
    if pad == "zero":
        assert (batch["cam"].numpy()[is_pad] == 0).all() and is_pad.any()


def test_loader_random_crops_follow_seed_epoch_and_batch(rng):
    store, _, _ = _store(rng)
    tf = rc.ImageTransform(crop=6, crop_mode="random", out_dtype="bfloat16")
    ds = rc.TrajectoryDataset(store, delta_indices={"cam": [-1, 0]},
                              image_transforms={"cam": tf})

    def epoch_batches(seed, epoch):
        loader = rc.DataLoader(ds, batch_size=5, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return [b["cam"].float().numpy() for b in loader]

    a, b = epoch_batches(3, 0), epoch_batches(3, 0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = epoch_batches(3, 1)
    assert any(x.shape != y.shape or not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert a[0].dtype == np.float32 and a[0].shape[1:] == (2, 3, 6, 6)


def _two_camera_dataset(rng):
    ends = np.array([7, 20, 33])
    frames = rng.integers(0, 256, size=(33, 20, 20, 3), dtype=np.uint8)
    st = rc.TrajectoryStore.from_arrays({"top": frames, "wrist": frames.copy()},
                                        episode_ends=ends, device="cpu")
    tf = rc.ImageTransform(crop=8, crop_mode="random", brightness=0.5, out_dtype="float32")
    ds = rc.TrajectoryDataset(st, delta_indices={"top": [0], "wrist": [0]},
                              image_transforms={"top": tf, "wrist": tf})
    return ds, frames, tf


def _crops_of(frames, got, tf, **draw):
    """The op's crops of a batch's anchor frames (one offset, 0) under the draw given."""
    rows = got["index"].numpy()[:, None]
    return rc.crop_resize_normalize(frames, rows, **draw, **tf.options)


def test_each_camera_draws_its_own_crops(rng):
    """LeRobot applies its transform per camera key, robomimic / diffusion_policy have one crop
    randomizer per key: two cameras' crops and factors are independent draws. They were the
    same draw (keyed by seed, epoch, batch only), for every sample."""
    ds, frames, tf = _two_camera_dataset(rng)
    batch = ds.get_batch(np.arange(len(ds)))
    top, wrist = batch["top"].numpy(), batch["wrist"].numpy()  # same frames, both cameras
    assert sum(np.array_equal(a, b) for a, b in zip(top, wrist, strict=True)) <= 2
    for key in ("top", "wrist"):
        np.testing.assert_array_equal(batch[key].numpy(), _crops_of(
            frames, batch, tf, seed=0, epoch=0, batch=0, stream=key))


def test_ranks_draw_different_crops_and_each_reproduces_its_batch_number(rng):
    """rank / world_size share one order (the seed must be the same on every rank), so the
    draws count batches across ranks: rank r's batch i is number i * world_size + r; with a
    DistributedSampler, its rank / num_replicas. They were the same crops on every rank."""
    from torch.utils.data.distributed import DistributedSampler
    ds, frames, tf = _two_camera_dataset(rng)
    for r in (0, 1):
        for kw in (dict(rank=r, world_size=2, shuffle=True),
                   dict(sampler=DistributedSampler(ds, num_replicas=2, rank=r, seed=5))):
            batches = list(rc.DataLoader(ds, batch_size=4, seed=5, **kw))
            assert len(batches) == 5  # 17 of the 33 anchors per rank
            for i, b in enumerate(batches):
                np.testing.assert_array_equal(b["top"].numpy(), _crops_of(
                    frames, b, tf, seed=5, epoch=0, batch=i * 2 + r, stream="top"))
    one = list(rc.DataLoader(ds, batch_size=4, shuffle=True, seed=5))  # world_size 1
    np.testing.assert_array_equal(one[1]["top"].numpy(), _crops_of(
        frames, one[1], tf, seed=5, epoch=0, batch=1, stream="top"))


def test_grey_camera_frames_take_image_transforms_and_have_one_statistic(rng):
    """A camera key without a channel axis ([N, H, W], as the store accepts) is one grey
    channel: its transform equals the op on [N, H, W, 1], its statistics are one value."""
    grey = rng.integers(0, 256, (40, 12, 16), dtype=np.uint8)
    st = rc.TrajectoryStore.from_arrays({"g": grey}, [10, 25, 40], device="cpu")
    assert st.image_keys == ("g",)
    mean = st.stats()["g"]["mean"]
    assert mean.shape == () and mean == grey.astype(np.float64).mean()
    ds = rc.TrajectoryDataset(st, delta_indices={"g": [-1, 0]},
                              image_transforms={"g": rc.ImageTransform(crop=8, resize=6)})
    got = ds.get_batch([0, 5])["g"]
    want = rc.crop_resize_normalize(grey[..., None], np.array([[0, 0], [4, 5]]), crop=8,
                                    resize=6)
    assert got.shape == (2, 2, 1, 6, 6)
    np.testing.assert_array_equal(got.numpy(), want)


def test_shipped_stats_are_the_stores_own():
    m = np.zeros(2)
    st = rc.TrajectoryStore.from_arrays({"s": np.arange(8.0).reshape(4, 2)}, [4], device="cpu",
                                        stats={"s": {"mean": m, "std": np.ones(2)}})
    m[:] = 100  # the caller's array changes later: the store kept a copy
    st.shipped_stats["s"]["mean"][:] = 7  # and hands out copies
    assert st.shipped_stats["s"]["mean"].tolist() == [0.0, 0.0]
    ds = rc.TrajectoryDataset(st, normalize={"s": "mean_std"})
    np.testing.assert_allclose(ds[1]["s"].numpy(), [2.0, 3.0], rtol=1e-6)


def test_anchor_only_camera_key_and_unknown_options(rng):
    store, frames, _ = _store(rng)
    ds = rc.TrajectoryDataset(store, delta_indices={"state": [0]}, keys=["cam", "state"],
                              image_transforms={"cam": rc.ImageTransform(resize=(4, 8))})
    batch = ds.get_batch([0, 7])
    assert tuple(batch["cam"].shape) == (2, 3, 4, 8)
    want = rc.crop_resize_normalize(frames, np.array([0, 7]), resize=(4, 8))
    np.testing.assert_array_equal(batch["cam"].numpy(), want)
    with pytest.raises(TypeError, match="ImageTransform"):
        rc.ImageTransform(rotate=3)
    with pytest.raises(ValueError, match="crop"):
        rc.TrajectoryDataset(store, delta_indices={"cam": [0]},
                             image_transforms={"cam": rc.ImageTransform(crop=(40, 40))})
    # one transform, or a list, instead of {camera key: transform}: named, with an example
    for bad in (rc.ImageTransform(crop=2), [rc.ImageTransform()]):
        with pytest.raises(TypeError, match=r"image_transforms: expected a dict of camera key "
                                            r"-> transform \(e.g. \{'cam': "):
            rc.TrajectoryDataset(store, image_transforms=bad)
    # a one-argument transform (torchvision style) is named, with what was expected
    # a one-argument transform (torchvision style) is refused up front, with what was expected
    for bad in (torch.nn.Identity(), lambda frames: frames, "crop"):
        with pytest.raises(TypeError, match=r"image_transforms\['cam'\]: expected an "
                                            r"rc.ImageTransform or a callable fn\(frames"):
            rc.TrajectoryDataset(store, image_transforms={"cam": bad})


def test_a_custom_callable_gets_a_mask_and_its_own_errors(rng):
    """A custom image callable gets is_pad as a bool mask of the rows' shape (all False for a
    key without offsets), and a TypeError of its own code reaches the caller unreworded."""
    store, frames, _ = _store(rng)
    seen = []

    def keep(frames_, rows, is_pad):
        seen.append((tuple(rows.shape), is_pad.dtype, tuple(is_pad.shape), bool(is_pad.any())))
        return torch.as_tensor(frames_)[rows[~is_pad]]

    ds = rc.TrajectoryDataset(store, keys=["cam"], image_transforms={"cam": keep})
    got = ds.get_batch([0, 3])
    assert seen == [((2,), torch.bool, (2,), False)]
    np.testing.assert_array_equal(got["cam"].numpy(), frames[[0, 3]])
    ds = rc.TrajectoryDataset(store, keys=["cam"], delta_indices={"cam": [-1, 0]},
                              image_transforms={"cam": keep})
    ds.get_batch([0, 3])
    assert seen[-1] == ((2, 2), torch.bool, (2, 2), True)  # frame 0 has no frame before it

    def to_float(x):
        return x.float()

    def own_errors(frames_, rows, is_pad):
        if int(rows[0]) == 0:
            return frames_ + "x"
        return to_float(frames_, rows)  # a call of its own with the wrong arguments

    ds = rc.TrajectoryDataset(store, keys=["cam"], image_transforms={"cam": own_errors})
    for i in (0, 1):
        with pytest.raises(TypeError) as info:
            ds[i]
        assert "image_transforms" not in str(info.value)


@pytest.mark.gpu
def test_cuda_store_images_equal_cpu_store(rng):
    cpu, _, _ = _store(np.random.default_rng(5))
    gpu, _, _ = _store(np.random.default_rng(5), device="cuda")
    tf = rc.ImageTransform(crop=(8, 8), crop_mode="random", shift=2, resize=(10, 10),
                           brightness=0.2, contrast=0.1)
    kw = dict(delta_indices={"cam": [-1, 0, 1]}, pad="zero", image_transforms={"cam": tf})
    a = rc.DataLoader(rc.TrajectoryDataset(cpu, **kw), batch_size=4, shuffle=True, seed=1)
    b = rc.DataLoader(rc.TrajectoryDataset(gpu, **kw), batch_size=4, shuffle=True, seed=1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x["cam"].numpy(), y["cam"].cpu().numpy(), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("transform", [None, rc.ImageTransform(crop=8, resize=(6, 6))])
def test_cuda_store_with_frames_on_host_equals_cpu_store(transform):
    cpu, _, _ = _store(np.random.default_rng(6))
    rng = np.random.default_rng(6)
    ends = np.array([1, 6, 14, 15, 23])
    frames = rng.integers(0, 256, size=(23, 12, 16, 3), dtype=np.uint8)
    state = rng.standard_normal((23, 4)).astype(np.float32)
    gpu = rc.TrajectoryStore.from_arrays({"cam": frames, "state": state}, episode_ends=ends,
                                         fps=10.0, device="cuda", frames_on_host=True)
    assert gpu.host_keys == ("cam",) and not gpu["cam"].is_cuda and gpu["cam"].is_pinned()
    kw = dict(delta_indices={"cam": [-1, 0, 1]}, pad="zero")
    if transform is not None:
        kw["image_transforms"] = {"cam": transform}
    a = rc.DataLoader(rc.TrajectoryDataset(cpu, **kw), batch_size=4, shuffle=True, seed=1)
    b = rc.DataLoader(rc.TrajectoryDataset(gpu, **kw), batch_size=4, shuffle=True, seed=1)
    for x, y in zip(a, b, strict=True):
        assert y["cam"].is_cuda
        np.testing.assert_allclose(x["cam"].numpy(), y["cam"].cpu().numpy(), atol=1e-5)


def test_torch_dataloader_workers_draw_different_crops_per_worker_and_epoch():
    # the top-left pixel of each crop encodes its offset
    N = 32
    frames = np.broadcast_to(np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1),
                             (N, 16, 16, 1)).copy()
    st = rc.TrajectoryStore.from_arrays({"cam": frames}, [N], image_keys=["cam"],
                                        device="cpu")  # forked workers cannot use CUDA
    ds = rc.TrajectoryDataset(st, image_transforms={"cam": rc.ImageTransform(
        crop=8, crop_mode="random", out_dtype="uint8")})
    torch.manual_seed(0)
    dl = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2)
    e1, e2 = ([b["cam"][:, 0, 0, 0].tolist() for b in dl] for _ in range(2))
    assert e1[0] != e1[1]  # batch 0 and batch 1 come from different workers
    assert e1 != e2        # non-persistent workers are forked afresh each epoch


def test_dtypes_given_as_torch_or_numpy_types_and_early_transform_errors(rng):
    store, frames, _ = _store(rng)
    tf = rc.ImageTransform(crop=6, out_dtype=torch.bfloat16)
    assert tf.options["out_dtype"] == "bfloat16"
    ds = rc.TrajectoryDataset(store, delta_indices={"cam": [0], "state": [0]},
                              dtype={"state": np.float16}, image_transforms={"cam": tf})
    batch = ds.get_batch([0, 3])
    assert batch["cam"].dtype == torch.bfloat16 and batch["state"].dtype == torch.float16
    ds2 = rc.TrajectoryDataset(store, delta_indices={"state": [0]}, keys=["state"],
                               dtype=torch.float64)
    assert ds2[0]["state"].dtype == torch.float64
    out = rc.crop_resize_normalize(frames, np.array([[0]]), out_dtype=np.float16)
    assert out.dtype == np.float16
    with pytest.raises(ValueError, match="crop_mode"):
        rc.ImageTransform(crop_mode="rand")  # caught when made, not at the first batch
    with pytest.raises(ValueError, match=r"image_transforms\['cam'\]: crop"):
        rc.TrajectoryDataset(store, delta_indices={"cam": [0]},
                             image_transforms={"cam": rc.ImageTransform(crop=(99, 99))})
    with pytest.raises(ValueError, match="1-D"):
        ds.get_batch([[0, 1], [2, 3]])
