"""Pure-Python reference samplers of the peer libraries, written literally from their rules
(../shared/SEMANTICS.md): one sample at a time, plain loops, no RoboCache code. Tests compare
RoboCache's batches with these element by element."""

from __future__ import annotations

import math

import numpy as np

# ---------------------------------------------------------------------------------------------
# LeRobot: LeRobotDataset.__getitem__ with delta_indices, EpisodeAwareSampler's drop rules


def lerobot_get_delta_indices(delta_timestamps: dict, fps) -> dict:
    return {key: [round(d * fps) for d in delta_ts] for key, delta_ts in delta_timestamps.items()}


def lerobot_check_delta_timestamps(delta_timestamps: dict, fps, tolerance_s) -> bool:
    for delta_ts in delta_timestamps.values():
        for ts in delta_ts:
            if not abs(ts * fps - round(ts * fps)) / fps <= tolerance_s:
                return False
    return True


def lerobot_sampler_indices(episode_ends, drop_n_first_frames=0, drop_n_last_frames=0):
    indices = []
    start = 0
    for end in episode_ends:
        indices.extend(range(start + drop_n_first_frames, end - drop_n_last_frames))
        start = end
    return indices


def lerobot_item(arrays: dict, episode_ends, delta_indices: dict, idx: int) -> dict:
    ep_idx = 0
    while episode_ends[ep_idx] <= idx:
        ep_idx += 1
    ep_start = 0 if ep_idx == 0 else int(episode_ends[ep_idx - 1])
    ep_end = int(episode_ends[ep_idx])
    item = {key: arr[idx] for key, arr in arrays.items()}
    for key, delta_idx in delta_indices.items():
        query = [max(ep_start, min(ep_end - 1, idx + delta)) for delta in delta_idx]
        item[key] = np.stack([arrays[key][q] for q in query])
        item[f"{key}_is_pad"] = np.array(
            [(idx + delta < ep_start) | (idx + delta >= ep_end) for delta in delta_idx])
    item["index"] = idx
    item["episode_index"] = ep_idx
    item["frame_index"] = idx - ep_start
    return item


def lerobot_normalize(x, stats: dict, mode: str, eps: float = 1e-8):
    """LeRobot's _NormalizationMixin._apply_transform (forward), torch float32."""
    import torch

    t = torch.as_tensor(x, dtype=torch.float32)
    st = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in stats.items()}
    if mode == "mean_std":
        return (t - st["mean"]) / (st["std"] + eps)
    lo, hi = {"min_max": ("min", "max"), "quantiles": ("q01", "q99"),
              "quantile10": ("q10", "q90")}[mode]
    denom = st[hi] - st[lo]
    denom = torch.where(denom == 0, torch.tensor(eps, dtype=torch.float32), denom)
    if mode == "min_max":
        return 2 * (t - st[lo]) / denom - 1
    return 2.0 * (t - st[lo]) / denom - 1.0


# ---------------------------------------------------------------------------------------------
# diffusion_policy: create_indices + SequenceSampler.sample_sequence


def dp_create_indices(episode_ends, sequence_length, pad_before=0, pad_after=0,
                      episode_mask=None):
    if episode_mask is None:
        episode_mask = np.ones(len(episode_ends), dtype=bool)
    pad_before = min(max(pad_before, 0), sequence_length - 1)
    pad_after = min(max(pad_after, 0), sequence_length - 1)
    indices = []
    for i in range(len(episode_ends)):
        if not episode_mask[i]:
            continue
        start_idx = 0 if i == 0 else int(episode_ends[i - 1])
        end_idx = int(episode_ends[i])
        episode_length = end_idx - start_idx
        min_start = -pad_before
        max_start = episode_length - sequence_length + pad_after
        for idx in range(min_start, max_start + 1):
            buffer_start_idx = max(idx, 0) + start_idx
            buffer_end_idx = min(idx + sequence_length, episode_length) + start_idx
            start_offset = buffer_start_idx - (idx + start_idx)
            end_offset = (idx + sequence_length + start_idx) - buffer_end_idx
            sample_start_idx = 0 + start_offset
            sample_end_idx = sequence_length - end_offset
            indices.append([buffer_start_idx, buffer_end_idx, sample_start_idx, sample_end_idx])
    return np.array(indices, dtype=np.int64).reshape(-1, 4)


