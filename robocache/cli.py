"""The command line: `python -m robocache info|selftest|compile|bench|demo` (or `robocache`).

info                   what a bug report needs (versions, CUDA stack, GPUs, backends); --json
selftest               every op on every usable backend against NumPy; exit 1 on any failure
compile                compile every kernel for this GPU now, filling CuPy's on-disk cache
compile --check        compile every kernel for every target arch with NVRTC (no GPU needed);
                       one line per (module, arch); exit 1 with the NVRTC log on any failure
bench [ARGS...]        benchmarks/run_all.py of a source checkout, ARGS passed through
demo                   robocache.demo.run()
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from . import _deps


def _cmd_info(args) -> int:
    from . import info

    if args.json:
        print(json.dumps(info.installation_info(), indent=2))
    else:
        info.print_installation_info()
    return 0


def _cmd_selftest(args) -> int:
    from . import selftest

    try:
        return selftest.main(ops=args.op or None, backends=args.backend or None)
    except ValueError as exc:  # unknown op or backend name
        print(f"selftest: {exc}", file=sys.stderr)
        return 2


def _modules(names):
    from . import _kernels

    mods = _kernels.ALL_MODULES
    if names:
        known = {m.source for m in mods}
        unknown = sorted(set(names) - known)
        if unknown:  # a usage error: exit status 2, as argparse's
            print(f"python -m robocache compile: error: --module: expected names among "
                  f"{sorted(known)}, got {unknown}", file=sys.stderr)
            raise SystemExit(2)
        mods = tuple(m for m in mods if m.source in names)
    return mods


def _compile_one(job):
    from . import _runtime

    module, arch, ptxas = job
    t0 = time.perf_counter()
    try:
        res = _runtime.compile_for_arch(module, arch, verbose_ptxas=ptxas)
    except Exception as exc:  # KernelCompileError from the NVRTC API itself
        res = _runtime.CompileResult(module.source, arch, False, f"{type(exc).__name__}: {exc}")
    return res, time.perf_counter() - t0


def _cmd_compile_check(args) -> int:
    from concurrent.futures import ProcessPoolExecutor

    from . import _runtime
    from ._cpus import usable_cpus

    archs = args.arch or list(_runtime.TARGET_ARCHS)
    mods = _modules(args.module)
    print(f"NVRTC {_runtime.nvrtc_version()} (cuda.bindings): {len(mods)} module(s) x "
          f"{len(archs)} arch(s)", flush=True)
    if _runtime.nvrtc_version().startswith("unavailable"):
        print(f"compile --check needs the NVRTC bindings: pip install "
              f"'robocache[{_deps.compile_extra()}]'", file=sys.stderr)
        return 2
    jobs = [(m, a, args.ptxas) for m in mods for a in archs]
    workers = max(1, min(args.jobs or usable_cpus(), len(jobs)))
    if workers == 1:
        results = map(_compile_one, jobs)
        pool = None
    else:
        import multiprocessing

        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(_compile_one, jobs)
    failures = 0
    try:
        for (module, _, _), (res, secs) in zip(jobs, results, strict=True):
            if res.ok:
                print(f"OK    {res.source:<20} {res.arch:<8} cubin {res.cubin_bytes:>9,} B  "
                      f"{len(module.name_expressions):>3} kernels  {secs:5.1f} s", flush=True)
                if args.ptxas and res.log:
                    print("      " + res.log.replace("\n", "\n      "))
            else:
                failures += 1
                print(f"FAIL  {res.source:<20} {res.arch:<8} NVRTC log:\n      "
                      + res.log.replace("\n", "\n      "), flush=True)
    finally:
        if pool is not None:
            pool.shutdown()
    print(f"compile --check: {len(jobs) - failures} passed, {failures} failed")
    return 1 if failures else 0


def _cmd_compile_warm(args) -> int:
    from . import _runtime, info

    ok, why = _runtime.cuda_status()
    if not ok:
        print(f"compile: no usable GPU here ({why}).\n"
              f"Use `python -m robocache compile --check` to compile for every target arch "
              f"without a GPU.", file=sys.stderr)
        return 1
    import cupy

    devices = args.device if args.device else [cupy.cuda.runtime.getDevice()]
    failures = 0
    for dev in devices:
        for module in _modules(args.module):
            t0 = time.perf_counter()
            try:
                for name in module.name_expressions:
                    _runtime.get_function(module, name, dev)
            except Exception as exc:
                failures += 1
                print(f"FAIL  device {dev}  {module.source}: {type(exc).__name__}: {exc}")
                continue
            print(f"OK    device {dev}  {module.source:<20} {len(module.name_expressions):>3} "
                  f"kernels  {time.perf_counter() - t0:5.1f} s", flush=True)
    cache = info._kernel_cache()
    print(f"kernel cache: {cache['kernel_cache_dir']} ({cache['kernel_cache']})")
    return 1 if failures else 0


def _cmd_compile(args) -> int:
    return _cmd_compile_check(args) if args.check else _cmd_compile_warm(args)


def _bench_script() -> Path:
    return Path(__file__).resolve().parent.parent / "benchmarks" / "run_all.py"


def _cmd_bench(args) -> int:
    script = _bench_script()
    if not script.is_file():
        print("The benchmarks are not part of the installed wheel: they ship in the source "
              "distribution (sdist) and the repository. From a checkout: "
              "`python benchmarks/run_all.py` or `make bench`.")
        return 1
    return subprocess.call([sys.executable, str(script), *args.args], cwd=script.parent.parent)


def _cmd_demo(args) -> int:
    import importlib

    try:
        demo = importlib.import_module("robocache.demo")
    except ModuleNotFoundError as exc:
        if exc.name != "robocache.demo":
            raise
        print("The demo (robocache/demo.py) is not part of this version of RoboCache.",
              file=sys.stderr)
        return 1
    try:
        result = demo.run(root=args.root)
    except ModuleNotFoundError as exc:  # torch, pyarrow, PyAV: say which extra
        err = _deps.reworded(exc, "the demo")
        if err is exc:
            raise
        print(err, file=sys.stderr)
        return 1
    except demo.NoDemoDataset as exc:
        print(exc, file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0


def _jobs(text: str) -> int:
    """--jobs: 0 (one per CPU) or a positive count."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected 0 (one per CPU) or more, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m robocache", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="print versions, CUDA stack, GPUs and usable backends")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(fn=_cmd_info)

    p = sub.add_parser("selftest", help="run every op on every usable backend against NumPy")
    p.add_argument("--op", action="append", help="only this op (repeatable)")
    p.add_argument("--backend", action="append", help="only this backend: numpy, cuda, "
                   "cuda-torch (repeatable)")
    p.set_defaults(fn=_cmd_selftest)

    p = sub.add_parser("compile", help="compile every kernel (for this GPU, or --check: for "
                       "every target arch without a GPU)")
    p.add_argument("--check", action="store_true",
                   help="compile-only for every target arch with NVRTC; no GPU needed")
    p.add_argument("--arch", nargs="+", metavar="ARCH",
                   help="with --check: these archs (default: every target, sm_75 ... sm_120)")
    p.add_argument("--module", action="append", metavar="FILE.cu",
                   help="only this kernel module (repeatable)")
    p.add_argument("--ptxas", action="store_true",
                   help="with --check: print ptxas' register and spill report")
    p.add_argument("-j", "--jobs", type=_jobs, default=0,
                   help="with --check: parallel compiles (default: CPU count)")
    p.add_argument("--device", type=int, action="append",
                   help="without --check: warm the cache for this device (default: current)")
    p.set_defaults(fn=_cmd_compile)

    p = sub.add_parser("bench", help="run the benchmarks (source checkout only); further "
                       "arguments go to benchmarks/run_all.py", add_help=False)  # --help too
    p.set_defaults(fn=_cmd_bench)  # every further argument goes to benchmarks/run_all.py

    p = sub.add_parser("demo", help="run the demo")
    p.add_argument("--root", default=None, help="the LeRobot dataset to use, with the demo's "
                   "keys, as examples/make_demo_dataset.py writes it (default: the repository's "
                   "examples/data/arm2d_reach)")
    p.set_defaults(fn=_cmd_demo)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if args.command == "bench":
        args.args = extra
    elif extra:  # said by the command's own parser, with its usage
        sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
        (sub.choices.get(args.command) or ap).error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        ap.print_help()
        return 2
    return int(args.fn(args) or 0)
