"""First use: `import robocache` time, NVRTC compile time of one kernel instance and of a whole
module (compile-only, no GPU needed), and on a GPU the cold / warm (CuPy disk cache) load of a
kernel through the runtime. PERF.md targets: import < 0.3 s; a module compiles in < 1 s cold and
loads in < 0.2 s warm.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _timing  # noqa: E402
from benchmarks._timing import gpu_reason, print_table  # noqa: E402


def _import_seconds(repeats: int) -> float:
    code = "import time; t = time.perf_counter(); import robocache; print(time.perf_counter() - t)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  check=True, env=env).stdout) for _ in range(repeats)]
    return statistics.median(times)


def _nvrtc_rows(quick: bool) -> list[dict]:
    from robocache import _kernels, _runtime

    try:
        import cuda.bindings.nvrtc  # noqa: F401
    except ImportError:
        return [{"what": "NVRTC compile", "note": "skipped: install robocache[compile]"}]
    rows = []
    for module in _kernels.ALL_MODULES:
        one = dataclasses.replace(module, name_expressions=module.name_expressions[:1])
        t0 = time.perf_counter()
        assert _runtime.compile_for_arch(one, "sm_90").ok
        t1 = time.perf_counter()
        if not quick:
            assert _runtime.compile_for_arch(module, "sm_90").ok
        t2 = time.perf_counter()
        rows.append({"what": f"NVRTC {module.source}: one instance (sm_90)", "seconds": t1 - t0,
                     "note": f"all {len(module.name_expressions)} instances: "
                             + ("-" if quick else f"{t2 - t1:.2f} s")})
    return rows


def _gpu_rows() -> list[dict]:
    """Each in a new process with its own CuPy cache directory: the CUDA context first (cuInit +
    context creation, what any CUDA program pays once), then the kernel's load through the
    runtime - cold (empty cache: NVRTC + module load), then warm (CuPy's disk cache)."""
    name = "resample_kernel<float, float, false>"
    code = ("import time, cupy, robocache._runtime as r, robocache._kernels as k; "
            "t0 = time.perf_counter(); cupy.zeros(1); cupy.cuda.Device(0).synchronize(); "
            "t1 = time.perf_counter(); "
            f"r.get_function(k.RESAMPLE, {name!r}, 0); "
            "print(t1 - t0, time.perf_counter() - t1)")
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CUPY_CACHE_DIR": cache}
        for state in ("cold", "warm"):
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True, env=env).stdout.split()
            context, load = float(out[0]), float(out[1])
            if state == "cold":
                rows.append({"what": "CUDA context (first CuPy allocation, new process)",
                             "seconds": context, "note": "paid once by any CUDA program"})
            rows.append({"what": f"runtime load of {name}, {state}"
                                 + (" (NVRTC + module load)" if state == "cold"
                                    else " (CuPy disk cache, new process)"),
                         "seconds": load,
                         "note": "target < 1 s" if state == "cold" else "target < 0.2 s"})
    return rows


def run(quick: bool = False) -> list[dict]:
    rows = [{"what": "import robocache (median of subprocesses)",
             "seconds": _import_seconds(3 if quick else 7), "note": "target < 0.3 s"}]
    rows += _nvrtc_rows(quick)
    why = gpu_reason()
    if why is None:
        rows += _gpu_rows()
    else:
        print(f"first use: GPU rows skipped ({why})")
    print_table("first use (seconds)", rows, ["what", "seconds", "note"])
    for r in rows:
        r["bench"] = "first_use"
    return rows


if __name__ == "__main__":
    sys.exit(_timing.bench_main(run, "first_use", __doc__))
