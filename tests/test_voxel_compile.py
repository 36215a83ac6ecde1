"""The voxel kernel modules compile with NVRTC, every template instance, with no spills
(compile-only: no GPU or driver needed). The oldest, the main and the newest target here, to keep
the suite fast; `python -m robocache compile --check` covers all of _runtime.TARGET_ARCHS."""

from __future__ import annotations

import re

import pytest

from robocache import _kernels, _runtime


@pytest.mark.parametrize("arch", ["sm_75", "sm_90", "sm_120"])
@pytest.mark.parametrize("module", [_kernels.VOXEL, _kernels.VOXEL_FEATURES],
                         ids=lambda m: m.source)
def test_voxel_modules_compile(module, arch):
    pytest.importorskip("cuda.bindings.nvrtc", reason="compile-only mode needs robocache[compile]")
    r = _runtime.compile_for_arch(module, arch, verbose_ptxas=True)
    assert r.ok, r.log
    assert set(r.lowered_names) == set(module.name_expressions)
    spills = [int(b) for b in re.findall(r"(\d+) bytes spill stores", r.log)]
    if not spills:  # seen with NVRTC 13.0 for some (module, arch) pairs: an empty log
        pytest.skip(f"NVRTC gave no ptxas resource report for {module.source} {arch}")
    assert max(spills) == 0, r.log
