"""TrajectoryStore and per-feature statistics (NumPy backend; torch CPU tensors for the torch path
of the statistics)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import robocache as rc
from robocache import _errors
from robocache import stats as S
from robocache import store as store_mod


def _episodes(rng, n_eps=6, max_len=12):
    lens = rng.integers(1, max_len, size=n_eps)
    return np.cumsum(lens).astype(np.int64)


def test_from_arrays_properties_and_getitem():
    rng = np.random.default_rng(0)
    ends = _episodes(rng)
    N = int(ends[-1])
    arrays = {
        "state": rng.standard_normal((N, 5)).astype(np.float32),
        "grid": rng.integers(0, 9, size=(N, 2, 3)).astype(np.int16),
        "cam": rng.integers(0, 256, size=(N, 4, 5, 3)).astype(np.uint8),
        "done": rng.random(N) < 0.1,
    }
    ts = np.concatenate([np.arange(n) / 10.0 for n in np.diff(ends, prepend=0)])
    st = rc.TrajectoryStore.from_arrays(arrays, episode_ends=ends, fps=10, timestamps=ts,
                                        device="cpu")
    assert st.keys == tuple(arrays)
    assert st.num_frames == N and len(st) == N
    assert st.num_episodes == ends.size
    np.testing.assert_array_equal(st.episode_ends, ends)
    np.testing.assert_array_equal(st.episode_starts, np.concatenate([[0], ends[:-1]]))
    np.testing.assert_array_equal(st.episode_lengths, np.diff(ends, prepend=0))
    assert st.fps == 10.0 and st.device == "cpu" and not st.is_cuda
    assert st.image_keys == ("cam",)
    for k, v in arrays.items():
        np.testing.assert_array_equal(st[k], v)
        assert st[k].dtype == v.dtype
    np.testing.assert_array_equal(st.timestamps, ts)
    assert st.nbytes == sum(v.nbytes for v in arrays.values()) + ts.nbytes
    assert st.to("cpu") is st
    assert "state" in st and "nope" not in st
    with pytest.raises(KeyError, match="nope"):
        st["nope"]
    assert "TrajectoryStore" in repr(st)


def test_from_arrays_accepts_torch_and_bf16_and_lists():
    torch = pytest.importorskip("torch")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = torch.randn(7, 3).to(torch.bfloat16)
    st = rc.TrajectoryStore.from_arrays({"x": x, "y": torch.arange(7)}, episode_ends=[3, 7],
                                        device="cpu")
    assert st["x"].dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(st["x"].astype(np.float32), x.float().numpy())
    np.testing.assert_array_equal(st["y"], np.arange(7))


def test_from_source_carries_fps_timestamps_stats_and_images():
    rng = np.random.default_rng(1)
    N = 9
    src = rc.formats.TrajectorySource(
        arrays={"a": rng.standard_normal((N, 2)), "img": np.zeros((N, 2, 2, 3), np.uint8)},
        episode_ends=np.array([4, 9]), fps=5.0, timestamps=np.arange(N) / 5.0,
        stats={"a": {"mean": [1.0, 2.0], "std": [3.0, 4.0]}}, image_keys=("img",),
        meta={"robot": "x"})
    st = rc.TrajectoryStore.from_source(src, device="cpu", progress=False)
    assert st.fps == 5.0 and st.image_keys == ("img",) and st.meta == {"robot": "x"}
    np.testing.assert_array_equal(st.shipped_stats["a"]["std"], [3.0, 4.0])
    np.testing.assert_array_equal(st.timestamps, np.arange(N) / 5.0)


@pytest.mark.parametrize("ends, match", [
    ([3, 3, 9], "strictly increasing"),
    ([5, 4, 9], "strictly increasing"),
    ([3, 8], "last end to equal the number of frames \\(9\\)"),
    ([3, 10], "last end to equal"),
    ([0, 9], "first end >= 1"),
    ([], "at least one episode"),
    ([[3, 9]], "1-D"),
])
def test_bad_episode_ends(ends, match):
    with pytest.raises(ValueError, match=match):
        rc.TrajectoryStore.from_arrays({"a": np.zeros((9, 2))}, episode_ends=ends, device="cpu")


def test_bad_inputs():
    a = np.zeros((9, 2), np.float32)
    mk = rc.TrajectoryStore.from_arrays
    with pytest.raises(ValueError, match="empty store"):
        mk({}, episode_ends=[9], device="cpu")
    with pytest.raises(ValueError, match="N = 0"):
        mk({"a": np.zeros((0, 2))}, episode_ends=[1], device="cpu")
    with pytest.raises(TypeError, match="episode_ends: expected an integer array"):
        mk({"a": a}, episode_ends=np.array([3.0, 9.0]), device="cpu")
    with pytest.raises(ValueError, match=r"arrays\['b'\]: expected 9 frames"):
        mk({"a": a, "b": np.zeros((8, 2))}, episode_ends=[9], device="cpu")
    with pytest.raises(TypeError, match="numeric dtype"):
        mk({"a": np.array(["x"] * 9)}, episode_ends=[9], device="cpu")
    with pytest.raises(TypeError, match=r"arrays\['a'\]: expected a NumPy array"):
        mk({"a": "nope"}, episode_ends=[9], device="cpu")
    with pytest.raises(ValueError, match="fps: expected a positive finite number"):
        mk({"a": a}, episode_ends=[9], fps=0, device="cpu")
    with pytest.raises(ValueError, match="fps"):
        mk({"a": a}, episode_ends=[9], fps=float("nan"), device="cpu")
    with pytest.raises(ValueError, match=r"timestamps: expected shape \(9,\)"):
        mk({"a": a}, episode_ends=[9], timestamps=np.zeros(8), device="cpu")
    with pytest.raises(ValueError, match="finite"):
        mk({"a": a}, episode_ends=[9], timestamps=np.full(9, np.nan), device="cpu")
    with pytest.raises(ValueError, match="device"):
        mk({"a": a}, episode_ends=[9], device="tpu")
    with pytest.raises(ValueError, match="image_keys"):
        mk({"a": a}, episode_ends=[9], image_keys=["cam"], device="cpu")
    with pytest.raises(ValueError, match=r"stats: expected keys of arrays \['a'\].*\['aa'\]"):
        mk({"a": a}, episode_ends=[9], stats={"aa": {"mean": [0, 0]}}, device="cpu")
    for stats in ("a", [1]):
        with pytest.raises(TypeError, match="stats: expected a dict of key -> {stat: array}, "
                                            f"got {type(stats).__name__}"):
            mk({"a": a}, episode_ends=[9], stats=stats, device="cpu")
    with pytest.raises(ValueError, match=r"arrays\['r'\]: expected a rectangular nested list"):
        mk({"r": [[1, 2], [3]]}, episode_ends=[2], device="cpu")
    assert mk({"a": a}, episode_ends=[9], stats={"timestamp": {"mean": [0.0]}},
              device="cpu").shipped_stats["timestamp"]["mean"].tolist() == [0.0]


def test_image_keys_are_uint8_frames_named_or_detected():
    """image_keys: None detects uint8 frames [N, H, W(, C)], [] turns detection off, one name is
    one key; a named key that is not uint8 frames is refused (the image kernel reads bytes)."""
    grid = np.zeros((4, 3, 2), np.uint8)
    mk = rc.TrajectoryStore.from_arrays
    assert mk({"grid": grid}, [4], device="cpu").image_keys == ("grid",)
    off = mk({"grid": grid}, [4], device="cpu", image_keys=[])
    assert off.image_keys == ()
    ds = rc.TrajectoryDataset(off, normalize={"grid": "min_max"})  # an ordinary key now
    assert ds[0]["grid"].shape == (3, 2)
    assert mk({"grid": grid, "g2": grid}, [4], device="cpu", image_keys="grid").image_keys == \
        ("grid",)
    for bad in (np.zeros((4, 8, 8, 1), np.float32), np.zeros((4, 8), np.uint8),
                np.zeros((4, 2, 4, 4, 3), np.uint8), np.zeros((4, 8, 8, 7), np.uint8)):
        with pytest.raises(TypeError, match="image_keys: expected camera frames, uint8"):
            mk({"depth": bad}, [4], image_keys=["depth"], device="cpu")
    with pytest.raises(TypeError, match="image_keys: expected None, a key name"):
        mk({"grid": grid}, [4], image_keys=3, device="cpu")
    # what the image kernel takes is detected: [N, H, W] and [N, H, W, C] with C = 1, 3, 4
    shapes = {"grey": (4, 3, 2), "c1": (4, 3, 2, 1), "rgb": (4, 3, 2, 3), "rgba": (4, 3, 2, 4),
              "c7": (4, 3, 2, 7), "stack": (4, 2, 3, 2, 3), "chw": (4, 3, 8, 8)}
    st = mk({k: np.zeros(v, np.uint8) for k, v in shapes.items()}, [4], device="cpu")
    assert st.image_keys == ("grey", "c1", "rgb", "rgba")


def test_progress_is_checked_on_every_device():
    """progress= takes None, True, False or a bar, also for a CPU store (which draws none)."""
    a = {"a": np.zeros((3, 2), np.float32)}
    for bad in ("yes", 1, object()):
        with pytest.raises(TypeError, match="progress: expected None, True, False or a bar"):
            rc.TrajectoryStore.from_arrays(a, [3], device="cpu", progress=bad)
    for good in (None, True, False):
        rc.TrajectoryStore.from_arrays(a, [3], device="cpu", progress=good)


def test_arrays_in_another_byte_order_are_read_natively(tmp_path):
    """Big-endian arrays (an HDF5 or zarr file written so) are stored in native order: batches,
    torch and the kernels see the right values; a cache written from them loads the same."""
    x = np.arange(10, dtype=">f4")[:, None] * 1.5
    i = np.arange(10, dtype=">i4")
    st = rc.TrajectoryStore.from_arrays({"x": x, "i": i}, [4, 10], device="cpu")
    assert st["x"].dtype.isnative and st["i"].dtype == np.int32
    ds = rc.TrajectoryDataset(st, delta_indices={"x": [-1, 0]}, dtype="keep")
    b = ds.get_batch(range(len(ds)))
    np.testing.assert_array_equal(b["i"].numpy(), np.arange(10))
    np.testing.assert_array_equal(b["x"].numpy()[:, 1, 0], np.arange(10) * 1.5)
    st.save(tmp_path / "c")
    rc.formats.write_cache(tmp_path / "be", {"x": x, "i": i}, episode_ends=[4, 10])
    for d in ("c", "be"):
        back = rc.TrajectoryStore.load(tmp_path / d, device="cpu")
        np.testing.assert_array_equal(back["i"], np.arange(10))
        assert back["i"].dtype.isnative


def test_cuda_without_gpu_is_a_clear_error(monkeypatch):
    if rc.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(rc.BackendUnavailableError):
        rc.TrajectoryStore.from_arrays({"a": np.zeros((4, 2))}, episode_ends=[4],
                                       device="cuda")
    assert store_mod.resolve_device(None) == "cpu"


def test_store_larger_than_free_memory_fails_before_allocating(monkeypatch):
    """The free-memory check runs before any device allocation and names bytes needed / free."""
    monkeypatch.setattr(store_mod, "_require_device", lambda device: None)
    monkeypatch.setattr(store_mod, "_free_bytes", lambda device: 1000)

    def no_upload(*a, **k):
        raise AssertionError("allocated before checking free memory")

    monkeypatch.setattr(store_mod, "_upload", no_upload)
    a = np.zeros((100, 4), np.float32)  # 1600 bytes
    ts = np.arange(100) / 10.0          # + 800 bytes
    with pytest.raises(_errors.DeviceMemoryError, match="2400 bytes.*1000 bytes") as info:
        rc.TrajectoryStore.from_arrays({"a": a}, episode_ends=[100], timestamps=ts,
                                       device="cuda:0")
    assert info.value.needed == 2400 and info.value.free == 1000
    assert isinstance(info.value, MemoryError)


def test_import_robocache_store_does_not_import_torch():
    code = ("import sys, robocache as rc; rc.TrajectoryStore; import robocache.stats, "
            "robocache.windows, robocache.ops.windows; "
            "assert 'torch' not in sys.modules and 'cupy' not in sys.modules, "
            "[m for m in sys.modules if m.startswith(('torch', 'cupy'))][:3]")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# statistics


def _np_quantiles(x):
    return {k: np.quantile(x.astype(np.float64), q, axis=0)
            for k, q in zip(S.QUANTILE_KEYS, S.QUANTILES, strict=True)}


def _assert_feature_stats(got: dict, x: np.ndarray) -> None:
    """mean/std/min/max and quantiles per feature, against NumPy in float64."""
    f = x.astype(np.float64)
    np.testing.assert_allclose(got["mean"], f.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(got["std"], f.std(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(got["min"], f.min(axis=0))
    np.testing.assert_array_equal(got["max"], f.max(axis=0))
    for k, v in _np_quantiles(x).items():
        np.testing.assert_allclose(got[k], v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int32", "int64"])
def test_stats_match_numpy(dtype):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((501, 3, 2)) * 50).astype(dtype)
    st = rc.TrajectoryStore.from_arrays({"x": x}, episode_ends=[200, 501], device="cpu")
    got = st.stats()["x"]
    _assert_feature_stats(got, x)
    assert all(got[k].shape == (3, 2) for k in S.QUANTILE_KEYS)
    np.testing.assert_array_equal(got["count"], [501])
    assert set(got) == set(S.STAT_KEYS)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "bool"])
def test_stats_of_8bit_keys_are_exact(dtype):
    """The histogram path gives the same exact statistics as sorting."""
    rng = np.random.default_rng(3)
    if dtype == "bool":
        x = rng.random((333, 4)) < 0.3
    else:
        x = rng.integers(-128 if dtype == "int8" else 0, 128 if dtype == "int8" else 256,
                         size=(333, 4)).astype(dtype)
    got = S.feature_stats(x)
    _assert_feature_stats(got, x)


def test_stats_of_images_are_per_channel():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, size=(10, 6, 5, 3), dtype=np.uint8)
    st = rc.TrajectoryStore.from_arrays({"cam": img}, episode_ends=[10], device="cpu")
    got = st.stats("cam")["cam"]
    flat = img.reshape(-1, 3).astype(np.float64)
    assert got["mean"].shape == (3,)
    np.testing.assert_allclose(got["mean"], flat.mean(axis=0))
    np.testing.assert_allclose(got["q50"], np.quantile(flat, 0.5, axis=0))
    np.testing.assert_array_equal(got["count"], [10])


def test_stats_nan_column_and_bf16():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    x[3, 1] = np.nan
    got = S.feature_stats(x.astype(ml_dtypes.bfloat16))
    assert np.isnan(got["mean"][1]) and np.isnan(got["q50"][1]) and np.isnan(got["max"][1])
    f = x[:, 0].astype(ml_dtypes.bfloat16).astype(np.float64)
    assert got["mean"][0] == f.mean() and got["q99"][0] == np.quantile(f, 0.99)


@pytest.mark.parametrize("dtype", ["float32", "uint8", "int8"])
def test_stats_torch_path_equals_numpy_path(dtype):
    """The device path (torch ops) run on CPU tensors gives the NumPy path's numbers."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((257, 3)) * 60).astype(dtype)
    a = S.feature_stats(x)
    b = S.feature_stats(torch.from_numpy(x))
    for k in S.STAT_KEYS:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-12, err_msg=k)


