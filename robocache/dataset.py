"""TrajectoryDataset: windows of a TrajectoryStore as a torch Dataset with whole-batch access.

Dataset index i is the i-th anchor frame (windows.py has the rule; DESIGN.md "Window semantics").
`ds[i]` is one sample, `ds.get_batch(indices)` the batched dict, `ds.__getitems__(indices)` the
samples of one batch built at once (torch's own DataLoader, which calls __getitems__ when a dataset
has it, collates them back into that batch for free; a custom collate_fn gets the samples, as
torch's contract says), and robocache.DataLoader builds batches straight from the device (one
kernel launch per batch on a CUDA store).

A sample / batch holds, per key, the frames at its offsets ([B, K, *feature]; [B, *feature] for a
key without offsets), `{key}_is_pad` (bool [B, K], True = padded, LeRobot's convention) for keys
with offsets, and `index` (the anchor's global frame), `episode_index`, `frame_index` (int64 [B]).
A store with timestamps also gives `timestamp` (float32, like LeRobot), and a store with task
strings (LeRobot's meta/tasks) `task`, a list of B strings (see return_task).

Output dtypes: floating keys (float16/bfloat16/float32/float64) and normalized keys come out as
float32 unless `dtype` says otherwise; integer and bool keys keep their dtype (copied exactly).
Camera-frame keys (store.image_keys) come out as raw uint8 frames [B, K, H, W, C] gathered from
the store, or transformed when `image_transforms[key]` is given:
- an `rc.ImageTransform(crop=..., resize=..., mean=..., std=..., out_dtype=...)`: one launch per
  key and batch reads the store's uint8 frames at the window's rows and writes the cropped,
  resized, normalized [B, K, C, h, w] tensor (ops/images.py has the exact semantics). Padded
  frames follow the dataset's pad rule (edge: the clamped frame; zero: an all-zero image).
  Random crops / jitter are keyed by (seed, epoch, batch number) and the camera key (each camera
  draws its own, as a per-key transform in LeRobot, robomimic or diffusion_policy does):
  robocache.DataLoader passes its own (the batch number counts across ranks); direct
  `get_batch` / `__getitems__` calls use seed 0 (in a torch DataLoader worker: the worker's
  seed, fresh every epoch), epoch 0 and a per-dataset call counter.
- any callable `fn(frames, rows, is_pad)`: `frames` is the store's array, `rows` the clamped
  frame rows (int64 [B, K] or [B]) and `is_pad` the padding mask, bool of `rows`' shape (all
  False for a key without offsets). A TypeError raised inside it is its own, passed on as is.
A CUDA store made with frames_on_host=True keeps its camera keys in pinned host memory: the image
kernel reads them over the bus (raw uint8 frames [B, K, H, W, C] without a transform).
A LeRobot video key given exactly one offset comes out without the time axis ([B, H, W, C], or
[B, C, h, w] transformed; a custom callable's output is left as it returns it), as LeRobotDataset
returns it (it squeezes decoded video frames; its image keys stored in parquet and every other
key keep the axis); its `_is_pad` keeps [B, 1].

With torch's DataLoader, a CUDA store needs num_workers=0 (CUDA does not survive fork);
robocache.DataLoader builds batches in the main process anyway.
"""

from __future__ import annotations

import numbers
import operator
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.utils.data

from . import _array, _mapped, _peer_norm
from . import windows as W
from .ops import _random
from .ops import images as _images
from .ops.images import ImageTransform
from .ops.windows import MAX_KEYS, META_KEYS, OUT_FLOAT, WindowKey, WindowOp
from .store import TrajectoryStore

PAD_MODES = ("edge", "zero")
NORM_MODES = {  # mode -> (kernel formula, low stat, high stat or None for mean_std)
    "mean_std": ("affine", "mean", "std"),
    "min_max": ("range", "min", "max"),
    "quantiles": ("range", "q01", "q99"),
    "quantile10": ("range", "q10", "q90"),
    "identity": (None, None, None),
}
FORMULAS = {"affine": "(x - a) / b", "range": "2 * (x - a) / b - 1", "scale_offset": "x * a + b"}
# the peers' own normalizers, fitted on the store's frames (robocache/_peer_norm.py)
PEER_NORM_MODES = {
    "limits": ("diffusion_policy", "limits"),      # LinearNormalizer(mode="limits")
    "gaussian": ("diffusion_policy", "gaussian"),  # LinearNormalizer(mode="gaussian")
    "robomimic_min_max": ("robomimic", "min_max"),    # action_config normalization="min_max"
    "robomimic_gaussian": ("robomimic", "gaussian"),  # action_config normalization="gaussian"
    "robomimic_obs": ("robomimic", "obs"),            # SequenceDataset(hdf5_normalize_obs=True)
}


class WindowBatch(dict):
    """A batch: a dict of batched tensors (get_batch, robocache.DataLoader, and what torch's
    default_collate makes of a BatchSamples)."""


class Sample(dict):
    """One sample of a BatchSamples: a dict equal to dataset[i] (views of the batch's rows)."""


def sample_of(batch: Mapping, j: int) -> dict:
    """Row j of a batch: each key's tensor without the batch dimension (views)."""
    return {k: v[j] for k, v in batch.items()}


class BatchSamples(Sequence):
    """TrajectoryDataset.__getitems__(indices), as torch's Dataset contract asks: the samples of
    `indices` in order (len = len(indices), item j equals dataset[indices[j]]), so a custom
    collate_fn or a StackDataset gets what it expects. They are made on access from one batch
    built for all of them at once, `.batch` (a WindowBatch); torch's default_collate returns
    that batch itself, so torch's DataLoader costs no per-sample work."""

    __slots__ = ("batch", "_n")

    def __init__(self, batch: WindowBatch):
        self.batch, self._n = batch, len(batch["index"])  # "index": in every batch

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(self._n))]
        j = operator.index(j)
        if not -self._n <= j < self._n:
            raise IndexError(f"sample {j} of a batch of {self._n}" + (
                " (an empty batch: torch's default_collate cannot collate one; .batch is the "
                "empty batched dict)" if self._n == 0 else ""))
        return Sample(sample_of(self.batch, j))

    def __repr__(self) -> str:
        return f"BatchSamples({self._n} samples, keys {list(self.batch)})"


