"""The kernel runtime: source preparation, compile-only mode, launch argument checks, lazy import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from robocache import _kernels, _runtime
from robocache._errors import KernelCompileError


def test_headers_are_inlined_once_with_line_directives():
    code = _kernels.RESAMPLE.code()
    assert code.startswith('#line 1 "resample.cu"')
    assert code.count('#line 1 "common.cuh"') == 1
    assert "#include" not in code  # nothing left for NVRTC to look up
    # after the header, line numbers continue in resample.cu where the include stood
    src_lines = (_runtime.CUDA_SRC / "resample.cu").read_text().splitlines()
    include_at = next(i for i, ln in enumerate(src_lines, 1) if "#include" in ln)
    assert f'#line {include_at + 1} "resample.cu"' in code


@pytest.fixture
def scratch_src(tmp_path, monkeypatch):
    """A temporary cuda_src folder for made-up kernels."""
    monkeypatch.setattr(_runtime, "CUDA_SRC", tmp_path)
    _runtime._code_of.cache_clear()
    yield tmp_path
    _runtime._code_of.cache_clear()


def test_include_outside_cuda_src_is_refused(scratch_src):
    (scratch_src / "bad.cu").write_text('#include "../../etc/passwd"\n')
    with pytest.raises(KernelCompileError, match="bad.cu:1"):
        _runtime.KernelModule("bad.cu", ("k",)).code()


def test_missing_source_is_a_compile_error(scratch_src):
    with pytest.raises(KernelCompileError, match="nope.cu"):
        _runtime.KernelModule("nope.cu", ("k",)).code()


def test_compile_error_names_file_and_line(scratch_src):
    pytest.importorskip("cuda.bindings.nvrtc")
    (scratch_src / "helper.cuh").write_text("// fine\n")
    (scratch_src / "broken.cu").write_text(
        '#include "helper.cuh"\n__global__ void k(float* x) {\n  x[0] = undefined_name;\n}\n')
    result = _runtime.compile_for_arch(_runtime.KernelModule("broken.cu", ("k",)), "sm_80")
    assert not result.ok
    assert "broken.cu(3)" in result.log and "undefined_name" in result.log


def test_launch_rejects_python_scalars():
    with pytest.raises(TypeError, match="NumPy scalar"):
        _runtime.launch(_kernels.RESAMPLE, "fuse_kernel<float, float>", (1,), (32,), (3,),
                        like=np.zeros(1))


def test_launch_with_empty_grid_does_nothing(monkeypatch):
    called = []
    monkeypatch.setattr(_runtime, "_LAUNCHER", lambda *a: called.append(a))
    _runtime.launch(_kernels.RESAMPLE, "x", (0,), (32,), (np.int32(1),), like=np.zeros(1))
    assert called == []
    _runtime.launch(_kernels.RESAMPLE, "x", (2,), (32,), (np.int32(1),), like=np.zeros(1))
    assert len(called) == 1


def test_import_is_lazy():
    code = ("import sys, robocache; "
            "bad = [m for m in ('torch', 'cupy', 'cuda.bindings.nvrtc', 'cuda.core') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cuda_status_reports_a_reason():
    ok, why = _runtime.cuda_status()
    assert isinstance(ok, bool) and why
