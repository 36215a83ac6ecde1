"""resample / fuse: the device hot path (a repeated signature launches with no re-checking of
shapes) and `out=`, run on the CPU: the kernel emulator executes the launches and torch CPU
tensors stand in for CUDA tensors. Results are compared with the NumPy backend; bad `out`
arguments fail before any launch; time values are still checked on every call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robocache as rc
from robocache import _array
from robocache.ops import resample as R


@pytest.fixture
def device_standin(emulated_cuda, monkeypatch):
    """torch CPU tensors take the CUDA paths (launches run in the emulator)."""
    real = _array.is_device
    monkeypatch.setattr(_array, "is_device", lambda x: isinstance(x, torch.Tensor) or real(x))
    monkeypatch.setattr(_array, "device_key", _array.device_key_with_host_standins)
    R._HOT.clear()
    R._CHECKED.clear()
    yield emulated_cuda
    R._HOT.clear()
    R._CHECKED.clear()


def _series(seed=0, B=3, S=9, T=5, D=4):
    rng = np.random.default_rng(seed)
    src = np.sort(rng.random((B, S)), axis=1).astype(np.float32)
    tgt = rng.random((B, T)).astype(np.float32)
    data = rng.standard_normal((B, S, D)).astype(np.float32)
    return torch.from_numpy(data), torch.from_numpy(src), torch.from_numpy(tgt)


def _reference(data, src, tgt, method="linear"):
    return torch.from_numpy(R._resample_numpy(data.numpy(), src.numpy(), tgt.numpy(),
                                              R.METHODS[method]).astype(np.float32))


@pytest.mark.parametrize("method", list(R.METHODS))
def test_a_repeated_signature_takes_the_hot_path_and_gives_the_same_result(device_standin,
                                                                          method):
    launches = device_standin
    data, src, tgt = _series()
    first = rc.resample(data, src, tgt, method)
    assert len(R._HOT) == 1 and len(launches) == 1
    data2, src2, tgt2 = _series(seed=1)  # same signature, other values
    second = rc.resample(data2, src2, tgt2, method)
    assert len(R._HOT) == 1 and len(launches) == 2
    torch.testing.assert_close(first, _reference(data, src, tgt, method), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(second, _reference(data2, src2, tgt2, method), rtol=1e-6,
                               atol=1e-6)
    rc.resample(*_series(B=2), method)  # another signature: its own entry
    assert len(R._HOT) == 2


def test_the_hot_path_still_checks_time_values(device_standin):
    data, src, tgt = _series()
    rc.resample(data, src, tgt)
    bad = src.clone()
    bad[0, 3] = float("nan")
    with pytest.raises(ValueError, match="src_times: expected finite"):
        rc.resample(data, bad, tgt)
    with pytest.raises(ValueError, match="non-decreasing"):
        rc.resample(data, src.flip(1).contiguous(), tgt)
    bad_tgt = tgt.clone()
    bad_tgt[1, 1] = float("inf")
    with pytest.raises(ValueError, match="tgt_times"):
        rc.resample(data, src, bad_tgt)


def test_non_contiguous_inputs_are_never_remembered_and_stay_right(device_standin):
    data, src, tgt = _series(D=6)
    view = data[:, :, ::2]
    got = rc.resample(view, src, tgt)
    assert R._HOT == {}
    torch.testing.assert_close(got, _reference(view.contiguous(), src, tgt), rtol=1e-6,
                               atol=1e-6)


def test_2d_inputs_on_the_hot_path(device_standin):
    data, src, tgt = _series(B=1)
    for _ in range(2):
        got = rc.resample(data[0], src[0], tgt[0])
        assert got.shape == (5, 4)
        torch.testing.assert_close(got, _reference(data, src, tgt)[0], rtol=1e-6, atol=1e-6)
    assert len(R._HOT) == 1


def test_2d_fuse_on_the_hot_path(device_standin):
    # the entry is keyed by the caller's (unbatched) arrays, so the next call finds it
    launches = device_standin
    d1, s1, tgt = _series(B=1, S=9, D=4)
    d2, s2, _ = _series(seed=2, B=1, S=13, D=3)
    streams = [(d1[0], s1[0]), (d2[0], s2[0])]
    want = torch.cat([_reference(d1, s1, tgt), _reference(d2, s2, tgt)], dim=-1)[0]
    for _ in range(2):
        got = rc.fuse(streams, tgt[0])
        assert got.shape == (5, 7)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert list(R._HOT) == [R._fuse_key(streams, tgt[0], "linear", _array.device_key)]
    assert len(launches) == 2


def test_out_is_written_and_returned(device_standin, monkeypatch):
    data, src, tgt = _series()
    full_checks = []
    real = R.V.check_out
    monkeypatch.setattr(R.V, "check_out", lambda *a: full_checks.append(1) or real(*a))
    for _ in range(3):  # the general path, then the hot path
        out = torch.full((3, 5, 4), 7.0)
        got = rc.resample(data, src, tgt, out=out)
        assert got is out
        torch.testing.assert_close(out, _reference(data, src, tgt), rtol=1e-6, atol=1e-6)
    assert full_checks == []  # a fitting `out` matched the remembered key: no full check


@pytest.mark.parametrize("make_out, exc, match", [
    (lambda d: torch.empty(3, 5, 5), ValueError, r"out: expected shape \(3, 5, 4\)"),
    (lambda d: torch.empty(3, 5, 4, dtype=torch.float64), TypeError, "out: expected dtype float32"),
    (lambda d: torch.empty(3, 4, 5).transpose(1, 2), ValueError, "out: expected a C-contiguous"),
    (lambda d: np.empty((3, 5, 4), np.float32), ValueError, "out: expected an array on the inputs"),
    (lambda d: [0.0], TypeError, "out: expected an array"),
    (lambda d: d.view(-1)[:60].view(3, 5, 4), ValueError, "overlaps none of the inputs"),
])
def test_a_bad_out_fails_before_any_launch(device_standin, make_out, exc, match):
    launches = device_standin
    data, src, tgt = _series(S=20)
    for _attempt in range(2):  # before and after the signature is remembered
        n = len(launches)
        with pytest.raises(exc, match=match):
            rc.resample(data, src, tgt, out=make_out(data))
        assert len(launches) == n
        rc.resample(data, src, tgt)


def test_fuse_hot_path_and_out(device_standin):
    launches = device_standin
    d1, s1, tgt = _series(S=9, D=4)
    d2, s2, _ = _series(seed=2, S=13, D=3)
    streams = [(d1, s1), (d2, s2)]
    want = torch.cat([_reference(d1, s1, tgt), _reference(d2, s2, tgt)], dim=-1)
    first = rc.fuse(streams, tgt)
    second = rc.fuse(streams, tgt)
    assert len(R._HOT) == 1 and len(launches) == 2
    for got in (first, second):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    out = torch.zeros(3, 5, 7)
    assert rc.fuse(streams, tgt, out=out) is out
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
    n = len(launches)
    with pytest.raises(ValueError, match="overlaps none"):
        rc.fuse(streams, tgt, out=d1.view(-1)[:105].view(3, 5, 7))
    with pytest.raises(ValueError, match=r"out: expected shape \(3, 5, 7\)"):
        rc.fuse(streams, tgt, out=torch.zeros(3, 5, 4))
    assert len(launches) == n
    bad = s2.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"streams\[1\] times"):
        rc.fuse([(d1, s1), (d2, bad)], tgt)


def test_numpy_backend_out():
    data, src, tgt = (x.numpy() for x in _series())
    out = np.zeros((3, 5, 4), np.float32)
    assert rc.resample(data, src, tgt, out=out) is out
    np.testing.assert_allclose(out, rc.resample(data, src, tgt), rtol=0, atol=0)
    with pytest.raises(ValueError, match="overlaps none"):
        rc.resample(data, src, tgt, out=data.reshape(-1)[:60].reshape(3, 5, 4))
    with pytest.raises(TypeError, match="out: expected dtype float32"):
        rc.resample(data, src, tgt, out=np.zeros((3, 5, 4)))
    fout = np.zeros((3, 5, 8), np.float32)
    assert rc.fuse([(data, src), (data, src)], tgt, out=fout) is fout
    np.testing.assert_array_equal(fout[..., :4], out)
    np.testing.assert_array_equal(fout[..., 4:], out)
