"""Window index tables: which frames a dataset index reads. Pure NumPy, computed once per dataset.

The rule (DESIGN.md "Window semantics"): episode e holds global frames [s, e_end). An anchor is a
frame a with s + drop_n_first_frames <= a < e_end - drop_n_last_frames (in the episodes a dataset
selects, all by default); dataset index i is the i-th anchor in global order. For a key with
deltas d_0..d_{K-1}: q = a + d_j, is_pad[j] = q < s or q >= e_end, and the row read is
clamp(q, s, e_end - 1) (pad="edge") or the value is zero (pad="zero"). A negative drop puts
anchors outside their episode (a window that starts or ends past it: every row clamped and
masked; keys without offsets read the clamped anchor, never zeros; `index` / `frame_index`
report the anchor itself, which may lie outside the episode).

Everything here is host-side bookkeeping: the anchor table [A, 4] = (a, s, e_end, episode) that
the batch builders (ops/windows.py, NumPy and CUDA) read one row of per sample, the per-key delta
lists (from frame offsets or from LeRobot-style delta_timestamps), and the per-episode anchor
ranges that episode-uniform sampling draws from.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from pprint import pformat

import numpy as np

# columns of the anchor table
ANCHOR, START, END, EPISODE = 0, 1, 2, 3


def check_episode_ends(episode_ends, num_frames: int) -> np.ndarray:
    """episode_ends as int64 [E]: cumulative ends, strictly increasing, the last == num_frames."""
    if isinstance(episode_ends, (list, tuple, range)):
        ends = np.asarray(episode_ends)
        if ends.size == 0:
            ends = ends.astype(np.int64)
    else:
        try:
            from . import _array

            ends = _array.to_numpy(_array.as_array("episode_ends", episode_ends))
        except TypeError:
            raise TypeError("episode_ends: expected a 1-D integer array of cumulative episode "
                            f"ends, got {type(episode_ends).__name__}") from None
    if ends.dtype == np.bool_ or not np.issubdtype(ends.dtype, np.integer):
        raise TypeError(f"episode_ends: expected an integer array, got dtype {ends.dtype}")
    if ends.ndim != 1:
        raise ValueError(f"episode_ends: expected a 1-D array, got shape {ends.shape}")
    if ends.size == 0:
        raise ValueError("episode_ends: expected at least one episode, got an empty array")
    ends = ends.astype(np.int64)
    if ends[0] < 1:
        raise ValueError(f"episode_ends: expected a first end >= 1 (episodes hold at least one "
                         f"frame), got {int(ends[0])}")
    steps = np.diff(ends)
    if (steps <= 0).any():
        k = int(np.argmax(steps <= 0))
        raise ValueError(f"episode_ends: expected strictly increasing cumulative ends, got "
                         f"{int(ends[k])} followed by {int(ends[k + 1])} at position {k + 1}")
    if ends[-1] != num_frames:
        raise ValueError(f"episode_ends: expected the last end to equal the number of frames "
                         f"({num_frames}), got {int(ends[-1])}")
    return ends


def episode_starts(ends: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros(1, np.int64), ends[:-1]]).astype(np.int64)


def check_drop(name: str, value) -> int:
    """drop_n_first_frames / drop_n_last_frames as an int. A negative value extends the anchors
    past the episode's start / end: windows anchored outside their episode, every step clamped
    into it and masked (diffusion_policy's SequenceSampler with pad_before + pad_after >
    sequence_length - 1 maps to drop_n_last_frames = sequence_length - 1 - pad_before -
    pad_after < 0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {value!r}")
    return int(value)


def _host_values(seq) -> np.ndarray:
    """A NumPy copy of a list, NumPy array, or (CUDA) torch / CuPy array."""
    from . import _array

    try:
        _array.library(seq)
    except TypeError:
        return np.asarray(list(seq))
    return _array.to_numpy(seq)


def check_episodes(episodes, num_episodes: int, ids: np.ndarray | None = None
                   ) -> np.ndarray | None:
    """bool [E] mask of the episodes a dataset samples from, or None for all of them.

    episodes: episode indices (ints in [0, E), each at most once, any order - LeRobot's
    `episodes=`) or a bool mask of length E (diffusion_policy's `episode_mask`). `ids`: the
    dataset's own episode ids where they are not 0..E-1 (a LeRobot dataset's episode_index
    column); integer `episodes` then name those ids, as LeRobot's `episodes=` does."""
    if episodes is None:
        return None
    if isinstance(episodes, (str, bytes, Mapping)) or not isinstance(episodes, Iterable):
        raise TypeError(f"episodes: expected a sequence of episode indices or a bool mask of "
                        f"length {num_episodes}, got {type(episodes).__name__}")
    values = _host_values(episodes)
    if values.ndim != 1:
        raise ValueError(f"episodes: expected a 1-D sequence, got shape {values.shape}")
    if values.dtype == np.bool_:
        if values.size != num_episodes:
            raise ValueError(f"episodes: expected a bool mask of length {num_episodes} (the "
                             f"store's episodes), got length {values.size}")
        if not values.any():
            raise ValueError("episodes: expected a mask selecting at least one episode, got "
                             "all False")
        return values.copy()
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"episodes: expected integer episode indices or a bool mask, got dtype "
                        f"{values.dtype}")
    if values.size == 0:
        raise ValueError("episodes: expected at least one episode index, got none")
    values = values.astype(np.int64)
    if ids is not None:  # ids -> positions
        position = {int(e): i for i, e in enumerate(ids.tolist())}
        unknown = [int(v) for v in values if int(v) not in position]
        if unknown:
            raise ValueError(f"episodes: expected episode ids of the dataset "
                             f"({ids.tolist()[:8]}{' ...' if ids.size > 8 else ''}), got "
                             f"{unknown[0]}")
        values = np.array([position[int(v)] for v in values], dtype=np.int64)
    bad = (values < 0) | (values >= num_episodes)
    if bad.any():
        raise ValueError(f"episodes: expected episode indices in [0, {num_episodes}), got "
                         f"{int(values[np.argmax(bad)])}")
    mask = np.zeros(num_episodes, dtype=np.bool_)
    mask[values] = True
    if int(mask.sum()) != values.size:
        uniq, counts = np.unique(values, return_counts=True)
        raise ValueError(f"episodes: expected each episode at most once, got "
                         f"{int(uniq[np.argmax(counts > 1)])} repeated")
    return mask


