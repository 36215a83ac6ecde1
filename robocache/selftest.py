"""`python -m robocache selftest`: every op on every usable backend, checked against NumPy.

Each check makes small random NumPy inputs, runs the op on the NumPy backend and compares that
with an independent oracle (np.interp, a brute-force search, ...); on each device backend it
runs the op on the same inputs moved to the device and compares with the NumPy backend's result,
and checks that the result came back in the input's library. One PASS/FAIL line per
(op, backend); `run()` returns the results and `main()` exits non-zero on any failure.

Adding an op: write `_my_inputs(rng) -> dict` (NumPy arrays and plain values, the op's keyword
arguments), `_my_reference(**inputs) -> np.ndarray` (not the op's own NumPy path) and register
the call:

    @register("voxelize count", inputs=_vox_inputs, reference=_vox_reference, atol=0)
    def _voxelize_count(points, **kw):
        return rc.voxelize(points, mode="count", **kw)

Inputs must work without torch, CuPy or ml_dtypes: the release check runs this in a fresh
environment with NumPy only.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class Check:
    op: str
    inputs: Callable[[np.random.Generator], dict]
    run: Callable[..., Any]
    reference: Callable[..., np.ndarray]
    rtol: float = 1e-5
    atol: float = 1e-6


CHECKS: list[Check] = []


def register(op: str, *, inputs, reference, rtol: float = 1e-5, atol: float = 1e-6):
    """Decorator: register `run(**inputs)` as the self-test of `op`."""
    def deco(run):
        if any(c.op == op for c in CHECKS):
            raise ValueError(f"selftest: op {op!r} is registered twice")
        CHECKS.append(Check(op, inputs, run, reference, rtol, atol))
        return run
    return deco


# ---------------------------------------------------------------------------------------------
# Backends: name -> how NumPy inputs get there


def _to_cupy(a: np.ndarray):
    import cupy

    return cupy.asarray(a)


def _to_torch_cuda(a: np.ndarray):
    import torch

    return torch.as_tensor(a, device="cuda")


_DEVICE_BACKENDS = {"cuda": ("cupy", _to_cupy), "cuda-torch": ("torch", _to_torch_cuda)}
BACKENDS = ("numpy", *_DEVICE_BACKENDS)


def backend_status() -> dict[str, str | None]:
    """Backend name -> None when usable here, else why not."""
    from . import _runtime

    status: dict[str, str | None] = {"numpy": None}
    ok, why = _runtime.cuda_status()
    status["cuda"] = None if ok else why
    if not ok:
        status["cuda-torch"] = why
    else:
        try:
            import torch

            status["cuda-torch"] = None if torch.cuda.is_available() else \
                "torch cannot see a CUDA device"
        except Exception as exc:
            status["cuda-torch"] = f"torch is not importable ({type(exc).__name__})"
    return status


def _convert(obj, fn):
    if isinstance(obj, np.ndarray):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_convert(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: _convert(v, fn) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class Result:
    op: str
    backend: str
    ok: bool
    detail: str
    seconds: float


def _compare(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> tuple[bool, str]:
    if got.shape != want.shape:
        return False, f"shape {got.shape}, expected {want.shape}"
    if got.size == 0:
        return True, "empty result"
    g = got.astype(np.float64) if got.dtype.kind in "fiub" else got
    w = want.astype(np.float64) if want.dtype.kind in "fiub" else want
    if not np.allclose(g, w, rtol=rtol, atol=atol, equal_nan=True):
        bad = ~np.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        return False, (f"{int(bad.sum())} of {bad.size} elements differ; first at {idx}: "
                       f"{g[idx]!r} vs {w[idx]!r}")
    err = np.nanmax(np.abs(g - w)) if g.dtype.kind == "f" else 0.0
    return True, f"max |err| {float(err):.2e}"


def _run_one(check: Check, backend: str, inputs: dict, expected: np.ndarray | None):
    """Returns (result, numpy copy of the output or None)."""
    from . import _array

    t0 = time.perf_counter()
    try:
        if backend == "numpy":
            out = check.run(**inputs)
            lib = "numpy"
        else:
            lib, fn = _DEVICE_BACKENDS[backend]
            out = check.run(**_convert(inputs, fn))
        if _array.library(out) != lib:
            raise TypeError(f"result is a {_array.library(out)} array, expected {lib}")
        got = _array.to_numpy(out)
        ok, detail = _compare(got, expected, check.rtol, check.atol)
        if backend != "numpy":
            detail += " vs the NumPy backend"
    except Exception as exc:
        ok, detail, got = False, f"{type(exc).__name__}: {exc}", None
    return Result(check.op, backend, ok, detail, time.perf_counter() - t0), got


def run(ops=None, backends=None, *, seed: int = 0, file=None) -> list[Result]:
    """Run the registered checks (or those named in `ops`) on every usable backend (or those
    named in `backends`), printing one line per (op, backend). Returns the results."""
    file = sys.stdout if file is None else file
    checks = [c for c in CHECKS if ops is None or c.op in ops]
    if ops is not None:
        unknown = sorted(set(ops) - {c.op for c in CHECKS})
        if unknown:
            raise ValueError(f"ops: expected names among {[c.op for c in CHECKS]}, got {unknown}")
    status = backend_status()
    wanted = BACKENDS if backends is None else tuple(backends)
    for b in wanted:
        if b not in status:
            raise ValueError(f"backends: expected names among {list(BACKENDS)}, got {b!r}")
        if status[b] is not None:
            print(f"SKIP  {b:<10} {status[b]}", file=file)
    usable = [b for b in wanted if status[b] is None]
    results = []
    for i, check in enumerate(checks):
        rng = np.random.default_rng([seed, i])
        try:
            inputs = check.inputs(rng)
            reference = np.asarray(check.reference(**inputs))
        except Exception as exc:
            res = Result(check.op, "numpy", False, f"inputs/reference failed: "
                         f"{type(exc).__name__}: {exc}", 0.0)
            results.append(res)
            _print(res, file)
            continue
        expected = reference
        if "numpy" in usable:
            res, got = _run_one(check, "numpy", inputs, reference)
            results.append(res)
            _print(res, file)
            if got is not None:
                expected = got  # device backends are compared with the NumPy backend
        for b in usable:
            if b != "numpy":
                res, _ = _run_one(check, b, inputs, expected)
                results.append(res)
                _print(res, file)
    return results


def _print(res: Result, file) -> None:
    mark = "PASS" if res.ok else "FAIL"
    print(f"{mark}  {res.backend:<10} {res.op:<24} {res.detail}  ({res.seconds * 1e3:.1f} ms)",
          file=file, flush=True)


def main(ops=None, backends=None) -> int:
    results = run(ops, backends)
    failed = [r for r in results if not r.ok]
    print(f"selftest: {len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed or not results else 0


# ---------------------------------------------------------------------------------------------
# Checks: resample / fuse


def _times(rng, B: int, S: int) -> np.ndarray:
    """[B,S] strictly increasing float64 times with uneven steps."""
    steps = rng.uniform(0.01, 0.2, size=(B, S))
    return np.cumsum(steps, axis=1) + rng.uniform(-1.0, 1.0, size=(B, 1))


def _resample_inputs(rng):
    B, S, D, T = 3, 37, 5, 29
    src = _times(rng, B, S)
    lo, hi = src[:, :1] - 0.3, src[:, -1:] + 0.3
    tgt = lo + (hi - lo) * rng.random((B, T))  # unsorted, some before/after the span
    data = rng.standard_normal((B, S, D)).astype(np.float32)
    return {"data": data, "src_times": src, "tgt_times": tgt}


def _interp_reference(data, src_times, tgt_times):
    B, _, D = data.shape
    out = np.empty((B, tgt_times.shape[1], D))
    for b in range(B):
        for d in range(D):
            out[b, :, d] = np.interp(tgt_times[b], src_times[b], data[b, :, d].astype(np.float64))
    return out


def _nearest_reference(data, src_times, tgt_times):
    # brute force: the closest source sample (the earlier on a tie), clamped at both ends
    idx = np.argmin(np.abs(src_times[:, None, :] - tgt_times[:, :, None]), axis=2)
    return np.take_along_axis(data, idx[:, :, None], axis=1)


def _previous_reference(data, src_times, tgt_times):
    # brute force: how many source times are <= t, minus one, at least 0
    count = (src_times[:, None, :] <= tgt_times[:, :, None]).sum(axis=2)
    idx = np.maximum(count - 1, 0)
    return np.take_along_axis(data, idx[:, :, None], axis=1)


def _fuse_inputs(rng):
    B, T = 2, 31
    streams = []
    for S, D in ((50, 3), (7, 4), (1, 2)):
        streams.append((rng.standard_normal((B, S, D)).astype(np.float32), _times(rng, B, S)))
    tgt = np.sort(rng.uniform(-1.5, 6.0, size=(B, T)), axis=1)
    return {"streams": streams, "tgt_times": tgt}


def _fuse_reference(streams, tgt_times):
    return np.concatenate([_interp_reference(d, t, tgt_times) for d, t in streams], axis=-1)


def _resample_check(method: str):
    def call(data, src_times, tgt_times):
        from .ops.resample import resample

        return resample(data, src_times, tgt_times, method=method)
    return call


register("resample linear", inputs=_resample_inputs, reference=_interp_reference)(
    _resample_check("linear"))
register("resample nearest", inputs=_resample_inputs, reference=_nearest_reference,
         rtol=0, atol=0)(_resample_check("nearest"))
register("resample previous", inputs=_resample_inputs, reference=_previous_reference,
         rtol=0, atol=0)(_resample_check("previous"))


@register("fuse", inputs=_fuse_inputs, reference=_fuse_reference)
def _fuse(streams, tgt_times):
    from .ops.resample import fuse

    return fuse(streams, tgt_times)


def _images_inputs(rng):
    frames = rng.integers(0, 256, size=(6, 16, 20, 3), dtype=np.uint8)
    indices = rng.integers(0, 6, size=(4, 2))
    return {"frames": frames, "indices": indices}


def _bilinear_axis(n_in: int, n_out: int):
    # torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def _images_reference(frames, indices):
    crop = frames[indices][:, :, 3:13, 4:16].astype(np.float64)  # centre 10x12 of 16x20
    y0, y1, wy = _bilinear_axis(10, 8)
    x0, x1, wx = _bilinear_axis(12, 8)
    rows = crop[:, :, y0] * (1 - wy)[:, None, None] + crop[:, :, y1] * wy[:, None, None]
    img = rows[:, :, :, x0] * (1 - wx)[:, None] + rows[:, :, :, x1] * wx[:, None]
    img = (img / 255.0 - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.3])
    return img.transpose(0, 1, 4, 2, 3)  # [B,K,C,h,w]


@register("crop_resize_normalize", inputs=_images_inputs, reference=_images_reference,
          rtol=1e-5, atol=2e-5)
def _crop_resize_normalize(frames, indices):
    from .ops.images import crop_resize_normalize

    return crop_resize_normalize(frames, indices, crop=(10, 12), crop_mode="center",
                                 resize=(8, 8), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def _windows_inputs(rng):
    lens = np.array([1, 6, 3, 11, 2])
    N = int(lens.sum())
    return {"src": rng.standard_normal((N, 4)).astype(np.float32),
            "ends": np.cumsum(lens), "idx": rng.permutation(N)[:15],
            "a": rng.standard_normal(4).astype(np.float32),
            "b": (rng.random(4) + 0.5).astype(np.float32)}


WINDOW_DELTAS = np.array([-3, -1, 0, 1, 4])


def _window_rule(src, ends, idx):
    """DESIGN.md's window rule one sample at a time: (rows [B, K], is_pad [B, K])."""
    starts = np.concatenate([[0], ends[:-1]])
    rows, pad = [], []
    for a in idx:
        e = int(np.searchsorted(ends, a, side="right"))
        s0, e0 = int(starts[e]), int(ends[e])
        q = [int(a) + int(d) for d in WINDOW_DELTAS]
        rows.append([min(max(x, s0), e0 - 1) for x in q])
        pad.append([x < s0 or x >= e0 for x in q])
    return np.array(rows), np.array(pad)