def dp_sample_sequence(arrays: dict, indices, sequence_length, idx) -> dict:
    buffer_start_idx, buffer_end_idx, sample_start_idx, sample_end_idx = indices[idx]
    result = {}
    for key, input_arr in arrays.items():
        sample = input_arr[buffer_start_idx:buffer_end_idx]
        data = sample
        if (sample_start_idx > 0) or (sample_end_idx < sequence_length):
            data = np.zeros(shape=(sequence_length,) + input_arr.shape[1:], dtype=input_arr.dtype)
            if sample_start_idx > 0:
                data[:sample_start_idx] = sample[0]
            if sample_end_idx < sequence_length:
                data[sample_end_idx:] = sample[-1]
            data[sample_start_idx:sample_end_idx] = sample
        result[key] = data
    return result


# ---------------------------------------------------------------------------------------------
# robomimic: SequenceDataset.load_demo_info index logic + get_sequence_from_demo


class RobomimicSequence:
    def __init__(self, episode_ends, frame_stack=1, seq_length=1, pad_frame_stack=True,
                 pad_seq_length=True):
        self.n_frame_stack = frame_stack
        self.seq_length = seq_length
        self.pad_frame_stack = pad_frame_stack
        self.pad_seq_length = pad_seq_length
        self._index_to_demo_id = {}
        self._demo_id_to_start_indices = {}
        self._demo_id_to_demo_length = {}
        self._demo_start_frame = {}
        self.total_num_sequences = 0
        start = 0
        for ep, end in enumerate(episode_ends):
            demo_length = int(end) - start
            self._demo_start_frame[ep] = start
            start = int(end)
            self._demo_id_to_start_indices[ep] = self.total_num_sequences
            self._demo_id_to_demo_length[ep] = demo_length
            num_sequences = demo_length
            if not self.pad_frame_stack:
                num_sequences -= (self.n_frame_stack - 1)
            if not self.pad_seq_length:
                num_sequences -= (self.seq_length - 1)
            if self.pad_seq_length:
                assert demo_length >= 1
                num_sequences = max(num_sequences, 1)
            else:
                assert num_sequences >= 1
            for _ in range(num_sequences):
                self._index_to_demo_id[self.total_num_sequences] = ep
                self.total_num_sequences += 1

    def __len__(self):
        return self.total_num_sequences

    def get_sequence_from_demo(self, arrays, demo_id, index_in_demo, num_frames_to_stack,
                               seq_length):
        demo_length = self._demo_id_to_demo_length[demo_id]
        assert index_in_demo < demo_length
        seq_begin_index = max(0, index_in_demo - num_frames_to_stack)
        seq_end_index = min(demo_length, index_in_demo + seq_length)
        seq_begin_pad = max(0, num_frames_to_stack - index_in_demo)
        seq_end_pad = max(0, index_in_demo + seq_length - demo_length)
        if not self.pad_frame_stack:
            assert seq_begin_pad == 0
        if not self.pad_seq_length:
            assert seq_end_pad == 0
        s0 = self._demo_start_frame[demo_id]
        seq = {}
        for k, data in arrays.items():
            part = data[s0 + seq_begin_index: s0 + seq_end_index]
            # TensorUtils.pad_sequence(..., pad_same=True): repeat the first / last element
            before = np.repeat(part[:1], seq_begin_pad, axis=0)
            after = np.repeat(part[-1:], seq_end_pad, axis=0)
            seq[k] = np.concatenate([before, part, after], axis=0)
        pad_mask = np.array([0] * seq_begin_pad + [1] * (seq_end_index - seq_begin_index)
                            + [0] * seq_end_pad)
        return seq, pad_mask[:, None].astype(bool)

    def __getitem__(self, index):
        demo_id = self._index_to_demo_id[index]
        demo_start_index = self._demo_id_to_start_indices[demo_id]
        demo_index_offset = 0 if self.pad_frame_stack else (self.n_frame_stack - 1)
        index_in_demo = index - demo_start_index + demo_index_offset
        return demo_id, index_in_demo

    def item(self, arrays, index):
        demo_id, index_in_demo = self[index]
        seq, pad_mask = self.get_sequence_from_demo(
            arrays, demo_id, index_in_demo, num_frames_to_stack=self.n_frame_stack - 1,
            seq_length=self.seq_length)
        seq["pad_mask"] = pad_mask
        return seq

    def goal(self, arrays, index):
        # goal_mode="last": one frame (no sequence axis) at end_index_in_demo - 1
        demo_id, _ = self[index]
        demo_length = self._demo_id_to_demo_length[demo_id]
        end_index_in_demo = demo_length - (0 if self.pad_seq_length else self.seq_length - 1)
        goal, _ = self.get_sequence_from_demo(arrays, demo_id, end_index_in_demo - 1,
                                              num_frames_to_stack=0, seq_length=1)
        return {k: v[0] for k, v in goal.items()}


