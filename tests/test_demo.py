"""`make demo` (python -m robocache demo) works on the shipped dataset, on the CPU here."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("av")


def test_demo_runs_on_the_cpu(capsys):
    from robocache import demo

    result = demo.run(device="cpu", batch_size=32, batches=2)
    out = capsys.readouterr().out
    assert result["device"] == "cpu"
    assert result["robocache_samples_per_s"] > 0 and result["torch_samples_per_s"] > 0
    assert "observation.images.top" in out and "(32, 2, 3, 56, 56)" in out
