"""The driver launch path (robocache/_driver.py, runtime._driver_launch) with a stand-in for
libcuda: each argument's bytes land where the pointer array says, at its type's alignment;
structs are copied whole; wrong arguments fail before the driver is called; the driver's errors
are named; a thread without a current context is given one and the launch retried; the runtime
picks the stream and device as CuPy's path does, and falls back to CuPy's launch without a
driver. The real driver runs under every GPU test (they all launch through it)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from robocache import _driver, _runtime

STRUCT = np.dtype({"names": ["p", "n", "x"], "formats": [(np.uint64, 3), np.int32, np.float32]},
                  align=True)


class FakeDriver:
    """Records each launch with the parameter bytes its pointers point at."""

    def __init__(self, errors=()):
        self.calls, self.errors = [], list(errors)
        self.sizes = None

    def launch(self, function, gx, gy, gz, bx, by, bz, shared, stream, pointers, extra):
        values = [ctypes.string_at(pointers[k], n) for k, n in enumerate(self.sizes)]
        self.calls.append(((gx, gy, gz), (bx, by, bz), shared, stream, values))
        return self.errors.pop(0) if self.errors else 0

    def error_name(self, code):
        return f"FAKE_ERROR ({code})"


def _args():
    s = np.zeros((), STRUCT)
    s["p"] = [1, 2**63 + 5, 3]
    s["n"] = -7
    s["x"] = 1.5
    return (np.uint8(200), s[()], np.int32(-3), np.uint64(2**64 - 1), np.float32(0.25),
            np.int64(-(2**40)), np.bool_(True), np.float64(-2.5))


def _kernel(errors=()):
    drv = FakeDriver(errors)
    args = _args()
    drv.sizes = [a.dtype.itemsize for a in args]
    return _driver.DriverKernel(drv, 0x1234, "k<float>"), drv, args


def test_layout_aligns_each_argument_like_a_c_compiler():
    packer, offsets, voids = _driver._layout(_args())
    # uint8 at 0; struct (align 8, 32 bytes) at 8; int32 at 40; uint64 at 48; float32 at 56;
    # int64 at 64; bool at 72; float64 at 80
    assert offsets == (0, 8, 40, 48, 56, 64, 72, 80)
    assert voids == (0, 32, 0, 0, 0, 0, 0, 0) and packer.size == 88


def test_every_argument_reaches_the_driver_byte_for_byte():
    k, drv, args = _kernel()
    k((3,), (128,), args, 16, 0xBEEF)
    k((5, 2), (64, 2), args, 0, 0)
    (grid, block, shared, stream, values), second = drv.calls
    assert grid == (3, 1, 1) and block == (128, 1, 1) and shared == 16 and stream == 0xBEEF
    assert second[0] == (5, 2, 1) and second[1] == (64, 2, 1)
    assert values == [a.tobytes() for a in args]
    s = np.frombuffer(values[1], STRUCT)[0]
    assert s["p"][1] == 2**63 + 5 and s["n"] == -7 and s["x"] == 1.5


def test_the_buffer_is_rewritten_every_launch():
    k, drv, args = _kernel()
    k((1,), (32,), args, 0, 0)
    changed = list(args)
    changed[2] = np.int32(41)
    changed[1] = np.zeros((), STRUCT)[()]
    k((1,), (32,), tuple(changed), 0, 0)
    assert drv.calls[1][4] == [a.tobytes() for a in changed]


@pytest.mark.parametrize("bad, match", [
    (lambda a: a[:-1], "expected 8 arguments, got 7"),
    (lambda a: (a[0], np.zeros((), np.dtype([("a", np.int32)]))[()], *a[2:]), "struct of 32"),
    (lambda a: (a[0], a[1], a[2], np.float32(1.5), *a[4:]), "does not fit"),
    (lambda a: (a[0], a[1], np.int64(2**40), *a[3:]), "does not fit"),
])
def test_wrong_arguments_fail_before_the_driver_is_called(bad, match):
    k, drv, args = _kernel()
    k((1,), (32,), args, 0, 0)  # the layout comes from the first call
    with pytest.raises(TypeError, match=match):
        k((1,), (32,), tuple(bad(args)), 0, 0)
    assert len(drv.calls) == 1


def test_a_first_call_with_a_non_numpy_argument_is_refused():
    k, drv, args = _kernel()
    with pytest.raises(TypeError, match="argument 2: expected a NumPy scalar"):
        k((1,), (32,), (args[0], args[1], 3), 0, 0)
    assert drv.calls == []


def test_driver_errors_are_named_and_no_context_is_retried_once(monkeypatch):
    k, drv, args = _kernel(errors=[700])
    with pytest.raises(_driver.LaunchError, match=r"k<float>.*FAKE_ERROR \(700\)"):
        k((1,), (32,), args, 0, 0)
    made = []
    monkeypatch.setattr(_driver, "_make_context_current", lambda: made.append(1))
    k, drv, args = _kernel(errors=[_driver.CUDA_ERROR_INVALID_CONTEXT])
    k((1,), (32,), args, 0, 0)
    assert made == [1] and len(drv.calls) == 2  # retried once, then it worked


def test_load_honours_robocache_launch_cupy(monkeypatch):
    monkeypatch.setattr(_driver, "_loaded", [])
    monkeypatch.setenv("ROBOCACHE_LAUNCH", "cupy")
    assert _driver.load() is None
    monkeypatch.setattr(_driver, "_loaded", [])
    monkeypatch.delenv("ROBOCACHE_LAUNCH")
    monkeypatch.setattr(_driver, "_LIBS", ("libdoes-not-exist.so.9",))
    assert _driver.load() is None  # no libcuda: None, and the runtime keeps CuPy's path


# ---------------------------------------------------------------------------------------------
# the real ctypes call, into a stand-in libcuda built here

FAKE_LIBCUDA = r"""
#include <string.h>
int nsizes = 0, sizes[16], result = 0, calls = 0;
unsigned int dims[7];
void *function = 0, *stream = 0;
unsigned char got[8192];
int cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                   unsigned bz, unsigned shm, void* s, void** params, void** extra) {
    unsigned int d[7] = {gx, gy, gz, bx, by, bz, shm};
    memcpy(dims, d, sizeof d);
    function = f; stream = s; ++calls;
    int off = 0;
    for (int i = 0; i < nsizes; ++i) { memcpy(got + off, params[i], sizes[i]); off += sizes[i]; }
    return extra == 0 ? result : -1;
}
int cuGetErrorName(int code, const char** name) { *name = "CUDA_ERROR_STANDIN"; return 0; }
"""


@pytest.fixture
def fake_libcuda(tmp_path):
    import shutil
    import subprocess

    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("needs a C compiler for the stand-in libcuda")
    (tmp_path / "fake.c").write_text(FAKE_LIBCUDA)
    lib = tmp_path / "libfakecuda.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(tmp_path / "fake.c")],
                   check=True)
    return ctypes.CDLL(str(lib))


def test_the_ctypes_call_hands_the_driver_everything(fake_libcuda):
    drv = _driver.Driver(fake_libcuda)
    args = _args()
    sizes = [a.dtype.itemsize for a in args]
    ctypes.c_int.in_dll(fake_libcuda, "nsizes").value = len(sizes)
    (ctypes.c_int * 16).in_dll(fake_libcuda, "sizes")[:len(sizes)] = sizes
    k = _driver.DriverKernel(drv, 0xF00D, "k<float>")
    k((7, 3), (128,), args, 48, 0xBEEF)
    assert list((ctypes.c_uint * 7).in_dll(fake_libcuda, "dims")) == [7, 3, 1, 128, 1, 1, 48]
    assert ctypes.c_void_p.in_dll(fake_libcuda, "function").value == 0xF00D
    assert ctypes.c_void_p.in_dll(fake_libcuda, "stream").value == 0xBEEF
    got = bytes((ctypes.c_ubyte * sum(sizes)).in_dll(fake_libcuda, "got"))
    assert got == b"".join(a.tobytes() for a in args)
    ctypes.c_int.in_dll(fake_libcuda, "result").value = 719
    with pytest.raises(_driver.LaunchError, match=r"CUDA_ERROR_STANDIN \(719\)"):
        k((1,), (32,), args, 0, 0)
    assert ctypes.c_int.in_dll(fake_libcuda, "calls").value == 2


# ---------------------------------------------------------------------------------------------
# the runtime's driver path, with stand-ins for CuPy


class _Dev:
    def __init__(self, id):
        self.id = id


class _FakeCupyArray:
    __module__ = "cupy._fake"

    def __init__(self, dev):
        self.device = _Dev(dev)


def _fake_fns(current, entered):
    class Device:
        def __init__(self, dev):
            self.dev = dev

        def __enter__(self):
            entered.append(self.dev)

        def __exit__(self, *exc):
            return False

    return {"get_device": lambda: current, "Device": Device,
            "current_stream": lambda: type("S", (), {"ptr": 777})()}


def test_driver_launch_uses_cupys_stream_and_enters_other_devices(monkeypatch):
    entered, calls = [], []
    monkeypatch.setattr(_runtime, "_cupy_fns", _fake_fns(1, entered))
    module = _runtime.KernelModule("resample.cu", ("k<float>",))
    monkeypatch.setattr(_runtime, "_driver_kernels", {
        ("resample.cu", "k<float>", d): (module, lambda *a, d=d: calls.append((d, *a)))
        for d in (0, 1)})
    args = (np.int32(3),)
    _runtime._driver_launch(module, "k<float>", (2,), (32,), args, _FakeCupyArray(1), 0)
    assert calls == [(1, (2,), (32,), args, 0, 777)] and entered == []
    _runtime._driver_launch(module, "k<float>", (2,), (32,), args, _FakeCupyArray(0), 8)
    assert calls[-1] == (0, (2,), (32,), args, 8, 777) and entered == [0]


def test_without_a_driver_the_launch_goes_through_cupy(monkeypatch):
    monkeypatch.setattr(_runtime, "_cupy_fns", _fake_fns(0, []))
    monkeypatch.setattr(_runtime, "_driver_kernels", {})
    monkeypatch.setattr(_runtime, "_driver_kernel", lambda *a: None)
    through = []
    monkeypatch.setattr(_runtime, "_cupy_launch", lambda *a: through.append(a))
    module = _runtime.KernelModule("resample.cu", ("k<float>",))
    x = _FakeCupyArray(0)
    _runtime._driver_launch(module, "k<float>", (2,), (32,), (np.int32(1),), x, 0)
    assert through == [(module, "k<float>", (2,), (32,), (np.int32(1),), x, 0)]


# ---------------------------------------------------------------------------------------------
# on a GPU: both launch paths, same results


@pytest.mark.gpu
@pytest.mark.skipif(not _runtime.cuda_available(), reason="needs a CUDA GPU")
def test_gpu_driver_and_cupy_launches_give_the_same_results(monkeypatch):
    import torch

    import robocache as rc
    from robocache import _driver

    assert _driver.load() is not None, "libcuda should load where a GPU is usable"
    rng = np.random.default_rng(0)
    data = torch.from_numpy(rng.standard_normal((3, 40, 24)).astype(np.float32)).cuda()
    src = torch.from_numpy(np.sort(rng.random((3, 40)), axis=1).astype(np.float32)).cuda()
    tgt = torch.from_numpy(rng.random((3, 17)).astype(np.float32)).cuda()
    streams = [(data, src), (data[:, :7, :5].contiguous(), src[:, :7].contiguous())]
    frames = torch.randint(0, 255, (20, 12, 14, 3), dtype=torch.uint8).cuda()
    idx = torch.randint(0, 20, (6, 2)).cuda()

    def run():
        return (rc.resample(data, src, tgt), rc.fuse(streams, tgt),
                rc.crop_resize_normalize(frames, idx, crop=(8, 10), crop_mode="random", seed=4))

    assert _runtime._LAUNCHER is _runtime._driver_launch
    via_driver = run()
    assert _runtime._driver_kernels, "the driver path was not taken"
    monkeypatch.setattr(_runtime, "_LAUNCHER", _runtime._cupy_launch)
    via_cupy = run()
    for a, b in zip(via_driver, via_cupy, strict=True):
        assert torch.equal(a, b)
    want = rc.resample(data.cpu(), src.cpu(), tgt.cpu())
    torch.testing.assert_close(via_driver[0].cpu(), want, rtol=1e-5, atol=1e-6)
