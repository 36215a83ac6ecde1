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


class Tiny:  # a one-kernel module whose compile logs nothing (log size 1: the NUL)
    source, name_expressions, options = "tiny.cu", ("tiny",), _runtime.BASE_OPTIONS

    def code(self):
        return 'extern "C" __global__ void tiny(int* x) { *x = 1; }\n'


def test_an_empty_compile_log_corrupts_no_python_object():
    """NVRTC writes its log (one NUL when empty) into the buffer it is given: a bytes object
    there (b" " * 1 is CPython's shared b" ") once turned every later b" " into b"\\0" for the
    whole process - the .npy headers the cache wrote afterwards were padded with NULs."""
    result = _runtime.compile_for_arch(Tiny(), "sm_75")
    assert result.ok and result.log == ""
    assert (b" " * 1)[0] == 32 and b" ".decode() == " "


def test_keep_cubin_returns_the_cubin():
    kept = _runtime.compile_for_arch(Tiny(), "sm_90", keep_cubin=True)
    assert kept.ok and len(kept.cubin) == kept.cubin_bytes and kept.cubin[:4] == b"\x7fELF"
    assert _runtime.compile_for_arch(Tiny(), "sm_90").cubin == b""
