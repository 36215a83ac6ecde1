"""tools/compare_runs.py: two benchmark reports matched row by row."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import compare_runs  # noqa: E402


def _report(rows_images, rows_resample):
    return {"device": "X", "date": "d", "results": {"images": rows_images,
                                                     "resample": rows_resample}}


def test_rows_in_both_reports_are_compared_figure_by_figure(tmp_path, capsys):
    old = _report([{"workload": "crop84", "impl": "plan", "out_dtype": "bf16",
                    "us_per_batch": 20.0, "gpu_us": 16.0},
                   {"workload": "crop84", "impl": "gone", "out_dtype": "bf16",
                    "us_per_batch": 1.0}],
                  [{"workload": "large", "rc_us": 100.0, "rc_gpu_us": 99.0}])
    new = _report([{"workload": "crop84", "impl": "plan", "out_dtype": "bf16",
                    "us_per_batch": 15.0, "gpu_us": 8.0},
                   {"workload": "crop84", "impl": "new", "out_dtype": "bf16",
                    "us_per_batch": 2.0}],
                  [{"workload": "large", "rc_us": 80.0}])
    lines = compare_runs.compare(old, new, ["images", "resample", "unknown"])
    got = {(x["row"], x["figure"]): round(x["ratio"], 3) for x in lines}
    assert got == {("crop84 / plan / bf16", "us_per_batch"): 0.75,
                   ("crop84 / plan / bf16", "gpu_us"): 0.5,
                   ("large", "rc_us"): 0.8}  # rows or figures missing on one side are left out
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(old))
    b.write_text(json.dumps(new))
    assert compare_runs.main([str(a), str(b)]) == 0
    assert "x0.500" in capsys.readouterr().out
    assert compare_runs.main([str(a), str(a), "--bench", "load"]) == 1  # nothing in common


def test_a_benchmarks_own_report_and_rows_named_with_the_card_compare(tmp_path, capsys):
    """bench_load.py writes {"bench": "load", "rows": [...]} (gpu-check's load.json), which
    matched nothing; host_overhead's mode names the card, so two cards' rows never matched."""
    old = {"bench": "load", "environment": {"device": "NVIDIA H100", "date": "d1"},
           "rows": [{"name": "own cache -> GPU (staged)", "GB/s": 10.0}]}
    new = {"bench": "load", "environment": {"device": "NVIDIA H200", "date": "d2"},
           "rows": [{"name": "own cache -> GPU (staged)", "GB/s": 25.0}]}
    lines = compare_runs.compare(old, new, ["load"])
    assert [(x["row"], x["ratio"]) for x in lines] == [("own cache -> GPU (staged)", 2.5)]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(old))
    b.write_text(json.dumps(new))
    assert compare_runs.main([str(a), str(b)]) == 0
    assert "NVIDIA H100 d1" in capsys.readouterr().out
    row = {"path": "windows", "call": "rc.DataLoader batch"}
    old = {"results": {"host_overhead": [{**row, "mode": "GPU b2b (NVIDIA H100 80GB HBM3)",
                                          "gpu_us": 4.0}]}}
    new = {"results": {"host_overhead": [{**row, "mode": "GPU b2b (NVIDIA H200)",
                                          "gpu_us": 3.0}]}}
    lines = compare_runs.compare(old, new, ["host_overhead"])
    assert [(x["row"], x["ratio"]) for x in lines] == [
        ("windows / rc.DataLoader batch / GPU b2b", 0.75)]
