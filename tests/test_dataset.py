"""TrajectoryDataset on the NumPy backend: the DESIGN.md window rule, and LeRobot / diffusion_policy /
robomimic batches compared element by element with literal reference samplers (tests/_peers.py)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from _peers import (
    RobomimicSequence,
    dp_create_indices,
    dp_fit,
    dp_normalize,
    dp_sample_sequence,
    lerobot_check_delta_timestamps,
    lerobot_get_delta_indices,
    lerobot_item,
    lerobot_normalize,
    lerobot_sampler_indices,
    rm_action_stats,
    rm_normalization_stats,
    rm_normalize,
    rm_normalize_obs,
    rm_obs_normalization_stats,
    torchrl_padded_slice,
    torchrl_slice_support,
)

import robocache as rc


def _store(rng, lens, feats=None, **kw):
    ends = np.cumsum(lens).astype(np.int64)
    N = int(ends[-1])
    feats = feats or {"state": (N, 3), "action": (N, 2)}
    arrays = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in feats.items()}
    arrays["step"] = np.arange(N, dtype=np.int64) * 10 + 7  # exact integers, copied unchanged
    return rc.TrajectoryStore.from_arrays(arrays, episode_ends=ends, device="cpu", **kw), arrays


def design_rule(arrays, ends, deltas, drop_first, drop_last, pad):
    """DESIGN.md "Window semantics", one sample at a time."""
    samples, s = [], 0
    for ep, e in enumerate(ends):
        for a in range(s + drop_first, e - drop_last):
            item = {"index": a, "episode_index": ep, "frame_index": a - s}
            for key, arr in arrays.items():
                if key not in deltas:
                    item[key] = arr[a]
                    continue
                vals, pads = [], []
                for d in deltas[key]:
                    q = a + d
                    p = q < s or q >= e
                    pads.append(p)
                    vals.append(np.zeros_like(arr[0]) if (pad == "zero" and p)
                                else arr[min(max(q, s), e - 1)])
                item[key] = np.stack(vals)
                item[f"{key}_is_pad"] = np.array(pads)
            samples.append(item)
        s = e
    return samples


def _assert_sample(batch, i, ref, keys):
    for k in keys:
        got = batch[k][i].numpy()
        want = np.asarray(ref[k])
        assert got.shape == want.shape, (k, got.shape, want.shape)
        np.testing.assert_array_equal(got, want.astype(got.dtype), err_msg=f"{k} sample {i}")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("pad", ["edge", "zero"])
def test_design_rule_on_random_episodes(seed, pad):
    rng = np.random.default_rng(seed)
    # length-1 episodes and windows longer than any episode included
    lens = np.concatenate([[1, 1], rng.integers(1, 9, size=8), [1]])
    rng.shuffle(lens)
    st, arrays = _store(rng, lens)
    deltas = {"state": sorted(rng.choice(np.arange(-12, 13), size=4, replace=False).tolist()),
              "action": list(range(-1, 15))}  # 16 > every episode length
    first, last = int(rng.integers(0, 2)), int(rng.integers(0, 2))
    ds = rc.TrajectoryDataset(st, delta_indices=deltas, pad=pad, drop_n_first_frames=first,
                              drop_n_last_frames=last)
    ref = design_rule(arrays, st.episode_ends, deltas, first, last, pad)
    assert len(ds) == len(ref)
    batch = ds.get_batch(list(range(len(ds))))
    keys = ["state", "action", "step", "state_is_pad", "action_is_pad", "index",
            "episode_index", "frame_index"]
    for i in range(len(ds)):
        _assert_sample(batch, i, ref[i], keys)
    assert batch["action"].shape == (len(ds), 16, 2) and batch["step"].shape == (len(ds),)
    assert batch["step"].dtype == torch.int64 and batch["action"].dtype == torch.float32
    assert batch["action_is_pad"].dtype == torch.bool
    # random subsets, repeated and in any order, give the same rows
    idx = rng.integers(0, len(ds), size=37)
    sub = ds.get_batch(idx)
    for j, i in enumerate(idx):
        _assert_sample(sub, j, ref[i], keys)


def test_lerobot_example_first_frame_is_pad():
    rng = np.random.default_rng(0)
    st, _ = _store(rng, [6, 4, 7])
    ds = rc.TrajectoryDataset(st, delta_indices={"action": [-2, -1, 0, 1, 2]})
    for first in (0, 6, 10):  # the first frame of every episode
        item = ds[first]
        assert item["action_is_pad"].tolist() == [True, True, False, False, False]
        assert item["frame_index"].item() == 0
    # the last frame pads the other way
    assert ds[5]["action_is_pad"].tolist() == [False, False, False, True, True]


@pytest.mark.parametrize("drop", [(0, 0), (2, 3), (0, 7)])
def test_lerobot_item_and_sampler_equality(drop):
    rng = np.random.default_rng(1)
    lens = [12, 1, 9, 20, 3]
    st, arrays = _store(rng, lens)
    fps = 30
    delta_ts = {"state": [-1 / fps, 0.0], "action": [t / fps for t in range(16)]}
    assert lerobot_check_delta_timestamps(delta_ts, fps, 1e-4)
    ref_deltas = lerobot_get_delta_indices(delta_ts, fps)
    st = rc.TrajectoryStore.from_arrays(arrays, episode_ends=st.episode_ends, fps=fps,
                                        device="cpu")
    ds = rc.TrajectoryDataset(st, delta_timestamps=delta_ts, drop_n_first_frames=drop[0],
                              drop_n_last_frames=drop[1])
    assert ds.delta_indices == ref_deltas
    frames = lerobot_sampler_indices(st.episode_ends, *drop)
    assert len(ds) == len(frames)
    batch = ds.get_batch(np.arange(len(ds)))
    keys = ["state", "action", "step", "state_is_pad", "action_is_pad", "index",
            "episode_index", "frame_index"]
    for i, frame in enumerate(frames):
        _assert_sample(batch, i, lerobot_item(arrays, st.episode_ends, ref_deltas, frame), keys)


def test_delta_timestamps_tolerance_and_rounding():
    rng = np.random.default_rng(2)
    _, arrays = _store(rng, [10, 10])
    st = rc.TrajectoryStore.from_arrays(arrays, episode_ends=[10, 20], fps=10, device="cpu")
    # within tolerance: rounded like LeRobot
    ds = rc.TrajectoryDataset(st, delta_timestamps={"action": [0.1 + 5e-5, -0.2 - 9e-5, 0.0]})
    assert ds.delta_indices == {"action": [1, -2, 0]}
    # outside: ValueError naming the key and the value
    with pytest.raises(ValueError, match=r"(?s)tolerance.*'action': \[0\.15\]") as info:
        rc.TrajectoryDataset(st, delta_timestamps={"action": [0.0, 0.15], "state": [0.0]})
    assert "state" not in str(info.value).split("+/- tolerance.")[-1]
    assert not lerobot_check_delta_timestamps({"action": [0.0, 0.15]}, 10, 1e-4)
    # a looser tolerance accepts it
    ds = rc.TrajectoryDataset(st, delta_timestamps={"action": [0.15]}, tolerance_s=0.06)
    assert ds.delta_indices == {"action": [lerobot_get_delta_indices({"a": [0.15]}, 10)["a"][0]]}
    # no fps
    st2 = rc.TrajectoryStore.from_arrays(arrays, episode_ends=[10, 20], device="cpu")
    with pytest.raises(ValueError, match="delta_timestamps: .*fps"):
        rc.TrajectoryDataset(st2, delta_timestamps={"action": [0.0]})


def test_timestamps_off_the_fps_grid_warn_and_serve_frame_offsets_with_delta_timestamps():
    """LeRobot 0.4 serves such a dataset (seconds -> frame offsets, timestamps unchecked); 0.3
    refused it. RoboCache serves it like 0.4 and warns with the offending frames."""
    rng = np.random.default_rng(3)
    _, arrays = _store(rng, [5, 5])
    ts = np.concatenate([np.arange(5) / 10, np.arange(5) / 10])
    ts[7] += 0.01  # one frame 10 ms off the 10 fps grid
    st = rc.TrajectoryStore.from_arrays(arrays, episode_ends=[5, 10], fps=10, timestamps=ts,
                                        device="cpu")
    with pytest.warns(UserWarning, match=r"(?s)timestamps: .*'episode_index': 1.*frame offsets"):
        ds = rc.TrajectoryDataset(st, delta_timestamps={"action": [0.0, 0.1]})
    ref = rc.TrajectoryDataset(st, delta_indices={"action": [0, 1]})
    got, want = ds.get_batch(range(len(ds))), ref.get_batch(range(len(ref)))
    for k in ("action", "action_is_pad", "index"):
        np.testing.assert_array_equal(got[k].numpy(), want[k].numpy())
    with warnings.catch_warnings():  # on the grid: no warning
        warnings.simplefilter("error")
        st_ok = rc.TrajectoryStore.from_arrays(arrays, episode_ends=[5, 10], fps=10,
                                               timestamps=np.concatenate([np.arange(5) / 10] * 2),
                                               device="cpu")
        rc.TrajectoryDataset(st_ok, delta_timestamps={"action": [0.0, 0.1]})


def test_timestamp_key_and_anchor_only_keys():
    rng = np.random.default_rng(4)
    _, arrays = _store(rng, [4, 6])
    ts = np.concatenate([np.arange(4) / 10, np.arange(6) / 10])
    st = rc.TrajectoryStore.from_arrays(arrays, episode_ends=[4, 10], fps=10, timestamps=ts,
                                        device="cpu")
    ds = rc.TrajectoryDataset(st, delta_indices={"action": [0, 1]})
    item = ds[6]
    assert item["timestamp"].dtype == torch.float32 and item["timestamp"].item() == np.float32(0.2)
    assert item["state"].shape == (3,) and "state_is_pad" not in item
    np.testing.assert_array_equal(item["state"].numpy(), arrays["state"][6])
    ds = rc.TrajectoryDataset(st, delta_indices={"timestamp": [-1, 0]}, keys=["state"])
    assert set(ds.keys) == {"state", "timestamp"}
    np.testing.assert_array_equal(ds[4]["timestamp"].numpy(), np.float32([0.0, 0.0]))
    assert ds[4]["timestamp_is_pad"].tolist() == [True, False]


@pytest.mark.parametrize("S, pb, pa", [(16, 1, 7), (4, 0, 0), (5, 2, 2), (8, 3, 4), (3, 2, 0),
                                       # pb + pa > S - 1: windows anchored past episode ends
                                       (2, 1, 1), (8, 1, 7), (3, 2, 2), (16, 20, 20), (2, 3, 5)])
def test_diffusion_policy_windows(S, pb, pa):
    rng = np.random.default_rng(S * 100 + pb * 10 + pa)
    lens = [1, 2, S - 1, S, S + 3, 25, 4]
    st, arrays = _store(rng, lens)
    ends = st.episode_ends
    indices = dp_create_indices(ends, S, pad_before=pb, pad_after=pa)
    pb, pa = min(max(pb, 0), S - 1), min(max(pa, 0), S - 1)  # SequenceSampler clips them
    # the window count per episode: L - S + pb + pa + 1 (none when that is <= 0)
    assert len(indices) == sum(max(L - S + pb + pa + 1, 0) for L in lens)
    keys = ["state", "action", "step"]
    ds = rc.TrajectoryDataset(st, delta_indices={k: range(-pb, S - pb) for k in keys},
                              drop_n_first_frames=0, drop_n_last_frames=S - 1 - pa - pb,
                              pad="edge")
    assert len(ds) == len(indices)
    batch = ds.get_batch(range(len(ds)))
    for i in range(len(ds)):
        ref = dp_sample_sequence({k: arrays[k] for k in keys}, indices, S, i)
        _assert_sample(batch, i, ref, keys)


@pytest.mark.parametrize("S,pb,pa", [(16, 1, 7), (4, 0, 0), (5, 2, 2)])
def test_diffusion_policy_episode_mask_is_episodes(S, pb, pa):
    """diffusion_policy's train / validation split: SequenceSampler(episode_mask=m) == episodes=m."""
    rng = np.random.default_rng(S + pb + pa)
    lens = [1, 3, S, S + 2, 20, 2, 9, 30]
    st, arrays = _store(rng, lens)
    mask = rng.random(len(lens)) < 0.5
    mask[[0, 4]] = True, False  # a length-1 episode in, a long one out
    keys = ["state", "action", "step"]
    for m in (mask, ~mask):
        indices = dp_create_indices(st.episode_ends, S, pad_before=pb, pad_after=pa,
                                    episode_mask=m)
        for episodes in (m, np.flatnonzero(m)[::-1].tolist()):  # a mask, or indices in any order
            ds = rc.TrajectoryDataset(st, delta_indices={k: range(-pb, S - pb) for k in keys},
                                      drop_n_last_frames=S - 1 - pa - pb, episodes=episodes)
            assert len(ds) == len(indices)
            assert set(ds.anchors[:, 3].tolist()) <= set(np.flatnonzero(m).tolist())
            batch = ds.get_batch(range(len(ds)))
            for i in range(len(ds)):
                ref = dp_sample_sequence({k: arrays[k] for k in keys}, indices, S, i)
                _assert_sample(batch, i, ref, keys)


