"""RoboCache's own on-disk cache: one .npy file per key plus manifest.json.

directory/
  manifest.json        {"format": "robocache-cache", "format_version": 2, "num_frames": N,
                        "keys": [...], "arrays": {key: {file, dtype, shape, nbytes, sha256}},
                        "episode_ends": [...], "fps": float | null,
                        "timestamps": {file, dtype, shape, nbytes, sha256} | null,
                        "image_keys": [...] (exactly the camera keys; in version 1 an
                        empty list meant "detect them"),
                        "stats": {key: {stat: {dtype, shape, data}}},
                        "meta": {...}, "created_by": "robocache <version>"}
  000-observation.state.npy, 001-action.npy, ..., timestamps.npy

`write_cache` writes everything into a temporary directory beside the target, fsyncs it and
renames it into place, so a reader never sees a half-written cache (an existing cache is
replaced only with overwrite=True - swapped out atomically and checked again to be a cache -
and a directory that is not a cache never, also when it appears while the cache is written).
The cache's directory takes the mode and group of the directory it replaces (an empty one, or
the old cache). Saves to one target at once each land whole, the last one staying (with
overwrite=True; without it, the first). A save killed midway leaves its temporary directory,
which a later save to the same target removes once its process is gone and nothing has written
to it for ABANDONED_AFTER_S. The SHA-256 of every file is computed while it is written.
`read_cache` memory-maps the .npy files (what np.load(mmap_mode="r", allow_pickle=False) maps:
nothing is copied and nothing is unpickled), checks each header against the manifest and, with
verify=True, every checksum (files hashed in parallel); it refuses a manifest of a newer format
version. It opens
the manifest and every file through one descriptor of the directory, so a save landing during
the read never mixes two caches.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import math
import os
import re
import shutil
import socket
import stat
import time
import tokenize
import uuid
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .. import _array, _deps, _progress
from .._cpus import usable_cpus
from .._errors import DatasetFormatError
from .._version import __version__
from . import _paths
from .source import (
    TrajectorySource,
    default_image_keys,
    image_key_tuple,
    is_camera_frames,
)

_STORE_DTYPES = tuple(_array.ITEMSIZE)  # what TrajectoryStore takes (its ARRAY_DTYPES)
FORMAT = "robocache-cache"
FORMAT_VERSION = 2  # 2: "image_keys" names exactly the camera keys ([] = none)
MANIFEST = "manifest.json"
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.npy$")
_HASH_BLOCK = 8 << 20


# ---------------------------------------------------------------------------------------------
# writing

@_deps.hints("write_cache")
def write_cache(directory, source, *, episode_ends=None, fps=None, timestamps=None, stats=None,
                image_keys=None, meta=None, overwrite: bool = False,
                progress: bool | None = None) -> Path:
    """Write `source` (a TrajectorySource, or a mapping key -> array [N, ...] with
    episode_ends and the other keyword fields) as a cache in `directory`. Arrays may be NumPy,
    CuPy or torch (device arrays are copied to the host). Returns the directory's path."""
    if isinstance(source, TrajectorySource):
        given = {"episode_ends": episode_ends, "fps": fps, "timestamps": timestamps,
                 "stats": stats, "meta": meta}
        extra = [k for k, v in given.items() if v is not None] + (
            [] if image_keys is None else ["image_keys"])
        if extra:
            raise TypeError(f"write_cache: {extra} come from the TrajectorySource; pass them only "
                            f"with a mapping of arrays")
        arrays, episode_ends, fps = source.arrays, source.episode_ends, source.fps
        timestamps, stats = source.timestamps, source.stats
        image_keys, meta = source.image_keys, source.meta
    elif isinstance(source, Mapping):
        arrays = source
        if episode_ends is None:
            raise TypeError("write_cache: episode_ends is required with a mapping of arrays")
    else:
        raise TypeError(f"source: expected a TrajectorySource or a mapping of arrays, got "
                        f"{type(source).__name__}")
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite: expected True or False, got {overwrite!r}")
    try:
        path = Path(os.fspath(directory)).expanduser()
    except TypeError:
        raise TypeError(f"directory: expected a path, got {type(directory).__name__}") from None
    plan = _plan(arrays, episode_ends, fps, timestamps, stats, image_key_tuple(image_keys), meta)
    # through a symbolic link: the cache goes where it points (the link stays)
    target = Path(os.path.realpath(os.path.abspath(path)))
    _check_not_working_dir(target)
    _check_target(target, overwrite)  # refused before anything is written
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target)
    tmp = _scratch_dir(target, "tmp")
    try:
        tmp.mkdir()
    except PermissionError:
        raise PermissionError(f"directory: a cache is written beside {str(target)!r} and "
                              f"renamed into place, and its parent {str(target.parent)!r} is "
                              f"not writable here") from None
    _take_group(tmp, target)
    try:
        _write_all(tmp, plan, progress)
        _replace(tmp, target, overwrite)
    except BaseException:
        _remove_scratch(tmp)
        raise
    return target


