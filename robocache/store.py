"""TrajectoryStore: every key's frames concatenated over episodes, resident on one device.

A store holds, per key, one array [N, *feature] of all N frames of all episodes (any numeric dtype,
bfloat16 included; camera frames are uint8 [N, H, W, C]), the cumulative episode ends, and
optionally fps, per-frame timestamps, shipped statistics and which keys are camera frames.

On device="cuda" / "cuda:N" the arrays are torch CUDA tensors (kernels read them through raw
pointers; the loader hands out torch tensors without copies). On device="cpu" they are NumPy
arrays, and the dataset wraps its outputs with torch.from_numpy. torch is imported only when a
CUDA store is made or used.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np

from . import _array, _progress, _runtime
from . import stats as _stats
from ._errors import BackendUnavailableError, DeviceMemoryError
from .formats.source import TrajectorySource, check_image_key, default_image_keys, image_key_tuple
from .windows import check_episode_ends, episode_starts

ARRAY_DTYPES = tuple(_array.ITEMSIZE)


def resolve_device(device) -> str:
    """"cpu" or "cuda:N". None picks "cuda:0" when the CUDA backend is usable, else "cpu"."""
    if device is None:
        return "cuda:0" if _cuda_usable() else "cpu"
    text = str(device)
    if text == "cpu":
        return "cpu"
    if text == "cuda":
        return "cuda:0"
    if text.startswith("cuda:") and text[5:].isdigit():
        return text
    raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _cuda_usable() -> bool:
    if not _runtime.cuda_available():
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _require_device(device: str) -> None:
    if device == "cpu":
        return
    _runtime.require_cuda()
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError("a CUDA store keeps torch CUDA tensors: torch is not "
                                      "installed") from exc
    if not torch.cuda.is_available():
        raise BackendUnavailableError("a CUDA store keeps torch CUDA tensors: "
                                      "torch.cuda.is_available() is False")


def _free_bytes(device: str) -> int:
    """Bytes a new allocation can use on `device` (driver free + torch's unused cache)."""
    from ._upload import device_free_bytes

    return device_free_bytes(device)


def check_fits(needed: int, device: str, what: str = "the store") -> None:
    """DeviceMemoryError (bytes needed and free) before allocating, when `needed` does not fit."""
    if device == "cpu":
        return
    free = _free_bytes(device)
    if needed > free:
        raise DeviceMemoryError(f"{what} on {device}", needed, free)


def _upload(host: np.ndarray, device: str, bar):
    """One host array -> a torch tensor on `device`, streamed through pinned buffers
    (robocache/_upload.py). The only place that copies to the device."""
    from ._upload import to_device

    return to_device(np.ascontiguousarray(host), device, progress=bar)


def _host_view(name: str, x) -> np.ndarray:
    """A NumPy array of x's host data (no copy for NumPy / torch CPU; bf16 kept as bf16)."""
    lib = _array.library(x)
    if lib == "numpy":
        return x
    if lib == "torch" and str(x.dtype) == "torch.bfloat16":
        t = x.detach().cpu().contiguous()
        import torch

        return t.view(torch.int16).numpy().view(_array.numpy_dtype("bfloat16"))
    return _array.to_numpy(x)


class TrajectoryStore:
    """All frames of all episodes, one array per key, on one device. Make one with
    `from_arrays` or `from_source` (readers: robocache.formats)."""

    def __init__(self, *, arrays: dict, episode_ends: np.ndarray, fps: float | None,
                 timestamps, device: str, shipped_stats: dict | None,
                 image_keys: tuple[str, ...], meta: dict | None = None,
                 host_keys: tuple[str, ...] = ()):
        self._arrays = arrays
        self._host_keys = tuple(host_keys)  # camera keys kept in pinned host memory
        self._ends = episode_ends
        self._fps = fps
        self._timestamps = timestamps            # on the device, float64 [N] or None
        self._timestamps_host = None if timestamps is None else _array.to_numpy(timestamps)
        self._device = device
        self._shipped = shipped_stats
        self._image_keys = image_keys
        self.meta = dict(meta or {})
        self._stats_cache: dict[str, dict[str, np.ndarray]] = {}

    # -----------------------------------------------------------------------------------------
    # construction

    @classmethod
    def from_arrays(cls, arrays: Mapping, episode_ends, fps: float | None = None,
                    timestamps=None, device=None, *, stats: Mapping | None = None,
                    image_keys=None, progress=None, frames_on_host: bool = False
                    ) -> TrajectoryStore:
        """A store of `arrays` (key -> [N, *feature], NumPy / torch / CuPy) split into episodes
        by `episode_ends` (cumulative ends: episode e holds frames [ends[e-1], ends[e])).

        fps: frames per second (needed by delta_timestamps). timestamps: float [N], seconds
        within each episode. device: "cpu", "cuda", "cuda:N", or None (CUDA when usable).
        stats: shipped statistics (key -> {"mean", "std", ...}), used by normalize= when the
        dataset gets none. image_keys: camera-frame keys, uint8 [N, H, W(, C)] with C in (1, 3,
        4) (default None: every uint8 array of those shapes; [] for none).
        frames_on_host: on a CUDA device, keep the camera keys in pinned host memory, read by
        the image kernel over the bus (for frame stores larger than free GPU memory).
        """
        if not isinstance(arrays, Mapping):
            raise TypeError(f"arrays: expected a dict of key -> array, got "
                            f"{type(arrays).__name__}")
        if stats is not None and not isinstance(stats, Mapping):
            raise TypeError(f"stats: expected a dict of key -> {{stat: array}}, got "
                            f"{type(stats).__name__}")
        if stats is not None:  # a misspelt key would leave its statistics unused
            unknown = [k for k in stats if k not in arrays and k != "timestamp"]
            if unknown:
                raise ValueError(f"stats: expected keys of arrays {list(arrays)} (or "
                                 f"'timestamp'), got {unknown}")
        source = TrajectorySource(arrays=dict(arrays), episode_ends=episode_ends, fps=fps,
                                  timestamps=timestamps, stats=None if stats is None
                                  else dict(stats), image_keys=image_key_tuple(image_keys))
        return cls.from_source(source, device=device, progress=progress,
                               frames_on_host=frames_on_host)

    @classmethod
    def from_source(cls, source: TrajectorySource, device=None, progress=None, *,
                    frames_on_host: bool = False) -> TrajectoryStore:
        """The store of a reader's TrajectorySource, uploaded to `device`. Carries fps,
        timestamps, shipped stats and image keys. `progress`: None (a bar after ~1 s on a
        terminal), True, False, or a tqdm-like bar to advance. `frames_on_host`: see
        from_arrays."""
        _progress.check(progress)  # on every device (a CPU store draws no bar)
        checked, ends, fps, ts, image_keys, shipped = checked_source(source)

        dev = _check_placement(device, frames_on_host)
        host_keys = image_keys if frames_on_host and dev != "cpu" else ()  # uint8, checked
        placed = _place(checked, ts, dev, progress, host_keys)
        return cls(arrays=placed[0], episode_ends=ends, fps=fps, timestamps=placed[1],
                   device=dev, shipped_stats=shipped, image_keys=image_keys,
                   meta=dict(source.meta), host_keys=host_keys)

    @classmethod
    def from_lerobot(cls, root, keys=None, device=None, *, video_backend=None,
                     tolerance_s: float = 1e-4, progress=None, frames_on_host: bool = False
                     ) -> TrajectoryStore:
        """A LeRobot dataset (v3.0 or v2.1) at `root`: numeric features, camera keys decoded once
        into uint8 [N, H, W, C], fps, timestamps, episode bounds and meta/stats.json.
        `keys` loads only those features (unused cameras are never decoded)."""
        from .formats.lerobot import read_lerobot

        _check_placement(device, frames_on_host)  # before reading (and decoding)

        source = read_lerobot(root, keys=keys, video_backend=video_backend,
                              tolerance_s=tolerance_s, progress=progress)
        return cls.from_source(source, device=device, progress=progress,
                               frames_on_host=frames_on_host)

    @classmethod
    def from_zarr(cls, path, keys=None, device=None, *, progress=None,
                  frames_on_host: bool = False) -> TrajectoryStore:
        """A diffusion_policy ReplayBuffer zarr store (data/<key>, meta/episode_ends)."""
        from .formats.zarr import read_zarr

        _check_placement(device, frames_on_host)

        return cls.from_source(read_zarr(path, keys=keys, progress=progress), device=device,
                               progress=progress, frames_on_host=frames_on_host)

    @classmethod
    def from_robomimic(cls, path, obs_keys=None, filter_key=None, device=None, *,
                       progress=None, frames_on_host: bool = False,
                       next_obs: bool = False) -> TrajectoryStore:
        """A robomimic HDF5 file: keys "obs/<key>", "actions", "rewards", "dones" (and
        "next_obs/<key>" with next_obs=True); demos in numeric order; `filter_key` selects
        mask/<filter_key>."""
        from .formats.robomimic import read_robomimic

        _check_placement(device, frames_on_host)

        source = read_robomimic(path, obs_keys=obs_keys, filter_key=filter_key,
                                progress=progress, next_obs=next_obs)
        return cls.from_source(source, device=device, progress=progress,
                               frames_on_host=frames_on_host)

    def save(self, directory, *, overwrite: bool = False, progress=None):
        """Write the store to RoboCache's own cache: one .npy per key and a manifest.json with
        dtypes, shapes, episode ends, fps, stats and a sha256 per file (written to a temporary
        folder, then renamed: never a half-written cache). Returns the directory's path."""
        from .formats.cache import write_cache

        return write_cache(directory, self.to_source(), overwrite=overwrite, progress=progress)

    @classmethod
    def load(cls, directory, device=None, *, verify: bool = True, progress=None,
             frames_on_host: bool = False) -> TrajectoryStore:
        """A store saved by `save`: the .npy files are memory-mapped and streamed to `device`
        through pinned buffers; a newer format version or a failed checksum is refused. On the
        CPU the store's arrays are the read-only maps (no copy): a file truncated or rewritten
        in place under a live CPU store changes it or crashes the process (SIGBUS), as with any
        memory map; `save` replaces files and never rewrites them."""
        from .formats.cache import read_cache

        _check_placement(device, frames_on_host)
        return cls.from_source(read_cache(directory, verify=verify, progress=progress),
                               device=device, progress=progress, frames_on_host=frames_on_host)

    def to_source(self) -> TrajectorySource:
        """The store's contents as host arrays (copied from the device for CUDA stores), with
        its shipped stats."""
        arrays = {k: _array.to_numpy(v) for k, v in self._arrays.items()}
        return TrajectorySource(arrays=arrays, episode_ends=self._ends.copy(), fps=self._fps,
                                timestamps=self._timestamps_host, stats=self._shipped,
                                image_keys=self._image_keys, meta=dict(self.meta))

    def to(self, device) -> TrajectoryStore:
        """This store on another device (self when already there). Stats travel along."""
        dev = resolve_device(device)
        if dev == self._device:
            return self
        _require_device(dev)
        host_keys = self._host_keys if dev != "cpu" else ()
        placed = _place(self._arrays, self._timestamps_host, dev, None, host_keys)
        out = TrajectoryStore(arrays=placed[0], episode_ends=self._ends, fps=self._fps,
                              timestamps=placed[1], device=dev, shipped_stats=self._shipped,
                              image_keys=self._image_keys, meta=self.meta, host_keys=host_keys)
        out._stats_cache = dict(self._stats_cache)
        return out

    # -----------------------------------------------------------------------------------------
    # what is in it

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self._arrays)

    def __getitem__(self, key: str):
        """The array of `key`, [N, *feature] (NumPy on "cpu", torch CUDA tensor on "cuda:N")."""
        try:
            return self._arrays[key]
        except KeyError:
            raise KeyError(f"{key!r}: not a key of this store; keys are {list(self._arrays)}"
                           ) from None

    def __contains__(self, key) -> bool:
        return key in self._arrays

    @property
    def num_frames(self) -> int:
        return int(self._ends[-1])

    @property
    def num_episodes(self) -> int:
        return int(self._ends.size)

    @property
    def episode_ends(self) -> np.ndarray:
        """int64 [E] cumulative episode ends (a host copy)."""
        return self._ends.copy()

    @property
    def episode_starts(self) -> np.ndarray:
        return episode_starts(self._ends)

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._ends, prepend=0)

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def timestamps(self):
        """float64 [N] per-frame timestamps on the store's device, or None."""
        return self._timestamps

    @property
    def device(self) -> str:
        return self._device

    @property
    def is_cuda(self) -> bool:
        return self._device != "cpu"

    @property
    def host_keys(self) -> tuple[str, ...]:
        """Camera keys kept in pinned host memory on a CUDA store (frames_on_host=True)."""
        return self._host_keys

    @property
    def image_keys(self) -> tuple[str, ...]:
        return self._image_keys

    @property
    def shipped_stats(self) -> dict | None:
        """Statistics that came with the data (e.g. LeRobot's meta/stats.json), or None: a copy
        (changing it does not change what normalization uses)."""
        if self._shipped is None:
            return None
        return {k: {s: v.copy() for s, v in per.items()} for k, per in self._shipped.items()}

    @property
    def nbytes(self) -> int:
        total = sum(_array.nbytes(x) for x in self._arrays.values())
        if self._timestamps is not None:
            total += _array.nbytes(self._timestamps)
        return total

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        keys = ", ".join(f"{k}: {tuple(x.shape[1:])} {_array.dtype_name(x)}"
                         for k, x in self._arrays.items())
        return (f"TrajectoryStore({self.num_episodes} episodes, {self.num_frames} frames, "
                f"device={self._device!r}, fps={self._fps}, {{{keys}}})")

    # -----------------------------------------------------------------------------------------
    # statistics

    def stats(self, keys=None) -> dict[str, dict[str, np.ndarray]]:
        """Per-feature mean, std, min, max, count, q01, q10, q50, q90, q99 of `keys` (default:
        all), computed on the store's device with float64 accumulation (robocache.stats); camera
        keys per channel, shape [C] (() for grey frames) in the frames' own 0..255 units, where
        LeRobot's stats.json (shipped_stats) has [C, 1, 1] in 0..1. Returned as float64 NumPy
        arrays (count: int64 [1], frames); cached."""
        if keys is None:
            keys = self.keys
        elif isinstance(keys, str):
            keys = (keys,)
        out = {}
        for k in keys:
            if k not in self._arrays:
                raise ValueError(f"keys: expected keys of the store {list(self._arrays)}, got "
                                 f"{k!r}")
            if k not in self._stats_cache:
                x = self._arrays[k]
                if k in self._host_keys:  # pinned host tensor: stats on its NumPy view
                    x = x.numpy()
                self._stats_cache[k] = _stats.feature_stats(x, image=k in self._image_keys)
            out[k] = {name: v.copy() for name, v in self._stats_cache[k].items()}
        return out