@pytest.mark.parametrize("seed", range(3))
def test_episodes_subset_follows_the_design_rule(seed):
    rng = np.random.default_rng(100 + seed)
    lens = rng.integers(1, 12, size=9)
    st, arrays = _store(rng, lens)
    chosen = sorted(rng.choice(9, size=4, replace=False).tolist())
    deltas = {"state": [-3, 0, 2], "action": list(range(-1, 6))}
    first, last = int(rng.integers(0, 2)), int(rng.integers(0, 3))
    ds = rc.TrajectoryDataset(st, delta_indices=deltas, drop_n_first_frames=first,
                              drop_n_last_frames=last, episodes=chosen, pad="zero")
    ref = [r for r in design_rule(arrays, st.episode_ends, deltas, first, last, "zero")
           if r["episode_index"] in chosen]  # windows still pad at their own episode's edges
    assert len(ds) == len(ref)
    keys = ["state", "action", "step", "state_is_pad", "action_is_pad", "index",
            "episode_index", "frame_index"]
    batch = ds.get_batch(list(range(len(ds))))
    for i in range(len(ds)):
        _assert_sample(batch, i, ref[i], keys)
    first_idx, count = ds.episode_anchor_ranges()
    assert count[[e for e in range(9) if e not in chosen]].sum() == 0
    # episode-uniform sampling draws only the selected episodes
    loader = rc.DataLoader(ds, batch_size=16, sampling="episode", seed=seed)
    drawn = np.concatenate([b["episode_index"].numpy() for b in loader])
    assert set(drawn.tolist()) == {e for e in chosen if count[e] > 0}
    # normalization statistics stay the whole store's
    full = rc.TrajectoryDataset(st, normalize={"state": "mean_std"})
    part = rc.TrajectoryDataset(st, normalize={"state": "mean_std"}, episodes=chosen)
    np.testing.assert_array_equal(part.normalization["state"]["a"],
                                  full.normalization["state"]["a"])


def test_bad_episodes_argument():
    st, _ = _store(np.random.default_rng(0), [3, 2, 5])
    cases = [([3], ValueError, r"episodes: expected episode indices in \[0, 3\), got 3"),
             ([-1], ValueError, r"in \[0, 3\), got -1"),
             ([0, 2, 0], ValueError, "at most once, got 0 repeated"),
             ([], ValueError, "at least one episode index"),
             ([False, False, False], ValueError, "all False"),
             ([True, False], ValueError, "bool mask of length 3"),
             ([0.0, 1.0], TypeError, "integer episode indices"),
             ("01", TypeError, "got str"),
             (5, TypeError, "got int"),
             ([[0, 1]], ValueError, "1-D")]
    for bad, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            rc.TrajectoryDataset(st, episodes=bad)
    with pytest.raises(ValueError, match="among the 1 selected by episodes=.*no anchors"):
        rc.TrajectoryDataset(st, episodes=[1], drop_n_last_frames=2)
    # numpy and torch integer arrays are accepted
    assert len(rc.TrajectoryDataset(st, episodes=np.array([2]))) == 5
    assert len(rc.TrajectoryDataset(st, episodes=torch.tensor([0, 2]))) == 8


def test_diffusion_policy_lerobot_config_is_the_same_window_set():
    """SEMANTICS.md: obs [1-n_obs, 0], action [1-n_obs, 1-n_obs+S), drop_last = S - n_act - n_obs + 1."""
    rng = np.random.default_rng(5)
    S, n_obs, n_act = 16, 2, 8
    lens = [30, 17, 9, 40]
    st, arrays = _store(rng, lens)
    ds = rc.TrajectoryDataset(
        st, delta_indices={"state": range(1 - n_obs, 1), "action": range(1 - n_obs, 1 - n_obs + S)},
        drop_n_last_frames=S - n_act - n_obs + 1)
    pb, pa = n_obs - 1, n_act - 1
    indices = dp_create_indices(st.episode_ends, S, pad_before=pb, pad_after=pa)
    assert len(ds) == len(indices)
    batch = ds.get_batch(range(len(ds)))
    for i in range(len(ds)):
        ref = dp_sample_sequence({"state": arrays["state"], "action": arrays["action"]},
                                 indices, S, i)
        np.testing.assert_array_equal(batch["action"][i].numpy(), ref["action"])
        np.testing.assert_array_equal(batch["state"][i].numpy(), ref["state"][:n_obs])


def _peer_norm_store(rng, lens):
    """Keys with what trips normalizers: a constant column, one whose range is below 1e-4, a
    multi-axis feature (diffusion_policy pools all but the last axis), float64 frames."""
    N = int(sum(lens))
    act = (rng.standard_normal((N, 5)) * [1, 0, 1, 1, 30] + [0, 7.5, 0, 3, 100]).astype(np.float32)
    act[:, 2] = np.float32(1.0) + rng.random(N).astype(np.float32) * np.float32(5e-5)
    act[:, 3] = np.float32(-2.0) + rng.standard_normal(N).astype(np.float32) * np.float32(1e-7)
    arrays = {"action": act,
              "keypoint": (rng.standard_normal((N, 3, 2)) * [[1, 5], [2, 1], [0.5, 3]]
                           ).astype(np.float32),
              "state64": rng.standard_normal((N, 2)) * 4 + 1}
    return rc.TrajectoryStore.from_arrays(arrays, episode_ends=np.cumsum(lens),
                                          device="cpu"), arrays


