"""Two benchmark reports (benchmarks/run_all.py --json, or one benchmark's own --json, e.g.
bench_load.py's load.json) side by side: every row present in both, its figures in each and the
ratio new / old.

    python tools/compare_runs.py OLD.json NEW.json [--bench images,resample]

Rows are matched by what they measure (workload, implementation, dtype, call...). Read the
ratios with care: back-to-back wall times depend on the VM's CPU, which differs from machine to
machine even of one kind (an empty launch 5.4-8.9 us on the H200 VMs), so across two runs only
the GPU-time columns (gpu_us, rc_gpu_us: the CUDA profiler's kernel time) compare kernels;
wall-time ratios are meaningful within one run, or as a hint.
"""

from __future__ import annotations

import argparse
import json
import sys

# per benchmark: the fields naming a row, and the figures to compare (lower is better unless
# the name says GB/s or per_s)
KEYS = {
    "images": (("workload", "impl", "out_dtype"), ("us_per_batch", "gpu_us")),
    "resample": (("workload",), ("rc_us", "rc_gpu_us")),
    "voxel": (("workload", "mode", "impl"), ("us_per_call", "gpu_us")),
    "launch": (("call",), ("us",)),
    "host_overhead": (("path", "call", "mode"), ("us", "gpu_us")),
    "load": (("name",), ("GB/s",)),
    "windows": (("workload",), ("us_per_batch", "samples_per_s")),
    "first_use": (("what",), ("seconds",)),
}


def _results(report: dict) -> dict:
    """bench -> rows, from run_all.py's report or a single benchmark's {"bench", "rows"}."""
    if "bench" in report and "rows" in report:
        return {report["bench"]: report["rows"]}
    return report.get("results", {})


def _key_part(value) -> str:
    """A row-naming field, the card's name left out ("GPU b2b (NVIDIA H200)" -> "GPU b2b"), so
    rows of two cards match."""
    text = str(value)
    for card in ("(NVIDIA ", "(Tesla ", "(CPU only"):
        if card in text:
            text = text[:text.index(card)].rstrip()
    return text


def rows_by_key(report: dict, bench: str) -> dict:
    names, _ = KEYS[bench]
    out = {}
    for row in _results(report).get(bench, []):
        key = tuple(_key_part(row.get(n, "")) for n in names)
        out[key] = row
    return out


def _label(report: dict) -> str:
    env = report.get("environment", report)  # a single benchmark's report nests it
    return f"{env.get('device')} {env.get('date')}"


def compare(old: dict, new: dict, benches) -> list[dict]:
    lines = []
    for bench in benches:
        if bench not in KEYS:
            continue
        a, b = rows_by_key(old, bench), rows_by_key(new, bench)
        for key in [k for k in a if k in b]:
            for figure in KEYS[bench][1]:
                x, y = a[key].get(figure), b[key].get(figure)
                if isinstance(x, (int, float)) and isinstance(y, (int, float)) and x:
                    lines.append({"bench": bench, "row": " / ".join(k for k in key if k),
                                  "figure": figure, "old": x, "new": y, "ratio": y / x})
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--bench", default=",".join(KEYS), help="comma-separated benchmarks")
    args = ap.parse_args(argv)
    with open(args.old) as f:
        old = json.load(f)
    with open(args.new) as f:
        new = json.load(f)
    print(f"old: {_label(old)}   new: {_label(new)}")
    lines = compare(old, new, args.bench.split(","))
    if not lines:
        print("no rows in common")
        return 1
    w = max(len(f"{x['bench']}: {x['row']}") for x in lines)
    for x in lines:
        print(f"{x['bench'] + ': ' + x['row']:{w}} | {x['figure']:>14} | {x['old']:12.4g} -> "
              f"{x['new']:12.4g} | x{x['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
