"""Read a robomimic HDF5 dataset.

Layout (robomimic/utils/dataset.py, robomimic's dataset docs):
  data/                 attrs: total, env_args (JSON string)
  data/demo_<n>/        attrs: num_samples
      obs/<key>         [L, ...] per observation key; next_obs/<key> (read when asked for);
                        states (not read here)
      actions           [L, A]; rewards [L]; dones [L]
  mask/<filter_key>     byte strings of demo names ("train", "valid", ...)
Demos are taken in numeric order (demo_2 before demo_10), as robomimic sorts them, and only those
named by mask/<filter_key> when one is given. Keys come back as "obs/<key>", "actions",
"rewards", "dones" (rewards and dones when every demo has them), and "next_obs/<key>" with
next_obs=True. Each dataset is read straight
into its rows of one preallocated array. External links, soft links whose path passes through
one, external storage and virtual datasets (which would read files outside this one) are
refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .. import _deps, _progress
from .._errors import DatasetFormatError
from . import _paths
from .source import TrajectorySource

DEMO = re.compile(r"^demo_(\d+)$")


@_deps.hints("read_robomimic")
def read_robomimic(path, obs_keys=None, filter_key: str | None = None,
                   progress: bool | None = None, next_obs: bool = False) -> TrajectorySource:
    """Read the robomimic HDF5 file at `path`. obs_keys: observation names to load (default:
    all of the first demo's); filter_key: a mask/ entry selecting demos; next_obs: also load
    next_obs/<key> of the same names (robomimic's SequenceDataset returns them by default)."""
    import h5py

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"path: expected an HDF5 file, got {str(p)!r} "
                                f"({'a directory' if p.exists() else 'nothing there'})")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise DatasetFormatError(f"{p}: not a readable HDF5 file ({exc})") from None
    with f:
        data = _group(f, "data", p)
        demos = _demos(f, data, filter_key, p)
        # every demo through _group: a soft or external link is checked, never followed blindly
        groups = {d: _group(data, d, p, "data/") for d in demos}
        first = groups[demos[0]]
        obs_group = _group(first, "obs", p, f"data/{demos[0]}/")
        if obs_keys is None:
            obs_names = sorted(obs_group.keys())
        else:
            obs_names = [obs_keys] if isinstance(obs_keys, str) else list(obs_keys)
            # the store's key names ("obs/<name>") are accepted too
            obs_names = [k[4:] if isinstance(k, str) and k.startswith("obs/")
                         and k not in obs_group else k for k in obs_names]
            if len(set(obs_names)) != len(obs_names):
                raise ValueError(f"obs_keys: expected distinct names, got {obs_names}")
            for k in obs_names:
                if k not in obs_group:
                    raise ValueError(f"obs_keys: {k!r} is not an observation of {p} "
                                     f"(data/{demos[0]}/obs has {sorted(obs_group.keys())})")
        fields = [(f"obs/{k}", f"obs/{k}") for k in obs_names]
        if next_obs:
            fields += [(f"next_obs/{k}", f"next_obs/{k}") for k in obs_names]
        fields.append(("actions", "actions"))
        for opt in ("rewards", "dones"):
            have = [d for d in demos if opt in groups[d]]
            if len(have) == len(demos):
                fields.append((opt, opt))
            elif have:
                missing = next(d for d in demos if opt not in groups[d])
                raise DatasetFormatError(f"{p}: data/{missing} has no {opt!r} but data/{have[0]} "
                                         f"does (every demo or none must)")
        lengths = []
        for d in demos:
            grp = groups[d]
            L = _dataset(grp, "actions", p, f"data/{d}/").shape[0]
            ns = grp.attrs.get("num_samples")
            if ns is not None:
                try:
                    ns = int(np.asarray(ns).item())
                except (TypeError, ValueError):
                    raise DatasetFormatError(f"{p}: data/{d} has num_samples={ns!r:.40}, not a "
                                             f"number") from None
                if ns != L:
                    raise DatasetFormatError(f"{p}: data/{d} has num_samples={ns} but {L} "
                                             f"actions")
            lengths.append(L)
        lengths = np.asarray(lengths, dtype=np.int64)
        if (lengths == 0).any():
            d = demos[int(np.flatnonzero(lengths == 0)[0])]
            raise DatasetFormatError(f"{p}: data/{d} is empty (0 samples)")
        ends = np.cumsum(lengths)
        n = int(ends[-1])
        out = {}
        for key, rel in fields:
            ds0 = _dataset(first, rel, p, f"data/{demos[0]}/")
            dt = np.dtype(ds0.dtype)
            if dt.kind not in "biuf":
                raise DatasetFormatError(f"{p}: data/{demos[0]}/{rel} has dtype {dt}; expected "
                                         f"numbers")
            out[key] = _paths.empty((n, *ds0.shape[1:]), dt,
                                    f"{p}: data/{demos[0]}/{rel} ({n} samples in all demos)")
        total = sum(a.nbytes for a in out.values())
        with _progress.bar(total, "reading hdf5", progress=progress) as bar:
            start = 0
            for d, L in zip(demos, lengths.tolist(), strict=True):
                grp = groups[d]
                for key, rel in fields:
                    where = f"data/{d}/{rel}"
                    ds = _dataset(grp, rel, p, f"data/{d}/")
                    dst = out[key]
                    if ds.shape != (L, *dst.shape[1:]):
                        raise DatasetFormatError(f"{p}: {where} has shape {ds.shape}; expected "
                                                 f"{(L, *dst.shape[1:])} (num_samples x the "
                                                 f"shape in data/{demos[0]})")
                    if np.dtype(ds.dtype) != dst.dtype:
                        raise DatasetFormatError(f"{p}: {where} has dtype {ds.dtype}; data/"
                                                 f"{demos[0]} has {dst.dtype}")
                    try:
                        ds.read_direct(dst, dest_sel=np.s_[start:start + L])
                    except (OSError, ValueError, TypeError) as exc:
                        raise DatasetFormatError(f"{p}: cannot read {where} ({exc})") from None
                    bar.update(dst[start:start + L].nbytes)
                start += L
        env_args = _env_args(data, p)
    fps = None  # optional: a control_freq that is not a positive number is not a rate
    try:
        fps = float(env_args["env_kwargs"]["control_freq"])
    except (KeyError, TypeError, ValueError):
        pass
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        fps = None
    return TrajectorySource(
        arrays=out, episode_ends=ends, fps=fps,
        image_keys=tuple(k for k, a in out.items()
                         if a.dtype == np.uint8 and a.ndim == 4 and a.shape[-1] in (1, 3, 4)),
        meta={"format": "robomimic", "path": str(p), "demos": demos, "filter_key": filter_key,
              "env_args": env_args})


def _safe(obj, p: Path, where: str):
    """Refuse HDF5 objects whose data lives outside this file."""
    import h5py

    if isinstance(obj, h5py.Dataset):
        if obj.is_virtual:
            raise DatasetFormatError(f"{p}: {where} is a virtual dataset (it reads other files)")
        if obj.external:
            raise DatasetFormatError(f"{p}: {where} keeps its data in external files "
                                     f"{[e[0] for e in obj.external]}")
    return obj


def _get(group, name: str, p: Path, where: str):
    import h5py

    link = group.get(name, getlink=True)
    if link is None:
        raise DatasetFormatError(f"{p}: missing {where}")
    if isinstance(link, h5py.ExternalLink):
        raise DatasetFormatError(f"{p}: {where} is an external link to "
                                 f"{link.filename}:{link.path} (outside this file)")
    try:
        obj = group[name]
    except KeyError:
        raise DatasetFormatError(f"{p}: {where} is a dangling link") from None
    # a soft link's path may pass through an external link: what it resolves to must be in the
    # file `group` is in (every group handed out here was checked the same way, from the root)
    if obj.id.fileno != group.id.fileno:
        target = link.path if isinstance(link, h5py.SoftLink) else name
        raise DatasetFormatError(f"{p}: {where} is a link to {target!r}, which resolves through "
                                 f"an external link to {obj.file.filename!r} (outside this file)")
    return _safe(obj, p, where)


def _walk(parent, name: str, p: Path, prefix: str, kind, what: str):
    """parent[name] through each path part (every link checked by _get), of type `kind`."""
    parts = name.split("/")
    obj = parent
    for i, part in enumerate(parts):
        obj = _get(obj, part, p, prefix + "/".join(parts[:i + 1]))
    if not isinstance(obj, kind):
        raise DatasetFormatError(f"{p}: {prefix}{name} is not a {what}")
    return obj


def _group(parent, name: str, p: Path, prefix: str = ""):
    import h5py

    return _walk(parent, name, p, prefix, h5py.Group, "group")


def _dataset(parent, name: str, p: Path, prefix: str = ""):
    import h5py

    obj = _walk(parent, name, p, prefix, h5py.Dataset, "dataset")
    if obj.ndim < 1:
        raise DatasetFormatError(f"{p}: {prefix}{name} is a scalar; expected one row per sample")
    return obj


def _demos(f, data, filter_key, p: Path) -> list[str]:
    if filter_key is not None:
        if not isinstance(filter_key, str) or not filter_key or "/" in filter_key:
            raise ValueError(f"filter_key: expected a name under mask/, got {filter_key!r}")
        mask = _group(f, "mask", p) if f.get("mask", getlink=True) is not None else None
        if mask is None or filter_key not in mask:
            have = sorted(mask.keys()) if mask is not None else []
            raise ValueError(f"filter_key: {filter_key!r} is not in mask/ of {p} "
                             f"(mask/ has {have})")
        ds = _dataset(mask, filter_key, p, "mask/")
        names = []
        for x in ds[()].reshape(-1):
            names.append(x.decode("utf-8") if isinstance(x, bytes) else str(x))
        missing = [d for d in names if d not in data]
        if missing:
            raise DatasetFormatError(f"{p}: mask/{filter_key} names {missing[:5]}, which are not "
                                     f"in data/")
        if len(set(names)) != len(names):
            raise DatasetFormatError(f"{p}: mask/{filter_key} names a demo twice")
    else:
        names = [k for k in data.keys() if DEMO.match(k)]
    bad = [d for d in names if not DEMO.match(d)]
    if bad:
        raise DatasetFormatError(f"{p}: demo names {bad[:5]} are not of the form demo_<n>")
    if not names:
        raise DatasetFormatError(f"{p}: no demos (data/demo_<n>)"
                                 + (f" in mask/{filter_key}" if filter_key else ""))
    return sorted(names, key=lambda d: int(DEMO.match(d).group(1)))


def _env_args(data, p: Path) -> dict | None:
    raw = data.attrs.get("env_args")
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    try:
        out = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(f"{p}: data attribute env_args is not valid JSON "
                                 f"({exc})") from None
    return out if isinstance(out, dict) else None