def _check_not_working_dir(target: Path) -> None:
    """A save renames a new directory into place (or swaps it with the old cache): saving to
    the working directory itself would leave this process in a removed directory."""
    try:
        cwd = os.getcwd()
    except FileNotFoundError:  # already in a removed directory: nothing to keep
        return
    if os.path.realpath(cwd) == str(target):
        raise ValueError(f"directory: {str(target)!r} is the working directory; a save renames "
                         f"a new directory into its place, which would leave this process in a "
                         f"removed directory: save to it from its parent, or to a directory "
                         f"inside it")


def _remove_scratch(path: Path) -> None:
    """Remove a save's scratch directory if it holds nothing but a cache's files (after a failed
    swap it could hold what was at the target)."""
    try:
        names = os.listdir(path)
    except OSError:
        return
    if all(n == MANIFEST or _FILE.match(n) for n in names):
        with contextlib.suppress(OSError):  # a read-only cache's mode came with it
            os.chmod(path, stat.S_IRWXU)
        shutil.rmtree(path, ignore_errors=True)


def _plan(arrays, episode_ends, fps, timestamps, stats, image_keys, meta) -> dict:
    """What write_cache will write, checked as the store takes it: a cache holds nothing that
    TrajectoryStore.load would refuse."""
    from ..store import checked_source

    if not arrays:
        raise ValueError("arrays: expected at least one key")
    hosted = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"arrays: keys must be non-empty strings, got {key!r}")
        hosted[key] = _host(value, f"arrays[{key!r}]")
    # the manifest names the camera keys (None: those that look like camera frames)
    hosted, ends, fps, ts, image_keys, stats = checked_source(TrajectorySource(
        arrays=hosted, episode_ends=episode_ends, fps=fps, timestamps=timestamps,
        stats=stats or None, image_keys=default_image_keys(hosted) if image_keys is None
        else image_keys))
    entries = []
    for i, (key, arr) in enumerate(hosted.items()):
        slug = re.sub(r"[^A-Za-z0-9._-]", "_", key)[:80]
        entries.append((key, f"{i:03d}-{slug}.npy", np.asarray(arr)))
    stats_json = {}
    for key, per in (stats or {}).items():
        stats_json[str(key)] = {}
        for name, a in per.items():  # NumPy arrays (checked_source)
            if a.dtype.name != "bfloat16" and (a.dtype.kind not in "biuf" or a.dtype.itemsize > 8):
                raise ValueError(f"stats[{key!r}][{name!r}]: expected numbers of at most 64 bits, "
                                 f"got {a.dtype}")
            data = a.astype(np.float32) if a.dtype.name == "bfloat16" else a  # exact in JSON
            stats_json[str(key)][str(name)] = {"dtype": a.dtype.name, "shape": list(a.shape),
                                               "data": data.reshape(-1).tolist()}
    try:
        meta_json = json.loads(json.dumps(meta or {}, default=_jsonable))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta: expected JSON-serialisable values ({exc})") from None
    return {"n": int(ends[-1]), "ends": ends, "entries": entries, "timestamps": ts,
            "fps": fps, "stats": stats_json,
            "image_keys": list(image_keys), "meta": meta_json}