@pytest.mark.parametrize("mode", ["limits", "gaussian"])
def test_diffusion_policy_linear_normalizer(mode):
    """normalize={key: "limits" | "gaussian"} == LinearNormalizer.fit(whole store) applied to the
    window (diffusion_policy/model/common/normalizer.py, literally in tests/_peers.py)."""
    rng = np.random.default_rng(11)
    lens = [7, 1, 30, 12]
    st, arrays = _peer_norm_store(rng, lens)
    S, pb, pa = 16, 1, 7
    keys = list(arrays)
    ds = rc.TrajectoryDataset(st, delta_indices={k: range(-pb, S - pb) for k in keys},
                              drop_n_last_frames=S - 1 - pa - pb,
                              normalize={k: mode for k in keys})
    params = {k: dp_fit(v, mode=mode) for k, v in arrays.items()}
    indices = dp_create_indices(st.episode_ends, S, pad_before=pb, pad_after=pa)
    batch = ds.get_batch(range(len(ds)))
    for i in range(len(ds)):
        raw = dp_sample_sequence(arrays, indices, S, i)
        for k in keys:
            want = dp_normalize(raw[k], params[k])
            got = batch[k][i].numpy()
            assert got.dtype == np.float32
            # the same torch reductions in this process: the same bits, gaussian included
            np.testing.assert_array_equal(got, want, err_msg=k)
    # the constant column is shifted to 0, the near-constant one not stretched
    a = batch["action"].numpy()
    assert np.all(a[..., 1] == 0)
    assert np.abs(a[..., 2]).max() < 1e-3 and np.abs(a[..., 3]).max() < 1e-3
    norm = ds.normalization["keypoint"]
    assert norm["formula"] == "x * a + b" and norm["a"].shape == (6,)
    np.testing.assert_array_equal(norm["a"][:2], norm["a"][2:4])  # one scale per last-axis index


@pytest.mark.parametrize("mode", ["min_max", "gaussian"])
def test_robomimic_action_normalization(mode):
    """normalize={key: "robomimic_min_max" | "robomimic_gaussian"} == robomimic's action
    normalization (per-demo statistics aggregated, float32 scale / offset, (x - offset) / scale)."""
    rng = np.random.default_rng(12)
    lens = [13, 1, 5, 30, 2]
    st, arrays = _peer_norm_store(rng, lens)
    fs, sl = 1, 10
    keys = ["action", "state64"]
    ds = rc.TrajectoryDataset(st, delta_indices={k: range(-(fs - 1), sl) for k in keys},
                              normalize={k: f"robomimic_{mode}" for k in keys})
    ref = RobomimicSequence(st.episode_ends, frame_stack=fs, seq_length=sl,
                            pad_frame_stack=True, pad_seq_length=True)
    # float32 statistics demo by demo, as robomimic computes them: on the near-constant column
    # they differ from exact ones, and the dataset's parameters must be robomimic's bits
    norm = {k: rm_normalization_stats(rm_action_stats(arrays[k], st.episode_ends), mode)
            for k in keys}
    batch = ds.get_batch(range(len(ds)))
    for i in range(len(ds)):
        raw = ref.item({k: arrays[k] for k in keys}, i)
        for k in keys:
            x = raw[k].astype(np.float32)  # robomimic's cached actions are float32
            want = rm_normalize(x, norm[k])
            assert want.dtype == np.float32
            np.testing.assert_array_equal(batch[k][i].numpy(), want, err_msg=k)
    a = batch["action"].numpy()
    assert np.all(a[..., 1] == 0)  # constant column: x - min
    if mode == "min_max":
        assert np.abs(a).max() <= np.float32(0.999999) + 1e-6


@pytest.mark.parametrize("dtype", [None, "keep", "float16"])
def test_robomimic_observation_normalization(dtype):
    """normalize={key: "robomimic_obs"} == robomimic's hdf5_normalize_obs: float32 statistics
    demo by demo, (x - mean) / (std + 1e-3) on the observations as stored - a float64 or int32
    key in float64 arithmetic (NumPy's promotion), the result rounded once to the output."""
    rng = np.random.default_rng(14)
    lens = [9, 1, 4, 25, 3]
    N = int(sum(lens))
    far = rng.standard_normal((N, 3)) * [1, 1e-3, 50] + [0, 1234.5, -7]  # float64, cancellation
    arrays = {"far": far, "f32": (rng.standard_normal((N, 2)) * 3).astype(np.float32),
              "count": rng.integers(-50_000, 50_000, (N, 2)).astype(np.int32)}
    st = rc.TrajectoryStore.from_arrays(arrays, episode_ends=np.cumsum(lens), device="cpu")
    fs, sl = 2, 3
    out_dtype = {"far": "keep", "f32": "keep", "count": "float64"} if dtype == "keep" else dtype
    ds = rc.TrajectoryDataset(st, delta_indices={k: range(1 - fs, sl) for k in arrays},
                              normalize={k: "robomimic_obs" for k in arrays}, dtype=out_dtype)
    ref = RobomimicSequence(st.episode_ends, frame_stack=fs, seq_length=sl)
    obs_stats = {k: rm_obs_normalization_stats(arrays[k], st.episode_ends) for k in arrays}
    batch = ds.get_batch(range(len(ds)))
    for i in range(len(ds)):
        raw = ref.item(arrays, i)
        for k in arrays:
            want = rm_normalize_obs(raw[k], obs_stats[k])
            assert want.dtype == (np.float32 if k == "f32" else np.float64)
            got = batch[k][i].numpy()
            if dtype is None:
                want = want.astype(np.float32)
            elif dtype == "float16":
                want = want.astype(np.float32).astype(np.float16)
            np.testing.assert_array_equal(got, want, err_msg=k)
    # the far column in float32 arithmetic would be off by ~1e-2 after the cancellation
    x32 = (far[:, 1].astype(np.float32) - np.float32(obs_stats["far"]["mean"][0, 1]))
    assert np.abs(x32 / np.float32(obs_stats["far"]["std"][0, 1])
                  - rm_normalize_obs(far, obs_stats["far"])[:, 1]).max() > 1e-3


def test_robomimic_next_obs_normalized_with_the_observations_statistics():
    """robomimic normalizes next_obs with the statistics of obs: "next_obs/<k>" under
    "robomimic_obs" is fitted on "obs/<k>" (on its own frames where the store has no obs/<k>)."""
    rng = np.random.default_rng(15)
    lens = [6, 2, 11]
    N = int(sum(lens))
    obs = rng.standard_normal((N, 3)) * [1, 2, 3]
    nxt = np.concatenate([obs[1:], obs[-1:]]) + rng.standard_normal((N, 3)) * 0.1
    lone = rng.standard_normal((N, 2)).astype(np.float32)
    arrays = {"obs/pos": obs, "next_obs/pos": nxt, "next_obs/lone": lone,
              "obs/wide": rng.standard_normal((N, 4)), "next_obs/wide": lone * 3}  # 4 vs 2
    st = rc.TrajectoryStore.from_arrays(arrays, episode_ends=np.cumsum(lens), device="cpu")
    ds = rc.TrajectoryDataset(st, normalize={k: "robomimic_obs" for k in arrays}, dtype="keep")
    norm = ds.normalization
    np.testing.assert_array_equal(norm["next_obs/pos"]["a"], norm["obs/pos"]["a"])
    np.testing.assert_array_equal(norm["next_obs/pos"]["b"], norm["obs/pos"]["b"])
    batch = ds.get_batch(range(len(ds)))
    obs_stats = rm_obs_normalization_stats(obs, st.episode_ends)
    np.testing.assert_array_equal(batch["next_obs/pos"].numpy(), rm_normalize_obs(nxt, obs_stats))
    lone_stats = rm_obs_normalization_stats(lone, st.episode_ends)
    np.testing.assert_array_equal(batch["next_obs/lone"].numpy(),
                                  rm_normalize_obs(lone, lone_stats))
    wide_stats = rm_obs_normalization_stats(lone * 3, st.episode_ends)  # obs/wide: other shape
    np.testing.assert_array_equal(batch["next_obs/wide"].numpy(),
                                  rm_normalize_obs(lone * 3, wide_stats))


