"""Contracts between the Python launch code and the kernels that no single op test pins down:

- every struct passed by value has, on the device, exactly the layout of the structured NumPy
  dtype the Python side packs (NVRTC itself checks offsetof / sizeof of every field: the device
  compiler is the authority, not g++);
- every kernel name the Python side builds, for every dtype it accepts, is among its module's
  name_expressions (so no dtype combination fails with a KeyError on a GPU), and every name
  expression is reachable from Python;
- float32 <-> float64 conversions that promise to be exact do not flush subnormals under the
  -ftz=true CuPy compiles with (checked in the PTX: the CPU emulator cannot see -ftz).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import product

import numpy as np
import pytest

from robocache import _array, _kernels, _runtime
from robocache.ops import images, resample, voxel, windows

# (module, C struct, NumPy dtype packed by the Python side)
BY_VALUE = [
    (_kernels.RESAMPLE, "FuseStreams", resample.FUSE_STREAMS_DTYPE),
    (_kernels.RESAMPLE, "ResampleArgs", resample.RESAMPLE_ARGS_DTYPE),
    (_kernels.IMAGES, "ImageParams", images.IMAGE_PARAMS_DTYPE),
    (_kernels.WINDOWS, "WinKeys", windows.WIN_KEYS_DTYPE),
    (_kernels.VOXEL, "VoxelGrid", voxel.VOXEL_GRID_DTYPE),
    (_kernels.VOXEL, "VoxelScatterArgs", voxel.VOXEL_SCATTER_DTYPE),
    (_kernels.VOXEL_FEATURES, "VoxelGrid", voxel.VOXEL_GRID_DTYPE),
]


def _nvrtc():
    return pytest.importorskip("cuda.bindings.nvrtc",
                               reason="compile-only checks need robocache[compile]")


@dataclass(frozen=True)
class _Extended:
    """A KernelModule with extra source appended (compile_for_arch duck-types modules)."""

    base: _runtime.KernelModule
    extra: str
    name_expressions: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        return self.base.source

    @property
    def options(self) -> tuple[str, ...]:
        return self.base.options

    def code(self) -> str:
        return self.base.code() + self.extra


def _layout_asserts(struct: str, dt: np.dtype) -> str:
    # NVRTC has neither <cstddef> nor __builtin_offsetof; EDG's __INTADDR__ is a constant expression
    lines = [f'static_assert(sizeof({struct}) == {dt.itemsize}, "sizeof({struct})");',
             f'static_assert(alignof({struct}) == {dt.alignment}, "alignof({struct})");']
    for name in dt.names:
        fdt, off = dt.fields[name][:2]
        lines.append(f"static_assert((unsigned long long)__INTADDR__(&((({struct}*)0)->{name})) "
                     f'== {off}, "offset of {struct}.{name}");')
        lines.append(f'static_assert(sizeof((({struct}*)0)->{name}) == {fdt.itemsize}, '
                     f'"size of {struct}.{name}");')
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("arch", ["sm_75", "sm_90"])
@pytest.mark.parametrize("module, struct, dt", BY_VALUE,
                         ids=[f"{m.source}:{s}" for m, s, _ in BY_VALUE])
def test_struct_by_value_layout_matches_numpy_dtype(module, struct, dt, arch):
    _nvrtc()
    r = _runtime.compile_for_arch(_Extended(module, _layout_asserts(struct, dt)), arch)
    assert r.ok, r.log


def test_layout_check_catches_a_wrong_offset():
    """The check above can fail: a dtype whose last field sits 4 bytes off is rejected."""
    _nvrtc()
    dt = voxel.VOXEL_GRID_DTYPE
    names = list(dt.names)
    bad = np.dtype({"names": names, "formats": [dt.fields[n][0] for n in names],
                    "offsets": [dt.fields[n][1] for n in names[:-1]] + [dt.fields[names[-1]][1] + 4],
                    "itemsize": dt.itemsize})
    r = _runtime.compile_for_arch(_Extended(_kernels.VOXEL, _layout_asserts("VoxelGrid", bad)),
                                  "sm_90")
    assert not r.ok and "offset of VoxelGrid.bidx64" in r.log


_KERNEL = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)",
                     re.S)
_STRUCT = re.compile(r"\bstruct\s+(?:alignas\(\d+\)\s+)?(\w+)\s*\{")


@pytest.mark.parametrize("module", _kernels.ALL_MODULES, ids=lambda m: m.source)
def test_every_struct_parameter_has_a_layout_check(module):
    """A struct a kernel takes by value must be listed in BY_VALUE (so its layout is checked)."""
    code = module.code()
    structs = set(_STRUCT.findall(code)) - {"rc_half", "rc_bf16"}
    checked = {s for m, s, _ in BY_VALUE if m is module}
    for name, params in _KERNEL.findall(code):
        for p in params.split(","):
            words = re.findall(r"\w+", p)
            by_value = "*" not in p and "&" not in p
            for s in structs & set(words):
                assert by_value and s in checked, f"{module.source}: {name} takes {s} ({p.strip()})"


@pytest.mark.parametrize("arch", ["sm_75", "sm_120"])
def test_scan_kernel_fits_a_1024_thread_block(arch):
    """voxel_scan_kernel is the one kernel launched with 1024 threads: more than 64 registers
    per thread would make every launch fail on a GPU (the emulator has no register file)."""
    _nvrtc()
    r = _runtime.compile_for_arch(_kernels.VOXEL, arch, verbose_ptxas=True)
    assert r.ok, r.log
    log = r.log.split("Compiling entry function '_Z17voxel_scan_kernel", 1)[1]
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    assert regs * voxel.SCAN_THREADS <= 65536, f"{regs} registers per thread on {arch}"


# ---------------------------------------------------------------------------------------------
# Kernel names: what Python builds == what the modules instantiate


def _bf16():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    return np.dtype(ml_dtypes.bfloat16)


def _float_array(rng, shape, dtype: str) -> np.ndarray:
    a = rng.standard_normal(shape)
    return a.astype(_bf16() if dtype == "bfloat16" else np.dtype(dtype))


def _run_every_dtype_path(rng) -> None:
    """Every CUDA path of every op, once per accepted dtype combination, on NumPy arrays."""
    for dtype in _array.FLOAT_DTYPES:
        for tdtype in resample.TIME_DTYPES:
            src = np.sort(rng.random((2, 5)), axis=1).astype(tdtype)
            tgt = rng.random((2, 4)).astype(tdtype)
            for D in (16, 3):  # 16: 16-byte rows for every dtype (vector path); 3: scalar path
                data = _float_array(rng, (2, 5, D), dtype)
                resample._resample_cuda(data, src, tgt, 0, dtype, tdtype)
            resample._fuse_cuda([(_float_array(rng, (2, 5, 3), dtype), src)], tgt, 0, dtype,
                                tdtype)
    for C in images.CHANNELS:
        frames = rng.integers(0, 256, (3, 6, 5, C), dtype=np.uint8)
        idx = np.array([[0, 2], [1, -1]], dtype=np.int64)
        for out_dtype in images.OUT_DTYPES:
            # no resize / resize, with one pixel per work item (widths 5, 3) and four (4, 8);
            # exact (no mean / std) and normalised
            for (crop, size), std in product(((None, (6, 5)), (None, (4, 3)), (4, None),
                                              (None, (4, 8))), (None, 0.5)):
                plan = images.make_plan(frames.shape[1:], crop=crop, resize=size, std=std,
                                        out_dtype=out_dtype)
                out = np.empty(plan.out_shape(2, 2), dtype=_array.numpy_dtype(out_dtype))
                images.apply_cuda(plan, frames, idx, None, out, np.uint64(1))
    kw = dict(grid_min=0.0, voxel_size=0.25, grid_size=4)
    for pdtype in voxel.POINT_DTYPES:
        pts = rng.random((20, 3)).astype(pdtype)
        for mode in voxel.MODES:
            for fdtype in (_array.FLOAT_DTYPES if mode in ("mean", "max") else (None,)):
                feats = None if fdtype is None else _float_array(rng, (20, 2), fdtype)
                points, bidx, grid = voxel._check_inputs(pts, kw["grid_min"], kw["voxel_size"],
                                                         kw["grid_size"], None, None, True)
                voxel._voxelize_cuda(points, bidx, feats, grid, mode, None, True)
        for idt in voxel.INDEX_DTYPES:
            bidx = (np.arange(20) % 2).astype(idt)
            points, b, grid = voxel._check_inputs(pts, kw["grid_min"], kw["voxel_size"],
                                                  kw["grid_size"], bidx, 2, True)
            voxel._coords_cuda(points, b, grid, True)
    src = rng.standard_normal((7, 2)).astype(np.float32)
    anchors = np.array([[a, 0, 7, 0] for a in range(7)], dtype=np.int64)
    op = windows.WindowOp([windows.WindowKey("s", src, np.array([-1, 0], np.int64))], anchors,
                          zero_pad=False, like=np.zeros(1))
    op.run_cuda(np.arange(7, dtype=np.int64))


def test_every_kernel_name_python_builds_is_compiled(emulated_cuda):
    """Python's names for every accepted dtype == the modules' name_expressions, exactly."""
    _run_every_dtype_path(np.random.default_rng(0))
    used: dict[str, set[str]] = {}
    for launch in emulated_cuda:
        used.setdefault(launch.source, set()).add(launch.name)
    for module in _kernels.ALL_MODULES:
        names = used.get(module.source, set())
        assert names <= set(module.name_expressions), \
            f"{module.source}: built but not compiled: {sorted(names - set(module.name_expressions))}"
        assert names == set(module.name_expressions), \
            f"{module.source}: never built by Python: {sorted(set(module.name_expressions) - names)}"


# ---------------------------------------------------------------------------------------------
# -ftz: exact float32 <-> float64 conversions must not become flushing cvt instructions


def _ptx(module, arch: str = "compute_90") -> str:
    """PTX of `module` with every name expression instantiated, compiled as CuPy does (-ftz)."""
    nvrtc = _nvrtc()
    err, prog = nvrtc.nvrtcCreateProgram(module.code().encode(), module.source.encode(), 0, [], [])
    assert int(err) == 0
    try:
        for name in module.name_expressions:
            assert int(nvrtc.nvrtcAddNameExpression(prog, name.encode())[0]) == 0
        opts = [*module.options, "-ftz=true", f"--gpu-architecture={arch}"]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        assert int(err) == 0, module.source
        err, size = nvrtc.nvrtcGetPTXSize(prog)
        buf = bytearray(size)  # NVRTC writes it: never an (immutable, maybe shared) bytes
        nvrtc.nvrtcGetPTX(prog, buf)
        return bytes(buf).decode(errors="replace")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


@pytest.mark.parametrize("module", [_kernels.WINDOWS, _kernels.VOXEL, _kernels.VOXEL_FEATURES],
                         ids=lambda m: m.source)
def test_exact_widening_does_not_flush_subnormals(module):
    """windows.cu converts float32 / bfloat16 values to float64 outputs, the voxel kernels widen
    coordinates and features: all promise NumPy's exact widening, subnormals included. Under
    -ftz=true a plain (double)f is `cvt.ftz.f64.f32`, which turns 1e-40f into 0.0."""
    ptx = _ptx(module)
    assert ".entry" in ptx
    assert "cvt.ftz.f64.f32" not in ptx