def _host(value, name: str) -> np.ndarray:
    arr = _array.to_numpy(_array.as_array(name, value))
    if arr.dtype.name != "bfloat16" and (arr.dtype.kind not in "biuf" or arr.dtype.fields):
        raise TypeError(f"{name}: expected a numeric or bool array, got dtype {arr.dtype}")
    return arr


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _check_target(target: Path, overwrite: bool) -> str:
    """What is at `target`: "absent", "empty" (an empty directory) or "cache" (a cache, with
    overwrite=True); FileExistsError for anything else, so that nothing but a cache is ever
    replaced. Its listing and manifest are read through one descriptor of the directory, so
    they are of one directory; one that another save swapped out meanwhile (and may be
    removing) is not judged, the target is looked at again."""
    for _ in range(_LAND_ATTEMPTS):
        try:
            dfd = os.open(target, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except FileNotFoundError:
            return "absent"
        except NotADirectoryError:
            if os.path.lexists(target):
                raise FileExistsError(f"directory: {str(target)!r} exists and is not a "
                                      f"directory") from None
            raise NotADirectoryError(f"directory: {str(target)!r} cannot be made: a parent of "
                                     f"it is not a directory") from None
        try:
            names = sorted(os.listdir(dfd))
            refusal = _refusal(target, dfd, names, overwrite)
            if refusal is None:
                return "cache" if names else "empty"
            if not _moved(target, dfd):
                raise refusal
        finally:
            os.close(dfd)
    raise FileExistsError(f"directory: {str(target)!r} was replaced by other saves "
                          f"{_LAND_ATTEMPTS} times while this one looked at it; save again")


def _refusal(target: Path, dfd: int, names: list[str], overwrite: bool):
    """Why the directory open as `dfd`, holding `names`, may not be replaced (None: it may)."""
    if not names:
        return None
    if MANIFEST not in names:
        return FileExistsError(f"directory: {str(target)!r} is not empty and holds no "
                               f"{MANIFEST}; refusing to replace something that is not a cache")
    other = _not_cache_files(dfd, names)
    if other:
        return FileExistsError(f"directory: {str(target)!r} holds {other[:5]}, which are not "
                               f"a RoboCache cache's; refusing to replace it")
    if not overwrite:
        return FileExistsError(f"directory: {str(target)!r} already holds a cache; pass "
                               f"overwrite=True to replace it")
    return None


def _not_cache_files(dfd: int, names: list[str]) -> list[str]:
    """The entries `names` of the directory open as `dfd` that a cache it might be does not
    account for: all of them when its manifest is not a RoboCache manifest, else those the
    manifest does not name."""
    try:
        with open(MANIFEST, encoding="utf-8", opener=_opener_in(dfd)) as f:
            manifest = json.load(f)
        ours = {MANIFEST, manifest.get("timestamps", {}).get("file") if isinstance(
            manifest.get("timestamps"), dict) else None}
        ours |= {e.get("file") for e in manifest["arrays"].values()}
        if manifest.get("format") != FORMAT:
            return names
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return names
    return [n for n in names if n not in ours]


def _opener_in(dfd: int):
    """An open() opener of names in the directory open as `dfd`, non-blocking (a FIFO named like
    a cache file must not block us)."""
    def opener(name, flags):
        return os.open(name, flags | getattr(os, "O_NONBLOCK", 0), dir_fd=dfd)
    return opener


def _is_cache_dir(path: Path) -> bool:
    """Whether the directory `path` holds a cache and nothing else."""
    try:
        dfd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return False
    try:
        names = sorted(os.listdir(dfd))
        return MANIFEST in names and not _not_cache_files(dfd, names)
    finally:
        os.close(dfd)


class _HashingWriter:
    """What np.lib.format.write_array writes to: the file, a SHA-256 and a progress bar, which
    counts the array's bytes (the bar's total) and not the header written before them."""

    def __init__(self, f, bar, data_bytes: int):
        self.f, self.bar, self.hash = f, bar, hashlib.sha256()
        self.header_seen = False  # write_array writes magic + header in its first call
        self.data_bytes = data_bytes

    def write(self, b) -> int:
        self.hash.update(b)
        n = self.f.write(b)
        if not self.header_seen:
            self.header_seen = True
            return n
        counted = min(len(b), self.data_bytes)
        self.data_bytes -= counted
        self.bar.update(counted)
        return n


def _write_npy(path: Path, arr: np.ndarray, bar) -> dict:
    dtype = arr.dtype.name
    if dtype == "bfloat16":  # no NumPy dtype descr for it: stored as its bits
        arr = arr.view(np.uint16)
    with open(path, "wb") as f:
        w = _HashingWriter(f, bar, int(arr.nbytes))
        np.lib.format.write_array(w, np.ascontiguousarray(arr), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"file": path.name, "dtype": dtype, "shape": list(arr.shape),
            "nbytes": int(arr.nbytes), "sha256": w.hash.hexdigest()}


def _write_all(tmp: Path, plan: dict, progress) -> None:
    jobs = [(key, tmp / name, arr) for key, name, arr in plan["entries"]]
    if plan["timestamps"] is not None:
        jobs.append((None, tmp / "timestamps.npy", plan["timestamps"]))
    total = sum(a.nbytes for _, _, a in jobs)
    with _progress.bar(total, "writing cache", progress=progress) as bar:
        workers = max(1, min(8, usable_cpus(), len(jobs)))
        with ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(lambda j: _write_npy(j[1], j[2], bar), jobs))
    entries = {key: e for (key, _, _), e in zip(jobs, done, strict=True) if key is not None}
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "created_by": f"robocache {__version__}",
        "num_frames": plan["n"], "keys": list(entries), "arrays": entries,
        "episode_ends": plan["ends"].tolist(), "fps": plan["fps"],
        "timestamps": done[-1] if plan["timestamps"] is not None else None,
        "image_keys": plan["image_keys"], "stats": plan["stats"], "meta": plan["meta"],
    }
    with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _scratch_dir(target: Path, kind: str) -> Path:
    """A sibling of `target` for a save in progress ("tmp": the new cache being written; "old":
    the cache it replaces, about to be removed), named after this host and process so that a
    later save can tell an abandoned one (its process killed) from one still running."""
    return target.parent / (f".{_scratch_stem(target)}.{kind}-{_host_tag()}-{os.getpid()}-"
                            f"{uuid.uuid4().hex[:12]}")