def test_robomimic_next_obs_and_goals_use_the_stats_given_for_obs():
    """stats= given for "obs/<k>" (e.g. a train split's) serve "next_obs/<k>" and goals read
    from it under "robomimic_obs", as robomimic uses one set of observation statistics: the same
    raw frame comes out the same in all three (next_obs fell back to the store's own obs/<k>
    statistics). An entry of next_obs/<k>'s own still wins."""
    rng = np.random.default_rng(17)
    obs = rng.standard_normal((10, 2)).astype(np.float32)
    nxt = np.concatenate([obs[1:5], obs[4:5], obs[6:10], obs[9:10]])  # next_obs[t] = obs[t + 1]
    st = rc.TrajectoryStore.from_arrays({"obs/x": obs, "next_obs/x": nxt}, [5, 10], device="cpu")
    given = {"mean": np.array([100.0, -3.0]), "std": np.array([10.0, 0.5])}
    modes = {"obs/x": "robomimic_obs", "next_obs/x": "robomimic_obs", "goal_obs/x": "ROBOMIMIC_OBS"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no entry for ..." warning either
        ds = rc.TrajectoryDataset(st, stats={"obs/x": given, "extra": given}, normalize=modes,
                                  goal_keys={"goal_obs/x": "next_obs/x"})
    for k in modes:
        np.testing.assert_array_equal(ds.normalization[k]["a"], np.float32([100.0, -3.0]), k)
        np.testing.assert_array_equal(ds.normalization[k]["b"],
                                      np.float32([10.0, 0.5]) + np.float32(1e-3), k)
    np.testing.assert_array_equal(ds[1]["obs/x"].numpy(), ds[0]["next_obs/x"].numpy())
    own = {"mean": np.zeros(2), "std": np.ones(2)}
    ds = rc.TrajectoryDataset(st, stats={"obs/x": given, "next_obs/x": own}, normalize=modes,
                              goal_keys={"goal_obs/x": "next_obs/x"})
    np.testing.assert_array_equal(ds.normalization["next_obs/x"]["a"], np.zeros(2, np.float32))


@pytest.mark.parametrize("chunk", [1, 100, 1 << 30])
def test_robomimic_statistics_read_the_episodes_in_chunks(monkeypatch, chunk):
    """host_episodes hands out every episode's rows in order, whatever the transfer size (one
    episode per transfer, several, all), from torch tensors too."""
    from robocache import _peer_norm

    monkeypatch.setattr(_peer_norm, "HOST_CHUNK_BYTES", chunk)
    rng = np.random.default_rng(16)
    lens = [3, 1, 8, 2, 5]
    ends = np.cumsum(lens)
    x = rng.standard_normal((int(ends[-1]), 2, 2))
    for src in (x, torch.from_numpy(x)):
        parts = list(_peer_norm.host_episodes(src, ends))
        assert [len(p) for p in parts] == lens
        np.testing.assert_array_equal(np.concatenate(parts), x)
        st = _peer_norm.robomimic_stats(parts)
        want = rm_action_stats(x, ends)
        for name in ("mean", "sqdiff", "min", "max"):
            np.testing.assert_array_equal(st[name], want[name], err_msg=name)
        assert st["n"] == want["n"] == x.shape[0]


@pytest.mark.parametrize("fs, sl, pfs, psl", [
    (1, 1, True, True), (2, 3, True, True), (3, 4, False, False), (1, 5, True, False),
    (2, 2, False, True)])
def test_robomimic_goal_obs(fs, sl, pfs, psl):
    """goal_keys={"goal_obs/<k>": "next_obs/<k>"} == robomimic's goal_mode="last": each
    sample's goal is next_obs at end_index_in_demo - 1 (the last anchor-able frame), camera keys
    too; normalized (robomimic_obs) with the statistics of obs/<k>."""
    rng = np.random.default_rng(fs * 10 + sl)
    min_len = (1 if pfs else fs) + (0 if psl else sl - 1)
    lens = [int(x) for x in rng.integers(min_len, min_len + 9, size=5)]
    N = int(sum(lens))
    arrays = {"obs/pos": rng.standard_normal((N, 3)), "next_obs/pos": rng.standard_normal((N, 3)),
              "next_obs/cam": rng.integers(0, 256, (N, 4, 5, 3), dtype=np.uint8),
              "actions": rng.standard_normal((N, 2)).astype(np.float32)}
    st = rc.TrajectoryStore.from_arrays(arrays, episode_ends=np.cumsum(lens), device="cpu")
    d = list(range(1 - fs, sl))
    ds = rc.TrajectoryDataset(
        st, delta_indices={"obs/pos": d, "actions": d}, drop_n_first_frames=0 if pfs else fs - 1,
        drop_n_last_frames=0 if psl else sl - 1, dtype="keep",
        goal_keys={"goal_obs/pos": "next_obs/pos", "goal_obs/cam": "next_obs/cam",
                   "goal_raw": "next_obs/pos"},
        normalize={"goal_obs/pos": "robomimic_obs"})
    ref = RobomimicSequence(st.episode_ends, frame_stack=fs, seq_length=sl,
                            pad_frame_stack=pfs, pad_seq_length=psl)
    assert len(ds) == len(ref)
    obs_stats = rm_obs_normalization_stats(arrays["obs/pos"], st.episode_ends)
    batch = ds.get_batch(range(len(ds)))
    assert "goal_obs/pos_is_pad" not in batch and batch["goal_obs/cam"].shape == (len(ds), 4, 5, 3)
    # a camera goal takes an image transform like any camera key: [0, 1] CHW frames
    dt = rc.TrajectoryDataset(st, goal_keys={"g": "next_obs/cam"},
                              image_transforms={"g": rc.ImageTransform()})
    g = dt.get_batch(range(len(dt)))["g"]
    assert g.shape == (len(dt), 3, 4, 5) and g.dtype == torch.float32
    last = arrays["next_obs/cam"][dt.anchors[:, 2] - 1]  # drop_n_last_frames=0: frame e - 1
    np.testing.assert_array_equal(g.numpy(), np.moveaxis(last, -1, 1) / np.float32(255))
    # the loader's batches carry the goals too
    loader = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=3)
    order = loader.epoch_order(0)
    for j, lb in enumerate(loader):
        for k in ("goal_obs/pos", "goal_obs/cam", "goal_raw"):
            np.testing.assert_array_equal(lb[k].numpy(), batch[k].numpy()[order[4 * j:4 * j + 4]])
    for i in range(len(ds)):
        goal = ref.goal(arrays, i)
        np.testing.assert_array_equal(batch["goal_raw"][i].numpy(), goal["next_obs/pos"])
        np.testing.assert_array_equal(batch["goal_obs/cam"][i].numpy(), goal["next_obs/cam"])
        np.testing.assert_array_equal(batch["goal_obs/pos"][i].numpy(),
                                      rm_normalize_obs(goal["next_obs/pos"], obs_stats))


def test_store_keys_named_like_outputs_are_refused():
    """A store key that a sample's mask or task strings would overwrite is an error naming it
    (leaving it out with keys= works); a dtype argument is checked with camera keys alone."""
    s = rc.TrajectoryStore.from_arrays({"action": np.arange(6, dtype=np.float32),
                                        "action_is_pad": np.full(6, 7)}, [3, 6], device="cpu")
    with pytest.raises(ValueError, match="store key 'action_is_pad' has the name of the is_pad "
                                         "mask of 'action'"):
        rc.TrajectoryDataset(s, delta_indices={"action": [-1, 0]})
    ok = rc.TrajectoryDataset(s, delta_indices={"action": [-1, 0]}, keys=["action"])
    assert ok[0]["action_is_pad"].dtype == torch.bool
    assert rc.TrajectoryDataset(s)[0]["action_is_pad"] == 7  # no offsets on action: no mask
    t = rc.TrajectoryStore.from_arrays({"task_index": np.zeros(6, np.int64),
                                        "task": np.ones(6, np.float32)}, [3, 6], device="cpu")
    t.meta["tasks"] = ["pick"]
    with pytest.raises(ValueError, match="'task' has the name of the task strings"):
        rc.TrajectoryDataset(t)
    assert rc.TrajectoryDataset(t, return_task=False)[0]["task"] == 1.0
    cams = rc.TrajectoryStore.from_arrays({"cam": np.zeros((4, 2, 2, 3), np.uint8)}, [4],
                                          device="cpu")
    with pytest.raises(TypeError, match="dtype: expected a dtype name"):
        rc.TrajectoryDataset(cams, dtype=5)
    with pytest.raises(ValueError, match=r"dtype: expected keys of the dataset \['cam'\]"):
        rc.TrajectoryDataset(cams, dtype={"zz": "float16"})
    with pytest.raises(ValueError, match=r"dtype\['cam'\]: a camera key's dtype"):
        rc.TrajectoryDataset(cams, dtype={"cam": "float16"})
    with pytest.raises(ValueError, match="dtype: expected one of"):
        rc.TrajectoryDataset(cams, dtype="int8")


def test_key_count_and_offset_limits_are_said_up_front():
    """At most MAX_KEYS keys a dataset (keys= picks them) and frame offsets within int32 (the
    batch kernel's), on every backend, with errors that name the argument."""
    from robocache.ops.windows import MAX_KEYS

    many = rc.TrajectoryStore.from_arrays(
        {f"k{i}": np.zeros((5, 1), np.float32) for i in range(MAX_KEYS + 1)}, [5], device="cpu")
    with pytest.raises(ValueError, match=rf"at most {MAX_KEYS} keys .*got {MAX_KEYS + 1}; "
                                         r"choose the ones to return with keys="):
        rc.TrajectoryDataset(many)
    assert len(rc.TrajectoryDataset(many, keys=["k0", "k5"])[0]) == 2 + 3
    st = rc.TrajectoryStore.from_arrays({"x": np.zeros((5, 1), np.float32)}, [5], fps=10,
                                        timestamps=np.arange(5) / 10, device="cpu")
    for kw in ({"delta_indices": {"x": [0, 2**63]}}, {"delta_indices": {"x": [-2**31]}},
               {"delta_timestamps": {"x": [0.0, 1e12]}}):
        with pytest.raises(ValueError, match=r"delta_(indices|timestamps)\['x'\]: expected frame "
                                             r"offsets within"):
            rc.TrajectoryDataset(st, **kw)
    ok = rc.TrajectoryDataset(st, delta_indices={"x": [-(2**31 - 1), 2**31 - 1]})
    assert ok[0]["x_is_pad"].tolist() == [True, True]


def test_per_sample_work_leaves_the_kernels_loop_room():
    """The batch kernel's int32 loop counter steps up to MAX_GRID_Y * THREADS past a sample's
    last element: a sample of more elements than MAX_WORK is refused (it would loop forever)."""
    from robocache import windows as Wn
    from robocache.ops.windows import MAX_WORK, WindowKey, WindowOp

    def op(features):  # one frame of `features` bytes, no memory behind them
        src = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=(1, features),
                                              strides=(0, 0))
        return WindowOp([WindowKey("x", src, None)], Wn.anchor_table(np.array([1])),
                        zero_pad=False, like=np.zeros(1))

    assert op(MAX_WORK - 1)._work == MAX_WORK  # the values and the index of the sample
    with pytest.raises(ValueError, match=rf"keys: expected at most {MAX_WORK} output elements "
                                         rf"per sample, got {MAX_WORK + 1}"):
        op(MAX_WORK)


