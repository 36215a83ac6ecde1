"""rc.resample and rc.fuse: align time series onto target times.

Semantics (both backends): for a target time t, i = the last source index with src[i] <= t.
- "linear": before the first source time -> the first row; at or after the last -> the last row;
  otherwise row i + w * (row i+1 - row i) with w = (t - src[i]) / (src[i+1] - src[i]).
  Identical to numpy.interp per feature (at a duplicated timestamp the last sample wins).
- "nearest": the closer of rows i and i+1; a tie goes to the earlier row. Clamped at both ends.
- "previous": zero-order hold, row max(i, 0).
nearest / previous copy values exactly; linear rounds once to the data's dtype.
"""

from __future__ import annotations

import functools
import struct

import numpy as np

from .. import _array, _kernels, _runtime
from .. import _validate as V

METHODS = {"linear": 0, "nearest": 1, "previous": 2}
TIME_DTYPES = ("float32", "float64")
THREADS = 256  # 8 warps, one output row each
MAX_STREAMS = 8  # RC_MAX_STREAMS in resample.cu


def resample(data, src_times, tgt_times, method: str = "linear", *, check_times: bool = True):
    """Resample `data` [B,S,D] (or [S,D]) sampled at `src_times` [B,S] ([S]) onto `tgt_times`
    [B,T] ([T]). Returns [B,T,D] ([T,D]) in the input's library, device and dtype.

    `check_times` verifies that source times are finite and non-decreasing and target times
    finite; on a GPU that costs a reduction and one synchronisation, so a hot loop over data
    already checked may pass False.
    """
    data = _array.as_array("data", data)
    src_times = _array.as_array("src_times", src_times)
    tgt_times = _array.as_array("tgt_times", tgt_times)
    try:  # a hot loop calls with the same shapes: check each signature once
        key = (method, _array.signature(data), _array.signature(src_times),
               _array.signature(tgt_times))
        meta = _CHECKED.get(key)
    except TypeError:  # an unhashable argument: check it every time
        key = meta = None
    if meta is None:
        meta = _check_resample(data, src_times, tgt_times, method)
        _remember(key, meta)
    squeeze, dtype, tdtype = meta
    if squeeze:
        data, src_times, tgt_times = data[None], src_times[None], tgt_times[None]
    if check_times:
        V.check_times("src_times", src_times)
        V.check_times_finite("tgt_times", tgt_times)
    if _array.is_device(data):
        out = _resample_cuda(data, src_times, tgt_times, METHODS[method], dtype, tdtype)
    else:
        out = _array.from_numpy(
            _resample_numpy(data, src_times, tgt_times, METHODS[method]), data, dtype)
    return out[0] if squeeze else out


def fuse(streams, tgt_times, method: str = "linear", *, check_times: bool = True):
    """Align several (data [B,S_k,D_k], times [B,S_k]) streams onto `tgt_times` [B,T] and
    concatenate their features: [B,T,sum D_k]. One kernel launch on the GPU.

    All streams share one dtype and one time dtype; 2-D streams ([S_k,D_k] with [S_k] times and
    [T] targets) give [T, sum D_k].
    """
    key = _fuse_key(streams, tgt_times, method)
    meta = None if key is None else _CHECKED.get(key)
    if meta is None:  # the full checks (time checks included), then remember the signature
        checked, tgt_times, meta = _check_fuse(streams, tgt_times, method, check_times)
        _remember(key, meta)
        squeeze, dtype, tdtype = meta
    else:  # these shapes passed before: only the times' values can be wrong
        squeeze, dtype, tdtype = meta
        if squeeze:
            checked = [(d[None], t[None]) for d, t in streams]
            tgt_times = tgt_times[None]
        else:
            checked = [(d, t) for d, t in streams]
        if check_times:
            for k, (_, t) in enumerate(checked):
                V.check_times(f"streams[{k}] times", t)
            V.check_times_finite("tgt_times", tgt_times)
    if _array.is_device(tgt_times):
        out = _fuse_cuda(checked, tgt_times, METHODS[method], dtype, tdtype)
    else:
        parts = [_resample_numpy(d, t, tgt_times, METHODS[method]) for d, t in checked]
        out = _array.from_numpy(np.concatenate(parts, axis=-1), tgt_times, dtype)
        if _array.library(checked[0][0]) != _array.library(tgt_times):  # pragma: no cover
            raise AssertionError("same-device check let mixed libraries through")
    return out[0] if squeeze else out