def _collate_samples(batch, *, collate_fn_map=None):
    if isinstance(batch, BatchSamples):  # the dataset's own batch: already collated
        return batch.batch
    # samples on their own (a StackDataset's, a list built by hand): stacked as torch stacks dicts
    from torch.utils.data._utils.collate import collate
    return WindowBatch(collate([dict(s) for s in batch], collate_fn_map=collate_fn_map))


def _register_collate() -> None:
    try:
        from torch.utils.data._utils.collate import default_collate_fn_map
    except ImportError:  # pragma: no cover - very old torch
        return
    default_collate_fn_map.setdefault(Sample, _collate_samples)


_register_collate()


def _norm_mode(key: str, mode) -> str:
    value = getattr(mode, "value", mode)
    if not isinstance(value, str) or (value.lower() not in NORM_MODES
                                      and value.lower() not in PEER_NORM_MODES):
        raise ValueError(f"normalize[{key!r}]: expected one of "
                         f"{list(NORM_MODES) + list(PEER_NORM_MODES)}, got {mode!r}")
    return value.lower()


class TrajectoryDataset(torch.utils.data.Dataset):
    """Windowed samples of a TrajectoryStore (see the module docstring for what a sample holds).

    delta_indices / delta_timestamps: per key, frame offsets or (LeRobot-style) seconds; keys
    without offsets give the anchor frame only. drop_n_first_frames / drop_n_last_frames: anchors
    skip that many frames at each episode's start / end. pad: "edge" repeats the episode's first /
    last frame, "zero" gives zeros. normalize: key -> "mean_std" | "min_max" | "quantiles" |
    "quantile10" (LeRobot's formulas; eps = normalize_eps), "limits" | "gaussian"
    (diffusion_policy's LinearNormalizer fitted on the store's frames), "robomimic_min_max" |
    "robomimic_gaussian" (robomimic's action normalization) or "robomimic_obs" (robomimic's
    observation normalization, hdf5_normalize_obs; float64 keys in float64 arithmetic as
    robomimic's NumPy computes them, rounded once to the output dtype; "next_obs/<k>" with the
    statistics of "obs/<k>", as robomimic); "identity" leaves a key as it is (a key listed for
    normalization by a config that wants none for it); stats:
    key -> {stat: array} to use instead of the store's shipped or computed statistics. keys:
    which store keys to return (default all). dtype: output dtype of floating / normalized keys
    (str), or per key (dict; "keep" copies the store's dtype). episodes: sample only these
    episodes - episode indices (LeRobot's `episodes=`: the dataset's own episode ids where a
    LeRobot store keeps ids other than 0..E-1) or a bool mask over the store's episodes
    (diffusion_policy's `episode_mask`, e.g. a train / validation split of one store); windows
    still pad at their own episode's edges, `index` / `episode_index` stay the store's, and
    normalization statistics stay the whole store's (as LeRobot's meta/stats.json and
    diffusion_policy's normalizer).
    keep_short_episodes: an episode the drops leave without anchors keeps one, its frame
    min(s + drop_n_first_frames, e - 1) (with drop_n_first_frames=0: its first frame, so the
    window starts at the episode and pads past its end). With delta_indices range(T),
    drop_n_last_frames=T-1 and DataLoader(sampling="episode") this is torchrl's
    SliceSampler(slice_len=T, strict_length=False) with padded output; without it,
    strict_length=True.
    return_task: add "task", the samples' task strings (a list; LeRobot's item["task"], what
    language-conditioned policies read) from the task_index key and store.meta["tasks"];
    None (default) = when the store has them (LeRobot datasets with tasks).
    goal_keys: output name -> store key; each sample also gets that key's frame at its
    episode's goal row, the last frame an anchor may take: e - 1 - drop_n_last_frames, clamped
    to the episode (robomimic's goal_mode="last": goal_keys={"goal_obs/<k>": "next_obs/<k>"},
    with the robomimic mapping of seq_length to drop_n_last_frames). One frame, no time axis,
    no mask. Low-dimensional goals are gathered once per frame when the dataset is made (the
    key's size again); camera goals keep one int64 row per frame and read the store's frames.
    """

    def __init__(self, store: TrajectoryStore, delta_indices: Mapping | None = None,
                 delta_timestamps: Mapping | None = None, drop_n_first_frames: int = 0,
                 drop_n_last_frames: int = 0, pad: str = "edge",
                 normalize: Mapping | None = None, stats: Mapping | None = None,
                 tolerance_s: float = 1e-4, *, keys=None, dtype=None,
                 normalize_eps: float = 1e-8,
                 image_transforms: Mapping[str, Callable] | None = None,
                 episodes=None, return_task: bool | None = None,
                 keep_short_episodes: bool = False, goal_keys: Mapping[str, str] | None = None):
        if not isinstance(store, TrajectoryStore):
            raise TypeError(f"store: expected a robocache.TrajectoryStore, got "
                            f"{type(store).__name__}")
        if pad not in PAD_MODES:
            raise ValueError(f"pad: expected one of {list(PAD_MODES)}, got {pad!r}")
        self._store = store
        self._pad = pad
        sources = {k: store[k] for k in store.keys if k not in META_KEYS}
        if store.timestamps is not None and "timestamp" not in sources:
            sources["timestamp"] = store.timestamps
        names = tuple(sources)
        deltas = W.resolve_deltas(_with_meta(names, store), delta_indices, delta_timestamps,
                                  store.fps, tolerance_s)
        for k in deltas:
            if k in META_KEYS:
                raise ValueError(f"delta_indices: {k!r} is computed by the dataset (the anchor's "
                                 f"{k}); offsets on it are not supported")
        if delta_timestamps is not None and store.timestamps is not None:
            # LeRobot >= 0.4 maps seconds to frame offsets without checking the timestamps
            # (0.3 refused such a dataset): serve it, and say which frames are off the grid
            problem = W.timestamps_off_grid(store._timestamps_host, store._ends, store.fps,
                                            tolerance_s)
            if problem is not None:
                warnings.warn(f"{problem}\ndelta_timestamps are applied as frame offsets "
                              f"(d = round(dt * fps)), as LeRobot does", UserWarning,
                              stacklevel=2)
        goal_names = tuple(goal_keys) if isinstance(goal_keys, Mapping) else ()
        self._keys = self._select_keys(keys, names, deltas, goal_names)
        self._deltas = {k: deltas[k] for k in self._keys if k in deltas}
        first = W.check_drop("drop_n_first_frames", drop_n_first_frames)
        last = W.check_drop("drop_n_last_frames", drop_n_last_frames)
        self._episode_ids = _stored_ids(store)  # see _stored_episode_ids
        self._episode_ids_on: dict = {}
        chosen = W.check_episodes(episodes, store.num_episodes, self._episode_ids)
        if not isinstance(keep_short_episodes, bool):
            raise TypeError(f"keep_short_episodes: expected True or False, got "
                            f"{keep_short_episodes!r}")
        self._anchors = W.anchor_table(store._ends, first, last, chosen, keep_short_episodes)
        if self._anchors.shape[0] == 0:
            lengths = store.episode_lengths if chosen is None else store.episode_lengths[chosen]
            which = "" if chosen is None else f" among the {lengths.size} selected by episodes="
            longest = f"{int(lengths.max())} frames" if lengths.size else "no episode"
            raise ValueError(
                f"drop_n_first_frames / drop_n_last_frames: expected episodes{which} longer "
                f"than drop_n_first_frames + drop_n_last_frames = {first + last} frames, got "
                f"none (longest: {longest}): no anchors")
        self._drop = (first, last)
        self._task_of_anchor = self._anchor_tasks(return_task)
        # goals: output name -> store key; their window sources (gathered values or rows)
        self._store_key = self._check_goal_keys(goal_keys, names)
        like = _table_placement(store) if store.is_cuda else None  # where the tables go
        goal_sources = self._goal_sources(last, like)
        for name, key in self._store_key.items():
            sources[name] = store[key]
        self._keys = self._keys + tuple(self._store_key)
        self._image_keys = tuple(k for k in self._keys
                                 if self._store_key.get(k, k) in store.image_keys)
        if image_transforms is not None and not isinstance(image_transforms, Mapping):
            raise TypeError(f"image_transforms: expected a dict of camera key -> transform "
                            f"(e.g. {{{(self._image_keys or ('<camera key>',))[0]!r}: "
                            f"rc.ImageTransform(...)}}), got {type(image_transforms).__name__}")
        transforms = dict(image_transforms or {})
        for k in transforms:
            if k not in self._image_keys:
                raise ValueError(f"image_transforms: expected camera-frame keys "
                                 f"{list(self._image_keys)}, got {k!r}")
        self._transforms = transforms
        self._image_plans = {}
        for k, t in transforms.items():
            if isinstance(t, ImageTransform):
                try:
                    self._image_plans[k] = t.plan(_frame_shape(sources[k]))
                except (ValueError, TypeError) as exc:  # say which camera's transform it is
                    raise type(exc)(f"image_transforms[{k!r}]: {exc}") from None
            elif not callable(t) or _takes_three(t) is False:
                raise TypeError(_not_a_transform(k, t))
        for k in self._image_keys:  # host-resident frames: the image kernel reads them raw
            if self._store_key.get(k, k) in store.host_keys and k not in transforms:
                self._image_plans[k] = _images.make_plan(_frame_shape(sources[k]),
                                                         out_dtype="uint8", layout="BKHWC",
                                                         scale=None)
        # LeRobotDataset squeezes the time axis of a video key read at one offset (its frames
        # .squeeze(0)); its image keys stored in parquet, and every other key, keep it
        features = store.meta.get("features") if store.meta.get("format") == "lerobot" else None
        self._squeezed = frozenset(
            k for k in self._image_keys if len(self._deltas.get(k, ())) == 1
            and isinstance(features, Mapping) and isinstance(features.get(k), Mapping)
            and features[k].get("dtype") == "video")
        self._host_frame_ptrs: dict[str, np.uint64] = {}
        self._private_frames: dict[str, np.ndarray | None] = {}  # see _frames
        self._calls = 0  # random-draw batch counter of direct __getitems__ calls
        self._norm = self._resolve_norm(normalize, stats, normalize_eps, sources)
        dtype = self._check_dtype(dtype)
        wkeys = []
        for k in self._keys:
            src = sources[k]
            d = self._deltas.get(k)
            if k in goal_sources:  # the goal rows (camera keys) or frames, read at the anchor
                g = goal_sources[k]
                if k in self._image_keys:
                    wkeys.append(WindowKey(k, g, None))  # int64 rows, copied as they are
                    continue
                src = g
            elif k in self._image_keys:
                wkeys.append(WindowKey(k, src, d, kind="rows"))
                continue
            norm = self._norm.get(k)
            wkeys.append(WindowKey(k, src, d, out_dtype=self._out_dtype(k, src, dtype, norm),
                                   norm=None if norm is None else norm["kind"],
                                   norm_a=None if norm is None else norm["a"],
                                   norm_b=None if norm is None else norm["b"],
                                   norm_f64=norm is not None and norm.get("f64", False)))
        self._sources = sources
        if len(wkeys) > MAX_KEYS:  # the batch kernel's limit, kept on the NumPy path too
            raise ValueError(f"keys: expected at most {MAX_KEYS} keys per dataset (the batch "
                             f"kernel's descriptor), got {len(wkeys)}; choose the ones to "
                             f"return with keys=[...]")
        self._op = WindowOp(wkeys, self._anchors, zero_pad=pad == "zero", like=like)
        # the order of a sample's entries: each key with its mask, then the anchor's indices
        self._order = [n for k in self._keys for n in (k, f"{k}_is_pad")
                       if n == k or k in self._deltas] + list(META_KEYS)
        self._check_output_names()

    # -----------------------------------------------------------------------------------------
    # construction helpers

    def _anchor_tasks(self, return_task) -> np.ndarray | None:
        """object [A]: the task string of every anchor (LeRobot's item["task"]: the anchor
        row's task_index looked up in the dataset's task list, store.meta["tasks"]), or None
        when batches carry no task strings."""
        if return_task is not None and not isinstance(return_task, bool):
            raise TypeError(f"return_task: expected None (auto), True or False, got "
                            f"{return_task!r}")
        store = self._store
        tasks = store.meta.get("tasks")
        has = ("task_index" in store and isinstance(tasks, (list, tuple))
               and any(t is not None for t in tasks))
        if return_task is False or (return_task is None and not has):
            return None
        if not has:
            got = "no task_index key" if "task_index" not in store else "no task strings"
            raise ValueError(f"return_task: expected a store with a 'task_index' key and task "
                             f"strings in store.meta['tasks'] (LeRobot's meta/tasks), got {got}")
        frame_task = _array.to_numpy(store["task_index"]).reshape(store.num_frames, -1)[:, 0]
        if frame_task.dtype.kind not in "iu":
            raise ValueError(f"return_task: expected an integer 'task_index' key, got dtype "
                             f"{frame_task.dtype}")
        rows = W.anchor_rows(self._anchors)  # as the anchor's keys read it (negative drops)
        anchor_task = frame_task[rows].astype(np.int64)
        names = np.empty(len(tasks), dtype=object)
        names[:] = list(tasks)
        named = np.array([t is not None for t in tasks], dtype=bool)
        ok = (anchor_task >= 0) & (anchor_task < len(tasks))
        ok[ok] = named[anchor_task[ok]]
        if not ok.all():
            i = int(np.argmax(~ok))
            raise ValueError(f"return_task: frame {int(rows[i])} has "
                             f"task_index {int(anchor_task[i])}, which names no task in "
                             f"store.meta['tasks'] ({len(tasks)} entries)")
        return names[anchor_task]

    def _add_tasks(self, batch: WindowBatch, idx) -> WindowBatch:
        """batch["task"] = the samples' task strings (a list, as torch's collate makes it)."""
        if self._task_of_anchor is not None:
            batch["task"] = self._task_of_anchor[idx].tolist()
        return batch

    def _check_output_names(self) -> None:
        """Every entry of a sample once: a store key named like another key's mask ("x_is_pad")
        or like the task strings ("task") would be overwritten by them."""
        names = self._order + (["task"] if self._task_of_anchor is not None else [])
        seen: set[str] = set()
        for n in names:
            if n in seen:
                what = ("the task strings (or pass return_task=False)" if n == "task"
                        else f"the is_pad mask of {n[:-len('_is_pad')]!r}")
                raise ValueError(f"keys: the store key {n!r} has the name of {what}; leave it "
                                 f"out with keys=[...]")
            seen.add(n)

    def _check_goal_keys(self, goal_keys, names) -> dict[str, str]:
        if goal_keys is None:
            return {}
        if not isinstance(goal_keys, Mapping):
            raise TypeError(f"goal_keys: expected a dict of output name -> store key, got "
                            f"{type(goal_keys).__name__}")
        taken = set(names) | set(META_KEYS) | {"task"}
        stored = [k for k in names if k in self._store.keys]
        out = {}
        for name, key in goal_keys.items():
            if not isinstance(name, str) or not name or name in taken \
                    or name.endswith("_is_pad"):
                raise ValueError(f"goal_keys: expected output names that are not store keys, "
                                 f"masks, {list(META_KEYS)} or 'task', got {name!r}")
            if key not in stored:
                raise ValueError(f"goal_keys[{name!r}]: expected a key of the store "
                                 f"{stored}, got {key!r}")
            out[name] = key
        return out

    def _goal_sources(self, drop_last: int, like) -> dict:
        """Per goal output: an array [N, ...] indexed by frame (the window kernel reads it at
        the anchor's clamped frame): the goal frame's values for low-dimensional keys, its row
        (int64 [N]) for camera keys, next to `like` (the tables' placement; None: the host).
        Goal row of episode [s, e): clamp(e - 1 - drop_last)."""
        if not self._store_key:
            return {}
        store = self._store
        starts, ends = store.episode_starts, store.episode_ends
        goal = np.clip(ends - 1 - drop_last, starts, ends - 1).astype(np.int64)
        rows_host = np.repeat(goal, store.episode_lengths)
        rows = rows_host if like is None else _array.from_numpy(rows_host, like, "int64")
        out = {}
        for name, key in self._store_key.items():
            if key in store.image_keys:
                out[name] = rows
            elif like is None:
                out[name] = np.take(store[key], rows_host, axis=0)
            else:
                out[name] = store[key].index_select(0, rows)
        return out

    def _select_keys(self, keys, names, deltas, goal_names=()) -> tuple[str, ...]:
        """The store keys a sample returns (goals, always returned, are added after)."""
        if keys is None:
            return names
        if isinstance(keys, str):
            keys = [keys]
        if not isinstance(keys, Iterable):
            raise TypeError(f"keys: expected a list of store keys, got {type(keys).__name__}")
        keys = [k for k in keys if k not in goal_names]
        unknown = [k for k in keys if k not in names]
        if unknown:
            raise ValueError(f"keys: expected keys of the store {list(names)}, got unknown "
                             f"key(s) {unknown}")
        for k in deltas:  # a key with offsets is always returned
            if k not in keys:
                keys.append(k)
        return tuple(dict.fromkeys(keys))

    def _resolve_norm(self, normalize, stats, eps, sources) -> dict[str, dict]:
        if stats is not None and not isinstance(stats, Mapping):  # also without normalize=
            raise TypeError(f"stats: expected a dict of key -> {{stat: array}}, got "
                            f"{type(stats).__name__}")
        if normalize is None:
            return {}
        if not isinstance(normalize, Mapping):
            raise TypeError(f"normalize: expected a dict of key -> mode, got "
                            f"{type(normalize).__name__}")
        if (isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0):
            raise ValueError(f"normalize_eps: expected a number >= 0, got {eps!r}")
        out, modes = {}, {}
        for key, mode in normalize.items():
            if key not in self._keys:
                raise ValueError(f"normalize: expected keys of the dataset {list(self._keys)}, "
                                 f"got {key!r}")
            mode = modes[key] = _norm_mode(key, mode)
            if key in self._image_keys and mode != "identity":  # identity asks for nothing
                raise ValueError(f"normalize[{key!r}]: camera-frame keys are normalized by "
                                 f"their image transform, not here (expected 'identity' or no "
                                 f"entry, got {mode!r})")
            if mode in PEER_NORM_MODES:
                out[key] = self._peer_norm(key, mode, stats, sources[key])
                continue
            kind, lo, hi = NORM_MODES[mode]
            if kind is None:
                continue
            F = int(np.prod(sources[key].shape[1:], dtype=np.int64))
            st = self._stats_for(key, stats)
            _check_stats_present(key, mode, st, (lo, hi))
            a = _stat_array(key, lo, st[lo], F)
            b = _stat_array(key, hi, st[hi], F)
            e32 = np.float32(eps)
            if kind == "affine":  # LeRobot: (x - mean) / (std + eps), float32
                b = (b + e32).astype(np.float32)
            else:  # LeRobot: denom = hi - lo, eps where it is 0; 2 (x - lo) / denom - 1
                b = (b - a).astype(np.float32)
                b = np.where(b == 0, e32, b).astype(np.float32)
            out[key] = {"mode": mode, "kind": kind, "a": a, "b": b}
        if stats is not None:  # a misspelt key would leave its statistics unused, silently
            known = set(self._keys) | set(self._store.keys) | set(META_KEYS) | {"timestamp"}
            unknown = [k for k in stats if k not in known]  # or features not loaded (LeRobot's
            missed = [k for k, m in modes.items()            # whole stats.json): said only
                      if m != "identity"                          # where a normalized key
                      and self._given_stats_key(k, stats, m) is None]  # finds none
            if unknown and missed:
                warnings.warn(f"stats: no entry for {missed} (normalized with the store's "
                              f"statistics); stats has keys that are not the dataset's or its "
                              f"store's: {unknown[:8]} - misspelt?", UserWarning, stacklevel=3)
        return out

    def _peer_norm(self, key: str, mode: str, stats, src) -> dict:
        """A peer's normalizer fitted on the store's frames of `key` (as diffusion_policy's
        LinearNormalizer.fit and robomimic's statistics are: robomimic's demo by demo in
        float32, on host copies of each episode's rows), or on stats[key] when given (min /
        max / mean / std per feature, count: frames; "std" is the frames' std, robomimic_obs
        adds its 1e-3); shipped stats are not used: LeRobot's std and quantiles are not what
        these peers fit."""
        library, peer_mode = PEER_NORM_MODES[mode]
        F = int(np.prod(src.shape[1:], dtype=np.int64))
        if self._given_stats_key(key, stats, mode) is not None:
            given = self._stats_for(key, stats, mode)
            need = ("min", "max") if peer_mode in ("limits", "min_max") else ("mean", "std")
            _check_stats_present(key, mode, given, need)
            # used as given, one per feature (no pooling, no ddof correction)
            st = {n: _stat_array(key, n, given[n], F).astype(np.float64) for n in need}
            st["reps"] = 1
        elif library == "robomimic":  # robomimic's float32 per-demo statistics
            st = _peer_norm.robomimic_stats(
                _peer_norm.host_episodes(self._robomimic_stats_source(key, peer_mode, src),
                                         self._store.episode_ends))
        else:  # LinearNormalizer.fit's own torch reductions on the key's frames
            st = _peer_norm.diffusion_policy_stats(_array.to_numpy(src))
        fit = _peer_norm.diffusion_policy if library == "diffusion_policy" else _peer_norm.robomimic
        kind, a, b = fit(peer_mode, st)
        # robomimic normalizes observations as stored (float64 ones in float64 arithmetic);
        # actions come from its cache (hdf5_cache_mode "all" / "low_dim") cast to float32
        f64 = peer_mode == "obs" and _peer_norm.promotes_to_f64(_array.dtype_name(src))
        return {"mode": mode, "kind": kind, "a": a.reshape(-1).astype(np.float32),
                "b": b.reshape(-1).astype(np.float32), "f64": f64}

    def _robomimic_stats_source(self, key: str, peer_mode: str, src):
        """robomimic normalizes next_obs (and goals) with the statistics of the observations:
        "next_obs/<k>" (or a goal read from it) is fitted on "obs/<k>" where the store has it
        (with the same feature shape)."""
        key = self._store_key.get(key, key)
        if peer_mode == "obs" and key.startswith("next_obs/"):
            obs_key = "obs/" + key[len("next_obs/"):]
            if obs_key in self._store.keys and \
                    tuple(self._store[obs_key].shape[1:]) == tuple(src.shape[1:]):
                return self._store[obs_key]
        return src

    def _given_stats_key(self, key: str, stats, mode=None) -> str | None:
        """The entry of the user's stats= for `key`: its own, else (a goal) its store key's,
        else with mode "robomimic_obs" for "next_obs/<k>" (or a goal read from it) that of
        "obs/<k>", whose statistics robomimic normalizes next_obs and goals with."""
        if stats is None:
            return None
        skey = self._store_key.get(key, key)
        for k in (key, skey):
            if k in stats:
                return k
        if mode == "robomimic_obs" and skey.startswith("next_obs/"):
            obs_key = "obs/" + skey[len("next_obs/"):]
            if obs_key in stats:
                return obs_key
        return None

    def _stats_for(self, key: str, stats, mode=None) -> dict:
        given = self._given_stats_key(key, stats, mode)
        if given is not None:
            st = stats[given]
            if not isinstance(st, Mapping):
                raise TypeError(f"stats[{given!r}]: expected a dict of stat -> array, got "
                                f"{type(st).__name__}")
            return st
        shipped = self._store.shipped_stats
        skey = self._store_key.get(key, key)
        if shipped is not None and skey in shipped:
            return shipped[skey]
        return self._computed_stats(key)

    def _computed_stats(self, key: str) -> dict:
        """The store's own statistics of `key` (timestamps too, which are not a stored key; a
        goal's are its store key's)."""
        key = self._store_key.get(key, key)
        if key == "timestamp" and key not in self._store:
            from .stats import feature_stats

            return feature_stats(self._store.timestamps)
        return self._store.stats([key])[key]

    def _check_dtype(self, dtype):
        """The dtype argument as names (torch / NumPy dtypes are accepted as well as names):
        None, one name, or a dict of dataset key -> name; each a float dtype or "keep"."""
        if dtype is None:
            return None
        if isinstance(dtype, Mapping):
            dtype = {k: _array.dtype_name_of(v) for k, v in dtype.items()}
            for k in dtype:
                if k not in self._keys:
                    raise ValueError(f"dtype: expected keys of the dataset {list(self._keys)}, "
                                     f"got {k!r}")
                if k in self._image_keys:
                    raise ValueError(f"dtype[{k!r}]: a camera key's dtype is its image "
                                     f"transform's (out_dtype), not set here")
            wants = list(dtype.values())
        else:
            dtype = _array.dtype_name_of(dtype)
            if not isinstance(dtype, str):
                raise TypeError(f"dtype: expected a dtype name or a dict of key -> name, got "
                                f"{type(dtype).__name__}")
            wants = [dtype]
        for want in wants:
            if want != "keep" and want not in OUT_FLOAT:
                raise ValueError(f"dtype: expected one of {list(OUT_FLOAT)} or 'keep', got "
                                 f"{want!r}")
        return dtype

    def _out_dtype(self, key: str, src, dtype, norm) -> str | None:
        """The output dtype of a (non-camera) key from the checked dtype argument."""
        in_dt = _array.dtype_name(src)
        want = dtype.get(key) if isinstance(dtype, Mapping) else dtype
        floating = in_dt in OUT_FLOAT
        if want == "keep":
            if norm is None:
                return None
            if not floating:
                raise ValueError(f"dtype[{key!r}]: 'keep' cannot hold normalized values of an "
                                 f"{in_dt} key; use a float dtype")
            return in_dt
        if want is not None:
            if floating or norm is not None or isinstance(dtype, Mapping):
                return want
            return None
        return "float32" if (floating or norm is not None) else None

    # -----------------------------------------------------------------------------------------
    # what it is

    def __len__(self) -> int:
        return int(self._anchors.shape[0])

    @property
    def store(self) -> TrajectoryStore:
        return self._store

    @property
    def keys(self) -> tuple[str, ...]:
        """The data keys of a sample (besides masks and index / episode_index / frame_index)."""
        return self._keys

    @property
    def delta_indices(self) -> dict[str, list[int]]:
        return {k: [int(x) for x in v] for k, v in self._deltas.items()}

    @property
    def image_keys(self) -> tuple[str, ...]:
        return self._image_keys

    @property
    def device(self) -> str:
        return self._store.device

    @property
    def pad(self) -> str:
        return self._pad

    @property
    def normalization(self) -> dict[str, dict]:
        """key -> {"mode", "formula", "a", "b"}: the float32 parameters per feature of the
        formula "(x - a) / b" (mean_std, robomimic_*), "2 * (x - a) / b - 1" (min_max,
        quantiles) or "x * a + b" (diffusion_policy's limits / gaussian: a = scale, b = offset)."""
        return {k: {"mode": v["mode"], "formula": FORMULAS[v["kind"]], "a": v["a"].copy(),
                    "b": v["b"].copy()} for k, v in self._norm.items()}

    @property
    def anchors(self) -> np.ndarray:
        """int64 [len, 4]: (anchor frame, episode start, episode end, episode) per index."""
        return self._anchors.copy()

    def episode_anchor_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """(first dataset index, number of anchors) of every episode of the store."""
        return W.episode_anchor_ranges(self._anchors, self._store.num_episodes)

    def __repr__(self) -> str:
        return (f"TrajectoryDataset({len(self)} anchors, keys={list(self._keys)}, "
                f"deltas={self.delta_indices}, pad={self._pad!r}, device={self.device!r})")

    # -----------------------------------------------------------------------------------------
    # samples and batches

    def _check_indices(self, indices) -> np.ndarray:
        if isinstance(indices, torch.Tensor):
            idx = indices.detach().cpu().numpy()
        else:
            idx = np.asarray(indices)
        if idx.ndim > 1:
            raise ValueError(f"indices: expected a 1-D list of dataset indices, got shape "
                             f"{idx.shape}")
        if idx.size == 0:
            return np.zeros(0, np.int64)
        if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"indices: expected integers, got dtype {idx.dtype}")
        if idx.dtype.kind == "u" and int(idx.max()) >= len(self):  # before int64 would wrap
            raise IndexError(f"indices: expected values in [{-len(self)}, {len(self)}), got "
                             f"{int(idx.max())}")
        idx = idx.astype(np.int64).reshape(-1)
        n = len(self)
        bad = (idx < -n) | (idx >= n)
        if bad.any():
            raise IndexError(f"indices: expected values in [{-n}, {n}), got "
                             f"{int(idx[np.argmax(bad)])}")
        return np.where(idx < 0, idx + n, idx)

    def __getitem__(self, index) -> dict:
        if isinstance(index, torch.Tensor):
            if index.ndim != 0:
                raise TypeError(f"index: expected an int, got a tensor of shape "
                                f"{tuple(index.shape)} (get_batch takes several)")
            index = index.item()
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise TypeError(f"index: expected an int, got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index: expected an int in [{-n}, {n}), got {int(index)}")
        return sample_of(self.get_batch([int(index)]), 0)

    def __getitems__(self, indices) -> BatchSamples:
        """torch's batched access: the samples of `indices`, built as one batch (BatchSamples;
        torch's default_collate turns it into that batch, a WindowBatch, without a copy)."""
        return BatchSamples(self.get_batch(indices))

    def get_batch(self, indices) -> WindowBatch:
        """The batch of `indices` (list / array / tensor of ints) as one dict of tensors."""
        idx = self._check_indices(indices)
        # in a torch DataLoader worker, key the draws by the worker's seed (torch draws a fresh
        # base seed per epoch, + worker id), or every worker and epoch repeats the same crops
        info = torch.utils.data.get_worker_info()
        draw = (0 if info is None else info.seed % 2**64, 0, self._calls)
        self._calls += 1
        if not self._op.on_device:
            return self._batch_from_host(idx, draw)
        if info is not None and self._store.is_cuda:
            raise RuntimeError(
                "TrajectoryDataset: a dataset on a CUDA store builds its batches on the GPU, "
                "in the main process; torch DataLoader workers cannot use CUDA. Use "
                "num_workers=0 (nothing is left for workers to do) or robocache.DataLoader")
        return self._add_tasks(self._finish(self._op.run_cuda(self._op.upload_indices(idx)),
                                            draw=draw), idx)

    @property
    def _on_device(self) -> bool:
        """Whether batches are built by the CUDA path (a CUDA store, or a stand-in)."""
        return self._op.on_device

    def _device_batches(self, reuse: int = 0, batch_size: int | None = None):
        """The loader's per-batch path on the device: (builder, build). builder.bind(idx) points
        it at an epoch's int64 index array (from self._op.upload_indices); build(offset, count,
        draw) returns the batch of idx[offset : offset + count], made by one launch with no
        per-batch validation or allocation (ops.windows.BatchBuilder: `reuse` and `batch_size`
        choose fresh or recycled outputs). `draw` = (seed, epoch, batch) keys the random image
        transforms; `ahead` = how many following batches are the next `count`-index slices of
        idx (their windows may be built by this batch's launch)."""
        builder = self._op.batch_builder(self._order, reuse, batch_size)
        names = self._order
        if not self._image_keys and self._episode_ids is None:
            def build(offset: int, count: int, draw, ahead: int = 0) -> WindowBatch:
                return WindowBatch(zip(names, builder(offset, count, ahead), strict=False))
        else:
            def build(offset: int, count: int, draw, ahead: int = 0) -> WindowBatch:
                batch = WindowBatch(zip(names, builder(offset, count, ahead), strict=False))
                self._stored_episode_ids(batch)
                if not self._image_keys:
                    return batch
                return self._finish_images(batch, draw, builder.kept_with_last_set())
        return builder, build

    def _device_standin(self, like) -> None:
        """Run the CUDA path with index tables next to `like`, a host array (NumPy: the kernel
        emulator of the tests; torch CPU tensor: the host-overhead benchmark). Tests and
        benchmarks only: the store's arrays must be host arrays the launcher can read."""
        op = self._op
        self._op = WindowOp(op.keys, op.anchors, zero_pad=op.zero_pad, like=like)

    def _batch_from_host(self, idx: np.ndarray, draw: tuple[int, int, int] = (0, 0, 0)
                         ) -> WindowBatch:
        """The batch of validated host indices (the loader's CPU path)."""
        return self._add_tasks(self._finish(self._op.run_numpy(idx), torch_from_numpy=True,
                                            draw=draw), idx)

    def _finish(self, raw: dict, torch_from_numpy: bool = False,
                draw: tuple[int, int, int] = (0, 0, 0)) -> WindowBatch:
        """The op's outputs as a WindowBatch in sample order (a new dict: `raw` may be a reused
        output set of the loader and must keep its arrays)."""
        if torch_from_numpy:
            batch = WindowBatch((n, _to_torch(raw[n])) for n in self._order)
        else:
            batch = WindowBatch((n, raw[n]) for n in self._order)
        self._stored_episode_ids(batch)
        return self._finish_images(batch, draw) if self._image_keys else batch

    def _stored_episode_ids(self, batch: WindowBatch) -> None:
        """batch["episode_index"]: the dataset's own episode ids where they are not 0..E-1 (a
        LeRobot dataset's episode_index column, as LeRobot returns it); the kernel writes the
        store's position of the episode."""
        if self._episode_ids is not None:
            ep = batch["episode_index"]
            ids = self._episode_ids_on.get(ep.device)
            if ids is None:
                ids = self._episode_ids_on[ep.device] = torch.from_numpy(
                    self._episode_ids).to(ep.device)
            batch["episode_index"] = ids[ep]

    def _finish_images(self, batch: WindowBatch, draw: tuple[int, int, int],
                       kept: dict | None = None) -> WindowBatch:
        """Camera keys of `batch` (their frame rows) replaced by frames, in place (transformed
        frames into the outputs recycled with the batch's output set, `kept`, when given)."""
        for k in self._image_keys:
            rows = batch[k]
            mask = batch.get(f"{k}_is_pad")
            zero_mask = mask if self._pad == "zero" else None
            plan = self._image_plans.get(k)
            fn = None if plan is not None else self._transforms.get(k)
            if fn is not None:  # a custom callable's output is handed out as it returns it
                if mask is None:  # a key without offsets: nothing is padding
                    mask = torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
                try:
                    batch[k] = fn(self._frames(k), rows, mask)
                except TypeError as e:
                    if e.__traceback__.tb_next is not None:  # raised inside fn: its own error
                        raise
                    # the call refused (a signature inspect could not read before)
                    raise TypeError(f"{_not_a_transform(k, fn)}, which raised TypeError: "
                                    f"{e}") from e
                continue
            if plan is not None:
                out = self._transform_frames(k, plan, rows, zero_mask, draw, kept)
            else:
                out = gather_frames(self._frames(k), rows, zero_mask)
            batch[k] = out[:, 0] if k in self._squeezed else out
        return batch

    def _transform_frames(self, key: str, plan, rows, zero_mask, draw,
                          kept: dict | None = None):
        """One image-kernel launch (or the NumPy path) from the store's frames at `rows`, into
        a fresh output, or the one `kept` holds for `key` (BatchBuilder.kept_with_last_set)."""
        rand = _random.rand_key(*draw, stream=key)  # each camera draws its own
        rows2 = rows if rows.ndim == 2 else rows.reshape(-1, 1)
        mask2 = None if zero_mask is None else zero_mask.reshape(rows2.shape)
        src = self._sources[key]
        grey_raw = src.ndim == 3 and key not in self._transforms  # [N, H, W] gathered as is
        if src.ndim == 3:  # grey frames [N, H, W]: the same bytes as [N, H, W, 1]
            src = src.reshape(*src.shape, 1)
        if isinstance(src, np.ndarray):
            out = _images.apply_numpy(plan, src, rows2.numpy(),
                                      None if mask2 is None else mask2.numpy(), rand)
            out = _to_torch(np.ascontiguousarray(out))
        else:
            B, K = rows2.shape
            shape = plan.out_shape(B, K)
            out = None if kept is None else kept.get(key)
            if out is None:
                out = _array.empty(rows2, shape, plan.out_dtype)
                if kept is not None:
                    kept[key] = out
            _images.apply_cuda(plan, src, rows2, mask2, out, rand,
                               frames_ptr=self._host_frames_ptr(key, rows2))
        if grey_raw:  # the raw host plan's HWC with C = 1: the frames' own [.., H, W]
            out = out[..., 0]
        return out if rows.ndim == 2 else out[:, 0]

    def _host_frames_ptr(self, key: str, like):
        """The device address of a host-resident (pinned) camera key, looked up once; None for
        frames in device memory."""
        if self._store_key.get(key, key) not in self._store.host_keys:
            return None
        ptr = self._host_frame_ptrs.get(key)
        if ptr is None:
            ptr = self._host_frame_ptrs[key] = _images._mapped_pointer(self._sources[key], like)
        return ptr

    def _frames(self, key: str):
        """The frames of `key` as a tensor for a custom image transform. A loaded cache's
        frames are a read-only map, which a transform writing into its input would crash the
        process through: they are handed out as private copy-on-write pages of the same file
        (nothing copied up front, the cache unchanged), or, where the file was removed or
        replaced since the load, as a private copy."""
        src = self._sources[key]
        if not isinstance(src, np.ndarray):
            return src
        if not src.flags.writeable:
            if key not in self._private_frames:  # looked up once
                view = _mapped.private_view(src)
                if view is None and _mapped.memmap_root(src) is not None:
                    # a map with no private view (its file removed or replaced since, or the
                    # system refused): a private copy, since a write into the map would crash
                    view = np.array(src)
                self._private_frames[key] = view
            view = self._private_frames[key]
            if view is None:  # not a map (a read-only array of the caller's): writes are safe
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "The given NumPy array is not writable")
                    return torch.from_numpy(src)
            src = view
        return torch.from_numpy(src)