def anchor_table(ends: np.ndarray, drop_n_first_frames: int = 0,
                 drop_n_last_frames: int = 0, episode_mask: np.ndarray | None = None,
                 keep_short_episodes: bool = False) -> np.ndarray:
    """int64 [A, 4]: (anchor frame a, episode start s, episode end e_end, episode index) of every
    anchor, in global frame order. Episodes shorter than drop_first + drop_last + 1 give none
    (with keep_short_episodes: one, their frame min(s + drop_first, e_end - 1)), as do episodes
    that episode_mask (bool [E], see check_episodes) leaves out."""
    starts = episode_starts(ends)
    lo = starts + drop_n_first_frames
    hi = ends - drop_n_last_frames
    counts = np.maximum(hi - lo, 0)
    if keep_short_episodes:
        short = counts == 0
        lo = np.where(short, np.minimum(lo, ends - 1), lo)
        counts = np.where(short, 1, counts)
    if episode_mask is not None:
        counts = np.where(episode_mask, counts, 0)
    total = int(counts.sum())
    table = np.empty((total, 4), dtype=np.int64)
    ep = np.repeat(np.arange(ends.size, dtype=np.int64), counts)
    # a = lo[ep] + (position within the episode's anchors)
    first = np.concatenate([np.zeros(1, np.int64), np.cumsum(counts)[:-1]])
    table[:, ANCHOR] = lo[ep] + (np.arange(total, dtype=np.int64) - first[ep])
    table[:, START] = starts[ep]
    table[:, END] = ends[ep]
    table[:, EPISODE] = ep
    return table


def anchor_rows(table: np.ndarray) -> np.ndarray:
    """int64 [A]: each anchor clamped into its episode - the frame a key without offsets reads
    (the anchor itself unless drops are negative)."""
    return np.minimum(np.maximum(table[:, ANCHOR], table[:, START]), table[:, END] - 1)


def episode_anchor_ranges(table: np.ndarray, num_episodes: int) -> tuple[np.ndarray, np.ndarray]:
    """(first anchor index, anchor count) per episode: dataset indices [first, first + count)."""
    counts = np.bincount(table[:, EPISODE], minlength=num_episodes).astype(np.int64)
    first = np.concatenate([np.zeros(1, np.int64), np.cumsum(counts)[:-1]])
    return first, counts


# ---------------------------------------------------------------------------------------------
# Deltas


def _delta_list(argname: str, key: str, values) -> list:
    ndim = getattr(values, "ndim", 1)  # a 0-d array / tensor is iterable in name only
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable) or ndim != 1:
        shape = "" if ndim == 1 else f" of shape {tuple(values.shape)}"
        raise TypeError(f"{argname}[{key!r}]: expected a non-empty list of offsets, got "
                        f"{type(values).__name__}{shape}")
    if hasattr(values, "tolist"):
        values = values.tolist()
    values = list(values)
    if len(values) == 0:
        raise ValueError(f"{argname}[{key!r}]: expected a non-empty list of offsets, got []")
    return values


def _check_keys(argname: str, mapping, keys) -> None:
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{argname}: expected a dict of key -> offsets, got "
                        f"{type(mapping).__name__}")
    unknown = [k for k in mapping if k not in keys]
    if unknown:
        raise ValueError(f"{argname}: expected keys of the store {sorted(keys)}, got unknown "
                         f"key(s) {unknown}")