# ---------------------------------------------------------------------------------------------
# torch DistributedSampler's index arithmetic on a given epoch order


def distributed_indices(order, rank, num_replicas, drop_last):
    indices = list(order)
    n = len(indices)
    if drop_last and n % num_replicas != 0:
        num_samples = math.ceil((n - num_replicas) / num_replicas)
    else:
        num_samples = math.ceil(n / num_replicas)
    total_size = num_samples * num_replicas
    if not drop_last:
        padding_size = total_size - len(indices)
        if padding_size <= len(indices):
            indices += indices[:padding_size]
        else:
            indices += (indices * math.ceil(padding_size / len(indices)))[:padding_size]
    else:
        indices = indices[:total_size]
    return indices[rank:total_size:num_replicas]


# ---------------------------------------------------------------------------------------------
# diffusion_policy: LinearNormalizer (diffusion_policy/model/common/normalizer.py: _fit with its
# defaults, and _normalize forward), torch float32


def dp_fit(data, mode="limits", last_n_dims=1, output_max=1.0, output_min=-1.0, range_eps=1e-4):
    import torch

    data = torch.from_numpy(np.ascontiguousarray(data)).type(torch.float32)
    dim = 1
    if last_n_dims > 0:
        dim = int(np.prod(data.shape[-last_n_dims:]))
    data = data.reshape(-1, dim)
    input_min, _ = data.min(axis=0)
    input_max, _ = data.max(axis=0)
    input_mean = data.mean(axis=0)
    input_std = data.std(axis=0)
    if mode == "limits":
        input_range = input_max - input_min
        ignore_dim = input_range < range_eps
        input_range[ignore_dim] = output_max - output_min
        scale = (output_max - output_min) / input_range
        offset = output_min - scale * input_min
        offset[ignore_dim] = (output_max + output_min) / 2 - input_min[ignore_dim]
    else:
        ignore_dim = input_std < range_eps
        scale = input_std.clone()
        scale[ignore_dim] = 1
        scale = 1 / scale
        offset = - input_mean * scale
    return {"scale": scale, "offset": offset}


def dp_normalize(x, params):
    import torch

    scale, offset = params["scale"], params["offset"]
    x = torch.as_tensor(np.ascontiguousarray(x)).to(dtype=scale.dtype)
    src_shape = x.shape
    x = x.reshape(-1, scale.shape[0])
    x = x * scale + offset
    return x.reshape(src_shape).numpy()


