"""Read a diffusion_policy ReplayBuffer stored as zarr (v2 or v3; a directory or a .zip).

Layout (diffusion_policy/common/replay_buffer.py):
  data/<key>          every episode's frames concatenated, time first: [N, ...]; chunked along
                      time and compressed (Blosc lz4 by default; images often Jpeg2k from
                      imagecodecs, registered here when imagecodecs is installed)
  meta/episode_ends   int64 [E], cumulative ends; episode e holds [ends[e-1], ends[e])
Arrays may be longer than episode_ends[-1] (ReplayBuffer allows it); only the first
episode_ends[-1] rows are read, as diffusion_policy does. Each array is read a block of whole
chunks at a time straight into one preallocated array.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .. import _deps, _progress
from .._errors import DatasetFormatError
from . import _paths
from .source import TrajectorySource

BLOCK_BYTES = 64 << 20


@_deps.hints("read_zarr")
def read_zarr(path, keys=None, progress: bool | None = None) -> TrajectorySource:
    """Read the ReplayBuffer at `path` (a zarr directory or zip). keys: the data/<key> arrays to
    load (default: all). progress: None (auto), True or False, as in every reader."""
    import zarr

    _register_image_codecs()
    p = Path(path).expanduser()
    if p.is_dir():
        p = p.resolve()
        _paths.check_tree(p, "path")
        store = _directory_store(zarr, p)
    elif p.is_file():
        if not zipfile.is_zipfile(p):
            raise DatasetFormatError(f"{p}: not a zarr directory or zip file")
        store = zarr.storage.ZipStore(p, mode="r")
    else:
        raise FileNotFoundError(f"path: expected a zarr directory or .zip, got {str(p)!r} "
                                f"(nothing there)")
    try:
        root = _open(zarr, store, p)
        data = _member(root, "data", p, zarr.Group)
        meta = _member(root, "meta", p, zarr.Group)
        ends = _episode_ends(_member(meta, "episode_ends", p, zarr.Array, "meta/"), p)
        n = int(ends[-1])
        names = _keys(data, keys, p)
        arrays = {k: _member(data, k, p, zarr.Array, "data/") for k in names}
        out = {}
        for k, arr in arrays.items():
            if arr.ndim < 1 or arr.shape[0] < n:
                raise DatasetFormatError(f"{p}: data/{k} has shape {arr.shape}; expected at least "
                                         f"{n} rows (meta/episode_ends[-1])")
            dt = np.dtype(arr.dtype)
            if dt.kind not in "biuf":
                raise DatasetFormatError(f"{p}: data/{k} has dtype {dt}; expected numbers")
            out[k] = _paths.empty((n, *arr.shape[1:]), dt, f"{p}: data/{k} ({n} rows to read)")
        total = sum(a.nbytes for a in out.values())
        with _progress.bar(total, "reading zarr", progress=progress) as bar:
            wrap = _out_buffer(zarr)
            for k, arr in arrays.items():
                _read_rows(wrap, arr, out[k], k, p, bar)
        attrs = dict(root.attrs)
    finally:
        store.close()
    image_keys = tuple(k for k, a in out.items()
                       if a.dtype == np.uint8 and a.ndim == 4 and a.shape[-1] in (1, 3, 4))
    return TrajectorySource(arrays=out, episode_ends=ends, image_keys=image_keys,
                            meta={"format": "zarr", "path": str(p), "attrs": attrs})


def _zarr_major(zarr) -> int:
    try:
        return int(str(zarr.__version__).split(".")[0])
    except ValueError:  # pragma: no cover - a version string without a leading number
        return 3


def _directory_store(zarr, p: Path):
    """A read-only store of the directory p: zarr-python 3's LocalStore, or zarr-python 2's
    DirectoryStore (what diffusion_policy's own environment has; open_group(mode="r") keeps it
    read-only)."""
    if _zarr_major(zarr) >= 3:
        return zarr.storage.LocalStore(p, read_only=True)
    return zarr.storage.DirectoryStore(str(p))


_codecs_registered = False


def _register_image_codecs() -> None:
    global _codecs_registered
    if _codecs_registered:
        return
    try:  # diffusion_policy's image arrays use imagecodecs' Jpeg2k
        from imagecodecs.numcodecs import register_codecs
    except ImportError:
        return
    register_codecs(verbose=False)  # quiet about codecs numcodecs already knows
    _codecs_registered = True


def _unknown_codec(exc: Exception, p: Path, what: str):
    msg = str(exc)
    hint = " (pip install imagecodecs)" if "imagecodecs" in msg else ""
    return DatasetFormatError(f"{p}: {what} uses a codec that is not installed: {msg}{hint}")


def _codec_missing(exc: Exception) -> bool:
    """numcodecs' "codec not available": UnknownCodecError from numcodecs 0.15 on (a ValueError;
    numcodecs.errors does not exist before, and 0.15 needs Python 3.11), a plain ValueError with
    the same message before."""
    return isinstance(exc, ValueError) and (type(exc).__name__ == "UnknownCodecError"
                                            or str(exc).startswith("codec not available"))


def _open(zarr, store, p: Path):
    try:
        return zarr.open_group(store=store, mode="r")
    except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
        if _codec_missing(exc):
            raise _unknown_codec(exc, p, "the store") from None
        # GroupNotFoundError: zarr-python 2's word for a missing group
        if isinstance(exc, FileNotFoundError) or type(exc).__name__ == "GroupNotFoundError":
            raise DatasetFormatError(f"{p}: no zarr group here (neither zarr.json nor "
                                     f".zgroup)") from None
        raise DatasetFormatError(f"{p}: unreadable zarr metadata ({exc})") from None


def _member(group, name: str, p: Path, kind, prefix: str = ""):
    try:
        obj = group[name]
    except KeyError:
        raise DatasetFormatError(f"{p}: missing {prefix}{name} (a diffusion_policy ReplayBuffer "
                                 f"has data/<key> arrays and meta/episode_ends)") from None
    except (ValueError, TypeError) as exc:
        if _codec_missing(exc):
            raise _unknown_codec(exc, p, f"{prefix}{name}") from None
        raise DatasetFormatError(f"{p}: unreadable metadata of {prefix}{name} ({exc})") from None
    if not isinstance(obj, kind):
        raise DatasetFormatError(f"{p}: {prefix}{name} is a {type(obj).__name__}, expected a "
                                 f"{kind.__name__}")
    return obj


def _keys(data, keys, p: Path) -> list[str]:
    if keys is None:
        try:
            names = sorted(data.array_keys())
        except (ValueError, TypeError) as exc:
            if _codec_missing(exc):
                raise _unknown_codec(exc, p, "an array under data/") from None
            raise DatasetFormatError(f"{p}: unreadable metadata under data/ ({exc})") from None
        if not names:
            raise DatasetFormatError(f"{p}: data/ holds no arrays")
        return names
    if isinstance(keys, str):
        keys = [keys]
    keys = list(keys)
    if len(set(keys)) != len(keys):
        raise ValueError(f"keys: expected distinct names, got {keys}")
    for k in keys:
        if not isinstance(k, str) or not k or "/" in k or k in (".", ".."):
            raise ValueError(f"keys: expected array names under data/, got {k!r}")
        if k not in data:
            raise ValueError(f"keys: {k!r} is not an array under data/ of {p}; arrays: "
                             f"{sorted(data.array_keys())}")
    return keys


def _episode_ends(arr, p: Path) -> np.ndarray:
    try:
        ends = np.asarray(arr[...])
    except Exception as exc:  # codec / truncated-chunk errors come in many types
        raise DatasetFormatError(f"{p}: cannot read meta/episode_ends ({exc})") from exc
    where = f"{p}: meta/episode_ends"
    if ends.ndim != 1 or ends.size == 0:
        raise DatasetFormatError(f"{where} has shape {ends.shape}; expected a non-empty 1-D "
                                 f"array")
    if ends.dtype.kind not in "iu":
        raise DatasetFormatError(f"{where} has dtype {ends.dtype}; expected integers")
    ends = ends.astype(np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    bad = np.flatnonzero(ends <= starts)
    if bad.size:
        e = int(bad[0])
        raise DatasetFormatError(f"{where}: episode {e} ends at {int(ends[e])}, not after its "
                                 f"start {int(starts[e])} (ends must be positive and strictly "
                                 f"increasing)")
    return ends


def _out_buffer(zarr):
    """How get_basic_selection's `out=` takes a slice of the result array: zarr-python 2 takes
    the ndarray itself, zarr-python 3 an NDBuffer around it (None: assign instead)."""
    if _zarr_major(zarr) < 3:
        return lambda a: a
    try:
        from zarr.core.buffer.cpu import NDBuffer
    except ImportError:  # pragma: no cover - zarr moved it; fall back to assignment
        return None
    return NDBuffer.from_ndarray_like


def _read_rows(wrap, arr, out: np.ndarray, key: str, p: Path, bar) -> None:
    """out[:] = arr[:len(out)], a block of chunks at a time; `wrap`: _out_buffer's answer."""
    n = len(out)
    if n == 0:
        return
    shards = getattr(arr, "shards", None)
    step = int((shards or arr.chunks)[0]) or 1
    row_bytes = max(1, out[0].nbytes)
    step *= max(1, BLOCK_BYTES // (step * row_bytes))
    for a in range(0, n, step):
        b = min(n, a + step)
        try:
            if wrap is not None:  # decode straight into out, no temporary
                arr.get_basic_selection(slice(a, b), out=wrap(out[a:b]))
            else:
                out[a:b] = arr[a:b]
        except MemoryError:
            raise
        except Exception as exc:  # zarr / numcodecs raise many types for a corrupt chunk
            raise DatasetFormatError(f"{p}: cannot read data/{key} rows [{a}, {b}) "
                                     f"({type(exc).__name__}: {exc})") from exc
        bar.update(out[a:b].nbytes)
