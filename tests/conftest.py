"""Shared pytest fixtures."""

import sys
from pathlib import Path

import pytest

# tests/emulator is importable as `emulator` under every pytest import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))


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
