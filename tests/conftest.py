"""Shared fixtures: array backends for the same test bodies, GPU auto-skip."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from robocache import _runtime

# tests/emulator is importable as `emulator` under every pytest import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def pytest_collection_modifyitems(config, items):
    if _runtime.cuda_available():
        return
    why = _runtime.cuda_status()[1]
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {why}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Backends the same test bodies run on. GPU ones carry the gpu marker (skipped without a GPU).
HOST_BACKENDS = ["numpy", pytest.param("torch-cpu", marks=pytest.mark.skipif(
    not _has_torch(), reason="torch not installed"))]
DEVICE_BACKENDS = [pytest.param("cupy", marks=pytest.mark.gpu),
                   pytest.param("torch-cuda", marks=pytest.mark.gpu)]
ALL_BACKENDS = HOST_BACKENDS + DEVICE_BACKENDS


def to_backend(a: np.ndarray, backend: str, dtype: str | None = None):
    """Put a NumPy array (float64 or any) on a backend, optionally cast to a dtype name."""
    from robocache import _array

    if dtype is not None:
        a = np.asarray(a, dtype=np.float32 if dtype == "bfloat16" else _array.numpy_dtype(dtype))
    if backend == "numpy":
        return a.astype(_array.numpy_dtype(dtype)) if dtype == "bfloat16" else a
    if backend == "cupy":
        import cupy

        return cupy.asarray(a.astype(_array.numpy_dtype(dtype)) if dtype == "bfloat16" else a)
    import torch

    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype == "bfloat16":
        t = t.to(torch.bfloat16)
    return t.to("cuda") if backend == "torch-cuda" else t


def to_host64(x) -> np.ndarray:
    """Any backend's array as float64 NumPy (for comparisons)."""
    from robocache import _array

    return np.asarray(_array.to_numpy(x), dtype=np.float64)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def link_from_outside(tmp_path_factory):
    """link(f): move file f's bytes to a new directory outside any dataset and put a symlink to
    them where f was (readers must refuse to follow it out of the dataset root)."""
    def link(f: Path) -> Path:
        outside = tmp_path_factory.mktemp("outside") / f.name
        outside.write_bytes(f.read_bytes())
        f.unlink()
        os.symlink(outside, f)
        return outside

    return link


@pytest.fixture
def emulated_cuda():
    """Run CUDA paths on the CPU: robocache._runtime.launch goes to the g++ kernel emulator.

    Yields the list of launches made (emulator.Launch: source, name, grid, block, shared_mem).
    Skips the test when no C++ compiler is available.
    """
    import emulator

    if not emulator.compiler_available():
        pytest.skip(f"the CUDA emulator needs a C++ compiler ({emulator.compiler()!r} not found)")
    with emulator.emulated() as launches:
        yield launches