# ---------------------------------------------------------------------------------------------
# Argument checks, remembered per signature

# Signatures (method, then _array.signature of each array) that passed a check -> what the check
# derived. Bounded: cleared when full.
_CHECKED: dict = {}
_MAX_CHECKED = 256


def _remember(key, meta) -> None:
    if key is not None:
        if len(_CHECKED) >= _MAX_CHECKED:
            _CHECKED.clear()
        _CHECKED[key] = meta


def _check_resample(data, src_times, tgt_times, method) -> tuple[bool, str, str]:
    """resample's argument checks: (squeeze, data dtype, time dtype), or the error."""
    V.check_choice("method", method, tuple(METHODS))
    V.check_rank("data", data, (2, 3))
    squeeze = data.ndim == 2
    V.check_rank("src_times", src_times, (data.ndim - 1,))
    V.check_rank("tgt_times", tgt_times, (data.ndim - 1,))
    dtype = V.check_dtype("data", data, _array.FLOAT_DTYPES)
    tdtype = V.check_dtype("src_times", src_times, TIME_DTYPES)
    if _array.dtype_name(tgt_times) != tdtype:
        V.fail("tgt_times", f"the dtype of src_times ({tdtype})", _array.dtype_name(tgt_times),
               TypeError)
    V.check_same_device([("data", data), ("src_times", src_times), ("tgt_times", tgt_times)])
    if squeeze:
        data, src_times, tgt_times = data[None], src_times[None], tgt_times[None]
    B, S, D = data.shape
    V.check_dim("src_times", src_times, 0, B, "batch size of data")
    V.check_dim("src_times", src_times, 1, S, "source samples of data")
    V.check_dim("tgt_times", tgt_times, 0, B, "batch size of data")
    if S == 0:
        V.fail("data", "at least one source sample (S >= 1)", f"shape {tuple(data.shape)}")
    return squeeze, dtype, tdtype


def _fuse_key(streams, tgt_times, method):
    """fuse's cache key when every stream is a (data, times) pair of arrays, else None."""
    if not isinstance(streams, (list, tuple)) or not 0 < len(streams) <= MAX_STREAMS:
        return None
    try:
        key = [method, _array.signature(tgt_times)]
        for pair in streams:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                return None
            key.append((_array.signature(pair[0]), _array.signature(pair[1])))
        key = tuple(key)
        hash(key)
    except TypeError:  # lists or scalars as arrays, an unhashable method: the full checks
        return None
    return key