def test_episode_index_is_the_datasets_own_id():
    """A LeRobot dataset whose episode ids are not 0..E-1 (store.meta["episode_index"]) gets
    them in batches, as LeRobot returns its episode_index column; on the loader's path too."""
    st = rc.TrajectoryStore.from_arrays({"x": np.arange(9.0)}, [2, 3, 7, 9], device="cpu")
    st.meta["episode_index"] = [0, 2, 5, 9]
    ds = rc.TrajectoryDataset(st, delta_indices={"x": [-1, 0]})
    want = np.repeat([0, 2, 5, 9], [2, 1, 4, 2])
    assert ds.get_batch(range(9))["episode_index"].tolist() == want.tolist()
    assert ds[3]["episode_index"] == 5 and ds[3]["frame_index"] == 0
    loader = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=2)
    order = loader.epoch_order(0)
    got = np.concatenate([b["episode_index"].numpy() for b in loader])
    np.testing.assert_array_equal(got, want[order])
    # episodes= names those ids, as LeRobot's episodes= does
    sub = rc.TrajectoryDataset(st, episodes=[9, 2])
    assert sorted(set(sub.get_batch(range(len(sub)))["episode_index"].tolist())) == [2, 9]
    with pytest.raises(ValueError, match=r"episodes: expected episode ids of the dataset "
                                         r"\(\[0, 2, 5, 9\]\), got 1"):
        rc.TrajectoryDataset(st, episodes=[1])
    st.meta["episode_index"] = [0, 1, 2, 3]  # the positions themselves: nothing to map
    assert rc.TrajectoryDataset(st)._episode_ids is None


def test_every_masked_key_has_a_mask_of_its_own_and_stats_keys_are_checked():
    """Keys with equal offsets get separate is_pad arrays (an in-place edit of one changed
    the other's); a misspelt stats= key is an error."""
    st = rc.TrajectoryStore.from_arrays({"x": np.arange(20.0), "y": np.arange(20.0)}, [10, 20],
                                        device="cpu")
    ds = rc.TrajectoryDataset(st, delta_indices={"x": [-1, 0], "y": [-1, 0]})
    b = ds.get_batch([0, 1])
    b["x_is_pad"][:] = True
    assert b["y_is_pad"].tolist() == [[True, False], [False, False]]
    with pytest.warns(UserWarning, match=r"stats: no entry for \['x'\].*\['X'\] - misspelt"):
        rc.TrajectoryDataset(st, normalize={"x": "mean_std"}, stats={"X": {"mean": 0, "std": 1}})
    import warnings  # a whole stats.json (features the store did not load too): taken quietly

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = rc.TrajectoryDataset(st, normalize={"x": "mean_std"},
                                  stats={"x": {"mean": 1, "std": 2}, "not.loaded": {"mean": 0}})
    assert ds.normalization["x"]["a"].tolist() == [1.0]


def test_goal_keys_are_checked():
    st = rc.TrajectoryStore.from_arrays({"x": np.zeros((6, 2), np.float32)}, episode_ends=[2, 6],
                                        fps=10, timestamps=[0, 0.1, 0, 0.1, 0.2, 0.3],
                                        device="cpu")
    assert st.timestamps is not None  # "timestamp" is a dataset key, not a stored one
    for bad, match in (({"x": "x"}, "not store keys"), ({"index": "x"}, "not store keys"),
                       ({"g_is_pad": "x"}, "not store keys"), ({"g": "y"}, r"goal_keys\['g'\]"),
                       ({"g": "timestamp"}, r"goal_keys\['g'\]")):
        with pytest.raises(ValueError, match=match):
            rc.TrajectoryDataset(st, goal_keys=bad)
    with pytest.raises(TypeError, match="goal_keys"):
        rc.TrajectoryDataset(st, goal_keys=["x"])
    with pytest.raises(ValueError, match="unknown key"):  # a goal is one frame: no offsets
        rc.TrajectoryDataset(st, goal_keys={"g": "x"}, delta_indices={"g": [0, 1]})
    # keys= may name the goal; negative drops read the episode's last frame
    ds = rc.TrajectoryDataset(st, goal_keys={"g": "x"}, keys=["g"], drop_n_last_frames=-3)
    assert ds.keys == ("g",)
    st2 = rc.TrajectoryStore.from_arrays({"x": np.arange(6.0)[:, None]}, episode_ends=[2, 6],
                                         device="cpu")
    g = rc.TrajectoryDataset(st2, goal_keys={"g": "x"}, drop_n_last_frames=-3, dtype="keep")
    b = g.get_batch(range(len(g)))  # anchors past the ends: still their episode's last frame
    assert (b["index"].numpy() >= 6).any()
    np.testing.assert_array_equal(b["g"].numpy()[:, 0],
                                  np.where(b["episode_index"].numpy() == 0, 1.0, 5.0))
    # LeRobot's modes normalize a goal with its store key's statistics (computed or shipped)
    st2.stats()  # computed: mean 2.5, population std of 0..5
    n = rc.TrajectoryDataset(st2, goal_keys={"g": "x"}, normalize={"g": "mean_std"})
    want = (np.float32([1.0, 5.0]) - np.float32(2.5)) / (np.float32(np.std(np.arange(6.0)))
                                                         + np.float32(1e-8))
    np.testing.assert_array_equal(n.get_batch([0, 5])["g"].numpy()[:, 0], want)
    # statistics given for the store key serve its goals too (a goal's own entry first)
    given = {"x": {"mean": [100.0], "std": [2.0]}}
    for mode, a in (("mean_std", 100.0), ("gaussian", 0.5)):  # gaussian: a = 1 / std
        g2 = rc.TrajectoryDataset(st2, goal_keys={"g": "x"}, normalize={"g": mode}, stats=given)
        assert g2.normalization["g"]["a"].tolist() == [a]
    own = rc.TrajectoryDataset(st2, goal_keys={"g": "x"}, normalize={"g": "mean_std"},
                               stats={**given, "g": {"mean": [7.0], "std": [1.0]}})
    assert own.normalization["g"]["a"].tolist() == [7.0]


def test_peer_normalizers_take_given_stats_and_check_them():
    rng = np.random.default_rng(13)
    st, arrays = _peer_norm_store(rng, [10, 10])
    stats = {"state64": {"min": [-1.0, 0.0], "max": [1.0, 0.0]}}
    ds = rc.TrajectoryDataset(st, normalize={"state64": "limits"}, stats=stats)
    n = ds.normalization["state64"]
    np.testing.assert_array_equal(n["a"], [1.0, 1.0])  # range 2 -> scale 1; range 0 -> ignored
    np.testing.assert_array_equal(n["b"], [0.0, 0.0])
    with pytest.raises(ValueError, match=r"mode 'gaussian' needs the stats \['mean', 'std'\]"):
        rc.TrajectoryDataset(st, normalize={"state64": "gaussian"}, stats=stats)
    with pytest.raises(ValueError, match="robomimic_gaussian"):
        rc.TrajectoryDataset(st, normalize={"state64": "robomimic"})


@pytest.mark.parametrize("fs, sl, pfs, psl", [
    (1, 1, True, True), (3, 5, True, True), (2, 10, True, True), (3, 4, False, True),
    (2, 3, True, False), (4, 2, False, False), (10, 1, True, True)])
def test_robomimic_sequence_and_pad_mask(fs, sl, pfs, psl):
    rng = np.random.default_rng(fs * 7 + sl)
    # robomimic asserts on demos too short for unpadded windows: keep those long enough
    min_len = (1 if pfs else fs) + (0 if psl else sl - 1)
    lens = [max(min_len, L) for L in (1, 2, 6, 13, 3)]
    st, arrays = _store(rng, lens)
    ref = RobomimicSequence(st.episode_ends, frame_stack=fs, seq_length=sl,
                            pad_frame_stack=pfs, pad_seq_length=psl)
    keys = ["state", "action"]
    deltas = range(-(fs - 1), sl)
    ds = rc.TrajectoryDataset(st, delta_indices={k: deltas for k in keys},
                              drop_n_first_frames=0 if pfs else fs - 1,
                              drop_n_last_frames=0 if psl else sl - 1)
    assert len(ds) == len(ref)
    batch = ds.get_batch(range(len(ds)))
    for i in range(len(ds)):
        r = ref.item({k: arrays[k] for k in keys}, i)
        for k in keys:
            np.testing.assert_array_equal(batch[k][i].numpy(), r[k])
        # robomimic's pad_mask is True for real data: the negation of is_pad
        np.testing.assert_array_equal(~batch["action_is_pad"][i].numpy()[:, None], r["pad_mask"])


# ---------------------------------------------------------------------------------------------
# normalization


@pytest.mark.parametrize("mode", ["mean_std", "min_max", "quantiles", "quantile10"])
def test_normalization_matches_lerobot_formulas(mode):
    rng = np.random.default_rng(6)
    st, arrays = _store(rng, [7, 1, 12])
    # a constant feature: its denominator is eps
    arrays = dict(arrays)
    st = rc.TrajectoryStore.from_arrays(
        {**arrays, "const": np.full((20, 2), 3.0, np.float32)}, episode_ends=[7, 8, 20],
        device="cpu")
    ds = rc.TrajectoryDataset(st, delta_indices={"action": [-1, 0, 1]},
                              normalize={"action": mode, "state": mode, "const": mode})
    batch = ds.get_batch(range(len(ds)))
    for key in ("action", "state", "const"):
        stats = st.stats(key)[key]
        rows = batch[key].numpy()
        raw = ds.get_batch(range(len(ds)))  # same rows, then LeRobot's transform
        del raw
        src = arrays[key] if key != "const" else np.full((20, 2), 3.0, np.float32)
        if key == "action":
            pos = np.clip(np.arange(len(ds))[:, None] + np.array([-1, 0, 1]),
                          ds.anchors[:, 1, None], ds.anchors[:, 2, None] - 1)
            x = src[pos]
        else:
            x = src[np.arange(len(ds))]
        want = lerobot_normalize(x, stats, mode).numpy()
        np.testing.assert_array_equal(rows, want, err_msg=f"{key} {mode}")
    if mode != "mean_std":
        assert (batch["const"].numpy() == -1).all()  # LeRobot maps x == lo to -1


