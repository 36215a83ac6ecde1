"""Timing helpers shared by the benchmarks (never used by tests).

GPU: median of per-call CUDA-event latencies (includes Python launch cost) and back-to-back wall
time per call over a loop followed by one synchronize (what a training loop sees).
CPU: median wall time per call.
"""

from __future__ import annotations

import functools
import statistics
import time


def gpu_available() -> bool:
    from robocache import _runtime

    return _runtime.cuda_available()


def torch_cuda_ready() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def gpu_reason() -> str | None:
    """Why the GPU rows cannot run here (None when they can): needs CuPy + a device and torch."""
    from robocache import _runtime

    ok, why = _runtime.cuda_status()
    if not ok:
        return why
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def time_gpu(fn, *, warmup: int = 10, iters: int = 100, indexed: bool = False) -> dict:
    """{"event_us": median event latency, "b2b_us": back-to-back per call}; fn launches work.
    With indexed=True fn takes the call number (to rotate among input sets)."""
    import torch

    call = fn if indexed else (lambda i: fn())
    for i in range(warmup):
        call(i)
    torch.cuda.synchronize()
    lat = []
    for i in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call(i)
        end.record()
        end.synchronize()
        lat.append(start.elapsed_time(end) * 1e3)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(iters):
        call(i)
    torch.cuda.synchronize()
    b2b = (time.perf_counter() - t0) / iters * 1e6
    return {"event_us": statistics.median(lat), "b2b_us": b2b}


def time_cpu(fn, *, warmup: int = 2, iters: int = 10) -> dict:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    return {"median_us": statistics.median(samples)}


def graph_us(fn, *, calls: int = 20, replays: int = 30) -> float | None:
    """Wall time per call of fn when `calls` calls are captured in one CUDA graph
    (torch.cuda.CUDAGraph) and the graph is replayed back to back: what a training step captured
    whole (torch.compile(mode="reduce-overhead"), a hand-made graph) pays per call - the
    kernels' time, no Python, no per-call launch. None (and a printed reason) when capture
    fails; fn must not synchronise (pass check_times=False and the like)."""
    try:
        import torch

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # torch's recipe: warm up on a side stream
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / (replays * calls) * 1e6
    except Exception as exc:  # report, keep the other figures
        print(f"graph_us: capture failed ({type(exc).__name__}: {exc})")
        return None


def device_us(fn, *, calls: int = 50) -> dict | None:
    """GPU time per call of what fn queues (kernels, memsets, copies), read by the CUDA profiler
    (CUPTI through torch.profiler): {"us": total per call, "top": "name us, ..."}. Beside the
    back-to-back time it tells launch-bound calls (b2b >> device time) from GPU-bound ones.
    None when the profiler is unusable here."""
    try:
        import torch
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
        per_name: dict[str, float] = {}
        for e in prof.events():
            if e.device_type == DeviceType.CUDA:
                per_name[e.name] = per_name.get(e.name, 0.0) + e.time_range.elapsed_us()
    except Exception as exc:  # a profiler that cannot start must not cost the other figures
        print(f"device_us: profiler unusable ({type(exc).__name__}: {exc})")
        return None
    if not per_name:
        return None
    top = sorted(per_name.items(), key=lambda kv: -kv[1])[:3]
    return {"us": sum(per_name.values()) / calls,
            "top": ", ".join(f"{n.split('(')[0][:40]} {t / calls:.1f}" for n, t in top)}


@functools.cache
def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth, counting bytes read + written (the PERF.md ceiling)."""
    import torch

    a = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    t = time_gpu(lambda: b.copy_(a), warmup=3, iters=20)
    return 2 * nbytes / (t["event_us"] * 1e-6) / 1e9


class Interrupted(BaseException):
    """SIGTERM arrived (gpu_check.sh's per-stage `timeout`): the run stops where it is and
    what it measured so far is still written. A BaseException, as KeyboardInterrupt is, so the
    benchmarks' `except Exception` fallbacks do not swallow it."""


def stop_on_sigterm() -> None:
    """SIGTERM raises Interrupted in the main thread instead of killing the process."""
    import signal

    def handler(signum, frame):
        raise Interrupted(f"signal {signum} (a time limit)")
    signal.signal(signal.SIGTERM, handler)


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    import platform

    return f"CPU only ({platform.processor() or platform.machine()})"


def environment() -> dict:
    """The card, date and software of this run (RESULTS.md names them beside every figure):
    date, device, python and robocache's installation_info (versions of robocache and its git
    commit, NumPy, CuPy, torch, CUDA driver / runtime / NVRTC, the GPUs)."""
    import datetime
    import platform

    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": device_name(), "python": platform.python_version()}
    try:
        from robocache import info

        env["software"] = info.installation_info()
    except Exception as exc:  # the figures matter more than the labels
        env["software"] = f"unavailable: {type(exc).__name__}: {exc}"
    return env


def write_json(path, report: dict) -> None:
    """`report` to `path` atomically (a reader or a killed run never sees half a file)."""
    import json
    import os
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, path)


def bench_main(run, name: str, doc: str | None, argv=None) -> int:
    """The command line of every benchmark module: `python benchmarks/bench_X.py [--quick]
    [--json out.json]` runs run(quick) and writes {"bench", "quick", "rows", "environment"} as
    JSON. A run() that takes `rows` appends to that list as it goes, so a run stopped by SIGTERM
    (a stage's time limit) still writes the rows it finished, with "interrupted" saying why."""
    import argparse
    import inspect
    from pathlib import Path

    ap = argparse.ArgumentParser(description=(doc or name).strip().splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small iteration counts")
    ap.add_argument("--json", type=Path, default=None, help="write the rows to this file")
    args = ap.parse_args(argv)
    stop_on_sigterm()
    report = {"bench": name, "quick": args.quick, "environment": environment(), "rows": []}
    status = 0
    try:
        if "rows" in inspect.signature(run).parameters:
            run(quick=args.quick, rows=report["rows"])
        else:
            report["rows"] = run(quick=args.quick)
    except Interrupted as exc:
        report["interrupted"] = str(exc)
        print(f"interrupted: {exc}; {len(report['rows'])} rows finished")
        status = 124
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return status


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"\n## {title}")
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print(" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print(" | ".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)
