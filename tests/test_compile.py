"""Every kernel module and template instance compiles for every target architecture (no GPU)."""

from __future__ import annotations

import pytest

from robocache import _kernels, _runtime

pytest.importorskip("cuda.bindings.nvrtc", reason="compile-only mode needs robocache[compile]")


@pytest.mark.parametrize("arch", _runtime.TARGET_ARCHS)
@pytest.mark.parametrize("module", _kernels.ALL_MODULES, ids=lambda m: m.source)
def test_module_compiles(module, arch):
    result = _runtime.compile_for_arch(module, arch)
    assert result.ok, f"{module.source} for {arch}:\n{result.log}"
    assert result.cubin_bytes > 0
    assert set(result.lowered_names) == set(module.name_expressions)