def test_stats_cached_and_bad_key():
    st = rc.TrajectoryStore.from_arrays({"a": np.arange(10.0)}, episode_ends=[10], device="cpu")
    s1 = st.stats("a")
    s1["a"]["mean"][...] = 99  # a copy: the cache is not touched
    assert st.stats("a")["a"]["mean"] == 4.5
    with pytest.raises(ValueError, match="keys"):
        st.stats(["b"])


def test_frames_on_host_keep_camera_bytes_out_of_device_memory(monkeypatch):
    """frames_on_host: camera keys are pinned on the host and do not count against free GPU
    memory; without it the same store does not fit."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(store_mod, "_require_device", lambda device: None)
    monkeypatch.setattr(store_mod, "_free_bytes", lambda device: 1000)
    uploaded, pinned = [], []
    monkeypatch.setattr(store_mod, "_upload",
                        lambda host, device, bar: uploaded.append(host.nbytes) or
                        torch.from_numpy(np.ascontiguousarray(host)))
    monkeypatch.setattr(store_mod, "_pinned",
                        lambda host: pinned.append(host.nbytes) or torch.from_numpy(host))
    cam = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)  # 9600 B
    state = np.zeros((50, 4), np.float32)                                           # 800 B
    arrays = {"cam": cam, "state": state}
    with pytest.raises(_errors.DeviceMemoryError, match="10400 bytes"):
        rc.TrajectoryStore.from_arrays(arrays, episode_ends=[20, 50], device="cuda:0")
    st = rc.TrajectoryStore.from_arrays(arrays, episode_ends=[20, 50], device="cuda:0",
                                        frames_on_host=True)
    assert st.host_keys == ("cam",) and st.image_keys == ("cam",)
    assert uploaded == [800] and pinned == [9600]
    np.testing.assert_array_equal(st["cam"].numpy(), cam)
    np.testing.assert_array_equal(st.stats("cam")["cam"]["max"], cam.reshape(-1, 3).max(0))
    cpu = rc.TrajectoryStore.from_arrays(arrays, episode_ends=[20, 50], device="cpu",
                                         frames_on_host=True)
    assert cpu.host_keys == ()  # a CPU store keeps everything on the host anyway
    with pytest.raises(TypeError, match=r"image_keys: expected camera frames, uint8 .* 'cam' "
                                        r"of dtype float32"):  # any device, host frames or not
        rc.TrajectoryStore.from_arrays({"cam": cam.astype(np.float32)}, episode_ends=[50],
                                       image_keys=["cam"], device="cuda:0", frames_on_host=True)
    with pytest.raises(TypeError, match="frames_on_host"):
        rc.TrajectoryStore.from_arrays(arrays, episode_ends=[50], frames_on_host="yes")