def _check_fuse(streams, tgt_times, method, check_times: bool):
    """fuse's argument checks: (streams as squeezed (data, times) arrays, target times,
    (squeeze, data dtype, time dtype)), or the error."""
    if not isinstance(streams, (list, tuple)) or len(streams) == 0:
        V.fail("streams", "a non-empty list of (data, times) pairs", repr(type(streams).__name__))
    if len(streams) > MAX_STREAMS:
        V.fail("streams", f"at most {MAX_STREAMS} streams", f"{len(streams)}")
    V.check_choice("method", method, tuple(METHODS))
    tgt_times = _array.as_array("tgt_times", tgt_times)
    pairs = []
    for k, pair in enumerate(streams):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            V.fail(f"streams[{k}]", "a (data, times) pair", repr(pair)[:80])
        pairs.append((_array.as_array(f"streams[{k}] data", pair[0]),
                      _array.as_array(f"streams[{k}] times", pair[1])))
    d0 = pairs[0][0]
    V.check_rank("streams[0] data", d0, (2, 3))
    squeeze = d0.ndim == 2
    V.check_rank("tgt_times", tgt_times, (d0.ndim - 1,))
    dtype = V.check_dtype("streams[0] data", d0, _array.FLOAT_DTYPES)
    tdtype = V.check_dtype("tgt_times", tgt_times, TIME_DTYPES)
    V.check_same_device([("tgt_times", tgt_times)]
                        + [(f"streams[{k}] {w}", a) for k, p in enumerate(pairs)
                           for w, a in zip(("data", "times"), p, strict=True)])
    if squeeze:
        tgt_times = tgt_times[None]
    B = tgt_times.shape[0]
    checked = []
    for k, (d, t) in enumerate(pairs):
        V.check_rank(f"streams[{k}] data", d, (d0.ndim,))
        V.check_rank(f"streams[{k}] times", t, (d0.ndim - 1,))
        if _array.dtype_name(d) != dtype:
            V.fail(f"streams[{k}] data", f"dtype {dtype} (that of streams[0])",
                   _array.dtype_name(d), TypeError)
        if _array.dtype_name(t) != tdtype:
            V.fail(f"streams[{k}] times", f"dtype {tdtype} (that of tgt_times)",
                   _array.dtype_name(t), TypeError)
        if squeeze:
            d, t = d[None], t[None]
        V.check_dim(f"streams[{k}] data", d, 0, B, "batch size of tgt_times")
        V.check_dim(f"streams[{k}] times", t, 0, B, "batch size of tgt_times")
        V.check_dim(f"streams[{k}] times", t, 1, d.shape[1], f"samples of streams[{k}] data")
        if d.shape[1] == 0:
            V.fail(f"streams[{k}] data", "at least one sample", f"shape {tuple(d.shape)}")
        if check_times:
            V.check_times(f"streams[{k}] times", t)
        checked.append((d, t))
    if check_times:
        V.check_times_finite("tgt_times", tgt_times)
    return checked, tgt_times, (squeeze, dtype, tdtype)


# ---------------------------------------------------------------------------------------------
# NumPy backend


