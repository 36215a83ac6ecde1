"""rc.resample and rc.fuse: align time series onto target times.

Semantics (both backends): for a target time t, i = the last source index with src[i] <= t.
- "linear": before the first source time -> the first row; at or after the last -> the last row;
  otherwise row i + w * (row i+1 - row i) with w = (t - src[i]) / (src[i+1] - src[i]).
  numpy.interp's rows and weights per feature (at a duplicated timestamp the last sample wins).
  The NumPy backend computes in float64 and rounds once to the data's dtype; the CUDA kernel
  computes in float32 for float32 / float16 / bfloat16 data (its weight is a float32: within ~3
  ulps of the larger neighbouring row's magnitude from the NumPy backend's value, which near
  zero between rows of opposite sign is not a few ulps of the result; rows whose difference
  overflows float32, |x| above ~1.7e38, give inf) and in float64 for float64 data. Unlike
  numpy.interp, a NaN or inf in a neighbouring row spreads into the result even at w = 0
  (numpy.interp returns the sample itself at its own time).
- "nearest": the closer of rows i and i+1; a tie goes to the earlier row. Clamped at both ends.
- "previous": zero-order hold, row max(i, 0).
nearest / previous copy values exactly.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .. import _array, _kernels, _runtime
from .. import _validate as V
from .._argblock import ArgBlock

METHODS = {"linear": 0, "nearest": 1, "previous": 2}
TIME_DTYPES = ("float32", "float64")
THREADS = 256  # 8 warps
ROWS_PER_WARP = 4  # resample_kernel: RC_RESAMPLE_ROWS in resample.cu
MAX_STREAMS = 8  # RC_MAX_STREAMS in resample.cu


def resample(data, src_times, tgt_times, method: str = "linear", *, check_times: bool = True,
             out=None):
    """Resample `data` [B,S,D] (or [S,D]) sampled at `src_times` [B,S] ([S]) onto `tgt_times`
    [B,T] ([T]). Returns [B,T,D] ([T,D]) in the input's library, device and dtype.

    `check_times` verifies that source times are finite and non-decreasing and target times
    finite; on a GPU that costs a reduction and one synchronisation, so a hot loop over data
    already checked may pass False. `out`: an array to write the result into and return
    (the result's library, device, shape and dtype, C-contiguous, not overlapping the inputs).
    """
    V.check_flag("check_times", check_times)
    hot_key = (method, _array.device_key(data), _array.device_key(src_times),
               _array.device_key(tgt_times)) if type(method) is str else None
    hot = None if hot_key is None else _HOT.get(hot_key)
    if hot is not None:  # contiguous device arrays of a signature seen before: launch
        if check_times:
            V.check_times("src_times", src_times)
            V.check_times_finite("tgt_times", tgt_times)
        return hot(data, src_times, tgt_times, out)
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
    if check_times:
        V.check_times("src_times", src_times)
        V.check_times_finite("tgt_times", tgt_times)
    if _array.is_device(data):  # (as_array left device arrays as they were: hot_key holds)
        data, src_times, tgt_times = (_array.contiguous(x) for x in (data, src_times, tgt_times))
        hot = _HotResample(data, src_times, tgt_times, METHODS[method], dtype, tdtype)
        if hot_key is not None and None not in hot_key:  # contiguous already: next call launches
            _remember(hot_key, hot, _HOT)
        return hot(data, src_times, tgt_times, out)
    if squeeze:
        data, src_times, tgt_times = data[None], src_times[None], tgt_times[None]
    res = _array.from_numpy(_resample_numpy(data, src_times, tgt_times, METHODS[method]), data,
                            dtype)
    return _into(out, res[0] if squeeze else res, (data, src_times, tgt_times))


def fuse(streams, tgt_times, method: str = "linear", *, check_times: bool = True, out=None):
    """Align several (data [B,S_k,D_k], times [B,S_k]) streams onto `tgt_times` [B,T] and
    concatenate their features: [B,T,sum D_k]. One kernel launch on the GPU.

    All streams share one dtype and one time dtype; 2-D streams ([S_k,D_k] with [S_k] times and
    [T] targets) give [T, sum D_k]. `check_times` and `out` as in resample.
    """
    V.check_flag("check_times", check_times)
    hk = _fuse_key(streams, tgt_times, method, _array.device_key)
    hot = None if hk is None else _HOT.get(hk)
    if hot is not None:  # contiguous device arrays of a signature seen before: launch
        if check_times:
            for k, (_, t) in enumerate(streams):
                V.check_times(f"streams[{k}] times", t)
            V.check_times_finite("tgt_times", tgt_times)
        return hot(streams, tgt_times, out)
    key = _fuse_key(streams, tgt_times, method, _array.signature)
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
        hot = _HotFuse(checked, tgt_times, METHODS[method], dtype, tdtype, squeeze)
        if hk is not None:  # contiguous already: the next call launches straight away
            _remember(hk, hot, _HOT)  # (hk: the key of the caller's arrays, as looked up)
        else:  # some array is not contiguous: launch on contiguous copies
            checked = [(_array.contiguous(d), _array.contiguous(t)) for d, t in checked]
            tgt_times = _array.contiguous(tgt_times)
        return hot(checked, tgt_times, out)
    parts = [_resample_numpy(d, t, tgt_times, METHODS[method]) for d, t in checked]
    res = _array.from_numpy(np.concatenate(parts, axis=-1), tgt_times, dtype)
    if _array.library(checked[0][0]) != _array.library(tgt_times):  # pragma: no cover
        raise AssertionError("same-device check let mixed libraries through")
    inputs = [a for pair in checked for a in pair] + [tgt_times]
    return _into(out, res[0] if squeeze else res, inputs)


# ---------------------------------------------------------------------------------------------
# Argument checks, remembered per signature

# Signatures (method, then _array.signature of each array) that passed a check -> what the check
# derived. Bounded: cleared when full.
_CHECKED: dict = {}
_MAX_CHECKED = 256


def _remember(key, meta, cache: dict = _CHECKED) -> None:
    """cache[key] = meta (nothing for key None); a full cache is cleared first."""
    if key is not None:
        if len(cache) >= _MAX_CHECKED:
            cache.clear()
        cache[key] = meta


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
    _check_int32("data", (B, S, D), "batch, samples and features")
    _check_int32("tgt_times", tgt_times.shape, "batch and target times")
    return squeeze, dtype, tdtype


_I32_MAX = 2**31 - 1  # the kernels' int32 sizes; the NumPy backend keeps the same limits


def _check_int32(name: str, sizes, what: str) -> None:
    if max(int(n) for n in sizes) > _I32_MAX:
        V.fail(name, f"{what} below 2**31 each (the kernels' int32 sizes)",
               f"shape {tuple(int(n) for n in sizes)}")


def _fuse_key(streams, tgt_times, method, key_of):
    """(method, key_of(tgt_times), key_of of every stream's data and times) as a cache key, or
    None: streams not a list of 1..MAX_STREAMS (data, times) pairs, a method that is not a str,
    or an argument key_of cannot key (None, or TypeError for lists and scalars). key_of:
    _array.signature (the argument checks) or _array.device_key (the hot path)."""
    if type(method) is not str or not isinstance(streams, (list, tuple)) \
            or not 0 < len(streams) <= MAX_STREAMS:
        return None
    try:
        key = [method, key_of(tgt_times)]
        for pair in streams:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                return None
            key += (key_of(pair[0]), key_of(pair[1]))
    except TypeError:  # lists or scalars as arrays: the full checks
        return None
    return None if None in key else tuple(key)


def _check_fuse(streams, tgt_times, method, check_times: bool):
    """fuse's argument checks: (streams as squeezed (data, times) arrays, target times,
    (squeeze, data dtype, time dtype)), or the error."""
    if not isinstance(streams, (list, tuple)):
        V.fail("streams", "a list of (data, times) pairs", f"a {type(streams).__name__}",
               TypeError)
    if len(streams) == 0:
        V.fail("streams", "a non-empty list of (data, times) pairs", "an empty list")
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
        _check_int32(f"streams[{k}] data", d.shape, "batch, samples and features")
        if check_times:
            V.check_times(f"streams[{k}] times", t)
        checked.append((d, t))
    _check_int32("tgt_times", tgt_times.shape, "batch and target times")
    width = sum(int(d.shape[2]) for d, _ in checked)
    if width > _I32_MAX:
        V.fail("streams", "features adding up to less than 2**31 (the fused row's int32 width)",
               f"{width}")
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


def _blocks_for_rows(rows: int, rows_per_warp: int = 1) -> int:
    per_block = THREADS // 32 * rows_per_warp
    return (rows + per_block - 1) // per_block


# Hot paths: for contiguous device arrays, (method, _array.device_key of each array) -> what a
# call of that signature needs besides the arrays' addresses: kernel name, grid, int arguments,
# output allocator and the output's key. Made after a call passed every check; bounded.
_HOT: dict = {}


class _Output:
    """Checks of an `out=` argument against the result it must hold."""

    def __init__(self, like, shape: tuple, dtype: str):
        self.shape, self.dtype = tuple(shape), dtype
        self.alloc = functools.partial(_array.allocator(like), self.shape, dtype)
        self.key = _array.device_key_of(like, self.shape, dtype)
        self.nbytes = math.prod(self.shape) * _array.ITEMSIZE[dtype]

    def check(self, out, like, inputs) -> None:
        """`out` fits (library, device, shape, dtype, contiguous) and overlaps no input;
        `inputs`: the inputs' (address, nbytes)."""
        if self.key is None or _array.device_key(out) != self.key:
            V.check_out(out, like, self.shape, self.dtype)
        V.check_no_overlap(out, self.nbytes, inputs)


def _into(out, result, inputs):
    """The NumPy backend's `out=`: checked like the device paths, then filled."""
    if out is None:
        return result
    V.check_out(out, result, tuple(result.shape), _array.dtype_name(result))
    V.check_no_overlap(out, _array.nbytes(result),
                      [(_array.address(x), _array.nbytes(x)) for x in inputs])
    if _array.library(out) == "torch":
        out.copy_(result)
    else:
        np.copyto(out, result)
    return out


RESAMPLE_ARGS_DTYPE = np.dtype({
    "names": ["data", "src_t", "tgt_t", "out", "B", "S", "T", "D", "method"],
    "formats": [np.uint64] * 4 + [np.int32] * 5,
}, align=True)  # the layout of struct ResampleArgs in resample.cu


class _HotResample:
    """One resample signature on the device: per call only addresses, an output and a launch."""

    def __init__(self, data, src, tgt, method: int, dtype: str, tdtype: str):
        squeeze = data.ndim == 2
        B, S, D = (1, *data.shape) if squeeze else data.shape
        T = tgt.shape[-1]
        self.output = _Output(data, (T, D) if squeeze else (B, T, D), dtype)
        self.nbytes = (_array.nbytes(data), _array.nbytes(src), _array.nbytes(tgt))
        self.empty = B * T * D == 0
        self.address = _array.address_getter(data)
        self.names = (_resample_name(dtype, tdtype, False), _resample_name(dtype, tdtype, True))
        self.vec = (D * _array.ITEMSIZE[dtype]) % 16 == 0  # rows of whole 16-byte vectors
        self.grid = (_blocks_for_rows(B * T, ROWS_PER_WARP),)
        self.args = ArgBlock(RESAMPLE_ARGS_DTYPE, ("data", "src_t", "tgt_t", "out"),
                             B=B, S=S, T=T, D=D, method=method)

    def __call__(self, data, src, tgt, out):
        a = self.address
        pd, ps, pt = a(data), a(src), a(tgt)
        if out is None:
            out = self.output.alloc()
        else:
            nd, ns, nt = self.nbytes
            self.output.check(out, data, ((pd, nd), (ps, ns), (pt, nt)))
        if self.empty:
            return out
        po = a(out)
        _runtime.launch_block(
            _kernels.RESAMPLE, self.names[self.vec and not (pd | po) & 15], self.grid,
            (THREADS,), self.args.pack(pd, ps, pt, po), data)
        return out


def _resample_cuda(data, src, tgt, method: int, dtype: str, tdtype: str):
    """One launch of resample_kernel for [B,S,D] data (no hot-path cache)."""
    data, src, tgt = _array.contiguous(data), _array.contiguous(src), _array.contiguous(tgt)
    return _HotResample(data, src, tgt, method, dtype, tdtype)(data, src, tgt, None)


@functools.lru_cache(maxsize=64)
def _resample_name(dtype: str, tdtype: str, vec: bool) -> str:
    return (f"resample_kernel<{_array.C_TYPES[dtype]}, {_array.C_TYPES[tdtype]}, "
            f"{'true' if vec else 'false'}>")


FUSE_STREAMS_DTYPE = np.dtype({
    "names": ["data", "times", "tgt_t", "out", "S", "D", "col", "n", "B", "T", "W", "method"],
    "formats": [(np.uint64, MAX_STREAMS), (np.uint64, MAX_STREAMS), np.uint64, np.uint64,
                (np.int32, MAX_STREAMS), (np.int32, MAX_STREAMS), (np.int32, MAX_STREAMS),
                np.int32, np.int32, np.int32, np.int32, np.int32],
}, align=True)  # the layout of struct FuseStreams in resample.cu


class _HotFuse:
    """One fuse signature on the device: per call the streams' addresses packed into the
    argument struct, an output and a launch."""

    def __init__(self, streams, tgt, method: int, dtype: str, tdtype: str, squeeze: bool):
        """`streams`, `tgt`: checked and with a leading batch axis ([B,S_k,D_k], [B,T])."""
        B, T = tgt.shape
        n = len(streams)
        shapes = [(int(d.shape[1]), int(d.shape[2])) for d, _ in streams]
        cols = np.cumsum([0] + [D for _, D in shapes])
        W = int(cols[-1])
        pad = [0] * (MAX_STREAMS - n)
        self.args = ArgBlock(
            FUSE_STREAMS_DTYPE,
            [("data", k) for k in range(n)] + [("times", k) for k in range(n)] + ["tgt_t", "out"],
            S=[S for S, _ in shapes] + pad, D=[D for _, D in shapes] + pad,
            col=[int(c) for c in cols[:-1]] + pad, n=n, B=B, T=T, W=W, method=method)
        self.output = _Output(tgt, (T, W) if squeeze else (B, T, W), dtype)
        self.data_nbytes = [_array.nbytes(d) for d, _ in streams]
        self.times_nbytes = [_array.nbytes(t) for _, t in streams]
        self.tgt_nbytes = _array.nbytes(tgt)
        self.empty = B * T * W == 0
        self.address = _array.address_getter(tgt)
        self.name = _fuse_name(dtype, tdtype)
        self.grid = (_blocks_for_rows(B * T * n),)  # one warp per (output row, stream)

    def __call__(self, streams, tgt, out):
        a = self.address
        pdata, ptimes = [a(d) for d, _ in streams], [a(t) for _, t in streams]
        ptgt = a(tgt)
        if out is None:
            out = self.output.alloc()
        else:
            self.output.check(out, tgt, [*zip(pdata, self.data_nbytes, strict=True),
                                         *zip(ptimes, self.times_nbytes, strict=True),
                                         (ptgt, self.tgt_nbytes)])
        if self.empty:
            return out
        _runtime.launch_block(_kernels.RESAMPLE, self.name, self.grid, (THREADS,),
                              self.args.pack(*pdata, *ptimes, ptgt, a(out)), tgt)
        return out


def _fuse_cuda(streams, tgt, method: int, dtype: str, tdtype: str):
    """One launch of fuse_kernel for [B,S_k,D_k] streams onto [B,T] (no hot-path cache)."""
    tgt = _array.contiguous(tgt)
    streams = [(_array.contiguous(d), _array.contiguous(t)) for d, t in streams]
    return _HotFuse(streams, tgt, method, dtype, tdtype, False)(streams, tgt, None)


@functools.lru_cache(maxsize=64)
def _fuse_name(dtype: str, tdtype: str) -> str:
    return f"fuse_kernel<{_array.C_TYPES[dtype]}, {_array.C_TYPES[tdtype]}>"
