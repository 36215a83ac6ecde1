"""Guards on what a dataset's metadata declares: the files a reader opens, the arrays it makes.

Paths that come from metadata (templates in info.json, file names in a manifest) are joined
with `inside`, which rejects absolute paths, ".." components and symlinks that resolve outside
the root (a huggingface_hub cache snapshot's symlinks into its repository's blobs/ are inside).
`check_tree` walks a directory for symlinks that leave it (for readers, like zarr's, that open
files by listing a directory). `check_template` admits a str.format path template
only with plain fields and plain integer widths (what LeRobot writes: `{chunk_index:03d}`,
`{episode_index:06d}`, `{video_key}`). `empty` allocates an array of a shape read from
metadata, turning a size no array can have into a DatasetFormatError and a failed allocation
into a MemoryError, both naming the metadata, the shape and the bytes.
"""

from __future__ import annotations

import math
import os
import re
import string
from pathlib import Path, PurePosixPath

import numpy as np

from .._errors import DatasetFormatError


def root_dir(root, what: str) -> Path:
    path = Path(os.fspath(root)).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: expected a directory, got {str(path)!r} "
                                f"({'a file' if path.exists() else 'nothing there'})")
    return path.resolve()


def _roots(root: Path) -> tuple[Path, ...]:
    """Where a dataset's files may resolve to: root, and for a huggingface_hub cache snapshot
    (<repo>/snapshots/<revision>, what snapshot_download() returns without local_dir, whose
    files are symlinks into <repo>/blobs) that repository's blobs directory."""
    if root.parent.name == "snapshots":
        blobs = root.parent.parent / "blobs"
        if blobs.is_dir():
            return (root, blobs.resolve())
    return (root,)


def _within(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def inside(root: Path, relative: str, what: str) -> Path:
    """root / relative, refusing anything that could leave root (root must be resolved)."""
    rel = str(relative)
    if "\x00" in rel or "\\" in rel:
        raise DatasetFormatError(f"{what}: path {rel!r} has a forbidden character")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or rel.startswith("~") or (len(rel) > 1 and rel[1] == ":"):
        raise DatasetFormatError(f"{what}: path {rel!r} is absolute; dataset paths must be "
                                 f"relative to the dataset root {str(root)!r}")
    if any(part == ".." for part in pure.parts):
        raise DatasetFormatError(f"{what}: path {rel!r} contains '..'; dataset paths must stay "
                                 f"inside the dataset root {str(root)!r}")
    path = root.joinpath(*pure.parts)
    resolved = path.resolve()
    if not _within(resolved, _roots(root)):
        raise DatasetFormatError(f"{what}: path {rel!r} resolves to {str(resolved)!r}, outside "
                                 f"the dataset root {str(root)!r} (a symlink out of the dataset?)")
    return resolved


def check_tree(root: Path, what: str) -> None:
    """Fail if any symlink under root resolves outside root (one directory listing per
    directory; only symlinks are resolved)."""
    roots = _roots(root)
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    target = Path(entry.path).resolve()
                    if not _within(target, roots):
                        raise DatasetFormatError(
                            f"{what}: {entry.path!r} is a symlink to {str(target)!r}, outside "
                            f"the dataset root {str(root)!r}")
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))


# a plain integer field: optional zero fill, a width of at most two digits ("03d", "06d", "d")
INT_SPEC = re.compile(r"0?[0-9]{0,2}d")


def check_template(template, allowed: set[str], what: str,
                   text_fields: frozenset[str] = frozenset()) -> str:
    """A str.format template whose fields are plain names from `allowed` (no attribute or
    index access, which str.format would evaluate on our values), without a conversion (!r),
    and whose format specs are empty or a plain integer width like 03d (empty for the string
    fields in `text_fields`): nothing nested in a spec, no width that makes a path of gigabytes,
    no spec that str.format would refuse later."""
    if not isinstance(template, str) or not template:
        raise DatasetFormatError(f"{what}: expected a non-empty path template string, "
                                 f"got {template!r}")
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template)
                  if f is not None]
    except ValueError as exc:
        raise DatasetFormatError(f"{what}: malformed path template {template!r}: {exc}") from None
    for f, spec, conv in fields:
        if f not in allowed:
            raise DatasetFormatError(f"{what}: path template {template!r} uses field {{{f}}}; "
                                     f"expected only {sorted(allowed)}")
        if conv is not None:
            raise DatasetFormatError(f"{what}: path template {template!r} converts field "
                                     f"{{{f}}} with !{conv}; expected plain fields")
        if f in text_fields:
            if spec:
                raise DatasetFormatError(f"{what}: path template {template!r} formats the "
                                         f"string field {{{f}}} with {spec!r}; expected "
                                         f"{{{f}}} alone")
        elif spec and not INT_SPEC.fullmatch(spec):
            raise DatasetFormatError(f"{what}: path template {template!r} formats the integer "
                                     f"field {{{f}}} with {spec[:40]!r}; expected nothing or "
                                     f"a zero-filled width of at most 2 digits, like "
                                     f"{{{f}:03d}}")
    return template


def _human(nbytes: int) -> str:
    size, unit = float(nbytes), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):  # noqa: B007
        if size < 1024:
            break
        size /= 1024
    return f"{nbytes} B" if unit == "B" else f"{size:.1f} {unit}"


def empty(shape, dtype, where: str) -> np.ndarray:
    """np.empty(shape, dtype) for a shape that metadata declares. `where` names the file and
    the key; a shape no array can have is a DatasetFormatError, a failed allocation a
    MemoryError, both saying the shape and the bytes."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    size = f"shape {list(shape)} of {dtype}: {nbytes:,} bytes ({_human(nbytes)})"
    if nbytes > np.iinfo(np.intp).max:
        raise DatasetFormatError(f"{where}: declares {size}, more than any array can hold")
    try:
        return np.empty(shape, dtype=dtype)
    except MemoryError:
        raise MemoryError(f"{where}: cannot allocate {size}") from None
    except (ValueError, OverflowError) as exc:  # NumPy's limits: too many dimensions,
        # a dimension past intp in an empty shape
        raise DatasetFormatError(f"{where}: declares {size}, which NumPy refuses "
                                 f"({exc})") from None