def test_normalization_stats_priority_eps_and_errors():
    rng = np.random.default_rng(7)
    st, arrays = _store(rng, [5, 5])
    my = {"action": {"mean": [1.0, -1.0], "std": [2.0, 4.0]}}
    ds = rc.TrajectoryDataset(st, normalize={"action": "MEAN_STD"}, stats=my,
                              normalize_eps=1e-3)  # robomimic's std + 1e-3
    got = ds[3]["action"].numpy()
    want = (arrays["action"][3] - np.float32([1, -1])) / (np.float32([2, 4]) + np.float32(1e-3))
    np.testing.assert_array_equal(got, want)
    # shipped stats are used when none are given
    st2 = rc.TrajectoryStore.from_arrays(arrays, episode_ends=[5, 10], device="cpu", stats=my)
    np.testing.assert_array_equal(
        rc.TrajectoryDataset(st2, normalize={"action": "mean_std"}, normalize_eps=1e-3)[3]
        ["action"].numpy(), want)
    with pytest.raises(ValueError, match=r"normalize\['action'\]: mode 'min_max' needs"):
        rc.TrajectoryDataset(st2, normalize={"action": "min_max"})
    with pytest.raises(ValueError, match=r"normalize\['action'\]: expected one of"):
        rc.TrajectoryDataset(st, normalize={"action": "zscore"})
    with pytest.raises(ValueError, match="normalize: expected keys"):
        rc.TrajectoryDataset(st, normalize={"nope": "mean_std"})
    with pytest.raises(ValueError, match=r"stats\['action'\]\['mean'\]: expected 2 values"):
        rc.TrajectoryDataset(st, normalize={"action": "mean_std"},
                             stats={"action": {"mean": [0, 0, 0], "std": [1, 1, 1]}})
    with pytest.raises(TypeError, match=r"stats\['action'\]\['mean'\]: expected numbers"):
        rc.TrajectoryDataset(st, normalize={"action": "mean_std"},
                             stats={"action": {"mean": ["a", "b"], "std": [1, 1]}})
    ident = rc.TrajectoryDataset(st, normalize={"action": "identity"})
    np.testing.assert_array_equal(ident[2]["action"].numpy(), arrays["action"][2])


@pytest.mark.parametrize("mode", ["mean_std", "min_max", "limits", "robomimic_gaussian"])
@pytest.mark.parametrize("bad", [None, [0.0, None], "1", ["1", "2"], np.array(["1", "2"]),
                                 True, [True, False], object(),
                                 np.array([0.0, None], dtype=object)])
def test_stats_that_are_not_numbers_are_refused(mode, bad):
    """A null (JSON null / None) statistic, or one inside a list, normalized a whole column to
    NaN; strings were parsed, bools taken as 0 / 1. Each is refused, given to the dataset or
    shipped with the store; numbers of every kind are still taken."""
    rng = np.random.default_rng(31)
    st, arrays = _store(rng, [5, 5])
    lo, hi = ("mean", "std") if mode in ("mean_std", "robomimic_gaussian") else ("min", "max")
    good = {lo: np.zeros(2), hi: np.full(2, 4.0)}
    with pytest.raises(TypeError, match=rf"stats\['action'\]\['{lo}'\]: expected numbers "
                                        rf"\(one per feature\), got "):
        rc.TrajectoryDataset(st, normalize={"action": mode}, stats={"action": {**good, lo: bad}})
    if mode in ("mean_std", "min_max") and isinstance(bad, list):  # the store keeps the list
        shipped = rc.TrajectoryStore.from_arrays(arrays, [5, 10], device="cpu",
                                                 stats={"action": {**good, lo: bad}})
        with pytest.raises(TypeError, match=rf"stats\['action'\]\['{lo}'\]: expected numbers"):
            rc.TrajectoryDataset(shipped, normalize={"action": mode})
    want = rc.TrajectoryDataset(st, normalize={"action": mode}, stats={"action": good})
    for number in (0, 0.0, np.float32(0), [0, 0], torch.zeros(2, dtype=torch.bfloat16),
                   np.zeros(2, np.int8), np.array([0.0, 0], dtype=object)):  # pandas' objects
        ds = rc.TrajectoryDataset(st, normalize={"action": mode},
                                  stats={"action": {**good, lo: number}})
        assert torch.equal(ds.get_batch([1, 6])["action"], want.get_batch([1, 6])["action"])


