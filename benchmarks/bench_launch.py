"""What one kernel launch costs on this machine, piece by piece (GPU only).

Every hot path of RoboCache is one launch plus Python around it; on small batches the launch is
most of the time. The rows are empty kernels (no memory traffic), back-to-back wall time per
call (median over repeats of many calls, ending with a synchronize):

- CuPy's RawKernel call (PERF.md's "empty CuPy RawKernel launch") and the lower-level
  Function call RoboCache makes (cached handle, explicit stream);
- the cost of the arguments: 8 pointer-sized scalars, and structs passed by value of the sizes
  RoboCache passes (resample 56 B, images 200 B, fuse 264 B, windows 2840 B);
- cuLaunchKernel through cuda-python's bindings with the parameter array prepared once (the
  default launcher where those bindings are installed: the cuda12 / cuda13 extras);
- torch.empty of a small output on the GPU (what each fresh output costs).

    python benchmarks/bench_launch.py [--quick] [--json out.json]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _timing  # noqa: E402

STRUCT_BYTES = (56, 200, 264, 2840)  # RESAMPLE_ARGS, IMAGE_PARAMS, FUSE_STREAMS, WIN_KEYS dtypes

_SOURCE = """
extern "C" __global__ void empty_int(int x) {}
extern "C" __global__ void empty_u64x8(unsigned long long a, unsigned long long b,
    unsigned long long c, unsigned long long d, unsigned long long e, unsigned long long f,
    unsigned long long g, unsigned long long h) {}
""" + "".join(f"""
struct Blob{n} {{ unsigned long long w[{n // 8}]; }};
extern "C" __global__ void empty_struct{n}(const Blob{n} p) {{}}
""" for n in STRUCT_BYTES)


def _per_call_us(fn, calls: int, repeats: int) -> dict:
    import torch

    for _ in range(20):
        fn()
    samples = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) / calls * 1e6)
    return {"us": statistics.median(samples), "us_min": min(samples)}


def _driver_rows(mod, like, add) -> None:
    """A candidate launch path: cuLaunchKernel through cuda-python's Cython bindings (installed
    with robocache[compile]), the kernel parameters prepared once as a void** array pointing at a
    buffer the call only repacks - CuPy converts each argument on every call. Same empty
    kernels, torch's stream. Skipped with the reason where the bindings are missing or refuse."""
    from robocache import _runtime
    from robocache._argblock import ArgBlock

    try:
        from cuda.bindings import driver
    except ImportError as exc:
        print(f"cuLaunchKernel rows skipped: {exc}")
        return
    raw_stream = _runtime._torch_raw_stream(like.get_device())
    for n in (56, 264):  # the resample and fuse argument structs
        fn = mod.get_function(f"empty_struct{n}")
        handle = driver.CUfunction(int(fn.kernel.ptr))
        block = ArgBlock(np.dtype([("w", np.uint64, (n // 8,))]), [("w", i) for i in range(4)])

        def launch(handle=handle, block=block):
            slot = block.pack(1, 2, 3, 4)  # the per-call addresses, as the hot paths pack them
            err, = driver.cuLaunchKernel(handle, 1, 1, 1, 32, 1, 1, 0, raw_stream,
                                         slot.params, 0)
            if err != driver.CUresult.CUDA_SUCCESS:
                raise RuntimeError(f"cuLaunchKernel: {err}")

        try:
            launch()
        except Exception as exc:  # an API difference: report it, keep the other rows
            print(f"cuLaunchKernel rows skipped: {type(exc).__name__}: {exc}")
            return
        add(f"cuda.bindings cuLaunchKernel, {n}-byte struct, prepared params, torch's stream",
            launch)


def run(quick: bool = False) -> list[dict]:
    why = _timing.gpu_reason()
    if why is not None:
        print(f"bench_launch: skipped ({why})")
        return []
    import cupy
    import torch

    from robocache import _runtime

    calls, repeats = (500, 5) if quick else (3000, 9)
    mod = cupy.RawModule(code=_SOURCE)
    like = torch.empty(1, device="cuda")
    stream = _runtime._cupy_stream_for_torch(like.get_device())  # torch's current stream
    one = np.int32(1)
    u64 = tuple(np.uint64(i) for i in range(8))
    rows = []

    def add(what, fn):
        rows.append({"bench": "launch", "call": what, **_per_call_us(fn, calls, repeats)})

    k_int = mod.get_function("empty_int")
    f_int = k_int.kernel
    add("RawKernel call, 1 int arg (CuPy's current stream)", lambda: k_int((1,), (32,), (one,)))
    add("Function call, 1 int arg, torch's stream", lambda: f_int((1,), (32,), (one,), 0, stream))
    f8 = mod.get_function("empty_u64x8").kernel
    add("Function call, 8 uint64 args, torch's stream", lambda: f8((1,), (32,), u64, 0, stream))
    for n in STRUCT_BYTES:
        blob = np.zeros((), dtype=np.dtype([("w", np.uint64, (n // 8,))]))[()]
        fs = mod.get_function(f"empty_struct{n}").kernel
        add(f"Function call, {n}-byte struct by value, torch's stream",
            lambda fs=fs, blob=blob: fs((1,), (32,), (blob,), 0, stream))
    _driver_rows(mod, like, add)
    add("torch.empty((256, 16, 14)) float32 on the GPU",
        lambda: torch.empty((256, 16, 14), device="cuda"))
    print(f"\n## launch costs on {torch.cuda.get_device_name(0)}: us per call, back-to-back")
    w = max(len(r["call"]) for r in rows)
    for r in rows:
        print(f"{r['call']:{w}} | {r['us']:7.2f} | min {r['us_min']:7.2f}")
    return rows


if __name__ == "__main__":
    sys.exit(_timing.bench_main(run, "launch", __doc__))