def gather_frames(frames, rows, zero_mask=None):
    """Raw camera frames at `rows` (int64 [B, K] or [B]): [B, K, *frame] uint8, zeroed where
    `zero_mask` is True. The default image path (one index_select on the device)."""
    out = frames.index_select(0, rows.reshape(-1)).reshape(*rows.shape, *frames.shape[1:])
    if zero_mask is not None:  # masked_fill_ rather than out[mask] = 0: no device sync
        out.masked_fill_(zero_mask.reshape(*zero_mask.shape, *([1] * (frames.ndim - 1))), 0)
    return out


def _frame_shape(frames) -> tuple[int, ...]:
    """(H, W, C) of a camera key's frames; grey frames [N, H, W] have C = 1."""
    shape = tuple(int(s) for s in frames.shape[1:])
    return (*shape, 1) if len(shape) == 2 else shape


def _stored_ids(store) -> np.ndarray | None:
    """int64 [E]: the episode ids a reader kept in store.meta["episode_index"], when they are
    not simply 0..E-1 (None then, and for stores without them)."""
    ids = store.meta.get("episode_index")
    if not isinstance(ids, (list, tuple, np.ndarray)) or len(ids) != store.num_episodes:
        return None
    try:
        arr = np.asarray(ids, dtype=np.int64)
    except (TypeError, ValueError):
        return None
    return None if np.array_equal(arr, np.arange(store.num_episodes)) else arr