def test_identity_keys_are_left_alone_camera_keys_too():
    """normalize={k: "identity"} (what a config lists for a key it wants as it is) is not
    reported as normalized without a stats entry, and is taken for camera keys (LeRobot's
    VISUAL: IDENTITY), whose frames come out as they would without it."""
    rng = np.random.default_rng(32)
    N = 20
    arrays = {"state": rng.standard_normal((N, 3)).astype(np.float32),
              "action": rng.standard_normal((N, 2)).astype(np.float32),
              "cam": rng.integers(0, 256, (N, 6, 5, 3), dtype=np.uint8)}
    st = rc.TrajectoryStore.from_arrays(arrays, [10, 20], device="cpu")
    stats = {"state": st.stats("state")["state"], "not.loaded": {"mean": 0.0, "std": 1.0}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = rc.TrajectoryDataset(st, delta_indices={"cam": [-1, 0]}, stats=stats,
                                  normalize={"state": "mean_std", "action": "identity",
                                             "cam": "IDENTITY"})
    assert list(ds.normalization) == ["state"]
    plain = rc.TrajectoryDataset(st, delta_indices={"cam": [-1, 0]})
    b, p = ds.get_batch([0, 13]), plain.get_batch([0, 13])
    for k in ("cam", "cam_is_pad", "action"):
        assert torch.equal(b[k], p[k]), k
    # a normalized key without an entry is still reported, and only it
    with pytest.warns(UserWarning, match=r"stats: no entry for \['state'\] \(normalized"):
        rc.TrajectoryDataset(st, stats={"not.loaded": {"mean": 0.0, "std": 1.0}},
                             normalize={"state": "mean_std", "action": "identity"})
    for mode in ("mean_std", "limits"):  # other modes stay refused for camera keys
        with pytest.raises(ValueError, match=rf"normalize\['cam'\]: camera-frame keys are "
                                             rf"normalized by their image transform.*'{mode}'"):
            rc.TrajectoryDataset(st, normalize={"cam": mode})


def test_zero_pad_is_zero_after_normalization():
    rng = np.random.default_rng(8)
    st, _ = _store(rng, [3, 4])
    ds = rc.TrajectoryDataset(st, delta_indices={"state": [-2, 0, 2]}, pad="zero",
                              normalize={"state": "min_max"})
    item = ds[0]
    assert item["state_is_pad"].tolist() == [True, False, False]
    assert (item["state"][0] == 0).all() and (item["state"][1] != 0).any()


# ---------------------------------------------------------------------------------------------
# dtypes and camera frames


def test_output_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(9)
    N = 12
    arrays = {"b": rng.standard_normal((N, 3)).astype(ml_dtypes.bfloat16),
              "h": rng.standard_normal((N, 2)).astype(np.float16),
              "d": rng.standard_normal((N, 2)),
              "u": rng.integers(0, 255, (N, 4)).astype(np.uint8),
              "flag": rng.random(N) < 0.5}
    st = rc.TrajectoryStore.from_arrays(arrays, episode_ends=[5, 12], device="cpu")
    ds = rc.TrajectoryDataset(st, delta_indices={"b": [0, 1], "u": [-1, 0]})
    item = ds[4]
    assert item["b"].dtype == torch.float32 and item["h"].dtype == torch.float32
    assert item["d"].dtype == torch.float32 and item["u"].dtype == torch.uint8
    assert item["flag"].dtype == torch.bool
    np.testing.assert_array_equal(item["b"].numpy(), arrays["b"][[4, 4]].astype(np.float32))
    np.testing.assert_array_equal(item["u"].numpy(), arrays["u"][[3, 4]])
    assert item["flag"].item() == arrays["flag"][4]
    ds = rc.TrajectoryDataset(st, dtype="bfloat16", normalize={"u": "mean_std"})
    item = ds[7]
    assert item["d"].dtype == torch.bfloat16 and item["u"].dtype == torch.bfloat16
    assert item["flag"].dtype == torch.bool
    want = torch.from_numpy(arrays["d"][7].astype(np.float32)).to(torch.bfloat16)
    assert torch.equal(item["d"], want)  # round to nearest even, like torch
    ds = rc.TrajectoryDataset(st, dtype={"d": "float64", "h": "keep", "flag": "float16"})
    item = ds[1]
    assert item["d"].dtype == torch.float64 and item["h"].dtype == torch.float16
    assert item["flag"].dtype == torch.float16 and item["b"].dtype == torch.float32
    np.testing.assert_array_equal(item["d"].numpy(), arrays["d"][1])
    with pytest.raises(ValueError, match="dtype: expected one of"):
        rc.TrajectoryDataset(st, dtype="int32")
    with pytest.raises(ValueError, match=r"dtype\['u'\]: 'keep'"):
        rc.TrajectoryDataset(st, dtype={"u": "keep"}, normalize={"u": "min_max"})


def test_camera_frames_raw_and_through_a_transform():
    rng = np.random.default_rng(10)
    N = 9
    img = rng.integers(1, 256, size=(N, 4, 5, 3), dtype=np.uint8)
    st = rc.TrajectoryStore.from_arrays({"cam": img, "s": np.arange(N, dtype=np.float32)},
                                        episode_ends=[4, 9], device="cpu")
    assert st.image_keys == ("cam",)
    ds = rc.TrajectoryDataset(st, delta_indices={"cam": [-1, 0]}, pad="zero")
    b = ds.get_batch([0, 5])
    assert b["cam"].dtype == torch.uint8 and b["cam"].shape == (2, 2, 4, 5, 3)
    assert (b["cam"][0, 0] == 0).all() and b["cam_is_pad"][0].tolist() == [True, False]
    np.testing.assert_array_equal(b["cam"][1].numpy(), img[[4, 5]])
    seen = {}

    def transform(frames, rows, is_pad):
        seen["rows"], seen["pad"] = rows.clone(), is_pad.clone()
        return frames.index_select(0, rows.reshape(-1)).float().mean(dim=(1, 2, 3))

    ds = rc.TrajectoryDataset(st, delta_indices={"cam": [-1, 0]},
                              image_transforms={"cam": transform})
    b = ds.get_batch([4, 8])
    assert seen["rows"].tolist() == [[4, 4], [7, 8]]
    assert seen["pad"].tolist() == [[True, False], [False, False]]
    assert b["cam"].shape == (4,)
    with pytest.raises(ValueError, match="image_transforms"):
        rc.TrajectoryDataset(st, image_transforms={"s": transform})
    with pytest.raises(ValueError, match="camera-frame"):
        rc.TrajectoryDataset(st, normalize={"cam": "mean_std"})


# ---------------------------------------------------------------------------------------------
# access paths


def test_getitem_equals_getitems_row_and_index_errors():
    rng = np.random.default_rng(11)
    st, _ = _store(rng, [3, 5, 2])
    ds = rc.TrajectoryDataset(st, delta_indices={"action": [-1, 0, 1]})
    batch = ds.get_batch([7, 2, 7])
    for j, i in enumerate([7, 2, 7]):
        item = ds[i]
        assert set(item) == set(batch)
        for k in item:
            assert torch.equal(item[k], batch[k][j]), k
    assert torch.equal(ds[-1]["action"], ds[len(ds) - 1]["action"])
    assert torch.equal(ds[torch.tensor(3)]["index"], torch.tensor(3))
    with pytest.raises(IndexError, match=r"^index: expected an int in \["):
        ds[len(ds)]
    with pytest.raises(IndexError):
        ds.get_batch([0, -len(ds) - 1])
    with pytest.raises(TypeError):
        ds[1.5]
    with pytest.raises(TypeError):
        ds.get_batch(np.array([0.5]))
    assert list(ds.get_batch([])["action"].shape) == [0, 3, 2]


def test_torch_dataloader_gets_whole_batches():
    """torch's DataLoader calls __getitems__ and its default collate passes the batch through."""
    rng = np.random.default_rng(12)
    st, _ = _store(rng, [6, 9, 4])
    ds = rc.TrajectoryDataset(st, delta_indices={"action": range(4)})
    sampler = torch.utils.data.SequentialSampler(ds)
    dl = torch.utils.data.DataLoader(ds, batch_size=8, sampler=sampler)
    batches = list(dl)
    assert [b["action"].shape[0] for b in batches] == [8, 8, 3]
    for n, b in enumerate(batches):
        want = ds.get_batch(range(8 * n, min(8 * n + 8, len(ds))))
        assert set(b) == set(want)
        for k in b:
            assert torch.equal(b[k], want[k]), k
    # and per-sample access (no auto-collation) still works
    dl = torch.utils.data.DataLoader(ds, batch_size=None)
    assert next(iter(dl))["action"].shape == (4, 2)
    # worker processes send whole batches back (pickled WindowBatch)
    dl = torch.utils.data.DataLoader(ds, batch_size=8, sampler=sampler, num_workers=2)
    for b, want in zip(dl, batches, strict=True):
        assert all(torch.equal(b[k], want[k]) for k in want)


def _assert_sample_equal(got, want):
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_getitems_returns_the_samples_as_torchs_dataset_contract_says():
    """torch.utils.data.Dataset: __getitems__ "accepts list of indices of samples of batch and
    returns list of samples". A custom collate_fn and StackDataset rely on it; they used to get
    the batched dict (and StackDataset, with as many samples as keys, silently key names)."""
    rng = np.random.default_rng(13)
    st, _ = _store(rng, [6, 9, 4])
    ds = rc.TrajectoryDataset(st, delta_indices={"action": range(4)})
    idx = [7, 2, 7, 15]
    samples = ds.__getitems__(idx)
    assert len(samples) == len(idx) and isinstance(samples, Sequence)
    for j, i in enumerate(idx):
        _assert_sample_equal(samples[j], ds[i])
    _assert_sample_equal(samples[-1], ds[15])
    assert [int(s["index"]) for s in samples[1:3]] == [int(ds[2]["index"]), int(ds[7]["index"])]
    with pytest.raises(IndexError):
        samples[4]

    def stack(items):  # a collate_fn written for torch's contract
        assert isinstance(items, Sequence) and len(items) == 4
        return {k: torch.stack([s[k] for s in items]) for k in items[0]}
    sampler = torch.utils.data.SequentialSampler(ds)
    want = ds.get_batch(range(4))
    for b in (next(iter(torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler,
                                                     collate_fn=stack))),
              torch.utils.data.default_collate(ds.__getitems__(range(4))),
              torch.utils.data.default_collate([ds.__getitems__(range(4))[j]
                                                for j in range(4)])):  # samples on their own
        _assert_sample_equal(b, want)
    # StackDataset with as many samples per batch as the dataset has keys
    n = len(want)
    labels = torch.arange(len(ds))
    both = torch.utils.data.StackDataset(obs=ds, label=labels)
    got = next(iter(torch.utils.data.DataLoader(both, batch_size=n, sampler=range(n))))
    _assert_sample_equal(got["obs"], ds.get_batch(range(n)))
    assert torch.equal(got["label"], labels[:n])


def test_tensor_indices_of_several_elements_are_refused():
    rng = np.random.default_rng(14)
    st, _ = _store(rng, [6, 9])
    ds = rc.TrajectoryDataset(st, delta_indices={"action": range(2)})
    _assert_sample_equal(ds[torch.tensor(5)], ds[5])
    for bad in (torch.tensor([5]), torch.tensor([[5]]), torch.tensor([1, 2])):
        with pytest.raises(TypeError, match=r"index: expected an int, got a tensor of shape"):
            ds[bad]


def test_bad_dataset_arguments():
    rng = np.random.default_rng(13)
    st, _ = _store(rng, [4, 4])
    mk = rc.TrajectoryDataset
    with pytest.raises(ValueError, match=r"delta_indices: expected keys of the store .*'nope'"):
        mk(st, delta_indices={"nope": [0]})
    with pytest.raises(ValueError, match=r"delta_timestamps: expected keys of the store"):
        rc.TrajectoryDataset(rc.TrajectoryStore.from_arrays(
            {"a": np.zeros((8, 1))}, episode_ends=[8], fps=10, device="cpu"),
            delta_timestamps={"b": [0.0]})
    with pytest.raises(ValueError, match="both"):
        mk(st, delta_indices={"state": [0]}, delta_timestamps={"state": [0.0]})
    with pytest.raises(ValueError, match="non-empty"):
        mk(st, delta_indices={"state": []})
    with pytest.raises(TypeError, match="integer frame offsets"):
        mk(st, delta_indices={"state": [0.5]})
    with pytest.raises(TypeError, match="drop_n_first_frames: expected an int"):
        mk(st, drop_n_first_frames=1.0)
    with pytest.raises(TypeError, match="drop_n_last_frames: expected an int"):
        mk(st, drop_n_last_frames=True)
    with pytest.raises(ValueError, match="no anchors"):
        mk(st, drop_n_first_frames=2, drop_n_last_frames=2)
    with pytest.raises(ValueError, match="pad: expected one of"):
        mk(st, pad="reflect")
    with pytest.raises(ValueError, match="keys: expected keys"):
        mk(st, keys=["nope"])
    with pytest.raises(TypeError, match="keys: expected a list of store keys, got int"):
        mk(st, keys=5)
    for zero_d in (np.array(1), torch.tensor(1)):  # iterable in name only
        with pytest.raises(TypeError, match=r"delta_indices\['state'\]: .* of shape \(\)"):
            mk(st, delta_indices={"state": zero_d})
    with pytest.raises(TypeError, match=r"delta_timestamps\['a'\]: .* of shape \(\)"):
        rc.TrajectoryDataset(rc.TrajectoryStore.from_arrays(
            {"a": np.zeros((8, 1))}, episode_ends=[8], fps=10, device="cpu"),
            delta_timestamps={"a": torch.tensor(0.1)})
    for stats in (5, [1]):  # also without normalize=
        with pytest.raises(TypeError, match="stats: expected a dict of key -> {stat: array}"):
            mk(st, stats=stats)
    with pytest.raises(TypeError, match="store"):
        mk({"state": np.zeros(3)})
    with pytest.raises(ValueError, match="computed by the dataset"):
        mk(rc.TrajectoryStore.from_arrays({"a": np.zeros((8, 1)), "frame_index": np.arange(8)},
                                          episode_ends=[8], device="cpu"),
           delta_indices={"frame_index": [0, 1]})
    # episodes shorter than the drops give no anchors but the others still do
    ds = mk(rc.TrajectoryStore.from_arrays({"a": np.zeros((11, 1))}, episode_ends=[1, 3, 11],
                                           device="cpu"), drop_n_first_frames=1,
            drop_n_last_frames=1)
    assert len(ds) == 0 + 0 + 6
    assert ds.anchors[:, 0].tolist() == list(range(4, 10))


