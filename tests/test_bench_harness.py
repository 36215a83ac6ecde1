"""The benchmark harness that `make gpu-check` runs (benchmarks/run_all.py, _timing.bench_main,
the table printers), on the CPU: a GPU run's minutes must not be lost to it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import _timing, bench_images, run_all  # noqa: E402


def test_image_rows_of_other_launch_shapes_print(capsys):
    """The exact-division plan row has a GPU time but no pixels_per_store: printing the table
    raised KeyError after all the GPU timing, and run_all kept none of the image rows."""
    w = {"name": "crop84", "B": 256, "K": 2, "H": 96, "W": 96, "C": 3, "cams": 1, "crop": 84,
         "size": (84, 84)}
    rows = [bench_images._row(w, "robocache-cuda-plan", "float32", 20.0, "cuda", gpu_us=18.0,
                              pixels_per_store=4),
            bench_images._row(w, "robocache-cuda-plan-unit", "float32", 19.0, "cuda",
                              gpu_us=17.5, exact=True)]
    bench_images._print(rows)
    out = capsys.readouterr().out
    assert "GPU 18.0 us (4 px/store)" in out and "GPU 17.5 us" in out


def test_unknown_benchmark_names_and_empty_selections_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        run_all.main(["--only", "image"])  # "images"
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        run_all.main(["--skip", "lod"])
    with pytest.raises(SystemExit):  # gpu_check's --skip load with BENCH_ONLY=load
        run_all.main(["--skip", "load", "--only", "load"])
    assert "no benchmark left to run" in capsys.readouterr().err


def test_a_run_stopped_by_sigterm_writes_the_rows_it_finished(tmp_path):
    """gpu_check.sh stops a stage with `timeout` (SIGTERM): the JSON was written only at the
    end, so nothing of a stopped stage came back."""
    code = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from benchmarks import _timing

def run(quick=False, rows=None):
    rows.append({{"name": "first", "GB/s": 1.0}})
    print("ready", flush=True)
    try:  # the benchmarks' fallbacks (a profiler that fails) must not swallow the stop
        time.sleep(60)
    except Exception:
        pass
    rows.append({{"name": "never"}})
    return rows

sys.exit(_timing.bench_main(run, "load", "doc", ["--json", {str(tmp_path / "load.json")!r}]))
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 124
    report = json.loads((tmp_path / "load.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["first"]
    assert "signal" in report["interrupted"]
    assert {"date", "device", "python", "software"} <= set(report["environment"])


def test_reports_name_the_card_date_and_software():
    env = _timing.environment()
    assert env["device"] and env["date"].endswith("+00:00")
    assert {"robocache", "numpy", "torch", "cuda_driver"} <= set(env["software"])
