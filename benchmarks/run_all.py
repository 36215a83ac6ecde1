"""Run every benchmarks/bench_*.py module's run(quick) and write one JSON report.

    python benchmarks/run_all.py [--quick] [--only resample,windows] [--skip load] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"CPU only ({platform.processor() or platform.machine()})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small iteration counts (gpu-check)")
    ap.add_argument("--only", default="", help="comma-separated benchmark names")
    ap.add_argument("--skip", default="", help="comma-separated benchmark names to leave out")
    ap.add_argument("--json", default="", help="write all rows to this file")
    args = ap.parse_args(argv)
    names = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    if args.skip:
        names = [n for n in names if n not in args.skip.split(",")]
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": _device_name(), "python": platform.python_version(), "results": {}}
    failed = []
    try:  # the byte floors of this card: device-to-device copy, bytes read + written
        from benchmarks import _timing

        if _timing.gpu_reason() is None:
            report["copy_gbs"] = _timing.copy_bandwidth_gbs()
            print(f"device-to-device copy: {report['copy_gbs']:.0f} GB/s (read + written)")
    except Exception:
        traceback.print_exc()
    for name in names:
        print(f"\n# bench_{name}", flush=True)
        try:
            mod = importlib.import_module(f"benchmarks.bench_{name}")
            report["results"][name] = mod.run(quick=args.quick)
        except Exception:  # one broken benchmark must not hide the others' numbers
            traceback.print_exc()
            failed.append(name)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nwrote {out}")
    if failed:
        print(f"benchmarks that failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