def _window_values_reference(src, ends, idx, a, b):
    rows, _ = _window_rule(src, ends, idx)
    return (src[rows].astype(np.float64) - a) / b


def _window_mask_reference(src, ends, idx, a, b):
    return _window_rule(src, ends, idx)[1]


def _window_batch(output: str):
    """The dataset's batch kernel (ops.windows) on one key: edge padding, (x - a) / b, float32
    out; returns the values or the is_pad mask in the inputs' library."""
    def call(src, ends, idx, a, b):
        from . import _array
        from . import windows as W
        from .ops.windows import WindowKey, WindowOp

        host = {n: _array.to_numpy(v) for n, v in (("ends", ends), ("idx", idx), ("a", a),
                                                     ("b", b))}
        key = WindowKey("x", src, WINDOW_DELTAS, out_dtype="float32", norm="affine",
                        norm_a=host["a"], norm_b=host["b"])
        anchors = W.anchor_table(host["ends"].astype(np.int64))
        on_host = _array.library(src) == "numpy"
        op = WindowOp([key], anchors, zero_pad=False, like=None if on_host else src)
        out = op.run_numpy(host["idx"]) if on_host else op.run_cuda(
            op.upload_indices(host["idx"]))
        return out["x" if output == "values" else "x_is_pad"]
    return call


register("window batch", inputs=_windows_inputs, reference=_window_values_reference)(
    _window_batch("values"))
register("window is_pad", inputs=_windows_inputs, reference=_window_mask_reference,
         rtol=0, atol=0)(_window_batch("mask"))


def _voxel_check(mode: str):
    def call(points, **grid):
        from .ops.voxel import voxelize

        return voxelize(points, mode=mode, **grid)
    return call


def _voxel_reference(mode: str):
    def reference(points, **grid):
        from .ops import _voxel_reference

        return _voxel_reference.voxelize(points, mode=mode, **grid)
    return reference


def _voxel_inputs(rng):
    from .ops import _voxel_reference

    return _voxel_reference.selftest_inputs(rng)


for _mode, _tol in (("occupancy", 0.0), ("count", 0.0), ("max", 0.0), ("mean", 1e-6)):
    register(f"voxelize {_mode}", inputs=_voxel_inputs, reference=_voxel_reference(_mode),
             rtol=_tol, atol=_tol)(_voxel_check(_mode))