def _with_meta(names, store) -> tuple[str, ...]:
    return names + tuple(k for k in store.keys if k in META_KEYS)


def _takes_three(fn) -> bool | None:
    """Whether `fn` can be called as fn(frames, rows, is_pad) (a torch module: its forward);
    None where its signature cannot be read (some builtins)."""
    import inspect

    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(None, None, None)
    except TypeError:
        return False
    return True


def _not_a_transform(key: str, fn) -> str:
    """The error for a transform of camera `key` that is neither kind (e.g. a torchvision
    transform, which takes one image)."""
    return (f"image_transforms[{key!r}]: expected an rc.ImageTransform or a callable "
            f"fn(frames, rows, is_pad), got {fn!r:.80}")


def _check_stats_present(key: str, mode: str, stats: dict, need) -> None:
    """normalize[key]'s mode needs the statistics `need` in `stats` (the key's entry)."""
    missing = [n for n in need if n not in stats]
    if missing:
        raise ValueError(f"normalize[{key!r}]: mode {mode!r} needs the stats {list(need)}, "
                         f"got stats without {missing}")


def _stat_array(key: str, name: str, value, F: int) -> np.ndarray:
    """stats[key][name] as float32 [F]: one number per feature, or one for all of them."""
    arr = _stat_numbers(f"stats[{key!r}][{name!r}]", value)
    if arr.size == 1:
        arr = np.full(F, float(arr.reshape(-1)[0]))
    if arr.size != F:
        raise ValueError(f"stats[{key!r}][{name!r}]: expected {F} values (one per feature), got "
                         f"shape {arr.shape}")
    return arr.reshape(-1).astype(np.float32)