def checked_source(source: TrajectorySource):
    """What `source` holds, checked as the store takes it (TypeError / ValueError naming the
    argument otherwise): (arrays, episode_ends int64, fps float | None, timestamps float64 |
    None, image_keys, shipped stats | None). Arrays are not copied, except a non-native byte
    order (the kernels and torch read native); write_cache and read_cache check with it too,
    so a cache holds nothing the store refuses."""
    arrays = source.arrays
    if not isinstance(arrays, Mapping) or len(arrays) == 0:
        raise ValueError("arrays: expected at least one key, got an empty store")
    checked: dict[str, object] = {}
    n = None
    for key, x in arrays.items():
        if not isinstance(key, str):
            raise TypeError(f"arrays: expected string keys, got {key!r}")
        try:
            x = _array.as_array(f"arrays[{key!r}]", x)
        except TypeError:
            raise TypeError(f"arrays[{key!r}]: expected a NumPy array, CuPy array or torch "
                            f"tensor, got {type(x).__name__}") from None
        dt = _array.dtype_name(x)
        if dt not in ARRAY_DTYPES:
            raise TypeError(f"arrays[{key!r}]: expected a numeric dtype in "
                            f"{list(ARRAY_DTYPES)}, got {dt}")
        if isinstance(x, np.ndarray) and not x.dtype.isnative:  # e.g. '>f4' from a file
            x = x.astype(x.dtype.newbyteorder("="))  # the kernels and torch read native
        if x.ndim < 1:
            raise ValueError(f"arrays[{key!r}]: expected an array [N, *feature], got a "
                             "scalar")
        if n is None:
            n, first = int(x.shape[0]), key
        elif int(x.shape[0]) != n:
            raise ValueError(f"arrays[{key!r}]: expected {n} frames (as {first!r}), got "
                             f"shape {tuple(x.shape)}")
        checked[key] = x
    if n == 0:
        raise ValueError("arrays: expected at least one frame, got an empty store (N = 0)")
    ends = check_episode_ends(source.episode_ends, n)
    fps = source.fps
    if fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not fps > 0 \
                or not np.isfinite(fps):
            raise ValueError(f"fps: expected a positive finite number, got {fps!r}")
        fps = float(fps)
    ts = source.timestamps
    if ts is not None:
        ts = np.asarray(_array.to_numpy(_array.as_array("timestamps", ts)))
        if ts.shape != (n,):
            raise ValueError(f"timestamps: expected shape ({n},) (one per frame), got "
                             f"{ts.shape}")
        if not np.issubdtype(ts.dtype, np.number) or ts.dtype == np.bool_:
            raise TypeError(f"timestamps: expected a float array, got dtype {ts.dtype}")
        ts = ts.astype(np.float64)
        if not np.isfinite(ts).all():
            raise ValueError("timestamps: expected finite timestamps, got NaN or inf")
    image_keys = image_key_tuple(source.image_keys)
    if image_keys is None:
        image_keys = default_image_keys(checked)
    for k in image_keys:
        if k not in checked:
            raise ValueError(f"image_keys: expected keys of arrays {list(checked)}, got "
                             f"{k!r}")
        check_image_key(k, checked[k])
    shipped = _check_stats("stats", source.stats, checked) if source.stats else None
    return checked, ends, fps, ts, image_keys, shipped


