"""Arrow columns -> contiguous NumPy rows, without a Python loop over rows.

A feature column is a primitive column (one value per row: [N]) or lists of a fixed length,
possibly nested ([N, *shape]): FixedSizeList (what `datasets.Sequence(length=n)` writes), List /
LargeList whose every row has the same length (what `datasets.Array2D..5D` store), or extension
types over those. Values are flattened through the child arrays (zero-copy for numbers) and
copied once into the caller's preallocated output.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from .._errors import DatasetFormatError


def is_list_type(t: pa.DataType) -> bool:
    if isinstance(t, pa.ExtensionType):
        t = t.storage_type
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def list_depth(t: pa.DataType) -> int:
    depth = 0
    while True:
        if isinstance(t, pa.ExtensionType):
            t = t.storage_type
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            depth += 1
            t = t.value_type
        else:
            return depth


def _flat(arr: pa.Array, where: str) -> tuple[np.ndarray, int]:
    """(values as a 1-D NumPy array, elements per row) of one Arrow chunk."""
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    if arr.null_count:
        raise DatasetFormatError(f"{where}: {arr.null_count} null values (expected a value "
                                 f"in every row)")
    t = arr.type
    if pa.types.is_fixed_size_list(t):
        values, inner = _flat(arr.flatten(), where)
        return values, inner * t.list_size
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        offsets = arr.offsets.to_numpy()
        sizes = np.diff(offsets)
        if sizes.size and (sizes != sizes[0]).any():
            bad = int(np.flatnonzero(sizes != sizes[0])[0])
            raise DatasetFormatError(f"{where}: rows hold lists of different lengths (row {bad} "
                                     f"has {int(sizes[bad])}, row 0 has {int(sizes[0])})")
        values, inner = _flat(arr.flatten(), where)
        return values, inner * (int(sizes[0]) if sizes.size else 0)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return arr.to_numpy(zero_copy_only=False), 1
    raise DatasetFormatError(f"{where}: expected numbers or fixed-length lists of numbers, "
                             f"got Arrow type {t}")


def column_into(out: np.ndarray, column, where: str) -> None:
    """Copy a column (Array or ChunkedArray) of len(out) rows into out [n, *shape]."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    n_rows = sum(len(c) for c in chunks)
    if n_rows != len(out):
        raise DatasetFormatError(f"{where}: {n_rows} rows, expected {len(out)}")
    width = math.prod(out.shape[1:])
    rows = out.reshape(len(out), width)  # a view: out is C-contiguous
    pos = 0
    for chunk in chunks:
        n = len(chunk)
        if n == 0:
            continue
        values, per_row = _flat(chunk, where)
        if per_row != width:
            raise DatasetFormatError(f"{where}: {per_row} values per row, expected {width} "
                                     f"(shape {list(out.shape[1:]) or [1]} from meta/info.json)")
        if (values.dtype.kind in "iu" and out.dtype.kind in "iu" and values.size
                and not np.can_cast(values.dtype, out.dtype, "safe")):  # no silent wrap
            info = np.iinfo(out.dtype)
            lo, hi = int(values.min()), int(values.max())
            if lo < info.min or hi > info.max:
                raise DatasetFormatError(f"{where}: stored as {values.dtype} with values in "
                                         f"[{lo}, {hi}], outside the declared {out.dtype}")
        try:
            np.copyto(rows[pos:pos + n], values.reshape(n, width), casting="same_kind")
        except TypeError:
            raise DatasetFormatError(f"{where}: stored as {values.dtype}, which does not cast "
                                     f"to the declared dtype {out.dtype}") from None
        pos += n
