"""Keep every file a reader opens inside the dataset's root.

Paths that come from metadata (templates in info.json, file names in a manifest) are joined
with `inside`, which rejects absolute paths, ".." components and symlinks that resolve outside
the root. `check_tree` walks a directory for symlinks that leave it (for readers, like zarr's,
that open files by listing a directory).
"""

from __future__ import annotations

import os
import string
from pathlib import Path, PurePosixPath

from .._errors import DatasetFormatError


def root_dir(root, what: str) -> Path:
    path = Path(os.fspath(root)).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: expected a directory, got {str(path)!r} "
                                f"({'a file' if path.exists() else 'nothing there'})")
    return path.resolve()


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
    if resolved != root and root not in resolved.parents:
        raise DatasetFormatError(f"{what}: path {rel!r} resolves to {str(resolved)!r}, outside "
                                 f"the dataset root {str(root)!r} (a symlink out of the dataset?)")
    return resolved


def check_tree(root: Path, what: str) -> None:
    """Fail if any symlink under root resolves outside root (one directory listing per
    directory; only symlinks are resolved)."""
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    target = Path(entry.path).resolve()
                    if target != root and root not in target.parents:
                        raise DatasetFormatError(
                            f"{what}: {entry.path!r} is a symlink to {str(target)!r}, outside "
                            f"the dataset root {str(root)!r}")
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))


def check_template(template, allowed: set[str], what: str) -> str:
    """A str.format template whose fields are plain names from `allowed` (no attribute or
    index access, which str.format would evaluate on our values)."""
    if not isinstance(template, str) or not template:
        raise DatasetFormatError(f"{what}: expected a non-empty path template string, "
                                 f"got {template!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise DatasetFormatError(f"{what}: malformed path template {template!r}: {exc}") from None
    for f in fields:
        if f not in allowed:
            raise DatasetFormatError(f"{what}: path template {template!r} uses field {{{f}}}; "
                                     f"expected only {sorted(allowed)}")
    return template
