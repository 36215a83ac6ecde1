"""Run every benchmarks/bench_*.py module's run(quick) and write one JSON report.

    python benchmarks/run_all.py [--quick] [--only resample,windows] [--skip load] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


LAST = ("host_overhead",)  # its mallopt stays for the process: the others run before it


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small iteration counts (gpu-check)")
    ap.add_argument("--only", default="", help="comma-separated benchmark names")
    ap.add_argument("--skip", default="", help="comma-separated benchmark names to leave out")
    ap.add_argument("--json", default="", help="write all rows to this file (rewritten after "
                    "each benchmark, so a run stopped by a time limit keeps what finished)")
    args = ap.parse_args(argv)
    known = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    names = [n for n in known if n not in LAST] + [n for n in LAST if n in known]
    for opt in ("only", "skip"):
        asked = [n for n in getattr(args, opt).split(",") if n]
        unknown = [n for n in asked if n not in known]
        if unknown:
            ap.error(f"--{opt}: unknown benchmark(s) {unknown}; expected names from {known}")
        if asked:
            names = [n for n in names if (n in asked) == (opt == "only")]
    if not names:
        ap.error(f"no benchmark left to run (--only {args.only!r}, --skip {args.skip!r})")
    from benchmarks import _timing

    _timing.stop_on_sigterm()
    report = {**_timing.environment(), "results": {}}

    def save() -> None:
        if args.json:
            _timing.write_json(args.json, report)

    failed = []
    current = "the copy bandwidth"
    try:
        try:  # the byte floors of this card: device-to-device copy, bytes read + written
            if _timing.gpu_reason() is None:
                report["copy_gbs"] = _timing.copy_bandwidth_gbs()
                print(f"device-to-device copy: {report['copy_gbs']:.0f} GB/s (read + written)")
        except Exception:  # (a stop, _timing.Interrupted, is no Exception: it passes)
            traceback.print_exc()
        for name in names:
            current = f"bench_{name}"
            print(f"\n# bench_{name}", flush=True)
            try:
                mod = importlib.import_module(f"benchmarks.bench_{name}")
                report["results"][name] = mod.run(quick=args.quick)
            except Exception:  # one broken benchmark must not hide the others' numbers
                traceback.print_exc()
                failed.append(name)
            save()
    except _timing.Interrupted as exc:
        report["interrupted"] = f"{exc}, in {current}"
        print(f"interrupted: {report['interrupted']}")
        failed.append("interrupted")
    save()
    if args.json:
        print(f"\nwrote {args.json}")
    if failed:
        print(f"benchmarks that failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