# ---------------------------------------------------------------------------------------------
# robomimic: action normalization (robomimic/utils/dataset.py _compute_traj_stats,
# _aggregate_traj_stats, action_stats_to_normalization_stats; obs_utils.normalize_dict) and
# observation normalization (SequenceDataset.normalize_obs; obs_utils.normalize_obs). Both read
# each demo's rows `[()].astype('float32')` before the statistics (get_action_traj,
# normalize_obs); the normalization itself runs on the arrays as robomimic returns them.


def rm_action_stats(arr, episode_ends):
    stats = None
    start = 0
    for end in episode_ends:
        x = arr[start:int(end)].astype('float32')
        start = int(end)
        mean = x.mean(axis=0, keepdims=True)
        s = {"n": x.shape[0], "mean": mean, "sqdiff": ((x - mean) ** 2).sum(axis=0, keepdims=True),
             "min": x.min(axis=0, keepdims=True), "max": x.max(axis=0, keepdims=True)}
        if stats is None:
            stats = s
            continue
        n = stats["n"] + s["n"]
        delta = s["mean"] - stats["mean"]
        stats = {"n": n, "mean": (stats["n"] * stats["mean"] + s["n"] * s["mean"]) / n,
                 "sqdiff": stats["sqdiff"] + s["sqdiff"] + delta ** 2 * stats["n"] * s["n"] / n,
                 "min": np.minimum(stats["min"], s["min"]),
                 "max": np.maximum(stats["max"], s["max"])}
    return stats


def rm_normalization_stats(stats, norm_method):
    if norm_method == "min_max":
        range_eps = 1e-4
        input_min = stats["min"].astype(np.float32)
        input_max = stats["max"].astype(np.float32)
        output_min = -0.999999
        output_max = 0.999999
        input_range = input_max - input_min
        ignore_dim = input_range < range_eps
        input_range[ignore_dim] = output_max - output_min
        scale = input_range / (output_max - output_min)
        offset = input_min - scale * output_min
        offset[ignore_dim] = input_min[ignore_dim] - (output_max + output_min) / 2
        return {"scale": scale, "offset": offset}
    input_mean = stats["mean"].astype(np.float32)
    input_std = np.sqrt(stats["sqdiff"] / stats["n"]).astype(np.float32)
    std_eps = 1e-6
    ignore_dim = input_std < std_eps
    input_std[ignore_dim] = 1.0
    return {"scale": input_std, "offset": input_mean}


def rm_obs_normalization_stats(arr, episode_ends):
    st = rm_action_stats(arr, episode_ends)  # the same per-demo float32 statistics
    return {"mean": st["mean"], "std": np.sqrt(st["sqdiff"] / st["n"]) + 1e-3}  # std + 1e-3


def rm_normalize_obs(x, obs_stats):
    mean, std = obs_stats["mean"], obs_stats["std"]
    if len(mean.shape) - len(x.shape) == 1:
        mean, std = mean[0], std[0]
    return (x - mean) / std


def rm_normalize(x, norm_stats):
    offset, scale = norm_stats["offset"], norm_stats["scale"]
    if len(offset.shape) - len(x.shape) == 1:
        offset, scale = offset[0], scale[0]
    return (x - offset) / scale


# ---------------------------------------------------------------------------------------------
# torchrl: SliceSampler(slice_len=T, strict_length=...) - which (trajectory, start) slices it can
# draw (each trajectory equally likely, then a start uniformly among these), and the rows of a
# slice padded as with pad_output (the last real step repeated, mask False there)


def torchrl_slice_support(lengths, T, strict_length=True):
    support = {}
    for ep, L in enumerate(lengths):
        if L >= T:
            support[ep] = list(range(0, L - T + 1))
        elif not strict_length:
            support[ep] = [0]  # a short trajectory: one slice, truncated to L (then padded)
    return support


def torchrl_padded_slice(arr, ep_start, L, start, T):
    rows = [ep_start + min(start + t, L - 1) for t in range(T)]
    mask = np.array([start + t < L for t in range(T)])
    return arr[rows], mask