def _check_placement(device, frames_on_host) -> str:
    """The resolved device, checked with frames_on_host - by the readers before they read."""
    dev = resolve_device(device)
    _require_device(dev)
    if not isinstance(frames_on_host, bool):
        raise TypeError(f"frames_on_host: expected a bool, got {frames_on_host!r}")
    return dev


def _check_stats(name: str, stats, arrays) -> dict:
    if not isinstance(stats, Mapping):
        raise TypeError(f"{name}: expected a dict of key -> {{stat: array}}, got "
                        f"{type(stats).__name__}")
    out = {}
    for key, d in stats.items():
        if not isinstance(d, Mapping):
            raise TypeError(f"{name}[{key!r}]: expected a dict of stat -> array, got "
                            f"{type(d).__name__}")
        out[key] = {s: np.array(_array.to_numpy(_array.as_array(f"{name}[{key!r}][{s!r}]", v)))
                    for s, v in d.items()}  # copies: the caller's arrays may change later
    return out


def _place(arrays: dict, timestamps, device: str, progress, host_keys=()):
    """Arrays (and timestamps) on `device`: NumPy for "cpu", torch tensors for "cuda:N".
    On CUDA the free device memory is checked for all keys first (DeviceMemoryError before any
    allocation, so a failure never leaves a half-built store). `progress` follows
    robocache._progress (None: a bar after ~1 s on a terminal, True, False, or a bar object).
    `host_keys` stay on the host in pinned (page-locked) memory, as torch CPU tensors."""
    if device == "cpu":
        out = {key: np.ascontiguousarray(_host_view(key, x)) for key, x in arrays.items()}
        ts = None if timestamps is None else np.ascontiguousarray(timestamps, dtype=np.float64)
        return out, ts
    import torch

    # bytes that must be allocated on the device (arrays already there are kept)
    needed = sum(_array.nbytes(x) for k, x in arrays.items()
                 if not _on(x, device) and k not in host_keys)
    if timestamps is not None:
        needed += int(np.asarray(timestamps).size) * 8
    check_fits(needed, device)
    out = {}
    with _progress.bar(needed, "uploading", progress=progress) as bar:
        for key, x in arrays.items():
            if key in host_keys:
                out[key] = _pinned(_host_view(key, x))
                bar.update(_array.nbytes(x))
            elif _on(x, device):
                out[key] = x.contiguous() if _array.library(x) == "torch" else \
                    torch.as_tensor(x, device=device).contiguous()
            else:
                out[key] = _upload(_host_view(key, x), device, bar)
        ts = None if timestamps is None else \
            _upload(np.asarray(timestamps, np.float64), device, bar)
    return out, ts


def _pinned(host: np.ndarray):
    """A pinned (page-locked) torch CPU copy of `host`: the image kernel reads it over the bus
    through its mapped device address."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(host)).pin_memory()


def _on(x, device: str) -> bool:
    return _array.is_device(x) and f"cuda:{_array.device_id(x)}" == device