def _scratch_stem(target: Path) -> str:
    """`target`'s name in its scratch directories' names: whole when short, else its first bytes
    and a hash of it (a name near the file system's 255-byte limit leaves no room for the
    ~100 bytes of host, process and uuid)."""
    raw = os.fsencode(target.name)
    if len(raw) <= 100:
        return target.name
    return f"{os.fsdecode(raw[:60])}~{hashlib.sha256(raw).hexdigest()[:16]}"


def _host_tag() -> str:
    """This host and PID namespace (containers sharing a hostname and a volume see different
    processes under one pid)."""
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return f"{host}.{ns}"


ABANDONED_AFTER_S = 15 * 60  # a scratch directory untouched this long, its process gone


def _remove_abandoned(target: Path) -> None:
    """Remove the scratch directories of saves to `target` whose process (on this host, in this
    PID namespace) is gone - a save killed before it could clean up - and that nothing has
    written for ABANDONED_AFTER_S, when they hold nothing but a cache's files."""
    pattern = re.compile(rf"^\.{re.escape(_scratch_stem(target))}\.(?:tmp|old)-"
                         rf"{re.escape(_host_tag())}-(\d+)-[0-9a-f]{{12}}$")
    try:
        siblings = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in siblings:
        m = pattern.match(entry.name)
        if not m or not entry.is_dir(follow_symlinks=False) or _process_alive(int(m.group(1))):
            continue
        if time.time() - _last_written(entry.path) > ABANDONED_AFTER_S:
            _remove_scratch(Path(entry.path))


def _last_written(path: str) -> float:
    """The newest modification time of a directory and its entries (now where unreadable)."""
    try:
        with os.scandir(path) as entries:
            return max([os.stat(path).st_mtime,
                        *(e.stat(follow_symlinks=False).st_mtime for e in entries)])
    except OSError:
        return time.time()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


_LAND_ATTEMPTS = 8


