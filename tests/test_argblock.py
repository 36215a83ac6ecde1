"""ArgBlock: the hot paths' by-value kernel argument structs, refilled per call."""

from __future__ import annotations

import copy
import pickle
import threading

import numpy as np
import pytest

from robocache._argblock import ArgBlock

DT = np.dtype({"names": ["p", "q", "arr", "r", "n", "m"],
               "formats": [np.uint64, np.uint64, (np.uint64, 4), np.uint64, np.int32, np.int32]},
              align=True)


def test_addresses_land_in_their_fields_and_fixed_fields_stay():
    blk = ArgBlock(DT, ("p", ("arr", 1), ("arr", 2), "r"), n=7, m=-3)
    v = blk.pack(11, 22, 33, 2**64 - 1).view
    assert isinstance(v, np.void) and v.dtype == DT
    assert (int(v["p"]), int(v["q"]), list(map(int, v["arr"])), int(v["r"])) == \
        (11, 0, [0, 22, 33, 0], 2**64 - 1)
    assert (int(v["n"]), int(v["m"])) == (7, -3)
    w = blk.pack(1, 2, 3, 4).view  # refilled in place: the same view, new bytes
    assert w is v and int(v["p"]) == 1 and list(map(int, v["arr"])) == [0, 2, 3, 0]
    assert int(v["n"]) == 7


def test_each_thread_gets_its_own_buffer():
    blk = ArgBlock(DT, ("p",))
    mine = blk.pack(5).view
    seen = {}

    def other():
        v = blk.pack(9).view
        seen["v"], seen["p"] = v, int(v["p"])

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen["p"] == 9 and seen["v"] is not mine and int(mine["p"]) == 5


def test_bad_layouts_are_refused():
    with pytest.raises(ValueError, match="fixed field"):
        ArgBlock(DT, ("p", "r"), q=1)  # q lies between p and r: the pack would zero it
    with pytest.raises(ValueError, match="order"):
        ArgBlock(DT, ("q", "p"))
    with pytest.raises(ValueError, match="order"):
        ArgBlock(DT, ("p", "p"))
    with pytest.raises(IndexError, match=r"\[0, 4\), got 4"):
        ArgBlock(DT, (("arr", 4),))
    odd = np.dtype([("h", np.float16), ("b", np.uint8)])
    for name in ("h", "b"):
        with pytest.raises(TypeError, match=f"per-call field '{name}': expected one of"):
            ArgBlock(odd, (name,))
    with pytest.raises(ValueError, match="order"):  # the same field twice
        ArgBlock(np.dtype([("a", np.uint64), ("x", np.int32), ("y", np.int32)]), ("a", "a"))


def test_per_call_fields_of_every_type_pack_at_their_offsets():
    """Ints and floats of 32 and 64 bits packed in one call, with the padding between them
    left zero and a fixed field after the last one kept."""
    dt = np.dtype({"names": ["p", "n", "b", "f", "d", "i", "u", "q", "tail"],
                   "formats": [np.uint64, np.int64, np.int32, np.float32, np.float64, np.int32,
                               np.uint32, np.int64, np.int32]}, align=True)
    blk = ArgBlock(dt, ("p", "n", "b", "f", "d", "i", "u", "q"), tail=77)
    v = blk.pack(2**63 + 5, -(2**40), -7, 1.5, -2.25, 2**31 - 1, 2**32 - 1, 9).view
    assert (int(v["p"]), int(v["n"]), int(v["b"]), float(v["f"]), float(v["d"]),
            int(v["i"]), int(v["u"]), int(v["q"]), int(v["tail"])) == \
        (2**63 + 5, -(2**40), -7, 1.5, -2.25, 2**31 - 1, 2**32 - 1, 9, 77)
    raw = bytes(blk.slot().buf)
    ref = np.zeros((), dt)
    for name, value in zip(dt.names, (2**63 + 5, -(2**40), -7, 1.5, -2.25, 2**31 - 1,
                                      2**32 - 1, 9, 77), strict=True):
        ref[name] = value
    assert raw == ref.tobytes()  # the same bytes NumPy lays out, pads included


def test_pickles_and_copies_without_its_buffers():
    """A plan holding an ArgBlock travels with a dataset to worker processes (pickle) or is
    deep-copied: the copy packs the same bytes from buffers of its own."""
    blk = ArgBlock(DT, ("p", "r"), n=4)
    before = blk.pack(1, 2).view.tobytes()
    for twin in (pickle.loads(pickle.dumps(blk)), copy.deepcopy(blk)):
        v = twin.pack(1, 2).view
        assert v.tobytes() == before and v is not blk.pack(1, 2).view