def check_delta_timestamps(delta_timestamps: Mapping, fps: float, tolerance_s: float) -> None:
    """LeRobot's rule: every dt must satisfy |dt*fps - round(dt*fps)| / fps <= tolerance_s."""
    outside = {}
    for key, values in delta_timestamps.items():
        bad = [ts for ts in values if not abs(ts * fps - round(ts * fps)) / fps <= tolerance_s]
        if bad:
            outside[key] = bad
    if outside:
        raise ValueError(  # LeRobot's message, naming the argument and the tolerance
            "delta_timestamps: the following delta_timestamps are found outside of tolerance "
            f"range (tolerance_s={tolerance_s}).\n"
            f"Please make sure they are multiples of 1/{fps} +/- tolerance.\n"
            f"{pformat(outside)}")


def resolve_deltas(keys, delta_indices=None, delta_timestamps=None, fps=None,
                   tolerance_s: float = 1e-4) -> dict[str, np.ndarray]:
    """key -> int64 frame offsets, from delta_indices or LeRobot-style delta_timestamps.

    delta_timestamps follow LeRobot exactly: checked with `check_delta_timestamps`, then
    d = round(dt * fps) (Python's round, half to even).
    """
    if delta_indices is not None and delta_timestamps is not None:
        raise ValueError("delta_indices / delta_timestamps: expected at most one of them, got both")
    if delta_indices is None and delta_timestamps is None:
        return {}
    if delta_timestamps is not None:
        _check_keys("delta_timestamps", delta_timestamps, keys)
        if fps is None:
            raise ValueError("delta_timestamps: expected a store with fps (frames per second) to "
                             "convert seconds to frame offsets, got a store with fps=None; pass "
                             "fps= to the store or use delta_indices")
        if (isinstance(tolerance_s, bool) or not isinstance(tolerance_s, numbers.Real)
                or not tolerance_s >= 0):
            raise ValueError(f"tolerance_s: expected a number >= 0, got {tolerance_s!r}")
        lists = {}
        for key, values in delta_timestamps.items():
            values = _delta_list("delta_timestamps", key, values)
            for v in values:
                if (isinstance(v, bool) or not isinstance(v, numbers.Real)
                        or not math.isfinite(v) or not math.isfinite(v * fps)):
                    raise ValueError(f"delta_timestamps[{key!r}]: expected finite numbers of "
                                     f"seconds, got {v!r}")
            lists[key] = [float(v) for v in values]
        check_delta_timestamps(lists, fps, tolerance_s)
        out = {k: [round(d * fps) for d in v] for k, v in lists.items()}
        return {k: _offsets("delta_timestamps", k, v) for k, v in out.items()}
    _check_keys("delta_indices", delta_indices, keys)
    out = {}
    for key, values in delta_indices.items():
        values = _delta_list("delta_indices", key, values)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"delta_indices[{key!r}]: expected integer frame offsets, got "
                                f"{v!r}")
        out[key] = _offsets("delta_indices", key, [int(v) for v in values])
    return out


MAX_OFFSET = 2**31 - 1  # the batch kernel's int32 offsets; the NumPy path keeps the same limit


def _offsets(name: str, key, values: list[int]) -> np.ndarray:
    big = [v for v in values if abs(v) > MAX_OFFSET]
    if big:
        raise ValueError(f"{name}[{key!r}]: expected frame offsets within +-{MAX_OFFSET}, got "
                         f"{big[0]}")
    return np.array(values, dtype=np.int64)


def timestamps_off_grid(timestamps: np.ndarray, ends: np.ndarray, fps: float,
                        tolerance_s: float) -> str | None:
    """LeRobot 0.3's check_timestamps_sync: inside every episode consecutive timestamps differ by
    1/fps within tolerance_s (so frame offsets and time offsets agree). A message listing the
    first offenders, or None when every step is on the grid."""
    if timestamps.size < 2:
        return None
    diffs = np.diff(timestamps)
    ok = np.abs(diffs - 1.0 / fps) <= tolerance_s
    ok[ends[:-1] - 1] = True  # the step from an episode's last frame to the next episode's first
    if ok.all():
        return None
    bad = np.flatnonzero(~ok)
    ep = np.searchsorted(ends, bad, side="right")
    rows = [{"timestamps": [float(timestamps[i]), float(timestamps[i + 1])],
             "diff": float(diffs[i]), "episode_index": int(e)}
            for i, e in zip(bad[:10], ep[:10], strict=True)]
    return (f"timestamps: expected consecutive frames of an episode 1/fps = {1.0 / fps:.6g} s "
            f"apart within tolerance_s={tolerance_s}, got {bad.size} step(s) outside it (first "
            f"ones):\n{pformat(rows)}")