def _replace(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move the finished cache `tmp` to `target`, as what is there now allows (_check_target):
    into nothing or onto an empty directory, one rename (the new directory takes the old one's
    mode and group); over a cache (overwrite=True), an atomic swap. Each step is refused by the
    system when another save (or the user) changed the target meanwhile, and the target is then
    looked at again; so overwrite=False never replaces anything, and concurrent saves with
    overwrite=True each land whole, the last one staying."""
    for _ in range(_LAND_ATTEMPTS):
        state = _check_target(target, overwrite)  # FileExistsError unless one of these
        if state == "cache":
            landed = _swap_in(tmp, target)
        else:
            if state == "empty":
                _take_attributes(tmp, target)
            landed = _rename_into_nothing(tmp, target)
        if landed:
            break
    else:
        raise FileExistsError(f"directory: {str(target)!r} was replaced by other saves "
                              f"{_LAND_ATTEMPTS} times while this one tried to land; save again")
    _fsync_dir(target.parent)


def _rename_into_nothing(tmp: Path, target: Path) -> bool:
    """Rename `tmp` to `target` (nothing there, or an empty directory); False when something
    landed there meanwhile."""
    try:
        os.rename(tmp, target)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            return False
        _raise_if_mount_point(exc, target)
        raise
    return True


def _raise_if_mount_point(exc: OSError, target: Path) -> None:
    """A rename of `target` refused because it is a mount point (EBUSY, EXDEV): said so."""
    if exc.errno in (errno.EBUSY, errno.EXDEV):
        raise OSError(exc.errno, f"directory: {str(target)!r} is a mount point (a cache is a "
                                 f"directory renamed into place): save it into a directory "
                                 f"inside it") from None


def _take_group(tmp: Path, target: Path) -> None:
    """Before anything is written into `tmp`: the group of the directory at `target` (if any),
    and its setgid bit, so that the files made in `tmp` get that group as they would have in
    a group-shared directory (where the system allows)."""
    try:
        st = os.stat(target)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.chown(tmp, -1, st.st_gid)
        if st.st_mode & stat.S_ISGID:
            os.chmod(tmp, stat.S_IMODE(os.stat(tmp).st_mode) | stat.S_ISGID)


def _take_attributes(tmp: Path, target: Path) -> None:
    """Give the new cache directory `tmp` the mode and group of the directory at `target` that
    it replaces (a group-shared setgid directory stays one), where the system allows."""
    _take_group(tmp, target)
    with contextlib.suppress(OSError):
        os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))


def _swap_in(tmp: Path, target: Path) -> bool:
    """Swap the cache `tmp` in for the cache at `target`, which it then removes; False when the
    target went away meanwhile (another save between its two renames: look again)."""
    _take_attributes(tmp, target)
    try:
        exchanged = _exchange(tmp, target)
    except FileNotFoundError:
        return False
    except OSError as exc:
        _raise_if_mount_point(exc, target)
        raise
    if exchanged:
        old = tmp  # now holds what was at target
        if not _is_cache_dir(old):
            _exchange(tmp, target)  # replaced by something else since the check: put it back
            raise FileExistsError(f"directory: {str(target)!r} changed while the cache was "
                                  f"written and no longer holds a cache; refusing to replace it")
        _remove_scratch(old)
        return True
    # no atomic exchange here: rename the old cache away, the new one in (a reader between the
    # two renames sees no cache and retries)
    old = _scratch_dir(target, "old")
    try:
        os.rename(target, old)
    except FileNotFoundError:  # another save moved it away first
        return False
    except OSError as exc:
        _raise_if_mount_point(exc, target)
        raise
    if not _is_cache_dir(old):  # replaced by something else since the check: put it back
        with contextlib.suppress(OSError):
            os.rename(old, target)
        raise FileExistsError(f"directory: {str(target)!r} changed while the cache was "
                              f"written and no longer holds a cache; refusing to replace it"
                              f"{'' if not old.exists() else f' (it is now at {str(old)!r})'}")
    try:
        os.rename(tmp, target)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # another save's cache landed
            _remove_scratch(old)  # the cache this save replaces anyway
            return False
        with contextlib.suppress(OSError):
            os.rename(old, target)
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(old, target)
        raise
    _remove_scratch(old)
    return True


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the system or
    file system has no such call."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b),
                   ctypes.c_uint(_RENAME_EXCHANGE))
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


# ---------------------------------------------------------------------------------------------
# reading

@_deps.hints("read_cache")
def read_cache(directory, verify: bool = True, progress: bool | None = None) -> TrajectorySource:
    """Open the cache in `directory`: arrays are read-only memory maps of its .npy files.
    verify=True checks every file's SHA-256 against the manifest first (reads every byte).

    The manifest and every file are opened through one descriptor of the directory, so they all
    come from the same cache even while another process saves over it (a save renames a whole
    new directory into place): the files hashed are the files mapped, and a cache replaced
    during the read is read again (up to _READ_ATTEMPTS times)."""
    if not isinstance(verify, bool):
        raise TypeError(f"verify: expected True or False, got {verify!r}")
    root = _root_between_renames(directory)
    for _ in range(_READ_ATTEMPTS):
        try:
            return _read_pinned(root, verify, progress)
        except _Replaced:
            continue
    raise DatasetFormatError(f"{root}: replaced by another save {_READ_ATTEMPTS} times while it "
                             f"was being read; load it again once the saves are done")


_READ_ATTEMPTS = 5
_GAP_WAITS_S = (0.02, 0.05, 0.1, 0.2)


def _root_between_renames(directory) -> Path:
    """The cache directory's path; where nothing is there, looked for again a few times over
    ~0.4 s first: a save without an atomic exchange (NFS) renames the old cache away and the
    new one in, and a read between the two finds nothing for a moment."""
    for wait in _GAP_WAITS_S:
        try:
            return _paths.root_dir(directory, "directory")
        except FileNotFoundError:
            path = Path(os.fspath(directory)).expanduser()
            if path.is_dir():  # landed since it was looked at
                continue
            if path.exists():
                raise  # a file: no save makes it a directory
            time.sleep(wait)  # nothing there (a link to it dangles meanwhile)
    return _paths.root_dir(directory, "directory")


class _Replaced(Exception):
    """The directory a read had pinned is no longer the cache at its path."""


def _moved(root: Path, dfd: int) -> bool:
    """Whether the directory open as `dfd` is no longer the one at `root` (removed or renamed
    away by a save)."""
    pinned = os.fstat(dfd)
    try:
        now = os.stat(root)
    except OSError:  # nothing at root now: moved away (a save between its two renames)
        return True
    return (now.st_dev, now.st_ino) != (pinned.st_dev, pinned.st_ino) or pinned.st_nlink == 0


def _read_pinned(root: Path, verify: bool, progress) -> TrajectorySource:
    try:
        dfd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except FileNotFoundError:
        # renamed away and back between the resolve and the open, or (no atomic exchange here)
        # between a save's two renames: there again a moment later
        if not root.is_dir():
            time.sleep(0.05)
        if root.is_dir():
            raise _Replaced from None
        raise FileNotFoundError(f"directory: expected a directory, got {str(root)!r} (nothing "
                                f"there)") from None
    try:
        return _read_at(root, dfd, verify, progress)
    finally:
        os.close(dfd)


def _read_at(root: Path, dfd: int, verify: bool, progress) -> TrajectorySource:
    mpath = root / MANIFEST
    opener = _opener_in(dfd)
    try:
        with open(MANIFEST, encoding="utf-8", opener=opener) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        if _moved(root, dfd):
            raise _Replaced from None
        raise DatasetFormatError(f"{mpath}: missing (not a RoboCache cache)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{mpath}: not valid JSON ({exc})") from None
    except RecursionError:
        raise DatasetFormatError(f"{mpath}: nested too deeply to be a cache manifest") from None
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        raise DatasetFormatError(f"{mpath}: not a cache manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetFormatError(f"{mpath}: not a RoboCache cache manifest (format "
                                 f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DatasetFormatError(f"{mpath}: format_version {version!r} is not a version number")
    if version > FORMAT_VERSION:
        raise DatasetFormatError(
            f"{mpath}: written in cache format version {version} by "
            f"{manifest.get('created_by', 'a newer RoboCache')}; this RoboCache ({__version__}) "
            f"reads versions up to {FORMAT_VERSION}: upgrade robocache or rebuild the cache")
    try:
        n = manifest["num_frames"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"num_frames is {n!r}, not a count")
        keys = manifest["keys"]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"keys is {keys!r:.80}, not a list of names")
        entries = {k: manifest["arrays"][k] for k in keys}
        raw_ends = list(manifest["episode_ends"])
        if not all(isinstance(e, int) and not isinstance(e, bool) for e in raw_ends):
            raise ValueError(f"episode_ends holds non-integers {raw_ends[:5]}")
        if not keys:
            raise ValueError("keys is [], a cache holds at least one key")
        if not raw_ends:
            raise ValueError("episode_ends is [], a cache holds at least one episode")
        if any(not 0 < e < 2**63 for e in raw_ends):
            raise ValueError(f"episode_ends holds {[e for e in raw_ends if not 0 < e < 2**63][:3]}"
                             f", not frame counts")
        ends = np.asarray(raw_ends, dtype=np.int64)
        fps = manifest.get("fps")
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float))
                                or not math.isfinite(fps) or fps <= 0):
            raise ValueError(f"fps is {fps!r}, not a positive number")
        ts_entry = manifest.get("timestamps")
        image_keys = manifest.get("image_keys")  # absent (or [] in version 1): detected
        if image_keys is not None and (not isinstance(image_keys, list) or not all(
                isinstance(k, str) for k in image_keys)):
            raise ValueError(f"image_keys is {image_keys!r:.80}, not a list of names")
        if image_keys and not set(image_keys) <= set(keys):
            raise ValueError(f"image_keys names {sorted(set(image_keys) - set(keys))}, which are "
                             f"not among its keys")
        image_keys = None if not image_keys and (image_keys is None or version < 2) \
            else tuple(image_keys)
        stats_json = manifest.get("stats") or {}
        meta = manifest.get("meta") or {}
        if not isinstance(stats_json, dict) or not all(
                isinstance(v, dict) and all(isinstance(e, dict) for e in v.values())
                for v in stats_json.values()):
            raise ValueError("stats is not an object of key -> {stat: {dtype, shape, data}}")
        if not isinstance(meta, dict):
            raise ValueError(f"meta is a {type(meta).__name__}, not an object")
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetFormatError(f"{mpath}: malformed manifest ({type(exc).__name__}: "
                                 f"{exc})") from None
    if ends.ndim != 1 or (ends.size and (int(ends[-1]) != n or
                                         (ends <= np.concatenate([[0], ends[:-1]])).any())):
        raise DatasetFormatError(f"{mpath}: episode_ends must be strictly increasing and end at "
                                 f"num_frames={n}")
    files = [(k, e) for k, e in entries.items()]
    if ts_entry is not None:
        files.append((None, ts_entry))
    _ensure_open_files(len(files), mpath)
    demoted = []  # image keys that are not frames the image kernel takes
    opened = []  # (key, entry, path, file): each file opened in the pinned directory
    try:
        for k, e in files:
            path = _entry_path(root, e, mpath, k)
            try:
                # named by its absolute path (np.memmap takes abspath(f.name): the working
                # directory, maybe gone, is never asked), opened by its name in the pinned one
                f = open(str(path), "rb", buffering=0,
                         opener=lambda _path, flags, name=e["file"]: opener(name, flags))
            except FileNotFoundError:
                if _moved(root, dfd):
                    raise _Replaced from None
                raise DatasetFormatError(f"{path}: missing (listed in {MANIFEST})") from None
            except IsADirectoryError:
                raise DatasetFormatError(f"{path}: a directory, not a regular file (listed in "
                                         f"{MANIFEST})") from None
            opened.append((k, e, path, f))
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise DatasetFormatError(f"{path}: not a regular file (listed in {MANIFEST})")
        if verify:
            _verify(opened, progress)
        arrays = {}
        timestamps = None
        for k, e, path, f in opened:
            arr = _load(path, e, k, f)
            if k is None:
                timestamps = arr
            else:
                arrays[k] = arr
            if arr.ndim < 1 or arr.shape[0] != n:
                raise DatasetFormatError(f"{path}: {arr.shape[0] if arr.ndim else 0} rows, the "
                                         f"manifest says num_frames={n}")
            if k is None:
                _check_timestamps(path, arr, n)
            if k is not None and image_keys and k in image_keys and not is_camera_frames(arr):
                demoted.append(k)  # named a camera key by an earlier version
    finally:
        for *_, f in opened:
            f.close()  # the maps keep their files
    stats = {key: {name: _stat_value(mpath, key, name, entry) for name, entry in per.items()}
             for key, per in stats_json.items()}
    if demoted:
        warnings.warn(f"{mpath}: {demoted} are named camera keys in this cache (earlier "
                      f"RoboCache versions took them) but are not frames the image kernel takes "
                      f"(uint8 [N, H, W] or [N, H, W, C] with C = 1, 3 or 4): they load as "
                      f"ordinary keys", stacklevel=3)
        image_keys = tuple(k for k in image_keys if k not in demoted)
    return TrajectorySource(arrays=arrays, episode_ends=ends,
                            fps=None if fps is None else float(fps), timestamps=timestamps,
                            stats=stats or None, image_keys=image_keys,
                            meta={**meta, "cache": str(root)})


def _check_timestamps(path: Path, ts: np.ndarray, n: int) -> None:
    """The timestamps file holds what the store takes: one finite number per frame."""
    if ts.ndim != 1:
        raise DatasetFormatError(f"{path}: timestamps of shape {ts.shape}; expected one per "
                                 f"frame, ({n},)")
    if ts.dtype.kind not in "iuf":
        raise DatasetFormatError(f"{path}: timestamps of dtype {ts.dtype}; expected numbers")
    if ts.dtype.kind == "f" and not np.isfinite(ts).all():
        raise DatasetFormatError(f"{path}: timestamps hold NaN or inf")


def _stat_value(mpath: Path, key: str, name: str, entry) -> np.ndarray:
    """One statistic of the manifest, {dtype, shape, data}: `data` a flat list of exactly
    prod(shape) numbers of that dtype (no nulls, strings or fractions read as integers)."""
    what = f"{mpath}: stats[{key!r}][{name!r}]"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data"} <= set(entry):
        raise DatasetFormatError(f"{what}: expected an object with dtype, shape and data")
    dtype, shape, data = entry["dtype"], entry["shape"], entry["data"]
    try:
        dt = _array.numpy_dtype("bfloat16") if dtype == "bfloat16" else np.dtype(dtype)
    except TypeError:
        raise DatasetFormatError(f"{what}: dtype {dtype!r} is not a dtype name") from None
    if dtype != "bfloat16" and dt.kind not in "biuf":  # an "object" dtype takes anything
        raise DatasetFormatError(f"{what}: dtype {dt} is not numbers")
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise DatasetFormatError(f"{what}: shape {shape!r:.80} is not a list of sizes")
    if not isinstance(data, list) or len(data) != math.prod(shape):
        raise DatasetFormatError(f"{what}: data must be a list of {math.prod(shape)} values "
                                 f"(shape {shape}), got {type(data).__name__} of "
                                 f"{len(data) if isinstance(data, list) else 'no'} values")
    allowed = {"b": (bool,), "i": (int,), "u": (int,)}.get(dt.kind, (int, float))
    bad = [v for v in data if not isinstance(v, allowed) or (dt.kind != "b" and
                                                              isinstance(v, bool))]
    if bad:
        raise DatasetFormatError(f"{what}: data holds {bad[:3]!r:.80}, not {dt} values")
    try:
        if dtype == "bfloat16":  # written as float32 values, exact
            value = np.asarray(data, dtype=np.float32).astype(dt)
        else:
            with np.errstate(over="ignore"):  # an overflow is refused just below
                value = np.asarray(data, dtype=dt)
        if dt.kind == "f" or dtype == "bfloat16":  # 1e39 in float32 is inf: refused as 300 in uint8
            wide = np.asarray(data, dtype=np.float64)
            if (np.isfinite(wide) & ~np.isfinite(value.astype(np.float64))).any():
                raise OverflowError(f"values beyond {dt}'s range")
        return value.reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise DatasetFormatError(f"{what}: data do not fit {dt} and shape {shape} "
                                 f"({exc})") from None


def _ensure_open_files(count: int, mpath: Path) -> None:
    """Room for `count` more open files: each memory map holds a descriptor of its file (Python's
    mmap keeps one), so a cache of many keys needs one per key. The soft limit is raised up to
    the hard one where that is short (as many programs do); past the hard limit, a clear error
    instead of EMFILE halfway."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        return
    need = in_use + 2 * count + 4  # the open file and the map's descriptor, while loading
    want = need + 60  # and some room for the program's own files
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or want <= soft:
        return
    if hard == resource.RLIM_INFINITY or need <= hard:
        top = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if top > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
        return
    raise DatasetFormatError(f"{mpath}: {count} files to map, and this process may open only "
                             f"{hard} files (hard limit, {in_use} in use): raise it (ulimit -Hn) "
                             f"or save the data with fewer keys")


def _entry_path(root: Path, entry, mpath: Path, key) -> Path:
    what = f"{mpath}: {'timestamps' if key is None else repr(key)}"
    if not isinstance(entry, dict):
        raise DatasetFormatError(f"{what}: expected an object with file, dtype, shape, sha256")
    name = entry.get("file")
    if not isinstance(name, str) or not _FILE.match(name):
        raise DatasetFormatError(f"{what}: file {name!r} is not a plain .npy file name")
    return _paths.inside(root, name, what)  # the file itself is opened in the pinned directory


def _sha256(fd: int, bar) -> str:
    h = hashlib.sha256()
    buf = bytearray(_HASH_BLOCK)
    view = memoryview(buf)
    at = 0
    while True:
        got = os.preadv(fd, [view], at)
        if not got:
            break
        at += got
        h.update(view[:got])
        bar.update(got)
    return h.hexdigest()


def _verify(opened, progress) -> None:
    total = sum(os.fstat(f.fileno()).st_size for *_, f in opened)
    with _progress.bar(total, "verifying cache", progress=progress) as bar:
        workers = max(1, min(8, usable_cpus(), len(opened)))
        with ThreadPoolExecutor(workers) as pool:
            digests = list(pool.map(lambda o: _sha256(o[3].fileno(), bar), opened))
    for (_, e, path, _f), got in zip(opened, digests, strict=True):
        want = e.get("sha256")
        if got != want:
            raise DatasetFormatError(f"{path}: checksum mismatch (manifest sha256 {want}, file "
                                     f"{got}): the file is corrupt or was changed after the "
                                     f"cache was written")


def _load(path: Path, entry: dict, key, f) -> np.ndarray:
    """The array of the .npy file `path`, open as `f`: a read-only memory map (an empty array
    is read), checked against the manifest's entry first."""
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    if not isinstance(dtype, str) or not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise DatasetFormatError(f"{path}: the manifest's entry has dtype {dtype!r} and shape "
                                 f"{shape!r}; expected a dtype name and a list of ints")
    if dtype not in _STORE_DTYPES:
        raise DatasetFormatError(f"{path}: the manifest's dtype {dtype!r} is not one a store "
                                 f"holds ({', '.join(_STORE_DTYPES)})")
    stored = "uint16" if dtype == "bfloat16" else dtype
    try:
        f.seek(0)
        major, minor = np.lib.format.read_magic(f)
        hdr = (np.lib.format.read_array_header_1_0 if major == 1
               else np.lib.format.read_array_header_2_0)(f)
        fshape, fortran, fdtype = hdr
        if fdtype.hasobject:
            raise DatasetFormatError(f"{path}: holds Python objects (refused: no pickle)")
        if fdtype.name != stored or list(fshape) != list(shape) or fortran:
            raise DatasetFormatError(f"{path}: header says dtype {fdtype}, shape {list(fshape)}"
                                     f"{', Fortran order' if fortran else ''}; the manifest says "
                                     f"{dtype}, {shape}")
        if math.prod(fshape) == 0:
            arr = np.empty(fshape, dtype=fdtype)
        else:  # what np.load(mmap_mode="r") maps, from this descriptor
            arr = np.memmap(f, dtype=fdtype, mode="r", shape=tuple(fshape), order="C",
                            offset=f.tell())
    except DatasetFormatError:
        raise
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as exc:
        raise DatasetFormatError(f"{path}: unreadable .npy file ({exc})") from None
    if dtype == "bfloat16":
        arr = arr.view(_array.numpy_dtype("bfloat16"))
    return arr
