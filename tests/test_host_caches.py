"""What the hot paths remember between calls, and that remembering changes no result or error.

- resample / fuse check each argument signature (library, shape, dtype, device) once: a later
  call with another signature is checked in full, and the time checks (values, not shapes) run
  on every call.
- crop_resize_normalize looks its plan up by plain argument values: lists and arrays take the
  converting path, an array is never remembered (it could change in place), True is not 1.
- the launch path (runtime._cupy_launch, zero_device) with stand-ins for CuPy: kernel handles
  cached per (module, name, device), the device context entered only when another device is
  current, memsets on the launch stream.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robocache as rc
from robocache import _array, _runtime
from robocache.ops import images
from robocache.ops import resample as R


def _series(rng, B=2, S=6, T=4, D=3, dtype=np.float32):
    src = np.sort(rng.random((B, S)), axis=1).astype(np.float32)
    tgt = np.sort(rng.random((B, T)), axis=1).astype(np.float32)
    return rng.standard_normal((B, S, D)).astype(dtype), src, tgt


@pytest.fixture(autouse=True)
def fresh_caches():
    R._CHECKED.clear()
    images._PLANS.clear()
    yield
    R._CHECKED.clear()
    images._PLANS.clear()


def test_resample_checks_each_signature_and_every_calls_times(rng):
    data, src, tgt = _series(rng)
    want = rc.resample(data, src, tgt)
    assert len(R._CHECKED) == 1
    np.testing.assert_array_equal(rc.resample(data, src, tgt), want)  # a hit: same result
    assert len(R._CHECKED) == 1
    bad = src.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="src_times: expected finite"):
        rc.resample(data, bad, tgt)  # same signature: the values are still checked
    dec = src[:, ::-1].copy()
    with pytest.raises(ValueError, match="non-decreasing"):
        rc.resample(data, dec, tgt)
    rc.resample(data, dec, tgt, check_times=False)  # ... unless the caller opts out
    with pytest.raises(TypeError, match="tgt_times"):  # another signature: checked in full
        rc.resample(data, src, tgt.astype(np.float64))
    with pytest.raises(ValueError, match="same device and library"):
        rc.resample(data, torch.from_numpy(src), tgt)
    with pytest.raises(ValueError, match="src_times"):
        rc.resample(data, src[:, :5], tgt)
    with pytest.raises(ValueError, match="method"):
        rc.resample(data, src, tgt, method="cubic")
    with pytest.raises(ValueError, match="method"):
        rc.resample(data, src, tgt, method=["linear"])  # unhashable: checked, not remembered
    assert len(R._CHECKED) == 1  # failed checks are never remembered
    got = rc.resample(data[0], src[0], tgt[0])  # 2-D: the squeeze is remembered as well
    np.testing.assert_array_equal(got, want[0])
    np.testing.assert_array_equal(rc.resample(data[0], src[0], tgt[0]), want[0])


def test_resample_cache_is_bounded(rng, monkeypatch):
    monkeypatch.setattr(R, "_MAX_CHECKED", 4)
    for S in range(2, 12):
        data, src, tgt = _series(rng, S=S)
        rc.resample(data, src, tgt)
        assert len(R._CHECKED) <= 4


def test_fuse_checks_each_signature_and_every_calls_times(rng):
    (d1, t1, tgt), (d2, t2, _) = _series(rng, D=2), _series(rng, S=9, D=4)
    want = rc.fuse([(d1, t1), (d2, t2)], tgt)
    assert len(R._CHECKED) == 1
    np.testing.assert_array_equal(rc.fuse([(d1, t1), (d2, t2)], tgt), want)
    np.testing.assert_array_equal(rc.fuse([[d1, t1], [d2, t2]], tgt), want)
    bad = t2.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"streams\[1\] times: expected finite"):
        rc.fuse([(d1, t1), (d2, bad)], tgt)
    badt = tgt.copy()
    badt[1, 1] = np.nan
    with pytest.raises(ValueError, match="tgt_times: expected finite"):
        rc.fuse([(d1, t1), (d2, t2)], badt)
    with pytest.raises(TypeError, match=r"streams\[1\] data"):
        rc.fuse([(d1, t1), (d2.astype(np.float64), t2)], tgt)
    with pytest.raises(ValueError, match=r"streams\[0\]: expected a \(data, times\) pair"):
        rc.fuse([(d1, t1, t1)], tgt)
    with pytest.raises(TypeError, match="expected a list .*got a generator"):
        rc.fuse(((d, t) for d, t in [(d1, t1)]), tgt)  # a generator is not consumed twice
    lists = rc.fuse([(d1.tolist(), t1.tolist())], tgt.tolist())  # lists: the full path
    np.testing.assert_allclose(lists, want[..., :2], rtol=1e-6)
    assert len(R._CHECKED) == 1


def test_plan_lookup_tells_values_and_types_apart():
    frames = np.random.default_rng(0).integers(0, 255, (4, 10, 12, 3), dtype=np.uint8)
    idx = np.array([[0, 1], [2, 3]])
    a = images.crop_resize_normalize(frames, idx, crop=8, shift=1, crop_mode="random")
    p1 = images._plan_for((10, 12, 3), crop=8, shift=1)
    assert images._plan_for((10, 12, 3), crop=8, shift=1) is p1  # remembered
    with pytest.raises(ValueError, match="shift"):
        images._plan_for((10, 12, 3), crop=8, shift=True)  # True is not 1
    b = images.crop_resize_normalize(frames, idx, crop=8, shift=1, crop_mode="random")
    np.testing.assert_array_equal(a, b)
    p_list = images._plan_for((10, 12, 3), mean=[0.1, 0.2, 0.3])
    assert p_list.mean == images._plan_for((10, 12, 3), mean=(0.1, 0.2, 0.3)).mean
    mean = np.array([0.1, 0.2, 0.3])
    first = images._plan_for((10, 12, 3), mean=mean)
    mean[0] = 0.5  # an array may change in place: never looked up by identity
    assert images._plan_for((10, 12, 3), mean=mean).mean[0] == pytest.approx(0.5)
    assert first.mean[0] == pytest.approx(0.1)
    assert images._plan_for((10, 12, 3), crop=(8, 8)) is not images._plan_for((10, 12, 3),
                                                                               crop=(6, 8))


# ---------------------------------------------------------------------------------------------
# the launch path with stand-ins for CuPy


class _FakeDevice:
    def __init__(self, id):
        self.id = id


class _FakeCupyArray:
    """What _cupy_launch / zero_device read from a CuPy array (library() goes by the module)."""

    __module__ = "cupy._fake"

    def __init__(self, dev, nbytes=64, contiguous=True):
        self.device = _FakeDevice(dev)
        self.nbytes = nbytes
        self.flags = type("F", (), {"c_contiguous": contiguous})()
        self.data = type("M", (), {"ptr": 0xABC000})()
        self.filled = None

    def fill(self, v):
        self.filled = v


class _FakeCupy:
    def __init__(self, current=0):
        self.current = current
        self.entered, self.memsets = [], []

    def bind(self):
        fake = self

        class Device:
            def __init__(self, dev):
                self.dev = dev

            def __enter__(self):
                fake.entered.append(self.dev)

            def __exit__(self, *exc):
                return False

        return {"get_device": lambda: fake.current, "Device": Device,
                "current_stream": lambda: type("S", (), {"ptr": 777})(),
                "memset_async": lambda *a: fake.memsets.append(a)}


def test_cupy_launch_uses_cached_handles_and_enters_other_devices(monkeypatch):
    fake = _FakeCupy(current=1)
    monkeypatch.setattr(_runtime, "_cupy_fns", fake.bind())
    calls = []
    module = _runtime.KernelModule("resample.cu", ("k<float>",))
    monkeypatch.setattr(_runtime, "_handles", {
        ("resample.cu", "k<float>", d): (module, lambda *a, d=d: calls.append((d, *a)))
        for d in (0, 1)})
    args = (np.int32(3),)
    _runtime._cupy_launch(module, "k<float>", (2,), (32,), args, _FakeCupyArray(1), 0)
    assert calls == [(1, (2,), (32,), args, 0, None)] and fake.entered == []  # CuPy's stream
    _runtime._cupy_launch(module, "k<float>", (2,), (32,), args, _FakeCupyArray(0), 16)
    assert calls[-1] == (0, (2,), (32,), args, 16, None) and fake.entered == [0]
    # an equal module that is another object is looked up through get_function
    looked = []
    monkeypatch.setattr(_runtime, "get_function", lambda *a: looked.append(a) or object())
    other = _runtime.KernelModule("resample.cu", ("k<float>",))
    assert _runtime._handle(other, "k<float>", 1) is _runtime._handles[
        ("resample.cu", "k<float>", 1)][1]
    assert looked == []  # equal modules share the handle


def test_zero_device_is_one_memset_on_the_current_stream(monkeypatch):
    fake = _FakeCupy(current=0)
    monkeypatch.setattr(_runtime, "_cupy_fns", fake.bind())
    x = _FakeCupyArray(0, nbytes=96)
    assert _array.zero_(x) is x
    assert fake.memsets == [(0xABC000, 0, 96, 777)] and x.filled is None
    other = _FakeCupyArray(1)  # another device than the current one: CuPy's own fill, there
    _array.zero_(other)
    assert other.filled == 0 and len(fake.memsets) == 1 and fake.entered == [1]
    strided = _FakeCupyArray(0, contiguous=False)
    _array.zero_(strided)
    assert strided.filled == 0 and len(fake.memsets) == 1
    empty = _FakeCupyArray(0, nbytes=0)
    _array.zero_(empty)
    assert empty.filled is None and len(fake.memsets) == 1
    host = np.ones(5)
    assert (_array.zero_(host) == 0).all() and len(fake.memsets) == 1


def test_stream_key_of_host_arrays_is_zero():
    assert _runtime.stream_key(np.zeros(1)) == 0
    assert _runtime.stream_key(torch.zeros(1)) == 0
    assert _runtime.stream_query(torch.zeros(1))() == 0
