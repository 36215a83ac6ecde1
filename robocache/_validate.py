"""Argument checks in one place: every message names the argument, what was expected and what came.

Nothing here launches work on a GPU except `check_times`, which reduces on the device and reads
one flag back (a synchronisation; callers on a hot path may skip it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _array


def fail(name: str, expected: str, got: object, exc: type[Exception] = ValueError):
    raise exc(f"{name}: expected {expected}, got {got}")


def check_flag(name: str, value) -> None:
    """A True / False argument (a NumPy bool too): "no" or None are not taken for a choice."""
    if value is True or value is False or isinstance(value, np.bool_):
        return
    fail(name, "True or False", repr(value), TypeError)


def check_rank(name: str, x, ranks: Sequence[int]) -> None:
    if x.ndim not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        fail(name, f"a {want} array", f"shape {tuple(x.shape)}")


def check_dtype(name: str, x, allowed: Sequence[str]) -> str:
    dt = _array.dtype_name(x)
    if dt not in allowed:
        fail(name, f"dtype in {list(allowed)}", dt, TypeError)
    return dt


def check_dim(name: str, x, axis: int, size: int, what: str) -> None:
    if x.shape[axis] != size:
        fail(name, f"size {size} on axis {axis} ({what})", f"shape {tuple(x.shape)}")


def check_choice(name: str, value, choices: Sequence[str]) -> None:
    if value not in choices:
        fail(name, f"one of {list(choices)}", repr(value))


def check_same_device(pairs: Sequence[tuple[str, object]]) -> None:
    """All arrays on one device of one library: ("numpy", None), ("cupy", 0), ("torch", "cuda:0")..."""
    first_name, first = pairs[0]
    where = _array.placement(first)
    for name, x in pairs[1:]:
        other = _array.placement(x)
        if other != where:
            fail(name, f"an array on the same device and library as {first_name} ({where})",
                 f"{other}")


def check_times(name: str, t, *, strictly: bool = False) -> None:
    """Times along the last axis must be finite and non-decreasing (increasing if strictly)."""
    if _array.numel(t) == 0:
        return
    xp = _array.namespace(t)
    finite = bool(xp.isfinite(t).all())
    if not finite:
        fail(name, "finite timestamps", "NaN or inf")
    if t.shape[-1] > 1:
        step = t[..., 1:] - t[..., :-1]
        ok = bool((step > 0).all()) if strictly else bool((step >= 0).all())
        if not ok:
            order = "increasing" if strictly else "non-decreasing"
            fail(name, f"{order} timestamps along the last axis", "a decreasing step")


def check_times_finite(name: str, t) -> None:
    """Times in any order, but no NaN or inf."""
    if _array.numel(t) == 0:
        return
    xp = _array.namespace(t)
    if not bool(xp.isfinite(t).all()):
        fail(name, "finite timestamps", "NaN or inf")


def check_out(out, like, shape: tuple, dtype: str) -> None:
    """An `out=` argument: an array of like's library on like's device, of `shape` and `dtype`,
    C-contiguous (overlap with the inputs is the op's to check)."""
    try:
        lib = _array.library(out)
    except TypeError:
        fail("out", "an array of the inputs' library", type(out).__name__, TypeError)
    if _array.placement(out) != _array.placement(like):
        fail("out", f"an array on the inputs' device ({_array.placement(like)})",
             _array.placement(out))
    if tuple(out.shape) != tuple(shape):
        fail("out", f"shape {tuple(shape)}", f"shape {tuple(out.shape)}")
    if _array.dtype_name(out) != dtype:
        fail("out", f"dtype {dtype}", _array.dtype_name(out), TypeError)
    contiguous = out.is_contiguous() if lib == "torch" else out.flags.c_contiguous
    if not contiguous:
        fail("out", "a C-contiguous array", "a non-contiguous one")


def check_no_overlap(out, nbytes: int, inputs) -> None:
    """`out` ([address, address + nbytes)) shares no byte with the inputs' (address, nbytes):
    an op that zeroes or writes its output before reading would read its own writes."""
    if nbytes:
        lo = _array.address(out)
        hi = lo + nbytes
        for a, n in inputs:
            if a < hi and lo < a + n:
                fail("out", "an array that overlaps none of the inputs",
                     "one that shares memory with an input")