def test_slot_params_point_at_the_packed_bytes():
    """cuLaunchKernel's kernelParams: a void* array whose one entry is the struct's address."""
    import ctypes

    blk = ArgBlock(DT, ("p", "r"), n=9)
    slot = blk.pack(0x1234, 0x5678)
    assert slot is blk.slot() and slot.view is blk.pack(0x1234, 0x5678).view
    at = ctypes.c_void_p.from_address(slot.params).value
    assert ctypes.string_at(at, DT.itemsize) == slot.view.tobytes() == bytes(slot.buf)
    assert int(slot.view["p"]) == 0x1234 and int(slot.view["n"]) == 9


def test_launch_block_routes_to_the_driver_only_in_place_of_cupy(monkeypatch):
    """ROBOCACHE_LAUNCHER=driver sends ArgBlock launches to cuLaunchKernel with the slot's
    parameter pointer - but never when a test launcher (emulator, no-op) replaced CuPy's."""
    from robocache import _kernels, _runtime

    blk = ArgBlock(DT, ("p",))
    slot = blk.pack(1)
    driver, cupy_calls = [], []
    monkeypatch.setattr(_runtime, "_driver_launch",
                        lambda m, n, g, b, slot, like: driver.append(slot.params))
    monkeypatch.setattr(_runtime, "_cupy_launch",
                        lambda m, n, g, b, args, like, shm: cupy_calls.append(args))
    monkeypatch.setattr(_runtime, "_LAUNCHER", _runtime._cupy_launch)
    for use_driver in (False, True):
        monkeypatch.setattr(_runtime, "_USE_DRIVER", use_driver)
        _runtime.launch_block(_kernels.RESAMPLE, "k", (1,), (32,), slot, None)
    assert driver == [slot.params] and len(cupy_calls) == 1 and cupy_calls[0][0] is slot.view
    other = []
    monkeypatch.setattr(_runtime, "_LAUNCHER", lambda *a: other.append(a))
    _runtime.launch_block(_kernels.RESAMPLE, "k", (1,), (32,), slot, None)
    assert len(other) == 1 and other[0][4] == (slot.view,) and driver == [slot.params]


def test_driver_launch_arguments_and_context_fallback(monkeypatch):
    """_driver_launch on fakes of cuda-python and CuPy: grid and block padded to 3-D, the
    caller's stream, the slot's parameter pointer, one kernel handle per (kernel, device); a
    thread without a current context (CUDA_ERROR_INVALID_CONTEXT) goes through CuPy instead,
    any other error raises."""
    from robocache import _array, _kernels, _runtime

    calls, handles, fallback = [], [], []
    result = {"err": 0}

    class Fn:
        ptr = 0xBEEF

    def fake_launch(fn, gx, gy, gz, bx, by, bz, shm, stream, params, extra):
        calls.append((fn, (gx, gy, gz), (bx, by, bz), shm, stream, params, extra))
        return (result["err"],)

    monkeypatch.setattr(_runtime, "_driver_api",
                        [fake_launch, lambda ptr: handles.append(ptr) or ("fn", ptr)])
    monkeypatch.setattr(_runtime, "_driver_functions", {})
    monkeypatch.setattr(_runtime, "_cupy_fns", {"get_device": lambda: 0, "Device": None,
                                                "current_stream": None})
    monkeypatch.setattr(_runtime, "_torch_raw_stream", lambda dev: 77)
    monkeypatch.setattr(_runtime, "_handle", lambda module, name, dev: Fn())
    monkeypatch.setattr(_runtime, "_cupy_launch", lambda *a: fallback.append(a))

    class Like:  # a torch tensor on device 0 as far as the launcher looks
        def get_device(self):
            return 0

    monkeypatch.setitem(_array._LIBRARY_OF_TYPE, Like, "torch")
    slot = ArgBlock(DT, ("p",)).pack(5)
    for _ in range(2):
        _runtime._driver_launch(_kernels.RESAMPLE, "k", (7,), (256,), slot, Like())
    assert calls == [(("fn", 0xBEEF), (7, 1, 1), (256, 1, 1), 0, 77, slot.params, 0)] * 2
    assert handles == [0xBEEF] and not fallback  # the handle made once
    result["err"] = _runtime._CUDA_ERROR_INVALID_CONTEXT
    _runtime._driver_launch(_kernels.RESAMPLE, "k", (7, 2), (256,), slot, Like())
    assert calls[-1][1] == (7, 2, 1) and len(fallback) == 1 and fallback[0][4] == (slot.view,)
    result["err"] = 1
    with pytest.raises(RuntimeError, match="cuLaunchKernel of k"):
        _runtime._driver_launch(_kernels.RESAMPLE, "k", (7,), (256,), slot, Like())


