"""The CUDA kernel emulator (tests/emulator): its own semantics, common.cuh's 16-bit conversions,
and resample / fuse run through their CUDA paths on the CPU, compared with the NumPy backend.

Every expected value is computed independently with NumPy (never by the emulator itself).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import emulator
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robocache import _array, _runtime
from robocache._errors import KernelCompileError
from robocache.ops import resample as R

pytestmark = pytest.mark.usefixtures("emulated_cuda")

KERNELS = Path(emulator.__file__).resolve().parent / "kernels"
CONV = emulator.SourceModule(
    str(KERNELS / "conversions.cu"),
    ("load_kernel<rc_half>", "load_kernel<rc_bf16>", "store_kernel<rc_half>",
     "store_kernel<rc_bf16>", "store_kernel<unsigned char>"))
SELF = emulator.SourceModule(
    str(KERNELS / "selftest.cu"),
    ("index_kernel", "block_sum_kernel", "block_sum_static_kernel<64>", "warp_kernel",
     "deadlock_kernel", "atomic_kernel", "intrinsics_kernel", "args_kernel", "scale4_kernel",
     "trap_kernel", "reverse_kernel"))


def ptr(x):
    return _array.data_ptr(x)


def launch(module, name, grid, block, *args, shared_mem=0):
    _runtime.launch(module, name, grid, block, args, like=None, shared_mem=shared_mem)


def bfloat16():
    return pytest.importorskip("ml_dtypes").bfloat16


# ---------------------------------------------------------------------------------------------
# common.cuh: 16-bit conversions


def elementwise(name, x, out_dtype):
    out = np.empty(x.shape, out_dtype)
    out.view(np.uint8)[...] = 0xA5                       # a sentinel the kernel must overwrite
    n = x.size
    launch(CONV, name, ((n + 255) // 256,), (256,), ptr(x), ptr(out), np.int32(n))
    return out


def test_half_to_float_every_pattern():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got = elementwise("load_kernel<rc_half>", bits, np.float32)
    ref = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(ref)
    assert nan.sum() == 2 * 1023
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), ref[~nan].view(np.uint32))


def test_bf16_to_float_every_pattern():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got = elementwise("load_kernel<rc_bf16>", bits, np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), bits.astype(np.uint32) << 16)
    ref = bits.view(bfloat16()).astype(np.float32)
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), ref[~nan].view(np.uint32))


def _ties_and_neighbours(values: np.ndarray) -> np.ndarray:
    """Midpoints of consecutive values (exact in float32) and the float32 numbers beside them."""
    v = values.astype(np.float64)
    mids = ((v[:-1] + v[1:]) / 2).astype(np.float32)
    return np.concatenate([mids, np.nextafter(mids, np.float32(np.inf)),
                           np.nextafter(mids, np.float32(-np.inf))])


def float32_cases(narrow_values: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1)
    random_bits = rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32)
    subnormals = rng.integers(1, 1 << 23, 2000, dtype=np.uint32)
    nans = np.array([0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0x7FA00000, 0x7F802000], np.uint32)
    special = np.array([0.0, 1.0, 65504.0, 65519.99, 65520.0, 65536.0, 1e38, 3.4e38, np.inf,
                        2.0**-14, 2.0**-24, 2.0**-25, 1.5 * 2.0**-25, 2.0**-26, 1e-45,
                        3.3895314e38, 3.3961776e38], np.float32)
    x = np.concatenate([random_bits.view(np.float32), subnormals.view(np.float32),
                        nans.view(np.float32), special, _ties_and_neighbours(narrow_values)])
    return np.concatenate([x, -x])


def _check_narrowing(got_bits: np.ndarray, ref_bits: np.ndarray, x: np.ndarray, exp_mask: int):
    nan = np.isnan(x)
    np.testing.assert_array_equal(got_bits[~nan], ref_bits[~nan])
    g = got_bits[nan].astype(np.uint32)
    man_mask = (0xFFFF >> 1) & ~exp_mask
    assert np.all((g & exp_mask) == exp_mask) and np.all((g & man_mask) != 0), "NaN stays NaN"
    np.testing.assert_array_equal(g >> 15, x[nan].view(np.uint32) >> 31)   # and keeps its sign


def test_float_to_half_rounds_like_numpy():
    halves = np.arange(0x7C00, dtype=np.uint16).view(np.float16)      # every finite half >= 0
    x = float32_cases(halves)
    got = elementwise("store_kernel<rc_half>", x, np.uint16)
    with np.errstate(all="ignore"):
        ref = x.astype(np.float16).view(np.uint16)
    _check_narrowing(got, ref, x, 0x7C00)


def test_float_to_bf16_rounds_like_ml_dtypes():
    bf16 = (np.arange(0x7F80, dtype=np.uint32) << 16).view(np.float32)  # every finite bf16 >= 0
    x = float32_cases(bf16)
    got = elementwise("store_kernel<rc_bf16>", x, np.uint16)
    with np.errstate(all="ignore"):
        ref = x.astype(bfloat16()).view(np.uint16)
    _check_narrowing(got, ref, x, 0x7F80)


def test_a_wrong_reference_is_caught():
    """The comparison above can fail: truncating to bf16 (instead of rounding) differs."""
    x = _ties_and_neighbours((np.arange(1, 0x7F00, 97, dtype=np.uint32) << 16).view(np.float32))
    got = elementwise("store_kernel<rc_bf16>", x, np.uint16)
    truncated = (x.view(np.uint32) >> 16).astype(np.uint16)
    assert np.count_nonzero(got != truncated) > len(x) // 4


def test_uint8_store_rounds_half_even_and_saturates():
    rng = np.random.default_rng(2)
    x = np.concatenate([
        np.array([-np.inf, -1.0, -0.5, -0.0, 0.0, 0.4999, 0.5, 1.5, 2.5, 127.5, 128.5, 254.5,
                  255.0, 255.49, 255.5, 256.0, 1e30, np.inf, np.nan], np.float32),
        (rng.integers(-40, 600, 3000) / 2).astype(np.float32),
        rng.uniform(-10, 270, 3000).astype(np.float32)])
    got = elementwise("store_kernel<unsigned char>", x, np.uint8)
    with np.errstate(invalid="ignore"):
        ref = np.where(np.isnan(x), 0, np.rint(np.clip(x, 0, 255))).astype(np.uint8)
    np.testing.assert_array_equal(got, ref)


# ---------------------------------------------------------------------------------------------
# The emulator's own semantics


def test_builtin_indices_cover_every_thread_once():
    grid, block = (2, 3, 2), (4, 2, 3)
    nb, nt = 12, 24
    out = np.full((nb * nt, 12), -7, np.int32)
    launch(SELF, "index_kernel", grid, block, ptr(out))
    ref = np.array([(tx, ty, tz, bx, by, bz, *block, *grid)
                    for bz, by, bx in itertools.product(range(2), range(3), range(2))
                    for tz, ty, tx in itertools.product(range(3), range(2), range(4))], np.int32)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffle"])
def test_block_reduction_in_dynamic_shared_memory(order):
    rng = np.random.default_rng(3)
    n, bs = 1000, 128
    x = rng.integers(-50, 51, n).astype(np.int32)
    x[256:384] = np.abs(x[256:384]) + 1                  # block 2: all positive
    x[512:640] = -np.abs(x[512:640])                     # block 4: none positive
    nb = (n + bs - 1) // bs
    sums = np.full(nb, -1, np.int32)
    votes = np.full((nb, 3), -1, np.int32)
    with emulator.emulated(order=order, seed=11):
        launch(SELF, "block_sum_kernel", (nb,), (bs,), ptr(x), np.int32(n), ptr(sums),
               ptr(votes), shared_mem=bs * 4)
    padded = np.zeros(nb * bs, np.int64)
    padded[:n] = x
    blocks = padded.reshape(nb, bs)
    valid = (np.arange(nb * bs) < n).reshape(nb, bs)
    np.testing.assert_array_equal(sums, blocks.sum(axis=1))
    pos = (blocks > 0) & valid
    np.testing.assert_array_equal(votes[:, 0], pos.sum(axis=1))
    np.testing.assert_array_equal(votes[:, 1], (pos | ~valid).all(axis=1))
    np.testing.assert_array_equal(votes[:, 2], pos.any(axis=1))
    assert votes[2, 1] == 1 and votes[4, 2] == 0


def test_static_shared_memory_with_threads_returning_before_barriers():
    rng = np.random.default_rng(4)
    n = 150                                              # 3 blocks of 64; the last has 22 threads
    x = rng.integers(-1000, 1000, n).astype(np.int32)
    sums = np.full(3, -1, np.int32)
    launch(SELF, "block_sum_static_kernel<64>", (3,), (64,), ptr(x), np.int32(n), ptr(sums))
    np.testing.assert_array_equal(sums, [x[:64].sum(), x[64:128].sum(), x[128:].sum()])


def test_warp_intrinsics():
    rng = np.random.default_rng(5)
    x = rng.integers(-20, 21, 128).astype(np.int32)
    x[:32] = np.abs(x[:32]) + 200                        # warp 0: any > 100, all > -100
    out = np.full((128, 6), -1, np.int32)
    launch(SELF, "warp_kernel", (2,), (64,), ptr(x), ptr(out))
    w = x.reshape(4, 32).astype(np.int64)
    down = w.copy()
    for d in (16, 8, 4, 2, 1):                           # lanes past the warp read their own value
        src = np.arange(32) + d
        down = down + np.where(src < 32, down[:, np.minimum(src, 31)], down)
    ballot = ((w > 0) * (1 << np.arange(32, dtype=np.int64))).sum(axis=1)
    flags = (w > 100).any(axis=1) + 2 * (w > -100).all(axis=1)
    ref = np.stack([np.repeat(w.sum(axis=1), 32), np.cumsum(w, axis=1).ravel(), down.ravel(),
                    np.repeat(w[:, 3], 32), np.repeat(ballot, 32).astype(np.uint32).view(np.int32),
                    np.repeat(flags, 32)], axis=1)
    np.testing.assert_array_equal(out, ref)


def test_deadlock_and_trap_fail_the_launch_and_leave_the_emulator_usable():
    out = np.zeros(64, np.int32)
    with pytest.raises(emulator.EmulatorError, match=r"deadlock.*1 at a warp barrier|deadlock"):
        launch(SELF, "deadlock_kernel", (1,), (64,), ptr(out))
    with pytest.raises(emulator.EmulatorError, match=r"block \(1,0,0\) thread \(5,0,0\).*__trap"):
        launch(SELF, "trap_kernel", (3,), (32,), ptr(np.zeros(96, np.int32)))
    x = np.arange(256, dtype=np.float32)
    rev = np.zeros_like(x)
    launch(SELF, "reverse_kernel", (2,), (128,), ptr(x), ptr(rev), shared_mem=128 * 4)
    np.testing.assert_array_equal(rev, np.concatenate([x[127::-1], x[:127:-1]]))


@pytest.mark.parametrize("order", ["forward", "shuffle"])
def test_atomics(order):
    rng = np.random.default_rng(6)
    n, nbins = 3000, 7
    x = rng.integers(-500, 501, n).astype(np.int32)
    hist = np.zeros(nbins, np.int32)
    fsum, dsum = np.zeros(1, np.float32), np.zeros(1, np.float64)
    imax = np.array([np.iinfo(np.int32).min], np.int32)
    umin = np.array([np.iinfo(np.uint32).max], np.uint32)
    ubits = np.zeros(1, np.uint64)
    fmax = np.array([-np.inf], np.float32)
    with emulator.emulated(order=order, seed=3):
        launch(SELF, "atomic_kernel", ((n + 255) // 256,), (256,), ptr(x), np.int32(n),
               ptr(hist), np.int32(nbins), ptr(fsum), ptr(dsum), ptr(imax), ptr(umin),
               ptr(ubits), ptr(fmax))
    np.testing.assert_array_equal(hist, np.bincount(x % nbins, minlength=nbins))
    assert fsum[0] == x.sum() and dsum[0] == x.sum()
    assert imax[0] == x.max() and umin[0] == x.min() + 1000
    assert int(ubits[0]) == sum({1 << int(v) for v in np.unique(x % 64)})
    assert fmax[0] == np.float32(x.max()) * np.float32(0.5)


def test_conversion_intrinsics_and_min_max():
    rng = np.random.default_rng(7)
    x = np.concatenate([
        np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, -0.0, 1e-40, 255.5, 3e9, -3e9,
                  2147483520.0, 2.0**31, 4294967040.0, 2.0**32, 1e20, -1e20, np.inf, -np.inf,
                  np.nan, 2.0, -2.0, 1.0, 0.0], np.float32),
        (rng.integers(-2000, 2000, 500) / 4).astype(np.float32),
        rng.standard_normal(500).astype(np.float32) * 3])
    n = x.size
    i_rn, i_rz, bits = (np.full(n, -9, np.int32) for _ in range(3))
    u_rn = np.full(n, 9, np.uint32)
    sat, mn = np.full(n, -9, np.float32), np.full(n, -9, np.float32)
    launch(SELF, "intrinsics_kernel", ((n + 127) // 128,), (128,), ptr(x), np.int32(n),
           ptr(i_rn), ptr(u_rn), ptr(i_rz), ptr(sat), ptr(mn), ptr(bits))
    xd = x.astype(np.float64)
    nan = np.isnan(xd)

    def saturate(r, lo, hi):
        return np.where(nan, 0, np.clip(np.nan_to_num(r), lo, hi))

    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(i_rn, saturate(np.rint(xd), -2**31, 2**31 - 1))
        np.testing.assert_array_equal(u_rn, saturate(np.rint(xd), 0, 2**32 - 1))
        np.testing.assert_array_equal(i_rz, saturate(np.trunc(xd), -2**31, 2**31 - 1))
        np.testing.assert_array_equal(sat, np.where(nan, 0, np.clip(x, 0, 1)))
    np.testing.assert_array_equal(mn, np.fmax(np.fmin(x, 2), -2))
    u = x.view(np.uint32)
    ref_bits = [bin(int(v)).count("1") + 64 * (32 - int(v).bit_length()) for v in u]
    np.testing.assert_array_equal(bits, ref_bits)


PAIR = np.dtype([("a", np.int32), ("b", np.float64)], align=True)


def test_scalar_and_struct_arguments():
    out = np.full(8, np.nan)
    pair = np.array((-7, 2.5), dtype=PAIR)[()]
    launch(SELF, "args_kernel", (1,), (32,), np.float64(1.25e300), np.float32(3.5),
           np.int64(-(2**40) - 3), np.uint16(65535), np.bool_(True), pair, np.int8(-5), ptr(out))
    np.testing.assert_array_equal(out, [1.25e300, 3.5, -(2**40) - 3, 65535, 1, -7, 2.5, -5])


@pytest.mark.parametrize("position, wrong, match", [
    (2, np.int32(1), r"argument 2: expected a signed integer of 8 bytes, got int32"),
    (3, np.int16(1), r"argument 3: expected an unsigned integer of 2 bytes"),
    (1, np.float64(1), r"argument 1: expected a floating-point number of 4 bytes"),
    (5, np.zeros((), np.dtype([("a", np.int32)]))[()], r"argument 5: expected a struct"),
    (7, np.int64(0), r"argument 7: expected a pointer"),
])
def test_argument_types_are_checked(position, wrong, match):
    out = np.zeros(8)
    args = [np.float64(1), np.float32(1), np.int64(1), np.uint16(1), np.bool_(True),
            np.zeros((), PAIR)[()], np.int8(1), ptr(out)]
    args[position] = wrong
    with pytest.raises(TypeError, match=match):
        launch(SELF, "args_kernel", (1,), (1,), *args)
    with pytest.raises(TypeError, match="expected 8 arguments, got 7"):
        launch(SELF, "args_kernel", (1,), (1,), *args[:7])


def test_vector_types():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((50, 4)).astype(np.float32)
    out = np.zeros_like(x)
    launch(SELF, "scale4_kernel", (1,), (64,), ptr(x), ptr(out), np.int32(50), np.float32(-1.5))
    np.testing.assert_array_equal(out, x * np.float32(-1.5))


@pytest.mark.parametrize("grid, block, shared, err", [
    ((1,), (1025,), 0, "block: expected dimension 0"),
    ((1,), (32, 32, 2), 0, "at most 1024 threads"),
    ((1,), (1, 1, 65), 0, "block: expected dimension 2"),
    ((0,), (32,), 0, "grid: expected dimension 0"),
    ((1, 65536), (32,), 0, "grid: expected dimension 1"),
    ((1,), (32,), 48 * 1024 + 1, "shared_mem"),
])
def test_launch_configuration_is_checked(grid, block, shared, err):
    with pytest.raises(ValueError, match=err):
        emulator.cpu_launch(SELF, "trap_kernel", grid, block, (ptr(np.zeros(1, np.int32)),),
                            None, shared)


def test_unknown_kernel_name():
    with pytest.raises(KeyError, match="not among the name expressions"):
        emulator.cpu_launch(SELF, "nope_kernel", (1,), (1,), (), None, 0)


def test_compile_errors_name_the_kernel_file_and_line(tmp_path):
    bad = tmp_path / "bad.cu"
    bad.write_text('#include "common.cuh"\n__global__ void k(float* x) {\n'
                   '    x[0] = undefined_name;\n}\n')
    with pytest.raises(KernelCompileError, match=r"bad\.cu:3"):
        emulator.load(emulator.SourceModule(str(bad), ("k",)))


def test_module_options_reach_the_compiler():
    m = emulator.SourceModule("x.cu", (), ("-std=c++20", "-DRC_N=3", "--define-macro=RC_M",
                                           "-U", "--use_fast_math", "-lineinfo"))
    fl = emulator.build.flags(m)
    assert fl[0] == "-std=c++20" and "-DRC_N=3" in fl and "-DRC_M" in fl
    assert "--use_fast_math" not in fl and "-lineinfo" not in fl and "-std=c++17" not in fl
    assert "-U" not in fl


def test_cooperative_detection_ignores_comments():
    assert emulator.needs_fibers("__global__ void k() { __syncthreads(); }")
    assert emulator.needs_fibers("x = __shfl_xor_sync(m, x, 1);")
    assert not emulator.needs_fibers("// no __syncthreads needed\n/* __shfl_sync */ int x;")
    assert not emulator.load(CONV).cooperative and emulator.load(SELF).cooperative


def test_concurrent_builds_both_succeed(tmp_path):
    kernel = tmp_path / "tiny.cu"
    kernel.write_text("__global__ void add_one(int* x) { x[threadIdx.x] += 1; }\n")
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(Path(__file__).resolve().parent)!r},
                        {str(Path(__file__).resolve().parent.parent)!r}]
        import numpy as np, emulator
        m = emulator.SourceModule({str(kernel)!r}, ("add_one",))
        x = np.arange(8, dtype=np.int32)
        emulator.cpu_launch(m, "add_one", (1,), (8,), (np.uint64(x.ctypes.data),), None, 0)
        assert (x == np.arange(1, 9)).all()
    """)
    cache = tmp_path / "cache"
    cache.mkdir()
    # the shared runtime object comes from the usual cache, so the race is the module's own build
    flags = emulator.build.flags(emulator.SourceModule(str(kernel), ("add_one",)))
    runtime = emulator.build._runtime_object(emulator.compiler(),
                                             emulator.build.compiler_version(emulator.compiler()),
                                             flags, emulator.build.cache_dir())
    shutil.copy(runtime, cache / runtime.name)
    env = {**os.environ, "ROBOCACHE_EMU_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    files = sorted(p.suffix for p in cache.iterdir())
    assert files == [".cpp", ".o", ".so"], files    # one library, no temporary left behind


def test_test_kernels_are_valid_cuda():
    pytest.importorskip("cuda.bindings")
    if "asan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("NVRTC cannot load its builtins library under a preloaded ASan runtime")
    for module in (CONV, SELF):
        result = _runtime.compile_for_arch(module, "sm_75")
        assert result.ok, result.log


# ---------------------------------------------------------------------------------------------
# resample and fuse: the CUDA path on the emulator vs the NumPy backend

FLOATS = ("float32", "float64", "float16", "bfloat16")
TIMES = ("float32", "float64")
METHODS = tuple(R.METHODS.items())
EPS = {"float32": 2.0**-23, "float64": 0.0, "float16": 2.0**-10, "bfloat16": 2.0**-7}
TINY = {"float32": 2.0**-149, "float64": 0.0, "float16": 2.0**-24, "bfloat16": 2.0**-133}


def npdtype(name):
    if name == "bfloat16":
        bfloat16()
    return _array.numpy_dtype(name)


def make_stream(rng, B, S, D, dtype, tdtype, *, dup=False, misalign=False):
    data = (rng.standard_normal((B, S, D)) * 3).astype(npdtype(dtype))
    if misalign:                                     # contiguous, but not 16-byte aligned
        buf = np.empty(data.size + 1, data.dtype)
        view = buf[1:].reshape(data.shape)
        view[...] = data
        data = view
    times = np.sort(rng.uniform(0, 10, (B, S)), axis=1)
    if dup and S >= 3:
        times[:, 1] = times[:, 2]                    # duplicated timestamps
    return data, times.astype(tdtype)


def make_targets(rng, src, T, tdtype):
    """Targets before, inside and after the span, exact source times and exact midpoints."""
    B, S = src.shape
    tgt = rng.uniform(-2, 12, (B, T))
    k = min(S, T // 3)
    tgt[:, :k] = src[:, :k]
    if S >= 2:
        m = min(S - 1, T // 3)
        tgt[:, k:k + m] = (src[:, :m].astype(np.float64) + src[:, 1:m + 1]) / 2
    return tgt.astype(tdtype)


def assert_matches_numpy(got, data, src, tgt, method, dtype):
    ref = R._resample_numpy(data, src, tgt, method)
    assert got.shape == ref.shape and got.dtype == npdtype(dtype)
    if method != R.METHODS["linear"]:                # exact copies: bit for bit
        np.testing.assert_array_equal(got.view(np.uint8), ref.view(np.uint8))
        return
    if dtype == "float64":                           # same double arithmetic, no FMA: exact
        np.testing.assert_array_equal(got, ref)
        return
    # float accumulation, one rounding to the output type: within 2 ulps of the bracketing rows
    scale = np.empty(ref.shape)
    for b in range(ref.shape[0]):
        r0, r1, _ = R._interp_rows(src[b], tgt[b], method)
        d = data[b].astype(np.float64)
        scale[b] = np.abs(d[r0]) + np.abs(d[r1])
    g = got.astype(np.float64)
    bad = ~(np.abs(g - ref) <= 2 * EPS[dtype] * scale + TINY[dtype])
    bad &= ~(np.isnan(g) & np.isnan(ref))
    assert not bad.any(), (g[bad][:5], ref[bad][:5])


@pytest.mark.parametrize("layout", ["vec", "plain", "misaligned"])
@pytest.mark.parametrize("method_name, method", METHODS)
@pytest.mark.parametrize("tdtype", TIMES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_resample_cuda_path_matches_numpy(emulated_cuda, dtype, tdtype, method_name, method,
                                          layout):
    rng = np.random.default_rng(hash((dtype, tdtype, method, layout)) % 2**32)
    B, S, T = 3, 17, 40
    D = 5 if layout == "plain" else 16
    data, src = make_stream(rng, B, S, D, dtype, tdtype, dup=True,
                            misalign=layout == "misaligned")
    tgt = make_targets(rng, src, T, tdtype)
    got = R._resample_cuda(data, src, tgt, method, dtype, tdtype)
    assert_matches_numpy(got, data, src, tgt, method, dtype)
    vec = "true" if layout == "vec" else "false"
    assert [x.name for x in emulated_cuda] == [
        f"resample_kernel<{_array.C_TYPES[dtype]}, {_array.C_TYPES[tdtype]}, {vec}>"]


@pytest.mark.parametrize("S, T", [(1500, 37), (33, 7), (34, 9), (65, 2), (66, 5), (1089, 3),
                                  (1090, 6), (40, 1)])
def test_resample_warps_of_four_rows_across_sequences(emulated_cuda, S, T):
    """A warp builds 4 consecutive output rows: rows of two sequences in one warp (T % 4 != 0),
    a last warp with fewer than 4 rows, and source spans around the search's round boundaries
    (33 probes' worth: 33, 66, 1089...; several rounds, run together for the 4 rows). fuse
    searches one row at a time with the same rounds."""
    rng = np.random.default_rng(S + T)
    for dtype, D in (("bfloat16", 24), ("float32", 5), ("float64", 4)):
        data, src = make_stream(rng, 3, S, D, dtype, "float32", dup=True)
        tgt = make_targets(rng, src, T, "float32")
        for method in R.METHODS.values():
            got = R._resample_cuda(data, src, tgt, method, dtype, "float32")
            assert_matches_numpy(got, data, src, tgt, method, dtype)
        fused = R._fuse_cuda([(data, src), (data[:, :7], src[:, :7])], tgt, 0, dtype, "float32")
        assert_matches_numpy(fused[..., :D], data, src, tgt, 0, dtype)


@pytest.mark.parametrize("S", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_resample_short_sources(dtype, S):
    rng = np.random.default_rng(S)
    for method in R.METHODS.values():
        for D in (3, 8):
            data, src = make_stream(rng, 2, S, D, dtype, "float32")
            tgt = make_targets(rng, src, 12, "float32")
            got = R._resample_cuda(data, src, tgt, method, dtype, "float32")
            assert_matches_numpy(got, data, src, tgt, method, dtype)


def test_resample_all_duplicates_nan_data_and_out_of_span_targets():
    rng = np.random.default_rng(9)
    data, _ = make_stream(rng, 2, 6, 8, "float32", "float32")
    data[0, 2, 3] = np.nan
    data[1, 4, :] = np.inf
    src = np.array([[1, 1, 1, 2, 2, 3], [0, 0, 0, 0, 0, 0]], np.float32)
    tgt = np.array([[-5, 1, 1.5, 2, 2.5, 3, 9], [-1, 0, 0, 1, 2, -0.0, 0.5]], np.float32)
    for method in R.METHODS.values():
        got = R._resample_cuda(data, src, tgt, method, "float32", "float32")
        assert_matches_numpy(got, data, src, tgt, method, "float32")


@pytest.mark.parametrize("S", [32, 33, 34, 65, 1089, 1090, 3000])
@pytest.mark.parametrize("tdtype", TIMES)
def test_resample_warp_search_on_long_sources_with_duplicates(S, tdtype):
    """Sources longer than 32 take the warp search's probing rounds: runs of equal times across
    probe boundaries, targets on them, between them, outside the span and NaN give the rows
    NumPy's searchsorted gives (previous / nearest: bit for bit)."""
    rng = np.random.default_rng(S)
    B, T, D = 2, 48, 16
    data = (rng.standard_normal((B, S, D)) * 3).astype(np.float32)
    src = np.sort(rng.integers(0, max(2, S // 3), (B, S)), axis=1).astype(tdtype)  # dense dups
    tgt = np.concatenate([src[:, rng.integers(0, S, 20)],                           # on times
                          src[:, :8] + 0.5, rng.uniform(-3, S // 3 + 3, (B, 16)),
                          np.full((B, 4), np.nan)], axis=1).astype(tdtype)
    assert tgt.shape[1] == T
    for method in R.METHODS.values():
        got = R._resample_cuda(data, src, tgt, method, "float32", tdtype)
        assert_matches_numpy(got, data, src, tgt, method, "float32")
        fused = R._fuse_cuda([(data, src), (data[:, :7], src[:, :7])], tgt, method, "float32",
                             tdtype)
        np.testing.assert_array_equal(fused[..., :D], got)


@pytest.mark.parametrize("B, T", [(0, 5), (3, 0)])
def test_resample_empty_output_launches_nothing(emulated_cuda, B, T):
    data = np.zeros((B, 4, 3), np.float32)
    src = np.zeros((B, 4), np.float32)
    tgt = np.zeros((B, T), np.float32)
    got = R._resample_cuda(data, src, tgt, 0, "float32", "float32")
    assert got.shape == (B, T, 3) and emulated_cuda == []
    streams = [(data, src)]
    assert R._fuse_cuda(streams, tgt, 0, "float32", "float32").shape == (B, T, 3)
    assert emulated_cuda == []


@pytest.mark.parametrize("cooperative, order", [(None, "reverse"), (True, "shuffle")])
def test_resample_same_result_in_every_execution_mode(cooperative, order):
    rng = np.random.default_rng(10)
    data, src = make_stream(rng, 2, 9, 16, "float16", "float64")
    tgt = make_targets(rng, src, 30, "float64")
    ref = R._resample_cuda(data, src, tgt, 0, "float16", "float64")
    with emulator.emulated(cooperative=cooperative, order=order, seed=5):
        got = R._resample_cuda(data, src, tgt, 0, "float16", "float64")
    np.testing.assert_array_equal(got.view(np.uint16), ref.view(np.uint16))


@pytest.mark.parametrize("method", list(R.METHODS.values()))
@pytest.mark.parametrize("dtype, tdtype", [("float32", "float64"), ("float64", "float32"),
                                           ("float16", "float32"), ("bfloat16", "float64")])
def test_fuse_cuda_path_matches_numpy(emulated_cuda, dtype, tdtype, method):
    rng = np.random.default_rng(12)
    B, T = 2, 25
    streams = [make_stream(rng, B, 30, 5, dtype, tdtype, dup=True),
               make_stream(rng, B, 7, 8, dtype, tdtype),
               make_stream(rng, B, 1, 3, dtype, tdtype)]
    tgt = make_targets(rng, streams[0][1], T, tdtype)
    got = R._fuse_cuda(streams, tgt, method, dtype, tdtype)
    assert got.shape == (B, T, 16) and len(emulated_cuda) == 1
    col = 0
    for d, t in streams:
        w = d.shape[2]
        assert_matches_numpy(np.ascontiguousarray(got[:, :, col:col + w]), d, t, tgt, method,
                             dtype)
        col += w


def test_fuse_eight_streams():
    rng = np.random.default_rng(13)
    streams = [make_stream(rng, 2, 3 + k, 1 + k, "float32", "float32") for k in range(8)]
    tgt = make_targets(rng, streams[0][1], 9, "float32")
    got = R._fuse_cuda(streams, tgt, 0, "float32", "float32")
    ref = np.concatenate([R._resample_numpy(d, t, tgt, 0) for d, t in streams], axis=-1)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), S=st.integers(1, 6), T=st.integers(0, 12), D=st.integers(1, 20),
       dtype=st.sampled_from(["float32", "float64"]), method=st.sampled_from([0, 1, 2]),
       seed=st.integers(0, 2**32 - 1))
def test_resample_random_shapes(B, S, T, D, dtype, method, seed):
    rng = np.random.default_rng(seed)
    data, src = make_stream(rng, B, S, D, dtype, dtype, dup=seed % 2 == 0)
    src = np.round(src)                              # many duplicates and exact hits
    tgt = np.round(rng.uniform(-2, 12, (B, T)) * 2).astype(dtype) / 2
    with emulator.emulated():
        got = R._resample_cuda(data, src, tgt, method, dtype, dtype)
    assert_matches_numpy(got, data, src, tgt, method, dtype)


@pytest.mark.parametrize("rows_per_warp, blocks", [(4, 3), (3, 5), (2, 5)])
def test_resample_builds_of_the_benchmark_sweep_compute_the_same(monkeypatch, rows_per_warp,
                                                                 blocks):
    """benchmarks/bench_resample.py times resample_kernel built with other -D knobs (rows per
    warp, register target) and ships the fastest: each build gives the default build's bytes,
    also for warps straddling two sequences and a short last warp."""
    from benchmarks.bench_resample import SWEEP, sweep_module
    from robocache import _kernels

    assert (rows_per_warp, blocks) in SWEEP
    rng = np.random.default_rng(rows_per_warp * 10 + blocks)
    cases = []
    for dtype, D, T in (("bfloat16", 24, 13), ("float32", 5, 7), ("float64", 4, 9)):
        data, src = make_stream(rng, 3, 70, D, dtype, "float32", dup=True)
        cases.append((dtype, data, src, make_targets(rng, src, T, "float32")))
    want = [[R._resample_cuda(d, s, t, m, dtype, "float32") for m in R.METHODS.values()]
            for dtype, d, s, t in cases]
    monkeypatch.setattr(_kernels, "RESAMPLE", sweep_module(rows_per_warp, blocks))
    monkeypatch.setattr(R, "ROWS_PER_WARP", rows_per_warp)
    for (dtype, d, s, t), ref in zip(cases, want, strict=True):
        for m, expected in zip(R.METHODS.values(), ref, strict=True):
            got = R._resample_cuda(d, s, t, m, dtype, "float32")
            np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8))