def _task_store(rng, lens, tasks):
    st, arrays = _store(rng, lens)
    ends = np.cumsum(lens)
    ep_task = rng.integers(0, len(tasks), size=len(lens))
    arrays["task_index"] = np.repeat(ep_task, lens).astype(np.int64)
    st = rc.TrajectoryStore.from_arrays(arrays, episode_ends=ends, device="cpu")
    st.meta["tasks"] = list(tasks)
    return st, arrays


def test_task_strings_like_lerobot_items():
    """LeRobot's item["task"] = tasks[item["task_index"]] of the anchor row; batches hold a list."""
    rng = np.random.default_rng(21)
    tasks = ["push the block", "open the drawer", "stack cups"]
    st, arrays = _task_store(rng, [4, 1, 9, 3, 6], tasks)
    ds = rc.TrajectoryDataset(st, delta_indices={"action": [-1, 0, 1]}, drop_n_first_frames=1)
    idx = rng.permutation(len(ds))[:11]
    batch = ds.get_batch(idx)
    want = [tasks[arrays["task_index"][a]] for a in ds.anchors[idx, 0]]
    assert batch["task"] == want
    assert ds[3]["task"] == tasks[arrays["task_index"][ds.anchors[3, 0]]]
    loader = rc.DataLoader(ds, batch_size=4, shuffle=True, seed=3)
    for b in loader:
        assert b["task"] == [tasks[t] for t in b["task_index"].tolist()]
    assert "task" not in rc.TrajectoryDataset(st, return_task=False)[0]
    # windows anchored past their episode (negative drops) carry their episode's task
    past = rc.TrajectoryDataset(st, drop_n_first_frames=-2, drop_n_last_frames=-3)
    b = past.get_batch(range(len(past)))
    ep_task = [tasks[arrays["task_index"][e]] for e in np.cumsum([4, 1, 9, 3, 6]) - 1]
    assert b["task"] == [ep_task[e] for e in b["episode_index"].tolist()]
    # no task strings: no "task" by default, an error when asked for
    plain, _ = _store(rng, [3, 3])
    assert "task" not in rc.TrajectoryDataset(plain)[0]
    with pytest.raises(ValueError, match="return_task: expected a store with a 'task_index'"):
        rc.TrajectoryDataset(plain, return_task=True)
    with pytest.raises(TypeError, match="return_task"):
        rc.TrajectoryDataset(st, return_task="yes")
    st.meta["tasks"] = tasks[:1]  # task_index beyond the list
    if (arrays["task_index"] > 0).any():
        with pytest.raises(ValueError, match="names no task"):
            rc.TrajectoryDataset(st)


def test_task_strings_on_the_device_path(emulated_cuda):
    rng = np.random.default_rng(22)
    tasks = ["a", "b", "c", "d"]
    st, arrays = _task_store(rng, [5, 2, 8, 1, 7], tasks)
    ds = rc.TrajectoryDataset(st, delta_indices={"state": [-1, 0]})
    ds._device_standin(torch.zeros(1))
    assert ds._on_device
    for reuse in (0, 2):
        loader = rc.DataLoader(ds, batch_size=3, shuffle=True, seed=1, reuse_outputs=reuse)
        n = 0
        for b in loader:
            assert b["task"] == [tasks[t] for t in b["task_index"].tolist()]
            n += len(b["task"])
        assert n == len(ds)
    assert ds.get_batch([0, 4])["task"] == [tasks[arrays["task_index"][a]]
                                              for a in ds.anchors[[0, 4], 0]]


@pytest.mark.parametrize("strict_length", [True, False])
def test_torchrl_slice_sampler(strict_length):
    """SliceSampler(slice_len=T, strict_length) == delta_indices range(T), drop_n_last_frames=T-1,
    keep_short_episodes=not strict_length, sampling="episode": the same slices, each trajectory
    equally likely, starts uniform; short trajectories padded as pad_output pads them."""
    rng = np.random.default_rng(31)
    lens = [1, 2, 5, 13, 30, 4]
    T = 4
    st, arrays = _store(rng, lens)
    ds = rc.TrajectoryDataset(st, delta_indices={"state": range(T)}, drop_n_last_frames=T - 1,
                              keep_short_episodes=not strict_length)
    support = torchrl_slice_support(lens, T, strict_length)
    starts = st.episode_starts
    got = {}
    for a, s, _e, ep in ds.anchors.tolist():
        got.setdefault(ep, []).append(a - s)
    assert got == support
    batch = ds.get_batch(range(len(ds)))
    for i, (a, s, _e, ep) in enumerate(ds.anchors.tolist()):
        want, mask = torchrl_padded_slice(arrays["state"], int(starts[ep]), lens[ep], a - s, T)
        np.testing.assert_array_equal(batch["state"][i].numpy(), want)
        np.testing.assert_array_equal(~batch["state_is_pad"][i].numpy(), mask)
    # episode-uniform draws: every eligible trajectory about equally often
    loader = rc.DataLoader(ds, batch_size=len(ds), sampling="episode", seed=0)
    eps = np.concatenate([b["episode_index"].numpy() for _ in range(200) for b in loader])
    freq = np.bincount(eps, minlength=len(lens)) / eps.size
    for ep in range(len(lens)):
        if ep in support:
            assert abs(freq[ep] - 1 / len(support)) < 0.03, (ep, freq)
        else:
            assert freq[ep] == 0


def test_keep_short_episodes_with_first_frames_dropped():
    rng = np.random.default_rng(32)
    st, _ = _store(rng, [1, 3, 8])
    ds = rc.TrajectoryDataset(st, drop_n_first_frames=2, drop_n_last_frames=2,
                              keep_short_episodes=True)
    # [0,1): min(0+2, 0) = 0; [1,4): min(3, 3) = 3; [4,12): 6..9
    assert ds.anchors[:, 0].tolist() == [0, 3, 6, 7, 8, 9]
    with pytest.raises(TypeError, match="keep_short_episodes"):
        rc.TrajectoryDataset(st, keep_short_episodes=1)


@pytest.mark.parametrize("pad", ["edge", "zero"])
def test_keys_without_offsets_read_the_clamped_anchor_outside_the_episode(pad):
    """Negative drops: a key without offsets (low-dim, camera, task) reads the clamped anchor's
    frame under either pad rule, so camera frames, values, task_index and task agree."""
    lens = [3, 1, 4]
    ends = np.cumsum(lens)
    N = int(ends[-1])
    frames = np.repeat(np.arange(N, dtype=np.uint8)[:, None, None, None], 2, axis=1)
    frames = np.repeat(np.repeat(frames, 2, axis=2), 3, axis=3)  # [N, 2, 2, 3], frame n = n
    task_index = np.repeat([1, 0, 1], lens).astype(np.int64)
    st = rc.TrajectoryStore.from_arrays(
        {"state": np.arange(N, dtype=np.float32)[:, None], "cam": frames,
         "task_index": task_index}, episode_ends=ends, device="cpu", image_keys=["cam"])
    st.meta["tasks"] = ["t0", "t1"]
    ds = rc.TrajectoryDataset(st, delta_indices={"state": [-1, 0, 1]}, pad=pad,
                              drop_n_first_frames=-1, drop_n_last_frames=-2)
    b = ds.get_batch(range(len(ds)))
    a, ep = b["index"].numpy(), b["episode_index"].numpy()
    start = ends[ep] - np.asarray(lens)[ep]
    clamped = np.clip(a, start, ends[ep] - 1)
    assert ((a < start) | (a >= ends[ep])).any()
    np.testing.assert_array_equal(b["cam"].numpy()[:, 0, 0, 0], clamped)
    np.testing.assert_array_equal(b["task_index"].numpy(), task_index[clamped])
    assert b["task"] == [["t0", "t1"][t] for t in task_index[clamped]]
    # keys with offsets still pad at the episode's edges
    q = a[:, None] + np.array([-1, 0, 1])
    outside = (q < start[:, None]) | (q >= ends[ep][:, None])
    np.testing.assert_array_equal(b["state_is_pad"].numpy(), outside)
    if pad == "zero":
        assert (b["state"].numpy()[outside] == 0).all()


def test_every_normalizer_takes_a_feature_with_no_elements():
    st = rc.TrajectoryStore.from_arrays({"e": np.zeros((6, 0), np.float32),
                                         "e2": np.zeros((6, 3, 0)), "x": np.arange(6.0)},
                                        [3, 6], device="cpu")
    modes = ["mean_std", "min_max", "quantiles", "limits", "gaussian", "robomimic_min_max",
             "robomimic_gaussian", "robomimic_obs"]
    for mode in modes:
        ds = rc.TrajectoryDataset(st, normalize={"e": mode, "e2": mode},
                                  delta_indices={"e": [0, 1]})
        b = ds.get_batch(range(len(ds)))
        assert b["e"].shape == (6, 2, 0) and b["e2"].shape == (6, 3, 0), mode


def test_peer_normalizers_on_timestamps():
    st = rc.TrajectoryStore.from_arrays({"state": np.zeros((6, 1), np.float32)},
                                        episode_ends=[2, 6], fps=10, device="cpu",
                                        timestamps=np.concatenate([np.arange(2), np.arange(4)])
                                        / 10.0)
    for mode in ("limits", "gaussian", "robomimic_min_max", "robomimic_gaussian"):
        ds = rc.TrajectoryDataset(st, normalize={"timestamp": mode})
        ts = ds.get_batch(range(len(ds)))["timestamp"].numpy()
        assert np.isfinite(ts).all() and ts.std() > 0, mode
    lim = rc.TrajectoryDataset(st, normalize={"timestamp": "limits"})
    ts = lim.get_batch(range(len(lim)))["timestamp"].numpy()
    np.testing.assert_allclose([ts.min(), ts.max()], [-1, 1], atol=1e-6)