@pytest.mark.parametrize("installed", [True, False])
def test_auto_launcher_is_the_driver_exactly_when_cuda_bindings_import(monkeypatch, installed):
    """ROBOCACHE_LAUNCHER unset ("auto"): decided on the first launch, once - the driver launcher
    where cuda-python's driver bindings import, CuPy's where they do not."""
    import sys
    import types

    from robocache import _kernels, _runtime

    if installed:
        fake = types.ModuleType("cuda.bindings")
        fake.driver = types.ModuleType("cuda.bindings.driver")
        monkeypatch.setitem(sys.modules, "cuda.bindings", fake)
        monkeypatch.setitem(sys.modules, "cuda.bindings.driver", fake.driver)
    else:
        monkeypatch.setitem(sys.modules, "cuda.bindings", None)  # import raises ImportError
    monkeypatch.setattr(_runtime, "_launcher_env", "auto")
    monkeypatch.setattr(_runtime, "_USE_DRIVER", None)
    driver, cupy_calls = [], []
    monkeypatch.setattr(_runtime, "_driver_launch", lambda *a: driver.append(a))
    monkeypatch.setattr(_runtime, "_cupy_launch", lambda *a: cupy_calls.append(a))
    monkeypatch.setattr(_runtime, "_LAUNCHER", _runtime._cupy_launch)
    slot = ArgBlock(DT, ("p",)).pack(3)
    for _ in range(2):
        _runtime.launch_block(_kernels.RESAMPLE, "k", (1,), (32,), slot, None)
    assert _runtime._USE_DRIVER is installed
    assert (len(driver), len(cupy_calls)) == ((2, 0) if installed else (0, 2))
    assert _runtime.launcher_name() == ("driver" if installed else "cupy")


def test_unknown_launcher_setting_is_named(monkeypatch):
    from robocache import _kernels, _runtime

    monkeypatch.setattr(_runtime, "_launcher_env", "fastest")
    monkeypatch.setattr(_runtime, "_USE_DRIVER", None)
    slot = ArgBlock(DT, ("p",)).pack(3)
    with pytest.raises(ValueError, match=r"ROBOCACHE_LAUNCHER: expected one of auto, driver, "
                                         r"cupy, got 'fastest'"):
        _runtime.launch_block(_kernels.RESAMPLE, "k", (1,), (32,), slot, None)


def test_driver_launch_rebinds_a_rebuilt_module(monkeypatch):
    """Two builds of one source (other -D options, as the resample sweep makes) get their own
    kernel handles: the cache keyed by source and name checks the module too."""
    from robocache import _runtime
    from robocache._runtime import KernelModule

    handles = []
    launched = []

    class Fn:
        def __init__(self, ptr):
            self.ptr = ptr

    m1 = KernelModule("resample.cu", ("k",))
    m2 = KernelModule("resample.cu", ("k",), ("-std=c++17", "-DRC_RESAMPLE_ROWS=8"))
    monkeypatch.setattr(_runtime, "_driver_api",
                        [lambda fn, *a: launched.append(fn) or (0,), lambda p: ("fn", p)])
    monkeypatch.setattr(_runtime, "_driver_functions", {})
    monkeypatch.setattr(_runtime, "_cupy_fns", {"get_device": lambda: 0, "Device": None,
                                                "current_stream": lambda: Fn(5)})
    monkeypatch.setattr(_runtime, "_handle",
                        lambda module, name, dev: handles.append(module) or Fn(id(module)))

    class Like:  # a CuPy array on device 0 as far as the launcher looks
        class device:
            id = 0

    from robocache import _array

    monkeypatch.setitem(_array._LIBRARY_OF_TYPE, Like, "cupy")
    slot = ArgBlock(DT, ("p",)).pack(5)
    for m in (m1, m1, m2, m2, m1):
        _runtime._driver_launch(m, "k", (1,), (32,), slot, Like())
    assert launched == [("fn", id(m)) for m in (m1, m1, m2, m2, m1)]
    assert handles == [m1, m2, m1]