def _stat_numbers(name: str, value) -> np.ndarray:
    """A statistic as float64: an array of any library, a number or a (nested) list of numbers
    (integer, floating or bfloat16). None (JSON null) or a list holding one, strings, bools and
    other objects are refused: taken as NaN or parsed, they normalized a column silently."""
    try:
        raw = np.asarray(value) if isinstance(value, (numbers.Real, list, tuple)) \
            else _array.to_numpy(_array.as_array(name, value))
    except (TypeError, ValueError):  # not an array, a ragged list
        raw = None
    if raw is not None and raw.dtype == object and all(  # e.g. pandas' .to_numpy()
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in raw.reshape(-1)):
        raw = raw.astype(np.float64)
    ok = raw is not None and (raw.dtype.kind in "iuf" or _array.dtype_name(raw) == "bfloat16")
    if not ok:
        raise TypeError(f"{name}: expected numbers (one per feature), got {value!r:.80}")
    return raw.astype(np.float64)


def _to_torch(x: np.ndarray) -> torch.Tensor:
    if x.dtype.kind == "V":  # ml_dtypes bfloat16 (NumPy's own numeric dtypes are never "V")
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(x)


def _table_placement(store):
    """A GPU array of a CUDA store: the window op's index tables are made next to it. Camera
    keys kept in pinned host memory (frames_on_host=True) are CPU tensors and do not count."""
    for k in store.keys:
        if k not in store.host_keys:
            return store[k]
    if store.timestamps is not None:
        return store.timestamps
    return torch.empty(0, dtype=torch.int64, device=store.device)  # a CUDA store holds torch