def _interp_rows(src: np.ndarray, tgt: np.ndarray, method: int):
    """Per target: (row0, row1, w) as in common.cuh's rc_interp_rows. src [S], tgt [T]."""
    S = src.shape[0]
    i = np.searchsorted(src, tgt, side="right") - 1
    inner = (i >= 0) & (i < S - 1)
    ic = np.clip(i, 0, S - 1)
    if method == METHODS["previous"]:
        return ic, ic, np.zeros(tgt.shape)
    nxt = np.minimum(ic + 1, S - 1)
    t0, t1 = src[ic], src[nxt]
    if method == METHODS["nearest"]:
        row = np.where(inner & ((t1 - tgt) < (tgt - t0)), nxt, ic)
        return row, row, np.zeros(tgt.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(inner, (tgt - t0).astype(np.float64) / (t1 - t0), 0.0)
    return ic, np.where(inner, nxt, ic), w


def _resample_numpy(data, src_times, tgt_times, method: int) -> np.ndarray:
    d = _array.to_numpy(data)
    src = _array.to_numpy(src_times)
    tgt = _array.to_numpy(tgt_times)
    B, _, D = d.shape
    T = tgt.shape[1]
    if method != METHODS["linear"]:
        out = np.empty((B, T, D), dtype=d.dtype)
    else:
        out = np.empty((B, T, D), dtype=np.float64)
    for b in range(B):  # one vectorised pass per sequence
        r0, r1, w = _interp_rows(src[b], tgt[b], method)
        if method != METHODS["linear"]:
            out[b] = d[b, r0]
        else:
            a = d[b, r0].astype(np.float64)
            c = d[b, r1].astype(np.float64)
            out[b] = a + w[:, None] * (c - a)
    return out


# ---------------------------------------------------------------------------------------------
# CUDA backend


def _blocks_for_rows(rows: int) -> int:
    per_block = THREADS // 32
    return (rows + per_block - 1) // per_block


def _resample_cuda(data, src, tgt, method: int, dtype: str, tdtype: str):
    data, src, tgt = _array.contiguous(data), _array.contiguous(src), _array.contiguous(tgt)
    B, S, D = data.shape
    T = tgt.shape[1]
    out = _array.empty(data, (B, T, D), dtype)
    if B * T * D == 0:
        return out
    ptrs = [_array.data_ptr(x) for x in (data, src, tgt, out)]
    vec = (D * _array.ITEMSIZE[dtype]) % 16 == 0 and int(ptrs[0]) % 16 == 0 \
        and int(ptrs[3]) % 16 == 0
    _runtime.launch(_kernels.RESAMPLE, _resample_name(dtype, tdtype, vec),
                    (_blocks_for_rows(B * T),), (THREADS,),
                    (*ptrs, *_int32s(B, S, T, D, method)), like=data)
    return out


@functools.lru_cache(maxsize=64)
def _resample_name(dtype: str, tdtype: str, vec: bool) -> str:
    return (f"resample_kernel<{_array.C_TYPES[dtype]}, {_array.C_TYPES[tdtype]}, "
            f"{'true' if vec else 'false'}>")


@functools.lru_cache(maxsize=256)
def _int32s(*values: int) -> tuple:
    """Kernel int arguments as np.int32, remembered per shape (a hot loop repeats them)."""
    return tuple(np.int32(v) for v in values)


FUSE_STREAMS_DTYPE = np.dtype({
    "names": ["data", "times", "S", "D", "col", "n"],
    "formats": [(np.uint64, MAX_STREAMS), (np.uint64, MAX_STREAMS), (np.int32, MAX_STREAMS),
                (np.int32, MAX_STREAMS), (np.int32, MAX_STREAMS), np.int32],
}, align=True)  # the layout of struct FuseStreams in resample.cu
_FUSE_DATA = FUSE_STREAMS_DTYPE.fields["data"][1]
_FUSE_TIMES = FUSE_STREAMS_DTYPE.fields["times"][1]


@functools.lru_cache(maxsize=256)
def _fuse_template(shapes: tuple[tuple[int, int], ...]) -> tuple[bytes, int]:
    """FuseStreams with the per-shape fields (S, D, col, n) set and null pointers, and the
    output width."""
    desc = np.zeros((), dtype=FUSE_STREAMS_DTYPE)
    col = 0
    for k, (S, D) in enumerate(shapes):
        desc["S"][k] = S
        desc["D"][k] = D
        desc["col"][k] = col
        col += D
    desc["n"] = len(shapes)
    return desc.tobytes(), col


_PACK_POINTERS = [struct.Struct(f"<{n}Q").pack_into for n in range(MAX_STREAMS + 1)]


def _fuse_cuda(streams, tgt, method: int, dtype: str, tdtype: str):
    tgt = _array.contiguous(tgt)
    B, T = tgt.shape
    data = [_array.contiguous(d) for d, _ in streams]
    times = [_array.contiguous(t) for _, t in streams]
    template, W = _fuse_template(tuple((int(d.shape[1]), int(d.shape[2])) for d in data))
    out = _array.empty(tgt, (B, T, W), dtype)
    if B * T * W == 0:
        return out
    buf = bytearray(template)
    pack = _PACK_POINTERS[len(data)]
    pack(buf, _FUSE_DATA, *map(_array.address, data))
    pack(buf, _FUSE_TIMES, *map(_array.address, times))
    desc = np.frombuffer(buf, dtype=FUSE_STREAMS_DTYPE)[0]
    _runtime.launch(_kernels.RESAMPLE, _fuse_name(dtype, tdtype), (_blocks_for_rows(B * T),),
                    (THREADS,), (desc, _array.data_ptr(tgt), _array.data_ptr(out),
                                 *_int32s(B, T, W, method)), like=tgt)
    return out


@functools.lru_cache(maxsize=64)
def _fuse_name(dtype: str, tdtype: str) -> str:
    return f"fuse_kernel<{_array.C_TYPES[dtype]}, {_array.C_TYPES[tdtype]}>"
