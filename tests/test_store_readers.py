"""Readers end to end: each format -> TrajectoryStore -> TrajectoryDataset windows, compared
element by element with the peer library's own sampling rule (tests/_peers.py), and the store's
own cache (save / load)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import _peers  # noqa: E402

import robocache as rc  # noqa: E402
from robocache._errors import DatasetFormatError  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "examples" / "data" / "arm2d_reach"


def _batch(ds):
    return {k: v.numpy() for k, v in ds.get_batch(np.arange(len(ds))).items()}


def test_zarr_windows_match_diffusion_policy(tmp_path):
    pytest.importorskip("zarr")
    from test_formats_zarr import make_data, write_replay_buffer

    lengths = [7, 1, 4, 12, 5]
    data = make_data(lengths, seed=3)
    path = tmp_path / "replay.zarr"
    write_replay_buffer(str(path), data, lengths)
    store = rc.TrajectoryStore.from_zarr(path, device="cpu", progress=False)
    S, pb, pa = 5, 1, 1  # SEMANTICS.md: deltas range(-pb, S-pb), drop_n_last = S-1-pa-pb
    keys = [k for k in store.keys if store[k].dtype != np.uint8]
    ds = rc.TrajectoryDataset(store, delta_indices={k: range(-pb, S - pb) for k in keys},
                              drop_n_last_frames=S - 1 - pa - pb, dtype="keep")
    ends = store.episode_ends
    indices = _peers.dp_create_indices(ends, S, pad_before=pb, pad_after=pa)
    assert len(ds) == len(indices) == sum(max(L - S + pb + pa + 1, 0) for L in lengths)
    got = _batch(ds)
    arrays = {k: np.asarray(store[k]) for k in keys}
    for i in range(len(ds)):
        want = _peers.dp_sample_sequence(arrays, indices, S, i)
        for k in keys:
            np.testing.assert_array_equal(got[k][i], want[k], err_msg=f"{k} window {i}")


def test_robomimic_windows_match_sequence_dataset(tmp_path):
    pytest.importorskip("h5py")
    from test_formats_robomimic import write_robomimic

    path = tmp_path / "demo.hdf5"
    write_robomimic(path)
    store = rc.TrajectoryStore.from_robomimic(path, obs_keys=["object", "robot0_eef_pos"],
                                              device="cpu", progress=False)
    fs, sl = 2, 3
    keys = ["obs/object", "obs/robot0_eef_pos", "actions"]
    ds = rc.TrajectoryDataset(store, delta_indices={k: range(1 - fs, sl) for k in keys},
                              keys=keys, dtype="keep")
    ref = _peers.RobomimicSequence(store.episode_ends, frame_stack=fs, seq_length=sl)
    assert len(ds) == len(ref)
    got = _batch(ds)
    arrays = {k: np.asarray(store[k]) for k in keys}
    for i in range(len(ds)):
        want = ref.item(arrays, i)
        for k in keys:
            np.testing.assert_array_equal(got[k][i], want[k])
            np.testing.assert_array_equal(~got[f"{k}_is_pad"][i], want["pad_mask"][:, 0])


def test_lerobot_demo_dataset_windows_match_lerobot():
    pytest.importorskip("pyarrow")
    store = rc.TrajectoryStore.from_lerobot(DEMO, keys=["observation.state", "action"],
                                            device="cpu", progress=False)
    assert store.fps and store.num_episodes > 10 and store.shipped_stats
    fps = store.fps
    dts = {"observation.state": [-1 / fps, 0.0], "action": [i / fps for i in range(8)]}
    ds = rc.TrajectoryDataset(store, delta_timestamps=dts, drop_n_last_frames=3,
                              normalize={"action": "min_max"})
    deltas = _peers.lerobot_get_delta_indices(dts, fps)
    anchors = _peers.lerobot_sampler_indices(store.episode_ends, drop_n_last_frames=3)
    assert len(ds) == len(anchors)
    got = _batch(ds)
    arrays = {k: np.asarray(store[k]) for k in store.keys}
    stats = {k: np.asarray(v) for k, v in store.shipped_stats["action"].items()}
    for i in (0, 1, len(ds) // 2, len(ds) - 1):
        want = _peers.lerobot_item(arrays, store.episode_ends, deltas, anchors[i])
        np.testing.assert_array_equal(got["observation.state"][i], want["observation.state"])
        norm = _peers.lerobot_normalize(want["action"], stats, "min_max").numpy()
        np.testing.assert_allclose(got["action"][i], norm, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(got["action_is_pad"][i], want["action_is_pad"])
        assert got["episode_index"][i] == want["episode_index"]


def test_lerobot_demo_camera_through_image_transform():
    pytest.importorskip("av")
    store = rc.TrajectoryStore.from_lerobot(DEMO, keys=["observation.images.top", "action"],
                                            device="cpu", progress=False)
    frames = np.asarray(store["observation.images.top"])
    assert frames.dtype == np.uint8 and frames.shape[0] == store.num_frames
    tf = rc.ImageTransform(crop=56, crop_mode="random", out_dtype="float32")
    ds = rc.TrajectoryDataset(store, delta_indices={"observation.images.top": [-1, 0],
                                                    "action": range(4)},
                              image_transforms={"observation.images.top": tf})
    batch = next(iter(rc.DataLoader(ds, batch_size=8, shuffle=True, seed=0)))
    img = batch["observation.images.top"]
    assert tuple(img.shape) == (8, 2, 3, 56, 56)
    assert 0.0 <= float(img.min()) <= float(img.max()) <= 1.0


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"state": rng.standard_normal((11, 3)).astype(np.float32),
              "cam": rng.integers(0, 256, (11, 4, 5, 3), dtype=np.uint8),
              "flag": rng.random(11) < 0.5}
    store = rc.TrajectoryStore.from_arrays(arrays, episode_ends=[1, 6, 11], fps=15.0,
                                           timestamps=np.arange(11) / 15.0, device="cpu",
                                           stats={"state": {"mean": [0, 1, 2], "std": [1, 1, 1]}})
    out = store.save(tmp_path / "cache")
    back = rc.TrajectoryStore.load(out, device="cpu", progress=False)
    assert back.keys == store.keys and back.fps == 15.0 and back.image_keys == ("cam",)
    np.testing.assert_array_equal(back.episode_ends, [1, 6, 11])
    for k in store.keys:
        np.testing.assert_array_equal(back[k], store[k])
    np.testing.assert_array_equal(back.shipped_stats["state"]["mean"], [0, 1, 2])
    with pytest.raises(FileExistsError):
        store.save(out)
    npy = next(out.glob("*.npy"))
    raw = bytearray(npy.read_bytes())
    raw[-1] ^= 0xFF  # flip one data byte: the checksum must catch it
    npy.write_bytes(bytes(raw))
    with pytest.raises(DatasetFormatError, match="checksum|sha256"):
        rc.TrajectoryStore.load(out, device="cpu", progress=False)


@pytest.mark.parametrize("reader", ["from_lerobot", "from_zarr", "from_robomimic", "load"])
def test_device_and_frames_on_host_are_checked_before_reading(tmp_path, reader):
    """A bad device or frames_on_host is said before a reader reads (or decodes) anything: the
    path here does not even exist."""
    make = getattr(rc.TrajectoryStore, reader)
    with pytest.raises(ValueError, match="device: expected 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        make(tmp_path / "nothing", device="gpu")
    with pytest.raises(TypeError, match="frames_on_host: expected a bool"):
        make(tmp_path / "nothing", frames_on_host="yes")
