"""The examples run: a few training steps of examples/train_policy.py on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("data", [None, "examples/data/arm2d_reach"])
def test_train_policy_runs_and_learns(data):
    pytest.importorskip("pyarrow")
    cmd = [sys.executable, "examples/train_policy.py", "--device", "cpu", "--steps", "40",
           "--batch-size", "32", "--episodes", "20"]
    if data:
        cmd += ["--data", data]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first, last = (float(x) for x in out.stdout.split("loss ")[-1].split()[0:3:2])
    assert last < first  # the loss went down: the batches carry real signal
    assert "per step: data" in out.stdout
